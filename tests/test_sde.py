"""The SDE view: continuous beta(tau), reverse-SDE and probability-flow samplers, the ODE likelihood, docs/sde.md.

Oracle: GaussianDataOracle (data N(m, s^2)), whose q(x_t), score and log-density are closed-form.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff
from minidiff.diffusion import (GaussianDataOracle, ProbabilityFlowSampler, Schedule, alpha_bar_continuous,
                                beta_continuous, ddim_sample, ode_log_likelihood, ode_nll_bpd, ode_sample,
                                make_sampler, probability_flow_drift, sample, sde_sample)
from minidiff.diffusion.sde import (eps_and_divergence, ode_log_likelihood_terms, rademacher_probe,
                                    resolve_divergence, unit_probes)
from minidiff.models.ddpm import DDPM
from tests.strategies_diffusion import schedules, seeds

MIX = np.array([[1.0, 0.4, -0.3], [0.2, 0.8, 0.5], [-0.6, 0.1, 1.1]])


def coupled_model(x_t, t):
    """A nonlinear stand-in for a network with a full (non-diagonal) Jacobian; accepts arrays and Tensors."""
    scale = 0.02 * t.reshape(-1, 1)
    return minidiff.ops.tanh(x_t @ MIX + scale) - 0.2 * x_t


def smooth_model(x_t, t):
    return np.tanh(x_t + 0.01 * t.reshape((-1,) + (1,) * (x_t.ndim - 1))) - 0.3 * x_t


# ---------------------------------------------------------------- beta(tau), eq. (W1)-(W2)

@given(schedules(max_T=300))
def test_continuous_alpha_bar_meets_the_chain_at_every_node_and_decays_at_rate_beta(schedule):
    T = schedule.T
    nodes = np.arange(T + 1) / T
    np.testing.assert_allclose(alpha_bar_continuous(schedule, nodes), schedule.alpha_bars, rtol=1e-12)
    mid = (np.arange(1, T + 1) - 0.5) / T                    # inside each interval ((t-1)/T, t/T)
    h = 1e-3 / T
    log_ab = np.log(alpha_bar_continuous(schedule, mid + h)), np.log(alpha_bar_continuous(schedule, mid - h))
    rate = -(log_ab[0] - log_ab[1]) / (2 * h)
    np.testing.assert_allclose(rate, beta_continuous(schedule, mid), rtol=1e-6)
    small = schedule.betas[1:] < 1e-3                        # beta(tau) ~ T beta_t for small beta_t
    np.testing.assert_allclose(beta_continuous(schedule, mid)[small], T * schedule.betas[1:][small], rtol=1e-3)


# ---------------------------------------------------------------- DDIM is Euler on the probability flow, eq. (W8)

@given(schedules(max_T=80), st.integers(2, 12), seeds(), st.booleans())
def test_ode_euler_is_ddim_with_eta_0(schedule, steps, seed, clip_x0):
    steps = min(steps, schedule.T)
    if steps == 1 and schedule.T > 1:
        steps = 2
    x_T = np.random.default_rng(seed).normal(size=(3, 2))
    euler = ode_sample(smooth_model, (3, 2), schedule, steps=steps, solver="euler", clip_x0=clip_x0, x_T=x_T,
                       dtype=np.float64)
    ddim = ddim_sample(smooth_model, (3, 2), schedule, steps=steps, eta=0.0, clip_x0=clip_x0, x_T=x_T,
                       dtype=np.float64)
    np.testing.assert_allclose(euler, ddim, rtol=1e-9, atol=1e-9)


def _analytic_score(x, tau, schedule, mean, std):
    ab = float(alpha_bar_continuous(schedule, tau))
    return -(x - math.sqrt(ab) * mean) / (ab * std ** 2 + 1.0 - ab)


def _gaussian_flow(x_T, t, schedule, mean, std):
    """The exact probability flow for data N(m, s^2): d xbar / d sigma = sigma (xbar - m) / (s^2 + sigma^2), so
    xbar_t - m = (xbar_T - m) sqrt((s^2 + sigma_t^2) / (s^2 + sigma_T^2)); returns x_t = sqrt(ab_t) xbar_t."""
    ab = schedule.alpha_bars
    sigma2 = (1.0 - ab) / ab
    xbar_T = x_T / math.sqrt(ab[-1])
    return math.sqrt(ab[t]) * (mean + (xbar_T - mean) * math.sqrt((std ** 2 + sigma2[t]) / (std ** 2 + sigma2[-1])))


def test_rk4_on_the_vp_drift_follows_the_exact_gaussian_flow():
    """dx/dtau = -1/2 beta(tau) (x + s(x, tau)) (eq. W5, with beta(tau) of eq. W1) by RK4, 20 substeps per
    interval, from tau = 1 to tau = 1/T: the closed-form flow of Gaussian data, to 1e-5."""
    schedule, mean, std = Schedule.cosine(60), 0.3, 0.5
    x_T = np.linspace(-2.5, 2.5, 7)[:, None]
    x, n_sub, T = x_T.copy(), 20, schedule.T
    for t in range(T, 1, -1):                                 # one beta interval ((t-1)/T, t/T) at a time
        h = -1.0 / (T * n_sub)

        def f(x_, tau_):
            tau_ = min(max(tau_, (t - 1) / T + 1e-12), t / T)    # stay inside the interval (beta jumps at nodes)
            return probability_flow_drift(x_, _analytic_score(x_, tau_, schedule, mean, std), tau_, schedule)
        for j in range(n_sub):
            tau = t / T + j * h
            k1 = f(x, tau)
            k2 = f(x + 0.5 * h * k1, tau + 0.5 * h)
            k3 = f(x + 0.5 * h * k2, tau + 0.5 * h)
            k4 = f(x + h * k3, tau + h)
            x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    np.testing.assert_allclose(x, _gaussian_flow(x_T, 1, schedule, mean, std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_ode_sampler_converges_to_the_exact_gaussian_flow(solver):
    """Over T/4, T/2, T nodes the error at t = 1 falls (Euler = DDIM: first order; Heun: at least second)."""
    schedule, mean, std = Schedule.cosine(200), 0.3, 0.5
    oracle = GaussianDataOracle(mean, std, schedule)
    x_T = np.linspace(-2.5, 2.5, 7)[:, None]
    exact = _gaussian_flow(x_T, 1, schedule, mean, std)
    errors = []
    for steps in (50, 100, 200):
        _, trajectory = ode_sample(oracle, x_T.shape, schedule, steps=steps, solver=solver, x_T=x_T, dtype=np.float64,
                                   return_trajectory=True)
        errors.append(np.abs(trajectory[-2] - exact).max())      # trajectory[-2] is x at t = 1
    ratio = 1.8 if solver == "euler" else 3.5
    assert errors[0] / errors[1] > ratio and errors[1] / errors[2] > ratio, errors
    assert errors[2] < (0.02 if solver == "euler" else 1e-3)


# ---------------------------------------------------------------- samples reproduce the data moments

@pytest.mark.parametrize("which", ["ode-heun", "ode-euler", "sde"])
def test_sde_and_ode_samples_reach_the_data_moments_as_the_steps_grow(which):
    schedule, mean, std = Schedule.cosine(200), 0.3, 0.6
    oracle = GaussianDataOracle(mean, std, schedule)
    x_T = np.random.default_rng(0).standard_normal((40000, 1))

    def run(steps):
        if which == "sde":
            x = sde_sample(oracle, x_T.shape, schedule, rng=np.random.default_rng(1), steps=steps, x_T=x_T,
                           dtype=np.float64)
        else:
            x = ode_sample(oracle, x_T.shape, schedule, steps=steps, solver=which[4:], x_T=x_T, dtype=np.float64)
        return max(abs(x.mean() - mean), abs(x.std() - std))
    errors = [run(steps) for steps in (8, 25, 200)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.012  # the Monte Carlo error of the mean and std at n = 40000 is 0.003 and 0.002


def test_ode_heun_spends_2k_minus_1_calls_and_sde_k():
    schedule = Schedule.cosine(30)
    calls = []

    def model(x_t, t):
        calls.append(t[0])
        return smooth_model(x_t, t)
    ode_sample(model, (2, 2), schedule, steps=6, solver="heun", rng=np.random.default_rng(0))
    assert len(calls) == ProbabilityFlowSampler(solver="heun").network_calls(6) == 11
    assert calls[-1] == 1 and 0 not in calls                  # the last step is Euler: no call at t = 0
    calls.clear()
    sde_sample(model, (2, 2), schedule, steps=6, rng=np.random.default_rng(0))
    assert len(calls) == 6
    with pytest.raises(ValueError, match="solver must be one of"):
        ode_sample(model, (2, 2), schedule, solver="rk4")


# ---------------------------------------------------------------- likelihood, eq. (W10)-(W13)

def _oracle_problem(seed, d=2):
    rng = np.random.default_rng(seed)
    schedule = Schedule.cosine(200)
    mean, std = rng.normal(0, 0.3, d), rng.uniform(0.3, 1.0, d)
    oracle = GaussianDataOracle(mean, std, schedule)
    return schedule, oracle, oracle.sample(rng, 4, (d,))


def _log_p_1(oracle, x0, schedule):
    """log q_1(x) = log N(x; sqrt(ab_1) m, ab_1 s^2 + 1 - ab_1) summed over dimensions: the density at the cut-off."""
    ab = schedule.alpha_bars[1]
    v = ab * oracle.std ** 2 + 1.0 - ab
    return (-0.5 * (np.log(2 * np.pi * v) + (x0 - math.sqrt(ab) * oracle.mean) ** 2 / v)).sum(axis=1)


@given(seeds())
def test_ode_log_likelihood_is_the_analytic_log_density_to_solver_accuracy(seed):
    """Heun over 25, 50, 100 nodes: the error against log q_1 (the density at the cut-off t = 1) falls by more
    than 2 per halving and by more than 6 over both (first order gives 2 and 4; Heun falls short of 4 and 16
    because beta(tau) of eq. (W1) is piecewise constant, with kinks at the chain's nodes inside a respaced
    step); at 100 nodes it is below 0.01 nats, and log p_0 is as close up to the cut-off gap
    |log q_1 - log p_0|; and the value is no accident: a divergence integral 3% off, or none, misses by more
    than 10 errors."""
    schedule, oracle, x0 = _oracle_problem(seed)
    target = _log_p_1(oracle, x0, schedule)
    errors = [np.abs(ode_log_likelihood(oracle, x0, schedule, steps=k) - target).max() for k in (25, 50, 100)]
    assert errors[0] / errors[1] > 2 and errors[1] / errors[2] > 2 and errors[0] / errors[2] > 6, errors
    assert errors[2] < 0.01, errors
    terms = ode_log_likelihood_terms(oracle, x0, schedule, steps=100)
    log_p = terms["log_prior"] + terms["log_volume"] + terms["divergence"]
    cut_off = np.abs(target - oracle.log_prob(x0))
    assert np.all(np.abs(log_p - oracle.log_prob(x0)) < errors[2] + cut_off + 1e-12)
    rest = terms["log_prior"] + terms["log_volume"]
    for wrong in (rest, rest + 0.97 * terms["divergence"], rest + 1.03 * terms["divergence"]):
        assert np.all(np.abs(wrong - target) > 10 * errors[2])


def test_euler_likelihood_converges_at_first_order():
    schedule, oracle, x0 = _oracle_problem(3)
    exact = _log_p_1(oracle, x0, schedule)
    errors = [np.abs(ode_log_likelihood(oracle, x0, schedule, steps=k, solver="euler") - exact).max()
              for k in (25, 50, 100)]
    assert errors[0] > errors[1] > errors[2] and errors[2] > 0.2 * errors[1]   # halves, not quarters


def test_divergence_by_autograd_and_by_finite_differences_agree_on_a_coupled_model():
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(5, 3)), np.full(5, 7)
    assert resolve_divergence(coupled_model, x, t) == "autograd"
    eps_a, tr_a = eps_and_divergence(coupled_model, x, t, unit_probes(x), "autograd")
    eps_f, tr_f = eps_and_divergence(coupled_model, x, t, unit_probes(x), "finite-difference")
    h = 1e-6                                                              # the trace from the full Jacobian
    jac_trace = sum(((coupled_model(x + h * e, t) - coupled_model(x - h * e, t)) / (2 * h) * e).sum(1)
                    for e in np.eye(3))
    np.testing.assert_allclose(eps_a, eps_f, rtol=1e-12)
    np.testing.assert_allclose(tr_a, jac_trace, rtol=1e-7)
    np.testing.assert_allclose(tr_f, jac_trace, rtol=1e-6)


def test_hutchinson_is_unbiased_for_the_exact_trace():
    """The mean of v^T J v over 20000 Rademacher probes is tr J within 5 standard errors (one x, many probes)."""
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(size=(1, 3)), 20000, axis=0)
    t = np.full(len(x), 11)
    _, exact = eps_and_divergence(coupled_model, x[:1], t[:1], unit_probes(x[:1]), "autograd")
    _, estimates = eps_and_divergence(coupled_model, x, t, [rademacher_probe(x, rng)], "autograd")
    assert estimates.std() > 0.05                          # the Jacobian is not diagonal, so it is a real estimate
    assert abs(estimates.mean() - exact[0]) < 5 * estimates.std() / math.sqrt(len(x))


def test_hutchinson_likelihood_is_unbiased_for_the_exact_trace_likelihood():
    """One probe v per sample, fixed along the path: the path of x does not depend on v and the quadrature is
    linear in v^T J v, so E_v of the Hutchinson log-likelihood is the exact-trace one (same solver, same nodes).
    On a model with a full Jacobian, the mean of 20000 estimates is within 5 standard errors of it."""
    schedule = Schedule.cosine(50)
    x0 = np.repeat(np.random.default_rng(2).normal(size=(1, 3)), 20000, axis=0)
    exact = ode_log_likelihood(coupled_model, x0[:1], schedule, steps=10, trace="exact")
    estimates = ode_log_likelihood(coupled_model, x0, schedule, steps=10, trace="hutchinson",
                                   rng=np.random.default_rng(3))
    assert estimates.std() > 0.05
    assert abs(estimates.mean() - exact[0]) < 5 * estimates.std() / math.sqrt(len(x0))


def test_ddpm_module_divergence_comes_from_autograd_and_leaves_no_parameter_gradients():
    minidiff.manual_seed(0)
    model = DDPM((1, 4, 4), T=10, base_channels=4, channel_mults=(1, 2), attention_resolutions=(2,), dropout=0.0,
                 dtype=np.float64).eval()
    for p in model.parameters():                           # a non-zero output layer, so eps depends on x
        p.data = p.data + 0.05 * np.random.default_rng(0).standard_normal(p.shape)
    x = np.random.default_rng(2).normal(size=(2, 1, 4, 4))
    t = np.full(2, 5)
    assert resolve_divergence(model, x, t) == "autograd"
    assert resolve_divergence(model.eps_array, x, t) == "finite-difference"   # arrays out, no graph
    eps, tr = eps_and_divergence(model, x, t, unit_probes(x), "autograd")
    eps_f, tr_f = eps_and_divergence(model.eps_array, x, t, unit_probes(x), "finite-difference", delta=1e-5)
    np.testing.assert_allclose(eps, eps_f, rtol=1e-12)
    np.testing.assert_allclose(tr, tr_f, rtol=1e-6, atol=1e-8)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("levels", [17, 256])
def test_ode_nll_bpd_is_the_dequantised_log_density_in_bits_on_the_datas_grid(levels):
    """bpd = -(E_u log p(x0 + u) + D log w) / (D log 2), w = 2/(K - 1), with the same u draws, eq. (W13);
    data off the K-level grid is refused (its bins would not be the data's)."""
    schedule, oracle, x0 = _oracle_problem(5, d=3)
    x0 = np.round((np.clip(x0, -1, 1) + 1) * (levels - 1) / 2) * (2 / (levels - 1)) - 1     # onto the grid
    w = 2.0 / (levels - 1)
    got = ode_nll_bpd(oracle, x0, schedule, steps=100, trace="exact", rng=np.random.default_rng(4), n_dequant=2,
                      levels=levels)
    rng = np.random.default_rng(4)
    u = [(rng.random(x0.shape) - 0.5) * w for _ in range(2)]
    log_p = np.mean([oracle.log_prob(x0 + ui) for ui in u], axis=0)
    np.testing.assert_allclose(got, -(log_p + 3 * math.log(w)) / (3 * math.log(2.0)), atol=0.01 / (3 * math.log(2)))
    with pytest.raises(ValueError, match=f"x must lie on the {levels}-level grid"):
        ode_nll_bpd(oracle, x0 + 0.3 * w, schedule, steps=10, levels=levels)
    with pytest.raises(ValueError, match="n_dequant must be >= 1"):
        ode_nll_bpd(oracle, x0, schedule, steps=10, levels=levels, n_dequant=0)


def test_likelihood_arguments_are_checked():
    schedule, oracle, x0 = _oracle_problem(0)
    with pytest.raises(ValueError, match="trace must be one of"):
        ode_log_likelihood(oracle, x0, schedule, trace="stochastic")
    with pytest.raises(ValueError, match="divergence must be one of"):
        ode_log_likelihood(oracle, x0, schedule, divergence="forward-mode")
    with pytest.raises(ValueError, match="from t = 1 to t = T"):
        ode_log_likelihood(oracle, x0, schedule, steps=np.array([5, 200]))


def test_ode_vs_vlb_bits_scores_both_bounds_on_the_same_images_and_the_models_grid():
    """experiments.ode_vs_vlb_bits: the ODE bits/dim on the model's 17-level grid with its own rng, the VLB with
    eval's rng, per image and paired (the difference's mean and standard error over the images)."""
    from minidiff import experiments
    from minidiff.backend import default_rng
    from minidiff.diffusion import nll_bpd
    minidiff.manual_seed(0)
    model = DDPM((1, 4, 4), T=10, base_channels=4, channel_mults=(1, 2), attention_resolutions=(2,), dropout=0.0,
                 levels=17, dtype=np.float64).eval()
    for p in model.parameters():
        p.data = p.data + 0.05 * np.random.default_rng(0).standard_normal(p.shape)
    x = np.random.default_rng(1).integers(0, 17, size=(3, 1, 4, 4)) / 8.0 - 1.0
    report = experiments.ode_vs_vlb_bits(model, x, steps=4, trace="exact", seed=5)
    ode = ode_nll_bpd(model, x, model.schedule, steps=4, trace="exact", rng=default_rng(seed=5), levels=17)
    vlb = nll_bpd(model.eps_array, x, model.schedule, default_rng(seed=(5, 2 ** 31)), levels=17)["total_bpd"]
    np.testing.assert_allclose(report["ode_per_image"], ode, rtol=1e-12)
    np.testing.assert_allclose(report["vlb_per_image"], vlb, rtol=1e-12)
    gap = ode - vlb
    assert report["ode_minus_vlb"] == pytest.approx(gap.mean(), rel=1e-12)
    assert report["ode_minus_vlb_standard_error"] == pytest.approx(gap.std(ddof=1) / np.sqrt(3), rel=1e-12)
    assert report["levels"] == 17 and report["ode_network_evaluations"] == 7
    with pytest.raises(ValueError, match="x must lie on the 17-level grid"):
        experiments.ode_vs_vlb_bits(model, 0.99 * x, steps=4)


# ---------------------------------------------------------------- each formula step by step, and what the API passes on

def _chain_eps(x, k, chain, eps_hat, clip_x0):
    """eps_hat at chain node k, recomputed from the clipped x0_hat (x0_hat = (x - sqrt(1 - ab) eps) / sqrt(ab))."""
    ab = chain.alpha_bars[k]
    if not clip_x0:
        return eps_hat
    x0 = np.clip((x - np.sqrt(1 - ab) * eps_hat) / np.sqrt(ab), -1, 1)
    return (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)


@given(schedules(min_T=2, max_T=40), st.integers(2, 8), seeds(), st.booleans())
def test_sde_sample_is_eq_w7_step_by_step(schedule, steps, seed, clip_x0):
    """x_{k-1} = x_k + beta'_k (x_k / 2 + s_theta) + sqrt(beta'_k) z_k with s_theta = -eps_hat / sqrt(1 - ab_k),
    eq. (W7), no noise at k = 1; with clip_x0, eps_hat is recomputed from the clipped x0_hat first."""
    chain = schedule.respace(min(steps, schedule.T))
    rng = np.random.default_rng(seed)
    x_T, noise = 2 * rng.standard_normal((3, 2)), rng.standard_normal((chain.T, 3, 2))
    x = x_T
    for i, k in enumerate(range(chain.T, 0, -1)):
        eps = _chain_eps(x, k, chain, smooth_model(x, np.full(3, chain.timesteps[k])), clip_x0)
        beta = chain.betas[k]
        x = x + beta * (0.5 * x - eps / np.sqrt(1 - chain.alpha_bars[k])) + (np.sqrt(beta) * noise[i] if k > 1 else 0)
    got = sde_sample(smooth_model, (3, 2), schedule, steps=chain.T, clip_x0=clip_x0, x_T=x_T, noise=noise,
                     dtype=np.float64)
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-10)


@given(schedules(min_T=2, max_T=40), st.integers(2, 8), seeds(), st.booleans(), st.sampled_from(["euler", "heun"]))
def test_ode_sample_is_eq_w8_or_w9_step_by_step_and_calls_the_model_as_network_calls_says(schedule, steps, seed,
                                                                                             clip_x0, solver):
    """Euler (W8): xbar_{k-1} = x_k / sqrt(ab_k) + (sigma_{k-1} - sigma_k) eps_hat, x_{k-1} = sqrt(ab_{k-1}) xbar;
    Heun (W9): the same with (eps_hat + eps') / 2, eps' at the Euler point and node k - 1 (clipped there
    too), Euler at k = 1. The model is called network_calls(K) times: K (Euler), 2K - 1 (Heun)."""
    chain = schedule.respace(min(steps, schedule.T))
    x_T = 2 * np.random.default_rng(seed).standard_normal((3, 2))
    sigma = np.sqrt((1 - chain.alpha_bars) / chain.alpha_bars)

    def eps_at(x, k):
        return _chain_eps(x, k, chain, smooth_model(x, np.full(3, chain.timesteps[k])), clip_x0)

    def euler(x, k, eps):
        return np.sqrt(chain.alpha_bars[k - 1]) * (x / np.sqrt(chain.alpha_bars[k]) + (sigma[k - 1] - sigma[k]) * eps)
    x = x_T
    for k in range(chain.T, 0, -1):
        eps = eps_at(x, k)
        x_euler = euler(x, k, eps)
        x = x_euler if solver == "euler" or k == 1 else euler(x, k, 0.5 * (eps + eps_at(x_euler, k - 1)))
    calls = []

    def counted(x_t, t):
        calls.append(t[0])
        return smooth_model(x_t, t)
    got = ode_sample(counted, (3, 2), schedule, steps=chain.T, solver=solver, clip_x0=clip_x0, x_T=x_T,
                     dtype=np.float64)
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-10)
    assert len(calls) == ProbabilityFlowSampler(solver=solver).network_calls(chain.T)


@given(schedules(min_T=2, max_T=12), seeds())
def test_sde_and_ode_samplers_default_to_heun_without_clipping_and_pass_on_rng_noise_dtype_and_trajectory(schedule,
                                                                                                         seed):
    """ode_sample and the registered "ode" sampler default to solver="heun", clip_x0=False (data at 1.5, so a
    clip would show); both samplers draw from the rng they are given, use a given x_T and noise, return the
    dtype asked for (float32 by default) and, with return_trajectory, the K + 1 states ending at the sample."""
    oracle = GaussianDataOracle(1.5, 0.5, schedule)
    rng = np.random.default_rng(seed)
    x_T, noise = rng.standard_normal((16, 2)), rng.standard_normal((schedule.T, 16, 2))
    default = ode_sample(oracle, (16, 2), schedule, x_T=x_T, dtype=np.float64)
    assert np.abs(default).max() > 1.0
    np.testing.assert_array_equal(default, ode_sample(oracle, (16, 2), schedule, solver="heun", clip_x0=False,
                                                      x_T=x_T, dtype=np.float64))
    np.testing.assert_array_equal(default, sample(make_sampler("ode"), oracle, (16, 2), schedule, x_T=x_T,
                                                  dtype=np.float64))
    for run in (lambda **kw: ode_sample(oracle, (16, 2), schedule, **kw),
                lambda **kw: sde_sample(oracle, (16, 2), schedule, **kw)):
        a, b = (run(rng=np.random.default_rng(seed), dtype=np.float64) for _ in range(2))
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float64 and run(rng=np.random.default_rng(seed)).dtype == np.float32
        x, trajectory = run(rng=np.random.default_rng(seed), dtype=np.float64, return_trajectory=True)
        assert len(trajectory) == schedule.T + 1
        np.testing.assert_array_equal(trajectory[-1], x)
        np.testing.assert_array_equal(x, a)
    with_noise = sde_sample(oracle, (16, 2), schedule, rng=np.random.default_rng(seed + 1), x_T=x_T, noise=noise,
                            dtype=np.float64)
    np.testing.assert_array_equal(with_noise, sde_sample(oracle, (16, 2), schedule, rng=np.random.default_rng(seed + 2),
                                                         x_T=x_T, noise=noise, dtype=np.float64))
    np.testing.assert_array_equal(ode_sample(oracle, (16, 2), schedule, rng=np.random.default_rng(seed + 1), x_T=x_T),
                                  ode_sample(oracle, (16, 2), schedule, rng=np.random.default_rng(seed + 2), x_T=x_T))


@given(schedules(min_T=2, max_T=30, kinds=("custom", "cosine")), st.integers(2, 6), seeds(),
       st.sampled_from(["euler", "heun"]))
def test_a_zero_velocity_flow_gives_the_exact_change_of_variables_of_a_scaling(schedule, steps, seed, solver):
    """With eps_theta = 0, (W6) keeps xbar = x0 / sqrt(ab_1): x_T = c x0, c = sqrt(ab_T / ab_1), and the
    divergence is 0, so (W10) must be the exact density of x0 under x_T = c x0 ~ N(0, I):
    log p(x0) = log N(c x0; 0, I) + D log c, for every chain from t = 1 (two nodes included)."""
    chain = schedule.respace(min(steps, schedule.T))
    x0 = np.random.default_rng(seed).normal(size=(4, 3))
    terms = ode_log_likelihood_terms(lambda x, t: 0 * x, x0, schedule, steps=chain.T, solver=solver)
    c = math.sqrt(chain.alpha_bars[-1] / chain.alpha_bars[1])
    np.testing.assert_allclose(terms["x_T"], c * x0, rtol=1e-12)
    np.testing.assert_array_equal(terms["divergence"], 0.0)
    exact = (-0.5 * (c * x0) ** 2 - 0.5 * math.log(2 * math.pi)).sum(axis=1) + 3 * math.log(c)
    np.testing.assert_allclose(terms["log_prior"] + terms["log_volume"], exact, rtol=1e-12)
    np.testing.assert_allclose(ode_log_likelihood(lambda x, t: 0 * x, x0, schedule, steps=chain.T, solver=solver),
                               exact, rtol=1e-12)


@given(st.integers(2, 6), st.sampled_from(["euler", "heun"]), seeds())
def test_the_likelihood_evaluates_the_velocity_once_per_step_for_euler_and_twice_for_heun(K, solver, seed):
    """Over the K nodes of `steps`, (W6) and the divergence integral take K - 1 steps: one velocity (one
    model call with autograd) per Euler step, two per Heun step; ode_nll_bpd passes steps and solver on."""
    schedule, calls = Schedule.cosine(30), []

    def counted(x_t, t):
        calls.append(int(t[0]))
        return coupled_model(x_t, t)
    x0 = np.random.default_rng(seed).integers(0, 17, size=(2, 3)) / 8.0 - 1.0
    per_step = 1 if solver == "euler" else 2
    ode_log_likelihood(counted, x0, schedule, steps=K, solver=solver, divergence="autograd")
    assert len(calls) == per_step * (K - 1) and calls[0] == 1
    calls.clear()
    ode_nll_bpd(counted, x0, schedule, steps=K, solver=solver, divergence="autograd", levels=17,
                rng=np.random.default_rng(seed))
    assert len(calls) == per_step * (K - 1)


@given(seeds())
def test_hutchinson_probes_and_dequantisation_come_from_the_given_rng_and_default_to_one_hutchinson_draw(seed):
    """The same rng seed gives the same estimate, rng=None draws from minidiff.default_rng() (reproducible
    after manual_seed); ode_nll_bpd defaults to trace="hutchinson" and n_dequant=1."""
    schedule = Schedule.cosine(20)
    x0 = np.random.default_rng(seed).integers(0, 17, size=(3, 3)) / 8.0 - 1.0
    for run in (lambda **kw: ode_log_likelihood(coupled_model, x0, schedule, steps=4, trace="hutchinson", **kw),
                lambda **kw: ode_nll_bpd(coupled_model, x0, schedule, steps=4, levels=17, **kw)):
        a, b = (run(rng=np.random.default_rng(seed)) for _ in range(2))
        np.testing.assert_array_equal(a, b)
        minidiff.manual_seed(seed)
        c = run()
        minidiff.manual_seed(seed)
        np.testing.assert_array_equal(c, run())
    np.testing.assert_array_equal(
        ode_nll_bpd(coupled_model, x0, schedule, steps=4, levels=17, rng=np.random.default_rng(seed)),
        ode_nll_bpd(coupled_model, x0, schedule, steps=4, levels=17, rng=np.random.default_rng(seed),
                    trace="hutchinson", n_dequant=1))


def test_the_divergence_of_float32_data_by_finite_differences_is_the_trace_to_float32_accuracy():
    """(W11) on float32 input: the default step (1e-2 in float32) keeps the central difference within 1e-3 of
    the autograd trace; an array-only model (no Tensor support) is differentiated by finite differences."""
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(5, 3)), np.full(5, 7)
    _, exact = eps_and_divergence(coupled_model, x, t, unit_probes(x), "autograd")
    x32 = x.astype(np.float32)
    _, fd = eps_and_divergence(coupled_model, x32, t, unit_probes(x32), "finite-difference")
    np.testing.assert_allclose(fd, exact, atol=1e-3)

    def array_only(x_t, t):
        if not isinstance(x_t, np.ndarray):
            raise TypeError(f"array_only takes NumPy arrays, got {type(x_t).__name__}")
        return np.tanh(x_t) - 0.2 * x_t
    assert resolve_divergence(array_only, x, t) == "finite-difference"


@given(schedules(max_T=50), seeds())
def test_beta_of_tau_is_beta_1_at_tau_0_and_tau_is_checked(schedule, seed):
    """(W1): t = ceil(T tau) and t = 1 at tau = 0, so beta(0) = beta(1/T) = -T log(1 - beta_1) and alpha_bar(0) = 1;
    tau outside [0, 1], a bool or a non-number is refused; the drift (W5) needs x and s of one shape."""
    T = schedule.T
    first = -T * math.log1p(-schedule.betas[1])
    np.testing.assert_allclose(beta_continuous(schedule, np.array([0.0, 0.5 / T, 1.0 / T])), first, rtol=1e-12)
    assert float(beta_continuous(schedule, 0)) == pytest.approx(first, rel=1e-12)
    assert float(alpha_bar_continuous(schedule, 0.0)) == 1.0
    tau = np.random.default_rng(seed).uniform(0, 1, 5).astype(np.float32)
    np.testing.assert_array_equal(beta_continuous(schedule, tau), beta_continuous(schedule, tau.astype(np.float64)))
    for bad in (-0.1, 1.5, np.array([0.5, 1.01]), np.nan):
        for f in (beta_continuous, alpha_bar_continuous):
            with pytest.raises(ValueError, match="tau must lie in \\[0, 1\\]"):
                f(schedule, bad)
    for bad in (True, "0.5", 0.5j, None):
        with pytest.raises(TypeError, match="tau must be a real number or array"):
            beta_continuous(schedule, bad)
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        beta_continuous(schedule.betas, 0.5)
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="score must have shape"):
        probability_flow_drift(x, np.zeros((2, 1)), 0.5, schedule)
    with pytest.raises(ValueError, match="x must have shape|score must have shape"):
        probability_flow_drift(np.zeros((2, 1)), x, 0.5, schedule)
