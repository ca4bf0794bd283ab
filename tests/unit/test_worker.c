/* Worker tests: a real worker (CPU backend, tiny generated checkpoint) driven by a fake
 * coordinator over inproc links: per-sequence failures on the last stage end only those
 * sequences (Result.failed_*), while the other sequences of the micro-batch get their tokens. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_backend.h"
#include "xc_ckpt.h"
#include "xc_model_config.h"
#include "xc_test.h"
#include "xc_time.h"
#include "xc_tiny.h"
#include "xc_transport.h"
#include "xc_vision.h"
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
 * 2-layer model, or the vision role, and waits for Ready. vconf (vision) sets the worker's image
 * cache and batching. */
static void start_role(harness *h, const char *tag, bool vision, const xc_worker_conf *vconf) {
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
    if (vconf) {
        wc.image_cache_bytes = vconf->image_cache_bytes;
        wc.vision_batch = vconf->vision_batch;
        wc.vision_wait_ms = vconf->vision_wait_ms;
    }
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
    if (vision) {
        a.u.control.u.assign = (xc_wire_assign){
            .role = XC_WIRE_ROLE_VISION, .n_stages = 1, .n_layers = 2, .model_path = h->dir};
    }
    assert_int_equal(xc_transport_send_wire(h->tx, &a, NULL, 0, 2000), XC_OK);
    m = next_msg(h);
    if (m.kind != XC_WIRE_KIND_CONTROL || m.u.control.kind != XC_WIRE_CTL_READY) {
        fail_msg("expected Ready, got %s", m.kind == XC_WIRE_KIND_CONTROL
                                               ? xc_wire_ctl_name(m.u.control.kind)
                                               : xc_wire_kind_name(m.kind));
    }
}

static void start(harness *h, const char *tag) {
    start_role(h, tag, false, NULL);
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

/* The token a Result gives sequence id (fails if none). */
static uint32_t result_token(const xc_wire_msg *m, uint64_t id) {
    assert_int_equal(m->kind, XC_WIRE_KIND_RESULT);
    for (size_t i = 0; i < m->u.result.n; i++) {
        if (m->u.result.seq_ids[i] == id) {
            return m->u.result.tokens[i];
        }
    }
    fail_msg("no token for sequence %llu", (unsigned long long)id);
    return 0;
}

/* issue 13.3: a sequence with 3 forks (Seq.forks) prefills once and the Result carries a token
 * for each of the 4, drawn from the one last row with each one's own choice index: equal to what
 * 4 separate prefills of the same prompt draw. A later micro-batch's copy list (Forward.copy_src/
 * copy_dst) gives each fork a copy of the partial last block, and their decode rows then draw
 * what the separate sequences draw at the same position. A copy with a block id past the pool
 * fails the micro-batch with an Error. */
static void test_worker_forks_and_block_copies(void **state) {
    (void)state;
    harness h;
    start(&h, "fork");

    enum { NP = 20 }; /* 16 + 4: a partial second block */

    int32_t prompt[NP * 4];
    for (int i = 0; i < NP; i++) {
        prompt[i] = (int32_t)(3 + (i * 37) % 400);
    }
    for (int k = 1; k < 4; k++) {
        memcpy(prompt + k * NP, prompt, sizeof(int32_t) * NP);
    }
    xc_wire_sampling sp[4];
    for (int c = 0; c < 4; c++) {
        sp[c] = (xc_wire_sampling){.temperature = 1.5f,
                                   .top_p = 1.0f,
                                   .repetition_penalty = 1.0f,
                                   .seed = 77,
                                   .max_new_tokens = 4,
                                   .prompt_len = NP,
                                   .choice = (uint32_t)c};
    }
    /* the reference: 4 separate prefills (choices 0-3) in blocks {2k, 2k + 1} */
    static const uint32_t bt[8][2] = {{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}};
    xc_wire_seq sep[4];
    for (int c = 0; c < 4; c++) {
        sep[c] = (xc_wire_seq){.id = 40 + (uint64_t)c,
                               .n_tokens = NP,
                               .n_blocks = 2,
                               .block_table = bt[c],
                               .sampling = &sp[c]};
    }
    uint32_t t[4], r[4];
    xc_wire_msg m;
    for (int k = 0; k < 2; k++) { /* 2 x 40 rows: max_rows is 64 */
        send_ids(&h, 1 + (uint64_t)k, sep + 2 * k, 2, prompt, 2 * NP);
        m = next_msg(&h);
        for (int c = 2 * k; c < 2 * k + 2; c++) {
            t[c] = result_token(&m, 40 + (uint64_t)c);
        }
    }
    xc_wire_seq dec[4];
    int32_t in[4];
    for (int c = 0; c < 4; c++) {
        dec[c] = (xc_wire_seq){.id = 40 + (uint64_t)c,
                               .first_pos = NP,
                               .n_tokens = 1,
                               .n_blocks = 2,
                               .block_table = bt[c]};
        in[c] = (int32_t)t[c];
    }
    send_ids(&h, 9, dec, 4, in, 4);
    m = next_msg(&h);
    for (int c = 0; c < 4; c++) {
        r[c] = result_token(&m, 40 + (uint64_t)c);
    }
    /* one prefill of choice 0 in blocks {8, 9}, with choices 1-3 forked from its last row */
    xc_wire_fork fk[3];
    for (int c = 1; c < 4; c++) {
        fk[c - 1] = (xc_wire_fork){.id = 50 + (uint64_t)c, .sampling = &sp[c]};
    }
    xc_wire_seq par = {.id = 50,
                       .n_tokens = NP,
                       .n_blocks = 2,
                       .block_table = bt[4],
                       .sampling = &sp[0],
                       .n_forks = 3,
                       .forks = fk};
    send_ids(&h, 3, &par, 1, prompt, NP);
    m = next_msg(&h);
    assert_int_equal(m.u.result.n, 4);
    assert_int_equal(m.u.result.n_failed, 0);
    for (int c = 0; c < 4; c++) {
        assert_int_equal(result_token(&m, 50 + (uint64_t)c), t[c]);
    }
    /* the forks share block 8 and get copies of block 9 in 10, 11, 12, then decode */
    static const uint32_t src[3] = {9, 9, 9}, dst[3] = {10, 11, 12};
    static const uint32_t fbt[4][2] = {{8, 9}, {8, 10}, {8, 11}, {8, 12}};
    for (int c = 0; c < 4; c++) {
        dec[c] = (xc_wire_seq){.id = 50 + (uint64_t)c,
                               .first_pos = NP,
                               .n_tokens = 1,
                               .n_blocks = 2,
                               .block_table = fbt[c]};
    }
    xc_wire_msg f = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.microbatch_id = 4,
                                   .kv_block_size = 16,
                                   .n_seqs = 4,
                                   .seqs = dec,
                                   .payload = {.dtype = XC_DTYPE_I32, .rows = 4, .cols = 1},
                                   .n_copies = 3,
                                   .copy_src = src,
                                   .copy_dst = dst}};
    xc_frame fr = {.data = in, .len = sizeof in};
    assert_int_equal(xc_transport_send_wire(h.tx, &f, &fr, 1, 2000), XC_OK);
    m = next_msg(&h);
    for (int c = 0; c < 4; c++) {
        assert_int_equal(result_token(&m, 50 + (uint64_t)c), r[c]);
    }
    /* a copy past the pool fails the micro-batch, with an Error that says so */
    static const uint32_t bad_src[1] = {99}, bad_dst[1] = {13};
    f.u.forward.microbatch_id = 5;
    f.u.forward.n_seqs = 0;
    f.u.forward.payload.rows = 0;
    f.u.forward.n_copies = 1;
    f.u.forward.copy_src = bad_src;
    f.u.forward.copy_dst = bad_dst;
    fr.len = 0;
    assert_int_equal(xc_transport_send_wire(h.tx, &f, &fr, 1, 2000), XC_OK);
    m = next_msg(&h);
    assert_int_equal(m.kind, XC_WIRE_KIND_CONTROL);
    assert_int_equal(m.u.control.kind, XC_WIRE_CTL_ERROR);
    assert_non_null(strstr(m.u.control.u.error.message, "block copy 99 -> 13"));
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

/* ---- vision: batching and the image cache ---- */

/* Deterministic pixels of image `which` (3 x S x S, CLIP-normalised range). */
static float *make_image(int S, int which) {
    size_t n = 3u * (size_t)S * S;
    float *p = malloc(n * sizeof(float));
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(which + 1);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (float)((double)(x >> 11) * 0x1p-53 * 4.0 - 2.0);
    }
    return p;
}

/* Sends one vision frame of n images (pixels concatenated); rows_per (normally 3 S) lets a test
 * send a malformed one. */
static void send_images(harness *h, uint64_t mb, float *const *imgs, int n, int S, int rows_per) {
    xc_wire_seq seqs[8];
    static const uint32_t b0 = 0;
    size_t per = 3u * (size_t)S * S;
    float *px = malloc((size_t)n * per * sizeof(float));
    for (int i = 0; i < n; i++) {
        seqs[i] = (xc_wire_seq){.id = mb * 100 + (uint64_t)i,
                                .n_tokens = (uint32_t)rows_per,
                                .n_blocks = 1,
                                .block_table = &b0};
        memcpy(px + (size_t)i * per, imgs[i], per * sizeof(float));
    }
    xc_wire_msg f = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.microbatch_id = mb,
                                   .kv_block_size = 4096,
                                   .n_seqs = (size_t)n,
                                   .seqs = seqs,
                                   .payload = {.dtype = XC_DTYPE_F32,
                                               .rows = (uint32_t)(n * rows_per),
                                               .cols = (uint32_t)S}}};
    size_t bytes = (size_t)n * (size_t)rows_per * (size_t)S * sizeof(float);
    xc_frame fr = {.data = px, .len = bytes};
    assert_int_equal(xc_transport_send_wire(h->tx, &f, &fr, 1, 2000), XC_OK);
    free(px);
}

/* The reference: each image encoded alone by a vision tower of its own. */
static float *encode_alone(const char *dir, const float *img, size_t *per) {
    xc_model_config cfg;
    assert_int_equal(xc_model_config_load(dir, &cfg), XC_OK);
    xc_ckpt *ck = NULL;
    assert_int_equal(xc_ckpt_open(dir, &ck), XC_OK);
    xc_backend_conf bc = {.n_threads = 1};
    xc_backend *be = NULL;
    assert_int_equal(xc_backend_create("cpu", &bc, &be), XC_OK);
    xc_vision *v = NULL;
    assert_int_equal(xc_vision_create(be, ck, &cfg, &v), XC_OK);
    const xc_vision_info *vi = xc_vision_get_info(v);
    *per = (size_t)vi->n_tokens * (size_t)vi->out_dim;
    float *out = malloc(*per * sizeof(float));
    assert_int_equal(xc_vision_encode(v, img, 1, out, NULL), XC_OK);
    xc_vision_destroy(v);
    xc_backend_destroy(be);
    xc_ckpt_close(ck);
    return out;
}

/* Frames of different requests sent together are encoded in one call (stats), each image's
 * embeddings have the bits of that image encoded alone, and a malformed frame among them fails
 * alone (an Error for its micro-batch, the others answered). */
static void test_worker_vision_batches_bit_identical(void **state) {
    (void)state;
    harness h;
    xc_worker_conf vc = {.vision_batch = 8, .vision_wait_ms = 1000};
    start_role(&h, "vis1", true, &vc);
    int S = 56;
    float *img[4];
    for (int i = 0; i < 4; i++) {
        img[i] = make_image(S, i);
    }
    send_images(&h, 1, &img[0], 1, S, 3 * S);
    send_images(&h, 2, &img[1], 1, S, 2 * S); /* malformed: 2 S rows for an image */
    send_images(&h, 3, &img[1], 2, S, 3 * S);
    send_images(&h, 4, &img[3], 1, S, 3 * S);
    const int first_img[5] = {0, 0, -1, 1, 3}; /* by micro-batch id */
    int seen = 0, errors = 0;
    while (seen < 3 || errors < 1) {
        xc_wire_msg m = next_msg(&h);
        if (m.kind == XC_WIRE_KIND_CONTROL && m.u.control.kind == XC_WIRE_CTL_ERROR) {
            assert_true(m.u.control.u.error.has_microbatch);
            assert_int_equal(m.u.control.u.error.microbatch_id, 2);
            assert_int_equal(m.u.control.u.error.code, XC_ERR_PROTO);
            errors++;
            continue;
        }
        assert_int_equal(m.kind, XC_WIRE_KIND_FORWARD);
        const xc_wire_forward *f = &m.u.forward;
        assert_true(f->microbatch_id != 2 && f->microbatch_id <= 4);
        const float *got = h.msg.frames[1].data;
        for (size_t i = 0; i < f->n_seqs; i++) {
            size_t per = 0;
            float *want = encode_alone(h.dir, img[first_img[f->microbatch_id] + (int)i], &per);
            assert_int_equal(f->payload.rows * f->payload.cols, per * f->n_seqs);
            if (memcmp(got + i * per, want, per * sizeof(float))) {
                fail_msg("micro-batch %llu image %zu: batched embeddings differ from the image "
                         "encoded alone",
                         (unsigned long long)f->microbatch_id, i);
            }
            free(want);
        }
        seen++;
    }
    xc_worker_stats st;
    xc_worker_get_stats(h.w, &st);
    assert_int_equal(st.vision_batches, 1); /* 4 images of 3 good frames: one encode */
    assert_int_equal(st.vision_encoded, 4);
    for (int i = 0; i < 4; i++) {
        free(img[i]);
    }
    stop(&h);
}

/* The image cache: a re-sent image is copied, not encoded (hits, misses and encodes counted), and
 * gives the same bits; the same image twice in one frame is encoded once. */
static void test_worker_vision_cache(void **state) {
    (void)state;
    harness h;
    xc_worker_conf vc = {.image_cache_bytes = 1 << 20, .vision_batch = 1};
    start_role(&h, "vis2", true, &vc);
    int S = 56;
    float *a = make_image(S, 7), *b = make_image(S, 8);
    float *first = NULL;
    size_t bytes = 0;
    for (int round = 0; round < 2; round++) {
        send_images(&h, (uint64_t)(10 + round), &a, 1, S, 3 * S);
        xc_wire_msg m = next_msg(&h);
        assert_int_equal(m.kind, XC_WIRE_KIND_FORWARD);
        bytes = h.msg.frames[1].len;
        if (round == 0) {
            first = malloc(bytes);
            memcpy(first, h.msg.frames[1].data, bytes);
        } else {
            assert_memory_equal(h.msg.frames[1].data, first, bytes);
        }
    }
    xc_worker_stats st;
    xc_worker_get_stats(h.w, &st);
    assert_int_equal(st.image_cache_hits, 1);
    assert_int_equal(st.image_cache_misses, 1);
    assert_int_equal(st.vision_encoded, 1);
    float *pair[3] = {b, b, a};
    send_images(&h, 20, pair, 3, S, 3 * S);
    xc_wire_msg m = next_msg(&h);
    assert_int_equal(m.kind, XC_WIRE_KIND_FORWARD);
    assert_int_equal(m.u.forward.n_seqs, 3);
    const char *got = h.msg.frames[1].data;
    assert_memory_equal(got, got + bytes, bytes); /* b and b */
    assert_memory_equal(got + 2 * bytes, first, bytes);
    xc_worker_get_stats(h.w, &st);
    assert_int_equal(st.image_cache_hits, 2);
    assert_int_equal(st.image_cache_misses, 3);
    assert_int_equal(st.vision_encoded, 2); /* b once */
    free(first);
    free(a);
    free(b);
    stop(&h);
}

/* ---- the sim backend's timing model ---- */

/* Queued work starts when the modelled device becomes free; work that arrives later, or whose
 * arrival is not known, starts when the thread takes it; nothing starts before it was taken
 * unless it was queued in time. */
static void test_worker_sim_start_rule(void **state) {
    (void)state;
    /* queued at 100, device free at 150, taken at 200: starts at 150 */
    assert_true(xc_sim_start_ns(200, 100, 150) == 150);
    assert_true(xc_sim_start_ns(200, 150, 150) == 150);
    /* queued after the device was free: when taken */
    assert_true(xc_sim_start_ns(200, 160, 150) == 200);
    /* arrival not known (zmq, mpi): when taken */
    assert_true(xc_sim_start_ns(200, 0, 150) == 200);
    /* the device's last micro-batch has not ended by the time it is taken (cannot happen after
     * a sleep to its end; never start later than taken) */
    assert_true(xc_sim_start_ns(200, 100, 250) == 200);
    /* a device that never ran (free 0) */
    assert_true(xc_sim_start_ns(200, 100, 0) == 200);
}

/* The worker counts a micro-batch after its send: waits (5 s at most) until it counted n. */
static void wait_microbatches(xc_worker *w, uint64_t n, xc_worker_stats *ws) {
    for (int i = 0; i < 5000; i++) {
        xc_worker_get_stats(w, ws);
        if (ws->microbatches >= n) {
            break;
        }
        usleep(1000);
    }
    assert_true(ws->microbatches == n);
}

/* A sim first stage of 2 with 3 micro-batches queued at once: each takes the cost model's time
 * (never less, measured from the first send), the 2nd and 3rd start when the one before ends
 * (stats: early > 0), and one sent after the stage went idle starts when taken (early unchanged).
 */
static void test_worker_sim_stage_queue(void **state) {
    (void)state;
    harness h;
    memset(&h, 0, sizeof h);
    snprintf(h.cep, sizeof h.cep, "inproc://tw-coord-sim");
    snprintf(h.wep, sizeof h.wep, "inproc://tw-worker-sim");
    assert_int_equal(xc_transport_open(h.cep, XC_TRANSPORT_RECV, NULL, &h.rx), XC_OK);
    assert_int_equal(xc_arena_create(1 << 16, &h.arena), XC_OK);
    const double mb_us = 100000; /* one layer of 100 ms: robust to a loaded machine */
    xc_worker_conf wc = {.coordinator = h.cep,
                         .endpoint = h.wep,
                         .id = "tws",
                         .backend = "sim",
                         .heartbeat_s = 0.5,
                         .hang_s = 60,
                         .send_timeout_ms = 2000,
                         .role = XC_WIRE_ROLE_ANY,
                         .sim = {.layer_us = mb_us, .scale = 1},
                         .sim_width = 4};
    assert_int_equal(xc_worker_create(&wc, &h.w), XC_OK);
    assert_int_equal(pthread_create(&h.th, NULL, worker_main, &h), 0);
    xc_wire_msg m = next_msg(&h);
    assert_int_equal(m.u.control.kind, XC_WIRE_CTL_REGISTER);
    assert_int_equal(xc_transport_open(h.wep, XC_TRANSPORT_SEND, NULL, &h.tx), XC_OK);
    xc_wire_msg a = {.kind = XC_WIRE_KIND_CONTROL,
                     .u.control = {.kind = XC_WIRE_CTL_ASSIGN,
                                   .u.assign = {.role = XC_WIRE_ROLE_STAGE,
                                                .stage = 0,
                                                .n_stages = 2,
                                                .layer_begin = 0,
                                                .layer_end = 1,
                                                .n_layers = 2,
                                                .model_path = "/nonexistent-sim",
                                                .next_endpoint = h.cep,
                                                .kv_blocks = 16,
                                                .kv_block_size = 16,
                                                .max_rows = 64}}};
    assert_int_equal(xc_transport_send_wire(h.tx, &a, NULL, 0, 2000), XC_OK);
    m = next_msg(&h);
    assert_int_equal(m.u.control.kind, XC_WIRE_CTL_READY);
    static const uint32_t b0[] = {0};
    xc_wire_sampling greedy = {.greedy = true,
                               .temperature = 1.0f,
                               .top_p = 1.0f,
                               .repetition_penalty = 1.0f,
                               .max_new_tokens = 4,
                               .prompt_len = 2};
    const int32_t ids[] = {5, 6};
    uint64_t sent = xc_now_ns();
    for (uint64_t mb = 1; mb <= 3; mb++) {
        xc_wire_seq q = {
            .id = 40 + mb, .n_tokens = 2, .n_blocks = 1, .block_table = b0, .sampling = &greedy};
        send_ids(&h, mb, &q, 1, ids, 2);
    }
    for (uint64_t mb = 1; mb <= 3; mb++) {
        m = next_msg(&h);
        assert_int_equal(m.kind, XC_WIRE_KIND_FORWARD);
        assert_int_equal(m.u.forward.microbatch_id, mb);
        assert_int_equal(m.u.forward.payload.rows, 2);
        assert_int_equal(m.u.forward.payload.cols, 4);
        /* never faster than the model */
        assert_true(xc_now_ns() - sent >= (uint64_t)(mb_us * 1000.0) * mb);
    }
    xc_worker_stats ws;
    wait_microbatches(h.w, 3, &ws);
    assert_true(ws.sim_model_ns == 3 * (uint64_t)(mb_us * 1000.0));
    assert_true(ws.sim_early_ns > 0); /* the 2nd and 3rd were queued in time */
    uint64_t early = ws.sim_early_ns;
    usleep(10000);
    xc_wire_seq q = {
        .id = 50, .n_tokens = 2, .n_blocks = 1, .block_table = b0, .sampling = &greedy};
    send_ids(&h, 4, &q, 1, ids, 2);
    m = next_msg(&h);
    assert_int_equal(m.u.forward.microbatch_id, 4);
    wait_microbatches(h.w, 4, &ws);
    assert_true(ws.sim_model_ns == 4 * (uint64_t)(mb_us * 1000.0));
    assert_true(ws.sim_early_ns == early); /* arrived idle: started when taken */
    h.stop = 1;
    pthread_join(h.th, NULL);
    xc_worker_destroy(h.w);
    xc_msg_fini(&h.msg);
    xc_transport_close(h.tx);
    xc_transport_close(h.rx);
    xc_arena_destroy(h.arena);
}

/* A frame whose images are all in the image cache is answered at once instead of waiting
 * --vision-wait-ms for frames to batch with; a frame with an uncached image still waits the
 * window. (Bounds far from the 1 s window, for a loaded machine.) */
static void test_worker_vision_cached_no_wait(void **state) {
    (void)state;
    harness h;
    xc_worker_conf vc = {.image_cache_bytes = 1 << 20, .vision_batch = 2, .vision_wait_ms = 1000};
    start_role(&h, "vis3", true, &vc);
    int S = 56;
    float *a = make_image(S, 11), *b = make_image(S, 12), *c = make_image(S, 13);
    float *ab[2] = {a, b};
    send_images(&h, 30, ab, 2, S, 3 * S); /* a full batch: encoded without waiting */
    xc_wire_msg m = next_msg(&h);
    assert_int_equal(m.kind, XC_WIRE_KIND_FORWARD);
    assert_int_equal(m.u.forward.microbatch_id, 30);
    size_t bytes = h.msg.frames[1].len / 2;
    float *emb_a = malloc(bytes);
    memcpy(emb_a, h.msg.frames[1].data, bytes);
    double t0 = xc_now_s();
    send_images(&h, 31, &a, 1, S, 3 * S); /* cached: no wait */
    m = next_msg(&h);
    double cached_s = xc_now_s() - t0;
    assert_int_equal(m.kind, XC_WIRE_KIND_FORWARD);
    assert_int_equal(m.u.forward.microbatch_id, 31);
    assert_memory_equal(h.msg.frames[1].data, emb_a, bytes);
    t0 = xc_now_s();
    send_images(&h, 32, &c, 1, S, 3 * S); /* not cached: waits for a second image */
    m = next_msg(&h);
    double miss_s = xc_now_s() - t0;
    assert_int_equal(m.kind, XC_WIRE_KIND_FORWARD);
    assert_int_equal(m.u.forward.microbatch_id, 32);
    if (!(cached_s < 0.5 && miss_s >= 0.9)) {
        fail_msg("cached frame answered after %.3f s (want < 0.5), uncached after %.3f s (want the "
                 "1 s window)",
                 cached_s, miss_s);
    }
    xc_worker_stats st;
    xc_worker_get_stats(h.w, &st);
    assert_int_equal(st.image_cache_hits, 1);
    assert_int_equal(st.vision_encoded, 3);
    free(emb_a);
    free(a);
    free(b);
    free(c);
    stop(&h);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worker_last_stage_fails_one_sequence),
        cmocka_unit_test(test_worker_forks_and_block_copies),
        cmocka_unit_test(test_worker_device_budget),
        cmocka_unit_test(test_worker_vision_batches_bit_identical),
        cmocka_unit_test(test_worker_vision_cached_no_wait),
        cmocka_unit_test(test_worker_vision_cache),
        cmocka_unit_test(test_worker_sim_start_rule),
        cmocka_unit_test(test_worker_sim_stage_queue),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
