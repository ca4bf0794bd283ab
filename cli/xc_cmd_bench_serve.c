/* xcpipe bench serve: N concurrent streaming clients (mixed text and image requests) against a
 * running xcpipe HTTP API for a bounded time; prints requests/s, tokens/s, p50/p99 time to first
 * token and inter-token latency, statuses, and the server's RSS over the run. The client speaks
 * HTTP/1.0 (no chunked encoding) over plain sockets: enough for a load generator. */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
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

typedef struct bs_conf {
    const char *url, *api_key, *model, *image, *prompt, *scenario;
    int clients, max_tokens, pid, image_every;
    double duration;
} bs_conf;

static const xc_conf_entry bs_entries[] = {
    XC_CONF_STR("scenario", NULL, bs_conf, scenario, "mixed", "mixed|chat-images",
                "mixed: this load test; chat-images: multimodal chats with the prefix cache on and "
                "off (its own options: --scenario chat-images --help)"),
    XC_CONF_STR("url", "XC_BENCH_URL", bs_conf, url, "http://127.0.0.1:8000", NULL,
                "server base URL (http://HOST:PORT)"),
    XC_CONF_STR("api-key", "XC_BENCH_API_KEY", bs_conf, api_key, NULL, NULL, "Bearer key"),
    XC_CONF_STR("model", NULL, bs_conf, model, "tiny", NULL, "model id to request"),
    XC_CONF_STR("image", NULL, bs_conf, image, NULL, NULL,
                "image file sent as a data URL in every --image-every-th request"),
    XC_CONF_INT("image-every", NULL, bs_conf, image_every, 2, 1, 1000,
                "every N-th request carries the image"),
    XC_CONF_STR("prompt", NULL, bs_conf, prompt, "Describe the picture in detail.", NULL,
                "user text"),
    XC_CONF_INT("clients", NULL, bs_conf, clients, 16, 1, 4096, "concurrent clients"),
    XC_CONF_FLOAT("duration", NULL, bs_conf, duration, 10, 0.1, 86400, "seconds to run"),
    XC_CONF_INT("max-tokens", NULL, bs_conf, max_tokens, 64, 1, 1 << 20, "max_tokens per request"),
    XC_CONF_INT("coordinator-pid", NULL, bs_conf, pid, 0, 0, 1 << 30,
                "server process whose RSS is reported (0 = none)"),
};

static const xc_conf_spec bs_spec = {
    "xcpipe bench serve --url http://HOST:PORT [--clients N] [--duration S] [options]",
    "Load test of a running server: every client sends streaming chat requests back to back.",
    bs_entries, sizeof bs_entries / sizeof bs_entries[0]};

#define MAX_STATUS 600

typedef struct bs_shared {
    const bs_conf *c;
    char host[256], port[16];
    char *body_text, *body_image;
    double t_end;
    pthread_mutex_t lock;
    long status[MAX_STATUS], other_errors;
    long requests, tokens;
    double *ttft, *itl;
    size_t n_ttft, cap_ttft, n_itl, cap_itl;
} bs_shared;

static void push(double **a, size_t *n, size_t *cap, double v) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 1024;
        double *p = xc_realloc(*a, c * sizeof *p);
        if (!p) {
            return;
        }
        *a = p;
        *cap = c;
    }
    (*a)[(*n)++] = v;
}

/* One streaming request; returns the HTTP status (0 on a connection error). */
static int one_request(bs_shared *sh, const char *body, double *ttft, double **itl, size_t *n_itl,
                       size_t *cap_itl, long *tokens) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(sh->host, sh->port, &hints, &ai) != 0) {
        return 0;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        freeaddrinfo(ai);
        if (fd >= 0) {
            close(fd);
        }
        return 0;
    }
    freeaddrinfo(ai);
    char *head = NULL; /* sized to the key (checked at start: <= 512 bytes) */
    size_t bl = strlen(body);
    int hl = asprintf(&head,
                      "POST /v1/chat/completions HTTP/1.0\r\nHost: %s\r\nContent-Type: "
                      "application/json\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                      sh->host, bl, sh->c->api_key ? "Authorization: Bearer " : "",
                      sh->c->api_key ? sh->c->api_key : "", sh->c->api_key ? "\r\n" : "");
    double t0 = xc_now_s();
    bool sent = hl >= 0 && write(fd, head, (size_t)hl) == hl && write(fd, body, bl) == (ssize_t)bl;
    if (hl >= 0) {
        free(head);
    }
    if (!sent) {
        close(fd);
        return 0;
    }
    /* read everything, timing each "data: " event with content as it arrives */
    size_t cap = 1 << 16, n = 0, scan = 0;
    char *buf = xc_malloc(cap);
    if (!buf) {
        close(fd);
        return 0;
    }
    int status = 0;
    double last = 0;
    *ttft = -1;
    long usage_tokens = -1, content_events = 0;
    for (;;) {
        if (n + 4096 > cap) {
            char *nb = xc_realloc(buf, cap * 2);
            if (!nb) {
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(fd, buf + n, cap - n - 1);
        if (k <= 0) {
            break;
        }
        n += (size_t)k;
        buf[n] = 0;
        double now = xc_now_s();
        if (!status && n >= 12) {
            status = atoi(buf + 9);
        }
        char *p;
        while ((p = strstr(buf + scan, "\n\n")) != NULL) {
            char *ev = strstr(buf + scan, "data: ");
            if (ev && ev < p && strstr(ev, "\"content\":\"") && strstr(ev, "\"content\":\"") < p &&
                strncmp(strstr(ev, "\"content\":\""), "\"content\":\"\"", 12) != 0) {
                content_events++;
                if (*ttft < 0) {
                    *ttft = now - t0;
                } else {
                    push(itl, n_itl, cap_itl, now - last);
                }
                last = now;
            }
            char *u = ev && ev < p ? strstr(ev, "\"completion_tokens\":") : NULL;
            if (u && u < p) {
                usage_tokens = atol(u + 20);
            }
            scan = (size_t)(p - buf) + 2;
        }
    }
    close(fd);
    xc_free(buf);
    *tokens = usage_tokens >= 0 ? usage_tokens : content_events;
    return status;
}

static void *client_main(void *arg) {
    bs_shared *sh = arg;
    double *itl = NULL;
    size_t n_itl = 0, cap_itl = 0;
    for (long i = 0; xc_now_s() < sh->t_end; i++) {
        bool img = sh->body_image && (i % sh->c->image_every) == sh->c->image_every - 1;
        double ttft = -1;
        long toks = 0;
        n_itl = 0;
        int st = one_request(sh, img ? sh->body_image : sh->body_text, &ttft, &itl, &n_itl,
                             &cap_itl, &toks);
        pthread_mutex_lock(&sh->lock);
        if (st > 0 && st < MAX_STATUS) {
            sh->status[st]++;
        } else {
            sh->other_errors++;
        }
        if (st == 200) {
            sh->requests++;
            sh->tokens += toks;
            if (ttft >= 0) {
                push(&sh->ttft, &sh->n_ttft, &sh->cap_ttft, ttft);
            }
            for (size_t k = 0; k < n_itl; k++) {
                push(&sh->itl, &sh->n_itl, &sh->cap_itl, itl[k]);
            }
        }
        pthread_mutex_unlock(&sh->lock);
        if (st == 429 || st == 503) {
            usleep(20000); /* the server asked to retry later */
        }
    }
    xc_free(itl);
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p) {
    if (!n) {
        return 0;
    }
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static long rss_kb(int pid) {
    if (pid <= 0) {
        return 0;
    }
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = atol(line + 6);
        }
    }
    if (f) {
        fclose(f);
    }
    return kb;
}

static char *make_body(const bs_conf *c, const char *b64) {
    size_t cap = strlen(c->prompt) + (b64 ? strlen(b64) : 0) + 1024;
    char *b = xc_malloc(cap);
    if (!b) {
        return NULL;
    }
    if (b64) {
        snprintf(b, cap,
                 "{\"model\":\"%s\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                 "\"max_tokens\":%d,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"image_url\",\"image_url\":{\"url\":\"data:image/jpeg;base64,%s\"}},{\"type\":"
                 "\"text\",\"text\":\"%s\"}]}]}",
                 c->model, c->max_tokens, b64, c->prompt);
    } else {
        snprintf(b, cap,
                 "{\"model\":\"%s\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                 "\"max_tokens\":%d,\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
                 c->model, c->max_tokens, c->prompt);
    }
    return b;
}

static char *b64_encode(const unsigned char *d, size_t n) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = xc_malloc(n / 3 * 4 + 8);
    size_t k = 0;
    for (size_t i = 0; o && i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (i + 1 < n ? (unsigned)d[i + 1] << 8 : 0) |
                     (i + 2 < n ? d[i + 2] : 0);
        o[k++] = t[v >> 18 & 63];
        o[k++] = t[v >> 12 & 63];
        o[k++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        o[k++] = i + 2 < n ? t[v & 63] : '=';
    }
    if (o) {
        o[k] = 0;
    }
    return o;
}

int xc_cmd_bench_chat_images(int argc, char **argv); /* xc_cmd_bench_chat.c */

int xc_cmd_bench_serve(int argc, char **argv) {
    for (int i = 1; i < argc; i++) { /* --scenario chat-images has its own options */
        if ((!strcmp(argv[i], "--scenario") && i + 1 < argc &&
             !strcmp(argv[i + 1], "chat-images")) ||
            !strcmp(argv[i], "--scenario=chat-images")) {
            return xc_cmd_bench_chat_images(argc, argv);
        }
    }
    bs_conf c;
    xc_status st = xc_conf_parse(&bs_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench serve: %s\n", xc_err_last());
        return 2;
    }
    if (c.api_key && xc_cli_check_key("bench serve", "--api-key", c.api_key) != 0) {
        return 2;
    }
    bs_shared *sh = xc_calloc(1, sizeof *sh);
    if (!sh) {
        return 1;
    }
    sh->c = &c;
    pthread_mutex_init(&sh->lock, NULL);
    const char *u = c.url;
    if (!strncmp(u, "http://", 7)) {
        u += 7;
    }
    const char *colon = strrchr(u, ':');
    size_t hl = colon ? (size_t)(colon - u) : strcspn(u, "/");
    snprintf(sh->host, sizeof sh->host, "%.*s", (int)hl, u);
    snprintf(sh->port, sizeof sh->port, "%d", colon ? atoi(colon + 1) : 80);
    sh->body_text = make_body(&c, NULL);
    if (c.image) {
        char *data = NULL;
        size_t n = 0;
        if (xc_file_read_all(c.image, 64u << 20, &data, &n) != XC_OK) {
            xc_cli_report("bench serve", c.image, XC_ERR_IO);
            xc_free(sh->body_text);
            xc_free(sh);
            return 1;
        }
        char *b64 = b64_encode((unsigned char *)data, n);
        sh->body_image = b64 ? make_body(&c, b64) : NULL;
        xc_free(b64);
        xc_free(data);
    }
    long rss0 = rss_kb(c.pid), rss_mid = 0;
    double t0 = xc_now_s();
    sh->t_end = t0 + c.duration;
    pthread_t *th = xc_calloc((size_t)c.clients, sizeof *th);
    int started = 0;
    for (int i = 0; th && i < c.clients; i++) {
        started += pthread_create(&th[i], NULL, client_main, sh) == 0;
    }
    /* RSS at half time (minute 1 of a 2-minute run) */
    while (xc_now_s() < t0 + c.duration / 2) {
        usleep(50000);
    }
    rss_mid = rss_kb(c.pid);
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
    }
    double el = xc_now_s() - t0;
    long rss1 = rss_kb(c.pid);
    qsort(sh->ttft, sh->n_ttft, sizeof(double), cmp_d);
    qsort(sh->itl, sh->n_itl, sizeof(double), cmp_d);
    printf("clients: %d, duration: %.1f s, max_tokens: %d, image every %d: %s\n", c.clients, el,
           c.max_tokens, c.image_every, c.image ? c.image : "none");
    printf("requests: %ld ok (%.2f/s), tokens: %ld (%.1f/s)\n", sh->requests,
           (double)sh->requests / el, sh->tokens, (double)sh->tokens / el);
    printf("ttft: p50 %.2f ms, p99 %.2f ms (%zu)\n", pct(sh->ttft, sh->n_ttft, 0.5) * 1e3,
           pct(sh->ttft, sh->n_ttft, 0.99) * 1e3, sh->n_ttft);
    printf("inter-token: p50 %.2f ms, p99 %.2f ms (%zu)\n", pct(sh->itl, sh->n_itl, 0.5) * 1e3,
           pct(sh->itl, sh->n_itl, 0.99) * 1e3, sh->n_itl);
    printf("statuses:");
    for (int s = 0; s < MAX_STATUS; s++) {
        if (sh->status[s]) {
            printf(" %d=%ld", s, sh->status[s]);
        }
    }
    printf(" connection-errors=%ld\n", sh->other_errors);
    bool bad = sh->other_errors > 0;
    printf("errors:");
    for (int s = 0; s < MAX_STATUS; s++) {
        if (sh->status[s] && s != 200 && s != 429) {
            printf(" %d=%ld", s, sh->status[s]);
            bad = true;
        }
    }
    printf("%s\n", bad ? "" : " none");
    if (c.pid) {
        printf("server rss: start %ld KiB, half time %ld KiB, end %ld KiB (growth over the second "
               "half %.2f%%)\n",
               rss0, rss_mid, rss1, rss_mid ? 100.0 * (double)(rss1 - rss_mid) / rss_mid : 0.0);
    }
    xc_free(th);
    xc_free(sh->ttft);
    xc_free(sh->itl);
    xc_free(sh->body_text);
    xc_free(sh->body_image);
    pthread_mutex_destroy(&sh->lock);
    xc_free(sh);
    return bad ? 1 : 0;
}
