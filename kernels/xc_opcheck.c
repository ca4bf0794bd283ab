/* Argument validation for every non-matmul op (see xc_opcheck.h): shapes, strides, pointers,
 * dtypes, ids, slots and ranges. */
#include "xc_opcheck.h"

#include <math.h>

static bool xc_opcheck_float_dtype(xc_dtype t) {
    return t == XC_DTYPE_F32 || t == XC_DTYPE_F16 || t == XC_DTYPE_BF16;
}

/* A (m, n) matrix with row stride ld (0 = dense): n >= 1, ld >= n, data present when m > 0. */
static xc_status xc_opcheck_mat(const char *op, const char *name, const void *p, int m, int n,
                                int ld) {
    if (ld < 0 || (ld != 0 && ld < n)) {
        return xc_errf(XC_ERR_ARG, "%s: row stride of %s is %d, below its row length %d", op, name,
                       ld, n);
    }
    if (m > 0 && !p) {
        return xc_errf(XC_ERR_ARG, "%s: %s is NULL", op, name);
    }
    return XC_OK;
}

/* dst may be src (in place) only with the same stride. */
static xc_status xc_opcheck_inplace(const char *op, const void *src, const void *dst, int lds,
                                    int ldd, int n) {
    if (src == dst && xc_opcheck_ld(lds, n) != xc_opcheck_ld(ldd, n)) {
        return xc_errf(XC_ERR_ARG, "%s: in place with different strides (%d, %d)", op, lds, ldd);
    }
    return XC_OK;
}

xc_status xc_opcheck_plora(const xc_plora_args *a) {
    if (a->m < 0 || a->n < 1 || a->k < 1 || a->rank < 1) {
        return xc_errf(XC_ERR_ARG, "plora: bad shape m=%d n=%d k=%d rank=%d", a->m, a->n, a->k,
                       a->rank);
    }
    if (!xc_opcheck_float_dtype(a->ab_dtype)) {
        return xc_errf(XC_ERR_UNSUPPORTED, "plora: weight dtype %s is not f32, f16 or bf16",
                       xc_dtype_name(a->ab_dtype));
    }
    if (a->n_ranges < 0 || (a->n_ranges > 0 && !a->ranges)) {
        return xc_errf(XC_ERR_ARG, "plora: %d ranges but ranges is %s", a->n_ranges,
                       a->ranges ? "set" : "NULL");
    }
    int prev_end = 0;
    int rows = 0;
    for (int i = 0; i < a->n_ranges; i++) {
        xc_row_range r = a->ranges[i];
        if (r.start < prev_end || r.end < r.start || r.end > a->m) {
            return xc_errf(XC_ERR_ARG,
                           "plora: range %d [%d, %d) is out of order, overlapping or outside "
                           "[0, %d) (ranges must be sorted and disjoint)",
                           i, r.start, r.end, a->m);
        }
        prev_end = r.end;
        rows += r.end - r.start;
    }
    if (rows == 0) {
        return XC_OK; /* nothing is read or written */
    }
    XC_TRY(xc_opcheck_mat("plora", "x", a->x, a->m, a->k, a->ldx));
    XC_TRY(xc_opcheck_mat("plora", "y", a->y, a->m, a->n, a->ldy));
    if (!a->a || !a->b) {
        return xc_errf(XC_ERR_ARG, "plora: Plora_%s is NULL", !a->a ? "A" : "B");
    }
    if ((const void *)a->x == (const void *)a->y) {
        return xc_errf(XC_ERR_ARG, "plora: y must not alias x");
    }
    if (!isfinite(a->scale)) {
        return xc_errf(XC_ERR_ARG, "plora: scale is not finite");
    }
    return XC_OK;
}

xc_status xc_opcheck_norm(const xc_norm_args *a, bool layernorm) {
    const char *op = layernorm ? "layernorm" : "rmsnorm";
    if (a->m < 0 || a->n < 1) {
        return xc_errf(XC_ERR_ARG, "%s: bad shape m=%d n=%d", op, a->m, a->n);
    }
    if (!xc_opcheck_float_dtype(a->wb_dtype)) {
        return xc_errf(XC_ERR_UNSUPPORTED, "%s: weight dtype %s is not f32, f16 or bf16", op,
                       xc_dtype_name(a->wb_dtype));
    }
    XC_TRY(xc_opcheck_mat(op, "x", a->x, a->m, a->n, a->ldx));
    XC_TRY(xc_opcheck_mat(op, "y", a->y, a->m, a->n, a->ldy));
    XC_TRY(xc_opcheck_inplace(op, a->x, a->y, a->ldx, a->ldy, a->n));
    if (a->m > 0 && !a->w) {
        return xc_errf(XC_ERR_ARG, "%s: weight is NULL", op);
    }
    if (!layernorm && a->b) {
        return xc_errf(XC_ERR_ARG, "rmsnorm: has no bias (b must be NULL)");
    }
    if (!(a->eps >= 0.0f) || !isfinite(a->eps)) {
        return xc_errf(XC_ERR_ARG, "%s: eps %g must be finite and >= 0", op, (double)a->eps);
    }
    return XC_OK;
}

xc_status xc_opcheck_rope(const xc_rope_args *a) {
    if (a->m < 0 || a->n_heads < 1 || a->head_dim < 2 || a->head_dim % 2 != 0) {
        return xc_errf(XC_ERR_ARG, "rope: bad shape m=%d n_heads=%d head_dim=%d (even, >= 2)", a->m,
                       a->n_heads, a->head_dim);
    }
    if ((long long)a->n_heads * a->head_dim > INT32_MAX) {
        return xc_errf(XC_ERR_ARG, "rope: row too long");
    }
    XC_TRY(xc_opcheck_mat("rope", "x", a->x, a->m, a->n_heads * a->head_dim, a->ldx));
    if (!(a->theta > 0.0f) || !isfinite(a->theta)) {
        return xc_errf(XC_ERR_ARG, "rope: theta %g must be finite and > 0", (double)a->theta);
    }
    if (a->m > 0 && !a->pos) {
        return xc_errf(XC_ERR_ARG, "rope: pos is NULL");
    }
    for (int i = 0; i < a->m; i++) {
        if (a->pos[i] < 0) {
            return xc_errf(XC_ERR_ARG, "rope: pos[%d] = %d is negative", i, (int)a->pos[i]);
        }
    }
    return XC_OK;
}

xc_status xc_opcheck_kv_store(const xc_kv_store_args *a) {
    if (a->m < 0 || a->width < 1 || a->n_slots < 0) {
        return xc_errf(XC_ERR_ARG, "kv_store: bad shape m=%d width=%d n_slots=%d", a->m, a->width,
                       a->n_slots);
    }
    if (a->cache_dtype != XC_DTYPE_F32 && a->cache_dtype != XC_DTYPE_BF16) {
        return xc_errf(XC_ERR_UNSUPPORTED, "kv_store: cache dtype %s (f32 or bf16)",
                       xc_dtype_name(a->cache_dtype));
    }
    XC_TRY(xc_opcheck_mat("kv_store", "k", a->k, a->m, a->width, a->ldk));
    XC_TRY(xc_opcheck_mat("kv_store", "v", a->v, a->m, a->width, a->ldv));
    if (a->m > 0 && (!a->k_cache || !a->v_cache || !a->slots)) {
        return xc_errf(XC_ERR_ARG, "kv_store: %s is NULL",
                       !a->slots ? "slots" : (!a->k_cache ? "k_cache" : "v_cache"));
    }
    for (int i = 0; i < a->m; i++) {
        if (a->slots[i] < 0 || a->slots[i] >= a->n_slots) {
            return xc_errf(XC_ERR_ARG, "kv_store: slot[%d] = %d outside [0, %d)", i,
                           (int)a->slots[i], a->n_slots);
        }
    }
    return XC_OK;
}

xc_status xc_opcheck_attention(const xc_attention_args *a) {
    if (a->n_seqs < 0 || (a->n_seqs > 0 && !a->seqs)) {
        return xc_errf(XC_ERR_ARG, "attention: %d sequences but seqs is NULL", a->n_seqs);
    }
    if (a->n_heads < 1 || a->n_kv_heads < 1 || a->n_heads % a->n_kv_heads != 0) {
        return xc_errf(XC_ERR_ARG,
                       "attention: n_heads %d must be a positive multiple of n_kv_heads %d",
                       a->n_heads, a->n_kv_heads);
    }
    if (a->kv_dtype != XC_DTYPE_F32 && a->kv_dtype != XC_DTYPE_BF16) {
        return xc_errf(XC_ERR_UNSUPPORTED, "attention: k/v dtype %s (f32 or bf16)",
                       xc_dtype_name(a->kv_dtype));
    }
    if (a->head_dim < 1 || a->head_dim > XC_OPCHECK_MAX_HEAD_DIM) {
        return xc_errf(XC_ERR_ARG, "attention: head_dim %d outside [1, %d]", a->head_dim,
                       XC_OPCHECK_MAX_HEAD_DIM);
    }
    if ((long long)a->n_heads * a->head_dim > INT32_MAX) {
        return xc_errf(XC_ERR_ARG, "attention: row too long");
    }
    int qw = a->n_heads * a->head_dim;
    int kw = a->n_kv_heads * a->head_dim;
    int rows = 0;
    bool paged = false;
    for (int s = 0; s < a->n_seqs; s++) {
        const xc_attn_seq *q = &a->seqs[s];
        rows += q->n_q > 0;
        paged |= q->n_q > 0 && q->block_table;
    }
    XC_TRY(xc_opcheck_mat("attention", "q", a->q, rows, qw, a->ldq));
    XC_TRY(xc_opcheck_mat("attention", "out", a->out, rows, qw, a->ldo));
    XC_TRY(xc_opcheck_mat("attention", "k", a->k, rows, kw, a->ldkv));
    XC_TRY(xc_opcheck_mat("attention", "v", a->v, rows, kw, a->ldkv));
    XC_TRY(xc_opcheck_inplace("attention", a->q, a->out, a->ldq, a->ldo, qw));
    if (paged && a->block_size < 1) {
        return xc_errf(XC_ERR_ARG, "attention: block_size %d must be >= 1 with a block table",
                       a->block_size);
    }
    if (!isfinite(a->scale)) {
        return xc_errf(XC_ERR_ARG, "attention: scale is not finite");
    }
    for (int s = 0; s < a->n_seqs; s++) {
        const xc_attn_seq *q = &a->seqs[s];
        if (q->n_q < 0 || q->q_start < 0 || q->kv_len < 0 || q->kv_start < 0 ||
            (long long)q->q_start + q->n_q > INT32_MAX) {
            return xc_errf(XC_ERR_ARG,
                           "attention: seq %d has q_start=%d n_q=%d kv_len=%d "
                           "kv_start=%d",
                           s, q->q_start, q->n_q, q->kv_len, q->kv_start);
        }
        if (q->n_q == 0) {
            continue;
        }
        if (q->kv_len < 1 || (a->causal && q->kv_len < q->n_q)) {
            return xc_errf(XC_ERR_ARG, "attention: seq %d has %d queries but kv_len %d%s", s,
                           q->n_q, q->kv_len, a->causal ? " (causal needs kv_len >= n_q)" : "");
        }
        if (q->block_table) {
            int nb = (q->kv_len + a->block_size - 1) / a->block_size;
            for (int b = 0; b < nb; b++) {
                if (q->block_table[b] < 0 ||
                    (long long)q->block_table[b] * a->block_size + a->block_size > INT32_MAX) {
                    return xc_errf(XC_ERR_ARG, "attention: seq %d block_table[%d] = %d invalid", s,
                                   b, (int)q->block_table[b]);
                }
            }
        } else if ((long long)q->kv_start + q->kv_len > INT32_MAX) {
            return xc_errf(XC_ERR_ARG, "attention: seq %d kv rows overflow", s);
        }
        /* Query rows of different sequences must not overlap: their outputs would race. */
        for (int t = 0; t < s; t++) {
            const xc_attn_seq *o = &a->seqs[t];
            if (o->n_q > 0 && q->q_start < o->q_start + o->n_q &&
                o->q_start < q->q_start + q->n_q) {
                return xc_errf(XC_ERR_ARG, "attention: query rows of seqs %d and %d overlap", t, s);
            }
        }
    }
    return XC_OK;
}

xc_status xc_opcheck_act(const xc_act_args *a) {
    if ((unsigned)a->kind > XC_ACT_ADD) {
        return xc_errf(XC_ERR_ARG, "act: unknown kind %d", (int)a->kind);
    }
    if (a->m < 0 || a->n < 1) {
        return xc_errf(XC_ERR_ARG, "act: bad shape m=%d n=%d", a->m, a->n);
    }
    XC_TRY(xc_opcheck_mat("act", "x", a->x, a->m, a->n, a->ldx));
    XC_TRY(xc_opcheck_mat("act", "y", a->y, a->m, a->n, a->ldy));
    XC_TRY(xc_opcheck_inplace("act", a->x, a->y, a->ldx, a->ldy, a->n));
    if (a->kind == XC_ACT_SILU_MUL || a->kind == XC_ACT_ADD) {
        XC_TRY(xc_opcheck_mat("act", "x2", a->x2, a->m, a->n, a->ldx2));
        if (a->m > 0 && !a->x2) {
            return xc_errf(XC_ERR_ARG, "act: x2 is NULL");
        }
        XC_TRY(xc_opcheck_inplace("act", a->x2, a->y, a->ldx2, a->ldy, a->n));
    }
    return XC_OK;
}

xc_status xc_opcheck_embed(const xc_embed_args *a) {
    if (a->m < 0 || a->n < 1 || a->vocab < 1) {
        return xc_errf(XC_ERR_ARG, "embed: bad shape m=%d n=%d vocab=%d", a->m, a->n, a->vocab);
    }
    if (!xc_opcheck_float_dtype(a->table_dtype)) {
        return xc_errf(XC_ERR_UNSUPPORTED, "embed: table dtype %s is not f32, f16 or bf16",
                       xc_dtype_name(a->table_dtype));
    }
    XC_TRY(xc_opcheck_mat("embed", "y", a->y, a->m, a->n, a->ldy));
    if (a->m > 0 && (!a->table || !a->ids)) {
        return xc_errf(XC_ERR_ARG, "embed: %s is NULL", !a->ids ? "ids" : "table");
    }
    for (int i = 0; i < a->m; i++) {
        if (a->ids[i] < 0 || a->ids[i] >= a->vocab) {
            return xc_errf(XC_ERR_ARG, "embed: ids[%d] = %d outside [0, %d)", i, (int)a->ids[i],
                           a->vocab);
        }
    }
    return XC_OK;
}

xc_status xc_opcheck_patchify(const xc_patchify_args *a) {
    if (a->n_img < 0 || a->channels < 1 || a->patch < 1 || a->size < a->patch ||
        a->size % a->patch != 0) {
        return xc_errf(XC_ERR_ARG,
                       "patchify: bad shape n_img=%d channels=%d size=%d patch=%d (size must be "
                       "a positive multiple of patch)",
                       a->n_img, a->channels, a->size, a->patch);
    }
    size_t n = (size_t)a->n_img * (size_t)a->channels * (size_t)a->size * (size_t)a->size;
    if ((size_t)a->channels * (size_t)a->patch * (size_t)a->patch > INT32_MAX ||
        n / (size_t)a->channels / (size_t)a->size / (size_t)a->size != (size_t)a->n_img ||
        (size_t)a->size * (size_t)a->size > INT32_MAX) {
        return xc_errf(XC_ERR_ARG, "patchify: sizes overflow");
    }
    if (a->n_img > 0 && (!a->images || !a->y)) {
        return xc_errf(XC_ERR_ARG, "patchify: %s is NULL", !a->images ? "images" : "y");
    }
    return XC_OK;
}

xc_status xc_opcheck_softmax(const xc_softmax_args *a) {
    if (a->m < 0 || a->n < 1) {
        return xc_errf(XC_ERR_ARG, "softmax: bad shape m=%d n=%d", a->m, a->n);
    }
    XC_TRY(xc_opcheck_mat("softmax", "x", a->x, a->m, a->n, a->ldx));
    if (!(a->temperature >= 0.0f) || !isfinite(a->temperature)) {
        return xc_errf(XC_ERR_ARG, "softmax: temperature %g must be finite and >= 0",
                       (double)a->temperature);
    }
    return XC_OK;
}
