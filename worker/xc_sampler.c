/* Sampling: HF processor order, seeded xoshiro256** generator, heap-based top-k. */
#include "xc_sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"

struct xc_sampler {
    int n_vocab;
    xc_sampling p;
    uint64_t rng[4];
    uint8_t *seen; /* (n_vocab) */
    int32_t *seen_list;
    int n_seen;
    int32_t *idx; /* (n_vocab) scratch */
    float *prob;  /* (n_vocab) scratch */
};

xc_sampling xc_sampling_defaults(void) {
    return (xc_sampling){.greedy = false,
                         .temperature = 1.0f,
                         .top_k = 50,
                         .top_p = 0.8f,
                         .repetition_penalty = 1.005f,
                         .seed = 0};
}

xc_status xc_sampling_validate(const xc_sampling *s) {
    if (!(s->temperature > 0.0f) || s->temperature > 100.0f) {
        return xc_errf(XC_ERR_ARG, "temperature must be in (0, 100], got %g", s->temperature);
    }
    if (s->top_k < 0) {
        return xc_errf(XC_ERR_ARG, "top_k must be >= 0, got %d", s->top_k);
    }
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) {
        return xc_errf(XC_ERR_ARG, "top_p must be in (0, 1], got %g", s->top_p);
    }
    if (!(s->repetition_penalty > 0.0f) || s->repetition_penalty > 100.0f) {
        return xc_errf(XC_ERR_ARG, "repetition_penalty must be in (0, 100], got %g",
                       s->repetition_penalty);
    }
    return XC_OK;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double next_unit(uint64_t s[4]) {
    return (double)(next_u64(s) >> 11) * 0x1.0p-53;
}

xc_status xc_sampler_create(int n_vocab, const xc_sampling *params, xc_sampler **out) {
    if (n_vocab <= 0) {
        return xc_errf(XC_ERR_ARG, "sampler: vocabulary of %d", n_vocab);
    }
    XC_TRY(xc_sampling_validate(params));
    xc_sampler *s = xc_calloc(1, sizeof *s);
    if (!s) {
        return XC_ERR_NOMEM;
    }
    s->n_vocab = n_vocab;
    s->p = *params;
    uint64_t seed = params->seed;
    for (int i = 0; i < 4; i++) {
        s->rng[i] = splitmix64(&seed);
    }
    s->seen = xc_calloc((size_t)n_vocab, 1);
    s->seen_list = xc_malloc((size_t)n_vocab * sizeof(int32_t));
    s->idx = xc_malloc((size_t)n_vocab * sizeof(int32_t));
    s->prob = xc_malloc((size_t)n_vocab * sizeof(float));
    if (!s->seen || !s->seen_list || !s->idx || !s->prob) {
        xc_sampler_destroy(s);
        return XC_ERR_NOMEM;
    }
    *out = s;
    return XC_OK;
}

void xc_sampler_destroy(xc_sampler *s) {
    if (!s) {
        return;
    }
    xc_free(s->seen);
    xc_free(s->seen_list);
    xc_free(s->idx);
    xc_free(s->prob);
    xc_free(s);
}

xc_status xc_sampler_observe(xc_sampler *s, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= s->n_vocab) {
            return xc_errf(XC_ERR_ARG, "sampler: id %d outside the vocabulary of %d", ids[i],
                           s->n_vocab);
        }
    }
    for (int i = 0; i < n; i++) {
        if (!s->seen[ids[i]]) {
            s->seen[ids[i]] = 1;
            s->seen_list[s->n_seen++] = ids[i];
        }
    }
    return XC_OK;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

/* Sift-down for a min-heap of indices keyed by logits. */
static void heap_down(int32_t *h, int n, int i, const float *x) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && x[h[l]] < x[h[m]]) {
            m = l;
        }
        if (r < n && x[h[r]] < x[h[m]]) {
            m = r;
        }
        if (m == i) {
            return;
        }
        int32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int cmp_desc(const void *a, const void *b, void *key) {
    const float *k = key;
    float x = k[*(const int32_t *)a], y = k[*(const int32_t *)b];
    if (x != y) {
        return x > y ? -1 : 1;
    }
    return *(const int32_t *)a - *(const int32_t *)b;
}

xc_status xc_sampler_sample(xc_sampler *s, float *logits, int32_t *out) {
    int n = s->n_vocab;
    if (s->p.repetition_penalty != 1.0f) {
        for (int i = 0; i < s->n_seen; i++) {
            float *v = &logits[s->seen_list[i]];
            *v = *v < 0 ? *v * s->p.repetition_penalty : *v / s->p.repetition_penalty;
        }
    }
    int32_t tok;
    if (s->p.greedy) {
        tok = argmax(logits, n);
    } else {
        for (int i = 0; i < n; i++) {
            logits[i] /= s->p.temperature;
        }
        /* candidates: every token >= the k-th largest (HF keeps ties), else all */
        int n_c = n;
        int32_t *c = s->idx;
        if (s->p.top_k > 0 && s->p.top_k < n) {
            int k = s->p.top_k;
            for (int i = 0; i < k; i++) {
                c[i] = i;
            }
            for (int i = k / 2 - 1; i >= 0; i--) {
                heap_down(c, k, i, logits);
            }
            for (int i = k; i < n; i++) {
                if (logits[i] > logits[c[0]]) {
                    c[0] = i;
                    heap_down(c, k, 0, logits);
                }
            }
            float kth = logits[c[0]];
            n_c = 0;
            for (int i = 0; i < n; i++) {
                if (logits[i] >= kth) {
                    c[n_c++] = i;
                }
            }
        } else {
            for (int i = 0; i < n; i++) {
                c[i] = i;
            }
        }
        qsort_r(c, (size_t)n_c, sizeof(int32_t), cmp_desc, logits);
        float mx = logits[c[0]];
        double sum = 0.0;
        for (int i = 0; i < n_c; i++) {
            s->prob[i] = expf(logits[c[i]] - mx);
            sum += s->prob[i];
        }
        /* nucleus: HF drops tokens whose ascending cumulative probability is <= 1 - top_p,
         * i.e. keeps the smallest descending prefix whose mass reaches top_p (at least one) */
        int keep = n_c;
        if (s->p.top_p < 1.0f) {
            double cum = 0.0, drop = (1.0 - (double)s->p.top_p) * sum;
            for (int i = n_c - 1; i > 0; i--) {
                cum += s->prob[i];
                if (cum > drop) {
                    break;
                }
                keep = i;
            }
        }
        double total = 0.0;
        for (int i = 0; i < keep; i++) {
            total += s->prob[i];
        }
        double r = next_unit(s->rng) * total, acc = 0.0;
        tok = c[keep - 1];
        for (int i = 0; i < keep; i++) {
            acc += s->prob[i];
            if (r < acc) {
                tok = c[i];
                break;
            }
        }
    }
    *out = tok;
    return xc_sampler_observe(s, &tok, 1);
}

/* ---- logprobs (api helper) ---- */

xc_status xc_sampler_logprobs(const float *logits, int n_vocab, int32_t token, int k, float *lp,
                              int32_t *top_ids, float *top_lps) {
    if (token < 0 || token >= n_vocab || k < 0 || k > 20) {
        return xc_errf(XC_ERR_ARG, "logprobs: token %d of %d, k %d (0..20)", token, n_vocab, k);
    }
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++) {
        mx = logits[i] > mx ? logits[i] : mx;
    }
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++) {
        sum += exp((double)logits[i] - mx);
    }
    double lse = mx + log(sum);
    *lp = (float)((double)logits[token] - lse);
    /* the k largest by insertion into a sorted list (k is small) */
    int n = 0;
    for (int i = 0; i < n_vocab && k > 0; i++) {
        float v = logits[i];
        if (n == k && !(v > logits[top_ids[k - 1]])) {
            continue;
        }
        int pos = n < k ? n++ : k - 1;
        while (pos > 0 && v > logits[top_ids[pos - 1]]) {
            top_ids[pos] = top_ids[pos - 1];
            pos--;
        }
        top_ids[pos] = i;
    }
    for (int i = 0; i < n; i++) {
        top_lps[i] = (float)((double)logits[top_ids[i]] - lse);
    }
    return XC_OK;
}
