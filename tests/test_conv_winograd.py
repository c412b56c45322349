"""Winograd F(2×2, 3×3) (docs/layers.md eq. M23, M24) against the channels-last products it replaces, within
the forward error bound of its own arithmetic; the dispatch that routes conv2d's forward, stride-1 input
gradient and weight gradient to it; and conv2d through it against finite differences and PyTorch."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidiff as md
import minidiff.functional as F
from minidiff.ops import conv as conv_ops
from minidiff.ops import conv_winograd
from minidiff.testing import gradcheck
from tests.layers_oracle import assert_matches_torch

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)


def abs_patches(x):
    """|d| of every tile: the 4×4 patches of |x| padded by one zero before, up to two after; (B, C, nh, nw, 4, 4)."""
    B, C, H, W = x.shape
    nh, nw = (H + 1) // 2, (W + 1) // 2
    x_pad = np.zeros((B, C, 2 * nh + 2, 2 * nw + 2))
    x_pad[:, :, 1:1 + H, 1:1 + W] = np.abs(x)
    return np.lib.stride_tricks.sliding_window_view(x_pad, (4, 4), axis=(2, 3))[:, :, ::2, ::2]


def winograd_bound(x, w):
    """Ŷ = |Aᵀ| [Σ_c (|G| |g| |Gᵀ|) ⊙ (|Bᵀ| |d| |B|)] |A|, tile by tile (B, O, H, W), in float64.

    Eq. M23 with every matrix and input replaced by its absolute value: each rounding of the Winograd
    arithmetic perturbs one of these sums by at most u times its terms' magnitudes, so the computed
    output's error is at most γ_n Ŷ elementwise (γ_n = n u / (1 − n u), Higham, "Accuracy and Stability
    of Numerical Algorithms", §3.1), n counting the additions along any path: 2 in the input transform,
    8 in the filter transform (9 terms), C in the sum over channels and its products, 4 in the output
    transform. Written independently of the kernels: NumPy products on 4×4 patches.
    """
    B, C, H, W = x.shape
    nh, nw = (H + 1) // 2, (W + 1) // 2
    v = np.abs(B_T) @ abs_patches(x) @ np.abs(B_T).T
    w = np.abs(w.astype(np.float64))
    G = np.abs(conv_winograd.G_MATRIX)
    u = G @ w @ G.T                                                                             # (O, C, 4, 4)
    m = np.einsum("bcijkl,ockl->boijkl", v, u)
    y = np.abs(A_T) @ m @ np.abs(A_T).T                                                         # (B, O, nh, nw, 2, 2)
    return y.transpose(0, 1, 2, 4, 3, 5).reshape(B, -1, 2 * nh, 2 * nw)[:, :, :H, :W]


def weight_grad_bound(g, x):
    """Ŷ_w[o, c] = Σ_t |G|ᵀ [(|A| |∂Y_t| |A|ᵀ) ⊙ (|Bᵀ| |d_t| |B|)] |G| (eq. M24 in absolute values), in float64:
    the computed ∂w is within γ_{T+16} Ŷ_w (2 additions in each of the two tile transforms, T tiles summed,
    8 in the final (G ⊗ G)ᵀ product)."""
    B, C, H, W = x.shape
    nh, nw = (H + 1) // 2, (W + 1) // 2
    g_pad = np.zeros((B, g.shape[1], 2 * nh, 2 * nw))
    g_pad[:, :, :H, :W] = np.abs(g)
    q = g_pad.reshape(B, -1, nh, 2, nw, 2).transpose(0, 1, 2, 4, 3, 5)                          # (B, O, nh, nw, 2, 2)
    v = np.abs(B_T) @ abs_patches(x) @ np.abs(B_T).T
    z = np.abs(A_T).T @ q @ np.abs(A_T)
    p = np.einsum("boijkl,bcijkl->ockl", z, v)
    G = np.abs(conv_winograd.G_MATRIX)
    return G.T @ p @ G


def gamma(n, dtype):
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def direct_float64(x, w):
    """The reference: the channels-last product (eq. M21) in float64 on the same numbers."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    return conv_ops.conv2d_channels_last(x, w, (1, 1), (1, 1), (1, 1), x.shape[2:])


def assert_within_bound(y, x, w):
    """|y − y_ref| <= γ_{C+14} Ŷ (Winograd's rounding) + γ_{9C} |x| ⋆ |w| (the float64 reference's)."""
    C = x.shape[1]
    reference = direct_float64(x, w)
    reference_error = gamma(9 * C, np.float64) * direct_float64(np.abs(x), np.abs(w))
    allowed = gamma(C + 14, y.dtype) * winograd_bound(x, w) + reference_error
    excess = np.abs(y - reference) - allowed
    assert excess.max() <= 0, f"exceeds the bound by {excess.max():.3g} (largest |y| {np.abs(reference).max():.3g})"


shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))


@given(shapes, st.sampled_from([np.float64, np.float32]), st.integers(0, 2**16))
def test_winograd_equals_the_direct_product_within_its_error_bound(shape, dtype, seed):
    """Eq. M23 = conv2d (stride 1, padding 1) on every shape, odd sizes included: within γ_{C+14} Ŷ, the
    bound its float arithmetic guarantees (≈ 1e-15 relative in float64, ≈ 1e-6 in float32), dtype kept."""
    B, C, O, H, W = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, 3, 3)).astype(dtype)
    y = conv_winograd.winograd_conv3x3(x, w)
    assert y.dtype == dtype and y.shape == (B, O, H, W) and y.flags.c_contiguous
    assert_within_bound(y, x, w)


@given(shapes, st.sampled_from([np.float64, np.float32]), st.integers(0, 2**16))
def test_winograd_weight_grad_equals_the_direct_product_within_its_error_bound(shape, dtype, seed):
    """Eq. M24 (the adjoint of eq. M23 in w) = ∂L/∂w = Gᵀ R (eq. M21) on every shape, odd sizes included:
    within γ_{T+16} Ŷ_w plus the float64 reference's own γ_{B·H·W} |g|ᵀ|R|, dtype kept."""
    B, C, O, H, W = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    g = rng.standard_normal((B, O, H, W)).astype(dtype)
    dw = conv_winograd.winograd_weight_grad3x3(g, x)
    assert dw.dtype == dtype and dw.shape == (O, C, 3, 3)
    as64 = [a.astype(np.float64) for a in (g, x)]
    geometry = ((1, 1), (1, 1), (1, 1))
    reference = conv_ops.conv2d_weight_grad_reference(*as64, (O, C, 3, 3), *geometry)
    reference_error = gamma(B * H * W, np.float64) * conv_ops.conv2d_weight_grad_reference(
        *[np.abs(a) for a in as64], (O, C, 3, 3), *geometry)
    T = B * ((H + 1) // 2) * ((W + 1) // 2)
    excess = np.abs(dw - reference) - gamma(T + 16, dtype) * weight_grad_bound(g, x) - reference_error
    assert excess.max() <= 0, f"exceeds the bound by {excess.max():.3g}"


@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from([np.float64, np.float32]))
def test_winograd_batch_slices_cover_the_batch(H, W, dtype):
    """A batch larger than one workspace slice: every sample's output is its own convolution, and ∂w sums
    all slices (within their bounds; the factor 2 covers the float64 reference's own rounding)."""
    C, O = 24, 20
    per_sample = 16 * (C + O) * ((H + 1) // 2) * ((W + 1) // 2) * np.dtype(dtype).itemsize
    B = conv_winograd.WORKSPACE_BYTES // per_sample + 2
    assert len(conv_winograd.batch_slices(B, C, O, H, W, np.dtype(dtype).itemsize)) >= 2
    rng = np.random.default_rng(H * 10 + W)
    x, w = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((O, C, 3, 3)).astype(dtype)
    assert_within_bound(conv_winograd.winograd_conv3x3(x, w), x, w)
    g = rng.standard_normal((B, O, H, W)).astype(dtype)
    geometry = ((1, 1), (1, 1), (1, 1))
    reference = conv_ops.conv2d_weight_grad_reference(g.astype(np.float64), x.astype(np.float64), w.shape, *geometry)
    T = B * ((H + 1) // 2) * ((W + 1) // 2)
    error = np.abs(conv_winograd.winograd_weight_grad3x3(g, x) - reference)
    assert np.all(error <= 2 * gamma(T + 16, dtype) * weight_grad_bound(g, x))      # ∂w sums every slice


def test_the_transform_matrices_are_lavin_and_gray_s():
    """Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A equals the 2×2 correlation of a 4×4 patch d with a 3×3 g, for every basis d, g."""
    G = conv_winograd.G_MATRIX
    for k in range(16):
        d = np.zeros(16)
        d[k] = 1
        d = d.reshape(4, 4)
        for l in range(9):
            g = np.zeros(9)
            g[l] = 1
            g = g.reshape(3, 3)
            direct = np.array([[np.sum(d[p:p + 3, q:q + 3] * g) for q in range(2)] for p in range(2)])
            np.testing.assert_allclose(A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T, direct, atol=1e-15)
    g = np.arange(9.0)
    np.testing.assert_array_equal(conv_winograd.G_KRON @ g, (G @ g.reshape(3, 3) @ G.T).ravel())


# ------------------------------------------------------------------ the dispatch

def test_uses_winograd_only_where_it_applies_and_was_measured_faster():
    n = conv_ops.WINOGRAD_MIN_CHANNELS
    x, w = np.ones((2, n, 5, 5), np.float32), np.ones((4, n, 3, 3), np.float32)
    one, unit = (1, 1), (1, 1)
    assert conv_ops.uses_winograd(x, w, one, unit, one)
    assert conv_ops.uses_winograd(x.astype(np.float64), w.astype(np.float64), one, unit, one)
    assert not conv_ops.uses_winograd(x[:, :n - 1], w[:, :n - 1], one, unit, one)          # too few input channels
    m = conv_ops.WINOGRAD_MIN_OUT_CHANNELS
    assert conv_ops.uses_winograd(x, w[:m], one, unit, one)
    assert not conv_ops.uses_winograd(x, w[:m - 1], one, unit, one)                         # too few output channels
    assert not conv_ops.uses_winograd(x, w, (2, 2), unit, one)                              # stride
    assert not conv_ops.uses_winograd(x, w, one, (0, 0), one)                               # padding
    assert not conv_ops.uses_winograd(x, w, one, unit, (2, 2))                              # dilation
    assert not conv_ops.uses_winograd(x, np.ones((4, n, 3, 1), np.float32), one, unit, one)  # kernel
    assert not conv_ops.uses_winograd(x.astype(np.float16), w.astype(np.float16), one, unit, one)


def _counting(monkeypatch):
    """Record each call of the two Winograd entry points as ("conv", x.shape, w.shape) or ("dw", g.shape, x.shape)."""
    calls = []
    conv, weight_grad = conv_winograd.winograd_conv3x3, conv_winograd.winograd_weight_grad3x3

    def conv_spy(x, w):
        calls.append(("conv", x.shape, w.shape))
        return conv(x, w)

    def weight_grad_spy(g, x):
        calls.append(("dw", g.shape, x.shape))
        return weight_grad(g, x)

    monkeypatch.setattr(conv_winograd, "winograd_conv3x3", conv_spy)
    monkeypatch.setattr(conv_winograd, "winograd_weight_grad3x3", weight_grad_spy)
    return calls


@given(st.integers(1, 2), st.integers(1, 20), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_conv2d_runs_winograd_forward_and_both_gradients(B, C, O, H, W, dtype, seed):
    """conv2d's forward (eq. M23), its stride-1 input gradient (eq. M20 by eq. M23, a convolution of g with
    the flipped, transposed kernel: O input channels) and its weight gradient (eq. M24) take Winograd where
    `uses_winograd` says, and equal the channel-major reference (eq. M1-M4) for y, ∂x and ∂w: float64 to
    1e-12 of the scale, float32 to 1e-5."""
    with pytest.MonkeyPatch.context() as mp:
        calls = _counting(mp)
        mp.setattr(conv_ops, "WINOGRAD_MIN_CHANNELS", 1)
        mp.setattr(conv_ops, "WINOGRAD_MIN_OUT_CHANNELS", 1)
        rng = np.random.default_rng(seed)
        x, w = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((O, C, 3, 3)).astype(dtype)
        g = rng.standard_normal((B, O, H, W)).astype(dtype)
        xt, wt = md.Tensor(x, requires_grad=True), md.Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, padding=1)
        y.backward(g)
    assert sorted(calls) == sorted([("conv", (B, C, H, W), (O, C, 3, 3)), ("conv", (B, O, H, W), (C, O, 3, 3)),
                                    ("dw", (B, O, H, W), (B, C, H, W))])
    geometry = ((1, 1), (1, 1), (1, 1))
    pairs = [(y.numpy(), conv_ops.conv2d_reference(x, w, *geometry)),
             (xt.grad, conv_ops.conv2d_input_grad_reference(g, w, x.shape, *geometry)),
             (wt.grad, conv_ops.conv2d_weight_grad_reference(g, x, w.shape, *geometry))]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for fast, reference in pairs:
        assert fast.dtype == dtype and fast.shape == reference.shape
        scale = np.abs(x).max() * np.abs(w).max() * np.abs(g).max() * 9 * max(C, O)
        np.testing.assert_allclose(fast, reference, rtol=0, atol=tol * scale)


def test_the_threshold_routes_few_channels_to_the_direct_product(monkeypatch):
    """Below WINOGRAD_MIN_CHANNELS input channels the forward and ∂w stay on eq. M21; so does an input gradient
    whose g has too few channels (the U-Net's last convolution: C_out = 1), and a forward with C_out = 1."""
    calls = _counting(monkeypatch)
    n = conv_ops.WINOGRAD_MIN_CHANNELS

    def param(*shape):
        return md.Tensor(np.ones(shape), requires_grad=True)

    x, w = param(1, n - 1, 4, 4), param(n, n - 1, 3, 3)
    F.conv2d(x, w, padding=1).backward(np.ones((1, n, 4, 4)))
    assert calls == [("conv", (1, n, 4, 4), (n - 1, n, 3, 3))]          # the input gradient only: g has n channels
    calls.clear()
    x, w = param(1, n, 4, 4), param(1, n, 3, 3)
    F.conv2d(x, w, padding=1).backward(np.ones((1, 1, 4, 4)))
    assert calls == []                                                     # C_out = 1: none
    w = param(conv_ops.WINOGRAD_MIN_OUT_CHANNELS, n, 3, 3)
    F.conv2d(x, w, padding=1).backward(np.ones((1, w.shape[0], 4, 4)))
    assert sorted(calls) == sorted([("conv", (1, n, 4, 4), w.shape), ("dw", (1, w.shape[0], 4, 4), (1, n, 4, 4))])


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_conv2d_by_winograd_gradcheck(O, H, W, bias):
    """Float64 finite differences through conv2d with Winograd forced on (threshold 1)."""
    rng = np.random.default_rng(O * 100 + H * 10 + W)
    x, w = rng.standard_normal((1, 2, H, W)), rng.standard_normal((O, 2, 3, 3))
    b = rng.standard_normal(O) if bias else None
    with pytest.MonkeyPatch.context() as mp:
        calls = _counting(mp)
        mp.setattr(conv_ops, "WINOGRAD_MIN_CHANNELS", 1)
        mp.setattr(conv_ops, "WINOGRAD_MIN_OUT_CHANNELS", 1)
        if bias:
            gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b])
        else:
            gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])
    assert calls


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(st.integers(1, 2), st.integers(16, 24), st.integers(2, 24), st.integers(1, 7), st.integers(1, 7),
       st.booleans(), st.integers(0, 99))
def test_conv2d_by_winograd_matches_torch(dtype, B, C, O, H, W, bias, seed):
    """At the threshold's channel counts (the default dispatch, no patching), values and all gradients
    agree with torch.nn.functional.conv2d."""
    import torch.nn.functional as tF
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, C, H, W)), rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)
    b = rng.standard_normal(O) if bias else None
    assert conv_ops.uses_winograd(x, w, (1, 1), (1, 1), (1, 1))
    assert_matches_torch(lambda x, w, b: F.conv2d(x, w, b, padding=1),
                         lambda x, w, b: tF.conv2d(x, w, b, padding=1), [x, w, b], dtype)
