/* Sampler: HF repetition-penalty rule, top-k/top-p candidate sets against a naive sort-based
 * reference, reproducibility per seed, and the empirical distribution of draws. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampler_greedy_applies_penalty),
        cmocka_unit_test(test_sampler_draws_only_kept_tokens_with_ref_frequencies),
        cmocka_unit_test(test_sampler_is_reproducible_per_seed),
        cmocka_unit_test(test_sampler_wide_nucleus_grows_block),
        cmocka_unit_test(test_sampler_validates_params),
        cmocka_unit_test(test_sampler_resumes_at_any_position),
        cmocka_unit_test(test_sampler_uniform_is_a_good_counter_generator),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
