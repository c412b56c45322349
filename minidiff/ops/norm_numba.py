"""Group norm forward and backward as one Numba kernel each (docs/layers.md eq. M6-M7, M22).

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
"""
import numpy as np
from numba import njit


@njit(cache=True, fastmath={"reassoc"})
def _forward(x, gamma, beta, eps, y, mean, rstd):
    """x, y (B, G, Cg, S); gamma, beta (G, Cg); writes y and the float64 (B, G) μ and r."""
    B, G, Cg, S = x.shape
    n = Cg * S
    for k in range(B * G):
        b = k // G
        grp = k - b * G
        total = 0.0
        for c in range(Cg):
            xc = x[b, grp, c]
            for s in range(S):
                total += xc[s]
        mu = total / n
        sq = 0.0
        for c in range(Cg):
            xc = x[b, grp, c]
            for s in range(S):
                d = xc[s] - mu
                sq += d * d
        r = 1.0 / np.sqrt(sq / n + eps)
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
def _backward(g, x, gamma, mean, rstd, dx, sum_g, sum_gx):
    """g, x, dx (B, G, Cg, S); writes dx and the float64 (B, G, Cg) sums S_c = Σ g, T_c = Σ g (x − μ)."""
    B, G, Cg, S = x.shape
    n = Cg * S
    for k in range(B * G):
        b = k // G
        grp = k - b * G
        mu, r = mean[b, grp], rstd[b, grp]
        m1 = 0.0
        m2 = 0.0
        for c in range(Cg):
            gc, xc = g[b, grp, c], x[b, grp, c]
            s_c = 0.0
            t_c = 0.0
            for s in range(S):
                s_c += gc[s]
                t_c += gc[s] * (xc[s] - mu)
            sum_g[b, grp, c] = s_c
            sum_gx[b, grp, c] = t_c
            m1 += gamma[grp, c] * s_c
            m2 += gamma[grp, c] * t_c
        m1 /= n
        m2 *= r / n
        k1 = dx.dtype.type(-r * r * m2)
        k0 = dx.dtype.type(mu * r * r * m2 - r * m1)
        for c in range(Cg):
            p = dx.dtype.type(r * gamma[grp, c])
            gc, xc, dxc = g[b, grp, c], x[b, grp, c], dx[b, grp, c]
            for s in range(S):
                dxc[s] = gc[s] * p + xc[s] * k1 + k0


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
