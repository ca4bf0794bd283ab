/* Restricted unpickler on hand-assembled pickles (each opcode as the pickle spec defines it) and
 * on the pickle torch.save wrote for the fixture: what it accepts, and what it refuses by name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mmap.h"
#include "xc_pickle.h"
#include "xc_test.h"

#define PKL_SEED XC_FIXTURE_DIR "/../fuzz/corpus/pickle/single_bin_pytorch_model.bin.pkl"

/* ---- a tiny pickle assembler ---- */

typedef struct pk {
    unsigned char b[8192];
    size_t n;
} pk;

static void raw(pk *p, const void *s, size_t n) {
    assert_true(p->n + n <= sizeof p->b);
    memcpy(p->b + p->n, s, n);
    p->n += n;
}

/* Appends a string literal's bytes (without its NUL). */
#define RAW(p, lit) raw((p), (lit), sizeof(lit) - 1)

static void op(pk *p, unsigned char c) {
    raw(p, &c, 1);
}

static void u32(pk *p, uint32_t x) {
    unsigned char b[4] = {(unsigned char)x, (unsigned char)(x >> 8), (unsigned char)(x >> 16),
                          (unsigned char)(x >> 24)};
    raw(p, b, 4);
}

static void str(pk *p, const char *s) { /* BINUNICODE */
    op(p, 'X');
    u32(p, (uint32_t)strlen(s));
    raw(p, s, strlen(s));
}

static void glob(pk *p, const char *mod, const char *name) { /* GLOBAL */
    op(p, 'c');
    raw(p, mod, strlen(mod));
    op(p, '\n');
    raw(p, name, strlen(name));
    op(p, '\n');
}

static void int1(pk *p, unsigned x) { /* BININT1 */
    op(p, 'K');
    op(p, (unsigned char)x);
}

static void put(pk *p, unsigned i) { /* BINPUT */
    op(p, 'q');
    op(p, (unsigned char)i);
}

/* A tensor as torch.save writes it: _rebuild_tensor_v2((storage), offset, size, stride, False,
 * OrderedDict()), with the storage given by a persistent id. Leaves the tensor on the stack. */
static void tensor(pk *p, const char *stype, const char *key, unsigned numel, unsigned offset,
                   int ndim, const unsigned *shape, const unsigned *stride) {
    glob(p, "torch._utils", "_rebuild_tensor_v2");
    op(p, '(');
    op(p, '(');
    str(p, "storage");
    glob(p, "torch", stype);
    str(p, key);
    str(p, "cpu");
    int1(p, numel);
    op(p, 't');
    op(p, 'Q'); /* BINPERSID */
    int1(p, offset);
    op(p, '(');
    for (int i = 0; i < ndim; i++) {
        int1(p, shape[i]);
    }
    op(p, 't');
    op(p, '(');
    for (int i = 0; i < ndim; i++) {
        int1(p, stride[i]);
    }
    op(p, 't');
    op(p, 0x89); /* NEWFALSE */
    glob(p, "collections", "OrderedDict");
    op(p, ')');
    op(p, 'R');
    op(p, 't');
    op(p, 'R');
}

static xc_status load(const pk *p, xc_arena *a, xc_pickle_tensor **ts, size_t *n) {
    return xc_pickle_load_state_dict(p->b, p->n, a, ts, n);
}

static void expect_error(const pk *p, xc_status want, const char *needle) {
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_pickle_tensor *ts = NULL;
    size_t n = 0;
    xc_status st = load(p, a, &ts, &n);
    if (st != want || !strstr(xc_err_last(), needle)) {
        fail_msg("got %s '%s', want %s mentioning '%s'", xc_status_str(st), xc_err_last(),
                 xc_status_str(want), needle);
    }
    xc_arena_destroy(a);
}

/* ---- accepted ---- */

static void test_pickle_reads_hand_assembled_state_dict(void **state) {
    (void)state;
    pk p = {.n = 0};
    op(&p, 0x80);
    op(&p, 2);
    op(&p, '}'); /* a plain dict, as transformers' sharded saves use */
    put(&p, 0);
    op(&p, '(');
    str(&p, "a.weight");
    tensor(&p, "BFloat16Storage", "0", 12, 2, 2, (unsigned[]){2, 5}, (unsigned[]){5, 1});
    str(&p, "b");
    tensor(&p, "LongStorage", "1", 3, 0, 1, (unsigned[]){3}, (unsigned[]){1});
    op(&p, 'u'); /* SETITEMS */
    str(&p, "c");
    tensor(&p, "HalfStorage", "2", 1, 0, 0, NULL, NULL);
    op(&p, 's'); /* SETITEM */
    op(&p, '.');
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_pickle_tensor *ts = NULL;
    size_t n = 0;
    assert_int_equal(load(&p, a, &ts, &n), XC_OK);
    assert_int_equal(n, 3);
    assert_string_equal(ts[0].name, "a.weight");
    assert_string_equal(ts[0].storage_key, "0");
    assert_int_equal(ts[0].dtype, XC_DTYPE_BF16);
    assert_int_equal(ts[0].storage_numel, 12);
    assert_int_equal(ts[0].offset, 2);
    assert_int_equal(ts[0].ndim, 2);
    assert_int_equal(ts[0].shape[0], 2);
    assert_int_equal(ts[0].shape[1], 5);
    assert_int_equal(ts[0].stride[0], 5);
    assert_int_equal(ts[0].stride[1], 1);
    assert_string_equal(ts[1].name, "b");
    assert_int_equal(ts[1].dtype, XC_DTYPE_I64);
    assert_string_equal(ts[2].name, "c");
    assert_int_equal(ts[2].dtype, XC_DTYPE_F16);
    assert_int_equal(ts[2].ndim, 0);
    xc_arena_destroy(a);
}

/* Integers in every width torch may use (BININT2, BININT, LONG1 for sizes past 2^31), memo slots
 * via LONG_BINPUT/LONG_BINGET, TUPLE3, and the 7-argument _rebuild_tensor_v2 of newer torch. */
static void test_pickle_reads_wide_ints_and_memo(void **state) {
    (void)state;
    pk p = {.n = 0};
    op(&p, 0x80);
    op(&p, 2);
    glob(&p, "collections", "OrderedDict");
    op(&p, 'r'); /* LONG_BINPUT 0 */
    u32(&p, 0);
    op(&p, ')');
    op(&p, 'R');
    str(&p, "big");
    glob(&p, "torch._utils", "_rebuild_tensor_v2");
    op(&p, '(');
    op(&p, '(');
    str(&p, "storage");
    glob(&p, "torch", "FloatStorage");
    str(&p, "7");
    str(&p, "cuda:0");
    RAW(&p, "\x8a\x05\x00\x00\x00\x00\x01"); /* LONG1 2^32 */
    op(&p, 't');
    op(&p, 'Q');
    op(&p, 'J'); /* BININT 70000 */
    u32(&p, 70000);
    op(&p, 'M'); /* BININT2 1000 */
    RAW(&p, "\xe8\x03");
    int1(&p, 3);
    RAW(&p, "\x8a\x05\x00\x00\x00\x00\x01");             /* a dim of 2^32 */
    op(&p, 0x87);                                        /* TUPLE3 */
    RAW(&p, "\x8a\x08\x00\x00\x00\x00\x03\x00\x00\x00"); /* LONG1 3 * 2^32 */
    RAW(&p, "\x8a\x05\x00\x00\x00\x00\x01");
    int1(&p, 1);
    op(&p, 0x87);
    op(&p, 0x88); /* NEWTRUE */
    op(&p, 'j');  /* LONG_BINGET 0: the OrderedDict class */
    u32(&p, 0);
    op(&p, ')');
    op(&p, 'R');
    op(&p, 'N'); /* metadata None */
    op(&p, 't');
    op(&p, 'R');
    op(&p, 's');
    op(&p, '}'); /* BUILD with a _metadata-like state */
    op(&p, 'b');
    op(&p, '.');
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_pickle_tensor *ts = NULL;
    size_t n = 0;
    xc_status st = load(&p, a, &ts, &n);
    if (st != XC_OK) {
        fail_msg("%s", xc_err_last());
    }
    assert_int_equal(n, 1);
    assert_int_equal(ts[0].storage_numel, 1ll << 32);
    assert_int_equal(ts[0].offset, 70000);
    assert_int_equal(ts[0].shape[0], 1000);
    assert_int_equal(ts[0].shape[2], 1ll << 32);
    assert_int_equal(ts[0].stride[0], 3ll << 32);
    xc_arena_destroy(a);
}

/* The pickle torch 1.13 wrote for the fixture state dict: 18 tensors, OrderedDict + BUILD. */
static void test_pickle_reads_torch_output(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_file_read_all(PKL_SEED, 1 << 20, &buf, &len), XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_pickle_tensor *ts = NULL;
    size_t n = 0;
    assert_int_equal(xc_pickle_load_state_dict((unsigned char *)buf, len, a, &ts, &n), XC_OK);
    assert_int_equal(n, 18);
    assert_string_equal(ts[0].name, "model.tok_embeddings.weight"); /* pickle order */
    assert_int_equal(ts[0].dtype, XC_DTYPE_BF16);
    /* w3 is the second half of w1's storage */
    assert_string_equal(ts[7].name, "model.layers.0.feed_forward.w3.weight");
    assert_string_equal(ts[7].storage_key, ts[6].storage_key);
    assert_int_equal(ts[7].offset, 40 * 16);
    assert_int_equal(ts[7].storage_numel, 80 * 16);
    xc_arena_destroy(a);

    /* Every prefix and every single-byte change: an error or a result, never a crash. */
    for (size_t cut = 0; cut < len; cut++) {
        assert_int_equal(xc_arena_create(4096, &a), XC_OK);
        unsigned char *c = malloc(cut ? cut : 1);
        memcpy(c, buf, cut);
        assert_true(xc_pickle_load_state_dict(c, cut, a, &ts, &n) != XC_OK);
        free(c);
        xc_arena_destroy(a);
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char saved = (unsigned char)buf[i];
        buf[i] = (char)(saved ^ 0x5a);
        assert_int_equal(xc_arena_create(4096, &a), XC_OK);
        (void)xc_pickle_load_state_dict((unsigned char *)buf, len, a, &ts, &n);
        xc_arena_destroy(a);
        buf[i] = (char)saved;
    }
    xc_free(buf);
}

/* ---- refused ---- */

static void test_pickle_refuses_other_globals(void **state) {
    (void)state;
    static const char *const evil[][2] = {
        {"os", "system"},
        {"posix", "system"},
        {"builtins", "eval"},
        {"subprocess", "Popen"},
        {"torch", "load"},
        {"torch._utils", "_rebuild_parameter"},
        {"collections", "defaultdict"},
        {"torch", "Tensor"},
    };
    for (size_t i = 0; i < sizeof evil / sizeof evil[0]; i++) {
        pk p = {.n = 0};
        op(&p, 0x80);
        op(&p, 2);
        glob(&p, evil[i][0], evil[i][1]);
        str(&p, "touch /tmp/pwned");
        op(&p, 0x85);
        op(&p, 'R');
        op(&p, '.');
        char msg[128];
        snprintf(msg, sizeof msg, "pickle global '%s.%s' is not allowed", evil[i][0], evil[i][1]);
        expect_error(&p, XC_ERR_PROTO, msg);
    }
    /* A real torch storage type of a dtype xcpipe has no type for. */
    pk q = {.n = 0};
    glob(&q, "torch", "ComplexFloatStorage");
    op(&q, '.');
    expect_error(&q, XC_ERR_UNSUPPORTED,
                 "storage type 'torch.ComplexFloatStorage' is not supported");
    /* An allowed storage type used as a callable. */
    pk p = {.n = 0};
    glob(&p, "torch", "FloatStorage");
    op(&p, ')');
    op(&p, 'R');
    op(&p, '.');
    expect_error(&p, XC_ERR_PROTO, "torch.FloatStorage may only appear as a type tag");
}

static void test_pickle_refuses_malformed(void **state) {
    (void)state;
    pk p = {.n = 0};
    RAW(&p, "\x80\x02}\x94."); /* MEMOIZE (protocol 4) */
    expect_error(&p, XC_ERR_PROTO, "unsupported pickle opcode 0x94 (pickle byte 3)");
    p.n = 0;
    RAW(&p, "\x80\x04}.");
    expect_error(&p, XC_ERR_UNSUPPORTED, "protocol 4");
    p.n = 0;
    RAW(&p, "\x80\x02}");
    expect_error(&p, XC_ERR_PROTO, "no STOP");
    p.n = 0;
    RAW(&p, "s.");
    expect_error(&p, XC_ERR_PROTO, "stack underflow in SETITEM");
    p.n = 0;
    RAW(&p, "NNNNNNh\x05.");
    expect_error(&p, XC_ERR_PROTO, "memo slot 5 that was never set");
    p.n = 0;
    RAW(&p, "}r\xff\xff\xff\x7f.");
    expect_error(&p, XC_ERR_PROTO, "memo index 2147483647 is out of range");
    p.n = 0;
    RAW(&p, "}q\x00q\x02.");
    expect_error(&p, XC_ERR_PROTO, "memo index 2 is out of range (1 slots assigned so far)");
    p.n = 0;
    RAW(&p, "X\xff\xff\x00\x00"
            "abc");
    expect_error(&p, XC_ERR_PROTO, "truncated: BINUNICODE");
    p.n = 0;
    RAW(&p, "X\x03\x00\x00\x00"
            "a\x00"
            "b.");
    expect_error(&p, XC_ERR_PROTO, "NUL");
    p.n = 0;
    RAW(&p, "cos");
    expect_error(&p, XC_ERR_PROTO, "no newline");
    p.n = 0;
    RAW(&p, "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.");
    expect_error(&p, XC_ERR_PROTO, "LONG1 of 9 bytes");
    p.n = 0;
    RAW(&p, "K\x01.");
    expect_error(&p, XC_ERR_PROTO, "not a state dict (got int)");
    p.n = 0;
    RAW(&p, "}X\x01\x00\x00\x00"
            "aK\x01s.");
    expect_error(&p, XC_ERR_PROTO, "entry 'a' is not a tensor (got int)");
    p.n = 0;
    RAW(&p, "}(K\x01u.");
    expect_error(&p, XC_ERR_PROTO, "odd number");
    p.n = 0;
    RAW(&p, "K\x01}b.");
    expect_error(&p, XC_ERR_PROTO, "BUILD target is not a dict (got int)");
    p.n = 0;
    RAW(&p, "ccollections\nOrderedDict\nK\x01\x85R.");
    expect_error(&p, XC_ERR_PROTO, "OrderedDict called with 1 arguments");
    /* MARKs nested past the limit */
    p.n = 0;
    for (int i = 0; i <= XC_PICKLE_MAX_MARKS; i++) {
        op(&p, '(');
    }
    expect_error(&p, XC_ERR_PROTO, "MARKs nested deeper than 64");
    /* _rebuild_tensor_v2 with the wrong arity */
    p.n = 0;
    op(&p, '}');
    str(&p, "w");
    glob(&p, "torch._utils", "_rebuild_tensor_v2");
    op(&p, '(');
    int1(&p, 1);
    op(&p, 't');
    op(&p, 'R');
    op(&p, 's');
    op(&p, '.');
    expect_error(&p, XC_ERR_PROTO, "_rebuild_tensor_v2 takes 6 or 7 arguments, got 1");
}

/* Work and memory stay linear: a stack of a million values is refused, not grown forever. */
static void test_pickle_limits_stack(void **state) {
    (void)state;
    size_t n = XC_PICKLE_MAX_STACK + 2;
    unsigned char *b = malloc(n * 2 + 8);
    assert_non_null(b);
    size_t k = 0;
    b[k++] = 'N';
    b[k++] = 'q';
    b[k++] = 0;
    for (size_t i = 0; i < n; i++) {
        b[k++] = 'h';
        b[k++] = 0;
    }
    b[k++] = '.';
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(1 << 16, &a), XC_OK);
    xc_pickle_tensor *ts = NULL;
    size_t cnt = 0;
    assert_int_equal(xc_pickle_load_state_dict(b, k, a, &ts, &cnt), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "stack exceeds"));
    xc_arena_destroy(a);
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pickle_reads_hand_assembled_state_dict),
        cmocka_unit_test(test_pickle_reads_wide_ints_and_memo),
        cmocka_unit_test(test_pickle_reads_torch_output),
        cmocka_unit_test(test_pickle_refuses_other_globals),
        cmocka_unit_test(test_pickle_refuses_malformed),
        cmocka_unit_test(test_pickle_limits_stack),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
