"""The command line: `python -m minidiff train|sample|eval|plot ...` (docs/training.md §8).

    python -m minidiff train ddpm --dataset digits --out runs/ddpm      # the README's main job
    python -m minidiff sample --checkpoint runs/ddpm/model.safetensors --n 64 --out runs/samples.npy
    python -m minidiff eval --checkpoint runs/ddpm/model.safetensors --classifier runs/classifier/model.safetensors
    python -m minidiff plot schedules --out runs/figures
    python -m minidiff train ddpm --dataset two-moons --out runs/moons      # a 2-D toy set: the MLP network
    python -m minidiff plot score-field --checkpoint runs/moons/model.safetensors --out runs/moons
    python -m minidiff export --checkpoint runs/ddpm/model.safetensors --format diffusers --out runs/pipeline
    python -m minidiff import --from runs/pipeline --out runs/imported/model.safetensors

`train` writes into --out: model.safetensors (weights, EMA, optimiser, step: resumable), metrics.json
(model, steps, initial_loss, final_loss and the held-out metrics) and PNG figures.

The choices come from the registries: models from minidiff.models.REGISTRY, samplers from
minidiff.diffusion.SAMPLERS (their options by --sampler-option KEY=VALUE), schedules from
minidiff.diffusion.SCHEDULES (`train ddpm --set schedule=NAME`, `plot schedules`).

Every argument, path and checkpoint is checked before the first step or sample (`validate_*`);
a mistake prints one `error: ...` line naming the flag and exits with status 2 (UsageError).
Which model-specific flag applies to which model is one table per command (TRAIN_FLAGS,
SAMPLING_FLAGS, PLOT_FLAGS): a new flag adds one line there. Exit statuses: 0 done, 1 a run-time
failure that is not a bug (RUN_TIME_ERRORS: divergence, a missing backend, a corrupt file, a full
disk), 2 a usage error, 130 interrupted. Any other exception is a bug in minidiff and keeps its
traceback.
"""
import argparse
import inspect
import io
import json
import math
import os
import shlex
import signal
import sys
import threading
import time

import numpy as np

from minidiff import backend, checkpoint, data, models, plots, toy2d
from minidiff.autograd import no_grad
from minidiff.diffusion import SAMPLERS, make_sampler, schedules_at
from minidiff.train import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, progress_option

DATASETS = list(data.DATASETS)   # images, then the toy 2-D point sets (data.POINT_SETS)
IDX_DATASETS = ("mnist", "fashion-mnist")


class UsageError(Exception):
    """A mistake on the command line (a flag's value, an output path, a checkpoint that does not fit the
    command): found before any work, reported as one `error:` line, exit status 2."""


# Failures of the run that are not bugs in minidiff: one `error:` line, exit status 1.
RUN_TIME_ERRORS = (TrainingDiverged, backend.BackendError, checkpoint.CheckpointError, data.IDXError, OSError)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `error: ...` line (and exit status 2), without the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _parser():
    p = _Parser(prog="python -m minidiff", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write checkpoint, metrics.json and figures")
    t.add_argument("model", choices=list(models.REGISTRY))
    t.add_argument("--dataset", default="digits", choices=DATASETS)
    t.add_argument("--data-root", help="folder holding the four IDX files (mnist, fashion-mnist only)")
    t.add_argument("--steps", type=int, help=f"optimiser steps, >= 1 (default: the model's: {_defaults('steps')})")
    t.add_argument("--batch-size", type=int, help=f"default: the model's ({_defaults('batch_size')})")
    t.add_argument("--lr", type=float, help=f"peak learning rate (default: the model's: {_defaults('lr')})")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="output folder (default: runs/<model>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/model.safetensors")
    t.add_argument("--eval-every", type=int, help=f"held-out evaluation every N steps, 0: only at the end "
                                                  f"(default: the model's: {_defaults('eval_every')})")
    t.add_argument("--checkpoint-every", type=int, help=f"checkpoint every N steps, 0: only at the end "
                                                        f"(default: the model's: {_defaults('checkpoint_every')})")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0,
                   help="also checkpoint when this many minutes passed since the last one (default 5; 0: off)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model hyperparameter, e.g. --set latent_dim=2 --set kind=conv (JSON values)")
    t.add_argument("--autoencoder", metavar="PATH", help="ldm only: a trained first stage (a klae checkpoint, or an "
                                                         "ldm checkpoint's autoencoder); all --steps then train the "
                                                         "latent DDPM (default: train one on a quarter of --steps)")
    t.add_argument("--class-conditional", action="store_true",
                   help="condition on the dataset's labels (num_classes = the dataset's); ddpm, ldm: classifier-free "
                        "guidance, labels dropped with probability p_uncond (--set p_uncond=0.1)")
    _common(t)

    s = sub.add_parser("sample", help="draw N samples from a checkpoint into an .npy (+ a PNG grid beside it)")
    s.add_argument("--checkpoint", required=True, help="a model.safetensors written by train")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", required=True, help="FILE.npy (FILE.png is written beside it)")
    _sampling(s)
    s.add_argument("--eta", type=float, help="ddim sampler only (same as --sampler-option eta=E)")
    s.add_argument("--label", type=int, help="class-conditional models only (cvae, ddpm or ldm --class-conditional): "
                                             "the class to draw (default: 0..K-1 in turn)")
    s.add_argument("--seed", type=int, default=0)
    _common(s)

    e = sub.add_parser("eval", help="held-out metrics and sample quality of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="a model.safetensors written by train")
    e.add_argument("--classifier", help="classifier checkpoint for sample quality (train classifier, on the same "
                                        "data set)")
    e.add_argument("--n", type=int, default=1000, help="samples scored for quality (default 1000)")
    _sampling(e)
    e.add_argument("--dataset", default=None, choices=DATASETS, help="default: the one the checkpoint was trained on")
    e.add_argument("--data-root", help="folder holding the four IDX files (mnist, fashion-mnist only)")
    e.add_argument("--out", help="write the metrics as JSON here (FILE.json)")
    e.add_argument("--seed", type=int, default=0)
    _common(e)

    f = sub.add_parser("plot", help="figures: 'checkpoint' (a model's figures), 'schedules', 'recon-vs-latent', "
                                    "'vae-anomaly', 'mae-probe', 'score-field' (a 2-D DDPM: its score arrows, "
                                    "every sampler, MMD at equal calls) or 'guidance-sweep' (a class-conditional "
                                    "ddpm at guidance scales 0..5: requested-label accuracy, FD)")
    f.add_argument("what", choices=list(PLOTS))
    f.add_argument("--checkpoint", help="checkpoint, score-field and guidance-sweep only: the model whose figures "
                                        "to draw")
    f.add_argument("--classifier", help="guidance-sweep only: the classifier that scores the samples")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--T", type=int, help="schedules only: the number of steps T (default 200)")
    f.add_argument("--steps", type=int, help="recon-vs-latent, vae-anomaly and mae-probe only: training steps per "
                                             "model (default 600, 1500 and 1500)")
    f.add_argument("--calls", type=int, nargs="+", help="score-field only: network calls per sampler; the first "
                                                         "is drawn, the MMD is measured at each (default 100)")
    f.add_argument("--seed", type=int, default=0)
    _common(f)
    _interop_parsers(sub)
    return p


def _defaults(field):
    """Each model's default for a TrainConfig field, for the help texts: "ae 2000, classifier 1000, ..."."""
    values = {name: cls.TRAIN_DEFAULTS.get(field, getattr(TrainConfig, field)) for name, cls in models.REGISTRY.items()}
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values())):g} for every model"
    return ", ".join(f"{name} {value:g}" for name, value in values.items())


def _interop_parsers(sub):
    x = sub.add_parser("export", help="write a DDPM checkpoint as a diffusers DDPMPipeline folder (docs/interop.md)")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", choices=["diffusers"], default="diffusers")
    x.add_argument("--out", required=True, help="output folder")
    i = sub.add_parser("import", help="read a diffusers DDPMPipeline or UNet2DModel folder into a DDPM checkpoint")
    i.add_argument("--from", dest="source", required=True, help="the diffusers folder")
    i.add_argument("--out", required=True, help="FILE.safetensors")
    for command in (x, i):
        _common(command)


def _sampling(p):
    p.add_argument("--sampler", choices=list(SAMPLERS), help="ddpm only: the reverse-chain sampler (default ddpm)")
    p.add_argument("--steps", type=int, help="ddpm only: sample on K respaced steps, 1 <= K <= T (default: all T)")
    p.add_argument("--sampler-option", action="append", default=[], metavar="KEY=VALUE",
                   help="ddpm only: a sampler option, e.g. --sampler-option eta=0.5 for ddim (JSON values)")
    p.add_argument("--guidance", type=float, help="class-conditional ddpm or ldm only: the classifier-free guidance "
                                                  "scale s (diffusers' guidance_scale; the paper's w = s - 1); "
                                                  "0: unconditional, 1: conditional (default)")


def _common(p):
    p.add_argument("--backend", choices=["numpy", "cupy"], default=None, help="array backend (default numpy)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        if args.backend:
            backend.set_backend(args.backend)
        return COMMANDS[args.command](args)
    except UsageError as e:
        return _fail(e, 2)
    except RUN_TIME_ERRORS as e:
        return _fail(e, 1)
    except TrainingInterrupted as e:  # the first Ctrl-C / SIGTERM during train: the step finished and was saved
        _write(f"{e}; continue with: {resume_command(args)}" if e.saved else str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second signal in train, or Ctrl-C elsewhere: outputs are written atomically
        last = getattr(args, "last_checkpoint", None)
        return _fail(f"aborted at once; {args.command} wrote nothing more"
                     + (f" (the last checkpoint is {last})" if last else ""), 130)


def _fail(message, status):
    _write(f"error: {message}", file=sys.stderr)
    return status


def _write(line, file=None):
    """Print a line without breaking a tqdm bar that may be on the screen."""
    from tqdm.auto import tqdm
    tqdm.write(str(line), file=file or sys.stdout)


# ---------------------------------------------------------------- validation (before any work)

def at_least(flag, value, minimum):
    """`value` unless it is below `minimum` (None passes: the default applies)."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")
    return value


def positive_real(flag, value):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a finite number > 0, got {value}")
    return value


def writable_folder(flag, path):
    """`path` is a folder that exists or can be made, and can be written into."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}: {path!r} is an existing file, expected a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag}: cannot create {path!r}: {existing!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write into {existing!r} (permission denied)")


def writable_file(flag, path, extension):
    """`path` ends in `extension`, is not a folder, and its folder is writable."""
    if not path.endswith(extension) or len(os.path.basename(path)) <= len(extension):
        raise UsageError(f"{flag} must name a {extension} file, got {path!r}")
    if os.path.isdir(path):
        raise UsageError(f"{flag}: {path!r} is an existing folder, expected a {extension} file")
    writable_folder(flag, os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag}: {path!r} exists and cannot be overwritten (permission denied)")


def load_checkpoint(flag, path):
    """(model, state) of the training checkpoint at `path`; a missing, foreign or corrupt file is a UsageError."""
    if os.path.isdir(path):
        hint = os.path.join(path, Trainer.CHECKPOINT)
        raise UsageError(f"{flag}: {path!r} is a folder, expected a checkpoint file"
                         + (f" (did you mean {hint!r}?)" if os.path.isfile(hint) else ""))
    if not os.path.isfile(path):
        raise UsageError(f"{flag}: {path!r} does not exist")
    try:
        return models.load(path)
    except (checkpoint.CheckpointError, KeyError, ValueError, TypeError) as e:  # not a minidiff checkpoint
        raise UsageError(f"{flag}: {path!r} is not a checkpoint minidiff can load ({e})") from None


def load_classifier(args, dataset):
    """The classifier at --classifier, which must have been trained on `dataset`, the images its samples are scored
    against: features learnt on other images give no meaningful FD (and images of another size fail mid-run)."""
    classifier, state = load_checkpoint("--classifier", args.classifier)
    if classifier.name != "classifier":
        raise UsageError(f"--classifier: {args.classifier!r} holds a {classifier.name} model, expected a "
                         "classifier (python -m minidiff train classifier)")
    trained_on = models.trained_on(state)
    if trained_on != dataset:
        raise UsageError(f"--classifier: {args.classifier!r} was trained on {trained_on!r}, but the samples are "
                         f"scored against {dataset!r} images (python -m minidiff train classifier --dataset {dataset})")
    return classifier


def parse_pairs(flag, items):
    """{key: JSON value (or the string itself)} from KEY=VALUE items."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def given(args, dest):
    """Whether the user typed flag `dest` (flags that matter only when given default to None / [] / False)."""
    value = getattr(args, dest, None)
    return value is not None and value is not False and value != []


def check_applies(table, args, model, command):
    """Each flag of `table` that the user gave must apply to `model`: {dest: (test(model), 'for whom')}."""
    for dest, (applies, for_whom) in table.items():
        if given(args, dest) and not applies(model):
            raise UsageError(f"--{dest.replace('_', '-')} is for {for_whom}; {command} got a {model.name} model")


def _samples_by_chain(model):
    """The model samples by a reverse chain of diffusion.SAMPLERS (the DDPM)."""
    return hasattr(model, "schedule") and hasattr(model, "sample_images")


def _class_conditional(model):
    return bool(getattr(model, "num_classes", 0))


def _guided(model):
    """A class-conditional diffusion model: it samples with classifier-free guidance."""
    return _class_conditional(model) and _samples_by_chain(model)


def _can_sample(model):
    return hasattr(model, "sample_images")


# Flags of `train` that only some models take (dest: (test on the built model, who takes it)).
TRAIN_FLAGS = {
    "eval_every": (lambda m: hasattr(m, "evaluate"), "models with held-out metrics"),
    "autoencoder": (lambda m: hasattr(m, "set_latent_scale"), "latent diffusion (ldm)"),
}

# Flags of `sample` and `eval` that only some models take.
SAMPLING_FLAGS = {
    "sampler": (_samples_by_chain, "diffusion models (ddpm)"),
    "steps": (_samples_by_chain, "diffusion models (ddpm)"),
    "sampler_option": (_samples_by_chain, "diffusion models (ddpm)"),
    "eta": (_samples_by_chain, "diffusion models (ddpm) with --sampler ddim"),
    "label": (_class_conditional, "class-conditional models (cvae, ddpm or ldm trained with --class-conditional)"),
    "guidance": (_guided, "class-conditional diffusion models (train ddpm or ldm --class-conditional)"),
}

# Flags of `plot` and the figures they apply to.
PLOT_FLAGS = {"checkpoint": ("checkpoint", "score-field", "guidance-sweep"), "T": ("schedules",),
              "classifier": ("guidance-sweep",),
              "steps": ("recon-vs-latent", "vae-anomaly", "mae-probe"), "calls": ("score-field",)}


def _points(model):
    """The model was trained on a toy point set (B, D), not on images."""
    return bool(getattr(model, "is_points", False))


def dataset_fits(flag, model, dataset):
    """Point models take the point sets (data.POINT_SETS) and image models the images, nothing else."""
    if _points(model) != (dataset in data.POINT_SETS):
        raise UsageError(f"{flag}: {dataset!r} is {'a 2-D point set' if dataset in data.POINT_SETS else 'images'}, "
                         f"but the {model.name} model was trained on {'points' if _points(model) else 'images'}")


def validate_common(args):
    at_least("--seed", args.seed, 0)


def validate_dataset(args):
    if args.data_root is not None:
        if args.dataset not in IDX_DATASETS:
            raise UsageError(f"--data-root is for --dataset mnist or fashion-mnist, not {args.dataset!r}")
        if not os.path.isdir(args.data_root):
            raise UsageError(f"--data-root: {args.data_root!r} is not a folder")
    elif args.dataset in IDX_DATASETS:
        raise UsageError(f"--dataset {args.dataset} needs --data-root DIR (the folder of its four IDX files)")
    model = getattr(args, "model", None)
    if args.dataset in data.POINT_SETS and model is not None and not getattr(models.REGISTRY[model], "TAKES_POINTS",
                                                                              False):
        takes = sorted(name for name, cls in models.REGISTRY.items() if getattr(cls, "TAKES_POINTS", False))
        raise UsageError(f"--dataset {args.dataset} is a 2-D point set; train takes it for {', '.join(takes)}, "
                         f"not {model} (an image model)")


def validate_sampling(args, model, command):
    """The sampling flags fit `model`; the sampler and its options build (so a typo fails before sampling)."""
    if not _can_sample(model):
        samplable = sorted(name for name, cls in models.REGISTRY.items() if hasattr(cls, "sample_images"))
        raise UsageError(f"--checkpoint holds a {model.name} model, which cannot be sampled; {command} takes "
                         f"{', '.join(samplable)}")
    check_applies(SAMPLING_FLAGS, args, model, command)
    options = sampler_options(args)
    if _samples_by_chain(model):
        try:
            make_sampler(args.sampler or "ddpm", **options)
        except (TypeError, ValueError) as e:
            raise UsageError(f"--sampler-option: {e}") from None
        if args.steps is not None and not 1 <= args.steps <= model.T:
            raise UsageError(f"--steps must be in 1..{model.T} (the model's T), got {args.steps}")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    if getattr(args, "label", None) is not None and not 0 <= args.label < model.num_classes:
        raise UsageError(f"--label must be in 0..{model.num_classes - 1}, got {args.label}")


def sampler_options(args):
    """The --sampler-option KEY=VALUE pairs (and --eta where the command has it) as keyword options."""
    options = parse_pairs("--sampler-option", args.sampler_option)
    if getattr(args, "eta", None) is not None:
        if "eta" in options:
            raise UsageError("--eta: eta given twice: use --eta or --sampler-option eta=..., not both")
        options["eta"] = args.eta
    return options


# ---------------------------------------------------------------- train

def new_model(args, dataset, defaults=None):
    """The model `args.model` with its defaults for the dataset (updated by `defaults`) and the --set overrides,
    seeded by --seed."""
    cls = models.REGISTRY[args.model]
    sets = parse_pairs("--set", args.set)
    accepted = [name for name in inspect.signature(cls).parameters if name != "dtype"]
    unknown = [key for key in sets if key not in accepted]
    if unknown:
        raise UsageError(f"--set: {args.model} has no hyperparameter {unknown[0]!r}; it takes {', '.join(accepted)}")
    if args.class_conditional:
        if "num_classes" not in accepted or "num_classes" in sets:
            raise UsageError("--class-conditional: " + (f"{args.model} takes no labels" if "num_classes" not in
                                                          accepted else "give it or --set num_classes, not both"))
        sets["num_classes"] = dataset.num_classes
    hparams = {**cls.default_hparams(dataset), **(defaults or {}), **sets}
    if hasattr(cls, "inapplicable_hparams"):   # hyperparameters of another network than the one this data gets
        wrong = [key for key in cls.inapplicable_hparams(hparams) if key in sets]
        if wrong:
            raise UsageError(f"--set: {wrong[0]!r} does not apply to {args.model}'s {hparams.get('network', 'unet')} "
                             f"network (--dataset {args.dataset})")
    backend.manual_seed(args.seed)
    try:
        return cls(**hparams)
    except (TypeError, ValueError) as e:  # a --set value the model refuses
        raise UsageError(f"--set: {args.model} refuses {sets}: {e}") from None


def train_config(cls, args):
    """The model's default TrainConfig with the command-line overrides."""
    cfg = dict(cls.TRAIN_DEFAULTS, seed=args.seed, progress=not args.no_progress)
    for key in ("steps", "batch_size", "lr", "eval_every", "checkpoint_every", "checkpoint_minutes"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    try:
        return TrainConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def validate_train(args):
    validate_common(args)
    at_least("--steps", args.steps, 1)
    at_least("--batch-size", args.batch_size, 1)
    positive_real("--lr", args.lr)
    at_least("--eval-every", args.eval_every, 0)
    at_least("--checkpoint-every", args.checkpoint_every, 0)
    if not (math.isfinite(args.checkpoint_minutes) and args.checkpoint_minutes >= 0):
        raise UsageError(f"--checkpoint-minutes must be a finite number >= 0, got {args.checkpoint_minutes}")
    validate_dataset(args)
    writable_folder("--out", args.out)
    if args.resume and not os.path.isfile(os.path.join(args.out, Trainer.CHECKPOINT)):
        raise UsageError(f"--resume: {os.path.join(args.out, Trainer.CHECKPOINT)!r} does not exist")
    check_applies(TRAIN_FLAGS, args, models.REGISTRY[args.model], "train")
    if args.model == "ldm" and args.autoencoder is None:
        if args.resume:
            raise UsageError(f"--resume: train ldm resumes the diffusion stage only; pass the first stage with "
                             f"--autoencoder {os.path.join(args.out, 'autoencoder', Trainer.CHECKPOINT)} and "
                             "--steps counting diffusion steps alone")
        at_least("--steps", args.steps, 2)   # one autoencoder step and one diffusion step at least


def load_autoencoder(args, dataset):
    """The KL autoencoder of --autoencoder (a klae checkpoint, or an ldm's first stage), or None."""
    if args.autoencoder is None:
        return None
    model, _ = load_checkpoint("--autoencoder", args.autoencoder)
    autoencoder = model.autoencoder if model.name == "ldm" else model
    if autoencoder.name != "klae":
        raise UsageError(f"--autoencoder: {args.autoencoder!r} holds a {model.name} model, expected a klae (train "
                         "klae) or an ldm checkpoint")
    if autoencoder.image_shape != dataset.image_shape:
        raise UsageError(f"--autoencoder: it encodes images of shape {autoencoder.image_shape}, --dataset "
                         f"{args.dataset} has {dataset.image_shape}")
    return autoencoder


def latent_first_stage(args, model, dataset, config, autoencoder):
    """ldm: (the diffusion stage's config, the scaled codes of the training set), minidiff.latent.first_stage."""
    from minidiff import latent
    try:
        return latent.first_stage(model, dataset, config, autoencoder, args.out, log=_write)
    except ValueError as e:   # a --set that contradicts the given autoencoder
        raise UsageError(f"--autoencoder: {e}; drop the --set or train a new first stage") from None


def cmd_train(args):
    args.out = args.out or os.path.join("runs", args.model)
    validate_train(args)
    dataset = data.load_dataset(args.dataset, args.data_root, seed=0)
    autoencoder = load_autoencoder(args, dataset)   # ldm: a trained first stage, whose hparams the model takes
    model = new_model(args, dataset, autoencoder and models.REGISTRY[args.model].hparams_of(autoencoder))
    config = train_config(type(model), args)
    x_train = dataset.x_train
    if hasattr(model, "set_latent_scale"):   # latent diffusion: the autoencoder first, then its codes
        config, x_train = latent_first_stage(args, model, dataset, config, autoencoder)
    trainer = Trainer(model, config, x_train, dataset.y_train, dataset.x_test, dataset.y_test,
                      out_dir=args.out, meta={"dataset": args.dataset})
    if args.resume:
        try:
            trainer.resume()
        except checkpoint.CheckpointError as e:  # another model, other hyperparameters, or a corrupt file
            raise UsageError(f"--resume: {e}") from None
        if trainer.step >= config.steps:
            raise UsageError(f"--steps {config.steps}: {trainer.checkpoint_path()!r} is already at step "
                             f"{trainer.step}; pass a larger --steps to train on")
        _write(f"resumed {trainer.checkpoint_path()} at step {trainer.step}")
    started = time.time()
    with StopOnSignal(trainer, args):
        trainer.fit()
    seconds = time.time() - started
    _write(f"trained {args.model} for {trainer.step} steps in {seconds:.0f} s; checkpoint {trainer.last_checkpoint}")
    _write(f"drawing {args.model}'s figures into {args.out}/", file=sys.stderr)
    with trainer.averaged_weights():
        figures = model.figures(args.out, dataset, trainer, backend.default_rng(seed=args.seed),
                                **progress_option(model.figures, not args.no_progress))
    metrics = run_metrics(trainer, args.dataset, seconds, figures)
    if hasattr(model, "report"):
        with trainer.averaged_weights():
            metrics.update(model.report(dataset))
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("figures", "evals", "hparams")}, indent=2))
    print(f"wrote {os.path.join(args.out, 'metrics.json')} and {_count(len(figures), 'figure')} in {args.out}/")
    return 0


def resume_command(args):
    """The command line that continues this run: the same arguments with --resume."""
    argv = args.argv + ([] if args.resume else ["--resume"])
    return " ".join(["python -m minidiff", *map(shlex.quote, argv)])


class StopOnSignal:
    """While training: the first SIGINT or SIGTERM asks the trainer to stop after the step in progress (it
    saves, then fit() raises TrainingInterrupted); a second one aborts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer, args):
        self.trainer, self.args, self.previous = trainer, args, {}

    def handle(self, signum, frame):
        self.args.last_checkpoint = self.trainer.last_checkpoint
        if self.trainer.stop_reason:
            raise KeyboardInterrupt
        self.trainer.request_stop(signal.Signals(signum).name)
        _write(f"{signal.Signals(signum).name}: finishing step {self.trainer.step + 1}, then saving "
               "(press Ctrl-C again to abort without saving)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread receives signals
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.args.last_checkpoint = self.trainer.last_checkpoint


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


def write_json(path, value):
    checkpoint.atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode("utf-8"))


def _count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------- sample / eval / plot

def draw_samples(args, model, n, label):
    """n samples of `model` as the flags ask, with a line saying what is drawn and a bar over the steps."""
    chain = _samples_by_chain(model)
    _write(f"sampling {_count(n, 'image')} from {args.checkpoint}" + (
        f" with the {args.sampler or 'ddpm'} sampler on {args.steps or model.T} steps" if chain else ""),
        file=sys.stderr)
    options = {**sampler_options(args), **progress_option(model.sample_images, not args.no_progress),
               **({"guidance": args.guidance} if args.guidance is not None else {})}
    return model.sample_images(n, backend.default_rng(seed=args.seed), sampler=args.sampler or "ddpm",
                               steps=args.steps, label=label, **options)


def validate_sample(args):
    validate_common(args)
    at_least("--n", args.n, 1)
    writable_file("--out", args.out, ".npy")
    model, state = load_checkpoint("--checkpoint", args.checkpoint)
    validate_sampling(args, model, "sample")
    return model, state


def cmd_sample(args):
    model, state = validate_sample(args)
    images = draw_samples(args, model, args.n, args.label)
    buffer = io.BytesIO()
    np.save(buffer, images)
    checkpoint.atomic_write_bytes(args.out, buffer.getvalue())
    title = f"{model.name} samples" + (
        f" ({args.sampler or 'ddpm'}, {args.steps or 'all'} steps)" if _samples_by_chain(model) else "")
    png = (plots.save_point_clouds({title: images}, args.out[:-4] + ".png") if _points(model)
           else plots.save_sample_grid(images, args.out[:-4] + ".png", title=title))
    print(f"wrote {args.out} {images.shape} in [{images.min():.2f}, {images.max():.2f}] and {png}")
    return 0


def validate_eval(args):
    validate_common(args)
    at_least("--n", args.n, 1)
    if args.out is not None:
        writable_file("--out", args.out, ".json")
    model, state = load_checkpoint("--checkpoint", args.checkpoint)
    if not hasattr(model, "evaluate"):
        raise UsageError(f"--checkpoint holds a {model.name} model, which has no held-out metrics")
    args.dataset = args.dataset or models.trained_on(state)
    validate_dataset(args)
    dataset_fits("--dataset", model, args.dataset)
    classifier = None
    if args.classifier is not None:
        if _points(model):
            raise UsageError("--classifier scores images; the checkpoint's model was trained on points")
        classifier = load_classifier(args, args.dataset)
        validate_sampling(args, model, "eval --classifier")
    else:
        for dest in SAMPLING_FLAGS:
            if given(args, dest):
                raise UsageError(f"--{dest.replace('_', '-')}: eval samples only with --classifier, which is not given")
    return model, state, classifier


def cmd_eval(args):
    from minidiff import quality
    model, state, classifier = validate_eval(args)
    dataset = data.load_dataset(args.dataset, args.data_root, seed=0)
    for key, value in (("image_shape", list(dataset.image_shape)), ("levels", dataset.levels)):
        if key in model.hparams and list(np.atleast_1d(model.hparams[key])) != list(np.atleast_1d(value)):
            raise UsageError(f"--dataset {args.dataset}: its {key} is {value}, but the checkpoint's model was "
                             f"built for {model.hparams[key]}")
    result = {"model": model.name, "checkpoint": args.checkpoint, "step": state["step"]}
    model.eval()
    _write(f"held-out metrics of {args.checkpoint} on the {args.dataset} test split", file=sys.stderr)
    with no_grad():
        result.update(model.evaluate(backend.xp().asarray(dataset.x_test), backend.xp().asarray(dataset.y_test),
                                     backend.default_rng(seed=(args.seed, 2 ** 31)),
                                     **progress_option(model.evaluate, not args.no_progress)))
    if classifier is not None:
        labels = np.arange(args.n) % dataset.num_classes
        started = time.time()
        samples = draw_samples(args, model, args.n, labels if _class_conditional(model) else None)
        result["sampling_seconds"] = round(time.time() - started, 1)
        if _samples_by_chain(model):                  # which sampler drew the scored samples
            result["sampler"] = {"name": args.sampler or "ddpm", "steps": args.steps or model.T,
                                 "options": sampler_options(args)}
        requested = labels if _class_conditional(model) else None
        result["quality"] = quality.sample_quality(classifier, samples, dataset.x_test, requested)
        result["quality"]["reference_frechet_train_vs_test"] = quality.reference_distance(
            classifier, dataset.x_train, dataset.x_test, args.n, seed=args.seed)
        result["quality"]["frechet_ratio"] = (result["quality"]["frechet_distance"]
                                              / result["quality"]["reference_frechet_train_vs_test"])
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


def validate_plot(args):
    validate_common(args)
    for dest, figures in PLOT_FLAGS.items():
        if given(args, dest) and args.what not in figures:
            raise UsageError(f"--{dest} is for plot {' or '.join(figures)}, not plot {args.what}")
    at_least("--T", args.T, 1)
    at_least("--steps", args.steps, 1)
    writable_folder("--out", args.out)
    for calls in args.calls or ():
        at_least("--calls", calls, toy2d.MIN_CALLS)   # two Langevin levels and the denoising call
    if args.what in ("checkpoint", "score-field", "guidance-sweep"):
        if args.checkpoint is None:
            raise UsageError(f"--checkpoint: plot {args.what} needs --checkpoint PATH")
        model, state = load_checkpoint("--checkpoint", args.checkpoint)
        if args.what == "guidance-sweep":
            validate_guidance_sweep(args, model, state)
        if args.what == "score-field" and not (_points(model) and model.image_shape == (2,)):
            raise UsageError(f"--checkpoint: plot score-field takes a ddpm trained on a 2-D point set (train ddpm "
                             f"--dataset two-moons), got a {model.name} model of data shape "
                             f"{getattr(model, 'image_shape', None)}")
        return model, state
    return None, None


def validate_guidance_sweep(args, model, state):
    if not _guided(model):
        raise UsageError(f"--checkpoint: plot guidance-sweep takes a class-conditional ddpm (train ddpm "
                         f"--class-conditional), got a {model.name} model")
    if args.classifier is None:
        raise UsageError("--classifier: plot guidance-sweep needs the scoring classifier (train classifier)")
    args.classifier_model = load_classifier(args, models.trained_on(state))


def plot_guidance_sweep(args, model, state):
    """The requested-label accuracy, label entropies and FD ratio of samples at s in GUIDANCE_SCALES."""
    from minidiff import experiments
    dataset = data.load_dataset(models.trained_on(state), None, seed=0)
    return experiments.guidance_sweep_report(args.out, model, args.classifier_model, dataset, seed=args.seed,
                                             progress=not args.no_progress)


def plot_checkpoint(args, model, state):
    dataset = data.load_dataset(models.trained_on(state), None, seed=0)
    _write(f"drawing the figures of {args.checkpoint} into {args.out}/", file=sys.stderr)
    return model.figures(args.out, dataset, None, backend.default_rng(seed=args.seed),
                         **progress_option(model.figures, not args.no_progress))


def plot_score_field(args, model, state):
    """Data, the score arrows, every sampler at the first --calls, and the MMD at each (score_field.json)."""
    dataset = data.load_dataset(models.trained_on(state, "two-moons"), None, seed=0)
    calls = args.calls or [100]
    return toy2d.score_field_figure(model, dataset, args.out, calls=calls[0], budgets=calls, seed=args.seed)


def plot_schedules(args, model, state):
    """Every registered schedule that exists at --T."""
    return [plots.save_schedule_curves(schedules_at(args.T or 200), os.path.join(args.out, "schedules.png"))]


def plot_recon_vs_latent(args, model, state):
    from minidiff import experiments
    return [experiments.recon_vs_latent_figure(os.path.join(args.out, "recon_vs_latent.png"), steps=args.steps or 600,
                                               seed=args.seed, progress=not args.no_progress)]


def plot_vae_anomaly(args, model, state):
    from minidiff import experiments
    return [experiments.vae_anomaly_figure(os.path.join(args.out, "vae_anomaly.png"), steps=args.steps or 1500,
                                           seed=args.seed, progress=not args.no_progress)]


def plot_mae_probe(args, model, state):
    from minidiff import experiments
    return experiments.mae_linear_probe_report(args.out, steps=args.steps or 1500, seed=args.seed,
                                               progress=not args.no_progress)


PLOTS = {"checkpoint": plot_checkpoint, "schedules": plot_schedules, "recon-vs-latent": plot_recon_vs_latent,
         "vae-anomaly": plot_vae_anomaly, "mae-probe": plot_mae_probe, "score-field": plot_score_field,
         "guidance-sweep": plot_guidance_sweep}


def cmd_plot(args):
    model, state = validate_plot(args)
    os.makedirs(args.out, exist_ok=True)
    for path in PLOTS[args.what](args, model, state):
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- export / import (diffusers)

def cmd_export(args):
    from minidiff.interop import diffusers
    writable_folder("--out", args.out)
    model, _ = load_checkpoint("--checkpoint", args.checkpoint)
    if model.name != "ddpm" or _points(model):
        raise UsageError(f"--checkpoint: export --format diffusers takes an image ddpm checkpoint, got a "
                         f"{model.name!r} model" + (" of points (an MLP, no UNet2DModel)" if _points(model) else ""))
    print(f"wrote {diffusers.export_pipeline(model, args.out)} (DDPMPipeline.from_pretrained opens it)")
    return 0


def cmd_import(args):
    from minidiff.interop import diffusers
    if not os.path.isdir(args.source):
        raise UsageError(f"--from: {args.source!r} is not a folder (expected a diffusers pipeline or UNet2DModel)")
    writable_file("--out", args.out, ".safetensors")
    try:
        model = diffusers.import_pipeline(args.source)
    except (ValueError, KeyError) as e:  # a config minidiff cannot represent, named by the importer
        raise UsageError(f"--from: {args.source!r}: {e}") from None
    checkpoint.save_checkpoint(args.out, model.state_dict(), {"model": model.name, "hparams": model.hparams,
                                                              "step": 0, "imported_from": os.path.abspath(args.source)})
    print(f"wrote {args.out}: a ddpm checkpoint ({model.hparams['schedule']} schedule, T={model.T}) for sample / eval")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "plot": cmd_plot, "export": cmd_export,
            "import": cmd_import}
