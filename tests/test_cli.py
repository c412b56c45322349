"""The CLI as a new user runs it: a fresh folder, the README command (with few steps), the promised files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minidiff import checkpoint
from minidiff.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def _run(*args, cwd):
    """`python -m minidiff ...` in a subprocess, as typed in a shell; returns the completed process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "minidiff", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    """The README main job, `train ddpm --dataset digits --out runs/ddpm`, cut to 3 steps, in a fresh folder."""
    cwd = tmp_path_factory.mktemp("user")
    done = _run("train", "ddpm", "--dataset", "digits", "--out", "runs/ddpm", "--steps", "3", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd, done


def test_readme_command_writes_checkpoint_metrics_and_figures(ddpm_run):
    cwd, done = ddpm_run
    out = cwd / "runs" / "ddpm"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "ddpm" and metrics["steps"] == 3
    for key in ("initial_loss", "final_loss", "test_bits_per_dim"):
        assert np.isfinite(metrics[key]), key
    assert metrics["test_bits_per_dim"] > 0
    for name in ("samples.png", "forward_process.png", "reverse_process.png", "loss.png", "schedules.png"):
        assert name in metrics["figures"] and _is_png(out / name), name
    groups, state = checkpoint.load_checkpoint(out / "model.safetensors")
    assert state["step"] == 3 and groups["params"] and groups["ema"] and groups["optim"]
    assert "test_bits_per_dim" in done.stdout and "loss" in done.stderr  # metrics printed, tqdm bar on stderr
    assert sorted(os.listdir(out)) == sorted(["model.safetensors", "metrics.json", *metrics["figures"]])


def test_sample_writes_npy_and_png(ddpm_run):
    cwd, _ = ddpm_run
    done = _run("sample", "--checkpoint", "runs/ddpm/model.safetensors", "--n", "5", "--out", "s/x.npy",
                "--sampler", "ddim", "--steps", "6", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    x = np.load(cwd / "s" / "x.npy")
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32 and np.all(np.abs(x) <= 1)
    assert _is_png(cwd / "s" / "x.png")


def test_resume_continues_the_run(tmp_path):
    tiny = ["--set", "T=10", "--set", "base_channels=8", "--set", "eval_images=4", "--no-progress"]
    first = _run("train", "ddpm", "--out", "runs/tiny", "--steps", "5", "--checkpoint-every", "3", *tiny,
                 cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    done = _run("train", "ddpm", "--out", "runs/tiny", "--steps", "7", "--resume", *tiny, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed" in done.stdout and "at step 5" in done.stdout
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert metrics["steps"] == 7 and len(metrics["evals"]) == 2  # one evaluation per session, both kept


def test_classifier_vae_cvae_ae_and_eval_with_sample_quality(tmp_path, capsys):
    out = tmp_path / "runs"
    for model in ("classifier", "vae", "cvae", "ae"):
        assert main(["train", model, "--steps", "4", "--batch-size", "32", "--out", str(out / model),
                     "--no-progress"]) == 0
    metrics = {m: json.loads((out / m / "metrics.json").read_text()) for m in ("classifier", "vae", "cvae", "ae")}
    assert "test_accuracy" in metrics["classifier"]
    assert np.isfinite(metrics["vae"]["test_elbo_nats"]) and np.isfinite(metrics["cvae"]["test_elbo_nats"])
    assert "latent_precision_at_5" in metrics["ae"]["retrieval"]
    assert _is_png(out / "cvae" / "samples.png") and _is_png(out / "vae" / "latent.png")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "cvae" / "model.safetensors"), "--classifier",
                 str(out / "classifier" / "model.safetensors"), "--n", "20", "--out", str(tmp_path / "q.json")]) == 0
    result = json.loads((tmp_path / "q.json").read_text())
    q = result["quality"]
    assert 0 <= q["confident_fraction"] <= 1 and 0 <= q["label_entropy_nats"] <= np.log(10) + 1e-9
    assert q["frechet_distance"] >= 0 and "requested_label_accuracy" in q
    assert q["frechet_ratio"] == pytest.approx(q["frechet_distance"] / q["reference_frechet_train_vs_test"])


def test_eval_scores_the_samples_of_the_sampler_it_is_given(tmp_path, capsys):
    """eval --sampler ode --steps K --sampler-option solver=heun scores exactly what that sampler draws (the
    same numbers as drawing them by hand with the seed) and says so in its JSON; the default ddpm differs."""
    from minidiff import backend, data, models, quality
    out = tmp_path / "runs"
    tiny = ["--set", "T=10", "--set", "base_channels=8", "--set", "eval_images=4", "--no-progress"]
    assert main(["train", "ddpm", "--steps", "3", "--batch-size", "8", "--out", str(out / "ddpm"), *tiny]) == 0
    assert main(["train", "classifier", "--steps", "3", "--out", str(out / "clf"), "--no-progress"]) == 0
    ckpt, clf = str(out / "ddpm" / "model.safetensors"), str(out / "clf" / "model.safetensors")
    results = {}
    for name, flags in (("ode", ["--sampler", "ode", "--steps", "4", "--sampler-option", "solver=heun"]),
                        ("ddpm", [])):
        assert main(["eval", "--checkpoint", ckpt, "--classifier", clf, "--n", "12", "--no-progress", *flags,
                     "--out", str(tmp_path / f"{name}.json")]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["ode"]["sampler"] == {"name": "ode", "steps": 4, "options": {"solver": "heun"}}
    assert results["ddpm"]["sampler"] == {"name": "ddpm", "steps": 10, "options": {}}
    model, _ = models.load(ckpt)
    classifier, _ = models.load(clf)
    x = model.sample_images(12, backend.default_rng(seed=0), sampler="ode", steps=4, solver="heun")
    by_hand = quality.sample_quality(classifier, x, data.digits().x_test)
    assert results["ode"]["quality"]["frechet_distance"] == pytest.approx(by_hand["frechet_distance"], rel=1e-9)
    assert results["ddpm"]["quality"]["frechet_distance"] != pytest.approx(by_hand["frechet_distance"], rel=1e-6)


def test_plot_schedules(tmp_path):
    assert main(["plot", "schedules", "--out", str(tmp_path), "--T", "50"]) == 0
    assert _is_png(tmp_path / "schedules.png")
