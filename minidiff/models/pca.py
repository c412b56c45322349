"""PCA by the SVD: the linear autoencoder the notes start from (docs/training.md §2).

With centred data X - m = U S V^T (rows are images), the best rank-d linear code in squared error
is z = (x - m) V_d and x_hat = m + z V_d^T (Eckart-Young): an AE whose encoder and decoder are
tied linear maps. Its test error against d is the baseline the AE and VAE curves are drawn beside
(minidiff.experiments.recon_vs_latent).
"""
import numpy as np


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
