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
    return XC_OK;
}
