"""Ctrl-C keeps the work: an interrupted `train` saves the step it finished, says how to --resume, and
resuming gives the weights of the uninterrupted run bit for bit; a second signal aborts at once."""
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

from minidiff import checkpoint, data
from minidiff.models.ae import AE
from minidiff.train import TrainConfig, Trainer, TrainingInterrupted

RUN = ["train", "ae", "--steps", "100", "--batch-size", "16", "--no-progress", "--checkpoint-every", "0"]


def _env():
    return dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")


def _run(argv, cwd):
    return subprocess.run([sys.executable, "-m", "minidiff", *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _interrupt(argv, cwd, signals):
    """Start `python -m minidiff argv`, send `signals` once the first loss line shows training is under way."""
    proc = subprocess.Popen([sys.executable, "-m", "minidiff", *argv], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("step"):
            for s in signals:
                proc.send_signal(s)
            break
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _tensors(path):
    groups, state = checkpoint.load_checkpoint(path)
    return {f"{g}.{k}": v for g, arrays in groups.items() for k, v in arrays.items()}, state


def test_sigint_saves_and_the_printed_resume_command_reaches_the_uninterrupted_weights(tmp_path):
    rc, out, err = _interrupt([*RUN, "--out", "runs/cut"], tmp_path, [signal.SIGINT])
    last = err.strip().splitlines()[-1]
    assert rc == 130 and "Traceback" not in err, err
    assert "saved step" in last and "continue with: python -m minidiff" in last and "--resume" in last, err
    saved = _tensors(tmp_path / "runs" / "cut" / "model.safetensors")[1]["step"]
    assert 0 < saved < 100 and f"saved step {saved} " in last
    assert not (tmp_path / "runs" / "cut" / "metrics.json").exists()  # the run is not finished: no metrics yet
    resumed = _run(shlex.split(last.split("continue with: ")[1])[3:], tmp_path)  # drop "python -m minidiff"
    assert resumed.returncode == 0 and f"at step {saved}" in resumed.stdout, resumed.stderr[-2000:]
    whole = _run([*RUN, "--out", "runs/whole"], tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, state_a = _tensors(tmp_path / "runs" / "cut" / "model.safetensors")
    b, state_b = _tensors(tmp_path / "runs" / "whole" / "model.safetensors")
    assert state_a["step"] == state_b["step"] == 100 and sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_second_signal_aborts_at_once_without_a_traceback(tmp_path):
    # two different signals, so the kernel cannot merge them into one: the first asks for a stop, the second aborts
    rc, out, err = _interrupt([*RUN, "--out", "runs/abort"], tmp_path, [signal.SIGTERM, signal.SIGINT])
    lines = err.strip().splitlines()
    assert rc == 130 and "Traceback" not in err, err
    assert lines[-1].startswith("error: aborted at once; train wrote nothing more"), err
    folder = tmp_path / "runs" / "abort"
    assert not folder.exists() or not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def _tiny_trainer(tmp_path, **config):
    ds = data.digits()
    model = AE(ds.image_shape, latent_dim=2)
    cfg = TrainConfig(**{"steps": 6, "batch_size": 8, "progress": False, "checkpoint_every": 0, **config})
    return Trainer(model, cfg, ds.x_train, ds.y_train, out_dir=str(tmp_path))


def _count_saves(trainer, monkeypatch):
    steps, save = [], trainer.save
    monkeypatch.setattr(trainer, "save", lambda *a: (steps.append(trainer.step), save(*a))[1])
    return steps


def test_time_based_checkpoint_saves_when_the_minutes_have_passed(tmp_path, monkeypatch):
    off = _tiny_trainer(tmp_path / "off")
    saves_off = _count_saves(off, monkeypatch)
    off.fit()
    on = _tiny_trainer(tmp_path / "on", checkpoint_minutes=1e-9)  # always due: every step saves
    saves_on = _count_saves(on, monkeypatch)
    on.fit()
    assert saves_off == [6] and saves_on == [1, 2, 3, 4, 5, 6]


def test_request_stop_ends_fit_after_the_step_and_saves_it(tmp_path):
    trainer = _tiny_trainer(tmp_path)
    train_step = trainer.train_step

    def step_then_stop():
        result = train_step()
        if trainer.step == 2:
            trainer.request_stop("a test")
        return result
    trainer.train_step = step_then_stop
    with pytest.raises(TrainingInterrupted, match="stopped by a test at step 2: saved step 2") as caught:
        trainer.fit()
    assert caught.value.saved and checkpoint.load_checkpoint(caught.value.checkpoint)[1]["step"] == 2


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_checkpoint_minutes_must_be_finite_and_not_negative(value):
    with pytest.raises(ValueError, match="checkpoint_minutes"):
        TrainConfig(checkpoint_minutes=value)
