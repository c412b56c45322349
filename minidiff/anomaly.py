"""Anomaly detection with a VAE's lower bounds on log p(x), and the AUROC that grades it (docs/anomaly.md).

    (N1) s_ELBO(x) = −ELBO(x) = −(E_{q(z|x)}[log p(x|z)] − KL(q(z|x) ‖ N(0, I)))      nats per image
    (N2) s_K(x)    = −L_K(x)  = −log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q   nats per image
    (N3) AUROC = P(s(x_a) > s(x_n)) + ½ P(s(x_a) = s(x_n)),  x_a anomalous, x_n normal

An input the model finds improbable gets a high score. The bounds are those of docs/vae_elbo.md
(V1) and (V5), computed by minidiff.vae_objective; the AUROC is scikit-learn's roc_auc_score.
"""
import numpy as np
from sklearn.metrics import roc_auc_score

from minidiff import checks, vae_objective
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp
from minidiff.distributions import DiagonalGaussian


def _scores(name, scores):
    """Scores (an array, Tensor or list of real numbers) as a non-empty finite 1-D float64 array."""
    try:
        a = np.ravel(to_numpy(scores.data if isinstance(scores, Tensor) else scores))
    except ValueError:  # a ragged list
        a = np.asarray([None])
    if a.dtype.kind not in "iuf":
        raise TypeError(f"auroc: {name} must hold real scores, got {type(scores).__name__} of dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"auroc: needs both groups non-empty, got an empty {name}")
    return checks.finite(name, a.astype(np.float64), where="auroc")


def auroc(normal_scores, anomalous_scores):
    """Area under the ROC curve of a score meant to be higher on anomalies, eq. (N3); 0.5 is chance."""
    normal, anomalous = _scores("normal_scores", normal_scores), _scores("anomalous_scores", anomalous_scores)
    labels = np.concatenate([np.zeros(normal.size), np.ones(anomalous.size)])
    return float(roc_auc_score(labels, np.concatenate([normal, anomalous])))


def anomaly_scores(vae, x, rng, K=50, batch_size=256):
    """s_ELBO, eq. (N1), and s_K, eq. (N2), per image in nats.

    s_ELBO averages the one-sample ELBO over K draws z ~ q(z|x) (the KL term is in closed form);
    s_K is the importance-weighted bound with the same K. vae: an unconditional
    minidiff.models.vae.VAE; x: (N, C, H, W) images of its image_shape. Returns
    {"elbo": (N,), "iw": (N,)} host float64 arrays; the same rng stream gives the same scores.
    """
    from minidiff.models.vae import VAE
    checks.instance("vae", vae, VAE, "a minidiff.models.vae.VAE", "anomaly_scores")
    if getattr(vae, "num_classes", 0):
        raise ValueError("anomaly_scores: vae must be an unconditional VAE (num_classes = 0): an anomaly has no label")
    K = checks.integer("K", K, minimum=1, where="anomaly_scores")
    batch_size = checks.integer("batch_size", batch_size, minimum=1, where="anomaly_scores")
    checks.generator("rng", rng, "anomaly_scores")
    checks.shape("x", x, (None,) + vae.image_shape, where="anomaly_scores", because=" (the VAE's image_shape)")
    scores = {"elbo": [], "iw": []}
    logvar = vae._decoder_logvar()
    with no_grad():
        for start in range(0, len(x), batch_size):
            batch = xp().asarray(x[start:start + batch_size])
            target, q = vae.likelihood_target(batch), vae.posterior(Tensor(batch))
            repeated = DiagonalGaussian(*(xp().concatenate([a.data] * K) for a in (q.mean, q.logvar)))
            decoded = vae.decode(Tensor(repeated.rsample(rng=rng)))
            terms = vae_objective.elbo(xp().concatenate([target] * K), repeated, decoded, vae.likelihood, 1.0, logvar)
            elbo = to_numpy(terms["elbo"].data).reshape(K, len(batch)).mean(axis=0)             # (B,)
            iw = vae_objective.importance_weighted_bound(target, q, vae.decode, K, rng, vae.likelihood, logvar)
            scores["elbo"].append(-elbo.astype(np.float64))
            scores["iw"].append(-to_numpy(iw.data).astype(np.float64))
    return {name: np.concatenate(parts) for name, parts in scores.items()}
