"""Input validation shared by every implementation: fail early, name the argument and its shape.

The kernels index memory by hand, so a wrong shape or an out-of-range t would read out of
bounds instead of raising; these checks run once per call, before any kernel.
"""
import numpy as np

from .reference import VARIANCES

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
SCHEDULE_TABLES = ("betas", "alphas", "alpha_bars", "sqrt_alpha_bars", "sqrt_one_minus_alpha_bars",
                   "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2")


def _backend(a):
    return "cupy" if type(a).__module__.startswith("cupy") else "numpy"


def data_arrays(**arrays):
    """Check that the named data arrays are float32/float64 arrays of one shape, dtype and backend.

    Returns the common backend name ("numpy" or "cupy").
    """
    names = list(arrays)
    for name, a in arrays.items():
        if hasattr(a, "requires_grad"):
            raise TypeError(f"{name} is a minidiff.Tensor; the kernels take raw arrays (pass {name}.data), "
                            "or use minidiff.diffusion.fused_eps_loss for a differentiable loss")
        if not (hasattr(a, "dtype") and hasattr(a, "shape") and hasattr(a, "ndim")):
            raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {a.dtype}; the kernels need float32 or float64 data")
        if a.ndim < 1:
            raise ValueError(f"{name} must have a leading batch axis, got a 0-d array")
    first, first_arr = names[0], arrays[names[0]]
    for name in names[1:]:
        a = arrays[name]
        if _backend(a) != _backend(first_arr):
            raise TypeError(f"arrays of different backends: {first} is {_backend(first_arr)}, "
                            f"{name} is {_backend(a)}")
        if a.shape != first_arr.shape:
            raise ValueError(f"shape mismatch: {first} has shape {first_arr.shape}, {name} has shape {a.shape}")
        if a.dtype != first_arr.dtype:
            raise TypeError(f"dtype mismatch: {first} is {first_arr.dtype}, {name} is {a.dtype}")
    return _backend(first_arr)


MAX_T = 10 ** 7  # far above any real chain; a larger claimed T is a corrupt or hostile schedule object


def schedule_length(schedule):
    """T of a duck-typed schedule, after checking every table the kernels read is 1-D, real and of length T+1.

    The kernels gather table[t_b] without bounds checks, so a table shorter than T+1 (or a T larger
    than the tables, or absurd) would read past its end; this runs before any kernel code.
    """
    missing = [name for name in SCHEDULE_TABLES if not hasattr(schedule, name)]
    if missing:
        raise TypeError(f"schedule {type(schedule).__name__} lacks the tables {missing} "
                        "(expected a minidiff.diffusion.Schedule or an object with its attributes)")
    lengths = {}
    for name in SCHEDULE_TABLES:
        table = getattr(schedule, name)
        shape, kind = np.shape(table), np.asarray(table).dtype.kind if np.ndim(table) <= 1 else None
        if len(shape) != 1 or kind not in ("f", "i", "u"):
            raise TypeError(f"schedule.{name} must be a 1-D table of real numbers (t = 0..T), got shape {shape}"
                            + (f" and dtype kind {kind!r}" if kind else ""))
        lengths[name] = shape[0]
    T = lengths["alpha_bars"] - 1
    claimed = getattr(schedule, "T", T)
    if isinstance(claimed, bool) or not isinstance(claimed, (int, np.integer)) or not 1 <= claimed <= MAX_T:
        raise ValueError(f"schedule.T must be an integer in 1..{MAX_T}, got {claimed!r}")
    short = {name: n for name, n in lengths.items() if n != claimed + 1}
    if short:
        raise ValueError(f"schedule tables must all have length T + 1 = {claimed + 1} (t = 0..T); got lengths "
                         f"{short}")
    return int(claimed)


def timesteps(t, batch, backend, T):
    """Check t: an integer array of shape (batch,), same backend as the data, values in 1..T."""
    if not hasattr(t, "dtype"):
        t = np.asarray(t)
    if _backend(t) != backend:
        raise TypeError(f"arrays of different backends: the data is {backend}, t is {_backend(t)}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"t must hold integer timesteps, got dtype {t.dtype}")
    if t.shape != (batch,):
        raise ValueError(f"t must have shape (B,) = ({batch},) to match the batch, got shape {t.shape}")
    if t.size == 0:  # an empty batch: nothing to index
        return t
    lo, hi = int(t.min()), int(t.max())
    if lo < 1 or hi > T:
        raise ValueError(f"t must lie in 1..T = 1..{T}, got values in {lo}..{hi}")
    return t


def weights(w, batch, backend):
    """Check per-sample loss weights: a float array of shape (batch,) on the data's backend."""
    if w is None:
        return None
    if not hasattr(w, "dtype"):
        try:
            w = np.asarray(w, dtype=np.float64)
        except (TypeError, ValueError):  # a string, a ragged list, an object
            raise TypeError(f"weights must be a float array of shape (B,) = ({batch},), got {type(w).__name__} "
                            f"{w!r:.40}") from None
    if _backend(w) != backend:
        raise TypeError(f"arrays of different backends: the data is {backend}, weights is {_backend(w)}")
    if w.dtype.kind != "f":
        raise TypeError(f"weights must be floating point, got dtype {w.dtype}")
    if w.shape != (batch,):
        raise ValueError(f"weights must have shape (B,) = ({batch},), got shape {w.shape}")
    return w


def nonempty(name, a):
    """Check that a loss input holds at least one element (the loss is a mean over its elements)."""
    if a.size == 0:
        raise ValueError(f"{name} must hold at least one element (the loss is a mean over them), "
                         f"got shape {a.shape}")


def variance(name):
    if name not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {name!r}")


def out_array(out, like):
    """Check an `out=` array: same shape, dtype and backend as the result, C-contiguous."""
    if out is None:
        return None
    data_arrays(result=like, out=out)
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (the kernels write it as one flat buffer)")
    return out


def philox_stream(seed, offset, shape):
    """Check a Philox stream: integer seed in 0..2^64-1, offset >= 0 with offset + B <= 2^64, M < 2^34."""
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must lie in 0..2^64 - 1, got {seed}")
    if not 0 <= int(offset) < 2**64 or int(offset) + shape[0] > 2**64:
        raise ValueError(f"offset must lie in 0..2^64 - 1 with offset + B <= 2^64, got offset {offset} for "
                         f"B = {shape[0]}")
    per_sample = int(np.prod(shape[1:], dtype=np.int64))
    if per_sample > 4 * 2**32:
        raise ValueError(f"at most 2^34 elements per sample (the 32-bit block counter), got {per_sample}")
