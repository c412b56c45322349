"""benchmarks/latent_vs_pixel.py on tiny checkpoints: it times the pixel and the latent DDPM of one data set,
names the result after that data set, and refuses two checkpoints of different data sets."""
import contextlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minidiff import data, models, quality
from minidiff.cli import main

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "latent_vs_pixel.py"
_spec = importlib.util.spec_from_file_location("bench_latent_vs_pixel", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

PIXEL = ["--set", "T=25", "--set", "base_channels=8", "--set", "eval_images=4"]
LATENT = [*PIXEL, "--set", "channels=4", "--set", "latent_channels=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny shapes checkpoints (a ddpm, an ldm, a classifier) and a tiny digits ddpm."""
    root = tmp_path_factory.mktemp("bench")
    with contextlib.chdir(root):
        for name, argv in {"ddpm": ["ddpm", "--dataset", "shapes", "--steps", "1", *PIXEL],
                           "ldm": ["ldm", "--dataset", "shapes", "--steps", "2", *LATENT],
                           "classifier": ["classifier", "--dataset", "shapes", "--steps", "2"],
                           "digits_ddpm": ["ddpm", "--steps", "1", *PIXEL]}.items():
            assert main(["train", *argv, "--batch-size", "8", "--out", name, "--no-progress"]) == 0
    return root


@pytest.fixture
def written(monkeypatch):
    """The (name, payload) the benchmark would write to benchmarks/results/, caught instead."""
    caught = {}
    monkeypatch.setattr(bench, "write_result", lambda name, payload: caught.update(name=name, payload=payload))
    return caught


def test_the_shapes_comparison_is_named_after_its_data_set_and_holds_both_timings(runs, written):
    bench.main(["--pixel", str(runs / "ddpm" / "model.safetensors"),
                "--latent", str(runs / "ldm" / "model.safetensors"), "--n", "2", "--rounds", "1", "--steps", "1",
                "--classifier", str(runs / "classifier" / "model.safetensors"), "--quality-n", "20",
                "--reference-seeds", "2"])
    payload = written["payload"]
    assert written["name"] == "latent_vs_pixel_shapes" and payload["dataset"] == "shapes"
    assert payload["latent"]["latent_shape"] == [2, 8, 8]
    assert payload["positions_pixel_over_latent"] == (16 * 16) / (8 * 8)
    (row,) = payload["rounds"]
    for kind in ("pixel", "latent"):
        assert row[f"{kind}_sample_s_per_image"] > 0 and row[f"{kind}_train_s_per_step"] > 0
    assert payload["ratios"]["sampling_speedup_pixel_over_latent"] == pytest.approx(
        row["pixel_sample_s_per_image"] / row["latent_sample_s_per_image"])
    sticks = payload["yardsticks"]
    classifier, _ = models.load(str(runs / "classifier" / "model.safetensors"))
    ds = data.shapes()
    assert sticks["reference_frechet_train_vs_test"] == pytest.approx(
        [quality.reference_distance(classifier, ds.x_train, ds.x_test, 20, seed=s) for s in range(2)])
    assert sticks["reference_spread_over_seed0"][0] == 1.0
    ceiling = sticks["autoencoder_reconstructions"]
    assert ceiling["n_samples"] == 20 and np.isclose(
        ceiling["frechet_ratio"], ceiling["frechet_distance"] / sticks["reference_frechet_train_vs_test"][0])


@pytest.mark.parametrize("argv, says", [
    (["--pixel", "digits_ddpm", "--latent", "ldm"], "--pixel was trained on 'digits' but --latent on 'shapes'"),
    (["--pixel", "ddpm", "--latent", "ldm", "--dataset", "digits"], "both checkpoints were trained on 'shapes'"),
])
def test_checkpoints_of_another_data_set_are_refused(runs, written, capsys, argv, says):
    argv = [f"{runs / a / 'model.safetensors'}" if a in ("ddpm", "ldm", "digits_ddpm") else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err and not written
