/* KV block pool: all-or-nothing allocation, double frees and duplicates refused, reuse. */
#include "xc_kv.h"
#include "xc_test.h"

static void test_kv_pool_allocates_all_or_nothing(void **state) {
    (void)state;
    xc_block_pool *p = NULL;
    assert_int_equal(xc_block_pool_create(8, &p), XC_OK);
    int32_t a[8], b[8];
    assert_int_equal(xc_block_pool_alloc(p, 5, a), XC_OK);
    assert_int_equal(xc_block_pool_n_free(p), 3);
    assert_int_equal(xc_block_pool_alloc(p, 4, b), XC_AGAIN);
    assert_int_equal(xc_block_pool_n_free(p), 3); /* nothing taken */
    for (int i = 0; i < 5; i++) {
        for (int j = i + 1; j < 5; j++) {
            assert_int_not_equal(a[i], a[j]);
        }
    }
    assert_int_equal(xc_block_pool_free(p, a, 5), XC_OK);
    assert_int_equal(xc_block_pool_n_free(p), 8);
    assert_int_equal(xc_block_pool_free(p, a, 1), XC_ERR_ARG); /* double free */
    assert_int_equal(xc_block_pool_alloc(p, 2, b), XC_OK);
    int32_t dup[2] = {b[0], b[0]};
    assert_int_equal(xc_block_pool_free(p, dup, 2), XC_ERR_ARG); /* duplicate in one call */
    assert_int_equal(xc_block_pool_n_free(p), 6);                /* and nothing released */
    int32_t out_of_range = 99;
    assert_int_equal(xc_block_pool_free(p, &out_of_range, 1), XC_ERR_ARG);
    assert_int_equal(xc_block_pool_free(p, b, 2), XC_OK);
    assert_int_equal(xc_block_pool_n_free(p), xc_block_pool_n_total(p));
    xc_block_pool_destroy(p);
    assert_int_equal(xc_block_pool_create(0, &p), XC_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_pool_allocates_all_or_nothing),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
