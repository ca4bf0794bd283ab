/* Random fills for the CUDA benchmarks (weights and inputs of the ceiling measurements): a
 * counter-based hash per element, so any size fills in one pass without host traffic. */
#include "xc_cuda_common.cuh"

static __device__ __forceinline__ uint64_t xc_cuda_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __global__ void xc_cuda_fill_kernel(void *p, int t, size_t n, float a, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t r = xc_cuda_mix(seed + i * 0x9e3779b97f4a7c15ull);
        float v = a * ((float)(r >> 40) * (2.0f / 16777216.0f) - 1.0f);
        if (t == XC_CUDA_BF16) {
            ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
        } else if (t == XC_CUDA_F16) {
            ((__half *)p)[i] = __float2half_rn(v);
        } else {
            ((float *)p)[i] = v;
        }
    }
}

extern "C" cudaError_t xc_cuda_fill_random_launch(void *p, int t, size_t n, float a, uint64_t seed,
                                                  cudaStream_t stream) {
    if (n > 0) {
        unsigned blocks = xc_cuda_blocks(n, 256);
        blocks = blocks > 65536u ? 65536u : blocks;
        xc_cuda_fill_kernel<<<blocks, 256, 0, stream>>>(p, t, n, a, seed);
    }
    return cudaGetLastError();
}
