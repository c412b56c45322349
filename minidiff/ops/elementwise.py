"""Elementwise ops. Each states y = f(x) and its vector-Jacobian product (VJP) ∂L/∂x.

Binary ops broadcast like NumPy; their backward sums the gradient back over the
broadcast axes (`unbroadcast`). Notation: g = ∂L/∂y (upstream gradient).
"""
import math

import numpy as np

from minidiff.autograd import Function, unbroadcast, unwrap
from minidiff.backend import xp_of


def _check_broadcast(op, a, b):
    try:
        xp_of(a).broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not broadcast") from None


class Add(Function):
    """y = a + b.  VJP: ∂L/∂a = g, ∂L/∂b = g (each summed over its broadcast axes)."""

    def forward(self, a, b):
        _check_broadcast("add", a, b)
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    """y = a − b.  VJP: ∂L/∂a = g, ∂L/∂b = −g."""

    def forward(self, a, b):
        _check_broadcast("sub", a, b)
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1]) if self.needs_grad[1] else None


class Mul(Function):
    """y = a · b.  VJP: ∂L/∂a = g · b, ∂L/∂b = g · a."""

    def forward(self, a, b):
        _check_broadcast("mul", a, b)
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        da = unbroadcast(g * self.b, self.a.shape) if self.needs_grad[0] else None
        db = unbroadcast(g * self.a, self.b.shape) if self.needs_grad[1] else None
        return da, db


class Div(Function):
    """y = a / b.  VJP: ∂L/∂a = g / b, ∂L/∂b = −g · a / b²."""

    def forward(self, a, b):
        _check_broadcast("div", a, b)
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        da = unbroadcast(g / self.b, self.a.shape) if self.needs_grad[0] else None
        db = unbroadcast(-g * self.a / (self.b * self.b), self.b.shape) if self.needs_grad[1] else None
        return da, db


class Neg(Function):
    """y = −x.  VJP: −g."""

    def forward(self, x):
        return -x

    def backward(self, g):
        return (-g,)


class PowScalar(Function):
    """y = x^p for a constant p.  VJP: g · p · x^(p−1), and 0 for p = 0 (x^0 is constant; 0 · 0^−1 would be NaN)."""

    def forward(self, x, p):
        self.x, self.p = x, p
        return x ** p

    def backward(self, g):
        if self.p == 0:
            return (xp_of(g).zeros_like(g),)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0^(p-1) = inf for p < 1, as in PyTorch
            return (g * self.p * self.x ** (self.p - 1),)


class Pow(Function):
    """y = a^b (both tensors).  VJP: ∂L/∂a = g · b · a^(b−1), ∂L/∂b = g · y · log a.

    As PyTorch at the edges: ∂L/∂a = 0 where b = 0, ∂L/∂b = 0 where a = 0 and b ≥ 0 (y log a → 0 there).
    """

    def forward(self, a, b):
        _check_broadcast("pow", a, b)
        self.a, self.b = a, b
        self.y = a ** b
        return self.y

    def backward(self, g):
        xp = xp_of(g)
        zero = xp.zeros((), dtype=g.dtype)
        da = db = None
        if self.needs_grad[0]:
            with np.errstate(divide="ignore", invalid="ignore"):  # 0^(b-1) = inf for b < 1, as in PyTorch
                dpow = g * self.b * self.a ** (self.b - 1)
            da = unbroadcast(xp.where(self.b == 0, zero, dpow), self.a.shape)
        if self.needs_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                dlog = g * self.y * xp.log(self.a)
            db = unbroadcast(xp.where((self.a == 0) & (self.b >= 0), zero, dlog), self.b.shape)
        return da, db


class Exp(Function):
    """y = eˣ.  VJP: g · y."""

    def forward(self, x):
        self.y = xp_of(x).exp(x)
        return self.y

    def backward(self, g):
        return (g * self.y,)


class Log(Function):
    """y = log x (natural).  VJP: g / x."""

    def forward(self, x):
        self.x = x
        return xp_of(x).log(x)

    def backward(self, g):
        return (g / self.x,)


class Sqrt(Function):
    """y = √x.  VJP: g / (2y)."""

    def forward(self, x):
        self.y = xp_of(x).sqrt(x)
        return self.y

    def backward(self, g):
        return (g / (2 * self.y),)


class Abs(Function):
    """y = |x|.  VJP: g · sign(x) (0 at x = 0, as PyTorch)."""

    def forward(self, x):
        self.x = x
        return xp_of(x).abs(x)

    def backward(self, g):
        return (g * xp_of(g).sign(self.x),)


class Tanh(Function):
    """y = tanh x.  VJP: g · (1 − y²)."""

    def forward(self, x):
        self.y = xp_of(x).tanh(x)
        return self.y

    def backward(self, g):
        return (g * (1 - self.y * self.y),)


def _sigmoid(x):
    """σ(x) = 1 / (1 + e⁻ˣ), written via tanh so it never overflows: σ(x) = ½(1 + tanh(x/2))."""
    return 0.5 * (1 + xp_of(x).tanh(0.5 * x))


class Sigmoid(Function):
    """y = σ(x) = 1 / (1 + e⁻ˣ).  VJP: g · y (1 − y)."""

    def forward(self, x):
        self.y = _sigmoid(x)
        return self.y

    def backward(self, g):
        return (g * self.y * (1 - self.y),)


class ReLU(Function):
    """y = max(x, 0) (relu(−inf) = 0, relu(NaN) = NaN, as PyTorch).  VJP: g · [x > 0]."""

    def forward(self, x):
        self.mask = x > 0
        return xp_of(x).maximum(x, x.dtype.type(0))

    def backward(self, g):
        return (g * self.mask,)


class SiLU(Function):
    """y = x · σ(x).  VJP: g · σ(x) (1 + x (1 − σ(x))).

    Saves x only and computes σ(x) again in backward (as PyTorch does): one activation-sized array
    less held per SiLU between forward and backward, for one more σ.
    """

    def forward(self, x):
        self.x = x
        return x * _sigmoid(x)

    def backward(self, g):
        s = _sigmoid(self.x)
        return (g * s * (1 + self.x * (1 - s)),)


def _erf(x):
    xp = xp_of(x)
    if xp.__name__ == "cupy":
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return erf(x)


class GELU(Function):
    """y = x Φ(x), Φ the standard normal CDF (exact, as PyTorch's default).

    VJP: g · (Φ(x) + x φ(x)), φ(x) = e^(−x²/2) / √(2π).
    """

    def forward(self, x):
        self.x = x
        self.Phi = 0.5 * (1 + _erf(x / math.sqrt(2)))
        return x * self.Phi

    def backward(self, g):
        x = self.x
        phi = xp_of(x).exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return (g * (self.Phi + x * phi),)


class GELUTanh(Function):
    """y = ½ x (1 + tanh(u)), u = √(2/π)(x + 0.044715 x³) (the tanh approximation).

    VJP: g · (½(1 + tanh u) + ½ x (1 − tanh² u) · √(2/π)(1 + 3·0.044715 x²)).
    """

    c = math.sqrt(2 / math.pi)

    def forward(self, x):
        self.x = x
        self.th = xp_of(x).tanh(self.c * (x + 0.044715 * x ** 3))
        return 0.5 * x * (1 + self.th)

    def backward(self, g):
        x, th = self.x, self.th
        du = self.c * (1 + 3 * 0.044715 * x * x)
        return (g * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du),)


class Clip(Function):
    """y = min(max(x, lo), hi), lo/hi constants that may broadcast x to a larger shape (as PyTorch's clamp).

    VJP: g · [lo ≤ x ≤ hi], summed back over the axes the bounds broadcast x along.
    """

    def forward(self, x, lo=None, hi=None):
        xp = xp_of(x)
        for name, bound in (("lo", lo), ("hi", hi)):
            if bound is not None:
                _check_broadcast(f"clip ({name})", x, xp.asarray(bound))
        self.mask, self.shape = True, x.shape
        if lo is not None:
            self.mask = self.mask & (x >= lo)
        if hi is not None:
            self.mask = self.mask & (x <= hi)
        return xp.clip(x, lo, hi)

    def backward(self, g):
        return (unbroadcast(g * self.mask, self.shape),)


class Where(Function):
    """y = a where cond else b (cond a constant boolean array).  VJP: g·cond to a, g·(1−cond) to b."""

    def forward(self, a, b, cond=None):
        xp = xp_of(a)
        self.cond, self.shapes = cond, (a.shape, b.shape)
        return xp.where(cond, a, b)

    def backward(self, g):
        zero = xp_of(g).zeros((), dtype=g.dtype)
        da = unbroadcast(xp_of(g).where(self.cond, g, zero), self.shapes[0]) if self.needs_grad[0] else None
        db = unbroadcast(xp_of(g).where(self.cond, zero, g), self.shapes[1]) if self.needs_grad[1] else None
        return da, db


class AsType(Function):
    """y = x converted to dtype.  VJP: g converted back to x's dtype."""

    def forward(self, x, dtype=None):
        self.src = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return (g.astype(self.src),)


# ---------------------------------------------------------------- function forms

def add(a, b): return Add.apply(a, b)
def sub(a, b): return Sub.apply(a, b)
def mul(a, b): return Mul.apply(a, b)
def div(a, b): return Div.apply(a, b)
def neg(x): return Neg.apply(x)
def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def abs(x): return Abs.apply(x)  # noqa: A001 (mirrors numpy's name)
def tanh(x): return Tanh.apply(x)
def sigmoid(x): return Sigmoid.apply(x)
def relu(x): return ReLU.apply(x)
def silu(x): return SiLU.apply(x)
def astype(x, dtype): return AsType.apply(x, dtype=dtype)


def pow(a, b):  # noqa: A001
    """a ** b; a constant exponent uses the cheaper PowScalar (and never takes log a)."""
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return PowScalar.apply(a, p=b)
    return Pow.apply(a, b)


def gelu(x, approximate="none"):
    """GELU, exact (approximate="none", PyTorch's default) or the tanh approximation ("tanh")."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU.apply(x) if approximate == "none" else GELUTanh.apply(x)


def clip(x, lo=None, hi=None):
    if lo is None and hi is None:
        raise ValueError("clip: give at least one of lo, hi")
    return Clip.apply(x, lo=lo, hi=hi)


def where(cond, a, b):
    """Elementwise choice; cond is a boolean array or tensor (not differentiated)."""
    return Where.apply(a, b, cond=unwrap(cond))
