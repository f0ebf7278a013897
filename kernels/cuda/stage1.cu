// mimfast: fused stage-1 kernel (first-layer gradient) and its cross-block reduction.
//
// Meaning (kernels/reference.py, stage1_grad):
//   H = X W + b;  f = sigma(H) a;  c = l'(f, y) - offset;  P = (c outer a) * sigma'(H);
//   G = X^T P / n;  mean_loss = mean(l(f, y) - offset * f).
//
// Self-contained on purpose: cupy.RawModule compiles this file with NVRTC, which has no
// host headers.  Nothing is included; only CUDA built-ins and device math are used.
//
// Layout and launch contract (kernels/gpu.py builds it; keep the two in step):
//   * X is (n, d) row-major, y is (n,), W is (d, MP) row-major, a and b are (MP,), where MP is
//     the width m padded up to the template parameter MP with zero columns (W), zero a and
//     zero b.  Padded neurons therefore give H = 0, sigma(0) = 0 and P = 0.
//   * blockDim = (S1_NT, 1, 1).  gridDim = (row_blocks, n_slabs).  Block (bx, sy) handles
//     rows [bx * rows_per_block, min(n, (bx + 1) * rows_per_block)) and accumulates the
//     slab of G rows (X columns) [sy * slab_cols, min(d, (sy + 1) * slab_cols)).
//     slab_cols is a positive multiple of S1_KC.
//   * dynamic shared memory: slab_cols * MP + S1_R * (S1_KC + 1) + S1_KC * MP + S1_R * MP
//     + 2 * MP elements of T (accumulators, X chunk, W chunk, H/P tile, a, b; gpu.py's
//     fused_plan computes the same number).
//   * partial is (row_blocks, d, MP): block (bx, sy) writes its slab rows of partial[bx].
//     loss_partial is (row_blocks,) double: block (bx, 0) writes its sum of loss values.
//   * stage1_reduce sums partial over row blocks in double and writes G (d, m) = sum / n.
//
// Each block streams its X rows tile by tile (S1_R rows): phase A computes the H tile
// (all d columns, staged through shared memory in chunks of S1_KC columns), phase B turns
// it into f, c, the loss and the P tile (in shared memory), phase C adds X_tile^T P for the
// block's column slab into shared-memory accumulators.  When the whole of d fits in one
// slab, X is read from HBM once (phase C re-reads the tile just read, normally from L2);
// with n_slabs > 1 the H pass re-reads X once per slab.  No atomics: every accumulator
// has one owning thread, and blocks write disjoint parts of the partial buffers.

#ifndef MIMFAST_DYNAMIC_SMEM
#define MIMFAST_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#define S1_NT 256      // threads per block (the launch must use exactly this)
#define S1_KC 64       // X columns per shared-memory chunk
#define S1_R 32        // rows per tile
#define S1_NWARPS (S1_NT / 32)

namespace mimfast_s1 {

enum { ACT_LOGCOSH = 0, ACT_QUADRATIC = 1, ACT_RELU = 2 };
enum { LOSS_SQUARE = 0, LOSS_HUBER = 1, LOSS_PSEUDO_HUBER = 2 };

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

template <typename T>
__device__ __forceinline__ T act_grad(T h, int act)
{
    if (act == ACT_LOGCOSH) {
        return tanh(h);
    }
    if (act == ACT_QUADRATIC) {
        return h;
    }
    return h > T(0) ? T(1) : T(0);
}

// g = d/dt [l(t, y) - offset t] at t = f, v = l(f, y) - offset f
template <typename T>
__device__ __forceinline__ void loss_eval(T f, T yv, int kind, T delta, T offset, T& g, T& v)
{
    const T r = f - yv;
    if (kind == LOSS_HUBER) {
        const T ar = fabs(r);
        v = (ar <= delta) ? T(0.5) * r * r : delta * (ar - T(0.5) * delta);
        g = (r < -delta) ? -delta : ((r > delta) ? delta : r);
    } else if (kind == LOSS_PSEUDO_HUBER) {
        const T q = r / delta;
        const T s = sqrt(T(1) + q * q);
        v = delta * delta * (s - T(1));
        g = r / s;
    } else {
        v = T(0.5) * r * r;
        g = r;
    }
    g = g - offset;
    v = v - offset * f;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, off);
    }
    return v;
}

// Load X[row0 : row0 + S1_R, c0 : c0 + S1_KC] into xs (zero outside [row0, row_end) x [0, d)).
template <typename T>
__device__ __forceinline__ void load_x_chunk(const T* __restrict__ X, long long d,
                                             long long row0, long long row_end, long long c0,
                                             T* xs)
{
    static_assert((S1_R * S1_KC) % S1_NT == 0, "X chunk layout");
#pragma unroll
    for (int i = 0; i < (S1_R * S1_KC) / S1_NT; ++i) {  // independent loads in flight
        const int e = (int)threadIdx.x + i * S1_NT;
        const int r = e / S1_KC;
        const int kk = e - r * S1_KC;
        const long long row = row0 + r;
        const long long col = c0 + kk;
        T v = T(0);
        if (row < row_end && col < d) {
            v = X[row * d + col];
        }
        xs[r * (S1_KC + 1) + kk] = v;
    }
}

}  // namespace mimfast_s1

template <typename T, int MP>
__global__ void __launch_bounds__(S1_NT)
stage1_fused(const T* __restrict__ X, const T* __restrict__ y, const T* __restrict__ W,
             const T* __restrict__ a, const T* __restrict__ b,
             long long n, long long d, long long rows_per_block, long long slab_cols,
             int act, int loss, T delta, T offset,
             T* __restrict__ partial, double* __restrict__ loss_partial)
{
    using namespace mimfast_s1;
    static_assert(MP >= 4 && MP <= 64 && (MP & (MP - 1)) == 0, "MP must be 4, 8, 16, 32 or 64");
    // phase A: thread -> (row group, neuron j); rows rg, rg + RSTEP, ...
    constexpr int RSTEP = S1_NT / MP;                           // 4 .. 64
    constexpr int RA = (S1_R + RSTEP - 1) / RSTEP;              // rows per thread (>= 1)
    // phase C: thread -> (column group, neuron j); columns cg, cg + CSTEP, ...
    constexpr int CSTEP = S1_NT / MP;                           // <= S1_KC since MP >= 4
    constexpr int QC = S1_KC / CSTEP;                           // columns per thread (>= 1)
    static_assert(CSTEP <= S1_KC && S1_KC % CSTEP == 0, "phase C layout");
    static_assert((S1_KC * MP) % S1_NT == 0, "W chunk layout");

    MIMFAST_DYNAMIC_SMEM(smem_raw);
    T* accs = reinterpret_cast<T*>(smem_raw);                   // slab_cols * MP
    T* xs = accs + slab_cols * MP;                              // S1_R * (S1_KC + 1)
    T* ws = xs + S1_R * (S1_KC + 1);                            // S1_KC * MP
    T* ps = ws + S1_KC * MP;                                    // S1_R * MP
    T* as_ = ps + S1_R * MP;                                    // MP
    T* bs_ = as_ + MP;                                          // MP
    __shared__ double red[S1_NWARPS];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int j = tid % MP;
    const int grp = tid / MP;

    const long long row_begin = (long long)blockIdx.x * rows_per_block;
    long long row_stop = row_begin + rows_per_block;
    if (row_stop > n) {
        row_stop = n;
    }
    const long long k0 = (long long)blockIdx.y * slab_cols;
    long long k1 = k0 + slab_cols;
    if (k1 > d) {
        k1 = d;
    }

    for (long long e = tid; e < slab_cols * MP; e += S1_NT) {
        accs[e] = T(0);
    }
    if (tid < MP) {
        as_[tid] = a[tid];
        bs_[tid] = b[tid];
    }
    double lsum = 0.0;  // loss sum of this thread's rows (lane 0 of each warp only)
    __syncthreads();

    for (long long row0 = row_begin; row0 < row_stop; row0 += S1_R) {
        // ---- phase A: H tile = X tile @ W --------------------------------------------
        T hacc[RA];
#pragma unroll
        for (int q = 0; q < RA; ++q) {
            hacc[q] = T(0);
        }
        for (long long c0 = 0; c0 < d; c0 += S1_KC) {
            load_x_chunk<T>(X, d, row0, row_stop, c0, xs);
#pragma unroll
            for (int i = 0; i < (S1_KC * MP) / S1_NT; ++i) {
                const int e = tid + i * S1_NT;
                const int kk = e / MP;
                const long long col = c0 + kk;
                ws[e] = (col < d) ? W[col * MP + (e - kk * MP)] : T(0);
            }
            __syncthreads();
#pragma unroll 8
            for (int kk = 0; kk < S1_KC; ++kk) {
                const T w = ws[kk * MP + j];
#pragma unroll
                for (int q = 0; q < RA; ++q) {
                    const int r = grp + q * RSTEP;
                    if (r < S1_R) {
                        hacc[q] += xs[r * (S1_KC + 1) + kk] * w;
                    }
                }
            }
            __syncthreads();
        }
#pragma unroll
        for (int q = 0; q < RA; ++q) {
            const int r = grp + q * RSTEP;
            if (r < S1_R) {
                ps[r * MP + j] = hacc[q] + bs_[j];
            }
        }
        __syncthreads();

        // ---- phase B: f, c, loss, P (one warp per row) ---------------------------------
        for (int r = warp; r < S1_R; r += S1_NWARPS) {
            const long long row = row0 + r;
            const bool valid = row < row_stop;
            T s = T(0);
            for (int jj = lane; jj < MP; jj += 32) {
                s += as_[jj] * act_value<T>(ps[r * MP + jj], act);
            }
            const T f = warp_sum<T>(s);
            T c = T(0);
            if (valid) {
                T v;
                loss_eval<T>(f, y[row], loss, delta, offset, c, v);
                if (lane == 0) {
                    lsum += (double)v;
                }
            }
            for (int jj = lane; jj < MP; jj += 32) {
                const T h = ps[r * MP + jj];
                ps[r * MP + jj] = valid ? (c * as_[jj]) * act_grad<T>(h, act) : T(0);
            }
        }
        __syncthreads();

        // ---- phase C: accs[slab] += X_tile[:, slab]^T P --------------------------------
        for (long long c0 = k0; c0 < k1; c0 += S1_KC) {
            load_x_chunk<T>(X, d, row0, row_stop, c0, xs);
            __syncthreads();
            T s[QC];
#pragma unroll
            for (int q = 0; q < QC; ++q) {
                s[q] = T(0);
            }
#pragma unroll 4
            for (int r = 0; r < S1_R; ++r) {
                const T p = ps[r * MP + j];
#pragma unroll
                for (int q = 0; q < QC; ++q) {
                    s[q] += xs[r * (S1_KC + 1) + grp + q * CSTEP] * p;
                }
            }
            const long long lc0 = c0 - k0;  // local column of this chunk inside the slab
#pragma unroll
            for (int q = 0; q < QC; ++q) {
                accs[(lc0 + grp + q * CSTEP) * MP + j] += s[q];
            }
            __syncthreads();
        }
    }

    // ---- write this block's slab of the partial and its loss sum -----------------------
    __syncthreads();
    T* out = partial + (long long)blockIdx.x * d * MP;
    const long long nloc = (k1 - k0) * MP;
    for (long long e = tid; e < nloc; e += S1_NT) {
        out[k0 * MP + e] = accs[e];
    }
    if (lane == 0) {
        red[warp] = lsum;
    }
    __syncthreads();
    if (tid == 0 && blockIdx.y == 0) {
        double t = 0.0;
        for (int w = 0; w < S1_NWARPS; ++w) {
            t += red[w];
        }
        loss_partial[blockIdx.x] = t;
    }
}

// G[k, j] = (sum over row blocks of partial[blk, k, j]) / n, summed in double.
template <typename T>
__global__ void __launch_bounds__(256)
stage1_reduce(const T* __restrict__ partial, long long nblocks, long long d, int mp, int m,
              long long n, T* __restrict__ G)
{
    const long long total = d * m;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long k = idx / m;
        const long long jj = idx - k * m;
        double acc = 0.0;
        for (long long blk = 0; blk < nblocks; ++blk) {
            acc += (double)partial[(blk * d + k) * mp + jj];
        }
        G[idx] = (T)(acc / (double)n);
    }
}

#ifndef __CUDACC_RTC__
// Explicit instantiations so that `nvcc -c` compiles every body (NVRTC instantiates only
// the name expressions that kernels/gpu.py asks for).
#define MIMFAST_S1_INST(T, MP)                                                                \
    template __global__ void stage1_fused<T, MP>(const T*, const T*, const T*, const T*,      \
                                                 const T*, long long, long long, long long,   \
                                                 long long, int, int, T, T, T*, double*);
MIMFAST_S1_INST(float, 4)
MIMFAST_S1_INST(float, 8)
MIMFAST_S1_INST(float, 16)
MIMFAST_S1_INST(float, 32)
MIMFAST_S1_INST(float, 64)
MIMFAST_S1_INST(double, 4)
MIMFAST_S1_INST(double, 8)
MIMFAST_S1_INST(double, 16)
MIMFAST_S1_INST(double, 32)
MIMFAST_S1_INST(double, 64)
template __global__ void stage1_reduce<float>(const float*, long long, long long, int, int,
                                              long long, float*);
template __global__ void stage1_reduce<double>(const double*, long long, long long, int, int,
                                               long long, double*);
#endif
