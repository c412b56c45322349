"""The VAE objective: the ELBO with a beta weight, and the importance-weighted bound, docs/vae_elbo.md.

    log p(x) >= ELBO = E_{q(z|x)}[log p_theta(x | z)] - KL(q(z|x) || N(0, I))          eq. (V1)
    log p(x) >= L_K  = E[log (1/K) sum_k p_theta(x | z_k) p(z_k) / q(z_k | x)],  z_k ~ q   eq. (V5)

Units: nats per sample, shape (B,), summed over the data (or latent) dimensions. Works on
arrays and on Tensors (written with minidiff.ops), so the same code is the training loss.
The encoder gives q(z|x) as a `DiagonalGaussian`; the decoder's output is a mean (Gaussian
with fixed log-variance), a (mean, logvar) pair (Gaussian with learned variance), or logits
(Bernoulli, for binarised data).
"""
import math

from minidiff import checks, ops
from minidiff.autograd import unwrap
from minidiff.backend import xp_of
from minidiff.distributions import (DiagonalGaussian, bernoulli_log_likelihood, gaussian_log_density,
                                    sum_except_batch)

LIKELIHOODS = ("gaussian", "bernoulli")


def reconstruction_log_likelihood(x, decoder_output, likelihood="gaussian", decoder_logvar=0.0):
    """log p_theta(x | z), (B,) nats, eq. (V2).

    gaussian: decoder_output = mean with fixed log sigma^2 = decoder_logvar, or (mean, logvar) learned;
        log p = sum_i -1/2 (log 2 pi + log sigma^2 + (x_i - mean_i)^2 / sigma^2)
    bernoulli: decoder_output = logits l; log p = sum_i x_i l_i - softplus(l_i), x in {0, 1}.
    """
    checks.one_of("likelihood", likelihood, LIKELIHOODS, "reconstruction_log_likelihood")
    checks.batch("reconstruction_log_likelihood", x=x)
    if not hasattr(decoder_logvar, "shape"):
        checks.real("decoder_logvar", decoder_logvar, where="reconstruction_log_likelihood")
    if likelihood == "bernoulli":
        checks.shape("decoder_output (logits)", decoder_output, tuple(x.shape), "reconstruction_log_likelihood",
                     because=" (that of x)")
        return sum_except_batch(bernoulli_log_likelihood(x, decoder_output))
    mean, logvar = decoder_output if isinstance(decoder_output, tuple) else (decoder_output, decoder_logvar)
    checks.shape("decoder_output (mean)", mean, tuple(x.shape), "reconstruction_log_likelihood",
                 because=" (that of x)")
    if hasattr(logvar, "shape"):  # one log sigma^2 for all (0-d), or one per element
        if len(logvar.shape):
            checks.shape("decoder_output (logvar)", logvar, tuple(x.shape), "reconstruction_log_likelihood",
                         because=" (that of x, or 0-d)")
    else:
        checks.real("decoder_logvar", logvar, where="reconstruction_log_likelihood")
    return sum_except_batch(gaussian_log_density(x, mean, logvar))


def elbo(x, posterior, decoder_output, likelihood="gaussian", beta=1.0, decoder_logvar=0.0):
    """ELBO_beta = log p_theta(x | z) - beta KL(q(z|x) || N(0, I)) for one z ~ q(z|x), eq. (V1)/(V4).

    posterior: q(z|x) as a DiagonalGaussian; decoder_output: the decoder applied to its rsample.
    beta = 1 is the ELBO; since KL >= 0, ELBO_beta <= ELBO <= log p(x) for beta >= 1 (a looser bound);
    only beta < 1 can exceed log p(x).
    Returns {"elbo": (B,), "reconstruction": (B,), "kl": (B,)} in nats per sample.
    """
    beta = checks.real("beta", beta, minimum=0.0, where="elbo")
    _check_posterior(x, posterior, "elbo")
    reconstruction = reconstruction_log_likelihood(x, decoder_output, likelihood, decoder_logvar)
    kl = posterior.kl()
    return {"elbo": reconstruction - beta * kl, "reconstruction": reconstruction, "kl": kl}


def _check_posterior(x, posterior, where):
    """posterior is a DiagonalGaussian over the same batch as x."""
    if not isinstance(posterior, DiagonalGaussian):
        raise TypeError(f"{where}: posterior must be a DiagonalGaussian (q(z|x)), got {type(posterior).__name__}")
    checks.batch(where, x=x, **{"posterior.mean": posterior.mean})


def vae_loss(x, posterior, decoder_output, likelihood="gaussian", beta=1.0, decoder_logvar=0.0):
    """Loss = -mean over the batch of ELBO_beta, nats per sample; returns (loss, metrics of batch means)."""
    terms = elbo(x, posterior, decoder_output, likelihood, beta, decoder_logvar)
    loss = -ops.mean(terms["elbo"])
    metrics = {name: float(unwrap(value).mean()) for name, value in terms.items()}
    return loss, metrics


def importance_weighted_bound(x, posterior, decode, K, rng, likelihood="gaussian", decoder_logvar=0.0):
    """L_K = log (1/K) sum_k w_k, w_k = p_theta(x | z_k) N(z_k; 0, I) / q(z_k | x), z_k ~ q, eq. (V5).

    decode(z) -> decoder output for z of shape (K B, ...). L_1 is a one-sample ELBO; E[L_K] grows
    with K towards log p(x) (Burda et al. 2016). Returns (B,) nats.
    """
    K = checks.integer("K", K, minimum=1, where="importance_weighted_bound")
    _check_posterior(x, posterior, "importance_weighted_bound")
    checks.function("decode", decode, "importance_weighted_bound")
    checks.generator("rng", rng, "importance_weighted_bound")
    mean, logvar = posterior.mean, posterior.logvar
    batch = x.shape[0]
    data = unwrap(mean)
    eps = rng.standard_normal((K,) + tuple(data.shape), dtype=data.dtype)
    z = ops.reshape(mean + posterior.std * eps, (K * batch,) + tuple(data.shape[1:]))
    x_rep = ops.concatenate([x] * K, axis=0)
    q = DiagonalGaussian(ops.concatenate([mean] * K, axis=0), ops.concatenate([logvar] * K, axis=0))
    zeros = xp_of(data).zeros(z.shape, dtype=data.dtype)
    decoded = decode(z)
    checks.shape("decode(z)", decoded[0] if isinstance(decoded, tuple) else decoded, tuple(x_rep.shape),
                 "importance_weighted_bound", because=" (that of x repeated K times)")
    log_w = (reconstruction_log_likelihood(x_rep, decoded, likelihood, decoder_logvar)
             + sum_except_batch(gaussian_log_density(z, zeros, zeros)) - q.log_prob(z))
    return ops.logsumexp(ops.reshape(log_w, (K, batch)), axis=0) - math.log(K)
