/* Token sampling with the Hugging Face logits-processor order: repetition penalty, temperature,
 * top-k, top-p, then a draw from the softmax with a per-request seeded generator. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_sampling.h"
#include "xc_status.h"

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
