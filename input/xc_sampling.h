/* Sampling parameters of one request: what the coordinator checks at admission and the last
 * stage's sampler (worker/xc_sampler.h) applies. The bounds are the ones the wire protocol
 * (proto/xc_wire.c) accepts, so a request that passes xc_sampling_validate never fails later. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_status.h"

/* Upper bounds of temperature and repetition penalty: the same numbers the wire protocol
 * (proto/xc_wire.c) and the coordinator accept, so a request that passes them never fails here. */
#define XC_SAMPLING_MAX_TEMPERATURE 1000.0f
#define XC_SAMPLING_MAX_PENALTY     1000.0f
#define XC_SAMPLING_MAX_LOGIT_BIAS  300 /* entries of logit_bias (OpenAI's limit) */
#define XC_SAMPLING_MAX_STOP_IDS    64  /* ids min_tokens holds back (the wire's limit) */

typedef struct xc_sampling {
    bool greedy;              /* argmax after the repetition penalty (ignores the rest) */
    float temperature;        /* > 0; 1 = unchanged */
    int top_k;                /* 0 = off; keeps every token >= the k-th largest (ties kept) */
    float top_p;              /* (0, 1]; 1 = off; nucleus as HF TopPLogitsWarper */
    float repetition_penalty; /* 1 = off; HF rule: positive logits / p, negative * p */
    uint64_t seed;            /* any 64-bit value; distinct seeds give distinct streams */
    uint32_t choice;          /* index of the choice (n > 1) drawing from the seed; 0 = first */
    /* api helper (issue 14): OpenAI's and vLLM's processors (order in worker/xc_sampler.h) */
    float presence_penalty;  /* [-2, 2]; 0 = off */
    float frequency_penalty; /* [-2, 2]; 0 = off */
    float min_p;             /* [0, 1]; 0 = off */
    int min_tokens;          /* >= 0: stop_ids are impossible before this many tokens */
    int n_stop_ids;          /* <= XC_SAMPLING_MAX_STOP_IDS: the ids min_tokens holds back */
    int32_t stop_ids[XC_SAMPLING_MAX_STOP_IDS];
    int n_logit_bias; /* <= XC_SAMPLING_MAX_LOGIT_BIAS */
    int32_t logit_bias_ids[XC_SAMPLING_MAX_LOGIT_BIAS];
    float logit_bias[XC_SAMPLING_MAX_LOGIT_BIAS]; /* [-100, 100], added to the id's logit */
} xc_sampling;

/* The defaults of the original chat(): sampling, T 1.0, top-p 0.8, top-k 50 (transformers'
 * implicit default), repetition penalty 1.005. */
xc_sampling xc_sampling_defaults(void);

/* Checks ranges (ids against the vocabulary only in xc_sampler_create); XC_ERR_ARG naming the
 * bad field. */
xc_status xc_sampling_validate(const xc_sampling *s);
