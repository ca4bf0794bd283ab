/* Worker tests: a real worker (CPU backend, tiny generated checkpoint) driven by a fake
 * coordinator over inproc links: per-sequence failures on the last stage end only those
 * sequences (Result.failed_*), while the other sequences of the micro-batch get their tokens. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_test.h"
#include "xc_tiny.h"
#include "xc_transport.h"
#include "xc_wire.h"
#include "xc_worker.h"

/* The worker runs on its own threads: cmocka's allocator is not thread-safe, so the leak-checking
 * hooks go through one lock. */
static pthread_mutex_t g_mem_lock = PTHREAD_MUTEX_INITIALIZER;

static void *lk_malloc(size_t n) {
    pthread_mutex_lock(&g_mem_lock);
    void *p = test_malloc(n);
    pthread_mutex_unlock(&g_mem_lock);
    return p;
}

static void *lk_calloc(size_t c, size_t s) {
    pthread_mutex_lock(&g_mem_lock);
    void *p = test_calloc(c, s);
    pthread_mutex_unlock(&g_mem_lock);
    return p;
}

static void *lk_realloc(void *q, size_t n) {
    pthread_mutex_lock(&g_mem_lock);
    void *p = test_realloc(q, n);
    pthread_mutex_unlock(&g_mem_lock);
    return p;
}

static void lk_free(void *p) {
    pthread_mutex_lock(&g_mem_lock);
    test_free(p);
    pthread_mutex_unlock(&g_mem_lock);
}

static int group_setup(void **state) {
    (void)state;
    static const xc_mem_hooks h = {lk_malloc, lk_calloc, lk_realloc, lk_free};
    xc_mem_set_hooks(&h);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    xc_mem_set_hooks(NULL);
    return 0;
}

/* ---- a worker on a thread, and the fake coordinator's links ---- */

typedef struct harness {
    char dir[64];
    char cep[64], wep[64]; /* the worker keeps pointers to its conf strings */
    xc_worker *w;
    pthread_t th;
    volatile sig_atomic_t stop;
    xc_transport *rx; /* the fake coordinator's mailbox */
    xc_transport *tx; /* to the worker */
    xc_arena *arena;
    xc_msg msg;
} harness;

static void *worker_main(void *arg) {
    harness *h = arg;
    (void)xc_worker_run(h->w, &h->stop);
    return NULL;
}

/* Receives the next message that is not a heartbeat (5 s at most). */
static xc_wire_msg next_msg(harness *h) {
    for (int i = 0; i < 200; i++) {
        xc_msg_fini(&h->msg);
        xc_arena_reset(h->arena);
        xc_wire_msg m;
        xc_status st = xc_transport_recv_wire(h->rx, 5000, h->arena, &h->msg, &m);
        if (st != XC_OK) {
            fail_msg("fake coordinator: nothing received: %s", xc_err_last());
        }
        if (m.kind != XC_WIRE_KIND_CONTROL || m.u.control.kind != XC_WIRE_CTL_HEARTBEAT) {
            return m;
        }
    }
    fail_msg("fake coordinator: only heartbeats");
    return (xc_wire_msg){0};
}

/* Starts a worker, waits for its Register, assigns it the only stage (so the last one) of a tiny
 * 2-layer model and waits for Ready. */
static void start(harness *h, const char *tag) {
    memset(h, 0, sizeof *h);
    snprintf(h->dir, sizeof h->dir, "/tmp/xc-test-worker-XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    xc_tiny_conf tc;
    xc_tiny_conf_init(&tc, "7b");
    tc.dtype = XC_DTYPE_F32;
    assert_int_equal(xc_tiny_write(h->dir, &tc), XC_OK);
    char *cep = h->cep, *wep = h->wep;
    snprintf(h->cep, sizeof h->cep, "inproc://tw-coord-%s", tag);
    snprintf(h->wep, sizeof h->wep, "inproc://tw-worker-%s", tag);
    assert_int_equal(xc_transport_open(cep, XC_TRANSPORT_RECV, NULL, &h->rx), XC_OK);
    assert_int_equal(xc_arena_create(1 << 16, &h->arena), XC_OK);
    xc_worker_conf wc = {.coordinator = cep,
                         .endpoint = wep,
                         .id = "tw",
                         .backend = "cpu",
                         .n_threads = 1,
                         .heartbeat_s = 0.5,
                         .hang_s = 60,
                         .send_timeout_ms = 2000,
                         .role = XC_WIRE_ROLE_ANY};
    assert_int_equal(xc_worker_create(&wc, &h->w), XC_OK);
    assert_int_equal(pthread_create(&h->th, NULL, worker_main, h), 0);
    xc_wire_msg m = next_msg(h);
    assert_int_equal(m.kind, XC_WIRE_KIND_CONTROL);
    assert_int_equal(m.u.control.kind, XC_WIRE_CTL_REGISTER);
    assert_int_equal(xc_transport_open(wep, XC_TRANSPORT_SEND, NULL, &h->tx), XC_OK);
    xc_wire_msg a = {.kind = XC_WIRE_KIND_CONTROL,
                     .u.control = {.kind = XC_WIRE_CTL_ASSIGN,
                                   .u.assign = {.role = XC_WIRE_ROLE_STAGE,
                                                .n_stages = 1,
                                                .layer_begin = 0,
                                                .layer_end = 2,
                                                .n_layers = 2,
                                                .model_path = h->dir,
                                                .next_endpoint = cep,
                                                .kv_blocks = 16,
                                                .kv_block_size = 16,
                                                .max_rows = 64}}};
    assert_int_equal(xc_transport_send_wire(h->tx, &a, NULL, 0, 2000), XC_OK);
    m = next_msg(h);
    if (m.kind != XC_WIRE_KIND_CONTROL || m.u.control.kind != XC_WIRE_CTL_READY) {
        fail_msg("expected Ready, got %s", m.kind == XC_WIRE_KIND_CONTROL
                                               ? xc_wire_ctl_name(m.u.control.kind)
                                               : xc_wire_kind_name(m.kind));
    }
}

static void stop(harness *h) {
    h->stop = 1;
    pthread_join(h->th, NULL);
    xc_worker_destroy(h->w);
    xc_msg_fini(&h->msg);
    xc_transport_close(h->tx);
    xc_transport_close(h->rx);
    xc_arena_destroy(h->arena);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", h->dir);
    assert_int_equal(system(cmd), 0);
}

/* Sends a forward frame of token ids for seqs (n), rows in order. */
static void send_ids(harness *h, uint64_t mb, const xc_wire_seq *seqs, size_t n, const int32_t *ids,
                     uint32_t rows) {
    xc_wire_msg f = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.microbatch_id = mb,
                                   .kv_block_size = 16,
                                   .n_seqs = n,
                                   .seqs = seqs,
                                   .payload = {.dtype = XC_DTYPE_I32, .rows = rows, .cols = 1}}};
    xc_frame fr = {.data = (void *)ids, .len = rows * sizeof(int32_t)};
    assert_int_equal(xc_transport_send_wire(h->tx, &f, &fr, 1, 2000), XC_OK);
}

/* ---- tests ---- */

/* One micro-batch with a good sequence, one the last stage does not know (no sampling, never
 * seen) and one whose sampler cannot be made (top_k past INT32_MAX: the wire carries it, the
 * sampler refuses it). The good one gets its token, which equals the token it gets alone
 * (batch-invariant CPU kernels: the reference is the same sequence without the others); the two
 * others come back as failed with their own codes and messages; no Error fails the batch. Before
 * the fix the last stage answered the whole micro-batch with an Error. */
static void test_worker_last_stage_fails_one_sequence(void **state) {
    (void)state;
    harness h;
    start(&h, "fail1");
    static const uint32_t b0[] = {0}, b1[] = {1}, b2[] = {2}, b3[] = {3};
    xc_wire_sampling greedy = {.greedy = true,
                               .temperature = 1.0f,
                               .top_p = 1.0f,
                               .repetition_penalty = 1.0f,
                               .max_new_tokens = 4,
                               .prompt_len = 4};
    xc_wire_sampling bad = greedy;
    bad.greedy = false;
    bad.top_k = 0x80000000u;
    bad.prompt_len = 2;
    xc_wire_seq seqs[3] = {
        {.id = 11, .n_tokens = 4, .n_blocks = 1, .block_table = b0, .sampling = &greedy},
        {.id = 12, .n_tokens = 3, .n_blocks = 1, .block_table = b1},
        {.id = 13, .n_tokens = 2, .n_blocks = 1, .block_table = b2, .sampling = &bad}};
    const int32_t ids[] = {1, 17, 42, 99, 5, 6, 7, 8, 9};
    send_ids(&h, 1, seqs, 3, ids, 9);
    xc_wire_msg m = next_msg(&h);
    if (m.kind != XC_WIRE_KIND_RESULT) {
        fail_msg("expected a Result, got %s%s%s",
                 m.kind == XC_WIRE_KIND_CONTROL ? xc_wire_ctl_name(m.u.control.kind)
                                                : xc_wire_kind_name(m.kind),
                 m.kind == XC_WIRE_KIND_CONTROL && m.u.control.kind == XC_WIRE_CTL_ERROR ? ": "
                                                                                         : "",
                 m.kind == XC_WIRE_KIND_CONTROL && m.u.control.kind == XC_WIRE_CTL_ERROR
                     ? m.u.control.u.error.message
                     : "");
    }
    const xc_wire_result *r = &m.u.result;
    assert_int_equal(r->microbatch_id, 1);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->seq_ids[0], 11);
    uint32_t tok = r->tokens[0];
    assert_true(tok < 512);
    assert_int_equal(r->n_failed, 2);
    assert_int_equal(r->failed_ids[0], 12);
    assert_int_equal(r->failed_codes[0], XC_ERR_PROTO);
    assert_non_null(strstr(r->failed_messages[0], "sequence 12 is unknown here"));
    assert_int_equal(r->failed_ids[1], 13);
    assert_int_equal(r->failed_codes[1], XC_ERR_ARG);
    assert_non_null(strstr(r->failed_messages[1], "top_k"));
    /* the reference: the same prompt alone, in fresh KV blocks */
    xc_wire_seq alone = {
        .id = 21, .n_tokens = 4, .n_blocks = 1, .block_table = b3, .sampling = &greedy};
    send_ids(&h, 2, &alone, 1, ids, 4);
    m = next_msg(&h);
    assert_int_equal(m.kind, XC_WIRE_KIND_RESULT);
    assert_int_equal(m.u.result.n, 1);
    assert_int_equal(m.u.result.n_failed, 0);
    assert_int_equal(m.u.result.tokens[0], tok);
    /* the good sequence goes on decoding in the same worker: its next row is answered */
    xc_wire_seq dec = {.id = 11, .first_pos = 4, .n_tokens = 1, .n_blocks = 1, .block_table = b0};
    const int32_t next_id = (int32_t)tok;
    send_ids(&h, 3, &dec, 1, &next_id, 1);
    m = next_msg(&h);
    assert_int_equal(m.kind, XC_WIRE_KIND_RESULT);
    assert_int_equal(m.u.result.n, 1);
    assert_int_equal(m.u.result.seq_ids[0], 11);
    stop(&h);
}

/* The device memory a CUDA worker advertises: a share of the free memory, capped; two workers on
 * one GPU at 0.45 each advertise together less than the free memory. */
static void test_worker_device_budget(void **state) {
    (void)state;
    uint64_t gib = 1ull << 30, free80 = 80 * gib;
    assert_true(xc_worker_device_budget(free80, 0, 0) == (uint64_t)(0.9 * (double)free80));
    assert_true(xc_worker_device_budget(free80, 1, 0) == free80);
    assert_true(xc_worker_device_budget(free80, 0.5, 10 * gib) == 10 * gib);
    assert_true(xc_worker_device_budget(free80, 0.1, 10 * gib) == (uint64_t)(0.1 * (double)free80));
    assert_true(2 * xc_worker_device_budget(free80, 0.45, 0) < free80);
    assert_true(xc_worker_device_budget(0, 0.9, 0) == 0);
    /* a share out of range is refused at create */
    xc_worker_conf c = {.coordinator = "tcp://127.0.0.1:1",
                        .heartbeat_s = 1,
                        .hang_s = 1,
                        .backend = "sim",
                        .sim_width = 1,
                        .device_mem_frac = 1.5};
    xc_worker *w = NULL;
    assert_int_equal(xc_worker_create(&c, &w), XC_ERR_ARG);
    c.device_mem_frac = 0.5;
    c.device = -1;
    assert_int_equal(xc_worker_create(&c, &w), XC_ERR_ARG);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worker_last_stage_fails_one_sequence),
        cmocka_unit_test(test_worker_device_budget),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
