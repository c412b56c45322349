"""Toy 2-D diffusion: the learned score field, every sampler side by side, and their sample quality at equal
numbers of network calls (docs/score.md §4). Used by `python -m minidiff plot score-field --checkpoint ...`.

Quality is the squared maximum mean discrepancy between samples x and held-out data y,
    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y),   k(a, b) = mean_h exp(-|a - b|^2 / (2 h^2))      eq. (S9)
estimated without bias (the x-x and y-y means leave out the diagonal i = j), h in BANDWIDTHS: 0 in
expectation when x and y come from one distribution, so it can come out slightly negative. The yardstick
is the same estimate for n training points (a sampler that draws the data itself).
"""
import json
import os

import numpy as np

from minidiff import checkpoint, checks, diffusion, plots
from minidiff.backend import default_rng, to_numpy

BANDWIDTHS = (0.05, 0.1, 0.2, 0.5)


def _kernel_mean(a, b, bandwidths, exclude_diagonal):
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
    k = np.mean([np.exp(-sq / (2.0 * h * h)) for h in bandwidths], axis=0)
    if exclude_diagonal:
        n = len(a)
        return (k.sum() - np.trace(k)) / (n * (n - 1))
    return k.mean()


def mmd2(x, y, bandwidths=BANDWIDTHS):
    """The unbiased estimate of MMD^2 between samples x (N, D) and y (M, D), eq. (S9). 0 in expectation iff equal."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    checks.shape("x", x, (None, None), "mmd2")
    checks.shape("y", y, (None, x.shape[1]), "mmd2", because=" (points of x's dimension)")
    if min(len(x), len(y)) < 2:
        raise ValueError(f"mmd2: x and y need at least 2 points each, got {len(x)} and {len(y)}")
    return float(_kernel_mean(x, x, bandwidths, True) + _kernel_mean(y, y, bandwidths, True)
                 - 2.0 * _kernel_mean(x, y, bandwidths, False))


MIN_CALLS = 7   # two levels (a chain's K >= 2) of Langevin: 2 x 3 inner steps and the final denoising call


def samplers_at(calls, T):
    """{label: (sampler name, steps K, options)} spending at most `calls` network calls each (K <= T):
    K = calls for DDPM, DDIM and the SDE (one call a step), 3K + 1 for Langevin, 2K - 1 for Heun."""
    calls = checks.integer("calls", calls, minimum=MIN_CALLS, where="samplers_at")
    return {"DDPM": ("ddpm", min(calls, T), {}),
            "DDIM": ("ddim", min(calls, T), {}),
            "Langevin (3 per level)": ("langevin", min((calls - 1) // 3, T), {"n_inner": 3}),
            "reverse SDE (EM)": ("sde", min(calls, T), {}),
            "ODE (Heun)": ("ode", min((calls + 1) // 2, T), {"solver": "heun"})}


def draw_all(model, calls, n, seed):
    """{label: (samples (n, 2), network calls)} for every sampler of `samplers_at(calls)`, one seed each."""
    out = {}
    for label, (name, steps, options) in samplers_at(calls, model.T).items():
        spent = diffusion.make_sampler(name, **options).network_calls(steps)
        out[label] = (to_numpy(model.sample(n, default_rng(seed), sampler=name, steps=steps, **options)), spent)
    return out


def sampler_quality(model, dataset, budgets=(20, 50, 100, 200), n=2000, seed=0):
    """{"budgets": {budget: {label: {"calls": c, "mmd2": ...}}}} against dataset.x_test, and the yardstick
    "reference_mmd2": n training points against the same test points."""
    x_test = np.asarray(dataset.x_test, dtype=np.float64)
    result = {"n_samples": n, "n_test": len(x_test), "reference_mmd2": mmd2(dataset.x_train[:n], x_test),
              "budgets": {}}
    for calls in budgets:
        drawn = draw_all(model, calls, n, seed)
        result["budgets"][str(calls)] = {label: {"calls": spent, "mmd2": mmd2(x, x_test)}
                                         for label, (x, spent) in drawn.items()}
    return result


def quality_trend(quality):
    """{label: ([calls spent], [MMD^2])} over the budgets of a `sampler_quality` result, smallest budget first."""
    budgets = sorted(quality["budgets"], key=int)
    labels = quality["budgets"][budgets[0]]
    return {label: ([quality["budgets"][b][label]["calls"] for b in budgets],
                    [quality["budgets"][b][label]["mmd2"] for b in budgets]) for label in labels}


def score_field_figure(model, dataset, out, calls=100, n=2000, t=None, seed=0, budgets=None):
    """score_field.png (data; arrows (1 - alpha_bar_t) s_theta = sqrt(alpha_bar_t) x0_hat - x on a grid at step t,
    default T/20, the pull towards the denoised point; samples of every sampler at `calls` network calls) and
    score_field.json (`sampler_quality` at each of `budgets`, default [calls]); with two budgets or more,
    score_field_trend.png (each sampler's MMD^2 against the network calls it spent, and the yardstick)."""
    if not getattr(model, "is_points", False) or model.image_shape != (2,):
        raise ValueError("plot score-field needs a DDPM trained on a 2-D point set (train ddpm --dataset two-moons)")
    model.eval()
    t = max(1, model.T // 20) if t is None else t
    x_test = np.asarray(dataset.x_test, dtype=np.float64)
    (x_lo, x_hi), (y_lo, y_hi) = plots.point_limits(x_test, pad=0.6)
    gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, 21), np.linspace(y_lo, y_hi, 21))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    ts = np.full(len(grid), t)
    score = diffusion.score_from_eps(model.eps_array(grid, ts), ts, model.schedule)
    arrows = (1.0 - model.schedule.alpha_bars[t]) * score
    drawn = draw_all(model, calls, n, seed)
    samples = {f"{label}, {spent} calls": x for label, (x, spent) in drawn.items()}
    os.makedirs(out, exist_ok=True)
    figure = plots.save_score_field(x_test, grid, arrows, samples, os.path.join(out, "score_field.png"),
                                    arrow_title=f"(1 - alpha_bar_t) s_theta, t = {t}")
    quality = sampler_quality(model, dataset, budgets or (calls,), n, seed)
    path = os.path.join(out, "score_field.json")
    checkpoint.atomic_write_bytes(path, (json.dumps(quality, indent=2) + "\n").encode("utf-8"))
    if len(quality["budgets"]) < 2:
        return figure, path
    trend = plots.save_budget_trend(quality_trend(quality), quality["reference_mmd2"],
                                    os.path.join(out, "score_field_trend.png"), ylabel="MMD^2 to the test points",
                                    title=f"{n} samples per sampler against {quality['n_test']} test points")
    return figure, path, trend
