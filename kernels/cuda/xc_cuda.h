/* CUDA backend extras beyond the ops table (XC_CUDA=ON builds only): device facts for sizing the
 * KV pool and for benchmarks, random device data, and the two ceiling measurements that
 * `xcpipe bench model/vision --backend cuda` prints beside its figures. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_backend.h"
#include "xc_dtype.h"
#include "xc_status.h"

typedef struct xc_cuda_dev_info {
    char name[256]; /* e.g. "NVIDIA H100 80GB HBM3" */
    int device, n_sm;
    size_t free_bytes; /* cudaMemGetInfo at the time of the call */
    size_t total_bytes;
} xc_cuda_dev_info;

/* Device facts of a "cuda" backend. XC_ERR_ARG for another backend, XC_ERR_DEVICE on failure. */
xc_status xc_cuda_info(xc_backend *be, xc_cuda_dev_info *out);

/* Fills n elements of device memory dev (dtype f32, f16 or bf16) with uniform values in
 * [-amp, amp) from seed, on the backend's stream. XC_ERR_UNSUPPORTED for other dtypes. */
xc_status xc_cuda_fill_random(xc_backend *be, void *dev, xc_dtype t, size_t n, float amp,
                              uint64_t seed);

/* Best of iters device-to-device copies of bytes from src to dst (after one warm-up), in ms from
 * CUDA events. Bandwidth = 2 * bytes / time (bytes read plus bytes written). */
xc_status xc_cuda_time_copy(xc_backend *be, void *dst, const void *src, size_t bytes, int iters,
                            double *ms);

/* Best of iters cuBLAS bf16 GEMMs (m, k) x (k, n) -> f32 with fp32 accumulation on random data
 * (after one warm-up), in ms. XC_ERR_NOMEM if the operands do not fit. */
xc_status xc_cuda_time_gemm(xc_backend *be, int m, int n, int k, int iters, double *ms);
