"""One Trainer for every model (docs/training.md §3).

A model is a minidiff.nn.Module with
    loss(batch, rng) -> (loss, metrics)      batch = (x, y) arrays on the backend; loss a scalar Tensor
    evaluate(x, y, rng) -> {name: float}     held-out metrics (optional)
    name, hparams                            how checkpoints rebuild it (minidiff.models.build)
The Trainer runs Adam or AdamW with linear warm-up and cosine decay of the learning rate, global
gradient-norm clipping, an EMA of the weights (evaluation and sampling use the EMA copy), a tqdm bar
showing the loss, held-out evaluation every `eval_every` steps, checkpoints every
`checkpoint_every` steps, every `checkpoint_minutes` of wall time and at the end, and resume.
`request_stop()` (the CLI calls it on SIGINT / SIGTERM) ends fit() after the step in progress: the
state is saved if it is finite, and fit() raises TrainingInterrupted saying where.

Determinism: before step k it calls manual_seed(step_seed(seed, k)); the batch (data.BatchStream),
the loss's noise and every dropout mask are then functions of (seed, k) alone, so a run resumed
from a checkpoint at step k repeats the uninterrupted run bit for bit (on NumPy).
A loss or gradient norm that is NaN or Inf stops training with TrainingDiverged; nothing is
saved after that point, so the last checkpoint on disk is the last good one.
"""
import dataclasses
import inspect
import json
import math
import os
import time

import numpy as np

from minidiff import checkpoint, checks, optim
from minidiff.autograd import no_grad
from minidiff.backend import default_rng, get_backend, manual_seed, to_numpy, xp
from minidiff.data import BatchStream


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or Inf."""


class TrainingInterrupted(Exception):
    """fit() stopped at `step` because request_stop() was called; `checkpoint` holds that step if `saved`,
    else (the state was not finite, or there is no out_dir) it is the last good checkpoint or None."""

    def __init__(self, step, checkpoint, saved, reason):
        self.step, self.checkpoint, self.saved, self.reason = step, checkpoint, saved, reason
        where = (f"saved step {step} to {checkpoint}" if saved else
                 f"step {step} not saved; the last checkpoint is {checkpoint}" if checkpoint else
                 f"step {step} not saved and no checkpoint was written")
        super().__init__(f"training stopped by {reason} at step {step}: {where}")


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adam"          # "adam" | "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1         # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0            # max global gradient norm (0: off)
    ema_decay: float = 0.995          # 0: no EMA; warmed up as min(decay, (1 + k) / (10 + k))
    eval_every: int = 0               # 0: only at the end
    checkpoint_every: int = 500       # 0: only at the end
    checkpoint_minutes: float = 0.0   # also when this much wall time passed since the last save (0: off)
    log_every: int = 0                # print a loss line every N steps (0: ten lines per run)
    seed: int = 0
    progress: bool = True

    divergence_factor: float = 1e3    # a save is refused past this growth of the weights or the loss (§ guard)

    def __post_init__(self):
        """Every field checked before the first step: a wrong value raises here, naming the field."""
        where = "TrainConfig"
        self.steps = checks.integer("steps", self.steps, minimum=1, where=where)
        self.batch_size = checks.integer("batch_size", self.batch_size, minimum=1, where=where)
        self.lr = checks.real("lr", self.lr, above=0.0, where=where)
        checks.one_of("optimizer", self.optimizer, ("adam", "adamw"), where=where)
        self.weight_decay = checks.real("weight_decay", self.weight_decay, minimum=0.0, where=where)
        self.warmup_steps = checks.integer("warmup_steps", self.warmup_steps, minimum=0, where=where)
        self.min_lr_ratio = checks.real("min_lr_ratio", self.min_lr_ratio, minimum=0.0, maximum=1.0, where=where)
        self.grad_clip = checks.real("grad_clip", self.grad_clip, minimum=0.0, where=where)
        self.ema_decay = checks.real("ema_decay", self.ema_decay, minimum=0.0, below=1.0, where=where)
        for name in ("eval_every", "checkpoint_every", "log_every"):
            setattr(self, name, checks.integer(name, getattr(self, name), minimum=0, where=where))
        self.seed = checks.integer("seed", self.seed, minimum=0, where=where)
        self.progress = checks.boolean("progress", self.progress, where=where)
        self.divergence_factor = checks.real("divergence_factor", self.divergence_factor, above=1.0, where=where)
        self.checkpoint_minutes = checks.real("checkpoint_minutes", self.checkpoint_minutes, minimum=0.0,
                                              where=where)


def step_seed(seed, step):
    """The 63-bit seed of training step `step` of a run seeded `seed`."""
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Trainer:
    """Trains `model` on arrays x_train (N, ...) and labels y_train (N,); writes checkpoints to `out_dir`."""

    CHECKPOINT = "model.safetensors"

    def __init__(self, model, config, x_train, y_train, x_eval=None, y_eval=None, out_dir=None, meta=None):
        self.model, self.config, self.out_dir = model, config, out_dir
        self.meta = dict(meta or {})  # JSON-able facts saved with every checkpoint (e.g. the data set)
        self.x_train, self.y_train = np.asarray(x_train), np.asarray(y_train)
        self.x_eval, self.y_eval = x_eval, y_eval
        self.stream = BatchStream(len(self.x_train), config.batch_size, config.seed)
        params = list(model.parameters())
        opt_cls = optim.AdamW if config.optimizer == "adamw" else optim.Adam
        self.optimizer = opt_cls(params, lr=config.lr, weight_decay=config.weight_decay)
        self.lr_schedule = optim.WarmupCosine(config.lr, min(config.warmup_steps, config.steps),
                                              max(config.steps, 1), config.lr * config.min_lr_ratio)
        self.ema = optim.EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        self.history = {"step": [], "loss": [], "lr": [], "grad_norm": []}
        self.evals = []          # [{"step": k, name: value, ...}]
        self.last_checkpoint, self._last_saved_step = None, None
        self._start_rms = _rms(params)   # the divergence guard's reference scale (reset by resume)
        self._saved_at = time.monotonic()   # the wall clock of the time-based checkpoint
        self.stop_reason = None             # set by request_stop(): fit() ends after the step in progress

    # ------------------------------------------------------------ one update
    def batch(self, step):
        idx = self.stream.indices(step)
        return xp().asarray(self.x_train[idx]), xp().asarray(self.y_train[idx])

    def train_step(self):
        """One optimiser update at self.step; returns (loss value, metrics)."""
        k = self.step
        manual_seed(step_seed(self.config.seed, k))
        rng = default_rng()
        self.model.train()
        lr = self.lr_schedule.apply(self.optimizer, k)
        loss, metrics = self.model.loss(self.batch(k), rng)
        value = float(to_numpy(loss.data))
        self._guard("loss", value)
        self.optimizer.zero_grad()
        loss.backward()
        params = self.optimizer.params
        grad_norm = optim.clip_grad_norm(params, self.config.grad_clip) if self.config.grad_clip else \
            optim.clip_grad_norm(params, math.inf)
        self._guard("gradient norm", grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.decay = min(self.config.ema_decay, (1 + k) / (10 + k))
            self.ema.update(self.model)
        self.step = k + 1
        for key, v in (("step", self.step), ("loss", value), ("lr", lr), ("grad_norm", grad_norm), *metrics.items()):
            self.history.setdefault(key, []).append(float(v))
        return value, metrics

    def _guard(self, what, value):
        if not math.isfinite(value):
            self._stop(f"the {what} is {value} at step {self.step}", "nothing was saved after it")

    def _stop(self, reason, saved):
        last = (f"the last good checkpoint is {self.last_checkpoint!r} (step {self._last_saved_step})"
                if self.last_checkpoint else "no checkpoint was written yet")
        raise TrainingDiverged(f"training stopped: {reason} (lr {self.optimizer.lr:.3g}); {saved} and {last}. "
                               "Lower --lr or raise the gradient clipping.")

    def divergence(self):
        """Why the current weights must not be saved, or None (docs/reliability.md, "the save guard").

        Refused: any NaN/Inf among the parameters, the EMA copy or the optimiser state; parameters whose
        RMS exceeds divergence_factor times that of the weights this session started from (floor 1e-3);
        a last loss above L_1 + divergence_factor * max(|L_1|, 1), L_1 the run's first loss.
        """
        groups = {"parameter": self.model.state_dict(), "EMA weight": self.ema.state_dict() if self.ema else {},
                  "optimiser state": self.optimizer.state_dict()}
        for kind, arrays in groups.items():
            for name, a in arrays.items():
                if hasattr(a, "dtype") and not np.isfinite(to_numpy(a)).all():
                    return f"the {kind} {name!r} holds NaN or Inf at step {self.step}"
        factor, rms = self.config.divergence_factor, _rms(self.model.parameters())
        limit = factor * max(self._start_rms, 1e-3)
        if rms > limit:
            return (f"the parameters' RMS is {rms:.3g} at step {self.step}, over {factor:g} x the "
                    f"{self._start_rms:.3g} they started from")
        losses = self.history["loss"]
        if losses and losses[-1] > losses[0] + factor * max(abs(losses[0]), 1.0):
            return (f"the loss is {losses[-1]:.3g} at step {self.step}, diverged from the first loss "
                    f"{losses[0]:.3g} (limit: first + {factor:g} x max(|first|, 1))")
        return None

    # ------------------------------------------------------------ the loop
    def fit(self):
        """Train until config.steps; evaluates and checkpoints on schedule. Returns self.

        Raises TrainingInterrupted after the step in progress once request_stop() was called."""
        cfg = self.config
        self._saved_at = time.monotonic()
        bar = _progress(self.step, cfg.steps, cfg.progress, type(self.model).__name__)
        try:  # the bar is closed before any error is printed, so the message gets a line of its own
            while self.step < cfg.steps:
                value, _ = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                if self.step % (cfg.log_every or max(1, cfg.steps // 10)) == 0:
                    self.log(bar)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps \
                        and self._can_evaluate():
                    bar.write(f"step {self.step:>6}  held-out: " + _format(self.evaluate()))
                if self.stop_reason and self.step < cfg.steps:
                    self._stop_on_request()
                if self.out_dir and self.step < cfg.steps and self._checkpoint_due():
                    self.save()
        finally:
            bar.close()
        if hasattr(self.model, "on_fit_end"):  # e.g. the AE fits a Gaussian to its training codes
            with self.averaged_weights(), no_grad():
                self.model.eval()
                self.model.on_fit_end(self.x_train)
        if self._can_evaluate():
            bar.write(f"step {self.step:>6}  held-out: " + _format(self.evaluate()))
        if self.out_dir:
            self.save()
        return self

    def request_stop(self, reason="a request"):
        """Ask fit() to stop after the step in progress (safe to call from a signal handler)."""
        self.stop_reason = reason

    def _checkpoint_due(self):
        cfg = self.config
        return bool((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or
                    (cfg.checkpoint_minutes and time.monotonic() - self._saved_at >= 60 * cfg.checkpoint_minutes))

    def _stop_on_request(self):
        """Save the state just reached if it is finite (and not saved already), then raise TrainingInterrupted."""
        saved = self.out_dir is not None and self._last_saved_step == self.step
        if self.out_dir is not None and not saved and self._state_is_finite():
            self.save()
            saved = True
        raise TrainingInterrupted(self.step, self.last_checkpoint, saved, self.stop_reason)

    def _state_is_finite(self):
        """No NaN or Inf among the weights, the EMA copy and the optimiser's arrays."""
        groups = (self.model.state_dict(), self.ema.state_dict() if self.ema else {}, self.optimizer.state_dict())
        return all(np.isfinite(to_numpy(a)).all() for g in groups for a in g.values() if hasattr(a, "dtype"))

    def log(self, bar):
        """One line: step, the mean loss since the last line, the learning rate."""
        every = self.config.log_every or max(1, self.config.steps // 10)
        recent = self.history["loss"][-every:]
        bar.write(f"step {self.step:>6}/{self.config.steps}  loss {np.mean(recent):.5f} (mean of last "
                  f"{len(recent)})  lr {self.history['lr'][-1]:.2e}")

    def _can_evaluate(self):
        return self.x_eval is not None and hasattr(self.model, "evaluate")

    def evaluate(self):
        """Held-out metrics with the EMA weights, a fixed eval noise seed; appended to self.evals."""
        if not self._can_evaluate():
            return {}
        with self.averaged_weights(), no_grad():
            self.model.eval()
            result = self.model.evaluate(xp().asarray(self.x_eval), xp().asarray(self.y_eval),
                                         default_rng(seed=(self.config.seed, 2 ** 31)),
                                         **progress_option(self.model.evaluate, self.config.progress))
        result = {"step": self.step, **{k: float(v) for k, v in result.items()}}
        if self.evals and self.evals[-1]["step"] == self.step:
            self.evals[-1] = result
        else:
            self.evals.append(result)
        return result

    def averaged_weights(self):
        """Context manager: the model carries the EMA weights inside, its own weights after."""
        return _SwapWeights(self.model, self.ema)

    # ------------------------------------------------------------ checkpoints
    def checkpoint_path(self):
        if self.out_dir is None:
            raise ValueError("this Trainer has no out_dir to write checkpoints to")
        return os.path.join(self.out_dir, self.CHECKPOINT)

    def state(self):
        return {**self.meta, "model": self.model.name, "hparams": self.model.hparams, "step": self.step,
                "train_config": dataclasses.asdict(self.config), "backend": get_backend(),
                "optimizer": {"step": self.optimizer.step_count, "lr": self.optimizer.lr},
                "ema_num_updates": self.ema.num_updates if self.ema else 0,
                "history": self.history, "evals": self.evals}

    def save(self, path=None):
        """Write the checkpoint, after `divergence()` finds the weights fit to keep; else TrainingDiverged."""
        path = path or self.checkpoint_path()
        reason = self.divergence()
        if reason:
            self._stop(reason, f"{path!r} was not written")
        opt_arrays = {k: v for k, v in self.optimizer.state_dict().items() if k not in ("step", "lr")}
        checkpoint.save_checkpoint(path, self.model.state_dict(), self.state(),
                                   ema=self.ema.state_dict() if self.ema else None, optim=opt_arrays)
        self.last_checkpoint, self._last_saved_step, self._saved_at = path, self.step, time.monotonic()
        return path

    def resume(self, path=None):
        """Restore weights, EMA, optimiser, step, history from a checkpoint of the same model."""
        path = path or self.checkpoint_path()
        groups, state = checkpoint.load_checkpoint(path)
        if state.get("model") != self.model.name or state.get("hparams") != _as_json(self.model.hparams):
            raise checkpoint.CheckpointError(
                f"{path} holds model {state.get('model')!r} with {state.get('hparams')}, not "
                f"{self.model.name!r} with {self.model.hparams}")
        self.model.load_state_dict(groups["params"])
        self.optimizer.load_state_dict({**groups["optim"], **state["optimizer"]})
        if self.ema is not None:
            self.ema.load_state_dict(groups["ema"])
            self.ema.num_updates = state["ema_num_updates"]
        self.step, self.history, self.evals = state["step"], state["history"], state["evals"]
        self.last_checkpoint, self._last_saved_step = path, self.step
        self._start_rms = _rms(self.model.parameters())
        return self


class _SwapWeights:
    """Parameters only are swapped; buffers written inside the block (fitted statistics) stay."""

    def __init__(self, model, ema):
        self.model, self.ema, self.saved = model, ema, None

    def __enter__(self):
        if self.ema is not None:
            self.saved = {name: p.data.copy() for name, p in self.model.named_parameters()}
            self.ema.copy_to(self.model)
        return self.model

    def __exit__(self, *exc):
        if self.saved is not None:
            self.model.load_state_dict(self.saved, strict=False)


def _rms(params):
    """sqrt(mean of theta^2) over every parameter element, in float64."""
    total, count = 0.0, 0
    for p in params:
        total += float((to_numpy(p.data).astype(np.float64) ** 2).sum())
        count += p.data.size
    return math.sqrt(total / max(count, 1))


def progress_option(method, enabled):
    """{"progress": enabled} for a model method with a long loop that can show a bar (it takes `progress`), else {}."""
    return {"progress": enabled} if "progress" in inspect.signature(method).parameters else {}


def _format(metrics):
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "step")


def _as_json(value):
    """value as it reads back from a checkpoint's JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _progress(start, total, enabled, name):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, disable=not enabled, desc=f"train {name}", dynamic_ncols=True,
                mininterval=0.5)
