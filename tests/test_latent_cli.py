"""`train ldm`, then `sample` and `eval` on its checkpoint, as a user types them (tiny configurations), and the
mistakes that are usage errors (exit 2, one `error:` line naming the flag, nothing written)."""
import contextlib
import json
import os

import numpy as np
import pytest

from minidiff import data
from minidiff.cli import main

TINY = ["--set", "T=25", "--set", "base_channels=8", "--set", "channels=4", "--set", "latent_channels=2",
        "--set", "eval_images=4", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder holding a 4-step `train ldm` run (its autoencoder inside) and a 2-step classifier."""
    root = tmp_path_factory.mktemp("user")
    with contextlib.chdir(root):
        assert main(["train", "ldm", "--steps", "4", "--batch-size", "16", "--out", "runs/ldm", *TINY]) == 0
        assert main(["train", "classifier", "--steps", "2", "--out", "runs/classifier", "--no-progress"]) == 0
    return root


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, name), root) for d, dirs, files in os.walk(root)
                  for name in files + dirs)


def test_train_ldm_splits_the_steps_and_writes_the_latent_metrics(runs):
    metrics = json.loads((runs / "runs" / "ldm" / "metrics.json").read_text())
    assert metrics["model"] == "ldm" and metrics["steps"] == 3   # the diffusion stage's steps
    assert metrics["autoencoder_steps"] == 1 and metrics["diffusion_steps"] == 3
    assert metrics["latent_shape"] == [2, 4, 4] and metrics["latent_scale"] > 0
    for key in ("test_bits_per_dim", "autoencoder_test_mse", "test_eps_loss"):
        assert np.isfinite(metrics[key]), key
    assert (runs / "runs" / "ldm" / "autoencoder" / "model.safetensors").is_file()
    assert {"samples.png", "reconstructions.png", "loss.png"} <= set(metrics["figures"])


def test_sample_and_eval_take_an_ldm_checkpoint(runs, monkeypatch, capsys):
    monkeypatch.chdir(runs)
    assert main(["sample", "--checkpoint", "runs/ldm/model.safetensors", "--n", "5", "--out", "s/x.npy",
                 "--sampler", "ddim", "--steps", "3", "--no-progress"]) == 0
    x = np.load(runs / "s" / "x.npy")
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32 and np.all(np.abs(x) <= 1)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "runs/ldm/model.safetensors", "--classifier",
                 "runs/classifier/model.safetensors", "--n", "20", "--steps", "3", "--out", "e.json",
                 "--no-progress"]) == 0
    result = json.loads((runs / "e.json").read_text())
    assert result["model"] == "ldm" and np.isfinite(result["quality"]["frechet_ratio"])
    assert np.isfinite(result["test_bits_per_dim"]) and result["autoencoder_test_mse"] > 0


@pytest.mark.parametrize("source", ["runs/ldm/autoencoder/model.safetensors", "runs/ldm/model.safetensors"])
def test_a_given_autoencoder_trains_only_the_diffusion_stage_and_resumes(runs, monkeypatch, source):
    monkeypatch.chdir(runs)
    out = f"runs/again_{os.path.basename(os.path.dirname(source))}"
    common = ["train", "ldm", "--autoencoder", source, "--batch-size", "16", "--out", out, *TINY]
    assert main([*common, "--steps", "2"]) == 0
    first = json.loads((runs / "runs" / "ldm" / "metrics.json").read_text())
    metrics = json.loads((runs / out / "metrics.json").read_text())
    assert metrics["autoencoder_steps"] == 0 and metrics["steps"] == 2
    assert metrics["latent_scale"] == pytest.approx(first["latent_scale"], rel=1e-6)   # the same first stage
    assert main([*common, "--steps", "3", "--resume"]) == 0
    assert json.loads((runs / out / "metrics.json").read_text())["steps"] == 3


MISTAKES = {  # argv, the flag its error line names
    "autoencoder for a ddpm": (["train", "ddpm", "--autoencoder", "runs/ldm/autoencoder/model.safetensors"],
                               "--autoencoder"),
    "one step for two stages": (["train", "ldm", "--steps", "1"], "--steps"),
    "resume without the first stage": (["train", "ldm", "--resume", "--out", "runs/ldm"], "--resume"),
    "autoencoder is a classifier": (["train", "ldm", "--autoencoder", "runs/classifier/model.safetensors"],
                                    "--autoencoder"),
    "autoencoder missing": (["train", "ldm", "--autoencoder", "none.safetensors"], "--autoencoder"),
    "set against the autoencoder": (["train", "ldm", "--autoencoder", "runs/ldm/autoencoder/model.safetensors",
                                     "--set", "latent_channels=3"], "--autoencoder"),
    "autoencoder of other images": (["train", "ldm", "--dataset", "shapes", "--autoencoder",
                                     "runs/ldm/autoencoder/model.safetensors"], "--autoencoder"),
    "label on an ldm": (["sample", "--checkpoint", "runs/ldm/model.safetensors", "--label", "3", "--out", "s.npy"],
                        "--label"),
    "steps beyond the latent T": (["sample", "--checkpoint", "runs/ldm/model.safetensors", "--steps", "26",
                                   "--out", "s.npy"], "--steps"),
    "sample a klae": (["sample", "--checkpoint", "runs/ldm/autoencoder/model.safetensors", "--out", "s.npy"],
                      "--checkpoint"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_latent_mistake_is_one_error_line_exit_2_and_writes_nothing(runs, monkeypatch, capsys, case):
    argv, flag = MISTAKES[case]
    monkeypatch.chdir(runs)
    before = _files(runs)
    capsys.readouterr()
    assert main([*argv, "--no-progress"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], err
    assert out == "" and _files(runs) == before


def test_train_ldm_class_conditional_then_sample_a_label_with_guidance(runs, monkeypatch):
    monkeypatch.chdir(runs)
    assert main(["train", "ldm", "--class-conditional", "--autoencoder", "runs/ldm/autoencoder/model.safetensors",
                 "--steps", "2", "--batch-size", "16", "--out", "runs/cldm", *TINY]) == 0
    metrics = json.loads((runs / "runs" / "cldm" / "metrics.json").read_text())
    assert metrics["hparams"]["num_classes"] == 10
    assert main(["sample", "--checkpoint", "runs/cldm/model.safetensors", "--n", "3", "--label", "7", "--guidance",
                 "2", "--steps", "3", "--out", "c/x.npy", "--no-progress"]) == 0
    x = np.load(runs / "c" / "x.npy")
    assert x.shape == (3, 1, 8, 8) and np.all(np.abs(x) <= 1)
    assert main(["sample", "--checkpoint", "runs/ldm/model.safetensors", "--guidance", "2", "--out", "c/y.npy",
                 "--no-progress"]) == 2                                 # guidance needs a class-conditional model


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory):
    """The 16×16 shapes: a 4-step `train ldm`, a 2-step pixel ddpm and a 2-step classifier (and `runs`' digits one)."""
    root = tmp_path_factory.mktemp("shapes")
    with contextlib.chdir(root):
        pixel = ["--set", "T=25", "--set", "base_channels=8", "--set", "eval_images=4", "--no-progress"]
        for model, extra in (("ldm", ["--steps", "4", *TINY]), ("ddpm", ["--steps", "2", *pixel]),
                             ("classifier", ["--steps", "2", "--no-progress"])):
            assert main(["train", model, "--dataset", "shapes", "--batch-size", "16", "--out", f"runs/{model}",
                         *extra]) == 0
    return root


def test_on_the_shapes_the_latent_grid_is_8x8_and_eval_scores_both_models(shapes_runs, monkeypatch):
    monkeypatch.chdir(shapes_runs)
    assert json.loads((shapes_runs / "runs" / "ldm" / "metrics.json").read_text())["latent_shape"] == [2, 8, 8]
    for model in ("ldm", "ddpm"):
        assert main(["eval", "--checkpoint", f"runs/{model}/model.safetensors", "--classifier",
                     "runs/classifier/model.safetensors", "--n", "6", "--steps", "3", "--out", f"{model}.json",
                     "--no-progress"]) == 0
        result = json.loads((shapes_runs / f"{model}.json").read_text())
        assert result["model"] == model and result["quality"]["n_reference"] == len(data.shapes().x_test)
        assert np.isfinite(result["quality"]["frechet_ratio"]) and result["quality"]["frechet_ratio"] > 0


def test_a_classifier_of_other_images_is_refused_before_any_sampling(runs, shapes_runs, monkeypatch, capsys):
    monkeypatch.chdir(shapes_runs)
    digits_classifier = str(runs / "runs" / "classifier" / "model.safetensors")
    before = _files(shapes_runs)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "runs/ldm/model.safetensors", "--classifier", digits_classifier,
                 "--n", "6", "--out", "e.json", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --classifier") and "'digits'" in lines[0], err
    assert "'shapes'" in lines[0] and out == "" and _files(shapes_runs) == before
