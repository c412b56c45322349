"""Scaled dot-product attention: the readable composition and the closed-form fast path (docs/layers.md §5).

For queries Q (..., L, E), keys K (..., S, E), values V (..., S, Ev) and an additive mask M
(0 where a query may attend a key, −∞ where not; a boolean mask is True = attend, as PyTorch):

    A = τ Q Kᵀ + M,   P = softmax(A) along S,   O = P V,   τ = 1/√E by default      (docs/layers.md eq. M8)

Backward (docs/layers.md eq. M9-M11), with G = ∂L/∂O and the softmax Jacobian ∂P_ij/∂A_ik = P_ij(δ_jk − P_ik):

    ∂L/∂V = Pᵀ G,   ∂L/∂P = G Vᵀ,   ∂L/∂A = P ⊙ (∂L/∂P − D),
    D = rowsum(∂L/∂P ⊙ P) = rowsum(G ⊙ O)   (an (L, Ev) product instead of an (L, S) one, docs/layers.md eq. M10),
    ∂L/∂Q = τ (∂L/∂A) K,   ∂L/∂K = τ (∂L/∂A)ᵀ Q                                     (docs/layers.md eq. M11)

`attention_reference` composes eq. M8 from matmul/softmax/add (autograd derives the backward);
`ScaledDotProductAttention` is one Function with eq. M9-M11, tested against it. Leading (batch,
head) axes broadcast like matmul's; gradients are summed back over broadcast axes.
"""
import contextlib
import math

import numpy as np

from minidiff import checks, ops
from minidiff.autograd import Function, unbroadcast, unwrap
from minidiff.backend import xp_of


def _check_qkv(q, k, v):
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"attention: q, k, v must be at least 2-D, got shapes {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: need q (..., L, E), k (..., S, E), v (..., S, Ev); got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def additive_mask(attn_mask, is_causal, L, S, like):
    """The additive mask M of eq. M8 (an array, or None): booleans become 0 / −∞; causal keeps j ≤ i."""
    xp = xp_of(like)
    attn_mask = unwrap(attn_mask)
    mask = None
    if attn_mask is not None:
        attn_mask = xp.asarray(attn_mask)
        if attn_mask.dtype == bool:
            mask = xp.where(attn_mask, 0.0, -xp.inf).astype(like.dtype)
        else:
            mask = attn_mask.astype(like.dtype)
        try:
            np.broadcast_shapes(mask.shape, like.shape[:-2] + (L, S))
        except ValueError:
            raise ValueError(f"attention: attn_mask of shape {tuple(mask.shape)} does not broadcast to the scores "
                             f"{like.shape[:-2] + (L, S)}") from None
    if is_causal:
        causal = xp.where(xp.tril(xp.ones((L, S), dtype=bool)), 0.0, -xp.inf).astype(like.dtype)
        mask = causal if mask is None else mask + causal
    return mask


_blas = {}


def one_blas_thread(xp):
    """A context in which NumPy's BLAS runs single-threaded (a no-op on CuPy or without threadpoolctl).

    NumPy's batched matmul calls BLAS once per (batch, head) slice. Each call of a multi-threaded
    OpenBLAS hands work to its threads and waits for them; for slices this small (256 × 16 × 256)
    the hand-off costs more than the product, and on a busy 2-core machine it can cost 10-50x
    more (benchmarks/results/layers_cpu.json, docs/layers.md §5). One thread per slice avoids it.
    """
    if xp is not np:
        return contextlib.nullcontext()
    if "controller" not in _blas:
        try:
            from threadpoolctl import ThreadpoolController
            _blas["controller"] = ThreadpoolController()
            _blas["libraries"] = _blas["controller"].select(user_api="blas").lib_controllers
        except ImportError:
            _blas["controller"], _blas["libraries"] = None, []
    controller = _blas["controller"]
    if controller is None or all(lib.get_num_threads() == 1 for lib in _blas["libraries"]):
        return contextlib.nullcontext()              # already one thread: skip the limit's ~7 µs set and restore
    return controller.limit(limits=1, user_api="blas")


def _softmax_rows(a):
    """softmax along the last axis, in place, shifted by the row max (rows of all −∞ give NaN)."""
    xp = xp_of(a)
    a -= a.max(axis=-1, keepdims=True)      # a is a fresh array: work in place
    p = xp.exp(a, out=a)
    p /= p.sum(axis=-1, keepdims=True)
    return p


class ScaledDotProductAttention(Function):
    """O = softmax(τ Q Kᵀ + M) V (eq. M8).  Saved: Q, K, V, P, O.  VJP: eq. M9-M11.

    Operands are made contiguous first: NumPy's batched matmul only calls BLAS per (L, E) slice
    when each slice is laid out as a matrix, and the heads of a (B, N, 3, heads, d) projection are
    not. τ is applied to Q (L·E values) rather than to the scores (L·S values).
    """

    def forward(self, q, k, v, mask=None, scale=1.0):
        _check_qkv(q, k, v)
        xp = xp_of(q)
        q, k, v = xp.ascontiguousarray(q), xp.ascontiguousarray(k), xp.ascontiguousarray(v)
        self.q, self.k, self.v, self.scale = q, k, v, scale
        with one_blas_thread(xp):
            a = (q * q.dtype.type(scale)) @ k.swapaxes(-1, -2)
            if mask is not None:
                a = a + mask                        # may broadcast a to the mask's leading axes
            self.p = _softmax_rows(a)
            self.o = self.p @ v
            return self.o

    def backward(self, g):
        with one_blas_thread(xp_of(g)):
            return self._backward(xp_of(g).ascontiguousarray(g))

    def _backward(self, g):
        q, k, v, p = self.q, self.k, self.v, self.p
        scale = q.dtype.type(self.scale)
        dv = unbroadcast(p.swapaxes(-1, -2) @ g, v.shape) if self.needs_grad[2] else None
        if not (self.needs_grad[0] or self.needs_grad[1]):
            return None, None, dv
        da = g @ v.swapaxes(-1, -2)                                    # ∂L/∂P
        da -= (g * self.o).sum(axis=-1, keepdims=True)                 # eq. M9-M10: ∂L/∂A = P ⊙ (∂L/∂P − D),
        da *= p                                                        # D = rowsum(∂L/∂P ⊙ P) = rowsum(G ⊙ O)
        dq = unbroadcast((da @ k) * scale, q.shape) if self.needs_grad[0] else None
        dk = unbroadcast((da.swapaxes(-1, -2) @ q) * scale, k.shape) if self.needs_grad[1] else None
        return dq, dk, dv


def _scale(q, scale):
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """softmax(τ Q Kᵀ + M) V through the fused Function (eq. M8-M11). q (..., L, E), k (..., S, E), v (..., S, Ev)."""
    where = "scaled_dot_product_attention"
    for name, a in (("q", q), ("k", k), ("v", v)):
        checks.floating(name, a, where)
        if len(a.shape) < 2:
            raise ValueError(f"{where}: {name} must be at least 2-D (..., rows, features), got shape {tuple(a.shape)}")
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"{where}: need q (..., L, E), k (..., S, E), v (..., S, Ev); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    try:
        np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"{where}: the batch axes of q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} "
                         "do not broadcast") from None
    checks.boolean("is_causal", is_causal, where)
    if scale is not None:
        checks.real("scale", scale, where=where)
    if attn_mask is not None:
        checks.array_like("attn_mask", attn_mask, where)
        if np.dtype(attn_mask.dtype).kind not in "bf":
            raise TypeError(f"{where}: attn_mask must be boolean or floating, got dtype {attn_mask.dtype}")
    like = unwrap(q)
    mask = additive_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], like)
    return ScaledDotProductAttention.apply(q, k, v, mask=mask, scale=_scale(q, scale))


def attention_reference(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Eq. 8 composed of primitive ops; autograd supplies the backward."""
    like = unwrap(q)
    _check_qkv(like, unwrap(k), unwrap(v))
    mask = additive_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], like)
    axes = tuple(range(len(k.shape) - 2)) + (len(k.shape) - 1, len(k.shape) - 2)
    a = ops.mul(ops.matmul(q, ops.transpose(k, axes)), _scale(q, scale))
    if mask is not None:
        a = ops.add(a, mask)
    return ops.matmul(ops.softmax(a, -1), v)
