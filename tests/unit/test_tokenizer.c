/* tokenizer: ids and decodes identical to the SentencePiece library on the committed fixtures
 * (tools/tokenizer/make_fixtures.py), the streaming detokenizer against the full decode, the
 * model-file checks, and limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mmap.h"
#include "xc_test.h"
#include "xc_tokenizer.h"

#define FIX XC_FIXTURE_DIR "/tokenizer/"

/* ---- fixture helpers ---- */

typedef struct bytes {
    char *p;
    size_t n;
} bytes;

static char *read_fixture(const char *name, size_t *len) {
    char path[512];
    snprintf(path, sizeof path, FIX "%s", name);
    char *buf = NULL;
    size_t n = 0;
    xc_status st = xc_file_read_all(path, (size_t)64 << 20, &buf, &n);
    if (st != XC_OK) {
        fail_msg("cannot read %s: %s", path, xc_err_last());
    }
    if (len) {
        *len = n;
    }
    return buf;
}

static int hexval(char c) {
    return (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

/* Undoes make_fixtures.py esc(): \\ \t \n \r \xHH, the rest raw. Returns a test_malloc'd
 * buffer (always NUL-terminated). */
static bytes unescape(const char *s, size_t n) {
    bytes b = {test_malloc(n + 1), 0};
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') {
            b.p[b.n++] = s[i];
            continue;
        }
        assert_true(i + 1 < n);
        char c = s[++i];
        if (c == 'x') {
            assert_true(i + 2 < n);
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            assert_true(hi >= 0 && lo >= 0);
            b.p[b.n++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            b.p[b.n++] = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
        }
    }
    b.p[b.n] = '\0';
    return b;
}

/* Splits buf in place into lines; returns the count and a test_malloc'd array of pointers. */
static size_t split_lines(char *buf, size_t len, char ***out) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        n += buf[i] == '\n';
    }
    char **lines = test_malloc((n + 1) * sizeof *lines);
    size_t k = 0;
    char *p = buf;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\n') {
            buf[i] = '\0';
            lines[k++] = p;
            p = buf + i + 1;
        }
    }
    *out = lines;
    return k;
}

/* Parses "1 2 3" into ids (test_malloc'd). */
static size_t parse_ids(const char *s, int32_t **out) {
    size_t cap = 16, n = 0;
    int32_t *v = test_malloc(cap * sizeof *v);
    while (*s) {
        char *end;
        long x = strtol(s, &end, 10);
        assert_true(end != s);
        if (n == cap) {
            cap *= 2;
            v = test_realloc(v, cap * sizeof *v);
        }
        v[n++] = (int32_t)x;
        s = end;
        while (*s == ' ') {
            s++;
        }
    }
    *out = v;
    return n;
}

static void print_bytes(const char *what, const char *p, size_t n) {
    fprintf(stderr, "%s (%zu bytes): ", what, n);
    for (size_t i = 0; i < n && i < 200; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f) {
            fputc(c, stderr);
        } else {
            fprintf(stderr, "\\x%02x", c);
        }
    }
    fputc('\n', stderr);
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "%s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 60; i++) {
        fprintf(stderr, " %d", ids[i]);
    }
    fputc('\n', stderr);
}

/* Strict UTF-8 check (RFC 3629), independent of the tokenizer's own decoder. */
static bool utf8_ok(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t need;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (i + need >= n) {
            return false;
        }
        for (size_t k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += need + 1;
    }
    return true;
}

typedef struct strings {
    char *buf;
    char **lines;
    size_t n;
} strings;

static strings load_strings(void) {
    strings s;
    size_t len;
    s.buf = read_fixture("strings.txt", &len);
    s.n = split_lines(s.buf, len, &s.lines);
    return s;
}

static void free_strings(strings *s) {
    test_free(s->lines);
    xc_free(s->buf);
}

static xc_tokenizer *load_model(const char *name) {
    char path[512];
    snprintf(path, sizeof path, FIX "%s.model", name);
    xc_tokenizer *tok = NULL;
    xc_status st = xc_tokenizer_load(path, &tok);
    if (st != XC_OK) {
        fail_msg("load %s: %s", path, xc_err_last());
    }
    return tok;
}

/* Feeds ids one by one through the streaming decoder; checks that every chunk is complete UTF-8
 * (when the full text is) and that the chunks add up to the full decode. */
static void check_stream(const xc_tokenizer *tok, const int32_t *ids, size_t n, const char *full,
                         size_t full_len) {
    xc_tokenizer_stream s;
    xc_tokenizer_stream_init(&s, tok);
    char *acc = test_malloc(full_len + 1);
    size_t acc_len = 0;
    bool full_ok = utf8_ok((const unsigned char *)full, full_len);
    for (size_t i = 0; i <= n; i++) {
        const char *t;
        size_t l;
        if (i < n) {
            assert_int_equal(xc_tokenizer_stream_feed(&s, ids[i], &t, &l), XC_OK);
        } else {
            assert_int_equal(xc_tokenizer_stream_finish(&s, &t, &l), XC_OK);
        }
        if (full_ok && !utf8_ok((const unsigned char *)t, l)) {
            print_ids("ids", ids, n);
            fail_msg("stream chunk %zu is not complete UTF-8", i);
        }
        assert_true(acc_len + l <= full_len);
        memcpy(acc + acc_len, t, l);
        acc_len += l;
    }
    if (acc_len != full_len || memcmp(acc, full, full_len) != 0) {
        print_ids("ids", ids, n);
        print_bytes("stream", acc, acc_len);
        print_bytes("decode", full, full_len);
        fail_msg("streamed text differs from the full decode");
    }
    test_free(acc);
    xc_tokenizer_stream_fini(&s);
}

/* Checks one model against its .meta, .ids and .decode fixtures. Returns the strings checked. */
static size_t check_model(const char *name, const strings *strs) {
    xc_tokenizer *tok = load_model(name);
    char file[128];
    // special ids and vocab as the library reports them
    snprintf(file, sizeof file, "%s.meta", name);
    size_t mlen;
    char *meta = read_fixture(file, &mlen);
    long vocab, unk, bos, eos, pad, im_end, im_start;
    assert_int_equal(sscanf(meta,
                            "vocab %ld unk %ld bos %ld eos %ld pad %ld im_end %ld im_start %ld",
                            &vocab, &unk, &bos, &eos, &pad, &im_end, &im_start),
                     7);
    xc_free(meta);
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(tok);
    assert_int_equal(xc_tokenizer_vocab_size(tok), vocab);
    assert_int_equal(sp->unk, unk);
    assert_int_equal(sp->bos, bos);
    assert_int_equal(sp->eos, eos);
    assert_int_equal(sp->pad, pad);
    assert_int_equal(sp->im_end, im_end);
    assert_int_equal(sp->im_start, im_start);

    // encode + decode of every listed string
    snprintf(file, sizeof file, "%s.ids", name);
    size_t len;
    char *buf = read_fixture(file, &len);
    char **lines;
    size_t n = split_lines(buf, len, &lines);
    size_t bad = 0;
    for (size_t li = 0; li < n; li++) {
        char *f1 = strchr(lines[li], '\t');
        assert_non_null(f1);
        char *f2 = strchr(f1 + 1, '\t');
        assert_non_null(f2);
        *f1 = *f2 = '\0';
        size_t idx = (size_t)strtoul(lines[li], NULL, 10);
        assert_true(idx < strs->n);
        bytes in = unescape(strs->lines[idx], strlen(strs->lines[idx]));
        int32_t *want;
        size_t n_want = parse_ids(f1 + 1, &want);
        xc_tokens got = {0};
        assert_int_equal(xc_tokenizer_encode(tok, in.p, in.n, &got), XC_OK);
        if (got.n != n_want || (n_want && memcmp(got.ids, want, n_want * sizeof *want) != 0)) {
            if (bad++ < 5) {
                fprintf(stderr, "%s: string %zu encodes differently\n", name, idx);
                print_bytes("input", in.p, in.n);
                print_ids("library", want, n_want);
                print_ids("ours", got.ids, got.n);
            }
        }
        // round trip: our decode of the library's ids equals the library's decode
        bytes dec = strcmp(f2 + 1, "=") == 0 ? unescape(in.p, 0) : unescape(f2 + 1, strlen(f2 + 1));
        const char *want_text = strcmp(f2 + 1, "=") == 0 ? in.p : dec.p;
        size_t want_len = strcmp(f2 + 1, "=") == 0 ? in.n : dec.n;
        char *text;
        size_t tl;
        assert_int_equal(xc_tokenizer_decode(tok, want, n_want, &text, &tl), XC_OK);
        if (tl != want_len || memcmp(text, want_text, tl) != 0) {
            if (bad++ < 5) {
                fprintf(stderr, "%s: string %zu decodes differently\n", name, idx);
                print_bytes("library", want_text, want_len);
                print_bytes("ours", text, tl);
            }
        }
        if (li % 7 == 0) {
            check_stream(tok, want, n_want, text, tl);
        }
        xc_free(text);
        test_free(dec.p);
        xc_tokenizer_tokens_fini(&got);
        test_free(want);
        test_free(in.p);
    }
    test_free(lines);
    xc_free(buf);

    // decode of random id sequences (byte runs, controls, unk, markers)
    snprintf(file, sizeof file, "%s.decode", name);
    buf = read_fixture(file, &len);
    size_t nd = split_lines(buf, len, &lines);
    for (size_t li = 0; li < nd; li++) {
        char *tab = strchr(lines[li], '\t');
        assert_non_null(tab);
        *tab = '\0';
        int32_t *ids;
        size_t k = parse_ids(lines[li], &ids);
        bytes want = unescape(tab + 1, strlen(tab + 1));
        char *text;
        size_t tl;
        assert_int_equal(xc_tokenizer_decode(tok, ids, k, &text, &tl), XC_OK);
        if (tl != want.n || memcmp(text, want.p, tl) != 0) {
            if (bad++ < 5) {
                fprintf(stderr, "%s: decode line %zu differs\n", name, li);
                print_ids("ids", ids, k);
                print_bytes("library", want.p, want.n);
                print_bytes("ours", text, tl);
            }
        }
        check_stream(tok, ids, k, text, tl);
        xc_free(text);
        test_free(want.p);
        test_free(ids);
    }
    test_free(lines);
    xc_free(buf);
    xc_tokenizer_destroy(tok);
    if (bad) {
        fail_msg("%s: %zu mismatches against the SentencePiece library", name, bad);
    }
    return n;
}

/* ---- differential tests ---- */

static void test_tokenizer_matches_library_internlm_like(void **state) {
    (void)state;
    strings s = load_strings();
    assert_true(s.n >= 5000);
    assert_int_equal(check_model("internlm_like", &s), s.n);
    free_strings(&s);
}

static void test_tokenizer_matches_library_dummy_prefix(void **state) {
    (void)state;
    strings s = load_strings();
    assert_true(check_model("dummy_prefix", &s) > 1000);
    free_strings(&s);
}

static void test_tokenizer_matches_library_no_fallback(void **state) {
    (void)state;
    strings s = load_strings();
    assert_true(check_model("no_fallback", &s) > 1000);
    free_strings(&s);
}

static void test_tokenizer_matches_library_unused_pieces(void **state) {
    (void)state;
    strings s = load_strings();
    assert_true(check_model("unused", &s) > 1000);
    free_strings(&s);
}

static void test_tokenizer_matches_library_tiny(void **state) {
    (void)state;
    strings s = load_strings();
    assert_true(check_model("tiny", &s) > 1000);
    free_strings(&s);
}

/* ---- API behaviour ---- */

static void test_tokenizer_piece_lookup_round_trips(void **state) {
    (void)state;
    xc_tokenizer *tok = load_model("internlm_like");
    size_t n = xc_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *p = xc_tokenizer_id_to_piece(tok, (int32_t)i, &len);
        assert_non_null(p);
        assert_int_equal(xc_tokenizer_piece_to_id(tok, p, len), (int32_t)i);
    }
    assert_null(xc_tokenizer_id_to_piece(tok, -1, NULL));
    assert_null(xc_tokenizer_id_to_piece(tok, (int32_t)n, NULL));
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "no such piece!", 14), -1);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "<0x41>", 6), 3 + 147 + 0x41);
    xc_tokenizer_destroy(tok);
}

static void test_tokenizer_markers_are_single_ids(void **state) {
    (void)state;
    xc_tokenizer *tok = load_model("internlm_like");
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(tok);
    xc_tokens t = {0};
    const char *s = "ab[UNUSED_TOKEN_146]user\n[UNUSED_TOKEN_145]";
    assert_int_equal(xc_tokenizer_encode(tok, s, strlen(s), &t), XC_OK);
    size_t starts = 0, ends = 0;
    for (size_t i = 0; i < t.n; i++) {
        starts += t.ids[i] == sp->im_start;
        ends += t.ids[i] == sp->im_end;
    }
    assert_int_equal(starts, 1);
    assert_int_equal(ends, 1);
    assert_int_equal(t.ids[t.n - 1], sp->im_end);
    xc_tokenizer_tokens_fini(&t);
    xc_tokenizer_destroy(tok);
}

static void test_tokenizer_encode_appends_and_limits(void **state) {
    (void)state;
    xc_tokenizer *tok = load_model("tiny");
    xc_tokens t = {0};
    assert_int_equal(xc_tokenizer_tokens_push(&t, 7), XC_OK);
    assert_int_equal(xc_tokenizer_encode(tok, "hello", 5, &t), XC_OK);
    assert_int_equal(t.ids[0], 7);
    assert_true(t.n > 1);
    size_t n = t.n;
    assert_int_equal(xc_tokenizer_encode(tok, "", 0, &t), XC_OK); // empty: nothing added
    assert_int_equal(t.n, n);
    xc_tokenizer_set_max_input(tok, 4);
    assert_int_equal(xc_tokenizer_encode(tok, "hello", 5, &t), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "longer than the tokenizer limit"));
    assert_int_equal(t.n, n);
    assert_int_equal(xc_tokenizer_encode(tok, "hell", 4, &t), XC_OK);
    xc_tokenizer_tokens_fini(&t);
    xc_tokenizer_tokens_fini(NULL);
    xc_tokenizer_destroy(tok);
}

static void test_tokenizer_decode_rejects_bad_ids(void **state) {
    (void)state;
    xc_tokenizer *tok = load_model("tiny");
    int32_t ids[3] = {5, 1000, 6};
    char *text = NULL;
    size_t len;
    assert_int_equal(xc_tokenizer_decode(tok, ids, 3, &text, &len), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "1000"));
    assert_null(text);
    ids[1] = -3;
    assert_int_equal(xc_tokenizer_decode(tok, ids, 3, &text, &len), XC_ERR_ARG);
    assert_int_equal(xc_tokenizer_decode(tok, ids, 0, &text, &len), XC_OK);
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    xc_free(text);
    xc_tokenizer_stream s;
    xc_tokenizer_stream_init(&s, tok);
    const char *t;
    assert_int_equal(xc_tokenizer_stream_feed(&s, 1000, &t, &len), XC_ERR_ARG);
    xc_tokenizer_stream_fini(&s);
    xc_tokenizer_stream_fini(NULL);
    xc_tokenizer_destroy(tok);
}

/* Emoji split into byte pieces: the stream holds the bytes back until the character is whole. */
static void test_tokenizer_stream_holds_partial_characters(void **state) {
    (void)state;
    xc_tokenizer *tok = load_model("tiny");
    const char *emoji = "\xf0\x9f\x98\x80"; // U+1F600, not in the tiny vocabulary
    xc_tokens t = {0};
    assert_int_equal(xc_tokenizer_encode(tok, emoji, 4, &t), XC_OK);
    assert_int_equal(t.n, 4); // four byte pieces
    xc_tokenizer_stream s;
    xc_tokenizer_stream_init(&s, tok);
    const char *out;
    size_t len;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(xc_tokenizer_stream_feed(&s, t.ids[i], &out, &len), XC_OK);
        assert_int_equal(len, 0);
    }
    assert_int_equal(xc_tokenizer_stream_feed(&s, t.ids[3], &out, &len), XC_OK);
    assert_int_equal(len, 4);
    assert_memory_equal(out, emoji, 4);
    // a run cut short: pending bytes come out as one U+FFFD each when the run ends
    assert_int_equal(xc_tokenizer_stream_feed(&s, t.ids[0], &out, &len), XC_OK);
    assert_int_equal(xc_tokenizer_stream_feed(&s, t.ids[1], &out, &len), XC_OK);
    assert_int_equal(len, 0);
    assert_int_equal(xc_tokenizer_stream_finish(&s, &out, &len), XC_OK);
    assert_int_equal(len, 6);
    assert_memory_equal(out, "\xef\xbf\xbd\xef\xbf\xbd", 6);
    xc_tokenizer_stream_fini(&s);
    xc_tokenizer_tokens_fini(&t);
    xc_tokenizer_destroy(tok);
}

/* The detokenizer over every fixture string's ids (not just a sample). */
static void test_tokenizer_stream_matches_decode_everywhere(void **state) {
    (void)state;
    xc_tokenizer *tok = load_model("internlm_like");
    strings s = load_strings();
    for (size_t i = 0; i < s.n; i++) {
        bytes in = unescape(s.lines[i], strlen(s.lines[i]));
        xc_tokens t = {0};
        assert_int_equal(xc_tokenizer_encode(tok, in.p, in.n, &t), XC_OK);
        char *text;
        size_t tl;
        assert_int_equal(xc_tokenizer_decode(tok, t.ids, t.n, &text, &tl), XC_OK);
        check_stream(tok, t.ids, t.n, text, tl);
        xc_free(text);
        xc_tokenizer_tokens_fini(&t);
        test_free(in.p);
    }
    free_strings(&s);
    xc_tokenizer_destroy(tok);
}

/* ---- model file checks ---- */

/* Loads tiny.model with extra protobuf bytes appended (fields merge into the parsed message). */
static xc_status load_patched(const unsigned char *extra, size_t n_extra, xc_tokenizer **tok) {
    size_t len;
    char *buf = read_fixture("tiny.model", &len);
    char *p = test_malloc(len + n_extra);
    memcpy(p, buf, len);
    memcpy(p + len, extra, n_extra);
    xc_status st = xc_tokenizer_create(p, len + n_extra, tok);
    test_free(p);
    xc_free(buf);
    return st;
}

static void test_tokenizer_rejects_bad_models(void **state) {
    (void)state;
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_create("", 0, &tok), XC_ERR_PROTO);
    assert_int_equal(xc_tokenizer_create("\xff\xff\xff\xff\xff\xff", 6, &tok), XC_ERR_PROTO);
    size_t len;
    char *buf = read_fixture("tiny.model", &len);
    assert_int_equal(xc_tokenizer_create(buf, len / 2, &tok), XC_ERR_PROTO); // truncated
    assert_int_equal(xc_tokenizer_create(buf, len - 1, &tok), XC_ERR_PROTO);
    xc_free(buf);
    assert_null(tok);
    assert_int_equal(xc_tokenizer_load(FIX "no-such.model", &tok), XC_ERR_IO);
    assert_non_null(strstr(xc_err_last(), "no-such.model"));

    static const unsigned char unigram[] = {0x12, 0x02, 0x18, 0x01}; // trainer_spec.model_type
    assert_int_equal(load_patched(unigram, sizeof unigram, &tok), XC_ERR_UNSUPPORTED);
    assert_non_null(strstr(xc_err_last(), "unigram"));
    static const unsigned char charsmap[] = {0x1a, 0x04, 0x12, 0x02, 'a', 'b'}; // nfkc-like
    assert_int_equal(load_patched(charsmap, sizeof charsmap, &tok), XC_ERR_UNSUPPORTED);
    assert_non_null(strstr(xc_err_last(), "charsmap"));
    static const unsigned char suffix[] = {0x12, 0x03, 0xc0, 0x01, 0x01}; // field 24 = true
    assert_int_equal(load_patched(suffix, sizeof suffix, &tok), XC_ERR_UNSUPPORTED);
    static const unsigned char nofb[] = {0x12, 0x03, 0x98, 0x02, 0x00}; // byte_fallback = false
    assert_int_equal(load_patched(nofb, sizeof nofb, &tok), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "byte_fallback"));
    static const unsigned char empty_piece[] = {0x0a, 0x02, 0x0a, 0x00};
    assert_int_equal(load_patched(empty_piece, sizeof empty_piece, &tok), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "empty"));
    static const unsigned char dup_unk[] = {0x0a, 0x09, 0x0a, 0x05, '<', 'u',
                                            'n',  'k',  '>',  0x18, 0x02};
    assert_int_equal(load_patched(dup_unk, sizeof dup_unk, &tok), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "twice"));
    static const unsigned char bad_type[] = {0x0a, 0x05, 0x0a, 0x01, 'z', 0x18, 0x09};
    assert_int_equal(load_patched(bad_type, sizeof bad_type, &tok), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "type 9"));
    static const unsigned char bad_byte[] = {0x0a, 0x0a, 0x0a, 0x06, '<',  '0',
                                             'x',  'g',  '1',  '>',  0x18, 0x06};
    assert_int_equal(load_patched(bad_byte, sizeof bad_byte, &tok), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "<0xXX>"));
    assert_null(tok);
}

/* A piece holding NUL keeps its length (InternLM2's vocabulary has one). */
static void test_tokenizer_piece_with_nul(void **state) {
    (void)state;
    static const unsigned char nul_piece[] = {0x0a, 0x05, 0x0a, 0x03, 'a', 0x00, 'b'};
    xc_tokenizer *tok = NULL;
    assert_int_equal(load_patched(nul_piece, sizeof nul_piece, &tok), XC_OK);
    size_t n = xc_tokenizer_vocab_size(tok);
    assert_int_equal(n, 1001);
    size_t len;
    const char *p = xc_tokenizer_id_to_piece(tok, 1000, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(p, "a\0b", 3);
    assert_int_equal(xc_tokenizer_piece_to_id(tok, "a\0b", 3), 1000);
    int32_t id = 1000;
    char *text;
    assert_int_equal(xc_tokenizer_decode(tok, &id, 1, &text, &len), XC_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(text, "a\0b", 3);
    xc_free(text);
    xc_tokenizer_destroy(tok);
    xc_tokenizer_destroy(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenizer_matches_library_internlm_like),
        cmocka_unit_test(test_tokenizer_matches_library_dummy_prefix),
        cmocka_unit_test(test_tokenizer_matches_library_no_fallback),
        cmocka_unit_test(test_tokenizer_matches_library_unused_pieces),
        cmocka_unit_test(test_tokenizer_matches_library_tiny),
        cmocka_unit_test(test_tokenizer_piece_lookup_round_trips),
        cmocka_unit_test(test_tokenizer_markers_are_single_ids),
        cmocka_unit_test(test_tokenizer_encode_appends_and_limits),
        cmocka_unit_test(test_tokenizer_decode_rejects_bad_ids),
        cmocka_unit_test(test_tokenizer_stream_holds_partial_characters),
        cmocka_unit_test(test_tokenizer_stream_matches_decode_everywhere),
        cmocka_unit_test(test_tokenizer_rejects_bad_models),
        cmocka_unit_test(test_tokenizer_piece_with_nul),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
