/* xcpipe bench pipeline: pipeline efficiency with the sim backend. The coordinator and R x P sim
 * workers run in this process (threads, inproc transport); each sim stage sleeps as long as the
 * H100 cost model says its layers take, so what is measured is the schedule: achieved throughput
 * over ideal (P x the throughput of one worker running the whole model at the same micro-batch
 * size), the bubble fraction of every stage, chunked prefill of one long prompt against an
 * unpipelined run, and R replicas against one. */
#include <errno.h>
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

typedef struct bp_conf {
    int streams_per_stage, new_tokens, prompt, long_prompt, chunk, max_rows, layers, max_inflight;
    double scale;
    bool detail;
} bp_conf;

static const xc_conf_entry bp_entries[] = {
    XC_CONF_INT("streams-per-stage", NULL, bp_conf, streams_per_stage, 16, 1, 4096,
                "decode-heavy: concurrent streams per stage of each pipeline"),
    XC_CONF_INT("new-tokens", NULL, bp_conf, new_tokens, 48, 4, 100000,
                "decode-heavy: tokens per stream"),
    XC_CONF_INT("prompt", NULL, bp_conf, prompt, 16, 1, 100000, "decode-heavy: prompt rows"),
    XC_CONF_INT("long-prompt", NULL, bp_conf, long_prompt, 4096, 1, 1000000,
                "long-prompt case: prompt rows"),
    XC_CONF_INT("chunk", NULL, bp_conf, chunk, 256, 1, 65536, "prefill chunk rows"),
    XC_CONF_INT("max-rows", NULL, bp_conf, max_rows, 256, 1, 65536, "rows per micro-batch"),
    XC_CONF_INT("layers", NULL, bp_conf, layers, 32, 8, 4096, "decoder layers (7B: 32)"),
    XC_CONF_INT("max-inflight", NULL, bp_conf, max_inflight, 0, 0, 1024,
                "micro-batches in flight per replica (the coordinator's --max-inflight; 0: stages "
                "+ 1)"),
    XC_CONF_FLOAT("scale", NULL, bp_conf, scale, 4.0, 0.01, 1000,
                  "slow the cost model down by this factor (sleep precision vs run time)"),
    XC_CONF_BOOL("detail", NULL, bp_conf, detail, false,
                 "decode-heavy: also print, per stage and micro-batch, the cost model's time and "
                 "where the rest of the busy time went"),
};

static const xc_conf_spec bp_spec = {
    "xcpipe bench pipeline [options]",
    "Pipeline efficiency with simulated H100 stages (xc_sim cost model): decode-heavy load at "
    "P = 2, 4, 8, one long prompt (chunked prefill) against P = 1, and 2 replicas x 2 stages "
    "against 1 x 2.",
    bp_entries, sizeof bp_entries / sizeof bp_entries[0]};

/* ---- one in-process cluster ---- */

typedef struct bench_worker {
    xc_worker *w;
    pthread_t th;
    volatile sig_atomic_t stop;
} bench_worker;

typedef struct cluster {
    xc_coord *co;
    bench_worker ws[128];
    int n;
    xc_sim_cost cost;
    /* the coordinator's steps that did work: count, wall time, micro-batches sent */
    atomic_uint_fast64_t steps, step_ns, step_mbs, step_cpu_ns, step_handle_ns, step_next_ns,
        step_send_ns;
} cluster;

static void on_step(void *user, const xc_coord_step *sp) {
    cluster *cl = user;
    atomic_fetch_add(&cl->steps, 1);
    atomic_fetch_add(&cl->step_ns, (uint64_t)(sp->wall_s * 1e9));
    atomic_fetch_add(&cl->step_mbs, (uint64_t)sp->microbatches);
    atomic_fetch_add(&cl->step_cpu_ns, (uint64_t)(sp->cpu_s * 1e9));
    atomic_fetch_add(&cl->step_handle_ns, (uint64_t)(sp->handle_s * 1e9));
    atomic_fetch_add(&cl->step_next_ns, (uint64_t)(sp->sched_next_s * 1e9));
    atomic_fetch_add(&cl->step_send_ns, (uint64_t)(sp->send_s * 1e9));
}

static void *worker_thread(void *arg) {
    bench_worker *b = arg;
    xc_worker_run(b->w, &b->stop);
    return NULL;
}

static int g_cluster_seq;

static xc_status cluster_start(cluster *cl, const char *model, int P, int R, const bp_conf *bc,
                               int rows_hint) {
    memset(cl, 0, sizeof *cl);
    cl->cost = (xc_sim_cost)XC_SIM_COST_H100;
    cl->cost.scale = bc->scale;
    const xc_sim_cost *k = &cl->cost;
    xc_place_model pm = {.layer_time = k->layer_us + k->layer_row_us * rows_hint,
                         .attn_time = xc_sim_unit_us(k, 0, rows_hint),
                         .ffn_time = xc_sim_unit_us(k, 1, rows_hint),
                         .first_time = k->embed_us,
                         .last_time = k->head_us + k->head_row_us * rows_hint};
    char ep[64];
    int id = g_cluster_seq++;
    snprintf(ep, sizeof ep, "inproc://xc-bench-%d-c", id);
    xc_coord_conf cc = {.model_dir = model,
                        .endpoint = ep,
                        .stages = P,
                        .replicas = R,
                        .workers = P * R,
                        .no_vision = true,
                        .dead_s = 30,
                        .max_rows = bc->max_rows,
                        .max_inflight = bc->max_inflight,
                        .chunk = bc->chunk,
                        .block_size = 16,
                        .kv_blocks = 1 << 20,
                        .cost = &pm,
                        .on_step = on_step,
                        .on_step_user = cl};
    XC_TRY(xc_coord_create(&cc, &cl->co));
    for (int i = 0; i < P * R; i++) {
        char wep[64];
        snprintf(wep, sizeof wep, "inproc://xc-bench-%d-w%d", id, i);
        xc_worker_conf wc = {.coordinator = ep,
                             .endpoint = wep,
                             .backend = "sim",
                             .heartbeat_s = 0.5,
                             .hang_s = 60,
                             .send_timeout_ms = 5000,
                             .mem_bytes = 1ull << 40,
                             .sim = cl->cost,
                             .sim_width = 16};
        char name[32];
        snprintf(name, sizeof name, "sim%d", i);
        wc.id = name;
        XC_TRY(xc_worker_create(&wc, &cl->ws[i].w));
        cl->n++;
        if (pthread_create(&cl->ws[i].th, NULL, worker_thread, &cl->ws[i]) != 0) {
            return xc_errf(XC_ERR_IO, "cannot start a worker thread");
        }
    }
    return xc_coord_wait_ready(cl->co, 30);
}

static void cluster_stop(cluster *cl) {
    if (cl->co) {
        xc_coord_stop(cl->co, 0, false);
    }
    for (int i = 0; i < cl->n; i++) {
        cl->ws[i].stop = 1;
        pthread_join(cl->ws[i].th, NULL);
        xc_worker_destroy(cl->ws[i].w);
    }
    xc_coord_destroy(cl->co);
    cl->co = NULL;
    cl->n = 0;
}

/* ---- load ---- */

typedef struct counter {
    atomic_int tokens, done, errors, started;
    atomic_uint_fast64_t first_token_ns;
} counter;

static void on_event(void *user, const xc_coord_event *ev) {
    counter *c = user;
    if (ev->kind == XC_COORD_TOKEN) {
        if (atomic_fetch_add(&c->tokens, 1) == 0) {
            atomic_store(&c->first_token_ns, xc_now_ns());
        }
    } else {
        atomic_fetch_add(&c->done, 1);
        if (ev->status != XC_OK) {
            atomic_fetch_add(&c->errors, 1);
        }
    }
}

static xc_status submit(cluster *cl, counter *cnt, int n, int prompt, int new_tokens) {
    int32_t *ids = malloc((size_t)prompt * sizeof(int32_t));
    if (!ids) {
        return XC_ERR_NOMEM;
    }
    for (int i = 0; i < prompt; i++) {
        ids[i] = 100 + i % 1000;
    }
    xc_coord_request r = {.ids = ids,
                          .n = prompt,
                          .max_new_tokens = new_tokens,
                          .sampling = {.greedy = true, .top_p = 1, .repetition_penalty = 1}};
    xc_status st = XC_OK;
    for (int i = 0; i < n && st == XC_OK; i++) {
        st = xc_coord_submit(cl->co, &r, on_event, cnt, NULL);
    }
    free(ids);
    return st;
}

typedef struct decode_result {
    double tps, ideal, eff, bound;
    double bubble[64];
    /* --detail, per stage: the modelled device's utilization (its busy time over the window;
     * the mean over the stages is the efficiency), and per micro-batch (us) the cost model's
     * time, how much earlier than the thread took it it started (queued work), how late the
     * sleep woke, the thread's other busy time (bookkeeping and the send), and rows */
    double util[64], model_us[64], early_us[64], late_us[64], host_us[64], rows[64];
    /* coordinator, per step that did work: wall and CPU time, handling messages, forming and
     * sending micro-batches (us); steps per micro-batch sent */
    double coord_step_us, coord_cpu_us, coord_handle_us, coord_next_us, coord_send_us,
        coord_steps_per_mb;
    int P;
} decode_result;

/* Decode-heavy: streams_per_stage x P streams per replica; measured between "every stream has
 * its first token" and "the first stream ends", i.e. steady-state decode. */
static xc_status run_decode(const char *model, int P, int R, const bp_conf *bc,
                            decode_result *out) {
    int streams = bc->streams_per_stage * P * R;
    int B = bc->streams_per_stage; /* rows per decode micro-batch */
    cluster cl;
    xc_status st = cluster_start(&cl, model, P, R, bc, B);
    counter cnt = {0};
    if (st == XC_OK) {
        st = submit(&cl, &cnt, streams, bc->prompt, bc->new_tokens);
    }
    /* warm-up: every stream has produced a few tokens */
    while (st == XC_OK && atomic_load(&cnt.tokens) < streams * 3) {
        usleep(200);
    }
    for (int i = 0; i < cl.n; i++) {
        xc_worker_reset_stats(cl.ws[i].w);
    }
    atomic_store(&cl.steps, 0);
    atomic_store(&cl.step_ns, 0);
    atomic_store(&cl.step_mbs, 0);
    atomic_store(&cl.step_cpu_ns, 0);
    atomic_store(&cl.step_handle_ns, 0);
    atomic_store(&cl.step_next_ns, 0);
    atomic_store(&cl.step_send_ns, 0);
    /* the clock outside the token counts: a pause between the two reads can only lengthen the
     * window, never count tokens from outside it */
    uint64_t t0 = xc_now_ns();
    int tok0 = atomic_load(&cnt.tokens);
    int stop_at = streams * (bc->new_tokens - 4);
    while (st == XC_OK && atomic_load(&cnt.tokens) < stop_at && atomic_load(&cnt.done) == 0) {
        usleep(200);
    }
    int tok1 = atomic_load(&cnt.tokens);
    uint64_t t1 = xc_now_ns();
    double wall = (double)(t1 - t0) * 1e-9;
    if (st == XC_OK) {
        memset(out, 0, sizeof *out);
        out->P = P;
        out->tps = (tok1 - tok0) / wall;
        double full_us = xc_sim_stage_us(&cl.cost, bc->layers, true, true, B, B);
        out->ideal = (double)(P * R) * B / (full_us * 1e-6);
        out->eff = out->tps / out->ideal;
        /* what cuts between half-layer units allow: mean stage time over the slowest stage's
         * (placement's cut) */
        const xc_sim_cost *k = &cl.cost;
        xc_place_model pm = {.n_layers = bc->layers,
                             .layer_time = k->layer_us + k->layer_row_us * B,
                             .attn_time = xc_sim_unit_us(k, 0, B),
                             .ffn_time = xc_sim_unit_us(k, 1, B),
                             .first_time = k->embed_us,
                             .last_time = k->head_us + k->head_row_us * B};
        int bounds[XC_PLACE_MAX_STAGES + 1];
        double tmax = 1;
        if (xc_place_split_units(&pm, P, bounds, &tmax) == XC_OK) {
            out->bound =
                ((pm.attn_time + pm.ffn_time) * bc->layers + pm.first_time + pm.last_time) / P /
                tmax;
        }
        double steps = (double)atomic_load(&cl.steps), mbs = (double)atomic_load(&cl.step_mbs);
        out->coord_step_us = steps > 0 ? (double)atomic_load(&cl.step_ns) * 1e-3 / steps : 0;
        out->coord_steps_per_mb = mbs > 0 ? steps / mbs : 0;
        double per = steps > 0 ? 1e-3 / steps : 0;
        out->coord_cpu_us = (double)atomic_load(&cl.step_cpu_ns) * per;
        out->coord_handle_us = (double)atomic_load(&cl.step_handle_ns) * per;
        out->coord_next_us = (double)atomic_load(&cl.step_next_ns) * per;
        out->coord_send_us = (double)atomic_load(&cl.step_send_ns) * per;
        for (int i = 0; i < cl.n && i < 64; i++) {
            xc_worker_stats ws;
            xc_worker_get_stats(cl.ws[i].w, &ws);
            double b = 1.0 - (double)ws.busy_ns * 1e-9 / wall;
            int at = R == 1 && ws.stage >= 0 && ws.stage < 64 ? ws.stage : i; /* stage order */
            out->bubble[at] = b > 0 ? b : 0; /* busy can exceed the window by one send */
            double n = ws.microbatches ? (double)ws.microbatches : 1;
            out->util[at] = (double)ws.sim_model_ns * 1e-9 / wall;
            out->model_us[at] = (double)ws.sim_model_ns * 1e-3 / n;
            out->early_us[at] = (double)ws.sim_early_ns * 1e-3 / n;
            out->late_us[at] = (double)ws.sim_late_ns * 1e-3 / n;
            out->host_us[at] = ((double)ws.busy_ns + (double)ws.sim_early_ns -
                                (double)ws.sim_model_ns - (double)ws.sim_late_ns) *
                               1e-3 / n;
            out->rows[at] = (double)ws.rows / n;
        }
    }
    while (st == XC_OK && atomic_load(&cnt.done) < streams) {
        usleep(1000);
    }
    if (st == XC_OK && atomic_load(&cnt.errors) > 0) {
        st = xc_errf(XC_ERR_IO, "%d requests failed", atomic_load(&cnt.errors));
    }
    cluster_stop(&cl);
    return st;
}

static void print_detail(const decode_result *d, int n) {
    const char *what[6] = {"util", "model us", "early us", "late us", "host us", "rows"};
    const double *v[6] = {d->util, d->model_us, d->early_us, d->late_us, d->host_us, d->rows};
    for (int k = 0; k < 6; k++) {
        printf("  %-9s", what[k]);
        for (int s = 0; s < n; s++) {
            printf(k == 0 ? " %8.3f" : " %8.1f", v[k][s]);
        }
        printf("\n");
    }
    printf("  coordinator per step: %.1f us wall (%.1f CPU; handling %.1f, forming %.1f, sending "
           "%.1f), %.2f steps per micro-batch\n",
           d->coord_step_us, d->coord_cpu_us, d->coord_handle_us, d->coord_next_us,
           d->coord_send_us, d->coord_steps_per_mb);
}

/* One long prompt, one new token: seconds from submit to the token (prefill time). */
static xc_status run_long(const char *model, int P, const bp_conf *bc, double *secs,
                          double *bubble_mean) {
    cluster cl;
    xc_status st = cluster_start(&cl, model, P, 1, bc, bc->chunk);
    counter cnt = {0};
    uint64_t t0 = xc_now_ns();
    if (st == XC_OK) {
        for (int i = 0; i < cl.n; i++) {
            xc_worker_reset_stats(cl.ws[i].w);
        }
        t0 = xc_now_ns();
        st = submit(&cl, &cnt, 1, bc->long_prompt, 1);
    }
    while (st == XC_OK && atomic_load(&cnt.done) < 1) {
        usleep(200);
    }
    if (st == XC_OK) {
        *secs = (double)(atomic_load(&cnt.first_token_ns) - t0) * 1e-9;
        double b = 0;
        for (int i = 0; i < cl.n; i++) {
            xc_worker_stats ws;
            xc_worker_get_stats(cl.ws[i].w, &ws);
            b += 1.0 - (double)ws.busy_ns * 1e-9 / *secs;
        }
        *bubble_mean = b / cl.n;
        if (atomic_load(&cnt.errors) > 0) {
            st = xc_errf(XC_ERR_IO, "the long request failed");
        }
    }
    cluster_stop(&cl);
    return st;
}

xc_status xc_bench_sim_model_dir(char *dir, int layers) {
    if (!mkdtemp(dir)) {
        return xc_errf(XC_ERR_IO, "cannot make a temporary directory %s: %s", dir, strerror(errno));
    }
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        xc_status st = xc_errf(XC_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        rmdir(dir);
        return st;
    }
    fprintf(f,
            "{\"num_hidden_layers\": %d, \"hidden_size\": 4096, \"intermediate_size\": 14336,"
            " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"vocab_size\": 92544,"
            " \"max_length\": 32768, \"max_position_embeddings\": 32768}\n",
            layers);
    if (fclose(f) != 0) {
        xc_status st = xc_errf(XC_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        xc_bench_sim_model_dir_remove(dir);
        return st;
    }
    return XC_OK;
}

void xc_bench_sim_model_dir_remove(const char *dir) {
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

int xc_cmd_bench_pipeline(int argc, char **argv) {
    bp_conf bc;
    xc_status st = xc_conf_parse(&bp_spec, &bc, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench pipeline: %s\n", xc_err_last());
        return 2;
    }
    xc_log_set_level(XC_LOG_LEVEL_WARN);
    char dir[] = "/tmp/xc-bench-pipeline-XXXXXX";
    if (xc_bench_sim_model_dir(dir, bc.layers) != XC_OK) {
        fprintf(stderr, "xcpipe bench pipeline: %s\n", xc_err_last());
        return 1;
    }
    xc_sim_cost k = XC_SIM_COST_H100;
    printf("sim cost model (H100, InternLM2-7B bf16): layer %.0f us + %.2f us/row (attention "
           "%.3f of it, FFN the rest), head %.0f us + %.1f us/row, embed %.0f us; x%.1f slower for "
           "timing precision\n",
           k.layer_us, k.layer_row_us, k.attn_share, k.head_us, k.head_row_us, k.embed_us,
           bc.scale);
    printf("\ndecode-heavy: %d streams per stage, %d-row prompts, %d new tokens; ideal = P x "
           "one worker running all %d layers at the same micro-batch size\n",
           bc.streams_per_stage, bc.prompt, bc.new_tokens, bc.layers);
    printf("%-8s %10s %10s %10s %8s  %s\n", "shape", "tokens/s", "ideal", "efficiency", "bound",
           "bubble fraction per stage");
    int rc = 0;
    double tps_2 = 0;
    int Ps[3] = {2, 4, 8};
    for (int i = 0; i < 3 && rc == 0; i++) {
        decode_result d;
        st = run_decode(dir, Ps[i], 1, &bc, &d);
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe bench pipeline: P=%d: %s\n", Ps[i], xc_err_last());
            rc = 1;
            break;
        }
        if (Ps[i] == 2) {
            tps_2 = d.tps;
        }
        printf("1 x %-4d %10.0f %10.0f %10.3f %8.3f  ", Ps[i], d.tps, d.ideal, d.eff, d.bound);
        for (int s = 0; s < Ps[i]; s++) {
            printf("%s%.3f", s ? " " : "", d.bubble[s]);
        }
        printf("\n");
        if (bc.detail) {
            print_detail(&d, Ps[i]);
        }
    }
    if (rc == 0) {
        decode_result d;
        st = run_decode(dir, 2, 2, &bc, &d);
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe bench pipeline: 2 x 2: %s\n", xc_err_last());
            rc = 1;
        } else {
            printf("2 x 2    %10.0f %10.0f %10.3f %8.3f  ", d.tps, d.ideal, d.eff, d.bound);
            for (int s = 0; s < 4; s++) {
                printf("%s%.3f", s ? " " : "", d.bubble[s]);
            }
            printf("\n(bound = mean stage time / slowest stage time for cuts between half-layer "
                   "units (attention | FFN): the most any schedule can reach)\nreplicas: 2 x 2 "
                   "reaches %.2fx the throughput of 1 x 2\n",
                   d.tps / tps_2);
            if (bc.detail) {
                print_detail(&d, 4); /* both replicas' stages: stage 0, 1 of each */
            }
        }
    }
    if (rc == 0) {
        printf("\none long prompt: %d rows in chunks of %d, time to the first token\n",
               bc.long_prompt, bc.chunk);
        printf("%-8s %10s %10s %12s\n", "stages", "seconds", "speedup", "mean bubble");
        double t1 = 0;
        int Ls[4] = {1, 2, 4, 8};
        for (int i = 0; i < 4; i++) {
            double t = 0, b = 0;
            st = run_long(dir, Ls[i], &bc, &t, &b);
            if (st != XC_OK) {
                fprintf(stderr, "xcpipe bench pipeline: long P=%d: %s\n", Ls[i], xc_err_last());
                rc = 1;
                break;
            }
            if (Ls[i] == 1) {
                t1 = t;
            }
            printf("%-8d %10.3f %10.2f %12.3f\n", Ls[i], t, t1 / t, b);
        }
    }
    xc_bench_sim_model_dir_remove(dir);
    return rc;
}
