/* config.json of InternLM-XComposer2 (7b and VL variants) and the vision facts derived from
 * tensor shapes. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xc_status.h"

typedef struct xc_model_config {
    /* decoder (config.json) */
    int hidden_size;             /* 4096 */
    int intermediate_size;       /* 14336 */
    int num_hidden_layers;       /* 32 */
    int num_attention_heads;     /* 32 */
    int num_key_value_heads;     /* 8 */
    int head_dim;                /* hidden_size / num_attention_heads */
    int vocab_size;              /* 92544 */
    float rms_norm_eps;          /* 1e-5 */
    float rope_theta;            /* 1e6 */
    char rope_scaling_type[16];  /* "" (null), "dynamic" or "linear" */
    float rope_scaling_factor;   /* 1.0 */
    int max_position_embeddings; /* 32768 */
    int max_length;              /* 4096: prompt limit used by the original wrappers */
    int img_size;                /* 224 (7b) or 490 (VL); 0 if absent */
    int bos_token_id, eos_token_id, pad_token_id;
    bool tie_word_embeddings;    /* must be false for XComposer2 */
    bool bias;                   /* must be false */
    char architecture[64];       /* architectures[0] */
    char model_type[64];
} xc_model_config;

/* Parses DIR/config.json (or a file path ending in .json). Missing required keys, wrong types and
 * impossible values (heads not dividing hidden, ...) are XC_ERR_PROTO naming the key. */
xc_status xc_model_config_load(const char *path, xc_model_config *out);

/* Parses config.json text (len bytes, need not be NUL-terminated). */
xc_status xc_model_config_parse(const char *json, size_t len, xc_model_config *out);
