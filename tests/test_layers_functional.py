"""linear, softmax, dropout, interpolate and embedding: gradchecks, PyTorch comparisons and laws."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidiff as md
import minidiff.functional as F
from minidiff.testing import gradcheck
from tests.layers_oracle import assert_matches_torch
from tests.strategies import arrays, shapes


@st.composite
def linear_problems(draw):
    lead = draw(shapes(min_dims=1, max_dims=3, max_side=3))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (draw(arrays(lead + (n_in,))), draw(arrays((n_out, n_in))),
            draw(st.none() | arrays((n_out,))))


@st.composite
def resize_problems(draw):
    """x (B, C, H, W) and either an integer scale factor, a non-integer one, or an output size."""
    x = draw(arrays((draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)),
                     draw(st.integers(1, 4)))))
    kind = draw(st.sampled_from(["int", "float", "size"]))
    if kind == "int":
        return x, dict(scale_factor=draw(st.integers(1, 3)))
    if kind == "float":
        return x, dict(scale_factor=draw(st.sampled_from([1.5, 2.5, 0.5, (2.0, 1.5)])))
    return x, dict(size=(draw(st.integers(1, 7)), draw(st.integers(1, 7))))


def _resize_ok(x, kw):
    sf = kw.get("scale_factor")
    if sf is None:
        return True
    sf = (sf, sf) if not isinstance(sf, tuple) else sf
    return all(int(np.floor(n * f)) >= 1 for n, f in zip(x.shape[2:], sf))


@given(linear_problems())
def test_linear_gradcheck(problem):
    x, w, b = problem
    gradcheck((lambda x, w: F.linear(x, w)) if b is None else F.linear, [x, w] + ([] if b is None else [b]))


@given(shapes(min_dims=1, max_dims=3).flatmap(arrays), st.integers(-1, 0))
def test_softmax_rows_sum_to_one_and_gradcheck(x, dim):
    np.testing.assert_allclose(F.softmax(x, dim).sum(axis=dim), 1.0, rtol=1e-12)
    gradcheck(lambda x: F.softmax(x, dim), [x])


@given(resize_problems())
def test_interpolate_gradcheck(problem):
    x, kw = problem
    if _resize_ok(x, kw):
        gradcheck(lambda x: F.interpolate(x, **kw), [x])


@given(arrays((2, 3, 3, 2)), st.integers(1, 3))
def test_integer_upsampling_repeats_pixels(x, f):
    np.testing.assert_array_equal(F.interpolate(x, scale_factor=f), x.repeat(f, axis=2).repeat(f, axis=3))


@given(st.integers(1, 5), st.integers(1, 4), st.data())
def test_embedding_picks_rows_and_accumulates_repeats(n, d, data):
    w = data.draw(arrays((n, d)))
    idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6)))
    np.testing.assert_array_equal(F.embedding(idx, w), w[idx])
    gradcheck(lambda w: F.embedding(idx, w), [w])
    W = md.Tensor(w, requires_grad=True)
    F.embedding(idx, W).sum().backward()
    np.testing.assert_array_equal(W.grad[:, 0], np.bincount(idx, minlength=n))


@given(st.floats(0.0, 0.9), st.integers(0, 10_000))
def test_dropout_keeps_expectation_and_masks_gradient(p, seed):
    x = np.ones((4000,))
    X = md.Tensor(x, requires_grad=True)
    y = F.dropout(X, p, training=True, rng=np.random.default_rng(seed))
    kept = y.numpy() != 0
    np.testing.assert_allclose(y.numpy()[kept], 1.0 / (1.0 - p))
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size) + 1e-9   # 5 standard errors
    y.sum().backward()
    np.testing.assert_array_equal(X.grad, y.numpy())
    assert F.dropout(X, p, training=False) is X


@given(shapes(min_dims=1, max_dims=3).flatmap(arrays), st.floats(0.0, 0.9), st.integers(0, 99))
def test_dropout_gradcheck(x, p, seed):
    """With the mask fixed (the same seed on every call), dropout is linear: y = x ⊙ m/(1 − p)."""
    gradcheck(lambda x: F.dropout(x, p, rng=np.random.default_rng(seed)), [x])


@given(st.floats(0.0, 0.9), st.integers(0, 99), st.sampled_from([np.float32, np.float64]))
def test_dropout_mask_is_in_the_input_dtype_and_equals_the_rounded_scale(p, seed, dtype):
    """The mask is m/(1 − p) with 1/(1 − p) rounded to x's dtype once (float32 stays float32)."""
    x = np.random.default_rng(seed).standard_normal((3, 50)).astype(dtype)
    y = F.dropout(x, p, rng=np.random.default_rng(seed))
    keep = np.random.default_rng(seed).random(x.shape) >= p
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, x * np.where(keep, dtype(1.0 / (1.0 - p)), dtype(0)))


def test_dropout_is_seeded_by_manual_seed():
    md.manual_seed(3)
    a = F.dropout(np.ones(50), 0.5)
    md.manual_seed(3)
    np.testing.assert_array_equal(a, F.dropout(np.ones(50), 0.5))


# ------------------------------------------------------------------ PyTorch CPU

torch = pytest.importorskip("torch")
tF = torch.nn.functional


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=linear_problems())
def test_linear_matches_torch(dtype, problem):
    assert_matches_torch(F.linear, tF.linear, list(problem), dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=resize_problems())
def test_interpolate_matches_torch(dtype, problem):
    x, kw = problem
    if _resize_ok(x, kw):
        assert_matches_torch(lambda x: F.interpolate(x, **kw), lambda x: tF.interpolate(x, mode="nearest", **kw),
                             [x], dtype)


@pytest.mark.torch
@given(shapes(min_dims=1, max_dims=3).flatmap(arrays), st.integers(-1, 0))
def test_softmax_matches_torch(x, dim):
    assert_matches_torch(lambda x: F.softmax(x, dim), lambda x: tF.softmax(x, dim), [x])


@pytest.mark.torch
@given(st.integers(1, 5), st.integers(1, 4), st.data())
def test_embedding_matches_torch(n, d, data):
    w = data.draw(arrays((n, d)))
    idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6)))
    assert_matches_torch(lambda w: F.embedding(idx, w), lambda w: tF.embedding(torch.tensor(idx), w), [w])


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.linear(np.ones((2, 3)), np.ones((4, 2))), ValueError, "weight must have shape (*, 3) = (out, in)"),
    (lambda: F.dropout(np.ones(3), 1.5), ValueError, "p must be <= 1, got 1.5"),
    (lambda: F.interpolate(np.ones((1, 1, 2, 2)), scale_factor=2, mode="bilinear"), ValueError, "nearest"),
    (lambda: F.interpolate(np.ones((1, 1, 2, 2))), ValueError, "exactly one of size and scale_factor"),
    (lambda: F.embedding(np.array([0.5]), np.ones((3, 2))), TypeError, "integers"),
    (lambda: F.embedding(np.array([3]), np.ones((3, 2))), ValueError, "[0, 3)"),
])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
