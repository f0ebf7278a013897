"""CuPy (CUDA) kernels of mimfast: the GPU twins of ``kernels/reference.py``.

Same functions, signatures and return conventions as the reference, on cupy arrays:

* ``stage1_grad(X, y, W, a, b, loss, delta, offset, activation_name, *, path=None,
  allow_tf32=False, block_rows=None) -> (G, mean_loss)``
* ``stage2_gram(X, y, W, b, activation_name, *, path=None, allow_tf32=False,
  block_rows=None) -> (F^T F / n, F^T y / n)``
* ``predict``, ``sigma_matvec``, ``sigma_matrix`` (cuBLAS, row-blocked).

Results are cupy arrays of the input dtype; ``mean_loss`` is a Python float.

Two stage-1 paths, both kept:

``"gemm"``
    H = X W (cuBLAS), one fused elementwise kernel for sigma(H + b) and sigma'(H + b),
    f = sigma(H) a (GEMV), one elementwise kernel for c = l'(f, y) - offset and the loss,
    one for P = (c outer a) * sigma'(H + b), G = X^T P / n (cuBLAS).  Rows are processed
    in blocks (at most ``GEMM_MAX_BLOCK_ROWS`` rows) to bound the temporaries; block
    results are summed in float64.  The orchestration (:func:`stage1_gemm` and friends)
    takes an array module ``xp`` and an "elementwise ops" object, so the tests run the very
    same code with numpy arrays and :class:`NumpyElementwise` (the reference functions).
``"fused"``
    ``cuda/stage1.cu``: persistent row-blocked kernel, per-block partial X^T P in shared
    memory, then a cross-block reduction kernel in double (no atomics).  It reads X once
    when the d x m accumulator of a block fits in shared memory ("one slab"); otherwise d
    is split into slabs and the H pass reads X once per slab.  Supports m <= 64.

``path=None`` picks ``"fused"`` when m <= ``FUSED_MAX_WIDTH`` *and* the fused plan needs a
single slab (X streamed once), else ``"gemm"``.  Stage 2 has the same two paths
(``cuda/stage2.cu``: F^T F and F^T y accumulated per block without materialising F);
``path=None`` picks ``"fused"`` for m <= ``FUSED_MAX_WIDTH``.

TF32: off by default.  ``allow_tf32=True`` lets cuBLAS use TensorFloat-32 for float32
GEMMs (10-bit mantissa inputs, ~1e-3 relative error) for the duration of the call.  CuPy
14 controls this per dtype with ``cupy._core.set_compute_type(dtype, COMPUTE_TYPE_*)``;
the ``CUPY_TF32=1`` environment variable only sets the initial float32 compute type
(read once, at the first float32 matmul).  This module sets the float32 compute type to
``COMPUTE_TYPE_DEFAULT`` (cuBLAS ``CUBLAS_COMPUTE_32F``, no TF32) or ``COMPUTE_TYPE_TF32``
(``CUBLAS_COMPUTE_32F_FAST_TF32``) around each call and restores the previous value, so
``allow_tf32=False`` means full float32 even when ``CUPY_TF32=1`` is set.  The setting is
process-global in CuPy, so calls from several threads are serialised by a lock while it is
in force.  The fused kernels use no tensor cores, so TF32 never applies to them.

Also: ``is_available()``, ``sample_gaussian_rows`` (Philox4x32-10 + Box-Muller on the
device, ``cuda/sampler.cu``) and its numpy twin ``philox_gaussian_rows_numpy``,
``synchronize()``, ``to_host()``.

cupy is imported lazily: importing this module never needs cupy or a GPU.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np

from . import reference as _ref

__all__ = [
    "ACTIVATIONS", "LOSS_KINDS", "FUSED_MAX_WIDTH",
    "is_available", "stage1_grad", "stage2_gram", "predict", "sigma_matvec", "sigma_matrix",
    "stage1_gemm", "stage2_gemm", "predict_gemm", "sigma_matvec_gemm", "sigma_matrix_gemm",
    "stage1_fused_run", "stage2_fused_run", "fused_plan",
    "NumpyElementwise", "CupyElementwise", "CupyLauncher", "elementwise_spec", "module_spec",
    "sample_gaussian_rows", "philox_gaussian_rows_numpy", "philox4x32_10_numpy",
    "synchronize", "to_host", "tf32_enabled",
]

ACTIVATIONS = _ref.ACTIVATIONS
LOSS_KINDS = _ref.LOSS_KINDS

#: widest layer the fused kernels handle (template widths 4, 8, 16, 32, 64)
FUSED_MAX_WIDTH = 64
#: padded widths compiled for the fused kernels
FUSED_WIDTHS = (4, 8, 16, 32, 64)
#: rows per GEMM-path block, at most (block sums are added in float64)
GEMM_MAX_BLOCK_ROWS = 1 << 16
#: elements of one (rows x width) temporary in the GEMM path, at most
GEMM_TEMP_ELEMS = 1 << 25

# constants shared with cuda/stage1.cu and cuda/stage2.cu (keep in step)
_NT = 256          # threads per block of the fused kernels
_KC = 64           # X columns per shared-memory chunk
_R = 32            # rows per tile
_STATIC_SMEM_ALLOWANCE = 1024   # bytes kept free for static __shared__ arrays
_RESERVED_SMEM_PER_BLOCK = 1024  # bytes the driver reserves per resident block

_ACT_CODES = {"logcosh": 0, "quadratic": 1, "relu": 2}
_LOSS_CODES = {"square": 0, "huber": 1, "pseudo_huber": 2}
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

_NO_CUPY = "cupy is not installed (pip install 'mimfast[gpu]')"
_NO_DEVICE = "no CUDA device is visible"


# --------------------------------------------------------------------------
# availability, cupy import, small helpers
# --------------------------------------------------------------------------
def _import_cupy():
    import cupy  # noqa: PLC0415  (lazy on purpose)

    return cupy


def is_available():
    """``(True, description)`` if cupy can run kernels on a CUDA device, else ``(False, reason)``.

    The reason is ``"cupy is not installed (pip install 'mimfast[gpu]')"``, ``"no CUDA
    device is visible ..."`` or the text of the CUDA driver/runtime error.
    """
    try:
        cp = _import_cupy()
    except ImportError:
        return False, _NO_CUPY
    except Exception as exc:  # a broken install: report it rather than crash
        return False, f"cupy failed to import: {type(exc).__name__}: {exc}"
    rt = cp.cuda.runtime
    try:
        count = rt.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError and friends
        text = f"{type(exc).__name__}: {exc}"
        try:
            driver = rt.driverGetVersion()
        except Exception:
            driver = None
        if driver == 0:
            return False, f"{_NO_DEVICE} (no NVIDIA driver is loaded; {text})"
        if "cudaErrorNoDevice" in text:
            return False, f"{_NO_DEVICE} ({text})"
        return False, text
    if count == 0:
        return False, _NO_DEVICE
    try:
        dev = cp.cuda.Device()
        props = rt.getDeviceProperties(dev.id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        cc = dev.compute_capability
        # touch the device: a tiny allocation and copy catch a broken context early
        probe = cp.arange(4, dtype=cp.float32)
        if float(probe.sum()) != 6.0:
            return False, "CUDA device returned a wrong result on a trivial reduction"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"{name} (compute capability {cc}), {count} device(s), cupy {cp.__version__}"


_AVAILABLE = False  # set once a check has succeeded (a device does not go away)


def _require_cupy():
    global _AVAILABLE
    if not _AVAILABLE:
        ok, reason = is_available()
        if not ok:
            raise RuntimeError(f"mimfast.kernels.gpu: {reason}")
        _AVAILABLE = True
    return _import_cupy()


def synchronize():
    """Wait for all work queued on the current CUDA device."""
    cp = _import_cupy()
    cp.cuda.runtime.deviceSynchronize()


def to_host(x):
    """A numpy copy of a cupy array (numpy arrays and scalars pass through)."""
    try:
        cp = _import_cupy()
    except Exception:
        return np.asarray(x)
    if isinstance(x, cp.ndarray):
        return cp.asnumpy(x)
    return np.asarray(x)


def _check_names(activation_name, loss=None):
    if activation_name not in _ACT_CODES:
        raise ValueError(
            f"activation: unknown name {activation_name!r}; choose one of {ACTIVATIONS}")
    if loss is not None and loss not in _LOSS_CODES:
        raise ValueError(f"loss: unknown kind {loss!r}; choose one of {LOSS_KINDS}")


def _check_dtype(X):
    dt = np.dtype(X.dtype)
    if dt not in _CTYPES:
        raise TypeError(f"X must be float32 or float64, got {dt}")
    return dt


def _gemm_block_rows(n, width, block_rows=None):
    if block_rows is not None:
        br = int(block_rows)
        if br < 1:
            raise ValueError("block_rows must be >= 1")
        return min(br, max(n, 1))
    br = min(GEMM_MAX_BLOCK_ROWS, max(1024, GEMM_TEMP_ELEMS // max(int(width), 1)))
    return max(1, min(br, n))


# --------------------------------------------------------------------------
# TF32 control
# --------------------------------------------------------------------------
def _compute_type_api():
    cp = _import_cupy()
    core = cp._core
    lin = core._routines_linalg
    return core.get_compute_type, core.set_compute_type, lin.COMPUTE_TYPE_DEFAULT, \
        lin.COMPUTE_TYPE_TF32


def tf32_enabled():
    """Whether cupy's float32 matmuls currently run with TF32 (COMPUTE_TYPE_TF32)."""
    get_ct, _set_ct, _default, tf32 = _compute_type_api()
    return get_ct(np.float32) == tf32


_TF32_LOCK = threading.RLock()


@contextlib.contextmanager
def _tf32_mode(allow):
    """Set cupy's float32 GEMM compute type for the duration of the block."""
    try:
        get_ct, set_ct, default, tf32 = _compute_type_api()
    except (ImportError, AttributeError) as exc:
        if allow:
            raise RuntimeError(
                "allow_tf32=True: this cupy has no cupy._core.set_compute_type") from exc
        yield
        return
    want = tf32 if allow else default
    with _TF32_LOCK:
        prev = get_ct(np.float32)
        if prev == want:
            yield
            return
        set_ct(np.float32, want)
        try:
            yield
        finally:
            set_ct(np.float32, prev)


# --------------------------------------------------------------------------
# elementwise steps of the GEMM path
# --------------------------------------------------------------------------
class NumpyElementwise:
    """The GEMM path's elementwise steps, computed by the reference numpy functions."""

    def act_and_grad(self, H, b, name):
        Hb = H + b
        return _ref.activation(Hb, name), _ref.activation_grad(Hb, name)

    def act(self, H, b, name):
        return _ref.activation(H + b, name)

    def loss_grad_value(self, f, y, kind, delta, offset):
        return (_ref.loss_grad(f, y, kind, delta, offset),
                _ref.loss_value(f, y, kind, delta, offset))

    def scale_grad(self, c, a, D):
        return (c[:, None] * a[None, :]) * D


_ACT_BODY = {
    "logcosh": ("const T ah = fabs(hb);\n"
                "s = ah + log1p(exp(T(-2) * ah)) - T(0.69314718055994530942);\n"),
    "quadratic": "s = T(0.5) * hb * hb;\n",
    "relu": "s = hb > T(0) ? hb : T(0);\n",
}
_GRAD_BODY = {
    "logcosh": "g = tanh(hb);\n",
    "quadratic": "g = hb;\n",
    "relu": "g = hb > T(0) ? T(1) : T(0);\n",
}
_LOSS_BODY = {
    "square": "v = T(0.5) * r * r;\ng = r;\n",
    "huber": ("const T ar = fabs(r);\n"
              "v = (ar <= delta) ? T(0.5) * r * r : delta * (ar - T(0.5) * delta);\n"
              "g = (r < -delta) ? -delta : ((r > delta) ? delta : r);\n"),
    "pseudo_huber": ("const T q = r / delta;\n"
                     "const T sq = sqrt(T(1) + q * q);\n"
                     "v = delta * delta * (sq - T(1));\n"
                     "g = r / sq;\n"),
}


def elementwise_spec(step, name=None):
    """(kernel name, in_params, out_params, body) of a GEMM-path ElementwiseKernel.

    ``step`` is ``"act_grad"`` (name = activation; sigma and sigma' of h + b), ``"act"``
    (sigma(h + b)), ``"loss"`` (name = loss kind; c and the loss value) or
    ``"scale_grad"`` (P = (c a) g).  The tests compile these bodies on the CPU too.
    """
    if step == "act_grad":
        return (f"mimfast_act_grad_{name}", "T h, T b", "T s, T g",
                "const T hb = h + b;\n" + _ACT_BODY[name] + _GRAD_BODY[name])
    if step == "act":
        return (f"mimfast_act_{name}", "T h, T b", "T s",
                "const T hb = h + b;\n" + _ACT_BODY[name])
    if step == "loss":
        return (f"mimfast_loss_{name}", "T f, T y, T delta, T offset", "T g, T v",
                "const T r = f - y;\n" + _LOSS_BODY[name]
                + "g = g - offset;\nv = v - offset * f;\n")
    if step == "scale_grad":
        return ("mimfast_scale_grad", "T c, T a, T g", "T p", "p = (c * a) * g;\n")
    raise ValueError(step)


class CupyElementwise:
    """The GEMM path's elementwise steps as cupy ElementwiseKernels (one launch each)."""

    _cache = {}
    _lock = threading.Lock()

    def _kernel(self, step, name=None):
        kname, in_params, out_params, body = elementwise_spec(step, name)
        with self._lock:
            k = self._cache.get(kname)
            if k is None:
                cp = _import_cupy()
                k = cp.ElementwiseKernel(in_params, out_params, body, kname)
                self._cache[kname] = k
            return k

    def act_and_grad(self, H, b, name):
        cp = _import_cupy()
        S = cp.empty_like(H)
        D = cp.empty_like(H)
        self._kernel("act_grad", name)(H, b, S, D)
        return S, D

    def act(self, H, b, name):
        cp = _import_cupy()
        S = cp.empty_like(H)
        self._kernel("act", name)(H, b, S)
        return S

    def loss_grad_value(self, f, y, kind, delta, offset):
        cp = _import_cupy()
        t = f.dtype.type
        g = cp.empty_like(f)
        v = cp.empty_like(f)
        self._kernel("loss", kind)(f, y, t(delta), t(offset), g, v)
        return g, v

    def scale_grad(self, c, a, D):
        cp = _import_cupy()
        P = cp.empty_like(D)
        self._kernel("scale_grad")(c[:, None], a[None, :], D, P)
        return P


# --------------------------------------------------------------------------
# GEMM-path orchestration (xp = cupy on the GPU, numpy in the CPU tests)
# --------------------------------------------------------------------------
def _accumulate(xp, acc, part, single):
    """Sum block results: in the working dtype for one block, in float64 otherwise."""
    if single:
        return part
    if acc is None:
        return part.astype(xp.float64)
    acc += part
    return acc


def _finish(acc, n, dt, single):
    if single:
        return acc / dt.type(n)
    return (acc / float(n)).astype(dt)


def stage1_gemm(xp, ops, X, y, W, a, b, loss="square", delta=1.0, offset=0.0,
                activation_name="logcosh", block_rows=None):
    """Stage-1 gradient by GEMMs + elementwise kernels; see :func:`stage1_grad`."""
    dt = np.dtype(X.dtype)
    n = X.shape[0]
    m = W.shape[1]
    br = _gemm_block_rows(n, m, block_rows)
    single = br >= n
    G = None
    loss_sum = None
    for s in range(0, n, br):
        Xb = X[s:s + br]
        H = xp.matmul(Xb, W)
        S, D = ops.act_and_grad(H, b, activation_name)
        del H
        f = xp.matmul(S, a)
        del S
        c, lv = ops.loss_grad_value(f, y[s:s + br], loss, delta, offset)
        part_loss = lv.sum(dtype=xp.float64)
        loss_sum = part_loss if loss_sum is None else loss_sum + part_loss
        P = ops.scale_grad(c, a, D)
        del D
        G = _accumulate(xp, G, xp.matmul(Xb.T, P), single)
        del P
    if G is None:  # n == 0: follow numpy (0/0 -> nan)
        G = xp.zeros(W.shape, dtype=xp.float64)
        loss_sum = xp.zeros((), dtype=xp.float64)
        single = False
    G = _finish(G, n, dt, single)
    mean_loss = float(loss_sum) / n if n else float("nan")
    return G.astype(dt, copy=False), mean_loss


def stage2_gemm(xp, ops, X, y, W, b, activation_name="logcosh", block_rows=None):
    """(F^T F / n, F^T y / n) by row blocks of F = sigma(XW + b); see :func:`stage2_gram`."""
    dt = np.dtype(X.dtype)
    n = X.shape[0]
    m = W.shape[1]
    br = _gemm_block_rows(n, m, block_rows)
    single = br >= n
    K = v = None
    for s in range(0, n, br):
        Xb = X[s:s + br]
        F = ops.act(xp.matmul(Xb, W), b, activation_name)
        K = _accumulate(xp, K, xp.matmul(F.T, F), single)
        v = _accumulate(xp, v, xp.matmul(F.T, y[s:s + br]), single)
        del F
    if K is None:
        K = xp.zeros((m, m), dtype=xp.float64)
        v = xp.zeros((m,), dtype=xp.float64)
        single = False
    return _finish(K, n, dt, single), _finish(v, n, dt, single)


def predict_gemm(xp, ops, X, W, a, b, activation_name="logcosh", block_rows=None):
    """f(X) = sigma(XW + b) a by row blocks; see :func:`predict`."""
    n = X.shape[0]
    br = _gemm_block_rows(n, W.shape[1], block_rows)
    out = xp.empty((n,), dtype=X.dtype)
    for s in range(0, n, br):
        F = ops.act(xp.matmul(X[s:s + br], W), b, activation_name)
        out[s:s + br] = xp.matmul(F, a)
    return out


def sigma_matvec_gemm(xp, X, c, V, block_rows=None):
    """X^T (c * (X V)) / n by row blocks; see :func:`sigma_matvec`."""
    dt = np.dtype(X.dtype)
    n = X.shape[0]
    k = 1 if V.ndim == 1 else V.shape[1]
    br = _gemm_block_rows(n, k, block_rows)
    single = br >= n
    acc = None
    for s in range(0, n, br):
        Xb = X[s:s + br]
        XV = xp.matmul(Xb, V)
        cb = c[s:s + br]
        XV = cb * XV if XV.ndim == 1 else cb[:, None] * XV
        acc = _accumulate(xp, acc, xp.matmul(Xb.T, XV), single)
    if acc is None:
        acc = xp.zeros(V.shape, dtype=xp.float64)
        single = False
    return _finish(acc, n, dt, single)


def sigma_matrix_gemm(xp, X, c, block_rows=None):
    """X^T diag(c) X / n by row blocks; see :func:`sigma_matrix`."""
    dt = np.dtype(X.dtype)
    n, d = X.shape
    br = _gemm_block_rows(n, d, block_rows)
    single = br >= n
    acc = None
    for s in range(0, n, br):
        Xb = X[s:s + br]
        acc = _accumulate(xp, acc, xp.matmul(Xb.T, c[s:s + br, None] * Xb), single)
    if acc is None:
        acc = xp.zeros((d, d), dtype=xp.float64)
        single = False
    return _finish(acc, n, dt, single)


# --------------------------------------------------------------------------
# fused path: plan, launcher, orchestration
# --------------------------------------------------------------------------
def _padded_width(m):
    for w in FUSED_WIDTHS:
        if m <= w:
            return w
    raise ValueError(f"the fused kernels support widths up to {FUSED_MAX_WIDTH}, got {m}")


def _ceil_div(a, b):
    return -(-a // b)


def fused_plan(kind, n, d, m, itemsize, device):
    """Launch plan of a fused kernel.

    ``kind`` is ``"stage1"`` or ``"stage2"``; ``device`` is a dict with ``n_sm``,
    ``smem_optin`` (bytes of dynamic+static shared memory one block may opt in to) and
    ``smem_per_sm``.  Returns a dict: mp (padded width), slab_cols, n_slabs, row_blocks,
    rows_per_block, smem (dynamic bytes per block), grid, block.
    """
    mp = _padded_width(m)
    budget = int(device["smem_optin"]) - _STATIC_SMEM_ALLOWANCE
    if kind == "stage1":
        fixed = _R * (_KC + 1) + _KC * mp + _R * mp + 2 * mp
        max_slab = (budget // itemsize - fixed) // mp // _KC * _KC
        if max_slab < _KC:
            raise RuntimeError("not enough shared memory for the fused stage-1 kernel")
        d_pad = _ceil_div(max(d, 1), _KC) * _KC
        n_slabs = _ceil_div(d_pad, max_slab)
        slab_cols = _ceil_div(_ceil_div(d_pad, n_slabs), _KC) * _KC
        smem = (fixed + slab_cols * mp) * itemsize
    elif kind == "stage2":
        fixed = _R * (_KC + 1) + _KC * mp + _R * mp + mp + _R
        n_slabs, slab_cols = 1, 0
        smem = fixed * itemsize
        if smem > budget:
            raise RuntimeError("not enough shared memory for the fused stage-2 kernel")
    else:
        raise ValueError(kind)
    per_sm = int(device["smem_per_sm"]) // (smem + _STATIC_SMEM_ALLOWANCE
                                           + _RESERVED_SMEM_PER_BLOCK)
    blocks_per_sm = max(1, min(2048 // _NT, per_sm))
    target = int(device["n_sm"]) * blocks_per_sm
    tiles = max(1, _ceil_div(n, _R))
    row_blocks = max(1, min(tiles, _ceil_div(target, n_slabs)))
    rows_per_block = _ceil_div(tiles, row_blocks) * _R
    row_blocks = max(1, _ceil_div(n, rows_per_block))
    return {
        "mp": mp, "slab_cols": slab_cols, "n_slabs": n_slabs,
        "row_blocks": row_blocks, "rows_per_block": rows_per_block, "smem": smem,
        "grid": (row_blocks, n_slabs, 1), "block": (_NT, 1, 1),
    }


def _source(name):
    """Text of cuda/<name> from the installed package (or next to this file)."""
    try:
        from importlib.resources import files

        return (files("mimfast.kernels") / "cuda" / name).read_text(encoding="utf-8")
    except Exception:
        return (Path(__file__).resolve().parent / "cuda" / name).read_text(encoding="utf-8")


#: compiler options of every RawModule (NVRTC)
NVRTC_OPTIONS = ("--std=c++17",)


def module_spec(filename, dtype):
    """(source, options, name_expressions) of the RawModule for ``filename`` and ``dtype``."""
    ct = _CTYPES[np.dtype(dtype)]
    if filename == "stage1.cu":
        names = [f"stage1_fused<{ct}, {w}>" for w in FUSED_WIDTHS] + [f"stage1_reduce<{ct}>"]
    elif filename == "stage2.cu":
        names = [f"stage2_fused<{ct}, {w}>" for w in FUSED_WIDTHS] + [f"stage2_reduce<{ct}>"]
    elif filename == "sampler.cu":
        names = [f"philox_gaussian<{ct}>"]
    else:
        raise ValueError(filename)
    return _source(filename), NVRTC_OPTIONS, names


class CupyLauncher:
    """Launches the CUDA C kernels of ``cuda/*.cu`` through cupy.RawModule.

    Modules are compiled once per (file, dtype, device) and cached at module level.
    """

    _modules = {}
    _lock = threading.Lock()

    def __init__(self):
        self.cp = _import_cupy()
        self.xp = self.cp

    _device_info = {}

    def device(self):
        dev = self.cp.cuda.Device().id
        info = self._device_info.get(dev)
        if info is None:
            info = self._device_info[dev] = self._query(dev)
        return info

    def _query(self, dev):
        rt = self.cp.cuda.runtime
        return {
            "n_sm": rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, dev),
            "smem_optin": rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                                dev),
            "smem_per_sm": rt.deviceGetAttribute(
                rt.cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev),
        }

    def kernel(self, filename, dtype, name):
        dev = self.cp.cuda.Device().id
        key = (filename, np.dtype(dtype).name, dev)
        with self._lock:
            entry = self._modules.get(key)
            if entry is None:
                code, options, names = module_spec(filename, dtype)
                mod = self.cp.RawModule(code=code, options=options, name_expressions=names)
                entry = {"module": mod, "kernels": {}}
                self._modules[key] = entry
            k = entry["kernels"].get(name)
            if k is None:
                k = entry["module"].get_function(name)
                entry["kernels"][name] = k
            return k

    def launch(self, filename, dtype, name, grid, block, args, smem=0):
        k = self.kernel(filename, dtype, name)
        if smem > 48 * 1024 and k.max_dynamic_shared_size_bytes < smem:
            k.max_dynamic_shared_size_bytes = int(smem)
        k(tuple(int(g) for g in grid), tuple(int(t) for t in block), tuple(args),
          shared_mem=int(smem))


def _pad_params(xp, W, a, b, mp, dt):
    d, m = W.shape
    Wp = xp.zeros((d, mp), dtype=dt)
    Wp[:, :m] = W
    bp = xp.zeros((mp,), dtype=dt)
    bp[:m] = b
    ap = None
    if a is not None:
        ap = xp.zeros((mp,), dtype=dt)
        ap[:m] = a
    return Wp, ap, bp


def _reduce_grid(total, device):
    return (max(1, min(_ceil_div(total, 256), int(device["n_sm"]) * 8)), 1, 1)


def stage1_fused_run(launcher, X, y, W, a, b, loss="square", delta=1.0, offset=0.0,
                     activation_name="logcosh", plan=None):
    """Stage-1 gradient by the fused kernel of ``cuda/stage1.cu``; returns (G, mean_loss).

    ``launcher`` has ``xp``, ``device()`` and ``launch(...)`` (:class:`CupyLauncher` on a
    GPU; the CPU tests pass an emulator running the same CUDA source).
    """
    xp = launcher.xp
    dt = np.dtype(X.dtype)
    T = dt.type
    n, d = X.shape
    m = W.shape[1]
    if plan is None:
        plan = fused_plan("stage1", n, d, m, dt.itemsize, launcher.device())
    mp = plan["mp"]
    X = xp.ascontiguousarray(X)
    y = xp.ascontiguousarray(y)
    Wp, ap, bp = _pad_params(xp, W, a, b, mp, dt)
    nrb = plan["row_blocks"]
    partial = xp.empty((nrb, d, mp), dtype=dt)
    loss_partial = xp.zeros((nrb,), dtype=xp.float64)
    launcher.launch("stage1.cu", dt, f"stage1_fused<{_CTYPES[dt]}, {mp}>",
                    plan["grid"], plan["block"],
                    (X, y, Wp, ap, bp, np.int64(n), np.int64(d),
                     np.int64(plan["rows_per_block"]), np.int64(plan["slab_cols"]),
                     np.int32(_ACT_CODES[activation_name]), np.int32(_LOSS_CODES[loss]),
                     T(delta), T(offset), partial, loss_partial),
                    plan["smem"])
    G = xp.empty((d, m), dtype=dt)
    launcher.launch("stage1.cu", dt, f"stage1_reduce<{_CTYPES[dt]}>",
                    _reduce_grid(d * m, launcher.device()), (256, 1, 1),
                    (partial, np.int64(nrb), np.int64(d), np.int32(mp), np.int32(m),
                     np.int64(n), G))
    mean_loss = float(loss_partial.sum()) / n if n else float("nan")
    return G, mean_loss


def stage2_fused_run(launcher, X, y, W, b, activation_name="logcosh", plan=None):
    """(F^T F / n, F^T y / n) by the fused kernel of ``cuda/stage2.cu``."""
    xp = launcher.xp
    dt = np.dtype(X.dtype)
    n, d = X.shape
    m = W.shape[1]
    if plan is None:
        plan = fused_plan("stage2", n, d, m, dt.itemsize, launcher.device())
    mp = plan["mp"]
    X = xp.ascontiguousarray(X)
    y = xp.ascontiguousarray(y)
    Wp, _ap, bp = _pad_params(xp, W, None, b, mp, dt)
    nrb = plan["row_blocks"]
    partial = xp.empty((nrb, mp * mp + mp), dtype=xp.float64)
    launcher.launch("stage2.cu", dt, f"stage2_fused<{_CTYPES[dt]}, {mp}>",
                    plan["grid"], plan["block"],
                    (X, y, Wp, bp, np.int64(n), np.int64(d), np.int64(plan["rows_per_block"]),
                     np.int32(_ACT_CODES[activation_name]), partial),
                    plan["smem"])
    K = xp.empty((m, m), dtype=dt)
    v = xp.empty((m,), dtype=dt)
    launcher.launch("stage2.cu", dt, f"stage2_reduce<{_CTYPES[dt]}>",
                    _reduce_grid(m * m + m, launcher.device()), (256, 1, 1),
                    (partial, np.int64(nrb), np.int32(mp), np.int32(m), np.int64(n), K, v))
    return K, v


# --------------------------------------------------------------------------
# public kernels (cupy)
# --------------------------------------------------------------------------
def _prepare(cp, X, *others):
    X = cp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    dt = _check_dtype(X)
    return (X,) + tuple(None if o is None else cp.asarray(o, dtype=dt) for o in others)


def _stage1_path(path, n, d, m, dt, launcher):
    if path not in (None, "gemm", "fused"):
        raise ValueError(f"path must be None, 'gemm' or 'fused', got {path!r}")
    if path == "fused" and m > FUSED_MAX_WIDTH:
        raise ValueError(f"path='fused' supports m <= {FUSED_MAX_WIDTH}, got m={m}")
    if path is not None:
        return path
    if m > FUSED_MAX_WIDTH or n == 0:
        return "gemm"
    plan = fused_plan("stage1", n, d, m, dt.itemsize, launcher.device())
    return "fused" if plan["n_slabs"] == 1 else "gemm"


def stage1_grad(X, y, W, a, b, loss="square", delta=1.0, offset=0.0,
                activation_name="logcosh", *, path=None, allow_tf32=False, block_rows=None):
    """First-layer gradient of the mean training loss and the mean loss (see reference).

    H = XW + b;  f = sigma(H) a;  c = l'(f, y);  P = (c outer a) * sigma'(H);
    G = X^T P / n.  Returns ``(G, mean_loss)``: G a cupy array of W's shape and X's dtype,
    mean_loss a Python float.  ``path``: None (auto), ``"gemm"`` or ``"fused"``;
    ``block_rows`` bounds the GEMM path's row blocks.
    """
    cp = _require_cupy()
    _check_names(activation_name, loss)
    X, y, W, a, b = _prepare(cp, X, y, W, a, b)
    dt = np.dtype(X.dtype)
    n, d = X.shape
    m = W.shape[1]
    launcher = CupyLauncher()
    chosen = _stage1_path(path, n, d, m, dt, launcher)
    with _tf32_mode(allow_tf32):
        if chosen == "fused":
            return stage1_fused_run(launcher, X, y, W, a, b, loss, delta, offset,
                                    activation_name)
        return stage1_gemm(cp, CupyElementwise(), X, y, W, a, b, loss, delta, offset,
                           activation_name, block_rows=block_rows)


def stage2_gram(X, y, W, b, activation_name="logcosh", *, path=None, allow_tf32=False,
                block_rows=None):
    """Feature Gram and moment ``(F^T F / n, F^T y / n)`` for F = sigma(XW + b)."""
    cp = _require_cupy()
    _check_names(activation_name)
    X, y, W, b = _prepare(cp, X, y, W, b)
    n = X.shape[0]
    m = W.shape[1]
    if path not in (None, "gemm", "fused"):
        raise ValueError(f"path must be None, 'gemm' or 'fused', got {path!r}")
    if path == "fused" and m > FUSED_MAX_WIDTH:
        raise ValueError(f"path='fused' supports m <= {FUSED_MAX_WIDTH}, got m={m}")
    if path is None:
        path = "fused" if (m <= FUSED_MAX_WIDTH and n > 0) else "gemm"
    with _tf32_mode(allow_tf32):
        if path == "fused":
            return stage2_fused_run(CupyLauncher(), X, y, W, b, activation_name)
        return stage2_gemm(cp, CupyElementwise(), X, y, W, b, activation_name,
                           block_rows=block_rows)


def predict(X, W, a, b, activation_name="logcosh", *, allow_tf32=False, block_rows=None):
    """f(X) = sigma(XW + b) a, shape (n,)."""
    cp = _require_cupy()
    _check_names(activation_name)
    X, W, a, b = _prepare(cp, X, W, a, b)
    with _tf32_mode(allow_tf32):
        return predict_gemm(cp, CupyElementwise(), X, W, a, b, activation_name,
                            block_rows=block_rows)


def sigma_matvec(X, c, V, *, allow_tf32=False, block_rows=None):
    """Sigma_l V = X^T (c * (X V)) / n without forming Sigma_l; V is (d,) or (d, k)."""
    cp = _require_cupy()
    X, c, V = _prepare(cp, X, c, V)
    with _tf32_mode(allow_tf32):
        return sigma_matvec_gemm(cp, X, c, V, block_rows=block_rows)


def sigma_matrix(X, c, *, allow_tf32=False, block_rows=None):
    """Sigma_l = X^T diag(c) X / n, the (d, d) matrix of the spectral baseline."""
    cp = _require_cupy()
    X, c = _prepare(cp, X, c)
    with _tf32_mode(allow_tf32):
        return sigma_matrix_gemm(cp, X, c, block_rows=block_rows)


# --------------------------------------------------------------------------
# counter-based Gaussian sampler (Philox4x32-10 + Box-Muller)
# --------------------------------------------------------------------------
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox4x32_10_numpy(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Random123) on arrays of 32-bit counters; returns four uint32 arrays."""
    c = [np.asarray(v, dtype=np.uint64) & np.uint64(_MASK32) for v in (c0, c1, c2, c3)]
    k0 = int(k0) & _MASK32
    k1 = int(k1) & _MASK32
    m0 = np.uint64(_PHILOX_M0)
    m1 = np.uint64(_PHILOX_M1)
    mask = np.uint64(_MASK32)
    sh = np.uint64(32)
    for rnd in range(10):
        if rnd:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        p0 = m0 * c[0]          # < 2^64: exact in uint64
        p1 = m1 * c[2]
        c = [(p1 >> sh) ^ c[1] ^ np.uint64(k0), p1 & mask,
             (p0 >> sh) ^ c[3] ^ np.uint64(k1), p0 & mask]
    return tuple(v.astype(np.uint32) for v in c)


def _check_sampler_args(seed, stream, start, stop, d):
    seed, stream, start, stop, d = int(seed), int(stream), int(start), int(stop), int(d)
    if not 0 <= seed <= _MASK32:
        raise ValueError(f"seed must be in [0, 2^32), got {seed}")
    if not 0 <= stream <= _MASK32:
        raise ValueError(f"stream must be in [0, 2^32), got {stream}")
    if start < 0 or stop < start:
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    if d < 0 or _ceil_div(d, 4) > _MASK32:
        raise ValueError(f"d out of range: {d}")
    return seed, stream, start, stop, d


def philox_gaussian_rows_numpy(seed, stream, start, stop, d, dtype=np.float64):
    """Rows start..stop-1 of the (seed, stream) Gaussian matrix with d columns (numpy).

    The algorithm of ``cuda/sampler.cu``: key (seed, stream), counter (col // 4, row low
    word, row high word, 0), Philox4x32-10, Box-Muller in float64 on the two pairs of
    32-bit words, rounded once to ``dtype``.  Any split of the rows gives the same rows.
    """
    seed, stream, start, stop, d = _check_sampler_args(seed, stream, start, stop, d)
    dtype = np.dtype(dtype)
    nrows = stop - start
    ncol4 = _ceil_div(d, 4)
    rows = np.arange(start, stop, dtype=np.uint64)[:, None]
    q = np.arange(ncol4, dtype=np.uint64)[None, :]
    rows, q = np.broadcast_arrays(rows, q)
    x0, x1, x2, x3 = philox4x32_10_numpy(q, rows & np.uint64(_MASK32),
                                         rows >> np.uint64(32), np.zeros_like(q), seed, stream)
    two_m32 = 2.0 ** -32
    out = np.empty((nrows, ncol4, 4), dtype=np.float64)
    for (u, v), cols in (((x0, x1), (0, 1)), ((x2, x3), (2, 3))):
        u1 = (u.astype(np.float64) + 1.0) * two_m32
        u2 = v.astype(np.float64) * two_m32
        rad = np.sqrt(-2.0 * np.log(u1))
        th = 6.283185307179586 * u2
        out[:, :, cols[0]] = rad * np.cos(th)
        out[:, :, cols[1]] = rad * np.sin(th)
    return out.reshape(nrows, ncol4 * 4)[:, :d].astype(dtype)


def sample_gaussian_rows(seed, stream, start, stop, d, dtype=np.float32):
    """Rows start..stop-1 of the (seed, stream) Gaussian matrix, generated on the GPU.

    Same values as :func:`philox_gaussian_rows_numpy` (up to the last ulp of the device's
    double log/sin/cos before rounding to ``dtype``); returns a cupy array (stop-start, d).
    """
    _require_cupy()
    seed, stream, start, stop, d = _check_sampler_args(seed, stream, start, stop, d)
    dt = np.dtype(dtype)
    if dt not in _CTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    launcher = CupyLauncher()
    out = launcher.cp.empty((stop - start, d), dtype=dt)
    total = (stop - start) * _ceil_div(d, 4)
    if total == 0:
        return out
    grid = (max(1, min(_ceil_div(total, 256), int(launcher.device()["n_sm"]) * 32)), 1, 1)
    launcher.launch("sampler.cu", dt, f"philox_gaussian<{_CTYPES[dt]}>", grid, (256, 1, 1),
                    (out, np.uint32(seed), np.uint32(stream), np.int64(start),
                     np.int64(stop - start), np.int64(d)))
    return out

