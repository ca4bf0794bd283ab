/* Token sampling. Processors in this order (each documented in docs/api.md):
 *   1. logit_bias (added), 2. min_tokens (stop ids to -inf before min_tokens generated tokens),
 *   3. repetition penalty (HF rule, prompt ids observed + generated), 4. frequency and presence
 *   penalties (OpenAI: z -= count * frequency + (count > 0) * presence over generated tokens),
 *   greedy = argmax here; else 5. temperature, 6. top-k, 7. top-p (HF), 8. min_p (HF: drop
 *   p < min_p * p_max), then a draw from the softmax of what is left. The draw's randomness is a
 * pure function of (seed, choice index, token position): a sequence resumed at position p
 * (re-prefilled with its prompt and the tokens already produced) draws exactly what it would have
 * drawn. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_sampling.h"
#include "xc_status.h"

typedef struct xc_sampler xc_sampler;

/* Per-sequence sampler state over a vocabulary of n_vocab logits; the next token's position is 0
 * until xc_sampler_set_position. */
xc_status xc_sampler_create(int n_vocab, const xc_sampling *params, xc_sampler **out);
void xc_sampler_destroy(xc_sampler *s);

/* The position in the sequence of the token the next xc_sampler_sample draws (the prompt's row
 * count for the first generated token); every sample advances it by one. */
void xc_sampler_set_position(xc_sampler *s, uint64_t pos);

/* The uniform in [0, 1) (53 bits) that the draw at (seed, choice, pos) uses: a counter-based
 * generator (three rounds of the splitmix64 finalizer, each a bijection of the previous state, so
 * for a fixed (choice, pos) distinct seeds never share a state). */
double xc_sampler_uniform(uint64_t seed, uint32_t choice, uint64_t pos);

/* Marks ids as seen for the repetition penalty (the prompt ids where the original penalizes them,
 * and every generated token — xc_sampler_sample marks its own pick). Ids outside the vocabulary
 * are XC_ERR_ARG. */
xc_status xc_sampler_observe(xc_sampler *s, const int32_t *ids, int n);

/* Marks ids as already generated (a resumed sequence's produced tokens): the repetition penalty
 * sees them, the frequency/presence penalties count them and min_tokens counts them. */
xc_status xc_sampler_observe_output(xc_sampler *s, const int32_t *ids, int n);

/* Picks the next token from logits (n_vocab, host memory; modified in place). */
xc_status xc_sampler_sample(xc_sampler *s, float *logits, int32_t *out);

/* api helper: OpenAI-style logprobs from the logits xc_sampler_sample left behind (it leaves them
 * after the repetition penalty and, unless greedy, the temperature): lp = log-softmax over the
 * whole vocabulary of those logits at token, and the k (<= 20) most likely ids with theirs, most
 * likely first (ties: lower id first). Top-k/top-p truncation is not applied. XC_ERR_ARG for a
 * token out of range or k outside [0, 20]. */
xc_status xc_sampler_logprobs(const float *logits, int n_vocab, int32_t token, int k, float *lp,
                              int32_t *top_ids, float *top_lps);

/* Device sampling (issue 13.7): the next draw as a device can run it. A device sampler applies,
 * per row, the repetition penalty over `seen`, then greedy argmax, or temperature, top-k, top-p
 * and the draw with uniform u, exactly in the order and with the rules of xc_sampler_sample. */
typedef struct xc_sampler_plan {
    bool greedy;
    float temperature;
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off */
    float repetition_penalty; /* 1 = off */
    const int32_t *seen;      /* (n_seen) distinct ids the penalty applies to (view, valid until
                                 the sampler is next modified) */
    int n_seen;
    double u; /* xc_sampler_uniform(seed, choice, position of this draw) */
} xc_sampler_plan;

/* Fills p and returns true when the next draw needs nothing beyond the plan's processors; false
 * (sample on the host) when logit_bias, min_tokens (still holding stop ids back), frequency or
 * presence penalties, or min_p are active. */
bool xc_sampler_plan_next(const xc_sampler *s, xc_sampler_plan *p);

/* Takes the token a device drew by the plan: advances the position and marks the token as
 * generated, as xc_sampler_sample does after its own pick. */
xc_status xc_sampler_accept(xc_sampler *s, int32_t token);
