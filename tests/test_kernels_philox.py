"""Philox4x32-10 noise: known answers, exact transforms, one bit pattern on every backend, its laws.

The Numba CUDA generator is checked in cudasim_kernels_check.py, the CuPy one in
test_kernels_gpu.py; here the CUDA C generator itself (philox.cu) is compiled for the host with
g++ and compared bit for bit with the NumPy reference.
"""
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from numba import njit

import minidiff.kernels as K
from minidiff.kernels import philox as P
from minidiff.kernels import reference as R
from tests.kernel_checks import check_eps_loss, check_q_sample
from tests.strategies_kernels import problems, small_shapes

# Random123 kat_vectors: counter (4 words), key (2 words) -> output (4 words).
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
EDGE_WORDS = [0, 1, 2**30 - 1, 2**30, 2**31 - 1, 2**31, 3 * 2**30, 2**32 - 2, 2**32 - 1]
words = st.lists(st.one_of(st.sampled_from(EDGE_WORDS), st.integers(0, 2**32 - 1)), min_size=1, max_size=64)
seeds = st.one_of(st.sampled_from([0, 2**32 - 1, 2**32, 2**64 - 1]), st.integers(0, 2**64 - 1))
noise_shapes = st.one_of(small_shapes(max_side=9), st.tuples(st.integers(1, 2), st.integers(16380, 16400)))
philox_jit, log_term_jit, trig_jit = (njit(f) for f in (P.philox4x32_10, P._neg2log_uniform_scalar,
                                                         P._cos_sin_2pi_scalar))


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers(counter, key, expected):
    args = [np.uint64(v) for v in counter + key]
    assert tuple(int(w) for w in P.philox4x32_10(*args)) == expected
    assert tuple(int(w) for w in philox_jit(*args)) == expected
    arrays = [np.full(3, v, np.uint64) for v in counter + key]
    assert all((w == e).all() for w, e in zip(P.philox4x32_10(*arrays), expected))


@given(words)
def test_transforms_are_accurate(ws):
    w = np.array(ws, np.uint64)
    exact_r2 = np.array([-2.0 * math.log((v + 1) * 2.0**-32) for v in ws])
    np.testing.assert_allclose(P.neg2log_uniform(w), exact_r2, rtol=1e-15, atol=1e-15)
    theta = np.array([2 * math.pi * v * 2.0**-32 for v in ws])
    cos, sin = P.cos_sin_2pi(w)
    np.testing.assert_allclose(cos, [math.cos(a) for a in theta], atol=2e-15)
    np.testing.assert_allclose(sin, [math.sin(a) for a in theta], atol=2e-15)


@given(words)
def test_scalar_and_array_transforms_agree_bit_for_bit(ws):
    w = np.array(ws, np.uint64)
    cos, sin = P.cos_sin_2pi(w)
    assert [log_term_jit(v) for v in w] == list(P.neg2log_uniform(w))
    assert [trig_jit(v) for v in w] == list(zip(cos, sin))


@given(seeds, st.integers(0, 2**40), noise_shapes, st.sampled_from(["float32", "float64"]))
def test_numba_noise_is_the_reference_bit_for_bit(seed, offset, shape, dtype):
    got, ref = K.normal(seed, shape, offset, dtype, impl="numba"), K.normal(seed, shape, offset, dtype, impl="numpy")
    assert got.dtype == ref.dtype == np.dtype(dtype) and got.tobytes() == ref.tobytes()


@given(seeds, st.integers(0, 2**40), small_shapes(max_side=9))
def test_noise_of_a_sample_depends_only_on_seed_and_offset_plus_b(seed, offset, shape):
    whole = K.normal(seed, shape, offset, "float64", impl="numba")
    for b in range(shape[0]):
        alone = K.normal(seed, (1,) + shape[1:], offset + b, "float64", impl="numba")
        np.testing.assert_array_equal(whole[b], alone[0])
    assert not np.array_equal(whole, K.normal(seed ^ 1, shape, offset, "float64", impl="numba"))


def test_noise_is_standard_normal():
    scipy_stats = pytest.importorskip("scipy.stats")
    n = K.normal(2024, (4, 250_000), dtype="float64").ravel()
    assert abs(n.mean()) < 5 / math.sqrt(n.size) and abs(n.var() - 1) < 5 * math.sqrt(2 / n.size)
    assert abs(np.mean(n**4) - 3) < 0.05  # kurtosis of N(0, 1)
    assert scipy_stats.kstest(n, "norm").pvalue > 1e-3
    lag = np.corrcoef(n[:-1], n[1:])[0, 1]  # neighbours share a Philox block: still uncorrelated
    assert abs(lag) < 5 / math.sqrt(n.size)


@given(problems(), seeds, st.integers(0, 2**40))
def test_fused_noise_ops_equal_the_ops_on_the_drawn_noise(p, seed, offset):
    """q_sample_philox = q_sample(x0, t, normal(...)); eps_loss_philox = eps_loss(eps_hat, normal(...)).

    Both fused forms produce the same bits as the two-step ones (the loss up to summation order)."""
    p.eps = K.normal(seed, p.x.shape, offset, p.dtype, impl="numpy")
    for impl in ("numpy", "numba"):
        x_t = K.q_sample_philox(p.x, p.t, seed, p.schedule, offset, impl=impl)
        np.testing.assert_array_equal(x_t, R.q_sample(p.x, p.t, p.eps, p.schedule))
        loss, grad = K.eps_loss_philox(p.x, seed, offset, p.weights, impl=impl)
        ref_loss, ref_grad = K.eps_loss(p.x, p.eps, p.weights, impl=impl)
        assert grad.tobytes() == ref_grad.tobytes()
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)  # the sums run in different orders
    check_q_sample(p, "numba")
    check_eps_loss(p, "numba")


@pytest.mark.parametrize("seed,offset,error,match", [
    (-1, 0, ValueError, "seed must lie in 0..2"), (2**64, 0, ValueError, "seed must lie in 0..2"),
    (1.5, 0, TypeError, "seed must be an integer"), (0, -3, ValueError, "offset must lie in 0..2\\^64 - 1"),
    (0, 2**64 - 1, ValueError, "offset \\+ B <= 2\\^64")])
def test_rejects_bad_streams(seed, offset, error, match):
    with pytest.raises(error, match=match):
        K.normal(seed, (2, 3), offset)
    with pytest.raises(error, match=match):
        K.eps_loss_philox(np.zeros((2, 3)), seed, offset)


# ---------------------------------------------------------------- the CUDA C generator, run on the host

HOST_SHIM = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
struct Dim { unsigned x; };
static Dim blockIdx, threadIdx, blockDim, gridDim;
static void __syncthreads() {}
static unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
static double __dmul_rn(double a, double b) { return a * b; }
static double __dadd_rn(double a, double b) { return a + b; }
#include "philox.cu"
int main(int argc, char** argv) {
    unsigned long long seed = strtoull(argv[1], 0, 10), offset = strtoull(argv[2], 0, 10);
    long long batch = atoll(argv[3]), blocks = atoll(argv[4]);
    for (long long b = 0; b < batch; ++b)
        for (long long q = 0; q < blocks; ++q) {
            double n[4];
            gauss4(q, offset + b, seed, n);
            for (int lane = 0; lane < 4; ++lane) printf("%a\n", n[lane]);
        }
}
"""


@pytest.fixture(scope="module")
def host_philox(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found on PATH")
    folder = tmp_path_factory.mktemp("philox_host")
    (folder / "main.cpp").write_text(HOST_SHIM)
    exe = folder / "philox_host"
    kernels = Path(K.__file__).parent
    proc = subprocess.run([cxx, "-O2", "-std=c++17", "-ffp-contract=off", "-I", str(kernels), "-x", "c++",
                           str(folder / "main.cpp"), "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return exe


@pytest.mark.parametrize("seed,offset", [(0, 0), (2**64 - 1, 2**32 - 2), (123456789, 77)])
def test_cuda_c_generator_matches_the_reference(host_philox, seed, offset):
    batch, blocks = 3, 50
    out = subprocess.run([str(host_philox), str(seed), str(offset), str(batch), str(blocks)], capture_output=True,
                         text=True, check=True).stdout.split()
    got = np.array([float.fromhex(v) for v in out]).reshape(batch, 4 * blocks)
    ref = K.normal(seed, (batch, 4 * blocks), offset, "float64", impl="numpy")
    assert got.tobytes() == ref.tobytes()
