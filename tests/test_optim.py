"""Optimisers, EMA, gradient clipping and the learning-rate schedule (docs/layers.md §8).

Trajectories of SGD / Adam / AdamW equal torch.optim's for 20 steps from the same start over
hypothesis-drawn hyper-parameters; a run resumed from a state dict equals an uninterrupted one."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minidiff as md
import minidiff.nn as nn
import minidiff.optim as optim
from tests.strategies import arrays


def loss_ours(theta, bias):
    """L = Σ tanh(Θ a + b)² + 0.1 Σ Θ⁴: non-quadratic, so every step's gradient differs."""
    a = np.linspace(-1.0, 1.0, theta.shape[1])
    return (((theta @ a) + bias).tanh() ** 2).sum() + 0.1 * (theta ** 4).sum()


def loss_torch(theta, bias):
    import torch
    a = torch.linspace(-1.0, 1.0, theta.shape[1], dtype=theta.dtype)
    return (torch.tanh(theta @ a + bias) ** 2).sum() + 0.1 * (theta ** 4).sum()


def run_ours(make, start, steps):
    params = [nn.Parameter(s.copy()) for s in start]
    opt = make(params)
    for _ in range(steps):
        opt.zero_grad()
        loss_ours(*params).backward()
        opt.step()
    return params, opt


optimizer_configs = st.one_of(
    st.builds(lambda lr, mu, nesterov, wd: ("SGD", dict(lr=lr, momentum=mu, nesterov=nesterov and mu > 0,
                                                         weight_decay=wd)),
              st.floats(1e-3, 0.3), st.sampled_from([0.0, 0.5, 0.9]), st.booleans(), st.sampled_from([0.0, 1e-2])),
    st.builds(lambda name, lr, b1, b2, eps, wd: (name, dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)),
              st.sampled_from(["Adam", "AdamW"]), st.floats(1e-4, 0.1), st.sampled_from([0.0, 0.8, 0.9]),
              st.sampled_from([0.9, 0.999]), st.sampled_from([1e-8, 1e-3]), st.sampled_from([0.0, 1e-2, 0.1])))


@st.composite
def starts(draw):
    """(Θ, b) with every pre-activation z = Θ a + b away from 0.

    At z = 0 the bias gradient 2 tanh(z) sech²(z) is 0 exactly but round-off leaves ~1e-16 of it,
    depending on summation order; Adam's first step g / (√v̂ + ε) turns that into lr · 1e-8, and
    with β₁ = 0 the two trajectories then drift apart chaotically (found from Θ = 1, b = 0).
    """
    n, m = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    theta, bias = draw(arrays((n, m), -1.0, 1.0)), draw(arrays((n,), -1.0, 1.0))
    assume(np.abs(theta @ np.linspace(-1.0, 1.0, m) + bias).min() > 1e-3)
    return [theta, bias]


@pytest.mark.torch
@given(optimizer_configs, starts())
def test_trajectory_equals_torch_optim(config, start):
    torch = pytest.importorskip("torch")
    name, kw = config
    ours, _ = run_ours(lambda p: getattr(optim, name)(p, **kw), start, 20)
    theirs = [torch.tensor(s.copy(), requires_grad=True) for s in start]
    opt = getattr(torch.optim, name)(theirs, **kw)
    for _ in range(20):
        opt.zero_grad()
        loss_torch(*theirs).backward()
        opt.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-10, atol=1e-12)


adam_configs = st.builds(lambda name, lr, b1, b2, eps, wd: (name, dict(lr=lr, betas=(b1, b2), eps=eps,
                                                                   weight_decay=wd)),
                        st.sampled_from(["Adam", "AdamW"]), st.floats(1e-4, 0.1), st.floats(0.0, 0.99),
                        st.floats(0.9, 0.9999), st.sampled_from([1e-8, 1e-3]), st.sampled_from([0.0, 1e-2, 0.1]))


@given(adam_configs, st.sampled_from([np.float32, np.float64]), st.integers(1, 40), st.integers(1, 5),
       st.integers(0, 2 ** 32 - 1))
def test_adam_kernel_gives_the_reference_bits(config, dtype, n, steps, seed):
    """`_adam_kernel` (contiguous NumPy parameters) and `update_reference` (the array expressions) are the same
    operations in the same order and dtype: equal bits after several steps, float32 and float64."""
    name, kw = config
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((steps + 1, 2, n)).astype(dtype)
    fast, ref = nn.Parameter(start[0, 0].copy()), start[0, 0].copy()
    opt = getattr(optim, name)([fast], **kw)
    m, v = np.zeros_like(ref), np.zeros_like(ref)
    calls = []
    kernel = optim._adam_kernel

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    optim._adam_kernel = counted
    try:
        for k in range(steps):
            fast.grad = start[k + 1, 1].copy()
            opt.step()
            opt.update_reference(ref, start[k + 1, 1], m, v)
            np.testing.assert_array_equal(fast.numpy(), ref)
    finally:
        optim._adam_kernel = kernel
    np.testing.assert_array_equal(opt.state["exp_avg"][0], m)
    np.testing.assert_array_equal(opt.state["exp_avg_sq"][0], v)
    assert len(calls) == steps and fast.dtype == dtype and opt.state["exp_avg"][0].dtype == dtype


def test_adam_runs_the_reference_for_a_non_contiguous_parameter():
    theta = np.arange(12.0).reshape(3, 4).T                          # a transposed view: not C-contiguous
    p = nn.Parameter(theta)
    p.data = theta
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones((4, 3))
    opt.step()
    np.testing.assert_allclose(p.numpy(), np.arange(12.0).reshape(3, 4).T - 0.1, rtol=1e-7)


@given(optimizer_configs, starts(), st.integers(1, 9))
def test_resuming_from_state_dict_equals_an_uninterrupted_run(config, start, k):
    name, kw = config
    make = lambda p: getattr(optim, name)(p, **kw)  # noqa: E731
    full, _ = run_ours(make, start, 12)
    first, opt = run_ours(make, start, k)
    state = opt.state_dict()
    assert all(isinstance(v, (int, float, np.ndarray)) for v in state.values())
    params = [nn.Parameter(p.numpy().copy()) for p in first]
    resumed = make(params)
    resumed.load_state_dict(state)
    for _ in range(12 - k):
        resumed.zero_grad()
        loss_ours(*params).backward()
        resumed.step()
    for a, b in zip(full, params):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.torch
@given(st.lists(arrays((3,), -5.0, 5.0), min_size=1, max_size=3), st.floats(0.1, 10.0))
def test_clip_grad_norm_matches_torch(grads, max_norm):
    torch = pytest.importorskip("torch")
    ours = [nn.Parameter(np.zeros(3)) for _ in grads]
    theirs = [torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in grads]
    for p, t, g in zip(ours, theirs, grads):
        p.grad, t.grad = g.copy(), torch.tensor(g.copy())
    total = optim.clip_grad_norm(ours, max_norm)
    t_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert total == pytest.approx(float(t_total), rel=1e-12)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12, atol=1e-300)
    assert math.sqrt(sum(float((p.grad ** 2).sum()) for p in ours)) <= max_norm * (1 + 1e-9)


@given(st.floats(0.0, 0.999), st.integers(1, 10), st.integers(0, 100))
def test_ema_is_the_closed_form_average(decay, n, seed):
    """After n updates θ̄ = δⁿ θ₀ + Σ_k (1 − δ) δ^(n−k) θ_k."""
    rng = np.random.default_rng(seed)
    model = nn.Linear(3, 2, dtype=np.float64)
    ema = optim.EMA(model, decay)
    expected = {k: v.copy() for k, v in model.state_dict().items()}
    for _ in range(n):
        for p in model.parameters():
            p.data[...] = rng.standard_normal(p.shape)
        ema.update(model)
        expected = {k: decay * expected[k] + (1 - decay) * v for k, v in model.state_dict().items()}
    for k, v in ema.state_dict().items():
        np.testing.assert_allclose(v, expected[k], rtol=1e-12, atol=1e-14)
    target = nn.Linear(3, 2, dtype=np.float64)
    ema.copy_to(target)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(v, ema.state_dict()[k])
    other = optim.EMA(target, 0.5)
    other.load_state_dict(ema.state_dict())
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in ema.state_dict().items())


@given(st.floats(1e-5, 1.0), st.integers(0, 50), st.integers(1, 200), st.floats(0.0, 0.5))
def test_warmup_cosine_schedule(base, warmup, extra, min_frac):
    total, min_lr = warmup + extra, min_frac * base
    sched = optim.WarmupCosine(base, warmup, total, min_lr)
    lrs = np.array([sched.lr_at(s) for s in range(total + 5)])
    assert np.all(np.diff(lrs[:warmup]) > 0)                        # linear warm-up
    if warmup:
        assert lrs[warmup - 1] == pytest.approx(base)
    assert lrs[warmup] == pytest.approx(base)                       # cosine starts at the peak
    assert np.all(np.diff(lrs[warmup:]) <= 1e-15)                   # then never increases
    assert lrs[total] == pytest.approx(min_lr) and lrs[-1] == pytest.approx(min_lr)
    mid = warmup + extra / 2
    if float(mid).is_integer():
        assert sched.lr_at(int(mid)) == pytest.approx((base + min_lr) / 2)


def test_schedule_sets_the_optimizer_lr():
    p = nn.Parameter(np.zeros(2))
    opt = optim.Adam([p], lr=1.0)
    assert optim.WarmupCosine(0.1, 10, 100).apply(opt, 4) == pytest.approx(0.05) and opt.lr == pytest.approx(0.05)


@pytest.mark.parametrize("call, error, message", [
    (lambda: optim.SGD([], lr=0.1), ValueError, "empty"),
    (lambda: optim.SGD([md.Tensor(np.zeros(2))], lr=0.1), TypeError, "requires_grad"),
    (lambda: optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, nesterov=True), ValueError, "Nesterov"),
    (lambda: optim.Adam([nn.Parameter(np.zeros(2))], betas=(0.9, 1.0)), ValueError, "betas"),
    (lambda: optim.EMA(nn.Linear(2, 2), decay=1.5), ValueError, "decay"),
    (lambda: optim.WarmupCosine(0.1, 10, 5), ValueError, "warmup_steps"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_optimizer_load_rejects_wrong_shapes():
    p = nn.Parameter(np.zeros(2))
    opt = optim.Adam([p])
    p.grad = np.ones(2)
    opt.step()
    state = dict(opt.state_dict(), **{"exp_avg.0": np.zeros(3)})
    with pytest.raises(ValueError, match=r"'exp_avg.0' has shape \(3,\), parameter 0 has shape \(2,\)"):
        optim.Adam([nn.Parameter(np.zeros(2))]).load_state_dict(state)
