"""minidiff.diffusion.fused_eps_loss: the fused loss as an autograd Function.

Its value and gradients equal the unfused composition mean(w (eps_hat - eps)^2) built from
primitive ops, and pass float64 central-difference gradchecks, for every CPU implementation.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from minidiff import Tensor, kernels, ops
from minidiff.diffusion.elbo import EpsLoss, fused_eps_loss as eps_loss
from minidiff.testing import gradcheck

IMPLS = kernels.serving("numpy")  # every registered implementation that takes NumPy arrays here


@st.composite
def loss_inputs(draw, max_elements=24):
    """eps_hat, eps (float64, 1-D..4-D, B >= 1) and weights (None or (B,) positive)."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    eps_hat, eps = rng.standard_normal(shape), rng.standard_normal(shape)
    weights = draw(st.one_of(st.none(), st.just(rng.uniform(0.1, 3.0, shape[0]))))
    return eps_hat, eps, weights


def _unfused(eps_hat, eps, weights):
    d = eps_hat - eps
    sq = d * d
    if weights is not None:
        sq = sq * weights.reshape((-1,) + (1,) * (d.ndim - 1))
    return ops.mean(sq)


@given(loss_inputs(), st.sampled_from(IMPLS))
def test_gradcheck(inputs, impl):
    eps_hat, eps, weights = inputs
    gradcheck(lambda a, b: eps_loss(a, b, weights, impl=impl), [eps_hat, eps])


@given(loss_inputs(), st.sampled_from(IMPLS), st.sampled_from([np.float32, np.float64]))
def test_matches_the_unfused_composition(inputs, impl, dtype):
    eps_hat, eps, weights = (None if a is None else a.astype(dtype) for a in inputs)
    fused_in, plain_in = Tensor(eps_hat, requires_grad=True), Tensor(eps_hat, requires_grad=True)
    fused, plain = eps_loss(fused_in, eps, weights, impl=impl), _unfused(plain_in, eps, weights)
    fused.backward()
    plain.backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert fused.dtype == plain.dtype == dtype and fused.shape == ()
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=tol)
    np.testing.assert_allclose(fused_in.grad, plain_in.grad, rtol=tol, atol=tol * np.abs(plain_in.grad).max())


def test_gradient_flows_to_eps_and_weights_tensor_is_a_constant():
    rng = np.random.default_rng(0)
    eps_hat, eps = Tensor(rng.standard_normal((2, 3)), requires_grad=True), Tensor(rng.standard_normal((2, 3)),
                                                                                   requires_grad=True)
    loss = eps_loss(eps_hat, eps, Tensor(np.array([1.0, 2.0])))
    assert isinstance(loss._ctx, EpsLoss)  # one graph node, not four
    (loss * 3.0).backward()
    np.testing.assert_allclose(eps.grad, -eps_hat.grad)
    expected = 3.0 * (2.0 / 6) * np.array([[1.0], [2.0]]) * (eps_hat.data - eps.data)
    np.testing.assert_allclose(eps_hat.grad, expected, rtol=1e-12)


def test_arrays_in_give_an_array_out_and_bad_input_is_named():
    out = eps_loss(np.ones((2, 2)), np.zeros((2, 2)))
    assert not isinstance(out, Tensor) and out == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        eps_loss(Tensor(np.ones((2, 2)), requires_grad=True), np.zeros((2, 3)))
