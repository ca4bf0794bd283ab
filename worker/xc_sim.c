/* Simulated stage timing: a linear cost model and an absolute-deadline sleep. */
#include "xc_sim.h"

#include <errno.h>
#include <math.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

xc_status xc_sim_cost_validate(const xc_sim_cost *c) {
    const double v[] = {c->layer_us, c->layer_row_us, c->embed_us, c->head_us, c->head_row_us};
    const char *names[] = {"layer_us", "layer_row_us", "embed_us", "head_us", "head_row_us"};
    for (int i = 0; i < 5; i++) {
        if (!isfinite(v[i]) || v[i] < 0) {
            return xc_errf(XC_ERR_ARG, "sim cost %s = %g must be finite and >= 0", names[i], v[i]);
        }
    }
    if (!isfinite(c->attn_share) || c->attn_share > 1) {
        return xc_errf(XC_ERR_ARG, "sim cost attn_share = %g must be finite and <= 1",
                       c->attn_share);
    }
    if (!isfinite(c->scale) || !(c->scale > 0)) {
        return xc_errf(XC_ERR_ARG, "sim cost scale %g must be > 0", c->scale);
    }
    return XC_OK;
}

double xc_sim_stage_us(const xc_sim_cost *c, int n_layers, bool first, bool last, int rows,
                       int logit_rows) {
    double us = (double)n_layers * (c->layer_us + c->layer_row_us * rows);
    if (first) {
        us += c->embed_us;
    }
    if (last) {
        us += c->head_us + c->head_row_us * logit_rows;
    }
    return us * c->scale;
}

double xc_sim_unit_us(const xc_sim_cost *c, int u, int rows) {
    double share = c->attn_share > 0 ? c->attn_share : XC_SIM_ATTN_SHARE;
    double f = u % 2 == 0 ? share : 1.0 - share;
    return f * (c->layer_us + c->layer_row_us * rows);
}

double xc_sim_units_stage_us(const xc_sim_cost *c, int unit_begin, int unit_end, bool first,
                             bool last, int rows, int logit_rows) {
    double us = 0;
    for (int u = unit_begin; u < unit_end; u++) {
        us += xc_sim_unit_us(c, u, rows);
    }
    if (first) {
        us += c->embed_us;
    }
    if (last) {
        us += c->head_us + c->head_row_us * logit_rows;
    }
    return us * c->scale;
}

void xc_sim_wait_until(uint64_t start_ns, double us) {
    uint64_t t = start_ns + (uint64_t)(us * 1000.0);
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull),
                          .tv_nsec = (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

uint64_t xc_sim_start_ns(uint64_t picked_ns, uint64_t queued_ns, uint64_t free_ns) {
    if (queued_ns && queued_ns <= free_ns && free_ns < picked_ns) {
        return free_ns;
    }
    return picked_ns;
}

void xc_sim_thread_precise(void) {
#ifdef __linux__
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
}

int32_t xc_sim_token(uint64_t seq_id, uint32_t pos, int vocab) {
    uint64_t h = (seq_id * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)pos * 0xbf58476d1ce4e5b9ull);
    h ^= h >> 31;
    int span = vocab > 32 ? vocab - 16 : 1;
    return (int32_t)(16 + (int)(h % (uint64_t)span));
}
