"""impl="numba": single-pass, multi-threaded CPU kernels (Numba @njit(parallel=True)).

Math (docs/kernels.md eq. C1-C7), per sample b with coefficients gathered from the schedule by t_b:
    q_sample      x_t  = a_b x0 + s_b eps                      a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t)
    eps_loss      L    = (1/N) sum_b w_b sum_i d_bi^2,  g = ((2/N) w_b) d,   d = eps_hat - eps
    reverse_step  x_{t-1} = r_b (x_t - e_b eps_hat) + sigma_b z          (eq. C4, no clipping)
                  x0_hat = clip(u_b x_t - v_b eps_hat, -1, 1); x_{t-1} = c1_b x0_hat + c2_b x_t + sigma_b z

Bytes model (n elements of size s, each input read once, each output written once):
    q_sample 3ns, eps_loss 3ns, reverse_step 4ns. Every kernel is memory bound (< 1 flop/byte).

Layout: the data is viewed as (B, M) with M the elements per sample. Work is cut into fixed
chunks of CHUNK elements inside one sample; one `prange` runs over all (sample, chunk) pairs,
and each chunk is a loop over 1-D slices (x[b, lo:hi]) that LLVM vectorises. Indexing
x[b, i] directly in the inner loop does not vectorise (about 6x slower, measured), nor does a
per-element division i // M.
Because the chunks do not depend on the thread count, the loss's partial sums, added in chunk
order, give the same bits with 1 or 16 threads.

Coefficient tables come in the data's dtype (tables.py), so float32 data is computed in
float32 like the reference. Runs unchanged (slowly) under NUMBA_DISABLE_JIT=1 for debugging.
"""
import numpy as np
from numba import njit, prange

from . import philox, tables

NAME = "numba"
BACKENDS = ("numpy",)
AUTO_RANK = {"numpy": 2}


def probe():
    return True  # Numba is a dependency; this module imported, so it runs


CHUNK = 16384  # elements per work item: 64 KiB of float32, large enough to amortise the loop set-up


# ---------------------------------------------------------------- kernels

@njit(parallel=True, cache=True)
def _q_sample(x0, t, eps, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, out):
    batch, m = x0.shape
    k = (m + CHUNK - 1) // CHUNK
    for j in prange(batch * k):
        b = j // k
        lo = (j - b * k) * CHUNK
        hi = min(lo + CHUNK, m)
        a = sqrt_alpha_bar[t[b]]
        s = sqrt_one_minus_alpha_bar[t[b]]
        x0_c, eps_c, out_c = x0[b, lo:hi], eps[b, lo:hi], out[b, lo:hi]
        for i in range(hi - lo):
            out_c[i] = a * x0_c[i] + s * eps_c[i]


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _eps_loss(eps_hat, eps, w, grad):
    """Writes the gradient; returns the loss. Partial sums per chunk in float64, added in chunk order.

    Reassociation lets LLVM vectorise the sum; the gradient is one multiply by the per-sample
    scale (2/N) w_b, which no reassociation can change, so it equals the reference bit for bit.
    """
    batch, m = eps_hat.shape
    k = (m + CHUNK - 1) // CHUNK
    n = batch * m
    two_over_n = eps_hat.dtype.type(2.0 / n)
    partial = np.empty(batch * k, dtype=np.float64)
    for j in prange(batch * k):
        b = j // k
        lo = (j - b * k) * CHUNK
        hi = min(lo + CHUNK, m)
        scale = two_over_n * w[b]
        eps_hat_c, eps_c, grad_c = eps_hat[b, lo:hi], eps[b, lo:hi], grad[b, lo:hi]
        acc = 0.0
        for i in range(hi - lo):
            d = eps_hat_c[i] - eps_c[i]
            grad_c[i] = scale * d
            acc += np.float64(d) * np.float64(d)
        partial[j] = np.float64(w[b]) * acc
    total = 0.0
    for j in range(batch * k):  # fixed order: the result does not depend on the thread count
        total += partial[j]
    return total / n


@njit(parallel=True, cache=True)
def _reverse_eps(x_t, t, eps_hat, z, recip_sqrt_alpha, eps_coef, sigma, out):
    batch, m = x_t.shape
    k = (m + CHUNK - 1) // CHUNK
    for j in prange(batch * k):
        b = j // k
        lo = (j - b * k) * CHUNK
        hi = min(lo + CHUNK, m)
        r, e, sg = recip_sqrt_alpha[t[b]], eps_coef[t[b]], sigma[t[b]]
        x_c, eps_hat_c, z_c, out_c = x_t[b, lo:hi], eps_hat[b, lo:hi], z[b, lo:hi], out[b, lo:hi]
        for i in range(hi - lo):
            out_c[i] = r * (x_c[i] - e * eps_hat_c[i]) + sg * z_c[i]


@njit(parallel=True, cache=True)
def _reverse_clip(x_t, t, eps_hat, z, recip_sqrt_alpha_bar, recipm1, coef1, coef2, sigma, out):
    batch, m = x_t.shape
    k = (m + CHUNK - 1) // CHUNK
    one = x_t.dtype.type(1.0)
    for j in prange(batch * k):
        b = j // k
        lo = (j - b * k) * CHUNK
        hi = min(lo + CHUNK, m)
        u, v = recip_sqrt_alpha_bar[t[b]], recipm1[t[b]]
        c1, c2, sg = coef1[t[b]], coef2[t[b]], sigma[t[b]]
        x_c, eps_hat_c, z_c, out_c = x_t[b, lo:hi], eps_hat[b, lo:hi], z[b, lo:hi], out[b, lo:hi]
        for i in range(hi - lo):
            x0_hat = min(max(u * x_c[i] - v * eps_hat_c[i], -one), one)
            out_c[i] = c1 * x0_hat + c2 * x_c[i] + sg * z_c[i]


# ---------------------------------------------------------------- launchers

def _rows(a):
    """The (B, M) C-contiguous view the kernels index (a copy only if a is not contiguous)."""
    return _as_rows(np.ascontiguousarray(a))


def _as_rows(a):
    """a reshaped to (B, M), M the elements per sample (spelled out: reshape(0, -1) is ambiguous)."""
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))


def _result(out, like):
    return np.empty(like.shape, like.dtype) if out is None else out


def q_sample(x0, t, eps, schedule, out=None):
    out = _result(out, x0)
    coefs = tables.get(schedule, ("sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"), x0.dtype)
    _q_sample(_rows(x0), t.astype(np.intp), _rows(eps), *coefs, _as_rows(out))
    return out


def eps_loss(eps_hat, eps, weights=None, out=None):
    grad = _result(out, eps_hat)
    w = np.ones(eps_hat.shape[0], eps_hat.dtype) if weights is None else weights.astype(eps_hat.dtype)
    loss = _eps_loss(_rows(eps_hat), _rows(eps), w, _as_rows(grad))
    return np.asarray(loss, dtype=eps_hat.dtype), grad


def reverse_step(x_t, t, eps_hat, z, schedule, variance="fixed_small", clip_x0=False, out=None):
    out = _result(out, x_t)
    data = (_rows(x_t), t.astype(np.intp), _rows(eps_hat), _rows(z))
    if clip_x0:
        names = ("recip_sqrt_alpha_bar", "recipm1_alpha_bar", "posterior_mean_coef1", "posterior_mean_coef2")
        kernel = _reverse_clip
    else:
        names, kernel = ("recip_sqrt_alpha", "eps_coef"), _reverse_eps
    coefs = tables.get(schedule, names + ("sigma_" + variance,), x_t.dtype)
    kernel(*data, *coefs, _as_rows(out))
    return out


# ---------------------------------------------------------------- in-kernel noise (Philox4x32-10, philox.py)
# The noise is not read from memory but generated from (seed, offset): q_sample moves 2 n s bytes
# instead of 3, eps_loss 2 n s instead of 3 (plus the compute of Philox and Box-Muller).

_gauss4 = philox.scalar_generator(njit)
BLOCKS_PER_CHUNK = CHUNK // 4  # one Philox call gives four elements


@njit(parallel=True, cache=True)
def _philox_normal(k0, k1, offset, out):
    batch, m = out.shape
    blocks = (m + 3) // 4
    k = (blocks + BLOCKS_PER_CHUNK - 1) // BLOCKS_PER_CHUNK
    for j in prange(batch * k):
        b = j // k
        q_lo = (j - b * k) * BLOCKS_PER_CHUNK
        out_row, sample = out[b], offset + np.uint64(b)
        for q in range(q_lo, min(q_lo + BLOCKS_PER_CHUNK, blocks)):
            noise = _gauss4(np.uint64(q), sample, k0, k1)
            for lane in range(min(4, m - 4 * q)):
                out_row[4 * q + lane] = noise[lane]


@njit(parallel=True, cache=True)
def _philox_q_sample(x0, t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, k0, k1, offset, out):
    batch, m = x0.shape
    blocks = (m + 3) // 4
    k = (blocks + BLOCKS_PER_CHUNK - 1) // BLOCKS_PER_CHUNK
    for j in prange(batch * k):
        b = j // k
        q_lo = (j - b * k) * BLOCKS_PER_CHUNK
        a, s = sqrt_alpha_bar[t[b]], sqrt_one_minus_alpha_bar[t[b]]
        x_row, out_row, sample = x0[b], out[b], offset + np.uint64(b)
        for q in range(q_lo, min(q_lo + BLOCKS_PER_CHUNK, blocks)):
            noise = _gauss4(np.uint64(q), sample, k0, k1)
            for lane in range(min(4, m - 4 * q)):
                i = 4 * q + lane
                out_row[i] = a * x_row[i] + s * x0.dtype.type(noise[lane])


@njit(parallel=True, cache=True)
def _philox_eps_loss(eps_hat, k0, k1, offset, w, grad):
    batch, m = eps_hat.shape
    blocks = (m + 3) // 4
    k = (blocks + BLOCKS_PER_CHUNK - 1) // BLOCKS_PER_CHUNK
    two_over_n = eps_hat.dtype.type(2.0 / (batch * m))
    partial = np.empty(batch * k, dtype=np.float64)
    for j in prange(batch * k):
        b = j // k
        q_lo = (j - b * k) * BLOCKS_PER_CHUNK
        scale, eps_hat_row, grad_row, sample = two_over_n * w[b], eps_hat[b], grad[b], offset + np.uint64(b)
        acc = 0.0
        for q in range(q_lo, min(q_lo + BLOCKS_PER_CHUNK, blocks)):
            noise = _gauss4(np.uint64(q), sample, k0, k1)
            for lane in range(min(4, m - 4 * q)):
                i = 4 * q + lane
                d = eps_hat_row[i] - eps_hat.dtype.type(noise[lane])
                grad_row[i] = scale * d
                acc += np.float64(d) * np.float64(d)
        partial[j] = np.float64(w[b]) * acc
    total = 0.0
    for j in range(batch * k):
        total += partial[j]
    return total / (batch * m)


def normal(seed, shape, offset=0, dtype=np.float32):
    out = np.empty(shape, dtype)
    _philox_normal(*philox.key(seed), np.uint64(offset), _as_rows(out))
    return out


def q_sample_philox(x0, t, seed, schedule, offset=0, out=None):
    out = _result(out, x0)
    coefs = tables.get(schedule, ("sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"), x0.dtype)
    _philox_q_sample(_rows(x0), t.astype(np.intp), *coefs, *philox.key(seed), np.uint64(offset),
                     _as_rows(out))
    return out


def eps_loss_philox(eps_hat, seed, offset=0, weights=None, out=None):
    grad = _result(out, eps_hat)
    w = np.ones(eps_hat.shape[0], eps_hat.dtype) if weights is None else weights.astype(eps_hat.dtype)
    loss = _philox_eps_loss(_rows(eps_hat), *philox.key(seed), np.uint64(offset), w,
                            _as_rows(grad))
    return np.asarray(loss, dtype=eps_hat.dtype), grad
