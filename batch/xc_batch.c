/* The batch runner: up-front checks, resume from the output files, libcurl multi with C requests
 * in flight, retries with backoff, whole-line records, progress and a clean stop. */
#include "xc_batch.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch_docs.h"
#include "xc_batch_ids.h"
#include "xc_batch_input.h"
#include "xc_mem.h"
#include "xc_time.h"

#define MAX_RESPONSE_BYTES (64u << 20)

void xc_batch_conf_defaults(xc_batch_conf *c) {
    memset(c, 0, sizeof *c);
    c->concurrency = 8;
    c->max_retries = 8;
    c->retry_base_s = 0.5;
    c->retry_max_s = 30;
    c->timeout_s = 600;
    c->fsync_every = 1;
    c->max_image_bytes = 20u << 20;
    c->progress = XC_BATCH_PROGRESS_AUTO;
    c->progress_interval_s = 10;
    c->log = stderr;
}

double xc_batch_backoff(int attempt, double retry_after_s, double base, double max, double jitter) {
    if (retry_after_s >= 0) {
        return retry_after_s < max ? retry_after_s : max;
    }
    double d = base * pow(2.0, attempt > 1 ? attempt - 1 : 0);
    if (d > max) {
        d = max;
    }
    return d * (0.75 + 0.5 * jitter);
}

bool xc_batch_retryable(int http_status, int curl_code) {
    if (http_status > 0) {
        return http_status == 408 || http_status == 429 || http_status == 502 ||
               http_status == 503 || http_status == 504;
    }
    switch ((CURLcode)curl_code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
        return true;
    default:
        return false;
    }
}

/* ---- state ---- */

typedef struct item {
    long long off; /* the line in the input file */
    size_t len;
    int lineno;
    char *custom_id;
    int attempts;        /* sent so far */
    uint64_t not_before; /* ns: earliest next send (retries) */
    bool compose;        /* POST /v1/compositions */
} item;

typedef struct xfer {
    CURL *e;
    int item; /* -1 = slot free */
    char *body;
    char *resp;
    size_t n_resp, cap_resp;
    bool too_large;
    double retry_after_s; /* -1 = none */
    char request_id[128];
} xfer;

typedef struct runner {
    const xc_batch_conf *c;
    xc_batch_summary *s;
    xc_batch_input_conf ic;
    char base_dir[PATH_MAX];
    char url[1024], models_url[1024], compose_url[1024];
    char *default_model;
    FILE *in;
    char *line;
    size_t line_cap;
    xc_batch_ids *ids; /* every custom_id of the input (value: line) */
    xc_batch_ids *done;
    xc_batch_output *out, *err;
    item *items; /* (n_items) the requests to send */
    size_t n_items, cap_items;
    int *queue; /* (n_items) FIFO of items ready to send; retries go back in */
    size_t q_head, q_tail;
    int *waiting; /* items waiting for their backoff */
    size_t n_waiting;
    xfer *xf; /* (concurrency) */
    int n_inflight;
    CURLM *multi;
    struct curl_slist *headers;
    uint64_t rng;
    uint64_t t0;    /* the run began */
    uint64_t t_run; /* the first request could go (0 = not yet) */
    double last_progress;
    bool bar;
    bool stopping;
    xc_status fatal;
} runner;

static uint64_t next_u64(runner *r) {
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return r->rng;
}

static double rnd(runner *r) {
    return (double)(next_u64(r) >> 11) / 9007199254740992.0;
}

/* "batch_req_" + 24 hex digits, as OpenAI's record ids look */
static void record_id(runner *r, char *buf, size_t n) {
    uint64_t a = next_u64(r), b = next_u64(r);
    snprintf(buf, n, "batch_req_%016llx%08llx", (unsigned long long)a,
             (unsigned long long)(b >> 32));
}

static void seed_rng(runner *r) {
    uint64_t s = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &s, sizeof s) != (ssize_t)sizeof s) {
            s = 0;
        }
        close(fd);
    }
    r->rng = (s ^ xc_now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
}

static double elapsed(const runner *r) {
    return (double)(xc_now_ns() - r->t0) * 1e-9;
}

/* Sets the fatal reason (first one wins) and stops admitting. */
static void fail_run(runner *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail_run(runner *r, const char *fmt, ...) {
    if (!r->s->fatal[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->s->fatal, sizeof r->s->fatal, fmt, ap);
        va_end(ap);
    }
    r->fatal = XC_ERR_IO;
    r->stopping = true;
}

/* The progress line's end of line on a terminal: clear what is there first. */
static void clear_bar(runner *r) {
    if (r->bar && r->c->log) {
        fputs("\r\033[K", r->c->log);
    }
}

static void logf_(runner *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logf_(runner *r, const char *fmt, ...) {
    if (!r->c->log) {
        return;
    }
    clear_bar(r);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(r->c->log, fmt, ap);
    va_end(ap);
    fflush(r->c->log);
    r->last_progress = -1e9; /* redraw the bar at once */
}

/* ---- records ---- */

/* Appends a record (NUL-terminated line, taken and freed) to its file. */
static xc_status write_record(runner *r, bool failure, char *line) {
    if (!line) {
        fail_run(r, "out of memory building a record");
        return XC_ERR_NOMEM;
    }
    xc_batch_output *o = failure && r->err ? r->err : r->out;
    xc_status st = xc_batch_output_append(o, line, strlen(line));
    xc_free(line);
    if (st != XC_OK) {
        fail_run(r, "%s", xc_err_last());
    }
    return st;
}

static void write_error(runner *r, const char *custom_id, const char *code, const char *msg) {
    char id[48];
    record_id(r, id, sizeof id);
    if (write_record(r, true, xc_batch_output_error(id, custom_id, code, msg, NULL)) == XC_OK) {
        xc_batch_ids_add(r->done, custom_id, strlen(custom_id), -1, NULL);
    }
}

/* ---- input ---- */

static xc_status read_at(runner *r, long long off, size_t len) {
    if (r->line_cap < len + 1) {
        char *p = xc_realloc(r->line, len + 1);
        if (!p) {
            return xc_errf(XC_ERR_NOMEM, "out of memory (input line of %zu bytes)", len);
        }
        r->line = p;
        r->line_cap = len + 1;
    }
    if (fseeko(r->in, (off_t)off, SEEK_SET) != 0 || fread(r->line, 1, len, r->in) != len) {
        return xc_errf(XC_ERR_IO, "%s: cannot re-read bytes %lld..%lld (did it change?)",
                       r->c->input, off, off + (long long)len);
    }
    r->line[len] = 0;
    return XC_OK;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!strchr(" \t\r", s[i])) {
            return false;
        }
    }
    return true;
}

/* Checks every line: refusals are reported with their line numbers (and recorded when the line
 * has a custom_id that is not yet answered); valid unanswered lines become items. */
static xc_status scan_input(runner *r, bool *need_model) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long long off = 0;
    int lineno = 0;
    xc_status st = XC_OK;
    *need_model = false;
    while (st == XC_OK && (n = getline(&line, &cap, r->in)) > 0) {
        lineno++;
        long long here = off;
        off += n;
        size_t len = (size_t)n;
        if (line[len - 1] == '\n') {
            len--;
        }
        if (blank(line, len)) {
            continue;
        }
        r->s->lines++;
        xc_batch_input_line info;
        xc_batch_input_error e;
        xc_status cs = xc_batch_input_check(&r->ic, line, len, &info, &e);
        if (cs == XC_ERR_NOMEM) {
            xc_batch_input_line_fini(&info);
            st = cs;
            break;
        }
        int first = 0;
        if (info.custom_id && xc_batch_ids_find(r->ids, info.custom_id, info.id_len, &first)) {
            logf_(r, "input line %d: duplicate custom_id '%s' (first on line %d): refused\n",
                  lineno, info.custom_id, first);
            r->s->duplicates++;
            xc_batch_input_line_fini(&info);
            continue;
        }
        if (info.custom_id) {
            st = xc_batch_ids_add(r->ids, info.custom_id, info.id_len, lineno, NULL);
        }
        bool answered =
            info.custom_id && xc_batch_ids_find(r->done, info.custom_id, info.id_len, NULL);
        if (st == XC_OK && cs != XC_OK) {
            r->s->invalid++;
            logf_(r, "input line %d: %s%s%s%s\n", lineno, e.message,
                  info.custom_id ? " (custom_id '" : "", info.custom_id ? info.custom_id : "",
                  info.custom_id ? "')" : "");
            if (info.custom_id && !answered) {
                char msg[700];
                snprintf(msg, sizeof msg, "input line %d: %s", lineno, e.message);
                write_error(r, info.custom_id, e.code, msg);
            }
        } else if (st == XC_OK && answered) {
            r->s->skipped++;
        } else if (st == XC_OK) {
            if (r->n_items == r->cap_items) {
                size_t nc = r->cap_items ? r->cap_items * 2 : 256;
                item *p = xc_realloc(r->items, nc * sizeof *p);
                if (!p) {
                    st = xc_errf(XC_ERR_NOMEM, "out of memory (%zu requests)", nc);
                    xc_batch_input_line_fini(&info);
                    break;
                }
                r->items = p;
                r->cap_items = nc;
            }
            r->items[r->n_items++] = (item){here, len, lineno, info.custom_id, 0, 0, info.compose};
            info.custom_id = NULL; /* the item owns it now */
            *need_model = *need_model || (!info.has_model && !r->c->set_model);
        }
        xc_batch_input_line_fini(&info);
    }
    if (st == XC_OK && ferror(r->in)) {
        st = xc_errf(XC_ERR_IO, "%s: read error", r->c->input);
    }
    free(line);
    return st;
}

/* ---- HTTP ---- */

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
    xfer *x = ud;
    size_t n = sz * nm;
    if (x->n_resp + n > MAX_RESPONSE_BYTES) {
        x->too_large = true;
        return 0;
    }
    if (x->n_resp + n + 1 > x->cap_resp) {
        size_t nc = (x->n_resp + n + 1) * 2;
        char *q = xc_realloc(x->resp, nc);
        if (!q) {
            return 0;
        }
        x->resp = q;
        x->cap_resp = nc;
    }
    memcpy(x->resp + x->n_resp, p, n);
    x->n_resp += n;
    x->resp[x->n_resp] = 0;
    return n;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *ud) {
    xfer *x = ud;
    size_t n = sz * nm;
    if (n > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        char *end;
        double v = strtod(p + 12, &end);
        if (end != p + 12 && v >= 0 && isfinite(v)) {
            x->retry_after_s = v;
        }
    } else if (n > 13 && !strncasecmp(p, "X-Request-Id:", 13)) {
        size_t a = 13;
        while (a < n && p[a] == ' ') {
            a++;
        }
        size_t b = n;
        while (b > a && strchr("\r\n ", p[b - 1])) {
            b--;
        }
        snprintf(x->request_id, sizeof x->request_id, "%.*s", (int)(b - a), p + a);
    }
    return n;
}

static void setup_easy(runner *r, xfer *x) {
    CURL *e = x->e;
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(r->c->timeout_s * 1000));
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
}

/* Starts the next ready item on a free slot. Items whose body cannot be built are recorded as
 * failures here. Returns false when nothing was started and nothing more can be now. */
static bool start_next(runner *r) {
    while (r->q_head < r->q_tail) {
        int idx = r->queue[r->q_head++ % r->n_items];
        item *it = &r->items[idx];
        xfer *x = NULL;
        for (int i = 0; i < r->c->concurrency; i++) {
            if (r->xf[i].item < 0) {
                x = &r->xf[i];
                break;
            }
        }
        XC_ASSERT(x);
        char *body = NULL;
        size_t blen = 0;
        xc_batch_input_error e = {0};
        xc_status st = read_at(r, it->off, it->len);
        if (st == XC_OK) {
            st = xc_batch_input_body(&r->ic, r->line, it->len, &body, &blen, &e);
        }
        if (st == XC_ERR_ARG) {
            char msg[700];
            snprintf(msg, sizeof msg, "input line %d: %s", it->lineno, e.message);
            logf_(r, "%s (custom_id '%s')\n", msg, it->custom_id);
            write_error(r, it->custom_id, e.code, msg);
            r->s->failed++;
            continue;
        }
        if (st != XC_OK) {
            fail_run(r, "%s", xc_err_last());
            return false;
        }
        x->item = idx;
        x->body = body;
        x->n_resp = 0;
        x->too_large = false;
        x->retry_after_s = -1;
        x->request_id[0] = 0;
        curl_easy_setopt(x->e, CURLOPT_URL, it->compose ? r->compose_url : r->url);
        curl_easy_setopt(x->e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(x->e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        CURLMcode mc = curl_multi_add_handle(r->multi, x->e);
        if (mc != CURLM_OK) {
            x->item = -1;
            xc_free(body);
            x->body = NULL;
            fail_run(r, "libcurl: %s", curl_multi_strerror(mc));
            return false;
        }
        it->attempts++;
        r->n_inflight++;
        return true;
    }
    return false;
}

static void retry_later(runner *r, int idx, double retry_after_s) {
    item *it = &r->items[idx];
    double d = xc_batch_backoff(it->attempts, retry_after_s, r->c->retry_base_s, r->c->retry_max_s,
                                rnd(r));
    it->not_before = xc_now_ns() + (uint64_t)(d * 1e9);
    r->waiting[r->n_waiting++] = idx;
    r->s->retries++;
}

static void add_usage(runner *r, const char *body, size_t len) {
    cJSON *o = cJSON_ParseWithLength(body, len);
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "usage");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    if (cJSON_IsNumber(p) && p->valuedouble >= 0) {
        r->s->prompt_tokens += (unsigned long long)p->valuedouble;
    }
    if (cJSON_IsNumber(c) && c->valuedouble >= 0) {
        r->s->completion_tokens += (unsigned long long)c->valuedouble;
    }
    cJSON_Delete(o);
}

/* A composition's document goes to documents_dir/<custom_id>/ (whole, by rename) before its
 * record is written, so a rerun after a crash between the two writes it again in place: every
 * answered custom_id has exactly one document. *record_body gets the response without the image
 * bytes. XC_ERR_IO: the directory cannot be written; XC_ERR_PROTO/ARG: this response or id. */
static xc_status compose_document(runner *r, const item *it, const char *body, size_t len,
                                  char **record_body) {
    *record_body = NULL;
    if (!xc_batch_docs_name_ok(it->custom_id)) {
        return xc_errf(XC_ERR_ARG, "custom_id '%.100s' cannot name a document directory",
                       it->custom_id);
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", r->c->documents_dir, it->custom_id);
    xc_status st = xc_batch_docs_write(dir, body, len, NULL);
    if (st != XC_OK) {
        return st;
    }
    cJSON *o = cJSON_ParseWithLength(body, len);
    cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o, "images")) {
        cJSON_DeleteItemFromObjectCaseSensitive(e, "data");
    }
    *record_body = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return *record_body ? XC_OK : xc_errf(XC_ERR_NOMEM, "out of memory");
}

/* One transfer ended: record it, retry it, or stop the run. */
static void finish(runner *r, xfer *x, CURLcode res) {
    int idx = x->item;
    item *it = &r->items[idx];
    long status = 0;
    curl_easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(r->multi, x->e);
    xc_free(x->body);
    x->body = NULL;
    x->item = -1;
    r->n_inflight--;
    const char *body = x->resp ? x->resp : "";
    char id[48];
    record_id(r, id, sizeof id);
    if (res != CURLE_OK || status == 0) {
        if (x->too_large) {
            char msg[128];
            snprintf(msg, sizeof msg, "the response is over %u bytes", MAX_RESPONSE_BYTES);
            write_record(r, true,
                         xc_batch_output_error(id, it->custom_id, "response_too_large", msg, NULL));
            r->s->failed++;
            return;
        }
        bool retry = xc_batch_retryable(0, (int)res) && it->attempts <= r->c->max_retries;
        if (retry && r->stopping) {
            return; /* stays unanswered: a rerun sends it again */
        }
        if (retry) {
            retry_later(r, idx, -1);
            return;
        }
        if (res == CURLE_OPERATION_TIMEDOUT) {
            char msg[160];
            snprintf(msg, sizeof msg, "no answer within %g s (%d attempts)", r->c->timeout_s,
                     it->attempts);
            write_record(r, true, xc_batch_output_error(id, it->custom_id, "timeout", msg, NULL));
            r->s->failed++;
            return;
        }
        /* the endpoint cannot be reached: recording every request as failed would only make
         * the rerun skip them, so stop and leave them unanswered */
        if (!r->stopping) {
            fail_run(r, "%s: %s (after %d attempts); stopped", r->url, curl_easy_strerror(res),
                     it->attempts);
        }
        return;
    }
    if (status == 401 || status == 403) {
        fail_run(r, "%s answered %ld: the API key was refused (see --api-key-file); stopped",
                 r->url, status);
        return;
    }
    if (status != 200 && xc_batch_retryable((int)status, 0) && it->attempts <= r->c->max_retries) {
        if (!r->stopping) {
            retry_later(r, idx, x->retry_after_s);
        }
        return; /* when stopping it stays unanswered: a rerun sends it again */
    }
    /* a 200 must carry a JSON object (a chat.completion); anything else is not an answer */
    cJSON *parsed = status == 200 ? cJSON_ParseWithLength(body, x->n_resp) : NULL;
    bool ok = status == 200 && cJSON_IsObject(parsed);
    cJSON_Delete(parsed);
    char *line;
    char *doc_body = NULL; /* a composition written to its directory: the record without bytes */
    if (ok && it->compose && r->c->documents_dir) {
        xc_status ds = compose_document(r, it, body, x->n_resp, &doc_body);
        if (ds == XC_ERR_IO) {
            fail_run(r, "%s", xc_err_last()); /* stays unanswered: a rerun writes it again */
            return;
        }
        if (ds != XC_OK) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s", xc_err_last());
            write_record(r, true,
                         xc_batch_output_error(id, it->custom_id, "invalid_document", msg, NULL));
            xc_batch_ids_add(r->done, it->custom_id, strlen(it->custom_id), -1, NULL);
            r->s->failed++;
            return;
        }
        body = doc_body;
        x->n_resp = strlen(doc_body);
    }
    if (status == 200 && !ok) {
        char msg[300];
        snprintf(msg, sizeof msg, "status 200 with a body that is not a JSON object: %.200s", body);
        line = xc_batch_output_error(id, it->custom_id, "invalid_response", msg, NULL);
    } else {
        line = xc_batch_output_response(id, it->custom_id, (int)status,
                                        x->request_id[0] ? x->request_id : NULL, body, x->n_resp,
                                        NULL);
    }
    if (write_record(r, !ok, line) != XC_OK) {
        cJSON_free(doc_body);
        return;
    }
    xc_batch_ids_add(r->done, it->custom_id, strlen(it->custom_id), -1, NULL);
    if (ok) {
        r->s->ok++;
        add_usage(r, body, x->n_resp);
    } else {
        r->s->failed++;
    }
    cJSON_free(doc_body);
}

/* ---- progress ---- */

static void fmt_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "--:--");
    } else if (s >= 3600) {
        snprintf(buf, n, "%d:%02d:%02d", (int)(s / 3600), (int)fmod(s / 60, 60), (int)fmod(s, 60));
    } else {
        snprintf(buf, n, "%d:%02d", (int)(s / 60), (int)fmod(s, 60));
    }
}

static void progress(runner *r, bool force) {
    const xc_batch_conf *c = r->c;
    if (c->progress == XC_BATCH_PROGRESS_OFF || !c->log) {
        return;
    }
    double t = r->t_run ? (double)(xc_now_ns() - r->t_run) * 1e-9 : 0;
    double every = r->bar ? 0.25 : c->progress_interval_s;
    double now = elapsed(r);
    if (!force && now - r->last_progress < every) {
        return;
    }
    r->last_progress = now;
    size_t done = r->s->ok + r->s->failed, total = r->s->to_run;
    double rps = t > 0 ? (double)done / t : 0,
           tps = t > 0 ? (double)r->s->completion_tokens / t : 0;
    char eta[32];
    fmt_eta(rps > 0 ? (double)(total - done) / rps : NAN, eta, sizeof eta);
    if (r->bar) {
        char bar[31];
        int w = 30, fill = total ? (int)((double)done * w / (double)total) : w;
        for (int i = 0; i < w; i++) {
            bar[i] = i < fill ? '#' : '-';
        }
        bar[w] = 0;
        fprintf(c->log, "\r\033[K[%s] %zu/%zu  %.1f req/s  %.0f tok/s  ETA %s", bar, done, total,
                rps, tps, eta);
        if (r->s->failed || r->n_waiting) {
            fprintf(c->log, "  (%zu failed, %zu retrying)", r->s->failed, r->n_waiting);
        }
    } else {
        fprintf(c->log,
                "batch: %zu/%zu done (%zu ok, %zu failed, %zu retrying), %.1f req/s, %.0f tok/s, "
                "elapsed %.0f s, ETA %s\n",
                done, total, r->s->ok, r->s->failed, r->n_waiting, rps, tps, t, eta);
    }
    fflush(c->log);
}

void xc_batch_summary_print(FILE *f, const xc_batch_summary *s) {
    double rps = s->run_s > 0 ? (double)(s->ok + s->failed) / s->run_s : 0;
    double tps = s->run_s > 0 ? (double)s->completion_tokens / s->run_s : 0;
    fprintf(f, "batch: %zu requests this run: %zu ok, %zu failed", s->to_run, s->ok, s->failed);
    if (s->left) {
        fprintf(f, ", %zu left", s->left);
    }
    fprintf(f,
            " (%zu retries); %zu input lines: %zu already answered, %zu invalid, %zu duplicate\n",
            s->retries, s->lines, s->skipped, s->invalid, s->duplicates);
    fprintf(f,
            "batch: tokens: %llu prompt, %llu completion; wall %.2f s (requests %.2f s): %.2f "
            "req/s, %.1f completion tok/s\n",
            s->prompt_tokens, s->completion_tokens, s->wall_s, s->run_s, rps, tps);
    if (s->interrupted) {
        fprintf(f, "batch: interrupted: rerun the same command to finish the %zu left\n", s->left);
    }
    if (s->fatal[0]) {
        fprintf(f, "batch: stopped: %s\n", s->fatal);
    }
}

/* ---- setup and the loop ---- */

static xc_status fetch_default_model(runner *r) {
    CURL *e = curl_easy_init();
    xfer x = {.e = e, .item = -1, .retry_after_s = -1};
    if (!e) {
        return xc_errf(XC_ERR_NOMEM, "libcurl: cannot create a handle");
    }
    curl_easy_setopt(e, CURLOPT_URL, r->models_url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
    CURLcode res = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    xc_status st = XC_OK;
    cJSON *o = res == CURLE_OK && status == 200 ? cJSON_ParseWithLength(x.resp, x.n_resp) : NULL;
    const cJSON *d0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "data"), 0);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(d0, "id");
    if (cJSON_IsString(id)) {
        r->default_model = xc_strdup(id->valuestring);
        st = r->default_model ? XC_OK : xc_errf(XC_ERR_NOMEM, "out of memory");
    } else if (status == 401 || status == 403) {
        st = xc_errf(XC_ERR_ARG, "%s answered %ld: the API key was refused (see --api-key-file)",
                     r->models_url, status);
    } else {
        st = xc_errf(XC_ERR_IO, "%s: %s", r->models_url,
                     res != CURLE_OK ? curl_easy_strerror(res)
                     : status != 200 ? "not answered with 200"
                                     : "no model id in the answer");
    }
    cJSON_Delete(o);
    xc_free(x.resp);
    return st;
}

/* The request URLs from a base URL (a trailing "/" or "/v1" is stripped, so both spellings
 * work) and the headers with the key. */
static xc_status set_endpoint(runner *r, const char *endpoint, const char *api_key) {
    size_t el = strlen(endpoint);
    while (el > 0 && endpoint[el - 1] == '/') {
        el--;
    }
    if (el >= 3 && !strncmp(endpoint + el - 3, "/v1", 3)) {
        el -= 3;
    }
    if (strncmp(endpoint, "http://", 7) && strncmp(endpoint, "https://", 8)) {
        return xc_errf(XC_ERR_ARG, "endpoint '%s' must start with http:// or https://", endpoint);
    }
    if (el + sizeof "/v1/chat/completions" > sizeof r->url) {
        return xc_errf(XC_ERR_ARG, "endpoint '%.40s...' is too long", endpoint);
    }
    snprintf(r->url, sizeof r->url, "%.*s" XC_BATCH_URL, (int)el, endpoint);
    snprintf(r->models_url, sizeof r->models_url, "%.*s/v1/models", (int)el, endpoint);
    snprintf(r->compose_url, sizeof r->compose_url, "%.*s" XC_BATCH_URL_COMPOSE, (int)el, endpoint);
    r->headers = curl_slist_append(NULL, "Content-Type: application/json");
    r->headers = r->headers ? curl_slist_append(r->headers, "Expect:") : NULL;
    if (r->headers && api_key) {
        char h[600];
        if (strlen(api_key) > 512 || strpbrk(api_key, "\r\n")) {
            return xc_errf(XC_ERR_ARG, "the API key is over 512 bytes or holds a line break");
        }
        snprintf(h, sizeof h, "Authorization: Bearer %s", api_key);
        r->headers = curl_slist_append(r->headers, h);
    }
    if (!r->headers) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    return XC_OK;
}

static xc_status setup(runner *r) {
    const xc_batch_conf *c = r->c;
    if (!c->input || !c->output || (!c->endpoint && !c->start) || c->concurrency < 1 ||
        c->max_retries < 0) {
        return xc_errf(XC_ERR_ARG, "batch: input, output, endpoint and concurrency >= 1 needed");
    }
    if (c->endpoint && !c->start) {
        XC_TRY(set_endpoint(r, c->endpoint, c->api_key));
    }
    if (c->documents_dir && mkdir(c->documents_dir, 0755) != 0 && errno != EEXIST) {
        return xc_errf(XC_ERR_IO, "--documents-dir %s: %s", c->documents_dir, strerror(errno));
    }
    r->in = fopen(c->input, "rb");
    if (!r->in) {
        return xc_errf(XC_ERR_IO, "%s: cannot open: %s", c->input, strerror(errno));
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", c->input);
    char *slash = strrchr(tmp, '/');
    if (slash) {
        *(slash == tmp ? slash + 1 : slash) = 0;
    }
    if (!realpath(slash ? tmp : ".", r->base_dir)) {
        return xc_errf(XC_ERR_IO, "%s: cannot resolve its directory: %s", c->input,
                       strerror(errno));
    }
    /* the files must be three different files */
    struct stat si, so, se;
    if (stat(c->output, &so) == 0 && fstat(fileno(r->in), &si) == 0 && si.st_ino == so.st_ino &&
        si.st_dev == so.st_dev) {
        return xc_errf(XC_ERR_ARG, "the output file is the input file");
    }
    if (c->errors &&
        (!strcmp(c->errors, c->output) || (stat(c->errors, &se) == 0 && stat(c->output, &so) == 0 &&
                                           se.st_ino == so.st_ino && se.st_dev == so.st_dev))) {
        return xc_errf(XC_ERR_ARG, "--errors names the output file");
    }
    r->ic = (xc_batch_input_conf){r->base_dir, c->max_image_bytes, c->set_model, NULL};
    XC_TRY(xc_batch_ids_create(&r->ids));
    XC_TRY(xc_batch_ids_create(&r->done));
    XC_TRY(xc_batch_output_open(c->output, c->fsync_every, c->retry_errors, r->done, &r->out,
                                &r->s->rec_out));
    if (c->errors) {
        XC_TRY(xc_batch_output_open(c->errors, c->fsync_every, c->retry_errors, r->done, &r->err,
                                    &r->s->rec_err));
    }
    const char *names[2] = {c->output, c->errors};
    const xc_batch_output_recovery *recs[2] = {&r->s->rec_out, &r->s->rec_err};
    for (int i = 0; i < 2; i++) {
        const xc_batch_output_recovery *v = recs[i];
        if (v->torn_bytes) {
            logf_(r, "batch: %s: cut off a torn last line (%zu bytes; its request runs again)\n",
                  names[i], v->torn_bytes);
        }
        if (v->bad_lines) {
            logf_(r, "batch: %s: dropped %zu unreadable line(s)\n", names[i], v->bad_lines);
        }
        if (v->dropped_failed) {
            logf_(r, "batch: %s: removed %zu failed record(s) to retry them\n", names[i],
                  v->dropped_failed);
        }
    }
    return XC_OK;
}

static xc_status alloc_loop(runner *r) {
    const xc_batch_conf *c = r->c;
    size_t n = r->n_items ? r->n_items : 1;
    r->queue = xc_malloc(n * sizeof *r->queue);
    r->waiting = xc_malloc(n * sizeof *r->waiting);
    r->xf = xc_calloc((size_t)c->concurrency, sizeof *r->xf);
    r->multi = curl_multi_init();
    if (!r->queue || !r->waiting || !r->xf || !r->multi) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    curl_multi_setopt(r->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)c->concurrency);
    curl_multi_setopt(r->multi, CURLMOPT_MAXCONNECTS, (long)c->concurrency);
    for (int i = 0; i < c->concurrency; i++) {
        r->xf[i].item = -1;
        r->xf[i].e = curl_easy_init();
        if (!r->xf[i].e) {
            return xc_errf(XC_ERR_NOMEM, "libcurl: cannot create a handle");
        }
        setup_easy(r, &r->xf[i]);
    }
    for (size_t i = 0; i < r->n_items; i++) {
        r->queue[r->q_tail++] = (int)i;
    }
    return XC_OK;
}

static void loop(runner *r) {
    const xc_batch_conf *c = r->c;
    double last_alive = 0;
    for (;;) {
        if (c->abort_now && *c->abort_now) {
            r->s->interrupted = true;
            break;
        }
        if (c->stop && *c->stop && !r->stopping) {
            r->s->interrupted = true;
            r->stopping = true;
            logf_(r,
                  "batch: stopping: no new requests; waiting for %d in flight (interrupt "
                  "again to drop them)\n",
                  r->n_inflight);
        }
        if (c->alive && elapsed(r) - last_alive > 0.5) {
            last_alive = elapsed(r);
            if (!c->alive(c->alive_ud)) {
                fail_run(r, "the local server exited");
            }
        }
        /* retries whose backoff passed go back into the queue */
        uint64_t now = xc_now_ns(), next = UINT64_MAX;
        for (size_t i = 0; i < r->n_waiting;) {
            int idx = r->waiting[i];
            if (r->items[idx].not_before <= now) {
                r->queue[r->q_tail++ % r->n_items] = idx;
                r->waiting[i] = r->waiting[--r->n_waiting];
            } else {
                next = r->items[idx].not_before < next ? r->items[idx].not_before : next;
                i++;
            }
        }
        while (!r->stopping && r->n_inflight < c->concurrency && start_next(r)) {
        }
        if (r->n_inflight == 0 && (r->stopping || (r->q_head == r->q_tail && r->n_waiting == 0))) {
            break;
        }
        int running = 0;
        curl_multi_perform(r->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(r->multi, &left))) {
            if (m->msg == CURLMSG_DONE) {
                xfer *x = NULL;
                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
                finish(r, x, m->data.result);
            }
        }
        int wait_ms = 100;
        if (next != UINT64_MAX) {
            uint64_t d = next > now ? (next - now) / 1000000 : 0;
            wait_ms = d < (uint64_t)wait_ms ? (int)d : wait_ms;
        }
        if (r->n_inflight > 0 || wait_ms > 0) {
            curl_multi_poll(r->multi, NULL, 0, wait_ms, NULL);
        }
        progress(r, false);
    }
}

static void teardown(runner *r) {
    for (int i = 0; r->xf && i < r->c->concurrency; i++) {
        if (r->xf[i].item >= 0) {
            curl_multi_remove_handle(r->multi, r->xf[i].e);
        }
        curl_easy_cleanup(r->xf[i].e);
        xc_free(r->xf[i].body);
        xc_free(r->xf[i].resp);
    }
    curl_multi_cleanup(r->multi);
    curl_slist_free_all(r->headers);
    xc_free(r->xf);
    xc_free(r->queue);
    xc_free(r->waiting);
    for (size_t i = 0; i < r->n_items; i++) {
        xc_free(r->items[i].custom_id);
    }
    xc_free(r->items);
    xc_free(r->line);
    xc_free(r->default_model);
    xc_batch_ids_destroy(r->ids);
    xc_batch_ids_destroy(r->done);
    if (r->in) {
        fclose(r->in);
    }
}

xc_status xc_batch_run(const xc_batch_conf *c, xc_batch_summary *out) {
    memset(out, 0, sizeof *out);
    xc_batch_input_cjson_hooks();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        return xc_errf(XC_ERR_IO, "libcurl: global init failed");
    }
    runner *r = xc_calloc(1, sizeof *r);
    if (!r) {
        curl_global_cleanup();
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    r->c = c;
    r->s = out;
    r->t0 = xc_now_ns();
    r->last_progress = -1e9;
    r->bar = c->log && (c->progress == XC_BATCH_PROGRESS_BAR ||
                        (c->progress == XC_BATCH_PROGRESS_AUTO && isatty(fileno(c->log))));
    seed_rng(r);
    bool need_model = false;
    xc_status st = setup(r);
    if (st == XC_OK) {
        st = scan_input(r, &need_model);
    }
    out->to_run = r->n_items;
    if (st == XC_OK && r->n_items && c->start) {
        const char *ep = NULL, *key = NULL;
        st = c->start(c->start_ud, &ep, &key);
        if (st == XC_OK) {
            st = set_endpoint(r, ep, key);
        }
        if (st != XC_OK) {
            snprintf(out->fatal, sizeof out->fatal, "%s", xc_err_last());
        }
    }
    if (st == XC_OK && r->n_items && need_model) {
        xc_status ms = fetch_default_model(r);
        if (ms == XC_OK) {
            r->ic.default_model = r->default_model;
        } else if (ms == XC_ERR_ARG) {
            fail_run(r, "%s; stopped", xc_err_last()); /* a refused key: nothing would pass */
        } else {
            logf_(r,
                  "batch: some bodies name no model and the endpoint's model list failed "
                  "(%s); they are sent as they are\n",
                  xc_err_last());
        }
    }
    if (st == XC_OK && r->n_items && !r->fatal) {
        logf_(r,
              "batch: %zu requests to send (%zu lines, %zu already answered, %zu invalid, %zu "
              "duplicate), %d in flight, to %s\n",
              r->n_items, out->lines, out->skipped, out->invalid, out->duplicates, c->concurrency,
              r->url);
        st = alloc_loop(r);
        if (st == XC_OK) {
            r->t_run = xc_now_ns();
            loop(r);
            progress(r, true);
            if (r->bar) {
                fputc('\n', c->log); /* the last bar stays on screen */
            }
        }
    }
    out->wall_s = elapsed(r);
    out->run_s = r->t_run ? (double)(xc_now_ns() - r->t_run) * 1e-9 : 0;
    out->left = out->to_run > out->ok + out->failed ? out->to_run - out->ok - out->failed : 0;
    xc_status s1 = xc_batch_output_close(r->out);
    xc_status s2 = xc_batch_output_close(r->err);
    r->out = r->err = NULL;
    if (st == XC_OK && (s1 != XC_OK || s2 != XC_OK)) {
        st = s1 != XC_OK ? s1 : s2;
        snprintf(out->fatal, sizeof out->fatal, "%s", xc_err_last());
    }
    if (st == XC_OK && r->fatal != XC_OK) {
        st = xc_errf(r->fatal, "%s", out->fatal);
    }
    teardown(r);
    xc_free(r);
    curl_global_cleanup();
    return st;
}
