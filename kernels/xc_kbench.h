/* Kernel benchmarks behind `xcpipe bench kernels`: the machine's DRAM read bandwidth and matmul
 * timings on the CPU backend (and, for comparison, OpenBLAS sgemm/sgemv on f32 weights). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xc_backend.h"

/* Read bandwidth in GB/s (1e9 bytes/s) with the CPU backend's threads: a buffer of `bytes` (make it
 * much larger than the L3) is summed with vector loads, each thread its own contiguous part, once
 * per read pattern in every pass (one sequential stream; 8 interleaved streams, 16 KiB and
 * 256 KiB apart); the fastest of all these timed reads goes to *gbps. XC_ERR_ARG for bytes < 1 MiB
 * or passes < 1, XC_ERR_NOMEM if the buffer cannot be allocated. */
xc_status xc_kbench_read_bw(xc_backend *be, size_t bytes, int passes, double *gbps);

/* The same measurement with a buffer kept between calls, so that a benchmark can re-measure next
 * to the cases it compares against (the bandwidth of a shared machine drifts). create: XC_ERR_ARG
 * for bytes < 1 MiB, XC_ERR_NOMEM; the caller owns *out. run: XC_ERR_ARG for passes < 1. */
typedef struct xc_kbench_bw xc_kbench_bw;
xc_status xc_kbench_bw_create(size_t bytes, xc_kbench_bw **out);
xc_status xc_kbench_bw_run(xc_backend *be, xc_kbench_bw *bw, int passes, double *gbps);
/* One pass (every pattern once, the fastest counts) without the warm-up read: a short sample
 * (about 3 reads of the buffer) to take between the steps of a measurement it is paired with. */
xc_status xc_kbench_bw_sample(xc_backend *be, xc_kbench_bw *bw, double *gbps);
void xc_kbench_bw_destroy(xc_kbench_bw *bw);

/* The CPU backend's FMA peak in GFLOP/s with its threads: every thread runs 12 independent 8-lane
 * FMA chains in registers (no memory traffic) for about 16 ms; one untimed run, then the fastest
 * of `passes` timed runs. The ceiling the prefill GEMMs (8-lane FMA chains) are compared with.
 * XC_ERR_ARG for passes < 1, XC_ERR_UNSUPPORTED without AVX2/FMA (or off x86). */
xc_status xc_kbench_fma_peak(xc_backend *be, int passes, double *gflops);

/* Threads of a CPU backend, including the caller (what n_threads = 0 resolved to). */
int xc_kbench_threads(const xc_backend *be);

/* A matmul benchmark case: random weights (n, k) of one dtype, inputs x (max_m, k), outputs. */
typedef struct xc_kbench_mm xc_kbench_mm;

/* One timing: the best call of several. */
typedef struct xc_kbench_result {
    double ms;     /* best wall time of one call, milliseconds */
    double gflops; /* 2 m n k / time */
    double wgbps;  /* weight bytes (n k sizeof(dtype)) / time, GB/s */
    int runs;      /* timed calls made */
} xc_kbench_result;

/* Allocates and fills a case (deterministic random data). XC_ERR_ARG for non-positive sizes,
 * XC_ERR_UNSUPPORTED for a dtype other than f32/f16/bf16, XC_ERR_NOMEM. The caller owns *out. */
xc_status xc_kbench_mm_create(int n, int k, xc_dtype wt, int max_m, xc_kbench_mm **out);

/* Frees a case; NULL is a no-op. */
void xc_kbench_mm_destroy(xc_kbench_mm *mm);

/* Times xc_backend_matmul on the first m rows: one warm-up call, then up to `iters` timed calls
 * (fewer once 2 s have been spent, at least one), each after evicting the caches by streaming a
 * 64 MiB buffer, so that weights come from DRAM as they do when a model runs layer after layer.
 * With blas, times OpenBLAS instead (f32 only: cblas_sgemv for m = 1 when blas_gemv, else
 * cblas_sgemm) on as many threads as the backend has. XC_ERR_ARG for m outside [1, max_m]. */
xc_status xc_kbench_mm_run(xc_backend *be, xc_kbench_mm *mm, int m, int iters, bool blas,
                           bool blas_gemv, xc_kbench_result *out);
