/* Row softmax with temperature and the argmax used by greedy sampling: one block per row. */
#include "xc_cuda_common.cuh"

#define XC_SOFTMAX_THREADS 256

/* (value, index) pairs: the larger value wins, ties go to the lower index (first maximum). */
static __device__ __forceinline__ void xc_cuda_argmax_pick(float *v, int *i, float ov, int oi) {
    if (ov > *v || (ov == *v && oi < *i)) {
        *v = ov;
        *i = oi;
    }
}

static __global__ void xc_cuda_softmax_kernel(float *x, int ldx, int n, float t, int skip,
                                              int32_t *argmax) {
    __shared__ float red[32];
    __shared__ float redv[32];
    __shared__ int redi[32];
    float *xr = x + (size_t)blockIdx.x * (size_t)ldx;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (argmax) {
        float bv = -INFINITY;
        int bi = n; /* nothing yet */
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            xc_cuda_argmax_pick(&bv, &bi, xr[i], i);
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            xc_cuda_argmax_pick(&bv, &bi, ov, oi);
        }
        if (lane == 0) {
            redv[warp] = bv;
            redi[warp] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
                xc_cuda_argmax_pick(&bv, &bi, redv[w], redi[w]);
            }
            /* an all -inf (or NaN) row: the CPU keeps index 0 */
            argmax[blockIdx.x] = bi < n ? bi : 0;
        }
    }
    if (skip) {
        return;
    }
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = t != 1.0f ? __fdiv_rn(xr[i], t) : xr[i];
        mx = fmaxf(mx, v);
    }
    mx = xc_cuda_block_max(mx, red);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = t != 1.0f ? __fdiv_rn(xr[i], t) : xr[i];
        float e = expf(__fsub_rn(v, mx));
        xr[i] = e;
        s = __fadd_rn(s, e);
    }
    s = xc_cuda_block_sum(s, red);
    float inv = __fdiv_rn(1.0f, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        xr[i] = __fmul_rn(xr[i], inv);
    }
}

extern "C" cudaError_t xc_cuda_softmax_launch(float *x, int ldx, int m, int n, float t, int skip,
                                              int32_t *argmax, cudaStream_t stream) {
    if (m > 0) {
        xc_cuda_softmax_kernel<<<m, XC_SOFTMAX_THREADS, 0, stream>>>(x, ldx, n, t, skip, argmax);
    }
    return cudaGetLastError();
}
