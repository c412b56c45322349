"""Group norm (and group norm then SiLU) forward and backward as Numba kernels (docs/layers.md M6-M7, M22, M25).

The NumPy closed form in `ops/norm.py` makes about six passes over the (B, C, *S) data forward
(mean, centring, variance, scale, shift) and seven backward, each a separate NumPy call with its own
temporary. Here one (sample, group) block is one work item, and every pass reads the block once:

    forward   pass 1: μ = Σ x / n,  pass 2: σ² = Σ (x − μ)² / n,  r = 1/√(σ² + ε)
              pass 3: y = x · a_c + h_c,   a_c = r γ_c,  h_c = β_c − μ a_c                  (eq. M22)
    backward  pass 1: S_c = Σ_s g,  T_c = Σ_s g (x − μ)        (per channel c of the block)
              pass 2: ∂L/∂x = g · r γ_c + x · k₁ + k₀,
                      k₁ = −r² m₂,  k₀ = μ r² m₂ − r m₁,  m₁ = Σ_c γ_c S_c / n,  m₂ = r Σ_c γ_c T_c / n

which is eq. M7 with (x − μ) multiplied out. Statistics and the per-block sums are accumulated in
float64; the outputs are written in x's dtype (float32 stays float32). Saved for backward: x itself (no
centred copy), μ and r. The kernels run on the calling thread: a (sample, group) block is a few thousand
numbers, too little to hand to other threads and wait for them (on a loaded machine each such hand-off can
cost a scheduler time slice). Runs unchanged (slowly) under NUMBA_DISABLE_JIT=1.

SiLU after group norm (eq. M25) runs the same passes: forward pass 3 writes z σ(z), z = x · a_c + h_c;
backward recomputes z and σ(z) per block, writes g_z = g σ(z)(1 + z(1 − σ(z))) into the block of ∂L/∂x and
runs the two backward passes above on it. Saved: x, μ and r, as for the group norm alone.
"""
import math
from decimal import Decimal

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


# ---------------------------------------------------------------- σ(z) that the compiler can vectorise
#
# NumPy arrays of float32 get their σ from NumPy's SIMD tanh; a Numba loop calling np.exp gets a scalar libm
# call per element (≈ 2.7 ns in float32 here, 3.5x NumPy's SiLU). So the fused kernels build e^u from
# arithmetic that vectorises: u = k ln 2 + ρ with k = round(u / ln 2), |ρ| ≤ ln 2 / 2,
#
#     e^u = 2^k · e^ρ,   2^k = the float with exponent field k + bias (a bit pattern, no arithmetic),
#     e^ρ = Σ_{j ≤ d} ρ^j / j!   (Taylor, Horner form; remainder ≤ (ln 2 / 2)^(d+1) / (d+1)!),
#
# d = 7 in float32 (remainder 5e-9, below its 6e-8 rounding), d = 13 in float64 (4e-18). ln 2 is split
# Cody-Waite style into a 9-bit head (k · head is exact) and a tail, so ρ keeps its relative accuracy.
# σ(z) = 1 / (1 + e^−z) with −z clamped to ±L (L = 87 in float32, 700 in float64: e^L stays finite);
# below −L, σ(z) is taken as 0 (true value < e^−L), so z σ(z) → 0 as z → −∞ and NaN stays NaN.

LN2_HEAD = 0.693359375
LN2_TAIL = float(Decimal(2).ln() - Decimal(LN2_HEAD))      # ln 2 − head to 28 digits, then rounded


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float whose IEEE-754 bit pattern is the integer `bits` (int32 -> float32, int64 -> float64)."""
    result = {types.int32: types.float32, types.int64: types.float64}[bits]

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType() if result == types.float32 else ir.DoubleType())
    return result(bits), codegen


def sigmoid(z):
    """σ(z) = 1 / (1 + e^−z) of a scalar; in compiled kernels, the vectorisable form above."""
    return 1 / (1 + np.exp(-z))


def _sigmoid_of(f, i, mantissa_bits, bias, limit, degree):
    """σ for float type f (integer type i of the same width): the construction above with these constants."""
    one, zero, log2e = f(1.0), f(0.0), f(1 / math.log(2))
    head, tail, lim, half = f(LN2_HEAD), f(LN2_TAIL), f(limit), f(0.5)
    taylor = tuple(f(1 / math.factorial(j)) for j in range(degree, -1, -1))   # 1/d!, ..., 1/1!, 1/0!

    def sigmoid_f(z):
        u = -z
        u = -lim if u < -lim else u                   # written so that a NaN passes through both clamps
        u = lim if u > lim else u
        k = np.floor(u * log2e + half)
        rho = (u - k * head) - k * tail
        e_rho = zero
        for c in taylor:
            e_rho = e_rho * rho + c
        e_u = e_rho * _float_from_bits(i((i(k) + i(bias)) << i(mantissa_bits)))
        return zero if z <= -lim else one / (one + e_u)
    return sigmoid_f


@overload(sigmoid, jit_options={"error_model": "numpy"})
def _sigmoid_compiled(z):
    if z == types.float32:
        return _sigmoid_of(np.float32, np.int32, 23, 127, 87.0, 7)
    if z == types.float64:
        return _sigmoid_of(np.float64, np.int64, 52, 1023, 700.0, 13)
    return None


@njit(cache=True, fastmath={"reassoc"}, inline="always")
def _moments(xb, eps):
    """Passes 1 and 2 over one (Cg, S) block: μ = Σ x / n and r = 1/√(Σ (x − μ)² / n + ε), in float64."""
    n = xb.size
    flat = xb.reshape(n)             # one loop over the block: a channel's S values are too few to vectorise
    total = 0.0
    for i in range(n):
        total += flat[i]
    mu = total / n
    sq = 0.0
    for i in range(n):
        d = flat[i] - mu
        sq += d * d
    return mu, 1.0 / np.sqrt(sq / n + eps)


@njit(cache=True, fastmath={"reassoc"})
def _forward(x, gamma, beta, eps, y, mean, rstd):
    """x, y (B, G, Cg, S); gamma, beta (G, Cg); writes y = x a_c + h_c and the float64 (B, G) μ and r."""
    B, G, Cg, S = x.shape
    for k in range(B * G):
        b = k // G
        grp = k - b * G
        mu, r = _moments(x[b, grp], eps)
        mean[b, grp] = mu
        rstd[b, grp] = r
        for c in range(Cg):
            a = r * gamma[grp, c]
            a_c = y.dtype.type(a)
            h_c = y.dtype.type(beta[grp, c] - mu * a)
            xc, yc = x[b, grp, c], y[b, grp, c]
            for s in range(S):
                yc[s] = xc[s] * a_c + h_c


@njit(cache=True, fastmath={"reassoc"})
def _forward_silu(x, gamma, beta, eps, y, mean, rstd):
    """As `_forward`, pass 3 writing y = z σ(z), z = x a_c + h_c (eq. M25's forward)."""
    B, G, Cg, S = x.shape
    for k in range(B * G):
        b = k // G
        grp = k - b * G
        mu, r = _moments(x[b, grp], eps)
        mean[b, grp] = mu
        rstd[b, grp] = r
        for c in range(Cg):
            a = r * gamma[grp, c]
            a_c = y.dtype.type(a)
            h_c = y.dtype.type(beta[grp, c] - mu * a)
            xc, yc = x[b, grp, c], y[b, grp, c]
            for s in range(S):
                z = xc[s] * a_c + h_c
                yc[s] = z * sigmoid(z)


@njit(cache=True, fastmath={"reassoc"}, inline="always")
def _input_grad(gb, xb, gamma, mu, r, dxb, sum_g, sum_gx):
    """Backward passes 1 and 2 over one (Cg, S) block (eq. M22): writes S_c, T_c and dxb (which may be gb)."""
    Cg, S = xb.shape
    n = Cg * S
    m1 = 0.0
    m2 = 0.0
    for c in range(Cg):
        gc, xc = gb[c], xb[c]
        s_c = 0.0
        t_c = 0.0
        for s in range(S):
            s_c += gc[s]
            t_c += gc[s] * (xc[s] - mu)
        sum_g[c] = s_c
        sum_gx[c] = t_c
        m1 += gamma[c] * s_c
        m2 += gamma[c] * t_c
    m1 /= n
    m2 *= r / n
    k1 = dxb.dtype.type(-r * r * m2)
    k0 = dxb.dtype.type(mu * r * r * m2 - r * m1)
    for c in range(Cg):
        p = dxb.dtype.type(r * gamma[c])
        gc, xc, dxc = gb[c], xb[c], dxb[c]
        for s in range(S):
            dxc[s] = gc[s] * p + xc[s] * k1 + k0


@njit(cache=True, fastmath={"reassoc"})
def _backward(g, x, gamma, mean, rstd, dx, sum_g, sum_gx):
    """g, x, dx (B, G, Cg, S); writes dx and the float64 (B, G, Cg) sums S_c = Σ g, T_c = Σ g (x − μ)."""
    B, G = x.shape[:2]
    for k in range(B * G):
        b = k // G
        grp = k - b * G
        _input_grad(g[b, grp], x[b, grp], gamma[grp], mean[b, grp], rstd[b, grp], dx[b, grp],
                    sum_g[b, grp], sum_gx[b, grp])


@njit(cache=True, fastmath={"reassoc"})
def _backward_silu(g, x, gamma, beta, mean, rstd, dx, sum_g, sum_gx):
    """Eq. M25: per block, g_z = g σ(z)(1 + z(1 − σ(z))) with z = x a_c + h_c recomputed, written into dx's
    block, then `_input_grad` with g_z in place of g (S_c, T_c are sums of g_z)."""
    B, G, Cg, S = x.shape
    one = dx.dtype.type(1.0)
    for k in range(B * G):
        b = k // G
        grp = k - b * G
        mu, r = mean[b, grp], rstd[b, grp]
        for c in range(Cg):
            a = r * gamma[grp, c]
            a_c = dx.dtype.type(a)
            h_c = dx.dtype.type(beta[grp, c] - mu * a)
            gc, xc, gzc = g[b, grp, c], x[b, grp, c], dx[b, grp, c]
            for s in range(S):
                z = xc[s] * a_c + h_c
                sig = sigmoid(z)
                gzc[s] = gc[s] * sig * (one + z * (one - sig))
        _input_grad(dx[b, grp], x[b, grp], gamma[grp], mu, r, dx[b, grp], sum_g[b, grp], sum_gx[b, grp])


def _blocks(a, num_groups):
    """a (B, C, *S) as a contiguous (B, G, C/G, n_s) array (a view when a is contiguous)."""
    B, C = a.shape[:2]
    n_s = int(np.prod(a.shape[2:], dtype=np.int64))
    return np.ascontiguousarray(a).reshape(B, num_groups, C // num_groups, n_s)


def group_norm_forward(x, weight, bias, num_groups, eps):
    """(y, mean, rstd): eq. M22's forward; mean and rstd are float64 (B, G)."""
    xb = _blocks(x, num_groups)
    B, G, Cg = xb.shape[:3]
    y = np.empty_like(xb)
    mean, rstd = np.empty((B, G)), np.empty((B, G))
    _forward(xb, weight.reshape(G, Cg), bias.reshape(G, Cg), float(eps), y, mean, rstd)
    return y.reshape(x.shape), mean, rstd


def group_norm_backward(g, x, weight, mean, rstd, num_groups):
    """(∂L/∂x, ∂L/∂γ, ∂L/∂β): eq. M22's backward, ∂γ_c = Σ_b r T_c, ∂β_c = Σ_b S_c."""
    xb, gb = _blocks(x, num_groups), _blocks(g, num_groups)
    B, G, Cg = xb.shape[:3]
    dx = np.empty_like(xb)
    sum_g, sum_gx = np.empty((B, G, Cg)), np.empty((B, G, Cg))
    _backward(gb, xb, weight.reshape(G, Cg), mean, rstd, dx, sum_g, sum_gx)
    dw = (rstd[:, :, None] * sum_gx).sum(axis=0).reshape(-1).astype(x.dtype)
    db = sum_g.sum(axis=0).reshape(-1).astype(x.dtype)
    return dx.reshape(x.shape), dw, db


def group_norm_silu_forward(x, weight, bias, num_groups, eps):
    """(y, mean, rstd): y = SiLU(GroupNorm(x)) in eq. M22's three passes, the third writing z σ(z) (eq. M25)."""
    xb = _blocks(x, num_groups)
    B, G, Cg = xb.shape[:3]
    y = np.empty_like(xb)
    mean, rstd = np.empty((B, G)), np.empty((B, G))
    _forward_silu(xb, weight.reshape(G, Cg), bias.reshape(G, Cg), float(eps), y, mean, rstd)
    return y.reshape(x.shape), mean, rstd


def group_norm_silu_backward(g, x, weight, bias, mean, rstd, num_groups):
    """(∂L/∂x, ∂L/∂γ, ∂L/∂β) of `group_norm_silu_forward` from x, μ, r alone (eq. M25)."""
    xb, gb = _blocks(x, num_groups), _blocks(g, num_groups)
    B, G, Cg = xb.shape[:3]
    dx = np.empty_like(xb)
    sum_g, sum_gx = np.empty((B, G, Cg)), np.empty((B, G, Cg))
    _backward_silu(gb, xb, weight.reshape(G, Cg), bias.reshape(G, Cg), mean, rstd, dx, sum_g, sum_gx)
    dw = (rstd[:, :, None] * sum_gx).sum(axis=0).reshape(-1).astype(x.dtype)
    db = sum_g.sum(axis=0).reshape(-1).astype(x.dtype)
    return dx.reshape(x.shape), dw, db
