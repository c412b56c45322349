"""Noise schedules beta_1..beta_T and every table derived from them, docs/forward_process.md.

All tables are float64 NumPy arrays of length T+1 indexed by the paper's t (1-based):
index 0 is clean data (beta_0 = 0, alpha_0 = alpha_bar_0 = 1), so `alpha_bars[t]` in code
is alpha_bar_t on paper. Quantities with no meaning at t = 0 (posterior, SNR, w_t) hold a
documented neutral value there and are never read at t = 0 by the rest of minidiff.

    alpha_t                 = 1 - beta_t                                          eq. (F2)
    alpha_bar_t             = prod_{s<=t} alpha_s                                 eq. (F4)
    posterior variance      = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t   eq. (P3)
    posterior_mean_coef1    = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)    (multiplies x_0)   eq. (P2)
    posterior_mean_coef2    = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)  (multiplies x_t)
    elbo_weights            = w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t))   eq. (E11)
    snr                     = alpha_bar_t / (1 - alpha_bar_t)                     eq. (F6)

Named schedules: each constructor `Schedule.<name>(T, **options)` is declared with
`@named_schedule` (a classmethod that also enters itself in `SCHEDULES`), so SCHEDULES is the single
list of names that the DDPM (`schedule=...`), the CLI (`plot schedules`) and the tests read;
`make_schedule(name, T, **options)` builds one by name, `schedules_at(T)` every one that exists at T.
"""
import numpy as np

from minidiff import checks
from minidiff.kernels.reference import VARIANCES

SCHEDULES = {}  # name -> constructor(T, **options) -> Schedule, in definition order; filled by @named_schedule


class named_schedule(classmethod):
    """`@named_schedule` is `@classmethod` that also registers the constructor: SCHEDULES[name] = Schedule.<name>.

    Python calls __set_name__ once the class body has run, so the registry holds the bound constructor.
    """

    def __set_name__(self, owner, name):
        SCHEDULES[name] = getattr(owner, name)


class Schedule:
    """A diffusion noise schedule: betas beta_1..beta_T (length T) in, all tables out.

    `timesteps[k]` maps this schedule's step k to the step of the schedule it was respaced
    from (the identity for a schedule built from betas); timesteps[0] = 0.
    """

    def __init__(self, betas, timesteps=None):
        betas = _check_betas(betas)
        alphas = 1.0 - betas                                                           # eq. (F2)
        self._derive(betas, alphas, np.cumprod(alphas), timesteps)                     # eq. (F4)

    @classmethod
    def from_alpha_bars(cls, alpha_bars, timesteps=None):
        """The schedule with alpha_bar_1..alpha_bar_T given (strictly decreasing in (0, 1)), eq. (F3).

        alpha_t = alpha_bar_t / alpha_bar_{t-1} and beta_t = 1 - alpha_t; alpha_bar is kept exactly
        (recomputing it as a product of 1 - beta_t would lose digits where beta_t is near 1).
        """
        alpha_bars = np.asarray(alpha_bars, dtype=np.float64)
        if alpha_bars.ndim != 1 or alpha_bars.size < 1:
            raise ValueError(f"alpha_bars must be a 1-D array alpha_bar_1..alpha_bar_T, got shape {alpha_bars.shape}")
        alphas = alpha_bars / np.concatenate([[1.0], alpha_bars[:-1]])
        bad = np.flatnonzero(~((alphas > 0.0) & (alphas < 1.0)))  # NaN fails too
        if bad.size:  # (beta_t = 1 - alpha_t may round to 1 where alpha_t < 1e-16: that is allowed here)
            raise ValueError(f"alpha_bars must decrease strictly inside (0, 1); alpha_bar_{bad[0] + 1} = "
                             f"{alpha_bars[bad[0]]!r} after {alpha_bars[bad[0] - 1] if bad[0] else 1.0!r}")
        schedule = cls.__new__(cls)
        schedule._derive(1.0 - alphas, alphas, alpha_bars, timesteps)
        return schedule

    def _derive(self, betas, alphas, alpha_bars, timesteps):
        """Every table from beta_t, alpha_t and alpha_bar_t for t = 1..T (index 0 prepended)."""
        self.T = len(betas)
        self.betas = np.concatenate([[0.0], betas])                                    # beta_0 = 0
        self.alphas = np.concatenate([[1.0], alphas])
        self.alpha_bars = np.concatenate([[1.0], alpha_bars])
        if not self.alpha_bars[-1] > 0.0:
            raise ValueError(f"alpha_bar_T underflows to 0 in float64 (T={self.T}); use smaller betas")
        self.alpha_bars_prev = np.concatenate([[1.0], self.alpha_bars[:-1]])          # alpha_bar_{t-1}
        self.sqrt_alpha_bars = np.sqrt(self.alpha_bars)
        self.sqrt_one_minus_alpha_bars = np.sqrt(1.0 - self.alpha_bars)
        self.snr = _snr(self.alpha_bars)                                               # eq. (F6)
        self._posterior_tables()
        self.elbo_weights = self.elbo_weight_table("fixed_small")                       # eq. (E11)
        self.timesteps = _check_mapping(timesteps, self.T)

    def _posterior_tables(self):
        """Tables of q(x_{t-1} | x_t, x_0), docs/posterior.md eq. (P2)-(P4)."""
        b, a, ab, ab_prev = self.betas[1:], self.alphas[1:], self.alpha_bars[1:], self.alpha_bars_prev[1:]
        variance = (1.0 - ab_prev) / (1.0 - ab) * b                                    # 0 at t = 1
        self.posterior_variance = np.concatenate([[0.0], variance])
        self.posterior_mean_coef1 = np.concatenate([[1.0], np.sqrt(ab_prev) * b / (1.0 - ab)])
        self.posterior_mean_coef2 = np.concatenate([[0.0], np.sqrt(a) * (1.0 - ab_prev) / (1.0 - ab)])
        # eq. (P4): beta_tilde_1 = 0 has no log; the decoder's variance at t = 1 is beta_tilde_2
        # (the DDPM / improved-diffusion convention), and beta_1 when T = 1 (no beta_tilde_2 exists).
        self._t1_variance = variance[1] if self.T > 1 else b[0]
        clipped = np.concatenate([[self._t1_variance] * 2, variance[1:]])
        self.posterior_log_variance_clipped = np.log(clipped)

    def model_variance(self, variance="fixed_small"):
        """(sigma_t^2, log sigma_t^2) for t = 0..T of p(x_{t-1} | x_t), docs/posterior.md eq. (P6).

        fixed_small: sigma_t^2 = beta_tilde_t; fixed_large: sigma_t^2 = beta_t; for t >= 2.
        t = 1 (and the unused t = 0) in both: sigma_1^2 = beta_tilde_2 (beta_1 if T = 1), eq. (P4), the
        scale of the decoder p(x_0 | x_1); sigma_t^2 = exp(log sigma_t^2) everywhere. q's own
        beta_tilde_1 = 0 stays in posterior_variance; sampling adds no noise at t = 1 either way.
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        table = (self.posterior_variance if variance == "fixed_small" else self.betas).copy()
        table[:2] = self._t1_variance
        return table, np.log(table)

    def elbo_weight_table(self, variance="fixed_small"):
        """w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) for t = 0..T (w_0 = 0), eq. (E11).

        sigma_t^2 = exp(log-variance of `model_variance(variance)`), so w_1 uses the t = 1 convention.
        """
        _, log_var = self.model_variance(variance)
        w = np.zeros(self.T + 1)
        w[1:] = self.betas[1:] ** 2 / (2.0 * np.exp(log_var[1:]) * self.alphas[1:] * (1.0 - self.alpha_bars[1:]))
        return w

    # ------------------------------------------------------------ respacing (docs/ddim.md)

    def respace(self, steps):
        """The Markov chain on a subset of timesteps, docs/ddim.md eq. (D5).

        steps: an int K (K evenly spaced steps from `spaced_timesteps(T, K)`) or a collection
        of kept steps in 1..T. The new chain keeps alpha_bar at the kept steps s_1 < ... < s_K:
            beta'_k = 1 - alpha_bar_{s_k} / alpha_bar_{s_{k-1}},   s_0 = 0 (alpha_bar_0 = 1)
        Its `timesteps` maps k back to the original step of the first schedule (composes).
        """
        kept = spaced_timesteps(self.T, steps) if _is_int(steps) else _check_kept(steps, self.T)
        kept = np.sort(kept)
        return Schedule.from_alpha_bars(self.alpha_bars[kept], timesteps=self.timesteps[kept])

    # ------------------------------------------------------------ constructors

    @named_schedule
    def linear(cls, T, beta_start=1e-4, beta_end=0.02):
        """beta_t linear from beta_start to beta_end, both scaled by 1000/T, eq. (F7).

        The scaling (from the DDPM / improved-diffusion code) keeps sum_t beta_t ~ 10 for every T, so
        alpha_bar_T is near the T = 1000 value 4.0e-5 for large T but much smaller for small T (7.7e-6 at
        T = 50, 8.0e-9 at T = 21). A T so small that a scaled beta reaches 1 is refused.
        """
        T = _check_T(T)
        scale = 1000.0 / T
        if scale * max(beta_start, beta_end) >= 1.0:
            raise ValueError(f"linear schedule: T={T} scales beta_end={beta_end} by 1000/T to "
                             f"{scale * beta_end:g} >= 1; need T > {1000.0 * max(beta_start, beta_end):g}")
        return cls(np.linspace(scale * beta_start, scale * beta_end, T))

    @named_schedule
    def cosine(cls, T, s=0.008, max_beta=0.999):
        """alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2); beta_t clipped, eq. (F8).

        beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta) (Nichol & Dhariwal 2021).
        """
        T = _check_T(T)
        if not (s > 0.0 and 0.0 < max_beta < 1.0):
            raise ValueError(f"cosine schedule needs s > 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
        f = np.cos((np.arange(T + 1) / T + s) / (1.0 + s) * np.pi / 2.0) ** 2
        return cls(np.minimum(1.0 - f[1:] / f[:-1], max_beta))

    @named_schedule
    def quadratic(cls, T, beta_start=1e-4, beta_end=0.02):
        """beta_t = (linear from sqrt(beta_start) to sqrt(beta_end))^2 (DDPM code's "quad"), eq. (F9)."""
        T = _check_T(T)
        return cls(np.linspace(beta_start ** 0.5, beta_end ** 0.5, T) ** 2)

    @named_schedule
    def sigmoid(cls, T, beta_start=1e-4, beta_end=0.02):
        """beta_t = beta_start + (beta_end - beta_start) sigmoid(linear from -6 to 6), eq. (F10)."""
        T = _check_T(T)
        return cls(beta_start + (beta_end - beta_start) / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T))))

    def __repr__(self):
        return (f"Schedule(T={self.T}, beta_1={self.betas[1]:.3g}, beta_T={self.betas[-1]:.3g}, "
                f"alpha_bar_T={self.alpha_bars[-1]:.3g})")


def make_schedule(name, T, **options):
    """The registered schedule `name` with T steps: SCHEDULES[name](T, **options), e.g. Schedule.cosine(T)."""
    if name not in SCHEDULES:
        raise ValueError(f"make_schedule: name: schedule must be one of {list(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](_check_T(T), **options)


def schedules_at(T):
    """{name: schedule} for every registered schedule that exists at this T, with its default options.

    A constructor that refuses T (a ValueError: Schedule.linear needs T > 20) is skipped.
    """
    T = _check_T(T)
    out = {}
    for name in SCHEDULES:
        try:
            out[name] = make_schedule(name, T)
        except ValueError:
            continue
    return out


def spaced_timesteps(T, K):
    """K of the steps 1..T, evenly spaced, strictly descending, first T and last 1, docs/ddim.md eq. (D6).

        s_k = round(1 + (k - 1)(T - 1)/(K - 1)),  k = 1..K      (K >= 2; K = 1 only when T = 1)

    The spacing (T - 1)/(K - 1) >= 1, so rounding never repeats a step; K need not divide T.
    """
    T = _check_T(T)
    K = checks.integer("K", K, minimum=1, maximum=T, where="spaced_timesteps")
    if K == 1 and T > 1:
        raise ValueError(f"K=1 step cannot both start at t=T={T} and end at t=1; use K >= 2")
    if K == 1:
        return np.array([1])
    steps = np.floor(1.0 + np.arange(K) * (T - 1) / (K - 1) + 0.5).astype(np.int64)
    return steps[::-1].copy()


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_T(T):
    return checks.integer("T", T, minimum=1)


def _check_betas(betas):
    try:
        raw = np.asarray(betas)
    except ValueError:  # a ragged list
        raise ValueError(f"betas must be a 1-D array beta_1..beta_T, got a ragged {type(betas).__name__}") from None
    if raw.dtype.kind not in "fiu":  # complex, strings, objects: np.asarray(float64) would drop or fail
        raise TypeError(f"betas must be real numbers beta_1..beta_T, got dtype {raw.dtype}")
    betas = raw.astype(np.float64)
    if betas.ndim != 1 or betas.size < 1:
        raise ValueError(f"betas must be a 1-D array beta_1..beta_T with T >= 1, got shape {betas.shape}")
    if not np.all(np.isfinite(betas)):
        raise ValueError(f"betas contain NaN or inf at t = {np.flatnonzero(~np.isfinite(betas)) + 1}")
    bad = np.flatnonzero((betas <= 0.0) | (betas >= 1.0) | (1.0 - betas == 1.0))
    if bad.size:
        raise ValueError(f"every beta_t must lie in (0, 1) and change alpha_t = 1 - beta_t in float64; "
                         f"beta_{bad[0] + 1} = {betas[bad[0]]!r}")
    return betas


def _check_kept(steps, T):
    kept = np.asarray(steps)
    if kept.ndim != 1 or kept.size < 1 or not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(f"respace needs an int K or a 1-D integer array of steps, got {steps!r}")
    if kept.min() < 1 or kept.max() > T or np.unique(kept).size != kept.size:
        raise ValueError(f"respaced steps must be unique and in 1..T={T}, got {kept.tolist()}")
    return kept.astype(np.int64)


def _check_mapping(timesteps, T):
    if timesteps is None:
        return np.arange(T + 1)
    checks.shape("timesteps", timesteps, (T,), "Schedule", because=" (one original step per step)")
    if np.dtype(timesteps.dtype).kind not in "iu":
        raise TypeError(f"Schedule: timesteps must hold integer steps, got dtype {timesteps.dtype}")
    timesteps = np.asarray(timesteps, dtype=np.int64)
    if timesteps[0] < 1 or np.any(np.diff(timesteps) <= 0):
        raise ValueError(f"Schedule: timesteps must increase strictly from >= 1, got {timesteps.tolist()}")
    return np.concatenate([[0], timesteps])


def _snr(alpha_bars):
    """SNR_t = alpha_bar_t / (1 - alpha_bar_t); +inf at t = 0 (clean data)."""
    snr = np.full_like(alpha_bars, np.inf)
    snr[1:] = alpha_bars[1:] / (1.0 - alpha_bars[1:])
    return snr
