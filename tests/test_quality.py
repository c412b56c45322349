"""Sample-quality metrics (minidiff/quality.py): Fréchet distance laws, entropy, confidence."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import linalg

from minidiff import quality

seeds = st.integers(0, 2 ** 32 - 1)


def _features(seed, n, d, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d))
    return shift + scale * rng.standard_normal((n, d)) @ mix


@given(seeds, st.integers(1, 6))
def test_frechet_matches_the_general_matrix_square_root(seed, d):
    a, b = _features(seed, 40, d), _features(seed + 1, 50, d, shift=0.5, scale=1.5)
    mu_a, s_a = a.mean(0), np.cov(a, rowvar=False).reshape(d, d)
    mu_b, s_b = b.mean(0), np.cov(b, rowvar=False).reshape(d, d)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-8)


@given(seeds, st.integers(1, 5))
def test_frechet_is_a_symmetric_nonnegative_distance(seed, d):
    a, b = _features(seed, 30, d), _features(seed + 7, 30, d, shift=1.0)
    scale = np.trace(np.cov(a, rowvar=False).reshape(d, d))  # round-off is relative to the traces
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-12 * scale)
    assert quality.frechet_distance(a, b) == pytest.approx(quality.frechet_distance(b, a), rel=1e-8, abs=1e-10)
    assert quality.frechet_distance(a, b) >= -1e-9


@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(0.1, 3), st.floats(0.1, 3))
def test_frechet_of_1d_gaussians_is_closed_form(m1, m2, s1, s2):
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2; use exact-moment samples
    z = np.array([-1.0, 1.0])[:, None] * np.sqrt(0.5)  # mean 0, unbiased variance 1
    assert quality.frechet_distance(m1 + s1 * z, m2 + s2 * z) == pytest.approx(
        (m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-9, abs=1e-9)


@given(seeds, st.integers(1, 4))
def test_frechet_is_translation_invariant_and_grows_with_a_shift(seed, d):
    a, b = _features(seed, 30, d), _features(seed + 3, 30, d)
    shift = np.random.default_rng(seed).standard_normal(d)
    assert quality.frechet_distance(a + shift, b + shift) == pytest.approx(
        quality.frechet_distance(a, b), rel=1e-6, abs=1e-8)
    assert quality.frechet_distance(a, a + shift) == pytest.approx((shift ** 2).sum(), rel=1e-6)


@given(st.integers(1, 10), st.integers(1, 60))
def test_label_entropy_of_uniform_and_single_labels(k, reps):
    probs = np.tile(np.eye(10)[:k], (reps, 1))
    assert quality.label_entropy(probs) == pytest.approx(np.log(k), abs=1e-12)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_confident_fraction_counts_rows_above_threshold(tops):
    probs = np.stack([[p, 1 - p] for p in tops])
    expected = np.mean([max(p, 1 - p) > 0.9 for p in tops])
    assert quality.confident_fraction(probs) == pytest.approx(expected)


def test_bad_feature_shapes():
    with pytest.raises(ValueError, match="n >= 2"):
        quality.frechet_distance(np.ones((1, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"features_b must have d = 3 columns \(that of features_a\), got shape "
                                         r"\(5, 4\)"):
        quality.frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4))
