"""The registries are the single list of schedules, samplers and models (docs/ddim.md §6, docs/forward_process.md §3).

Every registered schedule builds and satisfies its table identities; every registered sampler runs
through DDPM.sample; a multistep sampler keeps its history in the per-run state; the CLI's choices are
the registries; `--set schedule=NAME` reaches the DDPM for every name.
"""
import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidiff
from minidiff import cli, data, models
from minidiff.diffusion import (SAMPLERS, SCHEDULES, Draws, Sampler, SamplerState, Schedule, ddim_sample, ddim_step,
                                make_sampler, make_schedule, register_sampler, run_chain, sample, schedules_at)
from minidiff.models.ddpm import DDPM
from tests.strategies_diffusion import KINDS, schedules, smallest_T


def smooth_model(x_t, t):
    """A deterministic nonlinear stand-in for a network: eps_hat depends on x_t and t."""
    return np.tanh(x_t + 0.01 * t.reshape((-1,) + (1,) * (x_t.ndim - 1))) - 0.3 * x_t


@pytest.fixture(scope="module")
def tiny_ddpm():
    minidiff.manual_seed(0)
    return DDPM((1, 4, 4), T=10, base_channels=4, channel_mults=(1, 2), attention_resolutions=(2,), dropout=0.0,
                eval_images=3).float()


# ---------------------------------------------------------------- schedules

def test_schedule_registry_holds_each_named_constructor():
    assert {"linear", "cosine", "quadratic", "sigmoid"} <= set(SCHEDULES)
    assert KINDS == (*SCHEDULES, "custom")  # the property tests draw every registered kind
    for name, make in SCHEDULES.items():
        assert make == getattr(Schedule, name)  # the registry holds the constructor itself
        T = smallest_T(name) + 5
        np.testing.assert_array_equal(make_schedule(name, T).betas, getattr(Schedule, name)(T).betas)
    with pytest.raises(ValueError, match="schedule must be one of .*'quadratic'.*got 'sqrt'"):
        make_schedule("sqrt", 10)


@pytest.mark.parametrize("name", list(SCHEDULES))
@given(data=st.data())
def test_every_registered_schedule_satisfies_the_table_identities(name, data):
    s = data.draw(schedules(max_T=200, kinds=(name,)))
    t = np.arange(1, s.T + 1)
    b, a, ab, ab_prev = s.betas[t], s.alphas[t], s.alpha_bars[t], s.alpha_bars_prev[t]
    assert s.betas.shape == (s.T + 1,) and s.betas.dtype == np.float64
    assert s.betas[0] == 0.0 and s.alpha_bars[0] == 1.0
    assert np.all((b > 0) & (b < 1)) and np.all(np.diff(s.alpha_bars) < 0) and ab[-1] > 0
    np.testing.assert_array_equal(a, 1.0 - b)
    np.testing.assert_allclose(ab, np.cumprod(1.0 - b), rtol=1e-12)                       # eq. (F4)
    np.testing.assert_array_equal(ab_prev, s.alpha_bars[t - 1])
    np.testing.assert_allclose(s.sqrt_alpha_bars ** 2 + s.sqrt_one_minus_alpha_bars ** 2, 1.0, atol=1e-15)
    np.testing.assert_allclose(s.posterior_variance[t], (1 - ab_prev) / (1 - ab) * b, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(s.posterior_mean_coef1[t], np.sqrt(ab_prev) * b / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef2[t], np.sqrt(a) * (1 - ab_prev) / (1 - ab), rtol=1e-12)


def test_schedules_at_keeps_exactly_the_schedules_that_exist_at_T():
    for T in (1, 10, smallest_T("linear") - 1, smallest_T("linear"), 200):
        got = schedules_at(T)
        assert list(got) == [name for name in SCHEDULES if smallest_T(name) <= T], T
        for name, s in got.items():
            np.testing.assert_array_equal(s.betas, make_schedule(name, T).betas)
    assert "linear" not in schedules_at(20) and {"quadratic", "sigmoid"} <= set(schedules_at(20))
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        schedules_at(0)


def test_ddpm_builds_every_registered_schedule_and_refuses_others():
    for name in SCHEDULES:
        T = max(smallest_T(name), 12)
        model = DDPM((1, 4, 4), T=T, schedule=name, base_channels=4, attention_resolutions=())
        np.testing.assert_array_equal(model.schedule.betas, make_schedule(name, T).betas)
    with pytest.raises(ValueError, match="schedule must be one of") as error:
        DDPM(schedule="sqrt")
    assert all(repr(name) in str(error.value) for name in SCHEDULES)


# ---------------------------------------------------------------- samplers

@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_registered_sampler_runs_through_ddpm_sample(tiny_ddpm, name):
    x, trajectory = tiny_ddpm.sample(3, np.random.default_rng(0), sampler=name, steps=4, return_trajectory=True)
    direct = sample(make_sampler(name, clip_x0=True), tiny_ddpm.eps_array, (3, 1, 4, 4), tiny_ddpm.schedule,
                    rng=np.random.default_rng(0), steps=4)
    np.testing.assert_array_equal(x, direct)  # DDPM.sample runs the registered class by its name
    assert x.shape == (3, 1, 4, 4) and x.dtype == np.float32 and np.all(np.isfinite(x))
    assert len(trajectory) == 5 and np.array_equal(trajectory[-1], x)


def test_ddpm_sample_passes_the_sampler_options_and_refuses_unknown_ones(tiny_ddpm):
    shape, schedule = (2, 1, 4, 4), tiny_ddpm.schedule
    for eta in (0.0, 1.0):
        got = tiny_ddpm.sample(2, np.random.default_rng(1), sampler="ddim", steps=5, eta=eta)
        want = ddim_sample(tiny_ddpm.eps_array, shape, schedule, rng=np.random.default_rng(1), steps=5, eta=eta,
                           clip_x0=True)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="sampler 'ddpm' takes the options .*got \\['eta'\\]"):
        tiny_ddpm.sample(2, np.random.default_rng(1), sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="sampler must be one of \\['ddpm', 'ddim'"):
        tiny_ddpm.sample(2, np.random.default_rng(1), sampler="euler")


def test_sampler_options_are_keyword_only_and_checked_early():
    with pytest.raises(TypeError):
        SAMPLERS["ddim"](0.5)
    with pytest.raises(ValueError, match="eta must lie in"):
        make_sampler("ddim", eta=2.0)
    with pytest.raises(ValueError, match="variance must be one of"):
        make_sampler("ddpm", variance="fixed_medium")


@dataclass
class AB2State(SamplerState):
    previous_eps: list = field(default_factory=list)  # eps_hat of the steps already taken, newest first


class AdamsBashforth2(Sampler):
    """Deterministic DDIM steps on the 2-step Adams-Bashforth eps: (3 eps_k - eps_{k+1}) / 2 after the first."""
    name = "test-ab2"

    def start(self, x_T, chain):
        return AB2State(chain)

    def step(self, state, x, k, eps_hat, z):
        eps = eps_hat if not state.previous_eps else 1.5 * eps_hat - 0.5 * state.previous_eps[0]
        state.previous_eps.insert(0, eps_hat)
        return ddim_step(x, k, eps, z, state.chain, clip_x0=self.clip_x0)


@pytest.fixture
def ab2():
    """AdamsBashforth2, registered for one test."""
    register_sampler(AdamsBashforth2)
    yield AdamsBashforth2
    del SAMPLERS[AdamsBashforth2.name]


def _ab2_by_hand(x_T, chain):
    x, previous = x_T, None
    for k in range(chain.T, 0, -1):
        eps_hat = smooth_model(x, np.full(x.shape[0], chain.timesteps[k]))
        eps = eps_hat if previous is None else 1.5 * eps_hat - 0.5 * previous
        x, previous = ddim_step(x, k, eps, np.zeros_like(x), chain), eps_hat
    return x


def test_multistep_sampler_keeps_its_history_in_the_per_run_state(ab2):
    chain = Schedule.cosine(30).respace(8)
    sampler = make_sampler(ab2.name)
    rng = np.random.default_rng(4)
    x_a, x_b = rng.standard_normal((3, 2)), 3.0 * rng.standard_normal((3, 2))

    def run(x_T):
        return run_chain(sampler, smooth_model, chain, Draws((3, 2), chain.T, x_T=x_T, noise=np.zeros((8, 3, 2))))
    first, second, again = run(x_a), run(x_b), run(x_a)  # one sampler object, three runs
    np.testing.assert_array_equal(first, _ab2_by_hand(x_a, chain))  # history is kept within a run
    np.testing.assert_array_equal(second, _ab2_by_hand(x_b, chain))  # and not carried into the next one
    np.testing.assert_array_equal(again, first)
    plain = ddim_sample(smooth_model, (3, 2), chain, x_T=x_a, noise=np.zeros((8, 3, 2)), dtype=np.float64)
    assert np.abs(first - plain).max() > 1e-3  # the history changes the result, so a leak would show


def test_registered_sampler_reaches_ddpm_sample_and_the_cli(ab2, tiny_ddpm):
    x = tiny_ddpm.sample(2, np.random.default_rng(0), sampler=ab2.name, steps=4)
    assert x.shape == (2, 1, 4, 4) and np.all(np.isfinite(x))
    parser = cli._parser()
    assert ab2.name in _choices(parser, "sample", "sampler") and ab2.name in _choices(parser, "eval", "sampler")


def test_register_sampler_refuses_a_taken_name_and_non_samplers():
    class Impostor(Sampler):
        name = "ddpm"

        def step(self, state, x, k, eps_hat, z):
            return x
    with pytest.raises(ValueError, match="'ddpm' is already registered to DDPMSampler"):
        register_sampler(Impostor)
    with pytest.raises(TypeError, match="Sampler subclass"):
        register_sampler(dict)
    assert SAMPLERS["ddpm"].__name__ == "DDPMSampler"


# ---------------------------------------------------------------- models

def test_every_model_module_is_imported_by_the_models_package():
    """Importing minidiff.models registers every model: importing each module by hand adds none."""
    code = ("import importlib, json, pkgutil, minidiff.models as m; before = list(m.REGISTRY); "
            "[importlib.import_module('minidiff.models.' + i.name) for i in pkgutil.iter_modules(m.__path__)]; "
            "print(json.dumps([before, list(m.REGISTRY)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    before, after = json.loads(done.stdout)
    assert before == after and "ddpm" in before


def test_register_refuses_a_second_model_with_a_taken_name():
    class Impostor:
        name = "ddpm"
    with pytest.raises(ValueError, match="'ddpm' is already registered to DDPM"):
        models.register(Impostor)
    assert models.REGISTRY["ddpm"] is DDPM


# ---------------------------------------------------------------- the CLI reads the registries

def _choices(parser, command, dest):
    """The choices of argument `dest` of subcommand `command`."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if a.dest == dest).choices


def test_cli_choices_are_the_registries():
    parser = cli._parser()
    assert list(_choices(parser, "train", "model")) == list(models.REGISTRY)
    assert list(_choices(parser, "sample", "sampler")) == list(SAMPLERS)
    assert list(_choices(parser, "eval", "sampler")) == list(SAMPLERS)


@pytest.mark.parametrize("T", [10, 50])
def test_plot_schedules_draws_every_registered_schedule_that_exists_at_T(monkeypatch, tmp_path, T):
    drawn = {}

    def spy(curves, path):
        drawn.update(curves)
        return path
    monkeypatch.setattr(cli.plots, "save_schedule_curves", spy)
    assert cli.main(["plot", "schedules", "--out", str(tmp_path), "--T", str(T)]) == 0
    assert list(drawn) == [name for name in SCHEDULES if smallest_T(name) <= T]
    assert {"quadratic", "sigmoid"} <= set(drawn) and ("linear" in drawn) == (T > 20)
    for name, s in drawn.items():
        np.testing.assert_array_equal(s.betas, make_schedule(name, T).betas)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_train_set_schedule_reaches_the_ddpm(name):
    args = cli._parser().parse_args(["train", "ddpm", "--set", f"schedule={name}", "--set", "T=30",
                                     "--set", "base_channels=4"])
    model = cli.new_model(args, data.digits())
    assert isinstance(model, DDPM) and model.hparams["schedule"] == name
    np.testing.assert_array_equal(model.schedule.betas, make_schedule(name, 30).betas)
    rebuilt = models.build("ddpm", model.hparams)  # as a checkpoint is loaded
    np.testing.assert_array_equal(rebuilt.schedule.betas, model.schedule.betas)


def test_cli_sampler_options_come_from_the_flags():
    parse = cli._parser().parse_args
    base = ["sample", "--checkpoint", "m.safetensors", "--out", "x.npy", "--sampler", "ddim"]
    assert cli.sampler_options(parse(base)) == {}
    assert cli.sampler_options(parse(base + ["--sampler-option", "eta=0.5"])) == {"eta": 0.5}
    assert cli.sampler_options(parse(base + ["--eta", "0.25"])) == {"eta": 0.25}
    with pytest.raises(cli.UsageError, match="eta given twice"):
        cli.sampler_options(parse(base + ["--eta", "0.25", "--sampler-option", "eta=0.5"]))
    with pytest.raises(cli.UsageError, match="--sampler-option expects KEY=VALUE"):
        cli.sampler_options(parse(base + ["--sampler-option", "eta"]))
    eval_args = parse(["eval", "--checkpoint", "m.safetensors", "--sampler-option", "eta=1"])
    assert cli.sampler_options(eval_args) == {"eta": 1}
