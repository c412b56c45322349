"""Latent vs pixel DDPM: training seconds per step and sampling seconds per image, in one process.

    python benchmarks/latent_vs_pixel.py --pixel runs/ddpm/model.safetensors --latent runs/ldm/model.safetensors \
        [--dataset digits] [--name latent_vs_pixel_digits] [--n 100] [--rounds 3] [--steps 10] [--threads 1] \
        [--classifier runs/classifier/model.safetensors --quality-n 1000]

Both checkpoints are loaded in the same process and timed in alternation (pixel, latent, pixel, ...), `--rounds`
times, so that the noise of a shared machine falls on both alike; the JSON holds every round, the medians, and
the ratios pixel / latent. Both must have been trained on one data set: `--dataset` (any image set of
`data.DATASETS`; default: the checkpoints' own) names it, and `--name` defaults to latent_vs_pixel_<dataset>.
What is timed:
  sampling: `sample_images(n)` with the ancestral sampler on all T steps (for the latent model: the latent
            chain and the one decoder call), per image;
  training: `--steps` Trainer steps of each model's own defaults (batch, optimiser, EMA) on its own data
            (the pixel model on the images, the latent model on the scaled codes, encoded once beforehand);
            the latent model's first stage is timed too (steps of the autoencoder, batch of its defaults),
            so that a full `train ldm` budget can be priced: a S_ae t_ae + S_diff t_latent.
With `--classifier` (one trained on the same data set) it also scores the two yardsticks of the FD ratio
(docs/results.md), at `--quality-n` images, the n of the `eval --n` runs they stand beside:
  the noise of the reference: FD(n real training images, the test images) for `--reference-seeds` subsets
            (seed 0 is the denominator `eval` divides by), so a difference of FD ratios can be weighed;
  the latent model's ceiling: the sample-quality numbers of the autoencoder's reconstructions (decoded
            posterior means, clipped to [-1, 1]) of n training images drawn with seed 0.
Writes benchmarks/results/<name>.json with the machine, versions, thread counts and the allocator setting.
"""
import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

import numpy as np  # noqa: E402

from minidiff import backend, data, models, quality  # noqa: E402
from minidiff.models.klae import KLAutoencoder  # noqa: E402
from minidiff.train import TrainConfig, Trainer  # noqa: E402


def limit_threads(n):
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(n)
    return [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()]


def seconds_per_image(model, n, seed):
    start = time.perf_counter()
    model.sample_images(n, backend.default_rng(seed=seed))
    return (time.perf_counter() - start) / n


def trainer_for(model, x_train, y_train, defaults):
    config = TrainConfig(**{**defaults, "steps": 10 ** 6, "progress": False, "checkpoint_every": 0})
    return Trainer(model.train(), config, x_train, y_train)


def seconds_per_step(trainer, steps):
    trainer.train_step()   # warm-up: allocations, the first BLAS calls
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - start) / steps


def dataset_of(requested, pixel_state, latent_state):
    """The one data set both checkpoints were trained on (and `requested`, if given), else ValueError."""
    trained = {kind: models.trained_on(state) for kind, state in (("--pixel", pixel_state),
                                                                       ("--latent", latent_state))}
    if trained["--pixel"] != trained["--latent"]:
        raise ValueError(f"--pixel was trained on {trained['--pixel']!r} but --latent on {trained['--latent']!r}; "
                         "compare two models of one data set")
    if requested is not None and requested != trained["--pixel"]:
        raise ValueError(f"--dataset {requested}: both checkpoints were trained on {trained['--pixel']!r}")
    return trained["--pixel"]


def yardsticks(classifier, latent, dataset, n, seeds):
    """The FD ratio's two yardsticks at n images: the reference's spread over `seeds` subsets, the decoder's ceiling."""
    references = [quality.reference_distance(classifier, dataset.x_train, dataset.x_test, n, seed=s)
                  for s in range(seeds)]
    x = dataset.x_train[np.random.default_rng(0).choice(len(dataset.x_train), n, replace=False)]
    ceiling = quality.sample_quality(classifier, np.clip(latent.autoencoder.reconstruct(x), -1.0, 1.0),
                                     dataset.x_test)
    ceiling["frechet_ratio"] = ceiling["frechet_distance"] / references[0]
    return {"n": n, "reference_frechet_train_vs_test": references,
            "reference_spread_over_seed0": [r / references[0] for r in references],
            "autoencoder_reconstructions": ceiling}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pixel", required=True, help="a ddpm checkpoint")
    p.add_argument("--latent", required=True, help="an ldm checkpoint on the same data set")
    p.add_argument("--dataset", choices=[d for d in data.DATASETS if d not in data.POINT_SETS],
                   help="the data set of both checkpoints (default: theirs)")
    p.add_argument("--name", help="the result's file name (default: latent_vs_pixel_<dataset>)")
    p.add_argument("--n", type=int, default=100, help="images per sampling call")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--classifier", help="a classifier of the same data set: also score the FD ratio's yardsticks")
    p.add_argument("--quality-n", type=int, default=1000, help="images per yardstick FD (the eval runs' --n)")
    p.add_argument("--reference-seeds", type=int, default=5, help="real subsets for the reference's spread")
    args = p.parse_args(argv)
    blas = limit_threads(args.threads)
    pixel, pixel_state = models.load(args.pixel)
    latent, latent_state = models.load(args.latent)
    try:
        args.dataset = dataset_of(args.dataset, pixel_state, latent_state)
    except ValueError as e:
        p.error(str(e))
    args.name = args.name or f"latent_vs_pixel_{args.dataset}"
    dataset = data.load_dataset(args.dataset, None, seed=0)
    codes = latent.encode(dataset.x_train)
    trainers = {"pixel": trainer_for(pixel, dataset.x_train, dataset.y_train, type(pixel).TRAIN_DEFAULTS),
                "latent": trainer_for(latent, codes, dataset.y_train, type(latent).TRAIN_DEFAULTS),
                "latent_first_stage": trainer_for(KLAutoencoder(**latent.autoencoder.hparams), dataset.x_train,
                                                  dataset.y_train, KLAutoencoder.TRAIN_DEFAULTS)}
    rounds = []
    for r in range(args.rounds):
        row = {}
        for kind, model in (("pixel", pixel), ("latent", latent)):
            model.eval()
            row[f"{kind}_sample_s_per_image"] = seconds_per_image(model, args.n, seed=r)
        for kind, trainer in trainers.items():
            row[f"{kind}_train_s_per_step"] = seconds_per_step(trainer, args.steps)
        rounds.append(row)
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    median = {k: statistics.median(row[k] for row in rounds) for k in rounds[0]}
    ratios = {"sampling_speedup_pixel_over_latent": median["pixel_sample_s_per_image"]
              / median["latent_sample_s_per_image"],
              "training_speedup_pixel_over_latent": median["pixel_train_s_per_step"]
              / median["latent_train_s_per_step"],
              "per_round_sampling_speedups": [row["pixel_sample_s_per_image"] / row["latent_sample_s_per_image"]
                                              for row in rounds]}
    payload = {"command": " ".join(["python", "benchmarks/latent_vs_pixel.py", *(argv or sys.argv[1:])]),
               "dataset": args.dataset, "positions_pixel_over_latent": (int(np.prod(pixel.hparams["image_shape"][1:]))
                                                                      / int(np.prod(latent.latent_shape[1:]))),
               "pixel": {"checkpoint": args.pixel, "hparams": pixel.hparams, "T": pixel.T,
                         "batch_size": type(pixel).TRAIN_DEFAULTS["batch_size"]},
               "latent": {"checkpoint": args.latent, "hparams": latent.hparams, "T": latent.T,
                          "latent_shape": list(latent.latent_shape), "latent_scale": float(latent.latent_scale),
                          "batch_size": type(latent).TRAIN_DEFAULTS["batch_size"],
                          "first_stage_batch_size": KLAutoencoder.TRAIN_DEFAULTS["batch_size"]},
               "n_images_per_call": args.n, "training_steps_per_round": args.steps, "threads": args.threads,
               "blas": blas, "allocator": {"libc": "-".join(platform.libc_ver()),
                                           "malloc_env": {k: v for k, v in os.environ.items()
                                                          if k.startswith("MALLOC_")} or "glibc defaults"},
               "load_average": os.getloadavg(), "rounds": rounds, "median": median, "ratios": ratios}
    if args.classifier:
        classifier, _ = models.load(args.classifier)
        payload["yardsticks"] = yardsticks(classifier, latent, dataset, args.quality_n, args.reference_seeds)
        payload["classifier"] = args.classifier
    print(f"wrote {write_result(args.name, payload)}")
    print("  ".join(f"{k} {v:.3g}" for k, v in ratios.items() if not isinstance(v, list)))


if __name__ == "__main__":
    main()
