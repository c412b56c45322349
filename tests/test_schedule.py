"""Schedule tables and timestep respacing, docs/forward_process.md, docs/ddim.md."""
import re

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from minidiff.diffusion import Schedule, make_schedule, spaced_timesteps
from minidiff.diffusion.process import ddim_sigma
from minidiff.kernels.reference import VARIANCES
from tests.strategies_diffusion import KINDS, OPTIONS, schedules, smallest_T

TABLES = ("betas", "alphas", "alpha_bars", "alpha_bars_prev", "sqrt_alpha_bars", "sqrt_one_minus_alpha_bars",
          "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
          "elbo_weights", "snr")


# ---------------------------------------------------------------- tables and their identities

@given(schedules())
def test_tables_are_float64_length_T_plus_1_with_clean_data_at_index_0(s):
    for name in TABLES:
        table = getattr(s, name)
        assert table.dtype == np.float64 and table.shape == (s.T + 1,), name
    assert s.betas[0] == 0.0 and s.alphas[0] == 1.0 and s.alpha_bars[0] == 1.0
    assert s.sqrt_one_minus_alpha_bars[0] == 0.0 and s.snr[0] == np.inf
    # t = 0 is the data itself: alpha_bar_{-1} := 1, and q(x_{-1} | x_0, x_0) is the point mass at x_0
    assert s.alpha_bars_prev[0] == 1.0 and s.posterior_variance[0] == 0.0 and s.elbo_weights[0] == 0.0
    assert s.posterior_mean_coef1[0] == 1.0 and s.posterior_mean_coef2[0] == 0.0
    assert s.timesteps.dtype == np.int64 and np.array_equal(s.timesteps, np.arange(s.T + 1))


@given(schedules())
def test_the_default_variance_is_fixed_small(s):
    for default, small in ((s.model_variance(), s.model_variance("fixed_small")),
                           ((s.elbo_weight_table(),), (s.elbo_weight_table("fixed_small"),))):
        for a, b in zip(default, small):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(s.elbo_weight_table(), s.elbo_weights)


@given(st.sampled_from(sorted(OPTIONS)), st.integers(1, 60), st.data())
def test_make_schedule_passes_its_options_to_the_named_constructor(kind, T, data):
    options = OPTIONS[kind](data.draw)
    T = max(T, smallest_T(kind))
    np.testing.assert_array_equal(make_schedule(kind, T, **options).betas, getattr(Schedule, kind)(T, **options).betas)


@given(schedules(max_T=40), st.data())
def test_a_given_timestep_map_is_kept_as_integers_after_index_0(s, data):
    steps = sorted(data.draw(st.lists(st.integers(1, 10_000), min_size=s.T, max_size=s.T, unique=True)))
    r = Schedule(s.betas[1:], timesteps=np.array(steps, dtype=np.int32))
    assert r.timesteps.dtype == np.int64 and list(r.timesteps) == [0] + steps


@given(schedules())
def test_alpha_bar_strictly_decreasing_and_sqrt_pair_is_unit(s):
    assert np.all(np.diff(s.alpha_bars) < 0)
    assert np.all((s.alpha_bars[1:] > 0) & (s.alpha_bars[1:] < 1))
    np.testing.assert_allclose(s.sqrt_alpha_bars ** 2 + s.sqrt_one_minus_alpha_bars ** 2, 1.0, rtol=0, atol=1e-15)


@given(schedules())
def test_posterior_variance_between_0_and_beta(s):
    assert s.posterior_variance[1] == 0.0
    assert np.all(s.posterior_variance >= 0) and np.all(s.posterior_variance <= s.betas)


@given(schedules())
def test_every_table_satisfies_its_defining_identity(s):
    t = np.arange(1, s.T + 1)
    b, a, ab = s.betas[t], s.alphas[t], s.alpha_bars[t]
    ab_prev = np.array([np.prod(1.0 - s.betas[1:k]) for k in t])  # prod_{s < t} alpha_s, from the betas
    np.testing.assert_allclose(a, 1.0 - b, rtol=1e-15)
    np.testing.assert_allclose(ab, [np.prod(1.0 - s.betas[1:k + 1]) for k in t], rtol=1e-12)
    np.testing.assert_allclose(s.alpha_bars_prev[t], ab_prev, rtol=1e-12)
    np.testing.assert_allclose(s.posterior_variance[t], (1 - ab_prev) / (1 - ab) * b, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(s.posterior_mean_coef1[t], np.sqrt(ab_prev) * b / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef2[t], np.sqrt(a) * (1 - ab_prev) / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(s.snr[t], ab / (1 - ab), rtol=1e-12)
    sigma2 = np.exp(s.posterior_log_variance_clipped[t])
    np.testing.assert_allclose(s.elbo_weights[t], b ** 2 / (2 * sigma2 * a * (1 - ab)), rtol=1e-12)
    # noise-free case x_t = sqrt(alpha_bar_t) x_0: mu_tilde = sqrt(alpha_bar_{t-1}) x_0,
    # so coef1 + coef2 sqrt(ab_t) = sqrt(ab_{t-1})
    np.testing.assert_allclose(s.posterior_mean_coef1[t] + s.posterior_mean_coef2[t] * np.sqrt(ab),
                               np.sqrt(ab_prev), rtol=1e-12)


SHORT_KINDS = tuple(kind for kind in KINDS if kind == "custom" or smallest_T(kind) == 1)  # those with T = 1, 2


@example(Schedule(np.array([0.3])), "fixed_small")
@example(Schedule(np.array([0.01, 0.2])), "fixed_large")
@given(st.one_of(schedules(max_T=2, kinds=SHORT_KINDS), schedules()), st.sampled_from(VARIANCES))
def test_t1_log_variance_follows_the_ddpm_code(s, variance):
    """eq. (P4), (P6): sigma_1^2 = beta_tilde_2 (beta_1 when T = 1) for both variances, its log the clipped
    log-variance; beta_tilde_t or beta_t for t >= 2; variance = exp(log-variance); q's beta_tilde_1 = 0."""
    b = s.betas
    expected = b[1] if s.T == 1 else b[1] * b[2] / (1 - (1 - b[1]) * (1 - b[2]))  # beta_tilde_2 from the betas
    var, log_var = s.model_variance(variance)
    np.testing.assert_allclose([var[1], np.exp(log_var[1]), np.exp(s.posterior_log_variance_clipped[1])],
                               expected, rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_var[1:]), var[1:], rtol=1e-14)
    later = s.posterior_variance if variance == "fixed_small" else s.betas
    assert np.all(var[2:] == later[2:]) and s.posterior_variance[1] == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[2:], np.log(s.posterior_variance[2:]), rtol=1e-14)


# ---------------------------------------------------------------- constructors

@given(st.integers(21, 4000))
def test_linear_scales_endpoints_by_1000_over_T(T):
    s = Schedule.linear(T)
    np.testing.assert_allclose([s.betas[1], s.betas[T]], [1e-4 * 1000 / T, 0.02 * 1000 / T], rtol=1e-12)
    np.testing.assert_allclose(np.diff(s.betas[1:]), np.diff(s.betas[1:])[0], rtol=1e-6, atol=1e-15)


@given(st.integers(1, 20))
def test_linear_refuses_T_so_small_that_a_beta_reaches_1(T):
    with pytest.raises(ValueError, match=r"T > 20"):
        Schedule.linear(T)


@given(st.integers(1, 2000), st.sampled_from([0.008, 0.05]), st.sampled_from([0.999, 0.5]))
def test_cosine_follows_f_t_over_f_0_until_the_clip(T, s_offset, max_beta):
    s = Schedule.cosine(T, s=s_offset, max_beta=max_beta)
    f = np.cos((np.arange(T + 1) / T + s_offset) / (1 + s_offset) * np.pi / 2) ** 2
    raw = 1 - f[1:] / f[:-1]
    assert np.all(s.betas[1:] <= max_beta)
    unclipped = np.flatnonzero(np.cumsum(raw > max_beta) == 0)  # before the first clipped step
    np.testing.assert_allclose(s.alpha_bars[unclipped + 1], (f / f[0])[unclipped + 1], rtol=1e-10)


@given(st.integers(2, 500), st.floats(1e-3, 0.5))
def test_quadratic_and_sigmoid_span_their_endpoints(T, beta_end):
    q = Schedule.quadratic(T, beta_end=beta_end)
    np.testing.assert_allclose([q.betas[1], q.betas[T]], [1e-4, beta_end], rtol=1e-12)
    assert np.all(np.diff(np.sqrt(q.betas[1:])) > 0)
    sg = Schedule.sigmoid(T, beta_end=beta_end)
    assert np.all(np.diff(sg.betas[1:]) > 0) and 1e-4 < sg.betas[1] < sg.betas[T] < beta_end


@given(st.integers(1, 500), st.floats(1e-5, 1e-3), st.floats(2e-3, 0.5))
def test_sigmoid_betas_are_a_sigmoid_of_even_steps_from_minus_6_to_6(T, beta_start, beta_end):
    """eq. (F10): logit((beta_t - beta_start)/(beta_end - beta_start)) steps evenly from -6 (t = 1) to 6 (t = T)."""
    s = Schedule.sigmoid(T, beta_start=beta_start, beta_end=beta_end)
    u = (s.betas[1:] - beta_start) / (beta_end - beta_start)
    logit = np.log(u) - np.log1p(-u)
    np.testing.assert_allclose(logit[0], -6.0, atol=1e-6)
    if T > 1:
        np.testing.assert_allclose([logit[-1], *np.diff(logit)], [6.0, *np.full(T - 1, 12.0 / (T - 1))],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("betas, message", [
    ([0.1, 0.0, 0.2], "beta_2"), ([0.1, 1.0], "beta_2"), ([-0.1], "beta_1"), ([0.1, np.nan], "NaN"),
    ([np.inf], r"NaN or inf at t = \[1\]"), ([0.1, 0.2, np.nan], r"NaN or inf at t = \[3\]"), ([], "T >= 1"),
    ([[0.1, 0.2]], "1-D"), ([[0.1], [0.2, 0.3]], "ragged list"), ([0.1, 1e-18], "float64"),
    (np.full(21, 1 - 2.0 ** -52), r"alpha_bar_T underflows to 0 in float64 \(T=21\)")])
def test_bad_betas_raise_value_error_naming_the_problem(betas, message):
    """(The last: alpha_t = 2^-52, so alpha_bar_20 = 2^-1040 is still a (subnormal) positive number and
    alpha_bar_21 = 2^-1092 rounds to 0.)"""
    with pytest.raises(ValueError, match=message):
        Schedule(betas)


def test_betas_that_are_not_real_numbers_raise_type_error():
    for betas in (["0.1", "0.2"], [0.1 + 0.1j]):
        with pytest.raises(TypeError, match=r"betas must be real numbers beta_1..beta_T, got dtype"):
            Schedule(betas)


def test_the_smallest_beta_that_still_changes_alpha_is_accepted():
    """1 - 1e-16 != 1 in float64 (the spacing below 1 is 2^-53), though 1 + 1e-16 == 1."""
    s = Schedule([0.1, 1e-16])
    assert s.alphas[2] < 1.0 and s.betas[2] == 1e-16


@pytest.mark.parametrize("T, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                      ("10", TypeError)])
def test_bad_T_raises(T, error):
    with pytest.raises(error, match="T must be (an integer|>= 1)"):
        Schedule.cosine(T)


# ---------------------------------------------------------------- respacing

@given(st.integers(1, 1000).flatmap(lambda T: st.tuples(st.just(T), st.integers(min(2, T), T))))
def test_spaced_timesteps_descend_unique_from_T_to_1(T_K):
    T, K = T_K
    steps = spaced_timesteps(T, K)
    assert steps.shape == (K,) and steps[0] == T and steps[-1] == 1
    assert np.all(np.diff(steps) < 0)  # strictly descending, hence unique


@given(st.integers(2, 1000))
def test_spaced_timesteps_refuse_K_out_of_range(T):
    for K in (0, 1, T + 1):
        with pytest.raises(ValueError, match="K"):
            spaced_timesteps(T, K)


@given(schedules(min_T=2), st.data())
def test_respaced_chain_keeps_alpha_bar_at_the_kept_steps(s, data):
    K = data.draw(st.integers(2, s.T))
    r = s.respace(K)
    kept = spaced_timesteps(s.T, K)[::-1]
    assert r.T == K and list(r.timesteps) == [0] + list(kept)
    np.testing.assert_allclose(r.alpha_bars[1:], s.alpha_bars[kept], rtol=1e-12)
    # sub-respacing composes: the timesteps map all the way back to the original chain
    r2 = r.respace([1, K])
    assert list(r2.timesteps) == [0, kept[0], kept[-1]]
    np.testing.assert_allclose(r2.alpha_bars[1:], s.alpha_bars[[kept[0], kept[-1]]], rtol=1e-12)


@given(schedules())
def test_respacing_every_step_is_the_identity(s):
    r = s.respace(np.arange(1, s.T + 1))
    for name in TABLES:
        np.testing.assert_allclose(getattr(r, name), getattr(s, name), rtol=1e-10, atol=1e-300, err_msg=name)


@given(schedules(min_T=2), st.data())
def test_ddim_sigma_at_eta_1_is_the_respaced_posterior_std(s, data):
    r = s.respace(data.draw(st.integers(2, s.T)))
    k = np.arange(1, r.T + 1)
    sigma = ddim_sigma(r.alpha_bars[k], r.alpha_bars[k - 1], 1.0)
    np.testing.assert_allclose(sigma, np.sqrt(r.posterior_variance[k]), rtol=1e-10, atol=1e-300)


def test_respace_rejects_duplicate_or_out_of_range_steps():
    s = Schedule.cosine(10)
    for bad in ([3, 3], [0, 5], [11]):
        with pytest.raises(ValueError, match="respaced steps must be unique and in 1..T=10"):
            s.respace(bad)
    for bad in ([2.5], [[1, 2]], np.array([], dtype=np.int64)):
        with pytest.raises(ValueError, match="respace needs an int K or a 1-D integer array"):
            s.respace(bad)


@given(schedules())
def test_from_alpha_bars_rebuilds_the_schedule(s):
    r = Schedule.from_alpha_bars(s.alpha_bars[1:])
    assert np.array_equal(r.alpha_bars, s.alpha_bars)
    np.testing.assert_allclose(r.betas, s.betas, rtol=1e-8, atol=1e-300)


@given(schedules(max_T=40))
def test_from_alpha_bars_keeps_the_tables_float64_whatever_the_input_dtype(s):
    alpha_bars = s.alpha_bars[1:].astype(np.float32)
    assume(np.all(np.diff(alpha_bars) < 0) and alpha_bars[-1] > 0)
    r = Schedule.from_alpha_bars(alpha_bars)
    for name in TABLES:
        assert getattr(r, name).dtype == np.float64, name


@pytest.mark.parametrize("alpha_bars, message", [
    ([0.9, 0.95], "decrease strictly"), ([1.0, 0.5], "decrease strictly"), ([0.5, 0.0], "decrease strictly"),
    ([[0.9]], "1-D"), ([], "1-D"), ([0.9, np.nan], "decrease strictly")])
def test_from_alpha_bars_refuses_non_decreasing_or_out_of_range(alpha_bars, message):
    with pytest.raises(ValueError, match=message):
        Schedule.from_alpha_bars(alpha_bars)


@given(st.one_of(schedules(max_T=2), schedules()), st.data())
def test_from_alpha_bars_names_the_first_entry_that_does_not_decrease(s, data):
    """alpha_bar_k = alpha_bar_{k-1} (alpha_bar_0 = 1) is refused, naming k and both values."""
    alpha_bars = s.alpha_bars[1:].copy()
    k = data.draw(st.integers(1, s.T))
    before = alpha_bars[k - 2] if k >= 2 else 1.0
    alpha_bars[k - 1] = before
    with pytest.raises(ValueError, match=re.escape(f"alpha_bar_{k} = {alpha_bars[k - 1]!r} after {before!r}")):
        Schedule.from_alpha_bars(alpha_bars)


@given(st.one_of(schedules(max_T=2), schedules()))
def test_repr_reports_T_beta_1_beta_T_and_alpha_bar_T(s):
    m = re.fullmatch(r"Schedule\(T=(\d+), beta_1=(\S+), beta_T=(\S+), alpha_bar_T=(\S+)\)", repr(s))
    assert m and int(m[1]) == s.T
    np.testing.assert_allclose([float(m[2]), float(m[3]), float(m[4])],
                               [s.betas[1], s.betas[s.T], s.alpha_bars[s.T]], rtol=5e-3)


@given(st.sampled_from(["linear", "cosine"]), st.integers(50, 2000))
def test_errata_elbo_weights_are_far_from_constant_so_l_simple_reweights_the_bound(kind, T):
    """w_t spans more than an order of magnitude over t = 2..T: dropping it (L_simple) is not 'equivalent'."""
    w = getattr(Schedule, kind)(T).elbo_weights[2:]
    assert w.max() / w.min() > 10


@given(schedules(min_T=3, max_T=30), st.data())
def test_a_schedules_step_mapping_is_integer_steps_increasing_strictly_from_1(schedule, data):
    """timesteps maps a chain's steps k = 1..K to the steps of the schedule it was respaced from (docs/ddim.md
    (D5)): integer steps s_1 < ... < s_K with s_1 >= 1, stored with s_0 = 0 in front; floats, a step 0, a
    repeated or a decreasing step (also in unsigned integers, where a difference would wrap) are refused."""
    T = schedule.T
    kept = np.sort(data.draw(st.lists(st.integers(1, 3 * T), min_size=T, max_size=T, unique=True)))
    chain = Schedule(schedule.betas[1:], timesteps=kept.astype(np.uint16))
    np.testing.assert_array_equal(chain.timesteps, np.concatenate([[0], kept]))
    with pytest.raises(TypeError, match="timesteps must hold integer steps"):
        Schedule(schedule.betas[1:], timesteps=kept.astype(np.float64))
    for bad in (np.concatenate([[0], kept[1:]]), np.concatenate([kept[:1], kept[:-1]]), kept[::-1].copy()):
        for dtype in (np.int64, np.uint16):
            with pytest.raises(ValueError, match="timesteps must increase strictly from >= 1"):
                Schedule(schedule.betas[1:], timesteps=bad.astype(dtype))
