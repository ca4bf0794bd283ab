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
    int max_rows;      /* rows per micro-batch (token budget) */
    int chunk;         /* prefill rows of one sequence per micro-batch at most */
    int block_size;    /* tokens per KV block */
    int n_blocks;      /* KV blocks of the replica (smallest stage) */
    int max_inflight;  /* micro-batches in flight at most (>= P keeps every stage busy) */
    int n_stages;      /* P: decode rows are spread over P micro-batches */
    bool prefix_cache; /* share full KV blocks of equal prefixes (xc_sched_add_keyed) */
} xc_sched_conf;

/* One sequence's rows in a micro-batch. */
typedef struct xc_sched_item {
    uint64_t id;
    int first_pos;    /* position of the first row */
    int n_tokens;     /* rows */
    bool first_chunk; /* the sequence's first rows: carry its sampling parameters (first_pos =
                         the rows taken from the prefix cache) */
    bool samples;     /* holds the last prompt row or a decode row: a token comes back */
    int32_t token;    /* decode rows: the input token (the last one generated) */
    int fork0;        /* forks[fork0, fork0 + n_forks) of the batch draw their first token from
                         this item's last row (its last prompt chunk; issue 13.3) */
    int n_forks;
    const int32_t *blocks; /* its block table, as xc_sched_blocks gives it (same lifetime) */
    int n_blocks;
} xc_sched_item;

/* issue 13.3 (n > 1 shares one prefill): a waiting sequence whose whole prompt (every row key)
 * equals that of a sequence whose last prompt chunk is being formed is forked from it instead of
 * prefilling: it shares all of the parent's full blocks, gets a private copy of the parent's
 * partially filled last block (a copy-on-write instruction in a later micro-batch) and blocks of
 * its own for what it generates, and its first token is drawn from the parent's last row. */
typedef struct xc_sched_fork {
    uint64_t parent; /* the item's sequence */
    uint64_t id;     /* the new sequence (admitted, its prompt done, its first token in flight) */
} xc_sched_fork;

/* KV block copy every stage makes before it runs a micro-batch's rows. */
typedef struct xc_sched_copy {
    int32_t src, dst;
} xc_sched_copy;

typedef struct xc_sched_batch {
    uint64_t id; /* micro-batch id, unique in this scheduler */
    int n_items;
    xc_sched_item *items; /* view valid until the next xc_sched call */
    int n_rows;
    int n_release;
    const uint64_t *release; /* sequences finished since the last batch (their KV is free) */
    int n_forks;
    const xc_sched_fork *forks; /* grouped by item (xc_sched_item.fork0) */
    int n_copies;
    const xc_sched_copy *copies; /* forks of earlier micro-batches: their private last blocks */
} xc_sched_batch;

xc_status xc_sched_create(const xc_sched_conf *conf, xc_sched **out);
void xc_sched_destroy(xc_sched *s);

/* Queues a sequence of n_prompt prompt rows that may generate max_new tokens. ready = false
 * holds it back (images not encoded yet) until xc_sched_set_ready. XC_ERR_ARG if it can never
 * fit (more blocks than the replica has), or the id is in use; XC_ERR_NOMEM (room for its
 * release id is reserved here, so that ending it never allocates). */
xc_status xc_sched_add(xc_sched *s, uint64_t id, int n_prompt, int max_new, bool ready);
xc_status xc_sched_set_ready(xc_sched *s, uint64_t id);

/* ---- prefix caching (conf.prefix_cache) ----
 * A full KV block is identified by a hash chain over its rows' keys (a text row's key is its
 * token id, an image row's xc_sched_image_key) and its parent block; equal chains are verified
 * key by key, so a hash collision never shares a block. At admission a sequence takes every
 * leading block that matches (reference-counted, read-only), up to the block before the one that
 * holds its last prompt row (that row is always computed: its logits are sampled), and its prefill
 * starts after them. Its own full prompt blocks are entered at admission and are ready once the
 * micro-batch that writes their last row has been formed: a sequence that shares a block not ready
 * yet (an n > 1 sibling admitted right after its twin) prefills only in a later micro-batch, which
 * every stage runs after that one. Full blocks written by decode rows are entered too (the next
 * turn of a chat re-sends the reply). A partially filled block is never shared (a fork gets a
 * copy of its parent's: xc_sched_fork). A sequence whose whole prompt equals that of a sequence
 * whose last prompt chunk is not formed yet waits to be forked from it. Blocks whose
 * last user ended stay cached and are evicted least recently used first (the tail of a sequence
 * before its head) when free blocks run out; xc_sched_n_free_blocks counts them as free. */

/* The key of row `offset` of an image whose preprocessed pixels hash to image_hash (never equal
 * to a token id). */
uint64_t xc_sched_image_key(uint64_t image_hash, int offset);

/* xc_sched_add with the keys of the n_prompt prompt rows (copied; NULL = never shared). Rows
 * [0, data_rows) need data the caller fetches before the sequence is ready (image embeddings;
 * xc_sched_set_ready = the data is here). *covered (may be NULL) says whether cached blocks, or
 * the blocks of a sequence waiting for admission with the same leading keys, hold all of those
 * rows: the sequence is then ready without the data, which the caller does not fetch. Should it
 * have to compute some of those rows after all (the blocks were evicted before its admission, or
 * the twin that was to write them ended first), it waits and is reported by
 * xc_sched_take_uncovered: the caller fetches the data and calls xc_sched_set_ready. */
xc_status xc_sched_add_keyed(xc_sched *s, uint64_t id, int n_prompt, int max_new, bool ready,
                             const uint64_t *keys, int data_rows, bool *covered);

/* The ids of sequences that turned out to need their data after all (see above), at most cap;
 * returns their count and forgets them. */
int xc_sched_take_uncovered(xc_sched *s, uint64_t *ids, int cap);

/* Rows of `n_prompt` whose KV is cached for keys, or will be written by a sequence with the same
 * leading keys that waits for admission (what admission would reuse). */
int xc_sched_cached_rows(const xc_sched *s, const uint64_t *keys, int n_prompt);

/* Blocks held by the prefix cache with no sequence using them (evictable). */
int xc_sched_n_cached_blocks(const xc_sched *s);

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

/* For tests: whether the per-state counts that spare a step its scans match a recount. */
bool xc_sched_counts_ok(const xc_sched *s);

int xc_sched_n_live(const xc_sched *s);     /* admitted + waiting sequences (load) */
int xc_sched_n_inflight(const xc_sched *s); /* micro-batches in flight */
int xc_sched_n_free_blocks(const xc_sched *s);
