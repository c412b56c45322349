"""Shape ops: they move elements without changing values, so each VJP moves g back.

Names and semantics are NumPy's (transpose permutes all axes, broadcast_to, concatenate, axis=).
"""
import numpy as np

from minidiff.autograd import Function, unbroadcast, unwrap
from minidiff.backend import xp_of


class Reshape(Function):
    """y = x viewed with a new shape.  VJP: g reshaped to x's shape."""

    def forward(self, x, shape=None):
        self.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view shape {tuple(x.shape)} ({x.size} elements) "
                             f"as {tuple(shape)}") from None

    def backward(self, g):
        return (g.reshape(self.shape),)


class Transpose(Function):
    """y = x with its axes permuted (numpy.transpose): y.shape[i] = x.shape[axes[i]]; axes None reverses them.

    VJP: g permuted by the inverse permutation.
    """

    def forward(self, x, axes=None):
        axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(a % max(x.ndim, 1) for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of 0..{x.ndim - 1} "
                             f"(shape {tuple(x.shape)})")
        self.inverse = tuple(np.argsort(axes))
        return x.transpose(axes)

    def backward(self, g):
        return (g.transpose(self.inverse),)


class BroadcastTo(Function):
    """y = x broadcast to shape.  VJP: g summed over the broadcast axes."""

    def forward(self, x, shape=None):
        self.shape = x.shape
        try:
            return xp_of(x).broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: shape {tuple(x.shape)} cannot broadcast to {tuple(shape)}") from None

    def backward(self, g):
        return (unbroadcast(g, self.shape),)


def _axis(op, axis, ndim):
    """axis as one non-negative integer in 0..ndim-1 (negative counts from the end), or a clear error."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for {ndim}-d inputs (need -{ndim} <= axis < {ndim})")
    return int(axis) % ndim


class Concatenate(Function):
    """y = [x_1, ..., x_n] joined along axis.  VJP: g split back into the input sizes, each in its input's dtype."""

    def forward(self, *xs, axis=0):
        ref = xs[0]
        if ref.ndim == 0:
            raise ValueError("concatenate: 0-d inputs cannot be joined (need at least one axis)")
        axis = _axis("concatenate", axis, ref.ndim)
        for x in xs[1:]:
            if x.ndim != ref.ndim or any(x.shape[i] != ref.shape[i] for i in range(ref.ndim) if i != axis):
                raise ValueError(f"concatenate: shapes {[tuple(a.shape) for a in xs]} differ off axis {axis}")
        self.axis, self.dtypes = axis, [x.dtype for x in xs]
        self.bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return xp_of(ref).concatenate(xs, axis=axis)

    def backward(self, g):
        parts = xp_of(g).split(g, self.bounds, axis=self.axis)
        return tuple(part.astype(dtype, copy=False) for part, dtype in zip(parts, self.dtypes))


class Stack(Function):
    """y = the inputs stacked along a new axis.  VJP: g unstacked along that axis."""

    def forward(self, *xs, axis=0):
        if any(x.shape != xs[0].shape for x in xs):
            raise ValueError(f"stack: all shapes must be equal, got {[tuple(a.shape) for a in xs]}")
        self.axis, self.dtypes = _axis("stack", axis, xs[0].ndim + 1), [x.dtype for x in xs]
        return xp_of(xs[0]).stack(xs, axis=self.axis)

    def backward(self, g):
        return tuple(g.take(i, axis=self.axis).astype(d, copy=False) for i, d in enumerate(self.dtypes))


def _is_basic(index):
    """Basic indexing (slices, ints, None, Ellipsis) selects each element at most once."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (slice, int, type(None), type(Ellipsis))) and not isinstance(p, bool) for p in parts)


class GetItem(Function):
    """y = x[index].  VJP: zeros of x's shape with g scattered back to x[index].

    Basic slicing hits each element once, so assignment suffices; integer-array indexing
    may repeat an element, so its gradients are accumulated with add.at.
    """

    def forward(self, x, index=None):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        try:
            return x[index]
        except IndexError as e:
            raise IndexError(f"getitem: {e} (tensor shape {tuple(x.shape)})") from None

    def backward(self, g):
        xp = xp_of(g)
        dx = xp.zeros(self.shape, dtype=g.dtype)
        if _is_basic(self.index):
            dx[self.index] = g
        else:
            xp.add.at(dx, self.index, g)
        return (dx,)


class Pad(Function):
    """y = x padded with a constant, pad_width as numpy.pad's ((before, after) per axis).

    VJP: g with the padding sliced away.
    """

    def forward(self, x, pad_width=None, value=0.0):
        pad_width = tuple((int(b), int(a)) for b, a in pad_width)
        if len(pad_width) != x.ndim or any(b < 0 or a < 0 for b, a in pad_width):
            raise ValueError(f"pad: pad_width {pad_width} must give non-negative (before, after) "
                             f"for each of the {x.ndim} axes of shape {tuple(x.shape)}")
        self.crop = tuple(slice(b, b + n) for (b, _), n in zip(pad_width, x.shape))
        return xp_of(x).pad(x, pad_width, mode="constant", constant_values=value)

    def backward(self, g):
        return (g[self.crop],)


def reshape(x, shape):
    return Reshape.apply(x, shape=tuple(shape) if not isinstance(shape, int) else (shape,))


def transpose(x, axes=None):
    """Permute the axes (numpy.transpose; PyTorch's permute): axes a permutation of 0..ndim-1, None reverses."""
    return Transpose.apply(x, axes=None if axes is None else tuple(axes))


def broadcast_to(x, shape):
    return BroadcastTo.apply(x, shape=tuple(shape))


def concatenate(xs, axis=0):
    if len(xs) == 0:
        raise ValueError("concatenate: need at least one input")
    return Concatenate.apply(*xs, axis=axis)


def stack(xs, axis=0):
    if len(xs) == 0:
        raise ValueError("stack: need at least one input")
    return Stack.apply(*xs, axis=axis)


def split(x, sections, axis=0):
    """Split along axis into `sections` equal parts (int) or at the given sizes (list), as views via getitem."""
    n = x.shape[axis]
    if isinstance(sections, int):
        if sections <= 0 or n % sections:
            raise ValueError(f"split: axis {axis} of size {n} does not split into {sections} equal parts")
        sizes = [n // sections] * sections
    else:
        sizes = list(sections)
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} do not add up to axis {axis} of size {n}")
    out, start = [], 0
    prefix = (slice(None),) * (axis % x.ndim)
    for size in sizes:
        out.append(getitem(x, prefix + (slice(start, start + size),)))
        start += size
    return out


def getitem(x, index):
    index = unwrap(index)
    if isinstance(index, tuple):
        index = tuple(unwrap(i) for i in index)
    elif isinstance(index, list):
        index = np.asarray(index)
    return GetItem.apply(x, index=index)


def pad(x, pad_width, value=0.0):
    return Pad.apply(x, pad_width=pad_width, value=value)
