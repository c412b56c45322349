"""Reductions and the softmax family. g = ∂L/∂y; axes as NumPy's (None = all)."""
import builtins

import numpy as np

from minidiff.autograd import Function
from minidiff.backend import xp_of


def _axes(axis, ndim):
    """Normalise axis (None, int or tuple) to a sorted tuple of non-negative axes.

    A 0-d array takes axis 0 or -1 as PyTorch does (dim in [-1, 0]) and reduces over nothing.
    """
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) else axis
    if not isinstance(axes, (tuple, list)) or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                                      for a in axes):
        raise TypeError(f"axis must be None, an integer or a tuple of integers, got {axis!r}")
    out = []
    for a in axes:
        if not -builtins.max(ndim, 1) <= a < builtins.max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for an array of {ndim} dimensions")
        if ndim:
            out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis {tuple(axes)!r} names an axis twice")
    return tuple(sorted(out))


def _one_axis(axis, ndim):
    """A single axis for the softmax family, normalised (a 0-d input has none: returns ())."""
    if isinstance(axis, (tuple, list)) and len(axis) != 1:
        raise TypeError(f"axis must be one integer for softmax/log_softmax, got {axis!r}")
    return _axes(axis, ndim)


def _expand(g, shape, axes, keepdims):
    """Broadcast a reduced gradient back to the input shape."""
    xp = xp_of(g)
    if not keepdims:
        g = xp.expand_dims(g, axes) if axes else g
    return xp.broadcast_to(g, shape)


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


class Sum(Function):
    """y = Σ_axes x.  VJP: g broadcast back over the summed axes."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        return (_expand(g, self.shape, self.axes, self.keepdims),)


class Mean(Function):
    """y = (1/n) Σ_axes x, n the number of summed elements.  VJP: g / n broadcast back."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        self.n = _count(x.shape, self.axes)
        return x.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        return (_expand(g / self.n, self.shape, self.axes, self.keepdims),)


class Var(Function):
    """y = Σ_axes (x − x̄)² / (n − ddof).  VJP: g · 2 (x − x̄) / (n − ddof)."""

    def forward(self, x, axis=None, keepdims=False, ddof=0):
        self.shape, self.axes, self.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        self.centered = x - x.mean(axis=self.axes, keepdims=True)
        self.denom = _count(x.shape, self.axes) - ddof
        return (self.centered ** 2).sum(axis=self.axes, keepdims=keepdims) / self.denom

    def backward(self, g):
        return (_expand(g, self.shape, self.axes, self.keepdims) * (2 / self.denom) * self.centered,)


class Max(Function):
    """y = max_axes x.  VJP: g shared equally among the positions that attain the max."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        if any(x.shape[a] == 0 for a in self.axes):
            raise ValueError(f"max: the reduced axes {self.axes} of shape {tuple(x.shape)} must not be empty "
                             "(a max of no elements is undefined)")
        y = x.max(axis=self.axes, keepdims=True)
        self.mask = x == y
        return y if keepdims else y.squeeze(self.axes) if self.axes else y

    def backward(self, g):
        share = self.mask / self.mask.sum(axis=self.axes, keepdims=True)
        return (_expand(g, self.shape, self.axes, self.keepdims) * share,)


def _logsumexp(x, axis):
    """log Σ exp x along axis (keepdims), shifted by the max so it never overflows; −inf over an empty axis."""
    xp = xp_of(x)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if any(x.shape[a] == 0 for a in axes):  # log of an empty sum, as PyTorch
        return xp.full(tuple(1 if i in axes else n for i, n in enumerate(x.shape)), -xp.inf, dtype=x.dtype)
    m = x.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    return m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))


class Softmax(Function):
    """y_i = e^{x_i} / Σ_j e^{x_j} along axis.  VJP: y ⊙ (g − Σ_j g_j y_j)  (docs/autograd.md)."""

    def forward(self, x, axis=-1):
        self.axis = _one_axis(axis, x.ndim)
        self.y = xp_of(x).exp(x - _logsumexp(x, self.axis))
        return self.y

    def backward(self, g):
        y = self.y
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    """y = x − logsumexp(x) along axis.  VJP: g − softmax(x) Σ_j g_j."""

    def forward(self, x, axis=-1):
        self.axis = _one_axis(axis, x.ndim)
        y = x - _logsumexp(x, self.axis)
        self.softmax = xp_of(x).exp(y)
        return y

    def backward(self, g):
        return (g - self.softmax * g.sum(axis=self.axis, keepdims=True),)


class LogSumExp(Function):
    """y = log Σ_axis e^{x}.  VJP: g · softmax(x) along axis."""

    def forward(self, x, axis=-1, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        lse = _logsumexp(x, self.axes)
        self.softmax = xp_of(x).exp(x - lse)
        return lse if keepdims else lse.squeeze(self.axes)

    def backward(self, g):
        return (_expand(g, self.shape, self.axes, self.keepdims) * self.softmax,)


def sum(x, axis=None, keepdims=False):  # noqa: A001
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def var(x, axis=None, keepdims=False, ddof=0):
    return Var.apply(x, axis=axis, keepdims=keepdims, ddof=ddof)


def max(x, axis=None, keepdims=False):  # noqa: A001
    return Max.apply(x, axis=axis, keepdims=keepdims)


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


def logsumexp(x, axis=-1, keepdims=False):
    return LogSumExp.apply(x, axis=axis, keepdims=keepdims)
