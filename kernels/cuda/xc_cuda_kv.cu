/* KV-cache store: copies key and value rows into their cache slots, one block per row; a bf16
 * cache gets each value rounded to nearest even (NaN stays NaN), as xc_f32_to_bf16 does. */
#include "xc_cuda_common.cuh"

static __device__ __forceinline__ unsigned short xc_cuda_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

static __global__ void xc_cuda_kv_store_kernel(const float *k, int ldk, const float *v, int ldv,
                                               void *k_cache, void *v_cache, int bf16,
                                               const int32_t *row, const int32_t *slot, int width) {
    size_t r = (size_t)row[blockIdx.x], s = (size_t)slot[blockIdx.x];
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float kx = k[r * (size_t)ldk + i], vx = v[r * (size_t)ldv + i];
        size_t o = s * (size_t)width + i;
        if (bf16) {
            ((unsigned short *)k_cache)[o] = xc_cuda_to_bf16(kx);
            ((unsigned short *)v_cache)[o] = xc_cuda_to_bf16(vx);
        } else {
            ((float *)k_cache)[o] = kx;
            ((float *)v_cache)[o] = vx;
        }
    }
}

extern "C" cudaError_t xc_cuda_kv_store_launch(const float *k, int ldk, const float *v, int ldv,
                                               void *k_cache, void *v_cache, int bf16,
                                               const int32_t *row, const int32_t *slot, int n,
                                               int width, cudaStream_t stream) {
    if (n > 0) {
        xc_cuda_kv_store_kernel<<<n, 256, 0, stream>>>(k, ldk, v, ldv, k_cache, v_cache, bf16, row,
                                                       slot, width);
    }
    return cudaGetLastError();
}
