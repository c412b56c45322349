"""Winograd F(2×2, 3×3): a 3×3, stride-1, padding-1 convolution with 2.25x fewer multiplications
(Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"; docs/layers.md eq. M23).

Split the output into 2×2 tiles; tile t = (b, ĩ, j̃) reads the 4×4 input patch d = x_pad[b, c, 2ĩ : 2ĩ + 4,
2j̃ : 2j̃ + 4] of each channel c. With g = w[o, c] (3×3) and

    Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]],
    G  = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]],
    Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]],

the 2×2 output tile is

    Y[b, o, tile] = Aᵀ [ Σ_c U[o, c] ⊙ V[c, t] ] A,   U = G g Gᵀ,   V = Bᵀ d B           (eq. M23)

(⊙: elementwise on 4×4 arrays). For each of the 16 positions ξ = (ν, μ) of the 4×4 arrays, the sum over c
is a matrix product, M_ξ = V_ξ U_ξ with V_ξ (T × C) and U_ξ (C × O), T = B·⌈H/2⌉·⌈W/2⌉ tiles: 16 BLAS
products of 16·T·C·O multiply-adds, against the direct product's 36·T·C·O (9 taps × 4 outputs per tile).
The transforms are additions only (G's halves are exact in binary floating point): the input transform
(`_input_transform`) and the output transform (`_output_transform`) are Numba kernels, one pass each;
the filter transform is a small NumPy product per call (weights change every step). Odd H or W: x is
padded to even with one more zero row/column at the bottom/right, and the extra outputs are not written.

Bytes, per call, in units of x's and y's sizes: x is read twice (tile rows overlap by two input rows),
V written and read once at 4x x (16 numbers per 4 outputs), M written and read once at 4x y, y written
once; the direct path's row matrix R is 9x x. The products stay the larger cost (docs/benchmarks.md).

The weight gradient is the adjoint of eq. M23 in g, for upstream ∂Y (B, O, H, W) cut into the same tiles:

    ∂w[o, c] = Gᵀ [ Σ_t Z[o, t] ⊙ V[c, t] ] G,   Z = A ∂Y_t Aᵀ                           (eq. M24)

(⟨∂Y_t, Aᵀ[(G g Gᵀ) ⊙ V]A⟩ = ⟨Gᵀ[(A ∂Y_t Aᵀ) ⊙ V]G, g⟩), i.e. 16 products P_ξ = Z_ξᵀ V_ξ of (O × T)(T × C),
again 16 multiply-adds per tile and channel pair against the direct ∂W = Gᵀ R's 36; V is made again from x.

Layouts: the kernels read and write NCHW arrays and work channels last inside, in buffers of one tile row
(`_input_transform`: the 4 input rows of a tile row, (4, 2⌈W/2⌉ + 2, C); `_output_transform`: (2, 2⌈W/2⌉, O)),
so that their innermost loops run over contiguous channels (`_grad_transform` likewise for the tiles of ∂Y);
V is (16, T, C), U (16, C, O), M and Z (16, T, O). Everything is made a slice of the batch at a time
(`batch_slices`). Arithmetic is in x's dtype throughout (float32 stays float32). `ops/conv.py:
conv2d_forward` and `conv2d_weight_grad` choose this path (`uses_winograd`) and keep the channels-last
product as the reference; tests/test_conv_winograd.py holds them together.
Runs unchanged (slowly) under NUMBA_DISABLE_JIT=1.
"""
import numpy as np
from numba import njit

G_MATRIX = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
"""G of eq. M23 (4 × 3)."""
G_KRON = np.kron(G_MATRIX, G_MATRIX)
"""G ⊗ G (16 × 9): vec(G g Gᵀ) = (G ⊗ G) vec(g) for row-major vec, so the filter transform is one product."""

WORKSPACE_BYTES = 2 << 20
"""V and M are made for a slice of the batch at a time, together at most this many bytes (at least one sample),
so that the transforms and the products work in cache."""


def filter_transform(w):
    """U (16, C, O) of eq. M23: U[ξ, c, o] = (G w[o, c] Gᵀ)[ξ], as (G ⊗ G) vec(w[o, c]); w (O, C, 3, 3), its dtype."""
    O, C = w.shape[:2]
    u = G_KRON.astype(w.dtype) @ w.reshape(O * C, 9).T                  # (16, O·C)
    return u.reshape(16, O, C).transpose(0, 2, 1)


@njit(cache=True)
def _input_transform(x, v):
    """v[ξ, t, c] = (Bᵀ d B)[ξ] for the 4×4 patch d = x_pad[b, c, 2ĩ : 2ĩ + 4, 2j̃ : 2j̃ + 4], t = (b, ĩ, j̃).

    x (B, C, H, W); v (16, B·⌈H/2⌉·⌈W/2⌉, C). x_pad is x with one zero row/column before and one (two for an
    odd size) after. The four input rows of a tile row are first copied channels last into a
    (4, 2⌈W/2⌉ + 2, C) buffer, so that the transform's loops run over contiguous channels.
    """
    B, C, H, W = x.shape
    nh, nw = (H + 1) // 2, (W + 1) // 2
    d = np.zeros((4, 2 * nw + 2, C), dtype=x.dtype)
    e = np.empty((4, 4, C), dtype=x.dtype)
    for b in range(B):
        for ti in range(nh):
            for k in range(4):                                          # rows 2ĩ − 1 … 2ĩ + 2 of x
                row = 2 * ti - 1 + k
                if 0 <= row < H:
                    for c in range(C):
                        xr = x[b, c, row]
                        for col in range(W):
                            d[k, col + 1, c] = xr[col]
                else:
                    d[k] = 0
            for tj in range(nw):
                t = (b * nh + ti) * nw + tj
                for l in range(4):                                      # e[:, l] = Bᵀ d[:, l]
                    d0, d1, d2, d3 = d[0, 2 * tj + l], d[1, 2 * tj + l], d[2, 2 * tj + l], d[3, 2 * tj + l]
                    for c in range(C):
                        e[0, l, c] = d0[c] - d2[c]
                        e[1, l, c] = d1[c] + d2[c]
                        e[2, l, c] = d2[c] - d1[c]
                        e[3, l, c] = d1[c] - d3[c]
                for i in range(4):                                      # v[i, :] = e[i, :] B
                    e0, e1, e2, e3 = e[i, 0], e[i, 1], e[i, 2], e[i, 3]
                    v0, v1, v2, v3 = v[4 * i, t], v[4 * i + 1, t], v[4 * i + 2, t], v[4 * i + 3, t]
                    for c in range(C):
                        v0[c] = e0[c] - e2[c]
                        v1[c] = e1[c] + e2[c]
                        v2[c] = e2[c] - e1[c]
                        v3[c] = e1[c] - e3[c]


@njit(cache=True)
def _output_transform(m, y):
    """y[b, o, 2ĩ + p, 2j̃ + q] = (Aᵀ m_t A)[p, q], m_t[ξ] = m[ξ, t, o], t = (b, ĩ, j̃), for the rows and columns in y.

    m (16, B·⌈H/2⌉·⌈W/2⌉, O) the 16 products of eq. M23; y (B, O, H, W). A tile row is made channels last in a
    (2, 2⌈W/2⌉, O) buffer, then copied into y's rows (those inside H, the first W columns).
    """
    B, O, H, W = y.shape
    nh, nw = (H + 1) // 2, (W + 1) // 2
    f = np.empty((2, 4, O), dtype=y.dtype)
    out = np.empty((2, 2 * nw, O), dtype=y.dtype)
    for b in range(B):
        for ti in range(nh):
            for tj in range(nw):
                t = (b * nh + ti) * nw + tj
                for k in range(4):                                      # f[:, k] = Aᵀ m[:, k]
                    m0, m1, m2, m3 = m[k, t], m[4 + k, t], m[8 + k, t], m[12 + k, t]
                    for o in range(O):
                        f[0, k, o] = m0[o] + m1[o] + m2[o]
                        f[1, k, o] = m1[o] - m2[o] - m3[o]
                for p in range(2):                                      # the tile = f A
                    f0, f1, f2, f3 = f[p, 0], f[p, 1], f[p, 2], f[p, 3]
                    y0, y1 = out[p, 2 * tj], out[p, 2 * tj + 1]
                    for o in range(O):
                        y0[o] = f0[o] + f1[o] + f2[o]
                        y1[o] = f1[o] - f2[o] - f3[o]
            for p in range(min(2, H - 2 * ti)):
                for o in range(O):
                    yr = y[b, o, 2 * ti + p]
                    for col in range(W):
                        yr[col] = out[p, col, o]


def batch_slices(B, C, O, H, W, itemsize):
    """Slices of the batch axis whose V (16·C·tiles) and M (16·O·tiles) fit in WORKSPACE_BYTES together."""
    per_sample = 16 * (C + O) * ((H + 1) // 2) * ((W + 1) // 2) * itemsize
    step = max(1, WORKSPACE_BYTES // per_sample)
    return [slice(lo, min(lo + step, B)) for lo in range(0, B, step)]


def winograd_conv3x3(x, w):
    """y = conv2d(x, w, stride 1, padding 1) for w (O, C, 3, 3), by eq. M23; x (B, C, H, W) float32 or float64.

    Returns a fresh contiguous (B, O, H, W) array in x's dtype. Per slice of the batch: V by the input
    kernel, the 16 products M_ξ = V_ξ U_ξ as one stacked `np.matmul` (the caller chooses the BLAS thread
    count), y by the output kernel.
    """
    x = np.ascontiguousarray(x)
    B, C, H, W = x.shape
    O = w.shape[0]
    u = filter_transform(w)
    tiles = ((H + 1) // 2) * ((W + 1) // 2)
    y = np.empty((B, O, H, W), dtype=x.dtype)
    for sl in batch_slices(B, C, O, H, W, x.itemsize):
        n = (sl.stop - sl.start) * tiles
        v = np.empty((16, n, C), dtype=x.dtype)
        _input_transform(x[sl], v)
        _output_transform(np.matmul(v, u), y[sl])                      # M_ξ = V_ξ U_ξ: (16, n, O)
    return y


@njit(cache=True)
def _grad_transform(g, z):
    """z[ξ, t, o] = (A ∂Y_t Aᵀ)[ξ] for the 2×2 tile ∂Y_t = g[b, o, 2ĩ : 2ĩ + 2, 2j̃ : 2j̃ + 2] (zeros beyond H, W).

    g (B, O, H, W); z (16, B·⌈H/2⌉·⌈W/2⌉, O). A = (Aᵀ)ᵀ maps (q₀, q₁) to (q₀, q₀ + q₁, q₀ − q₁, −q₁). The two
    rows of a tile row are first copied channels last into a (2, 2⌈W/2⌉, O) buffer.
    """
    B, O, H, W = g.shape
    nh, nw = (H + 1) // 2, (W + 1) // 2
    q = np.zeros((2, 2 * nw, O), dtype=g.dtype)
    h = np.empty((4, 2, O), dtype=g.dtype)
    for b in range(B):
        for ti in range(nh):
            for p in range(2):
                row = 2 * ti + p
                if row < H:
                    for o in range(O):
                        gr = g[b, o, row]
                        for col in range(W):
                            q[p, col, o] = gr[col]
                else:
                    q[p] = 0
            for tj in range(nw):
                t = (b * nh + ti) * nw + tj
                for l in range(2):                                      # h[:, l] = A ∂Y[:, l]
                    q0, q1 = q[0, 2 * tj + l], q[1, 2 * tj + l]
                    for o in range(O):
                        h[0, l, o] = q0[o]
                        h[1, l, o] = q0[o] + q1[o]
                        h[2, l, o] = q0[o] - q1[o]
                        h[3, l, o] = -q1[o]
                for i in range(4):                                      # z[i, :] = h[i, :] Aᵀ
                    h0, h1 = h[i, 0], h[i, 1]
                    z0, z1, z2, z3 = z[4 * i, t], z[4 * i + 1, t], z[4 * i + 2, t], z[4 * i + 3, t]
                    for o in range(O):
                        z0[o] = h0[o]
                        z1[o] = h0[o] + h1[o]
                        z2[o] = h0[o] - h1[o]
                        z3[o] = -h1[o]


def winograd_weight_grad3x3(g, x):
    """∂L/∂w (O, C, 3, 3) of y = conv2d(x, w, stride 1, padding 1) for upstream g (B, O, H, W), by eq. M24.

    Per slice of the batch: V from x (the forward's input kernel), Z from g, P_ξ += Z_ξᵀ V_ξ as one stacked
    `np.matmul`; then ∂w[o, c] = Gᵀ P[o, c] G for all (o, c) as one product with (G ⊗ G)ᵀ. x's dtype.
    """
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    B, C, H, W = x.shape
    O = g.shape[1]
    tiles = ((H + 1) // 2) * ((W + 1) // 2)
    p = np.zeros((16, O, C), dtype=x.dtype)
    for sl in batch_slices(B, C, O, H, W, x.itemsize):
        n = (sl.stop - sl.start) * tiles
        v, z = np.empty((16, n, C), dtype=x.dtype), np.empty((16, n, O), dtype=x.dtype)
        _input_transform(x[sl], v)
        _grad_transform(g[sl], z)
        p += np.matmul(z.transpose(0, 2, 1), v)                        # P_ξ = Z_ξᵀ V_ξ: (16, O, C)
    dw = G_KRON.T.astype(x.dtype) @ p.reshape(16, O * C)                # vec(Gᵀ P G) = (G ⊗ G)ᵀ vec(P): (9, O·C)
    return np.ascontiguousarray(dw.T).reshape(O, C, 3, 3)
