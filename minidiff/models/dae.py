"""The denoising autoencoder as an attractor (docs/dae.md): its reconstruction points up the density.

    (DAE1) r = argmin_r E_{x~p, ε~N(0,I)} ‖r(x + σ ε) − x‖²          DAE.loss (the AE loss with noise_std = σ)
    (DAE2) r*(x̃) = E[x | x̃];  data N(μ, Σ):  r*(x̃) = μ + Σ (Σ + σ² I)⁻¹ (x̃ − μ)    gaussian_optimal_denoiser
    (DAE3) r*(x̃) − x̃ = σ² ∇ log p_σ(x̃),  p_σ = p ∗ N(0, σ² I)  → σ² ∇ log p(x̃) as σ → 0  (Alain & Bengio)
    (DAE4) x_{k+1} = x_k − η (x_k − r(x_k)) [+ √(2 η σ²) z_k]       attractor_sample

The network is the AE's MLP or conv encoder/decoder (models/ae.py) trained on (DAE1); `output="linear"`
drops the image model's tanh so it can learn r on unbounded data (the Gaussian checks of (DAE3)).
"""
import os

import numpy as np

from minidiff import ops, plots
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp
from minidiff.models.ae import AE
from minidiff.models.base import as_images, register

OUTPUTS = ("tanh", "linear")


@register
class DAE(AE):
    """A denoising AE (noise_std = σ > 0) whose reconstruction r = g∘f drives the attractor sampler (DAE4)."""
    name = "dae"
    TRAIN_DEFAULTS = dict(steps=2000, batch_size=128, lr=2e-3, warmup_steps=50, ema_decay=0.99)

    def __init__(self, image_shape=(1, 8, 8), latent_dim=32, kind="mlp", hidden=256, channels=32, noise_std=0.5,
                 output="tanh", dtype=None):
        if not noise_std > 0:
            raise ValueError(f"DAE: noise_std must be > 0 (a DAE learns from corrupted inputs), got {noise_std!r}")
        if output not in OUTPUTS:
            raise ValueError(f"DAE: output must be one of {OUTPUTS}, got {output!r}")
        super().__init__(image_shape, latent_dim, kind, hidden, channels, noise_std, dtype)
        self.hparams["output"] = output
        self.output = output

    def forward(self, x):
        """r(x) = g(f(x)), through tanh for images in (−1, 1) or linear for unbounded data."""
        return self.decode(self.encoder(x))

    def decode(self, z):
        y = self.decoder(z)
        return ops.tanh(y) if self.output == "tanh" else y

    def reconstruct(self, x):
        """r(x) as an array on the backend (no graph), x (B, *image_shape)."""
        with no_grad():
            return self(Tensor(xp().asarray(x))).data

    def figures(self, out, dataset, trainer, rng):
        paths = super().figures(out, dataset, trainer, rng)
        x = dataset.x_test[:8]
        noisy = (x + self.noise_std * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)
        start = (rng.random((8,) + x.shape[1:], dtype=np.float32) * 2 - 1).astype(np.float32)
        for name, x0 in (("attractor_from_noisy.png", noisy), ("attractor_from_uniform.png", start)):
            _, trajectory = attractor_sample(self.reconstruct, xp().asarray(x0), eta=0.5, steps=32,
                                             return_trajectory=True)
            shown = (0, 1, 2, 4, 8, 16, 32)
            paths.append(plots.save_strip([as_images(trajectory[k]) for k in shown], [f"k={k}" for k in shown],
                                          os.path.join(out, name),
                                          title="x ← x − η (x − r(x)), η = 0.5"))
        return paths


def attractor_sample(reconstruct, x0, eta, steps, noise_std=0.0, rng=None, return_trajectory=False):
    """Iterate x_{k+1} = x_k − η (x_k − r(x_k)) + √(2 η σ_z²) z_k, z_k ~ N(0, I), from x_0 (DAE4).

    With noise_std = 0 each step moves a fraction η towards the reconstruction, so x flows to a fixed
    point r(x) = x, a local maximum of the smoothed density p_σ by (DAE3). With noise_std = σ (the DAE's
    training noise) the step is Langevin dynamics x ← x + (ε/2) ŝ(x) + √ε z on the estimated score
    ŝ = (r(x) − x)/σ² with ε = 2 η σ², whose stationary law tends to p_σ as η → 0.
    reconstruct: array (B, ...) -> array r(x). Returns x_K, and [x_0, ..., x_K] if return_trajectory.
    """
    if not eta > 0:
        raise ValueError(f"attractor_sample: eta must be > 0, got {eta!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"attractor_sample: steps must be an int >= 0, got {steps!r}")
    if noise_std < 0 or (noise_std > 0 and rng is None):
        raise ValueError(f"attractor_sample: noise_std must be >= 0 and needs an rng when > 0; got "
                         f"noise_std={noise_std!r}, rng={rng!r}")
    x, trajectory = x0, [x0]
    for _ in range(steps):
        x = x - eta * (x - reconstruct(x))
        if noise_std:
            x = x + np.sqrt(2 * eta) * noise_std * rng.standard_normal(x.shape, dtype=x.dtype)
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


# ---------------------------------------------------------------- the Gaussian oracle

def _check_gaussian(mean, cov):
    mean, cov = np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    D = mean.shape[-1] if mean.ndim == 1 else None
    if D is None or cov.shape != (D, D) or not np.allclose(cov, cov.T):
        raise ValueError(f"need mean (D,) and a symmetric cov (D, D); got shapes {mean.shape}, {cov.shape}")
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ValueError(f"cov must be positive definite, got eigenvalues {np.linalg.eigvalsh(cov)}")
    return mean, cov


def gaussian_optimal_denoiser(mean, cov, sigma):
    """r*(x̃) = E[x | x̃] = μ + Σ (Σ + σ² I)⁻¹ (x̃ − μ) for x ~ N(μ, Σ), x̃ = x + σ ε (DAE2).

    Returns a function of x̃ (B, D) -> (B, D) (float64): the minimiser of (DAE1) over all functions.
    """
    mean, cov = _check_gaussian(mean, cov)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    gain = cov @ np.linalg.inv(cov + sigma ** 2 * np.eye(len(mean)))       # Σ (Σ + σ² I)⁻¹
    return lambda x_tilde: mean + (np.asarray(x_tilde, dtype=np.float64) - mean) @ gain.T


def gaussian_score(mean, cov):
    """∇ log N(x; μ, Σ) = −Σ⁻¹ (x − μ), as a function of x (B, D) -> (B, D); with Σ + σ² I it is ∇ log p_σ."""
    mean, cov = _check_gaussian(mean, cov)
    precision = np.linalg.inv(cov)
    return lambda x: -(np.asarray(x, dtype=np.float64) - mean) @ precision


def dae_score(reconstruct, x, sigma):
    """The DAE's estimate of the score, ŝ(x) = (r(x) − x)/σ² (DAE3), as a host float64 array."""
    r = to_numpy(reconstruct(x)).astype(np.float64)
    return (r - to_numpy(x).astype(np.float64)) / sigma ** 2
