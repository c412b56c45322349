"""Classifier-free guidance (docs/guidance_variance.md §1): the guided eps (G4), the label dropout (G5),
the labelled U-Net, and the guided model that every registered sampler takes."""
import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff
from minidiff import checkpoint, diffusion, models
from minidiff.autograd import Tensor
from minidiff.diffusion import SAMPLERS, guided_eps, guided_model, make_sampler
from minidiff.models.ddpm import DDPM
from minidiff.models.unet import UNet
from tests.strategies_diffusion import batch_shapes, seeds

scales = st.floats(-5.0, 10.0, allow_nan=False)


def _pair(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


# ---------------------------------------------------------------- eq. (G4): the guided eps

@given(shape=batch_shapes(), seed=seeds())
def test_guided_eps_at_scale_one_is_the_conditional_and_at_zero_the_unconditional(shape, seed):
    eps_cond, eps_uncond = _pair(shape, seed)
    np.testing.assert_allclose(guided_eps(eps_cond, eps_uncond, 1.0), eps_cond, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(guided_eps(eps_cond, eps_uncond, 0.0), eps_uncond)


@given(shape=batch_shapes(), seed=seeds(), s1=scales, s2=scales, a=st.floats(0.0, 1.0))
def test_guided_eps_is_affine_in_the_scale_with_slope_the_conditional_minus_the_unconditional(shape, seed, s1, s2, a):
    eps_cond, eps_uncond = _pair(shape, seed)
    g = functools.partial(guided_eps, eps_cond, eps_uncond)
    np.testing.assert_allclose(g(a * s1 + (1 - a) * s2), a * g(s1) + (1 - a) * g(s2), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g(s1 + 1.0) - g(s1), eps_cond - eps_uncond, rtol=1e-9, atol=1e-9)


@given(shape=batch_shapes(), seed=seeds(), w=st.floats(0.1, 10.0))
def test_the_papers_w_is_s_minus_one(shape, seed, w):
    """Ho & Salimans: eps~ = (1 + w) eps(x, y) - w eps(x, null); our scale s = 1 + w (diffusers' guidance_scale)."""
    eps_cond, eps_uncond = _pair(shape, seed)
    np.testing.assert_allclose(guided_eps(eps_cond, eps_uncond, 1.0 + w), (1 + w) * eps_cond - w * eps_uncond,
                               rtol=1e-9, atol=1e-9)


@given(T=st.integers(2, 200), seed=seeds(), s=scales)
def test_guidance_is_classifier_guidance_with_the_implicit_classifier_of_bayes_rule(T, seed, s):
    """Two classes of 1-D data N(m_y, r^2), equally likely: q_t(x | y) = N(a m_y, a^2 r^2 + 1 - a^2) in closed form.
    With the exact eps of each (S1), the guided eps turned into a score (S2) is the conditional score plus
    (s - 1) times grad log q(y | x_t), differentiated here by central differences (eq. G1-G4)."""
    rng = np.random.default_rng(seed)
    schedule = diffusion.Schedule.cosine(T)
    t = rng.integers(1, T + 1, size=6)
    a2 = schedule.alpha_bars[t][:, None]
    m, r = rng.uniform(-1, 1, 2), rng.uniform(0.1, 0.5)
    x = rng.uniform(-1.5, 1.5, (6, 1))
    var = a2 * r ** 2 + 1 - a2

    def log_q(x_, y):                                    # log q_t(x | y), up to a constant common to both y
        return -0.5 * (x_ - np.sqrt(a2) * m[y]) ** 2 / var

    def log_posterior(x_, y):                           # log q(y | x_t) by Bayes' rule, uniform prior
        return log_q(x_, y) - np.logaddexp(log_q(x_, 0), log_q(x_, 1))

    y = 1
    score_cond = -(x - np.sqrt(a2) * m[y]) / var
    weights = np.exp(np.stack([log_posterior(x, k) for k in (0, 1)]))
    score_uncond = sum(weights[k] * -(x - np.sqrt(a2) * m[k]) / var for k in (0, 1))
    sigma = np.sqrt(1 - a2)
    eps_cond, eps_uncond = -sigma * score_cond, -sigma * score_uncond        # (S1) with the exact scores
    h = 1e-5
    grad_classifier = (log_posterior(x + h, y) - log_posterior(x - h, y)) / (2 * h)
    guided_score = diffusion.score_from_eps(guided_eps(eps_cond, eps_uncond, s), t, schedule)
    np.testing.assert_allclose(guided_score, score_cond + (s - 1) * grad_classifier, rtol=1e-5, atol=1e-5)


def test_guided_eps_refuses_mismatched_shapes_and_non_finite_scales():
    with pytest.raises(ValueError, match="eps_uncond must have shape"):
        guided_eps(np.zeros((2, 3)), np.zeros((2, 1)), 1.0)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        guided_eps(np.zeros(2), np.zeros(2), float("inf"))
    with pytest.raises(TypeError, match="scale must be a real number"):
        guided_eps(np.zeros(2), np.zeros(2), "2")


def test_guided_eps_passes_gradients_to_both_branches():
    c, u = Tensor(np.ones(3), requires_grad=True), Tensor(np.zeros(3), requires_grad=True)
    guided_eps(c, u, 2.5).sum().backward()
    np.testing.assert_allclose(c.grad, 2.5)
    np.testing.assert_allclose(u.grad, -1.5)


# ---------------------------------------------------------------- the guided model: one batched call

def test_guided_model_makes_one_network_call_on_the_doubled_batch_with_the_null_label():
    rng = np.random.default_rng(0)
    calls = []

    def network(x, t, y):
        calls.append((x.copy(), t.copy(), y.copy()))
        eps = np.sin(x + y[:, None]) + t[:, None]      # depends on the label
        return eps, np.cos(x * (y[:, None] + 1))        # and a variance output

    x, t, labels = rng.standard_normal((3, 5)), np.array([4, 2, 7]), np.array([0, 2, 1])
    eps, v = guided_model(network, labels, 3, 2.5)(x, t)
    assert len(calls) == 1
    x2, t2, y2 = calls[0]
    np.testing.assert_array_equal(x2, np.concatenate([x, x]))
    np.testing.assert_array_equal(t2, np.concatenate([t, t]))
    np.testing.assert_array_equal(y2, [0, 2, 1, 3, 3, 3])
    cond, v_cond = network(x, t, labels)
    uncond, _ = network(x, t, np.full(3, 3))
    np.testing.assert_allclose(eps, guided_eps(cond, uncond, 2.5))
    np.testing.assert_array_equal(v, v_cond)             # the variance of the conditional branch
    with pytest.raises(ValueError, match="labels must have shape"):
        guided_model(network, labels[:2], 3, 1.0)(x, t)


# ---------------------------------------------------------------- the labelled network

def _conditional_ddpm(num_classes=3, **options):
    minidiff.manual_seed(0)
    # C = 16: with 8 groups each group norm keeps >= 2 channels, so the per-channel embedding is not normalised away
    model = DDPM((1, 4, 4), T=10, base_channels=16, channel_mults=(1, 2), attention_resolutions=(2,), dropout=0.0,
                 eval_images=3, levels=17, num_classes=num_classes, **options)
    out = model.unet.conv_out            # zero-initialised: give it weights, or every label predicts eps_hat = 0
    out.weight.data = np.random.default_rng(1).standard_normal(out.weight.shape).astype(out.weight.dtype) * 0.3
    return model.float()


def test_the_label_changes_eps_hat_and_the_null_label_is_its_own_class():
    model = _conditional_ddpm()
    x = np.random.default_rng(2).standard_normal((4, 1, 4, 4)).astype(np.float32)
    t = np.array([3, 3, 3, 3])
    outputs = [model.eps_array(x, t, np.full(4, y)) for y in range(4)]    # 3 classes and the null label 3
    for i in range(4):
        for j in range(i):
            assert np.abs(outputs[i] - outputs[j]).max() > 1e-4, (i, j)
    # each image depends on its own label alone
    mixed = model.eps_array(x, t, np.array([0, 1, 2, 3]))
    for b in range(4):
        np.testing.assert_allclose(mixed[b], outputs[b][b], rtol=1e-5, atol=1e-6)


def test_the_label_embedding_adds_to_the_time_embedding_and_its_gradient_reaches_only_the_rows_used():
    model = _conditional_ddpm().double()
    x = np.random.default_rng(3).standard_normal((2, 1, 4, 4))
    out = model(Tensor(x), np.array([5, 9]), np.array([2, 3]))
    (out * out).sum().backward()
    grad = model.unet.label_embedding.weight.grad
    assert grad.shape == (4, 64)   # 3 classes + the null label, embedding width 4 C
    assert np.abs(grad[[2, 3]]).min(axis=1).all() and np.all(grad[[0, 1]] == 0)


def test_label_dropout_replaces_labels_by_the_null_label_with_probability_p_uncond():
    y = np.arange(20000) % 3
    for p in (0.0, 0.1, 0.5, 1.0):
        model = _conditional_ddpm(p_uncond=p)
        dropped = model.drop_labels(y, np.random.default_rng(4))
        null = dropped == 3
        np.testing.assert_array_equal(dropped[~null], y[~null])      # a kept label is the true one
        se = np.sqrt(p * (1 - p) / y.size)
        assert abs(null.mean() - p) <= 5 * se + 1e-12, (p, null.mean())


def test_unconditional_and_conditional_networks_refuse_the_wrong_labels():
    model = _conditional_ddpm()
    x, t = np.zeros((2, 1, 4, 4), np.float32), np.array([1, 2])
    with pytest.raises(ValueError, match="needs labels y"):
        model.eps_array(x, t)
    with pytest.raises(ValueError, match="labels y must be integers in 0..3"):
        model.eps_array(x, t, np.array([0, 4]))
    with pytest.raises(ValueError, match="y must have shape"):
        model.eps_array(x, t, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(1, 4, 4, (1, 2), attention_resolutions=())(Tensor(x), t, np.array([0, 1]))
    with pytest.raises(ValueError, match="teaching U-Net"):
        DDPM((2,), network="mlp", num_classes=3)
    with pytest.raises(ValueError, match="teaching U-Net"):
        DDPM((1, 8, 8), unet="diffusers", num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        DDPM((1, 4, 4), T=5, base_channels=4, attention_resolutions=()).sample(2, np.random.default_rng(0), label=1)


def test_the_conditional_unet_works_on_a_latent_grid_shape():
    """Nothing in the conditioning assumes one image channel or 8x8 pixels (a latent grid: 4 channels, 4x4)."""
    minidiff.manual_seed(0)
    model = DDPM((4, 4, 4), T=10, base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_classes=10)
    x = model.sample_images(3, np.random.default_rng(0), sampler="ddim", steps=3, guidance=3.0)
    assert x.shape == (3, 4, 4, 4)
    loss, _ = model.loss((np.zeros((5, 4, 4, 4), np.float32), np.arange(5)), np.random.default_rng(1))
    assert np.isfinite(float(loss.data))


# ---------------------------------------------------------------- every sampler, through the model call

@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_the_guided_model_s1_conditional_s0_unconditional(name):
    model = _conditional_ddpm().double()          # float64: the chains of s = 1 and of eps(x, y) agree to rounding
    labels, shape = np.array([0, 1, 2, 1]), (4, 1, 4, 4)

    def run(model_fn, dtype=np.float64):
        return diffusion.sample(make_sampler(name, clip_x0=True), model_fn, shape, model.schedule,
                                np.random.default_rng(5), steps=4, dtype=dtype)

    conditional = run(functools.partial(model.eps_array, y=labels))
    unconditional = run(functools.partial(model.eps_array, y=np.full(4, 3)))
    np.testing.assert_allclose(run(model.model_fn(labels, 1.0)), conditional, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(run(model.model_fn(labels, 0.0)), unconditional, rtol=1e-9, atol=1e-9)
    assert np.abs(run(model.model_fn(labels, 3.0)) - conditional).max() > 1e-3      # s = 3 steers further
    model.float()
    np.testing.assert_array_equal(model.sample(4, np.random.default_rng(5), sampler=name, steps=4, label=labels,
                                               guidance=3.0),
                                  run(model.model_fn(labels, 3.0), np.float32))


def test_sample_draws_labels_0_to_K_minus_1_in_turn_without_a_label():
    model = _conditional_ddpm()
    default = model.sample(5, np.random.default_rng(6), sampler="ddim", steps=3, guidance=2.0)
    turn = model.sample(5, np.random.default_rng(6), sampler="ddim", steps=3, guidance=2.0, label=[0, 1, 2, 0, 1])
    np.testing.assert_array_equal(default, turn)


# ---------------------------------------------------------------- checkpoints

def test_a_class_conditional_checkpoint_round_trips(tmp_path):
    model = _conditional_ddpm(p_uncond=0.25)
    path = tmp_path / "model.safetensors"
    checkpoint.save_checkpoint(path, model.state_dict(), {"model": model.name, "hparams": model.hparams, "step": 0})
    again, _ = models.load(path)
    assert again.num_classes == 3 and again.hparams["p_uncond"] == 0.25
    x, t = np.random.default_rng(7).standard_normal((3, 1, 4, 4)).astype(np.float32), np.array([2, 5, 9])
    for guidance in (0.0, 1.0, 4.0):
        np.testing.assert_array_equal(again.model_fn([0, 1, 2], guidance)(x, t),
                                      model.model_fn([0, 1, 2], guidance)(x, t))


def test_an_unconditional_ddpm_writes_the_hparams_it_always_wrote():
    model = DDPM((1, 4, 4), T=5, base_channels=4, attention_resolutions=())
    assert not {"num_classes", "p_uncond", "variance", "vlb_weight"} & set(model.hparams)
