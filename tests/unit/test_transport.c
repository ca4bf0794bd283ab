/* Transport tests: multi-frame messages over inproc, ZeroMQ ipc and tcp (zero-copy ownership
 * included), timeouts, a peer that dies without hanging close, CURVE with generated keys (and a
 * wrong key that cannot deliver), and bad headers that are dropped while the link stays usable. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "xc_test.h"
#include "xc_time.h"
#include "xc_transport.h"

/* ---- helpers ---- */

/* A zero-copy frame over a static buffer: free_fn only counts (it may run on a libzmq thread,
 * where the cmocka allocator must not be used). */
static int g_freed;

static void count_free(void *data, void *hint) {
    (void)data;
    (void)hint;
    __atomic_add_fetch(&g_freed, 1, __ATOMIC_SEQ_CST);
}

static int freed(void) {
    return __atomic_load_n(&g_freed, __ATOMIC_SEQ_CST);
}

static uint8_t g_big[1 << 20];
static uint8_t g_small[100];

static void fill(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

/* Sends [header (borrowed), big (zero-copy), small (borrowed)] and checks what arrives; the big
 * frame is released exactly once, by the time the sender is closed. */
static void roundtrip_three_frames(const char *bind_ep, const xc_transport_conf *rconf,
                                   const xc_transport_conf *sconf) {
    xc_transport *rx = NULL, *tx = NULL;
    assert_int_equal(xc_transport_open(bind_ep, XC_TRANSPORT_RECV, rconf, &rx), XC_OK);
    const char *ep = xc_transport_endpoint(rx);
    assert_null(strchr(ep, '*')); /* tcp port resolved */
    assert_int_equal(xc_transport_open(ep, XC_TRANSPORT_SEND, sconf, &tx), XC_OK);
    fill(g_big, sizeof g_big, 1);
    fill(g_small, sizeof g_small, 2);
    char hdr[] = "header";
    g_freed = 0;
    for (int round = 0; round < 3; round++) {
        xc_frame frames[3] = {
            {.data = hdr, .len = sizeof hdr},
            {.data = g_big, .len = sizeof g_big, .free_fn = count_free},
            {.data = g_small, .len = sizeof g_small},
        };
        uint64_t before = xc_now_ns();
        assert_int_equal(xc_transport_send(tx, frames, 3, 5000), XC_OK);
        uint64_t after = xc_now_ns();
        hdr[0]++; /* borrowed frames were copied: changing them now is harmless */
        xc_msg m;
        assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_OK);
        if (!strcmp(xc_transport_name(rx), "inproc")) { /* when it was queued; else not known */
            assert_true(m.queued_ns >= before && m.queued_ns <= after);
        } else {
            assert_true(m.queued_ns == 0);
        }
        assert_int_equal(m.n, 3);
        assert_int_equal(m.frames[0].len, sizeof hdr);
        assert_int_equal(((char *)m.frames[0].data)[0], 'h' + round);
        assert_int_equal(m.frames[1].len, sizeof g_big);
        assert_memory_equal(m.frames[1].data, g_big, sizeof g_big);
        assert_int_equal(m.frames[2].len, sizeof g_small);
        assert_memory_equal(m.frames[2].data, g_small, sizeof g_small);
        if (!strcmp(xc_transport_name(rx), "inproc")) {
            assert_ptr_equal(m.frames[1].data, g_big); /* pointer hand-off */
        }
        xc_msg_fini(&m);
    }
    xc_transport_close(tx);
    xc_transport_close(rx);
    assert_int_equal(freed(), 3);
}

/* ---- multi-frame round trips ---- */

static void test_transport_inproc_multiframe(void **state) {
    (void)state;
    roundtrip_three_frames("inproc://t-multi", NULL, NULL);
}

static void test_transport_zmq_ipc_multiframe(void **state) {
    (void)state;
    char ep[64];
    snprintf(ep, sizeof ep, "ipc:///tmp/xc-test-%d", (int)getpid());
    roundtrip_three_frames(ep, NULL, NULL);
}

static void test_transport_zmq_tcp_multiframe(void **state) {
    (void)state;
    roundtrip_three_frames("tcp://127.0.0.1:*", NULL, NULL);
}

/* ---- timeouts ---- */

static void expect_recv_timeout(xc_transport *rx, int ms) {
    xc_msg m;
    uint64_t t0 = xc_now_ns();
    assert_int_equal(xc_transport_recv(rx, ms, &m), XC_ERR_TIMEOUT);
    double took = (double)(xc_now_ns() - t0) * 1e-6;
    if (took < ms * 0.8 || took > ms + 1000) {
        fail_msg("recv timeout of %d ms took %.1f ms", ms, took);
    }
}

static void expect_send_timeout(xc_transport *tx, int ms) {
    xc_frame f = {.data = g_big, .len = sizeof g_big, .free_fn = count_free};
    g_freed = 0;
    uint64_t t0 = xc_now_ns();
    assert_int_equal(xc_transport_send(tx, &f, 1, ms), XC_ERR_TIMEOUT);
    double took = (double)(xc_now_ns() - t0) * 1e-6;
    if (took < ms * 0.8 || took > ms + 1000) {
        fail_msg("send timeout of %d ms took %.1f ms", ms, took);
    }
    assert_int_equal(freed(), 0); /* ownership stays with the caller on failure */
}

static void test_transport_inproc_timeouts(void **state) {
    (void)state;
    xc_transport_conf c = XC_TRANSPORT_CONF_INIT;
    c.hwm = 2;
    xc_transport *rx = NULL, *tx = NULL;
    /* A sender before any receiver waits like ZMQ_IMMEDIATE, then times out. */
    assert_int_equal(xc_transport_open("inproc://t-to", XC_TRANSPORT_SEND, &c, &tx), XC_OK);
    expect_send_timeout(tx, 60);
    assert_int_equal(xc_transport_open("inproc://t-to", XC_TRANSPORT_RECV, &c, &rx), XC_OK);
    expect_recv_timeout(rx, 60);
    /* hwm 2: two messages queue, the third times out. */
    for (int i = 0; i < 2; i++) {
        xc_frame f = {.data = g_small, .len = 1, .free_fn = count_free};
        assert_int_equal(xc_transport_send(tx, &f, 1, 0), XC_OK);
    }
    expect_send_timeout(tx, 60);
    /* Closing the receiver releases what it never read. */
    g_freed = 0;
    xc_transport_close(rx);
    assert_int_equal(freed(), 2);
    xc_transport_close(tx);
    /* A second receiver on a bound name is refused. */
    assert_int_equal(xc_transport_open("inproc://t-to", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
    xc_transport *rx2 = NULL;
    assert_int_equal(xc_transport_open("inproc://t-to", XC_TRANSPORT_RECV, NULL, &rx2), XC_ERR_IO);
    assert_non_null(strstr(xc_err_last(), "already in use"));
    xc_transport_close(rx);
}

static void test_transport_zmq_timeouts(void **state) {
    (void)state;
    xc_transport *rx = NULL, *tx = NULL;
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:*", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
    expect_recv_timeout(rx, 100);
    /* Nobody listens on this ipc path: with ZMQ_IMMEDIATE the send times out instead of queueing
     * silently, and close returns at once. */
    char ep[64];
    snprintf(ep, sizeof ep, "ipc:///tmp/xc-test-nobody-%d", (int)getpid());
    assert_int_equal(xc_transport_open(ep, XC_TRANSPORT_SEND, NULL, &tx), XC_OK);
    expect_send_timeout(tx, 150);
    uint64_t t0 = xc_now_ns();
    xc_transport_close(tx);
    assert_true(xc_now_ns() - t0 < 500000000ull);
    xc_transport_close(rx);
}

/* xc_transport_wake: a wake-up from another thread ends a long receive at once; one sent before a
 * receive makes it return at once and is spent; a message still arrives whole after it. */
static void *waker(void *arg) {
    usleep(50000);
    xc_transport_wake(arg);
    return NULL;
}

static void expect_wake(const char *ep) {
    xc_transport_conf c = XC_TRANSPORT_CONF_INIT;
    c.wakeable = true;
    xc_transport *rx = NULL, *tx = NULL;
    assert_int_equal(xc_transport_open(ep, XC_TRANSPORT_RECV, &c, &rx), XC_OK);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, waker, rx), 0);
    xc_msg m;
    uint64_t t0 = xc_now_ns();
    assert_int_equal(xc_transport_recv(rx, 20000, &m), XC_ERR_TIMEOUT);
    double took = (double)(xc_now_ns() - t0) * 1e-6;
    pthread_join(th, NULL);
    if (took < 40 || took > 10000) { /* woken after ~50 ms, long before the 20 s timeout */
        fail_msg("%s: woken after %.1f ms", ep, took);
    }
    xc_transport_wake(rx); /* kept for the next receive */
    t0 = xc_now_ns();
    assert_int_equal(xc_transport_recv(rx, 20000, &m), XC_ERR_TIMEOUT);
    assert_true(xc_now_ns() - t0 < 10000000000ull);
    expect_recv_timeout(rx, 60); /* spent */
    assert_int_equal(xc_transport_open(xc_transport_endpoint(rx), XC_TRANSPORT_SEND, NULL, &tx),
                     XC_OK);
    g_freed = 0;
    xc_frame f = {.data = g_small, .len = 1, .free_fn = count_free};
    assert_int_equal(xc_transport_send(tx, &f, 1, 5000), XC_OK);
    assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_OK);
    assert_int_equal(m.n, 1);
    assert_int_equal(m.frames[0].len, 1);
    xc_msg_fini(&m);
    xc_transport_close(tx);
    xc_transport_close(rx);
    /* a receiver that is not wakeable ignores it (zmq) or is woken as well (inproc) */
    assert_int_equal(xc_transport_open(ep, XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
    xc_transport_wake(rx);
    xc_transport_close(rx);
}

static void test_transport_wake(void **state) {
    (void)state;
    expect_wake("inproc://t-wake");
    char ep[64];
    snprintf(ep, sizeof ep, "ipc:///tmp/xc-test-wake-%d", (int)getpid());
    expect_wake(ep);
}

/* Threads: a sender thread pushes numbered zero-copy frames while the main thread receives them
 * in order through a queue of 2. */
static uint32_t g_seq_vals[200];

static void *inproc_sender(void *arg) {
    xc_transport *tx = arg;
    for (uint32_t i = 0; i < 200; i++) {
        g_seq_vals[i] = i * 7u;
        xc_frame f = {.data = &g_seq_vals[i], .len = 4, .free_fn = count_free};
        if (xc_transport_send(tx, &f, 1, 5000) != XC_OK) {
            return (void *)1;
        }
    }
    return NULL;
}

static void test_transport_inproc_threads_in_order(void **state) {
    (void)state;
    xc_transport_conf c = XC_TRANSPORT_CONF_INIT;
    c.hwm = 2;
    xc_transport *rx = NULL, *tx = NULL;
    assert_int_equal(xc_transport_open("inproc://t-thr", XC_TRANSPORT_RECV, &c, &rx), XC_OK);
    assert_int_equal(xc_transport_open("inproc://t-thr", XC_TRANSPORT_SEND, &c, &tx), XC_OK);
    g_freed = 0;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, inproc_sender, tx), 0);
    for (uint32_t i = 0; i < 200; i++) {
        xc_msg m;
        assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_OK);
        assert_int_equal(m.n, 1);
        assert_int_equal(*(uint32_t *)m.frames[0].data, i * 7u);
        xc_msg_fini(&m);
    }
    void *ret = NULL;
    pthread_join(th, &ret);
    assert_null(ret);
    assert_int_equal(freed(), 200);
    xc_transport_close(tx);
    xc_transport_close(rx);
}

/* ---- a peer that goes away ---- */

/* The receiver is a child process that reads one message and dies without closing anything.
 * The sender keeps sending (some succeed into its queue, then sends time out) and close must
 * return within LINGER, releasing every zero-copy frame it accepted. */
static void test_transport_zmq_dead_peer_does_not_hang_close(void **state) {
    (void)state;
    char ep[64];
    snprintf(ep, sizeof ep, "ipc:///tmp/xc-test-dead-%d", (int)getpid());
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        xc_mem_set_hooks(NULL); /* the child never reports to cmocka */
        xc_transport *rx = NULL;
        char ok = xc_transport_open(ep, XC_TRANSPORT_RECV, NULL, &rx) == XC_OK ? 'y' : 'n';
        if (write(pipefd[1], &ok, 1) != 1) {
            _exit(3);
        }
        xc_msg m;
        _exit(xc_transport_recv(rx, 5000, &m) == XC_OK ? 0 : 4); /* dies holding everything */
    }
    close(pipefd[1]);
    char ok = 0;
    assert_int_equal(read(pipefd[0], &ok, 1), 1);
    close(pipefd[0]);
    assert_int_equal(ok, 'y');
    xc_transport_conf c = XC_TRANSPORT_CONF_INIT;
    c.linger_ms = 300;
    c.hwm = 2;
    xc_transport *tx = NULL;
    assert_int_equal(xc_transport_open(ep, XC_TRANSPORT_SEND, &c, &tx), XC_OK);
    g_freed = 0;
    xc_frame f = {.data = g_big, .len = sizeof g_big, .free_fn = count_free};
    assert_int_equal(xc_transport_send(tx, &f, 1, 5000), XC_OK);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int accepted = 1;
    for (int i = 0; i < 10; i++) {
        xc_frame g = {.data = g_big, .len = sizeof g_big, .free_fn = count_free};
        xc_status st = xc_transport_send(tx, &g, 1, 50);
        assert_true(st == XC_OK || st == XC_ERR_TIMEOUT);
        accepted += st == XC_OK;
    }
    uint64_t t0 = xc_now_ns();
    xc_transport_close(tx);
    double took = (double)(xc_now_ns() - t0) * 1e-6;
    if (took > 1300) {
        fail_msg("close took %.0f ms with a dead peer (linger 300 ms)", took);
    }
    assert_int_equal(freed(), accepted);
    unlink(ep + strlen("ipc://"));
}

/* ---- CURVE ---- */

static void test_transport_zmq_curve(void **state) {
    (void)state;
    if (!zmq_has("curve")) {
        skip();
    }
    char srv_pub[41], srv_sec[41], cli_pub[41], cli_sec[41], other_pub[41], other_sec[41];
    assert_int_equal(zmq_curve_keypair(srv_pub, srv_sec), 0);
    assert_int_equal(zmq_curve_keypair(cli_pub, cli_sec), 0);
    assert_int_equal(zmq_curve_keypair(other_pub, other_sec), 0);

    xc_transport_conf rc = XC_TRANSPORT_CONF_INIT;
    rc.curve = true;
    rc.curve_secret_key = srv_sec;
    xc_transport_conf sc = XC_TRANSPORT_CONF_INIT;
    sc.curve = true;
    sc.curve_server_key = srv_pub;
    sc.curve_public_key = cli_pub;
    sc.curve_secret_key = cli_sec;
    roundtrip_three_frames("tcp://127.0.0.1:*", &rc, &sc);

    /* A client that trusts another server key never completes the handshake: nothing is
     * delivered, and the send times out (ZMQ_IMMEDIATE). */
    xc_transport *rx = NULL, *tx = NULL;
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:*", XC_TRANSPORT_RECV, &rc, &rx), XC_OK);
    sc.curve_server_key = other_pub;
    assert_int_equal(xc_transport_open(xc_transport_endpoint(rx), XC_TRANSPORT_SEND, &sc, &tx),
                     XC_OK);
    expect_send_timeout(tx, 300);
    expect_recv_timeout(rx, 100);
    xc_transport_close(tx);
    /* A plain (non-CURVE) client is not let in either. */
    assert_int_equal(xc_transport_open(xc_transport_endpoint(rx), XC_TRANSPORT_SEND, NULL, &tx),
                     XC_OK);
    expect_send_timeout(tx, 300);
    xc_transport_close(tx);
    xc_transport_close(rx);

    /* Client authentication: a server that lists the allowed client keys (ZAP) lets the
     * listed client in and keeps a client with another keypair out. */
    char allowed[100];
    snprintf(allowed, sizeof allowed, "%s, %s", other_pub, cli_pub);
    rc.curve_client_keys = allowed;
    sc.curve_server_key = srv_pub;
    roundtrip_three_frames("tcp://127.0.0.1:*", &rc, &sc);
    snprintf(allowed, sizeof allowed, "%s", other_pub);
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:*", XC_TRANSPORT_RECV, &rc, &rx), XC_OK);
    assert_int_equal(xc_transport_open(xc_transport_endpoint(rx), XC_TRANSPORT_SEND, &sc, &tx),
                     XC_OK);
    expect_send_timeout(tx, 300);
    expect_recv_timeout(rx, 100);
    xc_transport_close(tx);
    xc_transport_close(rx);
    rc.curve_client_keys = "not-a-key";
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:*", XC_TRANSPORT_RECV, &rc, &rx),
                     XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "client key 1 from the transport config is not"));

    /* Keys from the environment: the server's secret from a file, the client's server key from
     * a variable, the client's own keys generated. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/xc-test-key-%d", (int)getpid());
    FILE *kf = fopen(path, "w");
    assert_non_null(kf);
    fprintf(kf, "%s\n", srv_sec);
    fclose(kf);
    setenv("XC_CURVE", "1", 1);
    setenv("XC_CURVE_SECRET_KEY_FILE", path, 1);
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:*", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
    unsetenv("XC_CURVE_SECRET_KEY_FILE");
    setenv("XC_CURVE_SERVER_KEY", srv_pub, 1);
    assert_int_equal(xc_transport_open(xc_transport_endpoint(rx), XC_TRANSPORT_SEND, NULL, &tx),
                     XC_OK);
    char hello[] = "hello";
    xc_frame f = {.data = hello, .len = 5};
    assert_int_equal(xc_transport_send(tx, &f, 1, 5000), XC_OK);
    xc_msg m;
    assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_OK);
    assert_int_equal(m.frames[0].len, 5);
    assert_memory_equal(m.frames[0].data, "hello", 5);
    xc_msg_fini(&m);
    xc_transport_close(tx);
    xc_transport_close(rx);
    /* A malformed key and a missing server key are refused at open. */
    setenv("XC_CURVE_SERVER_KEY", "not-a-key", 1);
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:5", XC_TRANSPORT_SEND, NULL, &tx),
                     XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "XC_CURVE_SERVER_KEY is not a 40-character Z85 key"));
    unsetenv("XC_CURVE_SERVER_KEY");
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:5", XC_TRANSPORT_SEND, NULL, &tx),
                     XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "needs the server's public key"));
    unsetenv("XC_CURVE");
    unlink(path);
}

/* ---- wire messages over transports ---- */

/* A bad header (garbage, then a wrong version) is dropped with XC_ERR_PROTO, and the next valid
 * forward message with its tensor frames comes through intact. */
static void wire_rejects_then_delivers(const char *bind_ep) {
    xc_transport *rx = NULL, *tx = NULL;
    assert_int_equal(xc_transport_open(bind_ep, XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
    assert_int_equal(xc_transport_open(xc_transport_endpoint(rx), XC_TRANSPORT_SEND, NULL, &tx),
                     XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    uint8_t junk[16];
    memset(junk, 0xff, sizeof junk);
    xc_frame f = {.data = junk, .len = sizeof junk};
    assert_int_equal(xc_transport_send(tx, &f, 1, 5000), XC_OK);
    static const uint8_t v9[] = {0x08, 0x09, 0x12, 0x04, 0x22, 0x02, 0x08, 0x05};
    f = (xc_frame){.data = (void *)v9, .len = sizeof v9};
    assert_int_equal(xc_transport_send(tx, &f, 1, 5000), XC_OK);

    static const uint32_t blocks[] = {0};
    xc_wire_seq seq = {
        .id = 3, .first_pos = 0, .n_tokens = 4, .n_blocks = 1, .block_table = blocks};
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.microbatch_id = 11,
                                   .kv_block_size = 16,
                                   .n_seqs = 1,
                                   .seqs = &seq,
                                   .payload = {XC_DTYPE_F32, 4, 8}}};
    float hidden[32];
    for (int i = 0; i < 32; i++) {
        hidden[i] = (float)i * 0.5f;
    }
    xc_frame t = {.data = hidden, .len = sizeof hidden};
    /* An invalid message is refused before anything is sent. */
    m.u.forward.payload.rows = 5;
    assert_int_equal(xc_transport_send_wire(tx, &m, &t, 1, 5000), XC_ERR_ARG);
    m.u.forward.payload.rows = 4;
    assert_int_equal(xc_transport_send_wire(tx, &m, &t, 1, 5000), XC_OK);

    xc_msg raw;
    xc_wire_msg got;
    assert_int_equal(xc_transport_recv_wire(rx, 5000, a, &raw, &got), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "garbage or truncated"));
    assert_int_equal(xc_transport_recv_wire(rx, 5000, a, &raw, &got), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "protocol version 9"));
    assert_int_equal(xc_transport_recv_wire(rx, 5000, a, &raw, &got), XC_OK);
    assert_int_equal(got.kind, XC_WIRE_KIND_FORWARD);
    assert_int_equal(got.u.forward.microbatch_id, 11);
    assert_int_equal(got.u.forward.seqs[0].id, 3);
    assert_int_equal(raw.n, 2);
    assert_memory_equal(raw.frames[1].data, hidden, sizeof hidden);
    xc_msg_fini(&raw);
    xc_arena_destroy(a);
    xc_transport_close(tx);
    xc_transport_close(rx);
}

static void test_transport_wire_inproc(void **state) {
    (void)state;
    wire_rejects_then_delivers("inproc://t-wire");
}

static void test_transport_wire_zmq_tcp(void **state) {
    (void)state;
    wire_rejects_then_delivers("tcp://127.0.0.1:*");
}

/* A raw ZeroMQ peer sends a message of 6 parts: it is dropped whole, the next one arrives. */
static void test_transport_zmq_drops_too_many_frames(void **state) {
    (void)state;
    xc_transport *rx = NULL;
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:*", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
    void *ctx = zmq_ctx_new();
    void *push = zmq_socket(ctx, ZMQ_PUSH);
    int zero = 0;
    zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(push, xc_transport_endpoint(rx)), 0);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(zmq_send(push, "x", 1, i < 5 ? ZMQ_SNDMORE : 0), 1);
    }
    assert_int_equal(zmq_send(push, "ok", 2, 0), 2);
    xc_msg m;
    assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "more than 4 frames"));
    assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_OK);
    assert_int_equal(m.n, 1);
    assert_memory_equal(m.frames[0].data, "ok", 2);
    xc_msg_fini(&m);
    zmq_close(push);
    zmq_ctx_term(ctx);
    xc_transport_close(rx);
}

/* ---- a send that fails after libzmq took part of the message (fault injection) ---- */

static int g_freed_small;

static void count_free_small(void *data, void *hint) {
    (void)data;
    (void)hint;
    __atomic_add_fetch(&g_freed_small, 1, __ATOMIC_SEQ_CST);
}

/* Part 1 fails as if the context had been terminated: every frame was consumed, so the send must
 * say so with XC_OK (ownership moves only on XC_OK) and release each frame exactly once. A caller
 * that follows the contract frees its frames after a failure; before the fix this freed them a
 * second time. The link stays usable: the truncated message arrives closed by an empty part and
 * the next message arrives whole. */
static void test_transport_zmq_send_consumed_midway(void **state) {
    (void)state;
    xc_transport *rx = NULL, *tx = NULL;
    assert_int_equal(xc_transport_open("tcp://127.0.0.1:*", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
    assert_int_equal(xc_transport_open(xc_transport_endpoint(rx), XC_TRANSPORT_SEND, NULL, &tx),
                     XC_OK);
    fill(g_big, sizeof g_big, 3);
    char hdr[] = "header";
    g_freed = 0;
    g_freed_small = 0;
    xc_frame frames[3] = {
        {.data = hdr, .len = sizeof hdr, .free_fn = count_free_small},         /* copied */
        {.data = g_big, .len = sizeof g_big, .free_fn = count_free},           /* zero-copy */
        {.data = g_small, .len = sizeof g_small, .free_fn = count_free_small}, /* copied */
    };
    xc_transport_zmq_fault_at(1);
    xc_status st = xc_transport_send(tx, frames, 3, 5000);
    if (st != XC_OK) { /* the caller still owns its frames: free them as a caller would */
        for (int i = 0; i < 3; i++) {
            frames[i].free_fn(frames[i].data, NULL);
        }
    }
    assert_int_equal(st, XC_OK);
    xc_msg m;
    assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_OK);
    assert_int_equal(m.n, 2);
    assert_memory_equal(m.frames[0].data, hdr, sizeof hdr);
    assert_int_equal(m.frames[1].len, 0);
    xc_msg_fini(&m);
    /* the wire helper: its header is freed once, the tensor once, and the receiver drops the
     * truncated message as malformed */
    static const uint32_t block0 = 0;
    xc_wire_seq seq = {.id = 1, .n_tokens = 1024, .n_blocks = 1, .block_table = &block0};
    xc_wire_msg w = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.microbatch_id = 7,
                                   .kv_block_size = 4096,
                                   .n_seqs = 1,
                                   .seqs = &seq,
                                   .payload = {.dtype = XC_DTYPE_F32,
                                               .rows = (uint32_t)(sizeof g_big / 1024),
                                               .cols = 256}}};
    xc_frame t = {.data = g_big, .len = sizeof g_big, .free_fn = count_free};
    xc_transport_zmq_fault_at(1);
    st = xc_transport_send_wire(tx, &w, &t, 1, 5000);
    if (st != XC_OK) {
        t.free_fn(t.data, NULL);
    }
    assert_int_equal(st, XC_OK);
    xc_arena *arena = NULL;
    assert_int_equal(xc_arena_create(4096, &arena), XC_OK);
    xc_wire_msg got;
    assert_int_equal(xc_transport_recv_wire(rx, 5000, arena, &m, &got), XC_ERR_PROTO);
    /* the next message arrives whole */
    assert_int_equal(xc_transport_send(tx, &frames[2], 1, 5000), XC_OK);
    assert_int_equal(xc_transport_recv(rx, 5000, &m), XC_OK);
    assert_int_equal(m.n, 1);
    assert_memory_equal(m.frames[0].data, g_small, sizeof g_small);
    xc_msg_fini(&m);
    xc_arena_destroy(arena);
    xc_transport_close(tx);
    xc_transport_close(rx);
    assert_int_equal(freed(), 2);       /* the big frame, once per message */
    assert_int_equal(g_freed_small, 3); /* header and small frame once, then once */
}

static void test_transport_rejects_bad_arguments(void **state) {
    (void)state;
    xc_transport *tx = NULL;
    assert_int_equal(xc_transport_open("udp://1.2.3.4:5", XC_TRANSPORT_SEND, NULL, &tx),
                     XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "is not tcp://, ipc://, inproc:// or mpi://"));
    assert_int_equal(xc_transport_open("inproc://", XC_TRANSPORT_RECV, NULL, &tx), XC_ERR_ARG);
    assert_int_equal(xc_transport_open("tcp://999.1.1.1:5", XC_TRANSPORT_RECV, NULL, &tx),
                     XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "zmq_bind"));
    xc_transport_conf c = XC_TRANSPORT_CONF_INIT;
    c.hwm = 0;
    assert_int_equal(xc_transport_open("inproc://x", XC_TRANSPORT_SEND, &c, &tx), XC_ERR_ARG);
    assert_int_equal(xc_transport_open("inproc://x", XC_TRANSPORT_RECV, NULL, &tx), XC_OK);
    xc_frame f = {.data = g_small, .len = 1};
    assert_int_equal(xc_transport_send(tx, &f, 1, 0), XC_ERR_ARG); /* RECV side */
    xc_transport_close(tx);
    assert_int_equal(xc_transport_open("inproc://x", XC_TRANSPORT_SEND, NULL, &tx), XC_OK);
    xc_frame many[XC_MSG_MAX_FRAMES + 1] = {0};
    assert_int_equal(xc_transport_send(tx, many, XC_MSG_MAX_FRAMES + 1, 0), XC_ERR_ARG);
    assert_int_equal(xc_transport_send(tx, many, 0, 0), XC_ERR_ARG);
    xc_transport_close(tx);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_inproc_multiframe),
        cmocka_unit_test(test_transport_zmq_ipc_multiframe),
        cmocka_unit_test(test_transport_zmq_tcp_multiframe),
        cmocka_unit_test(test_transport_inproc_timeouts),
        cmocka_unit_test(test_transport_wake),
        cmocka_unit_test(test_transport_zmq_timeouts),
        cmocka_unit_test(test_transport_inproc_threads_in_order),
        cmocka_unit_test(test_transport_zmq_dead_peer_does_not_hang_close),
        cmocka_unit_test(test_transport_zmq_curve),
        cmocka_unit_test(test_transport_wire_inproc),
        cmocka_unit_test(test_transport_wire_zmq_tcp),
        cmocka_unit_test(test_transport_zmq_drops_too_many_frames),
        cmocka_unit_test(test_transport_rejects_bad_arguments),
        cmocka_unit_test(test_transport_zmq_send_consumed_midway),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
