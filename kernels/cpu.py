"""Numba CPU kernels of mimfast.

Same functions, signatures and return conventions as ``reference.py`` (the
specification); see that module for the meaning of every kernel.

Design
------
* **One pass over X.**  Every kernel walks X by row blocks; for each block it
  computes ``H = X_blk W`` (kernel "A"), the elementwise activation / loss work
  on the small ``H`` block, and (stage 1) ``G += X_blk^T P`` (kernel "B")
  while the block is still in cache.  Stage 2 accumulates ``F^T F`` and
  ``F^T y`` the same way, never materialising ``F`` for more than one block.
* **Per-thread accumulators.**  The parallel driver ``prange`` s over the
  threads (stumpy style): iteration ``t`` owns rows ``[t n/T, (t+1) n/T)`` and
  its own slice of every accumulator (no shared slot is ever updated); a
  serial reduce follows.  One kernel source, two variants (umap style): the
  chunk routines run under that parallel driver (default) or directly, on all
  rows, as the serial variant (``parallel=False``).
* **Accuracy.**  Block partials are summed in the working dtype over at most
  ``_FLUSH_ROWS`` rows, then folded into a float64 per-thread accumulator.
* **Two paths for the matrix products** (``path=None`` picks by width,
  ``choose_path``; override with ``path="loops"`` / ``"gemm"``).
  ``"loops"`` (default below ``GEMM_MIN_WIDTH`` = 256 columns): hand-blocked
  micro-kernels written with a tiny explicit-SIMD layer (512-bit vectors, see
  below): a 12-row x 32-column (float32; 16 for float64) register tile in
  broadcast form, W and G stored as contiguous column panels; for narrow
  widths (m <= 8 float32, m <= 4 float64) transposed tiles (vectors over k,
  W^T and G^T stored), so that no lane is idle.  ``"gemm"`` (default from 256
  columns): per-block ``np.dot`` inside the ``prange``, i.e. single-threaded
  BLAS sgemm/dgemm on a cache-resident row block.  BLAS must then run one
  thread per caller thread: the wrappers scope that themselves with
  threadpoolctl (``blas_threads``), around the call only.
* **Threads.**  Numba's current thread count (``numba.set_num_threads``),
  fewer for small problems (< ~4M multiply-adds per thread); one chunk runs
  the serial variant (``parallel=False`` forces it).
* **Explicit SIMD.**  LLVM's auto-vectoriser targets 256-bit vectors on this
  CPU family (prefer-256-bit tuning), which halves the FMA rate of AVX-512
  parts.  A handful of ``@intrinsic`` s (``vload``/``vstore``/``vsplat``/
  ``vfma``) expose LLVM ``<16 x float>`` / ``<8 x double>`` values to Numba
  so that the register tiles are exactly what we write.  On a machine without
  AVX-512, LLVM legalises them into pairs of 256-bit (or four 128-bit)
  operations: still correct, just a less ideal tile.
* **Transcendentals.**  Numba has no vector math library here (``np.tanh`` is a
  scalar libm call, ~20 ns), so ``tanh`` and ``log cosh`` are computed together
  from one branch-free ``expm1`` (Cody-Waite reduction, minimax polynomial,
  exponent built by bit casting) plus minimax polynomials, evaluated in
  float64 (float32-length polynomials for float32 data): they vectorise and
  are accurate to <= 1 ulp (float32) / ~1e-15 relative (float64).
"""

from __future__ import annotations

import numpy as np
import numba
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model
from llvmlite import ir

from . import cache_bytes

__all__ = [
    "stage1_grad", "stage2_gram", "predict", "sigma_matvec", "sigma_matrix",
    "fast_tanh", "fast_logcosh", "blas_threads", "choose_path",
    "ACTIVATIONS", "LOSS_KINDS", "FASTMATH",
]

ACTIVATIONS = ("logcosh", "quadratic", "relu")
LOSS_KINDS = ("square", "huber", "pseudo_huber")

#: fast-math flags of every kernel: FMA contraction and no signed zeros.
#: Deliberately no ``nnan``/``ninf`` (NaN/inf propagate) and no ``reassoc``/
#: ``arcp``/``afn``: the elementary functions are inlined into the kernels at
#: Numba-IR level, where they take the caller's flags, and ``reassoc`` would
#: fold the Cody-Waite split of ln 2 back into one rounded constant.
FASTMATH = {"nsz", "contract"}
#: flags of the stand-alone (never inlined) reductions, which may reorder sums
_REDUCE_FM = {"nsz", "contract", "reassoc"}
#: common jit options ("numpy" error model: no ZeroDivisionError branches, so
#: loops with divisions vectorise)
_JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

_ROWS = 12            # register-tile rows of the "loops" micro-kernels
_FLUSH_ROWS = 2048    # rows summed in the working dtype before the float64 fold
_L2_BYTES = 1536 * 1024  # budget for a super-block of X rows (kept in L2)
_SUB_ROWS = 48        # rows per outer-product kB sweep (measured best of 24-192 at d = 2048)


# ==========================================================================
# A minimal explicit-SIMD layer: 512-bit LLVM vectors as Numba values
# ==========================================================================
class _Vec(types.Type):
    """An LLVM vector of ``lanes`` ``dtype`` values (lives in a register)."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vec({dtype}x{lanes})")


@register_model(_Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        be = ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes)
        super().__init__(dmm, fe_type, be)


def _lanes(dt):
    return 64 // (dt.bitwidth // 8)          # 16 float32 / 8 float64 = 512 bits


def _vec_of(dt):
    return _Vec(dt, _lanes(dt))


def _elem_ptr2(context, builder, aryty, ary, i, j):
    a = context.make_array(aryty)(context, builder, ary)
    ncol = cgutils.unpack_tuple(builder, a.shape, 2)[1]
    return builder.gep(a.data, [builder.add(builder.mul(i, ncol), j)])


def _as_intp(context, builder, val, ty):
    return context.cast(builder, val, ty, types.intp)


def _ptr_at(context, builder, sig, args):
    """Pointer to A[i, j] for an intrinsic called as f(A, i, j, ...)."""
    return _elem_ptr2(context, builder, sig.args[0], args[0],
                      _as_intp(context, builder, args[1], sig.args[1]),
                      _as_intp(context, builder, args[2], sig.args[2]))


def _broadcast(builder, lt, x, lanes):
    """The scalar x in every lane of an LLVM vector of type lt."""
    v = builder.insert_element(ir.Constant(lt, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(v, ir.Constant(lt, ir.Undefined), mask)


def _is_float_c2d(A):
    return (isinstance(A, types.Array) and A.ndim == 2 and A.layout == "C"
            and isinstance(A.dtype, types.Float))


@intrinsic
def vload(typingctx, A, i, j):
    """Vector A[i, j:j+L] of a C-contiguous 2-D float array (unaligned)."""
    if not _is_float_c2d(A):
        return None
    vt = _vec_of(A.dtype)

    def codegen(context, builder, sig, args):
        p = _ptr_at(context, builder, sig, args)
        lt = context.get_value_type(vt)
        return builder.load(builder.bitcast(p, lt.as_pointer()), align=A.dtype.bitwidth // 8)
    return vt(A, i, j), codegen


@intrinsic
def vstore(typingctx, A, i, j, v):
    """A[i, j:j+L] = v."""
    if not (isinstance(A, types.Array) and A.ndim == 2 and A.layout == "C"
            and isinstance(v, _Vec) and v.dtype == A.dtype):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr_at(context, builder, sig, args)
        lt = context.get_value_type(sig.args[3])
        builder.store(args[3], builder.bitcast(p, lt.as_pointer()), align=A.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(A, i, j, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """Broadcast a float scalar to all lanes."""
    if not isinstance(x, types.Float):
        return None
    vt = _vec_of(x)

    def codegen(context, builder, sig, args):
        return _broadcast(builder, context.get_value_type(vt), args[0], vt.lanes)
    return vt(x), codegen


@intrinsic
def vzeros(typingctx, A):
    """A zero vector of A's dtype."""
    vt = _vec_of(A.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)
    return vt(A), codegen


@intrinsic
def vlanes(typingctx, A):
    """Number of lanes of the vectors of A's dtype (a compile-time constant)."""
    L = _lanes(A.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(64), L)
    return types.intp(A), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, fused (llvm.fma)."""
    if not (isinstance(c, _Vec) and a == c and b == c):
        return None

    def codegen(context, builder, sig, args):
        lt = args[2].type
        name = f"llvm.fma.v{c.lanes}f{c.dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lt, [lt, lt, lt]), name)
        return builder.call(fn, list(args))
    return c(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):
    if not (isinstance(a, _Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return a(a, b), codegen


@intrinsic
def vsplat1(typingctx, A, i, j):
    """A[i, j] broadcast to all lanes, addressed without negative-index
    wrap-around (so that A[i, k0 + c] for constant c folds into one base)."""
    if not _is_float_c2d(A):
        return None
    vt = _vec_of(A.dtype)

    def codegen(context, builder, sig, args):
        p = _ptr_at(context, builder, sig, args)
        x = builder.load(p, align=A.dtype.bitwidth // 8)
        return _broadcast(builder, context.get_value_type(vt), x, vt.lanes)
    return vt(A, i, j), codegen


@intrinsic
def vprefetch_l2(typingctx, A, i, j):
    """Hint: fetch the cache line holding A[i, j] into L2 (llvm.prefetch, read,
    locality 2).  A hint never faults, so (i, j) may lie past the array's end."""
    if not _is_float_c2d(A):
        return None

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        q = builder.bitcast(_ptr_at(context, builder, sig, args), i8p)
        i32 = ir.IntType(32)
        name = "llvm.prefetch.p0i8" if str(i8p) == "i8*" else "llvm.prefetch.p0"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name)
        builder.call(fn, [q, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(A, i, j), codegen


@intrinsic
def vsum(typingctx, v):
    """Sum of the lanes of a vector (a reassociating tree reduction)."""
    if not isinstance(v, _Vec):
        return None

    def codegen(context, builder, sig, args):
        lt = args[0].type
        et = lt.element
        name = f"llvm.vector.reduce.fadd.v{v.lanes}f{v.dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(et, [et, lt]), name)
        return builder.call(fn, [ir.Constant(et, 0.0), args[0]], fastmath=("reassoc", "nsz"))
    return v.dtype(v), codegen


@intrinsic
def _pow2(typingctx, kf):
    """2**kf for an integer-valued float kf within the normal exponent range
    (built by bit casting, so it vectorises)."""
    if not isinstance(kf, types.Float):
        return None

    def codegen(context, builder, sig, args):
        bw = kf.bitwidth
        it = ir.IntType(bw)
        mant, bias = (23, 127) if bw == 32 else (52, 1023)
        i = builder.fptosi(args[0], it)
        i = builder.add(i, ir.Constant(it, bias))
        i = builder.shl(i, ir.Constant(it, mant))
        return builder.bitcast(i, args[0].type)
    return kf(kf), codegen


# ==========================================================================
# Elementary functions (vectorisable, dtype-specific constants)
# ==========================================================================
# Minimax-like polynomials (mpmath.chebyfit, highest degree first).
#   expm1(r) = r + r^2 Q(r)          on |r| <= ln2/2
#   log cosh x = u G(u), u = x^2     on |x| <= 0.75
#   log1p(e) = e L(e)                on 0 <= e <= exp(-1.5)
_EXPM1_Q64 = (2.0914679376583935e-09, 2.510520637395701e-08, 2.7557273661348637e-07,
              2.7557255425746435e-06, 2.4801587325533363e-05, 0.00019841269874800493,
              0.0013888888888883752, 0.008333333333326141, 0.04166666666666667,
              0.1666666666666667, 0.5)
_EXPM1_Q32 = (0.00019890980869750327, 0.0013933641031986701, 0.008333310934448869,
              0.04166646500604005, 0.16666666681614256, 0.5000000013457727)
_LOGCOSH_G64 = (1.712980917330056e-07, -1.0877301036102407e-06, 3.953222593287847e-06,
                -1.1702763976921858e-05, 3.268047270322507e-05, -9.096279781304856e-05,
                0.00025657553171000224, -0.0007386023221838909, 0.0021869488014526445,
                -0.0067460317434871325, 0.02222222222215754, -0.08333333333333269, 0.5)
_LOGCOSH_G32 = (0.00013430571871015577, -0.0006562664034992454, 0.002157418491322029,
                -0.006740428441669265, 0.02222170775312172, -0.08333331543473234,
                0.49999999989747596)
_LOG1P_L64 = (-0.026494350004069675, 0.064608757944007, -0.09214942158698862,
              0.10954953397978244, -0.12478960306024217, 0.1428379570366457,
              -0.16666550445328862, 0.19999995509222834, -0.24999999897155595,
              0.3333333333211221, -0.49999999999994305, 1.0)
_LOG1P_L32 = (-0.09780060290828427, 0.18460719155126637, -0.24831408792809995,
              0.3332476526518586, -0.4999983838011694, 0.9999999950047801)


@njit(fastmath=FASTMATH, nogil=True, error_model="numpy", inline="always")
def _horner(cs, x):
    p = cs[0]
    for i in range(1, len(cs)):
        p = p * x + cs[i]
    return p


def _make_scalar_funcs(ft):
    """Scalar helpers whose constants are typed ``ft`` (float32 or float64),
    so no float32 expression is silently promoted to float64.

    log cosh / tanh are evaluated in float64 in both cases; for float32 with
    the shorter float32-accuracy polynomials, which makes the float32 results
    nearly correctly rounded (<= 1 ulp) at little cost.
    """
    is64 = ft is np.float64
    ct = np.float64
    EQ = tuple(ct(c) for c in (_EXPM1_Q64 if is64 else _EXPM1_Q32))
    LG = tuple(ct(c) for c in (_LOGCOSH_G64 if is64 else _LOGCOSH_G32))
    LL = tuple(ct(c) for c in (_LOG1P_L64 if is64 else _LOG1P_L32))
    ZERO, HALF, ONE, TWO = ft(0.0), ft(0.5), ft(1.0), ft(2.0)
    cZERO, cHALF, cONE, cTWO = ct(0.0), ct(0.5), ct(1.0), ct(2.0)
    INV_LN2 = ct(1.4426950408889634)
    LN2 = ct(0.6931471805599453)
    # Cody-Waite split of ln 2: k * LN2_HI is exact for the |k| that occur
    LN2_HI = ct(6.93147180369123816490e-01)
    LN2_LO = ct(1.90821492927058770002e-10)
    CLAMP = ct(20.0) if is64 else ct(9.5)     # tanh(CLAMP) rounds to 1 in ft
    A0 = ct(0.75)

    @njit(fastmath=FASTMATH, nogil=True, error_model="numpy", inline="always")
    def expm1_neg(t):
        """expm1(t) for -2*CLAMP <= t <= 0, relative accuracy ~1 ulp."""
        kf = np.floor(t * INV_LN2 + cHALF)
        r = (t - kf * LN2_HI) - kf * LN2_LO
        p = r + (r * r) * _horner(EQ, r)
        s = _pow2(kf)
        return s * p + (s - cONE)

    @njit(fastmath=FASTMATH, nogil=True, error_model="numpy", inline="always")
    def logcosh_tanh(h):
        """(log cosh h, tanh h) from one expm1; branch-free (selects)."""
        x = ct(h)
        a = np.abs(x)
        ac = CLAMP if a > CLAMP else a            # (NaN passes through)
        em = expm1_neg(-cTWO * ac)                 # exp(-2|h|) - 1, in (-1, 0]
        th = (-em) / (cTWO + em)                   # tanh |h|, accurate near 0
        th = th if x > cZERO else -th
        u = a * a
        small = u * _horner(LG, u)                 # |h| <= A0: series in h^2
        e = cONE + em                              # exp(-2|h|) <= exp(-1.5)
        large = (a - LN2) + e * _horner(LL, e)     # |h| + log1p(e) - log 2
        lc = small if a < A0 else large
        return ft(lc), ft(th)

    @njit(fastmath=FASTMATH, nogil=True, error_model="numpy", inline="always")
    def quad_pair(h):
        return HALF * h * h, h

    @njit(fastmath=FASTMATH, nogil=True, error_model="numpy", inline="always")
    def relu_pair(h):
        pos = h > ZERO
        return (h if pos else ZERO), (ONE if pos else ZERO)

    @njit(fastmath=FASTMATH, nogil=True, error_model="numpy", inline="always")
    def loss_pair(t, yv, kind, delta, offset):
        """(l'(t, y) - offset, l(t, y) - offset t); kind: 0 square, 1 huber,
        2 pseudo-Huber."""
        r = t - yv
        if kind == 0:
            g = r
            v = HALF * r * r
        elif kind == 1:
            ar = np.abs(r)
            if ar <= delta:
                g = r
                v = HALF * r * r
            else:
                g = delta if r > ZERO else -delta
                v = delta * (ar - HALF * delta)
        else:
            z = r / delta
            z2 = z * z
            q = np.sqrt(ONE + z2)
            g = r / q
            v = delta * delta * (z2 / (q + ONE))    # = delta^2 (sqrt(1+z^2) - 1)
        return g - offset, v - offset * t

    return logcosh_tanh, quad_pair, relu_pair, loss_pair


_F32 = _make_scalar_funcs(np.float32)
_F64 = _make_scalar_funcs(np.float64)


def _pick(ty, idx):
    if ty == types.float32:
        return _F32[idx]
    if ty == types.float64:
        return _F64[idx]
    return None


def _jit_only(*args):
    raise NotImplementedError("jit-only helper")


# One stub per activation (not one with an ``act`` argument): a helper with
# several returns, inlined several times into one caller, trips Numba's
# pedantic SSA check; one straight-line helper per activation does not.
def _pair_logcosh(h):
    """(log cosh h, tanh h) -- jit only."""
    _jit_only()


def _pair_quadratic(h):
    """(h^2/2, h) -- jit only."""
    _jit_only()


def _pair_relu(h):
    """(max(h, 0), [h > 0]) -- jit only."""
    _jit_only()


def _loss_pair(t, yv, kind, delta, offset):
    """(l'(t, y) - offset, l(t, y) - offset t) -- jit only."""
    _jit_only()


_logcosh_tanh = _pair_logcosh


_OV = dict(jit_options={"fastmath": FASTMATH, "nogil": True, "error_model": "numpy"},
           inline="always")


@overload(_pair_logcosh, **_OV)
def _ov_pair_logcosh(h):
    f = _pick(h, 0)
    if f is not None:
        return lambda h: f(h)


@overload(_pair_quadratic, **_OV)
def _ov_pair_quadratic(h):
    f = _pick(h, 1)
    if f is not None:
        return lambda h: f(h)


@overload(_pair_relu, **_OV)
def _ov_pair_relu(h):
    f = _pick(h, 2)
    if f is not None:
        return lambda h: f(h)


@overload(_loss_pair, **_OV)
def _ov_loss_pair(t, yv, kind, delta, offset):
    f = _pick(t, 3)
    if f is not None:
        return lambda t, yv, kind, delta, offset: f(t, yv, kind, delta, offset)


@njit(**_JIT)
def _fast_tanh_1d(x, out):
    for i in range(x.shape[0]):
        out[i] = _logcosh_tanh(x[i])[1]


@njit(**_JIT)
def _fast_logcosh_1d(x, out):
    for i in range(x.shape[0]):
        out[i] = _logcosh_tanh(x[i])[0]


def fast_tanh(x):
    """tanh(x) with the kernels' own vectorisable implementation (float32/64)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    xf = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(xf)
    _fast_tanh_1d(xf, out)
    return out.reshape(x.shape)


def fast_logcosh(x):
    """log cosh(x) with the kernels' own vectorisable implementation."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    xf = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(xf)
    _fast_logcosh_1d(xf, out)
    return out.reshape(x.shape)


# ==========================================================================
# Register-tile micro-kernels ("loops" path), generated once by a script from
# one template, shown unrolled so that the tiles are plain to read.
#   kA: H[hr0+r, panel q] = sum_k X[i0+r, k] W_q[k, :]       (12 rows)
#   kB: G_q[k, :]        += sum_r X[i0+r, k] P[pr0+r, panel q]  for k >= k0
# W_q / G_q are column panels stored as rows q*K .. q*K+K-1 of a (npanel*K, NB)
# array, NB = 2 vectors (x2 kernels) -- the last panel may use only one (x1).
# Broadcast form: accumulators are 512-bit registers over columns; each X
# element is broadcast once and feeds 1-2 FMAs; 24 accumulators (x2) fit the
# 32 AVX-512 registers with room for operands.
# Narrow widths (m <= L/2, e.g. m <= 8 in float32) would leave half of every
# vector idle; their kernels are transposed instead (vectors over k, see
# _pass_At_rows / _pass_Bt_rows), so every lane does useful work.
# kB (used by the Gram of stage 2) reloads and stores its G row for every
# 12-row tile.  Stage 1 uses kBr instead, the outer-product form: a 12-k x NB
# tile of G stays in registers while _SUB_ROWS rows stream past, so G traffic
# is paid once per sub-block, not once per 12 rows (measured 2.3x faster at
# d = 2048, m = 32).  X[i, k0 + c] is read through ``vsplat1``: Numba's own
# indexing wraps negative indices, and the 12 wrapped offsets were hoisted
# into registers and spilled the accumulators to the stack.
# ==========================================================================
@njit(**_JIT)
def _kA_12x2(X, i0, W, q, H, hr0):
    """H[hr0:hr0+12, q*NB:q*NB+2L] = X[i0:i0+12] @ W-panel q  (broadcast form)."""
    d = X.shape[1]
    L = vlanes(W)
    kq = q * d
    hj = q * W.shape[1]
    z = vzeros(W)
    a0_0 = z; a0_1 = z
    a1_0 = z; a1_1 = z
    a2_0 = z; a2_1 = z
    a3_0 = z; a3_1 = z
    a4_0 = z; a4_1 = z
    a5_0 = z; a5_1 = z
    a6_0 = z; a6_1 = z
    a7_0 = z; a7_1 = z
    a8_0 = z; a8_1 = z
    a9_0 = z; a9_1 = z
    a10_0 = z; a10_1 = z
    a11_0 = z; a11_1 = z
    for k in range(d):
        w0 = vload(W, kq + k, 0 * L); w1 = vload(W, kq + k, 1 * L)
        x = vsplat(X[i0 + 0, k]); a0_0 = vfma(x, w0, a0_0); a0_1 = vfma(x, w1, a0_1)
        x = vsplat(X[i0 + 1, k]); a1_0 = vfma(x, w0, a1_0); a1_1 = vfma(x, w1, a1_1)
        x = vsplat(X[i0 + 2, k]); a2_0 = vfma(x, w0, a2_0); a2_1 = vfma(x, w1, a2_1)
        x = vsplat(X[i0 + 3, k]); a3_0 = vfma(x, w0, a3_0); a3_1 = vfma(x, w1, a3_1)
        x = vsplat(X[i0 + 4, k]); a4_0 = vfma(x, w0, a4_0); a4_1 = vfma(x, w1, a4_1)
        x = vsplat(X[i0 + 5, k]); a5_0 = vfma(x, w0, a5_0); a5_1 = vfma(x, w1, a5_1)
        x = vsplat(X[i0 + 6, k]); a6_0 = vfma(x, w0, a6_0); a6_1 = vfma(x, w1, a6_1)
        x = vsplat(X[i0 + 7, k]); a7_0 = vfma(x, w0, a7_0); a7_1 = vfma(x, w1, a7_1)
        x = vsplat(X[i0 + 8, k]); a8_0 = vfma(x, w0, a8_0); a8_1 = vfma(x, w1, a8_1)
        x = vsplat(X[i0 + 9, k]); a9_0 = vfma(x, w0, a9_0); a9_1 = vfma(x, w1, a9_1)
        x = vsplat(X[i0 + 10, k]); a10_0 = vfma(x, w0, a10_0); a10_1 = vfma(x, w1, a10_1)
        x = vsplat(X[i0 + 11, k]); a11_0 = vfma(x, w0, a11_0); a11_1 = vfma(x, w1, a11_1)
    vstore(H, hr0 + 0, hj + 0 * L, a0_0); vstore(H, hr0 + 0, hj + 1 * L, a0_1)
    vstore(H, hr0 + 1, hj + 0 * L, a1_0); vstore(H, hr0 + 1, hj + 1 * L, a1_1)
    vstore(H, hr0 + 2, hj + 0 * L, a2_0); vstore(H, hr0 + 2, hj + 1 * L, a2_1)
    vstore(H, hr0 + 3, hj + 0 * L, a3_0); vstore(H, hr0 + 3, hj + 1 * L, a3_1)
    vstore(H, hr0 + 4, hj + 0 * L, a4_0); vstore(H, hr0 + 4, hj + 1 * L, a4_1)
    vstore(H, hr0 + 5, hj + 0 * L, a5_0); vstore(H, hr0 + 5, hj + 1 * L, a5_1)
    vstore(H, hr0 + 6, hj + 0 * L, a6_0); vstore(H, hr0 + 6, hj + 1 * L, a6_1)
    vstore(H, hr0 + 7, hj + 0 * L, a7_0); vstore(H, hr0 + 7, hj + 1 * L, a7_1)
    vstore(H, hr0 + 8, hj + 0 * L, a8_0); vstore(H, hr0 + 8, hj + 1 * L, a8_1)
    vstore(H, hr0 + 9, hj + 0 * L, a9_0); vstore(H, hr0 + 9, hj + 1 * L, a9_1)
    vstore(H, hr0 + 10, hj + 0 * L, a10_0); vstore(H, hr0 + 10, hj + 1 * L, a10_1)
    vstore(H, hr0 + 11, hj + 0 * L, a11_0); vstore(H, hr0 + 11, hj + 1 * L, a11_1)


@njit(**_JIT)
def _kB_12x2(X, i0, P, pr0, G, q, k0):
    """G-panel q rows k0.. += X[i0:i0+12, k0:]^T @ P[pr0:pr0+12, panel q]  (broadcast form)."""
    d = X.shape[1]
    L = vlanes(G)
    kq = q * d
    pj = q * G.shape[1]
    z = vzeros(G)
    p0_0 = vload(P, pr0 + 0, pj + 0 * L); p0_1 = vload(P, pr0 + 0, pj + 1 * L)
    p1_0 = vload(P, pr0 + 1, pj + 0 * L); p1_1 = vload(P, pr0 + 1, pj + 1 * L)
    p2_0 = vload(P, pr0 + 2, pj + 0 * L); p2_1 = vload(P, pr0 + 2, pj + 1 * L)
    p3_0 = vload(P, pr0 + 3, pj + 0 * L); p3_1 = vload(P, pr0 + 3, pj + 1 * L)
    p4_0 = vload(P, pr0 + 4, pj + 0 * L); p4_1 = vload(P, pr0 + 4, pj + 1 * L)
    p5_0 = vload(P, pr0 + 5, pj + 0 * L); p5_1 = vload(P, pr0 + 5, pj + 1 * L)
    p6_0 = vload(P, pr0 + 6, pj + 0 * L); p6_1 = vload(P, pr0 + 6, pj + 1 * L)
    p7_0 = vload(P, pr0 + 7, pj + 0 * L); p7_1 = vload(P, pr0 + 7, pj + 1 * L)
    p8_0 = vload(P, pr0 + 8, pj + 0 * L); p8_1 = vload(P, pr0 + 8, pj + 1 * L)
    p9_0 = vload(P, pr0 + 9, pj + 0 * L); p9_1 = vload(P, pr0 + 9, pj + 1 * L)
    p10_0 = vload(P, pr0 + 10, pj + 0 * L); p10_1 = vload(P, pr0 + 10, pj + 1 * L)
    p11_0 = vload(P, pr0 + 11, pj + 0 * L); p11_1 = vload(P, pr0 + 11, pj + 1 * L)
    for k in range(k0, d):
        g0_0 = vload(G, kq + k, 0 * L); g0_1 = z
        g1_0 = vload(G, kq + k, 1 * L); g1_1 = z
        x = vsplat(X[i0 + 0, k]); g0_0 = vfma(x, p0_0, g0_0); g1_0 = vfma(x, p0_1, g1_0)
        x = vsplat(X[i0 + 1, k]); g0_0 = vfma(x, p1_0, g0_0); g1_0 = vfma(x, p1_1, g1_0)
        x = vsplat(X[i0 + 2, k]); g0_0 = vfma(x, p2_0, g0_0); g1_0 = vfma(x, p2_1, g1_0)
        x = vsplat(X[i0 + 3, k]); g0_0 = vfma(x, p3_0, g0_0); g1_0 = vfma(x, p3_1, g1_0)
        x = vsplat(X[i0 + 4, k]); g0_0 = vfma(x, p4_0, g0_0); g1_0 = vfma(x, p4_1, g1_0)
        x = vsplat(X[i0 + 5, k]); g0_0 = vfma(x, p5_0, g0_0); g1_0 = vfma(x, p5_1, g1_0)
        x = vsplat(X[i0 + 6, k]); g0_1 = vfma(x, p6_0, g0_1); g1_1 = vfma(x, p6_1, g1_1)
        x = vsplat(X[i0 + 7, k]); g0_1 = vfma(x, p7_0, g0_1); g1_1 = vfma(x, p7_1, g1_1)
        x = vsplat(X[i0 + 8, k]); g0_1 = vfma(x, p8_0, g0_1); g1_1 = vfma(x, p8_1, g1_1)
        x = vsplat(X[i0 + 9, k]); g0_1 = vfma(x, p9_0, g0_1); g1_1 = vfma(x, p9_1, g1_1)
        x = vsplat(X[i0 + 10, k]); g0_1 = vfma(x, p10_0, g0_1); g1_1 = vfma(x, p10_1, g1_1)
        x = vsplat(X[i0 + 11, k]); g0_1 = vfma(x, p11_0, g0_1); g1_1 = vfma(x, p11_1, g1_1)
        vstore(G, kq + k, 0 * L, vadd(g0_0, g0_1))
        vstore(G, kq + k, 1 * L, vadd(g1_0, g1_1))


@njit(**_JIT)
def _kA_12x1(X, i0, W, q, H, hr0):
    """H[hr0:hr0+12, q*NB:q*NB+1L] = X[i0:i0+12] @ W-panel q  (broadcast form)."""
    d = X.shape[1]
    L = vlanes(W)
    kq = q * d
    hj = q * W.shape[1]
    z = vzeros(W)
    a0_0 = z
    a1_0 = z
    a2_0 = z
    a3_0 = z
    a4_0 = z
    a5_0 = z
    a6_0 = z
    a7_0 = z
    a8_0 = z
    a9_0 = z
    a10_0 = z
    a11_0 = z
    for k in range(d):
        w0 = vload(W, kq + k, 0 * L)
        x = vsplat(X[i0 + 0, k]); a0_0 = vfma(x, w0, a0_0)
        x = vsplat(X[i0 + 1, k]); a1_0 = vfma(x, w0, a1_0)
        x = vsplat(X[i0 + 2, k]); a2_0 = vfma(x, w0, a2_0)
        x = vsplat(X[i0 + 3, k]); a3_0 = vfma(x, w0, a3_0)
        x = vsplat(X[i0 + 4, k]); a4_0 = vfma(x, w0, a4_0)
        x = vsplat(X[i0 + 5, k]); a5_0 = vfma(x, w0, a5_0)
        x = vsplat(X[i0 + 6, k]); a6_0 = vfma(x, w0, a6_0)
        x = vsplat(X[i0 + 7, k]); a7_0 = vfma(x, w0, a7_0)
        x = vsplat(X[i0 + 8, k]); a8_0 = vfma(x, w0, a8_0)
        x = vsplat(X[i0 + 9, k]); a9_0 = vfma(x, w0, a9_0)
        x = vsplat(X[i0 + 10, k]); a10_0 = vfma(x, w0, a10_0)
        x = vsplat(X[i0 + 11, k]); a11_0 = vfma(x, w0, a11_0)
    vstore(H, hr0 + 0, hj + 0 * L, a0_0)
    vstore(H, hr0 + 1, hj + 0 * L, a1_0)
    vstore(H, hr0 + 2, hj + 0 * L, a2_0)
    vstore(H, hr0 + 3, hj + 0 * L, a3_0)
    vstore(H, hr0 + 4, hj + 0 * L, a4_0)
    vstore(H, hr0 + 5, hj + 0 * L, a5_0)
    vstore(H, hr0 + 6, hj + 0 * L, a6_0)
    vstore(H, hr0 + 7, hj + 0 * L, a7_0)
    vstore(H, hr0 + 8, hj + 0 * L, a8_0)
    vstore(H, hr0 + 9, hj + 0 * L, a9_0)
    vstore(H, hr0 + 10, hj + 0 * L, a10_0)
    vstore(H, hr0 + 11, hj + 0 * L, a11_0)


@njit(**_JIT)
def _kB_12x1(X, i0, P, pr0, G, q, k0):
    """G-panel q rows k0.. += X[i0:i0+12, k0:]^T @ P[pr0:pr0+12, panel q]  (broadcast form)."""
    d = X.shape[1]
    L = vlanes(G)
    kq = q * d
    pj = q * G.shape[1]
    z = vzeros(G)
    p0_0 = vload(P, pr0 + 0, pj + 0 * L)
    p1_0 = vload(P, pr0 + 1, pj + 0 * L)
    p2_0 = vload(P, pr0 + 2, pj + 0 * L)
    p3_0 = vload(P, pr0 + 3, pj + 0 * L)
    p4_0 = vload(P, pr0 + 4, pj + 0 * L)
    p5_0 = vload(P, pr0 + 5, pj + 0 * L)
    p6_0 = vload(P, pr0 + 6, pj + 0 * L)
    p7_0 = vload(P, pr0 + 7, pj + 0 * L)
    p8_0 = vload(P, pr0 + 8, pj + 0 * L)
    p9_0 = vload(P, pr0 + 9, pj + 0 * L)
    p10_0 = vload(P, pr0 + 10, pj + 0 * L)
    p11_0 = vload(P, pr0 + 11, pj + 0 * L)
    for k in range(k0, d):
        g0_0 = vload(G, kq + k, 0 * L); g0_1 = z
        x = vsplat(X[i0 + 0, k]); g0_0 = vfma(x, p0_0, g0_0)
        x = vsplat(X[i0 + 1, k]); g0_0 = vfma(x, p1_0, g0_0)
        x = vsplat(X[i0 + 2, k]); g0_0 = vfma(x, p2_0, g0_0)
        x = vsplat(X[i0 + 3, k]); g0_0 = vfma(x, p3_0, g0_0)
        x = vsplat(X[i0 + 4, k]); g0_0 = vfma(x, p4_0, g0_0)
        x = vsplat(X[i0 + 5, k]); g0_0 = vfma(x, p5_0, g0_0)
        x = vsplat(X[i0 + 6, k]); g0_1 = vfma(x, p6_0, g0_1)
        x = vsplat(X[i0 + 7, k]); g0_1 = vfma(x, p7_0, g0_1)
        x = vsplat(X[i0 + 8, k]); g0_1 = vfma(x, p8_0, g0_1)
        x = vsplat(X[i0 + 9, k]); g0_1 = vfma(x, p9_0, g0_1)
        x = vsplat(X[i0 + 10, k]); g0_1 = vfma(x, p10_0, g0_1)
        x = vsplat(X[i0 + 11, k]); g0_1 = vfma(x, p11_0, g0_1)
        vstore(G, kq + k, 0 * L, vadd(g0_0, g0_1))


@njit(**_JIT)
def _kBr_12x2(X, r0, nr, P, G, q, k0):
    """G-panel q rows k0..k0+11 += X[r0:r0+nr, k0:k0+12]^T @ P[:nr, panel q]
    (outer-product form: the G tile stays in registers over all nr rows)."""
    d = X.shape[1]
    L = vlanes(G)
    kq = q * d + k0
    pj = q * G.shape[1]
    g0_0 = vload(G, kq + 0, 0 * L); g0_1 = vload(G, kq + 0, 1 * L)
    g1_0 = vload(G, kq + 1, 0 * L); g1_1 = vload(G, kq + 1, 1 * L)
    g2_0 = vload(G, kq + 2, 0 * L); g2_1 = vload(G, kq + 2, 1 * L)
    g3_0 = vload(G, kq + 3, 0 * L); g3_1 = vload(G, kq + 3, 1 * L)
    g4_0 = vload(G, kq + 4, 0 * L); g4_1 = vload(G, kq + 4, 1 * L)
    g5_0 = vload(G, kq + 5, 0 * L); g5_1 = vload(G, kq + 5, 1 * L)
    g6_0 = vload(G, kq + 6, 0 * L); g6_1 = vload(G, kq + 6, 1 * L)
    g7_0 = vload(G, kq + 7, 0 * L); g7_1 = vload(G, kq + 7, 1 * L)
    g8_0 = vload(G, kq + 8, 0 * L); g8_1 = vload(G, kq + 8, 1 * L)
    g9_0 = vload(G, kq + 9, 0 * L); g9_1 = vload(G, kq + 9, 1 * L)
    g10_0 = vload(G, kq + 10, 0 * L); g10_1 = vload(G, kq + 10, 1 * L)
    g11_0 = vload(G, kq + 11, 0 * L); g11_1 = vload(G, kq + 11, 1 * L)
    for r in range(nr):
        p0 = vload(P, r, pj + 0 * L); p1 = vload(P, r, pj + 1 * L)
        i = r0 + r
        x = vsplat1(X, i, k0 + 0); g0_0 = vfma(x, p0, g0_0); g0_1 = vfma(x, p1, g0_1)
        x = vsplat1(X, i, k0 + 1); g1_0 = vfma(x, p0, g1_0); g1_1 = vfma(x, p1, g1_1)
        x = vsplat1(X, i, k0 + 2); g2_0 = vfma(x, p0, g2_0); g2_1 = vfma(x, p1, g2_1)
        x = vsplat1(X, i, k0 + 3); g3_0 = vfma(x, p0, g3_0); g3_1 = vfma(x, p1, g3_1)
        x = vsplat1(X, i, k0 + 4); g4_0 = vfma(x, p0, g4_0); g4_1 = vfma(x, p1, g4_1)
        x = vsplat1(X, i, k0 + 5); g5_0 = vfma(x, p0, g5_0); g5_1 = vfma(x, p1, g5_1)
        x = vsplat1(X, i, k0 + 6); g6_0 = vfma(x, p0, g6_0); g6_1 = vfma(x, p1, g6_1)
        x = vsplat1(X, i, k0 + 7); g7_0 = vfma(x, p0, g7_0); g7_1 = vfma(x, p1, g7_1)
        x = vsplat1(X, i, k0 + 8); g8_0 = vfma(x, p0, g8_0); g8_1 = vfma(x, p1, g8_1)
        x = vsplat1(X, i, k0 + 9); g9_0 = vfma(x, p0, g9_0); g9_1 = vfma(x, p1, g9_1)
        x = vsplat1(X, i, k0 + 10); g10_0 = vfma(x, p0, g10_0); g10_1 = vfma(x, p1, g10_1)
        x = vsplat1(X, i, k0 + 11); g11_0 = vfma(x, p0, g11_0); g11_1 = vfma(x, p1, g11_1)
    vstore(G, kq + 0, 0 * L, g0_0); vstore(G, kq + 0, 1 * L, g0_1)
    vstore(G, kq + 1, 0 * L, g1_0); vstore(G, kq + 1, 1 * L, g1_1)
    vstore(G, kq + 2, 0 * L, g2_0); vstore(G, kq + 2, 1 * L, g2_1)
    vstore(G, kq + 3, 0 * L, g3_0); vstore(G, kq + 3, 1 * L, g3_1)
    vstore(G, kq + 4, 0 * L, g4_0); vstore(G, kq + 4, 1 * L, g4_1)
    vstore(G, kq + 5, 0 * L, g5_0); vstore(G, kq + 5, 1 * L, g5_1)
    vstore(G, kq + 6, 0 * L, g6_0); vstore(G, kq + 6, 1 * L, g6_1)
    vstore(G, kq + 7, 0 * L, g7_0); vstore(G, kq + 7, 1 * L, g7_1)
    vstore(G, kq + 8, 0 * L, g8_0); vstore(G, kq + 8, 1 * L, g8_1)
    vstore(G, kq + 9, 0 * L, g9_0); vstore(G, kq + 9, 1 * L, g9_1)
    vstore(G, kq + 10, 0 * L, g10_0); vstore(G, kq + 10, 1 * L, g10_1)
    vstore(G, kq + 11, 0 * L, g11_0); vstore(G, kq + 11, 1 * L, g11_1)

@njit(**_JIT)
def _kBr_12x1(X, r0, nr, P, G, q, k0):
    """G-panel q rows k0..k0+11 += X[r0:r0+nr, k0:k0+12]^T @ P[:nr, panel q]
    (outer-product form: the G tile stays in registers over all nr rows)."""
    d = X.shape[1]
    L = vlanes(G)
    kq = q * d + k0
    pj = q * G.shape[1]
    g0_0 = vload(G, kq + 0, 0 * L)
    g1_0 = vload(G, kq + 1, 0 * L)
    g2_0 = vload(G, kq + 2, 0 * L)
    g3_0 = vload(G, kq + 3, 0 * L)
    g4_0 = vload(G, kq + 4, 0 * L)
    g5_0 = vload(G, kq + 5, 0 * L)
    g6_0 = vload(G, kq + 6, 0 * L)
    g7_0 = vload(G, kq + 7, 0 * L)
    g8_0 = vload(G, kq + 8, 0 * L)
    g9_0 = vload(G, kq + 9, 0 * L)
    g10_0 = vload(G, kq + 10, 0 * L)
    g11_0 = vload(G, kq + 11, 0 * L)
    for r in range(nr):
        p0 = vload(P, r, pj + 0 * L)
        i = r0 + r
        x = vsplat1(X, i, k0 + 0); g0_0 = vfma(x, p0, g0_0)
        x = vsplat1(X, i, k0 + 1); g1_0 = vfma(x, p0, g1_0)
        x = vsplat1(X, i, k0 + 2); g2_0 = vfma(x, p0, g2_0)
        x = vsplat1(X, i, k0 + 3); g3_0 = vfma(x, p0, g3_0)
        x = vsplat1(X, i, k0 + 4); g4_0 = vfma(x, p0, g4_0)
        x = vsplat1(X, i, k0 + 5); g5_0 = vfma(x, p0, g5_0)
        x = vsplat1(X, i, k0 + 6); g6_0 = vfma(x, p0, g6_0)
        x = vsplat1(X, i, k0 + 7); g7_0 = vfma(x, p0, g7_0)
        x = vsplat1(X, i, k0 + 8); g8_0 = vfma(x, p0, g8_0)
        x = vsplat1(X, i, k0 + 9); g9_0 = vfma(x, p0, g9_0)
        x = vsplat1(X, i, k0 + 10); g10_0 = vfma(x, p0, g10_0)
        x = vsplat1(X, i, k0 + 11); g11_0 = vfma(x, p0, g11_0)
    vstore(G, kq + 0, 0 * L, g0_0)
    vstore(G, kq + 1, 0 * L, g1_0)
    vstore(G, kq + 2, 0 * L, g2_0)
    vstore(G, kq + 3, 0 * L, g3_0)
    vstore(G, kq + 4, 0 * L, g4_0)
    vstore(G, kq + 5, 0 * L, g5_0)
    vstore(G, kq + 6, 0 * L, g6_0)
    vstore(G, kq + 7, 0 * L, g7_0)
    vstore(G, kq + 8, 0 * L, g8_0)
    vstore(G, kq + 9, 0 * L, g9_0)
    vstore(G, kq + 10, 0 * L, g10_0)
    vstore(G, kq + 11, 0 * L, g11_0)

@njit(**_JIT)
def _kBr_tail(X, r0, nr, P, G, q, k0, nv):
    """The last G rows k0 <= k < d of panel q (fewer than 12), one k at a time,
    four row accumulators so that the FMA chains overlap."""
    d = X.shape[1]
    L = vlanes(G)
    pj = q * G.shape[1]
    z = vzeros(G)
    n4 = nr - nr % 4
    for k in range(k0, d):
        for j in range(nv):
            c = pj + j * L
            a0 = z; a1 = z; a2 = z; a3 = z
            for r in range(0, n4, 4):
                i = r0 + r
                a0 = vfma(vsplat1(X, i, k), vload(P, r, c), a0)
                a1 = vfma(vsplat1(X, i + 1, k), vload(P, r + 1, c), a1)
                a2 = vfma(vsplat1(X, i + 2, k), vload(P, r + 2, c), a2)
                a3 = vfma(vsplat1(X, i + 3, k), vload(P, r + 3, c), a3)
            for r in range(n4, nr):
                a0 = vfma(vsplat1(X, r0 + r, k), vload(P, r, c), a0)
            gk = q * d + k
            vstore(G, gk, j * L, vadd(vload(G, gk, j * L), vadd(vadd(a0, a1), vadd(a2, a3))))


@njit(**_JIT)
def _pass_B_rows(X, sb0, nr, P, Gp, last1):
    """G-panels += X[sb0:sb0+nr]^T @ P[:nr] in the outer-product form, rows in
    sub-blocks of _SUB_ROWS so that X's lines and P stay in L1 across k tiles."""
    R = _ROWS
    d = X.shape[1]
    npan = Gp.shape[0] // d
    kend = d - d % R
    for s0 in range(0, nr, _SUB_ROWS):
        ns = min(_SUB_ROWS, nr - s0)
        Ps = P[s0:s0 + ns]
        for q in range(npan):
            one = last1 and q == npan - 1
            for k0 in range(0, kend, R):
                if one:
                    _kBr_12x1(X, sb0 + s0, ns, Ps, Gp, q, k0)
                else:
                    _kBr_12x2(X, sb0 + s0, ns, Ps, Gp, q, k0)
            if kend < d:
                _kBr_tail(X, sb0 + s0, ns, Ps, Gp, q, kend, 1 if one else 2)



# Narrow widths (m <= L/2) in stage 1, both products transposed.  Kernel A:
# W is stored as W^T (L/2, d) and every accumulator is a vector over k,
# summed across lanes once per row and column; per k-vector, R loads of X and
# L/2 of W^T feed 24 FMAs.  Kernel B: G^T (L/2, d) tiles vectorised over k;
# per row, KV vector loads of X and L/2 scalar broadcasts of P feed 24 FMAs.
# (The s2 pair form needs 13 loads per 12 FMAs: load-port bound, it ran kB at
# half the FMA rate and kA at ~21 of the 33 GB/s two cores can read.)
# Kernel A is the one that meets each row of X first, from memory: on its own it
# ran at half the FMA rate (d = 2048, one thread: 640 ns/row cold, 320 ns/row
# with X in cache), while kernel B, on rows already in cache, runs at the FMA
# rate.  So kernel B also prefetches, line for line, the next super-block
# (rows nr further on) into L2: B's FMAs hide the memory traffic A would wait
# for (super-blocks sized by _narrow_superblock_rows so that two fit in L2).
@njit(**_JIT)
def _kAt_3x8(X, i0, WT, H, hr0, kv):
    """H[hr0+r, j] = X[i0+r, :kv] . WT[j, :kv] for r < 3, j < 8 (kv a multiple
    of L): 3x8 accumulators vectorised over k, summed across lanes at the end."""
    L = vlanes(WT)
    z = vzeros(WT)
    a0_0 = z; a0_1 = z; a0_2 = z; a0_3 = z; a0_4 = z; a0_5 = z; a0_6 = z; a0_7 = z
    a1_0 = z; a1_1 = z; a1_2 = z; a1_3 = z; a1_4 = z; a1_5 = z; a1_6 = z; a1_7 = z
    a2_0 = z; a2_1 = z; a2_2 = z; a2_3 = z; a2_4 = z; a2_5 = z; a2_6 = z; a2_7 = z
    for k in range(0, kv, L):
        x0 = vload(X, i0 + 0, k); x1 = vload(X, i0 + 1, k); x2 = vload(X, i0 + 2, k)
        w = vload(WT, 0, k)
        a0_0 = vfma(x0, w, a0_0); a1_0 = vfma(x1, w, a1_0); a2_0 = vfma(x2, w, a2_0)
        w = vload(WT, 1, k)
        a0_1 = vfma(x0, w, a0_1); a1_1 = vfma(x1, w, a1_1); a2_1 = vfma(x2, w, a2_1)
        w = vload(WT, 2, k)
        a0_2 = vfma(x0, w, a0_2); a1_2 = vfma(x1, w, a1_2); a2_2 = vfma(x2, w, a2_2)
        w = vload(WT, 3, k)
        a0_3 = vfma(x0, w, a0_3); a1_3 = vfma(x1, w, a1_3); a2_3 = vfma(x2, w, a2_3)
        w = vload(WT, 4, k)
        a0_4 = vfma(x0, w, a0_4); a1_4 = vfma(x1, w, a1_4); a2_4 = vfma(x2, w, a2_4)
        w = vload(WT, 5, k)
        a0_5 = vfma(x0, w, a0_5); a1_5 = vfma(x1, w, a1_5); a2_5 = vfma(x2, w, a2_5)
        w = vload(WT, 6, k)
        a0_6 = vfma(x0, w, a0_6); a1_6 = vfma(x1, w, a1_6); a2_6 = vfma(x2, w, a2_6)
        w = vload(WT, 7, k)
        a0_7 = vfma(x0, w, a0_7); a1_7 = vfma(x1, w, a1_7); a2_7 = vfma(x2, w, a2_7)
    H[hr0 + 0, 0] = vsum(a0_0); H[hr0 + 0, 1] = vsum(a0_1); H[hr0 + 0, 2] = vsum(a0_2); H[hr0 + 0, 3] = vsum(a0_3)
    H[hr0 + 0, 4] = vsum(a0_4); H[hr0 + 0, 5] = vsum(a0_5); H[hr0 + 0, 6] = vsum(a0_6); H[hr0 + 0, 7] = vsum(a0_7)
    H[hr0 + 1, 0] = vsum(a1_0); H[hr0 + 1, 1] = vsum(a1_1); H[hr0 + 1, 2] = vsum(a1_2); H[hr0 + 1, 3] = vsum(a1_3)
    H[hr0 + 1, 4] = vsum(a1_4); H[hr0 + 1, 5] = vsum(a1_5); H[hr0 + 1, 6] = vsum(a1_6); H[hr0 + 1, 7] = vsum(a1_7)
    H[hr0 + 2, 0] = vsum(a2_0); H[hr0 + 2, 1] = vsum(a2_1); H[hr0 + 2, 2] = vsum(a2_2); H[hr0 + 2, 3] = vsum(a2_3)
    H[hr0 + 2, 4] = vsum(a2_4); H[hr0 + 2, 5] = vsum(a2_5); H[hr0 + 2, 6] = vsum(a2_6); H[hr0 + 2, 7] = vsum(a2_7)


@njit(**_JIT)
def _kAt_6x4(X, i0, WT, H, hr0, kv):
    """H[hr0+r, j] = X[i0+r, :kv] . WT[j, :kv] for r < 6, j < 4 (kv a multiple
    of L): 6x4 accumulators vectorised over k, summed across lanes at the end."""
    L = vlanes(WT)
    z = vzeros(WT)
    a0_0 = z; a0_1 = z; a0_2 = z; a0_3 = z
    a1_0 = z; a1_1 = z; a1_2 = z; a1_3 = z
    a2_0 = z; a2_1 = z; a2_2 = z; a2_3 = z
    a3_0 = z; a3_1 = z; a3_2 = z; a3_3 = z
    a4_0 = z; a4_1 = z; a4_2 = z; a4_3 = z
    a5_0 = z; a5_1 = z; a5_2 = z; a5_3 = z
    for k in range(0, kv, L):
        x0 = vload(X, i0 + 0, k); x1 = vload(X, i0 + 1, k); x2 = vload(X, i0 + 2, k); x3 = vload(X, i0 + 3, k); x4 = vload(X, i0 + 4, k); x5 = vload(X, i0 + 5, k)
        w = vload(WT, 0, k)
        a0_0 = vfma(x0, w, a0_0); a1_0 = vfma(x1, w, a1_0); a2_0 = vfma(x2, w, a2_0)
        a3_0 = vfma(x3, w, a3_0); a4_0 = vfma(x4, w, a4_0); a5_0 = vfma(x5, w, a5_0)
        w = vload(WT, 1, k)
        a0_1 = vfma(x0, w, a0_1); a1_1 = vfma(x1, w, a1_1); a2_1 = vfma(x2, w, a2_1)
        a3_1 = vfma(x3, w, a3_1); a4_1 = vfma(x4, w, a4_1); a5_1 = vfma(x5, w, a5_1)
        w = vload(WT, 2, k)
        a0_2 = vfma(x0, w, a0_2); a1_2 = vfma(x1, w, a1_2); a2_2 = vfma(x2, w, a2_2)
        a3_2 = vfma(x3, w, a3_2); a4_2 = vfma(x4, w, a4_2); a5_2 = vfma(x5, w, a5_2)
        w = vload(WT, 3, k)
        a0_3 = vfma(x0, w, a0_3); a1_3 = vfma(x1, w, a1_3); a2_3 = vfma(x2, w, a2_3)
        a3_3 = vfma(x3, w, a3_3); a4_3 = vfma(x4, w, a4_3); a5_3 = vfma(x5, w, a5_3)
    H[hr0 + 0, 0] = vsum(a0_0); H[hr0 + 0, 1] = vsum(a0_1); H[hr0 + 0, 2] = vsum(a0_2); H[hr0 + 0, 3] = vsum(a0_3)
    H[hr0 + 1, 0] = vsum(a1_0); H[hr0 + 1, 1] = vsum(a1_1); H[hr0 + 1, 2] = vsum(a1_2); H[hr0 + 1, 3] = vsum(a1_3)
    H[hr0 + 2, 0] = vsum(a2_0); H[hr0 + 2, 1] = vsum(a2_1); H[hr0 + 2, 2] = vsum(a2_2); H[hr0 + 2, 3] = vsum(a2_3)
    H[hr0 + 3, 0] = vsum(a3_0); H[hr0 + 3, 1] = vsum(a3_1); H[hr0 + 3, 2] = vsum(a3_2); H[hr0 + 3, 3] = vsum(a3_3)
    H[hr0 + 4, 0] = vsum(a4_0); H[hr0 + 4, 1] = vsum(a4_1); H[hr0 + 4, 2] = vsum(a4_2); H[hr0 + 4, 3] = vsum(a4_3)
    H[hr0 + 5, 0] = vsum(a5_0); H[hr0 + 5, 1] = vsum(a5_1); H[hr0 + 5, 2] = vsum(a5_2); H[hr0 + 5, 3] = vsum(a5_3)


@njit(**_JIT)
def _kAt_1x8(X, i0, WT, H, hr0, kv):
    """H[hr0+r, j] = X[i0+r, :kv] . WT[j, :kv] for r < 1, j < 8 (kv a multiple
    of L): 1x8 accumulators vectorised over k, summed across lanes at the end."""
    L = vlanes(WT)
    z = vzeros(WT)
    a0_0 = z; a0_1 = z; a0_2 = z; a0_3 = z; a0_4 = z; a0_5 = z; a0_6 = z; a0_7 = z
    for k in range(0, kv, L):
        x0 = vload(X, i0 + 0, k)
        w = vload(WT, 0, k)
        a0_0 = vfma(x0, w, a0_0)
        w = vload(WT, 1, k)
        a0_1 = vfma(x0, w, a0_1)
        w = vload(WT, 2, k)
        a0_2 = vfma(x0, w, a0_2)
        w = vload(WT, 3, k)
        a0_3 = vfma(x0, w, a0_3)
        w = vload(WT, 4, k)
        a0_4 = vfma(x0, w, a0_4)
        w = vload(WT, 5, k)
        a0_5 = vfma(x0, w, a0_5)
        w = vload(WT, 6, k)
        a0_6 = vfma(x0, w, a0_6)
        w = vload(WT, 7, k)
        a0_7 = vfma(x0, w, a0_7)
    H[hr0 + 0, 0] = vsum(a0_0); H[hr0 + 0, 1] = vsum(a0_1); H[hr0 + 0, 2] = vsum(a0_2); H[hr0 + 0, 3] = vsum(a0_3)
    H[hr0 + 0, 4] = vsum(a0_4); H[hr0 + 0, 5] = vsum(a0_5); H[hr0 + 0, 6] = vsum(a0_6); H[hr0 + 0, 7] = vsum(a0_7)


@njit(**_JIT)
def _kAt_1x4(X, i0, WT, H, hr0, kv):
    """H[hr0+r, j] = X[i0+r, :kv] . WT[j, :kv] for r < 1, j < 4 (kv a multiple
    of L): 1x4 accumulators vectorised over k, summed across lanes at the end."""
    L = vlanes(WT)
    z = vzeros(WT)
    a0_0 = z; a0_1 = z; a0_2 = z; a0_3 = z
    for k in range(0, kv, L):
        x0 = vload(X, i0 + 0, k)
        w = vload(WT, 0, k)
        a0_0 = vfma(x0, w, a0_0)
        w = vload(WT, 1, k)
        a0_1 = vfma(x0, w, a0_1)
        w = vload(WT, 2, k)
        a0_2 = vfma(x0, w, a0_2)
        w = vload(WT, 3, k)
        a0_3 = vfma(x0, w, a0_3)
    H[hr0 + 0, 0] = vsum(a0_0); H[hr0 + 0, 1] = vsum(a0_1); H[hr0 + 0, 2] = vsum(a0_2); H[hr0 + 0, 3] = vsum(a0_3)



@njit(**_JIT)
def _pass_At_rows(X, sb0, nr, WT, H):
    """H[r, j] = X[sb0 + r] . W[:, j] for r < nr, j < C = WT.shape[0] (L/2)."""
    d = X.shape[1]
    L = vlanes(WT)
    C = WT.shape[0]
    R = 3 if L == 16 else 6
    kv = d - d % L
    rend = nr - nr % R
    for r in range(0, rend, R):
        if L == 16:
            _kAt_3x8(X, sb0 + r, WT, H, r, kv)
        else:
            _kAt_6x4(X, sb0 + r, WT, H, r, kv)
    for r in range(rend, nr):
        if L == 16:
            _kAt_1x8(X, sb0 + r, WT, H, r, kv)
        else:
            _kAt_1x4(X, sb0 + r, WT, H, r, kv)
    if kv < d:
        for r in range(nr):
            for j in range(C):
                h = H[r, j]
                for k in range(kv, d):
                    h += X[sb0 + r, k] * WT[j, k]
                H[r, j] = h


@njit(**_JIT)
def _kBt_3x8(X, r0, nr, P, GT, k0):
    """GT[:8, k0:k0+3L] += X[r0:r0+nr, k0:k0+3L]^T-products with P[:nr, :8]:
    G^T tile of 3 k-vectors x 8 columns in registers over all nr rows."""
    L = vlanes(GT)
    g0_0 = vload(GT, 0, k0 + 0 * L); g0_1 = vload(GT, 1, k0 + 0 * L); g0_2 = vload(GT, 2, k0 + 0 * L); g0_3 = vload(GT, 3, k0 + 0 * L)
    g0_4 = vload(GT, 4, k0 + 0 * L); g0_5 = vload(GT, 5, k0 + 0 * L); g0_6 = vload(GT, 6, k0 + 0 * L); g0_7 = vload(GT, 7, k0 + 0 * L)
    g1_0 = vload(GT, 0, k0 + 1 * L); g1_1 = vload(GT, 1, k0 + 1 * L); g1_2 = vload(GT, 2, k0 + 1 * L); g1_3 = vload(GT, 3, k0 + 1 * L)
    g1_4 = vload(GT, 4, k0 + 1 * L); g1_5 = vload(GT, 5, k0 + 1 * L); g1_6 = vload(GT, 6, k0 + 1 * L); g1_7 = vload(GT, 7, k0 + 1 * L)
    g2_0 = vload(GT, 0, k0 + 2 * L); g2_1 = vload(GT, 1, k0 + 2 * L); g2_2 = vload(GT, 2, k0 + 2 * L); g2_3 = vload(GT, 3, k0 + 2 * L)
    g2_4 = vload(GT, 4, k0 + 2 * L); g2_5 = vload(GT, 5, k0 + 2 * L); g2_6 = vload(GT, 6, k0 + 2 * L); g2_7 = vload(GT, 7, k0 + 2 * L)
    for r in range(nr):
        i = r0 + r
        x0 = vload(X, i, k0 + 0 * L); x1 = vload(X, i, k0 + 1 * L); x2 = vload(X, i, k0 + 2 * L)
        vprefetch_l2(X, i + nr, k0 + 0 * L); vprefetch_l2(X, i + nr, k0 + 1 * L); vprefetch_l2(X, i + nr, k0 + 2 * L)
        p = vsplat1(P, r, 0)
        g0_0 = vfma(x0, p, g0_0); g1_0 = vfma(x1, p, g1_0); g2_0 = vfma(x2, p, g2_0)
        p = vsplat1(P, r, 1)
        g0_1 = vfma(x0, p, g0_1); g1_1 = vfma(x1, p, g1_1); g2_1 = vfma(x2, p, g2_1)
        p = vsplat1(P, r, 2)
        g0_2 = vfma(x0, p, g0_2); g1_2 = vfma(x1, p, g1_2); g2_2 = vfma(x2, p, g2_2)
        p = vsplat1(P, r, 3)
        g0_3 = vfma(x0, p, g0_3); g1_3 = vfma(x1, p, g1_3); g2_3 = vfma(x2, p, g2_3)
        p = vsplat1(P, r, 4)
        g0_4 = vfma(x0, p, g0_4); g1_4 = vfma(x1, p, g1_4); g2_4 = vfma(x2, p, g2_4)
        p = vsplat1(P, r, 5)
        g0_5 = vfma(x0, p, g0_5); g1_5 = vfma(x1, p, g1_5); g2_5 = vfma(x2, p, g2_5)
        p = vsplat1(P, r, 6)
        g0_6 = vfma(x0, p, g0_6); g1_6 = vfma(x1, p, g1_6); g2_6 = vfma(x2, p, g2_6)
        p = vsplat1(P, r, 7)
        g0_7 = vfma(x0, p, g0_7); g1_7 = vfma(x1, p, g1_7); g2_7 = vfma(x2, p, g2_7)
    vstore(GT, 0, k0 + 0 * L, g0_0); vstore(GT, 1, k0 + 0 * L, g0_1); vstore(GT, 2, k0 + 0 * L, g0_2); vstore(GT, 3, k0 + 0 * L, g0_3)
    vstore(GT, 4, k0 + 0 * L, g0_4); vstore(GT, 5, k0 + 0 * L, g0_5); vstore(GT, 6, k0 + 0 * L, g0_6); vstore(GT, 7, k0 + 0 * L, g0_7)
    vstore(GT, 0, k0 + 1 * L, g1_0); vstore(GT, 1, k0 + 1 * L, g1_1); vstore(GT, 2, k0 + 1 * L, g1_2); vstore(GT, 3, k0 + 1 * L, g1_3)
    vstore(GT, 4, k0 + 1 * L, g1_4); vstore(GT, 5, k0 + 1 * L, g1_5); vstore(GT, 6, k0 + 1 * L, g1_6); vstore(GT, 7, k0 + 1 * L, g1_7)
    vstore(GT, 0, k0 + 2 * L, g2_0); vstore(GT, 1, k0 + 2 * L, g2_1); vstore(GT, 2, k0 + 2 * L, g2_2); vstore(GT, 3, k0 + 2 * L, g2_3)
    vstore(GT, 4, k0 + 2 * L, g2_4); vstore(GT, 5, k0 + 2 * L, g2_5); vstore(GT, 6, k0 + 2 * L, g2_6); vstore(GT, 7, k0 + 2 * L, g2_7)


@njit(**_JIT)
def _kBt_6x4(X, r0, nr, P, GT, k0):
    """GT[:4, k0:k0+6L] += X[r0:r0+nr, k0:k0+6L]^T-products with P[:nr, :4]:
    G^T tile of 6 k-vectors x 4 columns in registers over all nr rows."""
    L = vlanes(GT)
    g0_0 = vload(GT, 0, k0 + 0 * L); g0_1 = vload(GT, 1, k0 + 0 * L); g0_2 = vload(GT, 2, k0 + 0 * L); g0_3 = vload(GT, 3, k0 + 0 * L)
    g1_0 = vload(GT, 0, k0 + 1 * L); g1_1 = vload(GT, 1, k0 + 1 * L); g1_2 = vload(GT, 2, k0 + 1 * L); g1_3 = vload(GT, 3, k0 + 1 * L)
    g2_0 = vload(GT, 0, k0 + 2 * L); g2_1 = vload(GT, 1, k0 + 2 * L); g2_2 = vload(GT, 2, k0 + 2 * L); g2_3 = vload(GT, 3, k0 + 2 * L)
    g3_0 = vload(GT, 0, k0 + 3 * L); g3_1 = vload(GT, 1, k0 + 3 * L); g3_2 = vload(GT, 2, k0 + 3 * L); g3_3 = vload(GT, 3, k0 + 3 * L)
    g4_0 = vload(GT, 0, k0 + 4 * L); g4_1 = vload(GT, 1, k0 + 4 * L); g4_2 = vload(GT, 2, k0 + 4 * L); g4_3 = vload(GT, 3, k0 + 4 * L)
    g5_0 = vload(GT, 0, k0 + 5 * L); g5_1 = vload(GT, 1, k0 + 5 * L); g5_2 = vload(GT, 2, k0 + 5 * L); g5_3 = vload(GT, 3, k0 + 5 * L)
    for r in range(nr):
        i = r0 + r
        x0 = vload(X, i, k0 + 0 * L); x1 = vload(X, i, k0 + 1 * L); x2 = vload(X, i, k0 + 2 * L); x3 = vload(X, i, k0 + 3 * L); x4 = vload(X, i, k0 + 4 * L); x5 = vload(X, i, k0 + 5 * L)
        vprefetch_l2(X, i + nr, k0 + 0 * L); vprefetch_l2(X, i + nr, k0 + 1 * L); vprefetch_l2(X, i + nr, k0 + 2 * L)
        vprefetch_l2(X, i + nr, k0 + 3 * L); vprefetch_l2(X, i + nr, k0 + 4 * L); vprefetch_l2(X, i + nr, k0 + 5 * L)
        p = vsplat1(P, r, 0)
        g0_0 = vfma(x0, p, g0_0); g1_0 = vfma(x1, p, g1_0); g2_0 = vfma(x2, p, g2_0)
        g3_0 = vfma(x3, p, g3_0); g4_0 = vfma(x4, p, g4_0); g5_0 = vfma(x5, p, g5_0)
        p = vsplat1(P, r, 1)
        g0_1 = vfma(x0, p, g0_1); g1_1 = vfma(x1, p, g1_1); g2_1 = vfma(x2, p, g2_1)
        g3_1 = vfma(x3, p, g3_1); g4_1 = vfma(x4, p, g4_1); g5_1 = vfma(x5, p, g5_1)
        p = vsplat1(P, r, 2)
        g0_2 = vfma(x0, p, g0_2); g1_2 = vfma(x1, p, g1_2); g2_2 = vfma(x2, p, g2_2)
        g3_2 = vfma(x3, p, g3_2); g4_2 = vfma(x4, p, g4_2); g5_2 = vfma(x5, p, g5_2)
        p = vsplat1(P, r, 3)
        g0_3 = vfma(x0, p, g0_3); g1_3 = vfma(x1, p, g1_3); g2_3 = vfma(x2, p, g2_3)
        g3_3 = vfma(x3, p, g3_3); g4_3 = vfma(x4, p, g4_3); g5_3 = vfma(x5, p, g5_3)
    vstore(GT, 0, k0 + 0 * L, g0_0); vstore(GT, 1, k0 + 0 * L, g0_1); vstore(GT, 2, k0 + 0 * L, g0_2); vstore(GT, 3, k0 + 0 * L, g0_3)
    vstore(GT, 0, k0 + 1 * L, g1_0); vstore(GT, 1, k0 + 1 * L, g1_1); vstore(GT, 2, k0 + 1 * L, g1_2); vstore(GT, 3, k0 + 1 * L, g1_3)
    vstore(GT, 0, k0 + 2 * L, g2_0); vstore(GT, 1, k0 + 2 * L, g2_1); vstore(GT, 2, k0 + 2 * L, g2_2); vstore(GT, 3, k0 + 2 * L, g2_3)
    vstore(GT, 0, k0 + 3 * L, g3_0); vstore(GT, 1, k0 + 3 * L, g3_1); vstore(GT, 2, k0 + 3 * L, g3_2); vstore(GT, 3, k0 + 3 * L, g3_3)
    vstore(GT, 0, k0 + 4 * L, g4_0); vstore(GT, 1, k0 + 4 * L, g4_1); vstore(GT, 2, k0 + 4 * L, g4_2); vstore(GT, 3, k0 + 4 * L, g4_3)
    vstore(GT, 0, k0 + 5 * L, g5_0); vstore(GT, 1, k0 + 5 * L, g5_1); vstore(GT, 2, k0 + 5 * L, g5_2); vstore(GT, 3, k0 + 5 * L, g5_3)


@njit(**_JIT)
def _kBt_1x8(X, r0, nr, P, GT, k0):
    """GT[:8, k0:k0+1L] += X[r0:r0+nr, k0:k0+1L]^T-products with P[:nr, :8]:
    G^T tile of 1 k-vectors x 8 columns in registers over all nr rows."""
    L = vlanes(GT)
    g0_0 = vload(GT, 0, k0 + 0 * L); g0_1 = vload(GT, 1, k0 + 0 * L); g0_2 = vload(GT, 2, k0 + 0 * L); g0_3 = vload(GT, 3, k0 + 0 * L)
    g0_4 = vload(GT, 4, k0 + 0 * L); g0_5 = vload(GT, 5, k0 + 0 * L); g0_6 = vload(GT, 6, k0 + 0 * L); g0_7 = vload(GT, 7, k0 + 0 * L)
    for r in range(nr):
        i = r0 + r
        x0 = vload(X, i, k0 + 0 * L)
        p = vsplat1(P, r, 0)
        g0_0 = vfma(x0, p, g0_0)
        p = vsplat1(P, r, 1)
        g0_1 = vfma(x0, p, g0_1)
        p = vsplat1(P, r, 2)
        g0_2 = vfma(x0, p, g0_2)
        p = vsplat1(P, r, 3)
        g0_3 = vfma(x0, p, g0_3)
        p = vsplat1(P, r, 4)
        g0_4 = vfma(x0, p, g0_4)
        p = vsplat1(P, r, 5)
        g0_5 = vfma(x0, p, g0_5)
        p = vsplat1(P, r, 6)
        g0_6 = vfma(x0, p, g0_6)
        p = vsplat1(P, r, 7)
        g0_7 = vfma(x0, p, g0_7)
    vstore(GT, 0, k0 + 0 * L, g0_0); vstore(GT, 1, k0 + 0 * L, g0_1); vstore(GT, 2, k0 + 0 * L, g0_2); vstore(GT, 3, k0 + 0 * L, g0_3)
    vstore(GT, 4, k0 + 0 * L, g0_4); vstore(GT, 5, k0 + 0 * L, g0_5); vstore(GT, 6, k0 + 0 * L, g0_6); vstore(GT, 7, k0 + 0 * L, g0_7)


@njit(**_JIT)
def _kBt_1x4(X, r0, nr, P, GT, k0):
    """GT[:4, k0:k0+1L] += X[r0:r0+nr, k0:k0+1L]^T-products with P[:nr, :4]:
    G^T tile of 1 k-vectors x 4 columns in registers over all nr rows."""
    L = vlanes(GT)
    g0_0 = vload(GT, 0, k0 + 0 * L); g0_1 = vload(GT, 1, k0 + 0 * L); g0_2 = vload(GT, 2, k0 + 0 * L); g0_3 = vload(GT, 3, k0 + 0 * L)
    for r in range(nr):
        i = r0 + r
        x0 = vload(X, i, k0 + 0 * L)
        p = vsplat1(P, r, 0)
        g0_0 = vfma(x0, p, g0_0)
        p = vsplat1(P, r, 1)
        g0_1 = vfma(x0, p, g0_1)
        p = vsplat1(P, r, 2)
        g0_2 = vfma(x0, p, g0_2)
        p = vsplat1(P, r, 3)
        g0_3 = vfma(x0, p, g0_3)
    vstore(GT, 0, k0 + 0 * L, g0_0); vstore(GT, 1, k0 + 0 * L, g0_1); vstore(GT, 2, k0 + 0 * L, g0_2); vstore(GT, 3, k0 + 0 * L, g0_3)



@njit(**_JIT)
def _pass_Bt_rows(X, sb0, nr, P, GT):
    """GT[:C] += (X[sb0:sb0+nr]^T @ P[:nr, :C])^T, C = GT.shape[0] = L/2:
    48-k register tiles, then single k-vectors, then scalar k."""
    d = X.shape[1]
    L = vlanes(GT)
    C = GT.shape[0]
    tile = 48
    kend = d - d % tile
    for k0 in range(0, kend, tile):
        if L == 16:
            _kBt_3x8(X, sb0, nr, P, GT, k0)
        else:
            _kBt_6x4(X, sb0, nr, P, GT, k0)
    vend = d - d % L
    for k0 in range(kend, vend, L):
        if L == 16:
            _kBt_1x8(X, sb0, nr, P, GT, k0)
        else:
            _kBt_1x4(X, sb0, nr, P, GT, k0)
    for k in range(vend, d):
        for r in range(nr):
            x = X[sb0 + r, k]
            for j in range(C):
                GT[j, k] += x * P[r, j]


# ==========================================================================
# Small helpers
# ==========================================================================
def _cast_like(x, like):
    """x converted to the float type of ``like`` (jit only)."""
    raise NotImplementedError


@overload(_cast_like, inline="always")
def _ov_cast_like(x, like):
    if like == types.float32:
        return lambda x, like: np.float32(x)
    if like == types.float64:
        return lambda x, like: np.float64(x)


@njit(cache=True, nogil=True, fastmath=_REDUCE_FM, error_model="numpy")
def _sum64(s, m):
    """float64 sum of s[:m] (never inlined: its flags allow reordering)."""
    acc = 0.0
    for j in range(m):
        acc += s[j]
    return acc


@njit(**_JIT)
def _fold(acc, part):
    """acc += part (float64 += working dtype); part = 0."""
    for i in range(part.shape[0]):
        for j in range(part.shape[1]):
            acc[i, j] += part[i, j]
            part[i, j] = 0


@njit(**_JIT)
def _fold_keep(acc, part):
    for i in range(part.shape[0]):
        for j in range(part.shape[1]):
            acc[i, j] += part[i, j]


# ==========================================================================
# Elementwise stages on one block of H = X_blk W (vectorised over columns)
# ==========================================================================
@njit(**_JIT)
def _s1_rows(H, nr, nrp, mcols, y, y0, a, b, m, act, kind, delta, offset, S):
    """Rows 0..nr-1 of H hold X W; on return they hold
    P = (c a^T) * sigma'(H + b), c = l'(f, y), f = sigma(H + b) a; columns
    m..mcols-1 and rows nr..nrp-1 are zeroed.  Returns the float64 loss sum."""
    lsum = 0.0
    for r in range(nr):
        Hr = H[r]
        if act == 0:
            for j in range(m):
                s, ds = _pair_logcosh(Hr[j] + b[j])
                S[j] = a[j] * s
                Hr[j] = ds
        elif act == 1:
            for j in range(m):
                s, ds = _pair_quadratic(Hr[j] + b[j])
                S[j] = a[j] * s
                Hr[j] = ds
        else:
            for j in range(m):
                s, ds = _pair_relu(Hr[j] + b[j])
                S[j] = a[j] * s
                Hr[j] = ds
        f = _cast_like(_sum64(S, m), a[0])
        c, v = _loss_pair(f, y[y0 + r], kind, delta, offset)
        lsum += v
        for j in range(m):
            Hr[j] = (c * a[j]) * Hr[j]
        for j in range(m, mcols):
            Hr[j] = 0
    for r in range(nr, nrp):
        for j in range(mcols):
            H[r, j] = 0
    return lsum


@njit(**_JIT)
def _s1_rows_narrow(H, nr, y, y0, aL, bL, act, kind, delta, offset, SA):
    """_s1_rows for the narrow layout: H is (rows, L) with the m <= L/2 used
    columns first and zeros after, aL / bL are a / b zero-padded to L.  The
    elementwise loop runs over all L columns of every row, a fixed trip count
    that LLVM vectorises (per-row loops over m columns did not: 86 -> 42 ns per
    row at m = 8); padded columns hold 0 and give 0 (a = b = 0, sigma(0) = 0)."""
    C = vlanes(H) // 2
    for r in range(nr):
        Hr = H[r]
        Sr = SA[r]
        if act == 0:
            for j in range(vlanes(H)):
                s, ds = _pair_logcosh(Hr[j] + bL[j])
                Sr[j] = aL[j] * s
                Hr[j] = ds
        elif act == 1:
            for j in range(vlanes(H)):
                s, ds = _pair_quadratic(Hr[j] + bL[j])
                Sr[j] = aL[j] * s
                Hr[j] = ds
        else:
            for j in range(vlanes(H)):
                s, ds = _pair_relu(Hr[j] + bL[j])
                Sr[j] = aL[j] * s
                Hr[j] = ds
    lsum = 0.0
    for r in range(nr):
        f = _cast_like(_sum64(SA[r], C), aL[0])
        c, v = _loss_pair(f, y[y0 + r], kind, delta, offset)
        lsum += v
        for j in range(C):   # only the used half: the padding must stay exactly 0
            H[r, j] = (c * aL[j]) * H[r, j]
    return lsum


@njit(**_JIT)
def _act_rows(H, nr, b, m, act):
    """H[r, j] <- sigma(H[r, j] + b[j]) for rows r < nr, columns j < m."""
    for r in range(nr):
        Hr = H[r]
        if act == 0:
            for j in range(m):
                Hr[j] = _pair_logcosh(Hr[j] + b[j])[0]
        elif act == 1:
            for j in range(m):
                Hr[j] = _pair_quadratic(Hr[j] + b[j])[0]
        else:
            for j in range(m):
                Hr[j] = _pair_relu(Hr[j] + b[j])[0]


@njit(**_JIT)
def _s2_rows(H, nr, nrp, mcols, y, y0, b, m, act, Fy):
    """H -> F = sigma(H + b) in place (pad columns/rows zeroed); Fy += F^T y."""
    _act_rows(H, nr, b, m, act)
    for r in range(nr):
        Hr = H[r]
        yr = np.float64(y[y0 + r])
        for j in range(m):
            Fy[j] += np.float64(Hr[j]) * yr
        for j in range(m, mcols):
            Hr[j] = 0
    for r in range(nr, nrp):
        for j in range(mcols):
            H[r, j] = 0


@njit(cache=True, nogil=True, fastmath=_REDUCE_FM, error_model="numpy")
def _dot64(u, v, m):
    """float64 sum of u[:m] * v[:m] (never inlined: its flags allow reordering)."""
    acc = 0.0
    for j in range(m):
        acc += np.float64(u[j]) * np.float64(v[j])
    return acc


@njit(**_JIT)
def _pred_rows(H, nr, out, o0, a, b, m, act):
    """out[o0 + r] = sigma(H[r] + b) . a  (H is overwritten by sigma)."""
    _act_rows(H, nr, b, m, act)
    for r in range(nr):
        out[o0 + r] = _cast_like(_dot64(H[r], a, m), a[0])


# ==========================================================================
# "loops" path: one thread's rows [r0, r1), super-blocks of SB rows (in L2),
# register tiles of _ROWS rows; a partial last tile is zero-padded in Xt.
# ==========================================================================
@njit(**_JIT)
def _pass_A(X, Xt, sb0, ng, rem, Wp, H, last1):
    """H[:ng*R (+R)] = X[sb0:...] @ W for all column panels; tile ``ng`` (if
    ``rem``) is read from the zero-padded copy Xt of the last rows."""
    R = _ROWS
    npan = Wp.shape[0] // X.shape[1]
    ntile = ng + (1 if rem > 0 else 0)
    for q in range(npan):
        one = last1 and q == npan - 1
        for g in range(ntile):
            src = X if g < ng else Xt
            i0 = sb0 + g * R if g < ng else 0
            if one:
                _kA_12x1(src, i0, Wp, q, H, g * R)
            else:
                _kA_12x2(src, i0, Wp, q, H, g * R)


@njit(**_JIT)
def _pass_B(X, Xt, sb0, ng, rem, P, Gp, last1, diag):
    """G-panels += X[sb0:...]^T @ P for all column panels (rows k >= q*NB
    only when ``diag``: the block-lower half of a symmetric product)."""
    R = _ROWS
    NB = Gp.shape[1]
    npan = Gp.shape[0] // X.shape[1]
    ntile = ng + (1 if rem > 0 else 0)
    for q in range(npan):
        one = last1 and q == npan - 1
        k0 = q * NB if diag else 0
        for g in range(ntile):
            src = X if g < ng else Xt
            i0 = sb0 + g * R if g < ng else 0
            if one:
                _kB_12x1(src, i0, P, g * R, Gp, q, k0)
            else:
                _kB_12x2(src, i0, P, g * R, Gp, q, k0)


@njit(**_JIT)
def _load_tail(X, Xt, row0, rem):
    for r in range(rem):
        for k in range(X.shape[1]):
            Xt[r, k] = X[row0 + r, k]
    for r in range(rem, Xt.shape[0]):
        for k in range(X.shape[1]):
            Xt[r, k] = 0


@njit(**_JIT)
def _loops_layout(d, Wk, ks):
    """(npan, NB, mcols, L) of the packed weights: ``ks`` = 2 for the narrow
    layout (W^T, (L/2, d); H gets one L-wide block), else column panels
    (npan*d, NB)."""
    L = vlanes(Wk)
    if ks == 2:
        return 1, L, L, L
    NB = Wk.shape[1]
    npan = Wk.shape[0] // d
    return npan, NB, npan * NB, L


@njit(**_JIT)
def _s1_loops_chunk(X, y, Wp, a, b, m, act, kind, delta, offset, r0, r1, SB, Gacc, ks):
    R = _ROWS
    d = X.shape[1]
    npan, NB, mcols, L = _loops_layout(d, Wp, ks)
    last1 = m - (npan - 1) * NB <= L
    # narrow layout: H is zeroed once, kernel A writes only its L/2 columns and
    # _s1_rows_narrow keeps the rest at 0; aL / bL are a / b zero-padded to L
    H = np.zeros((SB, mcols), X.dtype)
    SA = np.zeros((SB if ks == 2 else 1, mcols), X.dtype)
    aL = np.zeros(mcols, X.dtype)
    bL = np.zeros(mcols, X.dtype)
    aL[:m] = a
    bL[:m] = b
    Xt = np.zeros((R, d), X.dtype)
    Gp = np.zeros(Gacc.shape, X.dtype)
    S = np.empty(m, X.dtype)
    lsum = 0.0
    since = 0
    for sb0 in range(r0, r1, SB):
        nr = min(SB, r1 - sb0)
        ng = nr // R
        rem = nr - ng * R
        nrp = ng * R + (R if rem > 0 else 0)
        if rem > 0:
            _load_tail(X, Xt, sb0 + ng * R, rem)
        if ks == 2:
            _pass_At_rows(X, sb0, nr, Wp, H)
            lsum += _s1_rows_narrow(H, nr, y, sb0, aL, bL, act, kind, delta, offset, SA)
            _pass_Bt_rows(X, sb0, nr, H, Gp)
        else:
            _pass_A(X, Xt, sb0, ng, rem, Wp, H, last1)
            lsum += _s1_rows(H, nr, nrp, mcols, y, sb0, a, b, m, act, kind, delta, offset, S)
            _pass_B_rows(X, sb0, nr, H, Gp, last1)
        since += nr
        if since >= _FLUSH_ROWS:
            _fold(Gacc, Gp)
            since = 0
    if since > 0:
        _fold(Gacc, Gp)
    return lsum


@njit(**_JIT)
def _s2_loops_chunk(X, y, Wp, b, m, act, r0, r1, SB, Gacc, Fy, ks):
    R = _ROWS
    d = X.shape[1]
    npan, NB, mcols, L = _loops_layout(d, Wp, ks)
    last1 = m - (npan - 1) * NB <= L
    H = np.empty((SB, mcols), X.dtype)
    Xt = np.zeros((R, d), X.dtype)
    Gp = np.zeros(Gacc.shape, X.dtype)          # (npan * mcols, NB)
    since = 0
    for sb0 in range(r0, r1, SB):
        nr = min(SB, r1 - sb0)
        ng = nr // R
        rem = nr - ng * R
        nrp = ng * R + (R if rem > 0 else 0)
        if rem > 0:
            _load_tail(X, Xt, sb0 + ng * R, rem)
        if ks == 2:
            _pass_At_rows(X, sb0, nr, Wp, H)
        else:
            _pass_A(X, Xt, sb0, ng, rem, Wp, H, last1)
        _s2_rows(H, nr, nrp, mcols, y, sb0, b, m, act, Fy)
        # F^T F: "X" is the F block itself (rows already padded with zeros)
        _pass_B(H, H, 0, nrp // R, 0, H, Gp, last1, True)
        since += nr
        if since >= _FLUSH_ROWS:
            _fold(Gacc, Gp)
            since = 0
    if since > 0:
        _fold(Gacc, Gp)


@njit(**_JIT)
def _pred_loops_chunk(X, Wp, a, b, m, act, r0, r1, SB, out, ks):
    R = _ROWS
    d = X.shape[1]
    npan, NB, mcols, L = _loops_layout(d, Wp, ks)
    last1 = m - (npan - 1) * NB <= L
    H = np.empty((SB, mcols), X.dtype)
    Xt = np.zeros((R, d), X.dtype)
    for sb0 in range(r0, r1, SB):
        nr = min(SB, r1 - sb0)
        ng = nr // R
        rem = nr - ng * R
        if rem > 0:
            _load_tail(X, Xt, sb0 + ng * R, rem)
        if ks == 2:
            _pass_At_rows(X, sb0, nr, Wp, H)
        else:
            _pass_A(X, Xt, sb0, ng, rem, Wp, H, last1)
        _pred_rows(H, nr, out, sb0, a, b, m, act)


# ==========================================================================
# "gemm" path: per row block, single-threaded BLAS on the cached block
# ==========================================================================
@njit(**_JIT)
def _s1_gemm_chunk(X, y, W, a, b, m, act, kind, delta, offset, r0, r1, RB, Gacc):
    d = X.shape[1]
    H = np.empty((RB, m), X.dtype)
    T = np.empty((d, m), X.dtype)
    S = np.empty(m, X.dtype)
    lsum = 0.0
    for b0 in range(r0, r1, RB):
        nb = min(RB, r1 - b0)
        Xb = X[b0:b0 + nb]
        Hb = H[:nb]
        np.dot(Xb, W, Hb)
        lsum += _s1_rows(Hb, nb, nb, m, y, b0, a, b, m, act, kind, delta, offset, S)
        np.dot(Xb.T, Hb, T)
        _fold_keep(Gacc, T)
    return lsum


@njit(**_JIT)
def _s2_gemm_chunk(X, y, W, b, m, act, r0, r1, RB, Gacc, Fy):
    H = np.empty((RB, m), X.dtype)
    T = np.empty((m, m), X.dtype)
    for b0 in range(r0, r1, RB):
        nb = min(RB, r1 - b0)
        Hb = H[:nb]
        np.dot(X[b0:b0 + nb], W, Hb)
        _s2_rows(Hb, nb, nb, m, y, b0, b, m, act, Fy)
        np.dot(Hb.T, Hb, T)
        _fold_keep(Gacc, T)


@njit(**_JIT)
def _pred_gemm_chunk(X, W, a, b, m, act, r0, r1, RB, out):
    H = np.empty((RB, m), X.dtype)
    for b0 in range(r0, r1, RB):
        nb = min(RB, r1 - b0)
        Hb = H[:nb]
        np.dot(X[b0:b0 + nb], W, Hb)
        _pred_rows(Hb, nb, out, b0, a, b, m, act)


# ==========================================================================
# Drivers.  The serial variant is a chunk routine called on all rows; the
# parallel variant runs the same chunk routines under one prange over the
# threads: thread t owns rows [bounds[t], bounds[t+1]) and accumulator slices
# Gacc[t], Fy[t] (never a shared slot); the caller reduces them serially.
# One parallel driver serves the three kernels (``job``): one parfor to compile.
# ==========================================================================
_JOB_STAGE1, _JOB_STAGE2, _JOB_PREDICT = 0, 1, 2


@njit(parallel=True, **_JIT)
def _run_parallel(job, X, y, Wk, a, b, m, act, kind, delta, offset, bounds, blk, mode,
                  Gacc, Fy, out):
    """mode: 0 loops (column panels), 1 gemm, 2 loops with the narrow (transposed) layout."""
    T = bounds.shape[0] - 1
    res = np.zeros(T)
    gemm = mode == 1
    ks = 2 if mode == 2 else 1
    for t in prange(T):
        r0 = bounds[t]
        r1 = bounds[t + 1]
        if job == _JOB_STAGE1:
            if gemm:
                res[t] = _s1_gemm_chunk(X, y, Wk, a, b, m, act, kind, delta, offset,
                                        r0, r1, blk, Gacc[t])
            else:
                res[t] = _s1_loops_chunk(X, y, Wk, a, b, m, act, kind, delta, offset,
                                         r0, r1, blk, Gacc[t], ks)
        elif job == _JOB_STAGE2:
            if gemm:
                _s2_gemm_chunk(X, y, Wk, b, m, act, r0, r1, blk, Gacc[t], Fy[t])
            else:
                _s2_loops_chunk(X, y, Wk, b, m, act, r0, r1, blk, Gacc[t], Fy[t], ks)
        else:
            if gemm:
                _pred_gemm_chunk(X, Wk, a, b, m, act, r0, r1, blk, out)
            else:
                _pred_loops_chunk(X, Wk, a, b, m, act, r0, r1, blk, out, ks)
    return res


def _run_serial(job, X, y, Wk, a, b, m, act, kind, delta, offset, bounds, blk, mode,
                Gacc, Fy, out):
    """The serial variant (plain Python dispatch to one chunk over all rows)."""
    r0, r1 = int(bounds[0]), int(bounds[-1])
    ks = 2 if mode == 2 else 1
    if job == _JOB_STAGE1:
        if mode == 1:
            return np.array([_s1_gemm_chunk(X, y, Wk, a, b, m, act, kind, delta, offset,
                                            r0, r1, blk, Gacc[0])])
        return np.array([_s1_loops_chunk(X, y, Wk, a, b, m, act, kind, delta, offset,
                                         r0, r1, blk, Gacc[0], ks)])
    if job == _JOB_STAGE2:
        if mode == 1:
            _s2_gemm_chunk(X, y, Wk, b, m, act, r0, r1, blk, Gacc[0], Fy[0])
        else:
            _s2_loops_chunk(X, y, Wk, b, m, act, r0, r1, blk, Gacc[0], Fy[0], ks)
    elif mode == 1:
        _pred_gemm_chunk(X, Wk, a, b, m, act, r0, r1, blk, out)
    else:
        _pred_loops_chunk(X, Wk, a, b, m, act, r0, r1, blk, out, ks)
    return np.zeros(1)


# ==========================================================================
# Python API
# ==========================================================================
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
_LOSS_CODE = {name: i for i, name in enumerate(LOSS_KINDS)}
_PATHS = ("loops", "gemm")


def _act_code(name):
    try:
        return _ACT_CODE[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation: unknown name {name!r}; choose one of {ACTIVATIONS}") from None


def _loss_code(kind):
    try:
        return _LOSS_CODE[kind]
    except (KeyError, TypeError):
        raise ValueError(f"loss: unknown kind {kind!r}; choose one of {LOSS_KINDS}") from None


def _as_float_arrays(X, *others):
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        raise TypeError(f"X must be float32 or float64, got {X.dtype}")
    X = np.ascontiguousarray(X)
    return (X,) + tuple(np.ascontiguousarray(o, dtype=X.dtype) for o in others)


def _lanes_of(dtype):
    return 64 // np.dtype(dtype).itemsize


def choose_path(m, d=None, dtype=np.float32):
    """The path the kernels use by default for width ``m``: the register-tile
    "loops" kernels up to ``GEMM_MIN_WIDTH`` columns, per-block BLAS above.

    For wide *and* tall problems (d >= ``BLAS_MIN_D`` with m >= 256) the per-block
    GEMMs get too few rows to reach sgemm speed (a cache-sized block of d = 8192
    rows is ~48 rows) and the register tiles reload a 1 MiB weight panel per 12
    rows: at d = 8192 "loops" / "gemm" / "blas" measured 1092 / 1270 / 845 ms
    (m = 512) but 261 / 324 / 266 ms (m = 128).  There stage 1 uses two
    whole-matrix, multi-threaded BLAS products ("blas": two reads of X, but at
    sgemm rate) -- it is then numpy's own speed, never slower.  From d = 8192
    that holds from m = 128 (n = 16384: loops 455 / blas 420 ms; n = 36000:
    978 / 962 ms; at d = 4096 loops still wins, 387 / 420 ms)."""
    if d is not None and d >= BLAS_MIN_D and (m >= 256 or (m >= 128 and d >= 2 * BLAS_MIN_D)):
        return "blas"
    return "loops" if m < GEMM_MIN_WIDTH else "gemm"


#: input dimension from which wide stage-1 problems use whole-matrix BLAS
BLAS_MIN_D = 4096


def _stage1_blas(X, y, W, a, b, loss, delta, offset, activation_name, parallel):
    from threadpoolctl import threadpool_limits

    from . import reference
    threads = numba.get_num_threads() if parallel else 1
    with threadpool_limits(threads, user_api="blas"):
        return reference.stage1_grad(X, y, W, a, b, loss, delta, offset, activation_name)


#: width from which per-block BLAS ("gemm") is the default (measured on the
#: development machine, see benchmarks/cpu_kernels_report.py)
GEMM_MIN_WIDTH = 256


def _resolve_path(path, m, d, dtype, stage1=False):
    if path is None:
        p = choose_path(m, d, dtype)
        # only stage 1 has a whole-matrix BLAS variant; the others stay fused
        return p if (stage1 or p != "blas") else ("loops" if m < GEMM_MIN_WIDTH else "gemm")
    if path == "blas" and stage1:
        return path
    if path not in _PATHS:
        raise ValueError(f"path: unknown {path!r}; choose None or one of {_PATHS}")
    return path


#: multiply-adds below which one more thread does not pay for waking it
_MIN_WORK_PER_THREAD = 1 << 22


def _thread_bounds(n, work, parallel):
    """Row bounds of the per-thread chunks (multiples of the tile height):
    Numba's current thread count, fewer for small problems."""
    T = numba.get_num_threads() if parallel else 1
    T = max(1, min(T, n // (4 * _ROWS), work // _MIN_WORK_PER_THREAD))
    cuts = [min(n, ((t * n) // T) // _ROWS * _ROWS) for t in range(T)] + [n]
    return np.asarray(cuts, dtype=np.int64)


def _superblock_rows(d, itemsize):
    rows = _L2_BYTES // max(1, d * itemsize)
    return int(min(32, max(1, rows // _ROWS)) * _ROWS)


def _narrow_superblock_rows(d, itemsize):
    # Stage 1 at narrow widths: kernel B runs from cache at the FMA rate and
    # prefetches the next super-block into L2 meanwhile (kernel A, which reads X
    # from memory first, was the slow half).  So two super-blocks plus W^T and
    # G^T (L/2 x d each: 32 d bytes in either dtype) should share the L2 -- but
    # kernel B also loads and stores all of G^T once per super-block, so below
    # 48 rows that traffic costs more than the spill (one thread, m = 8:
    # d = 8192 28.6 ms at 12 rows, 24.9 ms at 48; d = 4096 29.0 / 24.3 ms).
    free = (cache_bytes(2) or 1 << 20) - 2 * 32 * d
    rows = max(0, free) // 2 // max(1, d * itemsize)
    return int(min(32, max(4, rows // _ROWS)) * _ROWS)


def _gemm_block_rows(d, m, itemsize):
    # a few MiB of X per block: large enough for efficient BLAS calls, small
    # enough to stay in the last-level cache between the two products
    rows = (4 << 20) // max(1, d * itemsize)
    return int(min(1024, max(64, rows)))


def _pack_panels(W):
    """W (d, m) -> column panels as a (npan*d, NB) array, zero padded."""
    d, m = W.shape
    L = _lanes_of(W.dtype)
    NB = L if m <= L else 2 * L
    npan = -(-m // NB)
    Wp = np.zeros((npan, d, NB), dtype=W.dtype)
    for q in range(npan):
        w = min(NB, m - q * NB)
        Wp[q, :, :w] = W[:, q * NB:q * NB + w]
    return Wp.reshape(npan * d, NB), NB, npan


_MODE_LOOPS, _MODE_GEMM, _MODE_S2 = 0, 1, 2


def _loops_weights(W):
    """Packed weights and mode for the "loops" path."""
    m = W.shape[1]
    if m <= _lanes_of(W.dtype) // 2:
        WT = np.zeros((_lanes_of(W.dtype) // 2, W.shape[0]), dtype=W.dtype)
        WT[:m] = W.T
        return WT, _MODE_S2
    return _pack_panels(W)[0], _MODE_LOOPS


_TPC = None


def blas_threads(limit=1):
    """Context manager limiting every loaded BLAS (numpy's and the SciPy BLAS
    that Numba's ``np.dot`` calls) to ``limit`` threads (threadpoolctl)."""
    global _TPC
    if _TPC is None:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS numba uses)
        from threadpoolctl import ThreadpoolController
        _TPC = ThreadpoolController()
    return _TPC.limit(limits=limit, user_api="blas")


def _run(parallel, job, X, y, Wk, a, b, m, act, kind, delta, offset, bounds, blk,
         mode, Gacc, Fy, out):
    # one chunk: the serial variant (a one-iteration prange still wakes the pool)
    drv = _run_parallel if parallel and bounds.shape[0] > 2 else _run_serial
    ft = X.dtype.type
    args = (job, X, y, Wk, a, b, m, act, kind, ft(delta), ft(offset), bounds, blk,
            mode, Gacc, Fy, out)
    if mode == _MODE_GEMM:
        with blas_threads(1):   # each Numba thread calls BLAS on its own block
            return drv(*args)
    return drv(*args)


def stage1_grad(X, y, W, a, b, loss="square", delta=1.0, offset=0.0,
                activation_name="logcosh", *, path=None, parallel=True):
    """First-layer gradient of the mean training loss and the mean loss.

    Same contract as ``reference.stage1_grad``: returns ``(G, mean_loss)`` with
    G = X^T [(l'(f, y) a^T) * sigma'(XW + b)] / n in X's dtype, computed in one
    pass over X.  ``path``: None (by width, see ``choose_path``), "loops" or
    "gemm"; ``parallel=False`` runs the serial variant, else Numba's current
    thread count is used (scope it with ``numba.set_num_threads``).
    """
    act = _act_code(activation_name)
    kind = _loss_code(loss)
    X, y, W, a, b = _as_float_arrays(X, y, W, a, b)
    n, d = X.shape
    m = W.shape[1]
    if m == 0:   # f = 0: the loss still counts; one idle column (a = 0) gives it
        G, mean_loss = stage1_grad(X, y, np.zeros((d, 1), X.dtype), np.zeros(1, X.dtype),
                                   np.zeros(1, X.dtype), loss, delta, offset, activation_name,
                                   path=path, parallel=parallel)
        return G[:, :0], mean_loss
    p = _resolve_path(path, m, d, X.dtype, stage1=True)
    if p == "blas":
        return _stage1_blas(X, y, W, a, b, loss, delta, offset, activation_name, parallel)
    bounds = _thread_bounds(n, n * d * m, parallel)
    T = bounds.shape[0] - 1
    Fy = np.zeros((T, 1))
    out = np.empty(0, dtype=X.dtype)
    if p == "loops":
        Wk, mode = _loops_weights(W)
        if mode == _MODE_S2:      # narrow: G^T accumulated, see _pass_Bt_rows
            Gacc = np.zeros((T, _lanes_of(X.dtype) // 2, d))
        else:
            Gacc = np.zeros((T,) + Wk.shape)
        sb = (_narrow_superblock_rows if mode == _MODE_S2 else _superblock_rows)(d, X.itemsize)
        ls = _run(parallel, _JOB_STAGE1, X, y, Wk, a, b, m, act, kind, delta, offset,
                  bounds, sb, mode, Gacc, Fy, out)
        Gs = Gacc.sum(axis=0)
        if mode == _MODE_S2:
            G = Gs[:m].T
        else:
            NB = Wk.shape[1]
            npan = Wk.shape[0] // d
            G = Gs.reshape(npan, d, NB).transpose(1, 0, 2).reshape(d, npan * NB)[:, :m]
    else:
        Gacc = np.zeros((T, d, m))
        ls = _run(parallel, _JOB_STAGE1, X, y, W, a, b, m, act, kind, delta, offset,
                  bounds, _gemm_block_rows(d, m, X.itemsize), _MODE_GEMM, Gacc, Fy, out)
        G = Gacc.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        G = (G / n).astype(X.dtype)
        mean_loss = float(np.sum(ls) / n) if n else float("nan")
    return G, mean_loss


def stage2_gram(X, y, W, b, activation_name="logcosh", *, path=None, parallel=True):
    """Feature Gram and moment (F^T F / n, F^T y / n) for F = sigma(XW + b),
    accumulated block by block (F is never materialised for all rows).
    ``path`` and ``parallel`` as in ``stage1_grad``."""
    act = _act_code(activation_name)
    X, y, W, b = _as_float_arrays(X, y, W, b)
    n, d = X.shape
    m = W.shape[1]
    if m == 0:
        return np.zeros((0, 0), X.dtype), np.zeros(0, X.dtype)
    p = _resolve_path(path, m, d, X.dtype)
    bounds = _thread_bounds(n, n * d * m, parallel)
    T = bounds.shape[0] - 1
    Fy = np.zeros((T, m))
    out = np.empty(0, dtype=X.dtype)
    if p == "loops":
        Wk, mode = _loops_weights(W)
        if mode == _MODE_S2:
            npan, NB = 1, _lanes_of(X.dtype)
        else:
            npan, NB = Wk.shape[0] // d, Wk.shape[1]
        mcols = npan * NB
        Gacc = np.zeros((T, npan * mcols, NB))
        _run(parallel, _JOB_STAGE2, X, y, Wk, b, b, m, act, 0, 1.0, 0.0,
             bounds, _superblock_rows(d, X.itemsize), mode, Gacc, Fy, out)
        M = Gacc.sum(axis=0).reshape(npan, mcols, NB).transpose(1, 0, 2).reshape(mcols, mcols)
        # only the block-lower half (row k >= first row of column j's panel) was formed
        kk = np.arange(mcols)[:, None]
        jj0 = (np.arange(mcols) // NB * NB)[None, :]
        M = np.where(kk >= jj0, M, M.T)[:m, :m]
    else:
        Gacc = np.zeros((T, m, m))
        _run(parallel, _JOB_STAGE2, X, y, W, b, b, m, act, 0, 1.0, 0.0,
             bounds, _gemm_block_rows(d, m, X.itemsize), _MODE_GEMM, Gacc, Fy, out)
        M = Gacc.sum(axis=0)
        M = np.triu(M) + np.triu(M, 1).T            # exactly symmetric
    with np.errstate(invalid="ignore", divide="ignore"):
        return (M / n).astype(X.dtype), (Fy.sum(axis=0) / n).astype(X.dtype)


def predict(X, W, a, b, activation_name="logcosh", *, path=None, parallel=True):
    """f(X) = sigma(XW + b) a, shape (n,).  ``path``/``parallel`` as above."""
    act = _act_code(activation_name)
    X, W, a, b = _as_float_arrays(X, W, a, b)
    n, d = X.shape
    m = W.shape[1]
    if m == 0:
        return np.zeros(n, X.dtype)
    p = _resolve_path(path, m, d, X.dtype)
    bounds = _thread_bounds(n, n * d * m, parallel)
    T = bounds.shape[0] - 1
    out = np.empty(n, dtype=X.dtype)
    y = np.empty(0, dtype=X.dtype)
    Gacc = np.zeros((T, 1, 1))
    Fy = np.zeros((T, 1))
    if p == "loops":
        Wk, mode = _loops_weights(W)
        _run(parallel, _JOB_PREDICT, X, y, Wk, a, b, m, act, 0, 1.0, 0.0,
             bounds, _superblock_rows(d, X.itemsize), mode, Gacc, Fy, out)
    else:
        _run(parallel, _JOB_PREDICT, X, y, W, a, b, m, act, 0, 1.0, 0.0,
             bounds, _gemm_block_rows(d, m, X.itemsize), _MODE_GEMM, Gacc, Fy, out)
    return out


# --------------------------------------------------------------------------
# the empirical label-weighted second moment (not hot: numpy BLAS)
# --------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=_REDUCE_FM, error_model="numpy")
def _matvec_rows(X, c, v, r0, r1, acc):
    """acc += sum_{r0 <= i < r1} c_i (x_i . v) x_i: each row is read from memory
    once and reused from cache (BLAS gemv + gemv reads X twice)."""
    d = X.shape[1]
    part = np.zeros(d, X.dtype)     # working dtype, folded into float64 (as _FLUSH_ROWS)
    since = 0
    for i in range(r0, r1):
        s = X[i, 0] * v[0] - X[i, 0] * v[0]       # a zero of X's dtype
        for k in range(d):
            s += X[i, k] * v[k]
        w = c[i] * s
        for k in range(d):
            part[k] += w * X[i, k]
        since += 1
        if since == _FLUSH_ROWS or i == r1 - 1:
            for k in range(d):
                acc[k] += part[k]
                part[k] = 0
            since = 0


@njit(parallel=True, cache=True, nogil=True, fastmath=_REDUCE_FM, error_model="numpy")
def _matvec_parallel(X, c, v, bounds, acc):
    for t in prange(bounds.shape[0] - 1):
        _matvec_rows(X, c, v, bounds[t], bounds[t + 1], acc[t])


def sigma_matvec(X, c, V, *, parallel=True):
    """Sigma_l V = X^T (c * (X V)) / n without forming Sigma_l; V is (d,) or (d, k).

    A vector V takes one fused pass over X (per-thread float64 accumulators);
    a block V (d, k) uses two BLAS products."""
    X, c, V = _as_float_arrays(X, c, V)
    n = X.shape[0]
    if V.ndim == 1 and n > 0:
        bounds = _thread_bounds(n, n * X.shape[1], parallel)
        acc = np.zeros((bounds.shape[0] - 1, X.shape[1]))
        if bounds.shape[0] > 2:
            _matvec_parallel(X, c, V, bounds, acc)
        else:
            _matvec_rows(X, c, V, 0, n, acc[0])
        return (acc.sum(axis=0) / n).astype(X.dtype)
    XV = X @ V
    if XV.ndim == 1:
        XV *= c
    else:
        XV *= c[:, None]
    return (X.T @ XV) / X.dtype.type(n)


def sigma_matrix(X, c, *, block_rows=8192):
    """Sigma_l = X^T diag(c) X / n, the (d, d) matrix of the spectral baseline
    (row blocks: the scaled copy of X never exceeds ``block_rows`` rows)."""
    X, c = _as_float_arrays(X, c)
    n, d = X.shape
    S = np.zeros((d, d), dtype=X.dtype)
    for i0 in range(0, n, block_rows):
        Xb = X[i0:i0 + block_rows]
        S += Xb.T @ (c[i0:i0 + block_rows, None] * Xb)
    return S / X.dtype.type(n)
