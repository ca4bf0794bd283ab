/* xcpipe bench serve --scenario chat-images: several multimodal conversations at once against
 * running xcpipe HTTP APIs, each one image and --turns user turns, every turn re-sending the whole
 * history (image included) as a chat client does; greedy. Run against a server with the prefix
 * cache (--url) and one without (--url-off, `--no-prefix-cache`), one after the other: prints the
 * time to first token per turn for both, the speedup, the prompt rows each server computed
 * (/metrics), and whether every answer is identical. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_time.h"

#define MAX_TURNS    16
#define MAX_CONV     64
#define BC_MAX_CHUNK (1ull << 30) /* a chunk size above this is refused */

typedef struct bc_conf {
    const char *url, *url_off, *api_key, *model, *images, *scenario;
    int conversations, turns, max_tokens, rounds;
} bc_conf;

static const xc_conf_entry bc_entries[] = {
    XC_CONF_STR("scenario", NULL, bc_conf, scenario, "chat-images", "chat-images", "this scenario"),
    XC_CONF_STR("url", "XC_BENCH_URL", bc_conf, url, "http://127.0.0.1:8000", NULL,
                "server with the prefix cache (http://HOST:PORT)"),
    XC_CONF_STR("url-off", NULL, bc_conf, url_off, NULL, NULL,
                "the same model served with --no-prefix-cache (none: only --url is measured)"),
    XC_CONF_STR("api-key", "XC_BENCH_API_KEY", bc_conf, api_key, NULL, NULL, "Bearer key"),
    XC_CONF_STR("model", NULL, bc_conf, model, "tiny", NULL, "model id to request"),
    XC_CONF_STR("image", NULL, bc_conf, images, NULL, NULL,
                "image files, comma-separated (required): conversation i talks about image "
                "i mod their count"),
    XC_CONF_INT("conversations", NULL, bc_conf, conversations, 4, 1, MAX_CONV,
                "conversations at once"),
    XC_CONF_INT("turns", NULL, bc_conf, turns, 4, 1, MAX_TURNS, "user turns per conversation"),
    XC_CONF_INT("max-tokens", NULL, bc_conf, max_tokens, 16, 1, 4096, "max_tokens per turn"),
    XC_CONF_INT("rounds", NULL, bc_conf, rounds, 1, 1, 100,
                "times the whole set runs per server (each with new conversation names, so "
                "nothing is cached across rounds; TTFT medians over all)"),
};

static const xc_conf_spec bc_spec = {
    "xcpipe bench serve --scenario chat-images --image A.jpg[,B.jpg...] --url URL [--url-off URL] "
    "[options]",
    "Multimodal chats, several at once: one image and --turns turns each, every turn re-sending "
    "the whole history with the image; greedy. TTFT per turn with the prefix cache (--url) and "
    "without (--url-off), prompt rows computed, and whether the answers are identical.",
    bc_entries, sizeof bc_entries / sizeof bc_entries[0]};

static const char *const g_questions[] = {
    "What is in the picture?",    "What colours do you see?",
    "Describe the background.",   "What could happen next?",
    "Count the objects.",         "Summarize in one sentence.",
    "Is it indoors or outdoors?", "What is the mood?",
    "Name the main shape.",       "Where is the light from?",
    "What is on the left?",       "What is on the right?",
    "Give it a title.",           "Any text in it?",
    "What time of day is it?",    "What would you change in it?",
};

typedef struct bc_run {
    const bc_conf *c;
    char host[256], port[16];
    char **b64; /* per image */
    int n_img;
    int round;
    unsigned run_id; /* one per invocation: a server that ran it before has nothing cached */
    /* per conversation and turn */
    double ttft[MAX_CONV][MAX_TURNS];
    char *answer[MAX_CONV][MAX_TURNS]; /* JSON-escaped text as streamed */
    int status[MAX_CONV][MAX_TURNS];
} bc_run;

typedef struct bc_job {
    bc_run *r;
    int conv;
} bc_job;

static int parse_url(const char *url, char *host, size_t hl, char *port, size_t pl) {
    const char *u = url;
    if (!strncmp(u, "http://", 7)) {
        u += 7;
    }
    const char *colon = strrchr(u, ':');
    size_t n = colon ? (size_t)(colon - u) : strcspn(u, "/");
    snprintf(host, hl, "%.*s", (int)n, u);
    snprintf(port, pl, "%d", colon ? atoi(colon + 1) : 80);
    return 0;
}

static int dial(const char *host, const char *port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    /* the request goes out in two writes (head, body): without this, on a kept connection the
     * body's last segment waits for the server's delayed ACK of the head (Nagle), ~20-40 ms */
    int one = 1;
    if (fd >= 0) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    freeaddrinfo(ai);
    return fd;
}

/* Reads from fd into *buf (grown as needed; *n bytes held, NUL-terminated) until at least want
 * bytes are held or the peer closes. With ttft (a stream), *ttft = seconds since t0 at the first
 * read that brings an event with non-empty content. Returns false on a read error or close
 * before want. */
static bool read_until(int fd, char **buf, size_t *cap, size_t *n, size_t want, double t0,
                       double *ttft) {
    while (*n < want) {
        if (*n + 4096 > *cap) {
            char *nb = xc_realloc(*buf, *cap * 2);
            if (!nb) {
                return false;
            }
            *buf = nb;
            *cap *= 2;
        }
        ssize_t k = read(fd, *buf + *n, *cap - *n - 1);
        if (k <= 0) {
            return false;
        }
        *n += (size_t)k;
        (*buf)[*n] = 0;
        if (ttft && *ttft < 0) {
            const char *p = strstr(*buf, "\"content\":\"");
            while (p && p[11] == '"') { /* the role chunk's empty content */
                p = strstr(p + 11, "\"content\":\"");
            }
            if (p) {
                *ttft = xc_now_s() - t0;
            }
        }
    }
    return true;
}

static int http_send(const bc_run *r, int *conn, const char *head, size_t hl, const char *body,
                     size_t bl, char **out, double *ttft);

/* Sends one request and reads the whole answer into *out (headers, blank line, then the body with
 * any chunked framing removed; NUL-terminated); with stream, *ttft = seconds to the first event
 * that carries content. conn NULL: a connection of its own (HTTP/1.0, closed after). conn: an
 * HTTP/1.1 connection kept open between calls, as a chat client keeps one (*conn -1 = none yet;
 * one that the server closed while idle is replaced once). Returns the status or 0. */
static int http_call(const bc_run *r, int *conn, const char *method, const char *path,
                     const char *body, char **out, double *ttft) {
    const char *key = r->c->api_key;
    size_t bl = body ? strlen(body) : 0;
    char *head = NULL; /* sized to any key length, never cut */
    int hl = asprintf(&head,
                      "%s %s HTTP/1.%d\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n%s%s%s\r\n",
                      method, path, conn ? 1 : 0, r->host, bl, key ? "Authorization: Bearer " : "",
                      key ? key : "", key ? "\r\n" : "");
    if (hl < 0) {
        return 0;
    }
    int status = http_send(r, conn, head, (size_t)hl, body, bl, out, ttft);
    free(head);
    return status;
}

/* http_call's exchange, with the request head already formatted. */
static int http_send(const bc_run *r, int *conn, const char *head, size_t hl, const char *body,
                     size_t bl, char **out, double *ttft) {
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = conn && *conn >= 0;
        int fd = reused ? *conn : dial(r->host, r->port);
        if (fd < 0) {
            return 0;
        }
        if (conn) {
            *conn = fd;
        }
        double t0 = xc_now_s();
        if (ttft) {
            *ttft = -1;
        }
        size_t cap = 1 << 16, n = 0;
        char *buf = xc_malloc(cap);
        if (buf) {
            buf[0] = 0;
        }
        bool ok = buf && write(fd, head, hl) == (ssize_t)hl &&
                  (!bl || write(fd, body, bl) == (ssize_t)bl);
        /* the headers */
        char *eoh = NULL;
        while (ok && !(eoh = strstr(buf, "\r\n\r\n"))) {
            ok = read_until(fd, &buf, &cap, &n, n + 1, t0, ttft);
        }
        if (!ok || !eoh) {
            xc_free(buf);
            close(fd);
            if (conn) {
                *conn = -1;
            }
            if (reused && n == 0) {
                continue; /* the server closed the idle connection: dial again */
            }
            return 0;
        }
        size_t hdr = (size_t)(eoh - buf) + 4;
        bool chunked = strcasestr(buf, "\r\nTransfer-Encoding: chunked") &&
                       strcasestr(buf, "\r\nTransfer-Encoding: chunked") < eoh;
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        bool keep = conn && !strncmp(buf, "HTTP/1.1", 8) &&
                    !(strcasestr(buf, "\r\nConnection: close") &&
                      strcasestr(buf, "\r\nConnection: close") < eoh);
        if (chunked) { /* de-chunk in place: body bytes move down over the framing */
            size_t w = hdr, rd = hdr;
            for (;;) {
                char *nl = NULL;
                while (ok && !(nl = strstr(buf + rd, "\r\n"))) {
                    ok = read_until(fd, &buf, &cap, &n, n + 1, t0, ttft);
                }
                if (!ok) {
                    break;
                }
                /* a chunk size line: hex digits, optional extensions; a size that does not
                 * parse or is absurd fails the call rather than cut or overrun the body */
                char *end = NULL;
                errno = 0;
                unsigned long long len64 = strtoull(buf + rd, &end, 16);
                if (end == buf + rd || errno || (*end != '\r' && *end != ';') ||
                    len64 > BC_MAX_CHUNK) {
                    ok = false;
                    break;
                }
                size_t len = (size_t)len64;
                rd = (size_t)(nl - buf) + 2;
                ok = read_until(fd, &buf, &cap, &n, rd + len + 2, t0, ttft);
                if (ok && memcmp(buf + rd + len, "\r\n", 2) != 0) {
                    ok = false; /* the chunk's data must end in CRLF */
                }
                if (!ok) {
                    break;
                }
                memmove(buf + w, buf + rd, len);
                w += len;
                rd += len + 2;
                if (len == 0) {
                    break;
                }
            }
            n = w;
        } else if (cl && cl < eoh) {
            ok = read_until(fd, &buf, &cap, &n, hdr + strtoul(cl + 17, NULL, 10), t0, ttft);
        } else {
            read_until(fd, &buf, &cap, &n, SIZE_MAX, t0, ttft); /* to the close */
            keep = false;
        }
        buf[n] = 0;
        if (!ok || !keep) {
            close(fd);
            if (conn) {
                *conn = -1;
            }
        }
        if (!ok) {
            xc_free(buf);
            return 0;
        }
        *out = buf;
        return n >= 12 ? atoi(buf + 9) : 0;
    }
    return 0;
}

/* The content fragments of an SSE body, concatenated as they are (still JSON-escaped). */
static char *sse_content(const char *body) {
    size_t cap = strlen(body) + 1, n = 0;
    char *o = xc_malloc(cap);
    if (!o) {
        return NULL;
    }
    for (const char *p = body; (p = strstr(p, "\"content\":\"")) != NULL;) {
        p += 11;
        const char *e = p;
        while (*e && *e != '"') {
            e += *e == '\\' && e[1] ? 2 : 1;
        }
        memcpy(o + n, p, (size_t)(e - p));
        n += (size_t)(e - p);
        p = e;
    }
    o[n] = 0;
    return o;
}

static char *conv_body(const bc_run *r, int conv, int turn) {
    const bc_conf *c = r->c;
    const char *b64 = r->b64[conv % r->n_img];
    size_t cap = strlen(b64) + 4096;
    for (int t = 0; t < turn; t++) {
        cap += strlen(r->answer[conv][t]) + 256;
    }
    char *b = xc_malloc(cap);
    if (!b) {
        return NULL;
    }
    int n = snprintf(b, cap,
                     "{\"model\":\"%s\",\"stream\":true,\"temperature\":0,\"max_tokens\":%d,"
                     "\"messages\":[{\"role\":\"system\",\"content\":\"Conversation %d of round "
                     "%d (run %08x): answer briefly.\"},{\"role\":\"user\",\"content\":[{\"type\":"
                     "\"image_url\",\"image_url\":{\"url\":\"data:image/jpeg;base64,%s\"}},"
                     "{\"type\":\"text\",\"text\":\"%s\"}]}",
                     c->model, c->max_tokens, conv, r->round, r->run_id, b64, g_questions[0]);
    for (int t = 1; t <= turn; t++) {
        n += snprintf(b + n, cap - (size_t)n,
                      ",{\"role\":\"assistant\",\"content\":\"%s\"},{\"role\":\"user\","
                      "\"content\":\"%s\"}",
                      r->answer[conv][t - 1], g_questions[t % 16]);
    }
    snprintf(b + n, cap - (size_t)n, "]}");
    return b;
}

static void *conv_main(void *arg) {
    bc_job *j = arg;
    bc_run *r = j->r;
    int conn = -1; /* one connection per conversation, kept across its turns */
    for (int t = 0; t < r->c->turns; t++) {
        char *body = conv_body(r, j->conv, t), *resp = NULL;
        double ttft = -1;
        int st = body ? http_call(r, &conn, "POST", "/v1/chat/completions", body, &resp, &ttft) : 0;
        xc_free(body);
        r->status[j->conv][t] = st;
        r->ttft[j->conv][t] = ttft;
        char *hdr_end = resp ? strstr(resp, "\r\n\r\n") : NULL;
        r->answer[j->conv][t] = st == 200 && hdr_end ? sse_content(hdr_end) : NULL;
        xc_free(resp);
        if (!r->answer[j->conv][t]) {
            for (int k = t; k < r->c->turns; k++) {
                r->status[j->conv][k] = k == t ? st : -1;
            }
            break;
        }
    }
    if (conn >= 0) {
        close(conn);
    }
    return NULL;
}

/* A counter from /metrics; -1 if absent. */
static double metric(const bc_run *r, const char *name) {
    char *resp = NULL;
    if (http_call(r, NULL, "GET", "/metrics", NULL, &resp, NULL) != 200) {
        xc_free(resp);
        return -1;
    }
    double v = -1;
    size_t nl = strlen(name);
    for (const char *p = resp; (p = strstr(p, name)) != NULL; p += nl) {
        if ((p == resp || p[-1] == '\n') && p[nl] == ' ') {
            v = atof(p + nl + 1);
            break;
        }
    }
    xc_free(resp);
    return v;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    if (n == 0) {
        return 0;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Runs every round against url; ttft[round][conv][turn] and answers kept in runs. */
static int run_server(const bc_conf *c, const char *url, char **b64, int n_img, unsigned run_id,
                      bc_run *runs, double *rows, double *hits) {
    for (int k = 0; k < c->rounds; k++) {
        bc_run *r = &runs[k];
        r->c = c;
        r->run_id = run_id;
        r->b64 = b64;
        r->n_img = n_img;
        r->round = k;
        parse_url(url, r->host, sizeof r->host, r->port, sizeof r->port);
    }
    double rows0 = metric(&runs[0], "xcpipe_prompt_rows_computed_total");
    double hit0 = metric(&runs[0], "xcpipe_prefix_cache_hit_rows_total");
    for (int k = 0; k < c->rounds; k++) {
        pthread_t th[MAX_CONV];
        bc_job jobs[MAX_CONV];
        int started = 0;
        for (int i = 0; i < c->conversations; i++) {
            jobs[i] = (bc_job){.r = &runs[k], .conv = i};
            if (pthread_create(&th[started], NULL, conv_main, &jobs[i]) == 0) {
                started++;
            }
        }
        for (int i = 0; i < started; i++) {
            pthread_join(th[i], NULL);
        }
        if (started < c->conversations) {
            fprintf(stderr, "bench serve: could not start %d threads\n", c->conversations);
            return 1;
        }
    }
    *rows = metric(&runs[0], "xcpipe_prompt_rows_computed_total") - rows0;
    *hits = metric(&runs[0], "xcpipe_prefix_cache_hit_rows_total") - hit0;
    int bad = 0;
    for (int k = 0; k < c->rounds; k++) {
        for (int i = 0; i < c->conversations; i++) {
            for (int t = 0; t < c->turns; t++) {
                if (runs[k].status[i][t] != 200) {
                    if (!bad++) {
                        fprintf(stderr, "bench serve: %s: conversation %d turn %d: status %d\n",
                                url, i, t + 1, runs[k].status[i][t]);
                    }
                }
            }
        }
    }
    return bad ? 1 : 0;
}

static double turn_median(const bc_conf *c, const bc_run *runs, int t) {
    double v[MAX_CONV * 100];
    int n = 0;
    for (int k = 0; k < c->rounds; k++) {
        for (int i = 0; i < c->conversations; i++) {
            if (runs[k].ttft[i][t] >= 0) {
                v[n++] = runs[k].ttft[i][t];
            }
        }
    }
    return median(v, n);
}

static char *b64_file(const char *path) {
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *d = NULL;
    size_t n = 0;
    if (xc_file_read_all(path, 64u << 20, &d, &n) != XC_OK) {
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)d;
    char *o = xc_malloc(n / 3 * 4 + 8);
    size_t k = 0;
    for (size_t i = 0; o && i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        o[k++] = tb[v >> 18 & 63];
        o[k++] = tb[v >> 12 & 63];
        o[k++] = i + 1 < n ? tb[v >> 6 & 63] : '=';
        o[k++] = i + 2 < n ? tb[v & 63] : '=';
    }
    if (o) {
        o[k] = 0;
    }
    xc_free(d);
    return o;
}

static void free_runs(bc_run *runs, int n) {
    for (int k = 0; runs && k < n; k++) {
        for (int i = 0; i < MAX_CONV; i++) {
            for (int t = 0; t < MAX_TURNS; t++) {
                xc_free(runs[k].answer[i][t]);
            }
        }
    }
    xc_free(runs);
}

int xc_cmd_bench_chat_images(int argc, char **argv) {
    bc_conf c;
    xc_status st = xc_conf_parse(&bc_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK || !c.images) {
        fprintf(stderr, "xcpipe bench serve: %s\n",
                st != XC_OK ? xc_err_last() : "--scenario chat-images needs --image FILE[,FILE]");
        return 2;
    }
    if (c.api_key && xc_cli_check_key("bench serve", "--api-key", c.api_key) != 0) {
        return 2;
    }
    char *b64[16] = {0}, list[4096];
    int n_img = 0;
    if (snprintf(list, sizeof list, "%s", c.images) >= (int)sizeof list) {
        fprintf(stderr, "xcpipe bench serve: --image: the list is longer than %zu bytes\n",
                sizeof list - 1);
        return 2;
    }
    int rc = 0;
    for (char *sv = NULL, *p = strtok_r(list, ",", &sv); p; p = strtok_r(NULL, ",", &sv)) {
        if (n_img == 16) {
            fprintf(stderr, "xcpipe bench serve: --image: at most 16 images\n");
            rc = 2;
            break;
        }
        if (!(b64[n_img++] = b64_file(p))) {
            xc_cli_report("bench serve", p, XC_ERR_IO);
            rc = 1;
        }
    }
    bc_run *on = xc_calloc((size_t)c.rounds, sizeof *on);
    bc_run *off = c.url_off ? xc_calloc((size_t)c.rounds, sizeof *off) : NULL;
    if (!on || (c.url_off && !off)) {
        rc = 1;
    }
    double rows_on = 0, hits_on = 0, rows_off = 0, hits_off = 0;
    if (!rc) {
        double t0 = xc_now_s();
        unsigned run_id = (unsigned)(xc_now_ns() ^ (uint64_t)getpid() << 20);
        rc = run_server(&c, c.url, b64, n_img, run_id, on, &rows_on, &hits_on);
        double t_on = xc_now_s() - t0;
        if (!rc && off) {
            t0 = xc_now_s();
            rc = run_server(&c, c.url_off, b64, n_img, run_id, off, &rows_off, &hits_off);
            printf("wall time: %.2f s with the prefix cache, %.2f s without\n", t_on,
                   xc_now_s() - t0);
        }
    }
    if (!rc) {
        printf("chat-images: %d conversations at once x %d turns (image + whole history each "
               "turn), %d round(s), max_tokens %d, greedy\n",
               c.conversations, c.turns, c.rounds, c.max_tokens);
        printf("%-5s %14s %14s %8s\n", "turn", "ttft cache on", "ttft off", "speedup");
        for (int t = 0; t < c.turns; t++) {
            double a = turn_median(&c, on, t), b = off ? turn_median(&c, off, t) : 0;
            if (off) {
                printf("%-5d %11.1f ms %11.1f ms %7.1fx\n", t + 1, a * 1e3, b * 1e3,
                       a > 0 ? b / a : 0);
            } else {
                printf("%-5d %11.1f ms\n", t + 1, a * 1e3);
            }
        }
        printf("prompt rows computed: %.0f with the cache (%.0f taken from it)", rows_on, hits_on);
        if (off) {
            printf(", %.0f without (%.0f)", rows_off, hits_off);
        }
        printf("\n");
        if (off) {
            int same = 0, total = 0;
            for (int k = 0; k < c.rounds; k++) {
                for (int i = 0; i < c.conversations; i++) {
                    for (int t = 0; t < c.turns; t++) {
                        total++;
                        same += !strcmp(on[k].answer[i][t], off[k].answer[i][t]);
                    }
                }
            }
            printf("answers identical with the cache on and off: %s (%d of %d)\n",
                   same == total ? "yes" : "NO", same, total);
            rc = same == total ? 0 : 1;
        }
    }
    free_runs(on, c.rounds);
    free_runs(off, c.rounds);
    for (int i = 0; i < n_img; i++) {
        xc_free(b64[i]);
    }
    return rc;
}
