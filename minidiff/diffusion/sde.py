"""The SDE view of DDPM: the VP-SDE, reverse-SDE and probability-flow sampling, exact likelihood, docs/sde.md.

Continuous time tau in [0, 1], tau = t / T, with beta(tau) from the discrete schedule:
    beta(tau) = -T log(1 - beta_t)  on ((t - 1)/T, t/T]   so   alpha_bar(t / T) = alpha_bar_t exactly     eq. (W1)-(W2)
    VP-SDE            dx = -1/2 beta(tau) x dtau + sqrt(beta(tau)) dW                                    eq. (W3)
    reverse SDE       dx = [-1/2 beta x - beta s(x, tau)] dtau + sqrt(beta) dW_bar   (tau decreasing)    eq. (W4)
    probability flow  dx = -1/2 beta(tau) (x + s(x, tau)) dtau                                           eq. (W5)
The samplers step between the nodes of a respaced chain (the model is only trained at integer t):
    reverse SDE, Euler-Maruyama:  x_{k-1} = x_k + beta'_k (x_k / 2 + s_theta(x_k, s_k)) + sqrt(beta'_k) z      (W7)
    probability flow in xbar = x / sqrt(alpha_bar), sigma = sqrt(1 / alpha_bar - 1):
        d xbar / d sigma = eps_theta(sqrt(alpha_bar) xbar, t(sigma))                                    eq. (W6)
    solved by Euler (= DDIM with eta = 0, eq. W8) or Heun (eq. W9).
Likelihood by the instantaneous change of variables along (W6), from t = 1 (the cut-off) to t = T:
    log p_1(x) = log N(x_T; 0, I) + D/2 log(alpha_bar_T / alpha_bar_1) + int sqrt(alpha_bar) tr(d eps/dx) dsigma (W10)
"""
import math

import numpy as np

from minidiff import checks, ops
from minidiff.autograd import Tensor, enable_grad
from minidiff.backend import default_rng, xp_of
from minidiff.diffusion.process import eps_from_x0, x0_from_eps
from minidiff.diffusion.samplers import Sampler, register_sampler, sample
from minidiff.diffusion.score import score_from_eps
from minidiff.distributions import LEVELS, discretized_bin_edges

ODE_SOLVERS = ("euler", "heun")
TRACES = ("exact", "hutchinson")
DIVERGENCES = ("auto", "autograd", "finite-difference")


# ---------------------------------------------------------------- the continuous-time schedule, eq. (W1)-(W2)

def beta_continuous(schedule, tau):
    """beta(tau) = -T log(1 - beta_t) for tau in ((t - 1)/T, t/T] (t = ceil(T tau), t = 1 at tau = 0), eq. (W1)."""
    t = np.clip(np.ceil(np.asarray(tau, dtype=np.float64) * schedule.T), 1, schedule.T).astype(np.int64)
    return -schedule.T * np.log1p(-schedule.betas[t])


def alpha_bar_continuous(schedule, tau):
    """alpha_bar(tau) = exp(-int_0^tau beta(u) du): log-linear between the nodes, alpha_bar(t/T) = alpha_bar_t (W2)."""
    tau = np.asarray(tau, dtype=np.float64)
    log_alpha_bar = np.log(schedule.alpha_bars)                                 # at tau = t / T, t = 0..T
    return np.exp(np.interp(tau * schedule.T, np.arange(schedule.T + 1), log_alpha_bar))


def sigma_of(alpha_bar):
    """sigma = sqrt(1 / alpha_bar - 1) = sqrt(1 - alpha_bar) / sqrt(alpha_bar), the noise-to-signal ratio (W6)."""
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def probability_flow_drift(x, score, tau, schedule):
    """f(x, tau) = -1/2 beta(tau) (x + s(x, tau)), the probability-flow ODE's velocity dx/dtau, eq. (W5).

    x, score: (B, ...) arrays; tau: a float in [0, 1]. The samplers and the likelihood integrate the same ODE
    in the variables of eq. (W6) (tests/test_sde.py solves this form finely and compares).
    """
    return -0.5 * float(beta_continuous(schedule, tau)) * (x + score)


def _clipped(eps_hat, x, k, chain, clip_x0):
    """eps_hat, or eps recomputed from the clipped x0_hat at chain step k when clip_x0 (as ddim_step does)."""
    if not clip_x0:
        return eps_hat
    t = xp_of(x).full(x.shape[0], k)
    return eps_from_x0(x, t, ops.clip(x0_from_eps(x, t, eps_hat, chain), -1.0, 1.0), chain)


# ---------------------------------------------------------------- reverse SDE, eq. (W7)

@register_sampler
class ReverseSDESampler(Sampler):
    """Euler-Maruyama on the reverse VP-SDE (W4) between the chain's nodes, eq. (W7).

        x_{k-1} = x_k + beta'_k (x_k / 2 + s_theta(x_k, s_k)) + sqrt(beta'_k) z,   no noise at k = 1

    beta'_k = 1 - alpha_bar_{s_k} / alpha_bar_{s_{k-1}} (the chain's beta) is int beta(tau) dtau over the
    step to first order (exactly -log(1 - beta'_k)); it stays below 1 where the integral does not (the
    cosine schedule's beta_T = 0.999 integrates to 6.9). One network call per step.
    """
    name = "sde"

    def step(self, state, x, k, eps_hat, z):
        chain = state.chain
        beta = float(chain.betas[k])
        score = score_from_eps(_clipped(eps_hat, x, k, chain, self.clip_x0), xp_of(x).full(x.shape[0], k), chain)
        return x + beta * (0.5 * x + score) + math.sqrt(beta) * z


# ---------------------------------------------------------------- probability-flow ODE, eq. (W6), (W8)-(W9)

def ode_step_euler(x, k, eps_hat, chain):
    """One Euler step of (W6) from chain node k to k-1, eq. (W8): the DDIM (eta = 0) step in other words.

        xbar_{k-1} = x_k / sqrt(alpha_bar_k) + (sigma_{k-1} - sigma_k) eps_hat
        x_{k-1}    = sqrt(alpha_bar_{k-1}) xbar_{k-1}
    """
    alpha_bar, alpha_bar_prev = float(chain.alpha_bars[k]), float(chain.alpha_bars[k - 1])
    xbar = x / math.sqrt(alpha_bar) + (sigma_of(alpha_bar_prev) - sigma_of(alpha_bar)) * eps_hat
    return math.sqrt(alpha_bar_prev) * xbar


@register_sampler
class ProbabilityFlowSampler(Sampler):
    """The probability-flow ODE (W5) in the variables of (W6), by Euler (W8) or Heun (W9).

    Heun (k >= 2): the Euler predictor x' to node k-1, then the trapezoid with eps' = eps_theta(x', s_{k-1}):
        xbar_{k-1} = x_k / sqrt(alpha_bar_k) + (sigma_{k-1} - sigma_k) (eps_hat + eps') / 2
    The last step (to sigma_0 = 0, where no network is trained) is Euler in both. Network calls: K (euler),
    2K - 1 (heun). solver="euler" reproduces DDIM with eta = 0 (tests/test_sde.py).
    """
    name = "ode"

    def __init__(self, *, solver="heun", clip_x0=False):
        super().__init__(clip_x0=clip_x0)
        self.solver = checks.one_of("solver", solver, ODE_SOLVERS, where="ProbabilityFlowSampler")

    def noise_shape(self, x_shape, k):
        return None

    def network_calls(self, K):
        return K if self.solver == "euler" else 2 * K - 1

    def advance(self, state, x, k, eps_at, draw):
        chain = state.chain
        eps_hat = _clipped(eps_at(x, k), x, k, chain, self.clip_x0)
        x_euler = ode_step_euler(x, k, eps_hat, chain)
        if self.solver == "euler" or k == 1:
            return x_euler
        eps_next = _clipped(eps_at(x_euler, k - 1), x_euler, k - 1, chain, self.clip_x0)
        return ode_step_euler(x, k, 0.5 * (eps_hat + eps_next), chain)                   # eq. (W9)


def sde_sample(model, shape, schedule, rng=None, steps=None, clip_x0=False, x_T=None, noise=None, dtype=np.float32,
               return_trajectory=False, progress=False):
    """x_0 (B, ...) by Euler-Maruyama on the reverse VP-SDE over `schedule.respace(steps)` (all T if None), (W7).

    Arguments and returns as `ddpm_sample` (noise: K arrays z, the one at k = 1 unused).
    """
    return sample(ReverseSDESampler(clip_x0=clip_x0), model, shape, schedule, rng=rng, steps=steps, x_T=x_T,
                  noise=noise, dtype=dtype, return_trajectory=return_trajectory, progress=progress)


def ode_sample(model, shape, schedule, rng=None, steps=None, solver="heun", clip_x0=False, x_T=None, dtype=np.float32,
               return_trajectory=False, progress=False):
    """x_0 (B, ...) by the probability-flow ODE from x_T ~ N(0, I), eq. (W6), Euler (W8) or Heun (W9).

    Deterministic given x_T (drawn from rng when not given). Returns x_0, and with return_trajectory [x_K, ..., x_0].
    """
    return sample(ProbabilityFlowSampler(solver=solver, clip_x0=clip_x0), model, shape, schedule, rng=rng,
                  steps=steps, x_T=x_T, dtype=dtype, return_trajectory=return_trajectory, progress=progress)


# ---------------------------------------------------------------- the divergence tr(d eps / dx), eq. (W11)-(W12)

class _frozen_parameters:
    """Within the block a Module's parameters do not require grad (input gradients only; nothing accumulates)."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad] if hasattr(model, "parameters") else []

    def __enter__(self):
        for p in self.params:
            p.requires_grad = False

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad = True


def _trace_autograd(model, x, t, directions):
    """(eps_theta(x, t), sum_j v_j^T (d eps / dx) v_j per sample): one forward pass, one VJP per probe v_j."""
    with enable_grad(), _frozen_parameters(model):
        x_in = Tensor(x, requires_grad=True)
        out = model(x_in, t)
        total = 0.0
        for v in directions:
            x_in.grad = None
            out.backward(v)                                                  # x_in.grad = J^T v
            total = total + _per_sample(v * x_in.grad)
        return out.data, total


def _trace_finite_difference(model, x, t, directions, delta):
    """(eps_theta(x, t), sum_j v_j^T J v_j per sample), J v = (eps(x + d v) - eps(x - d v)) / 2d (central)."""
    total = 0.0
    for v in directions:
        jvp = (model(x + delta * v, t) - model(x - delta * v, t)) / (2.0 * delta)
        total = total + _per_sample(v * jvp)
    return model(x, t), total


def _per_sample(a):
    """(B, ...) -> (B,) float64 sums."""
    return a.reshape(a.shape[0], -1).sum(axis=1).astype(np.float64)


def unit_probes(x):
    """The D unit vectors e_i, each broadcast to x's shape (B, ...): sum_i e_i^T J e_i = tr J, eq. (W11)."""
    xp = xp_of(x)
    return [xp.broadcast_to(row.reshape(x.shape[1:]), x.shape) for row in xp.eye(int(np.prod(x.shape[1:])),
                                                                                   dtype=x.dtype)]


def rademacher_probe(x, rng):
    """v with independent entries +-1 (probability 1/2 each), shaped and typed like x: E[v v^T] = I, eq. (W12)."""
    return xp_of(x).where(rng.random(x.shape) < 0.5, -1.0, 1.0).astype(x.dtype)


def resolve_divergence(model, x, t, divergence="auto"):
    """"autograd" or "finite-difference": "auto" picks autograd when model(Tensor x, t) is a Tensor depending on x."""
    checks.one_of("divergence", divergence, DIVERGENCES, where="ode_log_likelihood")
    if divergence != "auto":
        return divergence
    try:
        with enable_grad():
            out = model(Tensor(x, requires_grad=True), t)
    except (TypeError, AttributeError):
        return "finite-difference"
    return "autograd" if isinstance(out, Tensor) and out.requires_grad else "finite-difference"


def eps_and_divergence(model, x, t, probes, divergence, delta=None):
    """(eps_theta(x, t), sum_j v_j^T (d eps_theta / dx) v_j per sample (B,)), eq. (W11)-(W12).

    probes: `unit_probes(x)` (the exact trace) or [`rademacher_probe(x, rng)`] (Hutchinson). divergence:
    "autograd" (one forward pass and one backward pass per probe; the model must accept Tensors) or
    "finite-difference" (two calls per probe, step delta: 1e-4 in float64, 1e-2 in float32).
    """
    if divergence == "autograd":
        return _trace_autograd(model, x, t, probes)
    delta = delta or (1e-4 if x.dtype == np.float64 else 1e-2)
    return _trace_finite_difference(model, x, t, probes, delta)


# ---------------------------------------------------------------- likelihood, eq. (W10), (W13)

def ode_log_likelihood_terms(model, x0, schedule, steps=None, trace="exact", rng=None, divergence="auto",
                             solver="heun"):
    """The parts of eq. (W10) per sample (B,) in nats: {"log_prior", "log_volume", "divergence", "x_T"}.

    Integrates (W6) forward from xbar = x0 / sqrt(alpha_bar_1) at t = 1 to t = T over `schedule.respace(steps)`
    (Euler or Heun in sigma), and the divergence integral by the same rule in log sigma,
        int sqrt(alpha_bar) tr J dsigma = int sigma sqrt(alpha_bar) tr J d(log sigma),
    where the integrand is smooth (it tends to D for sigma >> the data scale; in sigma it falls like D / sigma,
    which the trapezoid on the chain's coarse top steps gets badly wrong).
    log p_1(x0) = log_prior + log_volume + divergence, where
        log_prior  = log N(x_T; 0, I)                          (the model's prior at t = T)
        log_volume = D/2 log(alpha_bar_T / alpha_bar_1)         (x = sqrt(alpha_bar) xbar at both ends)
        divergence = int_{sigma_1}^{sigma_T} sqrt(alpha_bar) tr(d eps_theta / dx) dsigma
    """
    checks.one_of("trace", trace, TRACES, where="ode_log_likelihood")
    checks.one_of("solver", solver, ODE_SOLVERS, where="ode_log_likelihood")
    chain = schedule if steps is None else schedule.respace(steps)
    if chain.T < 2 or chain.timesteps[1] != 1:
        raise ValueError(f"the likelihood integral runs over nodes from t = 1 to t = T (at least 2); steps={steps!r} "
                         f"gives the model steps {chain.timesteps[1:].tolist()}")
    xp = xp_of(x0)
    method = resolve_divergence(model, x0, xp.full(x0.shape[0], 1), divergence)
    if trace == "hutchinson":
        probes = [rademacher_probe(x0, default_rng() if rng is None else rng)]   # one v per sample, fixed in sigma
    else:
        probes = unit_probes(x0)

    def velocity(x, k):
        """(d xbar / d sigma, -d log p / d sigma) at node k: (eps, sqrt(alpha_bar_k) v^T J v)."""
        eps, div = eps_and_divergence(model, x, xp.full(x.shape[0], chain.timesteps[k]), probes, method)
        return xp.asarray(eps, dtype=x.dtype), math.sqrt(float(chain.alpha_bars[k])) * div

    xbar = x0 / math.sqrt(float(chain.alpha_bars[1]))
    integral = 0.0
    for k in range(1, chain.T):
        ab, ab_next = float(chain.alpha_bars[k]), float(chain.alpha_bars[k + 1])
        sigma, sigma_next = sigma_of(ab), sigma_of(ab_next)
        h, h_log = sigma_next - sigma, math.log(sigma_next / sigma)
        eps, div = velocity(math.sqrt(ab) * xbar, k)
        xbar_next, increment = xbar + h * eps, h_log * sigma * div                       # Euler, eq. (W8)
        if solver == "heun":                                                               # eq. (W9)
            eps_next, div_next = velocity(math.sqrt(ab_next) * xbar_next, k + 1)
            xbar_next = xbar + h * 0.5 * (eps + eps_next)
            increment = h_log * 0.5 * (sigma * div + sigma_next * div_next)
        xbar, integral = xbar_next, integral + increment
    ab_1, ab_T = float(chain.alpha_bars[1]), float(chain.alpha_bars[-1])
    x_T = math.sqrt(ab_T) * xbar
    D = int(np.prod(x0.shape[1:]))
    log_prior = -0.5 * _per_sample(x_T.astype(np.float64) ** 2) - 0.5 * D * math.log(2.0 * math.pi)
    return {"log_prior": log_prior, "log_volume": xp.full(x0.shape[0], 0.5 * D * math.log(ab_T / ab_1)),
            "divergence": integral, "x_T": x_T}


def ode_log_likelihood(model, x0, schedule, steps=None, trace="exact", rng=None, divergence="auto", solver="heun"):
    """log p_theta(x_0) of the probability-flow ODE in nats per sample, (B,), eq. (W10) (a continuous density).

    model(x_t, t) -> eps_hat; x0: (B, ...). The integral runs from the cut-off t = 1 (the first trained step:
    p_0 is taken as p at t = 1, which blurs it by N(0, 1 - alpha_bar_1)) to t = T on the chain
    `schedule.respace(steps)` (t = 1 added if respacing skips it), solver "heun" (default) or "euler".
    trace: "exact" (D probes: the unit vectors, eq. W11) or "hutchinson" (one Rademacher v per sample, fixed
    along the path, drawn from rng; unbiased, eq. W12). divergence: how tr(d eps / dx) is computed, see
    `eps_and_divergence` (autograd when the model accepts Tensors, finite differences otherwise).
    """
    terms = ode_log_likelihood_terms(model, x0, schedule, steps, trace, rng, divergence, solver)
    return terms["log_prior"] + terms["log_volume"] + terms["divergence"]


def ode_nll_bpd(model, x0, schedule, steps=None, trace="hutchinson", rng=None, divergence="auto", solver="heun",
                n_dequant=1, levels=LEVELS):
    """-log P(x_0) in bits/dim on the data's grid, (B,), by uniform dequantisation, eq. (W13).

        bpd = -( E_u[log p_theta(x_0 + u)] + D log w ) / (D log 2),   u ~ U(-w/2, w/2)^D,  w = 2 / (K - 1)
    an upper bound on -log2 P(bin of x_0) per dimension (Jensen). x0 must lie on the K-level grid
    -1 + 2k/(K - 1) of [-1, 1], K = levels (ValueError otherwise): the data's own levels, as the VLB's
    discretised decoder uses them (17 for the digits, 256 for 8-bit images), so the two numbers compare.
    n_dequant draws of u from rng; the other arguments as `ode_log_likelihood`.
    """
    discretized_bin_edges(x0, levels)                                   # x0 on the grid, or a ValueError
    n_dequant = checks.integer("n_dequant", n_dequant, minimum=1, where="ode_nll_bpd")
    rng = default_rng() if rng is None else rng
    xp, D = xp_of(x0), int(np.prod(x0.shape[1:]))
    bin_width = 2.0 / (levels - 1)
    log_p = 0.0
    for _ in range(n_dequant):
        u = xp.asarray((np.asarray(rng.random(x0.shape)) - 0.5) * bin_width, dtype=x0.dtype)
        log_p = log_p + ode_log_likelihood(model, x0 + u, schedule, steps, trace, rng, divergence, solver)
    log_p = log_p / n_dequant
    return -(log_p + D * math.log(bin_width)) / (D * math.log(2.0))
