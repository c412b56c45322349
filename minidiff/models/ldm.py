"""Latent diffusion (Rombach et al. 2022): the DDPM on the scaled codes of a KL autoencoder, docs/latent.md.

    z   = E[z | x] = mu_phi(x)          the training images encoded once, by the posterior mean (eq. Z3)
    s   = 1 / std(z)                    over every element of the encoded training set (eq. Z4)
    eps_theta trained on s z            models/ddpm.py's DDPM on the latent shape (c, h, w), L_simple,
                                        without clipping x0_hat (the latents are not in [-1, 1]), on the
                                        linear schedule by default (the cosine one's beta_T = 0.999 step is
                                        unstable without the clip: docs/latent.md §2)
    x   = D_theta(z_0 / s),  z_0 ~ p_theta(z_0)      sampling: the latent chain, then one decoder call (Z5)

The model holds both stages (`autoencoder`, `ddpm`) and s (the buffer `latent_scale`), so one
checkpoint file restores it. Its `loss` takes batches of the scaled latents (what minidiff.latent's
`first_stage` returns); `evaluate` takes images: the autoencoder's reconstruction MSE, and the latent
DDPM's VLB on the scaled codes of the test images in bits per latent dimension (a density of continuous
codes, not comparable with pixel bits/dim: docs/latent.md §3).
"""
import functools
import math
import os

import numpy as np

from minidiff import checks, diffusion, nn, plots
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp, xp_of
from minidiff.models.base import as_images, loss_figure, register
from minidiff.models.ddpm import DDPM
from minidiff.models.klae import KLAutoencoder

AUTOENCODER_KEYS = ("latent_channels", "channels", "kl_weight", "downsamples")   # the first stage's hparams


def latent_scale(z):
    """s = 1 / std(z) over every element of z (the encoded training set), eq. (Z4); float64."""
    std = float(np.std(np.asarray(to_numpy(z), dtype=np.float64)))
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"latent_scale: the codes must have a finite, nonzero spread, got std {std}")
    return 1.0 / std


@register
class LDM(nn.Module):
    name = "ldm"
    TRAIN_DEFAULTS = dict(steps=2000, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.995)

    def __init__(self, image_shape=(1, 8, 8), latent_channels=4, channels=32, kl_weight=1e-4, downsamples=None,
                 T=200, schedule="linear", base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), dropout=0.1, eval_images=64, schedule_options=None, prediction="eps",
                 num_classes=0, p_uncond=0.1, dtype=None):
        super().__init__()
        self.autoencoder = KLAutoencoder(image_shape, latent_channels, channels, kl_weight, downsamples, dtype=dtype)
        self.ddpm = DDPM(self.autoencoder.latent_shape, T, schedule, base_channels, channel_mults, num_res_blocks,
                         attention_resolutions, dropout, eval_images, schedule_options=schedule_options,
                         prediction=prediction, clip_x0=False, num_classes=num_classes, p_uncond=p_uncond,
                         dtype=dtype)
        self.hparams = {"image_shape": list(image_shape),
                        **{key: self.autoencoder.hparams[key] for key in AUTOENCODER_KEYS},
                        **{key: self.ddpm.hparams[key] for key in ("T", "schedule", "base_channels", "channel_mults",
                                                                   "num_res_blocks", "attention_resolutions",
                                                                   "dropout", "eval_images", "schedule_options",
                                                                   "prediction", "num_classes", "p_uncond")
                           if key in self.ddpm.hparams}}   # the label keys only for a class-conditional model
        self.image_shape, self.latent_shape = tuple(image_shape), self.autoencoder.latent_shape
        self.num_classes = self.ddpm.num_classes   # > 0: labels, classifier-free guidance (docs/guidance_variance.md)
        self.register_buffer("latent_scale", xp().ones((), dtype=np.float64))
        self.stages = {}   # how the last training split its steps (set by minidiff.latent.first_stage)

    @classmethod
    def default_hparams(cls, dataset):
        return {"image_shape": dataset.image_shape}

    @classmethod
    def hparams_of(cls, autoencoder):
        """The first-stage hparams of a trained KLAutoencoder, to build an LDM around it."""
        return {key: autoencoder.hparams[key] for key in AUTOENCODER_KEYS}

    @property
    def schedule(self):
        return self.ddpm.schedule

    @property
    def T(self):
        return self.ddpm.T

    # ------------------------------------------------------------ the latent space
    def set_latent_scale(self, z):
        """Measure s on the codes z of the training set (eq. Z4), store it in the buffer, return it."""
        s = latent_scale(z)
        self.register_buffer("latent_scale", xp().asarray(s, dtype=np.float64))
        return s

    def encode(self, x, batch_size=512):
        """s E[z | x]: the scaled codes (N, c, h, w) the latent DDPM models (NumPy, no graph), eq. (Z3)."""
        return (self.autoencoder.encode_mean(x, batch_size) * float(self.latent_scale)).astype(np.float32)

    def decode(self, z_scaled):
        """x = D(z / s) for scaled codes (B, c, h, w), the decoder's mean as an array, eq. (Z5)."""
        z = z_scaled / xp_of(z_scaled).asarray(self.latent_scale, dtype=z_scaled.dtype)
        with no_grad():
            return self.autoencoder.decode(Tensor(z)).data

    # ------------------------------------------------------------ training and evaluation
    def loss(self, batch, rng):
        """L_simple of the latent DDPM on a batch of scaled codes (squared noise units)."""
        checks.shape("latent batch", batch[0], (None,) + self.latent_shape, "LDM.loss",
                     because=" (the scaled codes from minidiff.latent.first_stage, not images)")
        return self.ddpm.loss(batch, rng)

    def evaluate(self, x, y, rng, progress=False):
        """The autoencoder's test MSE per pixel (decoded posterior means), and the latent DDPM's VLB on the
        scaled codes of the first `eval_images` test images: bits per latent dimension with the Gaussian
        decoder at t = 1 (a density, eq. Z6), and its eps-loss."""
        mse = self.autoencoder.evaluate(x, y, rng)["test_mse"]
        z = xp_of(x).asarray(self.encode(to_numpy(x)))
        z_eval = z[:self.hparams["eval_images"]]
        eps_model = self.ddpm.eps_array   # class-conditional: scored with the null label, a bound on -log p(z)
        if self.num_classes:
            eps_model = functools.partial(eps_model, y=xp_of(z).full(z_eval.shape[0], self.num_classes))
        vlb = diffusion.nll_bpd(eps_model, z_eval, self.schedule, rng, decoder="gaussian", progress=progress)
        loss, _ = self.ddpm.loss((z, y), rng)
        return {"test_bits_per_dim": float(to_numpy(vlb["total_bpd"]).mean()),
                "test_prior_bits_per_dim": float(to_numpy(vlb["prior_bpd"]).mean()),
                "test_eps_loss": float(to_numpy(loss.data)), "autoencoder_test_mse": mse}

    def report(self, dataset):
        """For metrics.json: the latent grid, the scale factor s, and the split of the training steps."""
        return {"latent_shape": list(self.latent_shape), "latent_scale": float(self.latent_scale), **self.stages}

    # ------------------------------------------------------------ sampling
    def sample(self, n, rng, sampler="ddpm", steps=None, progress=False, label=None, guidance=1.0, **options):
        """n images (n, C, H, W): scaled codes z_0 from the latent chain (any sampler of diffusion.SAMPLERS,
        on K respaced steps if given), then x = D(z_0 / s), eq. (Z5). Not clipped. A class-conditional model
        draws class `label` (an int or (n,) labels; default 0..K-1 in turn) at guidance scale s = `guidance`
        (eq. G4 on the latent eps)."""
        z = self.ddpm.sample(n, rng, sampler, steps, progress=progress, label=label, guidance=guidance, **options)
        return self.decode(z)

    def sample_images(self, n, rng, sampler="ddpm", steps=None, label=None, progress=False, guidance=1.0, **options):
        """n samples as a NumPy array (n, C, H, W) in [-1, 1]; label and guidance as in `sample`."""
        return as_images(self.sample(n, rng, sampler, steps, progress=progress, label=label, guidance=guidance,
                                     **options))

    def figures(self, out, dataset, trainer, rng, progress=False):
        """The loss curve, 64 samples, and test images beside their reconstructions."""
        paths = [loss_figure(trainer, out, "latent eps-loss (squared noise units)")] if trainer else []
        paths.append(plots.save_sample_grid(self.sample_images(64, rng, progress=progress),
                                            os.path.join(out, "samples.png"), nrow=8,
                                            title=f"LDM samples (latent {'x'.join(map(str, self.latent_shape))})"))
        x = dataset.x_test[:8]
        recon = as_images(self.autoencoder.reconstruct(xp().asarray(x)))
        paths.append(plots.save_strip([x, recon], ["test x", "D(mean of q(z|x))"],
                                      os.path.join(out, "reconstructions.png")))
        return paths
