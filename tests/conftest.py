"""Shared test set-up: hypothesis profiles and the gpu marker's skip."""
import os

import pytest
from hypothesis import HealthCheck, settings

_ci = dict(max_examples=25, deadline=None, print_blob=True,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", **_ci)  # the default: fresh random examples on every run
# .ci/run's profile: the same examples on every run (seeded by each test), so a submission's CI
# checks exactly what its author ran; new examples come from "ci" and "thorough" runs.
settings.register_profile("ci-fixed", derandomize=True, **_ci)
# tools/mutation.py's first pass over each mutant: ci-fixed with fewer examples; every mutant that
# survives it is run again under ci-fixed before it counts as a survivor
settings.register_profile("mutation", **{**_ci, "max_examples": 8}, derandomize=True)
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _gpu_visible():
    from minidiff.backend import cupy_available
    return cupy_available()


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _gpu_visible():
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU (none visible)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
