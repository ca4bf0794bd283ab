/* The CPU backend: its ops table, a persistent thread pool, host buffers and the non-GEMM ops.
 * Every op parallelises over independent outputs only (rows, heads), so a row's result never
 * depends on the batch size, its position in the batch or the thread count. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "xc_backend.h"
#include "xc_cpu_impl.h"
#include "xc_mem.h"

/* ---- thread pool ---- */

/* Idle workers spin this many rounds on the job generation before sleeping on the condvar: a
 * decode step issues hundreds of small ops, and a futex wake per op would dominate them. */
#define XC_CPU_SPIN_ROUNDS 20000

typedef struct xc_cpu_ctx {
    int n_threads;           /* including the caller */
    pthread_t *workers;      /* (n_threads - 1) */
    int n_started;           /* workers actually running */
    pthread_mutex_t mu;      /* guards the job fields and both condvars */
    pthread_cond_t work;     /* a new job was posted, or stop */
    pthread_cond_t done;     /* the last task of the job finished */
    pthread_mutex_t call_mu; /* serialises callers from different threads */
    /* The current job, written under mu before gen is bumped. */
    xc_cpu_task_fn fn;
    void *arg;
    int n_tasks;
    atomic_uint gen;            /* job generation; workers wait for it to change */
    atomic_uint_least64_t next; /* (gen << 32) | next task index: claims carry their job */
    atomic_int n_done;          /* tasks finished in the current job */
    atomic_bool stop;
} xc_cpu_ctx;

/* Set on pool threads and on a caller while it runs tasks: a nested parallel call runs inline. */
static _Thread_local bool tl_in_pool;

static inline void xc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs tasks of generation g until none are left; wakes the caller after the last. */
static void xc_cpu_run_tasks(xc_cpu_ctx *c, unsigned g, xc_cpu_task_fn fn, void *arg, int n) {
    for (;;) {
        uint_least64_t cur = atomic_load(&c->next);
        if ((unsigned)(cur >> 32) != g || (int)(uint32_t)cur >= n) {
            return;
        }
        if (!atomic_compare_exchange_weak(&c->next, &cur, cur + 1)) {
            continue;
        }
        int t = (int)(uint32_t)cur;
        fn(arg, t, n);
        if (atomic_fetch_add(&c->n_done, 1) + 1 == n) {
            pthread_mutex_lock(&c->mu);
            pthread_cond_broadcast(&c->done);
            pthread_mutex_unlock(&c->mu);
        }
    }
}

static void *xc_cpu_worker(void *p) {
    xc_cpu_ctx *c = p;
    tl_in_pool = true;
    unsigned seen = atomic_load(&c->gen);
    for (;;) {
        int spins = 0;
        while (atomic_load(&c->gen) == seen && !atomic_load(&c->stop) &&
               spins < XC_CPU_SPIN_ROUNDS) {
            xc_cpu_relax();
            spins++;
        }
        pthread_mutex_lock(&c->mu);
        while (atomic_load(&c->gen) == seen && !atomic_load(&c->stop)) {
            pthread_cond_wait(&c->work, &c->mu);
        }
        if (atomic_load(&c->stop)) {
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        /* Snapshot the job under the mutex; claims are tagged with g so a stale snapshot can
         * never run a task of a later job. */
        seen = atomic_load(&c->gen);
        xc_cpu_task_fn fn = c->fn;
        void *arg = c->arg;
        int n = c->n_tasks;
        pthread_mutex_unlock(&c->mu);
        xc_cpu_run_tasks(c, seen, fn, arg, n);
    }
}

void xc_cpu_parallel(xc_backend *be, int n_tasks, xc_cpu_task_fn fn, void *arg) {
    xc_cpu_ctx *c = xc_backend_ctx(be);
    if (n_tasks <= 0) {
        return;
    }
    if (n_tasks == 1 || c->n_started == 0 || tl_in_pool) {
        for (int t = 0; t < n_tasks; t++) {
            fn(arg, t, n_tasks);
        }
        return;
    }
    pthread_mutex_lock(&c->call_mu);
    pthread_mutex_lock(&c->mu);
    unsigned g = atomic_load(&c->gen) + 1;
    c->fn = fn;
    c->arg = arg;
    c->n_tasks = n_tasks;
    atomic_store(&c->n_done, 0);
    atomic_store(&c->next, (uint_least64_t)g << 32);
    atomic_store(&c->gen, g);
    pthread_cond_broadcast(&c->work);
    pthread_mutex_unlock(&c->mu);

    tl_in_pool = true;
    xc_cpu_run_tasks(c, g, fn, arg, n_tasks);
    tl_in_pool = false;

    int spins = 0;
    while (atomic_load(&c->n_done) < n_tasks && spins < XC_CPU_SPIN_ROUNDS) {
        xc_cpu_relax();
        spins++;
    }
    if (atomic_load(&c->n_done) < n_tasks) {
        pthread_mutex_lock(&c->mu);
        while (atomic_load(&c->n_done) < n_tasks) {
            pthread_cond_wait(&c->done, &c->mu);
        }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&c->call_mu);
}

int xc_cpu_n_threads(const xc_backend *be) {
    const xc_cpu_ctx *c = xc_backend_ctx(be);
    return c->n_started + 1;
}

static void xc_cpu_close(xc_backend *be) {
    xc_cpu_ctx *c = xc_backend_ctx(be);
    if (!c) {
        return;
    }
    pthread_mutex_lock(&c->mu);
    atomic_store(&c->stop, true);
    pthread_cond_broadcast(&c->work);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->n_started; i++) {
        pthread_join(c->workers[i], NULL);
    }
    pthread_cond_destroy(&c->work);
    pthread_cond_destroy(&c->done);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->call_mu);
    xc_free(c->workers);
    xc_free(c);
    xc_backend_set_ctx(be, NULL);
}

static xc_status xc_cpu_open(xc_backend *be, const xc_backend_conf *conf) {
    int n = conf->n_threads;
    if (n < 0 || n > 1024) {
        return xc_errf(XC_ERR_ARG, "cpu backend: n_threads %d out of range [0, 1024]", n);
    }
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 ? (int)(online < 1024 ? online : 1024) : 1;
    }
    xc_cpu_ctx *c = xc_calloc(1, sizeof *c);
    if (!c) {
        return xc_errf(XC_ERR_NOMEM, "cpu backend: out of memory");
    }
    c->n_threads = n;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->call_mu, NULL);
    pthread_cond_init(&c->work, NULL);
    pthread_cond_init(&c->done, NULL);
    atomic_init(&c->gen, 0);
    atomic_init(&c->next, 0);
    atomic_init(&c->n_done, 0);
    atomic_init(&c->stop, false);
    xc_backend_set_ctx(be, c);
    if (n > 1) {
        c->workers = xc_calloc((size_t)n - 1, sizeof *c->workers);
        if (!c->workers) {
            xc_cpu_close(be);
            return xc_errf(XC_ERR_NOMEM, "cpu backend: out of memory");
        }
        for (int i = 0; i < n - 1; i++) {
            if (pthread_create(&c->workers[i], NULL, xc_cpu_worker, c) != 0) {
                xc_cpu_close(be);
                return xc_errf(XC_ERR_NOMEM, "cpu backend: cannot start worker thread %d", i);
            }
            c->n_started++;
        }
    }
    return XC_OK;
}

/* ---- buffers ---- */

static xc_status xc_cpu_buf_alloc(xc_backend *be, size_t size, xc_buf *out) {
    (void)be;
    void *p = xc_aligned_alloc(size);
    if (!p) {
        return xc_errf(XC_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes", size);
    }
    out->data = p;
    out->size = size;
    out->owned = true;
    return XC_OK;
}

static void xc_cpu_buf_free(xc_backend *be, xc_buf *buf) {
    (void)be;
    if (buf && buf->owned) {
        xc_aligned_free(buf->data);
    }
    if (buf) {
        buf->data = NULL;
        buf->size = 0;
        buf->owned = false;
    }
}

/* Host memory is already CPU memory: a view, never a copy (mmapped checkpoints stay mapped). */
static xc_status xc_cpu_weights(xc_backend *be, const void *host, size_t size, xc_buf *out) {
    (void)be;
    if (!host && size > 0) {
        return xc_errf(XC_ERR_ARG, "cpu backend: weights from a NULL pointer");
    }
    out->data = (void *)host;
    out->size = size;
    out->owned = false;
    return XC_OK;
}

static xc_status xc_cpu_copy(xc_backend *be, void *dst, const void *src, size_t n) {
    (void)be;
    if (n == 0) {
        return XC_OK;
    }
    if (!dst || !src) {
        return xc_errf(XC_ERR_ARG, "cpu backend: copy of %zu bytes with a NULL pointer", n);
    }
    memmove(dst, src, n);
    return XC_OK;
}

/* ---- ops table ---- */

const xc_backend_ops xc_backend_cpu_ops = {
    .name = "cpu",
    .open = xc_cpu_open,
    .close = xc_cpu_close,
    .buf_alloc = xc_cpu_buf_alloc,
    .buf_free = xc_cpu_buf_free,
    .weights = xc_cpu_weights,
    .copy_in = xc_cpu_copy,
    .copy_out = xc_cpu_copy,
    .matmul = xc_cpu_matmul,
    .sync = NULL,
};
