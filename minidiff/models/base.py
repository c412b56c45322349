"""The model registry and the parts every trained model shares (docs/training.md §3)."""
import os

import numpy as np

from minidiff import plots
from minidiff.backend import to_numpy

REGISTRY = {}


def register(cls):
    """Class decorator: make a model buildable and trainable by its `name` (checkpoints, `train <name>`).

    REGISTRY is the one list of models: the CLI's `train` choices and the tests read it.
    """
    if REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"model name {cls.name!r} is already registered to {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls


def build(name, hparams):
    """A model from its registry name and the hparams stored in its checkpoint."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name](**hparams)


def smooth(values, window):
    """Running mean over `window` steps (shorter at the start), for loss curves."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    k = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - k]) / k


def loss_figure(trainer, out, ylabel="training loss", logy=True):
    """The training loss (raw and smoothed over ~2% of the run) against the step."""
    steps, loss = trainer.history["step"], trainer.history["loss"]
    window = max(1, len(loss) // 50)
    return plots.save_curves({"loss": (steps, loss), f"running mean ({window} steps)": (steps, smooth(loss, window))},
                             os.path.join(out, "loss.png"), ylabel=ylabel, logy=logy)


def as_images(x):
    """Samples as a host array in [-1, 1] (a model's last mean step can overshoot slightly)."""
    return np.clip(to_numpy(x), -1.0, 1.0).astype(np.float32)
