"""DDPM and DDIM samplers: DDIM(eta=1) = DDPM, respaced sampling, oracle moments, memorisation.

docs/ddim.md, docs/eps_parameterisation.md §4.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp

from minidiff import kernels
from minidiff.backend import default_rng
from minidiff.diffusion import (Draws, EmpiricalDenoiser, GaussianDataOracle, Sampler, SamplerState, Schedule,
                                ddim_sample, ddim_step, ddpm_sample, make_sampler, nll_bpd_importance, p_mean_variance,
                                prior_bpd, sample, sde_sample, spaced_timesteps, vb_terms_bpd)
from tests.strategies_diffusion import batch_shapes, schedules, seeds


def smooth_model(x_t, t):
    """A deterministic nonlinear stand-in for a network: eps_hat depends on x_t and t."""
    return np.tanh(x_t + 0.01 * t.reshape((-1,) + (1,) * (x_t.ndim - 1))) - 0.3 * x_t


def _noise(rng, steps, shape):
    return rng.standard_normal((steps,) + tuple(shape))


# ---------------------------------------------------------------- DDIM at eta = 1 is DDPM

@given(schedules(max_T=60), batch_shapes(), seeds(), st.booleans(), st.data())
def test_ddim_eta_1_equals_ddpm_fixed_small_with_the_same_noise(schedule, shape, seed, clip_x0, data):
    steps = data.draw(st.one_of(st.none(), st.integers(min(2, schedule.T), schedule.T)))
    K = schedule.T if steps is None else steps
    rng = np.random.default_rng(seed)
    x_T, noise = rng.standard_normal(shape), _noise(rng, K, shape)
    ddpm = ddpm_sample(smooth_model, shape, schedule, steps=steps, clip_x0=clip_x0, x_T=x_T, noise=noise,
                       dtype=np.float64, impl="numpy")
    ddim = ddim_sample(smooth_model, shape, schedule, steps=steps, eta=1.0, clip_x0=clip_x0, x_T=x_T, noise=noise,
                       dtype=np.float64)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- DDPM is Algorithm 2

@given(schedules(max_T=40), batch_shapes(), seeds(), st.sampled_from(["fixed_small", "fixed_large"]), st.booleans())
def test_ddpm_sample_is_algorithm_2_step_by_step(schedule, shape, seed, variance, clip_x0):
    """A hand-written loop: x_{t-1} = mu_theta + sigma_t z (z ignored at t = 1), with p_mean_variance."""
    rng = np.random.default_rng(seed)
    x_T, noise = rng.standard_normal(shape), _noise(rng, schedule.T, shape)
    x = x_T
    for i, t in enumerate(range(schedule.T, 0, -1)):
        tt = np.full(shape[0], t)
        mean, var, _, _ = p_mean_variance(smooth_model(x, tt), x, tt, schedule, variance, clip_x0)
        x = mean + (np.sqrt(var) * noise[i] if t > 1 else 0.0)
        if t > 1 and variance == "fixed_large":
            x = mean + np.sqrt(schedule.betas[t]) * noise[i]
    for impl in ("numpy", "auto"):
        got, trajectory = ddpm_sample(smooth_model, shape, schedule, variance=variance, clip_x0=clip_x0, x_T=x_T,
                                      noise=noise, dtype=np.float64, return_trajectory=True, impl=impl)
        np.testing.assert_allclose(got, x, rtol=1e-9, atol=1e-9)
    assert len(trajectory) == schedule.T + 1 and trajectory[0] is not x_T
    np.testing.assert_array_equal(trajectory[0], x_T)
    np.testing.assert_array_equal(trajectory[-1], got)
    noise[-1] += 100.0  # the z of the last step (t = 1) is never used
    again = ddpm_sample(smooth_model, shape, schedule, variance=variance, clip_x0=clip_x0, x_T=x_T, noise=noise,
                        dtype=np.float64, impl="numpy")
    np.testing.assert_array_equal(again, got)


# ---------------------------------------------------------------- respaced sampling visits the right steps

@given(schedules(min_T=2, max_T=100), st.data(), st.sampled_from(["ddpm", "ddim"]))
def test_respaced_samplers_call_the_model_on_descending_unique_steps_ending_at_1(schedule, data, which):
    K = data.draw(st.integers(2, schedule.T))
    calls = []

    def spy(x_t, t):
        assert np.all(t == t[0]) and t.shape == (3,)
        calls.append(int(t[0]))
        return 0.1 * x_t
    sampler = ddpm_sample if which == "ddpm" else ddim_sample
    sampler(spy, (3, 2), schedule, rng=np.random.default_rng(0), steps=K, dtype=np.float64)
    assert calls == list(spaced_timesteps(schedule.T, K))
    assert calls[0] == schedule.T and calls[-1] == 1 and len(set(calls)) == K


def test_samplers_accept_minidiff_rng_progress_bar_and_float32():
    s = Schedule.cosine(20)
    a = ddim_sample(smooth_model, (4, 3), s, rng=default_rng(3), steps=5, eta=0.5, progress=True)
    b = ddim_sample(smooth_model, (4, 3), s, rng=np.random.default_rng(3), steps=5, eta=0.5)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert ddpm_sample(smooth_model, (2, 2), s, rng=default_rng(0), progress=True).dtype == np.float32


SAMPLE_CALLS = [pytest.param(ddpm_sample, {"impl": impl}, id=f"ddpm-{impl}") for impl in kernels.available()] + [
    pytest.param(ddim_sample, {"eta": 1.0}, id="ddim-eta-1"), pytest.param(sde_sample, {}, id="sde")]


@pytest.mark.parametrize("sampler, options", SAMPLE_CALLS)
def test_nan_noise_at_t_1_never_reaches_the_sample_and_nan_noise_that_is_used_is_refused(sampler, options):
    """The z of the last step (t = 1) is documented as ignored: a NaN there must not poison x_0 (0 * NaN = NaN)."""
    s, rng = Schedule.cosine(6), np.random.default_rng(0)
    x_T = rng.standard_normal((2, 3)).astype(np.float32)
    noise = list(_noise(rng, 6, (2, 3)).astype(np.float32))
    clean = sampler(smooth_model, (2, 3), s, x_T=x_T, noise=noise, **options)
    noise[-1] = np.full((2, 3), np.nan, np.float32)
    np.testing.assert_array_equal(sampler(smooth_model, (2, 3), s, x_T=x_T, noise=noise, **options), clean)
    noise[2] = np.full((2, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"noise\[2\] must be finite"):
        sampler(smooth_model, (2, 3), s, x_T=x_T, noise=noise, **options)


def test_samplers_refuse_bad_arguments():
    s = Schedule.cosine(10)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(smooth_model, (2, 2), s, eta=1.5)
    with pytest.raises(ValueError, match="one z per step"):
        ddpm_sample(smooth_model, (2, 2), s, x_T=np.zeros((2, 2)), noise=np.zeros((9, 2, 2)))
    with pytest.raises(ValueError, match="x_T must have shape"):
        ddpm_sample(smooth_model, (2, 2), s, x_T=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="K"):
        ddim_sample(smooth_model, (2, 2), s, steps=11)


# ---------------------------------------------------------------- oracle: samplers reproduce the data moments

def exact_moments(chain, m, s, eta):
    """Mean and variance of DDIM(eta) output with the Gaussian oracle, by the affine recursion (eta = 1: DDPM).

    eps_hat = c (x - sqrt(ab) m), c = sqrt(1 - ab) / (ab s^2 + 1 - ab); each step is x' = A x + B + sigma z.
    """
    mean, var = np.zeros_like(m), np.ones_like(m)
    for k in range(chain.T, 0, -1):
        ab, ab_prev = chain.alpha_bars[k], chain.alpha_bars[k - 1]
        c = np.sqrt(1 - ab) / (ab * s ** 2 + 1 - ab)
        sigma2 = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        d = np.sqrt(max(1 - ab_prev - sigma2, 0.0))
        A = np.sqrt(ab_prev / ab) * (1 - np.sqrt(1 - ab) * c) + d * c
        B = (np.sqrt(ab_prev / ab) * np.sqrt(1 - ab) - d) * c * np.sqrt(ab) * m
        mean, var = A * mean + B, A * A * var + sigma2
    return mean, var


oracle_data = st.tuples(st.lists(st.floats(-2, 2), min_size=1, max_size=2), st.floats(0.25, 2.0))


@given(schedules(min_T=2, max_T=60), oracle_data, st.sampled_from([("ddpm", 1.0), ("ddim", 0.0), ("ddim", 0.5)]),
       st.data())
def test_sample_moments_match_the_exact_output_distribution(schedule, data_config, sampler, data):
    """Monte Carlo mean and variance of n samples within 5 standard errors of the exact affine recursion."""
    m, s = np.array(data_config[0]), data_config[1]
    K = data.draw(st.integers(2, schedule.T))
    chain = schedule.respace(K)
    oracle = GaussianDataOracle(m, s, schedule)
    n = 4000
    name, eta = sampler
    if name == "ddpm":
        x = ddpm_sample(oracle, (n, len(m)), schedule, rng=np.random.default_rng(11), steps=K, dtype=np.float64)
    else:
        x = ddim_sample(oracle, (n, len(m)), schedule, rng=np.random.default_rng(11), steps=K, eta=eta,
                        dtype=np.float64)
    mean, var = exact_moments(chain, m, s, eta)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(x.var(axis=0, ddof=1) - var) < 5 * var * np.sqrt(2.0 / (n - 1)))


def sampler_output_moments(sampler, oracle, schedule, d):
    """Exact mean and variance of a sampler's output, by running it: with the Gaussian oracle the chain is
    affine in (x_T, z_T, ..., z_1), so one batched run gives every coefficient: row 0 x_T = 0, z = 0 (the
    mean); row 1 x_T = 1 (the x_T coefficient a); row 2 + i a unit z at step i (its coefficient c_i)."""
    T = schedule.T
    x_T = np.zeros((T + 2, d))
    x_T[1] = 1.0
    noise = np.zeros((T, T + 2, d))
    noise[np.arange(T), np.arange(T) + 2] = 1.0
    out = sampler(oracle, (T + 2, d), schedule, x_T=x_T, noise=noise, dtype=np.float64)
    mean = out[0]
    return mean, ((out[1:] - mean) ** 2).sum(axis=0)


@settings(max_examples=8)  # each example runs a 1000-step chain on 1002 rows
@given(st.sampled_from(["linear", "cosine"]), oracle_data, st.sampled_from([1.0, 0.0]))
def test_exact_output_moments_at_T_1000_are_within_2_percent_of_the_data(kind, data_config, eta):
    """Stated tolerance, full T = 1000 chain, s in [0.25, 2]: |mean - m| <= 0.02 s and |std / s - 1| <= 0.02,
    for the samplers' own output distribution (DDPM for eta = 1, DDIM for eta = 0), run at T = 1000."""
    m, s = np.array(data_config[0]), data_config[1]
    schedule = getattr(Schedule, kind)(1000)
    sampler = ddpm_sample if eta == 1.0 else ddim_sample
    mean, var = sampler_output_moments(sampler, GaussianDataOracle(m, s, schedule), schedule, len(m))
    np.testing.assert_allclose([mean, var], exact_moments(schedule, m, s, eta), rtol=1e-9, atol=1e-12)
    assert np.all(np.abs(mean - m) <= 0.02 * s)
    assert np.all(np.abs(np.sqrt(var) / s - 1) <= 0.02)


def test_ddpm_and_ddim_samples_at_T_1000_have_the_data_moments():
    """One Monte Carlo run per sampler: tolerance 5 standard errors plus the stated 2% bias."""
    m, s, n = np.array([0.5, -1.0]), 0.6, 3000
    schedule = Schedule.linear(1000)
    oracle = GaussianDataOracle(m, s, schedule)
    for x in (ddpm_sample(oracle, (n, 2), schedule, rng=np.random.default_rng(1), dtype=np.float64, impl="numpy"),
              ddim_sample(oracle, (n, 2), schedule, rng=np.random.default_rng(2), dtype=np.float64)):
        assert np.all(np.abs(x.mean(axis=0) - m) < 5 * s / np.sqrt(n) + 0.02 * s)
        assert np.all(np.abs(x.std(axis=0, ddof=1) / s - 1) < 5 / np.sqrt(2 * (n - 1)) + 0.02)


# ---------------------------------------------------------------- the empirical-optimal denoiser memorises

train_sets = st.tuples(st.integers(1, 6), st.integers(1, 4), seeds()).map(
    lambda nds: np.random.default_rng(nds[2]).uniform(-1, 1, (nds[0], nds[1])))


@given(train_sets, schedules(max_T=100), st.data(), seeds())
def test_empirical_denoiser_weights_are_the_bayes_posterior_over_training_points(train, schedule, data, seed):
    t = data.draw(st.integers(1, schedule.T))
    x_t = np.random.default_rng(seed).normal(size=(3, train.shape[1]))
    ab = schedule.alpha_bars[t]
    log_lik = np.stack([stats.norm.logpdf(x_t, np.sqrt(ab) * xi, np.sqrt(1 - ab)).sum(axis=1) for xi in train], 1)
    posterior = np.exp(log_lik - logsumexp(log_lik, axis=1, keepdims=True))  # uniform prior over the x_i
    denoiser = EmpiricalDenoiser(train, schedule)
    np.testing.assert_allclose(denoiser.weights(x_t, np.full(3, t)), posterior, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(denoiser.x0_hat(x_t, np.full(3, t)), posterior @ train, rtol=1e-8, atol=1e-12)


@given(train_sets, schedules(max_T=100), st.data(), seeds(), st.floats(1e-3, 1.0))
def test_posterior_mean_beats_every_perturbation_in_expected_mse(train, schedule, data, seed, size):
    """For x_t ~ q: E[||x_0 - f(x_t)||^2 | x_t] = sum_i P(x_i | x_t) ||x_i - f||^2 is least at f = x0_hat,
    and a perturbation by delta adds exactly ||delta||^2."""
    t = np.full(64, data.draw(st.integers(1, schedule.T)))
    rng = np.random.default_rng(seed)
    x0 = train[rng.integers(0, len(train), 64)]
    x_t = np.sqrt(schedule.alpha_bars[t][:, None]) * x0 + np.sqrt(1 - schedule.alpha_bars[t][:, None]) * \
        rng.standard_normal(x0.shape)
    denoiser = EmpiricalDenoiser(train, schedule)
    w, best = denoiser.weights(x_t, t), denoiser.x0_hat(x_t, t)
    delta = size * rng.standard_normal(best.shape)

    def risk(f):
        return (w * ((train[None, :, :] - f[:, None, :]) ** 2).sum(axis=2)).sum(axis=1)
    np.testing.assert_allclose(risk(best + delta) - risk(best), (delta ** 2).sum(axis=1), rtol=1e-6, atol=1e-12)
    assert np.all(risk(best + delta) > risk(best))


separated_train_sets = st.integers(1, 4).flatmap(lambda d: st.sets(
    st.tuples(*[st.integers(-3, 3)] * d), min_size=1, max_size=6)).map(lambda points: 0.5 * np.array(sorted(points)))


@given(separated_train_sets, st.sampled_from(["linear", "cosine"]), seeds())
def test_ddpm_with_the_empirical_denoiser_returns_copies_of_training_points(train, kind, seed):
    """Memorisation: every sample is a training point. The last step returns x0_hat(x_1), a convex combination
    of the x_i whose weights are one-hot once the points are many sqrt(1 - alpha_bar_1) apart (here >= 0.5,
    over 20 times sqrt(1 - alpha_bar_1) for T = 200; at 0.3 apart about 1 sample in 1300 still lands between
    two points on the linear schedule)."""
    schedule = getattr(Schedule, kind)(200)
    denoiser = EmpiricalDenoiser(train, schedule)
    x = ddpm_sample(denoiser, (50, train.shape[1]), schedule, rng=np.random.default_rng(seed), dtype=np.float64,
                    impl="numpy")  # small arrays: the NumPy reference step has the least per-call overhead
    nearest = np.sqrt(((x[:, None, :] - train[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    assert np.all(nearest < 1e-6)


@pytest.mark.gpu
def test_samplers_and_bound_run_on_cupy_and_match_numpy():
    cp = pytest.importorskip("cupy")
    s = Schedule.cosine(30)
    oracle = GaussianDataOracle(np.array([0.1, -0.2]), 0.5, s)
    rng = np.random.default_rng(0)
    x_T, noise = rng.standard_normal((8, 2)), rng.standard_normal((30, 8, 2))
    for sampler in (ddpm_sample, ddim_sample):
        host = sampler(oracle, (8, 2), s, x_T=x_T, noise=noise, dtype=np.float64)
        device = sampler(oracle, (8, 2), s, x_T=cp.asarray(x_T), noise=cp.asarray(noise), dtype=np.float64)
        assert isinstance(device, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(device), host, rtol=1e-9, atol=1e-12)
    drawn = ddpm_sample(oracle, (8, 2), s, rng=default_rng(1, backend="cupy"), steps=7)
    assert isinstance(drawn, cp.ndarray) and drawn.dtype == np.float32
    x0 = np.round((np.clip(rng.normal(size=(8, 2)), -1, 1) + 1) * 127.5) / 127.5 - 1
    t = np.arange(1, 9)
    eps = rng.standard_normal((8, 2))
    x_t = np.sqrt(s.alpha_bars[t])[:, None] * x0 + np.sqrt(1 - s.alpha_bars[t])[:, None] * eps
    host = vb_terms_bpd(x0, x_t, t, oracle(x_t, t), s)
    device = vb_terms_bpd(cp.asarray(x0), cp.asarray(x_t), cp.asarray(t), oracle(cp.asarray(x_t), cp.asarray(t)), s)
    np.testing.assert_allclose(cp.asnumpy(device), host, rtol=1e-9)
    np.testing.assert_allclose(cp.asnumpy(prior_bpd(cp.asarray(x0), s)), prior_bpd(x0, s), rtol=1e-12)
    estimate = nll_bpd_importance(oracle, cp.asarray(x0), s, default_rng(2, backend="cupy"))
    assert isinstance(estimate, cp.ndarray) and estimate.shape == (8,)


@given(schedules(max_T=6), batch_shapes(max_batch=3, max_dims=2), seeds())
def test_the_samplers_pass_on_rng_dtype_trajectory_and_ddims_deterministic_default(schedule, shape, seed):
    """The same seed gives the same sample, in the dtype asked for; return_trajectory gives the T + 1
    states x_T..x_0; DDIM's defaults are eta = 0 and no clipping (docs/ddim.md (D3): no noise is drawn)."""
    oracle = GaussianDataOracle(0.1, 0.5, schedule)
    for sampler in (ddpm_sample, ddim_sample):
        a = sampler(oracle, shape, schedule, rng=np.random.default_rng(seed), dtype=np.float64)
        b = sampler(oracle, shape, schedule, rng=np.random.default_rng(seed), dtype=np.float64)
        assert a.dtype == np.float64 and a.shape == tuple(shape)
        np.testing.assert_array_equal(a, b)
        x, trajectory = sampler(oracle, shape, schedule, rng=np.random.default_rng(seed), dtype=np.float64,
                                return_trajectory=True)
        assert len(trajectory) == schedule.T + 1
        np.testing.assert_array_equal(trajectory[-1], x)
        np.testing.assert_array_equal(x, a)
    x_T = np.random.default_rng(seed).standard_normal(shape)
    other = ddim_sample(oracle, shape, schedule, rng=np.random.default_rng(seed + 1), x_T=x_T, dtype=np.float64)
    np.testing.assert_array_equal(ddim_sample(oracle, shape, schedule, rng=np.random.default_rng(seed), x_T=x_T,
                                              dtype=np.float64), other)
    np.testing.assert_array_equal(other, ddim_sample(oracle, shape, schedule, rng=np.random.default_rng(seed),
                                                     x_T=x_T, dtype=np.float64, eta=0.0, clip_x0=False))


@given(schedules(min_T=2, max_T=12), seeds())
def test_registered_samplers_and_ddim_step_default_to_the_documented_options(schedule, seed):
    """The registry's DDPM sampler defaults to variance fixed_small, no clipping; DDIM's sampler and
    ddim_step to eta = 0 and no clipping (docs/ddim.md (D1)-(D3)); data at 1.5, so a clip would show."""
    oracle = GaussianDataOracle(1.5, 0.5, schedule)
    for name, explicit in (("ddpm", dict(variance="fixed_small", clip_x0=False)),
                           ("ddim", dict(eta=0.0, clip_x0=False))):
        default, given_ = (sample(sampler, oracle, (16, 2), schedule, rng=np.random.default_rng(seed), dtype=np.float64)
                           for sampler in (make_sampler(name), make_sampler(name, **explicit)))
        assert np.abs(given_).max() > 1.0
        np.testing.assert_array_equal(default, given_)
    x_t, z = np.random.default_rng(seed).standard_normal((2, 4, 3))
    chain, k = schedule.respace(schedule.T), schedule.T
    eps_hat = oracle(x_t, np.full(4, k))
    np.testing.assert_array_equal(ddim_step(x_t, k, eps_hat, z, chain), ddim_step(x_t, k, eps_hat, z, chain, eta=0.0,
                                                                                    clip_x0=False))


@given(schedules(min_T=2, max_T=8), st.sampled_from(["ddpm", "ddim"]), seeds())
def test_what_is_not_given_is_drawn_from_the_default_rng_and_a_given_noise_takes_the_samples_dtype(schedule, name,
                                                                                                   seed):
    """Draws: with rng=None whatever of x_T and noise is not given comes from minidiff.default_rng(); a given
    z is cast to x's dtype (float32 x_T and float64 noise give a float32 sample)."""
    rng, oracle, shape = np.random.default_rng(seed), GaussianDataOracle(0.1, 0.5, schedule), (3, 2)
    x_T = rng.standard_normal(shape).astype(np.float32)
    noise = [rng.standard_normal(shape) for _ in range(schedule.T)]
    for given_ in (dict(), dict(x_T=x_T), dict(noise=noise), dict(x_T=x_T, noise=noise)):
        x = sample(make_sampler(name, **({"eta": 1.0} if name == "ddim" else {})), oracle, shape, schedule,
                   **given_)
        assert x.shape == shape and x.dtype == np.float32 and np.all(np.isfinite(x))


@given(schedules(min_T=2, max_T=8), seeds())
def test_a_nan_in_the_noise_at_k_1_does_not_reach_the_sample(schedule, seed):
    """DDPM and DDIM draw no z at k = 1 (noise_shape None there): a given noise[K-1] is shape-checked but
    ignored, so a NaN in it cannot reach the sample."""
    rng, oracle, shape = np.random.default_rng(seed), GaussianDataOracle(0.1, 0.5, schedule), (3, 2)
    x_T, noise = rng.standard_normal(shape), rng.standard_normal((schedule.T,) + shape)
    noise[-1] = np.nan
    for sampler in (make_sampler("ddpm"), make_sampler("ddim", eta=1.0)):
        assert sampler.noise_shape(shape, 1) is None and sampler.noise_shape(shape, 2) == shape
        x = sample(sampler, oracle, shape, schedule, x_T=x_T, noise=noise, dtype=np.float64)
        assert np.all(np.isfinite(x))


def test_a_sampler_defines_step_or_advance_and_starts_from_the_runs_x_T():
    """Sampler.__init_subclass__ accepts a subclass that overrides only advance and refuses one with neither;
    run_chain calls start(x_T, chain) with the run's x_T."""
    seen = []

    class OnlyAdvance(Sampler):
        def start(self, x_T, chain):
            seen.append(x_T)
            return SamplerState(chain)

        def advance(self, state, x, k, eps_at, draw):
            return x

    with pytest.raises(TypeError, match="must define step"):
        type("Neither", (Sampler,), {})
    schedule, x_T = Schedule.cosine(5), np.random.default_rng(0).standard_normal((2, 3))
    np.testing.assert_array_equal(sample(OnlyAdvance(), lambda x, t: 0 * x, (2, 3), schedule, x_T=x_T), x_T)
    assert len(seen) == 1 and seen[0] is x_T


@given(schedules(min_T=2, max_T=12), seeds())
def test_ddim_step_refuses_a_step_outside_1_to_K_a_negative_eta_and_arrays_of_other_shapes(schedule, seed):
    """ddim_step (D2) is defined for chain steps k = 1..K and eta >= 0 (D3), on x_t, eps_hat and z of one
    shape: k = 0 would read alpha_bar_{-1} (the last entry), and a (B, 1) eps_hat would broadcast."""
    x_t, eps_hat, z = np.random.default_rng(seed).standard_normal((3, 4, 2))
    chain = schedule.respace(schedule.T)
    for k in (0, chain.T + 1):
        with pytest.raises(ValueError, match=f"k must be .* got {k}"):
            ddim_step(x_t, k, eps_hat, z, chain)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_step(x_t, 1, eps_hat, z, chain, eta=-0.5)
    for bad in (dict(x_t=x_t[:, :1]), dict(eps_hat=eps_hat[:, :1]), dict(z=z[:, :1])):
        args = dict(dict(x_t=x_t, eps_hat=eps_hat, z=z), **bad)
        with pytest.raises(ValueError, match=f"must have shape .*{next(iter(bad))}|{next(iter(bad))} must have shape"):
            ddim_step(args["x_t"], 2, args["eps_hat"], args["z"], chain)


def test_draws_refuse_an_empty_batch_or_chain():
    """A sample shape (B, ...) has positive sizes, and a chain at least one step (K >= 1)."""
    s = Schedule.cosine(4)
    for shape in ((0, 2), (2, 0)):
        with pytest.raises(ValueError, match=r"shape\[\d\] must be >= 1"):
            ddpm_sample(smooth_model, shape, s)
    with pytest.raises(ValueError, match="K must be >= 1"):
        Draws((2, 2), 0)


@given(schedules(min_T=2, max_T=8), seeds(), st.sampled_from(["fixed_small", "fixed_large"]))
def test_ddpm_sample_runs_every_step_on_the_kernel_implementation_it_is_given(schedule, seed, variance):
    """impl picks the implementation of (D1)'s fused reverse_step: each of the T steps resolves exactly it."""
    resolved = []
    resolve = kernels.resolve

    def spy(impl, backend):
        resolved.append(impl)
        return resolve(impl, backend)
    kernels.resolve = spy
    try:
        for impl in kernels.available():
            resolved.clear()
            ddpm_sample(smooth_model, (3, 2), schedule, rng=np.random.default_rng(seed), variance=variance, impl=impl)
            assert resolved == [impl] * schedule.T
    finally:
        kernels.resolve = resolve


@given(train_sets, schedules(max_T=50), st.data(), seeds())
def test_empirical_denoiser_keeps_the_shape_of_image_batches_and_refuses_a_set_without_a_batch_axis(train, schedule,
                                                                                                  data, seed):
    """x0_hat and eps_hat of (B, C, H, W) inputs are (B, C, H, W): the flattened eq. (E16) reshaped back,
    the same numbers as for the flat (B, C*H*W) data; train_x must be (N, ...) with N >= 1."""
    t = np.full(3, data.draw(st.integers(1, schedule.T)))
    images = train.reshape(len(train), 1, 1, -1)
    x_t = np.random.default_rng(seed).normal(size=(3,) + images.shape[1:])
    flat, image = EmpiricalDenoiser(train, schedule), EmpiricalDenoiser(images, schedule)
    assert image.x0_hat(x_t, t).shape == image(x_t, t).shape == x_t.shape
    np.testing.assert_allclose(image.x0_hat(x_t, t).reshape(3, -1), flat.x0_hat(x_t.reshape(3, -1), t), rtol=1e-12)
    for bad in (train[0], train[:0]):
        with pytest.raises(ValueError, match="train_x must be \\(N, ...\\) with N >= 1"):
            EmpiricalDenoiser(bad, schedule)
