"""Matrix products. g = ∂L/∂y."""
from minidiff.autograd import Function, unbroadcast
from minidiff.backend import xp_of


class MatMul(Function):
    """y = a @ b with NumPy semantics: batched, broadcasting over leading axes, 1-D operands promoted.

    VJP: ∂L/∂a = g @ bᵀ, ∂L/∂b = aᵀ @ g (ᵀ swaps the last two axes), each summed over the
    batch axes it was broadcast along. A 1-D a is treated as (1, K), a 1-D b as (K, 1).
    """

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must be at least 1-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: inner dimensions differ, shapes {tuple(a.shape)} @ {tuple(b.shape)}")
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        batch = xp_of(g).broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        g = g.reshape(batch + (a2.shape[-2], b2.shape[-1]))  # restore the axes a 1-D operand dropped
        da = db = None
        if self.needs_grad[0]:
            da = unbroadcast(g @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            db = unbroadcast(a2.swapaxes(-1, -2) @ g, b2.shape).reshape(b.shape)
        return da, db


def matmul(a, b):
    return MatMul.apply(a, b)
