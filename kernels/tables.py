"""Coefficient tables for the kernels: derived from the schedule once, cast, and cached.

Each kernel gathers its per-sample coefficients by t from tables of length T+1 in the data's
dtype (and on the data's device). Deriving and casting them costs ~10-25 us a call, as much as
a whole small kernel, so they are cached per schedule object (weakly: the cache entry dies with
the schedule). Schedules are treated as immutable, as minidiff.diffusion.Schedule is.
"""
import weakref

import numpy as np

from .reference import eps_mean_tables, sigma_table, x0_tables

_cache = weakref.WeakKeyDictionary()


def _derive(schedule, name):
    """The float64 table `name` for t = 0..T (the equations live in reference.py)."""
    if name in ("sigma_fixed_small", "sigma_fixed_large"):
        return sigma_table(schedule, name[len("sigma_"):])
    if name in ("recip_sqrt_alpha", "eps_coef"):
        return eps_mean_tables(schedule)[name == "eps_coef"]
    if name in ("recip_sqrt_alpha_bar", "recipm1_alpha_bar"):
        return x0_tables(schedule)[name == "recipm1_alpha_bar"]
    return np.asarray(getattr(schedule, name), dtype=np.float64)


def get(schedule, names, dtype, xp=np):
    """The tables `names` of `schedule` as contiguous `dtype` arrays of module xp (numpy or cupy)."""
    dtype = np.dtype(dtype)
    try:
        store = _cache.setdefault(schedule, {})
    except TypeError:  # not weak-referenceable: derive every call
        store = {}
    tables = []
    for name in names:
        key = (name, dtype.str, xp.__name__)
        if key not in store:
            store[key] = xp.ascontiguousarray(xp.asarray(_derive(schedule, name), dtype=dtype))
        tables.append(store[key])
    return tables
