/* Sampling parameter defaults and range checks (shared by the coordinator and the workers). */
#include "xc_sampling.h"

xc_sampling xc_sampling_defaults(void) {
    return (xc_sampling){.greedy = false,
                         .temperature = 1.0f,
                         .top_k = 50,
                         .top_p = 0.8f,
                         .repetition_penalty = 1.005f,
                         .seed = 0};
}

xc_status xc_sampling_validate(const xc_sampling *s) {
    if (!(s->temperature > 0.0f) || s->temperature > XC_SAMPLING_MAX_TEMPERATURE) {
        return xc_errf(XC_ERR_ARG, "temperature must be in (0, %g], got %g",
                       (double)XC_SAMPLING_MAX_TEMPERATURE, s->temperature);
    }
    if (s->top_k < 0) {
        return xc_errf(XC_ERR_ARG, "top_k must be >= 0, got %d", s->top_k);
    }
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) {
        return xc_errf(XC_ERR_ARG, "top_p must be in (0, 1], got %g", s->top_p);
    }
    if (!(s->repetition_penalty > 0.0f) || s->repetition_penalty > XC_SAMPLING_MAX_PENALTY) {
        return xc_errf(XC_ERR_ARG, "repetition_penalty must be in (0, %g], got %g",
                       (double)XC_SAMPLING_MAX_PENALTY, s->repetition_penalty);
    }
    if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f)) {
        return xc_errf(XC_ERR_ARG, "presence_penalty must be in [-2, 2], got %g",
                       s->presence_penalty);
    }
    if (!(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f)) {
        return xc_errf(XC_ERR_ARG, "frequency_penalty must be in [-2, 2], got %g",
                       s->frequency_penalty);
    }
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f)) {
        return xc_errf(XC_ERR_ARG, "min_p must be in [0, 1], got %g", s->min_p);
    }
    if (s->min_tokens < 0 || s->n_stop_ids < 0 || s->n_stop_ids > XC_SAMPLING_MAX_STOP_IDS) {
        return xc_errf(XC_ERR_ARG, "min_tokens %d / %d stop ids out of range", s->min_tokens,
                       s->n_stop_ids);
    }
    if (s->n_logit_bias < 0 || s->n_logit_bias > XC_SAMPLING_MAX_LOGIT_BIAS) {
        return xc_errf(XC_ERR_ARG, "logit_bias has %d entries (at most %d)", s->n_logit_bias,
                       XC_SAMPLING_MAX_LOGIT_BIAS);
    }
    for (int i = 0; i < s->n_logit_bias; i++) {
        if (!(s->logit_bias[i] >= -100.0f && s->logit_bias[i] <= 100.0f) ||
            s->logit_bias_ids[i] < 0) {
            return xc_errf(XC_ERR_ARG, "logit_bias: id %d bias %g (ids >= 0, bias in [-100, 100])",
                           s->logit_bias_ids[i], s->logit_bias[i]);
        }
    }
    return XC_OK;
}
