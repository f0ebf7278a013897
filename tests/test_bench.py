"""`mimfast bench`: machine limits, roofline fractions and ratios on tiny shapes (no timing
assertions: only that the numbers are there and consistent)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mimfast import bench
from mimfast.errors import MimfastInputError


@pytest.fixture(scope="module")
def result():
    return bench.run_bench([64], [4, 8], ["float32"], ["numba", "numpy"], n=2048,
                           repeats=5, torch_peer=True, log=None, square=256)


def test_machine_limits_are_measured(result):
    (lim,) = result["limits"]
    assert lim["d"] == 64 and lim["n"] == 2048 and lim["x_bytes"] == 2048 * 64 * 4
    assert lim["stream_GBps"] > 0 and lim["sgemm_square_GFLOPs"] > 0
    assert set(lim["sgemm_at_shape"]) == {4, 8}
    assert lim["compute_ceiling_GFLOPs"] >= lim["sgemm_square_GFLOPs"]
    assert result["machine"]["blas_kernel"]  # what threadpoolctl shows
    sr = lim["sampler_ns_per_element"]
    assert sr["task.sample"] > 0 and sr["sample_rows"] > 0


def test_rows_have_roofline_and_ratio(result):
    rows = result["rows"]
    impls = {r["impl"] for r in rows}
    assert "numpy" in impls
    kernels = {(r["kernel"], r["width"]) for r in rows}
    assert kernels == {(k, m) for k in bench.KERNELS for m in (4, 8)}
    for r in rows:
        assert len(r["times_s"]) == 5 and r["median_s"] == np.median(r["times_s"])
        assert r["frac_roofline"] > 0 and r["roofline_s"] > 0
        assert r["roofline_bound"] in ("memory", "compute")
        assert np.isclose(r["frac_roofline"], r["roofline_s"] / r["median_s"])
        assert r["above_roofline"] == (r["frac_roofline"] > 1)
        if r["impl"] == "numpy":
            assert r["x_numpy"] == 1.0
    table = bench.format_result(result)
    for word in ("frac roof", "x numpy", "GB/s", "GFLOP/s", "stream read", "BLAS"):
        assert word in table


def test_threading_layer_is_recorded_after_the_kernels_ran(result):
    (numba_be,) = [b for b in result["machine"]["backends"] if b["backend"] == "numba"]
    assert not numba_be["threading_layer"].startswith("not yet chosen")


def _fake_result(frac, x_beats_cache, dtype="float32"):
    lim = {"d": 64, "n": 1024, "dtype": dtype, "x_bytes": 2 ** 18, "stream_GBps": 10.0,
           "stream_method": "numba-prange", "sgemm_square_GFLOPs": 50.0,
           "compute_ceiling_GFLOPs": 60.0, "x_beats_cache": x_beats_cache}
    row = {"kernel": "stage1_grad", "impl": "numba", "d": 64, "width": 8, "n": 1024,
           "dtype": dtype, "median_s": 1e-3, "GBps": 1.0, "GFLOPs": 1.0,
           "roofline_s": frac * 1e-3, "roofline_bound": "memory", "frac_roofline": frac,
           "above_roofline": frac > 1, "x_numpy": 2.0}
    return {"machine": {"blas_kernel": "x", "env": {}}, "limits": [lim], "rows": [row]}


def test_rows_above_the_roofline_are_marked():
    text = bench.format_result(_fake_result(1.18, x_beats_cache=False))
    row = [line for line in text.splitlines() if line.startswith("stage1_grad")][0]
    assert "1.18*" in row
    assert "* frac roof > 1: X fits in cache" in text and "does not apply" in text
    text = bench.format_result(_fake_result(1.18, x_beats_cache=True))
    assert "1.18*" in text and "X fits in cache" not in text and "shared machine" in text
    text = bench.format_result(_fake_result(0.9, x_beats_cache=False))
    assert "0.90*" not in text and "frac roof > 1" not in text


def test_machine_line_names_the_gemm_by_dtype():
    assert "sgemm square" in bench.format_result(_fake_result(0.5, True, "float32"))
    text = bench.format_result(_fake_result(0.5, True, "float64"))
    assert "dgemm square" in text and "sgemm" not in text


def test_small_default_n_warns_and_names_n():
    msgs = []
    # a budget of 6 MiB makes the default X 1 MiB: under any cache-beating size
    res = bench.run_bench([32], [2], ["float32"], ["numpy"], kernels=["stage1_grad"],
                          torch_peer=False, sampler=False, square=64, log=msgs.append,
                          memory_budget=6 * 2 ** 20)
    (lim,) = res["limits"]
    assert lim["n"] == 8192 and lim["x_beats_cache"] is False
    (warn,) = [m for m in msgs if m.startswith("warning:")]
    assert "--n" in warn and "roofline" in warn and "\n" not in warn
    assert res["warnings"] == [warn]
    # an explicit --n is the user's choice: no warning
    res = bench.run_bench([32], [2], ["float32"], ["numpy"], n=1024, kernels=["stage1_grad"],
                          torch_peer=False, sampler=False, square=64, log=None)
    assert res["warnings"] == [] and res["limits"][0]["x_beats_cache"] is False


def test_cache_beating_size():
    assert bench.cache_beating_bytes(32 * 2 ** 20)[0] == 128 * 2 ** 20
    assert bench.cache_beating_bytes(0)[0] == bench.X_MIN_BYTES_UNKNOWN_CACHE


def test_unknown_backend_is_an_error_unavailable_one_is_skipped():
    with pytest.raises(MimfastInputError, match="--backend 'nope' is unknown"):
        bench.run_bench([16], [2], backends=["numba", "nope"], log=None)
    from mimfast.backends import gpu_status
    if gpu_status()[0]:
        pytest.skip("a GPU is visible here: cupy is available")
    res = bench.run_bench([32], [2], ["float32"], ["cupy", "numpy"], n=1024,
                          kernels=["stage1_grad"], torch_peer=False, sampler=False,
                          square=64, log=None)
    assert "cupy" in res["machine"]["skipped_backends"]
    assert "skipped backend cupy" in bench.format_result(res)


def test_threads_above_numba_pool_are_rejected():
    import numba
    from mimfast.backends import get_backend
    limit = numba.config.NUMBA_NUM_THREADS
    with pytest.raises(MimfastInputError, match="NUMBA_NUM_THREADS"):
        get_backend("numba", limit + 1)
    assert get_backend("numba", limit).describe()["threads"] == limit
    assert get_backend("numpy", limit + 1).threads == limit + 1  # BLAS only: no Numba pool
    with pytest.raises(MimfastInputError, match=f"--threads={limit + 1} is more than"):
        bench.run_bench([16], [2], threads=limit + 1, log=None)


def test_peers_are_optional(result):
    try:
        import torch  # noqa: F401
    except ImportError:
        assert result["peers"] is None
        assert not any(r["impl"].startswith("peer:") for r in result["rows"])
    else:
        assert any(r["impl"] == "peer:torch-autograd" for r in result["rows"])


def test_roofline_arithmetic():
    assert bench.flops("stage1_grad", 10, 20, 4) == 4 * 10 * 20 * 4
    assert bench.flops("stage2_gram", 10, 20, 4) == 2 * 10 * 20 * 4 + 2 * 10 * 16
    n = bench.default_n(2048)
    assert n * 2048 * 4 <= bench.X_TARGET_BYTES and n % 1024 == 0 and n >= 1024
    assert bench.default_n(8192, memory_budget=6 * 2 ** 27) * 8192 * 4 <= 2 ** 27


def test_too_few_repeats_is_an_error():
    with pytest.raises(MimfastInputError, match="at least 5"):
        bench.run_bench([16], [2], repeats=3, log=None)


def test_cli_bench_json(tmp_path):
    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "mimfast", "bench", "--d", "32", "--width", "4",
                        "--n", "1024", "--backend", "numpy", "--kernel", "stage1_grad",
                        "--no-torch", "--json", str(out)],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("frac roof") == 1  # the table once, on stdout
    assert "frac roof" not in p.stderr and "stage1_grad  numpy" not in p.stderr
    rec = json.loads(out.read_text())
    assert [r["impl"] for r in rec["rows"]] == ["numpy"]
    assert rec["machine"]["blas"]


def test_too_few_repeats_says_the_fix():
    with pytest.raises(MimfastInputError, match="pass --repeats 5 or more"):
        bench.run_bench([16], [2], repeats=3, log=None)


@pytest.mark.parametrize("kw, match", [({"n": 0}, "--n=0"), ({"n": -5}, "--n=-5"),
                                       ({"ds": [0]}, "--d=0"), ({"widths": [0]}, "--width=0"),
                                       ({"threads": 0}, "--threads=0")])
def test_bad_sizes_are_rejected(kw, match):
    args = {"ds": [16], "widths": [2], "n": None, "repeats": 5, "threads": None, **kw}
    with pytest.raises(MimfastInputError, match=match):
        bench.check_bench_inputs(**args)


@pytest.mark.parametrize("args, match", [(["--width", "3"], "even"),
                                         (["--n", "0"], "--n=0: rows must be >= 1"),
                                         (["--n", "-1"], "--n=-1"),
                                         (["--d", "0"], "--d=0"),
                                         (["--repeats", "3"], "pass --repeats 5 or more"),
                                         (["--kernel", "nope"], "unknown"),
                                         (["--dtype", "int8"], "not supported"),
                                         (["--backend", "numba,nope"],
                                          "--backend 'nope' is unknown"),
                                         (["--width", "8,,32"], "empty entry"),
                                         (["--d", "64,"], "empty entry"),
                                         (["--threads", "100000"], "NUMBA_NUM_THREADS"),
                                         (["--memory-budget", "0"], "--memory-budget=0"),
                                         (["--json", "/"], "--json '/' is a directory")])
def test_cli_bench_errors(args, match):
    p = subprocess.run([sys.executable, "-m", "mimfast", "bench", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and match in p.stderr and "Traceback" not in p.stderr
