/* A cluster worker process: registers with the coordinator, takes the role it is assigned
 * (the vision encoder, or decoder layers [a, b) of one pipeline), loads only those tensors, and
 * runs the forward frames that arrive in its mailbox, in order: stage k sends its output rows to
 * stage k+1, the last stage samples and sends token ids to the coordinator. A heartbeat thread
 * reports liveness; see docs/cluster.md. */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "xc_sim.h"
#include "xc_status.h"
#include "xc_transport.h"
#include "xc_wire.h"

typedef struct xc_worker xc_worker;

typedef struct xc_worker_conf {
    const char *coordinator; /* the coordinator's mailbox endpoint (required) */
    const char *endpoint;    /* own mailbox, e.g. "tcp://127.0.0.1:*", "ipc:///tmp/w1" */
    const char *id;          /* unique name; NULL = "HOST:PID" */
    const char *backend;     /* "cpu", "cuda" or "sim" */
    int n_threads;           /* CPU threads, 0 = all cores */
    double heartbeat_s;      /* heartbeat period (> 0) */
    double hang_s;           /* stop heartbeating when one message runs longer than this */
    int send_timeout_ms;     /* a send to a peer that is gone gives up after this */
    uint64_t mem_bytes;      /* memory advertised to placement; 0 = physical host memory */
    xc_sim_cost sim;         /* backend "sim" */
    int sim_width;           /* columns of the hidden rows a sim stage sends (>= 1) */
    xc_wire_role role;       /* the role it accepts: ANY (0), VISION or STAGE */
    double orphan_s;         /* > 0: exit when nothing came from the coordinator for this long */
    const xc_transport_conf *tconf; /* NULL = defaults */
    /* CUDA (device selection and the memory advertised to placement and KV sizing) */
    int device;                /* device ordinal among those CUDA_VISIBLE_DEVICES leaves */
    double device_mem_frac;    /* share of the device's free memory to advertise; 0 = 0.9 */
    uint64_t device_mem_bytes; /* advertise at most this much device memory; 0 = no cap */
    const char *kv_dtype;      /* KV cache element type: "bf16" (NULL = default) or "f32" */
    size_t image_cache_bytes;  /* vision: embedding cache bound (0 = no cache) */
    int vision_batch;          /* vision: images encoded together, at most (0 or 1 = none) */
    int vision_wait_ms;        /* vision: how long a frame waits for others to batch with */
} xc_worker_conf;

/* Device memory a CUDA worker advertises in Register: frac (0 = 0.9) of the free memory it
 * measured at start, capped by cap (0 = no cap). Two workers on one GPU each give a share (say
 * frac 0.45) so that what placement and KV sizing hand both fits together. */
uint64_t xc_worker_device_budget(uint64_t free_bytes, double frac, uint64_t cap);

/* Counters for benchmarks (bubble fraction = 1 - busy / wall). */
typedef struct xc_worker_stats {
    uint64_t busy_ns; /* time spent running micro-batches (compute + send) */
    uint64_t microbatches;
    uint64_t rows;
    uint64_t bad_messages; /* dropped: undecodable or inconsistent with the role */
    int stage;             /* -1 until assigned a decoder stage */
    uint64_t image_cache_hits, image_cache_misses; /* vision: images found / not found cached */
    uint64_t vision_encoded;                       /* vision: images encoded */
    uint64_t vision_batches;                       /* vision: encode calls */
    /* sim backend: the cost model's time for the micro-batches run (the modelled device's busy
     * time), how much earlier than the worker's thread took them they started (queued work
     * started when the device became free, xc_sim_start_ns), and how late the sleeps woke */
    uint64_t sim_model_ns, sim_early_ns, sim_late_ns;
} xc_worker_stats;

/* Opens the worker's mailbox and its link to the coordinator. Nothing is loaded until an
 * assignment arrives. XC_ERR_ARG for a bad configuration, XC_ERR_IO if an endpoint fails. */
xc_status xc_worker_create(const xc_worker_conf *conf, xc_worker **out);

/* Registers and serves until *stop becomes non-zero or a Shutdown arrives. Returns XC_OK on a
 * clean stop; a fatal backend error (XC_ERR_DEVICE) is reported to the coordinator and returned;
 * XC_ERR_TIMEOUT when orphan_s passed without any message from the coordinator. */
xc_status xc_worker_run(xc_worker *w, volatile sig_atomic_t *stop);

/* The resolved mailbox endpoint (tcp port * replaced). View valid until destroy. */
const char *xc_worker_endpoint(const xc_worker *w);

void xc_worker_get_stats(xc_worker *w, xc_worker_stats *out);

/* Resets busy_ns / microbatches / rows (benchmarks between phases). */
void xc_worker_reset_stats(xc_worker *w);

void xc_worker_destroy(xc_worker *w);
