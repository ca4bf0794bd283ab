/* Checkpoint writers against files written by the real libraries: torch.save (torch 1.13) and
 * safetensors' save_file, made by tools/fixtures/make_ckpt_write_fixtures.py. The same tensors
 * are rebuilt here and the written files must match the fixtures byte for byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_ckpt_write.h"
#include "xc_mmap.h"
#include "xc_test.h"

#define FIX XC_FIXTURE_DIR "/ckpt_write/"

typedef struct spec {
    const char *name;
    xc_dtype dtype;
    int ndim;
    int64_t shape[4];
} spec;

/* Same table as SMALL in the fixture script. */
static const spec small_specs[] = {
    {"model.a.weight", XC_DTYPE_BF16, 2, {3, 5}},
    {"b.bias", XC_DTYPE_F16, 1, {7}},
    {"c", XC_DTYPE_F32, 4, {2, 3, 4, 2}},
    {"scalar", XC_DTYPE_F32, 0, {0}},
    {"ids", XC_DTYPE_I64, 1, {4}},
    {"big", XC_DTYPE_BF16, 1, {300}},
    {"mask", XC_DTYPE_BOOL, 1, {5}},
    {"u", XC_DTYPE_U8, 2, {3, 1}},
    {"d", XC_DTYPE_F64, 1, {2}},
    {"i32", XC_DTYPE_I32, 2, {2, 2}},
    {"i16", XC_DTYPE_I16, 1, {3}},
    {"i8", XC_DTYPE_I8, 1, {3}},
};

#define N_SMALL (sizeof small_specs / sizeof small_specs[0])

/* The fixture script's value(k, i). */
static int value(size_t k, size_t i) {
    return (int)((i * 37 + k * 11) % 101) - 50;
}

/* Fills dst with tensor k's elements as the fixture script's make() builds them. */
static void fill_pattern(size_t k, xc_dtype t, size_t numel, void *dst) {
    for (size_t i = 0; i < numel; i++) {
        int v = value(k, i);
        float f = (float)v / 16.0f;
        switch (t) {
        case XC_DTYPE_BF16:
            ((uint16_t *)dst)[i] = xc_f32_to_bf16(f);
            break;
        case XC_DTYPE_F16:
            ((uint16_t *)dst)[i] = xc_f32_to_f16(f);
            break;
        case XC_DTYPE_F32:
            ((float *)dst)[i] = f;
            break;
        case XC_DTYPE_F64:
            ((double *)dst)[i] = (double)v / 16.0;
            break;
        case XC_DTYPE_I64:
            ((int64_t *)dst)[i] = v;
            break;
        case XC_DTYPE_I32:
            ((int32_t *)dst)[i] = v;
            break;
        case XC_DTYPE_I16:
            ((int16_t *)dst)[i] = (int16_t)v;
            break;
        case XC_DTYPE_I8:
            ((int8_t *)dst)[i] = (int8_t)v;
            break;
        case XC_DTYPE_U8:
            ((uint8_t *)dst)[i] = (uint8_t)(v + 50);
            break;
        case XC_DTYPE_BOOL:
            ((uint8_t *)dst)[i] = ((v % 3) + 3) % 3 == 0; /* Python's % is non-negative */
            break;
        default:
            fail();
        }
    }
}

typedef struct fill_ctx {
    const xc_ckpt_wtensor *t;
    int calls;
    int fail_at; /* index whose fill fails, or -1 */
} fill_ctx;

static xc_status fill_cb(void *user, size_t index, void *dst, size_t nbytes) {
    fill_ctx *c = user;
    c->calls++;
    if ((int)index == c->fail_at) {
        return xc_errf(XC_ERR_IO, "fill failed on purpose");
    }
    fill_pattern(index, c->t[index].dtype, nbytes / xc_dtype_size(c->t[index].dtype), dst);
    return XC_OK;
}

static void make_small(xc_ckpt_wtensor *t) {
    for (size_t k = 0; k < N_SMALL; k++) {
        memset(&t[k], 0, sizeof t[k]);
        t[k].name = small_specs[k].name;
        t[k].dtype = small_specs[k].dtype;
        t[k].ndim = small_specs[k].ndim;
        memcpy(t[k].shape, small_specs[k].shape, sizeof small_specs[k].shape);
    }
}

static char tmpdir[64];

static int make_tmpdir(void **state) {
    (void)state;
    strcpy(tmpdir, "/tmp/xc_ckpt_write_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void assert_same_file(const char *got, const char *want) {
    xc_mmap a = {0}, b = {0};
    assert_int_equal(xc_mmap_open(got, &a), XC_OK);
    assert_int_equal(xc_mmap_open(want, &b), XC_OK);
    if (a.size != b.size) {
        fail_msg("%s: %zu bytes, reference %s has %zu", got, a.size, want, b.size);
    }
    for (size_t i = 0; i < a.size; i++) {
        if (a.data[i] != b.data[i]) {
            fail_msg("%s differs from %s at byte %zu (0x%02x vs 0x%02x)", got, want, i, a.data[i],
                     b.data[i]);
        }
    }
    xc_mmap_close(&a);
    xc_mmap_close(&b);
}

static void path_in_tmp(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void test_ckpt_write_torch_bin_matches_torch_save(void **state) {
    (void)state;
    xc_ckpt_wtensor t[N_SMALL];
    make_small(t);
    fill_ctx c = {t, 0, -1};
    char path[128];
    path_in_tmp(path, sizeof path, "small.bin"); /* the archive name comes from the file name */
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_TORCH_BIN, t, N_SMALL, fill_cb, &c), XC_OK);
    assert_int_equal(c.calls, (int)N_SMALL);
    assert_same_file(path, FIX "small.bin");
}

static void test_ckpt_write_safetensors_matches_library(void **state) {
    (void)state;
    xc_ckpt_wtensor t[N_SMALL];
    make_small(t);
    fill_ctx c = {t, 0, -1};
    char path[128];
    path_in_tmp(path, sizeof path, "small.safetensors");
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_SAFETENSORS, t, N_SMALL, fill_cb, &c),
                     XC_OK);
    assert_same_file(path, FIX "small.safetensors");
}

/* 1001 tensors given by pointer (no fill): pickle batches of 1000, LONG_BINPUT past memo 255, and
 * storages written in string order of their keys (0, 1, 10, 100, 1000, 1001?, ...). */
static void test_ckpt_write_many_tensors_from_data(void **state) {
    (void)state;

    enum { N = 1001 };

    xc_ckpt_wtensor *t = test_calloc(N, sizeof *t);
    char(*names)[16] = test_malloc(N * sizeof *names);
    float *vals = test_malloc(N * sizeof *vals);
    for (int k = 0; k < N; k++) {
        snprintf(names[k], sizeof names[k], "t.%04d", k);
        vals[k] = (float)k;
        t[k].name = names[k];
        t[k].dtype = XC_DTYPE_F32;
        t[k].ndim = 1;
        t[k].shape[0] = 1;
        t[k].data = &vals[k];
    }
    char path[128];
    path_in_tmp(path, sizeof path, "many.bin");
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_TORCH_BIN, t, N, NULL, NULL), XC_OK);
    assert_same_file(path, FIX "many.bin");
    test_free(vals);
    test_free(names);
    test_free(t);
}

static void test_ckpt_write_rejects_bad_input(void **state) {
    (void)state;
    float x = 1.0f;
    xc_ckpt_wtensor t[2] = {
        {.name = "a", .dtype = XC_DTYPE_F32, .ndim = 1, .shape = {1}, .data = &x},
        {.name = "a", .dtype = XC_DTYPE_F32, .ndim = 1, .shape = {1}, .data = &x}};
    char path[128];
    path_in_tmp(path, sizeof path, "bad.safetensors");
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_SAFETENSORS, t, 2, NULL, NULL), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "duplicate"));
    t[1].name = "";
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_TORCH_BIN, t, 2, NULL, NULL), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "empty name"));
    t[1].name = "b";
    t[1].shape[0] = -3;
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_TORCH_BIN, t, 2, NULL, NULL), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "'b'"));
    t[1].shape[0] = 1;
    t[1].data = NULL;
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_TORCH_BIN, t, 2, NULL, NULL), XC_ERR_ARG);
    t[1].ndim = XC_CKPT_MAX_DIMS + 1;
    t[1].data = &x;
    assert_int_equal(xc_ckpt_write(path, XC_CKPT_FORMAT_TORCH_BIN, t, 2, NULL, NULL), XC_ERR_ARG);
    struct stat sb;
    assert_int_not_equal(stat(path, &sb), 0); /* nothing was created */
    t[1].ndim = 1;
    assert_int_equal(
        xc_ckpt_write("/nonexistent_dir_xc/x.bin", XC_CKPT_FORMAT_TORCH_BIN, t, 2, NULL, NULL),
        XC_ERR_IO);
    assert_non_null(strstr(xc_err_last(), "/nonexistent_dir_xc/x.bin"));
}

/* A failing fill aborts the write and leaves neither the file nor its temp file behind. */
static void test_ckpt_write_fill_failure_leaves_nothing(void **state) {
    (void)state;
    xc_ckpt_wtensor t[N_SMALL];
    make_small(t);
    char path[128], tmp[160];
    path_in_tmp(path, sizeof path, "fail.bin");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    for (int fmt = 0; fmt < 2; fmt++) {
        fill_ctx c = {t, 0, 4};
        assert_int_equal(xc_ckpt_write(path, (xc_ckpt_format)fmt, t, N_SMALL, fill_cb, &c),
                         XC_ERR_IO);
        assert_non_null(strstr(xc_err_last(), "on purpose"));
        struct stat sb;
        assert_int_not_equal(stat(path, &sb), 0);
        assert_int_not_equal(stat(tmp, &sb), 0);
    }
}

/* The index matches Python's json.dumps(index, indent=2, sort_keys=True) + "\n" (the expected
 * text was printed by Python 3.11 for this dict). */
static void test_ckpt_write_index_matches_transformers(void **state) {
    (void)state;
    const char *names[] = {"b.w", "a\"q"};
    const char *files[] = {"m-2.st", "m-1.st"};
    char path[128];
    path_in_tmp(path, sizeof path, "index.json");
    assert_int_equal(xc_ckpt_write_index(path, names, files, 2, 1234), XC_OK);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(path, 1 << 20, &text, &len), XC_OK);
    assert_string_equal(text, "{\n  \"metadata\": {\n    \"total_size\": 1234\n  },\n  "
                              "\"weight_map\": {\n    \"a\\\"q\": \"m-1.st\",\n    \"b.w\": "
                              "\"m-2.st\"\n  }\n}\n");
    xc_free(text);
    const char *dup[] = {"x", "x"};
    assert_int_equal(xc_ckpt_write_index(path, dup, files, 2, 1), XC_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ckpt_write_torch_bin_matches_torch_save),
        cmocka_unit_test(test_ckpt_write_safetensors_matches_library),
        cmocka_unit_test(test_ckpt_write_many_tensors_from_data),
        cmocka_unit_test(test_ckpt_write_rejects_bad_input),
        cmocka_unit_test(test_ckpt_write_fill_failure_leaves_nothing),
        cmocka_unit_test(test_ckpt_write_index_matches_transformers),
    };
    if (make_tmpdir(NULL) != 0) {
        return 1;
    }
    int rc = cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
    remove_tmpdir(NULL);
    return rc;
}
