"""The masked autoencoder (docs/mae.md): patches, the random mask, the loss that sees only masked patches,
the encoder that sees only visible ones, gradients, checkpoints and the command line, on tiny configurations."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidiff
from minidiff import cli, data, models
from minidiff.models.mae import MAE, masked_patch_mse, patchify, random_masking, unpatchify
from minidiff.testing import gradcheck
from minidiff.train import TrainConfig, Trainer
from tests.test_models import _param_check

F64 = np.float64


def _tiny(dtype=F64, **kw):
    minidiff.manual_seed(0)
    return MAE((1, 4, 4), **{"patch_size": 2, "dim": 8, "depth": 1, "num_heads": 2, "decoder_dim": 8,
                             "decoder_depth": 1, "mlp_ratio": 2, "dtype": dtype, **kw})


def _images(n, shape=(1, 4, 4), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape)


# ---------------------------------------------------------------- patches and the mask

@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_patchify_cuts_the_grid_row_major_and_unpatchify_inverts_it(B, C, gh, gw, p):
    """(R1): patch n = i·(W/p) + j holds x[:, :, ip:(i+1)p, jp:(j+1)p] in (dy, dx, c) order."""
    x = _images(B, (C, gh * p, gw * p))
    patches = patchify(x, p)
    assert patches.shape == (B, gh * gw, p * p * C)
    for i in range(gh):
        for j in range(gw):
            block = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]                     # (B, C, p, p)
            np.testing.assert_array_equal(patches[:, i * gw + j], block.transpose(0, 2, 3, 1).reshape(B, -1))
    np.testing.assert_array_equal(unpatchify(patches, p, x.shape[1:]), x)


@settings(deadline=None)
@given(st.integers(1, 6), st.integers(2, 20), st.data())
def test_random_masking_keeps_a_random_subset_of_the_patches_per_image(B, N, data_):
    """(R2): each image keeps n_keep distinct patches, mask = 1 exactly elsewhere, ids_restore undoes the shuffle."""
    n_keep = data_.draw(st.integers(1, N - 1))
    rng = minidiff.default_rng(seed=data_.draw(st.integers(0, 2 ** 31)))
    ids_keep, ids_restore, mask = random_masking(B, N, n_keep, rng)
    assert ids_keep.shape == (B, n_keep) and ids_restore.shape == (B, N) and mask.shape == (B, N)
    for b in range(B):
        assert len(set(ids_keep[b].tolist())) == n_keep
        expected = np.ones(N)
        expected[ids_keep[b]] = 0.0
        np.testing.assert_array_equal(mask[b], expected)
        assert sorted(ids_restore[b].tolist()) == list(range(N))
        np.testing.assert_array_equal(ids_restore[b][ids_keep[b]], np.arange(n_keep))   # the first n_keep of σ


def test_every_patch_is_masked_with_probability_the_mask_ratio_independently_per_image():
    """Over 4000 images of 16 patches, 12 masked: each patch is masked with frequency 3/4 (within 4 standard
    errors) and two images' masks are independent (they agree on a patch with frequency 3/4² + 1/4² = 5/8)."""
    _, _, mask = random_masking(4000, 16, 4, minidiff.default_rng(seed=1))
    se = np.sqrt(0.75 * 0.25 / 4000)
    assert np.all(np.abs(mask.mean(axis=0) - 0.75) < 4 * se)
    agree = (mask[::2] == mask[1::2]).mean()
    assert abs(agree - 0.625) < 4 * np.sqrt(0.625 * 0.375 / (2000 * 16))


# ---------------------------------------------------------------- the loss sees only masked patches

def test_masked_patch_mse_is_the_mean_over_masked_patches_and_ignores_visible_targets():
    """(R5) written out; a change of a visible target pixel leaves it unchanged, of a masked one does not."""
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((3, 5, 4)), rng.standard_normal((3, 5, 4))
    mask = (rng.uniform(size=(3, 5)) < 0.6).astype(float)
    mask[0, 0], mask[0, 1] = 1.0, 0.0
    expected = sum(((pred[b, n] - target[b, n]) ** 2).mean() for b in range(3) for n in range(5) if mask[b, n])
    loss = masked_patch_mse(pred, target, mask)
    assert loss == pytest.approx(expected / mask.sum(), rel=1e-12)
    visible_changed, masked_changed = target.copy(), target.copy()
    visible_changed[0, 1, 2] += 5.0
    masked_changed[0, 0, 2] += 5.0
    assert masked_patch_mse(pred, visible_changed, mask) == loss
    assert masked_patch_mse(pred, masked_changed, mask) != pytest.approx(loss, rel=1e-3)


def test_the_mae_loss_ignores_the_targets_of_visible_patches_and_passes_no_gradient_to_them():
    model = _tiny()
    x = _images(4)
    ids_keep, ids_restore, mask = model.sample_mask(4, minidiff.default_rng(seed=3))
    pred = model(minidiff.Tensor(x), ids_keep, ids_restore)
    target = patchify(x, 2)
    loss = masked_patch_mse(pred, target, mask)
    b, n = 1, int(ids_keep[1, 0])                        # a visible patch of image 1
    changed = target.copy()
    changed[b, n] += 3.0
    assert masked_patch_mse(pred, changed, mask).numpy() == loss.numpy()
    changed[b, int(np.flatnonzero(mask[b])[0])] += 3.0   # and a masked one
    assert masked_patch_mse(pred, changed, mask).numpy() != pytest.approx(loss.numpy(), rel=1e-3)
    leaf = minidiff.Tensor(pred.numpy(), requires_grad=True)
    masked_patch_mse(leaf, target, mask).backward()
    assert np.all(leaf.grad[mask == 0] == 0.0) and np.all(np.abs(leaf.grad[mask == 1]).sum(axis=-1) > 0)


# ---------------------------------------------------------------- the encoder sees only visible patches

def test_the_encoder_output_does_not_depend_on_masked_patches():
    """(R3): replacing every masked pixel by noise leaves the codes bit for bit; changing one visible pixel does
    not; the gradient of the codes with respect to the masked pixels is exactly zero."""
    model = _tiny()
    x = _images(3)
    ids_keep, _, mask = model.sample_mask(3, minidiff.default_rng(seed=5))
    codes = model.encode(minidiff.Tensor(x), ids_keep).numpy()
    assert codes.shape == (3, model.num_visible, 8)
    pixel_mask = unpatchify(np.repeat(mask[:, :, None], 4, axis=2), 2, (1, 4, 4)) == 1.0     # (B, 1, 4, 4)
    noisy = np.where(pixel_mask, np.random.default_rng(9).uniform(-5, 5, x.shape), x)
    np.testing.assert_array_equal(model.encode(minidiff.Tensor(noisy), ids_keep).numpy(), codes)
    one_visible = x.copy()
    one_visible[~pixel_mask] += 0.5
    assert not np.allclose(model.encode(minidiff.Tensor(one_visible), ids_keep).numpy(), codes)
    leaf = minidiff.Tensor(x, requires_grad=True)
    model.encode(leaf, ids_keep).sum().backward()
    assert np.all(leaf.grad[pixel_mask] == 0.0) and np.any(leaf.grad[~pixel_mask] != 0.0)


def test_shapes_mask_ratio_features_and_bad_arguments():
    model = MAE((1, 8, 8))
    assert (model.num_patches, model.num_visible) == (16, 4)              # 75 % of 16 patches masked
    x = data.digits().x_test[:5]
    ids_keep, ids_restore, mask = model.sample_mask(5, minidiff.default_rng(seed=0))
    assert model(minidiff.Tensor(x), ids_keep, ids_restore).shape == (5, 16, 4)
    assert mask.sum(axis=1).tolist() == [12.0] * 5
    assert model.features(x, batch_size=2).shape == (5, model.hparams["dim"])
    for kw, message in (({"mask_ratio": 1.0}, "mask_ratio"), ({"mask_ratio": 0.0}, "mask_ratio"),
                        ({"patch_size": 3}, "patch_size 3"), ({"patch_size": 8}, "one patch"),
                        ({"dim": 30, "num_heads": 4}, "does not split into 4 heads")):
        with pytest.raises(ValueError, match=message):
            MAE((1, 8, 8), **kw)
    with pytest.raises(ValueError, match="mask must have shape"):
        masked_patch_mse(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="target must have shape"):
        masked_patch_mse(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), np.zeros((2, 3)))


# ---------------------------------------------------------------- gradients, training, checkpoints

@pytest.mark.parametrize("name", ["patch_embed.weight", "encoder.0.attn.qkv.weight", "encoder.0.norm2.weight",
                                  "mask_token", "decoder.0.mlp.0.weight", "to_decoder.bias", "to_pixels.weight"])
def test_mae_loss_gradcheck(name):
    """float64 central differences of the loss on a fixed mask along random directions of each parameter."""
    model = _tiny()
    x = _images(3)

    def loss():
        value, metrics = model.loss((x, np.zeros(3, np.int64)), minidiff.default_rng(seed=7))
        assert set(metrics) == {"masked_mse", "visible_mse"}
        return value
    _param_check(model, name, loss)


def test_mae_loss_gradcheck_with_respect_to_the_images():
    model = _tiny()
    ids_keep, ids_restore, mask = model.sample_mask(2, minidiff.default_rng(seed=2))
    target = patchify(_images(2, seed=1), 2)
    assert gradcheck(lambda x: masked_patch_mse(model(x, ids_keep, ids_restore), target, mask), [_images(2)])


def test_short_training_lowers_the_masked_loss_and_the_checkpoint_round_trips(tmp_path):
    ds = data.digits()
    minidiff.manual_seed(0)
    model = MAE(ds.image_shape, dim=16, depth=1, decoder_dim=16, num_heads=2)
    config = TrainConfig(**{**MAE.TRAIN_DEFAULTS, "steps": 60, "lr": 3e-3, "warmup_steps": 10, "progress": False,
                            "checkpoint_every": 0})
    trainer = Trainer(model, config, ds.x_train, ds.y_train, ds.x_test[:64], ds.y_test[:64],
                      out_dir=str(tmp_path)).fit()
    history = trainer.history["masked_mse"]
    assert np.mean(history[-10:]) < 0.5 * np.mean(history[:10])
    loaded, state = models.load(trainer.last_checkpoint)
    assert state["model"] == "mae" and loaded.hparams == model.hparams
    ids_keep, ids_restore, _ = model.sample_mask(8, minidiff.default_rng(seed=4))
    x = minidiff.Tensor(ds.x_test[:8])
    with trainer.averaged_weights():
        np.testing.assert_array_equal(loaded(x, ids_keep, ids_restore).numpy(), model(x, ids_keep, ids_restore).numpy())
        paths = model.figures(str(tmp_path), ds, trainer, minidiff.default_rng(seed=0))
    assert {p.rsplit("/", 1)[1] for p in paths} == {"loss.png", "masked_vs_visible.png", "reconstructions.png"}


def test_cli_trains_the_mae(tmp_path):
    out = tmp_path / "mae"
    assert cli.main(["train", "mae", "--steps", "2", "--out", str(out), "--no-progress", "--set", "dim=8",
                     "--set", "decoder_dim=8", "--set", "num_heads=2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mae" and 0 < metrics["test_masked_mse"] and 0 < metrics["test_visible_mse"]


def test_the_linear_probe_experiment_on_a_tiny_configuration(tmp_path):
    """plot mae-probe: the report's numbers are in range and the masked MSE baselines are ordered as they must be
    (the Gaussian conditional mean is the least-squares linear inpainting, so it beats the mean image)."""
    assert cli.main(["plot", "mae-probe", "--out", str(tmp_path), "--steps", "3", "--no-progress"]) == 0
    report = json.loads((tmp_path / "mae_probe.json").read_text())
    assert report["steps"] == 3 and report["masked_fraction"] == 0.75
    mse = report["test_mse_per_pixel"]
    assert mse["Gaussian conditional mean, masked patches"] < mse["mean training image, masked patches"]
    accuracy = report["linear_probe_test_accuracy"]
    assert set(accuracy) == {"pixels", "PCA (d = 16)", "AE (MLP, d = 16)", "PCA (d = 64)", "AE (MLP, d = 64)",
                             "MAE encoder (d = 64)", "MAE encoder, untrained (d = 64)"}
    assert all(0.1 < a <= 1.0 for a in accuracy.values()) and accuracy["pixels"] > 0.9
    assert (tmp_path / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"


def test_gaussian_inpainting_is_exact_when_the_masked_pixels_are_a_linear_function_of_the_visible_ones():
    """The conditional-mean baseline: on data x = [v, A v] the masked half is recovered exactly."""
    from minidiff.experiments import gaussian_inpainting_mse
    rng = np.random.default_rng(0)
    v = rng.standard_normal((500, 2))
    x = np.concatenate([v, v @ np.array([[1.0, -2.0], [0.5, 3.0]])], axis=1).reshape(500, 1, 2, 2)
    mask = np.array([[0.0, 0.0, 1.0, 1.0]] * 10)          # patch_size 1: pixels 2, 3 masked
    assert gaussian_inpainting_mse(x[:400], x[400:410], mask, 1) < 1e-8
    assert gaussian_inpainting_mse(x[:400], rng.standard_normal((10, 1, 2, 2)), mask, 1) > 0.1
