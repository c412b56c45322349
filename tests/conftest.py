"""Shared test set-up: hypothesis profiles and the gpu marker's skip."""
import os

import pytest
from hypothesis import HealthCheck, Phase, settings

_ci = dict(max_examples=25, deadline=None, print_blob=True,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", **_ci)  # the default: fresh random examples on every run
# .ci/run's profile: the same examples on every run (seeded by each test), so a submission's CI
# checks exactly what its author ran; new examples come from "ci" and "thorough" runs.
settings.register_profile("ci-fixed", derandomize=True, **_ci)
# tools/mutation.py: "mutation" is its quick first pass over each mutant (8 examples), "mutation-ci"
# the second pass over every mutant that the first did not kill (ci-fixed's examples). Neither shrinks
# a failing example: that changes which example is reported, not whether the test fails, and would
# take many times the test's run time.
_no_shrink = dict(derandomize=True, phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.register_profile("mutation", **{**_ci, "max_examples": 8}, **_no_shrink)
settings.register_profile("mutation-ci", **_ci, **_no_shrink)
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
