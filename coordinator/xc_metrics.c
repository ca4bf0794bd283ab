/* Prometheus text rendering of the serving counters, histograms and coordinator gauges. */
#include "xc_metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "xc_mem.h"

#define N_BUCKETS   16
#define MAX_HTTP    64
#define ROUTE_CHARS 16

/* Histogram bucket upper bounds (seconds), shared by every histogram: 1 ms .. 60 s. */
static const double g_bounds[N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                           0.5,   1,      2.5,   5,    10,    20,   40,  60};

typedef struct hist {
    uint64_t bucket[N_BUCKETS]; /* non-cumulative counts; rendered cumulative */
    uint64_t count;
    double sum;
} hist;

typedef struct http_count {
    char route[ROUTE_CHARS];
    int status;
    uint64_t n;
} http_count;

struct xc_metrics {
    pthread_mutex_t lock;
    double counters[XC_METRICS_N_COUNTERS];
    hist hists[XC_METRICS_N_HISTS];
    http_count http[MAX_HTTP];
    int n_http;
};

static const struct {
    const char *name, *help;
} counter_info[XC_METRICS_N_COUNTERS] = {
    {"xcpipe_prompt_tokens_total", "Prompt tokens of finished requests (image rows included)."},
    {"xcpipe_generation_tokens_total", "Generated tokens, every choice."},
    {"xcpipe_image_tokens_total", "Prompt rows that are image embeddings."},
    {"xcpipe_images_total", "Images decoded and preprocessed."},
    {"xcpipe_requests_cancelled_total",
     "Requests whose sequences were released early (client gone or deadline)."},
};

static const struct {
    const char *name, *help;
} hist_info[XC_METRICS_N_HISTS] = {
    {"xcpipe_time_to_first_token_seconds", "Time from request arrival to the first token."},
    {"xcpipe_inter_token_latency_seconds", "Time between consecutive tokens of one choice."},
    {"xcpipe_e2e_request_latency_seconds", "Time from request arrival to its end."},
    {"xcpipe_vision_preprocess_seconds", "Image decode and preprocess time per request."},
};

xc_status xc_metrics_create(xc_metrics **out) {
    xc_metrics *m = xc_calloc(1, sizeof *m);
    if (!m) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for metrics");
    }
    pthread_mutex_init(&m->lock, NULL);
    *out = m;
    return XC_OK;
}

void xc_metrics_destroy(xc_metrics *m) {
    if (!m) {
        return;
    }
    pthread_mutex_destroy(&m->lock);
    xc_free(m);
}

void xc_metrics_add(xc_metrics *m, xc_metrics_counter c, double v) {
    pthread_mutex_lock(&m->lock);
    m->counters[c] += v;
    pthread_mutex_unlock(&m->lock);
}

void xc_metrics_observe(xc_metrics *m, xc_metrics_hist h, double seconds) {
    pthread_mutex_lock(&m->lock);
    hist *x = &m->hists[h];
    for (int i = 0; i < N_BUCKETS; i++) {
        if (seconds <= g_bounds[i]) {
            x->bucket[i]++;
            break;
        }
    }
    x->count++;
    x->sum += seconds;
    pthread_mutex_unlock(&m->lock);
}

void xc_metrics_http(xc_metrics *m, const char *route, int status) {
    pthread_mutex_lock(&m->lock);
    int i = 0;
    for (; i < m->n_http; i++) {
        if (m->http[i].status == status && !strncmp(m->http[i].route, route, ROUTE_CHARS - 1)) {
            break;
        }
    }
    if (i == m->n_http && m->n_http < MAX_HTTP) {
        snprintf(m->http[i].route, ROUTE_CHARS, "%s", route);
        m->http[i].status = status;
        m->n_http++;
    }
    if (i < m->n_http) {
        m->http[i].n++;
    }
    pthread_mutex_unlock(&m->lock);
}

double xc_metrics_counter_value(xc_metrics *m, xc_metrics_counter c) {
    pthread_mutex_lock(&m->lock);
    double v = m->counters[c];
    pthread_mutex_unlock(&m->lock);
    return v;
}

/* ---- rendering ---- */

typedef struct out_buf {
    char *p;
    size_t n, cap;
    bool failed;
} out_buf;

static void outf(out_buf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void outf(out_buf *o, const char *fmt, ...) {
    if (o->failed) {
        return;
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
        va_end(ap);
        if (k < 0) {
            o->failed = true;
            return;
        }
        if ((size_t)k < o->cap - o->n) {
            o->n += (size_t)k;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)k;
        char *p = xc_realloc(o->p, cap);
        if (!p) {
            o->failed = true;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
}

static void gauge(out_buf *o, const char *name, const char *help, double v) {
    outf(o, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

char *xc_metrics_render(xc_metrics *m, const xc_metrics_gauges *g, size_t *len) {
    out_buf o = {.p = xc_malloc(4096), .cap = 4096};
    if (!o.p) {
        return NULL;
    }
    o.p[0] = 0;
    if (g) {
        gauge(&o, "xcpipe_requests_running", "Sequences admitted to a pipeline (KV allocated).",
              g->running);
        gauge(&o, "xcpipe_requests_waiting", "Sequences queued for admission.", g->waiting);
        gauge(&o, "xcpipe_http_requests_active", "Chat requests being served over HTTP.",
              g->http_active);
        gauge(&o, "xcpipe_kv_blocks_used", "KV cache blocks in use, all replicas.",
              g->kv_blocks_used);
        gauge(&o, "xcpipe_kv_blocks_total", "KV cache blocks, all replicas.", g->kv_blocks_total);
        gauge(&o, "xcpipe_ready", "1 when every stage heartbeats and the canary succeeds.",
              g->ready);
        outf(&o,
             "# HELP xcpipe_vision_encode_seconds_total Seconds the vision worker spent "
             "encoding images.\n# TYPE xcpipe_vision_encode_seconds_total counter\n"
             "xcpipe_vision_encode_seconds_total %.17g\n",
             g->vision_encode_s);
        outf(&o,
             "# HELP xcpipe_vision_images_total Images sent to the vision worker (cache hits "
             "included).\n"
             "# TYPE xcpipe_vision_images_total counter\nxcpipe_vision_images_total %.17g\n",
             g->vision_images);
        outf(&o,
             "# HELP xcpipe_vision_image_cache_hits_total Images the vision worker found in its "
             "embedding cache (not encoded again).\n"
             "# TYPE xcpipe_vision_image_cache_hits_total counter\n"
             "xcpipe_vision_image_cache_hits_total %.17g\n"
             "# HELP xcpipe_vision_image_cache_misses_total Images the vision worker looked up "
             "in its embedding cache and encoded.\n"
             "# TYPE xcpipe_vision_image_cache_misses_total counter\n"
             "xcpipe_vision_image_cache_misses_total %.17g\n",
             g->image_cache_hits, g->image_cache_misses);
        outf(&o,
             "# HELP xcpipe_prompt_rows_computed_total Prompt rows (tokens and image rows) "
             "prefilled through the stages.\n"
             "# TYPE xcpipe_prompt_rows_computed_total counter\n"
             "xcpipe_prompt_rows_computed_total %.17g\n"
             "# HELP xcpipe_prefix_cache_hit_rows_total Prompt rows whose KV came from the prefix "
             "cache (not computed).\n"
             "# TYPE xcpipe_prefix_cache_hit_rows_total counter\n"
             "xcpipe_prefix_cache_hit_rows_total %.17g\n",
             g->prompt_rows_computed, g->prefix_hit_rows);
        outf(&o,
             "# HELP xcpipe_input_image_cache_hits_total Request images found decoded in the "
             "input image cache (by the hash of their encoded bytes; not decoded again).\n"
             "# TYPE xcpipe_input_image_cache_hits_total counter\n"
             "xcpipe_input_image_cache_hits_total %.17g\n"
             "# HELP xcpipe_input_image_cache_misses_total Request images looked up in the input "
             "image cache and decoded.\n"
             "# TYPE xcpipe_input_image_cache_misses_total counter\n"
             "xcpipe_input_image_cache_misses_total %.17g\n",
             g->input_cache_hits, g->input_cache_misses);
        gauge(&o, "xcpipe_input_image_cache_bytes",
              "Bytes of decoded images held by the input image cache.", g->input_cache_bytes);
        outf(&o,
             "# HELP xcpipe_coordinator_bytes_sent_total Bytes of forward frames the "
             "coordinator sent to first stages.\n"
             "# TYPE xcpipe_coordinator_bytes_sent_total counter\n"
             "xcpipe_coordinator_bytes_sent_total %.17g\n",
             g->bytes_to_stage0);

        static const struct {
            const char *name, *help;
            size_t off;
        } fc[] = {
            {"xcpipe_resumes_total", "Requests re-prefilled after their replica failed.",
             offsetof(xc_metrics_gauges, resumes)},
            {"xcpipe_resume_failures_total",
             "Requests failed after losing their replica (--max-resumes used up, or no replica "
             "within --resume-timeout).",
             offsetof(xc_metrics_gauges, resume_failures)},
            {"xcpipe_step_timeouts_total",
             "Micro-batches past their deadline (each failed and re-formed its replica).",
             offsetof(xc_metrics_gauges, step_timeouts)},
            {"xcpipe_worker_restarts_total",
             "Worker processes replaced under the same id or endpoint (new incarnation).",
             offsetof(xc_metrics_gauges, worker_restarts)},
            {"xcpipe_replica_failures_total", "Replica failures (each re-forms the replica).",
             offsetof(xc_metrics_gauges, replica_failures)},
            {"xcpipe_slow_peer_sends_total",
             "Sends refused because a worker's send queue was full (slow or stopped worker).",
             offsetof(xc_metrics_gauges, slow_peer_sends)},
            {"xcpipe_unknown_worker_messages_dropped_total",
             "Heartbeats and registrations of unknown workers not answered (rate limits).",
             offsetof(xc_metrics_gauges, unknown_dropped)},
        };

        for (size_t i = 0; i < sizeof fc / sizeof fc[0]; i++) {
            double v = *(const double *)((const char *)g + fc[i].off);
            outf(&o, "# HELP %s %s\n# TYPE %s counter\n%s %.17g\n", fc[i].name, fc[i].help,
                 fc[i].name, fc[i].name, v);
        }
        outf(&o, "# HELP xcpipe_stage_busy_ratio Fraction of time a decoder stage spent computing "
                 "(last heartbeat window).\n# TYPE xcpipe_stage_busy_ratio gauge\n");
        for (int i = 0; i < g->n_stages; i++) {
            outf(&o, "xcpipe_stage_busy_ratio{replica=\"%d\",stage=\"%d\"} %.6f\n",
                 g->stages[i].replica, g->stages[i].stage, g->stages[i].busy_ratio);
        }
        outf(&o, "# HELP xcpipe_stage_bytes_sent_total Bytes a decoder stage sent downstream (the "
                 "next stage, or results to the coordinator).\n"
                 "# TYPE xcpipe_stage_bytes_sent_total counter\n");
        for (int i = 0; i < g->n_stages; i++) {
            outf(&o, "xcpipe_stage_bytes_sent_total{replica=\"%d\",stage=\"%d\"} %.17g\n",
                 g->stages[i].replica, g->stages[i].stage, g->stages[i].bytes_out);
        }
        outf(&o, "# HELP xcpipe_stage_microbatches_total Micro-batches a decoder stage processed.\n"
                 "# TYPE xcpipe_stage_microbatches_total counter\n");
        for (int i = 0; i < g->n_stages; i++) {
            outf(&o, "xcpipe_stage_microbatches_total{replica=\"%d\",stage=\"%d\"} %.17g\n",
                 g->stages[i].replica, g->stages[i].stage, g->stages[i].mbatches);
        }
        outf(&o, "# HELP xcpipe_stage_sequences Sequences a decoder stage holds state for (its "
                 "last heartbeat).\n# TYPE xcpipe_stage_sequences gauge\n");
        for (int i = 0; i < g->n_stages; i++) {
            outf(&o, "xcpipe_stage_sequences{replica=\"%d\",stage=\"%d\"} %.17g\n",
                 g->stages[i].replica, g->stages[i].stage, g->stages[i].sequences);
        }
        outf(&o, "# HELP xcpipe_stage_kv_bytes_per_token KV cache bytes one token takes on a "
                 "decoder stage (its attention layers x K and V x the worker's --kv-dtype).\n"
                 "# TYPE xcpipe_stage_kv_bytes_per_token gauge\n");
        for (int i = 0; i < g->n_stages; i++) {
            outf(&o, "xcpipe_stage_kv_bytes_per_token{replica=\"%d\",stage=\"%d\"} %.17g\n",
                 g->stages[i].replica, g->stages[i].stage, g->stages[i].kv_bytes_per_token);
        }
    }
    pthread_mutex_lock(&m->lock);
    for (int c = 0; c < XC_METRICS_N_COUNTERS; c++) {
        outf(&o, "# HELP %s %s\n# TYPE %s counter\n%s %.17g\n", counter_info[c].name,
             counter_info[c].help, counter_info[c].name, counter_info[c].name, m->counters[c]);
    }
    for (int h = 0; h < XC_METRICS_N_HISTS; h++) {
        const char *nm = hist_info[h].name;
        const hist *x = &m->hists[h];
        outf(&o, "# HELP %s %s\n# TYPE %s histogram\n", nm, hist_info[h].help, nm);
        uint64_t cum = 0;
        for (int i = 0; i < N_BUCKETS; i++) {
            cum += x->bucket[i];
            outf(&o, "%s_bucket{le=\"%g\"} %llu\n", nm, g_bounds[i], (unsigned long long)cum);
        }
        outf(&o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", nm,
             (unsigned long long)x->count, nm, x->sum, nm, (unsigned long long)x->count);
    }
    outf(&o, "# HELP xcpipe_http_requests_total HTTP requests by route and status.\n"
             "# TYPE xcpipe_http_requests_total counter\n");
    for (int i = 0; i < m->n_http; i++) {
        outf(&o, "xcpipe_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n", m->http[i].route,
             m->http[i].status, (unsigned long long)m->http[i].n);
    }
    pthread_mutex_unlock(&m->lock);
    if (o.failed) {
        xc_free(o.p);
        return NULL;
    }
    *len = o.n;
    return o.p;
}
