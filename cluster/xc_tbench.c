/* Transport benchmark: times n forward messages (header + one tensor frame, zero copy) through
 * xc_transport against the same tensor bytes through the plain library (libzmq or MPI), each
 * measured on the receiver from the warm-up message to the last one. */
#include "xc_tbench.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>
#ifdef XC_HAVE_MPI
#include <mpi.h>
#endif

#include "xc_mem.h"
#include "xc_time.h"
#include "xc_transport.h"

#define TB_HIDDEN     4096
#define TB_SEQS       16
#define TB_BLOCK      16
#define TB_TIMEOUT_MS 30000

const char *xc_tbench_kind_name(xc_tbench_kind kind) {
    static const char *names[] = {"inproc", "ipc", "tcp", "mpi"};
    return (unsigned)kind < 4 ? names[kind] : "invalid";
}

int xc_tbench_under_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMI_SIZE") != NULL;
}

/* ---- the message ---- */

/* A forward header as a decoder stage would get it: 16 sequences sharing the rows, each with a
 * block table covering its positions. */
typedef struct tb_msg {
    xc_wire_seq seqs[TB_SEQS];
    uint32_t *blocks; /* backing for every block table */
    xc_wire_msg m;
    void *tensor; /* (frame_bytes), zero-copy source, never freed by the transports */
    size_t bytes;
} tb_msg;

static void tb_msg_fini(tb_msg *t) {
    xc_free(t->blocks);
    xc_aligned_free(t->tensor);
}

static xc_status tb_msg_init(tb_msg *t, size_t bytes) {
    memset(t, 0, sizeof *t);
    uint32_t rows = (uint32_t)(bytes / (TB_HIDDEN * 4));
    if (rows < TB_SEQS || rows % TB_SEQS || (size_t)rows * TB_HIDDEN * 4 != bytes) {
        return xc_errf(XC_ERR_ARG,
                       "tbench: frame of %zu bytes is not a multiple of %d rows of "
                       "%d f32",
                       bytes, TB_SEQS, TB_HIDDEN);
    }
    uint32_t per = rows / TB_SEQS;
    size_t max_blocks = (100u * TB_SEQS + per) / TB_BLOCK + 1;
    t->blocks = xc_calloc(max_blocks * TB_SEQS, sizeof *t->blocks);
    t->tensor = xc_aligned_alloc(bytes);
    if (!t->blocks || !t->tensor) {
        tb_msg_fini(t);
        return xc_errf(XC_ERR_NOMEM, "tbench: no memory for a %zu-byte frame", bytes);
    }
    for (size_t i = 0; i < bytes / 4; i++) {
        ((float *)t->tensor)[i] = (float)(i % 977) * 0.001f; /* touch every page now */
    }
    for (uint32_t i = 0; i < TB_SEQS; i++) {
        uint32_t first = 100u * i, nb = (first + per + TB_BLOCK - 1) / TB_BLOCK;
        uint32_t *bt = t->blocks + (size_t)i * max_blocks;
        for (uint32_t k = 0; k < nb; k++) {
            bt[k] = i * 1000u + k;
        }
        t->seqs[i] = (xc_wire_seq){.id = 1000u + i,
                                   .first_pos = first,
                                   .n_tokens = per,
                                   .n_blocks = nb,
                                   .block_table = bt};
    }
    t->m = (xc_wire_msg){.kind = XC_WIRE_KIND_FORWARD,
                         .u.forward = {.kv_block_size = TB_BLOCK,
                                       .n_seqs = TB_SEQS,
                                       .seqs = t->seqs,
                                       .payload = {XC_DTYPE_F32, rows, TB_HIDDEN}}};
    t->bytes = bytes;
    return XC_OK;
}

static void no_free(void *data, void *hint) {
    (void)data;
    (void)hint; /* the benchmark's tensor outlives every send */
}

/* ---- framed (xc_transport) ---- */

static xc_status framed_send(xc_transport *tx, tb_msg *t, int n) {
    for (int i = 0; i <= n; i++) {
        t->m.u.forward.microbatch_id = (uint64_t)i;
        xc_frame f = {.data = t->tensor, .len = t->bytes, .free_fn = no_free};
        XC_TRY(xc_transport_send_wire(tx, &t->m, &f, 1, TB_TIMEOUT_MS));
    }
    return XC_OK;
}

/* Receives n + 1 messages; *secs is the time from the first (warm-up) to the last. */
static xc_status framed_recv(xc_transport *rx, size_t bytes, int n, double *secs) {
    xc_arena *a = NULL;
    XC_TRY(xc_arena_create(1 << 16, &a));
    xc_status st = XC_OK;
    uint64_t t0 = 0;
    for (int i = 0; i <= n; i++) {
        xc_msg raw;
        xc_wire_msg m;
        XC_TRY_GOTO(xc_transport_recv_wire(rx, TB_TIMEOUT_MS, a, &raw, &m), st, out);
        bool ok = m.kind == XC_WIRE_KIND_FORWARD && m.u.forward.microbatch_id == (uint64_t)i &&
                  raw.n == 2 && raw.frames[1].len == bytes;
        xc_msg_fini(&raw);
        xc_arena_reset(a);
        if (!ok) {
            st = xc_errf(XC_ERR_PROTO, "tbench: message %d is not the forward frame sent", i);
            goto out;
        }
        if (i == 0) {
            t0 = xc_now_ns();
        }
    }
    *secs = (double)(xc_now_ns() - t0) * 1e-9;
out:
    xc_arena_destroy(a);
    return st;
}

static xc_transport_conf tb_tconf(const xc_tbench_conf *c) {
    xc_transport_conf tc = XC_TRANSPORT_CONF_INIT;
    tc.hwm = c->hwm;
    tc.linger_ms = TB_TIMEOUT_MS; /* the sender's close waits until everything is delivered */
    return tc;
}

/* ---- raw libzmq ---- */

static void *raw_socket(void *ctx, int type, int hwm) {
    void *s = zmq_socket(ctx, type);
    if (s) {
        int linger = TB_TIMEOUT_MS, timeo = TB_TIMEOUT_MS;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(s, type == ZMQ_PUSH ? ZMQ_SNDHWM : ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(s, type == ZMQ_PUSH ? ZMQ_SNDTIMEO : ZMQ_RCVTIMEO, &timeo, sizeof timeo);
    }
    return s;
}

static xc_status zmq_fail(const char *what) {
    return xc_errf(XC_ERR_IO, "tbench raw zmq: %s: %s", what, zmq_strerror(zmq_errno()));
}

static xc_status raw_send(void *push, tb_msg *t, int n) {
    for (int i = 0; i <= n; i++) {
        zmq_msg_t m;
        zmq_msg_init_data(&m, t->tensor, t->bytes, no_free, NULL);
        if (zmq_msg_send(&m, push, 0) == -1) {
            zmq_msg_close(&m);
            return zmq_fail("zmq_msg_send");
        }
    }
    return XC_OK;
}

static xc_status raw_recv(void *pull, size_t bytes, int n, double *secs) {
    uint64_t t0 = 0;
    for (int i = 0; i <= n; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, pull, 0) == -1) {
            zmq_msg_close(&m);
            return zmq_fail("zmq_msg_recv");
        }
        size_t got = zmq_msg_size(&m);
        zmq_msg_close(&m);
        if (got != bytes) {
            return xc_errf(XC_ERR_PROTO, "tbench raw zmq: got %zu bytes, sent %zu", got, bytes);
        }
        if (i == 0) {
            t0 = xc_now_ns();
        }
    }
    *secs = (double)(xc_now_ns() - t0) * 1e-9;
    return XC_OK;
}

/* ---- inproc: two threads ---- */

typedef struct tb_thread {
    tb_msg *t;
    int n;
    xc_transport *tx; /* framed */
    void *ctx;        /* raw: shared libzmq context */
    const char *ep;
    int hwm;
    xc_status st;
} tb_thread;

static void *inproc_framed_sender(void *arg) {
    tb_thread *a = arg;
    a->st = framed_send(a->tx, a->t, a->n);
    return NULL;
}

static void *inproc_raw_sender(void *arg) {
    tb_thread *a = arg;
    void *push = raw_socket(a->ctx, ZMQ_PUSH, a->hwm);
    if (!push || zmq_connect(push, a->ep) == -1) {
        a->st = zmq_fail("inproc connect");
    } else {
        a->st = raw_send(push, a->t, a->n);
    }
    if (push) {
        zmq_close(push);
    }
    return NULL;
}

static xc_status inproc_framed(const xc_tbench_conf *c, tb_msg *t, double *secs) {
    xc_transport_conf tc = tb_tconf(c);
    xc_transport *rx = NULL, *tx = NULL;
    xc_status st;
    XC_TRY_GOTO(xc_transport_open("inproc://xc-tbench", XC_TRANSPORT_RECV, &tc, &rx), st, out);
    XC_TRY_GOTO(xc_transport_open("inproc://xc-tbench", XC_TRANSPORT_SEND, &tc, &tx), st, out);
    tb_thread a = {.t = t, .n = c->n_msgs, .tx = tx};
    pthread_t th;
    if (pthread_create(&th, NULL, inproc_framed_sender, &a) != 0) {
        st = xc_errf(XC_ERR_IO, "tbench: pthread_create: %s", strerror(errno));
        goto out;
    }
    st = framed_recv(rx, t->bytes, c->n_msgs, secs);
    pthread_join(th, NULL);
    st = st != XC_OK ? st : a.st;
out:
    xc_transport_close(tx);
    xc_transport_close(rx);
    return st;
}

static xc_status inproc_raw(const xc_tbench_conf *c, tb_msg *t, double *secs) {
    void *ctx = zmq_ctx_new();
    void *pull = ctx ? raw_socket(ctx, ZMQ_PULL, c->hwm) : NULL;
    xc_status st = XC_OK;
    if (!pull || zmq_bind(pull, "inproc://xc-tbench-raw") == -1) {
        st = zmq_fail("inproc bind");
        goto out;
    }
    tb_thread a = {
        .t = t, .n = c->n_msgs, .ctx = ctx, .ep = "inproc://xc-tbench-raw", .hwm = c->hwm};
    pthread_t th;
    if (pthread_create(&th, NULL, inproc_raw_sender, &a) != 0) {
        st = xc_errf(XC_ERR_IO, "tbench: pthread_create: %s", strerror(errno));
        goto out;
    }
    st = raw_recv(pull, t->bytes, c->n_msgs, secs);
    pthread_join(th, NULL);
    st = st != XC_OK ? st : a.st;
out:
    if (pull) {
        zmq_close(pull);
    }
    if (ctx) {
        zmq_ctx_term(ctx);
    }
    return st;
}

/* ---- ipc / tcp: a forked sender process ---- */

static xc_status wait_child(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return xc_errf(XC_ERR_IO, "tbench: sender process failed (status 0x%x)", status);
    }
    return XC_OK;
}

/* The child never returns: it sends, closes (waiting for delivery) and _exits. */
static _Noreturn void child_framed(const char *ep, const xc_tbench_conf *c, tb_msg *t) {
    xc_transport_conf tc = tb_tconf(c);
    xc_transport *tx = NULL;
    xc_status st = xc_transport_open(ep, XC_TRANSPORT_SEND, &tc, &tx);
    if (st == XC_OK) {
        st = framed_send(tx, t, c->n_msgs);
    }
    if (st != XC_OK) {
        fprintf(stderr, "tbench sender: %s\n", xc_err_last());
    }
    xc_transport_close(tx);
    _exit(st == XC_OK ? 0 : 1);
}

static _Noreturn void child_raw(const char *ep, const xc_tbench_conf *c, tb_msg *t) {
    void *ctx = zmq_ctx_new();
    void *push = raw_socket(ctx, ZMQ_PUSH, c->hwm);
    xc_status st = zmq_connect(push, ep) == -1 ? zmq_fail("connect") : raw_send(push, t, c->n_msgs);
    if (st != XC_OK) {
        fprintf(stderr, "tbench raw sender: %s\n", xc_err_last());
    }
    zmq_close(push);
    zmq_ctx_term(ctx);
    _exit(st == XC_OK ? 0 : 1);
}

static xc_status fork_framed(const char *bind_ep, const xc_tbench_conf *c, tb_msg *t,
                             double *secs) {
    xc_transport_conf tc = tb_tconf(c);
    xc_transport *rx = NULL;
    XC_TRY(xc_transport_open(bind_ep, XC_TRANSPORT_RECV, &tc, &rx));
    char ep[256];
    snprintf(ep, sizeof ep, "%s", xc_transport_endpoint(rx));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        child_framed(ep, c, t);
    }
    xc_status st = pid < 0 ? xc_errf(XC_ERR_IO, "tbench: fork: %s", strerror(errno))
                           : framed_recv(rx, t->bytes, c->n_msgs, secs);
    if (pid > 0) {
        xc_status cst = wait_child(pid);
        st = st != XC_OK ? st : cst;
    }
    xc_transport_close(rx);
    return st;
}

static xc_status fork_raw(const char *bind_ep, const xc_tbench_conf *c, tb_msg *t, double *secs) {
    void *ctx = zmq_ctx_new();
    void *pull = ctx ? raw_socket(ctx, ZMQ_PULL, c->hwm) : NULL;
    xc_status st = XC_OK;
    char ep[256];
    size_t n = sizeof ep;
    if (!pull || zmq_bind(pull, bind_ep) == -1 ||
        zmq_getsockopt(pull, ZMQ_LAST_ENDPOINT, ep, &n) == -1) {
        st = zmq_fail("bind");
        goto out;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        child_raw(ep, c, t);
    }
    if (pid < 0) {
        st = xc_errf(XC_ERR_IO, "tbench: fork: %s", strerror(errno));
        goto out;
    }
    st = raw_recv(pull, t->bytes, c->n_msgs, secs);
    xc_status cst = wait_child(pid);
    st = st != XC_OK ? st : cst;
out:
    if (pull) {
        zmq_close(pull);
    }
    if (ctx) {
        zmq_ctx_term(ctx);
    }
    return st;
}

/* ---- MPI: rank 1 -> rank 0 ---- */

#ifdef XC_HAVE_MPI
#define TB_MPI_TAG 0x7b00

/* Both ranks call this; rank 0 gets *secs. Framed uses channel 7 of the transport. */
static xc_status mpi_one(bool framed, const xc_tbench_conf *c, tb_msg *t, void *rbuf, int rank,
                         double *secs) {
    xc_status st = XC_OK;
    if (framed) {
        xc_transport_conf tc = tb_tconf(c);
        xc_transport *x = NULL;
        if (rank == 0) {
            XC_TRY(xc_transport_open("mpi://*/7", XC_TRANSPORT_RECV, &tc, &x));
            MPI_Barrier(MPI_COMM_WORLD);
            st = framed_recv(x, t->bytes, c->n_msgs, secs);
        } else if (rank == 1) {
            XC_TRY(xc_transport_open("mpi://0/7", XC_TRANSPORT_SEND, &tc, &x));
            MPI_Barrier(MPI_COMM_WORLD);
            st = framed_send(x, t, c->n_msgs);
        } else {
            MPI_Barrier(MPI_COMM_WORLD);
        }
        xc_transport_close(x);
    } else {
        MPI_Barrier(MPI_COMM_WORLD);
        uint64_t t0 = 0;
        for (int i = 0; i <= c->n_msgs && rank <= 1; i++) {
            int rc = rank == 0 ? MPI_Recv(rbuf, (int)t->bytes, MPI_BYTE, 1, TB_MPI_TAG,
                                          MPI_COMM_WORLD, MPI_STATUS_IGNORE)
                               : MPI_Send(t->tensor, (int)t->bytes, MPI_BYTE, 0, TB_MPI_TAG,
                                          MPI_COMM_WORLD);
            if (rc != MPI_SUCCESS) {
                return xc_errf(XC_ERR_IO, "tbench raw MPI: error %d", rc);
            }
            if (i == 0) {
                t0 = xc_now_ns();
            }
        }
        *secs = (double)(xc_now_ns() - t0) * 1e-9;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return st;
}
#endif

/* ---- driver ---- */

xc_status xc_tbench_run(xc_tbench_kind kind, const xc_tbench_conf *conf, xc_tbench_result *out) {
    if (conf->n_msgs < 1 || conf->reps < 1 || conf->hwm < 1 || conf->frame_bytes > INT32_MAX) {
        return xc_errf(XC_ERR_ARG, "tbench: n_msgs, reps and hwm must be >= 1 and the frame "
                                   "below 2 GiB");
    }
#ifndef XC_HAVE_MPI
    if (kind == XC_TBENCH_MPI) {
        return xc_errf(XC_ERR_UNSUPPORTED, "tbench: this build has no MPI");
    }
#endif
    tb_msg t;
    XC_TRY(tb_msg_init(&t, conf->frame_bytes));
    xc_status st = XC_OK;
    void *hdr = NULL;
    size_t hdr_len = 0;
    void *rbuf = NULL;
    int rank = 0;
    XC_TRY_GOTO(xc_wire_encode(&t.m, &t.bytes, 1, &hdr, &hdr_len), st, out);
    xc_free(hdr);
    char ep[64];
    if (kind == XC_TBENCH_IPC) {
        snprintf(ep, sizeof ep, "ipc:///tmp/xc-tbench-%d", (int)getpid());
    } else {
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:*");
    }
#ifdef XC_HAVE_MPI
    if (kind == XC_TBENCH_MPI) {
        /* Opening a transport initialises MPI; the raw runs then use the same world. */
        xc_transport *probe = NULL;
        XC_TRY_GOTO(xc_transport_open("mpi://*/6", XC_TRANSPORT_RECV, NULL, &probe), st, out);
        xc_transport_close(probe);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        int size = 0;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        if (size < 2) {
            st = xc_errf(XC_ERR_ARG, "tbench: the MPI run needs 2 ranks (mpirun -np 2)");
            goto out;
        }
        if (rank == 0 && !(rbuf = xc_aligned_alloc(t.bytes))) {
            st = xc_errf(XC_ERR_NOMEM, "tbench: no memory");
            goto out;
        }
        if (rbuf) {
            memset(rbuf, 0, t.bytes);
        }
    }
#endif
    double best_raw = 1e30, best_framed = 1e30;
    for (int r = 0; r < conf->reps; r++) {
        for (int k = 0; k <= 1; k++) {
            int framed = (k + r) % 2; /* alternate which goes first: the machine drifts */
            double s = 1e30;
            switch (kind) {
            case XC_TBENCH_INPROC:
                st = framed ? inproc_framed(conf, &t, &s) : inproc_raw(conf, &t, &s);
                break;
            case XC_TBENCH_IPC:
            case XC_TBENCH_TCP:
                st = framed ? fork_framed(ep, conf, &t, &s) : fork_raw(ep, conf, &t, &s);
                break;
            case XC_TBENCH_MPI:
#ifdef XC_HAVE_MPI
                st = mpi_one(framed, conf, &t, rbuf, rank, &s);
#endif
                break;
            }
            if (st != XC_OK) {
                goto out;
            }
            double *best = framed ? &best_framed : &best_raw;
            *best = s < *best ? s : *best;
        }
    }
    double total = (double)t.bytes * conf->n_msgs;
    *out = (xc_tbench_result){.raw_gbps = total / best_raw * 1e-9,
                              .framed_gbps = total / best_framed * 1e-9,
                              .raw_us = best_raw / conf->n_msgs * 1e6,
                              .framed_us = best_framed / conf->n_msgs * 1e6,
                              .header_bytes = hdr_len,
                              .valid = rank == 0};
out:
    xc_aligned_free(rbuf);
    tb_msg_fini(&t);
    return st;
}
