"""Fused kernels for the three hot diffusion operations, behind one dispatch function each.

    q_sample(x0, t, eps, schedule)                 x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    eps_loss(eps_hat, eps, weights=None)           (mean w_b (eps_hat - eps)^2, its gradient in eps_hat)
    reverse_step(x_t, t, eps_hat, z, schedule)     x_{t-1} = mu_theta(x_t, t) + sigma_t z
    normal, q_sample_philox, eps_loss_philox       the same with Philox noise made in the kernel

Implementations (`impl=`) register themselves: every module of this package that defines NAME
is one, and declares beside its kernels
    NAME        the impl= string, e.g. "numba"
    BACKENDS    the array backends it takes, the first being where `normal` puts its result
    AUTO_RANK   {backend: rank}: "auto" takes the available implementation of highest rank for
                the arrays' backend; a backend not listed is never chosen by "auto"
    probe()     whether it can run here (its imports work and its device exists)
and the six functions of CONTRACT with exactly those parameters. This module checks each at
import, so an implementation that lacks a function or renames a parameter fails at once.
Shipped: "numpy" (reference_impl.py, the equations), "numba" (numba_cpu.py), "numba_cuda"
(numba_cuda.py), "cupy" (cupy_raw.py + *.cu). The kernels take raw arrays and a duck-typed
schedule (any object with the float64 tables of minidiff.diffusion.Schedule); of the rest of
minidiff they import only the array-module lookup, minidiff.backend.xp_of. Math, bytes model and
measured bandwidth: docs/kernels.md.
"""
import importlib
import inspect
import pkgutil
import sys

import numpy as np

from . import checks, reference

CONTRACT = {
    "q_sample": ("x0", "t", "eps", "schedule", "out"),
    "eps_loss": ("eps_hat", "eps", "weights", "out"),
    "reverse_step": ("x_t", "t", "eps_hat", "z", "schedule", "variance", "clip_x0", "out"),
    "normal": ("seed", "shape", "offset", "dtype"),
    "q_sample_philox": ("x0", "t", "seed", "schedule", "offset", "out"),
    "eps_loss_philox": ("eps_hat", "seed", "offset", "weights", "out"),
}
DECLARATIONS = ("NAME", "BACKENDS", "AUTO_RANK", "probe")
REFERENCE = "numpy"  # the implementation every other one is tested against


def check_contract(module):
    """Raise TypeError unless `module` declares DECLARATIONS and the functions of CONTRACT."""
    missing = [name for name in (*DECLARATIONS, *CONTRACT) if not hasattr(module, name)]
    if missing:
        raise TypeError(f"kernel implementation {module.__name__} lacks {missing}")
    for name, params in CONTRACT.items():
        got = tuple(inspect.signature(getattr(module, name)).parameters)
        if got != params:
            raise TypeError(f"{module.__name__}.{name} takes {got}; the kernel contract is {params}")
    unknown = set(module.AUTO_RANK) - set(module.BACKENDS)
    if unknown:
        raise TypeError(f"{module.__name__}.AUTO_RANK ranks backends {sorted(unknown)} it does not take")
    return module


def discover(package):
    """{NAME: module} for every module of `package` that declares NAME, each contract checked.

    Ordered by highest rank, then name, so the reference ("numpy", rank 0) comes first.
    """
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, "NAME"):
            if module.NAME in found:
                raise TypeError(f"kernel implementation name {module.NAME!r} is declared by "
                                f"{found[module.NAME].__name__} and {module.__name__}")
            found[module.NAME] = check_contract(module)
    return dict(sorted(found.items(), key=lambda item: (max(item[1].AUTO_RANK.values(), default=-1), item[0])))


REGISTRY = discover(sys.modules[__name__])
IMPLS = tuple(REGISTRY)
_available = {}


def available():
    """The implementations that work on this machine, e.g. ['numpy', 'numba']."""
    for name, module in REGISTRY.items():
        if name not in _available:
            _available[name] = bool(module.probe())
    return [name for name in IMPLS if _available[name]]


def serving(backend):
    """The available implementations that take `backend` ("numpy" or "cupy") arrays."""
    return [name for name in available() if backend in REGISTRY[name].BACKENDS]


def resolve(impl, backend):
    """The module implementing `impl` ("auto" or a name in IMPLS) for arrays of `backend`."""
    if impl == "auto":
        ranked = [name for name in serving(backend) if backend in REGISTRY[name].AUTO_RANK]
        if not ranked:
            raise ValueError(f"no available kernel implementation ranks {backend} arrays for impl='auto'")
        impl = max(ranked, key=lambda name: REGISTRY[name].AUTO_RANK[backend])
    if impl not in REGISTRY:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {IMPLS}")
    if impl not in available():
        raise ValueError(f"impl {impl!r} is not available on this machine; available: {available()}")
    module = REGISTRY[impl]
    if backend not in module.BACKENDS:
        raise TypeError(f"impl {impl!r} cannot run on {backend} arrays (it takes {module.BACKENDS})")
    return module


def q_sample(x0, t, eps, schedule, impl="auto", out=None):
    """Sample q(x_t | x_0): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (docs/kernels.md eq. C1).

    x0, eps: (B, ...) float32/float64; t: (B,) integers in 1..T. Writes into `out` if given.
    """
    backend = checks.data_arrays(x0=x0, eps=eps)
    t = checks.timesteps(t, x0.shape[0], backend, checks.schedule_length(schedule))
    checks.out_array(out, x0)
    return resolve(impl, backend).q_sample(x0, t, eps, schedule, out=out)


def eps_loss(eps_hat, eps, weights=None, impl="auto", out=None):
    """L = mean over all elements of w_b (eps_hat - eps)^2 and dL/d eps_hat, in one pass (eq. C2-C3).

    eps_hat, eps: (B, ...); weights: (B,) or None (w_b = 1). Returns (L as a 0-d array of the
    data's dtype, gradient shaped like eps_hat); the gradient goes into `out` if given.
    """
    backend = checks.data_arrays(eps_hat=eps_hat, eps=eps)
    checks.nonempty("eps_hat", eps_hat)
    weights = checks.weights(weights, eps_hat.shape[0], backend)
    checks.out_array(out, eps_hat)
    return resolve(impl, backend).eps_loss(eps_hat, eps, weights, out=out)


def reverse_step(x_t, t, eps_hat, z, schedule, variance="fixed_small", clip_x0=False, impl="auto", out=None):
    """Sample p(x_{t-1} | x_t): x_{t-1} = mu_theta(x_t, t) + sigma_t z (docs/kernels.md eq. C4-C7).

    x_t, eps_hat, z: (B, ...); t: (B,) in 1..T; z is ignored where t = 1. variance:
    "fixed_small" (sigma_t^2 = posterior variance) or "fixed_large" (sigma_t^2 = beta_t);
    clip_x0 clips the predicted x_0 to [-1, 1] and uses the posterior mean.
    """
    backend = checks.data_arrays(x_t=x_t, eps_hat=eps_hat, z=z)
    t = checks.timesteps(t, x_t.shape[0], backend, checks.schedule_length(schedule))
    checks.variance(variance)
    checks.out_array(out, x_t)
    return resolve(impl, backend).reverse_step(x_t, t, eps_hat, z, schedule, variance=variance,
                                               clip_x0=bool(clip_x0), out=out)


# ---------------------------------------------------------------- in-kernel noise (Philox4x32-10)

def normal(seed, shape, offset=0, dtype="float32", impl="auto"):
    """Gaussian noise of `shape` (B, ...) from Philox4x32-10 at (seed, offset), docs/kernels.md §6.

    Sample b uses the counters of stream offset + b, so the noise of a sample depends only on
    (seed, offset + b) and is bit-identical for every impl. dtype: float32 or float64. The result
    is on the implementation's first backend ("auto": NumPy).
    """
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
    if not shape or min(shape) < 0 or dtype not in checks.FLOAT_DTYPES:
        raise ValueError(f"normal needs a (B, ...) shape of sizes >= 0 and float32/float64, got shape {shape} "
                         f"and dtype {dtype}")
    checks.philox_stream(seed, offset, shape)
    backend = "numpy" if impl == "auto" else _first_backend(impl)
    return resolve(impl, backend).normal(seed, shape, offset, dtype)


def _first_backend(impl):
    if impl not in REGISTRY:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {IMPLS}")
    return REGISTRY[impl].BACKENDS[0]


def q_sample_philox(x0, t, seed, schedule, offset=0, impl="auto", out=None):
    """Eq. (1) with eps = normal(seed, x0.shape, offset) drawn inside the kernel (never stored).

    Moves 2 n s bytes instead of q_sample's 3 n s; eps_loss_philox regenerates the same eps.
    """
    backend = checks.data_arrays(x0=x0)
    t = checks.timesteps(t, x0.shape[0], backend, checks.schedule_length(schedule))
    checks.philox_stream(seed, offset, x0.shape)
    checks.out_array(out, x0)
    return resolve(impl, backend).q_sample_philox(x0, t, seed, schedule, offset, out=out)


def eps_loss_philox(eps_hat, seed, offset=0, weights=None, impl="auto", out=None):
    """Eq. (2)-(3) with eps = normal(seed, eps_hat.shape, offset) regenerated, not read back."""
    backend = checks.data_arrays(eps_hat=eps_hat)
    checks.nonempty("eps_hat", eps_hat)
    weights = checks.weights(weights, eps_hat.shape[0], backend)
    checks.philox_stream(seed, offset, eps_hat.shape)
    checks.out_array(out, eps_hat)
    return resolve(impl, backend).eps_loss_philox(eps_hat, seed, offset, weights, out=out)


__all__ = ["q_sample", "eps_loss", "reverse_step", "normal", "q_sample_philox", "eps_loss_philox", "available",
           "serving", "resolve", "check_contract", "discover", "CONTRACT", "REGISTRY", "REFERENCE", "IMPLS",
           "reference"]
