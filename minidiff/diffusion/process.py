"""The forward process q, its posterior, and the reverse model p_theta, in paper notation.

Shapes (docs/notation.md): x0, x_t, eps, eps_hat, v are (B, ...) arrays or Tensors; t is a
(B,) integer array in 1..T; a schedule is a `minidiff.diffusion.Schedule` (tables indexed by t).
Per-sample coefficients such as sqrt(alpha_bar_t) are gathered by t as (B, 1, ..., 1) arrays in
the data's dtype and backend and broadcast over the trailing axes. Every formula is written with
array/Tensor arithmetic and `minidiff.ops`, so it runs on float64 arrays in tests and on Tensors
in training. Derivations: docs/forward_process.md, docs/posterior.md, docs/eps_parameterisation.md.
"""
import numpy as np

import minidiff.kernels as kernels
from minidiff import checks, ops
from minidiff.autograd import Tensor
from minidiff.backend import xp_of
from minidiff.kernels import reference as kernel_reference
from minidiff.kernels.reference import VARIANCES, per_sample

PREDICTIONS = ("eps", "x0", "v")
REVERSE_VARIANCES = VARIANCES + ("learned",)  # sigma_t^2 of p_theta: beta_tilde_t, beta_t, or Sigma_theta (G6)


def check_t(t, x, schedule, where=""):
    """t as an integer array of shape (B,) in 1..T on x's backend, or a clear ValueError/TypeError."""
    checks.array_like("x", x, where)
    return checks.timesteps(t, x.shape[0] if len(x.shape) else 0, schedule.T, xp_of(x), where)


def _checked(where, t, schedule, **named):
    """check_t against the first named array, and every named array of its shape (no broadcasting)."""
    checks.same_shape(where, **named)
    return check_t(t, next(iter(named.values())), schedule, where)


# ---------------------------------------------------------------- forward process, docs/forward_process.md

def q_step_mean_variance(x_prev, t, schedule):
    """Get q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I), eq. (F1). Returns (mean, variance)."""
    t = check_t(t, x_prev, schedule)
    return ops.sqrt(per_sample(schedule.alphas, t, x_prev)) * x_prev, per_sample(schedule.betas, t, x_prev)


def q_step_sample(x_prev, t, eps, schedule):
    """Sample q(x_t | x_{t-1}): x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps, eq. (F1)."""
    _checked("q_step_sample", t, schedule, x_prev=x_prev, eps=eps)
    mean, variance = q_step_mean_variance(x_prev, t, schedule)
    return mean + ops.sqrt(variance) * eps


def q_mean_variance(x0, t, schedule):
    """Get q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), eq. (F5).

    Returns (mean (B, ...), variance (B, 1..), log_variance (B, 1..)).
    """
    t = check_t(t, x0, schedule)
    variance = per_sample(1.0 - schedule.alpha_bars, t, x0)
    return per_sample(schedule.sqrt_alpha_bars, t, x0) * x0, variance, xp_of(variance).log(variance)


def q_sample(x0, t, eps, schedule, impl="auto"):
    """Sample q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eq. (F5).

    The equation's one home is kernels/reference.py; arrays go through the fused kernel
    (`impl` as in minidiff.kernels), Tensors through the reference (differentiable in x0, eps).
    """
    t = _checked("q_sample", t, schedule, x0=x0, eps=eps)
    if isinstance(x0, Tensor) or isinstance(eps, Tensor):
        return kernel_reference.q_sample(x0, t, eps, schedule)
    return kernels.q_sample(x0, t, eps, schedule, impl=impl)


# ---------------------------------------------------------------- posterior, docs/posterior.md

def q_posterior(x0, x_t, t, schedule):
    """Get q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I), eq. (P1)-(P4).

        mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                   + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

    Returns (mean (B, ...), variance (B, 1..), log_variance (B, 1..)); the log-variance is the
    clipped one (log beta_tilde_2 at t = 1, where beta_tilde_1 = 0), as in the DDPM code.
    """
    t = _checked("q_posterior", t, schedule, x_t=x_t, x0=x0)
    coef1, coef2 = per_sample(schedule.posterior_mean_coef1, t, x_t), per_sample(schedule.posterior_mean_coef2, t, x_t)
    mean = coef1 * x0 + coef2 * x_t
    return (mean, per_sample(schedule.posterior_variance, t, x_t),
            per_sample(schedule.posterior_log_variance_clipped, t, x_t))


# ---------------------------------------------------------------- eps <-> x0 <-> v, docs/eps_parameterisation.md

def _roots(t, like, schedule):
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) per sample, shaped to broadcast over like."""
    return per_sample(schedule.sqrt_alpha_bars, t, like), per_sample(schedule.sqrt_one_minus_alpha_bars, t, like)


def x0_from_eps(x_t, t, eps, schedule):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), eq. (E1)."""
    t = _checked("x0_from_eps", t, schedule, x_t=x_t, eps=eps)
    sqrt_ab, sqrt_one_minus_ab = _roots(t, x_t, schedule)
    return (x_t - sqrt_one_minus_ab * eps) / sqrt_ab


def eps_from_x0(x_t, t, x0, schedule):
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t), eq. (E2)."""
    t = _checked("eps_from_x0", t, schedule, x_t=x_t, x0=x0)
    sqrt_ab, sqrt_one_minus_ab = _roots(t, x_t, schedule)
    return (x_t - sqrt_ab * x0) / sqrt_one_minus_ab


def v_from_x0_eps(x0, eps, t, schedule):
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0, eq. (E3) (Salimans & Ho 2022)."""
    t = _checked("v_from_x0_eps", t, schedule, x0=x0, eps=eps)
    sqrt_ab, sqrt_one_minus_ab = _roots(t, x0, schedule)
    return sqrt_ab * eps - sqrt_one_minus_ab * x0


def x0_from_v(x_t, t, v, schedule):
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v, eq. (E4)."""
    t = _checked("x0_from_v", t, schedule, x_t=x_t, v=v)
    sqrt_ab, sqrt_one_minus_ab = _roots(t, x_t, schedule)
    return sqrt_ab * x_t - sqrt_one_minus_ab * v


def eps_from_v(x_t, t, v, schedule):
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v, eq. (E5)."""
    t = _checked("eps_from_v", t, schedule, x_t=x_t, v=v)
    sqrt_ab, sqrt_one_minus_ab = _roots(t, x_t, schedule)
    return sqrt_one_minus_ab * x_t + sqrt_ab * v


def predict_x0(model_output, x_t, t, schedule, prediction="eps"):
    """x0_hat from the network output: eps_hat (eq. E1), x0_hat itself, or v_hat (eq. E4)."""
    if prediction == "eps":
        return x0_from_eps(x_t, t, model_output, schedule)
    if prediction == "x0":
        return model_output
    if prediction == "v":
        return x0_from_v(x_t, t, model_output, schedule)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


# ---------------------------------------------------------------- reverse model, docs/posterior.md

def p_mean_variance(eps_hat, x_t, t, schedule, variance="fixed_small", clip_x0=False, prediction="eps", v=None):
    """Get p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I), eq. (P5)-(P6).

        x0_hat   = predict_x0(network output)                  (clipped to [-1, 1] if clip_x0)
        mu_theta = mu_tilde_t(x_t, x0_hat)                      (the posterior mean at x0_hat)
        sigma_t^2 = beta_tilde_t (fixed_small) or beta_t (fixed_large); t = 1: Schedule.model_variance
        log sigma_t^2 = v log beta_t + (1 - v) log beta_tilde_t (learned, v given; `learned_log_variance`)

    eps_hat: the network output, eps_hat (default), x0_hat (prediction="x0") or v_hat ("v").
    v: the network's variance output in x_t's shape, for variance="learned" only (docs/guidance_variance.md G6).
    Returns (mean (B, ...), variance, log_variance, x0_hat (B, ...)); the variances are (B, 1..) per sample
    for the fixed choices and (B, ...) per element for the learned one.
    Without clipping, mu_theta equals 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 - alpha_bar_t) eps_hat),
    the form kernels.reverse_step uses (eq. E7; tests/test_process.py::test_mean_gap_is_proportional_to_the_noise_error,
    test_p_mean_variance_agrees_with_the_kernels_reverse_step).
    """
    t = _checked("p_mean_variance", t, schedule, x_t=x_t, eps_hat=eps_hat)
    checks.one_of("variance", variance, REVERSE_VARIANCES, "p_mean_variance")
    if (variance == "learned") != (v is not None):
        raise ValueError(f"p_mean_variance: the network's v is needed exactly for variance='learned'; got "
                         f"variance={variance!r} and v={'None' if v is None else 'an array'}")
    x0_hat = predict_x0(eps_hat, x_t, t, schedule, prediction)
    if clip_x0:
        x0_hat = ops.clip(x0_hat, -1.0, 1.0)
    mean, _, _ = q_posterior(x0_hat, x_t, t, schedule)
    if variance == "learned":
        checks.same_shape("p_mean_variance", x_t=x_t, v=v)
        log_variance = learned_log_variance(v, t, schedule)
        return mean, ops.exp(log_variance), log_variance, x0_hat
    var_table, log_var_table = schedule.model_variance(variance)
    return mean, per_sample(var_table, t, x_t), per_sample(log_var_table, t, x_t), x0_hat


def learned_log_variance(v, t, schedule):
    """log Sigma_theta = v log beta_t + (1 - v) log beta_tilde_t, docs/guidance_variance.md eq. (G6).

    The two logs are those of Schedule.model_variance("fixed_large") and ("fixed_small"), so t = 1 keeps
    their convention (both log beta_tilde_2, eq. P4: the decoder's scale does not depend on v) and v = 1
    (v = 0) gives the fixed_large (fixed_small) variance exactly. v: (B, ...) array or Tensor, the
    interpolation weight (the network's raw output r mapped by v = (r + 1)/2, models/ddpm.py); t: (B,).
    Returns log Sigma_theta of v's shape.
    """
    t = check_t(t, v, schedule, "learned_log_variance")
    _, log_beta = schedule.model_variance("fixed_large")
    _, log_beta_tilde = schedule.model_variance("fixed_small")
    return v * per_sample(log_beta, t, v) + (1.0 - v) * per_sample(log_beta_tilde, t, v)


def ddim_sigma(alpha_bar, alpha_bar_prev, eta):
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_prev)/(1 - alpha_bar)) sqrt(1 - alpha_bar/alpha_bar_prev), eq. (D3)."""
    return eta * np.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)) * np.sqrt(1.0 - alpha_bar / alpha_bar_prev)
