"""Hypothesis strategies for the fused-kernel tests: schedules, shapes, timesteps, whole problems.

Data arrays are drawn from a seeded NumPy generator (hypothesis draws the seed), so large
shapes that cross the Numba chunk boundary stay cheap to generate.
"""
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from minidiff.kernels.numba_cpu import CHUNK

from minidiff.diffusion import Schedule

DTYPES = (np.float32, np.float64)


def unscaled_linear(T):
    """beta_t evenly from 1e-4 to 0.02 over any T (no 1000/T scaling), for tiny fixed schedules."""
    return Schedule(np.linspace(1e-4, 0.02, T))


def tolerance(dtype):
    return 2e-5 if dtype == np.float32 else 1e-12


@st.composite
def schedules(draw, max_T=1000):
    """A linear or cosine Schedule with T in 1..max_T (T = 1 and T = max_T included).

    Schedule.linear scales its end points by 1000/T and refuses T <= 20 (a beta would reach 1),
    so linear schedules draw T from 21..max_T; cosine covers the small T, T = 1 included.
    """
    T = draw(st.one_of(st.just(1), st.just(max_T), st.integers(1, max_T)))
    kind = draw(st.sampled_from(["linear", "cosine"]))
    return Schedule.linear(max(T, 21)) if kind == "linear" else Schedule.cosine(T)


def small_shapes(max_batch=4, max_side=7):
    """1-D to 4-D shapes (B, ...) with B >= 1, sides that are rarely multiples of any block size."""
    return st.integers(1, 4).flatmap(lambda ndim: st.tuples(
        st.integers(1, max_batch), *[st.integers(1, max_side)] * (ndim - 1)))


def chunk_edge_shapes():
    """(B, M) shapes with M around the Numba chunk size, so work items end mid-sample."""
    return st.tuples(st.integers(1, 2), st.sampled_from([CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5]))


@dataclass
class Problem:
    """One random instance of the three ops' inputs."""
    schedule: object
    t: np.ndarray
    x: np.ndarray       # x0 for q_sample, x_t for reverse_step, eps_hat for eps_loss
    eps: np.ndarray
    z: np.ndarray
    weights: object     # None or (B,) float64
    variance: str
    clip_x0: bool

    @property
    def dtype(self):
        return self.x.dtype


@st.composite
def problems(draw, shapes=None, max_T=1000):
    """A schedule, t (1 and T included), float32/float64 data, optional weights, variance and clipping."""
    schedule = draw(schedules(max_T))
    shape = draw(shapes if shapes is not None else st.one_of(small_shapes(), chunk_edge_shapes()))
    T = len(schedule.alpha_bars) - 1
    t = np.array(draw(st.lists(st.one_of(st.just(1), st.just(T), st.integers(1, T)),
                               min_size=shape[0], max_size=shape[0])), dtype=np.int64)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-1.5, 1.5, shape).astype(dtype)
    eps, z = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    weights = draw(st.one_of(st.none(), st.just(rng.uniform(0.0, 3.0, shape[0]))))
    return Problem(schedule, t, x, eps, z, weights, draw(st.sampled_from(["fixed_small", "fixed_large"])),
                   draw(st.booleans()))
