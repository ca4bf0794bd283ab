/* The scheduler of one pipeline replica: sequences, KV admission through an xc_block_pool-like
 * free list, micro-batch formation (a row budget filled with decode rows, then prefill chunks),
 * chunked prefill with chunks of one sequence back to back, and in-flight accounting. Pure
 * logic: the coordinator turns its micro-batches into frames. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "xc_status.h"

typedef struct xc_sched xc_sched;

typedef struct xc_sched_conf {
    int max_rows;     /* rows per micro-batch (token budget) */
    int chunk;        /* prefill rows of one sequence per micro-batch at most */
    int block_size;   /* tokens per KV block */
    int n_blocks;     /* KV blocks of the replica (smallest stage) */
    int max_inflight; /* micro-batches in flight at most (>= P keeps every stage busy) */
    int n_stages;     /* P: decode rows are spread over P micro-batches */
} xc_sched_conf;

/* One sequence's rows in a micro-batch. */
typedef struct xc_sched_item {
    uint64_t id;
    int first_pos;    /* position of the first row */
    int n_tokens;     /* rows */
    bool first_chunk; /* the sequence's first rows: carry its sampling parameters */
    bool samples;     /* holds the last prompt row or a decode row: a token comes back */
    int32_t token;    /* decode rows: the input token (the last one generated) */
} xc_sched_item;

typedef struct xc_sched_batch {
    uint64_t id; /* micro-batch id, unique in this scheduler */
    int n_items;
    xc_sched_item *items; /* view valid until the next xc_sched call */
    int n_rows;
    int n_release;
    const uint64_t *release; /* sequences finished since the last batch (their KV is free) */
} xc_sched_batch;

xc_status xc_sched_create(const xc_sched_conf *conf, xc_sched **out);
void xc_sched_destroy(xc_sched *s);

/* Queues a sequence of n_prompt prompt rows that may generate max_new tokens. ready = false
 * holds it back (images not encoded yet) until xc_sched_set_ready. XC_ERR_ARG if it can never
 * fit (more blocks than the replica has), or the id is in use; XC_ERR_NOMEM (room for its
 * release id is reserved here, so that ending it never allocates). */
xc_status xc_sched_add(xc_sched *s, uint64_t id, int n_prompt, int max_new, bool ready);
xc_status xc_sched_set_ready(xc_sched *s, uint64_t id);

/* Forms the next micro-batch if the in-flight limit allows and there is work: admits waiting
 * sequences (FIFO) while KV blocks are free. With no rows to send but sequences to release, the
 * micro-batch has no items and only the release ids (it is in flight like any other until its
 * Result comes back). Returns false when nothing can be sent. */
bool xc_sched_next(xc_sched *s, xc_sched_batch *out);

/* Undoes the micro-batch b that xc_sched_next just returned (no other xc_sched call between),
 * because it could not be sent (no memory to build it): its id leaves the in-flight set, its
 * decode rows and prefill chunks become due again and its release ids are pending again, so the
 * next xc_sched_next forms it anew. */
void xc_sched_abort(xc_sched *s, const xc_sched_batch *b);

/* The block table of an admitted sequence (view). NULL if not admitted. */
const int32_t *xc_sched_blocks(const xc_sched *s, uint64_t id, int *n_blocks);

/* A micro-batch came back (its results were delivered with xc_sched_token). */
void xc_sched_batch_done(xc_sched *s, uint64_t mb_id);

/* The token sampled for sequence id: it becomes the input of its next decode row. */
xc_status xc_sched_token(xc_sched *s, uint64_t id, int32_t token);

/* Ends a sequence (done, stopped, cancelled or failed): frees its blocks and queues its id for
 * release in the next micro-batch (a release-only one if no rows are due). Unknown ids are
 * ignored. */
void xc_sched_finish(xc_sched *s, uint64_t id);

/* Drops every sequence and in-flight micro-batch (a stage failed): ids (capacity cap) gets the
 * sequences that were live or waiting, *n their count. The block pool is whole again. The ids of
 * the admitted ones join the pending releases (which are kept), so that the next micro-batch (a
 * release-only one if nothing else is due) tells every stage to drop them. */
void xc_sched_fail_all(xc_sched *s, uint64_t *ids, int cap, int *n);

/* Forgets the pending release ids: the stages drop every sequence by other means (the replica is
 * re-formed: each stage's new Assign clears its sequences). A sequence id that comes back (a
 * resumed request) must not be released right after its first rows. */
void xc_sched_drop_releases(xc_sched *s);

/* Whether micro-batch mb_id is in flight. */
bool xc_sched_is_inflight(const xc_sched *s, uint64_t mb_id);

int xc_sched_n_live(const xc_sched *s);     /* admitted + waiting sequences (load) */
int xc_sched_n_inflight(const xc_sched *s); /* micro-batches in flight */
int xc_sched_n_free_blocks(const xc_sched *s);
