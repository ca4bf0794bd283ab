/* The worker's event loop: registration, role setup (vision, decoder stage, or simulated stage),
 * stage execution with KV block tables from the frames, sampling on the last stage, heartbeats. */
#include "xc_worker.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "xc_backend.h"
#ifdef XC_HAVE_CUDA
#include "xc_cuda.h"
#endif
#include "xc_cgroup.h"
#include "xc_ckpt.h"
#include "xc_imgcache.h"
#include "xc_kv.h"
#include "xc_llm.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_model_config.h"
#include "xc_sampler.h"
#include "xc_time.h"
#include "xc_vision.h"

#define VISION_BLOCK 4096u /* kv_block_size of vision frames: one "block" covers an image */

typedef struct seq_state {
    uint64_t id;
    xc_sampler *smp;
    uint32_t prompt_len;
    bool logprobs; /* api helper: return logprobs ... */
    uint32_t top;  /* ... and this many alternatives */
} seq_state;

struct xc_worker {
    xc_worker_conf conf;
    char id[128];
    uint64_t incarnation; /* random nonce of this process, in Register and every Heartbeat */
    uint64_t host_mem;    /* physical memory or the container's limit, if smaller */
    xc_transport *rx;     /* own mailbox */
    xc_transport *coord;  /* to the coordinator (main thread) */
    xc_transport *next;   /* to the next stage (or the coordinator from the last stage) */
    xc_arena *arena;
    bool sim;

    /* role: assigned = serving it for the current coordinator; loaded = the model state below
     * matches the fields (kept across a Reregister, so the same role again reloads nothing) */
    bool assigned;
    bool loaded;
    xc_wire_role role;
    uint32_t stage, n_stages, layer_begin, layer_end, replica;
    uint32_t unit_begin, unit_end; /* half-layer units held (2 x the layers for a whole-layer
                                      Assign from an older coordinator) */
    uint32_t kv_blocks, block_size, max_rows;
    uint32_t epoch; /* the replica's generation from the last Assign (0 = unchecked) */
    char model_path[1024];
    char next_ep[1024];

    /* model (cpu/cuda) */
    xc_backend *be;
    uint64_t dev_mem;   /* cuda: device memory advertised (xc_worker_device_budget) */
    char dev_name[256]; /* cuda: the device's name, else the backend's */
    xc_ckpt *ck;
    xc_model_config cfg;
    xc_llm *llm;
    xc_kv_cache *kv;
    xc_dtype kv_dtype; /* --kv-dtype */
    xc_vision *vision;
    xc_imgcache *imgcache; /* vision: embeddings by pixel hash (--image-cache-mb) */
    /* a message the vision batcher received but did not take (not a vision frame): the main loop
     * handles it next, before receiving anything else */
    bool has_pend;
    xc_msg pend_msg;
    xc_wire_msg pend;
    xc_buf hidden, logits, img;
    int hidden_size, vocab;

    /* last stage: one sampler per live sequence */
    seq_state *seqs;
    size_t n_seqs, cap_seqs;

    /* heartbeat thread */
    pthread_t hb_thread;
    bool hb_started;
    atomic_int hb_stop;
    atomic_uint_fast64_t progress_ns; /* last time the main loop started or finished a message */
    atomic_int busy;
    atomic_int adoptable; /* assigned: heartbeats carry the endpoint (Reregister is then useful) */

    /* stats */
    atomic_uint_fast64_t busy_ns, n_mb, n_rows, n_bad;
    /* sim: modeled compute, how much earlier than the thread took them the micro-batches
     * started (xc_sim_start_ns), and how late the sleeps woke (xc_worker_stats) */
    atomic_uint_fast64_t sim_model_ns, sim_early_ns, sim_late_ns;
    uint64_t sim_free_ns; /* sim: when the modelled device finished its last micro-batch */
    atomic_uint_fast64_t bytes_out; /* api helper: frame bytes sent downstream */
    atomic_int stat_stage;
    atomic_uint live_seqs; /* n_seqs, for the heartbeat thread */
    /* vision: image cache hits/misses, images encoded, encode calls */
    atomic_uint_fast64_t vis_hits, vis_misses, vis_encoded, vis_batches;
};

/* ---- small helpers ---- */

static void free_buf(void *data, void *hint) {
    (void)hint;
    xc_free(data);
}

static xc_status send_control(xc_worker *w, xc_transport *tx, const xc_wire_control *c) {
    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL, .u.control = *c};
    return xc_transport_send_wire(tx, &m, NULL, 0, w->conf.send_timeout_ms);
}

static void send_error(xc_worker *w, xc_status code, const char *msg, bool fatal) {
    xc_wire_control c = {.kind = XC_WIRE_CTL_ERROR,
                         .u.error = {.code = code < 0 ? code : XC_ERR_ARG,
                                     .message = msg,
                                     .fatal = fatal,
                                     .worker_id = w->id}};
    if (send_control(w, w->coord, &c) != XC_OK) {
        XC_LOG_WARN("could not report an error to the coordinator: %s", xc_err_last());
    }
}

static seq_state *seq_find(xc_worker *w, uint64_t id) {
    for (size_t i = 0; i < w->n_seqs; i++) {
        if (w->seqs[i].id == id) {
            return &w->seqs[i];
        }
    }
    return NULL;
}

static void seq_drop(xc_worker *w, uint64_t id) {
    seq_state *s = seq_find(w, id);
    if (s) {
        xc_sampler_destroy(s->smp);
        *s = w->seqs[--w->n_seqs];
        atomic_store(&w->live_seqs, (unsigned)w->n_seqs);
    }
}

static void seqs_clear(xc_worker *w) {
    for (size_t i = 0; i < w->n_seqs; i++) {
        xc_sampler_destroy(w->seqs[i].smp);
    }
    w->n_seqs = 0;
    atomic_store(&w->live_seqs, 0);
}

static xc_status seq_add(xc_worker *w, uint64_t id, const xc_wire_sampling *ws) {
    seq_drop(w, id); /* a re-sent first chunk replaces the state */
    if (w->n_seqs == w->cap_seqs) {
        size_t cap = w->cap_seqs ? w->cap_seqs * 2 : 64;
        seq_state *n = xc_realloc(w->seqs, cap * sizeof *n);
        if (!n) {
            return XC_ERR_NOMEM;
        }
        w->seqs = n;
        w->cap_seqs = cap;
    }
    xc_sampling sp = {.greedy = ws->greedy,
                      .temperature = ws->greedy ? 1.0f : ws->temperature,
                      .top_k = (int)ws->top_k,
                      .top_p = ws->top_p,
                      .repetition_penalty = ws->repetition_penalty,
                      .seed = ws->seed,
                      .choice = ws->choice,
                      .presence_penalty = ws->presence_penalty,
                      .frequency_penalty = ws->frequency_penalty,
                      .min_p = ws->min_p,
                      .min_tokens = (int)ws->min_tokens,
                      .n_stop_ids = (int)ws->n_stop_ids,
                      .n_logit_bias = (int)ws->n_logit_bias};
    for (size_t k = 0; k < ws->n_stop_ids && k < XC_SAMPLING_MAX_STOP_IDS; k++) {
        sp.stop_ids[k] = (int32_t)ws->stop_ids[k];
    }
    for (size_t k = 0; k < ws->n_logit_bias && k < XC_SAMPLING_MAX_LOGIT_BIAS; k++) {
        sp.logit_bias_ids[k] = (int32_t)ws->logit_bias_ids[k];
        sp.logit_bias[k] = ws->logit_bias_values[k];
    }
    seq_state s = {
        .id = id, .prompt_len = ws->prompt_len, .logprobs = ws->logprobs, .top = ws->top_logprobs};
    if (!w->sim && w->stage + 1 == w->n_stages) { /* only the last stage samples */
        XC_TRY(xc_sampler_create(w->vocab, &sp, &s.smp));
        xc_sampler_set_position(s.smp, ws->prompt_len); /* the first generated token's */
        /* a resumed sequence's tokens generated before its replica failed are the last
         * resumed_tokens penalty ids (the coordinator appends them): they count as output for the
         * frequency/presence penalties and min_tokens, as they did before the failure */
        size_t n_out = ws->resumed_tokens <= ws->n_penalty_ids ? ws->resumed_tokens : 0;
        for (size_t k = 0; k < ws->n_penalty_ids; k++) {
            int32_t t = (int32_t)ws->penalty_ids[k];
            xc_status st = k + n_out >= ws->n_penalty_ids ? xc_sampler_observe_output(s.smp, &t, 1)
                                                          : xc_sampler_observe(s.smp, &t, 1);
            if (st != XC_OK) {
                xc_sampler_destroy(s.smp);
                return st;
            }
        }
    }
    w->seqs[w->n_seqs++] = s;
    atomic_store(&w->live_seqs, (unsigned)w->n_seqs);
    return XC_OK;
}

/* ---- heartbeats ---- */

/* Progress inside one message (after each decoder unit or CLIP layer): at full size on a small
 * CPU a micro-batch or an image takes longer than --hang-timeout, which must only catch a loop
 * that stopped advancing. */
static void note_progress(void *user) {
    xc_worker *w = user;
    atomic_store(&w->progress_ns, xc_now_ns());
}

static void *hb_main(void *arg) {
    xc_worker *w = arg;
    xc_transport *tx = NULL;
    if (xc_transport_open(w->conf.coordinator, XC_TRANSPORT_SEND, w->conf.tconf, &tx) != XC_OK) {
        XC_LOG_ERROR("heartbeat link to %s: %s", w->conf.coordinator, xc_err_last());
        return NULL;
    }
    uint64_t seq = 0, period = (uint64_t)(w->conf.heartbeat_s * 1e9);
    uint64_t next = xc_now_ns();
    while (!atomic_load(&w->hb_stop)) {
        uint64_t now = xc_now_ns();
        if (now < next) {
            uint64_t d = next - now;
            usleep((useconds_t)(d / 1000 < 20000 ? d / 1000 : 20000));
            continue;
        }
        next = now + period;
        /* a main loop stuck in one message for longer than hang_s is a hung worker: go silent so
         * that the coordinator declares it dead */
        if (atomic_load(&w->busy) &&
            now - atomic_load(&w->progress_ns) > (uint64_t)(w->conf.hang_s * 1e9)) {
            continue;
        }
        xc_wire_control c = {.kind = XC_WIRE_CTL_HEARTBEAT,
                             .u.heartbeat = {.seq = ++seq,
                                             .time_ns = now,
                                             .in_flight = (uint32_t)atomic_load(&w->busy),
                                             .worker_id = w->id,
                                             .busy_ns = atomic_load(&w->busy_ns),
                                             .microbatches = atomic_load(&w->n_mb),
                                             .bytes_sent = atomic_load(&w->bytes_out),
                                             /* only an assigned worker can be
                                              * adopted by a coordinator that lost it */
                                             .endpoint = atomic_load(&w->adoptable)
                                                             ? xc_transport_endpoint(w->rx)
                                                             : NULL,
                                             .live_seqs = atomic_load(&w->live_seqs),
                                             .incarnation = w->incarnation,
                                             .image_cache_hits = atomic_load(&w->vis_hits),
                                             .image_cache_misses = atomic_load(&w->vis_misses)}};
        xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL, .u.control = c};
        (void)xc_transport_send_wire(tx, &m, NULL, 0, 100);
    }
    xc_transport_close(tx);
    return NULL;
}

/* ---- create / destroy ---- */

/* A random nonzero 64-bit nonce for this process (getrandom; the clock and pid if it fails): a
 * restarted worker under the same id and endpoint is told apart from the one before. */
static uint64_t new_incarnation(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
        v = xc_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
    }
    return v ? v : 1;
}

xc_status xc_worker_create(const xc_worker_conf *conf, xc_worker **out) {
    if (!conf->coordinator || !conf->coordinator[0]) {
        return xc_errf(XC_ERR_ARG, "worker: the coordinator endpoint is required");
    }
    if (!(conf->heartbeat_s > 0) || !(conf->hang_s > 0)) {
        return xc_errf(XC_ERR_ARG, "worker: heartbeat and hang periods must be positive");
    }
    if (conf->device < 0 || !(conf->device_mem_frac >= 0 && conf->device_mem_frac <= 1)) {
        return xc_errf(XC_ERR_ARG, "worker: device %d / device memory share %g out of range",
                       conf->device, conf->device_mem_frac);
    }
    if (conf->role != XC_WIRE_ROLE_ANY && conf->role != XC_WIRE_ROLE_VISION &&
        conf->role != XC_WIRE_ROLE_STAGE) {
        return xc_errf(XC_ERR_ARG, "worker: role %d is not any, vision or stage", (int)conf->role);
    }
    xc_dtype kv_dtype = XC_DTYPE_BF16;
    if (conf->kv_dtype) {
        XC_TRY(xc_kv_dtype_parse(conf->kv_dtype, &kv_dtype));
    }
    const char *bk = conf->backend ? conf->backend : "cpu";
    bool sim = !strcmp(bk, "sim");
    if (sim) {
        XC_TRY(xc_sim_cost_validate(&conf->sim));
        if (conf->sim_width < 1) {
            return xc_errf(XC_ERR_ARG, "worker: sim width must be >= 1");
        }
    }
    xc_status st = XC_OK;
    xc_worker *w = xc_calloc(1, sizeof *w);
    if (!w) {
        return XC_ERR_NOMEM;
    }
    w->conf = *conf;
    w->conf.backend = bk;
    w->kv_dtype = kv_dtype;
    w->sim = sim;
    atomic_init(&w->stat_stage, -1);
    if (conf->id && conf->id[0]) {
        snprintf(w->id, sizeof w->id, "%s", conf->id);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(w->id, sizeof w->id, "%s:%d", host, (int)getpid());
    }
    w->incarnation = new_incarnation();
    XC_TRY_GOTO(xc_arena_create(1 << 16, &w->arena), st, fail);
    XC_TRY_GOTO(xc_imgcache_create(conf->image_cache_bytes, &w->imgcache), st, fail);
    XC_TRY_GOTO(xc_transport_open(conf->endpoint ? conf->endpoint : "tcp://127.0.0.1:*",
                                  XC_TRANSPORT_RECV, conf->tconf, &w->rx),
                st, fail);
    XC_TRY_GOTO(xc_transport_open(conf->coordinator, XC_TRANSPORT_SEND, conf->tconf, &w->coord), st,
                fail);
    /* in a container the node's memory and cores are not ours: the cgroup limits cap both */
    w->host_mem = xc_cgroup_host_mem();
    if (!sim) {
        xc_backend_conf bc = {.n_threads = conf->n_threads ? conf->n_threads : xc_cgroup_cpus(),
                              .device = conf->device};
        XC_LOG_INFO("worker %s: %d CPU threads, %.0f MiB memory (node and cgroup limits)", w->id,
                    bc.n_threads, (double)w->host_mem / 1048576.0);
        XC_TRY_GOTO(xc_backend_create(bk, &bc, &w->be), st, fail);
    }
    snprintf(w->dev_name, sizeof w->dev_name, "%s", bk);
#ifdef XC_HAVE_CUDA
    if (w->be && !strcmp(bk, "cuda")) {
        xc_cuda_dev_info di;
        XC_TRY_GOTO(xc_cuda_info(w->be, &di), st, fail);
        snprintf(w->dev_name, sizeof w->dev_name, "%s", di.name);
        w->dev_mem =
            xc_worker_device_budget(di.free_bytes, conf->device_mem_frac, conf->device_mem_bytes);
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        XC_LOG_INFO("worker %s: cuda device %d (%s, CUDA_VISIBLE_DEVICES=%s): %.0f of %.0f MiB "
                    "free, %.0f MiB advertised",
                    w->id, conf->device, di.name, vis ? vis : "unset",
                    (double)di.free_bytes / 1048576.0, (double)di.total_bytes / 1048576.0,
                    (double)w->dev_mem / 1048576.0);
    }
#endif
    *out = w;
    return XC_OK;
fail:
    xc_worker_destroy(w);
    return st;
}

static void unload(xc_worker *w) {
    seqs_clear(w);
    if (w->be) {
        xc_backend_buf_free(w->be, &w->hidden);
        xc_backend_buf_free(w->be, &w->logits);
        xc_backend_buf_free(w->be, &w->img);
    }
    xc_llm_destroy(w->llm);
    xc_kv_destroy(w->kv);
    xc_vision_destroy(w->vision);
    xc_ckpt_close(w->ck);
    w->llm = NULL;
    w->kv = NULL;
    w->vision = NULL;
    w->ck = NULL;
    w->assigned = false;
    w->loaded = false;
    atomic_store(&w->adoptable, 0);
}

void xc_worker_destroy(xc_worker *w) {
    if (!w) {
        return;
    }
    if (w->hb_started) {
        atomic_store(&w->hb_stop, 1);
        pthread_join(w->hb_thread, NULL);
    }
    unload(w);
    xc_free(w->seqs);
    xc_transport_close(w->next);
    xc_transport_close(w->coord);
    xc_transport_close(w->rx);
    xc_backend_destroy(w->be);
    xc_arena_destroy(w->arena);
    xc_imgcache_destroy(w->imgcache);
    if (w->has_pend) {
        xc_msg_fini(&w->pend_msg);
    }
    xc_free(w);
}

const char *xc_worker_endpoint(const xc_worker *w) {
    return xc_transport_endpoint(w->rx);
}

void xc_worker_get_stats(xc_worker *w, xc_worker_stats *out) {
    out->busy_ns = atomic_load(&w->busy_ns);
    out->microbatches = atomic_load(&w->n_mb);
    out->rows = atomic_load(&w->n_rows);
    out->bad_messages = atomic_load(&w->n_bad);
    out->stage = atomic_load(&w->stat_stage);
    out->image_cache_hits = atomic_load(&w->vis_hits);
    out->image_cache_misses = atomic_load(&w->vis_misses);
    out->vision_encoded = atomic_load(&w->vis_encoded);
    out->vision_batches = atomic_load(&w->vis_batches);
    out->sim_model_ns = atomic_load(&w->sim_model_ns);
    out->sim_early_ns = atomic_load(&w->sim_early_ns);
    out->sim_late_ns = atomic_load(&w->sim_late_ns);
}

void xc_worker_reset_stats(xc_worker *w) {
    atomic_store(&w->busy_ns, 0);
    atomic_store(&w->n_mb, 0);
    atomic_store(&w->n_rows, 0);
    atomic_store(&w->sim_model_ns, 0);
    atomic_store(&w->sim_early_ns, 0);
    atomic_store(&w->sim_late_ns, 0);
}

/* ---- assignment ---- */

/* The first stage reads the whole token-embedding table once, at load (CPU backend: the table is
 * used in place through the checkpoint mapping). Every other weight is resident after the first
 * forward, but a lookup faults in only the rows of the ids seen, so without this the stage's
 * memory would creep towards the placement's prediction (which counts the whole table: 758 MB
 * for the real vocabulary) over days of traffic, and the first use of a rare id would wait for
 * the disk. MADV_WILLNEED starts the read-ahead; touching one byte per page maps the pages. */
static void prefault_embedding(xc_worker *w) {
    xc_tensor_view tv;
    if (!w->ck || xc_ckpt_get(w->ck, "model.tok_embeddings.weight", &tv) != XC_OK || !tv.data ||
        tv.nbytes == 0) {
        return; /* xc_llm_create has reported a missing table already */
    }
    uint64_t t0 = xc_now_ns();
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    uintptr_t lo = (uintptr_t)tv.data & ~(uintptr_t)(page - 1);
    (void)madvise((void *)lo, (uintptr_t)tv.data + tv.nbytes - lo, MADV_WILLNEED);
    const volatile unsigned char *p = tv.data;
    unsigned sum = 0;
    for (size_t i = 0; i < tv.nbytes; i += page) {
        sum += p[i];
    }
    sum += p[tv.nbytes - 1];
    (void)sum; /* the reads are volatile: they happen */
    XC_LOG_INFO("embedding table read at load: %.0f MB in %.2f s", (double)tv.nbytes / 1e6,
                (double)(xc_now_ns() - t0) * 1e-9);
}

static xc_status load_role(xc_worker *w, const xc_wire_assign *a) {
    size_t f = sizeof(float);
    if (w->sim) {
        w->hidden_size = w->conf.sim_width;
        w->vocab = 92544;
        return XC_OK;
    }
    XC_TRY(xc_model_config_load(a->model_path, &w->cfg));
    XC_TRY(xc_ckpt_open(a->model_path, &w->ck));
    w->hidden_size = w->cfg.hidden_size;
    w->vocab = w->cfg.vocab_size;
    if (a->role == XC_WIRE_ROLE_VISION) {
        XC_TRY(xc_vision_create(w->be, w->ck, &w->cfg, &w->vision));
        xc_vision_set_progress(w->vision, note_progress, w);
        return XC_OK;
    }
    if ((int)a->layer_end > w->cfg.num_hidden_layers) {
        return xc_errf(XC_ERR_ARG, "assigned layers [%u, %u) but the model has %d", a->layer_begin,
                       a->layer_end, w->cfg.num_hidden_layers);
    }
    bool last = a->stage + 1 == a->n_stages;
    xc_llm_conf lc = {.unit_begin = (int)w->unit_begin,
                      .unit_end = (int)w->unit_end,
                      .first = a->stage == 0,
                      .last = last,
                      .max_rows = (int)w->max_rows};
    XC_TRY(xc_llm_create(w->be, w->ck, &w->cfg, &lc, &w->llm));
#ifdef XC_HAVE_CUDA
    if (!strcmp(w->conf.backend, "cuda")) { /* a clear message rather than a failed cudaMalloc */
        size_t kvb = xc_kv_bytes(xc_llm_n_kv_layers(w->llm), (int)a->kv_blocks,
                                 (int)a->kv_block_size, xc_llm_kv_width(w->llm), w->kv_dtype);
        xc_cuda_dev_info di;
        XC_TRY(xc_cuda_info(w->be, &di));
        if (kvb > di.free_bytes) {
            return xc_errf(XC_ERR_NOMEM,
                           "KV pool of %u blocks needs %.0f MiB, but device %d has %.0f MiB free "
                           "after the weights (does another process share it? give each worker "
                           "a smaller --device-mem-frac)",
                           a->kv_blocks, (double)kvb / 1048576.0, w->conf.device,
                           (double)di.free_bytes / 1048576.0);
        }
    }
#endif
    xc_llm_set_progress(w->llm, note_progress, w);
    if (a->stage == 0 && !strcmp(w->conf.backend, "cpu")) {
        prefault_embedding(w);
    }
    XC_TRY(xc_kv_create(w->be, xc_llm_n_kv_layers(w->llm), (int)a->kv_blocks, (int)a->kv_block_size,
                        xc_llm_kv_width(w->llm), w->kv_dtype, &w->kv));
    XC_TRY(
        xc_backend_buf_alloc(w->be, (size_t)w->max_rows * (size_t)w->hidden_size * f, &w->hidden));
    if (last) {
        XC_TRY(xc_backend_buf_alloc(w->be, (size_t)w->max_rows * (size_t)w->vocab * f, &w->logits));
    }
    if (a->stage == 0) {
        XC_TRY(
            xc_backend_buf_alloc(w->be, (size_t)w->max_rows * (size_t)w->hidden_size * f, &w->img));
    }
    return XC_OK;
}

static const char *role_name(xc_wire_role r) {
    return r == XC_WIRE_ROLE_VISION ? "vision" : r == XC_WIRE_ROLE_STAGE ? "stage" : "any";
}

static void on_assign(xc_worker *w, const xc_wire_assign *a) {
    if (w->conf.role != XC_WIRE_ROLE_ANY && a->role != w->conf.role) {
        /* never take a role this worker did not ask for (a coordinator bug or an old one) */
        char msg[256];
        snprintf(msg, sizeof msg, "worker %s accepts only the %s role, refused a %s assignment",
                 w->id, role_name(w->conf.role), role_name(a->role));
        XC_LOG_ERROR("%s", msg);
        send_error(w, XC_ERR_ARG, msg, false);
        return;
    }
    uint32_t max_rows = a->max_rows ? a->max_rows : 256;
    uint32_t ub = a->unit_end ? a->unit_begin : 2 * a->layer_begin,
             ue = a->unit_end ? a->unit_end : 2 * a->layer_end;
    bool same = w->loaded && w->role == a->role && w->stage == a->stage &&
                w->n_stages == a->n_stages && w->unit_begin == ub && w->unit_end == ue &&
                w->kv_blocks == a->kv_blocks && w->block_size == a->kv_block_size &&
                w->max_rows == max_rows && !strcmp(w->model_path, a->model_path);
    xc_status st = XC_OK;
    seqs_clear(w); /* a (re)assignment starts every sequence afresh */
    w->epoch = a->epoch;
    if (!same) {
        unload(w);
        w->role = a->role;
        w->stage = a->stage;
        w->n_stages = a->n_stages;
        w->layer_begin = a->layer_begin;
        w->layer_end = a->layer_end;
        w->unit_begin = ub;
        w->unit_end = ue;
        w->replica = a->replica;
        w->kv_blocks = a->kv_blocks;
        w->block_size = a->kv_block_size;
        w->max_rows = max_rows;
        snprintf(w->model_path, sizeof w->model_path, "%s", a->model_path);
        uint64_t t0 = xc_now_ns();
        st = load_role(w, a);
        if (st == XC_OK) {
            XC_LOG_INFO("loaded %s in %.2f s", a->role == XC_WIRE_ROLE_VISION ? "vision" : "layers",
                        (double)(xc_now_ns() - t0) * 1e-9);
        }
    }
    if (st == XC_OK && a->role == XC_WIRE_ROLE_STAGE &&
        (!w->next || strcmp(w->next_ep, a->next_endpoint))) {
        xc_transport_close(w->next);
        w->next = NULL;
        snprintf(w->next_ep, sizeof w->next_ep, "%s", a->next_endpoint);
        st = xc_transport_open(a->next_endpoint, XC_TRANSPORT_SEND, w->conf.tconf, &w->next);
    }
    if (st != XC_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "worker %s: assignment failed: %s", w->id, xc_err_last());
        XC_LOG_ERROR("%s", msg);
        unload(w);
        send_error(w, st, msg, false);
        return;
    }
    w->assigned = true;
    w->loaded = true;
    atomic_store(&w->adoptable, 1);
    char tag[32];
    if (a->role == XC_WIRE_ROLE_VISION) {
        snprintf(tag, sizeof tag, "V");
    } else {
        if (a->replica) {
            snprintf(tag, sizeof tag, "S%u.%u", a->stage, a->replica);
        } else {
            snprintf(tag, sizeof tag, "S%u", a->stage);
        }
        atomic_store(&w->stat_stage, (int)a->stage);
    }
    xc_log_set_role(tag);
    /* KV memory: 2 (K, V) x KV layers x width x element bytes per token */
    size_t kv_tok =
        w->llm ? xc_kv_bytes(xc_llm_n_kv_layers(w->llm), 1, 1, xc_llm_kv_width(w->llm), w->kv_dtype)
               : 0;
    XC_LOG_INFO("worker %s ready: %s stage %u/%u units [%u, %u) (layers [%u, %u)) kv %u x %u "
                "%s (%zu bytes per token, %.1f MiB) next %s",
                w->id, a->role == XC_WIRE_ROLE_VISION ? "vision" : "decoder", a->stage, a->n_stages,
                w->unit_begin, w->unit_end, a->layer_begin, a->layer_end, a->kv_blocks,
                a->kv_block_size, xc_dtype_name(w->kv_dtype), kv_tok,
                (double)kv_tok * a->kv_blocks * a->kv_block_size / 1048576.0,
                a->role == XC_WIRE_ROLE_STAGE ? a->next_endpoint : "-");
    xc_wire_control c = {
        .kind = XC_WIRE_CTL_READY,
        .u.ready = {.stage = a->stage, .kv_blocks = a->kv_blocks, .worker_id = w->id}};
    if (send_control(w, w->coord, &c) != XC_OK) {
        XC_LOG_WARN("could not send ready: %s", xc_err_last());
    }
}

/* ---- vision: frames of pixels in, image embeddings back to the coordinator ---- */

#define VISION_MAX_FRAMES 64 /* frames one batch gathers, at most */

/* One vision frame of a batch: its header, its message (owned for frames the batcher received),
 * its outcome and its embeddings (n images x per floats, host memory). */
typedef struct vjob {
    xc_wire_forward f;
    xc_msg msg;
    const xc_msg *msgp;
    bool own;
    xc_status st;
    float *host;
    char err[256];
} vjob;

/* An image to encode: its pixels and where its embeddings go (dup >= 0: the same pixels as miss
 * dup earlier in the batch, copied after the encode). */
typedef struct vmiss {
    const float *px;
    float *dst;
    uint8_t key[32];
    int dup;
} vmiss;

static xc_status vision_check(xc_worker *w, const xc_wire_forward *f, const xc_msg *msg) {
    const xc_vision_info *vi = xc_vision_get_info(w->vision);
    uint32_t S = (uint32_t)vi->img_size;
    if (f->payload.dtype != XC_DTYPE_F32 || f->payload.cols != S || f->n_seqs == 0) {
        return xc_errf(XC_ERR_PROTO,
                       "vision frame must carry f32 [3*%u*n, %u] pixels, not [%u, %u]", S, S,
                       f->payload.rows, f->payload.cols);
    }
    for (size_t i = 0; i < f->n_seqs; i++) {
        if (f->seqs[i].n_tokens != 3 * S) {
            return xc_errf(XC_ERR_PROTO, "vision image %zu has %u rows, expected 3 x %u", i,
                           f->seqs[i].n_tokens, S);
        }
    }
    size_t want = f->n_seqs * 3u * (size_t)S * S * sizeof(float);
    if (msg->n < 2 || msg->frames[1].len != want) {
        return xc_errf(XC_ERR_PROTO, "vision frame: %zu pixel bytes for %zu images, expected %zu",
                       msg->n < 2 ? (size_t)0 : msg->frames[1].len, f->n_seqs, want);
    }
    return XC_OK;
}

/* Sends a frame's embeddings to the coordinator (host is handed to the transport on success). */
static xc_status vision_reply(xc_worker *w, const xc_wire_forward *f, float *host) {
    const xc_vision_info *vi = xc_vision_get_info(w->vision);
    size_t n = f->n_seqs, per = (size_t)vi->n_tokens * (size_t)vi->out_dim;
    xc_wire_seq *seqs = xc_arena_calloc(w->arena, n, sizeof *seqs);
    static const uint32_t block0 = 0;
    if (!seqs) {
        return XC_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        seqs[i] = (xc_wire_seq){.id = f->seqs[i].id,
                                .first_pos = 0,
                                .n_tokens = (uint32_t)vi->n_tokens,
                                .n_blocks = 1,
                                .block_table = &block0};
    }
    xc_wire_forward out = {.microbatch_id = f->microbatch_id,
                           .kv_block_size = VISION_BLOCK,
                           .n_seqs = n,
                           .seqs = seqs,
                           .payload = {.dtype = XC_DTYPE_F32,
                                       .rows = (uint32_t)(n * (size_t)vi->n_tokens),
                                       .cols = (uint32_t)vi->out_dim}};
    xc_frame fr = {.data = host, .len = n * per * sizeof(float), .free_fn = free_buf};
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD, .u.forward = out};
    atomic_fetch_add(&w->bytes_out, fr.len); /* api helper */
    return xc_transport_send_wire(w->coord, &m, &fr, 1, w->conf.send_timeout_ms);
}

/* Gathers more vision frames behind the first: up to --vision-batch images in all, waiting at
 * most --vision-wait-ms for them. Anything else that arrives ends the gathering and is kept for
 * the main loop. */
static int vision_gather(xc_worker *w, vjob *jobs) {
    int nj = 1, cap = w->conf.vision_batch > 1 ? w->conf.vision_batch : 1;
    size_t images = jobs[0].f.n_seqs;
    if (w->conf.vision_wait_ms <= 0 || images >= (size_t)cap) {
        return nj;
    }
    uint64_t deadline = xc_now_ns() + (uint64_t)w->conf.vision_wait_ms * 1000000u;
    while (images < (size_t)cap && nj < VISION_MAX_FRAMES) {
        uint64_t now = xc_now_ns();
        if (now >= deadline) {
            break;
        }
        int ms = (int)((deadline - now + 999999u) / 1000000u);
        xc_msg m2 = {0};
        xc_wire_msg wm;
        xc_status st = xc_transport_recv_wire(w->rx, ms, w->arena, &m2, &wm);
        if (st == XC_ERR_TIMEOUT) {
            break;
        }
        if (st != XC_OK) {
            atomic_fetch_add(&w->n_bad, 1);
            continue;
        }
        if (wm.kind != XC_WIRE_KIND_FORWARD) {
            w->pend_msg = m2;
            w->pend = wm;
            w->has_pend = true;
            break;
        }
        jobs[nj] = (vjob){.f = wm.u.forward, .msg = m2, .own = true};
        jobs[nj].msgp = &jobs[nj].msg;
        images += wm.u.forward.n_seqs;
        nj++;
    }
    return nj;
}

/* Reports a failed micro-batch to the coordinator (as on_forward does for the first frame). */
static void report_mb_failure(xc_worker *w, uint64_t mb, xc_status st, const char *why);

/* Encodes the images of one or more vision frames together: images found in the image cache are
 * copied from it, the others (each distinct image once) go through one xc_vision_encode call,
 * whose per-image results do not depend on the batch (batch-invariant kernels, per-image
 * attention). Each frame gets its own reply. Returns the first frame's status; failures of the
 * others are reported here. */
static xc_status run_vision(xc_worker *w, const xc_wire_forward *f, const xc_msg *msg) {
    if (!w->vision) { /* the sim backend takes the vision role but has no model to run */
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "worker %s has no vision model (the sim backend "
                       "simulates decoder stages only: serve it --no-vision)",
                       w->id);
    }
    const xc_vision_info *vi = xc_vision_get_info(w->vision);
    size_t per = (size_t)vi->n_tokens * (size_t)vi->out_dim;
    size_t img_px = 3u * (size_t)vi->img_size * (size_t)vi->img_size;
    vjob *jobs = xc_calloc(VISION_MAX_FRAMES, sizeof *jobs);
    if (!jobs) {
        return XC_ERR_NOMEM;
    }
    jobs[0] = (vjob){.f = *f, .msgp = msg};
    /* a frame whose images are all in the image cache needs no encode: it is answered at once
     * instead of waiting --vision-wait-ms for frames to batch with (its keys are kept for below) */
    bool caching = w->conf.image_cache_bytes > 0, all_cached = false;
    uint8_t(*keys0)[32] = NULL;
    if (caching && vision_check(w, f, msg) == XC_OK) {
        keys0 = xc_malloc(f->n_seqs * sizeof *keys0);
        all_cached = keys0 != NULL;
        const float *px = msg->frames[1].data;
        for (size_t i = 0; keys0 && i < f->n_seqs; i++) {
            xc_imgcache_key(px + i * img_px, img_px * sizeof(float), keys0[i]);
            all_cached = all_cached && xc_imgcache_has(w->imgcache, keys0[i], per);
        }
    }
    int nj = all_cached ? 1 : vision_gather(w, jobs);
    size_t total = 0;
    for (int j = 0; j < nj; j++) {
        vjob *J = &jobs[j];
        J->st = vision_check(w, &J->f, J->msgp);
        if (J->st == XC_OK) {
            J->host = xc_malloc(J->f.n_seqs * per * sizeof(float));
            J->st = J->host ? XC_OK : XC_ERR_NOMEM;
        }
        if (J->st != XC_OK) {
            snprintf(J->err, sizeof J->err, "%s", xc_err_last());
        } else {
            total += J->f.n_seqs;
        }
    }
    vmiss *miss = xc_calloc(total + 1, sizeof *miss);
    xc_status st = miss ? XC_OK : XC_ERR_NOMEM;
    int n_miss = 0, n_enc = 0;
    for (int j = 0; j < nj && st == XC_OK; j++) {
        vjob *J = &jobs[j];
        if (J->st != XC_OK) {
            continue;
        }
        const float *px = J->msgp->frames[1].data;
        for (size_t i = 0; i < J->f.n_seqs; i++) {
            vmiss *v = &miss[n_miss];
            *v = (vmiss){.px = px + i * img_px, .dst = J->host + i * per, .dup = -1};
            if (caching && j == 0 && keys0) {
                memcpy(v->key, keys0[i], sizeof v->key);
            } else if (caching) {
                xc_imgcache_key(v->px, img_px * sizeof(float), v->key);
            }
            if (caching) {
                if (xc_imgcache_get(w->imgcache, v->key, v->dst, per)) {
                    atomic_fetch_add(&w->vis_hits, 1);
                    continue;
                }
                atomic_fetch_add(&w->vis_misses, 1);
                for (int k = 0; k < n_miss && v->dup < 0; k++) {
                    if (miss[k].dup < 0 && !memcmp(miss[k].key, v->key, 32)) {
                        v->dup = k;
                    }
                }
            }
            if (!caching) { /* every image is a miss when the cache is off */
                atomic_fetch_add(&w->vis_misses, 1);
            }
            n_enc += v->dup < 0;
            n_miss++;
        }
    }
    /* the distinct misses, packed: pixels in, embeddings out */
    float *px_all = NULL, *emb = NULL;
    xc_buf dev = {0};
    if (st == XC_OK && n_enc > 0) {
        px_all = xc_malloc((size_t)n_enc * img_px * sizeof(float));
        emb = xc_malloc((size_t)n_enc * per * sizeof(float));
        st = px_all && emb ? XC_OK : XC_ERR_NOMEM;
        for (int k = 0, e = 0; st == XC_OK && k < n_miss; k++) {
            if (miss[k].dup < 0) {
                memcpy(px_all + (size_t)e++ * img_px, miss[k].px, img_px * sizeof(float));
            }
        }
        if (st == XC_OK) {
            st = xc_backend_buf_alloc(w->be, (size_t)n_enc * per * sizeof(float), &dev);
        }
        if (st == XC_OK) {
            st = xc_vision_encode(w->vision, px_all, n_enc, dev.data, NULL);
        }
        if (st == XC_OK) {
            st = xc_backend_copy_out(w->be, emb, dev.data, (size_t)n_enc * per * sizeof(float));
        }
        xc_backend_buf_free(w->be, &dev);
        atomic_fetch_add(&w->vis_batches, 1);
        atomic_fetch_add(&w->vis_encoded, (uint64_t)n_enc);
    }
    for (int k = 0, e = 0; st == XC_OK && k < n_miss; k++) {
        const float *src = miss[k].dup < 0 ? emb + (size_t)e++ * per : miss[miss[k].dup].dst;
        memcpy(miss[k].dst, src, per * sizeof(float));
        if (caching && miss[k].dup < 0 &&
            xc_imgcache_put(w->imgcache, miss[k].key, src, per) != XC_OK) {
            XC_LOG_WARN("image cache: %s", xc_err_last());
        }
    }
    if (st != XC_OK) { /* the encode failed: every frame that needed it fails */
        for (int j = 0; j < nj; j++) {
            if (jobs[j].st == XC_OK) {
                jobs[j].st = st;
                snprintf(jobs[j].err, sizeof jobs[j].err, "%s", xc_err_last());
            }
        }
    }
    xc_free(px_all);
    xc_free(emb);
    xc_free(miss);
    xc_free(keys0);
    for (int j = 0; j < nj; j++) {
        vjob *J = &jobs[j];
        if (J->st == XC_OK) {
            J->st = vision_reply(w, &J->f, J->host);
            if (J->st == XC_OK) {
                J->host = NULL; /* the transport frees it */
            } else {
                snprintf(J->err, sizeof J->err, "%s", xc_err_last());
            }
        }
        xc_free(J->host);
        if (j > 0) {
            atomic_fetch_add(&w->n_mb, 1);
            if (J->st != XC_OK) {
                report_mb_failure(w, J->f.microbatch_id, J->st, J->err);
            }
        }
        if (J->own) {
            xc_msg_fini(&J->msg);
        }
    }
    st = jobs[0].st;
    if (st != XC_OK) {
        xc_errf(st, "%s", jobs[0].err); /* the first frame's error, for on_forward's report */
    }
    xc_free(jobs);
    return st;
}

/* ---- decoder stage ---- */

/* Checks what the wire decoder cannot know: block ids against this stage's KV, rows against the
 * scratch, payload shape against the role. */
static xc_status check_stage_frame(xc_worker *w, const xc_wire_forward *f) {
    bool first = w->stage == 0;
    if (f->payload.rows > w->max_rows) {
        return xc_errf(XC_ERR_PROTO, "micro-batch of %u rows exceeds max_rows %u", f->payload.rows,
                       w->max_rows);
    }
    if (f->n_seqs > 0 && f->kv_block_size != w->block_size) {
        return xc_errf(XC_ERR_PROTO, "kv_block_size %u but this stage has %u", f->kv_block_size,
                       w->block_size);
    }
    if (first ? f->payload.dtype != XC_DTYPE_I32
              : (f->payload.dtype != XC_DTYPE_F32 || f->payload.cols != (uint32_t)w->hidden_size)) {
        return xc_errf(XC_ERR_PROTO, "stage %u got a %s [%u, %u] payload", w->stage,
                       xc_dtype_name(f->payload.dtype), f->payload.rows, f->payload.cols);
    }
    if (f->has_image_rows &&
        (f->image_rows.dtype != XC_DTYPE_F32 || f->image_rows.cols != (uint32_t)w->hidden_size)) {
        return xc_errf(XC_ERR_PROTO, "image rows must be f32 [n, %d]", w->hidden_size);
    }
    for (size_t i = 0; i < f->n_seqs; i++) {
        const xc_wire_seq *s = &f->seqs[i];
        for (size_t k = 0; k < s->n_blocks; k++) {
            if (s->block_table[k] >= w->kv_blocks) {
                return xc_errf(XC_ERR_PROTO, "seq %llu: block %u is not below %u",
                               (unsigned long long)s->id, s->block_table[k], w->kv_blocks);
            }
        }
    }
    for (size_t i = 0; i < f->n_copies; i++) {
        if (f->copy_src[i] >= w->kv_blocks || f->copy_dst[i] >= w->kv_blocks) {
            return xc_errf(XC_ERR_PROTO, "block copy %u -> %u: not below %u", f->copy_src[i],
                           f->copy_dst[i], w->kv_blocks);
        }
    }
    return XC_OK;
}

/* issue 13.3 (n > 1 shares one prefill): f's sequences followed by their forks, each fork a copy
 * of its parent's entry with its own id and sampling; row_of[i] = the parent's index (its logits
 * row). Without forks, f itself and row_of = NULL. */
static xc_status expand_forks(xc_worker *w, const xc_wire_forward *f, xc_wire_forward *out,
                              size_t **row_of) {
    *out = *f;
    *row_of = NULL;
    size_t n = f->n_seqs;
    for (size_t i = 0; i < f->n_seqs; i++) {
        n += f->seqs[i].n_forks;
    }
    if (n == f->n_seqs) {
        return XC_OK;
    }
    xc_wire_seq *vs = xc_arena_alloc(w->arena, n * sizeof *vs);
    size_t *ro = xc_arena_alloc(w->arena, n * sizeof *ro);
    if (!vs || !ro) {
        return XC_ERR_NOMEM;
    }
    size_t k = f->n_seqs;
    for (size_t i = 0; i < f->n_seqs; i++) {
        vs[i] = f->seqs[i];
        ro[i] = i;
        for (size_t j = 0; j < f->seqs[i].n_forks; j++, k++) {
            vs[k] = f->seqs[i];
            vs[k].id = f->seqs[i].forks[j].id;
            vs[k].sampling = f->seqs[i].forks[j].sampling;
            vs[k].n_forks = 0;
            vs[k].forks = NULL;
            ro[k] = i;
        }
    }
    out->seqs = vs;
    out->n_seqs = n;
    *row_of = ro;
    return XC_OK;
}

/* issue 13.3: the micro-batch's KV block copies (copy on write of forks' partial last blocks),
 * before its rows run. */
static xc_status apply_copies(xc_worker *w, const xc_wire_forward *f) {
    for (size_t i = 0; i < f->n_copies && w->kv; i++) {
        XC_TRY(xc_kv_copy_block(w->kv, (int)f->copy_src[i], (int)f->copy_dst[i]));
    }
    return XC_OK;
}

static bool wants_token(const seq_state *s, const xc_wire_seq *q) {
    return s->prompt_len == 0 || q->first_pos + q->n_tokens >= s->prompt_len;
}

/* lp (api helper): per sequence of f, the token's logprob (NaN = none asked), n_top and up to 20
 * alternatives at [i * 20]; NULL when no sequence asked. */
typedef struct result_lp {
    float *lp;
    uint32_t *n_top;
    int32_t *top_ids;
    float *top_lps;
} result_lp;

/* Per-sequence failures on the last stage (index of f->seqs): code 0 = none. Such a sequence
 * fails alone (Result.failed_*): the micro-batch, the replica and the other sequences go on. */
typedef struct seq_fail {
    int32_t *code;
    const char **msg;
    size_t n;
} seq_fail;

static xc_status seq_fail_init(xc_worker *w, size_t n_seqs, seq_fail *sf) {
    sf->code = xc_arena_calloc(w->arena, n_seqs + 1, sizeof(int32_t));
    sf->msg = xc_arena_calloc(w->arena, n_seqs + 1, sizeof(const char *));
    sf->n = 0;
    return sf->code && sf->msg ? XC_OK : XC_ERR_NOMEM;
}

/* Records that sequence i of f failed with st (message: xc_err_last()). */
static void seq_fail_set(xc_worker *w, seq_fail *sf, const xc_wire_forward *f, size_t i,
                         xc_status st) {
    if (sf->code[i]) {
        return;
    }
    char m[512];
    snprintf(m, sizeof m, "stage %u: sequence %llu failed: %s", w->stage,
             (unsigned long long)f->seqs[i].id, xc_err_last());
    XC_LOG_WARN("%s", m);
    size_t len = strlen(m) + 1;
    char *copy = xc_arena_alloc(w->arena, len);
    if (copy) {
        memcpy(copy, m, len);
    }
    sf->code[i] = st < 0 ? st : XC_ERR_ARG;
    sf->msg[i] = copy ? copy : "sequence failed on the last stage";
    sf->n++;
}

#ifdef XC_HAVE_CUDA
/* The last stage on CUDA (issue 13.7): the rows whose next draw the device can make
 * (xc_sampler_plan_next) are sampled together on the device, and only their ids and requested
 * logprobs come back; done[i] marks them. Other rows (logit_bias, min_tokens, frequency/presence
 * penalties, min_p) are left to the host path. */
static xc_status sample_on_device(xc_worker *w, const xc_wire_forward *f, size_t n_orig,
                                  seq_fail *sf, int32_t *toks, bool *want, result_lp *lp,
                                  bool *done, const size_t *row_of) {
    size_t m = f->n_seqs;
    /* issue 13.3: the device sampler changes a row's logits in place, so each fork (entries
     * n_orig.. of f) samples its own copy of its parent's row, made in the spare rows after the
     * micro-batch's; with too few spare rows the host path samples every row (nothing changed) */
    if (row_of) {
        if (m > w->max_rows) {
            return XC_OK;
        }
        float *lg = w->logits.data;
        int V = w->vocab;
        for (size_t i = n_orig; i < m; i++) {
            xc_copy2d_args a = {.src = lg + row_of[i] * (size_t)V,
                                .dst = lg + i * (size_t)V,
                                .m = 1,
                                .n = V,
                                .lds = V,
                                .ldd = V};
            XC_TRY(xc_backend_copy2d(w->be, &a));
        }
    }
    xc_cuda_sample_row *rows = xc_arena_alloc(w->arena, m * sizeof *rows + 1);
    size_t *at = xc_arena_alloc(w->arena, m * sizeof *at + 1);
    int32_t *tk = xc_arena_alloc(w->arena, m * sizeof *tk + 4);
    float *lpv = xc_arena_alloc(w->arena, m * sizeof *lpv + 4);
    int32_t *tid = xc_arena_alloc(w->arena, m * 20 * sizeof *tid + 4);
    float *tlp = xc_arena_alloc(w->arena, m * 20 * sizeof *tlp + 4);
    if (!rows || !at || !tk || !lpv || !tid || !tlp) {
        return XC_OK; /* the host path samples them all */
    }
    int n = 0;
    for (size_t i = 0; i < m; i++) {
        seq_state *s = sf->code[i] ? NULL : seq_find(w, f->seqs[i].id);
        xc_sampler_plan pl;
        if (!s || !wants_token(s, &f->seqs[i]) || !xc_sampler_plan_next(s->smp, &pl)) {
            continue;
        }
        rows[n] = (xc_cuda_sample_row){.row = (int)i, /* a fork: its copy of its parent's row */
                                       .greedy = pl.greedy,
                                       .temperature = pl.temperature,
                                       .top_k = pl.top_k,
                                       .top_p = pl.top_p,
                                       .repetition_penalty = pl.repetition_penalty,
                                       .seen = pl.seen,
                                       .n_seen = pl.n_seen,
                                       .u = pl.u,
                                       .top_logprobs = s->logprobs && lp ? (int)s->top : -1};
        at[n++] = i;
    }
    if (n == 0) {
        return XC_OK;
    }
    XC_TRY(xc_cuda_sample(w->be, w->logits.data, w->vocab, w->vocab, rows, n, tk, lpv, tid, tlp));
    for (int j = 0; j < n; j++) {
        size_t i = at[j];
        seq_state *s = seq_find(w, f->seqs[i].id);
        done[i] = true;
        xc_status ss = xc_sampler_accept(s->smp, tk[j]);
        if (ss != XC_OK) {
            seq_fail_set(w, sf, f, i, ss);
            continue;
        }
        toks[i] = tk[j];
        want[i] = true;
        if (rows[j].top_logprobs >= 0) {
            lp->lp[i] = lpv[j];
            lp->n_top[i] = s->top;
            memcpy(lp->top_ids + i * 20, tid + (size_t)j * 20, s->top * sizeof(int32_t));
            memcpy(lp->top_lps + i * 20, tlp + (size_t)j * 20, s->top * sizeof(float));
        }
    }
    return XC_OK;
}
#endif

static xc_status send_result(xc_worker *w, const xc_wire_forward *f, const int32_t *toks,
                             const bool *want, const result_lp *lp, const seq_fail *sf) {
    uint64_t *ids = xc_arena_alloc(w->arena, f->n_seqs * sizeof(uint64_t) + 8);
    uint32_t *tk = xc_arena_alloc(w->arena, f->n_seqs * sizeof(uint32_t) + 4);
    float *lps = xc_arena_alloc(w->arena, f->n_seqs * sizeof(float) + 4);
    uint32_t *nt = xc_arena_alloc(w->arena, f->n_seqs * sizeof(uint32_t) + 4);
    uint32_t *tid = xc_arena_alloc(w->arena, f->n_seqs * 20 * sizeof(uint32_t) + 4);
    float *tlp = xc_arena_alloc(w->arena, f->n_seqs * 20 * sizeof(float) + 4);
    if (!ids || !tk || !lps || !nt || !tid || !tlp) {
        return XC_ERR_NOMEM;
    }
    size_t n = 0, n_top = 0, n_failed = 0;
    uint64_t *fid = NULL;
    int32_t *fcode = NULL;
    const char **fmsg = NULL;
    if (sf && sf->n > 0) {
        fid = xc_arena_alloc(w->arena, sf->n * sizeof(uint64_t));
        fcode = xc_arena_alloc(w->arena, sf->n * sizeof(int32_t));
        fmsg = xc_arena_alloc(w->arena, sf->n * sizeof(const char *));
        if (!fid || !fcode || !fmsg) {
            return XC_ERR_NOMEM;
        }
        for (size_t i = 0; i < f->n_seqs; i++) {
            if (sf->code[i]) {
                fid[n_failed] = f->seqs[i].id;
                fcode[n_failed] = sf->code[i];
                fmsg[n_failed++] = sf->msg[i];
            }
        }
    }
    for (size_t i = 0; i < f->n_seqs; i++) {
        if (want[i] && !(sf && sf->code[i])) {
            ids[n] = f->seqs[i].id;
            lps[n] = lp && lp->lp[i] == lp->lp[i] ? lp->lp[i] : 0.0f;
            nt[n] = lp && lp->lp[i] == lp->lp[i] ? lp->n_top[i] : 0;
            for (uint32_t k = 0; k < nt[n]; k++) {
                tid[n_top] = (uint32_t)lp->top_ids[i * 20 + k];
                tlp[n_top++] = lp->top_lps[i * 20 + k];
            }
            tk[n++] = (uint32_t)toks[i];
        }
    }
    xc_wire_msg m = {.kind = XC_WIRE_KIND_RESULT,
                     .u.result = {.microbatch_id = f->microbatch_id,
                                  .n = n,
                                  .seq_ids = ids,
                                  .tokens = tk,
                                  .n_logprobs = lp ? n : 0,
                                  .logprobs = lps,
                                  .n_top = nt,
                                  .n_top_ids = lp ? n_top : 0,
                                  .top_ids = tid,
                                  .top_logprobs = tlp,
                                  .n_failed = n_failed,
                                  .failed_ids = fid,
                                  .failed_codes = fcode,
                                  .failed_messages = fmsg}};
    atomic_fetch_add(&w->bytes_out, n * (sizeof(uint64_t) + sizeof(uint32_t)));
    return xc_transport_send_wire(w->next, &m, NULL, 0, w->conf.send_timeout_ms);
}

/* Sends the hidden rows host (rows, cols) on with f's header; takes host on XC_OK. */
static xc_status send_on(xc_worker *w, const xc_wire_forward *f, float *host, uint32_t cols) {
    xc_wire_forward out = *f;
    out.has_image_rows = false;
    out.payload = (xc_wire_tensor){.dtype = XC_DTYPE_F32, .rows = f->payload.rows, .cols = cols};
    xc_frame fr = {
        .data = host, .len = (size_t)f->payload.rows * cols * sizeof(float), .free_fn = free_buf};
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD, .u.forward = out};
    atomic_fetch_add(&w->bytes_out, fr.len); /* api helper */
    return xc_transport_send_wire(w->next, &m, &fr, 1, w->conf.send_timeout_ms);
}

/* A micro-batch without rows carries only release ids (the coordinator sends one when it has
 * sequences to release and nothing to compute): pass it on, or answer it from the last stage. */
static xc_status pass_releases(xc_worker *w, const xc_wire_forward *f, bool last) {
    if (last) {
        return send_result(w, f, NULL, NULL, NULL, NULL);
    }
    float *none = xc_malloc(sizeof(float));
    if (!none) {
        return XC_ERR_NOMEM;
    }
    xc_status st = send_on(w, f, none, (uint32_t)w->hidden_size); /* rows 0 */
    if (st != XC_OK) {
        xc_free(none);
    }
    return st;
}

static xc_status run_stage(xc_worker *w, const xc_wire_forward *f, const xc_msg *msg) {
    XC_TRY(check_stage_frame(w, f));
    bool first = w->stage == 0, last = w->stage + 1 == w->n_stages;
    if (!w->sim) {
        XC_TRY(apply_copies(w, f)); /* before any row of this micro-batch runs */
    }
    if (f->n_seqs == 0) {
        return pass_releases(w, f, last);
    }
    /* fs: the sequences and their forks (issue 13.3), which are registered and sampled like the
     * others; a fork's logits row is its parent's (row_of) */
    xc_wire_forward fx;
    size_t *row_of = NULL;
    XC_TRY(expand_forks(w, f, &fx, &row_of));
    const xc_wire_forward *fs = &fx;
    seq_fail sf = {0};
    if (last) {
        XC_TRY(seq_fail_init(w, fs->n_seqs, &sf));
    }
    /* every stage knows the live sequences (the last one with a sampler each), so that a
     * release is seen to reach all of them (Heartbeat.live_sequences). On the last stage a
     * sequence whose sampler cannot be made, or that it does not know, fails alone; elsewhere the
     * state only counts sequences, so failing to record one fails nothing. */
    for (size_t i = 0; i < fs->n_seqs; i++) {
        const xc_wire_seq *q = &fs->seqs[i];
        xc_status st = XC_OK;
        if (i >= f->n_seqs && q->sampling->prompt_len != q->first_pos + q->n_tokens) {
            st = xc_errf(XC_ERR_PROTO,
                         "fork %llu: its prompt of %u rows does not end with its "
                         "parent's chunk at %u",
                         (unsigned long long)q->id, q->sampling->prompt_len,
                         q->first_pos + q->n_tokens);
        } else if (q->sampling) {
            st = seq_add(w, q->id, q->sampling);
        } else if (last && !seq_find(w, q->id)) {
            st = xc_errf(XC_ERR_PROTO, "sequence %llu is unknown here and has no sampling params",
                         (unsigned long long)q->id);
        }
        if (st != XC_OK && last) {
            seq_fail_set(w, &sf, fs, i, st);
        } else if (st != XC_OK) {
            XC_LOG_WARN("stage %u: sequence %llu not recorded: %s", w->stage,
                        (unsigned long long)q->id, xc_err_last());
        }
    }
    size_t rows = f->payload.rows, H = (size_t)w->hidden_size;
    int32_t *toks = xc_arena_calloc(w->arena, fs->n_seqs + 1, sizeof(int32_t));
    bool *want = xc_arena_calloc(w->arena, fs->n_seqs + 1, sizeof(bool));
    if (!toks || !want) {
        return XC_ERR_NOMEM;
    }
    if (w->sim) {
        int n_logit = 0;
        for (size_t i = 0; i < fs->n_seqs; i++) {
            seq_state *s = last && !sf.code[i] ? seq_find(w, fs->seqs[i].id) : NULL;
            if (s && wants_token(s, &fs->seqs[i])) {
                want[i] = true;
                toks[i] =
                    xc_sim_token(s->id, fs->seqs[i].first_pos + fs->seqs[i].n_tokens, w->vocab);
                n_logit += i < f->n_seqs;
            }
        }
        double us = xc_sim_units_stage_us(&w->conf.sim, (int)w->unit_begin, (int)w->unit_end, first,
                                          last, (int)rows, n_logit);
        uint64_t picked = xc_now_ns();
        uint64_t t0 = xc_sim_start_ns(picked, msg->queued_ns, w->sim_free_ns);
        xc_sim_wait_until(t0, us);
        uint64_t end = t0 + (uint64_t)(us * 1000.0), woke = xc_now_ns();
        w->sim_free_ns = end;
        atomic_fetch_add(&w->sim_model_ns, end - t0);
        atomic_fetch_add(&w->sim_early_ns, picked - t0);
        atomic_fetch_add(&w->sim_late_ns, woke > end ? woke - end : 0);
        if (last) {
            return send_result(w, fs, toks, want, NULL, &sf);
        }
        float *host = xc_calloc(rows * (size_t)w->conf.sim_width + 1, sizeof(float));
        if (!host) {
            return XC_ERR_NOMEM;
        }
        xc_status st = send_on(w, f, host, (uint32_t)w->conf.sim_width);
        if (st != XC_OK) {
            xc_free(host);
        }
        return st;
    }

    /* the batch: int32 block tables and row ranges from the header */
    xc_llm_seq *ls = xc_arena_calloc(w->arena, f->n_seqs + 1, sizeof *ls);
    int32_t *ids = first ? xc_arena_alloc(w->arena, rows * sizeof(int32_t) + 4) : NULL;
    if (!ls || (first && !ids)) {
        return XC_ERR_NOMEM;
    }
    for (size_t i = 0; i < f->n_seqs; i++) {
        const xc_wire_seq *q = &f->seqs[i];
        int32_t *bt = xc_arena_alloc(w->arena, q->n_blocks * sizeof(int32_t) + 4);
        xc_row_range *rr = xc_arena_alloc(w->arena, (q->n_image_ranges + 1) * sizeof *rr);
        if (!bt || !rr) {
            return XC_ERR_NOMEM;
        }
        for (size_t k = 0; k < q->n_blocks; k++) {
            bt[k] = (int32_t)q->block_table[k];
        }
        for (size_t k = 0; k < q->n_image_ranges; k++) {
            rr[k] =
                (xc_row_range){(int32_t)q->image_ranges[k].start, (int32_t)q->image_ranges[k].end};
        }
        ls[i] = (xc_llm_seq){.n_tokens = (int)q->n_tokens,
                             .pos0 = (int)q->first_pos,
                             .block_table = bt,
                             .img = rr,
                             .n_img = (int)q->n_image_ranges};
    }
    if (first) {
        memcpy(ids, msg->frames[1].data, rows * sizeof(int32_t));
        size_t row = 0;
        for (size_t i = 0; i < f->n_seqs; i++) {
            const xc_wire_seq *q = &f->seqs[i];
            for (uint32_t t = 0, r = 0; t < q->n_tokens; t++, row++) {
                while (r < q->n_image_ranges && t >= q->image_ranges[r].end) {
                    r++;
                }
                bool in_img = r < q->n_image_ranges && t >= q->image_ranges[r].start;
                if (!in_img && (ids[row] < 0 || ids[row] >= w->vocab)) {
                    return xc_errf(XC_ERR_PROTO, "token id %d outside the vocabulary of %d",
                                   ids[row], w->vocab);
                }
            }
        }
        if (f->has_image_rows) {
            XC_TRY(xc_backend_copy_in(w->be, w->img.data, msg->frames[2].data, msg->frames[2].len));
        }
    } else {
        XC_TRY(xc_backend_copy_in(w->be, w->hidden.data, msg->frames[1].data,
                                  rows * H * sizeof(float)));
    }
    xc_llm_batch b = {.seqs = ls,
                      .n_seqs = (int)f->n_seqs,
                      .n_rows = (int)rows,
                      .ids = ids,
                      .img_embeds = f->has_image_rows ? w->img.data : NULL,
                      .all_logits = false,
                      .last_rows_only = true}; /* the last stage samples; it sends no hidden */
    XC_TRY(xc_llm_forward(w->llm, w->kv, &b, w->hidden.data, last ? w->logits.data : NULL));
    if (last) {
        float *host = xc_malloc((size_t)w->vocab * sizeof(float));
        if (!host) {
            return XC_ERR_NOMEM;
        }
        xc_status st = XC_OK;
        result_lp lp = {0}; /* api helper: logprobs for the sequences that asked */
        bool any_lp = false;
        for (size_t i = 0; i < fs->n_seqs; i++) {
            seq_state *s = seq_find(w, fs->seqs[i].id);
            any_lp = any_lp || (s && s->logprobs);
        }
        if (any_lp) {
            lp.lp = xc_arena_alloc(w->arena, fs->n_seqs * sizeof(float) + 4);
            lp.n_top = xc_arena_calloc(w->arena, fs->n_seqs + 1, sizeof(uint32_t));
            lp.top_ids = xc_arena_alloc(w->arena, fs->n_seqs * 20 * sizeof(int32_t) + 4);
            lp.top_lps = xc_arena_alloc(w->arena, fs->n_seqs * 20 * sizeof(float) + 4);
            if (!lp.lp || !lp.n_top || !lp.top_ids || !lp.top_lps) {
                xc_free(host);
                return XC_ERR_NOMEM;
            }
            for (size_t i = 0; i < fs->n_seqs; i++) {
                lp.lp[i] = NAN;
            }
        }
        bool *done = xc_arena_calloc(w->arena, fs->n_seqs + 1, sizeof *done);
        if (!done) {
            xc_free(host);
            return XC_ERR_NOMEM;
        }
#ifdef XC_HAVE_CUDA
        if (strcmp(xc_backend_name(w->be), "cuda") == 0) {
            st = sample_on_device(w, fs, f->n_seqs, &sf, toks, want, any_lp ? &lp : NULL, done,
                                  row_of);
        }
#endif
        for (size_t i = 0; i < fs->n_seqs && st == XC_OK; i++) {
            seq_state *s = sf.code[i] || done[i] ? NULL : seq_find(w, fs->seqs[i].id);
            if (!s || !wants_token(s, &fs->seqs[i])) {
                continue;
            }
            /* a device copy that fails fails the micro-batch; sampling fails one sequence */
            size_t row = row_of ? row_of[i] : i;
            st = xc_backend_copy_out(w->be, host,
                                     (const float *)w->logits.data + row * (size_t)w->vocab,
                                     (size_t)w->vocab * sizeof(float));
            if (st != XC_OK) {
                break;
            }
            xc_status ss = xc_sampler_sample(s->smp, host, &toks[i]);
            if (ss == XC_OK && s->logprobs) {
                lp.n_top[i] = s->top;
                ss = xc_sampler_logprobs(host, w->vocab, toks[i], (int)s->top, &lp.lp[i],
                                         lp.top_ids + i * 20, lp.top_lps + i * 20);
            }
            if (ss != XC_OK) {
                seq_fail_set(w, &sf, fs, i, ss);
                continue;
            }
            want[i] = true;
        }
        xc_free(host);
        XC_TRY(st);
        return send_result(w, fs, toks, want, any_lp ? &lp : NULL, &sf);
    }
    float *host = xc_malloc(rows * H * sizeof(float) + 4);
    if (!host) {
        return XC_ERR_NOMEM;
    }
    xc_status st = xc_backend_copy_out(w->be, host, w->hidden.data, rows * H * sizeof(float));
    if (st == XC_OK) {
        st = send_on(w, f, host, (uint32_t)H);
    }
    if (st != XC_OK) {
        xc_free(host);
    }
    return st;
}

static void on_forward(xc_worker *w, const xc_wire_forward *f, const xc_msg *msg) {
    if (!w->assigned) {
        atomic_fetch_add(&w->n_bad, 1);
        XC_LOG_WARN("dropped forward %llu: no role assigned yet",
                    (unsigned long long)f->microbatch_id);
        return;
    }
    if (w->role == XC_WIRE_ROLE_STAGE && f->epoch && w->epoch && f->epoch != w->epoch) {
        /* left over from before the replica was re-formed: its KV blocks may belong to other
         * sequences now, so it must not run */
        XC_LOG_DEBUG("dropped forward %llu of epoch %u (the replica is in epoch %u)",
                     (unsigned long long)f->microbatch_id, f->epoch, w->epoch);
        return;
    }
    uint64_t t0 = xc_now_ns();
    xc_status st = w->role == XC_WIRE_ROLE_VISION ? run_vision(w, f, msg) : run_stage(w, f, msg);
    if (w->role == XC_WIRE_ROLE_STAGE) {
        for (size_t i = 0; i < f->n_release; i++) {
            seq_drop(w, f->release_ids[i]);
        }
        if (f->n_release > 0) {
            XC_LOG_DEBUG("stage %u: released %zu sequence(s) (micro-batch %llu, %zu rows), %zu "
                         "live",
                         w->stage, f->n_release, (unsigned long long)f->microbatch_id,
                         (size_t)f->payload.rows, w->n_seqs);
        }
    }
    atomic_fetch_add(&w->busy_ns, xc_now_ns() - t0);
    atomic_fetch_add(&w->n_mb, 1);
    atomic_fetch_add(&w->n_rows, f->payload.rows);
    if (st != XC_OK) {
        report_mb_failure(w, f->microbatch_id, st, xc_err_last());
    }
}

static void report_mb_failure(xc_worker *w, uint64_t mb, xc_status st, const char *why) {
    char m[512];
    snprintf(m, sizeof m, "worker %s: micro-batch %llu failed: %s", w->id, (unsigned long long)mb,
             why);
    XC_LOG_WARN("%s", m);
    if (st == XC_ERR_PROTO) {
        atomic_fetch_add(&w->n_bad, 1);
    }
    xc_wire_control c = {.kind = XC_WIRE_CTL_ERROR,
                         .u.error = {.code = st < 0 ? st : XC_ERR_ARG,
                                     .message = m,
                                     .fatal = st == XC_ERR_DEVICE,
                                     .has_microbatch = true,
                                     .microbatch_id = mb,
                                     .worker_id = w->id}};
    (void)send_control(w, w->coord, &c);
}

/* ---- loop ---- */

uint64_t xc_worker_device_budget(uint64_t free_bytes, double frac, uint64_t cap) {
    double f = frac > 0 && frac <= 1 ? frac : 0.9;
    uint64_t b = (uint64_t)((double)free_bytes * f);
    return cap && cap < b ? cap : b;
}

static xc_status send_register(xc_worker *w) {
    xc_wire_control c = {
        .kind = XC_WIRE_CTL_REGISTER,
        .u.reg = {.worker_id = w->id,
                  .backend = w->be && !strcmp(w->conf.backend, "cuda") ? XC_WIRE_BACKEND_CUDA
                                                                       : XC_WIRE_BACKEND_CPU,
                  .device_mem_bytes = w->dev_mem,
                  .host_mem_bytes = w->conf.mem_bytes ? w->conf.mem_bytes : w->host_mem,
                  .endpoint = xc_transport_endpoint(w->rx),
                  .device_name = w->dev_name,
                  .role = w->conf.role,
                  .incarnation = w->incarnation,
                  .kv_elem_bytes = (uint32_t)xc_dtype_size(w->kv_dtype)}};
    return send_control(w, w->coord, &c);
}

xc_status xc_worker_run(xc_worker *w, volatile sig_atomic_t *stop) {
    if (w->sim) {
        xc_sim_thread_precise();
    }
    atomic_store(&w->progress_ns, xc_now_ns());
    if (!w->hb_started) {
        atomic_store(&w->hb_stop, 0);
        if (pthread_create(&w->hb_thread, NULL, hb_main, w) != 0) {
            return xc_errf(XC_ERR_IO, "worker: cannot start the heartbeat thread");
        }
        w->hb_started = true;
    }
    XC_LOG_INFO("worker %s listening on %s, coordinator %s, backend %s, role %s", w->id,
                xc_transport_endpoint(w->rx), w->conf.coordinator, w->conf.backend,
                role_name(w->conf.role));
    uint64_t last_reg = 0, last_coord = xc_now_ns(); /* last message from the coordinator */
    xc_status ret = XC_OK;
    while (!*stop) {
        uint64_t now = xc_now_ns();
        if (w->conf.orphan_s > 0 && now - last_coord > (uint64_t)(w->conf.orphan_s * 1e9)) {
            ret = xc_errf(XC_ERR_TIMEOUT,
                          "worker %s: no message from the coordinator for %.1f s "
                          "(--orphan-timeout): it is gone",
                          w->id, (double)(now - last_coord) * 1e-9);
            XC_LOG_ERROR("%s", xc_err_last());
            break;
        }
        /* until assigned, re-register every 2 s: the coordinator may start after us, or may have
         * restarted */
        if (!w->assigned && (last_reg == 0 || now - last_reg > 2000000000ull)) {
            last_reg = now;
            if (send_register(w) != XC_OK) {
                XC_LOG_DEBUG("register: %s", xc_err_last());
            }
        }
        xc_msg msg = {0};
        xc_wire_msg m;
        xc_status st = XC_OK;
        if (w->has_pend) { /* kept by the vision batcher; its data lives in the arena */
            msg = w->pend_msg;
            m = w->pend;
            w->has_pend = false;
        } else {
            xc_arena_reset(w->arena);
            st = xc_transport_recv_wire(w->rx, 100, w->arena, &msg, &m);
        }
        if (st == XC_ERR_TIMEOUT) {
            continue;
        }
        if (st != XC_OK) {
            atomic_fetch_add(&w->n_bad, 1);
            continue; /* logged by the transport; the mailbox stays usable */
        }
        atomic_store(&w->progress_ns, xc_now_ns());
        atomic_store(&w->busy, 1);
        if (m.kind == XC_WIRE_KIND_CONTROL) {
            const xc_wire_control *c = &m.u.control;
            if (c->kind == XC_WIRE_CTL_HEARTBEAT) {
                /* the coordinator is alive; nothing else to do */
            } else if (c->kind == XC_WIRE_CTL_ASSIGN) {
                on_assign(w, &c->u.assign);
            } else if (c->kind == XC_WIRE_CTL_SHUTDOWN) {
                XC_LOG_INFO("shutdown: %s", c->u.shutdown.reason);
                xc_msg_fini(&msg);
                break;
            } else if (c->kind == XC_WIRE_CTL_DRAIN) {
                XC_LOG_INFO("drain requested");
            } else if (c->kind == XC_WIRE_CTL_REREGISTER) {
                /* a coordinator that does not know us (it restarted): forget the sequences and
                 * the assignment, keep the weights, register at once */
                XC_LOG_INFO("coordinator asks to register again (%s)%s", c->u.reregister.reason,
                            w->assigned ? "; dropping the assignment, keeping the weights" : "");
                seqs_clear(w);
                w->assigned = false;
                atomic_store(&w->adoptable, 0);
                last_reg = 0;
            } else {
                atomic_fetch_add(&w->n_bad, 1);
                XC_LOG_WARN("ignored a %s message", xc_wire_ctl_name(c->kind));
            }
        } else if (m.kind == XC_WIRE_KIND_FORWARD) {
            on_forward(w, &m.u.forward, &msg);
        } else {
            atomic_fetch_add(&w->n_bad, 1);
            XC_LOG_WARN("ignored a %s message", xc_wire_kind_name(m.kind));
        }
        atomic_store(&w->busy, 0);
        uint64_t done = xc_now_ns();
        atomic_store(&w->progress_ns, done);
        /* silence counts only while waiting: time spent on this message (loading weights, a long
         * prefill) is not the coordinator's */
        last_coord = m.kind == XC_WIRE_KIND_CONTROL ? done : last_coord + (done - now);
        xc_msg_fini(&msg);
    }
    atomic_store(&w->hb_stop, 1);
    pthread_join(w->hb_thread, NULL);
    w->hb_started = false;
    return ret;
}
