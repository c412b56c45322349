"""Figures as PNG files (matplotlib's Agg canvas; pyplot's global state is never touched).

Sample grids, the forward-noising strip x_0 -> x_T, the reverse trajectory x_T -> x_0, loss and
ELBO curves, VAE latent scatter and decoded 2-D manifold, alpha_bar_t and SNR_t of schedules, and
reconstruction error against latent size, score histograms, sample quality against network calls. Every
function takes NumPy arrays and a path, and returns the path. See docs/training.md §6.
"""
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from minidiff.backend import to_numpy


def _figure(width, height):
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def image_grid(images, nrow=None, pad=1):
    """Tile images (N, C, H, W) in [-1, 1] into one (rows (H+pad) - pad, cols (W+pad) - pad[, C]) array in [0, 1]."""
    images = to_numpy(images).astype(np.float64)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C in (1, 3), got shape {images.shape}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol_rows = math.ceil(n / nrow)
    grid = np.ones((ncol_rows * (h + pad) - pad, nrow * (w + pad) - pad, c))
    for i, img in enumerate(np.clip((images + 1) / 2, 0, 1)):
        r, k = divmod(i, nrow)
        grid[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = img.transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def _show(ax, image):
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_sample_grid(images, path, nrow=None, title=None):
    """A grid of images (N, C, H, W) in [-1, 1]."""
    grid = image_grid(images, nrow)
    fig = _figure(max(2.0, grid.shape[1] / 12), max(2.0, grid.shape[0] / 12) + (0.3 if title else 0))
    ax = fig.add_subplot()
    _show(ax, grid)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_strip(frames, labels, path, title=None):
    """Rows = samples, columns = frames: frames is a list of (N, C, H, W) arrays, one per label.

    Drawn as one tiled image (one imshow), with the labels as column ticks.
    """
    columns = [to_numpy(f) for f in frames]
    n, w = columns[0].shape[0], columns[0].shape[-1]
    stacked = np.stack(columns, axis=1).reshape((-1,) + columns[0].shape[1:])   # row-major: sample, frame
    grid = image_grid(stacked, nrow=len(columns))
    fig = _figure(0.75 * len(columns) + 0.6, 0.75 * n + 0.6)
    ax = fig.add_subplot()
    _show(ax, grid)
    ax.set_xticks([(w + 1) * j + (w - 1) / 2 for j in range(len(columns))])
    ax.set_xticklabels([str(label) for label in labels], fontsize=8)
    ax.xaxis.tick_top()
    if title:
        ax.set_title(title, fontsize=9, pad=22)
    return _save(fig, path)


def save_forward_strip(x0, schedule, path, n_frames=8, seed=0):
    """The forward process q(x_t | x_0) on a few images at evenly spaced t = 0..T (one noise draw)."""
    from minidiff.kernels import q_sample
    x0 = to_numpy(x0).astype(np.float64)
    T = len(schedule.betas) - 1
    ts = np.unique(np.linspace(0, T, n_frames).round().astype(int))
    eps = np.random.default_rng(seed).standard_normal(x0.shape)
    frames = [x0 if t == 0 else q_sample(x0, np.full(len(x0), t), eps, schedule, impl="numpy") for t in ts]
    return save_strip(frames, [f"t={t}" for t in ts], path, title="forward process q(x_t | x_0)")


def save_trajectory(frames, ts, path):
    """The reverse process: frames[k] is x_{ts[k]} (N, C, H, W) along one sampling run."""
    return save_strip(frames, [f"t={t}" for t in ts], path, title="reverse process x_T -> x_0")


def save_curves(curves, path, xlabel="step", ylabel="loss", title=None, logy=False):
    """Line plots of {name: (steps, values)} on one axis."""
    fig = _figure(5, 3.2)
    ax = fig.add_subplot()
    for name, (steps, values) in curves.items():
        if len(steps):
            ax.plot(steps, values, label=name, marker="o" if len(steps) < 30 else None, markersize=3)
    if logy:
        ax.set_yscale("log")
    return _finish_axes(fig, ax, xlabel, ylabel, title, path, legend_size=8)


def save_budget_trend(curves, reference, path, ylabel, title=None, linthresh=1e-4):
    """{name: (network calls, values)} on a log x-axis, the yardstick `reference` as a dashed line. The y-axis is
    symmetric-log (linear within +-linthresh): unbiased estimates such as MMD^2 can come out slightly negative."""
    fig = _figure(5, 3.4)
    ax = fig.add_subplot()
    for name, (calls, values) in curves.items():
        ax.plot(calls, values, label=name, marker="o", markersize=3)
    ax.axhline(reference, color="0.3", linestyle="--", linewidth=1, label="yardstick (data vs data)")
    ax.set_xscale("log")
    ticks = next(iter(curves.values()))[0]                                  # the first curve's calls, plainly
    ax.set_xticks(ticks, [str(c) for c in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("symlog", linthresh=linthresh)
    return _finish_axes(fig, ax, "network calls", ylabel, title, path, legend_size=7)


def _finish_axes(fig, ax, xlabel, ylabel, title, path, legend_size):
    """Label, grid and legend of a one-axis line plot, then save it; the path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def project_2d(z):
    """z (N, d) to (N, 2): itself if d = 2, else the top-2 principal components (SVD of centred z)."""
    z = to_numpy(z).astype(np.float64)
    if z.shape[1] == 2:
        return z
    centred = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T if z.shape[1] > 2 else np.concatenate([centred, np.zeros_like(centred)], 1)


def save_latent_scatter(z, labels, path, title="latent means, coloured by label"):
    """Encoder means z (N, d) as a scatter (PCA to 2-D when d > 2) coloured by class label."""
    p = project_2d(z)
    fig = _figure(4.5, 4)
    ax = fig.add_subplot()
    points = ax.scatter(p[:, 0], p[:, 1], c=to_numpy(labels), cmap="tab10", s=6)
    fig.colorbar(points, ax=ax, ticks=range(10))
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def manifold_grid(n=15, span=0.95):
    """Latent points on an n x n grid of standard-normal quantiles Phi^-1(u), u in [(1-span)/2, (1+span)/2]."""
    from scipy.stats import norm
    u = np.linspace((1 - span) / 2, (1 + span) / 2, n)
    q = norm.ppf(u)
    zy, zx = np.meshgrid(q[::-1], q, indexing="ij")
    return np.stack([zx.ravel(), zy.ravel()], axis=1)  # (n*n, 2), rows top to bottom


def save_manifold(decode, path, n=15):
    """The decoded 2-D latent manifold: decode(z (n*n, 2)) -> images, laid out on the quantile grid."""
    images = to_numpy(decode(manifold_grid(n)))
    return save_sample_grid(images, path, nrow=n, title="decoded latent manifold")


def save_schedule_curves(schedules, path):
    """alpha_bar_t and log SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)) for {name: schedule}, t = 1..T."""
    fig = _figure(8, 3.2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, s in schedules.items():
        alpha_bar = np.asarray(s.alpha_bars)[1:]
        t = np.arange(1, len(alpha_bar) + 1)
        left.plot(t, alpha_bar, label=name)
        right.plot(t, np.log(alpha_bar) - np.log1p(-alpha_bar), label=name)
    left.set(xlabel="t", ylabel="alpha_bar_t")
    right.set(xlabel="t", ylabel="log SNR_t")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(wspace=0.3)  # room for the right panel's y-label between the panels
    return _save(fig, path)


def save_recon_vs_latent(results, path):
    """Test reconstruction MSE against latent size for {model name: (sizes, errors)}."""
    return save_curves(results, path, xlabel="latent size", ylabel="test MSE per pixel",
                       title="reconstruction error vs latent size", logy=True)


def save_score_histograms(groups, path, xlabel="score", title=None):
    """Overlaid normalised histograms of {name: scores (N,)} on shared bins (e.g. anomaly scores per group)."""
    values = {name: np.ravel(to_numpy(v)) for name, v in groups.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=40)
    fig = _figure(5, 3.2)
    ax = fig.add_subplot()
    for name, v in values.items():
        ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5, label=f"{name} ({len(v)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_point_clouds(clouds, path, limits=None):
    """Side-by-side scatters of {title: points (N, 2)} on shared axes."""
    fig = _figure(3.0 * len(clouds), 3.2)
    limits = limits or point_limits(np.concatenate([to_numpy(p) for p in clouds.values()]))
    for i, (title, p) in enumerate(clouds.items()):
        ax = fig.add_subplot(1, len(clouds), i + 1)
        _scatter(ax, to_numpy(p), title, limits)
    return _save(fig, path)


def save_score_field(data, grid, arrows, samples, path, arrow_title="score field"):
    """The data, the arrows `arrows` (M, 2) at `grid` (M, 2), then {title: samples (N, 2)}, on shared axes."""
    data, panels = to_numpy(data), 2 + len(samples)
    cols = math.ceil(panels / 2)
    fig = _figure(3.0 * cols, 6.4)
    limits = point_limits(data, pad=0.6)
    _scatter(fig.add_subplot(2, cols, 1), data, "data", limits)
    ax = fig.add_subplot(2, cols, 2)
    ax.scatter(data[:, 0], data[:, 1], s=1, alpha=0.15, color="0.5")
    ax.quiver(grid[:, 0], grid[:, 1], arrows[:, 0], arrows[:, 1], angles="xy", scale_units="xy", scale=1.0,
              width=0.004, color="C3")
    _style(ax, arrow_title, limits)
    for i, (title, p) in enumerate(samples.items()):
        _scatter(fig.add_subplot(2, cols, 3 + i), to_numpy(p), title, limits)
    return _save(fig, path)


def point_limits(points, pad=0.3):
    """((x_lo, x_hi), (y_lo, y_hi)): the 0.5-99.5 percentile box of 2-D points, widened by `pad`."""
    lo, hi = np.percentile(points, 0.5, axis=0) - pad, np.percentile(points, 99.5, axis=0) + pad
    return (lo[0], hi[0]), (lo[1], hi[1])


def _scatter(ax, p, title, limits):
    ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.4)
    _style(ax, title, limits)


def _style(ax, title, limits):
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def save_guidance_sweep(report, path):
    """A guidance sweep (experiments.guidance_sweep), two panels against s: the requested-label accuracy and the
    confident fraction; the FD ratio and the mean predictive entropy."""
    s = [row["guidance"] for row in report["rows"]]
    fig = _figure(9, 3.4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, name in (("requested_label_accuracy", "requested label drawn"),
                      ("confident_fraction", "confident (p > 0.9)")):
        left.plot(s, [row[key] for row in report["rows"]], marker="o", label=name)
    left.axhline(0.95, color="grey", lw=0.8, ls="--")
    left.set_xlabel("guidance scale s")
    left.set_ylabel("fraction of samples")
    left.legend(fontsize=8)
    right.plot(s, [row["frechet_ratio"] for row in report["rows"]], marker="o", color="C3", label="FD / real")
    right.set_xlabel("guidance scale s")
    right.set_ylabel("FD / FD of real images")
    twin = right.twinx()
    twin.plot(s, [row["mean_predictive_entropy_nats"] for row in report["rows"]], marker="s", color="C2",
              label="predictive entropy")
    twin.set_ylabel("mean predictive entropy (nats)")
    right.legend(handles=right.get_lines() + twin.get_lines(), fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"classifier-free guidance: {report['n']} samples, {report['sampler']} {report['steps']} steps",
                 fontsize=9)
    return _save(fig, path)
