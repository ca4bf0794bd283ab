/* CPU attention: causal prefill, paged decode and bidirectional (CLIP) attention with GQA, as an
 * online softmax over blocks of XC_ATTN_KB keys aligned to absolute key positions.
 *
 * Batch invariance: the result for one (query, head) depends only on its q, its visible keys and
 * their values. Queries are processed in tiles of 4 or 8 (query, head) items that share each
 * loaded key row; an item's arithmetic is the same sequence of IEEE operations whatever the tile
 * holds (keys an item cannot see contribute exact zeros: p = 0 and fma(0, v, acc) == acc), so it
 * does not depend on the batch, the chunking of a prefill, the paging of the cache or the thread
 * count. Parallel over tiles; every tile writes its own output rows. */
#include <math.h>
#include <string.h>

#include "xc_cpu_impl.h"
#include "xc_cpu_simd.h"
#include "xc_opcheck.h"

#define XC_ATTN_QT 8 /* (query, head) items per tile, at most; 4 for small sequences (decode) */
#define XC_ATTN_KB                                                                                 \
    32 /* keys per softmax block, starting at multiples of XC_ATTN_KB; a block's                   \
         K and V rows (2 x 32 x 128 floats) fit in L1 */
#define XC_SIMD_FN __attribute__((target("avx2,fma,f16c"))) static

typedef struct xc_attn_job {
    const xc_attention_args *a;
    int group; /* query heads per kv head */
    int hd, ldq, ldo, ldkv;
    float scale;
    bool simd;
} xc_attn_job;

/* The running state of one tile: per item its q/out rows, last visible key, running max m, sum l,
 * unnormalised output acc, and the current block's scores/probabilities p. */
typedef struct xc_attn_tile {
    int qt; /* items in this tile's kernels: 4 or 8 */
    const float *q[XC_ATTN_QT];
    float *out[XC_ATTN_QT];
    int last[XC_ATTN_QT];
    float m[XC_ATTN_QT], l[XC_ATTN_QT];
    float acc[XC_ATTN_QT][XC_OPCHECK_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float p[XC_ATTN_QT][XC_ATTN_KB] __attribute__((aligned(32)));
    int maxlast;                        /* the tile's last visible key (its largest item's) */
    const float *const *kp, *const *vp; /* the current block's K and V rows (xc_attn_block) */
} xc_attn_tile;

/* One block of XC_ATTN_KB keys as a group of tiles reads it: row pointers, and a bf16 cache's
 * rows widened (exactly) to f32 once for every tile of the group. */
typedef struct xc_attn_block {
    const float *kp[XC_ATTN_KB], *vp[XC_ATTN_KB];
    float kw[XC_ATTN_KB][XC_OPCHECK_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float vw[XC_ATTN_KB][XC_OPCHECK_MAX_HEAD_DIM] __attribute__((aligned(32)));
} xc_attn_block;

/* Tiles of one (sequence, kv head) that walk the keys together, sharing each block they load:
 * on long prompts this divides the K/V traffic, which otherwise bounds the prefill, by up to
 * XC_ATTN_GROUP. A tile's arithmetic is the same alone or in a group. */
#define XC_ATTN_GROUP 16

/* ---- AVX2 kernels ---- */

/* p[it][j] = dot(q[it], kp[j]) * scale for j < nk: every dot is 8-lane FMAs over the full
 * chunks from zero, a fixed horizontal sum, then scalar FMAs over the tail. qt items share each
 * loaded key; with 4 items two keys go at once, so both shapes keep 8 FMA chains in flight. */
#define XC_SIMD_INL __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

XC_SIMD_INL void xc_attn_scores_avx2_q(xc_attn_tile *t, int nk, int hd, float scale, const int qt,
                                       int i0) {
    const float **qq = t->q + i0;
    float(*pp)[XC_ATTN_KB] = t->p + i0;
    int hd8 = hd & ~7;
    int j = 0;
    for (; qt == 4 && j + 2 <= nk; j += 2) {
        __m256 a0[4], a1[4];
        for (int it = 0; it < 4; it++) {
            a0[it] = _mm256_setzero_ps();
            a1[it] = _mm256_setzero_ps();
        }
        const float *k0 = t->kp[j], *k1 = t->kp[j + 1];
        for (int c = 0; c < hd8; c += 8) {
            __m256 kv0 = _mm256_loadu_ps(k0 + c), kv1 = _mm256_loadu_ps(k1 + c);
            for (int it = 0; it < 4; it++) {
                __m256 qv = _mm256_loadu_ps(qq[it] + c);
                a0[it] = _mm256_fmadd_ps(qv, kv0, a0[it]);
                a1[it] = _mm256_fmadd_ps(qv, kv1, a1[it]);
            }
        }
        for (int it = 0; it < 4; it++) {
            float s0 = xc_simd_hsum(a0[it]), s1 = xc_simd_hsum(a1[it]);
            for (int d = hd8; d < hd; d++) {
                s0 = fmaf(qq[it][d], k0[d], s0);
                s1 = fmaf(qq[it][d], k1[d], s1);
            }
            pp[it][j] = s0 * scale;
            pp[it][j + 1] = s1 * scale;
        }
    }
    for (; j < nk; j++) {
        __m256 a0[XC_ATTN_QT];
        for (int it = 0; it < qt; it++) {
            a0[it] = _mm256_setzero_ps();
        }
        const float *k0 = t->kp[j];
        for (int c = 0; c < hd8; c += 8) {
            __m256 kv0 = _mm256_loadu_ps(k0 + c);
            for (int it = 0; it < qt; it++) {
                a0[it] = _mm256_fmadd_ps(_mm256_loadu_ps(qq[it] + c), kv0, a0[it]);
            }
        }
        for (int it = 0; it < qt; it++) {
            float s0 = xc_simd_hsum(a0[it]);
            for (int d = hd8; d < hd; d++) {
                s0 = fmaf(qq[it][d], k0[d], s0);
            }
            pp[it][j] = s0 * scale;
        }
    }
}

/* Items in passes of 4, two keys at a time (8 accumulators; per 8 FMAs 2 key loads and 4 query
 * loads): every item's dot products are the same operations in every pass shape. */
XC_SIMD_FN void xc_attn_scores_avx2(xc_attn_tile *t, int nk, int hd, float scale) {
    xc_attn_scores_avx2_q(t, nk, hd, scale, 4, 0);
    if (t->qt == 8) {
        xc_attn_scores_avx2_q(t, nk, hd, scale, 4, 4);
    }
}

/* Turns item it's masked scores (the first nvis visible, the rest of the block -inf) into
 * probabilities relative to the new running max and returns their sum (fixed lane order). */
XC_SIMD_FN float xc_attn_exp_avx2(float *p, int nvis, float mnew) {
    __m256 vm = _mm256_set1_ps(mnew);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < XC_ATTN_KB; j += 8) {
        if (j >= nvis) {
            _mm256_store_ps(p + j, _mm256_setzero_ps());
            continue;
        }
        __m256 e = xc_simd_exp(_mm256_sub_ps(_mm256_load_ps(p + j), vm));
        if (j + 8 > nvis) {
            __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nvis - j), idx));
            e = _mm256_and_ps(e, keep);
        }
        _mm256_store_ps(p + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    return xc_simd_hsum(sum);
}

/* acc[it] = acc[it] * f[it] + sum_j p[it][j] v_j for j < nk, ascending j for every element.
 * 8 accumulators in registers (4 items x 2 chunks, or 8 items x 1 chunk); a block's V rows
 * (XC_ATTN_KB x head_dim floats) stay in L1 across the passes over head_dim. */
XC_SIMD_INL void xc_attn_pv_avx2_q(xc_attn_tile *t, int nk, int hd, const float *f0, const int qt,
                                   int i0) {
    float(*acc)[XC_OPCHECK_MAX_HEAD_DIM] = t->acc + i0;
    float(*pp)[XC_ATTN_KB] = t->p + i0;
    const float *f = f0 + i0;
    int hd8 = hd & ~7;
    int c = 0;
    for (; qt == 4 && c + 16 <= hd8; c += 16) {
        __m256 a[4], b[4];
        for (int it = 0; it < 4; it++) {
            __m256 vf = _mm256_set1_ps(f[it]);
            a[it] = _mm256_mul_ps(_mm256_load_ps(acc[it] + c), vf);
            b[it] = _mm256_mul_ps(_mm256_load_ps(acc[it] + c + 8), vf);
        }
        for (int j = 0; j < nk; j++) {
            __m256 v0 = _mm256_loadu_ps(t->vp[j] + c), v1 = _mm256_loadu_ps(t->vp[j] + c + 8);
            for (int it = 0; it < 4; it++) {
                __m256 pj = _mm256_broadcast_ss(&pp[it][j]);
                a[it] = _mm256_fmadd_ps(pj, v0, a[it]);
                b[it] = _mm256_fmadd_ps(pj, v1, b[it]);
            }
        }
        for (int it = 0; it < 4; it++) {
            _mm256_store_ps(acc[it] + c, a[it]);
            _mm256_store_ps(acc[it] + c + 8, b[it]);
        }
    }
    for (; c < hd8; c += 8) {
        __m256 a[XC_ATTN_QT];
        for (int it = 0; it < qt; it++) {
            a[it] = _mm256_mul_ps(_mm256_load_ps(acc[it] + c), _mm256_set1_ps(f[it]));
        }
        for (int j = 0; j < nk; j++) {
            __m256 v = _mm256_loadu_ps(t->vp[j] + c);
            for (int it = 0; it < qt; it++) {
                a[it] = _mm256_fmadd_ps(_mm256_broadcast_ss(&pp[it][j]), v, a[it]);
            }
        }
        for (int it = 0; it < qt; it++) {
            _mm256_store_ps(acc[it] + c, a[it]);
        }
    }
    for (int d = hd8; d < hd; d++) {
        for (int it = 0; it < qt; it++) {
            float a = acc[it][d] * f[it];
            for (int j = 0; j < nk; j++) {
                a = fmaf(pp[it][j], t->vp[j][d], a);
            }
            acc[it][d] = a;
        }
    }
}

/* Items in passes of 4 (4 items x 2 chunks of 8 in registers: per key 2 V loads and 4 broadcasts
 * feed 8 FMAs); every element gets the same operations in every pass shape. */
XC_SIMD_FN void xc_attn_pv_avx2(xc_attn_tile *t, int nk, int hd, const float *f) {
    xc_attn_pv_avx2_q(t, nk, hd, f, 4, 0);
    if (t->qt == 8) {
        xc_attn_pv_avx2_q(t, nk, hd, f, 4, 4);
    }
}

/* dst[0..n) = bf16 src widened to f32 (exact: the bf16 bits are the f32's top half). */
XC_SIMD_FN void xc_attn_widen_avx2(float *dst, const uint16_t *src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_store_ps(dst + i,
                        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    for (; i < n; i++) {
        dst[i] = xc_bf16_to_f32(src[i]);
    }
}

/* ---- portable kernels (same structure, plain C arithmetic) ---- */

/* Eight partial sums per dot product (like the SIMD lanes), which compilers can vectorise
 * without reassociating anything. */
static void xc_attn_scores_scalar(xc_attn_tile *t, int nk, int hd, float scale) {
    int hd8 = hd & ~7;
    for (int it = 0; it < t->qt; it++) {
        const float *q = t->q[it];
        for (int j = 0; j < nk; j++) {
            const float *k = t->kp[j];
            float part[8] = {0};
            for (int c = 0; c < hd8; c += 8) {
                for (int l = 0; l < 8; l++) {
                    part[l] += q[c + l] * k[c + l];
                }
            }
            float s = ((part[0] + part[4]) + (part[2] + part[6])) +
                      ((part[1] + part[5]) + (part[3] + part[7]));
            for (int d = hd8; d < hd; d++) {
                s += q[d] * k[d];
            }
            t->p[it][j] = s * scale;
        }
    }
}

static float xc_attn_exp_scalar(float *p, int nvis, float mnew) {
    float sum = 0;
    for (int j = 0; j < XC_ATTN_KB; j++) {
        p[j] = j < nvis ? expf(p[j] - mnew) : 0.0f;
        sum += p[j];
    }
    return sum;
}

/* Ascending j for every element, streaming each V row once. */
static void xc_attn_pv_scalar(xc_attn_tile *t, int nk, int hd, const float *f) {
    for (int it = 0; it < t->qt; it++) {
        float *acc = t->acc[it];
        for (int d = 0; d < hd; d++) {
            acc[d] *= f[it];
        }
        for (int j = 0; j < nk; j++) {
            float pj = t->p[it][j];
            const float *v = t->vp[j];
            for (int d = 0; d < hd; d++) {
                acc[d] += pj * v[d];
            }
        }
    }
}

/* ---- tiles and tasks ---- */

/* Row of key position p of sequence s in k/v: paged through the block table, or contiguous. */
static inline size_t xc_attn_kv_row(const xc_attention_args *a, const xc_attn_seq *s, int p) {
    if (s->block_table) {
        return (size_t)s->block_table[p / a->block_size] * (size_t)a->block_size +
               (size_t)(p % a->block_size);
    }
    return (size_t)s->kv_start + (size_t)p;
}

/* Items it0 .. it0 + nit - 1 of sequence s and kv head g: item i is query i / group with query
 * head g * group + i % group. Missing items of a short tile repeat item 0 and are not stored. */
static void xc_attn_tile_init(const xc_attn_job *j, xc_attn_tile *t, const xc_attn_seq *s, int g,
                              int it0, int nit, int qt) {
    const xc_attention_args *a = j->a;
    int hd = j->hd;
    t->qt = qt;
    t->maxlast = 0;
    for (int it = 0; it < qt; it++) {
        int item = it0 + (it < nit ? it : 0);
        int qi = item / j->group, h = g * j->group + item % j->group;
        size_t row = (size_t)(s->q_start + qi);
        t->q[it] = a->q + row * (size_t)j->ldq + (size_t)h * (size_t)hd;
        t->out[it] = a->out + row * (size_t)j->ldo + (size_t)h * (size_t)hd;
        t->last[it] = a->causal ? s->kv_len - s->n_q + qi : s->kv_len - 1;
        t->m[it] = -INFINITY;
        t->l[it] = 0.0f;
        memset(t->acc[it], 0, (size_t)hd * sizeof(float));
        t->maxlast = t->last[it] > t->maxlast ? t->last[it] : t->maxlast;
    }
}

/* Loads keys kb .. kb + nk - 1 of sequence s, kv head g into the block. */
static void xc_attn_block_load(const xc_attn_job *j, xc_attn_block *B, const xc_attn_seq *s, int g,
                               int kb, int nk) {
    const xc_attention_args *a = j->a;
    int hd = j->hd;
    size_t kcol = (size_t)g * (size_t)hd;
    for (int jj = 0; jj < nk; jj++) {
        size_t r = xc_attn_kv_row(a, s, kb + jj) * (size_t)j->ldkv + kcol;
        if (a->kv_dtype == XC_DTYPE_BF16) {
            const uint16_t *k16 = (const uint16_t *)a->k + r, *v16 = (const uint16_t *)a->v + r;
            if (j->simd) {
                xc_attn_widen_avx2(B->kw[jj], k16, hd);
                xc_attn_widen_avx2(B->vw[jj], v16, hd);
            } else {
                for (int d = 0; d < hd; d++) {
                    B->kw[jj][d] = xc_bf16_to_f32(k16[d]);
                    B->vw[jj][d] = xc_bf16_to_f32(v16[d]);
                }
            }
            B->kp[jj] = B->kw[jj];
            B->vp[jj] = B->vw[jj];
        } else {
            B->kp[jj] = (const float *)a->k + r;
            B->vp[jj] = (const float *)a->v + r;
        }
    }
}

/* One block's step for one tile: its first nk keys of the block starting at key kb (nk from the
 * tile's own last key, so the operations do not depend on the group). */
static void xc_attn_tile_block(const xc_attn_job *j, xc_attn_tile *t, const xc_attn_block *B,
                               int kb) {
    int hd = j->hd, qt = t->qt;
    int nk = t->maxlast + 1 - kb < XC_ATTN_KB ? t->maxlast + 1 - kb : XC_ATTN_KB;
    t->kp = B->kp;
    t->vp = B->vp;
    if (j->simd) {
        xc_attn_scores_avx2(t, nk, hd, j->scale);
    } else {
        xc_attn_scores_scalar(t, nk, hd, j->scale);
    }
    float f[XC_ATTN_QT];
    for (int it = 0; it < qt; it++) {
        int nvis = t->last[it] + 1 - kb;
        nvis = nvis < nk ? nvis : nk;
        if (nvis <= 0) { /* the whole block is in this item's future: contributes nothing */
            memset(t->p[it], 0, sizeof t->p[it]);
            f[it] = 1.0f;
            continue;
        }
        float bm = t->p[it][0];
        for (int jj = 1; jj < nvis; jj++) {
            bm = t->p[it][jj] > bm ? t->p[it][jj] : bm;
        }
        float mnew = bm > t->m[it] ? bm : t->m[it];
        f[it] = expf(t->m[it] - mnew); /* 0 on the first block (m = -inf) */
        float sum = j->simd ? xc_attn_exp_avx2(t->p[it], nvis, mnew)
                            : xc_attn_exp_scalar(t->p[it], nvis, mnew);
        t->l[it] = t->l[it] * f[it] + sum;
        t->m[it] = mnew;
    }
    if (j->simd) {
        xc_attn_pv_avx2(t, nk, hd, f);
    } else {
        xc_attn_pv_scalar(t, nk, hd, f);
    }
}

static void xc_attn_tile_finish(const xc_attn_job *j, xc_attn_tile *t, int nit) {
    for (int it = 0; it < nit; it++) {
        float inv = 1.0f / t->l[it];
        for (int d = 0; d < j->hd; d++) {
            t->out[it][d] = t->acc[it][d] * inv;
        }
    }
}

/* Tiles tile0 .. tile0 + n - 1 (n <= XC_ATTN_GROUP) of sequence s, kv head g, walking the key
 * blocks together: each block is loaded once, for every tile that still sees it. */
static void xc_attn_group_run(const xc_attn_job *j, xc_attn_block *B, xc_attn_tile *t,
                              const xc_attn_seq *s, int g, int tile0, int n, int qt) {
    int items = s->n_q * j->group, maxlast = 0;
    for (int i = 0; i < n; i++) {
        int it0 = (tile0 + i) * qt;
        int nit = items - it0 < qt ? items - it0 : qt;
        xc_attn_tile_init(j, &t[i], s, g, it0, nit, qt);
        maxlast = t[i].maxlast > maxlast ? t[i].maxlast : maxlast;
    }
    for (int kb = 0; kb <= maxlast; kb += XC_ATTN_KB) {
        int nk = maxlast + 1 - kb < XC_ATTN_KB ? maxlast + 1 - kb : XC_ATTN_KB;
        xc_attn_block_load(j, B, s, g, kb, nk);
        for (int i = 0; i < n; i++) {
            if (t[i].maxlast >= kb) {
                xc_attn_tile_block(j, &t[i], B, kb);
            }
        }
    }
    for (int i = 0; i < n; i++) {
        int it0 = (tile0 + i) * qt;
        xc_attn_tile_finish(j, &t[i], items - it0 < qt ? items - it0 : qt);
    }
}

/* Tile size for a sequence with `items` (query, head) pairs: 8 when it has that many (prefill),
 * else 4 (decode: one query times a GQA group). Any tile size gives the same bits per item. */
static int xc_attn_qt(long long items) {
    return items >= 8 ? 8 : 4;
}

/* Groups of XC_ATTN_GROUP consecutive tiles of a (sequence, kv head). */
static int xc_attn_groups(long long items) {
    long long tiles = (items + xc_attn_qt(items) - 1) / xc_attn_qt(items);
    return (int)((tiles + XC_ATTN_GROUP - 1) / XC_ATTN_GROUP);
}

/* Tasks enumerate (sequence, kv head, tile group), groups from the last query rows down: the
 * threads claim tasks dynamically, and taking long causal groups first leaves short ones for the
 * end. The block and the tiles live on the thread's stack (about 420 KiB at head_dim 512). */
static void xc_attn_task(void *p, int task, int n_tasks) {
    (void)n_tasks;
    const xc_attn_job *j = p;
    const xc_attention_args *a = j->a;
    xc_attn_block B;
    xc_attn_tile t[XC_ATTN_GROUP];
    for (int si = 0; si < a->n_seqs; si++) {
        const xc_attn_seq *s = &a->seqs[si];
        int items = s->n_q * j->group;
        int qt = xc_attn_qt(items);
        int tiles = (items + qt - 1) / qt, groups = xc_attn_groups(items);
        if (task < groups * a->n_kv_heads) {
            int g = task / groups, gi = groups - 1 - task % groups;
            int tile0 = gi * XC_ATTN_GROUP;
            int n = tiles - tile0 < XC_ATTN_GROUP ? tiles - tile0 : XC_ATTN_GROUP;
            xc_attn_group_run(j, &B, t, s, g, tile0, n, qt);
            return;
        }
        task -= groups * a->n_kv_heads;
    }
}

xc_status xc_cpu_attention(xc_backend *be, const xc_attention_args *a) {
    XC_TRY(xc_opcheck_attention(a));
    xc_attn_job j = {
        .a = a,
        .group = a->n_heads / a->n_kv_heads,
        .hd = a->head_dim,
        .ldq = xc_opcheck_ld(a->ldq, a->n_heads * a->head_dim),
        .ldo = xc_opcheck_ld(a->ldo, a->n_heads * a->head_dim),
        .ldkv = xc_opcheck_ld(a->ldkv, a->n_kv_heads * a->head_dim),
        .scale = a->scale != 0.0f ? a->scale : 1.0f / sqrtf((float)a->head_dim),
        .simd = xc_cpu_simd(be),
    };
    long long n_tasks = 0;
    for (int si = 0; si < a->n_seqs; si++) {
        long long items = (long long)a->seqs[si].n_q * j.group;
        n_tasks += (long long)xc_attn_groups(items) * a->n_kv_heads;
    }
    if (n_tasks > INT32_MAX) {
        return xc_errf(XC_ERR_ARG, "attention: %lld tiles is too many", n_tasks);
    }
    xc_cpu_parallel(be, (int)n_tasks, xc_attn_task, &j);
    return XC_OK;
}
