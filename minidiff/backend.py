"""Array backends: NumPy (default) or CuPy, chosen once and read everywhere as `xp`.

Op code is written against an array module (`xp`), so one implementation runs on
CPU (NumPy) and GPU (CuPy). The current backend decides where *new* arrays are made;
existing arrays always report their own module through `xp_of`.

    MINIDIFF_BACKEND=cupy python ...          # environment
    minidiff.set_backend("cupy")               # process-wide
    with minidiff.use_backend("cupy"): ...     # scoped
"""
import contextlib
import os

import numpy as np

BACKENDS = ("numpy", "cupy")
_current = {"name": None, "xp": None}
_seed_state = {"seed": None, "count": 0}


class BackendError(RuntimeError):
    """The requested array backend cannot be used on this machine."""


def _load_cupy():
    """Import CuPy and check that a GPU is visible; raise one clear error otherwise."""
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "backend 'cupy' requested but CuPy is not installed "
            "(pip install 'minidiff[gpu]', i.e. cupy-cuda12x)") from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise BackendError(f"backend 'cupy' requested but no CUDA GPU is visible: {e}") from e
    if n < 1:
        raise BackendError("backend 'cupy' requested but no CUDA GPU is visible (0 devices)")
    return cupy


def _module(name):
    if name == "numpy":
        return np
    if name == "cupy":
        return _load_cupy()
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def set_backend(name):
    """Make `name` ("numpy" or "cupy") the backend new arrays are created on."""
    xp = _module(name)
    _current["name"], _current["xp"] = name, xp


def get_backend():
    """Name of the current backend ("numpy" unless MINIDIFF_BACKEND or set_backend says otherwise)."""
    if _current["name"] is None:
        set_backend(os.environ.get("MINIDIFF_BACKEND", "numpy").strip().lower())
    return _current["name"]


def xp():
    """The current backend's array module (numpy or cupy)."""
    get_backend()
    return _current["xp"]


@contextlib.contextmanager
def use_backend(name):
    """Scoped backend switch: `with use_backend("cupy"): ...`."""
    previous = get_backend()
    set_backend(name)
    try:
        yield _current["xp"]
    finally:
        set_backend(previous)


def is_cupy_array(a):
    return type(a).__module__.startswith("cupy")


def xp_of(a):
    """The array module an array belongs to: cupy for cupy.ndarray, numpy otherwise.

    A minidiff Tensor is looked through to its array (duck-typed: this module sits below autograd).
    The one array-module lookup of the package; the kernels use it too.
    """
    if hasattr(a, "requires_grad") and hasattr(a, "data"):
        a = a.data
    if is_cupy_array(a):
        import cupy
        return cupy
    return np


def backend_name_of(a):
    return "cupy" if is_cupy_array(a) else "numpy"


def to_numpy(a):
    """A host (NumPy) copy-or-view of any array."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


def cupy_available():
    """True when CuPy imports and sees at least one GPU."""
    try:
        _load_cupy()
        return True
    except BackendError:
        return False


# ---------------------------------------------------------------- random numbers

def manual_seed(seed):
    """Seed the global generators of both backends; `default_rng()` then restarts from `seed`."""
    seed = int(seed)
    _seed_state["seed"], _seed_state["count"] = seed, 0
    np.random.seed(seed % 2**32)
    if _current["name"] == "cupy":
        _current["xp"].random.seed(seed)


def default_rng(seed=None, backend=None):
    """An explicit generator on `backend` (default: current).

    With seed=None after `manual_seed(s)`, successive calls return generators seeded from
    (s, call index), so a seeded program is reproducible end to end. NumPy gets a PCG64
    `numpy.random.Generator`; CuPy its `cupy.random.Generator`. Both offer `.standard_normal(size, dtype)`,
    `.random(size)`, `.integers(low, high, size)` and `.permutation(n)`.
    """
    name = backend or get_backend()
    if seed is None and _seed_state["seed"] is not None:
        seed = (_seed_state["seed"], _seed_state["count"])
        _seed_state["count"] += 1
    if name == "numpy":
        return np.random.default_rng(seed)
    cupy = _module(name)
    if isinstance(seed, tuple):
        seed = int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
    return cupy.random.default_rng(seed)
