/* libFuzzer: encode/decode arbitrary bytes with the tiny fixture model (InternLM2-like settings).
 * Oracle: decode(encode(x)) == x with each malformed UTF-8 byte as U+FFFD and U+2581 as a space
 * (identity normalizer, no dummy prefix, whitespace kept, byte fallback); and the streaming
 * detokenizer adds up to the full decode for arbitrary id sequences. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"
#include "xc_tokenizer.h"

static xc_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (xc_tokenizer_load(XC_FIXTURE_DIR "/tokenizer/tiny.model", &tok) != XC_OK) {
        abort();
    }
    return 0;
}

/* Strict UTF-8 (RFC 3629): length of the character at p, or 0 if malformed. */
static size_t utf8_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t need;
    uint32_t cp, min;
    if (c < 0x80) {
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        need = 1, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        need = 2, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        need = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (need >= n) {
        return 0;
    }
    for (size_t k = 1; k <= need; k++) {
        if ((p[k] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return need + 1;
}

static void check_stream(const int32_t *ids, size_t n, const char *full, size_t full_len) {
    xc_tokenizer_stream s;
    xc_tokenizer_stream_init(&s, tok);
    size_t at = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *t;
        size_t l;
        xc_status st = i < n ? xc_tokenizer_stream_feed(&s, ids[i], &t, &l)
                             : xc_tokenizer_stream_finish(&s, &t, &l);
        if (st != XC_OK || at + l > full_len || memcmp(full + at, t, l) != 0) {
            abort();
        }
        for (size_t k = 0; k < l;) { // never a partial character
            size_t cl = utf8_len((const unsigned char *)t + k, l - k);
            if (cl == 0) {
                abort();
            }
            k += cl;
        }
        at += l;
    }
    if (at != full_len) {
        abort();
    }
    xc_tokenizer_stream_fini(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) {
        return 0;
    }
    xc_tokens ids = {0};
    char *text = NULL;
    size_t len = 0;
    if (data[0] & 1) {
        // arbitrary ids: two bytes each, mostly in range
        size_t vocab = xc_tokenizer_vocab_size(tok);
        for (size_t i = 1; i + 1 < size; i += 2) {
            int32_t id = (int32_t)((data[i] | (data[i + 1] << 8)) % (vocab + 2));
            if ((size_t)id >= vocab) {
                id = -1;
            }
            if (xc_tokenizer_tokens_push(&ids, id) != XC_OK) {
                abort();
            }
        }
        xc_status st = xc_tokenizer_decode(tok, ids.ids, ids.n, &text, &len);
        bool bad = false;
        for (size_t i = 0; i < ids.n; i++) {
            bad |= ids.ids[i] < 0;
        }
        if (bad != (st != XC_OK)) {
            abort();
        }
        if (st == XC_OK) {
            check_stream(ids.ids, ids.n, text, len);
        }
    } else {
        const char *in = (const char *)data + 1;
        size_t n = size - 1;
        if (xc_tokenizer_encode(tok, in, n, &ids) != XC_OK) {
            abort();
        }
        if (xc_tokenizer_decode(tok, ids.ids, ids.n, &text, &len) != XC_OK) {
            abort();
        }
        // expected text
        char *want = malloc(3 * n + 1);
        size_t w = 0;
        for (size_t i = 0; i < n;) {
            size_t cl = utf8_len((const unsigned char *)in + i, n - i);
            if (cl == 0) {
                memcpy(want + w, "\xef\xbf\xbd", 3);
                w += 3;
                i++;
            } else if (cl == 3 && memcmp(in + i, "\xe2\x96\x81", 3) == 0) {
                want[w++] = ' ';
                i += 3;
            } else {
                memcpy(want + w, in + i, cl);
                w += cl;
                i += cl;
            }
        }
        if (w != len || memcmp(want, text, len) != 0) {
            abort();
        }
        free(want);
        check_stream(ids.ids, ids.n, text, len);
    }
    xc_free(text);
    xc_tokenizer_tokens_fini(&ids);
    return 0;
}
