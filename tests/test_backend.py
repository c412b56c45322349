"""Backend selection and seeding."""
import subprocess
import sys

import numpy as np
import pytest

import minidiff as md
from minidiff import backend


def test_default_is_numpy():
    assert md.get_backend() == "numpy" and backend.xp() is np


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        md.set_backend("torch")


@pytest.mark.skipif(backend.cupy_available(), reason="this test is about machines without CuPy/GPU")
def test_asking_for_cupy_without_it_says_why():
    with pytest.raises(backend.BackendError, match="cupy.*(not installed|no CUDA GPU)"):
        md.set_backend("cupy")
    assert md.get_backend() == "numpy"  # a failed switch leaves the backend alone
    with pytest.raises(backend.BackendError):
        with md.use_backend("cupy"):
            pass


@pytest.mark.skipif(backend.cupy_available(), reason="this test is about machines without CuPy/GPU")
def test_environment_variable_selects_backend():
    code = "import minidiff; minidiff.get_backend()"
    run = subprocess.run([sys.executable, "-c", code], env={"MINIDIFF_BACKEND": "cupy", "PATH": ""},
                         capture_output=True, text=True)
    assert run.returncode != 0 and "cupy" in run.stderr


def test_xp_of_reports_the_array_module():
    assert md.xp_of(np.ones(2)) is np


def test_manual_seed_makes_generators_reproducible():
    md.manual_seed(123)
    a = [md.default_rng().standard_normal(4) for _ in range(2)]
    md.manual_seed(123)
    b = [md.default_rng().standard_normal(4) for _ in range(2)]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # successive generators differ


def test_explicit_seed_is_independent_of_manual_seed():
    np.testing.assert_array_equal(md.default_rng(7).random(3), md.default_rng(7).random(3))


@pytest.mark.gpu
def test_cupy_backend_switch_and_rng():
    import cupy
    with md.use_backend("cupy") as xp:
        assert xp is cupy
        t = md.Tensor([1.0, 2.0])
        assert t.backend == "cupy" and t.device == "cuda"
        r = md.default_rng(0).standard_normal(3)
        assert md.xp_of(r) is cupy
    assert md.get_backend() == "numpy"
