"""Ancestral (DDPM) and DDIM sampling from a noise-prediction model, docs/ddim.md.

model(x_t, t) -> eps_hat is any callable on arrays (B, ...) and integer timesteps (B,); t is
always the step of the schedule the model was trained on (a respaced chain maps its steps back
with `Schedule.timesteps`). Noise is injectable for reproducibility and tests: `x_T` and
`noise` (one z per step, in sampling order) override draws from `rng`.
"""
import math

import numpy as np
from tqdm.auto import tqdm

import minidiff.kernels as kernels
from minidiff import ops
from minidiff.backend import default_rng, xp_of
from minidiff.diffusion.process import ddim_sigma, eps_from_x0, x0_from_eps


def ddpm_sample(model, shape, schedule, rng=None, steps=None, variance="fixed_small", clip_x0=False,
                x_T=None, noise=None, dtype=np.float32, return_trajectory=False, progress=False, impl="auto"):
    """Ancestral sampling x_T ~ N(0, I), x_{t-1} ~ p_theta(x_{t-1} | x_t) for t = T..1 (Algorithm 2), eq. (D1).

        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) + sigma_t z,   sigma_1 = 0

    One fused `minidiff.kernels.reverse_step` per step. steps: K (or kept steps) to sample on the
    respaced chain `schedule.respace(steps)`. noise: K arrays z (the one at t = 1 is ignored).
    Returns x_0 (B, ...), and with return_trajectory the list [x_T, ..., x_0] as well.
    """
    chain = schedule if steps is None else schedule.respace(steps)

    def step(x, k, eps_hat, z):
        t = xp_of(x).full(x.shape[0], k)
        return kernels.reverse_step(x, t, eps_hat, z, chain, variance=variance, clip_x0=clip_x0, impl=impl)
    return _run_chain(model, shape, chain, step, rng, x_T, noise, dtype, return_trajectory, progress, "ddpm")


def ddim_step(x_t, k, eps_hat, z, chain, eta=0.0, clip_x0=False):
    """One DDIM step from chain step k to k-1, eq. (D2), with sigma_k(eta) of eq. (D3).

        x0_hat  = (x_t - sqrt(1 - alpha_bar_k) eps_hat) / sqrt(alpha_bar_k)   (clipped: eps_hat recomputed)
        x_{k-1} = sqrt(alpha_bar_{k-1}) x0_hat + sqrt(1 - alpha_bar_{k-1} - sigma_k^2) eps_hat + sigma_k z
    """
    t = xp_of(x_t).full(x_t.shape[0], k)
    alpha_bar, alpha_bar_prev = float(chain.alpha_bars[k]), float(chain.alpha_bars[k - 1])  # Python floats keep
    sigma = float(ddim_sigma(alpha_bar, alpha_bar_prev, eta))                                # float32 data float32
    x0_hat = x0_from_eps(x_t, t, eps_hat, chain)
    if clip_x0:
        x0_hat = ops.clip(x0_hat, -1.0, 1.0)
        eps_hat = eps_from_x0(x_t, t, x0_hat, chain)
    direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma ** 2, 0.0))
    x_prev = math.sqrt(alpha_bar_prev) * x0_hat + direction * eps_hat
    return x_prev + sigma * z if sigma > 0 else x_prev


def ddim_sample(model, shape, schedule, rng=None, steps=None, eta=0.0, clip_x0=False, x_T=None, noise=None,
                dtype=np.float32, return_trajectory=False, progress=False):
    """DDIM sampling (Song et al. 2021) on `schedule.respace(steps)` (all steps if None), eq. (D2)-(D4).

    eta = 0: deterministic; eta = 1 over all steps: DDPM with fixed-small variance, given the same
    noise (docs/ddim.md eq. D4). Arguments and returns as `ddpm_sample`.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    chain = schedule if steps is None else schedule.respace(steps)

    def step(x, k, eps_hat, z):
        return ddim_step(x, k, eps_hat, z, chain, eta=eta, clip_x0=clip_x0)
    return _run_chain(model, shape, chain, step, rng, x_T, noise, dtype, return_trajectory, progress, "ddim")


def _run_chain(model, shape, chain, step, rng, x_T, noise, dtype, return_trajectory, progress, name):
    """x_T, then x <- step(x, k, model(x, t_k), z_k) for k = K..1; the shared sampling loop."""
    shape = tuple(int(n) for n in shape)
    if noise is not None and len(noise) != chain.T:
        raise ValueError(f"noise must hold one z per step (K={chain.T}), got {len(noise)}")
    if rng is None and (x_T is None or noise is None):
        rng = default_rng()
    x = rng.standard_normal(shape, dtype=dtype) if x_T is None else x_T
    if tuple(x.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x.shape)}, expected {shape}")
    xp = xp_of(x)
    model_steps = xp.asarray(chain.timesteps)
    trajectory = [x.copy()] if return_trajectory else None
    for i, k in enumerate(tqdm(range(chain.T, 0, -1), disable=not progress, desc=name, leave=False)):
        eps_hat = xp.asarray(model(x, xp.full(shape[0], model_steps[k])), dtype=x.dtype)
        z = _noise(rng, noise, i, x, k)
        x = step(x, k, eps_hat, z)
        if return_trajectory:
            trajectory.append(x.copy())
    return (x, trajectory) if return_trajectory else x


def _noise(rng, noise, i, x, k):
    """z for the i-th step (chain step k): noise[i] if given, zeros at k = 1 (unused), else a draw."""
    if noise is not None:
        z = noise[i]
        if tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"noise[{i}] has shape {tuple(z.shape)}, expected {tuple(x.shape)}")
        return xp_of(x).asarray(z, dtype=x.dtype)
    if k == 1:
        return xp_of(x).zeros_like(x)
    return rng.standard_normal(x.shape, dtype=x.dtype)
