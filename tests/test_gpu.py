"""Tests of mimfast.kernels.gpu.

Part (a) always runs: the module imports without a GPU, ``is_available`` explains itself,
the GEMM-path orchestration runs with numpy arrays standing in for cupy and matches the
reference, the fused-kernel launch plan is sane, the TF32 switch restores state, and the
numpy Philox sampler is correct, split-invariant and standard normal.

Part (b) is marked ``gpu`` and skipped (with is_available()'s reason) without a usable CUDA
device: every GPU kernel and both paths against the reference, float32 vs float64 at
n = 1e6, the device sampler against its numpy twin, and TF32 off by default.
Run it with ``pytest tests/test_gpu.py -m gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mimfast.kernels import gpu
from mimfast.kernels import reference as ref

GPU_OK, GPU_REASON = gpu.is_available()
needs_gpu = pytest.mark.skipif(not GPU_OK, reason=f"no usable GPU: {GPU_REASON}")

DTYPES = (np.float32, np.float64)
ACTS = ("logcosh", "quadratic", "relu")
LOSSES = ("square", "huber", "pseudo_huber")


def _rtol(dtype):
    return 2e-4 if np.dtype(dtype) == np.float32 else 1e-10


def _relerr(got, want):
    got = np.asarray(gpu.to_host(got), dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _problem(n, d, m, dtype, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    W = (scale * rng.standard_normal((d, m)) / np.sqrt(d)).astype(dtype)
    a = rng.choice([-1.0, 1.0], m).astype(dtype)
    b = (0.3 * rng.standard_normal(m)).astype(dtype)
    return X, y, W, a, b


def _assert_stage1_close(G, X, y, W, a, b, loss, delta, offset, act, rtol):
    """G against the reference, allowing for relu's sigma' jump where H + b is ~0.

    For relu, sigma'(h) = [h > 0] jumps at 0, so an H entry within rounding of 0 may land
    on either side in two correct implementations.  Such entries (|H| < 1e-4 in float64)
    may each move G[:, j] by |x_i| |c_i| |a_j| / n; that bound is added to the tolerance.
    """
    G = np.asarray(gpu.to_host(G), dtype=np.float64)
    G0, _ = ref.stage1_grad(X, y, W, a, b, loss, delta, offset, act)
    G0 = np.asarray(G0, dtype=np.float64)
    tol = rtol * max(np.max(np.abs(G0)), 1e-30)
    bound = 0.0
    if act == "relu":
        X64, W64, a64, b64 = (np.asarray(v, dtype=np.float64) for v in (X, W, a, b))
        H = X64 @ W64 + b64
        f = np.maximum(H, 0) @ a64
        c = ref.loss_grad(f, np.asarray(y, dtype=np.float64), loss, delta, offset)
        amb = (np.abs(H) < 1e-4) * np.abs(c)[:, None]
        bound = (np.abs(X64).T @ amb) * np.abs(a64)[None, :] / X.shape[0]
    err = np.abs(G - G0)
    assert np.all(err <= tol + 1.01 * bound), float(np.max(err - bound) / max(tol, 1e-300))


# shapes: (n, d, m, block_rows); block_rows forces several GEMM-path row blocks
SHAPES = [
    (131, 70, 5, 32),    # n not a multiple of the block, d not a multiple of 64
    (64, 1, 2, None),    # d = 1, m = 2
    (50, 9, 2, 7),       # tiny blocks, m = 2
    (257, 130, 33, 100),
]


# ==========================================================================
# (a) always run
# ==========================================================================
def test_import_needs_neither_cupy_nor_gpu():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import mimfast.kernels.gpu as g\n"
            "ok, why = g.is_available()\n"
            "assert ok is False, ok\n"
            "assert why == \"cupy is not installed (pip install 'mimfast[gpu]')\", why\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_is_available_reports_a_clear_reason():
    ok, reason = gpu.is_available()
    assert isinstance(ok, bool)
    assert isinstance(reason, str) and reason
    if not ok:
        assert ("cupy is not installed" in reason or "no CUDA device is visible" in reason
                or "cuda" in reason.lower()), reason


def test_without_gpu_the_kernels_raise_with_the_reason():
    if GPU_OK:
        pytest.skip("a GPU is available")
    X, y, W, a, b = _problem(10, 3, 2, np.float64)
    with pytest.raises(RuntimeError, match="mimfast.kernels.gpu"):
        gpu.stage1_grad(X, y, W, a, b)


def test_is_available_without_cupy(monkeypatch):
    def no_cupy():
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(gpu, "_import_cupy", no_cupy)
    assert gpu.is_available() == (False, "cupy is not installed (pip install 'mimfast[gpu]')")
    assert isinstance(gpu.to_host(np.ones(2)), np.ndarray)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("n,d,m,br", SHAPES)
def test_stage1_gemm_orchestration_numpy(n, d, m, br, loss, act, dtype):
    X, y, W, a, b = _problem(n, d, m, dtype, seed=n + d + m)
    G, L = gpu.stage1_gemm(np, gpu.NumpyElementwise(), X, y, W, a, b, loss, 0.8, 0.05, act,
                           block_rows=br)
    _G0, L0 = ref.stage1_grad(X, y, W, a, b, loss, 0.8, 0.05, act)
    assert G.dtype == np.dtype(dtype) and G.shape == W.shape
    _assert_stage1_close(G, X, y, W, a, b, loss, 0.8, 0.05, act, _rtol(dtype))
    assert isinstance(L, float)
    assert L == pytest.approx(L0, rel=_rtol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,d,m,br", SHAPES)
def test_stage2_and_predict_gemm_orchestration_numpy(n, d, m, br, act, dtype):
    X, y, W, a, b = _problem(n, d, m, dtype, seed=3 * n + m)
    K, v = gpu.stage2_gemm(np, gpu.NumpyElementwise(), X, y, W, b, act, block_rows=br)
    K0, v0 = ref.stage2_gram(X, y, W, b, act)
    assert K.dtype == np.dtype(dtype) and K.shape == (m, m) and v.shape == (m,)
    assert _relerr(K, K0) < _rtol(dtype)
    assert _relerr(v, v0) < _rtol(dtype)
    f = gpu.predict_gemm(np, gpu.NumpyElementwise(), X, W, a, b, act, block_rows=br)
    assert f.dtype == np.dtype(dtype) and f.shape == (n,)
    assert _relerr(f, ref.predict(X, W, a, b, act)) < _rtol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,m,br", SHAPES)
def test_sigma_gemm_orchestration_numpy(n, d, m, br, dtype):
    X, y, W, _a, _b = _problem(n, d, m, dtype, seed=5)
    c = (y * y - 1).astype(dtype)
    for V in (W, W[:, 0].copy()):
        got = gpu.sigma_matvec_gemm(np, X, c, V, block_rows=br)
        assert got.dtype == np.dtype(dtype) and got.shape == V.shape
        assert _relerr(got, ref.sigma_matvec(X, c, V)) < _rtol(dtype)
    S = gpu.sigma_matrix_gemm(np, X, c, block_rows=br)
    assert S.dtype == np.dtype(dtype) and S.shape == (d, d)
    assert _relerr(S, ref.sigma_matrix(X, c)) < _rtol(dtype)


def test_gemm_block_rows_bound_the_temporaries():
    assert gpu._gemm_block_rows(10**7, 8) == gpu.GEMM_MAX_BLOCK_ROWS
    assert gpu._gemm_block_rows(100, 8) == 100
    assert gpu._gemm_block_rows(10**7, 4096) * 4096 <= gpu.GEMM_TEMP_ELEMS
    assert gpu._gemm_block_rows(50, 8, block_rows=7) == 7


H200 = {"n_sm": 132, "smem_optin": 232448, "smem_per_sm": 233472}


@pytest.mark.parametrize("itemsize", (4, 8))
@pytest.mark.parametrize("n,d,m", [(10**6, 2048, 8), (590_000, 8192, 64), (1, 1, 1),
                                   (77, 65, 33), (10**5, 4000, 16)])
def test_fused_plan_is_consistent(n, d, m, itemsize):
    p = gpu.fused_plan("stage1", n, d, m, itemsize, H200)
    assert p["mp"] >= m and p["mp"] in gpu.FUSED_WIDTHS
    assert p["slab_cols"] % gpu._KC == 0 and p["slab_cols"] * p["n_slabs"] >= d
    assert p["smem"] + gpu._STATIC_SMEM_ALLOWANCE <= H200["smem_optin"]
    assert p["rows_per_block"] % gpu._R == 0
    assert p["row_blocks"] * p["rows_per_block"] >= n
    assert (p["row_blocks"] - 1) * p["rows_per_block"] < n
    assert p["grid"] == (p["row_blocks"], p["n_slabs"], 1) and p["block"] == (256, 1, 1)
    q = gpu.fused_plan("stage2", n, d, m, itemsize, H200)
    assert q["n_slabs"] == 1 and q["smem"] <= H200["smem_optin"]


def test_fused_plan_slabs():
    # one slab (X streamed once) for d*m small, several for large d*m
    assert gpu.fused_plan("stage1", 10**6, 2048, 8, 4, H200)["n_slabs"] == 1
    assert gpu.fused_plan("stage1", 10**6, 8192, 64, 4, H200)["n_slabs"] > 1
    with pytest.raises(ValueError):
        gpu.fused_plan("stage1", 10, 10, 65, 4, H200)


class _FakeLauncher:
    def device(self):
        return H200


def test_auto_path_choice():
    f32 = np.dtype(np.float32)
    assert gpu._stage1_path(None, 10**6, 2048, 8, f32, _FakeLauncher()) == "fused"
    assert gpu._stage1_path(None, 10**6, 8192, 64, f32, _FakeLauncher()) == "gemm"
    assert gpu._stage1_path(None, 10**6, 2048, 128, f32, _FakeLauncher()) == "gemm"
    assert gpu._stage1_path("fused", 10**6, 8192, 64, f32, _FakeLauncher()) == "fused"
    assert gpu._stage1_path("gemm", 10**6, 64, 2, f32, _FakeLauncher()) == "gemm"
    with pytest.raises(ValueError):
        gpu._stage1_path("fused", 10, 10, 65, f32, _FakeLauncher())
    with pytest.raises(ValueError):
        gpu._stage1_path("cublas", 10, 10, 5, f32, _FakeLauncher())


def test_tf32_mode_sets_and_restores(monkeypatch):
    state = {"ct": 7}  # as if CUPY_TF32=1 had set TF32 for float32
    calls = []

    def get_ct(dtype):
        assert np.dtype(dtype) == np.float32
        return state["ct"]

    def set_ct(dtype, ct):
        calls.append(ct)
        state["ct"] = ct

    monkeypatch.setattr(gpu, "_compute_type_api", lambda: (get_ct, set_ct, 1, 7))
    with gpu._tf32_mode(False):
        assert state["ct"] == 1          # full float32 inside, even though TF32 was on
    assert state["ct"] == 7              # restored
    with gpu._tf32_mode(True):
        assert state["ct"] == 7
    assert calls == [1, 7]
    state["ct"] = 1
    with pytest.raises(KeyError):
        with gpu._tf32_mode(True):
            assert state["ct"] == 7
            raise KeyError("boom")
    assert state["ct"] == 1              # restored on error too


# ---------------------------------------------------------------- sampler (numpy)
def test_philox_known_answers():
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in kat:
        got = gpu.philox4x32_10_numpy(*ctr, *key)
        assert tuple(int(v) for v in got) == want


@pytest.mark.parametrize("d", (1, 4, 7, 33))
def test_philox_sampler_is_split_invariant(d):
    seed, stream = 20240601, 3
    whole = gpu.philox_gaussian_rows_numpy(seed, stream, 10, 110, d)
    assert whole.shape == (100, d) and whole.dtype == np.float64
    for cuts in ([10, 11, 50, 110], [10, 73, 110], [10] + list(range(13, 110, 17)) + [110]):
        parts = [gpu.philox_gaussian_rows_numpy(seed, stream, s, e, d)
                 for s, e in zip(cuts[:-1], cuts[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # fewer columns = a prefix of the columns
    k = min(2, d)
    np.testing.assert_array_equal(gpu.philox_gaussian_rows_numpy(seed, stream, 10, 110, k),
                                  whole[:, :k])
    # rows beyond 2^32 are fine and distinct from low rows
    hi = gpu.philox_gaussian_rows_numpy(seed, stream, 2**32 + 10, 2**32 + 110, d)
    assert not np.array_equal(hi, whole)


def test_philox_sampler_statistics_and_streams():
    z = gpu.philox_gaussian_rows_numpy(7, 0, 0, 4000, 250)
    assert abs(z.mean()) < 5 * (1 / np.sqrt(z.size))
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    assert abs(np.mean(z**4) - 3) < 0.05            # Gaussian kurtosis
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.06
    assert abs(np.corrcoef(z[:-1, 5], z[1:, 5])[0, 1]) < 0.06
    other = gpu.philox_gaussian_rows_numpy(7, 1, 0, 4000, 250)
    assert abs(np.corrcoef(z.ravel(), other.ravel())[0, 1]) < 0.01
    f32 = gpu.philox_gaussian_rows_numpy(7, 0, 0, 4000, 250, np.float32)
    np.testing.assert_array_equal(f32, z.astype(np.float32))


def test_philox_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        gpu.philox_gaussian_rows_numpy(-1, 0, 0, 1, 1)
    with pytest.raises(ValueError):
        gpu.philox_gaussian_rows_numpy(0, 2**32, 0, 1, 1)
    with pytest.raises(ValueError):
        gpu.philox_gaussian_rows_numpy(0, 0, 5, 4, 1)


def test_gpu_check_script_without_gpu(tmp_path):
    """benchmarks/gpu_check.py exits 0 and writes 'no GPU: <reason>' where there is no GPU."""
    if GPU_OK:
        pytest.skip("a GPU is available: the full check takes minutes (run it by hand)")
    from pathlib import Path
    import json

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), str(out)],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"].startswith("no GPU: "), summary
    assert summary["status"] == f"no GPU: {GPU_REASON}"


# ==========================================================================
# (b) GPU
# ==========================================================================
gpu_test = [pytest.mark.gpu, needs_gpu]


def _cp():
    import cupy

    return cupy


GPU_SHAPES = SHAPES + [(1000, 300, 64, None), (3000, 2100, 48, None), (2000, 100, 96, None)]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ("gemm", "fused"))
@pytest.mark.parametrize("act,loss", [(a, lo) for a in ACTS for lo in LOSSES])
@pytest.mark.parametrize("n,d,m,br", GPU_SHAPES)
def test_gpu_stage1_matches_reference(n, d, m, br, act, loss, path, dtype):
    if path == "fused" and m > gpu.FUSED_MAX_WIDTH:
        pytest.skip("fused path supports m <= 64")
    cp = _cp()
    X, y, W, a, b = _problem(n, d, m, dtype, seed=n + m)
    G, L = gpu.stage1_grad(cp.asarray(X), cp.asarray(y), cp.asarray(W), cp.asarray(a),
                           cp.asarray(b), loss, 0.8, 0.05, act, path=path, block_rows=br)
    _G0, L0 = ref.stage1_grad(X, y, W, a, b, loss, 0.8, 0.05, act)
    assert isinstance(G, cp.ndarray) and G.dtype == np.dtype(dtype) and G.shape == (d, m)
    assert isinstance(L, float)
    _assert_stage1_close(G, X, y, W, a, b, loss, 0.8, 0.05, act, _rtol(dtype))
    assert L == pytest.approx(L0, rel=_rtol(dtype))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ("gemm", "fused"))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,d,m,br", GPU_SHAPES)
def test_gpu_stage2_matches_reference(n, d, m, br, act, path, dtype):
    if path == "fused" and m > gpu.FUSED_MAX_WIDTH:
        pytest.skip("fused path supports m <= 64")
    cp = _cp()
    X, y, W, a, b = _problem(n, d, m, dtype, seed=2 * n + m)
    K, v = gpu.stage2_gram(cp.asarray(X), cp.asarray(y), cp.asarray(W), cp.asarray(b), act,
                           path=path, block_rows=br)
    K0, v0 = ref.stage2_gram(X, y, W, b, act)
    assert isinstance(K, cp.ndarray) and K.dtype == np.dtype(dtype) and K.shape == (m, m)
    assert _relerr(K, K0) < _rtol(dtype)
    assert _relerr(v, v0) < _rtol(dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,m,br", GPU_SHAPES)
def test_gpu_predict_and_sigma_match_reference(n, d, m, br, dtype):
    cp = _cp()
    X, y, W, a, b = _problem(n, d, m, dtype, seed=n)
    c = (y * y - 1).astype(dtype)
    Xd, Wd = cp.asarray(X), cp.asarray(W)
    for act in ACTS:
        f = gpu.predict(Xd, Wd, cp.asarray(a), cp.asarray(b), act, block_rows=br)
        assert f.dtype == np.dtype(dtype) and f.shape == (n,)
        assert _relerr(f, ref.predict(X, W, a, b, act)) < _rtol(dtype)
    for V in (W, W[:, 0].copy()):
        got = gpu.sigma_matvec(Xd, cp.asarray(c), cp.asarray(V), block_rows=br)
        assert got.dtype == np.dtype(dtype) and got.shape == V.shape
        assert _relerr(got, ref.sigma_matvec(X, c, V)) < _rtol(dtype)
    if d <= 1000:
        S = gpu.sigma_matrix(Xd, cp.asarray(c), block_rows=br)
        assert S.dtype == np.dtype(dtype) and S.shape == (d, d)
        assert _relerr(S, ref.sigma_matrix(X, c)) < _rtol(dtype)


@pytest.mark.gpu
@needs_gpu
def test_gpu_fused_multi_slab_and_auto_path():
    cp = _cp()
    n, d, m = 4000, 6000, 64   # float64: several slabs
    X, y, W, a, b = _problem(n, d, m, np.float64, seed=11)
    plan = gpu.fused_plan("stage1", n, d, m, 8, gpu.CupyLauncher().device())
    assert plan["n_slabs"] > 1
    G, L = gpu.stage1_grad(cp.asarray(X), cp.asarray(y), cp.asarray(W), cp.asarray(a),
                           cp.asarray(b), "huber", 0.5, 0.0, "logcosh", path="fused")
    G0, L0 = ref.stage1_grad(X, y, W, a, b, "huber", 0.5, 0.0, "logcosh")
    assert _relerr(G, G0) < 1e-10 and L == pytest.approx(L0, rel=1e-10)
    # auto path: same answer as both explicit paths
    Ga, _ = gpu.stage1_grad(cp.asarray(X), cp.asarray(y), cp.asarray(W), cp.asarray(a),
                            cp.asarray(b), "huber", 0.5, 0.0, "logcosh")
    assert _relerr(Ga, G0) < 1e-10


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("path", ("gemm", "fused"))
def test_gpu_float32_close_to_float64_at_n_1e6(path):
    cp = _cp()
    n, d, m = 1_000_000, 128, 16
    X64 = gpu.sample_gaussian_rows(1, 0, 0, n, d, np.float64)
    rng = np.random.default_rng(0)
    W = cp.asarray(rng.standard_normal((d, m)) / np.sqrt(d))
    a = cp.asarray(rng.choice([-1.0, 1.0], m))
    b = cp.asarray(0.3 * rng.standard_normal(m))
    y = X64[:, 0] * X64[:, 1] + 0.1 * X64[:, 2] ** 2
    G64, L64 = gpu.stage1_grad(X64, y, W, a, b, "huber", 1.0, 0.1, path=path)
    G32, L32 = gpu.stage1_grad(X64.astype(cp.float32), y.astype(cp.float32),
                               W.astype(cp.float32), a.astype(cp.float32),
                               b.astype(cp.float32), "huber", 1.0, 0.1, path=path)
    rel = float(cp.linalg.norm(G32.astype(cp.float64) - G64) / cp.linalg.norm(G64))
    assert rel < 1e-4, rel
    assert abs(L32 - L64) / abs(L64) < 1e-4
    K64, v64 = gpu.stage2_gram(X64, y, W, b, path=path)
    K32, v32 = gpu.stage2_gram(X64.astype(cp.float32), y.astype(cp.float32),
                               W.astype(cp.float32), b.astype(cp.float32), path=path)
    assert float(cp.linalg.norm(K32 - K64) / cp.linalg.norm(K64)) < 1e-4
    assert float(cp.linalg.norm(v32 - v64) / cp.linalg.norm(v64)) < 1e-4


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_sampler_matches_numpy_philox(dtype):
    seed, stream, d = 987654321, 5, 37
    start, stop = 2**32 - 1000, 2**32 + 3000     # crosses the 32-bit row boundary
    dev = gpu.to_host(gpu.sample_gaussian_rows(seed, stream, start, stop, d, dtype))
    want = gpu.philox_gaussian_rows_numpy(seed, stream, start, stop, d, dtype)
    assert dev.dtype == np.dtype(dtype) and dev.shape == want.shape
    if np.dtype(dtype) == np.float32:
        # double log/sin/cos may differ by an ulp before rounding to float32
        np.testing.assert_allclose(dev, want, rtol=0, atol=2e-6)
        assert np.mean(dev == want) > 0.999
    else:
        np.testing.assert_allclose(dev, want, rtol=1e-13, atol=1e-13)
    # split invariance on the device
    parts = [gpu.to_host(gpu.sample_gaussian_rows(seed, stream, s, e, d, dtype))
             for s, e in ((start, start + 17), (start + 17, stop - 1), (stop - 1, stop))]
    np.testing.assert_array_equal(np.concatenate(parts), dev)


@pytest.mark.gpu
@needs_gpu
def test_gpu_tf32_off_by_default():
    cp = _cp()
    if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
        pytest.skip("CUPY_TF32 is set in this environment")
    assert gpu.tf32_enabled() is False
    # a GEMM where TF32 (10-bit mantissa) would lose the small perturbations
    n, d, m = 4096, 1024, 128
    rng = np.random.default_rng(1)
    X = (1.0 + 1e-3 * rng.standard_normal((n, d))).astype(np.float32)
    W = (rng.standard_normal((d, m)) / np.sqrt(d)).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    a = rng.choice([-1.0, 1.0], m).astype(np.float32)
    b = np.zeros(m, np.float32)
    args = [cp.asarray(v) for v in (X, y, W, a, b)]
    G32, _ = gpu.stage1_grad(*args, "square", 1.0, 0.0, "quadratic", path="gemm")
    G64, _ = ref.stage1_grad(*(v.astype(np.float64) for v in (X, y, W, a, b)),
                             "square", 1.0, 0.0, "quadratic")
    assert _relerr(G32, G64) < 1e-4
    assert gpu.tf32_enabled() is False
    # allow_tf32=True runs, and the previous compute type comes back afterwards
    gpu.stage1_grad(*args, "square", 1.0, 0.0, "quadratic", path="gemm", allow_tf32=True)
    assert gpu.tf32_enabled() is False


@pytest.mark.gpu
@needs_gpu
def test_gpu_modules_are_cached_and_helpers_work():
    cp = _cp()
    X, y, W, a, b = _problem(100, 20, 4, np.float32)
    args = [cp.asarray(v) for v in (X, y, W, a, b)]
    gpu.stage1_grad(*args, path="fused")
    n_modules = len(gpu.CupyLauncher._modules)
    gpu.stage1_grad(*args, path="fused")
    assert len(gpu.CupyLauncher._modules) == n_modules
    gpu.synchronize()
    assert isinstance(gpu.to_host(args[0]), np.ndarray)
