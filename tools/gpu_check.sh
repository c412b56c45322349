#!/usr/bin/env bash
# The GPU checks in one run: the fused-kernel gpu tests, the kernel benchmark with its GPU rows, then the
# other gpu-marked tests (layers, autograd, backend). Each step has its own time limit; output streams to OUTDIR.
# Usage: tools/gpu_check.sh OUTDIR
set -u
out=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH=. HYPOTHESIS_PROFILE=ci-fixed
# Without an install, kernels/ is importable as minidiff.kernels only through a link (setup.py maps it).
python -c "import minidiff.kernels" 2>/dev/null || ln -sfn ../kernels minidiff/kernels
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python - > "$out/versions.txt" 2>&1 <<'PY'
import cupy, numba, numpy, torch
print("cupy", cupy.__version__, "numba", numba.__version__, "numpy", numpy.__version__, "torch", torch.__version__)
import minidiff.kernels as K
print("available kernels:", K.available())
from numba import cuda
try:
    K.REGISTRY["numba_cuda"]._probe_kernel[1, 1](cuda.to_device(numpy.zeros(1, numpy.float32)))
    print("numba_cuda compiles")
except Exception as e:
    print("numba_cuda cannot compile:", type(e).__name__, e)
PY
pytest_step() {  # name, time limit, pytest arguments
    local name=$1 limit=$2; shift 2
    timeout "$limit" python -m pytest -v -p no:cacheprovider -rs --durations=10 -o faulthandler_timeout=60 "$@" \
        > "$out/$name.txt" 2>&1
    echo "$name exit $?" >> "$out/$name.txt"
}
pytest_step gpu_kernel_tests "${GPU_KERNEL_TIMEOUT:-120}" -m gpu tests/test_kernels_gpu.py
timeout "${GPU_BENCH_TIMEOUT:-120}" python benchmarks/bench_kernels.py --rounds 7 --name kernels_gpu \
    > "$out/bench_kernels.txt" 2>&1
echo "bench_kernels exit $?" >> "$out/bench_kernels.txt"
cp benchmarks/results/kernels_gpu.json benchmarks/results/kernels_gpu.png "$out/" 2>/dev/null
pytest_step gpu_other_tests "${GPU_OTHER_TIMEOUT:-120}" -m gpu --ignore=tests/test_kernels_gpu.py tests
tail -n 2 "$out"/*.txt
