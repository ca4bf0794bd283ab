/* The CUDA backend against the CPU backend and the naive references (label cuda; exits 77, which
 * ctest reports as skipped, when no CUDA device can be opened, or fails every case when
 * XC_REQUIRE_CUDA=1). XC_CUDA_DEBUG=1 is set unless the environment says otherwise, so every device
 * argument is checked to be device memory. test_backend (as backend_cuda) also runs every op on
 * "cuda" with the f32 tolerances and bit-exact batch invariance; this file adds what is particular
 * to the CUDA backend:
 *  - matmul and PLoRA, whose 16-bit paths round x to the weight type for the tensor cores. With u
 *    the unit roundoff of that type (f32 weights: 0, the GEMM is f32 without TF32; f16: 2^-11;
 *    bf16: 2^-8) and f32 accumulation over k terms, |got - ref| <= |alpha| sum_k |x w| (u +
 *    (k + 8) 2^-24) + 2^-23 (|y0| + |bias| + |ref|) (the epilogue's roundings);
 *  - the debug check itself: a host pointer where a device pointer belongs is XC_ERR_ARG;
 *  - attention through the split-over-keys decode path (long contexts, few queries) against the
 *    reference (atol 2e-6, rtol 1e-4) and bit-identical to the same query computed by the
 *    one-block-per-query path inside a large batch;
 *  - kv_store with a slot named twice (the later row wins) and argmax ties (first index);
 *  - the whole tiny conformance models (7b and vl, f32 weights) on "cuda": the same greedy tokens
 *    as the CPU backend and as the original PyTorch code (expected.safetensors), with one stage
 *    and with two in-process stages. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_backend.h"
#include "xc_ckpt.h"
#include "xc_cuda.h"
#include "xc_dtype.h"
#include "xc_engine.h"
#include "xc_mem.h"
#include "xc_model_config.h"
#include "xc_ref.h"
#include "xc_sampler.h"
#include "xc_test.h"
#include "xc_tiny.h"

static xc_backend *open_cuda(void) {
    xc_backend *be = NULL;
    xc_backend_conf c = {0};
    if (xc_backend_create("cuda", &c, &be) != XC_OK) {
        fail_msg("the cuda backend cannot open: %s", xc_err_last());
    }
    return be;
}

static uint64_t rng = 88172645463325252ull;

static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static void *rnd_weights(xc_dtype t, size_t n, float amp) {
    void *p = malloc((n ? n : 1) * xc_dtype_size(t));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        float v = amp * rnd();
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

static float *rnd_floats(size_t n, float amp) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        p[i] = amp * rnd();
    }
    return p;
}

static float wval(const void *w, xc_dtype t, size_t i) {
    if (t == XC_DTYPE_F32) {
        return ((const float *)w)[i];
    }
    uint16_t h = ((const uint16_t *)w)[i];
    return t == XC_DTYPE_F16 ? xc_f16_to_f32(h) : xc_bf16_to_f32(h);
}

static void *put(xc_backend *be, xc_buf *b, const void *host, size_t bytes) {
    assert_int_equal(xc_backend_buf_alloc(be, bytes ? bytes : 4, b), XC_OK);
    if (bytes) {
        assert_int_equal(xc_backend_copy_in(be, b->data, host, bytes), XC_OK);
    }
    return b->data;
}

static void get(xc_backend *be, void *host, const void *dev, size_t bytes) {
    assert_int_equal(xc_backend_sync(be), XC_OK);
    assert_int_equal(xc_backend_copy_out(be, host, dev, bytes), XC_OK);
}

/* Unit roundoff of the type x is rounded to before the GEMM (none for f32 weights). */
static double act_roundoff(xc_dtype t) {
    return t == XC_DTYPE_F32 ? 0.0 : t == XC_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
}

/* ---- matmul ---- */

static void matmul_case(xc_backend *be, xc_dtype t, int m, int n, int k, int ldx, int ldy,
                        bool bias, bool acc, float alpha) {
    int lx = ldx ? ldx : k, ly = ldy ? ldy : n;
    float *x = rnd_floats((size_t)m * lx, 1.0f);
    void *w = rnd_weights(t, (size_t)n * k, 0.5f);
    void *b = bias ? rnd_weights(t, (size_t)n, 1.0f) : NULL;
    float *y0 = rnd_floats((size_t)m * ly, 1.0f);
    xc_buf bx, bw, bb = {0}, by;
    xc_matmul_args a = {.x = put(be, &bx, x, (size_t)m * lx * 4),
                        .w = put(be, &bw, w, (size_t)n * k * xc_dtype_size(t)),
                        .w_dtype = t,
                        .bias = bias ? put(be, &bb, b, (size_t)n * xc_dtype_size(t)) : NULL,
                        .bias_dtype = t,
                        .y = put(be, &by, y0, (size_t)m * ly * 4),
                        .m = m,
                        .n = n,
                        .k = k,
                        .ldx = ldx,
                        .ldy = ldy,
                        .alpha = alpha,
                        .accumulate = acc};
    assert_int_equal(xc_backend_matmul(be, &a), XC_OK);
    float *got = malloc((size_t)m * ly * 4);
    get(be, got, a.y, (size_t)m * ly * 4);
    double al = alpha != 0.0f ? alpha : 1.0;
    for (int r = 0; r < m; r++) {
        for (int j = 0; j < ly; j++) {
            size_t o = (size_t)r * ly + j;
            if (j >= n) {
                if (memcmp(&got[o], &y0[o], 4) != 0) {
                    fail_msg("matmul %s: wrote into the padding of row %d", xc_dtype_name(t), r);
                }
                continue;
            }
            double s = 0, mag = 0;
            for (int i = 0; i < k; i++) {
                double p = (double)x[(size_t)r * lx + i] * wval(w, t, (size_t)j * k + i);
                s += p;
                mag += fabs(p);
            }
            double bv = bias ? wval(b, t, (size_t)j) : 0.0, yv = acc ? y0[o] : 0.0;
            double want = al * s + bv + yv;
            double lim = fabs(al) * mag * (act_roundoff(t) + (k + 8) * 0x1p-24) +
                         0x1p-23 * (fabs(yv) + fabs(bv) + fabs(want)) + 1e-30;
            if (!(fabs(got[o] - want) <= lim)) {
                fail_msg("matmul %s m=%d n=%d k=%d: y[%d][%d] = %.7g, want %.7g (> %.3g)",
                         xc_dtype_name(t), m, n, k, r, j, got[o], want, lim);
            }
        }
    }
    xc_backend_buf_free(be, &bx);
    xc_backend_buf_free(be, &bw);
    xc_backend_buf_free(be, &bb);
    xc_backend_buf_free(be, &by);
    free(x);
    free(w);
    free(b);
    free(y0);
    free(got);
}

static void test_cuda_matmul_matches_ref(void **state) {
    (void)state;
    xc_backend *be = open_cuda();
    static const xc_dtype ts[3] = {XC_DTYPE_F32, XC_DTYPE_F16, XC_DTYPE_BF16};
    for (int ti = 0; ti < 3; ti++) {
        matmul_case(be, ts[ti], 1, 1, 1, 0, 0, false, false, 0);
        matmul_case(be, ts[ti], 1, 300, 257, 0, 0, true, false, 0);
        matmul_case(be, ts[ti], 3, 65, 130, 140, 70, false, true, 0.5f);
        matmul_case(be, ts[ti], 64, 128, 512, 0, 0, true, true, 0);
        matmul_case(be, ts[ti], 130, 97, 33, 40, 0, true, false, 2.0f);
    }
    /* argument errors come back as statuses, not device faults */
    xc_matmul_args bad = {.m = 0, .n = 1, .k = 1};
    assert_int_equal(xc_backend_matmul(be, &bad), XC_ERR_ARG);
    xc_backend_destroy(be);
}

/* ---- PLoRA ---- */

static void test_cuda_plora_matches_ref(void **state) {
    (void)state;
    xc_backend *be = open_cuda();
    static const xc_dtype ts[3] = {XC_DTYPE_F32, XC_DTYPE_F16, XC_DTYPE_BF16};
    int m = 40, n = 96, k = 80, rank = 8;
    for (int ti = 0; ti < 3; ti++) {
        xc_dtype t = ts[ti];
        float *x = rnd_floats((size_t)m * k, 1.0f), *y0 = rnd_floats((size_t)m * n, 1.0f);
        void *wa = rnd_weights(t, (size_t)rank * k, 0.5f),
             *wb = rnd_weights(t, (size_t)n * rank, 0.5f);
        xc_row_range ranges[2] = {{3, 10}, {20, 37}};
        float *want = malloc((size_t)m * n * 4);
        memcpy(want, y0, (size_t)m * n * 4);
        xc_plora_args ra = {.x = x,
                            .a = wa,
                            .b = wb,
                            .ab_dtype = t,
                            .y = want,
                            .m = m,
                            .n = n,
                            .k = k,
                            .rank = rank,
                            .scale = 0.75f,
                            .ranges = ranges,
                            .n_ranges = 2};
        assert_int_equal(xc_ref_plora(&ra), XC_OK);
        xc_buf bx, ba, bb, by;
        xc_plora_args a = ra;
        a.x = put(be, &bx, x, (size_t)m * k * 4);
        a.a = put(be, &ba, wa, (size_t)rank * k * xc_dtype_size(t));
        a.b = put(be, &bb, wb, (size_t)n * rank * xc_dtype_size(t));
        a.y = put(be, &by, y0, (size_t)m * n * 4);
        assert_int_equal(xc_backend_plora(be, &a), XC_OK);
        float *got = malloc((size_t)m * n * 4);
        get(be, got, a.y, (size_t)m * n * 4);
        for (int r = 0; r < m; r++) {
            bool in = (r >= 3 && r < 10) || (r >= 20 && r < 37);
            for (int j = 0; j < n; j++) {
                size_t o = (size_t)r * n + j;
                if (!in) { /* rows outside the ranges are untouched */
                    if (memcmp(&got[o], &y0[o], 4) != 0) {
                        fail_msg("plora %s: row %d outside the ranges changed", xc_dtype_name(t),
                                 r);
                    }
                    continue;
                }
                /* two GEMMs, x and t each rounded to the weight type (see test_backend.c):
                 * |scale| M (2u + u^2 + (k + rank + 16) 2^-24) + 2^-23 |ref| */
                double mag = 0, u = act_roundoff(t);
                for (int q = 0; q < rank; q++) {
                    double tq = 0;
                    for (int c = 0; c < k; c++) {
                        tq += fabs((double)wval(wa, t, (size_t)q * k + c) * x[(size_t)r * k + c]);
                    }
                    mag += fabs(wval(wb, t, (size_t)j * rank + q)) * tq;
                }
                double lim = 0.75 * mag * (2 * u + u * u + (k + rank + 16) * 0x1p-24) +
                             0x1p-23 * fabs(want[o]) + 1e-30;
                if (!(fabs(got[o] - want[o]) <= lim)) {
                    fail_msg("plora %s: y[%d][%d] = %.7g, want %.7g (> %.3g)", xc_dtype_name(t), r,
                             j, got[o], want[o], lim);
                }
            }
        }
        xc_backend_buf_free(be, &bx);
        xc_backend_buf_free(be, &ba);
        xc_backend_buf_free(be, &bb);
        xc_backend_buf_free(be, &by);
        free(x);
        free(y0);
        free(wa);
        free(wb);
        free(want);
        free(got);
    }
    xc_backend_destroy(be);
}

/* ---- attention: split decode vs one block per query ---- */

/* Runs attention on the device for host q/k/v and returns host out (rows, qw). */
static float *attn_dev(xc_backend *be, const xc_attention_args *h, size_t q_rows, size_t kv_rows) {
    size_t qw = (size_t)h->n_heads * h->head_dim, kw = (size_t)h->n_kv_heads * h->head_dim;
    xc_buf bq, bo, bk, bv;
    xc_attention_args a = *h;
    a.q = put(be, &bq, h->q, q_rows * qw * 4);
    float *zero = calloc(q_rows * qw, 4);
    a.out = put(be, &bo, zero, q_rows * qw * 4);
    a.k = put(be, &bk, h->k, kv_rows * kw * 4);
    a.v = put(be, &bv, h->v, kv_rows * kw * 4);
    assert_int_equal(xc_backend_attention(be, &a), XC_OK);
    float *out = malloc(q_rows * qw * 4);
    get(be, out, a.out, q_rows * qw * 4);
    xc_backend_buf_free(be, &bq);
    xc_backend_buf_free(be, &bo);
    xc_backend_buf_free(be, &bk);
    xc_backend_buf_free(be, &bv);
    free(zero);
    return out;
}

static void test_cuda_attention_split_matches(void **state) {
    (void)state;
    xc_backend *be = open_cuda();
    const int H = 8, KV = 2, hd = 128, bs = 16, kv_len = 1500, big = 300;
    size_t qw = (size_t)H * hd, kw = (size_t)KV * hd;
    int nb1 = (kv_len + bs - 1) / bs, nb2 = (big + bs - 1) / bs;
    size_t kv_rows = (size_t)(nb1 + nb2 + 1) * bs;
    float *k = rnd_floats(kv_rows * kw, 1.0f), *v = rnd_floats(kv_rows * kw, 1.0f);
    float *q = rnd_floats((size_t)(1 + big) * qw, 1.5f);
    int32_t t1[128], t2[32];
    for (int b = 0; b < nb1; b++) {
        t1[b] = nb1 - b; /* reversed order, block 0 unused */
    }
    for (int b = 0; b < nb2; b++) {
        t2[b] = nb1 + 1 + b;
    }
    /* alone: one decode query over 1500 keys -> the split path */
    xc_attn_seq s1 = {.q_start = 0, .n_q = 1, .kv_len = kv_len, .block_table = t1};
    xc_attention_args a = {.q = q,
                           .k = k,
                           .v = v,
                           .n_heads = H,
                           .n_kv_heads = KV,
                           .head_dim = hd,
                           .block_size = bs,
                           .causal = true,
                           .seqs = &s1,
                           .n_seqs = 1};
    float *alone = attn_dev(be, &a, 1, kv_rows);
    float *ref = calloc(qw, 4);
    xc_attention_args ra = a;
    ra.out = ref;
    assert_int_equal(xc_ref_attention(&ra), XC_OK);
    for (size_t i = 0; i < qw; i++) {
        if (!(fabs(alone[i] - ref[i]) <= 2e-6 + 1e-4 * fabs(ref[i]))) {
            fail_msg("split attention: out[%zu] = %.7g, reference %.7g", i, alone[i], ref[i]);
        }
    }
    /* batched with a 300-row prefill: enough blocks for the one-block-per-query path */
    xc_attn_seq s2[2] = {s1, {.q_start = 1, .n_q = big, .kv_len = big, .block_table = t2}};
    a.seqs = s2;
    a.n_seqs = 2;
    float *batched = attn_dev(be, &a, (size_t)1 + big, kv_rows);
    if (memcmp(alone, batched, qw * 4) != 0) {
        for (size_t i = 0; i < qw; i++) {
            if (memcmp(&alone[i], &batched[i], 4) != 0) {
                fail_msg("split vs batched attention differ at %zu: %.9g vs %.9g", i, alone[i],
                         batched[i]);
            }
        }
    }
    free(k);
    free(v);
    free(q);
    free(alone);
    free(batched);
    free(ref);
    xc_backend_destroy(be);
}

/* ---- kv_store duplicates, argmax ties ---- */

static void test_cuda_kv_store_dup_and_argmax_ties(void **state) {
    (void)state;
    xc_backend *be = open_cuda();
    int m = 6, w = 5, n_slots = 4;
    float *k = rnd_floats((size_t)m * w, 1.0f), *v = rnd_floats((size_t)m * w, 1.0f);
    float *kc = rnd_floats((size_t)n_slots * w, 1.0f), *vc = rnd_floats((size_t)n_slots * w, 1.0f);
    int32_t slots[6] = {2, 1, 2, 3, 1, 2};
    float *kr = malloc((size_t)n_slots * w * 4), *vr = malloc((size_t)n_slots * w * 4);
    memcpy(kr, kc, (size_t)n_slots * w * 4);
    memcpy(vr, vc, (size_t)n_slots * w * 4);
    xc_kv_store_args ra = {k, v, kr, vr, slots, m, w, 0, 0, n_slots, XC_DTYPE_F32};
    assert_int_equal(xc_ref_kv_store(&ra), XC_OK);
    xc_buf b[4];
    xc_kv_store_args a = ra;
    a.k = put(be, &b[0], k, (size_t)m * w * 4);
    a.v = put(be, &b[1], v, (size_t)m * w * 4);
    a.k_cache = put(be, &b[2], kc, (size_t)n_slots * w * 4);
    a.v_cache = put(be, &b[3], vc, (size_t)n_slots * w * 4);
    assert_int_equal(xc_backend_kv_store(be, &a), XC_OK);
    float *got = malloc((size_t)n_slots * w * 4);
    get(be, got, a.k_cache, (size_t)n_slots * w * 4);
    assert_memory_equal(got, kr, (size_t)n_slots * w * 4);
    get(be, got, a.v_cache, (size_t)n_slots * w * 4);
    assert_memory_equal(got, vr, (size_t)n_slots * w * 4);
    for (int i = 0; i < 4; i++) {
        xc_backend_buf_free(be, &b[i]);
    }
    /* argmax: ties go to the first index, whatever thread saw them */
    int n = 5000;
    float *x = rnd_floats((size_t)2 * n, 1.0f);
    x[4000] = 3.0f;
    x[4001] = 3.0f;
    x[777] = 3.0f;
    x[n + 10] = 2.0f;
    x[n + 4999] = 2.0f;
    xc_buf bx;
    int32_t am[2] = {-1, -1};
    xc_softmax_args sa = {.x = put(be, &bx, x, (size_t)2 * n * 4),
                          .m = 2,
                          .n = n,
                          .skip_softmax = true,
                          .argmax = am};
    assert_int_equal(xc_backend_softmax(be, &sa), XC_OK);
    assert_int_equal(am[0], 777);
    assert_int_equal(am[1], 10);
    xc_backend_buf_free(be, &bx);
    free(x);
    free(k);
    free(v);
    free(kc);
    free(vc);
    free(kr);
    free(vr);
    free(got);
    xc_backend_destroy(be);
}

/* ---- the debug check: host memory where device memory belongs ---- */

static void test_cuda_debug_rejects_host_pointers(void **state) {
    (void)state;
    xc_backend *be = open_cuda();
    float host[64] = {0};
    xc_buf bx, by;
    float *dx = put(be, &bx, host, sizeof host), *dy = put(be, &by, host, sizeof host);
    xc_act_args a = {.kind = XC_ACT_QUICK_GELU, .x = dx, .y = dy, .m = 4, .n = 16};
    assert_int_equal(xc_backend_act(be, &a), XC_OK);
    a.x = host; /* host stack memory as the input */
    assert_int_equal(xc_backend_act(be, &a), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "not device memory"));
    a.x = dx;
    a.y = host; /* and as the output */
    assert_int_equal(xc_backend_act(be, &a), XC_ERR_ARG);
    xc_matmul_args m = {
        .x = dx, .w = host, .w_dtype = XC_DTYPE_F32, .y = dy, .m = 1, .n = 2, .k = 4};
    assert_int_equal(xc_backend_matmul(be, &m), XC_ERR_ARG);
    /* the backend still works afterwards: nothing was queued */
    m.w = dx;
    assert_int_equal(xc_backend_matmul(be, &m), XC_OK);
    assert_int_equal(xc_backend_sync(be), XC_OK);
    xc_backend_buf_free(be, &bx);
    xc_backend_buf_free(be, &by);
    xc_backend_destroy(be);
}

/* ---- whole model: CPU vs CUDA logits and greedy tokens ---- */

#define REF XC_FIXTURE_DIR "/reference"

static int greedy(const char *dir, const char *backend, int n_stages, const xc_prompt *p, int n_new,
                  int32_t *out) {
    xc_engine_conf c = {.model_dir = dir, .backend = backend, .n_threads = 2, .n_stages = n_stages};
    xc_engine *e = NULL;
    if (xc_engine_create(&c, &e) != XC_OK) {
        fail_msg("engine %s on %s: %s", backend, dir, xc_err_last());
    }
    const int32_t stops[2] = {2, 3};
    xc_gen_params g = {
        .sampling = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1},
        .max_new_tokens = n_new,
        .stop_ids = stops,
        .n_stop_ids = 2};
    int n_out = 0;
    bool stopped = false;
    assert_int_equal(xc_engine_generate(e, p, &g, NULL, NULL, out, &n_out, &stopped), XC_OK);
    xc_engine_destroy(e);
    return n_out;
}

static void model_tokens(const char *variant) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, REF "/%s", variant);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    xc_ckpt *exp = NULL;
    assert_int_equal(xc_ckpt_open(path, &exp), XC_OK);
    xc_tensor_view ids, want;
    assert_int_equal(xc_ckpt_get(exp, "text_input_ids", &ids), XC_OK);
    assert_int_equal(xc_ckpt_get(exp, "text_greedy_tokens", &want), XC_OK);
    int n = (int)(ids.nbytes / 8), n_want = (int)(want.nbytes / 8);
    int32_t *pid = xc_malloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        pid[i] = (int32_t)((const int64_t *)ids.data)[i];
    }
    xc_prompt p = {.ids = pid, .n = n};
    int32_t cpu[64], cuda[64], cuda2[64];
    assert_true(n_want <= 64);
    int nc = greedy(dir, "cpu", 1, &p, n_want, cpu);
    int ng = greedy(dir, "cuda", 1, &p, n_want, cuda);
    int ng2 = greedy(dir, "cuda", 2, &p, n_want, cuda2);
    assert_int_equal(nc, n_want);
    assert_int_equal(ng, n_want);
    assert_int_equal(ng2, n_want);
    for (int i = 0; i < n_want; i++) {
        int w = (int)((const int64_t *)want.data)[i];
        if (cuda[i] != cpu[i] || cuda[i] != w || cuda2[i] != cuda[i]) {
            fail_msg("%s greedy token %d: cuda %d, cuda 2 stages %d, cpu %d, original %d", variant,
                     i, cuda[i], cuda2[i], cpu[i], w);
        }
    }
    xc_free(pid);
    xc_ckpt_close(exp);
}

static void test_cuda_model_tokens_7b(void **state) {
    (void)state;
    model_tokens("7b");
}

static void test_cuda_model_tokens_vl(void **state) {
    (void)state;
    model_tokens("vl");
}

/* Top-1 index of a row and its margin over the runner-up. */
static int top2(const float *x, int n, double *margin) {
    int b = 0;
    for (int i = 1; i < n; i++) {
        b = x[i] > x[b] ? i : b;
    }
    double second = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (i != b && x[i] > second) {
            second = x[i];
        }
    }
    *margin = (double)x[b] - second;
    return b;
}

/* The whole model on both backends: the CPU greedy continuation of the prompt (n_new tokens) is
 * fed back as one prefill on each backend, and every row's logits are compared.
 * Bound on |cuda - cpu| per row: (4 L + 2) u max_i |logit_i|, where u is the unit roundoff of what
 * the CUDA GEMMs round activations to (bf16: 2^-8, f16: 2^-11; f32 weights: the f32 summation
 * bound k_max 2^-24) and 4 L + 2 counts the activation roundings on the path to a logit (four per
 * layer: before wqkv, wo, w1/w3, w2; two for the head and the vision projector). The greedy token
 * must be the same wherever the CPU's top-1/top-2 margin exceeds twice the bound (neither logit
 * can move by more than the bound); every row's margin is printed. */
static void logits_case(const char *label, const char *dir, const int32_t *prompt, int n_prompt,
                        int n_new, double u) {
    int32_t *ids = xc_malloc((size_t)(n_prompt + n_new) * sizeof *ids);
    assert_non_null(ids);
    memcpy(ids, prompt, (size_t)n_prompt * sizeof *ids);
    int32_t gen[64];
    assert_true(n_new <= 64);
    xc_prompt p = {.ids = prompt, .n = n_prompt};
    int ng = greedy(dir, "cpu", 1, &p, n_new, gen);
    memcpy(ids + n_prompt, gen, (size_t)ng * sizeof *ids);
    int n = n_prompt + ng - 1 > n_prompt ? n_prompt + ng - 1 : n_prompt;
    xc_prompt full = {.ids = ids, .n = n};
    float *lg[2] = {NULL, NULL};
    int vocab = 0, layers = 0;
    for (int b = 0; b < 2; b++) {
        xc_engine_conf c = {.model_dir = dir, .backend = b ? "cuda" : "cpu", .n_threads = 2};
        xc_engine *e = NULL;
        if (xc_engine_create(&c, &e) != XC_OK) {
            fail_msg("%s: engine %s: %s", label, c.backend, xc_err_last());
        }
        vocab = xc_engine_vocab(e);
        layers = xc_engine_n_layers(e);
        lg[b] = xc_malloc((size_t)n * (size_t)vocab * sizeof(float));
        assert_non_null(lg[b]);
        if (xc_engine_prefill_logits(e, &full, lg[b], NULL, NULL) != XC_OK) {
            fail_msg("%s: prefill on %s: %s", label, c.backend, xc_err_last());
        }
        xc_engine_destroy(e);
    }
    int checked = 0, bad_row = -1;
    double worst = 0;
    for (int r = 0; r < n; r++) {
        const float *a = lg[0] + (size_t)r * vocab, *g = lg[1] + (size_t)r * vocab;
        double amax = 0, diff = 0;
        for (int i = 0; i < vocab; i++) {
            amax = fabs(a[i]) > amax ? fabs(a[i]) : amax;
            diff = fabs((double)g[i] - a[i]) > diff ? fabs((double)g[i] - a[i]) : diff;
        }
        double bound = (4.0 * layers + 2.0) * u * amax, mc = 0, mg = 0;
        int tc = top2(a, vocab, &mc), tg = top2(g, vocab, &mg);
        bool gen_row = r >= n_prompt - 1;
        if (gen_row) {
            print_message("%s row %d: cpu top-1 %d margin %.4g, cuda top-1 %d, max |cuda - cpu| "
                          "%.3g, bound %.3g%s\n",
                          label, r, tc, mc, tg, diff, bound,
                          mc > 2 * bound ? "" : " (margin within the bound: token not compared)");
        }
        worst = diff / bound > worst ? diff / bound : worst;
        if (diff > bound && bad_row < 0) {
            bad_row = r;
        }
        if (gen_row && mc > 2 * bound) {
            checked++;
            if (tc != tg) {
                fail_msg("%s row %d: cuda top-1 %d, cpu %d, with a margin of %.4g > 2 x %.3g",
                         label, r, tg, tc, mc, bound);
            }
        }
    }
    print_message("%s: %d layers, u = %.3g: largest |cuda - cpu| is %.3f of the bound; %d of %d "
                  "greedy tokens compared\n",
                  label, layers, u, worst, checked, n - n_prompt + 1);
    if (bad_row >= 0) {
        fail_msg("%s: row %d: logits differ by more than the bound (worst %.3f x bound)", label,
                 bad_row, worst);
    }
    xc_free(lg[0]);
    xc_free(lg[1]);
    xc_free(ids);
}

/* Prompt ids of a conformance fixture. */
static int fixture_prompt(const char *variant, int32_t *out, int cap, int *n_want) {
    char path[600];
    snprintf(path, sizeof path, REF "/%s/expected.safetensors", variant);
    xc_ckpt *exp = NULL;
    assert_int_equal(xc_ckpt_open(path, &exp), XC_OK);
    xc_tensor_view ids, want;
    assert_int_equal(xc_ckpt_get(exp, "text_input_ids", &ids), XC_OK);
    assert_int_equal(xc_ckpt_get(exp, "text_greedy_tokens", &want), XC_OK);
    int n = (int)(ids.nbytes / 8);
    assert_true(n <= cap);
    for (int i = 0; i < n; i++) {
        out[i] = (int32_t)((const int64_t *)ids.data)[i];
    }
    *n_want = (int)(want.nbytes / 8);
    xc_ckpt_close(exp);
    return n;
}

/* The fixtures as they are (f32 weights: f32 GEMMs on CUDA, bound from the f32 summation over the
 * widest inner dimension, the 128-wide FFN), then the same shapes written in bf16 (the real
 * model's type: activations rounded to bf16 for the tensor cores). */
static void model_logits(const char *variant) {
    int32_t prompt[512];
    int n_want = 0;
    int n = fixture_prompt(variant, prompt, 512, &n_want);
    char dir[512], label[64];
    snprintf(dir, sizeof dir, REF "/%s", variant);
    snprintf(label, sizeof label, "%s f32", variant);
    logits_case(label, dir, prompt, n, n_want, 256 * 0x1p-24);

    xc_tiny_conf tc;
    xc_tiny_conf_init(&tc, variant);
    xc_model_config cfg;
    assert_int_equal(xc_model_config_load(dir, &cfg), XC_OK);
    tc.hidden = cfg.hidden_size;
    tc.layers = cfg.num_hidden_layers;
    tc.heads = cfg.num_attention_heads;
    tc.kv_heads = cfg.num_key_value_heads;
    tc.intermediate = cfg.intermediate_size;
    tc.vocab = cfg.vocab_size;
    tc.dtype = XC_DTYPE_BF16;
    tc.force = true;
    char tmp[] = "/tmp/xc-test-cuda-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    if (xc_tiny_write(tmp, &tc) != XC_OK) {
        fail_msg("xc_tiny_write %s: %s", tmp, xc_err_last());
    }
    snprintf(label, sizeof label, "%s bf16", variant);
    logits_case(label, tmp, prompt, n, n_want, 0x1p-8);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

static void test_cuda_model_logits_7b(void **state) {
    (void)state;
    model_logits("7b");
}

static void test_cuda_model_logits_vl(void **state) {
    (void)state;
    model_logits("vl");
}

/* ---- sampling a micro-batch's rows on the device (issue 13.7) ---- */

/* xc_cuda_sample against the CPU sampler (xc_sampler_sample, xc_sampler_logprobs): 36 rows of a
 * 5003-token vocabulary (random logits, so no ties) with greedy, top-k, top-p, both, no filter,
 * temperatures and repetition penalties over observed prompt ids, each with its own seed, choice
 * and position, for three draws in a row (xc_sampler_accept advances the device twin). The tokens
 * must be equal (a draw within float rounding of a boundary could differ: with random logits
 * that has probability ~1e-6 over the whole test), logprobs within 2e-5, alternatives equal. */
static void test_cuda_sample_matches_cpu_sampler(void **state) {
    (void)state;
    xc_backend *be = open_cuda();

    enum { M = 36, N = 5003, ROUNDS = 3 };

    xc_sampler *cpu[M], *dev[M];
    int want_lp[M];
    for (int r = 0; r < M; r++) {
        xc_sampling sp = xc_sampling_defaults();
        sp.seed = 1000u + (uint64_t)r * 7919u;
        sp.choice = (uint32_t)(r % 3);
        sp.greedy = r % 6 == 0;
        sp.temperature = (float[]){1.0f, 0.7f, 1.3f, 1.0f, 0.9f, 2.0f}[r % 6];
        sp.top_k = (int[]){0, 50, 0, 7, 0, 1}[r % 6];
        sp.top_p = (float[]){1.0f, 0.8f, 0.9f, 1.0f, 1.0f, 0.5f}[r % 6];
        sp.repetition_penalty = r % 4 == 0 ? 1.0f : 1.005f + 0.1f * (float)(r % 3);
        want_lp[r] = r % 5 == 0 ? 5 : r % 7 == 0 ? 0 : -1;
        assert_int_equal(xc_sampler_create(N, &sp, &cpu[r]), XC_OK);
        assert_int_equal(xc_sampler_create(N, &sp, &dev[r]), XC_OK);
        int32_t prompt[12];
        for (int k = 0; k < 12; k++) {
            prompt[k] = (int32_t)((r * 131 + k * 977) % N);
        }
        assert_int_equal(xc_sampler_observe(cpu[r], prompt, 12), XC_OK);
        assert_int_equal(xc_sampler_observe(dev[r], prompt, 12), XC_OK);
        xc_sampler_set_position(cpu[r], 17u + (uint64_t)r);
        xc_sampler_set_position(dev[r], 17u + (uint64_t)r);
    }
    for (int round = 0; round < ROUNDS; round++) {
        float *logits = rnd_floats((size_t)M * N, 6.0f);
        float *row = malloc((size_t)N * sizeof *row);
        assert_non_null(row);
        int32_t want_tok[M];
        float want_lpv[M], want_top_lps[M][20];
        int32_t want_top[M][20];
        for (int r = 0; r < M; r++) {
            memcpy(row, logits + (size_t)r * N, (size_t)N * sizeof *row);
            assert_int_equal(xc_sampler_sample(cpu[r], row, &want_tok[r]), XC_OK);
            if (want_lp[r] >= 0) {
                assert_int_equal(xc_sampler_logprobs(row, N, want_tok[r], want_lp[r], &want_lpv[r],
                                                     want_top[r], want_top_lps[r]),
                                 XC_OK);
            }
        }
        xc_cuda_sample_row rows[M];
        for (int r = 0; r < M; r++) {
            xc_sampler_plan pl;
            assert_true(xc_sampler_plan_next(dev[r], &pl));
            rows[r] = (xc_cuda_sample_row){.row = r,
                                           .greedy = pl.greedy,
                                           .temperature = pl.temperature,
                                           .top_k = pl.top_k,
                                           .top_p = pl.top_p,
                                           .repetition_penalty = pl.repetition_penalty,
                                           .seen = pl.seen,
                                           .n_seen = pl.n_seen,
                                           .u = pl.u,
                                           .top_logprobs = want_lp[r]};
        }
        xc_buf b;
        float *d = put(be, &b, logits, (size_t)M * N * sizeof(float));
        int32_t tok[M], top_ids[M * 20];
        float lp[M], top_lps[M * 20];
        assert_int_equal(xc_cuda_sample(be, d, N, N, rows, M, tok, lp, top_ids, top_lps), XC_OK);
        xc_backend_buf_free(be, &b);
        for (int r = 0; r < M; r++) {
            if (tok[r] != want_tok[r]) {
                fail_msg("round %d row %d (greedy %d, T %g, top-k %d, top-p %g, penalty %g): "
                         "device token %d, CPU sampler %d",
                         round, r, rows[r].greedy, rows[r].temperature, rows[r].top_k,
                         rows[r].top_p, rows[r].repetition_penalty, tok[r], want_tok[r]);
            }
            assert_int_equal(xc_sampler_accept(dev[r], tok[r]), XC_OK);
            if (want_lp[r] >= 0) {
                assert_true(fabsf(lp[r] - want_lpv[r]) <= 2e-5f);
                for (int k = 0; k < want_lp[r]; k++) {
                    assert_int_equal(top_ids[r * 20 + k], want_top[r][k]);
                    assert_true(fabsf(top_lps[r * 20 + k] - want_top_lps[r][k]) <= 2e-5f);
                }
            }
        }
        free(row);
        free(logits);
    }
    /* a row that asks for processors the device does not run is left to the host */
    xc_sampling sp = xc_sampling_defaults();
    sp.min_p = 0.1f;
    xc_sampler *h = NULL;
    assert_int_equal(xc_sampler_create(N, &sp, &h), XC_OK);
    xc_sampler_plan pl;
    assert_false(xc_sampler_plan_next(h, &pl));
    xc_sampler_destroy(h);
    /* bad rows are refused before anything runs */
    xc_cuda_sample_row bad = {.row = 0, .temperature = 0.0f, .top_p = 1.0f, .top_logprobs = -1};
    int32_t t = 0;
    xc_buf b;
    float *one = rnd_floats(N, 1.0f);
    float *d = put(be, &b, one, (size_t)N * sizeof(float));
    assert_int_equal(xc_cuda_sample(be, d, N, N, &bad, 1, &t, NULL, NULL, NULL), XC_ERR_ARG);
    xc_backend_buf_free(be, &b);
    free(one);
    for (int r = 0; r < M; r++) {
        xc_sampler_destroy(cpu[r]);
        xc_sampler_destroy(dev[r]);
    }
    xc_backend_destroy(be);
}

int main(void) {
    setenv("XC_CUDA_DEBUG", "1", 0); /* device-pointer checks and a sync after every op */
    xc_backend *be = NULL;
    xc_backend_conf c = {0};
    if (xc_backend_create("cuda", &c, &be) != XC_OK) {
        const char *req = getenv("XC_REQUIRE_CUDA");
        if (!req || strcmp(req, "1") != 0) {
            printf("skipping the cuda tests: %s\n", xc_err_last());
            return 77; /* SKIP_RETURN_CODE */
        }
        /* required: run every case, each failing with the reason */
        printf("XC_REQUIRE_CUDA=1: the cuda backend cannot open (%s); every case fails\n",
               xc_err_last());
    }
    xc_backend_destroy(be);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_matmul_matches_ref),
        cmocka_unit_test(test_cuda_plora_matches_ref),
        cmocka_unit_test(test_cuda_attention_split_matches),
        cmocka_unit_test(test_cuda_kv_store_dup_and_argmax_ties),
        cmocka_unit_test(test_cuda_sample_matches_cpu_sampler),
        cmocka_unit_test(test_cuda_model_tokens_7b),
        cmocka_unit_test(test_cuda_model_tokens_vl),
        cmocka_unit_test(test_cuda_debug_rejects_host_pointers),
        cmocka_unit_test(test_cuda_model_logits_7b),
        cmocka_unit_test(test_cuda_model_logits_vl),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
