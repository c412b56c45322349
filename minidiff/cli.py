"""The command line: `python -m minidiff train|sample|eval|plot ...` (docs/training.md §8).

    python -m minidiff train ddpm --dataset digits --out runs/ddpm      # the README's main job
    python -m minidiff sample --checkpoint runs/ddpm/model.safetensors --n 64 --out samples.npy
    python -m minidiff eval --checkpoint runs/ddpm/model.safetensors --classifier runs/classifier/model.safetensors
    python -m minidiff plot schedules --out figures/

`train` writes into --out: model.safetensors (weights, EMA, optimiser, step: resumable), metrics.json
(model, steps, initial_loss, final_loss and the held-out metrics) and PNG figures.

The choices come from the registries: models from minidiff.models.REGISTRY, samplers from
minidiff.diffusion.SAMPLERS (their options by --sampler-option KEY=VALUE), schedules from
minidiff.diffusion.SCHEDULES (`train ddpm --set schedule=NAME`, `plot schedules`).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from minidiff import backend, data, models, plots
from minidiff.autograd import no_grad
from minidiff.diffusion import SAMPLERS, schedules_at
from minidiff.train import TrainConfig, Trainer, TrainingDiverged


def _parser():
    p = argparse.ArgumentParser(prog="python -m minidiff", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write checkpoint, metrics.json and figures")
    t.add_argument("model", choices=list(models.REGISTRY))
    t.add_argument("--dataset", default="digits", choices=["digits", "shapes", "mnist", "fashion-mnist"])
    t.add_argument("--data-root", help="folder holding the four IDX files (mnist, fashion-mnist)")
    t.add_argument("--steps", type=int, help="optimiser steps (default: the model's)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="output folder (default: runs/<model>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/model.safetensors")
    t.add_argument("--eval-every", type=int, help="held-out evaluation every N steps (default: at the end)")
    t.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default 500)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model hyperparameter, e.g. --set latent_dim=2 --set kind=conv (JSON values)")
    _common(t)

    s = sub.add_parser("sample", help="draw N samples from a checkpoint into an .npy (+ a PNG grid beside it)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", required=True, help="FILE.npy")
    _sampling(s)
    s.add_argument("--eta", type=float, help="DDIM only (same as --sampler-option eta=E)")
    s.add_argument("--label", type=int, help="cVAE only: the digit to draw (default: 0..9 in turn)")
    s.add_argument("--seed", type=int, default=0)
    _common(s)

    e = sub.add_parser("eval", help="held-out metrics and sample quality of a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--classifier", help="classifier checkpoint for sample quality (train classifier)")
    e.add_argument("--n", type=int, default=1000, help="samples scored for quality")
    _sampling(e)
    e.add_argument("--dataset", default=None, help="default: the one the checkpoint was trained on")
    e.add_argument("--data-root")
    e.add_argument("--out", help="write the metrics as JSON here")
    e.add_argument("--seed", type=int, default=0)
    _common(e)

    f = sub.add_parser("plot", help="figures: 'checkpoint' (a model's figures) or 'schedules' or 'recon-vs-latent'")
    f.add_argument("what", choices=["checkpoint", "schedules", "recon-vs-latent"])
    f.add_argument("--checkpoint")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--T", type=int, default=200)
    f.add_argument("--steps", type=int, default=600, help="recon-vs-latent: training steps per model")
    f.add_argument("--seed", type=int, default=0)
    _common(f)
    return p


def _sampling(p):
    p.add_argument("--sampler", choices=list(SAMPLERS), default="ddpm", help="DDPM only")
    p.add_argument("--steps", type=int, help="DDPM only: sample on K respaced steps")
    p.add_argument("--sampler-option", action="append", default=[], metavar="KEY=VALUE",
                   help="DDPM only: a sampler option, e.g. --sampler-option eta=0.5 for ddim (JSON values)")


def _common(p):
    p.add_argument("--backend", choices=["numpy", "cupy"], default=None, help="array backend (default numpy)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.backend:
            backend.set_backend(args.backend)
        return {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "plot": cmd_plot}[args.command](args)
    except (TrainingDiverged, backend.BackendError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- train

def _parse_sets(items, flag="--set"):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def new_model(args, dataset):
    """The model `args.model` with its defaults for the dataset and the --set overrides, seeded by --seed."""
    cls = models.REGISTRY[args.model]
    backend.manual_seed(args.seed)
    return cls(**cls.default_hparams(dataset), **_parse_sets(args.set))


def train_config(cls, args):
    """The model's default TrainConfig with the command-line overrides."""
    cfg = dict(cls.TRAIN_DEFAULTS, seed=args.seed, progress=not args.no_progress)
    for key, flag in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("eval_every", "eval_every"), ("checkpoint_every", "checkpoint_every")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    return TrainConfig(**cfg)


def cmd_train(args):
    out = args.out or os.path.join("runs", args.model)
    dataset = data.load_images(args.dataset, args.data_root, seed=0)
    model = new_model(args, dataset)
    config = train_config(type(model), args)
    trainer = Trainer(model, config, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, out_dir=out,
                      meta={"dataset": args.dataset})
    if args.resume:
        trainer.resume()
        print(f"resumed {trainer.checkpoint_path()} at step {trainer.step}")
    started = time.time()
    trainer.fit()
    seconds = time.time() - started
    print(f"trained {args.model} for {trainer.step} steps in {seconds:.0f} s; checkpoint {trainer.last_checkpoint}")
    with trainer.averaged_weights():
        figures = model.figures(out, dataset, trainer, backend.default_rng(seed=args.seed))
    metrics = run_metrics(trainer, args.dataset, seconds, figures)
    if hasattr(model, "report"):
        with trainer.averaged_weights():
            metrics.update(model.report(dataset))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("figures", "evals", "hparams")}, indent=2))
    print(f"wrote {os.path.join(out, 'metrics.json')} and {len(figures)} figures in {out}/")
    return 0


def run_metrics(trainer, dataset, seconds, figures):
    """metrics.json: what was trained, its loss at the start and end, and the last held-out metrics."""
    losses = trainer.history["loss"]
    window = max(1, min(100, len(losses) // 10))
    metrics = {"model": trainer.model.name, "dataset": dataset, "steps": trainer.step,
               "initial_loss": losses[0] if losses else None,
               "final_loss": float(np.mean(losses[-window:])) if losses else None,
               "final_loss_window": window, "train_seconds_this_session": round(seconds, 1),
               "backend": backend.get_backend(), "seed": trainer.config.seed,
               "hparams": trainer.model.hparams}
    if trainer.evals:
        metrics.update({k: v for k, v in trainer.evals[-1].items() if k != "step"})
        metrics["evals"] = trainer.evals
    metrics["figures"] = [os.path.basename(p) for p in figures]
    return metrics


# ---------------------------------------------------------------- sample / eval / plot

def sampler_options(args):
    """The --sampler-option KEY=VALUE pairs (and --eta where the command has it) as keyword options."""
    options = _parse_sets(args.sampler_option, "--sampler-option")
    if getattr(args, "eta", None) is not None:
        if "eta" in options:
            raise ValueError("eta given twice: use --eta or --sampler-option eta=..., not both")
        options["eta"] = args.eta
    return options


def cmd_sample(args):
    model, state = models.load(args.checkpoint)
    rng = backend.default_rng(seed=args.seed)
    images = model.sample_images(args.n, rng, sampler=args.sampler, steps=args.steps, label=args.label,
                                 **sampler_options(args))
    if not args.out.endswith(".npy"):
        raise ValueError(f"--out must name a .npy file, got {args.out!r}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.save(args.out, images)
    png = plots.save_sample_grid(images, args.out[:-4] + ".png", title=f"{model.name} samples" + (
        f" ({args.sampler}, {args.steps or 'all'} steps)" if model.name == "ddpm" else ""))
    print(f"wrote {args.out} {images.shape} in [{images.min():.2f}, {images.max():.2f}] and {png}")
    return 0


def cmd_eval(args):
    from minidiff import quality
    model, state = models.load(args.checkpoint)
    dataset = data.load_images(args.dataset or state.get("dataset", "digits"), args.data_root, seed=0)
    rng = backend.default_rng(seed=args.seed)
    result = {"model": model.name, "checkpoint": args.checkpoint, "step": state["step"]}
    model.eval()
    with no_grad():
        result.update(model.evaluate(backend.xp().asarray(dataset.x_test), backend.xp().asarray(dataset.y_test),
                                     backend.default_rng(seed=(args.seed, 2 ** 31))))
    if args.classifier and model.name != "classifier":
        classifier, _ = models.load(args.classifier)
        labels = np.arange(args.n) % dataset.num_classes
        started = time.time()
        samples = model.sample_images(args.n, rng, sampler=args.sampler, steps=args.steps, label=labels,
                                      **sampler_options(args))
        result["sampling_seconds"] = round(time.time() - started, 1)
        requested = labels if model.name == "cvae" else None
        result["quality"] = quality.sample_quality(classifier, samples, dataset.x_test, requested)
        result["quality"]["reference_frechet_train_vs_test"] = quality.reference_distance(
            classifier, dataset.x_train, dataset.x_test, args.n, seed=args.seed)
        result["quality"]["frechet_ratio"] = (result["quality"]["frechet_distance"]
                                              / result["quality"]["reference_frechet_train_vs_test"])
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def cmd_plot(args):
    os.makedirs(args.out, exist_ok=True)
    if args.what == "schedules":  # every registered schedule that exists at --T
        path = plots.save_schedule_curves(schedules_at(args.T), os.path.join(args.out, "schedules.png"))
        print(f"wrote {path}")
    elif args.what == "recon-vs-latent":
        from minidiff import experiments
        path = experiments.recon_vs_latent_figure(os.path.join(args.out, "recon_vs_latent.png"), steps=args.steps,
                                                  seed=args.seed, progress=not args.no_progress)
        print(f"wrote {path}")
    else:
        if not args.checkpoint:
            raise ValueError("plot checkpoint needs --checkpoint PATH")
        model, state = models.load(args.checkpoint)
        dataset = data.load_images(state.get("dataset", "digits"), None, seed=0)
        for path in model.figures(args.out, dataset, None, backend.default_rng(seed=args.seed)):
            print(f"wrote {path}")
    return 0
