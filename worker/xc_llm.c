/* InternLM2 decoder stage with Partial LoRA (PLoRA) on image rows, over the backend vtable.
 *
 * Per layer (pre-norm):  a = RMSNorm(h);  qkv = wqkv(a) [+ PLoRA on image rows];
 *   split the interleaved qkv (per KV group: q_per_kv query heads, one key head, one value head);
 *   RoPE(q, k) at absolute positions; store k, v in the paged cache; o = attention;
 *   h += wo(o) [+ PLoRA];  f = RMSNorm(h);  h += w2(silu(w1 f) * w3 f) [each + PLoRA].
 * The first line up to h += wo(o) is the attention unit, the rest the FFN unit; a stage holds a
 * contiguous run of units and only their tensors.
 * Decode rows carry no image ranges, so no PLoRA runs for them (DESIGN.md, model reference 4.4). */
#include "xc_llm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_log.h"
#include "xc_mem.h"

/* A weight tensor as the backend sees it. */
typedef struct llm_wt {
    const void *data; /* backend memory; NULL = absent */
    xc_dtype dtype;
    int rows, cols; /* (out, in) */
} llm_wt;

/* XC_PLORA (a debug switch for the Partial-LoRA ablation, docs/model.md): image = the adapters on
 * image rows only, as the model is defined; off = never; all = on every row, text and decoded
 * tokens included. Read when a stage is created, so it works in-process and in workers. */
enum { PLORA_IMAGE, PLORA_OFF, PLORA_ALL };

static xc_status plora_mode_from_env(int *mode) {
    const char *v = getenv("XC_PLORA");
    *mode = PLORA_IMAGE;
    if (!v || !*v || !strcmp(v, "image")) {
        return XC_OK;
    }
    if (!strcmp(v, "off")) {
        *mode = PLORA_OFF;
        return XC_OK;
    }
    if (!strcmp(v, "all")) {
        *mode = PLORA_ALL;
        return XC_OK;
    }
    return xc_errf(XC_ERR_ARG, "XC_PLORA '%s': use image (default), off or all", v);
}

/* A projection with its optional PLoRA adapter: y = W x (+ scale * B (A x) on image rows). */
typedef struct llm_proj {
    llm_wt w;
    llm_wt a; /* Plora_A (rank, in) */
    llm_wt b; /* Plora_B (out, rank) */
} llm_proj;

typedef struct llm_layer {
    bool has_attn, has_ffn;     /* which of the layer's two units this stage holds */
    int kv_index;               /* its layer in this stage's KV cache (has_attn) */
    llm_wt attn_norm, ffn_norm; /* (hidden) */
    llm_proj wqkv;              /* ((heads + 2 kv_heads) * head_dim, hidden), interleaved */
    llm_proj wo;                /* (hidden, heads * head_dim) */
    llm_proj w1, w3;            /* (inter, hidden): gate, up */
    llm_proj w2;                /* (hidden, inter): down */
} llm_layer;

struct xc_llm {
    xc_backend *be;
    xc_llm_conf conf;
    void (*progress)(void *user);
    void *progress_user;
    int hidden, inter, n_heads, n_kv, head_dim, vocab;
    int unit_begin, unit_end; /* half-layer units held */
    int layer0, n_layers;     /* layers touched: [layer0, layer0 + n_layers) */
    int n_kv_layers;          /* attention units held */
    int q_per_kv, qkv_width, kv_width;
    float eps, theta, plora_scale;
    int plora_mode; /* XC_PLORA: PLORA_IMAGE (the model), PLORA_OFF, PLORA_ALL (ablations) */
    int max_pos;    /* positions must stay below this (dynamic NTK is a no-op below it) */
    llm_wt embed;   /* (vocab, hidden), first stage */
    llm_wt norm;    /* (hidden), last stage */
    llm_wt output;  /* (vocab, hidden), last stage */
    llm_layer *layers;
    xc_buf *bufs; /* every weight buffer, for freeing */
    int n_bufs, cap_bufs;
    size_t weight_bytes;
    /* scratch, backend memory, max_rows rows each */
    xc_buf s_a, s_qkv, s_q, s_k, s_v, s_attn, s_g, s_u;
};

/* ---- loading ---- */

static xc_status keep_buf(xc_llm *m, xc_buf b) {
    if (m->n_bufs == m->cap_bufs) {
        int cap = m->cap_bufs ? m->cap_bufs * 2 : 64;
        xc_buf *nb = xc_realloc(m->bufs, (size_t)cap * sizeof(xc_buf));
        if (!nb) {
            return XC_ERR_NOMEM;
        }
        m->bufs = nb;
        m->cap_bufs = cap;
    }
    m->bufs[m->n_bufs++] = b;
    return XC_OK;
}

/* Loads a 1-D or 2-D tensor with the expected shape (rows = -1 / cols = -1: any). */
static xc_status load_wt(xc_llm *m, xc_ckpt *ck, const char *name, int64_t rows, int64_t cols,
                         llm_wt *out) {
    xc_tensor_view tv;
    int64_t shape[2] = {rows, cols};
    XC_TRY(xc_ckpt_get_shaped(ck, name, cols == 0 ? 1 : 2, shape, &tv));
    xc_buf b;
    XC_TRY(xc_backend_weights(m->be, tv.data, tv.nbytes, &b));
    xc_status st = keep_buf(m, b);
    if (st != XC_OK) {
        xc_backend_buf_free(m->be, &b);
        return st;
    }
    out->data = b.data;
    out->dtype = tv.dtype;
    out->rows = (int)tv.shape[0];
    out->cols = cols == 0 ? 1 : (int)tv.shape[1];
    m->weight_bytes += tv.nbytes;
    return XC_OK;
}

/* Loads prefix.weight and, when present, prefix.Plora_A.weight / prefix.Plora_B.weight. */
static xc_status load_proj(xc_llm *m, xc_ckpt *ck, const char *prefix, int out_dim, int in_dim,
                           llm_proj *p) {
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    XC_TRY(load_wt(m, ck, name, out_dim, in_dim, &p->w));
    snprintf(name, sizeof name, "%s.Plora_A.weight", prefix);
    if (!xc_ckpt_has(ck, name)) {
        return XC_OK;
    }
    XC_TRY(load_wt(m, ck, name, -1, in_dim, &p->a));
    snprintf(name, sizeof name, "%s.Plora_B.weight", prefix);
    XC_TRY(load_wt(m, ck, name, out_dim, p->a.rows, &p->b));
    if (p->a.dtype != p->b.dtype) {
        return xc_errf(XC_ERR_UNSUPPORTED, "%s: Plora_A and Plora_B have different dtypes", prefix);
    }
    return XC_OK;
}

static xc_status alloc_scratch(xc_llm *m) {
    size_t rows = (size_t)m->conf.max_rows, f = sizeof(float);
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)m->hidden * f, &m->s_a));
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)m->qkv_width * f, &m->s_qkv));
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)(m->n_heads * m->head_dim) * f, &m->s_q));
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)m->kv_width * f, &m->s_k));
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)m->kv_width * f, &m->s_v));
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)(m->n_heads * m->head_dim) * f, &m->s_attn));
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)m->inter * f, &m->s_g));
    XC_TRY(xc_backend_buf_alloc(m->be, rows * (size_t)m->inter * f, &m->s_u));
    return XC_OK;
}

xc_status xc_llm_create(xc_backend *be, xc_ckpt *ck, const xc_model_config *cfg,
                        const xc_llm_conf *conf, xc_llm **out) {
    int ub, ue;
    if (conf->unit_end > 0) {
        ub = conf->unit_begin;
        ue = conf->unit_end;
        if (ub < 0 || ue > 2 * cfg->num_hidden_layers || ub > ue) {
            return xc_errf(XC_ERR_ARG,
                           "stage units [%d, %d) outside the model's %d units (%d layers)", ub, ue,
                           2 * cfg->num_hidden_layers, cfg->num_hidden_layers);
        }
    } else {
        if (conf->layer_begin < 0 || conf->layer_end > cfg->num_hidden_layers ||
            conf->layer_begin > conf->layer_end) {
            return xc_errf(XC_ERR_ARG, "stage layers [%d, %d) outside the model's %d layers",
                           conf->layer_begin, conf->layer_end, cfg->num_hidden_layers);
        }
        ub = 2 * conf->layer_begin;
        ue = 2 * conf->layer_end;
    }
    if (conf->max_rows <= 0) {
        return xc_errf(XC_ERR_ARG, "stage max_rows must be positive");
    }
    if (cfg->rope_scaling_type[0] && strcmp(cfg->rope_scaling_type, "dynamic") != 0 &&
        cfg->rope_scaling_factor != 1.0f) {
        return xc_errf(XC_ERR_UNSUPPORTED, "rope_scaling %s with factor %g is not supported",
                       cfg->rope_scaling_type, cfg->rope_scaling_factor);
    }
    xc_status st = XC_OK;
    xc_llm *m = xc_calloc(1, sizeof *m);
    if (!m) {
        return XC_ERR_NOMEM;
    }
    m->be = be;
    m->conf = *conf;
    m->hidden = cfg->hidden_size;
    m->inter = cfg->intermediate_size;
    m->n_heads = cfg->num_attention_heads;
    m->n_kv = cfg->num_key_value_heads;
    m->head_dim = cfg->head_dim;
    m->vocab = cfg->vocab_size;
    m->q_per_kv = m->n_heads / m->n_kv;
    m->qkv_width = (m->n_heads + 2 * m->n_kv) * m->head_dim;
    m->kv_width = m->n_kv * m->head_dim;
    m->eps = cfg->rms_norm_eps;
    m->theta = cfg->rope_theta;
    m->plora_scale = conf->plora_scale > 0 ? conf->plora_scale : 1.0f;
    XC_TRY_GOTO(plora_mode_from_env(&m->plora_mode), st, fail);
    m->max_pos = cfg->max_position_embeddings;
    m->unit_begin = ub;
    m->unit_end = ue;
    m->layer0 = ub / 2;
    m->n_layers = ub < ue ? (ue + 1) / 2 - ub / 2 : 0;
    if (m->n_layers > 0) {
        m->layers = xc_calloc((size_t)m->n_layers, sizeof(llm_layer));
        if (!m->layers) {
            st = XC_ERR_NOMEM;
            goto fail;
        }
    }
    if (conf->first) {
        XC_TRY_GOTO(load_wt(m, ck, "model.tok_embeddings.weight", m->vocab, m->hidden, &m->embed),
                    st, fail);
    }
    for (int i = 0; i < m->n_layers; i++) {
        int l = m->layer0 + i;
        llm_layer *L = &m->layers[i];
        L->has_attn = 2 * l >= ub && 2 * l < ue;
        L->has_ffn = 2 * l + 1 >= ub && 2 * l + 1 < ue;
        char p[192];
        if (L->has_attn) {
            L->kv_index = m->n_kv_layers++;
            snprintf(p, sizeof p, "model.layers.%d.attention_norm.weight", l);
            XC_TRY_GOTO(load_wt(m, ck, p, m->hidden, 0, &L->attn_norm), st, fail);
            snprintf(p, sizeof p, "model.layers.%d.attention.wqkv", l);
            XC_TRY_GOTO(load_proj(m, ck, p, m->qkv_width, m->hidden, &L->wqkv), st, fail);
            snprintf(p, sizeof p, "model.layers.%d.attention.wo", l);
            XC_TRY_GOTO(load_proj(m, ck, p, m->hidden, m->n_heads * m->head_dim, &L->wo), st, fail);
        }
        if (!L->has_ffn) {
            continue;
        }
        snprintf(p, sizeof p, "model.layers.%d.ffn_norm.weight", l);
        XC_TRY_GOTO(load_wt(m, ck, p, m->hidden, 0, &L->ffn_norm), st, fail);
        snprintf(p, sizeof p, "model.layers.%d.feed_forward.w1", l);
        XC_TRY_GOTO(load_proj(m, ck, p, m->inter, m->hidden, &L->w1), st, fail);
        snprintf(p, sizeof p, "model.layers.%d.feed_forward.w3", l);
        XC_TRY_GOTO(load_proj(m, ck, p, m->inter, m->hidden, &L->w3), st, fail);
        snprintf(p, sizeof p, "model.layers.%d.feed_forward.w2", l);
        XC_TRY_GOTO(load_proj(m, ck, p, m->hidden, m->inter, &L->w2), st, fail);
    }
    if (conf->last) {
        XC_TRY_GOTO(load_wt(m, ck, "model.norm.weight", m->hidden, 0, &m->norm), st, fail);
        XC_TRY_GOTO(load_wt(m, ck, "output.weight", m->vocab, m->hidden, &m->output), st, fail);
    }
    XC_TRY_GOTO(alloc_scratch(m), st, fail);
    *out = m;
    return XC_OK;
fail:
    xc_llm_destroy(m);
    return st;
}

void xc_llm_destroy(xc_llm *m) {
    if (!m) {
        return;
    }
    for (int i = 0; i < m->n_bufs; i++) {
        xc_backend_buf_free(m->be, &m->bufs[i]);
    }
    xc_buf *scratch[] = {&m->s_a, &m->s_qkv,  &m->s_q, &m->s_k,
                         &m->s_v, &m->s_attn, &m->s_g, &m->s_u};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++) {
        xc_backend_buf_free(m->be, scratch[i]);
    }
    xc_free(m->bufs);
    xc_free(m->layers);
    xc_free(m);
}

int xc_llm_hidden(const xc_llm *m) {
    return m->hidden;
}

int xc_llm_vocab(const xc_llm *m) {
    return m->vocab;
}

int xc_llm_kv_width(const xc_llm *m) {
    return m->kv_width;
}

int xc_llm_n_layers(const xc_llm *m) {
    return m->n_layers;
}

int xc_llm_n_kv_layers(const xc_llm *m) {
    return m->n_kv_layers;
}

int xc_llm_plora_rank(const xc_llm *m) {
    for (int i = 0; i < m->n_layers; i++) {
        if (m->layers[i].has_attn) {
            return m->layers[i].wqkv.a.data ? m->layers[i].wqkv.a.rows : 0;
        }
    }
    return 0;
}

size_t xc_llm_weight_bytes(const xc_llm *m) {
    return m->weight_bytes;
}

/* ---- forward ---- */

/* Per-forward host-side bookkeeping derived from the batch. */
typedef struct llm_plan {
    int32_t *pos;      /* (n_rows) absolute positions */
    int32_t *slots;    /* (n_rows) cache slots */
    xc_row_range *img; /* image ranges in batch rows */
    int n_img;
    xc_attn_seq *aseqs; /* (n_seqs) */
} llm_plan;

static void plan_free(llm_plan *p) {
    xc_free(p->pos);
    xc_free(p->slots);
    xc_free(p->img);
    xc_free(p->aseqs);
}

/* kv may be NULL for a stage without layers: then no cache slots are computed. */
static xc_status plan_make(const xc_llm *m, const xc_llm_batch *b, const xc_kv_cache *kv,
                           llm_plan *p) {
    int block_size = kv ? xc_kv_block_size(kv) : 0, n_blocks = kv ? xc_kv_n_blocks(kv) : 0;
    memset(p, 0, sizeof *p);
    int n_img = 0, rows = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const xc_llm_seq *q = &b->seqs[s];
        if (q->n_tokens <= 0 || q->pos0 < 0) {
            return xc_errf(XC_ERR_ARG, "sequence %d: %d tokens at position %d", s, q->n_tokens,
                           q->pos0);
        }
        if ((int64_t)q->pos0 + q->n_tokens > m->max_pos) {
            return xc_errf(XC_ERR_ARG, "sequence %d: position %d is past the model's %d positions",
                           s, q->pos0 + q->n_tokens - 1, m->max_pos);
        }
        int prev_end = 0;
        for (int r = 0; r < q->n_img; r++) {
            if (q->img[r].start < prev_end || q->img[r].end <= q->img[r].start ||
                q->img[r].end > q->n_tokens) {
                return xc_errf(XC_ERR_ARG, "sequence %d: image range %d [%d, %d) is invalid", s, r,
                               q->img[r].start, q->img[r].end);
            }
            prev_end = q->img[r].end;
        }
        n_img += q->n_img;
        rows += q->n_tokens;
    }
    if (rows != b->n_rows || rows > m->conf.max_rows || b->n_seqs <= 0) {
        return xc_errf(XC_ERR_ARG, "batch of %d rows in %d sequences (stage limit %d rows)", rows,
                       b->n_seqs, m->conf.max_rows);
    }
    p->pos = xc_malloc((size_t)rows * sizeof(int32_t));
    p->slots = xc_malloc((size_t)rows * sizeof(int32_t));
    p->aseqs = xc_calloc((size_t)b->n_seqs, sizeof(xc_attn_seq));
    p->img = n_img ? xc_malloc((size_t)n_img * sizeof(xc_row_range)) : NULL;
    if (!p->pos || !p->slots || !p->aseqs || (n_img && !p->img)) {
        plan_free(p);
        return XC_ERR_NOMEM;
    }
    int row = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const xc_llm_seq *q = &b->seqs[s];
        if (kv && !q->block_table) {
            plan_free(p);
            return xc_errf(XC_ERR_ARG, "sequence %d has no block table", s);
        }
        for (int i = 0; i < q->n_tokens; i++) {
            int pos = q->pos0 + i;
            p->pos[row + i] = pos;
            if (!kv) {
                p->slots[row + i] = -1;
                continue;
            }
            int32_t blk = q->block_table[pos / block_size];
            if (blk < 0 || blk >= n_blocks) {
                plan_free(p);
                return xc_errf(XC_ERR_ARG, "sequence %d: block %d is outside the cache", s, blk);
            }
            p->slots[row + i] = blk * block_size + pos % block_size;
        }
        for (int r = 0; r < q->n_img; r++) {
            p->img[p->n_img++] = (xc_row_range){row + q->img[r].start, row + q->img[r].end};
        }
        p->aseqs[s] = (xc_attn_seq){.q_start = row,
                                    .n_q = q->n_tokens,
                                    .kv_len = q->pos0 + q->n_tokens,
                                    .block_table = q->block_table};
        row += q->n_tokens;
    }
    return XC_OK;
}

/* y (m, out) = x (m, in) @ W^T [+ y] and, on image rows only, y += scale * B (A x). */
static xc_status run_proj(xc_llm *m, const llm_proj *p, const float *x, float *y, int rows,
                          bool accumulate, const llm_plan *plan) {
    xc_matmul_args mm = {.x = x,
                         .w = p->w.data,
                         .w_dtype = p->w.dtype,
                         .y = y,
                         .m = rows,
                         .n = p->w.rows,
                         .k = p->w.cols,
                         .alpha = 1.0f,
                         .accumulate = accumulate};
    XC_TRY(xc_backend_matmul(m->be, &mm));
    const xc_row_range every = {0, rows};
    const xc_row_range *ranges = m->plora_mode == PLORA_ALL ? &every : plan->img;
    int n_ranges = m->plora_mode == PLORA_ALL ? 1 : m->plora_mode == PLORA_OFF ? 0 : plan->n_img;
    if (p->a.data && n_ranges > 0) {
        xc_plora_args pl = {.x = x,
                            .a = p->a.data,
                            .b = p->b.data,
                            .ab_dtype = p->a.dtype,
                            .y = y,
                            .m = rows,
                            .n = p->w.rows,
                            .k = p->w.cols,
                            .rank = p->a.rows,
                            .scale = m->plora_scale,
                            .ranges = ranges,
                            .n_ranges = n_ranges};
        XC_TRY(xc_backend_plora(m->be, &pl));
    }
    return XC_OK;
}

static xc_status rmsnorm(xc_llm *m, const llm_wt *w, const float *x, float *y, int rows) {
    xc_norm_args a = {.x = x,
                      .y = y,
                      .w = w->data,
                      .wb_dtype = w->dtype,
                      .m = rows,
                      .n = m->hidden,
                      .eps = m->eps};
    return xc_backend_rmsnorm(m->be, &a);
}

static xc_status copy_cols(xc_llm *m, const float *src, int lds, float *dst, int ldd, int rows,
                           int cols) {
    xc_copy2d_args c = {.src = src, .dst = dst, .m = rows, .n = cols, .lds = lds, .ldd = ldd};
    return xc_backend_copy2d(m->be, &c);
}

/* Moves each sequence's last row of buf (rows of width floats) to row s, in sequence order
 * (row s <= that row, and earlier rows are read before they are overwritten). */
static xc_status gather_last_rows(xc_llm *m, const xc_llm_batch *b, float *buf, int width) {
    int row = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        row += b->seqs[s].n_tokens;
        if (row - 1 != s) {
            XC_TRY(copy_cols(m, buf + (size_t)(row - 1) * (size_t)width, width,
                             buf + (size_t)s * (size_t)width, width, 1, width));
        }
    }
    return XC_OK;
}

/* Unit 2l: h += wo(attention(RoPE(wqkv(RMSNorm(h))))), storing k, v in KV layer li. With cb (the
 * batch) and cplan, every row's k and v are stored but only each sequence's last row is a query
 * (cplan's aseqs), its attention output and h are gathered to rows 0 .. n_seqs - 1, and wo runs
 * on those n_seqs rows with cplan's image ranges. */
static xc_status attn_forward(xc_llm *m, const llm_layer *L, float *h, int li, xc_kv_cache *kv,
                              const llm_plan *plan, int rows, int n_seqs, const xc_llm_batch *cb,
                              const llm_plan *cplan) {
    float *a = m->s_a.data, *qkv = m->s_qkv.data, *q = m->s_q.data, *k = m->s_k.data,
          *v = m->s_v.data, *o = m->s_attn.data;
    int hd = m->head_dim, qw = m->n_heads * hd;

    XC_TRY(rmsnorm(m, &L->attn_norm, h, a, rows));
    XC_TRY(run_proj(m, &L->wqkv, a, qkv, rows, false, plan));
    /* De-interleave: KV group j holds [q_per_kv query heads | key head | value head]. */
    int gw = (m->q_per_kv + 2) * hd;
    for (int j = 0; j < m->n_kv; j++) {
        const float *grp = qkv + (size_t)j * (size_t)gw;
        XC_TRY(copy_cols(m, grp, m->qkv_width, q + (size_t)j * m->q_per_kv * hd, qw, rows,
                         m->q_per_kv * hd));
        XC_TRY(copy_cols(m, grp + m->q_per_kv * hd, m->qkv_width, k + (size_t)j * hd, m->kv_width,
                         rows, hd));
        XC_TRY(copy_cols(m, grp + (m->q_per_kv + 1) * hd, m->qkv_width, v + (size_t)j * hd,
                         m->kv_width, rows, hd));
    }
    xc_rope_args rq = {.x = q,
                       .pos = plan->pos,
                       .m = rows,
                       .n_heads = m->n_heads,
                       .head_dim = hd,
                       .theta = m->theta};
    XC_TRY(xc_backend_rope(m->be, &rq));
    xc_rope_args rk = {
        .x = k, .pos = plan->pos, .m = rows, .n_heads = m->n_kv, .head_dim = hd, .theta = m->theta};
    XC_TRY(xc_backend_rope(m->be, &rk));
    int n_slots = xc_kv_n_blocks(kv) * xc_kv_block_size(kv);
    xc_kv_store_args ks = {.k = k,
                           .v = v,
                           .k_cache = xc_kv_k(kv, li),
                           .v_cache = xc_kv_v(kv, li),
                           .slots = plan->slots,
                           .m = rows,
                           .width = m->kv_width,
                           .n_slots = n_slots,
                           .cache_dtype = xc_kv_dtype(kv)};
    XC_TRY(xc_backend_kv_store(m->be, &ks));
    xc_attention_args at = {.q = q,
                            .out = o,
                            .k = xc_kv_k(kv, li),
                            .v = xc_kv_v(kv, li),
                            .n_heads = m->n_heads,
                            .n_kv_heads = m->n_kv,
                            .head_dim = hd,
                            .block_size = xc_kv_block_size(kv),
                            .scale = 1.0f / sqrtf((float)hd),
                            .causal = true,
                            .seqs = cplan ? cplan->aseqs : plan->aseqs,
                            .n_seqs = n_seqs,
                            .kv_dtype = xc_kv_dtype(kv)};
    XC_TRY(xc_backend_attention(m->be, &at));
    if (cplan) {
        XC_TRY(gather_last_rows(m, cb, o, qw));
        XC_TRY(gather_last_rows(m, cb, h, m->hidden));
        rows = n_seqs;
        plan = cplan;
    }
    XC_TRY(run_proj(m, &L->wo, o, h, rows, true, plan)); /* h += wo(o) */
    return XC_OK;
}

/* Unit 2l+1: h += w2(silu(w1 f) * w3 f) with f = RMSNorm(h). */
static xc_status ffn_forward(xc_llm *m, const llm_layer *L, float *h, int rows,
                             const llm_plan *plan) {
    float *a = m->s_a.data, *g = m->s_g.data, *u = m->s_u.data;
    XC_TRY(rmsnorm(m, &L->ffn_norm, h, a, rows));
    XC_TRY(run_proj(m, &L->w1, a, g, rows, false, plan));
    XC_TRY(run_proj(m, &L->w3, a, u, rows, false, plan));
    xc_act_args sw = {.kind = XC_ACT_SILU_MUL, .x = g, .x2 = u, .y = g, .m = rows, .n = m->inter};
    XC_TRY(xc_backend_act(m->be, &sw));
    XC_TRY(run_proj(m, &L->w2, g, h, rows, true, plan)); /* h += w2(...) */
    return XC_OK;
}

static xc_status embed_rows(xc_llm *m, const xc_llm_batch *b, const llm_plan *plan, float *h) {
    int32_t *ids = xc_malloc((size_t)b->n_rows * sizeof(int32_t));
    if (!ids) {
        return XC_ERR_NOMEM;
    }
    memcpy(ids, b->ids, (size_t)b->n_rows * sizeof(int32_t));
    for (int r = 0; r < plan->n_img; r++) {
        for (int i = plan->img[r].start; i < plan->img[r].end; i++) {
            ids[i] = 0; /* placeholder rows; overwritten by the image embeddings below */
        }
    }
    xc_embed_args e = {.table = m->embed.data,
                       .table_dtype = m->embed.dtype,
                       .ids = ids,
                       .y = h,
                       .m = b->n_rows,
                       .n = m->hidden,
                       .vocab = m->vocab};
    xc_status st = xc_backend_embed(m->be, &e);
    xc_free(ids);
    XC_TRY(st);
    if (plan->n_img > 0 && !b->img_embeds) {
        return xc_errf(XC_ERR_ARG, "batch has image rows but no image embeddings");
    }
    size_t src_row = 0;
    for (int r = 0; r < plan->n_img; r++) {
        int n = plan->img[r].end - plan->img[r].start;
        XC_TRY(copy_cols(m, b->img_embeds + src_row * (size_t)m->hidden, m->hidden,
                         h + (size_t)plan->img[r].start * (size_t)m->hidden, m->hidden, n,
                         m->hidden));
        src_row += (size_t)n;
    }
    return XC_OK;
}

/* compacted: h already holds each sequence's last row in rows 0 .. n_seqs - 1. */
static xc_status head_forward(xc_llm *m, const xc_llm_batch *b, float *h, float *logits,
                              bool compacted) {
    XC_TRY(rmsnorm(m, &m->norm, h, h, compacted ? b->n_seqs : b->n_rows));
    const float *x = h;
    int rows = compacted ? b->n_seqs : b->n_rows;
    if (!b->all_logits && !compacted) {
        /* gather each sequence's last row; the head GEMM is batch-invariant either way */
        float *a = m->s_a.data;
        int row = 0;
        for (int s = 0; s < b->n_seqs; s++) {
            row += b->seqs[s].n_tokens;
            XC_TRY(copy_cols(m, h + (size_t)(row - 1) * (size_t)m->hidden, m->hidden,
                             a + (size_t)s * (size_t)m->hidden, m->hidden, 1, m->hidden));
        }
        x = a;
        rows = b->n_seqs;
    }
    xc_matmul_args mm = {.x = x,
                         .w = m->output.data,
                         .w_dtype = m->output.dtype,
                         .y = logits,
                         .m = rows,
                         .n = m->vocab,
                         .k = m->hidden,
                         .alpha = 1.0f};
    return xc_backend_matmul(m->be, &mm);
}

xc_status xc_llm_forward(xc_llm *m, xc_kv_cache *kv, const xc_llm_batch *b, float *hidden,
                         float *logits) {
    if (!b || !b->seqs || !hidden || (m->conf.first && !b->ids) || (m->conf.last && !logits)) {
        return xc_errf(XC_ERR_ARG, "llm forward: missing batch, ids, hidden or logits");
    }
    if (m->n_kv_layers > 0 && !kv) {
        return xc_errf(XC_ERR_ARG, "llm forward: stage has attention blocks but no KV cache");
    }
    llm_plan plan;
    xc_status st = XC_OK;
    XC_TRY(plan_make(m, b, m->n_kv_layers > 0 ? kv : NULL, &plan));
    /* Last rows only: only each sequence's last row feeds the head, so the final layer's
     * attention takes that row alone as its query (every row's keys and values are still
     * computed and cached), and wo, the FFN and the head run on those rows alone, gathered to
     * rows 0 .. n_seqs - 1 (attention and GEMMs are batch-invariant, so the logits are the same
     * bits). cplan carries their image ranges for PLoRA and their attention queries. */
    bool compact = m->conf.last && b->last_rows_only && !b->all_logits && m->n_layers > 0 &&
                   b->n_seqs < b->n_rows;
    llm_plan cplan = plan;
    xc_row_range *cimg = NULL;
    xc_attn_seq *cseqs = NULL;
    if (compact) {
        cimg = xc_malloc((size_t)b->n_seqs * sizeof(xc_row_range));
        cseqs = xc_malloc((size_t)b->n_seqs * sizeof(xc_attn_seq));
        if (!cimg || !cseqs) {
            st = XC_ERR_NOMEM;
            goto out;
        }
        cplan.img = cimg;
        cplan.n_img = 0;
        cplan.aseqs = cseqs;
        int row = 0;
        for (int s = 0; s < b->n_seqs; s++) {
            /* the final attention's queries: each sequence's last row alone (the same keys, so
             * the same bits for that row; the others' outputs would never be read) */
            cseqs[s] = plan.aseqs[s];
            cseqs[s].q_start += cseqs[s].n_q - 1;
            cseqs[s].n_q = 1;
            row += b->seqs[s].n_tokens;
            bool in_img = false;
            for (int r = 0; r < plan.n_img && !in_img; r++) {
                in_img = row - 1 >= plan.img[r].start && row - 1 < plan.img[r].end;
            }
            if (!in_img) {
                continue;
            }
            if (cplan.n_img > 0 && cimg[cplan.n_img - 1].end == s) {
                cimg[cplan.n_img - 1].end = s + 1;
            } else {
                cimg[cplan.n_img++] = (xc_row_range){s, s + 1};
            }
        }
    }
    if (m->conf.first) {
        XC_TRY_GOTO(embed_rows(m, b, &plan, hidden), st, out);
    }
    int rows = b->n_rows;
    const llm_plan *rp = &plan;
    for (int i = 0; i < m->n_layers; i++) {
        const llm_layer *L = &m->layers[i];
        bool cut = compact && i == m->n_layers - 1;
        if (L->has_attn) {
            XC_TRY_GOTO(attn_forward(m, L, hidden, L->kv_index, kv, &plan, b->n_rows, b->n_seqs, b,
                                     cut ? &cplan : NULL),
                        st, out);
            if (cut) {
                rows = b->n_seqs;
                rp = &cplan;
            }
        }
        if (m->progress) {
            m->progress(m->progress_user);
        }
        if (L->has_ffn) {
            if (cut && rows != b->n_seqs) {
                XC_TRY_GOTO(gather_last_rows(m, b, hidden, m->hidden), st, out);
                rows = b->n_seqs;
                rp = &cplan;
            }
            XC_TRY_GOTO(ffn_forward(m, L, hidden, rows, rp), st, out);
        }
    }
    if (m->conf.last) {
        XC_TRY_GOTO(head_forward(m, b, hidden, logits, compact), st, out);
    }
out:
    xc_free(cimg);
    xc_free(cseqs);
    plan_free(&plan);
    return st;
}

void xc_llm_set_progress(xc_llm *m, void (*fn)(void *user), void *user) {
    m->progress = fn;
    m->progress_user = user;
}
