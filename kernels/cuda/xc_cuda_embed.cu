/* Embedding gather (token ids -> f32 rows) and patchify (im2col for the CLIP patch conv). */
#include "xc_cuda_common.cuh"

static __global__ void xc_cuda_embed_kernel(const void *table, int tt, const int32_t *ids, float *y,
                                            int ldy, int n) {
    size_t id = (size_t)ids[blockIdx.x];
    float *yr = y + (size_t)blockIdx.x * (size_t)ldy;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        yr[i] = xc_cuda_ld(table, tt, id * (size_t)n + (size_t)i);
    }
}

/* One thread per output element: row = patch (image, gy, gx), column = (channel, ky, kx). */
static __global__ void xc_cuda_patchify_kernel(const float *images, float *y, int n_img,
                                               int channels, int size, int patch) {
    size_t grid = (size_t)(size / patch), ps = (size_t)patch, sz = (size_t)size;
    size_t cols = (size_t)channels * ps * ps;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n_img * grid * grid * cols) {
        return;
    }
    size_t r = i / cols, col = i % cols;
    size_t img = r / (grid * grid), gy = r / grid % grid, gx = r % grid;
    size_t c = col / (ps * ps), ky = col / ps % ps, kx = col % ps;
    y[i] = images[((img * (size_t)channels + c) * sz + gy * ps + ky) * sz + gx * ps + kx];
}

extern "C" cudaError_t xc_cuda_embed_launch(const void *table, int tt, const int32_t *ids, float *y,
                                            int ldy, int m, int n, cudaStream_t stream) {
    if (m > 0) {
        xc_cuda_embed_kernel<<<m, 256, 0, stream>>>(table, tt, ids, y, ldy, n);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t xc_cuda_patchify_launch(const float *images, float *y, int n_img,
                                               int channels, int size, int patch,
                                               cudaStream_t stream) {
    size_t grid = (size_t)(size / patch);
    size_t total = (size_t)n_img * grid * grid * (size_t)channels * (size_t)patch * (size_t)patch;
    if (total > 0) {
        xc_cuda_patchify_kernel<<<xc_cuda_blocks(total, 256), 256, 0, stream>>>(
            images, y, n_img, channels, size, patch);
    }
    return cudaGetLastError();
}
