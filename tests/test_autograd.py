"""The backward engine: accumulation, no_grad, detach, dtypes, deep graphs and clear errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidiff as md
from minidiff import ops
from tests.strategies import arrays, shapes


@given(x=shapes(min_dims=1).flatmap(arrays))
def test_gradient_is_the_sum_over_every_use_of_a_tensor(x):
    t = md.Tensor(x, requires_grad=True)
    (t * t + t).sum().backward()  # d/dx (x² + x) = 2x + 1
    np.testing.assert_allclose(t.grad, 2 * x + 1)


@given(x=shapes(min_dims=1).flatmap(arrays), k=st.integers(1, 3))
def test_repeated_backward_accumulates_into_grad(x, k):
    t = md.Tensor(x, requires_grad=True)
    for _ in range(k):
        (t * 3.0).sum().backward()
    np.testing.assert_allclose(t.grad, np.full(x.shape, 3.0 * k))


def test_diamond_graph():
    x = md.Tensor(np.array([0.3, -1.2]), requires_grad=True)
    a = x.exp()
    b = a * x
    c = a + b  # a reached by two paths
    c.sum().backward()
    np.testing.assert_allclose(x.grad, np.exp(x.data) * (2 + x.data))


def test_no_grad_records_nothing_and_detach_cuts():
    x = md.Tensor(np.ones(3), requires_grad=True)
    with md.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    z = (x.detach() * x).sum()
    z.backward()
    np.testing.assert_allclose(x.grad, np.ones(3))  # only the non-detached factor


def test_enable_grad_records_inside_no_grad_and_each_block_restores_the_mode():
    x = md.Tensor(np.arange(3.0), requires_grad=True)
    assert md.is_grad_enabled()
    with md.no_grad():
        assert not md.is_grad_enabled()
        with md.enable_grad():
            assert md.is_grad_enabled()
            y = x * 2
        assert not md.is_grad_enabled()
        z = x * 2
    assert md.is_grad_enabled()
    assert y.requires_grad and not z.requires_grad
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 2.0))


def test_grad_mode_comes_back_when_a_block_raises():
    with pytest.raises(KeyError), md.no_grad():
        raise KeyError("inside no_grad")
    assert md.is_grad_enabled()
    with md.no_grad():
        with pytest.raises(KeyError), md.enable_grad():
            raise KeyError("inside enable_grad")
        assert not md.is_grad_enabled()
    assert md.is_grad_enabled()


def test_grad_flows_only_to_inputs_that_ask():
    a = md.Tensor(np.ones(2), requires_grad=True)
    b = md.Tensor(np.ones(2))
    (a * b).sum().backward()
    assert b.grad is None and a.grad is not None


def test_deep_chain_has_no_recursion_limit():
    x = md.Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_through_ops_and_gradients(dtype):
    x = md.Tensor(np.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3), requires_grad=True)
    y = (ops.silu(x) * 2.0 + 1).log_softmax(axis=1).sum()
    assert y.dtype == dtype
    y.backward()
    assert x.grad.dtype == dtype


def test_python_numbers_default_to_float32_and_can_change():
    assert md.Tensor([1.0, 2.0]).dtype == np.float32
    assert md.Tensor([1, 2]).dtype.kind == "i"
    md.set_default_dtype(np.float64)
    try:
        assert md.Tensor([1.0]).dtype == np.float64
    finally:
        md.set_default_dtype(np.float32)


def test_numpy_returns_host_array():
    t = md.Tensor(np.arange(3.0))
    assert isinstance(t.numpy(), np.ndarray)


# ------------------------------------------------------------------ errors

def test_backward_on_non_scalar_needs_upstream_gradient():
    x = md.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"non-scalar.*\(2, 3\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        (x * 2).backward(np.ones(3))


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="int"):
        md.Tensor(np.arange(3), requires_grad=True)


@pytest.mark.parametrize("op, name", [(ops.add, "add"), (ops.mul, "mul"), (ops.sub, "sub"), (ops.div, "div")])
def test_shape_mismatch_names_op_and_both_shapes(op, name):
    with pytest.raises(ValueError, match=rf"{name}.*\(2, 3\).*\(4,\)"):
        op(md.Tensor(np.ones((2, 3))), md.Tensor(np.ones(4)))


def test_matmul_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        md.Tensor(np.ones((2, 3))) @ md.Tensor(np.ones((4, 5)))


def test_reshape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4,\)"):
        md.Tensor(np.ones((2, 3))).reshape(4)


def test_mixing_numpy_and_cupy_tensors_is_refused():
    class FakeCupyArray(np.ndarray):  # stands in for cupy.ndarray: only its module name matters
        pass
    FakeCupyArray.__module__ = "cupy._core.core"
    gpu = md.Tensor(np.ones(3))
    gpu.data = np.ones(3).view(FakeCupyArray)
    with pytest.raises(TypeError, match=r"different backends.*cupy.*numpy"):
        ops.add(gpu, md.Tensor(np.ones(3)))


def test_backward_without_requires_grad_is_refused():
    with pytest.raises(RuntimeError, match="does not require grad"):
        md.Tensor(np.ones(1)).sum().backward()


def test_ops_on_plain_arrays_return_plain_arrays():
    y = ops.log_softmax(np.array([[1.0, 2.0]]), axis=1)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64


@pytest.mark.gpu
def test_cupy_tensors_match_numpy():
    import cupy
    x = np.random.default_rng(0).standard_normal((4, 5))
    g = md.Tensor(cupy.asarray(x), requires_grad=True)
    c = md.Tensor(x, requires_grad=True)
    for t in (g, c):
        (ops.gelu(t) @ t.T).log_softmax(axis=1).sum().backward()
    np.testing.assert_allclose(cupy.asnumpy(g.grad), c.grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="different backends"):
        g + c


def test_the_graph_keeps_no_intermediate_tensor_alive():
    """An intermediate Tensor is freed once the caller drops it (the graph keeps the Function that made it,
    not the Tensor), and backward through it still gives d/dx Σ 3(x + 1 + 2)² = 6(x + 3)."""
    import gc
    import weakref
    x = md.Tensor(np.arange(3.0), requires_grad=True)
    h = x + 1.0
    alive = weakref.ref(h)
    y = ((h + 2.0) * (h + 2.0) * 3.0).sum()
    del h
    gc.collect()
    assert alive() is None
    y.backward()
    np.testing.assert_allclose(x.grad, 6 * (np.arange(3.0) + 3))
