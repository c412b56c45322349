"""Studies that train several models and compare them; they sit above models and train in the
import order (models never import the trainer).

    recon_vs_latent   test reconstruction error against latent size d for PCA, the MLP AE and the
                      conv VAE on the digits (docs/training.md §2)
    dae_score_trend   the DAE's score estimate (r(x) - x)/sigma^2 against the data score as sigma
                      shrinks, closed-form and trained, on 2-D Gaussian data (docs/dae.md §3)
    vae_anomaly       a VAE trained on digits 0-8 scores unseen 9s and drawn shapes by -ELBO and
                      -L_K; the AUROC of each score (docs/anomaly.md §3)
    mae_linear_probe  the MAE's masked-patch error against two inpainting baselines, and a linear probe
                      of its encoder's features against pixels, PCA and AE codes (docs/mae.md §4)
    guidance_sweep    a class-conditional DDPM sampled at several guidance scales s: the classifier's
                      accuracy on the requested label, the label entropies and the FD ratio per s
                      (docs/guidance_variance.md §1)
    ode_vs_vlb_bits   a trained image DDPM's bits/dim by the probability-flow ODE (dequantised) and by the
                      VLB, on the same test images and the data's grid (docs/sde.md §4)
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
from minidiff.models.mae import MAE, masked_patch_mse, patchify, unpatchify
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


def _fit(model, steps, seed, x, y, progress):
    """Train `model` with its TRAIN_DEFAULTS for `steps` steps, no checkpoints; returns the Trainer."""
    config = TrainConfig(**{**type(model).TRAIN_DEFAULTS, "steps": steps, "seed": seed, "progress": progress,
                            "checkpoint_every": 0, "eval_every": 0, "log_every": max(steps, 1)})
    return Trainer(model, config, x, y).fit()


def vae_anomaly(steps=1500, K=50, held_out=9, n_shapes=400, seed=0, progress=False):
    """Train the VAE on the training digits other than `held_out`, then score (docs/anomaly.md (N1)-(N3)):
    normal = the test digits other than `held_out`; anomalies = every `held_out` digit (train and test
    split, none seen in training) and `n_shapes` drawn shapes of the digits' size. Returns (report, scores)
    with scores[group] = {"elbo": (N,), "iw": (N,)} in nats per image."""
    ds = data.digits()
    keep = ds.y_train != held_out
    manual_seed(seed)
    model = VAE(ds.image_shape)
    trainer = _fit(model, steps, seed, ds.x_train[keep], ds.y_train[keep], progress)
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


def linear_probe_accuracy(train_features, y_train, test_features, y_test):
    """Test accuracy of a multinomial logistic regression on standardised features (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return float(probe.fit(train_features, y_train).score(test_features, y_test))


def gaussian_inpainting_mse(x_train, x_test, mask, patch_size):
    """Masked-patch MSE per pixel of the best linear inpainting: with N(μ, Σ) fitted to the training pixels,
    x̂_m = μ_m + Σ_mv Σ_vv⁻¹ (x_v − μ_v) (the conditional mean) for the masked pixels m of each test image."""
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    mu, cov = flat.mean(axis=0), np.cov(flat, rowvar=False) + 1e-6 * np.eye(flat.shape[1])
    pixel_masked = _pixel_mask(mask, patch_size, x_test.shape[1:])
    errors = []
    for x, m in zip(x_test.reshape(len(x_test), -1).astype(np.float64), pixel_masked):
        v = ~m
        x_hat = mu[m] + cov[np.ix_(m, v)] @ np.linalg.solve(cov[np.ix_(v, v)], x[v] - mu[v])
        errors.append((x_hat - x[m]) ** 2)
    return float(np.concatenate(errors).mean())


def _pixel_mask(mask, patch_size, image_shape):
    """The per-patch mask (B, N) as a boolean per-pixel mask (B, C·H·W) in the images' flat order."""
    per_pixel = np.repeat(np.asarray(mask)[:, :, None], patch_size * patch_size * image_shape[0], axis=2)
    return unpatchify(per_pixel, patch_size, image_shape).reshape(len(mask), -1) == 1.0


def mae_linear_probe(steps=1500, sizes=(16,), seed=0, progress=False):
    """Train the MAE on the digits and report (docs/mae.md §4): its test MSE per pixel on masked and visible
    patches (one random mask per image) beside the mean-image and Gaussian-conditional (R6) inpaintings of the
    same masked pixels; and the linear-probe test accuracy of its features (d = its width) against the raw
    pixels, PCA and the MLP AE with codes of each size in `sizes` and of the MAE's width, and the features of
    the untrained MAE. Every network trains for `steps` steps. Returns (report, (mae, its Trainer))."""
    ds = data.digits()
    manual_seed(seed)
    mae = MAE(ds.image_shape)
    width = mae.hparams["dim"]
    untrained = (mae.features(ds.x_train), mae.features(ds.x_test))
    trainer = _fit(mae, steps, seed, ds.x_train, ds.y_train, progress)
    features = {"pixels": (ds.x_train.reshape(len(ds.x_train), -1), ds.x_test.reshape(len(ds.x_test), -1))}
    for d in sorted(set(sizes) | {width}):
        pca = PCA(d).fit(ds.x_train)
        features[f"PCA (d = {d})"] = (pca.encode(ds.x_train), pca.encode(ds.x_test))
        manual_seed(seed)
        ae = AE(ds.image_shape, latent_dim=d)
        with _fit(ae, steps, seed, ds.x_train, ds.y_train, progress).averaged_weights():
            features[f"AE (MLP, d = {d})"] = (ae.encode(ds.x_train), ae.encode(ds.x_test))
    ids_keep, ids_restore, mask = mae.sample_mask(len(ds.x_test), default_rng(seed=(seed, 1)))
    target = patchify(ds.x_test, mae.patch_size)
    with trainer.averaged_weights(), no_grad():
        mae.eval()
        pred = mae(Tensor(xp().asarray(ds.x_test)), ids_keep, ids_restore).numpy()
        errors = {name: float(masked_patch_mse(pred, target, m)) for name, m in
                  (("MAE, masked patches", mask), ("MAE, visible patches", 1.0 - mask))}
        features[f"MAE encoder (d = {width})"] = (mae.features(ds.x_train), mae.features(ds.x_test))
    features[f"MAE encoder, untrained (d = {width})"] = untrained
    masked_pixels = _pixel_mask(mask, mae.patch_size, mae.image_shape)
    flat_test = ds.x_test.reshape(len(ds.x_test), -1)
    mean_image = ds.x_train.reshape(len(ds.x_train), -1).mean(axis=0)
    report = {"steps": steps, "seed": seed, "hparams": mae.hparams, "masked_fraction": float(mask.mean()),
              "test_mse_per_pixel": {**errors,
                                     "mean training image, masked patches":
                                         float(((flat_test - mean_image)[masked_pixels] ** 2).mean()),
                                     "Gaussian conditional mean, masked patches":
                                         gaussian_inpainting_mse(ds.x_train, ds.x_test, mask, mae.patch_size)},
              "linear_probe_test_accuracy": {name: linear_probe_accuracy(tr, ds.y_train, te, ds.y_test)
                                             for name, (tr, te) in features.items()}}
    return report, (mae, trainer)


def mae_linear_probe_report(out, steps=1500, seed=0, progress=False):
    """mae_linear_probe's report as out/mae_probe.json and the trained MAE's figures in out/; returns the paths."""
    report, (mae, trainer) = mae_linear_probe(steps=steps, seed=seed, progress=progress)
    path = os.path.join(out, "mae_probe.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    with trainer.averaged_weights():
        figures = mae.figures(out, data.digits(), trainer, default_rng(seed=seed))
    return [path] + figures


GUIDANCE_SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0)


def guidance_sweep(model, classifier, dataset, scales=GUIDANCE_SCALES, n=500, sampler="ddim", steps=25, seed=0,
                   progress=False):
    """Sample quality of a class-conditional DDPM at each guidance scale s (eq. G4), labels 0..K-1 in turn.

    Per s: quality.sample_quality with the requested labels (requested_label_accuracy, confident_fraction,
    label_entropy_nats of the predicted-label histogram, frechet_distance), the mean per-sample predictive
    entropy of the classifier (nats; falls as guidance sharpens each sample), frechet_ratio against the
    FD of n real training images, and the sampling time. Every s starts from the same seed (same x_T).
    """
    import time

    from minidiff import quality
    labels = np.arange(n) % dataset.num_classes
    yardstick = quality.reference_distance(classifier, dataset.x_train, dataset.x_test, n, seed=seed)
    rows = []
    for s in scales:
        started = time.time()
        samples = model.sample_images(n, default_rng(seed=seed), sampler=sampler, steps=steps, label=labels,
                                      guidance=s, progress=progress)
        seconds = time.time() - started
        row = {"guidance": s, "sampling_seconds": round(seconds, 1),
               **quality.sample_quality(classifier, samples, dataset.x_test, labels)}
        probs = classifier.predict_proba(samples)
        row["mean_predictive_entropy_nats"] = float(-(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1).mean())
        row["frechet_ratio"] = row["frechet_distance"] / yardstick
        rows.append(row)
        if progress:
            print(f"s = {s:g}: requested label {row['requested_label_accuracy']:.3f}, "
                  f"FD ratio {row['frechet_ratio']:.2f} ({seconds:.0f} s)", file=sys.stderr)
    return {"sampler": sampler, "steps": steps, "n": n, "seed": seed,
            "reference_frechet_train_vs_test": yardstick, "rows": rows}


def guidance_sweep_report(out, model, classifier, dataset, seed=0, progress=False):
    """guidance_sweep's report as out/guidance_sweep.json and its figure out/guidance_sweep.png; the paths."""
    report = guidance_sweep(model, classifier, dataset, seed=seed, progress=progress)
    path = os.path.join(out, "guidance_sweep.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    return [path, plots.save_guidance_sweep(report, os.path.join(out, "guidance_sweep.png"))]
def ode_vs_vlb_bits(model, x, steps=50, trace="hutchinson", seed=0, progress=False):
    """Bits/dim of the images x (B, C, H, W) on the model's grid (hparam `levels`) by two bounds on -log2 P(x)/D:
    the probability-flow ODE's dequantised likelihood (docs/sde.md (W13); `steps` Heun nodes, `trace` for the
    divergence, autograd through the model) and the VLB's full loop over t (docs/vlb_bits_per_dim.md (L8), the
    rng of `eval`). Returns per-image lists and their means, and the paired difference ODE - VLB with its
    standard error over the images."""
    from minidiff import diffusion
    from tqdm.auto import tqdm
    model.eval()
    levels = model.hparams["levels"]
    bar = tqdm(total=2, disable=not progress, desc="ode vs vlb", unit="bound", dynamic_ncols=True)
    with no_grad():
        vlb = diffusion.nll_bpd(model.eps_array, x, model.schedule, default_rng(seed=(seed, 2 ** 31)), levels=levels)
    bar.update(1)
    ode = diffusion.ode_nll_bpd(model, x, model.schedule, steps=steps, trace=trace, rng=default_rng(seed=seed),
                                levels=levels)
    bar.update(1)
    bar.close()
    ode, vlb = np.asarray(ode, dtype=np.float64), np.asarray(vlb["total_bpd"], dtype=np.float64)
    gap = ode - vlb
    return {"n_images": len(x), "levels": levels, "ode_steps": steps, "ode_network_evaluations": 2 * steps - 1,
            "trace": trace, "ode_bits_per_dim": float(ode.mean()), "vlb_bits_per_dim": float(vlb.mean()),
            "ode_minus_vlb": float(gap.mean()), "ode_minus_vlb_standard_error": float(gap.std(ddof=1)
                                                                                      / np.sqrt(len(x))),
            "ode_per_image": ode.tolist(), "vlb_per_image": vlb.tolist()}


def ode_vs_vlb_report(checkpoint_path, out, n_images=64, steps=50, trace="hutchinson", seed=0, progress=False):
    """ode_vs_vlb_bits on the first n_images digits test images (those `eval` scores the VLB on), as JSON at out."""
    from minidiff import models
    model, state = models.load(checkpoint_path)
    dataset = data.load_dataset(models.trained_on(state), None, seed=0)
    report = {"checkpoint": checkpoint_path, **ode_vs_vlb_bits(model, xp().asarray(dataset.x_test[:n_images]),
                                                                steps=steps, trace=trace, seed=seed,
                                                                progress=progress)}
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    return report
