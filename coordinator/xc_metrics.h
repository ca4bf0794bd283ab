/* Serving metrics in Prometheus text format (exposition format 0.0.4): counters and histograms
 * updated by the HTTP threads, gauges read from the coordinator when /metrics is scraped.
 * Metric names are listed in docs/api.md. Thread-safe. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

typedef struct xc_metrics xc_metrics;

typedef enum xc_metrics_counter {
    XC_METRICS_PROMPT_TOKENS = 0,  /* usage.prompt_tokens of finished requests */
    XC_METRICS_GENERATION_TOKENS,  /* tokens generated (every choice) */
    XC_METRICS_IMAGE_TOKENS,       /* prompt rows that are image embeddings */
    XC_METRICS_IMAGES,             /* images preprocessed */
    XC_METRICS_REQUESTS_CANCELLED, /* client went away or deadline: sequence released */
    XC_METRICS_N_COUNTERS
} xc_metrics_counter;

typedef enum xc_metrics_hist {
    XC_METRICS_TTFT = 0,   /* seconds from arrival to the first token */
    XC_METRICS_ITL,        /* seconds between consecutive tokens of a choice */
    XC_METRICS_E2E,        /* seconds from arrival to the last byte */
    XC_METRICS_PREPROCESS, /* seconds decoding+preprocessing one request's images */
    XC_METRICS_N_HISTS
} xc_metrics_hist;

/* Gauges sampled at scrape time (from xc_coord_stats). */
typedef struct xc_metrics_stage {
    int replica, stage;
    double busy_ratio; /* fraction of time computing over the last heartbeat window */
    double bytes_out;  /* bytes this stage sent to the next (or results to the coordinator) */
    double mbatches;   /* micro-batches processed */
    double sequences;  /* sequences it holds state for (last heartbeat) */
    double kv_bytes_per_token; /* KV cache bytes per token on this stage (layers x K, V x dtype) */
} xc_metrics_stage;

typedef struct xc_metrics_gauges {
    int running, waiting;                /* sequences admitted / queued in the schedulers */
    int http_active;                     /* chat requests being served */
    int kv_blocks_used, kv_blocks_total; /* all replicas */
    int ready;                           /* 1 when /ready would say so */
    double vision_encode_s;              /* total seconds the vision worker spent encoding */
    double vision_images;                /* images it encoded */
    double bytes_to_stage0;              /* bytes the coordinator sent to the first stages */
    /* failure handling, cumulative (docs/cluster.md "Failure handling") */
    double resumes, resume_failures, step_timeouts, worker_restarts, replica_failures;
    double slow_peer_sends, unknown_dropped;
    double image_cache_hits, image_cache_misses;  /* its embedding cache: found / encoded */
    double prompt_rows_computed, prefix_hit_rows; /* prefill rows run / taken from the cache */
    /* the HTTP side's input image cache (--image-input-cache-mb): decoded images found by the
       hash of their encoded bytes / decoded, and what it holds */
    double input_cache_hits, input_cache_misses, input_cache_bytes;
    const xc_metrics_stage *stages; /* (n_stages) */
    int n_stages;
} xc_metrics_gauges;

xc_status xc_metrics_create(xc_metrics **out);
void xc_metrics_destroy(xc_metrics *m);

void xc_metrics_add(xc_metrics *m, xc_metrics_counter c, double v);
void xc_metrics_observe(xc_metrics *m, xc_metrics_hist h, double seconds);

/* Counts one finished HTTP request by route ("chat", "models", "health", "ready", "metrics",
 * "other") and status code. */
void xc_metrics_http(xc_metrics *m, const char *route, int status);

/* The current value of a counter (for tests and the bench). */
double xc_metrics_counter_value(xc_metrics *m, xc_metrics_counter c);

/* Renders everything as Prometheus text into a new xc_malloc'd string (*len bytes); NULL when
 * out of memory. g may be NULL (no gauges). */
char *xc_metrics_render(xc_metrics *m, const xc_metrics_gauges *g, size_t *len);
