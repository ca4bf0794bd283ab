/* Sampling: HF processor order, counter-based generator of (seed, choice, position), heap-based
 * top-k. */
#include "xc_sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"

struct xc_sampler {
    int n_vocab;
    xc_sampling p;
    uint64_t pos;       /* position of the next token drawn */
    int32_t *count;     /* (n_vocab) times generated, when presence/frequency penalties are on */
    int n_generated;    /* tokens generated (sampled or observed as output) */
    uint8_t *seen;      /* (n_vocab) 1 if seen */
    int32_t *seen_list; /* (cap_seen) distinct seen ids in first-seen order */
    int n_seen, cap_seen;
    int32_t *idx; /* (cap) candidate ids: scratch grown on demand, usually a few hundred */
    float *prob;  /* (cap) their unnormalised probabilities */
    int cap;
};

/* splitmix64's finalizer: a bijection of 64-bit words with good avalanche. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double xc_sampler_uniform(uint64_t seed, uint32_t choice, uint64_t pos) {
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull);
    h = mix64(h + ((uint64_t)choice + 1) * 0xd1b54a32d192ed03ull);
    h = mix64(h ^ mix64(pos + 0x632be59bd9b4e019ull));
    return (double)(h >> 11) * 0x1.0p-53;
}

void xc_sampler_set_position(xc_sampler *s, uint64_t pos) {
    s->pos = pos;
}

/* The uniform of this draw; advances the position. */
static double next_unit(xc_sampler *s) {
    return xc_sampler_uniform(s->p.seed, s->p.choice, s->pos++);
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
    for (int i = 0; i < params->n_logit_bias; i++) {
        if (params->logit_bias_ids[i] >= n_vocab) {
            xc_free(s);
            return xc_errf(XC_ERR_ARG, "logit_bias: id %d outside the vocabulary of %d",
                           params->logit_bias_ids[i], n_vocab);
        }
    }
    s->seen = xc_calloc((size_t)n_vocab, 1);
    if (params->presence_penalty != 0.0f || params->frequency_penalty != 0.0f) {
        s->count = xc_calloc((size_t)n_vocab, sizeof(int32_t));
    }
    if (!s->seen ||
        ((params->presence_penalty != 0.0f || params->frequency_penalty != 0.0f) && !s->count)) {
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
    xc_free(s->count);
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
        if (s->seen[ids[i]]) {
            continue;
        }
        if (s->n_seen == s->cap_seen) {
            int cap = s->cap_seen ? s->cap_seen * 2 : 256;
            int32_t *nl = xc_realloc(s->seen_list, (size_t)cap * sizeof(int32_t));
            if (!nl) {
                return XC_ERR_NOMEM;
            }
            s->seen_list = nl;
            s->cap_seen = cap;
        }
        s->seen[ids[i]] = 1;
        s->seen_list[s->n_seen++] = ids[i];
    }
    return XC_OK;
}

xc_status xc_sampler_observe_output(xc_sampler *s, const int32_t *ids, int n) {
    XC_TRY(xc_sampler_observe(s, ids, n));
    for (int i = 0; i < n; i++) {
        if (s->count) {
            s->count[ids[i]]++;
        }
    }
    s->n_generated += n;
    return XC_OK;
}

/* Grows the candidate scratch to at least n entries. */
static xc_status reserve(xc_sampler *s, int n) {
    if (n <= s->cap) {
        return XC_OK;
    }
    int32_t *ni = xc_realloc(s->idx, (size_t)n * sizeof(int32_t));
    if (!ni) {
        return XC_ERR_NOMEM;
    }
    s->idx = ni;
    float *np = xc_realloc(s->prob, (size_t)n * sizeof(float));
    if (!np) {
        return XC_ERR_NOMEM;
    }
    s->prob = np;
    s->cap = n;
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

/* The k largest logits' ids into h (k <= n), in heap order; returns the k-th largest value. */
static float select_top(const float *x, int n, int k, int32_t *h) {
    for (int i = 0; i < k; i++) {
        h[i] = i;
    }
    for (int i = k / 2 - 1; i >= 0; i--) {
        heap_down(h, k, i, x);
    }
    for (int i = k; i < n; i++) {
        if (x[i] > x[h[0]]) {
            h[0] = i;
            heap_down(h, k, 0, x);
        }
    }
    return x[h[0]];
}

static int cmp_desc(const void *a, const void *b, void *key) {
    const float *k = key;
    float x = k[*(const int32_t *)a], y = k[*(const int32_t *)b];
    if (x != y) {
        return x > y ? -1 : 1;
    }
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* Nucleus over candidates sorted by descending logit with probabilities prob and total mass
 * denom: HF drops the tokens whose ascending cumulative mass is <= (1 - top_p), i.e. keeps a
 * descending prefix while the mass strictly above a token is < top_p * denom (at least one).
 * Returns the kept count, or -1 when all n_c candidates are kept but more may be needed. */
static int nucleus(const float *prob, int n_c, double denom, float top_p) {
    double above = 0.0, target = (double)top_p * denom;
    for (int i = 0; i < n_c; i++) {
        if (i > 0 && above >= target) {
            return i;
        }
        above += prob[i];
    }
    return -1;
}

/* Draws from candidates c[0..keep) with unnormalised probabilities prob. */
static int32_t draw(xc_sampler *s, const int32_t *c, const float *prob, int keep) {
    double total = 0.0;
    for (int i = 0; i < keep; i++) {
        total += prob[i];
    }
    double r = next_unit(s) * total, acc = 0.0;
    for (int i = 0; i < keep; i++) {
        acc += prob[i];
        if (r < acc) {
            return c[i];
        }
    }
    return c[keep - 1];
}

/* Sorts the candidate ids in s->idx[0..n_c) by descending logit and fills their probabilities. */
static void sort_candidates(xc_sampler *s, const float *logits, int n_c, float mx) {
    qsort_r(s->idx, (size_t)n_c, sizeof(int32_t), cmp_desc, (void *)logits);
    for (int i = 0; i < n_c; i++) {
        s->prob[i] = expf(logits[s->idx[i]] - mx);
    }
}

/* min_p after top-k/top-p (HF order): of the kept candidates (sorted by descending logit), only
 * those with p >= min_p * p_max, i.e. logit >= max + log(min_p); at least one. */
static int min_p_cut(const xc_sampler *s, const float *logits, const int32_t *c, int keep,
                     float mx) {
    if (s->p.min_p <= 0.0f) {
        return keep;
    }
    float thr = mx + logf(s->p.min_p);
    while (keep > 1 && logits[c[keep - 1]] < thr) {
        keep--;
    }
    return keep;
}

xc_status xc_sampler_sample(xc_sampler *s, float *logits, int32_t *out) {
    int n = s->n_vocab;
    for (int i = 0; i < s->p.n_logit_bias; i++) {
        logits[s->p.logit_bias_ids[i]] += s->p.logit_bias[i];
    }
    if (s->n_generated < s->p.min_tokens) {
        for (int i = 0; i < s->p.n_stop_ids; i++) {
            if (s->p.stop_ids[i] >= 0 && s->p.stop_ids[i] < n) {
                logits[s->p.stop_ids[i]] = -INFINITY;
            }
        }
    }
    if (s->p.repetition_penalty != 1.0f) {
        for (int i = 0; i < s->n_seen; i++) {
            float *v = &logits[s->seen_list[i]];
            *v = *v < 0 ? *v * s->p.repetition_penalty : *v / s->p.repetition_penalty;
        }
    }
    if (s->count) {
        for (int i = 0; i < s->n_seen; i++) {
            int32_t id = s->seen_list[i], c = s->count[id];
            if (c > 0) {
                logits[id] -= (float)c * s->p.frequency_penalty + s->p.presence_penalty;
            }
        }
    }
    int32_t tok;
    if (s->p.greedy) {
        tok = argmax(logits, n);
        s->pos++;
        *out = tok;
        return xc_sampler_observe_output(s, &tok, 1);
    }
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        logits[i] /= s->p.temperature;
        mx = logits[i] > mx ? logits[i] : mx;
    }
    if (s->p.min_p > 0.0f && !(s->p.top_k > 0 && s->p.top_k < n) && !(s->p.top_p < 1.0f)) {
        /* min_p alone: a mask, then the unfiltered draw below */
        float thr = mx + logf(s->p.min_p);
        for (int i = 0; i < n; i++) {
            logits[i] = logits[i] < thr ? -INFINITY : logits[i];
        }
    }
    if (s->p.top_k > 0 && s->p.top_k < n) {
        /* every token >= the k-th largest (HF keeps ties), then top-p within them */
        XC_TRY(reserve(s, s->p.top_k));
        float kth = select_top(logits, n, s->p.top_k, s->idx);
        int n_c = 0;
        for (int i = 0; i < n; i++) {
            n_c += logits[i] >= kth;
        }
        XC_TRY(reserve(s, n_c));
        for (int i = 0, j = 0; i < n; i++) {
            if (logits[i] >= kth) {
                s->idx[j++] = i;
            }
        }
        sort_candidates(s, logits, n_c, mx);
        double denom = 0.0;
        for (int i = 0; i < n_c; i++) {
            denom += s->prob[i];
        }
        int keep = s->p.top_p < 1.0f ? nucleus(s->prob, n_c, denom, s->p.top_p) : n_c;
        keep = min_p_cut(s, logits, s->idx, keep < 0 ? n_c : keep, mx);
        tok = draw(s, s->idx, s->prob, keep);
    } else if (s->p.top_p < 1.0f) {
        /* nucleus over the whole vocabulary: sort only as many of the largest logits as the
         * nucleus needs, growing the block until it covers top_p of the mass */
        double denom = 0.0;
        for (int i = 0; i < n; i++) {
            denom += expf(logits[i] - mx);
        }
        int keep = -1, b = 256;
        for (;;) {
            b = b < n ? b : n;
            XC_TRY(reserve(s, b));
            select_top(logits, n, b, s->idx);
            sort_candidates(s, logits, b, mx);
            keep = nucleus(s->prob, b, denom, s->p.top_p);
            if (keep >= 0 || b == n) {
                break;
            }
            b *= 4;
        }
        keep = min_p_cut(s, logits, s->idx, keep < 0 ? b : keep, mx);
        tok = draw(s, s->idx, s->prob, keep);
    } else {
        /* no filter: one pass for the mass, one to draw */
        double denom = 0.0;
        for (int i = 0; i < n; i++) {
            denom += expf(logits[i] - mx);
        }
        double r = next_unit(s) * denom, acc = 0.0;
        tok = n - 1;
        for (int i = 0; i < n; i++) {
            acc += expf(logits[i] - mx);
            if (r < acc) {
                tok = i;
                break;
            }
        }
    }
    *out = tok;
    return xc_sampler_observe_output(s, &tok, 1);
}

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

bool xc_sampler_plan_next(const xc_sampler *s, xc_sampler_plan *p) {
    if (s->p.n_logit_bias > 0 || (s->n_generated < s->p.min_tokens && s->p.n_stop_ids > 0) ||
        s->count || s->p.min_p > 0.0f) {
        return false;
    }
    *p = (xc_sampler_plan){.greedy = s->p.greedy,
                           .temperature = s->p.temperature,
                           .top_k = s->p.top_k,
                           .top_p = s->p.top_p,
                           .repetition_penalty = s->p.repetition_penalty,
                           .seen = s->seen_list,
                           .n_seen = s->n_seen,
                           .u = xc_sampler_uniform(s->p.seed, s->p.choice, s->pos)};
    return true;
}

xc_status xc_sampler_accept(xc_sampler *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab) {
        return xc_errf(XC_ERR_ARG, "sampler: token %d outside the vocabulary of %d", token,
                       s->n_vocab);
    }
    s->pos++;
    return xc_sampler_observe_output(s, &token, 1);
}
