/* Internal to kernels/cpu: the CPU backend's context, its thread pool and the matmul entry point
 * shared between xc_cpu.c (ops table, pool, most ops) and xc_cpu_matmul.c (GEMM/GEMV kernels). */
#pragma once

#include "xc_backend.h"

/* Runs fn(arg, task, n_tasks) for every task in [0, n_tasks) on the backend's thread pool (the
 * calling thread takes part) and returns when all are done. Tasks must write disjoint outputs.
 * n_tasks == 1 runs inline. */
typedef void (*xc_cpu_task_fn)(void *arg, int task, int n_tasks);
void xc_cpu_parallel(xc_backend *be, int n_tasks, xc_cpu_task_fn fn, void *arg);

/* Threads in the pool, including the caller (>= 1). */
int xc_cpu_n_threads(const xc_backend *be);

/* Per-thread scratch: one grow-only, 64-byte aligned buffer per slot and OS thread, kept between
 * calls, so a prefill matmul does not map and fault in fresh memory every time (a 512-row w2 packs
 * 29 MiB of x; first-touch costs about 0.6 ms per MiB in the VMs we measure on). Contents are not
 * kept when a buffer grows. Returns NULL when out of memory (the old buffer is freed). A thread's
 * buffers are freed when it exits (a pthread key's destructor) or by xc_cpu_scratch_release (the
 * backend's close calls it for the closing thread). */
enum {
    XC_CPU_SCRATCH_XPACK, /* matmul: x packed once per call (the calling thread) */
    XC_CPU_SCRATCH_TASK,  /* matmul: a packed-GEMM task's panel and accumulators */
    XC_CPU_SCRATCH_OP,    /* an op's own temporary around its matmuls (PLoRA's x A^T) */
    XC_CPU_SCRATCH_SLOTS
};

void *xc_cpu_scratch(int slot, size_t bytes);
void xc_cpu_scratch_release(void);

/* y = alpha * x @ w^T (+ bias) (+ y): the fast, batch-invariant CPU matmul (xc_cpu_matmul.c). */
xc_status xc_cpu_matmul(xc_backend *be, const xc_matmul_args *a);

/* Validates matmul args (shapes, strides, dtypes, aliasing); shared by the CPU paths and refs. */
xc_status xc_cpu_matmul_check(const xc_matmul_args *a);

/* True when this backend uses its AVX2/FMA/F16C paths: the CPU has them and XC_CPU_NO_SIMD was
 * unset (or "0") when the backend was opened; tests open a second backend to cover the scalar
 * paths. Fixed for the backend's lifetime, so results never change between calls. */
bool xc_cpu_simd(const xc_backend *be);

/* The non-GEMM attention kernel (xc_cpu_attn.c). */
xc_status xc_cpu_attention(xc_backend *be, const xc_attention_args *a);
