"""Comparisons shared by every implementation's tests: run one op with `impl` and with the reference.

Tolerances are relative to the size of the terms each formula adds (not just of its result),
so a cancellation like u x_t - v eps_hat at large t is judged fairly in float32.
"""
import numpy as np

import minidiff.kernels as K
from minidiff.kernels import reference as R
from tests.strategies_kernels import tolerance


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _per_sample(table, p):
    return np.asarray(table, dtype=np.float64)[p.t].reshape((-1,) + (1,) * (p.x.ndim - 1))


def _close(got, ref, scale, dtype, what):
    got, ref = _host(got), _host(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, got.dtype, ref.shape, ref.dtype)
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    bound = tolerance(dtype) * (1.0 + np.broadcast_to(scale, err.shape))
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
    assert np.all(err <= bound), f"{what}: |got - ref| = {err[worst]} > {bound[worst]} at {worst}"


def check_q_sample(p, impl, to=np.asarray):
    got = K.q_sample(to(p.x), to(p.t), to(p.eps), p.schedule, impl=impl)
    ref = R.q_sample(p.x, p.t, p.eps, p.schedule)
    scale = np.abs(p.x) + np.abs(p.eps)
    _close(got, ref, scale, p.dtype, f"q_sample impl={impl}")


def check_eps_loss(p, impl, to=np.asarray):
    w = None if p.weights is None else to(p.weights)
    loss, grad = K.eps_loss(to(p.x), to(p.eps), w, impl=impl)
    ref_loss, ref_grad = R.eps_loss(p.x, p.eps, p.weights)
    _close(loss, ref_loss, np.abs(ref_loss), p.dtype, f"eps_loss loss impl={impl}")
    _close(grad, ref_grad, np.abs(ref_grad), p.dtype, f"eps_loss grad impl={impl}")


def reverse_scale(p):
    """Sum of the magnitudes of the terms eq. (C4) or eq. (C5)+(C7) adds, per element."""
    sigma = _per_sample(R.sigma_table(p.schedule, p.variance), p) * np.abs(p.z)
    if p.clip_x0:
        u, v = (_per_sample(c, p) for c in R.x0_tables(p.schedule))
        c1, c2 = _per_sample(p.schedule.posterior_mean_coef1, p), _per_sample(p.schedule.posterior_mean_coef2, p)
        return c1 * (u * np.abs(p.x) + v * np.abs(p.eps)) + c2 * np.abs(p.x) + sigma
    r, e = (_per_sample(c, p) for c in R.eps_mean_tables(p.schedule))
    return r * (np.abs(p.x) + e * np.abs(p.eps)) + sigma


def check_reverse_step(p, impl, to=np.asarray):
    got = K.reverse_step(to(p.x), to(p.t), to(p.eps), to(p.z), p.schedule, p.variance, p.clip_x0, impl=impl)
    ref = R.reverse_step(p.x, p.t, p.eps, p.z, p.schedule, p.variance, p.clip_x0)
    what = f"reverse_step impl={impl} variance={p.variance} clip_x0={p.clip_x0}"
    _close(got, ref, reverse_scale(p), p.dtype, what)


def check_all(p, impl, to=np.asarray):
    check_q_sample(p, impl, to)
    check_eps_loss(p, impl, to)
    check_reverse_step(p, impl, to)
