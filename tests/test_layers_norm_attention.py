"""Group norm, layer norm and scaled dot-product attention: the closed-form fast paths against
their primitive-op compositions and against PyTorch, float64 gradchecks, the laws each obeys
(zero mean / unit variance per group, softmax rows summing to 1), bad input (docs/layers.md §4-5), and
group norm with its SiLU fused into one Function (eq. M25)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numba import njit

import minidiff as md
import minidiff.functional as F
from minidiff.ops.attention import attention_reference
from minidiff.ops import norm_numba
from minidiff.ops.norm import (group_norm_backward_xp, group_norm_forward_xp, group_norm_reference,
                               group_norm_silu_backward_xp, group_norm_silu_forward_xp, group_norm_silu_reference,
                               layer_norm_reference)
from minidiff.testing import gradcheck
from tests.layers_oracle import assert_matches_torch, rel_err
from tests.strategies import arrays
from tests.strategies_layers import assume_spread_rows, attention_problems, group_norm_problems, well_spread


def _present(*arrays):
    return [a for a in arrays if a is not None]


def _bind(fn, *optional):
    """fn(x, *optional) as a function of x and only the optional arrays that are present."""
    def call(x, *given):
        it = iter(given)
        return fn(x, *[None if o is None else next(it) for o in optional])
    return call


def _value_and_grads(fn, inputs, seed=0):
    tensors = [md.Tensor(a.copy(), requires_grad=True) for a in inputs]
    y = fn(*tensors)
    y.backward(np.random.default_rng(seed).standard_normal(y.shape))
    return [y.numpy()] + [t.grad for t in tensors]


# ------------------------------------------------------------------ group norm

@given(group_norm_problems())
def test_group_norm_gradcheck(problem):
    x, G, w, b = problem
    gradcheck(_bind(lambda x, w, b: F.group_norm(x, G, w, b), w, b), [x] + _present(w, b))


@given(group_norm_problems())
def test_group_norm_fast_path_equals_composition(problem):
    x, G, w, b = problem
    inputs = [x] + _present(w, b)
    fast = _value_and_grads(_bind(lambda x, w, b: F.group_norm(x, G, w, b), w, b), inputs)
    ref = _value_and_grads(_bind(lambda x, w, b: group_norm_reference(x, G, w, b), w, b), inputs)
    for a, r in zip(fast, ref):
        assert rel_err(a, r) < 1e-12


def assert_kernels_equal_the_array_module_form(problem, dtype, seed, fast, reference, tol32):
    """fast(x, w, b, g, G) and reference(x, w, b, g, G), each (y, ∂x, ∂γ, ∂β), agree to 1e-12 in float64 and
    tol32 in float32 (relative to the outputs' scale), every output in x's dtype and shape."""
    x, G, w, b = problem
    rng = np.random.default_rng(seed)
    x = x.astype(dtype)
    w = (rng.standard_normal(x.shape[1]) if w is None else w).astype(dtype)
    b = (rng.standard_normal(x.shape[1]) if b is None else b).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else tol32
    for a, r in zip(fast(x, w, b, g, G), reference(x, w, b, g, G), strict=True):
        assert a.dtype == r.dtype == dtype and a.shape == r.shape
        scale = np.abs(r).max() + np.abs(g).max() * (np.abs(w).max() + 1) * x[0].size + 1
        np.testing.assert_allclose(a, r, rtol=0, atol=tol * scale)


def group_norm_kernels(x, w, b, g, G):
    y, mean, rstd = norm_numba.group_norm_forward(x, w, b, G, 1e-5)
    return (y,) + norm_numba.group_norm_backward(g, x, w, mean, rstd, G)


def group_norm_array_module_form(x, w, b, g, G):
    y, saved = group_norm_forward_xp(x, w, b, G, 1e-5)
    return (y,) + group_norm_backward_xp(g, w, *saved)


@given(group_norm_problems(), st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_group_norm_numba_kernels_equal_the_array_module_form(problem, dtype, seed):
    """Eq. M22 (the Numba kernels NumPy arrays run) equals eq. M6-M7 as array-module code (CuPy's path):
    y, ∂x, ∂γ, ∂β to 1e-12 in float64 and float32 round-off in float32, every output in x's dtype."""
    assert_kernels_equal_the_array_module_form(problem, dtype, seed, group_norm_kernels,
                                               group_norm_array_module_form, 2e-5)


@given(group_norm_problems())
def test_group_norm_standardises_each_group(problem):
    """Without affine parameters, every (sample, group) block has mean 0 and variance σ²/(σ² + ε)."""
    x, G, _, _ = problem
    y = F.group_norm(x, G, eps=1e-5).reshape(x.shape[0], G, -1)
    var = x.reshape(x.shape[0], G, -1).var(axis=2)
    np.testing.assert_allclose(y.mean(axis=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=2), var / (var + 1e-5), rtol=1e-10)


@given(group_norm_problems(), st.floats(-3, 3), st.floats(0.5, 4))
def test_group_norm_is_invariant_to_shift_and_scale(problem, shift, scale):
    x, G, w, b = problem
    np.testing.assert_allclose(F.group_norm(scale * x + shift, G, w, b, eps=0.0), F.group_norm(x, G, w, b, eps=0.0),
                               rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------ group norm then SiLU, one Function (eq. M25)

@given(group_norm_problems())
def test_group_norm_silu_gradcheck(problem):
    x, G, w, b = problem
    gradcheck(_bind(lambda x, w, b: F.group_norm_silu(x, G, w, b), w, b), [x] + _present(w, b))


@given(group_norm_problems(), st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_group_norm_silu_equals_silu_of_the_group_norm_reference(problem, dtype, seed):
    """y, ∂x, ∂γ, ∂β of the fused Function (NumPy's Numba kernels) against autograd through
    silu(group_norm_reference(...)): 1e-12 in float64, float32 round-off in float32, all in x's dtype."""
    x, G, w, b = problem
    inputs = [a.astype(dtype) for a in [x] + _present(w, b)]
    g = np.random.default_rng(seed).standard_normal(x.shape).astype(dtype)
    results = []
    for fn in (F.group_norm_silu, group_norm_silu_reference):
        tensors = [md.Tensor(a.copy(), requires_grad=True) for a in inputs]
        y = _bind(lambda x, w, b: fn(x, G, w, b), w, b)(*tensors)
        y.backward(g)
        results.append([y.numpy()] + [t.grad for t in tensors])
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for a, r in zip(*results):
        assert a.dtype == r.dtype == dtype and a.shape == r.shape
        scale = np.abs(r).max() + np.abs(g).max() * x[0].size + 1
        np.testing.assert_allclose(a, r, rtol=0, atol=tol * scale)


def group_norm_silu_kernels(x, w, b, g, G):
    y, mean, rstd = norm_numba.group_norm_silu_forward(x, w, b, G, 1e-5)
    return (y,) + norm_numba.group_norm_silu_backward(g, x, w, b, mean, rstd, G)


def group_norm_silu_array_module_form(x, w, b, g, G):
    y, saved = group_norm_silu_forward_xp(x, w, b, G, 1e-5)
    return (y,) + group_norm_silu_backward_xp(g, w, *saved)


@given(group_norm_problems(), st.sampled_from([np.float64, np.float32]), st.integers(0, 99))
def test_group_norm_silu_numba_kernels_equal_the_array_module_form(problem, dtype, seed):
    """Eq. M25's Numba kernels (NumPy's path) against its array-module form (CuPy's path): y, ∂x, ∂γ, ∂β to 1e-12
    in float64 and float32 round-off in float32, every output in x's dtype."""
    assert_kernels_equal_the_array_module_form(problem, dtype, seed, group_norm_silu_kernels,
                                               group_norm_silu_array_module_form, 2e-6)


def test_group_norm_silu_keeps_x_and_the_statistics_only():
    """The node holds one activation-sized array, x itself (GroupNorm then SiLU hold x and z): eq. M25's saving."""
    x = well_spread(np.random.default_rng(0).standard_normal((2, 6, 4, 4)))
    tx = md.Tensor(x, requires_grad=True)
    node = F.group_norm_silu(tx, 3, np.ones(6), np.zeros(6))._ctx
    held = [v for v in vars(node).values() if isinstance(v, np.ndarray) and v.size >= x.size]
    assert len(held) == 1 and held[0] is tx.data


@njit
def _compiled_sigmoid(z, out):
    for i in range(z.size):
        out[i] = norm_numba.sigmoid(z[i])


@pytest.mark.parametrize("dtype, limit", [(np.float32, 87.0), (np.float64, 700.0)])
@given(extra=st.lists(st.floats(-1e4, 1e4), max_size=20))
def test_the_compiled_sigmoid_is_exact_to_a_few_units_in_the_last_place(dtype, limit, extra):
    """σ(z) = 1/(1 + e^−z) built from 2^k and a Taylor polynomial (norm_numba) against the extended-precision
    formula: within 4 ulp of σ where −z ≤ L, 0 below (the true value < e^−L), NaN for NaN; the grid crosses
    every range-reduction boundary k ln 2 ± ln 2 / 2 and the clamp ±L."""
    z = np.concatenate([np.linspace(-limit - 3, limit + 3, 20001), [0.0, -limit, limit, np.inf, -np.inf, np.nan],
                        extra]).astype(dtype)
    out = np.empty_like(z)
    _compiled_sigmoid(z, out)
    zl = z.astype(np.longdouble)
    with np.errstate(over="ignore"):
        exact = 1 / (1 + np.exp(-zl))
    inside = z > -limit
    ulp = np.spacing(exact[inside].astype(dtype)).astype(np.longdouble)
    assert np.all(np.abs(out[inside] - exact[inside]) <= 4 * ulp)
    assert np.all(out[(z <= -limit)] == 0) and np.all(exact[(z <= -limit)] <= np.exp(np.longdouble(-limit)))
    assert np.isnan(out[np.isnan(z)]).all()


# ------------------------------------------------------------------ layer norm

@st.composite
def layer_norm_problems(draw, dtype=np.float64):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    normalized = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    x = well_spread(draw(arrays(lead + normalized, dtype=dtype)))
    assume_spread_rows(x.reshape(-1, int(np.prod(normalized))))
    w = draw(st.none() | arrays(normalized, dtype=dtype))
    b = draw(st.none() | arrays(normalized, dtype=dtype))
    return x.astype(dtype), normalized, w, b


@given(layer_norm_problems())
def test_layer_norm_gradcheck_and_composition(problem):
    x, shape, w, b = problem
    fast = _bind(lambda x, w, b: F.layer_norm(x, shape, w, b), w, b)
    ref = _bind(lambda x, w, b: layer_norm_reference(x, shape, w, b), w, b)
    gradcheck(fast, [x] + _present(w, b))
    for a, r in zip(_value_and_grads(fast, [x] + _present(w, b)), _value_and_grads(ref, [x] + _present(w, b))):
        assert rel_err(a, r) < 1e-12


# ------------------------------------------------------------------ attention

@given(attention_problems())
def test_attention_gradcheck(problem):
    q, k, v, mask, causal = problem
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal), [q, k, v])


@given(attention_problems(), st.one_of(st.none(), st.floats(0.1, 2.0)))
def test_attention_fast_path_equals_composition(problem, scale):
    q, k, v, mask, causal = problem
    fast = _value_and_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask, causal, scale), [q, k, v])
    ref = _value_and_grads(lambda q, k, v: attention_reference(q, k, v, mask, causal, scale), [q, k, v])
    for a, r in zip(fast, ref):
        assert rel_err(a, r) < 1e-12


@given(attention_problems())
def test_attention_rows_are_convex_combinations_of_values(problem):
    """softmax rows sum to 1, so attending to constant values returns that constant; masked keys get weight 0."""
    q, k, v, mask, causal = problem
    const = np.full(v.shape, 0.7)
    np.testing.assert_allclose(F.scaled_dot_product_attention(q, k, const, mask, causal), 0.7, rtol=1e-12)
    if mask is not None and mask.dtype == bool:
        spike = np.zeros(v.shape[:-2] + (v.shape[-2], 1))
        spike[..., ~mask.any(axis=0), 0] = 1.0       # keys no query may see
        np.testing.assert_allclose(F.scaled_dot_product_attention(q, k, spike, mask), 0.0, atol=1e-300)


def test_attention_broadcasts_keys_over_heads():
    """k, v shared by all heads (a size-1 head axis): gradients are summed back over the heads."""
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 1, 6, 5)), rng.standard_normal((2, 1, 6, 2))
    gradcheck(F.scaled_dot_product_attention, [q, k, v])


# ------------------------------------------------------------------ PyTorch CPU

torch = pytest.importorskip("torch")
tF = torch.nn.functional


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=group_norm_problems())
def test_group_norm_matches_torch(dtype, problem):
    x, G, w, b = problem

    def torch_group_norm(x, w, b):  # torch 2.13's backward fails on float32 (B, C) input with weight=None
        return tF.group_norm(x, G, torch.ones(x.shape[1], dtype=x.dtype) if w is None else w, b)
    assert_matches_torch(lambda x, w, b: F.group_norm(x, G, w, b), torch_group_norm, [x, w, b], dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=group_norm_problems())
def test_group_norm_silu_matches_torch(dtype, problem):
    x, G, w, b = problem

    def torch_group_norm_silu(x, w, b):
        return tF.silu(tF.group_norm(x, G, torch.ones(x.shape[1], dtype=x.dtype) if w is None else w, b))
    assert_matches_torch(lambda x, w, b: F.group_norm_silu(x, G, w, b), torch_group_norm_silu, [x, w, b], dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=layer_norm_problems())
def test_layer_norm_matches_torch(dtype, problem):
    x, shape, w, b = problem
    assert_matches_torch(lambda x, w, b: F.layer_norm(x, shape, w, b), lambda x, w, b: tF.layer_norm(x, shape, w, b),
                         [x, w, b], dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=attention_problems())
def test_attention_matches_torch(dtype, problem):
    q, k, v, mask, causal = problem
    t_mask = None if mask is None else torch.tensor(mask if mask.dtype == bool else mask.astype(dtype))
    assert_matches_torch(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask, causal),
                         lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, attn_mask=t_mask, is_causal=causal),
                         [q, k, v], dtype)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("call, message", [
    (lambda: F.group_norm(np.ones((2, 6, 3)), 4), "C divisible by num_groups = 4, got shape (2, 6, 3)"),
    (lambda: F.group_norm(np.ones((2, 6, 3)), 3, np.ones(5)), "weight must have shape (6,)"),
    (lambda: F.group_norm_silu(np.ones((2, 6, 3)), 4), "group_norm_silu: x must be (B, C, ...) with C divisible"),
    (lambda: F.group_norm_silu(np.ones((2, 6, 3)), 3, None, np.ones(5)), "bias must have shape (6,)"),
    (lambda: F.layer_norm(np.ones((2, 6)), (5,)), "normalized_shape"),
    (lambda: F.layer_norm(np.ones((2, 6)), 6, np.ones(5)), "weight must have shape (6,)"),
    (lambda: F.scaled_dot_product_attention(np.ones((3, 4)), np.ones((5, 3)), np.ones((5, 2))), "k (..., S, E)"),
    (lambda: F.scaled_dot_product_attention(np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2)),
                                            attn_mask=np.ones((3, 4), bool)), "attn_mask of shape (3, 4)"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


# ------------------------------------------------------------------ token attention and the transformer block

@pytest.mark.parametrize("module, names", [
    (lambda: md.nn.MultiheadSelfAttention(4, 2, dtype=np.float64), ("qkv.weight", "proj.bias")),
    (lambda: md.nn.TransformerBlock(4, 2, 2, dtype=np.float64),
     ("norm1.weight", "attn.qkv.weight", "attn.proj.weight", "norm2.bias", "mlp.0.weight", "mlp.2.bias")),
])
def test_token_attention_and_transformer_block_gradcheck(module, names):
    """float64 central differences with respect to the tokens and along random directions of the parameters."""
    from tests.test_models import _param_check
    md.manual_seed(0)
    layer = module()
    x = well_spread(np.random.default_rng(0).standard_normal((2, 3, 4)))
    assert gradcheck(layer, [x])
    weights = np.random.default_rng(1).standard_normal((2, 3, 4))
    for name in names:
        _param_check(layer, name, lambda: (layer(md.Tensor(x)) * weights).sum())


def test_token_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="embed_dim 6 does not split into 4 heads"):
        md.nn.MultiheadSelfAttention(6, 4)
    with pytest.raises(ValueError, match=r"must be \(B, N, 4\)"):
        md.nn.MultiheadSelfAttention(4, 2)(md.Tensor(np.zeros((2, 3, 5))))
