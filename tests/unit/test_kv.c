/* KV block pool: all-or-nothing allocation, double frees and duplicates refused, reuse. */
#include <string.h>

#include "xc_kv.h"
#include "xc_mem.h"
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

/* issue 13.3: copying a block copies exactly that block's K and V rows in every layer, in both
 * dtypes; the other blocks keep their bytes; bad ids are refused. */
static void test_kv_copy_block(void **state) {
    (void)state;
    xc_backend *be = NULL;
    assert_int_equal(xc_backend_create("cpu", NULL, &be), XC_OK);
    xc_dtype dts[2] = {XC_DTYPE_BF16, XC_DTYPE_F32};
    for (int d = 0; d < 2; d++) {
        enum { L = 3, NB = 5, BS = 4, W = 6 };

        xc_kv_cache *kv = NULL;
        assert_int_equal(xc_kv_create(be, L, NB, BS, W, dts[d], &kv), XC_OK);
        size_t esz = xc_dtype_size(dts[d]), layer = (size_t)NB * BS * W * esz;
        size_t blk = (size_t)BS * W * esz;
        uint8_t *want = xc_malloc(2 * L * layer);
        assert_non_null(want);
        for (int l = 0; l < L; l++) {
            uint8_t *k = xc_kv_k(kv, l), *v = xc_kv_v(kv, l);
            for (size_t i = 0; i < layer; i++) {
                k[i] = (uint8_t)(i * 7 + (size_t)l * 31 + 1);
                v[i] = (uint8_t)(i * 13 + (size_t)l * 17 + 5);
            }
            memcpy(want + (2 * (size_t)l) * layer, k, layer);
            memcpy(want + (2 * (size_t)l + 1) * layer, v, layer);
            /* expected: block 1 overwritten by block 3 */
            memcpy(want + (2 * (size_t)l) * layer + 1 * blk, k + 3 * blk, blk);
            memcpy(want + (2 * (size_t)l + 1) * layer + 1 * blk, v + 3 * blk, blk);
        }
        assert_int_equal(xc_kv_copy_block(kv, 3, 1), XC_OK);
        for (int l = 0; l < L; l++) {
            assert_memory_equal(xc_kv_k(kv, l), want + (2 * (size_t)l) * layer, layer);
            assert_memory_equal(xc_kv_v(kv, l), want + (2 * (size_t)l + 1) * layer, layer);
        }
        assert_int_equal(xc_kv_copy_block(kv, 2, 2), XC_ERR_ARG);
        assert_int_equal(xc_kv_copy_block(kv, 0, NB), XC_ERR_ARG);
        assert_int_equal(xc_kv_copy_block(kv, -1, 0), XC_ERR_ARG);
        xc_free(want);
        xc_kv_destroy(kv);
    }
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
        cmocka_unit_test(test_kv_copy_block),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
