/* Conversions and epilogues around the cuBLAS GEMMs of the CUDA backend: activations to bf16/f16
 * for the tensor cores, and the bias add. */
#include "xc_cuda_common.cuh"

static __global__ void xc_cuda_convert_kernel(const float *src, int lds, void *dst, int m, int k,
                                              int to_bf16) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)m * (size_t)k;
    if (i >= total) {
        return;
    }
    size_t r = i / (size_t)k, c = i % (size_t)k;
    float v = src[r * (size_t)lds + c];
    if (to_bf16) {
        ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(v);
    } else {
        ((__half *)dst)[i] = __float2half_rn(v);
    }
}

static __global__ void xc_cuda_bias_kernel(float *y, int ldy, const void *bias, int bt, int m,
                                           int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)m * (size_t)n) {
        return;
    }
    size_t r = i / (size_t)n, c = i % (size_t)n;
    y[r * (size_t)ldy + c] += xc_cuda_ld(bias, bt, c);
}

extern "C" cudaError_t xc_cuda_convert_launch(const float *src, int lds, void *dst, int m, int k,
                                              int to_bf16, cudaStream_t stream) {
    size_t total = (size_t)m * (size_t)k;
    if (total > 0) {
        xc_cuda_convert_kernel<<<xc_cuda_blocks(total, 256), 256, 0, stream>>>(src, lds, dst, m, k,
                                                                               to_bf16);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t xc_cuda_bias_launch(float *y, int ldy, const void *bias, int bt, int m,
                                           int n, cudaStream_t stream) {
    size_t total = (size_t)m * (size_t)n;
    if (total > 0) {
        xc_cuda_bias_kernel<<<xc_cuda_blocks(total, 256), 256, 0, stream>>>(y, ldy, bias, bt, m, n);
    }
    return cudaGetLastError();
}
