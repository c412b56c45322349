"""Models: shapes, float64 gradchecks on tiny configurations, bad input, PCA and retrieval laws."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidiff
from minidiff import data
from minidiff.autograd import Tensor
from minidiff.models import REGISTRY
from minidiff.models.ae import AE, nearest_neighbours, retrieval_precision
from minidiff.models.classifier import Classifier
from minidiff.models.ddpm import DDPM
from minidiff.models.pca import PCA
from minidiff.models.unet import UNet
from minidiff.models.vae import CVAE, VAE
from minidiff.testing import gradcheck

F64 = np.float64


def _tiny_unet(**kw):
    args = dict(in_channels=1, image_size=4, base_channels=4, channel_mults=(1, 2), attention_resolutions=(2,),
                dropout=0.0, groups=2, dtype=F64)
    args.update(kw)
    return UNet(**args)


def _set(module, dotted, value):
    """Replace the parameter at a dotted path by `value` (a gradcheck Tensor) so gradients reach it."""
    *path, leaf = dotted.split(".")
    for name in path:
        module = getattr(module, name)
    object.__setattr__(module, leaf, value)


def _param_check(model, name, loss_of_model, directions=3, seed=0):
    """gradcheck of a scalar loss along random directions of the parameter `name`.

    With w = w0 + sum_k s_k v_k, d loss / d s_k = <grad_w loss, v_k>: finite differences in the
    3 numbers s_k test the whole gradient array (projected), in 6 evaluations instead of 2 |w|.
    """
    w0 = dict(model.named_parameters())[name].data.copy()
    v = np.random.default_rng(seed).standard_normal((directions,) + w0.shape)

    def f(s):
        _set(model, name, w0 + minidiff.ops.sum(minidiff.ops.reshape(s, (-1,) + (1,) * w0.ndim) * v, axis=0))
        return loss_of_model()
    assert gradcheck(f, [np.zeros(directions)], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- U-Net


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.sampled_from([(1,), (1, 2), (1, 2, 2)]), st.integers(1, 2),
       st.booleans())
def test_unet_maps_images_to_their_own_shape(batch, channels, mults, blocks, attention):
    size = 8
    net = UNet(channels, size, base_channels=4, channel_mults=mults, num_res_blocks=blocks, groups=2,
               attention_resolutions=(size // 2 ** (len(mults) - 1),) if attention else ())
    x = np.random.default_rng(0).standard_normal((batch, channels, size, size)).astype(np.float32)
    out = net(Tensor(x), np.arange(1, batch + 1))
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.all(out.numpy() == 0)  # the output conv starts at zero, so eps_hat = 0 at initialisation


def test_unet_gradcheck_input_and_deep_parameters():
    minidiff.manual_seed(1)
    net = _tiny_unet()
    for p in (net.conv_out.weight, net.conv_out.bias):  # leave the zero init, or d(out)/d(inner) = 0
        p.data[...] = np.random.default_rng(2).standard_normal(p.shape)
    t = np.array([3, 40])
    x = np.random.default_rng(3).standard_normal((2, 1, 4, 4))
    assert gradcheck(lambda x: net(x, t), [x], atol=1e-6, rtol=1e-4)
    for name in ("time_embedding.0.weight", "mid_attn.qkv.weight", "upsample.0.weight", "down.0.blocks.0.emb.bias"):
        _param_check(net, name, lambda: (net(Tensor(x), t) ** 2).sum())


def test_unet_rejects_bad_shapes():
    net = _tiny_unet()
    with pytest.raises(ValueError, match=r"input shape \(2, 3, 4, 4\) must be \(B, 1, H, W\)"):
        net(np.zeros((2, 3, 4, 4)), np.array([1, 2]))
    with pytest.raises(ValueError, match=r"timesteps shape \(3,\) must be \(2,\)"):
        net(np.zeros((2, 1, 4, 4)), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, 6, channel_mults=(1, 2, 2))


# ---------------------------------------------------------------- DDPM

def _tiny_ddpm(T=10):
    minidiff.manual_seed(0)
    return DDPM((1, 4, 4), T=T, base_channels=4, channel_mults=(1, 2), attention_resolutions=(2,), dropout=0.0,
                eval_images=3, dtype=F64)


def test_ddpm_scores_bits_per_dim_on_the_datasets_own_levels():
    """default_hparams takes the dataset's levels; evaluate decodes on that grid, beside log2(levels)."""
    ds = data.digits()
    hp = DDPM.default_hparams(ds)
    assert hp["levels"] == ds.levels == 17
    minidiff.manual_seed(0)
    model = DDPM(ds.image_shape, T=4, base_channels=4, channel_mults=(1, 2), attention_resolutions=(), dropout=0.0,
                 eval_images=2, levels=hp["levels"])
    result = model.evaluate(ds.x_test, None, np.random.default_rng(0))
    assert result["levels"] == 17 and result["uniform_bits_per_dim"] == np.log2(17)
    with pytest.raises(ValueError, match="256-level grid"):  # the same images scored as 8-bit data
        DDPM(ds.image_shape, T=4, base_channels=4, channel_mults=(1, 2), attention_resolutions=(), dropout=0.0,
             eval_images=2).evaluate(ds.x_test, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="levels"):
        DDPM(levels=1)


def test_ddpm_loss_gradcheck_through_the_fused_kernels():
    model = _tiny_ddpm()
    model.unet.conv_out.weight.data[...] = 0.1
    x0 = np.random.default_rng(0).uniform(-1, 1, (3, 1, 4, 4))

    def loss():
        value, _ = model.loss((x0, None), np.random.default_rng(5))  # same t and eps every call
        return value
    for name in ("unet.conv_out.weight", "unet.down.0.blocks.0.conv1.weight"):
        _param_check(model, name, loss)


def test_ddpm_sample_and_evaluate_shapes():
    model = _tiny_ddpm().float()
    rng = np.random.default_rng(0)
    for sampler, steps in (("ddpm", None), ("ddim", 4)):
        images = model.sample_images(5, rng, sampler=sampler, steps=steps)
        assert images.shape == (5, 1, 4, 4) and np.all(np.abs(images) <= 1)
        raw = model.sample(5, rng, sampler=sampler, steps=steps)  # the last step returns the clipped x0_hat
        assert np.abs(raw).max() <= 1 + 1e-6
    pixels = np.random.default_rng(1).integers(0, 256, (4, 1, 4, 4))
    result = model.evaluate(data.scale_to_unit_interval(pixels, 255), None, np.random.default_rng(2))
    assert result["test_bits_per_dim"] > 0 and np.isfinite(result["test_eps_loss"])
    assert result["levels"] == 256 and result["uniform_bits_per_dim"] == 8.0
    with pytest.raises(ValueError, match="sampler"):
        model.sample(2, rng, sampler="euler")
    with pytest.raises(ValueError, match="schedule"):
        DDPM(schedule="sqrt")


# ---------------------------------------------------------------- VAE, cVAE, AE, classifier

def _batch(n=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 1, size, size)), rng.integers(0, 3, n)


@pytest.mark.parametrize("cls, likelihood, names", [
    (VAE, "gaussian", ("decoder_logvar", "to_posterior.weight", "encoder.net.0.weight")),
    (VAE, "bernoulli", ("decoder.net.3.weight",)),
    (CVAE, "gaussian", ("to_posterior.weight", "decoder.net.0.weight")),
])
def test_vae_loss_gradcheck(cls, likelihood, names):
    minidiff.manual_seed(0)
    kw = {"num_classes": 3} if cls is CVAE else {}
    model = cls((1, 4, 4), latent_dim=2, channels=2, likelihood=likelihood, dtype=F64, **kw)
    x, y = _batch()

    def loss():
        value, metrics = model.loss((x, y), np.random.default_rng(7))
        assert set(metrics) == {"elbo", "reconstruction", "kl"}
        return value
    for name in names:
        _param_check(model, name, loss)


def test_vae_evaluate_bounds_and_conditional_sampling():
    minidiff.manual_seed(0)
    model = CVAE((1, 8, 8), latent_dim=3, channels=4, num_classes=10, iw_samples=20)
    x, y = _batch(6, 8)
    result = model.evaluate(x.astype(np.float32), y, np.random.default_rng(0))
    assert result["test_kl_nats"] >= 0
    assert result["test_elbo_bits_per_dim"] == pytest.approx(-result["test_elbo_nats"] / (64 * np.log(2)))
    images = model.sample_images(7, np.random.default_rng(0), label=4)
    assert images.shape == (7, 1, 8, 8) and np.all(np.abs(images) <= 1)
    with pytest.raises(ValueError, match="needs labels"):
        model.loss((x.astype(np.float32), None), np.random.default_rng(0))
    with pytest.raises(ValueError, match="likelihood"):
        VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="num_classes >= 1"):
        CVAE(num_classes=0)


@pytest.mark.parametrize("kind, noise", [("mlp", 0.0), ("conv", 0.3)])
def test_ae_gradcheck_and_denoising(kind, noise):
    minidiff.manual_seed(0)
    model = AE((1, 4, 4), latent_dim=2, kind=kind, hidden=5, channels=2, noise_std=noise, dtype=F64)
    x, _ = _batch()
    name = "encoder.1.weight" if kind == "mlp" else "encoder.0.net.2.weight"
    _param_check(model, name, lambda: model.loss((x, None), np.random.default_rng(3))[0])
    result = model.evaluate(x, None, np.random.default_rng(0))
    assert ("test_denoising_mse" in result) == (noise > 0)
    with pytest.raises(ValueError, match="kind"):
        AE(kind="rnn")


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_classifier_gradcheck(kind):
    minidiff.manual_seed(0)
    model = Classifier((1, 4, 4), num_classes=3, kind=kind, hidden=5, features=4, dropout=0.0, dtype=F64)
    x, y = _batch()
    _param_check(model, "head.weight", lambda: model.loss((x, y))[0])
    _param_check(model, "body.0.weight" if kind == "conv" else "body.1.weight", lambda: model.loss((x, y))[0])
    probs = model.predict_proba(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert model.features(x).shape == (3, 4)


def test_ae_prior_fit_matches_the_code_statistics():
    minidiff.manual_seed(0)
    model = AE((1, 8, 8), latent_dim=3)
    x = data.digits().x_train[:300]
    model.on_fit_end(x)
    codes = model.encode(x).astype(np.float64)
    np.testing.assert_allclose(model.code_mean, codes.mean(0), rtol=1e-6, atol=1e-6)
    L = model.code_scale_tril
    np.testing.assert_allclose(L @ L.T, np.cov(codes, rowvar=False), rtol=1e-4, atol=1e-5)
    assert dict(model.state_dict())["code_scale_tril"].shape == (3, 3)  # saved with the weights


def test_every_registered_model_builds_from_its_hparams():
    ds = data.digits()
    for name, cls in REGISTRY.items():
        model = cls(**cls.default_hparams(ds))
        again = cls(**model.hparams)
        assert again.hparams == model.hparams
        assert [n for n, _ in again.named_parameters()] == [n for n, _ in model.named_parameters()]


# ---------------------------------------------------------------- PCA and retrieval

@given(st.integers(0, 2 ** 31), st.integers(5, 30), st.integers(2, 8))
def test_pca_matches_eckart_young(seed, n, dim):
    x = np.random.default_rng(seed).standard_normal((n, dim)) @ np.diag(np.linspace(2, 0.1, dim))
    errors = [PCA(d).fit(x).reconstruction_mse(x) for d in range(1, min(n, dim) + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:]))  # more components never hurt
    assert errors[-1] == pytest.approx(0.0, abs=1e-20)
    eig = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    for d, err in enumerate(errors, start=1):  # error = discarded variance (biased) per dimension
        assert err == pytest.approx(eig[d:].sum() * (n - 1) / n / dim, rel=1e-7, abs=1e-12)


def test_pca_agrees_with_scikit_learn():
    from sklearn.decomposition import PCA as SkPCA
    x = data.digits().x_train.reshape(-1, 64).astype(np.float64)
    ours, theirs = PCA(7).fit(x), SkPCA(7).fit(x)
    np.testing.assert_allclose(ours.decode(ours.encode(x)), theirs.inverse_transform(theirs.transform(x)), atol=1e-8)
    with pytest.raises(ValueError, match="exceeds"):
        PCA(100).fit(x[:10])


@given(st.integers(0, 2 ** 31), st.integers(2, 40), st.integers(1, 5), st.integers(1, 6))
def test_nearest_neighbours_equal_brute_force(seed, n, d, k):
    rng = np.random.default_rng(seed)
    db, q = rng.standard_normal((n, d)), rng.standard_normal((4, d))
    k = min(k, n)
    idx = nearest_neighbours(db, q, k)
    dist = np.linalg.norm(db[None] - q[:, None], axis=2)
    np.testing.assert_allclose(np.take_along_axis(dist, idx, 1), np.sort(dist, axis=1)[:, :k], rtol=1e-9)
    labels = rng.integers(0, 3, n)
    assert retrieval_precision(db, labels, db, labels, k=1) == 1.0  # every point finds itself


def test_recon_vs_latent_writes_the_figure_and_its_numbers(tmp_path):
    import json
    from minidiff.experiments import recon_vs_latent_figure
    path = recon_vs_latent_figure(str(tmp_path / "r.png"), sizes=(1, 3), steps=3)
    numbers = json.loads((tmp_path / "r.json").read_text())
    assert set(numbers) == {"PCA", "AE (MLP)", "VAE (conv)"} and set(numbers["PCA"]) == {"1", "3"}
    assert numbers["PCA"]["3"] < numbers["PCA"]["1"]
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"
