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

typedef struct xc_sampling {
    bool greedy;              /* argmax after the repetition penalty (ignores the rest) */
    float temperature;        /* > 0; 1 = unchanged */
    int top_k;                /* 0 = off; keeps every token >= the k-th largest (ties kept) */
    float top_p;              /* (0, 1]; 1 = off; nucleus as HF TopPLogitsWarper */
    float repetition_penalty; /* 1 = off; HF rule: positive logits / p, negative * p */
    uint64_t seed;            /* any 64-bit value; distinct seeds give distinct streams */
    uint32_t choice;          /* index of the choice (n > 1) drawing from the seed; 0 = first */
} xc_sampling;

/* The defaults of the original chat(): sampling, T 1.0, top-p 0.8, top-k 50 (transformers'
 * implicit default), repetition penalty 1.005. */
xc_sampling xc_sampling_defaults(void);

/* Checks ranges; XC_ERR_ARG naming the bad field. */
xc_status xc_sampling_validate(const xc_sampling *s);
