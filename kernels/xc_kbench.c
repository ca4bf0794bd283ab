/* Kernel benchmarks: DRAM read bandwidth and matmul timings on the CPU backend. */
#include "xc_kbench.h"

#include <cblas.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "cpu/xc_cpu_impl.h"
#include "xc_dtype.h"
#include "xc_mem.h"
#include "xc_time.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XC_KB_X86 1
#else
#define XC_KB_X86 0
#endif

#define FLUSH_BYTES   (64u << 20) /* twice the dev machine's 32 MiB L3 */
#define TIME_BUDGET_S 2.0         /* stop repeating a case after this much timed work */

/* ---- read bandwidth ---- */

/* Asks for 2 MB pages on the whole 2 MB-aligned part of [p, p + n) (THP in madvise mode);
 * best effort, before the pages are first touched. */
static void kb_advise_huge(void *p, size_t n) {
    uintptr_t lo = ((uintptr_t)p + ((uintptr_t)2 << 20) - 1) & ~(((uintptr_t)2 << 20) - 1);
    uintptr_t hi = ((uintptr_t)p + n) & ~(((uintptr_t)2 << 20) - 1);
    if (hi > lo) {
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
}

/* The read patterns of the reference: one sequential stream, and 8 streams at a time (blocks of
 * 8 rows of KB_ROWS[p] bytes, one cache line of each row in turn, as the decode tiles read their
 * weight rows). On the 2-core Zen 3 dev machine one thread read 8 streams at 26 GB/s where one
 * sequential stream gave 21-23 (2 threads: 35-47 against 33-38), so the reference is the best of
 * the patterns: decode is measured against the fastest read the machine was seen to do. */
#define KB_PATTERNS 3
static const size_t KB_ROWS[KB_PATTERNS] = {0, 16 << 10, 256 << 10};

typedef struct kb_read {
    const char *buf;
    size_t bytes; /* multiple of 128 */
    int pattern;  /* index into KB_ROWS */
    uint64_t sums[64];
} kb_read;

#if XC_KB_X86
/* Sums 128-byte blocks with 4 independent vector adds (enough loads in flight to saturate DRAM). */
__attribute__((target("avx2"))) static uint64_t kb_sum_avx2(const char *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

/* Sums blocks of 8 rows of rb bytes (rb a multiple of 64), one 64-byte line of each row in turn;
 * n is a multiple of 8 * rb. */
__attribute__((target("avx2"))) static uint64_t kb_sum8_avx2(const char *p, size_t n, size_t rb) {
    __m256i a[8];
    for (int r = 0; r < 8; r++) {
        a[r] = _mm256_setzero_si256();
    }
    for (size_t b = 0; b < n; b += 8 * rb) {
        for (size_t i = 0; i < rb; i += 64) {
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                const char *q = p + b + (size_t)r * rb + i;
                a[r] = _mm256_add_epi64(a[r], _mm256_load_si256((const __m256i *)q));
                a[r] = _mm256_add_epi64(a[r], _mm256_load_si256((const __m256i *)(q + 32)));
            }
        }
    }
    __m256i s = a[0];
    for (int r = 1; r < 8; r++) {
        s = _mm256_add_epi64(s, a[r]);
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

static uint64_t kb_sum_scalar(const char *p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < n; i += 32) {
        uint64_t v[4];
        memcpy(v, p + i, 32);
        s0 += v[0];
        s1 += v[1];
        s2 += v[2];
        s3 += v[3];
    }
    return s0 + s1 + s2 + s3;
}

/* Sums n bytes (a multiple of 128) with pattern `pattern`; what is left after whole 8-row blocks
 * is read sequentially. */
static uint64_t kb_sum(const char *p, size_t n, int pattern) {
#if XC_KB_X86
    if (__builtin_cpu_supports("avx2")) {
        size_t rb = KB_ROWS[pattern], blocks = rb ? n / (8 * rb) * (8 * rb) : 0;
        uint64_t s = blocks ? kb_sum8_avx2(p, blocks, rb) : 0;
        return s + kb_sum_avx2(p + blocks, n - blocks);
    }
#endif
    (void)pattern;
    return kb_sum_scalar(p, n);
}

/* Task t reads its contiguous 1/n_tasks of the buffer (in 128-byte blocks). */
static void kb_read_task(void *arg, int t, int n_tasks) {
    kb_read *r = arg;
    size_t blocks = r->bytes / 128;
    size_t b0 = blocks * (size_t)t / (size_t)n_tasks,
           b1 = blocks * (size_t)(t + 1) / (size_t)n_tasks;
    r->sums[t % 64] += kb_sum(r->buf + b0 * 128, (b1 - b0) * 128, r->pattern);
}

/* Streams the whole buffer once with the backend's threads. */
static void kb_read_all(xc_backend *be, kb_read *r) {
    int n = xc_cpu_n_threads(be);
    n = n > 64 ? 64 : n;
    xc_cpu_parallel(be, n, kb_read_task, r);
}

struct xc_kbench_bw {
    char *buf;
    size_t bytes; /* multiple of 128 */
};

void xc_kbench_bw_destroy(xc_kbench_bw *bw) {
    if (!bw) {
        return;
    }
    xc_aligned_free(bw->buf);
    xc_free(bw);
}

xc_status xc_kbench_bw_create(size_t bytes, xc_kbench_bw **out) {
    if (bytes < (1u << 20)) {
        return xc_errf(XC_ERR_ARG, "read bandwidth: buffer of %zu bytes is under 1 MiB", bytes);
    }
    xc_kbench_bw *bw = xc_calloc(1, sizeof *bw);
    if (!bw) {
        return xc_errf(XC_ERR_NOMEM, "read bandwidth: out of memory");
    }
    bw->bytes = bytes - bytes % 128;
    bw->buf = xc_aligned_alloc(bw->bytes);
    if (!bw->buf) {
        xc_kbench_bw_destroy(bw);
        return xc_errf(XC_ERR_NOMEM, "read bandwidth: cannot allocate %zu MiB", bytes >> 20);
    }
    // 2 MB pages where THP allows (as the checkpoint mappings ask for, xc_mmap_open), so the
    // reference is the machine's best streaming read and decode is not compared against a
    // buffer slowed by 4 KB page walks. Best effort.
    kb_advise_huge(bw->buf, bw->bytes);
    // Touch every page first (and with non-zero data, so no page is the shared zero page).
    memset(bw->buf, 1, bw->bytes);
    *out = bw;
    return XC_OK;
}

static xc_status kb_bw_passes(xc_backend *be, xc_kbench_bw *bw, int passes, bool warm_up,
                              double *gbps) {
    if (passes < 1) {
        return xc_errf(XC_ERR_ARG, "read bandwidth: passes %d < 1", passes);
    }
    kb_read r = {.buf = bw->buf, .bytes = bw->bytes};
    if (warm_up) {
        kb_read_all(be, &r); /* TLB, threads awake */
    }
    double best = 1e30;
    for (int p = 0; p < passes; p++) {
        // A pass reads the buffer once with every pattern; the fastest read counts.
        for (r.pattern = 0; r.pattern < KB_PATTERNS; r.pattern++) {
            double t0 = xc_now_s();
            kb_read_all(be, &r);
            double dt = xc_now_s() - t0;
            best = dt < best ? dt : best;
        }
    }
    *gbps = (double)bw->bytes / best * 1e-9;
    return XC_OK;
}

xc_status xc_kbench_bw_run(xc_backend *be, xc_kbench_bw *bw, int passes, double *gbps) {
    return kb_bw_passes(be, bw, passes, true, gbps);
}

xc_status xc_kbench_bw_sample(xc_backend *be, xc_kbench_bw *bw, double *gbps) {
    return kb_bw_passes(be, bw, 1, false, gbps);
}

xc_status xc_kbench_read_bw(xc_backend *be, size_t bytes, int passes, double *gbps) {
    xc_kbench_bw *bw = NULL;
    XC_TRY(xc_kbench_bw_create(bytes, &bw));
    xc_status st = xc_kbench_bw_run(be, bw, passes, gbps);
    xc_kbench_bw_destroy(bw);
    return st;
}

int xc_kbench_threads(const xc_backend *be) {
    return xc_cpu_n_threads(be);
}

/* ---- FMA peak ---- */

/* The compute ceiling the prefill GEMMs run against: per thread, KB_FMA_CHAINS independent
 * 8-lane FMA chains in registers (enough to cover the FMA latency on both FMA pipes), no loads.
 * a = a * b + c with b just under 1 keeps every value finite and normal. */
#define KB_FMA_CHAINS 12
#define KB_FMA_ITERS  (1 << 21) /* per task and pass: 2^21 x 12 FMAs, about 16 ms at 3 GHz */

typedef struct kb_fma {
    float sinks[64]; /* per task, so the chains are not optimised away */
} kb_fma;

#if XC_KB_X86
__attribute__((target("avx2,fma"))) static float kb_fma_avx2(long iters, float seed) {
    const __m256 b = _mm256_set1_ps(0.99999f), c = _mm256_set1_ps(seed * 1e-6f);
    __m256 a[KB_FMA_CHAINS];
    for (int j = 0; j < KB_FMA_CHAINS; j++) {
        a[j] = _mm256_set1_ps(seed + (float)j * 0.25f);
    }
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < KB_FMA_CHAINS; j++) {
            a[j] = _mm256_fmadd_ps(a[j], b, c);
        }
    }
    __m256 s = a[0];
    for (int j = 1; j < KB_FMA_CHAINS; j++) {
        s = _mm256_add_ps(s, a[j]);
    }
    return _mm256_cvtss_f32(s);
}

static void kb_fma_task(void *arg, int t, int n_tasks) {
    (void)n_tasks;
    kb_fma *f = arg;
    f->sinks[t % 64] += kb_fma_avx2(KB_FMA_ITERS, 1.0f + (float)t);
}
#endif

xc_status xc_kbench_fma_peak(xc_backend *be, int passes, double *gflops) {
    if (passes < 1) {
        return xc_errf(XC_ERR_ARG, "FMA peak: passes %d < 1", passes);
    }
#if XC_KB_X86
    if (!xc_cpu_simd(be)) {
        return xc_errf(XC_ERR_UNSUPPORTED, "FMA peak: the CPU backend runs without AVX2/FMA");
    }
    int n = xc_cpu_n_threads(be);
    n = n > 64 ? 64 : n;
    kb_fma f;
    memset(&f, 0, sizeof f);
    xc_cpu_parallel(be, n, kb_fma_task, &f); /* clocks up, threads awake */
    double best = 1e30;
    for (int p = 0; p < passes; p++) {
        double t0 = xc_now_s();
        xc_cpu_parallel(be, n, kb_fma_task, &f);
        double dt = xc_now_s() - t0;
        best = dt < best ? dt : best;
    }
    volatile float sink = f.sinks[0]; /* the chains' results are used */
    (void)sink;
    // 16 FLOP per 8-lane FMA
    *gflops = (double)n * KB_FMA_ITERS * KB_FMA_CHAINS * 16.0 / best * 1e-9;
    return XC_OK;
#else
    (void)be;
    (void)gflops;
    return xc_errf(XC_ERR_UNSUPPORTED, "FMA peak: x86 AVX2/FMA only");
#endif
}

/* ---- matmul ---- */

struct xc_kbench_mm {
    int n, k, max_m;
    xc_dtype wt;
    void *w;     /* (n, k) dtype wt */
    float *x;    /* (max_m, k) */
    float *y;    /* (max_m, n) */
    char *flush; /* FLUSH_BYTES, streamed between timed calls */
};

static float kb_rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    uint64_t r = *s * 2685821657736338717ull;
    return (float)((double)(r >> 40) / (double)(1ull << 24) - 0.5);
}

void xc_kbench_mm_destroy(xc_kbench_mm *mm) {
    if (!mm) {
        return;
    }
    xc_aligned_free(mm->w);
    xc_aligned_free(mm->x);
    xc_aligned_free(mm->y);
    xc_aligned_free(mm->flush);
    xc_free(mm);
}

xc_status xc_kbench_mm_create(int n, int k, xc_dtype wt, int max_m, xc_kbench_mm **out) {
    if (n <= 0 || k <= 0 || max_m <= 0) {
        return xc_errf(XC_ERR_ARG, "bench matmul: sizes must be > 0 (n=%d k=%d max_m=%d)", n, k,
                       max_m);
    }
    if (wt != XC_DTYPE_F32 && wt != XC_DTYPE_F16 && wt != XC_DTYPE_BF16) {
        return xc_errf(XC_ERR_UNSUPPORTED, "bench matmul: dtype %s is not f32, f16 or bf16",
                       xc_dtype_name(wt));
    }
    xc_kbench_mm *mm = xc_calloc(1, sizeof *mm);
    if (!mm) {
        return xc_errf(XC_ERR_NOMEM, "bench matmul: out of memory");
    }
    mm->n = n;
    mm->k = k;
    mm->max_m = max_m;
    mm->wt = wt;
    size_t nw = (size_t)n * (size_t)k;
    mm->w = xc_aligned_alloc(nw * xc_dtype_size(wt));
    mm->x = xc_aligned_alloc((size_t)max_m * (size_t)k * sizeof(float));
    mm->y = xc_aligned_alloc((size_t)max_m * (size_t)n * sizeof(float));
    mm->flush = xc_aligned_alloc(FLUSH_BYTES);
    if (!mm->w || !mm->x || !mm->y || !mm->flush) {
        xc_kbench_mm_destroy(mm);
        return xc_errf(XC_ERR_NOMEM, "bench matmul: cannot allocate a %dx%d %s case", n, k,
                       xc_dtype_name(wt));
    }
    // The weights ask for 2 MB pages as the checkpoint mappings do (xc_mmap_open) and as the
    // read-bandwidth buffer does, so a case reads its weights the way a model run does.
    kb_advise_huge(mm->w, nw * xc_dtype_size(wt));
    uint64_t s = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n << 32) ^ (uint64_t)k;
    for (size_t i = 0; i < nw; i++) {
        float v = kb_rnd(&s) * 0.1f;
        if (wt == XC_DTYPE_F32) {
            ((float *)mm->w)[i] = v;
        } else if (wt == XC_DTYPE_F16) {
            ((uint16_t *)mm->w)[i] = xc_f32_to_f16(v);
        } else {
            ((uint16_t *)mm->w)[i] = xc_f32_to_bf16(v);
        }
    }
    for (size_t i = 0; i < (size_t)max_m * (size_t)k; i++) {
        mm->x[i] = kb_rnd(&s);
    }
    memset(mm->y, 0, (size_t)max_m * (size_t)n * sizeof(float));
    memset(mm->flush, 1, FLUSH_BYTES);
    *out = mm;
    return XC_OK;
}

static xc_status kb_call(xc_backend *be, xc_kbench_mm *mm, int m, bool blas, bool blas_gemv) {
    if (!blas) {
        xc_matmul_args a = {
            .x = mm->x, .w = mm->w, .w_dtype = mm->wt, .y = mm->y, .m = m, .n = mm->n, .k = mm->k};
        return xc_backend_matmul(be, &a);
    }
    if (m == 1 && blas_gemv) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, mm->n, mm->k, 1.0f, mm->w, mm->k, mm->x, 1, 0.0f,
                    mm->y, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, mm->n, mm->k, 1.0f, mm->x, mm->k,
                    mm->w, mm->k, 0.0f, mm->y, mm->n);
    }
    return XC_OK;
}

xc_status xc_kbench_mm_run(xc_backend *be, xc_kbench_mm *mm, int m, int iters, bool blas,
                           bool blas_gemv, xc_kbench_result *out) {
    if (m < 1 || m > mm->max_m || iters < 1) {
        return xc_errf(XC_ERR_ARG, "bench matmul: m %d outside [1, %d] or iters %d < 1", m,
                       mm->max_m, iters);
    }
    if (blas && mm->wt != XC_DTYPE_F32) {
        return xc_errf(XC_ERR_UNSUPPORTED, "bench matmul: OpenBLAS takes f32 weights only");
    }
    if (blas) {
        openblas_set_num_threads(xc_cpu_n_threads(be));
    }
    kb_read fl = {.buf = mm->flush, .bytes = FLUSH_BYTES};
    XC_TRY(kb_call(be, mm, m, blas, blas_gemv));
    double best = 1e30, spent = 0.0;
    int runs = 0;
    while (runs < iters && (runs == 0 || spent < TIME_BUDGET_S)) {
        kb_read_all(be, &fl);
        double t0 = xc_now_s();
        XC_TRY(kb_call(be, mm, m, blas, blas_gemv));
        double dt = xc_now_s() - t0;
        best = dt < best ? dt : best;
        spent += dt;
        runs++;
    }
    double wbytes = (double)mm->n * (double)mm->k * (double)xc_dtype_size(mm->wt);
    out->ms = best * 1e3;
    out->gflops = 2.0 * m * (double)mm->n * (double)mm->k / best * 1e-9;
    out->wgbps = wbytes / best * 1e-9;
    out->runs = runs;
    return XC_OK;
}
