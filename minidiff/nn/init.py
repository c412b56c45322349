"""Parameter initialisation, as PyTorch's defaults (docs/layers.md §6).

Random draws come from `minidiff.backend.default_rng()`, so `minidiff.manual_seed(s)` makes a
model's initial weights reproducible. Every function fills the tensor's data in place and returns it.

fan_in of a weight (out, in, *kernel) is in·∏kernel, fan_out is out·∏kernel, as
torch.nn.init._calculate_fan_in_and_fan_out (so for a transposed conv, whose weight is
(Cin, Cout, kh, kw), fan_in = Cout·kh·kw, exactly as PyTorch).
"""
import math

import numpy as np

from minidiff.backend import default_rng


def fan_in_and_fan_out(shape):
    if len(shape) < 2:
        raise ValueError(f"fan in/out need a weight of at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """Recommended gain: 1 (linear, sigmoid), 5/3 (tanh), √2 (relu), √(2/(1 + a²)) (leaky_relu, slope a)."""
    if nonlinearity in ("linear", "conv2d", "conv_transpose2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + a * a))
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor, low=0.0, high=1.0, rng=None):
    """Fill with U(low, high)."""
    rng = default_rng(backend=tensor.backend) if rng is None else rng
    u = rng.random(tensor.shape)
    tensor.data[...] = (low + (high - low) * u).astype(tensor.dtype)
    return tensor


def normal_(tensor, mean=0.0, std=1.0, rng=None):
    """Fill with N(mean, std²)."""
    rng = default_rng(backend=tensor.backend) if rng is None else rng
    tensor.data[...] = (mean + std * rng.standard_normal(tensor.shape)).astype(tensor.dtype)
    return tensor


def constant_(tensor, value):
    tensor.data[...] = value
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """U(−b, b), b = gain·√(3/fan), gain = calculate_gain(nonlinearity, a).

    PyTorch's Linear/Conv default uses a = √5, which gives b = 1/√fan_in.
    """
    fan_in, fan_out = fan_in_and_fan_out(tensor.shape)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound, rng)


def xavier_uniform_(tensor, gain=1.0, rng=None):
    """U(−b, b), b = gain·√(6/(fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(tensor.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, rng)


def default_layer_init_(weight, bias=None):
    """PyTorch's Linear/Conv reset_parameters: W ~ kaiming_uniform(a=√5) = U(±1/√fan_in), b ~ U(±1/√fan_in)."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = fan_in_and_fan_out(weight.shape)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)
