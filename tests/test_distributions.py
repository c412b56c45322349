"""Gaussian KL, densities, the discretised decoder and Bernoulli, docs/gaussian_kl.md, docs/vlb_bits_per_dim.md."""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import stats

from minidiff import Tensor, distributions
from minidiff.distributions import (DiagonalGaussian, approx_standard_normal_cdf, bernoulli_log_likelihood,
                                    discretized_bin_edges, discretized_gaussian_log_likelihood, gaussian_kl_full,
                                    gaussian_log_density,
                                    kl_standard_normal, kl_standard_normal_std, log_normal_cdf_diff, normal_kl)
from minidiff.testing import gradcheck
from tests.strategies import arrays, shapes
from tests.strategies_diffusion import seeds

GRID = np.arange(256) / 127.5 - 1.0  # the 256 levels of [-1, 1]
LEVELS = st.integers(2, 300)  # K grey levels: 2 (black and white), 17 (the digits), 256 (8-bit), ...


def grid(levels):
    """The K levels -1 + 2k/(K - 1), k = 0..K-1, of [-1, 1]."""
    return np.arange(levels) * (2.0 / (levels - 1)) - 1.0
means = st.floats(-3, 3)
logvars = st.floats(-6, 3)


# ---------------------------------------------------------------- KL

@given(means, logvars, means, logvars)
def test_normal_kl_matches_monte_carlo(m1, lv1, m2, lv2):
    """KL = E_{x ~ N1}[log N1(x) - log N2(x)]: mean of n draws within 5 standard errors."""
    n = 20000
    x = m1 + np.exp(0.5 * lv1) * np.random.default_rng(7).standard_normal(n)
    log_ratio = stats.norm.logpdf(x, m1, np.exp(0.5 * lv1)) - stats.norm.logpdf(x, m2, np.exp(0.5 * lv2))
    kl = normal_kl(np.array(m1), np.array(lv1), np.array(m2), np.array(lv2))
    assert abs(log_ratio.mean() - kl) <= 5 * log_ratio.std(ddof=1) / np.sqrt(n) + 1e-12


@given(shapes(min_dims=1), seeds())
def test_kl_is_nonnegative_and_zero_exactly_for_equal_gaussians(shape, seed):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=shape), rng.normal(size=shape)
    lv1, lv2 = rng.uniform(-4, 2, shape), rng.uniform(-4, 2, shape)
    assert np.all(normal_kl(m1, lv1, m2, lv2) >= 0)
    assert np.all(normal_kl(m1, lv1, m1, lv1) == 0)
    differ = (m1 != m2) | (lv1 != lv2)
    assert np.all(normal_kl(m1, lv1, m2, lv2)[differ] > 0)
    assert np.all(normal_kl(m1, lv1, m1 + 1e-3, lv1)[...] > 0) and np.all(normal_kl(m1, lv1, m1, lv1 + 1e-3) > 0)


@given(shapes(min_dims=1), seeds())
def test_the_notes_two_vae_kl_forms_agree(shape, seed):
    """1/2 (mu^2 + sigma^2 - 1 - log sigma^2) (Class 6 notes)
    = 1/2 (e^s - (1 + s) + mu^2) (Chapter 2 notes, docs/errata.md X7)
    = normal_kl to N(0, 1)."""
    rng = np.random.default_rng(seed)
    mean, logvar = rng.normal(size=shape), rng.uniform(-5, 3, shape)
    with_std = kl_standard_normal_std(mean, np.exp(0.5 * logvar))
    with_logvar = kl_standard_normal(mean, logvar)
    np.testing.assert_allclose(with_std, with_logvar, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(with_logvar, normal_kl(mean, logvar, 0.0, 0.0), rtol=1e-10, atol=1e-14)


def test_normal_kl_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    m1, m2, lv1, lv2 = rng.normal(size=(4, 50))
    p = torch.distributions.Normal(torch.tensor(m1), torch.tensor(np.exp(0.5 * lv1)))
    q = torch.distributions.Normal(torch.tensor(m2), torch.tensor(np.exp(0.5 * lv2)))
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q).numpy(),
                               rtol=1e-12)


@given(shapes(min_dims=1, max_dims=3), seeds())
def test_kl_and_log_density_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    m1, m2, lv1, lv2 = (rng.normal(size=shape) for _ in range(4))
    gradcheck(lambda a, b, c, d: normal_kl(a, b, c, d), [m1, lv1, m2, lv2])
    gradcheck(lambda x, m, lv: gaussian_log_density(x, m, lv), [m2, m1, lv1])
    gradcheck(lambda m, lv: kl_standard_normal(m, lv), [m1, lv1])


@given(shapes(min_dims=1), seeds())
def test_gaussian_log_density_matches_scipy(shape, seed):
    rng = np.random.default_rng(seed)
    x, mean, logvar = rng.normal(size=shape), rng.normal(size=shape), rng.uniform(-5, 3, shape)
    np.testing.assert_allclose(gaussian_log_density(x, mean, logvar),
                               stats.norm.logpdf(x, mean, np.exp(0.5 * logvar)), rtol=1e-12)


@given(st.integers(1, 4), st.integers(1, 5), seeds())
def test_diagonal_gaussian_rsample_log_prob_and_kl(batch, dim, seed):
    rng = np.random.default_rng(seed)
    q = DiagonalGaussian(rng.normal(size=(batch, dim)), rng.uniform(-3, 1, (batch, dim)))
    eps = rng.standard_normal((batch, dim))
    z = q.rsample(eps)
    np.testing.assert_allclose(z, q.mean + np.exp(0.5 * q.logvar) * eps, rtol=1e-14)
    np.testing.assert_allclose(q.log_prob(z), stats.norm.logpdf(z, q.mean, q.std).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(q.kl(), kl_standard_normal(q.mean, q.logvar).sum(axis=1), rtol=1e-14)
    p = DiagonalGaussian(np.zeros_like(q.mean), np.zeros_like(q.mean))
    np.testing.assert_allclose(q.kl(p), q.kl(), rtol=1e-12, atol=1e-14)
    draws = DiagonalGaussian(np.full((20000, 1), q.mean[0, 0]), np.full((20000, 1), q.logvar[0, 0])).rsample(
        rng=np.random.default_rng(3))
    assert abs(draws.mean() - q.mean[0, 0]) < 5 * q.std[0, 0] / np.sqrt(20000)
    with pytest.raises(ValueError, match="eps or an rng"):
        q.rsample()
    with pytest.raises(ValueError, match="logvar must have shape"):
        DiagonalGaussian(np.zeros(3), np.zeros(2))


# ---------------------------------------------------------------- the discretised decoder

@given(LEVELS, st.floats(-5, 5), st.floats(-12, 4), st.sampled_from(["exact", "tanh"]))
def test_discretised_bin_probabilities_sum_to_one(levels, mean, log_scale, cdf):
    """The K bins of a K-level grid tile the real line: their probabilities add up to 1 for any N(mu, s^2)."""
    x = grid(levels)
    log_p = discretized_gaussian_log_likelihood(x, np.full(levels, mean), np.full(levels, log_scale), cdf=cdf,
                                                levels=levels)
    total = np.exp(log_p).sum()
    # neighbouring bins round their shared edge separately (x + h vs x' - h): ~1e-16/scale in z
    edge_rounding = 1e-15 * np.exp(-log_scale)
    assert abs(total - 1.0) < (1e-12 if cdf == "exact" else levels * 1e-12 + 1e-12) + edge_rounding
    assert np.all(log_p <= 0)


@given(LEVELS, st.integers(1, 40), seeds(), st.sampled_from(["exact", "tanh"]))
def test_on_a_K_level_grid_a_sure_decoder_scores_0_bits_and_a_uniform_one_log2_K(levels, n, seed, cdf):
    """Data on K levels: a decoder with all its mass in each pixel's bin costs 0 bits; one that spreads its
    mass evenly over the K levels (the CDF of U[-1 - h, 1 + h] on the decoder's bins, h = 1/(K - 1))
    costs log2 K bits per dimension; and the same data scored on another grid is refused."""
    rng = np.random.default_rng(seed)
    x = grid(levels)[rng.integers(0, levels, n)]
    x[0], x[-1] = -1.0, 1.0  # both open edge bins
    half = 1.0 / (levels - 1)
    sure = discretized_gaussian_log_likelihood(x, x, np.full(n, np.log(half / 40)), cdf=cdf, levels=levels)
    assert np.abs(sure).max() < 1e-12
    lower, upper = discretized_bin_edges(x, levels)
    uniform_cdf = lambda u: np.clip((u + 1 + half) / (2 + 2 * half), 0.0, 1.0)  # noqa: E731
    bits = -np.log2(uniform_cdf(upper) - uniform_cdf(lower))
    np.testing.assert_allclose(bits, np.log2(levels), rtol=1e-12)
    if levels >= 3:  # an interior level of the K-grid lies on no other grid of K' = K + 1 or K - 1 levels
        for other in (levels - 1, levels + 1):
            with pytest.raises(ValueError, match=f"{other}-level grid"):
                discretized_gaussian_log_likelihood(grid(levels), grid(levels), np.zeros(levels), levels=other)


def test_the_digits_take_exactly_their_17_levels_and_refuse_the_8_bit_grid():
    from minidiff import data
    digits = data.digits()
    assert digits.levels == 17
    np.testing.assert_array_equal(np.unique(digits.x_train), grid(17).astype(np.float32))
    lower, upper = discretized_bin_edges(digits.x_test, digits.levels)
    np.testing.assert_allclose((upper - lower)[np.isfinite(upper - lower)], 2 / 16)  # bin width 2/16
    with pytest.raises(ValueError, match="256-level grid"):
        discretized_gaussian_log_likelihood(digits.x_test, digits.x_test, np.zeros(digits.x_test.shape))


@given(st.floats(-1.5, 1.5), st.floats(-6, 1))
def test_exact_bins_match_scipy_cdf_and_tanh_is_close(mean, log_scale):
    scale = np.exp(log_scale)
    upper = np.where(GRID > 0.999, np.inf, GRID + 1 / 255)
    lower = np.where(GRID < -0.999, -np.inf, GRID - 1 / 255)
    p = stats.norm.cdf(upper, mean, scale) - stats.norm.cdf(lower, mean, scale)
    exact = np.exp(discretized_gaussian_log_likelihood(GRID, np.full(256, mean), np.full(256, log_scale)))
    np.testing.assert_allclose(exact, p, rtol=1e-9, atol=1e-15)
    approx = np.exp(discretized_gaussian_log_likelihood(GRID, np.full(256, mean), np.full(256, log_scale), "tanh"))
    assert np.abs(approx - p).max() < 1e-3  # the tanh CDF is off by up to ~2e-4 per edge


@example(20.0, 1.0)  # deep in the upper tail, where Phi(b) - Phi(a) computed directly is 1 - 1 = 0
@example(-20.0, 1.0)
@given(st.floats(-40, 40), st.floats(1e-3, 5))
def test_log_normal_cdf_diff_is_accurate_in_both_tails(a, width):
    """log(Phi(b) - Phi(a)) against 50-digit mpmath, far into both tails (where Phi(b) - Phi(a) cancels)."""
    mpmath = pytest.importorskip("mpmath")
    b = a + width
    with mpmath.workdps(60):  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): subtract the two small numbers
        reference = float(mpmath.log(mpmath.ncdf(b) - mpmath.ncdf(a) if a < 0 else mpmath.ncdf(-a) - mpmath.ncdf(-b)))
    y = log_normal_cdf_diff(np.array(a), np.array(b))
    np.testing.assert_allclose(y, reference, rtol=1e-10)


@given(shapes(min_dims=1, max_dims=3), seeds())
def test_log_normal_cdf_diff_and_decoder_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-4, 4, shape)
    b = a + rng.uniform(0.05, 2, shape)
    gradcheck(lambda u, v: log_normal_cdf_diff(u, v), [a, b])
    x = GRID[rng.integers(0, 256, shape)]
    x.flat[0] = 1.0  # an edge bin: +inf upper edge
    for cdf in ("exact", "tanh"):
        gradcheck(lambda m, s: discretized_gaussian_log_likelihood(x, m, s, cdf=cdf),
                  [x + rng.uniform(-0.2, 0.2, shape), rng.uniform(-3, -1, shape)], rtol=1e-4, atol=1e-6)


def test_decoder_refuses_data_outside_minus_one_one():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discretized_gaussian_log_likelihood(np.array([1.5]), np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="cdf"):
        discretized_gaussian_log_likelihood(np.array([0.5]), np.zeros(1), np.zeros(1), cdf="erf")


@given(arrays((7,), -4.0, 4.0))
def test_tanh_cdf_is_the_ddpm_approximation(x):
    """atanh(2 Phi_tanh(x) - 1) is the odd cubic sqrt(2/pi)(x + 0.044715 x^3), eq. (L7): not Phi itself
    (for Phi the same transform is not a cubic), but within 3e-4 of it."""
    approx = approx_standard_normal_cdf(x)
    np.testing.assert_allclose(np.arctanh(2 * approx - 1), np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3),
                               rtol=1e-9, atol=1e-12)
    assert np.abs(approx - stats.norm.cdf(x)).max() < 3e-4


@given(LEVELS, arrays((5,), -1.5, 1.5), arrays((5,), -4.0, 0.0), seeds())
def test_tanh_decoder_is_the_tanh_cdf_over_the_bin_edges(levels, mean, log_scale, seed):
    """cdf="tanh": P(x) = Phi_tanh((x + h - mu)/s) - Phi_tanh((x - h - mu)/s), eq. (L5) with (L7), the
    open edge bins 1 - Phi_tanh(lower) and Phi_tanh(upper), each floored at 1e-12 before the log."""
    x = grid(levels)[np.random.default_rng(seed).integers(0, levels, 5)]
    x[0] = 1.0
    s, h = np.exp(log_scale), 1.0 / (levels - 1)

    def phi(z):
        return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    up, lo = phi((x + h - mean) / s), phi((x - h - mean) / s)
    p = np.where(x > 1 - h / 2, 1 - lo, np.where(x < -1 + h / 2, up, up - lo))
    got = discretized_gaussian_log_likelihood(x, mean, log_scale, cdf="tanh", levels=levels)
    np.testing.assert_allclose(got, np.log(np.maximum(p, 1e-12)), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- Bernoulli

@given(arrays((3, 4), -30.0, 30.0), seeds())
def test_bernoulli_log_likelihood_matches_the_textbook_form_and_is_stable(logits, seed):
    x = (np.random.default_rng(seed).random(logits.shape) < 0.5).astype(float)
    got = bernoulli_log_likelihood(x, logits)
    p = stats.logistic.cdf(logits)
    expected = x * stats.logistic.logcdf(logits) + (1 - x) * stats.logistic.logsf(logits)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(got)) and np.all(got <= 0) and p.shape == got.shape
    gradcheck(lambda lg: bernoulli_log_likelihood(x, lg), [np.clip(logits, -5, 5) + 0.01])


def test_bernoulli_matches_torch_bce_with_logits():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits, x = rng.normal(size=(5, 7)) * 4, (rng.random((5, 7)) < 0.3).astype(float)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(x), reduction="none")
    np.testing.assert_allclose(bernoulli_log_likelihood(x, logits), -bce.numpy(), rtol=1e-12, atol=1e-15)
    t = Tensor(logits, requires_grad=True)
    bernoulli_log_likelihood(x, t).sum().backward()
    tl = torch.tensor(logits, requires_grad=True)
    (-torch.nn.functional.binary_cross_entropy_with_logits(tl, torch.tensor(x), reduction="sum")).backward()
    np.testing.assert_allclose(t.grad, tl.grad.numpy(), rtol=1e-10)


# ---------------------------------------------------------------- full-covariance KL, eq. (K6)

def _gaussian(rng, d, scale=1.0):
    """A random mean (d,) and an SPD covariance A A^T / d + 0.1 I (d, d)."""
    a = scale * rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


@given(st.integers(1, 6), seeds())
def test_full_kl_is_nonnegative_and_zero_exactly_for_equal_gaussians(d, seed):
    rng = np.random.default_rng(seed)
    (m1, c1), (m2, c2) = _gaussian(rng, d), _gaussian(rng, d)
    assert gaussian_kl_full(m1, c1, m1, c1) == 0.0
    assert gaussian_kl_full(m1, c1, m2, c2) > 0.0
    assert gaussian_kl_full(m1, c1, m1 + 1e-3, c1) > 0.0 and gaussian_kl_full(m1, c1, m1, 1.01 * c1) > 0.0


@given(shapes(min_dims=1, max_dims=1, max_side=6), seeds())
def test_full_kl_on_diagonal_covariances_is_the_sum_of_diagonal_kls(shape, seed):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=shape), rng.normal(size=shape)
    lv1, lv2 = rng.uniform(-4, 2, shape), rng.uniform(-4, 2, shape)
    full = gaussian_kl_full(m1, np.diag(np.exp(lv1)), m2, np.diag(np.exp(lv2)))
    np.testing.assert_allclose(full, normal_kl(m1, lv1, m2, lv2).sum(), rtol=1e-10, atol=1e-12)


@given(st.integers(1, 4), seeds())
def test_full_kl_matches_monte_carlo(d, seed):
    """KL = E_{x ~ N1}[log N1(x) - log N2(x)]: mean of n draws within 5 standard errors."""
    rng = np.random.default_rng(seed)
    (m1, c1), (m2, c2) = _gaussian(rng, d), _gaussian(rng, d)
    n = 20000
    x = rng.multivariate_normal(m1, c1, size=n)
    log_ratio = stats.multivariate_normal(m1, c1).logpdf(x) - stats.multivariate_normal(m2, c2).logpdf(x)
    kl = gaussian_kl_full(m1, c1, m2, c2)
    assert abs(log_ratio.mean() - kl) <= 5 * log_ratio.std(ddof=1) / np.sqrt(n) + 1e-12


def test_full_kl_batches_matches_torch_and_refuses_bad_covariances():
    rng = np.random.default_rng(3)
    pairs = [(_gaussian(rng, 3), _gaussian(rng, 3)) for _ in range(4)]
    m1, c1, m2, c2 = (np.stack([p[i][j] for p in pairs]) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    batched = gaussian_kl_full(m1, c1, m2, c2)
    assert batched.shape == (4,)
    np.testing.assert_allclose(batched, [gaussian_kl_full(*p[0], *p[1]) for p in pairs], rtol=1e-12)
    torch = pytest.importorskip("torch")
    p = torch.distributions.MultivariateNormal(torch.tensor(m1), torch.tensor(c1))
    q = torch.distributions.MultivariateNormal(torch.tensor(m2), torch.tensor(c2))
    np.testing.assert_allclose(batched, torch.distributions.kl_divergence(p, q).numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="cov2 must be positive definite"):
        gaussian_kl_full(m1[0], c1[0], m2[0], -c2[0])
    with pytest.raises(ValueError, match="cov1 must be symmetric"):
        gaussian_kl_full(m1[0], c1[0] + np.triu(np.ones((3, 3)), 1), m2[0], c2[0])
    with pytest.raises(ValueError, match=r"mean1 must have shape \(3,\)"):
        gaussian_kl_full(m1[0, :2], c1[0], m2[0], c2[0])


def _batched(rng, batch, d):
    """len(batch)-axis stacks of _gaussian: means batch + (d,), covariances batch + (d, d)."""
    pairs = [_gaussian(rng, d) for _ in range(int(np.prod(batch)))]
    return (np.stack([m for m, _ in pairs]).reshape(batch + (d,)),
            np.stack([c for _, c in pairs]).reshape(batch + (d, d)))


@given(shapes(min_dims=1, max_dims=2, max_side=4), st.integers(1, 4), st.booleans(), seeds())
def test_full_kl_single_gaussian_against_a_batch(batch, d, single_first, seed):
    """One side without batch axes (a prior such as N(0, I)) is compared with every member of the other batch:
    the same numbers as stacking it B times, in either argument order."""
    rng = np.random.default_rng(seed)
    (m, c), (mb, cb) = _gaussian(rng, d), _batched(rng, batch, d)
    stacked_m, stacked_c = np.broadcast_to(m, mb.shape), np.broadcast_to(c, cb.shape)
    args, stacked = ((m, c, mb, cb), (stacked_m, stacked_c, mb, cb)) if single_first else \
        ((mb, cb, m, c), (mb, cb, stacked_m, stacked_c))
    kl = gaussian_kl_full(*args)
    assert kl.shape == batch
    np.testing.assert_allclose(kl, gaussian_kl_full(*stacked), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shapes1, shapes2, named", [
    (((4, 3), (3, 3)), ((3,), (3, 3)), r"mean1 must have shape \(3,\)"),          # a batch of means, one covariance
    (((3,), (4, 3, 3)), ((3,), (3, 3)), r"mean1 must have shape \(4, 3\)"),       # one mean, a batch of covariances
    (((3,), (3, 3)), ((2, 3), (5, 2, 3, 3)), r"mean2 must have shape \(5, 2, 3\)"),  # leading axis missing
    (((3, 1, 2), (3, 1, 2, 2)), ((4, 2), (4, 2, 2)), r"mean2/cov2 must have batch shape \(3, 1\)"),  # (3,1) vs (4,)
    (((4, 2), (4, 2, 2)), ((5, 2), (5, 2, 2)), r"mean2/cov2 must have batch shape \(4,\)"),
    (((2,), (2, 2)), ((3,), (3, 3)), r"mean2 and cov2 must be of dimension d = 2"),
    (((2,), (2, 3)), ((2,), (2, 2)), r"cov1 must be \(\.\.\., d, d\) square"),
])
def test_full_kl_refuses_shapes_the_math_does_not_define(shapes1, shapes2, named):
    """mean (..., d) goes with cov (..., d, d) of the same batch shape, and the two Gaussians' batch shapes are
    equal or one is empty: batch axes that would merely broadcast are refused, naming the argument."""
    def gaussian(mean_shape, cov_shape):
        return np.zeros(mean_shape), np.broadcast_to(np.eye(*cov_shape[-2:]), cov_shape)
    with pytest.raises(ValueError, match="gaussian_kl_full: " + named):
        gaussian_kl_full(*gaussian(*shapes1), *gaussian(*shapes2))


def _data(a):
    return a.data if isinstance(a, Tensor) else np.asarray(a)


ELEMENTWISE = [  # (function, argument names, the argument others must match, the per-sample ones, positive ones)
    (distributions.gaussian_log_density, ("x", "mean", "logvar"), "x", ("logvar",), ()),
    (distributions.kl_standard_normal, ("mean", "logvar"), "mean", ("logvar",), ()),
    (distributions.kl_standard_normal_std, ("mean", "std"), "mean", ("std",), ("std",)),
    (distributions.normal_kl, ("mean1", "logvar1", "mean2", "logvar2"), "mean1", ("logvar1", "logvar2"), ()),
    (distributions.discretized_gaussian_log_likelihood, ("x", "mean", "log_scale"), "x", ("log_scale",), ()),
]


@pytest.mark.parametrize("fn, names, like, per_sample, positive", ELEMENTWISE, ids=lambda v: getattr(v, "__name__", ""))
@given(seed=seeds(), batch=st.integers(2, 4), dim=st.integers(2, 4))
def test_elementwise_formulas_take_each_argument_at_the_datas_shape_or_per_sample_and_refuse_a_broadcast(
        fn, names, like, per_sample, positive, seed, batch, dim):
    """Each formula is elementwise in its (B, D) arguments: a variance (log-variance, std, log-scale) may also be
    one value per sample, (B, 1), or a 0-d array, and then equals its broadcast to (B, D); any other shape,
    (1, D), (B, 1) for a mean, or (B, D + 1), is refused with the argument's name rather than broadcast."""
    rng = np.random.default_rng(seed)
    grid = np.round((rng.uniform(-1, 1, (batch, dim)) + 1) * 127.5) / 127.5 - 1          # x on the 256-level grid
    full = {n: (grid if n == "x" else rng.uniform(0.5, 1.5, (batch, dim)) if n in positive
                else rng.normal(0.0, 0.5, (batch, dim))) for n in names}
    for name in per_sample:
        for value in (full[name][:, :1], np.asarray(full[name][0, 0])):
            args = dict(full, **{name: value})
            want = fn(**dict(full, **{name: np.broadcast_to(value, (batch, dim)).copy()}))
            np.testing.assert_allclose(_data(fn(**args)), _data(want), rtol=1e-12)
    for name in names:
        if name == like:
            continue
        bad_shapes = [(1, dim), (batch, dim + 1)] + ([] if name in per_sample else [(batch, 1)])
        # the others as arrays, or as numbers (0-d arrays for the per-sample ones): neither stops the checks
        scalars = {n: (np.asarray(full[n][0, 0]) if n in per_sample else float(full[n][0, 0]))
                   for n in names if n not in (like, name)}
        for others in (full, dict(full, **scalars)):
            for shape in bad_shapes:
                with pytest.raises(ValueError, match=f"{name} must have shape"):
                    fn(**dict(others, **{name: np.broadcast_to(full[name][:1, :1], shape).copy()}))


@given(seed=seeds(), levels=st.sampled_from([2, 17, 256]))
def test_the_distributions_refuse_what_their_formulas_do_not_define(seed, levels):
    """The K-level grid needs K >= 2 and data in [-1, 1] (one step beyond either end is refused, not given an
    edge); a covariance must be symmetric (to 1e-10); a standard deviation positive; the CDF difference
    log(Phi(b) - Phi(a)) takes a and b of one shape."""
    rng = np.random.default_rng(seed)
    step = 2.0 / (levels - 1)
    x = rng.integers(0, levels, (3, 2)) * step - 1.0
    with pytest.raises(ValueError, match="levels must be >= 2"):
        distributions.discretized_bin_edges(x, 1)
    with pytest.raises(ValueError, match="levels must be >= 2"):
        distributions.discretized_gaussian_log_likelihood(x, x, np.zeros_like(x), levels=1)
    for beyond in (1.0 + step, -1.0 - step):
        with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
            distributions.discretized_bin_edges(np.where(np.arange(2) == 0, beyond, x), levels)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + np.eye(3)
    skew = cov.copy()
    skew[0, 1] += 1e-9 * (1.0 + abs(cov[0, 1]))
    with pytest.raises(ValueError, match="cov1 must be symmetric"):
        distributions.gaussian_kl_full(np.zeros(3), skew, np.zeros(3), cov)
    std = rng.uniform(0.5, 1.5, (3, 2))
    std[rng.integers(0, 3), rng.integers(0, 2)] = 0.0
    with pytest.raises(ValueError, match="std must be > 0"):
        distributions.kl_standard_normal_std(np.zeros((3, 2)), std)
    for a_shape, b_shape in (((3, 1), (3, 2)), ((3, 2), (3, 1))):
        with pytest.raises(ValueError, match="b must have shape"):
            distributions.log_normal_cdf_diff(np.zeros(a_shape) - 1.0, np.ones(b_shape))
