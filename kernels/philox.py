"""Philox4x32-10 and the Gaussian noise it defines, bit-identical on every backend (docs/kernels.md §6).

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a
128-bit counter c = (c0, c1, c2, c3) and a 64-bit key k = (k0, k1) to four 32-bit words by ten rounds
    (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0,  lo(M1 c2),  hi(M0 c0) ^ c3 ^ k1,  lo(M0 c0)),
with the key bumped by the Weyl constants (W0, W1) mod 2^32 before rounds 2..10.

Noise layout: element i of sample b of a (B, ...) array (M elements per sample) is lane i % 4 of
    counter = (i // 4, lo32(offset + b), hi32(offset + b), 0),   key = (lo32(seed), hi32(seed)),
whose words (w0, w1, w2, w3) give four N(0, 1) values by Box-Muller on (w0, w1) and (w2, w3):
    n = r cos(theta), n' = r sin(theta),  r^2 = -2 log((w0 + 1) 2^-32),  theta = 2 pi w1 2^-32.
The noise of sample b depends only on (seed, offset + b, i), not on the batch split or threads.

Bit-identical everywhere: log, cos and sin are not correctly rounded and differ between libms
(NumPy's SIMD log differs from glibc's on ~0.3 % of inputs), so they are computed here from
+ - * / and sqrt only, which IEEE 754 rounds exactly on every backend: log by exact power-of-two
range reduction and the atanh series, cos/sin by exact quadrant reduction of the integer w1 and
Taylor series on [0, pi/2). All in float64 (absolute error < 1e-15), then cast to the data's dtype.
`philox4x32_10` uses only * >> & ^ + and serves NumPy (on arrays), Numba and Numba CUDA (on
scalars); the transforms exist as an array version (the NumPy reference) and a scalar version
(`scalar_generator`, compiled by Numba); philox.cu is the CUDA C transcription (built with
--fmad=false so no multiply-add is fused). tests/test_kernels_philox.py checks them bit for bit.
"""
import math

import numpy as np

MASK32, SHIFT32 = np.uint64(0xFFFFFFFF), np.uint64(32)
MASK30, SHIFT30 = np.uint64(0x3FFFFFFF), np.uint64(30)
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)   # round multipliers
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)   # key schedule (Weyl) increments
ZERO = np.uint64(0)
LN2 = math.log(2.0)
HALF_PI = math.pi / 2
SQRT2 = math.sqrt(2.0)
TWO_POW_M30 = 2.0 ** -30
ATANH = np.array([1.0 / (2 * k + 1) for k in range(11)])                           # log x = 2 s sum s^2k/(2k+1)
SIN = np.array([(-1) ** k / math.factorial(2 * k + 1) for k in range(10)])         # sin a = a sum SIN_k a^2k
COS = np.array([(-1) ** k / math.factorial(2 * k) for k in range(11)])             # cos a = sum COS_k a^2k


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """The four 32-bit output words for counter (c0..c3) and key (k0, k1), all uint64 holding 32 bits."""
    for r in range(10):
        if r > 0:
            k0 = (k0 + W0) & MASK32
            k1 = (k1 + W1) & MASK32
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & MASK32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


def key(seed):
    """(k0, k1) = (lo32(seed), hi32(seed)) for a seed in 0..2^64 - 1."""
    seed = np.uint64(seed)
    return seed & MASK32, seed >> SHIFT32


# ---------------------------------------------------------------- array transforms (the reference)

def _horner(coefs, x):
    p = coefs[-1] + 0.0 * x
    for c in coefs[-2::-1]:
        p = p * x + c
    return p


def neg2log_uniform(w):
    """r^2 = -2 log((w + 1) 2^-32) for arrays of 32-bit words w (float64)."""
    x = w + 1.0                                            # in [1, 2^32], exact
    e = np.zeros(x.shape)
    for bits in (16, 8, 4, 2, 1):                          # x = m 2^e exactly, m in [1, 2)
        big = x >= 2.0 ** bits
        x, e = np.where(big, x * 2.0 ** -bits, x), np.where(big, e + bits, e)
    high = x > SQRT2                                       # m in [sqrt(1/2), sqrt(2)]
    x, e = np.where(high, x * 0.5, x), np.where(high, e + 1.0, e)
    s = (x - 1.0) / (x + 1.0)
    log_x = 2.0 * s * _horner(ATANH, s * s)
    return -2.0 * ((e - 32.0) * LN2 + log_x)


def cos_sin_2pi(w):
    """(cos theta, sin theta), theta = 2 pi w 2^-32, for arrays of 32-bit words w (uint64)."""
    quadrant = w >> SHIFT30
    a = ((w & MASK30) * TWO_POW_M30) * HALF_PI            # theta = quadrant pi/2 + a, a in [0, pi/2)
    a2 = a * a
    c, s = _horner(COS, a2), a * _horner(SIN, a2)
    cos = np.select([quadrant == 0, quadrant == 1, quadrant == 2], [c, -s, -c], s)
    sin = np.select([quadrant == 0, quadrant == 1, quadrant == 2], [s, c, -s], -c)
    return cos, sin


def normal(seed, shape, offset=0, dtype=np.float32):
    """The Gaussian noise of `shape` (B, ...) for (seed, offset) as a NumPy array of dtype (the reference)."""
    batch, m = shape[0], math.prod(shape[1:])
    blocks = -(-m // 4)
    grid = (batch, blocks)
    sample = np.uint64(offset) + np.arange(batch, dtype=np.uint64)[:, None]
    counter = (np.broadcast_to(np.arange(blocks, dtype=np.uint64), grid), np.broadcast_to(sample & MASK32, grid),
               np.broadcast_to(sample >> SHIFT32, grid), np.zeros(grid, np.uint64))
    w0, w1, w2, w3 = philox4x32_10(*counter, *key(seed))
    r01, r23 = np.sqrt(neg2log_uniform(w0)), np.sqrt(neg2log_uniform(w2))
    (c01, s01), (c23, s23) = cos_sin_2pi(w1), cos_sin_2pi(w3)
    lanes = np.stack([r01 * c01, r01 * s01, r23 * c23, r23 * s23], axis=-1).reshape(batch, blocks * 4)[:, :m]
    return lanes.reshape(shape).astype(dtype)


# ---------------------------------------------------------------- scalar transforms (Numba, Numba CUDA)

def _neg2log_uniform_scalar(w):
    x = w + 1.0
    e = 0.0
    for bits in (16, 8, 4, 2, 1):
        if x >= 2.0 ** bits:
            x = x * 2.0 ** -bits
            e = e + bits
    if x > SQRT2:
        x = x * 0.5
        e = e + 1.0
    s = (x - 1.0) / (x + 1.0)
    s2 = s * s
    p = ATANH[10]
    for k in range(9, -1, -1):
        p = p * s2 + ATANH[k]
    return -2.0 * ((e - 32.0) * LN2 + 2.0 * s * p)


def _cos_sin_2pi_scalar(w):
    quadrant = w >> SHIFT30
    a = ((w & MASK30) * TWO_POW_M30) * HALF_PI
    a2 = a * a
    c = COS[10]
    for k in range(9, -1, -1):
        c = c * a2 + COS[k]
    s = SIN[9]
    for k in range(8, -1, -1):
        s = s * a2 + SIN[k]
    s = a * s
    if quadrant == 0:
        return c, s
    if quadrant == 1:
        return -s, c
    if quadrant == 2:
        return -c, -s
    return s, -c


def scalar_generator(jit):
    """gauss4(block, sample, k0, k1) -> the four normals of one counter, compiled by `jit`.

    jit is numba.njit or numba.cuda.jit(device=True); block and sample are uint64.
    """
    core, log_term, trig = jit(philox4x32_10), jit(_neg2log_uniform_scalar), jit(_cos_sin_2pi_scalar)

    def gauss4(block, sample, k0, k1):
        w0, w1, w2, w3 = core(block, sample & MASK32, sample >> SHIFT32, ZERO, k0, k1)
        r01, r23 = math.sqrt(log_term(w0)), math.sqrt(log_term(w2))
        c01, s01 = trig(w1)
        c23, s23 = trig(w3)
        return r01 * c01, r01 * s01, r23 * c23, r23 * s23
    return jit(gauss4)
