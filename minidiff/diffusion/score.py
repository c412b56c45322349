"""The score view of an eps-model: Tweedie's score, denoising score matching, annealed Langevin, docs/score.md.

    s_theta(x_t, t) = -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t)                           eq. (S2)
    grad log q(x_t | x_0) = -(x_t - sqrt(alpha_bar_t) x_0) / (1 - alpha_bar_t) = -eps / sqrt(1 - alpha_bar_t)  (S3)
    L_DSM = mean_b,i lambda_t (s_theta - grad log q(x_t | x_0))^2,  lambda_t = 1 - alpha_bar_t  = L_simple   (S4)-(S5)
    Langevin: x <- x + (eta_k / 2) s_theta(x, s_k) + sqrt(eta_k) z,  eta_k = r (1 - alpha_bar_{s_k})      (S6)-(S7)
    next level: x <- sqrt(alpha_bar_{s_{k-1}} / alpha_bar_{s_k}) x                                         (S8)

Arrays and Tensors alike (`minidiff.ops` arithmetic); t is a (B,) integer array in 1..T of `schedule`.
"""
import math

import numpy as np

from minidiff import checks, ops
from minidiff.backend import xp_of
from minidiff.diffusion.process import check_t, x0_from_eps
from minidiff.kernels.reference import per_sample
from minidiff.diffusion.samplers import Sampler, register_sampler, sample


def score_from_eps(eps_hat, t, schedule):
    """The score s(x_t, t) = grad_x log q(x_t) of an eps-prediction, eq. (S2) (Tweedie's formula).

        s_theta(x_t, t) = -eps_hat / sqrt(1 - alpha_bar_t)

    eps_hat: (B, ...) the network's eps_theta(x_t, t); t: (B,) in 1..T. Returns (B, ...) like eps_hat.
    Exact for the MMSE eps_hat = E[eps | x_t] (tests/test_score.py).
    """
    t = check_t(t, eps_hat, schedule, "score_from_eps", "eps_hat")
    return -eps_hat / per_sample(schedule.sqrt_one_minus_alpha_bars, t, eps_hat)


def conditional_score(x_t, x0, t, schedule):
    """grad_{x_t} log q(x_t | x_0) = -(x_t - sqrt(alpha_bar_t) x_0) / (1 - alpha_bar_t), eq. (S3): the DSM target."""
    checks.same_shape("conditional_score", x_t=x_t, x0=x0)
    t = check_t(t, x_t, schedule, "conditional_score", "x_t")
    return -(x_t - per_sample(schedule.sqrt_alpha_bars, t, x_t) * x0) / per_sample(1.0 - schedule.alpha_bars, t, x_t)


def dsm_loss(score_hat, x_t, x0, t, schedule, weighting="sigma2"):
    """The denoising score-matching loss (Vincent 2011), mean over all B x D elements, eq. (S4).

        L_DSM = (1/N) sum_{b,i} lambda_{t_b} (s_hat_{b,i} - grad log q(x_t | x_0)_{b,i})^2

    weighting: "sigma2" (lambda_t = 1 - alpha_bar_t, Song & Ermon's sigma^2 weight; then L_DSM equals the
    eps-loss L_simple of eq. (E7) exactly, eq. (S5)) or "none" (lambda_t = 1: squared score units).
    score_hat, x_t, x0: (B, ...) arrays or Tensors; returns a scalar like `minidiff.diffusion.eps_loss`.
    """
    checks.one_of("weighting", weighting, ("sigma2", "none"), where="dsm_loss")
    checks.same_shape("dsm_loss", x_t=x_t, score_hat=score_hat, x0=x0)
    squared = (score_hat - conditional_score(x_t, x0, t, schedule)) ** 2
    if weighting == "sigma2":
        squared = squared * per_sample(1.0 - schedule.alpha_bars, t, squared)
    return ops.mean(squared)


# ---------------------------------------------------------------- annealed Langevin dynamics

@register_sampler
class LangevinSampler(Sampler):
    """Annealed Langevin dynamics (Song & Ermon 2019) on the chain's noise ladder, eq. (S6)-(S8).

    For k = K..1 (noise levels 1 - alpha_bar_{s_k}, decreasing), n_inner times at level k:
        x <- x + (eta_k / 2) s_theta(x, s_k) + sqrt(eta_k) z,     eta_k = step_ratio (1 - alpha_bar_{s_k})
    then on to level k - 1: x <- sqrt(alpha_bar_{k-1} / alpha_bar_k) x (VP levels scale the data by
    sqrt(alpha_bar); in xbar = x / sqrt(alpha_bar) this is Song & Ermon's ladder sigma_k^2 = 1/alpha_bar_k - 1
    with eta = step_ratio sigma_k^2, i.e. their epsilon / sigma_L^2 = step_ratio). After level 1, denoise
    returns Tweedie's x0_hat(x, s_1) (one more call); without it, x / sqrt(alpha_bar_1).
    Network calls: K n_inner (+ 1 with denoise). Each step draws n_inner z's, also at k = 1.
    """
    name = "langevin"

    def __init__(self, *, n_inner=3, step_ratio=1.0, denoise=True, clip_x0=False):
        super().__init__(clip_x0=clip_x0)
        self.n_inner = checks.integer("n_inner", n_inner, minimum=1, where="LangevinSampler")
        # eta_k < 2 (1 - alpha_bar) keeps each step stable
        self.step_ratio = checks.real("step_ratio", step_ratio, above=0.0, below=2.0, where="LangevinSampler")
        self.denoise = checks.boolean("denoise", denoise, where="LangevinSampler")

    def noise_shape(self, x_shape, k):
        return (self.n_inner,) + tuple(x_shape)

    def network_calls(self, K):
        return K * self.n_inner + int(self.denoise)

    def advance(self, state, x, k, eps_at, draw):
        chain, z = state.chain, draw()
        t = xp_of(x).full(x.shape[0], k)
        eta = self.step_ratio * float(1.0 - chain.alpha_bars[k])                           # eq. (S7)
        for m in range(self.n_inner):                                                      # eq. (S6)
            x = x + (0.5 * eta) * score_from_eps(eps_at(x, k), t, chain) + math.sqrt(eta) * z[m]
        if k == 1 and self.denoise:
            x0_hat = x0_from_eps(x, t, eps_at(x, k), chain)
            return ops.clip(x0_hat, -1.0, 1.0) if self.clip_x0 else x0_hat
        return math.sqrt(float(chain.alpha_bars[k - 1] / chain.alpha_bars[k])) * x        # eq. (S8)


def langevin_sample(model, shape, schedule, rng=None, steps=None, n_inner=3, step_ratio=1.0, denoise=True,
                    clip_x0=False, x_T=None, noise=None, dtype=np.float32, return_trajectory=False, progress=False):
    """x_0 (B, ...) by annealed Langevin dynamics on `schedule.respace(steps)` (all T levels if None), eq. (S6)-(S8).

    model(x_t, t) -> eps_hat; the score is eq. (S2). x_T ~ N(0, I) (the VP prior) unless given; noise: K
    arrays of shape (n_inner, B, ...). Returns x_0, with return_trajectory also [x_K, ..., x_0] (one per level).
    """
    sampler = LangevinSampler(n_inner=n_inner, step_ratio=step_ratio, denoise=denoise, clip_x0=clip_x0)
    return sample(sampler, model, shape, schedule, rng=rng, steps=steps, x_T=x_T, noise=noise, dtype=dtype,
                  return_trajectory=return_trajectory, progress=progress)
