"""Group and layer normalisation: the readable composition and the closed-form fast path (docs/layers.md §4).

Both standardise x over a set of n elements (a group of channels × H × W, or the trailing
normalized_shape), then apply a per-channel (per-element) affine map:

    μ = (1/n) Σ x,  σ² = (1/n) Σ (x − μ)²,  x̂ = (x − μ)/√(σ² + ε),  y = γ x̂ + β      (docs/layers.md eq. M6)

Backward in closed form (derived in docs/layers.md eq. M7), with ĝ = γ ⊙ g and means over the same n elements:

    ∂L/∂x = (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)) / √(σ² + ε),
    ∂L/∂γ = Σ_{other axes} g ⊙ x̂,   ∂L/∂β = Σ_{other axes} g.

`group_norm_reference` / `layer_norm_reference` build eq. M6 from primitive ops (autograd derives
the backward); `GroupNorm` / `LayerNorm` are one Function each with eq. M7, tested against them.

`GroupNormSiLU` is y = SiLU(GroupNorm(x)) = z σ(z), z = γ_c x̂ + β_c, as one Function (docs/layers.md eq. M25):
it keeps x, μ, r only and recomputes z and σ(z) in backward, where

    g_z = g · σ(z) (1 + z (1 − σ(z)))

takes the place of g in eq. M7. Its reference is `silu(group_norm_reference(...))`.
"""
import math

import numpy as np

from minidiff import checks, ops
from minidiff.autograd import Function, unwrap
from minidiff.backend import xp_of
from minidiff.ops import norm_numba


def _standardize(x, axes, eps):
    """x̂ and 1/√(σ² + ε) over `axes` (keepdims), statistics in x's dtype."""
    xp = xp_of(x)
    mu = x.mean(axis=axes, keepdims=True)
    centered = x - mu
    inv_std = 1.0 / xp.sqrt((centered * centered).mean(axis=axes, keepdims=True) + eps)
    return centered * inv_std, inv_std


def _standardize_backward(g_hat, x_hat, inv_std, axes):
    """∂L/∂x = (ĝ − mean(ĝ) − x̂ mean(ĝ x̂)) / √(σ² + ε)  (docs/layers.md eq. M7)."""
    return (g_hat - g_hat.mean(axis=axes, keepdims=True)
            - x_hat * (g_hat * x_hat).mean(axis=axes, keepdims=True)) * inv_std


def _check_group_norm(x, num_groups, weight, bias):
    if x.ndim < 2:
        raise ValueError(f"group_norm: input must be (B, C, ...), got shape {tuple(x.shape)}")
    C = x.shape[1]
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: {C} channels (input shape {tuple(x.shape)}) do not split into "
                         f"{num_groups} groups")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"group_norm: {name} shape {tuple(p.shape)} must be ({C},)")


class GroupNorm(Function):
    """y = γ_c x̂ + β_c with x̂ standardised over each (sample, group of C/G channels, spatial) block.

    Inputs x (B, C, *S), γ (C,), β (C,). NumPy arrays run the Numba kernels of `ops/norm_numba.py`
    (eq. M22: three passes forward, two backward; saved x, μ, r); other array modules (CuPy) run
    `group_norm_forward_xp` / `group_norm_backward_xp` (below). The two are tested against each other
    and against `group_norm_reference`.
    """

    def forward(self, x, weight, bias, num_groups=1, eps=1e-5):
        _check_group_norm(x, num_groups, weight, bias)
        self.weight, self.num_groups = weight, num_groups
        if xp_of(x) is np and x.dtype in (np.float32, np.float64):
            self.x = x
            y, self.mean, self.rstd = norm_numba.group_norm_forward(x, weight, bias, num_groups, eps)
            return y
        y, self.saved = group_norm_forward_xp(x, weight, bias, num_groups, eps)
        return y

    def backward(self, g):
        if hasattr(self, "x"):
            dx, dw, db = norm_numba.group_norm_backward(g, self.x, self.weight, self.mean, self.rstd,
                                                        self.num_groups)
        else:
            dx, dw, db = group_norm_backward_xp(g, self.weight, *self.saved)
        return tuple(d if need else None for d, need in zip((dx, dw, db), self.needs_grad))


class GroupNormSiLU(Function):
    """y = z σ(z), z = γ_c x̂ + β_c: SiLU after group norm as one Function (docs/layers.md eq. M25).

    NumPy arrays run `norm_numba.group_norm_silu_forward/backward`: eq. M22's passes, the third writing
    z σ(z); saved x, μ, r, so one activation-sized array less is held than by GroupNorm then SiLU (which
    keep x and z). Backward recomputes z and σ(z) per block and runs eq. M22's backward on
    g_z = g σ(z)(1 + z(1 − σ(z))). Other array modules (CuPy) run `group_norm_silu_forward_xp` /
    `group_norm_silu_backward_xp` (below), which keep z.
    """

    def forward(self, x, weight, bias, num_groups=1, eps=1e-5):
        _check_group_norm(x, num_groups, weight, bias)
        self.weight, self.num_groups = weight, num_groups
        if xp_of(x) is np and x.dtype in (np.float32, np.float64):
            self.x, self.bias = x, bias
            y, self.mean, self.rstd = norm_numba.group_norm_silu_forward(x, weight, bias, num_groups, eps)
            return y
        y, self.saved = group_norm_silu_forward_xp(x, weight, bias, num_groups, eps)
        return y

    def backward(self, g):
        if hasattr(self, "x"):
            dx, dw, db = norm_numba.group_norm_silu_backward(g, self.x, self.weight, self.bias, self.mean,
                                                             self.rstd, self.num_groups)
        else:
            dx, dw, db = group_norm_silu_backward_xp(g, self.weight, *self.saved)
        return tuple(d if need else None for d, need in zip((dx, dw, db), self.needs_grad))


def group_norm_forward_xp(x, weight, bias, num_groups, eps):
    """Eq. M6 through per-channel sums, one array-module call per pass; returns y and what backward needs.

    With x viewed as (B, G, C/G, n_s), n = (C/G)·n_s elements per group, r = 1/√(σ² + ε) per (b, group):

        y = (x − μ) · (r γ_c) + β_c,
        S_c = Σ_s g,  T_c = Σ_s g (x − μ)       (per sample and channel)
        mean(ĝ) = Σ_{c∈group} γ_c S_c / n,   mean(ĝ ⊙ x̂) = r Σ_{c∈group} γ_c T_c / n,
        ∂L/∂x = g · (r γ_c) − (x − μ) · r² mean(ĝ ⊙ x̂) − r mean(ĝ),   (eq. M7 expanded)
        ∂L/∂γ_c = Σ_b r T_c,   ∂L/∂β_c = Σ_b S_c.
    """
    xp = xp_of(x)
    B, C = x.shape[:2]
    G = num_groups
    x4 = x.reshape(B, G, C // G, math.prod(x.shape[2:]))   # explicit n_s: B = 0 is a valid empty batch
    n = x4.shape[2] * x4.shape[3]
    centered = x4 - x4.mean(axis=(2, 3), keepdims=True)                               # x − μ
    var = xp.einsum("bgcs,bgcs->bg", centered, centered) / n
    r = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)                                   # (B, G)
    gamma, beta = weight.reshape(1, G, C // G, 1), bias.reshape(1, G, C // G, 1)
    y = centered * (r[:, :, None, None] * gamma)
    y += beta
    return y.reshape(x.shape), (centered, r, n, x.shape)


def group_norm_backward_xp(g, weight, centered, r, n, shape):
    """(∂L/∂x, ∂L/∂γ, ∂L/∂β) of `group_norm_forward_xp` (eq. M7 expanded, its docstring)."""
    xp = xp_of(g)
    B, G, Cg = centered.shape[:3]
    g4 = g.reshape(centered.shape)
    gamma = weight.reshape(1, G, Cg)
    S = g4.sum(axis=3)                                                               # (B, G, C/G)
    T = xp.einsum("bgcs,bgcs->bgc", g4, centered)
    mean_g_hat = (gamma * S).sum(axis=2) / n                                         # (B, G)
    mean_g_hat_x_hat = r * (gamma * T).sum(axis=2) / n
    dx = g4 * (r[:, :, None] * gamma)[..., None]
    dx -= centered * (r * r * mean_g_hat_x_hat)[:, :, None, None]    # r x̂ = r² (x − μ)
    dx -= (r * mean_g_hat)[:, :, None, None]
    return dx.reshape(shape), (r[:, :, None] * T).sum(axis=0).reshape(-1), S.sum(axis=0).reshape(-1)


def group_norm_silu_forward_xp(x, weight, bias, num_groups, eps):
    """y = z σ(z) with z = `group_norm_forward_xp`(x, ...); returns y and what backward needs (z kept)."""
    z, saved = group_norm_forward_xp(x, weight, bias, num_groups, eps)
    return ops.silu(z), (z, saved)


def group_norm_silu_backward_xp(g, weight, z, saved):
    """Eq. M25 as array-module calls: `group_norm_backward_xp` of g_z = g σ(z)(1 + z(1 − σ(z)))."""
    s = ops.sigmoid(z)
    return group_norm_backward_xp(g * s * (1 + z * (1 - s)), weight, *saved)


class LayerNorm(Function):
    """y = γ ⊙ x̂ + β with x̂ standardised over the trailing k = γ.ndim axes.

    Inputs x (..., *N), γ (*N), β (*N). Saved: x̂, 1/√(σ² + ε). VJP: docs/layers.md eq. M7.
    """

    def forward(self, x, weight, bias, eps=1e-5):
        k = weight.ndim
        if x.shape[x.ndim - k:] != weight.shape or bias.shape != weight.shape:
            raise ValueError(f"layer_norm: input shape {tuple(x.shape)} must end with normalized_shape "
                             f"{tuple(weight.shape)} (weight), bias {tuple(bias.shape)}")
        self.axes = tuple(range(x.ndim - k, x.ndim))
        self.x_hat, self.inv_std = _standardize(x, self.axes, eps)
        self.weight = weight
        return self.x_hat * weight + bias

    def backward(self, g):
        lead = tuple(range(g.ndim - self.weight.ndim))
        dx = _standardize_backward(g * self.weight, self.x_hat, self.inv_std, self.axes) if self.needs_grad[0] else None
        dw = (g * self.x_hat).sum(axis=lead) if self.needs_grad[1] else None
        db = g.sum(axis=lead) if self.needs_grad[2] else None
        return dx, dw, db


# ---------------------------------------------------------------- readable references (eq. M6 from primitives)

def standardize_reference(x, axes, eps):
    """x̂ = (x − μ)/√(σ² + ε) over axes, from primitive ops (autograd supplies the backward)."""
    centered = ops.sub(x, ops.mean(x, axes, keepdims=True))
    var = ops.mean(ops.mul(centered, centered), axes, keepdims=True)
    return ops.div(centered, ops.sqrt(ops.add(var, eps)))


def group_norm_reference(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group norm (eq. M6) composed of reshape/mean/sqrt/div/mul/add."""
    _check_group_norm(x, num_groups, weight, bias)
    B, C = x.shape[:2]
    grouped = (B, num_groups, math.prod(x.shape[1:]) // num_groups)
    x_hat = ops.reshape(standardize_reference(ops.reshape(x, grouped), 2, eps), x.shape)
    channel = (1, C) + (1,) * (len(x.shape) - 2)
    y = x_hat if weight is None else ops.mul(x_hat, ops.reshape(weight, channel))
    return y if bias is None else ops.add(y, ops.reshape(bias, channel))


def group_norm_silu_reference(x, num_groups, weight=None, bias=None, eps=1e-5):
    """SiLU(GroupNorm(x)) (eq. M25's forward) composed of primitive ops: silu after `group_norm_reference`."""
    return ops.silu(group_norm_reference(x, num_groups, weight, bias, eps))


def layer_norm_reference(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer norm (eq. M6 over the trailing normalized_shape) composed of primitive ops."""
    axes = tuple(range(len(x.shape) - len(normalized_shape), len(x.shape)))
    y = standardize_reference(x, axes, eps)
    y = y if weight is None else ops.mul(y, weight)
    return y if bias is None else ops.add(y, bias)


# ---------------------------------------------------------------- fast-path entry points

def normalized_sizes(normalized_shape, where):
    """normalized_shape (an int or a tuple of ints >= 1) as a tuple."""
    if isinstance(normalized_shape, (tuple, list)):
        return tuple(checks.integer("normalized_shape", n, minimum=1, where=where) for n in normalized_shape)
    return (checks.integer("normalized_shape", normalized_shape, minimum=1, where=where),)


def _affine_defaults(x, shape, weight, bias):
    """γ = 1 and β = 0 (constants, no gradient) where not given."""
    data = unwrap(x)
    xp = xp_of(data)
    weight = xp.ones(shape, dtype=data.dtype) if weight is None else weight
    bias = xp.zeros(shape, dtype=data.dtype) if bias is None else bias
    return weight, bias


def _group_norm_arguments(x, num_groups, weight, bias, eps, where):
    """The checked (weight, bias, num_groups, eps) of group_norm / group_norm_silu, γ = 1 and β = 0 filled in."""
    checks.floating("x", x, where)
    num_groups = checks.integer("num_groups", num_groups, minimum=1, where=where)
    eps = checks.real("eps", eps, minimum=0.0, where=where)
    if len(x.shape) < 2 or x.shape[1] % num_groups:
        raise ValueError(f"{where}: x must be (B, C, ...) with C divisible by num_groups = {num_groups}, got "
                         f"shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            checks.shape(name, p, (x.shape[1],), where, because=" (one per channel C)")
    weight, bias = _affine_defaults(x, (x.shape[1],), weight, bias)
    return weight, bias, int(num_groups), float(eps)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    weight, bias, num_groups, eps = _group_norm_arguments(x, num_groups, weight, bias, eps, "group_norm")
    return GroupNorm.apply(x, weight, bias, num_groups=num_groups, eps=eps)


def group_norm_silu(x, num_groups, weight=None, bias=None, eps=1e-5):
    """SiLU(group_norm(x, ...)) as one Function (eq. M25): the same arguments and checks as group_norm."""
    weight, bias, num_groups, eps = _group_norm_arguments(x, num_groups, weight, bias, eps, "group_norm_silu")
    return GroupNormSiLU.apply(x, weight, bias, num_groups=num_groups, eps=eps)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    checks.floating("x", x, "layer_norm")
    shape = normalized_sizes(normalized_shape, "layer_norm")
    eps = checks.real("eps", eps, minimum=0.0, where="layer_norm")
    if tuple(x.shape[len(x.shape) - len(shape):]) != shape or len(x.shape) < len(shape):
        raise ValueError(f"layer_norm: x must end with normalized_shape {shape}, got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            checks.shape(name, p, shape, "layer_norm", because=" (normalized_shape)")
    weight, bias = _affine_defaults(x, shape, weight, bias)
    return LayerNorm.apply(x, weight, bias, eps=float(eps))
