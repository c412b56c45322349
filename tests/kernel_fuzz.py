"""The kernels fuzzed in a child process (run by tests/test_fuzz.py as `python -m tests.kernel_fuzz`).

The Numba kernels index memory by hand, so a malformed input could read past a table or crash the
interpreter; run here, a crash shows as the child's negative return code and fails one test instead
of the whole run. Each case draws one malformed (or valid) argument, decides from the drawn values
alone whether the call is valid, and states: a valid call returns what the NumPy reference returns;
an invalid one raises ValueError/TypeError naming the argument (never another exception, never a
number computed from memory past a table). Prints "kernel fuzz: ok" when every case passed.
"""
import types

import numpy as np
from hypothesis import given, strategies as st

from minidiff import kernels
from minidiff.diffusion import Schedule
from tests import conftest  # noqa: F401  (registers the hypothesis profiles, loads HYPOTHESIS_PROFILE)
from tests.fuzzing import make_outcome

IMPLS = [name for name in ("numpy", "numba") if name in kernels.available()]
T = 6
SCHEDULE = Schedule(np.linspace(1e-3, 0.3, T))
TABLES = kernels.checks.SCHEDULE_TABLES
BARE_NUMPY = ("operands could not be broadcast", "zero-size array", "is out of bounds for", "could not convert",
              "cannot reshape array", "index ")


outcome = make_outcome(BARE_NUMPY)


def _copy(schedule, **changes):
    """A duck-typed schedule: the tables of `schedule` (and its T) with some replaced."""
    fields = {name: getattr(schedule, name) for name in TABLES}
    fields["T"] = schedule.T
    return types.SimpleNamespace(**{**fields, **changes})


# A schedule object as a careless caller or an attacker might build it: tables cut short or padded,
# a T that claims more steps than the tables hold (up to one that would address terabytes), tables
# of the wrong rank or kind, a T that is not an integer.
SCHEDULES = st.one_of(
    st.just(("valid", SCHEDULE)),
    st.tuples(st.sampled_from(TABLES), st.integers(-T, 3).filter(bool)).map(
        lambda c: ("table", _copy(SCHEDULE, **{c[0]: getattr(SCHEDULE, c[0])[:T + 1 + c[1]] if c[1] < 0 else
                                               np.concatenate([getattr(SCHEDULE, c[0]), np.ones(c[1])])}))),
    st.sampled_from([T + 1, 2 * T, 10 ** 7, 10 ** 9, 2 ** 40, 2 ** 62, 0, -1, True, 6.0, "6", None]).map(
        lambda claimed: ("T", _copy(SCHEDULE, T=claimed))),
    st.sampled_from(TABLES).map(lambda name: ("table", _copy(SCHEDULE, **{name: getattr(SCHEDULE, name)[None]}))),
    st.sampled_from(TABLES).map(lambda name: ("table", _copy(SCHEDULE, **{name: getattr(SCHEDULE, name).astype(str)}))),
)

TIMESTEPS = st.one_of(
    st.lists(st.integers(-2, T + 2), min_size=3, max_size=3).map(lambda v: np.array(v, np.int64)),
    st.lists(st.integers(1, T), min_size=0, max_size=5).map(lambda v: np.array(v, np.int64)),   # wrong length
    st.sampled_from([np.array([1.0, 2.0, 3.0]), np.array([1, 2, 3], np.uint8), np.array([[1, 2, 3]]),
                     np.array([2 ** 40, 1, 1]), np.array([-2 ** 40, 1, 1])]),
)


def _timesteps_valid(t, batch):
    return t.dtype.kind in "iu" and t.shape == (batch,) and (t.size == 0 or (t.min() >= 1 and t.max() <= T))


def _schedule_valid(kind):
    return kind == "valid"


@given(SCHEDULES, TIMESTEPS, st.sampled_from(IMPLS), st.sampled_from([np.float32, np.float64]), st.integers(0, 99))
def check_q_sample_and_reverse_step(drawn_schedule, t, impl, dtype, seed):
    kind, schedule = drawn_schedule
    rng = np.random.default_rng(seed)
    x, eps, z = (rng.standard_normal((3, 2, 5)).astype(dtype) for _ in range(3))
    valid = _schedule_valid(kind) and _timesteps_valid(t, 3)
    names = ["schedule", "t must", "t "]
    got = outcome(lambda: kernels.q_sample(x, t, eps, schedule, impl=impl), names)
    assert (got is not None) == valid, f"q_sample {'refused' if valid else 'accepted'} schedule {kind}, t {t}"
    if valid:
        np.testing.assert_allclose(got, kernels.q_sample(x, t, eps, SCHEDULE, impl="numpy"), rtol=1e-6)
    got = outcome(lambda: kernels.reverse_step(x, t, eps, z, schedule, impl=impl), names)
    assert (got is not None) == valid, f"reverse_step {'refused' if valid else 'accepted'} schedule {kind}, t {t}"
    if valid:
        np.testing.assert_allclose(got, kernels.reverse_step(x, t, eps, z, SCHEDULE, impl="numpy"), rtol=1e-5,
                                   atol=1e-6)


ARRAYS = st.sampled_from([
    ("valid", lambda a: a), ("dtype", lambda a: a.astype(np.float16)), ("dtype", lambda a: a.astype(np.int64)),
    ("dtype", lambda a: a.astype(np.complex128)), ("shape", lambda a: a[..., :4]), ("shape", lambda a: a[:1]),
    ("shape", lambda a: a[0, 0]), ("type", lambda a: a.tolist()), ("type", lambda a: None),
    ("dtype", lambda a: a.astype(object)), ("empty", lambda a: a[:0]),
])


@given(st.sampled_from(["x0", "eps", "eps_hat", "z", "out"]), ARRAYS, st.sampled_from(IMPLS), st.integers(0, 99))
def check_data_arrays(which, mutation, impl, seed):
    """One array replaced by a wrong dtype, shape or type, or a whole empty batch (valid, except for the
    loss, a mean over no elements)."""
    kind, mutate = mutation
    rng = np.random.default_rng(seed)
    base = {name: rng.standard_normal((3, 2, 5)) for name in ("x0", "eps", "eps_hat", "z")}
    t, out = np.array([1, 3, T]), None
    if kind == "empty":  # every array of the call empties together: B = 0
        base, t = {name: a[:0] for name, a in base.items()}, t[:0]
    elif which == "out":
        out = mutate(np.empty((3, 2, 5)))
        kind = "valid" if out is None else kind  # out=None: no output array given, which is allowed
    else:
        base[which] = mutate(base[which])
    names = [which, "x_t" if which == "x0" else which, "eps_hat must hold", "shape mismatch", "dtype mismatch",
             "t must"]
    calls = {"q_sample": lambda: kernels.q_sample(base["x0"], t, base["eps"], SCHEDULE, impl=impl, out=out),
             "eps_loss": lambda: kernels.eps_loss(base["eps_hat"], base["eps"], impl=impl, out=out),
             "reverse_step": lambda: kernels.reverse_step(base["x0"], t, base["eps_hat"], base["z"], SCHEDULE,
                                                          impl=impl, out=out)}
    uses = {"q_sample": {"x0", "eps", "out"}, "eps_loss": {"eps_hat", "eps", "out"},
            "reverse_step": {"x0", "eps_hat", "z", "out"}}
    for op, call in calls.items():
        got = outcome(call, names)
        if kind == "empty":
            valid = op != "eps_loss"
        else:
            valid = kind == "valid" or which not in uses[op]
        assert (got is not None) == valid, f"{op} {'refused' if valid else 'accepted'} {which} changed by {kind}"
        if got is not None:
            expected = {"q_sample": lambda: kernels.q_sample(base["x0"], t, base["eps"], SCHEDULE, impl="numpy"),
                        "eps_loss": lambda: kernels.eps_loss(base["eps_hat"], base["eps"], impl="numpy"),
                        "reverse_step": lambda: kernels.reverse_step(base["x0"], t, base["eps_hat"], base["z"],
                                                                     SCHEDULE, impl="numpy")}[op]()
            for part, want in zip(got if isinstance(got, tuple) else (got,),
                                  expected if isinstance(expected, tuple) else (expected,)):
                np.testing.assert_allclose(part, want, rtol=1e-10, atol=1e-12)


WEIGHTS = st.sampled_from([
    (True, None), (True, np.ones(3)), (True, [1.0, 2.0, 0.5]), (True, np.ones(3, np.float32)),
    (False, np.ones(2)), (False, np.ones((3, 1))), (False, np.ones(3, np.int64)), (False, np.ones(3) * 1j),
    (False, "abc"), (False, np.ones(1)),
])


@given(WEIGHTS, st.sampled_from(IMPLS))
def check_loss_weights(drawn, impl):
    valid, weights = drawn
    rng = np.random.default_rng(0)
    eps_hat, eps = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    got = outcome(lambda: kernels.eps_loss(eps_hat, eps, weights, impl=impl), ["weights"])
    assert (got is not None) == valid, f"eps_loss {'refused' if valid else 'accepted'} weights {weights!r}"
    if valid:
        w = np.ones(3) if weights is None else np.asarray(weights, np.float64)
        np.testing.assert_allclose(got[0], np.mean(w[:, None] * (eps_hat - eps) ** 2), rtol=1e-6)


SEEDS = st.one_of(st.integers(-3, 3), st.sampled_from([2 ** 64 - 1, 2 ** 64, -2 ** 63, 1.5, True, "1", None]))


@given(SEEDS, SEEDS, st.sampled_from([(2, 3), (0, 3), (2,), (), (2, -1), (2, 0)]), st.sampled_from(IMPLS))
def check_philox_arguments(seed, offset, shape, impl):
    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)
    valid = (integer(seed) and integer(offset) and 0 <= seed < 2 ** 64 and 0 <= offset < 2 ** 64 and len(shape) >= 1
             and min(shape) >= 0 and offset + shape[0] <= 2 ** 64)
    got = outcome(lambda: kernels.normal(seed, shape, offset, impl=impl), ["seed", "offset", "shape", "normal"])
    assert (got is not None) == valid, f"normal {'refused' if valid else 'accepted'} seed {seed!r}, offset " \
                                       f"{offset!r}, shape {shape}"
    if valid:
        assert got.shape == shape and np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, kernels.normal(seed, shape, offset, impl="numpy"))


def main():
    for case in (check_q_sample_and_reverse_step, check_data_arrays, check_loss_weights, check_philox_arguments):
        case()
        print(f"{case.__name__}: ok", flush=True)
    print("kernel fuzz: ok", flush=True)


if __name__ == "__main__":
    main()
