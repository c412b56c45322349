"""conv2d, conv_transpose2d and avg_pool2d: float64 gradchecks and PyTorch comparisons over
hypothesis-drawn geometries (kernel, stride, padding, output padding, dilation), the adjoint law
that ties the two convolutions together, and clear errors for bad input (docs/layers.md §1-3)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minidiff as md
import minidiff.functional as F
from minidiff.ops import conv as conv_ops, conv_subpixel
from minidiff.testing import gradcheck
from tests.layers_oracle import assert_matches_torch
from tests.strategies import arrays
from tests.strategies_layers import conv_problems, conv_transpose_problems, pool_problems


def _with_bias(fn, b):
    """A function of (x, w[, b]) for gradcheck/compare, leaving b out when it is None."""
    return (lambda x, w: fn(x, w, None)) if b is None else fn


# ------------------------------------------------------------------ gradchecks (float64, eq. M3-M5)

@given(conv_problems(max_side=6))
def test_conv2d_gradcheck(problem):
    x, w, b, geo = problem
    gradcheck(_with_bias(lambda x, w, b: F.conv2d(x, w, b, **geo), b), [x, w] + ([] if b is None else [b]))


@given(conv_transpose_problems(max_side=4))
def test_conv_transpose2d_gradcheck(problem):
    x, w, b, geo = problem
    gradcheck(_with_bias(lambda x, w, b: F.conv_transpose2d(x, w, b, **geo), b), [x, w] + ([] if b is None else [b]))


@given(pool_problems())
def test_avg_pool2d_gradcheck(problem):
    x, kernel, stride, padding = problem
    gradcheck(lambda x: F.avg_pool2d(x, kernel, stride, padding), [x])


# ------------------------------------------------------------------ laws

@given(conv_problems(), st.data())
def test_conv_transpose_is_the_adjoint_of_conv(problem, data):
    """⟨conv2d(x, w), y⟩ = ⟨x, conv_transpose2d(y, w)⟩ whenever the transposed conv restores x's size."""
    x, w, _, geo = problem
    y_shape = F.conv2d(x, w, **geo).shape
    y = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(y_shape)
    # output_padding recovers the rows that the stride's floor dropped
    extra = tuple(n + 2 * p - d * (k - 1) - 1 - (m - 1) * s for n, m, k, s, p, d in
                  zip(x.shape[2:], y_shape[2:], w.shape[2:], geo["stride"], geo["padding"], geo["dilation"]))
    back = F.conv_transpose2d(y, w, output_padding=extra, **geo)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.vdot(F.conv2d(x, w, **geo), y), np.vdot(x, back), rtol=1e-10, atol=1e-10)


@given(conv_problems(max_channels=2))
def test_conv2d_equals_direct_sum(problem):
    """im2col + matmul equals the defining sum y[b,o,u,v] = Σ w[o,c,i,j] x_pad[b,c,su+di,sv+dj] + bias[o]."""
    x, w, b, geo = problem
    (sh, sw), (ph, pw), (dh, dw) = geo["stride"], geo["padding"], geo["dilation"]
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = F.conv2d(x, w, b, **geo)
    direct = np.zeros_like(y)
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            patch = xp_[:, :, dh * i::sh, dw * j::sw][:, :, :y.shape[2], :y.shape[3]]
            direct += np.einsum("oc,bcuv->bouv", w[:, :, i, j], patch)
    if b is not None:
        direct += b[None, :, None, None]
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    args = ((3, 2), (2, 1), (1, 2), (2, 1))
    out_hw = tuple(conv_ops.conv_output_size(n, *a) for n, a in zip(x.shape[2:], zip(*args)))
    cols = conv_ops.im2col(x, *args, out_hw=out_hw)
    r = rng.standard_normal(cols.shape)
    taps = r.reshape((3, 3, 2, 2) + out_hw).transpose(1, 2, 0, 3, 4, 5)   # rows (c, i, j) -> taps[i, j] (C, B, ...)
    back = conv_ops.col2im(taps, x.shape, *args[1:])
    np.testing.assert_allclose(np.vdot(cols, r), np.vdot(x, back), rtol=1e-12)


@given(conv_problems(max_channels=4, max_side=9), st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_stride_one_input_grad_as_a_conv_equals_col2im(problem, dtype, seed):
    """Eq. M20 (∂L/∂x as conv2d of g with the flipped kernel) equals eq. M4's col2im form: to 1e-12 in
    float64, to float32 round-off in float32; every stride-1 geometry with p <= d(k − 1) takes it."""
    x, w, _, geo = problem
    geo["stride"] = (1, 1)
    assume(all(p <= d * (k - 1) for p, d, k in zip(geo["padding"], geo["dilation"], w.shape[2:])))
    x, w = x.astype(dtype), w.astype(dtype)
    y_shape = F.conv2d(x, w, **geo).shape
    g = np.random.default_rng(seed).standard_normal(y_shape).astype(dtype)
    args = (g, w, x.shape, geo["stride"], geo["padding"], geo["dilation"])
    assert conv_ops._input_grad_is_a_conv(*args)
    fast, reference = conv_ops.conv2d_input_grad(*args), conv_ops.conv2d_input_grad_reference(*args)
    assert fast.dtype == reference.dtype == dtype and fast.shape == reference.shape == x.shape
    scale = np.abs(g).sum(axis=1).max() * np.abs(w).max() * w.shape[2] * w.shape[3] + 1e-30
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(fast, reference, rtol=0, atol=tol * scale)


@given(conv_problems(max_channels=4, max_side=9), st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_channels_last_path_equals_the_channel_major_reference(problem, dtype, seed):
    """Eq. M21 (the Functions' channels-last products) equals eq. M1-M4 (channel-major im2col/col2im) for
    the output, ∂w and ∂x on every geometry: to 1e-12 in float64, float32 round-off in float32, dtype kept."""
    x, w, _, geo = problem
    x, w = x.astype(dtype), w.astype(dtype)
    geometry = (geo["stride"], geo["padding"], geo["dilation"])
    y = F.conv2d(x, w, **geo)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    xt, wt = md.Tensor(x, requires_grad=True), md.Tensor(w, requires_grad=True)
    F.conv2d(xt, wt, **geo).backward(g)
    pairs = [(y, conv_ops.conv2d_reference(x, w, *geometry)),
             (wt.grad, conv_ops.conv2d_weight_grad_reference(g, x, w.shape, *geometry)),
             (xt.grad, conv_ops.conv2d_input_grad_reference(g, w, x.shape, *geometry))]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for fast, reference in pairs:
        assert fast.dtype == reference.dtype == dtype and fast.shape == reference.shape
        scale = np.abs(reference).max() + np.abs(x).max() * np.abs(w).max() * np.abs(g).max() * w[0].size + 1e-30
        np.testing.assert_allclose(fast, reference, rtol=0, atol=tol * scale)


def assert_close_to_rounding(fast, reference, dtype, scale):
    """fast equals reference in dtype and shape, to 1e-12·scale in float64 and 1e-5·scale in float32."""
    assert fast.dtype == reference.dtype == dtype and fast.shape == reference.shape
    np.testing.assert_allclose(fast, reference, rtol=0, atol=(1e-12 if dtype == np.float64 else 1e-5) * scale)


@st.composite
def pointwise_problems(draw):
    """(x, w, g) for a 1×1 convolution: x (B, C, H, W), w (O, C, 1, 1), upstream g (B, O, H, W)."""
    B, C, O, H, W = (draw(st.integers(1, n)) for n in (3, 5, 5, 6, 6))
    return draw(arrays((B, C, H, W))), draw(arrays((O, C, 1, 1))), draw(arrays((B, O, H, W)))


@given(pointwise_problems(), st.sampled_from([np.float64, np.float32]))
def test_pointwise_path_equals_the_channels_last_reference(problem, dtype):
    """Eq. M27 (y[b] = W x[b], ∂x[b] = Wᵀ g[b], ∂W = Σ_b g[b] x[b]ᵀ, NCHW) equals eq. M21's channels-last products
    (forward, stride-1 input gradient, ∂w) on every 1×1 shape: 1e-12 in float64, float32 round-off in float32."""
    x, w, g = (a.astype(dtype) for a in problem)
    geometry, out_hw = ((1, 1), (0, 0), (1, 1)), x.shape[2:]
    (B, C, H, W), O = x.shape, w.shape[0]                 # |x|, |w|, |g| <= 2: each sum is at most 4 per term
    assert_close_to_rounding(conv_ops.pointwise_conv(x, w), conv_ops.conv2d_channels_last(x, w, *geometry, out_hw),
                             dtype, 4 * C)
    assert_close_to_rounding(conv_ops.pointwise_input_grad(g, w),
                             conv_ops.conv2d_input_grad_as_conv(g, w, x.shape, (0, 0), (1, 1)), dtype, 4 * O)
    assert_close_to_rounding(conv_ops.pointwise_weight_grad(g, x),
                             conv_ops.weight_grad_channels_last(conv_ops.as_rows(g), x, w.shape, *geometry, out_hw),
                             dtype, 4 * B * H * W)


@given(pointwise_problems(), st.booleans(), st.integers(1, 2))
def test_pointwise_conv2d_gradcheck(problem, with_bias, dilation):
    """Eq. M27's three products by central differences (float64), bias or not; hypothesis's conv geometries
    reach a 1×1 stride-1 padding-0 kernel too rarely to test it."""
    x, w, g = problem
    b = g[0, :, 0, 0] if with_bias else None
    gradcheck(_with_bias(lambda x, w, b: F.conv2d(x, w, b, dilation=dilation), b), [x, w] + ([] if b is None else [b]))


def test_conv2d_runs_the_pointwise_path_for_1x1_kernels(monkeypatch):
    """Conv2d's forward and both gradients go through eq. M27 for 1×1, stride 1, padding 0 (any dilation), only then."""
    calls = []
    for name in ("pointwise_conv", "pointwise_input_grad", "pointwise_weight_grad"):
        fn = getattr(conv_ops, name)
        monkeypatch.setattr(conv_ops, name, lambda *a, fn=fn, name=name: calls.append(name) or fn(*a))
    rng = np.random.default_rng(0)
    for w_shape, geo, expected in [((4, 3, 1, 1), dict(dilation=2), 3), ((4, 3, 1, 1), dict(stride=2), 0),
                                   ((4, 3, 1, 1), dict(padding=1), 0), ((4, 3, 3, 1), {}, 0)]:
        calls.clear()
        x, w = md.Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True), md.Tensor(rng.standard_normal(w_shape),
                                                                                             requires_grad=True)
        F.conv2d(x, w, **geo).sum().backward()
        assert sorted(calls) == (sorted(["pointwise_conv", "pointwise_input_grad", "pointwise_weight_grad"])
                                 if expected else []), (w_shape, geo, calls)


@given(conv_transpose_problems(max_channels=4, max_side=6), st.sampled_from([np.float64, np.float32]),
       st.integers(0, 99))
def test_subpixel_transposed_conv_equals_col2im(problem, dtype, seed):
    """Eq. M28 (one stride-1 product per output phase, interleaved) equals col2im of ∂R = G W_t (eq. M21, M4) for
    every geometry with dilation 1, stride > 1 and any output_padding: 1e-12 in float64, round-off in float32."""
    x, w, _, geo = problem
    assume(max(geo["stride"]) > 1)
    x, w = x.astype(dtype), w.astype(dtype)
    out_hw = tuple((n - 1) * s - 2 * p + k + op for n, k, s, p, op in
                   zip(x.shape[2:], w.shape[2:], geo["stride"], geo["padding"], geo["output_padding"]))
    y_shape = (x.shape[0], w.shape[1]) + out_hw
    assert conv_subpixel.uses_subpixel(x, w, geo["stride"], (1, 1))
    fast = conv_subpixel.conv2d_input_grad_subpixel(x, w, y_shape, geo["stride"], geo["padding"])
    reference = conv_ops.conv2d_input_grad_col2im(x, w, y_shape, geo["stride"], geo["padding"], (1, 1))
    assert_close_to_rounding(fast, reference, dtype, 4 * w.shape[0] * w.shape[2] * w.shape[3])   # |x|, |w| <= 2


def test_strided_input_gradients_run_the_subpixel_path(monkeypatch):
    """ConvTranspose2d's forward and a strided Conv2d's input gradient take eq. M28 on NumPy with dilation 1; a
    dilated or stride-1 one does not."""
    calls = []
    fn = conv_subpixel.conv2d_input_grad_subpixel
    monkeypatch.setattr(conv_subpixel, "conv2d_input_grad_subpixel", lambda *a: calls.append(1) or fn(*a))
    x, w = np.ones((1, 3, 5, 5)), np.ones((3, 2, 4, 4))
    for geo, expected in [(dict(stride=2, padding=1), 1), (dict(stride=(1, 3)), 1), (dict(stride=2, dilation=2), 0),
                          (dict(padding=1), 0)]:
        calls.clear()
        F.conv_transpose2d(x, w, **geo)
        assert len(calls) == expected, geo
    calls.clear()
    xt = md.Tensor(np.ones((1, 3, 8, 8)), requires_grad=True)
    F.conv2d(xt, np.ones((2, 3, 3, 3)), stride=2, padding=1).sum().backward()
    assert len(calls) == 1


def test_input_grad_takes_col2im_for_strides_and_output_padding():
    """Stride 2, or g shorter than the natural output (a transposed conv's output_padding), stay on eq. M4."""
    w = np.ones((2, 3, 3, 3))
    assert conv_ops._input_grad_is_a_conv(np.ones((1, 2, 5, 5)), w, (1, 3, 5, 5), (1, 1), (1, 1), (1, 1))
    assert not conv_ops._input_grad_is_a_conv(np.ones((1, 2, 3, 3)), w, (1, 3, 5, 5), (2, 2), (1, 1), (1, 1))
    assert not conv_ops._input_grad_is_a_conv(np.ones((1, 2, 4, 5)), w, (1, 3, 5, 5), (1, 1), (1, 1), (1, 1))
    assert not conv_ops._input_grad_is_a_conv(np.ones((1, 2, 9, 9)), w, (1, 3, 5, 5), (1, 1), (3, 3), (1, 1))


def test_plain_arrays_give_plain_arrays():
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    y = F.conv2d(x, w)
    assert isinstance(y, np.ndarray) and y.shape == (1, 1, 2, 2) and np.all(y == 4)
    assert isinstance(F.conv2d(md.Tensor(x), w), md.Tensor)


# ------------------------------------------------------------------ PyTorch CPU (float64 and float32)

torch = pytest.importorskip("torch")
tF = torch.nn.functional


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=conv_problems(max_channels=4, max_side=9))
def test_conv2d_matches_torch(dtype, problem):
    x, w, b, geo = problem
    assert_matches_torch(lambda x, w, b: F.conv2d(x, w, b, **geo),
                         lambda x, w, b: tF.conv2d(x, w, b, **geo), [x, w, b], dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=pointwise_problems())
def test_pointwise_conv2d_matches_torch(dtype, problem):
    x, w, g = problem
    assert_matches_torch(lambda x, w, b: F.conv2d(x, w, b), lambda x, w, b: tF.conv2d(x, w, b),
                         [x, w, g[0, :, 0, 0]], dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=conv_transpose_problems(max_channels=4, max_side=6))
def test_conv_transpose2d_matches_torch(dtype, problem):
    x, w, b, geo = problem
    assert_matches_torch(lambda x, w, b: F.conv_transpose2d(x, w, b, **geo),
                         lambda x, w, b: tF.conv_transpose2d(x, w, b, geo["stride"], geo["padding"],
                                                             geo["output_padding"], 1, geo["dilation"]),
                         [x, w, b], dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=pool_problems())
def test_avg_pool2d_matches_torch(dtype, problem):
    x, kernel, stride, padding = problem
    assert_matches_torch(lambda x: F.avg_pool2d(x, kernel, stride, padding),
                         lambda x: tF.avg_pool2d(x, kernel, stride, padding), [x], dtype)


@pytest.mark.torch
@settings(max_examples=5)
@given(st.sampled_from([(16, 64, 8, 8), (4, 32, 16, 16), (2, 8, 32, 32)]), st.integers(0, 9))
def test_ddpm_sized_convs_match_torch_float32(shape, seed):
    """The U-Net's own sizes: 3x3 pad 1, 4x4 stride-2 down and up, 1x1 skip projections, in float32."""
    rng = np.random.default_rng(seed)
    B, C, H, W = shape
    x = rng.standard_normal(shape)
    w3, w4 = rng.standard_normal((C, C, 3, 3)) / 24, rng.standard_normal((C, C, 4, 4)) / 32
    assert_matches_torch(lambda x, w: F.conv2d(x, w, padding=1), lambda x, w: tF.conv2d(x, w, padding=1),
                         [x, w3], np.float32)
    assert_matches_torch(lambda x, w: F.conv2d(x, w, stride=2, padding=1),
                         lambda x, w: tF.conv2d(x, w, stride=2, padding=1), [x, w4], np.float32)
    assert_matches_torch(lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1),
                         lambda x, w: tF.conv_transpose2d(x, w, stride=2, padding=1), [x, w4], np.float32)
    w1 = rng.standard_normal((C // 2, C, 1, 1)) / 8
    assert_matches_torch(lambda x, w: F.conv2d(x, w), lambda x, w: tF.conv2d(x, w), [x, w1], np.float32)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("call, message", [
    (lambda: F.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 4, 3, 3))), "(C = w.shape[1]), got shape (1, 3, 5, 5)"),
    (lambda: F.conv2d(np.ones((3, 5, 5)), np.ones((2, 3, 3, 3))), "x must have shape (*, 3, *, *)"),
    (lambda: F.conv2d(np.ones((1, 3, 2, 2)), np.ones((2, 3, 3, 3))), "does not fit"),
    (lambda: F.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3)), np.ones(3)), "b must have shape (2,)"),
    (lambda: F.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3)), stride=0), "stride"),
    (lambda: F.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3)), padding=(1, 2, 3)), "pair of ints"),
    (lambda: F.conv2d(np.ones((1, 3, 5, 5), np.float32), np.ones((2, 3, 3, 3))), "dtype"),
    (lambda: F.conv_transpose2d(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3))), "x must have shape (*, 2, *, *)"),
    (lambda: F.conv_transpose2d(np.ones((1, 3, 5, 5)), np.ones((3, 2, 3, 3)), stride=2, output_padding=2),
     "output_padding"),
    (lambda: F.avg_pool2d(np.ones((1, 1, 4, 4)), 2, padding=2), "padding"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert message in str(info.value)
