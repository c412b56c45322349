"""The toy 2-D demo: point sets through the dataset registry, the time-embedded MLP (gradcheck, torch),
DDPM(network="mlp"), the MMD of eq. (S9), the samplers at equal network calls, and the CLI end to end."""
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import minidiff
from minidiff import backend, cli, data, diffusion, models, toy2d
from minidiff.autograd import Tensor
from minidiff.diffusion import GaussianDataOracle, Schedule
from minidiff.models.ddpm import DDPM
from minidiff.models.time_mlp import TimeMLP
from minidiff.testing import gradcheck
from tests.test_models import _param_check

F64 = np.float64


def _mlp(dim=2, hidden=8, depth=2, seed=1):
    """A TimeMLP whose zero-initialised output layer is made random, so gradients reach the inner layers."""
    minidiff.manual_seed(seed)
    net = TimeMLP(dim, hidden, depth, dtype=F64)
    rng = np.random.default_rng(seed)
    for p in (net.out.weight, net.out.bias):
        p.data[...] = rng.standard_normal(p.shape)
    return net


# ---------------------------------------------------------------- the time-embedded MLP

def test_time_mlp_maps_points_to_their_shape_and_starts_at_zero():
    net = TimeMLP(3, 16, 2)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    out = net(Tensor(x), np.arange(1, 6))
    assert out.shape == (5, 3) and out.dtype == np.float32
    assert np.all(out.numpy() == 0)      # the output layer starts at zero: eps_hat = 0 at initialisation


def test_time_mlp_gradcheck_input_and_deep_parameters():
    net = _mlp()
    t = np.array([3, 40, 7])
    x = np.random.default_rng(3).standard_normal((3, 2))
    assert gradcheck(lambda x: net(x, t), [x], atol=1e-6, rtol=1e-5)
    for name in ("time_embedding.0.weight", "inp.weight", "blocks.0.lin1.weight", "blocks.1.emb.bias", "out.weight"):
        _param_check(net, name, lambda: (net(Tensor(x), t) ** 2).sum())


def test_time_mlp_agrees_with_torch_forward_and_backward():
    """The same layers restated in torch with the same weights: outputs and input/weight gradients to 1e-12."""
    net = _mlp(hidden=8, depth=2)
    p = {name: torch.tensor(v.data, requires_grad=True) for name, v in net.named_parameters()}
    x = np.random.default_rng(4).standard_normal((4, 2))
    t = np.array([1, 5, 60, 199])
    emb = torch.tensor(minidiff.nn.sinusoidal_embedding(t, 8, dtype=F64))

    def lin(h, name):
        return h @ p[name + ".weight"].T + p[name + ".bias"]
    silu = torch.nn.functional.silu
    xt = torch.tensor(x, requires_grad=True)
    e = lin(silu(lin(emb, "time_embedding.0")), "time_embedding.2")
    h = lin(xt, "inp") + e
    for b in range(2):
        h = h + lin(silu(lin(silu(h), f"blocks.{b}.lin1") + lin(e, f"blocks.{b}.emb")), f"blocks.{b}.lin2")
    ref = lin(silu(h), "out")
    (ref ** 3).sum().backward()

    xm = Tensor(x, requires_grad=True)
    out = net(xm, t)
    (out ** 3).sum().backward()
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, v in net.named_parameters():
        np.testing.assert_allclose(v.grad, p[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_time_mlp_rejects_bad_shapes():
    net = TimeMLP(2, 8, 1)
    with pytest.raises(ValueError, match=r"TimeMLP: x must have shape \(\*, 2\)"):
        net(Tensor(np.zeros((3, 3), np.float32)), np.ones(3, int))
    with pytest.raises(ValueError, match=r"TimeMLP: t must have shape \(3,\)"):
        net(Tensor(np.zeros((3, 2), np.float32)), np.ones(2, int))


# ---------------------------------------------------------------- DDPM(network="mlp"), the point sets

def test_point_sets_load_through_the_dataset_registry():
    for name in data.POINT_SETS:
        ds = data.load_dataset(name)
        assert name in cli.DATASETS and ds.x_train.shape[1:] == (2,) and ds.x_train.dtype == np.float32
        assert len(ds.x_train) + len(ds.x_test) == 10000 and ds.image_shape == (2,)
    with pytest.raises(ValueError, match="unknown point set"):
        data.points("three-moons")


def test_ddpm_mlp_keeps_only_its_network_hyperparameters_and_rebuilds_from_them():
    ds = data.load_dataset("two-moons")
    model = DDPM(**{**DDPM.default_hparams(ds), "T": 10, "hidden": 8, "depth": 1})
    assert model.hparams["network"] == "mlp" and model.hparams["clip_x0"] is False
    assert not {"base_channels", "unet", "dropout"} & set(model.hparams)
    assert all(name.startswith("mlp.") for name in model.state_dict())
    again = models.build("ddpm", model.hparams)
    again.load_state_dict(model.state_dict())
    x, t = ds.x_test[:5], np.arange(1, 6)
    np.testing.assert_array_equal(again.eps_array(x, t), model.eps_array(x, t))
    image = DDPM(T=10, base_channels=8)                 # the U-Net's hparams are as before: no MLP keys
    assert not {"network", "hidden", "depth"} & set(image.hparams)
    assert DDPM.inapplicable_hparams({"network": "mlp", "base_channels": 8, "hidden": 4}) == ["base_channels"]
    assert DDPM.inapplicable_hparams({"hidden": 4, "dropout": 0.0}) == ["hidden"]
    with pytest.raises(ValueError, match=r"network 'mlp' takes data of shape \(D,\)"):
        DDPM(image_shape=(1, 8, 8), network="mlp")
    with pytest.raises(ValueError, match=r"network 'unet' takes data of shape \(C, H, W\)"):
        DDPM(image_shape=(2,))


def test_ddpm_mlp_learns_a_gaussian_well_enough_to_beat_its_initialisation():
    """A few hundred steps on N(m, s^2) points: the eps-loss falls well below its starting value 1."""
    rng = np.random.default_rng(0)
    x = (np.array([0.5, -0.3]) + np.array([0.2, 0.4]) * rng.standard_normal((512, 2))).astype(np.float32)
    backend.manual_seed(0)
    model = DDPM(image_shape=(2,), network="mlp", clip_x0=False, T=50, hidden=32, depth=2)
    trainer = minidiff.train.Trainer(model, minidiff.train.TrainConfig(steps=300, batch_size=128, lr=3e-3,
                                                                       warmup_steps=20, progress=False),
                                     x, np.zeros(len(x), np.int64))
    trainer.fit()
    final = np.mean(trainer.history["loss"][-30:])
    assert final < 0.6, final


# ---------------------------------------------------------------- MMD, eq. (S9)

def _mmd2_by_loops(x, y, bandwidths):
    def k(a, b):
        return np.mean([np.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for h in bandwidths])
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@given(st.integers(2, 7), st.integers(2, 7), st.integers(0, 2 ** 31 - 1))
def test_mmd2_is_the_u_statistic_term_by_term(n, m, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(0.3, 1.0, size=(m, 2))
    assert toy2d.mmd2(x, y) == pytest.approx(_mmd2_by_loops(x, y, toy2d.BANDWIDTHS), rel=1e-10, abs=1e-13)


def test_mmd2_is_unbiased_for_equal_distributions_and_grows_with_a_shift():
    """Over 200 pairs of 20 points from one distribution the mean is 0 within 4 standard errors (the biased
    V-statistic, diagonal kept, sits about 1/n above); at 400 points a shift of the mean by 0.5 gives more
    than 3 times the largest |MMD^2| of 10 pairs from one distribution."""
    rng = np.random.default_rng(0)
    same = np.array([toy2d.mmd2(rng.normal(size=(20, 2)), rng.normal(size=(20, 2))) for _ in range(200)])
    assert abs(same.mean()) < 4 * same.std() / np.sqrt(len(same)), (same.mean(), same.std())
    same = [toy2d.mmd2(rng.normal(size=(400, 2)), rng.normal(size=(400, 2))) for _ in range(10)]
    shifted = [toy2d.mmd2(rng.normal(size=(400, 2)), rng.normal(0.5, 1.0, size=(400, 2))) for _ in range(3)]
    assert min(shifted) > 3 * np.max(np.abs(same)), (shifted, same)
    with pytest.raises(ValueError, match=r"mmd2: y must have shape \(\*, 2\)"):
        toy2d.mmd2(np.zeros((3, 2)), np.zeros((3, 3)))


# ---------------------------------------------------------------- samplers at equal network calls

class _OracleDDPM:
    """The exact eps-predictor of Gaussian points behind DDPM.sample's interface (what toy2d calls)."""

    def __init__(self, mean, std, T=100):
        self.T, self.schedule = T, Schedule.cosine(T)
        self.oracle = GaussianDataOracle(mean, std, self.schedule)

    def sample(self, n, rng, sampler="ddpm", steps=None, **options):
        chosen = diffusion.make_sampler(sampler, **options)
        return diffusion.sample(chosen, self.oracle, (n, 2), self.schedule, rng, steps=steps, dtype=np.float64)


@pytest.mark.parametrize("calls", [7, 8, 20, 51, 100])
def test_every_sampler_spends_at_most_the_budget_and_nearly_all_of_it(calls):
    for label, (name, steps, options) in toy2d.samplers_at(calls, 200).items():
        spent = diffusion.make_sampler(name, **options).network_calls(steps)
        assert calls - 3 <= spent <= calls, (label, spent)
    with pytest.raises(ValueError, match="calls must be >= 7"):
        toy2d.samplers_at(6, 200)


def test_sampler_quality_with_the_exact_model_is_at_the_yardstick_and_a_wrong_model_is_not():
    """With the oracle for N(m, s^2), every sampler at 60 calls lands within a few yardsticks' noise of 0;
    the oracle of a distribution shifted by 0.5 is far off for every sampler."""
    mean, std = np.array([0.4, -0.2]), np.array([0.3, 0.6])
    rng = np.random.default_rng(1)
    ds = data.ImageDataset("gauss", (mean + std * rng.standard_normal((600, 2))).astype(np.float32),
                           np.zeros(600, np.int64), (mean + std * rng.standard_normal((600, 2))).astype(np.float32),
                           np.zeros(600, np.int64), num_classes=1)
    good = toy2d.sampler_quality(_OracleDDPM(mean, std), ds, budgets=(60,), n=600)
    bad = toy2d.sampler_quality(_OracleDDPM(mean + 0.5, std), ds, budgets=(60,), n=600)
    noise = 0.01                         # several times |reference| for 600 points here
    assert abs(good["reference_mmd2"]) < noise / 3
    for label, row in good["budgets"]["60"].items():
        assert row["calls"] <= 60 and abs(row["mmd2"]) < noise, (label, row)
        assert bad["budgets"]["60"][label]["mmd2"] > 5 * noise, label


def test_quality_trend_follows_each_sampler_across_the_budgets_in_order():
    """quality_trend reads sampler_quality's result per sampler, smallest budget first (whatever order the
    budgets were given in): each point is (the calls that sampler spent, its MMD^2 at that budget)."""
    mean, std = np.array([0.4, -0.2]), np.array([0.3, 0.6])
    rng = np.random.default_rng(2)
    points = (mean + std * rng.standard_normal((300, 2))).astype(np.float32)
    ds = data.ImageDataset("gauss", points[:150], np.zeros(150, np.int64), points[150:], np.zeros(150, np.int64),
                           num_classes=1)
    quality = toy2d.sampler_quality(_OracleDDPM(mean, std), ds, budgets=(40, 9, 20), n=150)
    trend = toy2d.quality_trend(quality)
    assert set(trend) == set(quality["budgets"]["9"])
    for label, (calls, values) in trend.items():
        assert calls == [quality["budgets"][b][label]["calls"] for b in ("9", "20", "40")]
        assert values == [quality["budgets"][b][label]["mmd2"] for b in ("9", "20", "40")]
        assert calls == sorted(calls) and calls[0] < calls[-1] <= 40


# ---------------------------------------------------------------- the command line, end to end

TINY = ["--set", "T=20", "--set", "hidden=16", "--set", "depth=1", "--set", "eval_images=16"]


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    out = tmp_path_factory.mktemp("moons")
    assert cli.main(["train", "ddpm", "--dataset", "two-moons", "--out", str(out), "--steps", "5",
                     "--batch-size", "16", "--no-progress", *TINY]) == 0
    return out


def test_train_ddpm_on_two_moons_writes_a_point_model(moons):
    metrics = json.loads((moons / "metrics.json").read_text())
    assert metrics["dataset"] == "two-moons" and np.isfinite(metrics["test_vlb_nats"])
    model, state = models.load(str(moons / "model.safetensors"))
    assert model.is_points and model.image_shape == (2,) and state["dataset"] == "two-moons"


def test_plot_score_field_and_sample_from_the_point_model(moons, tmp_path):
    ckpt = str(moons / "model.safetensors")
    assert cli.main(["plot", "score-field", "--checkpoint", ckpt, "--out", str(tmp_path), "--calls", "7", "10"]) == 0
    assert os.path.getsize(tmp_path / "score_field.png") > 0
    quality = json.loads((tmp_path / "score_field.json").read_text())
    assert set(quality["budgets"]) == {"7", "10"} and len(quality["budgets"]["10"]) == 5
    assert os.path.getsize(tmp_path / "score_field_trend.png") > 0          # two budgets: the trend figure
    assert cli.main(["sample", "--checkpoint", ckpt, "--n", "9", "--out", str(tmp_path / "s.npy"),
                     "--sampler", "ode", "--steps", "4", "--no-progress"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (9, 2) and os.path.exists(tmp_path / "s.png")


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--dataset", "two-moons"], "--dataset two-moons is a 2-D point set; train takes it for ddpm"),
    (["train", "ddpm", "--dataset", "two-moons", "--set", "base_channels=8"],
     "--set: 'base_channels' does not apply to ddpm's mlp network"),
    (["train", "ddpm", "--dataset", "digits", "--set", "hidden=8"], "--set: 'hidden' does not apply to ddpm's unet"),
    (["plot", "schedules", "--calls", "10"], "--calls is for plot score-field, not plot schedules"),
    (["plot", "score-field"], "--checkpoint: plot score-field needs --checkpoint PATH"),
])
def test_flags_that_do_not_fit_the_data_are_usage_errors(argv, message, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x" / "model.safetensors")


def test_point_checkpoints_refuse_image_only_commands(moons, tmp_path, capsys):
    ckpt = str(moons / "model.safetensors")
    runs = [(["plot", "score-field", "--checkpoint", ckpt, "--out", str(tmp_path), "--calls", "6"],
             "--calls must be >= 7"),
            (["eval", "--checkpoint", ckpt, "--dataset", "digits"],
             "'digits' is images, but the ddpm model was trained on points"),
            (["eval", "--checkpoint", ckpt, "--classifier", ckpt], "--classifier scores images"),
            (["export", "--checkpoint", ckpt, "--out", str(tmp_path / "pipe")], "of points (an MLP, no UNet2DModel)")]
    for argv, message in runs:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
