"""Fuzzing the public boundaries: malformed and edge-case arguments, drawn by hypothesis, thrown at the API.

The law every case states: a call either returns a valid result (the right shape, finite where the math
is finite) or raises ValueError/TypeError whose message names the offending argument and is not a bare
NumPy message; any other exception, a crash, a hang or a silent result for a malformed input fails.
The kernels are fuzzed in a subprocess (tests/kernel_fuzz.py), so a crash fails this test, not the run.
See docs/reliability.md.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import minidiff
import minidiff.functional as F
from minidiff import data, diffusion, ops, optim
from minidiff.distributions import DiagonalGaussian, bernoulli_log_likelihood
from minidiff.train import TrainConfig
from minidiff.vae_objective import elbo, reconstruction_log_likelihood
from tests.fuzzing import make_outcome

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARE_NUMPY = ("operands could not be broadcast", "zero-size array", "setting an array element", "is out of bounds for",
              "could not convert", "invalid literal", "cannot reshape array", "object arrays are not supported")
SCHEDULE = diffusion.Schedule(np.linspace(1e-3, 0.2, 5))  # T = 5
T = SCHEDULE.T

# Junk a careless user or an attacker passes where a number belongs.
JUNK = st.one_of(st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                 st.sampled_from(["1", "abc", "", (1, 2), [0.1], 1 + 2j, np.float32(0.5), np.int64(3), np.nan]))


outcome = make_outcome(BARE_NUMPY)


def refused(call, names):
    """The call must raise ValueError/TypeError naming one of `names` (a malformed input)."""
    result = outcome(call, names)
    assert result is None, f"a malformed input was accepted silently (names {names})"


def _finite(result):
    values = result.values() if isinstance(result, dict) else result if isinstance(result, tuple) else [result]
    return all(np.all(np.isfinite(np.asarray(getattr(v, "data", v)))) for v in values)


# ---------------------------------------------------------------- shapes: checked, never broadcast

DATA = (2, 1, 4, 4)
OTHER_SHAPES = [(2, 1, 1, 1), (2, 1, 4), (3, 1, 4, 4), (1, 1, 4, 4), (2, 2, 4, 4), (2, 16), (2,)]


def _data(shape, seed):
    return np.clip(np.random.default_rng(seed).standard_normal(shape), -1, 1)


CALLS = {  # name -> (call(x_t, other, t), the argument name other stands for)
    "p_mean_variance": (lambda x, o, t: diffusion.p_mean_variance(o, x, t, SCHEDULE), "eps_hat"),
    "vb_terms_bpd": (lambda x, o, t: diffusion.vb_terms_bpd(x, x, t, o, SCHEDULE), "eps_hat"),
    "q_posterior": (lambda x, o, t: diffusion.q_posterior(o, x, t, SCHEDULE), "x0"),
    "q_sample": (lambda x, o, t: diffusion.q_sample(x, t, o, SCHEDULE, impl="numpy"), "eps"),
    "q_step_sample": (lambda x, o, t: diffusion.q_step_sample(x, t, o, SCHEDULE), "eps"),
    "x0_from_eps": (lambda x, o, t: diffusion.x0_from_eps(x, t, o, SCHEDULE), "eps"),
    "eps_from_x0": (lambda x, o, t: diffusion.eps_from_x0(x, t, o, SCHEDULE), "x0"),
    "v_from_x0_eps": (lambda x, o, t: diffusion.v_from_x0_eps(x, o, t, SCHEDULE), "eps"),
    "x0_from_v": (lambda x, o, t: diffusion.x0_from_v(x, t, o, SCHEDULE), "v"),
    "eps_from_v": (lambda x, o, t: diffusion.eps_from_v(x, t, o, SCHEDULE), "v"),
    "l_simple": (lambda x, o, t: diffusion.l_simple(o, x), "eps_hat"),
    "elbo_weighted_loss": (lambda x, o, t: diffusion.elbo_weighted_loss(o, x, t, SCHEDULE), "eps_hat"),
    "nll_bpd": (lambda x, o, t: diffusion.nll_bpd(lambda xt, tt: np.zeros(o.shape), x, SCHEDULE,
                                                  np.random.default_rng(0)), "model(x_t, t)"),
    "ddim_sample": (lambda x, o, t: diffusion.ddim_sample(lambda xt, tt: np.zeros(o.shape), x.shape, SCHEDULE,
                                                          x_T=x.astype(np.float32)), "model(x_t, t)"),
    "ddpm_sample": (lambda x, o, t: diffusion.ddpm_sample(lambda xt, tt: np.zeros(o.shape), x.shape, SCHEDULE,
                                                          x_T=x.astype(np.float32), impl="numpy"), "model(x_t, t)"),
}


ISSUE_SHAPE_CASES = [(name, (2, 1, 1, 1), 0, False) for name in  # the reported (B, 1, 1, 1) outputs and inputs
                     ("p_mean_variance", "vb_terms_bpd", "nll_bpd", "ddim_sample", "q_posterior", "l_simple")]


def _examples(cases):
    """@example for each case: the reported inputs run on every CI run, not only when hypothesis draws them."""
    def decorate(test):
        for case in cases:
            test = example(*case)(test)
        return test
    return decorate


@_examples(ISSUE_SHAPE_CASES)
@given(st.sampled_from(sorted(CALLS)), st.sampled_from([DATA] + OTHER_SHAPES), st.integers(0, 2 ** 16),
       st.booleans())
def test_shapes_the_math_defines_are_checked_not_broadcast(name, other_shape, seed, as_tensor):
    call, argument = CALLS[name]
    x, other = _data(DATA, seed), _data(other_shape, seed + 1)
    t = np.random.default_rng(seed).integers(1, T + 1, DATA[0])
    if as_tensor and name not in ("nll_bpd", "ddim_sample", "ddpm_sample"):
        x, other = minidiff.Tensor(x), minidiff.Tensor(other)
    if other_shape == DATA:
        assert _finite(call(x, other, t))
    else:
        refused(lambda: call(x, other, t), [argument])


BAD_T = st.one_of(
    st.lists(st.integers(-3, T + 3), min_size=2, max_size=2).map(np.array),          # out of 1..T, or fine
    st.lists(st.integers(1, T), min_size=1, max_size=4).filter(lambda v: len(v) != 2).map(np.array),  # shape
    st.sampled_from([np.array([1.0, 2.0]), np.array([1.5, 2.0]), np.array([True, True]), np.array(["1", "2"]),
                     np.array(1), np.zeros((2, 1), np.int64)]))


@_examples([(name, np.array(t)) for name in ("x0_from_eps", "eps_from_x0", "v_from_x0_eps") for t in ([-1, 1], [0, 1])])
@given(st.sampled_from(sorted(set(CALLS) - {"l_simple", "nll_bpd", "ddim_sample", "ddpm_sample"})), BAD_T)
def test_timesteps_outside_1_to_T_or_of_the_wrong_kind_are_refused(name, t):
    call, _ = CALLS[name]
    x = _data(DATA, 0)
    valid = t.dtype.kind in "iu" and t.shape == (DATA[0],) and t.min() >= 1 and t.max() <= T
    if valid:
        assert _finite(call(x, x, t))
    else:
        refused(lambda: call(x, x, t), ["t must"])


# ---------------------------------------------------------------- likelihoods and the ELBO

@_examples([((2, 1), 0), ((3, 6), 0)])
@given(st.sampled_from([(2, 6), (2, 1), (1, 6), (3, 6), (2, 6, 1)]), st.integers(0, 2 ** 16))
def test_likelihood_and_elbo_shapes_are_checked(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((2, 6)) > 0.5).astype(np.float64)
    other = rng.standard_normal(shape)
    q = DiagonalGaussian(np.zeros((shape[0], 3)), np.zeros((shape[0], 3)))
    calls = [(lambda: bernoulli_log_likelihood(x, other), "logits"),
             (lambda: reconstruction_log_likelihood(x, other, "bernoulli"), "decoder_output (logits)"),
             (lambda: reconstruction_log_likelihood(x, other, "gaussian"), "decoder_output (mean)"),
             (lambda: elbo(x, q, np.zeros((2, 6))), "posterior.mean")]
    for call, argument in calls[:3]:
        if shape == x.shape:
            assert _finite(call())
        else:
            refused(call, [argument])
    if shape[0] != 2:
        refused(calls[3][0], [calls[3][1]])


@_examples([(2, 2, (2, 1), (2, 2))])
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([None, (0,), (1,), (2,), (3,), (4,), (2, 1), (1, 3)]),
       st.sampled_from([(3, 2), (2, 3), (3,), (3, 2, 1), (1, 2)]))
def test_linear_checks_weight_and_bias(batch, n_in, bias_shape, weight_shape):
    x, weight = np.ones((batch, 2)), np.ones(weight_shape)
    bias = None if bias_shape is None else np.ones(bias_shape)
    result = outcome(lambda: F.linear(x, weight, bias), ["weight", "bias"])
    good_weight = len(weight_shape) == 2 and weight_shape[1] == 2
    good_bias = bias_shape is None or (good_weight and bias_shape == (weight_shape[0],))
    assert (result is not None) == (good_weight and good_bias)
    if result is not None:
        assert result.shape == (batch, weight_shape[0])


# ---------------------------------------------------------------- configuration and optimisers

INT_FIELDS = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "eval_every": 0, "checkpoint_every": 0,
              "log_every": 0, "seed": 0}
REAL_FIELDS = {"lr": (0.0, math.inf, False), "weight_decay": (0.0, math.inf, True),
               "min_lr_ratio": (0.0, 1.0, True), "grad_clip": (0.0, math.inf, True), "ema_decay": (0.0, 1.0, True),
               "divergence_factor": (1.0, math.inf, False)}


@_examples([("grad_clip", -1.0), ("lr", math.nan), ("lr", math.inf), ("steps", math.inf), ("steps", 2.5),
            ("steps", 0), ("checkpoint_every", -1)])
@given(st.sampled_from(sorted(INT_FIELDS) + sorted(REAL_FIELDS) + ["optimizer", "progress"]), JUNK)
def test_train_config_takes_a_valid_value_or_names_the_field(field, value):
    cfg = outcome(lambda: TrainConfig(**{field: value}), [f"TrainConfig: {field} "])
    if cfg is None:
        return
    got = getattr(cfg, field)
    if field in INT_FIELDS:
        assert type(got) is int and got >= INT_FIELDS[field] and got == value
    elif field in REAL_FIELDS:
        lo, hi, closed = REAL_FIELDS[field]
        assert type(got) is float and math.isfinite(got) and (got >= lo if closed else got > lo) and got <= hi
        assert field != "ema_decay" or got < 1.0
    else:
        assert got == value


@_examples([("betas", (0.9, 0.99, 0.9), "Adam"), ("eps", -1e-8, "Adam"), ("weight_decay", -1.0, "Adam")])
@given(st.sampled_from(["lr", "eps", "weight_decay", "betas", "beta"]), JUNK, st.sampled_from(["Adam", "AdamW"]))
def test_adam_takes_valid_arguments_or_names_the_bad_one(argument, value, cls):
    p = minidiff.nn.Parameter(np.ones(3))
    kwargs = {"betas": (0.9, value)} if argument == "beta" else {argument: value}
    opt = outcome(lambda: getattr(optim, cls)([p], **kwargs), [f"{cls}: {argument}"])
    if opt is not None:
        p.grad = np.ones(3)
        opt.step()
        assert np.all(np.isfinite(p.data))


# ---------------------------------------------------------------- schedules, data, Tensors, axes

@_examples([(np.linspace(1e-3, 0.2, 5) * (1 + 1j),)])
@given(st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=6),
    st.lists(st.floats(0.01, 0.5), min_size=1, max_size=6).map(lambda v: np.array(v) * (1 + 1j)),
    st.lists(st.floats(0.01, 0.5), min_size=1, max_size=6).map(lambda v: np.array(v).reshape(1, -1)),
    st.sampled_from(["abc", None, [[0.1], [0.2, 0.3]], [True, False], 0.1])))
def test_schedule_betas_give_finite_tables_or_a_named_refusal(betas):
    schedule = outcome(lambda: diffusion.Schedule(betas), ["beta", "alpha_bar"])
    if schedule is not None:
        assert np.all(np.isfinite(schedule.alpha_bars)) and np.all(schedule.alpha_bars > 0)


@_examples([(5, 0.01), (5, 0.99)])
@given(st.integers(1, 12), JUNK)
def test_train_test_split_keeps_both_sets_non_empty(n, fraction):
    x = np.arange(n)
    split = outcome(lambda: data.train_test_split(x, x, fraction, 0), ["test_fraction"])
    if split is not None:
        x_train, _, x_test, _ = split
        assert len(x_train) >= 1 and len(x_test) >= 1 and sorted(np.concatenate([x_train, x_test])) == list(x)


@_examples([("abc",), (None,)])
@given(st.one_of(JUNK, st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=2)), max_size=3),
                 st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3), st.dictionaries(st.text(), st.none())))
def test_tensor_data_is_numbers_or_a_named_refusal(value):
    tensor = outcome(lambda: minidiff.Tensor(value), ["Tensor: data"])
    if tensor is not None:
        assert tensor.dtype.kind in "biufc"


AXES = st.one_of(st.integers(-5, 5), st.none(), st.tuples(st.integers(-4, 4)), st.tuples(st.integers(-4, 4),
                 st.integers(-4, 4)), st.sampled_from([1.0, "0", True, [0]]))


@_examples([("concatenate", (2, 2), 2)])
@given(st.sampled_from(["sum", "mean", "max", "logsumexp", "softmax", "log_softmax", "concatenate", "stack"]),
       st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple), AXES)
def test_axis_arguments_agree_with_numpy_or_are_refused(op, shape, axis):
    x = np.random.default_rng(1).standard_normal(shape)
    args = {"concatenate": lambda: ops.concatenate([x, x], axis), "stack": lambda: ops.stack([x, x], axis)}
    call = args.get(op, lambda: getattr(ops, op)(x, axis))
    result = outcome(call, ["axis", "concatenate", "max:", "softmax"])
    if result is None or op in ("softmax", "log_softmax", "logsumexp"):
        return
    if op == "concatenate":
        expected = np.concatenate([x, x], axis)
    elif op == "stack":
        expected = np.stack([x, x], axis)
    else:  # a list of axes is read as a tuple (as PyTorch reads dim), a 0-d input reduces over nothing
        expected = getattr(np, op)(x, axis=(tuple(axis) if isinstance(axis, list) else axis) if x.ndim else None)
    np.testing.assert_allclose(result, expected, equal_nan=True)


# ---------------------------------------------------------------- kernels, in a subprocess

def test_kernels_refuse_bad_tables_and_timesteps_without_crashing():
    """tests/kernel_fuzz.py runs its hypothesis cases in a child; a segfault shows as a negative return code."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "tests.kernel_fuzz"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"kernel fuzz exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "kernel fuzz: ok" in proc.stdout


if __name__ == "__main__":
    pytest.main([__file__])
