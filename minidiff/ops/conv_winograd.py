"""Winograd F(m×m, 3×3), m = 2 or 4: a 3×3, stride-1, padding-1 convolution with fewer multiplications
(Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"; docs/layers.md eq. M23, M24 for
m = 2, eq. M30, M31 for m = 4, eq. M32 for the bias).

Split the output into m×m tiles; tile t = (b, ĩ, j̃) reads the α×α input patch d = x_pad[b, c, mĩ : mĩ + α,
mj̃ : mj̃ + α] (α = m + 2) of each channel c. With g = w[o, c] (3×3) and the matrices Bᵀ (α × α), G (α × 3),
Aᵀ (m × α) of F(m, 3) (`B2_T, G2, A2_T` below; `B4_T, G4, A4_T`: interpolation points 0, ±1, ±2, ∞),
the m×m output tile is

    Y[b, o, tile] = Aᵀ [ Σ_c U[o, c] ⊙ V[c, t] ] A + bias[o],   U = G g Gᵀ,   V = Bᵀ d B     (eq. M23, M30, M32)

(⊙: elementwise on α×α arrays). For each of the α² positions ξ = (ν, μ), the sum over c is a matrix
product, M_ξ = V_ξ U_ξ with V_ξ (T × C) and U_ξ (C × O), T = B·⌈H/m⌉·⌈W/m⌉ tiles: α²/m² multiplications per
output and channel pair, 4 for m = 2 and 2.25 for m = 4, against the direct product's 9. The input
transform (`_input_transform2`, `_input_transform4`) and the output transform (`_output_transform2`,
`_output_transform4`, which adds the bias as it copies each tile row into y) are Numba kernels, one pass
each, written as the matrices' sparse rows with shared partial sums (`_bt6`, `_at6`, `_a6` for m = 4);
the filter transform is one small product with G ⊗ G per call (weights change every step). H or W not a
multiple of m: x is padded with zero rows/columns at the bottom/right, and the extra outputs are not written.

The weight gradient is the adjoint of eq. M23/M30 in g, for upstream ∂Y (B, O, H, W) cut into the same tiles:

    ∂w[o, c] = Gᵀ [ Σ_t Z[o, t] ⊙ V[c, t] ] G,   Z = A ∂Y_t Aᵀ,      ∂bias[o] = Σ_{b,i,j} ∂Y[b, o, i, j]
                                                                                      (eq. M24, M31, M32)

(⟨∂Y_t, Aᵀ[(G g Gᵀ) ⊙ V]A⟩ = ⟨Gᵀ[(A ∂Y_t Aᵀ) ⊙ V]G, g⟩), i.e. α² products P_ξ = Z_ξᵀ V_ξ of (O × T)(T × C);
V is made again from x, and ∂bias is summed as the gradient transform (`_grad_transform2`,
`_grad_transform4`) reads each element of ∂Y.

Layouts: the kernels read and write NCHW arrays and work channels last inside, in buffers of one tile row
(the α input rows of a tile row, (α, m⌈W/m⌉ + 2, C); the m output rows, (m, m⌈W/m⌉, O)), so that their
innermost loops run over contiguous channels; V is (α², T, C), U (α², C, O), M and Z (α², T, O).
Everything is made a slice of the batch at a time (`batch_slices`). Arithmetic is in x's dtype
throughout (float32 stays float32; the constants of the m = 4 transforms are typed as x). `ops/conv.py:
conv2d_forward` and `conv2d_weight_grad` choose m (`uses_winograd`) and keep the channels-last product
as the reference; tests/test_conv_winograd.py holds them together. Runs unchanged (slowly) under
NUMBA_DISABLE_JIT=1.
"""
import numpy as np
from numba import njit

B2_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
G2 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
A2_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)
"""Bᵀ (4 × 4), G (4 × 3), Aᵀ (2 × 4) of F(2, 3), eq. M23: the kernels' m = 2 transforms are these rows."""

B4_T = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=float)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
A4_T = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=float)
"""Bᵀ (6 × 6), G (6 × 3), Aᵀ (4 × 6) of F(4, 3), eq. M30 (points 0, 1, −1, 2, −2, ∞): `_bt6`, `_a6`, `_at6`
are these rows."""

MATRICES = {2: (B2_T, G2, A2_T), 4: (B4_T, G4, A4_T)}
"""m -> (Bᵀ, G, Aᵀ) of F(m, 3)."""
G_KRON = {m: np.kron(G, G) for m, (_, G, _) in MATRICES.items()}
"""m -> G ⊗ G (α² × 9): vec(G g Gᵀ) = (G ⊗ G) vec(g) for row-major vec, so the filter transform is one product."""

WORKSPACE_BYTES = 2 << 20
"""V and M are made for a slice of the batch at a time, together at most this many bytes (at least one sample),
so that the transforms and the products work in cache."""


def tile_grid(H, W, m):
    """(⌈H/m⌉, ⌈W/m⌉): the tiles of an H × W output."""
    return -(-H // m), -(-W // m)


def multiplications(H, W, m):
    """(m + 2)²·⌈H/m⌉·⌈W/m⌉: F(m×m, 3×3)'s multiplications per channel pair on an H × W output, padded tiles
    included (the direct product's: 9·H·W)."""
    nh, nw = tile_grid(H, W, m)
    return (m + 2) ** 2 * nh * nw


def filter_transform(w, m):
    """U (α², C, O): U[ξ, c, o] = (G w[o, c] Gᵀ)[ξ], as (G ⊗ G) vec(w[o, c]); w (O, C, 3, 3), its dtype."""
    O, C = w.shape[:2]
    u = G_KRON[m].astype(w.dtype) @ w.reshape(O * C, 9).T              # (α², O·C)
    return u.reshape(-1, O, C).transpose(0, 2, 1)


# ---------------------------------------------------------------- F(2×2, 3×3): eq. M23, M24

@njit(cache=True)
def _input_transform2(x, v):
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
            _input_rows(x, b, 2 * ti - 1, d)                            # rows 2ĩ − 1 … 2ĩ + 2 of x
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
def _output_transform2(m, bias, y):
    """y[b, o, 2ĩ + p, 2j̃ + q] = (Aᵀ m_t A)[p, q] + bias[o], m_t[ξ] = m[ξ, t, o], t = (b, ĩ, j̃), for the rows
    and columns in y.

    m (16, B·⌈H/2⌉·⌈W/2⌉, O) the 16 products of eq. M23; bias (O,) or None; y (B, O, H, W). A tile row is made
    channels last in a (2, 2⌈W/2⌉, O) buffer, then copied into y's rows (those inside H, the first W columns),
    the bias added in that copy (`_write_rows`).
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
            _write_rows(out, bias, y, b, 2 * ti)


@njit(cache=True)
def _grad_transform2(g, z, db):
    """z[ξ, t, o] = (A ∂Y_t Aᵀ)[ξ] for the 2×2 tile ∂Y_t = g[b, o, 2ĩ : 2ĩ + 2, 2j̃ : 2j̃ + 2] (zeros beyond H, W),
    and db[o] += Σ_{b,i,j} g[b, o, i, j] (eq. M32) as each row of g is read.

    g (B, O, H, W); z (16, B·⌈H/2⌉·⌈W/2⌉, O); db (O,). A = (Aᵀ)ᵀ maps (q₀, q₁) to (q₀, q₀ + q₁, q₀ − q₁, −q₁).
    The two rows of a tile row are first copied channels last into a (2, 2⌈W/2⌉, O) buffer.
    """
    B, O, H, W = g.shape
    nh, nw = (H + 1) // 2, (W + 1) // 2
    q = np.zeros((2, 2 * nw, O), dtype=g.dtype)
    h = np.empty((4, 2, O), dtype=g.dtype)
    for b in range(B):
        for ti in range(nh):
            _tile_rows(g, b, 2 * ti, q, db)
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


@njit(cache=True)
def _write_rows(out, bias, y, b, row0):
    """y[b, o, row0 + p, col] = out[p, col, o] + bias[o] for the rows of a tile row inside H, the first W columns:
    the bias of eq. M32 added as the channels-last tile row is copied into y. bias (O,) or None (nothing added;
    Numba compiles that case without the branch)."""
    O, H, W = y.shape[1:]
    for p in range(min(out.shape[0], H - row0)):
        for o in range(O):
            yr = y[b, o, row0 + p]
            if bias is None:
                for col in range(W):
                    yr[col] = out[p, col, o]
            else:
                bo = bias[o]
                for col in range(W):
                    yr[col] = out[p, col, o] + bo


@njit(cache=True)
def _input_rows(x, b, row0, d):
    """d[k, col + 1, c] = x[b, c, row0 + k, col] for the α = d.shape[0] input rows of a tile row (zero rows outside
    x), channels last; d's first column and those beyond W stay as they are (the caller's zero padding)."""
    C, H, W = x.shape[1:]
    for k in range(d.shape[0]):
        row = row0 + k
        if 0 <= row < H:
            for c in range(C):
                xr = x[b, c, row]
                for col in range(W):
                    d[k, col + 1, c] = xr[col]
        else:
            d[k] = 0


@njit(cache=True)
def _tile_rows(g, b, row0, q, db):
    """q[p, col, o] = g[b, o, row0 + p, col] for the m = q.shape[0] rows of a tile row (zero rows beyond H),
    and db[o] += the sum of those rows."""
    O, H, W = g.shape[1:]
    zero = g.dtype.type(0)
    for p in range(q.shape[0]):
        row = row0 + p
        if row < H:
            for o in range(O):
                gr = g[b, o, row]
                s = zero
                for col in range(W):
                    q[p, col, o] = gr[col]
                    s += gr[col]
                db[o] += s
        else:
            q[p] = 0


# ---------------------------------------------------------------- F(4×4, 3×3): eq. M30, M31

@njit(cache=True, inline="always")
def _bt6(d0, d1, d2, d3, d4, d5, two, four, five):
    """Bᵀ d of F(4, 3) (eq. M30) for one 6-vector d, with the shared partial sums of its rows 1-4."""
    p, q = d4 - four * d2, d3 - four * d1
    r, s = d4 - d2, two * (d3 - d1)
    return four * d0 - five * d2 + d4, p + q, p - q, r + s, r - s, four * d1 - five * d3 + d5


@njit(cache=True, inline="always")
def _at6(m0, m1, m2, m3, m4, m5, two, four, eight):
    """Aᵀ m of F(4, 3) (eq. M30) for one 6-vector m: the values at 0, the sums/differences at ±1 and ±2, and ∞."""
    a, s = m1 + m2, m1 - m2
    p, q = m3 + m4, m3 - m4
    return m0 + a + p, s + two * q, a + four * p, s + eight * q + m5


@njit(cache=True, inline="always")
def _a6(q0, q1, q2, q3, two, four, eight):
    """A q = (Aᵀ)ᵀ q of F(4, 3) (eq. M31) for one 4-vector q: q evaluated as a cubic at 0, 1, −1, 2, −2, ∞."""
    e, od = q0 + q2, q1 + q3
    e2, od2 = q0 + four * q2, two * q1 + eight * q3
    return q0, e + od, e - od, e2 + od2, e2 - od2, q3


@njit(cache=True)
def _input_transform4(x, v):
    """v[ξ, t, c] = (Bᵀ d B)[ξ] for the 6×6 patch d = x_pad[b, c, 4ĩ : 4ĩ + 6, 4j̃ : 4j̃ + 6], t = (b, ĩ, j̃).

    x (B, C, H, W); v (36, B·⌈H/4⌉·⌈W/4⌉, C). x_pad is x with one zero row/column before and enough after to
    make 4⌈H/4⌉ + 2 rows (likewise columns). The six input rows of a tile row are first copied channels last
    into a (6, 4⌈W/4⌉ + 2, C) buffer.
    """
    B, C, H, W = x.shape
    nh, nw = (H + 3) // 4, (W + 3) // 4
    two, four, five = x.dtype.type(2), x.dtype.type(4), x.dtype.type(5)
    d = np.zeros((6, 4 * nw + 2, C), dtype=x.dtype)
    e = np.empty((6, 6, C), dtype=x.dtype)
    for b in range(B):
        for ti in range(nh):
            _input_rows(x, b, 4 * ti - 1, d)                            # rows 4ĩ − 1 … 4ĩ + 4 of x
            for tj in range(nw):
                t = (b * nh + ti) * nw + tj
                for l in range(6):                                      # e[:, l] = Bᵀ d[:, l]
                    col = 4 * tj + l
                    d0, d1, d2, d3, d4, d5 = d[0, col], d[1, col], d[2, col], d[3, col], d[4, col], d[5, col]
                    e0, e1, e2, e3, e4, e5 = e[0, l], e[1, l], e[2, l], e[3, l], e[4, l], e[5, l]
                    for c in range(C):
                        e0[c], e1[c], e2[c], e3[c], e4[c], e5[c] = _bt6(
                            d0[c], d1[c], d2[c], d3[c], d4[c], d5[c], two, four, five)
                for i in range(6):                                      # v[i, :] = e[i, :] B
                    e0, e1, e2, e3, e4, e5 = e[i, 0], e[i, 1], e[i, 2], e[i, 3], e[i, 4], e[i, 5]
                    v0, v1, v2 = v[6 * i, t], v[6 * i + 1, t], v[6 * i + 2, t]
                    v3, v4, v5 = v[6 * i + 3, t], v[6 * i + 4, t], v[6 * i + 5, t]
                    for c in range(C):
                        v0[c], v1[c], v2[c], v3[c], v4[c], v5[c] = _bt6(
                            e0[c], e1[c], e2[c], e3[c], e4[c], e5[c], two, four, five)


@njit(cache=True)
def _output_transform4(m, bias, y):
    """y[b, o, 4ĩ + p, 4j̃ + q] = (Aᵀ m_t A)[p, q] + bias[o], m_t[ξ] = m[ξ, t, o], for the rows and columns in y.

    m (36, B·⌈H/4⌉·⌈W/4⌉, O) the 36 products of eq. M30; bias (O,) or None; y (B, O, H, W). A tile row is made
    channels last in a (4, 4⌈W/4⌉, O) buffer, then copied into y's rows (those inside H, the first W columns),
    the bias added in that copy (`_write_rows`).
    """
    B, O, H, W = y.shape
    nh, nw = (H + 3) // 4, (W + 3) // 4
    two, four, eight = y.dtype.type(2), y.dtype.type(4), y.dtype.type(8)
    f = np.empty((4, 6, O), dtype=y.dtype)
    out = np.empty((4, 4 * nw, O), dtype=y.dtype)
    for b in range(B):
        for ti in range(nh):
            for tj in range(nw):
                t = (b * nh + ti) * nw + tj
                for k in range(6):                                      # f[:, k] = Aᵀ m[:, k]
                    m0, m1, m2 = m[k, t], m[6 + k, t], m[12 + k, t]
                    m3, m4, m5 = m[18 + k, t], m[24 + k, t], m[30 + k, t]
                    f0, f1, f2, f3 = f[0, k], f[1, k], f[2, k], f[3, k]
                    for o in range(O):
                        f0[o], f1[o], f2[o], f3[o] = _at6(m0[o], m1[o], m2[o], m3[o], m4[o], m5[o], two, four, eight)
                for p in range(4):                                      # the tile = f A
                    f0, f1, f2, f3, f4, f5 = f[p, 0], f[p, 1], f[p, 2], f[p, 3], f[p, 4], f[p, 5]
                    y0, y1, y2, y3 = out[p, 4 * tj], out[p, 4 * tj + 1], out[p, 4 * tj + 2], out[p, 4 * tj + 3]
                    for o in range(O):
                        y0[o], y1[o], y2[o], y3[o] = _at6(f0[o], f1[o], f2[o], f3[o], f4[o], f5[o], two, four, eight)
            _write_rows(out, bias, y, b, 4 * ti)


@njit(cache=True)
def _grad_transform4(g, z, db):
    """z[ξ, t, o] = (A ∂Y_t Aᵀ)[ξ] for the 4×4 tile ∂Y_t = g[b, o, 4ĩ : 4ĩ + 4, 4j̃ : 4j̃ + 4] (zeros beyond H, W),
    and db[o] += Σ_{b,i,j} g[b, o, i, j] (eq. M32) as each row of g is read.

    g (B, O, H, W); z (36, B·⌈H/4⌉·⌈W/4⌉, O); db (O,). The four rows of a tile row are first copied channels
    last into a (4, 4⌈W/4⌉, O) buffer.
    """
    B, O, H, W = g.shape
    nh, nw = (H + 3) // 4, (W + 3) // 4
    two, four, eight = g.dtype.type(2), g.dtype.type(4), g.dtype.type(8)
    q = np.zeros((4, 4 * nw, O), dtype=g.dtype)
    h = np.empty((6, 4, O), dtype=g.dtype)
    for b in range(B):
        for ti in range(nh):
            _tile_rows(g, b, 4 * ti, q, db)
            for tj in range(nw):
                t = (b * nh + ti) * nw + tj
                for l in range(4):                                      # h[:, l] = A ∂Y[:, l]
                    q0, q1, q2, q3 = q[0, 4 * tj + l], q[1, 4 * tj + l], q[2, 4 * tj + l], q[3, 4 * tj + l]
                    h0, h1, h2, h3, h4, h5 = h[0, l], h[1, l], h[2, l], h[3, l], h[4, l], h[5, l]
                    for o in range(O):
                        h0[o], h1[o], h2[o], h3[o], h4[o], h5[o] = _a6(q0[o], q1[o], q2[o], q3[o], two, four, eight)
                for i in range(6):                                      # z[i, :] = h[i, :] Aᵀ
                    h0, h1, h2, h3 = h[i, 0], h[i, 1], h[i, 2], h[i, 3]
                    z0, z1, z2 = z[6 * i, t], z[6 * i + 1, t], z[6 * i + 2, t]
                    z3, z4, z5 = z[6 * i + 3, t], z[6 * i + 4, t], z[6 * i + 5, t]
                    for o in range(O):
                        z0[o], z1[o], z2[o], z3[o], z4[o], z5[o] = _a6(h0[o], h1[o], h2[o], h3[o], two, four, eight)


# ---------------------------------------------------------------- the two entry points

KERNELS = {2: (_input_transform2, _output_transform2, _grad_transform2),
           4: (_input_transform4, _output_transform4, _grad_transform4)}
"""m -> the (input, output, gradient) transform kernels of F(m×m, 3×3)."""


def batch_slices(B, C, O, H, W, itemsize, m):
    """Slices of the batch axis whose V (α²·C·tiles) and M (α²·O·tiles) fit in WORKSPACE_BYTES together."""
    nh, nw = tile_grid(H, W, m)
    per_sample = (m + 2) ** 2 * (C + O) * nh * nw * itemsize
    step = max(1, WORKSPACE_BYTES // per_sample)
    return [slice(lo, min(lo + step, B)) for lo in range(0, B, step)]


def winograd_conv3x3(x, w, b=None, m=2):
    """y = conv2d(x, w, stride 1, padding 1) + b for w (O, C, 3, 3), b (O,) or None, by F(m×m, 3×3): eq. M23
    (m = 2) or M30 (m = 4), the bias added in the output transform (eq. M32); x (B, C, H, W) float32 or float64.

    Returns a fresh contiguous (B, O, H, W) array in x's dtype. Per slice of the batch: V by the input
    kernel, the α² products M_ξ = V_ξ U_ξ as one stacked `np.matmul` (the caller chooses the BLAS thread
    count), y by the output kernel.
    """
    x = np.ascontiguousarray(x)
    B, C, H, W = x.shape
    O = w.shape[0]
    u = filter_transform(w, m)
    bias = None if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    input_transform, output_transform, _ = KERNELS[m]
    nh, nw = tile_grid(H, W, m)
    tiles = nh * nw
    y = np.empty((B, O, H, W), dtype=x.dtype)
    for sl in batch_slices(B, C, O, H, W, x.itemsize, m):
        v = np.empty(((m + 2) ** 2, (sl.stop - sl.start) * tiles, C), dtype=x.dtype)
        input_transform(x[sl], v)
        output_transform(np.matmul(v, u), bias, y[sl])                 # M_ξ = V_ξ U_ξ: (α², n, O)
    return y


def winograd_weight_grad3x3(g, x, m=2):
    """(∂L/∂w (O, C, 3, 3), ∂L/∂bias (O,)) of y = conv2d(x, w, stride 1, padding 1) + bias for upstream g
    (B, O, H, W), by eq. M24 (m = 2) or M31 (m = 4), and eq. M32.

    Per slice of the batch: V from x (the forward's input kernel), Z from g (the gradient kernel, which also
    sums ∂bias), P_ξ += Z_ξᵀ V_ξ as one stacked `np.matmul`; then ∂w[o, c] = Gᵀ P[o, c] G for all (o, c) as one
    product with (G ⊗ G)ᵀ. x's dtype.
    """
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    B, C, H, W = x.shape
    O = g.shape[1]
    nh, nw = tile_grid(H, W, m)
    alpha2, tiles = (m + 2) ** 2, nh * nw
    input_transform, _, grad_transform = KERNELS[m]
    p = np.zeros((alpha2, O, C), dtype=x.dtype)
    db = np.zeros(O, dtype=x.dtype)
    for sl in batch_slices(B, C, O, H, W, x.itemsize, m):
        n = (sl.stop - sl.start) * tiles
        v, z = np.empty((alpha2, n, C), dtype=x.dtype), np.empty((alpha2, n, O), dtype=x.dtype)
        input_transform(x[sl], v)
        grad_transform(g[sl], z, db)
        p += np.matmul(z.transpose(0, 2, 1), v)                        # P_ξ = Z_ξᵀ V_ξ: (α², O, C)
    dw = G_KRON[m].T.astype(x.dtype) @ p.reshape(alpha2, O * C)         # vec(Gᵀ P G) = (G ⊗ G)ᵀ vec(P): (9, O·C)
    return np.ascontiguousarray(dw.T).reshape(O, C, 3, 3), db
