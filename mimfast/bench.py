"""`python -m mimfast bench`: the kernels against this machine's own roofline.

In one process, on one set of arrays:

1. The machine's limits, measured now (DESIGN.md section 3: these machines are
   shared and noisy, so only same-run ratios mean anything):
   * stream read bandwidth: a multi-threaded read (sum) of the very X the
     kernels read, so cache effects match (Numba ``prange`` if available,
     else threaded numpy; the faster counts);
   * sgemm GFLOP/s at the kernel's shapes: the two GEMMs of a stage-1 step
     (X @ W and X^T @ P, 4 n d m flops together) through numpy's BLAS with all
     its threads, and a square 2048^3 sgemm.  The compute ceiling is the best
     of these (at small m the step's GEMMs are bandwidth-bound, so their rate
     is no ceiling);
   * drawing task rows: ns per element of numpy's generator (``task.sample``)
     and of the fast sampler (``data.sample_rows``, identical rows) - the
     cost a streamed run pays on every pass over X.
2. Each kernel x backend at each (d, width, dtype): the median of
   ``--repeats`` (>= 5) timed calls after a warm-up call (which also JIT-compiles
   Numba), the implementations interleaved round by round so that a noisy
   neighbour hurts all of them alike.

The read and the square sgemm are timed again inside every row's rounds (so a
load change during the run moves the ceiling and the kernels alike): a row's
roofline uses that row's read bandwidth and the best sgemm rate seen (in the
row, or at the kernel's shapes at the start).

Roofline time = max(bytes of X / stream bandwidth, flops / compute ceiling),
with flops = 4 n d m for the stage-1 gradient and 2 n d m + 2 n m^2 for the
stage-2 Gram.  ``frac roofline`` = roofline time / measured time (1.0 = at
the machine's limit), ``x numpy`` = numpy reference time / measured time.

If PyTorch is importable, the stage-1 step written plainly in PyTorch
(``torch-matmul``: the same two matmuls and elementwise work; ``torch-autograd``:
loss.backward() on W) is timed as a peer, labelled ``peer:``; it is never
required.  The BLAS that numpy uses is reported from threadpoolctl (the
OPENBLAS_* environment is left alone and shown as found).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import MimfastInputError, human_bytes

KERNELS = ("stage1_grad", "stage2_gram")
X_TARGET_BYTES = 512 * 2 ** 20
# X smaller than this may stay in the caches between calls, and a cached X is read
# faster than the DRAM bandwidth the roofline assumes
CACHE_MULTIPLE = 4
X_MIN_BYTES_UNKNOWN_CACHE = 128 * 2 ** 20


# ---------------------------------------------------------------------- sizes
def default_n(d, dtype="float32", target_bytes=X_TARGET_BYTES, memory_budget=None):
    """Rows so that X is about ``target_bytes`` (512 MiB: beyond the caches), within memory."""
    from .data import default_memory_budget
    item = np.dtype(dtype).itemsize
    target = int(target_bytes)
    budget = default_memory_budget(memory_budget)
    if budget:
        target = min(target, budget // 6)
    n = max(1024, target // (int(d) * item))
    return int(n // 1024 * 1024) or 1024


def l3_cache_bytes():
    """Size of the L3 cache one core sees, or None if unknown."""
    from .kernels import cache_bytes
    return cache_bytes(3)


def cache_beating_bytes(l3=None):
    """(bytes, description): an X at least this big is not served from the caches."""
    l3 = l3_cache_bytes() if l3 is None else l3
    if l3:
        return CACHE_MULTIPLE * l3, f"{CACHE_MULTIPLE}x the {human_bytes(l3)} L3 cache"
    return X_MIN_BYTES_UNKNOWN_CACHE, (f"{human_bytes(X_MIN_BYTES_UNKNOWN_CACHE)} (L3 size "
                                       "unknown)")


def flops(kernel, n, d, m):
    if kernel == "stage1_grad":
        return 4.0 * n * d * m
    if kernel == "stage2_gram":
        return 2.0 * n * d * m + 2.0 * n * m * m
    raise ValueError(kernel)


# ---------------------------------------------------------------------- timing
def _median_time(fn, repeats, sync=None):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def time_interleaved(fns, repeats, warmup=1):
    """{name: [times]} with the callables run round-robin after warm-up calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------- machine
_READ = None


def _numba_read():
    global _READ
    if _READ is None:
        try:
            import numba

            @numba.njit(parallel=True, fastmath=True, cache=True)
            def read(X):
                n = X.shape[0]
                acc = np.zeros(n, dtype=np.float64)
                for i in numba.prange(n):
                    s = X.dtype.type(0)
                    row = X[i]
                    for j in range(row.shape[0]):
                        s += row[j]
                    acc[i] = s
                return acc.sum()
            _READ = read
        except Exception:
            _READ = False
    return _READ or None


def stream_bandwidth(X, repeats=5, threads=None):
    """Bytes/s of a multi-threaded read of X (best of Numba prange and threaded numpy)."""
    threads = threads or os.cpu_count() or 1
    res = {}
    parts = np.array_split(np.arange(X.shape[0]), threads)
    slices = [slice(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]

    pool = ThreadPoolExecutor(len(slices))

    def np_read():
        return sum(pool.map(lambda s: float(X[s].sum(dtype=X.dtype)), slices))

    fns = {"numpy-threads": np_read}
    read = _numba_read()
    if read is not None:
        fns["numba-prange"] = lambda: read(X)
    try:
        times = time_interleaved(fns, repeats)
    finally:
        pool.shutdown()
    for k, ts in times.items():
        res[k] = X.nbytes / statistics.median(ts)
    best = max(res, key=res.get)
    return res[best], best, res


def sgemm_rates(X, m, repeats=3):
    """GFLOP/s of the step's two GEMMs at shape (n, d, m) through numpy's BLAS."""
    n, d = X.shape
    rng = np.random.default_rng(0)
    W = rng.standard_normal((d, m)).astype(X.dtype)
    P = rng.standard_normal((n, m)).astype(X.dtype)
    times = time_interleaved({"xw": lambda: X @ W, "xtp": lambda: X.T @ P}, repeats)
    t_xw = statistics.median(times["xw"])
    t_xtp = statistics.median(times["xtp"])
    return {"X@W": 2e-9 * n * d * m / t_xw, "X^T@P": 2e-9 * n * d * m / t_xtp,
            "step": 4e-9 * n * d * m / (t_xw + t_xtp)}


def square_sgemm(dtype="float32", size=2048, repeats=3):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((size, size)).astype(dtype)
    B = rng.standard_normal((size, size)).astype(dtype)
    med, _ = _median_time(lambda: A @ B, repeats + 1)
    return 2e-9 * size ** 3 / med


def sampler_rates(d, dtype="float32", rows=4096, repeats=3, threads=None):
    """ns per element drawing task rows: numpy's generator (task.sample) vs the fast sampler.

    Both give identical rows; a streamed run pays this on every pass over X.
    """
    from .data import sample_rows, sampler_kind
    from .tasks import MultiIndexTask
    task = MultiIndexTask(d=d, r=2, link="he2", seed=3)
    out = np.empty((rows, d), dtype=dtype)
    sample_rows(task, 1024, "stage1", 0, dtype)  # JIT
    times = time_interleaved({
        "task.sample": lambda: task.sample(rows, "stage1", 0, dtype, threads=threads),
        "sample_rows": lambda: sample_rows(task, rows, "stage1", 0, dtype, threads=threads,
                                           out=out)}, repeats, warmup=0)
    per = {k: 1e9 * statistics.median(v) / (rows * d) for k, v in times.items()}
    per["fast_filler"] = sampler_kind()
    return per


def roofline_probes(X, A):
    """Zero-argument probes of read bandwidth and sgemm, timed with a row's kernels."""
    probes = {}
    read = _numba_read()
    if read is not None:
        probes["_probe_read"] = lambda: read(X)
    probes["_probe_sgemm"] = lambda: A @ A
    return probes


def bw_probe(X, times, probes):
    if "_probe_read" not in probes:
        return 0.0
    return X.nbytes / statistics.median(times["_probe_read"])


def sq_probe(A, times):
    return 2e-9 * A.shape[0] ** 3 / statistics.median(times["_probe_sgemm"])


def blas_info():
    from threadpoolctl import threadpool_info
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads",
            "threading_layer", "prefix")
    return [{k: v for k, v in d.items() if k in keep} for d in threadpool_info()]


def blas_kernel_line(info):
    blas = [b for b in info if b.get("user_api") == "blas"]
    if not blas:
        return "no BLAS found by threadpoolctl"
    return "; ".join(f"{b.get('internal_api')} {b.get('version')} kernel="
                     f"{b.get('architecture')} threads={b.get('num_threads')}"
                     for b in blas)


# ---------------------------------------------------------------------- problems
def make_problem(d, n, m, dtype, seed=0):
    """X, y from a he2 task (the fast sampler), stage-1 and stage-2 parameters."""
    from .data import sample_rows
    from .tasks import MultiIndexTask
    task = MultiIndexTask(d=d, r=2, link="he2", seed=seed)
    X, y = sample_rows(task, n, "stage1", 0, dtype)
    return X, y


def params(d, m, dtype, seed=0):
    rng = np.random.default_rng([seed, 99])
    half = rng.standard_normal((d, m // 2))
    half *= 1e-3 / np.linalg.norm(half, axis=0, keepdims=True)
    W1 = np.ascontiguousarray(np.repeat(half, 2, axis=1), dtype=dtype)
    a = np.tile(np.array([1.0, -1.0]), m // 2).astype(dtype)
    b1 = np.zeros(m, dtype=dtype)
    W2 = rng.standard_normal((d, m))
    W2 = np.ascontiguousarray(W2 / np.linalg.norm(W2, axis=0), dtype=dtype)
    b2 = rng.standard_normal(m).astype(dtype)
    return W1, a, b1, W2, b2


def backend_callables(kernel, backends, X, y, W1, a, b1, W2, b2):
    """{label: zero-arg callable} for one kernel on every available backend."""
    out = {}
    for be in backends:
        Xd, yd = be.asarray(X), be.asarray(y)
        if kernel == "stage1_grad":
            args = (be.asarray(W1), be.asarray(a), be.asarray(b1))

            def fn(be=be, Xd=Xd, yd=yd, args=args):
                r = be.stage1_grad(Xd, yd, *args, "square", 1.0, 0.0, "logcosh")
                be.synchronize()
                return r
        else:
            args = (be.asarray(W2), be.asarray(b2))

            def fn(be=be, Xd=Xd, yd=yd, args=args):
                r = be.stage2_gram(Xd, yd, *args, "logcosh")
                be.synchronize()
                return r
        out[be.name] = fn
    return out


def torch_peers(X, y, W1, a, b1):
    """Plain-PyTorch stage-1 steps (matmul and autograd), or {} without PyTorch."""
    try:
        import torch
    except Exception:
        return {}, None
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y)
    Wt = torch.from_numpy(W1.copy())
    at = torch.from_numpy(a)
    bt = torch.from_numpy(b1)
    n = X.shape[0]

    def matmul():
        with torch.no_grad():
            H = Xt @ Wt + bt
            f = (torch.abs(H) + torch.log1p(torch.exp(-2 * torch.abs(H))) - math.log(2.0)) @ at
            c = f - yt
            P = (c[:, None] * at[None, :]) * torch.tanh(H)
            return Xt.T @ P / n

    def autograd():
        W = Wt.clone().requires_grad_(True)
        H = Xt @ W + bt
        f = (torch.abs(H) + torch.log1p(torch.exp(-2 * torch.abs(H))) - math.log(2.0)) @ at
        loss = 0.5 * torch.mean((f - yt) ** 2)
        loss.backward()
        return W.grad

    label = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
    return {"peer:torch-matmul": matmul, "peer:torch-autograd": autograd}, label


# ---------------------------------------------------------------------- the bench
MIN_REPEATS = 5


def check_bench_inputs(ds, widths, n=None, repeats=MIN_REPEATS, threads=None):
    """Reject bad sizes before anything is allocated (MimfastInputError naming the argument)."""
    if not ds or any(int(d) < 1 for d in ds):
        raise MimfastInputError(f"--d={','.join(map(str, ds))}: every d must be >= 1; "
                                "pass e.g. --d 512,2048")
    if not widths or any(int(m) < 1 for m in widths):
        raise MimfastInputError(f"--width={','.join(map(str, widths))}: every width must be "
                                ">= 1 (even: +/- pairs); pass e.g. --width 8,64")
    if n is not None and int(n) < 1:
        raise MimfastInputError(f"--n={n}: rows must be >= 1; pass --n 1024 or more, or "
                                "leave it out for the default (X about 512 MiB)")
    if int(repeats) < MIN_REPEATS:
        raise MimfastInputError(f"--repeats={repeats}: quote a median of at least "
                                f"{MIN_REPEATS} runs; pass --repeats {MIN_REPEATS} or more")
    if threads is not None and int(threads) < 1:
        raise MimfastInputError(f"--threads={threads}: must be >= 1; pass --threads 1 or "
                                "more, or leave it out for all cores")


def check_backend_names(backends, threads=None):
    """Unknown names and more threads than Numba has are errors; returns the resolved names.

    Only a known backend that cannot run here (cupy without a GPU) is skipped later."""
    from .backends import _REGISTRY, check_threads, resolve_name
    if not backends:
        raise MimfastInputError("--backend is empty; pass e.g. --backend numba,numpy")
    resolved = []
    for name in backends:
        try:
            resolved.append(resolve_name(name))
        except MimfastInputError:
            raise MimfastInputError(
                f"--backend {name!r} is unknown; choose from "
                f"{', '.join(('auto', *_REGISTRY))} (comma-separated)") from None
    if "numba" in resolved:
        check_threads(threads, "--threads")  # the only backend with a thread pool limit
    return resolved


def run_bench(ds, widths, dtypes=("float32",), backends=("numba", "numpy"), n=None,
              kernels=KERNELS, repeats=5, threads=None, torch_peer=True, log=print,
              sampler=True, square=2048, memory_budget=None):
    """Measure the machine, then every kernel x backend; returns a dict (JSON-able)."""
    from .backends import get_backend
    check_bench_inputs(ds, widths, n, repeats, threads)
    check_backend_names(backends, threads)
    bes, skipped = [], {}
    for name in backends:
        try:
            bes.append(get_backend(name, threads))
        except MimfastInputError as exc:  # known but unavailable here (cupy without a GPU)
            skipped[name] = str(exc)
    if not bes:
        raise MimfastInputError("no requested backend is available: " + "; ".join(
            f"{k}: {v}" for k, v in skipped.items()))
    names = [b.name for b in bes]
    if "numpy" not in names:  # the reference column needs it
        bes.append(get_backend("numpy", threads))
    info = blas_info()
    result = {
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "blas": info, "blas_kernel": blas_kernel_line(info),
                    "env": {k: v for k, v in os.environ.items()
                            if k.startswith(("OPENBLAS", "NUMBA_NUM", "OMP_NUM", "MKL_NUM"))},
                    "backends": [b.describe() for b in bes],
                    "skipped_backends": skipped},
        "limits": [], "rows": [], "peers": None, "warnings": []}
    cache_bytes, cache_what = cache_beating_bytes()
    result["machine"]["l3_cache_bytes"] = l3_cache_bytes()
    try:
        import numba
        result["machine"]["numba"] = numba.__version__
    except ImportError:
        pass
    for dtype in dtypes:
        peak_sq = square_sgemm(dtype, square)
        square_A = np.random.default_rng(2).standard_normal((square, square)).astype(dtype)
        for d in ds:
            nn = n or default_n(d, dtype, memory_budget=memory_budget)
            x_bytes = nn * d * np.dtype(dtype).itemsize
            if n is None and x_bytes < cache_bytes:
                need = -(-cache_bytes // (d * np.dtype(dtype).itemsize) // 1024) * 1024
                capped = nn < default_n(d, dtype, memory_budget=2 ** 62)
                msg = (f"warning: the default --n={nn} makes X {human_bytes(x_bytes)} at d={d} "
                       f"{dtype}{' (capped by the memory budget)' if capped else ''}, under "
                       f"{cache_what}: the kernels may run from cache and beat the DRAM "
                       f"roofline; pass --n {need} or more"
                       + (" (or a larger --memory-budget)" if capped else ""))
                result["warnings"].append(msg)
                if log:
                    log(msg)
            X, y = make_problem(d, nn, max(widths), dtype)
            bw, how, all_bw = stream_bandwidth(X)
            lim = {"d": d, "n": nn, "dtype": dtype, "x_bytes": X.nbytes,
                   "x_beats_cache": X.nbytes >= cache_bytes,
                   "stream_GBps": bw / 1e9, "stream_method": how,
                   "stream_all_GBps": {k: v / 1e9 for k, v in all_bw.items()},
                   "sgemm_square_GFLOPs": peak_sq, "sgemm_at_shape": {}}
            for m in widths:
                lim["sgemm_at_shape"][m] = sgemm_rates(X, m)
            peak = max([peak_sq] + [r["step"] for r in lim["sgemm_at_shape"].values()]
                       + [r["X@W"] for r in lim["sgemm_at_shape"].values()]
                       + [r["X^T@P"] for r in lim["sgemm_at_shape"].values()])
            lim["compute_ceiling_GFLOPs"] = peak
            if sampler:
                lim["sampler_ns_per_element"] = sampler_rates(d, dtype, threads=threads)
            result["limits"].append(lim)
            if log:  # progress only: the numbers are in the table printed at the end
                log(f"measured machine limits at d={d} n={nn} {dtype}")
            for m in widths:
                W1, a, b1, W2, b2 = params(d, m, dtype)
                for kernel in kernels:
                    fns = backend_callables(kernel, bes, X, y, W1, a, b1, W2, b2)
                    peer_label = None
                    if kernel == "stage1_grad" and torch_peer:
                        peers, peer_label = torch_peers(X, y, W1, a, b1)
                        fns.update(peers)
                        if peer_label:
                            result["peers"] = peer_label
                    # the machine's limits again, inside the same rounds, so a load
                    # change between the start and this row moves both alike
                    probes = roofline_probes(X, square_A)
                    times = time_interleaved({**fns, **probes}, repeats)
                    bw_row = max(bw_probe(X, times, probes), 0.0)
                    peak_row = sq_probe(square_A, times)
                    bw_use = bw_row or bw
                    peak_use = max(peak_row, peak) if peak_row else peak
                    # the ceiling of this row: the best sgemm seen now or at the start,
                    # the read bandwidth measured in this row's rounds
                    t_ref = statistics.median(times["numpy"])
                    fl = flops(kernel, nn, d, m)
                    roof = max(X.nbytes / bw_use, fl / (peak_use * 1e9))
                    for impl, ts in times.items():
                        if impl.startswith("_probe"):
                            continue
                        med = statistics.median(ts)
                        row = {"kernel": kernel, "impl": impl, "d": d, "width": m, "n": nn,
                               "dtype": dtype, "median_s": med, "times_s": ts,
                               "GBps": X.nbytes / med / 1e9, "GFLOPs": fl / med / 1e9,
                               "roofline_s": roof,
                               "roofline_bound": "memory" if X.nbytes / bw_use
                               >= fl / (peak_use * 1e9) else "compute",
                               "row_stream_GBps": bw_use / 1e9,
                               "row_ceiling_GFLOPs": peak_use,
                               "frac_roofline": roof / med,
                               "above_roofline": roof / med > 1.0, "x_numpy": t_ref / med,
                               "reference_only": impl == "numpy" and "numpy" not in names}
                        result["rows"].append(row)
                    if log:  # progress only: the table is printed once, at the end
                        log(f"timed {kernel} d={d} m={m} {dtype}")
            del X, y
    # Numba picks its threading layer at the first parallel region: ask again now
    result["machine"]["backends"] = [b.describe() for b in bes]
    return result


HEADER = (f"{'kernel':<12} {'impl':<20} {'d':>5} {'m':>4} {'n':>7} {'dtype':<7} "
          f"{'median ms':>10} {'GB/s':>6} {'GFLOP/s':>8} {'roof ms':>8} {'bound':>7} "
          f"{'frac roof':>9} {'x numpy':>7}")


def format_rows(rows, header=True):
    lines = [HEADER] if header else []
    for r in rows:
        lines.append(f"{r['kernel']:<12} {r['impl']:<20} {r['d']:>5} {r['width']:>4} "
                     f"{r['n']:>7} {r['dtype']:<7} {1e3 * r['median_s']:>10.2f} "
                     f"{r['GBps']:>6.1f} {r['GFLOPs']:>8.1f} {1e3 * r['roofline_s']:>8.2f} "
                     f"{r['roofline_bound']:>7} {r['frac_roofline']:>8.2f}"
                     f"{'*' if r.get('above_roofline') else ' '} {r['x_numpy']:>7.2f}")
    return "\n".join(lines)


def gemm_name(dtype):
    return "dgemm" if np.dtype(dtype) == np.float64 else "sgemm"


def roofline_footnotes(res):
    """The '*' of the table: why a kernel can be above the roofline, from X's size."""
    above = {(r["d"], r["dtype"]) for r in res["rows"] if r.get("above_roofline")}
    lims = [lim for lim in res["limits"] if (lim["d"], lim["dtype"]) in above]
    cached = [lim for lim in lims if not lim.get("x_beats_cache", True)]
    notes = []
    if cached:
        sizes = ", ".join(f"d={lim['d']} {lim['dtype']}: {human_bytes(lim['x_bytes'])}"
                          for lim in cached)
        notes.append(f"* frac roof > 1: X fits in cache ({sizes}): the roofline (DRAM "
                     "bandwidth) does not apply; pass a larger --n")
    if len(cached) < len(lims):
        notes.append("* frac roof > 1 although X is larger than the caches: the ceilings are "
                     "measured on a shared machine, and a load change between the probes and "
                     "the kernel can put a kernel above them")
    return notes


def format_result(res):
    out = [f"BLAS (threadpoolctl): {res['machine']['blas_kernel']}"]
    if res["machine"]["env"]:
        out.append("env: " + " ".join(f"{k}={v}" for k, v in res["machine"]["env"].items()))
    for lim in res["limits"]:
        out.append(f"machine d={lim['d']} n={lim['n']} {lim['dtype']}: stream read "
                   f"{lim['stream_GBps']:.1f} GB/s ({lim['stream_method']}), "
                   f"{gemm_name(lim['dtype'])} square "
                   f"{lim['sgemm_square_GFLOPs']:.0f} GFLOP/s, compute ceiling "
                   f"{lim['compute_ceiling_GFLOPs']:.0f} GFLOP/s")
        if "sampler_ns_per_element" in lim:
            sr = lim["sampler_ns_per_element"]
            out.append(f"  drawing rows at d={lim['d']}: numpy generator "
                       f"{sr['task.sample']:.2f} ns/element, fast sampler "
                       f"{sr['sample_rows']:.2f} ns/element ({sr['fast_filler']})")
    for k, v in res["machine"].get("skipped_backends", {}).items():
        out.append(f"skipped backend {k}: {v}")
    if res.get("peers"):
        out.append(f"peers: {res['peers']} (plain PyTorch, for comparison only)")
    out.append(format_rows(res["rows"]))
    out += roofline_footnotes(res)
    return "\n".join(out)


# ---------------------------------------------------------------------- CLI
def strict_list(convert, what, example):
    """argparse type for a comma-separated list: an empty entry ('8,,32') is an error, since
    dropping it would run something other than what was typed."""
    import argparse

    def parse(text):
        parts = [v.strip() for v in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(
                f"{text!r} has an empty entry; give comma-separated {what}, e.g. {example}")
        try:
            return [convert(v) for v in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}; e.g. {example}") from None
    return parse


def register(subparsers):
    from .cli import positive_int
    int_list = strict_list(int, "integers", "8,32")
    str_list = strict_list(str, "names", "numba,numpy")

    p = subparsers.add_parser(
        "bench", help="kernels x backends against this machine's roofline",
        description="Measure stream read bandwidth and sgemm throughput, then time each "
                    "kernel x backend (median of --repeats after warm-up, side by side in "
                    "one process) and report the fraction of roofline and the ratio to "
                    "the numpy reference.")
    p.add_argument("--d", type=int_list, default=[2048, 8192],
                   help="comma-separated input dimensions (default: 2048,8192)")
    p.add_argument("--width", type=int_list, default=[8, 32, 128, 512],
                   help="comma-separated even widths m (default: 8,32,128,512)")
    p.add_argument("--dtype", type=str_list, default=["float32"],
                   help="float32 and/or float64, comma-separated (default: float32)")
    p.add_argument("--backend", type=str_list, default=["numba", "numpy"],
                   help="numba, numpy, cupy, auto; numpy (the reference) is always timed")
    p.add_argument("--kernel", type=str_list, default=list(KERNELS),
                   help="stage1_grad, stage2_gram")
    p.add_argument("--n", type=positive_int, default=None,
                   help="rows, >= 1 (default: X about 512 MiB, at most 1/6 of the memory "
                        "budget; a warning says when that X could stay in the caches)")
    p.add_argument("--memory-budget", type=float, default=None,
                   help="bytes (or GiB if < 1024) that bounds the default --n "
                        "(default 60%% of the free memory)")
    p.add_argument("--repeats", type=positive_int, default=MIN_REPEATS,
                   help=f"timed calls per implementation; the median is quoted "
                        f"(minimum {MIN_REPEATS}, default {MIN_REPEATS})")
    p.add_argument("--threads", type=positive_int, default=None, help="(>= 1; default: all)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--no-sampler", action="store_true",
                   help="skip timing the row sampler (data generation)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write limits, rows and machine details as JSON")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args):
    from .errors import check_dtype
    for dt in args.dtype:
        check_dtype(dt)
    for k in args.kernel:
        if k not in KERNELS:
            raise MimfastInputError(f"--kernel {k!r} is unknown; choose from {', '.join(KERNELS)}")
    check_bench_inputs(args.d, args.width, args.n, args.repeats, args.threads)
    if any(m < 2 or m % 2 for m in args.width):
        raise MimfastInputError(f"--width={','.join(map(str, args.width))}: values must be "
                                "even and >= 2 (+/- pairs); pass e.g. --width 8,64")
    check_backend_names(args.backend, args.threads)
    from .errors import memory_budget_bytes
    budget = memory_budget_bytes(args.memory_budget)
    if args.json:  # before the benchmark, not after minutes of it
        from .cli import check_output_path
        check_output_path(args.json)
    res = run_bench(args.d, args.width, args.dtype, args.backend, args.n, args.kernel,
                    args.repeats, args.threads, not args.no_torch,
                    log=lambda s: print(s, file=sys.stderr, flush=True),
                    sampler=not args.no_sampler, memory_budget=budget)
    print(format_result(res))
    if args.json:
        from .cli import write_json
        write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0
