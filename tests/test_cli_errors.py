"""Mistakes on the command line, as a user makes them: each fails at once with one `error:` line that
names the flag, exit status 2, and writes nothing."""
import os
import subprocess
import sys

import pytest

from minidiff import backend, data, models
from minidiff.train import TrainConfig, Trainer

TINY = {"ddpm": {"T": 10, "base_channels": 8, "eval_images": 4}, "vae": {}, "classifier": {}}


def _run(*args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "minidiff", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, name), root) for d, dirs, files in os.walk(root)
                  for name in files + dirs)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a one-step checkpoint of a tiny DDPM, a VAE and a classifier, and a file README.md."""
    root = tmp_path_factory.mktemp("user")
    ds = data.digits()
    for name, hparams in TINY.items():
        cls = models.REGISTRY[name]
        backend.manual_seed(0)
        model = cls(**{**cls.default_hparams(ds), **hparams})
        trainer = Trainer(model, TrainConfig(steps=1, batch_size=8, progress=False), ds.x_train, ds.y_train,
                          out_dir=str(root / name))
        trainer.fit()
    (root / "README.md").write_text("not a folder\n")
    return root


CASES = {  # what the user typed, and the flag the one error line must name
    "steps 0": (["train", "ddpm", "--steps", "0"], "--steps"),
    "out is a file": (["train", "ae", "--out", "README.md"], "--out"),
    "out under a file": (["train", "vae", "--out", "README.md/vae"], "--out"),
    "lr nan": (["train", "ddpm", "--lr", "nan"], "--lr"),
    "lr negative": (["train", "ddpm", "--lr", "-1e-3"], "--lr"),
    "batch size 0": (["train", "vae", "--batch-size", "0"], "--batch-size"),
    "unknown hyperparameter": (["train", "vae", "--set", "foo=1"], "--set"),
    "set without value": (["train", "vae", "--set", "latent_dim"], "--set"),
    "hyperparameter refused": (["train", "cvae", "--set", "num_classes=0"], "--set"),
    "resume without checkpoint": (["train", "ddpm", "--resume", "--out", "runs/none"], "--resume"),
    "resume another model": (["train", "vae", "--resume", "--out", "ddpm"], "--resume"),
    "data root for digits": (["train", "vae", "--data-root", "."], "--data-root"),
    "mnist without data root": (["train", "vae", "--dataset", "mnist"], "--data-root"),
    "unknown model": (["train", "gan"], "model"),
    "steps not a number": (["train", "ddpm", "--steps", "ten"], "--steps"),
    "sample n 0": (["sample", "--checkpoint", "vae/model.safetensors", "--n", "0", "--out", "s.npy"], "--n"),
    "sample n negative": (["sample", "--checkpoint", "vae/model.safetensors", "--n", "-3", "--out", "s.npy"], "--n"),
    "sample a classifier": (["sample", "--checkpoint", "classifier/model.safetensors", "--out", "s.npy"],
                            "--checkpoint"),
    "sampler on a vae": (["sample", "--checkpoint", "vae/model.safetensors", "--sampler", "ddim", "--out", "s.npy"],
                         "--sampler"),
    "steps on a vae": (["sample", "--checkpoint", "vae/model.safetensors", "--steps", "5", "--out", "s.npy"],
                       "--steps"),
    "label on a ddpm": (["sample", "--checkpoint", "ddpm/model.safetensors", "--label", "3", "--out", "s.npy"],
                        "--label"),
    "sample out png": (["sample", "--checkpoint", "ddpm/model.safetensors", "--out", "s.png"], "--out"),
    "sample out under a file": (["sample", "--checkpoint", "ddpm/model.safetensors", "--out", "README.md/s.npy"],
                                "--out"),
    "checkpoint is a folder": (["sample", "--checkpoint", "ddpm", "--out", "s.npy"], "--checkpoint"),
    "checkpoint missing": (["sample", "--checkpoint", "none.safetensors", "--out", "s.npy"], "--checkpoint"),
    "checkpoint not safetensors": (["sample", "--checkpoint", "README.md", "--out", "s.npy"], "--checkpoint"),
    "unknown sampler option": (["sample", "--checkpoint", "ddpm/model.safetensors", "--sampler-option", "foo=1",
                                "--out", "s.npy"], "--sampler-option"),
    "sample steps beyond T": (["sample", "--checkpoint", "ddpm/model.safetensors", "--steps", "11",
                               "--out", "s.npy"], "--steps"),
    "eta twice": (["sample", "--checkpoint", "ddpm/model.safetensors", "--sampler", "ddim", "--eta", "0.5",
                   "--sampler-option", "eta=1", "--out", "s.npy"], "--eta"),
    "eval classifier is a vae": (["eval", "--checkpoint", "ddpm/model.safetensors", "--classifier",
                                  "vae/model.safetensors"], "--classifier"),
    "eval sampler without classifier": (["eval", "--checkpoint", "ddpm/model.safetensors", "--sampler", "ddim"],
                                        "--sampler"),
    "eval out not json": (["eval", "--checkpoint", "vae/model.safetensors", "--out", "m.txt"], "--out"),
    "plot steps for schedules": (["plot", "schedules", "--out", "figs", "--steps", "5"], "--steps"),
    "plot T 0": (["plot", "schedules", "--out", "figs", "--T", "0"], "--T"),
    "plot checkpoint without it": (["plot", "checkpoint", "--out", "figs"], "--checkpoint"),
    "plot out is a file": (["plot", "schedules", "--out", "README.md"], "--out"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_error_line_exit_2_and_writes_nothing(workdir, case):
    argv, flag = CASES[case]
    before = _files(workdir)
    done = _run(*argv, cwd=workdir)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], done.stderr
    assert done.stdout == ""
    assert _files(workdir) == before  # nothing half-written, no folder made


def test_a_missing_backend_is_one_error_line_exit_1(workdir):
    if backend.cupy_available():
        pytest.skip("CuPy and a GPU are here: the missing-backend error cannot happen")
    done = _run("train", "ddpm", "--backend", "cupy", "--steps", "1", "--out", "runs/c", cwd=workdir)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "backend 'cupy' requested" in lines[0], done.stderr
