"""Models whose optimal noise prediction is known exactly, for testing the math end to end.

Both are `model(x_t, t) -> eps_hat` callables for the samplers and the bound in elbo.py, with t
the timesteps of the schedule they were built with. Derivations: docs/eps_parameterisation.md §4.

* GaussianDataOracle: data x_0 ~ N(m, s^2) independently per dimension. Then x_t ~ N(sqrt(ab) m, v_t),
  v_t = ab s^2 + 1 - ab (ab = alpha_bar_t), and the MMSE noise prediction is
      eps_hat(x_t) = E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) m) / v_t          eq. (E15)
  log p(x_0) and the expected VLB under this model are closed-form too.
* EmpiricalDenoiser: the training set {x_i} itself as the data distribution. The MMSE x_0 is the
  posterior-weighted mean (the "attractor" view of the Towards notes, with the sqrt(ab) scaling of DDPM):
      x0_hat(x_t) = sum_i softmax_i(-||x_t - sqrt(ab) x_i||^2 / (2 (1 - ab))) x_i    eq. (E16)
"""
import math
import numbers

import numpy as np

from minidiff import checks
from minidiff.backend import xp_of
from minidiff.diffusion.process import eps_from_x0
from minidiff.diffusion.schedule import Schedule
from minidiff.kernels.reference import per_sample


class GaussianDataOracle:
    """The exact eps-predictor for data N(m, diag(s^2)); m, s broadcast to one sample's shape."""

    def __init__(self, mean, std, schedule):
        for name, value in (("mean", mean), ("std", std)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                checks.floating(name, value, "GaussianDataOracle")
            checks.finite(name, np.asarray(value, dtype=np.float64), "GaussianDataOracle")
        self.mean, self.std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if not np.all(self.std > 0):
            raise ValueError(f"GaussianDataOracle: std must be positive, got {self.std}")
        self.schedule = checks.instance("schedule", schedule, Schedule, "a Schedule", "GaussianDataOracle")

    def _variance_x_t(self, t, like):
        """v_t = alpha_bar_t s^2 + 1 - alpha_bar_t as (B, ...) broadcastable."""
        alpha_bar = per_sample(self.schedule.alpha_bars, t, like)
        return alpha_bar * self.std ** 2 + 1.0 - alpha_bar

    def __call__(self, x_t, t):
        """eps_hat = E[eps | x_t], eq. (E15)."""
        xp = xp_of(x_t)
        m = xp.asarray(self.mean, dtype=x_t.dtype)
        centred = x_t - per_sample(self.schedule.sqrt_alpha_bars, t, x_t) * m
        return per_sample(self.schedule.sqrt_one_minus_alpha_bars, t, x_t) * centred / self._variance_x_t(t, x_t)

    def sample(self, rng, batch, shape):
        """x_0 ~ N(m, s^2): (batch, *shape) float64."""
        return self.mean + self.std * rng.standard_normal((batch,) + tuple(shape))

    def log_prob(self, x0):
        """log p(x_0) summed over dimensions, (B,) nats."""
        z = (x0 - self.mean) / self.std
        log_density = -0.5 * (math.log(2.0 * math.pi) + 2.0 * np.log(self.std) + z ** 2)
        return log_density.reshape(len(x0), -1).sum(axis=1)

    def expected_vlb_terms(self, shape, variance="fixed_small"):
        """E over x_0 and q of each VLB term in nats (summed over `shape`), with a Gaussian decoder.

        Returns (T + 1,) array: [L_T (prior), L_0 (decoder, t = 1), L_1, ..., L_{T-1} (t = 2..T)]
        in the order (prior, term t = 1, ..., term t = T). Derivation: docs/eps_parameterisation.md §4.
        """
        s = self.schedule
        m2 = np.broadcast_to(self.mean ** 2, shape)
        s2 = np.broadcast_to(self.std ** 2, shape)
        terms = np.zeros(s.T + 1)
        ab_T = s.alpha_bars[-1]
        terms[0] = np.sum(0.5 * (ab_T * (m2 + s2) - ab_T - np.log1p(-ab_T)))
        model_var, model_log_var = s.model_variance(variance)
        for t in range(1, s.T + 1):
            ab = s.alpha_bars[t]
            v = ab * s2 + 1.0 - ab
            if t == 1:  # E[-log N(x_0; E[x_0 | x_1], sigma_1^2)], Var(x_0 | x_1) = s^2 (1 - ab) / v
                sigma2 = math.exp(model_log_var[1])
                terms[1] = np.sum(0.5 * (math.log(2.0 * math.pi * sigma2) + s2 * (1.0 - ab) / v / sigma2))
                continue
            sigma2, post = model_var[t], s.posterior_variance[t]
            mean_gap = s.betas[t] ** 2 / (s.alphas[t] * (1.0 - ab)) * ab * s2 / v  # E||mu_tilde - mu||^2 per dim
            terms[t] = np.sum(0.5 * (math.log(sigma2 / post) + post / sigma2 - 1.0 + mean_gap / sigma2))
        return terms

    def entropy(self, shape):
        """H(p_data) = E[-log p(x_0)] = sum_d 1/2 log(2 pi e s_d^2), nats."""
        return float(np.sum(np.broadcast_to(0.5 * np.log(2.0 * math.pi * math.e * self.std ** 2), shape)))


class EmpiricalDenoiser:
    """The MMSE denoiser of a finite training set, eq. (E16): x0_hat is a posterior-weighted mean of x_i."""

    def __init__(self, train_x, schedule):
        checks.finite("train_x", checks.floating("train_x", train_x, "EmpiricalDenoiser"), "EmpiricalDenoiser")
        train_x = np.asarray(train_x, dtype=np.float64)
        if train_x.ndim < 2 or len(train_x) < 1:
            raise ValueError(f"EmpiricalDenoiser: train_x must be (N, ...) with N >= 1, got shape {train_x.shape}")
        self.train_x = train_x
        self.schedule = checks.instance("schedule", schedule, Schedule, "a Schedule", "EmpiricalDenoiser")

    def weights(self, x_t, t):
        """P(x_0 = x_i | x_t) = softmax_i(-||x_t - sqrt(ab) x_i||^2 / (2 (1 - ab))), (B, N)."""
        xp = xp_of(x_t)
        flat = x_t.reshape(len(x_t), -1)
        train = xp.asarray(self.train_x.reshape(len(self.train_x), -1), dtype=x_t.dtype)
        sqrt_ab = per_sample(self.schedule.sqrt_alpha_bars, t, flat)
        one_minus_ab = per_sample(1.0 - self.schedule.alpha_bars, t, flat)
        sq_dist = ((flat[:, None, :] - sqrt_ab[:, :, None] * train[None, :, :]) ** 2).sum(axis=2)
        logits = -sq_dist / (2.0 * one_minus_ab)
        logits = logits - logits.max(axis=1, keepdims=True)
        w = xp.exp(logits)
        return w / w.sum(axis=1, keepdims=True)

    def x0_hat(self, x_t, t):
        """sum_i P(x_i | x_t) x_i, (B, ...)."""
        xp = xp_of(x_t)
        train = xp.asarray(self.train_x.reshape(len(self.train_x), -1), dtype=x_t.dtype)
        return (self.weights(x_t, t) @ train).reshape(x_t.shape)

    def __call__(self, x_t, t):
        """eps_hat = (x_t - sqrt(ab) x0_hat) / sqrt(1 - ab) (eq. E2 at the MMSE x0_hat)."""
        return eps_from_x0(x_t, t, self.x0_hat(x_t, t), self.schedule)
