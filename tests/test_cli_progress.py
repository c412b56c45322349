"""Every wait over a few seconds shows progress: a line on stderr saying what is being done, and a tqdm bar
over the loop (sampling steps, the held-out VLB's timesteps, the models of recon-vs-latent); stdout keeps
only the results, and --no-progress silences the bars."""
import json
import os
import re
import subprocess
import sys

import pytest

from minidiff import backend, data, models
from minidiff.train import TrainConfig, Trainer

T = 7


def _run(*args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "minidiff", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _bar(desc, total, text):
    """Whether `text` holds a tqdm bar `desc: n%|...| k/total`."""
    return re.search(rf"{re.escape(desc)}:\s+\d+%\|[^|\n\r]*\|\s*\d+/{total}\b", text) is not None


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    """A folder with a one-step checkpoint of a tiny DDPM (T = 7) on the digits."""
    root = tmp_path_factory.mktemp("user")
    ds = data.digits()
    backend.manual_seed(0)
    model = models.REGISTRY["ddpm"](**{**models.REGISTRY["ddpm"].default_hparams(ds), "T": T, "base_channels": 8,
                                       "eval_images": 4})
    Trainer(model, TrainConfig(steps=1, batch_size=8, progress=False), ds.x_train, ds.y_train,
            out_dir=str(root / "ddpm")).fit()
    return root


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 4)])
def test_sample_says_what_it_draws_and_shows_a_bar_over_the_steps(ddpm, sampler, steps):
    argv = ["sample", "--checkpoint", "ddpm/model.safetensors", "--n", "3", "--out", "s.npy", "--sampler", sampler]
    done = _run(*argv, *(["--steps", str(steps)] if steps else []), cwd=ddpm)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"sampling 3 images from ddpm/model.safetensors with the {sampler} sampler on {steps or T} steps" \
        in done.stderr
    assert _bar(sampler, steps or T, done.stderr), done.stderr
    assert done.stdout.startswith("wrote s.npy")                      # results only on stdout
    quiet = _run(*argv, "--no-progress", cwd=ddpm)
    assert quiet.returncode == 0 and not _bar(sampler, T, quiet.stderr), quiet.stderr


def test_eval_shows_a_bar_over_the_held_out_vlb_and_keeps_stdout_json(ddpm):
    done = _run("eval", "--checkpoint", "ddpm/model.safetensors", cwd=ddpm)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "held-out metrics of ddpm/model.safetensors on the digits test split" in done.stderr
    assert _bar("vlb", T, done.stderr), done.stderr
    assert json.loads(done.stdout)["test_bits_per_dim"] > 0


def test_plot_recon_vs_latent_names_each_model_and_latent_size(tmp_path):
    done = _run("plot", "recon-vs-latent", "--out", "figs", "--steps", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for d in (2, 4, 8, 16, 32):
        for name in ("AE (MLP)", "VAE (conv)"):
            assert f"training the {name} with latent size d = {d} for 1 steps" in done.stderr, done.stderr
    assert _bar("recon-vs-latent", 10, done.stderr), done.stderr
    assert (tmp_path / "figs" / "recon_vs_latent.png").exists()


@pytest.mark.parametrize("flag,field", [("--steps", "steps"), ("--batch-size", "batch_size"), ("--lr", "lr"),
                                        ("--eval-every", "eval_every"), ("--checkpoint-every", "checkpoint_every")])
def test_train_help_states_the_defaults_each_model_trains_with(flag, field):
    """The number `train --help` gives for each model is the value `train MODEL` without the flag uses."""
    from minidiff import cli
    parser = cli._parser()
    text = " ".join(next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                         if flag in a.option_strings).help.split())
    for name, cls in models.REGISTRY.items():
        args = parser.parse_args(["train", name])
        used = getattr(cli.train_config(cls, args), field)
        stated = re.search(rf"\b{name} ([0-9.e-]+)", text) or re.search(r"([0-9.e-]+) for every model", text)
        assert stated and float(stated.group(1)) == used, f"{flag} help {text!r} vs {name}'s {field} = {used}"
