/* In-process transport: named bounded queues between threads of one process, for tests and
 * single-process pipelines. Frames are handed over by pointer (zero copy): a sent frame's
 * free_fn runs when the receiver calls xc_msg_fini. Borrowed frames are copied. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "xc_cluster_impl.h"
#include "xc_mem.h"

#define INPROC_NAME_MAX 128

/* A named queue. Opened by at most one receiver (bound) and any number of senders; freed when
 * the last one closes. Senders wait while it is unbound, as a ZMQ_IMMEDIATE socket would. */
typedef struct inproc_queue {
    struct inproc_queue *next;
    char name[INPROC_NAME_MAX];
    int refs;
    bool bound;
    size_t cap; /* the receiver's hwm; senders' hwm until bound */
    size_t head, count;
    xc_msg *ring; /* (cap) */
    pthread_cond_t not_empty;
    pthread_cond_t not_full; /* also signalled on bind */
    bool woken;              /* xc_transport_wake: the receive returns */
} inproc_queue;

/* One lock for the registry and every queue: inproc traffic is pointer hand-off, so the lock is
 * held for a few hundred nanoseconds at a time. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static inproc_queue *g_queues;

static void cond_init_mono(pthread_cond_t *c) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
}

/* Waits on c until signalled or deadline (UINT64_MAX = forever); returns false on timeout. */
static bool cond_wait_until(pthread_cond_t *c, uint64_t deadline) {
    if (deadline == UINT64_MAX) {
        pthread_cond_wait(c, &g_lock);
        return true;
    }
    struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                          .tv_nsec = (long)(deadline % 1000000000ull)};
    return pthread_cond_timedwait(c, &g_lock, &ts) != ETIMEDOUT;
}

static inproc_queue *find_locked(const char *name) {
    for (inproc_queue *q = g_queues; q; q = q->next) {
        if (!strcmp(q->name, name)) {
            return q;
        }
    }
    return NULL;
}

static void unlink_free_locked(inproc_queue *q) {
    for (inproc_queue **p = &g_queues; *p; p = &(*p)->next) {
        if (*p == q) {
            *p = q->next;
            break;
        }
    }
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    xc_free(q->ring);
    xc_free(q);
}

static xc_status inproc_open(xc_transport *tx, const char *ep, const xc_transport_conf *conf) {
    const char *name = ep + strlen("inproc://");
    if (!name[0] || strlen(name) >= INPROC_NAME_MAX) {
        return xc_errf(XC_ERR_ARG, "inproc endpoint '%s' needs a name of 1 to %d bytes", ep,
                       INPROC_NAME_MAX - 1);
    }
    xc_status st = XC_OK;
    pthread_mutex_lock(&g_lock);
    inproc_queue *q = find_locked(name);
    if (q && q->bound && tx->mode == XC_TRANSPORT_RECV) {
        st = xc_errf(XC_ERR_IO, "inproc %s: address already in use", ep);
        goto out;
    }
    if (!q) {
        q = xc_calloc(1, sizeof *q);
        xc_msg *ring = xc_calloc((size_t)conf->hwm, sizeof *ring);
        if (!q || !ring) {
            xc_free(q);
            xc_free(ring);
            st = xc_errf(XC_ERR_NOMEM, "inproc %s: no memory", ep);
            goto out;
        }
        snprintf(q->name, sizeof q->name, "%s", name);
        q->ring = ring;
        q->cap = (size_t)conf->hwm;
        cond_init_mono(&q->not_empty);
        cond_init_mono(&q->not_full);
        q->next = g_queues;
        g_queues = q;
    }
    if (tx->mode == XC_TRANSPORT_RECV) {
        q->bound = true;
        pthread_cond_broadcast(&q->not_full);
    }
    q->refs++;
    tx->ctx = q;
out:
    pthread_mutex_unlock(&g_lock);
    return st;
}

static void inproc_close(xc_transport *tx) {
    inproc_queue *q = tx->ctx;
    xc_msg drop[64];
    size_t n_drop = 0;
    pthread_mutex_lock(&g_lock);
    if (tx->mode == XC_TRANSPORT_RECV) {
        /* Undelivered messages die with the receiver, as with a closed ZeroMQ PULL socket. */
        q->bound = false;
        while (q->count > 0) {
            xc_msg m = q->ring[q->head];
            q->head = (q->head + 1) % q->cap;
            q->count--;
            if (n_drop < sizeof drop / sizeof drop[0]) {
                drop[n_drop++] = m;
            } else {
                xc_msg_fini(&m);
            }
        }
        pthread_cond_broadcast(&q->not_full);
    }
    if (--q->refs == 0) {
        unlink_free_locked(q);
    }
    pthread_mutex_unlock(&g_lock);
    for (size_t i = 0; i < n_drop; i++) {
        xc_msg_fini(&drop[i]); /* free functions run outside the lock */
    }
}

static xc_status inproc_send(xc_transport *tx, xc_frame *frames, size_t n, int timeout_ms) {
    inproc_queue *q = tx->ctx;
    /* Copy borrowed frames first, outside the lock. */
    xc_msg m = {.n = n};
    for (size_t i = 0; i < n; i++) {
        m.frames[i] = frames[i];
        if (!frames[i].free_fn) {
            void *copy = xc_malloc(frames[i].len ? frames[i].len : 1);
            if (!copy) {
                for (size_t k = 0; k < i; k++) {
                    if (!frames[k].free_fn) {
                        xc_free(m.frames[k].data);
                    }
                }
                return xc_errf(XC_ERR_NOMEM, "inproc %s: no memory for a %zu-byte frame",
                               tx->endpoint, frames[i].len);
            }
            if (frames[i].len) {
                memcpy(copy, frames[i].data, frames[i].len);
            }
            m.frames[i] =
                (xc_frame){.data = copy, .len = frames[i].len, .free_fn = xc_frame_free_xc};
        }
    }
    uint64_t deadline = xc_deadline_ns(timeout_ms);
    bool ok = true;
    pthread_mutex_lock(&g_lock);
    while (ok && (!q->bound || q->count == q->cap)) {
        ok = cond_wait_until(&q->not_full, deadline);
    }
    ok = q->bound && q->count < q->cap;
    if (ok) {
        m.queued_ns = xc_now_ns();
        q->ring[(q->head + q->count) % q->cap] = m;
        q->count++;
        pthread_cond_signal(&q->not_empty);
    }
    pthread_mutex_unlock(&g_lock);
    if (!ok) {
        for (size_t i = 0; i < n; i++) {
            if (!frames[i].free_fn) {
                xc_free(m.frames[i].data);
            }
        }
        return xc_errf(XC_ERR_TIMEOUT, "inproc %s: send timed out after %d ms (%s)", tx->endpoint,
                       timeout_ms, q->bound ? "queue full" : "no receiver");
    }
    return XC_OK;
}

static xc_status inproc_recv(xc_transport *tx, int timeout_ms, xc_msg *out) {
    inproc_queue *q = tx->ctx;
    uint64_t deadline = xc_deadline_ns(timeout_ms);
    bool ok = true;
    pthread_mutex_lock(&g_lock);
    while (ok && q->count == 0 && !q->woken) {
        ok = cond_wait_until(&q->not_empty, deadline);
    }
    ok = q->count > 0;
    q->woken = false;
    if (ok) {
        *out = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&g_lock);
    if (!ok) {
        return xc_errf(XC_ERR_TIMEOUT, "inproc %s: nothing received in %d ms", tx->endpoint,
                       timeout_ms);
    }
    return XC_OK;
}

static void inproc_wake(xc_transport *tx) {
    inproc_queue *q = tx->ctx;
    pthread_mutex_lock(&g_lock);
    q->woken = true;
    pthread_cond_broadcast(&q->not_empty);
    pthread_mutex_unlock(&g_lock);
}

const xc_transport_ops xc_transport_inproc_ops = {
    .name = "inproc",
    .open = inproc_open,
    .close = inproc_close,
    .send = inproc_send,
    .recv = inproc_recv,
    .wake = inproc_wake,
};
