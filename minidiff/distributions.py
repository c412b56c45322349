"""Gaussian (and Bernoulli) math shared by the VAE and diffusion objectives, docs/gaussian_kl.md.

Every function but `gaussian_kl_full` (arrays (..., d) and (..., d, d)) is elementwise on arrays or
Tensors (written with `minidiff.ops`, so gradients flow) and returns nats; the `DiagonalGaussian`
methods sum over all axes but the first and return nats per sample, shape (B,). Shapes follow
docs/notation.md.
"""
import math

import numpy as np

from minidiff import checks, ops
from minidiff.autograd import Function, unwrap
from minidiff.backend import xp_of

LOG_2PI = math.log(2.0 * math.pi)
LEVELS = 256  # the default grid of the discretised decoder: 8-bit data, x = k/127.5 - 1, k = 0..255
GRID_TOLERANCE = 1e-2  # how far (in grid steps) data may sit from a level: float32 rounding, not a wrong grid


# ---------------------------------------------------------------- Gaussian densities and KL

def _exp(a):
    """e^a; a Python number stays a float64 number (ops would make it a float32 array)."""
    return math.exp(a) if isinstance(a, (int, float)) else ops.exp(a)


def gaussian_log_density(x, mean, logvar):
    """log N(x; mu, sigma^2) = -1/2 (log 2 pi + log sigma^2 + (x - mu)^2 / sigma^2), eq. (K1), elementwise."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * _exp(-logvar))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mu1, s1^2) || N(mu2, s2^2)), elementwise, in nats, eq. (K2).

        KL = 1/2 (log s2^2 - log s1^2 + (s1^2 + (mu1 - mu2)^2) / s2^2 - 1)
    """
    return 0.5 * ((logvar2 - logvar1) + _exp(logvar1 - logvar2) - 1.0 + (mean1 - mean2) ** 2 * _exp(-logvar2))


def gaussian_kl_full(mean1, cov1, mean2, cov2):
    """KL(N(mu1, S1) || N(mu2, S2)) for full covariances, in nats, eq. (K6).

        KL = 1/2 (tr(S2^-1 S1) + (mu2 - mu1)^T S2^-1 (mu2 - mu1) - d + log det S2 - log det S1)

    Shapes (no broadcasting between axes of different meaning):
        mean1 (..., d) with cov1 (..., d, d), one batch shape `...` for both;  mean2 (..., d) with cov2 (..., d, d)
    The two Gaussians' batch shapes are equal (pairwise KLs), or one side has no batch axes at all (mean (d,),
    cov (d, d)): a single Gaussian, such as the prior N(0, I), compared with every member of the other side's
    batch. Anything else -- a batch of means with one shared covariance, batch shapes that merely broadcast
    ((3, 1) against (4,)) -- is a ValueError naming the argument. S1, S2 symmetric positive definite.
    Computed from the Cholesky factors S = L L^T: with D = L2^-1 (L1 - L2), L2^-1 L1 = I + D and
        tr(S2^-1 S1) - d = ||I + D||_F^2 - d = 2 tr(D) + ||D||_F^2,
    the Mahalanobis term is ||L2^-1 (mu2 - mu1)||^2 and log det S = 2 sum log diag L. Equal Gaussians give
    D = 0 and so exactly 0, and nearly equal ones keep their digits (no d - d cancellation).
    NumPy arrays (float64), not Tensors: no gradient. Returns (...,) nats, the batched side's batch shape.
    """
    from scipy.linalg import solve_triangular
    mean1, cov1 = _check_gaussian(mean1, cov1, "1")
    mean2, cov2 = _check_gaussian(mean2, cov2, "2")
    d = cov1.shape[-1]
    batch = _paired_batch(mean1, mean2, d)
    L1 = np.broadcast_to(_cholesky(cov1, "cov1"), batch + (d, d))
    L2 = np.broadcast_to(_cholesky(cov2, "cov2"), batch + (d, d))
    gap = np.broadcast_to(mean2 - mean1, batch + (d,))[..., None]                 # (..., d, 1)
    D = solve_triangular(L2, L1 - L2, lower=True)                                  # (..., d, d)
    trace_minus_d = 2.0 * np.trace(D, axis1=-2, axis2=-1) + np.sum(D ** 2, axis=(-2, -1))
    mahalanobis = np.sum(solve_triangular(L2, gap, lower=True) ** 2, axis=(-2, -1))
    log_det_ratio = 2.0 * np.sum(np.log(np.diagonal(L2, axis1=-2, axis2=-1))
                                 - np.log(np.diagonal(L1, axis1=-2, axis2=-1)), axis=-1)
    return 0.5 * (trace_minus_d + mahalanobis + log_det_ratio)


def _check_gaussian(mean, cov, which):
    """(mean, cov) as float64 arrays if mean is (..., d) and cov (..., d, d) with the same `...` (eq. K6's shapes)."""
    mean, cov = np.asarray(mean, dtype=np.float64), _check_covariance(cov, f"cov{which}")
    checks.shape(f"mean{which}", mean, cov.shape[:-1], "gaussian_kl_full",
                 because=f" (cov{which} is {cov.shape}: a mean (..., d) for a covariance (..., d, d), one batch shape)")
    return mean, cov


def _paired_batch(mean1, mean2, d):
    """The batch shape of the KLs: the two Gaussians' batch shapes are equal, or one side has none (a single one)."""
    if mean2.shape[-1] != d:
        raise ValueError(f"gaussian_kl_full: mean2 and cov2 must be of dimension d = {d} (that of mean1 and cov1), "
                         f"got mean2 of shape {mean2.shape}")
    b1, b2 = mean1.shape[:-1], mean2.shape[:-1]
    if b1 != b2 and b1 and b2:
        raise ValueError(f"gaussian_kl_full: mean2/cov2 must have batch shape {b1} (that of mean1/cov1) or none "
                         f"(a single Gaussian for the whole batch), got batch shape {b2}")
    return b1 or b2


def _check_covariance(cov, name):
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"gaussian_kl_full: {name} must be (..., d, d) square matrices, got shape {cov.shape}")
    if not np.allclose(cov, np.swapaxes(cov, -1, -2), rtol=1e-10, atol=1e-12):
        raise ValueError(f"gaussian_kl_full: {name} must be symmetric")
    return cov


def _cholesky(cov, name):
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(f"gaussian_kl_full: {name} must be positive definite "
                         "(its Cholesky factorisation failed)") from None


def kl_standard_normal(mean, logvar):
    """KL(N(mu, exp(s)) || N(0, 1)) = 1/2 (exp(s) - (1 + s) + mu^2), s the log-variance, eq. (K3).

    The Chapter 2 notes' VAE form (docs/errata.md X7), elementwise; summed over latent dims it is the VAE's KL term.
    """
    return 0.5 * (_exp(logvar) - (1.0 + logvar) + mean ** 2)


def kl_standard_normal_std(mean, std):
    """KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2), sigma the std, eq. (K4).

    The notes' form with sigma as a standard deviation (the Class 6 notes), elementwise.
    """
    return 0.5 * (mean ** 2 + std ** 2 - 1.0 - 2.0 * ops.log(std))


def sum_except_batch(x):
    """Sum over every axis but the first: (B, ...) -> (B,)."""
    return ops.sum(x, axis=tuple(range(1, len(x.shape)))) if len(x.shape) > 1 else x


class DiagonalGaussian:
    """N(mu, diag(sigma^2)) parameterised by mean and log-variance (the VAE encoder's outputs)."""

    def __init__(self, mean, logvar):
        if tuple(mean.shape) != tuple(logvar.shape):
            raise ValueError(f"mean and logvar must have one shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}")
        self.mean, self.logvar = mean, logvar

    @property
    def std(self):
        return ops.exp(0.5 * self.logvar)

    def rsample(self, eps=None, rng=None):
        """z = mu + sigma (.) eps, eps ~ N(0, I): the reparameterised sample, eq. (V3)."""
        if eps is None:
            if rng is None:
                raise ValueError("rsample needs eps or an rng (e.g. minidiff.default_rng(seed))")
            data = unwrap(self.mean)
            eps = rng.standard_normal(data.shape, dtype=data.dtype)
        if tuple(eps.shape) != tuple(self.mean.shape):
            raise ValueError(f"eps shape {tuple(eps.shape)} != mean shape {tuple(self.mean.shape)}")
        return self.mean + self.std * eps

    def log_prob(self, x):
        """log q(x) summed over all axes but the first: (B,) nats, eq. (K1)."""
        return sum_except_batch(gaussian_log_density(x, self.mean, self.logvar))

    def kl(self, other=None):
        """KL(self || other) summed over all axes but the first, (B,) nats; other=None means N(0, I), eq. (K2)/(K3)."""
        if other is None:
            return sum_except_batch(kl_standard_normal(self.mean, self.logvar))
        return sum_except_batch(normal_kl(self.mean, self.logvar, other.mean, other.logvar))


# ---------------------------------------------------------------- discretised Gaussian decoder

def _special(a):
    if xp_of(a).__name__ == "cupy":
        from cupyx.scipy import special
    else:
        from scipy import special
    return special


class LogNormalCDFDiff(Function):
    """y = log(Phi(b) - Phi(a)) for a < b (a may be -inf, b +inf), Phi the standard normal CDF.

    Forward is stable in both tails: for a >= 0 it uses Phi(b) - Phi(a) = Phi(-a) - Phi(-b), then
    log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi))), with lo < 0.
    Saved: a, b, y. VJP: da = -g phi(a) e^{-y}, db = g phi(b) e^{-y} (phi the normal density).
    """

    def forward(self, a, b):
        xp, special = xp_of(a), _special(a)
        upper_tail = a >= 0
        lo, hi = xp.where(upper_tail, -b, a), xp.where(upper_tail, -a, b)
        log_hi = special.log_ndtr(hi)
        self.a, self.b = a, b
        self.y = log_hi + xp.log(-xp.expm1(special.log_ndtr(lo) - log_hi))
        return self.y

    def backward(self, g):
        xp = xp_of(g)

        def density_ratio(x):  # phi(x) / (Phi(b) - Phi(a)), 0 at x = +-inf
            return xp.exp(-0.5 * x * x - 0.5 * LOG_2PI - self.y)
        da = -g * density_ratio(self.a) if self.needs_grad[0] else None
        db = g * density_ratio(self.b) if self.needs_grad[1] else None
        return da, db


def log_normal_cdf_diff(a, b):
    """log(Phi(b) - Phi(a)), elementwise, a < b (exact CDF; see LogNormalCDFDiff)."""
    return LogNormalCDFDiff.apply(a, b)


def approx_standard_normal_cdf(x):
    """Phi(x) ~ 1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the DDPM code's approximation, eq. (L7)."""
    return 0.5 * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_bin_edges(x, levels=LEVELS):
    """The bin (lower, upper) of each x on the K-level grid of [-1, 1], eq. (L5)-(L6); K = levels.

        levels x_k = -1 + 2k/(K - 1), k = 0..K-1;  bin of x_k = [x_k - h, x_k + h],  h = 1/(K - 1)
    with the lowest bin's lower edge at -inf and the highest bin's upper edge at +inf, so the K bins
    tile the real line. x: data (array or Tensor, used as a constant) that must lie on this grid;
    data of another grid (the 17-level digits scored as 8-bit) is refused with a ValueError.
    Returns two arrays of x's shape and dtype.
    """
    levels = checks.integer("levels", levels, minimum=2, where="discretized_bin_edges")
    data = unwrap(x)
    xp = xp_of(data)
    if float(data.min()) < -1.0 - 1e-6 or float(data.max()) > 1.0 + 1e-6:
        raise ValueError(f"x must lie in [-1, 1] ({levels} levels), got values in "
                         f"[{float(data.min())}, {float(data.max())}]")
    index = (data + 1.0) * ((levels - 1) / 2.0)  # k, up to rounding
    nearest = xp.rint(index)
    off = float(xp.abs(index - nearest).max())
    if off > GRID_TOLERANCE:
        raise ValueError(f"x must lie on the {levels}-level grid -1 + 2k/{levels - 1} of [-1, 1] (the data's own "
                         f"levels: a dataset's .levels), got a value {off:.3g} grid steps off it")
    half_width = 1.0 / (levels - 1)
    lower = xp.where(nearest == 0, -xp.inf, data - half_width).astype(data.dtype)
    upper = xp.where(nearest == levels - 1, xp.inf, data + half_width).astype(data.dtype)
    return lower, upper


def discretized_gaussian_log_likelihood(x, mean, log_scale, cdf="exact", levels=LEVELS):
    """log P(x) for x on the K-level grid of [-1, 1] under N(mean, exp(log_scale)^2), eq. (L5)-(L6).

        P(x) = Phi((x + h - mu)/s) - Phi((x - h - mu)/s),   h = 1/(K - 1) (1/255 for K = 256)
    with the lowest bin's lower edge at -inf and the highest bin's upper edge at +inf, so the
    K probabilities sum to 1 (`discretized_bin_edges`). levels: K, the data's number of grey levels
    (256 for 8-bit images, 17 for the 0..16 digits; `ImageDataset.levels`). Elementwise, nats.
    cdf: "exact" (default; the normal CDF in log space, accurate in the tails) or "tanh" (the DDPM
    reference code's approximation, with its 1e-12 floors), see docs/vlb_bits_per_dim.md.
    """
    checks.same_shape("discretized_gaussian_log_likelihood", x=x, mean=mean)
    if hasattr(log_scale, "shape"):
        checks.per_sample("log_scale", log_scale, x, "discretized_gaussian_log_likelihood")
    if cdf not in ("exact", "tanh"):
        raise ValueError(f"cdf must be 'exact' or 'tanh', got {cdf!r}")
    lower_edge, upper_edge = discretized_bin_edges(x, levels)
    xp = xp_of(lower_edge)
    bottom, top = xp.isinf(lower_edge), xp.isinf(upper_edge)
    inv_scale = _exp(-log_scale)
    # finite stand-ins where an edge is infinite (masked below), so no inf enters the gradient
    upper = (xp.where(top, 1.0, upper_edge).astype(lower_edge.dtype) - mean) * inv_scale
    lower = (xp.where(bottom, -1.0, lower_edge).astype(lower_edge.dtype) - mean) * inv_scale
    if cdf == "exact":
        return log_normal_cdf_diff(ops.where(bottom, -math.inf, lower), ops.where(top, math.inf, upper))
    cdf_upper, cdf_lower = approx_standard_normal_cdf(upper), approx_standard_normal_cdf(lower)
    log_cdf_upper = ops.log(ops.clip(cdf_upper, 1e-12, None))
    log_one_minus_cdf_lower = ops.log(ops.clip(1.0 - cdf_lower, 1e-12, None))
    log_bin = ops.log(ops.clip(cdf_upper - cdf_lower, 1e-12, None))
    return ops.where(bottom, log_cdf_upper, ops.where(top, log_one_minus_cdf_lower, log_bin))


# ---------------------------------------------------------------- Bernoulli decoder

def bernoulli_log_likelihood(x, logits):
    """log Bern(x; sigmoid(l)) = x l - softplus(l), elementwise nats, x in {0, 1}, eq. (K5).

    softplus(l) = max(l, 0) + log(1 + exp(-|l|)) is evaluated without overflow.
    """
    checks.same_shape("bernoulli_log_likelihood", x=x, logits=logits)
    return x * logits - (ops.relu(logits) + ops.log(1.0 + ops.exp(-ops.abs(logits))))
