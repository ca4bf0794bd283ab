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

/* Head dims up to this take the scores with the keys in the lanes (kt below): 8 keys share every
 * instruction, with the same operations per score as the kernel that puts the query's elements
 * in the lanes. That one's per-score horizontal sum is amortised over head_dim / 8 FMAs; at small
 * head dims (16 in the tiny model: 2 FMAs per score) it took most of the attention's time. */
#define XC_ATTN_KT_HD 32

/* One block of XC_ATTN_KB keys as a group of tiles reads it: row pointers, and a bf16 cache's
 * rows widened (exactly) to f32 once for every tile of the group; for head_dim <= XC_ATTN_KT_HD
 * also the keys transposed (kt[d][j] = element d of key j, 0 past the block's keys). */
typedef struct xc_attn_block {
    const float *kp[XC_ATTN_KB], *vp[XC_ATTN_KB];
    float kw[XC_ATTN_KB][XC_OPCHECK_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float vw[XC_ATTN_KB][XC_OPCHECK_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float kt[XC_ATTN_KT_HD][XC_ATTN_KB] __attribute__((aligned(32)));
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

/* Small head dims (<= XC_ATTN_KT_HD), 8 keys in the lanes (kt), with the bits of
 * xc_attn_scores_avx2: there lane l of a dot product accumulates elements l, l + 8, ... by FMAs
 * from zero, the horizontal sum adds (l0 + l4) + (l2 + l6) and (l1 + l5) + (l3 + l7), and the
 * head_dim % 8 tail follows by FMAs. Here chain(l) is that lane's FMA sequence for 8 keys at
 * once, and the sums come in the same order, so every score is the same float; what is saved is
 * the per-score horizontal sum (at head_dim 16: 2 FMAs per score, then 5 shuffles and adds).
 * G (1 or 2) key groups of 8 share each broadcast of q. */
XC_SIMD_INL void xc_attn_kt_groups(const float *q, const float (*kt)[XC_ATTN_KB], int g0, int hd,
                                   __m256 vs, float *out, const int G, const int N8) {
    __m256 half[2][2]; /* (l0 + l4) + (l2 + l6), (l1 + l5) + (l3 + l7) per group */
    for (int h = 0; h < 2; h++) {
        __m256 bl[2][2];
        for (int pi = 0; pi < 2; pi++) {
            const int l = h + 2 * pi; /* h = 0: lanes 0 and 2; h = 1: lanes 1 and 3 */
            __m256 a[2], b[2];
            for (int g = 0; g < G; g++) {
                a[g] = _mm256_setzero_ps();
                b[g] = _mm256_setzero_ps();
            }
            for (int m = 0; m < N8; m++) { /* N8 = head_dim / 8 (constant): unrolled */
                const int d = 8 * m + l;
                __m256 x = _mm256_broadcast_ss(q + d), y = _mm256_broadcast_ss(q + d + 4);
                for (int g = 0; g < G; g++) {
                    a[g] = _mm256_fmadd_ps(x, _mm256_load_ps(kt[d] + (g0 + g) * 8), a[g]);
                    b[g] = _mm256_fmadd_ps(y, _mm256_load_ps(kt[d + 4] + (g0 + g) * 8), b[g]);
                }
            }
            for (int g = 0; g < G; g++) {
                bl[pi][g] = _mm256_add_ps(a[g], b[g]);
            }
        }
        for (int g = 0; g < G; g++) {
            half[h][g] = _mm256_add_ps(bl[0][g], bl[1][g]);
        }
    }
    for (int g = 0; g < G; g++) {
        __m256 sv = _mm256_add_ps(half[0][g], half[1][g]);
        for (int d = 8 * N8; d < hd; d++) {
            sv = _mm256_fmadd_ps(_mm256_broadcast_ss(q + d), _mm256_load_ps(kt[d] + (g0 + g) * 8),
                                 sv);
        }
        _mm256_store_ps(out + (g0 + g) * 8, _mm256_mul_ps(sv, vs));
    }
}

XC_SIMD_INL void xc_attn_scores_kt_n(xc_attn_tile *t, const float (*kt)[XC_ATTN_KB], int nk, int hd,
                                     float scale, const int N8) {
    int ng = (nk + 7) / 8;
    __m256 vs = _mm256_set1_ps(scale);
    for (int it = 0; it < t->qt; it++) {
        int g = 0;
        for (; g + 2 <= ng; g += 2) {
            xc_attn_kt_groups(t->q[it], kt, g, hd, vs, t->p[it], 2, N8);
        }
        if (g < ng) {
            xc_attn_kt_groups(t->q[it], kt, g, hd, vs, t->p[it], 1, N8);
        }
    }
}

/* p[it][j] for j < nk (lanes up to the next multiple of 8 hold scores of zero keys, which the
 * exp masks); one unrolled body per head_dim / 8. */
XC_SIMD_FN void xc_attn_scores_kt_avx2(xc_attn_tile *t, const float (*kt)[XC_ATTN_KB], int nk,
                                       int hd, float scale) {
    switch (hd / 8) {
    case 0:
        xc_attn_scores_kt_n(t, kt, nk, hd, scale, 0);
        break;
    case 1:
        xc_attn_scores_kt_n(t, kt, nk, hd, scale, 1);
        break;
    case 2:
        xc_attn_scores_kt_n(t, kt, nk, hd, scale, 2);
        break;
    case 3:
        xc_attn_scores_kt_n(t, kt, nk, hd, scale, 3);
        break;
    default: /* 4: head_dim 32 (XC_ATTN_KT_HD) */
        xc_attn_scores_kt_n(t, kt, nk, hd, scale, 4);
        break;
    }
}

/* The largest of p[0 .. nvis) (1 <= nvis <= XC_ATTN_KB): max is exact, so the order of the
 * comparisons does not change the result. */
XC_SIMD_FN float xc_attn_max_avx2(const float *p, int nvis) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < nvis; j += 8) {
        __m256 v = _mm256_load_ps(p + j);
        if (j + 8 > nvis) {
            __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nvis - j), idx));
            v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, keep);
        }
        m = _mm256_max_ps(m, v);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
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

/* B->kt from B->kp: 8 x 8 blocks transposed in registers, keys past nk as zeros; a tail of
 * head_dim % 8 elements one by one. (A copy: no arithmetic.) */
XC_SIMD_FN void xc_attn_transpose_avx2(xc_attn_block *B, int nk, int hd) {
    int hd8 = hd & ~7;
    for (int j0 = 0; j0 < XC_ATTN_KB; j0 += 8) {
        for (int d0 = 0; d0 < hd8; d0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) {
                r[i] = j0 + i < nk ? _mm256_loadu_ps(B->kp[j0 + i] + d0) : _mm256_setzero_ps();
            }
            __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
            __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
            __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
            __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            _mm256_store_ps(B->kt[d0 + 0] + j0, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_store_ps(B->kt[d0 + 1] + j0, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_store_ps(B->kt[d0 + 2] + j0, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_store_ps(B->kt[d0 + 3] + j0, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_store_ps(B->kt[d0 + 4] + j0, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_store_ps(B->kt[d0 + 5] + j0, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_store_ps(B->kt[d0 + 6] + j0, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_store_ps(B->kt[d0 + 7] + j0, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    }
    for (int d = hd8; d < hd; d++) {
        for (int jj = 0; jj < XC_ATTN_KB; jj++) {
            B->kt[d][jj] = jj < nk ? B->kp[jj][d] : 0.0f;
        }
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
    if (hd <= XC_ATTN_KT_HD && j->simd) {
        xc_attn_transpose_avx2(B, nk, hd);
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
    if (hd <= XC_ATTN_KT_HD && j->simd) {
        xc_attn_scores_kt_avx2(t, (const float(*)[XC_ATTN_KB])B->kt, nk, hd, j->scale);
    } else if (j->simd) {
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
        if (j->simd) {
            bm = xc_attn_max_avx2(t->p[it], nvis);
        } else {
            for (int jj = 1; jj < nvis; jj++) {
                bm = t->p[it][jj] > bm ? t->p[it][jj] : bm;
            }
        }
        float mnew = bm > t->m[it] ? bm : t->m[it];
        /* 0 on the first block (m = -inf); exactly 1 (expf(0)) when the max stays */
        f[it] = t->m[it] == mnew ? 1.0f : expf(t->m[it] - mnew);
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
