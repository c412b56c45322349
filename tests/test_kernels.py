"""Fused kernels on the CPU: the reference's laws, Numba == reference, validation, dispatch.

The CUDA implementations are checked in test_kernels_cudasim.py (Numba CUDA simulator, in a
subprocess), test_kernels_cuda_c.py (nvcc) and test_kernels_gpu.py (marker gpu).
"""
import importlib
import inspect
import types

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidiff.kernels as K
from minidiff.kernels import numba_cpu, reference as R
from tests.kernel_checks import check_eps_loss, check_q_sample, check_reverse_step
from tests.strategies_kernels import unscaled_linear, problems, schedules, small_shapes, tolerance

CPU_IMPLS = K.serving("numpy")  # every registered implementation that takes NumPy arrays here


# ---------------------------------------------------------------- laws of the reference equations

@given(problems(shapes=small_shapes()))
def test_reverse_step_clip_and_eps_forms_agree_inside_the_clip_range(p):
    """Eq. (C4) and eq. (C5)+(C7) are the same posterior mean when x0_hat = x0 lies in [-1, 1]."""
    x0 = np.clip(p.x, -1, 1)
    x_t = R.q_sample(x0, p.t, p.eps, p.schedule)
    eps_form = R.reverse_step(x_t, p.t, p.eps, p.z, p.schedule, p.variance, clip_x0=False)
    clip_form = R.reverse_step(x_t, p.t, p.eps, p.z, p.schedule, p.variance, clip_x0=True)
    scale = 1e3 if p.dtype == np.float32 else 1e4  # x0_hat is recovered with error ~ u ulp(x_t)
    np.testing.assert_allclose(eps_form, clip_form, atol=scale * tolerance(p.dtype) * (1 + np.abs(x_t).max()))


@given(problems(shapes=small_shapes()))
def test_reverse_step_with_true_noise_is_the_posterior_mean(p):
    """eps_hat = eps, z = 0: x_{t-1} = coef1_t x0 + coef2_t x_t, the mean of q(x_{t-1} | x_t, x0)."""
    x0 = np.clip(p.x, -1, 1).astype(np.float64)
    eps = p.eps.astype(np.float64)
    x_t = R.q_sample(x0, p.t, eps, p.schedule)
    got = R.reverse_step(x_t, p.t, eps, np.zeros_like(x_t), p.schedule, p.variance, p.clip_x0)
    c1 = R.per_sample(p.schedule.posterior_mean_coef1, p.t, x0)
    c2 = R.per_sample(p.schedule.posterior_mean_coef2, p.t, x0)
    np.testing.assert_allclose(got, c1 * x0 + c2 * x_t, atol=1e-8 * (1 + np.abs(x_t).max()))


@given(problems(shapes=small_shapes()), st.sampled_from(CPU_IMPLS))
def test_reverse_step_ignores_z_at_t_equal_1(p, impl):
    p.t[:] = 1
    with_z = K.reverse_step(p.x, p.t, p.eps, p.z, p.schedule, p.variance, p.clip_x0, impl=impl)
    without = K.reverse_step(p.x, p.t, p.eps, np.zeros_like(p.z), p.schedule, p.variance, p.clip_x0, impl=impl)
    np.testing.assert_array_equal(with_z, without)


@given(problems(shapes=small_shapes()), st.floats(0.1, 10.0))
def test_eps_loss_laws(p, c):
    """L >= 0, L = 0 at eps_hat = eps, constant weights c scale L by c, grad = dL/d eps_hat."""
    x, eps = p.x.astype(np.float64), p.eps.astype(np.float64)
    loss, grad = R.eps_loss(x, eps, p.weights)
    assert loss >= 0 and R.eps_loss(eps, eps, p.weights)[0] == 0
    scaled, _ = R.eps_loss(x, eps, np.full(x.shape[0], c))
    np.testing.assert_allclose(scaled, c * R.eps_loss(x, eps)[0], rtol=1e-12)
    h, flat = 1e-6, x.reshape(-1)
    for k in np.random.default_rng(0).choice(flat.size, size=min(5, flat.size), replace=False):
        e = np.zeros_like(flat)
        e[k] = h
        numeric = (R.eps_loss((flat + e).reshape(x.shape), eps, p.weights)[0]
                   - R.eps_loss((flat - e).reshape(x.shape), eps, p.weights)[0]) / (2 * h)
        np.testing.assert_allclose(grad.reshape(-1)[k], numeric, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- Numba == reference

@given(problems())
def test_numba_q_sample_matches_reference(p):
    check_q_sample(p, "numba")


@given(problems())
def test_numba_eps_loss_matches_reference(p):
    check_eps_loss(p, "numba")


@given(problems())
def test_numba_eps_loss_gradient_is_the_reference_bit_for_bit(p):
    """The sum may be reassociated (vectorised); the gradient, one multiply by (2/N) w_b, may not."""
    grad = K.eps_loss(p.x, p.eps, p.weights, impl="numba")[1]
    assert grad.tobytes() == R.eps_loss(p.x, p.eps, p.weights)[1].tobytes()


@given(problems())
def test_numba_reverse_step_matches_reference(p):
    check_reverse_step(p, "numba")


@given(problems(), st.sampled_from(["q_sample", "reverse_step"]))
def test_non_contiguous_inputs(p, op):
    """Transposed (non-contiguous) inputs give the reference's result."""
    p.x, p.eps, p.z = (np.asfortranarray(a) for a in (p.x, p.eps, p.z))
    if op == "q_sample":
        check_q_sample(p, "numba")
    else:
        check_reverse_step(p, "numba")


def test_numba_loss_does_not_depend_on_thread_count():
    numba = pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    eps_hat, eps = rng.standard_normal((3, 5 * numba_cpu.CHUNK + 7)), rng.standard_normal((3, 5 * numba_cpu.CHUNK + 7))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = K.eps_loss(eps_hat, eps, impl="numba")[0]
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = K.eps_loss(eps_hat, eps, impl="numba")[0]
    finally:
        numba.set_num_threads(before)
    assert one.tobytes() == many.tobytes()


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_out_argument_is_written_and_returned(impl):
    s = unscaled_linear(20)
    rng = np.random.default_rng(0)
    x, eps, z = (rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(3))
    t = np.array([1, 20])
    out = np.empty_like(x)
    assert K.q_sample(x, t, eps, s, impl=impl, out=out) is out
    np.testing.assert_array_equal(out, K.q_sample(x, t, eps, s, impl=impl))
    assert K.reverse_step(x, t, eps, z, s, impl=impl, out=out) is out
    np.testing.assert_array_equal(out, K.reverse_step(x, t, eps, z, s, impl=impl))
    assert K.eps_loss(x, eps, impl=impl, out=out)[1] is out
    with pytest.raises(ValueError, match="C-contiguous"):
        K.q_sample(x, t, eps, s, impl=impl, out=np.empty((4, 3, 2), np.float32).transpose(2, 1, 0))


# ---------------------------------------------------------------- dispatch

def test_available_and_auto():
    assert {"numpy", "numba"} <= set(K.available()) and set(K.available()) <= set(K.IMPLS)
    assert K.resolve("auto", "numpy") is numba_cpu


def test_the_contract_is_what_the_dispatchers_call():
    """CONTRACT lists each dispatcher's parameters without impl=, so the two cannot drift apart."""
    for name, params in K.CONTRACT.items():
        dispatcher = tuple(p for p in inspect.signature(getattr(K, name)).parameters if p != "impl")
        assert dispatcher == params, name


def _fake_impl(name="fake", backends=("numpy",), rank=None, works=True, **overrides):
    """A module that declares itself like kernels/<impl>.py, with the reference's functions."""
    from minidiff.kernels import reference_impl
    module = types.ModuleType(f"fake_{name}")
    module.__dict__.update({fn: getattr(reference_impl, fn) for fn in K.CONTRACT})
    module.__dict__.update(NAME=name, BACKENDS=backends, AUTO_RANK=rank or {"numpy": 9}, probe=lambda: works)
    module.__dict__.update(overrides)
    return module


def test_contract_check_refuses_a_missing_function_or_a_renamed_parameter():
    K.check_contract(_fake_impl())
    incomplete = _fake_impl()
    del incomplete.eps_loss_philox
    with pytest.raises(TypeError, match=r"lacks \['eps_loss_philox'\]"):
        K.check_contract(incomplete)
    with pytest.raises(TypeError, match=r"q_sample takes .*'noise'"):
        K.check_contract(_fake_impl(q_sample=lambda x0, t, noise, schedule, out=None: x0))
    with pytest.raises(TypeError, match="AUTO_RANK ranks backends \\['cupy'\\]"):
        K.check_contract(_fake_impl(rank={"cupy": 1}))


def test_auto_takes_the_highest_ranked_available_implementation(monkeypatch):
    registry = dict(K.REGISTRY, fast=_fake_impl("fast", rank={"numpy": 9}),
                    broken=_fake_impl("broken", rank={"numpy": 99}, works=False))
    monkeypatch.setattr(K, "REGISTRY", registry)
    monkeypatch.setattr(K, "IMPLS", tuple(registry))
    monkeypatch.setattr(K, "_available", {})
    assert K.resolve("auto", "numpy") is registry["fast"]  # "broken" ranks higher but its probe fails
    assert "broken" not in K.available() and "fast" in K.serving("numpy")


def test_a_new_module_declaring_name_is_discovered(tmp_path, monkeypatch):
    """Adding an implementation is one new file: discover() finds it and checks its contract."""
    package = tmp_path / "fake_kernels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("X = 1\n")  # not an implementation: no NAME
    (package / "mine.py").write_text(
        "from minidiff.kernels.reference_impl import *  # noqa: F401,F403\n"
        "NAME = 'mine'\nBACKENDS = ('numpy',)\nAUTO_RANK = {'numpy': 5}\n\n\ndef probe():\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = K.discover(importlib.import_module("fake_kernels"))
    assert list(found) == ["mine"] and found["mine"].AUTO_RANK == {"numpy": 5}


def test_unknown_impl():
    x = np.zeros((1, 2))
    with pytest.raises(ValueError, match="unknown impl 'fortran'"):
        K.eps_loss(x, x, impl="fortran")


# ---------------------------------------------------------------- bad input: early, named errors

def _call(op, impl, x=None, t=None, eps=None, z=None, schedule=None, weights=None, variance="fixed_small"):
    s = schedule or unscaled_linear(10)
    x = np.zeros((2, 3)) if x is None else x
    eps = np.zeros_like(x) if eps is None else eps
    z = np.zeros_like(x) if z is None else z
    t = np.array([1, 10]) if t is None else t
    if op == "q_sample":
        return K.q_sample(x, t, eps, s, impl=impl)
    if op == "eps_loss":
        return K.eps_loss(x, eps, weights, impl=impl)
    return K.reverse_step(x, t, eps, z, s, variance=variance, impl=impl)


ALL_OPS = ["q_sample", "eps_loss", "reverse_step"]
T_OPS = ["q_sample", "reverse_step"]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("op", ALL_OPS)
def test_rejects_mismatched_shapes(op, impl):
    with pytest.raises(ValueError, match=r"shape mismatch: .*\(2, 3\).*\(2, 4\)"):
        _call(op, impl, eps=np.zeros((2, 4)))


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("op", ALL_OPS)
def test_rejects_integer_data(op, impl):
    with pytest.raises(TypeError, match="dtype int64.*float32 or float64"):
        _call(op, impl, x=np.zeros((2, 3), np.int64), eps=np.zeros((2, 3), np.int64), z=np.zeros((2, 3), np.int64))


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("op", ALL_OPS)
def test_rejects_mixed_dtypes(op, impl):
    with pytest.raises(TypeError, match="dtype mismatch"):
        _call(op, impl, eps=np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("op", T_OPS)
@pytest.mark.parametrize("bad_t", [[0, 5], [1, 11], [-3, 2]])
def test_rejects_t_outside_1_to_T(op, impl, bad_t):
    with pytest.raises(ValueError, match=r"t must lie in 1..T = 1..10"):
        _call(op, impl, t=np.array(bad_t))


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("op", T_OPS)
def test_rejects_t_of_wrong_length_or_dtype(op, impl):
    with pytest.raises(ValueError, match=r"t must have shape \(B,\) = \(2,\).*\(3,\)"):
        _call(op, impl, t=np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="t must hold integer timesteps"):
        _call(op, impl, t=np.array([1.0, 2.0]))


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_rejects_bad_weights_and_variance(impl):
    with pytest.raises(ValueError, match=r"weights must have shape \(B,\) = \(2,\)"):
        _call("eps_loss", impl, weights=np.ones(3))
    with pytest.raises(ValueError, match="variance must be one of"):
        _call("reverse_step", impl, variance="learned")


class _FakeCupyArray:
    """Reports itself as a CuPy array (by module name) to test the mixed-backend check without a GPU."""
    __module__ = "cupy._core.core"
    shape, ndim, dtype = (2, 3), 2, np.dtype(np.float64)


@pytest.mark.parametrize("op", ALL_OPS)
def test_rejects_arrays_of_different_backends(op):
    with pytest.raises(TypeError, match="different backends: .* numpy, .* cupy"):
        _call(op, "numpy", eps=_FakeCupyArray())


def test_rejects_tensors_and_non_arrays():
    from minidiff import Tensor
    with pytest.raises(TypeError, match="minidiff.Tensor.*eps_hat.data"):
        K.eps_loss(Tensor(np.zeros(3)), np.zeros(3))
    with pytest.raises(TypeError, match="must be a numpy or cupy array, got list"):
        K.eps_loss([0.0], np.zeros(1))


def test_rejects_schedule_without_tables():
    with pytest.raises(TypeError, match="lacks the tables"):
        K.q_sample(np.zeros(2), np.array([1, 1]), np.zeros(2), object())


@given(schedules())
def test_sigma_is_zero_at_t_1_and_matches_the_variance(s):
    for variance, var in (("fixed_small", s.posterior_variance), ("fixed_large", s.betas)):
        sigma = R.sigma_table(s, variance)
        assert sigma[1] == 0
        np.testing.assert_allclose(sigma[2:] ** 2, np.asarray(var)[2:], rtol=1e-12)


@given(problems(shapes=small_shapes(max_side=3)))
def test_reference_q_sample_is_differentiable_on_tensors(p):
    """minidiff.diffusion.q_sample delegates here with Tensors; gradients flow to x0 and eps."""
    from minidiff.testing import gradcheck
    gradcheck(lambda x0, eps: R.q_sample(x0, p.t, eps, p.schedule), [p.x.astype(np.float64), p.eps.astype(np.float64)])
