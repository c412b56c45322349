"""The Trainer: the loss falls, resume is bit-exact, the NaN guard keeps the last good checkpoint."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidiff
from minidiff import checkpoint, data, nn, optim
from minidiff.autograd import Tensor
from minidiff.models.classifier import Classifier
from minidiff.models.ddpm import DDPM
from minidiff.train import TrainConfig, Trainer, TrainingDiverged, step_seed


def _digits(n=256):
    ds = data.digits()
    return ds.x_train[:n], ds.y_train[:n], ds.x_test[:32], ds.y_test[:32]


def _tiny_ddpm(seed, dropout=0.2):
    minidiff.manual_seed(seed)
    return DDPM((1, 8, 8), T=20, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), dropout=dropout,
                eval_images=8)


def _config(**kw):
    base = dict(steps=12, batch_size=16, lr=3e-3, warmup_steps=3, ema_decay=0.9, checkpoint_every=5, progress=False,
                seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_short_run_lowers_the_loss():
    x, y, xt, yt = _digits()
    minidiff.manual_seed(0)
    trainer = Trainer(Classifier(), _config(steps=40, lr=3e-3, warmup_steps=5), x, y, xt, yt).fit()
    loss = trainer.history["loss"]
    assert np.mean(loss[-5:]) < 0.5 * np.mean(loss[:5])
    assert trainer.evals[-1]["test_accuracy"] > 0.5

    minidiff.manual_seed(0)
    trainer = Trainer(_tiny_ddpm(0, dropout=0.0), _config(steps=40, batch_size=32, lr=5e-3), x, y).fit()
    loss = trainer.history["loss"]
    assert loss[0] == pytest.approx(1.0, abs=0.2)  # eps_hat = 0 at init, so the loss is E[eps^2] = 1
    assert np.mean(loss[-5:]) < 0.8 * np.mean(loss[:5])


def _final_state(trainer):
    return ({k: v for k, v in trainer.model.state_dict().items()}, trainer.ema.state_dict(),
            trainer.optimizer.state_dict(), trainer.history)


def _assert_identical(a, b):
    for da, db in zip(a[:3], b[:3]):
        assert da.keys() == db.keys()
        for key in da:
            assert np.array_equal(da[key], db[key]), key  # bit for bit
    assert a[3] == b[3]


def test_resuming_the_ddpm_reproduces_the_uninterrupted_run_exactly(tmp_path):
    x, y, _, _ = _digits()
    full = Trainer(_tiny_ddpm(0), _config(), x, y, out_dir=tmp_path / "full").fit()

    first = Trainer(_tiny_ddpm(0), _config(), x, y, out_dir=tmp_path / "cut")
    for _ in range(7):  # "interrupted" after step 7; the step-5 checkpoint is on disk, then step 7's
        first.train_step()
    first.save()
    resumed = Trainer(_tiny_ddpm(99), _config(), x, y, out_dir=tmp_path / "cut").resume().fit()  # other init
    assert resumed.step == 12
    _assert_identical(_final_state(full), _final_state(resumed))


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 11), st.integers(0, 2 ** 16))
def test_resume_from_any_step_is_exact(tmp_path_factory, cut, seed):
    tmp = tmp_path_factory.mktemp("resume")
    x, y, _, _ = _digits(64)
    cfg = _config(seed=seed, batch_size=8)

    def fresh(init):
        minidiff.manual_seed(init)
        return Classifier(hidden=16, features=8, dropout=0.3)
    full = Trainer(fresh(1), cfg, x, y).fit()
    part = Trainer(fresh(1), cfg, x, y, out_dir=tmp)
    for _ in range(cut):
        part.train_step()
    part.save()
    resumed = Trainer(fresh(2), cfg, x, y, out_dir=tmp).resume().fit()
    _assert_identical(_final_state(full), _final_state(resumed))


class _Blows(nn.Module):
    """A one-parameter model whose loss is finite until call `bad`, then NaN or Inf."""
    name = "blows"

    def __init__(self, bad, value):
        super().__init__()
        self.hparams, self.bad, self.value, self.calls = {"bad": bad}, bad, value, 0
        self.w = nn.Parameter(np.ones(3, np.float32))

    def loss(self, batch, rng):
        self.calls += 1
        scale = self.value if self.calls > self.bad else 1.0
        return minidiff.ops.sum(self.w * Tensor(batch[0][:, 0, 0, :3].mean(0))) * scale, {}


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, value):
    x, y, _, _ = _digits(64)
    trainer = Trainer(_Blows(bad=5, value=value), _config(batch_size=8, checkpoint_every=2), x, y, out_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"loss is -?(nan|inf) at step 5 .*model.safetensors' \(step 4\)"):
        trainer.fit()
    groups, state = checkpoint.load_checkpoint(tmp_path / "model.safetensors")
    assert state["step"] == 4 and len(state["history"]["loss"]) == 4
    assert all(math.isfinite(v) for v in groups["params"]["w"])


def test_nan_guard_before_any_checkpoint_says_so():
    x, y, _, _ = _digits(64)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet"):
        Trainer(_Blows(bad=0, value=math.nan), _config(batch_size=8), x, y).fit()


def test_learning_rate_follows_warmup_then_cosine():
    x, y, _, _ = _digits(64)
    minidiff.manual_seed(0)
    cfg = _config(steps=20, warmup_steps=4, lr=1e-2, min_lr_ratio=0.1, batch_size=8)
    trainer = Trainer(Classifier(hidden=8, features=4), cfg, x, y).fit()
    expected = [optim.warmup_cosine_lr(k, 1e-2, 4, 20, 1e-3) for k in range(20)]
    np.testing.assert_allclose(trainer.history["lr"], expected, rtol=1e-12)
    assert trainer.history["lr"][3] == pytest.approx(1e-2)


def test_evaluation_uses_the_ema_weights_and_restores_the_raw_ones():
    x, y, xt, yt = _digits(64)
    minidiff.manual_seed(0)
    model = Classifier(hidden=8, features=4)
    trainer = Trainer(model, _config(steps=5, batch_size=8), x, y, xt, yt).fit()
    raw = model.state_dict()
    with trainer.averaged_weights():
        inside = model.state_dict()
    after = model.state_dict()
    for key, value in trainer.ema.state_dict().items():
        assert np.array_equal(inside[key], value) and np.array_equal(after[key], raw[key])
    assert not all(np.array_equal(inside[k], raw[k]) for k in raw)


def test_resume_refuses_a_different_model(tmp_path):
    x, y, _, _ = _digits(64)
    minidiff.manual_seed(0)
    Trainer(Classifier(hidden=8), _config(steps=2, batch_size=8), x, y, out_dir=tmp_path).fit()
    with pytest.raises(checkpoint.CheckpointError, match="holds model 'classifier'"):
        Trainer(Classifier(hidden=16), _config(steps=2, batch_size=8), x, y, out_dir=tmp_path).resume()


@given(st.integers(0, 2 ** 40), st.integers(0, 10 ** 6))
def test_step_seeds_are_distinct_and_fixed(seed, step):
    assert step_seed(seed, step) == step_seed(seed, step)
    assert step_seed(seed, step) != step_seed(seed, step + 1)
    assert 0 <= step_seed(seed, step) < 2 ** 63


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
