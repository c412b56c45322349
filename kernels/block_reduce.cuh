// Shared by diffusion_ops.cu and philox.cu: the block size, grid-stride indexing and the
// deterministic two-stage sum of the losses (docs/kernels.md, "the loss reduction").
//
// Stage 1 (in each loss kernel): every thread sums its grid-stride elements in double, then
// block_sum tree-reduces the block's THREADS values in shared memory. Stage 2 (sum_partials,
// one block) adds the per-block partials the same way. The grid is a function of n only, so the
// result does not depend on thread scheduling. Blocks must have THREADS threads; cupy_raw.py
// reads THREADS from this file.
#pragma once

#define THREADS 256

__device__ __forceinline__ long long first_index() { return blockIdx.x * (long long)blockDim.x + threadIdx.x; }

__device__ __forceinline__ long long grid_stride() { return (long long)gridDim.x * blockDim.x; }

// Tree-reduce cache[0:THREADS]; cache[0] holds the sum afterwards (same order on every run).
__device__ void block_sum(double* cache) {
    for (int step = THREADS / 2; step > 0; step /= 2) {
        __syncthreads();
        if (threadIdx.x < step) cache[threadIdx.x] += cache[threadIdx.x + step];
    }
    __syncthreads();
}

extern "C" __global__ void sum_partials(const double* partial, long long count, double* result) {
    __shared__ double cache[THREADS];
    double acc = 0.0;
    for (long long j = threadIdx.x; j < count; j += THREADS) acc += partial[j];
    cache[threadIdx.x] = acc;
    block_sum(cache);
    if (threadIdx.x == 0) result[0] = cache[0];
}
