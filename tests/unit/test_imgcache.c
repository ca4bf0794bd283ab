/* The vision worker's image embedding cache: hits return the stored bits, misses count, the byte
 * bound holds with least-recently-used eviction, oversize entries are not stored, keys are the
 * SHA-256 of the pixels (one changed pixel bit is another key). */
#include <string.h>

#include "xc_imgcache.h"
#include "xc_test.h"

static void fill(float *x, size_t n, float base) {
    for (size_t i = 0; i < n; i++) {
        x[i] = base + (float)i * 0.25f;
    }
}

static void test_imgcache_lru_within_bound(void **state) {
    (void)state;

    enum { N = 256 }; /* floats per entry: 1 KiB */

    xc_imgcache *c = NULL;
    assert_int_equal(xc_imgcache_create(3 * N * sizeof(float), &c), XC_OK);
    float px[4][64], emb[4][N], out[N];
    uint8_t key[4][32];
    for (int i = 0; i < 4; i++) {
        fill(px[i], 64, (float)i);
        fill(emb[i], N, 100.0f * (float)i);
        xc_imgcache_key(px[i], sizeof px[i], key[i]);
    }
    assert_false(xc_imgcache_get(c, key[0], out, N));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(xc_imgcache_put(c, key[i], emb[i], N), XC_OK);
    }
    /* has: what get would find, counting nothing (the hits and misses below) */
    assert_true(xc_imgcache_has(c, key[0], N));
    assert_false(xc_imgcache_has(c, key[0], N - 1));
    assert_false(xc_imgcache_has(c, key[3], N));
    assert_true(xc_imgcache_get(c, key[0], out, N)); /* 0 becomes the most recent */
    assert_memory_equal(out, emb[0], sizeof out);
    assert_false(xc_imgcache_get(c, key[0], out, N - 1));           /* another size is a miss */
    assert_int_equal(xc_imgcache_put(c, key[3], emb[3], N), XC_OK); /* evicts 1, the oldest */
    assert_false(xc_imgcache_get(c, key[1], out, N));
    assert_true(xc_imgcache_get(c, key[2], out, N));
    assert_memory_equal(out, emb[2], sizeof out);
    assert_true(xc_imgcache_get(c, key[3], out, N));
    assert_memory_equal(out, emb[3], sizeof out);
    xc_imgcache_stats st;
    xc_imgcache_get_stats(c, &st);
    assert_int_equal(st.hits, 3);
    assert_int_equal(st.misses, 3);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.bytes, 3 * N * sizeof(float));
    /* the same key again replaces the entry; a bigger-than-bound entry is not stored */
    assert_int_equal(xc_imgcache_put(c, key[3], emb[0], N), XC_OK);
    assert_true(xc_imgcache_get(c, key[3], out, N));
    assert_memory_equal(out, emb[0], sizeof out);
    static float big[4 * N];
    assert_int_equal(xc_imgcache_put(c, key[1], big, 4 * N), XC_OK);
    assert_false(xc_imgcache_get(c, key[1], out, N));
    xc_imgcache_get_stats(c, &st);
    assert_true(st.bytes <= 3 * N * sizeof(float));
    /* one flipped bit of one pixel: another key */
    uint8_t k2[32];
    unsigned char *b = (unsigned char *)px[0];
    b[17] ^= 1;
    xc_imgcache_key(px[0], sizeof px[0], k2);
    assert_memory_not_equal(k2, key[0], 32);
    xc_imgcache_destroy(c);
    /* a cache of 0 bytes stores nothing */
    assert_int_equal(xc_imgcache_create(0, &c), XC_OK);
    assert_int_equal(xc_imgcache_put(c, key[0], emb[0], N), XC_OK);
    assert_false(xc_imgcache_get(c, key[0], out, N));
    xc_imgcache_destroy(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_imgcache_lru_within_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
