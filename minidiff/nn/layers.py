"""Layers: each holds its Parameters and calls one function of minidiff.functional (docs/layers.md).

Constructors and attribute names follow torch.nn (weight, bias; same shapes), so state dicts
line up name for name. `dtype=` picks the parameter dtype (float32 by default; float64 for gradchecks).
"""
import numpy as np

from minidiff import checks

from minidiff import functional as F
from minidiff.nn import init
from minidiff.nn.module import Module, Parameter, new_array
from minidiff.ops.conv import pair
from minidiff.ops.norm import normalized_sizes


def _positive(name, **values):
    for key, v in values.items():
        checks.integer(key, v, minimum=1, where=name)


def _dtype(dtype, where):
    """dtype None (the default float dtype) or a floating NumPy dtype."""
    return None if dtype is None else checks.dtype("dtype", dtype, "f", where)


def _conv_geometry(where, kernel_size, stride, padding, dilation):
    return (pair(kernel_size, "kernel_size", 1, where), pair(stride, "stride", 1, where),
            pair(padding, "padding", 0, where), pair(dilation, "dilation", 1, where))


class Linear(Module):
    """y = x Wᵀ + b, W (out_features, in_features), b (out_features,)."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        _positive("Linear", in_features=in_features, out_features=out_features)
        bias, dtype = checks.boolean("bias", bias, "Linear"), _dtype(dtype, "Linear")
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(new_array((out_features, in_features), dtype))
        self.bias = Parameter(new_array((out_features,), dtype)) if bias else None
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """y = conv2d(x, W, b), W (out_channels, in_channels, kh, kw) (docs/layers.md §1)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 dtype=None):
        super().__init__()
        _positive("Conv2d", in_channels=in_channels, out_channels=out_channels)
        bias, dtype = checks.boolean("bias", bias, "Conv2d"), _dtype(dtype, "Conv2d")
        self.kernel_size, self.stride, self.padding, self.dilation = _conv_geometry(
            "Conv2d", kernel_size, stride, padding, dilation)
        self.weight = Parameter(new_array((out_channels, in_channels) + self.kernel_size, dtype))
        self.bias = Parameter(new_array((out_channels,), dtype)) if bias else None
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        o, c = self.weight.shape[:2]
        return f"{c}, {o}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ConvTranspose2d(Module):
    """y = conv_transpose2d(x, W, b), W (in_channels, out_channels, kh, kw) (docs/layers.md §3)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 dilation=1, bias=True, dtype=None):
        super().__init__()
        _positive("ConvTranspose2d", in_channels=in_channels, out_channels=out_channels)
        bias, dtype = checks.boolean("bias", bias, "ConvTranspose2d"), _dtype(dtype, "ConvTranspose2d")
        self.kernel_size, self.stride, self.padding, self.dilation = _conv_geometry(
            "ConvTranspose2d", kernel_size, stride, padding, dilation)
        self.output_padding = pair(output_padding, "output_padding", 0, "ConvTranspose2d")
        if any(o >= max(s, d) for o, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"ConvTranspose2d: output_padding {self.output_padding} must be smaller than stride "
                             f"{self.stride} or dilation {self.dilation}")
        self.weight = Parameter(new_array((in_channels, out_channels) + self.kernel_size, dtype))
        self.bias = Parameter(new_array((out_channels,), dtype)) if bias else None
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.dilation)

    def extra_repr(self):
        c, o = self.weight.shape[:2]
        return f"{c}, {o}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GroupNorm(Module):
    """Group norm over (C/G channels × spatial) per sample, then y = γ_c x̂ + β_c (γ = 1, β = 0 at init)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=None):
        super().__init__()
        _positive("GroupNorm", num_groups=num_groups, num_channels=num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels = {num_channels} does not split into num_groups = {num_groups}")
        eps = checks.real("eps", eps, minimum=0.0, where="GroupNorm")
        affine, dtype = checks.boolean("affine", affine, "GroupNorm"), _dtype(dtype, "GroupNorm")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = init.ones_(Parameter(new_array((num_channels,), dtype))) if affine else None
        self.bias = init.zeros_(Parameter(new_array((num_channels,), dtype))) if affine else None

    def forward(self, x):
        self._check_input(x)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def _check_input(self, x):
        name = type(self).__name__
        checks.array_like("x", x, name)
        if len(x.shape) < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"{name}({self.num_groups}, {self.num_channels}): x must be (B, {self.num_channels}, "
                             f"...), got shape {tuple(x.shape)}")

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class GroupNormSiLU(GroupNorm):
    """y = SiLU(GroupNorm(x)) = z σ(z), z = γ_c x̂ + β_c, as one Function (docs/layers.md eq. M25).

    A GroupNorm (same parameters weight and bias, same state-dict keys, so checkpoints and the PyTorch
    mirrors that write GroupNorm then SiLU load unchanged) whose forward applies SiLU too; backward
    keeps x and the group statistics only, not z.
    """

    def forward(self, x):
        self._check_input(x)
        return F.group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(Module):
    """Standardise over the trailing normalized_shape, then y = γ ⊙ x̂ + β."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, dtype=None):
        super().__init__()
        self.normalized_shape = normalized_sizes(normalized_shape, "LayerNorm")
        self.eps = checks.real("eps", eps, minimum=0.0, where="LayerNorm")
        affine = checks.boolean("elementwise_affine", elementwise_affine, "LayerNorm")
        dtype = _dtype(dtype, "LayerNorm")
        self.weight = init.ones_(Parameter(new_array(self.normalized_shape, dtype))) if affine else None
        self.bias = init.zeros_(Parameter(new_array(self.normalized_shape, dtype))) if affine else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class Embedding(Module):
    """y = W[indices], W (num_embeddings, embedding_dim) ~ N(0, 1) at init, as PyTorch."""

    def __init__(self, num_embeddings, embedding_dim, dtype=None):
        super().__init__()
        _positive("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        dtype = _dtype(dtype, "Embedding")
        self.weight = init.normal_(Parameter(new_array((num_embeddings, embedding_dim), dtype)))

    def forward(self, indices):
        return F.embedding(indices, self.weight)


class SiLU(Module):
    """y = x σ(x)."""

    def forward(self, x):
        return F.silu(x)


class GELU(Module):
    """y = x Φ(x) (approximate="none") or its tanh approximation."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = checks.one_of("approximate", approximate, ("none", "tanh"), "GELU")

    def forward(self, x):
        return F.gelu(x, self.approximate)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Dropout(Module):
    """Inverted dropout with drop probability p while training; the identity in eval()."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = checks.real("p", p, minimum=0.0, maximum=1.0, where="Dropout")

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class Upsample(Module):
    """y = interpolate(x, size or scale_factor): nearest-neighbour resizing; arguments in torch.nn.Upsample's order."""

    def __init__(self, size=None, scale_factor=None, mode="nearest"):
        super().__init__()
        size, scale_factor = F.resize_arguments(size, scale_factor, mode, "Upsample")
        self.size, self.scale_factor, self.mode = size, scale_factor, mode

    def forward(self, x):
        return F.interpolate(x, size=self.size, scale_factor=self.scale_factor, mode=self.mode)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        kernel = pair(kernel_size, "kernel_size", 1, "AvgPool2d")
        padding = pair(padding, "padding", 0, "AvgPool2d")
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise ValueError(f"AvgPool2d: padding {padding} must be at most half the kernel_size {kernel}")
        stride = None if stride is None else pair(stride, "stride", 1, "AvgPool2d")
        self.kernel_size, self.stride, self.padding = kernel, stride, padding

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1·d2·...)."""

    def forward(self, x):
        checks.batch("Flatten", x=x)
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))


class Unflatten(Module):
    """(B, d) -> (B, *shape)."""

    def __init__(self, shape):
        super().__init__()
        checks.instance("shape", shape, (tuple, list), "a tuple of sizes", "Unflatten")
        self.shape = tuple(checks.integer("shape", n, minimum=1, where="Unflatten") for n in shape)

    def forward(self, x):
        checks.shape("x", x, (None, int(np.prod(self.shape))), "Unflatten", because=f" (B, prod{self.shape})")
        return x.reshape((x.shape[0],) + self.shape)
