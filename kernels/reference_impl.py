"""impl="numpy": the reference equations (reference.py) with the dispatcher's `out=` convention.

Runs on NumPy or CuPy arrays. Not fused: each operator makes a temporary; it is the oracle
the fused kernels are tested against, and the "unfused" baseline of the benchmark.
"""
import numpy as np

from minidiff.backend import xp_of

from . import philox, reference

NAME = "numpy"
BACKENDS = ("numpy", "cupy")
AUTO_RANK = {"numpy": 0, "cupy": 0}  # the fallback wherever nothing faster is available


def probe():
    return True



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


def normal(seed, shape, offset=0, dtype=np.float32):
    return philox.normal(seed, shape, offset, dtype)


def _noise_like(a, seed, offset):
    return xp_of(a).asarray(philox.normal(seed, a.shape, offset, a.dtype))


def q_sample_philox(x0, t, seed, schedule, offset=0, out=None):
    """Eq. (C1) with eps = the Philox noise of (seed, offset) (docs/kernels.md §6)."""
    return q_sample(x0, t, _noise_like(x0, seed, offset), schedule, out)


def eps_loss_philox(eps_hat, seed, offset=0, weights=None, out=None):
    """Eq. (C2)-(C3) with eps regenerated from (seed, offset) instead of read back."""
    return eps_loss(eps_hat, _noise_like(eps_hat, seed, offset), weights, out)
