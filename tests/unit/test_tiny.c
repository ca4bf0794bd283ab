/* Tiny-model generator: every tensor name/shape/dtype against a list built here from the
 * reference dossier (sections 2.2, 2.3), read back through the checkpoint readers; config.json
 * through xc_model_config; determinism; .bin == safetensors == sharded; the wqkv interleave
 * (section 3.2) against the generator's logical q/k/v blocks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "xc_ckpt.h"
#include "xc_mmap.h"
#include "xc_model_config.h"
#include "xc_test.h"
#include "xc_tiny.h"
#include "xc_tokenizer.h"

static char tmpdir[64];

static void sub(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* ---- the expected tensor list, written from the dossier ---- */

typedef struct exp_t {
    char name[128];
    int ndim;
    int64_t shape[4];
} exp_t;

static int n_exp;
static exp_t exps[1024];

static void e(int ndim, int64_t a, int64_t b, int64_t c, int64_t d, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void e(int ndim, int64_t a, int64_t b, int64_t c, int64_t d, const char *fmt, ...) {
    assert_true(n_exp < (int)(sizeof exps / sizeof exps[0]));
    exp_t *x = &exps[n_exp++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->ndim = ndim;
    x->shape[0] = a;
    x->shape[1] = b;
    x->shape[2] = c;
    x->shape[3] = d;
}

static void expected(const xc_tiny_conf *c, int pos_rows) {
    n_exp = 0;
    int64_t h = c->hidden, hd = c->hidden / c->heads, r = c->lora_rank, in = c->intermediate;
    int64_t qkv = (c->heads + 2 * c->kv_heads) * hd, v = c->vocab, dv = c->vision_dim;
    e(2, v, h, 0, 0, "model.tok_embeddings.weight");
    e(1, h, 0, 0, 0, "model.norm.weight");
    e(2, v, h, 0, 0, "output.weight");
    static const char *proj[5] = {"attention.wqkv", "attention.wo", "feed_forward.w1",
                                  "feed_forward.w3", "feed_forward.w2"};
    int64_t outs[5] = {qkv, h, in, in, h}, ins[5] = {h, h, h, h, in};
    for (int l = 0; l < c->layers; l++) {
        for (int k = 0; k < 5; k++) {
            e(2, outs[k], ins[k], 0, 0, "model.layers.%d.%s.weight", l, proj[k]);
            e(2, r, ins[k], 0, 0, "model.layers.%d.%s.Plora_A.weight", l, proj[k]);
            e(2, outs[k], r, 0, 0, "model.layers.%d.%s.Plora_B.weight", l, proj[k]);
        }
        e(1, h, 0, 0, 0, "model.layers.%d.attention_norm.weight", l);
        e(1, h, 0, 0, 0, "model.layers.%d.ffn_norm.weight", l);
    }
    const char *vm = "vit.vision_tower.vision_model";
    e(1, dv, 0, 0, 0, "%s.embeddings.class_embedding", vm);
    e(4, dv, 3, c->patch, c->patch, "%s.embeddings.patch_embedding.weight", vm);
    e(2, pos_rows, dv, 0, 0, "%s.embeddings.position_embedding.weight", vm);
    e(1, dv, 0, 0, 0, "%s.pre_layrnorm.weight", vm);
    e(1, dv, 0, 0, 0, "%s.pre_layrnorm.bias", vm);
    static const char *ap[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int l = 0; l < c->vision_layers; l++) {
        for (int k = 0; k < 4; k++) {
            e(2, dv, dv, 0, 0, "%s.encoder.layers.%d.self_attn.%s.weight", vm, l, ap[k]);
            e(1, dv, 0, 0, 0, "%s.encoder.layers.%d.self_attn.%s.bias", vm, l, ap[k]);
        }
        e(2, 4 * dv, dv, 0, 0, "%s.encoder.layers.%d.mlp.fc1.weight", vm, l);
        e(1, 4 * dv, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc1.bias", vm, l);
        e(2, dv, 4 * dv, 0, 0, "%s.encoder.layers.%d.mlp.fc2.weight", vm, l);
        e(1, dv, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc2.bias", vm, l);
        for (int n = 1; n <= 2; n++) {
            e(1, dv, 0, 0, 0, "%s.encoder.layers.%d.layer_norm%d.weight", vm, l, n);
            e(1, dv, 0, 0, 0, "%s.encoder.layers.%d.layer_norm%d.bias", vm, l, n);
        }
    }
    if (c->post_layernorm) {
        e(1, dv, 0, 0, 0, "%s.post_layernorm.weight", vm);
        e(1, dv, 0, 0, 0, "%s.post_layernorm.bias", vm);
    }
    e(2, h, dv, 0, 0, "vision_proj.0.weight");
    e(1, h, 0, 0, 0, "vision_proj.0.bias");
    e(2, h, h, 0, 0, "vision_proj.2.weight");
    e(1, h, 0, 0, 0, "vision_proj.2.bias");
}

/* Opens dir and checks it holds exactly the expected tensors with dtype dt. */
static void check_tensors(const char *dir, xc_dtype dt, xc_ckpt_format fmt) {
    xc_ckpt *ck = NULL;
    if (xc_ckpt_open(dir, &ck) != XC_OK) {
        fail_msg("xc_ckpt_open(%s): %s", dir, xc_err_last());
    }
    assert_int_equal(xc_ckpt_get_format(ck), fmt);
    assert_int_equal(xc_ckpt_count(ck), (size_t)n_exp);
    for (int i = 0; i < n_exp; i++) {
        xc_tensor_view v;
        if (xc_ckpt_get_shaped(ck, exps[i].name, exps[i].ndim, exps[i].shape, &v) != XC_OK) {
            fail_msg("%s: %s", exps[i].name, xc_err_last());
        }
        assert_int_equal(v.dtype, dt);
    }
    xc_ckpt_close(ck);
}

static void gen(const char *name, const xc_tiny_conf *c) {
    char dir[128];
    sub(dir, sizeof dir, name);
    if (xc_tiny_write(dir, c) != XC_OK) {
        fail_msg("xc_tiny_write(%s): %s", dir, xc_err_last());
    }
}

/* ---- tests ---- */

static void test_tiny_layout_both_variants_and_formats(void **state) {
    (void)state;
    static const char *variants[2] = {"7b", "vl"};
    for (int vi = 0; vi < 2; vi++) {
        for (int f = 0; f < 2; f++) {
            xc_tiny_conf c;
            xc_tiny_conf_init(&c, variants[vi]);
            c.format = (xc_ckpt_format)f;
            char name[32], dir[128];
            snprintf(name, sizeof name, "layout_%s_%d", variants[vi], f);
            gen(name, &c);
            sub(dir, sizeof dir, name);
            int grid = (vi == 0 ? 56 : 70) / 14; /* 7b: 4x4 = 16 image tokens, vl: 5x5 = 25 */
            expected(&c, grid * grid + 1);
            check_tensors(dir, XC_DTYPE_BF16, c.format);

            xc_model_config mc;
            if (xc_model_config_load(dir, &mc) != XC_OK) {
                fail_msg("config: %s", xc_err_last());
            }
            assert_int_equal(mc.hidden_size, 64);
            assert_int_equal(mc.num_hidden_layers, 2);
            assert_int_equal(mc.num_attention_heads, 4);
            assert_int_equal(mc.num_key_value_heads, 2);
            assert_int_equal(mc.head_dim, 16);
            assert_int_equal(mc.intermediate_size, 128);
            assert_int_equal(mc.vocab_size, 512);
            assert_int_equal(mc.img_size, vi == 0 ? 56 : 70);
            assert_false(mc.tie_word_embeddings);
            assert_string_equal(mc.architecture, "InternLMXComposer2ForCausalLM");
            /* the config and the shapes agree (what a loader derives from each) */
            xc_ckpt *ck = NULL;
            assert_int_equal(xc_ckpt_open(dir, &ck), XC_OK);
            xc_tensor_view w;
            assert_int_equal(xc_ckpt_get(ck, "model.layers.1.attention.wqkv.weight", &w), XC_OK);
            assert_int_equal(w.shape[0],
                             (mc.num_attention_heads + 2 * mc.num_key_value_heads) * mc.head_dim);
            assert_int_equal(xc_ckpt_get(ck, "output.weight", &w), XC_OK);
            assert_int_equal(w.shape[0], mc.vocab_size);
            assert_int_equal(
                xc_ckpt_get(ck, "vit.vision_tower.vision_model.embeddings.patch_embedding.weight",
                            &w),
                XC_OK);
            assert_int_equal(mc.img_size % w.shape[3], 0);
            assert_int_equal(xc_ckpt_has(ck, "vit.vision_tower.vision_model.post_layernorm.weight"),
                             0);
            xc_ckpt_close(ck);
        }
    }
}

static bool same_file(const char *a, const char *b) {
    xc_mmap x = {0}, y = {0};
    assert_int_equal(xc_mmap_open(a, &x), XC_OK);
    assert_int_equal(xc_mmap_open(b, &y), XC_OK);
    bool same = x.size == y.size && memcmp(x.data, y.data, x.size) == 0;
    xc_mmap_close(&x);
    xc_mmap_close(&y);
    return same;
}

static void test_tiny_same_seed_same_bytes(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, "7b");
    c.seed = 42;
    for (int f = 0; f < 2; f++) {
        c.format = (xc_ckpt_format)f;
        c.seed = 42;
        gen(f ? "seed_a_bin" : "seed_a_st", &c);
        gen(f ? "seed_b_bin" : "seed_b_st", &c);
        c.seed = 43;
        gen(f ? "seed_c_bin" : "seed_c_st", &c);
        const char *file = f ? "pytorch_model.bin" : "model.safetensors";
        char a[160], b[160], d[160];
        snprintf(a, sizeof a, "%s/seed_a_%s/%s", tmpdir, f ? "bin" : "st", file);
        snprintf(b, sizeof b, "%s/seed_b_%s/%s", tmpdir, f ? "bin" : "st", file);
        snprintf(d, sizeof d, "%s/seed_c_%s/%s", tmpdir, f ? "bin" : "st", file);
        assert_true(same_file(a, b));
        assert_false(same_file(a, d));
        snprintf(a, sizeof a, "%s/seed_a_%s/config.json", tmpdir, f ? "bin" : "st");
        snprintf(b, sizeof b, "%s/seed_b_%s/config.json", tmpdir, f ? "bin" : "st");
        assert_true(same_file(a, b));
    }
    /* a different seed changes every tensor, not just a few bytes */
    char a[128], d[128];
    sub(a, sizeof a, "seed_a_st");
    sub(d, sizeof d, "seed_c_st");
    xc_ckpt *x = NULL, *y = NULL;
    assert_int_equal(xc_ckpt_open(a, &x), XC_OK);
    assert_int_equal(xc_ckpt_open(d, &y), XC_OK);
    for (size_t i = 0; i < xc_ckpt_count(x); i++) {
        xc_tensor_view u, v;
        assert_int_equal(xc_ckpt_get(x, xc_ckpt_name(x, i), &u), XC_OK);
        assert_int_equal(xc_ckpt_get(y, xc_ckpt_name(x, i), &v), XC_OK);
        assert_int_equal(u.nbytes, v.nbytes);
        if (memcmp(u.data, v.data, u.nbytes) == 0) {
            fail_msg("%s is the same for seeds 42 and 43", u.name);
        }
    }
    xc_ckpt_close(x);
    xc_ckpt_close(y);
}

/* Every tensor of b equals a's bit for bit (and both hold the same names). */
static void assert_same_tensors(const char *a_name, const char *b_name) {
    char a[128], b[128];
    sub(a, sizeof a, a_name);
    sub(b, sizeof b, b_name);
    xc_ckpt *x = NULL, *y = NULL;
    assert_int_equal(xc_ckpt_open(a, &x), XC_OK);
    if (xc_ckpt_open(b, &y) != XC_OK) {
        fail_msg("open %s: %s", b, xc_err_last());
    }
    assert_int_equal(xc_ckpt_count(x), xc_ckpt_count(y));
    for (size_t i = 0; i < xc_ckpt_count(x); i++) {
        xc_tensor_view u, v;
        assert_string_equal(xc_ckpt_name(x, i), xc_ckpt_name(y, i));
        assert_int_equal(xc_ckpt_get(x, xc_ckpt_name(x, i), &u), XC_OK);
        if (xc_ckpt_get(y, xc_ckpt_name(x, i), &v) != XC_OK) {
            fail_msg("%s: %s", xc_ckpt_name(x, i), xc_err_last());
        }
        assert_int_equal(u.dtype, v.dtype);
        assert_int_equal(u.ndim, v.ndim);
        assert_memory_equal(u.shape, v.shape, sizeof u.shape[0] * (size_t)u.ndim);
        assert_int_equal(u.nbytes, v.nbytes);
        if (memcmp(u.data, v.data, u.nbytes) != 0) {
            fail_msg("%s differs between %s and %s", u.name, a_name, b_name);
        }
    }
    xc_ckpt_close(x);
    xc_ckpt_close(y);
}

static void test_tiny_bin_safetensors_and_shards_agree(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, "vl");
    c.seed = 5;
    gen("fmt_st", &c);
    c.format = XC_CKPT_FORMAT_TORCH_BIN;
    gen("fmt_bin", &c);
    c.shards = 3;
    gen("fmt_bin3", &c);
    c.format = XC_CKPT_FORMAT_SAFETENSORS;
    c.shards = 4;
    gen("fmt_st4", &c);
    assert_same_tensors("fmt_st", "fmt_bin");
    assert_same_tensors("fmt_st", "fmt_bin3");
    assert_same_tensors("fmt_st", "fmt_st4");
    char p[160];
    struct stat sb;
    snprintf(p, sizeof p, "%s/fmt_bin3/pytorch_model-00003-of-00003.bin", tmpdir);
    assert_int_equal(stat(p, &sb), 0);
    snprintf(p, sizeof p, "%s/fmt_st4/model.safetensors.index.json", tmpdir);
    assert_int_equal(stat(p, &sb), 0);
}

/* The fused wqkv (and its Plora_B) rows, de-interleaved here with the dossier's formula, equal
 * the generator's logical q, k and v blocks; bf16 files hold the f32 values rounded. */
static void test_tiny_wqkv_interleave(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, "7b");
    c.hidden = 96;
    c.heads = 6; /* 3 query heads per KV group: groups of [q, q, q, k, v] */
    c.kv_heads = 2;
    c.dtype = XC_DTYPE_F32;
    gen("qkv_f32", &c);
    c.dtype = XC_DTYPE_BF16;
    gen("qkv_bf16", &c);
    char d32[128], d16[128];
    sub(d32, sizeof d32, "qkv_f32");
    sub(d16, sizeof d16, "qkv_bf16");
    xc_ckpt *ck = NULL, *ck16 = NULL;
    assert_int_equal(xc_ckpt_open(d32, &ck), XC_OK);
    assert_int_equal(xc_ckpt_open(d16, &ck16), XC_OK);
    const int hd = 16, qpk = 3, kv = 2;
    for (int lb = 0; lb < 2; lb++) {
        int cols = lb ? c.lora_rank : c.hidden;
        float *blk[3];
        for (int w = 0; w < 3; w++) {
            blk[w] = test_malloc(sizeof(float) * (size_t)(w == 0 ? 6 : 2) * hd * cols);
            assert_int_equal(xc_tiny_qkv_logical(&c, 1, lb, w, blk[w]), XC_OK);
        }
        xc_tensor_view t, t16;
        const char *name = lb ? "model.layers.1.attention.wqkv.Plora_B.weight"
                              : "model.layers.1.attention.wqkv.weight";
        assert_int_equal(xc_ckpt_get(ck, name, &t), XC_OK);
        assert_int_equal(xc_ckpt_get(ck16, name, &t16), XC_OK);
        assert_int_equal(t.shape[0], (6 + 2 * kv) * hd);
        const float *m = t.data;
        const uint16_t *m16 = t16.data;
        int row = 0;
        for (int g = 0; g < kv; g++) {
            for (int slot = 0; slot < qpk + 2; slot++) {
                /* slot < qpk: query head g*qpk+slot; then key head g; then value head g */
                int w = slot < qpk ? 0 : slot - qpk + 1;
                int head = slot < qpk ? g * qpk + slot : g;
                for (int i = 0; i < hd; i++, row++) {
                    const float *want = blk[w] + (size_t)(head * hd + i) * cols;
                    for (int k = 0; k < cols; k++) {
                        float got = m[(size_t)row * cols + k];
                        if (got != want[k]) {
                            fail_msg("%s row %d col %d: %g, logical %c head %d: %g", name, row, k,
                                     got, "qkv"[w], head, want[k]);
                        }
                        assert_int_equal(m16[(size_t)row * cols + k], xc_f32_to_bf16(want[k]));
                    }
                }
            }
        }
        for (int w = 0; w < 3; w++) {
            test_free(blk[w]);
        }
    }
    xc_ckpt_close(ck);
    xc_ckpt_close(ck16);
}

/* Value statistics: normals with the documented scales, norms near 1, PLoRA B nonzero. */
static void test_tiny_value_scales(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, "7b");
    c.dtype = XC_DTYPE_F32;
    gen("scales", &c);
    char dir[128];
    sub(dir, sizeof dir, "scales");
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(dir, &ck), XC_OK);

    struct {
        const char *name;
        double mean, std;
    } want[] = {
        {"model.tok_embeddings.weight", 0.0, 1.0},                        /* 32768 samples */
        {"output.weight", 0.0, 0.125},                                    /* 1/sqrt(64) */
        {"model.layers.0.feed_forward.w2.weight", 0.0, 0.0883883},        /* 1/sqrt(128) */
        {"model.layers.0.feed_forward.w1.Plora_B.weight", 0.0, 0.176777}, /* 0.5/sqrt(8) */
        {"model.layers.0.attention_norm.weight", 1.0, 0.1},
    };

    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        xc_tensor_view v;
        assert_int_equal(xc_ckpt_get(ck, want[k].name, &v), XC_OK);
        size_t n = v.nbytes / 4;
        const float *p = v.data;
        double s = 0, s2 = 0;
        for (size_t i = 0; i < n; i++) {
            assert_true(isfinite(p[i]));
            s += p[i];
        }
        double mean = s / (double)n;
        for (size_t i = 0; i < n; i++) {
            s2 += (p[i] - mean) * (p[i] - mean);
        }
        double sd = sqrt(s2 / (double)(n - 1));
        /* tolerances: 5 standard errors of the mean, 4 of the standard deviation */
        if (fabs(mean - want[k].mean) > 5 * want[k].std / sqrt((double)n) ||
            fabs(sd / want[k].std - 1) > 4 / sqrt(2.0 * (double)n)) {
            fail_msg("%s: mean %g std %g, want %g and %g", want[k].name, mean, sd, want[k].mean,
                     want[k].std);
        }
    }
    xc_ckpt_close(ck);
}

/* The bytes do not depend on the number of threads filling the tensors (parts split inside
 * tensors of more than 2^16 values, wqkv by rows), for normal and for uniform values; uniform
 * values keep each tensor's mean and standard deviation and differ from the normal ones. */
static void test_tiny_threads_and_uniform(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, "7b");
    c.dtype = XC_DTYPE_F32;
    c.hidden = 256;
    c.intermediate = 512;
    c.vocab = 4096;
    for (int u = 0; u < 2; u++) {
        c.uniform = u;
        c.threads = 1;
        gen(u ? "thr_u1" : "thr_n1", &c);
        c.threads = 5;
        gen(u ? "thr_u5" : "thr_n5", &c);
        char a[160], b[160];
        snprintf(a, sizeof a, "%s/%s/model.safetensors", tmpdir, u ? "thr_u1" : "thr_n1");
        snprintf(b, sizeof b, "%s/%s/model.safetensors", tmpdir, u ? "thr_u5" : "thr_n5");
        assert_true(same_file(a, b));
    }
    char a[160], b[160];
    snprintf(a, sizeof a, "%s/thr_n1/model.safetensors", tmpdir);
    snprintf(b, sizeof b, "%s/thr_u1/model.safetensors", tmpdir);
    assert_false(same_file(a, b));
    char dir[128];
    sub(dir, sizeof dir, "thr_u5");
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(dir, &ck), XC_OK);
    xc_tensor_view v;
    assert_int_equal(xc_ckpt_get(ck, "model.tok_embeddings.weight", &v), XC_OK);
    const float *p = v.data;
    size_t n = v.nbytes / 4;
    double s = 0, s2 = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        s += p[i];
        s2 += (double)p[i] * p[i];
        mx = fabs(p[i]) > mx ? fabs(p[i]) : mx;
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    /* N(0, 1) as U(-sqrt 3, sqrt 3): mean 0, std 1, nothing beyond sqrt 3 */
    if (fabs(mean) > 5 / sqrt((double)n) || fabs(sd - 1) > 0.01 || mx > 1.7320509) {
        fail_msg("uniform embeddings: mean %g std %g max %g", mean, sd, mx);
    }
    xc_ckpt_close(ck);
}

static void test_tiny_options(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, "vl");
    c.pos_table_original = true;
    c.post_layernorm = true;
    c.vision_dim = 128; /* two CLIP heads */
    c.vocab = 1000;
    c.dtype = XC_DTYPE_F16;
    gen("opts", &c);
    char dir[128];
    sub(dir, sizeof dir, "opts");
    expected(&c, 577);
    check_tensors(dir, XC_DTYPE_F16, XC_CKPT_FORMAT_SAFETENSORS);
    xc_model_config mc;
    assert_int_equal(xc_model_config_load(dir, &mc), XC_OK);
    assert_int_equal(mc.vocab_size, 1000);
    /* counts agree with the files */
    size_t nt;
    uint64_t np, nb;
    assert_int_equal(xc_tiny_count(&c, &nt, &np, &nb), XC_OK);
    assert_int_equal(nt, (size_t)n_exp);
    uint64_t sum = 0;
    for (int i = 0; i < n_exp; i++) {
        uint64_t p = 1;
        for (int d = 0; d < exps[i].ndim; d++) {
            p *= (uint64_t)exps[i].shape[d];
        }
        sum += p;
    }
    assert_int_equal(np, sum);
    assert_int_equal(nb, 2 * sum);
    /* layers_for_bytes: the smallest layer count that reaches the target */
    int layers = 0;
    uint64_t target = nb * 3;
    assert_int_equal(xc_tiny_layers_for_bytes(&c, target, 1000, &layers), XC_OK);
    xc_tiny_conf t = c;
    t.layers = layers;
    assert_int_equal(xc_tiny_count(&t, &nt, &np, &nb), XC_OK);
    assert_true(nb >= target);
    t.layers = layers - 1;
    assert_int_equal(xc_tiny_count(&t, &nt, &np, &nb), XC_OK);
    assert_true(nb < target);
    assert_int_equal(xc_tiny_layers_for_bytes(&c, (uint64_t)1 << 50, 1000, &layers), XC_ERR_ARG);
}

static void expect_bad(xc_tiny_conf *c, const char *needle) {
    char dir[128];
    sub(dir, sizeof dir, "bad");
    xc_status st = xc_tiny_write(dir, c);
    assert_int_equal(st, XC_ERR_ARG);
    if (!strstr(xc_err_last(), needle)) {
        fail_msg("error '%s' does not mention '%s'", xc_err_last(), needle);
    }
    xc_tiny_conf_init(c, "7b");
}

static void test_tiny_rejects_bad_conf(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, "13b");
    expect_bad(&c, "variant");
    c.heads = 5;
    expect_bad(&c, "heads");
    c.kv_heads = 3;
    expect_bad(&c, "kv_heads");
    c.hidden = 4 * 3;
    expect_bad(&c, "even");
    c.vision_dim = 96;
    expect_bad(&c, "vision_dim");
    c.img_size = 50;
    expect_bad(&c, "img_size");
    c.vocab = 2;
    expect_bad(&c, "vocab");
    c.dtype = XC_DTYPE_I32;
    expect_bad(&c, "dtype");
    c.shards = 10000;
    expect_bad(&c, "shards");
    /* an existing checkpoint is kept unless forced; forcing replaces a .bin by safetensors */
    c.format = XC_CKPT_FORMAT_TORCH_BIN;
    gen("exists", &c);
    c.format = XC_CKPT_FORMAT_SAFETENSORS;
    char dir[128], p[160];
    sub(dir, sizeof dir, "exists");
    assert_int_equal(xc_tiny_write(dir, &c), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "--force"));
    c.force = true;
    assert_int_equal(xc_tiny_write(dir, &c), XC_OK);
    struct stat sb;
    snprintf(p, sizeof p, "%s/pytorch_model.bin", dir);
    assert_int_not_equal(stat(p, &sb), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(stat(p, &sb), 0);
    /* a tokenizer that does not exist is an I/O error naming it */
    c.tokenizer = "/nonexistent/tokenizer.model";
    assert_int_equal(xc_tiny_write(dir, &c), XC_ERR_IO);
    assert_non_null(strstr(xc_err_last(), "/nonexistent/tokenizer.model"));
}

/* ---- make-random: the published layouts (reference sections 2.1-2.4) ---- */

/* Index of name in the list, or -1. */
static long find_t(const xc_tiny_tensor *t, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(t[i].name, name)) {
            return (long)i;
        }
    }
    return -1;
}

/* The list of c holds exactly the dossier's tensors (expected()), with their shapes. */
static void check_list_against_expected(const xc_tiny_tensor *t, size_t n) {
    assert_int_equal(n, (size_t)n_exp);
    for (int i = 0; i < n_exp; i++) {
        long k = find_t(t, n, exps[i].name);
        if (k < 0) {
            fail_msg("%s is missing", exps[i].name);
        }
        assert_int_equal(t[k].ndim, exps[i].ndim);
        assert_memory_equal(t[k].shape, exps[i].shape, sizeof(int64_t) * (size_t)exps[i].ndim);
    }
}

static uint64_t t_bytes(const xc_tiny_tensor *t) {
    uint64_t b = 2; /* bf16 */
    for (int d = 0; d < t->ndim; d++) {
        b *= (uint64_t)t->shape[d];
    }
    return b;
}

static void test_make_random_published_layouts(void **state) {
    (void)state;
    /* VL: 940 tensors (547 LLM + 389 ViT without post_layernorm + 4 projector: the index's 947
     * lines minus 7), two shards of 9.98 and 7.35 GB, 17.3 GB in all, 1226 position rows */
    xc_tiny_conf c;
    xc_tiny_conf_like(&c, "vl");
    assert_int_equal(xc_tiny_validate(&c), XC_OK);
    assert_int_equal(xc_tiny_img_size(&c), 490);
    expected(&c, 35 * 35 + 1);
    xc_tiny_tensor *t = NULL;
    size_t n = 0;
    int shards = 0;
    assert_int_equal(xc_tiny_list(&c, &t, &n, &shards), XC_OK);
    assert_int_equal(n, 940);
    check_list_against_expected(t, n);
    assert_int_equal(shards, 2);
    uint64_t sb[2] = {0, 0};
    size_t in0 = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(t[i].shard == 0 || t[i].shard == 1);
        assert_true(i == 0 || t[i].shard >= t[i - 1].shard); /* contiguous runs */
        sb[t[i].shard] += t_bytes(&t[i]);
        in0 += t[i].shard == 0;
    }
    assert_true(sb[0] <= 10000000000ull);
    assert_true(fabs((double)sb[0] / 1e9 - 9.98) < 0.005); /* as the download lists them */
    assert_true(fabs((double)sb[1] / 1e9 - 7.35) < 0.005);
    assert_true(fabs((double)(sb[0] + sb[1]) / 1e9 - 17.33) < 0.01);
    /* state_dict order: embeddings first, vision and projector last; the cut falls in layer 19 */
    assert_string_equal(t[0].name, "model.tok_embeddings.weight");
    assert_string_equal(t[in0 - 1].name, "model.layers.19.feed_forward.w1.Plora_B.weight");
    assert_string_equal(t[in0].name, "model.layers.19.feed_forward.w3.weight");
    assert_string_equal(t[n - 1].name, "vision_proj.2.bias");
    assert_int_equal(find_t(t, n, "vit.vision_tower.vision_model.post_layernorm.weight"), -1);
    long w = find_t(t, n, "model.layers.31.attention.wqkv.weight");
    assert_true(w >= 0 && t[w].shape[0] == 6144 && t[w].shape[1] == 4096);
    w = find_t(t, n, "model.layers.0.feed_forward.w2.Plora_A.weight");
    assert_true(w >= 0 && t[w].shape[0] == 256 && t[w].shape[1] == 14336);
    xc_free(t);

    /* 7b: the same names, one file, img_size 224 and a 257-row table */
    xc_tiny_conf_like(&c, "7b");
    assert_int_equal(xc_tiny_img_size(&c), 224);
    expected(&c, 16 * 16 + 1);
    assert_int_equal(xc_tiny_list(&c, &t, &n, &shards), XC_OK);
    assert_int_equal(shards, 1);
    check_list_against_expected(t, n);
    uint64_t tot = 0;
    for (size_t i = 0; i < n; i++) {
        tot += t_bytes(&t[i]);
    }
    assert_true(fabs((double)tot / 1e9 - 17.33) < 0.01);
    xc_free(t);
    size_t nt;
    uint64_t np, nb;
    assert_int_equal(xc_tiny_count(&c, &nt, &np, &nb), XC_OK);
    assert_int_equal(nb, tot);
    assert_true(fabs((double)np / 1e9 - 8.67) < 0.005); /* 8.67 B parameters */
}

/* The make-random configuration at reduced widths (fast): HF sharding into several files plus
 * the index, each shard holding exactly its tensors, the same bytes with 1 or 3 threads, and the
 * stand-in tokenizer files. */
static void test_make_random_reduced_write(void **state) {
    (void)state;
    xc_tiny_conf c;
    xc_tiny_conf_like(&c, "vl");
    c.hidden = 256;
    c.heads = 2; /* head dim 128 as in the real model */
    c.kv_heads = 1;
    c.intermediate = 512;
    c.lora_rank = 16;
    c.vocab = 1000;
    c.layers = 3;
    c.vision_dim = 64;
    c.vision_layers = 1;
    c.vision_mlp = 256;
    c.img_size = 70;
    c.max_shard_bytes = 1000000;
    c.threads = 3;
    xc_tiny_tensor *t = NULL;
    size_t n = 0;
    int shards = 0;
    assert_int_equal(xc_tiny_list(&c, &t, &n, &shards), XC_OK);
    assert_true(shards >= 3);
    gen("rand3", &c);
    expected(&c, 26);
    char dir[128], path[256];
    sub(dir, sizeof dir, "rand3");
    check_tensors(dir, XC_DTYPE_BF16, XC_CKPT_FORMAT_TORCH_BIN);
    snprintf(path, sizeof path, "%s/pytorch_model.bin.index.json", dir);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    /* every shard file holds exactly the tensors the list gives it, none over the limit unless a
     * single tensor is larger */
    for (int k = 0; k < shards; k++) {
        snprintf(path, sizeof path, "%s/pytorch_model-%05d-of-%05d.bin", dir, k + 1, shards);
        xc_ckpt *ck = NULL;
        if (xc_ckpt_open(path, &ck) != XC_OK) {
            fail_msg("%s: %s", path, xc_err_last());
        }
        size_t want = 0;
        uint64_t bytes = 0;
        for (size_t i = 0; i < n; i++) {
            if (t[i].shard == k) {
                xc_tensor_view v;
                if (xc_ckpt_get(ck, t[i].name, &v) != XC_OK) {
                    fail_msg("%s not in shard %d", t[i].name, k + 1);
                }
                want++;
                bytes += t_bytes(&t[i]);
            }
        }
        assert_int_equal(xc_ckpt_count(ck), want);
        assert_true(bytes <= c.max_shard_bytes || want == 1);
        xc_ckpt_close(ck);
    }
    xc_free(t);
    c.threads = 1;
    gen("rand1", &c);
    assert_same_tensors("rand3", "rand1");
    /* the stand-in tokenizer: special pieces at vocab - 147 + k */
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    xc_tokenizer *tok = NULL;
    if (xc_tokenizer_load(path, &tok) != XC_OK) {
        fail_msg("%s: %s", path, xc_err_last());
    }
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "[UNUSED_TOKEN_146]", 18), 999);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "[UNUSED_TOKEN_0]", 16), 853);
    xc_tokenizer_destroy(tok);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    assert_int_equal(stat(path, &sb), 0);
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    assert_int_equal(stat(path, &sb), 0);
}

/* The full-size stand-in tokenizer: 92,544 pieces, the special pieces at the real ids, and text
 * (ASCII, newlines, CJK through byte fallback, the chat markers) round-trips. */
static void test_make_random_standin_tokenizer(void **state) {
    (void)state;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_tiny_standin_tokenizer(92544, &buf, &len), XC_OK);
    xc_tokenizer *tok = NULL;
    if (xc_tokenizer_create(buf, len, &tok) != XC_OK) {
        fail_msg("stand-in tokenizer: %s", xc_err_last());
    }
    xc_free(buf);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "<s>", 3), 1);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "</s>", 4), 2);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "[UNUSED_TOKEN_0]", 16), 92397);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "[UNUSED_TOKEN_145]", 18), 92542);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "[UNUSED_TOKEN_146]", 18), 92543);
    const char *text = "[UNUSED_TOKEN_146]user\nDescribe the image, please. 浦语·灵笔 42!"
                       "[UNUSED_TOKEN_145]";
    xc_tokens ids = {0};
    assert_int_equal(xc_tokenizer_encode(tok, text, strlen(text), &ids), XC_OK);
    assert_int_equal(ids.ids[0] == 92543 || ids.ids[1] == 92543, 1);
    assert_int_equal(ids.ids[ids.n - 1], 92542);
    char *back = NULL;
    size_t blen = 0;
    assert_int_equal(xc_tokenizer_decode(tok, ids.ids, ids.n, &back, &blen), XC_OK);
    assert_string_equal(back, text);
    xc_free(back);
    xc_tokenizer_tokens_fini(&ids);
    xc_tokenizer_destroy(tok);
    assert_int_equal(xc_tiny_standin_tokenizer(100, &buf, &len), XC_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_layout_both_variants_and_formats),
        cmocka_unit_test(test_tiny_same_seed_same_bytes),
        cmocka_unit_test(test_tiny_bin_safetensors_and_shards_agree),
        cmocka_unit_test(test_tiny_wqkv_interleave),
        cmocka_unit_test(test_tiny_value_scales),
        cmocka_unit_test(test_tiny_options),
        cmocka_unit_test(test_tiny_threads_and_uniform),
        cmocka_unit_test(test_tiny_rejects_bad_conf),
        cmocka_unit_test(test_make_random_published_layouts),
        cmocka_unit_test(test_make_random_reduced_write),
        cmocka_unit_test(test_make_random_standin_tokenizer),
    };
    strcpy(tmpdir, "/tmp/xc_tiny_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        return 1;
    }
    int rc = cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) {
        return 1;
    }
    return rc;
}
