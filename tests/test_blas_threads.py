"""`one_blas_thread`: NumPy's BLAS runs one thread inside the context and its previous count after it."""
import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from minidiff.ops.attention import one_blas_thread  # noqa: E402


def blas_threads():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("before", [1, 2, 3])
def test_one_blas_thread_limits_then_restores(before):
    with threadpoolctl.threadpool_limits(limits=before, user_api="blas"):
        assert set(blas_threads()) == {before}
        with one_blas_thread(np):
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {before}


def test_one_blas_thread_is_a_no_op_for_other_array_modules():
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with one_blas_thread(object()):
            assert set(blas_threads()) == {2}
