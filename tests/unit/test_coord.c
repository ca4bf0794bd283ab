/* Coordinator tests: the real coordinator (xc_coord) against fake workers on threads that speak
 * the wire protocol over inproc links (register, assign, ready, heartbeats, forward frames,
 * results), so that failure paths can be driven exactly: a sequence that fails alone on the last
 * stage, a micro-batch that cannot be built, a stage error, an assignment that cannot load, and a
 * stop racing submissions. Tokens come from a formula of (sequence id, position) that the test
 * checks independently. */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_coord.h"
#include "xc_coord_lines.h"
#include "xc_test.h"
#include "xc_time.h"
#include "xc_transport.h"
#include "xc_wire.h"

/* ---- leak-checking hooks that several threads may use, and one-shot allocation faults ---- */

static pthread_mutex_t g_mem_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t g_main_thread;
static size_t g_fail_size;     /* the next allocation of exactly this size off the main thread */
static atomic_int g_fail_hits; /* ... fails, and counts here */

static bool fault(size_t n) {
    if (g_fail_size && n == g_fail_size && !pthread_equal(pthread_self(), g_main_thread)) {
        g_fail_size = 0;
        atomic_fetch_add(&g_fail_hits, 1);
        return true;
    }
    return false;
}

/* The allocator the coordinator runs on in these tests: libc memory, counted. Not cmocka's
 * test_malloc: libcmocka keeps its list of allocated blocks in thread-local storage, so a block
 * allocated on the coordinator's thread and freed on the main thread after that thread ended
 * unlinks itself through the dead thread's list head (a crash in _test_free that depends on which
 * block happens to be last). Leaks are checked per test by the count (check_leaks), and by
 * ASan's leak checker in CI. */
static atomic_long g_live;

static void *lk_malloc(size_t n) {
    pthread_mutex_lock(&g_mem_lock);
    void *p = fault(n) ? NULL : malloc(n);
    pthread_mutex_unlock(&g_mem_lock);
    if (p) {
        atomic_fetch_add(&g_live, 1);
    }
    return p;
}

static void *lk_calloc(size_t c, size_t s) {
    pthread_mutex_lock(&g_mem_lock);
    void *p = fault(c * s) ? NULL : calloc(c, s);
    pthread_mutex_unlock(&g_mem_lock);
    if (p) {
        atomic_fetch_add(&g_live, 1);
    }
    return p;
}

static void *lk_realloc(void *q, size_t n) {
    pthread_mutex_lock(&g_mem_lock);
    void *p = fault(n) ? NULL : realloc(q, n);
    pthread_mutex_unlock(&g_mem_lock);
    if (p && !q) {
        atomic_fetch_add(&g_live, 1);
    }
    return p;
}

static void lk_free(void *p) {
    if (p) {
        atomic_fetch_sub(&g_live, 1);
        free(p);
    }
}

static long g_live_before;

static int mark_live(void **state) {
    (void)state;
    g_live_before = atomic_load(&g_live);
    return 0;
}

static int check_leaks(void **state) {
    (void)state;
    long n = atomic_load(&g_live) - g_live_before;
    if (n != 0) {
        print_error("%ld allocation(s) of the coordinator not freed by the end of the test\n", n);
        return -1;
    }
    return 0;
}

static char g_dir[64];

static int group_setup(void **state) {
    (void)state;
    g_main_thread = pthread_self();
    snprintf(g_dir, sizeof g_dir, "/tmp/xc-test-coord-XXXXXX");
    if (!mkdtemp(g_dir)) {
        return -1;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", g_dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        return -1;
    }
    fputs("{\"num_hidden_layers\": 4, \"hidden_size\": 8, \"intermediate_size\": 16, "
          "\"num_attention_heads\": 2, \"num_key_value_heads\": 2, \"vocab_size\": 100, "
          "\"max_position_embeddings\": 4096}\n",
          f);
    fclose(f);
    static const xc_mem_hooks h = {lk_malloc, lk_calloc, lk_realloc, lk_free};
    xc_mem_set_hooks(&h);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    xc_mem_set_hooks(NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int g_serial; /* unique inproc names per test */

/* The token the fake last stage samples for sequence id after its rows up to pos ran. */
static int32_t tok_of(uint64_t id, uint32_t pos) {
    return (int32_t)(10 + (pos * 7u + (uint32_t)(id % 13u)) % 80u);
}

/* ---- a fake worker ---- */

#define FAKE_SEQS 64
#define FAKE_IDS  4096

typedef struct fake {
    char id[32];
    char ep[64];
    const char *coord_ep;
    /* behaviour */
    bool fail_assign;        /* answer every Assign with a non-fatal Error (cannot load) */
    uint64_t fail_seed;      /* last stage: sequences sampled with this seed fail alone */
    atomic_int fail_next_mb; /* the next micro-batch with rows fails with Error{microbatch} */
    atomic_int swallow_next; /* the next micro-batch with rows is never answered (a hang) */
    uint64_t inc;            /* incarnation in Register and Heartbeat (a restart changes it) */
    uint32_t epoch;          /* from the last Assign; frames of another epoch are dropped */
    bool cuda;               /* Register as a CUDA worker ... */
    uint64_t dev_mem;        /* ... with this Register.device_mem_bytes (also sent by CPU ones) */
    /* state */
    pthread_t th;
    atomic_int stop;
    atomic_int n_assign;
    atomic_int assigned;
    atomic_int n_forks; /* last stage: Seq.forks seen (issue 13.3) */
    uint32_t stage, n_stages;
    char next[128];

    struct {
        uint64_t id, seed;
        uint32_t prompt_len;
        bool live;
    } seqs[FAKE_SEQS];

    pthread_mutex_t mu;
    uint64_t released[FAKE_IDS];
    int n_released;
} fake;

static void fake_init(fake *f, const char *name, const char *coord_ep) {
    memset(f, 0, sizeof *f);
    snprintf(f->id, sizeof f->id, "%s", name);
    snprintf(f->ep, sizeof f->ep, "inproc://tc-%s-%d", name, g_serial);
    f->coord_ep = coord_ep;
    f->inc = 0x1234567800000000ull + (uint64_t)g_serial * 7919u + (uint64_t)name[0] * 31u +
             (uint64_t)name[1];
    pthread_mutex_init(&f->mu, NULL);
}

static void fake_seq_add(fake *f, uint64_t id, const xc_wire_sampling *s) {
    for (int i = 0; i < FAKE_SEQS; i++) {
        if (!f->seqs[i].live) {
            f->seqs[i].live = true;
            f->seqs[i].id = id;
            f->seqs[i].seed = s->seed;
            f->seqs[i].prompt_len = s->prompt_len;
            return;
        }
    }
}

static int fake_seq_find(fake *f, uint64_t id) {
    for (int i = 0; i < FAKE_SEQS; i++) {
        if (f->seqs[i].live && f->seqs[i].id == id) {
            return i;
        }
    }
    return -1;
}

static void fake_send(fake *f, xc_transport *tx, const xc_wire_control *c) {
    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL, .u.control = *c};
    (void)xc_transport_send_wire(tx, &m, NULL, 0, 1000);
    (void)f;
}

static int count_forks(const xc_wire_forward *fw) {
    int n = 0;
    for (size_t i = 0; i < fw->n_seqs; i++) {
        n += (int)fw->seqs[i].n_forks;
    }
    return n;
}

static void fake_forward(fake *f, xc_transport *coord, xc_transport *next, xc_arena *arena,
                         const xc_wire_forward *fw) {
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < fw->n_release && f->n_released < FAKE_IDS; i++) {
        f->released[f->n_released++] = fw->release_ids[i];
        int k = fake_seq_find(f, fw->release_ids[i]);
        if (k >= 0) {
            f->seqs[k].live = false;
        }
    }
    pthread_mutex_unlock(&f->mu);
    for (size_t i = 0; i < fw->n_seqs; i++) {
        if (fw->seqs[i].sampling && fake_seq_find(f, fw->seqs[i].id) < 0) {
            fake_seq_add(f, fw->seqs[i].id, fw->seqs[i].sampling);
        }
        for (size_t j = 0; j < fw->seqs[i].n_forks; j++) { /* issue 13.3: registered alike */
            if (fake_seq_find(f, fw->seqs[i].forks[j].id) < 0) {
                fake_seq_add(f, fw->seqs[i].forks[j].id, fw->seqs[i].forks[j].sampling);
            }
        }
    }
    if (f->stage + 1 == f->n_stages) {
        atomic_fetch_add(&f->n_forks, count_forks(fw));
    }
    if (fw->epoch && f->epoch && fw->epoch != f->epoch) {
        return; /* left over from before the replica was re-formed (as the real worker) */
    }
    if (fw->n_seqs > 0 && atomic_exchange(&f->swallow_next, 0)) {
        return;
    }
    if (fw->n_seqs > 0 && atomic_exchange(&f->fail_next_mb, 0)) {
        xc_wire_control e = {.kind = XC_WIRE_CTL_ERROR,
                             .u.error = {.code = XC_ERR_IO,
                                         .message = "fake stage: micro-batch failed",
                                         .has_microbatch = true,
                                         .microbatch_id = fw->microbatch_id,
                                         .worker_id = f->id}};
        fake_send(f, coord, &e);
        return;
    }
    if (f->stage + 1 < f->n_stages) { /* pass hidden rows on */
        xc_wire_forward out = *fw;
        out.has_image_rows = false;
        out.payload = (xc_wire_tensor){.dtype = XC_DTYPE_F32, .rows = fw->payload.rows, .cols = 8};
        size_t len = (size_t)fw->payload.rows * 8 * sizeof(float);
        float *rows = xc_arena_calloc(arena, len / sizeof(float) + 1, sizeof(float));
        xc_frame fr = {.data = rows, .len = len};
        xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD, .u.forward = out};
        (void)xc_transport_send_wire(next, &m, &fr, 1, 1000);
        return;
    }
    size_t n_out = fw->n_seqs + (size_t)count_forks(fw);
    uint64_t *ids = xc_arena_alloc(arena, (n_out + 1) * sizeof(uint64_t));
    uint32_t *toks = xc_arena_alloc(arena, (n_out + 1) * sizeof(uint32_t));
    uint64_t *fids = xc_arena_alloc(arena, (fw->n_seqs + 1) * sizeof(uint64_t));
    int32_t *fcodes = xc_arena_alloc(arena, (fw->n_seqs + 1) * sizeof(int32_t));
    const char **fmsgs = xc_arena_alloc(arena, (fw->n_seqs + 1) * sizeof(char *));
    size_t n = 0, nf = 0;
    for (size_t i = 0; i < fw->n_seqs; i++) {
        const xc_wire_seq *q = &fw->seqs[i];
        int k = fake_seq_find(f, q->id);
        if (k < 0) {
            continue;
        }
        if (f->fail_seed && f->seqs[k].seed == f->fail_seed) {
            fids[nf] = q->id;
            fcodes[nf] = XC_ERR_ARG;
            fmsgs[nf++] = "fake stage: bad sampler";
            continue;
        }
        if (q->first_pos + q->n_tokens >= f->seqs[k].prompt_len) {
            ids[n] = q->id;
            toks[n++] = (uint32_t)tok_of(q->id, q->first_pos + q->n_tokens);
            for (size_t j = 0; j < q->n_forks; j++) { /* from the same row, each its own */
                ids[n] = q->forks[j].id;
                toks[n++] = (uint32_t)tok_of(q->forks[j].id, q->first_pos + q->n_tokens);
            }
        }
    }
    xc_wire_msg m = {.kind = XC_WIRE_KIND_RESULT,
                     .u.result = {.microbatch_id = fw->microbatch_id,
                                  .n = n,
                                  .seq_ids = ids,
                                  .tokens = toks,
                                  .n_failed = nf,
                                  .failed_ids = fids,
                                  .failed_codes = fcodes,
                                  .failed_messages = fmsgs}};
    (void)xc_transport_send_wire(next, &m, NULL, 0, 1000);
}

static void *fake_main(void *arg) {
    fake *f = arg;
    xc_transport *rx = NULL, *coord = NULL, *next = NULL;
    xc_arena *arena = NULL;
    if (xc_transport_open(f->ep, XC_TRANSPORT_RECV, NULL, &rx) != XC_OK ||
        xc_transport_open(f->coord_ep, XC_TRANSPORT_SEND, NULL, &coord) != XC_OK ||
        xc_arena_create(1 << 16, &arena) != XC_OK) {
        goto out;
    }
    uint64_t last_reg = 0, last_hb = 0;
    while (!atomic_load(&f->stop)) {
        uint64_t now = xc_now_ns();
        /* like a real worker: register until assigned (every 0.2 s instead of 2 s), heartbeat */
        if (!atomic_load(&f->assigned) && now - last_reg > 200000000ull) {
            last_reg = now;
            xc_wire_control r = {
                .kind = XC_WIRE_CTL_REGISTER,
                .u.reg = {.worker_id = f->id,
                          .backend = f->cuda ? XC_WIRE_BACKEND_CUDA : XC_WIRE_BACKEND_CPU,
                          .host_mem_bytes = 1ull << 30,
                          .device_mem_bytes = f->dev_mem,
                          .endpoint = f->ep,
                          .incarnation = f->inc}};
            fake_send(f, coord, &r);
        }
        if (now - last_hb > 200000000ull) {
            last_hb = now;
            xc_wire_control h = {
                .kind = XC_WIRE_CTL_HEARTBEAT,
                .u.heartbeat = {.time_ns = now, .worker_id = f->id, .incarnation = f->inc}};
            fake_send(f, coord, &h);
        }
        xc_msg msg = {0};
        xc_wire_msg m;
        xc_arena_reset(arena);
        if (xc_transport_recv_wire(rx, 20, arena, &msg, &m) != XC_OK) {
            continue;
        }
        if (m.kind == XC_WIRE_KIND_CONTROL && m.u.control.kind == XC_WIRE_CTL_ASSIGN) {
            const xc_wire_assign *a = &m.u.control.u.assign;
            atomic_fetch_add(&f->n_assign, 1);
            atomic_store(&f->assigned, 0);
            memset(f->seqs, 0, sizeof f->seqs);
            if (f->fail_assign) {
                xc_wire_control e = {.kind = XC_WIRE_CTL_ERROR,
                                     .u.error = {.code = XC_ERR_IO,
                                                 .message = "fake: assignment failed: no weights",
                                                 .worker_id = f->id}};
                fake_send(f, coord, &e);
            } else {
                f->stage = a->stage;
                f->n_stages = a->n_stages;
                f->epoch = a->epoch;
                if (!next || strcmp(f->next, a->next_endpoint)) {
                    xc_transport_close(next);
                    next = NULL;
                    snprintf(f->next, sizeof f->next, "%s", a->next_endpoint);
                    (void)xc_transport_open(f->next, XC_TRANSPORT_SEND, NULL, &next);
                }
                atomic_store(&f->assigned, 1);
                xc_wire_control r = {.kind = XC_WIRE_CTL_READY,
                                     .u.ready = {.stage = a->stage, .worker_id = f->id}};
                fake_send(f, coord, &r);
            }
        } else if (m.kind == XC_WIRE_KIND_FORWARD && atomic_load(&f->assigned) && next) {
            fake_forward(f, coord, next, arena, &m.u.forward);
        }
        xc_msg_fini(&msg);
    }
out:
    xc_transport_close(next);
    xc_transport_close(coord);
    xc_transport_close(rx);
    xc_arena_destroy(arena);
    return NULL;
}

static void fake_start(fake *f) {
    assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void fake_stop(fake *f) {
    atomic_store(&f->stop, 1);
    pthread_join(f->th, NULL);
    pthread_mutex_destroy(&f->mu);
}

/* The process dies (whatever was in its mailbox is lost) and a new one starts at once under the
 * same id and endpoint, with a new incarnation (xcpipe serve, a StatefulSet pod). */
static void fake_restart(fake *f) {
    atomic_store(&f->stop, 1);
    pthread_join(f->th, NULL);
    atomic_store(&f->stop, 0);
    atomic_store(&f->assigned, 0);
    memset(f->seqs, 0, sizeof f->seqs);
    f->inc += 0x9e3779b97f4a7c15ull;
    fake_start(f);
}

/* ---- requests ---- */

typedef struct result {
    pthread_mutex_t mu;
    uint64_t id;
    int32_t toks[256];
    int n;
    int n_done;
    xc_status status;
    bool retryable;
    char msg[256];
} result;

static void on_event(void *user, const xc_coord_event *ev) {
    result *r = user;
    pthread_mutex_lock(&r->mu);
    if (ev->kind == XC_COORD_TOKEN && r->n < 256) {
        r->toks[r->n++] = ev->token;
    } else if (ev->kind == XC_COORD_DONE) {
        r->n_done++;
        r->status = ev->status;
        r->retryable = ev->retryable;
        snprintf(r->msg, sizeof r->msg, "%s", ev->message ? ev->message : "");
    }
    pthread_mutex_unlock(&r->mu);
}

static bool wait_done(result *r, double s) {
    uint64_t end = xc_now_ns() + (uint64_t)(s * 1e9);
    for (;;) {
        pthread_mutex_lock(&r->mu);
        int d = r->n_done;
        pthread_mutex_unlock(&r->mu);
        if (d > 0) {
            return true;
        }
        if (xc_now_ns() > end) {
            return false;
        }
        usleep(2000);
    }
}

static int32_t g_prompt[4096];

static xc_status submit(xc_coord *c, result *r, int n, int max_new, uint64_t seed, bool greedy) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    for (int i = 0; i < n; i++) {
        g_prompt[i] = 1 + i % 90;
    }
    xc_coord_request q = {.ids = g_prompt,
                          .n = n,
                          .sampling = {.greedy = greedy,
                                       .temperature = 1.0f,
                                       .top_p = 1.0f,
                                       .repetition_penalty = 1.0f,
                                       .seed = seed},
                          .max_new_tokens = max_new};
    return xc_coord_submit(c, &q, on_event, r, &r->id);
}

/* Tokens r got equal the fake's formula for its positions. */
static void check_tokens(result *r, int n_prompt, int max_new) {
    assert_int_equal(r->n, max_new);
    for (int k = 0; k < max_new; k++) {
        assert_int_equal(r->toks[k], tok_of(r->id, (uint32_t)(n_prompt + k)));
    }
}

static xc_coord *coord_start_conf(char *ep, size_t cap, int stages, int workers, int max_resumes,
                                  double step_timeout_s) {
    snprintf(ep, cap, "inproc://tc-coord-%d", ++g_serial);
    xc_coord_conf cc = {.model_dir = g_dir,
                        .endpoint = ep,
                        .stages = stages,
                        .replicas = 1,
                        .workers = workers,
                        .no_vision = true,
                        .dead_s = 5,
                        .max_rows = 2048,
                        .chunk = 2048,
                        .block_size = 16,
                        .kv_blocks = 512,
                        .send_timeout_ms = 1000,
                        .max_resumes = max_resumes,
                        .step_timeout_s = step_timeout_s};
    xc_coord *c = NULL;
    assert_int_equal(xc_coord_create(&cc, &c), XC_OK);
    return c;
}

static xc_coord *coord_start(char *ep, size_t cap, int stages, int workers) {
    return coord_start_conf(ep, cap, stages, workers, 0, 0);
}

/* ---- tests ---- */

/* The coordinator refuses what the last stage's sampler would refuse (review #1): before, a
 * temperature of 1500 passed here and failed on the last stage. */
static void test_coord_sampling_bounds_match_the_sampler(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
    result r;
    xc_coord_request q = {
        .ids = g_prompt,
        .n = 4,
        .sampling = {.temperature = 1500.0f, .top_p = 1.0f, .repetition_penalty = 1.0f},
        .max_new_tokens = 2};
    g_prompt[0] = g_prompt[1] = g_prompt[2] = g_prompt[3] = 5;
    memset(&r, 0, sizeof r);
    pthread_mutex_init(&r.mu, NULL);
    assert_int_equal(xc_coord_submit(c, &q, on_event, &r, NULL), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "temperature"));
    q.sampling.temperature = 1.0f;
    q.sampling.repetition_penalty = 1001.0f;
    assert_int_equal(xc_coord_submit(c, &q, on_event, &r, NULL), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "repetition_penalty"));
    q.sampling.repetition_penalty = 1000.0f;
    q.sampling.temperature = 1000.0f;
    assert_int_equal(xc_coord_submit(c, &q, on_event, &r, NULL), XC_OK); /* the limits pass */
    q.sampling.greedy = true;
    q.sampling.temperature = 0.0f; /* ignored when greedy */
    assert_int_equal(xc_coord_submit(c, &q, on_event, &r, NULL), XC_OK);
    xc_coord_destroy(c);
    assert_int_equal(r.n_done, 2); /* both ended by the shutdown */
}

/* A sequence that fails alone on the last stage (Result.failed_*) ends only its own request
 * with the stage's code and message; the other request on the replica finishes with the right
 * tokens (review #1). Before, the failed sequence never ended. */
static void test_coord_sequence_failure_fails_one_request(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
    fake w;
    fake_init(&w, "w0", ep);
    w.fail_seed = 666;
    fake_start(&w);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    result bad, good;
    assert_int_equal(submit(c, &bad, 20, 5, 666, false), XC_OK);
    assert_int_equal(submit(c, &good, 30, 5, 1, true), XC_OK);
    assert_true(wait_done(&good, 5));
    assert_true(wait_done(&bad, 5));
    assert_int_equal(good.status, XC_OK);
    check_tokens(&good, 30, 5);
    assert_int_equal(bad.status, XC_ERR_ARG);
    assert_false(bad.retryable);
    assert_string_equal(bad.msg, "fake stage: bad sampler");
    assert_int_equal(bad.n, 0);
    /* the replica still serves */
    result again;
    assert_int_equal(submit(c, &again, 10, 3, 2, true), XC_OK);
    assert_true(wait_done(&again, 5));
    assert_int_equal(again.status, XC_OK);
    check_tokens(&again, 10, 3);
    xc_coord_destroy(c);
    fake_stop(&w);
}

/* Placement and KV sizing use a CUDA worker's device memory (Register.device_mem_bytes, from
 * cudaMemGetInfo and --device-mem-frac), not its host memory; a CPU worker is sized by host
 * memory as before. The test model's KV block is 4 layers x 2 x 2 heads x 4 x 4 bytes (an older
 * worker without kv_elem_bytes counts as f32) x 16 tokens = 4 KiB: 1 MiB of device memory holds
 * about 250 blocks beside the tiny weights, 1 GiB of host memory the --kv-blocks cap of 512. */
static void test_coord_cuda_kv_sized_by_device_memory(void **state) {
    (void)state;
    for (int cuda = 0; cuda < 2; cuda++) {
        char ep[64];
        xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
        fake w;
        fake_init(&w, cuda ? "gpu0" : "cpu0", ep);
        w.cuda = cuda;
        w.dev_mem = 1ull << 20;
        fake_start(&w);
        assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
        xc_coord_stats st = {0};
        for (int i = 0; i < 200 && st.kv_blocks_total == 0; i++) {
            usleep(10000);
            xc_coord_get_stats(c, &st);
        }
        if (cuda) {
            assert_true(st.kv_blocks_total > 200 && st.kv_blocks_total < 256);
        } else {
            assert_int_equal(st.kv_blocks_total, 512);
        }
        /* and it serves */
        result r;
        assert_int_equal(submit(c, &r, 10, 3, 2, true), XC_OK);
        assert_true(wait_done(&r, 5));
        assert_int_equal(r.status, XC_OK);
        check_tokens(&r, 10, 3);
        xc_coord_destroy(c);
        fake_stop(&w);
    }
}

static void arm_fault(size_t n) {
    pthread_mutex_lock(&g_mem_lock);
    g_fail_size = n;
    pthread_mutex_unlock(&g_mem_lock);
}

/* A micro-batch that cannot be built (its token-id buffer cannot be allocated, once) is rolled
 * back in the scheduler and sent again at the next step: the request completes with the right
 * tokens (review #2). Before, the batch stayed in flight forever and the request never ended. */
static void test_coord_unbuilt_batch_is_rolled_back(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
    fake w;
    fake_init(&w, "w0", ep);
    fake_start(&w);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    atomic_store(&g_fail_hits, 0);
    arm_fault(1000 * sizeof(int32_t) + 4); /* the ids of a 1000-row prefill micro-batch */
    result r;
    assert_int_equal(submit(c, &r, 1000, 4, 1, true), XC_OK);
    bool done = wait_done(&r, 5);
    arm_fault(0);
    assert_int_equal(atomic_load(&g_fail_hits), 1);
    assert_true(done);
    assert_int_equal(r.status, XC_OK);
    check_tokens(&r, 1000, 4);
    xc_coord_destroy(c);
    fake_stop(&w);
}

static int n_tokens(result *r) {
    pthread_mutex_lock(&r->mu);
    int n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* A stage error fails the replica's requests (retryable), and every stage then gets their
 * release ids, so no stage keeps their state (review #3). Before, the ids were dropped. */
static int fake_live(fake *f) {
    pthread_mutex_lock(&f->mu);
    int n = 0;
    for (int i = 0; i < FAKE_SEQS; i++) {
        n += f->seqs[i].live;
    }
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* With --max-resumes 0, a micro-batch failing on a stage fails the replica's requests
 * (retryably); the replica is re-formed: every stage gets its Assign again (which clears its
 * sequences: none is left live on either stage) and it serves again. */
static void test_coord_failed_replica_releases_sequences(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start(ep, sizeof ep, 2, 2);
    fake s0, s1;
    fake_init(&s0, "s0", ep);
    fake_init(&s1, "s1", ep);
    fake_start(&s0);
    fake_start(&s1);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    result r[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(submit(c, &r[i], 8 + i, 200, 1, true), XC_OK);
    }
    for (int i = 0; i < 3; i++) {
        uint64_t end = xc_now_ns() + 5000000000ull;
        while (n_tokens(&r[i]) < 2 && xc_now_ns() < end) {
            usleep(1000);
        }
        assert_true(n_tokens(&r[i]) >= 2);
    }
    int a0 = atomic_load(&s0.n_assign), a1 = atomic_load(&s1.n_assign);
    atomic_store(&s1.fail_next_mb, 1);
    for (int i = 0; i < 3; i++) {
        assert_true(wait_done(&r[i], 5));
        assert_int_equal(r[i].status, XC_ERR_IO);
        assert_true(r[i].retryable);
    }
    assert_true(xc_coord_wait_ready(c, 5) == XC_OK);
    assert_true(atomic_load(&s0.n_assign) > a0);
    assert_true(atomic_load(&s1.n_assign) > a1);
    /* and the replica serves again */
    result again;
    assert_int_equal(submit(c, &again, 12, 3, 2, true), XC_OK);
    assert_true(wait_done(&again, 5));
    assert_int_equal(again.status, XC_OK);
    check_tokens(&again, 12, 3);
    usleep(100000); /* its release reaches both stages */
    assert_int_equal(fake_live(&s0), 0);
    assert_int_equal(fake_live(&s1), 0);
    xc_coord_destroy(c);
    fake_stop(&s0);
    fake_stop(&s1);
}

static void wait_tokens(result *r, int n, double s) {
    uint64_t end = xc_now_ns() + (uint64_t)(s * 1e9);
    while (n_tokens(r) < n && xc_now_ns() < end) {
        usleep(1000);
    }
    assert_true(n_tokens(r) >= n);
}

static xc_coord_stats stats_of(xc_coord *c) {
    xc_coord_stats st;
    usleep(20000); /* published once per scheduling step */
    xc_coord_get_stats(c, &st);
    return st;
}

/* Resume (issue 12.4): a micro-batch failing on a stage fails the replica, but its requests are
 * re-prefilled with prompt + the tokens they streamed and go on: every request gets exactly the
 * tokens of an undisturbed run (the fake's tokens are a function of the position), each once,
 * with no gap, and the stages hold no sequence at the end. */
static void test_coord_failed_replica_resumes_requests(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start_conf(ep, sizeof ep, 2, 2, 3, 0);
    fake s0, s1;
    fake_init(&s0, "s0", ep);
    fake_init(&s1, "s1", ep);
    fake_start(&s0);
    fake_start(&s1);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    result r[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(submit(c, &r[i], 8 + i, 120, 1, true), XC_OK);
    }
    for (int i = 0; i < 3; i++) {
        wait_tokens(&r[i], 2, 5);
    }
    atomic_store(&s1.fail_next_mb, 1);
    for (int i = 0; i < 3; i++) {
        assert_true(wait_done(&r[i], 10));
        assert_int_equal(r[i].status, XC_OK);
        assert_int_equal(r[i].n_done, 1);
        check_tokens(&r[i], 8 + i, 120);
    }
    xc_coord_stats st = stats_of(c);
    assert_true(st.resumes == 3);
    assert_true(st.replica_failures >= 1);
    assert_int_equal(st.kv_blocks_used, 0);
    usleep(100000);
    assert_int_equal(fake_live(&s0), 0);
    assert_int_equal(fake_live(&s1), 0);
    xc_coord_destroy(c);
    fake_stop(&s0);
    fake_stop(&s1);
}

/* issue 13.3: 3 requests with the same prompt, submitted before the replica is ready (so that the
 * scheduler sees them together), prefill once: the other two are forked from the first one's last
 * row (Seq.forks on the last stage; the prompt is computed once, the forks' prompts are cache
 * hits). Then the replica fails and each resumes with its own tokens: every request gets exactly
 * the tokens of an undisturbed run, each once, and the stages hold no sequence at the end (the
 * forks' releases reached them). */
static void test_coord_forked_siblings_resume(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start_conf(ep, sizeof ep, 2, 2, 3, 0);
    result r[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(submit(c, &r[i], 40, 250, 1, true), XC_OK);
    }
    fake s0, s1;
    fake_init(&s0, "s0", ep);
    fake_init(&s1, "s1", ep);
    fake_start(&s0);
    fake_start(&s1);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    for (int i = 0; i < 3; i++) {
        wait_tokens(&r[i], 2, 5);
    }
    assert_int_equal(atomic_load(&s1.n_forks), 2);
    xc_coord_stats st = stats_of(c);
    assert_true(st.prompt_rows_computed == 40);
    assert_true(st.prefix_hit_rows == 80);
    atomic_store(&s1.fail_next_mb, 1);
    for (int i = 0; i < 3; i++) {
        assert_true(wait_done(&r[i], 10));
        assert_int_equal(r[i].status, XC_OK);
        assert_int_equal(r[i].n_done, 1);
        check_tokens(&r[i], 40, 250);
    }
    st = stats_of(c);
    assert_true(st.resumes == 3);
    assert_int_equal(st.kv_blocks_used, 0);
    usleep(100000);
    assert_int_equal(fake_live(&s0), 0);
    assert_int_equal(fake_live(&s1), 0);
    xc_coord_destroy(c);
    fake_stop(&s0);
    fake_stop(&s1);
}

/* --max-resumes 1: the second loss of a request's replica fails it (retryably, naming the
 * limit); what it streamed before is the undisturbed prefix. */
static void test_coord_resumes_are_bounded(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start_conf(ep, sizeof ep, 2, 2, 1, 0);
    fake s0, s1;
    fake_init(&s0, "s0", ep);
    fake_init(&s1, "s1", ep);
    fake_start(&s0);
    fake_start(&s1);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    result r;
    assert_int_equal(submit(c, &r, 9, 250, 1, true), XC_OK);
    wait_tokens(&r, 2, 5);
    atomic_store(&s1.fail_next_mb, 1);
    int n0 = n_tokens(&r);
    wait_tokens(&r, n0 + 3, 5); /* resumed and streaming again */
    atomic_store(&s1.fail_next_mb, 1);
    assert_true(wait_done(&r, 5));
    assert_int_equal(r.status, XC_ERR_IO);
    assert_true(r.retryable);
    assert_non_null(strstr(r.msg, "--max-resumes"));
    assert_true(r.n < 250);
    for (int k = 0; k < r.n; k++) {
        assert_int_equal(r.toks[k], tok_of(r.id, (uint32_t)(9 + k)));
    }
    xc_coord_stats st = stats_of(c);
    assert_true(st.resumes == 1 && st.resume_failures == 1);
    xc_coord_destroy(c);
    fake_stop(&s0);
    fake_stop(&s1);
}

/* Incarnations (issue 12.2): a stage worker that dies and comes back at once under the same id
 * and endpoint (new incarnation) is noticed from its Register at once, far below the dead timeout
 * (5 s): the replica is re-formed and the request resumes with the undisturbed tokens. Before,
 * the coordinator only re-sent the Assign: the micro-batches inside the dead process were lost
 * and the request hung. */
static void test_coord_restart_under_same_id_resumes(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start_conf(ep, sizeof ep, 2, 2, 3, 0);
    fake s0, s1;
    fake_init(&s0, "s0", ep);
    fake_init(&s1, "s1", ep);
    fake_start(&s0);
    fake_start(&s1);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    result r[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(submit(c, &r[i], 7 + i, 200, 1, true), XC_OK);
        wait_tokens(&r[i], 2, 5);
    }
    uint64_t t0 = xc_now_ns();
    fake_restart(&s1);
    for (int i = 0; i < 2; i++) {
        assert_true(wait_done(&r[i], 10));
        assert_int_equal(r[i].status, XC_OK);
        check_tokens(&r[i], 7 + i, 200);
    }
    assert_true((double)(xc_now_ns() - t0) * 1e-9 < 4.0); /* well below the dead timeout */
    xc_coord_stats st = stats_of(c);
    assert_true(st.worker_restarts == 1);
    assert_true(st.resumes >= 1);
    /* the same for stage 0, twice in a row */
    for (int k = 0; k < 2; k++) {
        result q;
        assert_int_equal(submit(c, &q, 5, 150, 1, true), XC_OK);
        wait_tokens(&q, 2, 5);
        fake_restart(&s0);
        assert_true(wait_done(&q, 10));
        assert_int_equal(q.status, XC_OK);
        check_tokens(&q, 5, 150);
    }
    assert_true(stats_of(c).worker_restarts == 3);
    xc_coord_destroy(c);
    fake_stop(&s0);
    fake_stop(&s1);
}

/* Step deadlines (issue 12.3): a micro-batch that never comes back (a stage swallows it: a hang
 * that heartbeats do not show) fails its replica after --step-timeout (0.3 s here); the replica
 * is re-formed, the request resumes and ends with the undisturbed tokens; the event is counted.
 * Before, nothing timed a micro-batch out and the request hung for good. */
static void test_coord_step_deadline_fails_and_resumes(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start_conf(ep, sizeof ep, 2, 2, 3, 0.3);
    fake s0, s1;
    fake_init(&s0, "s0", ep);
    fake_init(&s1, "s1", ep);
    fake_start(&s0);
    fake_start(&s1);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    result r;
    assert_int_equal(submit(c, &r, 6, 100, 1, true), XC_OK);
    wait_tokens(&r, 2, 5);
    atomic_store(&s1.swallow_next, 1);
    assert_true(wait_done(&r, 10));
    assert_int_equal(r.status, XC_OK);
    check_tokens(&r, 6, 100);
    xc_coord_stats st = stats_of(c);
    assert_true(st.step_timeouts >= 1);
    assert_true(st.resumes >= 1);
    assert_true(xc_coord_ready(c));
    xc_coord_destroy(c);
    fake_stop(&s0);
    fake_stop(&s1);
}

typedef struct flood {
    const char *coord_ep;
    int n;
} flood;

/* Forged heartbeats: n unknown worker ids, each naming an endpoint that never answers (a
 * blackholed address: TCP connects there hang). */
static void *flood_main(void *arg) {
    flood *fl = arg;
    xc_transport *tx = NULL;
    if (xc_transport_open(fl->coord_ep, XC_TRANSPORT_SEND, NULL, &tx) != XC_OK) {
        return NULL;
    }
    for (int i = 0; i < fl->n; i++) {
        char id[32], ep[64];
        snprintf(id, sizeof id, "forged-%d", i);
        snprintf(ep, sizeof ep, "tcp://10.255.%d.%d:5600", i / 250, 1 + i % 250);
        xc_wire_control h = {.kind = XC_WIRE_CTL_HEARTBEAT,
                             .u.heartbeat = {.worker_id = id, .endpoint = ep, .incarnation = 1}};
        xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL, .u.control = h};
        (void)xc_transport_send_wire(tx, &m, NULL, 0, 1000);
    }
    xc_transport_close(tx);
    return NULL;
}

/* Heartbeats cannot stall the coordinator (issue 12.6): 300 forged heartbeats of unknown ids
 * naming unreachable endpoints while a 100-token request runs: the request takes well under a
 * second more than alone (before: each forged one cost the coordinator thread up to 0.4 s of
 * dialing, 100 of them turned a 0.27 s stream into 10 s), and the ones not dialed are counted. */
static void test_coord_forged_heartbeats_do_not_stall(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
    fake s0;
    fake_init(&s0, "s0", ep);
    fake_start(&s0);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    result r;
    uint64_t t0 = xc_now_ns();
    assert_int_equal(submit(c, &r, 5, 100, 1, true), XC_OK);
    assert_true(wait_done(&r, 10));
    double alone = (double)(xc_now_ns() - t0) * 1e-9;
    flood fl = {.coord_ep = ep, .n = 300};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, flood_main, &fl), 0);
    result q;
    t0 = xc_now_ns();
    assert_int_equal(submit(c, &q, 5, 100, 2, true), XC_OK);
    assert_true(wait_done(&q, 10));
    double flooded = (double)(xc_now_ns() - t0) * 1e-9;
    pthread_join(th, NULL);
    assert_int_equal(q.status, XC_OK);
    check_tokens(&q, 5, 100);
    print_message("100 tokens: %.3f s alone, %.3f s during 300 forged heartbeats\n", alone,
                  flooded);
    assert_true(flooded < alone + 1.0);
    usleep(300000);
    assert_true(stats_of(c).unknown_dropped > 0);
    xc_coord_destroy(c);
    fake_stop(&s0);
}

/* KV pools on one host (xcpipe serve's local workers): each worker advertises the whole host
 * (1 GiB here), so per worker the pool may take what its own stage's weights leave; on one host
 * all stages' pools together get 80 % of it less all the weights. 4 layers of 100 MB in 2
 * stages, K and V of 1024 bytes per token and layer at the fakes' 4-byte elements (2x the bf16
 * figure), 16-token blocks: per worker (2^30 - 200e6) / (2 x 2048 x 16) = 13,332 blocks; one
 * host (0.8 x 2^30 - 400e6) / (4 x 2048 x 16) = 3,501 blocks. */
static void kv_pool_blocks(bool one_host, int want) {
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://tc-coord-%d", ++g_serial);
    xc_place_model cost = {.attn_time = 1,
                           .ffn_time = 1,
                           .layer_time = 2,
                           .attn_bytes = 50e6,
                           .ffn_bytes = 50e6,
                           .layer_bytes = 100e6,
                           .kv_bytes_layer = 1024,
                           .kv_budget_tokens = 64};
    xc_coord_conf cc = {.model_dir = g_dir,
                        .endpoint = ep,
                        .stages = 2,
                        .replicas = 1,
                        .workers = 2,
                        .no_vision = true,
                        .dead_s = 5,
                        .max_rows = 2048,
                        .chunk = 2048,
                        .block_size = 16,
                        .kv_blocks = 1 << 20,
                        .send_timeout_ms = 1000,
                        .one_host = one_host,
                        .cost = &cost};
    xc_coord *c = NULL;
    assert_int_equal(xc_coord_create(&cc, &c), XC_OK);
    fake s0, s1;
    fake_init(&s0, "s0", ep);
    fake_init(&s1, "s1", ep);
    fake_start(&s0);
    fake_start(&s1);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    xc_coord_stats st = stats_of(c);
    assert_int_equal(st.kv_blocks_total, want);
    xc_coord_destroy(c);
    fake_stop(&s0);
    fake_stop(&s1);
}

static void test_coord_kv_pool_per_worker_and_one_host(void **state) {
    (void)state;
    assert_int_equal((int)(((double)(1ull << 30) - 200e6) / (2 * 2048 * 16)), 13332);
    assert_int_equal((int)((0.8 * (double)(1ull << 30) - 400e6) / (4 * 2048 * 16)), 3501);
    kv_pool_blocks(false, 13332);
    kv_pool_blocks(true, 3501);
}

/* The step deadline rule against hand-computed values. */
static void test_coord_step_deadline_rule(void **state) {
    (void)state;
    assert_true(xc_coord_step_deadline(2.5, 0.01, 4, 100, 0) == 2.5);   /* fixed */
    assert_true(xc_coord_step_deadline(2.5, 0, 0, 128, 16.5e9) == 2.5); /* fixed, unmeasured */
    assert_true(xc_coord_step_deadline(0, 0, 0, 7, 0) == 60);           /* nothing measured yet */
    assert_true(xc_coord_step_deadline(0, 0, 0, 7, 5e6) == 60);         /* a tiny model: 60 s */
    /* the real 7B (16.5 GB of weights), a 128-row chunk before any measurement: 2,112 s */
    assert_true(fabs(xc_coord_step_deadline(0, 0, 0, 128, 16.5e9) - 2112) < 1e-6);
    assert_true(fabs(xc_coord_step_deadline(0, 0, 0, 1, 16.5e9) - 60) < 1e-6); /* one row */
    assert_true(xc_coord_step_deadline(0, 0.05, 4, 2, 16.5e9) == 10); /* 20 x 0.05 = 1 s: floor */
    assert_true(xc_coord_step_deadline(0, 0.8, 4, 4, 16.5e9) == 16);  /* 20 x 0.8 */
    assert_true(xc_coord_step_deadline(0, 0.8, 4, 400, 0) == 1600);   /* 100x the mean rows */
    assert_true(xc_coord_step_deadline(0, 0.8, 4, 1, 0) == 16);       /* fewer rows: no discount */
}

/* A worker whose assignment fails to load loses the role, which goes to a spare, and is not
 * assigned again at once although it keeps registering (review #7). Before, every Register got
 * the same Assign again and the spare never got the role. */
static void test_coord_failed_assignment_frees_the_role(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
    fake bad, spare;
    fake_init(&bad, "wa", ep);
    bad.fail_assign = true;
    fake_init(&spare, "wb", ep);
    fake_start(&bad);
    uint64_t end = xc_now_ns() + 5000000000ull;
    while (atomic_load(&bad.n_assign) < 1 && xc_now_ns() < end) {
        usleep(1000);
    }
    assert_int_equal(atomic_load(&bad.n_assign), 1);
    fake_start(&spare);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    assert_int_equal(atomic_load(&spare.n_assign), 1);
    result r;
    assert_int_equal(submit(c, &r, 6, 3, 1, true), XC_OK);
    assert_true(wait_done(&r, 5));
    assert_int_equal(r.status, XC_OK);
    check_tokens(&r, 6, 3);
    usleep(600000); /* three more Registers from the failed worker */
    assert_int_equal(atomic_load(&bad.n_assign), 1);
    xc_coord_destroy(c);
    fake_stop(&bad);
    fake_stop(&spare);
}

/* Submissions racing xc_coord_stop: every accepted request gets exactly one DONE event by the
 * time destroy returns (review #9). Before, a request queued after the coordinator's last drain
 * was freed by destroy without one, and its client waited forever. */
typedef struct racer {
    xc_coord *c;
    atomic_int accepted;
    atomic_int done;
    atomic_int stop;
} racer;

static void on_race_event(void *user, const xc_coord_event *ev) {
    racer *r = user;
    if (ev->kind == XC_COORD_DONE) {
        atomic_fetch_add(&r->done, 1);
    }
}

static int32_t g_race_prompt[3000];

static void *race_main(void *arg) {
    racer *r = arg;
    xc_coord_request q = {.ids = g_race_prompt,
                          .n = 3000,
                          .sampling = {.greedy = true, .top_p = 1.0f, .repetition_penalty = 1.0f},
                          .max_new_tokens = 1};
    while (!atomic_load(&r->stop)) {
        xc_status st = xc_coord_submit(r->c, &q, on_race_event, r, NULL);
        if (st == XC_OK) {
            atomic_fetch_add(&r->accepted, 1);
        } else if (st == XC_ERR_UNSUPPORTED) {
            break; /* shutting down */
        }
    }
    return NULL;
}

static void test_coord_stop_race_ends_every_request(void **state) {
    (void)state;
    for (int i = 0; i < 3000; i++) {
        g_race_prompt[i] = 1 + i % 90;
    }
    for (int round = 0; round < 20; round++) {
        char ep[64];
        xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
        racer r = {.c = c};
        pthread_t th[3];
        for (int k = 0; k < 3; k++) {
            assert_int_equal(pthread_create(&th[k], NULL, race_main, &r), 0);
        }
        usleep(5000);
        xc_coord_stop(c, 0, false);
        atomic_store(&r.stop, 1);
        for (int k = 0; k < 3; k++) {
            pthread_join(th[k], NULL);
        }
        xc_coord_destroy(c);
        if (atomic_load(&r.done) != atomic_load(&r.accepted)) {
            fail_msg("round %d: %d requests accepted, %d DONE events", round,
                     atomic_load(&r.accepted), atomic_load(&r.done));
        }
    }
}

/* The line protocol answers every request line (review #14): when its per-request record cannot
 * be allocated the line gets "error XC_ERR_NOMEM" and counts as an error; before, it got no line
 * at all and a driver waiting for one answer per request waited forever. The lines run on a
 * thread of their own (the allocation fault only fires off the main thread). */
typedef struct lines_run {
    xc_coord *c;
    const char *in;
    char *out;
    size_t out_len;
    int errors;
} lines_run;

static void *lines_main(void *arg) {
    lines_run *l = arg;
    FILE *in = fmemopen((void *)l->in, strlen(l->in), "r");
    FILE *out = open_memstream(&l->out, &l->out_len);
    l->errors = xc_coord_lines_run(l->c, in, out);
    fclose(in);
    fclose(out);
    return NULL;
}

static void test_coord_lines_answer_every_request(void **state) {
    (void)state;
    char ep[64];
    xc_coord *c = coord_start(ep, sizeof ep, 1, 1);
    fake w;
    fake_init(&w, "w0", ep);
    fake_start(&w);
    assert_int_equal(xc_coord_wait_ready(c, 5), XC_OK);
    /* the line record: char[64] name, int32 pointer, two ints, a bool, a context pointer */
    lines_run l = {.c = c, .in = "a ids=1,2,3 max=2 greedy=1\nb ids=4,5 max=2 greedy=1\n"};
    arm_fault(64 + sizeof(void *) + 2 * sizeof(int) + sizeof(void *) + sizeof(void *));
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, lines_main, &l), 0);
    pthread_join(th, NULL);
    arm_fault(0);
    assert_non_null(l.out);
    if (!strstr(l.out, "a error XC_ERR_NOMEM") || !strstr(l.out, "b ok ")) {
        fail_msg("line protocol output: '%s'", l.out);
    }
    assert_int_equal(l.errors, 1);
    free(l.out); /* open_memstream's buffer comes from libc */
    xc_coord_destroy(c);
    fake_stop(&w);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_coord_sampling_bounds_match_the_sampler, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_sequence_failure_fails_one_request, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_cuda_kv_sized_by_device_memory, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_unbuilt_batch_is_rolled_back, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_failed_replica_releases_sequences, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_failed_replica_resumes_requests, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_resumes_are_bounded, mark_live, check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_forked_siblings_resume, mark_live, check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_restart_under_same_id_resumes, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_step_deadline_rule, mark_live, check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_kv_pool_per_worker_and_one_host, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_step_deadline_fails_and_resumes, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_forged_heartbeats_do_not_stall, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_failed_assignment_frees_the_role, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_stop_race_ends_every_request, mark_live,
                                        check_leaks),
        cmocka_unit_test_setup_teardown(test_coord_lines_answer_every_request, mark_live,
                                        check_leaks),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
