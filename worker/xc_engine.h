/* Single-process inference: the vision tower and the decoder cut into one or more stages in one
 * process, a paged KV cache, chunked prefill and token-by-token decode. The cluster runs the same
 * stage code in separate processes; tests use this to check that any cut gives the same logits. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_backend.h"
#include "xc_sampler.h"
#include "xc_status.h"
#include "xc_vision.h"

#define XC_ENGINE_MAX_STAGES 64

typedef struct xc_engine xc_engine;

typedef struct xc_engine_conf {
    const char *model_dir; /* checkpoint directory (config.json + weights) */
    const char *weights;   /* optional: a weights file or index to use instead of the one found
                              in model_dir (e.g. pytorch_model.bin next to model.safetensors) */
    const char *backend;   /* "cpu" (default) or "cuda" */
    int n_threads;         /* CPU threads, 0 = all cores */
    int n_stages;          /* in-process stages, 0 or 1 = one; layers split evenly */
    const int *cuts;       /* optional: n_stages - 1 increasing layer indices to cut at */
    const int *unit_cuts;  /* optional, instead of cuts: n_stages - 1 increasing half-layer unit
                              indices (unit 2l = layer l's attention, 2l+1 its FFN) to cut at */
    int max_context;       /* tokens per sequence (prompt + reply); 0 = max_position_embeddings
                              (prompts still at most config max_length) */
    int chunk;             /* prefill rows per forward; 0 = 256 */
    int block_size;        /* KV block size in tokens; 0 = 16 */
    bool no_vision;        /* do not load the vision tower */
    const char *kv_dtype;  /* KV cache element type: "bf16" (NULL = default) or "f32" */
} xc_engine_conf;

/* A prompt: token ids with image rows. Rows inside img ranges take the image embeddings (range r
 * <- image r, each exactly n_tokens rows); their ids are ignored. */
typedef struct xc_prompt {
    const int32_t *ids; /* (n) */
    int n;
    const xc_row_range *img; /* (n_img) sorted, disjoint */
    int n_img;
    const float *pixels; /* host (n_img, 3, S, S) preprocessed images */
} xc_prompt;

typedef struct xc_gen_params {
    xc_sampling sampling;
    int max_new_tokens;
    const int32_t *stop_ids; /* a generated stop id ends the reply and is not returned */
    int n_stop_ids;
    bool penalize_prompt; /* repetition penalty also on the prompt's text ids */
} xc_gen_params;

/* Called for each generated token; return false to stop. */
typedef bool (*xc_token_fn)(void *user, int32_t token);

/* Called after each stage of a prefill with that stage's output rows (host memory). */
typedef void (*xc_stage_fn)(void *user, int stage, const float *hidden, int rows, int width);

xc_status xc_engine_create(const xc_engine_conf *conf, xc_engine **out);
void xc_engine_destroy(xc_engine *e);

/* Generates up to max_new_tokens. out (capacity max_new_tokens) gets the tokens, *n_out their
 * count; *stopped is true when a stop id ended it. XC_ERR_ARG for a prompt that is empty, too long
 * for the context, has ill-formed image ranges or ids outside the vocabulary. */
xc_status xc_engine_generate(xc_engine *e, const xc_prompt *p, const xc_gen_params *g,
                             xc_token_fn cb, void *user, int32_t *out, int *n_out, bool *stopped);

/* One prefill of the whole prompt returning logits for every row, host (n, vocab); stage_cb (may
 * be NULL) sees each stage's output. The KV blocks are released afterwards. */
xc_status xc_engine_prefill_logits(xc_engine *e, const xc_prompt *p, float *logits,
                                   xc_stage_fn stage_cb, void *user);

/* Encodes images only: host out (n * n_tokens, hidden). */
xc_status xc_engine_encode_images(xc_engine *e, const float *pixels, int n, float *out);

int xc_engine_vocab(const xc_engine *e);
int xc_engine_hidden(const xc_engine *e);
int xc_engine_n_layers(const xc_engine *e);
int xc_engine_max_context(const xc_engine *e);

/* The longest prompt (config max_length, at most the context): longer ones are refused. */
int xc_engine_max_prompt(const xc_engine *e);
/* NULL when the vision tower is not loaded. */
const xc_vision_info *xc_engine_vision_info(const xc_engine *e);
