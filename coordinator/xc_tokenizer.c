/* SentencePiece BPE tokenizer: the library's normalizer (identity charsmap), user-defined pieces,
 * its BPE merge order (best score, then leftmost), UNUSED-piece resegmentation, byte fallback,
 * and decode with byte runs and the dummy-prefix rule. */
#include "xc_tokenizer.h"

#include <string.h>

#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_spm_wire.h"

#define SPACE_SYMBOL     "\xe2\x96\x81" /* U+2581, what spaces become inside pieces */
#define SPACE_SYMBOL_LEN 3
#define REPLACEMENT      "\xef\xbf\xbd" /* U+FFFD */
#define MAX_MODEL_FILE   ((size_t)1 << 30)

/* Open-addressing map from piece text to id; the text lives in the model. */
typedef struct map_slot {
    uint32_t hash; /* hash of the key */
    int32_t id;    /* piece id, -1 for an empty slot */
} map_slot;

typedef struct piece_map {
    map_slot *slot; /* (cap) */
    size_t cap;     /* power of two */
    size_t max_len; /* longest key: longer lookups miss without probing */
} piece_map;

typedef struct piece_info {
    int32_t canon; /* what PieceToId(text) gives (reserved first): the id the library reports */
    int16_t byte;  /* 0..255 for a byte piece, else -1 */
    uint8_t type;  /* xc_spm_piece_type */
} piece_info;

struct xc_tokenizer {
    xc_spm_model m;
    piece_info *info;   /* (n_pieces) */
    piece_map normal;   /* NORMAL, USER_DEFINED, UNUSED pieces: BPE merges look here */
    piece_map reserved; /* CONTROL, UNKNOWN, BYTE pieces */
    int32_t byte_id[256];
    uint8_t ud_first[256]; /* 1 if some user-defined piece starts with this byte */
    size_t ud_lens[64];    /* distinct user-defined piece lengths, descending */
    size_t n_ud_lens;
    bool has_unused;
    xc_tokenizer_special special;
    size_t max_input;
};

/* ---- hashing and maps ---- */

static uint32_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    if (n) {
        memcpy(&v, p, n);
    }
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return (uint32_t)h;
}

static xc_status map_init(piece_map *m, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) {
        cap *= 2;
    }
    m->slot = xc_malloc(cap * sizeof *m->slot);
    m->cap = cap;
    if (m->slot == NULL) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for a piece table of %zu slots", cap);
    }
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    return XC_OK;
}

static void map_fini(piece_map *m) {
    xc_free(m->slot);
    memset(m, 0, sizeof *m);
}

static int32_t map_find(const piece_map *m, const xc_spm_model *model, const char *s, size_t n,
                        uint32_t h) {
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const map_slot *e = &m->slot[i];
        if (e->id < 0) {
            return -1;
        }
        if (e->hash == h) {
            const xc_spm_piece *p = &model->pieces[e->id];
            if (p->len == n && memcmp(p->text, s, n) == 0) {
                return e->id;
            }
        }
    }
}

/* Inserts id; returns false if its text is already present. */
static bool map_insert(piece_map *m, const xc_spm_model *model, int32_t id) {
    const xc_spm_piece *p = &model->pieces[id];
    uint32_t h = hash_bytes((const unsigned char *)p->text, p->len);
    if (map_find(m, model, p->text, p->len, h) >= 0) {
        return false;
    }
    size_t mask = m->cap - 1;
    size_t i = h & mask;
    while (m->slot[i].id >= 0) {
        i = (i + 1) & mask;
    }
    m->slot[i].id = id;
    m->slot[i].hash = h;
    if (p->len > m->max_len) {
        m->max_len = p->len;
    }
    return true;
}

/* ---- UTF-8 as the library sees it ---- */

static bool is_trail(unsigned char c) {
    return c >= 0x80 && c <= 0xbf;
}

/* Length of the valid UTF-8 character at p (n bytes available), or 0 if the library's decoder
 * calls it malformed: overlong forms, surrogates, above U+10FFFF, truncated. */
static size_t utf8_valid_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    if (c < 0x80) {
        return 1;
    }
    if (n >= 2 && (c & 0xe0) == 0xc0) {
        uint32_t cp = ((c & 0x1fu) << 6) | (p[1] & 0x3fu);
        return (is_trail(p[1]) && cp >= 0x80) ? 2 : 0;
    }
    if (n >= 3 && (c & 0xf0) == 0xe0) {
        uint32_t cp = ((c & 0x0fu) << 12) | ((p[1] & 0x3fu) << 6) | (p[2] & 0x3fu);
        return (is_trail(p[1]) && is_trail(p[2]) && cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff))
                   ? 3
                   : 0;
    }
    if (n >= 4 && (c & 0xf8) == 0xf0) {
        uint32_t cp =
            ((c & 0x07u) << 18) | ((p[1] & 0x3fu) << 12) | ((p[2] & 0x3fu) << 6) | (p[3] & 0x3fu);
        return (is_trail(p[1]) && is_trail(p[2]) && is_trail(p[3]) && cp >= 0x10000 &&
                cp <= 0x10ffff)
                   ? 4
                   : 0;
    }
    return 0;
}

/* True if the n bytes at p are a proper prefix of some valid character (so a streaming decoder
 * must wait for more bytes before deciding). */
static bool utf8_incomplete(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t need = (c >= 0xc2 && c <= 0xdf)   ? 2
                  : (c >= 0xe0 && c <= 0xef) ? 3
                  : (c >= 0xf0 && c <= 0xf4) ? 4
                                             : 0;
    if (need == 0 || n >= need) {
        return false;
    }
    if (n >= 2) {
        unsigned lo = 0x80, hi = 0xbf; // allowed range of the second byte
        if (c == 0xe0) {
            lo = 0xa0;
        } else if (c == 0xed) {
            hi = 0x9f;
        } else if (c == 0xf0) {
            lo = 0x90;
        } else if (c == 0xf4) {
            hi = 0x8f;
        }
        if (p[1] < lo || p[1] > hi) {
            return false;
        }
    }
    return n < 3 || is_trail(p[2]);
}

/* The library splits symbols by the lead byte alone. */
static size_t utf8_char_len(unsigned char c) {
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[c >> 4];
}

/* ---- loading ---- */

static int hex_upper(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static xc_status tok_index(xc_tokenizer *tok) {
    const xc_spm_model *m = &tok->m;
    size_t n = m->n_pieces;
    if (n > (size_t)INT32_MAX) {
        return xc_errf(XC_ERR_PROTO, "SentencePiece model has too many pieces (%zu)", n);
    }
    tok->info = xc_calloc(n, sizeof *tok->info);
    if (tok->info == NULL) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for %zu pieces", n);
    }
    XC_TRY(map_init(&tok->normal, n));
    XC_TRY(map_init(&tok->reserved, n));
    for (int i = 0; i < 256; i++) {
        tok->byte_id[i] = -1;
    }
    int32_t unk = -1;
    size_t n_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const xc_spm_piece *p = &m->pieces[i];
        if (p->len == 0) {
            return xc_errf(XC_ERR_PROTO, "SentencePiece piece %zu is empty", i);
        }
        if (p->type < XC_SPM_PIECE_NORMAL || p->type > XC_SPM_PIECE_BYTE) {
            return xc_errf(XC_ERR_PROTO, "SentencePiece piece %zu has unknown type %d", i, p->type);
        }
        tok->info[i].type = (uint8_t)p->type;
        tok->info[i].byte = -1;
        bool normal = p->type == XC_SPM_PIECE_NORMAL || p->type == XC_SPM_PIECE_USER_DEFINED ||
                      p->type == XC_SPM_PIECE_UNUSED;
        if (!map_insert(normal ? &tok->normal : &tok->reserved, m, (int32_t)i)) {
            return xc_errf(XC_ERR_PROTO, "SentencePiece piece %zu ('%.40s') is defined twice", i,
                           p->text);
        }
        if (p->type == XC_SPM_PIECE_UNUSED) {
            tok->has_unused = true;
        }
        if (p->type == XC_SPM_PIECE_UNKNOWN) {
            if (unk >= 0) {
                return xc_errf(XC_ERR_PROTO, "SentencePiece model has two unknown pieces (%d, %zu)",
                               unk, i);
            }
            unk = (int32_t)i;
        }
        if (p->type == XC_SPM_PIECE_BYTE) {
            // Byte pieces are exactly "<0xXX>" with upper-case hex, as the library writes them.
            if (!m->byte_fallback) {
                return xc_errf(XC_ERR_PROTO, "byte piece %zu found although byte_fallback is off",
                               i);
            }
            int hi = p->len == 6 ? hex_upper(p->text[3]) : -1;
            int lo = p->len == 6 ? hex_upper(p->text[4]) : -1;
            if (hi < 0 || lo < 0 || memcmp(p->text, "<0x", 3) != 0 || p->text[5] != '>') {
                return xc_errf(XC_ERR_PROTO, "byte piece %zu ('%.40s') is not <0xXX>", i, p->text);
            }
            unsigned b = (unsigned)(hi * 16 + lo);
            if (tok->byte_id[b] < 0) {
                n_bytes++;
            }
            tok->byte_id[b] = (int32_t)i;
            tok->info[i].byte = (int16_t)b;
        }
        if (p->type == XC_SPM_PIECE_USER_DEFINED) {
            tok->ud_first[(unsigned char)p->text[0]] = 1;
            size_t j = 0;
            while (j < tok->n_ud_lens && tok->ud_lens[j] > p->len) {
                j++;
            }
            if (j == tok->n_ud_lens || tok->ud_lens[j] != p->len) {
                if (tok->n_ud_lens == sizeof tok->ud_lens / sizeof tok->ud_lens[0]) {
                    return xc_errf(XC_ERR_UNSUPPORTED,
                                   "more than 64 distinct user-defined piece lengths");
                }
                memmove(&tok->ud_lens[j + 1], &tok->ud_lens[j],
                        (tok->n_ud_lens - j) * sizeof tok->ud_lens[0]);
                tok->ud_lens[j] = p->len;
                tok->n_ud_lens++;
            }
        }
    }
    if (unk < 0) {
        return xc_errf(XC_ERR_PROTO, "SentencePiece model has no unknown (<unk>) piece");
    }
    if (m->byte_fallback && n_bytes != 256) {
        return xc_errf(XC_ERR_PROTO,
                       "byte_fallback is on but the model has %zu of the 256 byte pieces", n_bytes);
    }
    for (size_t i = 0; i < n; i++) {
        const xc_spm_piece *p = &m->pieces[i];
        int32_t r = map_find(&tok->reserved, m, p->text, p->len,
                             hash_bytes((const unsigned char *)p->text, p->len));
        tok->info[i].canon = r >= 0 ? r : (int32_t)i;
    }
    // Special ids: the trainer spec's, when that piece has the expected type.
    xc_tokenizer_special *s = &tok->special;
    s->unk = unk;
    int32_t ids[3] = {m->bos_id, m->eos_id, m->pad_id};
    int32_t *dst[3] = {&s->bos, &s->eos, &s->pad};
    for (int k = 0; k < 3; k++) {
        bool ok =
            ids[k] >= 0 && (size_t)ids[k] < n && m->pieces[ids[k]].type == XC_SPM_PIECE_CONTROL;
        *dst[k] = ok ? ids[k] : -1;
    }
    s->im_end = xc_tokenizer_piece_to_id(tok, "[UNUSED_TOKEN_145]", 18);
    s->im_start = xc_tokenizer_piece_to_id(tok, "[UNUSED_TOKEN_146]", 18);
    return XC_OK;
}

xc_status xc_tokenizer_create(const void *model, size_t len, xc_tokenizer **out) {
    xc_tokenizer *tok = xc_calloc(1, sizeof *tok);
    if (tok == NULL) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for a tokenizer");
    }
    tok->max_input = XC_TOKENIZER_DEFAULT_MAX_INPUT;
    xc_status st;
    XC_TRY_GOTO(xc_spm_wire_decode_model(model, len, &tok->m), st, fail);
    const xc_spm_model *m = &tok->m;
    if (!m->has_trainer_spec) {
        st = xc_errf(XC_ERR_PROTO, "SentencePiece model has no trainer_spec (truncated file?)");
        goto fail;
    }
    if (m->model_type != XC_SPM_MODEL_BPE) {
        st = xc_errf(XC_ERR_UNSUPPORTED,
                     "SentencePiece model type %d (%s) is not supported; only BPE (2) is",
                     m->model_type, m->model_type == XC_SPM_MODEL_UNIGRAM ? "unigram" : "other");
        goto fail;
    }
    if (m->precompiled_charsmap_len) {
        st = xc_errf(XC_ERR_UNSUPPORTED,
                     "normalizer '%s' has a precompiled charsmap (%zu bytes); only identity "
                     "normalization is supported",
                     m->normalizer_name, m->precompiled_charsmap_len);
        goto fail;
    }
    if (m->denormalizer_charsmap_len) {
        st = xc_errf(XC_ERR_UNSUPPORTED, "a denormalizer charsmap (%zu bytes) is not supported",
                     m->denormalizer_charsmap_len);
        goto fail;
    }
    if (m->treat_whitespace_as_suffix) {
        st = xc_errf(XC_ERR_UNSUPPORTED, "treat_whitespace_as_suffix models are not supported");
        goto fail;
    }
    XC_TRY_GOTO(tok_index(tok), st, fail);
    *out = tok;
    return XC_OK;
fail:
    xc_tokenizer_destroy(tok);
    return st;
}

xc_status xc_tokenizer_load(const char *path, xc_tokenizer **out) {
    xc_mmap mm = {0};
    xc_status st = xc_mmap_open(path, &mm);
    if (st != XC_OK) {
        return xc_errf(st, "tokenizer model %s: %s", path, xc_err_last());
    }
    if (mm.size > MAX_MODEL_FILE) {
        xc_mmap_close(&mm);
        return xc_errf(XC_ERR_ARG, "tokenizer model %s is larger than 1 GiB", path);
    }
    st = xc_tokenizer_create(mm.data, mm.size, out);
    xc_mmap_close(&mm);
    if (st != XC_OK) {
        return xc_errf(st, "tokenizer model %s: %s", path, xc_err_last());
    }
    return XC_OK;
}

void xc_tokenizer_destroy(xc_tokenizer *tok) {
    if (tok == NULL) {
        return;
    }
    map_fini(&tok->normal);
    map_fini(&tok->reserved);
    xc_free(tok->info);
    xc_spm_wire_model_fini(&tok->m);
    xc_free(tok);
}

void xc_tokenizer_set_max_input(xc_tokenizer *tok, size_t max_bytes) {
    tok->max_input = max_bytes;
}

size_t xc_tokenizer_vocab_size(const xc_tokenizer *tok) {
    return tok->m.n_pieces;
}

const xc_tokenizer_special *xc_tokenizer_special_ids(const xc_tokenizer *tok) {
    return &tok->special;
}

int32_t xc_tokenizer_piece_to_id(const xc_tokenizer *tok, const char *piece, size_t len) {
    uint32_t h = hash_bytes((const unsigned char *)piece, len);
    int32_t id = map_find(&tok->reserved, &tok->m, piece, len, h);
    return id >= 0 ? id : map_find(&tok->normal, &tok->m, piece, len, h);
}

const char *xc_tokenizer_id_to_piece(const xc_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= tok->m.n_pieces) {
        return NULL;
    }
    if (len) {
        *len = tok->m.pieces[id].len;
    }
    return tok->m.pieces[id].text;
}

/* ---- id lists and text buffers ---- */

xc_status xc_tokenizer_tokens_push(xc_tokens *t, int32_t id) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        int32_t *p = xc_realloc(t->ids, cap * sizeof *p);
        if (p == NULL) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for %zu token ids", cap);
        }
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return XC_OK;
}

void xc_tokenizer_tokens_fini(xc_tokens *t) {
    if (t == NULL) {
        return;
    }
    xc_free(t->ids);
    memset(t, 0, sizeof *t);
}

typedef struct strbuf {
    char *p;
    size_t len, cap;
} strbuf;

static xc_status sb_reserve(strbuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) {
        return XC_OK;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        cap *= 2;
    }
    char *p = xc_realloc(b->p, cap);
    if (p == NULL) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for %zu bytes of decoded text", cap);
    }
    b->p = p;
    b->cap = cap;
    return XC_OK;
}

static xc_status sb_append(strbuf *b, const char *s, size_t n) {
    XC_TRY(sb_reserve(b, n));
    if (n) {
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
    return XC_OK;
}

/* ---- encode ---- */

/* Longest user-defined piece that is a prefix of s (n bytes), or 0. */
static size_t ud_match(const xc_tokenizer *tok, const char *s, size_t n, int32_t *id) {
    if (!tok->ud_first[(unsigned char)s[0]]) {
        return 0;
    }
    for (size_t k = 0; k < tok->n_ud_lens; k++) {
        size_t l = tok->ud_lens[k];
        if (l > n) {
            continue;
        }
        int32_t i = map_find(&tok->normal, &tok->m, s, l, hash_bytes((const unsigned char *)s, l));
        if (i >= 0 && tok->info[i].type == XC_SPM_PIECE_USER_DEFINED) {
            *id = i;
            return l;
        }
    }
    return 0;
}

/* Whether any of lit[i, i + n) is set (lit NULL: none). */
static bool any_lit(const uint8_t *lit, size_t i, size_t n) {
    for (size_t k = 0; lit && k < n; k++) {
        if (lit[i + k]) {
            return true;
        }
    }
    return false;
}

/* The library's Normalizer::Normalize with an empty charsmap. out has room for 3 * n + 6.
 * lit_in (per input byte, NULL = none): literal text where no user-defined piece matches;
 * lit_out (per output byte, written when lit_in is given) carries the flag through. */
static size_t normalize(const xc_tokenizer *tok, const char *in, size_t n, char *out,
                        const uint8_t *lit_in, uint8_t *lit_out) {
    const xc_spm_model *m = &tok->m;
    size_t o = 0, i = 0;
    int32_t ud;
    // One normalized unit at in[i]: a user-defined piece, a valid character, or U+FFFD for one
    // malformed byte. *adv gets the input bytes consumed.
#define UNIT(ptr, len, adv)                                                                        \
    do {                                                                                           \
        size_t l_ = ud_match(tok, in + i, n - i, &ud);                                             \
        if (l_ && any_lit(lit_in, i, l_)) {                                                        \
            l_ = 0;                                                                                \
        }                                                                                          \
        if (l_) {                                                                                  \
            (ptr) = in + i;                                                                        \
            (len) = l_;                                                                            \
            (adv) = l_;                                                                            \
        } else if (((len) = utf8_valid_len((const unsigned char *)in + i, n - i)) != 0) {          \
            (ptr) = in + i;                                                                        \
            (adv) = (len);                                                                         \
        } else {                                                                                   \
            (ptr) = REPLACEMENT;                                                                   \
            (len) = 3;                                                                             \
            (adv) = 1;                                                                             \
        }                                                                                          \
    } while (0)
    const char *u;
    size_t ulen, adv;
    if (m->remove_extra_whitespaces) {
        while (i < n) {
            UNIT(u, ulen, adv);
            if (!(ulen == 1 && u[0] == ' ')) {
                break;
            }
            i += adv;
        }
    }
    if (i == n) {
        return 0;
    }
    if (m->add_dummy_prefix) {
        if (m->escape_whitespaces) {
            memcpy(out + o, SPACE_SYMBOL, SPACE_SYMBOL_LEN);
            o += SPACE_SYMBOL_LEN;
        } else {
            out[o++] = ' ';
        }
        if (lit_in) {
            memset(lit_out, 0, o);
        }
    }
    bool prev_space = m->remove_extra_whitespaces;
    while (i < n) {
        UNIT(u, ulen, adv);
        while (prev_space && ulen > 0 && u[0] == ' ') {
            u++;
            ulen--;
        }
        if (ulen > 0) {
            size_t o0 = o;
            for (size_t k = 0; k < ulen; k++) {
                if (u[k] == ' ' && m->escape_whitespaces) {
                    memcpy(out + o, SPACE_SYMBOL, SPACE_SYMBOL_LEN);
                    o += SPACE_SYMBOL_LEN;
                } else {
                    out[o++] = u[k];
                }
            }
            if (lit_in) {
                memset(lit_out + o0, lit_in[i] != 0, o - o0);
            }
            prev_space = u[ulen - 1] == ' ';
        }
        i += adv;
        if (!m->remove_extra_whitespaces) {
            prev_space = false;
        }
    }
#undef UNIT
    if (m->remove_extra_whitespaces) {
        const char *sp = m->escape_whitespaces ? SPACE_SYMBOL : " ";
        size_t sl = m->escape_whitespaces ? SPACE_SYMBOL_LEN : 1;
        while (o >= sl && memcmp(out + o - sl, sp, sl) == 0) {
            o -= sl;
        }
    }
    return o;
}

typedef struct symbol {
    int32_t prev, next; /* neighbours in the list, -1 at the ends */
    uint32_t start;     /* byte offset in the normalized text */
    uint32_t len;       /* 0 once merged into its left neighbour */
    int32_t id;         /* id of the text when it is a normal piece, else -1 */
    int32_t freeze;     /* user-defined piece: never merged */
} symbol;

typedef struct pair {
    float score;
    int32_t left, right;
    uint32_t size; /* byte length of the merged text when queued (stale check) */
    int32_t id;    /* the merged piece */
} pair;

/* The library's priority: higher score first, then the leftmost pair. */
static bool pair_before(const pair *a, const pair *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct heap {
    pair *v;
    size_t n, cap;
} heap;

static xc_status heap_push(heap *h, pair p) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        pair *v = xc_realloc(h->v, cap * sizeof *v);
        if (v == NULL) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for the BPE merge queue");
        }
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_before(&p, &h->v[parent])) {
            break;
        }
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = p;
    return XC_OK;
}

static pair heap_pop(heap *h) {
    pair top = h->v[0];
    pair last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) {
            break;
        }
        if (c + 1 < h->n && pair_before(&h->v[c + 1], &h->v[c])) {
            c++;
        }
        if (!pair_before(&h->v[c], &last)) {
            break;
        }
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) {
        h->v[i] = last;
    }
    return top;
}

/* rev_merge of the library: for pieces of type UNUSED, the last split (left length) queued for
 * that text, so that the final symbols can be split back into usable pieces. */
typedef struct rev_map {
    uint32_t *start, *len, *left; /* (cap) key = text at start/len; len 0 = empty slot */
    size_t n, cap;
} rev_map;

typedef struct encoder {
    const xc_tokenizer *tok;
    const char *norm;
    const uint8_t *lit; /* (normalized bytes) literal text: never a user-defined piece; NULL */
    symbol *sym;
    heap q;
    rev_map rev;
    bool prev_unk; /* the last emitted id was <unk> (runs of them are merged into one) */
} encoder;

static size_t rev_slot(const rev_map *r, const char *norm, const char *s, uint32_t n, uint32_t h) {
    size_t mask = r->cap - 1;
    size_t i = h & mask;
    while (r->len[i] && !(r->len[i] == n && memcmp(norm + r->start[i], s, n) == 0)) {
        i = (i + 1) & mask;
    }
    return i;
}

static xc_status rev_put(encoder *e, uint32_t start, uint32_t n, uint32_t left) {
    rev_map *r = &e->rev;
    if (2 * (r->n + 1) > r->cap) {
        rev_map g = {0};
        g.cap = r->cap ? r->cap * 2 : 64;
        g.start = xc_malloc(g.cap * sizeof *g.start);
        g.len = xc_calloc(g.cap, sizeof *g.len);
        g.left = xc_malloc(g.cap * sizeof *g.left);
        if (g.start == NULL || g.len == NULL || g.left == NULL) {
            xc_free(g.start);
            xc_free(g.len);
            xc_free(g.left);
            return xc_errf(XC_ERR_NOMEM, "out of memory for the BPE resegmentation map");
        }
        for (size_t i = 0; i < r->cap; i++) {
            if (r->len[i]) {
                const char *s = e->norm + r->start[i];
                size_t j = rev_slot(&g, e->norm, s, r->len[i],
                                    hash_bytes((const unsigned char *)s, r->len[i]));
                g.start[j] = r->start[i];
                g.len[j] = r->len[i];
                g.left[j] = r->left[i];
            }
        }
        g.n = r->n;
        xc_free(r->start);
        xc_free(r->len);
        xc_free(r->left);
        *r = g;
    }
    const char *s = e->norm + start;
    size_t j = rev_slot(r, e->norm, s, n, hash_bytes((const unsigned char *)s, n));
    if (!r->len[j]) {
        r->n++;
    }
    r->start[j] = start;
    r->len[j] = n;
    r->left[j] = left;
    return XC_OK;
}

/* MaybeAddNewSymbolPair: queue the merge of symbols l and r if their text is a piece. */
static xc_status maybe_add_pair(encoder *e, int32_t l, int32_t r) {
    if (l < 0 || r < 0 || e->sym[l].freeze || e->sym[r].freeze) {
        return XC_OK;
    }
    const xc_tokenizer *tok = e->tok;
    const char *s = e->norm + e->sym[l].start;
    uint32_t n = e->sym[l].len + e->sym[r].len;
    if (n > tok->normal.max_len) {
        return XC_OK;
    }
    int32_t id = map_find(&tok->normal, &tok->m, s, n, hash_bytes((const unsigned char *)s, n));
    if (id < 0 ||
        (tok->info[id].type == XC_SPM_PIECE_USER_DEFINED && any_lit(e->lit, e->sym[l].start, n))) {
        return XC_OK;
    }
    pair p = {tok->m.pieces[id].score, l, r, n, id};
    XC_TRY(heap_push(&e->q, p));
    if (tok->info[id].type == XC_SPM_PIECE_UNUSED) {
        XC_TRY(rev_put(e, e->sym[l].start, n, e->sym[l].len));
    }
    return XC_OK;
}

/* Emits the ids of one final symbol's text: resegmentation of UNUSED pieces, then byte
 * fallback for unknown text (SentencePieceProcessor::Encode). */
static xc_status emit(encoder *e, uint32_t start, uint32_t n, int32_t id, xc_tokens *out) {
    const xc_tokenizer *tok = e->tok;
    const char *s = e->norm + start;
    if (id < 0) {
        id = xc_tokenizer_piece_to_id(tok, s, n);
    } else {
        id = tok->info[id].canon;
    }
    if (id >= 0 && tok->info[id].type == XC_SPM_PIECE_UNUSED && e->rev.cap) {
        size_t j = rev_slot(&e->rev, e->norm, s, n, hash_bytes((const unsigned char *)s, n));
        if (e->rev.len[j]) {
            uint32_t left = e->rev.left[j];
            XC_TRY(emit(e, start, left, -1, out));
            return emit(e, start + left, n - left, -1, out);
        }
    }
    if (id < 0) {
        id = tok->special.unk;
    }
    bool unk = tok->info[id].type == XC_SPM_PIECE_UNKNOWN;
    bool prev_unk = e->prev_unk;
    e->prev_unk = unk;
    if (unk && tok->m.byte_fallback) {
        for (uint32_t k = 0; k < n; k++) {
            XC_TRY(xc_tokenizer_tokens_push(out, tok->byte_id[(unsigned char)s[k]]));
        }
        return XC_OK;
    }
    if (unk && prev_unk) {
        return XC_OK; // the library merges a run of unknown pieces into one
    }
    return xc_tokenizer_tokens_push(out, id);
}

static xc_status bpe(encoder *e, size_t n_norm, xc_tokens *out) {
    const xc_tokenizer *tok = e->tok;
    const char *norm = e->norm;
    // Initial symbols: user-defined pieces (frozen) or single characters.
    int32_t n_sym = 0;
    for (size_t i = 0; i < n_norm;) {
        symbol *s = &e->sym[n_sym];
        int32_t ud = -1;
        size_t l = ud_match(tok, norm + i, n_norm - i, &ud);
        if (l && any_lit(e->lit, i, l)) {
            l = 0;
        }
        s->freeze = l > 0;
        if (!l) {
            l = utf8_char_len((unsigned char)norm[i]);
            if (l > n_norm - i) {
                l = n_norm - i;
            }
            ud = map_find(&tok->normal, &tok->m, norm + i, l,
                          hash_bytes((const unsigned char *)norm + i, l));
        }
        s->start = (uint32_t)i;
        s->len = (uint32_t)l;
        s->id = ud;
        s->prev = n_sym - 1;
        i += l;
        s->next = i < n_norm ? n_sym + 1 : -1;
        n_sym++;
    }
    for (int32_t i = 1; i < n_sym; i++) {
        XC_TRY(maybe_add_pair(e, i - 1, i));
    }
    symbol *sym = e->sym;
    while (e->q.n) {
        pair top = heap_pop(&e->q);
        symbol *l = &sym[top.left], *r = &sym[top.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.size) {
            continue; // stale: one side was merged since this pair was queued
        }
        l->len += r->len;
        l->id = top.id;
        l->next = r->next;
        if (r->next >= 0) {
            sym[r->next].prev = top.left;
        }
        r->len = 0;
        XC_TRY(maybe_add_pair(e, l->prev, top.left));
        XC_TRY(maybe_add_pair(e, top.left, l->next));
    }
    for (int32_t i = n_sym ? 0 : -1; i >= 0; i = sym[i].next) {
        XC_TRY(emit(e, sym[i].start, sym[i].len, sym[i].id, out));
    }
    return XC_OK;
}

xc_status xc_tokenizer_encode(const xc_tokenizer *tok, const char *text, size_t len,
                              xc_tokens *out) {
    return xc_tokenizer_encode_literal(tok, text, len, NULL, out);
}

xc_status xc_tokenizer_encode_literal(const xc_tokenizer *tok, const char *text, size_t len,
                                      const uint8_t *literal, xc_tokens *out) {
    if (len > tok->max_input) {
        return xc_errf(XC_ERR_ARG, "text of %zu bytes is longer than the tokenizer limit of %zu",
                       len, tok->max_input);
    }
    if (len == 0) {
        return XC_OK;
    }
    if (text == NULL) {
        return xc_errf(XC_ERR_ARG, "text is NULL");
    }
    if (len > (size_t)INT32_MAX / 4) {
        return xc_errf(XC_ERR_ARG, "text of %zu bytes is too long to tokenize", len);
    }
    size_t n0 = out->n;
    size_t cap = 3 * len + 6;
    encoder e = {.tok = tok};
    char *norm = xc_malloc(cap);
    uint8_t *lit = literal ? xc_malloc(cap) : NULL;
    e.sym = xc_malloc(cap * sizeof *e.sym);
    xc_status st = XC_OK;
    if (norm == NULL || e.sym == NULL || (literal && !lit)) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory to tokenize %zu bytes", len);
        goto out;
    }
    e.norm = norm;
    size_t n_norm = normalize(tok, text, len, norm, literal, lit);
    e.lit = lit;
    st = bpe(&e, n_norm, out);
out:
    if (st != XC_OK) {
        out->n = n0;
    }
    xc_free(norm);
    xc_free(lit);
    xc_free(e.sym);
    xc_free(e.q.v);
    xc_free(e.rev.start);
    xc_free(e.rev.len);
    xc_free(e.rev.left);
    return st;
}

/* ---- decode ---- */

/* Appends the text of a run of byte pieces: valid characters as they are, U+FFFD for each
 * malformed byte. With final = false, a trailing incomplete character is left in place and its
 * length returned (streaming); with final = true everything is consumed and 0 returned. */
static xc_status flush_bytes(strbuf *b, const unsigned char *p, size_t n, bool final,
                             size_t *left) {
    size_t i = 0;
    while (i < n) {
        size_t l = utf8_valid_len(p + i, n - i);
        if (l) {
            XC_TRY(sb_append(b, (const char *)p + i, l));
            i += l;
        } else if (!final && utf8_incomplete(p + i, n - i)) {
            break;
        } else {
            XC_TRY(sb_append(b, REPLACEMENT, 3));
            i++;
        }
    }
    *left = n - i;
    return XC_OK;
}

/* Appends the text of one non-byte, non-control piece. */
static xc_status piece_text(const xc_tokenizer *tok, int32_t id, bool first, strbuf *b,
                            bool *consumed) {
    const xc_spm_model *m = &tok->m;
    if (tok->info[id].type == XC_SPM_PIECE_UNKNOWN) {
        return sb_append(b, m->unk_surface, m->unk_surface_len);
    }
    const char *s = m->pieces[id].text;
    size_t n = m->pieces[id].len;
    if (first && (m->add_dummy_prefix || m->remove_extra_whitespaces) && n >= SPACE_SYMBOL_LEN &&
        memcmp(s, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0) {
        s += SPACE_SYMBOL_LEN;
        n -= SPACE_SYMBOL_LEN;
        *consumed = true;
    }
    XC_TRY(sb_reserve(b, n));
    for (size_t i = 0; i < n;) {
        if (i + SPACE_SYMBOL_LEN <= n && memcmp(s + i, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0) {
            b->p[b->len++] = ' ';
            i += SPACE_SYMBOL_LEN;
        } else {
            b->p[b->len++] = s[i++];
        }
    }
    b->p[b->len] = '\0';
    return XC_OK;
}

/* One decode step shared by the full and the streaming decoder. pend/n_pend hold the current
 * byte run (at most 4 bytes are kept between calls). *first is the library's is_bos_ws: true
 * until a piece yields text (or, without remove_extra_whitespaces, loses its leading U+2581). */
static xc_status decode_step(const xc_tokenizer *tok, int32_t id, bool *first, unsigned char *pend,
                             int *n_pend, strbuf *b) {
    int32_t canon = tok->info[id].canon;
    const piece_info *pi = &tok->info[canon];
    size_t left;
    if (pi->type == XC_SPM_PIECE_BYTE) {
        *first = false; // a byte run always yields text
        pend[(*n_pend)++] = (unsigned char)pi->byte;
        XC_TRY(flush_bytes(b, pend, (size_t)*n_pend, false, &left));
        memmove(pend, pend + (*n_pend - (int)left), left);
        *n_pend = (int)left;
        return XC_OK;
    }
    // Any other piece, control ones included, ends a byte run.
    XC_TRY(flush_bytes(b, pend, (size_t)*n_pend, true, &left));
    *n_pend = 0;
    if (pi->type == XC_SPM_PIECE_CONTROL) {
        return XC_OK;
    }
    size_t before = b->len;
    bool consumed = false;
    XC_TRY(piece_text(tok, canon, *first, b, &consumed));
    if (b->len > before || (consumed && !tok->m.remove_extra_whitespaces)) {
        *first = false;
    }
    return XC_OK;
}

xc_status xc_tokenizer_decode(const xc_tokenizer *tok, const int32_t *ids, size_t n, char **out,
                              size_t *out_len) {
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= tok->m.n_pieces) {
            return xc_errf(XC_ERR_ARG,
                           "token id %d at position %zu is outside the vocabulary [0, %zu)", ids[i],
                           i, tok->m.n_pieces);
        }
    }
    strbuf b = {0};
    bool first = true;
    unsigned char pend[4];
    int n_pend = 0;
    size_t left;
    xc_status st;
    XC_TRY_GOTO(sb_reserve(&b, 16), st, fail);
    b.p[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        XC_TRY_GOTO(decode_step(tok, ids[i], &first, pend, &n_pend, &b), st, fail);
    }
    XC_TRY_GOTO(flush_bytes(&b, pend, (size_t)n_pend, true, &left), st, fail);
    *out = b.p;
    *out_len = b.len;
    return XC_OK;
fail:
    xc_free(b.p);
    return st;
}

/* ---- incremental detokenizer ---- */

void xc_tokenizer_stream_init(xc_tokenizer_stream *s, const xc_tokenizer *tok) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->first = true;
}

static void stream_take(xc_tokenizer_stream *s, strbuf *b, const char **text, size_t *len) {
    s->buf = b->p;
    s->cap = b->cap;
    s->len = b->len;
    *text = s->buf ? s->buf : "";
    *len = s->len;
}

xc_status xc_tokenizer_stream_feed(xc_tokenizer_stream *s, int32_t id, const char **text,
                                   size_t *len) {
    if (id < 0 || (size_t)id >= s->tok->m.n_pieces) {
        return xc_errf(XC_ERR_ARG, "token id %d is outside the vocabulary [0, %zu)", id,
                       s->tok->m.n_pieces);
    }
    strbuf b = {s->buf, 0, s->cap};
    XC_TRY(sb_reserve(&b, 8));
    b.p[0] = '\0';
    xc_status st = decode_step(s->tok, id, &s->first, s->pend, &s->n_pend, &b);
    stream_take(s, &b, text, len);
    return st;
}

xc_status xc_tokenizer_stream_finish(xc_tokenizer_stream *s, const char **text, size_t *len) {
    strbuf b = {s->buf, 0, s->cap};
    size_t left;
    XC_TRY(sb_reserve(&b, 16));
    b.p[0] = '\0';
    xc_status st = flush_bytes(&b, s->pend, (size_t)s->n_pend, true, &left);
    s->n_pend = 0;
    s->first = true;
    stream_take(s, &b, text, len);
    return st;
}

void xc_tokenizer_stream_fini(xc_tokenizer_stream *s) {
    if (s == NULL) {
        return;
    }
    xc_free(s->buf);
    s->buf = NULL;
    s->len = s->cap = 0;
}
