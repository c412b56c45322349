"""The denoising autoencoder as an attractor (docs/dae.md): the optimal DAE on Gaussian data, the identity
r(x) − x ≈ σ² ∇ log p(x) and its σ² trend, a trained DAE against the closed form, and the sampler (DAE4)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

import minidiff
from minidiff.models.dae import (DAE, attractor_sample, dae_score, gaussian_optimal_denoiser, gaussian_score)
from minidiff.train import TrainConfig, Trainer
from tests.test_models import _param_check


@st.composite
def gaussians(draw, max_dim=3):
    """(μ (D,), Σ (D, D)) with Σ = Q diag(λ) Qᵀ, eigenvalues in [0.2, 3], a random rotation Q."""
    D = draw(st.integers(1, max_dim))
    seed = draw(st.integers(0, 2 ** 31))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    lam = np.array(draw(st.lists(st.floats(0.2, 3.0), min_size=D, max_size=D)))
    return rng.uniform(-1, 1, D), (q * lam) @ q.T


sigmas = st.floats(0.05, 2.0)


@settings(max_examples=10, deadline=None)
@given(gaussians(), sigmas, st.integers(0, 2 ** 31))
def test_optimal_denoiser_is_the_least_squares_regression_of_x_on_the_noisy_x(gaussian, sigma, seed):
    """(DAE2): the best function of x̃ in squared error is E[x | x̃]; for Gaussians it is affine, so the
    least-squares affine fit of x on x̃ from samples must reach μ + Σ (Σ + σ² I)⁻¹ (x̃ − μ)."""
    mean, cov = gaussian
    rng = np.random.default_rng(seed)
    n, D = 40000, len(mean)
    x = rng.multivariate_normal(mean, cov, n)
    x_tilde = x + sigma * rng.standard_normal((n, D))
    design = np.concatenate([x_tilde, np.ones((n, 1))], axis=1)
    coef = np.linalg.lstsq(design, x, rcond=None)[0]                      # x ≈ x̃ A + b
    probe = mean + rng.standard_normal((50, D))
    fitted = np.concatenate([probe, np.ones((50, 1))], axis=1) @ coef
    scale = np.sqrt(np.trace(cov) / D)
    np.testing.assert_allclose(fitted, gaussian_optimal_denoiser(mean, cov, sigma)(probe), atol=0.05 * scale + 0.03)


@given(gaussians(), sigmas, st.integers(0, 2 ** 31))
def test_the_optimal_reconstruction_minus_x_is_sigma_squared_times_the_smoothed_score(gaussian, sigma, seed):
    """(DAE3) exactly: (r*(x) − x)/σ² = ∇ log N(x; μ, Σ + σ² I), the score of p_σ = p ∗ N(0, σ² I); the
    score function itself is checked against central differences of SciPy's log density."""
    mean, cov = gaussian
    D = len(mean)
    x = mean + np.random.default_rng(seed).standard_normal((4, D))
    smoothed = cov + sigma ** 2 * np.eye(D)
    r = gaussian_optimal_denoiser(mean, cov, sigma)
    np.testing.assert_allclose(dae_score(r, x, sigma), gaussian_score(mean, smoothed)(x), rtol=1e-9, atol=1e-9)
    h, e = 1e-5, np.eye(D)
    log_p = multivariate_normal(mean, smoothed).logpdf
    numeric = np.stack([(log_p(x + h * e[i]) - log_p(x - h * e[i])) / (2 * h) for i in range(D)], axis=-1)
    np.testing.assert_allclose(gaussian_score(mean, smoothed)(x), numeric.reshape(x.shape), rtol=1e-5, atol=1e-6)


@given(gaussians(), st.integers(0, 2 ** 31))
def test_the_dae_score_tends_to_the_data_score_with_an_error_proportional_to_sigma_squared(gaussian, seed):
    """(DAE3) as σ → 0 (Alain & Bengio): (r*(x) − x)/σ² − ∇ log p(x) = σ² Σ⁻¹ (Σ + σ² I)⁻¹ (x − μ), so the
    error divided by σ² tends to ‖Σ⁻² (x − μ)‖ and halving σ divides the error by about 4."""
    mean, cov = gaussian
    x = mean + np.random.default_rng(seed).standard_normal((1, len(mean)))
    exact = gaussian_score(mean, cov)(x)
    limit = np.linalg.norm(np.linalg.inv(cov) @ np.linalg.inv(cov) @ (x - mean)[0])
    errors = []
    for sigma in (0.2, 0.1, 0.05, 0.025, 0.0125):
        estimate = dae_score(gaussian_optimal_denoiser(mean, cov, sigma), x, sigma)
        errors.append(np.linalg.norm(estimate - exact))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3.0) & (ratios < 4.0 + 1e-9)), ratios   # (λ + σ²)/(λ + σ²/4) · 4 ∈ (3, 4]
    assert errors[-1] / 0.0125 ** 2 == pytest.approx(limit, rel=0.01)


def _gaussian_2d():
    q = np.array([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]])
    return np.array([0.3, -0.2]), (q * np.array([1.0, 0.15])) @ q.T


def test_a_trained_dae_learns_the_optimal_denoiser_and_its_score_on_gaussian_data():
    """(DAE1) → (DAE2): the MLP DAE trained on samples of a correlated 2-D Gaussian reconstructs like the
    closed-form r*, and (r(x) − x)/σ² estimates the smoothed score, within a few per cent of ‖r* − x‖."""
    mean, cov = _gaussian_2d()
    sigma = 0.5
    x_train = np.random.default_rng(0).multivariate_normal(mean, cov, 4096).astype(np.float32)
    minidiff.manual_seed(0)
    model = DAE(image_shape=(2,), latent_dim=2, hidden=64, noise_std=sigma, output="linear")
    config = TrainConfig(steps=800, batch_size=256, lr=1e-2, warmup_steps=20, ema_decay=0.99, seed=0, progress=False,
                         checkpoint_every=0, log_every=10 ** 6)
    trainer = Trainer(model, config, x_train, np.zeros(len(x_train), np.int64)).fit()
    x = (mean + np.random.default_rng(1).multivariate_normal(np.zeros(2), cov + sigma ** 2 * np.eye(2), 500))
    x = x.astype(np.float32)                                   # where the corrupted inputs lie: x̃ ~ p_σ
    with trainer.averaged_weights():
        learned = model.reconstruct(x).astype(np.float64)
        learned_score = dae_score(model.reconstruct, x, sigma)
    optimal = gaussian_optimal_denoiser(mean, cov, sigma)(x)
    displacement = np.linalg.norm(optimal - x, axis=1).mean()
    assert np.linalg.norm(learned - optimal, axis=1).mean() < 0.1 * displacement
    true_score = gaussian_score(mean, cov + sigma ** 2 * np.eye(2))(x)
    assert np.linalg.norm(learned_score - true_score, axis=1).mean() < 0.1 * np.linalg.norm(true_score, axis=1).mean()
    untrained = DAE(image_shape=(2,), latent_dim=2, hidden=64, noise_std=sigma, output="linear").reconstruct(x)
    assert np.linalg.norm(untrained - optimal, axis=1).mean() > displacement  # the bound is not met by chance


@given(gaussians(), sigmas, st.floats(0.05, 1.0), st.integers(0, 60), st.integers(0, 2 ** 31))
def test_the_attractor_sampler_contracts_to_the_mean_at_the_closed_form_rate(gaussian, sigma, eta, steps, seed):
    """(DAE4) with r*: x_{k+1} − μ = (I − η K)(x_k − μ), K = σ² (Σ + σ² I)⁻¹, so x_k − μ = (I − η K)^k (x_0 − μ);
    the fixed point r(x) = x is the mode μ."""
    mean, cov = gaussian
    D = len(mean)
    x0 = mean + 3 * np.random.default_rng(seed).standard_normal((5, D))
    x_k, trajectory = attractor_sample(gaussian_optimal_denoiser(mean, cov, sigma), x0, eta, steps,
                                       return_trajectory=True)
    K = sigma ** 2 * np.linalg.inv(cov + sigma ** 2 * np.eye(D))
    contraction = np.linalg.matrix_power(np.eye(D) - eta * K, steps)
    np.testing.assert_allclose(x_k - mean, (x0 - mean) @ contraction.T, rtol=1e-9, atol=1e-9)
    assert len(trajectory) == steps + 1 and trajectory[0] is x0 and trajectory[-1] is x_k
    np.testing.assert_allclose(attractor_sample(gaussian_optimal_denoiser(mean, cov, sigma), mean[None], eta, 5),
                               mean[None], atol=1e-12)


def test_the_noisy_attractor_sampler_is_langevin_with_the_closed_form_stationary_covariance():
    """(DAE4) with noise √(2ησ²) z and r*: in the eigenbasis of Σ (eigenvalue λ, k = σ²/(λ + σ²)) the chain is
    AR(1) with stationary variance 2 (λ + σ²)/(2 − η k), which tends to p_σ's λ + σ² as η → 0."""
    mean, cov = _gaussian_2d()
    sigma, eta = 0.5, 0.6
    lam, q = np.linalg.eigh(cov)
    k = sigma ** 2 / (lam + sigma ** 2)
    stationary = (q * (2 * (lam + sigma ** 2) / (2 - eta * k))) @ q.T
    rng = np.random.default_rng(0)
    x = attractor_sample(gaussian_optimal_denoiser(mean, cov, sigma), np.tile(mean, (20000, 1)), eta, 150,
                         noise_std=sigma, rng=rng)
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=0.03)
    np.testing.assert_allclose(np.cov(x, rowvar=False), stationary, atol=0.03)
    smoothed = cov + sigma ** 2 * np.eye(2)
    assert np.abs(stationary - smoothed).max() > 0.08   # the test tells the finite-η law from p_σ


def test_dae_gradcheck_figures_and_bad_input(tmp_path):
    from minidiff import data
    minidiff.manual_seed(0)
    model = DAE((1, 4, 4), latent_dim=3, hidden=5, noise_std=0.4, dtype=np.float64)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 4, 4))
    _param_check(model, "encoder.1.weight", lambda: model.loss((x, None), np.random.default_rng(3))[0])
    _param_check(model, "decoder.2.weight", lambda: model.loss((x, None), np.random.default_rng(3))[0])
    clean = model.loss((x, None), np.random.default_rng(3))[0].item()
    assert model.reconstruct(x).shape == x.shape and np.all(np.abs(model.reconstruct(x)) < 1)
    assert clean != pytest.approx(((model.reconstruct(x) - x) ** 2).mean())   # the loss sees corrupted inputs
    ds = data.digits()
    image_model = DAE(ds.image_shape, latent_dim=4, hidden=8)
    paths = image_model.figures(str(tmp_path), ds, None, np.random.default_rng(0))
    assert {"attractor_from_noisy.png", "attractor_from_uniform.png"} <= {p.split("/")[-1] for p in paths}
    for bad, message in ((dict(noise_std=0.0), "noise_std must be > 0"), (dict(output="relu"), "output must be")):
        with pytest.raises(ValueError, match=message):
            DAE(**bad)
    with pytest.raises(ValueError, match="eta must be > 0"):
        attractor_sample(model.reconstruct, x, 0.0, 3)
    with pytest.raises(ValueError, match="needs an rng"):
        attractor_sample(model.reconstruct, x, 0.5, 3, noise_std=0.1)
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_optimal_denoiser(np.zeros(2), np.diag([1.0, -1.0]), 0.5)


def test_dae_score_trend_reports_the_sigma_squared_shrinkage_of_the_closed_form_error():
    from minidiff.experiments import dae_score_trend
    result = dae_score_trend(sigmas=(0.4, 0.04), steps=30, n_train=512)
    assert set(result) == {0.4, 0.04} and set(result[0.4]) == {"optimal_vs_data_score", "trained_vs_data_score",
                                                                "trained_vs_smoothed_score"}
    assert result[0.04]["optimal_vs_data_score"] < result[0.4]["optimal_vs_data_score"] / 20
