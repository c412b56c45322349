"""Losses, VLB terms and bits/dim: KL = w_t ||eps - eps_hat||^2 + c, the Gaussian-data oracle, importance sampling.

docs/eps_parameterisation.md, docs/vlb_bits_per_dim.md.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minidiff.kernels as kernels
from minidiff import Tensor
from minidiff.diffusion import (GaussianDataOracle, Schedule, elbo_weighted_loss, eps_loss, l_simple, nll_bpd,
                                nll_bpd_importance, p_mean_variance, prior_bpd, q_posterior, q_sample,
                                q_step_sample, vb_terms_bpd)
from minidiff.distributions import discretized_gaussian_log_likelihood, normal_kl
from minidiff.diffusion.elbo import fused_eps_loss
from minidiff.testing import gradcheck
from tests.strategies_diffusion import problems, schedules, seeds

GRID = np.arange(256) / 127.5 - 1.0
variances = st.sampled_from(["fixed_small", "fixed_large"])


def _on_grid(x0):
    """Snap data in [-1, 1] to the 256 levels the discretised decoder expects."""
    return np.round((x0 + 1.0) * 127.5) / 127.5 - 1.0


# ---------------------------------------------------------------- eps losses

@given(problems(), seeds())
def test_L_simple_is_the_mean_squared_noise_error_on_arrays_and_tensors(problem, seed):
    _, _, _, eps, _ = problem
    eps_hat = np.random.default_rng(seed).standard_normal(eps.shape)
    np.testing.assert_allclose(l_simple(eps_hat, eps), np.mean((eps - eps_hat) ** 2), rtol=1e-13)
    gradcheck(lambda e: l_simple(e, eps), [eps_hat])


@given(problems(), seeds())
def test_eps_loss_with_weights_matches_the_fused_kernels(problem, seed):
    _, _, _, eps, _ = problem
    rng = np.random.default_rng(seed)
    eps_hat, weights = rng.standard_normal(eps.shape), rng.uniform(0.1, 3.0, len(eps))
    ours = eps_loss(eps_hat, eps, weights)
    for impl in kernels.serving("numpy"):
        np.testing.assert_allclose(kernels.eps_loss(eps_hat, eps, weights, impl=impl)[0], ours, rtol=1e-10)
    t = Tensor(eps_hat, requires_grad=True)
    fused = fused_eps_loss(t, eps, weights)
    fused.backward()
    np.testing.assert_allclose(fused.item(), ours, rtol=1e-10)
    gradcheck(lambda e: eps_loss(e, eps, weights), [eps_hat])


# ---------------------------------------------------------------- each KL term is w_t ||eps - eps_hat||^2 + c_t

@given(problems(), seeds(), variances)
def test_kl_term_is_w_t_times_squared_noise_error_plus_a_constant(problem, seed, variance):
    schedule, t, x0, eps, _ = problem
    assume(schedule.T >= 2)
    t, x0 = np.maximum(t, 2), _on_grid(x0)  # the discretised decoder (unused for t >= 2) takes data on its grid
    eps_hat = eps + np.random.default_rng(seed).standard_normal(eps.shape)
    x_t = q_sample(x0, t, eps, schedule)
    dims = x0[0].size
    nats = math.log(2.0) * dims
    kl = vb_terms_bpd(x0, x_t, t, eps_hat, schedule, variance) * nats
    constant = vb_terms_bpd(x0, x_t, t, eps, schedule, variance) * nats  # eps_hat = eps: the means coincide
    w = schedule.elbo_weight_table(variance)[t]
    squared = ((eps - eps_hat) ** 2).reshape(len(t), -1).sum(axis=1)
    np.testing.assert_allclose(kl - constant, w * squared, rtol=1e-7, atol=1e-9 * (1 + constant.max()))
    if variance == "fixed_small":
        np.testing.assert_allclose(constant, 0.0, atol=1e-10)
    loss = elbo_weighted_loss(eps_hat, eps, t, schedule, variance)
    np.testing.assert_allclose(loss, np.mean((kl - constant) / dims), rtol=1e-7, atol=1e-12)


@given(problems(), seeds(), variances, st.booleans(), st.sampled_from(["exact", "tanh"]))
def test_vb_term_at_t1_is_the_discretised_decoder_nll(problem, seed, variance, clip_x0, cdf):
    schedule, t, x0, eps, _ = problem
    x0, t = _on_grid(x0), np.ones(len(t), dtype=int)
    eps_hat = eps + 0.1 * np.random.default_rng(seed).standard_normal(eps.shape)
    x_t = q_sample(x0, t, eps, schedule)
    mean, _, log_var, _ = p_mean_variance(eps_hat, x_t, t, schedule, variance, clip_x0)
    assert np.all(log_var.ravel() == schedule.posterior_log_variance_clipped[1])  # the t = 1 convention
    log_lik = discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, cdf=cdf)
    expected = -log_lik.reshape(len(t), -1).mean(axis=1) / math.log(2.0)
    got = vb_terms_bpd(x0, x_t, t, eps_hat, schedule, variance, clip_x0, cdf=cdf)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@given(problems())
def test_prior_bpd_is_the_kl_of_q_xT_to_the_standard_normal(problem):
    schedule, _, x0, _, _ = problem
    x0 = x0.copy()
    x0.flat[0] = 0.0  # a pixel at 0 (the middle grey level of odd-K grids) gives mean 0
    ab = schedule.alpha_bars[-1]
    kl = 0.5 * (ab * x0 ** 2 + (1 - ab) - 1 - np.log1p(-ab))
    np.testing.assert_allclose(prior_bpd(x0, schedule), kl.reshape(len(x0), -1).mean(axis=1) / math.log(2.0),
                               rtol=1e-9, atol=1e-15)


@given(problems(max_batch=3), seeds(), variances)
def test_vb_terms_gradcheck_in_eps_hat(problem, seed, variance):
    schedule, t, x0, eps, _ = problem
    x0 = _on_grid(x0)
    x_t = q_sample(x0, t, eps, schedule)
    eps_hat = eps + 0.1 * np.random.default_rng(seed).standard_normal(eps.shape)
    gradcheck(lambda e: vb_terms_bpd(x0, x_t, t, e, schedule, variance), [eps_hat], rtol=1e-4, atol=1e-7)


def test_vb_terms_refuse_an_unknown_decoder():
    s, x = Schedule.cosine(5), np.zeros((2, 3))
    with pytest.raises(ValueError, match="decoder"):
        vb_terms_bpd(x, x, np.array([1, 2]), x, s, decoder="logistic")


# ---------------------------------------------------------------- the Gaussian-data oracle

oracle_configs = st.tuples(
    st.lists(st.floats(-2, 2), min_size=1, max_size=3),
    st.lists(st.floats(0.05, 3.0), min_size=1, max_size=3)).map(
    lambda ms: (np.array(ms[0][:min(len(ms[0]), len(ms[1]))]), np.array(ms[1][:min(len(ms[0]), len(ms[1]))])))


@given(schedules(max_T=60), oracle_configs, st.integers(1, 40), seeds())
def test_oracle_eps_hat_is_the_conditional_mean_of_the_noise(schedule, config, t_value, seed):
    """E[eps | x_t] by Gaussian regression: Cov(eps, x_t) / Var(x_t) (x_t - E x_t), computed here."""
    m, s = config
    t_value = min(t_value, schedule.T)
    oracle = GaussianDataOracle(m, s, schedule)
    x_t = np.random.default_rng(seed).normal(size=(5, len(m)))
    ab = schedule.alpha_bars[t_value]
    expected = np.sqrt(1 - ab) / (ab * s ** 2 + 1 - ab) * (x_t - np.sqrt(ab) * m)
    np.testing.assert_allclose(oracle(x_t, np.full(5, t_value)), expected, rtol=1e-12, atol=1e-14)


@given(schedules(max_T=200), oracle_configs, variances)
def test_vlb_never_exceeds_the_true_log_likelihood(schedule, config, variance):
    """E_data[-L_VLB] <= E_data[log p(x_0)] = -H: the expected gap is >= 0 for any schedule and data scale."""
    m, s = config
    oracle = GaussianDataOracle(m, s, schedule)
    gap = oracle.expected_vlb_terms(m.shape, variance).sum() - oracle.entropy(m.shape)
    assert gap >= -1e-9 * (1 + oracle.entropy(m.shape) ** 2)


@given(st.sampled_from(["linear", "cosine", "quadratic", "sigmoid"]), st.integers(21, 250),
       st.lists(st.floats(-2, 2), min_size=1, max_size=3), st.floats(0.7, 3.0))
def test_vlb_gap_shrinks_as_T_grows(kind, T, m, s):
    """gap(2T) < gap(T) with fixed-small variance for data scale s >= 0.7. Not for every scale:
    docs/vlb_bits_per_dim.md §5 lists counterexamples (cosine T = 21, s = 0.5; linear T = 216, s = 0.07)."""
    m = np.array(m)
    gaps = []
    for steps in (T, 2 * T):
        oracle = GaussianDataOracle(m, s, getattr(Schedule, kind)(steps))
        gaps.append(oracle.expected_vlb_terms(m.shape).sum() - oracle.entropy(m.shape))
    assert 0 <= gaps[1] < gaps[0]


@given(schedules(max_T=40), oracle_configs, variances)
def test_full_loop_bound_matches_the_analytic_expected_terms(schedule, config, variance):
    """Monte Carlo over x_0 ~ data and the forward noise: mean of nll_bpd within 5 standard errors."""
    m, s = config
    oracle = GaussianDataOracle(m, s, schedule)
    rng = np.random.default_rng(1234)
    x0 = oracle.sample(rng, 3000, m.shape)
    result = nll_bpd(oracle, x0, schedule, rng, variance=variance, decoder="gaussian")
    nats = result["total_bpd"] * math.log(2.0) * m.size
    expected = oracle.expected_vlb_terms(m.shape, variance).sum()
    assert abs(nats.mean() - expected) < 5 * nats.std(ddof=1) / np.sqrt(len(nats))
    np.testing.assert_allclose(result["total_bpd"], result["vb_bpd"].sum(axis=1) + result["prior_bpd"], rtol=1e-12)


def _chain_log_ratio(oracle, schedule, n, rng):
    """n draws of log p(x_{0:T}) - log q(x_{1:T} | x_0), the notes' chain form, by simulating q step by step."""
    path = [oracle.sample(rng, n, oracle.mean.shape)]
    log_ratio = np.zeros(n)
    for t in range(1, schedule.T + 1):  # x_t ~ q(x_t | x_{t-1}); subtract log q(x_t | x_{t-1})
        path.append(q_step_sample(path[-1], np.full(n, t), rng.standard_normal(path[-1].shape), schedule))
        log_ratio -= _log_normal(path[t], np.sqrt(schedule.alphas[t]) * path[t - 1], schedule.betas[t])
    log_ratio += _log_normal(path[-1], 0.0, 1.0)  # log p(x_T)
    for t in range(schedule.T, 0, -1):  # log p_theta(x_{t-1} | x_t), the Gaussian decoder at t = 1
        tt = np.full(n, t)
        mean, _, log_var, _ = p_mean_variance(oracle(path[t], tt), path[t], tt, schedule)
        log_ratio += _log_normal(path[t - 1], mean, np.exp(log_var))
    return log_ratio


@given(schedules(min_T=2, max_T=30), oracle_configs)
def test_chain_form_of_the_elbo_equals_the_kl_form_with_the_reconstruction_term(schedule, config):
    """E_q[log p(x_{0:T}) - log q(x_{1:T} | x_0)] = -(L_T + sum_{t>=2} L_{t-1} + L_0), within 5 standard errors."""
    oracle = GaussianDataOracle(*config, schedule)
    log_ratio = _chain_log_ratio(oracle, schedule, 2000, np.random.default_rng(99))
    terms = oracle.expected_vlb_terms(config[0].shape)
    assert abs(log_ratio.mean() + terms.sum()) < 5 * log_ratio.std(ddof=1) / np.sqrt(len(log_ratio))


@given(st.integers(21, 40), oracle_configs)
def test_errata_notes_kl_form_without_the_reconstruction_term_misses(T, config):
    """The notes' KL form, -L_T - sum_{t>1} L_{t-1}, drops E[log p(x_0 | x_1)]: for the linear schedule it
    misses the chain form by many standard errors (docs/errata.md X4)."""
    schedule = Schedule.linear(T)
    oracle = GaussianDataOracle(*config, schedule)
    log_ratio = _chain_log_ratio(oracle, schedule, 2000, np.random.default_rng(98))
    terms = oracle.expected_vlb_terms(config[0].shape)
    notes = -(terms[0] + terms[2:].sum())
    assert abs(log_ratio.mean() - notes) > 5 * log_ratio.std(ddof=1) / np.sqrt(len(log_ratio))


def _log_normal(x, mean, variance):
    """sum over dims of log N(x; mean, variance), (n,)."""
    variance = np.broadcast_to(variance, np.shape(x))
    d = -0.5 * (np.log(2 * np.pi * variance) + (x - mean) ** 2 / variance)
    return d.reshape(len(x), -1).sum(axis=1)


# ---------------------------------------------------------------- importance sampling over t is unbiased

@given(schedules(min_T=2, max_T=40), st.booleans(), seeds())
def test_importance_sampled_bpd_is_unbiased_for_the_full_loop(schedule, uniform, proposal_seed):
    oracle = GaussianDataOracle(np.array([0.2, -0.1]), np.array([0.5, 0.4]), schedule)
    proposal = None
    if not uniform:
        w = np.random.default_rng(proposal_seed).uniform(0.2, 1.0, schedule.T)
        proposal = w / w.sum()
    x0 = _on_grid(np.clip(oracle.sample(np.random.default_rng(5), 2, (2,)), -1, 1))
    reps = 1500
    x_rep = np.repeat(x0, reps, axis=0)
    rng = np.random.default_rng(2024)
    estimates = nll_bpd_importance(oracle, x_rep, schedule, rng, n_t=1, proposal=proposal).reshape(2, reps)
    loops = nll_bpd(oracle, np.repeat(x0, 300, axis=0), schedule, rng)["total_bpd"].reshape(2, 300)
    for b in range(2):
        se = np.hypot(estimates[b].std(ddof=1) / np.sqrt(reps), loops[b].std(ddof=1) / np.sqrt(300))
        assert abs(estimates[b].mean() - loops[b].mean()) < 5 * se


@given(schedules(max_T=40), problems(max_T=1), variances, st.floats(0.05, 1.0), st.integers(1, 4), seeds())
def test_importance_sampling_with_the_proposal_proportional_to_the_terms_is_exact(
        schedule, problem, variance, offset, n_t, seed):
    """eq. (L9) with no noise: a model that returns the true noise plus a fixed offset makes every term
    L_{t-1} a constant c_t of x_0 (eq. E8: mu_tilde - mu_theta is a fixed multiple of the offset), so with
    p(t) = c_t / sum_s c_s each draw's L_T + c_t / p(t) is the full loop's total, whatever t is drawn."""
    _, _, x0, _, _ = problem
    x0 = _on_grid(x0[:1])

    def model(x_t, t):
        x0_rows = np.concatenate([x0] * (len(x_t) // len(x0)))
        return (x_t - np.sqrt(schedule.alpha_bars[t]).reshape((-1,) + (1,) * (x_t.ndim - 1)) * x0_rows) \
            / np.sqrt(1 - schedule.alpha_bars[t]).reshape((-1,) + (1,) * (x_t.ndim - 1)) + offset

    loop = nll_bpd(model, x0, schedule, np.random.default_rng(seed), variance=variance)
    terms = loop["vb_bpd"][0]
    assume(np.all(terms > 1e-9 * terms.sum()))  # every c_t > 0, so the proposal is positive
    estimate = nll_bpd_importance(model, np.repeat(x0, 8, axis=0), schedule, np.random.default_rng(seed + 1),
                                  n_t=n_t, proposal=terms / terms.sum(), variance=variance)
    np.testing.assert_allclose(estimate, loop["total_bpd"][0], rtol=1e-7)


def test_importance_sampling_refuses_a_bad_proposal():
    s = Schedule.cosine(4)
    oracle = GaussianDataOracle(0.0, 0.5, s)
    for bad in ([0.5, 0.5], [0.5, 0.5, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]):
        with pytest.raises(ValueError, match="proposal"):
            nll_bpd_importance(oracle, np.zeros((2, 2)), s, np.random.default_rng(0), proposal=bad)
    for bad in ([[0.5], [0.25, 0.25]], ["0.25"] * 4, np.full(4, 0.25 + 0j)):          # ragged, text, complex
        with pytest.raises(TypeError, match="proposal must hold T = 4 probabilities"):
            nll_bpd_importance(oracle, np.zeros((2, 2)), s, np.random.default_rng(0), proposal=bad)


@given(problems(), seeds())
def test_fused_eps_loss_takes_weights_as_a_tensor_or_an_array_and_passes_impl_on(problem, seed):
    """eq. (E13): a Tensor of weights is the same constant w_b as its array; impl reaches the kernel."""
    _, _, _, eps, _ = problem
    rng = np.random.default_rng(seed)
    eps_hat, weights = rng.standard_normal(eps.shape), rng.uniform(0.1, 3.0, len(eps))
    np.testing.assert_allclose(fused_eps_loss(eps_hat, eps, Tensor(weights)), eps_loss(eps_hat, eps, weights),
                               rtol=1e-10)
    with pytest.raises(ValueError, match="impl"):
        fused_eps_loss(eps_hat, eps, weights, impl="no-such-kernel")


@given(problems(), seeds())
def test_elbo_weighted_loss_uses_the_fixed_small_weights_by_default(problem, seed):
    schedule, t, _, eps, _ = problem
    eps_hat = eps + np.random.default_rng(seed).standard_normal(eps.shape)
    np.testing.assert_array_equal(elbo_weighted_loss(eps_hat, eps, t, schedule),
                                  elbo_weighted_loss(eps_hat, eps, t, schedule, "fixed_small"))


def test_the_losses_refuse_arrays_that_would_broadcast_naming_the_function():
    s, t = Schedule.cosine(10), np.array([1, 5])
    full, column = np.zeros((2, 3)), np.zeros((2, 1))
    for where, call, first, second in (
            ("l_simple", lambda a, b: l_simple(a, b), "eps_hat", "eps"),
            ("eps_loss", lambda a, b: eps_loss(a, b), "eps_hat", "eps"),
            ("elbo_weighted_loss", lambda a, b: elbo_weighted_loss(b, a, t, s), "eps", "eps_hat")):
        for a, b in ((full, column), (column, full)):
            with pytest.raises(ValueError, match=rf"^{where}: {second} must have shape .*\(the shape of {first}\)"):
                call(a, b)
    with pytest.raises(ValueError, match=r"^eps_loss: weights must have shape \(2,\) \(one per sample\)"):
        eps_loss(full, full, np.ones(3))
    with pytest.raises(ValueError, match=r"^elbo_weighted_loss: t must lie in 1..T"):
        elbo_weighted_loss(full, full, np.array([0, 1]), s)


def test_a_model_output_of_another_shape_is_refused_not_broadcast():
    s, x0 = Schedule.cosine(4), np.zeros((2, 3))
    for bad in (lambda x_t, t: np.zeros((len(x_t), 1)), lambda x_t, t: list(np.zeros(x_t.shape))):
        with pytest.raises((ValueError, TypeError), match=r"^nll_bpd: model\(x_t, t\) must"):
            nll_bpd(bad, x0, s, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^nll_bpd: model\(x_t, t\) must have shape \(2, 3\) \(that of x_t\)"):
        nll_bpd(lambda x_t, t: np.zeros((len(x_t), 1)), x0, s, np.random.default_rng(0))


@given(problems(), seeds(), st.sampled_from([256, 17, 2]))
def test_vb_term_at_t1_takes_the_datas_number_of_levels(problem, seed, levels):
    """eq. (L5) with h = 1/(K - 1): the decoder term at t = 1 bins on the data's own K-level grid."""
    schedule, t, x0, eps, _ = problem
    half = (levels - 1) / 2
    x0, t = np.round((np.clip(x0, -1, 1) + 1) * half) / half - 1, np.ones(len(t), dtype=int)
    eps_hat = eps + 0.1 * np.random.default_rng(seed).standard_normal(eps.shape)
    x_t = q_sample(x0, t, eps, schedule)
    mean, _, log_var, _ = p_mean_variance(eps_hat, x_t, t, schedule)
    log_lik = discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, levels=levels)
    np.testing.assert_allclose(vb_terms_bpd(x0, x_t, t, eps_hat, schedule, levels=levels),
                               -log_lik.reshape(len(t), -1).mean(axis=1) / math.log(2.0), rtol=1e-12)


@given(problems(), seeds(), st.sampled_from(["eps", "x0", "v"]), st.booleans())
def test_kl_terms_use_the_models_prediction_and_clipping(problem, seed, prediction, clip_x0):
    """eq. (L2) for t >= 2 is KL(q_posterior || p_mean_variance) with the same prediction and clip_x0;
    the default variance is fixed_small."""
    schedule, t, x0, eps, _ = problem
    assume(schedule.T >= 2)
    t, x0 = np.maximum(t, 2), _on_grid(x0)  # the decoder (unused for t >= 2) takes data on its grid
    output = eps + 3.0 * np.random.default_rng(seed).standard_normal(eps.shape)  # far enough out to clip
    x_t = q_sample(x0, t, eps, schedule)
    true_mean, _, true_log_var = q_posterior(x0, x_t, t, schedule)
    mean, _, log_var, _ = p_mean_variance(output, x_t, t, schedule, "fixed_small", clip_x0, prediction)
    kl = normal_kl(true_mean, true_log_var, mean, log_var).reshape(len(t), -1).mean(axis=1) / math.log(2.0)
    np.testing.assert_allclose(vb_terms_bpd(x0, x_t, t, output, schedule, clip_x0=clip_x0, prediction=prediction),
                               kl, rtol=1e-10, atol=1e-14)


def test_the_bound_passes_its_options_to_every_term(monkeypatch):
    """nll_bpd and nll_bpd_importance hand variance, clip_x0, decoder, cdf and levels to vb_terms_bpd."""
    import minidiff.diffusion.elbo as elbo_module
    seen, real = [], elbo_module.vb_terms_bpd

    def spy(x0, x_t, t, eps_hat, schedule, variance="fixed_small", clip_x0=False, prediction="eps", **kw):
        seen.append((variance, clip_x0, kw["decoder"], kw["cdf"], kw["levels"]))
        return real(x0, x_t, t, eps_hat, schedule, variance, clip_x0, prediction, **kw)

    monkeypatch.setattr(elbo_module, "vb_terms_bpd", spy)
    s, x0 = Schedule.cosine(3), np.zeros((2, 3))
    oracle = GaussianDataOracle(0.0, 0.5, s)
    options = dict(variance="fixed_large", clip_x0=True, decoder="discretized", cdf="tanh", levels=17)
    nll_bpd(oracle, x0, s, np.random.default_rng(0), **options)
    nll_bpd_importance(oracle, x0, s, np.random.default_rng(0), **options)
    assert seen and set(seen) == {("fixed_large", True, "discretized", "tanh", 17)}


@given(schedules(min_T=2, max_T=20), seeds())
def test_importance_sampling_defaults_to_one_uniform_draw_and_renormalises_the_proposal(schedule, seed):
    """No proposal is p(t) = 1/T and the default n_t is 1; a proposal that sums to 1 within the
    tolerance is renormalised, so the estimate is that of the exact one."""
    oracle = GaussianDataOracle(np.array([0.2, -0.1]), np.array([0.5, 0.4]), schedule)
    x0 = _on_grid(np.clip(oracle.sample(np.random.default_rng(seed), 4, (2,)), -1, 1))
    base = nll_bpd_importance(oracle, x0, schedule, np.random.default_rng(seed))
    uniform = np.full(schedule.T, 1.0 / schedule.T)
    for proposal in (uniform, uniform * (1 + 5e-6)):
        np.testing.assert_allclose(nll_bpd_importance(oracle, x0, schedule, np.random.default_rng(seed), n_t=1,
                                                      proposal=proposal), base, rtol=1e-12)
    with pytest.raises(ValueError, match="n_t"):
        nll_bpd_importance(oracle, x0, schedule, np.random.default_rng(seed), n_t=0)


def test_vb_terms_refuse_arrays_that_would_broadcast():
    s, t, full, column = Schedule.cosine(10), np.array([1, 5]), np.zeros((2, 3)), np.zeros((2, 1))
    for args, name in (((full, column, full), "x0"), ((column, full, full), "x0"), ((full, full, column), "eps_hat")):
        x0, x_t, eps_hat = args
        with pytest.raises(ValueError, match=rf"^vb_terms_bpd: {name} must have shape .*\(the shape of x_t\)"):
            vb_terms_bpd(x0, x_t, t, eps_hat, s)


# ---------------------------------------------------------------- the Gaussian data oracle's own closed forms

@given(schedules(max_T=12), oracle_configs, seeds())
def test_oracle_samples_log_density_entropy_and_prior_term_agree_with_each_other(schedule, config, seed):
    """For data N(m, s^2): sample() has mean m and standard deviation s; log_prob is the density of N(m, s^2)
    (it integrates to 1 and peaks at m with 1/sqrt(2 pi s^2) per dimension); entropy = E[-log_prob]; the
    prior term L_T of expected_vlb_terms (a (T + 1,) array) is E over the data of KL(q(x_T | x_0) || N(0, I)).
    The Monte Carlo ones within 5 standard errors, over 4000 draws."""
    m, s = config
    oracle, n = GaussianDataOracle(m, s, schedule), 4000
    x0 = oracle.sample(np.random.default_rng(seed), n, m.shape)
    assert x0.shape == (n,) + m.shape
    assert np.all(np.abs(x0.mean(axis=0) - m) < 5 * s / math.sqrt(n))
    assert np.all(np.abs(x0.std(axis=0, ddof=1) / s - 1) < 5 / math.sqrt(2 * (n - 1)))
    np.testing.assert_allclose(oracle.log_prob(m[None]), [-0.5 * np.sum(np.log(2 * math.pi * s ** 2))], rtol=1e-12)
    grid = np.linspace(-12, 12, 4001)                           # one dimension at a time, the others at m
    for d in range(m.size):
        points = np.repeat(m[None], len(grid), axis=0)
        points[:, d] = m[d] + s[d] * grid
        density = np.exp(oracle.log_prob(points) - oracle.log_prob(m[None]) - 0.5 * np.log(2 * math.pi * s[d] ** 2))
        assert np.trapezoid(density, points[:, d]) == pytest.approx(1.0, rel=1e-6)
    minus_log_p = -oracle.log_prob(x0)
    assert abs(minus_log_p.mean() - oracle.entropy(m.shape)) < 5 * minus_log_p.std(ddof=1) / math.sqrt(n)
    terms = oracle.expected_vlb_terms(m.shape)
    assert terms.shape == (schedule.T + 1,)
    prior_nats = prior_bpd(x0, schedule) * math.log(2.0) * m.size
    assert abs(prior_nats.mean() - terms[0]) < 5 * prior_nats.std(ddof=1) / math.sqrt(n) + 1e-12 * abs(terms[0])


def test_the_gaussian_oracle_refuses_a_zero_or_negative_std_and_integer_arrays():
    s = Schedule.cosine(5)
    for std in (0.0, np.array([1.0, 0.0]), -1.0):
        with pytest.raises(ValueError, match="std must be positive"):
            GaussianDataOracle(0.0, std, s)
    with pytest.raises(TypeError, match="mean must hold floating-point"):
        GaussianDataOracle(np.array([1, 2]), 1.0, s)
    with pytest.raises(ValueError, match="std must be finite"):
        GaussianDataOracle(0.0, np.inf, s)
