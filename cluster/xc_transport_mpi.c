/* MPI transport (built when MPI is found): endpoints "mpi://RANK[/CHANNEL]" in MPI_COMM_WORLD.
 * A message is an envelope (frame count and sizes) followed by one MPI message per frame, all
 * MPI_Isend from the caller's buffers (zero copy); the receiver probes for an envelope from any
 * rank, then receives that rank's frames in order (MPI's non-overtaking rule keeps them matched).
 *
 * Thread level: MPI_THREAD_SERIALIZED, deliberately. Transports may be used from different
 * threads (a receive thread and a compute thread that sends), so every MPI call here holds one
 * process-wide mutex; waits poll MPI_Iprobe/MPI_Testall and sleep outside that mutex, so no
 * thread blocks another inside MPI. MPI_THREAD_MULTIPLE would add locking inside Open MPI on
 * every call and buy nothing. If the application initialised MPI itself, it must provide at
 * least SERIALIZED and not call MPI concurrently with these transports. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "xc_cluster_impl.h"
#include "xc_log.h"
#include "xc_mem.h"

#define MPI_TAG_BASE    0x5c00 /* tags: base + 2 * channel (envelope), + 1 (frames) */
#define MPI_MAX_CHANNEL 1000
#define MPI_MAGIC       0x78635f6d70693031ull /* "xc_mpi01" */
#define MPI_ENV_WORDS   (2 + XC_MSG_MAX_FRAMES)

static pthread_mutex_t g_mpi_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_rank = -1, g_size = 0;

/* ---- native errors: converted here and only here ---- */

static xc_status mpi_status(const char *ep, const char *what, int rc) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) {
        snprintf(msg, sizeof msg, "MPI error %d", rc);
    }
    XC_LOG_WARN("mpi %s: %s: %s", ep, what, msg);
    return xc_errf(XC_ERR_IO, "mpi %s: %s: %s", ep, what, msg);
}

#define XC_MPI_CHECK(call, ep, what)                                                               \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MPI_SUCCESS) {                                                                  \
            return mpi_status((ep), (what), rc_);                                                  \
        }                                                                                          \
    } while (0)

static void mpi_finalize_at_exit(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) {
        MPI_Finalize();
    }
}

/* Initialises MPI once (under g_mpi_lock), with errors returned rather than fatal. */
static xc_status mpi_init_locked(const char *ep) {
    if (g_rank >= 0) {
        return XC_OK;
    }
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) {
            return xc_errf(XC_ERR_IO, "mpi %s: MPI_Init_thread failed (%d)", ep, rc);
        }
        atexit(mpi_finalize_at_exit);
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED) {
        XC_LOG_WARN("mpi: thread level %d below SERIALIZED; use the transports from one thread",
                    provided);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    XC_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank), ep, "MPI_Comm_rank");
    XC_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_size), ep, "MPI_Comm_size");
    return XC_OK;
}

/* A posted message: its requests and the frames to release when they complete. */
typedef struct mpi_pending {
    MPI_Request reqs[1 + XC_MSG_MAX_FRAMES];
    int n_reqs;
    uint64_t env[MPI_ENV_WORDS];
    xc_frame frames[XC_MSG_MAX_FRAMES];
    size_t n_frames;
} mpi_pending;

typedef struct mpi_tx {
    int peer; /* SEND: destination rank */
    int tag;  /* envelope tag; frames use tag + 1 */
    int hwm;  /* SEND: messages in flight at most */
    int linger_ms;
    size_t max_frame;
    mpi_pending *pending; /* (hwm) SEND slots, n_reqs == 0 when free */
    bool broken;          /* RECV: a peer broke the framing; nothing more can be matched */
    bool wakeable;        /* RECV with conf.wakeable */
    atomic_bool woken;    /* xc_transport_wake: the receive's polling loop returns */
} mpi_tx;

static void nap(void) {
    struct timespec ts = {0, 20000}; /* 20 us: polling granularity of timed waits */
    nanosleep(&ts, NULL);
}

static xc_status parse_endpoint(const char *ep, bool recv, int *rank, int *chan) {
    const char *p = ep + strlen("mpi://");
    char *end = NULL;
    long r;
    if (recv && *p == '*') {
        r = g_rank;
        end = (char *)p + 1;
    } else {
        r = strtol(p, &end, 10);
        if (end == p) {
            r = -1;
        }
    }
    long c = 0;
    if (end && *end == '/') {
        char *e2 = NULL;
        c = strtol(end + 1, &e2, 10);
        end = e2 == end + 1 ? NULL : e2;
    }
    if (!end || *end || r < 0 || r >= g_size || c < 0 || c > MPI_MAX_CHANNEL) {
        return xc_errf(XC_ERR_ARG,
                       "mpi endpoint '%s' is not mpi://RANK[/CHANNEL] with RANK in [0, %d) and "
                       "CHANNEL in [0, %d]",
                       ep, g_size, MPI_MAX_CHANNEL);
    }
    if (recv && r != g_rank) {
        return xc_errf(XC_ERR_ARG, "mpi %s: a receiver binds its own rank (%d) or *", ep, g_rank);
    }
    *rank = (int)r;
    *chan = (int)c;
    return XC_OK;
}

static xc_status mpi_open(xc_transport *tx, const char *ep, const xc_transport_conf *conf) {
    pthread_mutex_lock(&g_mpi_lock);
    xc_status st = mpi_init_locked(ep);
    pthread_mutex_unlock(&g_mpi_lock);
    XC_TRY(st);
    int rank = 0, chan = 0;
    XC_TRY(parse_endpoint(ep, tx->mode == XC_TRANSPORT_RECV, &rank, &chan));
    mpi_tx *m = xc_calloc(1, sizeof *m);
    if (!m) {
        return xc_errf(XC_ERR_NOMEM, "mpi %s: no memory", ep);
    }
    m->peer = rank;
    m->tag = MPI_TAG_BASE + 2 * chan;
    m->hwm = conf->hwm;
    m->linger_ms = conf->linger_ms;
    m->max_frame = conf->max_frame_bytes;
    m->wakeable = tx->mode == XC_TRANSPORT_RECV && conf->wakeable;
    atomic_init(&m->woken, false);
    if (tx->mode == XC_TRANSPORT_SEND &&
        !(m->pending = xc_calloc((size_t)m->hwm, sizeof *m->pending))) {
        xc_free(m);
        return xc_errf(XC_ERR_NOMEM, "mpi %s: no memory", ep);
    }
    snprintf(tx->endpoint, sizeof tx->endpoint, "mpi://%d/%d", rank, chan);
    tx->ctx = m;
    return XC_OK;
}

/* Completes finished sends and releases their frames; returns the number still in flight. */
static int progress(xc_transport *tx) {
    mpi_tx *m = tx->ctx;
    int busy = 0;
    for (int i = 0; i < m->hwm; i++) {
        mpi_pending *p = &m->pending[i];
        if (p->n_reqs == 0) {
            continue;
        }
        int done = 0;
        pthread_mutex_lock(&g_mpi_lock);
        int rc = MPI_Testall(p->n_reqs, p->reqs, &done, MPI_STATUSES_IGNORE);
        pthread_mutex_unlock(&g_mpi_lock);
        if (rc != MPI_SUCCESS) {
            mpi_status(tx->endpoint, "MPI_Testall", rc); /* logged; the frames are released */
            done = 1;
        }
        if (!done) {
            busy++;
            continue;
        }
        xc_msg done_msg = {.n = p->n_frames};
        memcpy(done_msg.frames, p->frames, sizeof p->frames);
        xc_msg_fini(&done_msg);
        p->n_reqs = 0;
    }
    return busy;
}

static void mpi_close(xc_transport *tx) {
    mpi_tx *m = tx->ctx;
    if (!m) {
        return;
    }
    if (tx->mode == XC_TRANSPORT_SEND) {
        uint64_t deadline = xc_deadline_ns(m->linger_ms);
        int busy;
        while ((busy = progress(tx)) > 0 && xc_deadline_left_ms(deadline) != 0) {
            nap();
        }
        if (busy > 0) {
            /* MPI may still read those buffers: they are leaked rather than freed under it. */
            XC_LOG_WARN("mpi %s: %d messages undelivered after %d ms linger; abandoned",
                        tx->endpoint, busy, m->linger_ms);
        }
        xc_free(m->pending);
    }
    xc_free(m);
    tx->ctx = NULL;
}

static void frame_free_copy(void *data, void *hint) {
    (void)hint;
    xc_free(data);
}

static xc_status mpi_send(xc_transport *tx, xc_frame *frames, size_t n, int timeout_ms) {
    mpi_tx *m = tx->ctx;
    for (size_t i = 0; i < n; i++) {
        if (frames[i].len > (size_t)INT32_MAX) {
            return xc_errf(XC_ERR_ARG, "mpi %s: frame %zu has %zu bytes (at most 2^31-1)",
                           tx->endpoint, i, frames[i].len);
        }
    }
    /* Wait for a free slot: the hwm bounds messages in flight, like a ZeroMQ SNDHWM. */
    uint64_t deadline = xc_deadline_ns(timeout_ms);
    mpi_pending *p = NULL;
    for (;;) {
        progress(tx);
        for (int i = 0; i < m->hwm && !p; i++) {
            if (m->pending[i].n_reqs == 0) {
                p = &m->pending[i];
            }
        }
        if (p) {
            break;
        }
        if (xc_deadline_left_ms(deadline) == 0) {
            return xc_errf(XC_ERR_TIMEOUT, "mpi %s: send timed out after %d ms (%d in flight)",
                           tx->endpoint, timeout_ms, m->hwm);
        }
        nap();
    }
    memset(p, 0, sizeof *p);
    p->env[0] = MPI_MAGIC;
    p->env[1] = n;
    for (size_t i = 0; i < n; i++) {
        p->env[2 + i] = frames[i].len;
        p->frames[i] = frames[i];
        if (!frames[i].free_fn) {
            void *copy = xc_malloc(frames[i].len ? frames[i].len : 1);
            if (!copy) {
                xc_msg undo = {.n = i};
                for (size_t k = 0; k < i; k++) {
                    undo.frames[k] = frames[k].free_fn ? (xc_frame){0} : p->frames[k];
                }
                xc_msg_fini(&undo); /* only our copies */
                return xc_errf(XC_ERR_NOMEM, "mpi %s: no memory", tx->endpoint);
            }
            if (frames[i].len) {
                memcpy(copy, frames[i].data, frames[i].len);
            }
            p->frames[i] =
                (xc_frame){.data = copy, .len = frames[i].len, .free_fn = frame_free_copy};
        }
    }
    p->n_frames = n;
    pthread_mutex_lock(&g_mpi_lock);
    int rc =
        MPI_Isend(p->env, (int)(2 + n), MPI_UINT64_T, m->peer, m->tag, MPI_COMM_WORLD, &p->reqs[0]);
    int posted = rc == MPI_SUCCESS ? 1 : 0;
    for (size_t i = 0; i < n && rc == MPI_SUCCESS; i++) {
        rc = MPI_Isend(p->frames[i].data, (int)p->frames[i].len, MPI_BYTE, m->peer, m->tag + 1,
                       MPI_COMM_WORLD, &p->reqs[1 + i]);
        posted += rc == MPI_SUCCESS;
    }
    pthread_mutex_unlock(&g_mpi_lock);
    p->n_reqs = posted;
    if (rc != MPI_SUCCESS) {
        xc_status st = mpi_status(tx->endpoint, "MPI_Isend", rc);
        if (posted == 0) {
            /* Nothing left: release our copies only; the caller keeps its frames. */
            for (size_t i = 0; i < n; i++) {
                if (!frames[i].free_fn) {
                    xc_free(p->frames[i].data);
                }
            }
            p->n_reqs = 0;
        } else {
            /* Part of the message is posted and MPI may read it: the frames are consumed and
             * released once the posted sends complete, so this counts as sent (ownership moves
             * only on XC_OK: the caller must not free them) and the message is lost. */
            XC_LOG_ERROR("mpi %s: send failed after %d of %zu parts (%s); the frames are consumed "
                         "and the message is lost",
                         tx->endpoint, posted, n + 1, xc_err_last());
            return XC_OK;
        }
        return st;
    }
    return XC_OK;
}

/* The receive polls every 20 us (nap), so a flag it checks between polls is wake-up enough. */
static void mpi_wake(xc_transport *tx) {
    mpi_tx *m = tx->ctx;
    if (m->wakeable) {
        atomic_store(&m->woken, true);
    }
}

static xc_status mpi_recv(xc_transport *tx, int timeout_ms, xc_msg *out) {
    mpi_tx *m = tx->ctx;
    const char *ep = tx->endpoint;
    if (m->broken) {
        return xc_errf(XC_ERR_PROTO, "mpi %s: link closed after a framing error", ep);
    }
    uint64_t deadline = xc_deadline_ns(timeout_ms);
    MPI_Status status;
    for (;;) {
        int flag = 0;
        pthread_mutex_lock(&g_mpi_lock);
        int rc = MPI_Iprobe(MPI_ANY_SOURCE, m->tag, MPI_COMM_WORLD, &flag, &status);
        pthread_mutex_unlock(&g_mpi_lock);
        if (rc != MPI_SUCCESS) {
            return mpi_status(ep, "MPI_Iprobe", rc);
        }
        if (flag) {
            if (m->wakeable) {
                atomic_store(&m->woken, false); /* a message wins; the wake-up is spent too */
            }
            break;
        }
        if (m->wakeable && atomic_exchange(&m->woken, false)) {
            return xc_errf(XC_ERR_TIMEOUT, "mpi %s: woken", ep);
        }
        if (xc_deadline_left_ms(deadline) == 0) {
            return xc_errf(XC_ERR_TIMEOUT, "mpi %s: nothing received in %d ms", ep, timeout_ms);
        }
        nap();
    }
    int src = status.MPI_SOURCE, count = 0;
    uint64_t env[MPI_ENV_WORDS];
    xc_status st = XC_OK;
    pthread_mutex_lock(&g_mpi_lock);
    MPI_Get_count(&status, MPI_UINT64_T, &count);
    int rc = count >= 2 && count <= MPI_ENV_WORDS ? MPI_Recv(env, count, MPI_UINT64_T, src, m->tag,
                                                             MPI_COMM_WORLD, MPI_STATUS_IGNORE)
                                                  : MPI_ERR_COUNT;
    if (rc != MPI_SUCCESS || env[0] != MPI_MAGIC || env[1] < 1 || env[1] > XC_MSG_MAX_FRAMES ||
        count != (int)(2 + env[1])) {
        m->broken = true;
        st = xc_errf(XC_ERR_PROTO, "mpi %s: bad envelope from rank %d (%d words)", ep, src, count);
        goto out;
    }
    for (uint64_t i = 0; i < env[1]; i++) {
        if (env[2 + i] > m->max_frame || env[2 + i] > (uint64_t)INT32_MAX) {
            m->broken = true;
            st = xc_errf(XC_ERR_PROTO, "mpi %s: rank %d announces a %llu-byte frame (limit %zu)",
                         ep, src, (unsigned long long)env[2 + i], m->max_frame);
            goto out;
        }
        size_t len = (size_t)env[2 + i];
        void *buf = xc_malloc(len ? len : 1);
        if (!buf) {
            m->broken = true; /* the frame cannot be consumed without a buffer */
            st = xc_errf(XC_ERR_NOMEM, "mpi %s: no memory for a %zu-byte frame", ep, len);
            goto out;
        }
        out->frames[i] = (xc_frame){.data = buf, .len = len, .free_fn = frame_free_copy};
        out->n = (size_t)i + 1;
        MPI_Status fs;
        rc = MPI_Recv(buf, (int)len, MPI_BYTE, src, m->tag + 1, MPI_COMM_WORLD, &fs);
        int got = -1;
        if (rc == MPI_SUCCESS) {
            MPI_Get_count(&fs, MPI_BYTE, &got);
        }
        if (rc != MPI_SUCCESS || got != (int)len) {
            m->broken = true;
            st = xc_errf(XC_ERR_PROTO,
                         "mpi %s: frame %llu from rank %d does not match its "
                         "envelope (%zu bytes announced)",
                         ep, (unsigned long long)i, src, len);
            goto out;
        }
    }
out:
    pthread_mutex_unlock(&g_mpi_lock);
    if (st != XC_OK) {
        XC_LOG_WARN("%s", xc_err_last());
        xc_msg_fini(out);
    }
    return st;
}

const xc_transport_ops xc_transport_mpi_ops = {
    .name = "mpi",
    .open = mpi_open,
    .close = mpi_close,
    .send = mpi_send,
    .recv = mpi_recv,
    .wake = mpi_wake,
};
