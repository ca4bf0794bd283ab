/* SentencePiece BPE tokenizer read straight from tokenizer.model: encode (identity normalizer,
 * user-defined pieces, BPE merges by score, byte fallback), decode, and an incremental
 * detokenizer for streaming. Matches the SentencePiece library (checked against 0.1.97). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

typedef struct xc_tokenizer xc_tokenizer;

/* A growable list of token ids (caller-owned struct; zero-initialise, then _fini). */
typedef struct xc_tokens {
    int32_t *ids; /* (n) */
    size_t n;
    size_t cap;
} xc_tokens;

/* Special ids, all read from the model file; -1 where the model has none. */
typedef struct xc_tokenizer_special {
    int32_t unk;      /* the UNKNOWN piece */
    int32_t bos;      /* trainer_spec.bos_id when that piece is a CONTROL piece */
    int32_t eos;      /* trainer_spec.eos_id, likewise */
    int32_t pad;      /* trainer_spec.pad_id, likewise */
    int32_t im_end;   /* piece "[UNUSED_TOKEN_145]" (plays <|im_end|>) */
    int32_t im_start; /* piece "[UNUSED_TOKEN_146]" (plays <|im_start|>) */
} xc_tokenizer_special;

/* Default for xc_tokenizer_set_max_input: 1 MiB of text per encode call. */
#define XC_TOKENIZER_DEFAULT_MAX_INPUT ((size_t)1 << 20)

/* Builds a tokenizer from the bytes of a model file (copied; the buffer may be freed after).
 * XC_ERR_PROTO for a malformed model (empty or duplicate piece, no unknown piece, bad byte
 * pieces), XC_ERR_UNSUPPORTED for a valid model this tokenizer does not handle (not BPE,
 * a non-identity normalizer with a precompiled charsmap, whitespace as suffix), XC_ERR_NOMEM. */
xc_status xc_tokenizer_create(const void *model, size_t len, xc_tokenizer **out);

/* Reads and builds from a file path. XC_ERR_IO if it cannot be read, else as _create. */
xc_status xc_tokenizer_load(const char *path, xc_tokenizer **out);

/* Frees the tokenizer. NULL is a no-op. */
void xc_tokenizer_destroy(xc_tokenizer *tok);

/* Sets the longest text (bytes) that encode accepts; longer input is refused with XC_ERR_ARG. */
void xc_tokenizer_set_max_input(xc_tokenizer *tok, size_t max_bytes);

/* Number of pieces (the embedding rows a model needs). */
size_t xc_tokenizer_vocab_size(const xc_tokenizer *tok);

/* The special ids; a view valid for the tokenizer's lifetime. */
const xc_tokenizer_special *xc_tokenizer_special_ids(const xc_tokenizer *tok);

/* Id of a piece (exact bytes), or -1 if no piece has that text. Control/byte/unknown pieces
 * take precedence over normal ones with the same text, as in the library. */
int32_t xc_tokenizer_piece_to_id(const xc_tokenizer *tok, const char *piece, size_t len);

/* Text of piece id (a view, NUL-terminated; *len gets its length, which may include NULs), or
 * NULL if id is out of range. */
const char *xc_tokenizer_id_to_piece(const xc_tokenizer *tok, int32_t id, size_t *len);

/* Appends the ids of text (len bytes, any bytes: invalid UTF-8 is handled as the library does)
 * to out. No BOS/EOS is added. XC_ERR_ARG if len exceeds the configured maximum, XC_ERR_NOMEM.
 * Thread-safe: several threads may encode with one tokenizer. On failure out keeps its length. */
xc_status xc_tokenizer_encode(const xc_tokenizer *tok, const char *text, size_t len,
                              xc_tokens *out);

/* xc_tokenizer_encode where literal[i] != 0 marks byte i as literal text (a chat message's
 * content): no user-defined piece (the [UNUSED_TOKEN_k] turn markers) is matched over or merged
 * into from literal bytes, so that text is encoded as plain text, as if those pieces were not
 * registered (CONTROL pieces such as <s> and </s> never come from text anyway). literal NULL =
 * xc_tokenizer_encode. */
xc_status xc_tokenizer_encode_literal(const xc_tokenizer *tok, const char *text, size_t len,
                                      const uint8_t *literal, xc_tokens *out);

/* Decodes ids into a new xc_malloc'd, NUL-terminated string (*out, *out_len bytes; free with
 * xc_free): control pieces vanish, U+2581 becomes a space, the first piece loses its leading
 * space when the normalizer adds a dummy prefix or strips whitespace, runs of byte pieces are
 * assembled into UTF-8 with U+FFFD for each invalid byte, <unk> becomes the model's unk surface.
 * XC_ERR_ARG for an id outside [0, vocab), XC_ERR_NOMEM. */
xc_status xc_tokenizer_decode(const xc_tokenizer *tok, const int32_t *ids, size_t n, char **out,
                              size_t *out_len);

/* Appends id to the list. XC_ERR_NOMEM. */
xc_status xc_tokenizer_tokens_push(xc_tokens *t, int32_t id);

/* Frees the list's memory and zeroes it. NULL is a no-op. */
void xc_tokenizer_tokens_fini(xc_tokens *t);

/* ---- incremental detokenizer ---- */

/* Streaming decode: feed ids one at a time and get only complete UTF-8 text; the
 * concatenation of every feed's text and the finish text equals xc_tokenizer_decode of all
 * ids. Caller-owned struct; borrows tok, which must outlive it. */
typedef struct xc_tokenizer_stream {
    const xc_tokenizer *tok;
    bool first;            /* no non-control piece seen yet (dummy-prefix removal) */
    unsigned char pend[4]; /* trailing bytes of a byte-piece run that may still form a char */
    int n_pend;
    char *buf; /* (len) text returned by the last call */
    size_t len;
    size_t cap;
} xc_tokenizer_stream;

/* Starts a stream over tok (allocates nothing). */
void xc_tokenizer_stream_init(xc_tokenizer_stream *s, const xc_tokenizer *tok);

/* Feeds one id; text and len receive the newly completed text (a view valid until the next call;
 * possibly empty, never a partial character). XC_ERR_ARG for an id out of range (the stream is
 * unchanged), XC_ERR_NOMEM. */
xc_status xc_tokenizer_stream_feed(xc_tokenizer_stream *s, int32_t id, const char **text,
                                   size_t *len);

/* Ends the stream: bytes still pending (an incomplete character) come out as U+FFFD each, as
 * the full decode would give them. The stream may then be fed again as a new stream. */
xc_status xc_tokenizer_stream_finish(xc_tokenizer_stream *s, const char **text, size_t *len);

/* Frees the stream's buffer. NULL is a no-op. */
void xc_tokenizer_stream_fini(xc_tokenizer_stream *s);
