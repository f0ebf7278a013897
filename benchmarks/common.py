"""Shared pieces of the asv suite: profiles, fixed-seed data, backends, device sync.

Profiles (environment variable ``MIMFAST_BENCH_PROFILE``):

* ``quick`` (default): small d, for CI (``benchmarks/ci_smoke.sh``) and a first look;
* ``full``: the shapes that matter (d up to 8192) for real runs on a quiet machine.

The profile changes the parameter grids, so results of the two profiles are
different benchmark parameters in asv's database and never mix.

Threads: ``MIMFAST_THREADS`` (set by the ``env_nobuild`` matrix of
asv.conf.json) caps both Numba's and BLAS's threads through the backend; unset
means all cores.

This module must import against older mimfast commits too (``asv continuous``
runs today's suite on yesterday's build), so it only uses long-standing API
(``get_backend``, ``MultiIndexTask``, ``train``) and draws its own data.
"""

import os

import numpy as np

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # older asv: NotImplementedError from setup also skips
    SkipNotImplemented = NotImplementedError

PROFILE = os.environ.get("MIMFAST_BENCH_PROFILE", "quick").strip().lower()
if PROFILE not in ("quick", "full"):
    raise ValueError(f"MIMFAST_BENCH_PROFILE={PROFILE!r}: use 'quick' or 'full'")
QUICK = PROFILE == "quick"

SEED = 20240611
# the quick (CI) profile leaves CuPy out: each skipped combination still costs a
# spawned interpreter; the full profile lists it and skips it where no GPU is usable
BACKENDS = ["numpy", "numba"] if QUICK else ["numpy", "numba", "cupy"]

# kernel grids: (d, width, dtype); rows n per d
if QUICK:
    KERNEL_D = [256]
    KERNEL_WIDTH = [8, 32]
    KERNEL_DTYPE = ["float32"]
else:
    KERNEL_D = [2048, 8192]
    KERNEL_WIDTH = [8, 32, 128, 512]
    KERNEL_DTYPE = ["float32", "float64"]

# pipeline grid: n = C d ln d, fixed width and T1
if QUICK:
    PIPE_D = [128, 256, 512]
    PIPE_C = 4.0
else:
    PIPE_D = [512, 1024, 2048, 4096, 8192]
    PIPE_C = 4.0
PIPE_WIDTH = 32
PIPE_T1 = 6
# one data mode for the whole grid, fixed per profile so history stays comparable:
# the full profile's d = 8192 cannot be held (C = 4: ~21 GiB), so every d streams
PIPE_DATA = "materialise" if QUICK else "stream"


def threads():
    v = os.environ.get("MIMFAST_THREADS", "").strip()
    return int(v) if v else None


def kernel_rows(d, dtype):
    """Rows so X is ~512 MiB in the full profile (beyond the caches), 4096 in quick."""
    if QUICK:
        return 4096
    return max(1024, (512 * 2 ** 20) // (d * np.dtype(dtype).itemsize) // 1024 * 1024)


def backend_or_skip(name):
    """The backend, or SkipNotImplemented when it cannot run here (no Numba / no GPU)."""
    from mimfast.backends import get_backend
    try:
        return get_backend(name, threads())
    except Exception as exc:  # MimfastInputError, ImportError, CUDA errors
        raise SkipNotImplemented(f"backend {name} unavailable: {exc}")


_DATA = {}


def data(n, d, dtype):
    """Fixed-seed X (n, d) ~ N(0, I) and y = He2(x_0) + He2(x_1)/sqrt(2), cached per process."""
    key = (n, d, np.dtype(dtype).name)
    if key not in _DATA:
        rng = np.random.default_rng([SEED, n, d])
        X = rng.standard_normal((n, d), dtype=np.float32).astype(dtype, copy=False)
        y = (X[:, 0] ** 2 - 1) + (X[:, 1] ** 2 - 1) / np.sqrt(2.0)
        _DATA.clear()
        _DATA[key] = (np.ascontiguousarray(X), np.ascontiguousarray(y, dtype=dtype))
    return _DATA[key]


def stage1_params(d, m, dtype):
    rng = np.random.default_rng([SEED, d, m, 1])
    half = rng.standard_normal((d, m // 2))
    half *= 1e-3 / np.linalg.norm(half, axis=0, keepdims=True)
    W = np.ascontiguousarray(np.repeat(half, 2, axis=1), dtype=dtype)
    a = np.tile(np.array([1.0, -1.0]), m // 2).astype(dtype)
    return W, a, np.zeros(m, dtype=dtype)


def stage2_params(d, m, dtype):
    rng = np.random.default_rng([SEED, d, m, 2])
    W = rng.standard_normal((d, m))
    W = np.ascontiguousarray(W / np.linalg.norm(W, axis=0), dtype=dtype)
    return W, rng.standard_normal(m).astype(dtype)


def sync(backend):
    """Wait for the device (CuPy launches are asynchronous); a no-op on the CPU."""
    backend.synchronize()
