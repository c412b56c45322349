"""VAE anomaly detection (docs/anomaly.md): the AUROC against its pairwise definition, the two scores
against the bounds they negate written out by hand, and the digits-0-8 experiment on a tiny configuration."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

import minidiff
from minidiff import cli
from minidiff.anomaly import anomaly_scores, auroc
from minidiff.models.vae import CVAE, VAE

# a few distinct integers mixed with floats, so ties within and between the groups are common
score_lists = st.lists(st.integers(-4, 4).map(float) | st.floats(-10, 10, allow_subnormal=False),
                       min_size=1, max_size=30)


@given(score_lists, score_lists)
def test_auroc_is_the_probability_that_an_anomaly_outscores_a_normal_input(normal, anomalous):
    """(N3): the AUROC equals the count over all pairs of P(s_a > s_n) + ½ P(s_a = s_n)."""
    a, n = np.array(anomalous)[:, None], np.array(normal)[None, :]
    pairwise = ((a > n).sum() + 0.5 * (a == n).sum()) / (a.size * n.size)
    got = auroc(normal, anomalous)
    assert got == pytest.approx(pairwise, abs=1e-12)
    assert auroc(anomalous, normal) == pytest.approx(1.0 - got, abs=1e-12)             # the roles swapped
    assert auroc(2 * np.array(normal), 2 * np.array(anomalous)) == pytest.approx(got, abs=1e-12)  # ranks only


def test_auroc_rejects_empty_groups_and_non_finite_scores():
    with pytest.raises(ValueError, match="both groups non-empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="normal_scores must be finite"):
        auroc([0.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="anomalous_scores must be finite"):
        auroc([0.0], [np.inf])


def _tiny_vae():
    """An untrained VAE whose q(z|x) is far from the prior (mean ≈ (1, −0.5), variance ≈ e⁻¹): KL ≈ 0.9 nats."""
    minidiff.manual_seed(0)
    model = VAE((1, 4, 4), latent_dim=2, channels=2, dtype=np.float64).eval()
    model.to_posterior.bias.data[:] = [1.0, -0.5, -1.0, -1.0]
    return model


def _log_weights(model, x, rng, draws):
    """By hand, for `draws` z ~ q(z|x) per image: log p(x|z), log N(z; 0, I) − log q(z|x), and the KL, (draws, B)."""
    q = model.posterior(minidiff.Tensor(x))
    mu, logvar = q.mean.numpy(), q.logvar.numpy()
    eps = rng.standard_normal((draws,) + mu.shape)
    z = mu + np.exp(0.5 * logvar) * eps                                                  # (draws, B, d)
    mean = model.decode(minidiff.Tensor(z.reshape(-1, mu.shape[1]))).numpy().reshape((draws,) + x.shape)
    s2 = float(np.exp(model.decoder_logvar.numpy()))
    log_lik = -0.5 * (np.log(2 * np.pi * s2) + (x - mean) ** 2 / s2).sum(axis=(2, 3, 4))
    log_prior_over_q = (-0.5 * z ** 2 + 0.5 * eps ** 2 + 0.5 * logvar).sum(axis=2)
    kl = 0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar).sum(axis=1)
    return log_lik, log_prior_over_q, kl


def test_the_scores_are_the_negated_elbo_and_importance_weighted_bound():
    """(N1), (N2) against the Gaussian decoder's density, the prior and q written out in NumPy: the K = 400
    −ELBO score matches −(E_q log p(x|z) − KL) from 8000 independent draws, and the K = 400 −L_K score the
    mean of 20 independent L_400 estimates, within 5 standard errors; −L_K < −ELBO (L_K ≥ ELBO)."""
    model = _tiny_vae()
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 4, 4))
    scores = anomaly_scores(model, x, np.random.default_rng(1), K=400)
    log_lik, log_ratio, kl = _log_weights(model, x, np.random.default_rng(2), 8000)
    elbo = log_lik - kl                                                                   # (8000, B)
    se = elbo.std(axis=0) * (1 / np.sqrt(8000) + 1 / np.sqrt(400))
    assert np.all(np.abs(scores["elbo"] + elbo.mean(axis=0)) < 5 * se)
    bounds = logsumexp((log_lik + log_ratio).reshape(20, 400, -1), axis=1) - np.log(400)     # (20, B)
    se = bounds.std(axis=0, ddof=1) * np.sqrt(1 / 20 + 1)
    assert np.all(np.abs(scores["iw"] + bounds.mean(axis=0)) < 5 * se)
    assert np.all(scores["iw"] < scores["elbo"])
    again = anomaly_scores(model, x, np.random.default_rng(1), K=400)
    np.testing.assert_array_equal(again["iw"], scores["iw"])                           # one stream, one answer


def test_anomaly_scores_refuse_a_conditional_vae_bad_k_and_wrong_images():
    x = np.zeros((2, 1, 4, 4))
    with pytest.raises(ValueError, match="unconditional VAE"):
        anomaly_scores(CVAE((1, 4, 4), latent_dim=2, channels=2, num_classes=3), x, np.random.default_rng(0))
    with pytest.raises(ValueError, match="K must be >= 1"):
        anomaly_scores(_tiny_vae(), x, np.random.default_rng(0), K=0)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 1, 4, 4\)"):
        anomaly_scores(_tiny_vae(), np.zeros((2, 1, 8, 8)), np.random.default_rng(0))


def test_vae_anomaly_experiment_on_a_tiny_configuration(tmp_path):
    from minidiff.experiments import vae_anomaly_figure
    path = vae_anomaly_figure(str(tmp_path / "anomaly.png"), steps=40, K=4)
    report = json.loads((tmp_path / "anomaly.json").read_text())
    assert report["counts"] == {"normal": 318, "digit 9": 180, "shapes": 400}   # digits 0-8 of the test split
    assert set(report["auroc"]) == {"digit 9", "shapes"}
    for aucs in report["auroc"].values():
        assert set(aucs) == {"elbo", "iw"} and all(0.0 <= a <= 1.0 for a in aucs.values())
    assert report["auroc"]["shapes"]["elbo"] > 0.9        # binary shapes are far from the digits after 40 steps
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_plot_vae_anomaly_takes_steps_but_not_the_flags_of_other_figures(tmp_path, capsys):
    assert cli.main(["plot", "vae-anomaly", "--out", str(tmp_path), "--T", "10"]) == 2
    assert "--T is for plot schedules, not plot vae-anomaly" in capsys.readouterr().err
    assert cli.main(["plot", "vae-anomaly", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
