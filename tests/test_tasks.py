import warnings

import numpy as np
import pytest

from mimfast import tasks
from mimfast.data import sample_rows
from mimfast.errors import MimfastInputError
from mimfast.tasks import CHUNK_ROWS, LINKS, NATURAL_R, MultiIndexTask


def test_U_has_orthonormal_rows():
    t = MultiIndexTask(d=37, r=3, link="he2", seed=5)
    np.testing.assert_allclose(t.U @ t.U.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("block", [1, 7, CHUNK_ROWS - 1, CHUNK_ROWS + 3, 5000])
def test_sampler_is_block_size_invariant(block):
    t = MultiIndexTask(d=9, r=2, link="he2", noise=0.1, seed=3)
    n, start = 5003, 1500
    X, y = t.sample(n, "stage1", start)
    parts = [t.sample(min(block, n - lo), "stage1", start + lo) for lo in range(0, n, block)]
    np.testing.assert_array_equal(X, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts]))


def test_sampler_is_thread_count_invariant():
    t = MultiIndexTask(d=5, r=1, link="he3", noise=0.2, seed=11)
    a = t.sample(4000, "stage2", 10, threads=1)
    b = t.sample(4000, "stage2", 10, threads=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_streams_and_seeds_differ_and_float32_is_rounded_float64():
    t = MultiIndexTask(d=6, r=2, seed=1)
    X1, _ = t.sample(100, "stage1")
    X2, _ = t.sample(100, "stage2")
    X3, _ = MultiIndexTask(d=6, r=2, seed=2).sample(100, "stage1")
    assert not np.allclose(X1, X2) and not np.allclose(X1, X3)
    X32, y32 = t.sample(100, "stage1", dtype="float32")
    assert X32.dtype == np.float32 and y32.dtype == np.float32
    np.testing.assert_array_equal(X32, X1.astype(np.float32))


def test_labels_are_the_link_of_Ux():
    t = MultiIndexTask(d=8, r=2, link="z1z2", seed=0)
    X, y = t.sample(50)
    z = X @ t.U.T
    np.testing.assert_allclose(y, z[:, 0] * z[:, 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("link", LINKS)
def test_every_link_is_standardised(link):
    """Mean 0 and variance 1 under N(0, I_r), by Gauss-Hermite quadrature (exact for
    the polynomial links, exact by symmetry for the sign links)."""
    r = NATURAL_R[link]
    t = MultiIndexTask(d=12, r=r, link=link, seed=4)
    nodes, weights = np.polynomial.hermite_e.hermegauss(12)
    weights = weights / weights.sum()
    grid = np.stack(np.meshgrid(*([nodes] * r), indexing="ij"), -1).reshape(-1, r)
    w = np.prod(np.stack(np.meshgrid(*([weights] * r), indexing="ij"), -1).reshape(-1, r), 1)
    g = t.g(grid)
    mean = np.sum(w * g)
    var = np.sum(w * (g - mean) ** 2)
    assert abs(mean) < 1e-9
    assert abs(var - 1.0) < 1e-9


def test_user_callable_link():
    t = MultiIndexTask(d=4, r=1, link=lambda z: np.cos(z[:, 0]), seed=0)
    X, y = t.sample(10)
    np.testing.assert_allclose(y, np.cos(X @ t.U[0]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(d=3, r=4), "r=4 exceeds d=3"),
    (dict(d=3, r=0), "r=0 must be >= 1"),
    (dict(d=5, r=2, link="nope"), "target='nope' is unknown"),
    (dict(d=5, r=2, link="z1z2z3"), "exactly 3 directions"),
    (dict(d=5, r=2, noise=-1.0), "noise"),
    (dict(d=5, r=2, noise=float("nan")), "noise"),
])
def test_bad_task_arguments(kwargs, match):
    with pytest.raises(MimfastInputError, match=match):
        MultiIndexTask(**kwargs)


def test_bad_sample_dtype():
    with pytest.raises(MimfastInputError, match="dtype='int8'"):
        MultiIndexTask(d=4, r=1).sample(5, dtype="int8")


def test_bad_stream_names_the_valid_ones():
    t = MultiIndexTask(d=4, r=1)
    for sample in (t.sample, lambda n, stream: sample_rows(t, n, stream)):
        with pytest.raises(MimfastInputError,
                           match="stream='foo' is unknown; choose one of: stage1, stage2, test"):
            sample(3, stream="foo")
    with pytest.raises(MimfastInputError, match="stream=-1 must be >= 0"):
        t.sample(3, stream=-1)


def test_sample_too_large_for_memory_says_how_much(monkeypatch):
    monkeypatch.setattr(tasks, "available_memory_bytes", lambda: 2 ** 30)
    t = MultiIndexTask(d=4, r=1)
    with pytest.raises(MimfastInputError, match=r"n=1000000000000 rows at d=4 \(float64\) need "
                                                r"36.4 TiB for X and y but only 1.0 GiB"):
        t.sample(10 ** 12)
    with pytest.raises(MimfastInputError, match="need 36.4 TiB"):
        sample_rows(t, 10 ** 12)


def test_complex_link_is_rejected():
    t = MultiIndexTask(d=4, r=1, link=lambda z: z[:, 0] + 1j, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way
        with pytest.raises(MimfastInputError, match="returned complex values; it must return "
                                                    "real numbers"):
            t.sample(5)
