/* CLIP ViT-L/14 vision tower and the XComposer2 projector over the backend vtable. */
#include "xc_vision.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "xc_mem.h"

#define CLIP_HEAD_DIM 64 /* ViT-L/14: 1024 wide, 16 heads */
#define CLIP_LN_EPS   1e-5f

typedef struct vis_wt {
    const void *data;
    xc_dtype dtype;
    int rows, cols;
} vis_wt;

typedef struct vis_layer {
    vis_wt ln1_w, ln1_b, ln2_w, ln2_b;
    vis_wt q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
    vis_wt fc1_w, fc1_b, fc2_w, fc2_b;
} vis_layer;

typedef struct vis_scratch {
    xc_buf px, patches, x, a, q, k, v, o, f, feats, p;
} vis_scratch;

struct xc_vision {
    xc_backend *be;
    void (*progress)(void *user);
    void *progress_user;
    xc_vision_info info;
    vis_wt patch_w;   /* (width, 3 * patch * patch) */
    vis_wt class_emb; /* (1, width) */
    xc_buf pos;       /* (grid*grid + 1, width) f32, owned */
    vis_wt pre_ln_w, pre_ln_b;
    vis_layer *layers;
    vis_wt proj0_w, proj0_b, proj2_w, proj2_b;
    xc_buf *bufs;
    int n_bufs, cap_bufs;
    vis_scratch scratch; /* activations for up to scratch_images images, reused across calls */
    int scratch_images;
};

#define VIT "vit.vision_tower.vision_model."

static xc_status keep_buf(xc_vision *v, xc_buf b) {
    if (v->n_bufs == v->cap_bufs) {
        int cap = v->cap_bufs ? v->cap_bufs * 2 : 64;
        xc_buf *nb = xc_realloc(v->bufs, (size_t)cap * sizeof(xc_buf));
        if (!nb) {
            return XC_ERR_NOMEM;
        }
        v->bufs = nb;
        v->cap_bufs = cap;
    }
    v->bufs[v->n_bufs++] = b;
    return XC_OK;
}

/* Loads a tensor of the given shape (ndim 1..4; -1 = any) as a (rows, cols) matrix view whose
 * cols are the product of the trailing dimensions. */
static xc_status load(xc_vision *v, xc_ckpt *ck, const char *name, int ndim, const int64_t *shape,
                      vis_wt *out) {
    xc_tensor_view tv;
    XC_TRY(xc_ckpt_get_shaped(ck, name, ndim, shape, &tv));
    xc_buf b;
    XC_TRY(xc_backend_weights(v->be, tv.data, tv.nbytes, &b));
    xc_status st = keep_buf(v, b);
    if (st != XC_OK) {
        xc_backend_buf_free(v->be, &b);
        return st;
    }
    int64_t cols = 1;
    for (int i = 1; i < tv.ndim; i++) {
        cols *= tv.shape[i];
    }
    out->data = b.data;
    out->dtype = tv.dtype;
    out->rows = (int)tv.shape[0];
    out->cols = (int)cols;
    return XC_OK;
}

static xc_status load_vec(xc_vision *v, xc_ckpt *ck, const char *name, int64_t n, vis_wt *out) {
    int64_t shape[1] = {n};
    return load(v, ck, name, 1, shape, out);
}

static xc_status load_mat(xc_vision *v, xc_ckpt *ck, const char *name, int64_t r, int64_t c,
                          vis_wt *out) {
    int64_t shape[2] = {r, c};
    return load(v, ck, name, 2, shape, out);
}

/* PyTorch upsample_bicubic2d weights: cubic convolution with A = -0.75. */
static void cubic_coeffs(float t, float w[4]) {
    const float A = -0.75f;
    float x1 = t + 1.0f, x2 = t, x3 = 1.0f - t, x4 = 2.0f - t;
    w[0] = ((A * x1 - 5 * A) * x1 + 8 * A) * x1 - 4 * A;
    w[1] = ((A + 2) * x2 - (A + 3)) * x2 * x2 + 1;
    w[2] = ((A + 2) * x3 - (A + 3)) * x3 * x3 + 1;
    w[3] = ((A * x4 - 5 * A) * x4 + 8 * A) * x4 - 4 * A;
}

static int clampi(int x, int lo, int hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

void xc_vision_bicubic_resize(const float *src, int g0, int c, float *dst, int g) {
    /* align_corners = False: source = scale * (dst + 0.5) - 0.5 with scale = g0 / g, not clamped
     * for cubic; taps outside the grid read the border (PyTorch's bounded access). */
    float scale = (float)g0 / (float)g;
    for (int oy = 0; oy < g; oy++) {
        float sy = scale * ((float)oy + 0.5f) - 0.5f;
        int iy = (int)floorf(sy);
        float wy[4];
        cubic_coeffs(sy - (float)iy, wy);
        for (int ox = 0; ox < g; ox++) {
            float sx = scale * ((float)ox + 0.5f) - 0.5f;
            int ix = (int)floorf(sx);
            float wx[4];
            cubic_coeffs(sx - (float)ix, wx);
            for (int ch = 0; ch < c; ch++) {
                float rows[4];
                for (int j = 0; j < 4; j++) {
                    int yy = clampi(iy - 1 + j, 0, g0 - 1);
                    float acc = 0.0f;
                    for (int i = 0; i < 4; i++) {
                        int xx = clampi(ix - 1 + i, 0, g0 - 1);
                        acc += src[((size_t)yy * g0 + xx) * c + ch] * wx[i];
                    }
                    rows[j] = acc;
                }
                dst[((size_t)oy * g + ox) * c + ch] =
                    rows[0] * wy[0] + rows[1] * wy[1] + rows[2] * wy[2] + rows[3] * wy[3];
            }
        }
    }
}

/* Builds the (grid*grid + 1, width) f32 position table on the backend. */
static xc_status load_pos(xc_vision *v, xc_ckpt *ck) {
    xc_vision_info *in = &v->info;
    xc_tensor_view tv;
    int64_t shape[2] = {-1, in->width};
    XC_TRY(xc_ckpt_get_shaped(ck, VIT "embeddings.position_embedding.weight", 2, shape, &tv));
    int rows = (int)tv.shape[0];
    in->pos_rows = rows;
    int g0 = (int)lround(sqrt((double)(rows - 1)));
    if (rows < 2 || g0 * g0 + 1 != rows) {
        return xc_errf(XC_ERR_PROTO, "position_embedding has %d rows: not a square grid + 1", rows);
    }
    size_t w = (size_t)in->width, n_out = (size_t)in->n_tokens + 1;
    float *src = xc_malloc((size_t)rows * w * sizeof(float));
    float *dst = xc_malloc(n_out * w * sizeof(float));
    xc_status st = XC_OK;
    if (!src || !dst) {
        st = XC_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < (size_t)rows * w; i++) {
        src[i] = xc_load_f32(tv.data, tv.dtype, i);
    }
    memcpy(dst, src, w * sizeof(float)); /* the class position is kept as is */
    if (g0 == in->grid) {
        memcpy(dst, src, n_out * w * sizeof(float));
    } else {
        xc_vision_bicubic_resize(src + w, g0, in->width, dst + w, in->grid);
        in->pos_interpolated = true;
    }
    XC_TRY_GOTO(xc_backend_buf_alloc(v->be, n_out * w * sizeof(float), &v->pos), st, out);
    st = xc_backend_copy_in(v->be, v->pos.data, dst, n_out * w * sizeof(float));
out:
    xc_free(src);
    xc_free(dst);
    return st;
}

static xc_status load_layer(xc_vision *v, xc_ckpt *ck, int l, vis_layer *L) {
    int64_t d = v->info.width;
    char n[192];
#define LV(field, suffix)                                                                          \
    snprintf(n, sizeof n, VIT "encoder.layers.%d.%s", l, suffix);                                  \
    XC_TRY(load_vec(v, ck, n, -1, &L->field))
#define LM(field, suffix, r, c)                                                                    \
    snprintf(n, sizeof n, VIT "encoder.layers.%d.%s", l, suffix);                                  \
    XC_TRY(load_mat(v, ck, n, r, c, &L->field))
    LV(ln1_w, "layer_norm1.weight");
    LV(ln1_b, "layer_norm1.bias");
    LV(ln2_w, "layer_norm2.weight");
    LV(ln2_b, "layer_norm2.bias");
    LM(q_w, "self_attn.q_proj.weight", d, d);
    LV(q_b, "self_attn.q_proj.bias");
    LM(k_w, "self_attn.k_proj.weight", d, d);
    LV(k_b, "self_attn.k_proj.bias");
    LM(v_w, "self_attn.v_proj.weight", d, d);
    LV(v_b, "self_attn.v_proj.bias");
    LM(o_w, "self_attn.out_proj.weight", d, d);
    LV(o_b, "self_attn.out_proj.bias");
    LM(fc1_w, "mlp.fc1.weight", -1, d);
    LV(fc1_b, "mlp.fc1.bias");
    LM(fc2_w, "mlp.fc2.weight", d, L->fc1_w.rows);
    LV(fc2_b, "mlp.fc2.bias");
#undef LV
#undef LM
    if (L->ln1_w.rows != d || L->q_b.rows != d || L->fc1_b.rows != L->fc1_w.rows) {
        return xc_errf(XC_ERR_PROTO, "vision layer %d: bias or norm sizes do not match width %d", l,
                       (int)d);
    }
    return XC_OK;
}

xc_status xc_vision_create(xc_backend *be, xc_ckpt *ck, const xc_model_config *cfg,
                           xc_vision **out) {
    xc_status st = XC_OK;
    xc_vision *v = xc_calloc(1, sizeof *v);
    if (!v) {
        return XC_ERR_NOMEM;
    }
    v->be = be;
    xc_vision_info *in = &v->info;
    int64_t pshape[4] = {-1, 3, -1, -1};
    XC_TRY_GOTO(load(v, ck, VIT "embeddings.patch_embedding.weight", 4, pshape, &v->patch_w), st,
                fail);
    in->width = v->patch_w.rows;
    xc_tensor_view tv;
    XC_TRY_GOTO(xc_ckpt_get(ck, VIT "embeddings.patch_embedding.weight", &tv), st, fail);
    in->patch = (int)tv.shape[2];
    if (tv.shape[3] != tv.shape[2] || in->patch <= 0) {
        st = xc_errf(XC_ERR_PROTO, "patch_embedding kernel is not square");
        goto fail;
    }
    if (in->width % CLIP_HEAD_DIM != 0) {
        st = xc_errf(XC_ERR_PROTO, "vision width %d is not a multiple of the CLIP head dim %d",
                     in->width, CLIP_HEAD_DIM);
        goto fail;
    }
    in->n_heads = in->width / CLIP_HEAD_DIM;
    in->img_size = cfg->img_size;
    if (in->img_size <= 0 || in->img_size % in->patch != 0) {
        st = xc_errf(XC_ERR_PROTO,
                     "config.json img_size %d is not a positive multiple of the "
                     "patch size %d",
                     in->img_size, in->patch);
        goto fail;
    }
    in->grid = in->img_size / in->patch;
    in->n_tokens = in->grid * in->grid;
    while (1) {
        char n[192];
        snprintf(n, sizeof n, VIT "encoder.layers.%d.self_attn.q_proj.weight", in->n_layers);
        if (!xc_ckpt_has(ck, n)) {
            break;
        }
        in->n_layers++;
    }
    if (in->n_layers == 0) {
        st = xc_errf(XC_ERR_NOTFOUND, "checkpoint has no vision encoder layers");
        goto fail;
    }
    int64_t cls_shape[1] = {in->width};
    XC_TRY_GOTO(load(v, ck, VIT "embeddings.class_embedding", 1, cls_shape, &v->class_emb), st,
                fail);
    XC_TRY_GOTO(load_pos(v, ck), st, fail);
    XC_TRY_GOTO(load_vec(v, ck, VIT "pre_layrnorm.weight", in->width, &v->pre_ln_w), st, fail);
    XC_TRY_GOTO(load_vec(v, ck, VIT "pre_layrnorm.bias", in->width, &v->pre_ln_b), st, fail);
    v->layers = xc_calloc((size_t)in->n_layers, sizeof(vis_layer));
    if (!v->layers) {
        st = XC_ERR_NOMEM;
        goto fail;
    }
    for (int l = 0; l < in->n_layers; l++) {
        XC_TRY_GOTO(load_layer(v, ck, l, &v->layers[l]), st, fail);
    }
    in->inter = v->layers[0].fc1_w.rows;
    int64_t hid = cfg->hidden_size;
    XC_TRY_GOTO(load_mat(v, ck, "vision_proj.0.weight", hid, in->width, &v->proj0_w), st, fail);
    XC_TRY_GOTO(load_vec(v, ck, "vision_proj.0.bias", hid, &v->proj0_b), st, fail);
    XC_TRY_GOTO(load_mat(v, ck, "vision_proj.2.weight", hid, hid, &v->proj2_w), st, fail);
    XC_TRY_GOTO(load_vec(v, ck, "vision_proj.2.bias", hid, &v->proj2_b), st, fail);
    in->out_dim = (int)hid;
    *out = v;
    return XC_OK;
fail:
    xc_vision_destroy(v);
    return st;
}

static void scratch_free(xc_vision *v, vis_scratch *s);

void xc_vision_destroy(xc_vision *v) {
    if (!v) {
        return;
    }
    for (int i = 0; i < v->n_bufs; i++) {
        xc_backend_buf_free(v->be, &v->bufs[i]);
    }
    xc_backend_buf_free(v->be, &v->pos);
    scratch_free(v, &v->scratch);
    xc_free(v->bufs);
    xc_free(v->layers);
    xc_free(v);
}

const xc_vision_info *xc_vision_get_info(const xc_vision *v) {
    return &v->info;
}

/* ---- forward ---- */

static xc_status linear(xc_vision *v, const float *x, const vis_wt *w, const vis_wt *b, float *y,
                        int rows, bool accumulate) {
    xc_matmul_args a = {.x = x,
                        .w = w->data,
                        .w_dtype = w->dtype,
                        .bias = b ? b->data : NULL,
                        .bias_dtype = b ? b->dtype : w->dtype,
                        .y = y,
                        .m = rows,
                        .n = w->rows,
                        .k = w->cols,
                        .alpha = 1.0f,
                        .accumulate = accumulate};
    return xc_backend_matmul(v->be, &a);
}

static xc_status layernorm(xc_vision *v, const vis_wt *w, const vis_wt *b, const float *x, float *y,
                           int rows) {
    xc_norm_args a = {.x = x,
                      .y = y,
                      .w = w->data,
                      .b = b->data,
                      .wb_dtype = w->dtype,
                      .m = rows,
                      .n = v->info.width,
                      .eps = CLIP_LN_EPS};
    if (b->dtype != w->dtype) {
        return xc_errf(XC_ERR_UNSUPPORTED, "layernorm weight and bias dtypes differ");
    }
    return xc_backend_layernorm(v->be, &a);
}

static void scratch_free(xc_vision *v, vis_scratch *s) {
    xc_buf *all[] = {&s->px, &s->patches, &s->x, &s->a,     &s->q, &s->k,
                     &s->v,  &s->o,       &s->f, &s->feats, &s->p};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        xc_backend_buf_free(v->be, all[i]);
    }
}

static xc_status scratch_alloc(xc_vision *v, int n, vis_scratch *s) {
    const xc_vision_info *in = &v->info;
    size_t f = sizeof(float), T = (size_t)in->n_tokens + 1, rows = (size_t)n * T;
    size_t side = (size_t)in->img_size, pp = 3u * (size_t)in->patch * (size_t)in->patch;
    size_t W = (size_t)in->width;
    XC_TRY(xc_backend_buf_alloc(v->be, (size_t)n * 3 * side * side * f, &s->px));
    XC_TRY(xc_backend_buf_alloc(v->be, (size_t)n * (size_t)in->n_tokens * pp * f, &s->patches));
    XC_TRY(xc_backend_buf_alloc(v->be, rows * W * f, &s->x));
    XC_TRY(xc_backend_buf_alloc(v->be, rows * W * f, &s->a));
    XC_TRY(xc_backend_buf_alloc(v->be, rows * W * f, &s->q));
    XC_TRY(xc_backend_buf_alloc(v->be, rows * W * f, &s->k));
    XC_TRY(xc_backend_buf_alloc(v->be, rows * W * f, &s->v));
    XC_TRY(xc_backend_buf_alloc(v->be, rows * W * f, &s->o));
    XC_TRY(xc_backend_buf_alloc(v->be, rows * (size_t)in->inter * f, &s->f));
    XC_TRY(xc_backend_buf_alloc(v->be, (size_t)n * (size_t)in->n_tokens * W * f, &s->feats));
    XC_TRY(xc_backend_buf_alloc(v->be, (size_t)n * (size_t)in->n_tokens * (size_t)in->out_dim * f,
                                &s->p));
    return XC_OK;
}

static xc_status encode(xc_vision *v, const float *pixels, int n, float *out, float *clip_out,
                        vis_scratch *s) {
    const xc_vision_info *in = &v->info;
    int T = in->n_tokens + 1, rows = n * T, W = in->width;
    size_t side = (size_t)in->img_size;
    float *x = s->x.data, *a = s->a.data;
    XC_TRY(xc_backend_copy_in(v->be, s->px.data, pixels, (size_t)n * 3 * side * side * 4));
    xc_patchify_args pa = {.images = s->px.data,
                           .y = s->patches.data,
                           .n_img = n,
                           .channels = 3,
                           .size = in->img_size,
                           .patch = in->patch};
    XC_TRY(xc_backend_patchify(v->be, &pa));
    static const int32_t zero = 0;
    for (int i = 0; i < n; i++) {
        float *img = x + (size_t)i * (size_t)T * (size_t)W;
        xc_embed_args ce = {.table = v->class_emb.data,
                            .table_dtype = v->class_emb.dtype,
                            .ids = &zero,
                            .y = img,
                            .m = 1,
                            .n = W,
                            .vocab = 1};
        XC_TRY(xc_backend_embed(v->be, &ce));
        const float *pt = (const float *)s->patches.data +
                          (size_t)i * (size_t)in->n_tokens * (size_t)v->patch_w.cols;
        XC_TRY(linear(v, pt, &v->patch_w, NULL, img + W, in->n_tokens, false));
        xc_act_args add = {
            .kind = XC_ACT_ADD, .x = img, .x2 = v->pos.data, .y = img, .m = T, .n = W};
        XC_TRY(xc_backend_act(v->be, &add));
    }
    XC_TRY(layernorm(v, &v->pre_ln_w, &v->pre_ln_b, x, x, rows));

    xc_attn_seq *seqs = xc_malloc((size_t)n * sizeof(xc_attn_seq));
    if (!seqs) {
        return XC_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        seqs[i] = (xc_attn_seq){.q_start = i * T, .n_q = T, .kv_len = T, .kv_start = i * T};
    }
    xc_status st = XC_OK;
    for (int l = 0; l < in->n_layers; l++) {
        const vis_layer *L = &v->layers[l];
        if (v->progress) {
            v->progress(v->progress_user);
        }
        XC_TRY_GOTO(layernorm(v, &L->ln1_w, &L->ln1_b, x, a, rows), st, out);
        XC_TRY_GOTO(linear(v, a, &L->q_w, &L->q_b, s->q.data, rows, false), st, out);
        XC_TRY_GOTO(linear(v, a, &L->k_w, &L->k_b, s->k.data, rows, false), st, out);
        XC_TRY_GOTO(linear(v, a, &L->v_w, &L->v_b, s->v.data, rows, false), st, out);
        xc_attention_args at = {.q = s->q.data,
                                .out = s->o.data,
                                .k = s->k.data,
                                .v = s->v.data,
                                .n_heads = in->n_heads,
                                .n_kv_heads = in->n_heads,
                                .head_dim = CLIP_HEAD_DIM,
                                .scale = 1.0f / sqrtf((float)CLIP_HEAD_DIM),
                                .causal = false,
                                .seqs = seqs,
                                .n_seqs = n};
        XC_TRY_GOTO(xc_backend_attention(v->be, &at), st, out);
        XC_TRY_GOTO(linear(v, s->o.data, &L->o_w, &L->o_b, x, rows, true), st, out);
        XC_TRY_GOTO(layernorm(v, &L->ln2_w, &L->ln2_b, x, a, rows), st, out);
        XC_TRY_GOTO(linear(v, a, &L->fc1_w, &L->fc1_b, s->f.data, rows, false), st, out);
        xc_act_args qg = {
            .kind = XC_ACT_QUICK_GELU, .x = s->f.data, .y = s->f.data, .m = rows, .n = in->inter};
        XC_TRY_GOTO(xc_backend_act(v->be, &qg), st, out);
        XC_TRY_GOTO(linear(v, s->f.data, &L->fc2_w, &L->fc2_b, x, rows, true), st, out);
    }
    /* last layer's output, class token dropped, no post-LayerNorm */
    float *feats = clip_out ? clip_out : s->feats.data;
    for (int i = 0; i < n; i++) {
        xc_copy2d_args c = {.src = x + ((size_t)i * (size_t)T + 1) * (size_t)W,
                            .dst = feats + (size_t)i * (size_t)in->n_tokens * (size_t)W,
                            .m = in->n_tokens,
                            .n = W,
                            .lds = W,
                            .ldd = W};
        XC_TRY_GOTO(xc_backend_copy2d(v->be, &c), st, out);
    }
    int prow = n * in->n_tokens;
    XC_TRY_GOTO(linear(v, feats, &v->proj0_w, &v->proj0_b, s->p.data, prow, false), st, out);
    xc_act_args ge = {
        .kind = XC_ACT_GELU, .x = s->p.data, .y = s->p.data, .m = prow, .n = in->out_dim};
    XC_TRY_GOTO(xc_backend_act(v->be, &ge), st, out);
    XC_TRY_GOTO(linear(v, s->p.data, &v->proj2_w, &v->proj2_b, out, prow, false), st, out);
out:
    xc_free(seqs);
    return st;
}

xc_status xc_vision_encode(xc_vision *v, const float *pixels, int n, float *out, float *clip_out) {
    if (n <= 0 || !pixels || !out) {
        return xc_errf(XC_ERR_ARG, "vision encode: %d images", n);
    }
    /* the scratch is kept between calls (no per-request allocation, which on CUDA would also
     * synchronise the device on every free) and grows to the largest batch seen */
    if (n > v->scratch_images) {
        scratch_free(v, &v->scratch);
        v->scratch_images = 0;
        XC_TRY(scratch_alloc(v, n, &v->scratch));
        v->scratch_images = n;
    }
    return encode(v, pixels, n, out, clip_out, &v->scratch);
}

void xc_vision_set_progress(xc_vision *v, void (*fn)(void *user), void *user) {
    v->progress = fn;
    v->progress_user = user;
}
