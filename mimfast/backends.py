"""Backends: one object per compute engine, all with the same kernel methods.

A backend moves arrays to its device and runs the five kernels of
``mimfast.kernels.reference`` (stage1_grad, stage2_gram, predict,
sigma_matvec, sigma_matrix).  The orchestrator only talks to this protocol,
so a new engine slots in by registering one class.

* ``numpy``: the reference kernels themselves (BLAS-threaded).
* ``numba``: ``mimfast.kernels.cpu``; Numba threads are scoped with
  ``numba.set_num_threads`` and BLAS is held to one thread around the calls
  (Numba threads x BLAS threads would oversubscribe the cores).
* ``cupy``: ``mimfast.kernels.gpu``; data can be generated on the device.
* ``auto``: cupy if a GPU is usable, else numba, else numpy.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np

from .errors import MimfastInputError

BACKENDS = ("auto", "numpy", "numba", "cupy")


class Backend:
    name = "abstract"
    xp = np

    def __init__(self, threads=None):
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) \
                    or threads < 1:
                raise MimfastInputError(f"threads={threads!r} must be a positive integer")
            threads = int(threads)
        self.threads = threads
        self.kernels = self._load_kernels()

    def _load_kernels(self):
        from .kernels import reference
        return reference

    # -- data movement -----------------------------------------------------
    def asarray(self, x, dtype=None):
        return np.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def synchronize(self):
        pass

    def scope(self):
        """Context in which kernels run (thread limits)."""
        if self.threads is None:
            return contextlib.nullcontext()
        from .metrics import blas_limit
        return blas_limit(self.threads)

    # -- kernels -----------------------------------------------------------
    def stage1_grad(self, X, y, W, a, b, loss="square", delta=1.0, offset=0.0,
                    activation="logcosh"):
        with self.scope():
            return self.kernels.stage1_grad(X, y, W, a, b, loss, delta, offset, activation)

    def stage2_gram(self, X, y, W, b, activation="logcosh"):
        with self.scope():
            return self.kernels.stage2_gram(X, y, W, b, activation)

    def predict(self, X, W, a, b, activation="logcosh"):
        with self.scope():
            return self.kernels.predict(X, W, a, b, activation)

    def sigma_matvec(self, X, c, V):
        with self.scope():
            return self.kernels.sigma_matvec(X, c, V)

    def sigma_matrix(self, X, c):
        with self.scope():
            return self.kernels.sigma_matrix(X, c)

    def loss_grad(self, t, y, kind, delta, offset=0.0):
        from .kernels import reference
        return reference.loss_grad(t, y, kind, delta, offset)

    def sample(self, task, n, stream, start, dtype):
        """Rows of a task stream on this backend's device."""
        X, y = task.sample(n, stream=stream, start=start, dtype=dtype,
                           threads=self.threads)
        return self.asarray(X), self.asarray(y)

    def describe(self):
        return {"backend": self.name, "threads": self.threads}

    def warmup(self, d, width, dtype, loss="square", activation="logcosh",
               stage2_activation=None):
        """Run every kernel once on small data of the same types, width and path so
        that JIT compilation (Numba, NVRTC) is not charged to the timed stages.

        Big enough (about 1e7 multiply-adds) that the parallel variants run too."""
        dt = np.dtype(dtype)
        dw = max(1, min(int(d), 64))
        n = max(256, int(1e7 // (dw * max(int(width), 1))))
        rng = np.random.default_rng(0)
        X = self.asarray(rng.standard_normal((n, dw)).astype(dt))
        y = self.asarray(rng.standard_normal(n).astype(dt))
        W = self.asarray((1e-3 * rng.standard_normal((dw, width))).astype(dt))
        a = self.asarray(np.tile(np.array([1.0, -1.0], dtype=dt), max(width // 2, 1))[:width])
        b = self.asarray(np.zeros(width, dtype=dt))
        self.stage1_grad(X, y, W, a, b, loss, 1.0, 0.0, activation)
        act2 = stage2_activation or activation
        self.stage2_gram(X, y, W, b, act2)
        self.predict(X, W, a, b, act2)
        self.sigma_matvec(X, y, W[:, 0].copy() if hasattr(W, "copy") else W[:, 0])
        self.synchronize()


class NumpyBackend(Backend):
    name = "numpy"


class NumbaBackend(Backend):
    name = "numba"

    def _load_kernels(self):
        try:
            return importlib.import_module("mimfast.kernels.cpu")
        except ImportError as exc:  # numba missing or broken
            raise MimfastInputError(
                f"backend='numba' is unavailable ({exc}); pip install numba, "
                "or use backend='numpy'") from exc

    def scope(self):
        import numba
        from .metrics import blas_limit

        threads = self.threads or numba.config.NUMBA_NUM_THREADS
        threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        stack = contextlib.ExitStack()
        stack.enter_context(blas_limit(1))
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        stack.callback(numba.set_num_threads, previous)
        return stack

    def _blas_scope(self):
        return Backend.scope(self)

    def sigma_matvec(self, X, c, V):
        # BLAS-bound, not a fused kernel: let BLAS have the threads
        with self._blas_scope():
            return self.kernels.sigma_matvec(X, c, V)

    def sigma_matrix(self, X, c):
        with self._blas_scope():
            return self.kernels.sigma_matrix(X, c)

    def describe(self):
        import numba
        return {"backend": self.name,
                "threads": min(self.threads or numba.config.NUMBA_NUM_THREADS,
                               numba.config.NUMBA_NUM_THREADS),
                "threading_layer": _numba_threading_layer()}


def _numba_threading_layer():
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return f"not yet chosen (config: {numba.config.THREADING_LAYER})"


class CupyBackend(Backend):
    name = "cupy"

    def _load_kernels(self):
        from .kernels import gpu
        ok, reason = gpu.is_available()
        if not ok:
            raise MimfastInputError(f"backend='cupy' is unavailable: {reason}; "
                                    "use backend='numba' or 'numpy'")
        import cupy
        self.xp = cupy
        return gpu

    def asarray(self, x, dtype=None):
        return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))

    def to_numpy(self, x):
        return self.xp.asnumpy(x) if isinstance(x, self.xp.ndarray) else np.asarray(x)

    def synchronize(self):
        self.kernels.synchronize()

    def scope(self):
        return contextlib.nullcontext()

    def loss_grad(self, t, y, kind, delta, offset=0.0):
        # elementwise numpy expressions run unchanged on cupy arrays
        r = t - y
        xp = self.xp
        if kind == "square":
            g = r
        elif kind == "huber":
            g = xp.clip(r, -delta, delta)
        else:
            g = r / xp.sqrt(1.0 + (r / delta) ** 2)
        return (g - offset).astype(t.dtype, copy=False)

    def sample(self, task, n, stream, start, dtype):
        from .tasks import stream_id
        sid = stream_id(stream)
        X = self.kernels.sample_gaussian_rows(task.seed, sid, start, start + n, task.d,
                                              np.dtype(dtype))
        U = self.xp.asarray(task.U, dtype=X.dtype)
        z = self.xp.asnumpy(X @ U.T).astype(np.float64)
        y = task.g(z)
        if task.noise > 0:
            rng = np.random.default_rng([task.seed, sid, start, n, 7])
            y = y + task.noise * rng.standard_normal(n)
        return X, self.asarray(y, dtype=X.dtype)

    def describe(self):
        import cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        return {"backend": self.name, "device": props["name"].decode(),
                "cupy": cupy.__version__}


_REGISTRY = {"numpy": NumpyBackend, "numba": NumbaBackend, "cupy": CupyBackend}


def register_backend(name, cls):
    """Make a Backend subclass selectable by name."""
    _REGISTRY[name] = cls


def gpu_status():
    """(usable, reason) for the CuPy backend, without raising."""
    try:
        from .kernels import gpu
    except Exception as exc:  # pragma: no cover - defensive
        return False, f"mimfast.kernels.gpu failed to import: {exc}"
    return gpu.is_available()


def resolve_name(name):
    if name == "auto":
        if gpu_status()[0]:
            return "cupy"
        try:
            importlib.import_module("mimfast.kernels.cpu")
            return "numba"
        except ImportError:
            return "numpy"
    if name not in _REGISTRY:
        raise MimfastInputError(
            f"backend={name!r} is unknown; choose one of: {', '.join(('auto', *_REGISTRY))}")
    return name


def numba_thread_limit():
    """Threads Numba started with (NUMBA_NUM_THREADS, read once at import), or None."""
    try:
        import numba
    except ImportError:
        return None
    return int(numba.config.NUMBA_NUM_THREADS)


def check_threads(threads, argname="threads", backend="numba"):
    """Reject more threads than Numba has: numba.set_num_threads cannot go above the
    pool it started with, so the request would be capped silently (BLAS would not be).
    Only the Numba backend has that limit (``backend`` is resolved like get_backend's)."""
    if resolve_name(backend) != "numba":
        return threads
    limit = numba_thread_limit()
    if threads is None or limit is None or isinstance(threads, bool) \
            or not isinstance(threads, (int, np.integer)) or threads <= limit:
        return threads
    sep = " " if argname.startswith("--") else "="
    raise MimfastInputError(
        f"{argname}={threads} is more than the {limit} threads Numba started with; pass "
        f"{argname}{sep}{limit} or fewer, or set NUMBA_NUM_THREADS={threads} in the "
        "environment before starting Python")


def get_backend(name="auto", threads=None):
    """A Backend instance by name ("auto", "numpy", "numba", "cupy") or pass-through."""
    if isinstance(name, Backend):
        return name
    resolved = resolve_name(name)
    check_threads(threads, backend=resolved)
    return _REGISTRY[resolved](threads=threads)


def default_threads():
    return int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1))
