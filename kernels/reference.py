"""The closed-form equations of the three hot diffusion operations, in array code (the oracle).

Every fast kernel in this package (Numba CPU, Numba CUDA, CUDA C) is tested against these
functions; `minidiff.diffusion` calls them too, so each equation has one home.
Derivations and the bytes model: docs/kernels.md.

Shapes: x0, x_t, eps, eps_hat, z are (B, ...) arrays; t is (B,) integer in 1..T; the
schedule is any object with float64 tables of length T+1 indexed by t (index 0 = clean
data), as `minidiff.diffusion.Schedule` provides. Per-sample coefficients are gathered
by t and broadcast over the trailing axes; they are cast to the data's dtype, so float32
data stays float32.

`q_sample` also accepts `minidiff.Tensor` data (it only multiplies and adds), which is how
`minidiff.diffusion.q_sample` stays differentiable in x0 and eps.
"""
import numpy as np

from minidiff.backend import xp_of

VARIANCES = ("fixed_small", "fixed_large")  # the fixed reverse variances: sigma_t^2 = beta_tilde_t or beta_t


def per_sample(table, t, like):
    """table[t_b] as a (B, 1, ..., 1) array of like's dtype and backend, to broadcast over x.

    The one per-sample coefficient gather of the package (like: an array or a Tensor).
    """
    xp = xp_of(like)
    coef = xp.asarray(table)[xp.asarray(t)]
    return coef.reshape((-1,) + (1,) * (len(like.shape) - 1)).astype(like.dtype)


# ---------------------------------------------------------------- eq. (C1): q(x_t | x_0)

def q_sample(x0, t, eps, schedule):
    """Sample q(x_t | x_0) by reparameterisation, docs/kernels.md eq. (C1).

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)

    x0, eps: (B, ...); t: (B,) in 1..T. Returns x_t, (B, ...).
    """
    sqrt_alpha_bar = per_sample(schedule.sqrt_alpha_bars, t, x0)
    sqrt_one_minus_alpha_bar = per_sample(schedule.sqrt_one_minus_alpha_bars, t, x0)
    return sqrt_alpha_bar * x0 + sqrt_one_minus_alpha_bar * eps


# ---------------------------------------------------------------- eq. (C2)-(C3): the eps-loss

def eps_loss(eps_hat, eps, weights=None):
    """The (weighted) eps-prediction loss and its gradient, docs/kernels.md eq. (C2)-(C3).

        L = (1/N) sum_{b,i} w_b (eps_hat_{b,i} - eps_{b,i})^2        (mean over all N elements)
        dL/d eps_hat_{b,i} = (2/N) w_b (eps_hat_{b,i} - eps_{b,i})

    w_b = 1 without weights, else weights[b] (shape (B,)). L is in squared noise units
    (L_simple of Ho et al. 2020 when w = 1). Returns (L as a 0-d array, gradient like eps_hat).
    """
    xp = xp_of(eps_hat)
    diff = eps_hat - eps
    w = 1.0 if weights is None else xp.asarray(weights, dtype=eps_hat.dtype).reshape(
        (-1,) + (1,) * (eps_hat.ndim - 1))
    n = diff.size
    loss = xp.sum(w * diff * diff) / n
    grad = ((2.0 / n) * w) * diff
    return xp.asarray(loss, dtype=eps_hat.dtype), grad.astype(eps_hat.dtype)


# ---------------------------------------------------------------- eq. (C4)-(C7): p(x_{t-1} | x_t)

def sigma_table(schedule, variance="fixed_small"):
    """sigma_t for t = 0..T, docs/kernels.md eq. (C6): the reverse step's noise scale.

        sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t   (fixed_small)
        sigma_t^2 = beta_t                                                         (fixed_large)

    and sigma_1 = 0 in both: the last step returns the mean, z is ignored at t = 1.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    var = schedule.posterior_variance if variance == "fixed_small" else schedule.betas
    sigma = np.sqrt(np.asarray(var, dtype=np.float64))
    sigma[:2] = 0.0
    return sigma


def eps_mean_tables(schedule):
    """(1/sqrt(alpha_t), beta_t/sqrt(1 - alpha_bar_t)) for t = 0..T, the coefficients of eq. (C4)."""
    alphas = np.asarray(schedule.alphas, dtype=np.float64)
    one_minus_alpha_bars = 1.0 - np.asarray(schedule.alpha_bars, dtype=np.float64)
    eps_coef = np.zeros_like(alphas)
    eps_coef[1:] = np.asarray(schedule.betas, dtype=np.float64)[1:] / np.sqrt(one_minus_alpha_bars[1:])
    return 1.0 / np.sqrt(alphas), eps_coef


def x0_tables(schedule):
    """(1/sqrt(alpha_bar_t), sqrt(1/alpha_bar_t - 1)) for t = 0..T, the coefficients of eq. (C5)."""
    alpha_bars = np.asarray(schedule.alpha_bars, dtype=np.float64)
    return 1.0 / np.sqrt(alpha_bars), np.sqrt(1.0 / alpha_bars - 1.0)


def reverse_step(x_t, t, eps_hat, z, schedule, variance="fixed_small", clip_x0=False):
    """Sample p(x_{t-1} | x_t) given the predicted noise, docs/kernels.md eq. (C4)-(C7).

    Without clipping (eq. C4, the posterior mean written in eps):
        mu = (1/sqrt(alpha_t)) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat)
    With clip_x0 (eq. C5 then the posterior mean, eq. C7):
        x0_hat = clip((x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), -1, 1)
        mu = posterior_mean_coef1_t x0_hat + posterior_mean_coef2_t x_t
    Then x_{t-1} = mu + sigma_t z with sigma_t from `sigma_table` (0 at t = 1).

    x_t, eps_hat, z: (B, ...); t: (B,) in 1..T. Returns x_{t-1}, (B, ...).
    """
    if clip_x0:
        recip, recipm1 = x0_tables(schedule)
        x0_hat = per_sample(recip, t, x_t) * x_t - per_sample(recipm1, t, x_t) * eps_hat
        x0_hat = xp_of(x_t).clip(x0_hat, -1.0, 1.0)
        mean = (per_sample(schedule.posterior_mean_coef1, t, x_t) * x0_hat
                + per_sample(schedule.posterior_mean_coef2, t, x_t) * x_t)
    else:
        recip_sqrt_alpha, eps_coef = eps_mean_tables(schedule)
        mean = per_sample(recip_sqrt_alpha, t, x_t) * (x_t - per_sample(eps_coef, t, x_t) * eps_hat)
    return mean + per_sample(sigma_table(schedule, variance), t, x_t) * z
