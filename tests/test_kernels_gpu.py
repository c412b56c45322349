"""Fused kernels on a real GPU (marker gpu: skipped cleanly without CuPy and a CUDA device).

The CUDA C kernels (impl="cupy") and the Numba CUDA kernels on CuPy arrays are compared with
the reference on the host, over the same hypothesis problems as the CPU kernels, including
sizes that are not multiples of the block size or of the 128-bit pack.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidiff.kernels as K
from tests.kernel_checks import check_all
from tests.strategies_kernels import unscaled_linear, problems

pytestmark = pytest.mark.gpu
# every registered implementation that declares CuPy arrays, other than the reference
DECLARED = [name for name, module in K.REGISTRY.items() if "cupy" in module.BACKENDS and name != K.REFERENCE]
GPU_IMPLS = [name for name in DECLARED if name in K.available()]


def test_every_declared_gpu_impl_runs_here():
    """On a GPU machine each implementation that declares CuPy arrays must pass its probe (compile and launch)."""
    missing = [name for name in DECLARED if name not in K.available()]
    assert not missing, f"declared for CuPy arrays but their probe fails on this GPU: {missing}"


def _cupy():
    import cupy
    return cupy


@given(problems(), st.sampled_from(GPU_IMPLS))
def test_gpu_impls_match_reference(p, impl):
    check_all(p, impl, to=_cupy().asarray)


def _shifted(a):
    """A CuPy copy of a that starts one element into its buffer: not 16-byte aligned."""
    cp = _cupy()
    buffer = cp.empty(a.size + 1, a.dtype)
    buffer[1:] = cp.asarray(np.ravel(a))
    return buffer[1:].reshape(np.shape(a))


@given(problems())
def test_misaligned_views_take_the_scalar_path(p):
    check_all(p, "cupy", to=_shifted)


@given(problems(), st.integers(0, 2**64 - 1), st.integers(0, 2**40), st.sampled_from(GPU_IMPLS))
def test_gpu_philox_noise_and_fused_ops(p, seed, offset, impl):
    """The CUDA C noise is the reference bit for bit; Numba CUDA's may differ in the last bits if NVVM fuses
    multiply-adds (docs/kernels.md §6); the fused ops equal the two-step ones on that noise."""
    cp = _cupy()
    noise = K.normal(seed, p.x.shape, offset, p.dtype, impl=impl).get()
    ref = K.normal(seed, p.x.shape, offset, p.dtype, impl="numpy")
    if impl == "cupy":
        assert noise.tobytes() == ref.tobytes()
    np.testing.assert_allclose(noise, ref, rtol=1e-6, atol=1e-6)
    x, t = cp.asarray(p.x), cp.asarray(p.t)
    x_t = K.q_sample_philox(x, t, seed, p.schedule, offset, impl=impl).get()
    np.testing.assert_allclose(x_t, K.q_sample(p.x, p.t, noise, p.schedule, impl="numpy"), rtol=1e-5, atol=1e-5)
    grad = K.eps_loss_philox(x, seed, offset, None, impl=impl)[1].get()
    np.testing.assert_allclose(grad, K.eps_loss(p.x, noise, impl="numpy")[1], rtol=1e-5, atol=1e-9)


def test_loss_is_deterministic_and_auto_is_cupy():
    cp = _cupy()
    assert K.resolve("auto", "cupy").__name__.endswith("cupy_raw")
    rng = np.random.default_rng(0)
    eps_hat, eps = (cp.asarray(rng.standard_normal((16, 3, 64, 64)).astype(np.float32)) for _ in range(2))
    runs = {K.eps_loss(eps_hat, eps, impl=impl)[0].get().tobytes() for impl in ["cupy"] * 3}
    assert len(runs) == 1


def test_mixed_backends_rejected_on_gpu():
    cp = _cupy()
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="different backends"):
        K.q_sample(cp.asarray(x), np.array([1, 2]), x, unscaled_linear(4))
