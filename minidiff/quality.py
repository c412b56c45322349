"""Sample quality measured with a digits classifier (docs/results.md, docs/training.md §7).

For generated images x_1..x_n and a trained classifier with class probabilities p(y | x) and
penultimate-layer features f(x):
- confident fraction   (1/n) #{i : max_y p(y | x_i) > 0.9}            (are the samples legible?)
- label entropy        H(h) = -sum_y h_y log h_y  (nats), h = histogram of argmax_y p(y | x_i) / n
                       (mode coverage: log 10 = 2.303 when all ten digits appear equally)
- Fréchet distance     FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})      (docs/training.md eq. T15)
                       between Gaussians fitted to the features of the samples and of real held-out
                       images (the FID recipe, with our classifier in place of Inception).
FD has a finite-sample bias, so it is only compared between feature sets of equal size.
"""
import numpy as np

from minidiff import checks
from minidiff.backend import to_numpy


def _features(name, features, where):
    """features (n, d), n >= 2, finite, as float64."""
    checks.array_like(name, features, where)
    if np.dtype(features.dtype).kind not in "iuf":
        raise TypeError(f"{where}: {name} must hold real numbers, got dtype {features.dtype}")
    f = to_numpy(features).astype(np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{where}: {name} must be (n, d) with n >= 2, got shape {f.shape}")
    return checks.finite(name, f, where)


def _probabilities(probs, where):
    """probs (n, K), n >= 1, each entry in [0, 1]."""
    checks.floating("probs", probs, where)
    p = to_numpy(probs)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"{where}: probs must be (n, K) with n, K >= 1, got shape {p.shape}")
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(f"{where}: probs must lie in [0, 1] (class probabilities), got values outside or NaN")
    return p


def _classifier(classifier, where):
    for method in ("predict_proba", "features"):
        checks.function(f"classifier.{method}", getattr(classifier, method, None), where)


def _images(where, **named):
    """Image batches of one item shape, each with n >= 2 (a covariance needs two)."""
    items = list(named.items())
    for name, x in items:
        checks.array_like(name, x, where)
        if len(x.shape) < 2 or x.shape[0] < 2:
            raise ValueError(f"{where}: {name} must be (n, ...) images with n >= 2, got shape {tuple(x.shape)}")
    first, ref = items[0]
    for name, x in items[1:]:
        checks.shape(name, x, (None,) + tuple(ref.shape[1:]), where, because=f" (the image shape of {first})")


def gaussian_fit(features):
    """Mean (d,) and unbiased covariance (d, d) of features (n, d), in float64."""
    f = _features("features", features, "gaussian_fit")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s):
    """The symmetric square root of a positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(features_a, features_b):
    """Eq. (T15): the 2-Wasserstein distance squared between Gaussian fits of two feature sets.

    S_a S_b has the eigenvalues of S_a^{1/2} S_b S_a^{1/2} = M Mᵀ with M = S_a^{1/2} S_b^{1/2}, so
    tr((S_a S_b)^{1/2}) = Σ_i σ_i(M), the sum of M's singular values: no complex round-off as with a
    general matrix square root, and no square root of the eigenvalues of M Mᵀ, which loses half the
    digits of the small ones (FD(a, a) was off by 4e-9 of tr S_a for an ill-conditioned S_a).
    """
    a = _features("features_a", features_a, "frechet_distance")
    b = _features("features_b", features_b, "frechet_distance")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: features_b must have d = {a.shape[1]} columns (that of features_a), "
                         f"got shape {b.shape}")
    mu_a, s_a = gaussian_fit(a)
    mu_b, s_b = gaussian_fit(b)
    cross = np.linalg.svd(_psd_sqrt(s_a) @ _psd_sqrt(s_b), compute_uv=False).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * cross)


def confident_fraction(probs, threshold=0.9):
    """Fraction of rows of probs (n, K) whose largest class probability exceeds `threshold`."""
    probs = _probabilities(probs, "confident_fraction")
    threshold = checks.real("threshold", threshold, minimum=0.0, maximum=1.0, where="confident_fraction")
    return float((probs.max(axis=1) > threshold).mean())


def label_entropy(probs, num_classes=None):
    """Entropy (nats) of the histogram of predicted labels argmax_y p(y | x_i) over the n rows."""
    probs = _probabilities(probs, "label_entropy")
    if num_classes is not None:
        checks.integer("num_classes", num_classes, minimum=probs.shape[1], where="label_entropy")
    counts = np.bincount(probs.argmax(axis=1), minlength=num_classes or probs.shape[1])
    h = counts[counts > 0] / counts.sum()
    return float(-(h * np.log(h)).sum())


def sample_quality(classifier, samples, reference, requested_labels=None):
    """All sample-quality numbers for images `samples` against real images `reference` (equal n advised).

    classifier: a models.Classifier (or anything with .predict_proba(x) and .features(x) on arrays).
    requested_labels: for a conditional model, the label each sample was asked to show.
    """
    _classifier(classifier, "sample_quality")
    _images("sample_quality", samples=samples, reference=reference)
    if requested_labels is not None:
        checks.shape("requested_labels", requested_labels, (len(samples),), "sample_quality",
                     because=" (one per sample)")
    probs = classifier.predict_proba(samples)
    result = {"n_samples": int(len(samples)), "n_reference": int(len(reference)),
              "confident_fraction": confident_fraction(probs),
              "label_entropy_nats": label_entropy(probs),
              "frechet_distance": frechet_distance(classifier.features(samples), classifier.features(reference))}
    if requested_labels is not None:
        result["requested_label_accuracy"] = float((probs.argmax(axis=1) == to_numpy(requested_labels)).mean())
    return result


def reference_distance(classifier, x_train, x_test, n, seed=0):
    """FD between n real training images (a seeded subset) and the test images: the yardstick."""
    _classifier(classifier, "reference_distance")
    _images("reference_distance", x_train=x_train, x_test=x_test)
    n = checks.integer("n", n, minimum=2, maximum=len(x_train), where="reference_distance")
    seed = checks.integer("seed", seed, minimum=0, where="reference_distance")
    idx = np.random.default_rng(seed).permutation(len(x_train))[:n]
    return frechet_distance(classifier.features(x_train[idx]), classifier.features(x_test))
