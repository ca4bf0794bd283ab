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
    assert_int_equal(n, 3);
    assert_int_equal(xc_sched_n_free_blocks(s), 4);
    assert_int_equal(xc_sched_n_inflight(s), 0);
    assert_true(xc_sched_next(s, &b)); /* the admitted sequence is released on the stages */
    assert_int_equal(b.n_items, 0);
    assert_int_equal(b.n_release, 1);
    assert_int_equal(b.release[0], 1);
    assert_false(xc_sched_next(s, &b));
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
    assert_true(xc_sched_next(s, &b));
    assert_int_equal(b.n_release, admitted);
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
    xc_sched_destroy(s);
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
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
