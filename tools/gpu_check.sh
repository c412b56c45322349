#!/usr/bin/env bash
# The GPU checks in one run: the gpu-marked tests, then the kernel benchmark with its GPU rows.
# Usage: tools/gpu_check.sh OUTDIR   (writes gpu_tests.txt, the results JSON/PNG and nvidia-smi.txt there)
set -u
out=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH=. HYPOTHESIS_PROFILE=ci-fixed
# Without an install, kernels/ is importable as minidiff.kernels only through a link (setup.py maps it).
python -c "import minidiff.kernels" 2>/dev/null || ln -sfn ../kernels minidiff/kernels
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python -c "import cupy, numba, torch; print('cupy', cupy.__version__, 'numba', numba.__version__, 'torch', torch.__version__)" \
    > "$out/versions.txt" 2>&1
timeout "${GPU_TEST_TIMEOUT:-240}" python -m pytest -m gpu -q -p no:cacheprovider -rs > "$out/gpu_tests.txt" 2>&1
echo "pytest -m gpu exit $?" >> "$out/gpu_tests.txt"
timeout "${GPU_BENCH_TIMEOUT:-200}" python benchmarks/bench_kernels.py --rounds 7 --name kernels_gpu \
    > "$out/bench_kernels.txt" 2>&1
echo "bench_kernels exit $?" >> "$out/bench_kernels.txt"
cp benchmarks/results/kernels_gpu.json benchmarks/results/kernels_gpu.png "$out/" 2>/dev/null
tail -n 3 "$out/gpu_tests.txt" "$out/bench_kernels.txt"
