/* KV block pool: all-or-nothing allocation, double frees and duplicates refused, reuse. */
#include "xc_kv.h"
#include "xc_test.h"

/* A bf16 cache takes half the bytes of an f32 one, in the sizing formula and in the buffers it
 * allocates; the flag values parse, others do not; a cache of another dtype is refused. */
static void test_kv_dtype_sizes(void **state) {
    (void)state;
    /* the 7B: 8 KV heads x 128, 32 layers: 4 KiB per token and layer in bf16 */
    assert_int_equal(xc_kv_bytes(32, 1, 1, 8 * 128, XC_DTYPE_BF16), 32u * 4096u);
    assert_int_equal(xc_kv_bytes(32, 1, 1, 8 * 128, XC_DTYPE_F32), 32u * 8192u);
    xc_dtype t = XC_DTYPE_F16;
    assert_int_equal(xc_kv_dtype_parse("bf16", &t), XC_OK);
    assert_int_equal(t, XC_DTYPE_BF16);
    assert_int_equal(xc_kv_dtype_parse("f32", &t), XC_OK);
    assert_int_equal(t, XC_DTYPE_F32);
    assert_int_equal(xc_kv_dtype_parse("f16", &t), XC_ERR_ARG);
    assert_int_equal(xc_kv_dtype_parse(NULL, &t), XC_ERR_ARG);
    xc_backend *be = NULL;
    assert_int_equal(xc_backend_create("cpu", NULL, &be), XC_OK);
    xc_kv_cache *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(xc_kv_create(be, 2, 3, 4, 40, XC_DTYPE_BF16, &a), XC_OK);
    assert_int_equal(xc_kv_create(be, 2, 3, 4, 40, XC_DTYPE_F32, &b), XC_OK);
    assert_int_equal(xc_kv_dtype(a), XC_DTYPE_BF16);
    assert_int_equal(xc_kv_dtype(b), XC_DTYPE_F32);
    /* the last element of each layer's K and V is writable (ASan checks the extent) */
    for (int l = 0; l < 2; l++) {
        ((uint16_t *)xc_kv_k(a, l))[3 * 4 * 40 - 1] = 1;
        ((uint16_t *)xc_kv_v(a, l))[3 * 4 * 40 - 1] = 1;
        ((float *)xc_kv_k(b, l))[3 * 4 * 40 - 1] = 1;
    }
    assert_int_equal(xc_kv_create(be, 2, 3, 4, 40, XC_DTYPE_F16, &c), XC_ERR_ARG);
    assert_null(c);
    xc_kv_destroy(a);
    xc_kv_destroy(b);
    xc_backend_destroy(be);
}

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
        cmocka_unit_test(test_kv_dtype_sizes),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
