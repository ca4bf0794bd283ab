/* The line protocol: parse a request line, submit it, print the answer when it is done. */
#include "xc_coord_lines.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_time.h"

typedef struct line_req {
    char name[64];
    int32_t *toks;
    int n, cap;
    bool lost; /* a token could not be kept (no memory): the answer is an error, not "ok" */
    struct lines_ctx *ctx;
} line_req;

typedef struct lines_ctx {
    FILE *out;
    pthread_mutex_t lock;
    int n_errors;
} lines_ctx;

static void on_event(void *user, const xc_coord_event *ev) {
    line_req *lr = user;
    if (ev->kind == XC_COORD_TOKEN) {
        if (lr->n == lr->cap) {
            int cap = lr->cap ? lr->cap * 2 : 64;
            int32_t *t = xc_realloc(lr->toks, (size_t)cap * sizeof(int32_t));
            if (!t) {
                lr->lost = true;
                return;
            }
            lr->toks = t;
            lr->cap = cap;
        }
        lr->toks[lr->n++] = ev->token;
        return;
    }
    lines_ctx *ctx = lr->ctx;
    pthread_mutex_lock(&ctx->lock);
    if (ev->status == XC_OK && lr->lost) {
        ctx->n_errors++;
        fprintf(ctx->out, "%s error XC_ERR_NOMEM retryable no memory to keep the tokens\n",
                lr->name);
    } else if (ev->status == XC_OK) {
        fprintf(ctx->out, "%s ok", lr->name);
        for (int i = 0; i < lr->n; i++) {
            fprintf(ctx->out, " %d", lr->toks[i]);
        }
        fprintf(ctx->out, "%s\n", ev->stopped ? " stop" : "");
    } else {
        ctx->n_errors++;
        fprintf(ctx->out, "%s error %s%s %s\n", lr->name, xc_status_str(ev->status),
                ev->retryable ? " retryable" : "", ev->message);
    }
    fflush(ctx->out);
    pthread_mutex_unlock(&ctx->lock);
    xc_free(lr->toks);
    xc_free(lr);
}

static int parse_list(const char *s, int img_tokens, int32_t **out, int *n, xc_coord_range *rr,
                      int *n_r) {
    int cap = 64, cnt = 0;
    int32_t *v = xc_malloc((size_t)cap * sizeof(int32_t));
    while (v && *s) {
        int add = 1;
        int32_t val = 0;
        if (!strncmp(s, "img", 3) && rr) {
            if (img_tokens <= 0 || *n_r == 64) {
                xc_free(v);
                return -1;
            }
            add = img_tokens;
            rr[(*n_r)++] = (xc_coord_range){cnt, cnt + img_tokens};
            s += 3;
        } else {
            char *end;
            errno = 0;
            long x = strtol(s, &end, 10);
            if (end == s || errno || x < 0 || x > 0x7fffffff) {
                xc_free(v);
                return -1;
            }
            val = (int32_t)x;
            s = end;
        }
        while (cnt + add > cap) {
            cap *= 2;
            int32_t *nv = xc_realloc(v, (size_t)cap * sizeof(int32_t));
            if (!nv) {
                xc_free(v);
                return -1;
            }
            v = nv;
        }
        for (int i = 0; i < add; i++) {
            v[cnt++] = val;
        }
        if (*s == ',') {
            s++;
        } else if (*s) {
            xc_free(v);
            return -1;
        }
    }
    *out = v;
    *n = cnt;
    return v ? 0 : -1;
}

static void answer(lines_ctx *ctx, const char *fmt, const char *a, const char *b) {
    pthread_mutex_lock(&ctx->lock);
    fprintf(ctx->out, fmt, a, b);
    fflush(ctx->out);
    pthread_mutex_unlock(&ctx->lock);
}

static void submit_line(xc_coord *c, lines_ctx *ctx, char *line) {
    char *save = NULL, *name = strtok_r(line, " \t", &save);
    if (!name) {
        return;
    }
    xc_coord_request r = {
        .max_new_tokens = 16,
        .sampling = {
            .temperature = 1.0f, .top_k = 50, .top_p = 0.8f, .repetition_penalty = 1.005f}};
    int32_t *ids = NULL, *stop = NULL;
    int n_stop = 0;
    xc_coord_range rr[64];
    int n_r = 0;
    float *px = NULL;
    const char *pixels = NULL;
    char err[1400] = "";
    for (char *kv; (kv = strtok_r(NULL, " \t", &save));) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            snprintf(err, sizeof err, "'%s' is not key=value", kv);
            break;
        }
        *eq = 0;
        const char *k = kv, *v = eq + 1;
        if (!strcmp(k, "ids")) {
            xc_free(ids);
            ids = NULL;
            n_r = 0;
            if (parse_list(v, xc_coord_image_tokens(c), &ids, &r.n, rr, &n_r) != 0) {
                snprintf(err, sizeof err, "bad ids (or an img slot without vision)");
            }
        } else if (!strcmp(k, "stop")) {
            xc_free(stop);
            stop = NULL;
            if (parse_list(v, 0, &stop, &n_stop, NULL, NULL) != 0) {
                snprintf(err, sizeof err, "bad stop ids");
            }
        } else if (!strcmp(k, "pixels")) {
            pixels = v;
        } else if (!strcmp(k, "max")) {
            r.max_new_tokens = atoi(v);
        } else if (!strcmp(k, "greedy")) {
            r.sampling.greedy = atoi(v) != 0;
        } else if (!strcmp(k, "temp")) {
            r.sampling.temperature = strtof(v, NULL);
        } else if (!strcmp(k, "top_p")) {
            r.sampling.top_p = strtof(v, NULL);
        } else if (!strcmp(k, "top_k")) {
            r.sampling.top_k = atoi(v);
        } else if (!strcmp(k, "rep")) {
            r.sampling.repetition_penalty = strtof(v, NULL);
        } else if (!strcmp(k, "seed")) {
            r.sampling.seed = strtoull(v, NULL, 10);
        } else {
            snprintf(err, sizeof err, "unknown key '%s'", k);
            break;
        }
    }
    /* greedy keeps the repetition penalty (rep=, default chat()'s 1.005), as chat(do_sample=False)
     * and xcpipe generate --greedy do */
    /* pixel files, one per slot */
    if (!err[0] && n_r > 0) {
        int S = xc_coord_image_size(c);
        size_t per = 3u * (size_t)S * (size_t)S;
        px = xc_malloc((size_t)n_r * per * sizeof(float));
        const char *p = pixels ? pixels : "";
        for (int i = 0; i < n_r && !err[0] && px; i++) {
            const char *e = strchr(p, ',');
            char path[1024];
            size_t len = e ? (size_t)(e - p) : strlen(p);
            snprintf(path, sizeof path, "%.*s", (int)len, p);
            xc_mmap m;
            if (!len || xc_mmap_open(path, &m) != XC_OK) {
                snprintf(err, sizeof err, "image %d: cannot read pixels file '%s'", i, path);
                break;
            }
            if (m.size != per * sizeof(float)) {
                snprintf(err, sizeof err, "%s: %zu bytes, a (3, %d, %d) float32 image has %zu",
                         path, m.size, S, S, per * sizeof(float));
            } else {
                memcpy(px + (size_t)i * per, m.data, m.size);
            }
            xc_mmap_close(&m);
            p = e ? e + 1 : p + len;
        }
        if (!px) {
            snprintf(err, sizeof err, "out of memory");
        }
    }
    const char *code = "XC_ERR_ARG";
    line_req *lr = xc_calloc(1, sizeof *lr);
    if (!err[0] && !lr) {
        code = "XC_ERR_NOMEM";
        snprintf(err, sizeof err, "out of memory"); /* every request gets an answer line */
    }
    if (!err[0]) {
        snprintf(lr->name, sizeof lr->name, "%s", name);
        lr->ctx = ctx;
        r.ids = ids;
        r.img = rr;
        r.n_img = n_r;
        r.pixels = px;
        r.stop_ids = stop;
        r.n_stop_ids = n_stop;
        r.penalize_prompt = n_r == 0;
        xc_status st = xc_coord_submit(c, &r, on_event, lr, NULL);
        if (st != XC_OK) {
            code = xc_status_str(st);
            snprintf(err, sizeof err, "%s", xc_err_last());
        } else {
            lr = NULL;
        }
    }
    if (err[0]) {
        pthread_mutex_lock(&ctx->lock);
        ctx->n_errors++;
        fprintf(ctx->out, "%s error %s %s\n", name, code, err);
        fflush(ctx->out);
        pthread_mutex_unlock(&ctx->lock);
    }
    xc_free(lr);
    xc_free(ids);
    xc_free(stop);
    xc_free(px);
}

int xc_coord_lines_run(xc_coord *c, FILE *in, FILE *out) {
    lines_ctx ctx = {.out = out};
    pthread_mutex_init(&ctx.lock, NULL);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, in)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = 0;
        }
        if (!strcmp(line, "#quit")) {
            break;
        } else if (!strcmp(line, "#ready")) {
            answer(&ctx, "#ready %s%s\n", xc_coord_ready(c) ? "1" : "0", "");
        } else if (!strncmp(line, "#wait-ready", 11)) {
            double t = atof(line + 11);
            xc_status st = xc_coord_wait_ready(c, t > 0 ? t : 30);
            answer(&ctx, "#ready %s%s\n", st == XC_OK ? "1" : "0", "");
        } else if (!strcmp(line, "#sync")) {
            while (xc_coord_n_active(c) > 0) {
                usleep(2000);
            }
            answer(&ctx, "#sync%s%s\n", "", "");
        } else if (line[0] && line[0] != '#') {
            submit_line(c, &ctx, line);
        }
    }
    free(line); /* getline's buffer comes from libc */
    while (xc_coord_n_active(c) > 0) {
        usleep(2000);
    }
    pthread_mutex_destroy(&ctx.lock);
    return ctx.n_errors;
}
