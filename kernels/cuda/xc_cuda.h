/* CUDA backend extras beyond the ops table (XC_CUDA=ON builds only): device facts for sizing the
 * KV pool and for benchmarks, random device data, and the two ceiling measurements that
 * `xcpipe bench model/vision --backend cuda` prints beside its figures. */
#pragma once

#include <stdbool.h>
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

/* One row of a micro-batch to sample on the device (issue 13.7): the rules of the CPU sampler
 * (worker/xc_sampler.h, xc_sampler_plan) for the repetition penalty, greedy, temperature, top-k
 * and top-p, with the draw's uniform u computed on the host. */
typedef struct xc_cuda_sample_row {
    int row; /* row of the logits */
    bool greedy;
    float temperature;
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off */
    float repetition_penalty; /* 1 = off */
    const int32_t *seen;      /* (n_seen) distinct ids in [0, n), host memory */
    int n_seen;
    double u;         /* uniform in [0, 1) of this draw */
    int top_logprobs; /* -1: no logprobs; else 0..20 alternatives */
} xc_cuda_sample_row;

/* Samples the m rows together on the device from logits (device, rows of n at stride ld, modified
 * in place: penalty, temperature) and copies only the results to the host: tok[i] for row i, and
 * for rows that ask for logprobs lp[i] and top_ids / top_lps[20 i .. 20 i + top_logprobs) (lp,
 * top_ids, top_lps may be NULL when no row asks). XC_ERR_ARG for a bad row, XC_ERR_DEVICE on a
 * device failure. */
xc_status xc_cuda_sample(xc_backend *be, float *logits, int ld, int n,
                         const xc_cuda_sample_row *rows, int m, int32_t *tok, float *lp,
                         int32_t *top_ids, float *top_lps);
