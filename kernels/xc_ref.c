/* Naive references for every op except matmul (xc_ref_matmul.c): plain loops over host memory,
 * accumulating in double, written to be read against the formulas in xc_backend.h. */
#include "xc_ref.h"

#include <math.h>
#include <string.h>

#include "xc_mem.h"
#include "xc_opcheck.h"

#define LD(ld, n) xc_opcheck_ld((ld), (n))

/* ---- PLoRA ---- */

xc_status xc_ref_plora(const xc_plora_args *a) {
    XC_TRY(xc_opcheck_plora(a));
    int ldx = LD(a->ldx, a->k);
    int ldy = LD(a->ldy, a->n);
    double *t = xc_malloc((size_t)a->rank * sizeof *t);
    if (!t) {
        return xc_errf(XC_ERR_NOMEM, "plora: out of memory");
    }
    for (int ri = 0; ri < a->n_ranges; ri++) {
        for (int r = a->ranges[ri].start; r < a->ranges[ri].end; r++) {
            const float *x = a->x + (size_t)r * (size_t)ldx;
            float *y = a->y + (size_t)r * (size_t)ldy;
            /* t = A x */
            for (int j = 0; j < a->rank; j++) {
                double s = 0;
                for (int c = 0; c < a->k; c++) {
                    s += (double)xc_load_f32(a->a, a->ab_dtype, (size_t)j * (size_t)a->k + c) *
                         (double)x[c];
                }
                t[j] = s;
            }
            /* y += scale * B t */
            for (int i = 0; i < a->n; i++) {
                double s = 0;
                for (int j = 0; j < a->rank; j++) {
                    s += (double)xc_load_f32(a->b, a->ab_dtype,
                                             (size_t)i * (size_t)a->rank + (size_t)j) *
                         t[j];
                }
                y[i] = (float)((double)y[i] + (double)a->scale * s);
            }
        }
    }
    xc_free(t);
    return XC_OK;
}

/* ---- norms ---- */

xc_status xc_ref_rmsnorm(const xc_norm_args *a) {
    XC_TRY(xc_opcheck_norm(a, false));
    int ldx = LD(a->ldx, a->n);
    int ldy = LD(a->ldy, a->n);
    for (int r = 0; r < a->m; r++) {
        const float *x = a->x + (size_t)r * (size_t)ldx;
        float *y = a->y + (size_t)r * (size_t)ldy;
        double ss = 0;
        for (int i = 0; i < a->n; i++) {
            ss += (double)x[i] * (double)x[i];
        }
        double inv = 1.0 / sqrt(ss / a->n + (double)a->eps);
        for (int i = 0; i < a->n; i++) {
            y[i] = (float)((double)x[i] * inv * (double)xc_load_f32(a->w, a->wb_dtype, i));
        }
    }
    return XC_OK;
}

xc_status xc_ref_layernorm(const xc_norm_args *a) {
    XC_TRY(xc_opcheck_norm(a, true));
    int ldx = LD(a->ldx, a->n);
    int ldy = LD(a->ldy, a->n);
    for (int r = 0; r < a->m; r++) {
        const float *x = a->x + (size_t)r * (size_t)ldx;
        float *y = a->y + (size_t)r * (size_t)ldy;
        double mean = 0;
        for (int i = 0; i < a->n; i++) {
            mean += x[i];
        }
        mean /= a->n;
        double var = 0;
        for (int i = 0; i < a->n; i++) {
            var += ((double)x[i] - mean) * ((double)x[i] - mean);
        }
        var /= a->n; /* biased, as torch.nn.LayerNorm */
        double inv = 1.0 / sqrt(var + (double)a->eps);
        for (int i = 0; i < a->n; i++) {
            double v = ((double)x[i] - mean) * inv * (double)xc_load_f32(a->w, a->wb_dtype, i);
            if (a->b) {
                v += (double)xc_load_f32(a->b, a->wb_dtype, i);
            }
            y[i] = (float)v;
        }
    }
    return XC_OK;
}

/* ---- RoPE ---- */

xc_status xc_ref_rope(const xc_rope_args *a) {
    XC_TRY(xc_opcheck_rope(a));
    int ldx = LD(a->ldx, a->n_heads * a->head_dim);
    int half = a->head_dim / 2;
    for (int r = 0; r < a->m; r++) {
        for (int h = 0; h < a->n_heads; h++) {
            float *x = a->x + (size_t)r * (size_t)ldx + (size_t)h * (size_t)a->head_dim;
            for (int d = 0; d < half; d++) {
                /* The angle is rounded to f32 the way the HF tables are built (see header). */
                float inv_freq = (float)(1.0 / pow((double)a->theta, 2.0 * d / a->head_dim));
                float angle = (float)a->pos[r] * inv_freq;
                double c = cos((double)angle);
                double s = sin((double)angle);
                double x0 = x[d];
                double x1 = x[d + half];
                x[d] = (float)(x0 * c - x1 * s);
                x[d + half] = (float)(x1 * c + x0 * s);
            }
        }
    }
    return XC_OK;
}

/* ---- KV cache store ---- */

xc_status xc_ref_kv_store(const xc_kv_store_args *a) {
    XC_TRY(xc_opcheck_kv_store(a));
    int ldk = LD(a->ldk, a->width);
    int ldv = LD(a->ldv, a->width);
    for (int i = 0; i < a->m; i++) {
        size_t slot = (size_t)a->slots[i];
        for (int c = 0; c < a->width; c++) {
            size_t o = slot * (size_t)a->width + (size_t)c;
            float kx = a->k[(size_t)i * (size_t)ldk + c], vx = a->v[(size_t)i * (size_t)ldv + c];
            if (a->cache_dtype == XC_DTYPE_BF16) {
                ((uint16_t *)a->k_cache)[o] = xc_f32_to_bf16(kx);
                ((uint16_t *)a->v_cache)[o] = xc_f32_to_bf16(vx);
            } else {
                ((float *)a->k_cache)[o] = kx;
                ((float *)a->v_cache)[o] = vx;
            }
        }
    }
    return XC_OK;
}

/* ---- attention ---- */

/* Row of key position p of sequence s in the k/v arrays. */
static size_t xc_ref_kv_row(const xc_attention_args *a, const xc_attn_seq *s, int p) {
    if (s->block_table) {
        return (size_t)s->block_table[p / a->block_size] * (size_t)a->block_size +
               (size_t)(p % a->block_size);
    }
    return (size_t)s->kv_start + (size_t)p;
}

xc_status xc_ref_attention(const xc_attention_args *a) {
    XC_TRY(xc_opcheck_attention(a));
    int hd = a->head_dim;
    int ldq = LD(a->ldq, a->n_heads * hd);
    int ldo = LD(a->ldo, a->n_heads * hd);
    int ldkv = LD(a->ldkv, a->n_kv_heads * hd);
    int group = a->n_heads / a->n_kv_heads;
    double scale = a->scale != 0.0f ? (double)a->scale : 1.0 / sqrt((double)hd);
    int max_kv = 1;
    for (int s = 0; s < a->n_seqs; s++) {
        max_kv = a->seqs[s].kv_len > max_kv ? a->seqs[s].kv_len : max_kv;
    }
    double *p = xc_malloc((size_t)max_kv * sizeof *p);
    double *o = xc_malloc((size_t)hd * sizeof *o);
    if (!p || !o) {
        xc_free(p);
        xc_free(o);
        return xc_errf(XC_ERR_NOMEM, "attention: out of memory");
    }
    for (int si = 0; si < a->n_seqs; si++) {
        const xc_attn_seq *s = &a->seqs[si];
        for (int i = 0; i < s->n_q; i++) {
            /* Keys visible to this query: 0 .. its own position (causal) or all kv_len. */
            int n_keys = a->causal ? s->kv_len - s->n_q + i + 1 : s->kv_len;
            for (int h = 0; h < a->n_heads; h++) {
                const float *q = a->q + (size_t)(s->q_start + i) * (size_t)ldq + (size_t)h * hd;
                size_t kcol = (size_t)(h / group) * (size_t)hd;
                double mx = -INFINITY;
                for (int j = 0; j < n_keys; j++) {
                    size_t k0 = xc_ref_kv_row(a, s, j) * (size_t)ldkv + kcol;
                    double dot = 0;
                    for (int d = 0; d < hd; d++) {
                        dot += (double)q[d] * (double)xc_load_f32(a->k, a->kv_dtype, k0 + d);
                    }
                    p[j] = dot * scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                double sum = 0;
                for (int j = 0; j < n_keys; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int d = 0; d < hd; d++) {
                    o[d] = 0;
                }
                for (int j = 0; j < n_keys; j++) {
                    size_t v0 = xc_ref_kv_row(a, s, j) * (size_t)ldkv + kcol;
                    for (int d = 0; d < hd; d++) {
                        o[d] += p[j] / sum * (double)xc_load_f32(a->v, a->kv_dtype, v0 + d);
                    }
                }
                float *out = a->out + (size_t)(s->q_start + i) * (size_t)ldo + (size_t)h * hd;
                for (int d = 0; d < hd; d++) {
                    out[d] = (float)o[d];
                }
            }
        }
    }
    xc_free(p);
    xc_free(o);
    return XC_OK;
}

/* ---- elementwise ---- */

xc_status xc_ref_act(const xc_act_args *a) {
    XC_TRY(xc_opcheck_act(a));
    int ldx = LD(a->ldx, a->n);
    int ldx2 = LD(a->ldx2, a->n);
    int ldy = LD(a->ldy, a->n);
    for (int r = 0; r < a->m; r++) {
        for (int i = 0; i < a->n; i++) {
            double x = a->x[(size_t)r * (size_t)ldx + i];
            double x2 = a->x2 ? a->x2[(size_t)r * (size_t)ldx2 + i] : 0.0;
            double y = 0;
            switch (a->kind) {
            case XC_ACT_SILU_MUL:
                y = x / (1.0 + exp(-x)) * x2;
                break;
            case XC_ACT_GELU:
                y = 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
                break;
            case XC_ACT_QUICK_GELU:
                y = x / (1.0 + exp(-1.702 * x));
                break;
            case XC_ACT_ADD:
                y = x + x2;
                break;
            }
            a->y[(size_t)r * (size_t)ldy + i] = (float)y;
        }
    }
    return XC_OK;
}

/* ---- embedding, patchify ---- */

xc_status xc_ref_embed(const xc_embed_args *a) {
    XC_TRY(xc_opcheck_embed(a));
    int ldy = LD(a->ldy, a->n);
    for (int r = 0; r < a->m; r++) {
        for (int i = 0; i < a->n; i++) {
            a->y[(size_t)r * (size_t)ldy + i] =
                xc_load_f32(a->table, a->table_dtype, (size_t)a->ids[r] * (size_t)a->n + i);
        }
    }
    return XC_OK;
}

xc_status xc_ref_patchify(const xc_patchify_args *a) {
    XC_TRY(xc_opcheck_patchify(a));
    int grid = a->size / a->patch;
    size_t row = 0;
    for (int img = 0; img < a->n_img; img++) {
        for (int gy = 0; gy < grid; gy++) {
            for (int gx = 0; gx < grid; gx++) {
                float *y = a->y + row * (size_t)a->channels * (size_t)a->patch * (size_t)a->patch;
                size_t col = 0;
                for (int c = 0; c < a->channels; c++) {
                    for (int ky = 0; ky < a->patch; ky++) {
                        for (int kx = 0; kx < a->patch; kx++) {
                            size_t iy = (size_t)gy * (size_t)a->patch + (size_t)ky;
                            size_t ix = (size_t)gx * (size_t)a->patch + (size_t)kx;
                            y[col++] = a->images[(((size_t)img * (size_t)a->channels + c) *
                                                      (size_t)a->size +
                                                  iy) *
                                                     (size_t)a->size +
                                                 ix];
                        }
                    }
                }
                row++;
            }
        }
    }
    return XC_OK;
}

/* ---- softmax, argmax ---- */

xc_status xc_ref_softmax(const xc_softmax_args *a) {
    XC_TRY(xc_opcheck_softmax(a));
    int ldx = LD(a->ldx, a->n);
    double t = a->temperature != 0.0f ? (double)a->temperature : 1.0;
    for (int r = 0; r < a->m; r++) {
        float *x = a->x + (size_t)r * (size_t)ldx;
        if (a->argmax) {
            int best = 0;
            for (int i = 1; i < a->n; i++) {
                if (x[i] > x[best]) {
                    best = i;
                }
            }
            a->argmax[r] = best;
        }
        if (a->skip_softmax) {
            continue;
        }
        double mx = -INFINITY;
        for (int i = 0; i < a->n; i++) {
            double z = (double)x[i] / t;
            mx = z > mx ? z : mx;
        }
        double sum = 0;
        for (int i = 0; i < a->n; i++) {
            sum += exp((double)x[i] / t - mx);
        }
        for (int i = 0; i < a->n; i++) {
            x[i] = (float)(exp((double)x[i] / t - mx) / sum);
        }
    }
    return XC_OK;
}
