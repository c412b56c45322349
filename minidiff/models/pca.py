"""PCA by the SVD: the linear autoencoder the notes start from (docs/training.md §2).

With centred data X - m = U S V^T (rows are images), the best rank-d linear code in squared error
is z = (x - m) V_d and x_hat = m + z V_d^T (Eckart-Young): an AE whose encoder and decoder are
tied linear maps. Its test error against d is the baseline the AE and VAE curves are drawn beside.
"""
import json
import os

import numpy as np

from minidiff import data, plots
from minidiff.backend import manual_seed


class PCA:
    """Fit on (N, D) (or image) arrays; components_ (d, D) are the top right-singular vectors."""

    def __init__(self, latent_dim):
        if latent_dim < 1:
            raise ValueError(f"PCA needs latent_dim >= 1, got {latent_dim}")
        self.latent_dim = latent_dim

    def fit(self, x):
        flat = _flat(x)
        if self.latent_dim > min(flat.shape):
            raise ValueError(f"PCA: latent_dim {self.latent_dim} exceeds min(N, D) = {min(flat.shape)}")
        self.mean_ = flat.mean(axis=0)
        _, s, vt = np.linalg.svd(flat - self.mean_, full_matrices=False)
        self.components_ = vt[:self.latent_dim]
        self.explained_variance_ = s[:self.latent_dim] ** 2 / (len(flat) - 1)
        return self

    def encode(self, x):
        """z = (x - m) V_d, (N, d)."""
        return (_flat(x) - self.mean_) @ self.components_.T

    def decode(self, z):
        """x_hat = m + z V_d^T, (N, D)."""
        return self.mean_ + z @ self.components_

    def reconstruction_mse(self, x):
        """Mean squared error per pixel of decode(encode(x))."""
        return float(((self.decode(self.encode(x)) - _flat(x)) ** 2).mean())


def _flat(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def recon_vs_latent(sizes=(2, 4, 8, 16, 32), steps=600, seed=0, progress=False):
    """Test MSE per pixel against latent size d for PCA, the MLP AE and the VAE (decoded posterior mean)."""
    from minidiff.autograd import Tensor, no_grad
    from minidiff.backend import xp
    from minidiff.models.ae import AE
    from minidiff.models.vae import VAE
    from minidiff.train import TrainConfig, Trainer
    ds = data.digits()
    results = {"PCA": [], "AE (MLP)": [], "VAE (conv)": []}
    for d in sizes:
        results["PCA"].append(PCA(d).fit(ds.x_train).reconstruction_mse(ds.x_test))
        for name, cls in (("AE (MLP)", AE), ("VAE (conv)", VAE)):
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
    return {name: (list(sizes), errors) for name, errors in results.items()}


def recon_vs_latent_figure(path, sizes=(2, 4, 8, 16, 32), steps=600, seed=0, progress=False):
    """The recon-error-vs-latent-size plot (PCA, AE, VAE on the digits test split) and its numbers
    as JSON beside it (same name, .json); returns the figure's path."""
    results = recon_vs_latent(sizes, steps, seed, progress)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({name: dict(zip(map(str, s), e)) for name, (s, e) in results.items()}, f, indent=2)
    return plots.save_recon_vs_latent(results, path)

