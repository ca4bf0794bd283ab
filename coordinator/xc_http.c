/* The OpenAI-compatible HTTP server of the coordinator on libmicrohttpd (thread per connection):
 * routes, API keys, limits, whole and streamed (SSE) chat completions, readiness with a canary,
 * Prometheus metrics, and cancellation on disconnect or deadline. */
#include "xc_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "xc_compose.h"
#include "xc_compose_http.h"
#include "xc_conf.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_metrics.h"
#include "xc_mmap.h"
#include "xc_time.h"
#include "xc_tokenizer.h"

#define MAX_KEYS 64
#ifndef XC_VERSION_STRING
#define XC_VERSION_STRING "0.1.0"
#endif

struct xc_http {
    xc_http_flags f;
    xc_api_conf api;
    xc_coord *c;
    xc_tokenizer *tok;
    xc_metrics *metrics;
    struct MHD_Daemon *d;
    int port;
    char model_name[256];
    char media_dir[PATH_MAX];
    xc_media_conf media;      /* http(s) image URLs */
    xc_compose_http *compose; /* /v1/compositions (issue 18) */
    /* API keys: --api-keys / XC_API_KEYS, then the key file's; the file's part is replaced by
     * xc_http_reload_keys (SIGHUP) while connection threads read them, hence the lock */
    pthread_rwlock_t keys_lock;
    char *keys[MAX_KEYS];
    int n_keys;
    int n_fixed_keys;  /* keys[0, n_fixed_keys) come from --api-keys, the rest from the file */
    atomic_int active; /* chat requests in service (a slot is taken before the body is read) */
    size_t max_body;   /* bytes: --max-body-kb, or what the image limits need */
    sem_t work;        /* --preprocess-slots: JSON parsing and image decoding at once */
    bool work_init;
    atomic_uint_fast64_t next_id;
    long started;
    /* canary */
    pthread_t canary;
    bool canary_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
    uint64_t canary_ok_ns; /* last success (0 = never) */
    bool canary_last_ok;
    bool canary_inflight;    /* a canary is waiting for its answer */
    double canary_last_s;    /* how long the latest successful canary took (0 = none yet) */
    double canary_spacing_s; /* pause between canaries: max(interval, 9 x canary_last_s) */
    char canary_why[256];
};

/* ---- flags ---- */

static const xc_conf_entry http_entries[] = {
    XC_CONF_STR("host", "XC_HOST", xc_http_flags, host, "127.0.0.1", NULL,
                "HTTP listen address (127.0.0.1 unless told otherwise; 0.0.0.0 = all)"),
    XC_CONF_INT("port", "XC_PORT", xc_http_flags, port, 8000, 0, 65535,
                "HTTP listen port (0 = any free port)"),
    XC_CONF_BOOL("no-http", "XC_NO_HTTP", xc_http_flags, no_http, 0, "serve no HTTP API"),
    XC_CONF_STR("api-keys", "XC_API_KEYS", xc_http_flags, api_keys, NULL, NULL,
                "comma-separated API keys (Authorization: Bearer KEY); prefer the env var or a "
                "file"),
    XC_CONF_STR("api-key-file", "XC_API_KEY_FILE", xc_http_flags, api_key_file, NULL, NULL,
                "file with one API key per line ('#' comments)"),
    XC_CONF_STR("served-model-name", "XC_SERVED_MODEL_NAME", xc_http_flags, model_name, NULL, NULL,
                "model id clients must name (default: the model directory's base name)"),
    XC_CONF_STR("tokenizer", "XC_TOKENIZER", xc_http_flags, tokenizer, NULL, NULL,
                "SentencePiece model (default MODEL/tokenizer.model)"),
    XC_CONF_STR("allowed-media-dir", "XC_ALLOWED_MEDIA_DIR", xc_http_flags, media_dir, NULL, NULL,
                "file:// image URLs may name files below this directory"),
    XC_CONF_STR("allowed-media-domains", "XC_ALLOWED_MEDIA_DOMAINS", xc_http_flags, media_hosts,
                NULL, NULL,
                "http(s) image URLs may name these hosts (comma-separated; *.example.com = its "
                "subdomains); none = not fetched"),
    XC_CONF_INT("media-max-bytes", "XC_MEDIA_MAX_BYTES", xc_http_flags, media_max_bytes, 0, 0,
                INT_MAX, "largest fetched image in bytes (0 = --max-image-mb)"),
    XC_CONF_FLOAT("media-timeout", "XC_MEDIA_TIMEOUT", xc_http_flags, media_timeout_s, 10, 0.001,
                  3600, "seconds one image fetch may take in all (resolve, connect, transfer)"),
    XC_CONF_BOOL("allow-private-media", "XC_ALLOW_PRIVATE_MEDIA", xc_http_flags,
                 allow_private_media, 0,
                 "fetch images from loopback, private, link-local addresses too (off: refused)"),
    XC_CONF_STR("chat-variant", "XC_CHAT_VARIANT", xc_http_flags, variant, "auto", "auto|7b|vl",
                "default meta instruction (auto: vl when img_size > 224)"),
    XC_CONF_INT("max-body-kb", "XC_MAX_BODY_KB", xc_http_flags, max_body_kb, 0, 0, 1 << 21,
                "largest request body (KiB; 0 = what one --max-image-mb image needs as base64 "
                "plus 1 MiB of text: 28331 KiB with the defaults)"),
    XC_CONF_INT("preprocess-slots", "XC_PREPROCESS_SLOTS", xc_http_flags, preprocess_slots, 4, 1,
                1024,
                "requests parsing JSON or decoding images at once (bounds the memory of large "
                "bodies; the others wait their turn)"),
    XC_CONF_INT("image-input-cache-mb", "XC_IMAGE_INPUT_CACHE_MB", xc_http_flags,
                image_input_cache_mb, 64, 0, 65536,
                "MiB of decoded, preprocessed images kept by the SHA-256 of their encoded bytes: "
                "an image re-sent with every turn of a chat is not decoded again (0 = off)"),
    XC_CONF_INT("max-concurrent-requests", "XC_MAX_CONCURRENT", xc_http_flags, max_concurrent, 256,
                1, 1 << 20, "chat requests in service at once; more get 429"),
    XC_CONF_INT("max-n", "XC_MAX_N", xc_http_flags, max_n, 8, 1, 128, "choices (n) per request"),
    XC_CONF_INT("max-tokens-limit", "XC_MAX_TOKENS_LIMIT", xc_http_flags, max_tokens, 4096, 1,
                1 << 24, "largest max_tokens accepted"),
    XC_CONF_INT(
        "default-max-tokens", "XC_DEFAULT_MAX_TOKENS", xc_http_flags, default_max_tokens, 0, 0,
        1 << 24,
        "cap on max_tokens when a request gives none (0 = none: the context left, as vLLM)"),
    XC_CONF_INT("max-images", "XC_MAX_IMAGES", xc_http_flags, max_images, 8, 1, 64,
                "images per request"),
    XC_CONF_INT("max-image-mpixels", "XC_MAX_IMAGE_MPIXELS", xc_http_flags, max_image_mpixels, 40,
                1, 1000, "largest image in megapixels (checked before decoding)"),
    XC_CONF_INT("max-image-mb", "XC_MAX_IMAGE_MB", xc_http_flags, max_image_mb, 20, 1, 1024,
                "largest encoded image (MiB)"),
    XC_CONF_FLOAT("request-timeout", "XC_REQUEST_TIMEOUT", xc_http_flags, request_timeout_s, 600, 0,
                  86400, "per-request deadline in seconds (0 = none)"),
    XC_CONF_FLOAT("canary-interval", "XC_CANARY_INTERVAL", xc_http_flags, canary_interval_s, 2, 0,
                  3600,
                  "seconds between /ready canary requests (0 = no canary); at least 9x the "
                  "latest canary's time, so canaries take at most 10 % of the pipeline"),
    XC_CONF_FLOAT("canary-timeout", "XC_CANARY_TIMEOUT", xc_http_flags, canary_timeout_s, 600, 0,
                  86400,
                  "seconds the first canary (a full image prefill) may take; later ones may take "
                  "3x the previous one's time, and never less than 2x interval + 5"),
    XC_CONF_STR("allowed-origins", "XC_ALLOWED_ORIGINS", xc_http_flags, allowed_origins, NULL, NULL,
                "CORS: comma-separated origins browsers may call from (https://a.example; * = "
                "any); none = no CORS headers"),
    XC_CONF_BOOL("log-prompts", "XC_LOG_PROMPTS", xc_http_flags, log_prompts, 0,
                 "log request prompts (off: prompts are never logged)"),
    XC_CONF_STR("image-search-url", "XC_IMAGE_SEARCH_URL", xc_http_flags, image_search_url, NULL,
                NULL,
                "compositions: image-search service (POST {caption, exclude, need_idxs}; "
                "docs/compose.md); none = no searched images"),
    XC_CONF_FLOAT("image-search-timeout", "XC_IMAGE_SEARCH_TIMEOUT", xc_http_flags,
                  image_search_timeout_s, 30, 0.001, 3600,
                  "seconds one image-search call may take"),
};

static const xc_conf_spec http_spec = {
    "HTTP API options (xcpipe-coordinator, xcpipe serve)",
    "The OpenAI-compatible API: POST /v1/chat/completions, /v1/completions, /tokenize, "
    "/detokenize, /v1/compositions, /v1/compositions/edit (docs/compose.md); GET /v1/models, "
    "/version, /health, /ready, /metrics. See docs/api.md.",
    http_entries, sizeof http_entries / sizeof http_entries[0]};

xc_status xc_http_cli_extract(int *argc, char **argv, xc_http_flags *f) {
    int n = *argc;
    char **mine = xc_calloc((size_t)n + 1, sizeof *mine);
    if (!mine) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for arguments");
    }
    int n_mine = 1, n_rest = 1;
    mine[0] = argv[0];
    bool help = false;
    for (int i = 1; i < n; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) { /* the rest is positional: keep it */
            while (i < n) {
                argv[n_rest++] = argv[i++];
            }
            break;
        }
        help = help || !strcmp(a, "--help") || !strcmp(a, "-h");
        const xc_conf_entry *e = NULL;
        if (!strncmp(a, "--", 2)) {
            size_t l = strcspn(a + 2, "=");
            for (size_t k = 0; k < http_spec.n_entries; k++) {
                if (strlen(http_entries[k].name) == l && !strncmp(http_entries[k].name, a + 2, l)) {
                    e = &http_entries[k];
                }
            }
        }
        if (!e) {
            argv[n_rest++] = argv[i];
            continue;
        }
        mine[n_mine++] = argv[i];
        if (e->type != XC_CONF_T_BOOL && !strchr(a, '=') && i + 1 < n) {
            mine[n_mine++] = argv[++i];
        }
    }
    argv[n_rest] = NULL;
    *argc = n_rest;
    if (help) {
        xc_conf_print_help(&http_spec);
        printf("\n");
    }
    bool port_flag = false;
    for (int i = 1; i < n_mine; i++) {
        port_flag = port_flag || !strncmp(mine[i], "--port", 6);
    }
    xc_status st = xc_conf_parse(&http_spec, f, n_mine, mine, NULL);
    xc_free(mine);
    f->port_explicit = port_flag || getenv("XC_PORT") != NULL;
    return st == XC_AGAIN ? XC_OK : st;
}

/* ---- small helpers ---- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

/* One request on a connection: its body and what admission granted. */
typedef struct conn_ctx {
    sbuf body;
    bool too_big;
    bool slot;    /* holds one of --max-concurrent-requests (released at completion) */
    bool discard; /* a route that reads no body: upload bytes are dropped, never buffered */
} conn_ctx;

static bool sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) {
            cap *= 2;
        }
        char *p = xc_realloc(b->p, cap);
        if (!p) {
            return false;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

static uint64_t rand64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
        v = xc_now_ns() * 0x9e3779b97f4a7c15ull;
    }
    return v;
}

/* Whether the client closed its end of the connection (fd < 0: unknown, assume not). */
static bool peer_gone(int fd) {
    if (fd < 0) {
        return false;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) {
        return false;
    }
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) {
        return true;
    }
    char c;
    ssize_t k = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return k == 0;
}

/* ---- responses ---- */

/* The request's Origin when --allowed-origins lets it in (the value for
 * Access-Control-Allow-Origin), else NULL. */
static const char *cors_origin(const xc_http *h, struct MHD_Connection *conn) {
    const char *list = h->f.allowed_origins;
    const char *o = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    if (!list || !list[0] || !o || !o[0] || strlen(o) > 512) {
        return NULL;
    }
    size_t ol = strlen(o);
    for (const char *p = list; *p;) {
        size_t l = strcspn(p, ",");
        const char *a = p;
        size_t al = l;
        while (al && *a == ' ') {
            a++, al--;
        }
        while (al && a[al - 1] == ' ') {
            al--;
        }
        if ((al == 1 && *a == '*') || (al == ol && !strncasecmp(a, o, ol))) {
            return o;
        }
        p += l + (p[l] == ',');
    }
    return NULL;
}

static void add_cors(const xc_http *h, struct MHD_Connection *conn, struct MHD_Response *r) {
    const char *o = cors_origin(h, conn);
    if (o) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", o);
        MHD_add_response_header(r, "Vary", "Origin");
        MHD_add_response_header(r, "Access-Control-Expose-Headers", "Retry-After");
    }
}

static enum MHD_Result respond_hdr(xc_http *h, struct MHD_Connection *conn, const char *route,
                                   int status, const char *type, const char *body, size_t len,
                                   const char *retry_after, const char *hname, const char *hval) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    add_cors(h, conn, r);
    if (hname) {
        MHD_add_response_header(r, hname, hval);
    }
    if (retry_after) {
        MHD_add_response_header(r, "Retry-After", retry_after);
    }
    if (status == 401) {
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    }
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    xc_metrics_http(h->metrics, route, status);
    return ret;
}

static enum MHD_Result respond(xc_http *h, struct MHD_Connection *conn, const char *route,
                               int status, const char *type, const char *body, size_t len,
                               const char *retry_after) {
    return respond_hdr(h, conn, route, status, type, body, len, retry_after, NULL, NULL);
}

static enum MHD_Result respond_json_hdr(xc_http *h, struct MHD_Connection *conn, const char *route,
                                        int status, char *owned, const char *hname,
                                        const char *hval) {
    if (!owned) {
        return respond(h, conn, route, 500, "application/json", "{}", 2, NULL);
    }
    enum MHD_Result r = respond_hdr(h, conn, route, status, "application/json", owned,
                                    strlen(owned), NULL, hname, hval);
    xc_free(owned);
    return r;
}

static enum MHD_Result respond_json(xc_http *h, struct MHD_Connection *conn, const char *route,
                                    int status, char *owned, const char *retry_after) {
    if (!owned) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        return respond(h, conn, route, 500, "application/json", oom, sizeof oom - 1, NULL);
    }
    enum MHD_Result r =
        respond(h, conn, route, status, "application/json", owned, strlen(owned), retry_after);
    xc_free(owned);
    return r;
}

static enum MHD_Result respond_error(xc_http *h, struct MHD_Connection *conn, const char *route,
                                     const xc_api_error *e) {
    const char *ra = e->http_status == 429 ? "1" : e->http_status == 503 ? "5" : NULL;
    return respond_json(h, conn, route, e->http_status, xc_api_error_json(e), ra);
}

/* ---- chat jobs ---- */

typedef struct choice {
    struct job *job;
    int index;
    uint64_t id;
    bool submitted, done, stop_hit, cancel_sent, role_sent;
    xc_status status;
    bool retryable;
    char message[256];
    char done_msg[256]; /* the DONE event's message, copied on the coordinator's thread */
    const char *finish;
    int n_tokens;
    uint64_t last_ns;
    xc_api_text text;
    sbuf content;       /* whole responses: the text */
    xc_api_logprob *lp; /* (n_lp) token logprobs, when asked */
    size_t *lp_end;     /* (n_lp) decoded bytes after each token */
    int n_lp, cap_lp, n_lp_out;
    /* /v1/completions: the prompt's text and ids when echoed */
    int prompt; /* index of its prompt */
    char *echo; /* (n_echo) decoded prompt text, NULL without echo */
    size_t n_echo;
    size_t *echo_off; /* (prompt_len) text offset of each prompt token */
} choice;

/* One coordinator event, queued by the coordinator's thread for the HTTP side (the connection's
 * thread), which detokenizes, scans stop strings and encodes SSE: the scheduling thread only
 * copies. DONE's message is in its choice's done_msg. */
typedef struct pev {
    int ch; /* choice index */
    xc_coord_event_kind kind;
    uint64_t t_ns; /* when the coordinator delivered it (TTFT, inter-token latency) */
    /* TOKEN */
    bool has_logprob;
    xc_api_logprob lp; /* token, logprob, alternatives */
    /* DONE */
    xc_status status;
    bool retryable, stopped;
} pev;

typedef struct job {
    xc_http *h;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    char id[48];
    long created;
    xc_api_request req;
    int n;
    choice *ch;
    int n_done;
    sbuf out; /* SSE bytes not yet handed to the connection */
    size_t out_pos;
    bool ended; /* the stream is complete ([DONE] queued) */
    bool error_sent;
    uint64_t t0_ns, first_ns, deadline_ns;
    int prompt_tokens;
    int fd;
    bool timed_out, client_gone;
    pev *evq; /* (n_evq) events not handled yet, oldest first */
    int n_evq, cap_evq;
    bool detached; /* the HTTP side dropped its reference: events are handled as they come */
} job;

static void job_free(job *j) {
    for (int i = 0; i < j->n; i++) {
        xc_api_text_fini(&j->ch[i].text);
        xc_free(j->ch[i].content.p);
        xc_free(j->ch[i].lp);
        xc_free(j->ch[i].lp_end);
        xc_free(j->ch[i].echo);
        xc_free(j->ch[i].echo_off);
    }
    xc_free(j->ch);
    xc_free(j->out.p);
    xc_free(j->evq);
    xc_api_request_fini(&j->req);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    xc_free(j);
}

static void job_drain(job *j);

/* The HTTP side drops its reference (frees on the last): what is queued is handled now, and from
 * then on the coordinator's thread handles events as they come (counted in the metrics as
 * before). Called without the lock held. */
static void job_unref(job *j) {
    pthread_mutex_lock(&j->lock);
    job_drain(j);
    j->detached = true;
    bool last = --j->refs == 0;
    pthread_mutex_unlock(&j->lock);
    if (last) {
        job_free(j);
    }
}

static const char *model_of(const job *j) {
    return j->h->model_name;
}

/* Appends "data: JSON\n\n" (owned JSON freed). Lock held. */
static void sse_json(job *j, char *json) {
    if (!json || j->ended) {
        xc_free(json);
        return;
    }
    sb_add(&j->out, "data: ", 6);
    sb_add(&j->out, json, strlen(json));
    sb_add(&j->out, "\n\n", 2);
    xc_free(json);
}

/* How many of choice ch's logprob entries are final: with a stop string, every token whose text
 * starts before the cut (later ones are dropped); at the end, all; else those whose text was
 * emitted. */
static int lp_final(const choice *ch, bool end) {
    int k = ch->n_lp_out;
    size_t emitted = ch->text.emitted;
    if (ch->text.stopped) {
        while (k < ch->n_lp && (k ? ch->lp_end[k - 1] : 0) < emitted) {
            k++;
        }
        return k;
    }
    if (end) {
        return ch->n_lp;
    }
    while (k < ch->n_lp && ch->lp_end[k] <= emitted) {
        k++;
    }
    return k;
}

/* A /v1/completions chunk for choice ch: text, the legacy logprobs of lp[0, n_lp) (the entries
 * after ch->n_lp_out - n_lp), finish_reason. */
static char *legacy_chunk(job *j, choice *ch, const char *text, size_t len,
                          const xc_api_logprob *lp, int n_lp, const char *finish) {
    size_t offs[64];
    size_t *off = n_lp <= 64 ? offs : xc_malloc((size_t)n_lp * sizeof *off);
    xc_api_legacy_lp l = {.lp = lp, .n_lp = n_lp, .offsets = off};
    int first = ch->n_lp_out - n_lp;
    for (int k = 0; off && k < n_lp; k++) {
        off[k] = ch->n_echo + (first + k ? ch->lp_end[first + k - 1] : 0);
    }
    xc_api_text_choice c = {.text = text,
                            .len = len,
                            .finish_reason = finish,
                            .logprobs = j->req.logprobs && off ? &l : NULL};
    char *js = xc_api_text_completion_json(j->id, j->created, model_of(j), &c, 1, ch->index, NULL,
                                           j->h->tok);
    if (off != offs) {
        xc_free(off);
    }
    return js;
}

/* Streams a content delta for choice ch (text may be empty when only logprobs are new). */
static void sse_delta(job *j, choice *ch, const char *text, size_t len, bool end) {
    const xc_api_logprob *lp = NULL;
    int n_lp = 0;
    if (j->req.logprobs) {
        int k = lp_final(ch, end);
        lp = ch->lp + ch->n_lp_out;
        n_lp = k - ch->n_lp_out;
        ch->n_lp_out = k;
    }
    if (len == 0 && n_lp == 0) {
        return;
    }
    if (j->req.legacy) {
        sse_json(j, legacy_chunk(j, ch, text, len, lp, n_lp, NULL));
        return;
    }
    sse_json(j, xc_api_chunk_json(j->id, j->created, model_of(j), ch->index, false, text, len,
                                  n_lp ? lp : NULL, n_lp, NULL, NULL, j->req.include_usage,
                                  j->h->tok));
}

static void on_token(job *j, choice *ch, const pev *ev) {
    xc_http *h = j->h;
    uint64_t now = ev->t_ns;
    if (ch->text.stopped) {
        return; /* generated after a stop string: dropped, cancellation is on its way */
    }
    ch->n_tokens++;
    xc_metrics_add(h->metrics, XC_METRICS_GENERATION_TOKENS, 1);
    if (!j->first_ns) {
        j->first_ns = now;
        xc_metrics_observe(h->metrics, XC_METRICS_TTFT, (double)(now - j->t0_ns) * 1e-9);
    }
    if (ch->last_ns) {
        xc_metrics_observe(h->metrics, XC_METRICS_ITL, (double)(now - ch->last_ns) * 1e-9);
    }
    ch->last_ns = now;
    const char *text = NULL;
    size_t len = 0;
    bool stopped = false;
    if (xc_api_text_feed(&ch->text, ev->lp.token, &text, &len, &stopped) != XC_OK) {
        text = "";
        len = 0;
    }
    if (j->req.logprobs) {
        if (ch->n_lp == ch->cap_lp) {
            int cap = ch->cap_lp ? ch->cap_lp * 2 : 64;
            xc_api_logprob *nl = xc_realloc(ch->lp, (size_t)cap * sizeof *nl);
            size_t *ne = nl ? xc_realloc(ch->lp_end, (size_t)cap * sizeof *ne) : NULL;
            if (nl) {
                ch->lp = nl;
            }
            if (ne) {
                ch->lp_end = ne;
                ch->cap_lp = cap;
            }
        }
        if (ch->n_lp < ch->cap_lp) {
            xc_api_logprob *e = &ch->lp[ch->n_lp];
            memset(e, 0, sizeof *e);
            e->token = ev->lp.token;
            e->logprob = ev->has_logprob ? ev->lp.logprob : 0.0f;
            e->n_top = ev->lp.n_top < j->req.top_logprobs ? ev->lp.n_top : j->req.top_logprobs;
            for (int k = 0; k < e->n_top; k++) {
                e->top_ids[k] = ev->lp.top_ids[k];
                e->top_logprobs[k] = ev->lp.top_logprobs[k];
            }
            ch->lp_end[ch->n_lp] = ch->text.emitted + ch->text.n_pend;
            ch->n_lp++;
        }
    }
    if (j->req.stream) {
        sse_delta(j, ch, text, len, false);
    } else {
        sb_add(&ch->content, text, len);
    }
    if (stopped) {
        ch->stop_hit = true;
        ch->finish = "stop";
    }
}

static void on_done(job *j, choice *ch, const pev *ev) {
    ch->done = true;
    j->n_done++;
    bool ok = ev->status == XC_OK || ch->stop_hit;
    if (ok) {
        const char *text = NULL;
        size_t len = 0;
        if (xc_api_text_finish(&ch->text, &text, &len) != XC_OK) {
            len = 0;
        }
        if (!ch->finish) {
            ch->finish = ev->stopped ? "stop" : "length";
        }
        if (j->req.stream) {
            sse_delta(j, ch, text, len, true);
            if (j->req.legacy) {
                sse_json(j, legacy_chunk(j, ch, "", 0, NULL, 0, ch->finish));
            } else {
                sse_json(j, xc_api_chunk_json(j->id, j->created, model_of(j), ch->index, false,
                                              NULL, 0, NULL, 0, ch->finish, NULL,
                                              j->req.include_usage, j->h->tok));
            }
        } else {
            sb_add(&ch->content, text, len);
            if (j->req.logprobs) {
                ch->n_lp_out = lp_final(ch, true);
            }
        }
    } else {
        ch->status = ev->status;
        ch->retryable = ev->retryable;
        snprintf(ch->message, sizeof ch->message, "%s", ch->done_msg);
        if (j->req.stream && !j->error_sent && !j->timed_out && !j->client_gone) {
            xc_api_error e;
            xc_api_error_set(&e, ev->retryable ? 503 : 500,
                             ev->retryable ? "service_unavailable" : "server_error", NULL, NULL,
                             "generation failed: %s", ch->message);
            sse_json(j, xc_api_error_json(&e));
            j->error_sent = true;
        }
    }
    if (j->req.stream && j->n_done == j->n && !j->ended) {
        if (j->req.include_usage) {
            int gen = 0;
            for (int i = 0; i < j->n; i++) {
                gen += j->ch[i].n_tokens;
            }
            xc_api_usage u = {j->prompt_tokens, gen};
            sse_json(j, j->req.legacy
                            ? xc_api_text_completion_json(j->id, j->created, model_of(j), NULL, 0,
                                                          -1, &u, j->h->tok)
                            : xc_api_chunk_json(j->id, j->created, model_of(j), -1, false, NULL, 0,
                                                NULL, 0, NULL, &u, false, j->h->tok));
        }
        sb_add(&j->out, "data: [DONE]\n\n", 14);
        j->ended = true;
    }
}

/* Handles the queued events in order (lock held): detokenizing, stop strings, SSE encoding and
 * the latency metrics, on the HTTP side. */
static void job_drain(job *j) {
    for (int i = 0; i < j->n_evq; i++) {
        const pev *e = &j->evq[i];
        if (e->kind == XC_COORD_TOKEN) {
            on_token(j, &j->ch[e->ch], e);
        } else {
            on_done(j, &j->ch[e->ch], e);
        }
    }
    j->n_evq = 0;
}

/* The coordinator's event callback (its thread): only copies the event into the job's queue
 * (never blocks beyond the job's lock); the connection's thread handles it (job_drain). Without
 * memory to queue it, the queue and the event are handled here, in order, as a fallback. */
static void on_event(void *user, const xc_coord_event *ev) {
    choice *ch = user;
    job *j = ch->job;
    pthread_mutex_lock(&j->lock);
    if (j->n_evq == j->cap_evq) {
        int cap = j->cap_evq ? j->cap_evq * 2 : 16;
        pev *q = xc_realloc(j->evq, (size_t)cap * sizeof *q);
        if (q) {
            j->evq = q;
            j->cap_evq = cap;
        }
    }
    pev one;
    pev *e = j->n_evq < j->cap_evq && !j->detached ? &j->evq[j->n_evq] : &one;
    e->ch = ch->index;
    e->kind = ev->kind;
    e->t_ns = xc_now_ns();
    if (ev->kind == XC_COORD_TOKEN) {
        e->has_logprob = ev->has_logprob;
        e->lp.token = ev->token;
        e->lp.logprob = ev->logprob;
        int n_top = ev->has_logprob ? ev->n_top : 0;
        n_top = n_top < XC_API_MAX_TOP_LOGPROBS ? n_top : XC_API_MAX_TOP_LOGPROBS;
        e->lp.n_top = n_top;
        for (int k = 0; k < n_top; k++) {
            e->lp.top_ids[k] = ev->top_ids[k];
            e->lp.top_logprobs[k] = ev->top_logprobs[k];
        }
    } else {
        e->status = ev->status;
        e->retryable = ev->retryable;
        e->stopped = ev->stopped;
        snprintf(ch->done_msg, sizeof ch->done_msg, "%s", ev->message ? ev->message : "");
    }
    if (e == &one) { /* no room, or nobody on the HTTP side: handle everything now, in order */
        job_drain(j);
        if (one.kind == XC_COORD_TOKEN) {
            on_token(j, ch, &one);
        } else {
            on_done(j, ch, &one);
        }
    } else {
        j->n_evq++;
    }
    pthread_cond_broadcast(&j->cond);
    bool last = ev->kind == XC_COORD_DONE && --j->refs == 0;
    pthread_mutex_unlock(&j->lock);
    if (last) {
        job_free(j);
    }
}

/* Cancels every choice not done yet (lock held; lock order job -> coordinator). */
static void cancel_all(job *j) {
    for (int i = 0; i < j->n; i++) {
        choice *ch = &j->ch[i];
        if (ch->submitted && !ch->done && !ch->cancel_sent) {
            xc_coord_cancel(j->h->c, ch->id);
            ch->cancel_sent = true;
            xc_metrics_add(j->h->metrics, XC_METRICS_REQUESTS_CANCELLED, 1);
        }
    }
}

/* Waits up to ms for events, then handles stop strings, the deadline and a vanished client. Lock
 * held. Returns false once the job should stop waiting (timed out or client gone). */
static bool job_wait(job *j, int ms) {
    if (j->n_evq == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&j->cond, &j->lock, &ts);
    }
    job_drain(j);
    for (int i = 0; i < j->n; i++) {
        choice *ch = &j->ch[i];
        if (ch->stop_hit && !ch->done && !ch->cancel_sent) {
            xc_coord_cancel(j->h->c, ch->id); /* a stop string ended it: free its KV now */
            ch->cancel_sent = true;
        }
    }
    if (j->n_done == j->n) {
        return true;
    }
    if (j->deadline_ns && xc_now_ns() > j->deadline_ns) {
        j->timed_out = true;
        cancel_all(j);
        return false;
    }
    if (peer_gone(j->fd)) {
        j->client_gone = true;
        cancel_all(j);
        return false;
    }
    return true;
}

static void job_metrics_end(job *j) {
    xc_http *h = j->h;
    xc_metrics_observe(h->metrics, XC_METRICS_E2E, (double)(xc_now_ns() - j->t0_ns) * 1e-9);
    xc_metrics_add(h->metrics, XC_METRICS_PROMPT_TOKENS, j->prompt_tokens);
}

/* SSE body: hands out queued bytes, blocking (thread per connection) until there are some. */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    job *j = cls;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        if (j->out.n > j->out_pos) {
            size_t k = j->out.n - j->out_pos;
            k = k < max ? k : max;
            memcpy(buf, j->out.p + j->out_pos, k);
            j->out_pos += k;
            if (j->out_pos == j->out.n) {
                j->out_pos = j->out.n = 0;
            }
            pthread_mutex_unlock(&j->lock);
            return (ssize_t)k;
        }
        if (j->ended) {
            pthread_mutex_unlock(&j->lock);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (j->client_gone) {
            pthread_mutex_unlock(&j->lock);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (!job_wait(j, 100) && j->timed_out && !j->ended) {
            xc_api_error e;
            xc_api_error_set(&e, 408, "timeout", "request_timeout", NULL,
                             "the request passed its deadline of %.1f s",
                             j->h->f.request_timeout_s);
            sse_json(j, xc_api_error_json(&e));
            sb_add(&j->out, "data: [DONE]\n\n", 14);
            j->ended = true;
        }
    }
}

/* The SSE response is gone (finished, or the client went away while sending). */
static void sse_free(void *cls) {
    job *j = cls;
    pthread_mutex_lock(&j->lock);
    job_drain(j); /* choices done meanwhile are not cancelled */
    if (j->n_done < j->n) {
        j->client_gone = !j->timed_out;
        cancel_all(j);
    }
    pthread_mutex_unlock(&j->lock);
    job_metrics_end(j);
    atomic_fetch_sub(&j->h->active, 1);
    job_unref(j);
}

/* ---- /v1/chat/completions ---- */

static int client_fd(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static enum MHD_Result chat_whole(xc_http *h, struct MHD_Connection *conn, job *j) {
    pthread_mutex_lock(&j->lock);
    while (j->n_done < j->n && job_wait(j, 200)) {
    }
    enum MHD_Result ret;
    xc_api_error e = {0};
    int fail = -1;
    for (int i = 0; i < j->n && fail < 0; i++) {
        if (j->ch[i].done && j->ch[i].status != XC_OK && !j->ch[i].stop_hit) {
            fail = i;
        }
    }
    if (j->client_gone) {
        ret = MHD_NO; /* nobody to answer: close */
        xc_metrics_http(h->metrics, "chat", 499);
    } else if (j->timed_out) {
        xc_api_error_set(&e, 408, "timeout", "request_timeout", NULL,
                         "the request passed its deadline of %.1f s", h->f.request_timeout_s);
        ret = respond_error(h, conn, "chat", &e);
    } else if (fail >= 0) {
        const choice *ch = &j->ch[fail];
        int status = ch->status == XC_ERR_ARG ? 400 : ch->retryable ? 503 : 500;
        xc_api_error_set(&e, status,
                         status == 400   ? "invalid_request_error"
                         : status == 503 ? "service_unavailable"
                                         : "server_error",
                         NULL, NULL, "generation failed: %s", ch->message);
        ret = respond_error(h, conn, "chat", &e);
    } else if (j->req.legacy) {
        xc_api_text_choice cs[128];
        xc_api_legacy_lp ls[128];
        char *texts[128] = {0};
        size_t *offs[128] = {0};
        int gen = 0;
        bool oom = false;
        for (int i = 0; i < j->n; i++) {
            const choice *ch = &j->ch[i];
            size_t tl = ch->n_echo + ch->content.n;
            texts[i] = xc_malloc(tl + 1);
            int n_e = ch->echo ? j->req.prompt_len[ch->prompt] : 0, n_l = ch->n_lp_out;
            offs[i] = xc_malloc((size_t)(n_e + n_l + 1) * sizeof(size_t));
            if (!texts[i] || !offs[i]) {
                oom = true;
                break;
            }
            memcpy(texts[i], ch->echo ? ch->echo : "", ch->n_echo);
            memcpy(texts[i] + ch->n_echo, ch->content.p ? ch->content.p : "", ch->content.n);
            for (int k = 0; k < n_e; k++) {
                offs[i][k] = ch->echo_off[k];
            }
            for (int k = 0; k < n_l; k++) {
                offs[i][n_e + k] = ch->n_echo + (k ? ch->lp_end[k - 1] : 0);
            }
            ls[i] = (xc_api_legacy_lp){.echo_ids = j->req.prompts[ch->prompt],
                                       .n_echo = n_e,
                                       .lp = ch->lp,
                                       .n_lp = n_l,
                                       .offsets = offs[i]};
            cs[i] = (xc_api_text_choice){.text = texts[i],
                                         .len = tl,
                                         .finish_reason = ch->finish ? ch->finish : "length",
                                         .logprobs = j->req.logprobs ? &ls[i] : NULL};
            gen += ch->n_tokens;
        }
        xc_api_usage u = {j->prompt_tokens, gen};
        char *body = oom ? NULL
                         : xc_api_text_completion_json(j->id, j->created, h->model_name, cs, j->n,
                                                       -1, &u, h->tok);
        for (int i = 0; i < j->n; i++) {
            xc_free(texts[i]);
            xc_free(offs[i]);
        }
        ret = respond_json(h, conn, "completions", 200, body, NULL);
    } else {
        xc_api_choice cs[128];
        int gen = 0;
        for (int i = 0; i < j->n; i++) {
            const choice *ch = &j->ch[i];
            cs[i] = (xc_api_choice){.text = ch->content.p ? ch->content.p : "",
                                    .len = ch->content.n,
                                    .finish_reason = ch->finish ? ch->finish : "length",
                                    .logprobs = j->req.logprobs ? ch->lp : NULL,
                                    .n_logprobs = j->req.logprobs ? ch->n_lp_out : 0};
            if (j->req.logprobs && !ch->lp) {
                static const xc_api_logprob none;
                cs[i].logprobs = &none;
            }
            gen += ch->n_tokens;
        }
        xc_api_usage u = {j->prompt_tokens, gen};
        char *body = xc_api_completion_json(j->id, j->created, h->model_name, cs, j->n, &u, h->tok);
        ret = respond_json(h, conn, "chat", 200, body, NULL);
    }
    pthread_mutex_unlock(&j->lock);
    job_metrics_end(j);
    return ret;
}

static void work_enter(xc_http *h) {
    while (sem_wait(&h->work) != 0 && errno == EINTR) {
    }
}

static void work_leave(xc_http *h) {
    sem_post(&h->work);
}

static xc_status too_large(xc_http *h, xc_api_error *e) {
    return xc_api_error_set(e, 413, "invalid_request_error", "request_too_large", NULL,
                            "the request body is larger than %zu KiB", h->max_body >> 10);
}

/* The request holds one of the --max-concurrent-requests slots (cc->slot, taken before its body
 * was read); a streamed response takes it over (released by sse_free), else it is released when
 * the connection's request completes. */
/* The decoded text of ids (echo) and the text offset of each token. */
static xc_status echo_text(const xc_tokenizer *tok, const int32_t *ids, int n, char **text,
                           size_t *len, size_t **offs) {
    sbuf b = {0};
    xc_tokenizer_stream ts;
    xc_tokenizer_stream_init(&ts, tok);
    *offs = xc_malloc((size_t)(n ? n : 1) * sizeof **offs);
    xc_status st = *offs ? XC_OK : XC_ERR_NOMEM;
    for (int i = 0; i < n && st == XC_OK; i++) {
        const char *t = NULL;
        size_t l = 0;
        (*offs)[i] = b.n;
        st = xc_tokenizer_stream_feed(&ts, ids[i], &t, &l);
        if (st == XC_OK && l && !sb_add(&b, t, l)) {
            st = XC_ERR_NOMEM;
        }
    }
    const char *t = NULL;
    size_t l = 0;
    if (st == XC_OK && xc_tokenizer_stream_finish(&ts, &t, &l) == XC_OK && l && !sb_add(&b, t, l)) {
        st = XC_ERR_NOMEM;
    }
    xc_tokenizer_stream_fini(&ts);
    if (st == XC_OK && !b.p && !sb_add(&b, "", 0)) {
        st = XC_ERR_NOMEM;
    }
    if (st != XC_OK) {
        xc_free(b.p);
        xc_free(*offs);
        *offs = NULL;
        return st;
    }
    *text = b.p;
    *len = b.n;
    return XC_OK;
}

/* POST /v1/chat/completions, and with legacy POST /v1/completions (raw prompts, n choices per
 * prompt, echo, the legacy answer shapes). */
static enum MHD_Result chat(xc_http *h, struct MHD_Connection *conn, conn_ctx *cc, bool legacy) {
    xc_api_error e = {0};
    uint64_t t0 = xc_now_ns();
    if (cc->too_big) {
        too_large(h, &e);
        return respond_error(h, conn, "chat", &e);
    }
    job *j = xc_calloc(1, sizeof *j);
    if (!j) {
        return respond_json(h, conn, "chat", 500, NULL, NULL);
    }
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    j->h = h;
    j->refs = 1;
    j->t0_ns = t0;
    j->fd = client_fd(conn);
    /* parsing (JSON tree, base64 images) under the work gate; the body goes right after */
    work_enter(h);
    const char *body = cc->body.p ? cc->body.p : "";
    xc_status pst = legacy ? xc_api_parse_completion(&h->api, h->tok, body, cc->body.n, &j->req, &e)
                           : xc_api_parse(&h->api, body, cc->body.n, &j->req, &e);
    work_leave(h);
    xc_free(cc->body.p);
    cc->body = (sbuf){0};
    if (pst != XC_OK) {
        job_free(j);
        return respond_error(h, conn, "chat", &e);
    }
    if (h->f.log_prompts) {
        XC_LOG_INFO("prompt: system=%s query=%s images=%d prompts=%d",
                    j->req.system ? j->req.system : "-", j->req.query ? j->req.query : "-",
                    j->req.n_images, j->req.n_prompts);
    }
    if (!xc_coord_ready(h->c)) {
        job_free(j);
        xc_api_error_set(&e, 503, "service_unavailable", "not_ready", NULL,
                         "the cluster is not ready (a worker is loading or lost); retry later");
        return respond_error(h, conn, "chat", &e);
    }
    /* http(s) images: fetched now, before queueing, within the request's deadline */
    uint64_t fetch_end = 0;
    if (h->f.request_timeout_s > 0) {
        fetch_end = t0 + (uint64_t)(h->f.request_timeout_s * 1e9);
    }
    if (xc_api_fetch(&h->api, &j->req, fetch_end, &e) != XC_OK) {
        job_free(j);
        return respond_error(h, conn, "chat", &e);
    }
    int n_p = legacy ? j->req.n_prompts : 1;
    xc_api_prepared *ps = xc_calloc((size_t)n_p, sizeof *ps);
    if (!ps) {
        job_free(j);
        return respond_json(h, conn, "chat", 500, NULL, NULL);
    }
    xc_status prst = XC_OK;
    int n_ps = 0;
    work_enter(h); /* image decoding: one full-size RGB image per slot at most */
    for (; n_ps < n_p && prst == XC_OK; n_ps++) {
        prst = legacy ? xc_api_prepare_prompt(&h->api, h->tok, &j->req, n_ps, &ps[n_ps], &e)
                      : xc_api_prepare(&h->api, h->tok, &j->req, &ps[n_ps], &e);
    }
    work_leave(h);
    if (prst != XC_OK) {
        for (int k = 0; k < n_ps; k++) {
            xc_api_prepared_fini(&ps[k]);
        }
        xc_free(ps);
        job_free(j);
        return respond_error(h, conn, "chat", &e);
    }
    xc_api_prepared p = ps[0];
    for (int i = 0; i < j->req.n_images; i++) { /* the pixels are in p now */
        xc_free(j->req.images[i].data);
        j->req.images[i].data = NULL;
    }
    if (j->req.n_images) {
        xc_metrics_observe(h->metrics, XC_METRICS_PREPROCESS, p.preprocess_s);
        xc_metrics_add(h->metrics, XC_METRICS_IMAGES, j->req.n_images);
        xc_metrics_add(h->metrics, XC_METRICS_IMAGE_TOKENS, p.image_tokens);
    }
    j->prompt_tokens = 0;
    for (int k = 0; k < n_p; k++) {
        j->prompt_tokens += ps[k].prompt_tokens;
    }
    j->n = j->req.n * n_p;
    j->ch = xc_calloc((size_t)j->n, sizeof *j->ch);
    bool oom = !j->ch;
    for (int i = 0; !oom && i < j->n; i++) {
        choice *ch = &j->ch[i];
        ch->prompt = i / j->req.n;
        oom = j->req.echo &&
              echo_text(h->tok, j->req.prompts[ch->prompt], j->req.prompt_len[ch->prompt],
                        &ch->echo, &ch->n_echo, &ch->echo_off) != XC_OK;
    }
    if (oom) {
        for (int k = 0; k < n_p; k++) {
            xc_api_prepared_fini(&ps[k]);
        }
        xc_free(ps);
        job_free(j);
        return respond_json(h, conn, "chat", 500, NULL, NULL);
    }
    snprintf(j->id, sizeof j->id, "%s-%016llx%08llx", legacy ? "cmpl" : "chatcmpl",
             (unsigned long long)atomic_fetch_add(&h->next_id, 1),
             (unsigned long long)(rand64() & 0xffffffffu));
    j->created = (long)time(NULL);
    if (h->f.request_timeout_s > 0) {
        j->deadline_ns = t0 + (uint64_t)(h->f.request_timeout_s * 1e9);
    }
    uint64_t seed0 = j->req.has_seed ? j->req.seed : rand64();
    xc_status st = XC_OK;
    pthread_mutex_lock(&j->lock);
    for (int i = 0; i < j->n; i++) {
        choice *ch = &j->ch[i];
        ch->job = j;
        ch->index = i;
        xc_api_text_init(&ch->text, h->tok, j->req.stop, j->req.n_stop);
        ch->text.include_stop = j->req.include_stop_str_in_output;
        ch->text.show_special = !j->req.skip_special_tokens;
        if (j->req.stream && legacy && ch->echo) {
            sse_json(j, legacy_chunk(j, ch, ch->echo, ch->n_echo, NULL, 0, NULL));
        } else if (j->req.stream && !legacy) {
            sse_json(j, xc_api_chunk_json(j->id, j->created, h->model_name, i, true, "", 0, NULL, 0,
                                          NULL, NULL, j->req.include_usage, h->tok));
        }
    }
    for (int i = 0; i < j->n && st == XC_OK; i++) {
        choice *ch = &j->ch[i];
        p = ps[ch->prompt];
        p.req.sampling.seed = seed0; /* one seed; each choice its own stream */
        p.req.sampling.choice = (uint32_t)(i % j->req.n);
        p.req.logprobs = j->req.logprobs;
        p.req.top_logprobs = j->req.top_logprobs;
        st = xc_coord_submit(h->c, &p.req, on_event, ch, &ch->id);
        if (st == XC_OK) {
            ch->submitted = true;
            j->refs++;
        }
    }
    for (int k = 0; k < n_p; k++) {
        xc_api_prepared_fini(&ps[k]);
    }
    xc_free(ps);
    if (st != XC_OK) {
        cancel_all(j);
        for (int i = 0; i < j->n; i++) {
            if (!j->ch[i].submitted) {
                j->ch[i].done = true; /* never submitted: no event will come */
                j->n_done++;
            }
        }
        j->ended = true;
        pthread_mutex_unlock(&j->lock);
        int status = st == XC_ERR_ARG ? 400 : st == XC_ERR_NOMEM ? 500 : 503;
        xc_api_error_set(&e, status,
                         status == 400   ? "invalid_request_error"
                         : status == 503 ? "service_unavailable"
                                         : "server_error",
                         NULL, NULL, "%s", xc_err_last());
        job_unref(j);
        return respond_error(h, conn, "chat", &e);
    }
    pthread_mutex_unlock(&j->lock);
    if (!j->req.stream) {
        enum MHD_Result ret = chat_whole(h, conn, j);
        job_unref(j);
        return ret;
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, j, sse_free);
    if (!r) {
        pthread_mutex_lock(&j->lock);
        cancel_all(j);
        pthread_mutex_unlock(&j->lock);
        job_unref(j);
        return MHD_NO;
    }
    cc->slot = false; /* sse_free releases it */
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    add_cors(h, conn, r);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r); /* sse_free runs when the connection is done with it */
    xc_metrics_http(h->metrics, "chat", 200);
    return ret;
}

/* ---- readiness and the canary ---- */

typedef struct canary_ctx {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    xc_status status;
    int n_tokens;
    char message[200];
    int refs;
} canary_ctx;

static void canary_unref(canary_ctx *k) {
    pthread_mutex_lock(&k->lock);
    bool last = --k->refs == 0;
    pthread_mutex_unlock(&k->lock);
    if (last) {
        pthread_mutex_destroy(&k->lock);
        pthread_cond_destroy(&k->cond);
        xc_free(k);
    }
}

static void canary_event(void *user, const xc_coord_event *ev) {
    canary_ctx *k = user;
    if (ev->kind != XC_COORD_DONE) {
        return;
    }
    pthread_mutex_lock(&k->lock);
    k->done = true;
    k->status = ev->status;
    k->n_tokens = ev->n_tokens;
    snprintf(k->message, sizeof k->message, "%s", ev->message ? ev->message : "");
    pthread_cond_broadcast(&k->cond);
    pthread_mutex_unlock(&k->lock);
    canary_unref(k);
}

static bool http_stopping(xc_http *h) {
    pthread_mutex_lock(&h->lock);
    bool s = h->stopping;
    pthread_mutex_unlock(&h->lock);
    return s;
}

#define CANARY_TOKENS 3

/* CANARY_TOKENS greedy tokens (a prefill and decode steps) from a prompt with one image (when
 * vision is served) through every stage of replica `replica` (the request is pinned to it).
 * Returns true on success; why gets the reason otherwise. The wait for the answer ends early when
 * the server stops (xc_http_destroy must not wait for it). */
static bool canary_replica(xc_http *h, int replica, double limit, char *why, size_t why_len) {
    int T = h->api.image_tokens, S = h->api.image_size;
    int n = (S > 0 ? T : 0) + 3;
    int32_t *ids = xc_calloc((size_t)n, sizeof *ids);
    float *px = S > 0 ? xc_calloc(3u * (size_t)S * (size_t)S, sizeof *px) : NULL;
    canary_ctx *k = xc_calloc(1, sizeof *k);
    if (!ids || (S > 0 && !px) || !k) {
        xc_free(ids);
        xc_free(px);
        xc_free(k);
        snprintf(why, why_len, "out of memory");
        return false;
    }
    pthread_mutex_init(&k->lock, NULL);
    pthread_cond_init(&k->cond, NULL);
    k->refs = 2;
    for (int i = 0; i < n; i++) {
        ids[i] = 1 + i % 3;
    }
    xc_coord_range rr = {1, 1 + T};
    xc_coord_request r = {
        .ids = ids,
        .n = n,
        .img = S > 0 ? &rr : NULL,
        .n_img = S > 0 ? 1 : 0,
        .pixels = px,
        .sampling = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1},
        .max_new_tokens = CANARY_TOKENS,
        .pin_replica = replica + 1};
    uint64_t id = 0;
    xc_status st = xc_coord_submit(h->c, &r, canary_event, k, &id);
    xc_free(ids);
    xc_free(px);
    if (st != XC_OK) {
        snprintf(why, why_len, "canary not submitted: %s", xc_err_last());
        k->refs = 1;
        canary_unref(k);
        return false;
    }
    uint64_t end = xc_now_ns() + (uint64_t)(limit * 1e9);
    pthread_mutex_lock(&k->lock);
    while (!k->done && xc_now_ns() < end && !http_stopping(h)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&k->cond, &k->lock, &ts);
    }
    bool ok = k->done && k->status == XC_OK && k->n_tokens == CANARY_TOKENS;
    if (!k->done) {
        snprintf(why, why_len, "canary on replica %d got no answer in %.1f s", replica, limit);
        xc_coord_cancel(h->c, id);
    } else if (k->status != XC_OK) {
        snprintf(why, why_len, "canary on replica %d failed: %s", replica, k->message);
    } else if (!ok) {
        snprintf(why, why_len, "canary on replica %d generated %d tokens, not %d", replica,
                 k->n_tokens, CANARY_TOKENS);
    }
    pthread_mutex_unlock(&k->lock);
    canary_unref(k);
    return ok;
}

/* The canary on every replica in turn (each gets `limit`): /ready means each one generates. */
static bool canary_once(xc_http *h, double limit, char *why, size_t why_len) {
    int n = xc_coord_n_replicas(h->c);
    for (int r = 0; r < n; r++) {
        if (!canary_replica(h, r, limit, why, why_len)) {
            return false;
        }
    }
    return n > 0;
}

static void *canary_main(void *arg) {
    xc_http *h = arg;
    xc_log_set_role("C");
    pthread_mutex_lock(&h->lock);
    while (!h->stopping) {
        pthread_mutex_unlock(&h->lock);
        char why[256] = "";
        bool ok = false;
        if (xc_coord_ready(h->c)) {
            /* at full size on a CPU the canary's image prefill takes minutes: the first one gets
             * --canary-timeout, later ones 3x the previous one's time */
            double limit = h->f.canary_interval_s * 2 + 5;
            double grace = h->canary_last_s > 0 ? 3 * h->canary_last_s : h->f.canary_timeout_s;
            limit = grace > limit ? grace : limit;
            pthread_mutex_lock(&h->lock);
            h->canary_inflight = true;
            pthread_mutex_unlock(&h->lock);
            double t0 = xc_now_s();
            ok = canary_once(h, limit, why, sizeof why);
            double took = xc_now_s() - t0;
            pthread_mutex_lock(&h->lock);
            h->canary_inflight = false;
            if (ok) {
                h->canary_last_s = took;
                double sp = 9 * took;
                h->canary_spacing_s = sp > h->f.canary_interval_s ? sp : h->f.canary_interval_s;
            }
            pthread_mutex_unlock(&h->lock);
        } else {
            snprintf(why, sizeof why, "the coordinator is not ready");
        }
        pthread_mutex_lock(&h->lock);
        if (ok != h->canary_last_ok) {
            if (ok) {
                XC_LOG_INFO("canary: the pipeline answers");
            } else {
                XC_LOG_WARN("canary: %s", why);
            }
        }
        h->canary_last_ok = ok;
        if (ok) {
            h->canary_ok_ns = xc_now_ns();
        }
        snprintf(h->canary_why, sizeof h->canary_why, "%s", why);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double iv = ok ? h->canary_spacing_s : 0.25; /* retry soon after a failure */
        ts.tv_sec += (time_t)iv;
        ts.tv_nsec += (long)((iv - (double)(time_t)iv) * 1e9);
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        if (!h->stopping) {
            pthread_cond_timedwait(&h->cond, &h->lock, &ts);
        }
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

/* Ready = the coordinator's readiness (every role placed, loaded, heartbeating) and, with the
 * canary on, the latest canary succeeded and another is in flight or that success is at most 3
 * canary spacings + 5 s old. */
static bool is_ready(xc_http *h, char *why, size_t n) {
    if (!xc_coord_ready(h->c)) {
        snprintf(why, n, "not every stage is placed, loaded and heartbeating");
        return false;
    }
    if (h->f.canary_interval_s <= 0) {
        return true;
    }
    pthread_mutex_lock(&h->lock);
    /* an in-flight canary counts until its limit ends it */
    bool ok = h->canary_last_ok &&
              (h->canary_inflight ||
               xc_now_ns() - h->canary_ok_ns < (uint64_t)(3 * h->canary_spacing_s * 1e9) + 5e9);
    snprintf(why, n, "%s", h->canary_why[0] ? h->canary_why : "no canary has succeeded yet");
    pthread_mutex_unlock(&h->lock);
    return ok;
}

/* ---- routing ---- */

static bool authorized(xc_http *h, struct MHD_Connection *conn) {
    pthread_rwlock_rdlock(&h->keys_lock);
    bool ok = h->n_keys == 0;
    const char *a = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (ok || !a || strncasecmp(a, "Bearer ", 7) != 0) {
        pthread_rwlock_unlock(&h->keys_lock);
        return ok;
    }
    a += 7;
    size_t la = strlen(a);
    for (int i = 0; i < h->n_keys; i++) {
        /* constant time in the key's content */
        size_t lk = strlen(h->keys[i]);
        unsigned diff = (unsigned)(la != lk);
        for (size_t k = 0; k < lk; k++) {
            diff |= (unsigned)(unsigned char)h->keys[i][k] ^ (unsigned char)(k < la ? a[k] : 0);
        }
        ok = ok || diff == 0;
    }
    pthread_rwlock_unlock(&h->keys_lock);
    return ok;
}

/* The routes and their methods: an unknown path is 404 whatever the method, a known path with
 * another method 405 with Allow. */
static const struct {
    const char *path;
    bool post; /* POST (with a body), else GET/HEAD */
} routes[] = {
    {"/health", false},
    {"/ready", false},
    {"/metrics", false},
    {"/v1/models", false},
    {"/version", false},
    {"/v1/chat/completions", true},
    {"/v1/completions", true},
    {"/tokenize", true},
    {"/detokenize", true},
    {"/v1/compositions", true},
    {"/v1/compositions/edit", true},
};

/* 0: unknown path; 1: known, method fits; -1: known, other method (*allow set). */
static int route_match(const char *url, const char *method, const char **allow) {
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool post = !strcmp(method, "POST");
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!strcmp(url, routes[i].path)) {
            *allow = routes[i].post ? "POST" : "GET, HEAD";
            return (routes[i].post ? post : get) ? 1 : -1;
        }
    }
    return 0;
}

static enum MHD_Result route(xc_http *h, struct MHD_Connection *conn, const char *url,
                             const char *method, conn_ctx *cc) {
    xc_api_error e = {0};
    const char *allow = NULL;
    int m = route_match(url, method, &allow);
    if (!strcmp(url, "/health") && m == 1) {
        static const char ok[] = "{\"status\":\"ok\"}";
        return respond(h, conn, "health", 200, "application/json", ok, sizeof ok - 1, NULL);
    }
    if (!authorized(h, conn)) {
        xc_api_error_set(&e, 401, "authentication_error", "invalid_api_key", NULL,
                         "missing or invalid API key (Authorization: Bearer KEY)");
        return respond_error(h, conn, "auth", &e);
    }
    if (m == 0) {
        xc_api_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "no route %.200s",
                         url);
        return respond_error(h, conn, "other", &e);
    }
    if (m < 0) {
        xc_api_error_set(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                         "%.200s takes %s, not %.20s", url, allow, method);
        return respond_json_hdr(h, conn, "other", 405, xc_api_error_json(&e), "Allow", allow);
    }
    if (!strcmp(url, "/v1/chat/completions")) {
        return chat(h, conn, cc, false);
    }
    if (!strcmp(url, "/v1/completions")) {
        return chat(h, conn, cc, true);
    }
    if (!strcmp(url, "/tokenize") || !strcmp(url, "/detokenize")) {
        bool tk = !strcmp(url, "/tokenize");
        if (cc->too_big) {
            too_large(h, &e);
            return respond_error(h, conn, "other", &e);
        }
        char *out = NULL;
        work_enter(h);
        xc_status st = (tk ? xc_api_tokenize : xc_api_detokenize)(
            &h->api, h->tok, cc->body.p ? cc->body.p : "", cc->body.n, &out, &e);
        work_leave(h);
        if (st != XC_OK) {
            return respond_error(h, conn, "other", &e);
        }
        return respond_json(h, conn, "other", 200, out, NULL);
    }
    if (!strcmp(url, "/version")) {
        static const char v[] = "{\"version\":\"" XC_VERSION_STRING "\"}";
        return respond(h, conn, "other", 200, "application/json", v, sizeof v - 1, NULL);
    }
    if (xc_compose_http_is_route(url)) {
        return xc_compose_http_handle(h->compose, conn, url, method, cc->body.p, cc->body.n,
                                      cc->too_big);
    }
    if (!strcmp(url, "/v1/models")) {
        return respond_json(h, conn, "models", 200,
                            xc_api_models_json(h->model_name, h->started, h->api.max_context),
                            NULL);
    }
    if (!strcmp(url, "/ready")) {
        char why[300], body[512];
        bool ok = is_ready(h, why, sizeof why);
        if (ok) {
            snprintf(body, sizeof body, "{\"ready\":true}");
        } else {
            for (char *q = why; *q; q++) { /* keep the JSON string valid */
                if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20) {
                    *q = ' ';
                }
            }
            snprintf(body, sizeof body, "{\"ready\":false,\"reason\":\"%s\"}", why);
        }
        return respond(h, conn, "ready", ok ? 200 : 503, "application/json", body, strlen(body),
                       ok ? NULL : "5");
    }
    if (!strcmp(url, "/metrics")) {
        xc_coord_stats cs;
        xc_coord_get_stats(h->c, &cs);
        char why[8];
        xc_metrics_stage ms[XC_COORD_STATS_MAX_STAGES];
        for (int i = 0; i < cs.n_stages; i++) {
            ms[i] = (xc_metrics_stage){.replica = cs.stages[i].replica,
                                       .stage = cs.stages[i].stage,
                                       .busy_ratio = cs.stages[i].busy_ratio,
                                       .bytes_out = cs.stages[i].bytes_sent,
                                       .mbatches = cs.stages[i].microbatches,
                                       .sequences = cs.stages[i].sequences,
                                       .kv_bytes_per_token = cs.stages[i].kv_bytes_per_token};
        }
        uint64_t ic_hits = 0, ic_misses = 0;
        size_t ic_bytes = 0;
        if (h->api.imgcache) {
            int ic_entries = 0;
            xc_api_imgcache_stats(h->api.imgcache, &ic_hits, &ic_misses, &ic_entries, &ic_bytes);
        }
        xc_metrics_gauges g = {.running = cs.running,
                               .waiting = cs.waiting,
                               .http_active = atomic_load(&h->active),
                               .kv_blocks_used = cs.kv_blocks_used,
                               .kv_blocks_total = cs.kv_blocks_total,
                               .ready = is_ready(h, why, sizeof why),
                               .vision_encode_s = cs.vision_s,
                               .vision_images = cs.vision_images,
                               .image_cache_hits = cs.image_cache_hits,
                               .image_cache_misses = cs.image_cache_misses,
                               .prompt_rows_computed = cs.prompt_rows_computed,
                               .prefix_hit_rows = cs.prefix_hit_rows,
                               .input_cache_hits = (double)ic_hits,
                               .input_cache_misses = (double)ic_misses,
                               .input_cache_bytes = (double)ic_bytes,
                               .bytes_to_stage0 = cs.bytes_to_stage0,
                               .resumes = cs.resumes,
                               .resume_failures = cs.resume_failures,
                               .step_timeouts = cs.step_timeouts,
                               .worker_restarts = cs.worker_restarts,
                               .replica_failures = cs.replica_failures,
                               .slow_peer_sends = cs.slow_peer_sends,
                               .unknown_dropped = cs.unknown_dropped,
                               .stages = ms,
                               .n_stages = cs.n_stages};
        size_t len = 0;
        char *text = xc_metrics_render(h->metrics, &g, &len);
        if (!text) {
            return respond_json(h, conn, "metrics", 500, NULL, NULL);
        }
        enum MHD_Result r =
            respond(h, conn, "metrics", 200, "text/plain; version=0.0.4", text, len, NULL);
        xc_free(text);
        return r;
    }
    xc_api_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "no route %.200s", url);
    return respond_error(h, conn, "other", &e);
}

/* Admission on the first callback of a request, before any body byte is read: the API key (401),
 * the declared Content-Length (413), and for generation a slot of --max-concurrent-requests
 * (429). A refusal is queued at once, so libmicrohttpd never reads the body (it answers and
 * closes; no 100-continue is sent). Returns true when a response was queued (*ret says how). */
static bool admit(xc_http *h, struct MHD_Connection *conn, const char *url, const char *method,
                  conn_ctx *cc, enum MHD_Result *ret) {
    xc_api_error e = {0};
    const char *allow = NULL;
    if (!strcmp(method, "OPTIONS") && h->f.allowed_origins && h->f.allowed_origins[0] &&
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Method")) {
        /* a CORS preflight: answered without a key (browsers send none on it) */
        if (route_match(url, "GET", &allow) == 0) {
            xc_api_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "no route %.200s",
                             url);
            *ret = respond_error(h, conn, "other", &e);
            return true;
        }
        if (!cors_origin(h, conn)) {
            xc_api_error_set(&e, 403, "permission_error", "origin_not_allowed", NULL,
                             "this origin is not in --allowed-origins");
            *ret = respond_error(h, conn, "other", &e);
            return true;
        }
        struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (!r) {
            *ret = MHD_NO;
            return true;
        }
        char methods[64];
        snprintf(methods, sizeof methods, "%s, OPTIONS", allow);
        const char *rh =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Headers");
        add_cors(h, conn, r);
        MHD_add_response_header(r, "Access-Control-Allow-Methods", methods);
        MHD_add_response_header(r, "Access-Control-Allow-Headers",
                                rh && strlen(rh) < 1024 ? rh : "Authorization, Content-Type");
        MHD_add_response_header(r, "Access-Control-Max-Age", "600");
        *ret = MHD_queue_response(conn, 204, r);
        MHD_destroy_response(r);
        xc_metrics_http(h->metrics, "other", 204);
        return true;
    }
    if (!strcmp(url, "/health")) {
        return false;
    }
    if (!authorized(h, conn)) {
        xc_api_error_set(&e, 401, "authentication_error", "invalid_api_key", NULL,
                         "missing or invalid API key (Authorization: Bearer KEY)");
        *ret = respond_error(h, conn, "auth", &e);
        return true;
    }
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
    if (n > h->max_body) {
        too_large(h, &e);
        *ret = respond_error(h, conn, "chat", &e);
        return true;
    }
    if (strcmp(method, "POST") || route_match(url, method, &allow) != 1) {
        cc->discard = true;
        return false; /* routed (404/405/GET) once the request is complete */
    }
    if (atomic_fetch_add(&h->active, 1) >= h->f.max_concurrent) {
        atomic_fetch_sub(&h->active, 1);
        xc_api_error_set(&e, 429, "rate_limit_error", "queue_full", NULL,
                         "the server is at its limit of %d concurrent requests; retry later",
                         h->f.max_concurrent);
        *ret = respond_error(h, conn, "chat", &e);
        return true;
    }
    cc->slot = true;
    /* the body in one allocation of the declared size (no doubling on the way) */
    if (n > 0) {
        cc->body.p = xc_malloc((size_t)n + 1);
        if (!cc->body.p) {
            *ret = respond_json(h, conn, "chat", 500, NULL, NULL);
            return true;
        }
        cc->body.cap = (size_t)n + 1;
    }
    return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    (void)version;
    xc_http *h = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) {
        cc = xc_calloc(1, sizeof *cc);
        if (!cc) {
            return MHD_NO;
        }
        *con_cls = cc;
        enum MHD_Result ret = MHD_NO;
        if (admit(h, conn, url, method, cc, &ret)) {
            return ret;
        }
        return MHD_YES;
    }
    if (*upload_size && cc->discard) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        /* no (or a lying) Content-Length: past the limit the rest is discarded, then 413 */
        if (!cc->too_big && cc->body.n + *upload_size > h->max_body) {
            cc->too_big = true;
            xc_free(cc->body.p);
            cc->body = (sbuf){0};
        }
        if (!cc->too_big && !sb_add(&cc->body, upload, *upload_size)) {
            return MHD_NO;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    return route(h, conn, url, method, cc);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)conn;
    (void)toe;
    xc_http *h = cls;
    conn_ctx *cc = *con_cls;
    if (cc) {
        if (cc->slot) {
            atomic_fetch_sub(&h->active, 1);
        }
        xc_free(cc->body.p);
        xc_free(cc);
        *con_cls = NULL;
    }
}

/* ---- lifecycle ---- */

/* Appends the keys of list (split at seps; blank lines and '#' comments skipped) to keys[*n]. On
 * failure the keys added so far stay in keys (the caller frees them). */
static xc_status add_keys(char **keys, int *n, const char *list, const char *seps) {
    char *dup = xc_strdup(list);
    if (!dup) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for API keys");
    }
    char *save = NULL;
    for (char *t = strtok_r(dup, seps, &save); t; t = strtok_r(NULL, seps, &save)) {
        while (*t == ' ' || *t == '\t' || *t == '\r') {
            t++;
        }
        size_t l = strlen(t);
        while (l && (t[l - 1] == ' ' || t[l - 1] == '\t' || t[l - 1] == '\r')) {
            t[--l] = 0;
        }
        if (!l || t[0] == '#') {
            continue;
        }
        if (*n == MAX_KEYS) {
            xc_free(dup);
            return xc_errf(XC_ERR_ARG, "at most %d API keys", MAX_KEYS);
        }
        keys[*n] = xc_strdup(t);
        if (!keys[*n]) {
            xc_free(dup);
            return xc_errf(XC_ERR_NOMEM, "out of memory for API keys");
        }
        (*n)++;
    }
    xc_free(dup);
    return XC_OK;
}

/* Appends the keys of the key file path to keys[*n]. XC_ERR_ARG if it cannot be read. */
static xc_status read_key_file(const char *path, char **keys, int *n) {
    char *text = NULL;
    size_t len = 0;
    if (xc_file_read_all(path, 1 << 20, &text, &len) != XC_OK) {
        return xc_errf(XC_ERR_ARG, "cannot read --api-key-file %s: %s", path, xc_err_last());
    }
    xc_status st = add_keys(keys, n, text, "\n");
    xc_free(text);
    return st;
}

xc_status xc_http_reload_keys(xc_http *h) {
    if (!h->f.api_key_file) {
        return xc_errf(XC_ERR_UNSUPPORTED, "no --api-key-file to reload");
    }
    char *keys[MAX_KEYS];
    pthread_rwlock_rdlock(&h->keys_lock);
    int n = h->n_fixed_keys, old_n = h->n_keys;
    pthread_rwlock_unlock(&h->keys_lock);
    int n0 = n;
    for (int i = 0; i < n0; i++) {
        keys[i] = NULL; /* the fixed keys are moved over below, under the lock */
    }
    xc_status st = read_key_file(h->f.api_key_file, keys, &n);
    if (st == XC_OK && n == n0 && old_n > 0) {
        /* an empty file would turn authentication off: a half-written Secret, not a policy */
        st = xc_errf(XC_ERR_ARG, "--api-key-file %s has no keys", h->f.api_key_file);
    }
    if (st != XC_OK) {
        for (int i = n0; i < n; i++) {
            xc_free(keys[i]);
        }
        XC_LOG_ERROR("API keys not reloaded, the %d keys in use stay: %s", old_n, xc_err_last());
        return st;
    }
    pthread_rwlock_wrlock(&h->keys_lock);
    for (int i = 0; i < n0; i++) {
        keys[i] = h->keys[i];
    }
    for (int i = n0; i < h->n_keys; i++) {
        xc_free(h->keys[i]);
    }
    memcpy(h->keys, keys, (size_t)n * sizeof *keys);
    h->n_keys = n;
    pthread_rwlock_unlock(&h->keys_lock);
    XC_LOG_INFO("API keys reloaded from %s: %d key(s) (was %d)", h->f.api_key_file, n, old_n);
    return XC_OK;
}

xc_status xc_http_create(const xc_http_flags *f, const char *model_dir, xc_coord *c,
                         xc_http **out) {
    xc_status st = XC_OK;
    xc_http *h = xc_calloc(1, sizeof *h);
    if (!h) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for the HTTP server");
    }
    h->f = *f;
    h->c = c;
    h->started = (long)time(NULL);
    h->canary_spacing_s = f->canary_interval_s;
    atomic_init(&h->next_id, rand64() & 0xffffffffffffull);
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    pthread_rwlock_init(&h->keys_lock, NULL);
    XC_TRY_GOTO(xc_metrics_create(&h->metrics), st, fail);
    /* bodies, JSON strings, images: blocks of 256 KiB and more are mapped and unmapped at once
     * (a fixed threshold turns off glibc's growing one, which kept freed multi-MiB blocks in
     * the per-thread arenas: the bound of docs/api.md is then what RSS really reaches) */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    /* the default body: one largest image as base64 (4/3) plus 1 MiB of text and JSON */
    h->max_body = f->max_body_kb > 0 ? (size_t)f->max_body_kb << 10
                                     : (((size_t)f->max_image_mb << 20) + 2) / 3 * 4 + (1u << 20);
    if (sem_init(&h->work, 0, (unsigned)f->preprocess_slots) != 0) {
        st = xc_errf(XC_ERR_IO, "cannot make the preprocessing semaphore");
        goto fail;
    }
    h->work_init = true;
    /* model name: the flag, else the directory's base name */
    if (f->model_name) {
        snprintf(h->model_name, sizeof h->model_name, "%s", f->model_name);
    } else {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", model_dir);
        size_t l = strlen(tmp);
        while (l > 1 && tmp[l - 1] == '/') {
            tmp[--l] = 0;
        }
        const char *b = strrchr(tmp, '/');
        snprintf(h->model_name, sizeof h->model_name, "%s", b ? b + 1 : tmp);
    }
    char tpath[4096];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.model", model_dir);
    if ((st = xc_tokenizer_load(f->tokenizer ? f->tokenizer : tpath, &h->tok)) != XC_OK) {
        st = xc_errf(st, "HTTP API: cannot load the tokenizer %s: %s",
                     f->tokenizer ? f->tokenizer : tpath, xc_err_last());
        goto fail;
    }
    if (f->api_keys) {
        XC_TRY_GOTO(add_keys(h->keys, &h->n_keys, f->api_keys, ","), st, fail);
    }
    h->n_fixed_keys = h->n_keys;
    if (f->api_key_file) {
        XC_TRY_GOTO(read_key_file(f->api_key_file, h->keys, &h->n_keys), st, fail);
    }
    if (f->media_dir && !realpath(f->media_dir, h->media_dir)) {
        st = xc_errf(XC_ERR_ARG, "--allowed-media-dir %s does not exist", f->media_dir);
        goto fail;
    }
    if (f->media_hosts && f->media_hosts[0]) {
        XC_TRY_GOTO(xc_media_global_init(), st, fail);
        size_t cap = (size_t)f->max_image_mb << 20, want = (size_t)f->media_max_bytes;
        h->media.allowed_domains = f->media_hosts;
        h->media.max_bytes = want > 0 && want < cap ? want : cap;
        h->media.timeout_s = f->media_timeout_s;
        h->media.allow_private = f->allow_private_media;
    }
    int S = xc_coord_image_size(c);
    bool vl = !strcmp(f->variant, "vl") || (!strcmp(f->variant, "auto") && S > 224);
    h->api = (xc_api_conf){.model_name = h->model_name,
                           .max_n = f->max_n,
                           .max_stop = 4,
                           .max_tokens_limit = f->max_tokens,
                           .default_max_tokens = f->default_max_tokens,
                           .max_context = xc_coord_max_context(c),
                           .max_prompt = xc_coord_max_prompt(c),
                           .max_images = f->max_images,
                           .max_image_bytes = (size_t)f->max_image_mb << 20,
                           .max_pixels = (uint64_t)f->max_image_mpixels * 1000000u,
                           .image_size = S,
                           .image_tokens = xc_coord_image_tokens(c),
                           .media_dir = f->media_dir ? h->media_dir : NULL,
                           .media = h->media.allowed_domains ? &h->media : NULL,
                           .variant = vl ? XC_CHAT_VARIANT_VL : XC_CHAT_VARIANT_7B};
    if (S > 0 && f->image_input_cache_mb > 0) {
        XC_TRY_GOTO(xc_api_imgcache_create((size_t)f->image_input_cache_mb << 20, &h->api.imgcache),
                    st, fail);
    }
    xc_compose_http_conf cconf = {.api = &h->api,
                                  .tok = h->tok,
                                  .c = c,
                                  .search_url = f->image_search_url,
                                  .search_timeout_s = f->image_search_timeout_s,
                                  .max_concurrent = f->max_concurrent,
                                  .clean_up_spaces = xc_compose_read_clean_up(model_dir)};
    XC_TRY_GOTO(xc_compose_http_create(&cconf, &h->compose), st, fail);
    /* the listen address */
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", f->port);
    if (getaddrinfo(f->host, port, &hints, &ai) != 0 || !ai) {
        st = xc_errf(XC_ERR_ARG, "--host %s is not an address this machine can bind", f->host);
        goto fail;
    }
    /* MHD's memory per connection 256 KiB (default 32 KiB, half of it the read buffer): a chat
     * turn's ~66 KB body with its image arrives in one read and one call, not five of 16 KB;
     * the pool is reserved, touched only as used, and freed with the connection */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD |
                     (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    h->d = MHD_start_daemon(
        flags, (uint16_t)f->port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(256u << 10), MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        st = xc_errf(XC_ERR_IO, "cannot listen on %s:%d (in use?)", f->host, f->port);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : f->port;
    if (f->canary_interval_s > 0) {
        if (pthread_create(&h->canary, NULL, canary_main, h) != 0) {
            st = xc_errf(XC_ERR_IO, "cannot start the canary thread");
            goto fail;
        }
        h->canary_started = true;
    }
    XC_LOG_INFO("HTTP API on http://%s:%d (model '%s', %d API key(s)%s)", f->host, h->port,
                h->model_name, h->n_keys, h->n_keys ? "" : ", NO authentication");
    if (!h->n_keys && strcmp(f->host, "127.0.0.1") && strcmp(f->host, "::1") &&
        strcmp(f->host, "localhost")) {
        XC_LOG_WARN("HTTP API listens on %s without API keys (set XC_API_KEYS or "
                    "--api-key-file)",
                    f->host);
    }
    *out = h;
    return XC_OK;
fail:
    xc_http_destroy(h);
    return st;
}

xc_status xc_http_start_if(const xc_http_flags *f, bool line_protocol, const char *model_dir,
                           xc_coord *c, xc_http **out) {
    *out = NULL;
    if (f->no_http || (line_protocol && !f->port_explicit)) {
        return XC_OK;
    }
    return xc_http_create(f, model_dir, c, out);
}

int xc_http_port(const xc_http *h) {
    return h->port;
}

void xc_http_destroy(xc_http *h) {
    if (!h) {
        return;
    }
    pthread_mutex_lock(&h->lock);
    h->stopping = true;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
    if (h->canary_started) {
        pthread_join(h->canary, NULL);
    }
    xc_compose_http_stop(h->compose); /* compositions end at their next step */
    if (h->d) {
        MHD_stop_daemon(h->d); /* joins the connection threads: their jobs end first */
    }
    xc_compose_http_destroy(h->compose);
    xc_api_imgcache_destroy(h->api.imgcache);
    for (int i = 0; i < h->n_keys; i++) {
        xc_free(h->keys[i]);
    }
    xc_tokenizer_destroy(h->tok);
    xc_metrics_destroy(h->metrics);
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->cond);
    pthread_rwlock_destroy(&h->keys_lock);
    if (h->work_init) {
        sem_destroy(&h->work);
    }
    xc_free(h);
}
