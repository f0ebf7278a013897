"""Streamed data: the same rows as the materialised source, block sizes that adapt to d
and the memory budget, plan_memory's minimum, and the fast sampler's exactness."""

import numpy as np
import pytest

from mimfast import data
from mimfast.backends import get_backend
from mimfast.data import (TaskSource, default_memory_budget, sample_rows,
                          streamed_block_bytes, streamed_block_rows)
from mimfast.errors import MimfastInputError
from mimfast.schedule import plan_memory, train
from mimfast.tasks import CHUNK_ROWS, MultiIndexTask


@pytest.fixture(scope="module")
def be():
    return get_backend("numpy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 3])
def test_fast_sampler_reproduces_task_sample(dtype, threads):
    t = MultiIndexTask(d=37, r=2, link="he2", noise=0.3, seed=5)
    for n, start in [(1, 0), (CHUNK_ROWS, 0), (2500, 777), (3 * CHUNK_ROWS + 5, CHUNK_ROWS)]:
        Xa, ya = t.sample(n, "stage2", start, dtype)
        Xb, yb = sample_rows(t, n, "stage2", start, dtype, threads=threads)
        np.testing.assert_array_equal(Xa, Xb)
        np.testing.assert_array_equal(ya, yb)
        assert Xb.dtype == np.dtype(dtype) and yb.dtype == np.dtype(dtype)


def test_numpy_fallback_filler_is_identical(monkeypatch):
    t = MultiIndexTask(d=11, r=3, link="z1z2z3", noise=0.1, seed=2)
    fast = sample_rows(t, 2100, "test", 300, "float32")
    monkeypatch.setattr(data, "_FILL", False)
    slow = sample_rows(t, 2100, "test", 300, "float32")
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_fill_into_out_buffer():
    t = MultiIndexTask(d=8, seed=1)
    out = np.full((1500, 8), np.nan, dtype=np.float32)
    X, _ = sample_rows(t, 1500, "stage1", 10, "float32", out=out)
    assert X is out
    np.testing.assert_array_equal(out, t.sample(1500, "stage1", 10, "float32")[0])
    with pytest.raises(ValueError):
        sample_rows(t, 1500, "stage1", 0, "float64", out=out)


@pytest.mark.parametrize("block_rows", [CHUNK_ROWS, 2 * CHUNK_ROWS, 700, None])
@pytest.mark.parametrize("start", [0, 1500])
def test_streamed_blocks_are_the_materialised_rows(be, block_rows, start):
    t = MultiIndexTask(d=13, r=2, link="he2", noise=0.05, seed=7)
    n = 4 * CHUNK_ROWS + 37
    mat = TaskSource(t, "stage1", n, "float32", be, start=start)
    st = TaskSource(t, "stage1", n, "float32", be, start=start, streamed=True,
                    block_rows=block_rows)
    (lo0, X), = list(mat.blocks())
    parts, offsets = [], []
    for lo, Xb in st.blocks():
        offsets.append(lo)
        parts.append(np.array(Xb))  # a streamed block is valid until the next one
    assert offsets[0] == 0 and lo0 == 0
    np.testing.assert_array_equal(np.concatenate(parts), X)
    np.testing.assert_array_equal(st.labels(), mat.labels())
    # a second pass regenerates the same rows
    again = np.concatenate([np.array(b) for _, b in st.blocks()])
    np.testing.assert_array_equal(again, X)
    assert st.passes == 2
    if block_rows is not None and block_rows % CHUNK_ROWS == 0:
        # blocks end on absolute chunk boundaries: no chunk is drawn twice in a pass
        ends = [start + o for o in offsets[1:]]
        assert all(e % CHUNK_ROWS == 0 for e in ends)
        assert all(len(p) <= block_rows for p in parts)


def test_streamed_split_matches_materialised_split(be):
    t = MultiIndexTask(d=9, seed=3)
    n = 3000
    mat = TaskSource(t, "stage2", n, "float64", be)
    st = TaskSource(t, "stage2", n, "float64", be, streamed=True, block_rows=CHUNK_ROWS)
    for a, b in zip(mat.split(1234), st.split(1234)):
        Xa = np.concatenate([np.array(x) for _, x in a.blocks()])
        Xb = np.concatenate([np.array(x) for _, x in b.blocks()])
        np.testing.assert_array_equal(Xa, Xb)
        np.testing.assert_array_equal(a.labels(), b.labels())


def test_block_rows_adapt_to_d_and_budget():
    r_small = streamed_block_rows(256, "float32")
    r_big = streamed_block_rows(8192, "float32")
    assert r_small > r_big >= CHUNK_ROWS
    assert r_small % CHUNK_ROWS == 0 and r_big % CHUNK_ROWS == 0
    assert r_big * 8192 * 4 <= data.STREAM_BLOCK_TARGET
    assert streamed_block_rows(8192, "float64") <= r_big
    tight = streamed_block_rows(8192, "float32", memory_budget=64 * 2 ** 20)
    assert tight == CHUNK_ROWS  # never below one generation chunk
    mid = streamed_block_rows(2048, "float32", memory_budget=256 * 2 ** 20)
    assert mid * 2048 * 4 <= 256 * 2 ** 20 // 8
    assert default_memory_budget(123) == 123


def test_plan_memory_uses_the_real_streamed_block():
    d, width = 8192, 32
    n = int(8 * d * np.log(d))
    need = streamed_block_bytes(d, np.float32, 2 ** 30, width=width)
    fixed = 8 * d * width * 4
    # 8 d ln d rows at d = 8192 (19 GB per stage) do not fit 12 GiB: both stages stream,
    # the 65536-row test set (2 GiB) is held
    assert plan_memory(d, n, n, 65536, np.float32, width, "auto",
                       12 * 2 ** 30) == "stream:stage1,stage2"
    # a budget that holds one real streamed block (+ slack for the labels) is enough ...
    budget = fixed + streamed_block_bytes(d, np.float32, 2 ** 30, width=width) + 2 ** 28
    assert plan_memory(d, n, n, 65536, np.float32, width, "stream", budget) == "stream"
    assert need < 2 ** 30  # the old estimate (32768 rows x d x 16 B = 4 GiB) was far off
    # ... and below the minimum the error says how much is needed
    with pytest.raises(MimfastInputError, match="need at least"):
        plan_memory(d, n, n, 65536, np.float32, width, "stream", 64 * 2 ** 20)


def test_train_streamed_equals_materialised():
    t = MultiIndexTask(d=64, r=2, link="he2", seed=4)
    kw = dict(width=8, t1=3, backend="numpy", dtype="float64", seed=1, progress=False)
    n = 3 * CHUNK_ROWS + 100
    mat = train(t, n, n, 1500, data="materialise", **kw)
    # a budget below the data (4 MB) but above one streamed block forces streaming,
    # in blocks of one chunk
    budget = 3 * 2 ** 20
    assert (2 * n + 1500) * 64 * 8 > budget
    assert streamed_block_rows(64, "float64", budget) == CHUNK_ROWS
    st = train(t, n, n, 1500, data="auto", memory_budget=budget, **kw)
    assert mat["data_mode"] == "materialise"
    assert {"stage1", "stage2"} <= data.streamed_sources(st["data_mode"])
    assert st["t1"] == mat["t1"]
    np.testing.assert_allclose(st["sin_theta"], mat["sin_theta"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st["test_rel_mse"], mat["test_rel_mse"], rtol=1e-6)


def test_rows_without_labels_are_the_same_rows():
    t = MultiIndexTask(d=10, r=2, noise=0.2, seed=9)
    for n, start in [(700, 100), (2 * CHUNK_ROWS + 3, 5)]:
        X, y = sample_rows(t, n, "stage1", start, "float32", labels=False)
        assert y is None
        np.testing.assert_array_equal(X, t.sample(n, "stage1", start, "float32")[0])


def test_data_mode_names_round_trip():
    assert data.streamed_sources("materialise") == frozenset()
    assert data.streamed_sources("stream") == frozenset(data.SOURCES)
    assert data.streamed_sources("stream:test, stage2") == {"stage2", "test"}
    assert data.mode_name({"test", "stage2"}) == "stream:stage2,test"
    assert data.mode_name(data.SOURCES) == "stream"
    for bad in ("stream:", "stream:stage9", "fast", None):
        with pytest.raises(MimfastInputError, match="unknown"):
            data.streamed_sources(bad)


def test_auto_holds_stage1_and_streams_the_rest_when_only_it_fits():
    d, width, n = 8192, 32, int(4 * 8192 * np.log(8192))
    held1 = n * d * 4
    # room for stage 1, the weights, one streamed block and some slack (the labels),
    # but not for the 2 GiB test set
    budget = held1 + 8 * d * width * 4 + streamed_block_bytes(d, np.float32, 12 * 2 ** 30,
                                                              width=width) + 2 ** 28
    mode = plan_memory(d, n, n, 65536, np.float32, width, "auto", budget)
    assert mode == "stream:stage2,test"
    # nothing held fits: everything streams; it all fits: nothing streams
    assert plan_memory(d, n, n, 65536, np.float32, width, "auto", 2 ** 30) == "stream"
    assert plan_memory(64, 1000, 1000, 100, np.float32, 8, "auto", 2 ** 30) == "materialise"
    with pytest.raises(MimfastInputError, match="holds"):
        plan_memory(d, n, n, 65536, np.float32, width, "stream:test", budget)


def test_train_mixed_mode_equals_materialised():
    t = MultiIndexTask(d=20, r=2, link="he2", seed=6)
    kw = dict(width=8, t1=2, backend="numpy", dtype="float64", seed=2, progress=False)
    mat = train(t, 2500, 2500, 1200, data="materialise", **kw)
    mix = train(t, 2500, 2500, 1200, data="stream:stage2,test", **kw)
    assert mix["data_mode"] == "stream:stage2,test"
    np.testing.assert_allclose(mix["sin_theta"], mat["sin_theta"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mix["test_rel_mse"], mat["test_rel_mse"], rtol=1e-6)
