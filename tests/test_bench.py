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
        if r["impl"] == "numpy":
            assert r["x_numpy"] == 1.0
    table = bench.format_result(result)
    for word in ("frac roof", "x numpy", "GB/s", "GFLOP/s", "stream read", "BLAS"):
        assert word in table


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
                                         (["--dtype", "int8"], "not supported")])
def test_cli_bench_errors(args, match):
    p = subprocess.run([sys.executable, "-m", "mimfast", "bench", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and match in p.stderr and "Traceback" not in p.stderr
