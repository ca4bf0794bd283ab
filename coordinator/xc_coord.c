/* The coordinator thread: one mailbox for every worker message, membership and heartbeats,
 * placement and (re)assignment, vision jobs, per-replica schedulers turned into forward frames,
 * results turned into token events, failure handling and shutdown. */
#include "xc_coord.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "xc_idmap.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_sampling.h"
#include "xc_sched.h"
#include "xc_sha256.h"
#include "xc_time.h"

#define MAX_WORKERS     512
#define MAX_REPLICAS    64
#define VISION_BLOCK    4096u
#define VISION_JOB_FLAG (1ull << 63) /* vision job ids live apart from micro-batch ids */

/* ---- model facts from config.json ---- */

typedef struct model_info {
    int n_layers, hidden, inter, heads, kv_heads, vocab, max_ctx, img_size, img_tokens;
    int max_pos; /* max_position_embeddings: the most --max-context may be (prompts: max_ctx) */
} model_info;

static int json_int(const cJSON *o, const char *k, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : def;
}

static xc_status model_info_load(const char *dir, model_info *mi) {
    char path[4096];
    size_t n = strlen(dir);
    snprintf(path, sizeof path, "%s%s", dir,
             n > 5 && !strcmp(dir + n - 5, ".json") ? "" : "/config.json");
    xc_mmap m;
    XC_TRY(xc_mmap_open(path, &m));
    cJSON *o = cJSON_ParseWithLength((const char *)m.data, m.size);
    xc_mmap_close(&m);
    if (!o) {
        return xc_errf(XC_ERR_PROTO, "%s is not JSON", path);
    }
    mi->n_layers = json_int(o, "num_hidden_layers", 0);
    mi->hidden = json_int(o, "hidden_size", 0);
    mi->inter = json_int(o, "intermediate_size", 0);
    mi->heads = json_int(o, "num_attention_heads", 0);
    mi->kv_heads = json_int(o, "num_key_value_heads", mi->heads);
    mi->vocab = json_int(o, "vocab_size", 0);
    int mpe = json_int(o, "max_position_embeddings", 4096);
    mi->max_ctx = json_int(o, "max_length", mpe);
    mi->max_ctx = mi->max_ctx < mpe ? mi->max_ctx : mpe;
    mi->max_pos = mpe;
    mi->img_size = json_int(o, "img_size", 0);
    cJSON_Delete(o);
    if (mi->n_layers < 1 || mi->hidden < 1 || mi->heads < 1 || mi->kv_heads < 1 || mi->vocab < 1 ||
        mi->hidden % mi->heads) {
        return xc_errf(XC_ERR_PROTO,
                       "%s: num_hidden_layers, hidden_size, heads or vocab_size "
                       "missing or inconsistent",
                       path);
    }
    int g = mi->img_size / 14;
    mi->img_tokens = g * g;
    return XC_OK;
}

/* ---- state ---- */

/* A message waiting for room on a worker's link (header encoded, tensor frames owned). */
typedef struct outmsg {
    xc_frame fr[XC_MSG_MAX_FRAMES];
    size_t n;
} outmsg;

typedef struct cworker {
    char id[128];
    char endpoint[512];
    xc_transport *tx;
    uint64_t mem;
    uint64_t last_seen;
    bool alive;
    int role; /* -1 none, 0 vision, 1 stage */
    int replica, stage;
    bool ready;
    xc_place_want want;   /* the role it accepts (Register.role) */
    uint64_t incarnation; /* the process's nonce from its Register (0 = an older worker) */
    int kv_elem;          /* bytes per KV element it stores (Register.kv_elem_bytes; 4 if unsaid) */
    int assigns_out;      /* Assigns sent and not answered by Ready yet: it is ready only when
                             the latest one is (both links keep order) */
    int n_assign_fail;    /* assignments in a row it could not load (reset by Ready) */
    uint64_t retry_ns;    /* after such a failure: no role for it before this time */
    outmsg *q;            /* (conf.send_queue) ring of messages its full link could not take */
    int q_head, q_n;
    uint64_t slow_log_ns; /* last "queue full" line */
} cworker;

typedef struct creq {
    uint64_t id;
    int slot;    /* its index in xc_coord.reqs */
    int replica; /* -1 until routed */
    int32_t *ids;
    int n;
    xc_coord_range *img;
    int n_img;
    float *pixels;
    uint64_t *img_hash; /* (n_img) SHA-256 of each image's pixels, first 8 bytes (the vision
                           worker's cache key): the prefix cache's image row keys */
    bool covered;       /* its image rows are in cached KV blocks: no vision job (unless the
                           scheduler reports them gone before admission) */
    float *emb; /* (n_img * img_tokens, hidden) once the vision worker answered; kept (like the
                   pixels) until the request ends, so that a resumed request needs no vision */
    bool vision_sent;
    xc_coord_sampling sp;
    int max_new;
    int32_t *stop;
    int n_stop;
    bool penalize;
    int n_gen;        /* tokens delivered; ids[n .. n + n_gen) holds them */
    int base;         /* tokens of those that end the prompt of the current admission (resume) */
    int n_resumes;    /* times re-queued after its replica failed */
    uint64_t wait_ns; /* waiting for a replica since (0: routed, or never was) */
    int pin;          /* 0 = any replica, r + 1 = replica r only */
    xc_coord_event_fn fn;
    void *user;
    bool logprobs; /* api helper: ask the last stage for logprobs ... */
    int top;       /* ... and this many alternatives */
    /* the block table last sent and its packed wire bytes (reused while it does not change) */
    int32_t *bt_ids;
    uint8_t *bt_wire;
    int bt_n, bt_cap;
    size_t bt_len;
} creq;

typedef struct replica {
    xc_sched *sched;
    int P;
    int bounds[XC_PLACE_MAX_STAGES + 1]; /* stage cuts in half-layer units (xc_place.h) */
    int worker[XC_PLACE_MAX_STAGES];     /* index into workers, -1 vacant */
    int kv_blocks;
    bool ready;
    uint32_t epoch; /* grows at each failure; stages drop frames of another epoch */

    /* micro-batches in flight: send time and rows, for their deadlines */
    struct {
        uint64_t id, sent_ns;
        int rows;
    } * mb;

    int n_mb, cap_mb;
    double ewma_s, ewma_rows; /* measured round trip of a micro-batch and its rows (0 = none) */
} replica;

struct xc_coord {
    xc_coord_conf conf;
    char model_dir[4096];
    model_info mi;
    xc_place_model cost;
    xc_transport *rx;
    xc_arena *arena;

    cworker workers[MAX_WORKERS];
    int n_workers;
    bool placed;
    bool was_ready;    /* ready once: from then on, not ready means a failure (fail fast) */
    int vision_worker; /* -1 none / vacant */
    bool need_vision;
    char place_msg[256]; /* why placement waits or fails, logged once per change */

    /* Reregister sent to unknown heartbeating workers, at most once a second each */
    struct {
        char id[128];
        uint64_t ns;
    } rereg[64];

    /* incarnations of worker processes known to be gone (replaced by a newer one): their late
     * messages are ignored instead of failing the process that replaced them */
    uint64_t retired[256];
    int n_retired;

    replica reps[MAX_REPLICAS];
    int R, P;

    creq **reqs;
    int n_reqs, cap_reqs;
    xc_idmap req_by_id; /* id -> creq of reqs: results, cancels and vision answers find theirs
                           without a scan (a step at thousands of sequences, issue 13.6) */

    /* cross-thread */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    creq **inbox;
    int n_inbox, cap_inbox;
    bool closed; /* the coordinator thread drained the inbox for the last time (under lock) */
    uint64_t next_id;
    atomic_int ready_flag, n_active, stopping, stop_now, n_replicas;
    double drain_s;
    bool shutdown_workers;

    /* serving hooks (api helper): cancellations queued by any thread (under lock), statistics
     * published by the coordinator thread (under stats_lock) */
    uint64_t *cancels;
    int n_cancels, cap_cancels;
    pthread_mutex_t stats_lock;
    xc_coord_stats stats;
    double bytes_sent;
    double prompt_rows, prefix_hit_rows; /* prefill rows sent, rows taken from the prefix cache */
    uint64_t vclock_id[256], vclock_ns[256]; /* send time of recent vision jobs, by id % 256 */
    /* per worker: last heartbeat's cumulative counters and the busy ratio between the last two */
    uint64_t hb_busy[MAX_WORKERS], hb_time[MAX_WORKERS];
    double hb_ratio[MAX_WORKERS], hb_bytes[MAX_WORKERS], hb_mb[MAX_WORKERS];
    double hb_live[MAX_WORKERS];                          /* Heartbeat.live_sequences */
    double hb_ichit[MAX_WORKERS], hb_icmiss[MAX_WORKERS]; /* Heartbeat.image_cache_* (vision) */
    uint64_t nomem_log_ns; /* last "no memory to build a micro-batch" line */
    uint64_t count_ns;     /* last count of running / waiting requests (hooks_step) */
    int n_running, n_waiting;
    /* failure handling counters (xc_coord_stats) */
    double n_resumes, n_resume_fail, n_step_timeouts, n_restarts, n_replica_fail, n_slow;
    atomic_int n_unknown_dropped;
    bool overdue;
    /* dials: Reregister to unknown workers, offered without waiting (pump_dials) */
    uint64_t reg_window_ns; /* new-worker registrations admitted in the current second */
    int reg_window_n;

    struct {
        xc_transport *tx;
        uint64_t deadline_ns;
        char id[128];
    } dials[16];

    int n_dials;
    uint64_t unknown_log_ns; /* last "unknown workers" line */
    int unknown_since_log;
};

static void hooks_heartbeat(xc_coord *c, int wi, const xc_wire_heartbeat *hb);

static void hooks_step(xc_coord *c);
static void hooks_vision_sent(xc_coord *c, creq *q);
static void hooks_vision_done(xc_coord *c, creq *q);

/* ---- events ---- */

static void emit_done(creq *r, xc_status st, bool retryable, bool stopped, const char *msg) {
    xc_coord_event ev = {.id = r->id,
                         .kind = XC_COORD_DONE,
                         .status = st,
                         .retryable = retryable,
                         .stopped = stopped,
                         .n_tokens = r->n_gen,
                         .message = msg ? msg : ""};
    r->fn(r->user, &ev);
}

static void req_free(creq *r) {
    if (!r) {
        return;
    }
    xc_free(r->ids);
    xc_free(r->img);
    xc_free(r->pixels);
    xc_free(r->img_hash);
    xc_free(r->emb);
    xc_free(r->stop);
    xc_free(r->bt_ids);
    xc_free(r->bt_wire);
    xc_free(r);
}

static creq *req_find(xc_coord *c, uint64_t id, int *idx) {
    creq *q = xc_idmap_get(&c->req_by_id, id);
    if (q && idx) {
        *idx = q->slot;
    }
    return q;
}

/* Ends request r (done or failed): frees its KV in its replica and drops it. */
static void req_end(xc_coord *c, creq *r, xc_status st, bool retryable, bool stopped,
                    const char *msg) {
    int idx = -1;
    if (!req_find(c, r->id, &idx)) {
        return;
    }
    if (r->replica >= 0 && c->reps[r->replica].sched) {
        xc_sched_finish(c->reps[r->replica].sched, r->id);
    }
    emit_done(r, st, retryable, stopped, msg);
    xc_idmap_del(&c->req_by_id, r->id);
    c->reqs[idx] = c->reqs[--c->n_reqs];
    c->reqs[idx]->slot = idx;
    req_free(r);
    atomic_fetch_sub(&c->n_active, 1);
}

/* ---- sending: never waits for a peer ----
 *
 * Every send tries the link once without waiting (ZeroMQ: SNDTIMEO 0, i.e. ZMQ_DONTWAIT; MPI: a
 * free MPI_Isend slot, completions polled). A message the link cannot take now joins the
 * worker's bounded queue, which the loop retries each step (flush_queues). A worker whose queue
 * is full is slow: the send is refused (XC_AGAIN) and the caller tries again later (a micro-batch
 * is undone and formed again, a vision job stays unsent); nothing ever waits for it. */

static void free_buf(void *data, void *hint) {
    (void)hint;
    xc_free(data);
}

static void outmsg_free(outmsg *o) {
    xc_msg m = {.n = o->n};
    memcpy(m.frames, o->fr, sizeof o->fr);
    xc_msg_fini(&m);
    o->n = 0;
}

static void queue_clear(xc_coord *c, cworker *w) {
    for (; w->q_n > 0; w->q_n--) {
        outmsg_free(&w->q[w->q_head]);
        w->q_head = (w->q_head + 1) % c->conf.send_queue;
    }
    xc_free(w->q);
    w->q = NULL;
    w->q_head = 0;
}

/* Sends what worker w's queue holds, oldest first, while its link takes them. */
static void queue_flush(xc_coord *c, cworker *w) {
    while (w->q_n > 0 && w->tx) {
        outmsg *o = &w->q[w->q_head];
        xc_status st = xc_transport_send(w->tx, o->fr, o->n, 0);
        if (st == XC_ERR_TIMEOUT) {
            return; /* still full */
        }
        if (st != XC_OK) {
            XC_LOG_WARN("worker %s: a queued message could not be sent (%s); dropped", w->id,
                        xc_err_last());
            outmsg_free(o);
        }
        o->n = 0;
        w->q_head = (w->q_head + 1) % c->conf.send_queue;
        w->q_n--;
    }
}

static void flush_queues(xc_coord *c) {
    for (int i = 0; i < c->n_workers; i++) {
        if (c->workers[i].alive && c->workers[i].q_n > 0) {
            queue_flush(c, &c->workers[i]);
        }
    }
}

/* Whether worker w's queue is full (a send would be refused). */
static bool peer_full(const xc_coord *c, const cworker *w) {
    return w->q_n >= c->conf.send_queue;
}

/* Sends m + tensors to worker w without waiting: XC_OK when sent or queued (the tensors with a
 * free_fn are then owned by the link or the queue; borrowed ones are copied), XC_AGAIN when w's
 * queue is full (nothing taken), another error when the message is bad or the link broken. */
static xc_status post(xc_coord *c, cworker *w, const xc_wire_msg *m, xc_frame *tensors,
                      size_t n_t) {
    if (!w->tx) {
        return xc_errf(XC_ERR_IO, "worker %s has no link", w->id);
    }
    if (w->q_n > 0) {
        queue_flush(c, w);
    }
    if (w->q_n == 0) {
        /* its micro-batches come from the scheduler's checked state: not walked again here (the
         * stage's decode checks them) */
        xc_status st = m->kind == XC_WIRE_KIND_FORWARD
                           ? xc_transport_send_wire_trusted(w->tx, m, tensors, n_t, 0)
                           : xc_transport_send_wire(w->tx, m, tensors, n_t, 0);
        if (st != XC_ERR_TIMEOUT) {
            return st;
        }
    }
    if (peer_full(c, w)) {
        c->n_slow++;
        uint64_t now = xc_now_ns();
        if (now - w->slow_log_ns > 1000000000ull) {
            w->slow_log_ns = now;
            XC_LOG_WARN("worker %s is slow: %d messages queued, no more taken for now", w->id,
                        w->q_n);
        }
        return xc_errf(XC_AGAIN, "worker %s is slow (its send queue is full)", w->id);
    }
    if (!w->q && !(w->q = xc_calloc((size_t)c->conf.send_queue, sizeof *w->q))) {
        return xc_errf(XC_ERR_NOMEM, "no memory for a send queue");
    }
    size_t lens[XC_MSG_MAX_FRAMES];
    for (size_t i = 0; i < n_t; i++) {
        lens[i] = tensors[i].len;
    }
    void *hdr = NULL;
    size_t hdr_len = 0;
    XC_TRY(m->kind == XC_WIRE_KIND_FORWARD ? xc_wire_encode_trusted(m, &hdr, &hdr_len)
                                           : xc_wire_encode(m, lens, n_t, &hdr, &hdr_len));
    outmsg o = {.n = n_t + 1};
    o.fr[0] = (xc_frame){.data = hdr, .len = hdr_len, .free_fn = free_buf};
    for (size_t i = 0; i < n_t; i++) {
        o.fr[i + 1] = tensors[i];
        if (!tensors[i].free_fn) { /* borrowed: keep a copy */
            void *cp = xc_malloc(tensors[i].len ? tensors[i].len : 1);
            if (!cp) {
                for (size_t k = 0; k < i; k++) {
                    if (!tensors[k].free_fn) {
                        xc_free(o.fr[k + 1].data);
                    }
                }
                xc_free(hdr);
                return xc_errf(XC_ERR_NOMEM, "no memory to queue a message");
            }
            memcpy(cp, tensors[i].data, tensors[i].len);
            o.fr[i + 1] = (xc_frame){.data = cp, .len = tensors[i].len, .free_fn = free_buf};
        }
    }
    w->q[(w->q_head + w->q_n) % c->conf.send_queue] = o;
    w->q_n++;
    return XC_OK;
}

static xc_status send_ctl(xc_coord *c, cworker *w, const xc_wire_control *ctl) {
    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL, .u.control = *ctl};
    return post(c, w, &m, NULL, 0);
}

/* ---- placement and assignment ---- */

static void derive_cost(xc_coord *c) {
    const model_info *m = &c->mi;
    double H = m->hidden, I = m->inter ? m->inter : 4 * m->hidden;
    double kvw = (double)m->kv_heads * (H / m->heads);
    double rank = c->conf.plora_rank > 0 ? c->conf.plora_rank : 0;
    double base = H * (H + 2 * kvw) + H * H + 3 * H * I;
    /* PLoRA A (rank, in) and B (out, rank) on wqkv, wo, w1, w3, w2 */
    double lora = rank * ((H + H + 2 * kvw) + (H + H) + (H + I) * 2 + (I + H));
    double bytes = 2.0; /* bf16 checkpoints */
    /* the attention unit (wqkv, wo + PLoRA) and the FFN unit (w1, w3, w2 + PLoRA) */
    double attn = H * (H + 2 * kvw) + H * H + rank * ((H + H + 2 * kvw) + (H + H));
    double ffn = 3 * H * I + rank * ((H + I) * 2 + (I + H));
    c->cost = (xc_place_model){.n_layers = m->n_layers,
                               .attn_time = attn * bytes,
                               .ffn_time = ffn * bytes,
                               .attn_bytes = attn * bytes,
                               .ffn_bytes = ffn * bytes,
                               .layer_time = (base + lora) * bytes,
                               .first_time = H * bytes, /* a gather: tiny */
                               .last_time = (double)m->vocab * H * bytes,
                               .layer_bytes = (base + lora) * bytes,
                               .embed_bytes = (double)m->vocab * H * bytes,
                               .head_bytes = (double)m->vocab * H * bytes + H * bytes,
                               /* K and V per token and layer, bf16 (the workers' default
                                  --kv-dtype; kv_blocks_for uses each worker's own size) */
                               .kv_bytes_layer = 2 * kvw * 2,
                               .kv_budget_tokens = c->conf.max_context};
    if (c->conf.cost) {
        c->cost = *c->conf.cost;
        c->cost.n_layers = m->n_layers;
    }
}

static void send_assign(xc_coord *c, int wi) {
    cworker *w = &c->workers[wi];
    xc_wire_assign a = {.model_path = c->model_dir, .n_layers = (uint32_t)c->mi.n_layers};
    if (w->role == 0) {
        a.role = XC_WIRE_ROLE_VISION;
        a.n_stages = 1;
    } else {
        replica *r = &c->reps[w->replica];
        a.role = XC_WIRE_ROLE_STAGE;
        a.replica = (uint32_t)w->replica;
        a.stage = (uint32_t)w->stage;
        a.n_stages = (uint32_t)r->P;
        a.unit_begin = (uint32_t)r->bounds[w->stage];
        a.unit_end = (uint32_t)r->bounds[w->stage + 1];
        a.layer_begin = a.unit_begin / 2; /* the layers touched, for older workers */
        a.layer_end = (a.unit_end + 1) / 2;
        a.kv_blocks = (uint32_t)r->kv_blocks;
        a.kv_block_size = (uint32_t)c->conf.block_size;
        a.max_rows = (uint32_t)c->conf.max_rows;
        a.epoch = r->epoch;
        int nx = w->stage + 1 < r->P ? r->worker[w->stage + 1] : -1;
        a.next_endpoint = nx >= 0 ? c->workers[nx].endpoint : xc_transport_endpoint(c->rx);
    }
    w->ready = false;
    xc_wire_control ctl = {.kind = XC_WIRE_CTL_ASSIGN, .u.assign = a};
    if (send_ctl(c, w, &ctl) != XC_OK) {
        /* the worker does not answer Ready then: its role stays not ready until a Register
         * (it re-registers while unassigned) or the dead timeout */
        XC_LOG_WARN("assign to %s failed: %s", w->id, xc_err_last());
    } else {
        w->assigns_out++;
        /* the placement's memory prediction for the stage (weights + KV budget), which
         * scripts/full-scale compares with the worker's RSS */
        double pred = w->role == 0 ? 0
                                   : xc_place_unit_stage_bytes(&c->cost, a.unit_begin, a.unit_end,
                                                               (int)a.n_stages, w->stage);
        /* the KV pool the stage is given (kv_blocks x block_size tokens at its KV element
         * size) fills only as sequences use it: beyond the max_context budget it is not in the
         * prediction, so say how far it can grow */
        double pool = w->role == 0 ? 0
                                   : xc_place_attn_units((int)a.unit_begin, (int)a.unit_end) *
                                         c->cost.kv_bytes_layer * (w->kv_elem / 2.0) *
                                         (double)a.kv_blocks * a.kv_block_size;
        XC_LOG_INFO("assigned worker %s: %s replica %d stage %d units [%u, %u) predicted %.0f MB "
                    "(weights and the KV of %d tokens; its KV pool can hold %.0f MB)",
                    w->id, w->role == 0 ? "vision" : "decoder", w->role ? w->replica : 0,
                    w->role ? w->stage : 0, a.unit_begin, a.unit_end, pred / 1e6,
                    w->role == 0 ? 0 : (int)c->cost.kv_budget_tokens, pool / 1e6);
    }
}

static int kv_blocks_for(xc_coord *c, const replica *r) {
    int want = c->conf.kv_blocks;
    for (int k = 0; k < r->P; k++) {
        const cworker *w = &c->workers[r->worker[k]];
        int layers = xc_place_attn_units(r->bounds[k], r->bounds[k + 1]); /* KV layers */
        double weights =
            xc_place_unit_stage_bytes(&c->cost, r->bounds[k], r->bounds[k + 1], r->P, k) -
            layers * c->cost.kv_bytes_layer * c->cost.kv_budget_tokens;
        /* this worker's KV element size (f32 workers need twice the model's bf16 figure) */
        double per_block =
            layers * c->cost.kv_bytes_layer * (w->kv_elem / 2.0) * c->conf.block_size;
        double fit = per_block > 0 ? ((double)w->mem - weights) / per_block : want;
        if (fit < want) {
            want = fit < 1 ? 1 : (int)fit;
        }
    }
    if (c->conf.one_host && r->P > 0) {
        /* one host's memory for all R replicas: 80 % of it (the rest for the vision worker,
         * its image cache, scratch and the system) less every stage's weights, shared out
         * between the replicas' KV pools. Each worker above sees the whole host and would take
         * as much again (2 stages of the VL model here: 8.2 GiB of KV pools beside 16.5 GB of
         * weights on a 23.5 GiB machine). */
        double weights = 0, per_block = 0, mem = (double)c->workers[r->worker[0]].mem;
        for (int k = 0; k < r->P; k++) {
            const cworker *w = &c->workers[r->worker[k]];
            int layers = xc_place_attn_units(r->bounds[k], r->bounds[k + 1]);
            weights +=
                xc_place_unit_stage_bytes(&c->cost, r->bounds[k], r->bounds[k + 1], r->P, k) -
                layers * c->cost.kv_bytes_layer * c->cost.kv_budget_tokens;
            per_block += layers * c->cost.kv_bytes_layer * (w->kv_elem / 2.0) * c->conf.block_size;
            mem = (double)w->mem < mem ? (double)w->mem : mem;
        }
        int R = c->R > 0 ? c->R : 1;
        double fit = per_block > 0 ? (0.8 * mem / R - weights) / per_block : want;
        if (fit < want) {
            want = fit < 1 ? 1 : (int)fit;
        }
    }
    return want;
}

/* Logs why placement cannot happen yet, once per distinct reason (place() runs every loop). */
static void place_note(xc_coord *c, bool error, const char *why) {
    if (strcmp(c->place_msg, why)) {
        snprintf(c->place_msg, sizeof c->place_msg, "%s", why);
        if (error) {
            XC_LOG_ERROR("%s", why);
        } else {
            XC_LOG_INFO("%s", why);
        }
    }
}

static xc_status place(xc_coord *c) {
    int need_total = c->conf.workers;
    if (need_total <= 0) {
        int p = c->conf.stages > 0 ? c->conf.stages : 1,
            r = c->conf.replicas > 0 ? c->conf.replicas : 1;
        need_total = p * r + (c->need_vision ? 1 : 0);
    }
    int alive = 0;
    for (int i = 0; i < c->n_workers; i++) {
        alive += c->workers[i].alive && c->workers[i].role < 0;
    }
    if (alive < need_total) {
        return XC_AGAIN;
    }
    int idx[MAX_WORKERS] = {0}, n = 0;
    xc_place_worker pw[MAX_WORKERS];
    for (int i = 0; i < c->n_workers; i++) {
        if (c->workers[i].alive && c->workers[i].role < 0) {
            pw[n] = (xc_place_worker){c->workers[i].id, c->workers[i].want, c->workers[i].mem};
            idx[n++] = i;
        }
    }
    /* roles: vision to a worker that accepts it, stages to the others in name order (so that
     * the same workers get the same stages whatever order they registered in) */
    int vis = -1, order[MAX_WORKERS], n_dec = 0;
    XC_TRY(xc_place_roles(pw, n, c->need_vision, &vis, order, &n_dec));
    if (c->need_vision && vis < 0) {
        place_note(c, false,
                   "placement waits for a worker that accepts the vision role (--role "
                   "vision or any)");
        return XC_AGAIN;
    }
    uint64_t mem[MAX_WORKERS];
    for (int i = 0; i < n_dec; i++) {
        mem[i] = pw[order[i]].mem;
    }
    int P, R;
    xc_status st = xc_place_shape(&c->cost, mem, n_dec, c->conf.stages, c->conf.replicas, &P, &R);
    if (st != XC_OK) {
        char why[256];
        snprintf(why, sizeof why, "placement: %s", xc_err_last());
        place_note(c, true, why);
        return st;
    }
    c->place_msg[0] = 0;
    if (vis >= 0) {
        c->vision_worker = idx[vis];
        c->workers[idx[vis]].role = 0;
    }
    if (R > MAX_REPLICAS) {
        R = MAX_REPLICAS;
    }
    c->P = P;
    c->R = R;
    atomic_store(&c->n_replicas, R);
    double tmax = 0;
    for (int r = 0; r < R; r++) {
        replica *rp = &c->reps[r];
        rp->P = P;
        XC_TRY(xc_place_split_units(&c->cost, P, rp->bounds, &tmax));
        for (int k = 0; k < P; k++) {
            int wi = idx[order[r * P + k]];
            rp->worker[k] = wi;
            c->workers[wi].role = 1;
            c->workers[wi].replica = r;
            c->workers[wi].stage = k;
        }
        rp->kv_blocks = kv_blocks_for(c, rp);
        int inflight = c->conf.max_inflight > 0 ? c->conf.max_inflight : P + 1;
        rp->epoch = 1;
        rp->cap_mb = inflight;
        rp->mb = xc_calloc((size_t)inflight, sizeof *rp->mb);
        if (!rp->mb) {
            return XC_ERR_NOMEM;
        }
        xc_sched_conf sc = {.max_rows = c->conf.max_rows,
                            .chunk = c->conf.chunk,
                            .block_size = c->conf.block_size,
                            .n_blocks = rp->kv_blocks,
                            .max_inflight = inflight,
                            .n_stages = P,
                            .prefix_cache = !c->conf.no_prefix_cache};
        XC_TRY(xc_sched_create(&sc, &rp->sched));
    }
    char cuts[256] = "";
    for (int k = 0; k <= P; k++) {
        size_t l = strlen(cuts);
        snprintf(cuts + l, sizeof cuts - l, "%s%d", k ? "," : "", c->reps[0].bounds[k]);
    }
    XC_LOG_INFO("placement: %d replica(s) x %d stage(s), unit cuts %s, kv blocks %d x %d, "
                "vision %s",
                R, P, cuts, c->reps[0].kv_blocks, c->conf.block_size,
                c->need_vision ? c->workers[c->vision_worker].id : "none");
    c->placed = true;
    for (int i = 0; i < c->n_workers; i++) {
        if (c->workers[i].role >= 0) {
            send_assign(c, i);
        }
    }
    return XC_OK;
}

/* A fresh registered worker takes a vacant role; the whole replica is re-assigned so the
 * previous stage points at the new endpoint and every stage forgets old sequences. */
static void fill_vacancies(xc_coord *c) {
    /* dedicated workers first, then those that accept any role */
    uint64_t now = xc_now_ns();
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < c->n_workers; i++) {
            cworker *w = &c->workers[i];
            if (!w->alive || w->role >= 0 || (pass == 0) == (w->want == XC_PLACE_ANY) ||
                now < w->retry_ns) {
                continue;
            }
            if (c->need_vision && c->vision_worker < 0 && w->want != XC_PLACE_STAGE) {
                w->role = 0;
                c->vision_worker = i;
                XC_LOG_INFO("worker %s replaces the vision worker", w->id);
                send_assign(c, i);
                continue;
            }
            for (int r = 0; r < c->R && w->role < 0 && w->want != XC_PLACE_VISION; r++) {
                replica *rp = &c->reps[r];
                for (int k = 0; k < rp->P; k++) {
                    if (rp->worker[k] < 0) {
                        rp->worker[k] = i;
                        w->role = 1;
                        w->replica = r;
                        w->stage = k;
                        XC_LOG_INFO("worker %s replaces replica %d stage %d", w->id, r, k);
                        for (int j = 0; j < rp->P; j++) {
                            if (rp->worker[j] >= 0) {
                                send_assign(c, rp->worker[j]);
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
}

static void update_ready(xc_coord *c) {
    bool all = c->placed &&
               (!c->need_vision || (c->vision_worker >= 0 && c->workers[c->vision_worker].ready));
    for (int r = 0; r < c->R; r++) {
        replica *rp = &c->reps[r];
        bool ok = true;
        for (int k = 0; k < rp->P; k++) {
            ok = ok && rp->worker[k] >= 0 && c->workers[rp->worker[k]].ready;
        }
        if (ok && !rp->ready) {
            XC_LOG_INFO("replica %d ready", r);
        }
        rp->ready = ok;
        all = all && ok;
    }
    all = all && !c->overdue; /* a micro-batch past its deadline: not ready */
    c->was_ready = c->was_ready || all;
    if (all != (bool)atomic_load(&c->ready_flag)) {
        XC_LOG_INFO("cluster %s", all ? "ready" : "NOT ready");
        pthread_mutex_lock(&c->lock);
        atomic_store(&c->ready_flag, all);
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
    }
}

/* ---- failure ---- */

/* Requests of a failed replica are not failed: each goes back to the queue with its prompt,
 * its image embeddings and the tokens it already streamed, to be re-prefilled on a ready replica
 * (this one once re-formed, or another) and to go on from the next token (ids[n + n_gen)), at
 * most max_resumes times; a pinned request (the canary) fails instead. */
static void resume_or_fail(xc_coord *c, creq *q, const char *why) {
    q->replica = -1; /* its KV is gone with the scheduler state */
    if (q->pin || q->n_resumes >= c->conf.max_resumes) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s%s", why,
                 q->pin ? "" : " (the request was resumed as often as --max-resumes allows)");
        c->n_resume_fail += !q->pin;
        req_end(c, q, XC_ERR_IO, true, false, msg);
        return;
    }
    q->n_resumes++;
    q->base = q->n_gen;
    q->wait_ns = xc_now_ns();
    c->n_resumes++;
    XC_LOG_INFO("request %llu resumes (%d of at most %d) after %d tokens: %s",
                (unsigned long long)q->id, q->n_resumes, c->conf.max_resumes, q->n_gen, why);
}

/* Replica r failed (a stage lost, restarted or failing a micro-batch, or a micro-batch past its
 * deadline): its scheduler drops everything in flight, its epoch grows (stages drop frames of the
 * old one), its requests resume, and every stage it still has gets its Assign again (which
 * clears the stage's sequences; the weights stay loaded), so it serves again once all are
 * Ready. */
static void fail_replica(xc_coord *c, int r, const char *why) {
    replica *rp = &c->reps[r];
    uint64_t ids[4096];
    int n = 0;
    xc_sched_fail_all(rp->sched, ids, 4096, &n);
    xc_sched_drop_releases(rp->sched); /* the re-assignment clears every stage */
    rp->n_mb = 0;
    rp->epoch++;
    rp->ready = false;
    c->n_replica_fail++;
    for (int i = 0; i < c->n_reqs;) {
        creq *q = c->reqs[i];
        if (q->replica == r) {
            int before = c->n_reqs;
            resume_or_fail(c, q, why);
            if (c->n_reqs < before) {
                continue; /* ended: the last request moved into slot i */
            }
        }
        i++;
    }
    for (int k = 0; k < rp->P; k++) {
        if (rp->worker[k] >= 0 && c->workers[rp->worker[k]].alive) {
            send_assign(c, rp->worker[k]);
        }
    }
}

/* Takes worker wi's role away: a stage leaves its replica vacant (the replica fails: its
 * requests resume elsewhere), the vision role leaves the requests still waiting for image
 * embeddings queued until a vision worker is back (or their wait times out). */
static void vacate_role(xc_coord *c, int wi, const char *why) {
    cworker *w = &c->workers[wi];
    if (w->role == 1) {
        c->reps[w->replica].worker[w->stage] = -1;
        fail_replica(c, w->replica, why);
    } else if (w->role == 0) {
        c->vision_worker = -1;
        uint64_t now = xc_now_ns();
        for (int i = 0; i < c->n_reqs; i++) {
            creq *q = c->reqs[i];
            if (q->n_img > 0 && !q->emb) {
                q->vision_sent = false; /* sent again to the next vision worker */
                q->wait_ns = q->wait_ns ? q->wait_ns : now;
            }
        }
    }
    w->role = -1;
    w->ready = false;
    w->assigns_out = 0;
}

static void role_name_of(const cworker *w, const char *how, char *why, size_t cap) {
    if (w->role == 1) {
        snprintf(why, cap, "worker %s (replica %d stage %d) %s", w->id, w->replica, w->stage, how);
    } else {
        snprintf(why, cap, "worker %s (%s) %s", w->id, w->role == 0 ? "vision" : "idle", how);
    }
}

static void worker_lost(xc_coord *c, int wi, const char *how) {
    cworker *w = &c->workers[wi];
    char why[512];
    role_name_of(w, how, why, sizeof why);
    XC_LOG_ERROR("%s", why);
    vacate_role(c, wi, why);
    w->alive = false;
    queue_clear(c, w);
    xc_transport_close(w->tx);
    w->tx = NULL;
    if (c->placed) {
        fill_vacancies(c); /* an idle spare takes the role at once */
    }
    update_ready(c);
}

/* Worker wi reports that it could not take the role it was assigned (weights that do not load
 * or fit, a role it refuses): the role is freed for another worker at once, and wi gets none for
 * a while (5 s, doubling per failure in a row up to 320 s) although it keeps registering, so that
 * it is not re-assigned in a loop. It stays registered and may get a role after that. */
static void assignment_failed(xc_coord *c, int wi, const char *msg) {
    cworker *w = &c->workers[wi];
    int k = w->n_assign_fail < 6 ? w->n_assign_fail : 6;
    double backoff_s = 5.0 * (double)(1 << k);
    w->n_assign_fail++;
    w->retry_ns = xc_now_ns() + (uint64_t)(backoff_s * 1e9);
    char how[768], why[1024];
    snprintf(how, sizeof how, "could not take its role: %s", msg ? msg : "");
    role_name_of(w, how, why, sizeof why);
    XC_LOG_ERROR("%s; the role is free for another worker, none for this one for %.0f s", why,
                 backoff_s);
    vacate_role(c, wi, why);
    if (c->placed) {
        fill_vacancies(c);
    }
    update_ready(c);
}

/* ---- incoming messages ---- */

static int worker_by_id(xc_coord *c, const char *id) {
    for (int i = 0; i < c->n_workers; i++) {
        if (id && !strcmp(c->workers[i].id, id)) {
            return i;
        }
    }
    return -1;
}

/* Counts a message from an unknown worker that was not answered (rate limits), and says how
 * many at most once a second. */
static void unknown_dropped(xc_coord *c, const char *what) {
    atomic_fetch_add(&c->n_unknown_dropped, 1);
    c->unknown_since_log++;
    uint64_t now = xc_now_ns();
    if (now - c->unknown_log_ns > 1000000000ull) {
        XC_LOG_WARN("%d %s from unknown workers not answered in the last second (rate limit; "
                    "use CURVE with client keys to keep strangers out, docs/cluster.md)",
                    c->unknown_since_log, what);
        c->unknown_log_ns = now;
        c->unknown_since_log = 0;
    }
}

/* Dials: one-shot links to unknown workers' endpoints to ask them to register (Reregister), so
 * that a restarted coordinator adopts live workers. Dialing a peer can take as long as its
 * address makes it (a forged heartbeat may name anything), so no step ever waits for one: the
 * link is opened (connecting happens in the background), the message is offered without waiting
 * at each step (pump_dials), and a link that has not taken it within a second is dropped. */
static void dial_close(xc_coord *c, int i) {
    xc_transport_close(c->dials[i].tx);
    c->dials[i] = c->dials[--c->n_dials];
}

static void pump_dials(xc_coord *c) {
    uint64_t now = xc_now_ns();
    for (int i = 0; i < c->n_dials;) {
        xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL,
                         .u.control = {.kind = XC_WIRE_CTL_REREGISTER,
                                       .u.reregister.reason = "unknown to this coordinator"}};
        if (xc_transport_send_wire(c->dials[i].tx, &m, NULL, 0, 0) == XC_OK) {
            XC_LOG_INFO("heartbeat from unknown worker %s: asked it to register", c->dials[i].id);
            dial_close(c, i);
        } else if (now > c->dials[i].deadline_ns) {
            XC_LOG_WARN("heartbeat from unknown worker %s: cannot ask it to register (its "
                        "endpoint took nothing in 1 s)",
                        c->dials[i].id);
            dial_close(c, i);
        } else {
            i++;
        }
    }
}

/* A heartbeat from a worker this coordinator does not know (it restarted, or declared the worker
 * dead): the dialer tells it to register again. At most once per 3 s per worker id, only while a
 * worker slot is free, and at most 16 dials waiting; the rest is counted and logged once a
 * second. */
static void ask_reregister(xc_coord *c, const xc_wire_heartbeat *hb) {
    if (!hb->worker_id || !hb->worker_id[0] || !hb->endpoint || !hb->endpoint[0] ||
        atomic_load(&c->stopping)) {
        return;
    }
    uint64_t now = xc_now_ns();
    int slot = 0;
    for (int i = 0; i < 64; i++) {
        if (!strcmp(c->rereg[i].id, hb->worker_id)) {
            slot = i;
            break;
        }
        if (c->rereg[i].ns < c->rereg[slot].ns) {
            slot = i; /* else the oldest entry */
        }
    }
    if (!strcmp(c->rereg[slot].id, hb->worker_id) && now - c->rereg[slot].ns < 3000000000ull) {
        return; /* asked recently: not a flood, just its next heartbeats */
    }
    bool room = c->n_workers < MAX_WORKERS;
    for (int i = 0; i < c->n_workers && !room; i++) {
        room = !c->workers[i].alive;
    }
    if (!room) {
        unknown_dropped(c, "heartbeats");
        return;
    }
    if (c->n_dials == 16) {
        unknown_dropped(c, "heartbeats");
        return;
    }
    xc_transport_conf tc = XC_TRANSPORT_CONF_INIT;
    if (c->conf.tconf) {
        tc = *c->conf.tconf;
    }
    tc.linger_ms = 50; /* close never waits long for a peer that took nothing */
    xc_transport *tx = NULL;
    if (xc_transport_open(hb->endpoint, XC_TRANSPORT_SEND, &tc, &tx) != XC_OK) {
        XC_LOG_WARN("heartbeat from unknown worker %s: cannot dial %s: %s", hb->worker_id,
                    hb->endpoint, xc_err_last());
    } else {
        c->dials[c->n_dials].tx = tx;
        c->dials[c->n_dials].deadline_ns = now + 1000000000ull;
        snprintf(c->dials[c->n_dials].id, sizeof c->dials[0].id, "%s", hb->worker_id);
        c->n_dials++;
    }
    snprintf(c->rereg[slot].id, sizeof c->rereg[slot].id, "%s", hb->worker_id);
    c->rereg[slot].ns = now;
}

static void retire(xc_coord *c, uint64_t inc) {
    if (inc) {
        c->retired[c->n_retired++ % 256] = inc;
    }
}

static bool is_retired(const xc_coord *c, uint64_t inc) {
    int n = c->n_retired < 256 ? c->n_retired : 256;
    for (int i = 0; inc && i < n; i++) {
        if (c->retired[i] == inc) {
            return true;
        }
    }
    return false;
}

/* Worker wi's process is gone because a new one took its place (a new incarnation under its id,
 * or its endpoint claimed by another worker): its role is vacated at once (no dead timeout) and
 * its late messages are ignored from now on. */
static void worker_replaced(xc_coord *c, int wi, const char *how) {
    retire(c, c->workers[wi].incarnation);
    c->n_restarts++;
    worker_lost(c, wi, how);
}

static void on_register(xc_coord *c, const xc_wire_register *r) {
    if (is_retired(c, r->incarnation)) {
        return; /* a late Register of a process that was replaced */
    }
    int wi = worker_by_id(c, r->worker_id);
    if (wi >= 0 && c->workers[wi].alive) {
        cworker *w = &c->workers[wi];
        w->last_seen = xc_now_ns();
        if (r->incarnation && w->incarnation && r->incarnation != w->incarnation) {
            /* same name, new process (a pod restarted under its name and address) */
            worker_replaced(c, wi, "restarted (a new incarnation registered)");
        } else if (strcmp(w->endpoint, r->endpoint)) {
            /* same name, new process: treat the old one as lost */
            worker_replaced(c, wi, "re-registered from a new endpoint");
        } else {
            if (w->role >= 0) {
                /* it registers, so it holds no assignment: a Ready still on its way was sent
                 * before this Register */
                w->assigns_out = 0;
                send_assign(c, wi); /* the worker restarted its loop and lost its role */
            } else if (c->placed) {
                fill_vacancies(c); /* an idle worker (its back-off after a failed
                                      assignment may be over) */
            }
            return;
        }
    }
    /* a new worker that claims the endpoint of a live one: the old process is gone (its
     * address was given to another) */
    for (int i = 0; i < c->n_workers; i++) {
        if (i != wi && c->workers[i].alive && !strcmp(c->workers[i].endpoint, r->endpoint)) {
            char how[300];
            snprintf(how, sizeof how, "gone: its endpoint %s was claimed by worker %s", r->endpoint,
                     r->worker_id);
            worker_replaced(c, i, how);
        }
    }
    if (wi < 0) {
        /* a worker id never seen (or seen dead): at most 50 such registrations a second, so
         * that a flood of forged ones cannot make the coordinator open links all day (a real
         * worker registers again 2 s later) */
        uint64_t now = xc_now_ns();
        if (now - c->reg_window_ns > 1000000000ull) {
            c->reg_window_ns = now;
            c->reg_window_n = 0;
        }
        if (++c->reg_window_n > 50) {
            unknown_dropped(c, "registrations");
            return;
        }
    }
    if (wi < 0) {
        for (int i = 0; i < c->n_workers; i++) {
            if (!c->workers[i].alive) {
                wi = i; /* reuse the slot of a lost worker */
                break;
            }
        }
    }
    if (wi < 0) {
        if (c->n_workers == MAX_WORKERS) {
            XC_LOG_WARN("register from %s ignored: %d workers already", r->worker_id, MAX_WORKERS);
            return;
        }
        wi = c->n_workers++;
    }
    cworker *w = &c->workers[wi];
    memset(w, 0, sizeof *w);
    snprintf(w->id, sizeof w->id, "%s", r->worker_id);
    snprintf(w->endpoint, sizeof w->endpoint, "%s", r->endpoint);
    /* a CUDA worker holds its weights and KV pool in device memory: size it by that */
    w->mem = r->backend == XC_WIRE_BACKEND_CUDA && r->device_mem_bytes
                 ? r->device_mem_bytes
                 : r->host_mem_bytes + r->device_mem_bytes;
    w->role = -1;
    w->want = (xc_place_want)r->role;
    w->incarnation = r->incarnation;
    w->kv_elem = r->kv_elem_bytes ? (int)r->kv_elem_bytes : 4;
    if (xc_transport_open(w->endpoint, XC_TRANSPORT_SEND, c->conf.tconf, &w->tx) != XC_OK) {
        XC_LOG_WARN("register from %s: cannot reach %s: %s", w->id, w->endpoint, xc_err_last());
        return;
    }
    w->alive = true;
    w->last_seen = xc_now_ns();
    static const char *wants[] = {"any role", "vision only", "stages only"};
    XC_LOG_INFO("worker %s registered (%s, %.0f MiB, %s)", w->id, w->endpoint,
                (double)w->mem / 1048576.0, wants[w->want]);
    if (w->want == XC_PLACE_VISION && !c->need_vision) {
        XC_LOG_WARN("worker %s accepts only the vision role, which this cluster does not have "
                    "(text only): it stays idle",
                    w->id);
    }
    if (c->placed) {
        fill_vacancies(c);
    }
}

static void on_vision_result(xc_coord *c, const xc_wire_forward *f, const xc_msg *msg) {
    uint64_t rid = f->microbatch_id & ~VISION_JOB_FLAG;
    creq *q = req_find(c, rid, NULL);
    size_t per = (size_t)c->mi.img_tokens * (size_t)c->mi.hidden;
    if (!q || q->emb) {
        return; /* the request is gone */
    }
    if (f->payload.dtype != XC_DTYPE_F32 || f->payload.cols != (uint32_t)c->mi.hidden ||
        (size_t)f->payload.rows != (size_t)q->n_img * c->mi.img_tokens) {
        req_end(c, q, XC_ERR_PROTO, false, false, "vision worker sent embeddings of a wrong shape");
        return;
    }
    q->emb = xc_malloc((size_t)q->n_img * per * sizeof(float));
    if (!q->emb) {
        req_end(c, q, XC_ERR_NOMEM, true, false, "no memory for image embeddings");
        return;
    }
    memcpy(q->emb, msg->frames[1].data, (size_t)q->n_img * per * sizeof(float));
    hooks_vision_done(c, q);
    if (q->replica >= 0) {
        q->wait_ns = 0;
    }
    if (q->replica >= 0) {
        xc_sched_set_ready(c->reps[q->replica].sched, q->id);
    }
}

static bool is_stop(const creq *q, int32_t t) {
    for (int i = 0; i < q->n_stop; i++) {
        if (q->stop[i] == t) {
            return true;
        }
    }
    return false;
}

/* ---- step deadlines ---- */

double xc_coord_step_deadline(double step_timeout_s, double mean_s, double mean_rows, int rows,
                              double weight_bytes) {
    if (step_timeout_s > 0) {
        return step_timeout_s;
    }
    if (mean_s <= 0) {
        /* nothing measured yet: every row streams through all the weights; allow 1 GB/s
         * (a full-size 128-row chunk measured ~4.7 GB/s on a 2-core CPU under load 15) */
        double est = (rows > 0 ? rows : 1) * weight_bytes / 1e9;
        return est > 60 ? est : 60;
    }
    double scale = rows > mean_rows && mean_rows > 0 ? rows / mean_rows : 1;
    double d = 20 * mean_s * scale;
    return d > 10 ? d : 10;
}

static double step_deadline_s(const xc_coord *c, const replica *rp, int rows) {
    /* the replica's weights: the layers, the embedding table and the head */
    const xc_place_model *m = &c->cost;
    double wb = m->n_layers * m->layer_bytes + m->embed_bytes + m->head_bytes;
    return xc_coord_step_deadline(c->conf.step_timeout_s, rp->ewma_s, rp->ewma_rows, rows, wb);
}

static void mb_sent(replica *rp, uint64_t id, int rows) {
    if (rp->n_mb < rp->cap_mb) {
        rp->mb[rp->n_mb].id = id;
        rp->mb[rp->n_mb].sent_ns = xc_now_ns();
        rp->mb[rp->n_mb++].rows = rows;
    }
}

static void mb_done(xc_coord *c, replica *rp, uint64_t id) {
    (void)c;
    for (int i = 0; i < rp->n_mb; i++) {
        if (rp->mb[i].id == id) {
            double t = (double)(xc_now_ns() - rp->mb[i].sent_ns) * 1e-9;
            int rows = rp->mb[i].rows > 0 ? rp->mb[i].rows : 1;
            rp->ewma_s = rp->ewma_s > 0 ? 0.9 * rp->ewma_s + 0.1 * t : t;
            rp->ewma_rows = rp->ewma_rows > 0 ? 0.9 * rp->ewma_rows + 0.1 * rows : rows;
            rp->mb[i] = rp->mb[--rp->n_mb];
            return;
        }
    }
}

/* Fails every replica with a micro-batch past its deadline (logged, counted); the cluster is not
 * ready while one is (c->overdue, cleared when the replica is re-formed). */
static void check_deadlines(xc_coord *c) {
    uint64_t now = xc_now_ns();
    bool overdue = false;
    for (int r = 0; r < c->R; r++) {
        replica *rp = &c->reps[r];
        for (int i = 0; i < rp->n_mb; i++) {
            double age = (double)(now - rp->mb[i].sent_ns) * 1e-9;
            double limit = step_deadline_s(c, rp, rp->mb[i].rows);
            if (age > limit) {
                char why[256];
                snprintf(why, sizeof why,
                         "replica %d: micro-batch %llu (%d rows) not back after %.1f s (deadline "
                         "%.1f s)",
                         r, (unsigned long long)rp->mb[i].id, rp->mb[i].rows, age, limit);
                XC_LOG_ERROR("%s; the replica is failed and re-formed", why);
                c->n_step_timeouts++;
                overdue = true;
                fail_replica(c, r, why);
                break;
            }
        }
    }
    c->overdue = overdue;
}

static void on_result(xc_coord *c, const xc_wire_result *res) {
    /* find the replica whose scheduler has this micro-batch: ids are per replica, so the
     * replica is encoded in the high bits */
    int r = (int)((res->microbatch_id >> 48) & 0x3fff);
    uint64_t mb = res->microbatch_id & ((1ull << 48) - 1);
    if (r >= c->R || !c->reps[r].sched) {
        return;
    }
    xc_sched *s = c->reps[r].sched;
    if (!xc_sched_is_inflight(s, mb)) {
        return; /* from before the replica failed: its sequences resumed, their tokens would
                   be duplicates */
    }
    xc_sched_batch_done(s, mb);
    mb_done(c, &c->reps[r], mb);
    size_t next_off = 0; /* where row i's alternatives start in top_ids / top_logprobs */
    for (size_t i = 0; i < res->n; i++) {
        size_t off = next_off;
        if (res->n_logprobs == res->n) {
            next_off += res->n_top[i];
        }
        creq *q = req_find(c, res->seq_ids[i], NULL);
        if (!q || q->replica != r) {
            continue; /* finished or failed meanwhile */
        }
        int32_t t = (int32_t)res->tokens[i];
        if (xc_sched_token(s, q->id, t) != XC_OK) {
            continue;
        }
        if (is_stop(q, t)) {
            req_end(c, q, XC_OK, false, true, NULL);
            continue;
        }
        q->ids[q->n + q->n_gen] = t; /* the prompt of a resume */
        q->n_gen++;
        xc_coord_event ev = {.id = q->id, .kind = XC_COORD_TOKEN, .token = t};
        if (q->logprobs && res->n_logprobs == res->n) { /* api helper: logprobs */
            int32_t top_ids[XC_WIRE_MAX_TOP_LOGPROBS];
            int n_top = (int)res->n_top[i];
            for (int k = 0; k < n_top; k++) {
                top_ids[k] = (int32_t)res->top_ids[off + (size_t)k];
            }
            ev.has_logprob = true;
            ev.logprob = res->logprobs[i];
            ev.n_top = n_top;
            ev.top_ids = top_ids;
            ev.top_logprobs = res->top_logprobs + off;
            q->fn(q->user, &ev);
            if (q->n_gen >= q->max_new) {
                req_end(c, q, XC_OK, false, false, NULL);
            }
            continue;
        }
        q->fn(q->user, &ev);
        if (q->n_gen >= q->max_new) {
            req_end(c, q, XC_OK, false, false, NULL);
        }
    }
    /* sequences that failed on the last stage alone: only their requests end (retryable when
     * the stage lacked memory); the replica and the other sequences go on */
    for (size_t i = 0; i < res->n_failed; i++) {
        creq *q = req_find(c, res->failed_ids[i], NULL);
        if (!q || q->replica != r) {
            continue;
        }
        xc_status code = (xc_status)res->failed_codes[i];
        XC_LOG_WARN("request %llu failed on replica %d's last stage: %s", (unsigned long long)q->id,
                    r, res->failed_messages[i]);
        req_end(c, q, code, code == XC_ERR_NOMEM || code == XC_ERR_IO || code == XC_ERR_TIMEOUT,
                false, res->failed_messages[i]);
    }
}

static void handle(xc_coord *c, const xc_wire_msg *m, const xc_msg *msg) {
    if (m->kind == XC_WIRE_KIND_RESULT) {
        on_result(c, &m->u.result);
        return;
    }
    if (m->kind == XC_WIRE_KIND_FORWARD) {
        if (m->u.forward.microbatch_id & VISION_JOB_FLAG) {
            on_vision_result(c, &m->u.forward, msg);
        } else {
            XC_LOG_WARN("dropped a forward frame that is not a vision result");
        }
        return;
    }
    const xc_wire_control *ctl = &m->u.control;
    int wi;
    switch (ctl->kind) {
    case XC_WIRE_CTL_REGISTER:
        on_register(c, &ctl->u.reg);
        break;
    case XC_WIRE_CTL_HEARTBEAT:
        wi = worker_by_id(c, ctl->u.heartbeat.worker_id);
        if (is_retired(c, ctl->u.heartbeat.incarnation)) {
            break; /* a late heartbeat of a process that was replaced */
        }
        if (wi >= 0 && c->workers[wi].alive && ctl->u.heartbeat.incarnation &&
            c->workers[wi].incarnation &&
            ctl->u.heartbeat.incarnation != c->workers[wi].incarnation) {
            /* its process restarted (the new one registers again while unassigned) */
            worker_replaced(c, wi, "restarted (a heartbeat with a new incarnation)");
            break;
        }
        if (wi >= 0 && c->workers[wi].alive) {
            c->workers[wi].last_seen = xc_now_ns();
            hooks_heartbeat(c, wi, &ctl->u.heartbeat);
        } else {
            ask_reregister(c, &ctl->u.heartbeat);
        }
        break;
    case XC_WIRE_CTL_READY:
        wi = worker_by_id(c, ctl->u.ready.worker_id);
        if (wi >= 0 && c->workers[wi].alive && c->workers[wi].role >= 0) {
            /* the answer to an older Assign (the replica was re-formed meanwhile) does not make
             * it ready: frames of the new epoch would reach a stage still in the old one */
            cworker *w = &c->workers[wi];
            w->assigns_out -= w->assigns_out > 0;
            if (w->assigns_out > 0) {
                break;
            }
            c->workers[wi].ready = true;
            c->workers[wi].n_assign_fail = 0;
            c->workers[wi].last_seen = xc_now_ns();
            update_ready(c);
        }
        break;
    case XC_WIRE_CTL_ERROR:
        XC_LOG_WARN("worker %s reports: %s", ctl->u.error.worker_id, ctl->u.error.message);
        wi = worker_by_id(c, ctl->u.error.worker_id);
        if (wi >= 0 && ctl->u.error.fatal) {
            worker_lost(c, wi, "failed fatally");
        } else if (wi >= 0 && c->workers[wi].alive && c->workers[wi].role >= 0 &&
                   !ctl->u.error.has_microbatch) {
            /* an error about no micro-batch from a worker with a role: its assignment failed */
            assignment_failed(c, wi, ctl->u.error.message);
        } else if (wi >= 0 && c->workers[wi].role == 1 && ctl->u.error.has_microbatch) {
            /* a micro-batch of ours failed on a stage: its sequences' KV state is unknown. An
             * error about a frame we never sent (garbage from elsewhere) changes nothing. */
            uint64_t mb = ctl->u.error.microbatch_id;
            int r = (int)((mb >> 48) & 0x3fff);
            if (r == c->workers[wi].replica && r < c->R &&
                xc_sched_is_inflight(c->reps[r].sched, mb & ((1ull << 48) - 1))) {
                fail_replica(c, r, ctl->u.error.message);
            }
        } else if (wi >= 0 && c->workers[wi].role == 0 && ctl->u.error.has_microbatch) {
            creq *q = req_find(c, ctl->u.error.microbatch_id & ~VISION_JOB_FLAG, NULL);
            if (q) {
                req_end(c, q, XC_ERR_ARG, false, false, ctl->u.error.message);
            }
        }
        break;
    default:
        XC_LOG_WARN("ignored a %s message", xc_wire_ctl_name(ctl->kind));
    }
}

/* ---- sending work ---- */

static void send_vision(xc_coord *c, creq *q) {
    cworker *w = &c->workers[c->vision_worker];
    if (peer_full(c, w)) {
        return; /* a slow (or stopped) vision worker: only image requests wait */
    }
    uint32_t S = (uint32_t)c->mi.img_size;
    xc_wire_seq *seqs = xc_arena_calloc(c->arena, (size_t)q->n_img, sizeof *seqs);
    static const uint32_t block0 = 0;
    size_t bytes = (size_t)q->n_img * 3 * S * S * sizeof(float);
    float *px = xc_malloc(bytes);
    if (!seqs || !px) {
        xc_free(px);
        return;
    }
    memcpy(px, q->pixels, bytes);
    for (int i = 0; i < q->n_img; i++) {
        seqs[i] = (xc_wire_seq){
            .id = (uint64_t)i, .n_tokens = 3 * S, .n_blocks = 1, .block_table = &block0};
    }
    xc_wire_msg m = {
        .kind = XC_WIRE_KIND_FORWARD,
        .u.forward = {
            .microbatch_id = q->id | VISION_JOB_FLAG,
            .kv_block_size = VISION_BLOCK,
            .n_seqs = (size_t)q->n_img,
            .seqs = seqs,
            .payload = {.dtype = XC_DTYPE_F32, .rows = (uint32_t)q->n_img * 3 * S, .cols = S}}};
    xc_frame fr = {.data = px, .len = bytes, .free_fn = free_buf};
    xc_status st = post(c, w, &m, &fr, 1);
    if (st != XC_OK) {
        xc_free(px);
        if (st != XC_AGAIN) {
            XC_LOG_WARN("vision job for request %llu: %s", (unsigned long long)q->id,
                        xc_err_last());
        }
        return;
    }
    q->vision_sent = true;
    hooks_vision_sent(c, q);
}

/* The packed wire bytes of block table bt (nb ids) for q: those of the table q sent last when
 * it is the same, extended when it only grew, packed anew otherwise; NULL without memory (the
 * encoder then packs bt itself). */
static const uint8_t *packed_table(creq *q, const int32_t *bt, int nb, size_t *len) {
    size_t same = (size_t)(nb < q->bt_n ? nb : q->bt_n) * sizeof(int32_t);
    int from = nb >= q->bt_n && (same == 0 || memcmp(q->bt_ids, bt, same) == 0) ? q->bt_n : 0;
    if (from == nb) {
        *len = q->bt_len;
        return q->bt_wire;
    }
    if (nb > q->bt_cap) {
        int cap = nb > 2 * q->bt_cap ? nb : 2 * q->bt_cap;
        int32_t *ids = xc_realloc(q->bt_ids, (size_t)cap * sizeof *ids);
        if (ids) {
            q->bt_ids = ids;
        }
        uint8_t *w = ids ? xc_realloc(q->bt_wire, (size_t)cap * 5) : NULL;
        if (!w) {
            q->bt_n = 0;
            return NULL;
        }
        q->bt_wire = w;
        q->bt_cap = cap;
    }
    if (from == 0) {
        q->bt_len = 0;
    }
    memcpy(q->bt_ids + from, bt + from, (size_t)(nb - from) * sizeof(int32_t));
    q->bt_len +=
        xc_wire_pack_u32((const uint32_t *)bt + from, (size_t)(nb - from), q->bt_wire + q->bt_len);
    q->bt_n = nb;
    *len = q->bt_len;
    return q->bt_wire;
}

/* The Sampling of q's first chunk (or of q as a fork, issue 13.3), in the arena; NULL = no
 * memory. */
static xc_wire_sampling *wire_sampling(xc_coord *c, const creq *q) {
    xc_wire_sampling *smp = xc_arena_calloc(c->arena, 1, sizeof *smp);
    uint32_t *pen = xc_arena_alloc(c->arena, (size_t)(q->n + q->base) * sizeof(uint32_t) + 4);
    if (!smp || !pen) {
        return NULL;
    }
    size_t n_pen = 0;
    if (q->penalize) {
        for (int t = 0; t < q->n; t++) {
            bool in_img = false;
            for (int k = 0; k < q->n_img; k++) {
                in_img = in_img || (t >= q->img[k].start && t < q->img[k].end);
            }
            if (!in_img) {
                pen[n_pen++] = (uint32_t)q->ids[t];
            }
        }
    }
    /* a resumed sequence: the tokens it generated before were seen by its sampler */
    for (int t = q->n; t < q->n + q->base; t++) {
        pen[n_pen++] = (uint32_t)q->ids[t];
    }
    *smp = (xc_wire_sampling){.greedy = q->sp.greedy,
                              .temperature = q->sp.greedy ? 1.0f : q->sp.temperature,
                              .top_k = (uint32_t)q->sp.top_k,
                              .top_p = q->sp.top_p,
                              .repetition_penalty = q->sp.repetition_penalty,
                              .seed = q->sp.seed,
                              .max_new_tokens = (uint32_t)(q->max_new - q->base),
                              .prompt_len = (uint32_t)(q->n + q->base),
                              .n_penalty_ids = n_pen,
                              .penalty_ids = pen,
                              .logprobs = q->logprobs, /* api helper */
                              .top_logprobs = (uint32_t)q->top,
                              .choice = q->sp.choice,
                              .presence_penalty = q->sp.presence_penalty,
                              .frequency_penalty = q->sp.frequency_penalty,
                              .min_p = q->sp.min_p,
                              .min_tokens = (uint32_t)q->sp.min_tokens,
                              /* min_tokens: the last stage holds the stop ids back */
                              .n_stop_ids = q->sp.min_tokens > 0 ? (size_t)q->n_stop : 0,
                              .stop_ids = (const uint32_t *)q->stop,
                              .n_logit_bias = (size_t)q->sp.n_logit_bias,
                              .logit_bias_ids = q->sp.logit_bias_ids,
                              .logit_bias_values = q->sp.logit_bias,
                              .resumed_tokens = (uint32_t)q->base};
    return smp;
}

/* A micro-batch that cannot be built (no memory) is undone in the scheduler and formed again at
 * the next step; the log says so at most once a second. */
static xc_status batch_unbuilt(xc_coord *c, int r, const xc_sched_batch *b, int32_t *ids,
                               float *img) {
    xc_free(ids);
    xc_free(img);
    xc_sched_abort(c->reps[r].sched, b);
    uint64_t now = xc_now_ns();
    if (now - c->nomem_log_ns > 1000000000ull) {
        c->nomem_log_ns = now;
        XC_LOG_ERROR("replica %d: no memory to build a micro-batch of %d rows; retrying", r,
                     b->n_rows);
    }
    return XC_ERR_NOMEM;
}

/* Builds micro-batch b of replica r and sends it to stage 0. Every failure before the send
 * undoes b in the scheduler (XC_ERR_NOMEM), and so does a full queue to stage 0 (XC_AGAIN); a
 * broken link fails the replica (XC_ERR_IO). */
static xc_status send_batch(xc_coord *c, int r, const xc_sched_batch *b) {
    replica *rp = &c->reps[r];
    cworker *w0 = &c->workers[rp->worker[0]];
    size_t H = (size_t)c->mi.hidden;
    xc_wire_seq *seqs = xc_arena_alloc(c->arena, (size_t)b->n_items * sizeof *seqs); /* set below */
    creq **qs = xc_arena_alloc(c->arena, (size_t)b->n_items * sizeof *qs + 1);
    int32_t *ids = xc_malloc((size_t)b->n_rows * sizeof(int32_t) + 4);
    size_t img_rows = 0;
    for (int i = 0; qs && i < b->n_items; i++) {
        const xc_sched_item *it = &b->items[i];
        creq *q = qs[i] = req_find(c, it->id, NULL); /* looked up once per item */
        for (int k = 0; q && k < q->n_img; k++) {
            int a = q->img[k].start > it->first_pos ? q->img[k].start : it->first_pos;
            int e = q->img[k].end < it->first_pos + it->n_tokens ? q->img[k].end
                                                                 : it->first_pos + it->n_tokens;
            img_rows += e > a ? (size_t)(e - a) : 0;
        }
    }
    float *img = img_rows ? xc_malloc(img_rows * H * sizeof(float)) : NULL;
    if (!seqs || !qs || !ids || (img_rows && !img)) {
        return batch_unbuilt(c, r, b, ids, img);
    }
    size_t row = 0, irow = 0;
    double prompt_rows = 0, hit_rows = 0;
    for (int i = 0; i < b->n_items; i++) {
        const xc_sched_item *it = &b->items[i];
        creq *q = qs[i];
        XC_ASSERT(q);
        int nb = it->n_blocks;
        const int32_t *bt = it->blocks;
        /* only the blocks covering positions [0, first_pos + n_tokens) (proto: block_table) */
        int bs = c->conf.block_size, nb_use = (it->first_pos + it->n_tokens + bs - 1) / bs;
        nb = nb < nb_use ? nb : nb_use;
        size_t bt_len = 0;
        const uint8_t *bt_wire = packed_table(q, bt, nb, &bt_len);
        xc_wire_range *rr =
            q->n_img ? xc_arena_alloc(c->arena, (size_t)q->n_img * sizeof *rr) : NULL;
        if (q->n_img && !rr) {
            return batch_unbuilt(c, r, b, ids, img);
        }
        /* image ranges of this chunk, relative to the chunk, and their embedding rows */
        int n_rr = 0;
        for (int k = 0; k < q->n_img; k++) {
            int a = q->img[k].start > it->first_pos ? q->img[k].start : it->first_pos;
            int e = q->img[k].end < it->first_pos + it->n_tokens ? q->img[k].end
                                                                 : it->first_pos + it->n_tokens;
            if (e <= a) {
                continue;
            }
            rr[n_rr++] =
                (xc_wire_range){(uint32_t)(a - it->first_pos), (uint32_t)(e - it->first_pos)};
            XC_ASSERT(q->emb); /* the scheduler shares the image rows of a covered request */
            size_t src = (size_t)k * c->mi.img_tokens + (size_t)(a - q->img[k].start);
            memcpy(img + irow * H, q->emb + src * H, (size_t)(e - a) * H * sizeof(float));
            irow += (size_t)(e - a);
        }
        if (it->n_tokens == 1 && it->first_pos >= q->n + q->base) {
            ids[row] = it->token;
        } else {
            memcpy(ids + row, q->ids + it->first_pos, (size_t)it->n_tokens * sizeof(int32_t));
            /* image rows carry a placeholder id (ignored by stage 0) */
            for (int k = 0; k < n_rr; k++) {
                for (uint32_t t = rr[k].start; t < rr[k].end; t++) {
                    ids[row + t] = 0;
                }
            }
        }
        row += (size_t)it->n_tokens;
        if (it->first_pos < q->n + q->base) {
            prompt_rows += it->n_tokens;
            hit_rows += it->first_chunk ? it->first_pos : 0; /* the rows it starts after */
        }
        xc_wire_sampling *smp = NULL;
        if (it->first_chunk && !(smp = wire_sampling(c, q))) {
            return batch_unbuilt(c, r, b, ids, img);
        }
        /* issue 13.3: forks drawing their first token from this chunk's last row */
        xc_wire_fork *fk = NULL;
        if (it->n_forks > 0) {
            fk = xc_arena_alloc(c->arena, (size_t)it->n_forks * sizeof *fk);
            if (!fk) {
                return batch_unbuilt(c, r, b, ids, img);
            }
            for (int k = 0; k < it->n_forks; k++) {
                creq *fq = req_find(c, b->forks[it->fork0 + k].id, NULL);
                XC_ASSERT(fq); /* a live sequence of the scheduler */
                fk[k] = (xc_wire_fork){.id = fq->id, .sampling = wire_sampling(c, fq)};
                if (!fk[k].sampling) {
                    return batch_unbuilt(c, r, b, ids, img);
                }
                hit_rows += fq->n + fq->base; /* its whole prompt, computed by its twin */
            }
        }
        seqs[i] = (xc_wire_seq){.id = it->id,
                                .first_pos = (uint32_t)it->first_pos,
                                .n_tokens = (uint32_t)it->n_tokens,
                                .n_blocks = (size_t)nb,
                                /* block ids are >= 0: the same bits as uint32 */
                                .block_table = (const uint32_t *)bt,
                                .block_table_packed = bt_wire,
                                .block_table_packed_len = bt_len,
                                .n_image_ranges = (size_t)n_rr,
                                .image_ranges = rr,
                                .sampling = smp,
                                .n_forks = (size_t)it->n_forks,
                                .forks = fk};
    }
    uint32_t *cp_src = xc_arena_alloc(c->arena, (size_t)b->n_copies * sizeof(uint32_t) + 4);
    uint32_t *cp_dst = xc_arena_alloc(c->arena, (size_t)b->n_copies * sizeof(uint32_t) + 4);
    if (!cp_src || !cp_dst) {
        return batch_unbuilt(c, r, b, ids, img);
    }
    for (int k = 0; k < b->n_copies; k++) {
        cp_src[k] = (uint32_t)b->copies[k].src;
        cp_dst[k] = (uint32_t)b->copies[k].dst;
    }
    xc_wire_forward f = {
        .microbatch_id = ((uint64_t)r << 48) | b->id,
        .epoch = rp->epoch,
        .kv_block_size = (uint32_t)c->conf.block_size,
        .n_seqs = (size_t)b->n_items,
        .seqs = seqs,
        .n_release = (size_t)b->n_release,
        .release_ids = b->release,
        .payload = {.dtype = XC_DTYPE_I32, .rows = (uint32_t)b->n_rows, .cols = 1},
        .has_image_rows = img_rows > 0,
        .image_rows = {.dtype = XC_DTYPE_F32, .rows = (uint32_t)img_rows, .cols = (uint32_t)H},
        .n_copies = (size_t)b->n_copies,
        .copy_src = cp_src,
        .copy_dst = cp_dst};
    xc_frame fr[2] = {
        {.data = ids, .len = (size_t)b->n_rows * sizeof(int32_t), .free_fn = free_buf},
        {.data = img, .len = img_rows * H * sizeof(float), .free_fn = free_buf}};
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD, .u.forward = f};
    xc_status st = post(c, w0, &m, fr, img_rows ? 2 : 1);
    if (st == XC_AGAIN) { /* stage 0 is slow: form it again later (its deadline covers a stop) */
        xc_free(ids);
        xc_free(img);
        xc_sched_abort(rp->sched, b);
        return XC_AGAIN;
    }
    if (st != XC_OK) {
        xc_free(ids);
        xc_free(img);
        char why[512];
        snprintf(why, sizeof why, "replica %d: send to stage 0 (%s) failed: %s", r, w0->id,
                 xc_err_last());
        XC_LOG_ERROR("%s", why);
        fail_replica(c, r, why);
        return XC_ERR_IO;
    }
    mb_sent(rp, b->id, b->n_rows);
    c->prompt_rows += prompt_rows;
    c->prefix_hit_rows += hit_rows;
    c->bytes_sent += (double)b->n_rows * sizeof(int32_t) + (double)img_rows * H * sizeof(float);
    if (!img_rows) {
        xc_free(img);
    }
    return XC_OK;
}

/* ---- admission ---- */

/* The prefix cache's row keys of q's prompt (n + base rows: a resumed request's prompt ends with
 * the tokens it generated): a text row's token id, an image row's key from the image's pixel
 * hash and the row's offset in the image. *data_rows = the rows up to the end of its last image
 * (0 once its embeddings are here). NULL when the cache is off or no memory (never shared). */
static uint64_t *req_keys(const xc_coord *c, const creq *q, int *data_rows) {
    *data_rows = 0;
    if (c->conf.no_prefix_cache) {
        return NULL;
    }
    int n = q->n + q->base;
    uint64_t *k = xc_malloc((size_t)n * sizeof *k + 8);
    if (!k) {
        return NULL;
    }
    for (int t = 0; t < n; t++) {
        k[t] = (uint64_t)(uint32_t)q->ids[t];
    }
    for (int i = 0; i < q->n_img; i++) {
        for (int t = q->img[i].start; t < q->img[i].end; t++) {
            k[t] = xc_sched_image_key(q->img_hash[i], t - q->img[i].start);
        }
        if (!q->emb && q->img[i].end > *data_rows) {
            *data_rows = q->img[i].end;
        }
    }
    return k;
}

/* The least-loaded ready replica (fewest live sequences); with keys, one whose prefix cache holds
 * more of the prompt instead, unless it is much busier (more than 25 % + 4 sequences above the
 * least load). */
static int pick_replica(xc_coord *c, const uint64_t *keys, int n) {
    int best = -1, load = 0;
    for (int r = 0; r < c->R; r++) {
        if (!c->reps[r].ready) {
            continue;
        }
        int l = xc_sched_n_live(c->reps[r].sched);
        if (best < 0 || l < load) {
            best = r;
            load = l;
        }
    }
    if (best < 0 || !keys || c->R < 2) {
        return best;
    }
    int hit = xc_sched_cached_rows(c->reps[best].sched, keys, n), pick = best;
    for (int r = 0; r < c->R; r++) {
        if (!c->reps[r].ready || r == best) {
            continue;
        }
        int l = xc_sched_n_live(c->reps[r].sched);
        int h = xc_sched_cached_rows(c->reps[r].sched, keys, n);
        if (h > hit && l <= load + load / 4 + 4) {
            pick = r;
            hit = h;
        }
    }
    return pick;
}

static void admit_inbox(xc_coord *c) {
    pthread_mutex_lock(&c->lock);
    int n = c->n_inbox;
    creq **in = c->inbox;
    c->inbox = NULL;
    c->n_inbox = c->cap_inbox = 0;
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < n; i++) {
        creq *q = in[i];
        bool room = c->n_reqs < c->cap_reqs;
        if (!room) {
            int cap = c->cap_reqs ? c->cap_reqs * 2 : 64;
            creq **nr = xc_realloc(c->reqs, (size_t)cap * sizeof *nr);
            if (nr) {
                c->reqs = nr;
                c->cap_reqs = cap;
                room = true;
            }
        }
        if (!room || xc_idmap_put(&c->req_by_id, q->id, q) != XC_OK) {
            emit_done(q, XC_ERR_NOMEM, true, false, "coordinator out of memory");
            req_free(q);
            atomic_fetch_sub(&c->n_active, 1);
            continue;
        }
        q->slot = c->n_reqs;
        c->reqs[c->n_reqs++] = q;
    }
    xc_free(in);
    /* route requests that wait for a replica */
    uint64_t now = xc_now_ns();
    bool any_ready = false, any_forming = false;
    for (int r = 0; r < c->R; r++) {
        any_ready = any_ready || c->reps[r].ready;
        bool filled = c->reps[r].sched != NULL;
        for (int k = 0; k < c->reps[r].P; k++) {
            filled = filled && c->reps[r].worker[k] >= 0;
        }
        any_forming = any_forming || (filled && !c->reps[r].ready);
    }
    uint64_t wait_limit = (uint64_t)(c->conf.resume_timeout_s * 1e9);
    for (int i = 0; i < c->n_reqs;) {
        creq *q = c->reqs[i];
        if (q->wait_ns && now - q->wait_ns > wait_limit &&
            (q->replica < 0 || (q->n_img > 0 && !q->emb))) {
            char why[200];
            snprintf(why, sizeof why,
                     "no replica%s could take the request within %g s (--resume-timeout); "
                     "retry later",
                     q->replica >= 0 ? " (vision)" : "", c->conf.resume_timeout_s);
            c->n_resume_fail += q->n_resumes > 0;
            req_end(c, q, XC_ERR_IO, true, false, why);
            continue;
        }
        if (q->replica >= 0) {
            i++;
            continue;
        }
        /* a new request with no replica serving and none about to (a stage is lost and no
         * worker is there to take it) fails fast; a resumed one, or any while a replica
         * re-forms, waits (up to --resume-timeout) */
        if (c->was_ready && !any_ready && !any_forming && q->n_resumes == 0 && !q->pin) {
            req_end(c, q, XC_ERR_IO, true, false,
                    "cluster not ready (a worker is lost or loading); retry later");
            continue;
        }
        int data_rows = 0;
        uint64_t *keys = req_keys(c, q, &data_rows);
        int r = q->pin ? q->pin - 1 : pick_replica(c, keys, q->n + q->base);
        if (q->pin && (r >= c->R || !c->reps[r].ready)) {
            xc_free(keys);
            if (c->placed) {
                req_end(c, q, XC_ERR_IO, true, false, "its replica is not ready");
                continue;
            }
            r = -1;
        }
        if (r < 0) {
            xc_free(keys);
            q->wait_ns = q->wait_ns ? q->wait_ns : (c->was_ready ? now : 0);
            i++; /* not placed yet, or every replica re-forming: wait */
            continue;
        }
        /* a prompt whose image rows are all in cached KV blocks (the next turn of a chat, the
         * other choices of n > 1) needs no vision job (it is added ready without embeddings);
         * the canary (pinned) always sends its image to the vision worker too */
        bool covered = false;
        xc_status st = xc_sched_add_keyed(c->reps[r].sched, q->id, q->n + q->base,
                                          q->max_new - q->base, q->n_img == 0 || q->emb != NULL,
                                          keys, q->pin ? 0 : data_rows, &covered);
        xc_free(keys);
        q->covered = st == XC_OK && covered && !q->emb;
        if (st != XC_OK) {
            req_end(c, q, st, false, false, xc_err_last());
            continue;
        }
        q->replica = r;
        if (q->n_img == 0 || q->emb || q->covered) {
            q->wait_ns = 0;
        }
        i++;
    }
    /* covered requests whose cached image rows were evicted before admission: vision after all */
    for (int r = 0; r < c->R; r++) {
        uint64_t u[64];
        int n_u;
        while (c->reps[r].sched && (n_u = xc_sched_take_uncovered(c->reps[r].sched, u, 64)) > 0) {
            for (int k = 0; k < n_u; k++) {
                creq *q = req_find(c, u[k], NULL);
                if (q && q->covered) {
                    q->covered = false;
                    q->wait_ns = now;
                }
            }
        }
    }
    for (int i = 0; i < c->n_reqs; i++) {
        creq *q = c->reqs[i];
        if (q->n_img > 0 && !q->vision_sent && !q->covered && c->vision_worker >= 0 &&
            c->workers[c->vision_worker].ready) {
            send_vision(c, q);
        }
    }
}

/* ---- loop ---- */

static void check_liveness(xc_coord *c) {
    uint64_t now = xc_now_ns(), dead = (uint64_t)(c->conf.dead_s * 1e9);
    for (int i = 0; i < c->n_workers; i++) {
        cworker *w = &c->workers[i];
        if (w->alive && now - w->last_seen > dead) {
            char how[64];
            snprintf(how, sizeof how, "lost (no heartbeat for %.1f s)",
                     (double)(now - w->last_seen) * 1e-9);
            worker_lost(c, i, how);
        }
    }
}

/* Ends a request that never reached c->reqs (inbox leftovers at shutdown): its DONE event, then
 * free. */
static void drop_queued(xc_coord *c, creq *q, const char *why) {
    emit_done(q, XC_ERR_IO, true, false, why);
    req_free(q);
    atomic_fetch_sub(&c->n_active, 1);
}

/* Ends every request with a DONE event; with close, also closes the inbox for good (submit
 * refuses from then on) and ends what was queued up to that moment. */
static void fail_everything(xc_coord *c, const char *why, bool close) {
    while (c->n_reqs > 0) {
        req_end(c, c->reqs[0], XC_ERR_IO, true, false, why);
    }
    pthread_mutex_lock(&c->lock);
    int n = c->n_inbox;
    creq **in = c->inbox;
    c->inbox = NULL;
    c->n_inbox = c->cap_inbox = 0;
    c->closed = c->closed || close;
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < n; i++) {
        drop_queued(c, in[i], why);
    }
    xc_free(in);
}

/* Once a second, a Heartbeat (worker_id empty) to every registered worker: a worker that hears
 * nothing from its coordinator for --orphan-timeout seconds knows it is gone. Never waits for a
 * worker whose mailbox is full or gone (that one is handled by its own heartbeats). */
static void send_heartbeats(xc_coord *c, uint64_t *last, uint64_t *seq) {
    uint64_t now = xc_now_ns();
    if (now - *last < 1000000000ull) {
        return;
    }
    *last = now;
    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL,
                     .u.control = {.kind = XC_WIRE_CTL_HEARTBEAT,
                                   .u.heartbeat = {.seq = ++*seq, .time_ns = now}}};
    for (int i = 0; i < c->n_workers; i++) {
        if (c->workers[i].alive && c->workers[i].tx && c->workers[i].q_n == 0) {
            (void)xc_transport_send_wire(c->workers[i].tx, &m, NULL, 0, 0);
        }
    }
}

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *coord_main(void *arg) {
    xc_coord *c = arg;
    xc_log_set_role("C");
    uint64_t drain_deadline = 0, hb_last = 0, hb_seq = 0;
    while (!atomic_load(&c->stop_now)) {
        xc_arena_reset_keep(c->arena, 16u << 20); /* no malloc per step once settled */
        /* drain the mailbox, then schedule */
        int timeout = 5, n_msg = 0, n_mb = 0, n_rows = 0; /* woken by submit and cancel */
        uint64_t cpu0 = 0, wall0 = 0, in_handle = 0;      /* wall time handling messages */
        for (int k = 0; k < 256; k++) {
            xc_msg msg = {0};
            xc_wire_msg m;
            xc_status st = xc_transport_recv_wire(c->rx, timeout, c->arena, &msg, &m);
            if (k == 0 && c->conf.on_step) { /* the step starts when the wait ends */
                cpu0 = thread_cpu_ns();
                wall0 = xc_now_ns();
            }
            if (st != XC_OK) {
                break;
            }
            uint64_t t = c->conf.on_step ? xc_now_ns() : 0;
            handle(c, &m, &msg);
            in_handle += c->conf.on_step ? xc_now_ns() - t : 0;
            xc_msg_fini(&msg);
            timeout = 0;
            n_msg++;
        }
        flush_queues(c);
        pump_dials(c);
        check_liveness(c);
        check_deadlines(c);
        send_heartbeats(c, &hb_last, &hb_seq);
        if (!c->placed) {
            place(c);
            update_ready(c);
        }
        admit_inbox(c);
        hooks_step(c);                     /* serving hooks: cancellations, then statistics */
        uint64_t in_next = 0, in_send = 0; /* wall time forming / building and sending */
        for (int r = 0; r < c->R; r++) {
            xc_sched_batch b;
            for (;;) {
                uint64_t t = c->conf.on_step ? xc_now_ns() : 0;
                bool got = c->reps[r].ready && xc_sched_next(c->reps[r].sched, &b);
                in_next += c->conf.on_step ? xc_now_ns() - t : 0;
                if (!got) {
                    break;
                }
                t = c->conf.on_step ? xc_now_ns() : 0;
                xc_status sst = send_batch(c, r, &b);
                in_send += c->conf.on_step ? xc_now_ns() - t : 0;
                if (sst != XC_OK) {
                    break; /* undone (tried again next step) or the replica failed */
                }
                n_mb++;
                n_rows += b.n_rows;
            }
        }
        if (c->conf.on_step && (n_msg > 0 || n_mb > 0)) {
            xc_coord_step sp = {.cpu_s = (double)(thread_cpu_ns() - cpu0) * 1e-9,
                                .wall_s = (double)(xc_now_ns() - wall0) * 1e-9,
                                .live = c->n_reqs,
                                .messages = n_msg,
                                .microbatches = n_mb,
                                .rows = n_rows,
                                .handle_s = (double)in_handle * 1e-9,
                                .sched_next_s = (double)in_next * 1e-9,
                                .send_s = (double)in_send * 1e-9};
            c->conf.on_step(c->conf.on_step_user, &sp);
        }
        if (c->placed) {
            update_ready(c);
        }
        if (atomic_load(&c->stopping)) {
            uint64_t now = xc_now_ns();
            if (!drain_deadline) {
                drain_deadline = now + (uint64_t)(c->drain_s * 1e9);
            }
            if (c->n_reqs == 0 || now >= drain_deadline) {
                break;
            }
        }
    }
    fail_everything(c, "coordinator shutting down", true);
    if (c->shutdown_workers) {
        for (int i = 0; i < c->n_workers; i++) {
            if (c->workers[i].alive) {
                xc_wire_control ctl = {.kind = XC_WIRE_CTL_SHUTDOWN,
                                       .u.shutdown.reason = "coordinator stopped"};
                (void)send_ctl(c, &c->workers[i], &ctl);
            }
        }
        /* queued messages (the shutdowns among them) get send_timeout_ms in all to leave */
        uint64_t end = xc_now_ns() + (uint64_t)c->conf.send_timeout_ms * 1000000ull;
        for (bool left = true; left && xc_now_ns() < end;) {
            flush_queues(c);
            left = false;
            for (int i = 0; i < c->n_workers; i++) {
                left = left || (c->workers[i].alive && c->workers[i].q_n > 0);
            }
            if (left) {
                usleep(2000);
            }
        }
    }
    return NULL;
}

/* ---- API ---- */

xc_status xc_coord_create(const xc_coord_conf *conf, xc_coord **out) {
    if (!conf->model_dir) {
        return xc_errf(XC_ERR_ARG, "coordinator: --model is required");
    }
    if (conf->max_rows < 1 || conf->chunk < 1 || conf->block_size < 1 || conf->kv_blocks < 1 ||
        !(conf->dead_s > 0) || conf->stages < 0 || conf->replicas < 0) {
        return xc_errf(XC_ERR_ARG, "coordinator: sizes and timeouts must be positive");
    }
    xc_status st = XC_OK;
    xc_coord *c = xc_calloc(1, sizeof *c);
    if (!c) {
        return XC_ERR_NOMEM;
    }
    c->conf = *conf;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    pthread_mutex_init(&c->stats_lock, NULL);
    c->vision_worker = -1;
    /* request (= sequence) ids start at the wall clock in microseconds, so that a restarted
     * coordinator never reuses an id of its predecessor: a late Result of the old one then
     * matches no sequence and is dropped (ids stay far below bit 63, the vision job flag) */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c->next_id = 1 + (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    snprintf(c->model_dir, sizeof c->model_dir, "%s", conf->model_dir);
    c->conf.model_dir = c->model_dir;
    XC_TRY_GOTO(model_info_load(conf->model_dir, &c->mi), st, fail);
    /* default max_length; up to max_position_embeddings as the original generates (prompts
     * stay within max_length: xc_coord_max_prompt) */
    if (c->conf.max_context <= 0) {
        c->conf.max_context = c->mi.max_ctx;
    } else if (c->conf.max_context > c->mi.max_pos) {
        c->conf.max_context = c->mi.max_pos;
    }
    if (c->conf.send_timeout_ms <= 0) {
        c->conf.send_timeout_ms = 2000;
    }
    if (c->conf.send_queue <= 0) {
        c->conf.send_queue = 64;
    }
    if (c->conf.max_resumes < 0) {
        c->conf.max_resumes = 0;
    }
    if (!(c->conf.resume_timeout_s > 0)) {
        c->conf.resume_timeout_s = 30;
    }
    c->need_vision = !conf->no_vision && c->mi.img_size > 0;
    derive_cost(c);
    XC_TRY_GOTO(xc_arena_create(1 << 16, &c->arena), st, fail);
    /* wakeable: a submitted request or a cancellation ends the loop's wait for messages */
    xc_transport_conf rxc = conf->tconf ? *conf->tconf : (xc_transport_conf)XC_TRANSPORT_CONF_INIT;
    rxc.wakeable = true;
    XC_TRY_GOTO(xc_transport_open(conf->endpoint ? conf->endpoint : "tcp://127.0.0.1:5555",
                                  XC_TRANSPORT_RECV, &rxc, &c->rx),
                st, fail);
    if (pthread_create(&c->thread, NULL, coord_main, c) != 0) {
        st = xc_errf(XC_ERR_IO, "coordinator: cannot start its thread");
        goto fail;
    }
    c->started = true;
    XC_LOG_INFO("coordinator on %s: model %s (%d layers, vocab %d%s), waiting for workers",
                xc_transport_endpoint(c->rx), c->model_dir, c->mi.n_layers, c->mi.vocab,
                c->need_vision ? ", vision" : "");
    *out = c;
    return XC_OK;
fail:
    xc_coord_destroy(c);
    return st;
}

static xc_status check_request(const xc_coord *c, const xc_coord_request *r) {
    if (!r->ids || r->n <= 0) {
        return xc_errf(XC_ERR_ARG, "empty prompt");
    }
    if (r->max_new_tokens < 1) {
        return xc_errf(XC_ERR_ARG, "max_new_tokens must be >= 1");
    }
    if (r->n > xc_coord_max_prompt(c)) {
        return xc_errf(XC_ERR_ARG, "prompt of %d rows is longer than max_length %d", r->n,
                       xc_coord_max_prompt(c));
    }
    if ((long)r->n + r->max_new_tokens > c->conf.max_context) {
        return xc_errf(XC_ERR_ARG, "prompt of %d tokens + %d new exceeds the context of %d", r->n,
                       r->max_new_tokens, c->conf.max_context);
    }
    if (r->n_img > 0 && (!c->need_vision || !r->pixels)) {
        return xc_errf(XC_ERR_ARG, "prompt has images but %s",
                       c->need_vision ? "no pixels" : "the cluster serves no vision");
    }
    if (r->n_img < 0 || r->n_img > 64 || r->n_stop_ids < 0 || r->n_stop_ids > 64) {
        return xc_errf(XC_ERR_ARG, "at most 64 images and 64 stop ids");
    }
    for (int k = 0; k < r->n_stop_ids; k++) {
        if (r->stop_ids[k] < 0 || r->stop_ids[k] >= c->mi.vocab) {
            return xc_errf(XC_ERR_ARG, "stop id %d is outside the vocabulary of %d", r->stop_ids[k],
                           c->mi.vocab);
        }
    }
    int prev = 0;
    for (int k = 0; k < r->n_img; k++) {
        if (r->img[k].start < prev || r->img[k].end > r->n ||
            r->img[k].end - r->img[k].start != c->mi.img_tokens) {
            return xc_errf(XC_ERR_ARG, "image range %d [%d, %d) must be %d rows inside the prompt",
                           k, r->img[k].start, r->img[k].end, c->mi.img_tokens);
        }
        prev = r->img[k].end;
    }
    for (int i = 0, k = 0; i < r->n; i++) {
        while (k < r->n_img && i >= r->img[k].end) {
            k++;
        }
        bool in_img = k < r->n_img && i >= r->img[k].start;
        if (!in_img && (r->ids[i] < 0 || r->ids[i] >= c->mi.vocab)) {
            return xc_errf(XC_ERR_ARG, "token id %d at %d is outside the vocabulary of %d",
                           r->ids[i], i, c->mi.vocab);
        }
    }
    /* the last stage's own validator (the wire accepts the same ranges), so that a request
     * accepted here never fails there; greedy ignores the temperature */
    const xc_coord_sampling *s = &r->sampling;
    xc_sampling sp = {.greedy = s->greedy,
                      .temperature = s->greedy ? 1.0f : s->temperature,
                      .top_k = s->top_k,
                      .top_p = s->top_p,
                      .repetition_penalty = s->repetition_penalty,
                      .seed = s->seed,
                      .choice = s->choice,
                      .presence_penalty = s->presence_penalty,
                      .frequency_penalty = s->frequency_penalty,
                      .min_p = s->min_p,
                      .min_tokens = s->min_tokens};
    if (s->choice >= 65536) {
        return xc_errf(XC_ERR_ARG, "choice index %u is not below 65536", s->choice);
    }
    if (s->n_logit_bias < 0 || s->n_logit_bias > XC_SAMPLING_MAX_LOGIT_BIAS) {
        return xc_errf(XC_ERR_ARG, "logit_bias has %d entries (at most %d)", s->n_logit_bias,
                       XC_SAMPLING_MAX_LOGIT_BIAS);
    }
    for (int i = 0; i < s->n_logit_bias; i++) {
        if (s->logit_bias_ids[i] >= (uint32_t)c->mi.vocab ||
            !(s->logit_bias[i] >= -100.0f && s->logit_bias[i] <= 100.0f)) {
            return xc_errf(XC_ERR_ARG,
                           "logit_bias: token %u bias %g (ids below %d, bias in "
                           "[-100, 100])",
                           s->logit_bias_ids[i], (double)s->logit_bias[i], c->mi.vocab);
        }
    }
    return xc_sampling_validate(&sp);
}

static void *dup_mem(const void *p, size_t n) {
    void *q = xc_malloc(n ? n : 1);
    if (q && n) {
        memcpy(q, p, n);
    }
    return q;
}

xc_status xc_coord_submit(xc_coord *c, const xc_coord_request *r, xc_coord_event_fn fn, void *user,
                          uint64_t *id) {
    if (atomic_load(&c->stopping)) {
        return xc_errf(XC_ERR_UNSUPPORTED, "the coordinator is shutting down");
    }
    XC_TRY(check_request(c, r));
    creq *q = xc_calloc(1, sizeof *q);
    if (!q) {
        return XC_ERR_NOMEM;
    }
    size_t S = (size_t)c->mi.img_size;
    q->replica = -1;
    q->n = r->n;
    q->n_img = r->n_img;
    q->n_stop = r->n_stop_ids;
    q->ids = xc_malloc(((size_t)r->n + (size_t)r->max_new_tokens) * sizeof(int32_t));
    if (q->ids) {
        memcpy(q->ids, r->ids, (size_t)r->n * sizeof(int32_t));
    }
    q->pin = r->pin_replica > 0 ? r->pin_replica : 0;
    q->img = dup_mem(r->img, (size_t)r->n_img * sizeof(xc_coord_range));
    q->stop = dup_mem(r->stop_ids, (size_t)r->n_stop_ids * sizeof(int32_t));
    q->pixels = r->n_img ? dup_mem(r->pixels, (size_t)r->n_img * 3 * S * S * sizeof(float)) : NULL;
    q->img_hash = r->n_img ? xc_calloc((size_t)r->n_img, sizeof(uint64_t)) : NULL;
    if (q->img_hash && r->img_hash) {
        memcpy(q->img_hash, r->img_hash, (size_t)r->n_img * sizeof(uint64_t));
    }
    for (int i = 0; q->img_hash && q->pixels && !r->img_hash && i < r->n_img; i++) {
        uint8_t d[32];
        xc_sha256_sum(q->pixels + (size_t)i * 3 * S * S, 3 * S * S * sizeof(float), d);
        for (int k = 0; k < 8; k++) {
            q->img_hash[i] = q->img_hash[i] << 8 | d[k];
        }
    }
    q->sp = r->sampling;
    if (q->sp.greedy) {
        q->sp.temperature = 1.0f;
    }
    q->max_new = r->max_new_tokens;
    q->penalize = r->penalize_prompt;
    q->logprobs = r->logprobs; /* api helper */
    q->top = r->top_logprobs < 0 ? 0 : r->top_logprobs > 20 ? 20 : r->top_logprobs;
    q->fn = fn;
    q->user = user;
    if (!q->ids || !q->img || !q->stop || (r->n_img && (!q->pixels || !q->img_hash))) {
        req_free(q);
        return XC_ERR_NOMEM;
    }
    pthread_mutex_lock(&c->lock);
    if (c->closed || atomic_load(&c->stopping)) {
        /* checked again under the lock: the coordinator thread's last drain of the inbox takes
         * it, so nothing can be queued after that drain */
        pthread_mutex_unlock(&c->lock);
        req_free(q);
        return xc_errf(XC_ERR_UNSUPPORTED, "the coordinator is shutting down");
    }
    if (c->n_inbox == c->cap_inbox) {
        int cap = c->cap_inbox ? c->cap_inbox * 2 : 16;
        creq **n = xc_realloc(c->inbox, (size_t)cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&c->lock);
            req_free(q);
            return XC_ERR_NOMEM;
        }
        c->inbox = n;
        c->cap_inbox = cap;
    }
    q->id = c->next_id++;
    c->inbox[c->n_inbox++] = q;
    atomic_fetch_add(&c->n_active, 1);
    if (id) {
        *id = q->id;
    }
    pthread_mutex_unlock(&c->lock);
    xc_transport_wake(c->rx); /* admitted now, not after the loop's wait for messages */
    return XC_OK;
}

bool xc_coord_ready(xc_coord *c) {
    return atomic_load(&c->ready_flag);
}

int xc_coord_n_active(xc_coord *c) {
    return atomic_load(&c->n_active);
}

xc_status xc_coord_wait_ready(xc_coord *c, double timeout_s) {
    uint64_t end = xc_now_ns() + (uint64_t)(timeout_s * 1e9);
    while (!atomic_load(&c->ready_flag)) {
        if (xc_now_ns() >= end) {
            return xc_errf(XC_ERR_TIMEOUT, "cluster not ready after %.1f s", timeout_s);
        }
        usleep(10000);
    }
    return XC_OK;
}

const char *xc_coord_endpoint(const xc_coord *c) {
    return xc_transport_endpoint(c->rx);
}

int xc_coord_image_tokens(const xc_coord *c) {
    return c->need_vision ? c->mi.img_tokens : 0;
}

int xc_coord_image_size(const xc_coord *c) {
    return c->need_vision ? c->mi.img_size : 0;
}

int xc_coord_vocab(const xc_coord *c) {
    return c->mi.vocab;
}

void xc_coord_stop(xc_coord *c, double drain_s, bool shutdown_workers) {
    if (!c->started) {
        return;
    }
    c->drain_s = drain_s;
    c->shutdown_workers = shutdown_workers;
    atomic_store(&c->stopping, 1);
    pthread_join(c->thread, NULL);
    c->started = false;
}

void xc_coord_destroy(xc_coord *c) {
    if (!c) {
        return;
    }
    if (c->started) {
        atomic_store(&c->stop_now, 1);
        xc_coord_stop(c, 0, false);
    }
    while (c->n_dials > 0) {
        dial_close(c, 0);
    }
    /* normally empty (the thread's last step ended everything): never drop a request without
     * its DONE event */
    fail_everything(c, "coordinator destroyed", true);
    xc_free(c->reqs);
    xc_idmap_fini(&c->req_by_id);
    for (int i = 0; i < c->n_workers; i++) {
        queue_clear(c, &c->workers[i]);
        xc_transport_close(c->workers[i].tx);
    }
    for (int r = 0; r < MAX_REPLICAS; r++) {
        xc_sched_destroy(c->reps[r].sched);
        xc_free(c->reps[r].mb);
    }
    xc_transport_close(c->rx);
    xc_arena_destroy(c->arena);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->stats_lock);
    xc_free(c->cancels);
    xc_free(c);
}

/* ---- serving hooks (api helper): cancellation and statistics for the HTTP API ---- */

xc_status xc_coord_cancel(xc_coord *c, uint64_t id) {
    pthread_mutex_lock(&c->lock);
    if (c->n_cancels == c->cap_cancels) {
        int cap = c->cap_cancels ? c->cap_cancels * 2 : 16;
        uint64_t *n = xc_realloc(c->cancels, (size_t)cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&c->lock);
            return xc_errf(XC_ERR_NOMEM, "no memory to queue a cancellation");
        }
        c->cancels = n;
        c->cap_cancels = cap;
    }
    c->cancels[c->n_cancels++] = id;
    pthread_mutex_unlock(&c->lock);
    xc_transport_wake(c->rx);
    return XC_OK;
}

int xc_coord_n_replicas(xc_coord *c) {
    return atomic_load(&c->n_replicas);
}

int xc_coord_max_context(const xc_coord *c) {
    return c->conf.max_context;
}

int xc_coord_max_prompt(const xc_coord *c) {
    return c->mi.max_ctx < c->conf.max_context ? c->mi.max_ctx : c->conf.max_context;
}

void xc_coord_get_stats(xc_coord *c, xc_coord_stats *out) {
    pthread_mutex_lock(&c->stats_lock);
    *out = c->stats;
    pthread_mutex_unlock(&c->stats_lock);
}

/* Vision round trip per job, measured on the coordinator thread (send to embeddings back). */
static void hooks_vision_sent(xc_coord *c, creq *q) {
    c->vclock_id[q->id % 256] = q->id;
    c->vclock_ns[q->id % 256] = xc_now_ns();
}

static void hooks_vision_done(xc_coord *c, creq *q) {
    if (c->vclock_id[q->id % 256] != q->id) {
        return;
    }
    double s = (double)(xc_now_ns() - c->vclock_ns[q->id % 256]) * 1e-9;
    pthread_mutex_lock(&c->stats_lock);
    c->stats.vision_s += s;
    c->stats.vision_images += q->n_img;
    c->stats.vision_jobs++;
    pthread_mutex_unlock(&c->stats_lock);
}

/* Runs once per scheduling step on the coordinator thread: ends cancelled requests (their KV
 * blocks go back to the pool now; the release ids leave in this step's micro-batches, a
 * release-only one if nothing else is due), then publishes the statistics. */
static void hooks_step(xc_coord *c) {
    pthread_mutex_lock(&c->lock);
    int n = c->n_cancels;
    uint64_t ids[256];
    n = n < 256 ? n : 256;
    if (n > 0) { /* cancels is NULL until the first one (memcpy must not see NULL) */
        memcpy(ids, c->cancels, (size_t)n * sizeof *ids);
        memmove(c->cancels, c->cancels + n, (size_t)(c->n_cancels - n) * sizeof *ids);
        c->n_cancels -= n;
    }
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < n; i++) {
        creq *q = req_find(c, ids[i], NULL);
        if (q) {
            XC_LOG_DEBUG("request %llu cancelled: KV blocks freed, release id queued",
                         (unsigned long long)q->id);
            req_end(c, q, XC_ERR_TIMEOUT, false, false, "cancelled");
        }
    }
    xc_coord_stats st;
    pthread_mutex_lock(&c->stats_lock);
    st = c->stats;
    pthread_mutex_unlock(&c->stats_lock);
    st.kv_blocks_used = st.kv_blocks_total = 0;
    /* running / waiting need a look at every request: at most every 10 ms (a gauge for
     * /metrics), not at every step of thousands of sequences */
    uint64_t now = xc_now_ns();
    if (now - c->count_ns >= 10000000ull || c->n_reqs < 64) {
        c->count_ns = now;
        c->n_running = c->n_waiting = 0;
        for (int i = 0; i < c->n_reqs; i++) {
            const creq *q = c->reqs[i];
            int nb = 0;
            if (q->replica >= 0 && c->reps[q->replica].sched &&
                xc_sched_blocks(c->reps[q->replica].sched, q->id, &nb)) {
                c->n_running++;
            } else {
                c->n_waiting++;
            }
        }
    }
    st.running = c->n_running;
    st.waiting = c->n_waiting;
    for (int r = 0; r < c->R; r++) {
        if (c->reps[r].sched) {
            st.kv_blocks_total += c->reps[r].kv_blocks;
            st.kv_blocks_used += c->reps[r].kv_blocks - xc_sched_n_free_blocks(c->reps[r].sched);
        }
    }
    pthread_mutex_lock(&c->lock);
    st.waiting += c->n_inbox;
    pthread_mutex_unlock(&c->lock);
    st.bytes_to_stage0 = c->bytes_sent;
    st.prompt_rows_computed = c->prompt_rows;
    st.prefix_hit_rows = c->prefix_hit_rows;
    st.resumes = c->n_resumes;
    st.resume_failures = c->n_resume_fail;
    st.step_timeouts = c->n_step_timeouts;
    st.worker_restarts = c->n_restarts;
    st.replica_failures = c->n_replica_fail;
    st.slow_peer_sends = c->n_slow;
    st.unknown_dropped = atomic_load(&c->n_unknown_dropped);
    st.overdue = c->overdue;
    st.image_cache_hits = st.image_cache_misses = 0;
    for (int i = 0; i < c->n_workers; i++) { /* cumulative per worker, as its heartbeats say */
        st.image_cache_hits += c->hb_ichit[i];
        st.image_cache_misses += c->hb_icmiss[i];
    }
    st.n_stages = 0;
    for (int r = 0; r < c->R; r++) {
        for (int k = 0; k < c->reps[r].P && st.n_stages < XC_COORD_STATS_MAX_STAGES; k++) {
            int wi = c->reps[r].worker[k];
            st.stages[st.n_stages++] = (xc_coord_stage_stats){
                .replica = r,
                .stage = k,
                .busy_ratio = wi >= 0 ? c->hb_ratio[wi] : 0,
                .bytes_sent = wi >= 0 ? c->hb_bytes[wi] : 0,
                .microbatches = wi >= 0 ? c->hb_mb[wi] : 0,
                .sequences = wi >= 0 ? c->hb_live[wi] : 0,
                .kv_bytes_per_token =
                    wi >= 0 ? xc_place_attn_units(c->reps[r].bounds[k], c->reps[r].bounds[k + 1]) *
                                  c->cost.kv_bytes_layer * (c->workers[wi].kv_elem / 2.0)
                            : 0};
        }
    }
    pthread_mutex_lock(&c->stats_lock);
    c->stats = st;
    pthread_mutex_unlock(&c->stats_lock);
}

/* Busy ratio of worker wi between its last two heartbeats (cumulative busy time over elapsed
 * time, both on the worker's clock), and its cumulative counters. */
static void hooks_heartbeat(xc_coord *c, int wi, const xc_wire_heartbeat *hb) {
    if (c->hb_time[wi] && hb->time_ns > c->hb_time[wi] && hb->busy_ns >= c->hb_busy[wi]) {
        double r = (double)(hb->busy_ns - c->hb_busy[wi]) / (double)(hb->time_ns - c->hb_time[wi]);
        c->hb_ratio[wi] = r > 1 ? 1 : r;
    }
    c->hb_time[wi] = hb->time_ns;
    c->hb_busy[wi] = hb->busy_ns;
    c->hb_bytes[wi] = (double)hb->bytes_sent;
    c->hb_mb[wi] = (double)hb->microbatches;
    c->hb_live[wi] = (double)hb->live_seqs;
    c->hb_ichit[wi] = (double)hb->image_cache_hits;
    c->hb_icmiss[wi] = (double)hb->image_cache_misses;
}
