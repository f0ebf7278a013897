"""Side-by-side report: Numba CPU kernels vs the numpy reference, against the
machine's own roofline.

    python benchmarks/cpu_kernels_report.py [--n 65536] [--d 2048]
        [--widths 8 32 128 512] [--reps 5] [--dtype float32] [--both-paths]

For each width m it times ``stage1_grad`` and ``stage2_gram`` (median of
``--reps`` runs after one warm-up, the two implementations interleaved in one
process so both see the same machine state) and prints, per implementation:
median ms, GFLOP/s, GB/s of X read, and the fraction of the roofline

    roofline time = max(bytes of X / stream read bandwidth, flops / sgemm rate)

The stream read bandwidth (a parallel Numba read of X) and the sgemm rate
(numpy/BLAS, all threads, 2048^3) are measured in the same process, inside the
same interleaved rounds as the kernels of each row (shared, noisy machines
change speed over minutes), and printed per row.
Flops: stage 1 = 4 n d m (two GEMM-shaped products), stage 2 = 2 n d m + 2 n m^2.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from mimfast.kernels import cpu, reference  # noqa: E402


@njit(parallel=True, fastmath=True, nogil=True)
def _stream_read(X):
    """Sum of X, one contiguous slab per thread (a pure read stream)."""
    n = X.shape[0]
    T = numba.get_num_threads()
    part = np.zeros(T)
    for t in prange(T):
        s = 0.0
        for i in range(t * n // T, (t + 1) * n // T):
            acc = X[i, 0] * 0
            for k in range(X.shape[1]):
                acc += X[i, k]
            s += acc
        part[t] = s
    return part.sum()


def interleaved(fns, reps):
    """Median seconds of each callable, runs interleaved (a b a b ...)."""
    for f in fns.values():
        f()                                # warm-up (and JIT)
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in ts.items()}


def blas_description():
    rows = []
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            rows.append(f"{lib.get('internal_api')} {lib.get('version')} "
                        f"kernel={lib.get('architecture')} threads={lib.get('num_threads')} "
                        f"({os.path.basename(lib.get('filepath', ''))})")
    return rows or ["(no BLAS found by threadpoolctl)"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128, 512])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--both-paths", action="store_true",
                    help="also time the non-default Numba path of stage 1")
    ap.add_argument("--skip-stage2", action="store_true")
    args = ap.parse_args(argv)
    n, d, dt = args.n, args.d, np.dtype(args.dtype)
    reps = max(5, args.reps)

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32).astype(dt, copy=False)
    y = rng.standard_normal(n).astype(dt)
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba's np.dot calls)

    # ---- the machine, measured in this process (again inside every row below)
    A = rng.standard_normal((2048, 2048)).astype(dt)
    B = rng.standard_normal((2048, 2048)).astype(dt)
    gemm_name = "sgemm" if dt == np.float32 else "dgemm"
    probes = {"_stream": lambda: _stream_read(X), "_gemm": lambda: A @ B}
    xbytes = X.nbytes

    def machine(t):
        return xbytes / t["_stream"] / 1e9, 2 * 2048 ** 3 / t["_gemm"] / 1e9

    bw, gf = machine(interleaved(probes, reps))

    print(f"# mimfast CPU kernels: numba vs numpy reference   n={n} d={d} dtype={dt.name}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numba {numba.__version__} threads={numba.get_num_threads()} "
          f"layer={numba.threading_layer()}, numpy {np.__version__}")
    for row in blas_description():
        print(f"# BLAS: {row}")
    print(f"# measured at start: stream read {bw:.1f} GB/s (parallel Numba read of X, "
          f"{xbytes / 2**20:.0f} MiB); {gemm_name} {gf:.1f} GFLOP/s (numpy, 2048^3, all BLAS threads)")
    print(f"# median of {reps} interleaved runs after warm-up; stream and {gemm_name} re-measured in "
          f"the same rounds as each row;")
    print(f"# roof = (roofline time = max(bytes(X)/stream, flops/{gemm_name})) / time;  "
          f"x = numpy time / numba time")

    hdr = (f"{'kernel':<7} {'m':>4} {'path':>5} | {'numba ms':>9} {'GF/s':>6} {'GB/s':>6} {'roof':>5} |"
           f" {'numpy ms':>9} {'GF/s':>6} {'GB/s':>6} {'roof':>5} | {'x':>5} |"
           f" {'stream':>6} {gemm_name:>6} {'roof ms':>8} {'bound':>7}")
    print(hdr)
    print("-" * len(hdr))

    def line(kernel, m, path, flops, t, key):
        bw, gf = machine(t)
        t_nb, t_np = t[key], t["numpy"]
        t_bw = xbytes / (bw * 1e9)
        t_fl = flops / (gf * 1e9)
        roof = max(t_bw, t_fl)
        bound = "memory" if t_bw >= t_fl else "compute"
        print(f"{kernel:<7} {m:>4} {path:>5} | {t_nb * 1e3:>9.1f} {flops / t_nb / 1e9:>6.1f} "
              f"{xbytes / t_nb / 1e9:>6.1f} {roof / t_nb:>5.2f} | {t_np * 1e3:>9.1f} "
              f"{flops / t_np / 1e9:>6.1f} {xbytes / t_np / 1e9:>6.1f} {roof / t_np:>5.2f} | "
              f"{t_np / t_nb:>5.2f} | {bw:>6.1f} {gf:>6.1f} {roof * 1e3:>8.1f} {bound:>7}", flush=True)

    for m in args.widths:
        W = (rng.standard_normal((d, m)) / np.sqrt(d)).astype(dt)
        a = np.where(np.arange(m) % 2 == 0, 1.0, -1.0).astype(dt)
        b = (0.5 * rng.standard_normal(m)).astype(dt)
        auto = cpu.choose_path(m, d, dt)
        paths = [auto] + ([p for p in ("loops", "gemm") if p != auto] if args.both_paths else [])
        fns = dict(probes)
        fns["numpy"] = lambda: reference.stage1_grad(X, y, W, a, b)
        for p in paths:
            fns[p] = (lambda p=p: cpu.stage1_grad(X, y, W, a, b, path=p))
        t = interleaved(fns, reps)
        for p in paths:
            line("stage1", m, p, 4.0 * n * d * m, t, p)
        if not args.skip_stage2:
            fns = dict(probes)
            fns["numba"] = lambda: cpu.stage2_gram(X, y, W, b)
            fns["numpy"] = lambda: reference.stage2_gram(X, y, W, b)
            t = interleaved(fns, reps)
            line("stage2", m, auto, 2.0 * n * d * m + 2.0 * n * m * m, t, "numba")


if __name__ == "__main__":
    main()
