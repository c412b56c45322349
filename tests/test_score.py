"""The score view: Tweedie's score, denoising score matching, annealed Langevin, docs/score.md.

Oracles: GaussianDataOracle (q(x_t) Gaussian, its score in closed form) and EmpiricalDenoiser (q(x_t) a
finite Gaussian mixture, its score by central differences of the log-sum-exp density).
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from minidiff import Tensor
from minidiff.diffusion import (EmpiricalDenoiser, GaussianDataOracle, LangevinSampler, Schedule, conditional_score,
                                dsm_loss, eps_loss, langevin_sample, make_sampler, q_sample, sample, score_from_eps)
from tests.strategies_diffusion import problems, schedules, seeds, timesteps


def _mixture_log_density(x_t, t, train, schedule):
    """log q(x_t) = log mean_i N(x_t; sqrt(ab) x_i, (1 - ab) I), (B,), for one t shared by the batch."""
    ab = schedule.alpha_bars[t]
    sq = ((x_t[:, None, :] - math.sqrt(ab) * train[None]) ** 2).sum(axis=2)
    D = train.shape[1]
    return logsumexp(-sq / (2 * (1 - ab)), axis=1) - math.log(len(train)) - 0.5 * D * math.log(2 * math.pi * (1 - ab))


def _finite_difference_score(x_t, t, train, schedule, h=1e-5):
    """grad log q(x_t) by central differences, (B, D)."""
    grad = np.zeros_like(x_t)
    for i in range(x_t.shape[1]):
        e = np.zeros(x_t.shape[1])
        e[i] = h
        grad[:, i] = (_mixture_log_density(x_t + e, t, train, schedule)
                      - _mixture_log_density(x_t - e, t, train, schedule)) / (2 * h)
    return grad


# ---------------------------------------------------------------- Tweedie, eq. (S1)-(S2)

@given(schedules(max_T=200), st.integers(1, 4), seeds(), st.data())
def test_score_of_the_gaussian_oracle_is_the_analytic_score_of_q_x_t(schedule, batch, seed, data):
    """x_0 ~ N(m, s^2): q(x_t) = N(sqrt(ab) m, ab s^2 + 1 - ab), so grad log q = -(x_t - sqrt(ab) m) / v_t."""
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(size=3), rng.uniform(0.1, 2.0, 3)
    oracle = GaussianDataOracle(mean, std, schedule)
    t = data.draw(timesteps(schedule, batch))
    x_t = 2.0 * rng.standard_normal((batch, 3))
    ab = schedule.alpha_bars[t][:, None]
    analytic = -(x_t - np.sqrt(ab) * mean) / (ab * std ** 2 + 1.0 - ab)
    np.testing.assert_allclose(score_from_eps(oracle(x_t, t), t, schedule), analytic, rtol=1e-10, atol=1e-12)


@given(st.integers(2, 6), st.integers(1, 3), st.sampled_from([2, 10, 40, 90]), seeds())
def test_score_of_the_empirical_denoiser_is_the_gradient_of_the_mixture_log_density(n, d, t, seed):
    """Tweedie for a finite data set: -eps_hat / sqrt(1 - ab) = grad log q(x_t) (central differences)."""
    schedule = Schedule.cosine(100)
    rng = np.random.default_rng(seed)
    train, x_t = rng.uniform(-1, 1, (n, d)), rng.normal(size=(4, d))
    ts = np.full(4, t)
    score = score_from_eps(EmpiricalDenoiser(train, schedule)(x_t, ts), ts, schedule)
    np.testing.assert_allclose(score, _finite_difference_score(x_t, t, train, schedule), rtol=1e-5, atol=1e-6)


def test_score_from_eps_checks_t():
    schedule = Schedule.cosine(10)
    with pytest.raises(ValueError, match="t must lie in 1..T"):
        score_from_eps(np.zeros((2, 3)), np.array([0, 1]), schedule)
    with pytest.raises(TypeError, match="integer timesteps"):
        score_from_eps(np.zeros((2, 3)), np.array([1.0, 2.0]), schedule)


@given(st.integers(1, 4), st.integers(2, 4), st.sampled_from(["x_t", "x0"]), seeds())
def test_conditional_score_refuses_an_x0_that_would_broadcast(batch, d, odd, seed):
    """(S3) is defined for x_t and x0 of one shape: a (B, 1) array on either side is refused, not broadcast."""
    schedule, rng = Schedule.cosine(10), np.random.default_rng(seed)
    arrays = {name: rng.standard_normal((batch, 1) if name == odd else (batch, d)) for name in ("x_t", "x0")}
    with pytest.raises(ValueError, match="conditional_score: x0 must have shape"):  # against x_t's shape
        conditional_score(arrays["x_t"], arrays["x0"], np.full(batch, 3), schedule)


@given(st.integers(1, 4), st.integers(2, 4), st.sampled_from(["score_hat", "x_t", "x0"]), seeds())
def test_dsm_loss_refuses_arrays_that_would_broadcast(batch, d, odd, seed):
    """(S4) sums over elements of score_hat, x_t and x0 of one shape (B, ...): one of them (B, 1) is refused
    by dsm_loss itself, naming the argument against x_t's shape."""
    schedule, rng = Schedule.cosine(10), np.random.default_rng(seed)
    arrays = {name: rng.standard_normal((batch, 1) if name == odd else (batch, d))
              for name in ("score_hat", "x_t", "x0")}
    named = "x0" if odd == "x0" else "score_hat"
    with pytest.raises(ValueError, match=f"dsm_loss: {named} must have shape"):
        dsm_loss(arrays["score_hat"], arrays["x_t"], arrays["x0"], np.full(batch, 3), schedule)


# ---------------------------------------------------------------- denoising score matching, eq. (S3)-(S5)

@given(problems(max_T=200), seeds())
def test_sigma2_weighted_dsm_loss_equals_the_eps_loss(problem, seed):
    """lambda_t ||s_theta - grad log q(x_t | x_0)||^2 = ||eps_hat - eps||^2 with lambda_t = 1 - ab_t, eq. (S5)."""
    schedule, t, x0, eps, _ = problem
    eps_hat = np.random.default_rng(seed).normal(size=x0.shape)
    x_t = q_sample(x0, t, eps, schedule, impl="numpy")
    score_hat = score_from_eps(eps_hat, t, schedule)
    np.testing.assert_allclose(dsm_loss(score_hat, x_t, x0, t, schedule), eps_loss(eps_hat, eps), rtol=1e-9)
    unweighted = np.mean((eps_hat - eps) ** 2 / (1.0 - schedule.alpha_bars[t]).reshape((-1,) + (1,) * (x0.ndim - 1)))
    np.testing.assert_allclose(dsm_loss(score_hat, x_t, x0, t, schedule, weighting="none"), unweighted, rtol=1e-9)


def test_dsm_and_eps_losses_have_the_same_gradient_in_the_network_output():
    """Through score_from_eps on Tensors: d L_DSM / d eps_hat = d L_simple / d eps_hat (sigma2 weight), and
    the unweighted loss's gradient is that divided by 1 - ab_t."""
    schedule, rng = Schedule.cosine(50), np.random.default_rng(0)
    x0, eps, t = rng.uniform(-1, 1, (5, 3)), rng.normal(size=(5, 3)), rng.integers(1, 51, 5)
    x_t = q_sample(x0, t, eps, schedule, impl="numpy")
    start = rng.normal(size=(5, 3))
    reference = Tensor(start.copy(), requires_grad=True)
    eps_loss(reference, eps).backward()
    for weighting, scale in (("sigma2", 1.0), ("none", 1.0 / (1.0 - schedule.alpha_bars[t])[:, None])):
        eps_hat = Tensor(start.copy(), requires_grad=True)
        dsm_loss(score_from_eps(eps_hat, t, schedule), x_t, x0, t, schedule, weighting=weighting).backward()
        np.testing.assert_allclose(eps_hat.grad, reference.grad * scale, rtol=1e-10)


@given(st.integers(2, 5), st.sampled_from([5, 30, 80]), seeds())
def test_posterior_mean_of_the_dsm_target_is_the_score_of_q_x_t(n, t, seed):
    """E[grad log q(x_t | x_0) | x_t] = grad log q(x_t) (Vincent 2011): the DSM optimum is the true score."""
    schedule = Schedule.cosine(100)
    rng = np.random.default_rng(seed)
    train, x_t = rng.uniform(-1, 1, (n, 2)), rng.normal(size=(3, 2))
    ts = np.full(3, t)
    weights = EmpiricalDenoiser(train, schedule).weights(x_t, ts)                          # P(x_i | x_t), (3, n)
    targets = np.stack([conditional_score(x_t, np.broadcast_to(x_i, x_t.shape), ts, schedule) for x_i in train], 1)
    posterior_mean = (weights[:, :, None] * targets).sum(axis=1)
    np.testing.assert_allclose(posterior_mean, _finite_difference_score(x_t, t, train, schedule), rtol=1e-5, atol=1e-6)


def test_dsm_loss_refuses_an_unknown_weighting():
    schedule = Schedule.cosine(10)
    with pytest.raises(ValueError, match="weighting must be"):
        dsm_loss(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)), np.array([3]), schedule, weighting="snr")


# ---------------------------------------------------------------- annealed Langevin, eq. (S6)-(S8)

class CountingModel:
    """Wraps a model and counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x_t, t):
        self.calls += 1
        return self.model(x_t, t)


def _langevin_by_hand(model, chain, x_T, noise, step_ratio):
    x = x_T
    for i, k in enumerate(range(chain.T, 0, -1)):
        t = np.full(len(x), chain.timesteps[k])
        eta = step_ratio * (1.0 - chain.alpha_bars[k])
        for z in noise[i]:
            x = x - 0.5 * eta * model(x, t) / np.sqrt(1.0 - chain.alpha_bars[k]) + np.sqrt(eta) * z
        if k > 1:
            x = np.sqrt(chain.alpha_bars[k - 1] / chain.alpha_bars[k]) * x
    t = np.full(len(x), chain.timesteps[1])
    return (x - np.sqrt(1.0 - chain.alpha_bars[1]) * model(x, t)) / np.sqrt(chain.alpha_bars[1])


def test_langevin_is_eq_s6_to_s8_step_by_step_and_counts_its_network_calls():
    schedule, rng = Schedule.cosine(40), np.random.default_rng(0)
    oracle = CountingModel(GaussianDataOracle(0.2, 0.5, schedule))
    K, M = 6, 4
    x_T, noise = rng.normal(size=(3, 2)), rng.normal(size=(K, M, 3, 2))
    got = langevin_sample(oracle, (3, 2), schedule, steps=K, n_inner=M, step_ratio=0.7, x_T=x_T, noise=noise,
                          dtype=np.float64)
    assert oracle.calls == LangevinSampler(n_inner=M).network_calls(K) == K * M + 1
    np.testing.assert_allclose(got, _langevin_by_hand(oracle.model, schedule.respace(K), x_T, noise, 0.7), rtol=1e-12)
    with pytest.raises(ValueError, match=r"noise\[0\] must have shape \(4, 3, 2\).*got shape \(3, 2\)"):
        langevin_sample(oracle, (3, 2), schedule, steps=K, n_inner=M, x_T=x_T, noise=noise[:, 0])


def _moment_errors(x, mean, std):
    return max(abs(x.mean() - mean), abs(x.std() - std))


def test_langevin_samples_reach_the_data_moments_with_more_inner_steps():
    """Annealed Langevin on the Gaussian oracle: the moment error falls as the inner steps grow (1 -> 3 -> 12)."""
    schedule, mean, std = Schedule.cosine(200), 0.3, 0.6
    oracle = GaussianDataOracle(mean, std, schedule)
    errors = [_moment_errors(langevin_sample(oracle, (20000, 1), schedule, rng=np.random.default_rng(1), steps=50,
                                             n_inner=m, dtype=np.float64), mean, std) for m in (1, 3, 12)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.03  # Monte Carlo error of the std at n = 20000 is 0.003


def test_langevin_samples_reach_the_data_moments_as_the_levels_grow():
    """The trend in the number of noise levels K (3 inner steps each): the moment error falls as K grows
    (12 -> 50 -> 200), to the Monte Carlo scale at K = 200."""
    schedule, mean, std = Schedule.cosine(200), 0.3, 0.6
    oracle = GaussianDataOracle(mean, std, schedule)
    errors = [_moment_errors(langevin_sample(oracle, (20000, 1), schedule, rng=np.random.default_rng(1), steps=k,
                                             n_inner=3, dtype=np.float64), mean, std) for k in (12, 50, 200)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.03, errors  # Monte Carlo error of the std at n = 20000 is 0.003


def test_langevin_options_are_checked_and_it_runs_float32():
    with pytest.raises(ValueError, match="n_inner must be >= 1, got 0"):
        make_sampler("langevin", n_inner=0)
    with pytest.raises(TypeError, match="n_inner must be an integer, got 2.5"):
        make_sampler("langevin", n_inner=2.5)
    with pytest.raises(ValueError, match="step_ratio must be < 2, got 2.5"):
        make_sampler("langevin", step_ratio=2.5)
    with pytest.raises(ValueError, match="step_ratio must be > 0, got 0"):
        make_sampler("langevin", step_ratio=0.0)
    schedule = Schedule.cosine(30)
    x = sample(make_sampler("langevin", denoise=False), GaussianDataOracle(0.0, 0.5, schedule), (4, 2), schedule,
               rng=np.random.default_rng(0), steps=5)
    assert x.dtype == np.float32 and np.all(np.isfinite(x))


@given(schedules(min_T=2, max_T=60), st.integers(2, 4), seeds())
def test_langevin_defaults_are_the_documented_ones(schedule, K, seed):
    """Defaults of eq. (S6)-(S8): n_inner = 3, step_ratio r = 1, denoise, x0_hat not clipped, for
    `langevin_sample` and for the registered sampler alike (data at 1.5, so a clip would show)."""
    rng, K = np.random.default_rng(seed), min(K, schedule.T)
    oracle = GaussianDataOracle(1.5, 0.5, schedule)
    x_T, noise = rng.normal(size=(8, 2)), rng.normal(size=(K, 3, 8, 2))
    want = _langevin_by_hand(oracle, schedule.respace(K), x_T, noise, 1.0)
    assert np.abs(want).max() > 1.0
    for got in (langevin_sample(oracle, (8, 2), schedule, steps=K, x_T=x_T, noise=noise),
                sample(make_sampler("langevin"), oracle, (8, 2), schedule, steps=K, x_T=x_T, noise=noise)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@given(schedules(min_T=2, max_T=60), st.integers(2, 4), st.integers(1, 3), st.floats(0.1, 1.9), st.booleans(),
       st.sampled_from([np.float32, np.float64]), seeds())
def test_langevin_clip_x0_clips_tweedies_x0_hat_to_the_data_range(schedule, K, n_inner, ratio, denoise, dtype, seed):
    """clip_x0 = True returns clip(x0_hat, -1, 1) of the same run, and only with denoise (after eq. (S8));
    langevin_sample passes each option, its rng, dtype and trajectory on to `sample`."""
    K = min(K, schedule.T)
    oracle = GaussianDataOracle(0.0, 3.0, schedule)  # x0_hat spread over [-6, 6]
    runs = {}
    for clip in (False, True):
        options = dict(n_inner=n_inner, step_ratio=ratio, denoise=denoise, clip_x0=clip)
        got, trajectory = langevin_sample(oracle, (64, 2), schedule, rng=np.random.default_rng(seed), steps=K,
                                          dtype=dtype, return_trajectory=True, **options)
        want, want_trajectory = sample(LangevinSampler(**options), oracle, (64, 2), schedule,
                                       rng=np.random.default_rng(seed), steps=K, dtype=dtype, return_trajectory=True)
        assert got.dtype == dtype and len(trajectory) == K + 1
        np.testing.assert_array_equal(got, want)
        for a, b in zip(trajectory, want_trajectory):
            np.testing.assert_array_equal(a, b)
        runs[clip] = got
    if denoise:
        assert np.any(runs[False] < -1.0) and np.any(runs[False] > 1.0)
        np.testing.assert_array_equal(runs[True], np.clip(runs[False], -1.0, 1.0))
    else:
        np.testing.assert_array_equal(runs[True], runs[False])
