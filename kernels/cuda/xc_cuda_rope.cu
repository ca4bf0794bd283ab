/* Rotary embedding, NeoX half-split, in place: one thread per (row, head, pair). The angle is
 * pos * inv_freq in f32 with inv_freq from the host, as the CPU backend and the HF tables do. */
#include "xc_cuda_common.cuh"

static __global__ void xc_cuda_rope_kernel(float *x, int ldx, const int32_t *pos,
                                           const float *inv_freq, int m, int n_heads, int hd) {
    int half = hd / 2;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t per_row = (size_t)n_heads * (size_t)half;
    if (i >= (size_t)m * per_row) {
        return;
    }
    size_t r = i / per_row, rem = i % per_row;
    int h = (int)(rem / (size_t)half), d = (int)(rem % (size_t)half);
    float angle = __fmul_rn((float)pos[r], inv_freq[d]);
    float c = cosf(angle), s = sinf(angle);
    float *lo = x + r * (size_t)ldx + (size_t)h * (size_t)hd + d;
    float *hi = lo + half;
    float x0 = *lo, x1 = *hi;
    *lo = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    *hi = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
}

extern "C" cudaError_t xc_cuda_rope_launch(float *x, int ldx, const int32_t *pos,
                                           const float *inv_freq, int m, int n_heads, int head_dim,
                                           cudaStream_t stream) {
    size_t total = (size_t)m * (size_t)n_heads * (size_t)(head_dim / 2);
    if (total > 0) {
        xc_cuda_rope_kernel<<<xc_cuda_blocks(total, 256), 256, 0, stream>>>(x, ldx, pos, inv_freq,
                                                                            m, n_heads, head_dim);
    }
    return cudaGetLastError();
}
