/* Sampler: HF repetition-penalty rule, top-k/top-p candidate sets against a naive sort-based
 * reference, reproducibility per seed, and the empirical distribution of draws. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_sampler.h"
#include "xc_test.h"

#define V 200

static void make_logits(float *x, unsigned seed) {
    srand(seed);
    for (int i = 0; i < V; i++) {
        x[i] = (float)(rand() % 2000 - 1000) / 250.0f;
    }
}

/* Naive reference of the HF warpers: returns the kept set as a 0/1 mask and the probabilities. */
static void ref_keep(const float *logits, const xc_sampling *p, const int32_t *seen, int n_seen,
                     unsigned char *keep, double *prob) {
    float x[V];
    memcpy(x, logits, sizeof x);
    for (int i = 0; i < n_seen; i++) {
        float *v = &x[seen[i]];
        *v = *v < 0 ? *v * p->repetition_penalty : *v / p->repetition_penalty;
    }
    for (int i = 0; i < V; i++) {
        x[i] /= p->temperature;
        keep[i] = 1;
    }
    if (p->top_k > 0) { /* k-th largest by a full sort */
        float s[V];
        memcpy(s, x, sizeof s);
        for (int i = 0; i < V; i++) {
            for (int j = i + 1; j < V; j++) {
                if (s[j] > s[i]) {
                    float t = s[i];
                    s[i] = s[j];
                    s[j] = t;
                }
            }
        }
        float kth = s[p->top_k - 1];
        for (int i = 0; i < V; i++) {
            keep[i] = x[i] >= kth;
        }
    }
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < V; i++) {
        if (keep[i] && x[i] > mx) {
            mx = x[i];
        }
    }
    for (int i = 0; i < V; i++) {
        prob[i] = keep[i] ? exp(x[i] - mx) : 0;
        sum += prob[i];
    }
    if (p->top_p < 1.0f) { /* ascending cumulative mass <= 1 - top_p is dropped (keep >= 1) */
        int order[V], n = 0;
        for (int i = 0; i < V; i++) {
            if (keep[i]) {
                order[n++] = i;
            }
        }
        for (int i = 0; i < n; i++) {
            for (int j = i + 1; j < n; j++) {
                if (prob[order[j]] < prob[order[i]] ||
                    (prob[order[j]] == prob[order[i]] && order[j] > order[i])) {
                    int t = order[i];
                    order[i] = order[j];
                    order[j] = t;
                }
            }
        }
        double cum = 0;
        for (int i = 0; i < n - 1; i++) {
            cum += prob[order[i]] / sum;
            if (cum <= 1.0 - p->top_p) {
                keep[order[i]] = 0;
            }
        }
    }
    sum = 0;
    for (int i = 0; i < V; i++) {
        prob[i] = keep[i] ? prob[i] : 0;
        sum += prob[i];
    }
    for (int i = 0; i < V; i++) {
        prob[i] /= sum;
    }
}

static void test_sampler_greedy_applies_penalty(void **state) {
    (void)state;
    float x[V] = {0};
    x[5] = 2.0f;
    x[7] = 1.99f;
    x[9] = -1.0f;
    xc_sampling p = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1.01f};
    xc_sampler *s = NULL;
    assert_int_equal(xc_sampler_create(V, &p, &s), XC_OK);
    int32_t t;
    assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
    assert_int_equal(t, 5); /* 5 not yet seen: 2.0 wins */
    assert_true(x[5] == 2.0f);
    x[5] = 2.0f;
    x[7] = 1.99f;
    assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK); /* 5 seen: 2.0/1.01 < 1.99 */
    assert_int_equal(t, 7);
    int32_t seen = 9;
    assert_int_equal(xc_sampler_observe(s, &seen, 1), XC_OK);
    x[9] = -1.0f;
    assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
    assert_true(fabsf(x[9] - (-1.01f)) < 1e-6f); /* negative logits are multiplied */
    int32_t bad = V;
    assert_int_equal(xc_sampler_observe(s, &bad, 1), XC_ERR_ARG);
    xc_sampler_destroy(s);
}

static void test_sampler_draws_only_kept_tokens_with_ref_frequencies(void **state) {
    (void)state;
    const xc_sampling cases[] = {
        {.temperature = 1.0f, .top_k = 50, .top_p = 0.8f, .repetition_penalty = 1.005f},
        {.temperature = 0.7f, .top_k = 0, .top_p = 0.9f, .repetition_penalty = 1.0f},
        {.temperature = 1.3f, .top_k = 5, .top_p = 1.0f, .repetition_penalty = 1.2f},
        {.temperature = 2.0f, .top_k = 0, .top_p = 1.0f, .repetition_penalty = 1.0f},
    };
    float base[V];
    make_logits(base, 42);
    int32_t seen[3] = {1, 2, 3};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        unsigned char keep[V];
        double prob[V];
        ref_keep(base, &cases[c], seen, 3, keep, prob);
        int counts[V] = {0};
        const int draws = 20000;
        for (int d = 0; d < draws; d++) {
            xc_sampling p = cases[c];
            p.seed = (uint64_t)d * 7919u + c;
            xc_sampler *s = NULL;
            assert_int_equal(xc_sampler_create(V, &p, &s), XC_OK);
            assert_int_equal(xc_sampler_observe(s, seen, 3), XC_OK);
            float x[V];
            memcpy(x, base, sizeof x);
            int32_t t;
            assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
            if (!keep[t]) {
                fail_msg("case %zu drew token %d outside the reference's kept set", c, t);
            }
            counts[t]++;
            xc_sampler_destroy(s);
        }
        for (int i = 0; i < V; i++) { /* 5-sigma binomial bound per token */
            double mu = draws * prob[i], sd = sqrt(draws * prob[i] * (1 - prob[i])) + 1;
            if (fabs(counts[i] - mu) > 5 * sd) {
                fail_msg("case %zu token %d: %d draws, expected %.1f", c, i, counts[i], mu);
            }
        }
    }
}

static void test_sampler_is_reproducible_per_seed(void **state) {
    (void)state;
    xc_sampling p = xc_sampling_defaults();
    p.seed = 1234;
    int32_t a[50], b[50];
    for (int run = 0; run < 2; run++) {
        xc_sampler *s = NULL;
        assert_int_equal(xc_sampler_create(V, &p, &s), XC_OK);
        for (int i = 0; i < 50; i++) {
            float x[V];
            make_logits(x, (unsigned)i);
            assert_int_equal(xc_sampler_sample(s, x, run ? &b[i] : &a[i]), XC_OK);
        }
        xc_sampler_destroy(s);
    }
    assert_memory_equal(a, b, sizeof a);
}

static void test_sampler_validates_params(void **state) {
    (void)state;
    xc_sampling p = xc_sampling_defaults();
    xc_sampler *s = NULL;
    p.temperature = 0;
    assert_int_equal(xc_sampler_create(V, &p, &s), XC_ERR_ARG);
    p = xc_sampling_defaults();
    p.top_p = 1.5f;
    assert_int_equal(xc_sampler_create(V, &p, &s), XC_ERR_ARG);
    p = xc_sampling_defaults();
    p.top_k = -1;
    assert_int_equal(xc_sampler_create(V, &p, &s), XC_ERR_ARG);
    p = xc_sampling_defaults();
    p.repetition_penalty = 0;
    assert_int_equal(xc_sampler_create(V, &p, &s), XC_ERR_ARG);
    assert_int_equal(xc_sampler_create(0, &p, &s), XC_ERR_ARG);
}

/* A flat distribution over a vocabulary larger than the first nucleus block (256): the sampler
 * must grow its block until the nucleus is covered; draws stay inside the reference's set. */
static int cmp_desc_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : (x < y ? 1 : 0);
}

static void test_sampler_wide_nucleus_grows_block(void **state) {
    (void)state;

    enum { W = 3000 };

    static float base[W], sorted[W];
    for (int i = 0; i < W; i++) {
        base[i] = (float)((i * 7919) % W) / (float)W; /* distinct, nearly flat */
    }
    const float top_p = 0.9f;
    /* reference: keep the descending prefix while the mass above a token is < top_p of all */
    memcpy(sorted, base, sizeof base);
    qsort(sorted, W, sizeof(float), cmp_desc_float);
    double total = 0, above = 0;
    for (int i = 0; i < W; i++) {
        total += exp((double)sorted[i] - sorted[0]);
    }
    float cutoff = sorted[W - 1];
    for (int i = 0; i < W; i++) {
        if (i > 0 && above >= top_p * total) {
            cutoff = sorted[i - 1];
            break;
        }
        above += exp((double)sorted[i] - sorted[0]);
    }
    int kept = 0;
    for (int i = 0; i < W; i++) {
        kept += base[i] >= cutoff;
    }
    assert_true(kept > 1024); /* the block had to grow past 256 and 1024 */
    for (int d = 0; d < 300; d++) {
        xc_sampling p = {.temperature = 1,
                         .top_k = 0,
                         .top_p = top_p,
                         .repetition_penalty = 1,
                         .seed = (uint64_t)d};
        xc_sampler *s = NULL;
        assert_int_equal(xc_sampler_create(W, &p, &s), XC_OK);
        static float x[W];
        memcpy(x, base, sizeof base);
        int32_t t;
        assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
        if (!(base[t] >= cutoff)) {
            fail_msg("draw %d picked token %d outside the nucleus", d, t);
        }
        xc_sampler_destroy(s);
    }
}

/* Resume (issue 12.4): a sampler made for the same request at position p, having observed the
 * prompt and the p - prompt tokens already produced, draws exactly the tokens the undisturbed
 * sampler drew from p on (penalties included), whatever p; and a different choice index or seed
 * draws differently. */
static void test_sampler_resumes_at_any_position(void **state) {
    (void)state;
    xc_sampling p = xc_sampling_defaults();
    p.seed = 0xfedcba9876543210ull;
    p.choice = 3;
    p.repetition_penalty = 1.3f;
    const int prompt = 17, N = 60;
    int32_t full[60];
    xc_sampler *s = NULL;
    assert_int_equal(xc_sampler_create(V, &p, &s), XC_OK);
    xc_sampler_set_position(s, prompt);
    for (int i = 0; i < N; i++) {
        float x[V];
        make_logits(x, (unsigned)i + 100);
        assert_int_equal(xc_sampler_sample(s, x, &full[i]), XC_OK);
    }
    xc_sampler_destroy(s);
    for (int k = 0; k < N; k += 7) {
        assert_int_equal(xc_sampler_create(V, &p, &s), XC_OK);
        assert_int_equal(xc_sampler_observe(s, full, k), XC_OK); /* the tokens re-prefilled */
        xc_sampler_set_position(s, (uint64_t)(prompt + k));
        for (int i = k; i < N; i++) {
            float x[V];
            int32_t t;
            make_logits(x, (unsigned)i + 100);
            assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
            assert_int_equal(t, full[i]);
        }
        xc_sampler_destroy(s);
    }
    /* another choice or seed: a different stream (some of 60 draws differ) */
    for (int v = 0; v < 2; v++) {
        xc_sampling q = p;
        if (v) {
            q.seed++;
        } else {
            q.choice++;
        }
        assert_int_equal(xc_sampler_create(V, &q, &s), XC_OK);
        xc_sampler_set_position(s, prompt);
        int same = 0;
        for (int i = 0; i < N; i++) {
            float x[V];
            int32_t t;
            make_logits(x, (unsigned)i + 100);
            assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
            same += t == full[i];
        }
        xc_sampler_destroy(s);
        assert_true(same < N);
    }
}

/* The counter-based uniforms: every 64-bit seed is its own stream (2^53 and 2^53 + 1, 2^64 - 1
 * and 0 differ), and over seeds, choices and positions the values are uniform (mean, variance
 * and a 64-bin chi-square against the uniform law) with no correlation between neighbours. */
static void test_sampler_uniform_is_a_good_counter_generator(void **state) {
    (void)state;
    const uint64_t seeds[] = {
        0, 1, 9007199254740992ull, 9007199254740993ull, UINT64_MAX, UINT64_MAX - 1};
    for (size_t a = 0; a < 6; a++) {
        for (size_t b = a + 1; b < 6; b++) {
            int same = 0;
            for (uint64_t pos = 0; pos < 64; pos++) {
                same +=
                    xc_sampler_uniform(seeds[a], 0, pos) == xc_sampler_uniform(seeds[b], 0, pos);
            }
            assert_int_equal(same, 0);
        }
    }

    enum { BINS = 64, N = 1 << 18 };

    static int bins[BINS];
    double sum = 0, sq = 0, cross = 0, prev = 0.5;
    for (int i = 0; i < N; i++) {
        /* walk seeds, choices and positions in turn */
        double u = xc_sampler_uniform((uint64_t)(i % 97) * 1000003u, (uint32_t)(i % 5),
                                      (uint64_t)(i / 485));
        assert_true(u >= 0.0 && u < 1.0);
        bins[(int)(u * BINS)]++;
        sum += u;
        sq += u * u;
        cross += (u - 0.5) * (prev - 0.5);
        prev = u;
    }
    double mean = sum / N, var = sq / N - mean * mean, chi = 0, e = (double)N / BINS;
    for (int b = 0; b < BINS; b++) {
        chi += (bins[b] - e) * (bins[b] - e) / e;
    }
    assert_true(fabs(mean - 0.5) < 0.005);
    assert_true(fabs(var - 1.0 / 12) < 0.002);
    assert_true(chi < 120); /* 63 degrees of freedom: p < 1e-5 above 120 */
    assert_true(fabs(cross / N) < 0.002);
}

/* Naive reference of the whole processor chain of xc_sampler.h in float64, written from the
 * definitions: logit_bias, min_tokens, HF repetition penalty (over prompt + generated),
 * OpenAI's frequency/presence penalties (over generated), temperature, top-k (ties kept), HF
 * top-p, HF min_p; prob = the normalized distribution drawn from (greedy: the argmax in *arg). */
static void ref_chain(const float *logits, const xc_sampling *p, const int32_t *prompt,
                      int n_prompt, const int32_t *gen, int n_gen, double *prob, int *arg) {
    double x[V];
    for (int i = 0; i < V; i++) {
        x[i] = logits[i];
    }
    for (int i = 0; i < p->n_logit_bias; i++) {
        x[p->logit_bias_ids[i]] += p->logit_bias[i];
    }
    if (n_gen < p->min_tokens) {
        for (int i = 0; i < p->n_stop_ids; i++) {
            x[p->stop_ids[i]] = -INFINITY;
        }
    }
    int cnt[V] = {0};
    unsigned char seen[V] = {0};
    for (int i = 0; i < n_prompt; i++) {
        seen[prompt[i]] = 1;
    }
    for (int i = 0; i < n_gen; i++) {
        seen[gen[i]] = 1;
        cnt[gen[i]]++;
    }
    for (int i = 0; i < V; i++) {
        if (seen[i]) { /* in float, as HF's torch.where on float32 logits */
            float v = (float)x[i];
            x[i] = v < 0 ? v * p->repetition_penalty : v / p->repetition_penalty;
        }
        if (cnt[i]) {
            x[i] = (float)x[i] - ((float)cnt[i] * p->frequency_penalty + p->presence_penalty);
        }
    }
    *arg = 0;
    for (int i = 1; i < V; i++) {
        *arg = x[i] > x[*arg] ? i : *arg;
    }
    double mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        x[i] = (float)((float)x[i] / p->temperature);
        mx = x[i] > mx ? x[i] : mx;
    }
    unsigned char keep[V];
    for (int i = 0; i < V; i++) {
        keep[i] = x[i] > -INFINITY;
    }
    int order[V];
    for (int i = 0; i < V; i++) {
        order[i] = i;
    }
    for (int i = 0; i < V; i++) { /* descending, ties by id */
        for (int j = i + 1; j < V; j++) {
            if (x[order[j]] > x[order[i]] || (x[order[j]] == x[order[i]] && order[j] < order[i])) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
    }
    if (p->top_k > 0 && p->top_k < V) {
        double kth = x[order[p->top_k - 1]];
        for (int i = 0; i < V; i++) {
            keep[i] = keep[i] && x[i] >= kth;
        }
    }
    double sum = 0;
    for (int i = 0; i < V; i++) {
        prob[i] = keep[i] ? exp(x[i] - mx) : 0;
        sum += prob[i];
    }
    if (p->top_p < 1.0f) { /* HF: drop while the ascending cumulative mass is <= 1 - top_p */
        double cum = 0;
        for (int r = V - 1, last = -1; r >= 0; r--) {
            int i = order[r];
            if (!keep[i]) {
                continue;
            }
            (void)last;
            cum += prob[i] / sum;
            if (cum <= 1.0 - p->top_p && i != order[0]) {
                keep[i] = 0;
            }
        }
    }
    if (p->min_p > 0.0f) {
        for (int i = 0; i < V; i++) {
            keep[i] = keep[i] && exp(x[i] - mx) >= p->min_p;
        }
    }
    sum = 0;
    for (int i = 0; i < V; i++) {
        prob[i] = keep[i] ? exp(x[i] - mx) : 0;
        sum += prob[i];
    }
    for (int i = 0; i < V; i++) {
        prob[i] /= sum;
    }
}

/* Every processor of issue 14 (alone and together) against ref_chain: greedy picks the
 * reference's argmax, sampled tokens are always in the reference's support and their frequencies
 * are within 5 sigma of its probabilities (binomial). A generated history (with repeats) feeds the
 * penalties; min_tokens is checked on both sides of its bound. */
static void test_sampler_processors_match_naive_chain(void **state) {
    (void)state;
    static xc_sampling cases[8];
    for (int c = 0; c < 8; c++) {
        cases[c] = (xc_sampling){.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    }
    cases[0].presence_penalty = 1.5f;
    cases[1].frequency_penalty = 0.8f;
    cases[1].presence_penalty = -0.5f;
    cases[2].min_p = 0.05f;
    cases[3].min_p = 0.2f, cases[3].top_k = 30, cases[3].top_p = 0.9f, cases[3].temperature = 0.8f;
    cases[4].n_logit_bias = 3;
    cases[4].logit_bias_ids[0] = 7, cases[4].logit_bias[0] = 100.0f;
    cases[4].logit_bias_ids[1] = 8, cases[4].logit_bias[1] = 4.5f;
    cases[4].logit_bias_ids[2] = 9, cases[4].logit_bias[2] = -100.0f;
    cases[5].min_tokens = 5, cases[5].n_stop_ids = 2, cases[5].stop_ids[0] = 11;
    cases[5].stop_ids[1] = 12;
    cases[6] = cases[5];
    cases[6].min_tokens = 4; /* 4 generated: no longer held back */
    cases[7].presence_penalty = 0.3f, cases[7].frequency_penalty = 1.1f, cases[7].min_p = 0.01f;
    cases[7].repetition_penalty = 1.3f, cases[7].top_p = 0.95f, cases[7].n_logit_bias = 1;
    cases[7].logit_bias_ids[0] = 3, cases[7].logit_bias[0] = 2.0f;
    float base[V];
    make_logits(base, 77);
    base[11] = base[12] = 6.0f; /* the stop ids are likely unless held back */
    const int32_t prompt[3] = {1, 2, 3};
    const int32_t gen[4] = {40, 41, 40, 3};
    for (int c = 0; c < 8; c++) {
        double prob[V];
        int arg;
        ref_chain(base, &cases[c], prompt, 3, gen, 4, prob, &arg);
        for (int greedy = 1; greedy >= 0; greedy--) {
            int counts[V] = {0};
            const int draws = greedy ? 1 : 20000;
            for (int d = 0; d < draws; d++) {
                xc_sampling p = cases[c];
                p.greedy = greedy;
                p.seed = (uint64_t)d;
                xc_sampler *s = NULL;
                assert_int_equal(xc_sampler_create(V, &p, &s), XC_OK);
                assert_int_equal(xc_sampler_observe(s, prompt, 3), XC_OK);
                assert_int_equal(xc_sampler_observe_output(s, gen, 4), XC_OK);
                float x[V];
                memcpy(x, base, sizeof x);
                int32_t t;
                assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
                xc_sampler_destroy(s);
                if (greedy) {
                    if (t != arg) {
                        fail_msg("case %d greedy: %d, reference %d", c, t, arg);
                    }
                    continue;
                }
                if (prob[t] == 0) {
                    fail_msg("case %d drew %d outside the reference's support", c, t);
                }
                counts[t]++;
            }
            for (int i = 0; i < V && !greedy; i++) {
                double mu = draws * prob[i], sd = sqrt(draws * prob[i] * (1 - prob[i])) + 1;
                if (fabs(counts[i] - mu) > 5 * sd) {
                    fail_msg("case %d token %d: %d draws, expected %.1f", c, i, counts[i], mu);
                }
            }
        }
    }
    /* the bias and min_tokens decide: +100 makes id 7 the argmax; min_tokens 5 keeps 11/12 out */
    double prob[V];
    int arg;
    ref_chain(base, &cases[4], prompt, 3, gen, 4, prob, &arg);
    assert_int_equal(arg, 7);
    ref_chain(base, &cases[5], prompt, 3, gen, 4, prob, &arg);
    assert_true(prob[11] == 0 && prob[12] == 0);
    ref_chain(base, &cases[6], prompt, 3, gen, 4, prob, &arg);
    assert_true(prob[11] > 0.1);
    /* validation: out-of-range values and ids */
    xc_sampling bad = cases[0];
    bad.presence_penalty = 2.5f;
    assert_int_equal(xc_sampling_validate(&bad), XC_ERR_ARG);
    bad = cases[2];
    bad.min_p = 1.5f;
    assert_int_equal(xc_sampling_validate(&bad), XC_ERR_ARG);
    bad = cases[4];
    bad.logit_bias[1] = 101.0f;
    assert_int_equal(xc_sampling_validate(&bad), XC_ERR_ARG);
    bad = cases[4];
    bad.logit_bias_ids[1] = V;
    xc_sampler *s = NULL;
    assert_int_equal(xc_sampler_create(V, &bad, &s), XC_ERR_ARG);
}

/* Against Hugging Face's own processors (tests/fixtures/sampler/hf_processors.json, made by
 * tools/reference/make_sampler_fixtures.py with transformers 4.33: RepetitionPenalty,
 * SequenceBias, MinNewTokensLength, Temperature, TopK, TopP in generate()'s order): greedy picks
 * HF's argmax, and 20000 seeded draws stay in HF's support with frequencies within 5 sigma of
 * HF's probabilities, on 6 cases (chat()'s defaults, strong penalties, min_new_tokens with EOS
 * the likeliest token, top-k 3, a bias case). */
static void test_sampler_matches_hf_processors(void **state) {
    (void)state;
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(
        xc_file_read_all(XC_FIXTURE_DIR "/sampler/hf_processors.json", 1 << 22, &text, &len),
        XC_OK);
    cJSON *root = cJSON_ParseWithLength(text, len);
    xc_free(text);
    assert_non_null(root);
    int nv = cJSON_GetObjectItem(root, "vocab")->valueint;
    assert_int_equal(nv, V);
    int n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        xc_sampling p = {.temperature = (float)cJSON_GetObjectItem(c, "temperature")->valuedouble,
                         .top_k = cJSON_GetObjectItem(c, "top_k")->valueint,
                         .top_p = (float)cJSON_GetObjectItem(c, "top_p")->valuedouble,
                         .repetition_penalty =
                             (float)cJSON_GetObjectItem(c, "repetition_penalty")->valuedouble,
                         .min_tokens = cJSON_GetObjectItem(c, "min_new_tokens")->valueint};
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "eos")) {
            p.stop_ids[p.n_stop_ids++] = e->valueint;
        }
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "logit_bias")) {
            p.logit_bias_ids[p.n_logit_bias] = atoi(e->string);
            p.logit_bias[p.n_logit_bias++] = (float)e->valuedouble;
        }
        int32_t prompt[64], gen[64];
        int n_prompt = 0, n_gen = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "prompt")) {
            prompt[n_prompt++] = e->valueint;
        }
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "generated")) {
            gen[n_gen++] = e->valueint;
        }
        float base[V];
        double prob[V];
        int k = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "logits")) {
            base[k++] = (float)e->valuedouble;
        }
        k = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "prob")) {
            prob[k++] = e->valuedouble;
        }
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        int hf_greedy = cJSON_GetObjectItem(c, "greedy")->valueint;
        for (int greedy = 1; greedy >= 0; greedy--) {
            int counts[V] = {0};
            const int draws = greedy ? 1 : 20000;
            for (int d = 0; d < draws; d++) {
                xc_sampling q = p;
                q.greedy = greedy;
                q.seed = (uint64_t)d * 2654435761u;
                xc_sampler *s = NULL;
                assert_int_equal(xc_sampler_create(V, &q, &s), XC_OK);
                assert_int_equal(xc_sampler_observe(s, prompt, n_prompt), XC_OK);
                assert_int_equal(xc_sampler_observe_output(s, gen, n_gen), XC_OK);
                float x[V];
                memcpy(x, base, sizeof x);
                int32_t t;
                assert_int_equal(xc_sampler_sample(s, x, &t), XC_OK);
                xc_sampler_destroy(s);
                if (greedy && t != hf_greedy) {
                    fail_msg("%s greedy: %d, HF %d", name, t, hf_greedy);
                }
                if (!greedy && prob[t] == 0) {
                    fail_msg("%s drew %d outside HF's support", name, t);
                }
                counts[t]++;
            }
            for (int i = 0; i < V && !greedy; i++) {
                double mu = draws * prob[i], sd = sqrt(draws * prob[i] * (1 - prob[i])) + 1;
                if (fabs(counts[i] - mu) > 5 * sd) {
                    fail_msg("%s token %d: %d draws, HF expects %.1f", name, i, counts[i], mu);
                }
            }
        }
        n_cases++;
    }
    assert_int_equal(n_cases, 6);
    cJSON_Delete(root);
}

/* Device sampling's host side (issue 13.7): the plan names the processors and the draw's uniform
 * at the current position, xc_sampler_accept leaves the sampler exactly as xc_sampler_sample does
 * (the next draws equal, the penalty sees the token), and processors a device does not run make
 * the plan refuse. */
static void test_sampler_plan_and_accept_match_sample(void **state) {
    (void)state;

    enum { N = 300 };

    float logits[N], a[N], b[N];
    for (int i = 0; i < N; i++) {
        logits[i] = (float)((i * 37) % 101) / 17.0f - 3.0f + (float)i * 1e-4f;
    }
    xc_sampling sp = xc_sampling_defaults();
    sp.seed = 4242;
    sp.choice = 2;
    sp.repetition_penalty = 1.3f;
    xc_sampler *x = NULL, *y = NULL;
    assert_int_equal(xc_sampler_create(N, &sp, &x), XC_OK);
    assert_int_equal(xc_sampler_create(N, &sp, &y), XC_OK);
    int32_t prompt[3] = {5, 77, 5};
    assert_int_equal(xc_sampler_observe(x, prompt, 3), XC_OK);
    assert_int_equal(xc_sampler_observe(y, prompt, 3), XC_OK);
    xc_sampler_set_position(x, 40);
    xc_sampler_set_position(y, 40);
    for (int step = 0; step < 6; step++) {
        xc_sampler_plan pl;
        assert_true(xc_sampler_plan_next(y, &pl));
        assert_false(pl.greedy);
        assert_int_equal(pl.top_k, sp.top_k);
        assert_true(pl.top_p == sp.top_p && pl.temperature == sp.temperature);
        assert_true(pl.repetition_penalty == sp.repetition_penalty);
        assert_true(pl.u == xc_sampler_uniform(4242, 2, 40u + (uint64_t)step));
        assert_true(pl.n_seen >= 2 && pl.n_seen <= 2 + step); /* 5, 77 and the tokens drawn */
        int32_t tx = -1, ty = -1;
        memcpy(a, logits, sizeof a);
        memcpy(b, logits, sizeof b);
        assert_int_equal(xc_sampler_sample(x, a, &tx), XC_OK);
        /* y: a "device" that draws what the host would (the same sampler code on a twin) */
        xc_sampler *twin = NULL;
        assert_int_equal(xc_sampler_create(N, &sp, &twin), XC_OK);
        assert_int_equal(xc_sampler_observe(twin, pl.seen, pl.n_seen), XC_OK);
        xc_sampler_set_position(twin, 40u + (uint64_t)step);
        assert_int_equal(xc_sampler_sample(twin, b, &ty), XC_OK);
        xc_sampler_destroy(twin);
        assert_int_equal(ty, tx);
        assert_int_equal(xc_sampler_accept(y, ty), XC_OK);
        bool seen = false;
        assert_true(xc_sampler_plan_next(y, &pl));
        for (int k = 0; k < pl.n_seen; k++) {
            seen = seen || pl.seen[k] == tx;
        }
        assert_true(seen);
        logits[tx] -= 0.5f; /* keep the draws distinct */
    }
    assert_int_equal(xc_sampler_accept(y, N), XC_ERR_ARG);
    assert_int_equal(xc_sampler_accept(y, -1), XC_ERR_ARG);
    xc_sampler_destroy(x);
    xc_sampler_destroy(y);
    /* processors the device path does not run */
    xc_sampling q[4];
    for (int i = 0; i < 4; i++) {
        q[i] = xc_sampling_defaults();
    }
    q[0].n_logit_bias = 1;
    q[0].logit_bias_ids[0] = 3;
    q[0].logit_bias[0] = 2.0f;
    q[1].min_tokens = 2;
    q[1].n_stop_ids = 1;
    q[1].stop_ids[0] = 7;
    q[2].frequency_penalty = 0.5f;
    q[3].min_p = 0.05f;
    for (int i = 0; i < 4; i++) {
        xc_sampler *z = NULL;
        xc_sampler_plan pl;
        assert_int_equal(xc_sampler_create(N, &q[i], &z), XC_OK);
        assert_false(xc_sampler_plan_next(z, &pl));
        if (i == 1) { /* min_tokens holds stop ids back only until that many tokens */
            int32_t t[2] = {1, 2};
            assert_int_equal(xc_sampler_observe_output(z, t, 2), XC_OK);
            assert_true(xc_sampler_plan_next(z, &pl));
        }
        xc_sampler_destroy(z);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampler_greedy_applies_penalty),
        cmocka_unit_test(test_sampler_draws_only_kept_tokens_with_ref_frequencies),
        cmocka_unit_test(test_sampler_is_reproducible_per_seed),
        cmocka_unit_test(test_sampler_wide_nucleus_grows_block),
        cmocka_unit_test(test_sampler_validates_params),
        cmocka_unit_test(test_sampler_resumes_at_any_position),
        cmocka_unit_test(test_sampler_processors_match_naive_chain),
        cmocka_unit_test(test_sampler_matches_hf_processors),
        cmocka_unit_test(test_sampler_uniform_is_a_good_counter_generator),
        cmocka_unit_test(test_sampler_plan_and_accept_match_sample),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
