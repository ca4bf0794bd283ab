/* Coordinator command line: config table, signals, the serving loop around xc_coord. */
#include "xc_coord_cli.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "xc_conf.h"
#include "xc_coord_lines.h"
#include "xc_http.h"
#include "xc_log.h"

static const xc_conf_entry coord_entries[] = {
    XC_CONF_STR("model", "XC_MODEL", xc_coord_flags, model, NULL, NULL,
                "model directory (config.json; workers load the weights from the same path)"),
    XC_CONF_STR("endpoint", "XC_COORD_ENDPOINT", xc_coord_flags, endpoint, "tcp://127.0.0.1:5555",
                NULL, "coordinator mailbox: tcp://HOST:PORT, ipc:///PATH or mpi://0"),
    XC_CONF_INT("stages", "XC_STAGES", xc_coord_flags, stages, 0, 0, 64,
                "decoder stages per pipeline (0 = fewest that fit)"),
    XC_CONF_INT("replicas", "XC_REPLICAS", xc_coord_flags, replicas, 0, 0, 64,
                "pipelines (0 = as many as the workers allow)"),
    XC_CONF_INT("workers", "XC_WORKERS", xc_coord_flags, workers, 0, 0, 512,
                "workers to wait for before placing, vision included (0 = stages x replicas "
                "+ vision)"),
    XC_CONF_BOOL("no-vision", "XC_NO_VISION", xc_coord_flags, no_vision, 0,
                 "serve text only (no vision worker)"),
    XC_CONF_FLOAT("dead-timeout", "XC_DEAD_TIMEOUT", xc_coord_flags, dead_s, 3.0, 0.05, 3600,
                  "seconds without a heartbeat after which a worker is dead"),
    XC_CONF_FLOAT(
        "step-timeout", "XC_STEP_TIMEOUT", xc_coord_flags, step_timeout_s, 0, 0, 86400,
        "seconds a micro-batch may take before its replica is failed and re-formed "
        "(0 = 20 x its measured expected time, at least 10 s; before a measurement its rows "
        "x the replica's weight bytes at 1 GB/s, at least 60 s)"),
    XC_CONF_INT("max-resumes", "XC_MAX_RESUMES", xc_coord_flags, max_resumes, 3, 0, 1000,
                "times a request is re-prefilled on another replica after losing its own "
                "(0 = fail it)"),
    XC_CONF_FLOAT("resume-timeout", "XC_RESUME_TIMEOUT", xc_coord_flags, resume_timeout_s, 30, 0.1,
                  86400, "seconds a resumed request may wait for a replica before it fails"),
    XC_CONF_INT("send-queue", "XC_SEND_QUEUE", xc_coord_flags, send_queue, 64, 1, 65536,
                "messages queued per worker while its link is full (a full queue = slow "
                "worker, never waited for)"),
    XC_CONF_INT("max-rows", "XC_MAX_ROWS", xc_coord_flags, max_rows, 256, 1, 65536,
                "rows (tokens) per micro-batch"),
    XC_CONF_INT("chunk", "XC_CHUNK", xc_coord_flags, chunk, 128, 1, 65536,
                "prefill rows of one sequence per micro-batch"),
    XC_CONF_INT("block-size", "XC_BLOCK_SIZE", xc_coord_flags, block_size, 16, 1, 4096,
                "KV tokens per block"),
    XC_CONF_INT("kv-blocks", "XC_KV_BLOCKS", xc_coord_flags, kv_blocks, 4096, 1, 1 << 24,
                "KV blocks per stage at most (also limited by worker memory)"),
    XC_CONF_BOOL("no-prefix-cache", "XC_NO_PREFIX_CACHE", xc_coord_flags, no_prefix_cache, 0,
                 "do not reuse the KV blocks of equal prompt prefixes (image-aware prefix "
                 "caching is on by default)"),
    XC_CONF_INT("max-inflight", "XC_MAX_INFLIGHT", xc_coord_flags, max_inflight, 0, 0, 1024,
                "micro-batches in flight per pipeline (0 = stages + 1)"),
    XC_CONF_INT("max-context", "XC_MAX_CONTEXT", xc_coord_flags, max_context, 0, 0, 1 << 24,
                "tokens per sequence, prompt + reply (0 = config max_length; at most "
                "max_position_embeddings; prompts stay within max_length)"),
    XC_CONF_INT("plora-rank", "XC_PLORA_RANK", xc_coord_flags, plora_rank, 256, 0, 65536,
                "PLoRA rank assumed by the placement cost model"),
    XC_CONF_STR("requests", "XC_REQUESTS", xc_coord_flags, requests, NULL, NULL,
                "line-protocol requests from this file or FIFO ('-' = stdin); answers on stdout"),
    XC_CONF_BOOL("exit-when-done", "XC_EXIT_WHEN_DONE", xc_coord_flags, exit_when_done, 0,
                 "exit (and stop the workers) when --requests reaches its end"),
    XC_CONF_BOOL("shutdown-workers", "XC_SHUTDOWN_WORKERS", xc_coord_flags, shutdown_workers, 0,
                 "on exit (SIGTERM, --exit-when-done) tell every worker to exit too; off: the "
                 "workers stay up and a new coordinator on this endpoint adopts them"),
    XC_CONF_FLOAT("drain-timeout", "XC_DRAIN_TIMEOUT", xc_coord_flags, drain_s, 10, 0, 3600,
                  "on SIGTERM, seconds to let in-flight requests finish"),
    XC_CONF_FLOAT("ready-timeout", "XC_READY_TIMEOUT", xc_coord_flags, ready_timeout_s, 0, 0, 86400,
                  "exit 1 if the cluster is not ready after this (0 = wait forever)"),
    XC_CONF_STR("log-level", "XC_LOG_LEVEL", xc_coord_flags, log_level, "info",
                "debug|info|warn|error|off", "log threshold"),
};

static const xc_conf_spec coord_spec = {
    "xcpipe-coordinator --model DIR [options]",
    "The cluster coordinator: waits for workers, places the model, schedules requests. Requests "
    "come through the library API or the line protocol of --requests.",
    coord_entries, sizeof coord_entries / sizeof coord_entries[0]};

static volatile sig_atomic_t g_stop, g_reload;

static void on_signal(int sig) {
    if (sig == SIGHUP) {
        g_reload = 1;
    } else {
        g_stop = 1;
    }
}

xc_status xc_coord_cli_parse(int argc, char **argv, xc_coord_flags *f) {
    XC_TRY(xc_conf_parse(&coord_spec, f, argc, argv, NULL));
    if (!f->model) {
        return xc_errf(XC_ERR_ARG, "--model is required (see --help)");
    }
    return XC_OK;
}

void xc_coord_cli_conf(const xc_coord_flags *f, xc_coord_conf *out) {
    *out = (xc_coord_conf){.model_dir = f->model,
                           .endpoint = f->endpoint,
                           .stages = f->stages,
                           .replicas = f->replicas,
                           .workers = f->workers,
                           .no_vision = f->no_vision,
                           .dead_s = f->dead_s,
                           .max_rows = f->max_rows,
                           .chunk = f->chunk,
                           .block_size = f->block_size,
                           .kv_blocks = f->kv_blocks,
                           .max_inflight = f->max_inflight,
                           .max_context = f->max_context,
                           .plora_rank = f->plora_rank,
                           .step_timeout_s = f->step_timeout_s,
                           .max_resumes = f->max_resumes,
                           .resume_timeout_s = f->resume_timeout_s,
                           .send_queue = f->send_queue,
                           .no_prefix_cache = f->no_prefix_cache};
}

int xc_coord_cli_serve(xc_coord *c, const xc_coord_flags *f, xc_http *http) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL); /* reload the API key file (key rotation without a restart) */
    signal(SIGPIPE, SIG_IGN);
    int rc = 0;
    if (f->ready_timeout_s > 0 && xc_coord_wait_ready(c, f->ready_timeout_s) != XC_OK) {
        XC_LOG_ERROR("%s", xc_err_last());
        rc = 1;
    } else if (f->requests) {
        FILE *in = strcmp(f->requests, "-") ? fopen(f->requests, "r") : stdin;
        if (!in) {
            XC_LOG_ERROR("cannot open --requests %s", f->requests);
            rc = 1;
        } else {
            xc_coord_lines_run(c, in, stdout);
            if (in != stdin) {
                fclose(in);
            }
        }
    }
    if (rc == 0 && !(f->requests && f->exit_when_done)) {
        while (!g_stop) {
            if (g_reload) {
                g_reload = 0;
                if (http) {
                    (void)xc_http_reload_keys(http); /* logs what happened */
                } else {
                    XC_LOG_WARN("SIGHUP: no HTTP API, nothing to reload");
                }
            }
            usleep(50000);
        }
        XC_LOG_INFO("SIGTERM: draining for up to %.1f s", f->drain_s);
    }
    xc_coord_stop(c, f->drain_s, f->shutdown_workers);
    return rc;
}

int xc_coord_cli_main(int argc, char **argv) {
    xc_coord_flags f;
    xc_http_flags hf; /* api helper: the HTTP flags come out of argv first */
    if (xc_http_cli_extract(&argc, argv, &hf) != XC_OK) {
        fprintf(stderr, "xcpipe-coordinator: %s\n", xc_err_last());
        return 2;
    }
    xc_status st = xc_coord_cli_parse(argc, argv, &f);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe-coordinator: %s\n", xc_err_last());
        return 2;
    }
    xc_log_set_level((xc_log_level)xc_log_parse_level(f.log_level));
    xc_log_set_role("C");
    xc_coord_conf cc;
    xc_coord_cli_conf(&f, &cc);
    xc_coord *c = NULL;
    st = xc_coord_create(&cc, &c);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe-coordinator: %s\n", xc_err_last());
        return st == XC_ERR_ARG ? 2 : 1;
    }
    xc_http *http = NULL; /* api helper: the OpenAI-compatible HTTP API */
    if (xc_http_start_if(&hf, f.requests != NULL, f.model, c, &http) != XC_OK) {
        fprintf(stderr, "xcpipe-coordinator: %s\n", xc_err_last());
        xc_coord_destroy(c);
        return 1;
    }
    int rc = xc_coord_cli_serve(c, &f, http);
    xc_http_destroy(http);
    xc_coord_destroy(c);
    return rc;
}
