"""Winograd F(2×2, 3×3) and F(4×4, 3×3) (docs/layers.md eq. M23, M24, M30, M31) and the bias in their transforms
(eq. M32) against the channels-last products they replace, within the forward error bound of their own
arithmetic; the exact 1-D identities behind them; the dispatch that routes conv2d's forward, stride-1 input
gradient and weight gradient to them; and conv2d through them against finite differences and PyTorch."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidiff as md
import minidiff.functional as F
from minidiff.ops import conv as conv_ops
from minidiff.ops import conv_winograd
from minidiff.testing import gradcheck
from tests.layers_oracle import assert_matches_torch

TILES = (2, 4)

FORWARD_ROUNDINGS = {2: 16, 4: 25}
"""n − C in the forward bound γ_n Ŷ: the most roundings along any path from an input to an output, beside
the C of the sum over channels (C − 1 additions and a multiplication). F(2, 3): input transform 1 per axis
(2), filter transform 9 (one multiplication and 8 additions of the 9 taps; G's halves are exact), output
transform 2 per axis (4), the bias 1. F(4, 3): input transform 3 per axis (6: `_bt6`'s row 0 is
4d₀ − 5d₂ + d₄, a rounded 5d₂ and two additions), filter transform 12 (G's sixths and 24ths are rounded, and so is
their Kronecker product: 3, then the multiplication and 8 additions), output transform 3 per axis (6:
m₀ + (m₁ + m₂) + (m₃ + m₄)), the bias 1."""
WEIGHT_GRAD_ROUNDINGS = {2: 20, 4: 49}
"""n − T in the weight-gradient bound γ_n Ŷ_w, T tiles summed: F(2, 3): input transform 2, gradient transform
2 (1 per axis), the final (G ⊗ G)ᵀ product over 16 positions 16. F(4, 3): input transform 6, gradient transform
4 (`_a6`: e.g. (q₀ + 4q₂) + (2q₁ + 8q₃), 2 per axis), the final product over 36 positions 3 + 1 + 35 = 39."""


def patches(x, m):
    """The α×α patches of every tile (α = m + 2): x padded by one zero before and up to m + 1 after;
    (B, C, ⌈H/m⌉, ⌈W/m⌉, α, α)."""
    B, C, H, W = x.shape
    nh, nw = conv_winograd.tile_grid(H, W, m)
    x_pad = np.zeros((B, C, m * nh + 2, m * nw + 2))
    x_pad[:, :, 1:1 + H, 1:1 + W] = x
    return np.lib.stride_tricks.sliding_window_view(x_pad, (m + 2, m + 2), axis=(2, 3))[:, :, ::m, ::m]


def winograd_bound(x, w, b, m):
    """Ŷ = |Aᵀ| [Σ_c (|G| |g| |Gᵀ|) ⊙ (|Bᵀ| |d| |B|)] |A| + |b|, tile by tile (B, O, H, W), in float64.

    Eq. M23/M30 with every matrix and input replaced by its absolute value: each rounding of the Winograd
    arithmetic perturbs one of these sums by at most u times its terms' magnitudes, so the computed output's
    error is at most γ_n Ŷ elementwise (γ_n = n u / (1 − n u), Higham, "Accuracy and Stability of Numerical
    Algorithms", §3.1), n = C + FORWARD_ROUNDINGS[m]. Written independently of the kernels: NumPy products on
    the patches.
    """
    B, C, H, W = x.shape
    B_T, G, A_T = (np.abs(a) for a in conv_winograd.MATRICES[m])
    v = B_T @ patches(np.abs(x.astype(np.float64)), m) @ B_T.T
    u = G @ np.abs(w.astype(np.float64)) @ G.T                                              # (O, C, α, α)
    y = A_T @ np.einsum("bcijkl,ockl->boijkl", v, u) @ A_T.T                               # (B, O, nh, nw, m, m)
    nh, nw = y.shape[2:4]
    y = y.transpose(0, 1, 2, 4, 3, 5).reshape(B, -1, m * nh, m * nw)[:, :, :H, :W]
    return y + np.abs(b.astype(np.float64)).reshape(1, -1, 1, 1)


def weight_grad_bound(g, x, m):
    """Ŷ_w[o, c] = Σ_t |G|ᵀ [(|A| |∂Y_t| |A|ᵀ) ⊙ (|Bᵀ| |d_t| |B|)] |G| (eq. M24/M31 in absolute values), in
    float64: the computed ∂w is within γ_n Ŷ_w, n = T + WEIGHT_GRAD_ROUNDINGS[m]."""
    B, C, H, W = x.shape
    nh, nw = conv_winograd.tile_grid(H, W, m)
    g_pad = np.zeros((B, g.shape[1], m * nh, m * nw))
    g_pad[:, :, :H, :W] = np.abs(g)
    q = g_pad.reshape(B, -1, nh, m, nw, m).transpose(0, 1, 2, 4, 3, 5)                        # (B, O, nh, nw, m, m)
    B_T, G, A_T = (np.abs(a) for a in conv_winograd.MATRICES[m])
    v = B_T @ patches(np.abs(x.astype(np.float64)), m) @ B_T.T
    z = A_T.T @ q @ A_T
    return G.T @ np.einsum("boijkl,bcijkl->ockl", z, v) @ G


def gamma(n, dtype):
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def direct_float64(x, w):
    """The reference: the channels-last product (eq. M21) in float64 on the same numbers."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    return conv_ops.conv2d_channels_last(x, w, (1, 1), (1, 1), (1, 1), x.shape[2:])


def forward_excess(y, x, w, b, m):
    """max(|y − y_ref| − γ_n Ŷ − γ_{9C} |x| ⋆ |w|): the error beyond Winograd's bound and the float64 reference's."""
    C = x.shape[1]
    reference = direct_float64(x, w) + b.astype(np.float64).reshape(1, -1, 1, 1)
    magnitude = direct_float64(np.abs(x), np.abs(w)) + np.abs(b).reshape(1, -1, 1, 1)
    reference_error = gamma(9 * C + 1, np.float64) * magnitude
    allowed = gamma(C + FORWARD_ROUNDINGS[m], y.dtype) * winograd_bound(x, w, b, m) + reference_error
    return (np.abs(y - reference) - allowed).max()


shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))


@pytest.mark.parametrize("m", TILES)
@given(shapes, st.sampled_from([np.float64, np.float32]), st.booleans(), st.integers(0, 2**16))
def test_winograd_equals_the_direct_product_within_its_error_bound(m, shape, dtype, bias, seed):
    """Eq. M23 (m = 2) and M30 (m = 4), with the bias of eq. M32, = conv2d (stride 1, padding 1) + b on every
    shape, sizes not multiples of m included: within γ_n Ŷ, the bound their float arithmetic guarantees."""
    B, C, O, H, W = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else np.zeros(O, dtype)
    y = conv_winograd.winograd_conv3x3(x, w, b if bias else None, m)
    assert y.dtype == dtype and y.shape == (B, O, H, W) and y.flags.c_contiguous
    excess = forward_excess(y, x, w, b, m)
    assert excess <= 0, f"exceeds the bound by {excess:.3g}"


def test_the_forward_bound_rejects_a_wrong_filter_transform(monkeypatch):
    """The bound has teeth: with one entry of F(4, 3)'s G wrong (G[3, 1] = 1/6 instead of 1/12, in the
    Kronecker product the filter transform uses) the float64 output leaves it, at the shape of the U-Net's
    (64, 64, 64, 4×4) layer scaled down."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 8, 4, 4)), rng.standard_normal((3, 8, 3, 3)), np.zeros(3)
    assert forward_excess(conv_winograd.winograd_conv3x3(x, w, None, 4), x, w, b, 4) <= 0
    wrong = conv_winograd.G4.copy()
    wrong[3, 1] = 1 / 6
    monkeypatch.setitem(conv_winograd.G_KRON, 4, np.kron(wrong, wrong))
    assert forward_excess(conv_winograd.winograd_conv3x3(x, w, None, 4), x, w, b, 4) > 0


@pytest.mark.parametrize("m", TILES)
@given(shapes, st.sampled_from([np.float64, np.float32]), st.integers(0, 2**16))
def test_winograd_weight_grad_equals_the_direct_product_within_its_error_bound(m, shape, dtype, seed):
    """Eq. M24/M31 (the adjoint of eq. M23/M30 in w) = ∂L/∂w = Gᵀ R (eq. M21) on every shape, sizes not
    multiples of m included: within γ_n Ŷ_w plus the float64 reference's own γ_{B·H·W} |g|ᵀ|R|; and ∂bias
    (eq. M32, summed in the gradient transform) = Σ g within γ_{B·H·W} Σ |g|; dtype kept."""
    B, C, O, H, W = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    g = rng.standard_normal((B, O, H, W)).astype(dtype)
    dw, db = conv_winograd.winograd_weight_grad3x3(g, x, m)
    assert dw.dtype == dtype and dw.shape == (O, C, 3, 3) and db.dtype == dtype and db.shape == (O,)
    as64 = [a.astype(np.float64) for a in (g, x)]
    geometry = ((1, 1), (1, 1), (1, 1))
    reference = conv_ops.conv2d_weight_grad_reference(*as64, (O, C, 3, 3), *geometry)
    reference_error = gamma(B * H * W, np.float64) * conv_ops.conv2d_weight_grad_reference(
        *[np.abs(a) for a in as64], (O, C, 3, 3), *geometry)
    T = B * np.prod(conv_winograd.tile_grid(H, W, m))
    allowed = gamma(T + WEIGHT_GRAD_ROUNDINGS[m], dtype) * weight_grad_bound(g, x, m) + reference_error
    excess = np.abs(dw - reference) - allowed
    assert excess.max() <= 0, f"exceeds the bound by {excess.max():.3g}"
    db_error = np.abs(db - as64[0].sum(axis=(0, 2, 3)))
    assert np.all(db_error <= gamma(B * H * W, dtype) * np.abs(as64[0]).sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("m", TILES)
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from([np.float64, np.float32]))
def test_winograd_batch_slices_cover_the_batch(m, H, W, dtype):
    """A batch larger than one workspace slice: every sample's output is its own convolution, and ∂w and ∂bias
    sum all slices (within their bounds; the factor 2 covers the float64 reference's own rounding)."""
    C, O = 24, 20
    nh, nw = conv_winograd.tile_grid(H, W, m)
    per_sample = (m + 2) ** 2 * (C + O) * nh * nw * np.dtype(dtype).itemsize
    B = conv_winograd.WORKSPACE_BYTES // per_sample + 2
    assert len(conv_winograd.batch_slices(B, C, O, H, W, np.dtype(dtype).itemsize, m)) >= 2
    rng = np.random.default_rng(H * 10 + W)
    x, w = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((O, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    assert forward_excess(conv_winograd.winograd_conv3x3(x, w, b, m), x, w, b, m) <= 0
    g = rng.standard_normal((B, O, H, W)).astype(dtype)
    geometry = ((1, 1), (1, 1), (1, 1))
    reference = conv_ops.conv2d_weight_grad_reference(g.astype(np.float64), x.astype(np.float64), w.shape, *geometry)
    T = B * nh * nw
    dw, db = conv_winograd.winograd_weight_grad3x3(g, x, m)
    error = np.abs(dw - reference)
    assert np.all(error <= 2 * gamma(T + WEIGHT_GRAD_ROUNDINGS[m], dtype) * weight_grad_bound(g, x, m))
    g64 = g.astype(np.float64)
    assert np.all(np.abs(db - g64.sum(axis=(0, 2, 3))) <= gamma(B * H * W, dtype) * np.abs(g64).sum(axis=(0, 2, 3)))


# ------------------------------------------------------------------ the matrices

def exact(matrix):
    """A float matrix of small rationals as Fractions, checked to be those rationals rounded."""
    out = [[Fraction(v).limit_denominator(1000) for v in row] for row in matrix]
    assert all(float(f) == v for row_f, row in zip(out, matrix) for f, v in zip(row_f, row))
    return out


@pytest.mark.parametrize("m", TILES)
@given(st.lists(st.fractions(-100, 100, max_denominator=50), min_size=8, max_size=8),
       st.lists(st.fractions(-100, 100, max_denominator=50), min_size=3, max_size=3))
def test_the_1d_identity_f_m_3_holds_exactly(m, d, g):
    """y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation y_i = Σ_k d_{i+k} g_k, i < m, of an (m + 2)-vector d with g,
    in exact rational arithmetic: F(2, 3) and F(4, 3) (points 0, ±1, ±2, ∞). A single wrong entry of any of
    the three matrices breaks it for almost every d, g."""
    B_T, G, A_T = (exact(a) for a in conv_winograd.MATRICES[m])
    d = d[:m + 2]
    u = [sum(G[i][k] * g[k] for k in range(3)) for i in range(m + 2)]
    v = [sum(B_T[i][k] * d[k] for k in range(m + 2)) for i in range(m + 2)]
    y = [sum(A_T[i][k] * u[k] * v[k] for k in range(m + 2)) for i in range(m)]
    assert y == [sum(d[i + k] * g[k] for k in range(3)) for i in range(m)]


def test_the_f4_matrices_follow_from_the_interpolation_points():
    """F(4, 3)'s matrices from the points p = 0, 1, −1, 2, −2, ∞ (docs/layers.md, eq. M30): with M(s) = Π_p (s − p)
    over the finite points and N_p = Π_{q≠p} (p − q), G's row p is (1, p, p²)/N_p, Aᵀ's column p is (1, p, p², p³),
    Bᵀ's row p the ascending coefficients of M(s)/(s − p); at ∞: (0, 0, 1), (0, 0, 0, 1) and M(s)'s coefficients."""
    points = [Fraction(p) for p in (0, 1, -1, 2, -2)]

    def times(poly, root):                                             # poly · (s − root), ascending coefficients
        return [-root * poly[0]] + [poly[i - 1] - root * poly[i] for i in range(1, len(poly))] + [poly[-1]]

    def product(roots):
        poly = [Fraction(1)]
        for r in roots:
            poly = times(poly, r)
        return poly

    G, A_T, B_T = [], [[] for _ in range(4)], []
    for p in points:
        others = [q for q in points if q != p]
        n_p = np.prod([p - q for q in others])
        G.append([Fraction(1) / n_p, p / n_p, p * p / n_p])
        for i in range(4):
            A_T[i].append(p ** i)
        B_T.append(product(others) + [Fraction(0)])
    G.append([0, 0, 1])
    for i in range(4):
        A_T[i].append(Fraction(int(i == 3)))
    B_T.append(product(points))
    assert exact(conv_winograd.G4) == G
    assert exact(conv_winograd.A4_T) == A_T
    assert exact(conv_winograd.B4_T) == B_T


@pytest.mark.parametrize("m", TILES)
def test_the_2d_transform_is_the_tile_correlation(m):
    """Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A equals the m×m correlation of an α×α patch d with a 3×3 g, for every basis d, g,
    and (G ⊗ G) vec(g) = vec(G g Gᵀ), the filter transform's product."""
    B_T, G, A_T = conv_winograd.MATRICES[m]
    a = m + 2
    for k in range(a * a):
        d = np.zeros(a * a)
        d[k] = 1
        d = d.reshape(a, a)
        for l in range(9):
            g = np.zeros(9)
            g[l] = 1
            g = g.reshape(3, 3)
            direct = np.array([[np.sum(d[p:p + 3, q:q + 3] * g) for q in range(m)] for p in range(m)])
            np.testing.assert_allclose(A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T, direct, atol=1e-14)
    g = np.arange(9.0)
    np.testing.assert_allclose(conv_winograd.G_KRON[m] @ g, (G @ g.reshape(3, 3) @ G.T).ravel(), rtol=1e-15)


# ------------------------------------------------------------------ the bias in the transforms (eq. M32)

@pytest.mark.parametrize("m", TILES)
@given(shapes, st.sampled_from([np.float64, np.float32]), st.integers(0, 2**16))
def test_the_bias_in_the_transforms_equals_adding_it_after(m, shape, dtype, seed):
    """The output transform's y = Aᵀ M A + b equals the plain path's y = Aᵀ M A, then y += b, to the last bit
    (the same two roundings); the gradient transform's ∂bias equals g.sum(axis=(0, 2, 3)) within its
    summation error. A dropped or doubled bias fails both."""
    B, C, O, H, W = shape
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((O, C, 3, 3)).astype(dtype)
    b = (1 + rng.random(O)).astype(dtype)
    plain = conv_winograd.winograd_conv3x3(x, w, None, m)
    plain += b.reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(conv_winograd.winograd_conv3x3(x, w, b, m), plain)
    g = (1 + rng.random((B, O, H, W))).astype(dtype)                          # positive: Σ g is far from 0
    _, db = conv_winograd.winograd_weight_grad3x3(g, x, m)
    np.testing.assert_allclose(db, g.astype(np.float64).sum(axis=(0, 2, 3)), rtol=gamma(B * H * W, dtype), atol=0)


@given(st.integers(1, 2), st.integers(conv_ops.WINOGRAD_MIN_CHANNELS, 12), st.integers(1, 4), st.integers(1, 9),
       st.integers(1, 9), st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_conv2d_with_bias_by_winograd_equals_the_plain_path(B, C, O, H, W, dtype, seed):
    """Through conv2d with the default dispatch: y and ∂bias of the Winograd path (bias in the transforms)
    equal the channel-major reference's y = W cols + b and Σ_{b,u,v} g."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((O, C, 3, 3)).astype(dtype)
    b, g = rng.standard_normal(O).astype(dtype), rng.standard_normal((B, O, H, W)).astype(dtype)
    assert conv_ops.uses_winograd(x, w, (1, 1), (1, 1), (1, 1))
    xt, wt, bt = (md.Tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, padding=1)
    y.backward(g)
    reference = conv_ops.conv2d_reference(x, w, (1, 1), (1, 1), (1, 1)) + b.reshape(1, -1, 1, 1)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    scale = 9 * C * np.abs(x).max() * np.abs(w).max() + np.abs(b).max()
    np.testing.assert_allclose(y.numpy(), reference, rtol=0, atol=tol * scale)
    np.testing.assert_allclose(bt.grad, g.sum(axis=(0, 2, 3)), rtol=0, atol=tol * B * H * W * np.abs(g).max())


# ------------------------------------------------------------------ the dispatch

def test_uses_winograd_only_where_it_applies_and_was_measured_faster():
    """F(4×4, 3×3) where its padded tiles take fewer multiplications than F(2×2, 3×3)'s (36⌈H/4⌉⌈W/4⌉ <
    16⌈H/2⌉⌈W/2⌉: every square size but 1, 2, 5, 6), F(2×2, 3×3) on the others, neither with
    fewer than WINOGRAD_MIN_CHANNELS input channels or outside 3×3, stride 1, padding 1, dilation 1, NumPy."""
    n = conv_ops.WINOGRAD_MIN_CHANNELS
    one, unit = (1, 1), (1, 1)

    def tile(C, H, W, dtype=np.float32, kernel=(3, 3), stride=one, padding=unit, dilation=one):
        x, w = np.ones((2, C, H, W), dtype), np.ones((1, C) + kernel, dtype)
        return conv_ops.uses_winograd(x, w, stride, padding, dilation)

    for H, W in [(3, 3), (4, 4), (7, 7), (8, 8), (10, 10), (16, 16), (32, 32), (12, 9), (4, 3), (6, 4)]:
        assert tile(n, H, W) == 4 and tile(n, H, W, np.float64) == 4
    for H, W in [(1, 1), (2, 2), (5, 5), (6, 6), (5, 6), (2, 8), (1, 9)]:
        assert tile(n, H, W) == 2
    assert tile(n - 1, 8, 8) == 0                                            # too few input channels
    assert tile(n, 8, 8, stride=(2, 2)) == 0
    assert tile(n, 8, 8, padding=(0, 0)) == 0
    assert tile(n, 8, 8, dilation=(2, 2)) == 0
    assert tile(n, 8, 8, kernel=(3, 1)) == 0
    assert tile(n, 8, 8, np.float16) == 0


def _counting(monkeypatch):
    """Record each call of the two Winograd entry points as ("conv", x.shape, w.shape, m) or
    ("dw", g.shape, x.shape, m)."""
    calls = []
    conv, weight_grad = conv_winograd.winograd_conv3x3, conv_winograd.winograd_weight_grad3x3

    def conv_spy(x, w, b=None, m=2):
        calls.append(("conv", x.shape, w.shape, m))
        return conv(x, w, b, m)

    def weight_grad_spy(g, x, m=2):
        calls.append(("dw", g.shape, x.shape, m))
        return weight_grad(g, x, m)

    monkeypatch.setattr(conv_winograd, "winograd_conv3x3", conv_spy)
    monkeypatch.setattr(conv_winograd, "winograd_weight_grad3x3", weight_grad_spy)
    return calls


def _force(monkeypatch, m):
    """Every convolution where a Winograd path applies (any channel count) runs F(m×m, 3×3)."""
    rule = conv_ops.uses_winograd
    monkeypatch.setattr(conv_ops, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_ops, "uses_winograd", lambda *args: m if rule(*args) else 0)


@pytest.mark.parametrize("m", TILES)
@given(st.integers(1, 2), st.integers(1, 20), st.integers(1, 5), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_conv2d_runs_winograd_forward_and_both_gradients(m, B, C, O, H, W, dtype, seed):
    """conv2d's forward (eq. M23/M30), its stride-1 input gradient (eq. M20 by eq. M23/M30, a convolution of g
    with the flipped, transposed kernel: O input channels) and its weight gradient (eq. M24/M31) take
    F(m×m, 3×3) where the dispatch says, and equal the channel-major reference (eq. M1-M4) for y, ∂x and ∂w:
    float64 to 1e-12 of the scale, float32 to 1e-5."""
    with pytest.MonkeyPatch.context() as mp:
        calls = _counting(mp)
        _force(mp, m)
        rng = np.random.default_rng(seed)
        x, w = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((O, C, 3, 3)).astype(dtype)
        g = rng.standard_normal((B, O, H, W)).astype(dtype)
        xt, wt = md.Tensor(x, requires_grad=True), md.Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, padding=1)
        y.backward(g)
    assert sorted(calls) == sorted([("conv", (B, C, H, W), (O, C, 3, 3), m), ("conv", (B, O, H, W), (C, O, 3, 3), m),
                                    ("dw", (B, O, H, W), (B, C, H, W), m)])
    geometry = ((1, 1), (1, 1), (1, 1))
    pairs = [(y.numpy(), conv_ops.conv2d_reference(x, w, *geometry)),
             (xt.grad, conv_ops.conv2d_input_grad_reference(g, w, x.shape, *geometry)),
             (wt.grad, conv_ops.conv2d_weight_grad_reference(g, x, w.shape, *geometry))]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for fast, reference in pairs:
        assert fast.dtype == dtype and fast.shape == reference.shape
        scale = np.abs(x).max() * np.abs(w).max() * np.abs(g).max() * 9 * max(C, O)
        np.testing.assert_allclose(fast, reference, rtol=0, atol=tol * scale)


def test_the_dispatch_picks_each_path_in_a_training_step(monkeypatch):
    """With the default rule, in one conv2d forward and backward per case: the U-Net's 8×8 and 4×4 layers take
    F(4×4, 3×3) in all three roles, a 6×6 layer F(2×2, 3×3), and a layer with one input channel (the first
    convolution) the direct product for its forward and ∂w, while its input gradient (a convolution of g, with
    C_out channels) takes F(4×4, 3×3); a layer with one output channel (the last) takes F(4×4, 3×3) for its
    forward and ∂w and the direct product for its input gradient."""
    calls = _counting(monkeypatch)
    n = conv_ops.WINOGRAD_MIN_CHANNELS

    def step(C, O, H, W):
        calls.clear()
        x = md.Tensor(np.ones((1, C, H, W)), requires_grad=True)
        w = md.Tensor(np.ones((O, C, 3, 3)), requires_grad=True)
        F.conv2d(x, w, padding=1).backward(np.ones((1, O, H, W)))
        return sorted((kind, m) for kind, _, _, m in calls)

    assert step(32, 32, 8, 8) == [("conv", 4), ("conv", 4), ("dw", 4)]
    assert step(64, 64, 4, 4) == [("conv", 4), ("conv", 4), ("dw", 4)]
    assert step(32, 32, 6, 6) == [("conv", 2), ("conv", 2), ("dw", 2)]
    assert step(n - 1, 32, 8, 8) == [("conv", 4)]                            # only the input gradient
    assert step(32, n - 1, 8, 8) == [("conv", 4), ("dw", 4)]                 # all but the input gradient


@pytest.mark.parametrize("m", TILES)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_conv2d_by_winograd_gradcheck(m, O, H, W, bias):
    """Float64 finite differences through conv2d with F(m×m, 3×3) forced on (and the bias in its transforms)."""
    rng = np.random.default_rng(O * 100 + H * 10 + W)
    x, w = rng.standard_normal((1, 2, H, W)), rng.standard_normal((O, 2, 3, 3))
    b = rng.standard_normal(O) if bias else None
    with pytest.MonkeyPatch.context() as mp:
        calls = _counting(mp)
        _force(mp, m)
        if bias:
            gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b])
        else:
            gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])
    assert calls and all(c[-1] == m for c in calls)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(st.integers(1, 2), st.integers(conv_ops.WINOGRAD_MIN_CHANNELS, 24), st.integers(1, 24), st.integers(1, 9),
       st.integers(1, 9), st.booleans(), st.integers(0, 99))
def test_conv2d_by_winograd_matches_torch(dtype, B, C, O, H, W, bias, seed):
    """With the default dispatch (F(4×4, 3×3) or F(2×2, 3×3) by H, W; no patching), values and all gradients
    agree with torch.nn.functional.conv2d."""
    import torch.nn.functional as tF
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, C, H, W)), rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)
    b = rng.standard_normal(O) if bias else None
    assert conv_ops.uses_winograd(x, w, (1, 1), (1, 1), (1, 1))
    assert_matches_torch(lambda x, w, b: F.conv2d(x, w, b, padding=1),
                         lambda x, w, b: tF.conv2d(x, w, b, padding=1), [x, w, b], dtype)
