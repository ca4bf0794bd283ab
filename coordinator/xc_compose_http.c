/* POST /v1/compositions and /v1/compositions/edit over the coordinator (see xc_compose_http.h). */
#include "xc_compose_http.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "xc_compose.h"
#include "xc_image.h"
#include "xc_log.h"
#include "xc_media.h"
#include "xc_mem.h"
#include "xc_time.h"

#define SEARCH_MAX_BYTES (1u << 20)

struct xc_compose_http {
    xc_compose_http_conf conf;
    char search_url[2048];
    atomic_int active;
    atomic_uint_fast64_t next_id;
    atomic_bool stopping;
};

bool xc_compose_http_is_route(const char *url) {
    return !strcmp(url, "/v1/compositions") || !strcmp(url, "/v1/compositions/edit");
}

xc_status xc_compose_http_create(const xc_compose_http_conf *conf, xc_compose_http **out) {
    xc_compose_http *h = xc_calloc(1, sizeof *h);
    if (!h) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    h->conf = *conf;
    if (conf->search_url && conf->search_url[0]) {
        if (strncmp(conf->search_url, "http://", 7) && strncmp(conf->search_url, "https://", 8)) {
            xc_free(h);
            return xc_errf(XC_ERR_ARG, "--image-search-url must be an http(s) URL, not '%.100s'",
                           conf->search_url);
        }
        if (strlen(conf->search_url) >= sizeof h->search_url) {
            xc_free(h);
            return xc_errf(XC_ERR_ARG, "--image-search-url is too long");
        }
        snprintf(h->search_url, sizeof h->search_url, "%s", conf->search_url);
    }
    h->conf.search_url = h->search_url[0] ? h->search_url : NULL;
    if (h->conf.search_timeout_s <= 0) {
        h->conf.search_timeout_s = 30;
    }
    if (h->conf.max_concurrent <= 0) {
        h->conf.max_concurrent = 64;
    }
    *out = h;
    return XC_OK;
}

void xc_compose_http_stop(xc_compose_http *h) {
    if (!h) {
        return;
    }
    atomic_store(&h->stopping, true);
    for (int i = 0; i < 1000 && atomic_load(&h->active) > 0; i++) {
        {
            struct timespec ts = {0, 10000000L};
            nanosleep(&ts, NULL);
        }
    }
}

void xc_compose_http_destroy(xc_compose_http *h) {
    if (h) {
        xc_compose_http_stop(h);
    }
    xc_free(h);
}

/* ---- the image-search client ---- */

typedef struct membuf {
    char *p;
    size_t n;
    bool over;
} membuf;

static size_t on_body(char *d, size_t sz, size_t nm, void *u) {
    membuf *b = u;
    size_t k = sz * nm;
    if (b->n + k > SEARCH_MAX_BYTES) {
        b->over = true;
        return 0;
    }
    char *p = xc_realloc(b->p, b->n + k + 1);
    if (!p) {
        return 0;
    }
    memcpy(p + b->n, d, k);
    b->p = p;
    b->n += k;
    p[b->n] = 0;
    return k;
}

xc_status xc_compose_search_post(const char *url, double timeout_s, const char *caption,
                                 const int64_t *exclude, int n_exclude, char ***urls, int *n_urls,
                                 int64_t **indices, int *n_idx) {
    *urls = NULL;
    *indices = NULL;
    *n_urls = *n_idx = 0;
    XC_TRY(xc_media_global_init());
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "caption", caption);
    cJSON *ex = cJSON_AddArrayToObject(q, "exclude");
    for (int i = 0; ex && i < n_exclude; i++) {
        cJSON_AddItemToArray(ex, cJSON_CreateNumber((double)exclude[i]));
    }
    cJSON_AddBoolToObject(q, "need_idxs", true);
    char *body = cJSON_PrintUnformatted(q);
    cJSON_Delete(q);
    if (!body) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    CURL *cu = curl_easy_init();
    if (!cu) {
        cJSON_free(body);
        return xc_errf(XC_ERR_IO, "image search: libcurl did not start");
    }
    membuf b = {0};
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(cu, CURLOPT_URL, url);
    curl_easy_setopt(cu, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(cu, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1000));
    curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(cu, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode rc = curl_easy_perform(cu);
    long code = 0;
    curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(cu);
    curl_slist_free_all(hd);
    cJSON_free(body);
    xc_status st = XC_OK;
    if (rc != CURLE_OK) {
        st = xc_errf(XC_ERR_IO, "image search %s: %s", url,
                     b.over ? "answer over 1 MiB" : curl_easy_strerror(rc));
    } else if (code != 200) {
        st = xc_errf(XC_ERR_IO, "image search %s answered HTTP %ld", url, code);
    }
    cJSON *a = st == XC_OK ? cJSON_ParseWithLength(b.p ? b.p : "", b.n) : NULL;
    xc_free(b.p);
    if (st != XC_OK) {
        return st;
    }
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(a, "data");
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(d, "image_urls");
    const cJSON *ix = cJSON_GetObjectItemCaseSensitive(d, "indices");
    if (!cJSON_IsArray(u) || !cJSON_IsArray(ix)) {
        cJSON_Delete(a);
        return xc_errf(XC_ERR_IO,
                       "image search %s: the answer is not {\"data\": {\"image_urls\": [...], "
                       "\"indices\": [...]}}",
                       url);
    }
    int nu = cJSON_GetArraySize(u), ni = cJSON_GetArraySize(ix);
    *urls = xc_calloc((size_t)nu + 1, sizeof **urls);
    *indices = xc_calloc((size_t)ni + 1, sizeof **indices);
    if (!*urls || !*indices) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; st == XC_OK && i < nu; i++) {
        const cJSON *e = cJSON_GetArrayItem(u, i);
        if (!cJSON_IsString(e)) {
            st = xc_errf(XC_ERR_IO, "image search: image_urls[%d] is not a string", i);
            break;
        }
        (*urls)[i] = xc_strdup(e->valuestring);
        if (!(*urls)[i]) {
            st = xc_errf(XC_ERR_NOMEM, "out of memory");
        }
        *n_urls = i + 1;
    }
    for (int i = 0; st == XC_OK && i < ni; i++) {
        const cJSON *e = cJSON_GetArrayItem(ix, i);
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble)) {
            st = xc_errf(XC_ERR_IO, "image search: indices[%d] is not an integer", i);
            break;
        }
        (*indices)[i] = (int64_t)e->valuedouble;
        *n_idx = i + 1;
    }
    cJSON_Delete(a);
    if (st != XC_OK) {
        for (int i = 0; *urls && i < *n_urls; i++) {
            xc_free((*urls)[i]);
        }
        xc_free(*urls);
        xc_free(*indices);
        *urls = NULL;
        *indices = NULL;
        *n_urls = *n_idx = 0;
    }
    return st;
}

/* ---- images under the chat API's rules ---- */

/* Loads images from URLs through the chat parser (data:, file://, http(s) allowlist and private
 * address rules) and preprocesses them. best_effort: an image that fails is skipped (search
 * candidates, as the demo skips failed downloads); else the first failure is err. */
static xc_status load_images(const xc_compose_http *h, char *const *urls, int n, bool best_effort,
                             xc_compose_image *out, int *n_out, xc_api_error *err) {
    *n_out = 0;
    const xc_api_conf *api = h->conf.api;
    xc_image_limits lim;
    xc_image_limits_default(&lim);
    if (api->max_image_bytes) {
        lim.max_bytes = api->max_image_bytes;
    }
    if (api->max_pixels) {
        lim.max_pixels = api->max_pixels;
    }
    size_t per = 3u * (size_t)api->image_size * (size_t)api->image_size;
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", api->model_name ? api->model_name : "m");
        cJSON *msgs = cJSON_AddArrayToObject(o, "messages");
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddStringToObject(m, "role", "user");
        cJSON *content = cJSON_AddArrayToObject(m, "content");
        cJSON *part = cJSON_CreateObject();
        cJSON_AddItemToArray(content, part);
        cJSON_AddStringToObject(part, "type", "image_url");
        cJSON *iu = cJSON_AddObjectToObject(part, "image_url");
        cJSON_AddStringToObject(iu, "url", urls[i]);
        char *body = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!body) {
            return xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        }
        xc_api_request r;
        xc_api_error e;
        xc_status st = xc_api_parse(api, body, strlen(body), &r, &e);
        cJSON_free(body);
        if (st == XC_OK) {
            st = xc_api_fetch(api, &r, 0, &e);
        }
        if (st == XC_OK && r.n_images == 1 && r.images[0].data) {
            xc_compose_image *im = &out[*n_out];
            memset(im, 0, sizeof *im);
            im->pixels = xc_malloc(per * sizeof(float));
            char src[32];
            snprintf(src, sizeof src, "upload:%d", i);
            im->source = xc_strdup(best_effort ? urls[i] : src);
            if (!im->pixels || !im->source) {
                xc_compose_image_fini(im);
                xc_api_request_fini(&r);
                return xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
            }
            st = xc_image_preprocess(r.images[0].data, r.images[0].len, &lim, api->image_size, NULL,
                                     im->pixels);
            if (st == XC_OK) {
                im->data = r.images[0].data;
                im->len = r.images[0].len;
                r.images[0].data = NULL;
                (*n_out)++;
            } else {
                xc_api_error_set(&e, 400, "invalid_request_error", "invalid_image", "images",
                                 "image %d: %s", i, xc_err_last());
                xc_compose_image_fini(im);
            }
        }
        xc_api_request_fini(&r);
        if (st != XC_OK) {
            if (best_effort) {
                XC_LOG_WARN("composition: image %.200s skipped: %s", urls[i], e.message);
                continue;
            }
            *err = e;
            snprintf(err->param, sizeof err->param, "images[%d]", i);
            return XC_ERR_ARG;
        }
    }
    return XC_OK;
}

/* ---- one composition in service ---- */

typedef struct comp_job {
    xc_compose_http *h;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    /* the request in flight */
    uint64_t id;
    bool submitted, done;
    xc_status status;
    bool retryable, stopped;
    char message[256];
    int32_t *toks;
    int n_toks, cap_toks, n_seen;
    /* SSE */
    bool stream;
    char *out;
    size_t n_out, out_pos, cap_out;
    bool ended, client_gone;
} comp_job;

static void job_unref(comp_job *j) {
    pthread_mutex_lock(&j->lock);
    bool last = --j->refs == 0;
    pthread_mutex_unlock(&j->lock);
    if (last) {
        xc_free(j->toks);
        xc_free(j->out);
        pthread_mutex_destroy(&j->lock);
        pthread_cond_destroy(&j->cond);
        xc_free(j);
    }
}

static void on_event(void *user, const xc_coord_event *ev) {
    comp_job *j = user;
    pthread_mutex_lock(&j->lock);
    if (ev->kind == XC_COORD_TOKEN) {
        if (j->n_toks == j->cap_toks) {
            int nc = j->cap_toks ? j->cap_toks * 2 : 256;
            int32_t *t = xc_realloc(j->toks, (size_t)nc * sizeof *t);
            if (t) {
                j->toks = t;
                j->cap_toks = nc;
            }
        }
        if (j->n_toks < j->cap_toks) {
            j->toks[j->n_toks++] = ev->token;
        }
    } else {
        j->done = true;
        j->status = ev->status;
        j->retryable = ev->retryable;
        j->stopped = ev->stopped;
        snprintf(j->message, sizeof j->message, "%s", ev->message ? ev->message : "");
    }
    pthread_cond_broadcast(&j->cond);
    bool last = ev->kind == XC_COORD_DONE && --j->refs == 0;
    pthread_mutex_unlock(&j->lock);
    if (last) {
        xc_free(j->toks);
        xc_free(j->out);
        pthread_mutex_destroy(&j->lock);
        pthread_cond_destroy(&j->cond);
        xc_free(j);
    }
}

static xc_status be_generate(void *user, const xc_coord_request *r,
                             void (*on_token)(void *, int32_t), void *tu, xc_tokens *out,
                             bool *stopped) {
    comp_job *j = user;
    pthread_mutex_lock(&j->lock);
    j->done = false;
    j->n_toks = j->n_seen = 0;
    j->refs++;
    xc_status st = xc_coord_submit(j->h->conf.c, r, on_event, j, &j->id);
    if (st != XC_OK) {
        j->refs--;
        pthread_mutex_unlock(&j->lock);
        return st;
    }
    j->submitted = true;
    for (;;) {
        while (j->n_seen < j->n_toks) {
            int32_t t = j->toks[j->n_seen++];
            if (xc_tokenizer_tokens_push(out, t) != XC_OK) {
                xc_coord_cancel(j->h->conf.c, j->id);
            }
            if (on_token) {
                pthread_mutex_unlock(&j->lock);
                on_token(tu, t);
                pthread_mutex_lock(&j->lock);
            }
        }
        if (j->done) {
            break;
        }
        if (j->client_gone || atomic_load(&j->h->stopping)) {
            xc_coord_cancel(j->h->conf.c, j->id);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&j->cond, &j->lock, &ts);
    }
    st = j->status;
    *stopped = j->stopped;
    j->submitted = false;
    if (st != XC_OK) {
        xc_errf(st, "%s%s", j->message, j->retryable ? " (retryable)" : "");
    }
    pthread_mutex_unlock(&j->lock);
    return st;
}

static xc_status be_search(void *user, const char *caption, const int64_t *exclude, int n_ex,
                           xc_compose_cands *out) {
    comp_job *j = user;
    const xc_compose_http *h = j->h;
    memset(out, 0, sizeof *out);
    char **urls = NULL;
    int n_urls = 0;
    XC_TRY(xc_compose_search_post(h->conf.search_url, h->conf.search_timeout_s, caption, exclude,
                                  n_ex, &urls, &n_urls, &out->indices, &out->n_indices));
    int n = n_urls < XC_COMPOSE_SEARCH_KEEP ? n_urls : XC_COMPOSE_SEARCH_KEEP;
    out->img = xc_calloc((size_t)n + 1, sizeof *out->img);
    xc_status st = XC_OK;
    if (!out->img) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory");
    } else {
        xc_api_error e;
        st = load_images(h, urls, n, true, out->img, &out->n, &e);
        if (st != XC_OK) {
            st = xc_errf(st, "%s", e.message);
        }
    }
    for (int i = 0; i < n_urls; i++) {
        xc_free(urls[i]);
    }
    xc_free(urls);
    if (st != XC_OK) {
        xc_compose_cands_fini(out);
    }
    return st;
}

static void sse_add(comp_job *j, const char *json) {
    size_t k = strlen(json) + 8;
    if (j->n_out + k + 1 > j->cap_out) {
        size_t cap = j->cap_out ? j->cap_out * 2 : 4096;
        while (cap < j->n_out + k + 1) {
            cap *= 2;
        }
        char *p = xc_realloc(j->out, cap);
        if (!p) {
            return;
        }
        j->out = p;
        j->cap_out = cap;
    }
    j->n_out += (size_t)snprintf(j->out + j->n_out, j->cap_out - j->n_out, "data: %s\n\n", json);
}

static void be_event(void *user, const char *json) {
    comp_job *j = user;
    if (!j->stream) {
        return;
    }
    pthread_mutex_lock(&j->lock);
    sse_add(j, json);
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
}

static bool be_cancelled(void *user) {
    comp_job *j = user;
    pthread_mutex_lock(&j->lock);
    bool g = j->client_gone || atomic_load(&j->h->stopping);
    pthread_mutex_unlock(&j->lock);
    return g;
}

/* ---- request parsing ---- */

typedef struct comp_req {
    char *instruction;
    char **urls;
    int n_urls;
    char image_num[16];
    int *positions; /* extension: fixed image positions (NULL = the model's) */
    int n_positions;
    bool llm_only, with_meta, stream, return_images;
    xc_compose_sampling sampling;
    int max_tokens;
    /* edit */
    char **paras;
    int n_paras, index, kind;
    char *edit_instruction;
} comp_req;

static void comp_req_fini(comp_req *r) {
    xc_free(r->instruction);
    for (int i = 0; i < r->n_urls; i++) {
        xc_free(r->urls[i]);
    }
    xc_free(r->urls);
    for (int i = 0; i < r->n_paras; i++) {
        xc_free(r->paras[i]);
    }
    xc_free(r->paras);
    xc_free(r->edit_instruction);
    xc_free(r->positions);
    memset(r, 0, sizeof *r);
}

#define BAD(param, ...)                                                                            \
    xc_api_error_set(err, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

static xc_status num_in(const cJSON *o, const char *k, double lo, double hi, bool integer,
                        double *v, xc_api_error *err) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x || cJSON_IsNull(x)) {
        return XC_OK;
    }
    if (!cJSON_IsNumber(x) || x->valuedouble < lo || x->valuedouble > hi ||
        (integer && x->valuedouble != floor(x->valuedouble))) {
        return BAD(k, "%s must be %s in [%g, %g]", k, integer ? "an integer" : "a number", lo, hi);
    }
    *v = x->valuedouble;
    return XC_OK;
}

static xc_status bool_of(const cJSON *o, const char *k, bool *v, xc_api_error *err) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x) {
        return XC_OK;
    }
    if (!cJSON_IsBool(x)) {
        return BAD(k, "%s must be a boolean", k);
    }
    *v = cJSON_IsTrue(x);
    return XC_OK;
}

static xc_status parse_common(const xc_compose_http *h, const cJSON *o, comp_req *r,
                              const char *const *allowed, xc_api_error *err) {
    for (const cJSON *k = o->child; k; k = k->next) {
        bool ok = false;
        for (int i = 0; allowed[i] && !ok; i++) {
            ok = !strcmp(k->string, allowed[i]);
        }
        if (!ok) {
            return BAD(k->string, "unknown parameter '%.64s'", k->string);
        }
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "model");
    if (m && (!cJSON_IsString(m) ||
              (h->conf.api->model_name && strcmp(m->valuestring, h->conf.api->model_name)))) {
        return xc_api_error_set(err, 404, "invalid_request_error", "model_not_found", "model",
                                "this server serves '%.200s'",
                                h->conf.api->model_name ? h->conf.api->model_name : "");
    }
    xc_compose_conf d;
    xc_compose_conf_defaults(&d);
    r->sampling = d.sampling;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        seed = xc_now_ns();
    }
    r->sampling.seed = seed;
    double v = -1;
    XC_TRY(num_in(o, "temperature", 0, 2, false, &v, err));
    if (v == 0) {
        r->sampling.greedy = true;
    } else if (v > 0) {
        r->sampling.temperature = (float)v;
    }
    v = -1;
    XC_TRY(num_in(o, "top_p", 1e-6, 1, false, &v, err));
    if (v > 0) {
        r->sampling.top_p = (float)v;
    }
    v = -1;
    XC_TRY(num_in(o, "top_k", 0, 1e6, true, &v, err));
    if (v >= 0) {
        r->sampling.top_k = (int)v;
    }
    v = -1;
    XC_TRY(num_in(o, "repetition_penalty", 1e-3, 100, false, &v, err));
    if (v > 0) {
        r->sampling.repetition_penalty = (float)v;
    }
    v = -1;
    XC_TRY(num_in(o, "seed", 0, 9007199254740992.0, true, &v, err));
    if (v >= 0) {
        r->sampling.seed = (uint64_t)v;
    }
    XC_TRY(bool_of(o, "with_meta", &r->with_meta, err));
    XC_TRY(bool_of(o, "stream", &r->stream, err));
    return XC_OK;
}

static xc_status parse_compose(const xc_compose_http *h, const char *body, size_t len, comp_req *r,
                               xc_api_error *err) {
    static const char *const allowed[] = {
        "model",         "instruction",        "images",    "image_count", "llm_only", "with_meta",
        "seed",          "temperature",        "top_p",     "top_k",       "stream",   "max_tokens",
        "return_images", "repetition_penalty", "positions", NULL};
    memset(r, 0, sizeof *r);
    r->return_images = true;
    cJSON *o = cJSON_ParseWithLength(body ? body : "", len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return BAD(NULL, "the body must be a JSON object");
    }
    xc_status st = parse_common(h, o, r, allowed, err);
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "instruction");
    if (st == XC_OK && (!cJSON_IsString(x) || !x->valuestring[0])) {
        st = BAD("instruction", "instruction is required (a non-empty string)");
    }
    if (st == XC_OK) {
        r->instruction = xc_strdup(x->valuestring);
        st = r->instruction ? XC_OK : XC_ERR_NOMEM;
    }
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(o, "images");
    if (st == XC_OK && imgs) {
        int n = cJSON_GetArraySize(imgs);
        int max = h->conf.api->max_images < XC_COMPOSE_MAX_IMAGES ? h->conf.api->max_images
                                                                  : XC_COMPOSE_MAX_IMAGES;
        if (!cJSON_IsArray(imgs) || n > max) {
            st = BAD("images", "images must be an array of at most %d image URLs", max);
        } else if (n > 0 && h->conf.api->image_size <= 0) {
            st = BAD("images", "this server serves no vision model");
        } else {
            r->urls = xc_calloc((size_t)n + 1, sizeof *r->urls);
            for (int i = 0; r->urls && i < n && st == XC_OK; i++) {
                const cJSON *e = cJSON_GetArrayItem(imgs, i);
                const cJSON *u = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "url") : e;
                if (!cJSON_IsString(u)) {
                    st = BAD("images", "images[%d] must be a URL string or {\"url\": ...}", i);
                    break;
                }
                r->urls[i] = xc_strdup(u->valuestring);
                r->n_urls = i + 1;
            }
        }
    }
    const cJSON *ic = cJSON_GetObjectItemCaseSensitive(o, "image_count");
    if (st == XC_OK) {
        /* the demo's dropdown: "Automatic" (the empty string in the prompt) or 1-15; its default
         * is 6, and the number of uploads when there are uploads */
        if (!ic) {
            snprintf(r->image_num, sizeof r->image_num, "%d", r->n_urls ? r->n_urls : 6);
        } else if (cJSON_IsString(ic) && !strcmp(ic->valuestring, "auto")) {
            r->image_num[0] = 0;
        } else if (cJSON_IsNumber(ic) && ic->valuedouble >= 1 && ic->valuedouble <= 15 &&
                   ic->valuedouble == floor(ic->valuedouble)) {
            int k = (int)ic->valuedouble;
            if (r->n_urls && k > r->n_urls) {
                k = r->n_urls; /* limit_imagenum */
            }
            snprintf(r->image_num, sizeof r->image_num, "%d", k);
        } else {
            st = BAD("image_count", "image_count must be an integer in [1, 15] or \"auto\"");
        }
    }
    if (st == XC_OK) {
        st = bool_of(o, "llm_only", &r->llm_only, err);
    }
    const cJSON *pos = cJSON_GetObjectItemCaseSensitive(o, "positions");
    if (st == XC_OK && pos) {
        int n = cJSON_GetArraySize(pos);
        if (!cJSON_IsArray(pos) || n > XC_COMPOSE_MAX_SECTION) {
            st = BAD("positions", "positions must be an array of at most %d paragraph indices",
                     XC_COMPOSE_MAX_SECTION);
        } else {
            r->positions = xc_calloc((size_t)n + 1, sizeof *r->positions);
            st = r->positions ? XC_OK : XC_ERR_NOMEM;
            for (int i = 0; st == XC_OK && i < n; i++) {
                const cJSON *e = cJSON_GetArrayItem(pos, i);
                if (!cJSON_IsNumber(e) || e->valuedouble < 0 ||
                    e->valuedouble >= XC_COMPOSE_MAX_SECTION ||
                    e->valuedouble != floor(e->valuedouble)) {
                    st = BAD("positions", "positions[%d] must be an integer in [0, %d)", i,
                             XC_COMPOSE_MAX_SECTION);
                }
                r->positions[i] = (int)e->valuedouble;
            }
            r->n_positions = n;
        }
    }
    if (st == XC_OK) {
        st = bool_of(o, "return_images", &r->return_images, err);
    }
    double v = 0;
    if (st == XC_OK) {
        st = num_in(o, "max_tokens", 1, 1 << 20, true, &v, err);
        r->max_tokens = (int)v;
    }
    cJSON_Delete(o);
    if (st == XC_ERR_NOMEM && !err->http_status) {
        xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    return st;
}

static xc_status parse_edit(const xc_compose_http *h, const char *body, size_t len, comp_req *r,
                            xc_api_error *err) {
    static const char *const allowed[] = {
        "model", "paragraphs",  "index", "type",  "instruction",        "with_meta",
        "seed",  "temperature", "top_p", "top_k", "repetition_penalty", "stream",
        NULL};
    memset(r, 0, sizeof *r);
    cJSON *o = cJSON_ParseWithLength(body ? body : "", len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return BAD(NULL, "the body must be a JSON object");
    }
    xc_status st = parse_common(h, o, r, allowed, err);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "paragraphs");
    if (st == XC_OK && (!cJSON_IsArray(p) || cJSON_GetArraySize(p) < 1 ||
                        cJSON_GetArraySize(p) > XC_COMPOSE_MAX_SECTION)) {
        st = BAD("paragraphs", "paragraphs must be an array of 1 to %d strings",
                 XC_COMPOSE_MAX_SECTION);
    }
    if (st == XC_OK) {
        int n = cJSON_GetArraySize(p);
        r->paras = xc_calloc((size_t)n, sizeof *r->paras);
        for (int i = 0; r->paras && i < n && st == XC_OK; i++) {
            const cJSON *e = cJSON_GetArrayItem(p, i);
            if (!cJSON_IsString(e)) {
                st = BAD("paragraphs", "paragraphs[%d] is not a string", i);
                break;
            }
            r->paras[i] = xc_strdup(e->valuestring);
            r->n_paras = i + 1;
        }
    }
    double v = -1;
    if (st == XC_OK) {
        st = num_in(o, "index", 0, r->n_paras - 1, true, &v, err);
        if (st == XC_OK && v < 0) {
            st = BAD("index", "index (the paragraph to edit) is required");
        }
        r->index = (int)v;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    if (st == XC_OK) {
        r->kind = cJSON_IsString(t) ? xc_compose_edit_kind_of(t->valuestring) : -1;
        if (r->kind < 0) {
            st = BAD("type", "type must be expand, rewrite, abbreviate, insert_before or "
                             "insert_after");
        }
    }
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(o, "instruction");
    if (st == XC_OK && in && !cJSON_IsString(in)) {
        st = BAD("instruction", "instruction must be a string");
    }
    if (st == XC_OK) {
        r->edit_instruction = xc_strdup(in ? in->valuestring : "");
    }
    cJSON_Delete(o);
    return st;
}

/* ---- results ---- */

static char *b64(const uint8_t *d, size_t n) {
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = xc_malloc((n + 2) / 3 * 4 + 1);
    if (!o) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)d[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= d[i + 2];
        }
        o[k++] = tb[(v >> 18) & 63];
        o[k++] = tb[(v >> 12) & 63];
        o[k++] = i + 1 < n ? tb[(v >> 6) & 63] : '=';
        o[k++] = i + 2 < n ? tb[v & 63] : '=';
    }
    o[k] = 0;
    return o;
}

static const char *mime_of(const char *ext) {
    return !strcmp(ext, "png")    ? "image/png"
           : !strcmp(ext, "jpg")  ? "image/jpeg"
           : !strcmp(ext, "gif")  ? "image/gif"
           : !strcmp(ext, "webp") ? "image/webp"
           : !strcmp(ext, "bmp")  ? "image/bmp"
                                  : "application/octet-stream";
}

static void add_usage(cJSON *o, const xc_compose *s) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON *steps = cJSON_AddArrayToObject(u, "steps");
    long pt = 0, ct = 0;
    for (int i = 0; i < s->n_usage; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "step", s->usage[i].step);
        cJSON_AddNumberToObject(e, "prompt_tokens", s->usage[i].prompt_tokens);
        cJSON_AddNumberToObject(e, "completion_tokens", s->usage[i].completion_tokens);
        cJSON_AddItemToArray(steps, e);
        pt += s->usage[i].prompt_tokens;
        ct += s->usage[i].completion_tokens;
    }
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)pt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)ct);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(pt + ct));
}

static cJSON *result_json(const xc_compose_http *h, const char *id, const xc_compose_result *res,
                          const xc_compose_image *up, const xc_compose *s, bool with_data) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "composition");
    cJSON_AddNumberToObject(o, "created", (double)time(NULL));
    cJSON_AddStringToObject(o, "model", h->conf.api->model_name ? h->conf.api->model_name : "");
    cJSON_AddStringToObject(o, "markdown", res->markdown ? res->markdown : "");
    cJSON *p = cJSON_AddArrayToObject(o, "paragraphs");
    for (int i = 0; i < res->n_paras; i++) {
        cJSON_AddItemToArray(p, cJSON_CreateString(res->paras[i]));
    }
    cJSON *l = cJSON_AddArrayToObject(o, "positions");
    for (int i = 0; i < res->n_locs; i++) {
        cJSON_AddItemToArray(l, cJSON_CreateNumber(res->locs[i]));
    }
    cJSON *im = cJSON_AddArrayToObject(o, "images");
    for (int k = 0; k < res->n_slots; k++) {
        const xc_compose_slot *sl = &res->slots[k];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "paragraph", sl->paragraph);
        cJSON_AddStringToObject(e, "caption", sl->caption ? sl->caption : "");
        const xc_compose_image *img = sl->upload >= 0 ? &up[sl->upload] : &sl->image;
        if (sl->name[0]) {
            cJSON_AddStringToObject(e, "name", sl->name);
            cJSON_AddStringToObject(e, "source", sl->upload >= 0 ? "upload" : "search");
            if (sl->upload >= 0) {
                cJSON_AddNumberToObject(e, "upload", sl->upload);
            } else {
                cJSON_AddStringToObject(e, "url", img->source ? img->source : "");
            }
            if (with_data && img->data) {
                const char *ext = xc_compose_image_ext(img->data, img->len);
                char *enc = b64(img->data, img->len);
                if (enc) {
                    size_t n = strlen(enc) + 64;
                    char *url = xc_malloc(n);
                    if (url) {
                        snprintf(url, n, "data:%s;base64,%s", mime_of(ext), enc);
                        cJSON_AddStringToObject(e, "data", url);
                        xc_free(url);
                    }
                    xc_free(enc);
                }
            }
        } else {
            cJSON_AddNullToObject(e, "name"); /* captioned; no candidate to show */
            cJSON_AddStringToObject(e, "source", "none");
        }
        cJSON_AddItemToArray(im, e);
    }
    add_usage(o, s);
    return o;
}

/* ---- responses ---- */

static enum MHD_Result send_text(struct MHD_Connection *conn, int status, const char *ctype,
                                 const char *body) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (status == 429 || status == 503) {
        MHD_add_response_header(r, "Retry-After", "1");
    }
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, const xc_api_error *e) {
    char *j = xc_api_error_json(e);
    enum MHD_Result r = send_text(conn, e->http_status, "application/json",
                                  j ? j : "{\"error\":{\"message\":\"out of memory\"}}");
    xc_free(j);
    return r;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, cJSON *o) {
    char *j = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!j) {
        xc_api_error e;
        xc_api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        return send_error(conn, &e);
    }
    enum MHD_Result r = send_text(conn, 200, "application/json", j);
    cJSON_free(j);
    return r;
}

/* The error of a failed composition step. */
static void step_error(const xc_compose *s, xc_status st, xc_api_error *e) {
    int status = st == XC_ERR_ARG ? 422 : st == XC_ERR_NOMEM ? 500 : 503;
    if (st == XC_ERR_IO && strstr(s->err, "image search")) {
        status = 502;
    }
    xc_api_error_set(e, status,
                     status == 422   ? "invalid_request_error"
                     : status == 500 ? "server_error"
                                     : "service_unavailable",
                     status == 422 ? "composition_failed" : NULL, NULL, "composition: %s",
                     s->err[0] ? s->err : xc_err_last());
}

/* ---- running a composition (in the connection's thread, or a thread of its own for SSE) ---- */

typedef struct run_ctx {
    xc_compose_http *h;
    comp_job *j;
    comp_req req;
    bool edit;
    xc_compose_image up[XC_COMPOSE_MAX_IMAGES];
    int n_up;
    char id[48];
    cJSON *result;    /* success */
    xc_api_error err; /* failure (http_status != 0) */
} run_ctx;

static cJSON *edit_result(const run_ctx *rc, const char *text, const xc_compose *s) {
    const comp_req *r = &rc->req;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", rc->id);
    cJSON_AddStringToObject(o, "object", "composition.edit");
    cJSON_AddStringToObject(o, "text", text);
    /* done_edit: newlines become one space; an empty answer deletes the paragraph */
    char *sub = xc_strdup(text);
    if (sub) {
        char *w = sub;
        for (const char *c = sub; *c; c++) {
            if (*c == '\n') {
                while (c[1] == '\n') {
                    c++;
                }
                *w++ = ' ';
            } else {
                *w++ = *c;
            }
        }
        *w = 0;
        cJSON_AddStringToObject(o, "paragraph", sub);
    }
    cJSON *p = cJSON_AddArrayToObject(o, "paragraphs");
    for (int i = 0; sub && i < r->n_paras; i++) {
        bool at = i == r->index;
        if (at && !text[0]) {
            continue;
        }
        if (at && r->kind == XC_COMPOSE_EDIT_INSERT_BEFORE) {
            cJSON_AddItemToArray(p, cJSON_CreateString(sub));
        }
        bool replace =
            at && (r->kind == XC_COMPOSE_EDIT_EXPAND || r->kind == XC_COMPOSE_EDIT_REWRITE ||
                   r->kind == XC_COMPOSE_EDIT_ABBREVIATE);
        cJSON_AddItemToArray(p, cJSON_CreateString(replace ? sub : r->paras[i]));
        if (at && r->kind == XC_COMPOSE_EDIT_INSERT_AFTER) {
            cJSON_AddItemToArray(p, cJSON_CreateString(sub));
        }
    }
    xc_free(sub);
    add_usage(o, s);
    return o;
}

static void run_composition(run_ctx *rc) {
    xc_compose_http *h = rc->h;
    xc_compose_conf conf;
    xc_compose_conf_defaults(&conf);
    conf.tok = h->conf.tok;
    conf.image_tokens = h->conf.api->image_tokens;
    conf.image_size = h->conf.api->image_size;
    conf.max_context = h->conf.api->max_context;
    conf.with_meta = rc->req.with_meta;
    conf.clean_up_spaces = h->conf.clean_up_spaces;
    conf.sampling = rc->req.sampling;
    if (rc->req.max_tokens > 0) {
        conf.article_max_tokens = rc->req.max_tokens;
    }
    conf.be = (xc_compose_backend){.user = rc->j,
                                   .generate = be_generate,
                                   .search = h->conf.search_url ? be_search : NULL,
                                   .event = be_event,
                                   .cancelled = be_cancelled};
    xc_compose s;
    xc_compose_init(&s, &conf);
    if (rc->edit) {
        char *text = NULL;
        xc_status st =
            xc_compose_edit(&s, (xc_compose_edit_kind)rc->req.kind, rc->req.paras, rc->req.n_paras,
                            rc->req.index, rc->req.edit_instruction, &text);
        if (st == XC_OK) {
            rc->result = edit_result(rc, text, &s);
        } else if (st == XC_ERR_ARG && strstr(s.err, "instruction")) {
            xc_api_error_set(&rc->err, 400, "invalid_request_error", NULL, "instruction", "%s",
                             s.err);
        } else {
            step_error(&s, st, &rc->err);
        }
        xc_free(text);
    } else {
        xc_compose_request cr = {.instruction = rc->req.instruction,
                                 .up = rc->up,
                                 .n_up = rc->n_up,
                                 .image_num = rc->req.image_num,
                                 .llm_only = rc->req.llm_only,
                                 .positions = rc->req.positions,
                                 .n_positions = rc->req.n_positions};
        xc_compose_result res;
        xc_status st = xc_compose_run(&s, &cr, &res);
        if (st == XC_OK) {
            rc->result = result_json(h, rc->id, &res, rc->up, &s, rc->req.return_images);
            xc_compose_result_fini(&res);
        } else {
            step_error(&s, st, &rc->err);
        }
    }
    if (!rc->result && !rc->err.http_status) {
        xc_api_error_set(&rc->err, 500, "server_error", NULL, NULL, "out of memory");
    }
    xc_compose_fini(&s);
}

static void run_ctx_free(run_ctx *rc) {
    for (int i = 0; i < rc->n_up; i++) {
        xc_compose_image_fini(&rc->up[i]);
    }
    comp_req_fini(&rc->req);
    cJSON_Delete(rc->result);
    xc_free(rc);
}

static void *stream_main(void *arg) {
    run_ctx *rc = arg;
    comp_job *j = rc->j;
    run_composition(rc);
    cJSON *ev = cJSON_CreateObject();
    if (rc->result) {
        cJSON_AddStringToObject(ev, "stage", "done");
        cJSON_AddItemToObject(ev, "composition", rc->result);
        rc->result = NULL;
    } else {
        cJSON_AddStringToObject(ev, "stage", "error");
        char *e = xc_api_error_json(&rc->err);
        cJSON *ej = e ? cJSON_Parse(e) : NULL;
        xc_free(e);
        cJSON_AddItemToObject(ev, "error",
                              ej ? cJSON_DetachItemFromObject(ej, "error") : cJSON_CreateNull());
        cJSON_Delete(ej);
    }
    char *js = cJSON_PrintUnformatted(ev);
    cJSON_Delete(ev);
    pthread_mutex_lock(&j->lock);
    if (js) {
        sse_add(j, js);
    }
    sse_add(j, "[DONE]");
    j->ended = true;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
    cJSON_free(js);
    atomic_fetch_sub(&rc->h->active, 1);
    run_ctx_free(rc);
    job_unref(j);
    return NULL;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    comp_job *j = cls;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        if (j->n_out > j->out_pos) {
            size_t k = j->n_out - j->out_pos;
            k = k < max ? k : max;
            memcpy(buf, j->out + j->out_pos, k);
            j->out_pos += k;
            if (j->out_pos == j->n_out) {
                j->out_pos = j->n_out = 0;
            }
            pthread_mutex_unlock(&j->lock);
            return (ssize_t)k;
        }
        if (j->ended) {
            pthread_mutex_unlock(&j->lock);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        pthread_cond_wait(&j->cond, &j->lock);
    }
}

static void sse_free(void *cls) {
    comp_job *j = cls;
    pthread_mutex_lock(&j->lock);
    if (!j->ended) {
        j->client_gone = true; /* the composition stops at its next step */
        if (j->submitted) {
            xc_coord_cancel(j->h->conf.c, j->id);
        }
    }
    pthread_mutex_unlock(&j->lock);
    job_unref(j);
}

enum MHD_Result xc_compose_http_handle(xc_compose_http *h, struct MHD_Connection *conn,
                                       const char *url, const char *method, const char *body,
                                       size_t len, bool too_big) {
    xc_api_error e = {0};
    if (strcmp(method, "POST") != 0) {
        xc_api_error_set(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                         "use POST for %s", url);
        return send_error(conn, &e);
    }
    if (too_big) {
        xc_api_error_set(&e, 413, "invalid_request_error", "request_too_large", NULL,
                         "the request body is over the limit");
        return send_error(conn, &e);
    }
    run_ctx *rc = xc_calloc(1, sizeof *rc);
    comp_job *j = xc_calloc(1, sizeof *j);
    if (!rc || !j) {
        xc_free(rc);
        xc_free(j);
        xc_api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        return send_error(conn, &e);
    }
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    j->h = h;
    j->refs = 1;
    rc->h = h;
    rc->j = j;
    rc->edit = !strcmp(url, "/v1/compositions/edit");
    xc_status st = rc->edit ? parse_edit(h, body, len, &rc->req, &e)
                            : parse_compose(h, body, len, &rc->req, &e);
    if (st == XC_OK && !xc_coord_ready(h->conf.c)) {
        xc_api_error_set(&e, 503, "service_unavailable", "not_ready", NULL,
                         "the cluster is not ready; retry later");
        st = XC_ERR_UNSUPPORTED;
    }
    bool counted = false;
    if (st == XC_OK) {
        counted = true;
        if (atomic_fetch_add(&h->active, 1) >= h->conf.max_concurrent) {
            xc_api_error_set(&e, 429, "rate_limit_error", "queue_full", NULL,
                             "the server is at its limit of %d compositions; retry later",
                             h->conf.max_concurrent);
            st = XC_ERR_UNSUPPORTED;
        }
    }
    if (st == XC_OK && rc->req.n_urls > 0) {
        st = load_images(h, rc->req.urls, rc->req.n_urls, false, rc->up, &rc->n_up, &e);
    }
    if (st != XC_OK) {
        if (counted) {
            atomic_fetch_sub(&h->active, 1);
        }
        if (!e.http_status) {
            xc_api_error_set(&e, 500, "server_error", NULL, NULL, "%s", xc_err_last());
        }
        run_ctx_free(rc);
        job_unref(j);
        return send_error(conn, &e);
    }
    snprintf(rc->id, sizeof rc->id, "compo-%016llx",
             (unsigned long long)(atomic_fetch_add(&h->next_id, 1) ^ (uint64_t)time(NULL) << 20));
    if (!rc->req.stream) {
        run_composition(rc);
        enum MHD_Result r;
        if (rc->result) {
            r = send_json(conn, rc->result);
            rc->result = NULL;
        } else {
            r = send_error(conn, &rc->err);
        }
        atomic_fetch_sub(&h->active, 1);
        run_ctx_free(rc);
        job_unref(j);
        return r;
    }
    j->stream = true;
    j->refs += 2; /* the thread and the response */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, j, sse_free);
    pthread_t t;
    if (!resp || pthread_create(&t, NULL, stream_main, rc) != 0) {
        if (resp) {
            MHD_destroy_response(resp); /* calls sse_free: one reference */
        } else {
            job_unref(j);
        }
        job_unref(j);
        job_unref(j);
        atomic_fetch_sub(&h->active, 1);
        run_ctx_free(rc);
        return MHD_NO;
    }
    pthread_detach(t);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    job_unref(j); /* the handler's own */
    return ret;
}
