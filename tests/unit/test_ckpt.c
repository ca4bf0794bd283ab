/* Checkpoint readers against files written by PyTorch (torch.save) and the safetensors library
 * (tools/fixtures/make_ckpt_fixture.py): the same tensors, bit for bit, through .bin, safetensors,
 * ZIP64 and sharded layouts; lazy shard mapping; and a clear error for every broken file. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "xc_ckpt.h"
#include "xc_mmap.h"
#include "xc_test.h"

#define CK_DIR XC_FIXTURE_DIR "/ckpt"

/* ---- helpers ---- */

static uint64_t fnv1a64(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 0x100000001b3ull;
    }
    return h;
}

static xc_ckpt *open_ok(const char *path) {
    xc_ckpt *ck = NULL;
    xc_status st = xc_ckpt_open(path, &ck);
    if (st != XC_OK) {
        fail_msg("xc_ckpt_open(%s): %s: %s", path, xc_status_str(st), xc_err_last());
    }
    return ck;
}

static void get_ok(xc_ckpt *ck, const char *name, xc_tensor_view *v) {
    xc_status st = xc_ckpt_get(ck, name, v);
    if (st != XC_OK) {
        fail_msg("xc_ckpt_get(%s): %s: %s", name, xc_status_str(st), xc_err_last());
    }
}

static void expect_msg(const char *needle) {
    if (!strstr(xc_err_last(), needle)) {
        fail_msg("error '%s' does not mention '%s'", xc_err_last(), needle);
    }
}

static size_t file_size(const char *path) {
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return (size_t)sb.st_size;
}

static xc_dtype dtype_from_st(const char *s) {
    static const char *names[XC_DTYPE_COUNT] = {"F32", "F16", "BF16", "F64", "I64",
                                                "I32", "I16", "I8",   "U8",  "BOOL"};
    for (int i = 0; i < XC_DTYPE_COUNT; i++) {
        if (strcmp(names[i], s) == 0) {
            return (xc_dtype)i;
        }
    }
    fail_msg("unknown dtype %s in manifest", s);
    return XC_DTYPE_COUNT;
}

/* Checks every tensor of ck against manifest.json (written by the fixture script from the torch
 * tensors: dtype, shape, byte count and an FNV-1a hash of the raw bytes), and that the names come
 * out sorted and complete. */
static void check_manifest(xc_ckpt *ck) {
    char *json = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(CK_DIR "/manifest.json", 1 << 20, &json, &len), XC_OK);
    cJSON *root = cJSON_ParseWithLength(json, len);
    assert_non_null(root);
    const cJSON *ts = cJSON_GetObjectItem(root, "tensors");
    assert_int_equal(xc_ckpt_count(ck), (size_t)cJSON_GetArraySize(ts));
    size_t i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, ts) {
        const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
        assert_string_equal(xc_ckpt_name(ck, i), name); /* manifest is sorted like strcmp */
        assert_true(xc_ckpt_has(ck, name));
        xc_tensor_view v;
        get_ok(ck, name, &v);
        assert_string_equal(v.name, name);
        assert_int_equal(v.dtype, dtype_from_st(cJSON_GetObjectItem(t, "dtype")->valuestring));
        const cJSON *shape = cJSON_GetObjectItem(t, "shape");
        assert_int_equal(v.ndim, cJSON_GetArraySize(shape));
        for (int d = 0; d < v.ndim; d++) {
            assert_int_equal(v.shape[d], cJSON_GetArrayItem(shape, d)->valueint);
        }
        assert_int_equal(v.nbytes, (size_t)cJSON_GetObjectItem(t, "nbytes")->valuedouble);
        uint64_t want = strtoull(cJSON_GetObjectItem(t, "fnv1a64")->valuestring, NULL, 16);
        assert_true(v.data != NULL);
        if (fnv1a64(v.data, v.nbytes) != want) {
            fail_msg("tensor %s: bytes differ from the torch tensor", name);
        }
        i++;
    }
    assert_null(xc_ckpt_name(ck, i));
    cJSON_Delete(root);
    xc_free(json);
}

/* Same names, dtypes, shapes and bytes (memcmp) in a and b. */
static void check_same(xc_ckpt *a, xc_ckpt *b) {
    assert_int_equal(xc_ckpt_count(a), xc_ckpt_count(b));
    for (size_t i = 0; i < xc_ckpt_count(a); i++) {
        const char *name = xc_ckpt_name(a, i);
        assert_string_equal(name, xc_ckpt_name(b, i));
        xc_tensor_view va, vb;
        get_ok(a, name, &va);
        get_ok(b, name, &vb);
        assert_int_equal(va.dtype, vb.dtype);
        assert_int_equal(va.ndim, vb.ndim);
        assert_memory_equal(va.shape, vb.shape, sizeof va.shape[0] * (size_t)va.ndim);
        assert_int_equal(va.nbytes, vb.nbytes);
        if (va.nbytes && memcmp(va.data, vb.data, va.nbytes) != 0) {
            fail_msg("tensor %s differs", name);
        }
    }
}

/* ---- equal content across formats ---- */

static void test_ckpt_bin_matches_torch(void **state) {
    (void)state;
    xc_ckpt *ck = open_ok(CK_DIR "/single_bin");
    assert_int_equal(xc_ckpt_get_format(ck), XC_CKPT_FORMAT_TORCH_BIN);
    check_manifest(ck);
    xc_ckpt_close(ck);
}

static void test_ckpt_safetensors_matches_torch(void **state) {
    (void)state;
    xc_ckpt *ck = open_ok(CK_DIR "/single_st");
    assert_int_equal(xc_ckpt_get_format(ck), XC_CKPT_FORMAT_SAFETENSORS);
    check_manifest(ck);
    xc_ckpt_close(ck);
}

static void test_ckpt_bin_equals_safetensors(void **state) {
    (void)state;
    xc_ckpt *a = open_ok(CK_DIR "/single_bin/pytorch_model.bin");
    xc_ckpt *b = open_ok(CK_DIR "/single_st/model.safetensors");
    check_same(a, b);
    xc_ckpt_close(a);
    xc_ckpt_close(b);
}

/* The same archive rewritten with ZIP64 extras in every central directory record. */
static void test_ckpt_zip64_equals_bin(void **state) {
    (void)state;
    xc_ckpt *a = open_ok(CK_DIR "/single_bin/pytorch_model.bin");
    xc_ckpt *b = open_ok(CK_DIR "/zip64.bin");
    assert_int_equal(xc_ckpt_get_format(b), XC_CKPT_FORMAT_TORCH_BIN);
    check_same(a, b);
    xc_ckpt_close(a);
    xc_ckpt_close(b);
}

/* w1 and w3 are views of one storage in the .bin: both point into it, w3 at its storage offset,
 * without copies; data is aligned as torch aligns zip entries (64 bytes). */
static void test_ckpt_bin_shared_storage_views(void **state) {
    (void)state;
    xc_ckpt *ck = open_ok(CK_DIR "/single_bin/pytorch_model.bin");
    xc_tensor_view w1, w3;
    get_ok(ck, "model.layers.0.feed_forward.w1.weight", &w1);
    get_ok(ck, "model.layers.0.feed_forward.w3.weight", &w3);
    assert_int_equal(w1.nbytes, 40 * 16 * 2);
    assert_ptr_equal((const char *)w1.data + w1.nbytes, w3.data);
    assert_int_equal((uintptr_t)w1.data % 64, 0);
    xc_ckpt_close(ck);
}

static void test_ckpt_sharded_equals_single(void **state) {
    (void)state;
    xc_ckpt *a = open_ok(CK_DIR "/single_bin");
    xc_ckpt *b = open_ok(CK_DIR "/sharded_bin");
    xc_ckpt *c = open_ok(CK_DIR "/sharded_st/model.safetensors.index.json");
    assert_int_equal(xc_ckpt_get_format(b), XC_CKPT_FORMAT_TORCH_BIN);
    assert_int_equal(xc_ckpt_get_format(c), XC_CKPT_FORMAT_SAFETENSORS);
    check_same(a, b);
    check_same(a, c);
    /* Shards are numbered in file-name order: 00001 is 0. */
    xc_tensor_view v;
    get_ok(b, "model.tok_embeddings.weight", &v);
    assert_int_equal(v.shard, 0);
    get_ok(c, "output.weight", &v);
    assert_int_equal(v.shard, 1);
    xc_ckpt_close(a);
    xc_ckpt_close(b);
    xc_ckpt_close(c);
}

/* ---- laziness ---- */

static void check_lazy(const char *dir, const char *shard1, const char *shard2) {
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/%s", dir, shard1);
    snprintf(p2, sizeof p2, "%s/%s", dir, shard2);
    xc_ckpt *ck = open_ok(dir);
    assert_int_equal(xc_ckpt_mapped_bytes(ck), 0);
    assert_int_equal(xc_ckpt_count(ck), 18);
    assert_true(xc_ckpt_has(ck, "output.weight"));
    assert_false(xc_ckpt_has(ck, "output.bias"));
    assert_int_equal(xc_ckpt_mapped_bytes(ck), 0);
    xc_tensor_view v;
    get_ok(ck, "model.layers.0.attention.wqkv.weight", &v); /* shard 1 */
    assert_int_equal(xc_ckpt_mapped_bytes(ck), file_size(p1));
    get_ok(ck, "model.tok_embeddings.weight", &v); /* shard 1 again: nothing new */
    assert_int_equal(xc_ckpt_mapped_bytes(ck), file_size(p1));
    get_ok(ck, "output.weight", &v); /* shard 2 */
    assert_int_equal(xc_ckpt_mapped_bytes(ck), file_size(p1) + file_size(p2));
    xc_ckpt_close(ck);
}

static void test_ckpt_maps_shards_lazily(void **state) {
    (void)state;
    check_lazy(CK_DIR "/sharded_bin", "pytorch_model-00001-of-00002.bin",
               "pytorch_model-00002-of-00002.bin");
    check_lazy(CK_DIR "/sharded_st", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors");
}

/* ---- xc_ckpt_get_shaped ---- */

static void test_ckpt_get_shaped(void **state) {
    (void)state;
    xc_ckpt *ck = open_ok(CK_DIR "/single_st");
    xc_tensor_view v;
    assert_int_equal(xc_ckpt_get_shaped(ck, "output.weight", 2, (int64_t[]){32, 16}, &v), XC_OK);
    assert_int_equal(v.dtype, XC_DTYPE_BF16);
    assert_int_equal(xc_ckpt_get_shaped(ck, "output.weight", 2, (int64_t[]){-1, 16}, &v), XC_OK);
    assert_int_equal(xc_ckpt_get_shaped(ck, "logit_scale", 0, NULL, &v), XC_OK);
    assert_int_equal(v.nbytes, 4);

    assert_int_equal(xc_ckpt_get_shaped(ck, "output.weight", 2, (int64_t[]){16, 32}, &v),
                     XC_ERR_PROTO);
    expect_msg("output.weight");
    expect_msg("[16, 32]");
    expect_msg("[32, 16]");
    assert_int_equal(xc_ckpt_get_shaped(ck, "output.weight", 1, (int64_t[]){512}, &v),
                     XC_ERR_PROTO);
    expect_msg("[512]");
    assert_int_equal(xc_ckpt_get_shaped(ck, "vit.vision_tower.vision_model.embeddings.position_ids",
                                        2, (int64_t[]){1, 5}, &v),
                     XC_ERR_PROTO);
    expect_msg("i64");
    assert_int_equal(xc_ckpt_get_shaped(ck, "output.bias", 1, (int64_t[]){32}, &v),
                     XC_ERR_NOTFOUND);
    expect_msg("output.bias");
    assert_int_equal(xc_ckpt_get(ck, "", &v), XC_ERR_NOTFOUND);
    xc_ckpt_close(ck);
}

/* ---- broken files ---- */

typedef struct bad_case {
    const char *file; /* under CK_DIR */
    xc_status st;
    const char *needle; /* must appear in xc_err_last() */
} bad_case;

static const bad_case bad_cases[] = {
    {"bad/os_system.bin", XC_ERR_PROTO, "pickle global 'os.system' is not allowed"},
    {"bad/posix_system.bin", XC_ERR_PROTO, "pickle global 'posix.system' is not allowed"},
    {"bad/bad_opcode.bin", XC_ERR_PROTO, "opcode 0x5d (']') (pickle byte 2)"},
    {"bad/storage_offset.bin", XC_ERR_PROTO, "exceed its storage"},
    {"bad/storage_size.bin", XC_ERR_PROTO, "declares 5 f32 elements"},
    {"bad/missing_storage.bin", XC_ERR_PROTO, "data/9' is missing"},
    {"bad/noncontig.bin", XC_ERR_PROTO, "tensor 'w' is not contiguous"},
    {"bad/not_tensor.bin", XC_ERR_PROTO, "'step' is not a tensor (got int)"},
    {"bad/legacy.bin", XC_ERR_UNSUPPORTED, "legacy (non-zip) torch"},
    {"bad/compressed.bin", XC_ERR_UNSUPPORTED, "is compressed (method 8)"},
    {"bad/truncated.bin", XC_ERR_PROTO, "no end of central directory"},
    {"bad/not_a_zip.bin", XC_ERR_PROTO, "no end of central directory"},
    {"bad/truncated.safetensors", XC_ERR_PROTO, "out of range"},
    {"bad/bad_header_len.safetensors", XC_ERR_PROTO, "header length 1099511627776"},
    {"bad/bad_json.safetensors", XC_ERR_PROTO, "not valid JSON"},
    {"bad/out_of_range.safetensors", XC_ERR_PROTO, "'w': data_offsets [0, 32] out of range"},
    {"bad/overlap.safetensors", XC_ERR_PROTO, "'a' and 'b' overlap"},
    {"bad/size_mismatch.safetensors", XC_ERR_PROTO, "needs 12 bytes but data_offsets span 16"},
    {"bad/unknown_dtype.safetensors", XC_ERR_UNSUPPORTED, "unsupported dtype 'F8_E4M3'"},
    {"bad/negative_shape.safetensors", XC_ERR_PROTO, "shape[0]"},
    {"bad/no_such_file.bin", XC_ERR_IO, "does not exist"},
    {"bad", XC_ERR_IO, "no checkpoint in"},
    {"bad_index_escape", XC_ERR_PROTO, "not a relative file name"},
};

static void test_ckpt_rejects_broken_files(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        char path[512];
        snprintf(path, sizeof path, "%s/%s", CK_DIR, c->file);
        xc_ckpt *ck = NULL;
        xc_status st = xc_ckpt_open(path, &ck);
        if (st != c->st) {
            fail_msg("%s: got %s (%s), want %s", c->file, xc_status_str(st), xc_err_last(),
                     xc_status_str(c->st));
        }
        assert_null(ck);
        expect_msg(c->needle);
        if (st != XC_ERR_IO && !strstr(xc_err_last(), c->file)) {
            fail_msg("error '%s' does not name the file %s", xc_err_last(), c->file);
        }
    }
}

static void test_ckpt_rejects_broken_indexes(void **state) {
    (void)state;
    xc_tensor_view v;
    xc_ckpt *ck = open_ok(CK_DIR "/bad_index_missing");
    assert_int_equal(xc_ckpt_get(ck, "model.norm.weight", &v), XC_ERR_IO);
    expect_msg("missing.safetensors");
    assert_int_equal(xc_ckpt_mapped_bytes(ck), 0);
    xc_ckpt_close(ck);

    ck = open_ok(CK_DIR "/bad_index_wrong");
    assert_int_equal(xc_ckpt_get(ck, "output.weight", &v), XC_ERR_PROTO);
    expect_msg("'output.weight'");
    expect_msg("does not hold it");
    xc_ckpt_close(ck);
}

/* ---- hostile bytes never crash ---- */

static void read_file(const char *path, unsigned char **out, size_t *n) {
    char *buf = NULL;
    assert_int_equal(xc_file_read_all(path, 1 << 24, &buf, n), XC_OK);
    *out = (unsigned char *)buf;
}

/* Opens buf as fmt; on success reads every byte of every tensor (ASan checks the bounds). */
static void try_open(const unsigned char *buf, size_t n, xc_ckpt_format fmt) {
    /* An exact-size heap copy, so that any read past the end is caught. */
    unsigned char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    if (n) {
        memcpy(copy, buf, n);
    }
    xc_ckpt *ck = NULL;
    xc_status st = xc_ckpt_open_mem(copy, n, fmt, &ck);
    if (st == XC_OK) {
        unsigned sum = 0;
        for (size_t i = 0; i < xc_ckpt_count(ck); i++) {
            xc_tensor_view v;
            assert_int_equal(xc_ckpt_get(ck, xc_ckpt_name(ck, i), &v), XC_OK);
            for (size_t j = 0; j < v.nbytes; j++) {
                sum += ((const unsigned char *)v.data)[j];
            }
        }
        (void)sum;
        xc_ckpt_close(ck);
    } else {
        assert_true(st < 0);
        assert_true(xc_err_last()[0] != '\0' || st == XC_ERR_NOMEM);
    }
    free(copy);
}

static void mutate(const char *path, xc_ckpt_format fmt) {
    unsigned char *buf;
    size_t n;
    read_file(path, &buf, &n);
    try_open(buf, n, fmt);
    for (size_t cut = 0; cut < n; cut += 97) {
        try_open(buf, cut, fmt);
    }
    static const unsigned char vals[] = {0x00, 0xff, 0x7f, 0x80};
    for (size_t i = 0; i < n; i += 3) {
        unsigned char saved = buf[i];
        for (size_t k = 0; k < sizeof vals; k++) {
            buf[i] = k == 0 ? (unsigned char)(saved ^ 0xff) : vals[k];
            try_open(buf, n, fmt);
        }
        buf[i] = saved;
    }
    xc_free(buf);
}

static void test_ckpt_mutations_never_crash(void **state) {
    (void)state;
    mutate(CK_DIR "/single_bin/pytorch_model.bin", XC_CKPT_FORMAT_TORCH_BIN);
    mutate(CK_DIR "/zip64.bin", XC_CKPT_FORMAT_TORCH_BIN);
    mutate(CK_DIR "/single_st/model.safetensors", XC_CKPT_FORMAT_SAFETENSORS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ckpt_bin_matches_torch),
        cmocka_unit_test(test_ckpt_safetensors_matches_torch),
        cmocka_unit_test(test_ckpt_bin_equals_safetensors),
        cmocka_unit_test(test_ckpt_zip64_equals_bin),
        cmocka_unit_test(test_ckpt_bin_shared_storage_views),
        cmocka_unit_test(test_ckpt_sharded_equals_single),
        cmocka_unit_test(test_ckpt_maps_shards_lazily),
        cmocka_unit_test(test_ckpt_get_shaped),
        cmocka_unit_test(test_ckpt_rejects_broken_files),
        cmocka_unit_test(test_ckpt_rejects_broken_indexes),
        cmocka_unit_test(test_ckpt_mutations_never_crash),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
