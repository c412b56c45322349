"""Hypothesis strategies for the diffusion and VAE math: schedules of every kind, timesteps, shapes.

Schedules cover the four constructors and arbitrary custom betas, with T from 1 (custom,
cosine) or 21 (the 1000/T-scaled linear schedule refuses T <= 20) upward. Data arrays come
from a seeded NumPy generator whose seed hypothesis draws, so shapes stay cheap.
"""
import numpy as np
from hypothesis import strategies as st

from minidiff.diffusion import Schedule

KINDS = ("linear", "cosine", "quadratic", "sigmoid", "custom")


@st.composite
def schedules(draw, min_T=1, max_T=300, kinds=KINDS):
    """A Schedule of a drawn kind and T in min_T..max_T (the linear kind needs T >= 21)."""
    kind = draw(st.sampled_from(kinds))
    if kind == "linear":
        return Schedule.linear(draw(st.integers(max(min_T, 21), max(max_T, 21))))
    T = draw(st.integers(min_T, max_T))
    if kind == "cosine":
        return Schedule.cosine(T, s=draw(st.sampled_from([0.008, 0.02, 0.1])))
    if kind == "quadratic":
        return Schedule.quadratic(T, beta_start=1e-4, beta_end=draw(st.floats(1e-3, 0.5)))
    if kind == "sigmoid":
        return Schedule.sigmoid(T, beta_start=1e-4, beta_end=draw(st.floats(1e-3, 0.5)))
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
