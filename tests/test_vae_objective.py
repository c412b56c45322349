"""The VAE objective against a linear-Gaussian model where log p(x) and the posterior are exact.

    p(z) = N(0, I_L),  p(x | z) = N(W z + b, sigma^2 I_D),  W = Q diag(d) with orthonormal Q
    => p(x) = N(b, W W^T + sigma^2 I),  p(z | x) = N(P^{-1} W^T (x - b) / sigma^2, P^{-1}),  P = I + diag(d^2) / sigma^2
(diagonal, so a DiagonalGaussian encoder can represent it exactly). docs/vae_elbo.md.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from minidiff.distributions import DiagonalGaussian, bernoulli_log_likelihood, normal_kl
from minidiff.testing import gradcheck
from minidiff.vae_objective import elbo, importance_weighted_bound, reconstruction_log_likelihood, vae_loss
from tests.strategies_diffusion import seeds


class LinearGaussianModel:
    def __init__(self, seed, latent, data, log_sigma2):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((data, latent)))
        self.d = rng.uniform(0.3, 2.0, latent)
        self.W, self.b, self.log_sigma2 = q * self.d, rng.normal(size=data), log_sigma2
        self.sigma2 = math.exp(log_sigma2)

    def decode(self, z):
        return z @ self.W.T + self.b

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma2 * np.eye(len(self.b))
        return stats.multivariate_normal(self.b, cov).logpdf(x)

    def posterior(self, x):
        precision = 1.0 + self.d ** 2 / self.sigma2
        mean = (x - self.b) @ self.W / self.sigma2 / precision
        return DiagonalGaussian(mean, np.broadcast_to(-np.log(precision), mean.shape).copy())


models = st.builds(LinearGaussianModel, seeds(), st.integers(1, 3), st.integers(3, 6), st.floats(-3, 0))


def _data(model, n, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(model.d)))
    return model.decode(z) + math.sqrt(model.sigma2) * rng.standard_normal((n, len(model.b)))


@given(models, seeds(), st.integers(1, 20))
def test_iwae_with_the_exact_posterior_is_log_px_for_every_draw(model, seed, K):
    """With q = p(z | x) every importance weight equals p(x), so L_K = log p(x) exactly, for any K."""
    x = _data(model, 4, seed)
    bound = importance_weighted_bound(x, model.posterior(x), model.decode, K, np.random.default_rng(seed),
                                      decoder_logvar=model.log_sigma2)
    np.testing.assert_allclose(bound, model.log_px(x), rtol=1e-9)


@given(models, seeds(), st.floats(0.0, 1.0))
def test_expected_elbo_is_log_px_minus_kl_to_the_true_posterior(model, seed, offset):
    """E_q[ELBO] = log p(x) - KL(q || p(z | x)): Monte Carlo over z within 5 standard errors."""
    x = _data(model, 1, seed)
    exact = model.posterior(x)
    q = DiagonalGaussian(exact.mean + offset, exact.logvar - offset)
    n = 4000
    rng = np.random.default_rng(seed + 1)
    qn = DiagonalGaussian(np.repeat(q.mean, n, axis=0), np.repeat(q.logvar, n, axis=0))
    z = qn.rsample(rng=rng)
    values = elbo(np.repeat(x, n, axis=0), qn, model.decode(z), decoder_logvar=model.log_sigma2)["elbo"]
    gap = normal_kl(q.mean, q.logvar, exact.mean, exact.logvar).sum()
    target = model.log_px(x) - gap
    assert abs(values.mean() - target) < 5 * values.std(ddof=1) / math.sqrt(n) + 1e-9
    assert target <= model.log_px(x) + 1e-12


@given(models, seeds())
def test_iwae_tightens_with_K_towards_log_px(model, seed):
    """E[L_1] <= E[L_10] <= E[L_100] <= log p(x) for a mismatched q (means of 400 bounds each)."""
    x = _data(model, 1, seed)
    exact = model.posterior(x)
    q = DiagonalGaussian(np.repeat(exact.mean + 0.5, 400, axis=0), np.repeat(exact.logvar + 0.7, 400, axis=0))
    xs, rng = np.repeat(x, 400, axis=0), np.random.default_rng(seed)
    bounds = [importance_weighted_bound(xs, q, model.decode, K, rng, decoder_logvar=model.log_sigma2)
              for K in (1, 10, 100)]
    means = [b.mean() for b in bounds]
    ses = [b.std(ddof=1) / 20 for b in bounds]
    log_px = model.log_px(x)
    assert means[0] < means[1] + 5 * math.hypot(ses[0], ses[1])
    assert means[1] < means[2] + 5 * math.hypot(ses[1], ses[2])
    assert means[2] <= log_px + 5 * ses[2]
    assert log_px - means[2] < log_px - means[0]


@given(models, seeds(), st.floats(0, 4))
def test_beta_weights_the_kl_and_the_loss_is_the_negative_mean(model, seed, beta):
    x = _data(model, 3, seed)
    q = model.posterior(x)
    out = model.decode(q.rsample(rng=np.random.default_rng(seed)))
    terms = elbo(x, q, out, beta=beta, decoder_logvar=model.log_sigma2)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - beta * terms["kl"], rtol=1e-12)
    np.testing.assert_allclose(terms["kl"], normal_kl(q.mean, q.logvar, 0.0, 0.0).sum(axis=1), rtol=1e-12)
    at_1 = elbo(x, q, out, beta=1.0, decoder_logvar=model.log_sigma2)["elbo"]
    if beta >= 1:  # KL >= 0, so ELBO_beta <= ELBO <= log p(x): beta >= 1 still bounds (docs/vae_elbo.md (V4))
        assert np.all(terms["elbo"] <= at_1)
    else:
        assert np.all(terms["elbo"] >= at_1)
    loss, metrics = vae_loss(x, q, out, beta=beta, decoder_logvar=model.log_sigma2)
    np.testing.assert_allclose(loss, -terms["elbo"].mean(), rtol=1e-12)
    assert set(metrics) == {"elbo", "reconstruction", "kl"}


@given(st.integers(1, 4), st.integers(1, 6), seeds())
def test_decoders_gaussian_learned_and_bernoulli(batch, dim, seed):
    rng = np.random.default_rng(seed)
    x, mean, logvar = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim)), rng.uniform(-2, 1, (batch, dim))
    learned = reconstruction_log_likelihood(x, (mean, logvar))
    np.testing.assert_allclose(learned, stats.norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(axis=1), rtol=1e-12)
    bits, logits = (rng.random((batch, dim)) < 0.5).astype(float), 3 * rng.normal(size=(batch, dim))
    np.testing.assert_allclose(reconstruction_log_likelihood(bits, logits, "bernoulli"),
                               bernoulli_log_likelihood(bits, logits).sum(axis=1), rtol=1e-12)


@given(st.integers(1, 4), st.integers(1, 6), seeds())
def test_notes_mse_reconstruction_is_a_gaussian_decoder_with_variance_one_half(batch, dim, seed):
    """The Chapter 2 notes' (x - x_hat)^2 (docs/errata.md X8):
    ||x - x_hat||^2 = -log N(x; x_hat, 1/2 I) - (D/2) log pi, an implicit sigma^2 = 1/2."""
    rng = np.random.default_rng(seed)
    x, x_hat = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))
    nll = -reconstruction_log_likelihood(x, x_hat, decoder_logvar=math.log(0.5))
    np.testing.assert_allclose(nll, ((x - x_hat) ** 2).sum(axis=1) + 0.5 * dim * math.log(math.pi), rtol=1e-12)


@given(st.integers(1, 3), st.integers(1, 4), seeds())
def test_elbo_gradcheck_through_the_reparameterised_sample(batch, latent, seed):
    rng = np.random.default_rng(seed)
    eps, x = rng.standard_normal((batch, latent)), rng.normal(size=(batch, latent))

    def objective(mean, logvar, decoder_weight):
        q = DiagonalGaussian(mean, logvar)
        return elbo(x, q, q.rsample(eps) * decoder_weight, beta=0.7)["elbo"]
    gradcheck(objective, [rng.normal(size=(batch, latent)), rng.uniform(-1, 1, (batch, latent)),
                          rng.normal(size=(batch, latent))])


def test_vae_objective_refuses_bad_arguments():
    q = DiagonalGaussian(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="likelihood"):
        elbo(np.zeros((2, 3)), q, np.zeros((2, 3)), likelihood="poisson")
    with pytest.raises(ValueError, match=r"decoder_output \(mean\) must have shape"):
        elbo(np.zeros((2, 3)), q, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="beta"):
        elbo(np.zeros((2, 3)), q, np.zeros((2, 3)), beta=-1.0)
    with pytest.raises(ValueError, match="K must be"):
        importance_weighted_bound(np.zeros((2, 3)), q, lambda z: z, 0, np.random.default_rng(0))


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), seeds())
def test_the_defaults_are_the_plain_elbo_with_a_unit_variance_gaussian_decoder(batch, dim, latent, seed):
    """eq. (V1), (V2): beta = 1 and decoder log-variance 0 unless given, in the ELBO, the loss, the
    reconstruction term and the importance-weighted bound alike."""
    rng = np.random.default_rng(seed)
    x, out = rng.standard_normal((batch, dim)), rng.standard_normal((batch, dim))
    q = DiagonalGaussian(rng.standard_normal((batch, latent)), rng.standard_normal((batch, latent)))
    np.testing.assert_array_equal(reconstruction_log_likelihood(x, out),
                                  reconstruction_log_likelihood(x, out, "gaussian", 0.0))
    for key, value in elbo(x, q, out).items():
        np.testing.assert_array_equal(value, elbo(x, q, out, "gaussian", 1.0, 0.0)[key])
    np.testing.assert_array_equal(vae_loss(x, q, out)[0], vae_loss(x, q, out, "gaussian", 1.0, 0.0)[0])
    w = rng.standard_normal((latent, dim))

    def decode(z):
        return z @ w
    np.testing.assert_array_equal(importance_weighted_bound(x, q, decode, 3, np.random.default_rng(seed)),
                                  importance_weighted_bound(x, q, decode, 3, np.random.default_rng(seed),
                                                            "gaussian", 0.0))


@given(seeds(), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
def test_a_decoder_log_variance_given_as_an_array_or_with_the_mean_is_the_same_gaussian(seed, batch, dim, latent):
    """eq. (V2): log N(x; mu, sigma^2) does not care how log sigma^2 arrives: as decoder_logvar (a number, a 0-d
    or an (B, D) array) or as the second half of a (mean, logvar) decoder output; the importance-weighted
    bound (V5) takes such a decoder too, its K z_k shared with the same draws."""
    rng = np.random.default_rng(seed)
    x, mean = rng.standard_normal((2, batch, dim))
    for logvar in (rng.normal(0, 0.5, (batch, dim)), np.asarray(rng.normal(0, 0.5))):
        np.testing.assert_allclose(reconstruction_log_likelihood(x, mean, decoder_logvar=logvar),
                                   reconstruction_log_likelihood(x, (mean, logvar)), rtol=1e-12)
    q = DiagonalGaussian(rng.standard_normal((batch, latent)), rng.normal(0, 0.5, (batch, latent)))
    w, log_sigma2 = rng.standard_normal((latent, dim)), np.asarray(rng.normal(0, 0.5))
    np.testing.assert_allclose(
        importance_weighted_bound(x, q, lambda z: (z @ w, log_sigma2), 3, np.random.default_rng(seed)),
        importance_weighted_bound(x, q, lambda z: z @ w, 3, np.random.default_rng(seed), decoder_logvar=log_sigma2),
        rtol=1e-12)
