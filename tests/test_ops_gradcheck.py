"""Every primitive op: hypothesis draws shapes (incl. broadcasting, size-1 and size-0 axes)
and values; autograd must match float64 central differences, and the forward must match NumPy."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from hypothesis.extra import numpy as hnp

import minidiff as md
from minidiff import ops
from minidiff.testing import gradcheck
from tests.strategies import array_and_axis, arrays, away_from, broadcast_pair, shapes

any_shape = shapes(min_dims=0, max_dims=4, min_side=0)
some = any_shape.flatmap(arrays)


# ------------------------------------------------------------------ binary, broadcasting

@pytest.mark.parametrize("op, ref", [(ops.add, np.add), (ops.sub, np.subtract), (ops.mul, np.multiply)])
@given(pair=broadcast_pair())
def test_binary_broadcasting(op, ref, pair):
    a, b = pair
    np.testing.assert_allclose(op(md.Tensor(a), md.Tensor(b)).numpy(), ref(a, b))
    gradcheck(op, [a, b])


@given(pair=broadcast_pair(), sign=st.sampled_from([-1.0, 1.0]))
def test_div(pair, sign):
    a, b = pair
    b = sign * (0.5 + np.abs(b))  # keep the denominator away from 0
    gradcheck(ops.div, [a, b])


@given(x=some)
def test_neg(x):
    np.testing.assert_array_equal((-md.Tensor(x)).numpy(), -x)
    gradcheck(ops.neg, [x])


@given(x=any_shape.flatmap(lambda s: arrays(s, 0.2, 3.0)), p=st.floats(-2.5, 2.5))
def test_pow_constant_exponent(x, p):
    gradcheck(lambda a: a ** p, [x])


@given(pair=broadcast_pair(lo=0.2, hi=2.0))
def test_pow_tensor_exponent(pair):
    a, b = pair
    gradcheck(ops.pow, [a, b])


# ------------------------------------------------------------------ unary

positive = any_shape.flatmap(lambda s: arrays(s, 0.1, 4.0))
kinked = any_shape.flatmap(lambda s: away_from(arrays(s), [0.0]))


@pytest.mark.parametrize("op, ref, strategy", [
    (ops.exp, np.exp, some), (ops.log, np.log, positive), (ops.sqrt, np.sqrt, positive),
    (ops.abs, np.abs, kinked), (ops.tanh, np.tanh, some), (ops.relu, lambda a: np.maximum(a, 0), kinked),
    (ops.sigmoid, lambda a: 1 / (1 + np.exp(-a)), some), (ops.silu, lambda a: a / (1 + np.exp(-a)), some),
])
@given(data=st.data())
def test_unary(op, ref, strategy, data):
    x = data.draw(strategy)
    np.testing.assert_allclose(op(md.Tensor(x)).numpy(), ref(x), rtol=1e-12, atol=1e-15)
    gradcheck(op, [x])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(x=some)
def test_gelu(approximate, x):
    from scipy.special import erf
    y = ops.gelu(md.Tensor(x), approximate=approximate).numpy()
    if approximate == "none":
        np.testing.assert_allclose(y, 0.5 * x * (1 + erf(x / np.sqrt(2))), rtol=1e-12, atol=1e-15)
    gradcheck(lambda a: ops.gelu(a, approximate=approximate), [x])


@given(x=any_shape.flatmap(lambda s: away_from(arrays(s), [-0.5, 0.7])))
def test_clip(x):
    np.testing.assert_array_equal(ops.clip(md.Tensor(x), -0.5, 0.7).numpy(), np.clip(x, -0.5, 0.7))
    gradcheck(lambda a: ops.clip(a, -0.5, 0.7), [x])
    gradcheck(lambda a: ops.clip(a, lo=-0.5), [x])


@given(pair=broadcast_pair(), seed=st.integers(0, 2**16))
def test_where(pair, seed):
    a, b = pair
    cond = np.random.default_rng(seed).random(np.broadcast_shapes(a.shape, b.shape)) > 0.5
    np.testing.assert_array_equal(ops.where(cond, md.Tensor(a), md.Tensor(b)).numpy(), np.where(cond, a, b))
    gradcheck(lambda x, y: ops.where(cond, x, y), [a, b])


# ------------------------------------------------------------------ matmul

@given(shapes=hnp.mutually_broadcastable_shapes(signature="(m?,n),(n,p?)->(m?,p?)", max_dims=4, max_side=3),
       data=st.data())
def test_matmul(shapes, data):
    sa, sb = shapes.input_shapes
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    np.testing.assert_allclose(ops.matmul(md.Tensor(a), md.Tensor(b)).numpy(), a @ b, rtol=1e-12, atol=1e-14)
    gradcheck(ops.matmul, [a, b])


# ------------------------------------------------------------------ reductions

@pytest.mark.parametrize("op, ref", [(ops.sum, np.sum), (ops.mean, np.mean)])
@given(xa=array_and_axis(), keepdims=st.booleans())
def test_sum_mean(op, ref, xa, keepdims):
    x, axis = xa
    np.testing.assert_allclose(op(md.Tensor(x), axis, keepdims).numpy(), ref(x, axis=axis, keepdims=keepdims),
                               rtol=1e-12, atol=1e-14)
    gradcheck(lambda a: op(a, axis, keepdims), [x])


@given(x=shapes(min_dims=1, min_side=0).flatmap(arrays))
def test_sum_over_size_zero_axes(x):
    gradcheck(lambda a: ops.sum(a, axis=0), [x])


@given(xa=array_and_axis(), keepdims=st.booleans(), ddof=st.sampled_from([0, 1]))
def test_var(xa, keepdims, ddof):
    x, axis = xa
    n = x.size if axis is None else np.prod([x.shape[a] for a in np.atleast_1d(axis)])
    assume(n - ddof > 0)
    np.testing.assert_allclose(ops.var(md.Tensor(x), axis, keepdims, ddof).numpy(),
                               np.var(x, axis=axis, keepdims=keepdims, ddof=ddof), rtol=1e-10, atol=1e-13)
    gradcheck(lambda a: ops.var(a, axis, keepdims, ddof), [x])


@given(data=st.data(), keepdims=st.booleans())
def test_max(data, keepdims):
    shape = data.draw(shapes(min_dims=1))
    # distinct values at least 0.1 apart: no ties, and no kink within the finite-difference step
    x = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-200, 200), unique=True)) / 10.0
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    np.testing.assert_array_equal(ops.max(md.Tensor(x), axis, keepdims).numpy(),
                                  np.max(x, axis=axis, keepdims=keepdims))
    gradcheck(lambda a: ops.max(a, axis, keepdims), [x])


def test_max_ties_share_the_gradient():
    x = md.Tensor(np.array([1.0, 3.0, 3.0, 3.0]), requires_grad=True)
    ops.max(x).backward()
    np.testing.assert_allclose(x.grad, [0, 1 / 3, 1 / 3, 1 / 3])


# ------------------------------------------------------------------ softmax family

@pytest.mark.parametrize("op", [ops.softmax, ops.log_softmax])
@given(xa=array_and_axis(allow_none=False, allow_tuple=False), shift=st.floats(-500, 500))
def test_softmax_family(op, xa, shift):
    x, axis = xa
    y = op(md.Tensor(x + shift), axis).numpy()  # shift invariance: must not overflow
    ref = x - x.max(axis=axis, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(y, np.exp(ref) if op is ops.softmax else ref, rtol=1e-9, atol=1e-12)
    gradcheck(lambda a: op(a, axis), [x])


@given(xa=array_and_axis(allow_none=True), keepdims=st.booleans(), shift=st.floats(-700, 700))
def test_logsumexp(xa, keepdims, shift):
    from scipy.special import logsumexp
    x, axis = xa
    y = ops.logsumexp(md.Tensor(x + shift), axis, keepdims).numpy()
    np.testing.assert_allclose(y, logsumexp(x, axis=axis, keepdims=keepdims) + shift, rtol=1e-12)
    gradcheck(lambda a: ops.logsumexp(a, axis, keepdims), [x])


@given(xa=array_and_axis(allow_none=False, allow_tuple=False))
def test_softmax_rows_sum_to_one(xa):
    x, axis = xa
    np.testing.assert_allclose(ops.softmax(md.Tensor(x), axis).numpy().sum(axis=axis), 1.0, rtol=1e-12)


# ------------------------------------------------------------------ shape ops

@given(x=shapes(min_dims=1, min_side=0).flatmap(arrays), data=st.data())
def test_reshape(x, data):
    shape = data.draw(st.permutations(x.shape)).copy()
    shape = tuple(shape)[::-1] + (1,)
    np.testing.assert_array_equal(ops.reshape(md.Tensor(x), shape).numpy(), x.reshape(shape))
    gradcheck(lambda a: ops.reshape(a, shape), [x])


@given(x=shapes(min_dims=1).flatmap(arrays), data=st.data())
def test_transpose(x, data):
    axes = tuple(data.draw(st.permutations(range(x.ndim))))
    np.testing.assert_array_equal(ops.transpose(md.Tensor(x), axes).numpy(), x.transpose(axes))
    np.testing.assert_array_equal(md.Tensor(x).T.numpy(), x.T)
    gradcheck(lambda a: ops.transpose(a, axes), [x])
    gradcheck(lambda a: ops.transpose(a), [x])


@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=1, max_dims=4, max_side=3), data=st.data())
def test_broadcast_to(shapes, data):
    x = data.draw(arrays(shapes.input_shapes[0]))
    target = shapes.result_shape
    np.testing.assert_array_equal(ops.broadcast_to(md.Tensor(x), target).numpy(), np.broadcast_to(x, target))
    gradcheck(lambda a: ops.broadcast_to(a, target), [x])


@given(base=shapes(min_dims=1, max_dims=3), n=st.integers(1, 3), data=st.data())
def test_concatenate_stack(base, n, data):
    axis = data.draw(st.integers(0, len(base) - 1))
    xs = []
    for _ in range(n):
        s = list(base)
        s[axis] = data.draw(st.integers(0, 3))
        xs.append(data.draw(arrays(tuple(s))))
    np.testing.assert_array_equal(ops.concatenate([md.Tensor(a) for a in xs], axis).numpy(), np.concatenate(xs, axis))
    gradcheck(lambda *ts: ops.concatenate(ts, axis), xs)
    same = [data.draw(arrays(base)) for _ in range(n)]
    new_axis = data.draw(st.integers(-len(base) - 1, len(base)))
    np.testing.assert_array_equal(ops.stack([md.Tensor(a) for a in same], new_axis).numpy(), np.stack(same, new_axis))
    gradcheck(lambda *ts: ops.stack(ts, new_axis), same)


@given(x=shapes(min_dims=1).flatmap(arrays), data=st.data())
def test_split(x, data):
    axis = data.draw(st.integers(0, x.ndim - 1))
    n = x.shape[axis]
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    sizes = np.diff([0] + cuts + [n]).tolist()
    parts = ops.split(md.Tensor(x), sizes, axis)
    for got, want in zip(parts, np.split(x, np.cumsum(sizes)[:-1], axis)):
        np.testing.assert_array_equal(got.numpy(), want)
    weights = [np.random.default_rng(i).standard_normal(p.shape) for i, p in enumerate(parts)]
    gradcheck(lambda a: sum((p * w).sum() for p, w in zip(ops.split(a, sizes, axis), weights)), [x])


@st.composite
def basic_index(draw, shape):
    index = []
    for n in shape:
        kind = draw(st.sampled_from(["slice", "int", "all"]))
        if kind == "int" and n > 0:
            index.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            index.append(slice(draw(st.integers(-n - 1, n + 1)), draw(st.integers(-n - 1, n + 1)),
                               draw(st.sampled_from([1, 2, -1, -2]))))
        else:
            index.append(slice(None))
    return tuple(index)


@given(x=shapes(min_dims=1).flatmap(arrays), data=st.data())
def test_getitem_basic_slicing(x, data):
    index = data.draw(basic_index(x.shape))
    np.testing.assert_array_equal(md.Tensor(x)[index].numpy(), x[index])
    gradcheck(lambda a: a[index], [x])


@given(x=shapes(min_dims=1, max_dims=3).flatmap(arrays), data=st.data())
def test_getitem_integer_arrays_with_repeats(x, data):
    n = x.shape[0]
    idx = np.array(data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=6)))
    np.testing.assert_array_equal(md.Tensor(x)[idx].numpy(), x[idx])
    gradcheck(lambda a: a[idx], [x])  # repeated indices must accumulate


@given(x=shapes(min_dims=1, max_dims=3, min_side=0).flatmap(arrays), data=st.data(), value=st.floats(-1, 1))
def test_pad(x, data, value):
    width = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(x.ndim))
    np.testing.assert_array_equal(ops.pad(md.Tensor(x), width, value).numpy(), np.pad(x, width, constant_values=value))
    gradcheck(lambda a: ops.pad(a, width, value), [x])


@given(x=some)
def test_astype_round_trip_gradient(x):
    # linear, so a wide step is exact up to float32 rounding
    gradcheck(lambda a: ops.astype(ops.astype(a, np.float32) * 2.0, np.float64), [x], h=1e-2, atol=1e-4, rtol=1e-4)
