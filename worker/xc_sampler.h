/* Token sampling with the Hugging Face logits-processor order: repetition penalty, temperature,
 * top-k, top-p, then a draw from the softmax with a per-request seeded generator. */
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
    uint64_t seed;
} xc_sampling;

/* The defaults of the original chat(): sampling, T 1.0, top-p 0.8, top-k 50 (transformers'
 * implicit default), repetition penalty 1.005. */
xc_sampling xc_sampling_defaults(void);

/* Checks ranges; XC_ERR_ARG naming the bad field. */
xc_status xc_sampling_validate(const xc_sampling *s);

typedef struct xc_sampler xc_sampler;

/* Per-sequence sampler state over a vocabulary of n_vocab logits. */
xc_status xc_sampler_create(int n_vocab, const xc_sampling *params, xc_sampler **out);
void xc_sampler_destroy(xc_sampler *s);

/* Marks ids as seen for the repetition penalty (the prompt ids where the original penalizes them,
 * and every generated token — xc_sampler_sample marks its own pick). Ids outside the vocabulary
 * are XC_ERR_ARG. */
xc_status xc_sampler_observe(xc_sampler *s, const int32_t *ids, int n);

/* Picks the next token from logits (n_vocab, host memory; modified in place). */
xc_status xc_sampler_sample(xc_sampler *s, float *logits, int32_t *out);

/* api helper: OpenAI-style logprobs from the logits xc_sampler_sample left behind (it leaves them
 * after the repetition penalty and, unless greedy, the temperature): lp = log-softmax over the
 * whole vocabulary of those logits at token, and the k (<= 20) most likely ids with theirs, most
 * likely first (ties: lower id first). Top-k/top-p truncation is not applied. XC_ERR_ARG for a
 * token out of range or k outside [0, 20]. */
xc_status xc_sampler_logprobs(const float *logits, int n_vocab, int32_t token, int k, float *lp,
                              int32_t *top_ids, float *top_lps);
