/* The CPU matmul, y = alpha * x @ w^T (+ bias) (+ y), for f32, f16 and bf16 weights:
 * batch-invariant AVX2/FMA/F16C kernels when the backend has them (xc_cpu_simd: the CPU supports
 * them and XC_CPU_NO_SIMD is unset), otherwise a portable scalar kernel.
 *
 * Reduction order (the batch-invariance contract). Every output element y[i][j] is computed the
 * same way whatever m, the row's position in the batch, the tile it falls in or the thread count:
 *   f32, f16: acc[0..7] = 0; for kk = 0, 8, 16, ...: acc[l] = fma(x[i][kk+l], w[j][kk+l], acc[l])
 *   (the last block is zero-padded when k % 8 != 0);
 *   bf16: acc[0..7] = 0; for kk = 0, 16, 32, ...: acc[l] = fma(x[i][kk+2l], w[j][kk+2l], acc[l])
 *   for every l, then acc[l] = fma(x[i][kk+2l+1], w[j][kk+2l+1], acc[l]) (zero-padded to 16);
 *   then s = ((acc0+acc4) + (acc2+acc6)) + ((acc1+acc5) + (acc3+acc7));
 *   v = alpha * s; v += bias[j] (if any); v += y[i][j] (if accumulate).
 * The bf16 order lets the kernel widen 16 weights with one shift (even elements) and one AND (the
 * odd elements already sit in the high halves of the 32-bit lanes) instead of two zero-extensions
 * and two shifts; vector shifts are scarce on Zen 4: with L2-resident weights a 1x8 decode tile
 * ran at 33 GB/s of bf16 weights the natural way and at 55 GB/s this way (f16: 61-70, f32:
 * 78-97). x is deinterleaved to match once per call. The cost: bf16 prefill tiles run about 9%
 * slower (82 against 90 GFLOP/s per core at m = 256) because the AND mask takes the last register.
 * Tiles only reuse a loaded weight vector across several x rows and a loaded x vector across
 * several weight rows; each (i, j) keeps its own accumulator. For m >= 16 (prefill) bf16, f32 and
 * long-k f16 weights go through the packed GEMM below (bf16 and f32 weights widened to f32 once
 * per panel, f16 widened in the micro-kernel; k-blocked, accumulators saved between k-blocks):
 * the same chains, so the same bits.
 * Threads split the output columns, which never changes an element's order. The scalar fallback
 * performs the same operations with fmaf, so it is bit-identical to the AVX2 path (slow where the
 * CPU lacks FMA, but deterministic everywhere).
 *
 * Why not OpenBLAS (measured on the 2-core Zen 4 dev machine, OpenBLAS 0.3.21, k = n = 4096):
 * cblas_sgemm is row-invariant (rows of m = 2..64 and m = 256 bit-identical to m = 1, 1 vs 2
 * threads identical), and it wins prefill (90 GFLOP/s on one thread at m = 256, 143 GFLOP/s on two
 * at m = 100), but at m = 1 it takes 12.9 ms (2.6 GFLOP/s), 6x slower than streaming the f32
 * weights at memory speed. cblas_sgemv is fast at m = 1 (3.1 ms) but its results differ from
 * sgemm's, so mixing them breaks invariance. Using sgemm for every m would make decode 6x slower;
 * using it only for large m would break invariance. So every dtype uses the kernels below. Side by
 * side on f32 weights (`xcpipe bench kernels --dtype f32 --blas`, two threads, two runs on the
 * noisy shared machine): m = 1 these kernels 27-52 GB/s against sgemv's 16-40 and sgemm's 5;
 * m = 16 57-116 GFLOP/s against sgemm's 30-63; m = 256 87-171 against sgemm's 93-185, where
 * sgemm is 5-10% faster on three shapes and up to 1.6x on w2 (k = 14336): the price of invariance
 * at large m. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "xc_cpu_impl.h"
#include "xc_dtype.h"
#include "xc_mem.h"

#if defined(__x86_64__) || defined(__i386__)
#define XC_MM_X86 1
#include "xc_cpu_simd.h"
#else
#define XC_MM_X86 0
#endif

/* Register tile: up to TILE_R rows of x by TILE_C weight rows share one pass over k. */
#define TILE_R 4
#define TILE_C 8

/* Weight rows per column group: the group's weights (about GROUP_BYTES) stay in L2 while every
 * row tile of x passes over them. Measured on the Zen 4 dev machine (1 MiB L2, thread CPU time,
 * m = 256, n = 1024, k = 4096): this beats k-blocking with accumulators saved between blocks
 * (BLOCK_K 512..4096: 2-15% slower) and 6x2 / 6x3 tiles (4-35% slower); 4x3 reaches 74-82 (f32),
 * 82 (bf16; 90 before the even/odd bf16 order), 88-99 (f16) GFLOP/s per core, against OpenBLAS
 * sgemm's 91-93 (f32). */
#define GROUP_BYTES (192 * 1024)

/* Decode. The dedicated 1 x 8 loops (m = 1, bf16 and f16) issue no software prefetch: the
 * hardware prefetchers keep the tile's 8 row streams ahead by themselves, and a software
 * prefetch per line only slowed them. Measured on the 2-core Zen 3 machine (one thread, a
 * 1 GiB stream of 8-row tiles of 8 KiB rows with this loop's bf16 widening and FMAs, best of 7
 * interleaved rounds): 23.4 GB/s without prefetch against 19.6 with one L2 prefetch per line
 * 6 KiB ahead (the earlier scheme; 2-32 KiB ahead and L1 / non-temporal hints 17-21), f16 24.8
 * against 21.1. m = 2 runs the same strided 2 x 8 tiles (mm_cols_dec) without prefetch. The
 * other decode tiles (tiles narrower than 8, and a block of one tile) still prefetch every
 * weight row this far ahead into L2, once per cache line; past a row's end the target moves to
 * the same row of the next tile (mm_pf_addr), which the thread streams next. */
#ifndef MM_DEC_LOOPS
#define MM_DEC_LOOPS 1 /* the dedicated 1 x 8 decode loops (0: the generic tiles) */
#endif
#ifndef MM_DEC_STREAM
#define MM_DEC_STREAM (256 * 1024) /* bytes each decode tile row stream runs on (mm_cols_dec) */
#endif
#ifndef MM_DEC_TASKS
#define MM_DEC_TASKS 16 /* parallel tasks per thread for m = 1 */
#endif
/* Prefill on the register tiles (f16 at k <= 8192): x is taken in blocks of MM_ROW_BLOCK rows,
 * each block through every column group, so the x a group re-reads from beyond L2 is 2 MiB (128
 * rows at k = 4096) instead of all of it (8 MiB at m = 512), which the rest of the forward's
 * activations and the other tenants of the shared L3 push out; the weights are read from DRAM
 * once per block instead of once (2 bytes per 128 rows: 0.016 B per multiply-add, against x's 4
 * bytes per 24-row group, 0.17). Measured on the 2-core Zen 3 machine, f16, m = 512, best of 4
 * interleaved rounds of `bench kernels` (7 December 2026, 03:50 UTC): at k = 4096
 * 1.02-1.11x on one thread, 1.04-1.15x on two; `bench model` pp512 over 11 interleaved rounds,
 * median tokens/s 83.3 against 79.9 (one thread) and 152.1 against 147.2 (two); 64 and 96 rows
 * were no better than 128. Only the order of the tiles changes, never an output's chain. */
#ifndef MM_ROW_BLOCK
#define MM_ROW_BLOCK 128 /* x rows per row block of the register tiles (multiple of TILE_R) */
#endif
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 6144
#endif

/* Packed-x floats kept on the stack (64 KiB: a decode row up to k = 16384); more goes to the heap.
 */
#define MM_XP_STACK 16384

/* Below this many multiply-adds the pool's wake-up costs more than it saves. */
#define PARALLEL_MIN_FMAS (1 << 16)
/* Tasks per thread for m > 1. The pool hands tasks out dynamically, so the thread that is ahead
 * takes the next one; what is left is the wait for the last task. Measured (Zen 3, 2 threads, f16
 * `bench model --pp 512`, 3 runs each, with a timer around the pool): the threads were idle for
 * 3.5-5.7 % of the GEMMs' time with 4 tasks per thread and 1.1-2.4 % with 16. */
#ifndef MM_PF_TASKS
#define MM_PF_TASKS 16
#endif

/* A validated, normalised matmul (dense strides resolved, alpha resolved). */
typedef struct mm_job {
    const float *x; /* (m, k), row stride ldx */
    const void *w;  /* (n, k) dense, dtype wt */
    xc_dtype wt;
    const void *bias; /* (n) or NULL, dtype bt */
    xc_dtype bt;
    float *y; /* (m, n), row stride ldy */
    int m, n, k;
    size_t ldx, ldy;
    float alpha;
    bool accumulate;
    const float *xp; /* bf16 AVX2 path: x deinterleaved per 16-block, (m, ldxp), zero-padded */
    size_t ldxp;     /* k rounded up to 16 */
    int tile_c;      /* weight rows per tile for this m */
    int group;       /* weight rows per L2 column group (multiple of tile_c) */
    int col_chunk;   /* output columns per parallel task */
    bool packed;     /* prefill: the packed-panel GEMM (xp holds x padded to mp rows) */
    bool f16_panel;  /* packed, f16: the panel keeps the halves (pk_micro_h16 widens them) */
    int mp;          /* m rounded up to PK_R (packed path) */
} mm_job;

/* ---- validation ---- */

static bool mm_float_dtype(xc_dtype t) {
    return t == XC_DTYPE_F32 || t == XC_DTYPE_F16 || t == XC_DTYPE_BF16;
}

static bool mm_overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return pa < pb + b_bytes && pb < pa + a_bytes;
}

xc_status xc_cpu_matmul_check(const xc_matmul_args *a) {
    if (!a) {
        return xc_errf(XC_ERR_ARG, "matmul: args is NULL");
    }
    if (a->m <= 0 || a->n <= 0 || a->k <= 0) {
        return xc_errf(XC_ERR_ARG, "matmul: m, n, k must be > 0 (got m=%d n=%d k=%d)", a->m, a->n,
                       a->k);
    }
    if (!a->x || !a->w || !a->y) {
        return xc_errf(XC_ERR_ARG, "matmul: %s is NULL", !a->x ? "x" : !a->w ? "w" : "y");
    }
    if ((unsigned)a->w_dtype >= XC_DTYPE_COUNT) {
        return xc_errf(XC_ERR_ARG, "matmul: invalid weight dtype %d", (int)a->w_dtype);
    }
    if (!mm_float_dtype(a->w_dtype)) {
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "matmul: weight dtype %s is not supported (f32, f16, bf16)",
                       xc_dtype_name(a->w_dtype));
    }
    if (a->bias && (unsigned)a->bias_dtype >= XC_DTYPE_COUNT) {
        return xc_errf(XC_ERR_ARG, "matmul: invalid bias dtype %d", (int)a->bias_dtype);
    }
    if (a->bias && !mm_float_dtype(a->bias_dtype)) {
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "matmul: bias dtype %s is not supported (f32, f16, bf16)",
                       xc_dtype_name(a->bias_dtype));
    }
    if (a->ldx != 0 && a->ldx < a->k) {
        return xc_errf(XC_ERR_ARG, "matmul: ldx %d is smaller than k %d", a->ldx, a->k);
    }
    if (a->ldy != 0 && a->ldy < a->n) {
        return xc_errf(XC_ERR_ARG, "matmul: ldy %d is smaller than n %d", a->ldy, a->n);
    }
    size_t ldx = a->ldx ? (size_t)a->ldx : (size_t)a->k;
    size_t ldy = a->ldy ? (size_t)a->ldy : (size_t)a->n;
    size_t x_bytes = ((size_t)(a->m - 1) * ldx + (size_t)a->k) * sizeof(float);
    size_t y_bytes = ((size_t)(a->m - 1) * ldy + (size_t)a->n) * sizeof(float);
    size_t w_bytes = (size_t)a->n * (size_t)a->k * xc_dtype_size(a->w_dtype);
    if (mm_overlap(a->y, y_bytes, a->x, x_bytes)) {
        return xc_errf(XC_ERR_ARG, "matmul: y overlaps x (in-place matmul is not supported)");
    }
    if (mm_overlap(a->y, y_bytes, a->w, w_bytes)) {
        return xc_errf(XC_ERR_ARG, "matmul: y overlaps w");
    }
    if (a->bias &&
        mm_overlap(a->y, y_bytes, a->bias, (size_t)a->n * xc_dtype_size(a->bias_dtype))) {
        return xc_errf(XC_ERR_ARG, "matmul: y overlaps bias");
    }
    return XC_OK;
}

/* ---- the shared epilogue and the scalar kernel ---- */

/* v = alpha * s (+ bias[j]) (+ y[i][j]); the one epilogue of every path. */
static inline void mm_store(const mm_job *jb, int i, int j, float s) {
    float v = jb->alpha * s;
    if (jb->bias) {
        v += xc_load_f32(jb->bias, jb->bt, (size_t)j);
    }
    float *out = jb->y + (size_t)i * jb->ldy + (size_t)j;
    if (jb->accumulate) {
        v += *out;
    }
    *out = v;
}

/* The horizontal sum of 8 lanes in the order the AVX2 reduction uses. */
static inline float mm_hsum8_scalar(const float *acc) {
    float b0 = acc[0] + acc[4], b1 = acc[1] + acc[5], b2 = acc[2] + acc[6], b3 = acc[3] + acc[7];
    return (b0 + b2) + (b1 + b3);
}

/* Columns [j0, j1) of every row, one element at a time, in the contract's order. */
static void mm_cols_scalar(const mm_job *jb, int j0, int j1) {
    size_t wsz = xc_dtype_size(jb->wt);
    for (int i = 0; i < jb->m; i++) {
        const float *xr = jb->x + (size_t)i * jb->ldx;
        for (int j = j0; j < j1; j++) {
            const char *wr = (const char *)jb->w + (size_t)j * (size_t)jb->k * wsz;
            float acc[8] = {0};
            // bf16: lane l takes k = 2l then 2l + 1 of each 16-block; f32/f16: k = l of each 8.
            int step = jb->wt == XC_DTYPE_BF16 ? 16 : 8;
            for (int kk = 0; kk < jb->k; kk += step) {
                for (int half = 0; half < step / 8; half++) {
                    for (int l = 0; l < 8; l++) {
                        int e = kk + (step == 16 ? 2 * l + half : l);
                        float xv = e < jb->k ? xr[e] : 0.0f;
                        float wv = e < jb->k ? xc_load_f32(wr, jb->wt, (size_t)e) : 0.0f;
                        acc[l] = fmaf(xv, wv, acc[l]);
                    }
                }
            }
            mm_store(jb, i, j, mm_hsum8_scalar(acc));
        }
    }
}

/* ---- AVX2 / FMA / F16C kernels ---- */

#if XC_MM_X86

#define XC_AVX2_FN     __attribute__((target("avx2,fma,f16c")))
#define XC_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* The decode prefetch target for a weight row at byte offset off: PREFETCH_BYTES further on in
 * the same row or, past its end, as far into the same row of the next tile (C rows on), which
 * this thread streams next (the next row's own stream already covers that row's start). Integer
 * arithmetic: the address may lie past the weights, which a prefetch tolerates. */
static inline const char *mm_pf_addr(const void *row, size_t off, size_t row_bytes, int C) {
    size_t t = off + PREFETCH_BYTES;
    uintptr_t r = (uintptr_t)row;
    return (const char *)(t < row_bytes ? r + t : r + (size_t)C * row_bytes + (t - row_bytes));
}

/* One R x C tile: rows i0.., weight rows j0, j0 + cs, j0 + 2 cs, ..., the whole of k. R, C, wt
 * and, outside the decode loops, cs = 1 are constants. */
XC_AVX2_INLINE void mm_tile(const mm_job *jb, int i0, int j0, const int R, const int C,
                            const xc_dtype wt, const int cs) {
    const int k = jb->k;
    const int k8 = k & ~7;
    const size_t wsz = wt == XC_DTYPE_F32 ? 4 : 2;
    const float *xr[TILE_R];
    const char *wr[TILE_C];
    __m256 acc[TILE_R][TILE_C];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        xr[r] = jb->x + (size_t)(i0 + r) * jb->ldx;
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        wr[c] = (const char *)jb->w + (size_t)(j0 + c * cs) * (size_t)k * wsz;
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
        }
    }
    int kk0 = 0;
    if (MM_DEC_LOOPS && R == 1 && C == 8 && wt == XC_DTYPE_F16) {
        // Decode, f16: a cache line (32 weights) per row per step, each weight vector consumed
        // as soon as it is widened (no spills); no software prefetch (see MM_DEC_LOOPS).
        for (; kk0 + 32 <= k8; kk0 += 32) {
#pragma GCC unroll 4
            for (int b = 0; b < 32; b += 8) {
                __m256 xv = _mm256_loadu_ps(xr[0] + kk0 + b);
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++) {
                    __m128i h = _mm_loadu_si128((const __m128i *)(wr[c] + (size_t)(kk0 + b) * 2));
                    acc[0][c] = _mm256_fmadd_ps(xv, _mm256_cvtph_ps(h), acc[0][c]);
                }
            }
        }
    }
    for (int kk = kk0; kk < k8; kk += 8) {
        __m256 wv[TILE_C];
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            if (R <= 2 && cs == 1 && (((size_t)kk * wsz) & 63) == 0) {
                // Decode: once per cache line, ask for the line PREFETCH_BYTES ahead into L2.
                _mm_prefetch(mm_pf_addr(wr[c], (size_t)kk * wsz, (size_t)k * wsz, C), _MM_HINT_T1);
            }
            wv[c] = xc_simd_load_w(wr[c], wt, (size_t)kk);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_loadu_ps(xr[r] + kk);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
                acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
    }
    if (k8 < k) {
        // Zero-padded last block; the widening is exact, so this equals the vector load.
        float xt[TILE_R][8] = {{0}}, wtl[TILE_C][8] = {{0}};
        for (int l = 0; l < k - k8; l++) {
            for (int r = 0; r < R; r++) {
                xt[r][l] = xr[r][k8 + l];
            }
            for (int c = 0; c < C; c++) {
                wtl[c][l] = xc_load_f32(wr[c], wt, (size_t)(k8 + l));
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_loadu_ps(xt[r]);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
                acc[r][c] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wtl[c]), acc[r][c]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            mm_store(jb, i0 + r, j0 + c * cs, xc_simd_hsum(acc[r][c]));
        }
    }
}

/* One 16-block of a bf16 tile: w is widened with a shift (even elements) and an AND (odd ones);
 * xp holds x deinterleaved the same way. The even half is applied before the odd half. */
XC_AVX2_INLINE void mm_b16_block(__m256 acc[TILE_R][TILE_C], const float *const *xr, size_t kx,
                                 const uint16_t *const *wr, size_t kw, const int R, const int C) {
    const __m256i odd = _mm256_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 2
    for (int half = 0; half < 2; half++) {
        __m256 wv[TILE_C];
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(wr[c] + kw));
            wv[c] = _mm256_castsi256_ps(half == 0 ? _mm256_slli_epi32(v, 16)
                                                  : _mm256_and_si256(v, odd));
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_loadu_ps(xr[r] + kx + (size_t)half * 8);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
                acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
    }
}

/* One R x C tile with bf16 weights (the bf16 order of the contract); x comes from jb->xp. */
XC_AVX2_INLINE void mm_tile_b16(const mm_job *jb, int i0, int j0, const int R, const int C,
                                const int cs) {
    const int k = jb->k;
    const int k16 = k & ~15;
    const float *xr[TILE_R];
    const uint16_t *wr[TILE_C];
    __m256 acc[TILE_R][TILE_C];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        xr[r] = jb->xp + (size_t)(i0 + r) * jb->ldxp;
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        wr[c] = (const uint16_t *)jb->w + (size_t)(j0 + c * cs) * (size_t)k;
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
        }
    }
    int kk = 0;
    if (MM_DEC_LOOPS && R == 1 && C == 8) {
        // Decode: a cache line (32 weights) per row per step, each row's 16-block widened and
        // consumed at once (8 accumulators, 2 x vectors, the mask and one weight vector live: no
        // spills); no software prefetch (see MM_DEC_LOOPS). Per row the even half still precedes
        // the odd half.
        const __m256i odd = _mm256_set1_epi32((int)0xffff0000u);
        for (; kk + 32 <= k16; kk += 32) {
#pragma GCC unroll 2
            for (int b = 0; b < 32; b += 16) {
                __m256 xe = _mm256_loadu_ps(xr[0] + kk + b),
                       xo = _mm256_loadu_ps(xr[0] + kk + b + 8);
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(wr[c] + kk + b));
                    acc[0][c] = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
                                                acc[0][c]);
                    acc[0][c] = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(_mm256_and_si256(v, odd)),
                                                acc[0][c]);
                }
            }
        }
    }
    if (R <= 2 && cs == 1) {
        // Decode: a cache line (32 weights) per row per step, with one L2 prefetch per line.
        for (; kk + 32 <= k16; kk += 32) {
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
                _mm_prefetch(mm_pf_addr(wr[c], (size_t)kk * 2, (size_t)k * 2, C), _MM_HINT_T1);
            }
            mm_b16_block(acc, xr, (size_t)kk, wr, (size_t)kk, R, C);
            mm_b16_block(acc, xr, (size_t)kk + 16, wr, (size_t)kk + 16, R, C);
        }
    }
    for (; kk < k16; kk += 16) {
        mm_b16_block(acc, xr, (size_t)kk, wr, (size_t)kk, R, C);
    }
    if (k16 < k) {
        // Zero-padded last block (xp is already padded with zeros).
        uint16_t wt[TILE_C][16] = {{0}};
        const uint16_t *wtp[TILE_C];
        for (int c = 0; c < C; c++) {
            memcpy(wt[c], wr[c] + k16, (size_t)(k - k16) * sizeof(uint16_t));
            wtp[c] = wt[c];
        }
        mm_b16_block(acc, xr, (size_t)k16, wtp, 0, R, C);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            mm_store(jb, i0 + r, j0 + c * cs, xc_simd_hsum(acc[r][c]));
        }
    }
}

typedef void (*mm_tile_fn)(const mm_job *jb, int i0, int j0);

/* One out-of-line function per (dtype, R, C) so each inner loop is fully specialised. */
#define MM_TILE_DEF(NAME, WT, R, C)                                                                \
    static XC_AVX2_FN void mm_tile_##NAME##_##R##x##C(const mm_job *jb, int i0, int j0) {          \
        if (WT == XC_DTYPE_BF16) {                                                                 \
            mm_tile_b16(jb, i0, j0, R, C, 1);                                                      \
        } else {                                                                                   \
            mm_tile(jb, i0, j0, R, C, WT, 1);                                                      \
        }                                                                                          \
    }
#define MM_TILE_ROW(NAME, WT, R)                                                                   \
    MM_TILE_DEF(NAME, WT, R, 1)                                                                    \
    MM_TILE_DEF(NAME, WT, R, 2)                                                                    \
    MM_TILE_DEF(NAME, WT, R, 3)                                                                    \
    MM_TILE_DEF(NAME, WT, R, 4)                                                                    \
    MM_TILE_DEF(NAME, WT, R, 5)                                                                    \
    MM_TILE_DEF(NAME, WT, R, 6)                                                                    \
    MM_TILE_DEF(NAME, WT, R, 7)                                                                    \
    MM_TILE_DEF(NAME, WT, R, 8)
#define MM_TILE_ALL(NAME, WT)                                                                      \
    MM_TILE_ROW(NAME, WT, 1)                                                                       \
    MM_TILE_ROW(NAME, WT, 2)                                                                       \
    MM_TILE_ROW(NAME, WT, 3)                                                                       \
    MM_TILE_ROW(NAME, WT, 4)
#define MM_TILE_TAB_ROW(NAME, R)                                                                   \
    {                                                                                              \
        mm_tile_##NAME##_##R##x1, mm_tile_##NAME##_##R##x2, mm_tile_##NAME##_##R##x3,              \
            mm_tile_##NAME##_##R##x4, mm_tile_##NAME##_##R##x5, mm_tile_##NAME##_##R##x6,          \
            mm_tile_##NAME##_##R##x7, mm_tile_##NAME##_##R##x8                                     \
    }
#define MM_TILE_TAB(NAME)                                                                          \
    {                                                                                              \
        MM_TILE_TAB_ROW(NAME, 1), MM_TILE_TAB_ROW(NAME, 2), MM_TILE_TAB_ROW(NAME, 3),              \
            MM_TILE_TAB_ROW(NAME, 4)                                                               \
    }

MM_TILE_ALL(f32, XC_DTYPE_F32)
MM_TILE_ALL(f16, XC_DTYPE_F16)
MM_TILE_ALL(bf16, XC_DTYPE_BF16)

/* [dtype: f32, f16, bf16 as in xc_dtype][R - 1][C - 1] */
static const mm_tile_fn mm_tiles[3][TILE_R][TILE_C] = {MM_TILE_TAB(f32), MM_TILE_TAB(f16),
                                                       MM_TILE_TAB(bf16)};

/* Decode 1 x 8 tiles (m = 1) whose weight rows lie cs rows apart: j0, j0 + cs, ..., j0 + 7 cs. */
static XC_AVX2_FN void mm_dec_bf16(const mm_job *jb, int j0, int cs) {
    mm_tile_b16(jb, 0, j0, 1, 8, cs);
}

static XC_AVX2_FN void mm_dec_f16(const mm_job *jb, int j0, int cs) {
    mm_tile(jb, 0, j0, 1, 8, XC_DTYPE_F16, cs);
}

/* The same for m = 2 (two sequences decoding in one micro-batch): 2 x 8 tiles. */
static XC_AVX2_FN void mm_dec2_bf16(const mm_job *jb, int j0, int cs) {
    mm_tile_b16(jb, 0, j0, 2, 8, cs);
}

static XC_AVX2_FN void mm_dec2_f16(const mm_job *jb, int j0, int cs) {
    mm_tile(jb, 0, j0, 2, 8, XC_DTYPE_F16, cs);
}

/* Decode (m = 1 or 2), columns [j0, j1): blocks of 8 g consecutive weight rows, each read as g
 * tiles whose 8 rows lie g rows apart (tile t of a block: rows t, t + g, ..., t + 7 g), so each of
 * the 8 row streams runs on through g consecutive rows (about MM_DEC_STREAM bytes) instead of
 * ending after one row; the rows left over (fewer than 8) go through a narrower tile. Only the
 * grouping of outputs into tiles changes, never an output's chain. */
static void mm_cols_dec(const mm_job *jb, int j0, int j1) {
    size_t row_bytes = (size_t)jb->k * 2;
    int gmax = row_bytes >= MM_DEC_STREAM ? 1 : (int)(MM_DEC_STREAM / row_bytes);
    void (*fn)(const mm_job *, int, int) =
        jb->m == 1 ? (jb->wt == XC_DTYPE_BF16 ? mm_dec_bf16 : mm_dec_f16)
                   : (jb->wt == XC_DTYPE_BF16 ? mm_dec2_bf16 : mm_dec2_f16);
    int j = j0;
    while (j1 - j >= 8) {
        int g = (j1 - j) / 8 < gmax ? (j1 - j) / 8 : gmax;
        for (int t = 0; t < g; t++) {
            fn(jb, j + t, g);
        }
        j += 8 * g;
    }
    if (j < j1) {
        mm_tiles[jb->wt][jb->m - 1][j1 - j - 1](jb, 0, j);
    }
}

/* Columns [j0, j1): column groups that stay in L2, row tiles over all of m inside each group. */
static void mm_cols_avx2(const mm_job *jb, int j0, int j1) {
    const mm_tile_fn(*tab)[TILE_C] = mm_tiles[jb->wt];
    if (MM_DEC_LOOPS && jb->m <= 2 && jb->tile_c == 8 &&
        (jb->wt == XC_DTYPE_BF16 || jb->wt == XC_DTYPE_F16)) {
        mm_cols_dec(jb, j0, j1);
        return;
    }
    for (int b0 = 0; b0 < jb->m; b0 += MM_ROW_BLOCK) {
        int b1 = b0 + MM_ROW_BLOCK < jb->m ? b0 + MM_ROW_BLOCK : jb->m;
        for (int g0 = j0; g0 < j1; g0 += jb->group) {
            int g1 = g0 + jb->group < j1 ? g0 + jb->group : j1;
            for (int i0 = b0; i0 < b1; i0 += TILE_R) {
                int r = b1 - i0 < TILE_R ? b1 - i0 : TILE_R;
                for (int c0 = g0; c0 < g1; c0 += jb->tile_c) {
                    int c = g1 - c0 < jb->tile_c ? g1 - c0 : jb->tile_c;
                    tab[r - 1][c - 1](jb, i0, c0);
                }
            }
        }
    }
}

/* ---- prefill: the packed-panel GEMM ----
 * For M >= PK_MIN_M. Same contract as the tiles above (every y[i][j] is the same 8-lane FMA
 * chain over k, from zero, in k order, then the same horizontal sum), so its results are
 * bit-identical to theirs and to the scalar kernel; only where operands live changes:
 *  - x is packed once per call into xq, interleaved per 4-row tile: for each 8-step of the
 *    contract's order (bf16: the deinterleaved 16-blocks) the 4 rows' 8 values sit side by side
 *    ([tile][step][row][8]), so a row tile's k-block is one contiguous stream (no 4 KB-aliased
 *    rows in L1, one hardware-prefetch stream); rows are padded to mp (multiple of 4, zero rows
 *    never stored) and columns to ldxp (k rounded up to 8; bf16: 16) with zeros;
 *  - per PK_G weight rows and PK_KS-wide k superblock the weights are widened once to an f32
 *    panel ([tile of 3 rows][step][row][8]; shift/AND for bf16): the widening leaves the inner
 *    loop, which is 12 FMAs, 4 x loads and 3 panel loads per step; f16 weights are copied as
 *    halves into the same layout and widened in the loop (pk_micro_h16: 3 vcvtph2ps loads per
 *    step), so the panel crosses L2 at 2 bytes per weight;
 *  - the row tiles of a PK_MC-row block then walk the panel (L2-resident) one after the other;
 *    a row tile's PK_KC-wide x block stays in L1 while the PK_G / 3 column tiles pass over it,
 *    and the next block is prefetched into L1 a share per column tile; the 12 accumulators of a
 *    (row tile, column tile) are saved to an accumulator block between k-blocks (exact: a store
 *    and a load of the same bits) and reduced once after the last superblock.
 * Measured (2-core Zen 3 EPYC, 32 KiB L1d / 512 KiB L2, one thread, thread CPU time on a machine
 * with a PyTorch training on the other core, m = 512): bf16 4096x6144 75 -> 80-85 GFLOP/s,
 * 14336x4096 73 -> 78 (bf16 and f16), against a micro-kernel ceiling of 86-96 with everything in
 * cache; f16 at k = 4096 stays on the register tiles (86 against 78 packed). */

#define PK_R     4
#define PK_C     3
#define PK_MIN_M 16
#ifndef PK_KC
#define PK_KC 512 /* k per micro-kernel call (x block in L1): multiple of 16 */
#endif
#ifndef PK_KS
#define PK_KS 1024 /* k per panel (f32 panel PK_G x PK_KS in L2): multiple of PK_KC */
#endif
#ifndef PK_G
#define PK_G 48 /* weight rows per panel: multiple of PK_C */
#endif
#ifndef PK_MC
#define PK_MC 256 /* rows per row block (bounds the accumulator block): multiple of PK_R */
#endif

/* Widens weight rows [j, j + 3) (rows >= jend are zero), elements [kb, kb + kc) of the padded
 * k range, into one tile's panel: for each 8-step s, rows c = 0..2 as 8 floats each; with
 * jb->f16_panel the f16 rows are copied as 8 halves each instead (zero past k). */
static XC_AVX2_FN void pk_pack_tile(const mm_job *jb, int j, int jend, int kb, int kc,
                                    void *panel) {
    const int k = jb->k;
    const size_t es = jb->f16_panel ? sizeof(uint16_t) : sizeof(float); /* panel element */
    for (int c = 0; c < PK_C; c++) {
        if (j + c >= jend) {
            for (int s = 0; s < kc / 8; s++) {
                memset((char *)panel + ((size_t)s * PK_C + (size_t)c) * 8 * es, 0, 8 * es);
            }
            continue;
        }
        if (jb->f16_panel) {
            uint16_t *o = (uint16_t *)panel + c * 8;
            const uint16_t *wr = (const uint16_t *)jb->w + (size_t)(j + c) * (size_t)k;
            for (int s = 0; s < kc / 8; s++) {
                int e = kb + s * 8;
                __m128i v;
                if (e + 8 <= k) {
                    v = _mm_loadu_si128((const __m128i *)(wr + e));
                } else {
                    uint16_t t[8] = {0};
                    if (e < k) {
                        memcpy(t, wr + e, (size_t)(k - e) * sizeof(uint16_t));
                    }
                    v = _mm_loadu_si128((const __m128i *)t);
                }
                _mm_store_si128((__m128i *)(o + s * PK_C * 8), v);
            }
            continue;
        }
        float *o = (float *)panel + c * 8;
        if (jb->wt == XC_DTYPE_BF16) {
            const uint16_t *wr = (const uint16_t *)jb->w + (size_t)(j + c) * (size_t)k;
            const __m256i odd = _mm256_set1_epi32((int)0xffff0000u);
            for (int q = 0; q < kc / 16; q++) {
                int e = kb + q * 16;
                __m256i v;
                if (e + 16 <= k) {
                    v = _mm256_loadu_si256((const __m256i *)(wr + e));
                } else {
                    uint16_t t[16] = {0};
                    if (e < k) {
                        memcpy(t, wr + e, (size_t)(k - e) * sizeof(uint16_t));
                    }
                    v = _mm256_loadu_si256((const __m256i *)t);
                }
                _mm256_storeu_ps(o + (2 * q) * PK_C * 8,
                                 _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
                _mm256_storeu_ps(o + (2 * q + 1) * PK_C * 8,
                                 _mm256_castsi256_ps(_mm256_and_si256(v, odd)));
            }
        } else {
            const char *wr =
                (const char *)jb->w + (size_t)(j + c) * (size_t)k * xc_dtype_size(jb->wt);
            for (int s = 0; s < kc / 8; s++) {
                int e = kb + s * 8;
                __m256 v;
                if (e + 8 <= k) {
                    v = xc_simd_load_w(wr, jb->wt, (size_t)e);
                } else {
                    float t[8] = {0};
                    for (int l = 0; e + l < k; l++) {
                        t[l] = xc_load_f32(wr, jb->wt, (size_t)(e + l));
                    }
                    v = _mm256_loadu_ps(t);
                }
                _mm256_storeu_ps(o + s * PK_C * 8, v);
            }
        }
    }
}

#define PK_FMA_ROW(R, XV)                                                                          \
    a##R##0 = _mm256_fmadd_ps(XV, w0, a##R##0);                                                    \
    a##R##1 = _mm256_fmadd_ps(XV, w1, a##R##1);                                                    \
    a##R##2 = _mm256_fmadd_ps(XV, w2, a##R##2);

/* One step's 12 FMAs: the 4 rows' x vectors at xt against w0..w2; xt moves to the next step. */
#define PK_X_STEP                                                                                  \
    {                                                                                              \
        __m256 xv = _mm256_load_ps(xt);                                                            \
        PK_FMA_ROW(0, xv)                                                                          \
        xv = _mm256_load_ps(xt + 8);                                                               \
        PK_FMA_ROW(1, xv)                                                                          \
        xv = _mm256_load_ps(xt + 16);                                                              \
        PK_FMA_ROW(2, xv)                                                                          \
        xv = _mm256_load_ps(xt + 24);                                                              \
        PK_FMA_ROW(3, xv)                                                                          \
        xt += PK_R * 8;                                                                            \
    }

/* The 12 accumulators a<row><col> of a micro-kernel call, named so they stay in registers:
 * zeroed on a row tile's first k-block (first), otherwise loaded from acc; stored back after. */
#define PK_ACC_LOAD                                                                                \
    __m256 a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32;                             \
    if (first) {                                                                                   \
        a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = a30 = a31 = a32 =                    \
            _mm256_setzero_ps();                                                                   \
    } else {                                                                                       \
        a00 = _mm256_load_ps(acc + 0 * 8);                                                         \
        a01 = _mm256_load_ps(acc + 1 * 8);                                                         \
        a02 = _mm256_load_ps(acc + 2 * 8);                                                         \
        a10 = _mm256_load_ps(acc + 3 * 8);                                                         \
        a11 = _mm256_load_ps(acc + 4 * 8);                                                         \
        a12 = _mm256_load_ps(acc + 5 * 8);                                                         \
        a20 = _mm256_load_ps(acc + 6 * 8);                                                         \
        a21 = _mm256_load_ps(acc + 7 * 8);                                                         \
        a22 = _mm256_load_ps(acc + 8 * 8);                                                         \
        a30 = _mm256_load_ps(acc + 9 * 8);                                                         \
        a31 = _mm256_load_ps(acc + 10 * 8);                                                        \
        a32 = _mm256_load_ps(acc + 11 * 8);                                                        \
    }
#define PK_ACC_STORE                                                                               \
    _mm256_store_ps(acc + 0 * 8, a00);                                                             \
    _mm256_store_ps(acc + 1 * 8, a01);                                                             \
    _mm256_store_ps(acc + 2 * 8, a02);                                                             \
    _mm256_store_ps(acc + 3 * 8, a10);                                                             \
    _mm256_store_ps(acc + 4 * 8, a11);                                                             \
    _mm256_store_ps(acc + 5 * 8, a12);                                                             \
    _mm256_store_ps(acc + 6 * 8, a20);                                                             \
    _mm256_store_ps(acc + 7 * 8, a21);                                                             \
    _mm256_store_ps(acc + 8 * 8, a22);                                                             \
    _mm256_store_ps(acc + 9 * 8, a30);                                                             \
    _mm256_store_ps(acc + 10 * 8, a31);                                                            \
    _mm256_store_ps(acc + 11 * 8, a32);

/* The 4x3 micro-kernel over one k-block: acc (12 vectors) is loaded (or zeroed on the first
 * block), kc / 8 steps of 12 FMAs, and stored back. xt: the row tile's block ([step][row][8]);
 * panel: the column tile's block ([step][row][8]). */
static XC_AVX2_FN void pk_micro(const float *xt, const float *panel, int kc, float *acc,
                                bool first) {
    PK_ACC_LOAD
    for (int s = 0; s < kc / 8; s++) {
        __m256 w0 = _mm256_load_ps(panel), w1 = _mm256_load_ps(panel + 8),
               w2 = _mm256_load_ps(panel + 16);
        panel += PK_C * 8;
        PK_X_STEP
    }
    PK_ACC_STORE
}

/* The same 4x3 micro-kernel on a panel of f16 halves (pk_pack_tile with f16_panel), widened in the
 * loop with vcvtph2ps, which runs beside the FMAs: the panel crosses L2 at 2 bytes per weight
 * instead of 4 and the packing is a copy. The same FMAs in the same order, so the same bits.
 * Measured (Zen 3, m = 512, f16 w2 14336x4096, `bench kernels`, best of 3 interleaved
 * rounds): 1.05x at one thread and 1.07x at two against widening the rows in place (no panel),
 * which had itself been 1.02-1.04x against the f32 panel; at k = 4096 it reaches 0.93-0.97x of the
 * register tiles at one thread and 0.96-1.00x at two, so those keep that case. */
static XC_AVX2_FN void pk_micro_h16(const float *xt, const uint16_t *panel, int kc, float *acc,
                                    bool first) {
    PK_ACC_LOAD
    for (int s = 0; s < kc / 8; s++) {
        __m256 w0 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)panel)),
               w1 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(panel + 8))),
               w2 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(panel + 16)));
        panel += PK_C * 8;
        PK_X_STEP
    }
    PK_ACC_STORE
}

/* Floats of one task's scratch: the panel (PK_G x PK_KS floats at most; halves for f16, in the
 * same room) and the accumulator block (PK_MC rows x PK_G columns x 8 lanes at most). */
static size_t pk_scratch_floats(const mm_job *jb) {
    size_t ks = jb->ldxp < PK_KS ? jb->ldxp : PK_KS;
    size_t mc = (size_t)(jb->mp < PK_MC ? jb->mp : PK_MC);
    return (size_t)PK_G * ks + mc * PK_G * 8;
}

/* Columns [j0, j1) of every row with the packed GEMM; scratch: pk_scratch_floats, 32-aligned. */
static XC_AVX2_FN void pk_cols(const mm_job *jb, int j0, int j1, float *scratch) {
    const int kp = (int)jb->ldxp;
    const size_t wsz = xc_dtype_size(jb->wt);
    const size_t tile_floats = (size_t)PK_R * jb->ldxp; /* one row tile of xq */
    float *panel = scratch;
    const size_t pes = jb->f16_panel ? sizeof(uint16_t) : sizeof(float); /* panel element */
    float *accb = scratch + (size_t)PK_G * (size_t)(kp < PK_KS ? kp : PK_KS);
    for (int i0 = 0; i0 < jb->mp; i0 += PK_MC) {
        int mc = jb->mp - i0 < PK_MC ? jb->mp - i0 : PK_MC;
        for (int g0 = j0; g0 < j1; g0 += PK_G) {
            int gc = j1 - g0 < PK_G ? j1 - g0 : PK_G;
            int nt = (gc + PK_C - 1) / PK_C;
            for (int ks = 0; ks < kp; ks += PK_KS) {
                int kl = kp - ks < PK_KS ? kp - ks : PK_KS;
                bool last = ks + kl >= kp;
                for (int t = 0; t < nt; t++) {
                    pk_pack_tile(jb, g0 + t * PK_C, j1, ks, kl,
                                 (char *)panel + (size_t)t * PK_C * (size_t)kl * pes);
                }
                // The next panel's weights (next superblock, or the next group's first one) are
                // prefetched into L2 a share per micro-kernel call, so its packing does not wait
                // on DRAM: at small m (16 rows) the packing otherwise took as long as the FMAs.
                int nks = ks + PK_KS, ng0 = g0;
                if (nks >= kp) {
                    nks = 0;
                    ng0 = g0 + PK_G < j1 ? g0 + PK_G : j0;
                }
                int ngc = j1 - ng0 < PK_G ? j1 - ng0 : PK_G;
                int nkl = kp - nks < PK_KS ? kp - nks : PK_KS;
                nkl = nks + nkl > jb->k ? jb->k - nks : nkl; /* the weights are not padded */
                const size_t row_lines = ((size_t)(nkl > 0 ? nkl : 0) * wsz + 63) / 64;
                const size_t w_lines = (size_t)ngc * row_lines;
                const size_t calls = (size_t)(mc / PK_R) * (size_t)((kl + PK_KC - 1) / PK_KC) * nt;
                size_t call = 0, w_done = 0;
                for (int r = 0; r < mc; r += PK_R) {
                    float *ab = accb + (size_t)(r / PK_R) * (size_t)nt * PK_R * PK_C * 8;
                    const float *xT = jb->xp + (size_t)((i0 + r) / PK_R) * tile_floats;
                    for (int kb = 0; kb < kl; kb += PK_KC) {
                        int kc = kl - kb < PK_KC ? kl - kb : PK_KC;
                        const float *xt = xT + (size_t)(ks + kb) * PK_R;
                        // Into L1, a share per column tile: the next x block (this row tile's
                        // next k-block, or the next row tile's first one). A prefetch past the
                        // end of xq is harmless.
                        uintptr_t xn = kb + PK_KC < kl
                                           ? (uintptr_t)(xt + (size_t)kc * PK_R)
                                           : (uintptr_t)(xT + tile_floats + (size_t)ks * PK_R);
                        int lines = kc * PK_R / 16, done = 0;
                        for (int t = 0; t < nt; t++) {
                            for (int to = lines * (t + 1) / nt; done < to; done++) {
                                _mm_prefetch((const char *)(xn + (uintptr_t)done * 64),
                                             _MM_HINT_T0);
                            }
                            for (size_t wt = w_lines * ++call / calls; w_done < wt; w_done++) {
                                size_t row = w_done / row_lines, col = w_done % row_lines * 64;
                                _mm_prefetch(
                                    (const char *)jb->w +
                                        ((size_t)(ng0 + (int)row) * (size_t)jb->k + (size_t)nks) *
                                            wsz +
                                        col,
                                    _MM_HINT_T1);
                            }
                            if (jb->f16_panel) {
                                pk_micro_h16(xt,
                                             (const uint16_t *)panel + (size_t)t * PK_C * kl +
                                                 (size_t)kb * PK_C,
                                             kc, ab + (size_t)t * PK_R * PK_C * 8, ks + kb == 0);
                            } else {
                                pk_micro(xt, panel + (size_t)t * PK_C * kl + (size_t)kb * PK_C, kc,
                                         ab + (size_t)t * PK_R * PK_C * 8, ks + kb == 0);
                            }
                        }
                    }
                    if (!last) {
                        continue;
                    }
                    for (int t = 0; t < nt; t++) {
                        for (int rr = 0; rr < PK_R && i0 + r + rr < jb->m; rr++) {
                            for (int c = 0; c < PK_C && g0 + t * PK_C + c < j1; c++) {
                                __m256 v = _mm256_load_ps(
                                    ab +
                                    ((size_t)t * PK_R * PK_C + (size_t)rr * PK_C + (size_t)c) * 8);
                                mm_store(jb, i0 + r + rr, g0 + t * PK_C + c, xc_simd_hsum(v));
                            }
                        }
                    }
                }
            }
        }
    }
}

/* Rows [i0, i1) of x (m, k) -> xq (mp / 4 tiles of 4 x ldxp) for the packed GEMM: per 4-row tile
 * and 8-step of the contract's order (bf16: per 16-block the 8 even elements, then the 8 odd ones)
 * the 4 rows' 8 values side by side; zero-padded to ldxp columns and mp rows. Whole 8-steps (bf16:
 * 16-blocks) are moved as vectors (bf16: split even / odd with a shuffle and a lane permute, an
 * exact copy), the padded tail element by element. */
static XC_AVX2_FN void mm_pack_x_rows(const mm_job *jb, float *xq, int i0, int i1) {
    const bool b16 = jb->wt == XC_DTYPE_BF16;
    const size_t blk = b16 ? 16 : 8;
    const size_t kv = (size_t)jb->k / blk * blk; /* columns moved as vectors */
    for (int i = i0; i < i1; i++) {
        const float *x = i < jb->m ? jb->x + (size_t)i * jb->ldx : NULL;
        float *o = xq + (size_t)(i / 4) * 4 * jb->ldxp + (size_t)(i % 4) * 8;
        size_t q = 0;
        if (x && b16) {
            for (; q < kv; q += 16) {
                __m256 a = _mm256_loadu_ps(x + q), b = _mm256_loadu_ps(x + q + 8);
                __m256 ev = _mm256_castpd_ps(
                    _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
                __m256 od = _mm256_castpd_ps(
                    _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
                _mm256_store_ps(o + (q / 8) * 32, ev);
                _mm256_store_ps(o + (q / 8 + 1) * 32, od);
            }
        } else if (x) {
            for (; q < kv; q += 8) {
                _mm256_store_ps(o + q * 4, _mm256_loadu_ps(x + q));
            }
        }
        for (; q < jb->ldxp; q++) {
            size_t e = b16 ? (q & ~(size_t)15) + 2 * (q & 7) + ((q >> 3) & 1) : q;
            o[(q / 8) * 32 + q % 8] = x && e < (size_t)jb->k ? x[e] : 0.0f;
        }
    }
}

typedef struct mm_pack_task {
    const mm_job *jb;
    float *xq;
    int tiles_per_task;
} mm_pack_task;

/* Task t packs row tiles [t * tiles_per_task, ...) (both threads pack: at 2 threads a serial
 * pack of a 512 x 14336 x cost about as much as 7 % of the GEMM after it). */
static void mm_pack_x_task(void *arg, int task, int n_tasks) {
    const mm_pack_task *p = arg;
    (void)n_tasks;
    int i0 = task * p->tiles_per_task * PK_R, i1 = i0 + p->tiles_per_task * PK_R;
    mm_pack_x_rows(p->jb, p->xq, i0, i1 < p->jb->mp ? i1 : p->jb->mp);
}

#endif /* XC_MM_X86 */

/* ---- dispatch ---- */

/* x (m, k) -> xp (m, ldxp): per 16-block the 8 even elements, then the 8 odd ones, zero-padded. */
static void mm_pack_x16(const mm_job *jb, float *xp) {
    for (int i = 0; i < jb->m; i++) {
        const float *x = jb->x + (size_t)i * jb->ldx;
        float *o = xp + (size_t)i * jb->ldxp;
        for (size_t kk = 0; kk < jb->ldxp; kk += 16) {
            for (size_t l = 0; l < 8; l++) {
                size_t e = kk + 2 * l;
                o[kk + l] = e < (size_t)jb->k ? x[e] : 0.0f;
                o[kk + 8 + l] = e + 1 < (size_t)jb->k ? x[e + 1] : 0.0f;
            }
        }
    }
}

typedef struct mm_task {
    const mm_job *jb;
    bool avx2;
} mm_task;

static void mm_run_task(void *arg, int task, int n_tasks) {
    const mm_task *t = arg;
    const mm_job *jb = t->jb;
    (void)n_tasks;
    int j0 = task * jb->col_chunk;
    int j1 = j0 + jb->col_chunk < jb->n ? j0 + jb->col_chunk : jb->n;
    if (j0 >= j1) {
        return;
    }
#if XC_MM_X86
    if (t->avx2 && jb->packed) {
        float *scratch = xc_cpu_scratch(XC_CPU_SCRATCH_TASK, pk_scratch_floats(jb) * sizeof(float));
        if (!scratch) {
            // Out of memory for about 600 KiB of scratch: the register tiles give the same bits.
            mm_cols_avx2(jb, j0, j1);
            return;
        }
        pk_cols(jb, j0, j1, scratch);
        return;
    }
    if (t->avx2) {
        mm_cols_avx2(jb, j0, j1);
        return;
    }
#endif
    mm_cols_scalar(jb, j0, j1);
}

xc_status xc_cpu_matmul(xc_backend *be, const xc_matmul_args *a) {
    XC_TRY(xc_cpu_matmul_check(a));
    mm_job jb = {
        .x = a->x,
        .w = a->w,
        .wt = a->w_dtype,
        .bias = a->bias,
        .bt = a->bias_dtype,
        .y = a->y,
        .m = a->m,
        .n = a->n,
        .k = a->k,
        .ldx = a->ldx ? (size_t)a->ldx : (size_t)a->k,
        .ldy = a->ldy ? (size_t)a->ldy : (size_t)a->n,
        .alpha = a->alpha == 0.0f ? 1.0f : a->alpha,
        .accumulate = a->accumulate,
    };
    // Few x rows (decode): memory-bound, and a 1 x C tile has only C independent FMA chains, so
    // take 8 weight rows at once. Measured on the dev machine (bf16, 4096 x 14336, shared and
    // noisy, interleaved best-of-30): 1x8 reached 72-94% of the read bandwidth where 1x4 reached
    // 47-87%. Many rows (prefill): a 4 x 3 tile leaves registers for the loads (12 accumulators
    // + 3 weights + 1 x vector).
    jb.tile_c = jb.m <= 2 ? 8 : 3;
    size_t row_bytes = (size_t)jb.k * xc_dtype_size(jb.wt);
    size_t g = GROUP_BYTES / row_bytes;
    g = g < (size_t)jb.tile_c ? (size_t)jb.tile_c : g - g % (size_t)jb.tile_c;
    jb.group = g > (size_t)jb.n ? jb.n : (int)g;

    int threads = xc_cpu_n_threads(be);
    double fmas = (double)jb.m * jb.n * jb.k;
    int n_tasks = 1;
    if (threads > 1 && fmas >= PARALLEL_MIN_FMAS) {
        // Several tasks per thread so a thread slowed by another process does not hold the rest
        // up; chunks are whole tiles so the split never splits a tile (not needed for the
        // order, but keeps tiles full). Decode (m = 1) takes 16 per thread: a matmul there is
        // about a millisecond, and with 4 the thread that finished first waited for the other
        // at the end of each (perf of a 2-thread bf16 decode on the Zen 3 machine: the pool's
        // spin at 3.7-5.9 % of the streaming loop's samples with 4, 1.7-2.9 % with 16). Prefill
        // takes MM_PF_TASKS for the same reason.
        n_tasks = threads * (jb.m == 1 ? MM_DEC_TASKS : MM_PF_TASKS);
        int max_tasks = (jb.n + jb.tile_c - 1) / jb.tile_c;
        n_tasks = n_tasks < max_tasks ? n_tasks : max_tasks;
    }
    int chunk = (jb.n + n_tasks - 1) / n_tasks;
    chunk = (chunk + jb.tile_c - 1) / jb.tile_c * jb.tile_c;
    jb.col_chunk = chunk;
    n_tasks = (jb.n + chunk - 1) / chunk;

    mm_task t = {.jb = &jb, .avx2 = XC_MM_X86 && xc_cpu_simd(be)};
    // The bf16 kernel reads x deinterleaved per 16-block (see the contract); decode-sized x fits
    // a stack buffer, larger x is packed once per call into this thread's scratch.
    float stack_xp[MM_XP_STACK];
#if XC_MM_X86
    // f16 weights with k <= 8192 stay on the register tiles: vcvtph2ps in the loop costs less
    // there than the panel round trip (measured on the Zen 3 machine, one thread, m = 512, k =
    // 4096: 86 against 78 GFLOP/s), while bf16 and f32 (and f16 at k = 14336) gain. Both give
    // the same bits.
    bool pk_wanted = !(jb.wt == XC_DTYPE_F16 && jb.k <= 8192);
    if (t.avx2 && jb.m >= PK_MIN_M && pk_wanted) {
        // Prefill: the packed GEMM over x padded to whole 4-row tiles and 8 (bf16: 16) columns.
        jb.packed = true;
        jb.f16_panel = jb.wt == XC_DTYPE_F16; /* a panel of halves, not floats */
        jb.mp = (jb.m + PK_R - 1) / PK_R * PK_R;
        size_t pad = jb.wt == XC_DTYPE_BF16 ? 16 : 8;
        jb.ldxp = ((size_t)jb.k + pad - 1) & ~(pad - 1);
        size_t nxp = jb.ldxp * (size_t)jb.mp;
        float *pk_xp = xc_cpu_scratch(XC_CPU_SCRATCH_XPACK, nxp * sizeof(float));
        if (!pk_xp) {
            return xc_errf(XC_ERR_NOMEM, "matmul: out of memory packing x (%zu floats)", nxp);
        }
        int tiles = jb.mp / PK_R;
        int pt = threads > 1 ? threads * 2 : 1;
        pt = pt < tiles ? pt : tiles;
        mm_pack_task pk = {.jb = &jb, .xq = pk_xp, .tiles_per_task = (tiles + pt - 1) / pt};
        xc_cpu_parallel(be, (tiles + pk.tiles_per_task - 1) / pk.tiles_per_task, mm_pack_x_task,
                        &pk);
        jb.xp = pk_xp;
    } else
#endif
        if (t.avx2 && jb.wt == XC_DTYPE_BF16) {
        jb.ldxp = ((size_t)jb.k + 15) & ~(size_t)15;
        size_t nxp = jb.ldxp * (size_t)jb.m;
        float *xp = stack_xp;
        if (nxp > MM_XP_STACK) {
            xp = xc_cpu_scratch(XC_CPU_SCRATCH_XPACK, nxp * sizeof(float));
            if (!xp) {
                return xc_errf(XC_ERR_NOMEM, "matmul: out of memory packing x (%zu floats)", nxp);
            }
        }
        mm_pack_x16(&jb, xp);
        jb.xp = xp;
    }
    xc_cpu_parallel(be, n_tasks, mm_run_task, &t);
    return XC_OK;
}
