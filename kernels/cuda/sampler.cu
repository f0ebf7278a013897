// mimfast: counter-based Gaussian sampler (Philox4x32-10 + Box-Muller).
//
// Row i (global index, 0-based) and column k of the Gaussian matrix of (seed, stream) is a
// pure function of (seed, stream, i, k):
//   key     = (seed, stream)                               two 32-bit words
//   counter = (k / 4, i mod 2^32, i div 2^32, 0)           four 32-bit words
//   (x0, x1, x2, x3) = Philox4x32-10(counter, key)         (Random123's algorithm)
//   columns 4q, 4q+1 come from Box-Muller on (x0, x1), columns 4q+2, 4q+3 from (x2, x3):
//     u1 = (x + 1) 2^-32 in (0, 1],  u2 = x' 2^-32 in [0, 1)
//     z  = sqrt(-2 log u1) cos(2 pi u2),  z' = sqrt(-2 log u1) sin(2 pi u2)
//   computed in double and rounded once to the output type.
// So any split of a row range into blocks gives the same rows.  kernels/gpu.py has the
// numpy twin (philox_gaussian_rows_numpy) that the tests compare against.
//
// Self-contained on purpose (NVRTC has no host headers).
//
// Launch contract: 1-D grid and block of any size (grid-stride loop); out is
// (nrows, d) row-major of T; rows are row_start .. row_start + nrows - 1.

namespace mimfast_rng {

#define MIMFAST_PHILOX_M0 0xD2511F53u
#define MIMFAST_PHILOX_M1 0xCD9E8D57u
#define MIMFAST_PHILOX_W0 0x9E3779B9u
#define MIMFAST_PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1)
{
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += MIMFAST_PHILOX_W0;
            k1 += MIMFAST_PHILOX_W1;
        }
        const unsigned int hi0 = __umulhi(MIMFAST_PHILOX_M0, c[0]);
        const unsigned int lo0 = MIMFAST_PHILOX_M0 * c[0];
        const unsigned int hi1 = __umulhi(MIMFAST_PHILOX_M1, c[2]);
        const unsigned int lo1 = MIMFAST_PHILOX_M1 * c[2];
        const unsigned int n0 = hi1 ^ c[1] ^ k0;
        const unsigned int n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

__device__ __forceinline__ void box_muller(unsigned int x, unsigned int xp, double& z0, double& z1)
{
    const double two_m32 = 2.3283064365386962890625e-10;  // 2^-32, exact
    const double u1 = ((double)x + 1.0) * two_m32;         // (0, 1]
    const double u2 = (double)xp * two_m32;                // [0, 1)
    const double rad = sqrt(-2.0 * log(u1));
    const double th = 6.283185307179586 * u2;
    z0 = rad * cos(th);
    z1 = rad * sin(th);
}

}  // namespace mimfast_rng

template <typename T>
__global__ void __launch_bounds__(256)
philox_gaussian(T* __restrict__ out, unsigned int seed, unsigned int stream,
                long long row_start, long long nrows, long long d)
{
    using namespace mimfast_rng;
    const long long ncol4 = (d + 3) / 4;
    const long long total = nrows * ncol4;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += step) {
        const long long i = idx / ncol4;
        const long long q = idx - i * ncol4;
        const unsigned long long row = (unsigned long long)(row_start + i);
        unsigned int c[4];
        c[0] = (unsigned int)q;
        c[1] = (unsigned int)(row & 0xffffffffull);
        c[2] = (unsigned int)(row >> 32);
        c[3] = 0u;
        philox4x32_10(c, seed, stream);
        double z[4];
        box_muller(c[0], c[1], z[0], z[1]);
        box_muller(c[2], c[3], z[2], z[3]);
        T* o = out + i * d + 4 * q;
        const long long left = d - 4 * q;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            if (t < left) {
                o[t] = (T)z[t];
            }
        }
    }
}

#ifndef __CUDACC_RTC__
template __global__ void philox_gaussian<float>(float*, unsigned int, unsigned int, long long,
                                                long long, long long);
template __global__ void philox_gaussian<double>(double*, unsigned int, unsigned int, long long,
                                                 long long, long long);
#endif
