/* The coordinator's HTTP server (libmicrohttpd, one thread per connection): routing, API keys,
 * body and queue limits, /v1/chat/completions (whole or SSE), /v1/models, /health, /ready with a
 * periodic canary through the whole pipeline, /metrics, and cancellation of requests whose client
 * went away or whose deadline passed. See docs/api.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xc_api.h"
#include "xc_coord.h"
#include "xc_status.h"

typedef struct xc_http xc_http;

/* Command-line flags of the HTTP side (parsed by xc_http_cli_extract). */
typedef struct xc_http_flags {
    const char *host;
    int port;                 /* default 8000; 0 = any free port (see xc_http_port) */
    const char *api_keys;     /* comma-separated keys (prefer XC_API_KEYS or a file) */
    const char *api_key_file; /* one key per line; '#' starts a comment */
    const char *model_name;   /* served model id; NULL = the model directory's base name */
    const char *tokenizer;    /* NULL = MODEL/tokenizer.model */
    const char *media_dir;    /* file:// image URLs allowed below it */
    const char *media_hosts;  /* http(s) image hosts, comma-separated; "*.a.com" */
    int media_max_bytes;      /* largest fetched image; 0 = --max-image-mb */
    double media_timeout_s;   /* whole fetch of one image */
    bool allow_private_media; /* fetch from loopback/private addresses too */
    const char *variant;      /* auto|7b|vl: default meta instruction */
    int max_body_kb;          /* 0 = what one --max-image-mb image needs as base64 + 1 MiB */
    int preprocess_slots;     /* requests parsing JSON or decoding images at once */
    int image_input_cache_mb; /* preprocessed images kept by encoded bytes (MiB; 0 = none) */
    int max_concurrent;       /* chat requests in service at once; more get 429 */
    int max_n, max_tokens, default_max_tokens, max_images, max_image_mpixels, max_image_mb;
    double request_timeout_s;
    double canary_interval_s; /* 0 = no canary (/ready = the coordinator's readiness) */
    double canary_timeout_s;  /* first canary's answer limit (later: 3x the last one's time) */
    bool log_prompts;
    const char *allowed_origins; /* CORS: comma-separated origins, "*" = any; NULL = off */
    bool no_http;                /* --no-http: serve no HTTP (line protocol only) */
    bool port_explicit;          /* --port or XC_PORT was given (set by xc_http_cli_extract) */

    const char *image_search_url;  /* compositions: image-search service (docs/compose.md) */
    double image_search_timeout_s; /* one image-search call */
} xc_http_flags;

/* Takes the HTTP flags (--host, --port, --api-key-file, ...; see --help) out of argv: on XC_OK
 * *argc and argv hold only the remaining arguments, in order, for the coordinator's own parser,
 * and f is filled (defaults < XC_* environment < flags). --help prints the HTTP flags and stays in
 * argv. XC_ERR_ARG for a bad value. */
xc_status xc_http_cli_extract(int *argc, char **argv, xc_http_flags *f);

/* Starts the server on f->host:f->port over coordinator c (borrowed; must outlive the server).
 * Loads the tokenizer of model_dir. XC_ERR_IO if the address cannot be bound, XC_ERR_ARG for a
 * bad flag combination or key file. */
xc_status xc_http_create(const xc_http_flags *f, const char *model_dir, xc_coord *c, xc_http **out);

/* The command lines' rule: no server with --no-http, nor with a line-protocol request file
 * (line_protocol) unless --port/XC_PORT was given; else xc_http_create. *out is NULL when no
 * server was started. */
xc_status xc_http_start_if(const xc_http_flags *f, bool line_protocol, const char *model_dir,
                           xc_coord *c, xc_http **out);

/* Reads the --api-key-file again (SIGHUP: key rotation without a restart): its keys replace the
 * previous file's, the --api-keys ones stay; requests in service are not affected. On failure
 * (unreadable file, bad or too many keys, no keys at all while keys were on) the keys in use
 * stay and the error is logged: XC_ERR_ARG, XC_ERR_NOMEM; XC_ERR_UNSUPPORTED without a key
 * file. Thread-safe. */
xc_status xc_http_reload_keys(xc_http *h);

/* The bound port (the one picked with --port 0). */
int xc_http_port(const xc_http *h);

/* Stops accepting, cancels requests in service, stops the canary and frees. NULL is a no-op. */
void xc_http_destroy(xc_http *h);
