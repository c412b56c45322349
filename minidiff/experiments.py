"""Studies that train several models and compare them; they sit above models and train in the
import order (models never import the trainer).

    recon_vs_latent   test reconstruction error against latent size d for PCA, the MLP AE and the
                      conv VAE on the digits (docs/training.md §2)
    dae_score_trend   the DAE's score estimate (r(x) - x)/sigma^2 against the data score as sigma
                      shrinks, closed-form and trained, on 2-D Gaussian data (docs/dae.md §3)
    vae_anomaly       a VAE trained on digits 0-8 scores unseen 9s and drawn shapes by -ELBO and
                      -L_K; the AUROC of each score (docs/anomaly.md §3)
"""
import json
import os
import sys

import numpy as np

from minidiff import anomaly, data, plots
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import default_rng, manual_seed, xp
from minidiff.models import dae
from minidiff.models.ae import AE
from minidiff.models.pca import PCA
from minidiff.models.vae import VAE
from minidiff.train import TrainConfig, Trainer


def recon_vs_latent(sizes=(2, 4, 8, 16, 32), steps=600, seed=0, progress=False):
    """Test MSE per pixel against latent size d for PCA, the MLP AE and the VAE (decoded posterior mean);
    with `progress`, a bar over the models and a line on stderr naming each model and latent size."""
    from tqdm.auto import tqdm
    ds = data.digits()
    results = {"PCA": [], "AE (MLP)": [], "VAE (conv)": []}
    bar = tqdm(total=2 * len(sizes), disable=not progress, desc="recon-vs-latent", unit="model", dynamic_ncols=True)
    for d in sizes:
        results["PCA"].append(PCA(d).fit(ds.x_train).reconstruction_mse(ds.x_test))
        for name, cls in (("AE (MLP)", AE), ("VAE (conv)", VAE)):
            if progress:
                bar.write(f"recon-vs-latent: training the {name} with latent size d = {d} for {steps} steps",
                          file=sys.stderr)
            bar.set_postfix_str(f"{name}, d={d}")
            manual_seed(seed)
            model = cls(ds.image_shape, latent_dim=d)
            config = TrainConfig(**{**cls.TRAIN_DEFAULTS, "steps": steps, "seed": seed, "progress": progress,
                                    "checkpoint_every": 0, "log_every": steps})
            trainer = Trainer(model, config, ds.x_train, ds.y_train).fit()
            with trainer.averaged_weights(), no_grad():
                model.eval()
                x = xp().asarray(ds.x_test)
                x_hat = model(Tensor(x)) if name.startswith("AE") else model.image_mean(
                    model.decode(model.posterior(Tensor(x)).mean))
                results[name].append(float(((x_hat.numpy() - ds.x_test) ** 2).mean()))
            bar.update(1)
    bar.close()
    return {name: (list(sizes), errors) for name, errors in results.items()}


def recon_vs_latent_figure(path, sizes=(2, 4, 8, 16, 32), steps=600, seed=0, progress=False):
    """The recon-error-vs-latent-size plot (PCA, AE, VAE on the digits test split) and its numbers
    as JSON beside it (same name, .json); returns the figure's path."""
    results = recon_vs_latent(sizes, steps, seed, progress)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({name: dict(zip(map(str, s), e)) for name, (s, e) in results.items()}, f, indent=2)
    return plots.save_recon_vs_latent(results, path)


def dae_score_trend(sigmas=(1.0, 0.5, 0.25, 0.1), steps=800, n_train=4096, seed=0):
    """For each σ: the relative error of the DAE score (r(x) − x)/σ² against ∇ log p (docs/dae.md (DAE3))
    on 2-D Gaussian data N(μ, Σ), for the closed-form r* and for an MLP DAE trained on n_train samples.

    Errors are mean ‖ŝ − s‖ / mean ‖s‖ over 500 points x ~ p_σ (where the corrupted inputs lie), against the
    data score s = ∇ log p and against the smoothed score ∇ log p_σ. Returns {σ: {name: error}}.
    """
    rotation = np.array([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]])
    mean, cov = np.array([0.3, -0.2]), (rotation * np.array([1.0, 0.15])) @ rotation.T
    x_train = np.random.default_rng(seed).multivariate_normal(mean, cov, n_train).astype(np.float32)
    rel = lambda estimate, truth: float(np.linalg.norm(estimate - truth, axis=1).mean()  # noqa: E731
                                        / np.linalg.norm(truth, axis=1).mean())
    results = {}
    for sigma in sigmas:
        manual_seed(seed)
        model = dae.DAE(image_shape=(2,), latent_dim=2, hidden=64, noise_std=sigma, output="linear")
        config = TrainConfig(steps=steps, batch_size=256, lr=1e-2, warmup_steps=20, ema_decay=0.99, seed=seed,
                             progress=False, checkpoint_every=0, log_every=10 ** 9)
        trainer = Trainer(model, config, x_train, np.zeros(n_train, np.int64)).fit()
        smoothed = cov + sigma ** 2 * np.eye(2)
        x = (mean + np.random.default_rng(seed + 1).multivariate_normal(np.zeros(2), smoothed, 500)).astype(np.float32)
        data_score, smoothed_score = dae.gaussian_score(mean, cov)(x), dae.gaussian_score(mean, smoothed)(x)
        optimal = dae.dae_score(dae.gaussian_optimal_denoiser(mean, cov, sigma), x, sigma)
        with trainer.averaged_weights():
            learned = dae.dae_score(model.reconstruct, x, sigma)
        results[sigma] = {"optimal_vs_data_score": rel(optimal, data_score),
                          "trained_vs_data_score": rel(learned, data_score),
                          "trained_vs_smoothed_score": rel(learned, smoothed_score)}
    return results


def vae_anomaly(steps=1500, K=50, held_out=9, n_shapes=400, seed=0, progress=False):
    """Train the VAE on the training digits other than `held_out`, then score (docs/anomaly.md (N1)-(N3)):
    normal = the test digits other than `held_out`; anomalies = every `held_out` digit (train and test
    split, none seen in training) and `n_shapes` drawn shapes of the digits' size. Returns (report, scores)
    with scores[group] = {"elbo": (N,), "iw": (N,)} in nats per image."""
    ds = data.digits()
    keep = ds.y_train != held_out
    manual_seed(seed)
    model = VAE(ds.image_shape)
    config = TrainConfig(**{**VAE.TRAIN_DEFAULTS, "steps": steps, "seed": seed, "progress": progress,
                            "checkpoint_every": 0, "eval_every": 0, "log_every": max(steps, 1)})
    trainer = Trainer(model, config, ds.x_train[keep], ds.y_train[keep]).fit()
    groups = {"normal": ds.x_test[ds.y_test != held_out],
              f"digit {held_out}": np.concatenate([ds.x_train[~keep], ds.x_test[ds.y_test == held_out]]),
              "shapes": _all_images(data.shapes(n_shapes, size=ds.image_shape[-1], seed=seed))}
    with trainer.averaged_weights():
        model.eval()
        scores = {name: anomaly.anomaly_scores(model, x, default_rng(seed=(seed, i)), K)
                  for i, (name, x) in enumerate(groups.items())}
    report = {"steps": steps, "K": K, "held_out": held_out, "counts": {n: len(x) for n, x in groups.items()},
              "mean_score_nats": {n: {s: float(v.mean()) for s, v in sc.items()} for n, sc in scores.items()},
              "auroc": {name: {s: anomaly.auroc(scores["normal"][s], scores[name][s]) for s in ("elbo", "iw")}
                        for name in groups if name != "normal"}}
    return report, scores


def _all_images(dataset):
    return np.concatenate([dataset.x_train, dataset.x_test])


def vae_anomaly_figure(path, steps=1500, K=50, seed=0, progress=False):
    """Histograms of s_ELBO for the normal digits, the held-out 9s and the shapes; the report with the
    AUROCs as JSON beside the figure (same name, .json). Returns the figure's path."""
    report, scores = vae_anomaly(steps=steps, K=K, seed=seed, progress=progress)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(report, f, indent=2)
    auc = report["auroc"]
    title = "VAE trained on 0-8, AUROC by -ELBO / -L_K:\n" + ", ".join(
        f"{n} {a['elbo']:.3f} / {a['iw']:.3f}" for n, a in auc.items())
    return plots.save_score_histograms({n: s["elbo"] for n, s in scores.items()}, path,
                                       xlabel="-ELBO (nats per image)", title=title)
