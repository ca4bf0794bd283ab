/* Device helpers shared by the .cu files of the CUDA backend (internal to kernels/cuda). */
#pragma once

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "xc_cuda_impl.h"

/* Element i of a weight vector of dtype t (XC_CUDA_F32/F16/BF16) as f32; the conversions from the
 * 16-bit types are exact. */
static __device__ __forceinline__ float xc_cuda_ld(const void *p, int t, size_t i) {
    if (t == XC_CUDA_BF16) {
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    }
    if (t == XC_CUDA_F16) {
        return __half2float(((const __half *)p)[i]);
    }
    return ((const float *)p)[i];
}

/* Blocks of a 1-D grid covering n items with `per` items per block. */
static inline unsigned xc_cuda_blocks(size_t n, unsigned per) {
    return (unsigned)((n + per - 1) / per);
}

/* Sum over a block of 256 threads in a fixed tree order (same bits for a row whatever the grid);
 * every thread gets the result. red holds 32 floats of shared memory. */
static __device__ __forceinline__ float xc_cuda_block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) {
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) {
        red[warp] = v;
    }
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = lane < nw ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

/* Max over a block (exact, so any order gives the same result). */
static __device__ __forceinline__ float xc_cuda_block_max(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
        red[warp] = v;
    }
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = lane < nw ? red[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}
