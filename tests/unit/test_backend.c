/* Every non-matmul op of every compiled backend against the naive references (kernels/xc_ref.c),
 * for f32/f16/bf16 weights where the op has weights, odd sizes and padded strides; argument
 * errors; and bit-exact batch invariance per op (a row alone vs inside batches of 2..64 rows, at
 * several positions, with 1 and 2 threads, SIMD and scalar paths). Attention also checks batched
 * vs alone, paged vs contiguous and chunked vs one-shot causal prefill bit for bit.
 *
 * Tolerances, against references that accumulate in double (|got - ref| <= atol + rtol |ref|):
 *  - norms, rope, act (silu, quick_gelu, add), softmax: atol 1e-6, rtol 1e-5 (f32 arithmetic,
 *    sums of a few thousand terms, ~2 ulp exp);
 *  - gelu: atol 1e-6, rtol 2e-5 (Abramowitz & Stegun erf, |error| <= 1.5e-7, in the SIMD path);
 *  - attention: atol 2e-6, rtol 1e-4 (f32 dot products over head_dim, online softmax);
 *  - plora (two GEMMs): |scale| * M * (2u + (k + rank + 16) 2^-24) + 1e-6 |ref|, M = sum_j |b_ij|
 *    sum_c |a_jc x_c|, where u is the unit roundoff of the 16-bit type a backend rounds x and the
 *    intermediate t to: 0 on the CPU (f32 arithmetic throughout), and on CUDA with f16/bf16
 *    weights 2^-11 / 2^-8 (x and t go to the tensor cores in the weight type); see
 *    expect_plora_close;
 *  - embed, patchify, kv_store: exact (conversions from f16/bf16 are exact, the rest is copying).
 *
 * Bit-exact batch invariance is asked of every op whose arithmetic a backend owns. PLoRA on CUDA
 * is two cuBLAS GEMMs, and cuBLAS picks its kernel (and so its summation order) from the shape:
 * its batch invariance is checked on the CPU backend only.
 *
 * Backends: all compiled ones, or only those named by XC_TEST_BACKEND (cpu or cuda; ctest runs
 * `backend` with cpu and `backend_cuda` with cuda). A CUDA backend that cannot open skips its
 * cases, unless XC_REQUIRE_CUDA=1, which fails every case instead. XC_CUDA_DEBUG=1 (set here
 * unless the environment says otherwise) makes the CUDA backend check that every device argument
 * is device memory and synchronise after every op.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_backend.h"
#include "xc_dtype.h"
#include "xc_mem.h"
#include "xc_ref.h"
#include "xc_test.h"

/* ---- backends under test ---- */

typedef struct be_conf {
    const char *label; /* for messages */
    const char *name;
    int threads;
    bool no_simd;
} be_conf;

static const be_conf confs[] = {
    {"cpu/2 threads", "cpu", 2, false},
    {"cpu/1 thread", "cpu", 1, false},
    {"cpu-scalar/2 threads", "cpu", 2, true},
#ifdef XC_HAVE_CUDA
    {"cuda", "cuda", 0, false},
#endif
};
#define N_CONFS ((int)(sizeof confs / sizeof confs[0]))

/* Whether XC_TEST_BACKEND (unset: every backend) selects c. */
static bool be_selected(const be_conf *c) {
    const char *only = getenv("XC_TEST_BACKEND");
    return !only || !*only || strcmp(only, c->name) == 0;
}

static bool cuda_required(void) {
    const char *r = getenv("XC_REQUIRE_CUDA");
    return r && strcmp(r, "1") == 0;
}

/* Opens a backend; NULL when XC_TEST_BACKEND leaves it out, or (after a message) when a
 * compiled-in device is absent and XC_REQUIRE_CUDA is not 1. */
static xc_backend *open_be(const be_conf *c) {
    if (!be_selected(c)) {
        return NULL;
    }
    xc_backend_conf conf = {.n_threads = c->threads};
    xc_backend *be = NULL;
    if (c->no_simd) {
        setenv("XC_CPU_NO_SIMD", "1", 1);
    }
    xc_status st = xc_backend_create(c->name, &conf, &be);
    unsetenv("XC_CPU_NO_SIMD");
    if (strcmp(c->name, "cpu") != 0 && st != XC_OK) {
        if (cuda_required()) {
            fail_msg("XC_REQUIRE_CUDA=1 but backend %s cannot open: %s", c->label, xc_err_last());
        }
        print_message("skipping backend %s: %s\n", c->label, xc_err_last());
        return NULL;
    }
    assert_int_equal(st, XC_OK);
    return be;
}

/* Device buffers of one test case, freed together. */
typedef struct dev {
    xc_backend *be;
    xc_buf bufs[64];
    int n;
} dev;

/* Copies host data (NULL: zeros) into a new backend buffer and returns its device pointer. */
static void *dev_put(dev *d, const void *host, size_t bytes) {
    assert_true(d->n < 64);
    xc_buf *b = &d->bufs[d->n++];
    assert_int_equal(xc_backend_buf_alloc(d->be, bytes ? bytes : 4, b), XC_OK);
    if (host && bytes) {
        assert_int_equal(xc_backend_copy_in(d->be, b->data, host, bytes), XC_OK);
    } else if (bytes) {
        void *z = calloc(1, bytes);
        assert_non_null(z);
        assert_int_equal(xc_backend_copy_in(d->be, b->data, z, bytes), XC_OK);
        free(z);
    }
    return b->data;
}

static void dev_get(dev *d, void *host, const void *devp, size_t bytes) {
    assert_int_equal(xc_backend_sync(d->be), XC_OK);
    assert_int_equal(xc_backend_copy_out(d->be, host, devp, bytes), XC_OK);
}

static void dev_free(dev *d) {
    for (int i = 0; i < d->n; i++) {
        xc_backend_buf_free(d->be, &d->bufs[i]);
    }
    d->n = 0;
}

/* ---- data ---- */

static const xc_dtype wdtypes[3] = {XC_DTYPE_F32, XC_DTYPE_F16, XC_DTYPE_BF16};

/* Deterministic uniform numbers in [-1, 1) (xorshift64*). */
static float rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    uint64_t r = *s * 2685821657736338717ull;
    return (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* n floats uniform in [lo, hi) (malloc'd). */
static float *rnd_floats(size_t n, float lo, float hi, uint64_t *s) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        p[i] = lo + (hi - lo) * 0.5f * (rnd(s) + 1.0f);
    }
    return p;
}

/* n values in [lo, hi) stored as dtype t (malloc'd). */
static void *rnd_weights(xc_dtype t, size_t n, float lo, float hi, uint64_t *s) {
    void *p = malloc((n ? n : 1) * xc_dtype_size(t));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        float v = lo + (hi - lo) * 0.5f * (rnd(s) + 1.0f);
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

static float *dup_floats(const float *x, size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    assert_non_null(p);
    memcpy(p, x, n * sizeof *p);
    return p;
}

/* Compares an (m, n) matrix (strides ldg, ldr) with the reference; fails on the first element
 * outside atol + rtol |ref|, naming it. */
static void expect_close(const char *what, const float *got, int ldg, const float *ref, int ldr,
                         int m, int n, double atol, double rtol) {
    for (int r = 0; r < m; r++) {
        for (int i = 0; i < n; i++) {
            double g = got[(size_t)r * (size_t)ldg + i], w = ref[(size_t)r * (size_t)ldr + i];
            if (!(fabs(g - w) <= atol + rtol * fabs(w))) {
                fail_msg("%s: row %d col %d: got %.9g, reference %.9g (|diff| %.3g > %.3g)", what,
                         r, i, g, w, fabs(g - w), atol + rtol * fabs(w));
            }
        }
    }
}

static void expect_bits(const char *what, const float *a, const float *b, size_t n) {
    if (memcmp(a, b, n * sizeof(float)) != 0) {
        for (size_t i = 0; i < n; i++) {
            if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
                fail_msg("%s: element %zu differs: %.9g vs %.9g", what, i, (double)a[i],
                         (double)b[i]);
            }
        }
    }
}

/* ---- norms ---- */

static void norm_case(xc_backend *be, const be_conf *c, bool ln, xc_dtype t, int m, int n, int ldx,
                      int ldy, bool inplace, bool bias, uint64_t *s) {
    int lx = ldx ? ldx : n, ly = inplace ? lx : (ldy ? ldy : n);
    size_t xs = (size_t)m * lx, ys = (size_t)m * ly;
    float *x = rnd_floats(xs, -2.0f, 2.0f, s);
    float *y0 = rnd_floats(ys, -1.0f, 1.0f, s);
    void *w = rnd_weights(t, (size_t)n, 0.5f, 1.5f, s);
    void *b = bias ? rnd_weights(t, (size_t)n, -0.5f, 0.5f, s) : NULL;
    size_t wb = (size_t)n * xc_dtype_size(t);

    float *xr = dup_floats(x, xs), *yr = inplace ? xr : dup_floats(y0, ys);
    xc_norm_args ra = {xr, yr, w, b, t, m, n, ldx, inplace ? ldx : ldy, 1e-5f};
    assert_int_equal(ln ? xc_ref_layernorm(&ra) : xc_ref_rmsnorm(&ra), XC_OK);

    dev d = {.be = be};
    float *dx = dev_put(&d, x, xs * 4);
    float *dy = inplace ? dx : dev_put(&d, y0, ys * 4);
    xc_norm_args a = {
        dx, dy, dev_put(&d, w, wb), bias ? dev_put(&d, b, wb) : NULL, t, m, n, ldx, ra.ldy, 1e-5f};
    assert_int_equal(ln ? xc_backend_layernorm(be, &a) : xc_backend_rmsnorm(be, &a), XC_OK);
    float *got = malloc(ys * 4);
    dev_get(&d, got, dy, ys * 4);
    char what[160];
    snprintf(what, sizeof what, "%s %s %s m=%d n=%d ldx=%d ldy=%d%s", c->label,
             ln ? "layernorm" : "rmsnorm", xc_dtype_name(t), m, n, ldx, ldy,
             inplace ? " in place" : "");
    expect_close(what, got, ly, yr, ly, m, n, 1e-6, 1e-5);
    if (!inplace) { /* padding between rows is untouched */
        for (size_t i = 0; i < ys; i++) {
            if ((int)(i % (size_t)ly) >= n && memcmp(&got[i], &y0[i], 4) != 0) {
                fail_msg("%s: wrote into the stride padding at %zu", what, i);
            }
        }
    }
    dev_free(&d);
    free(got);
    free(x);
    free(y0);
    free(w);
    free(b);
    free(xr);
    if (!inplace) {
        free(yr);
    }
}

static void test_backend_norms_match_ref(void **state) {
    (void)state;
    static const int shapes[][4] = {{1, 1, 0, 0},   {3, 7, 9, 11},      {17, 33, 0, 40},
                                    {2, 100, 0, 0}, {5, 1037, 1040, 0}, {1, 4096, 0, 0}};
    uint64_t s = 12345;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (int ti = 0; ti < 3; ti++) {
            for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
                const int *sh = shapes[k];
                for (int ln = 0; ln < 2; ln++) {
                    norm_case(be, &confs[ci], ln, wdtypes[ti], sh[0], sh[1], sh[2], sh[3], false,
                              ln, &s);
                    norm_case(be, &confs[ci], ln, wdtypes[ti], sh[0], sh[1], sh[2], sh[3], true,
                              false, &s);
                }
            }
        }
        xc_backend_destroy(be);
    }
}

/* ---- rope ---- */

static void test_backend_rope_matches_ref(void **state) {
    (void)state;
    static const int shapes[][4] = {/* m, n_heads, head_dim, ldx */
                                    {1, 1, 2, 0},    {3, 3, 6, 20},  {17, 2, 18, 0},
                                    {4, 4, 64, 300}, {3, 2, 128, 0}, {2, 5, 34, 0}};
    uint64_t s = 777;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            int m = shapes[k][0], nh = shapes[k][1], hd = shapes[k][2], ldx = shapes[k][3];
            int lx = ldx ? ldx : nh * hd;
            size_t xs = (size_t)m * lx;
            float *x = rnd_floats(xs, -1.0f, 1.0f, &s);
            int32_t pos[32];
            for (int i = 0; i < m; i++) {
                pos[i] = i == 0 ? 0 : (int32_t)((rnd(&s) + 1.0f) * 2500.0f);
            }
            for (int th = 0; th < 2; th++) {
                float theta = th ? 1e6f : 1e4f;
                float *xr = dup_floats(x, xs);
                xc_rope_args ra = {xr, pos, m, nh, hd, ldx, theta};
                assert_int_equal(xc_ref_rope(&ra), XC_OK);
                dev d = {.be = be};
                xc_rope_args a = ra;
                a.x = dev_put(&d, x, xs * 4);
                assert_int_equal(xc_backend_rope(be, &a), XC_OK);
                float *got = malloc(xs * 4);
                dev_get(&d, got, a.x, xs * 4);
                char what[128];
                snprintf(what, sizeof what, "%s rope m=%d heads=%d hd=%d ldx=%d theta=%g",
                         confs[ci].label, m, nh, hd, ldx, (double)theta);
                expect_close(what, got, lx, xr, lx, m, lx, 1e-6, 1e-5); /* padding: exact */
                dev_free(&d);
                free(got);
                free(xr);
            }
            free(x);
        }
        xc_backend_destroy(be);
    }
}

/* ---- kv_store ---- */

static void test_backend_kv_store_matches_ref(void **state) {
    (void)state;
    uint64_t s = 99;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        int m = 5, width = 13, ldk = 16, ldv = 0, n_slots = 11;
        float *k = rnd_floats((size_t)m * ldk, -1, 1, &s),
              *v = rnd_floats((size_t)m * width, -1, 1, &s);
        float *kc = rnd_floats((size_t)n_slots * width, -1, 1, &s);
        float *vc = rnd_floats((size_t)n_slots * width, -1, 1, &s);
        int32_t slots[5] = {10, 0, 3, 4, 7};
        float *kr = dup_floats(kc, (size_t)n_slots * width),
              *vr = dup_floats(vc, (size_t)n_slots * width);
        xc_kv_store_args ra = {k, v, kr, vr, slots, m, width, ldk, ldv, n_slots, XC_DTYPE_F32};
        assert_int_equal(xc_ref_kv_store(&ra), XC_OK);
        dev d = {.be = be};
        xc_kv_store_args a = ra;
        a.k = dev_put(&d, k, (size_t)m * ldk * 4);
        a.v = dev_put(&d, v, (size_t)m * width * 4);
        a.k_cache = dev_put(&d, kc, (size_t)n_slots * width * 4);
        a.v_cache = dev_put(&d, vc, (size_t)n_slots * width * 4);
        assert_int_equal(xc_backend_kv_store(be, &a), XC_OK);
        float *got = malloc((size_t)n_slots * width * 4);
        dev_get(&d, got, a.k_cache, (size_t)n_slots * width * 4);
        expect_bits("kv_store k", got, kr, (size_t)n_slots * width);
        dev_get(&d, got, a.v_cache, (size_t)n_slots * width * 4);
        expect_bits("kv_store v", got, vr, (size_t)n_slots * width);
        /* a slot outside the cache is refused and nothing is written */
        slots[2] = 11;
        assert_int_equal(xc_backend_kv_store(be, &a), XC_ERR_ARG);
        assert_int_equal(xc_ref_kv_store(&ra), XC_ERR_ARG);
        slots[2] = -1;
        assert_int_equal(xc_backend_kv_store(be, &a), XC_ERR_ARG);
        dev_free(&d);
        free(got);
        free(k);
        free(v);
        free(kc);
        free(vc);
        free(kr);
        free(vr);
        xc_backend_destroy(be);
    }
}

/* The bf16 nearest to x, ties to even, found from the two bf16 neighbours in double arithmetic
 * (independent of the bit trick in xc_f32_to_bf16). Finite inputs only. */
static uint16_t bf16_nearest(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint16_t lo = (uint16_t)(u >> 16); /* truncation: toward zero */
    uint16_t hi = (uint16_t)(lo + 1);  /* next away from zero (may be inf) */
    if ((u & 0xffffu) == 0) {
        return lo;
    }
    uint32_t lb = (uint32_t)lo << 16, hb = (uint32_t)hi << 16;
    float lf, hf;
    memcpy(&lf, &lb, 4);
    memcpy(&hf, &hb, 4);
    double dl = fabs((double)x - (double)lf);
    double dh = isinf(hf) ? fabs((double)x - copysign(0x1p128, (double)x)) /* inf: 2^128 */
                          : fabs((double)x - (double)hf);
    if (dl < dh) {
        return lo;
    }
    if (dh < dl) {
        return hi;
    }
    return (lo & 1u) ? hi : lo;
}

/* kv_store into a bf16 cache: every value rounded to nearest even (specials, ties, overflow to inf,
 * subnormals, NaN kept NaN), bit-identical on every backend and to the reference; a cache of an
 * unsupported dtype is refused. */
static void test_backend_kv_store_bf16(void **state) {
    (void)state;
    const float specials[] = {1.0f + 0x1p-8f,
                              1.0f + 3 * 0x1p-8f,
                              -1.0f - 0x1p-8f,
                              0x1.fffffep127f,
                              -0x1.fffffep127f,
                              0x1p-133f,
                              -0x1p-140f,
                              0.0f,
                              -0.0f,
                              INFINITY,
                              -INFINITY,
                              NAN,
                              1.0f + 0x1p-9f,
                              3.14159265f,
                              -2.71828183f,
                              65504.0f};
    const uint16_t want_specials[] = {0x3f80, 0x3f82, 0xbf80, 0x7f80, 0xff80, 0, 0, 0,
                                      0x8000, 0x7f80, 0xff80, 0,      0x3f80, 0, 0, 0};
    uint64_t s = 1234;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        int m = 7, width = 37, n_slots = 9; /* width: 4 full SIMD chunks and a tail */
        float *k = rnd_floats((size_t)m * width, -3, 3, &s),
              *v = rnd_floats((size_t)m * width, -3, 3, &s);
        for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
            k[i] = specials[i];
            v[(size_t)m * width - 1 - i] = specials[i];
        }
        for (int i = 20; i < 30; i++) { /* small magnitudes: subnormal results */
            k[i] = (rnd(&s)) * 0x1p-128f;
        }
        int32_t slots[7] = {8, 0, 3, 4, 7, 1, 2};
        size_t cn = (size_t)n_slots * width;
        uint16_t *kr = calloc(cn, 2), *vr = calloc(cn, 2);
        xc_kv_store_args ra = {k, v, kr, vr, slots, m, width, 0, 0, n_slots, XC_DTYPE_BF16};
        assert_int_equal(xc_ref_kv_store(&ra), XC_OK);
        dev d = {.be = be};
        xc_kv_store_args a = ra;
        a.k = dev_put(&d, k, (size_t)m * width * 4);
        a.v = dev_put(&d, v, (size_t)m * width * 4);
        a.k_cache = dev_put(&d, kr, cn * 2);
        a.v_cache = dev_put(&d, vr, cn * 2);
        assert_int_equal(xc_backend_kv_store(be, &a), XC_OK);
        uint16_t *gk = malloc(cn * 2), *gv = malloc(cn * 2);
        dev_get(&d, gk, a.k_cache, cn * 2);
        dev_get(&d, gv, a.v_cache, cn * 2);
        assert_memory_equal(gk, kr, cn * 2);
        assert_memory_equal(gv, vr, cn * 2);
        for (int i = 0; i < m; i++) {
            for (int c = 0; c < width; c++) {
                size_t src = (size_t)i * width + c, dst = (size_t)slots[i] * width + c;
                const float xs[2] = {k[src], v[src]};
                const uint16_t got[2] = {gk[dst], gv[dst]};
                for (int t = 0; t < 2; t++) {
                    if (isnan(xs[t])) {
                        assert_true((got[t] & 0x7f80) == 0x7f80 && (got[t] & 0x7f) != 0);
                    } else if (isinf(xs[t])) {
                        assert_int_equal(got[t], xs[t] > 0 ? 0x7f80 : 0xff80);
                    } else {
                        if (got[t] != bf16_nearest(xs[t])) {
                            fail_msg("%s bf16 of %a: got 0x%04x, want 0x%04x", confs[ci].label,
                                     (double)xs[t], got[t], bf16_nearest(xs[t]));
                        }
                    }
                }
            }
        }
        for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
            if (want_specials[i] || specials[i] == 0.0f) {
                assert_int_equal(gk[(size_t)slots[0] * width + i], want_specials[i]);
            }
        }
        /* an f16 cache is not a KV type */
        a.cache_dtype = XC_DTYPE_F16;
        assert_int_equal(xc_backend_kv_store(be, &a), XC_ERR_UNSUPPORTED);
        dev_free(&d);
        free(gk);
        free(gv);
        free(kr);
        free(vr);
        free(k);
        free(v);
        xc_backend_destroy(be);
    }
}

/* ---- attention ---- */

/* One attention problem in host memory: q (rows, n_heads*hd), k/v either contiguous (kv rows per
 * sequence at kv_start) or paged (blocks scattered in a pool, in shuffled order). */
typedef struct attn_prob {
    int n_heads, n_kv, hd, block_size, ldq, ldo, ldkv;
    bool causal, paged;
    int n_seqs;
    xc_attn_seq seqs[8];
    int32_t tables[8][64];
    float *q, *k, *v;
    size_t q_rows, kv_rows;
} attn_prob;

/* Sequences with the given n_q/kv_len; keys are random, the layout contiguous or paged. */
static void attn_make(attn_prob *p, int n_seqs, const int *n_q, const int *kv_len, uint64_t *s) {
    int qw = p->n_heads * p->hd, kw = p->n_kv * p->hd;
    p->ldq = p->ldq ? p->ldq : qw;
    p->ldo = p->ldo ? p->ldo : qw;
    p->ldkv = p->ldkv ? p->ldkv : kw;
    p->n_seqs = n_seqs;
    int rows = 0, kv_rows = 0, blocks = 0;
    for (int i = 0; i < n_seqs; i++) {
        p->seqs[i] = (xc_attn_seq){.q_start = rows, .n_q = n_q[i], .kv_len = kv_len[i]};
        rows += n_q[i] + 1; /* a gap row between sequences */
        if (p->paged) {
            blocks += (kv_len[i] + p->block_size - 1) / p->block_size;
        } else {
            p->seqs[i].kv_start = kv_rows;
            kv_rows += kv_len[i] + 2;
        }
    }
    if (p->paged) {
        /* block ids 1..blocks shuffled (block 0 unused), dealt to the sequences in order */
        int32_t perm[512];
        assert_true(blocks <= 512);
        for (int b = 0; b < blocks; b++) {
            perm[b] = b + 1;
        }
        for (int b = blocks - 1; b > 0; b--) {
            int o = (int)((rnd(s) + 1.0f) * 0.5f * (float)(b + 1)) % (b + 1);
            int32_t tmp = perm[b];
            perm[b] = perm[o];
            perm[o] = tmp;
        }
        int next = 0;
        for (int i = 0; i < n_seqs; i++) {
            int nb = (kv_len[i] + p->block_size - 1) / p->block_size;
            assert_true(nb <= 64);
            for (int b = 0; b < nb; b++) {
                p->tables[i][b] = perm[next++];
            }
            p->seqs[i].block_table = p->tables[i];
        }
        kv_rows = (blocks + 1) * p->block_size;
    }
    p->q_rows = (size_t)rows;
    p->kv_rows = (size_t)kv_rows;
    p->q = rnd_floats(p->q_rows * p->ldq, -1.5f, 1.5f, s);
    p->k = rnd_floats(p->kv_rows * p->ldkv, -1.5f, 1.5f, s);
    p->v = rnd_floats(p->kv_rows * p->ldkv, -1.0f, 1.0f, s);
}

static void attn_free(attn_prob *p) {
    free(p->q);
    free(p->k);
    free(p->v);
}

static xc_attention_args attn_args(const attn_prob *p, const float *q, float *out, const float *k,
                                   const float *v) {
    return (xc_attention_args){.q = q,
                               .out = out,
                               .k = k,
                               .v = v,
                               .ldq = p->ldq,
                               .ldo = p->ldo,
                               .ldkv = p->ldkv,
                               .n_heads = p->n_heads,
                               .n_kv_heads = p->n_kv,
                               .head_dim = p->hd,
                               .block_size = p->block_size,
                               .scale = 1.0f / sqrtf((float)p->hd),
                               .causal = p->causal,
                               .seqs = p->seqs,
                               .n_seqs = p->n_seqs};
}

/* Runs the problem on a backend; returns the (q_rows, ldo) output (malloc'd), initialised to a
 * sentinel so unwritten rows show. */
static float *attn_run(xc_backend *be, const attn_prob *p) {
    size_t os = p->q_rows * (size_t)p->ldo;
    float *out = malloc(os * 4);
    for (size_t i = 0; i < os; i++) {
        out[i] = -7.0f;
    }
    dev d = {.be = be};
    float *dq = dev_put(&d, p->q, p->q_rows * p->ldq * 4);
    float *dout = dev_put(&d, out, os * 4);
    float *dk = dev_put(&d, p->k, p->kv_rows * p->ldkv * 4);
    float *dv = dev_put(&d, p->v, p->kv_rows * p->ldkv * 4);
    xc_attention_args a = attn_args(p, dq, dout, dk, dv);
    assert_int_equal(xc_backend_attention(be, &a), XC_OK);
    dev_get(&d, out, dout, os * 4);
    dev_free(&d);
    return out;
}

static void attn_check(xc_backend *be, const be_conf *c, attn_prob *p, const char *name) {
    float *got = attn_run(be, p);
    size_t os = p->q_rows * (size_t)p->ldo;
    float *ref = malloc(os * 4);
    for (size_t i = 0; i < os; i++) {
        ref[i] = -7.0f;
    }
    xc_attention_args ra = attn_args(p, p->q, ref, p->k, p->v);
    assert_int_equal(xc_ref_attention(&ra), XC_OK);
    char what[200];
    snprintf(what, sizeof what, "%s attention %s heads=%d/%d hd=%d %s %s", c->label, name,
             p->n_heads, p->n_kv, p->hd, p->causal ? "causal" : "bidirectional",
             p->paged ? "paged" : "contiguous");
    expect_close(what, got, p->ldo, ref, p->ldo, (int)p->q_rows, p->ldo, 2e-6, 1e-4);
    free(got);
    free(ref);
}

static void test_backend_attention_matches_ref(void **state) {
    (void)state;
    uint64_t s = 4242;
    static const int geo[][3] = {/* n_heads, n_kv, hd */
                                 {1, 1, 8}, {2, 1, 13}, {4, 2, 64}, {8, 2, 128},
                                 {3, 3, 5}, {4, 2, 16}, {2, 1, 32}};
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (size_t g = 0; g < sizeof geo / sizeof geo[0]; g++) {
            for (int mode = 0; mode < 4; mode++) {
                attn_prob p = {.n_heads = geo[g][0],
                               .n_kv = geo[g][1],
                               .hd = geo[g][2],
                               .block_size = mode == 3 ? 5 : 16};
                p.causal = mode != 0;
                p.paged = mode >= 2;
                if (g == 1) { /* padded strides */
                    p.ldq = p.n_heads * p.hd + 3;
                    p.ldo = p.n_heads * p.hd + 5;
                    p.ldkv = p.n_kv * p.hd + 1;
                }
                const char *name;
                if (mode == 0) { /* CLIP-like: bidirectional, every query sees all keys */
                    int nq[2] = {17, 3}, kv[2] = {17, 3};
                    attn_make(&p, 2, nq, kv, &s);
                    name = "bidirectional";
                } else if (mode == 1) { /* prefill, including past keys and > 64 keys */
                    int nq[3] = {70, 1, 9}, kv[3] = {70, 3, 150};
                    attn_make(&p, 3, nq, kv, &s);
                    name = "prefill";
                } else if (mode == 2) { /* paged prefill with past */
                    int nq[2] = {17, 33}, kv[2] = {40, 33};
                    attn_make(&p, 2, nq, kv, &s);
                    name = "paged prefill";
                } else { /* paged decode: one query per sequence */
                    int nq[4] = {1, 1, 1, 1}, kv[4] = {1, 64, 65, 130};
                    attn_make(&p, 4, nq, kv, &s);
                    name = "paged decode";
                }
                attn_check(be, &confs[ci], &p, name);
                attn_free(&p);
            }
        }
        xc_backend_destroy(be);
    }
}

/* Runs p with K and V stored as bf16 (rounded to nearest even); with widen, runs instead the f32
 * problem whose K and V hold those rounded values. Both must give the same bits. */
static float *attn_run_bf16(xc_backend *be, const attn_prob *p, bool widen) {
    size_t n = p->kv_rows * (size_t)p->ldkv, os = p->q_rows * (size_t)p->ldo;
    uint16_t *k16 = malloc(n * 2), *v16 = malloc(n * 2);
    float *kw = malloc(n * 4), *vw = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        k16[i] = xc_f32_to_bf16(p->k[i]);
        v16[i] = xc_f32_to_bf16(p->v[i]);
        kw[i] = xc_bf16_to_f32(k16[i]);
        vw[i] = xc_bf16_to_f32(v16[i]);
    }
    float *out = malloc(os * 4);
    for (size_t i = 0; i < os; i++) {
        out[i] = -7.0f;
    }
    dev d = {.be = be};
    float *dq = dev_put(&d, p->q, p->q_rows * p->ldq * 4);
    float *dout = dev_put(&d, out, os * 4);
    xc_attention_args a = attn_args(p, dq, dout, NULL, NULL);
    if (widen) {
        a.k = dev_put(&d, kw, n * 4);
        a.v = dev_put(&d, vw, n * 4);
    } else {
        a.k = dev_put(&d, k16, n * 2);
        a.v = dev_put(&d, v16, n * 2);
        a.kv_dtype = XC_DTYPE_BF16;
    }
    assert_int_equal(xc_backend_attention(be, &a), XC_OK);
    dev_get(&d, out, dout, os * 4);
    dev_free(&d);
    free(k16);
    free(v16);
    free(kw);
    free(vw);
    return out;
}

/* Attention over a bf16 KV cache: the bits of the f32 attention over the same rounded values (so
 * it inherits that path's batch invariance and accuracy), and within tolerance of the reference
 * reading the bf16 values; an f16 KV is refused. */
static void test_backend_attention_bf16(void **state) {
    (void)state;
    uint64_t s = 777;
    static const int geo[][3] = {{4, 2, 64}, {8, 2, 128}, {2, 1, 13}};
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (size_t g = 0; g < sizeof geo / sizeof geo[0]; g++) {
            for (int mode = 0; mode < 3; mode++) {
                attn_prob p = {.n_heads = geo[g][0],
                               .n_kv = geo[g][1],
                               .hd = geo[g][2],
                               .block_size = 16,
                               .causal = mode != 0,
                               .paged = mode == 2};
                int nq[3] = {mode == 2 ? 1 : 40, 7, 1}, kv[3] = {mode == 2 ? 77 : 40, 7, 90};
                if (mode == 1) {
                    kv[0] = 60; /* prefill with past keys */
                    nq[2] = 5;
                }
                attn_make(&p, 3, nq, kv, &s);
                float *b = attn_run_bf16(be, &p, false);
                float *w = attn_run_bf16(be, &p, true);
                char what[160];
                snprintf(what, sizeof what, "%s bf16 attention hd=%d mode %d", confs[ci].label,
                         p.hd, mode);
                expect_bits(what, b, w, p.q_rows * (size_t)p.ldo);
                /* the reference reading the bf16 cache */
                size_t n = p.kv_rows * (size_t)p.ldkv, os = p.q_rows * (size_t)p.ldo;
                uint16_t *k16 = malloc(n * 2), *v16 = malloc(n * 2);
                for (size_t i = 0; i < n; i++) {
                    k16[i] = xc_f32_to_bf16(p.k[i]);
                    v16[i] = xc_f32_to_bf16(p.v[i]);
                }
                float *ref = malloc(os * 4);
                for (size_t i = 0; i < os; i++) {
                    ref[i] = -7.0f;
                }
                xc_attention_args ra = attn_args(&p, p.q, ref, NULL, NULL);
                ra.k = k16;
                ra.v = v16;
                ra.kv_dtype = XC_DTYPE_BF16;
                assert_int_equal(xc_ref_attention(&ra), XC_OK);
                expect_close(what, b, p.ldo, ref, p.ldo, (int)p.q_rows, p.ldo, 2e-6, 1e-4);
                ra.kv_dtype = XC_DTYPE_F16;
                assert_int_equal(xc_ref_attention(&ra), XC_ERR_UNSUPPORTED);
                free(k16);
                free(v16);
                free(ref);
                free(b);
                free(w);
                attn_free(&p);
            }
        }
        xc_backend_destroy(be);
    }
}

/* A sequence's outputs are bit-identical alone and batched with others; paged and contiguous
 * caches give identical bits; a causal prefill split into two chunks (over the same cache) gives
 * the bits of the one-shot prefill. */
static void test_backend_attention_batch_invariant(void **state) {
    (void)state;
    static const int geo[][3] = {{4, 1, 64}, {2, 2, 13}, {8, 2, 128}, {4, 2, 16}};
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (size_t g = 0; g < sizeof geo / sizeof geo[0]; g++) {
            for (int causal = 0; causal < 2; causal++) {
                int nq_t = causal ? 21 : 19, kv_t = causal ? 90 : 19;
                uint64_t s = 5 + g;
                /* the target sequence alone, contiguous */
                attn_prob alone = {.n_heads = geo[g][0],
                                   .n_kv = geo[g][1],
                                   .hd = geo[g][2],
                                   .causal = causal,
                                   .block_size = 16};
                attn_make(&alone, 1, &nq_t, &kv_t, &s);
                float *o_alone = attn_run(be, &alone);
                size_t qw = (size_t)alone.n_heads * alone.hd;
                size_t kw = (size_t)alone.n_kv * alone.hd;
                char what[160];
                /* batched with 1..7 other sequences, the target at different positions */
                for (int nb = 2; nb <= 8; nb += 3) {
                    for (int at = 0; at<nb; at += nb - 1> 0 ? nb - 1 : 1) {
                        for (int paged = 0; paged < 2; paged++) {
                            int nq[8], kv[8];
                            uint64_t s2 = 1000 + (uint64_t)nb * 10 + (uint64_t)at;
                            for (int i = 0; i < nb; i++) {
                                nq[i] = i == at ? nq_t : 1 + (int)((rnd(&s2) + 1) * 10);
                                kv[i] = i == at ? kv_t
                                                : nq[i] + (causal ? (int)((rnd(&s2) + 1) * 40) : 0);
                            }
                            attn_prob b = {.n_heads = alone.n_heads,
                                           .n_kv = alone.n_kv,
                                           .hd = alone.hd,
                                           .causal = causal,
                                           .block_size = 16,
                                           .paged = paged};
                            attn_make(&b, nb, nq, kv, &s2);
                            /* put the target's q/k/v into the batch */
                            const xc_attn_seq *ts = &b.seqs[at];
                            for (int i = 0; i < nq_t; i++) {
                                memcpy(b.q + (size_t)(ts->q_start + i) * b.ldq, alone.q + i * qw,
                                       qw * 4);
                            }
                            for (int pp = 0; pp < kv_t; pp++) {
                                size_t row = paged ? (size_t)ts->block_table[pp / 16] * 16 + pp % 16
                                                   : (size_t)ts->kv_start + pp;
                                memcpy(b.k + row * b.ldkv, alone.k + pp * kw, kw * 4);
                                memcpy(b.v + row * b.ldkv, alone.v + pp * kw, kw * 4);
                            }
                            float *o_b = attn_run(be, &b);
                            snprintf(what, sizeof what,
                                     "%s attention hd=%d %s: alone vs %d seqs at %d (%s)",
                                     confs[ci].label, alone.hd, causal ? "causal" : "bidir", nb, at,
                                     paged ? "paged" : "contiguous");
                            for (int i = 0; i < nq_t; i++) {
                                expect_bits(what, o_alone + i * qw,
                                            o_b + (size_t)(ts->q_start + i) * b.ldo, qw);
                            }
                            free(o_b);
                            attn_free(&b);
                        }
                    }
                }
                /* chunked causal prefill: chunk 1 = first c queries with kv_len c (the rest of
                 * the cache not yet visible), chunk 2 = the rest with the full kv_len */
                if (causal) {
                    for (int c = 1; c < nq_t; c += 7) {
                        int past = kv_t - nq_t;
                        attn_prob ch = alone;
                        ch.n_seqs = 2;
                        ch.seqs[0] = (xc_attn_seq){.q_start = 0, .n_q = c, .kv_len = past + c};
                        ch.seqs[1] = (xc_attn_seq){.q_start = c, .n_q = nq_t - c, .kv_len = kv_t};
                        float *o_ch = attn_run(be, &ch);
                        snprintf(what, sizeof what, "%s attention hd=%d chunked prefill at %d",
                                 confs[ci].label, alone.hd, c);
                        expect_bits(what, o_alone, o_ch, (size_t)nq_t * qw);
                        free(o_ch);
                    }
                }
                free(o_alone);
                attn_free(&alone);
            }
        }
        xc_backend_destroy(be);
    }
}

/* ---- act ---- */

static void test_backend_act_matches_ref(void **state) {
    (void)state;
    static const int shapes[][5] = {/* m, n, ldx, ldx2, ldy */
                                    {1, 1, 0, 0, 0},
                                    {3, 7, 9, 8, 10},
                                    {17, 33, 0, 0, 0},
                                    {2, 1037, 1040, 0, 0},
                                    {1, 4096, 0, 0, 0}};
    static const char *names[4] = {"silu_mul", "gelu", "quick_gelu", "add"};
    uint64_t s = 31337;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (int kind = 0; kind < 4; kind++) {
            for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
                for (int inplace = 0; inplace < 2; inplace++) {
                    int m = shapes[k][0], n = shapes[k][1], ldx = shapes[k][2], ldx2 = shapes[k][3],
                        ldy = inplace ? ldx : shapes[k][4];
                    int lx = ldx ? ldx : n, lx2 = ldx2 ? ldx2 : n, ly = ldy ? ldy : n;
                    /* wide range: tails of exp/erf, and 0 */
                    float *x = rnd_floats((size_t)m * lx, -12.0f, 12.0f, &s);
                    float *x2 = rnd_floats((size_t)m * lx2, -3.0f, 3.0f, &s);
                    float *y0 = rnd_floats((size_t)m * ly, -1.0f, 1.0f, &s);
                    x[0] = 0.0f;
                    float *xr = dup_floats(x, (size_t)m * lx);
                    float *yr = inplace ? xr : dup_floats(y0, (size_t)m * ly);
                    bool two = kind == XC_ACT_SILU_MUL || kind == XC_ACT_ADD;
                    xc_act_args ra = {
                        (xc_act_kind)kind, xr, two ? x2 : NULL, yr, m, n, ldx, ldx2, ldy};
                    assert_int_equal(xc_ref_act(&ra), XC_OK);
                    dev d = {.be = be};
                    xc_act_args a = ra;
                    a.x = dev_put(&d, x, (size_t)m * lx * 4);
                    a.x2 = two ? dev_put(&d, x2, (size_t)m * lx2 * 4) : NULL;
                    a.y = inplace ? (float *)a.x : dev_put(&d, y0, (size_t)m * ly * 4);
                    assert_int_equal(xc_backend_act(be, &a), XC_OK);
                    float *got = malloc((size_t)m * ly * 4);
                    dev_get(&d, got, a.y, (size_t)m * ly * 4);
                    char what[128];
                    snprintf(what, sizeof what, "%s act %s m=%d n=%d%s", confs[ci].label,
                             names[kind], m, n, inplace ? " in place" : "");
                    expect_close(what, got, ly, yr, ly, m, n, 1e-6,
                                 kind == XC_ACT_GELU ? 2e-5 : 1e-5);
                    dev_free(&d);
                    free(got);
                    free(x);
                    free(x2);
                    free(y0);
                    free(xr);
                    if (!inplace) {
                        free(yr);
                    }
                }
            }
        }
        xc_backend_destroy(be);
    }
}

/* ---- embed, patchify ---- */

static void test_backend_embed_matches_ref(void **state) {
    (void)state;
    uint64_t s = 8;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (int ti = 0; ti < 3; ti++) {
            int vocab = 50, n = 37, m = 17, ldy = 40;
            void *table = rnd_weights(wdtypes[ti], (size_t)vocab * n, -1, 1, &s);
            int32_t ids[17];
            for (int i = 0; i < m; i++) {
                ids[i] = (int32_t)((rnd(&s) + 1) * 0.5f * vocab) % vocab;
            }
            ids[0] = 0;
            ids[1] = vocab - 1;
            float *y0 = rnd_floats((size_t)m * ldy, -1, 1, &s);
            float *yr = dup_floats(y0, (size_t)m * ldy);
            xc_embed_args ra = {table, wdtypes[ti], ids, yr, m, n, vocab, ldy};
            assert_int_equal(xc_ref_embed(&ra), XC_OK);
            dev d = {.be = be};
            xc_embed_args a = ra;
            a.table = dev_put(&d, table, (size_t)vocab * n * xc_dtype_size(wdtypes[ti]));
            a.y = dev_put(&d, y0, (size_t)m * ldy * 4);
            assert_int_equal(xc_backend_embed(be, &a), XC_OK);
            float *got = malloc((size_t)m * ldy * 4);
            dev_get(&d, got, a.y, (size_t)m * ldy * 4);
            expect_bits("embed", got, yr, (size_t)m * ldy);
            ids[5] = vocab;
            assert_int_equal(xc_backend_embed(be, &a), XC_ERR_ARG);
            assert_int_equal(xc_ref_embed(&ra), XC_ERR_ARG);
            ids[5] = -1;
            assert_int_equal(xc_backend_embed(be, &a), XC_ERR_ARG);
            dev_free(&d);
            free(got);
            free(table);
            free(y0);
            free(yr);
        }
        xc_backend_destroy(be);
    }
}

static void test_backend_patchify_matches_ref(void **state) {
    (void)state;
    static const int shapes[][4] = {{1, 3, 14, 14}, {2, 3, 28, 14}, {3, 1, 15, 5}, {1, 2, 8, 1}};
    uint64_t s = 21;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            int ni = shapes[k][0], ch = shapes[k][1], sz = shapes[k][2], ps = shapes[k][3];
            size_t is = (size_t)ni * ch * sz * sz, ys = is; /* im2col keeps the element count */
            float *img = rnd_floats(is, -1, 1, &s);
            float *yr = calloc(ys, 4);
            xc_patchify_args ra = {img, yr, ni, ch, sz, ps};
            assert_int_equal(xc_ref_patchify(&ra), XC_OK);
            dev d = {.be = be};
            xc_patchify_args a = ra;
            a.images = dev_put(&d, img, is * 4);
            a.y = dev_put(&d, NULL, ys * 4);
            assert_int_equal(xc_backend_patchify(be, &a), XC_OK);
            float *got = malloc(ys * 4);
            dev_get(&d, got, a.y, ys * 4);
            expect_bits("patchify", got, yr, ys);
            dev_free(&d);
            free(got);
            free(img);
            free(yr);
        }
        xc_backend_destroy(be);
    }
}

/* ---- softmax ---- */

static void test_backend_softmax_matches_ref(void **state) {
    (void)state;
    static const int shapes[][3] = {
        {1, 1, 0}, {3, 7, 9}, {17, 33, 0}, {2, 1037, 1040}, {1, 5000, 0}};
    static const float temps[3] = {0.0f, 0.7f, 1.3f};
    uint64_t s = 555;
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            for (int ti = 0; ti < 3; ti++) {
                for (int skip = 0; skip < 2; skip++) {
                    int m = shapes[k][0], n = shapes[k][1], ldx = shapes[k][2];
                    int lx = ldx ? ldx : n;
                    size_t xs = (size_t)m * lx;
                    float *x = rnd_floats(xs, -20.0f, 20.0f, &s);
                    if (n > 3) { /* a tie for the maximum: the first one wins */
                        x[1] = 30.0f;
                        x[n - 1] = 30.0f;
                    }
                    float *xr = dup_floats(x, xs);
                    int32_t am[17], amr[17];
                    xc_softmax_args ra = {xr, m, n, ldx, temps[ti], skip, amr};
                    assert_int_equal(xc_ref_softmax(&ra), XC_OK);
                    dev d = {.be = be};
                    xc_softmax_args a = ra;
                    a.x = dev_put(&d, x, xs * 4);
                    a.argmax = am;
                    assert_int_equal(xc_backend_softmax(be, &a), XC_OK);
                    float *got = malloc(xs * 4);
                    dev_get(&d, got, a.x, xs * 4);
                    char what[128];
                    snprintf(what, sizeof what, "%s softmax m=%d n=%d t=%g%s", confs[ci].label, m,
                             n, (double)temps[ti], skip ? " argmax only" : "");
                    if (skip) {
                        expect_bits(what, got, x, xs);
                    } else {
                        expect_close(what, got, lx, xr, lx, m, lx, 1e-7, 1e-5);
                    }
                    for (int r = 0; r < m; r++) {
                        assert_int_equal(am[r], amr[r]);
                    }
                    if (n > 3) {
                        assert_int_equal(am[0], 1);
                    }
                    dev_free(&d);
                    free(got);
                    free(x);
                    free(xr);
                }
            }
        }
        xc_backend_destroy(be);
    }
}

/* ---- plora ---- */

/* Unit roundoff of the type backend c rounds GEMM activations to for weights of type t: 0 where
 * the GEMM runs in f32 (the CPU, and CUDA with f32 weights: no TF32), 2^-11 for f16 and 2^-8 for
 * bf16 on CUDA (8 significant bits: |fl(x) - x| <= 2^-8 |x|). */
static double act_roundoff(const be_conf *c, xc_dtype t) {
    if (strcmp(c->name, "cuda") != 0 || t == XC_DTYPE_F32) {
        return 0.0;
    }
    return t == XC_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
}

/* PLoRA is two GEMMs, t = A x then y += scale B t. With x and t rounded to a type of unit roundoff
 * u before each product and f32 accumulation over k and rank terms, each output is off by at most
 * |scale| sum_j |b_ij| (|t_j| 2u(1 + u) + gamma sum_c |a_jc x_c|) <= |scale| M (2u + u^2 + gamma),
 * M = sum_j |b_ij| sum_c |a_jc x_c|, gamma = (k + rank + 16) 2^-24 (f32 summation, with slack),
 * plus the rounding of y itself. */
static void expect_plora_close(const char *what, const xc_plora_args *a, const float *got,
                               const float *ref, const float *y0, double u) {
    int ldx = a->ldx ? a->ldx : a->k, ldy = a->ldy ? a->ldy : a->n;
    for (int r = 0; r < a->m; r++) {
        bool in = false;
        for (int i = 0; i < a->n_ranges; i++) {
            in |= r >= a->ranges[i].start && r < a->ranges[i].end;
        }
        for (int i = 0; i < ldy; i++) {
            size_t o = (size_t)r * ldy + i;
            if (!in || i >= a->n) { /* untouched: bit-identical to the input y */
                if (memcmp(&got[o], &y0[o], 4) != 0) {
                    fail_msg("%s: row %d col %d outside the ranges changed", what, r, i);
                }
                continue;
            }
            double mag = 0;
            for (int j = 0; j < a->rank; j++) {
                double t = 0;
                for (int c = 0; c < a->k; c++) {
                    t += fabs(xc_load_f32(a->a, a->ab_dtype, (size_t)j * a->k + c) *
                              a->x[(size_t)r * ldx + c]);
                }
                mag += fabs(xc_load_f32(a->b, a->ab_dtype, (size_t)i * a->rank + j)) * t;
            }
            double tol = fabs(a->scale) * mag * (2.0 * u + u * u + (a->k + a->rank + 16) * 6e-8) +
                         1e-6 * fabs(ref[o]);
            if (!(fabs(got[o] - ref[o]) <= tol)) {
                fail_msg("%s: row %d col %d: got %.9g, reference %.9g (tol %.3g)", what, r, i,
                         (double)got[o], (double)ref[o], tol);
            }
        }
    }
}

static void test_backend_plora_matches_ref(void **state) {
    (void)state;
    uint64_t s = 2024;
    static const int shapes[][6] = {/* m, n, k, rank, ldx, ldy */
                                    {1, 5, 7, 1, 0, 0},
                                    {17, 33, 40, 8, 45, 35},
                                    {20, 64, 96, 16, 0, 0}};
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        for (int ti = 0; ti < 3; ti++) {
            for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
                int m = shapes[k][0], n = shapes[k][1], kk = shapes[k][2], rank = shapes[k][3];
                int ldx = shapes[k][4], ldy = shapes[k][5];
                int lx = ldx ? ldx : kk, ly = ldy ? ldy : n;
                xc_dtype t = wdtypes[ti];
                float *x = rnd_floats((size_t)m * lx, -1, 1, &s);
                float *y0 = rnd_floats((size_t)m * ly, -1, 1, &s);
                void *wa = rnd_weights(t, (size_t)rank * kk, -0.3f, 0.3f, &s);
                void *wb = rnd_weights(t, (size_t)n * rank, -0.3f, 0.3f, &s);
                xc_row_range ranges[3][3] = {{{0, m}},
                                             {{0, 1}, {m / 2, m / 2}, {m - 1, m}},
                                             {{m / 3, m / 3 + 1}, {m / 2 + 1, m}}};
                int n_ranges[3] = {1, 3, 2};
                for (int ri = 0; ri < 4; ri++) {
                    float *yr = dup_floats(y0, (size_t)m * ly);
                    xc_plora_args ra = {x,
                                        wa,
                                        wb,
                                        t,
                                        yr,
                                        m,
                                        n,
                                        kk,
                                        rank,
                                        ldx,
                                        ldy,
                                        2.0f,
                                        ri < 3 ? ranges[ri] : NULL,
                                        ri < 3 ? n_ranges[ri] : 0};
                    if (ra.n_ranges > 1 && m < 4) {
                        free(yr);
                        continue;
                    }
                    assert_int_equal(xc_ref_plora(&ra), XC_OK);
                    dev d = {.be = be};
                    xc_plora_args a = ra;
                    a.x = dev_put(&d, x, (size_t)m * lx * 4);
                    a.a = dev_put(&d, wa, (size_t)rank * kk * xc_dtype_size(t));
                    a.b = dev_put(&d, wb, (size_t)n * rank * xc_dtype_size(t));
                    a.y = dev_put(&d, y0, (size_t)m * ly * 4);
                    assert_int_equal(xc_backend_plora(be, &a), XC_OK);
                    float *got = malloc((size_t)m * ly * 4);
                    dev_get(&d, got, a.y, (size_t)m * ly * 4);
                    char what[128];
                    snprintf(what, sizeof what, "%s plora %s m=%d n=%d k=%d r=%d ranges#%d",
                             confs[ci].label, xc_dtype_name(t), m, n, kk, rank, ri);
                    xc_plora_args ca = ra;
                    ca.x = x;
                    expect_plora_close(what, &ca, got, yr, y0, act_roundoff(&confs[ci], t));
                    if (ri == 3) { /* n_ranges == 0 changes nothing */
                        expect_bits(what, got, y0, (size_t)m * ly);
                    }
                    dev_free(&d);
                    free(got);
                    free(yr);
                }
                free(x);
                free(y0);
                free(wa);
                free(wb);
            }
        }
        xc_backend_destroy(be);
    }
}

/* ---- argument errors ---- */

/* assert_int_equal(call, want) where the references may run (ref: host-memory buffers). */
#define REF_EXPECT(call, want)                                                                     \
    do {                                                                                           \
        if (ref) {                                                                                 \
            assert_int_equal((call), (want));                                                      \
        }                                                                                          \
    } while (0)

static void test_backend_rejects_bad_args(void **state) {
    (void)state;
    int32_t ids[4] = {0, 1, 2, 3};
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        /* device buffers (zeros) for every device argument, even where the call is expected to
         * fail its checks: two attention calls below succeed and run on them */
        dev d = {.be = be};
        float *buf = dev_put(&d, NULL, 4096 * sizeof(float));
        float *out = dev_put(&d, NULL, 4096 * sizeof(float));
        uint16_t *h = dev_put(&d, NULL, 64 * sizeof(uint16_t));
        /* the naive references read host memory: run them on the CPU backend's buffers only */
        bool ref = strcmp(confs[ci].name, "cpu") == 0;
        /* norms: bad n, stride below the row, bad dtype, in place with different strides, bias
         * on rmsnorm */
        xc_norm_args n0 = {buf, out, buf, NULL, XC_DTYPE_F32, 2, 8, 0, 0, 1e-5f};
        xc_norm_args na = n0;
        na.n = 0;
        assert_int_equal(xc_backend_rmsnorm(be, &na), XC_ERR_ARG);
        REF_EXPECT(xc_ref_rmsnorm(&na), XC_ERR_ARG);
        na = n0;
        na.ldx = 4;
        assert_int_equal(xc_backend_layernorm(be, &na), XC_ERR_ARG);
        REF_EXPECT(xc_ref_layernorm(&na), XC_ERR_ARG);
        na = n0;
        na.wb_dtype = XC_DTYPE_I32;
        assert_int_equal(xc_backend_rmsnorm(be, &na), XC_ERR_UNSUPPORTED);
        REF_EXPECT(xc_ref_rmsnorm(&na), XC_ERR_UNSUPPORTED);
        na = n0;
        na.y = buf;
        na.ldy = 9;
        assert_int_equal(xc_backend_rmsnorm(be, &na), XC_ERR_ARG);
        na = n0;
        na.b = buf;
        assert_int_equal(xc_backend_rmsnorm(be, &na), XC_ERR_ARG);
        na = n0;
        na.m = -1;
        assert_int_equal(xc_backend_layernorm(be, &na), XC_ERR_ARG);
        /* rope: odd head_dim, negative position */
        int32_t pos[2] = {0, -1};
        xc_rope_args r0 = {buf, pos, 1, 2, 8, 0, 1e4f};
        xc_rope_args rr = r0;
        rr.head_dim = 7;
        assert_int_equal(xc_backend_rope(be, &rr), XC_ERR_ARG);
        REF_EXPECT(xc_ref_rope(&rr), XC_ERR_ARG);
        rr = r0;
        rr.m = 2;
        assert_int_equal(xc_backend_rope(be, &rr), XC_ERR_ARG);
        rr = r0;
        rr.theta = 0;
        assert_int_equal(xc_backend_rope(be, &rr), XC_ERR_ARG);
        /* act: unknown kind, missing x2 */
        xc_act_args a0 = {XC_ACT_ADD, buf, NULL, out, 2, 8, 0, 0, 0};
        assert_int_equal(xc_backend_act(be, &a0), XC_ERR_ARG);
        REF_EXPECT(xc_ref_act(&a0), XC_ERR_ARG);
        a0.kind = (xc_act_kind)9;
        a0.x2 = buf;
        assert_int_equal(xc_backend_act(be, &a0), XC_ERR_ARG);
        /* embed: bad dtype */
        xc_embed_args e0 = {h, XC_DTYPE_I8, ids, out, 4, 8, 8, 0};
        assert_int_equal(xc_backend_embed(be, &e0), XC_ERR_UNSUPPORTED);
        e0.table_dtype = XC_DTYPE_F16;
        e0.vocab = 3;
        assert_int_equal(xc_backend_embed(be, &e0), XC_ERR_ARG);
        /* patchify: size not a multiple of patch */
        xc_patchify_args p0 = {buf, out, 1, 3, 15, 4};
        assert_int_equal(xc_backend_patchify(be, &p0), XC_ERR_ARG);
        REF_EXPECT(xc_ref_patchify(&p0), XC_ERR_ARG);
        p0.patch = 0;
        assert_int_equal(xc_backend_patchify(be, &p0), XC_ERR_ARG);
        /* softmax: negative temperature, zero width */
        xc_softmax_args s0 = {buf, 2, 8, 0, -1.0f, false, NULL};
        assert_int_equal(xc_backend_softmax(be, &s0), XC_ERR_ARG);
        REF_EXPECT(xc_ref_softmax(&s0), XC_ERR_ARG);
        s0.temperature = 1;
        s0.n = 0;
        assert_int_equal(xc_backend_softmax(be, &s0), XC_ERR_ARG);
        /* plora: ranges out of order, overlapping, outside m; bad dtype; rank 0 */
        xc_row_range rg[2] = {{4, 6}, {1, 3}};
        xc_plora_args l0 = {buf, h, h, XC_DTYPE_F16, out, 8, 4, 4, 2, 0, 0, 1.0f, rg, 2};
        assert_int_equal(xc_backend_plora(be, &l0), XC_ERR_ARG);
        REF_EXPECT(xc_ref_plora(&l0), XC_ERR_ARG);
        rg[0] = (xc_row_range){0, 3};
        rg[1] = (xc_row_range){2, 5};
        assert_int_equal(xc_backend_plora(be, &l0), XC_ERR_ARG);
        rg[1] = (xc_row_range){3, 9};
        assert_int_equal(xc_backend_plora(be, &l0), XC_ERR_ARG);
        rg[1] = (xc_row_range){5, 3};
        assert_int_equal(xc_backend_plora(be, &l0), XC_ERR_ARG);
        rg[1] = (xc_row_range){3, 8};
        l0.ab_dtype = XC_DTYPE_F64;
        assert_int_equal(xc_backend_plora(be, &l0), XC_ERR_UNSUPPORTED);
        l0.ab_dtype = XC_DTYPE_F16;
        l0.rank = 0;
        assert_int_equal(xc_backend_plora(be, &l0), XC_ERR_ARG);
        /* attention: heads not a multiple of kv heads, causal with kv_len < n_q, negative block,
         * overlapping query rows, head_dim too large */
        int32_t table[2] = {0, -3};
        xc_attn_seq sq[2] = {{0, 2, 4, NULL, 0}, {2, 1, 3, NULL, 0}};
        xc_attention_args t0 = {.q = buf,
                                .out = out,
                                .k = buf,
                                .v = buf,
                                .n_heads = 4,
                                .n_kv_heads = 2,
                                .head_dim = 8,
                                .block_size = 2,
                                .causal = true,
                                .seqs = sq,
                                .n_seqs = 2};
        assert_int_equal(xc_backend_attention(be, &t0), XC_OK);
        REF_EXPECT(xc_ref_attention(&t0), XC_OK);
        xc_attention_args ta = t0;
        ta.n_kv_heads = 3;
        assert_int_equal(xc_backend_attention(be, &ta), XC_ERR_ARG);
        REF_EXPECT(xc_ref_attention(&ta), XC_ERR_ARG);
        ta = t0;
        ta.head_dim = 4096;
        assert_int_equal(xc_backend_attention(be, &ta), XC_ERR_ARG);
        sq[0].kv_len = 1;
        assert_int_equal(xc_backend_attention(be, &t0), XC_ERR_ARG);
        sq[0].kv_len = 4;
        sq[1].q_start = 1;
        assert_int_equal(xc_backend_attention(be, &t0), XC_ERR_ARG);
        sq[1].q_start = 2;
        sq[1].block_table = table;
        assert_int_equal(xc_backend_attention(be, &t0), XC_ERR_ARG);
        REF_EXPECT(xc_ref_attention(&t0), XC_ERR_ARG);
        table[1] = 1;
        assert_int_equal(xc_backend_attention(be, &t0), XC_OK);
        ta = t0;
        ta.block_size = 0;
        assert_int_equal(xc_backend_attention(be, &ta), XC_ERR_ARG);
        ta = t0;
        ta.ldkv = 3;
        assert_int_equal(xc_backend_attention(be, &ta), XC_ERR_ARG);
        /* kv_store: stride below width */
        int32_t slots[1] = {0};
        xc_kv_store_args k0 = {buf, buf, out, out, slots, 1, 8, 4, 0, 4, XC_DTYPE_F32};
        assert_int_equal(xc_backend_kv_store(be, &k0), XC_ERR_ARG);
        REF_EXPECT(xc_ref_kv_store(&k0), XC_ERR_ARG);
        dev_free(&d);
        xc_backend_destroy(be);
    }
}

/* ---- batch invariance of the row ops ---- */

/* A row op on a batch: in (m, n_in) host rows -> out (m, n_out) host rows. The op's own weights
 * and settings live in ctx. */
typedef void (*row_op_fn)(xc_backend *be, const void *ctx, const float *in, int m, float *out);

typedef struct row_op {
    const char *name;
    row_op_fn fn;
    const void *ctx;
    int n_in, n_out;
    bool gemm; /* built on cuBLAS on CUDA, which does not promise batch-invariant bits */
} row_op;

/* Row `r` of `pool` computed alone, then inside batches of 2..64 rows at the front, middle and
 * back, must give the same bits, on every backend configuration (1 and 2 threads, SIMD and
 * scalar). The other rows of each batch are random rows of the pool. */
static void check_row_invariance(const row_op *op) {
    enum { POOL = 64 };

    static const int sizes[] = {2, 3, 5, 8, 17, 33, 64};
    uint64_t s = 77;
    float *pool = rnd_floats((size_t)POOL * op->n_in, -3.0f, 3.0f, &s);
    float *alone = malloc((size_t)op->n_out * 4);
    float *batch_in = malloc((size_t)64 * op->n_in * 4);
    float *batch_out = malloc((size_t)64 * op->n_out * 4);
    for (int ci = 0; ci < N_CONFS; ci++) {
        xc_backend *be = open_be(&confs[ci]);
        if (!be) {
            continue;
        }
        if (op->gemm && strcmp(confs[ci].name, "cuda") == 0) {
            print_message("%s on cuda: not checked for batch invariance (cuBLAS GEMMs)\n",
                          op->name);
            xc_backend_destroy(be);
            continue;
        }
        for (int target = 0; target < POOL; target += 21) {
            const float *row = pool + (size_t)target * op->n_in;
            op->fn(be, op->ctx, row, 1, alone);
            for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
                int m = sizes[si];
                int places[3] = {0, m / 2, m - 1};
                for (int pi = 0; pi < 3; pi++) {
                    for (int r = 0; r < m; r++) {
                        int src =
                            r == places[pi] ? target : (int)((rnd(&s) + 1) * 0.5f * POOL) % POOL;
                        memcpy(batch_in + (size_t)r * op->n_in, pool + (size_t)src * op->n_in,
                               (size_t)op->n_in * 4);
                    }
                    op->fn(be, op->ctx, batch_in, m, batch_out);
                    char what[128];
                    snprintf(what, sizeof what, "%s %s: row alone vs row %d of %d", confs[ci].label,
                             op->name, places[pi], m);
                    expect_bits(what, alone, batch_out + (size_t)places[pi] * op->n_out,
                                (size_t)op->n_out);
                }
            }
        }
        xc_backend_destroy(be);
    }
    free(pool);
    free(alone);
    free(batch_in);
    free(batch_out);
}

typedef struct norm_ctx {
    const void *w, *b;
    xc_dtype t;
    int n;
    bool ln;
} norm_ctx;

static void run_norm(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    const norm_ctx *c = ctx;
    dev d = {.be = be};
    size_t wb = (size_t)c->n * xc_dtype_size(c->t);
    xc_norm_args a = {dev_put(&d, in, (size_t)m * c->n * 4),
                      NULL,
                      dev_put(&d, c->w, wb),
                      c->b ? dev_put(&d, c->b, wb) : NULL,
                      c->t,
                      m,
                      c->n,
                      0,
                      0,
                      1e-5f};
    a.y = dev_put(&d, NULL, (size_t)m * c->n * 4);
    assert_int_equal(c->ln ? xc_backend_layernorm(be, &a) : xc_backend_rmsnorm(be, &a), XC_OK);
    dev_get(&d, out, a.y, (size_t)m * c->n * 4);
    dev_free(&d);
}

static void test_backend_norms_batch_invariant(void **state) {
    (void)state;
    uint64_t s = 3;
    int n = 1037;
    for (int ti = 0; ti < 3; ti++) {
        void *w = rnd_weights(wdtypes[ti], (size_t)n, 0.5f, 1.5f, &s);
        void *b = rnd_weights(wdtypes[ti], (size_t)n, -0.5f, 0.5f, &s);
        for (int ln = 0; ln < 2; ln++) {
            norm_ctx c = {w, ln ? b : NULL, wdtypes[ti], n, ln};
            row_op op = {ln ? "layernorm" : "rmsnorm", run_norm, &c, n, n, false};
            check_row_invariance(&op);
        }
        free(w);
        free(b);
    }
}

typedef struct rope_ctx {
    int n_heads, head_dim;
} rope_ctx;

/* The position is taken from the row itself (its first element), so a row's result depends on
 * its own data only, as in a real batch. */
static void run_rope(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    const rope_ctx *c = ctx;
    int w = c->n_heads * c->head_dim;
    int32_t *pos = malloc((size_t)m * sizeof *pos);
    for (int r = 0; r < m; r++) {
        pos[r] = (int32_t)(fabsf(in[(size_t)r * w]) * 1000.0f);
    }
    dev d = {.be = be};
    xc_rope_args a = {dev_put(&d, in, (size_t)m * w * 4), pos, m, c->n_heads, c->head_dim, 0, 1e6f};
    assert_int_equal(xc_backend_rope(be, &a), XC_OK);
    dev_get(&d, out, a.x, (size_t)m * w * 4);
    dev_free(&d);
    free(pos);
}

static void test_backend_rope_batch_invariant(void **state) {
    (void)state;
    rope_ctx c = {8, 128};
    row_op op = {"rope", run_rope, &c, 8 * 128, 8 * 128, false};
    check_row_invariance(&op);
    rope_ctx c2 = {3, 18};
    row_op op2 = {"rope hd=18", run_rope, &c2, 3 * 18, 3 * 18, false};
    check_row_invariance(&op2);
}

typedef struct act_ctx {
    xc_act_kind kind;
    int n;
} act_ctx;

/* Rows hold x then x2 side by side (n_in = 2n), passed with strides. */
static void run_act(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    const act_ctx *c = ctx;
    dev d = {.be = be};
    float *din = dev_put(&d, in, (size_t)m * 2 * c->n * 4);
    xc_act_args a = {c->kind, din,  din + c->n, dev_put(&d, NULL, (size_t)m * c->n * 4),
                     m,       c->n, 2 * c->n,   2 * c->n,
                     0};
    assert_int_equal(xc_backend_act(be, &a), XC_OK);
    dev_get(&d, out, a.y, (size_t)m * c->n * 4);
    dev_free(&d);
}

static void test_backend_act_batch_invariant(void **state) {
    (void)state;
    static const char *names[4] = {"silu_mul", "gelu", "quick_gelu", "add"};
    for (int kind = 0; kind < 4; kind++) {
        act_ctx c = {(xc_act_kind)kind, 1037};
        row_op op = {names[kind], run_act, &c, 2 * 1037, 1037, false};
        check_row_invariance(&op);
    }
}

typedef struct softmax_ctx {
    int n;
    float temperature;
} softmax_ctx;

/* Output: the softmax row followed by the argmax as a float. */
static void run_softmax(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    const softmax_ctx *c = ctx;
    dev d = {.be = be};
    int32_t am[64];
    xc_softmax_args a = {
        dev_put(&d, in, (size_t)m * c->n * 4), m, c->n, 0, c->temperature, false, am};
    assert_int_equal(xc_backend_softmax(be, &a), XC_OK);
    float *tmp = malloc((size_t)m * c->n * 4);
    dev_get(&d, tmp, a.x, (size_t)m * c->n * 4);
    for (int r = 0; r < m; r++) {
        memcpy(out + (size_t)r * (c->n + 1), tmp + (size_t)r * c->n, (size_t)c->n * 4);
        out[(size_t)r * (c->n + 1) + c->n] = (float)am[r];
    }
    free(tmp);
    dev_free(&d);
}

static void test_backend_softmax_batch_invariant(void **state) {
    (void)state;
    softmax_ctx c = {2053, 0.8f};
    row_op op = {"softmax", run_softmax, &c, 2053, 2054, false};
    check_row_invariance(&op);
}

typedef struct embed_ctx {
    const void *table;
    xc_dtype t;
    int vocab, n;
} embed_ctx;

/* The row's first element picks the id. */
static void run_embed(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    const embed_ctx *c = ctx;
    int32_t ids[64];
    for (int r = 0; r < m; r++) {
        ids[r] = (int32_t)(fabsf(in[r]) * 1000.0f) % c->vocab;
    }
    dev d = {.be = be};
    xc_embed_args a = {dev_put(&d, c->table, (size_t)c->vocab * c->n * xc_dtype_size(c->t)),
                       c->t,
                       ids,
                       dev_put(&d, NULL, (size_t)m * c->n * 4),
                       m,
                       c->n,
                       c->vocab,
                       0};
    assert_int_equal(xc_backend_embed(be, &a), XC_OK);
    dev_get(&d, out, a.y, (size_t)m * c->n * 4);
    dev_free(&d);
}

static void test_backend_embed_batch_invariant(void **state) {
    (void)state;
    uint64_t s = 17;
    for (int ti = 0; ti < 3; ti++) {
        void *table = rnd_weights(wdtypes[ti], (size_t)97 * 1029, -1, 1, &s);
        embed_ctx c = {table, wdtypes[ti], 97, 1029};
        row_op op = {"embed", run_embed, &c, 1, 1029, false};
        check_row_invariance(&op);
        free(table);
    }
}

typedef struct plora_ctx {
    const void *a, *b;
    xc_dtype t;
    int n, k, rank;
} plora_ctx;

/* Rows hold x then y0; every row of the batch is inside one range. */
static void run_plora(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    const plora_ctx *c = ctx;
    int w = c->k + c->n;
    dev d = {.be = be};
    float *din = dev_put(&d, in, (size_t)m * w * 4);
    xc_row_range rg = {0, m};
    xc_plora_args a = {din,
                       dev_put(&d, c->a, (size_t)c->rank * c->k * xc_dtype_size(c->t)),
                       dev_put(&d, c->b, (size_t)c->n * c->rank * xc_dtype_size(c->t)),
                       c->t,
                       din + c->k,
                       m,
                       c->n,
                       c->k,
                       c->rank,
                       w,
                       w,
                       0.5f,
                       &rg,
                       1};
    assert_int_equal(xc_backend_plora(be, &a), XC_OK);
    float *tmp = malloc((size_t)m * w * 4);
    dev_get(&d, tmp, din, (size_t)m * w * 4);
    for (int r = 0; r < m; r++) {
        memcpy(out + (size_t)r * c->n, tmp + (size_t)r * w + c->k, (size_t)c->n * 4);
    }
    free(tmp);
    dev_free(&d);
}

static void test_backend_plora_batch_invariant(void **state) {
    (void)state;
    uint64_t s = 23;
    for (int ti = 0; ti < 3; ti++) {
        int n = 75, k = 131, rank = 16;
        void *wa = rnd_weights(wdtypes[ti], (size_t)rank * k, -0.2f, 0.2f, &s);
        void *wb = rnd_weights(wdtypes[ti], (size_t)n * rank, -0.2f, 0.2f, &s);
        plora_ctx c = {wa, wb, wdtypes[ti], n, k, rank};
        row_op op = {"plora", run_plora, &c, k + n, n, true};
        check_row_invariance(&op);
        free(wa);
        free(wb);
    }
}

typedef struct patch_ctx {
    int channels, size, patch;
} patch_ctx;

/* One image per "row". */
static void run_patchify(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    const patch_ctx *c = ctx;
    size_t per = (size_t)c->channels * c->size * c->size;
    dev d = {.be = be};
    xc_patchify_args a = {dev_put(&d, in, m * per * 4),
                          dev_put(&d, NULL, m * per * 4),
                          m,
                          c->channels,
                          c->size,
                          c->patch};
    assert_int_equal(xc_backend_patchify(be, &a), XC_OK);
    dev_get(&d, out, a.y, m * per * 4);
    dev_free(&d);
}

static void test_backend_patchify_batch_invariant(void **state) {
    (void)state;
    patch_ctx c = {3, 28, 7};
    row_op op = {"patchify", run_patchify, &c, 3 * 28 * 28, 3 * 28 * 28, false};
    check_row_invariance(&op);
}

/* Rows of k then v; the cache slot of each row is its batch index (reversed), so the row lands
 * in a different slot in every batch: compare the slot contents. */
static void run_kv_store(xc_backend *be, const void *ctx, const float *in, int m, float *out) {
    int w = *(const int *)ctx;
    int32_t slots[64];
    for (int r = 0; r < m; r++) {
        slots[r] = m - 1 - r;
    }
    dev d = {.be = be};
    float *din = dev_put(&d, in, (size_t)m * 2 * w * 4);
    xc_kv_store_args a = {din,
                          din + w,
                          dev_put(&d, NULL, (size_t)m * w * 4),
                          dev_put(&d, NULL, (size_t)m * w * 4),
                          slots,
                          m,
                          w,
                          2 * w,
                          2 * w,
                          m,
                          XC_DTYPE_F32};
    assert_int_equal(xc_backend_kv_store(be, &a), XC_OK);
    float *kc = malloc((size_t)m * w * 4), *vc = malloc((size_t)m * w * 4);
    dev_get(&d, kc, a.k_cache, (size_t)m * w * 4);
    dev_get(&d, vc, a.v_cache, (size_t)m * w * 4);
    for (int r = 0; r < m; r++) {
        memcpy(out + (size_t)r * 2 * w, kc + (size_t)slots[r] * w, (size_t)w * 4);
        memcpy(out + (size_t)r * 2 * w + w, vc + (size_t)slots[r] * w, (size_t)w * 4);
    }
    free(kc);
    free(vc);
    dev_free(&d);
}

static void test_backend_kv_store_batch_invariant(void **state) {
    (void)state;
    int w = 257;
    row_op op = {"kv_store", run_kv_store, &w, 2 * w, 2 * w, false};
    check_row_invariance(&op);
}

int main(void) {
    setenv("XC_CUDA_DEBUG", "1", 0); /* device-pointer checks and a sync after every op */
    /* only backends that cannot open are selected: skip (77) the whole run, unless required */
    bool any = false;
    int n_sel = 0;
    for (int ci = 0; ci < N_CONFS; ci++) {
        n_sel += be_selected(&confs[ci]);
    }
    if (n_sel == 0) {
        fprintf(stderr, "XC_TEST_BACKEND=%s names no backend of this build\n",
                getenv("XC_TEST_BACKEND"));
        return 1;
    }
    for (int ci = 0; ci < N_CONFS && !any; ci++) {
        if (be_selected(&confs[ci])) {
            xc_backend_conf conf = {.n_threads = 1};
            xc_backend *be = NULL;
            any = strcmp(confs[ci].name, "cpu") == 0 ||
                  xc_backend_create(confs[ci].name, &conf, &be) == XC_OK;
            xc_backend_destroy(be);
        }
    }
    if (!any && !cuda_required()) {
        printf("skipping: no backend selected by XC_TEST_BACKEND=%s can open (%s)\n",
               getenv("XC_TEST_BACKEND") ? getenv("XC_TEST_BACKEND") : "", xc_err_last());
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_norms_match_ref),
        cmocka_unit_test(test_backend_rope_matches_ref),
        cmocka_unit_test(test_backend_kv_store_matches_ref),
        cmocka_unit_test(test_backend_kv_store_bf16),
        cmocka_unit_test(test_backend_attention_matches_ref),
        cmocka_unit_test(test_backend_attention_bf16),
        cmocka_unit_test(test_backend_attention_batch_invariant),
        cmocka_unit_test(test_backend_act_matches_ref),
        cmocka_unit_test(test_backend_embed_matches_ref),
        cmocka_unit_test(test_backend_patchify_matches_ref),
        cmocka_unit_test(test_backend_softmax_matches_ref),
        cmocka_unit_test(test_backend_plora_matches_ref),
        cmocka_unit_test(test_backend_rejects_bad_args),
        cmocka_unit_test(test_backend_norms_batch_invariant),
        cmocka_unit_test(test_backend_rope_batch_invariant),
        cmocka_unit_test(test_backend_act_batch_invariant),
        cmocka_unit_test(test_backend_softmax_batch_invariant),
        cmocka_unit_test(test_backend_embed_batch_invariant),
        cmocka_unit_test(test_backend_plora_batch_invariant),
        cmocka_unit_test(test_backend_patchify_batch_invariant),
        cmocka_unit_test(test_backend_kv_store_batch_invariant),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
