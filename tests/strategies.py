"""Hypothesis strategies shared by the op tests: shapes (with size-1 and size-0 axes),
broadcasting pairs, float64 arrays with safe magnitudes, and axes of a shape."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def shapes(min_dims=0, max_dims=4, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def arrays(shape, lo=-2.0, hi=2.0, dtype=np.float64):
    """Float arrays with elements in [lo, hi] (finite, no subnormals)."""
    width = 64 if dtype == np.float64 else 32
    return hnp.arrays(dtype, shape, elements=st.floats(lo, hi, allow_subnormal=False, width=width))


def away_from(arr_strategy, points, gap=1e-2):
    """Arrays whose elements stay `gap` away from each point (kinks of abs/relu/clip)."""
    def nudge(a):
        a = a.copy()
        for p in points:
            close = np.abs(a - p) < gap
            a[close] = p + gap * np.where(a[close] >= p, 2.0, -2.0)
        return a
    return arr_strategy.map(nudge)


@st.composite
def broadcast_pair(draw, max_dims=3, max_side=4, lo=-2.0, hi=2.0):
    """Two float64 arrays whose shapes broadcast together (size-1 axes and missing leading axes)."""
    s = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=max_dims, max_side=max_side))
    a, b = s.input_shapes
    return draw(arrays(a, lo, hi)), draw(arrays(b, lo, hi))


@st.composite
def array_and_axis(draw, min_dims=1, max_dims=4, max_side=4, allow_none=True, allow_tuple=True):
    """An array and an axis argument valid for it: None, an int (possibly negative) or a tuple."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side))
    x = draw(arrays(shape))
    ndim = len(shape)
    choices = [st.integers(-ndim, ndim - 1)]
    if allow_none:
        choices.append(st.none())
    if allow_tuple:
        choices.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple))
    return x, draw(st.one_of(*choices))
