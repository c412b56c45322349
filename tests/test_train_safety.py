"""Training safety: a config is checked before the first step, a diverged run never replaces a good checkpoint."""
import math

import numpy as np
import pytest

import minidiff
from minidiff import checkpoint, data, nn, optim
from minidiff.autograd import Tensor
from minidiff.train import TrainConfig, Trainer, TrainingDiverged


def _digits(n=64):
    ds = data.digits()
    return ds.x_train[:n], ds.y_train[:n]


def _config(**kw):
    base = dict(steps=12, batch_size=8, lr=1e-3, warmup_steps=0, ema_decay=0.9, checkpoint_every=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


class _Diverges(nn.Module):
    """A finite loss throughout; from call `bad` on, the weights (kind="weights") or the loss ("loss") blow up."""
    name = "diverges"

    def __init__(self, bad, kind):
        super().__init__()
        self.hparams, self.bad, self.kind, self.calls = {}, bad, kind, 0
        self.w = nn.Parameter(np.full(3, 0.5, np.float32))

    def loss(self, batch, rng):
        self.calls += 1
        if self.calls == self.bad and self.kind == "weights":
            self.w.data *= np.float32(1e7)          # what an lr of 1e9 does in one Adam step
        scale = 1e7 if self.calls >= self.bad and self.kind == "loss" else 1.0
        return minidiff.ops.sum(self.w * Tensor(np.abs(batch[0][:, 0, 0, :3]).mean(0) + 1.0)) * scale, {}


@pytest.mark.parametrize("kind, saved_step", [("weights", 4), ("loss", 4)])
def test_a_diverged_run_keeps_the_last_good_checkpoint_and_names_its_step(tmp_path, kind, saved_step):
    x, y = _digits()
    trainer = Trainer(_Diverges(bad=6, kind=kind), _config(), x, y, out_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=rf"{'RMS' if kind == 'weights' else 'loss is'} .* at step 6.*"
                                               rf"was not written.*model.safetensors' \(step {saved_step}\)"):
        trainer.fit()
    groups, state = checkpoint.load_checkpoint(tmp_path / "model.safetensors")
    assert state["step"] == saved_step
    assert np.all(np.abs(groups["params"]["w"]) < 10)
    resumed = Trainer(_Diverges(bad=10 ** 9, kind=kind), _config(), x, y, out_dir=tmp_path).resume()
    assert resumed.step == saved_step and resumed.fit().step == 12


def test_an_lr_of_1e9_never_replaces_the_good_checkpoints_of_a_run(tmp_path):
    """The reported case with real Adam steps on a real model: a run saves every step at a sane lr, then is resumed
    at lr 1e9 with a checkpoint every step; its first step diverges, and the step-6 file stays, named in the error."""
    from minidiff.models.classifier import Classifier
    x, y = _digits(128)
    minidiff.manual_seed(0)
    Trainer(Classifier(hidden=16, features=8), _config(steps=6, lr=1e-3, checkpoint_every=1), x, y,
            out_dir=tmp_path).fit()
    good_groups, good_state = checkpoint.load_checkpoint(tmp_path / "model.safetensors")
    trainer = Trainer(Classifier(hidden=16, features=8), _config(steps=12, lr=1e9, checkpoint_every=1), x, y,
                      out_dir=tmp_path).resume()
    with pytest.raises(TrainingDiverged, match=r"at step 7.*was not written.*model.safetensors' \(step 6\)"):
        trainer.fit()
    groups, state = checkpoint.load_checkpoint(tmp_path / "model.safetensors")
    assert good_state["step"] == state["step"] == 6
    for name, w in good_groups["params"].items():
        np.testing.assert_array_equal(groups["params"][name], w)
    assert Trainer(Classifier(hidden=16, features=8), _config(steps=8), x, y, out_dir=tmp_path).resume().fit().step == 8


def test_non_finite_weights_are_never_saved(tmp_path):
    x, y = _digits()
    trainer = Trainer(_Diverges(bad=10 ** 9, kind="weights"), _config(), x, y, out_dir=tmp_path)
    trainer.train_step()
    trainer.save()
    trainer.model.w.data[1] = np.nan
    with pytest.raises(TrainingDiverged, match=r"parameter 'w' holds NaN or Inf at step 1.*\(step 1\)"):
        trainer.save()
    assert np.all(np.isfinite(checkpoint.load_checkpoint(tmp_path / "model.safetensors")[0]["params"]["w"]))


def test_ordinary_training_passes_the_guard(tmp_path):
    """The limits sit far from real training: a DDPM-sized lr on digits saves at every step."""
    from minidiff.models.classifier import Classifier
    x, y = _digits(128)
    minidiff.manual_seed(0)
    trainer = Trainer(Classifier(hidden=16, features=8), _config(lr=2e-2, checkpoint_every=1), x, y,
                      out_dir=tmp_path).fit()
    assert trainer.divergence() is None and trainer.last_checkpoint


@pytest.mark.parametrize("field, value, error, words", [
    ("steps", 0, ValueError, "steps must be >= 1, got 0"),
    ("steps", 2.5, TypeError, "steps must be an integer, got 2.5"),
    ("steps", math.inf, TypeError, "steps must be an integer, got inf"),
    ("steps", True, TypeError, "steps must be an integer"),
    ("batch_size", 0, ValueError, "batch_size must be >= 1"),
    ("lr", math.nan, ValueError, "lr must be a finite number, got nan"),
    ("lr", math.inf, ValueError, "lr must be a finite number, got inf"),
    ("lr", -1e-3, ValueError, "lr must be > 0"),
    ("lr", "0.1", TypeError, "lr must be a real number"),
    ("grad_clip", -1.0, ValueError, "grad_clip must be >= 0"),
    ("grad_clip", math.nan, ValueError, "grad_clip must be a finite number"),
    ("checkpoint_every", -1, ValueError, "checkpoint_every must be >= 0"),
    ("eval_every", 1.5, TypeError, "eval_every must be an integer"),
    ("log_every", -2, ValueError, "log_every must be >= 0"),
    ("warmup_steps", -1, ValueError, "warmup_steps must be >= 0"),
    ("weight_decay", -0.1, ValueError, "weight_decay must be >= 0"),
    ("min_lr_ratio", 1.5, ValueError, "min_lr_ratio must be <= 1"),
    ("ema_decay", 1.0, ValueError, "ema_decay must be < 1"),
    ("seed", -1, ValueError, "seed must be >= 0"),
    ("optimizer", "rmsprop", ValueError, "optimizer must be one of"),
    ("progress", "yes", TypeError, "progress must be True or False"),
    ("divergence_factor", 0.5, ValueError, "divergence_factor must be > 1"),
])
def test_config_names_the_bad_field(field, value, error, words):
    with pytest.raises(error, match=f"TrainConfig: {words}"):
        TrainConfig(**{field: value})


def test_config_keeps_good_values_as_given():
    cfg = TrainConfig(steps=np.int64(7), lr=1, grad_clip=0)
    assert (cfg.steps, cfg.lr, cfg.grad_clip) == (7, 1.0, 0.0) and type(cfg.steps) is int


def _params():
    return [nn.Parameter(np.zeros(2))]


@pytest.mark.parametrize("make, error, words", [
    (lambda: optim.Adam(_params(), betas=(0.9, 0.99, 0.9)), ValueError, r"Adam: betas must be a pair"),
    (lambda: optim.Adam(_params(), betas=0.9), ValueError, r"Adam: betas must be a pair"),
    (lambda: optim.Adam(_params(), betas=(0.9, math.nan)), ValueError, r"Adam: betas\[1\] must be a finite"),
    (lambda: optim.Adam(_params(), eps=-1e-8), ValueError, r"Adam: eps must be > 0"),
    (lambda: optim.Adam(_params(), eps=0.0), ValueError, r"Adam: eps must be > 0"),
    (lambda: optim.Adam(_params(), weight_decay=-1e-2), ValueError, r"Adam: weight_decay must be >= 0"),
    (lambda: optim.AdamW(_params(), weight_decay=math.inf), ValueError, r"AdamW: weight_decay must be a finite"),
    (lambda: optim.Adam(_params(), lr=math.nan), ValueError, r"Adam: lr must be a finite number"),
    (lambda: optim.SGD(_params(), lr=0.1, momentum=-0.5), ValueError, r"SGD: momentum must be >= 0"),
    (lambda: optim.EMA(nn.Linear(2, 2), decay=1.5), ValueError, r"EMA: decay must be <= 1"),
    (lambda: optim.clip_grad_norm(_params(), -1.0), ValueError, r"clip_grad_norm: max_norm must be >= 0"),
])
def test_optimiser_arguments_are_checked(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_negative_clip_would_flip_the_gradient_so_it_is_refused():
    p = nn.Parameter(np.ones(3))
    p.grad = np.full(3, 2.0)
    assert optim.clip_grad_norm([p], math.inf) == pytest.approx(math.sqrt(12))
    np.testing.assert_array_equal(p.grad, 2.0)  # inf: measured, not scaled
    with pytest.raises(ValueError, match="max_norm must be >= 0, got -1.0"):
        optim.clip_grad_norm([p], -1.0)
    np.testing.assert_array_equal(p.grad, 2.0)
