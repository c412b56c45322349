"""Every CUDA C source in kernels/ compiles with nvcc to PTX for sm_80 and sm_90.

No GPU is needed (CI has nvcc but no GPU); the test skips only when nvcc is absent. It also
reads the PTX: every entry point cupy_raw.py launches exists, and the wide variants really
emit 128-bit loads.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
SOURCES = sorted(KERNELS.glob("*.cu"))
OPS = ("q_sample", "eps_loss_partial", "reverse_eps", "reverse_clip")
NVCC = shutil.which("nvcc")


@pytest.fixture(scope="module", params=["sm_80", "sm_90"])
def ptx(request, tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found on PATH")
    out = {}
    for source in SOURCES:
        target = tmp_path_factory.mktemp(request.param) / f"{source.stem}.ptx"
        proc = subprocess.run([NVCC, "-ptx", f"-arch={request.param}", "-std=c++17", str(source), "-o", str(target)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"nvcc failed on {source.name} for {request.param}:\n{proc.stderr}"
        out[source.name] = target.read_text()
    return out


def test_there_are_sources():
    assert "diffusion_ops.cu" in [s.name for s in SOURCES]


def test_the_block_reduction_and_block_size_are_written_once():
    """block_reduce.cuh holds THREADS, block_sum and sum_partials; every source includes it."""
    texts = {p.name: p.read_text() for p in [*SOURCES, KERNELS / "block_reduce.cuh"]}
    for needle in ("#define THREADS", "void block_sum(", "void sum_partials("):
        assert [name for name, text in texts.items() if needle in text] == ["block_reduce.cuh"], needle
    for source in SOURCES:
        assert '#include "block_reduce.cuh"' in texts[source.name], source.name


def test_sources_compile_to_ptx(ptx):
    assert set(ptx) == {s.name for s in SOURCES}


def _entry_body(text, name):
    match = re.search(rf"\.entry {name}\((.*?)\n}}", text, re.S)
    assert match, f"entry point {name} missing from the PTX"
    return match.group(1)


@pytest.mark.parametrize("op", OPS)
def test_entry_points_and_wide_loads(ptx, op):
    text = ptx["diffusion_ops.cu"]
    _entry_body(text, "sum_partials")
    _entry_body(ptx["philox.cu"], "sum_partials")
    for kind, width, vector in (("f32", 4, ".v4.f32"), ("f64", 2, ".v2.f64")):
        assert vector not in _entry_body(text, f"{op}_{kind}x1")
        wide = _entry_body(text, f"{op}_{kind}x{width}")
        assert re.search(rf"ld\.global(\.nc)?{re.escape(vector)}", wide), f"{op}_{kind}x{width} has no {vector} load"


@pytest.mark.parametrize("kind", ["f32", "f64"])
def test_philox_noise_has_no_fused_multiply_add(ptx, kind):
    """philox.cu writes every multiply-add of the transforms with __dmul_rn/__dadd_rn: none may become an FMA,
    or the noise would differ from the NumPy reference in the last bits."""
    body = _entry_body(ptx["philox.cu"], f"philox_normal_{kind}")
    assert "fma" not in body and "mad" not in body
