"""Hypothesis strategies for the layer tests: conv / transposed-conv / pooling geometries whose
output is non-empty, group-norm shapes with a valid group count, attention shapes and masks."""
import numpy as np
from hypothesis import assume, strategies as st

from tests.strategies import arrays


def _pair(draw, lo, hi):
    return (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))


@st.composite
def conv_problems(draw, max_batch=2, max_channels=3, max_kernel=3, max_stride=3, max_side=7, dtype=np.float64):
    """(x, w, b, geometry) for conv2d: any kernel, stride, padding and dilation with Ho, Wo >= 1."""
    B, C, O = draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
    kernel = _pair(draw, 1, max_kernel)
    stride, padding, dilation = _pair(draw, 1, max_stride), _pair(draw, 0, 2), _pair(draw, 1, 2)
    side = []
    for k, p, d in zip(kernel, padding, dilation):
        smallest = max(1, d * (k - 1) + 1 - 2 * p)
        side.append(draw(st.integers(smallest, max(smallest, max_side))))
    x = draw(arrays((B, C) + tuple(side), dtype=dtype))
    w = draw(arrays((O, C) + kernel, dtype=dtype))
    b = draw(st.none() | arrays((O,), dtype=dtype))
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation)


def transposed_output_size(n, k, s, p, d, op):
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


@st.composite
def conv_transpose_problems(draw, max_batch=2, max_channels=3, max_kernel=4, max_stride=3, max_side=5,
                            dtype=np.float64):
    """(x, w, b, geometry) for conv_transpose2d, output_padding < max(stride, dilation), output >= 1."""
    B, Cin, Cout = (draw(st.integers(1, n)) for n in (max_batch, max_channels, max_channels))
    kernel = _pair(draw, 1, max_kernel)
    stride, padding, dilation = _pair(draw, 1, max_stride), _pair(draw, 0, 2), _pair(draw, 1, 2)
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    side = _pair(draw, 1, max_side)
    assume(all(transposed_output_size(*a) >= 1 for a in zip(side, kernel, stride, padding, dilation, output_padding)))
    x = draw(arrays((B, Cin) + side, dtype=dtype))
    w = draw(arrays((Cin, Cout) + kernel, dtype=dtype))
    b = draw(st.none() | arrays((Cout,), dtype=dtype))
    return x, w, b, dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation)


@st.composite
def pool_problems(draw, dtype=np.float64):
    """(x, kernel, stride, padding) for avg_pool2d with padding <= kernel/2 and a non-empty output."""
    kernel, stride = _pair(draw, 1, 3), _pair(draw, 1, 3)
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    side = tuple(draw(st.integers(max(1, k - 2 * p), 7)) for k, p in zip(kernel, padding))
    x = draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3))) + side, dtype=dtype))
    return x, kernel, stride, padding


def well_spread(x, scale=1.0):
    """x plus a distinct ramp, so no group or row is (nearly) constant: statistics stay well conditioned."""
    return x + scale * np.linspace(-1.0, 1.0, x.size).reshape(x.shape)


def assume_spread_rows(rows, min_std=0.1):
    """Reject draws where a normalised row (of the 2-D `rows`) of several elements is nearly constant.

    The drawn values can cancel well_spread's ramp; a row with standard deviation σ makes the
    normalisation's gradient scale as 1/σ, so float32 round-off (≈ 6e-8) grows past any fixed
    tolerance — an ill-conditioned input, not a disagreement. Rows of one element are exact (x − μ = 0).
    """
    assume(rows.shape[1] < 2 or rows.std(axis=1).min() >= min_std)


@st.composite
def group_norm_problems(draw, dtype=np.float64, max_spatial=2):
    """(x (B, C, *S), G, weight, bias) with G | C and at least 2 elements per group."""
    G = draw(st.integers(1, 3))
    C = G * draw(st.integers(1, 2))
    spatial = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=max_spatial)))
    assume(C // G * int(np.prod(spatial)) >= 2)
    x = well_spread(draw(arrays((draw(st.integers(1, 2)), C) + spatial, dtype=dtype)))
    assume_spread_rows(x.reshape(x.shape[0] * G, -1))
    w = draw(st.none() | arrays((C,), dtype=dtype))
    b = draw(st.none() | arrays((C,), dtype=dtype))
    return x.astype(dtype), G, w, b


@st.composite
def attention_problems(draw, dtype=np.float64, max_len=5):
    """(q, k, v, mask, is_causal): batch/head axes, L queries, S keys; mask None, boolean or additive.

    A boolean mask keeps key 0 for every query, so no row is fully masked.
    """
    lead = tuple(draw(st.lists(st.integers(1, 2), min_size=0, max_size=2)))
    L, S, E, Ev = (draw(st.integers(1, max_len)) for _ in range(4))
    q = draw(arrays(lead + (L, E), dtype=dtype))
    k = draw(arrays(lead + (S, E), dtype=dtype))
    v = draw(arrays(lead + (S, Ev), dtype=dtype))
    kind = draw(st.sampled_from(["none", "bool", "additive", "causal"]))
    mask, causal = None, False
    if kind == "bool":
        keep = np.array(draw(st.lists(st.booleans(), min_size=L * S, max_size=L * S))).reshape(L, S)
        keep[:, 0] = True
        mask = keep
    elif kind == "additive":
        mask = draw(arrays((L, S), dtype=dtype))
    elif kind == "causal":
        assume(L <= S)
        causal = True
    return q, k, v, mask, causal
