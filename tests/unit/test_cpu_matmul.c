/* kernels/cpu/xc_cpu_matmul.c: the CPU matmul against the naive double-precision reference
 * (xc_ref_matmul) for f32/f16/bf16 weights, bit-exact batch invariance (m = 1..64, any position,
 * 1 or 2 threads), the scalar fallback against the AVX2 path, and argument errors. */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/xc_cpu_impl.h"
#include "xc_backend.h"
#include "xc_dtype.h"
#include "xc_mem.h"
#include "xc_ref.h"
#include "xc_test.h"

static const xc_dtype float_dtypes[3] = {XC_DTYPE_F32, XC_DTYPE_F16, XC_DTYPE_BF16};

/* ---- helpers ---- */

/* Deterministic uniform numbers in [-1, 1) (xorshift64*). */
static float rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    uint64_t r = *s * 2685821657736338717ull;
    return (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* n random values stored as dtype t (rounded to it); returns an xc_malloc'd array. */
static void *rnd_array(xc_dtype t, size_t n, uint64_t *s) {
    void *p = xc_malloc(n * xc_dtype_size(t));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        float v = rnd(s);
        if (t == XC_DTYPE_F32) {
            ((float *)p)[i] = v;
        } else if (t == XC_DTYPE_F16) {
            ((uint16_t *)p)[i] = xc_f32_to_f16(v);
        } else {
            ((uint16_t *)p)[i] = xc_f32_to_bf16(v);
        }
    }
    return p;
}

/* A CPU backend with `threads` threads; scalar = true opens it with XC_CPU_NO_SIMD=1, which
 * selects the portable kernels. */
static xc_backend *make_backend_isa(int threads, bool scalar) {
    xc_backend_conf conf = {.n_threads = threads};
    xc_backend *be = NULL;
    if (scalar) {
        setenv("XC_CPU_NO_SIMD", "1", 1);
    }
    xc_status st = xc_backend_create("cpu", &conf, &be);
    unsetenv("XC_CPU_NO_SIMD");
    assert_int_equal(st, XC_OK);
    assert_true(!scalar || !xc_cpu_simd(be));
    return be;
}

static xc_backend *make_backend(int threads) {
    return make_backend_isa(threads, false);
}

/* Checks y against the reference element by element. Stated tolerance: the fast path sums each
 * of 8 lanes over k/8 fused products, then 3 tree levels, alpha, bias and y, so its error is at
 * most (k/8 + 8) * 2^-24 * (|alpha| sum|x w| + |bias| + |y0|); the reference is exact to f32
 * rounding. */
static void expect_close(const xc_matmul_args *a, const float *y, const float *yref,
                         const float *y0) {
    size_t ldx = a->ldx ? (size_t)a->ldx : (size_t)a->k;
    size_t ldy = a->ldy ? (size_t)a->ldy : (size_t)a->n;
    double alpha = a->alpha == 0.0f ? 1.0 : fabs((double)a->alpha);
    double u = ldexp(1.0, -24) * ((double)a->k / 8.0 + 8.0);
    for (int i = 0; i < a->m; i++) {
        for (int j = 0; j < a->n; j++) {
            double mag = 0.0;
            for (int kk = 0; kk < a->k; kk++) {
                mag += fabs((double)a->x[i * ldx + kk] *
                            xc_load_f32(a->w, a->w_dtype, (size_t)j * a->k + kk));
            }
            mag *= alpha;
            if (a->bias) {
                mag += fabs(xc_load_f32(a->bias, a->bias_dtype, (size_t)j));
            }
            if (a->accumulate) {
                mag += fabs(y0[i * ldy + j]);
            }
            double err = fabs((double)y[i * ldy + j] - (double)yref[i * ldy + j]);
            if (!(err <= u * mag + 1e-30)) {
                fail_msg("m=%d n=%d k=%d w=%s y[%d][%d] = %.9g, reference %.9g, error %.3g > %.3g",
                         a->m, a->n, a->k, xc_dtype_name(a->w_dtype), i, j, y[i * ldy + j],
                         yref[i * ldy + j], err, u * mag);
            }
        }
    }
}

/* One case: random x, w, bias, y0 (with padding for strides); runs the CPU matmul and the
 * reference on copies of y0 and compares; checks the padding between rows is untouched. */
typedef struct mm_case {
    int m, n, k, ldx, ldy;
    xc_dtype wt;
    int bias; /* 0 = none, else 1 + index in float_dtypes */
    bool accumulate;
    float alpha;
} mm_case;

static void run_case(xc_backend *be, const mm_case *c, uint64_t seed) {
    uint64_t s = seed;
    size_t ldx = c->ldx ? (size_t)c->ldx : (size_t)c->k;
    size_t ldy = c->ldy ? (size_t)c->ldy : (size_t)c->n;
    size_t ny = (size_t)c->m * ldy;
    float *x = rnd_array(XC_DTYPE_F32, (size_t)c->m * ldx, &s);
    void *w = rnd_array(c->wt, (size_t)c->n * c->k, &s);
    xc_dtype bt = c->bias ? float_dtypes[c->bias - 1] : XC_DTYPE_F32;
    void *bias = c->bias ? rnd_array(bt, (size_t)c->n, &s) : NULL;
    float *y0 = rnd_array(XC_DTYPE_F32, ny, &s);
    float *y = xc_malloc(ny * sizeof *y), *yref = xc_malloc(ny * sizeof *yref);
    assert_non_null(y);
    assert_non_null(yref);
    memcpy(y, y0, ny * sizeof *y);
    memcpy(yref, y0, ny * sizeof *y);
    xc_matmul_args a = {.x = x,
                        .w = w,
                        .w_dtype = c->wt,
                        .bias = bias,
                        .bias_dtype = bt,
                        .y = y,
                        .m = c->m,
                        .n = c->n,
                        .k = c->k,
                        .ldx = c->ldx,
                        .ldy = c->ldy,
                        .alpha = c->alpha,
                        .accumulate = c->accumulate};
    assert_int_equal(xc_backend_matmul(be, &a), XC_OK);
    a.y = yref;
    assert_int_equal(xc_ref_matmul(&a), XC_OK);
    expect_close(&a, y, yref, y0);
    for (int i = 0; i < c->m; i++) {
        for (size_t j = (size_t)c->n; j < ldy; j++) {
            assert_memory_equal(&y[i * ldy + j], &y0[i * ldy + j], sizeof(float));
        }
    }
    xc_free(x);
    xc_free(w);
    xc_free(bias);
    xc_free(y0);
    xc_free(y);
    xc_free(yref);
}

/* ---- against the reference ---- */

static void test_cpu_matmul_matches_reference(void **state) {
    (void)state;
    xc_backend *be = make_backend(2);
    /* m, n, k, ldx, ldy: odd n, k not a multiple of 8/16, strides, m = 1..70, a long k */
    static const int shapes[][5] = {
        {1, 1, 1, 0, 0},     {1, 7, 5, 0, 0},     {2, 13, 17, 0, 0}, {3, 9, 8, 0, 0},
        {4, 16, 16, 0, 0},   {5, 33, 31, 40, 35}, {7, 5, 100, 0, 0}, {13, 31, 129, 0, 0},
        {17, 64, 63, 64, 0}, {33, 10, 24, 0, 11}, {64, 19, 9, 0, 0}, {70, 23, 77, 80, 24},
        {1, 301, 260, 0, 0}, {6, 40, 4096, 0, 0},
    };
    uint64_t seed = 1;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        for (int d = 0; d < 3; d++) {
            for (int variant = 0; variant < 4; variant++) {
                mm_case c = {.m = shapes[si][0],
                             .n = shapes[si][1],
                             .k = shapes[si][2],
                             .ldx = shapes[si][3],
                             .ldy = shapes[si][4],
                             .wt = float_dtypes[d],
                             .bias = variant == 0 ? 0 : 1 + (variant + d) % 3,
                             .accumulate = variant >= 2,
                             .alpha = variant == 3   ? -0.375f
                                      : variant == 1 ? 2.5f
                                                     : 0.0f};
                run_case(be, &c, seed++);
            }
        }
    }
    xc_backend_destroy(be);
}

/* The portable kernel does the same operations with fmaf, so it must match the AVX2 one bit for
 * bit (where the CPU has no AVX2 both runs are the scalar kernel). */
static void test_cpu_matmul_scalar_fallback_matches(void **state) {
    (void)state;
    xc_backend *be = make_backend(2), *scalar = make_backend_isa(2, true);
    static const int shapes[][3] = {{1, 9, 13}, {5, 17, 64}, {9, 7, 301}};
    uint64_t s = 77;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        for (int d = 0; d < 3; d++) {
            int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
            float *x = rnd_array(XC_DTYPE_F32, (size_t)m * k, &s);
            void *w = rnd_array(float_dtypes[d], (size_t)n * k, &s);
            void *bias = rnd_array(XC_DTYPE_BF16, (size_t)n, &s);
            float *y1 = xc_calloc((size_t)m * n, sizeof(float));
            float *y2 = xc_calloc((size_t)m * n, sizeof(float));
            xc_matmul_args a = {.x = x,
                                .w = w,
                                .w_dtype = float_dtypes[d],
                                .bias = bias,
                                .bias_dtype = XC_DTYPE_BF16,
                                .y = y1,
                                .m = m,
                                .n = n,
                                .k = k,
                                .alpha = 0.5f};
            assert_int_equal(xc_backend_matmul(be, &a), XC_OK);
            a.y = y2;
            assert_int_equal(xc_backend_matmul(scalar, &a), XC_OK);
            assert_memory_equal(y1, y2, (size_t)m * n * sizeof(float));
            xc_free(x);
            xc_free(w);
            xc_free(bias);
            xc_free(y1);
            xc_free(y2);
        }
    }
    xc_backend_destroy(be);
    xc_backend_destroy(scalar);
}

/* ---- batch invariance ---- */

/* Each row computed alone on one thread, then inside batches of m = 1..64 rows at several
 * positions on two threads, and the 64-row batch on one thread: all bit-identical. n is large
 * enough that m = 1 already runs on both threads; k is not a multiple of 8. */
static void invariance_for(xc_dtype wt, bool scalar) {
    const int rows = 64, n = 300, k = 260;
    uint64_t s = 1234 + (uint64_t)wt;
    float *x = rnd_array(XC_DTYPE_F32, (size_t)rows * k, &s);
    void *w = rnd_array(wt, (size_t)n * k, &s);
    void *bias = rnd_array(XC_DTYPE_F16, (size_t)n, &s);
    float *alone = xc_malloc((size_t)rows * n * sizeof(float));
    float *y = xc_malloc((size_t)rows * n * sizeof(float));
    assert_non_null(alone);
    assert_non_null(y);
    xc_backend *be1 = make_backend_isa(1, scalar), *be2 = make_backend_isa(2, scalar);
    xc_matmul_args a = {.w = w,
                        .w_dtype = wt,
                        .bias = bias,
                        .bias_dtype = XC_DTYPE_F16,
                        .n = n,
                        .k = k,
                        .alpha = 0.75f};
    for (int r = 0; r < rows; r++) {
        a.x = x + (size_t)r * k;
        a.y = alone + (size_t)r * n;
        a.m = 1;
        assert_int_equal(xc_backend_matmul(be1, &a), XC_OK);
    }
    int step = scalar ? 9 : 1;
    for (int m = 1; m <= rows; m += step) {
        int positions[3] = {0, (m * 7) % (rows - m + 1), rows - m};
        for (int p = 0; p < 3; p++) {
            a.x = x + (size_t)positions[p] * k;
            a.y = y;
            a.m = m;
            assert_int_equal(xc_backend_matmul(be2, &a), XC_OK);
            if (memcmp(y, alone + (size_t)positions[p] * n, (size_t)m * n * sizeof(float))) {
                fail_msg("w=%s scalar=%d: rows %d..%d computed in a batch of %d differ from "
                         "the rows computed alone",
                         xc_dtype_name(wt), scalar, positions[p], positions[p] + m - 1, m);
            }
        }
    }
    a.x = x;
    a.y = y;
    a.m = rows;
    assert_int_equal(xc_backend_matmul(be1, &a), XC_OK);
    assert_memory_equal(y, alone, (size_t)rows * n * sizeof(float));
    xc_backend_destroy(be1);
    xc_backend_destroy(be2);
    xc_free(x);
    xc_free(w);
    xc_free(bias);
    xc_free(alone);
    xc_free(y);
}

static void test_cpu_matmul_batch_invariant(void **state) {
    (void)state;
    for (int d = 0; d < 3; d++) {
        invariance_for(float_dtypes[d], false);
    }
}

static void test_cpu_matmul_batch_invariant_scalar(void **state) {
    (void)state;
    invariance_for(XC_DTYPE_BF16, true);
}

/* The packed prefill GEMM (m >= 16) in its blocked cases: several 256-row blocks with a partial
 * 4-row tile, several 48-row weight panels per task (one thread), several 1024-wide panels and
 * 512-wide k-blocks with a padded tail (and f16 past k = 8192, where it takes the packed path:
 * its weights are copied into a panel of halves and widened in the micro-kernel, a padded tail
 * and a partial column tile included;
 * f16 at k <= 8192 runs the register tiles in 128-row blocks, three of them at m = 261):
 * every row equals the row computed alone by the decode tiles, bit for bit, on 1 and 2 threads,
 * and the scalar kernel. The 301 x 4100 cases also give the decode several blocks of strided
 * tiles (8200-byte rows: 31 rows per stream) with a smaller last block and a narrow tile, as
 * rows alone (m = 1) and as the m = 2 batch (2 x 8 strided tiles). */
static void test_cpu_matmul_packed_blocks_invariant(void **state) {
    (void)state;
    static const int shapes[][3] = {{133, 157, 600}, {261, 53, 1100}, {21, 50, 8203},
                                    {21, 50, 8200},  {17, 301, 4100}, {2, 301, 4100}};
    xc_backend *be1 = make_backend_isa(1, false), *be2 = make_backend_isa(2, false);
    xc_backend *sc = make_backend_isa(2, true);
    uint64_t s = 4242;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        for (int d = 0; d < 3; d++) {
            int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
            xc_dtype wt = float_dtypes[d];
            float *x = rnd_array(XC_DTYPE_F32, (size_t)m * k, &s);
            void *w = rnd_array(wt, (size_t)n * k, &s);
            float *alone = xc_malloc((size_t)m * n * sizeof(float));
            float *y = xc_malloc((size_t)m * n * sizeof(float));
            assert_non_null(alone);
            assert_non_null(y);
            xc_matmul_args a = {.w = w, .w_dtype = wt, .n = n, .k = k, .alpha = 1.0f};
            for (int r = 0; r < m; r++) {
                a.x = x + (size_t)r * k;
                a.y = alone + (size_t)r * n;
                a.m = 1;
                assert_int_equal(xc_backend_matmul(be1, &a), XC_OK);
            }
            a.x = x;
            a.y = y;
            a.m = m;
            xc_backend *bes[3] = {be1, be2, sc};
            for (int b = 0; b < (si == 0 ? 3 : 2); b++) {
                memset(y, 0xff, (size_t)m * n * sizeof(float));
                assert_int_equal(xc_backend_matmul(bes[b], &a), XC_OK);
                if (memcmp(y, alone, (size_t)m * n * sizeof(float))) {
                    fail_msg("w=%s m=%d n=%d k=%d backend %d: batch rows differ from rows alone",
                             xc_dtype_name(wt), m, n, k, b);
                }
            }
            xc_free(x);
            xc_free(w);
            xc_free(alone);
            xc_free(y);
        }
    }
    xc_backend_destroy(be1);
    xc_backend_destroy(be2);
    xc_backend_destroy(sc);
}

/* ---- argument errors ---- */

static void expect_err(xc_backend *be, const xc_matmul_args *a, xc_status want, const char *what) {
    xc_err_clear();
    xc_status st = xc_backend_matmul(be, a);
    if (st != want) {
        fail_msg("%s: got %s, want %s", what, xc_status_str(st), xc_status_str(want));
    }
    assert_true(strlen(xc_err_last()) > 0);
    assert_int_equal(xc_ref_matmul(a), want);
}

static void test_cpu_matmul_rejects_bad_args(void **state) {
    (void)state;
    xc_backend *be = make_backend(2);
    float x[4 * 8] = {0}, w[3 * 8] = {0}, y[4 * 3] = {0}, big[64] = {0};
    xc_matmul_args ok = {.x = x, .w = w, .w_dtype = XC_DTYPE_F32, .y = y, .m = 4, .n = 3, .k = 8};
    assert_int_equal(xc_backend_matmul(be, &ok), XC_OK);
    assert_int_equal(xc_cpu_matmul_check(NULL), XC_ERR_ARG);
    for (int i = 0; i < 12; i++) {
        y[i] = 7.0f;
    }

    xc_matmul_args a = ok;
    a.m = 0;
    expect_err(be, &a, XC_ERR_ARG, "m = 0");
    a = ok;
    a.n = -1;
    expect_err(be, &a, XC_ERR_ARG, "n = -1");
    a = ok;
    a.k = 0;
    expect_err(be, &a, XC_ERR_ARG, "k = 0");
    a = ok;
    a.ldx = 7;
    expect_err(be, &a, XC_ERR_ARG, "ldx < k");
    a = ok;
    a.ldx = -8;
    expect_err(be, &a, XC_ERR_ARG, "ldx < 0");
    a = ok;
    a.ldy = 2;
    expect_err(be, &a, XC_ERR_ARG, "ldy < n");
    a = ok;
    a.x = NULL;
    expect_err(be, &a, XC_ERR_ARG, "x NULL");
    a = ok;
    a.w = NULL;
    expect_err(be, &a, XC_ERR_ARG, "w NULL");
    a = ok;
    a.y = NULL;
    expect_err(be, &a, XC_ERR_ARG, "y NULL");
    a = ok; /* y == x (in place) */
    a.x = big;
    a.y = big;
    a.k = 3;
    expect_err(be, &a, XC_ERR_ARG, "y == x");
    a = ok; /* y overlapping the tail of x */
    a.x = big;
    a.y = big + 4 * 8 - 1;
    expect_err(be, &a, XC_ERR_ARG, "y overlaps x");
    a = ok;
    a.w_dtype = XC_DTYPE_I32;
    expect_err(be, &a, XC_ERR_UNSUPPORTED, "int32 weights");
    a = ok;
    a.w_dtype = XC_DTYPE_I8;
    expect_err(be, &a, XC_ERR_UNSUPPORTED, "int8 weights");
    a = ok;
    a.w_dtype = (xc_dtype)99;
    expect_err(be, &a, XC_ERR_ARG, "invalid dtype");
    a = ok;
    a.bias = w;
    a.bias_dtype = XC_DTYPE_I64;
    expect_err(be, &a, XC_ERR_UNSUPPORTED, "int64 bias");
    /* the rejected calls left y untouched */
    for (int i = 0; i < 12; i++) {
        assert_true(y[i] == 7.0f);
    }
    xc_backend_destroy(be);
}

/* The per-thread scratch the matmul packs into: aligned, kept while big enough, grown when not,
 * one buffer per slot, another thread's own and freed when that thread exits; bad slots are
 * refused. */
static void *scratch_other_thread(void *arg) {
    (void)arg;
    void *p = xc_cpu_scratch(XC_CPU_SCRATCH_TASK, 4096);
    if (p) {
        memset(p, 0x5a, 4096);
    }
    return p; /* not released: the thread's exit frees it (LSan checks this under ASan) */
}

static void test_cpu_scratch_per_thread(void **state) {
    (void)state;
    assert_null(xc_cpu_scratch(-1, 64));
    assert_null(xc_cpu_scratch(XC_CPU_SCRATCH_SLOTS, 64));
    unsigned char *a = xc_cpu_scratch(XC_CPU_SCRATCH_TASK, 1000);
    assert_non_null(a);
    assert_int_equal((uintptr_t)a % 64, 0);
    memset(a, 1, 1000);
    assert_ptr_equal(xc_cpu_scratch(XC_CPU_SCRATCH_TASK, 1000), a);
    assert_ptr_equal(xc_cpu_scratch(XC_CPU_SCRATCH_TASK, 10), a); /* smaller: the same buffer */
    unsigned char *b = xc_cpu_scratch(XC_CPU_SCRATCH_XPACK, 1000);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    unsigned char *big = xc_cpu_scratch(XC_CPU_SCRATCH_TASK, (size_t)3 << 20); /* grows */
    assert_non_null(big);
    assert_int_equal((uintptr_t)big % 64, 0);
    memset(big, 2, (size_t)3 << 20); /* all of it is ours (ASan would see an overflow) */
    assert_ptr_equal(xc_cpu_scratch(XC_CPU_SCRATCH_TASK, 1000), big);
    /* Another thread gets its own buffer while this one's stays in place. */
    pthread_t th;
    void *theirs = NULL;
    assert_int_equal(pthread_create(&th, NULL, scratch_other_thread, NULL), 0);
    assert_int_equal(pthread_join(th, &theirs), 0);
    assert_non_null(theirs);
    assert_ptr_not_equal(theirs, big);
    assert_int_equal(big[0], 2);
    assert_int_equal(big[((size_t)3 << 20) - 1], 2);
    xc_cpu_scratch_release();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_matmul_matches_reference),
        cmocka_unit_test(test_cpu_matmul_scalar_fallback_matches),
        cmocka_unit_test(test_cpu_matmul_batch_invariant),
        cmocka_unit_test(test_cpu_matmul_batch_invariant_scalar),
        cmocka_unit_test(test_cpu_matmul_packed_blocks_invariant),
        cmocka_unit_test(test_cpu_matmul_rejects_bad_args),
        cmocka_unit_test(test_cpu_scratch_per_thread),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
