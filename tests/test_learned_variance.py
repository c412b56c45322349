"""The learned reverse variance (docs/guidance_variance.md §2): the interpolation (G6), the VLB and the
ancestral sampler with Sigma_theta, and the hybrid loss whose VLB term trains only the variance (G7)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff
from minidiff import checkpoint, diffusion, models
from minidiff.autograd import Tensor
from minidiff.diffusion import learned_log_variance, make_sampler, p_mean_variance, vb_terms_bpd
from minidiff.models.ddpm import DDPM
from minidiff.testing import gradcheck
from tests.strategies_diffusion import batch_shapes, problems, schedules, seeds, timesteps


def _on_grid(x, levels=17):
    return np.round((x + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1


# ---------------------------------------------------------------- eq. (G6)

@given(schedule=schedules(max_T=200), shape=batch_shapes(), seed=seeds(), data=st.data())
def test_learned_log_variance_interpolates_log_beta_and_log_beta_tilde_with_the_t1_convention(schedule, shape, seed,
                                                                                             data):
    t = data.draw(timesteps(schedule, shape[0], include_one=True))
    v = np.random.default_rng(seed).uniform(-0.5, 1.5, shape)       # v may leave [0, 1]: no clipping
    log_beta = np.log(schedule.betas[t])                             # recomputed here from the tables
    with np.errstate(divide="ignore"):                              # beta_tilde_1 = 0: replaced just below
        log_beta_tilde = np.log(schedule.posterior_variance[t])
    t1 = schedule.posterior_variance[2] if schedule.T > 1 else schedule.betas[1]  # sigma_1^2 of both choices (P4)
    log_beta[t == 1], log_beta_tilde[t == 1] = np.log(t1), np.log(t1)
    per = (-1,) + (1,) * (len(shape) - 1)
    expected = v * log_beta.reshape(per) + (1 - v) * log_beta_tilde.reshape(per)
    np.testing.assert_allclose(learned_log_variance(v, t, schedule), expected, rtol=1e-12, atol=1e-12)


@given(problem=problems(max_T=100), include_one=st.booleans(), which=st.sampled_from(["fixed_small", "fixed_large"]))
def test_with_v_pinned_to_1_or_0_the_vlb_is_the_fixed_large_or_fixed_small_vlb_exactly(problem, include_one, which):
    schedule, t, x0, eps, rng = problem
    if include_one:
        t[0] = 1
    x0 = _on_grid(x0)
    x_t = diffusion.q_sample(x0, t, eps, schedule)
    eps_hat = eps + 0.3 * rng.standard_normal(eps.shape)
    v = np.full(x0.shape, 1.0 if which == "fixed_large" else 0.0)
    learned = vb_terms_bpd(x0, x_t, t, eps_hat, schedule, "learned", levels=17, v=v)
    np.testing.assert_array_equal(learned, vb_terms_bpd(x0, x_t, t, eps_hat, schedule, which, levels=17))


def test_the_full_loop_vlb_takes_a_model_that_returns_eps_and_v():
    schedule = diffusion.Schedule.cosine(20)
    x0 = _on_grid(np.random.default_rng(0).uniform(-1, 1, (3, 1, 2, 2)))
    eps_model = lambda x, t: 0.1 * x                                     # noqa: E731
    for v, fixed in ((1.0, "fixed_large"), (0.0, "fixed_small")):
        learned = diffusion.nll_bpd(lambda x, t: (eps_model(x, t), np.full(x.shape, v)), x0, schedule,
                                    np.random.default_rng(1), variance="learned", levels=17)
        want = diffusion.nll_bpd(eps_model, x0, schedule, np.random.default_rng(1), variance=fixed, levels=17)
        np.testing.assert_array_equal(learned["total_bpd"], want["total_bpd"])
    with pytest.raises(ValueError, match="v must have shape"):
        diffusion.nll_bpd(lambda x, t: (x, np.ones((3, 1))), x0, schedule, np.random.default_rng(1),
                          variance="learned", levels=17)


@given(schedule=schedules(max_T=30), seed=seeds())
def test_the_importance_sampled_bound_takes_a_model_that_returns_eps_and_v(schedule, seed):
    """nll_bpd_importance with v pinned to 1 or 0 is the fixed_large or fixed_small estimate with the same draws."""
    x0 = _on_grid(np.random.default_rng(seed).uniform(-1, 1, (3, 1, 2, 2)))
    eps_model = lambda x, t: 0.1 * x + 0.01 * t.reshape(-1, 1, 1, 1)                  # noqa: E731
    for v, fixed in ((1.0, "fixed_large"), (0.0, "fixed_small")):
        learned = diffusion.nll_bpd_importance(lambda x, t: (eps_model(x, t), np.full(x.shape, v)), x0, schedule,
                                               np.random.default_rng(seed), n_t=3, variance="learned", levels=17)
        want = diffusion.nll_bpd_importance(eps_model, x0, schedule, np.random.default_rng(seed), n_t=3,
                                            variance=fixed, levels=17)
        np.testing.assert_array_equal(learned, want)


def test_p_mean_variance_takes_v_exactly_for_the_learned_variance():
    schedule, x, t = diffusion.Schedule.cosine(10), np.zeros((2, 3)), np.array([2, 5])
    with pytest.raises(ValueError, match="v is needed exactly for variance='learned'"):
        p_mean_variance(x, x, t, schedule, "learned")
    with pytest.raises(ValueError, match="v is needed exactly for variance='learned'"):
        p_mean_variance(x, x, t, schedule, "fixed_small", v=x)
    with pytest.raises(ValueError, match="v must have shape"):
        p_mean_variance(x, x, t, schedule, "learned", v=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="variance must be one of"):
        p_mean_variance(x, x, t, schedule, "learnt")


@given(problem=problems(max_T=50, max_batch=2), seed=seeds())
def test_vlb_term_gradient_in_v_matches_finite_differences(problem, seed):
    schedule, t, x0, eps, rng = problem
    x0 = _on_grid(x0)
    x_t = diffusion.q_sample(x0, t, eps, schedule)
    eps_hat = eps + 0.3 * rng.standard_normal(eps.shape)
    v = np.random.default_rng(seed).uniform(0.0, 1.0, x0.shape)
    gradcheck(lambda v_: vb_terms_bpd(x0, x_t, t, eps_hat, schedule, "learned", levels=17, v=v_), [v],
              atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- sampling with Sigma_theta

@pytest.mark.parametrize("steps", [None, 4])
def test_the_ddpm_sampler_with_v_pinned_is_the_fixed_variance_sampler(steps):
    schedule = diffusion.Schedule.cosine(12)
    eps_model = lambda x, t: np.tanh(x) * 0.5 + 0.01 * t.reshape(-1, 1, 1, 1)     # noqa: E731
    for v, fixed in ((1.0, "fixed_large"), (0.0, "fixed_small")):
        pinned = lambda x, t, v=v: (eps_model(x, t), np.full(x.shape, v))           # noqa: E731
        got = diffusion.sample(make_sampler("ddpm", variance="learned", clip_x0=True), pinned, (3, 1, 2, 2),
                               schedule, np.random.default_rng(2), steps=steps, dtype=np.float64)
        want = diffusion.sample(make_sampler("ddpm", variance=fixed, clip_x0=True), eps_model, (3, 1, 2, 2),
                                schedule, np.random.default_rng(2), steps=steps, dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="returns \\(eps_hat, v\\)"):
        diffusion.sample(make_sampler("ddpm", variance="learned"), eps_model, (3, 1, 2, 2), schedule,
                         np.random.default_rng(2), steps=steps)


def test_the_learned_variance_scales_the_sampler_noise_per_element():
    """Each element's step noise is exp(log Sigma_theta / 2) z: doubling v's distance to 0 moves it in log space."""
    schedule = diffusion.Schedule.cosine(12)
    x, z, k = np.zeros((1, 1, 1, 2)), np.ones((1, 1, 1, 2)), 7
    state = diffusion.SamplerState(schedule, v=np.array([[[[0.0, 1.0]]]]))
    step = make_sampler("ddpm", variance="learned").step(state, x, k, np.zeros_like(x), z)
    mean = make_sampler("ddpm", variance="learned").step(state, x, k, np.zeros_like(x), 0 * z)
    np.testing.assert_allclose((step - mean).ravel(),
                               np.sqrt([schedule.posterior_variance[k], schedule.betas[k]]), rtol=1e-12)


# ---------------------------------------------------------------- the model and the hybrid loss, eq. (G7)

def _learned_ddpm(**options):
    minidiff.manual_seed(0)
    model = DDPM((1, 4, 4), T=10, base_channels=16, channel_mults=(1, 2), attention_resolutions=(2,), dropout=0.0,
                 eval_images=3, levels=17, variance="learned", **options)
    out = model.unet.conv_out          # zero-initialised: give it weights so that eps_hat and v vary
    out.weight.data = np.random.default_rng(1).standard_normal(out.weight.shape).astype(out.weight.dtype) * 0.3
    return model


def test_the_network_outputs_one_v_channel_per_image_channel_starting_at_one_half():
    minidiff.manual_seed(0)
    model = DDPM((3, 4, 4), T=10, base_channels=8, channel_mults=(1, 2), attention_resolutions=(), variance="learned")
    x, t = np.zeros((2, 3, 4, 4), np.float32), np.array([3, 8])
    assert model(Tensor(x), t).shape == (2, 6, 4, 4)
    eps_hat, v = model.network_arrays(x, t)
    assert eps_hat.shape == v.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(v, 0.5)           # zero-initialised output r = 0: v = (r + 1)/2
    np.testing.assert_array_equal(model.eps_array(x, t), eps_hat)


def test_the_vlb_term_of_the_hybrid_loss_trains_only_the_variance():
    """Stop-gradient: d L_vlb / d(mean output) = 0, so the output rows that make eps_hat get no gradient from it."""
    model = _learned_ddpm().double()
    rng = np.random.default_rng(3)
    x0, t = _on_grid(rng.uniform(-1, 1, (4, 1, 4, 4))), np.array([1, 3, 6, 10])
    x_t = diffusion.q_sample(x0, t, rng.standard_normal(x0.shape), model.schedule)
    output = Tensor(model(Tensor(x_t), t).data, requires_grad=True)
    prediction, v = model.split_output(output)
    model.vlb_loss(x0, x_t, t, prediction, v).backward()
    assert np.all(output.grad[:, :1] == 0) and np.abs(output.grad[:, 1:]).max() > 0
    model.zero_grad()
    prediction, v = model.split_output(model(Tensor(x_t), t))
    model.vlb_loss(x0, x_t, t, prediction, v).backward()
    weight, bias = model.unet.conv_out.weight.grad, model.unet.conv_out.bias.grad
    assert np.all(weight[:1] == 0) and np.all(bias[:1] == 0)                 # the eps_hat channel's parameters
    assert np.abs(weight[1:]).max() > 0 and np.abs(bias[1:]).max() > 0       # the v channel's


def test_the_hybrid_loss_is_l_simple_plus_lambda_times_T_times_the_mean_vlb_term():
    model = _learned_ddpm(vlb_weight=0.01).double()
    x0 = _on_grid(np.random.default_rng(4).uniform(-1, 1, (5, 1, 4, 4)))
    loss, metrics = model.loss((x0, np.zeros(5, np.int64)), np.random.default_rng(5))
    rng = np.random.default_rng(5)                                    # replay the draws of `loss`
    t = rng.integers(1, 11, size=5)
    eps = rng.standard_normal(x0.shape)
    x_t = diffusion.q_sample(x0, t, eps, model.schedule)
    eps_hat, v = model.network_arrays(x_t, t)
    l_simple = np.mean((eps_hat - eps) ** 2)
    l_vlb = 10 * np.mean(vb_terms_bpd(x0, x_t, t, eps_hat, model.schedule, "learned", levels=17, v=v))
    np.testing.assert_allclose([metrics["l_simple"], metrics["l_vlb"]], [l_simple, l_vlb], rtol=1e-9)
    np.testing.assert_allclose(float(loss.data), l_simple + 0.01 * l_vlb, rtol=1e-9)


def test_a_learned_variance_checkpoint_samples_and_evaluates_with_sigma_theta(tmp_path):
    model = _learned_ddpm().float()
    path = tmp_path / "model.safetensors"
    checkpoint.save_checkpoint(path, model.state_dict(), {"model": model.name, "hparams": model.hparams, "step": 0})
    again, _ = models.load(path)
    assert again.hparams["variance"] == "learned" and again.hparams["vlb_weight"] == 0.001
    x = _on_grid(np.random.default_rng(6).uniform(-1, 1, (3, 1, 4, 4))).astype(np.float32)
    metrics = again.evaluate(x, np.zeros(3, np.int64), np.random.default_rng(7))
    want = diffusion.nll_bpd(model.network_arrays, x, model.schedule, np.random.default_rng(7), variance="learned",
                             levels=17)
    np.testing.assert_allclose(metrics["test_bits_per_dim"], want["total_bpd"].mean(), rtol=1e-6)
    learned = again.sample(3, np.random.default_rng(8), steps=5)
    direct = diffusion.sample(make_sampler("ddpm", variance="learned", clip_x0=True), model.network_arrays,
                              (3, 1, 4, 4), model.schedule, np.random.default_rng(8), steps=5)
    np.testing.assert_array_equal(learned, direct)
    fixed = again.sample(3, np.random.default_rng(8), steps=5, variance="fixed_small")
    assert np.abs(fixed - learned).max() > 1e-4
