/* Scheduler: driven by a fake pipeline of P FIFO stages; every sequence's rows must arrive in
 * order with no gap (prefill chunks then one decode row per token), KV blocks are never shared
 * and never over-committed, the in-flight limit holds, decode rows spread over P micro-batches,
 * a long prompt has several chunks in flight at once, and failure drops everything. */
#include <stdlib.h>
#include <string.h>

#include "xc_sched.h"
#include "xc_test.h"

#define NS 24

typedef struct ref_seq {
    int n_prompt, max_new, next_pos, n_gen, tokens_pending;
    bool done, added;
    int released; /* times its id came in a micro-batch's release list */
} ref_seq;

/* Counts b's release ids in ref; each must belong to a finished sequence. */
static void count_releases(ref_seq *ref, const xc_sched_batch *b) {
    for (int k = 0; k < b->n_release; k++) {
        int i = (int)(b->release[k] - 100);
        assert_true(i >= 0 && i < NS);
        assert_true(ref[i].done);
        ref[i].released++;
    }
}

/* One fake run: n sequences with random sizes; completes a micro-batch when the pipeline has
 * max_inflight in flight or nothing else can be formed. With abort_one_in > 0, about one formed
 * micro-batch in abort_one_in cannot be sent and is undone (xc_sched_abort) at once: the rows must
 * still arrive in order without gaps, and every release exactly once. */
static void run_fake(int P, int max_rows, int chunk, int n_blocks, unsigned seed,
                     int abort_one_in) {
    xc_sched_conf sc = {.max_rows = max_rows,
                        .chunk = chunk,
                        .block_size = 4,
                        .n_blocks = n_blocks,
                        .max_inflight = P + 1,
                        .n_stages = P};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    ref_seq ref[NS];
    srand(seed);
    for (int i = 0; i < NS; i++) {
        ref[i] = (ref_seq){.n_prompt = 1 + rand() % 40, .max_new = 1 + rand() % 12};
        assert_int_equal(xc_sched_add(s, (uint64_t)i + 100, ref[i].n_prompt, ref[i].max_new, true),
                         XC_OK);
    }

    /* queue of in-flight batches (FIFO, as the stages are) with the rows that sample */
    typedef struct fb {
        uint64_t id;
        int n;
        uint64_t ids[256];
    } fb;

    fb *q = calloc(64, sizeof(fb));
    int qh = 0, qn = 0, n_done = 0, max_seen_inflight = 0, steps = 0;
    while (n_done < NS) {
        assert_true(++steps < 100000);
        assert_true(xc_sched_counts_ok(s)); /* the per-state counts follow every change */
        xc_sched_batch b;
        bool formed = xc_sched_next(s, &b);
        if (formed && abort_one_in > 0 && rand() % abort_one_in == 0) {
            uint64_t id = b.id;
            xc_sched_abort(s, &b);
            assert_false(xc_sched_is_inflight(s, id));
            continue;
        }
        if (formed) {
            assert_true(b.n_rows <= max_rows);
            count_releases(ref, &b);
            assert_true(b.n_items > 0 || b.n_release > 0); /* never an empty micro-batch */
            fb *f = &q[(qh + qn++) % 64];
            f->id = b.id;
            f->n = 0;
            int rows = 0, n_decode = 0;
            /* blocks of admitted sequences are disjoint and within the pool */
            static int owner[4096];
            memset(owner, -1, sizeof owner);
            for (int i = 0; i < NS; i++) {
                int nb = 0;
                const int32_t *bt = xc_sched_blocks(s, (uint64_t)i + 100, &nb);
                for (int k = 0; bt && k < nb; k++) {
                    assert_true(bt[k] >= 0 && bt[k] < n_blocks);
                    assert_int_equal(owner[bt[k]], -1);
                    owner[bt[k]] = i;
                }
                if (bt) {
                    assert_true(nb * 4 >= ref[i].n_prompt + ref[i].max_new);
                }
            }
            for (int k = 0; k < b.n_items; k++) {
                const xc_sched_item *it = &b.items[k];
                int i = (int)(it->id - 100);
                ref_seq *r = &ref[i];
                assert_false(r->done);
                assert_int_equal(it->first_pos, r->next_pos); /* in order, no gap */
                if (it->first_pos < r->n_prompt) {
                    assert_true(it->n_tokens <= chunk);
                    assert_true(it->first_pos + it->n_tokens <= r->n_prompt);
                    assert_int_equal(it->first_chunk, it->first_pos == 0);
                    assert_int_equal(it->samples, it->first_pos + it->n_tokens == r->n_prompt);
                } else {
                    assert_int_equal(it->n_tokens, 1);
                    assert_true(it->samples);
                    assert_int_equal(r->tokens_pending, 0); /* the previous token came back */
                    assert_int_equal(it->token, 1000 + r->n_gen - 1);
                    n_decode++;
                }
                r->next_pos += it->n_tokens;
                if (it->samples) {
                    r->tokens_pending++;
                    f->ids[f->n++] = it->id;
                }
                rows += it->n_tokens;
            }
            assert_int_equal(rows, b.n_rows);
            int live_decoding = 0;
            for (int i = 0; i < NS; i++) {
                live_decoding += !ref[i].done && ref[i].n_gen > 0;
            }
            assert_true(n_decode <= (live_decoding + P - 1) / P);
            int inf = xc_sched_n_inflight(s);
            max_seen_inflight = inf > max_seen_inflight ? inf : max_seen_inflight;
            assert_true(inf <= P + 1);
            continue;
        }
        assert_true(qn > 0); /* nothing formed: something must be in flight */
        fb *f = &q[qh];
        qh = (qh + 1) % 64;
        qn--;
        xc_sched_batch_done(s, f->id);
        for (int k = 0; k < f->n; k++) {
            int i = (int)(f->ids[k] - 100);
            ref_seq *r = &ref[i];
            assert_int_equal(xc_sched_token(s, f->ids[k], 1000 + r->n_gen), XC_OK);
            r->tokens_pending--;
            r->n_gen++;
            if (r->n_gen == r->max_new) {
                xc_sched_finish(s, f->ids[k]);
                r->done = true;
                n_done++;
            }
        }
    }
    assert_int_equal(xc_sched_n_free_blocks(s), n_blocks);
    assert_int_equal(xc_sched_n_live(s), 0);
    assert_true(max_seen_inflight >= (P + 1 < 3 ? P + 1 : 3));
    /* the last releases go out on their own once the in-flight limit allows, then nothing */
    for (int guard = 0; guard < 2 * (P + 2); guard++) {
        xc_sched_batch b;
        if (xc_sched_next(s, &b)) {
            assert_int_equal(b.n_items, 0);
            assert_int_equal(b.n_rows, 0);
            count_releases(ref, &b);
        } else if (qn > 0) {
            xc_sched_batch_done(s, q[qh].id);
            qh = (qh + 1) % 64;
            qn--;
        }
    }
    for (int i = 0; i < NS; i++) {
        assert_int_equal(ref[i].released, 1); /* every sequence released exactly once */
    }
    free(q);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

static void test_sched_rows_in_order_and_kv_disjoint(void **state) {
    (void)state;
    run_fake(1, 32, 8, 64, 1, 0);
    run_fake(2, 64, 16, 40, 2, 0);
    run_fake(4, 256, 7, 300, 3, 0);
    run_fake(8, 17, 5, 24, 4, 0); /* small pool: admission waits for releases */
}

/* A micro-batch that could not be sent is undone: the next one is the same (items, positions,
 * input tokens, releases) under a new id, and random aborts in full runs keep every sequence's
 * rows in order (review #2: before, an unsent batch stayed in flight and its rows never came). */
static void test_sched_abort_forms_the_batch_again(void **state) {
    (void)state;
    xc_sched_conf sc = {.max_rows = 16,
                        .chunk = 6,
                        .block_size = 4,
                        .n_blocks = 32,
                        .max_inflight = 4,
                        .n_stages = 1};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    assert_int_equal(xc_sched_add(s, 1, 3, 5, true), XC_OK);
    assert_int_equal(xc_sched_add(s, 2, 10, 5, true), XC_OK);
    assert_int_equal(xc_sched_add(s, 3, 2, 2, true), XC_OK);
    xc_sched_batch b;
    assert_true(xc_sched_next(s, &b)); /* 1 [0,3) samples, 2 [0,6), 3 [0,2) samples */
    assert_int_equal(b.n_items, 3);
    xc_sched_batch_done(s, b.id);
    assert_int_equal(xc_sched_token(s, 1, 42), XC_OK);
    assert_int_equal(xc_sched_token(s, 3, 43), XC_OK);
    xc_sched_finish(s, 3);
    assert_true(xc_sched_next(s, &b)); /* decode row of 1, chunk [6,10) of 2, release 3 */
    xc_sched_item want[4];
    int n = b.n_items;
    assert_int_equal(n, 2);
    memcpy(want, b.items, (size_t)n * sizeof *want);
    assert_int_equal(want[0].first_pos, 3);
    assert_int_equal(want[0].token, 42);
    assert_int_equal(want[1].first_pos, 6);
    assert_true(want[1].samples);
    assert_int_equal(b.n_release, 1);
    uint64_t id = b.id;
    xc_sched_abort(s, &b);
    assert_false(xc_sched_is_inflight(s, id));
    assert_int_equal(xc_sched_n_inflight(s), 0);
    assert_true(xc_sched_next(s, &b));
    assert_true(b.id != id);
    assert_int_equal(b.n_items, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(b.items[i].id, want[i].id);
        assert_int_equal(b.items[i].first_pos, want[i].first_pos);
        assert_int_equal(b.items[i].n_tokens, want[i].n_tokens);
        assert_int_equal(b.items[i].samples, want[i].samples);
        assert_int_equal(b.items[i].first_chunk, want[i].first_chunk);
        assert_int_equal(b.items[i].token, want[i].token);
    }
    assert_int_equal(b.n_release, 1);
    assert_int_equal(b.release[0], 3);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
    run_fake(1, 32, 8, 64, 5, 3);
    run_fake(4, 64, 7, 200, 6, 4);
    run_fake(8, 17, 5, 24, 7, 2);
}

static void test_sched_long_prompt_chunks_in_flight(void **state) {
    (void)state;
    xc_sched_conf sc = {.max_rows = 64,
                        .chunk = 16,
                        .block_size = 16,
                        .n_blocks = 64,
                        .max_inflight = 4,
                        .n_stages = 4};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    assert_int_equal(xc_sched_add(s, 1, 200, 4, true), XC_OK);
    xc_sched_batch b;
    for (int k = 0; k < 4; k++) {
        assert_true(xc_sched_next(s, &b));
        assert_int_equal(b.n_items, 1);
        assert_int_equal(b.items[0].first_pos, 16 * k);
        assert_int_equal(b.items[0].n_tokens, 16);
    }
    assert_false(xc_sched_next(s, &b)); /* the in-flight limit */
    assert_int_equal(xc_sched_n_inflight(s), 4);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

static void test_sched_admission_and_errors(void **state) {
    (void)state;
    xc_sched_conf sc = {.max_rows = 8,
                        .chunk = 8,
                        .block_size = 4,
                        .n_blocks = 4,
                        .max_inflight = 2,
                        .n_stages = 1};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    assert_int_equal(xc_sched_add(s, 1, 10, 7, true), XC_ERR_ARG); /* 17 tokens > 16 */
    assert_int_equal(xc_sched_add(s, 1, 8, 4, true), XC_OK);       /* 3 blocks */
    assert_int_equal(xc_sched_add(s, 1, 2, 2, true), XC_ERR_ARG);  /* id in use */
    assert_int_equal(xc_sched_add(s, 2, 4, 4, true), XC_OK);       /* 2 blocks: must wait */
    assert_int_equal(xc_sched_add(s, 3, 2, 2, false), XC_OK);      /* not ready */
    xc_sched_batch b;
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].id, 1);
    int nb;
    assert_null(xc_sched_blocks(s, 2, &nb));
    assert_int_equal(xc_sched_token(s, 2, 5), XC_ERR_PROTO);
    uint64_t ids[8];
    int n;
    xc_sched_fail_all(s, ids, 8, &n);
    assert_true(xc_sched_counts_ok(s));
    assert_int_equal(n, 3);
    assert_int_equal(xc_sched_n_free_blocks(s), 4);
    assert_int_equal(xc_sched_n_inflight(s), 0);
    assert_true(xc_sched_next(s, &b)); /* the admitted sequence is released on the stages */
    assert_int_equal(b.n_items, 0);
    assert_int_equal(b.n_release, 1);
    assert_int_equal(b.release[0], 1);
    assert_false(xc_sched_next(s, &b));
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

/* After a replica failure every stage must drop the failed sequences: xc_sched_fail_all queues
 * the admitted ones for release and keeps releases that were pending (review #3: before, both
 * were dropped and the last stage kept a sampler per sequence forever). Waiting sequences never
 * reached a stage and are not released. */
static void test_sched_fail_all_releases_on_the_stages(void **state) {
    (void)state;
    xc_sched_conf sc = {.max_rows = 32,
                        .chunk = 32,
                        .block_size = 4,
                        .n_blocks = 8,
                        .max_inflight = 4,
                        .n_stages = 2};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    assert_int_equal(xc_sched_add(s, 1, 4, 4, true), XC_OK); /* 2 blocks each */
    assert_int_equal(xc_sched_add(s, 2, 4, 4, true), XC_OK);
    assert_int_equal(xc_sched_add(s, 3, 4, 4, true), XC_OK);
    assert_int_equal(xc_sched_add(s, 4, 20, 4, true), XC_OK); /* 6 blocks: waits */
    xc_sched_batch b;
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 3);
    xc_sched_finish(s, 3); /* pending release of 3 */
    uint64_t ids[8];
    int n;
    xc_sched_fail_all(s, ids, 8, &n);
    assert_true(xc_sched_counts_ok(s));
    assert_int_equal(n, 3); /* 1, 2 (admitted) and 4 (waiting) */
    assert_false(xc_sched_is_inflight(s, b.id));
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 0);
    bool seen[5] = {false};
    for (int i = 0; i < b.n_release; i++) {
        assert_true(b.release[i] >= 1 && b.release[i] <= 4);
        assert_false(seen[b.release[i]]);
        seen[b.release[i]] = true;
    }
    assert_int_equal(b.n_release, 3);
    assert_true(seen[1] && seen[2] && seen[3]);
    assert_false(seen[4]);
    xc_sched_batch_done(s, b.id);
    assert_false(xc_sched_next(s, &b));
    /* many sequences: every release id fits without allocating at finish time */
    for (uint64_t id = 10; id < 210; id++) {
        assert_int_equal(xc_sched_add(s, id, 1, 1, true), XC_OK);
    }
    int admitted = 0;
    while (xc_sched_next(s, &b)) {
        admitted += b.n_items;
    }
    xc_sched_fail_all(s, ids, 8, &n);
    assert_true(xc_sched_counts_ok(s));
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_release, admitted);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

/* Resume bookkeeping: after a failure whose stages are re-assigned (which clears them),
 * xc_sched_drop_releases forgets the releases, and a resumed sequence re-added under the same id
 * with prompt + the tokens it generated (7 + 3 rows, 5 left to generate) gets its whole new prompt
 * in one chunk from position 0, samples at its last row, and is never released in the same or the
 * next micro-batch (a release would drop its fresh state on every stage); its next decode row is
 * at position 10 with the token that came back. */
static void test_sched_resume_after_fail(void **state) {
    (void)state;
    xc_sched_conf sc = {.max_rows = 32,
                        .chunk = 32,
                        .block_size = 4,
                        .n_blocks = 16,
                        .max_inflight = 4,
                        .n_stages = 2};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    assert_int_equal(xc_sched_add(s, 9, 7, 8, true), XC_OK);
    xc_sched_batch b;
    assert_true(xc_sched_next(s, &b));
    xc_sched_batch_done(s, b.id);
    assert_int_equal(xc_sched_token(s, 9, 41), XC_OK);
    uint64_t ids[4];
    int n;
    xc_sched_fail_all(s, ids, 4, &n);
    assert_int_equal(n, 1);
    xc_sched_drop_releases(s);
    assert_false(xc_sched_next(s, &b)); /* nothing to release, nothing to run */
    assert_int_equal(xc_sched_n_free_blocks(s), 16);
    assert_int_equal(xc_sched_add(s, 9, 7 + 3, 8 - 3, true), XC_OK);
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_release, 0);
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].first_pos, 0);
    assert_int_equal(b.items[0].n_tokens, 10);
    assert_true(b.items[0].first_chunk && b.items[0].samples);
    xc_sched_batch_done(s, b.id);
    assert_int_equal(xc_sched_token(s, 9, 42), XC_OK);
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_release, 0);
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].first_pos, 10);
    assert_int_equal(b.items[0].token, 42);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

/* A finished or cancelled sequence's release goes out in the very next xc_sched_next, on a
 * micro-batch of its own when there are no rows to send (the stages drop the sequence without
 * waiting for the next request). */
static void test_sched_release_only_batch(void **state) {
    (void)state;
    xc_sched_conf sc = {.max_rows = 16,
                        .chunk = 16,
                        .block_size = 4,
                        .n_blocks = 16,
                        .max_inflight = 2,
                        .n_stages = 2};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    xc_sched_batch b;
    assert_false(xc_sched_next(s, &b)); /* idle: nothing to send */
    assert_int_equal(xc_sched_add(s, 7, 5, 10, true), XC_OK);
    assert_int_equal(xc_sched_add(s, 8, 3, 10, true), XC_OK);
    assert_true(xc_sched_next(s, &b)); /* both prompts */
    assert_int_equal(b.n_items, 2);
    assert_int_equal(b.n_release, 0);
    uint64_t mb1 = b.id;
    assert_false(xc_sched_next(s, &b)); /* both wait for their first token */
    /* 8 is cancelled while its prompt is in flight: released at once, on a batch of its own */
    xc_sched_finish(s, 8);
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 0);
    assert_int_equal(b.n_rows, 0);
    assert_int_equal(b.n_release, 1);
    assert_int_equal(b.release[0], 8);
    uint64_t mb2 = b.id;
    assert_true(mb2 != mb1);
    assert_true(xc_sched_is_inflight(s, mb2)); /* answered like any micro-batch */
    assert_int_equal(xc_sched_n_inflight(s), 2);
    assert_false(xc_sched_next(s, &b)); /* released once only */
    /* 7 ends while the in-flight limit is reached: its release waits for room */
    xc_sched_finish(s, 7);
    assert_false(xc_sched_next(s, &b));
    xc_sched_batch_done(s, mb1);
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 0);
    assert_int_equal(b.n_release, 1);
    assert_int_equal(b.release[0], 7);
    xc_sched_batch_done(s, mb2);
    xc_sched_batch_done(s, b.id);
    assert_int_equal(xc_sched_n_inflight(s), 0);
    assert_false(xc_sched_next(s, &b));
    /* with rows due, the release rides on them */
    assert_int_equal(xc_sched_add(s, 9, 4, 2, true), XC_OK);
    assert_int_equal(xc_sched_add(s, 10, 4, 2, true), XC_OK);
    assert_true(xc_sched_next(s, &b));
    xc_sched_batch_done(s, b.id);
    xc_sched_finish(s, 9);
    assert_int_equal(xc_sched_token(s, 10, 1), XC_OK);
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].id, 10);
    assert_int_equal(b.n_release, 1);
    assert_int_equal(b.release[0], 9);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

/* ---- prefix caching ---- */

static xc_sched *cached_sched(int block_size, int n_blocks, int chunk) {
    xc_sched_conf sc = {.max_rows = 64,
                        .chunk = chunk,
                        .block_size = block_size,
                        .n_blocks = n_blocks,
                        .max_inflight = 8,
                        .n_stages = 1,
                        .prefix_cache = true};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    return s;
}

/* Forms and completes micro-batches until nothing more is due; no token comes back, so every
 * sequence stops after its prompt. The items formed are returned in *items (cap). */
static int drain(xc_sched *s, xc_sched_item *items, int cap) {
    int n = 0;
    xc_sched_batch b;
    while (xc_sched_next(s, &b)) {
        for (int i = 0; i < b.n_items && n < cap; i++) {
            items[n++] = b.items[i];
        }
        xc_sched_batch_done(s, b.id);
    }
    return n;
}

static const xc_sched_item *item_of(const xc_sched_item *it, int n, uint64_t id) {
    for (int i = 0; i < n; i++) {
        if (it[i].id == id) {
            return &it[i];
        }
    }
    return NULL;
}

static void test_sched_prefix_chain_and_partial_block(void **state) {
    (void)state;
    xc_sched *s = cached_sched(4, 32, 64);
    uint64_t k1[10], k2[10], k3[8], k4[10];
    for (int i = 0; i < 10; i++) {
        k1[i] = k2[i] = k4[i] = (uint64_t)(100 + i);
    }
    k2[9] = 999; /* differs in the partial last block only */
    memcpy(k3, k1, sizeof k3);
    k4[2] = xc_sched_image_key(0xabc, 2); /* an image row in block 0: a different chain */
    assert_int_equal(xc_sched_cached_rows(s, k1, 10), 0);
    assert_int_equal(xc_sched_add_keyed(s, 1, 10, 2, true, k1, 0, NULL), XC_OK);
    xc_sched_item it[64];
    int n = drain(s, it, 64);
    assert_int_equal(item_of(it, n, 1)->first_pos, 0);
    int nb1 = 0;
    const int32_t *b1 = xc_sched_blocks(s, 1, &nb1);
    int32_t first1[3] = {b1[0], b1[1], b1[2]};
    /* every leading full block matches, the block of the last prompt row is computed */
    assert_int_equal(xc_sched_cached_rows(s, k1, 10), 8);
    assert_int_equal(xc_sched_cached_rows(s, k2, 10), 8);
    assert_int_equal(xc_sched_cached_rows(s, k3, 8), 4); /* rows 4-7 hold its last row */
    assert_int_equal(xc_sched_cached_rows(s, k4, 10), 0);
    assert_int_equal(xc_sched_add_keyed(s, 2, 10, 2, true, k2, 0, NULL), XC_OK);
    assert_int_equal(xc_sched_add_keyed(s, 3, 8, 2, true, k3, 0, NULL), XC_OK);
    assert_int_equal(xc_sched_add_keyed(s, 4, 10, 2, true, k4, 0, NULL), XC_OK);
    n = drain(s, it, 64);
    const xc_sched_item *a = item_of(it, n, 2), *c = item_of(it, n, 3), *d = item_of(it, n, 4);
    assert_non_null(a);
    assert_int_equal(a->first_pos, 8);
    assert_int_equal(a->n_tokens, 2);
    assert_true(a->first_chunk && a->samples);
    assert_int_equal(c->first_pos, 4);
    assert_int_equal(d->first_pos, 0);
    int nb = 0;
    const int32_t *b2 = xc_sched_blocks(s, 2, &nb);
    assert_int_equal(b2[0], first1[0]);
    assert_int_equal(b2[1], first1[1]);
    assert_true(b2[2] != first1[2]); /* the partial block is never shared */
    const int32_t *b3 = xc_sched_blocks(s, 3, &nb);
    assert_int_equal(b3[0], first1[0]);
    assert_true(b3[1] != first1[1]);
    const int32_t *b4 = xc_sched_blocks(s, 4, &nb);
    assert_true(b4[0] != first1[0]);
    /* reference counts: the shared blocks stay while one user is left, and stay cached after */
    xc_sched_finish(s, 1);
    xc_sched_finish(s, 2);
    xc_sched_finish(s, 3);
    xc_sched_finish(s, 4);
    assert_int_equal(xc_sched_n_free_blocks(s), 32);
    assert_true(xc_sched_n_cached_blocks(s) > 0);
    assert_int_equal(xc_sched_cached_rows(s, k1, 10), 8);
    /* a failed replica trusts nothing */
    int nf = 0;
    uint64_t ids[4];
    xc_sched_fail_all(s, ids, 4, &nf);
    assert_int_equal(xc_sched_cached_rows(s, k1, 10), 0);
    assert_int_equal(xc_sched_n_free_blocks(s), 32);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

static void test_sched_prefix_lru_eviction(void **state) {
    (void)state;
    xc_sched *s = cached_sched(4, 12, 64);
    uint64_t ka[13], kb[13], kc[40];
    for (int i = 0; i < 13; i++) {
        ka[i] = (uint64_t)(10 + i);
        kb[i] = (uint64_t)(50 + i);
    }
    for (int i = 0; i < 40; i++) {
        kc[i] = (uint64_t)(200 + i);
    }
    xc_sched_item it[64];
    /* a and b: 13 rows + 3 new = 4 blocks each, 3 full prompt blocks cached after them */
    assert_int_equal(xc_sched_add_keyed(s, 1, 13, 3, true, ka, 0, NULL), XC_OK);
    drain(s, it, 64);
    assert_int_equal(xc_sched_add_keyed(s, 2, 13, 3, true, kb, 0, NULL), XC_OK);
    drain(s, it, 64);
    xc_sched_finish(s, 2);
    xc_sched_finish(s, 1); /* a is now the most recently used */
    assert_int_equal(xc_sched_cached_rows(s, ka, 13), 12);
    assert_int_equal(xc_sched_cached_rows(s, kb, 13), 12);
    int cached = xc_sched_n_cached_blocks(s);
    assert_true(cached >= 6);
    assert_int_equal(xc_sched_n_free_blocks(s), 12);
    /* 12 - cached free blocks + cached: c needs 7 blocks, so some cached ones are evicted, b's
     * first (least recently used), and within b its tail first */
    int free_only = 12 - cached;
    int need = 7;
    assert_int_equal(xc_sched_add_keyed(s, 3, 25, 3, true, kc, 0, NULL), XC_OK);
    drain(s, it, 64);
    int evicted = need - free_only;
    assert_true(evicted > 0);
    assert_int_equal(xc_sched_cached_rows(s, ka, 13), 12); /* a untouched */
    assert_true(xc_sched_cached_rows(s, kb, 13) < 12);     /* b lost its tail */
    if (evicted < cached / 2) {
        assert_true(xc_sched_cached_rows(s, kb, 13) > 0); /* ... but kept its head */
    }
    xc_sched_finish(s, 3);
    assert_int_equal(xc_sched_n_free_blocks(s), 12);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

static void test_sched_prefix_twins_and_uncovered(void **state) {
    (void)state;
    xc_sched *s = cached_sched(4, 64, 64);
    uint64_t k[18];
    for (int i = 0; i < 18; i++) {
        k[i] = i >= 2 && i < 10 ? xc_sched_image_key(77, i - 2) : (uint64_t)(300 + i);
    }
    /* n = 3 with an image at rows [2, 10): the first needs the embeddings, the twins are covered
     * by it and are forked from it (issue 13.3); a fourth prompt differs in its last row only: a
     * twin that shares the full blocks and computes its partial last block */
    bool cov = true;
    assert_int_equal(xc_sched_add_keyed(s, 1, 18, 4, false, k, 10, &cov), XC_OK);
    assert_false(cov);
    assert_int_equal(xc_sched_cached_rows(s, k, 18), 16); /* what its twin will write */
    assert_int_equal(xc_sched_add_keyed(s, 2, 18, 4, false, k, 10, &cov), XC_OK);
    assert_true(cov);
    assert_int_equal(xc_sched_add_keyed(s, 3, 18, 4, false, k, 10, &cov), XC_OK);
    assert_true(cov);
    uint64_t kt[18];
    memcpy(kt, k, sizeof kt);
    kt[17] = 4242;
    assert_int_equal(xc_sched_add_keyed(s, 4, 18, 4, false, kt, 10, &cov), XC_OK);
    assert_true(cov);
    xc_sched_batch b;
    assert_false(xc_sched_next(s, &b)); /* nothing admitted before the first one is ready */
    assert_int_equal(xc_sched_set_ready(s, 1), XC_OK);
    assert_true(xc_sched_next(s, &b));
    /* one prefill: 1's rows, with 2 and 3 forked from its last row; the twin 4 shares blocks not
     * written yet, so its rows go out later */
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].id, 1);
    assert_int_equal(b.items[0].n_tokens, 18);
    assert_int_equal(b.items[0].n_forks, 2);
    assert_int_equal(b.n_forks, 2);
    assert_int_equal(b.forks[0].parent, 1);
    assert_int_equal(b.forks[0].id + b.forks[1].id, 5); /* 2 and 3 */
    assert_int_equal(b.n_copies, 0);                    /* their source is written by this one */
    uint64_t first = b.id;
    int na, nb, nc;
    const int32_t *ba = xc_sched_blocks(s, 1, &na), *bb = xc_sched_blocks(s, 2, &nb),
                  *bc = xc_sched_blocks(s, 3, &nc);
    assert_int_equal(nb, 6); /* 18 + 4 rows */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ba[i], bb[i]);
        assert_int_equal(ba[i], bc[i]);
    }
    assert_true(ba[4] != bb[4] && ba[4] != bc[4] && bb[4] != bc[4]);
    int32_t src = ba[4], d2 = bb[4], d3 = bc[4];
    assert_true(xc_sched_next(s, &b)); /* the twin's last partial block only, and the copies */
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].id, 4);
    assert_int_equal(b.items[0].first_pos, 16);
    assert_int_equal(b.items[0].n_tokens, 2);
    assert_true(b.items[0].first_chunk);
    assert_int_equal(b.n_forks, 0);
    assert_int_equal(b.n_copies, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(b.copies[i].src, src);
        assert_true(b.copies[i].dst == d2 || b.copies[i].dst == d3);
    }
    assert_true(b.copies[0].dst != b.copies[1].dst);
    const int32_t *bt = xc_sched_blocks(s, 4, &nb);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ba[i], bt[i]);
    }
    xc_sched_batch_done(s, first);
    xc_sched_batch_done(s, b.id);
    /* the forks' first tokens came from 1's row: they decode from position 18 */
    for (uint64_t id = 1; id <= 4; id++) {
        assert_int_equal(xc_sched_token(s, id, (int32_t)(500 + id)), XC_OK);
    }
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_copies, 0); /* sent once */
    for (int i = 0; i < b.n_items; i++) {
        assert_int_equal(b.items[i].first_pos, 18);
        assert_int_equal(b.items[i].n_tokens, 1);
    }
    xc_sched_batch_done(s, b.id);
    for (uint64_t id = 1; id <= 4; id++) {
        xc_sched_finish(s, id);
    }
    uint64_t u[4];
    assert_int_equal(xc_sched_take_uncovered(s, u, 4), 0);
    /* covered at add time, but the twin ends before its admission: it needs its data after all */
    assert_int_equal(xc_sched_add_keyed(s, 10, 18, 40, false, k, 10, &cov), XC_OK); /* no room */
    uint64_t k2[18];
    memcpy(k2, k, sizeof k2);
    k2[0] = 5;
    assert_int_equal(xc_sched_add_keyed(s, 11, 18, 4, false, k2, 10, &cov), XC_OK);
    assert_false(cov);
    assert_int_equal(xc_sched_add_keyed(s, 12, 18, 4, false, k2, 10, &cov), XC_OK);
    assert_true(cov);
    xc_sched_finish(s, 11);
    assert_false(xc_sched_next(s, &b) && b.n_items > 0 && b.items[0].id == 12);
    assert_int_equal(xc_sched_take_uncovered(s, u, 4), 1);
    assert_int_equal(u[0], 12);
    assert_int_equal(xc_sched_set_ready(s, 12), XC_OK); /* its data came */
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

static void test_sched_prefix_owner_ends_early(void **state) {
    (void)state;
    xc_sched *s = cached_sched(4, 64, 4);
    uint64_t k[14];
    for (int i = 0; i < 14; i++) {
        k[i] = (uint64_t)(40 + i);
    }
    uint64_t k2[14];
    memcpy(k2, k, sizeof k2);
    k2[13] = 7; /* a twin, not a fork: it shares the full blocks */
    assert_int_equal(xc_sched_add_keyed(s, 1, 14, 2, true, k, 0, NULL), XC_OK);
    assert_int_equal(xc_sched_add_keyed(s, 2, 14, 2, true, k2, 0, NULL), XC_OK);
    xc_sched_batch b;
    assert_true(xc_sched_next(s, &b)); /* 1: rows [0, 4) (chunk 4); 2 waits for 1's blocks */
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].id, 1);
    xc_sched_batch_done(s, b.id);
    xc_sched_finish(s, 1); /* cancelled with blocks 1 and 2 not written: 2 computes them */
    xc_sched_item it[64];
    int n = drain(s, it, 64);
    int pos = 4;
    bool first = true;
    for (int i = 0; i < n; i++) {
        if (it[i].id == 2 && it[i].first_pos < 14) {
            assert_int_equal(it[i].first_pos, pos);
            assert_int_equal(it[i].first_chunk, first);
            first = false;
            pos += it[i].n_tokens;
        }
    }
    assert_int_equal(pos, 14);
    xc_sched_finish(s, 2);
    assert_int_equal(xc_sched_n_free_blocks(s), 64);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

/* issue 13.3: an aborted micro-batch undoes its forks (formed again with it), a fork whose twin
 * ends before its last chunk is admitted as usual, and a replica failure with forks and their
 * copies pending leaves a whole pool and no copy behind; resumed siblings fork again. */
static void test_sched_forks_abort_and_fail(void **state) {
    (void)state;
    xc_sched *s = cached_sched(4, 32, 64);
    uint64_t k[10];
    for (int i = 0; i < 10; i++) {
        k[i] = (uint64_t)(600 + i);
    }
    for (uint64_t id = 1; id <= 3; id++) {
        assert_int_equal(xc_sched_add_keyed(s, id, 10, 3, true, k, 0, NULL), XC_OK);
    }
    xc_sched_batch b;
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.n_forks, 2);
    int free_before = 32 - 4 - 2 * 2; /* 13 rows: 4 blocks each, the 2 full ones shared */
    assert_int_equal(xc_sched_n_free_blocks(s), free_before);
    xc_sched_abort(s, &b); /* not sent: the forks are undone with it */
    assert_int_equal(xc_sched_n_free_blocks(s), 32 - 4);
    assert_null(xc_sched_blocks(s, 2, &(int){0}));
    assert_true(xc_sched_next(s, &b)); /* formed again, with the same forks */
    assert_int_equal(b.n_forks, 2);
    assert_int_equal(b.items[0].n_forks, 2);
    assert_int_equal(xc_sched_n_free_blocks(s), free_before);
    uint64_t mb1 = b.id;
    /* the copies wait for the next micro-batch; a replica failure drops them with the rest */
    uint64_t ids[8];
    int n = 0;
    xc_sched_fail_all(s, ids, 8, &n);
    assert_int_equal(n, 3);
    assert_int_equal(xc_sched_n_free_blocks(s), 32);
    xc_sched_drop_releases(s);
    assert_false(xc_sched_is_inflight(s, mb1));
    /* resumed: each with the token it had (the same one), so the prompts are equal again */
    uint64_t k2[11];
    memcpy(k2, k, sizeof k);
    k2[10] = 77;
    for (uint64_t id = 1; id <= 3; id++) {
        assert_int_equal(xc_sched_add_keyed(s, id, 11, 2, true, k2, 0, NULL), XC_OK);
    }
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_copies, 0);
    assert_int_equal(b.n_forks, 2);
    assert_int_equal(b.items[0].first_pos, 0);
    assert_int_equal(b.items[0].n_tokens, 11);
    xc_sched_batch_done(s, b.id);
    for (uint64_t id = 1; id <= 3; id++) {
        assert_int_equal(xc_sched_token(s, id, 5), XC_OK);
    }
    assert_true(xc_sched_next(s, &b)); /* decode rows, with the 2 copies of block 2 */
    assert_int_equal(b.n_copies, 2);
    assert_int_equal(b.n_items, 3);
    xc_sched_batch_done(s, b.id);
    for (uint64_t id = 1; id <= 3; id++) {
        xc_sched_finish(s, id);
    }
    /* a fork candidate whose twin is cancelled before its last chunk is admitted as usual */
    uint64_t k3[10];
    for (int i = 0; i < 10; i++) {
        k3[i] = (uint64_t)(900 + i);
    }
    assert_int_equal(xc_sched_add_keyed(s, 20, 10, 2, true, k3, 0, NULL), XC_OK);
    assert_int_equal(xc_sched_add_keyed(s, 21, 10, 2, true, k3, 0, NULL), XC_OK);
    xc_sched_finish(s, 20);
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].id, 21);
    assert_int_equal(b.items[0].n_tokens, 10);
    assert_int_equal(b.n_forks, 0);
    xc_sched_batch_done(s, b.id);
    xc_sched_finish(s, 21);
    while (xc_sched_next(s, &b)) { /* the release-only batch */
        xc_sched_batch_done(s, b.id);
    }
    assert_int_equal(xc_sched_n_free_blocks(s), 32);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
    /* a fork counts as a row of the budget (max_rows 4): a 2-row prompt forks 2 of its 5
     * siblings, the others prefill their partial block as twins */
    xc_sched_conf sc = {.max_rows = 4,
                        .chunk = 4,
                        .block_size = 4,
                        .n_blocks = 64,
                        .max_inflight = 8,
                        .n_stages = 1,
                        .prefix_cache = true};
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    for (uint64_t id = 1; id <= 6; id++) {
        assert_int_equal(xc_sched_add_keyed(s, id, 2, 2, true, k, 0, NULL), XC_OK);
    }
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.n_rows, 2);
    assert_int_equal(b.n_forks, 2);
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_forks, 0);
    assert_int_equal(b.n_items, 2); /* twins: 2 rows each */
    assert_int_equal(b.n_rows, 4);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

/* Randomized: prompts drawn from a few shared prefixes, a small pool (eviction), aborts; a fake
 * KV pool written by the micro-batches in the order the stages run them checks that every row
 * sees exactly its own sequence's keys at every earlier position (shared blocks, eviction,
 * readiness of blocks shared before they are written). */
static void run_cached(unsigned seed, int n_blocks, int chunk, int abort_one_in,
                       int *n_forks_seen) {
    enum { N = 40, BS = 4, MAXP = 44 };

    xc_sched_conf sc = {.max_rows = 24,
                        .chunk = chunk,
                        .block_size = BS,
                        .n_blocks = n_blocks,
                        .max_inflight = 3,
                        .n_stages = 2,
                        .prefix_cache = true};
    xc_sched *s;
    assert_int_equal(xc_sched_create(&sc, &s), XC_OK);
    srand(seed);
    uint64_t fam[3][MAXP];
    for (int f = 0; f < 3; f++) {
        for (int i = 0; i < MAXP; i++) {
            fam[f][i] = (uint64_t)(rand() % 5 == 0 ? xc_sched_image_key((uint64_t)f, i)
                                                   : (uint64_t)(rand() % 50));
        }
    }
    static uint64_t keys[N][MAXP + 16];
    int np[N], mn[N], ngen[N], nextp[N];
    bool done[N], started[N], has_data[N], fetching[N];
    int data[N], n_covered = 0, n_uncovered = 0;
    for (int i = 0; i < N; i++) {
        np[i] = 1 + rand() % MAXP;
        mn[i] = 1 + rand() % 8;
        int f = rand() % 3, shared = rand() % (np[i] + 1);
        for (int p = 0; p < np[i]; p++) {
            keys[i][p] = p < shared ? fam[f][p] : (uint64_t)(100 + rand() % 1000);
        }
        ngen[i] = nextp[i] = 0;
        data[i] = rand() % 2 ? rand() % (np[i] + 1) : 0;
        if (i > 0 && rand() % 3 == 0) { /* a sibling (n > 1): the same prompt and data */
            np[i] = np[i - 1];
            data[i] = data[i - 1];
            memcpy(keys[i], keys[i - 1], (size_t)np[i] * sizeof(uint64_t));
        }
        has_data[i] = fetching[i] = false;
        done[i] = started[i] = false;
    }
    static uint64_t kv[256][BS];
    memset(kv, 0xff, sizeof kv);

    typedef struct fb {
        uint64_t id;
        int n;
        xc_sched_item it[24];
        int32_t bt[24][32];
        int n_forks, n_copies;
        xc_sched_fork forks[N];
        xc_sched_copy copies[N];
    } fb;

    static fb q[8];
    int qh = 0, qn = 0, added = 0, n_done = 0, steps = 0, n_forked = 0;
    long cached_rows = 0;
    bool forked[N] = {false};
    while (n_done < N) {
        assert_true(++steps < 200000);
        /* rows [0, data[i]) need data (image embeddings) that arrives a while after it is asked
         * for, unless cached blocks cover them */
        uint64_t unc[N];
        for (int k = xc_sched_take_uncovered(s, unc, N) - 1; k >= 0; k--) {
            int i = (int)unc[k] - 1;
            if (done[i]) {
                continue; /* reported, then cancelled */
            }
            assert_false(has_data[i]);
            assert_false(fetching[i]);
            fetching[i] = true;
            n_uncovered++;
        }
        if (rand() % 4 == 0) {
            for (int i = 0; i < added; i++) {
                if (fetching[i] && rand() % 2 == 0) {
                    fetching[i] = false;
                    has_data[i] = true;
                    assert_int_equal(xc_sched_set_ready(s, (uint64_t)i + 1), XC_OK);
                    break;
                }
            }
        }
        if (added > 0 && rand() % 50 == 0) { /* cancelled at any time (even before admission) */
            int i = rand() % added;
            if (!done[i]) {
                xc_sched_finish(s, (uint64_t)i + 1);
                done[i] = true;
                fetching[i] = false;
                n_done++;
            }
            continue;
        }
        if (added < N && rand() % 3 == 0) {
            int i = added++;
            bool cov = false;
            assert_int_equal(xc_sched_add_keyed(s, (uint64_t)i + 1, np[i], mn[i], data[i] == 0,
                                                keys[i], data[i], &cov),
                             XC_OK);
            if (cov) {
                n_covered++;
            } else if (data[i] > 0) {
                fetching[i] = true;
            } else {
                has_data[i] = true;
            }
            continue;
        }
        assert_true(xc_sched_counts_ok(s));
        xc_sched_batch b;
        bool formed = xc_sched_next(s, &b);
        if (formed && abort_one_in > 0 && rand() % abort_one_in == 0) {
            xc_sched_abort(s, &b);
            continue;
        }
        if (formed) {
            fb *f = &q[(qh + qn++) % 8];
            f->id = b.id;
            f->n = b.n_items;
            /* issue 13.3: forks take the parent's full blocks, a block of their own for its
             * partial last one (copied in a later micro-batch), and compute no prompt row */
            assert_true(b.n_forks <= N && b.n_copies <= N);
            assert_true(b.n_items + b.n_forks <= 24); /* sequences + forks within max_rows */
            f->n_forks = b.n_forks;
            memcpy(f->forks, b.forks, (size_t)b.n_forks * sizeof *b.forks);
            f->n_copies = b.n_copies;
            memcpy(f->copies, b.copies, (size_t)b.n_copies * sizeof *b.copies);
            int n_in_items = 0;
            for (int k = 0; k < b.n_items; k++) {
                const xc_sched_item *it = &b.items[k];
                for (int j = it->fork0; j < it->fork0 + it->n_forks; j++) {
                    assert_int_equal(b.forks[j].parent, it->id);
                    int p = (int)it->id - 1, c = (int)b.forks[j].id - 1;
                    assert_true(it->samples && it->first_pos + it->n_tokens == np[p]);
                    assert_int_equal(np[c], np[p]);
                    assert_memory_equal(keys[c], keys[p], (size_t)np[p] * sizeof(uint64_t));
                    assert_false(started[c]);
                    int nbp = 0, nbc = 0;
                    const int32_t *bp = xc_sched_blocks(s, it->id, &nbp);
                    const int32_t *bc = xc_sched_blocks(s, b.forks[j].id, &nbc);
                    assert_non_null(bc);
                    for (int k2 = 0; k2 < np[p] / BS; k2++) {
                        assert_int_equal(bc[k2], bp[k2]);
                    }
                    if (np[p] % BS) {
                        assert_true(bc[np[p] / BS] != bp[np[p] / BS]);
                    }
                    started[c] = forked[c] = true;
                    nextp[c] = np[c];
                    n_forked++;
                    n_in_items++;
                }
            }
            assert_int_equal(n_in_items, b.n_forks);
            for (int k = 0; k < b.n_items; k++) {
                const xc_sched_item *it = &b.items[k];
                int i = (int)it->id - 1;
                f->it[k] = *it;
                int nb = 0;
                const int32_t *bt = xc_sched_blocks(s, it->id, &nb);
                assert_non_null(bt);
                assert_ptr_equal(it->blocks, bt); /* the item carries its block table */
                assert_int_equal(it->n_blocks, nb);
                memcpy(f->bt[k], bt, (size_t)nb * sizeof *bt);
                /* rows that need data go out only with it */
                assert_true(has_data[i] || it->first_pos >= data[i]);
                assert_true(!forked[i] || it->first_pos >= np[i]); /* no prompt row */
                if (!started[i]) {
                    assert_true(it->first_chunk);
                    assert_int_equal(it->first_pos % BS, 0);
                    assert_true(it->first_pos <= (np[i] - 1) / BS * BS);
                    cached_rows += it->first_pos;
                    nextp[i] = it->first_pos;
                    started[i] = true;
                } else {
                    assert_false(it->first_chunk);
                }
                assert_int_equal(it->first_pos, nextp[i]);
                nextp[i] += it->n_tokens;
                if (it->first_pos >= np[i]) {
                    keys[i][it->first_pos] = (uint64_t)(uint32_t)it->token;
                }
            }
            continue;
        }
        if (qn == 0) {
            bool any_fetching = false;
            for (int i = 0; i < added; i++) {
                any_fetching = any_fetching || fetching[i];
            }
            /* nothing in flight: only more sequences or data can help */
            assert_true(added < N || any_fetching);
            continue;
        }
        /* the stages run the oldest micro-batch: every row reads the KV of all rows before it */
        fb *f = &q[qh];
        qh = (qh + 1) % 8;
        qn--;
        for (int k = 0; k < f->n_copies; k++) { /* before its rows */
            memcpy(kv[f->copies[k].dst], kv[f->copies[k].src], sizeof kv[0]);
        }
        for (int k = 0; k < f->n; k++) {
            const xc_sched_item *it = &f->it[k];
            int i = (int)it->id - 1;
            for (int p = it->first_pos; p < it->first_pos + it->n_tokens; p++) {
                for (int r = 0; r < p; r++) {
                    assert_true(kv[f->bt[k][r / BS]][r % BS] == keys[i][r]);
                }
                kv[f->bt[k][p / BS]][p % BS] = keys[i][p];
            }
        }
        xc_sched_batch_done(s, f->id);
        for (int k = 0; k < f->n; k++) {
            const xc_sched_item *it = &f->it[k];
            int i = (int)it->id - 1;
            if (!it->samples || done[i]) {
                continue;
            }
            assert_int_equal(xc_sched_token(s, it->id, 2000 + ngen[i] * 7 + i % 2), XC_OK);
            ngen[i]++;
            if (ngen[i] == mn[i] || rand() % 17 == 0) { /* done, or cancelled */
                xc_sched_finish(s, it->id);
                done[i] = true;
                n_done++;
            }
        }
        for (int j = 0; j < f->n_forks; j++) { /* their first token, from the parent's row */
            int i = (int)f->forks[j].id - 1;
            if (done[i]) {
                continue;
            }
            assert_int_equal(ngen[i], 0);
            assert_int_equal(xc_sched_token(s, f->forks[j].id, 2000 + i % 2), XC_OK);
            ngen[i]++;
            if (ngen[i] == mn[i] || rand() % 17 == 0) {
                xc_sched_finish(s, f->forks[j].id);
                done[i] = true;
                n_done++;
            }
        }
    }
    assert_true(cached_rows > 0);
    assert_true(n_covered > 0);
    if (n_forks_seen) {
        *n_forks_seen += n_forked;
    }
    (void)n_uncovered; /* happens with eviction; seen in some runs only */
    assert_int_equal(xc_sched_n_free_blocks(s), n_blocks);
    assert_int_equal(xc_sched_n_live(s), 0);
    assert_true(xc_sched_counts_ok(s));
    xc_sched_destroy(s);
}

static void test_sched_prefix_randomized(void **state) {
    (void)state;
    int forks = 0;
    run_cached(1, 256, 64, 0, &forks);
    run_cached(2, 40, 5, 0, &forks);
    run_cached(3, 30, 7, 4, &forks);
    run_cached(4, 16, 3, 3, &forks);
    for (unsigned sd = 10; sd < 200; sd++) { /* small pools, chunks, abort rates */
        run_cached(sd, 16 + sd % 40, 1 + sd % 9, sd % 5 == 1 ? 0 : sd % 5, &forks);
    }
    assert_true(forks > 100); /* n > 1 siblings forked (issue 13.3) */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sched_rows_in_order_and_kv_disjoint),
        cmocka_unit_test(test_sched_long_prompt_chunks_in_flight),
        cmocka_unit_test(test_sched_admission_and_errors),
        cmocka_unit_test(test_sched_fail_all_releases_on_the_stages),
        cmocka_unit_test(test_sched_resume_after_fail),
        cmocka_unit_test(test_sched_release_only_batch),
        cmocka_unit_test(test_sched_abort_forms_the_batch_again),
        cmocka_unit_test(test_sched_prefix_chain_and_partial_block),
        cmocka_unit_test(test_sched_prefix_lru_eviction),
        cmocka_unit_test(test_sched_prefix_twins_and_uncovered),
        cmocka_unit_test(test_sched_prefix_owner_ends_early),
        cmocka_unit_test(test_sched_forks_abort_and_fail),
        cmocka_unit_test(test_sched_prefix_randomized),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
