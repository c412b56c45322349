"""DDPM diffusion math in paper notation (1-based t, tables of length T+1): docs/forward_process.md.

    schedule.py   Schedule(betas) and its tables; the named schedules (SCHEDULES: linear, cosine, ...); respacing
    process.py    q(x_t | x_{t-1}), q(x_t | x_0), q(x_{t-1} | x_t, x_0), eps <-> x0 <-> v, p_mean_variance
    elbo.py       L_simple, the ELBO-weighted loss, VLB terms and bits/dim (full loop, importance-sampled)
    samplers.py   the Sampler interface and its registry (SAMPLERS: ddpm, ddim), the shared loop, respaced steps
    score.py      the score of an eps-model (Tweedie), denoising score matching, annealed Langevin ('langevin')
    sde.py        the VP-SDE: reverse-SDE ('sde') and probability-flow ODE ('ode') samplers, ODE likelihood
    oracle.py     models with an analytic optimum: Gaussian data, the empirical MMSE denoiser
    guidance.py   classifier-free guidance: the guided eps and the guided model(x_t, t) every sampler takes
"""
from minidiff.diffusion.elbo import (EpsLoss, elbo_weighted_loss, eps_loss, fused_eps_loss, l_simple, nll_bpd,
                                     nll_bpd_importance, prior_bpd, vb_terms_bpd)
from minidiff.diffusion.guidance import guided_eps, guided_model
from minidiff.diffusion.oracle import EmpiricalDenoiser, GaussianDataOracle
from minidiff.diffusion.process import (REVERSE_VARIANCES, eps_from_v, eps_from_x0, learned_log_variance,
                                        p_mean_variance, predict_x0, q_mean_variance, q_posterior, q_sample,
                                        q_step_mean_variance, q_step_sample, v_from_x0_eps, x0_from_eps, x0_from_v)
from minidiff.diffusion.samplers import (SAMPLERS, DDIMSampler, DDPMSampler, Draws, Sampler, SamplerState, ddim_sample,
                                         ddim_step, ddpm_sample, make_sampler, register_sampler, run_chain, sample)
from minidiff.diffusion.schedule import SCHEDULES, Schedule, make_schedule, schedules_at, spaced_timesteps
from minidiff.diffusion.score import (LangevinSampler, conditional_score, dsm_loss, langevin_sample,
                                      score_from_eps)
from minidiff.diffusion.sde import (ProbabilityFlowSampler, ReverseSDESampler, alpha_bar_continuous, beta_continuous,
                                    ode_log_likelihood, ode_nll_bpd, ode_sample, probability_flow_drift, sde_sample)

__all__ = ["Schedule", "SCHEDULES", "make_schedule", "schedules_at", "spaced_timesteps", "q_step_mean_variance",
           "q_step_sample", "q_mean_variance", "q_sample", "q_posterior", "x0_from_eps", "eps_from_x0",
           "v_from_x0_eps", "x0_from_v", "eps_from_v", "predict_x0", "p_mean_variance", "l_simple", "eps_loss",
           "fused_eps_loss", "EpsLoss", "elbo_weighted_loss", "vb_terms_bpd", "prior_bpd", "nll_bpd",
           "nll_bpd_importance", "ddpm_sample", "ddim_sample", "ddim_step", "SAMPLERS", "Sampler", "SamplerState",
           "DDPMSampler", "DDIMSampler", "register_sampler", "make_sampler", "Draws", "run_chain", "sample",
           "GaussianDataOracle", "EmpiricalDenoiser", "score_from_eps", "conditional_score", "dsm_loss",
           "LangevinSampler", "langevin_sample", "ReverseSDESampler", "ProbabilityFlowSampler", "sde_sample",
           "ode_sample", "ode_log_likelihood", "ode_nll_bpd", "beta_continuous", "alpha_bar_continuous",
           "probability_flow_drift", "guided_eps", "guided_model", "learned_log_variance", "REVERSE_VARIANCES"]
