/* Placement: the DP split against brute force over every set of cuts, the P/R choice against the
 * memory rule written out by hand, and argument errors; the role rules (natural name order
 * against a chunk-by-chunk reference, vision and decoder candidates against the rules stated in
 * xc_place.h, on hand cases and random sets). */
#include <ctype.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_place.h"
#include "xc_test.h"

static double stage_time(const xc_place_model *m, const double *lt, int a, int b) {
    double t = 0;
    for (int i = a; i < b; i++) {
        t += lt ? lt[i] : m->layer_time;
    }
    return t + (a == 0 ? m->first_time : 0) + (b == m->n_layers ? m->last_time : 0);
}

/* brute force: every increasing choice of P-1 cuts in 1..L-1 */
static double brute(const xc_place_model *m, int P, int *cuts, int k, int from, double best) {
    if (k == P - 1) {
        double mx = 0;
        for (int s = 0; s < P; s++) {
            int a = s == 0 ? 0 : cuts[s - 1], b = s == P - 1 ? m->n_layers : cuts[s];
            double t = stage_time(m, NULL, a, b);
            mx = t > mx ? t : mx;
        }
        return mx < best ? mx : best;
    }
    for (int c = from; c <= m->n_layers - (P - 1 - k); c++) {
        cuts[k] = c;
        best = brute(m, P, cuts, k + 1, c + 1, best);
    }
    return best;
}

static void test_place_split_matches_brute_force(void **state) {
    (void)state;
    srand(3);
    for (int trial = 0; trial < 40; trial++) {
        xc_place_model m = {.n_layers = 2 + rand() % 11,
                            .layer_time = 1.0 + rand() % 5,
                            .first_time = rand() % 7,
                            .last_time = rand() % 13};
        for (int P = 1; P <= m.n_layers && P <= 5; P++) {
            int b[XC_PLACE_MAX_STAGES + 1], cuts[8];
            double got;
            assert_int_equal(xc_place_split(&m, P, b, &got), XC_OK);
            double want = brute(&m, P, cuts, 0, 1, DBL_MAX);
            assert_true(got == want);
            /* the returned cuts achieve it, are contiguous and non-empty */
            double mx = 0;
            assert_int_equal(b[0], 0);
            assert_int_equal(b[P], m.n_layers);
            for (int s = 0; s < P; s++) {
                assert_true(b[s + 1] > b[s]);
                double t = stage_time(&m, NULL, b[s], b[s + 1]);
                mx = t > mx ? t : mx;
            }
            assert_true(mx == want);
        }
    }
}

/* ---- unit cuts ---- */

/* reference: stage time from a table of unit times written out independently */
static double unit_stage_time(const xc_place_model *m, const double *ut, int a, int b) {
    double t = 0;
    for (int u = a; u < b; u++) {
        t += ut[u];
    }
    return t + (a == 0 ? m->first_time : 0) + (b == 2 * m->n_layers ? m->last_time : 0);
}

static double brute_units(const xc_place_model *m, const double *ut, int P, int *cuts, int k,
                          int from, double best) {
    int U = 2 * m->n_layers;
    if (k == P - 1) {
        double mx = 0;
        for (int s = 0; s < P; s++) {
            int a = s == 0 ? 0 : cuts[s - 1], b = s == P - 1 ? U : cuts[s];
            double t = unit_stage_time(m, ut, a, b);
            mx = t > mx ? t : mx;
        }
        return mx < best ? mx : best;
    }
    for (int c = from; c <= U - (P - 1 - k); c++) {
        cuts[k] = c;
        best = brute_units(m, ut, P, cuts, k + 1, c + 1, best);
    }
    return best;
}

static void test_place_split_units_matches_brute_force(void **state) {
    (void)state;
    srand(5);
    for (int trial = 0; trial < 40; trial++) {
        xc_place_model m = {.n_layers = 1 + rand() % 6,
                            .attn_time = 1.0 + rand() % 3,
                            .ffn_time = 1.0 + rand() % 9,
                            .first_time = rand() % 7,
                            .last_time = rand() % 13};
        m.layer_time = m.attn_time + m.ffn_time;
        if (trial % 5 == 0) { /* the even default: half of layer_time each */
            m.attn_time = m.ffn_time = 0;
        }
        int U = 2 * m.n_layers;
        double ut[16];
        for (int u = 0; u < U; u++) {
            ut[u] = m.attn_time == 0 && m.ffn_time == 0 ? m.layer_time / 2
                    : u % 2 == 0                        ? m.attn_time
                                                        : m.ffn_time;
        }
        for (int P = 1; P <= U && P <= 6; P++) {
            int b[XC_PLACE_MAX_STAGES + 1], cuts[8];
            double got;
            assert_int_equal(xc_place_split_units(&m, P, b, &got), XC_OK);
            double want = brute_units(&m, ut, P, cuts, 0, 1, DBL_MAX);
            assert_true(got == want);
            double mx = 0;
            assert_int_equal(b[0], 0);
            assert_int_equal(b[P], U);
            for (int s = 0; s < P; s++) {
                assert_true(b[s + 1] > b[s]);
                double t = unit_stage_time(&m, ut, b[s], b[s + 1]);
                mx = t > mx ? t : mx;
            }
            assert_true(mx == want);
            /* whole-layer cuts are unit cuts too: units are never worse */
            double lay;
            if (P <= m.n_layers && m.attn_time + m.ffn_time == m.layer_time &&
                xc_place_split(&m, P, b, &lay) == XC_OK) {
                assert_true(got <= lay + 1e-9);
            }
        }
    }
}

static void test_place_unit_stage_bytes(void **state) {
    (void)state;
    /* attention 3 bytes, FFN 7, KV 2 bytes/token/layer x 10 tokens, embed 100, head 1000 */
    xc_place_model m = {.n_layers = 4,
                        .attn_bytes = 3,
                        .ffn_bytes = 7,
                        .embed_bytes = 100,
                        .head_bytes = 1000,
                        .kv_bytes_layer = 2,
                        .kv_budget_tokens = 10};
    /* units [1, 4): ffn0, attn1, ffn1 = 7 + 3 + 7, one KV layer = 20; middle stage of 3 */
    assert_true(xc_place_unit_stage_bytes(&m, 1, 4, 3, 1) == 37);
    /* units [0, 1): attn0 + KV + embed = 3 + 20 + 100 */
    assert_true(xc_place_unit_stage_bytes(&m, 0, 1, 3, 0) == 123);
    /* units [7, 8): ffn3 + head, no KV */
    assert_true(xc_place_unit_stage_bytes(&m, 7, 8, 3, 2) == 1007);
    assert_int_equal(xc_place_attn_units(1, 4), 1);
    assert_int_equal(xc_place_attn_units(0, 8), 4);
    assert_int_equal(xc_place_attn_units(3, 3), 0);
    assert_int_equal(xc_place_attn_units(1, 2), 0);
    assert_int_equal(xc_place_attn_units(2, 3), 1);
    /* counts */
    int b[12];
    assert_int_equal(xc_place_split_units(&m, 9, b, NULL), XC_ERR_ARG);
    assert_int_equal(xc_place_split_units(&m, 8, b, NULL), XC_OK);
    for (int k = 0; k <= 8; k++) {
        assert_int_equal(b[k], k);
    }
}

static void test_place_split_head_gets_fewer_layers(void **state) {
    (void)state;
    /* 32 layers of 1, a head worth 4 layers: 4 stages balance at 9 = 9 + 9 + 9 + (5 + 4) */
    xc_place_model m = {.n_layers = 32, .layer_time = 1, .last_time = 4};
    int b[5];
    double t;
    assert_int_equal(xc_place_split(&m, 4, b, &t), XC_OK);
    assert_true(t == 9);
    assert_int_equal(b[4] - b[3], 5);
}

static void test_place_split_rejects_bad_counts(void **state) {
    (void)state;
    xc_place_model m = {.n_layers = 3, .layer_time = 1};
    int b[8];
    assert_int_equal(xc_place_split(&m, 4, b, NULL), XC_ERR_ARG);
    assert_int_equal(xc_place_split(&m, 0, b, NULL), XC_ERR_ARG);
}

static void test_place_shape_fewest_stages_then_replicas(void **state) {
    (void)state;
    /* 8 layers of 10 bytes, embed 5, head 5, KV 1 byte/token/layer, budget 10 tokens: a stage of
     * k layers needs 20k (+5 on the ends). One stage: 170 bytes; two: 85 + 5 = 85, 85. */
    xc_place_model m = {.n_layers = 8,
                        .layer_time = 1,
                        .layer_bytes = 10,
                        .embed_bytes = 5,
                        .head_bytes = 5,
                        .kv_bytes_layer = 1,
                        .kv_budget_tokens = 10};
    uint64_t big[8] = {200, 200, 200, 200, 200, 200, 200, 200};
    uint64_t small[8] = {90, 90, 90, 90, 90, 90, 90, 90};
    int P, R;
    assert_int_equal(xc_place_shape(&m, big, 8, 0, 0, &P, &R), XC_OK);
    assert_int_equal(P, 1);
    assert_int_equal(R, 8);
    assert_int_equal(xc_place_shape(&m, small, 8, 0, 0, &P, &R), XC_OK);
    assert_int_equal(P, 2);
    assert_int_equal(R, 4);
    assert_int_equal(xc_place_shape(&m, small, 7, 0, 0, &P, &R), XC_OK);
    assert_int_equal(P, 2);
    assert_int_equal(R, 3);
    /* fixed shapes */
    assert_int_equal(xc_place_shape(&m, big, 8, 4, 2, &P, &R), XC_OK);
    assert_int_equal(P * 10 + R, 42);
    assert_int_equal(xc_place_shape(&m, big, 8, 3, 3, &P, &R), XC_ERR_ARG);
    /* nothing fits 30-byte workers even at 8 stages (a 1-layer end stage needs 25 + ...) */
    uint64_t tiny[8] = {20, 20, 20, 20, 20, 20, 20, 20};
    assert_int_equal(xc_place_shape(&m, tiny, 8, 0, 0, &P, &R), XC_ERR_ARG);
}

/* ---- roles ---- */

/* reference natural compare: split into chunks (a digit run parsed with strtoull, or one other
 * byte) and compare the chunk lists; all equal: strcmp */
static int ref_cmp(const char *a, const char *b) {
    const char *p = a, *q = b;
    while (*p && *q) {
        bool dp = isdigit((unsigned char)*p), dq = isdigit((unsigned char)*q);
        if (dp && dq) {
            char *ep, *eq;
            unsigned long long x = strtoull(p, &ep, 10), y = strtoull(q, &eq, 10);
            if (x != y) {
                return x < y ? -1 : 1;
            }
            p = ep;
            q = eq;
        } else {
            if (*p != *q) {
                return (unsigned char)*p < (unsigned char)*q ? -1 : 1;
            }
            p++;
            q++;
        }
    }
    if (*p || *q) {
        return *p ? 1 : -1;
    }
    return strcmp(a, b);
}

static int sgn(int x) {
    return (x > 0) - (x < 0);
}

static void rand_name(char *s, unsigned *seed) {
    static const char alpha[] = "ab-:019";
    int n = (int)(rand_r(seed) % 9);
    for (int i = 0; i < n; i++) {
        s[i] = alpha[rand_r(seed) % (sizeof alpha - 1)];
    }
    s[n] = 0;
}

static void test_place_id_cmp_natural_order(void **state) {
    (void)state;
    assert_true(xc_place_id_cmp("rel-xcpipe-decoder-2", "rel-xcpipe-decoder-10") < 0);
    assert_true(xc_place_id_cmp("w10", "w9") > 0);
    assert_true(xc_place_id_cmp("w1", "w1") == 0);
    assert_true(xc_place_id_cmp("w", "w0") < 0);
    assert_true(xc_place_id_cmp("w01", "w1") != 0); /* total order: not equal */
    unsigned seed = 12345;
    char x[12], y[12];
    for (int t = 0; t < 20000; t++) {
        rand_name(x, &seed);
        rand_name(y, &seed);
        assert_int_equal(sgn(xc_place_id_cmp(x, y)), sgn(ref_cmp(x, y)));
        assert_int_equal(sgn(xc_place_id_cmp(x, y)), -sgn(xc_place_id_cmp(y, x)));
    }
}

static void test_place_roles_hand_cases(void **state) {
    (void)state;
    int v = -2, order[8], n = -1;
    /* dedicated vision wins; stages: dedicated in name order, then the any workers */
    const xc_place_worker a[] = {{"dec-10", XC_PLACE_STAGE, 100}, {"x", XC_PLACE_ANY, 500},
                                 {"dec-2", XC_PLACE_STAGE, 100},  {"vis", XC_PLACE_ANY, 10},
                                 {"v2", XC_PLACE_VISION, 900},    {"v1", XC_PLACE_VISION, 900}};
    assert_int_equal(xc_place_roles(a, 6, true, &v, order, &n), XC_OK);
    assert_int_equal(v, 5); /* v1 before v2 */
    assert_int_equal(n, 4);
    assert_int_equal(order[0], 2); /* dec-2 */
    assert_int_equal(order[1], 0); /* dec-10 */
    assert_int_equal(order[2], 3); /* vis */
    assert_int_equal(order[3], 1); /* x */
    /* no dedicated vision worker: the any worker with the least memory */
    const xc_place_worker b[] = {{"w0", XC_PLACE_ANY, 64},
                                 {"w1", XC_PLACE_STAGE, 8},
                                 {"w2", XC_PLACE_ANY, 32},
                                 {"w3", XC_PLACE_ANY, 32}};
    assert_int_equal(xc_place_roles(b, 4, true, &v, order, &n), XC_OK);
    assert_int_equal(v, 2);
    assert_int_equal(n, 3);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 0);
    assert_int_equal(order[2], 3);
    /* only stage workers: nobody takes vision */
    const xc_place_worker c[] = {{"s1", XC_PLACE_STAGE, 1}, {"s0", XC_PLACE_STAGE, 1}};
    assert_int_equal(xc_place_roles(c, 2, true, &v, order, &n), XC_OK);
    assert_int_equal(v, -1);
    assert_int_equal(n, 2);
    assert_int_equal(order[0], 1);
    /* text only: no vision; vision-only workers are no candidates */
    assert_int_equal(xc_place_roles(a, 6, false, &v, order, &n), XC_OK);
    assert_int_equal(v, -1);
    assert_int_equal(n, 4);
    assert_int_equal(order[2], 3);
    assert_int_equal(xc_place_roles(a, -1, false, &v, order, &n), XC_ERR_ARG);
}

/* random sets against the rules of xc_place.h */
static void test_place_roles_random_sets(void **state) {
    (void)state;
    unsigned seed = 7;
    char names[16][16];
    xc_place_worker w[16];
    int order[16];
    for (int t = 0; t < 3000; t++) {
        int n = (int)(rand_r(&seed) % 16);
        bool need = rand_r(&seed) % 4 != 0;
        for (int i = 0; i < n; i++) {
            snprintf(names[i], sizeof names[i], "p%u-%d", rand_r(&seed) % 3, i * 7 % 16);
            w[i] = (xc_place_worker){names[i], (xc_place_want)(rand_r(&seed) % 3),
                                     (uint64_t)(rand_r(&seed) % 4)};
        }
        int v = -2, nd = -1;
        assert_int_equal(xc_place_roles(w, n, need, &v, order, &nd), XC_OK);
        int n_vis = 0, n_any = 0, n_stage = 0;
        for (int i = 0; i < n; i++) {
            n_vis += w[i].want == XC_PLACE_VISION;
            n_any += w[i].want == XC_PLACE_ANY;
            n_stage += w[i].want == XC_PLACE_STAGE;
        }
        if (!need || (n_vis == 0 && n_any == 0)) {
            assert_int_equal(v, -1);
        } else if (n_vis > 0) {
            assert_int_equal(w[v].want, XC_PLACE_VISION);
            for (int i = 0; i < n; i++) {
                assert_false(w[i].want == XC_PLACE_VISION &&
                             xc_place_id_cmp(names[i], names[v]) < 0);
            }
        } else {
            assert_int_equal(w[v].want, XC_PLACE_ANY);
            for (int i = 0; i < n; i++) {
                assert_false(w[i].want == XC_PLACE_ANY && w[i].mem < w[v].mem);
            }
        }
        bool taken_vision = v >= 0 && w[v].want == XC_PLACE_ANY;
        assert_int_equal(nd, n_stage + n_any - (taken_vision ? 1 : 0));
        bool seen[16] = {false};
        for (int k = 0; k < nd; k++) {
            int i = order[k];
            assert_true(i >= 0 && i < n && i != v && !seen[i]);
            seen[i] = true;
            assert_true(w[i].want != XC_PLACE_VISION);
            if (k > 0) {
                const xc_place_worker *p = &w[order[k - 1]];
                assert_false(p->want == XC_PLACE_ANY && w[i].want == XC_PLACE_STAGE);
                if (p->want == w[i].want) {
                    assert_true(xc_place_id_cmp(p->id, w[i].id) < 0);
                }
            }
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_place_split_matches_brute_force),
        cmocka_unit_test(test_place_split_units_matches_brute_force),
        cmocka_unit_test(test_place_unit_stage_bytes),
        cmocka_unit_test(test_place_split_head_gets_fewer_layers),
        cmocka_unit_test(test_place_split_rejects_bad_counts),
        cmocka_unit_test(test_place_shape_fewest_stages_then_replicas),
        cmocka_unit_test(test_place_id_cmp_natural_order),
        cmocka_unit_test(test_place_roles_hand_cases),
        cmocka_unit_test(test_place_roles_random_sets),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
