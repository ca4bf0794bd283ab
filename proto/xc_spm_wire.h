/* Reads a SentencePiece model file (tokenizer.model) into plain structs, so that no generated
 * protobuf-c type leaks out of proto/. Only the fields the tokenizer needs are kept. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

/* Piece types; the numbers are SentencePiece's (ModelProto.SentencePiece.Type). */
typedef enum xc_spm_piece_type {
    XC_SPM_PIECE_NORMAL = 1,
    XC_SPM_PIECE_UNKNOWN = 2,
    XC_SPM_PIECE_CONTROL = 3,
    XC_SPM_PIECE_USER_DEFINED = 4,
    XC_SPM_PIECE_UNUSED = 5,
    XC_SPM_PIECE_BYTE = 6,
} xc_spm_piece_type;

/* Model algorithms (TrainerSpec.ModelType). */
typedef enum xc_spm_model_type {
    XC_SPM_MODEL_UNIGRAM = 1,
    XC_SPM_MODEL_BPE = 2,
    XC_SPM_MODEL_WORD = 3,
    XC_SPM_MODEL_CHAR = 4,
} xc_spm_model_type;

typedef struct xc_spm_piece {
    const char *text; /* (len) bytes, NUL-terminated copy; may contain NUL itself */
    size_t len;
    float score;
    int type; /* xc_spm_piece_type, or another number as stored in the file */
} xc_spm_piece;

typedef struct xc_spm_model {
    xc_spm_piece *pieces; /* (n_pieces); piece id = index */
    size_t n_pieces;
    /* trainer_spec */
    bool has_trainer_spec; /* false: every trainer field below is its default */
    int model_type;        /* xc_spm_model_type */
    int32_t vocab_size;
    bool treat_whitespace_as_suffix;
    bool byte_fallback;
    int32_t unk_id, bos_id, eos_id, pad_id; /* as stored (defaults 0, 1, 2, -1) */
    char *unk_surface;                      /* (unk_surface_len) bytes, NUL-terminated */
    size_t unk_surface_len;
    /* normalizer_spec */
    char *normalizer_name;           /* "" when absent */
    size_t precompiled_charsmap_len; /* 0 = identity mapping */
    bool add_dummy_prefix;
    bool remove_extra_whitespaces;
    bool escape_whitespaces;
    /* denormalizer_spec */
    size_t denormalizer_charsmap_len; /* 0 = none */
    char *text_pool;                  /* owns every piece text */
} xc_spm_model;

/* Parses a serialized ModelProto. out is written only on XC_OK and must be released with
 * xc_spm_wire_model_fini. XC_ERR_PROTO for bytes that are not a model (with the reason),
 * XC_ERR_ARG for len above 1 GiB, XC_ERR_NOMEM. Semantic checks (types, duplicates) are the
 * tokenizer's. */
xc_status xc_spm_wire_decode_model(const uint8_t *buf, size_t len, xc_spm_model *out);

/* Frees what decode allocated and zeroes the struct; a zeroed struct is a no-op. */
void xc_spm_wire_model_fini(xc_spm_model *m);

/* Serializes m as a ModelProto (pieces with text, score and type; the trainer_spec fields
 * model_type, vocab_size, treat_whitespace_as_suffix, byte_fallback, unk/bos/eos/pad ids; the
 * normalizer_spec name, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces; no
 * charsmaps). *out (xc_malloc'd, *len bytes) decodes back to the same fields. XC_ERR_ARG for no
 * pieces, XC_ERR_NOMEM. */
xc_status xc_spm_wire_encode_model(const xc_spm_model *m, uint8_t **out, size_t *len);
