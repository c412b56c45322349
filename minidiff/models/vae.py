"""The VAE and the conditional VAE (docs/training.md §4; the objective: minidiff/vae_objective.py).

    q_phi(z | x[, y]) = N(mu, diag(exp(logvar)))   ConvEncoder -> [features, onehot(y)] -> Linear -> (mu, logvar)
    p_theta(x | z[, y])                             [z, onehot(y)] -> ConvDecoder (ConvTranspose2d up)
    loss = -(1/B) sum_b ELBO_beta(x_b)              nats per image, one reparameterised z per image

Likelihood "gaussian": p(x | z) = N(x; g(z), sigma^2 I) with one learned log sigma^2 (so the ELBO
is a bound with the best noise level, not a fixed-variance MSE); "bernoulli": x binarised as
x > 0, decoder logits. Prior samples decode the mean g(z), z ~ N(0, I). The conditional VAE
(num_classes > 0) feeds the one-hot label to both networks, so it can draw a chosen digit.
Held-out: the ELBO (beta = 1) and the importance-weighted bound L_K in nats and bits/dim.
"""
import math
import os

import numpy as np

from minidiff import nn, ops, plots, vae_objective
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp
from minidiff.distributions import DiagonalGaussian
from minidiff.models.ae import ConvDecoder, ConvEncoder, downsamples_for
from minidiff.models.base import as_images, loss_figure, register, smooth
from minidiff.models.classifier import one_hot


@register
class VAE(nn.Module):
    name = "vae"
    TRAIN_DEFAULTS = dict(steps=1500, batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=0.995, eval_every=250)

    def __init__(self, image_shape=(1, 8, 8), latent_dim=8, channels=32, likelihood="gaussian", beta=1.0,
                 num_classes=0, iw_samples=50, dtype=None):
        super().__init__()
        if likelihood not in vae_objective.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {vae_objective.LIKELIHOODS}, got {likelihood!r}")
        self.hparams = {"image_shape": list(image_shape), "latent_dim": latent_dim, "channels": channels,
                        "likelihood": likelihood, "beta": beta, "num_classes": num_classes, "iw_samples": iw_samples}
        self.image_shape, self.latent_dim, self.num_classes = tuple(image_shape), latent_dim, num_classes
        self.likelihood, self.beta = likelihood, beta
        k = downsamples_for(image_shape[1])
        self.encoder = ConvEncoder(image_shape, channels, k, dtype)
        self.to_posterior = nn.Linear(self.encoder.out_features + num_classes, 2 * latent_dim, dtype=dtype)
        self.decoder = ConvDecoder(latent_dim + num_classes, image_shape, channels, k, dtype)
        if likelihood == "gaussian":
            self.decoder_logvar = nn.Parameter(xp().full((), math.log(0.1), dtype=dtype or np.float32))

    @classmethod
    def default_hparams(cls, dataset):
        return {"image_shape": dataset.image_shape}

    # ------------------------------------------------------------ the two networks
    def _with_label(self, h, y):
        if not self.num_classes:
            return h
        if y is None:
            raise ValueError("the conditional VAE needs labels y")
        return ops.concatenate([h, one_hot(y, self.num_classes, h.dtype)], axis=1)

    def posterior(self, x, y=None):
        """q(z | x[, y]) as a DiagonalGaussian of (B, d) mean and log-variance."""
        h = self.to_posterior(self._with_label(self.encoder(x), y))
        return DiagonalGaussian(h[:, :self.latent_dim], h[:, self.latent_dim:])

    def decode(self, z, y=None):
        """The decoder output: the mean g(z) (Gaussian) or logits (Bernoulli), (B, C, H, W)."""
        return self.decoder(self._with_label(z, y))

    def likelihood_target(self, x):
        """x as the likelihood sees it: itself (Gaussian) or binarised to {0, 1} (Bernoulli)."""
        return (x > 0).astype(x.dtype) if self.likelihood == "bernoulli" else x

    def _decoder_logvar(self):
        return self.decoder_logvar if self.likelihood == "gaussian" else 0.0

    # ------------------------------------------------------------ objective
    def loss(self, batch, rng):
        """-mean ELBO_beta (nats per image) with one reparameterised z per image."""
        x, y = batch
        q = self.posterior(Tensor(x), y)
        decoded = self.decode(q.rsample(rng=rng), y)
        return vae_objective.vae_loss(self.likelihood_target(x), q, decoded, self.likelihood, self.beta,
                                      self._decoder_logvar())

    def evaluate(self, x, y, rng):
        """Test ELBO (beta = 1) and importance-weighted bound L_K, nats per image and bits per dimension."""
        target, D = self.likelihood_target(x), int(np.prod(self.image_shape))
        q = self.posterior(Tensor(x), y)
        terms = vae_objective.elbo(target, q, self.decode(q.rsample(rng=rng), y), self.likelihood, 1.0,
                                   self._decoder_logvar())
        y_rep = None if y is None else xp().concatenate([y] * self.hparams["iw_samples"])
        iw = vae_objective.importance_weighted_bound(target, q, lambda z: self.decode(z, y_rep),
                                                     self.hparams["iw_samples"], rng, self.likelihood,
                                                     self._decoder_logvar())
        elbo, iw = float(to_numpy(terms["elbo"].data).mean()), float(to_numpy(iw.data).mean())
        return {"test_elbo_nats": elbo, "test_iw_bound_nats": iw,
                "test_elbo_bits_per_dim": -elbo / (D * math.log(2)), "test_iw_bits_per_dim": -iw / (D * math.log(2)),
                "test_kl_nats": float(to_numpy(terms["kl"].data).mean())}

    # ------------------------------------------------------------ sampling and figures
    def sample_images(self, n, rng, label=None, **unused):
        """Decoded means of z ~ N(0, I) (as images in [-1, 1]); the cVAE draws digit `label` (int or (n,))."""
        y = None
        if self.num_classes:
            y = np.arange(n) % self.num_classes if label is None else np.broadcast_to(np.asarray(label), (n,))
            y = xp().asarray(y)
        z = rng.standard_normal((n, self.latent_dim), dtype=np.float32)
        with no_grad():
            return as_images(self.image_mean(self.decode(Tensor(z), y).data))

    def image_mean(self, decoded):
        """E[x | z] as an image in [-1, 1]: the mean itself, or 2 sigmoid(logits) - 1."""
        return 2.0 * ops.sigmoid(decoded) - 1.0 if self.likelihood == "bernoulli" else decoded

    def encode_mean(self, x, y=None, batch_size=512):
        with no_grad():
            return np.concatenate([to_numpy(self.posterior(Tensor(xp().asarray(x[i:i + batch_size])),
                                                           None if y is None else xp().asarray(y[i:i + batch_size]))
                                            .mean.data) for i in range(0, len(x), batch_size)])

    def figures(self, out, dataset, trainer, rng):
        paths = [loss_figure(trainer, out, "-ELBO (nats per image)", logy=False)] if trainer else []
        if trainer:
            paths.append(elbo_figure(trainer, os.path.join(out, "elbo.png")))
        y_test = dataset.y_test if self.num_classes else None
        x = dataset.x_test[:8]
        with no_grad():
            q = self.posterior(Tensor(xp().asarray(x)), None if y_test is None else xp().asarray(y_test[:8]))
            recon = as_images(self.image_mean(self.decode(q.mean, None if y_test is None
                                                          else xp().asarray(y_test[:8]))).data)
        paths.append(plots.save_strip([x, recon], ["test x", "decoded mean"], os.path.join(out, "reconstructions.png")))
        if self.num_classes:
            labels = np.repeat(np.arange(self.num_classes), 8)
            paths.append(plots.save_sample_grid(self.sample_images(len(labels), rng, label=labels),
                                                os.path.join(out, "samples.png"), nrow=8,
                                                title="cVAE: row k asks for digit k"))
        else:
            paths.append(plots.save_sample_grid(self.sample_images(64, rng), os.path.join(out, "samples.png"),
                                                nrow=8, title="VAE: decoded z ~ N(0, I)"))
        mu = self.encode_mean(dataset.x_test, y_test)
        paths.append(plots.save_latent_scatter(mu, dataset.y_test, os.path.join(out, "latent.png")))
        if self.latent_dim == 2 and not self.num_classes:
            def decode(z):
                with no_grad():
                    return as_images(self.image_mean(self.decode(Tensor(xp().asarray(z, dtype=np.float32)))).data)
            paths.append(plots.save_manifold(decode, os.path.join(out, "manifold.png")))
        return paths


@register
class CVAE(VAE):
    """The conditional VAE: the VAE with num_classes > 0."""
    name = "cvae"

    def __init__(self, image_shape=(1, 8, 8), latent_dim=8, channels=32, likelihood="gaussian", beta=1.0,
                 num_classes=10, iw_samples=50, dtype=None):
        if num_classes < 1:
            raise ValueError(f"the conditional VAE needs num_classes >= 1, got {num_classes}")
        super().__init__(image_shape, latent_dim, channels, likelihood, beta, num_classes, iw_samples, dtype)

    @classmethod
    def default_hparams(cls, dataset):
        return {"image_shape": dataset.image_shape, "num_classes": dataset.num_classes}


def elbo_figure(trainer, path):
    """Training ELBO and its two terms (running means), with the held-out ELBO and L_K at each evaluation."""
    h = trainer.history
    window = max(1, len(h["loss"]) // 50)
    curves = {"train ELBO": (h["step"], smooth(h["elbo"], window)),
              "train E_q log p(x|z)": (h["step"], smooth(h["reconstruction"], window)),
              "train -KL": (h["step"], -smooth(h["kl"], window))}
    if trainer.evals:
        steps = [e["step"] for e in trainer.evals]
        curves["test ELBO"] = (steps, [e["test_elbo_nats"] for e in trainer.evals])
        curves["test L_K"] = (steps, [e["test_iw_bound_nats"] for e in trainer.evals])
    return plots.save_curves(curves, path, ylabel="nats per image", title="ELBO = E_q log p(x|z) - KL")
