"""The CUDA C sources of mimfast.kernels: compile checks and a CPU emulation run.

* every ``kernels/cuda/*.cu`` compiles with nvcc for sm_90 and sm_80 with warnings as
  errors (skipped when nvcc is absent);
* the exact RawModule specs of ``kernels/gpu.py`` compile with NVRTC (cupy's compiler
  front-end, arch given explicitly) when an NVRTC library is loadable, and the PTX
  assembles with ptxas (skipped otherwise);
* the kernels *run* on the CPU: the .cu files are compiled as C++ with g++ against a small
  emulation of the CUDA execution model (one std::thread per CUDA thread, std::barrier for
  __syncthreads, warp shuffles through a per-warp exchange buffer, dynamic shared memory
  poisoned with NaN, guard zones around every array argument, kernel parameter types
  checked against the numpy scalar types passed).  kernels/gpu.py's own fused-path
  orchestration (plan, padding, launches, reductions) drives them through this emulated
  launcher, and the results are compared with kernels/reference.py.  This checks the
  indexing, tiling, boundary handling, padding and argument types of the CUDA code without
  a GPU; it says nothing about speed, and a missing __syncthreads may go unnoticed.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mimfast.kernels import gpu
from mimfast.kernels import reference as ref

CUDA_DIR = Path(gpu.__file__).resolve().parent / "cuda"
CU_FILES = sorted(p.name for p in CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")
ARCHS = ("sm_90", "sm_80")


def test_cuda_sources_present():
    assert {"stage1.cu", "stage2.cu", "sampler.cu"} <= set(CU_FILES)


# --------------------------------------------------------------------------
# nvcc
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nvcc_archs():
    if NVCC is None:
        pytest.skip("nvcc not found on PATH: CUDA compile check skipped")
    out = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True)
    listed = set(out.stdout.split())
    return listed


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", CU_FILES)
def test_nvcc_compiles_without_warnings(name, arch, nvcc_archs, tmp_path):
    virtual = arch.replace("sm_", "compute_")
    if nvcc_archs and virtual not in nvcc_archs:
        pytest.fail(f"this nvcc does not support {arch} (it lists {sorted(nvcc_archs)})")
    cmd = [NVCC, "-c", f"-arch={arch}", "-std=c++17",
           "-Xcompiler", "-Wall,-Wextra,-Werror", "--Werror", "all-warnings",
           "-o", str(tmp_path / (name + ".o")), str(CUDA_DIR / name)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    text = (r.stdout + r.stderr).strip()
    assert r.returncode == 0, f"{' '.join(cmd)}\n{text}"
    assert "warning" not in text.lower(), text


# --------------------------------------------------------------------------
# NVRTC (the compiler cupy.RawModule uses), when a library is loadable
# --------------------------------------------------------------------------
def _nvrtc_compiler():
    try:
        from cupy.cuda import compiler, nvrtc
        nvrtc.getVersion()
    except Exception as exc:  # no cupy, no libnvrtc
        pytest.skip(f"NVRTC is not loadable here ({type(exc).__name__}: {exc})")
    return compiler


@pytest.mark.parametrize("arch", ("90", "80"))
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("name", ("stage1.cu", "stage2.cu", "sampler.cu"))
def test_nvrtc_compiles_module_specs(name, dtype, arch, tmp_path, monkeypatch):
    compiler = _nvrtc_compiler()
    # cupy asks the (absent) device for its arch; give it explicitly and ask for PTX
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc",
                        lambda _arch=None: (f"-arch=compute_{arch}", "ptx"))
    code, options, names = gpu.module_spec(name, dtype)
    ptx, mapping = compiler.compile_using_nvrtc(code, options=options, name_expressions=names)
    assert set(mapping) == set(names)
    ptxas = shutil.which("ptxas")
    if ptxas:
        f = tmp_path / "k.ptx"
        f.write_bytes(ptx if isinstance(ptx, bytes) else ptx.encode())
        r = subprocess.run([ptxas, f"-arch=sm_{arch}", "-o", str(tmp_path / "k.cubin"), str(f)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------
# CPU emulation of the CUDA execution model
# --------------------------------------------------------------------------
EMU_PRELUDE = r"""
#include <cmath>
#include <math.h>
#include <barrier>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct emu_dim3 { unsigned int x, y, z; };
extern thread_local emu_dim3 threadIdx;
extern thread_local emu_dim3 blockIdx;
extern emu_dim3 blockDim;
extern emu_dim3 gridDim;
extern unsigned char* emu_dyn_smem;
void __syncthreads();
double emu_shfl_xor(double v, int lane_mask);
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * (unsigned long long)b) >> 32);
}
template <class T> inline T __shfl_xor_sync(unsigned int, T v, int lane_mask) {
    return (T)emu_shfl_xor((double)v, lane_mask);
}
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define MIMFAST_DYNAMIC_SMEM(name) unsigned char* name = emu_dyn_smem
"""

EMU_RUNTIME = r"""
thread_local emu_dim3 threadIdx;
thread_local emu_dim3 blockIdx;
emu_dim3 blockDim;
emu_dim3 gridDim;
unsigned char* emu_dyn_smem = nullptr;
static thread_local int emu_tid = 0;
static std::barrier<>* emu_block_barrier = nullptr;
static std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
static std::vector<double> emu_warp_buf;

void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

double emu_shfl_xor(double v, int lane_mask) {
    const int w = emu_tid / 32, l = emu_tid % 32;
    emu_warp_buf[w * 32 + l] = v;
    emu_warp_barriers[w]->arrive_and_wait();
    const double r = emu_warp_buf[w * 32 + (l ^ lane_mask)];
    emu_warp_barriers[w]->arrive_and_wait();
    return r;
}

template <class T> struct emu_code { static constexpr char c = '?'; };
template <> struct emu_code<float> { static constexpr char c = 'f'; };
template <> struct emu_code<double> { static constexpr char c = 'd'; };
template <> struct emu_code<int> { static constexpr char c = 'i'; };
template <> struct emu_code<long long> { static constexpr char c = 'q'; };
template <> struct emu_code<unsigned int> { static constexpr char c = 'I'; };
template <> struct emu_code<float*> { static constexpr char c = 'F'; };
template <> struct emu_code<const float*> { static constexpr char c = 'F'; };
template <> struct emu_code<double*> { static constexpr char c = 'D'; };
template <> struct emu_code<const double*> { static constexpr char c = 'D'; };

typedef int (*emu_fn)(void**, const char*, std::string&);

template <class... A, std::size_t... I>
static void emu_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

struct emu_entry {
    std::string codes;
    void (*invoke)(void*, void**);
    void* fn;
};

template <class... A>
static void emu_invoke(void* fn, void** args) {
    emu_call(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}

template <class... A>
static emu_entry emu_make(void (*k)(A...)) {
    const char codes[] = {emu_code<std::remove_cv_t<A>>::c..., 0};
    return emu_entry{std::string(codes), &emu_invoke<A...>, reinterpret_cast<void*>(k)};
}

static std::map<std::string, emu_entry>& emu_registry() {
    static std::map<std::string, emu_entry> r;
    return r;
}

extern "C" int emu_launch(const char* name, int gx, int gy, int gz, int bx, int by, int bz,
                          long long smem, void** args, const char* codes, char* err, int errlen) {
    auto& reg = emu_registry();
    auto it = reg.find(name);
    std::string msg;
    if (it == reg.end()) {
        msg = std::string("unknown kernel ") + name;
    } else if (it->second.codes != codes) {
        msg = std::string("argument types of ") + name + ": kernel wants " + it->second.codes
              + ", launch passed " + codes;
    } else if (bx * by * bz % 32 != 0 || bx * by * bz > 1024) {
        msg = "block size must be a multiple of 32 and at most 1024";
    }
    if (!msg.empty()) {
        std::strncpy(err, msg.c_str(), errlen - 1);
        return 1;
    }
    const int nt = bx * by * bz;
    const long long guard = 256;
    std::vector<unsigned char> smem_buf((size_t)(smem + guard + 16));
    unsigned char* base = smem_buf.data();
    while (((unsigned long long)base) % 16) ++base;
    blockDim = emu_dim3{(unsigned)bx, (unsigned)by, (unsigned)bz};
    gridDim = emu_dim3{(unsigned)gx, (unsigned)gy, (unsigned)gz};
    emu_warp_buf.assign((size_t)nt, 0.0);
    for (int z = 0; z < gz; ++z) for (int y = 0; y < gy; ++y) for (int x = 0; x < gx; ++x) {
        std::memset(base, 0xff, (size_t)smem);           // NaN poison for float and double
        std::memset(base + smem, 0xa5, (size_t)guard);
        emu_dyn_smem = base;
        std::barrier<> block_barrier(nt);
        emu_block_barrier = &block_barrier;
        emu_warp_barriers.clear();
        for (int w = 0; w < nt / 32; ++w) emu_warp_barriers.emplace_back(new std::barrier<>(32));
        std::vector<std::thread> threads;
        threads.reserve((size_t)nt);
        const emu_entry& e = it->second;
        for (int t = 0; t < nt; ++t) {
            threads.emplace_back([&, t, x, y, z]() {
                emu_tid = t;
                threadIdx = emu_dim3{(unsigned)(t % bx), (unsigned)((t / bx) % by),
                                     (unsigned)(t / (bx * by))};
                blockIdx = emu_dim3{(unsigned)x, (unsigned)y, (unsigned)z};
                e.invoke(e.fn, args);
            });
        }
        for (auto& th : threads) th.join();
        for (long long i = 0; i < guard; ++i) {
            if (base[smem + i] != 0xa5) {
                std::strncpy(err, "dynamic shared memory overrun", errlen - 1);
                return 2;
            }
        }
    }
    return 0;
}
"""


def _emu_registry_source():
    lines = ["static int emu_register_all() {", "    auto& r = emu_registry();"]
    for ct in ("float", "double"):
        for w in gpu.FUSED_WIDTHS:
            for kern in ("stage1_fused", "stage2_fused"):
                lines.append(f'    r["{kern}<{ct}, {w}>"] = emu_make(&{kern}<{ct}, {w}>);')
        for kern in ("stage1_reduce", "stage2_reduce", "philox_gaussian"):
            lines.append(f'    r["{kern}<{ct}>"] = emu_make(&{kern}<{ct}>);')
    lines += ["    return 0;", "}", "static int emu_registered = emu_register_all();"]
    return "\n".join(lines) + "\n"


def _elementwise_specs():
    specs = [gpu.elementwise_spec("scale_grad")]
    for act in ref.ACTIVATIONS:
        specs += [gpu.elementwise_spec("act_grad", act), gpu.elementwise_spec("act", act)]
    for kind in ref.LOSS_KINDS:
        specs.append(gpu.elementwise_spec("loss", kind))
    return specs


def _params(text):
    out = []
    for part in text.split(","):
        typ, name = part.split()
        assert typ == "T", text
        out.append(name)
    return out


def _emu_elementwise_source():
    """Each GEMM-path ElementwiseKernel body as a C++ loop over flat arrays."""
    lines = []
    for kname, in_p, out_p, body in _elementwise_specs():
        ins, outs = _params(in_p), _params(out_p)
        for ct in ("float", "double"):
            lines.append(f'extern "C" void ew_{kname}_{ct}(long long ew_n, {ct}** ew_args) {{')
            lines.append(f"    typedef {ct} T;")
            lines.append("    for (long long ew_i = 0; ew_i < ew_n; ++ew_i) {")
            for k, name in enumerate(ins):
                lines.append(f"        const T {name} = ew_args[{k}][ew_i];")
            for k, name in enumerate(outs):
                lines.append(f"        T {name} = ew_args[{len(ins) + k}][ew_i];")
            lines.append("        {\n" + body + "\n        }")
            for k, name in enumerate(outs):
                lines.append(f"        ew_args[{len(ins) + k}][ew_i] = {name};")
            lines.append("    }")
            lines.append("}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def emu_lib(tmp_path_factory):
    if GXX is None:
        pytest.skip("g++ not found: CPU emulation of the CUDA kernels skipped")
    d = tmp_path_factory.mktemp("emu")
    src = d / "emu.cpp"
    parts = [EMU_PRELUDE]
    for name in ("stage1.cu", "stage2.cu", "sampler.cu"):
        parts.append(f'#include "{CUDA_DIR / name}"\n')
    parts += [EMU_RUNTIME, _emu_registry_source(), _emu_elementwise_source()]
    src.write_text("".join(parts))
    lib = d / "libemu.so"
    cmd = [GXX, "-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread",
           "-Wno-unknown-pragmas", "-o", str(lib), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and "barrier" in r.stderr:
        pytest.skip(f"this g++ lacks C++20 <barrier>: {r.stderr[:300]}")
    assert r.returncode == 0, r.stderr
    so = ctypes.CDLL(str(lib))
    so.emu_launch.restype = ctypes.c_int
    return so


_GUARD = 512


def emu_call(so, name, grid, block, args, smem=0):
    """Run kernel ``name`` of the emulation library like cupy's RawKernel call would."""
    n = len(args)
    ptrs = (ctypes.c_void_p * n)()
    keep = []
    guarded = []
    codes = ""
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            codes += {np.dtype(np.float32): "F", np.dtype(np.float64): "D"}[a.dtype]
            assert a.flags.c_contiguous, f"argument {i} of {name} is not C-contiguous"
            flat = np.full(a.size + 2 * _GUARD, np.nan, dtype=a.dtype)
            flat[_GUARD:_GUARD + a.size] = a.ravel()
            p = ctypes.c_void_p(flat.ctypes.data + _GUARD * a.itemsize)
            guarded.append((a, flat))
        elif isinstance(a, np.float32):
            codes += "f"
            p = ctypes.c_float(float(a))
        elif isinstance(a, np.float64):
            codes += "d"
            p = ctypes.c_double(float(a))
        elif isinstance(a, np.int32):
            codes += "i"
            p = ctypes.c_int32(int(a))
        elif isinstance(a, np.int64):
            codes += "q"
            p = ctypes.c_int64(int(a))
        elif isinstance(a, np.uint32):
            codes += "I"
            p = ctypes.c_uint32(int(a))
        else:
            raise TypeError(f"argument {i} of {name} is {type(a).__name__}: kernel "
                            "arguments must be arrays or numpy scalars of exact type")
        keep.append(p)
        ptrs[i] = ctypes.cast(ctypes.pointer(p), ctypes.c_void_p)
    err = ctypes.create_string_buffer(512)
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    rc = so.emu_launch(name.encode(), *[ctypes.c_int(int(v)) for v in grid],
                       *[ctypes.c_int(int(v)) for v in block],
                       ctypes.c_longlong(int(smem)), ptrs, codes.encode(), err, 512)
    if rc != 0:
        raise RuntimeError(f"{name}: {err.value.decode()}")
    for a, flat in guarded:
        assert np.isnan(flat[:_GUARD]).all() and np.isnan(flat[-_GUARD:]).all(), \
            f"{name} wrote outside an array argument"
        a[...] = flat[_GUARD:_GUARD + a.size].reshape(a.shape)


class EmuLauncher:
    """gpu.py's launcher interface (xp, device(), launch()) on the CPU emulation."""

    xp = np

    def __init__(self, so, device):
        self.so = so
        self._device = dict(device)
        self.launches = []

    def device(self):
        return self._device

    def launch(self, filename, dtype, name, grid, block, args, smem=0):
        self.launches.append((name, tuple(grid), tuple(block), int(smem)))
        emu_call(self.so, name, grid, block, args, smem)


# a small "device": 3 SMs, H100-like shared memory
DEVICE = {"n_sm": 3, "smem_optin": 232448, "smem_per_sm": 233472}


def _problem(n, d, m, dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    W = (scale * rng.standard_normal((d, m)) / np.sqrt(d)).astype(dtype)
    a = rng.choice([-1.0, 1.0], m).astype(dtype)
    b = (0.3 * rng.standard_normal(m)).astype(dtype)
    return X, y, W, a, b


def _rtol(dtype):
    return 2e-4 if np.dtype(dtype) == np.float32 else 1e-10


def _close(got, want, dtype):
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    scale = max(np.max(np.abs(want)), 1e-30)
    return np.max(np.abs(got - want)) / scale


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


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("n,d,m,act,loss", [
    (131, 70, 5, "logcosh", "square"),       # n, d not multiples of tile / chunk; m -> 8
    (64, 1, 2, "quadratic", "huber"),        # d = 1, m = 2 -> 4
    (97, 150, 33, "relu", "pseudo_huber"),  # m -> 64, three column chunks
    (40, 65, 64, "logcosh", "huber"),        # m = 64 exactly
    (5, 3, 16, "quadratic", "square"),       # n < one tile
])
def test_emulated_stage1_fused(emu_lib, n, d, m, act, loss, dtype):
    X, y, W, a, b = _problem(n, d, m, dtype, seed=n + d + m, scale=2.0)
    launcher = EmuLauncher(emu_lib, DEVICE)
    G, L = gpu.stage1_fused_run(launcher, X, y, W, a, b, loss, 0.7, 0.1, act)
    _G0, L0 = ref.stage1_grad(X, y, W, a, b, loss, 0.7, 0.1, act)
    assert G.dtype == np.dtype(dtype) and G.shape == (d, m)
    _assert_stage1_close(G, X, y, W, a, b, loss, 0.7, 0.1, act, _rtol(dtype))
    assert L == pytest.approx(L0, rel=_rtol(dtype))
    assert [ln[0] for ln in launcher.launches] == [
        f"stage1_fused<{gpu._CTYPES[np.dtype(dtype)]}, {gpu._padded_width(m)}>",
        f"stage1_reduce<{gpu._CTYPES[np.dtype(dtype)]}>"]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_emulated_stage1_fused_multi_slab(emu_lib, dtype):
    """Force a small shared-memory budget so that d is split into several slabs."""
    n, d, m = 75, 150, 7
    X, y, W, a, b = _problem(n, d, m, dtype, seed=3, scale=2.0)
    itemsize = np.dtype(dtype).itemsize
    mp = gpu._padded_width(m)
    fixed = gpu._R * (gpu._KC + 1) + gpu._KC * mp + gpu._R * mp + 2 * mp
    optin = (fixed + gpu._KC * mp) * itemsize + gpu._STATIC_SMEM_ALLOWANCE
    dev = {"n_sm": 2, "smem_optin": optin, "smem_per_sm": 4 * optin}
    plan = gpu.fused_plan("stage1", n, d, m, itemsize, dev)
    assert plan["n_slabs"] == 3 and plan["slab_cols"] == gpu._KC
    launcher = EmuLauncher(emu_lib, dev)
    G, L = gpu.stage1_fused_run(launcher, X, y, W, a, b, "huber", 1.3, -0.2, "logcosh")
    G0, L0 = ref.stage1_grad(X, y, W, a, b, "huber", 1.3, -0.2, "logcosh")
    assert _close(G, G0, dtype) < _rtol(dtype)
    assert L == pytest.approx(L0, rel=_rtol(dtype))
    assert launcher.launches[0][1] == (plan["row_blocks"], 3, 1)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("n,d,m,act", [
    (131, 70, 5, "logcosh"),
    (64, 1, 2, "relu"),
    (97, 130, 33, "quadratic"),
    (33, 64, 64, "relu"),
])
def test_emulated_stage2_fused(emu_lib, n, d, m, act, dtype):
    X, y, W, a, b = _problem(n, d, m, dtype, seed=7 + m)
    launcher = EmuLauncher(emu_lib, DEVICE)
    K, v = gpu.stage2_fused_run(launcher, X, y, W, b, act)
    K0, v0 = ref.stage2_gram(X, y, W, b, act)
    assert K.shape == (m, m) and v.shape == (m,) and K.dtype == np.dtype(dtype)
    assert _close(K, K0, dtype) < _rtol(dtype)
    assert _close(v, v0, dtype) < _rtol(dtype)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_emulated_sampler_matches_numpy(emu_lib, dtype):
    launcher = EmuLauncher(emu_lib, DEVICE)
    seed, stream, start, stop, d = 12345, 7, (1 << 32) - 3, (1 << 32) + 5, 13
    out = np.empty((stop - start, d), dtype=dtype)
    launcher.launch("sampler.cu", dtype, f"philox_gaussian<{gpu._CTYPES[np.dtype(dtype)]}>",
                    (2, 1, 1), (64, 1, 1),
                    (out, np.uint32(seed), np.uint32(stream), np.int64(start),
                     np.int64(stop - start), np.int64(d)))
    want = gpu.philox_gaussian_rows_numpy(seed, stream, start, stop, d, dtype)
    # same libm on both sides here: bit-for-bit
    np.testing.assert_array_equal(out, want)


def test_emulator_rejects_wrong_scalar_types(emu_lib):
    launcher = EmuLauncher(emu_lib, DEVICE)
    out = np.empty((2, 4), dtype=np.float32)
    with pytest.raises(RuntimeError, match="argument types"):
        launcher.launch("sampler.cu", np.float32, "philox_gaussian<float>", (1, 1, 1),
                        (32, 1, 1), (out, np.uint32(1), np.uint32(2), np.int32(0),
                                     np.int64(2), np.int64(4)))


# --------------------------------------------------------------------------
# a numpy-backed stand-in for cupy: gpu.py's public, cupy-facing functions run end to end
# (CupyLauncher -> RawModule -> the emulated kernels; CupyElementwise -> ElementwiseKernel
# -> the elementwise bodies compiled on the CPU)
# --------------------------------------------------------------------------
class _FakeElementwiseKernel:
    def __init__(self, so, in_params, out_params, operation, name):
        self.so = so
        self.ins, self.outs = _params(in_params), _params(out_params)
        self.name = name
        assert (name, in_params, out_params, operation) in _elementwise_specs()

    def __call__(self, *args):
        assert len(args) == len(self.ins) + len(self.outs), "outputs are always passed"
        arrays = [x for x in args if isinstance(x, np.ndarray)]
        dt = arrays[0].dtype
        for x in args:
            assert isinstance(x, (np.ndarray, np.generic)), type(x)
            assert x.dtype == dt, f"{self.name}: argument of dtype {x.dtype}, T is {dt}"
        shape = np.broadcast_shapes(*[x.shape for x in arrays])
        outs = args[len(self.ins):]
        for o in outs:
            assert isinstance(o, np.ndarray) and o.shape == shape
        bufs = [np.ascontiguousarray(np.broadcast_to(x, shape)).copy() for x in args]
        ct = gpu._CTYPES[np.dtype(dt)]
        ptr_t = ctypes.POINTER(ctypes.c_float if ct == "float" else ctypes.c_double)
        ptrs = (ptr_t * len(bufs))(*[b.ctypes.data_as(ptr_t) for b in bufs])
        getattr(self.so, f"ew_{self.name}_{ct}")(ctypes.c_longlong(int(np.prod(shape))), ptrs)
        for o, b in zip(outs, bufs[len(self.ins):]):
            o[...] = b


class _FakeRawKernel:
    def __init__(self, so, name):
        self.so, self.name = so, name
        self.max_dynamic_shared_size_bytes = 0

    def __call__(self, grid, block, args, shared_mem=0):
        assert isinstance(grid, tuple) and isinstance(block, tuple) and isinstance(args, tuple)
        if shared_mem > 48 * 1024:
            assert self.max_dynamic_shared_size_bytes >= shared_mem, "no opt-in for smem"
            assert shared_mem <= DEVICE["smem_optin"]
        emu_call(self.so, self.name, grid, block, args, shared_mem)


def _fake_cupy(so):
    import types

    state = {"compiled": [], "ct": {np.dtype(np.float32): 1}}

    class RawModule:
        def __init__(self, code=None, options=(), name_expressions=None):
            assert isinstance(options, tuple) and name_expressions
            assert "__global__" in code
            self.names = list(name_expressions)
            state["compiled"].append(tuple(self.names))

        def get_function(self, name):
            assert name in self.names, (name, self.names)
            return _FakeRawKernel(so, name)

    attrs = {1: DEVICE["n_sm"], 2: DEVICE["smem_optin"], 3: DEVICE["smem_per_sm"]}
    runtime = types.SimpleNamespace(
        cudaDevAttrMultiProcessorCount=1, cudaDevAttrMaxSharedMemoryPerBlockOptin=2,
        cudaDevAttrMaxSharedMemoryPerMultiprocessor=3,
        deviceGetAttribute=lambda attr, dev: attrs[attr],
        deviceSynchronize=lambda: None, getDeviceCount=lambda: 1)
    device = types.SimpleNamespace(id=0, compute_capability="90", synchronize=lambda: None)
    lin = types.SimpleNamespace(COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_TF32=7)
    core = types.SimpleNamespace(
        _routines_linalg=lin,
        get_compute_type=lambda dt: state["ct"].setdefault(np.dtype(dt), 1),
        set_compute_type=lambda dt, ct: state["ct"].__setitem__(np.dtype(dt), ct))
    fake = types.SimpleNamespace(
        __version__="fake", ndarray=np.ndarray, float32=np.float32, float64=np.float64,
        asarray=np.asarray, ascontiguousarray=np.ascontiguousarray, asnumpy=np.asarray,
        empty=np.empty, empty_like=np.empty_like, zeros=np.zeros, matmul=np.matmul,
        ElementwiseKernel=lambda i, o, body, name: _FakeElementwiseKernel(so, i, o, body, name),
        RawModule=RawModule,
        cuda=types.SimpleNamespace(runtime=runtime, Device=lambda *a: device),
        _core=core, _state=state)
    return fake


@pytest.fixture
def fake_cupy(emu_lib, monkeypatch):
    fake = _fake_cupy(emu_lib)
    monkeypatch.setattr(gpu, "_import_cupy", lambda: fake)
    monkeypatch.setattr(gpu, "_AVAILABLE", True)
    monkeypatch.setattr(gpu.CupyLauncher, "_modules", {})
    monkeypatch.setattr(gpu.CupyLauncher, "_device_info", {})
    monkeypatch.setattr(gpu.CupyElementwise, "_cache", {})
    return fake


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("path", (None, "gemm", "fused"))
@pytest.mark.parametrize("act,loss", [("logcosh", "pseudo_huber"), ("quadratic", "square"),
                                      ("relu", "huber")])
def test_fake_cupy_stage1_and_stage2(fake_cupy, act, loss, path, dtype):
    n, d, m = 83, 70, 6
    X, y, W, a, b = _problem(n, d, m, dtype, seed=1, scale=2.0)
    G, L = gpu.stage1_grad(X, y, W, a, b, loss, 0.9, 0.2, act, path=path, block_rows=40)
    _G0, L0 = ref.stage1_grad(X, y, W, a, b, loss, 0.9, 0.2, act)
    assert isinstance(L, float) and G.dtype == np.dtype(dtype)
    _assert_stage1_close(G, X, y, W, a, b, loss, 0.9, 0.2, act, _rtol(dtype))
    assert L == pytest.approx(L0, rel=_rtol(dtype))
    K, v = gpu.stage2_gram(X, y, W, b, act, path=path, block_rows=40)
    K0, v0 = ref.stage2_gram(X, y, W, b, act)
    assert _close(K, K0, dtype) < _rtol(dtype) and _close(v, v0, dtype) < _rtol(dtype)
    if path != "gemm":
        # one RawModule per (file, dtype), compiled once
        assert len(fake_cupy._state["compiled"]) == len(set(fake_cupy._state["compiled"]))


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_fake_cupy_predict_sigma_sampler_tf32(fake_cupy, dtype):
    n, d, m = 90, 17, 3
    X, y, W, a, b = _problem(n, d, m, dtype, seed=2)
    for act in ref.ACTIVATIONS:
        f = gpu.predict(X, W, a, b, act, block_rows=25)
        assert _close(f, ref.predict(X, W, a, b, act), dtype) < _rtol(dtype)
    c = (y * y - 1).astype(dtype)
    assert _close(gpu.sigma_matvec(X, c, W), ref.sigma_matvec(X, c, W), dtype) < _rtol(dtype)
    assert _close(gpu.sigma_matrix(X, c, block_rows=30), ref.sigma_matrix(X, c),
                  dtype) < _rtol(dtype)
    z = gpu.sample_gaussian_rows(5, 1, 2**32 - 7, 2**32 + 9, 11, dtype)
    np.testing.assert_array_equal(z, gpu.philox_gaussian_rows_numpy(5, 1, 2**32 - 7,
                                                                    2**32 + 9, 11, dtype))
    # TF32: default off, allow_tf32=True only inside the call
    assert gpu.tf32_enabled() is False
    fake_cupy._state["ct"][np.dtype(np.float32)] = 7       # as if CUPY_TF32=1
    seen = []
    orig = gpu.stage1_gemm

    def spy(*args, **kw):
        seen.append(gpu.tf32_enabled())
        return orig(*args, **kw)

    gpu.stage1_gemm = spy
    try:
        gpu.stage1_grad(X, y, W, a, b, path="gemm")
        gpu.stage1_grad(X, y, W, a, b, path="gemm", allow_tf32=True)
    finally:
        gpu.stage1_gemm = orig
    assert seen == [False, True]
    assert fake_cupy._state["ct"][np.dtype(np.float32)] == 7  # restored


def test_fake_cupy_fused_with_large_shared_memory(fake_cupy):
    """d large enough that the fused stage-1 kernel needs > 48 KB of dynamic shared memory."""
    n, d, m = 40, 1500, 6
    X, y, W, a, b = _problem(n, d, m, np.float32, seed=4)
    plan = gpu.fused_plan("stage1", n, d, m, 4, DEVICE)
    assert plan["smem"] > 48 * 1024 and plan["n_slabs"] == 1
    G, L = gpu.stage1_grad(X, y, W, a, b, "square", 1.0, 0.0, "logcosh", path="fused")
    G0, L0 = ref.stage1_grad(X, y, W, a, b, "square", 1.0, 0.0, "logcosh")
    assert _close(G, G0, np.float32) < 2e-4 and L == pytest.approx(L0, rel=2e-4)
