"""Layers on CuPy arrays equal the same layers on NumPy arrays (marker gpu: skipped without a GPU).

The layer code is array-module code (`xp`), so one implementation serves both backends; these
tests run each functional op and a small module stack on both and compare values and gradients.
"""
import numpy as np
import pytest
from hypothesis import given, settings

import minidiff as md
import minidiff.functional as F
import minidiff.nn as nn
import minidiff.optim as optim
from tests.layers_oracle import rel_err
from tests.strategies_layers import attention_problems, conv_problems, conv_transpose_problems, \
    group_norm_problems, pool_problems

pytestmark = pytest.mark.gpu


def assert_cupy_equals_numpy(fn, arrays, seed=0):
    """Value and input gradients of fn on NumPy and on CuPy copies of the same float64 arrays."""
    import cupy
    results = []
    for to in (np.asarray, cupy.asarray):
        tensors = [None if a is None else md.Tensor(to(a), requires_grad=True) for a in arrays]
        y = fn(*tensors)
        g = np.random.default_rng(seed).standard_normal(y.shape)
        y.backward(to(g))
        results.append([y.numpy()] + [md.backend.to_numpy(t.grad) for t in tensors if t is not None])
    for ours, ref in zip(*results[::-1]):
        assert rel_err(ref, ours) < 1e-10


@given(conv_problems(max_channels=4, max_side=9))
def test_conv2d_cupy_equals_numpy(problem):
    x, w, b, geo = problem
    assert_cupy_equals_numpy(lambda x, w, b: F.conv2d(x, w, b, **geo), [x, w, b])


@given(conv_transpose_problems())
def test_conv_transpose2d_cupy_equals_numpy(problem):
    x, w, b, geo = problem
    assert_cupy_equals_numpy(lambda x, w, b: F.conv_transpose2d(x, w, b, **geo), [x, w, b])


@given(pool_problems())
def test_avg_pool2d_cupy_equals_numpy(problem):
    x, kernel, stride, padding = problem
    assert_cupy_equals_numpy(lambda x: F.avg_pool2d(x, kernel, stride, padding), [x])


@given(group_norm_problems())
def test_group_norm_cupy_equals_numpy(problem):
    x, G, w, b = problem
    assert_cupy_equals_numpy(lambda x, w, b: F.group_norm(x, G, w, b), [x, w, b])


@given(group_norm_problems())
def test_group_norm_silu_cupy_equals_numpy(problem):
    """CuPy's composition (group_norm_forward_xp, then SiLU) against NumPy's fused kernels (eq. M25)."""
    x, G, w, b = problem
    assert_cupy_equals_numpy(lambda x, w, b: F.group_norm_silu(x, G, w, b), [x, w, b])


@given(attention_problems())
def test_attention_cupy_equals_numpy(problem):
    q, k, v, mask, causal = problem
    assert_cupy_equals_numpy(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask, causal), [q, k, v])


@settings(max_examples=5)
@given(conv_problems(max_channels=1, max_side=4))
def test_interpolate_and_linear_cupy_equal_numpy(problem):
    x = problem[0]
    assert_cupy_equals_numpy(lambda x: F.interpolate(x, scale_factor=2), [x])
    assert_cupy_equals_numpy(lambda x: F.interpolate(x, size=(3, 5)), [x])
    assert_cupy_equals_numpy(lambda x, w: F.linear(x, w), [x, np.ones((2, x.shape[-1]))])


def test_module_stack_and_optimizer_on_cupy():
    """The same seeded model trained 3 AdamW steps on each backend ends at the same weights."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6))
    t = np.array([3, 17])
    finals = []
    for backend in ("numpy", "cupy"):
        md.manual_seed(0)
        model = nn.ModuleList([nn.Conv2d(4, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SelfAttention2d(8, 2, 2),
                               nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.Linear(16, 8)]).double()
        model.to(backend=backend)
        opt = optim.AdamW(list(model.parameters()), 1e-2)
        emb = nn.SinusoidalTimeEmbedding(16, dtype=np.float64)
        with md.use_backend(backend) as xp:
            X, T = md.Tensor(xp.asarray(x)), xp.asarray(t)
            for _ in range(3):
                opt.zero_grad()
                h = model[3](model[2](F.silu(model[1](model[0](X)))))
                loss = (h * h).mean() + (model[4](emb(T)) ** 2).mean()
                loss.backward()
                opt.step()
        finals.append(model.state_dict())
    for k in finals[0]:
        assert rel_err(finals[1][k], finals[0][k]) < 1e-10, k
