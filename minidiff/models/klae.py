"""The KL-regularised convolutional autoencoder: latent diffusion's first stage (docs/latent.md §1).

    q_phi(z | x) = N(mu, diag(exp(logvar)))     mu, logvar: (B, c, h, w), a grid h = H / 2^k (eq. Z1)
    x_hat = D_theta(z)                          the decoder's mean, (B, C, H, W)
    L = (1/(B D)) sum_b [ ||x_b - x_hat_b||^2 + lambda KL(q(z | x_b) || N(0, I)) ]    eq. (Z2)

The loss is the ELBO of a Gaussian decoder with variance 1/2 and a KL weight beta = lambda
(docs/vae_elbo.md (V2), (V4)), per pixel, without its constant (1/2) log pi: the mean squared error
per pixel plus lambda times the KL per pixel. lambda = 1e-4 by default (Stable Diffusion's first stage
uses 1e-6 against a summed L1 loss): the KL does not make N(0, I) a usable prior (the diffusion model
on the latents is the prior), it only keeps the posterior from collapsing to a point and the codes
from drifting in scale; sum-reconstruction and lambda-KL are an ELBO with a decoder of variance
lambda / 2 (docs/latent.md §1).

Encoder: Conv3x3, then k stages [SiLU, Conv4x4 stride 2 (doubling the channels), SiLU, Conv3x3], then
SiLU, Conv3x3 to 2c channels (mean, log-variance). Decoder: the mirror image with ConvTranspose2d 4x4
stride 2. Image sides that do not halve k + 1 times (28 for MNIST) are padded by the first convolution
to the next multiple of 2^(k+1) (28 -> 32, an 8x8 grid for k = 2) and the decoder's output is cropped
back, so the latent grid always halves once more (the latent U-Net's two levels).
"""
import math
import os

import numpy as np

from minidiff import checks, nn, ops, plots, vae_objective
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp
from minidiff.distributions import DiagonalGaussian
from minidiff.models.base import as_images, loss_figure, register

MSE_LOGVAR = math.log(0.5)   # the Gaussian decoder whose -log-likelihood is the squared error plus a constant (V2)


def default_downsamples(size):
    """Stride-2 stages k: one for images up to 16 pixels (8 -> 4x4, 16 -> 8x8), two above (28 -> 8x8)."""
    return 1 if size <= 16 else 2


def padding_for(size, downsamples):
    """Pixels added on each side so that the side halves downsamples + 1 times (the grid halves once more)."""
    multiple = 2 ** (downsamples + 1)
    total = -size % multiple
    if total % 2:
        raise ValueError(f"KLAutoencoder: a {size}-pixel side needs {total} pixels of padding to reach a multiple "
                         f"of {multiple}; only even paddings (split evenly) are supported")
    return total // 2


class Encoder(nn.Module):
    """x (B, C, H, W) -> (B, 2c, h, w): the posterior's mean and log-variance, stacked on channels."""

    def __init__(self, in_channels, latent_channels, channels, downsamples, pad, dtype=None):
        super().__init__()
        layers, ch = [nn.Conv2d(in_channels, channels, 3, padding=1 + pad, dtype=dtype)], channels
        for _ in range(downsamples):
            layers += [nn.SiLU(), nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1, dtype=dtype),
                       nn.SiLU(), nn.Conv2d(2 * ch, 2 * ch, 3, padding=1, dtype=dtype)]
            ch *= 2
        self.net = nn.Sequential(*layers, nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1, dtype=dtype))

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """z (B, c, h, w) -> x_hat (B, C, H, W): the Gaussian decoder's mean (no squashing), cropped by `pad`."""

    def __init__(self, out_channels, latent_channels, channels, downsamples, pad, dtype=None):
        super().__init__()
        ch = channels * 2 ** downsamples
        layers = [nn.Conv2d(latent_channels, ch, 3, padding=1, dtype=dtype)]
        for _ in range(downsamples):
            layers += [nn.SiLU(), nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1, dtype=dtype),
                       nn.SiLU(), nn.Conv2d(ch // 2, ch // 2, 3, padding=1, dtype=dtype)]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1, dtype=dtype))
        self.pad = pad

    def forward(self, z):
        x = self.net(z)
        p = self.pad
        return x[:, :, p:x.shape[2] - p, p:x.shape[3] - p] if p else x


@register
class KLAutoencoder(nn.Module):
    name = "klae"
    TRAIN_DEFAULTS = dict(steps=1500, batch_size=128, lr=2e-3, warmup_steps=50, ema_decay=0.995)

    def __init__(self, image_shape=(1, 8, 8), latent_channels=4, channels=32, kl_weight=1e-4, downsamples=None,
                 dtype=None):
        super().__init__()
        c, h, w = image_shape
        if h != w:
            raise ValueError(f"KLAutoencoder: square images only, got {h}x{w}")
        downsamples = default_downsamples(h) if downsamples is None else downsamples
        checks.integer("downsamples", downsamples, minimum=1, where="KLAutoencoder")
        checks.integer("latent_channels", latent_channels, minimum=1, where="KLAutoencoder")
        checks.integer("channels", channels, minimum=1, where="KLAutoencoder")
        self.kl_weight = checks.real("kl_weight", kl_weight, minimum=0.0, where="KLAutoencoder")
        self.hparams = {"image_shape": list(image_shape), "latent_channels": latent_channels, "channels": channels,
                        "kl_weight": kl_weight, "downsamples": downsamples}
        pad = padding_for(h, downsamples)
        side = (h + 2 * pad) // 2 ** downsamples
        self.image_shape, self.latent_shape = tuple(image_shape), (latent_channels, side, side)
        self.encoder = Encoder(c, latent_channels, channels, downsamples, pad, dtype)
        self.decoder = Decoder(c, latent_channels, channels, downsamples, pad, dtype)

    @classmethod
    def default_hparams(cls, dataset):
        return {"image_shape": dataset.image_shape}

    def posterior(self, x):
        """q(z | x) as a DiagonalGaussian of (B, c, h, w) mean and log-variance (eq. Z1)."""
        checks.shape("x", x, (None,) + self.image_shape, "KLAutoencoder.posterior")
        h = self.encoder(x)
        c = self.latent_shape[0]
        return DiagonalGaussian(h[:, :c], h[:, c:])

    def decode(self, z):
        """x_hat = D(z), the decoder's mean, (B, C, H, W)."""
        checks.shape("z", z, (None,) + self.latent_shape, "KLAutoencoder.decode")
        return self.decoder(z)

    def terms(self, x, rng):
        """The per-pixel terms of eq. (Z2) for one z ~ q(z | x): (squared error, KL), each (B,), per pixel."""
        q = self.posterior(Tensor(x) if not isinstance(x, Tensor) else x)
        elbo = vae_objective.elbo(x, q, self.decode(q.rsample(rng=rng)), "gaussian", self.kl_weight, MSE_LOGVAR)
        D = math.prod(self.image_shape)
        squared_error = -elbo["reconstruction"] / D - 0.5 * math.log(math.pi)   # (V2) with sigma^2 = 1/2
        return squared_error, elbo["kl"] / D

    def loss(self, batch, rng):
        """Eq. (Z2): mean squared error per pixel + kl_weight x KL per pixel, one z ~ q(z | x) per image."""
        squared_error, kl = self.terms(batch[0], rng)
        metrics = {"mse": float(to_numpy(squared_error.data).mean()), "kl_per_pixel": float(to_numpy(kl.data).mean())}
        return ops.mean(squared_error + self.kl_weight * kl), metrics

    def reconstruct(self, x):
        """D(E[z | x]): the decoded posterior mean, (B, C, H, W), no graph."""
        with no_grad():
            return self.decode(self.posterior(Tensor(x)).mean).data

    def evaluate(self, x, y, rng):
        """Test reconstruction MSE per pixel of the decoded posterior mean, and the KL per latent element (nats)."""
        with no_grad():
            q = self.posterior(Tensor(x))
            mse = float(to_numpy(((self.decode(q.mean).data - x) ** 2).mean()))
            kl = float(to_numpy(q.kl().data).mean()) / math.prod(self.latent_shape)
        return {"test_mse": mse, "test_kl_per_latent": kl}

    def encode_mean(self, x, batch_size=512):
        """E[z | x] = mu(x), (N, c, h, w) NumPy, in batches, no graph: the codes latent diffusion trains on."""
        with no_grad():
            return np.concatenate([to_numpy(self.posterior(Tensor(xp().asarray(x[i:i + batch_size]))).mean.data)
                                   for i in range(0, len(x), batch_size)])

    def figures(self, out, dataset, trainer, rng):
        paths = [loss_figure(trainer, out, "MSE + KL weight x KL (per pixel)")] if trainer else []
        x = dataset.x_test[:8]
        recon = as_images(self.reconstruct(xp().asarray(x)))
        paths.append(plots.save_strip([x, recon], ["test x", "D(mean of q(z|x))"],
                                      os.path.join(out, "reconstructions.png")))
        return paths
