/* Placement: how many stages (P) and replicas (R), and where to cut the decoder layers so that
 * every stage costs about the same. Pure logic, no I/O. */
#pragma once

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
} xc_place_model;

/* Splits n_layers into P contiguous non-empty ranges minimizing the largest stage time (exact,
 * dynamic programming). bounds (P+1): stage k holds [bounds[k], bounds[k+1]). XC_ERR_ARG if
 * P < 1, P > n_layers or P > XC_PLACE_MAX_STAGES. *max_time (may be NULL) gets the largest. */
xc_status xc_place_split(const xc_place_model *m, int P, int *bounds, double *max_time);

/* Bytes stage [a, b) of P needs: weights plus the KV budget. */
double xc_place_stage_bytes(const xc_place_model *m, int a, int b, int P, int stage);

/* Chooses P (fewest stages whose every stage fits the smallest worker's memory) and R (as many
 * replicas as the n_workers allow), unless fixed_P / fixed_R (> 0) fix them. mem (n_workers)
 * are the decoder workers' memory sizes. XC_ERR_ARG when nothing fits or the fixed shape needs
 * more workers than there are (message says what). */
xc_status xc_place_shape(const xc_place_model *m, const uint64_t *mem, int n_workers, int fixed_P,
                         int fixed_R, int *P, int *R);
