"""Sampling from a noise-prediction model: DDPM ancestral, DDIM, and the sampler interface, docs/ddim.md.

model(x_t, t) -> eps_hat is any callable on arrays (B, ...) and integer timesteps (B,) (a learned-variance
model returns (eps_hat, v), docs/guidance_variance.md §2; a class-conditional one is wrapped by
`guidance.guided_model` into such a callable, §1, so every sampler takes it unchanged); t is
always the step of the schedule the model was trained on (a respaced chain maps its steps back
with `Schedule.timesteps`). Noise is injectable for reproducibility and tests: `x_T` and
`noise` (one z per step, in sampling order) override draws from `rng`.

The sampler interface (docs/ddim.md §6). A sampler is a `Sampler` subclass whose options are
keyword-only constructor arguments, registered by name in `SAMPLERS` with `@register_sampler`:

    @register_sampler
    class DDIMSampler(Sampler):
        name = "ddim"
        def __init__(self, *, eta=0.0, clip_x0=False): ...
        def step(self, state, x, k, eps_hat, z): ...        # returns x_{k-1}

The one shared loop, `run_chain(sampler, model, chain, draws)`, runs a chain of K steps:

    state = sampler.start(x_T, chain)                      # once per run: a fresh SamplerState
    for k = K..1:  x <- sampler.step(state, x, k, model(x, s_k), z_k)

A sampler object holds only its options and may serve many runs; whatever a run carries from one
step to the next lives in its state. A multistep solver (PLMS / Adams-Bashforth) keeps the eps_hat
of the steps already taken there, so two runs never share history:

    @dataclass
    class MultistepState(SamplerState):
        previous_eps: list = field(default_factory=list)     # eps_hat at k+1, k+2, ... (newest first)

    def start(self, x_T, chain):
        return MultistepState(chain)

    def step(self, state, x, k, eps_hat, z):
        eps = eps_hat if not state.previous_eps else 1.5 * eps_hat - 0.5 * state.previous_eps[0]  # AB2
        state.previous_eps.insert(0, eps_hat)
        return ddim_step(x, k, eps, z, state.chain)

(tests/test_registries.py runs exactly such a sampler through the loop.) `Draws` bundles x_T and
the z_k of one run; `sample(sampler, model, shape, schedule, ...)` respaces, draws and runs.

A step that calls the model more than once (Heun's corrector, Langevin's inner steps) overrides
`advance` instead of `step`. The loop really runs

    x <- sampler.advance(state, x, k, eps_at, draw)        # eps_at(x, j) = model(x, s_j); draw() -> z_k

and the default `advance` is `step(state, x, k, eps_at(x, k), draw())`: one call, then the draw, as
before. `noise_shape(x_shape, k)` says what z_k is (x's shape for k >= 2 and nothing at k = 1 by
default; (n_inner, *x_shape) for Langevin), `network_calls(K)` how many model calls a run makes.
"""
import functools
import inspect
import math
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

import minidiff.kernels as kernels
from minidiff import checks, ops
from minidiff.backend import default_rng, xp_of
from minidiff.diffusion.process import REVERSE_VARIANCES, ddim_sigma, eps_from_x0, p_mean_variance, x0_from_eps
from minidiff.diffusion.schedule import Schedule

SAMPLERS = {}  # name -> Sampler subclass, filled by @register_sampler


@dataclass
class SamplerState:
    """What one sampling run carries from step to step; subclass it to add history."""
    chain: Schedule  # the chain being sampled, steps k = K..1 (`chain.timesteps[k]` = the model's step)
    v: object = None  # a learned-variance model's v at the latest model call (None for an eps-only model)


class Sampler:
    """A reverse-process sampler: keyword-only options, a per-run `start` and one `step` from k to k-1.

    clip_x0: clip the predicted x_0 to the data range [-1, 1] at every step (docs/eps_parameterisation.md);
    every sampler takes it (DDPM.sample passes it), so a subclass's __init__ passes it on to this one.
    """
    name = None  # the registry key: DDPM.sample(sampler=...), the CLI's --sampler

    def __init__(self, *, clip_x0=False):
        self.clip_x0 = bool(clip_x0)

    def start(self, x_T, chain):
        """A fresh state for one run on `chain` from x_T; override to carry history (module docstring)."""
        return SamplerState(chain)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.step is Sampler.step and cls.advance is Sampler.advance:
            raise TypeError(f"{cls.__name__} must define step (one model call per step) or override advance")

    def step(self, state, x, k, eps_hat, z):
        """x_{k-1} from x = x_k, eps_hat = eps_theta(x_k, s_k) and z ~ N(0, I) (zeros at k = 1 unless given)."""
        raise NotImplementedError(f"{type(self).__name__} steps through advance (it calls the model itself)")

    def advance(self, state, x, k, eps_at, draw):
        """x_{k-1} from x = x_k with eps_at(x', j) = eps_theta(x', s_j) and draw() = z_k; one call by default.

        Override it (and make `step` unused) for a step that calls the model more than once.
        """
        eps_hat = eps_at(x, k)
        return self.step(state, x, k, eps_hat, draw())

    def noise_shape(self, x_shape, k):
        """The shape of the draw z_k of step k, or None for none (z = zeros): x's shape, none at k = 1."""
        return None if k == 1 else tuple(x_shape)

    def network_calls(self, K):
        """Model calls of one run on a chain of K steps: K for one call per step."""
        return K


def register_sampler(cls):
    """Class decorator: make a Sampler subclass buildable by its `name` (DDPM.sample, the CLI, the tests)."""
    if not (isinstance(cls, type) and issubclass(cls, Sampler) and isinstance(cls.name, str)):
        raise TypeError(f"register_sampler takes a Sampler subclass with a str `name`, got {cls!r}")
    if SAMPLERS.get(cls.name, cls) is not cls:
        raise ValueError(f"sampler name {cls.name!r} is already registered to {SAMPLERS[cls.name].__name__}")
    SAMPLERS[cls.name] = cls
    return cls


def make_sampler(name, **options):
    """The registered sampler `name` built with its keyword-only options, e.g. make_sampler("ddim", eta=0.5)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {name!r}")
    accepted = inspect.signature(SAMPLERS[name]).parameters
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ValueError(f"sampler {name!r} takes the options {list(accepted)}, got {unknown}")
    return SAMPLERS[name](**options)


# ---------------------------------------------------------------- the two samplers

@register_sampler
class DDPMSampler(Sampler):
    """Ancestral sampling, Algorithm 2, eq. (D1): one fused `minidiff.kernels.reverse_step` per step.

        x_{k-1} = 1/sqrt(alpha_k) (x_k - beta_k / sqrt(1 - alpha_bar_k) eps_hat) + sigma_k z,   sigma_1 = 0

    variance: "fixed_small" (sigma_k^2 = beta_tilde_k) or "fixed_large" (beta_k); impl: the kernel's.
    variance="learned": the model returns (eps_hat, v) and x_{k-1} = mu_theta + Sigma_theta^(1/2) z with
    log Sigma_theta = v log beta_k + (1 - v) log beta_tilde_k of the chain sampled (eq. G6; on a respaced
    chain its own beta_k and beta_tilde_k, as improved DDPM), through `p_mean_variance`; z = 0 at k = 1.
    """
    name = "ddpm"

    def __init__(self, *, variance="fixed_small", clip_x0=False, impl="auto"):
        super().__init__(clip_x0=clip_x0)
        if variance not in REVERSE_VARIANCES:
            raise ValueError(f"variance must be one of {REVERSE_VARIANCES}, got {variance!r}")
        self.variance, self.impl = variance, impl

    def step(self, state, x, k, eps_hat, z):
        t = xp_of(x).full(x.shape[0], k)
        if self.variance != "learned":
            return kernels.reverse_step(x, t, eps_hat, z, state.chain, variance=self.variance,
                                        clip_x0=self.clip_x0, impl=self.impl)
        if state.v is None:
            raise ValueError("ddpm sampler: variance='learned' needs a model that returns (eps_hat, v)")
        mean, _, log_variance, _ = p_mean_variance(eps_hat, x, t, state.chain, "learned", self.clip_x0, v=state.v)
        return mean + ops.exp(0.5 * log_variance) * z


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


@register_sampler
class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021), eq. (D2)-(D4): eta = 0 deterministic, eta = 1 is DDPM with fixed-small variance."""
    name = "ddim"

    def __init__(self, *, eta=0.0, clip_x0=False):
        super().__init__(clip_x0=clip_x0)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.eta = eta

    def step(self, state, x, k, eps_hat, z):
        return ddim_step(x, k, eps_hat, z, state.chain, eta=self.eta, clip_x0=self.clip_x0)


# ---------------------------------------------------------------- the shared loop

class Draws:
    """The Gaussian draws of one run: x_T ~ N(0, I) and one z per step k = K..1, given or drawn from `rng`.

    x_T: (B, ...) used as given; noise: K arrays z in sampling order (each cast to x's dtype). Whatever
    is not given is drawn from rng (minidiff.default_rng() if None) in dtype: x_T first, then each z_k
    when the step asks for it (after its model call for DDPM and DDIM), shaped as the sampler's
    `noise_shape`; where that is None (DDPM and DDIM at k = 1) z is zeros and nothing is drawn.
    """

    def __init__(self, shape, K, rng=None, x_T=None, noise=None, dtype=np.float32):
        shape = tuple(int(n) for n in shape)
        if noise is not None and len(noise) != K:
            raise ValueError(f"noise must hold one z per step (K={K}), got {len(noise)}")
        if rng is None and (x_T is None or noise is None):
            rng = default_rng()
        self.rng, self.noise = rng, noise
        self.x_T = rng.standard_normal(shape, dtype=dtype) if x_T is None else x_T
        if tuple(self.x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(self.x_T.shape)}, expected {shape}")

    def z(self, i, x, shape):
        """z for the i-th step, of `shape` (the sampler's noise_shape): zeros like x where shape is None
        (a given noise[i] is checked against x's shape but ignored there, so a NaN in it cannot reach the
        sample), else noise[i] if given, else a draw of `shape` in x's dtype."""
        expected = tuple(x.shape) if shape is None else tuple(shape)
        if self.noise is not None:
            z = self.noise[i]
            checks.shape(f"noise[{i}]", z, expected, "Draws", because=" (the sampler's noise_shape)")
        if shape is None:
            return xp_of(x).zeros_like(x)
        if self.noise is not None:
            return xp_of(x).asarray(z, dtype=x.dtype)
        return self.rng.standard_normal(shape, dtype=x.dtype)


def run_chain(sampler, model, chain, draws, return_trajectory=False, progress=False):
    """x_K = draws.x_T, then x_{k-1} = sampler.advance(state, x_k, k, eps_at, draw) for k = K..1.

    eps_at(x, j) = model(x, s_j) in x's dtype; draw() = z_k (`Draws.z`). A model that returns (eps_hat, v)
    (a learned variance) leaves v in `state.v` for the step; eps_at returns eps_hat alone. For DDPM and DDIM this is
    x_{k-1} = sampler.step(state, x_k, k, model(x_k, s_k), z_k). state = sampler.start(x_T, chain), made
    once for this run. Returns x_0, and with return_trajectory the list [x_K, ..., x_0] (copies) as well.
    """
    x = draws.x_T
    xp = xp_of(x)
    model_steps = xp.asarray(chain.timesteps)

    def eps_at(x_j, j):
        output = model(x_j, xp.full(x_j.shape[0], model_steps[j]))
        eps_hat, v = output if isinstance(output, tuple) else (output, None)
        eps_hat = xp.asarray(eps_hat, dtype=x_j.dtype)
        checks.shape("model(x_t, t)", eps_hat, x_j.shape, sampler.name, because=" (that of x_t)")
        if v is not None:                   # a learned variance: kept in the run's state for the step
            state.v = checks.shape("model(x_t, t)'s v", xp.asarray(v, dtype=x_j.dtype), x_j.shape, sampler.name,
                                   because=" (that of x_t)")
        return eps_hat

    state = sampler.start(x, chain)
    trajectory = [x.copy()] if return_trajectory else None
    for i, k in enumerate(tqdm(range(chain.T, 0, -1), disable=not progress, desc=sampler.name, leave=False)):
        draw = functools.partial(draws.z, i, x, sampler.noise_shape(x.shape, k))
        x = sampler.advance(state, x, k, eps_at, draw)
        if return_trajectory:
            trajectory.append(x.copy())
    return (x, trajectory) if return_trajectory else x


def sample(sampler, model, shape, schedule, rng=None, steps=None, x_T=None, noise=None, dtype=np.float32,
           return_trajectory=False, progress=False):
    """x_0 (B, ...) by `sampler` on `schedule.respace(steps)` (all T steps if None), through `run_chain`.

    steps: K (or the kept steps); x_T, noise (K arrays), rng, dtype: see `Draws`.
    """
    chain = schedule if steps is None else schedule.respace(steps)
    draws = Draws(shape, chain.T, rng=rng, x_T=x_T, noise=noise, dtype=dtype)
    return run_chain(sampler, model, chain, draws, return_trajectory=return_trajectory, progress=progress)


# ---------------------------------------------------------------- the public functions

def ddpm_sample(model, shape, schedule, rng=None, steps=None, variance="fixed_small", clip_x0=False,
                x_T=None, noise=None, dtype=np.float32, return_trajectory=False, progress=False, impl="auto"):
    """Ancestral sampling x_T ~ N(0, I), x_{t-1} ~ p_theta(x_{t-1} | x_t) for t = T..1 (Algorithm 2), eq. (D1).

        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) + sigma_t z,   sigma_1 = 0

    One fused `minidiff.kernels.reverse_step` per step (`DDPMSampler`). steps: K (or kept steps) to sample
    on the respaced chain `schedule.respace(steps)`. noise: K arrays z (the one at t = 1 is ignored).
    Returns x_0 (B, ...), and with return_trajectory the list [x_T, ..., x_0] as well.
    """
    sampler = DDPMSampler(variance=variance, clip_x0=clip_x0, impl=impl)
    return sample(sampler, model, shape, schedule, rng=rng, steps=steps, x_T=x_T, noise=noise, dtype=dtype,
                  return_trajectory=return_trajectory, progress=progress)


def ddim_sample(model, shape, schedule, rng=None, steps=None, eta=0.0, clip_x0=False, x_T=None, noise=None,
                dtype=np.float32, return_trajectory=False, progress=False):
    """DDIM sampling (Song et al. 2021) on `schedule.respace(steps)` (all steps if None), eq. (D2)-(D4).

    eta = 0: deterministic; eta = 1 over all steps: DDPM with fixed-small variance, given the same
    noise (docs/ddim.md eq. D4). Arguments and returns as `ddpm_sample` (`DDIMSampler`).
    """
    sampler = DDIMSampler(eta=eta, clip_x0=clip_x0)
    return sample(sampler, model, shape, schedule, rng=rng, steps=steps, x_T=x_T, noise=noise, dtype=dtype,
                  return_trajectory=return_trajectory, progress=progress)
