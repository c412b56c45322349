"""impl="numpy": the reference equations (reference.py) with the dispatcher's `out=` convention.

Runs on NumPy or CuPy arrays. Not fused: each operator makes a temporary; it is the oracle
the fused kernels are tested against, and the "unfused" baseline of the benchmark.
"""
from . import reference


def _into(out, result):
    if out is None:
        return result
    out[...] = result
    return out


def q_sample(x0, t, eps, schedule, out=None):
    return _into(out, reference.q_sample(x0, t, eps, schedule))


def eps_loss(eps_hat, eps, weights=None, out=None):
    loss, grad = reference.eps_loss(eps_hat, eps, weights)
    return loss, _into(out, grad)


def reverse_step(x_t, t, eps_hat, z, schedule, variance="fixed_small", clip_x0=False, out=None):
    return _into(out, reference.reverse_step(x_t, t, eps_hat, z, schedule, variance, clip_x0))
