/* xcpipe bench vision-serve: vision throughput of a real vision worker (in this process, on the
 * CPU backend, driven over inproc links by a fake coordinator) when --requests single-image
 * requests arrive at once: batched across requests (--vision-batch) against unbatched
 * (--vision-batch 1), image cache off, interleaved rounds. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xc_bench_ckpt.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_time.h"
#include "xc_transport.h"
#include "xc_wire.h"
#include "xc_worker.h"

typedef struct bvs_conf {
    const char *dir;
    int requests, batch, wait_ms, threads, layers, width, size, rounds;
} bvs_conf;

static const xc_conf_entry bvs_entries[] = {
    XC_CONF_INT("requests", NULL, bvs_conf, requests, 8, 1, 64,
                "single-image requests sent at once per round"),
    XC_CONF_INT("vision-batch", NULL, bvs_conf, batch, 8, 2, 1024,
                "the batched worker's --vision-batch (the other one runs with 1)"),
    XC_CONF_INT("vision-wait-ms", NULL, bvs_conf, wait_ms, 5, 0, 10000,
                "the batched worker's --vision-wait-ms"),
    XC_CONF_INT("threads", NULL, bvs_conf, threads, 0, 0, 1024, "CPU threads (0 = all)"),
    XC_CONF_INT("layers", NULL, bvs_conf, layers, 24, 1, 64, "encoder layers (ViT-L: 24)"),
    XC_CONF_INT("width", NULL, bvs_conf, width, 1024, 64, 4096, "encoder width (ViT-L: 1024)"),
    XC_CONF_INT("size", NULL, bvs_conf, size, 224, 14, 1022,
                "image size (a multiple of 14; 7B: 224, VL: 490)"),
    XC_CONF_INT("rounds", NULL, bvs_conf, rounds, 3, 1, 100,
                "timed rounds per mode, interleaved (best and median kept)"),
    XC_CONF_STR("dir", "XC_BENCH_DIR", bvs_conf, dir, NULL, NULL,
                "checkpoint directory (default /tmp/xcpipe-bench-...; written once)"),
};

static const xc_conf_spec bvs_spec = {
    .usage = "xcpipe bench vision-serve [options]",
    .summary = "Images per second of a vision worker (CLIP ViT-L/14 shapes, random bf16 weights, "
               "CPU) when --requests single-image requests arrive together: encoded in batches "
               "across requests (--vision-batch, --vision-wait-ms) and one by one (--vision-batch "
               "1), in interleaved rounds after a warm-up. The image cache is off and every image "
               "differs.",
    .entries = bvs_entries,
    .n_entries = sizeof bvs_entries / sizeof bvs_entries[0],
};

typedef struct bvs_worker {
    char cep[64], wep[64];
    xc_worker *w;
    pthread_t th;
    volatile sig_atomic_t stop;
    xc_transport *rx, *tx;
    xc_arena *arena;
    xc_msg msg;
} bvs_worker;

static void *bvs_main(void *arg) {
    bvs_worker *h = arg;
    (void)xc_worker_run(h->w, &h->stop);
    return NULL;
}

/* The next message that is not a heartbeat. */
static xc_status bvs_next(bvs_worker *h, xc_wire_msg *m) {
    for (;;) {
        xc_msg_fini(&h->msg);
        xc_arena_reset(h->arena);
        XC_TRY(xc_transport_recv_wire(h->rx, 600000, h->arena, &h->msg, m));
        if (m->kind != XC_WIRE_KIND_CONTROL || m->u.control.kind != XC_WIRE_CTL_HEARTBEAT) {
            return XC_OK;
        }
    }
}

static xc_status bvs_start(bvs_worker *h, const char *tag, const char *dir, const bvs_conf *c,
                           int batch) {
    memset(h, 0, sizeof *h);
    snprintf(h->cep, sizeof h->cep, "inproc://bvs-coord-%s", tag);
    snprintf(h->wep, sizeof h->wep, "inproc://bvs-worker-%s", tag);
    /* deep queues: the fake coordinator sends every request before it reads any reply */
    static const xc_transport_conf tconf = {
        .hwm = 256, .linger_ms = 1000, .max_frame_bytes = (size_t)1 << 30};
    XC_TRY(xc_transport_open(h->cep, XC_TRANSPORT_RECV, &tconf, &h->rx));
    XC_TRY(xc_arena_create(1 << 16, &h->arena));
    xc_worker_conf wc = {.coordinator = h->cep,
                         .endpoint = h->wep,
                         .id = tag,
                         .backend = "cpu",
                         .n_threads = c->threads,
                         .heartbeat_s = 5,
                         .hang_s = 3600,
                         .tconf = &tconf,
                         .send_timeout_ms = 60000,
                         .role = XC_WIRE_ROLE_VISION,
                         .vision_batch = batch,
                         .vision_wait_ms = batch > 1 ? c->wait_ms : 0};
    XC_TRY(xc_worker_create(&wc, &h->w));
    if (pthread_create(&h->th, NULL, bvs_main, h) != 0) {
        return xc_errf(XC_ERR_IO, "cannot start the worker thread");
    }
    xc_wire_msg m;
    XC_TRY(bvs_next(h, &m)); /* Register */
    XC_TRY(xc_transport_open(h->wep, XC_TRANSPORT_SEND, &tconf, &h->tx));
    xc_wire_msg a = {.kind = XC_WIRE_KIND_CONTROL,
                     .u.control = {.kind = XC_WIRE_CTL_ASSIGN,
                                   .u.assign = {.role = XC_WIRE_ROLE_VISION,
                                                .n_stages = 1,
                                                .n_layers = 1,
                                                .model_path = dir}}};
    XC_TRY(xc_transport_send_wire(h->tx, &a, NULL, 0, 2000));
    XC_TRY(bvs_next(h, &m));
    if (m.kind != XC_WIRE_KIND_CONTROL || m.u.control.kind != XC_WIRE_CTL_READY) {
        return xc_errf(XC_ERR_PROTO, "the vision worker did not get ready");
    }
    return XC_OK;
}

static void bvs_stop(bvs_worker *h) {
    if (h->w) {
        h->stop = 1;
        pthread_join(h->th, NULL);
        xc_worker_destroy(h->w);
    }
    xc_msg_fini(&h->msg);
    xc_transport_close(h->tx);
    xc_transport_close(h->rx);
    xc_arena_destroy(h->arena);
}

static double bvs_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sends n single-image frames at once and waits for the n replies: wall seconds, and the
 * process's CPU seconds (every thread; a loaded machine stretches the wall time, much less the
 * CPU time). */
static xc_status bvs_round(bvs_worker *h, const float *px, int n, int S, uint64_t *mb, double *secs,
                           double *cpu) {
    static const uint32_t b0 = 0;
    size_t per = 3u * (size_t)S * S;
    double t0 = xc_now_s(), c0 = bvs_cpu_s();
    for (int i = 0; i < n; i++) {
        xc_wire_seq seq = {
            .id = ++*mb, .n_tokens = 3u * (uint32_t)S, .n_blocks = 1, .block_table = &b0};
        xc_wire_msg f = {
            .kind = XC_WIRE_KIND_FORWARD,
            .u.forward = {
                .microbatch_id = *mb,
                .kv_block_size = 4096,
                .n_seqs = 1,
                .seqs = &seq,
                .payload = {.dtype = XC_DTYPE_F32, .rows = 3u * (uint32_t)S, .cols = (uint32_t)S}}};
        xc_frame fr = {.data = (void *)(px + (size_t)i * per), .len = per * sizeof(float)};
        XC_TRY(xc_transport_send_wire(h->tx, &f, &fr, 1, 60000));
    }
    for (int got = 0; got < n;) {
        xc_wire_msg m;
        XC_TRY(bvs_next(h, &m));
        if (m.kind == XC_WIRE_KIND_FORWARD) {
            got++;
        } else if (m.kind == XC_WIRE_KIND_CONTROL && m.u.control.kind == XC_WIRE_CTL_ERROR) {
            return xc_errf(XC_ERR_PROTO, "vision worker: %s", m.u.control.u.error.message);
        }
    }
    *secs = xc_now_s() - t0;
    *cpu = bvs_cpu_s() - c0;
    return XC_OK;
}

static int bvs_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int xc_cmd_bench_vision_serve(int argc, char **argv) {
    bvs_conf c;
    xc_status st = xc_conf_parse(&bvs_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench vision-serve: %s\n", xc_err_last());
        return 2;
    }
    if (c.size % 14 != 0) {
        fprintf(stderr, "xcpipe bench vision-serve: --size %d is not a multiple of 14\n", c.size);
        return 2;
    }
    xc_log_set_level(XC_LOG_LEVEL_WARN);
    xc_tiny_conf tc;
    xc_bench_vision_conf(&tc, c.width, c.layers, XC_DTYPE_BF16);
    tc.img_size = c.size;
    char stamp[128], dir[512];
    snprintf(stamp, sizeof stamp, "vserve-w%d-l%d-s%d", c.width, c.layers, c.size);
    snprintf(dir, sizeof dir, "%s", c.dir ? c.dir : "");
    if (!c.dir) {
        snprintf(dir, sizeof dir, "/tmp/xcpipe-bench-%s", stamp);
    }
    st = xc_bench_ensure_ckpt(dir, &tc, stamp);
    if (st != XC_OK) {
        xc_cli_report("bench vision-serve", dir, st);
        return 1;
    }
    int S = c.size, n = c.requests;
    size_t per = 3u * (size_t)S * S;
    float *px = xc_malloc((size_t)n * per * sizeof(float));
    double *t[2] = {xc_calloc((size_t)c.rounds, sizeof(double)),
                    xc_calloc((size_t)c.rounds, sizeof(double))};
    double *cs[2] = {xc_calloc((size_t)c.rounds, sizeof(double)),
                     xc_calloc((size_t)c.rounds, sizeof(double))};
    bvs_worker wk[2];
    memset(wk, 0, sizeof wk);
    if (!px || !t[0] || !t[1] || !cs[0] || !cs[1]) {
        st = XC_ERR_NOMEM;
        goto done;
    }
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)n * per; i++) { /* distinct images: nothing is shared */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        px[i] = (float)((double)(x >> 11) * 0x1p-53 * 4.0 - 2.0);
    }
    static const char *tags[2] = {"unbatched", "batched"};
    st = bvs_start(&wk[0], tags[0], dir, &c, 1);
    if (st == XC_OK) {
        st = bvs_start(&wk[1], tags[1], dir, &c, c.batch);
    }
    printf("vision worker, CLIP width %d, %d layers, %dx%d images, bf16 weights, %d threads: %d "
           "single-image requests at once; batched: --vision-batch %d --vision-wait-ms %d\n",
           c.width, c.layers, S, S, c.threads, n, c.batch, c.wait_ms);
    uint64_t mb = 0;
    double warm = 0, warm_cpu = 0;
    for (int k = 0; k < 2 && st == XC_OK; k++) { /* warm-up: scratch sized, pages touched */
        st = bvs_round(&wk[k], px, n, S, &mb, &warm, &warm_cpu);
    }
    for (int r = 0; r < c.rounds && st == XC_OK; r++) {
        for (int k = 0; k < 2 && st == XC_OK; k++) {
            st = bvs_round(&wk[k], px, n, S, &mb, &t[k][r], &cs[k][r]);
        }
    }
    if (st == XC_OK) {
        double best[2], med[2], cbest[2];
        for (int k = 0; k < 2; k++) {
            qsort(t[k], (size_t)c.rounds, sizeof(double), bvs_cmp);
            qsort(cs[k], (size_t)c.rounds, sizeof(double), bvs_cmp);
            best[k] = t[k][0];
            med[k] = t[k][c.rounds / 2];
            cbest[k] = cs[k][0];
            xc_worker_stats ws;
            xc_worker_get_stats(wk[k].w, &ws);
            printf("%-10s wall: best %8.3f s (%6.2f images/s), median %8.3f s; CPU: best %8.3f s "
                   "(%6.2f images per CPU-s); %llu images in %llu encode calls\n",
                   tags[k], best[k], n / best[k], med[k], cbest[k], n / cbest[k],
                   (unsigned long long)ws.vision_encoded, (unsigned long long)ws.vision_batches);
        }
        printf("batched / unbatched throughput: wall best %.2fx, wall median %.2fx, per CPU-second "
               "%.2fx\n",
               best[0] / best[1], med[0] / med[1], cbest[0] / cbest[1]);
    }
done:
    bvs_stop(&wk[0]);
    bvs_stop(&wk[1]);
    xc_free(px);
    xc_free(t[0]);
    xc_free(t[1]);
    xc_free(cs[0]);
    xc_free(cs[1]);
    if (st != XC_OK) {
        xc_cli_report("bench vision-serve", dir, st);
        return 1;
    }
    return 0;
}
