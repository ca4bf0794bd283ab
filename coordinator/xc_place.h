/* Placement: how many stages (P) and replicas (R), and where to cut the decoder so that every
 * stage costs about the same. Cuts fall between half-layer units: unit 2l is layer l's attention
 * block (attention_norm, wqkv, wo and their PLoRA), unit 2l+1 its FFN block (ffn_norm, w1, w3, w2
 * and their PLoRA); a layer's KV cache goes with its attention unit. Pure logic, no I/O. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_status.h"

#define XC_PLACE_MAX_STAGES 64

/* Per-layer and per-extra costs; "time" balances stages, "bytes" decide what fits. */
typedef struct xc_place_model {
    int n_layers;
    double layer_time;       /* one layer (base weights + PLoRA adapters) */
    double first_time;       /* stage 0 extra: the embedding lookup */
    double last_time;        /* last stage extra: final norm + output head + sampling */
    double layer_bytes;      /* weights of one layer incl. PLoRA */
    double embed_bytes;      /* tok_embeddings (stage 0) */
    double head_bytes;       /* norm + output (last stage) */
    double kv_bytes_layer;   /* KV bytes per token and layer */
    double kv_budget_tokens; /* KV tokens every stage must hold (per replica) */
    /* the split of a layer into its units; attn_time = ffn_time = 0 means half of layer_time
     * each (likewise the bytes) */
    double attn_time, ffn_time;   /* attention unit, FFN unit */
    double attn_bytes, ffn_bytes; /* their weights incl. PLoRA */
} xc_place_model;

/* Time and weight bytes of unit u (0 <= u < 2 n_layers), from the split above. */
double xc_place_unit_time(const xc_place_model *m, int u);
double xc_place_unit_bytes(const xc_place_model *m, int u);

/* Splits the 2 n_layers units into P contiguous non-empty ranges minimizing the largest stage
 * time (exact DP); ubounds (P+1) in units: stage k holds [ubounds[k], ubounds[k+1]). XC_ERR_ARG if
 * P < 1, P > 2 n_layers or P > XC_PLACE_MAX_STAGES. *max_time (may be NULL) gets the largest. */
xc_status xc_place_split_units(const xc_place_model *m, int P, int *ubounds, double *max_time);

/* Bytes stage [ua, ub) (units) of P needs: weights plus the KV budget of its attention units. */
double xc_place_unit_stage_bytes(const xc_place_model *m, int ua, int ub, int P, int stage);

/* Attention units (= KV cache layers) among units [ua, ub). */
int xc_place_attn_units(int ua, int ub);

/* Whole-layer form: splits n_layers into P contiguous non-empty ranges minimizing the largest
 * stage time (exact, dynamic programming). bounds (P+1): stage k holds [bounds[k], bounds[k+1]).
 * XC_ERR_ARG if P < 1, P > n_layers or P > XC_PLACE_MAX_STAGES. *max_time (may be NULL) gets the
 * largest. */
xc_status xc_place_split(const xc_place_model *m, int P, int *bounds, double *max_time);

/* Bytes stage [a, b) of P needs: weights plus the KV budget. */
double xc_place_stage_bytes(const xc_place_model *m, int a, int b, int P, int stage);

/* Chooses P (fewest stages whose every stage of the unit split fits the smallest worker's memory;
 * at most 2 n_layers) and R (as many
 * replicas as the n_workers allow), unless fixed_P / fixed_R (> 0) fix them. mem (n_workers)
 * are the decoder workers' memory sizes. XC_ERR_ARG when nothing fits or the fixed shape needs
 * more workers than there are (message says what). */
xc_status xc_place_shape(const xc_place_model *m, const uint64_t *mem, int n_workers, int fixed_P,
                         int fixed_R, int *P, int *R);

/* ---- roles (runtime helper) ---- */

/* The role a worker accepts (its --role; the wire's Register.role). */
typedef enum xc_place_want {
    XC_PLACE_ANY = 0,    /* vision or a decoder stage */
    XC_PLACE_VISION = 1, /* only the vision encoder */
    XC_PLACE_STAGE = 2,  /* only decoder stages */
} xc_place_want;

typedef struct xc_place_worker {
    const char *id; /* its name (pod name, host:pid) */
    xc_place_want want;
    uint64_t mem; /* memory it advertises */
} xc_place_worker;

/* Natural order of worker names: runs of digits compare as numbers ("dec-2" < "dec-10"), the rest
 * byte by byte. <0, 0, >0 like strcmp. */
int xc_place_id_cmp(const char *a, const char *b);

/* Sorts out the roles of n idle workers w (borrowed). *vision gets the vision worker (-1 if
 * !need_vision or none accepts it): the first worker in name order that asked for vision, else
 * the `any` worker with the least memory (ties: name order), so that the larger ones hold stages.
 * order (n) gets the decoder candidates, *n_dec of them: every `stage` worker in name order, then
 * the other `any` workers in name order (dedicated workers first; a pipeline's stages are
 * order[r * P + k]). Vision-only workers are never candidates. XC_ERR_ARG if n < 0. */
xc_status xc_place_roles(const xc_place_worker *w, int n, bool need_vision, int *vision, int *order,
                         int *n_dec);
