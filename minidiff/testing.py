"""Gradient checking by float64 central differences.

For a function f of tensors, draw a fixed random cotangent r of f's output shape and
compare the autograd gradient of L = ⟨f(x), r⟩ with the central difference
(L(x + h e_i) − L(x − h e_i)) / 2h for every element i of every input.
"""
import numpy as np

from minidiff.autograd import Tensor, unwrap
from minidiff.backend import to_numpy, xp_of


class GradcheckError(AssertionError):
    """Autograd and finite differences disagree."""


def numerical_grad(f, arrays, i, r, h):
    """Central-difference gradient of ⟨f(arrays), r⟩ with respect to arrays[i] (all float64)."""
    x = arrays[i]
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: x is contiguous
    for k in range(flat.size):
        saved = flat[k].item()
        flat[k] = saved + h
        plus = float((to_numpy(_value(f, arrays)) * r).sum())
        flat[k] = saved - h
        minus = float((to_numpy(_value(f, arrays)) * r).sum())
        flat[k] = saved
        grad.reshape(-1)[k] = (plus - minus) / (2 * h)
    return grad


def _value(f, arrays):
    return unwrap(f(*[Tensor(a) for a in arrays]))


def gradcheck(f, inputs, wrt=None, h=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Check autograd against central differences for f(*tensors) -> Tensor.

    inputs: arrays (converted to contiguous float64 copies). wrt: indices of the inputs to
    differentiate (default: all). Raises GradcheckError naming the input and the worst element;
    returns True when every gradient matches within atol + rtol·|numerical|.
    """
    arrays = [xp_of(a).array(a, dtype=np.float64, order="C") for a in inputs]  # contiguous copies, 0-d kept
    wrt = range(len(arrays)) if wrt is None else wrt
    tensors = [Tensor(a.copy(), requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = f(*tensors)
    if not isinstance(out, Tensor) or out.dtype != np.float64:
        raise GradcheckError(f"gradcheck: f must return a float64 Tensor, got {type(out).__name__}")
    r = np.random.default_rng(seed).standard_normal(out.shape)
    if out.requires_grad:
        out.backward(xp_of(out.data).asarray(r))
    for i in wrt:
        analytic = np.zeros(arrays[i].shape) if tensors[i].grad is None else to_numpy(tensors[i].grad)
        if analytic.shape != arrays[i].shape:
            raise GradcheckError(f"gradcheck: input {i} has shape {arrays[i].shape} but its grad has "
                                 f"shape {analytic.shape}")
        numeric = numerical_grad(f, arrays, i, r, h)
        err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if err.size and err.max() > 0:
            k = np.unravel_index(np.argmax(err), err.shape)
            raise GradcheckError(f"gradcheck: input {i} (shape {arrays[i].shape}) at {k}: autograd "
                                 f"{analytic[k]:.10g} vs finite difference {numeric[k]:.10g}")
    return True
