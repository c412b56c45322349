// Fused CUDA C kernels for the three hot diffusion operations (impl="cupy", loaded by cupy_raw.py).
//
// Math (docs/kernels.md eq. C1-C7); element i belongs to sample b = i / m (m elements per sample),
// coefficient tables have length T+1 and are gathered by t[b] inside the kernel:
//   q_sample      out[i]  = a[t_b] x0[i] + s[t_b] eps[i]              a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar)
//   eps_loss      grad[i] = (2/n) w_b d[i],   loss = (1/n) sum_i w_b d[i]^2,   d = eps_hat - eps
//   reverse_eps   out[i]  = r[t_b] (x_t[i] - e[t_b] eps_hat[i]) + sigma[t_b] z[i]           (eq. C4)
//   reverse_clip  out[i]  = c1[t_b] clip(u[t_b] x_t[i] - v[t_b] eps_hat[i], -1, 1) + c2[t_b] x_t[i] + sigma[t_b] z[i]
//
// Bytes model (n elements of s bytes): q_sample and eps_loss move 3 n s, reverse_step 4 n s;
// all are memory bound, so the target is the device's copy bandwidth.
//
// Every kernel is a grid-stride loop over packs of W elements: W = 1 (any layout) or
// W = 16 / sizeof(T) (one 128-bit load or store per array), used when m % W == 0 and every
// pointer is 16-byte aligned, so a pack never straddles two samples.
// The loss is a two-stage reduction with a grid fixed by n: stage 1 sums per thread in double and
// reduces each block in shared memory with a fixed tree; stage 2 (one block) adds the partials the
// same way (block_reduce.cuh). The result does not depend on thread scheduling.
//
// Compile check (as tests/test_kernels_cuda_c.py does): nvcc -ptx -arch=sm_80 diffusion_ops.cu

#include "block_reduce.cuh"

template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
    T v[W];
};

template <typename T, int W>
__device__ __forceinline__ Pack<T, W> load(const T* p, long long k) {
    return reinterpret_cast<const Pack<T, W>*>(p)[k];
}

template <typename T, int W>
__device__ __forceinline__ void store(T* p, long long k, const Pack<T, W>& value) {
    reinterpret_cast<Pack<T, W>*>(p)[k] = value;
}

// ---------------------------------------------------------------- eq. (C1): q_sample

template <typename T, int W>
__device__ void q_sample(const T* x0, const long long* t, const T* eps, const T* sqrt_alpha_bar,
                         const T* sqrt_one_minus_alpha_bar, long long m, long long n, T* out) {
    for (long long k = first_index(); k < n / W; k += grid_stride()) {
        const long long tb = t[k * W / m];
        const T a = sqrt_alpha_bar[tb], s = sqrt_one_minus_alpha_bar[tb];
        const Pack<T, W> x = load<T, W>(x0, k), e = load<T, W>(eps, k);
        Pack<T, W> y;
#pragma unroll
        for (int j = 0; j < W; ++j) y.v[j] = a * x.v[j] + s * e.v[j];
        store<T, W>(out, k, y);
    }
}

// ---------------------------------------------------------------- eq. (C2)-(C3): eps_loss

template <typename T, int W>
__device__ void eps_loss_partial(const T* eps_hat, const T* eps, const T* w, long long m, long long n,
                                 T two_over_n, T* grad, double* partial) {
    __shared__ double cache[THREADS];
    double acc = 0.0;
    for (long long k = first_index(); k < n / W; k += grid_stride()) {
        const T wb = w[k * W / m], scale = two_over_n * wb;
        const Pack<T, W> a = load<T, W>(eps_hat, k), b = load<T, W>(eps, k);
        Pack<T, W> g;
#pragma unroll
        for (int j = 0; j < W; ++j) {
            const T d = a.v[j] - b.v[j];
            g.v[j] = scale * d;
            acc += (double)wb * (double)d * (double)d;
        }
        store<T, W>(grad, k, g);
    }
    cache[threadIdx.x] = acc;
    block_sum(cache);
    if (threadIdx.x == 0) partial[blockIdx.x] = cache[0];
}

// Stage 2 of the loss is sum_partials (block_reduce.cuh).

// ---------------------------------------------------------------- eq. (C4)-(C7): reverse_step

template <typename T, int W>
__device__ void reverse_eps(const T* x_t, const long long* t, const T* eps_hat, const T* z,
                            const T* recip_sqrt_alpha, const T* eps_coef, const T* sigma,
                            long long m, long long n, T* out) {
    for (long long k = first_index(); k < n / W; k += grid_stride()) {
        const long long tb = t[k * W / m];
        const T r = recip_sqrt_alpha[tb], e = eps_coef[tb], sg = sigma[tb];
        const Pack<T, W> x = load<T, W>(x_t, k), eh = load<T, W>(eps_hat, k), zz = load<T, W>(z, k);
        Pack<T, W> y;
#pragma unroll
        for (int j = 0; j < W; ++j) y.v[j] = r * (x.v[j] - e * eh.v[j]) + sg * zz.v[j];
        store<T, W>(out, k, y);
    }
}

template <typename T, int W>
__device__ void reverse_clip(const T* x_t, const long long* t, const T* eps_hat, const T* z,
                             const T* recip_sqrt_alpha_bar, const T* recipm1, const T* coef1,
                             const T* coef2, const T* sigma, long long m, long long n, T* out) {
    for (long long k = first_index(); k < n / W; k += grid_stride()) {
        const long long tb = t[k * W / m];
        const T u = recip_sqrt_alpha_bar[tb], v = recipm1[tb];
        const T c1 = coef1[tb], c2 = coef2[tb], sg = sigma[tb];
        const Pack<T, W> x = load<T, W>(x_t, k), eh = load<T, W>(eps_hat, k), zz = load<T, W>(z, k);
        Pack<T, W> y;
#pragma unroll
        for (int j = 0; j < W; ++j) {
            const T x0_hat = min(max(u * x.v[j] - v * eh.v[j], T(-1)), T(1));
            y.v[j] = c1 * x0_hat + c2 * x.v[j] + sg * zz.v[j];
        }
        store<T, W>(out, k, y);
    }
}

// ---------------------------------------------------------------- entry points: <op>_<f32|f64>x<W>

#define ENTRY_POINTS(T, NAME, W)                                                                       \
    extern "C" __global__ void q_sample_##NAME##x##W(const T* x0, const long long* t, const T* eps,    \
                                                     const T* a, const T* s, long long m, long long n, \
                                                     T* out) {                                         \
        q_sample<T, W>(x0, t, eps, a, s, m, n, out);                                                   \
    }                                                                                                  \
    extern "C" __global__ void eps_loss_partial_##NAME##x##W(const T* eps_hat, const T* eps,           \
                                                             const T* w, long long m, long long n,     \
                                                             T two_over_n, T* grad, double* partial) { \
        eps_loss_partial<T, W>(eps_hat, eps, w, m, n, two_over_n, grad, partial);                      \
    }                                                                                                  \
    extern "C" __global__ void reverse_eps_##NAME##x##W(const T* x_t, const long long* t,              \
                                                        const T* eps_hat, const T* z, const T* r,      \
                                                        const T* e, const T* sigma, long long m,       \
                                                        long long n, T* out) {                         \
        reverse_eps<T, W>(x_t, t, eps_hat, z, r, e, sigma, m, n, out);                                 \
    }                                                                                                  \
    extern "C" __global__ void reverse_clip_##NAME##x##W(                                              \
        const T* x_t, const long long* t, const T* eps_hat, const T* z, const T* u, const T* v,        \
        const T* c1, const T* c2, const T* sigma, long long m, long long n, T* out) {                  \
        reverse_clip<T, W>(x_t, t, eps_hat, z, u, v, c1, c2, sigma, m, n, out);                        \
    }

ENTRY_POINTS(float, f32, 1)
ENTRY_POINTS(float, f32, 4)
ENTRY_POINTS(double, f64, 1)
ENTRY_POINTS(double, f64, 2)
