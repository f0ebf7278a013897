"""Numba CPU kernels (``mimfast.kernels.cpu``) against the numpy reference.

Every check compares to ``reference.py`` (or to an independent identity), never
to values computed the same way.  float32 results are compared with the
reference evaluated in float64 on the same (float32-valued) inputs, so the
tolerance measures the float32 kernel alone.
"""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from mimfast.kernels import cpu, reference as ref  # noqa: E402

DTYPES = (np.float32, np.float64)
PATHS = ("loops", "gemm")
# relative (Frobenius) tolerance of a result in each dtype
RTOL = {np.float32: 2e-5, np.float64: 1e-11}

# (n, d, m): n < one register tile (12), n not a multiple of anything, d = 1
# and odd d, m = 2, m not a multiple of the vector width (16 float32 /
# 8 float64), the narrow two-k-per-vector layout (m <= 8 float32, m <= 4
# float64), a last column panel that is half used, several panels (m large),
# several super-blocks and float64 folds in one chunk (n = 5003, d = 8); the
# narrow layout with whole 12-pair k tiles plus leftover pairs and an odd d,
# over several 48-row sub-blocks of the outer-product kB (n = 211, d = 53);
# the transposed narrow stage-1 kB with 48-k tiles, single k-vectors and
# scalar k left over (d = 123; m = 4 is narrow in both dtypes, m = 8 in float32);
# the narrow stage-1 kernels over several L2-sized super-blocks and a partial
# one, kB prefetching the next super-block (and, at the end, past the array)
# (n = 601, d = 1030: 108-row super-blocks in float32, 48-row in float64).
SHAPES = [
    (5, 3, 2),
    (37, 1, 2),
    (100, 17, 33),
    (301, 40, 17),
    (1001, 64, 70),
    (250, 30, 140),
    (5003, 8, 5),
    (211, 53, 6),
    (130, 29, 3),
    (97, 123, 4),
    (61, 123, 8),
    (601, 1030, 4),
]


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (nb if nb > 0 else 1.0)


def make_problem(n, d, m, dtype, seed=0, bias=0.5):
    """Inputs with h = XW + b of order one (both log cosh branches are used)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, m)) / np.sqrt(d)
    a = rng.standard_normal(m)
    b = bias * rng.standard_normal(m)
    y = rng.standard_normal(n) + 0.3
    return tuple(np.ascontiguousarray(v, dtype=dtype) for v in (X, y, W, a, b))


def f64(*arrays):
    return tuple(v.astype(np.float64) for v in arrays)


# --------------------------------------------------------------------------
# the three network kernels against the reference
# --------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n%d-d%d-m%d" % s)
def test_stage1_grad_matches_reference(shape, dtype, path):
    X, y, W, a, b = make_problem(*shape, dtype)
    for act in ("logcosh", "quadratic"):
        for loss in ref.LOSS_KINDS:
            kw = dict(loss=loss, delta=0.8, offset=0.3, activation_name=act)
            G, L = cpu.stage1_grad(X, y, W, a, b, path=path, **kw)
            Gr, Lr = ref.stage1_grad(*f64(X, y, W, a, b), **kw)
            assert G.dtype == dtype and G.shape == W.shape
            assert isinstance(L, float)
            assert rel(G, Gr) < RTOL[dtype], (act, loss)
            assert abs(L - Lr) <= RTOL[dtype] * max(1.0, abs(Lr)), (act, loss)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n%d-d%d-m%d" % s)
def test_stage2_gram_and_predict_match_reference(shape, dtype, path):
    X, y, W, a, b = make_problem(*shape, dtype, seed=1)
    for act in ref.ACTIVATIONS:
        M, v = cpu.stage2_gram(X, y, W, b, act, path=path)
        Mr, vr = ref.stage2_gram(*f64(X, y, W, b), act)
        assert M.dtype == dtype and M.shape == (W.shape[1],) * 2
        assert v.dtype == dtype and v.shape == (W.shape[1],)
        assert rel(M, Mr) < RTOL[dtype], act
        assert rel(v, vr) < RTOL[dtype], act
        assert np.array_equal(M, M.T), act          # symmetric by construction
        f = cpu.predict(X, W, a, b, act, path=path)
        fr = ref.predict(*f64(X, W, a, b), act)
        assert f.dtype == dtype and f.shape == (X.shape[0],)
        assert rel(f, fr) < RTOL[dtype], act


def test_same_dtype_reference_float32():
    # also against the reference run in float32 itself (what "numpy" computes)
    X, y, W, a, b = make_problem(700, 50, 24, np.float32, seed=2)
    G, L = cpu.stage1_grad(X, y, W, a, b, "huber", 0.8, 0.3)
    Gr, Lr = ref.stage1_grad(X, y, W, a, b, "huber", 0.8, 0.3)
    assert rel(G, Gr) < 1e-4 and abs(L - Lr) < 1e-5 * abs(Lr)


def test_serial_variant_and_auto_path():
    X, y, W, a, b = make_problem(500, 20, 9, np.float64, seed=3)
    Gr, Lr = ref.stage1_grad(X, y, W, a, b, "pseudo_huber", 0.7, -0.2)
    for kw in (dict(parallel=False), dict(path=None), dict(parallel=False, path="gemm")):
        G, L = cpu.stage1_grad(X, y, W, a, b, "pseudo_huber", 0.7, -0.2, **kw)
        assert rel(G, Gr) < 1e-11 and abs(L - Lr) < 1e-11, kw
    M, v = cpu.stage2_gram(X, y, W, b, "relu", parallel=False)
    Mr, vr = ref.stage2_gram(X, y, W, b, "relu")
    assert rel(M, Mr) < 1e-11 and rel(v, vr) < 1e-11
    f = cpu.predict(X, W, a, b, "logcosh", parallel=False)
    assert rel(f, ref.predict(X, W, a, b, "logcosh")) < 1e-11
    assert cpu.choose_path(8) == "loops" and cpu.choose_path(4096) == "gemm"
    assert cpu.choose_path(512, d=8192) == "blas" and cpu.choose_path(128, d=8192) == "blas"
    assert cpu.choose_path(128, d=4096) == "loops" and cpu.choose_path(64, d=8192) == "loops"


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-11)])
def test_stage1_whole_matrix_blas_path(dtype, tol):
    X, y, W, a, b = make_problem(301, 17, 6, dtype, seed=5)
    Gr, Lr = ref.stage1_grad(X, y, W, a, b, "huber", 0.5, 0.1)
    G, L = cpu.stage1_grad(X, y, W, a, b, "huber", 0.5, 0.1, path="blas")
    assert G.dtype == dtype and rel(G, Gr) < tol and abs(L - Lr) < tol
    # stage 2 / predict have no such variant: "blas" is a stage-1 path only
    with pytest.raises(ValueError, match="path"):
        cpu.stage2_gram(X, y, W, b, "logcosh", path="blas")


def test_zero_width():
    X, y, W, a, b = make_problem(30, 4, 0, np.float64)
    G, L = cpu.stage1_grad(X, y, W, a, b, "huber", 0.8, 0.3)
    Gr, Lr = ref.stage1_grad(X, y, W, a, b, "huber", 0.8, 0.3)
    assert G.shape == (4, 0) and abs(L - Lr) < 1e-12
    M, v = cpu.stage2_gram(X, y, W, b)
    assert M.shape == (0, 0) and v.shape == (0,)
    assert np.array_equal(cpu.predict(X, W, a, b), np.zeros(30))


def test_bad_names_raise():
    X, y, W, a, b = make_problem(20, 3, 2, np.float64)
    with pytest.raises(ValueError):
        cpu.stage1_grad(X, y, W, a, b, loss="l1")
    with pytest.raises(ValueError):
        cpu.stage1_grad(X, y, W, a, b, activation_name="tanh")
    with pytest.raises(ValueError):
        cpu.stage2_gram(X, y, W, b, "softplus")
    with pytest.raises(ValueError):
        cpu.predict(X, W, a, b, path="blas")


# --------------------------------------------------------------------------
# elementary functions
# --------------------------------------------------------------------------
def _grid(dtype):
    r = np.concatenate([np.linspace(-25.0, 25.0, 100001),
                        np.logspace(-30, 1.6, 40001), -np.logspace(-30, 1.6, 40001),
                        [0.0, 0.7499999, 0.75, 0.7500001, 9.0, 9.5, 20.0, 1e30, -1e30]])
    return r.astype(dtype)


def test_fast_tanh_float32_within_one_ulp():
    x = _grid(np.float32)
    t = cpu.fast_tanh(x)
    assert t.dtype == np.float32
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(t - exact) / ulp) <= 1.0
    # and np.tanh (float32) agrees to within its own ~1-2 ulp
    assert np.max(np.abs(t - np.tanh(x)) / ulp) <= 3.0


def test_fast_tanh_float64_relative_accuracy():
    x = _grid(np.float64)
    t = cpu.fast_tanh(x)
    exact = np.tanh(x)
    err = np.abs(t - exact) / np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
    assert err.max() < 1e-14
    assert np.isnan(cpu.fast_tanh(np.array([np.nan]))[0])
    assert cpu.fast_tanh(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0]


def _logcosh_exact(x):
    """log cosh = log1p(sinh^2)/2 in extended precision (float64 result)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    out = x - np.log(2.0)                       # |x| >= 40: exact in float64
    mid = x < 40
    xl = x[mid].astype(np.longdouble)
    out[mid] = (np.log1p(np.sinh(xl) ** 2) / 2).astype(np.float64)
    return out


@pytest.mark.parametrize("dtype,tol", [(np.float32, 3e-7), (np.float64, 1e-14)])
def test_fast_logcosh_accuracy(dtype, tol):
    x = _grid(dtype)
    x = x[np.abs(x) < 1e20]
    lc = cpu.fast_logcosh(x)
    exact = _logcosh_exact(x)
    keep = exact > np.finfo(dtype).tiny      # float32 underflows below
    assert np.max(np.abs(lc[keep] - exact[keep]) / exact[keep]) < tol


# --------------------------------------------------------------------------
# accumulation accuracy: float32 vs float64 at n = 1e6
# --------------------------------------------------------------------------
def test_float32_accumulation_at_one_million_rows():
    n, d, m = 1_000_000, 4, 8
    X, y, W, a, b = make_problem(n, d, m, np.float32, seed=4)
    y += 1.0                       # biased labels: c = l'(f, y) has a large mean
    X64, y64, W64, a64, b64 = f64(X, y, W, a, b)
    # float32 with the default (parallel) driver; the float64 comparison runs
    # the serial variant (it is the value under test only through the
    # reference check below, and this keeps the JIT bill of the file down)
    G32, L32 = cpu.stage1_grad(X, y, W, a, b, "huber", 1.5, 0.1)
    G64, L64 = cpu.stage1_grad(X64, y64, W64, a64, b64, "huber", 1.5, 0.1, parallel=False)
    assert rel(G32, G64) < 1e-4
    assert abs(L32 - L64) < 1e-4 * abs(L64)
    M32, v32 = cpu.stage2_gram(X, y, W, b, "logcosh")
    M64, v64 = cpu.stage2_gram(X64, y64, W64, b64, "logcosh", parallel=False)
    assert rel(M32, M64) < 1e-4 and rel(v32, v64) < 1e-4
    # and the float64 kernel is the reference value
    Gr, Lr = ref.stage1_grad(X64, y64, W64, a64, b64, "huber", 1.5, 0.1)
    assert rel(G64, Gr) < 1e-10


# --------------------------------------------------------------------------
# independent identities
# --------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["logcosh", "quadratic"])
@pytest.mark.parametrize("loss", ref.LOSS_KINDS)
def test_stage1_grad_is_the_gradient_of_the_mean_loss(act, loss):
    n, d, m = 60, 3, 4
    X, y, W, a, b = make_problem(n, d, m, np.float64, seed=5)
    delta, offset = 0.6, 0.25

    def mean_loss(Wv):
        f = ref.predict(X, Wv, a, b, act)
        return np.mean(ref.loss_value(f, y, loss, delta, offset))

    G, L = cpu.stage1_grad(X, y, W, a, b, loss, delta, offset, act)
    assert abs(L - mean_loss(W)) < 1e-12
    eps = 1e-6
    num = np.zeros_like(W)
    for k in range(d):
        for j in range(m):
            Wp, Wm = W.copy(), W.copy()
            Wp[k, j] += eps
            Wm[k, j] -= eps
            num[k, j] = (mean_loss(Wp) - mean_loss(Wm)) / (2 * eps)
    assert rel(G, num) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
def test_quadratic_step_is_power_iteration(dtype):
    # sigma' (h) = h, b = 0:  G[:, j] = a_j Sigma_hat w_j,  Sigma_hat = X^T diag(c) X / n
    n, d, m = 400, 12, 6
    X, y, W, a, _ = make_problem(n, d, m, dtype, seed=6)
    b = np.zeros(m, dtype=dtype)
    G, _ = cpu.stage1_grad(X, y, W, a, b, "huber", 0.9, 0.2, "quadratic")
    X64, y64, W64, a64 = f64(X, y, W, a)
    f = ref.predict(X64, W64, a64, np.zeros(m), "quadratic")
    c = ref.loss_grad(f, y64, "huber", 0.9, 0.2)
    Sigma = ref.sigma_matrix(X64, c)
    assert rel(G, Sigma @ W64 @ np.diag(a64)) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d", [(300, 9), (40009, 211)])   # serial; two thread chunks
def test_sigma_matvec_and_matrix(dtype, n, d):
    X, c, *_ = make_problem(n, d, 2, dtype, seed=7)
    rng = np.random.default_rng(8)
    V1 = rng.standard_normal(d).astype(dtype)
    V2 = rng.standard_normal((d, 3)).astype(dtype)
    X64, c64 = f64(X, c)
    tol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    for V in (V1, V2):
        out = cpu.sigma_matvec(X, c, V)
        assert out.dtype == dtype and out.shape == V.shape
        assert rel(out, ref.sigma_matvec(X64, c64, V.astype(np.float64))) < tol
    S = cpu.sigma_matrix(X, c, block_rows=64)
    assert S.dtype == dtype
    assert rel(S, ref.sigma_matrix(X64, c64)) < tol


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32])   # the parallel driver is dtype-generic
def test_thread_count_invariance(dtype):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 Numba threads")
    X, y, W, a, b = make_problem(4000, 64, 40, dtype, seed=9)   # big enough for 2 threads
    X8, y8, W8, a8, b8 = make_problem(6000, 256, 6, dtype, seed=10)   # narrow layout
    before = numba.get_num_threads()
    results = {}
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            assert len(cpu._thread_bounds(4000, 4000 * 64 * 40, True)) == t + 1
            assert len(cpu._thread_bounds(6000, 6000 * 256 * 6, True)) == t + 1
            results[t] = (cpu.stage1_grad(X, y, W, a, b, "pseudo_huber", 0.5, 0.1),
                          cpu.stage1_grad(X, y, W, a, b, path="gemm"),
                          cpu.stage1_grad(X8, y8, W8, a8, b8, "huber", 0.5),
                          cpu.stage2_gram(X, y, W, b, "relu"),
                          cpu.predict(X, W, a, b))
    finally:
        numba.set_num_threads(before)
    (g1, l1), (h1, _), (n1, _), (m1, v1), f1 = results[1]
    (g2, l2), (h2, _), (n2, _), (m2, v2), f2 = results[2]
    tol = RTOL[dtype]
    assert rel(g1, g2) < tol and abs(l1 - l2) < tol * abs(l1)
    assert rel(h1, h2) < tol and rel(n1, n2) < tol
    assert rel(m1, m2) < tol and rel(v1, v2) < tol
    assert np.array_equal(f1, f2)        # rows are independent: bitwise equal
    # and both agree with the reference
    G, _ = ref.stage1_grad(*f64(X, y, W, a, b), "pseudo_huber", 0.5, 0.1)
    assert rel(g2, G) < tol
