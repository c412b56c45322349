"""Forward process, posterior and reverse mean, and the eps <-> x0 <-> v round trips.

docs/forward_process.md, docs/posterior.md, docs/eps_parameterisation.md.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minidiff.kernels as kernels
from minidiff.diffusion import (Schedule, eps_from_v, eps_from_x0, p_mean_variance, predict_x0, q_mean_variance,
                                q_posterior, q_sample, q_step_mean_variance, q_step_sample, v_from_x0_eps, x0_from_eps,
                                x0_from_v)
from minidiff.testing import gradcheck
from tests.strategies_diffusion import problems, schedules, seeds


def _col(a, t):
    """Table a gathered at t as (B, 1) for (B, D) data."""
    return a[t][:, None]


# ---------------------------------------------------------------- composing one-step kernels

@given(problems(max_T=200))
def test_one_step_kernels_composed_t_times_equal_the_closed_form_algebraically(problem):
    """Push (mean, variance) through q(x_s | x_{s-1}), s = 1..t.

    mean' = sqrt(alpha_s) mean, var' = alpha_s var + beta_s; compare with q(x_t | x_0)."""
    schedule, t, x0, _, _ = problem
    mean, variance = x0.copy(), np.zeros((len(x0),) + (1,) * (x0.ndim - 1))
    for s in range(1, t.max() + 1):
        step = np.minimum(s, t)  # samples whose t is reached stop moving (index by their own last step)
        active = (s <= t).reshape((-1,) + (1,) * (x0.ndim - 1))
        new_mean, beta = q_step_mean_variance(mean, step, schedule)
        alpha = 1.0 - beta
        mean = np.where(active, new_mean, mean)
        variance = np.where(active, alpha * variance + beta, variance)
    closed_mean, closed_variance, closed_log_variance = q_mean_variance(x0, t, schedule)
    np.testing.assert_allclose(mean, closed_mean, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(variance, closed_variance, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.exp(closed_log_variance), closed_variance, rtol=1e-12)


@given(schedules(max_T=100), st.floats(-1, 1), st.data())
def test_one_step_kernels_composed_t_times_equal_the_closed_form_by_monte_carlo(schedule, x0_value, data):
    """N chains stepped t times: sample mean and variance within 5 standard errors of q(x_t | x_0)."""
    t_value = data.draw(st.integers(1, schedule.T))
    n = 4000
    rng = np.random.default_rng(1234)
    x = np.full((n, 1), x0_value)
    for s in range(1, t_value + 1):
        x = q_step_sample(x, np.full(n, s), rng.standard_normal((n, 1)), schedule)
    mean, variance, _ = q_mean_variance(np.full((1, 1), x0_value), np.array([t_value]), schedule)
    mean, variance = mean.item(), variance.item()
    assert abs(x.mean() - mean) < 5 * np.sqrt(variance / n)
    assert abs(x.var(ddof=1) - variance) < 5 * variance * np.sqrt(2.0 / (n - 1))


@given(problems())
def test_q_sample_is_the_closed_form_and_differentiable(problem):
    schedule, t, x0, eps, _ = problem
    x_t = q_sample(x0, t, eps, schedule)
    ab = schedule.alpha_bars[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    np.testing.assert_allclose(x_t, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, rtol=1e-12, atol=1e-14)
    gradcheck(lambda a, e: q_sample(a, t, e, schedule), [x0, eps])
    gradcheck(lambda a: q_sample(a, t, eps, schedule), [x0])  # one Tensor is enough for the autograd path
    gradcheck(lambda e: q_sample(x0, t, e, schedule), [eps])


# ---------------------------------------------------------------- the posterior is the Bayes product

@given(problems(max_T=300))
def test_posterior_equals_bayes_product_of_the_two_gaussians(problem):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(ab_{t-1}) x_0, 1 - ab_{t-1})."""
    schedule, t, x0, eps, _ = problem
    assume(schedule.T >= 2)
    t = np.maximum(t, 2)
    x_t = q_sample(x0, t, eps, schedule)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, b = schedule.alphas[t].reshape(shape), schedule.betas[t].reshape(shape)
    ab_prev = np.cumprod(np.concatenate([[1.0], 1.0 - schedule.betas[1:]]))[t - 1].reshape(shape)
    precision = a / b + 1.0 / (1.0 - ab_prev)  # product of Gaussians in x_{t-1}: precisions add
    mean = (np.sqrt(a) * x_t / b + np.sqrt(ab_prev) * x0 / (1.0 - ab_prev)) / precision
    got_mean, got_variance, got_log_variance = q_posterior(x0, x_t, t, schedule)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_variance, 1.0 / precision, rtol=1e-9)
    np.testing.assert_allclose(got_log_variance, -np.log(precision), rtol=1e-9, atol=1e-12)


@given(problems())
def test_posterior_at_t1_is_the_point_mass_at_x0(problem):
    schedule, _, x0, eps, _ = problem
    t = np.ones(len(x0), dtype=int)
    mean, variance, _ = q_posterior(x0, q_sample(x0, t, eps, schedule), t, schedule)
    np.testing.assert_allclose(mean, x0, rtol=1e-12, atol=1e-15)
    assert np.all(variance == 0)


@given(problems())
def test_errata_notes_posterior_coefficient_sqrt_alpha_bar_is_wrong(problem):
    """The Class 6 notes write sqrt(alpha_bar_t) (1 - ab_{t-1}) / (1 - ab_t) for the x_t coefficient;
    it is sqrt(alpha_t) (docs/errata.md X1)."""
    schedule, _, _, _, _ = problem
    assume(schedule.T >= 2)
    t = np.arange(2, schedule.T + 1)
    notes = schedule.sqrt_alpha_bars[t] * (1 - schedule.alpha_bars[t - 1]) / (1 - schedule.alpha_bars[t])
    true = schedule.posterior_mean_coef2[t]
    # sqrt(ab_t) = sqrt(alpha_t) sqrt(ab_{t-1}): the notes shrink the coefficient by sqrt(ab_{t-1}) < 1
    # at every t >= 2 (by as little as beta_1 / 2, so no fixed tolerance separates the two)
    np.testing.assert_allclose(notes, true * np.sqrt(schedule.alpha_bars[t - 1]), rtol=1e-12)
    assert (notes < true).all()


# ---------------------------------------------------------------- posterior mean minus model mean

@given(problems(), seeds())
def test_mean_gap_is_proportional_to_the_noise_error(problem, seed):
    """mu_tilde(x_t, x_0) - mu_theta(x_t, t) = beta_t / (sqrt(alpha_t) sqrt(1 - ab_t)) (eps_hat - eps)."""
    schedule, t, x0, eps, _ = problem
    eps_hat = eps + np.random.default_rng(seed).standard_normal(eps.shape)
    x_t = q_sample(x0, t, eps, schedule)
    true_mean, _, _ = q_posterior(x0, x_t, t, schedule)
    model_mean, _, _, _ = p_mean_variance(eps_hat, x_t, t, schedule)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    coef = (schedule.betas[t] / np.sqrt(schedule.alphas[t] * (1 - schedule.alpha_bars[t]))).reshape(shape)
    scale = 1.0 + np.abs(x_t) / np.sqrt(schedule.alpha_bars[t]).reshape(shape)
    np.testing.assert_allclose(true_mean - model_mean, coef * (eps_hat - eps), rtol=1e-8, atol=1e-12 * scale.max())


@given(problems(), seeds(), st.booleans(), st.sampled_from(["fixed_small", "fixed_large"]))
def test_p_mean_variance_agrees_with_the_kernels_reverse_step(problem, seed, clip_x0, variance):
    """Two formulas, one mean: posterior mean at x0_hat (here) vs 1/sqrt(alpha_t)(x_t - ...) (kernels)."""
    schedule, t, x0, eps, _ = problem
    eps_hat = eps + 0.3 * np.random.default_rng(seed).standard_normal(eps.shape)
    x_t = q_sample(x0, t, eps, schedule)
    mean, var, _, _ = p_mean_variance(eps_hat, x_t, t, schedule, variance=variance, clip_x0=clip_x0)
    z = np.random.default_rng(seed + 1).standard_normal(eps.shape)
    sigma = np.where(t == 1, 0.0, np.sqrt(schedule.model_variance(variance)[0][t])).reshape(var.shape)
    for impl in kernels.serving("numpy"):  # every available implementation that takes NumPy arrays
        step = kernels.reverse_step(x_t, t, eps_hat, z, schedule, variance=variance, clip_x0=clip_x0, impl=impl)
        np.testing.assert_allclose(step, mean + sigma * z, rtol=1e-9, atol=1e-9 * (1 + np.abs(mean).max()))


@given(problems())
def test_errata_notes_model_mean_with_sqrt_alpha_bar_is_wrong(problem):
    """The Class 6 notes write mu_theta = 1/sqrt(alpha_bar_t)(x_t - ...) (docs/errata.md X2):
    it differs from the true mean for t >= 2."""
    schedule, t, x0, eps, _ = problem
    assume(schedule.T >= 2)
    t = np.maximum(t, 2)
    x_t = q_sample(x0, t, eps, schedule)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    notes = (x_t - (schedule.betas[t] / np.sqrt(1 - schedule.alpha_bars[t])).reshape(shape) * eps) \
        / np.sqrt(schedule.alpha_bars[t]).reshape(shape)
    true_mean, _, _ = q_posterior(x0, x_t, t, schedule)
    # with the true eps, mu_theta = mu_tilde; 1/sqrt(ab_t) = 1/(sqrt(alpha_t) sqrt(ab_{t-1})) inflates it
    # by 1/sqrt(ab_{t-1}) > 1 at every t >= 2
    shrink = np.sqrt(schedule.alpha_bars[t - 1]).reshape(shape)
    scale = 1.0 + np.abs(x_t) / np.sqrt(schedule.alpha_bars[t]).reshape(shape)
    np.testing.assert_allclose(notes * shrink, true_mean, rtol=1e-9, atol=1e-12 * scale.max())
    assert (shrink < 1).all() and np.abs(notes - true_mean).max() > 0


# ---------------------------------------------------------------- eps <-> x0 <-> v round trips

@given(problems())
def test_eps_x0_v_conversions_round_trip(problem):
    schedule, t, x0, eps, _ = problem
    x_t = q_sample(x0, t, eps, schedule)
    scale = 1 + np.abs(x_t).max() / np.sqrt(schedule.alpha_bars[t]).min()
    np.testing.assert_allclose(x0_from_eps(x_t, t, eps, schedule), x0, atol=1e-10 * scale)
    np.testing.assert_allclose(eps_from_x0(x_t, t, x0, schedule), eps, atol=1e-10 * scale)
    v = v_from_x0_eps(x0, eps, t, schedule)
    np.testing.assert_allclose(x0_from_v(x_t, t, v, schedule), x0, atol=1e-12 * (1 + np.abs(x_t).max()))
    np.testing.assert_allclose(eps_from_v(x_t, t, v, schedule), eps, atol=1e-12 * (1 + np.abs(x_t).max()))
    np.testing.assert_allclose(x0 ** 2 + eps ** 2, v ** 2 + x_t ** 2, rtol=1e-10, atol=1e-12)  # a rotation


@given(problems(), seeds(), st.booleans())
def test_p_mean_variance_is_the_same_for_eps_x0_and_v_prediction(problem, seed, clip_x0):
    schedule, t, x0, eps, _ = problem
    x_t = q_sample(x0, t, eps, schedule)
    eps_hat = eps + 0.3 * np.random.default_rng(seed).standard_normal(eps.shape)
    x0_hat = x0_from_eps(x_t, t, eps_hat, schedule)
    v_hat = v_from_x0_eps(x0_hat, eps_hat, t, schedule)
    by_eps = p_mean_variance(eps_hat, x_t, t, schedule, clip_x0=clip_x0)
    scale = 1 + np.abs(x_t).max() / np.sqrt(schedule.alpha_bars[t]).min()
    for output, prediction in ((x0_hat, "x0"), (v_hat, "v")):
        other = p_mean_variance(output, x_t, t, schedule, clip_x0=clip_x0, prediction=prediction)
        for a, b in zip(by_eps, other):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * scale)


@given(problems())
def test_p_mean_variance_clips_x0_hat_and_picks_the_variance(problem):
    schedule, t, x0, eps, _ = problem
    x_t = q_sample(x0, t, eps, schedule)
    _, var, log_var, x0_hat = p_mean_variance(3.0 * eps, x_t, t, schedule, variance="fixed_large", clip_x0=True)
    assert np.all(np.abs(x0_hat) <= 1.0)
    large, log_large = schedule.model_variance("fixed_large")
    np.testing.assert_array_equal(var.ravel(), large[t])
    np.testing.assert_array_equal(log_var.ravel(), log_large[t])


def test_bad_timesteps_raise_clear_errors():
    """Each message starts with the function that refused t."""
    s, x = Schedule.cosine(10), np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"^q_sample: t must lie in 1..T = 1..10, got values in 0..2"):
        q_sample(x, np.array([0, 1, 2]), x, s)
    with pytest.raises(ValueError, match=r"^q_posterior: t must lie in 1..T = 1..10"):
        q_posterior(x, x, np.array([1, 2, 11]), s)
    with pytest.raises(ValueError, match=r"^p_mean_variance: t must have shape \(B,\) = \(3,\)"):
        p_mean_variance(x, x, np.array([1, 2]), s)
    with pytest.raises(TypeError, match="^q_mean_variance: t must hold integer timesteps"):
        q_mean_variance(x, np.array([1.0, 2.0, 3.0]), s)
    with pytest.raises(ValueError, match=r"^q_mean_variance: x0 must have a leading batch axis"):
        q_mean_variance(np.array(0.5), np.array([1]), s)  # a 0-d x has no batch
    with pytest.raises(ValueError, match="impl"):
        q_sample(x, np.array([1, 2, 3]), x, s, impl="no-such-kernel")
    with pytest.raises(ValueError, match="variance"):
        p_mean_variance(x, x, np.array([1, 2, 3]), s, variance="learned")
    with pytest.raises(ValueError, match="prediction"):
        p_mean_variance(x, x, np.array([1, 2, 3]), s, prediction="score")


@given(problems())
def test_q_step_sample_is_the_step_mean_plus_its_scaled_noise_and_at_t1_is_q_sample(problem):
    """eq. (F1) as a function of its noise: x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps; at t = 1,
    where alpha_bar_1 = alpha_1, one step from x_0 and the closed form (F5) give the same x_1 for the same eps."""
    schedule, t, x0, eps, _ = problem
    shape = (-1,) + (1,) * (x0.ndim - 1)
    np.testing.assert_allclose(q_step_sample(x0, t, eps, schedule),
                               np.sqrt(schedule.alphas[t]).reshape(shape) * x0
                               + np.sqrt(schedule.betas[t]).reshape(shape) * eps, rtol=1e-12, atol=1e-14)
    ones = np.ones_like(t)
    np.testing.assert_allclose(q_step_sample(x0, ones, eps, schedule), q_sample(x0, ones, eps, schedule),
                               rtol=1e-10, atol=1e-12)


# each function of two same-shaped arrays, called with the second one of shape (B, 1), which would broadcast
TWO_ARRAYS = [
    ("q_step_sample", ("x_prev", "eps"), lambda a, b, t, s: q_step_sample(a, t, b, s)),
    ("q_sample", ("x0", "eps"), lambda a, b, t, s: q_sample(a, t, b, s)),
    ("q_posterior", ("x_t", "x0"), lambda a, b, t, s: q_posterior(b, a, t, s)),
    ("x0_from_eps", ("x_t", "eps"), lambda a, b, t, s: x0_from_eps(a, t, b, s)),
    ("eps_from_x0", ("x_t", "x0"), lambda a, b, t, s: eps_from_x0(a, t, b, s)),
    ("v_from_x0_eps", ("x0", "eps"), lambda a, b, t, s: v_from_x0_eps(a, b, t, s)),
    ("x0_from_v", ("x_t", "v"), lambda a, b, t, s: x0_from_v(a, t, b, s)),
    ("eps_from_v", ("x_t", "v"), lambda a, b, t, s: eps_from_v(a, t, b, s)),
    ("p_mean_variance", ("x_t", "eps_hat"), lambda a, b, t, s: p_mean_variance(b, a, t, s)),
]


@pytest.mark.parametrize("where, names, call", TWO_ARRAYS, ids=[w for w, _, _ in TWO_ARRAYS])
def test_arrays_of_different_shapes_are_refused_not_broadcast(where, names, call):
    """The two arrays of each equation have one shape; a (B, 1) partner is named, never broadcast."""
    s, t = Schedule.cosine(10), np.array([1, 5])
    full, column = np.zeros((2, 3)), np.zeros((2, 1))
    with pytest.raises(ValueError, match=rf"^{where}: {names[1]} must have shape .*\(the shape of {names[0]}\)"):
        call(full, column, t, s)
    with pytest.raises(ValueError, match=rf"^{where}: {names[1]} must have shape .*\(the shape of {names[0]}\)"):
        call(column, full, t, s)


@given(problems())
def test_predict_x0_reads_the_model_output_as_eps_by_default(problem):
    schedule, t, x0, eps, _ = problem
    x_t = q_sample(x0, t, eps, schedule)
    np.testing.assert_array_equal(predict_x0(eps, x_t, t, schedule), x0_from_eps(x_t, t, eps, schedule))


@given(schedules(max_T=30), st.sampled_from(["eps", "x0", "v"]), seeds())
def test_predict_x0_refuses_a_model_output_of_another_shape_for_every_prediction(schedule, prediction, seed):
    """(E1), (E4) and x0 itself are elementwise in x_t and the model's output: a (B, 1) output must not
    broadcast against (B, D) data, whichever the prediction (x0 is returned as it is, so only this check
    guards it)."""
    x_t = np.random.default_rng(seed).normal(size=(3, 4))
    t = np.full(3, schedule.T)
    for output, x in ((x_t[:, :1], x_t), (x_t, x_t[:, :1])):
        with pytest.raises(ValueError, match="must have shape"):
            predict_x0(output, x, t, schedule, prediction=prediction)
