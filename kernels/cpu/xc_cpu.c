/* The CPU backend: its ops table, a persistent thread pool, host buffers and the non-GEMM ops.
 * Every op parallelises over independent outputs only (rows, heads), so a row's result never
 * depends on the batch size, its position in the batch or the thread count. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_backend.h"
#include "xc_cpu_impl.h"
#include "xc_cpu_simd.h"
#include "xc_cpuid.h"
#include "xc_mem.h"
#include "xc_opcheck.h"

/* ---- thread pool ---- */

/* Idle workers spin this many rounds on the job generation before sleeping on the condvar: a
 * decode step issues hundreds of small ops, and a futex wake per op would dominate them. */
#define XC_CPU_SPIN_ROUNDS 20000

typedef struct xc_cpu_ctx {
    bool simd;               /* AVX2/FMA/F16C paths (see xc_cpu_simd) */
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

typedef struct xc_cpu_scratch_buf {
    void *p;
    size_t cap;
} xc_cpu_scratch_buf;

static _Thread_local xc_cpu_scratch_buf tl_scratch[XC_CPU_SCRATCH_SLOTS];

/* A thread that allocated scratch sets this key, so its buffers are freed when it exits (a thread
 * that ran a backend and ended without closing it, as a worker's serving thread may). */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_key_ok;

static void scratch_at_exit(void *unused) {
    (void)unused;
    xc_cpu_scratch_release();
}

static void scratch_key_init(void) {
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_at_exit) == 0;
}

void *xc_cpu_scratch(int slot, size_t bytes) {
    if (slot < 0 || slot >= XC_CPU_SCRATCH_SLOTS) {
        return NULL;
    }
    xc_cpu_scratch_buf *b = &tl_scratch[slot];
    if (bytes > b->cap || !b->p) {
        pthread_once(&scratch_once, scratch_key_init);
        if (!scratch_key_ok || (!pthread_getspecific(scratch_key) &&
                                pthread_setspecific(scratch_key, tl_scratch) != 0)) {
            return NULL; /* could not arrange the free at thread exit */
        }
        xc_aligned_free(b->p);
        b->p = xc_aligned_alloc(bytes ? bytes : 1);
        b->cap = b->p ? bytes : 0;
    }
    return b->p;
}

void xc_cpu_scratch_release(void) {
    for (int i = 0; i < XC_CPU_SCRATCH_SLOTS; i++) {
        xc_aligned_free(tl_scratch[i].p);
        tl_scratch[i] = (xc_cpu_scratch_buf){0};
    }
    if (scratch_key_ok) {
        pthread_setspecific(scratch_key, NULL);
    }
}

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
            xc_cpu_scratch_release();
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

bool xc_cpu_simd(const xc_backend *be) {
    const xc_cpu_ctx *c = xc_backend_ctx(be);
    return c->simd;
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
    xc_cpu_scratch_release();
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
    const char *no_simd = getenv("XC_CPU_NO_SIMD");
    c->simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              xc_cpu_has_f16c() && !(no_simd && *no_simd && strcmp(no_simd, "0"));
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

/* ---- row-parallel dispatch ---- */

/* Rows below this much work (elements touched) run on the calling thread: waking the pool costs
 * more than it saves. */
#define XC_CPU_PAR_MIN_WORK 32768

typedef void (*xc_cpu_rows_fn)(const void *args, int r0, int r1);

typedef struct xc_cpu_rows_job {
    xc_cpu_rows_fn fn;
    const void *args;
    int m, chunk;
} xc_cpu_rows_job;

static void xc_cpu_rows_task(void *p, int t, int n_tasks) {
    (void)n_tasks;
    const xc_cpu_rows_job *j = p;
    int r0 = t * j->chunk;
    int r1 = r0 + j->chunk < j->m ? r0 + j->chunk : j->m;
    j->fn(j->args, r0, r1);
}

/* Runs fn over rows [0, m) split into contiguous chunks; each row is computed by the same code
 * whatever the chunk, which is what makes the row ops batch-invariant. */
static void xc_cpu_rows(xc_backend *be, xc_cpu_rows_fn fn, const void *args, int m,
                        size_t row_work) {
    int nt = xc_cpu_n_threads(be);
    if (m <= 0) {
        return;
    }
    if (nt == 1 || m == 1 || (size_t)m * row_work < XC_CPU_PAR_MIN_WORK) {
        fn(args, 0, m);
        return;
    }
    int n_tasks = m < 4 * nt ? m : 4 * nt;
    xc_cpu_rows_job j = {fn, args, m, (m + n_tasks - 1) / n_tasks};
    xc_cpu_parallel(be, (m + j.chunk - 1) / j.chunk, xc_cpu_rows_task, &j);
}

#define LD(ld, n)  xc_opcheck_ld((ld), (n))
#define XC_SIMD_FN __attribute__((target("avx2,fma,f16c"))) static

/* ---- norms ---- */

/* Sum of squares (sq) or plain sum of x - c over n floats, with four 8-lane accumulators whose
 * combination order depends on n only. */
XC_SIMD_FN float xc_cpu_sum_avx2(const float *x, int n, float c, bool sq) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    __m256 vc = _mm256_set1_ps(c);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int u = 0; u < 4; u++) {
            __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8 * u), vc);
            acc[u] = sq ? _mm256_fmadd_ps(v, v, acc[u]) : _mm256_add_ps(acc[u], v);
        }
    }
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vc);
        acc[0] = sq ? _mm256_fmadd_ps(v, v, acc[0]) : _mm256_add_ps(acc[0], v);
    }
    float s =
        xc_simd_hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        float v = x[i] - c;
        s += sq ? v * v : v;
    }
    return s;
}

/* y = (x - c) * inv * w (+ b), 8 at a time; the tail goes through a padded vector so every
 * element sees the same arithmetic. */
XC_SIMD_FN void xc_cpu_norm_apply_avx2(const float *x, float *y, int n, float c, float inv,
                                       const void *w, const void *b, xc_dtype t) {
    __m256 vc = _mm256_set1_ps(c);
    __m256 vi = _mm256_set1_ps(inv);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vc), vi);
        v = b ? _mm256_fmadd_ps(v, xc_simd_load_w(w, t, i), xc_simd_load_w(b, t, i))
              : _mm256_mul_ps(v, xc_simd_load_w(w, t, i));
        _mm256_storeu_ps(y + i, v);
    }
    if (i < n) {
        float xt[8] = {0}, wt[8] = {0}, bt[8] = {0}, yt[8];
        for (int j = 0; i + j < n; j++) {
            xt[j] = x[i + j];
            wt[j] = xc_load_f32(w, t, (size_t)(i + j));
            bt[j] = b ? xc_load_f32(b, t, (size_t)(i + j)) : 0.0f;
        }
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xt), vc), vi);
        v = b ? _mm256_fmadd_ps(v, _mm256_loadu_ps(wt), _mm256_loadu_ps(bt))
              : _mm256_mul_ps(v, _mm256_loadu_ps(wt));
        _mm256_storeu_ps(yt, v);
        memcpy(y + i, yt, (size_t)(n - i) * sizeof(float));
    }
}

static float xc_cpu_sum_scalar(const float *x, int n, float c, bool sq) {
    float s = 0;
    for (int i = 0; i < n; i++) {
        float v = x[i] - c;
        s += sq ? v * v : v;
    }
    return s;
}

static void xc_cpu_norm_apply_scalar(const float *x, float *y, int n, float c, float inv,
                                     const void *w, const void *b, xc_dtype t) {
    for (int i = 0; i < n; i++) {
        float v = (x[i] - c) * inv * xc_load_f32(w, t, (size_t)i);
        y[i] = b ? v + xc_load_f32(b, t, (size_t)i) : v;
    }
}

typedef struct xc_cpu_norm_job {
    const xc_norm_args *a;
    bool simd, layernorm;
} xc_cpu_norm_job;

static void xc_cpu_norm_rows(const void *p, int r0, int r1) {
    const xc_cpu_norm_job *j = p;
    const xc_norm_args *a = j->a;
    int n = a->n;
    for (int r = r0; r < r1; r++) {
        const float *x = a->x + (size_t)r * (size_t)LD(a->ldx, n);
        float *y = a->y + (size_t)r * (size_t)LD(a->ldy, n);
        float mean = 0.0f;
        if (j->layernorm) {
            mean = (j->simd ? xc_cpu_sum_avx2(x, n, 0.0f, false)
                            : xc_cpu_sum_scalar(x, n, 0.0f, false)) /
                   (float)n;
        }
        float ss =
            j->simd ? xc_cpu_sum_avx2(x, n, mean, true) : xc_cpu_sum_scalar(x, n, mean, true);
        float inv = 1.0f / sqrtf(ss / (float)n + a->eps);
        const void *b = j->layernorm ? a->b : NULL;
        if (j->simd) {
            xc_cpu_norm_apply_avx2(x, y, n, mean, inv, a->w, b, a->wb_dtype);
        } else {
            xc_cpu_norm_apply_scalar(x, y, n, mean, inv, a->w, b, a->wb_dtype);
        }
    }
}

static xc_status xc_cpu_rmsnorm(xc_backend *be, const xc_norm_args *a) {
    XC_TRY(xc_opcheck_norm(a, false));
    xc_cpu_norm_job j = {a, xc_cpu_simd(be), false};
    xc_cpu_rows(be, xc_cpu_norm_rows, &j, a->m, (size_t)a->n * 2);
    return XC_OK;
}

static xc_status xc_cpu_layernorm(xc_backend *be, const xc_norm_args *a) {
    XC_TRY(xc_opcheck_norm(a, true));
    xc_cpu_norm_job j = {a, xc_cpu_simd(be), true};
    xc_cpu_rows(be, xc_cpu_norm_rows, &j, a->m, (size_t)a->n * 3);
    return XC_OK;
}

/* ---- RoPE ---- */

typedef struct xc_cpu_rope_job {
    const xc_rope_args *a;
    bool simd;
} xc_cpu_rope_job;

/* Rotates 8 dimension pairs (lo[d], hi[d]) of one head. */
XC_SIMD_FN void xc_cpu_rope8_avx2(float *lo, float *hi, const float *c, const float *s) {
    __m256 x0 = _mm256_loadu_ps(lo);
    __m256 x1 = _mm256_loadu_ps(hi);
    __m256 vc = _mm256_loadu_ps(c);
    __m256 vs = _mm256_loadu_ps(s);
    _mm256_storeu_ps(lo, _mm256_fmsub_ps(x0, vc, _mm256_mul_ps(x1, vs)));
    _mm256_storeu_ps(hi, _mm256_fmadd_ps(x1, vc, _mm256_mul_ps(x0, vs)));
}

/* theta^(-2d/head_dim) rounded to f32, exactly as xc_ref_rope computes it. */
static float xc_cpu_rope_inv_freq(float theta, int d, int hd) {
    return (float)(1.0 / pow((double)theta, 2.0 * d / hd));
}

static void xc_cpu_rope_rows(const void *p, int r0, int r1) {
    const xc_cpu_rope_job *j = p;
    const xc_rope_args *a = j->a;
    int hd = a->head_dim, half = hd / 2;
    int ldx = LD(a->ldx, a->n_heads * hd);
    /* inv_freq depends on d only: computed once per call (for head_dim <= 512, the usual case). */
    float invf[256];
    int n_invf = half <= 256 ? half : 0;
    for (int d = 0; d < n_invf; d++) {
        invf[d] = xc_cpu_rope_inv_freq(a->theta, d, hd);
    }
    for (int r = r0; r < r1; r++) {
        float *row = a->x + (size_t)r * (size_t)ldx;
        for (int d0 = 0; d0 < half; d0 += 8) {
            int nd = half - d0 < 8 ? half - d0 : 8;
            float c[8] = {0}, s[8] = {0};
            for (int d = 0; d < nd; d++) {
                /* Same f32 angle as the reference and the HF tables (see xc_backend.h). */
                int dd = d0 + d;
                float inv_freq = dd < n_invf ? invf[dd] : xc_cpu_rope_inv_freq(a->theta, dd, hd);
                float angle = (float)a->pos[r] * inv_freq;
                c[d] = cosf(angle);
                s[d] = sinf(angle);
            }
            for (int h = 0; h < a->n_heads; h++) {
                float *lo = row + (size_t)h * (size_t)hd + d0;
                float *hi = lo + half;
                if (j->simd) {
                    float lt[8] = {0}, ht[8] = {0};
                    float *pl = lo, *ph = hi;
                    if (nd < 8) {
                        memcpy(lt, lo, (size_t)nd * sizeof(float));
                        memcpy(ht, hi, (size_t)nd * sizeof(float));
                        pl = lt;
                        ph = ht;
                    }
                    xc_cpu_rope8_avx2(pl, ph, c, s);
                    if (nd < 8) {
                        memcpy(lo, lt, (size_t)nd * sizeof(float));
                        memcpy(hi, ht, (size_t)nd * sizeof(float));
                    }
                } else {
                    for (int d = 0; d < nd; d++) {
                        float x0 = lo[d], x1 = hi[d];
                        lo[d] = x0 * c[d] - x1 * s[d];
                        hi[d] = x1 * c[d] + x0 * s[d];
                    }
                }
            }
        }
    }
}

static xc_status xc_cpu_rope(xc_backend *be, const xc_rope_args *a) {
    XC_TRY(xc_opcheck_rope(a));
    xc_cpu_rope_job j = {a, xc_cpu_simd(be)};
    xc_cpu_rows(be, xc_cpu_rope_rows, &j, a->m, (size_t)a->n_heads * (size_t)a->head_dim * 2);
    return XC_OK;
}

/* ---- KV cache store ---- */

/* f32 -> bf16 rounded to nearest even, 8 at a time (NaN made quiet, as xc_f32_to_bf16). */
XC_SIMD_FN void xc_cpu_to_bf16_avx2(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
        __m256i r = _mm256_add_epi32(
            u, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), inf);
        __m256i q = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
        r = _mm256_srli_epi32(_mm256_blendv_epi8(r, q, nan), 16);
        __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storeu_si128((__m128i *)(dst + i), p);
    }
    for (; i < n; i++) {
        dst[i] = xc_f32_to_bf16(src[i]);
    }
}

static void xc_cpu_kv_row(bool simd, xc_dtype t, void *cache, size_t off, const float *src,
                          size_t w) {
    if (t == XC_DTYPE_BF16) {
        uint16_t *d = (uint16_t *)cache + off;
        if (simd) {
            xc_cpu_to_bf16_avx2(d, src, w);
        } else {
            for (size_t c = 0; c < w; c++) {
                d[c] = xc_f32_to_bf16(src[c]);
            }
        }
    } else {
        memcpy((float *)cache + off, src, w * sizeof(float));
    }
}

/* Serial on purpose: it is a copy per row, and duplicate slots then resolve deterministically
 * (the last row wins) without any cross-thread ordering. bf16 caches round each value to nearest
 * even (bit-identical on the SIMD and scalar paths). */
static xc_status xc_cpu_kv_store(xc_backend *be, const xc_kv_store_args *a) {
    XC_TRY(xc_opcheck_kv_store(a));
    bool simd = xc_cpu_simd(be);
    size_t w = (size_t)a->width;
    for (int i = 0; i < a->m; i++) {
        size_t slot = (size_t)a->slots[i];
        xc_cpu_kv_row(simd, a->cache_dtype, a->k_cache, slot * w,
                      a->k + (size_t)i * (size_t)LD(a->ldk, a->width), w);
        xc_cpu_kv_row(simd, a->cache_dtype, a->v_cache, slot * w,
                      a->v + (size_t)i * (size_t)LD(a->ldv, a->width), w);
    }
    return XC_OK;
}

/* ---- elementwise ---- */

typedef struct xc_cpu_act_job {
    const xc_act_args *a;
    bool simd;
} xc_cpu_act_job;

XC_SIMD_FN __m256 xc_cpu_act8_avx2(xc_act_kind kind, __m256 x, __m256 x2) {
    switch (kind) {
    case XC_ACT_SILU_MUL:
        return _mm256_mul_ps(xc_simd_xsigmoid(x, 1.0f), x2);
    case XC_ACT_GELU:
        return xc_simd_gelu(x);
    case XC_ACT_QUICK_GELU:
        return xc_simd_xsigmoid(x, 1.702f);
    default:
        return _mm256_add_ps(x, x2);
    }
}

XC_SIMD_FN void xc_cpu_act_row_avx2(xc_act_kind kind, const float *x, const float *x2, float *y,
                                    int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v2 = x2 ? _mm256_loadu_ps(x2 + i) : _mm256_setzero_ps();
        _mm256_storeu_ps(y + i, xc_cpu_act8_avx2(kind, _mm256_loadu_ps(x + i), v2));
    }
    if (i < n) {
        float xt[8] = {0}, x2t[8] = {0}, yt[8];
        memcpy(xt, x + i, (size_t)(n - i) * sizeof(float));
        if (x2) {
            memcpy(x2t, x2 + i, (size_t)(n - i) * sizeof(float));
        }
        _mm256_storeu_ps(yt, xc_cpu_act8_avx2(kind, _mm256_loadu_ps(xt), _mm256_loadu_ps(x2t)));
        memcpy(y + i, yt, (size_t)(n - i) * sizeof(float));
    }
}

static void xc_cpu_act_row_scalar(xc_act_kind kind, const float *x, const float *x2, float *y,
                                  int n) {
    for (int i = 0; i < n; i++) {
        float v = x[i];
        switch (kind) {
        case XC_ACT_SILU_MUL:
            y[i] = v / (1.0f + expf(-v)) * x2[i];
            break;
        case XC_ACT_GELU:
            y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
            break;
        case XC_ACT_QUICK_GELU:
            y[i] = v / (1.0f + expf(-1.702f * v));
            break;
        default:
            y[i] = v + x2[i];
            break;
        }
    }
}

static void xc_cpu_act_rows(const void *p, int r0, int r1) {
    const xc_cpu_act_job *j = p;
    const xc_act_args *a = j->a;
    bool two = a->kind == XC_ACT_SILU_MUL || a->kind == XC_ACT_ADD;
    for (int r = r0; r < r1; r++) {
        const float *x = a->x + (size_t)r * (size_t)LD(a->ldx, a->n);
        const float *x2 = two ? a->x2 + (size_t)r * (size_t)LD(a->ldx2, a->n) : NULL;
        float *y = a->y + (size_t)r * (size_t)LD(a->ldy, a->n);
        if (j->simd) {
            xc_cpu_act_row_avx2(a->kind, x, x2, y, a->n);
        } else {
            xc_cpu_act_row_scalar(a->kind, x, x2, y, a->n);
        }
    }
}

static xc_status xc_cpu_act(xc_backend *be, const xc_act_args *a) {
    XC_TRY(xc_opcheck_act(a));
    xc_cpu_act_job j = {a, xc_cpu_simd(be)};
    size_t cost = a->kind == XC_ACT_ADD ? 1 : 8;
    xc_cpu_rows(be, xc_cpu_act_rows, &j, a->m, (size_t)a->n * cost);
    return XC_OK;
}

/* ---- embedding, patchify ---- */

typedef struct xc_cpu_embed_job {
    const xc_embed_args *a;
    bool simd;
} xc_cpu_embed_job;

XC_SIMD_FN void xc_cpu_convert_avx2(const void *src, xc_dtype t, float *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, xc_simd_load_w(src, t, (size_t)i));
    }
    for (; i < n; i++) {
        y[i] = xc_load_f32(src, t, (size_t)i); /* conversions are exact: same bits either way */
    }
}

static void xc_cpu_embed_rows(const void *p, int r0, int r1) {
    const xc_cpu_embed_job *j = p;
    const xc_embed_args *a = j->a;
    size_t es = xc_dtype_size(a->table_dtype);
    for (int r = r0; r < r1; r++) {
        const char *src = (const char *)a->table + (size_t)a->ids[r] * (size_t)a->n * es;
        float *y = a->y + (size_t)r * (size_t)LD(a->ldy, a->n);
        if (a->table_dtype == XC_DTYPE_F32) {
            memcpy(y, src, (size_t)a->n * sizeof(float));
        } else if (j->simd) {
            xc_cpu_convert_avx2(src, a->table_dtype, y, a->n);
        } else {
            for (int i = 0; i < a->n; i++) {
                y[i] = xc_load_f32(src, a->table_dtype, (size_t)i);
            }
        }
    }
}

static xc_status xc_cpu_embed(xc_backend *be, const xc_embed_args *a) {
    XC_TRY(xc_opcheck_embed(a));
    xc_cpu_embed_job j = {a, xc_cpu_simd(be)};
    xc_cpu_rows(be, xc_cpu_embed_rows, &j, a->m, (size_t)a->n);
    return XC_OK;
}

/* One output row per patch: (channel, ky) runs of `patch` contiguous pixels. */
static void xc_cpu_patchify_rows(const void *p, int r0, int r1) {
    const xc_patchify_args *a = p;
    size_t grid = (size_t)(a->size / a->patch), ps = (size_t)a->patch, sz = (size_t)a->size;
    size_t cols = (size_t)a->channels * ps * ps;
    for (int r = r0; r < r1; r++) {
        size_t img = (size_t)r / (grid * grid);
        size_t gy = (size_t)r / grid % grid, gx = (size_t)r % grid;
        float *y = a->y + (size_t)r * cols;
        for (size_t c = 0; c < (size_t)a->channels; c++) {
            const float *plane = a->images + (img * (size_t)a->channels + c) * sz * sz;
            for (size_t ky = 0; ky < ps; ky++) {
                memcpy(y, plane + (gy * ps + ky) * sz + gx * ps, ps * sizeof(float));
                y += ps;
            }
        }
    }
}

static xc_status xc_cpu_patchify(xc_backend *be, const xc_patchify_args *a) {
    XC_TRY(xc_opcheck_patchify(a));
    int grid = a->size / a->patch;
    long long rows = (long long)a->n_img * grid * grid;
    if (rows > INT32_MAX) {
        return xc_errf(XC_ERR_ARG, "patchify: %lld patches is too many", rows);
    }
    xc_cpu_rows(be, xc_cpu_patchify_rows, a, (int)rows,
                (size_t)a->channels * (size_t)a->patch * (size_t)a->patch);
    return XC_OK;
}

/* ---- softmax, argmax ---- */

typedef struct xc_cpu_softmax_job {
    const xc_softmax_args *a;
    bool simd;
} xc_cpu_softmax_job;

/* x = exp(x / t - max(x / t)) / sum, with four 8-lane partial sums combined in a fixed order. */
XC_SIMD_FN void xc_cpu_softmax_row_avx2(float *x, int n, float t) {
    __m256 vt = _mm256_set1_ps(t);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        if (t != 1.0f) {
            v = _mm256_div_ps(v, vt);
            _mm256_storeu_ps(x + i, v);
        }
        vmax = _mm256_max_ps(vmax, v);
    }
    float mx = xc_simd_hmax(vmax);
    for (int k = i; k < n; k++) {
        if (t != 1.0f) {
            x[k] = x[k] / t;
        }
        mx = x[k] > mx ? x[k] : mx;
    }
    __m256 vm = _mm256_set1_ps(mx);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = xc_simd_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        acc[(i >> 3) & 3] = _mm256_add_ps(acc[(i >> 3) & 3], e);
    }
    if (i < n) {
        float xt[8], et[8];
        for (int k = 0; k < 8; k++) {
            xt[k] = i + k < n ? x[i + k] : -INFINITY;
        }
        __m256 e = xc_simd_exp(_mm256_sub_ps(_mm256_loadu_ps(xt), vm));
        _mm256_storeu_ps(et, e);
        memcpy(x + i, et, (size_t)(n - i) * sizeof(float));
        acc[(i >> 3) & 3] = _mm256_add_ps(acc[(i >> 3) & 3], e);
    }
    float sum =
        xc_simd_hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    }
    for (; i < n; i++) {
        x[i] *= 1.0f / sum;
    }
}

static void xc_cpu_softmax_row_scalar(float *x, int n, float t) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        x[i] = t != 1.0f ? x[i] / t : x[i];
        mx = x[i] > mx ? x[i] : mx;
    }
    float sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) {
        x[i] *= 1.0f / sum;
    }
}

static void xc_cpu_softmax_rows(const void *p, int r0, int r1) {
    const xc_cpu_softmax_job *j = p;
    const xc_softmax_args *a = j->a;
    float t = a->temperature != 0.0f ? a->temperature : 1.0f;
    for (int r = r0; r < r1; r++) {
        float *x = a->x + (size_t)r * (size_t)LD(a->ldx, a->n);
        if (a->argmax) {
            int best = 0;
            for (int i = 1; i < a->n; i++) {
                if (x[i] > x[best]) {
                    best = i;
                }
            }
            a->argmax[r] = best;
        }
        if (a->skip_softmax) {
            continue;
        }
        if (j->simd) {
            xc_cpu_softmax_row_avx2(x, a->n, t);
        } else {
            xc_cpu_softmax_row_scalar(x, a->n, t);
        }
    }
}

static xc_status xc_cpu_softmax(xc_backend *be, const xc_softmax_args *a) {
    XC_TRY(xc_opcheck_softmax(a));
    xc_cpu_softmax_job j = {a, xc_cpu_simd(be)};
    xc_cpu_rows(be, xc_cpu_softmax_rows, &j, a->m, (size_t)a->n * 4);
    return XC_OK;
}

/* ---- PLoRA ---- */

/* Two GEMMs per range through the batch-invariant matmul: t = x A^T, then y += scale t B^T. The
 * matmul's own invariance carries over, since a row's result does not depend on the range's
 * other rows. */
static xc_status xc_cpu_plora(xc_backend *be, const xc_plora_args *a) {
    XC_TRY(xc_opcheck_plora(a));
    int max_rows = 0;
    for (int i = 0; i < a->n_ranges; i++) {
        int rows = a->ranges[i].end - a->ranges[i].start;
        max_rows = rows > max_rows ? rows : max_rows;
    }
    if (max_rows == 0 || a->scale == 0.0f) {
        return XC_OK;
    }
    float *t = xc_cpu_scratch(XC_CPU_SCRATCH_OP, (size_t)max_rows * (size_t)a->rank * sizeof *t);
    if (!t) {
        return xc_errf(XC_ERR_NOMEM, "plora: out of memory for %d x %d", max_rows, a->rank);
    }
    xc_status st = XC_OK;
    for (int i = 0; i < a->n_ranges && st == XC_OK; i++) {
        int r0 = a->ranges[i].start, rows = a->ranges[i].end - r0;
        if (rows == 0) {
            continue;
        }
        xc_matmul_args down = {
            .x = a->x + (size_t)r0 * (size_t)LD(a->ldx, a->k),
            .w = a->a,
            .w_dtype = a->ab_dtype,
            .y = t,
            .m = rows,
            .n = a->rank,
            .k = a->k,
            .ldx = LD(a->ldx, a->k),
        };
        xc_matmul_args up = {
            .x = t,
            .w = a->b,
            .w_dtype = a->ab_dtype,
            .y = a->y + (size_t)r0 * (size_t)LD(a->ldy, a->n),
            .m = rows,
            .n = a->n,
            .k = a->rank,
            .ldy = LD(a->ldy, a->n),
            .alpha = a->scale,
            .accumulate = true,
        };
        st = xc_cpu_matmul(be, &down);
        if (st == XC_OK) {
            st = xc_cpu_matmul(be, &up);
        }
    }
    return st;
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
    .plora = xc_cpu_plora,
    .rmsnorm = xc_cpu_rmsnorm,
    .layernorm = xc_cpu_layernorm,
    .rope = xc_cpu_rope,
    .kv_store = xc_cpu_kv_store,
    .attention = xc_cpu_attention,
    .act = xc_cpu_act,
    .embed = xc_cpu_embed,
    .patchify = xc_cpu_patchify,
    .softmax = xc_cpu_softmax,
    .sync = NULL,
};
