// mimfast: fused stage-2 feature Gram kernel and its cross-block reduction.
//
// Meaning (kernels/reference.py, stage2_gram):
//   F = sigma(X W + b);  K = F^T F / n (m x m);  v = F^T y / n (m,).
//
// Self-contained on purpose: cupy.RawModule compiles this file with NVRTC, which has no
// host headers.  Nothing is included; only CUDA built-ins and device math are used.
//
// Layout and launch contract (kernels/gpu.py builds it; keep the two in step):
//   * X is (n, d) row-major, y is (n,), W is (d, MP) row-major and b is (MP,), padded with
//     zero columns / zeros from the width m up to MP; sigma(0) = 0 for every activation, so
//     padded features are exactly 0.
//   * blockDim = (S2_NT, 1, 1), gridDim = (row_blocks, 1, 1).  Block bx handles rows
//     [bx * rows_per_block, min(n, (bx + 1) * rows_per_block)).
//   * dynamic shared memory: S2_R * (S2_KC + 1) + S2_KC * MP + S2_R * MP + MP + S2_R
//     elements of T.
//   * partial is (row_blocks, MP * MP + MP) double: F^T F of the block's rows (row-major
//     MP x MP), then F^T y.  Rows are summed per tile in T and across tiles in double.
//   * stage2_reduce sums partial over row blocks in double and writes K (m, m) and v (m,).
//
// X is read once: the H tile is built from shared-memory chunks of X and W, then F^T F and
// F^T y of the tile are added into per-thread register accumulators.

#ifndef MIMFAST_DYNAMIC_SMEM
#define MIMFAST_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#define S2_NT 256      // threads per block (the launch must use exactly this)
#define S2_KC 64       // X columns per shared-memory chunk
#define S2_R 32        // rows per tile

namespace mimfast_s2 {

enum { ACT_LOGCOSH = 0, ACT_QUADRATIC = 1, ACT_RELU = 2 };

template <typename T>
__device__ __forceinline__ T act_value(T h, int act)
{
    if (act == ACT_LOGCOSH) {
        // log cosh t = |t| + log1p(exp(-2|t|)) - log 2, stable for large |t|
        const T ah = fabs(h);
        return ah + log1p(exp(T(-2) * ah)) - T(0.69314718055994530942);
    }
    if (act == ACT_QUADRATIC) {
        return T(0.5) * h * h;
    }
    return h > T(0) ? h : T(0);
}

}  // namespace mimfast_s2

template <typename T, int MP>
__global__ void __launch_bounds__(S2_NT)
stage2_fused(const T* __restrict__ X, const T* __restrict__ y, const T* __restrict__ W,
             const T* __restrict__ b, long long n, long long d, long long rows_per_block,
             int act, double* __restrict__ partial)
{
    using namespace mimfast_s2;
    static_assert(MP >= 4 && MP <= 64 && (MP & (MP - 1)) == 0, "MP must be 4, 8, 16, 32 or 64");
    constexpr int RSTEP = S2_NT / MP;
    constexpr int RA = (S2_R + RSTEP - 1) / RSTEP;
    constexpr int NOUT = MP * MP + MP;
    constexpr int QF = (NOUT + S2_NT - 1) / S2_NT;
    static_assert((S2_R * S2_KC) % S2_NT == 0 && (S2_KC * MP) % S2_NT == 0, "chunk layout");

    MIMFAST_DYNAMIC_SMEM(smem_raw);
    T* xs = reinterpret_cast<T*>(smem_raw);   // S2_R * (S2_KC + 1)
    T* ws = xs + S2_R * (S2_KC + 1);          // S2_KC * MP
    T* fs = ws + S2_KC * MP;                  // S2_R * MP  (H tile, then F tile)
    T* bs_ = fs + S2_R * MP;                  // MP
    T* ys = bs_ + MP;                         // S2_R

    const int tid = threadIdx.x;
    const int j = tid % MP;
    const int grp = tid / MP;

    const long long row_begin = (long long)blockIdx.x * rows_per_block;
    long long row_stop = row_begin + rows_per_block;
    if (row_stop > n) {
        row_stop = n;
    }

    if (tid < MP) {
        bs_[tid] = b[tid];
    }
    double acc[QF];
#pragma unroll
    for (int q = 0; q < QF; ++q) {
        acc[q] = 0.0;
    }
    __syncthreads();

    for (long long row0 = row_begin; row0 < row_stop; row0 += S2_R) {
        // ---- phase A: H tile = X tile @ W --------------------------------------------
        T hacc[RA];
#pragma unroll
        for (int q = 0; q < RA; ++q) {
            hacc[q] = T(0);
        }
        for (long long c0 = 0; c0 < d; c0 += S2_KC) {
#pragma unroll
            for (int i = 0; i < (S2_R * S2_KC) / S2_NT; ++i) {  // independent loads in flight
                const int e = tid + i * S2_NT;
                const int r = e / S2_KC;
                const int kk = e - r * S2_KC;
                const long long row = row0 + r;
                const long long col = c0 + kk;
                T v = T(0);
                if (row < row_stop && col < d) {
                    v = X[row * d + col];
                }
                xs[r * (S2_KC + 1) + kk] = v;
            }
#pragma unroll
            for (int i = 0; i < (S2_KC * MP) / S2_NT; ++i) {
                const int e = tid + i * S2_NT;
                const int kk = e / MP;
                const long long col = c0 + kk;
                ws[e] = (col < d) ? W[col * MP + (e - kk * MP)] : T(0);
            }
            __syncthreads();
#pragma unroll 8
            for (int kk = 0; kk < S2_KC; ++kk) {
                const T w = ws[kk * MP + j];
#pragma unroll
                for (int q = 0; q < RA; ++q) {
                    const int r = grp + q * RSTEP;
                    if (r < S2_R) {
                        hacc[q] += xs[r * (S2_KC + 1) + kk] * w;
                    }
                }
            }
            __syncthreads();
        }

        // ---- phase B: F tile (zero rows past the end) and the labels -------------------
#pragma unroll
        for (int q = 0; q < RA; ++q) {
            const int r = grp + q * RSTEP;
            if (r < S2_R) {
                const bool valid = row0 + r < row_stop;
                fs[r * MP + j] = valid ? act_value<T>(hacc[q] + bs_[j], act) : T(0);
            }
        }
        if (tid < S2_R) {
            const long long row = row0 + tid;
            ys[tid] = (row < row_stop) ? y[row] : T(0);
        }
        __syncthreads();

        // ---- phase C: acc += F_tile^T [F_tile, y_tile] ---------------------------------
#pragma unroll
        for (int q = 0; q < QF; ++q) {
            const int o = tid + q * S2_NT;
            if (o < NOUT) {
                T s = T(0);
                if (o < MP * MP) {
                    const int j1 = o / MP;
                    const int j2 = o - j1 * MP;
#pragma unroll 8
                    for (int r = 0; r < S2_R; ++r) {
                        s += fs[r * MP + j1] * fs[r * MP + j2];
                    }
                } else {
                    const int j1 = o - MP * MP;
#pragma unroll 8
                    for (int r = 0; r < S2_R; ++r) {
                        s += fs[r * MP + j1] * ys[r];
                    }
                }
                acc[q] += (double)s;
            }
        }
        __syncthreads();
    }

    double* out = partial + (long long)blockIdx.x * NOUT;
#pragma unroll
    for (int q = 0; q < QF; ++q) {
        const int o = tid + q * S2_NT;
        if (o < NOUT) {
            out[o] = acc[q];
        }
    }
}

// K[j1, j2] = sum_blk partial[blk, j1 * mp + j2] / n and v[j] = sum_blk partial[blk,
// mp * mp + j] / n for j1, j2, j < m, summed in double.
template <typename T>
__global__ void __launch_bounds__(256)
stage2_reduce(const double* __restrict__ partial, long long nblocks, int mp, int m,
              long long n, T* __restrict__ K, T* __restrict__ v)
{
    const long long nout = (long long)mp * mp + mp;
    const long long total = (long long)m * m + m;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        long long src;
        if (idx < (long long)m * m) {
            const long long j1 = idx / m;
            const long long j2 = idx - j1 * m;
            src = j1 * mp + j2;
        } else {
            src = (long long)mp * mp + (idx - (long long)m * m);
        }
        double acc = 0.0;
        for (long long blk = 0; blk < nblocks; ++blk) {
            acc += partial[blk * nout + src];
        }
        const T val = (T)(acc / (double)n);
        if (idx < (long long)m * m) {
            K[idx] = val;
        } else {
            v[idx - (long long)m * m] = val;
        }
    }
}

#ifndef __CUDACC_RTC__
// Explicit instantiations so that `nvcc -c` compiles every body (NVRTC instantiates only
// the name expressions that kernels/gpu.py asks for).
#define MIMFAST_S2_INST(T, MP)                                                                \
    template __global__ void stage2_fused<T, MP>(const T*, const T*, const T*, const T*,      \
                                                 long long, long long, long long, int,        \
                                                 double*);
MIMFAST_S2_INST(float, 4)
MIMFAST_S2_INST(float, 8)
MIMFAST_S2_INST(float, 16)
MIMFAST_S2_INST(float, 32)
MIMFAST_S2_INST(float, 64)
MIMFAST_S2_INST(double, 4)
MIMFAST_S2_INST(double, 8)
MIMFAST_S2_INST(double, 16)
MIMFAST_S2_INST(double, 32)
MIMFAST_S2_INST(double, 64)
template __global__ void stage2_reduce<float>(const double*, long long, int, int, long long,
                                              float*, float*);
template __global__ void stage2_reduce<double>(const double*, long long, int, int, long long,
                                               double*, double*);
#endif
