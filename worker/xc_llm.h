/* One pipeline stage of the InternLM2 decoder with Partial LoRA: a contiguous range of half-layer
 * units, plus the token embedding on the first stage and the final norm + output head on the
 * last. Unit 2l is layer l's attention block (attention_norm, wqkv, RoPE, KV store, attention,
 * wo, residual), unit 2l+1 its FFN block (ffn_norm, w1/w3, SwiGLU, w2, residual); the residual
 * stream h is the only state between units, so a stage may end between a layer's attention and
 * its FFN. A layer's KV cache belongs to the stage holding its attention unit. Cutting the model
 * into stages anywhere gives the same results as one stage. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_backend.h"
#include "xc_ckpt.h"
#include "xc_kv.h"
#include "xc_model_config.h"
#include "xc_status.h"

typedef struct xc_llm xc_llm;

typedef struct xc_llm_conf {
    int layer_begin, layer_end; /* [begin, end) of the decoder layers held (= units [2b, 2e)) */
    int unit_begin, unit_end;   /* unit_end > 0: [begin, end) of the half-layer units held,
                                   overriding the layers; unit_end <= 0: use the layers */
    bool first;                 /* holds tok_embeddings and splices image rows */
    bool last;                  /* holds model.norm and output */
    int max_rows;               /* most rows (tokens) one forward may carry: scratch size */
    float plora_scale;          /* lora_alpha / lora_r; 0 means 1.0 (the 7b and VL models) */
} xc_llm_conf;

/* One sequence inside a batch. */
typedef struct xc_llm_seq {
    int n_tokens;               /* rows of this sequence in the batch */
    int pos0;                   /* absolute position of its first row = tokens already cached */
    const int32_t *block_table; /* covers positions 0 .. pos0 + n_tokens - 1 */
    const xc_row_range *img;    /* image rows, relative to this sequence's first row (sorted) */
    int n_img;
} xc_llm_seq;

typedef struct xc_llm_batch {
    const xc_llm_seq *seqs;
    int n_seqs;
    int n_rows;              /* sum of n_tokens */
    const int32_t *ids;      /* first stage: (n_rows) token ids; image rows are ignored */
    const float *img_embeds; /* first stage: (image rows in batch order, hidden), backend mem */
    bool all_logits;         /* last stage: logits for every row, else the last row of each seq */
    bool last_rows_only;     /* last stage, !all_logits: the stage's final layer runs its
                                attention queries, wo and the FFN on each sequence's last row only
                                (every row's keys and values are still cached; the other rows'
                                outputs are never read); hidden then holds those rows'
                                final-normed states in rows 0 .. n_seqs - 1 and stale values
                                elsewhere. Same logits. */
} xc_llm_batch;

/* Loads the stage's tensors from the checkpoint (views on the CPU backend; nothing is copied).
 * PLoRA ranks are read from tensor shapes; a checkpoint without Plora_* tensors runs without it.
 * XC_ERR_NOTFOUND / XC_ERR_PROTO name the missing or mis-shaped tensor. */
xc_status xc_llm_create(xc_backend *be, xc_ckpt *ck, const xc_model_config *cfg,
                        const xc_llm_conf *conf, xc_llm **out);

void xc_llm_destroy(xc_llm *m);

/* Runs the batch through the stage. hidden (n_rows, hidden_size) in backend memory is the input
 * (ignored on the first stage, which embeds ids) and receives the output. On the last stage,
 * logits (n_seqs or n_rows if all_logits, vocab) in backend memory receive the head's output
 * (hidden then holds the final-normed states). kv holds xc_llm_n_kv_layers layers (may be NULL
 * when that is 0). */
xc_status xc_llm_forward(xc_llm *m, xc_kv_cache *kv, const xc_llm_batch *b, float *hidden,
                         float *logits);

/* Called after every unit (attention or FFN block) of a forward, from the forward's thread: a
 * sign of progress for a caller that watches for hangs (a 256-row micro-batch through 16 layers
 * of the 7B model takes minutes on a small CPU). NULL clears it. */
void xc_llm_set_progress(xc_llm *m, void (*fn)(void *user), void *user);

/* Sizes. */
int xc_llm_hidden(const xc_llm *m);
int xc_llm_vocab(const xc_llm *m);
int xc_llm_kv_width(const xc_llm *m);    /* n_kv_heads * head_dim */
int xc_llm_n_layers(const xc_llm *m);    /* layers touched (wholly or in part) */
int xc_llm_n_kv_layers(const xc_llm *m); /* attention units held = KV cache layers needed */
int xc_llm_plora_rank(const xc_llm *m);  /* of the wqkv adapter, 0 if none */

/* Bytes of weights this stage references. */
size_t xc_llm_weight_bytes(const xc_llm *m);
