/* xcpipe bench sched: the cost of one scheduling step of the real coordinator (xc_coord's thread:
 * Results handled, tokens delivered to the request callbacks, micro-batches formed and sent)
 * with thousands of live sequences. The coordinator and P sim workers run in this process
 * (threads, inproc transport, as xcpipe bench pipeline) with the sim cost model scaled down so
 * that the coordinator, not the stages, is what is busy; each step reports the coordinator
 * thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so that the figure holds on a loaded machine. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_bench_ckpt.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_coord.h"
#include "xc_log.h"
#include "xc_place.h"
#include "xc_sim.h"
#include "xc_time.h"
#include "xc_worker.h"

typedef struct bs_conf {
    int sequences, stages, max_rows, prompt, new_tokens, max_steps;
    double scale, timeout;
} bs_conf;

static const xc_conf_entry bs_entries[] = {
    XC_CONF_INT("sequences", NULL, bs_conf, sequences, 2048, 1, 65536,
                "live sequences (concurrent requests) while steps are measured"),
    XC_CONF_INT("stages", NULL, bs_conf, stages, 2, 1, 16, "pipeline stages (sim workers)"),
    XC_CONF_INT("max-rows", NULL, bs_conf, max_rows, 1024, 1, 65536,
                "rows per micro-batch (the coordinator's --max-rows)"),
    XC_CONF_INT("prompt", NULL, bs_conf, prompt, 16, 1, 4096, "prompt rows per request"),
    XC_CONF_INT("new-tokens", NULL, bs_conf, new_tokens, 400, 8, 100000, "tokens per request"),
    XC_CONF_INT("steps", NULL, bs_conf, max_steps, 2000, 10, 10000000,
                "steps to measure at most (at full load)"),
    XC_CONF_FLOAT("scale", NULL, bs_conf, scale, 0.01, 0.001, 1000,
                  "sim cost model factor (small: the stages answer at once)"),
    XC_CONF_FLOAT("timeout", NULL, bs_conf, timeout, 300, 1, 86400, "give up after this long (s)"),
};

static const xc_conf_spec bs_spec = {
    "xcpipe bench sched [options]",
    "Scheduling step cost of the coordinator at --sequences live sequences (default 2048): "
    "decode steps with sim stages in this process; prints CPU ms per step of the coordinator "
    "thread (mean, percentiles), rows and tokens per step.",
    bs_entries, sizeof bs_entries / sizeof bs_entries[0]};

typedef struct bench_worker {
    xc_worker *w;
    pthread_t th;
    volatile sig_atomic_t stop;
} bench_worker;

static void *worker_thread(void *arg) {
    bench_worker *b = arg;
    xc_worker_run(b->w, &b->stop);
    return NULL;
}

/* What the coordinator thread reports (its callbacks) and the bench thread reads. */
typedef struct bench_state {
    atomic_int tokens, done, errors;
    atomic_int measuring; /* 1 while steps are recorded */
    pthread_mutex_t lock;
    double *cpu, *wall, *next, *hnd, *snd; /* (cap) per recorded step */
    int *rows, *msgs;
    int n, cap;
    int sequences;
} bench_state;

static void on_event(void *user, const xc_coord_event *ev) {
    bench_state *b = user;
    if (ev->kind == XC_COORD_TOKEN) {
        atomic_fetch_add(&b->tokens, 1);
    } else {
        atomic_fetch_add(&b->done, 1);
        if (ev->status != XC_OK) {
            atomic_fetch_add(&b->errors, 1);
        }
    }
}

/* Steps at full load only: every sequence live and decoding. */
static void on_step(void *user, const xc_coord_step *s) {
    bench_state *b = user;
    if (!atomic_load(&b->measuring) || s->live < b->sequences) {
        return;
    }
    pthread_mutex_lock(&b->lock);
    if (b->n < b->cap) {
        b->cpu[b->n] = s->cpu_s;
        b->wall[b->n] = s->wall_s;
        b->next[b->n] = s->sched_next_s;
        b->hnd[b->n] = s->handle_s;
        b->snd[b->n] = s->send_s;
        b->rows[b->n] = s->rows;
        b->msgs[b->n] = s->messages;
        b->n++;
    }
    pthread_mutex_unlock(&b->lock);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *sorted, int n, double p) {
    int i = (int)(p * (n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static xc_status run(const char *dir, const bs_conf *bc, bench_state *b) {
    int P = bc->stages;
    xc_sim_cost cost = XC_SIM_COST_H100;
    cost.scale = bc->scale;
    int rows = bc->max_rows;
    xc_place_model pm = {.layer_time = cost.layer_us + cost.layer_row_us * rows,
                         .attn_time = xc_sim_unit_us(&cost, 0, rows),
                         .ffn_time = xc_sim_unit_us(&cost, 1, rows),
                         .first_time = cost.embed_us,
                         .last_time = cost.head_us + cost.head_row_us * rows};
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://xc-bench-sched-%d-c", (int)getpid());
    xc_coord_conf cc = {.model_dir = dir,
                        .endpoint = ep,
                        .stages = P,
                        .replicas = 1,
                        .workers = P,
                        .no_vision = true,
                        .dead_s = 60,
                        .max_rows = bc->max_rows,
                        .chunk = 256,
                        .block_size = 16,
                        .kv_blocks = 1 << 20,
                        .max_context = 32768,
                        .cost = &pm,
                        .on_step = on_step,
                        .on_step_user = b};
    xc_coord *co = NULL;
    bench_worker ws[16];
    int n_ws = 0;
    xc_status st = xc_coord_create(&cc, &co);
    for (int i = 0; i < P && st == XC_OK; i++) {
        char wep[64], name[32];
        snprintf(wep, sizeof wep, "inproc://xc-bench-sched-%d-w%d", (int)getpid(), i);
        snprintf(name, sizeof name, "sim%d", i);
        xc_worker_conf wc = {.coordinator = ep,
                             .endpoint = wep,
                             .id = name,
                             .backend = "sim",
                             .heartbeat_s = 0.5,
                             .hang_s = 120,
                             .send_timeout_ms = 5000,
                             .mem_bytes = 1ull << 40,
                             .sim = cost,
                             .sim_width = 16};
        memset(&ws[i], 0, sizeof ws[i]);
        st = xc_worker_create(&wc, &ws[i].w);
        if (st == XC_OK) {
            n_ws++;
            if (pthread_create(&ws[i].th, NULL, worker_thread, &ws[i]) != 0) {
                xc_worker_destroy(ws[i].w);
                n_ws--;
                st = xc_errf(XC_ERR_IO, "cannot start a worker thread");
            }
        }
    }
    if (st == XC_OK) {
        st = xc_coord_wait_ready(co, 30);
    }
    uint64_t t_end = xc_now_ns() + (uint64_t)(bc->timeout * 1e9);
    if (st == XC_OK) {
        int32_t *ids = malloc((size_t)bc->prompt * sizeof *ids);
        if (!ids) {
            st = XC_ERR_NOMEM;
        }
        for (int i = 0; ids && i < bc->prompt; i++) {
            ids[i] = 100 + i % 1000;
        }
        xc_coord_request r = {.ids = ids,
                              .n = bc->prompt,
                              .max_new_tokens = bc->new_tokens,
                              .sampling = {.greedy = true, .top_p = 1, .repetition_penalty = 1}};
        for (int i = 0; i < b->sequences && st == XC_OK; i++) {
            st = xc_coord_submit(co, &r, on_event, b, NULL);
        }
        free(ids);
    }
    /* warm-up: every sequence prefilled and decoding (a few tokens each) */
    while (st == XC_OK && atomic_load(&b->tokens) < b->sequences * 4 && xc_now_ns() < t_end) {
        usleep(1000);
    }
    atomic_store(&b->measuring, 1);
    uint64_t t0 = xc_now_ns();
    int tok0 = atomic_load(&b->tokens);
    /* measure until the first request ends (fewer live sequences from then on), enough steps,
     * or the timeout */
    int stop_at = b->sequences * (bc->new_tokens - 4);
    for (;;) {
        pthread_mutex_lock(&b->lock);
        int n = b->n;
        pthread_mutex_unlock(&b->lock);
        if (st != XC_OK || n >= b->cap || atomic_load(&b->done) > 0 ||
            atomic_load(&b->tokens) >= stop_at || xc_now_ns() >= t_end) {
            break;
        }
        usleep(2000);
    }
    atomic_store(&b->measuring, 0);
    double secs = (double)(xc_now_ns() - t0) * 1e-9;
    int toks = atomic_load(&b->tokens) - tok0;
    if (st == XC_OK && atomic_load(&b->errors) > 0) {
        st = xc_errf(XC_ERR_IO, "%d requests failed", atomic_load(&b->errors));
    }
    if (st == XC_OK) {
        printf("measured %.2f s: %d tokens delivered (%.0f tokens/s through the coordinator)\n",
               secs, toks, toks / secs);
    }
    if (co) {
        xc_coord_stop(co, 0, false);
    }
    for (int i = 0; i < n_ws; i++) {
        ws[i].stop = 1;
        pthread_join(ws[i].th, NULL);
        xc_worker_destroy(ws[i].w);
    }
    xc_coord_destroy(co);
    return st;
}

int xc_cmd_bench_sched(int argc, char **argv) {
    bs_conf bc;
    xc_status st = xc_conf_parse(&bs_spec, &bc, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench sched: %s\n", xc_err_last());
        return 2;
    }
    xc_log_set_level(XC_LOG_LEVEL_WARN);
    char dir[] = "/tmp/xc-bench-sched-XXXXXX";
    if (xc_bench_sim_model_dir(dir, 32) != XC_OK) {
        fprintf(stderr, "xcpipe bench sched: %s\n", xc_err_last());
        return 1;
    }
    bench_state b = {.sequences = bc.sequences, .cap = bc.max_steps};
    pthread_mutex_init(&b.lock, NULL);
    b.cpu = malloc((size_t)b.cap * sizeof *b.cpu);
    b.wall = malloc((size_t)b.cap * sizeof *b.wall);
    b.next = malloc((size_t)b.cap * sizeof *b.next);
    b.hnd = malloc((size_t)b.cap * sizeof *b.hnd);
    b.snd = malloc((size_t)b.cap * sizeof *b.snd);
    b.rows = malloc((size_t)b.cap * sizeof *b.rows);
    b.msgs = malloc((size_t)b.cap * sizeof *b.msgs);
    int rc = 0;
    if (!b.cpu || !b.wall || !b.next || !b.hnd || !b.snd || !b.rows || !b.msgs) {
        fprintf(stderr, "xcpipe bench sched: out of memory\n");
        rc = 1;
    }
    if (rc == 0) {
        printf("coordinator scheduling step: %d sequences (%d-row prompts, %d new tokens), %d sim "
               "stages (cost model x%g), --max-rows %d\n",
               bc.sequences, bc.prompt, bc.new_tokens, bc.stages, bc.scale, bc.max_rows);
        st = run(dir, &bc, &b);
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe bench sched: %s\n", xc_err_last());
            rc = 1;
        } else if (b.n == 0) {
            fprintf(stderr, "xcpipe bench sched: no step at full load was measured\n");
            rc = 1;
        }
    }
    if (rc == 0) {
        double sum_cpu = 0, sum_wall = 0, sum_rows = 0, sum_msgs = 0, sum_next = 0, sum_h = 0,
               sum_s = 0;
        for (int i = 0; i < b.n; i++) {
            sum_cpu += b.cpu[i];
            sum_wall += b.wall[i];
            sum_next += b.next[i];
            sum_h += b.hnd[i];
            sum_s += b.snd[i];
            sum_rows += b.rows[i];
            sum_msgs += b.msgs[i];
        }
        qsort(b.cpu, (size_t)b.n, sizeof *b.cpu, cmp_double);
        qsort(b.wall, (size_t)b.n, sizeof *b.wall, cmp_double);
        qsort(b.next, (size_t)b.n, sizeof *b.next, cmp_double);
        printf("steps at %d live sequences: %d; per step %.0f rows sent, %.1f messages handled\n",
               bc.sequences, b.n, sum_rows / b.n, sum_msgs / b.n);
        printf("coordinator CPU per step: mean %.3f ms, p50 %.3f, p90 %.3f, p99 %.3f, max %.3f "
               "(%.2f us per row sent)\n",
               sum_cpu / b.n * 1e3, pct(b.cpu, b.n, 0.5) * 1e3, pct(b.cpu, b.n, 0.9) * 1e3,
               pct(b.cpu, b.n, 0.99) * 1e3, b.cpu[b.n - 1] * 1e3,
               sum_rows > 0 ? sum_cpu / sum_rows * 1e6 : 0.0);
        printf("wall per step: mean %.3f ms, p50 %.3f, p99 %.3f (includes preemption by the "
               "sim threads and other load)\n",
               sum_wall / b.n * 1e3, pct(b.wall, b.n, 0.5) * 1e3, pct(b.wall, b.n, 0.99) * 1e3);
        printf("split (wall, mean per step): handling results and delivering tokens %.3f ms, "
               "forming micro-batches (xc_sched_next) %.3f ms, building/encoding/sending them "
               "%.3f ms\n",
               sum_h / b.n * 1e3, sum_next / b.n * 1e3, sum_s / b.n * 1e3);
    }
    free(b.cpu);
    free(b.wall);
    free(b.next);
    free(b.hnd);
    free(b.snd);
    free(b.rows);
    free(b.msgs);
    pthread_mutex_destroy(&b.lock);
    xc_bench_sim_model_dir_remove(dir);
    return rc;
}
