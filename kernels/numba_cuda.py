"""impl="numba_cuda": the three kernels as Numba @cuda.jit kernels (grid-stride loops).

Math (docs/kernels.md eq. C1-C7), element i of sample b = i // M (M elements per sample):
    q_sample      x_t[i]     = a[t_b] x0[i] + s[t_b] eps[i]
    eps_loss      grad[i]    = ((2/N) w_b) d[i],  d = eps_hat - eps;   L = (1/N) sum_i w_b d[i]^2
    reverse_step  x_{t-1}[i] = r[t_b] (x_t[i] - e[t_b] eps_hat[i]) + sigma[t_b] z[i]          (eq. C4)
                  or, clipped, c1[t_b] clip(u[t_b] x_t[i] - v[t_b] eps_hat[i], -1, 1) + c2[t_b] x_t[i] + sigma[t_b] z[i]
Coefficient tables (length T+1, the data's dtype) are gathered by t inside the kernel.

Bytes model: q_sample and eps_loss move 3 N s bytes, reverse_step 4 N s (s = element size).

The loss is a two-stage reduction with a fixed grid (a function of N only): stage 1, each
block sums its grid-stride elements per thread in float64 and reduces them in shared memory
with a fixed tree; stage 2, one block adds the per-block partials the same way. The result
therefore does not depend on thread scheduling or on the device.

On a GPU the kernels take CuPy arrays (via __cuda_array_interface__); under
NUMBA_ENABLE_CUDASIM=1 they take NumPy arrays and run on the CPU, which is how CI tests them.
"""
import importlib
import math
import os

import numpy as np
from numba import cuda, float64, uint64

from minidiff.backend import xp_of

from . import philox, tables

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
NAME = "numba_cuda"
BACKENDS = ("numpy", "cupy") if SIMULATED else ("cupy",)  # NumPy arrays only under the simulator
AUTO_RANK = {"cupy": 1}  # after the CUDA C kernels; never "auto" for NumPy arrays


def probe():
    """Whether a CUDA device is visible and Numba can compile and launch a kernel on it."""
    try:
        if not cuda.is_available():
            return False
        one = cuda.to_device(np.zeros(1, np.float32))
        _probe_kernel[1, 1](one)
        return bool(one.copy_to_host()[0] == 1.0)
    except Exception:  # a CUDA driver error without a GPU, or a Numba that cannot compile for this NumPy
        return False


@cuda.jit
def _probe_kernel(out):
    out[0] = 1.0

THREADS = 128     # threads per block (a power of two, for the tree reduction)
MAX_BLOCKS = 1024  # grid-stride loops cover the rest; also the most partials stage 2 adds


def grid(n):
    """Blocks for n elements: enough to cover them once, capped at MAX_BLOCKS (a function of n only)."""
    return max(1, min(MAX_BLOCKS, math.ceil(n / THREADS)))


# ---------------------------------------------------------------- kernels

@cuda.jit
def _q_sample(x0, t, eps, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, m, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        tb = t[i // m]
        out[i] = sqrt_alpha_bar[tb] * x0[i] + sqrt_one_minus_alpha_bar[tb] * eps[i]


@cuda.jit(device=True)
def _block_sum(cache):
    """Tree-reduce cache[0:THREADS] in shared memory; cache[0] holds the sum afterwards."""
    tid = cuda.threadIdx.x
    step = THREADS // 2
    while step > 0:
        cuda.syncthreads()
        if tid < step:
            cache[tid] += cache[tid + step]
        step //= 2
    cuda.syncthreads()


@cuda.jit
def _eps_loss_partial(eps_hat, eps, w, m, two_over_n, grad, partial):
    """Stage 1: write the gradient; partial[block] = sum over this block's elements of w_b d^2."""
    cache = cuda.shared.array(THREADS, float64)
    acc = 0.0
    for i in range(cuda.grid(1), grad.size, cuda.gridsize(1)):
        wb = w[i // m]
        d = eps_hat[i] - eps[i]
        grad[i] = (two_over_n * wb) * d
        acc += float64(wb) * float64(d) * float64(d)
    cache[cuda.threadIdx.x] = acc
    _block_sum(cache)
    if cuda.threadIdx.x == 0:
        partial[cuda.blockIdx.x] = cache[0]


@cuda.jit
def _sum_partials(partial, result):
    """Stage 2 (one block): result[0] = sum of the partials, in a fixed order."""
    cache = cuda.shared.array(THREADS, float64)
    acc = 0.0
    for j in range(cuda.threadIdx.x, partial.size, THREADS):
        acc += partial[j]
    cache[cuda.threadIdx.x] = acc
    _block_sum(cache)
    if cuda.threadIdx.x == 0:
        result[0] = cache[0]


@cuda.jit
def _reverse_eps(x_t, t, eps_hat, z, recip_sqrt_alpha, eps_coef, sigma, m, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        tb = t[i // m]
        out[i] = recip_sqrt_alpha[tb] * (x_t[i] - eps_coef[tb] * eps_hat[i]) + sigma[tb] * z[i]


@cuda.jit
def _reverse_clip(x_t, t, eps_hat, z, recip_sqrt_alpha_bar, recipm1, coef1, coef2, sigma, m, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        tb = t[i // m]
        x0_hat = min(max(recip_sqrt_alpha_bar[tb] * x_t[i] - recipm1[tb] * eps_hat[i], -1.0), 1.0)
        out[i] = coef1[tb] * x0_hat + coef2[tb] * x_t[i] + sigma[tb] * z[i]


# ---------------------------------------------------------------- launchers

def _flat(a):
    return xp_of(a).ascontiguousarray(a).reshape(-1)


def _result(out, like):
    return xp_of(like).empty(like.shape, like.dtype) if out is None else out


def _per_sample(a):
    return a.size // a.shape[0]


def _tables(schedule, names, like):
    """Coefficient tables in like's dtype, on like's backend (cached per schedule)."""
    return tables.get(schedule, names, like.dtype, xp_of(like))


def q_sample(x0, t, eps, schedule, out=None):
    out = _result(out, x0)
    coefs = _tables(schedule, ("sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"), x0)
    _q_sample[grid(x0.size), THREADS](_flat(x0), t.astype(np.int64), _flat(eps), *coefs, _per_sample(x0),
                                      out.reshape(-1))
    return out


def eps_loss(eps_hat, eps, weights=None, out=None):
    xp = xp_of(eps_hat)
    grad = _result(out, eps_hat)
    w = xp.ones(eps_hat.shape[0], eps_hat.dtype) if weights is None else weights.astype(eps_hat.dtype)
    blocks = grid(eps_hat.size)
    partial, result = xp.empty(blocks, np.float64), xp.empty(1, np.float64)
    two_over_n = eps_hat.dtype.type(2.0 / eps_hat.size)
    _eps_loss_partial[blocks, THREADS](_flat(eps_hat), _flat(eps), w, _per_sample(eps_hat), two_over_n,
                                       grad.reshape(-1), partial)
    _sum_partials[1, THREADS](partial, result)
    return (result[0] / eps_hat.size).astype(eps_hat.dtype).reshape(()), grad


def reverse_step(x_t, t, eps_hat, z, schedule, variance="fixed_small", clip_x0=False, out=None):
    out = _result(out, x_t)
    data = (_flat(x_t), t.astype(np.int64), _flat(eps_hat), _flat(z))
    if clip_x0:
        names = ("recip_sqrt_alpha_bar", "recipm1_alpha_bar", "posterior_mean_coef1", "posterior_mean_coef2")
        kernel = _reverse_clip
    else:
        names, kernel = ("recip_sqrt_alpha", "eps_coef"), _reverse_eps
    coefs = _tables(schedule, names + ("sigma_" + variance,), x_t)
    kernel[grid(x_t.size), THREADS](*data, *coefs, _per_sample(x_t), out.reshape(-1))
    return out


# ---------------------------------------------------------------- in-kernel noise (Philox4x32-10, philox.py)
# One thread per Philox block (four elements of one sample). The noise is cast to the data's dtype
# by storing it into the output first, which keeps the kernels free of dtype-specific code.

_gauss4 = philox.scalar_generator(cuda.jit(device=True))


@cuda.jit(device=True)
def _store_noise(out, base, q, m, k0, k1, sample):
    """out[base + 4q + lane] = the noise of lane, for the lanes inside the sample."""
    n0, n1, n2, n3 = _gauss4(uint64(q), sample, k0, k1)
    i = 4 * q
    out[base + i] = n0
    if i + 1 < m:
        out[base + i + 1] = n1
    if i + 2 < m:
        out[base + i + 2] = n2
    if i + 3 < m:
        out[base + i + 3] = n3


@cuda.jit
def _philox_normal(k0, k1, offset, batch, m, out):
    blocks = (m + 3) // 4
    for g in range(cuda.grid(1), batch * blocks, cuda.gridsize(1)):
        b = g // blocks
        _store_noise(out, b * m, g - b * blocks, m, k0, k1, offset + uint64(b))


@cuda.jit
def _philox_q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, k0, k1, offset, m, out):
    blocks = (m + 3) // 4
    for g in range(cuda.grid(1), t.size * blocks, cuda.gridsize(1)):
        b = g // blocks
        q = g - b * blocks
        _store_noise(out, b * m, q, m, k0, k1, offset + uint64(b))
        tb = t[b]
        for i in range(b * m + 4 * q, b * m + min(4 * q + 4, m)):
            out[i] = sqrt_alpha_bar[tb] * x0[i] + sqrt_one_minus_alpha_bar[tb] * out[i]


@cuda.jit
def _philox_eps_loss_partial(eps_hat, w, k0, k1, offset, m, two_over_n, grad, partial):
    cache = cuda.shared.array(THREADS, float64)
    blocks = (m + 3) // 4
    acc = 0.0
    for g in range(cuda.grid(1), w.size * blocks, cuda.gridsize(1)):
        b = g // blocks
        q = g - b * blocks
        _store_noise(grad, b * m, q, m, k0, k1, offset + uint64(b))
        wb = w[b]
        for i in range(b * m + 4 * q, b * m + min(4 * q + 4, m)):
            d = eps_hat[i] - grad[i]
            grad[i] = (two_over_n * wb) * d
            acc += float64(wb) * float64(d) * float64(d)
    cache[cuda.threadIdx.x] = acc
    _block_sum(cache)
    if cuda.threadIdx.x == 0:
        partial[cuda.blockIdx.x] = cache[0]


def _philox_grid(batch, m):
    return grid(batch * ((m + 3) // 4)), THREADS


def normal(seed, shape, offset=0, dtype=np.float32):
    xp = np if SIMULATED else importlib.import_module("cupy")
    out = xp.empty(shape, dtype)
    m = out.size // shape[0]
    _philox_normal[_philox_grid(shape[0], m)](*philox.key(seed), np.uint64(offset), shape[0], m, out.reshape(-1))
    return out


def q_sample_philox(x0, t, seed, schedule, offset=0, out=None):
    out = _result(out, x0)
    coefs = _tables(schedule, ("sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"), x0)
    m = _per_sample(x0)
    _philox_q_sample[_philox_grid(x0.shape[0], m)](_flat(x0), t.astype(np.int64), *coefs, *philox.key(seed),
                                                   np.uint64(offset), m, out.reshape(-1))
    return out


def eps_loss_philox(eps_hat, seed, offset=0, weights=None, out=None):
    xp = xp_of(eps_hat)
    grad = _result(out, eps_hat)
    w = xp.ones(eps_hat.shape[0], eps_hat.dtype) if weights is None else weights.astype(eps_hat.dtype)
    m = _per_sample(eps_hat)
    blocks = _philox_grid(eps_hat.shape[0], m)[0]
    partial, result = xp.empty(blocks, np.float64), xp.empty(1, np.float64)
    _philox_eps_loss_partial[blocks, THREADS](_flat(eps_hat), w, *philox.key(seed), np.uint64(offset), m,
                                              eps_hat.dtype.type(2.0 / eps_hat.size), grad.reshape(-1), partial)
    _sum_partials[1, THREADS](partial, result)
    return (result[0] / eps_hat.size).astype(eps_hat.dtype).reshape(()), grad
