"""Autoencoders (docs/training.md §2): x -> z = f(x) -> x_hat = g(z), trained on the mean squared error.

- kind="mlp": f = Linear(D, 256) -> ReLU -> Linear(256, d); g mirrors it, with tanh output.
- kind="conv": f = Conv3x3 -> stride-2 Conv4x4 (x downsamples) -> Linear(., d); g = Linear ->
  ConvTranspose2d 4x4 stride 2 (x downsamples) -> Conv3x3 -> tanh (ConvEncoder / ConvDecoder,
  shared with the VAE).
- noise_std > 0 makes it a denoising AE: the encoder sees x + noise_std eps, the loss compares with x.

Loss: (1/(B D)) sum (g(f(x_tilde)) - x)^2, mean squared error per pixel (data in [-1, 1]).
After training, a Gaussian N(m, L L^T) is fitted to the training codes so the AE can "sample"
(decode z ~ N(m, L L^T)); codes also serve nearest-neighbour retrieval (`nearest_neighbours`).
"""
import math
import os

import numpy as np

from minidiff import nn, ops, plots
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp
from minidiff.models.base import as_images, loss_figure, register


def downsamples_for(size):
    """Stride-2 stages used by the conv encoder: one for 8x8 images, two from 16x16 up."""
    return 1 if size <= 8 else 2


class ConvEncoder(nn.Module):
    """x (B, C, H, W) -> features (B, ch 2^k (H/2^k) (W/2^k)): Conv3x3 then k stride-2 Conv4x4, SiLU each."""

    def __init__(self, image_shape, channels=32, downsamples=1, dtype=None):
        super().__init__()
        c, h, w = image_shape
        if h % 2 ** downsamples or w % 2 ** downsamples:
            raise ValueError(f"ConvEncoder: {h}x{w} images do not halve {downsamples} times")
        layers, ch = [nn.Conv2d(c, channels, 3, padding=1, dtype=dtype), nn.SiLU()], channels
        for _ in range(downsamples):
            layers += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1, dtype=dtype), nn.SiLU()]
            ch *= 2
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = ch * (h // 2 ** downsamples) * (w // 2 ** downsamples)
        self.low_shape = (ch, h // 2 ** downsamples, w // 2 ** downsamples)

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """v (B, d) -> (B, C, H, W): Linear to the lowest feature map, k ConvTranspose2d 4x4 stride 2, Conv3x3."""

    def __init__(self, in_features, image_shape, channels=32, downsamples=1, dtype=None):
        super().__init__()
        c, h, w = image_shape
        ch = channels * 2 ** downsamples
        self.low_shape = (ch, h // 2 ** downsamples, w // 2 ** downsamples)
        layers = [nn.Linear(in_features, int(np.prod(self.low_shape)), dtype=dtype), nn.SiLU(),
                  nn.Unflatten(self.low_shape)]
        for _ in range(downsamples):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1, dtype=dtype), nn.SiLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, c, 3, padding=1, dtype=dtype))

    def forward(self, v):
        return self.net(v)


@register
class AE(nn.Module):
    name = "ae"
    TRAIN_DEFAULTS = dict(steps=2000, batch_size=128, lr=2e-3, warmup_steps=50, ema_decay=0.99)

    def __init__(self, image_shape=(1, 8, 8), latent_dim=8, kind="mlp", hidden=256, channels=32, noise_std=0.0,
                 dtype=None):
        super().__init__()
        self.hparams = {"image_shape": list(image_shape), "latent_dim": latent_dim, "kind": kind, "hidden": hidden,
                        "channels": channels, "noise_std": noise_std}
        self.image_shape, self.latent_dim, self.noise_std = tuple(image_shape), latent_dim, noise_std
        D = int(np.prod(image_shape))
        if kind == "mlp":
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(D, hidden, dtype=dtype), nn.ReLU(),
                                         nn.Linear(hidden, latent_dim, dtype=dtype))
            self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden, dtype=dtype), nn.ReLU(),
                                         nn.Linear(hidden, D, dtype=dtype), nn.Unflatten(image_shape))
        elif kind == "conv":
            k = downsamples_for(image_shape[1])
            conv = ConvEncoder(image_shape, channels, k, dtype)
            self.encoder = nn.Sequential(conv, nn.Linear(conv.out_features, latent_dim, dtype=dtype))
            self.decoder = ConvDecoder(latent_dim, image_shape, channels, k, dtype)
        else:
            raise ValueError(f"AE kind must be 'mlp' or 'conv', got {kind!r}")
        self.register_buffer("code_mean", xp().zeros(latent_dim, dtype=np.float64))
        self.register_buffer("code_scale_tril", xp().eye(latent_dim, dtype=np.float64))

    @classmethod
    def default_hparams(cls, dataset):
        return {"image_shape": dataset.image_shape}

    def forward(self, x):
        """x_hat = g(f(x)) in (-1, 1) (tanh output)."""
        return ops.tanh(self.decoder(self.encoder(x)))

    def decode(self, z):
        return ops.tanh(self.decoder(z))

    def loss(self, batch, rng):
        """Mean squared error per pixel between g(f(x + noise_std eps)) and the clean x."""
        x = batch[0]
        noisy = x + self.noise_std * rng.standard_normal(x.shape, dtype=x.dtype) if self.noise_std else x
        return reconstruction_mse(self(Tensor(noisy)), x), {}

    def evaluate(self, x, y, rng):
        result = {"test_mse": float(to_numpy(reconstruction_mse(self(Tensor(x)).data, x)))}
        if self.noise_std:
            noisy = x + self.noise_std * rng.standard_normal(x.shape, dtype=x.dtype)
            result["test_denoising_mse"] = float(to_numpy(reconstruction_mse(self(Tensor(noisy)).data, x)))
            result["test_noisy_input_mse"] = float(to_numpy(reconstruction_mse(noisy, x)))
        return result

    # ------------------------------------------------------------ codes: prior fit, sampling, retrieval
    def encode(self, x, batch_size=512):
        """Codes z = f(x) (N, d) as a NumPy array (no graph)."""
        with no_grad():
            return np.concatenate([to_numpy(self.encoder(Tensor(xp().asarray(x[i:i + batch_size]))).data)
                                   for i in range(0, len(x), batch_size)])

    def on_fit_end(self, x_train):
        """Fit N(m, L L^T) to the training codes (L the Cholesky factor of their covariance)."""
        z = self.encode(x_train).astype(np.float64)
        cov = np.cov(z, rowvar=False).reshape(self.latent_dim, self.latent_dim)
        self.register_buffer("code_mean", xp().asarray(z.mean(axis=0)))
        self.register_buffer("code_scale_tril", xp().asarray(np.linalg.cholesky(cov + 1e-6 * np.eye(self.latent_dim))))

    def sample_images(self, n, rng, label=None, **unused):
        """Decode z = m + L eps, eps ~ N(0, I): the AE has no prior, so it borrows the codes' Gaussian."""
        eps = rng.standard_normal((n, self.latent_dim))
        z = self.code_mean + eps @ self.code_scale_tril.T
        with no_grad():
            return as_images(self.decode(Tensor(z.astype(np.float32))).data)

    def report(self, dataset):
        """Extra numbers for metrics.json: nearest-neighbour retrieval with codes vs pixels."""
        return {"retrieval": retrieval_report(self, dataset)}

    def figures(self, out, dataset, trainer, rng):
        paths = [loss_figure(trainer, out, "MSE per pixel")] if trainer else []
        x = dataset.x_test[:8]
        with no_grad():
            recon = as_images(self(Tensor(xp().asarray(x))).data)
        paths.append(plots.save_strip([x, recon], ["test x", "g(f(x))"], os.path.join(out, "reconstructions.png")))
        paths.append(plots.save_sample_grid(self.sample_images(64, rng), os.path.join(out, "samples.png"), nrow=8,
                                            title="AE: decoded z ~ Gaussian fit of the training codes"))
        codes = self.encode(dataset.x_test)
        paths.append(plots.save_latent_scatter(codes, dataset.y_test, os.path.join(out, "latent.png"),
                                               title="AE codes of the test digits"))
        paths.append(retrieval_figure(self, dataset, os.path.join(out, "retrieval.png")))
        return paths


def reconstruction_mse(x_hat, x):
    """(1/(B D)) sum (x_hat - x)^2: mean squared error per pixel."""
    return ops.mean((x_hat - x) ** 2)


def nearest_neighbours(database, queries, k):
    """Indices (Q, k) of the k database rows nearest (Euclidean) to each query row, nearest first."""
    d2 = (queries ** 2).sum(1)[:, None] - 2 * queries @ database.T + (database ** 2).sum(1)[None, :]
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def retrieval_precision(database, db_labels, queries, query_labels, k=5):
    """Mean fraction of each query's k nearest database items that share its label."""
    idx = nearest_neighbours(database, queries, k)
    return float((db_labels[idx] == query_labels[:, None]).mean())


def retrieval_figure(model, dataset, path, n_queries=6, k=5):
    """Information retrieval in code space: each test query beside its k nearest training images."""
    train_codes, test_codes = model.encode(dataset.x_train), model.encode(dataset.x_test[:n_queries])
    idx = nearest_neighbours(train_codes, test_codes, k)
    frames = [dataset.x_test[:n_queries]] + [dataset.x_train[idx[:, j]] for j in range(k)]
    return plots.save_strip(frames, ["query"] + [f"#{j + 1}" for j in range(k)], path)


def retrieval_report(model, dataset, k=5):
    """Precision@k of nearest-neighbour retrieval with codes vs with raw pixels (test queries, train database)."""
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    return {f"latent_precision_at_{k}": retrieval_precision(model.encode(dataset.x_train), dataset.y_train,
                                                            model.encode(dataset.x_test), dataset.y_test, k),
            f"pixel_precision_at_{k}": retrieval_precision(flat(dataset.x_train), dataset.y_train,
                                                           flat(dataset.x_test), dataset.y_test, k),
            "latent_dim": model.latent_dim, "pixel_dim": int(math.prod(model.image_shape))}
