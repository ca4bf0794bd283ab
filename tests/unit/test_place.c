/* Placement: the DP split against brute force over every set of cuts, the P/R choice against the
 * memory rule written out by hand, and argument errors. */
#include <float.h>
#include <stdlib.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_place_split_matches_brute_force),
        cmocka_unit_test(test_place_split_head_gets_fewer_layers),
        cmocka_unit_test(test_place_split_rejects_bad_counts),
        cmocka_unit_test(test_place_shape_fewest_stages_then_replicas),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
