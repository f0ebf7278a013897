"""One-command GPU check of mimfast's CuPy kernels:  ``python benchmarks/gpu_check.py OUTDIR``.

On a machine with a usable CUDA device (about 5-8 minutes on an H200) it

1. prints the device and the versions (driver, runtime, NVRTC, cupy, numpy, Python);
2. runs ``pytest tests/test_gpu.py -m gpu`` in a subprocess and records pass/fail;
3. measures the machine: device-to-device copy bandwidth and cuBLAS sgemm TFLOP/s (TF32 off),
   with CUDA events;
4. times stage 1 (``stage1_grad``) on the "gemm" and "fused" paths and a cuBLAS-only lower
   bound (just the two GEMMs H = XW and X^T P) at d in {2048, 8192}, n = 8 d ln d (capped to
   fit memory), widths {8, 32, 128, 512}, float32: median of >= 10 timed calls after warm-up,
   reported as ms, TFLOP/s (4 n d m flops) and effective GB/s (one read of X), each next to
   the measured copy bandwidth and sgemm rate;
5. runs one full two-stage training at d = 8192 through ``mimfast.schedule.train`` (in a
   subprocess with a time limit), if that API is importable, and records the result or
   the error;

and writes everything to OUTDIR/summary.json (plus pytest_gpu.txt and pytest_gpu.xml).
Without a GPU it writes ``{"status": "no GPU: <reason>"}`` and exits 0.

The script exits 0 whenever it could write its summary; read "status", "tests" and the
per-item "error" fields for the verdict.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST_TIMEOUT_S = 210        # the GPU tests
BENCH_BUDGET_S = 150          # machine + stage-1 timings: no new measurement after this
TRAIN_TIMEOUT_S = 100         # the d = 8192 training
REPEATS = 10
WARMUP = 2
BENCH_DIMS = (2048, 8192)     # d of the stage-1 timings (n = 8 d ln d, capped)
BENCH_WIDTHS = (8, 32, 128, 512)
SGEMM_N = 8192                # square sgemm size of the machine measurement
COPY_BYTES = 4 * 2**30        # device-to-device copy size
TRAIN_D = 8192


def _log(*args):
    print("[gpu_check]", *args, flush=True)


def _write(outdir, summary):
    path = outdir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


def _import_gpu():
    try:
        from mimfast.kernels import gpu
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from mimfast.kernels import gpu
    return gpu


# ------------------------------------------------------------------ versions
def _versions(cp):
    import numpy as np

    rt = cp.cuda.runtime
    dev = cp.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    free, total = rt.memGetInfo()
    info = {
        "device": name,
        "compute_capability": dev.compute_capability,
        "sm_count": props.get("multiProcessorCount"),
        "memory_total_GiB": round(total / 2**30, 2),
        "memory_free_GiB": round(free / 2**30, 2),
        "driver_version": rt.driverGetVersion(),
        "runtime_version": rt.runtimeGetVersion(),
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "CUPY_TF32": os.environ.get("CUPY_TF32"),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
    }
    try:
        info["nvrtc_version"] = cp.cuda.nvrtc.getVersion()
    except Exception as exc:
        info["nvrtc_version"] = f"error: {exc}"
    return info


# ------------------------------------------------------------------ timing
def _median_ms(cp, fn, repeats=REPEATS, warmup=WARMUP):
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    start, end = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times), min(times)


def _machine(cp, gpu):
    res = {}
    nbytes = COPY_BYTES
    src = cp.empty(nbytes // 4, dtype=cp.float32)
    src.fill(1.0)
    dst = cp.empty_like(src)
    rt = cp.cuda.runtime

    def copy():
        rt.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, rt.memcpyDeviceToDevice,
                       cp.cuda.get_current_stream().ptr)

    med, best = _median_ms(cp, copy)
    res["copy_bytes"] = nbytes
    res["copy_ms_median"] = med
    res["copy_GBps"] = 2 * nbytes / (med * 1e-3) / 1e9      # read + write
    del src, dst
    cp.get_default_memory_pool().free_all_blocks()

    s = SGEMM_N
    A = gpu.sample_gaussian_rows(1, 1, 0, s, s, "float32")
    B = gpu.sample_gaussian_rows(1, 2, 0, s, s, "float32")
    C = cp.empty((s, s), dtype=cp.float32)
    with gpu._tf32_mode(False):
        med, best = _median_ms(cp, lambda: cp.matmul(A, B, out=C))
        res["sgemm_tf32"] = bool(gpu.tf32_enabled())
    res["sgemm_n"] = s
    res["sgemm_ms_median"] = med
    res["sgemm_TFLOPs"] = 2 * s**3 / (med * 1e-3) / 1e12
    del A, B, C
    cp.get_default_memory_pool().free_all_blocks()
    return res


def _stage1_bench(cp, gpu, machine, t_end):
    import numpy as np

    rows = []
    free, _total = cp.cuda.runtime.memGetInfo()
    for d in BENCH_DIMS:
        n = int(8 * d * math.log(d))
        cap = int(0.45 * free) // (4 * d)          # X in float32 takes <= 45% of free memory
        n = max(1024, min(n, cap))
        if time.time() > t_end:
            rows.append({"d": d, "skipped": "time budget"})
            continue
        X = gpu.sample_gaussian_rows(0, 0, 0, n, d, "float32")
        rng = np.random.default_rng(0)
        y = cp.asarray(rng.standard_normal(n).astype(np.float32))
        for m in BENCH_WIDTHS:
            W = cp.asarray((1e-3 * rng.standard_normal((d, m)) / np.sqrt(d)).astype(np.float32))
            a = cp.asarray(np.tile(np.array([1.0, -1.0], np.float32), m // 2))
            b = cp.zeros(m, dtype=cp.float32)
            P = cp.asarray(rng.standard_normal((n, m)).astype(np.float32))
            flops = 4.0 * n * d * m
            xbytes = 4.0 * n * d
            paths = ["gemm", "fused"] if m <= gpu.FUSED_MAX_WIDTH else ["gemm"]
            for path in paths + ["cublas_only"]:
                row = {"d": d, "n": n, "m": m, "dtype": "float32", "path": path}
                if time.time() > t_end:
                    row["skipped"] = "time budget"
                    rows.append(row)
                    continue
                try:
                    if path == "cublas_only":
                        H = cp.empty((n, m), dtype=cp.float32)
                        G = cp.empty((d, m), dtype=cp.float32)

                        def fn():
                            cp.matmul(X, W, out=H)
                            cp.matmul(X.T, P, out=G)
                    else:
                        def fn(path=path):
                            gpu.stage1_grad(X, y, W, a, b, "square", 1.0, 0.0, "logcosh",
                                            path=path)
                    with gpu._tf32_mode(False):
                        med, best = _median_ms(cp, fn)
                    row.update({
                        "ms_median": med, "ms_min": best,
                        "TFLOPs": flops / (med * 1e-3) / 1e12,
                        "x_read_GBps": xbytes / (med * 1e-3) / 1e9,
                    })
                    row["frac_of_sgemm"] = row["TFLOPs"] / machine["sgemm_TFLOPs"]
                    row["frac_of_copy_bw"] = row["x_read_GBps"] / machine["copy_GBps"]
                    if path == "fused":
                        row["plan"] = gpu.fused_plan("stage1", n, d, m, 4,
                                                     gpu.CupyLauncher().device())
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    row["traceback"] = traceback.format_exc()[-2000:]
                _log(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "plan")}))
                rows.append(row)
            del W, a, b, P
            cp.get_default_memory_pool().free_all_blocks()
        del X, y
        cp.get_default_memory_pool().free_all_blocks()
    return rows


# ------------------------------------------------------------------ pytest, training
def _run_pytest(outdir):
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_gpu.py"), "-m", "gpu",
           "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={outdir / 'pytest_gpu.xml'}"]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=PYTEST_TIMEOUT_S,
                           cwd=str(ROOT))
        out = r.stdout + r.stderr
        rc = r.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        out += f"\n[timeout after {PYTEST_TIMEOUT_S} s]"
        rc = "timeout"
    (outdir / "pytest_gpu.txt").write_text(out)
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    return {"command": " ".join(cmd), "returncode": rc, "passed": rc == 0,
            "seconds": round(time.time() - t0, 1), "summary_line": tail,
            "output_tail": out[-4000:]}


_TRAIN_CODE = r"""
import json, sys, time, math
out = sys.argv[1]
res = {}
try:
    from mimfast.schedule import train
    from mimfast.tasks import MultiIndexTask
    d = int(sys.argv[2])
    n = int(8 * d * math.log(d))
    task = MultiIndexTask(d=d, r=2, link="he2", noise=0.0, seed=0)
    t0 = time.time()
    rec = train(task, n1=n, n2=n, width=32, backend="cupy", dtype="float32", seed=0)
    res["wall_s"] = time.time() - t0
    if not isinstance(rec, dict):
        rec = dict(getattr(rec, "__dict__", {})) or {"repr": repr(rec)}
    rec.pop("history", None)
    res["record"] = rec
    res["test_rel_mse"] = rec.get("test_rel_mse")
    res["timings"] = rec.get("timings")
    res["n1"] = n
except Exception as exc:
    import traceback
    res["error"] = f"{type(exc).__name__}: {exc}"
    res["traceback"] = traceback.format_exc()[-4000:]
with open(out, "w") as f:
    json.dump(res, f, default=str)
"""


def _run_training(outdir):
    path = outdir / "train.json"
    t0 = time.time()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        r = subprocess.run([sys.executable, "-c", _TRAIN_CODE, str(path), str(TRAIN_D)],
                           capture_output=True,
                           text=True, timeout=TRAIN_TIMEOUT_S, cwd=str(ROOT), env=env)
        res = json.loads(path.read_text()) if path.exists() else {
            "error": f"no result (rc={r.returncode})", "stderr": r.stderr[-3000:]}
    except subprocess.TimeoutExpired:
        res = {"error": f"timeout after {TRAIN_TIMEOUT_S} s"}
    res["seconds"] = round(time.time() - t0, 1)
    if path.exists():
        path.unlink()
    return res


# ------------------------------------------------------------------ main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        print("usage: python benchmarks/gpu_check.py OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(argv[0])
    outdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    summary = {"script": "benchmarks/gpu_check.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "python": platform.python_version()}
    try:
        gpu = _import_gpu()
    except Exception as exc:
        summary["status"] = f"error: mimfast.kernels.gpu failed to import: {exc}"
        _write(outdir, summary)
        _log(summary["status"])
        return 0
    ok, reason = gpu.is_available()
    if not ok:
        summary["status"] = f"no GPU: {reason}"
        path = _write(outdir, summary)
        _log(summary["status"])
        _log(f"wrote {path}")
        return 0

    import cupy as cp

    summary["status"] = "ran"
    try:
        summary["device"] = _versions(cp)
    except Exception as exc:
        summary["device"] = {"error": f"{type(exc).__name__}: {exc}"}
    _log(json.dumps(summary["device"]))
    _write(outdir, summary)

    _log("running pytest tests/test_gpu.py -m gpu ...")
    summary["tests"] = _run_pytest(outdir)
    _log(f"pytest: rc={summary['tests']['returncode']} {summary['tests']['summary_line']}")
    _write(outdir, summary)

    t_end = time.time() + BENCH_BUDGET_S
    try:
        summary["machine"] = _machine(cp, gpu)
        _log(json.dumps(summary["machine"]))
    except Exception as exc:
        summary["machine"] = {"error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()[-2000:]}
    _write(outdir, summary)
    if "error" not in summary["machine"]:
        try:
            summary["stage1"] = _stage1_bench(cp, gpu, summary["machine"], t_end)
        except Exception as exc:
            summary["stage1"] = {"error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()[-2000:]}
        _write(outdir, summary)
    cp.get_default_memory_pool().free_all_blocks()

    _log(f"training at d={TRAIN_D} through mimfast.schedule.train ...")
    summary["training"] = _run_training(outdir)
    _log(json.dumps({k: v for k, v in summary["training"].items()
                     if k in ("error", "test_rel_mse", "timings", "seconds")}, default=str))
    summary["seconds"] = round(time.time() - t_start, 1)
    path = _write(outdir, summary)
    _log(f"wrote {path} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
