"""Training losses and the variational bound (VLB) in bits per dimension, docs/vlb_bits_per_dim.md.

    -log p_theta(x_0) <= L_VLB = L_T + sum_{t>=2} L_{t-1} + L_0                       eq. (L1)
        L_T     = KL(q(x_T | x_0) || N(0, I))                           prior_bpd
        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))   vb_terms_bpd, t >= 2
        L_0     = -log p_theta(x_0 | x_1)  (discretised Gaussian)        vb_terms_bpd, t = 1

Units: every *_bpd function returns bits per dimension per sample, shape (B,): nats summed over
the D = C H W data dimensions, divided by D log 2. Losses on eps state their reduction.
"""
import math

import numpy as np
from tqdm.auto import tqdm

import minidiff.kernels as kernels
from minidiff import checks, ops
from minidiff.autograd import Function, Tensor
from minidiff.backend import to_numpy, xp_of
from minidiff.diffusion.process import check_t, p_mean_variance, q_posterior, q_sample
from minidiff.distributions import LEVELS, discretized_gaussian_log_likelihood, gaussian_log_density, normal_kl
from minidiff.kernels.reference import per_sample

DECODERS = ("discretized", "gaussian")


def _mean_over_dims(x):
    """(B, ...) -> (B,): mean over every axis but the batch axis."""
    return ops.mean(x, axis=tuple(range(1, len(x.shape))))


# ---------------------------------------------------------------- eps-prediction losses

def l_simple(eps_hat, eps):
    """L_simple = mean over all B x D elements of (eps - eps_hat)^2, eq. (E12) (Ho et al. 2020).

    Squared noise units. Arrays in -> 0-d array; Tensors in -> scalar Tensor.
    """
    checks.same_shape("l_simple", eps_hat=eps_hat, eps=eps)
    return eps_loss(eps_hat, eps)


def eps_loss(eps_hat, eps, weights=None):
    """(1/N) sum_{b,i} w_b (eps_hat_{b,i} - eps_{b,i})^2, N = B x D, w_b = 1 without weights, eq. (E13).

    The composed reference that `fused_eps_loss` (one fused kernel) is tested against.
    """
    checks.same_shape("eps_loss", eps_hat=eps_hat, eps=eps)
    if weights is not None:
        checks.shape("weights", weights, (eps.shape[0],), "eps_loss", because=" (one per sample)")
    squared = (eps_hat - eps) ** 2
    if weights is not None:
        squared = squared * per_sample(weights, np.arange(eps.shape[0]), squared)
    return ops.mean(squared)


# The fused fast path of eq. (E13): forward runs minidiff.kernels.eps_loss, which computes the loss
# and its gradient in one pass over memory; backward only scales that saved gradient. The composed
# eps_loss above records four nodes and re-reads eps_hat and eps in backward.

class EpsLoss(Function):
    """L = (1/N) sum_{b,i} w_b (eps_hat_{b,i} - eps_{b,i})^2, a scalar (squared noise units, mean over all N).

    Inputs: eps_hat, eps (B, ...); params: weights (B,) or None (w_b = 1), impl.
    Saved for backward: G = dL/d eps_hat = (2/N) w_b (eps_hat - eps), from the same kernel pass.
    VJP: d eps_hat = g G, d eps = -g G (g the upstream scalar gradient).
    """

    def forward(self, eps_hat, eps, weights=None, impl="auto"):
        loss, self.grad_eps_hat = kernels.eps_loss(eps_hat, eps, weights, impl=impl)
        return loss

    def backward(self, g):
        d_eps_hat = g * self.grad_eps_hat if self.needs_grad[0] else None
        d_eps = -g * self.grad_eps_hat if self.needs_grad[1] else None
        return d_eps_hat, d_eps


def fused_eps_loss(eps_hat, eps, weights=None, impl="auto"):
    """Eq. (E13) as a scalar Tensor whose backward is the fused gradient of one kernel pass (docs/kernels.md eq. C2-C3).

    eps_hat: the network's noise prediction (a Tensor, or an array); eps: the true noise;
    weights: per-sample w_b of shape (B,) (array or Tensor, treated as a constant) or None.
    With no Tensor among eps_hat and eps the result is a plain 0-d array, like every op.
    """
    if isinstance(weights, Tensor):
        weights = weights.data
    return EpsLoss.apply(eps_hat, eps, weights=weights, impl=impl)


def elbo_weighted_loss(eps_hat, eps, t, schedule, variance="fixed_small"):
    """(1/B) sum_b w_{t_b} mean_i (eps_{b,i} - eps_hat_{b,i})^2, eq. (E14): nats per dimension.

    w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) (Schedule.elbo_weight_table), so for
    t >= 2 each sample's term is its KL term L_{t-1} per dimension minus a constant (eq. E11).
    """
    checks.same_shape("elbo_weighted_loss", eps=eps, eps_hat=eps_hat)
    t = check_t(t, eps, schedule, "elbo_weighted_loss")
    return eps_loss(eps_hat, eps, weights=schedule.elbo_weight_table(variance)[to_numpy(t)])


# ---------------------------------------------------------------- VLB terms

def vb_terms_bpd(x0, x_t, t, eps_hat, schedule, variance="fixed_small", clip_x0=False, prediction="eps",
                 decoder="discretized", cdf="exact", levels=LEVELS, v=None):
    """Per-sample VLB term at t in bits/dim, (B,): L_{t-1} (KL, eq. L2) for t >= 2, L_0 (eq. L3) for t = 1.

        L_{t-1} = KL(N(mu_tilde_t, beta_tilde_t) || N(mu_theta, sigma_t^2)) / (D log 2)
        L_0     = -log p_theta(x_0 | x_1) / (D log 2)

    The decoder at t = 1 has mean mu_theta(x_1, 1) and log-scale 1/2 log sigma_1^2 (the clipped
    log-variance, docs/posterior.md eq. P6); decoder="discretized" (`levels` bins, x0 on the grid
    -1 + 2k/(levels - 1) of [-1, 1]: 256 for 8-bit images, the dataset's `levels` otherwise) or
    "gaussian" (a density, for continuous data). eps_hat: the network output (see p_mean_variance's
    prediction); v: the network's variance output, with variance="learned" (p_mean_variance, eq. G6).
    """
    if decoder not in DECODERS:
        raise ValueError(f"vb_terms_bpd: decoder must be one of {DECODERS}, got {decoder!r}")
    checks.same_shape("vb_terms_bpd", x_t=x_t, x0=x0, eps_hat=eps_hat)
    t = check_t(t, x_t, schedule, "vb_terms_bpd")
    true_mean, _, true_log_variance = q_posterior(x0, x_t, t, schedule)
    mean, _, log_variance, _ = p_mean_variance(eps_hat, x_t, t, schedule, variance, clip_x0, prediction, v=v)
    kl = _mean_over_dims(normal_kl(true_mean, true_log_variance, mean, log_variance))
    if decoder == "discretized":
        log_lik = discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance, cdf=cdf, levels=levels)
    else:
        log_lik = gaussian_log_density(x0, mean, log_variance)
    nll = -_mean_over_dims(log_lik)
    return ops.where(t == 1, nll, kl) / math.log(2.0)


def prior_bpd(x0, schedule):
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, (B,), eq. (L4). Constant in theta."""
    checks.batch("prior_bpd", x0=x0)
    t = np.full(x0.shape[0], schedule.T)
    mean = per_sample(schedule.sqrt_alpha_bars, t, x0) * x0
    log_variance = per_sample(np.full(schedule.T + 1, np.log1p(-schedule.alpha_bars[-1])), t, x0)
    return _mean_over_dims(normal_kl(mean, log_variance, 0.0 * mean, 0.0 * mean)) / math.log(2.0)


# ---------------------------------------------------------------- the full bound

def _model_t(schedule, t):
    """The timesteps the network was trained on: schedule.timesteps maps a respaced step back."""
    return xp_of(t).asarray(schedule.timesteps)[t]


def _model_output(model, x_t, t, where):
    """(eps_hat, v) from model(x_t, t) -> eps_hat, or (eps_hat, v) for a learned variance (v None otherwise),
    each checked to have x_t's shape: a (B, 1, ..., 1) output must not broadcast."""
    output = model(x_t, t)
    eps_hat, v = output if isinstance(output, tuple) else (output, None)
    for name, array in (("model(x_t, t)", eps_hat), ("model(x_t, t)'s v", v)):
        if array is not None:
            checks.array_like(name, array, where)
            checks.shape(name, array, tuple(x_t.shape), where, because=" (that of x_t)")
    return eps_hat, v


def _draw(rng, like):
    return rng.standard_normal(like.shape, dtype=like.dtype)


def nll_bpd(model, x0, schedule, rng, variance="fixed_small", clip_x0=False, decoder="discretized",
            cdf="exact", progress=False, levels=LEVELS):
    """The VLB of eq. (L1) by the full loop over t = 1..T, bits/dim per sample, eq. (L8).

    model(x_t, t) -> eps_hat on arrays (t the original timesteps), or (eps_hat, v) with variance="learned";
    a fresh eps ~ N(0, I) per t. levels: the data's grid for the discretised decoder (`vb_terms_bpd`).
    Returns {"total_bpd": (B,), "prior_bpd": (B,), "vb_bpd": (B, T) with column t-1 = term t}.
    """
    checks.batch("nll_bpd", x0=x0)
    xp, batch = xp_of(x0), x0.shape[0]
    terms = []
    for step in tqdm(range(1, schedule.T + 1), disable=not progress, desc="vlb", leave=False):
        t = xp.full(batch, step)
        x_t = q_sample(x0, t, _draw(rng, x0), schedule)
        eps_hat, v = _model_output(model, x_t, _model_t(schedule, t), "nll_bpd")
        terms.append(vb_terms_bpd(x0, x_t, t, eps_hat, schedule, variance, clip_x0, decoder=decoder, cdf=cdf,
                                  levels=levels, v=v))
    vb, prior = xp.stack(terms, axis=1), prior_bpd(x0, schedule)
    return {"total_bpd": vb.sum(axis=1) + prior, "prior_bpd": prior, "vb_bpd": vb}


def nll_bpd_importance(model, x0, schedule, rng, n_t=1, proposal=None, variance="fixed_small", clip_x0=False,
                       decoder="discretized", cdf="exact", levels=LEVELS):
    """Unbiased importance-sampled estimate of the VLB in bits/dim, (B,), eq. (L9).

        L_VLB ~ L_T + (1/n_t) sum_j L_{t_j - 1} / p(t_j),   t_j ~ p over 1..T, eps_j ~ N(0, I)

    proposal: probabilities p(1..T) (length T, positive, sum 1), uniform by default; levels as in
    `nll_bpd`. Its
    expectation equals that of `nll_bpd`'s total for the same model and x0.
    """
    checks.batch("nll_bpd_importance", x0=x0)
    n_t = checks.integer("n_t", n_t, minimum=1, where="nll_bpd_importance")
    p = _check_proposal(proposal, schedule.T)
    xp, batch = xp_of(x0), x0.shape[0]
    t_np = rng_choice(rng, schedule.T, p, (n_t, batch))
    x_rep = xp.concatenate([x0] * n_t, axis=0)
    t = xp.asarray(t_np.reshape(-1))
    x_t = q_sample(x_rep, t, _draw(rng, x_rep), schedule)
    eps_hat, v = _model_output(model, x_t, _model_t(schedule, t), "nll_bpd_importance")
    terms = vb_terms_bpd(x_rep, x_t, t, eps_hat, schedule, variance, clip_x0, decoder=decoder, cdf=cdf, levels=levels,
                         v=v)
    weighted = terms.reshape(n_t, batch) / xp.asarray(p[t_np - 1])
    return prior_bpd(x0, schedule) + weighted.mean(axis=0)


def _check_proposal(proposal, T):
    if proposal is None:
        return np.full(T, 1.0 / T)
    p = np.asarray(proposal, dtype=np.float64)
    if p.shape != (T,) or not np.all(p > 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"proposal must be T={T} positive probabilities summing to 1, got shape {p.shape}, "
                         f"sum {p.sum() if p.size else 0}")
    return p / p.sum()


def rng_choice(rng, T, p, size):
    """t in 1..T drawn with probabilities p, as a host int64 array (inverse CDF of one uniform draw)."""
    u = to_numpy(rng.random(size))
    return np.minimum(np.searchsorted(np.cumsum(p), u, side="right"), T - 1).astype(np.int64) + 1
