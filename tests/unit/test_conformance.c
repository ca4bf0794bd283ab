/* Conformance against the original XComposer2 code run under PyTorch (fixtures made by
 * tools/reference/make_fixtures.py): vision features, bicubic position interpolation, per-layer
 * hidden states and logits of a prefill mixing text and two images, greedy tokens, the same for a
 * text-only prompt, both checkpoint formats, and stage cuts that must not change a single bit.
 * Tolerances (f32 C vs f32 PyTorch; the script measured PyTorch's own f32-vs-f64 error at
 * <= 4.2e-5 for logits): vision 1e-4, interpolation 1e-5, hidden states 2e-4, logits 1e-3.
 * These run with an f32 KV cache. The KV conformance tests run the default bf16 cache against the
 * original code with its keys (after RoPE) and values rounded to bf16
 * (expected_kv_bf16.safetensors, make_fixtures.py --kv-bf16) at the same tolerances, and check
 * that the greedy tokens are those of the f32 fixtures too (bf16 KV moves PyTorch's logits by up
 * to 0.034 from f32 KV; the smallest top-1/top-2 margin along the greedy paths is 0.023). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_chat.h"
#include "xc_ckpt.h"
#include "xc_engine.h"
#include "xc_mmap.h"
#include "xc_model_config.h"
#include "xc_test.h"
#include "xc_tokenizer.h"
#include "xc_vision.h"

#define REF XC_FIXTURE_DIR "/reference"

typedef struct fixture {
    char dir[512];
    xc_ckpt *exp; /* expected.safetensors */
    xc_ckpt *kvb; /* expected_kv_bf16.safetensors */
    cJSON *json;  /* expected.json */
    int32_t *ids; /* image prompt ids, image rows = 0 */
    int n;
    xc_row_range img[8];
    int n_img;
    int32_t *text_ids;
    int n_text;
} fixture;

static const float *tensor_in(xc_ckpt *ck, const char *name, int64_t *shape0) {
    xc_tensor_view tv;
    if (xc_ckpt_get(ck, name, &tv) != XC_OK) {
        fail_msg("expected tensors have no %s: %s", name, xc_err_last());
    }
    if (shape0) {
        *shape0 = tv.shape[0];
    }
    return tv.data;
}

static const float *tensor(fixture *f, const char *name, int64_t *shape0) {
    return tensor_in(f->exp, name, shape0);
}

static const int64_t *tensor_i64_in(xc_ckpt *ck, const char *name, int64_t *n) {
    xc_tensor_view tv;
    if (xc_ckpt_get(ck, name, &tv) != XC_OK || tv.dtype != XC_DTYPE_I64) {
        fail_msg("expected.safetensors has no i64 %s", name);
    }
    *n = (int64_t)(tv.nbytes / 8);
    return tv.data;
}

static const int64_t *tensor_i64(fixture *f, const char *name, int64_t *n) {
    return tensor_i64_in(f->exp, name, n);
}

static void fixture_load(fixture *f, const char *variant) {
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, REF "/%s", variant);
    char path[600];
    snprintf(path, sizeof path, "%s/expected.safetensors", f->dir);
    assert_int_equal(xc_ckpt_open(path, &f->exp), XC_OK);
    snprintf(path, sizeof path, "%s/expected_kv_bf16.safetensors", f->dir);
    assert_int_equal(xc_ckpt_open(path, &f->kvb), XC_OK);
    snprintf(path, sizeof path, "%s/expected.json", f->dir);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(path, 1 << 22, &text, &len), XC_OK);
    f->json = cJSON_ParseWithLength(text, len);
    xc_free(text);
    assert_non_null(f->json);
    /* the image prompt as chat() built it: text segments' ids and image rows */
    const cJSON *ip = cJSON_GetObjectItem(f->json, "image_prompt");
    f->n = cJSON_GetObjectItem(ip, "seq_len")->valueint;
    f->ids = xc_calloc((size_t)f->n, sizeof(int32_t));
    const cJSON *seg;
    cJSON_ArrayForEach(seg, cJSON_GetObjectItem(ip, "segments")) {
        const cJSON *rows = cJSON_GetObjectItem(seg, "rows");
        int a = cJSON_GetArrayItem(rows, 0)->valueint, b = cJSON_GetArrayItem(rows, 1)->valueint;
        if (!strcmp(cJSON_GetObjectItem(seg, "type")->valuestring, "image")) {
            f->img[f->n_img++] = (xc_row_range){a, b};
        } else {
            const cJSON *id;
            int i = a;
            cJSON_ArrayForEach(id, cJSON_GetObjectItem(seg, "ids")) {
                f->ids[i++] = id->valueint;
            }
            assert_int_equal(i, b);
        }
    }
    int64_t nt;
    const int64_t *t = tensor_i64(f, "text_input_ids", &nt);
    f->n_text = (int)nt;
    f->text_ids = xc_malloc((size_t)nt * sizeof(int32_t));
    for (int64_t i = 0; i < nt; i++) {
        f->text_ids[i] = (int32_t)t[i];
    }
}

static void fixture_free(fixture *f) {
    xc_ckpt_close(f->exp);
    xc_ckpt_close(f->kvb);
    cJSON_Delete(f->json);
    xc_free(f->ids);
    xc_free(f->text_ids);
}

static void assert_close(const float *got, const float *want, size_t n, float atol, float rtol,
                         const char *what) {
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double lim = atol + rtol * fabs((double)want[i]);
        if (!(d <= lim)) {
            fail_msg("%s: element %zu is %.7g, expected %.7g (|diff| %.3g > %.3g)", what, i, got[i],
                     want[i], d, lim);
        }
    }
}

static xc_engine *engine_at(fixture *f, int n_stages, const int *cuts, const int *unit_cuts,
                            const char *weights, const char *kv_dtype) {
    char wpath[600];
    xc_engine_conf c = {.model_dir = f->dir,
                        .n_threads = 1,
                        .n_stages = n_stages,
                        .cuts = cuts,
                        .unit_cuts = unit_cuts,
                        .kv_dtype = kv_dtype};
    if (weights) {
        snprintf(wpath, sizeof wpath, "%s/%s", f->dir, weights);
        c.weights = wpath;
    }
    xc_engine *e = NULL;
    if (xc_engine_create(&c, &e) != XC_OK) {
        fail_msg("engine on %s: %s", f->dir, xc_err_last());
    }
    return e;
}

static xc_engine *engine(fixture *f, int n_stages, const int *cuts, const char *weights,
                         const char *kv_dtype) {
    return engine_at(f, n_stages, cuts, NULL, weights, kv_dtype);
}

/* ---- vision ---- */

static void check_vision(const char *variant) {
    fixture f;
    fixture_load(&f, variant);
    xc_model_config cfg;
    assert_int_equal(xc_model_config_load(f.dir, &cfg), XC_OK);
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(f.dir, &ck), XC_OK);
    xc_backend *be = NULL;
    assert_int_equal(xc_backend_create("cpu", NULL, &be), XC_OK);
    xc_vision *v = NULL;
    assert_int_equal(xc_vision_create(be, ck, &cfg, &v), XC_OK);
    const xc_vision_info *vi = xc_vision_get_info(v);
    int64_t n_img;
    const float *images = tensor(&f, "images", &n_img);
    size_t rows = (size_t)n_img * (size_t)vi->n_tokens;
    float *out = xc_malloc(rows * (size_t)vi->out_dim * sizeof(float));
    float *clip = xc_malloc(rows * (size_t)vi->width * sizeof(float));
    assert_int_equal(xc_vision_encode(v, images, (int)n_img, out, clip), XC_OK);
    assert_close(clip, tensor(&f, "vit_out", NULL), rows * (size_t)vi->width, 1e-4f, 1e-4f,
                 "vit_out");
    assert_close(out, tensor(&f, "img_embeds", NULL), rows * (size_t)vi->out_dim, 1e-4f, 1e-4f,
                 "img_embeds");
    assert_true(vi->pos_interpolated == !strcmp(variant, "7b"));
    xc_free(out);
    xc_free(clip);
    xc_vision_destroy(v);
    xc_backend_destroy(be);
    xc_ckpt_close(ck);
    fixture_free(&f);
}

static void test_conformance_vision_7b(void **state) {
    (void)state;
    check_vision("7b"); /* stock 577-row table: interpolated 24x24 -> 4x4 at load */
}

static void test_conformance_vision_vl(void **state) {
    (void)state;
    check_vision("vl"); /* table stored already resized (26 rows), no post_layernorm */
}

static void test_conformance_bicubic_matches_torch(void **state) {
    (void)state;
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(REF "/interp.safetensors", &ck), XC_OK);
    xc_tensor_view src;
    assert_int_equal(xc_ckpt_get(ck, "grid", &src), XC_OK); /* (1, C, 24, 24) */
    int c = (int)src.shape[1], g0 = (int)src.shape[2];
    float *in = xc_malloc((size_t)g0 * g0 * c * sizeof(float));
    for (int ch = 0; ch < c; ch++) { /* to channels-last */
        for (int i = 0; i < g0 * g0; i++) {
            in[(size_t)i * c + ch] = ((const float *)src.data)[(size_t)ch * g0 * g0 + i];
        }
    }
    const int grids[] = {4, 5, 16, 35};
    for (size_t k = 0; k < 4; k++) {
        int g = grids[k];
        char name[32];
        snprintf(name, sizeof name, "out_%d", g);
        xc_tensor_view want;
        assert_int_equal(xc_ckpt_get(ck, name, &want), XC_OK);
        float *out = xc_malloc((size_t)g * g * c * sizeof(float));
        float *chw = xc_malloc((size_t)g * g * c * sizeof(float));
        xc_vision_bicubic_resize(in, g0, c, out, g);
        for (int ch = 0; ch < c; ch++) {
            for (int i = 0; i < g * g; i++) {
                chw[(size_t)ch * g * g + i] = out[(size_t)i * c + ch];
            }
        }
        assert_close(chw, want.data, (size_t)g * g * c, 1e-5f, 1e-5f, name);
        xc_free(out);
        xc_free(chw);
    }
    xc_free(in);
    xc_ckpt_close(ck);
}

/* ---- prefill ---- */

typedef struct hs_capture {
    float *hs; /* (n_stages, rows, width) */
    int rows, width, n;
} hs_capture;

static void capture(void *user, int stage, const float *hidden, int rows, int width) {
    hs_capture *c = user;
    assert_int_equal(rows, c->rows);
    memcpy(c->hs + (size_t)stage * rows * width, hidden, (size_t)rows * width * sizeof(float));
    c->n = stage + 1;
}

/* Runs the prefill with one layer per stage, checks every hidden state and the logit rows
 * against the original, and returns all logits (caller frees). */
static float *check_prefill(fixture *f, bool text, const char *weights, bool bf16) {
    xc_engine *e = engine(f, 3, NULL, weights, bf16 ? "bf16" : "f32");
    xc_ckpt *want_ck = bf16 ? f->kvb : f->exp;
    int V = xc_engine_vocab(e), H = xc_engine_hidden(e), L = xc_engine_n_layers(e);
    assert_int_equal(L, 3);
    int64_t nx = 0;
    const float *pixels = text ? NULL : tensor(f, "images", &nx);
    xc_prompt p = {.ids = text ? f->text_ids : f->ids,
                   .n = text ? f->n_text : f->n,
                   .img = f->img,
                   .n_img = text ? 0 : f->n_img,
                   .pixels = pixels};
    float *logits = xc_malloc((size_t)p.n * V * sizeof(float));
    hs_capture cap = {
        .hs = xc_malloc((size_t)3 * p.n * H * sizeof(float)), .rows = p.n, .width = H};
    assert_int_equal(xc_engine_prefill_logits(e, &p, logits, capture, &cap), XC_OK);
    assert_int_equal(cap.n, 3);
    /* hidden_states[l] (l = 1..L) is the output of layer l-1; the last one is after the final
     * RMSNorm, as in HF's output_hidden_states */
    const float *hs = tensor_in(want_ck, text ? "text_hidden_states" : "hidden_states", NULL);
    for (int l = 1; l <= L; l++) {
        char what[64];
        snprintf(what, sizeof what, "%s%s hidden_states[%d]", bf16 ? "bf16 KV " : "",
                 text ? "text" : "image", l);
        assert_close(cap.hs + (size_t)(l - 1) * p.n * H, hs + (size_t)l * p.n * H, (size_t)p.n * H,
                     2e-4f, 1e-4f, what);
    }
    int64_t nr;
    const int64_t *rows = tensor_i64(f, text ? "text_logits_rows" : "logits_rows", &nr);
    const float *want = tensor_in(want_ck, text ? "text_logits" : "logits", NULL);
    for (int64_t i = 0; i < nr; i++) {
        char what[64];
        snprintf(what, sizeof what, "%s%s logits row %d", bf16 ? "bf16 KV " : "",
                 text ? "text" : "image", (int)rows[i]);
        assert_close(logits + (size_t)rows[i] * V, want + (size_t)i * V, (size_t)V, 1e-3f, 1e-4f,
                     what);
    }
    xc_free(cap.hs);
    xc_engine_destroy(e);
    return logits;
}

/* Greedy tokens equal the original's; with bf16 they must equal both the original's with a bf16
 * KV cache and the f32 fixture's. */
static void check_greedy(fixture *f, bool text, bool bf16) {
    xc_engine *e = engine(f, 1, NULL, NULL, bf16 ? "bf16" : "f32");
    int64_t nx = 0, n_want;
    const float *pixels = text ? NULL : tensor(f, "images", &nx);
    const int64_t *want = tensor_i64(f, text ? "text_greedy_tokens" : "greedy_tokens", &n_want);
    xc_prompt p = {.ids = text ? f->text_ids : f->ids,
                   .n = text ? f->n_text : f->n,
                   .img = f->img,
                   .n_img = text ? 0 : f->n_img,
                   .pixels = pixels};
    const int32_t stops[2] = {2, 3}; /* eos and [UNUSED_TOKEN_145] of the fixture tokenizer */
    xc_gen_params g = {
        .sampling = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1},
        .max_new_tokens = (int)n_want,
        .stop_ids = stops,
        .n_stop_ids = 2};
    int32_t out[64];
    int n_out = 0;
    bool stopped = true;
    assert_int_equal(xc_engine_generate(e, &p, &g, NULL, NULL, out, &n_out, &stopped), XC_OK);
    assert_int_equal(n_out, n_want);
    assert_false(stopped);
    int64_t n_kvb = 0;
    const int64_t *want_kvb =
        tensor_i64_in(f->kvb, text ? "text_greedy_tokens" : "greedy_tokens", &n_kvb);
    assert_int_equal(n_kvb, n_want);
    for (int i = 0; i < n_out; i++) {
        if (out[i] != want[i] || (bf16 && out[i] != want_kvb[i])) {
            fail_msg("%s%s greedy token %d is %d, the original gives %d (%d with bf16 KV)",
                     bf16 ? "bf16 KV " : "", text ? "text" : "image", i, out[i], (int)want[i],
                     (int)want_kvb[i]);
        }
    }
    xc_engine_destroy(e);
}

static void check_variant(const char *variant) {
    fixture f;
    fixture_load(&f, variant);
    float *img_st = check_prefill(&f, false, NULL, false);
    float *img_bin = check_prefill(&f, false, "pytorch_model.bin", false);
    int V = 1000;
    /* the .bin and the safetensors checkpoint hold the same bits: identical logits */
    assert_memory_equal(img_st, img_bin, (size_t)f.n * V * sizeof(float));
    float *txt = check_prefill(&f, true, NULL, false);
    check_greedy(&f, false, false);
    check_greedy(&f, true, false);
    xc_free(img_st);
    xc_free(img_bin);
    xc_free(txt);
    fixture_free(&f);
}

static void test_conformance_model_7b(void **state) {
    (void)state;
    check_variant("7b");
}

static void test_conformance_model_vl(void **state) {
    (void)state;
    check_variant("vl");
}

/* KV conformance: the bf16 KV cache against the original code with a bf16 KV cache. */
static void check_kv_bf16(const char *variant) {
    fixture f;
    fixture_load(&f, variant);
    xc_free(check_prefill(&f, false, NULL, true));
    xc_free(check_prefill(&f, true, NULL, true));
    check_greedy(&f, false, true);
    check_greedy(&f, true, true);
    fixture_free(&f);
}

static void test_conformance_kv_bf16_7b(void **state) {
    (void)state;
    check_kv_bf16("7b");
}

static void test_conformance_kv_bf16_vl(void **state) {
    (void)state;
    check_kv_bf16("vl");
}

/* Cutting the decoder into 1, 2 or 3 stages anywhere gives bit-identical logits. */
static void test_conformance_stage_cuts_identical(void **state) {
    (void)state;
    fixture f;
    fixture_load(&f, "vl");
    int64_t nx;
    xc_prompt p = {.ids = f.ids,
                   .n = f.n,
                   .img = f.img,
                   .n_img = f.n_img,
                   .pixels = tensor(&f, "images", &nx)};
    const int cut1[] = {1}, cut2[] = {2}, cut12[] = {1, 2};
    /* unit cuts (unit 2l = layer l's attention, 2l+1 its FFN): between a layer's attention and
     * its FFN, a stage holding one FFN only (no KV cache), one holding one attention only */
    const int u1[] = {1}, u3[] = {3}, u14[] = {1, 4}, u12[] = {1, 2}, u235[] = {2, 3, 5};

    struct {
        int n;
        const int *cuts, *unit_cuts;
    } cfgs[] = {{1, NULL, NULL}, {2, cut1, NULL}, {2, cut2, NULL}, {3, cut12, NULL}, {2, NULL, u1},
                {2, NULL, u3},   {3, NULL, u14},  {3, NULL, u12},  {4, NULL, u235}};

    float *ref = NULL;
    size_t bytes = (size_t)f.n * 1000 * sizeof(float);
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        xc_engine *e = engine_at(&f, cfgs[i].n, cfgs[i].cuts, cfgs[i].unit_cuts, NULL, NULL);
        float *lg = xc_malloc(bytes);
        assert_int_equal(xc_engine_prefill_logits(e, &p, lg, NULL, NULL), XC_OK);
        if (!ref) {
            ref = lg;
        } else {
            assert_memory_equal(ref, lg, bytes);
            xc_free(lg);
        }
        xc_engine_destroy(e);
    }
    xc_free(ref);
    fixture_free(&f);
}

/* The C chat template + tokenizer rebuild exactly the ids the original chat() fed the model. */
static void check_chat(const char *variant) {
    fixture f;
    fixture_load(&f, variant);
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.model", f.dir);
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_load(path, &tok), XC_OK);
    const cJSON *ip = cJSON_GetObjectItem(f.json, "image_prompt");
    const cJSON *tp = cJSON_GetObjectItem(f.json, "text_prompt");
    xc_chat_request req = {.variant =
                               strcmp(variant, "vl") ? XC_CHAT_VARIANT_7B : XC_CHAT_VARIANT_VL,
                           .query = cJSON_GetObjectItem(ip, "query")->valuestring,
                           .n_images = 2,
                           .tokens_per_image = (size_t)(f.img[0].end - f.img[0].start)};
    assert_string_equal(xc_chat_default_system(req.variant),
                        cJSON_GetObjectItem(ip, "meta_instruction")->valuestring);
    xc_chat_prompt p;
    assert_int_equal(xc_chat_build(tok, &req, &p), XC_OK);
    assert_int_equal(p.n, f.n);
    assert_int_equal(p.n_images, 2);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(p.images[r].start, f.img[r].start);
        assert_int_equal(p.images[r].end, f.img[r].end);
    }
    for (size_t i = 0; i < p.n; i++) {
        bool img = (int)i >= f.img[0].start && (int)i < f.img[1].end &&
                   !((int)i >= f.img[0].end && (int)i < f.img[1].start);
        assert_int_equal(p.ids[i], img ? XC_CHAT_IMAGE_ROW : f.ids[i]);
    }
    xc_chat_prompt_fini(&p);
    req.query = cJSON_GetObjectItem(tp, "query")->valuestring;
    req.n_images = 0;
    assert_int_equal(xc_chat_build(tok, &req, &p), XC_OK);
    assert_int_equal(p.n, f.n_text);
    assert_memory_equal(p.ids, f.text_ids, p.n * sizeof(int32_t)); /* incl. the double BOS */
    xc_chat_prompt_fini(&p);
    xc_tokenizer_destroy(tok);
    fixture_free(&f);
}

static void test_conformance_chat_prompt_7b(void **state) {
    (void)state;
    check_chat("7b");
}

static void test_conformance_chat_prompt_vl(void **state) {
    (void)state;
    check_chat("vl");
}

/* xcpipe generate --greedy against chat(do_sample=False) (tools/reference/
 * make_penalty_fixtures.py: the original chat() with its default repetition penalty 1.005 and
 * with 1.3), through the CLI itself: the image prompt as --input-ids with 'img' slots and the
 * fixture's pixels as --pixels files, the text prompt as its ids (penalized like chat()'s
 * text-only prompt). Each case's ids must equal the original's (the first `compare` of them:
 * all 40 in the committed fixtures). Before issue 14, --greedy dropped the penalty and the 1.3
 * cases differed from step 4 on. */
static void cli_greedy_penalty(const char *variant) {
    fixture f;
    fixture_load(&f, variant);
    char path[700];
    snprintf(path, sizeof path, "%s/greedy_penalty.json", f.dir);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(path, 1 << 22, &text, &len), XC_OK);
    cJSON *gp = cJSON_ParseWithLength(text, len);
    xc_free(text);
    assert_non_null(gp);
    /* pixels: one float32 (3, S, S) file per image */
    int64_t nx;
    const float *px = tensor(&f, "images", &nx);
    xc_model_config cfg;
    assert_int_equal(xc_model_config_load(f.dir, &cfg), XC_OK);
    size_t per = 3u * (size_t)cfg.img_size * (size_t)cfg.img_size;
    char pxf[2][64];
    for (int i = 0; i < 2; i++) {
        snprintf(pxf[i], sizeof pxf[i], "/tmp/xc-conf-%d-%s-%d.f32", (int)getpid(), variant, i);
        FILE *fp = fopen(pxf[i], "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(px + (size_t)i * per, sizeof(float), per, fp), per);
        fclose(fp);
    }
    /* --input-ids of both prompts */
    size_t cap = 16 * (size_t)(f.n + f.n_text) + 64;
    char *img_ids = xc_malloc(cap), *txt_ids = xc_malloc(cap);
    size_t o = 0;
    for (int i = 0, r = 0; i < f.n; i++) {
        if (r < f.n_img && i == f.img[r].start) {
            o += (size_t)snprintf(img_ids + o, cap - o, "%simg", o ? "," : "");
            i = f.img[r++].end - 1;
            continue;
        }
        o += (size_t)snprintf(img_ids + o, cap - o, "%s%d", o ? "," : "", f.ids[i]);
    }
    o = 0;
    for (int i = 0; i < f.n_text; i++) {
        o += (size_t)snprintf(txt_ids + o, cap - o, "%s%d", o ? "," : "", f.text_ids[i]);
    }
    int n_cases = 0, n_differ = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(gp, "cases")) {
        bool image = !strcmp(cJSON_GetObjectItem(c, "prompt")->valuestring, "image");
        double pen = cJSON_GetObjectItem(c, "repetition_penalty")->valuedouble;
        int compare = cJSON_GetObjectItem(c, "compare")->valueint;
        n_differ += cJSON_IsTrue(cJSON_GetObjectItem(c, "differs_from_unpenalized"));
        size_t cl = 2 * cap + 1024;
        char *cmd = xc_malloc(cl);
        /* the default penalty is not passed: --greedy alone must be chat(do_sample=False) */
        char penflag[64] = "";
        if (fabs(pen - 1.005) > 1e-9) {
            snprintf(penflag, sizeof penflag, "--repetition-penalty %g", pen);
        }
        snprintf(cmd, cl,
                 "%s/xcpipe generate --model %s --greedy %s --max-tokens 40 --threads 1 "
                 "--print-ids --input-ids %s %s%s%s%s 2>&1",
                 XC_BIN_DIR, f.dir, penflag, image ? img_ids : txt_ids, image ? "--pixels " : "",
                 image ? pxf[0] : "", image ? " --pixels " : "", image ? pxf[1] : "");
        FILE *pp = popen(cmd, "r");
        assert_non_null(pp);
        char line[65536];
        int got[64], n_got = -1;
        while (fgets(line, sizeof line, pp)) {
            if (!strncmp(line, "answer ids:", 11)) {
                n_got = 0;
                for (char *q = line + 11; n_got < 64;) {
                    char *end;
                    long v = strtol(q, &end, 10);
                    if (end == q) {
                        break;
                    }
                    got[n_got++] = (int)v;
                    q = end;
                }
            }
        }
        int rc = pclose(pp);
        if (rc != 0 || n_got < 0) {
            fail_msg("%s: `%s` failed (%d)", variant, cmd, rc);
        }
        const cJSON *toks = cJSON_GetObjectItem(c, "tokens");
        int n_want = cJSON_GetArraySize(toks);
        assert_true(compare <= n_want && compare >= 30);
        for (int k = 0; k < compare; k++) {
            int want = cJSON_GetArrayItem(toks, k)->valueint;
            if (k >= n_got || got[k] != want) {
                fail_msg("%s %s penalty %g: step %d: generate --greedy gives %d, chat() %d",
                         variant, image ? "image" : "text", pen, k, k < n_got ? got[k] : -1, want);
            }
        }
        xc_free(cmd);
        n_cases++;
    }
    assert_int_equal(n_cases, 4);
    assert_true(n_differ >= 1); /* the penalty changes the answer somewhere: the test can fail */
    for (int i = 0; i < 2; i++) {
        unlink(pxf[i]);
    }
    xc_free(img_ids);
    xc_free(txt_ids);
    cJSON_Delete(gp);
    fixture_free(&f);
}

static void test_conformance_cli_greedy_penalty_7b(void **state) {
    (void)state;
    cli_greedy_penalty("7b");
}

static void test_conformance_cli_greedy_penalty_vl(void **state) {
    (void)state;
    cli_greedy_penalty("vl");
}

/* The context rule (issue 14.0): a VL prompt (two images) padded with text to max_length - 8
 * rows gets 300 new tokens (past max_length, as the original generates up to
 * max_position_embeddings); a prompt of max_length + 1 rows is refused with a clear error (the
 * original would cut it silently). The KV cache grows to the sequence on the way. */
static void test_conformance_long_vl_context(void **state) {
    (void)state;
    fixture f;
    fixture_load(&f, "vl");
    xc_engine *e = engine(&f, 1, NULL, NULL, NULL);
    int max_len = xc_engine_max_prompt(e);
    assert_true(max_len == 4096 && xc_engine_max_context(e) == 32768);
    int n = max_len - 8;
    int32_t *ids = xc_malloc((size_t)(max_len + 1) * sizeof(int32_t));
    memcpy(ids, f.ids, (size_t)f.n * sizeof(int32_t));
    for (int i = f.n; i <= max_len; i++) {
        ids[i] = 300 + i % 500; /* plain text ids after the chat prompt */
    }
    int64_t nx;
    xc_prompt p = {
        .ids = ids, .n = n, .img = f.img, .n_img = f.n_img, .pixels = tensor(&f, "images", &nx)};
    xc_gen_params g = {
        .max_new_tokens = 300,
        .sampling = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1.005f}};
    int32_t *out = xc_malloc(300 * sizeof(int32_t));
    int n_out = 0;
    assert_int_equal(xc_engine_generate(e, &p, &g, NULL, NULL, out, &n_out, NULL), XC_OK);
    assert_int_equal(n_out, 300); /* no stop ids: all 300, positions up to 4388 */
    p.n = max_len + 1;
    g.max_new_tokens = 1;
    assert_int_equal(xc_engine_generate(e, &p, &g, NULL, NULL, out, &n_out, NULL), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "longer than max_length 4096"));
    xc_free(out);
    xc_free(ids);
    xc_engine_destroy(e);
    fixture_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conformance_bicubic_matches_torch),
        cmocka_unit_test(test_conformance_vision_7b),
        cmocka_unit_test(test_conformance_vision_vl),
        cmocka_unit_test(test_conformance_model_7b),
        cmocka_unit_test(test_conformance_model_vl),
        cmocka_unit_test(test_conformance_kv_bf16_7b),
        cmocka_unit_test(test_conformance_kv_bf16_vl),
        cmocka_unit_test(test_conformance_stage_cuts_identical),
        cmocka_unit_test(test_conformance_chat_prompt_7b),
        cmocka_unit_test(test_conformance_chat_prompt_vl),
        cmocka_unit_test(test_conformance_cli_greedy_penalty_7b),
        cmocka_unit_test(test_conformance_cli_greedy_penalty_vl),
        cmocka_unit_test(test_conformance_long_vl_context),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
