/* The coordinator's command line (xcpipe-coordinator, `xcpipe coordinator`, and the coordinator
 * half of `xcpipe serve`): one xc_conf table, SIGTERM = drain and exit 0. */
#pragma once

#include <stdbool.h>

#include "xc_coord.h"
#include "xc_http.h"

typedef struct xc_coord_flags {
    const char *model, *endpoint, *requests, *log_level;
    int stages, replicas, workers, max_rows, chunk, block_size, kv_blocks, max_inflight;
    int max_context, plora_rank;
    double dead_s, drain_s, ready_timeout_s;
    double step_timeout_s, resume_timeout_s; /* failure handling (docs/cluster.md) */
    int max_resumes, send_queue;
    bool no_vision, exit_when_done;
    bool no_prefix_cache;  /* --no-prefix-cache (xc_coord_conf) */
    bool shutdown_workers; /* on exit, tell every worker to exit too (xcpipe serve: always) */
} xc_coord_flags;

/* Parses argv into flags (XC_AGAIN after --help; XC_ERR_ARG with a message). extra/n_extra are
 * more table entries of the caller (serve's own flags) written into extra_obj. */
xc_status xc_coord_cli_parse(int argc, char **argv, xc_coord_flags *f);

/* Fills a coordinator configuration from parsed flags. */
void xc_coord_cli_conf(const xc_coord_flags *f, xc_coord_conf *out);

/* Runs a created coordinator as the command line does: the line protocol on --requests (a file,
 * a FIFO or "-" for stdin) and/or until SIGTERM/SIGINT; then drains (and stops the workers with
 * --shutdown-workers). SIGHUP reloads http's API key file (http may be NULL; handled between
 * line-protocol reads only once --requests ended). Returns the exit code. */
int xc_coord_cli_serve(xc_coord *c, const xc_coord_flags *f, xc_http *http);

/* Parse, create, serve, destroy. */
int xc_coord_cli_main(int argc, char **argv);
