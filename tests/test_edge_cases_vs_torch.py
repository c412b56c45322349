"""Inputs PyTorch accepts at the edges of an op's domain (taken from its operator tests), handled the same way.

Each case runs the op forward and backward here and in torch and compares values, gradients and dtypes
(NaN equal to NaN, inf to inf): relu at -inf, pow's gradients at a zero base, clip with bounds that
broadcast x to a larger shape, reductions of a 0-d input over dim 0 / -1, the softmax family over an
empty axis, group_norm of an empty batch, the gradient dtypes of a mixed-dtype concatenation.
"""
import numpy as np
import pytest

import minidiff as md
import minidiff.functional as F
from minidiff import ops

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _same(ours, theirs, what):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0, equal_nan=True, err_msg=what)


def assert_same_as_torch(fn_ours, fn_theirs, *arrays, grad_seed=0):
    """Run y = f(x...) in both, backpropagate one cotangent; compare y and every input gradient."""
    xs = [md.Tensor(a.copy(), requires_grad=True) for a in arrays]
    txs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    y, ty = fn_ours(*xs), fn_theirs(*txs)
    _same(y.numpy(), ty, "forward")
    g = np.random.default_rng(grad_seed).standard_normal(y.shape)
    y.backward(g.astype(y.dtype))
    ty.backward(torch.tensor(g, dtype=ty.dtype))
    for i, (x, tx) in enumerate(zip(xs, txs)):
        _same(x.grad, tx.grad, f"gradient of input {i}")
    return y


def test_relu_of_minus_infinity_is_zero():
    x = np.array([-np.inf, -1.0, -0.0, 0.0, 2.0, np.inf, np.nan])
    xs = md.Tensor(x, requires_grad=True)
    y = F.relu(xs)
    _same(y.numpy(), torch.relu(torch.tensor(x)), "relu forward")
    assert y.numpy()[0] == 0.0


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, 0.5, 3.0])
def test_pow_gradients_at_a_zero_base(exponent):
    a = np.array([0.0, 0.0, 1.5, 2.0])
    b = np.array([exponent, 0.0, exponent, 0.0])
    assert_same_as_torch(lambda x, y: x ** y, lambda x, y: x ** y, a, b)
    assert_same_as_torch(lambda x: ops.pow(x, exponent), lambda x: x ** exponent, a)


def test_clip_with_array_bounds_that_broadcast_x():
    rng = np.random.default_rng(0)
    x, lo, hi = rng.standard_normal(3), rng.standard_normal((2, 3)) - 0.5, rng.standard_normal((2, 3)) + 0.5
    assert_same_as_torch(lambda v: ops.clip(v, lo, hi), lambda v: torch.clamp(v, torch.tensor(lo), torch.tensor(hi)), x)
    assert_same_as_torch(lambda v: ops.clip(v, lo=lo), lambda v: torch.clamp(v, min=torch.tensor(lo)), x)


def test_clip_bounds_that_do_not_broadcast_are_named():
    with pytest.raises(ValueError, match=r"clip \(lo\): shapes \(3,\) and \(2,\) do not broadcast"):
        ops.clip(np.zeros(3), np.zeros(2), None)


@pytest.mark.parametrize("dim", [0, -1, (0,)])
@pytest.mark.parametrize("name", ["sum", "mean", "max", "logsumexp"])
def test_reductions_of_a_0d_input_over_dim(name, dim):
    x = np.array(1.25)
    torch_dim = dim if isinstance(dim, int) else dim[0]
    theirs = {"sum": lambda v: torch.sum(v, dim), "mean": lambda v: torch.mean(v, dim),
              "max": lambda v: torch.amax(v, dim), "logsumexp": lambda v: torch.logsumexp(v, torch_dim)}[name]
    assert_same_as_torch(lambda v: getattr(ops, name)(v, dim), theirs, x)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family_of_a_0d_input(name):
    assert_same_as_torch(lambda v: getattr(ops, name)(v, 0), lambda v: getattr(torch, name)(v, 0), np.array(0.3))


def test_0d_reduction_refuses_dim_1():
    with pytest.raises(ValueError, match="axis 1 is out of range for an array of 0 dimensions"):
        ops.sum(md.Tensor(np.array(1.0)), 1)


@pytest.mark.parametrize("shape, axis", [((2, 0), -1), ((0, 3), 0), ((2, 0, 3), 1)])
def test_softmax_family_over_an_empty_axis(shape, axis):
    x = np.zeros(shape)
    assert_same_as_torch(lambda v: ops.softmax(v, axis), lambda v: torch.softmax(v, axis), x)
    assert_same_as_torch(lambda v: ops.log_softmax(v, axis), lambda v: torch.log_softmax(v, axis), x)
    y = assert_same_as_torch(lambda v: ops.logsumexp(v, axis), lambda v: torch.logsumexp(v, axis), x)
    assert np.all(y.numpy() == -np.inf)


def test_max_over_an_empty_axis_is_refused_by_name():
    with pytest.raises(ValueError, match=r"max: the reduced axes \(1,\) of shape \(2, 0\) must not be empty"):
        ops.max(np.zeros((2, 0)), 1)


def test_group_norm_of_an_empty_batch():
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    y = assert_same_as_torch(lambda v, ww, bb: F.group_norm(v, 2, ww, bb),
                             lambda v, ww, bb: torch.nn.functional.group_norm(v, 2, ww, bb),
                             np.zeros((0, 4, 3, 3)), w, b)
    assert y.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("dtypes", [(np.float16, np.float64), (np.float32, np.float64), (np.float16, np.float32)])
def test_cat_of_mixed_dtypes_gives_each_input_a_gradient_of_its_own_dtype(dtypes):
    a, b = (md.Tensor(np.ones((2, 2), d), requires_grad=True) for d in dtypes)
    ta, tb = (torch.ones((2, 2), dtype=getattr(torch, np.dtype(d).name), requires_grad=True) for d in dtypes)
    y, ty = ops.concatenate([a, b], axis=0), torch.cat([ta, tb], 0)
    assert y.dtype == np.dtype(str(ty.dtype).replace("torch.", ""))
    ops.sum(y).backward()
    ty.sum().backward()
    for ours, theirs in ((a, ta), (b, tb)):
        assert ours.grad.dtype == np.dtype(str(theirs.grad.dtype).replace("torch.", "")) == ours.dtype
        _same(ours.grad.astype(np.float64), theirs.grad.double(), "cat gradient")
