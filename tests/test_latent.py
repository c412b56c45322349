"""Latent diffusion: the KL autoencoder (eq. Z1, Z2), the scale factor (Z3, Z4), decoding (Z5), the LDM's
checkpoint, and its two-stage training (docs/latent.md)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidiff
from minidiff import checkpoint, data, latent, models
from minidiff.autograd import Tensor
from minidiff.models.klae import KLAutoencoder, padding_for
from minidiff.models.ldm import LDM, latent_scale
from minidiff.train import TrainConfig, Trainer
from tests.test_models import _param_check

F64 = np.float64


def _images(n, side, seed=0, channels=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, channels, side, side))


def _tiny_ldm(side=8, dtype=None, **kw):
    minidiff.manual_seed(0)
    args = dict(latent_channels=2, channels=4, T=6, schedule="cosine", base_channels=4, attention_resolutions=(),
                dropout=0.0, eval_images=3)
    return LDM((1, side, side), **{**args, **kw}, dtype=dtype)


# ---------------------------------------------------------------- the KL autoencoder (Z1, Z2)

@settings(max_examples=8, deadline=None)
@given(st.sampled_from([(8, 1, 4), (16, 1, 8), (28, 2, 8), (12, 1, 6), (10, 1, 6)]), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 2))
def test_the_latent_grid_is_the_image_halved_k_times_after_padding(case, batch, latent_channels, image_channels):
    side, k, grid = case
    minidiff.manual_seed(0)
    model = KLAutoencoder((image_channels, side, side), latent_channels, channels=2, downsamples=k)
    x = _images(batch, side, channels=image_channels).astype(np.float32)
    q = model.posterior(Tensor(x))
    assert model.latent_shape == (latent_channels, grid, grid)
    assert q.mean.shape == q.logvar.shape == (batch, latent_channels, grid, grid)
    assert model.decode(q.mean).shape == x.shape          # the padding is cropped back off
    assert model.reconstruct(x).shape == x.shape
    assert (side + 2 * padding_for(side, k)) % 2 ** (k + 1) == 0


def test_the_autoencoder_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError, match="square images only"):
        KLAutoencoder((1, 8, 6))
    with pytest.raises(ValueError, match="only even paddings"):
        KLAutoencoder((1, 9, 9))
    with pytest.raises(ValueError, match="kl_weight"):
        KLAutoencoder(kl_weight=-1e-3)
    model = KLAutoencoder((1, 8, 8), channels=2)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 1, 8, 8\)"):
        model.posterior(Tensor(np.zeros((2, 1, 16, 16), np.float32)))
    with pytest.raises(ValueError, match=r"z must have shape \(\*, 4, 4, 4\)"):
        model.decode(Tensor(np.zeros((2, 4, 8, 8), np.float32)))


@pytest.mark.parametrize("side, names", [(8, ("encoder.net.0.weight", "decoder.net.2.weight", "encoder.net.6.bias")),
                                         (28, ("encoder.net.0.weight", "decoder.net.10.weight"))])
def test_klae_loss_gradcheck(side, names):
    minidiff.manual_seed(0)
    model = KLAutoencoder((1, side, side), latent_channels=2, channels=2, kl_weight=0.3, dtype=F64)
    x = _images(2, side)

    def loss():
        value, _ = model.loss((x, None), np.random.default_rng(3))   # the same eps every call
        return value
    for name in names:
        _param_check(model, name, loss)


@pytest.mark.parametrize("kl_weight", [0.0, 1e-4, 0.5])
def test_klae_loss_is_squared_error_plus_kl_weight_times_kl_per_pixel(kl_weight):
    """Eq. (Z2) against an independent KL, torch.distributions' closed form for N(mu, sigma^2) || N(0, 1)."""
    torch = pytest.importorskip("torch")
    minidiff.manual_seed(1)
    model = KLAutoencoder((1, 8, 8), latent_channels=3, channels=4, kl_weight=kl_weight, dtype=F64)
    with minidiff.no_grad():
        model.encoder.net[-1].bias.data[3:] -= 1.0   # posterior std away from 1 so the KL is not ~0
    x = _images(5, 8, seed=2)
    loss, metrics = model.loss((x, None), np.random.default_rng(4))
    q = model.posterior(Tensor(x))
    mean, logvar = q.mean.data, q.logvar.data
    eps = np.random.default_rng(4).standard_normal(mean.shape)
    x_hat = model.decode(Tensor(mean + np.exp(0.5 * logvar) * eps)).data
    normal = torch.distributions.Normal
    kl = torch.distributions.kl_divergence(normal(torch.tensor(mean), torch.tensor(np.exp(0.5 * logvar))),
                                           normal(0.0, 1.0)).sum(dim=(1, 2, 3)).numpy()
    expected = np.mean((x_hat - x) ** 2) + kl_weight * kl.mean() / 64
    assert float(loss.data) == pytest.approx(expected, rel=1e-10)
    assert metrics["mse"] == pytest.approx(np.mean((x_hat - x) ** 2), rel=1e-10)
    assert metrics["kl_per_pixel"] == pytest.approx(kl.mean() / 64, rel=1e-10)


def test_a_short_run_lowers_the_autoencoders_test_error():
    ds = data.digits()
    minidiff.manual_seed(0)
    model = KLAutoencoder(ds.image_shape, channels=8)
    before = model.evaluate(ds.x_test, ds.y_test, np.random.default_rng(0))["test_mse"]
    latent.train_autoencoder(model, ds, 60, seed=0, progress=False)
    after = model.evaluate(ds.x_test, ds.y_test, np.random.default_rng(0))
    assert after["test_mse"] < 0.8 * before and after["test_kl_per_latent"] >= 0


# ---------------------------------------------------------------- the scale factor (Z3, Z4)

@settings(max_examples=10, deadline=None)
@given(st.floats(0.05, 20.0), st.floats(-3.0, 3.0), st.integers(0, 2 ** 16), st.integers(3, 20))
def test_the_scale_factor_gives_the_encoded_training_set_unit_variance(gain, offset, seed, n):
    """Law: whatever the codes' spread (a random encoder scaled by `gain`, images shifted by `offset`),
    s E[z | x] over the training set has variance 1 exactly; s = std (inverted) or the images' std fail."""
    model = _tiny_ldm(dtype=F64)
    with minidiff.no_grad():
        model.autoencoder.encoder.net[-1].weight.data *= gain
    x = np.clip(_images(n, 8, seed) * 0.5 + offset, -1, 1)
    s = model.set_latent_scale(model.autoencoder.encode_mean(x))
    codes = model.encode(x)
    assert float(model.latent_scale) == s
    assert np.var(codes.astype(F64)) == pytest.approx(1.0, rel=1e-4)
    assert s == pytest.approx(1.0 / np.std(model.autoencoder.encode_mean(x)), rel=1e-12)


def test_latent_scale_refuses_codes_without_spread():
    with pytest.raises(ValueError, match="nonzero spread"):
        latent_scale(np.ones((4, 2, 2, 2)))


def test_first_stage_with_a_given_autoencoder_copies_it_and_returns_unit_variance_codes():
    ds = data.digits()
    model, trained = _tiny_ldm(), _tiny_ldm().autoencoder
    minidiff.manual_seed(5)
    trained = KLAutoencoder(ds.image_shape, latent_channels=2, channels=4)
    config, codes = latent.first_stage(model, ds, TrainConfig(steps=7, progress=False), trained, log=lambda m: None)
    assert config.steps == 7 and codes.shape == (len(ds.x_train),) + model.latent_shape
    assert np.var(codes.astype(F64)) == pytest.approx(1.0, rel=1e-4)
    for key, value in trained.state_dict().items():
        np.testing.assert_array_equal(model.autoencoder.state_dict()[key], value)
    other = KLAutoencoder(ds.image_shape, latent_channels=3, channels=4)
    with pytest.raises(ValueError, match="hparams"):
        latent.first_stage(model, ds, TrainConfig(steps=7, progress=False), other, log=lambda m: None)


@pytest.mark.parametrize("steps, split", [(2, 1), (4, 1), (2000, 500), (7, 2)])
def test_the_autoencoder_gets_a_quarter_of_the_steps_and_both_stages_at_least_one(steps, split):
    assert latent.autoencoder_steps(steps) == split
    with pytest.raises(ValueError, match="--steps >= 2"):
        latent.autoencoder_steps(1)


# ---------------------------------------------------------------- the LDM (Z5), its loss and checkpoint

def test_ldm_loss_is_the_latent_ddpms_and_refuses_images():
    model = _tiny_ldm(dtype=F64)
    z = np.random.default_rng(0).standard_normal((3,) + model.latent_shape)
    loss, _ = model.loss((z, None), np.random.default_rng(1))
    same, _ = model.ddpm.loss((z, None), np.random.default_rng(1))
    assert float(loss.data) == float(same.data)
    model.ddpm.unet.conv_out.weight.data[...] = 0.1

    def value():
        return model.loss((z, None), np.random.default_rng(1))[0]
    _param_check(model, "ddpm.unet.conv_out.weight", value)
    with pytest.raises(ValueError, match="scaled codes"):
        model.loss((_images(3, 8), None), np.random.default_rng(1))


def test_samples_are_the_decoded_latent_chain_divided_by_the_scale():
    model = _tiny_ldm()
    model.set_latent_scale(np.array([0.0, 0.25]))        # std 0.125: s = 8
    z = model.ddpm.sample(4, np.random.default_rng(9), steps=3)
    expected = model.autoencoder.decode(Tensor(z / np.float32(8.0))).data
    np.testing.assert_allclose(model.sample(4, np.random.default_rng(9), steps=3), expected, rtol=1e-6)
    images = model.sample_images(4, np.random.default_rng(9), sampler="ddim", steps=3)
    assert images.shape == (4, 1, 8, 8) and np.all(np.abs(images) <= 1)


def test_evaluate_reports_the_latent_vlb_and_the_autoencoder_mse():
    model = _tiny_ldm()
    x = _images(5, 8).astype(np.float32)
    model.set_latent_scale(model.autoencoder.encode_mean(x))
    result = model.evaluate(x, None, np.random.default_rng(0))
    mse = float(np.mean((model.autoencoder.reconstruct(x) - x) ** 2))
    assert result["autoencoder_test_mse"] == pytest.approx(mse, rel=1e-5)
    assert all(math.isfinite(v) for v in result.values())
    assert set(result) == {"test_bits_per_dim", "test_prior_bits_per_dim", "test_eps_loss", "autoencoder_test_mse"}


def test_an_ldm_checkpoint_round_trips_to_the_same_samples(tmp_path):
    ds = data.digits()
    model = _tiny_ldm()
    config, codes = latent.first_stage(model, ds, TrainConfig(steps=3, batch_size=8, ema_decay=0.0, progress=False),
                                       log=lambda m: None)
    trainer = Trainer(model, config, codes, ds.y_train, out_dir=str(tmp_path)).fit()
    loaded, state = models.load(trainer.last_checkpoint)
    assert isinstance(loaded, LDM) and state["model"] == "ldm" and state["hparams"] == loaded.hparams
    assert float(loaded.latent_scale) == float(model.latent_scale) != 1.0
    model.eval()
    np.testing.assert_array_equal(loaded.sample_images(3, np.random.default_rng(2), steps=4),
                                  model.sample_images(3, np.random.default_rng(2), steps=4))
    tensors, _ = checkpoint.load_file(trainer.last_checkpoint)   # one file: both stages and s
    assert {"params.latent_scale", "params.autoencoder.decoder.net.0.weight",
            "params.ddpm.unet.conv_out.weight"} <= set(tensors)


# ---------------------------------------------------------------- class conditioning (docs/guidance_variance.md)

def test_a_class_conditional_ldm_guides_the_latent_eps_and_decodes_it():
    """The latent chain of a class-conditional LDM is its DDPM's guided chain (eq. G4 on the scaled codes):
    at s = 1 the conditional one, at s = 0 the unconditional one, decoded by (Z5); labels reach the loss."""
    # base_channels 16: two or more channels per group, else GroupNorm removes the per-channel embedding
    model = _tiny_ldm(num_classes=3, base_channels=16)
    model.set_latent_scale(np.array([0.0, 0.5]))            # s = 4
    model.ddpm.unet.conv_out.weight.data[...] = 0.1           # eps_hat = 0 at initialisation: no label would show
    assert model.num_classes == 3 and model.hparams["num_classes"] == 3 and "p_uncond" in model.hparams
    for guidance in (0.0, 1.0, 2.5):
        z = model.ddpm.sample(4, np.random.default_rng(1), steps=3, label=2, guidance=guidance)
        expected = model.autoencoder.decode(Tensor(z / np.float32(4.0))).data
        got = model.sample(4, np.random.default_rng(1), steps=3, label=2, guidance=guidance)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    by_label = [model.sample(2, np.random.default_rng(1), steps=3, label=k) for k in range(3)]
    assert not np.allclose(by_label[0], by_label[1])                # the label changes the samples
    z = np.random.default_rng(0).standard_normal((4,) + model.latent_shape).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    loss, _ = model.loss((z, y), np.random.default_rng(5))
    same, _ = model.ddpm.loss((z, y), np.random.default_rng(5))
    assert float(loss.data) == float(same.data)
    result = model.evaluate(_images(4, 8).astype(np.float32), y, np.random.default_rng(0))
    assert all(math.isfinite(v) for v in result.values())
    unconditional = _tiny_ldm()
    assert "num_classes" not in unconditional.hparams and unconditional.num_classes == 0
