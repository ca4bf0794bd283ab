/* The local cluster a batch run starts for itself (--model DIR --stages N): `xcpipe serve` as a
 * child process on a free loopback port with a random API key, ready when /ready answers 200,
 * stopped with SIGTERM (and SIGKILL after a grace period). The child gets SIGTERM if the batch
 * process dies, and runs in its own process group so a terminal's ^C reaches only the batch. */
#pragma once

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>

#include "xc_status.h"

typedef struct xc_batch_server xc_batch_server;

typedef struct xc_batch_server_conf {
    const char *exe;          /* the xcpipe binary (its `serve` subcommand runs) */
    const char *model;        /* model directory */
    int stages;               /* decoder stages */
    const char *const *extra; /* (n_extra) more `xcpipe serve` arguments */
    int n_extra;
    const char *log_path;         /* the server's stdout and stderr (appended); NULL = /dev/null */
    double ready_timeout_s;       /* start-up at most */
    volatile sig_atomic_t *abort; /* optional: non-zero stops the wait for readiness */
} xc_batch_server_conf;

/* Starts the server and waits until it is ready. XC_ERR_ARG for a missing model directory,
 * XC_ERR_IO when it cannot start or exits (the message quotes the end of its log),
 * XC_ERR_TIMEOUT when it is not ready in time (it is stopped then). */
xc_status xc_batch_server_start(const xc_batch_server_conf *c, xc_batch_server **out);

/* "http://127.0.0.1:PORT" and the API key it accepts (views valid until stop). */
const char *xc_batch_server_url(const xc_batch_server *s);
const char *xc_batch_server_key(const xc_batch_server *s);

/* False once the server process has exited (s is an xc_batch_server *; fits
 * xc_batch_conf.alive). */
bool xc_batch_server_alive(void *s);

/* A server started on first use, for xc_batch_conf.start / .alive (xcpipe batch --model, xcpipe
 * eval --model): `who` names the command in the progress lines on stderr; srv is NULL until
 * started and is stopped by the caller with xc_batch_server_stop. */
typedef struct xc_batch_server_lazy {
    xc_batch_server_conf sc;
    const char *who;
    xc_batch_server *srv;
    char exe[PATH_MAX]; /* this program's path (xc_batch_server_lazy_init) */
} xc_batch_server_lazy;

/* Sets l up to start `xcpipe serve` as sc says, with this program's own binary (read from
 * /proc/self/exe; sc->exe is ignored), on its first use: *start, *alive and their user data get
 * what xc_batch_conf wants (start, start_ud, alive, alive_ud). who names the caller in messages.
 * XC_ERR_IO when the program's path cannot be read (the message says why). */
xc_status xc_batch_server_lazy_init(xc_batch_server_lazy *l, const char *who,
                                    const xc_batch_server_conf *sc,
                                    xc_status (**start)(void *, const char **, const char **),
                                    void **start_ud, bool (**alive)(void *), void **alive_ud);

/* Starts l (a xc_batch_server_lazy *) and gives its URL and key (xc_batch_conf.start). */
xc_status xc_batch_server_lazy_start(void *l, const char **endpoint, const char **api_key);

/* True until a started server has exited (xc_batch_conf.alive). */
bool xc_batch_server_lazy_alive(void *l);

/* SIGTERM (the server drains and stops its workers), SIGKILL after grace_s, then frees. Returns
 * XC_ERR_IO when the server exited with a failure or had to be killed. NULL is XC_OK. */
xc_status xc_batch_server_stop(xc_batch_server *s, double grace_s);
