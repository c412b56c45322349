// Philox4x32-10 Gaussian noise generated inside the kernels (impl="cupy", loaded by cupy_raw.py).
//
// The CUDA C transcription of kernels/philox.py, which states the generator, the noise layout and
// why the transforms use only + - * / sqrt (docs/kernels.md §6). Element i of sample b (m elements
// per sample) is lane i % 4 of gauss4(block = i / 4, sample = offset + b, seed). Every multiply-add
// in the transforms is written with __dmul_rn/__dadd_rn so the compiler cannot fuse it into an FMA:
// the noise is then bit-identical to the NumPy reference and the Numba kernels.
//
//   philox_normal         out[i] = n_i
//   philox_q_sample       out[i] = a[t_b] x0[i] + s[t_b] n_i                       (eq. C1, eps = n)
//   philox_eps_loss       grad[i] = (2/n) w_b (eps_hat[i] - n_i), partial sums of w_b d^2 (eq. C2-C3)
//   sum_partials          stage 2 of the loss (block_reduce.cuh, shared with diffusion_ops.cu)
//
// Bytes model: q_sample 2 n s (x0 read, x_t written), eps_loss 2 n s (eps_hat read, grad written).
// Each thread handles one Philox block (4 elements); blocks must have THREADS threads.
//
// Compile check (tests/test_kernels_cuda_c.py): nvcc -ptx -arch=sm_80 philox.cu

#include "block_reduce.cuh"

__device__ const double ATANH[11] = {1.0, 0.3333333333333333, 0.2, 0.14285714285714285, 0.1111111111111111,
                                     0.09090909090909091, 0.07692307692307693, 0.06666666666666667,
                                     0.058823529411764705, 0.05263157894736842, 0.047619047619047616};
__device__ const double SIN[10] = {1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984,
                                   2.7557319223985893e-06, -2.505210838544172e-08, 1.6059043836821613e-10,
                                   -7.647163731819816e-13, 2.8114572543455206e-15, -8.22063524662433e-18};
__device__ const double COS[11] = {1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05,
                                   -2.755731922398589e-07, 2.08767569878681e-09, -1.1470745597729725e-11,
                                   4.779477332387385e-14, -1.5619206968586225e-16, 4.110317623312165e-19};
#define LN2 0.6931471805599453
#define HALF_PI 1.5707963267948966
#define SQRT2 1.4142135623730951

// Four 32-bit words for counter c (in place) and key (k0, k1).
__device__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += W0;
            k1 += W1;
        }
        const unsigned int hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        const unsigned int hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        const unsigned int c1 = c[1], c3 = c[3];
        c[0] = hi1 ^ c1 ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c3 ^ k1;
        c[3] = lo0;
    }
}

// r^2 = -2 log((w + 1) 2^-32) by exact power-of-two reduction and the atanh series.
__device__ double neg2log_uniform(unsigned int w) {
    double x = (double)w + 1.0, e = 0.0;
    for (int bits = 16; bits >= 1; bits /= 2) {
        const double scale = (double)(1u << bits);
        if (x >= scale) {
            x = x / scale;  // exact: a power of two
            e = e + bits;
        }
    }
    if (x > SQRT2) {
        x = x * 0.5;
        e = e + 1.0;
    }
    const double s = (x - 1.0) / (x + 1.0), s2 = s * s;
    double p = ATANH[10];
    for (int k = 9; k >= 0; --k) p = __dadd_rn(__dmul_rn(p, s2), ATANH[k]);
    return -2.0 * __dadd_rn(__dmul_rn(e - 32.0, LN2), 2.0 * s * p);
}

// cos and sin of 2 pi w 2^-32: exact quadrant reduction of w, Taylor series on [0, pi/2).
__device__ void cos_sin_2pi(unsigned int w, double* cos_out, double* sin_out) {
    const unsigned int quadrant = w >> 30;
    const double a = ((double)(w & 0x3FFFFFFFu) * 9.313225746154785e-10) * HALF_PI;  // 2^-30
    const double a2 = a * a;
    double c = COS[10], s = SIN[9];
    for (int k = 9; k >= 0; --k) c = __dadd_rn(__dmul_rn(c, a2), COS[k]);
    for (int k = 8; k >= 0; --k) s = __dadd_rn(__dmul_rn(s, a2), SIN[k]);
    s = a * s;
    if (quadrant == 0) { *cos_out = c; *sin_out = s; }
    else if (quadrant == 1) { *cos_out = -s; *sin_out = c; }
    else if (quadrant == 2) { *cos_out = -c; *sin_out = -s; }
    else { *cos_out = s; *sin_out = -c; }
}

// The four normals of counter (block, lo32(sample), hi32(sample), 0) and key (lo32(seed), hi32(seed)).
__device__ void gauss4(unsigned long long block, unsigned long long sample, unsigned long long seed, double n[4]) {
    unsigned int w[4] = {(unsigned int)block, (unsigned int)sample, (unsigned int)(sample >> 32), 0u};
    philox4x32_10(w, (unsigned int)seed, (unsigned int)(seed >> 32));
    const double r01 = sqrt(neg2log_uniform(w[0])), r23 = sqrt(neg2log_uniform(w[2]));
    double c01, s01, c23, s23;
    cos_sin_2pi(w[1], &c01, &s01);
    cos_sin_2pi(w[3], &c23, &s23);
    n[0] = r01 * c01;
    n[1] = r01 * s01;
    n[2] = r23 * c23;
    n[3] = r23 * s23;
}


template <typename T>
__device__ void philox_normal(unsigned long long seed, unsigned long long offset, long long batch, long long m,
                              T* out) {
    const long long blocks = (m + 3) / 4;
    for (long long g = first_index(); g < batch * blocks; g += grid_stride()) {
        const long long b = g / blocks, q = g - b * blocks;
        double n[4];
        gauss4(q, offset + b, seed, n);
        for (int lane = 0; lane < 4 && 4 * q + lane < m; ++lane) out[b * m + 4 * q + lane] = (T)n[lane];
    }
}

template <typename T>
__device__ void philox_q_sample(const T* x0, const long long* t, const T* sqrt_alpha_bar,
                                const T* sqrt_one_minus_alpha_bar, unsigned long long seed,
                                unsigned long long offset, long long batch, long long m, T* out) {
    const long long blocks = (m + 3) / 4;
    for (long long g = first_index(); g < batch * blocks; g += grid_stride()) {
        const long long b = g / blocks, q = g - b * blocks;
        const T a = sqrt_alpha_bar[t[b]], s = sqrt_one_minus_alpha_bar[t[b]];
        double n[4];
        gauss4(q, offset + b, seed, n);
        for (int lane = 0; lane < 4 && 4 * q + lane < m; ++lane) {
            const long long i = b * m + 4 * q + lane;
            out[i] = a * x0[i] + s * (T)n[lane];
        }
    }
}

template <typename T>
__device__ void philox_eps_loss(const T* eps_hat, const T* w, unsigned long long seed, unsigned long long offset,
                                long long batch, long long m, T two_over_n, T* grad, double* partial) {
    __shared__ double cache[THREADS];
    const long long blocks = (m + 3) / 4;
    double acc = 0.0;
    for (long long g = first_index(); g < batch * blocks; g += grid_stride()) {
        const long long b = g / blocks, q = g - b * blocks;
        const T wb = w[b], scale = two_over_n * wb;
        double n[4];
        gauss4(q, offset + b, seed, n);
        for (int lane = 0; lane < 4 && 4 * q + lane < m; ++lane) {
            const long long i = b * m + 4 * q + lane;
            const T d = eps_hat[i] - (T)n[lane];
            grad[i] = scale * d;
            acc += (double)wb * (double)d * (double)d;
        }
    }
    cache[threadIdx.x] = acc;
    block_sum(cache);
    if (threadIdx.x == 0) partial[blockIdx.x] = cache[0];
}

#define ENTRY_POINTS(T, NAME)                                                                                \
    extern "C" __global__ void philox_normal_##NAME(unsigned long long seed, unsigned long long offset,      \
                                                    long long batch, long long m, T* out) {                  \
        philox_normal<T>(seed, offset, batch, m, out);                                                       \
    }                                                                                                        \
    extern "C" __global__ void philox_q_sample_##NAME(const T* x0, const long long* t, const T* a,           \
                                                      const T* s, unsigned long long seed,                   \
                                                      unsigned long long offset, long long batch,            \
                                                      long long m, T* out) {                                 \
        philox_q_sample<T>(x0, t, a, s, seed, offset, batch, m, out);                                        \
    }                                                                                                        \
    extern "C" __global__ void philox_eps_loss_##NAME(const T* eps_hat, const T* w, unsigned long long seed, \
                                                      unsigned long long offset, long long batch,            \
                                                      long long m, T two_over_n, T* grad,                    \
                                                      double* partial) {                                     \
        philox_eps_loss<T>(eps_hat, w, seed, offset, batch, m, two_over_n, grad, partial);                   \
    }

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)
