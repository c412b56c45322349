"""Argument checks at the public boundaries: fail early, name the argument, what was expected, what was given.

One small set, used by every module above the kernels (the kernels package keeps its own
kernels/checks.py, since it imports nothing from minidiff). Each helper raises TypeError for a
value of the wrong kind and ValueError for a value of the right kind outside its range, with a
message of the form

    "<where>: <name> must <expectation>, got <what was given>"

and returns the checked value (converted to a Python int / float where that is the contract).
Shapes are compared exactly where the math defines them, never left to broadcasting.
See docs/reliability.md.
"""
import math
import numbers
import os

import numpy as np

from minidiff.backend import xp_of


def _prefix(where):
    return f"{where}: " if where else ""


def _shape(x):
    return tuple(int(n) for n in x.shape)


def _describe(value):
    """A short account of a value for an error message: its type, and the value if it is small."""
    if isinstance(value, (bool, numbers.Number, str)) or value is None:
        return f"{value!r} ({type(value).__name__})"
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {type(value).__name__} of shape {_shape(value)} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- scalars

def integer(name, value, minimum=None, maximum=None, where=""):
    """value as a Python int: an int or NumPy integer (not bool, not a float such as 2.5 or inf), in range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{_prefix(where)}{name} must be an integer, got {_describe(value)}")
    value = int(value)
    _in_range(name, value, minimum, maximum, where)
    return value


def real(name, value, minimum=None, maximum=None, finite=True, above=None, below=None, where=""):
    """value as a Python float: a real number (not bool, not complex), finite unless finite=False.

    minimum/maximum bound it inclusively, above/below exclusively.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{_prefix(where)}{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{_prefix(where)}{name} must be a finite number, got {value}")
    _in_range(name, value, minimum, maximum, where)
    if above is not None and not value > above:
        raise ValueError(f"{_prefix(where)}{name} must be > {above:g}, got {value}")
    if below is not None and not value < below:
        raise ValueError(f"{_prefix(where)}{name} must be < {below:g}, got {value}")
    return value


def _in_range(name, value, minimum, maximum, where):
    if minimum is not None and value < minimum:
        raise ValueError(f"{_prefix(where)}{name} must be >= {minimum:g}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{_prefix(where)}{name} must be <= {maximum:g}, got {value}")


def one_of(name, value, choices, where=""):
    """value if it is one of `choices` (compared with ==, strings exactly)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{_prefix(where)}{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def boolean(name, value, where=""):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{_prefix(where)}{name} must be True or False, got {_describe(value)}")
    return bool(value)


def instance(name, value, types, expected, where=""):
    """value if it is an instance of `types` (a class or tuple); `expected` says what in words."""
    if not isinstance(value, types):
        raise TypeError(f"{_prefix(where)}{name} must be {expected}, got {_describe(value)}")
    return value


def function(name, value, where=""):
    """value if it can be called (a model, a decoder)."""
    if not callable(value):
        raise TypeError(f"{_prefix(where)}{name} must be callable, got {_describe(value)}")
    return value


def generator(name, value, where=""):
    """value if it draws like a NumPy/CuPy Generator (standard_normal, random, integers, permutation)."""
    if not all(callable(getattr(value, m, None)) for m in ("standard_normal", "random", "integers", "permutation")):
        raise TypeError(f"{_prefix(where)}{name} must be a random Generator (numpy.random.default_rng or "
                        f"minidiff.default_rng), got {_describe(value)}")
    return value


def path(name, value, where=""):
    """value if it is a file system path (str or os.PathLike); an int would be taken as a file descriptor."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{_prefix(where)}{name} must be a path (str or os.PathLike), got {_describe(value)}")
    return value


def dtype(name, value, kinds="f", where=""):
    """np.dtype(value) if it names a dtype of one of `kinds` (NumPy kind letters), else a TypeError."""
    try:
        result = None if value is None else np.dtype(value)
    except TypeError:
        result = None
    if result is None or result.kind not in kinds or isinstance(value, (bool, int, float)):
        raise TypeError(f"{_prefix(where)}{name} must be a NumPy dtype of kind {kinds!r}, got {_describe(value)}")
    return result


# ---------------------------------------------------------------- arrays and Tensors

def array_like(name, x, where=""):
    """x if it is an array or Tensor (has shape and dtype); a TypeError naming what it is otherwise."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{_prefix(where)}{name} must be an array or Tensor, got {_describe(x)}")
    return x


def floating(name, x, where=""):
    """x if it is a floating-point array or Tensor."""
    array_like(name, x, where)
    if np.dtype(x.dtype).kind != "f":
        raise TypeError(f"{_prefix(where)}{name} must hold floating-point numbers, got dtype {x.dtype}")
    return x


def shape(name, x, expected, where="", because=""):
    """x if its shape equals `expected` (a tuple; None entries match any size)."""
    array_like(name, x, where)
    got = _shape(x)
    if len(got) != len(expected) or any(e is not None and int(e) != g for e, g in zip(expected, got)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "")
        raise ValueError(f"{_prefix(where)}{name} must have shape {want}){because}, got shape {got}")
    return x


def same_shape(where="", **named):
    """The named arrays/Tensors all have the shape of the first one (no broadcasting)."""
    items = list(named.items())
    first, ref = items[0]
    array_like(first, ref, where)
    for name, x in items[1:]:
        shape(name, x, _shape(ref), where, because=f" (the shape of {first})")


def batch(where="", **named):
    """The named arrays/Tensors share the leading batch size B of the first one; returns B."""
    items = list(named.items())
    first, ref = items[0]
    array_like(first, ref, where)
    if len(ref.shape) < 1:
        raise ValueError(f"{_prefix(where)}{first} must have a leading batch axis (B, ...), got a 0-d array")
    size = int(ref.shape[0])
    for name, x in items[1:]:
        array_like(name, x, where)
        if len(x.shape) < 1 or int(x.shape[0]) != size:
            raise ValueError(f"{_prefix(where)}{name} must have batch size B = {size} (that of {first}), "
                             f"got shape {_shape(x)}")
    return size


def per_sample(name, x, like, where=""):
    """x if it is (B, 1, ..., 1) or (B, ...) like `like`: a per-sample coefficient, or a full array."""
    array_like(name, x, where)
    B, ndim = int(like.shape[0]), len(like.shape)
    if _shape(x) not in ((B,) + (1,) * (ndim - 1), _shape(like)):
        raise ValueError(f"{_prefix(where)}{name} must have shape {(B,) + (1,) * (ndim - 1)} or {_shape(like)} "
                         f"(per sample, or like the data), got shape {_shape(x)}")
    return x


def finite(name, x, where=""):
    """x if every element of the array or Tensor is finite (NaN or Inf would poison the result)."""
    data = x.data if hasattr(x, "requires_grad") else x
    if not bool(xp_of(data).isfinite(data).all()):
        raise ValueError(f"{_prefix(where)}{name} must be finite, got NaN or Inf values")
    return x


def timesteps(t, B, T, xp=np, where=""):
    """t as an integer array of shape (B,) in 1..T on module xp, or a TypeError/ValueError saying why."""
    t = xp.asarray(getattr(t, "data", t) if hasattr(t, "requires_grad") else t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{_prefix(where)}t must hold integer timesteps 1..T, got dtype {t.dtype}")
    if t.shape != (B,):
        raise ValueError(f"{_prefix(where)}t must have shape (B,) = ({B},) to match the batch, got shape {t.shape}")
    if t.size and (int(t.min()) < 1 or int(t.max()) > T):
        raise ValueError(f"{_prefix(where)}t must lie in 1..T = 1..{T}, got values in {int(t.min())}..{int(t.max())}")
    return t
