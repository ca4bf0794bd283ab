/* The decoder stage's Partial LoRA acts exactly where it should: changing one projection's PLoRA
 * weights changes the image rows' outputs of that layer and no others; a text-only prompt and the
 * projections of decoded tokens do not depend on the PLoRA weights at all. Uses the tiny VL
 * checkpoint from tests/fixtures/reference and copies of it with PLoRA weights altered. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_ckpt.h"
#include "xc_ckpt_write.h"
#include "xc_engine.h"
#include "xc_llm.h"
#include "xc_mmap.h"
#include "xc_test.h"
#include "xc_vision.h"

#define VL XC_FIXTURE_DIR "/reference/vl"

/* Copies the VL checkpoint to dir, adding 0.25 to every element of the PLoRA tensors whose names
 * contain `which` ("Plora" = all of them). */
static void write_altered(const char *dir, const char *which) {
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(VL, &ck), XC_OK);
    size_t n = xc_ckpt_count(ck);
    xc_ckpt_wtensor *t = xc_calloc(n, sizeof *t);
    float **bufs = xc_calloc(n, sizeof *bufs);
    int altered = 0;
    for (size_t i = 0; i < n; i++) {
        xc_tensor_view v;
        assert_int_equal(xc_ckpt_get(ck, xc_ckpt_name(ck, i), &v), XC_OK);
        t[i].name = v.name;
        t[i].dtype = v.dtype;
        t[i].ndim = v.ndim;
        memcpy(t[i].shape, v.shape, sizeof v.shape);
        t[i].data = v.data;
        if (strstr(v.name, "Plora") && strstr(v.name, which)) {
            assert_int_equal(v.dtype, XC_DTYPE_F32);
            bufs[i] = xc_malloc(v.nbytes);
            for (size_t j = 0; j < v.nbytes / 4; j++) {
                bufs[i][j] = ((const float *)v.data)[j] + 0.25f;
            }
            t[i].data = bufs[i];
            altered++;
        }
    }
    assert_true(altered > 0);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_SAFETENSORS, t, n, NULL, NULL), XC_OK);
    char *cfg = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(VL "/config.json", 1 << 20, &cfg, &len), XC_OK);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(cfg, 1, len, f), len);
    fclose(f);
    xc_free(cfg);
    for (size_t i = 0; i < n; i++) {
        xc_free(bufs[i]);
    }
    xc_free(bufs);
    xc_free(t);
    xc_ckpt_close(ck);
}

static void remove_dir(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

/* The VL fixture's image prompt: ids with image rows, as the original chat() built it. */
typedef struct prompt_fx {
    int32_t ids[512];
    int n;
    xc_row_range img[2];
    float *pixels;
    int32_t text[512];
    int n_text;
    xc_ckpt *exp;
} prompt_fx;

static void prompt_load(prompt_fx *p) {
    memset(p, 0, sizeof *p);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(VL "/expected.json", 1 << 22, &text, &len), XC_OK);
    cJSON *js = cJSON_ParseWithLength(text, len);
    xc_free(text);
    const cJSON *ip = cJSON_GetObjectItem(js, "image_prompt"), *seg;
    int n_img = 0;
    cJSON_ArrayForEach(seg, cJSON_GetObjectItem(ip, "segments")) {
        const cJSON *rows = cJSON_GetObjectItem(seg, "rows");
        int a = cJSON_GetArrayItem(rows, 0)->valueint, b = cJSON_GetArrayItem(rows, 1)->valueint;
        if (!strcmp(cJSON_GetObjectItem(seg, "type")->valuestring, "image")) {
            p->img[n_img++] = (xc_row_range){a, b};
        } else {
            const cJSON *id;
            int i = a;
            cJSON_ArrayForEach(id, cJSON_GetObjectItem(seg, "ids")) {
                p->ids[i++] = id->valueint;
            }
        }
        p->n = b;
    }
    const cJSON *tid;
    cJSON_ArrayForEach(tid,
                       cJSON_GetObjectItem(cJSON_GetObjectItem(js, "text_prompt"), "input_ids")) {
        p->text[p->n_text++] = tid->valueint;
    }
    cJSON_Delete(js);
    assert_int_equal(n_img, 2);
    assert_int_equal(xc_ckpt_open(VL "/expected.safetensors", &p->exp), XC_OK);
    xc_tensor_view v;
    assert_int_equal(xc_ckpt_get(p->exp, "images", &v), XC_OK);
    p->pixels = (float *)v.data;
}

typedef struct grab {
    float *h;
    size_t bytes;
} grab;

static void grab_stage0(void *user, int stage, const float *hidden, int rows, int width) {
    grab *g = user;
    if (stage == 0) {
        g->bytes = (size_t)rows * width * sizeof(float);
        g->h = xc_malloc(g->bytes);
        memcpy(g->h, hidden, g->bytes);
    }
}

static float *prefill(const char *dir, const xc_prompt *p, int n_stages, const int *cuts, grab *g) {
    xc_engine_conf c = {.model_dir = dir, .n_threads = 1, .n_stages = n_stages, .cuts = cuts};
    xc_engine *e = NULL;
    assert_int_equal(xc_engine_create(&c, &e), XC_OK);
    float *lg = xc_malloc((size_t)p->n * xc_engine_vocab(e) * sizeof(float));
    assert_int_equal(xc_engine_prefill_logits(e, p, lg, g ? grab_stage0 : NULL, g), XC_OK);
    xc_engine_destroy(e);
    return lg;
}

static void test_llm_plora_changes_only_image_rows(void **state) {
    (void)state;
    char dir[] = "/tmp/xc_plora_w2XXXXXX";
    assert_non_null(mkdtemp(dir));
    /* layer 0's down projection is row-local and the last op of the layer: after layer 0 only
     * the rows that got PLoRA can differ */
    write_altered(dir, "layers.0.feed_forward.w2.");
    prompt_fx f;
    prompt_load(&f);
    xc_prompt p = {.ids = f.ids, .n = f.n, .img = f.img, .n_img = 2, .pixels = f.pixels};
    const int cut[] = {1};
    grab a = {0}, b = {0};
    xc_free(prefill(VL, &p, 2, cut, &a));
    xc_free(prefill(dir, &p, 2, cut, &b));
    assert_int_equal(a.bytes, b.bytes);
    int width = (int)(a.bytes / sizeof(float) / (size_t)f.n);
    int changed_rows = 0;
    for (int r = 0; r < f.n; r++) {
        bool in_img =
            (r >= f.img[0].start && r < f.img[0].end) || (r >= f.img[1].start && r < f.img[1].end);
        bool same = !memcmp(a.h + (size_t)r * width, b.h + (size_t)r * width,
                            (size_t)width * sizeof(float));
        if (in_img && same) {
            fail_msg("image row %d is unchanged by its PLoRA weights", r);
        }
        if (!in_img && !same) {
            fail_msg("text row %d changed with the PLoRA weights", r);
        }
        changed_rows += !same;
    }
    assert_int_equal(changed_rows, (f.img[0].end - f.img[0].start) * 2);
    xc_free(a.h);
    xc_free(b.h);
    xc_ckpt_close(f.exp);
    remove_dir(dir);
}

static void test_llm_text_only_ignores_plora(void **state) {
    (void)state;
    char dir[] = "/tmp/xc_plora_allXXXXXX";
    assert_non_null(mkdtemp(dir));
    write_altered(dir, "Plora"); /* every adapter of every layer */
    prompt_fx f;
    prompt_load(&f);
    xc_prompt text = {.ids = f.text, .n = f.n_text};
    float *la = prefill(VL, &text, 1, NULL, NULL), *lb = prefill(dir, &text, 1, NULL, NULL);
    assert_memory_equal(la, lb, (size_t)f.n_text * 1000 * sizeof(float));
    xc_free(la);
    xc_free(lb);
    /* sanity: the same alteration does change an image prompt */
    xc_prompt img = {.ids = f.ids, .n = f.n, .img = f.img, .n_img = 2, .pixels = f.pixels};
    la = prefill(VL, &img, 1, NULL, NULL);
    lb = prefill(dir, &img, 1, NULL, NULL);
    assert_true(memcmp(la, lb, (size_t)f.n * 1000 * sizeof(float)) != 0);
    xc_free(la);
    xc_free(lb);
    xc_ckpt_close(f.exp);
    remove_dir(dir);
}

/* After an image prefill, a decode step computed by a stage with altered PLoRA weights, over the
 * same KV cache, gives bit-identical logits: decode rows never run the adapters. */
static void test_llm_decode_ignores_plora(void **state) {
    (void)state;
    char dir[] = "/tmp/xc_plora_decXXXXXX";
    assert_non_null(mkdtemp(dir));
    write_altered(dir, "Plora");
    prompt_fx f;
    prompt_load(&f);
    xc_model_config cfg;
    assert_int_equal(xc_model_config_load(VL, &cfg), XC_OK);
    xc_backend *be = NULL;
    assert_int_equal(xc_backend_create("cpu", NULL, &be), XC_OK);
    xc_ckpt *ca = NULL, *cb = NULL;
    assert_int_equal(xc_ckpt_open(VL, &ca), XC_OK);
    assert_int_equal(xc_ckpt_open(dir, &cb), XC_OK);
    xc_llm_conf lc = {.layer_begin = 0,
                      .layer_end = cfg.num_hidden_layers,
                      .first = true,
                      .last = true,
                      .max_rows = 512};
    xc_llm *a = NULL, *b = NULL;
    assert_int_equal(xc_llm_create(be, ca, &cfg, &lc, &a), XC_OK);
    assert_int_equal(xc_llm_create(be, cb, &cfg, &lc, &b), XC_OK);
    assert_int_equal(xc_llm_plora_rank(a), 8);
    xc_kv_cache *kv = NULL;
    assert_int_equal(
        xc_kv_create(be, cfg.num_hidden_layers, 32, 16, xc_llm_kv_width(a), XC_DTYPE_BF16, &kv),
        XC_OK);
    xc_vision *v = NULL;
    assert_int_equal(xc_vision_create(be, ca, &cfg, &v), XC_OK);
    int H = cfg.hidden_size, V = cfg.vocab_size;
    float *emb = xc_malloc((size_t)2 * 25 * H * sizeof(float));
    assert_int_equal(xc_vision_encode(v, f.pixels, 2, emb, NULL), XC_OK);
    int32_t table[32];
    for (int i = 0; i < 32; i++) {
        table[i] = 31 - i; /* any block order works */
    }
    float *hidden = xc_malloc((size_t)512 * H * sizeof(float));
    float *la = xc_malloc((size_t)V * sizeof(float)), *lb = xc_malloc((size_t)V * sizeof(float));
    xc_llm_seq s = {.n_tokens = f.n, .pos0 = 0, .block_table = table, .img = f.img, .n_img = 2};
    xc_llm_batch batch = {.seqs = &s, .n_seqs = 1, .n_rows = f.n, .ids = f.ids, .img_embeds = emb};
    assert_int_equal(xc_llm_forward(a, kv, &batch, hidden, la), XC_OK);
    for (int step = 0; step < 3; step++) {
        int32_t tok = 100 + step;
        xc_llm_seq d = {.n_tokens = 1, .pos0 = f.n + step, .block_table = table};
        xc_llm_batch db = {.seqs = &d, .n_seqs = 1, .n_rows = 1, .ids = &tok};
        assert_int_equal(xc_llm_forward(b, kv, &db, hidden, lb), XC_OK);
        assert_int_equal(xc_llm_forward(a, kv, &db, hidden, la), XC_OK);
        assert_memory_equal(la, lb, (size_t)V * sizeof(float));
    }
    xc_free(emb);
    xc_free(hidden);
    xc_free(la);
    xc_free(lb);
    xc_vision_destroy(v);
    xc_kv_destroy(kv);
    xc_llm_destroy(a);
    xc_llm_destroy(b);
    xc_ckpt_close(ca);
    xc_ckpt_close(cb);
    xc_backend_destroy(be);
    xc_ckpt_close(f.exp);
    remove_dir(dir);
}

/* One last-stage forward of a 3-sequence image batch (sequence 1 ends inside an image, so its
 * last row runs PLoRA) with last_rows_only, against the same forward over every row: the logits
 * are the same bits, and so is the KV cache (the final attention takes only the last rows as
 * queries, but every row's keys and values are stored). Also for a last stage that starts with
 * the final layer's FFN unit. kv_out: the cache's K and V of every layer, copied. */
static void run_last_rows(const xc_model_config *cfg, xc_backend *be, xc_ckpt *ck,
                          const prompt_fx *f, const float *emb, int unit_cut, bool last_only,
                          float *logits, uint8_t *kv_out) {
    int L = cfg->num_hidden_layers, H = cfg->hidden_size;
    xc_llm_conf ca = {.unit_begin = 0, .unit_end = unit_cut, .first = true, .max_rows = 512};
    xc_llm_conf cb = {.unit_begin = unit_cut, .unit_end = 2 * L, .last = true, .max_rows = 512};
    xc_llm_conf whole = {
        .layer_begin = 0, .layer_end = L, .first = true, .last = true, .max_rows = 512};
    bool split = unit_cut < 2 * L;
    xc_llm *a = NULL, *b = NULL;
    assert_int_equal(xc_llm_create(be, ck, cfg, split ? &ca : &whole, &a), XC_OK);
    if (split) {
        assert_int_equal(xc_llm_create(be, ck, cfg, &cb, &b), XC_OK);
    }
    xc_kv_cache *kv = NULL;
    assert_int_equal(xc_kv_create(be, L, 64, 16, xc_llm_kv_width(a), XC_DTYPE_BF16, &kv), XC_OK);
    size_t kv_layer = xc_kv_bytes(1, 64, 16, xc_llm_kv_width(a), XC_DTYPE_BF16) / 2; /* K or V */
    for (int l = 0; l < L; l++) { /* slots no row writes compare equal too */
        memset(xc_kv_k(kv, l), 0, kv_layer);
        memset(xc_kv_v(kv, l), 0, kv_layer);
    }
    static int32_t tables[3][20];
    for (int q = 0; q < 3; q++) {
        for (int i = 0; i < 20; i++) {
            tables[q][i] = q * 20 + i;
        }
    }
    int n1 = f->img[0].start + 3; /* ends on an image row */
    xc_row_range img1 = {f->img[0].start, n1};
    xc_llm_seq seqs[3] = {
        {.n_tokens = f->n, .block_table = tables[0], .img = f->img, .n_img = 2},
        {.n_tokens = n1, .block_table = tables[1], .img = &img1, .n_img = 1},
        {.n_tokens = 5, .block_table = tables[2]},
    };
    int rows = f->n + n1 + 5;
    int32_t *ids = xc_malloc((size_t)rows * sizeof(int32_t));
    memcpy(ids, f->ids, (size_t)f->n * sizeof(int32_t));
    memcpy(ids + f->n, f->ids, (size_t)n1 * sizeof(int32_t));
    memcpy(ids + f->n + n1, f->ids + f->n - 5, 5 * sizeof(int32_t));
    int img_rows = (f->img[0].end - f->img[0].start) + (f->img[1].end - f->img[1].start);
    float *ie = xc_malloc((size_t)(img_rows + 3) * H * sizeof(float));
    memcpy(ie, emb, (size_t)img_rows * H * sizeof(float));
    memcpy(ie + (size_t)img_rows * H, emb, (size_t)3 * H * sizeof(float));
    float *hidden = xc_malloc((size_t)rows * H * sizeof(float));
    xc_llm_batch batch = {.seqs = seqs,
                          .n_seqs = 3,
                          .n_rows = rows,
                          .ids = ids,
                          .img_embeds = ie,
                          .last_rows_only = last_only};
    assert_int_equal(xc_llm_forward(a, kv, &batch, hidden, split ? NULL : logits), XC_OK);
    if (split) {
        assert_int_equal(xc_llm_forward(b, kv, &batch, hidden, logits), XC_OK);
    }
    for (int l = 0; l < L; l++) {
        memcpy(kv_out + (size_t)(2 * l) * kv_layer, xc_kv_k(kv, l), kv_layer);
        memcpy(kv_out + (size_t)(2 * l + 1) * kv_layer, xc_kv_v(kv, l), kv_layer);
    }
    xc_free(ids);
    xc_free(ie);
    xc_free(hidden);
    xc_kv_destroy(kv);
    xc_llm_destroy(a);
    xc_llm_destroy(b);
}

static void test_llm_last_rows_only_same_logits(void **state) {
    (void)state;
    prompt_fx f;
    prompt_load(&f);
    xc_model_config cfg;
    assert_int_equal(xc_model_config_load(VL, &cfg), XC_OK);
    assert_true(f.img[0].end - f.img[0].start >= 3 && f.n + f.img[0].start + 8 <= 512 &&
                f.n <= 320);
    xc_backend *be = NULL;
    assert_int_equal(xc_backend_create("cpu", NULL, &be), XC_OK);
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(VL, &ck), XC_OK);
    xc_vision *v = NULL;
    assert_int_equal(xc_vision_create(be, ck, &cfg, &v), XC_OK);
    int V = cfg.vocab_size, L = cfg.num_hidden_layers;
    float *emb = xc_malloc((size_t)2 * 25 * cfg.hidden_size * sizeof(float));
    assert_int_equal(xc_vision_encode(v, f.pixels, 2, emb, NULL), XC_OK);
    float *all = xc_malloc((size_t)3 * V * sizeof(float)), *few = xc_malloc((size_t)3 * V * 4);
    int cuts[2] = {2 * L, 2 * L - 1}; /* one stage; a last stage holding only the final FFN */
    size_t kvn = xc_kv_bytes(L, 64, 16, cfg.num_key_value_heads * cfg.head_dim, XC_DTYPE_BF16);
    uint8_t *kv_all = xc_malloc(kvn), *kv_few = xc_malloc(kvn);
    for (int c = 0; c < 2; c++) {
        run_last_rows(&cfg, be, ck, &f, emb, cuts[c], false, all, kv_all);
        run_last_rows(&cfg, be, ck, &f, emb, cuts[c], true, few, kv_few);
        assert_memory_equal(all, few, (size_t)3 * V * sizeof(float));
        assert_memory_equal(kv_all, kv_few, kvn);
    }
    xc_free(kv_all);
    xc_free(kv_few);
    /* and the flag matters: without the gather, row 1 of the logits would be another row's */
    bool differs = memcmp(all, all + V, (size_t)V * sizeof(float)) != 0 &&
                   memcmp(all + V, all + 2 * (size_t)V, (size_t)V * sizeof(float)) != 0;
    assert_true(differs);
    xc_free(emb);
    xc_free(all);
    xc_free(few);
    xc_vision_destroy(v);
    xc_ckpt_close(ck);
    xc_backend_destroy(be);
    xc_ckpt_close(f.exp);
}

static void test_llm_rejects_bad_batches(void **state) {
    (void)state;
    xc_model_config cfg;
    assert_int_equal(xc_model_config_load(VL, &cfg), XC_OK);
    xc_backend *be = NULL;
    assert_int_equal(xc_backend_create("cpu", NULL, &be), XC_OK);
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(VL, &ck), XC_OK);
    xc_llm_conf lc = {.layer_begin = 0, .layer_end = 3, .first = true, .last = true, .max_rows = 8};
    xc_llm *m = NULL;
    assert_int_equal(xc_llm_create(be, ck, &cfg, &lc, &m), XC_OK);
    xc_kv_cache *kv = NULL;
    assert_int_equal(xc_kv_create(be, 3, 4, 4, xc_llm_kv_width(m), XC_DTYPE_BF16, &kv), XC_OK);
    float hidden[16 * 64], logits[2 * 1000];
    int32_t table[4] = {0, 1, 2, 3}, bad_table[4] = {9, 1, 2, 3};
    int32_t ids[16] = {1, 5, 7, 9};
    xc_llm_seq s = {.n_tokens = 4, .pos0 = 0, .block_table = table};
    xc_llm_batch b = {.seqs = &s, .n_seqs = 1, .n_rows = 4, .ids = ids};
    assert_int_equal(xc_llm_forward(m, kv, &b, hidden, logits), XC_OK);
    b.n_rows = 16; /* more rows than the stage's scratch */
    s.n_tokens = 16;
    assert_int_equal(xc_llm_forward(m, kv, &b, hidden, logits), XC_ERR_ARG);
    s.n_tokens = 4;
    b.n_rows = 4;
    s.block_table = bad_table;
    assert_int_equal(xc_llm_forward(m, kv, &b, hidden, logits), XC_ERR_ARG);
    s.block_table = table;
    ids[2] = 5000; /* outside the vocabulary */
    assert_int_equal(xc_llm_forward(m, kv, &b, hidden, logits), XC_ERR_ARG);
    ids[2] = 7;
    xc_row_range r = {2, 9}; /* image range past the sequence */
    s.img = &r;
    s.n_img = 1;
    assert_int_equal(xc_llm_forward(m, kv, &b, hidden, logits), XC_ERR_ARG);
    lc.layer_end = 7; /* more layers than the model has */
    xc_llm *m2 = NULL;
    assert_int_equal(xc_llm_create(be, ck, &cfg, &lc, &m2), XC_ERR_ARG);
    xc_kv_destroy(kv);
    xc_llm_destroy(m);
    xc_ckpt_close(ck);
    xc_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llm_plora_changes_only_image_rows),
        cmocka_unit_test(test_llm_text_only_ignores_plora),
        cmocka_unit_test(test_llm_decode_ignores_plora),
        cmocka_unit_test(test_llm_last_rows_only_same_logits),
        cmocka_unit_test(test_llm_rejects_bad_batches),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
