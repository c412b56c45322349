"""Fused kernels for the three hot diffusion operations, behind one dispatch function each.

    q_sample(x0, t, eps, schedule)                 x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    eps_loss(eps_hat, eps, weights=None)           (mean w_b (eps_hat - eps)^2, its gradient in eps_hat)
    reverse_step(x_t, t, eps_hat, z, schedule)     x_{t-1} = mu_theta(x_t, t) + sigma_t z

Implementations (`impl=`): "numpy" (reference.py, the equations; NumPy or CuPy arrays),
"numba" (numba_cpu.py, NumPy arrays), "numba_cuda" (numba_cuda.py, CuPy arrays on a GPU, or
NumPy arrays under NUMBA_ENABLE_CUDASIM=1), "cupy" (cupy_raw.py + *.cu, CuPy arrays).
"auto" takes the fastest available for the arrays' backend: numba on CPU (numpy if Numba
is missing), cupy on GPU. The kernels take raw arrays and a duck-typed schedule (any object
with the float64 tables of minidiff.diffusion.Schedule); they never import the rest of minidiff.
Math, bytes model and measured bandwidth: docs/kernels.md.
"""
import importlib
import os

import numpy as np

from . import checks, reference

IMPLS = ("numpy", "numba", "numba_cuda", "cupy")
_MODULES = {"numpy": "reference_impl", "numba": "numba_cpu", "numba_cuda": "numba_cuda", "cupy": "cupy_raw"}
_BACKENDS = {"numpy": ("numpy", "cupy"), "numba": ("numpy",), "numba_cuda": ("numpy", "cupy"),
             "cupy": ("cupy",)}
_available = {}
_resolved = {}  # (impl, backend) -> module, filled by _module


def _probe(name):
    """Whether implementation `name` can run here (its imports work and its device exists)."""
    try:
        if name == "numba":
            import numba  # noqa: F401
        elif name == "numba_cuda":
            from numba import cuda
            return bool(cuda.is_available())
        elif name == "cupy":
            import cupy
            return cupy.cuda.runtime.getDeviceCount() > 0
        return True
    except Exception:  # ImportError, or a CUDA driver error without a GPU
        return False


def available():
    """The implementations that work on this machine, e.g. ['numpy', 'numba']."""
    for name in IMPLS:
        if name not in _available:
            _available[name] = _probe(name)
    return [name for name in IMPLS if _available[name]]


def _module(impl, backend):
    """The module implementing `impl` for arrays of `backend`, after checking it can run them."""
    key = (impl, backend)
    if key not in _resolved:
        _resolved[key] = _resolve(impl, backend)
    return _resolved[key]


def _resolve(impl, backend):
    if impl == "auto":
        usable = available()
        if backend == "cupy":
            impl = "cupy" if "cupy" in usable else "numba_cuda" if "numba_cuda" in usable else "numpy"
        else:
            impl = "numba" if "numba" in usable else "numpy"
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {IMPLS}")
    if impl not in available():
        raise ValueError(f"impl {impl!r} is not available on this machine; available: {available()}")
    if backend not in _BACKENDS[impl]:
        raise TypeError(f"impl {impl!r} cannot run on {backend} arrays (it takes {_BACKENDS[impl]})")
    if impl == "numba_cuda" and backend == "numpy" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        raise TypeError("impl 'numba_cuda' takes CuPy (device) arrays; NumPy arrays only under "
                        "NUMBA_ENABLE_CUDASIM=1")
    return importlib.import_module(f".{_MODULES[impl]}", __name__)


def q_sample(x0, t, eps, schedule, impl="auto", out=None):
    """Sample q(x_t | x_0): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (docs/kernels.md eq. 1).

    x0, eps: (B, ...) float32/float64; t: (B,) integers in 1..T. Writes into `out` if given.
    """
    backend = checks.data_arrays(x0=x0, eps=eps)
    t = checks.timesteps(t, x0.shape[0], backend, checks.schedule_length(schedule))
    checks.out_array(out, x0)
    return _module(impl, backend).q_sample(x0, t, eps, schedule, out=out)


def eps_loss(eps_hat, eps, weights=None, impl="auto", out=None):
    """L = mean over all elements of w_b (eps_hat - eps)^2 and dL/d eps_hat, in one pass (eq. 2-3).

    eps_hat, eps: (B, ...); weights: (B,) or None (w_b = 1). Returns (L as a 0-d array of the
    data's dtype, gradient shaped like eps_hat); the gradient goes into `out` if given.
    """
    backend = checks.data_arrays(eps_hat=eps_hat, eps=eps)
    weights = checks.weights(weights, eps_hat.shape[0], backend)
    checks.out_array(out, eps_hat)
    return _module(impl, backend).eps_loss(eps_hat, eps, weights, out=out)


def reverse_step(x_t, t, eps_hat, z, schedule, variance="fixed_small", clip_x0=False, impl="auto", out=None):
    """Sample p(x_{t-1} | x_t): x_{t-1} = mu_theta(x_t, t) + sigma_t z (docs/kernels.md eq. 4-7).

    x_t, eps_hat, z: (B, ...); t: (B,) in 1..T; z is ignored where t = 1. variance:
    "fixed_small" (sigma_t^2 = posterior variance) or "fixed_large" (sigma_t^2 = beta_t);
    clip_x0 clips the predicted x_0 to [-1, 1] and uses the posterior mean.
    """
    backend = checks.data_arrays(x_t=x_t, eps_hat=eps_hat, z=z)
    t = checks.timesteps(t, x_t.shape[0], backend, checks.schedule_length(schedule))
    checks.variance(variance)
    checks.out_array(out, x_t)
    return _module(impl, backend).reverse_step(x_t, t, eps_hat, z, schedule, variance=variance,
                                               clip_x0=bool(clip_x0), out=out)


# ---------------------------------------------------------------- in-kernel noise (Philox4x32-10)

def _philox_backend(impl):
    """Where `normal` puts its result: CuPy for the GPU impls (NumPy for numba_cuda under the simulator)."""
    if impl == "cupy" or (impl == "numba_cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"):
        return "cupy"
    return "numpy"


def normal(seed, shape, offset=0, dtype="float32", impl="auto"):
    """Gaussian noise of `shape` (B, ...) from Philox4x32-10 at (seed, offset), docs/kernels.md §6.

    Sample b uses the counters of stream offset + b, so the noise of a sample depends only on
    (seed, offset + b) and is bit-identical for every impl. dtype: float32 or float64.
    """
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
    if not shape or dtype not in checks.FLOAT_DTYPES:
        raise ValueError(f"normal needs a (B, ...) shape and float32/float64, got {shape} and {dtype}")
    checks.philox_stream(seed, offset, shape)
    backend = _philox_backend(impl)
    module = _module(impl, backend)
    if impl == "numba_cuda":  # it can fill either kind of array
        return module.normal(seed, shape, offset, dtype, xp=importlib.import_module(backend))
    return module.normal(seed, shape, offset, dtype)


def q_sample_philox(x0, t, seed, schedule, offset=0, impl="auto", out=None):
    """Eq. (1) with eps = normal(seed, x0.shape, offset) drawn inside the kernel (never stored).

    Moves 2 n s bytes instead of q_sample's 3 n s; eps_loss_philox regenerates the same eps.
    """
    backend = checks.data_arrays(x0=x0)
    t = checks.timesteps(t, x0.shape[0], backend, checks.schedule_length(schedule))
    checks.philox_stream(seed, offset, x0.shape)
    checks.out_array(out, x0)
    return _module(impl, backend).q_sample_philox(x0, t, seed, schedule, offset, out=out)


def eps_loss_philox(eps_hat, seed, offset=0, weights=None, impl="auto", out=None):
    """Eq. (2)-(3) with eps = normal(seed, eps_hat.shape, offset) regenerated, not read back."""
    backend = checks.data_arrays(eps_hat=eps_hat)
    weights = checks.weights(weights, eps_hat.shape[0], backend)
    checks.philox_stream(seed, offset, eps_hat.shape)
    checks.out_array(out, eps_hat)
    return _module(impl, backend).eps_loss_philox(eps_hat, seed, offset, weights, out=out)


__all__ = ["q_sample", "eps_loss", "reverse_step", "normal", "q_sample_philox", "eps_loss_philox", "available",
           "IMPLS", "reference"]
