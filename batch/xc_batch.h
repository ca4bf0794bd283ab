/* The batch runner: reads an OpenAI Batch JSONL file, checks every line up front, skips the
 * custom_ids already answered in the output files, sends the rest to an OpenAI-compatible
 * endpoint with C requests in flight (libcurl multi), retries retryable failures with backoff,
 * appends one record per request, shows progress, and stops cleanly when asked.
 * See docs/batch.md. */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "xc_batch_output.h"
#include "xc_status.h"

typedef enum xc_batch_progress {
    XC_BATCH_PROGRESS_AUTO,  /* a bar when log is a terminal, else lines */
    XC_BATCH_PROGRESS_BAR,   /* one redrawn line */
    XC_BATCH_PROGRESS_LINES, /* one line every progress_interval_s */
    XC_BATCH_PROGRESS_OFF,
} xc_batch_progress;

typedef struct xc_batch_conf {
    const char *input;      /* the JSONL requests */
    const char *output;     /* records (appended; created when missing) */
    const char *errors;     /* failed records; NULL = into output too */
    const char *endpoint;   /* base URL, "http://127.0.0.1:8000" (a trailing "/" or "/v1" is ok) */
    const char *api_key;    /* sent as "Authorization: Bearer KEY"; NULL = none */
    int concurrency;        /* requests in flight */
    int max_retries;        /* retries of one request after retryable failures */
    double retry_base_s;    /* first backoff; doubles per retry (with jitter) */
    double retry_max_s;     /* backoff cap, also for a server's Retry-After */
    double timeout_s;       /* one HTTP request at most (0 = no limit) */
    int fsync_every;        /* 1 = fsync every record, N = every N, 0 = only at the end */
    size_t max_image_bytes; /* an image file referenced by path at most */
    const char *set_model;  /* replaces every body's "model"; NULL = keep; bodies without a
                               model get the endpoint's first /v1/models id */
    bool retry_errors;      /* re-run requests whose records are failures (they are removed) */
    const char *documents_dir; /* compositions: each document goes to DIR/<custom_id>/ (issue 18);
                                  NULL = only the record (images inline) */
    xc_batch_progress progress;
    double progress_interval_s;       /* lines mode */
    FILE *log;                        /* progress, line errors and the summary (stderr) */
    volatile sig_atomic_t *stop;      /* set (signal): admit nothing more, finish in flight */
    volatile sig_atomic_t *abort_now; /* set: drop in-flight requests too (they stay undone) */
    bool (*alive)(void *ud);          /* optional: false = the server is gone, stop */
    void *alive_ud;
    /* optional: called once, only when there is something to send, before the first request:
     * starts a server and sets *endpoint and *api_key (views valid for the run), which replace
     * the fields above. An error ends the run with that status. */
    xc_status (*start)(void *ud, const char **endpoint, const char **api_key);
    void *start_ud;
} xc_batch_conf;

/* Sets the defaults: concurrency 8, 8 retries from 0.5 s up to 30 s, timeout 600 s, fsync every
 * record, images up to 20 MiB, progress auto every 10 s, log stderr. */
void xc_batch_conf_defaults(xc_batch_conf *c);

typedef struct xc_batch_summary {
    size_t lines;      /* non-blank input lines */
    size_t invalid;    /* refused by the checks (recorded when the line had a custom_id) */
    size_t duplicates; /* repeated custom_ids (refused up front, not recorded) */
    size_t skipped;    /* already answered in the output files */
    size_t to_run;     /* requests this run had to send */
    size_t ok;         /* records with status 200 written by this run */
    size_t failed;     /* failure records written by this run (invalid lines excluded) */
    size_t retries;    /* retried attempts */
    size_t left;       /* still unanswered at the end (stopped or interrupted) */
    unsigned long long prompt_tokens, completion_tokens;
    double wall_s;    /* the whole run (a local server's start included) */
    double run_s;     /* from the first request to the end: the rates use this */
    bool interrupted; /* *stop or *abort_now was set */
    char fatal[512];  /* why the run stopped early ("" = it did not) */
    xc_batch_output_recovery rec_out, rec_err;
} xc_batch_summary;

/* Runs the batch. Returns XC_OK when every line was handled or the run was interrupted (see
 * out->interrupted); XC_ERR_IO when the run stopped early (out->fatal: unreachable endpoint,
 * refused API key, lost server, an output write failed) or a file could not be opened;
 * XC_ERR_ARG for a bad configuration. out is filled in every case. */
xc_status xc_batch_run(const xc_batch_conf *c, xc_batch_summary *out);

/* The end-of-run summary (requests ok / failed, tokens, wall time, what is left). */
void xc_batch_summary_print(FILE *f, const xc_batch_summary *s);

/* The delay before retry number attempt (1, 2, ...): retry_after_s when the server sent one
 * (>= 0), else base * 2^(attempt-1), capped at max, times jitter (a number in [0, 1) mapped to
 * 0.75..1.25 of the exponential delay; Retry-After is not jittered). */
double xc_batch_backoff(int attempt, double retry_after_s, double base, double max, double jitter);

/* Whether a failure is worth retrying: HTTP 408, 429, 502, 503, 504, or (http_status 0) a
 * connection or timeout error. */
bool xc_batch_retryable(int http_status, int curl_code);
