/* Single-process generation over in-process decoder stages sharing one block table. */
#include "xc_engine.h"

#include <stdio.h>
#include <string.h>

#include "xc_ckpt.h"
#include "xc_kv.h"
#include "xc_llm.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_model_config.h"

struct xc_engine {
    xc_engine_conf conf;
    xc_backend *be;
    xc_ckpt *ck;
    xc_model_config cfg;
    xc_vision *vision;
    int n_stages;
    xc_llm *stages[XC_ENGINE_MAX_STAGES];
    xc_kv_cache *kv[XC_ENGINE_MAX_STAGES];
    xc_block_pool *pool;
    int max_ctx;      /* prompt + reply at most: max_position_embeddings (or conf) */
    int prompt_limit; /* a longer prompt is refused: config max_length */
    int chunk, block_size, n_blocks;
    xc_dtype kv_dtype; /* element type of the KV caches (--kv-dtype) */
    xc_buf hidden;     /* (chunk, hidden) */
    xc_buf logits;     /* (chunk, vocab) */
};

xc_status xc_engine_create(const xc_engine_conf *conf, xc_engine **out) {
    xc_status st = XC_OK;
    xc_engine *e = xc_calloc(1, sizeof *e);
    if (!e) {
        return XC_ERR_NOMEM;
    }
    e->conf = *conf;
    e->kv_dtype = XC_DTYPE_BF16;
    if (conf->kv_dtype) {
        XC_TRY_GOTO(xc_kv_dtype_parse(conf->kv_dtype, &e->kv_dtype), st, fail);
    }
    XC_TRY_GOTO(xc_model_config_load(conf->model_dir, &e->cfg), st, fail);
    XC_TRY_GOTO(xc_ckpt_open(conf->weights ? conf->weights : conf->model_dir, &e->ck), st, fail);
    xc_backend_conf bc = {.n_threads = conf->n_threads};
    XC_TRY_GOTO(xc_backend_create(conf->backend ? conf->backend : "cpu", &bc, &e->be), st, fail);

    int L = e->cfg.num_hidden_layers;
    e->n_stages = conf->n_stages > 0 ? conf->n_stages : 1;
    if (e->n_stages > XC_ENGINE_MAX_STAGES || e->n_stages > (conf->unit_cuts ? 2 * L : L)) {
        st = xc_errf(XC_ERR_ARG, "%d stages for a model of %d layers", e->n_stages, L);
        goto fail;
    }
    /* The original chat() cuts the prompt to max_length and generates up to
     * max_position_embeddings (the dynamic-NTK RoPE only changes anything past that position,
     * which no sequence reaches here). xcpipe refuses a longer prompt instead of cutting it. */
    int mpe = e->cfg.max_position_embeddings;
    e->max_ctx = conf->max_context > 0 && conf->max_context < mpe ? conf->max_context : mpe;
    e->prompt_limit = e->cfg.max_length < e->max_ctx ? e->cfg.max_length : e->max_ctx;
    e->chunk = conf->chunk > 0 ? conf->chunk : 256;
    e->block_size = conf->block_size > 0 ? conf->block_size : 16;
    /* KV for max_length positions at first; a longer sequence grows it (kv_reserve) */
    e->n_blocks = (e->prompt_limit + e->block_size - 1) / e->block_size;

    /* stage boundaries in half-layer units (unit 2l = attention of layer l, 2l+1 its FFN) */
    int begin = 0, U = 2 * L;
    for (int s = 0; s < e->n_stages; s++) {
        int end = (s == e->n_stages - 1) ? U
                  : conf->unit_cuts      ? conf->unit_cuts[s]
                  : conf->cuts           ? 2 * conf->cuts[s]
                                         : 2 * (int)((long)L * (s + 1) / e->n_stages);
        if (end <= begin || end > U) {
            st = xc_errf(XC_ERR_ARG, "stage %d would hold units [%d, %d) of %d", s, begin, end, U);
            goto fail;
        }
        xc_llm_conf lc = {.unit_begin = begin,
                          .unit_end = end,
                          .first = s == 0,
                          .last = s == e->n_stages - 1,
                          .max_rows = e->chunk};
        XC_TRY_GOTO(xc_llm_create(e->be, e->ck, &e->cfg, &lc, &e->stages[s]), st, fail);
        XC_TRY_GOTO(xc_kv_create(e->be, xc_llm_n_kv_layers(e->stages[s]), e->n_blocks,
                                 e->block_size, xc_llm_kv_width(e->stages[s]), e->kv_dtype,
                                 &e->kv[s]),
                    st, fail);
        begin = end;
    }
    XC_TRY_GOTO(xc_block_pool_create(e->n_blocks, &e->pool), st, fail);
    if (!conf->no_vision && e->cfg.img_size > 0 &&
        xc_ckpt_has(e->ck, "vit.vision_tower.vision_model.embeddings.class_embedding")) {
        XC_TRY_GOTO(xc_vision_create(e->be, e->ck, &e->cfg, &e->vision), st, fail);
    }
    size_t f = sizeof(float);
    XC_TRY_GOTO(
        xc_backend_buf_alloc(e->be, (size_t)e->chunk * (size_t)e->cfg.hidden_size * f, &e->hidden),
        st, fail);
    XC_TRY_GOTO(
        xc_backend_buf_alloc(e->be, (size_t)e->chunk * (size_t)e->cfg.vocab_size * f, &e->logits),
        st, fail);
    *out = e;
    return XC_OK;
fail:
    xc_engine_destroy(e);
    return st;
}

void xc_engine_destroy(xc_engine *e) {
    if (!e) {
        return;
    }
    if (e->be) {
        xc_backend_buf_free(e->be, &e->hidden);
        xc_backend_buf_free(e->be, &e->logits);
    }
    for (int s = 0; s < e->n_stages && s < XC_ENGINE_MAX_STAGES; s++) {
        xc_llm_destroy(e->stages[s]);
        xc_kv_destroy(e->kv[s]);
    }
    xc_vision_destroy(e->vision);
    xc_block_pool_destroy(e->pool);
    xc_backend_destroy(e->be);
    xc_ckpt_close(e->ck);
    xc_free(e);
}

int xc_engine_vocab(const xc_engine *e) {
    return e->cfg.vocab_size;
}

int xc_engine_hidden(const xc_engine *e) {
    return e->cfg.hidden_size;
}

int xc_engine_n_layers(const xc_engine *e) {
    return e->cfg.num_hidden_layers;
}

int xc_engine_max_context(const xc_engine *e) {
    return e->max_ctx;
}

int xc_engine_max_prompt(const xc_engine *e) {
    return e->prompt_limit;
}

/* Makes the KV caches hold at least n_blocks blocks (no sequence may be live: the engine runs
 * one at a time and frees its blocks at the end). */
static xc_status kv_reserve(xc_engine *e, int n_blocks) {
    if (n_blocks <= e->n_blocks && e->pool) {
        return XC_OK;
    }
    for (int s = 0; s < e->n_stages; s++) {
        xc_kv_destroy(e->kv[s]);
        e->kv[s] = NULL;
    }
    xc_block_pool_destroy(e->pool);
    e->pool = NULL;
    e->n_blocks = 0; /* until every cache exists: a failure is retried by the next call */
    for (int s = 0; s < e->n_stages; s++) {
        XC_TRY(xc_kv_create(e->be, xc_llm_n_kv_layers(e->stages[s]), n_blocks, e->block_size,
                            xc_llm_kv_width(e->stages[s]), e->kv_dtype, &e->kv[s]));
    }
    XC_TRY(xc_block_pool_create(n_blocks, &e->pool));
    e->n_blocks = n_blocks;
    return XC_OK;
}

const xc_vision_info *xc_engine_vision_info(const xc_engine *e) {
    return e->vision ? xc_vision_get_info(e->vision) : NULL;
}

/* ---- one sequence's life ---- */

typedef struct eng_seq {
    int32_t *blocks;
    int n_blocks;
    xc_buf img; /* (n_img * n_tokens, hidden) image embeddings, backend memory */
} eng_seq;

static void seq_release(xc_engine *e, eng_seq *s) {
    if (s->n_blocks > 0) {
        xc_block_pool_free(e->pool, s->blocks, s->n_blocks);
    }
    xc_free(s->blocks);
    xc_backend_buf_free(e->be, &s->img);
    memset(s, 0, sizeof *s);
}

static xc_status check_prompt(const xc_engine *e, const xc_prompt *p, int extra) {
    if (!p->ids || p->n <= 0) {
        return xc_errf(XC_ERR_ARG, "empty prompt");
    }
    if (p->n > e->prompt_limit) {
        return xc_errf(XC_ERR_ARG,
                       "prompt of %d rows is longer than max_length %d (the original chat() "
                       "would cut it; xcpipe refuses)",
                       p->n, e->prompt_limit);
    }
    if ((long)p->n + extra > e->max_ctx) {
        return xc_errf(XC_ERR_ARG, "prompt of %d tokens + %d new exceeds the context of %d", p->n,
                       extra, e->max_ctx);
    }
    const xc_vision_info *vi = xc_engine_vision_info(e);
    int prev = 0;
    for (int r = 0; r < p->n_img; r++) {
        if (!vi) {
            return xc_errf(XC_ERR_ARG, "prompt has images but the model has no vision tower");
        }
        int len = p->img[r].end - p->img[r].start;
        if (p->img[r].start < prev || p->img[r].end > p->n || len != vi->n_tokens) {
            return xc_errf(XC_ERR_ARG, "image range %d [%d, %d) must be %d rows inside the prompt",
                           r, p->img[r].start, p->img[r].end, vi->n_tokens);
        }
        prev = p->img[r].end;
    }
    if (p->n_img > 0 && !p->pixels) {
        return xc_errf(XC_ERR_ARG, "prompt has %d image ranges but no pixels", p->n_img);
    }
    for (int i = 0, r = 0; i < p->n; i++) {
        while (r < p->n_img && i >= p->img[r].end) {
            r++;
        }
        bool in_img = r < p->n_img && i >= p->img[r].start;
        if (!in_img && (p->ids[i] < 0 || p->ids[i] >= e->cfg.vocab_size)) {
            return xc_errf(XC_ERR_ARG, "token id %d at %d is outside the vocabulary of %d",
                           p->ids[i], i, e->cfg.vocab_size);
        }
    }
    return XC_OK;
}

static xc_status seq_begin(xc_engine *e, const xc_prompt *p, int n_total, eng_seq *s) {
    memset(s, 0, sizeof *s);
    int need = (n_total + e->block_size - 1) / e->block_size;
    XC_TRY(kv_reserve(e, need));
    s->blocks = xc_malloc((size_t)need * sizeof(int32_t));
    if (!s->blocks) {
        return XC_ERR_NOMEM;
    }
    xc_status st = xc_block_pool_alloc(e->pool, need, s->blocks);
    if (st == XC_AGAIN) {
        xc_free(s->blocks);
        s->blocks = NULL;
        return xc_errf(XC_ERR_NOMEM, "KV cache full: %d blocks needed", need);
    }
    s->n_blocks = need;
    if (p->n_img > 0) {
        const xc_vision_info *vi = xc_vision_get_info(e->vision);
        size_t bytes = (size_t)p->n_img * (size_t)vi->n_tokens * (size_t)e->cfg.hidden_size * 4;
        XC_TRY(xc_backend_buf_alloc(e->be, bytes, &s->img));
        XC_TRY(xc_vision_encode(e->vision, p->pixels, p->n_img, s->img.data, NULL));
    }
    return XC_OK;
}

/* Runs rows [start, start + n) of the prompt (or one decode token) through every stage. */
static xc_status run_rows(xc_engine *e, eng_seq *s, const int32_t *ids, int start, int n,
                          const xc_prompt *p, bool all_logits, xc_stage_fn cb, void *user) {
    /* image ranges intersecting this chunk, relative to the chunk, and the first image row */
    xc_row_range ranges[64];
    int n_r = 0;
    size_t img_row = 0;
    if (p) {
        for (int r = 0; r < p->n_img; r++) {
            int a = p->img[r].start, b = p->img[r].end;
            if (b <= start) {
                img_row += (size_t)(b - a);
                continue;
            }
            if (a >= start + n) {
                break;
            }
            if (a < start) {
                img_row += (size_t)(start - a);
            }
            if (n_r == (int)(sizeof ranges / sizeof ranges[0])) {
                return xc_errf(XC_ERR_ARG, "too many images in one prefill chunk");
            }
            ranges[n_r++] = (xc_row_range){(a > start ? a : start) - start,
                                           (b < start + n ? b : start + n) - start};
        }
    }
    xc_llm_seq seq = {
        .n_tokens = n, .pos0 = start, .block_table = s->blocks, .img = ranges, .n_img = n_r};
    xc_llm_batch b = {.seqs = &seq,
                      .n_seqs = 1,
                      .n_rows = n,
                      .ids = ids,
                      .img_embeds =
                          n_r ? (const float *)s->img.data + img_row * (size_t)e->cfg.hidden_size
                              : NULL,
                      .all_logits = all_logits,
                      .last_rows_only = !cb}; /* hidden is read only by a stage callback */
    float *host = NULL;
    size_t hb = (size_t)n * (size_t)e->cfg.hidden_size * sizeof(float);
    if (cb) {
        host = xc_malloc(hb);
        if (!host) {
            return XC_ERR_NOMEM;
        }
    }
    xc_status st = XC_OK;
    for (int k = 0; k < e->n_stages; k++) {
        st = xc_llm_forward(e->stages[k], e->kv[k], &b, e->hidden.data, e->logits.data);
        if (st != XC_OK) {
            break;
        }
        if (cb) {
            st = xc_backend_copy_out(e->be, host, e->hidden.data, hb);
            if (st != XC_OK) {
                break;
            }
            cb(user, k, host, n, e->cfg.hidden_size);
        }
    }
    xc_free(host);
    return st;
}

xc_status xc_engine_prefill_logits(xc_engine *e, const xc_prompt *p, float *logits,
                                   xc_stage_fn stage_cb, void *user) {
    XC_TRY(check_prompt(e, p, 0));
    eng_seq s;
    xc_status st = seq_begin(e, p, p->n, &s);
    for (int start = 0; st == XC_OK && start < p->n; start += e->chunk) {
        int n = p->n - start < e->chunk ? p->n - start : e->chunk;
        st = run_rows(e, &s, p->ids + start, start, n, p, true, stage_cb, user);
        if (st == XC_OK) {
            size_t row = (size_t)e->cfg.vocab_size;
            st = xc_backend_copy_out(e->be, logits + (size_t)start * row, e->logits.data,
                                     (size_t)n * row * sizeof(float));
        }
    }
    seq_release(e, &s);
    return st;
}

xc_status xc_engine_encode_images(xc_engine *e, const float *pixels, int n, float *out) {
    if (!e->vision) {
        return xc_errf(XC_ERR_ARG, "the model has no vision tower loaded");
    }
    const xc_vision_info *vi = xc_vision_get_info(e->vision);
    size_t bytes = (size_t)n * (size_t)vi->n_tokens * (size_t)vi->out_dim * sizeof(float);
    xc_buf b;
    XC_TRY(xc_backend_buf_alloc(e->be, bytes, &b));
    xc_status st = xc_vision_encode(e->vision, pixels, n, b.data, NULL);
    if (st == XC_OK) {
        st = xc_backend_copy_out(e->be, out, b.data, bytes);
    }
    xc_backend_buf_free(e->be, &b);
    return st;
}

static bool is_stop(const xc_gen_params *g, int32_t t) {
    for (int i = 0; i < g->n_stop_ids; i++) {
        if (g->stop_ids[i] == t) {
            return true;
        }
    }
    return false;
}

xc_status xc_engine_generate(xc_engine *e, const xc_prompt *p, const xc_gen_params *g,
                             xc_token_fn cb, void *user, int32_t *out, int *n_out, bool *stopped) {
    if (g->max_new_tokens <= 0) {
        return xc_errf(XC_ERR_ARG, "max_new_tokens must be positive");
    }
    XC_TRY(check_prompt(e, p, g->max_new_tokens));
    xc_sampler *smp = NULL;
    XC_TRY(xc_sampler_create(e->cfg.vocab_size, &g->sampling, &smp));
    xc_sampler_set_position(smp, (uint64_t)p->n);
    eng_seq s;
    int n_gen = 0;
    bool stop = false;
    size_t V = (size_t)e->cfg.vocab_size;
    float *host = xc_malloc(V * sizeof(float));
    xc_status st = host ? seq_begin(e, p, p->n + g->max_new_tokens, &s) : XC_ERR_NOMEM;
    if (st == XC_OK && g->penalize_prompt) {
        for (int i = 0, r = 0; i < p->n && st == XC_OK; i++) {
            while (r < p->n_img && i >= p->img[r].end) {
                r++;
            }
            if (!(r < p->n_img && i >= p->img[r].start)) {
                st = xc_sampler_observe(smp, &p->ids[i], 1);
            }
        }
    }
    for (int start = 0; st == XC_OK && start < p->n; start += e->chunk) {
        int n = p->n - start < e->chunk ? p->n - start : e->chunk;
        st = run_rows(e, &s, p->ids + start, start, n, p, false, NULL, NULL);
    }
    while (st == XC_OK) {
        st = xc_backend_copy_out(e->be, host, e->logits.data, V * sizeof(float));
        int32_t tok;
        if (st == XC_OK) {
            st = xc_sampler_sample(smp, host, &tok);
        }
        if (st != XC_OK) {
            break;
        }
        if (is_stop(g, tok)) {
            stop = true;
            break;
        }
        out[n_gen++] = tok;
        if ((cb && !cb(user, tok)) || n_gen >= g->max_new_tokens) {
            break;
        }
        st = run_rows(e, &s, &tok, p->n + n_gen - 1, 1, NULL, false, NULL, NULL);
    }
    if (n_gen > 0 || st == XC_OK) {
        *n_out = n_gen;
        if (stopped) {
            *stopped = stop;
        }
    }
    if (host) {
        seq_release(e, &s);
    }
    xc_free(host);
    xc_sampler_destroy(smp);
    return st;
}
