/* common/: arena, config table, dtype conversions (against the F16C instructions), mmap. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_arena.h"
#include "xc_conf.h"
#include "xc_cpuid.h"
#include "xc_dtype.h"
#include "xc_idmap.h"
#include "xc_mmap.h"
#include "xc_sha256.h"
#include "xc_test.h"

/* ---- arena ---- */

static void test_common_arena_allocates_and_resets(void **state) {
    (void)state;
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(256, &a), XC_OK);
    char *p = xc_arena_alloc(a, 10);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    char *big = xc_arena_alloc(a, 100000); /* larger than a block: gets its own */
    assert_non_null(big);
    memset(big, 1, 100000);
    int *z = xc_arena_calloc(a, 8, sizeof(int));
    for (int i = 0; i < 8; i++) {
        assert_int_equal(z[i], 0);
    }
    assert_string_equal(xc_arena_strndup(a, "hello world", 5), "hello");
    assert_true(xc_arena_used(a) >= 100000);
    xc_arena_reset(a);
    assert_int_equal(xc_arena_used(a), 0);
    assert_non_null(xc_arena_alloc(a, 32));
    assert_null(xc_arena_calloc(a, SIZE_MAX / 2, 4)); /* overflow is refused */
    xc_arena_destroy(a);
    xc_arena_destroy(NULL);
}

static int g_arena_mallocs;

static void *counting_malloc(size_t n) {
    g_arena_mallocs++;
    return test_malloc(n);
}

static void *counting_calloc(size_t c, size_t n) {
    return test_calloc(c, n);
}

static void *counting_realloc(void *p, size_t n) {
    return test_realloc(p, n);
}

static void counting_free(void *p) {
    test_free(p);
}

static void test_common_arena_reset_keep_settles_on_one_block(void **state) {
    (void)state;
    xc_mem_hooks h = {.malloc_fn = counting_malloc,
                      .calloc_fn = counting_calloc,
                      .realloc_fn = counting_realloc,
                      .free_fn = counting_free};
    xc_mem_set_hooks(&h);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(1024, &a), XC_OK);
    int first = 0;
    for (int step = 0; step < 4; step++) {
        g_arena_mallocs = 0;
        for (int i = 0; i < 10; i++) { /* 10 x 700 bytes: several 1 KiB blocks at first */
            char *p = xc_arena_alloc(a, 700);
            assert_non_null(p);
            memset(p, i, 700);
        }
        char *big = xc_arena_alloc(a, 5000);
        assert_non_null(big);
        memset(big, 7, 5000);
        if (step == 0) {
            first = g_arena_mallocs;
        }
        xc_arena_reset_keep(a, 1 << 20);
        assert_int_equal(xc_arena_used(a), 0);
    }
    assert_true(first >= 10);
    assert_int_equal(g_arena_mallocs, 0); /* later steps fit in the block kept */
    /* over max_keep: like xc_arena_reset (the oldest block only) */
    assert_non_null(xc_arena_alloc(a, 1 << 16));
    xc_arena_reset_keep(a, 1024);
    g_arena_mallocs = 0;
    assert_non_null(xc_arena_alloc(a, 1 << 15));
    assert_int_equal(g_arena_mallocs, 1);
    xc_arena_destroy(a);
    xc_mem_set_hooks(NULL);
}

/* ---- conf ---- */

typedef struct demo_conf {
    int port;
    double temp;
    const char *mode;
    bool verbose;
    xc_conf_list images;
} demo_conf;

static const xc_conf_entry demo_entries[] = {
    XC_CONF_INT("port", "XC_TEST_PORT", demo_conf, port, 5555, 1, 65535, "listen port"),
    XC_CONF_FLOAT("temperature", NULL, demo_conf, temp, 1.0, 0, 10, "temperature"),
    XC_CONF_STR("mode", "XC_TEST_MODE", demo_conf, mode, "a", "a|bb|c", "mode"),
    XC_CONF_BOOL("verbose", NULL, demo_conf, verbose, 0, "more output"),
    XC_CONF_LIST("image", "XC_TEST_IMAGES", demo_conf, images, "an image"),
};

static const xc_conf_spec demo_spec = {"demo [options]", NULL, demo_entries,
                                       sizeof demo_entries / sizeof demo_entries[0]};

static void test_common_conf_precedence(void **state) {
    (void)state;
    demo_conf c;
    char *argv0[] = {"demo", NULL};
    unsetenv("XC_TEST_PORT");
    unsetenv("XC_TEST_IMAGES");
    assert_int_equal(xc_conf_parse(&demo_spec, &c, 1, argv0, NULL), XC_OK);
    assert_int_equal(c.port, 5555);
    assert_string_equal(c.mode, "a");
    assert_false(c.verbose);

    setenv("XC_TEST_PORT", "6000", 1);
    setenv("XC_TEST_IMAGES", "x.png,y.png", 1);
    assert_int_equal(xc_conf_parse(&demo_spec, &c, 1, argv0, NULL), XC_OK);
    assert_int_equal(c.port, 6000);
    assert_int_equal(c.images.n, 2);
    assert_string_equal(c.images.items[1], "y.png");

    char *argv1[] = {"demo",  "--port",  "7000",  "--verbose",     "--mode", "bb", "--image",
                     "1.jpg", "--image", "2.jpg", "--temperature", "0.5",    NULL};
    assert_int_equal(xc_conf_parse(&demo_spec, &c, 12, argv1, NULL), XC_OK);
    assert_int_equal(c.port, 7000); /* flag beats env */
    assert_true(c.verbose);
    assert_string_equal(c.mode, "bb");
    assert_int_equal(c.images.n, 2);
    assert_string_equal(c.images.items[0], "1.jpg");
    assert_true(c.temp == 0.5);
    unsetenv("XC_TEST_PORT");
    unsetenv("XC_TEST_IMAGES");
}

static void expect_conf_error(int argc, char **argv, const char *needle) {
    demo_conf c;
    assert_int_equal(xc_conf_parse(&demo_spec, &c, argc, argv, NULL), XC_ERR_ARG);
    if (!strstr(xc_err_last(), needle)) {
        fail_msg("'%s' does not mention '%s'", xc_err_last(), needle);
    }
}

static void test_common_conf_rejects_bad_values(void **state) {
    (void)state;
    char *a1[] = {"demo", "--port", "70000", NULL};
    expect_conf_error(3, a1, "out of range");
    char *a2[] = {"demo", "--port", "12x", NULL};
    expect_conf_error(3, a2, "not a valid integer");
    char *a3[] = {"demo", "--mode", "b", NULL};
    expect_conf_error(3, a3, "not one of");
    char *a4[] = {"demo", "--bogus", NULL};
    expect_conf_error(2, a4, "unknown option --bogus");
    char *a5[] = {"demo", "stray", NULL};
    expect_conf_error(2, a5, "unexpected argument");
    char *a6[] = {"demo", "--port", NULL};
    expect_conf_error(2, a6, "--port needs a value");
    setenv("XC_TEST_MODE", "zzz", 1);
    char *a7[] = {"demo", NULL};
    expect_conf_error(1, a7, "XC_TEST_MODE");
    unsetenv("XC_TEST_MODE");
}

static void test_common_conf_positional(void **state) {
    (void)state;
    demo_conf c;
    int first = 0;
    char *argv[] = {"demo", "--port", "9", "sub", "--other", NULL};
    assert_int_equal(xc_conf_parse(&demo_spec, &c, 5, argv, &first), XC_OK);
    assert_int_equal(first, 3);
    assert_int_equal(c.port, 9);
}

/* ---- dtype ---- */

__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) {
    return _cvtsh_ss(h);
}

static void test_common_f16_matches_f16c(void **state) {
    (void)state;
    if (!xc_cpu_has_f16c()) {
        skip();
    }
    for (uint32_t h = 0; h < 65536; h++) { /* every half value */
        float a = xc_f16_to_f32((uint16_t)h), b = hw_f16_to_f32((uint16_t)h);
        if (xc_f32_bits(a) != xc_f32_bits(b)) {
            fail_msg("f16 0x%04x: %a vs %a", h, a, b);
        }
    }
    /* a dense sweep of f32 bit patterns, covering subnormal, rounding and overflow edges */
    for (uint64_t u = 0; u < 0x100000000ull; u += 4093) {
        float f = xc_bits_f32((uint32_t)u);
        uint16_t a = xc_f32_to_f16(f), b = hw_f32_to_f16(f);
        if (f != f) { /* NaN: both must stay NaN */
            assert_true((a & 0x7c00) == 0x7c00 && (a & 0x3ff));
            continue;
        }
        if (a != b) {
            fail_msg("f32 0x%08x (%a): 0x%04x vs 0x%04x", (uint32_t)u, f, a, b);
        }
    }
}

static void test_common_bf16_rounds_to_nearest_even(void **state) {
    (void)state;
    assert_int_equal(xc_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(xc_f32_to_bf16(xc_bits_f32(0x3f808000)), 0x3f80); /* tie -> even */
    assert_int_equal(xc_f32_to_bf16(xc_bits_f32(0x3f818000)), 0x3f82); /* tie -> even (up) */
    assert_int_equal(xc_f32_to_bf16(xc_bits_f32(0x3f808001)), 0x3f81);
    assert_true(xc_bf16_to_f32(0x4049) == xc_bits_f32(0x40490000));
    uint16_t nan = xc_f32_to_bf16(xc_bits_f32(0x7fc00001));
    assert_true((nan & 0x7f80) == 0x7f80 && (nan & 0x7f));
    /* round trip of every bf16 value */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = xc_bf16_to_f32((uint16_t)h);
        if (f == f) {
            assert_int_equal(xc_f32_to_bf16(f), h);
        }
    }
}

/* ---- mmap ---- */

static void test_common_mmap_reads_files(void **state) {
    (void)state;
    char path[] = "/tmp/xc_test_mmapXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("hello mmap", f);
    fclose(f);
    xc_mmap m;
    assert_int_equal(xc_mmap_open(path, &m), XC_OK);
    assert_int_equal(m.size, 10);
    assert_memory_equal(m.data, "hello mmap", 10);
    xc_mmap_close(&m);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(path, 100, &text, &len), XC_OK);
    assert_string_equal(text, "hello mmap");
    xc_free(text);
    assert_int_equal(xc_file_read_all(path, 4, &text, &len), XC_ERR_ARG);
    unlink(path);
    assert_int_equal(xc_mmap_open(path, &m), XC_ERR_IO);
    assert_non_null(strstr(xc_err_last(), "No such file"));
    assert_int_equal(xc_mmap_open("/tmp", &m), XC_ERR_IO);
}

/* ---- status ---- */

static void test_common_errf_may_quote_the_last_error(void **state) {
    (void)state;
    xc_errf(XC_ERR_IO, "cannot open %s: %s", "a.model", "No such file or directory");
    assert_int_equal(xc_errf(XC_ERR_ARG, "tokenizer: %s", xc_err_last()), XC_ERR_ARG);
    assert_string_equal(xc_err_last(), "tokenizer: cannot open a.model: No such file or directory");
    xc_err_clear();
    assert_string_equal(xc_err_last(), "");
}

/* SHA-256: the FIPS 180-4 examples ("abc", the 448-bit message, a million 'a') and the empty
 * string, plus a 771-byte message, digests as Python's hashlib gives them; feeding the message
 * in pieces of every size from 1 to 130 bytes gives the same digest. */
static void sha256_vectors(void) {
    static const char *want[] = {
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        "c88b6dc887c181168f0090f9b194fa95a4941342d49ba8bec914fd7ce64881a7"};
    size_t lens[] = {0, 3, 56, 1000000, 771};
    uint8_t *m[5];
    m[0] = (uint8_t *)strdup("");
    m[1] = (uint8_t *)strdup("abc");
    m[2] = (uint8_t *)strdup("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
    m[3] = malloc(1000000);
    memset(m[3], 'a', 1000000);
    m[4] = malloc(771);
    for (int i = 0; i < 768; i++) {
        m[4][i] = (uint8_t)(i % 256);
    }
    memcpy(m[4] + 768, "xyz", 3);
    for (int t = 0; t < 5; t++) {
        uint8_t d[32];
        char hex[65];
        xc_sha256_sum(m[t], lens[t], d);
        for (int i = 0; i < 32; i++) {
            snprintf(hex + 2 * i, 3, "%02x", d[i]);
        }
        assert_string_equal(hex, want[t]);
        if (lens[t] < 1000) {
            for (size_t piece = 1; piece <= 130; piece++) {
                xc_sha256 s;
                uint8_t d2[32];
                xc_sha256_init(&s);
                for (size_t o = 0; o < lens[t]; o += piece) {
                    xc_sha256_update(&s, m[t] + o, lens[t] - o < piece ? lens[t] - o : piece);
                }
                xc_sha256_final(&s, d2);
                assert_memory_equal(d, d2, 32);
            }
        }
        free(m[t]);
    }
}

/* The vectors with the SHA extensions (where the CPU has them) and with the portable code; and
 * both give the same digests for random messages of every length from 0 to 300 bytes and a few
 * large ones (the extensions' message schedule and state order against the plain rounds). */
static void test_common_sha256_vectors(void **state) {
    (void)state;
    bool accel = xc_sha256_set_accel(true);
    print_message("sha256: SHA extensions %s\n", accel ? "used" : "not available on this CPU");
    sha256_vectors();
    assert_false(xc_sha256_set_accel(false));
    assert_false(xc_sha256_accel());
    sha256_vectors();
    if (accel) {
        unsigned seed = 5;
        uint8_t *m = malloc(200000);
        assert_non_null(m);
        for (size_t i = 0; i < 200000; i++) {
            m[i] = (uint8_t)(rand_r(&seed) >> 5);
        }
        size_t big[] = {4096, 65536 + 17, 200000};
        for (size_t n = 0; n <= 300 + 3; n++) {
            size_t len = n <= 300 ? n : big[n - 301];
            uint8_t a[32], b[32];
            xc_sha256_set_accel(false);
            xc_sha256_sum(m + n % 7, len - (n <= 300 ? 0 : 7), a);
            xc_sha256_set_accel(true);
            xc_sha256_sum(m + n % 7, len - (n <= 300 ? 0 : 7), b);
            assert_memory_equal(a, b, 32);
        }
        free(m);
    }
    xc_sha256_set_accel(true);
}

/* xc_idmap against a naive list of (key, value) pairs under random puts, replacements and
 * deletions, with keys that collide in their low bits (ids of one replica differ only above bit
 * 48) and the key 0. */
static void test_common_idmap_matches_a_list(void **state) {
    (void)state;

    enum { N = 600 };

    uint64_t keys[N];
    for (int i = 0; i < N; i++) {
        keys[i] = i % 3 == 0 ? (uint64_t)i << 48 : i % 3 == 1 ? (uint64_t)i * 1024 : (uint64_t)i;
    }
    static int vals[N];
    void *ref[N] = {0}; /* value of keys[i] in the map, or NULL */
    xc_idmap m;
    xc_idmap_init(&m);
    assert_null(xc_idmap_get(&m, 5));
    assert_null(xc_idmap_del(&m, 5));
    assert_int_equal(xc_idmap_put(&m, 1, NULL), XC_ERR_ARG);
    uint64_t rng = 12345;
    size_t live = 0;
    for (int step = 0; step < 40000; step++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int k = (int)((rng >> 33) % N);
        int op = (int)((rng >> 20) % 3);
        if (op < 2) {
            void *v = &vals[(k + step) % N];
            assert_int_equal(xc_idmap_put(&m, keys[k], v), XC_OK);
            live += ref[k] == NULL;
            ref[k] = v;
        } else {
            assert_ptr_equal(xc_idmap_del(&m, keys[k]), ref[k]);
            live -= ref[k] != NULL;
            ref[k] = NULL;
        }
        assert_int_equal(xc_idmap_count(&m), live);
        if (step % 997 == 0) {
            for (int i = 0; i < N; i++) {
                assert_ptr_equal(xc_idmap_get(&m, keys[i]), ref[i]);
            }
            assert_null(xc_idmap_get(&m, 7777777));
        }
    }
    for (int i = 0; i < N; i++) {
        assert_ptr_equal(xc_idmap_del(&m, keys[i]), ref[i]);
    }
    assert_int_equal(xc_idmap_count(&m), 0);
    /* reserve: puts up to the reserved count keep the table */
    assert_int_equal(xc_idmap_reserve(&m, 1000), XC_OK);
    uint64_t *t = m.keys;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(xc_idmap_put(&m, (uint64_t)i, &vals[0]), XC_OK);
    }
    assert_ptr_equal(m.keys, t);
    xc_idmap_fini(&m);
    xc_idmap_fini(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_common_errf_may_quote_the_last_error),
        cmocka_unit_test(test_common_arena_allocates_and_resets),
        cmocka_unit_test(test_common_arena_reset_keep_settles_on_one_block),
        cmocka_unit_test(test_common_conf_precedence),
        cmocka_unit_test(test_common_conf_rejects_bad_values),
        cmocka_unit_test(test_common_conf_positional),
        cmocka_unit_test(test_common_f16_matches_f16c),
        cmocka_unit_test(test_common_bf16_rounds_to_nearest_even),
        cmocka_unit_test(test_common_mmap_reads_files),
        cmocka_unit_test(test_common_sha256_vectors),
        cmocka_unit_test(test_common_idmap_matches_a_list),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
