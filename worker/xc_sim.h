/* The simulated backend (--backend sim): a decoder stage that does no math but takes the time a
 * cost model says an H100 stage would, so pipeline schedules can be measured at P = 2..8 stages
 * on a small machine. The same cost model drives placement in benchmarks. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_status.h"

/* Microseconds a stage spends on one micro-batch (defaults: InternLM2-7B bf16 on one H100,
 * ~3.3 TB/s and ~600 dense TFLOP/s: a layer reads 0.44 GB of weights, a prefill row costs
 * 0.44 GFLOP per layer; the 92544-wide head reads 0.76 GB and costs 0.76 GFLOP per row). */
typedef struct xc_sim_cost {
    double layer_us;     /* per layer and micro-batch: weight read */
    double layer_row_us; /* per layer and row */
    double embed_us;     /* first stage, per micro-batch */
    double head_us;      /* last stage, per micro-batch: output head weight read */
    double head_row_us;  /* last stage, per row that gets logits */
    double scale;        /* every cost is multiplied by this (> 0) */
    double attn_share;   /* share of layer_us and layer_row_us in a layer's attention unit (the
                            rest is its FFN unit); <= 0 means XC_SIM_ATTN_SHARE */
} xc_sim_cost;

/* InternLM2-7B: wqkv + wo hold 4096 x (4096 + 2 x 1024) + 4096 x 4096 = 41.9 M weights, w1/w3/w2
 * 3 x 4096 x 14336 = 176.2 M; both the weight read and the per-row FLOPs split 0.192 : 0.808. */
#define XC_SIM_ATTN_SHARE 0.192

#define XC_SIM_COST_H100                                                                           \
    {                                                                                              \
        .layer_us = 140.0, .layer_row_us = 0.75, .embed_us = 5.0, .head_us = 230.0,                \
        .head_row_us = 1.3, .scale = 1.0, .attn_share = XC_SIM_ATTN_SHARE                          \
    }

/* XC_ERR_ARG unless every cost is finite, >= 0 and scale > 0. */
xc_status xc_sim_cost_validate(const xc_sim_cost *c);

/* Microseconds for one micro-batch of rows (logit_rows of them sampled) through n_layers layers,
 * with the embedding (first) and the head (last). */
double xc_sim_stage_us(const xc_sim_cost *c, int n_layers, bool first, bool last, int rows,
                       int logit_rows);

/* Microseconds of half-layer unit u (even: a layer's attention, odd: its FFN) for rows rows,
 * unscaled. */
double xc_sim_unit_us(const xc_sim_cost *c, int u, int rows);

/* Like xc_sim_stage_us for a stage holding units [unit_begin, unit_end). */
double xc_sim_units_stage_us(const xc_sim_cost *c, int unit_begin, int unit_end, bool first,
                             bool last, int rows, int logit_rows);

/* Sleeps until start_ns + us microseconds on the monotonic clock (absolute, so no drift). */
void xc_sim_wait_until(uint64_t start_ns, double us);

/* When a simulated stage starts computing a micro-batch, modelled as a device with a queue in
 * front of it: one that was queued (queued_ns, 0 = not known) by the time the device finished the
 * previous one (free_ns) starts at free_ns, because the worker could have launched it while the
 * previous one ran; any other starts when the worker's thread took it (picked_ns), never earlier.
 * So a stage that always has work queued computes back to back, and the thread's late wake-ups
 * delay only its hand-offs, as with an asynchronous GPU stream. */
uint64_t xc_sim_start_ns(uint64_t picked_ns, uint64_t queued_ns, uint64_t free_ns);

/* Asks the kernel to end this thread's sleeps on time: Linux timer slack 1 ns instead of the
 * default 50 us (a sim stage's sleep that ends late is compute time a GPU would not take).
 * A no-op elsewhere. */
void xc_sim_thread_precise(void);

/* The token a sim last stage "samples": a fixed function of the sequence and position, never
 * below 16 (so never a typical stop id) and below vocab. */
int32_t xc_sim_token(uint64_t seq_id, uint32_t pos, int vocab);
