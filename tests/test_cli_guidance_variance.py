"""The command line of the two DDPM extensions (docs/guidance_variance.md): `train ddpm --class-conditional`
then `sample --label K --guidance S` and `eval --guidance S`; `train ddpm --set variance=learned` then sample and
eval with Sigma_theta; and the usage errors of flags given to a model they do not fit."""
import json

import numpy as np
import pytest

from minidiff import backend, models
from minidiff.cli import main

TINY = ["--steps", "2", "--batch-size", "8", "--set", "T=8", "--set", "base_channels=8", "--set", "eval_images=4",
        "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional and a learned-variance DDPM on the digits, trained for 2 steps each, and a one-step
    classifier of the shapes (another data set's scorer)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "ddpm", "--class-conditional", "--out", str(root / "cfg"), *TINY]) == 0
    assert main(["train", "ddpm", "--set", "variance=learned", "--out", str(root / "learned"), *TINY]) == 0
    assert main(["train", "classifier", "--dataset", "shapes", "--steps", "1", "--out", str(root / "shapes"),
                 "--no-progress"]) == 0
    return root


def test_train_class_conditional_writes_a_checkpoint_with_the_datasets_classes(runs):
    model, _ = models.load(runs / "cfg" / "model.safetensors")
    assert model.num_classes == 10 and model.hparams["p_uncond"] == 0.1
    metrics = json.loads((runs / "cfg" / "metrics.json").read_text())
    assert np.isfinite(metrics["test_bits_per_dim"]) and np.isfinite(metrics["test_conditional_bits_per_dim"])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sample_with_a_label_and_a_guidance_scale_is_the_models_guided_sample(runs, sampler):
    out = runs / f"s_{sampler}.npy"
    assert main(["sample", "--checkpoint", str(runs / "cfg" / "model.safetensors"), "--n", "3", "--label", "7",
                 "--guidance", "2.5", "--sampler", sampler, "--steps", "4", "--out", str(out), "--no-progress"]) == 0
    model, _ = models.load(runs / "cfg" / "model.safetensors")
    want = model.sample_images(3, backend.default_rng(seed=0), sampler=sampler, steps=4, label=7, guidance=2.5)
    np.testing.assert_array_equal(np.load(out), want)


def test_eval_scores_the_requested_labels_of_a_guided_model(runs, tmp_path):
    out = tmp_path / "q.json"
    assert main(["eval", "--checkpoint", str(runs / "cfg" / "model.safetensors"), "--classifier",
                 str(runs / "cfg" / "model.safetensors"), "--n", "4"]) == 2     # not a classifier: usage error
    classifier = _tiny_classifier(tmp_path)
    assert main(["eval", "--checkpoint", str(runs / "cfg" / "model.safetensors"), "--classifier", classifier,
                 "--n", "10", "--guidance", "3", "--sampler", "ddim", "--steps", "3", "--out", str(out),
                 "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["quality"]["requested_label_accuracy"] <= 1.0


def _tiny_classifier(tmp_path):
    assert main(["train", "classifier", "--steps", "1", "--out", str(tmp_path / "clf"), "--no-progress"]) == 0
    return str(tmp_path / "clf" / "model.safetensors")


def test_a_learned_variance_checkpoint_samples_and_evaluates(runs, tmp_path):
    model, _ = models.load(runs / "learned" / "model.safetensors")
    assert model.learned_variance
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(runs / "learned" / "model.safetensors"), "--out", str(out),
                 "--no-progress"]) == 0
    assert np.isfinite(json.loads(out.read_text())["test_bits_per_dim"])
    assert main(["sample", "--checkpoint", str(runs / "learned" / "model.safetensors"), "--n", "2", "--steps", "4",
                 "--out", str(tmp_path / "x.npy"), "--no-progress"]) == 0
    assert np.load(tmp_path / "x.npy").shape == (2, 1, 8, 8)


@pytest.mark.parametrize("argv, message", [
    (["sample", "--checkpoint", "{learned}", "--guidance", "2"], "--guidance is for class-conditional diffusion"),
    (["sample", "--checkpoint", "{learned}", "--label", "3"], "--label is for class-conditional models"),
    (["sample", "--checkpoint", "{cfg}", "--label", "10"], "--label must be in 0..9"),
    (["sample", "--checkpoint", "{cfg}", "--guidance", "nan"], "--guidance must be a finite number"),
    (["train", "ae", "--class-conditional", "--steps", "1"], "--class-conditional: ae takes no labels"),
    (["train", "ddpm", "--class-conditional", "--set", "num_classes=3", "--steps", "1"], "not both"),
    (["train", "ddpm", "--dataset", "two-moons", "--class-conditional", "--steps", "1"], "teaching U-Net"),
])
def test_flags_that_do_not_fit_the_model_are_usage_errors(runs, tmp_path, capsys, argv, message):
    argv = [a.format(cfg=runs / "cfg" / "model.safetensors", learned=runs / "learned" / "model.safetensors",
                     shapes=runs / "shapes" / "model.safetensors") for a in argv]
    out = ["--out", str(tmp_path / ("x.npy" if argv[0] == "sample" else "run"))]
    assert main([*argv, *out, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "run" / "model.safetensors").exists()


def test_the_guidance_sweep_scores_each_scale_as_eval_does(runs, tmp_path):
    from minidiff import data, experiments, quality
    model, _ = models.load(runs / "cfg" / "model.safetensors")
    classifier, _ = models.load(_tiny_classifier(tmp_path))
    ds = data.digits()
    report = experiments.guidance_sweep(model, classifier, ds, scales=(0.0, 2.0), n=10, steps=3)
    assert [row["guidance"] for row in report["rows"]] == [0.0, 2.0]
    labels = np.arange(10) % 10
    samples = model.sample_images(10, backend.default_rng(seed=0), sampler="ddim", steps=3, label=labels, guidance=2.0)
    want = quality.sample_quality(classifier, samples, ds.x_test, labels)
    assert {k: report["rows"][1][k] for k in want} == want
    assert report["rows"][1]["frechet_ratio"] == want["frechet_distance"] / report["reference_frechet_train_vs_test"]


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{learned}", "--classifier", "{learned}"], "takes a class-conditional ddpm"),
    (["--checkpoint", "{cfg}"], "needs the scoring classifier"),
    (["--checkpoint", "{cfg}", "--classifier", "{cfg}"], "expected a classifier"),
    (["--checkpoint", "{cfg}", "--classifier", "{shapes}"], "was trained on 'shapes', but the samples are scored "
                                                             "against 'digits' images"),
])
def test_plot_guidance_sweep_refuses_what_it_cannot_sweep(runs, tmp_path, capsys, argv, message):
    argv = [a.format(cfg=runs / "cfg" / "model.safetensors", learned=runs / "learned" / "model.safetensors",
                     shapes=runs / "shapes" / "model.safetensors") for a in argv]
    assert main(["plot", "guidance-sweep", *argv, "--out", str(tmp_path / "sweep"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
