"""Run the Numba CUDA kernel checks under the CUDA simulator, in a subprocess.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported, and this process has already
imported it (or may import it) without the simulator; so a plain `python -m pytest` (the CI
command) exercises tests/cudasim_kernels_check.py through this test, which fails if any of
those checks fails or none ran.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_numba_cuda_kernels_under_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/cudasim_kernels_check.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report
