"""Hypothesis strategies for the diffusion and VAE math: schedules of every kind, timesteps, shapes.

Schedules cover every registered constructor (minidiff.diffusion.SCHEDULES) and arbitrary
custom betas, with T from the smallest T the constructor accepts (1 for most; 21 for the
1000/T-scaled linear schedule, which refuses T <= 20) upward. Data arrays come from a seeded
NumPy generator whose seed hypothesis draws, so shapes stay cheap.
"""
from functools import lru_cache

import numpy as np
from hypothesis import strategies as st

from minidiff.diffusion import SCHEDULES, Schedule, make_schedule

KINDS = (*SCHEDULES, "custom")

# Options drawn per registered kind; a kind not listed here is built with its defaults.
OPTIONS = {
    "cosine": lambda draw: {"s": draw(st.sampled_from([0.008, 0.02, 0.1]))},
    "quadratic": lambda draw: {"beta_start": 1e-4, "beta_end": draw(st.floats(1e-3, 0.5))},
    "sigmoid": lambda draw: {"beta_start": 1e-4, "beta_end": draw(st.floats(1e-3, 0.5))},
}


@lru_cache(maxsize=None)
def smallest_T(kind, limit=1000):
    """The smallest T at which the registered schedule `kind` exists with its default options."""
    for T in range(1, limit + 1):
        try:
            make_schedule(kind, T)
            return T
        except ValueError:
            continue
    raise ValueError(f"schedule {kind!r} exists at no T in 1..{limit}")


@st.composite
def schedules(draw, min_T=1, max_T=300, kinds=KINDS):
    """A Schedule of a drawn kind and T in min_T..max_T (raised to the kind's smallest T: 21 for linear)."""
    kind = draw(st.sampled_from(kinds))
    if kind != "custom":
        low = max(min_T, smallest_T(kind))
        T = draw(st.integers(low, max(max_T, low)))
        options = OPTIONS[kind](draw) if kind in OPTIONS else {}
        return make_schedule(kind, T, **options)
    T = draw(st.integers(min_T, max_T))
    seed = draw(st.integers(0, 2**32 - 1))
    log_betas = np.random.default_rng(seed).uniform(np.log(1e-4), np.log(0.5), size=T)
    return Schedule(np.exp(log_betas))


def batch_shapes(max_batch=4, max_dims=3, max_side=4):
    """(B, ...) shapes with 1..max_dims trailing axes."""
    return st.integers(0, max_dims).flatmap(lambda n: st.tuples(
        st.integers(1, max_batch), *[st.integers(1, max_side)] * n))


@st.composite
def timesteps(draw, schedule, batch, include_one=False):
    """t of shape (batch,) in 1..T; with include_one, t = 1 appears (the decoder term)."""
    t = np.array(draw(st.lists(st.integers(1, schedule.T), min_size=batch, max_size=batch)))
    if include_one:
        t[0] = 1
    return t


@st.composite
def problems(draw, max_T=300, max_batch=4, kinds=KINDS):
    """(schedule, t, x0, eps, rng) with x0 in [-1, 1] and eps ~ N(0, I), float64."""
    schedule = draw(schedules(max_T=max_T, kinds=kinds))
    shape = draw(batch_shapes(max_batch=max_batch))
    t = draw(timesteps(schedule, shape[0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return schedule, t, rng.uniform(-1.0, 1.0, shape), rng.standard_normal(shape), rng


def seeds():
    return st.integers(0, 2**32 - 1)
