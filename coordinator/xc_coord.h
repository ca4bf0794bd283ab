/* The coordinator: membership and heartbeats of the workers, placement (vision on one worker,
 * R replicas x P stages of decoder layers), the per-replica schedulers, vision jobs, readiness,
 * failure handling, and a thread-safe API to submit a request and receive its tokens as they
 * come. It never touches weights. See docs/cluster.md. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_place.h"
#include "xc_status.h"
#include "xc_transport.h"

typedef struct xc_coord xc_coord;

/* [start, end) prompt rows that are one image's embeddings. */
typedef struct xc_coord_range {
    int32_t start;
    int32_t end;
} xc_coord_range;

/* Sampling as the last stage applies it (HF order: repetition penalty, temperature, top-k, top-p;
 * greedy = argmax after the penalty). */
typedef struct xc_coord_sampling {
    bool greedy;
    float temperature;        /* > 0 unless greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* (0, 1] */
    float repetition_penalty; /* 1 = off */
    uint64_t seed;
    uint32_t choice; /* choice index among a request's n: the draws are a pure function of
                        (seed, choice, token position) */
    /* api helper (issue 14): OpenAI/vLLM processors, applied by the last stage */
    float presence_penalty, frequency_penalty; /* [-2, 2]; 0 = off */
    float min_p;                               /* [0, 1]; 0 = off */
    int min_tokens;                            /* stop ids impossible before this many tokens */
    int n_logit_bias;                          /* <= 300 */
    uint32_t logit_bias_ids[300];
    float logit_bias[300]; /* [-100, 100] */
} xc_coord_sampling;

/* One scheduling step of the coordinator thread (a loop turn that handled a message or sent a
 * micro-batch): what it cost and did, for xcpipe bench sched. */
typedef struct xc_coord_step {
    double cpu_s;     /* the coordinator thread's CPU time in the step (CLOCK_THREAD_CPUTIME_ID) */
    double wall_s;    /* wall time from the first message (or the mailbox's timeout) to the end */
    int live;         /* requests the coordinator holds (admitted, waiting or resuming) */
    int messages;     /* messages handled (Results, heartbeats, ...) */
    int microbatches; /* micro-batches sent */
    int rows;         /* rows in them */
    /* wall time of it: handling messages (Results: tokens to the request callbacks), inside
     * xc_sched_next (forming micro-batches), building, encoding and sending them */
    double handle_s, sched_next_s, send_s;
} xc_coord_step;

typedef void (*xc_coord_step_fn)(void *user, const xc_coord_step *s);

typedef struct xc_coord_conf {
    const char *model_dir;      /* directory with config.json; sent to workers as the model path */
    const char *endpoint;       /* own mailbox: tcp://0.0.0.0:5555, ipc:///tmp/xc-c, mpi://0 */
    int stages, replicas;       /* 0 = chosen by placement */
    int workers;                /* workers to wait for before placing (incl. vision); 0 = derive */
    bool no_vision;             /* do not place a vision worker (text-only serving) */
    double dead_s;              /* a worker silent this long is dead */
    int max_rows;               /* rows per micro-batch */
    int chunk;                  /* prefill rows of one sequence per micro-batch */
    int block_size;             /* KV tokens per block */
    int kv_blocks;              /* KV blocks per stage at most (also limited by worker memory) */
    bool one_host;              /* every worker runs on this host and advertises its whole
                                   memory (xcpipe serve's local CPU processes): the KV pools of
                                   all stages and replicas together must fit beside all weights */
    int max_inflight;           /* micro-batches in flight per replica; 0 = stages + 1 */
    int max_context;            /* tokens per sequence; 0 = config max_length */
    int plora_rank;             /* for the placement cost model when it cannot see the checkpoint */
    int send_timeout_ms;        /* shutdown messages to workers at exit (every other send is
                                   non-blocking: a per-worker queue, see send_queue) */
    int send_queue;             /* messages queued per worker while its link is full; a full
                                   queue marks the worker slow (0 = 64) */
    double step_timeout_s;      /* a micro-batch not back after this fails its replica; 0 = auto:
                                   20 x its expected time (measured), at least 10 s (before the
                                   first measurement: rows x weight bytes at 1 GB/s, >= 60 s) */
    int max_resumes;            /* times a request is re-prefilled after losing its replica
                                   (0 = fail it at once) */
    double resume_timeout_s;    /* a request waiting for a replica (resumed, or new while every
                                   replica re-forms) fails after this; 0 = 30 */
    bool no_prefix_cache;       /* do not share KV blocks of equal prompt prefixes (xc_sched.h) */
    const xc_place_model *cost; /* optional: overrides the cost model derived from config.json */
    const xc_transport_conf *tconf;
    xc_coord_step_fn on_step; /* optional: called on the coordinator thread after every step that
                                 did work (must be quick; xcpipe bench sched) */
    void *on_step_user;
} xc_coord_conf;

/* A request: prompt ids with image slots and preprocessed pixels, and how to sample. */
typedef struct xc_coord_request {
    const int32_t *ids; /* (n); rows inside img ranges are ignored */
    int n;
    const xc_coord_range *img; /* (n_img) sorted, disjoint, each exactly the image token count */
    int n_img;
    const float *pixels; /* (n_img, 3, S, S) host, normalized as CLIP expects */
    /* optional (NULL = computed here): each image's pixel hash, the first 8 bytes of the SHA-256
     * of its (3, S, S) f32 pixels, big-endian (the prefix cache's and the vision cache's key) */
    const uint64_t *img_hash;
    xc_coord_sampling sampling;
    int max_new_tokens;
    const int32_t *stop_ids; /* a generated stop id ends the reply and is not delivered */
    int n_stop_ids;
    bool penalize_prompt; /* repetition penalty also on the prompt's text ids (text-only chat) */
    int pin_replica;      /* 0 = any replica; r + 1 = only replica r, never resumed (the canary) */
    bool logprobs;        /* api helper: TOKEN events carry the token's logprob ... */
    int top_logprobs;     /* ... and this many most likely alternatives (0-20) */
} xc_coord_request;

typedef enum xc_coord_event_kind {
    XC_COORD_TOKEN = 1, /* one generated token */
    XC_COORD_DONE = 2,  /* the end: status XC_OK, or an error with a message */
} xc_coord_event_kind;

typedef struct xc_coord_event {
    uint64_t id;
    xc_coord_event_kind kind;
    int32_t token;       /* TOKEN */
    xc_status status;    /* DONE */
    bool retryable;      /* DONE with an error: the same request may succeed later */
    bool stopped;        /* DONE: a stop id ended it */
    int n_tokens;        /* DONE: tokens delivered */
    const char *message; /* DONE with an error; view valid during the callback */
    /* TOKEN, when the request asked for logprobs (api helper): log-softmax of the logits after
     * repetition penalty and temperature; alternatives most likely first (views valid during the
     * callback) */
    bool has_logprob;
    float logprob;
    int n_top;
    const int32_t *top_ids;
    const float *top_logprobs;
} xc_coord_event;

/* Called on the coordinator's thread; must not block for long or call back into xc_coord. */
typedef void (*xc_coord_event_fn)(void *user, const xc_coord_event *ev);

/* Reads config.json, opens the mailbox and starts the coordinator thread. XC_ERR_ARG for a bad
 * configuration, XC_ERR_IO if the endpoint cannot be bound. */
xc_status xc_coord_create(const xc_coord_conf *conf, xc_coord **out);

/* Queues a request (everything is copied). fn gets TOKEN events and exactly one DONE event,
 * unless submit fails. XC_ERR_ARG names what is wrong with the request; XC_ERR_UNSUPPORTED while
 * shutting down. *id (may be NULL) gets the request id. Thread-safe. */
xc_status xc_coord_submit(xc_coord *c, const xc_coord_request *r, xc_coord_event_fn fn, void *user,
                          uint64_t *id);

/* All roles placed, loaded and heartbeating. Thread-safe. */
bool xc_coord_ready(xc_coord *c);

/* Requests submitted and not yet done. Thread-safe. */
int xc_coord_n_active(xc_coord *c);

/* Waits up to timeout_s for readiness; XC_ERR_TIMEOUT. */
xc_status xc_coord_wait_ready(xc_coord *c, double timeout_s);

/* The resolved mailbox endpoint (view). */
const char *xc_coord_endpoint(const xc_coord *c);

/* Image token rows per image (0 without vision) and vocabulary size. */
int xc_coord_image_tokens(const xc_coord *c);
int xc_coord_image_size(const xc_coord *c);
int xc_coord_vocab(const xc_coord *c);

/* Stops admitting, lets in-flight requests finish for up to drain_s seconds, fails the rest,
 * tells every worker to shut down (if shutdown_workers) and stops the thread. */
void xc_coord_stop(xc_coord *c, double drain_s, bool shutdown_workers);

/* Stops (as xc_coord_stop(c, 0, false) if still running) and frees. NULL is a no-op. */
void xc_coord_destroy(xc_coord *c);

/* ---- serving hooks (api helper) ---- */

/* Ends request id as soon as the coordinator thread runs its next scheduling step: its KV blocks
 * return to the pool, its release id goes to every stage with the replica's next micro-batch, and
 * its DONE event comes with XC_ERR_TIMEOUT and the message "cancelled". Unknown or finished ids
 * are ignored. Thread-safe; XC_ERR_NOMEM. */
xc_status xc_coord_cancel(xc_coord *c, uint64_t id);

#define XC_COORD_STATS_MAX_STAGES 64

/* One decoder stage's work, from its heartbeats. */
typedef struct xc_coord_stage_stats {
    int replica, stage;
    double busy_ratio;         /* computing time / elapsed time between its last two heartbeats */
    double bytes_sent;         /* frame bytes it sent downstream, cumulative */
    double microbatches;       /* messages it processed, cumulative */
    double sequences;          /* sequences it holds state for (its last heartbeat) */
    double kv_bytes_per_token; /* KV bytes one token takes on this stage (its layers, dtype) */
} xc_coord_stage_stats;

/* A snapshot of the coordinator's load, published once per scheduling step. */
typedef struct xc_coord_stats {
    int running;            /* requests whose sequence holds KV blocks */
    int waiting;            /* requests queued (not admitted to a pipeline yet) */
    int kv_blocks_used;     /* all replicas */
    int kv_blocks_total;    /* all replicas */
    double bytes_to_stage0; /* bytes of forward frames sent to first stages */
    double vision_s;        /* summed vision round trips (send to embeddings back), seconds */
    double vision_images;   /* images those jobs held */
    double image_cache_hits, image_cache_misses; /* vision workers' embedding caches */
    double vision_jobs;                          /* vision jobs completed */
    double prompt_rows_computed;                 /* prompt rows sent through the stages (prefill) */
    double prefix_hit_rows; /* prompt rows whose KV came from the prefix cache */
    int n_stages;
    xc_coord_stage_stats stages[XC_COORD_STATS_MAX_STAGES];
    /* failure handling (cumulative) */
    double resumes;         /* requests re-prefilled after their replica failed */
    double resume_failures; /* requests failed: resumes used up, or no replica in time */
    double step_timeouts;   /* micro-batches past their deadline (each failed its replica) */
    double worker_restarts; /* worker processes replaced (new incarnation or endpoint claimed) */
    double replica_failures;
    double slow_peer_sends; /* sends refused because a worker's queue was full */
    double unknown_dropped; /* heartbeats/registrations of unknown workers not answered */
    bool overdue;           /* a micro-batch is past its deadline right now */
} xc_coord_stats;

/* The deadline in seconds of a micro-batch of `rows` rows: step_timeout_s when > 0, else 20 x
 * its expected round trip (mean_s, the replica's measured mean, scaled by rows / mean_rows when
 * above the mean rows), at least 10 s; when nothing was measured yet (mean_s <= 0), the time to
 * stream the replica's weight_bytes once per row at 1 GB/s, at least 60 s (a 128-row chunk of
 * the real 7B: 2,100 s; a tiny model: 60 s). */
double xc_coord_step_deadline(double step_timeout_s, double mean_s, double mean_rows, int rows,
                              double weight_bytes);

/* Replicas placed (0 before placement). */
int xc_coord_n_replicas(xc_coord *c);

/* Copies the latest snapshot. Thread-safe. */
void xc_coord_get_stats(xc_coord *c, xc_coord_stats *out);

/* Tokens per sequence (prompt + generated) the coordinator accepts. */
int xc_coord_max_context(const xc_coord *c);

/* The longest prompt: config max_length (at most the context). */
int xc_coord_max_prompt(const xc_coord *c);
