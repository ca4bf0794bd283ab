/* KV-cache store: copies key and value rows into their cache slots, one block per row. */
#include "xc_cuda_common.cuh"

static __global__ void xc_cuda_kv_store_kernel(const float *k, int ldk, const float *v, int ldv,
                                               float *k_cache, float *v_cache, const int32_t *row,
                                               const int32_t *slot, int width) {
    size_t r = (size_t)row[blockIdx.x], s = (size_t)slot[blockIdx.x];
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        k_cache[s * (size_t)width + i] = k[r * (size_t)ldk + i];
        v_cache[s * (size_t)width + i] = v[r * (size_t)ldv + i];
    }
}

extern "C" cudaError_t xc_cuda_kv_store_launch(const float *k, int ldk, const float *v, int ldv,
                                               float *k_cache, float *v_cache, const int32_t *row,
                                               const int32_t *slot, int n, int width,
                                               cudaStream_t stream) {
    if (n > 0) {
        xc_cuda_kv_store_kernel<<<n, 256, 0, stream>>>(k, ldk, v, ldv, k_cache, v_cache, row, slot,
                                                       width);
    }
    return cudaGetLastError();
}
