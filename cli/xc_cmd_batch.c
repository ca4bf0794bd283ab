/* xcpipe batch: runs an OpenAI Batch JSONL file against an OpenAI-compatible endpoint, or against
 * a local cluster it starts itself (--model), resumably. The logic is in batch/ (xc_batch.h). */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_batch.h"
#include "xc_batch_server.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_log.h"

typedef struct batch_flags {
    const char *input, *output, *errors, *endpoint, *api_key_file, *model, *fsync, *set_model;
    const char *progress, *serve_log, *log_level, *documents_dir;
    int stages, concurrency, max_retries, max_image_mb;
    double retry_base_s, retry_max_s, timeout_s, progress_s, ready_timeout_s, stop_grace_s;
    bool retry_errors;
    xc_conf_list serve_args;
} batch_flags;

static const xc_conf_entry batch_entries[] = {
    XC_CONF_STR("input", "XC_BATCH_INPUT", batch_flags, input, NULL, NULL,
                "requests: OpenAI Batch JSONL (custom_id, method, url, body)"),
    XC_CONF_STR("output", "XC_BATCH_OUTPUT", batch_flags, output, NULL, NULL,
                "records, one line per request (appended; rerun to resume)"),
    XC_CONF_STR("errors", "XC_BATCH_ERRORS", batch_flags, errors, NULL, NULL,
                "failed records go here instead of --output"),
    XC_CONF_STR("endpoint", "XC_BATCH_ENDPOINT", batch_flags, endpoint, NULL, NULL,
                "base URL of an OpenAI-compatible server (http://HOST:PORT)"),
    XC_CONF_STR("api-key-file", "XC_BATCH_API_KEY_FILE", batch_flags, api_key_file, NULL, NULL,
                "file whose first non-comment line is the API key (else env XC_BATCH_API_KEY)"),
    XC_CONF_STR("model", "XC_BATCH_MODEL", batch_flags, model, NULL, NULL,
                "start a local cluster on this model directory (instead of --endpoint)"),
    XC_CONF_INT("stages", "XC_BATCH_STAGES", batch_flags, stages, 1, 1, 64,
                "decoder stages of the local cluster"),
    XC_CONF_LIST("serve-arg", "XC_BATCH_SERVE_ARGS", batch_flags, serve_args,
                 "one more `xcpipe serve` argument for the local cluster (repeat)"),
    XC_CONF_STR("serve-log", "XC_BATCH_SERVE_LOG", batch_flags, serve_log, NULL, NULL,
                "the local cluster's log (default: OUTPUT.serve.log)"),
    XC_CONF_FLOAT("ready-timeout", "XC_BATCH_READY_TIMEOUT", batch_flags, ready_timeout_s, 600, 1,
                  86400, "seconds the local cluster may take to become ready"),
    XC_CONF_FLOAT("stop-grace", "XC_BATCH_STOP_GRACE", batch_flags, stop_grace_s, 60, 0.1, 3600,
                  "seconds the local cluster may take to stop before it is killed"),
    XC_CONF_INT("concurrency", "XC_BATCH_CONCURRENCY", batch_flags, concurrency, 8, 1, 4096,
                "requests in flight"),
    XC_CONF_INT("max-retries", "XC_BATCH_MAX_RETRIES", batch_flags, max_retries, 8, 0, 1000,
                "retries per request after 429, 503, 502, 504, 408 or a lost connection"),
    XC_CONF_FLOAT("retry-base", "XC_BATCH_RETRY_BASE", batch_flags, retry_base_s, 0.5, 0.001, 3600,
                  "first backoff in seconds (doubles per retry, with jitter)"),
    XC_CONF_FLOAT("retry-max", "XC_BATCH_RETRY_MAX", batch_flags, retry_max_s, 30, 0.001, 86400,
                  "backoff cap in seconds (also caps a server's Retry-After)"),
    XC_CONF_FLOAT("timeout", "XC_BATCH_TIMEOUT", batch_flags, timeout_s, 600, 0, 86400,
                  "seconds one request may take (0 = no limit)"),
    XC_CONF_STR("fsync", "XC_BATCH_FSYNC", batch_flags, fsync, "line", NULL,
                "line (fsync every record), N (every N records) or exit (only at the end)"),
    XC_CONF_INT("max-image-mb", "XC_BATCH_MAX_IMAGE_MB", batch_flags, max_image_mb, 20, 1, 1024,
                "image files referenced by path at most (MiB)"),
    XC_CONF_STR("set-model", "XC_BATCH_SET_MODEL", batch_flags, set_model, NULL, NULL,
                "replace every body's model (bodies without one get the server's)"),
    XC_CONF_STR("documents-dir", "XC_BATCH_DOCUMENTS_DIR", batch_flags, documents_dir, NULL, NULL,
                "compositions (url /v1/compositions): write each document to DIR/<custom_id>/ "
                "(article.md, images, composition.json)"),
    XC_CONF_BOOL("retry-errors", "XC_BATCH_RETRY_ERRORS", batch_flags, retry_errors, 0,
                 "run again the requests whose records are failures (their records go)"),
    XC_CONF_STR("progress", "XC_BATCH_PROGRESS", batch_flags, progress, "auto",
                "auto|bar|lines|off", "progress on stderr (auto: a bar on a terminal)"),
    XC_CONF_FLOAT("progress-interval", "XC_BATCH_PROGRESS_INTERVAL", batch_flags, progress_s, 10,
                  0.1, 86400, "seconds between progress lines (not on a terminal)"),
    XC_CONF_STR("log-level", "XC_LOG_LEVEL", batch_flags, log_level, "warn",
                "debug|info|warn|error|off", "log threshold"),
};

static const xc_conf_spec batch_spec = {
    "xcpipe batch --input REQUESTS.jsonl --output RESULTS.jsonl [--errors ERRORS.jsonl] "
    "(--endpoint URL [--api-key-file F] | --model DIR [--stages N]) [--concurrency C]",
    "Sends every request of an OpenAI Batch input file to /v1/chat/completions (or "
    "/v1/compositions, see --documents-dir) and writes one "
    "OpenAI Batch output record per request. Rerunning the same command skips the custom_ids "
    "already in the output (resume after a crash or ^C). Image files in bodies are paths "
    "relative to the input file. Exit: 0 all ok, 1 failures or bad lines, 2 usage, 130 "
    "interrupted. See docs/batch.md.",
    batch_entries, sizeof batch_entries / sizeof batch_entries[0]};

static int parse_fsync(const char *s) {
    if (!strcmp(s, "line")) {
        return 1;
    }
    if (!strcmp(s, "exit")) {
        return 0;
    }
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= 1 && v <= 1000000 ? (int)v : -1;
}

int xc_cmd_batch(int argc, char **argv) {
    batch_flags f;
    xc_status st = xc_conf_parse(&batch_spec, &f, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe batch: %s\n", xc_err_last());
        return 2;
    }
    xc_log_set_level((xc_log_level)xc_log_parse_level(f.log_level));
    if (!f.input || !f.output) {
        fprintf(stderr, "xcpipe batch: --input and --output are required (see --help)\n");
        return 2;
    }
    if (!f.endpoint == !f.model) {
        fprintf(stderr, "xcpipe batch: give exactly one of --endpoint URL and --model DIR\n");
        return 2;
    }
    int fsync_every = parse_fsync(f.fsync);
    if (fsync_every < 0) {
        fprintf(stderr, "xcpipe batch: --fsync '%s': use line, exit or a number of records\n",
                f.fsync);
        return 2;
    }
    char key[600] = "";
    if (f.api_key_file && xc_cli_read_key("batch", f.api_key_file, key, sizeof key) != 0) {
        return 2;
    }
    if (!f.api_key_file && getenv("XC_BATCH_API_KEY")) {
        if (xc_cli_check_key("batch", "XC_BATCH_API_KEY", getenv("XC_BATCH_API_KEY")) != 0) {
            return 2;
        }
        snprintf(key, sizeof key, "%s", getenv("XC_BATCH_API_KEY"));
    }
    if (f.model && key[0]) {
        fprintf(stderr, "xcpipe batch: --model starts its own server with its own key; "
                        "--api-key-file is for --endpoint\n");
        return 2;
    }

    xc_batch_conf c;
    xc_batch_conf_defaults(&c);
    c.input = f.input;
    c.output = f.output;
    c.errors = f.errors;
    c.endpoint = f.endpoint;
    c.api_key = key[0] ? key : NULL;
    c.concurrency = f.concurrency;
    c.max_retries = f.max_retries;
    c.retry_base_s = f.retry_base_s;
    c.retry_max_s = f.retry_max_s;
    c.timeout_s = f.timeout_s;
    c.fsync_every = fsync_every;
    c.max_image_bytes = (size_t)f.max_image_mb << 20;
    c.set_model = f.set_model;
    c.retry_errors = f.retry_errors;
    c.documents_dir = f.documents_dir;
    c.progress = !strcmp(f.progress, "bar")     ? XC_BATCH_PROGRESS_BAR
                 : !strcmp(f.progress, "lines") ? XC_BATCH_PROGRESS_LINES
                 : !strcmp(f.progress, "off")   ? XC_BATCH_PROGRESS_OFF
                                                : XC_BATCH_PROGRESS_AUTO;
    c.progress_interval_s = f.progress_s;
    xc_cli_stop_signals(&c.stop, &c.abort_now);

    xc_batch_server_lazy local = {0};
    char log_path[PATH_MAX];
    if (f.model) {
        snprintf(log_path, sizeof log_path, "%s%s", f.serve_log ? f.serve_log : f.output,
                 f.serve_log ? "" : ".serve.log");
        xc_batch_server_conf sc = {.model = f.model,
                                   .stages = f.stages,
                                   .extra = f.serve_args.items,
                                   .n_extra = f.serve_args.n,
                                   .log_path = log_path,
                                   .ready_timeout_s = f.ready_timeout_s,
                                   .abort = c.stop};
        if (xc_batch_server_lazy_init(&local, "xcpipe batch", &sc, &c.start, &c.start_ud, &c.alive,
                                      &c.alive_ud) != XC_OK) {
            fprintf(stderr, "xcpipe batch: %s\n", xc_err_last());
            return 2;
        }
    }

    xc_batch_summary s;
    st = xc_batch_run(&c, &s);
    char why[600];
    snprintf(why, sizeof why, "%s", st != XC_OK ? xc_err_last() : "");
    xc_status sst = XC_OK;
    if (local.srv) {
        fprintf(stderr, "xcpipe batch: stopping the local cluster\n");
        sst = xc_batch_server_stop(local.srv, f.stop_grace_s);
        if (sst != XC_OK) {
            fprintf(stderr, "xcpipe batch: %s (log: %s)\n", xc_err_last(), log_path);
        }
    }
    if (st != XC_OK && !s.fatal[0]) {
        /* nothing ran: a bad flag value or a file that cannot be opened */
        fprintf(stderr, "xcpipe batch: %s\n", why);
        return 2;
    }
    xc_batch_summary_print(stderr, &s);
    if (s.interrupted) {
        return 130;
    }
    if (st != XC_OK || sst != XC_OK || s.failed || s.invalid || s.duplicates || s.left) {
        return 1;
    }
    return 0;
}
