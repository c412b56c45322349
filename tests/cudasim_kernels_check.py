"""Numba CUDA kernels == reference, run on the CPU by the CUDA simulator.

Not collected by a plain `pytest` run: NUMBA_ENABLE_CUDASIM=1 must be set before numba.cuda is
first imported, so tests/test_kernels_cudasim.py runs this file in a fresh subprocess with it set.
By hand: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim_kernels_check.py
Shapes stay small (the simulator runs every thread as a Python thread), but cross the block size.
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minidiff.kernels as K
from minidiff.kernels import numba_cuda
from tests.kernel_checks import check_all
from tests.strategies_kernels import unscaled_linear, problems

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
                                reason="run by test_kernels_cudasim.py with NUMBA_ENABLE_CUDASIM=1")

SIM_SHAPES = st.one_of(
    st.integers(1, 4).flatmap(lambda ndim: st.tuples(st.integers(1, 3), *[st.integers(1, 5)] * (ndim - 1))),
    st.tuples(st.integers(1, 2), st.integers(numba_cuda.THREADS - 3, numba_cuda.THREADS + 9)))


@settings(max_examples=8)
@given(problems(shapes=SIM_SHAPES))
def test_numba_cuda_matches_reference(p):
    check_all(p, "numba_cuda")


def test_loss_reduction_over_many_blocks_is_deterministic():
    """A grid of several blocks: the two-stage sum matches the reference and repeats bit for bit."""
    rng = np.random.default_rng(0)
    eps_hat, eps = rng.standard_normal((2, 200)), rng.standard_normal((2, 200))
    first, _ = K.eps_loss(eps_hat, eps, impl="numba_cuda")
    again, _ = K.eps_loss(eps_hat, eps, impl="numba_cuda")
    assert numba_cuda.grid(eps_hat.size) > 1 and first.tobytes() == again.tobytes()
    np.testing.assert_allclose(first, np.mean((eps_hat - eps) ** 2), rtol=1e-13)


@settings(max_examples=4)
@given(problems(shapes=SIM_SHAPES), st.integers(0, 2**64 - 1), st.integers(0, 2**40))
def test_numba_cuda_philox_noise_is_the_reference_bit_for_bit(p, seed, offset):
    noise = K.normal(seed, p.x.shape, offset, p.dtype, impl="numba_cuda")
    assert noise.tobytes() == K.normal(seed, p.x.shape, offset, p.dtype, impl="numpy").tobytes()
    p.eps = noise
    x_t = K.q_sample_philox(p.x, p.t, seed, p.schedule, offset, impl="numba_cuda")
    np.testing.assert_array_equal(x_t, K.q_sample(p.x, p.t, noise, p.schedule, impl="numpy"))
    loss, grad = K.eps_loss_philox(p.x, seed, offset, p.weights, impl="numba_cuda")
    ref_loss, ref_grad = K.eps_loss(p.x, noise, p.weights, impl="numpy")
    np.testing.assert_array_equal(grad, ref_grad)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)


def test_auto_stays_on_numba_for_host_arrays():
    assert "numba_cuda" in K.available()
    x, t = np.zeros((1, 2)), np.array([1])
    np.testing.assert_array_equal(K.q_sample(x, t, x, unscaled_linear(5)), x)
