/* MPI transport tests, run by ctest under `mpirun -np 2`: multi-frame zero-copy messages from
 * rank 1 to rank 0, wire messages both ways with a garbage frame dropped, timeouts and bad
 * endpoints, wake-ups. Both ranks run every test; MPI_Barrier separates them. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <mpi.h>

#include "xc_test.h"
#include "xc_time.h"
#include "xc_transport.h"

static int g_rank;
static int g_freed;

static void count_free(void *data, void *hint) {
    (void)data;
    (void)hint;
    g_freed++; /* MPI frames are released on the sending thread, during progress */
}

static uint8_t g_big[10][1 << 20];

static void fill(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

static void test_transport_mpi_multiframe(void **state) {
    (void)state;
    xc_transport *t = NULL;
    for (int i = 0; i < 10; i++) {
        fill(g_big[i], sizeof g_big[i], (uint32_t)i + 1);
    }
    if (g_rank == 0) {
        assert_int_equal(xc_transport_open("mpi://*", XC_TRANSPORT_RECV, NULL, &t), XC_OK);
        assert_string_equal(xc_transport_endpoint(t), "mpi://0/0");
        for (int i = 0; i < 10; i++) {
            xc_msg m;
            assert_int_equal(xc_transport_recv(t, 10000, &m), XC_OK);
            assert_int_equal(m.n, 3);
            assert_int_equal(m.frames[0].len, sizeof(int));
            assert_int_equal(*(int *)m.frames[0].data, i);
            assert_int_equal(m.frames[1].len, sizeof g_big[i]);
            assert_memory_equal(m.frames[1].data, g_big[i], sizeof g_big[i]);
            assert_int_equal(m.frames[2].len, 0);
            xc_msg_fini(&m);
        }
    } else {
        assert_int_equal(xc_transport_open("mpi://0", XC_TRANSPORT_SEND, NULL, &t), XC_OK);
        g_freed = 0;
        for (int i = 0; i < 10; i++) {
            xc_frame f[3] = {{.data = &i, .len = sizeof i},
                             {.data = g_big[i], .len = sizeof g_big[i], .free_fn = count_free},
                             {.data = NULL, .len = 0}};
            assert_int_equal(xc_transport_send(t, f, 3, 10000), XC_OK);
        }
    }
    xc_transport_close(t); /* the sender waits for its sends to complete (linger) */
    if (g_rank == 1) {
        assert_int_equal(g_freed, 10);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* Rank 0 sends garbage then a forward message on channel 1; rank 1 drops the garbage, checks
 * the forward and answers with a result on channel 2. */
static void test_transport_mpi_wire(void **state) {
    (void)state;
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_transport *rx = NULL, *tx = NULL;
    static const uint32_t blocks[] = {4};
    float hidden[3 * 8];
    for (int i = 0; i < 24; i++) {
        hidden[i] = (float)i - 5.0f;
    }
    if (g_rank == 0) {
        assert_int_equal(xc_transport_open("mpi://1/1", XC_TRANSPORT_SEND, NULL, &tx), XC_OK);
        assert_int_equal(xc_transport_open("mpi://*/2", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
        char junk[] = "\xff\xff\xff\xff garbage";
        xc_frame g = {.data = junk, .len = sizeof junk};
        assert_int_equal(xc_transport_send(tx, &g, 1, 10000), XC_OK);
        xc_wire_seq seq = {
            .id = 42, .first_pos = 5, .n_tokens = 3, .n_blocks = 1, .block_table = blocks};
        xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD,
                         .u.forward = {.microbatch_id = 9,
                                       .kv_block_size = 16,
                                       .n_seqs = 1,
                                       .seqs = &seq,
                                       .payload = {XC_DTYPE_F32, 3, 8}}};
        xc_frame t = {.data = hidden, .len = sizeof hidden};
        assert_int_equal(xc_transport_send_wire(tx, &m, &t, 1, 10000), XC_OK);
        xc_msg raw;
        xc_wire_msg got;
        assert_int_equal(xc_transport_recv_wire(rx, 10000, a, &raw, &got), XC_OK);
        assert_int_equal(got.kind, XC_WIRE_KIND_RESULT);
        assert_int_equal(got.u.result.microbatch_id, 9);
        assert_int_equal(got.u.result.n, 1);
        assert_int_equal(got.u.result.seq_ids[0], 42);
        assert_int_equal(got.u.result.tokens[0], 1234);
        xc_msg_fini(&raw);
    } else {
        assert_int_equal(xc_transport_open("mpi://*/1", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
        assert_int_equal(xc_transport_open("mpi://0/2", XC_TRANSPORT_SEND, NULL, &tx), XC_OK);
        xc_msg raw;
        xc_wire_msg got;
        assert_int_equal(xc_transport_recv_wire(rx, 10000, a, &raw, &got), XC_ERR_PROTO);
        assert_non_null(strstr(xc_err_last(), "garbage or truncated"));
        assert_int_equal(xc_transport_recv_wire(rx, 10000, a, &raw, &got), XC_OK);
        assert_int_equal(got.kind, XC_WIRE_KIND_FORWARD);
        assert_int_equal(got.u.forward.seqs[0].id, 42);
        assert_int_equal(got.u.forward.seqs[0].first_pos, 5);
        assert_int_equal(raw.frames[1].len, sizeof hidden);
        assert_memory_equal(raw.frames[1].data, hidden, sizeof hidden);
        xc_msg_fini(&raw);
        const uint64_t ids[] = {42};
        const uint32_t toks[] = {1234};
        xc_wire_msg r = {.kind = XC_WIRE_KIND_RESULT,
                         .u.result = {.microbatch_id = 9, .n = 1, .seq_ids = ids, .tokens = toks}};
        assert_int_equal(xc_transport_send_wire(tx, &r, NULL, 0, 10000), XC_OK);
    }
    xc_transport_close(tx);
    xc_transport_close(rx);
    xc_arena_destroy(a);
    MPI_Barrier(MPI_COMM_WORLD);
}

static void test_transport_mpi_timeout_and_bad_endpoints(void **state) {
    (void)state;
    xc_transport *t = NULL;
    assert_int_equal(xc_transport_open("mpi://*/3", XC_TRANSPORT_RECV, NULL, &t), XC_OK);
    xc_msg m;
    uint64_t t0 = xc_now_ns();
    assert_int_equal(xc_transport_recv(t, 80, &m), XC_ERR_TIMEOUT);
    double ms = (double)(xc_now_ns() - t0) * 1e-6;
    assert_true(ms >= 60 && ms < 2000);
    xc_transport_close(t);
    assert_int_equal(xc_transport_open("mpi://2", XC_TRANSPORT_SEND, NULL, &t), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "RANK in [0, 2)"));
    assert_int_equal(xc_transport_open("mpi://0/x", XC_TRANSPORT_SEND, NULL, &t), XC_ERR_ARG);
    const char *other = g_rank == 0 ? "mpi://1" : "mpi://0";
    assert_int_equal(xc_transport_open(other, XC_TRANSPORT_RECV, NULL, &t), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "a receiver binds its own rank"));
    MPI_Barrier(MPI_COMM_WORLD);
}

/* xc_transport_wake (the coordinator's receive is opened wakeable): a wake-up from another thread
 * ends a long receive at once, one sent before a receive is kept for it and then spent, a message
 * still arrives whole after them, and a receiver not opened wakeable ignores wake-ups. */
static void *waker(void *arg) {
    usleep(50000);
    xc_transport_wake(arg);
    return NULL;
}

static void test_transport_mpi_wake(void **state) {
    (void)state;
    xc_msg m;
    if (g_rank == 0) {
        xc_transport_conf c = XC_TRANSPORT_CONF_INIT;
        c.wakeable = true;
        xc_transport *rx = NULL;
        assert_int_equal(xc_transport_open("mpi://*/5", XC_TRANSPORT_RECV, &c, &rx), XC_OK);
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, waker, rx), 0);
        uint64_t t0 = xc_now_ns();
        assert_int_equal(xc_transport_recv(rx, 20000, &m), XC_ERR_TIMEOUT);
        double took = (double)(xc_now_ns() - t0) * 1e-6;
        pthread_join(th, NULL);
        if (took < 40 || took > 10000) { /* woken after ~50 ms, long before the 20 s timeout */
            fail_msg("woken after %.1f ms", took);
        }
        xc_transport_wake(rx); /* kept for the next receive */
        t0 = xc_now_ns();
        assert_int_equal(xc_transport_recv(rx, 20000, &m), XC_ERR_TIMEOUT);
        assert_true(xc_now_ns() - t0 < 10000000000ull);
        t0 = xc_now_ns(); /* spent: the next receive waits its timeout */
        assert_int_equal(xc_transport_recv(rx, 80, &m), XC_ERR_TIMEOUT);
        assert_true((double)(xc_now_ns() - t0) * 1e-6 >= 60);
        MPI_Barrier(MPI_COMM_WORLD); /* rank 1 sends now */
        assert_int_equal(xc_transport_recv(rx, 20000, &m), XC_OK);
        assert_int_equal(m.n, 1);
        assert_int_equal(m.frames[0].len, 3);
        assert_memory_equal(m.frames[0].data, "abc", 3);
        xc_msg_fini(&m);
        xc_transport_close(rx);
        assert_int_equal(xc_transport_open("mpi://*/6", XC_TRANSPORT_RECV, NULL, &rx), XC_OK);
        xc_transport_wake(rx); /* not wakeable: ignored */
        t0 = xc_now_ns();
        assert_int_equal(xc_transport_recv(rx, 80, &m), XC_ERR_TIMEOUT);
        assert_true((double)(xc_now_ns() - t0) * 1e-6 >= 60);
        xc_transport_close(rx);
    } else {
        xc_transport *tx = NULL;
        assert_int_equal(xc_transport_open("mpi://0/5", XC_TRANSPORT_SEND, NULL, &tx), XC_OK);
        MPI_Barrier(MPI_COMM_WORLD);
        static char abc[3] = {'a', 'b', 'c'};
        xc_frame f = {.data = abc, .len = 3};
        assert_int_equal(xc_transport_send(tx, &f, 1, 20000), XC_OK);
        xc_transport_close(tx);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

int main(int argc, char **argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        fprintf(stderr, "test_transport_mpi: run under mpirun -np 2 (got %d ranks)\n", size);
        MPI_Finalize();
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_mpi_multiframe),
        cmocka_unit_test(test_transport_mpi_wire),
        cmocka_unit_test(test_transport_mpi_timeout_and_bad_endpoints),
        cmocka_unit_test(test_transport_mpi_wake),
    };
    int rc = cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
    MPI_Finalize();
    return rc;
}
