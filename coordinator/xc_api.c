/* The OpenAI chat API's request parser, prompt preparation, stop-string text state and response
 * JSON (no HTTP here: xc_http.c does the transport). */
#include "xc_api.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "xc_image.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_sha256.h"
#include "xc_time.h"

/* ---- errors ---- */

xc_status xc_api_error_set(xc_api_error *err, int http_status, const char *type, const char *code,
                           const char *param, const char *fmt, ...) {
    err->http_status = http_status;
    err->type = type;
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return XC_ERR_ARG;
}

static void *cjson_malloc(size_t n) {
    return xc_malloc(n);
}

static void cjson_free(void *p) {
    xc_free(p);
}

/* cJSON allocates through xc_malloc so that tests see its leaks (a process-wide setting; cJSON's
 * other users in the coordinator are unaffected since xc_malloc defaults to malloc). */
static void cjson_hooks_once(void) {
    cJSON_Hooks h = {cjson_malloc, cjson_free};
    cJSON_InitHooks(&h);
}

static pthread_once_t g_hooks_once = PTHREAD_ONCE_INIT;

static char *print_free(cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

char *xc_api_error_json(const xc_api_error *err) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    if (!e) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddStringToObject(e, "message", err->message);
    cJSON_AddStringToObject(e, "type", err->type ? err->type : "invalid_request_error");
    if (err->param[0]) {
        cJSON_AddStringToObject(e, "param", err->param);
    } else {
        cJSON_AddNullToObject(e, "param");
    }
    if (err->code) {
        cJSON_AddStringToObject(e, "code", err->code);
    } else {
        cJSON_AddNullToObject(e, "code");
    }
    return print_free(o);
}

#define BAD(param, ...)                                                                            \
    xc_api_error_set(err, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

/* ---- small helpers ---- */

/* A growing string. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static xc_status sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) {
            cap *= 2;
        }
        char *p = xc_realloc(b->p, cap);
        if (!p) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for request text");
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return XC_OK;
}

static xc_status sb_str(sbuf *b, const char *s) {
    return sb_add(b, s, strlen(s));
}

/* Takes the string out of b ("" if nothing was added). */
static char *sb_take(sbuf *b) {
    char *p = b->p;
    if (!p) {
        p = xc_strdup("");
    }
    *b = (sbuf){0};
    return p;
}

/* The integer value of a JSON number in [lo, hi], else false. */
static bool json_int_in(const cJSON *v, double lo, double hi, long long *out) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
        v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi) {
        return false;
    }
    *out = (long long)v->valuedouble;
    return true;
}

/* base64 digit value + 1 of each byte (standard and URL alphabets), 0 for any other byte: one
 * table load per character instead of a chain of range tests (the data URL of a re-sent image is
 * decoded on every chat turn; the branches cost ~6 ns a character on random base64). */
static const uint8_t k_b64[256] = {
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,  ['G'] = 7,  ['H'] = 8,
    ['I'] = 9,  ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16,
    ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24,
    ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32,
    ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40,
    ['o'] = 41, ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48,
    ['w'] = 49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
    ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['-'] = 63,
    ['/'] = 64, ['_'] = 64,
};

/* Strict base64 (standard or URL alphabet, padding optional). *out is xc_malloc'd. Returns 0, or
 * -1 for a bad character or length, -2 when the result would exceed max bytes, -3 out of memory. */
static int b64_decode(const char *s, size_t n, size_t max, uint8_t **out, size_t *out_len) {
    while (n > 0 && s[n - 1] == '=') {
        n--;
    }
    if (n % 4 == 1) {
        return -1;
    }
    size_t len = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    if (len > max) {
        return -2;
    }
    uint8_t *p = xc_malloc(len ? len : 1);
    if (!p) {
        return -3;
    }
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, i = 0;
    for (; i + 4 <= n; i += 4, o += 3) { /* whole quads: 4 digits, 3 bytes */
        unsigned a = k_b64[u[i]], b = k_b64[u[i + 1]], c = k_b64[u[i + 2]], d = k_b64[u[i + 3]];
        if (!a || !b || !c || !d) {
            xc_free(p);
            return -1;
        }
        uint32_t v = (a - 1) << 18 | (b - 1) << 12 | (c - 1) << 6 | (d - 1);
        p[o] = (uint8_t)(v >> 16);
        p[o + 1] = (uint8_t)(v >> 8);
        p[o + 2] = (uint8_t)v;
    }
    if (i < n) { /* 2 or 3 digits left: 1 or 2 bytes, the rest of the bits dropped */
        uint32_t v = 0;
        for (size_t k = 0; k < 4; k++) {
            unsigned d = i + k < n ? k_b64[u[i + k]] : 1;
            if (!d) {
                xc_free(p);
                return -1;
            }
            v = v << 6 | (d - 1);
        }
        p[o++] = (uint8_t)(v >> 16);
        if (n - i == 3) {
            p[o++] = (uint8_t)(v >> 8);
        }
    }
    *out = p;
    *out_len = o;
    return 0;
}

/* ---- large data URLs, decoded straight from the body ----
 * A chat client re-sends its image as a data URL with every turn: ~65 KB of base64 that cJSON
 * would copy character by character into a string (58 us for 64 KB here) before it is decoded.
 * Before parsing, the payload of each data URL that is the value of a "url" or "image_url" key,
 * LIFT_MIN characters or more, without escapes, that decodes within the size limit, is decoded
 * from the body and replaced (in a copy) by a tag with a random per-request nonce; the parsed
 * URL's tag takes the bytes back. Anything else (a bad digit, an escape, too large) stays in the
 * body and takes the usual path, errors included. A tag that a client writes itself does not
 * carry the nonce, so it is decoded as the base64 it is, as before. */
#define LIFT_MIN   4096
#define LIFT_MAX   16
#define LIFT_TAG   "xc-lifted-"
#define LIFT_TAG_N 10

typedef struct lifted {
    char *body; /* the body with the lifted payloads replaced by tags; NULL when none was */
    size_t len;
    char nonce[17];
    int n;
    uint8_t *data[LIFT_MAX]; /* taken (set NULL) by image_from_url */
    size_t size[LIFT_MAX];
} lifted;

static void lifted_fini(lifted *lf) {
    for (int i = 0; i < lf->n; i++) {
        xc_free(lf->data[i]);
    }
    xc_free(lf->body);
    lf->body = NULL;
    lf->n = 0;
}

static bool json_ws(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The index of the quote that closes the string opened at body[open] (len if none). */
static size_t string_end(const char *body, size_t len, size_t open) {
    size_t i = open;
    for (;;) {
        const char *q = memchr(body + i + 1, '"', len - i - 1);
        if (!q) {
            return len;
        }
        i = (size_t)(q - body);
        size_t bs = 0;
        while (i - bs - 1 > open && body[i - bs - 1] == '\\') {
            bs++;
        }
        if (bs % 2 == 0) {
            return i;
        }
    }
}

static void lift_data_urls(const char *body, size_t len, size_t max, lifted *lf) {
    memset(lf, 0, sizeof *lf);
    if (len < LIFT_MIN) {
        return;
    }
    size_t key = 0, key_n = 0, key_end = 0; /* the previous string: [key, key + key_n), its quote */
    bool have_key = false;
    size_t copied = 0, out = 0; /* body[0, copied) is in lf->body[0, out) */
    for (size_t i = 0; i < len && lf->n < LIFT_MAX; i++) {
        if (body[i] != '"') {
            continue;
        }
        size_t e = string_end(body, len, i);
        if (e >= len) {
            break;
        }
        size_t s = i + 1, n = e - s;
        bool after_key = false;
        if (have_key && ((key_n == 3 && !memcmp(body + key, "url", 3)) ||
                         (key_n == 9 && !memcmp(body + key, "image_url", 9)))) {
            size_t k = key_end + 1;
            while (k < i && json_ws(body[k])) {
                k++;
            }
            after_key = k < i && body[k] == ':';
            for (k++; after_key && k < i; k++) {
                after_key = json_ws(body[k]);
            }
        }
        key = s;
        key_n = n;
        key_end = e;
        have_key = true;
        i = e;
        const char *comma = after_key && n > 5 + LIFT_MIN && !memcmp(body + s, "data:", 5)
                                ? memchr(body + s, ',', n)
                                : NULL;
        if (!comma || comma - (body + s) < 7 || memcmp(comma - 7, ";base64", 7) ||
            memchr(body + s, '\\', n)) {
            continue;
        }
        const char *d = comma + 1;
        size_t dn = (size_t)(body + e - d);
        uint8_t *data = NULL;
        size_t size = 0;
        if (dn < LIFT_MIN || b64_decode(d, dn, max, &data, &size) != 0) {
            continue; /* the usual path says what is wrong with it */
        }
        if (!lf->body) {
            lf->body = xc_malloc(len + 1);
            uint64_t r = 0;
            if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) {
                r = xc_now_ns() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)lf;
            }
            snprintf(lf->nonce, sizeof lf->nonce, "%016llx", (unsigned long long)r);
        }
        if (!lf->body) {
            xc_free(data);
            return;
        }
        size_t keep = (size_t)(d - body) - copied;
        memcpy(lf->body + out, body + copied, keep);
        out += keep;
        out += (size_t)sprintf(lf->body + out, LIFT_TAG "%s-%d", lf->nonce, lf->n);
        copied = e;
        lf->data[lf->n] = data;
        lf->size[lf->n++] = size;
    }
    if (lf->body) {
        memcpy(lf->body + out, body + copied, len - copied);
        lf->len = out + len - copied;
        lf->body[lf->len] = 0;
    }
}

/* The bytes of the tag in payload d, taken from lf; false if d is not one of its tags. */
static bool lifted_take(lifted *lf, const char *d, xc_api_image *img) {
    if (!lf || !lf->body || strncmp(d, LIFT_TAG, LIFT_TAG_N) ||
        strncmp(d + LIFT_TAG_N, lf->nonce, 16) || d[LIFT_TAG_N + 16] != '-') {
        return false;
    }
    char *end = NULL;
    long k = strtol(d + LIFT_TAG_N + 17, &end, 10);
    if (*end || end == d + LIFT_TAG_N + 17 || k < 0 || k >= lf->n || !lf->data[k]) {
        return false;
    }
    img->data = lf->data[k];
    img->len = lf->size[k];
    lf->data[k] = NULL;
    return true;
}

static int hexv(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* ---- images ---- */

static xc_status media_error(xc_api_error *err, xc_media_error me, bool deadline, const char *param,
                             const char *msg);

static xc_status image_from_url(const xc_api_conf *conf, lifted *lf, const char *url,
                                const char *param, xc_api_image *img, xc_api_error *err) {
    size_t max = conf->max_image_bytes ? conf->max_image_bytes : XC_IMAGE_DEFAULT_MAX_BYTES;
    if (!strncmp(url, "data:", 5)) {
        const char *comma = strchr(url, ',');
        if (!comma) {
            return BAD(param, "image data URL has no ',' before its data");
        }
        size_t hl = (size_t)(comma - url);
        if (hl < 7 || memcmp(comma - 7, ";base64", 7) != 0) {
            return BAD(param, "image data URL must be base64 (data:image/...;base64,...)");
        }
        if (strncmp(url + 5, "image/", 6) != 0) {
            return BAD(param, "data URL media type must be image/*, not '%.*s'", (int)(hl - 12),
                       url + 5);
        }
        const char *d = comma + 1;
        if (lifted_take(lf, d, img)) {
            return XC_OK;
        }
        int rc = b64_decode(d, strlen(d), max, &img->data, &img->len);
        if (rc == -1) {
            return BAD(param, "image data URL is not valid base64");
        }
        if (rc == -2) {
            return BAD(param, "image is larger than the limit of %zu bytes", max);
        }
        if (rc == -3) {
            return xc_api_error_set(err, 500, "server_error", NULL, param,
                                    "out of memory for an image");
        }
        return XC_OK;
    }
    if (!strncmp(url, "file://", 7)) {
        if (!conf->media_dir) {
            return BAD(param, "file:// image URLs are not allowed on this server "
                              "(see --allowed-media-dir)");
        }
        const char *p = url + 7;
        if (*p != '/') {
            return BAD(param, "file:// URL must have an absolute path (file:///...)");
        }
        char path[4096];
        size_t o = 0;
        for (; *p && o + 1 < sizeof path; p++) {
            if (*p == '%') {
                int a = hexv(p[1]), b = a >= 0 ? hexv(p[2]) : -1;
                if (b < 0 || (a == 0 && b == 0)) {
                    return BAD(param, "file:// URL has a bad %%-escape");
                }
                path[o++] = (char)(a * 16 + b);
                p += 2;
            } else {
                path[o++] = *p;
            }
        }
        if (*p) {
            return BAD(param, "file:// URL is too long");
        }
        path[o] = 0;
        /* a missing file and one outside the directory get the same answer: the error must
         * not tell which files exist on this host */
        char real[PATH_MAX], dir[PATH_MAX];
        bool ok = realpath(conf->media_dir, dir) && realpath(path, real);
        size_t dl = ok ? strlen(dir) : 0;
        if (!ok || strncmp(real, dir, dl) != 0 || (real[dl] != '/' && dl > 1)) {
            return xc_api_error_set(err, 403, "permission_error", "media_not_allowed", param,
                                    "file:// image is not a file below the allowed media "
                                    "directory");
        }
        char *data = NULL;
        size_t n = 0;
        xc_status st = xc_file_read_all(real, max, &data, &n);
        if (st != XC_OK) {
            return BAD(param, "file:// image cannot be read (%s; at most %zu bytes)",
                       xc_status_str(st), max);
        }
        img->data = (uint8_t *)data;
        img->len = n;
        return XC_OK;
    }
    if (!strncasecmp(url, "http://", 7) || !strncasecmp(url, "https://", 8)) {
        char msg[400];
        xc_media_error me = xc_media_check_url(conf->media, url, msg, sizeof msg);
        if (me != XC_MEDIA_OK) {
            return media_error(err, me, false, param, msg);
        }
        img->url = xc_strdup(url); /* fetched by xc_api_fetch, after the admission checks */
        if (!img->url) {
            return xc_api_error_set(err, 500, "server_error", NULL, param,
                                    "out of memory for an image URL");
        }
        return XC_OK;
    }
    return BAD(param, "image URL must be a data: URL, file:// or http(s):// where allowed");
}

/* An http(s) image failure as an API error (statuses and codes: docs/api.md). */
static xc_status media_error(xc_api_error *err, xc_media_error me, bool deadline, const char *param,
                             const char *msg) {
    switch (me) {
    case XC_MEDIA_HOST:
        return xc_api_error_set(err, 403, "permission_error", "media_host_not_allowed", param, "%s",
                                msg);
    case XC_MEDIA_PRIVATE:
        return xc_api_error_set(err, 403, "permission_error", "media_address_not_allowed", param,
                                "%s", msg);
    case XC_MEDIA_TOO_LARGE:
        return xc_api_error_set(err, 400, "invalid_request_error", "image_too_large", param, "%s",
                                msg);
    case XC_MEDIA_TIMEOUT:
        if (deadline) {
            return xc_api_error_set(err, 408, "timeout", "request_timeout", param, "%s", msg);
        }
        return xc_api_error_set(err, 400, "invalid_request_error", "media_timeout", param, "%s",
                                msg);
    case XC_MEDIA_REDIRECT:
    case XC_MEDIA_STATUS:
    case XC_MEDIA_NETWORK:
        return xc_api_error_set(err, 400, "invalid_request_error", "media_fetch_failed", param,
                                "%s", msg);
    case XC_MEDIA_NOMEM:
        return xc_api_error_set(err, 500, "server_error", NULL, param, "%s", msg);
    default: /* XC_MEDIA_BAD_URL, XC_MEDIA_DISABLED */
        return xc_api_error_set(err, 400, "invalid_request_error", "invalid_image_url", param, "%s",
                                msg);
    }
}

xc_status xc_api_fetch(const xc_api_conf *conf, xc_api_request *r, uint64_t deadline_ns,
                       xc_api_error *err) {
    for (int i = 0; i < r->n_images; i++) {
        xc_api_image *img = &r->images[i];
        if (!img->url) {
            continue;
        }
        char param[32], msg[400];
        snprintf(param, sizeof param, "image %d", i);
        uint8_t *data = NULL;
        size_t len = 0;
        bool deadline = false;
        xc_media_error me = xc_media_fetch(conf->media, img->url, deadline_ns, &data, &len,
                                           &deadline, msg, sizeof msg);
        if (me != XC_MEDIA_OK) {
            char full[512];
            snprintf(full, sizeof full, "image %d: %s", i, msg);
            return media_error(err, me, deadline, param, full);
        }
        img->data = data;
        img->len = len;
        xc_free(img->url);
        img->url = NULL;
    }
    return XC_OK;
}

/* ---- messages ---- */

typedef struct parse_ctx {
    const char *body; /* the raw JSON (for numbers beyond a double's 53 bits) */
    size_t len;
    const xc_api_conf *conf;
    xc_api_request *r;
    xc_api_error *err;
    int cap_images;
    bool legacy; /* /v1/completions: logprobs is an integer */
    lifted *lf;  /* data URLs decoded before parsing; NULL = none */
} parse_ctx;

static xc_status add_image(parse_ctx *pc, const cJSON *part, const char *param) {
    xc_api_error *err = pc->err;
    xc_api_request *r = pc->r;
    if (pc->conf->image_size <= 0) {
        return BAD(param, "this server does not serve images (text-only model)");
    }
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
    const cJSON *url = cJSON_IsString(iu) ? iu : cJSON_GetObjectItemCaseSensitive(iu, "url");
    if (!cJSON_IsString(url)) {
        return BAD(param, "image_url part needs image_url.url (a string)");
    }
    if (cJSON_IsObject(iu)) {
        for (const cJSON *k = iu->child; k; k = k->next) {
            if (strcmp(k->string, "url") && strcmp(k->string, "detail")) {
                return BAD(param, "unknown image_url field '%s'", k->string);
            }
        }
    }
    int max = pc->conf->max_images > 0 ? pc->conf->max_images : XC_IMAGE_DEFAULT_MAX_IMAGES;
    if (r->n_images >= max) {
        return BAD("messages", "too many images: at most %d per request", max);
    }
    if (r->n_images == pc->cap_images) {
        int cap = pc->cap_images ? pc->cap_images * 2 : 4;
        xc_api_image *ni = xc_realloc(r->images, (size_t)cap * sizeof *ni);
        if (!ni) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for images");
        }
        r->images = ni;
        pc->cap_images = cap;
    }
    xc_api_image img = {0};
    XC_TRY(image_from_url(pc->conf, pc->lf, url->valuestring, param, &img, err));
    r->images[r->n_images++] = img;
    return XC_OK;
}

/* Appends a message's content to b: a string, or text and image_url parts (an image part adds
 * <ImageHere> at its place). images_ok: where image parts are allowed. */
static xc_status content_text(parse_ctx *pc, const cJSON *content, int mi, bool images_ok,
                              sbuf *b) {
    xc_api_error *err = pc->err;
    char param[64];
    snprintf(param, sizeof param, "messages[%d].content", mi);
    if (cJSON_IsString(content)) {
        if (strstr(content->valuestring, XC_CHAT_IMAGE_MARKER)) {
            return BAD(param, "text may not contain the reserved marker " XC_CHAT_IMAGE_MARKER);
        }
        return sb_str(b, content->valuestring);
    }
    if (!cJSON_IsArray(content)) {
        return BAD(param, "content must be a string or an array of content parts");
    }
    int pi = 0;
    bool last_text = false;
    for (const cJSON *part = content->child; part; part = part->next, pi++) {
        snprintf(param, sizeof param, "messages[%d].content[%d]", mi, pi);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
            return BAD(param, "content part must be an object with a 'type'");
        }
        if (!strcmp(type->valuestring, "text")) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsString(t)) {
                return BAD(param, "text part needs 'text' (a string)");
            }
            if (strstr(t->valuestring, XC_CHAT_IMAGE_MARKER)) {
                return BAD(param, "text may not contain the reserved marker " XC_CHAT_IMAGE_MARKER);
            }
            if (last_text) {
                XC_TRY(sb_str(b, "\n"));
            }
            XC_TRY(sb_str(b, t->valuestring));
            last_text = true;
        } else if (!strcmp(type->valuestring, "image_url")) {
            if (!images_ok) {
                return BAD(param, "only user messages may hold images");
            }
            XC_TRY(add_image(pc, part, param));
            XC_TRY(sb_str(b, XC_CHAT_IMAGE_MARKER));
            last_text = false;
        } else {
            return BAD(param, "unsupported content part type '%s' (text and image_url are)",
                       type->valuestring);
        }
    }
    return XC_OK;
}

static xc_status parse_messages(parse_ctx *pc, const cJSON *msgs) {
    xc_api_error *err = pc->err;
    xc_api_request *r = pc->r;
    if (!cJSON_IsArray(msgs) || !msgs->child) {
        return BAD("messages", "messages must be a non-empty array");
    }
    int n_msgs = cJSON_GetArraySize(msgs);
    r->history = xc_calloc((size_t)n_msgs, sizeof *r->history);
    if (!r->history) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for messages");
    }
    sbuf sys = {0}, user = {0}, asst = {0};
    bool have_sys = false, have_user = false, have_asst = false;
    const char *last_role = NULL;
    xc_status st = XC_OK;
    int mi = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, mi++) {
        char param[64];
        snprintf(param, sizeof param, "messages[%d]", mi);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            st = BAD(param, "each message must be an object with a string 'role'");
            goto fail;
        }
        const cJSON *content = NULL;
        for (const cJSON *k = m->child; k; k = k->next) {
            if (!strcmp(k->string, "content")) {
                content = k;
            } else if (strcmp(k->string, "role") && strcmp(k->string, "name")) {
                st = BAD(param, "unsupported message field '%s'", k->string);
                goto fail;
            }
        }
        const char *ro = role->valuestring;
        bool is_sys = !strcmp(ro, "system") || !strcmp(ro, "developer");
        if (!is_sys && strcmp(ro, "user") && strcmp(ro, "assistant")) {
            st = BAD(param, "unsupported role '%s' (system, developer, user, assistant are)", ro);
            goto fail;
        }
        if (!content || cJSON_IsNull(content)) {
            st = BAD(param, "message has no content");
            goto fail;
        }
        last_role = ro;
        if (is_sys) {
            if (have_user || have_asst || r->n_history) {
                st = BAD(param, "system messages must come before the conversation");
                goto fail;
            }
            if (have_sys) {
                XC_TRY_GOTO(sb_str(&sys, "\n"), st, fail);
            }
            have_sys = true;
            XC_TRY_GOTO(content_text(pc, content, mi, false, &sys), st, fail);
        } else if (!strcmp(ro, "user")) {
            if (have_asst) { /* a finished turn */
                r->history[r->n_history].user = sb_take(&user);
                r->history[r->n_history].assistant = sb_take(&asst);
                r->n_history++;
                have_user = have_asst = false;
                if (!r->history[r->n_history - 1].user || !r->history[r->n_history - 1].assistant) {
                    st = xc_errf(XC_ERR_NOMEM, "out of memory for messages");
                    goto fail;
                }
            }
            if (have_user) {
                XC_TRY_GOTO(sb_str(&user, "\n"), st, fail);
            }
            have_user = true;
            XC_TRY_GOTO(content_text(pc, content, mi, true, &user), st, fail);
        } else {
            if (!have_user) {
                st = BAD(param, "an assistant message must follow a user message");
                goto fail;
            }
            if (have_asst) {
                XC_TRY_GOTO(sb_str(&asst, "\n"), st, fail);
            }
            have_asst = true;
            XC_TRY_GOTO(content_text(pc, content, mi, false, &asst), st, fail);
        }
    }
    if (strcmp(last_role, "user") != 0) {
        st = BAD("messages", "the last message must be a user message");
        goto fail;
    }
    r->query = sb_take(&user);
    r->system = have_sys ? sb_take(&sys) : NULL;
    if (!r->query || (have_sys && !r->system)) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory for messages");
        goto fail;
    }
    xc_free(asst.p);
    return XC_OK;
fail:
    xc_free(sys.p);
    xc_free(user.p);
    xc_free(asst.p);
    return st;
}

/* ---- parameters ---- */

static const char *const known_keys[] = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "response_format",
    "ignore_eos",
    /* issue 14: vLLM's extra parameters, and fields clients send as null */
    "min_p",
    "min_tokens",
    "stop_token_ids",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
};

static const char *const legacy_keys[] = {"model",
                                          "prompt",
                                          "suffix",
                                          "echo",
                                          "logprobs",
                                          "best_of",
                                          "max_tokens",
                                          "temperature",
                                          "top_p",
                                          "top_k",
                                          "repetition_penalty",
                                          "stop",
                                          "seed",
                                          "n",
                                          "stream",
                                          "stream_options",
                                          "user",
                                          "frequency_penalty",
                                          "presence_penalty",
                                          "logit_bias",
                                          "ignore_eos",
                                          "min_p",
                                          "min_tokens",
                                          "stop_token_ids",
                                          "include_stop_str_in_output",
                                          "skip_special_tokens"};

static xc_status check_keys(const cJSON *o, bool legacy, xc_api_error *err) {
    const char *const *keys = legacy ? legacy_keys : known_keys;
    size_t n_keys = legacy ? sizeof legacy_keys / sizeof legacy_keys[0]
                           : sizeof known_keys / sizeof known_keys[0];
    for (const cJSON *k = o->child; k; k = k->next) {
        bool known = false;
        for (size_t i = 0; i < n_keys; i++) {
            known = known || !strcmp(k->string, keys[i]);
        }
        if (!known) {
            return BAD(k->string, "Unrecognized request argument supplied: %s", k->string);
        }
        for (const cJSON *j = k->next; j; j = j->next) {
            if (!strcmp(j->string, k->string)) {
                return BAD(k->string, "duplicate key '%s'", k->string);
            }
        }
    }
    return XC_OK;
}

/* The member k of o, NULL when absent or JSON null. */
static const cJSON *get(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNull(v) ? NULL : v;
}

static xc_status get_float(const cJSON *o, const char *k, double lo, double hi, bool lo_open,
                           float *out, xc_api_error *err) {
    const cJSON *v = get(o, k);
    if (!v) {
        return XC_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble > hi ||
        v->valuedouble < lo || (lo_open && v->valuedouble == lo)) {
        return BAD(k, "%s must be a number in %c%g, %g]", k, lo_open ? '(' : '[', lo, hi);
    }
    *out = (float)v->valuedouble;
    return XC_OK;
}

static xc_status parse_stop(parse_ctx *pc, const cJSON *v) {
    xc_api_error *err = pc->err;
    xc_api_request *r = pc->r;
    if (!v) {
        return XC_OK;
    }
    int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    int max = pc->conf->max_stop > 0 ? pc->conf->max_stop : 4;
    if (n < 0) {
        return BAD("stop", "stop must be a string or an array of strings");
    }
    if (n > max) {
        return BAD("stop", "at most %d stop strings", max);
    }
    r->stop = xc_calloc((size_t)(n ? n : 1), sizeof *r->stop);
    if (!r->stop) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for stop strings");
    }
    const cJSON *s = cJSON_IsString(v) ? v : v->child;
    for (int i = 0; i < n; i++, s = s->next) {
        if (!cJSON_IsString(s) || !s->valuestring[0] ||
            strlen(s->valuestring) > XC_API_MAX_STOP_LEN) {
            return BAD("stop", "each stop string must be a non-empty string of at most %d bytes",
                       XC_API_MAX_STOP_LEN);
        }
        r->stop[i] = xc_strdup(s->valuestring);
        if (!r->stop[i]) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for stop strings");
        }
        r->n_stop = i + 1;
    }
    return XC_OK;
}

/* The value of the top-level key "seed" in the raw JSON as a 64-bit integer: a decimal integer
 * in [-2^63, 2^64 - 1] (negative values wrap to their two's complement). False for anything
 * else (a fraction, an exponent, out of range). Keys are unique (check_keys). */
static bool raw_seed(const char *b, size_t len, uint64_t *out) {
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        char c = b[i];
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == '"') {
            size_t s0 = ++i;
            for (; i < len && b[i] != '"'; i++) {
                i += b[i] == '\\';
            }
            if (depth != 1 || i - s0 != 4 || memcmp(b + s0, "seed", 4)) {
                continue;
            }
            size_t k = i + 1;
            while (k < len && strchr(" \t\r\n", b[k])) {
                k++;
            }
            if (k >= len || b[k] != ':') {
                continue; /* a string value "seed", not the key */
            }
            k++;
            while (k < len && strchr(" \t\r\n", b[k])) {
                k++;
            }
            bool neg = k < len && b[k] == '-';
            k += neg;
            uint64_t v = 0;
            size_t d0 = k;
            for (; k < len && b[k] >= '0' && b[k] <= '9'; k++) {
                unsigned dg = (unsigned)(b[k] - '0');
                if (v > (UINT64_MAX - dg) / 10) {
                    return false;
                }
                v = v * 10 + dg;
            }
            if (k == d0 || (k < len && (b[k] == '.' || b[k] == 'e' || b[k] == 'E'))) {
                return false;
            }
            if (neg && v > (1ull << 63)) {
                return false;
            }
            *out = neg ? (uint64_t)0 - v : v;
            return true;
        }
    }
    return false;
}

static xc_status parse_params(parse_ctx *pc, const cJSON *o) {
    xc_api_error *err = pc->err;
    xc_api_request *r = pc->r;
    const xc_api_conf *conf = pc->conf;
    long long iv;
    const cJSON *v;
    /* model */
    v = get(o, "model");
    if (v && !cJSON_IsString(v)) {
        return BAD("model", "model must be a string");
    }
    if (!v && !conf->model_name) {
        return BAD("model", "model is required");
    }
    if (!v) { /* one model is served: it is the one (as vLLM) */
        r->model = xc_strdup(conf->model_name);
        if (!r->model) {
            return xc_errf(XC_ERR_NOMEM, "out of memory");
        }
    } else if (conf->model_name && strcmp(v->valuestring, conf->model_name) != 0) {
        return xc_api_error_set(err, 404, "invalid_request_error", "model_not_found", "model",
                                "The model '%.200s' does not exist (this server serves '%.200s')",
                                v->valuestring, conf->model_name);
    }
    if (v) {
        r->model = xc_strdup(v->valuestring);
        if (!r->model) {
            return xc_errf(XC_ERR_NOMEM, "out of memory");
        }
    }
    /* max_tokens / max_completion_tokens */
    const char *mk[2] = {"max_tokens", "max_completion_tokens"};
    for (int i = 0; i < 2; i++) {
        if ((v = get(o, mk[i]))) {
            if (!json_int_in(v, 1, INT_MAX, &iv)) {
                return BAD(mk[i], "%s must be an integer >= 1", mk[i]);
            }
            if (iv > conf->max_tokens_limit) {
                return BAD(mk[i], "%s is %lld; this server allows at most %d", mk[i], iv,
                           conf->max_tokens_limit);
            }
            if (r->max_tokens && r->max_tokens != (int)iv) {
                return BAD(mk[i], "max_tokens and max_completion_tokens differ");
            }
            r->max_tokens = (int)iv;
        }
    }
    /* sampling */
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
    XC_TRY(get_float(o, "temperature", 0, 2, false, &r->temperature, err));
    r->greedy = r->temperature == 0.0f;
    if (r->greedy) {
        r->temperature = 1.0f;
    }
    XC_TRY(get_float(o, "top_p", 0, 1, true, &r->top_p, err));
    XC_TRY(get_float(o, "repetition_penalty", 0, 100, true, &r->repetition_penalty, err));
    if ((v = get(o, "top_k"))) {
        if (!json_int_in(v, -1, INT_MAX, &iv)) {
            return BAD("top_k", "top_k must be an integer >= -1 (0 or -1 = off)");
        }
        r->top_k = iv < 0 ? 0 : (int)iv;
    }
    XC_TRY(get_float(o, "presence_penalty", -2, 2, false, &r->presence_penalty, err));
    XC_TRY(get_float(o, "frequency_penalty", -2, 2, false, &r->frequency_penalty, err));
    XC_TRY(get_float(o, "min_p", 0, 1, false, &r->min_p, err));
    if ((v = get(o, "min_tokens"))) {
        if (!json_int_in(v, 0, conf->max_tokens_limit, &iv)) {
            return BAD("min_tokens", "min_tokens must be an integer in [0, %d]",
                       conf->max_tokens_limit);
        }
        r->min_tokens = (int)iv;
    }
    if ((v = get(o, "logit_bias"))) {
        if (!cJSON_IsObject(v)) {
            return BAD("logit_bias", "logit_bias must be an object {\"token id\": bias}");
        }
        for (const cJSON *k = v->child; k; k = k->next) {
            char *end = NULL;
            long id = strtol(k->string, &end, 10);
            if (!k->string[0] || *end || id < 0 || id > INT32_MAX) {
                return BAD("logit_bias", "logit_bias key '%.40s' is not a token id", k->string);
            }
            if (!cJSON_IsNumber(k) || !(k->valuedouble >= -100 && k->valuedouble <= 100)) {
                return BAD("logit_bias", "logit_bias values must be numbers in [-100, 100]");
            }
            if (r->n_logit_bias == 300) {
                return BAD("logit_bias", "logit_bias has more than 300 entries");
            }
            r->logit_bias_ids[r->n_logit_bias] = (uint32_t)id;
            r->logit_bias[r->n_logit_bias++] = (float)k->valuedouble;
        }
    }
    if ((v = get(o, "stop_token_ids"))) {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > 32) {
            return BAD("stop_token_ids", "stop_token_ids must be an array of at most 32 ids");
        }
        for (const cJSON *k = v->child; k; k = k->next) {
            if (!json_int_in(k, 0, INT32_MAX, &iv)) {
                return BAD("stop_token_ids", "stop_token_ids must hold token ids");
            }
            r->stop_token_ids[r->n_stop_token_ids++] = (int32_t)iv;
        }
    }
    r->skip_special_tokens = true;
    const char *flags[2] = {"include_stop_str_in_output", "skip_special_tokens"};
    bool *dst[2] = {&r->include_stop_str_in_output, &r->skip_special_tokens};
    for (int i = 0; i < 2; i++) {
        if ((v = get(o, flags[i]))) {
            if (!cJSON_IsBool(v)) {
                return BAD(flags[i], "%s must be a boolean", flags[i]);
            }
            *dst[i] = cJSON_IsTrue(v);
        }
    }
    /* tools: only absent, null, [] or tool_choice "none" (no tool calling here) */
    if ((v = get(o, "tools")) && !(cJSON_IsArray(v) && !v->child)) {
        return BAD("tools", "tools are not supported by this server");
    }
    if ((v = get(o, "tool_choice")) && !(cJSON_IsString(v) && (!strcmp(v->valuestring, "none") ||
                                                               !strcmp(v->valuestring, "auto")))) {
        return BAD("tool_choice", "tool_choice: only \"none\" (no tools are supported)");
    }
    if ((v = get(o, "parallel_tool_calls")) && !cJSON_IsBool(v)) {
        return BAD("parallel_tool_calls", "parallel_tool_calls must be a boolean");
    }
    if ((v = get(o, "response_format"))) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text")) {
            return BAD("response_format",
                       "response_format: only {\"type\": \"text\"} is supported");
        }
    }
    if ((v = get(o, "user")) && !cJSON_IsString(v)) {
        return BAD("user", "user must be a string");
    }
    if ((v = get(o, "seed"))) {
        /* any 64-bit integer: read from the body's own digits (cJSON keeps a double, exact only
         * to 2^53) */
        if (!cJSON_IsNumber(v) || !raw_seed(pc->body, pc->len, &r->seed)) {
            return BAD("seed", "seed must be an integer in [-2^63, 2^64 - 1]");
        }
        r->has_seed = true;
    }
    r->n = 1;
    if ((v = get(o, "n"))) {
        int max_n = conf->max_n > 0 ? conf->max_n : 1;
        if (!json_int_in(v, 1, max_n, &iv)) {
            return BAD("n", "n must be an integer in [1, %d]", max_n);
        }
        r->n = (int)iv;
    }
    XC_TRY(parse_stop(pc, get(o, "stop")));
    if ((v = get(o, "logprobs")) && pc->legacy) { /* the legacy integer */
        if (!json_int_in(v, 0, 5, &iv)) {
            return BAD("logprobs", "logprobs must be an integer in [0, 5]");
        }
        r->logprobs = true;
        r->top_logprobs = (int)iv;
    } else if (v) {
        if (!cJSON_IsBool(v)) {
            return BAD("logprobs", "logprobs must be a boolean");
        }
        r->logprobs = cJSON_IsTrue(v);
    }
    if ((v = get(o, "top_logprobs"))) {
        if (!json_int_in(v, 0, XC_API_MAX_TOP_LOGPROBS, &iv)) {
            return BAD("top_logprobs", "top_logprobs must be an integer in [0, %d]",
                       XC_API_MAX_TOP_LOGPROBS);
        }
        if (!r->logprobs) {
            return BAD("top_logprobs", "top_logprobs needs logprobs: true");
        }
        r->top_logprobs = (int)iv;
    }
    if ((v = get(o, "ignore_eos"))) {
        if (!cJSON_IsBool(v)) {
            return BAD("ignore_eos", "ignore_eos must be a boolean");
        }
        r->ignore_eos = cJSON_IsTrue(v);
    }
    if ((v = get(o, "stream"))) {
        if (!cJSON_IsBool(v)) {
            return BAD("stream", "stream must be a boolean");
        }
        r->stream = cJSON_IsTrue(v);
    }
    if ((v = get(o, "stream_options"))) {
        if (!r->stream) {
            return BAD("stream_options", "stream_options is only allowed with stream: true");
        }
        if (!cJSON_IsObject(v)) {
            return BAD("stream_options", "stream_options must be an object");
        }
        for (const cJSON *k = v->child; k; k = k->next) {
            if (strcmp(k->string, "include_usage") || !cJSON_IsBool(k)) {
                return BAD("stream_options", "stream_options takes include_usage (a boolean)");
            }
            r->include_usage = cJSON_IsTrue(k);
        }
    }
    return XC_OK;
}

xc_status xc_api_json_precheck(const char *body, size_t len, int max_depth, long max_nodes) {
    /* values = 1 (the root) + one per element of every container = 1 + commas + the containers
     * that hold anything (exact for valid JSON) */
    int depth = 0;
    long nodes = 1;
    bool opened = false; /* the last significant character opened a container */
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        }
        if (opened && c != '}' && c != ']') {
            nodes++;
        }
        opened = false;
        if (c == '"') { /* skip the string: its closing quote is the first one after an even
                         * run of backslashes (memchr: a data URL is ~100 KB) */
            size_t open = i;
            for (;;) {
                const char *q = memchr(body + i + 1, '"', len - i - 1);
                if (!q) {
                    i = len;
                    break;
                }
                i = (size_t)(q - body);
                size_t bs = 0;
                while (i - bs - 1 > open && body[i - bs - 1] == '\\') {
                    bs++;
                }
                if (bs % 2 == 0) {
                    break;
                }
            }
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth) {
                return xc_errf(XC_ERR_ARG, "JSON nested deeper than %d levels", max_depth);
            }
            opened = true;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',') {
            nodes++;
        }
        if (nodes > max_nodes) {
            return xc_errf(XC_ERR_ARG, "JSON with more than %ld values", max_nodes);
        }
    }
    return XC_OK;
}

xc_status xc_api_parse(const xc_api_conf *conf, const char *body, size_t len, xc_api_request *out,
                       xc_api_error *err) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    if (xc_api_json_precheck(body, len, XC_API_MAX_JSON_DEPTH, XC_API_MAX_JSON_NODES) != XC_OK) {
        return BAD(NULL, "the body is too complex: %s", xc_err_last());
    }
    lifted lf;
    lift_data_urls(body, len,
                   conf->max_image_bytes ? conf->max_image_bytes : XC_IMAGE_DEFAULT_MAX_BYTES, &lf);
    if (lf.body) {
        body = lf.body;
        len = lf.len;
    }
    cJSON *o = cJSON_ParseWithLength(body, len);
    if (!o) {
        lifted_fini(&lf);
        return BAD(NULL, "the body is not valid JSON");
    }
    xc_status st = XC_OK;
    parse_ctx pc = {.body = body, .len = len, .conf = conf, .r = out, .err = err, .lf = &lf};
    if (!cJSON_IsObject(o)) {
        st = BAD(NULL, "the body must be a JSON object");
        goto out;
    }
    XC_TRY_GOTO(check_keys(o, false, err), st, out);
    XC_TRY_GOTO(parse_params(&pc, o), st, out);
    XC_TRY_GOTO(parse_messages(&pc, cJSON_GetObjectItemCaseSensitive(o, "messages")), st, out);
out:
    cJSON_Delete(o);
    lifted_fini(&lf);
    if (st == XC_ERR_NOMEM && !err->http_status) {
        xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (st != XC_OK) {
        xc_api_request_fini(out);
    }
    return st;
}

void xc_api_request_fini(xc_api_request *r) {
    if (!r) {
        return;
    }
    xc_free(r->model);
    xc_free(r->system);
    for (size_t i = 0; r->history && i < r->n_history; i++) {
        xc_free((void *)r->history[i].user);
        xc_free((void *)r->history[i].assistant);
    }
    xc_free(r->history);
    xc_free(r->query);
    for (int i = 0; i < r->n_images; i++) {
        xc_free(r->images[i].data);
        xc_free(r->images[i].url);
    }
    xc_free(r->images);
    for (int i = 0; i < r->n_stop; i++) {
        xc_free(r->stop[i]);
    }
    xc_free(r->stop);
    for (int i = 0; r->prompts && i < r->n_prompts; i++) {
        xc_free(r->prompts[i]);
    }
    xc_free(r->prompts);
    xc_free(r->prompt_len);
    memset(r, 0, sizeof *r);
}

/* ---- /v1/completions ---- */

/* Adds one prompt: a string (BOS + its ids) or an array of token ids. */
static xc_status add_prompt(parse_ctx *pc, const xc_tokenizer *tok, const cJSON *v, int k) {
    xc_api_error *err = pc->err;
    xc_api_request *r = pc->r;
    xc_tokens ids = {0};
    xc_status st = XC_OK;
    if (cJSON_IsString(v)) {
        int32_t bos = xc_tokenizer_special_ids(tok)->bos;
        if (bos >= 0) {
            st = xc_tokenizer_tokens_push(&ids, bos);
        }
        if (st == XC_OK) {
            st = xc_tokenizer_encode(tok, v->valuestring, strlen(v->valuestring), &ids);
        }
        if (st == XC_ERR_ARG) {
            st = BAD("prompt", "prompt %d: %s", k, xc_err_last());
        }
    } else if (cJSON_IsArray(v)) {
        long long iv;
        for (const cJSON *t = v->child; t && st == XC_OK; t = t->next) {
            if (!json_int_in(t, 0, (double)xc_tokenizer_vocab_size(tok) - 1, &iv)) {
                st = BAD("prompt", "prompt %d: token ids must be integers below %zu", k,
                         xc_tokenizer_vocab_size(tok));
            } else {
                st = xc_tokenizer_tokens_push(&ids, (int32_t)iv);
            }
        }
    } else {
        st = BAD("prompt", "prompt must be a string, a list of strings, a list of token ids or a "
                           "list of such lists");
    }
    if (st == XC_OK && ids.n == 0) {
        st = BAD("prompt", "prompt %d is empty", k);
    }
    if (st != XC_OK) {
        xc_tokenizer_tokens_fini(&ids);
        return st;
    }
    r->prompts[k] = ids.ids;
    r->prompt_len[k] = (int)ids.n;
    r->n_prompts = k + 1;
    return XC_OK;
}

xc_status xc_api_parse_completion(const xc_api_conf *conf, const xc_tokenizer *tok,
                                  const char *body, size_t len, xc_api_request *out,
                                  xc_api_error *err) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    if (xc_api_json_precheck(body, len, XC_API_MAX_JSON_DEPTH, XC_API_MAX_JSON_NODES) != XC_OK) {
        return BAD(NULL, "the body is too complex: %s", xc_err_last());
    }
    cJSON *o = cJSON_ParseWithLength(body, len);
    if (!o) {
        return BAD(NULL, "the body is not valid JSON");
    }
    xc_status st = XC_OK;
    parse_ctx pc = {.body = body, .len = len, .conf = conf, .r = out, .err = err, .legacy = true};
    out->legacy = true;
    if (!cJSON_IsObject(o)) {
        st = BAD(NULL, "the body must be a JSON object");
        goto out;
    }
    XC_TRY_GOTO(check_keys(o, true, err), st, out);
    XC_TRY_GOTO(parse_params(&pc, o), st, out);
    const cJSON *v;
    if ((v = get(o, "suffix")) && !(cJSON_IsString(v) && !v->valuestring[0])) {
        st = BAD("suffix", "suffix is not supported (no fill-in-the-middle for this model)");
        goto out;
    }
    if ((v = get(o, "best_of")) && !(cJSON_IsNumber(v) && v->valuedouble == out->n)) {
        st = BAD("best_of", "best_of is not supported (only null or equal to n)");
        goto out;
    }
    if ((v = get(o, "echo"))) {
        if (!cJSON_IsBool(v)) {
            st = BAD("echo", "echo must be a boolean");
            goto out;
        }
        out->echo = cJSON_IsTrue(v);
    }
    if (!out->max_tokens) {
        out->max_tokens = 16 < conf->max_tokens_limit ? 16 : conf->max_tokens_limit;
    }
    const cJSON *p = get(o, "prompt");
    /* a list of prompts: strings or lists; else one prompt */
    bool many =
        cJSON_IsArray(p) && p->child && (cJSON_IsString(p->child) || cJSON_IsArray(p->child));
    int n_p = many ? cJSON_GetArraySize(p) : 1;
    int max_p = conf->max_n > 0 ? conf->max_n : 1;
    if (!p) {
        st = BAD("prompt", "prompt is required");
        goto out;
    }
    if ((long)n_p * out->n > max_p) {
        st = BAD("prompt", "%d prompts x n = %d choices; this server allows at most %d", n_p,
                 out->n, max_p);
        goto out;
    }
    out->prompts = xc_calloc((size_t)n_p, sizeof *out->prompts);
    out->prompt_len = xc_calloc((size_t)n_p, sizeof *out->prompt_len);
    if (!out->prompts || !out->prompt_len) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory for prompts");
        goto out;
    }
    if (many) {
        int k = 0;
        for (const cJSON *e = p->child; e; e = e->next, k++) {
            XC_TRY_GOTO(add_prompt(&pc, tok, e, k), st, out);
        }
    } else {
        XC_TRY_GOTO(add_prompt(&pc, tok, p, 0), st, out);
    }
out:
    cJSON_Delete(o);
    if (st == XC_ERR_NOMEM && !err->http_status) {
        xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (st != XC_OK) {
        xc_api_request_fini(out);
        out->legacy = true;
    }
    return st;
}

static xc_status fill_request(const xc_api_conf *conf, const xc_tokenizer *tok,
                              const xc_api_request *r, int n, xc_api_prepared *out,
                              xc_api_error *err);

xc_status xc_api_prepare_prompt(const xc_api_conf *conf, const xc_tokenizer *tok,
                                const xc_api_request *r, int k, xc_api_prepared *out,
                                xc_api_error *err) {
    memset(out, 0, sizeof *out);
    int n = r->prompt_len[k];
    out->ids = xc_malloc((size_t)n * sizeof(int32_t));
    if (!out->ids) {
        return xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    memcpy(out->ids, r->prompts[k], (size_t)n * sizeof(int32_t));
    out->prompt_tokens = n;
    return fill_request(conf, tok, r, n, out, err);
}

/* ---- prompt ---- */

/* The context rule: prompt + max_tokens within the context; without max_tokens, the context left
 * (capped by --default-max-tokens). */
static xc_status check_context(const xc_api_conf *conf, const xc_api_request *r, int n,
                               int *max_new_out, xc_api_error *err) {
    int ctx = conf->max_context;
    int max_prompt = conf->max_prompt > 0 && conf->max_prompt < ctx ? conf->max_prompt : ctx;
    if (n > max_prompt) {
        return xc_api_error_set(err, 400, "invalid_request_error", "context_length_exceeded",
                                r->legacy ? "prompt" : "messages",
                                "The prompt has %d tokens, more than this model's max_length of "
                                "%d (the original would cut it; this server refuses it).",
                                n, max_prompt);
    }
    int max_new = r->max_tokens;
    if (max_new == 0) { /* the context left, capped by --default-max-tokens (0 = no cap) */
        max_new = ctx - n;
        if (conf->default_max_tokens > 0 && conf->default_max_tokens < max_new) {
            max_new = conf->default_max_tokens;
        }
    }
    if (n >= ctx || (long)n + max_new > ctx) {
        return xc_api_error_set(err, 400, "invalid_request_error", "context_length_exceeded",
                                r->legacy ? "prompt" : "messages",
                                "This model's maximum context length is %d tokens. However, you "
                                "requested %ld tokens (%d in the messages, %d in the completion). "
                                "Please reduce the length of the messages or completion.",
                                ctx, (long)n + (r->max_tokens ? r->max_tokens : 1), n,
                                r->max_tokens ? r->max_tokens : 1);
    }
    if (max_new_out) {
        *max_new_out = max_new;
    }
    return XC_OK;
}

/* ---- preprocessed images by their encoded bytes ---- */

typedef struct imgc_entry {
    uint8_t key[32]; /* SHA-256 of the encoded bytes */
    int size;        /* S */
    float *pixels;   /* (3, S, S) */
    uint64_t hash;   /* the pixels' hash (xc_coord_request.img_hash) */
    uint64_t used;   /* last use (a clock of lookups) */
} imgc_entry;

struct xc_api_imgcache {
    pthread_mutex_t lock;
    size_t max_bytes, bytes;
    imgc_entry *e;
    int n, cap;
    uint64_t clock, hits, misses;
};

xc_status xc_api_imgcache_create(size_t max_bytes, xc_api_imgcache **out) {
    xc_api_imgcache *c = xc_calloc(1, sizeof *c);
    if (!c) {
        return XC_ERR_NOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->max_bytes = max_bytes;
    *out = c;
    return XC_OK;
}

void xc_api_imgcache_destroy(xc_api_imgcache *c) {
    if (!c) {
        return;
    }
    for (int i = 0; i < c->n; i++) {
        xc_free(c->e[i].pixels);
    }
    xc_free(c->e);
    pthread_mutex_destroy(&c->lock);
    xc_free(c);
}

void xc_api_imgcache_stats(xc_api_imgcache *c, uint64_t *hits, uint64_t *misses, int *entries,
                           size_t *bytes) {
    pthread_mutex_lock(&c->lock);
    *hits = c->hits;
    *misses = c->misses;
    *entries = c->n;
    *bytes = c->bytes;
    pthread_mutex_unlock(&c->lock);
}

static size_t imgc_bytes(int S) {
    return 3u * (size_t)S * (size_t)S * sizeof(float);
}

/* Copies the cached pixels of key into pixels (3, S, S) and their hash into *hash. */
static bool imgc_get(xc_api_imgcache *c, const uint8_t key[32], int S, float *pixels,
                     uint64_t *hash) {
    pthread_mutex_lock(&c->lock);
    bool hit = false;
    for (int i = 0; i < c->n && !hit; i++) {
        imgc_entry *e = &c->e[i];
        if (e->size == S && !memcmp(e->key, key, 32)) {
            memcpy(pixels, e->pixels, imgc_bytes(S));
            *hash = e->hash;
            e->used = ++c->clock;
            hit = true;
        }
    }
    c->hits += hit;
    c->misses += !hit;
    pthread_mutex_unlock(&c->lock);
    return hit;
}

/* Enters a copy of pixels under key, evicting the least recently used entries to stay within
 * max_bytes (an image bigger than that is not kept; without memory nothing is). */
static void imgc_put(xc_api_imgcache *c, const uint8_t key[32], int S, const float *pixels,
                     uint64_t hash) {
    size_t nb = imgc_bytes(S);
    if (nb > c->max_bytes) {
        return;
    }
    float *copy = xc_malloc(nb);
    if (!copy) {
        return;
    }
    memcpy(copy, pixels, nb);
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].size == S && !memcmp(c->e[i].key, key, 32)) { /* entered meanwhile */
            pthread_mutex_unlock(&c->lock);
            xc_free(copy);
            return;
        }
    }
    while (c->n > 0 && c->bytes + nb > c->max_bytes) {
        int old = 0;
        for (int i = 1; i < c->n; i++) {
            old = c->e[i].used < c->e[old].used ? i : old;
        }
        c->bytes -= imgc_bytes(c->e[old].size);
        xc_free(c->e[old].pixels);
        c->e[old] = c->e[--c->n];
    }
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        imgc_entry *e = xc_realloc(c->e, (size_t)cap * sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&c->lock);
            xc_free(copy);
            return;
        }
        c->e = e;
        c->cap = cap;
    }
    imgc_entry *e = &c->e[c->n++];
    memcpy(e->key, key, 32);
    e->size = S;
    e->pixels = copy;
    e->hash = hash;
    e->used = ++c->clock;
    c->bytes += nb;
    pthread_mutex_unlock(&c->lock);
}

/* The pixel hash of xc_coord_request.img_hash: the first 8 bytes of their SHA-256, big-endian. */
static uint64_t pixel_hash(const float *pixels, int S) {
    uint8_t d[32];
    xc_sha256_sum(pixels, imgc_bytes(S), d);
    uint64_t h = 0;
    for (int k = 0; k < 8; k++) {
        h = h << 8 | d[k];
    }
    return h;
}

/* Decodes and preprocesses image bytes into pixels (3, S, S) and their hash, through the cache
 * when there is one. */
static xc_status image_pixels(const xc_api_conf *conf, const uint8_t *data, size_t len,
                              const xc_image_limits *lim, int S, float *pixels, uint64_t *hash) {
    uint8_t key[32];
    if (conf->imgcache) {
        xc_sha256_sum(data, len, key);
        if (imgc_get(conf->imgcache, key, S, pixels, hash)) {
            return XC_OK;
        }
    }
    XC_TRY(xc_image_preprocess(data, len, lim, S, NULL, pixels));
    *hash = pixel_hash(pixels, S);
    if (conf->imgcache) {
        imgc_put(conf->imgcache, key, S, pixels, *hash);
    }
    return XC_OK;
}

xc_status xc_api_prepare(const xc_api_conf *conf, const xc_tokenizer *tok, const xc_api_request *r,
                         xc_api_prepared *out, xc_api_error *err) {
    memset(out, 0, sizeof *out);
    xc_chat_request cr = {.variant = conf->variant,
                          .system = r->system,
                          .history = r->history,
                          .n_history = r->n_history,
                          .query = r->query,
                          .n_images = (size_t)r->n_images,
                          .tokens_per_image = (size_t)conf->image_tokens,
                          .bos = XC_CHAT_BOS_PER_SEGMENT};
    xc_chat_prompt cp = {0};
    xc_status st = xc_chat_build(tok, &cr, &cp);
    if (st != XC_OK) {
        if (st == XC_ERR_NOMEM) {
            return xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        }
        return BAD("messages", "cannot build the prompt: %s", xc_err_last());
    }
    int n = (int)cp.n;
    if (check_context(conf, r, n, NULL, err) != XC_OK) {
        xc_chat_prompt_fini(&cp);
        return XC_ERR_ARG;
    }
    out->ids = cp.ids;
    out->prompt_tokens = n;
    cp.ids = NULL;
    for (int i = 0; i < n; i++) {
        if (out->ids[i] < 0) {
            out->ids[i] = 0; /* image rows: any id, ignored by stage 0 */
        }
    }
    int S = conf->image_size;
    size_t per = 3u * (size_t)S * (size_t)S;
    if (r->n_images > 0) {
        out->img = xc_malloc((size_t)r->n_images * sizeof *out->img);
        out->pixels = xc_malloc((size_t)r->n_images * per * sizeof(float));
        out->img_hash = xc_malloc((size_t)r->n_images * sizeof(uint64_t));
        if (!out->img || !out->pixels || !out->img_hash) {
            xc_chat_prompt_fini(&cp);
            xc_api_prepared_fini(out);
            return xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        }
        for (int i = 0; i < r->n_images; i++) {
            out->img[i] = (xc_coord_range){(int32_t)cp.images[i].start, (int32_t)cp.images[i].end};
            out->image_tokens += (int)(cp.images[i].end - cp.images[i].start);
        }
    }
    xc_chat_prompt_fini(&cp);
    xc_image_limits lim;
    xc_image_limits_default(&lim);
    if (conf->max_image_bytes) {
        lim.max_bytes = conf->max_image_bytes;
    }
    if (conf->max_pixels) {
        lim.max_pixels = conf->max_pixels;
    }
    double t0 = xc_now_s();
    for (int i = 0; i < r->n_images; i++) {
        if (!r->images[i].data) {
            xc_api_error_set(err, 500, "server_error", NULL, NULL,
                             "image %d was not fetched (xc_api_fetch)", i);
            xc_api_prepared_fini(out);
            return XC_ERR_ARG;
        }
        st = image_pixels(conf, r->images[i].data, r->images[i].len, &lim, S,
                          out->pixels + (size_t)i * per, &out->img_hash[i]);
        if (st != XC_OK) {
            char param[32];
            snprintf(param, sizeof param, "image %d", i);
            xc_api_error_set(err, st == XC_ERR_NOMEM ? 500 : 400,
                             st == XC_ERR_NOMEM ? "server_error" : "invalid_request_error",
                             st == XC_ERR_ARG ? "image_too_large" : "invalid_image", param,
                             "image %d: %s", i, xc_err_last());
            xc_api_prepared_fini(out);
            return XC_ERR_ARG;
        }
    }
    out->preprocess_s = xc_now_s() - t0;
    return fill_request(conf, tok, r, n, out, err);
}

static xc_status fill_request(const xc_api_conf *conf, const xc_tokenizer *tok,
                              const xc_api_request *r, int n, xc_api_prepared *out,
                              xc_api_error *err) {
    int max_new = 0;
    if (check_context(conf, r, n, &max_new, err) != XC_OK) {
        xc_api_prepared_fini(out);
        return XC_ERR_ARG;
    }
    size_t n_stop = 0;
    xc_chat_stop_ids(tok, out->stop_ids, &n_stop);
    if (r->ignore_eos) {
        n_stop = 0;
    }
    for (int i = 0; i < r->n_stop_token_ids; i++) {
        out->stop_ids[n_stop++] = r->stop_token_ids[i];
    }
    out->req = (xc_coord_request){.ids = out->ids,
                                  .n = n,
                                  .img = out->img,
                                  .n_img = r->n_images,
                                  .pixels = out->pixels,
                                  .img_hash = out->img_hash,
                                  .sampling = {.greedy = r->greedy,
                                               .temperature = r->temperature,
                                               .top_k = r->top_k,
                                               .top_p = r->top_p,
                                               .repetition_penalty = r->repetition_penalty,
                                               .seed = r->seed,
                                               .presence_penalty = r->presence_penalty,
                                               .frequency_penalty = r->frequency_penalty,
                                               .min_p = r->min_p,
                                               .min_tokens = r->min_tokens,
                                               .n_logit_bias = r->n_logit_bias},
                                  .max_new_tokens = max_new,
                                  .stop_ids = out->stop_ids,
                                  .n_stop_ids = (int)n_stop,
                                  .penalize_prompt = r->n_images == 0};
    memcpy(out->req.sampling.logit_bias_ids, r->logit_bias_ids,
           (size_t)r->n_logit_bias * sizeof(uint32_t));
    memcpy(out->req.sampling.logit_bias, r->logit_bias, (size_t)r->n_logit_bias * sizeof(float));
    return XC_OK;
}

void xc_api_prepared_fini(xc_api_prepared *p) {
    if (!p) {
        return;
    }
    xc_free(p->ids);
    xc_free(p->img);
    xc_free(p->pixels);
    xc_free(p->img_hash);
    memset(p, 0, sizeof *p);
}

/* ---- generated text and stop strings ---- */

void xc_api_text_init(xc_api_text *t, const xc_tokenizer *tok, char *const *stop, int n_stop) {
    memset(t, 0, sizeof *t);
    xc_tokenizer_stream_init(&t->ts, tok);
    t->tok = tok;
    t->stop = stop;
    t->n_stop = n_stop;
}

static xc_status grow(char **p, size_t *cap, size_t need) {
    if (need <= *cap) {
        return XC_OK;
    }
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        c *= 2;
    }
    char *q = xc_realloc(*p, c);
    if (!q) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for generated text");
    }
    *p = q;
    *cap = c;
    return XC_OK;
}

/* Moves the first k pending bytes to the output. */
static xc_status emit_pending(xc_api_text *t, size_t k) {
    XC_TRY(grow(&t->out, &t->cap_out, t->n_out + k + 1));
    memcpy(t->out + t->n_out, t->pend, k);
    t->n_out += k;
    t->out[t->n_out] = 0;
    memmove(t->pend, t->pend + k, t->n_pend - k);
    t->n_pend -= k;
    t->emitted += k;
    return XC_OK;
}

/* Appends text to the pending bytes, then emits what can no longer begin a stop string. */
static xc_status settle(xc_api_text *t, const char *text, size_t len, bool final) {
    t->n_out = 0;
    if (t->stopped) {
        return XC_OK;
    }
    XC_TRY(grow(&t->pend, &t->cap_pend, t->n_pend + len + 1));
    memcpy(t->pend + t->n_pend, text, len);
    t->n_pend += len;
    /* the earliest complete stop string ends the text */
    size_t cut = SIZE_MAX, cut_len = 0;
    for (int s = 0; s < t->n_stop; s++) {
        size_t sl = strlen(t->stop[s]);
        for (size_t i = 0; i + sl <= t->n_pend && i < cut; i++) {
            if (!memcmp(t->pend + i, t->stop[s], sl)) {
                cut = i;
                cut_len = sl;
                break;
            }
        }
    }
    if (cut != SIZE_MAX) {
        XC_TRY(emit_pending(t, cut + (t->include_stop ? cut_len : 0)));
        t->n_pend = 0;
        t->stopped = true;
        return XC_OK;
    }
    /* hold back the longest tail that is a proper prefix of some stop string */
    size_t hold = 0;
    if (!final) {
        for (int s = 0; s < t->n_stop; s++) {
            size_t sl = strlen(t->stop[s]);
            for (size_t h = sl - 1 < t->n_pend ? sl - 1 : t->n_pend; h > hold; h--) {
                if (!memcmp(t->pend + t->n_pend - h, t->stop[s], h)) {
                    hold = h;
                    break;
                }
            }
        }
    }
    return emit_pending(t, t->n_pend - hold);
}

xc_status xc_api_text_feed(xc_api_text *t, int32_t token, const char **emit, size_t *n_emit,
                           bool *stopped) {
    const char *text = NULL;
    size_t len = 0;
    XC_TRY(xc_tokenizer_stream_feed(&t->ts, token, &text, &len));
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(t->tok);
    if (t->show_special && (token == sp->bos || token == sp->eos || token == sp->pad)) {
        /* a control piece decodes to nothing; shown, it is its piece text */
        size_t pl = 0;
        const char *piece = xc_tokenizer_id_to_piece(t->tok, token, &pl);
        pl = piece ? pl : 0;
        char *both = xc_malloc(len + pl + 1);
        if (!both) {
            return XC_ERR_NOMEM;
        }
        memcpy(both, text ? text : "", len); /* what the run before it flushed, then it */
        memcpy(both + len, piece ? piece : "", pl);
        xc_status st = settle(t, both, len + pl, false);
        xc_free(both);
        XC_TRY(st);
    } else {
        XC_TRY(settle(t, text, len, false));
    }
    *emit = t->out ? t->out : "";
    *n_emit = t->n_out;
    *stopped = t->stopped;
    return XC_OK;
}

xc_status xc_api_text_finish(xc_api_text *t, const char **emit, size_t *n_emit) {
    const char *text = NULL;
    size_t len = 0;
    XC_TRY(xc_tokenizer_stream_finish(&t->ts, &text, &len));
    XC_TRY(settle(t, text, len, true));
    *emit = t->out ? t->out : "";
    *n_emit = t->n_out;
    return XC_OK;
}

void xc_api_text_fini(xc_api_text *t) {
    if (!t) {
        return;
    }
    xc_tokenizer_stream_fini(&t->ts);
    xc_free(t->pend);
    xc_free(t->out);
    memset(t, 0, sizeof *t);
}

/* ---- responses ---- */

/* A JSON string from len bytes (may hold NULs or invalid UTF-8: cJSON copies bytes verbatim, so
 * invalid sequences are replaced by U+FFFD here to keep the output valid JSON text). */
static cJSON *str_n(const char *s, size_t len) {
    char *tmp = xc_malloc(len * 3 + 1);
    if (!tmp) {
        return NULL;
    }
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned c = u[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = k > 0 && i + k <= len && c != 0;
        for (size_t j = 1; ok && j < k; j++) {
            ok = (u[i + j] & 0xc0) == 0x80;
        }
        if (ok) {
            memcpy(tmp + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(tmp + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    tmp[o] = 0;
    cJSON *v = cJSON_CreateString(tmp);
    xc_free(tmp);
    return v;
}

/* {"token", "logprob", "bytes"} of one token id. */
static cJSON *token_lp(const xc_tokenizer *tok, int32_t id, float lp) {
    size_t len = 0;
    const char *piece = tok ? xc_tokenizer_id_to_piece(tok, id, &len) : NULL;
    char buf[128];
    size_t o = 0;
    int byte = -1;
    if (piece && len == 6 && !strncmp(piece, "<0x", 3) && piece[5] == '>' && hexv(piece[3]) >= 0 &&
        hexv(piece[4]) >= 0) {
        byte = hexv(piece[3]) * 16 + hexv(piece[4]); /* a byte-fallback piece */
    }
    for (size_t i = 0; piece && byte < 0 && i < len && o + 4 < sizeof buf;) {
        if (i + 3 <= len && !memcmp(piece + i, "\xe2\x96\x81", 3)) { /* U+2581 -> space */
            buf[o++] = ' ';
            i += 3;
        } else {
            buf[o++] = piece[i++];
        }
    }
    if (byte >= 0) {
        buf[o++] = (char)byte;
    }
    cJSON *e = cJSON_CreateObject();
    cJSON_AddItemToObject(e, "token", str_n(buf, o));
    cJSON_AddNumberToObject(e, "logprob", isfinite(lp) ? lp : -9999.0);
    cJSON *b = cJSON_AddArrayToObject(e, "bytes");
    for (size_t i = 0; b && i < o; i++) {
        cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)buf[i]));
    }
    return e;
}

static cJSON *logprobs_json(const xc_api_logprob *lp, int n, const xc_tokenizer *tok) {
    cJSON *o = cJSON_CreateObject();
    cJSON *c = cJSON_AddArrayToObject(o, "content");
    for (int i = 0; c && i < n; i++) {
        cJSON *e = token_lp(tok, lp[i].token, lp[i].logprob);
        cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; top && k < lp[i].n_top; k++) {
            cJSON_AddItemToArray(top, token_lp(tok, lp[i].top_ids[k], lp[i].top_logprobs[k]));
        }
        cJSON_AddItemToArray(c, e);
    }
    return o;
}

static cJSON *usage_json(const xc_api_usage *u) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
    return o;
}

static cJSON *head_json(const char *id, long created, const char *model, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", model);
    return o;
}

char *xc_api_completion_json(const char *id, long created, const char *model,
                             const xc_api_choice *choices, int n, const xc_api_usage *usage,
                             const xc_tokenizer *tok) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    cJSON *o = head_json(id, created, model, "chat.completion");
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; arr && i < n; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", i);
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddItemToObject(m, "content", str_n(choices[i].text, choices[i].len));
        if (choices[i].logprobs) {
            cJSON_AddItemToObject(c, "logprobs",
                                  logprobs_json(choices[i].logprobs, choices[i].n_logprobs, tok));
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
        cJSON_AddStringToObject(c, "finish_reason", choices[i].finish_reason);
        cJSON_AddItemToArray(arr, c);
    }
    cJSON_AddItemToObject(o, "usage", usage_json(usage));
    return print_free(o);
}

char *xc_api_chunk_json(const char *id, long created, const char *model, int index, bool role,
                        const char *content, size_t len, const xc_api_logprob *lp, int n_lp,
                        const char *finish_reason, const xc_api_usage *usage, bool with_usage_null,
                        const xc_tokenizer *tok) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    cJSON *o = head_json(id, created, model, "chat.completion.chunk");
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    if (index >= 0 && arr) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", index);
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) {
            cJSON_AddStringToObject(d, "role", "assistant");
        }
        if (content) {
            cJSON_AddItemToObject(d, "content", str_n(content, len));
        }
        if (lp) {
            cJSON_AddItemToObject(c, "logprobs", logprobs_json(lp, n_lp, tok));
        } else {
            cJSON_AddNullToObject(c, "logprobs");
        }
        if (finish_reason) {
            cJSON_AddStringToObject(c, "finish_reason", finish_reason);
        } else {
            cJSON_AddNullToObject(c, "finish_reason");
        }
        cJSON_AddItemToArray(arr, c);
        if (with_usage_null) {
            cJSON_AddNullToObject(o, "usage");
        }
    } else if (usage) {
        cJSON_AddItemToObject(o, "usage", usage_json(usage));
    }
    return print_free(o);
}

char *xc_api_models_json(const char *model, long created, int max_model_len) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(o, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", model);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "xcpipe");
    cJSON_AddNumberToObject(m, "max_model_len", max_model_len);
    cJSON_AddItemToArray(d, m);
    return print_free(o);
}

/* ---- /tokenize, /detokenize ---- */

static cJSON *parse_body(const char *body, size_t len, xc_api_error *err) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    if (xc_api_json_precheck(body, len, XC_API_MAX_JSON_DEPTH, XC_API_MAX_JSON_NODES) != XC_OK) {
        BAD(NULL, "the body is too complex: %s", xc_err_last());
        return NULL;
    }
    cJSON *o = cJSON_ParseWithLength(body, len);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        BAD(NULL, "the body must be a JSON object");
        return NULL;
    }
    return o;
}

/* Only the keys in allowed (NULL-terminated); model, when given, must be the served one. */
static xc_status check_small(const xc_api_conf *conf, const cJSON *o, const char *const *allowed,
                             xc_api_error *err) {
    for (const cJSON *k = o->child; k; k = k->next) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++) {
            ok = ok || !strcmp(k->string, allowed[i]);
        }
        if (!ok) {
            return BAD(k->string, "Unrecognized request argument supplied: %s", k->string);
        }
    }
    const cJSON *m = get(o, "model");
    if (m &&
        (!cJSON_IsString(m) || (conf->model_name && strcmp(m->valuestring, conf->model_name)))) {
        return xc_api_error_set(err, 404, "invalid_request_error", "model_not_found", "model",
                                "The model does not exist (this server serves '%.200s')",
                                conf->model_name ? conf->model_name : "");
    }
    return XC_OK;
}

static xc_status get_bool(const cJSON *o, const char *k, bool *out, xc_api_error *err) {
    const cJSON *v = get(o, k);
    if (v && !cJSON_IsBool(v)) {
        return BAD(k, "%s must be a boolean", k);
    }
    if (v) {
        *out = cJSON_IsTrue(v);
    }
    return XC_OK;
}

xc_status xc_api_tokenize(const xc_api_conf *conf, const xc_tokenizer *tok, const char *body,
                          size_t len, char **out, xc_api_error *err) {
    memset(err, 0, sizeof *err);
    *out = NULL;
    cJSON *o = parse_body(body, len, err);
    if (!o) {
        return XC_ERR_ARG;
    }
    static const char *const allowed[] = {
        "model", "prompt", "messages", "add_special_tokens", "add_generation_prompt", NULL};
    xc_status st = check_small(conf, o, allowed, err);
    const cJSON *prompt = get(o, "prompt"), *msgs = get(o, "messages");
    bool add_special = msgs == NULL, add_gen = true;
    xc_tokens ids = {0};
    xc_api_request r = {0};
    xc_chat_prompt cp = {0};
    if (st == XC_OK) {
        st = get_bool(o, "add_special_tokens", &add_special, err);
    }
    if (st == XC_OK) {
        st = get_bool(o, "add_generation_prompt", &add_gen, err);
    }
    if (st == XC_OK && (!prompt) == (!msgs)) {
        st = BAD(NULL, "give either prompt (a string) or messages");
    }
    if (st == XC_OK && prompt) {
        if (!cJSON_IsString(prompt)) {
            st = BAD("prompt", "prompt must be a string");
        } else if (add_special && xc_tokenizer_special_ids(tok)->bos >= 0) {
            st = xc_tokenizer_tokens_push(&ids, xc_tokenizer_special_ids(tok)->bos);
        }
        if (st == XC_OK) {
            st = xc_tokenizer_encode(tok, prompt->valuestring, strlen(prompt->valuestring), &ids);
            if (st == XC_ERR_ARG) {
                st = BAD("prompt", "%s", xc_err_last());
            }
        }
    } else if (st == XC_OK) {
        parse_ctx pc = {.body = body, .len = len, .conf = conf, .r = &r, .err = err};
        st = parse_messages(&pc, msgs);
        if (st == XC_OK) {
            xc_chat_request cr = {.variant = conf->variant,
                                  .system = r.system,
                                  .history = r.history,
                                  .n_history = r.n_history,
                                  .query = r.query,
                                  .n_images = (size_t)r.n_images,
                                  .tokens_per_image = (size_t)conf->image_tokens,
                                  .bos = XC_CHAT_BOS_PER_SEGMENT,
                                  .no_generation_prompt = !add_gen};
            st = xc_chat_build(tok, &cr, &cp);
            if (st == XC_ERR_ARG) {
                st = BAD("messages", "cannot build the prompt: %s", xc_err_last());
            }
        }
    }
    if (st == XC_OK) {
        const int32_t *v = prompt ? ids.ids : cp.ids;
        size_t n = prompt ? ids.n : cp.n;
        cJSON *res = cJSON_CreateObject();
        cJSON_AddNumberToObject(res, "count", (double)n);
        cJSON_AddNumberToObject(res, "max_model_len", conf->max_context);
        cJSON *arr = cJSON_AddArrayToObject(res, "tokens");
        for (size_t i = 0; arr && i < n; i++) {
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(v[i] < 0 ? -1 : v[i]));
        }
        *out = print_free(res);
        if (!*out) {
            st = XC_ERR_NOMEM;
        }
    }
    if (st == XC_ERR_NOMEM && !err->http_status) {
        xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    xc_chat_prompt_fini(&cp);
    xc_api_request_fini(&r);
    xc_tokenizer_tokens_fini(&ids);
    cJSON_Delete(o);
    return st == XC_OK ? XC_OK : XC_ERR_ARG;
}

xc_status xc_api_detokenize(const xc_api_conf *conf, const xc_tokenizer *tok, const char *body,
                            size_t len, char **out, xc_api_error *err) {
    memset(err, 0, sizeof *err);
    *out = NULL;
    cJSON *o = parse_body(body, len, err);
    if (!o) {
        return XC_ERR_ARG;
    }
    static const char *const allowed[] = {"model", "tokens", NULL};
    xc_status st = check_small(conf, o, allowed, err);
    const cJSON *t = get(o, "tokens");
    int32_t *ids = NULL;
    int n = 0;
    if (st == XC_OK && !cJSON_IsArray(t)) {
        st = BAD("tokens", "tokens must be an array of token ids");
    }
    if (st == XC_OK) {
        n = cJSON_GetArraySize(t);
        ids = xc_malloc((size_t)(n ? n : 1) * sizeof *ids);
        st = ids ? XC_OK : XC_ERR_NOMEM;
    }
    long long iv;
    int k = 0;
    for (const cJSON *v = st == XC_OK ? t->child : NULL; v; v = v->next, k++) {
        if (!json_int_in(v, 0, (double)xc_tokenizer_vocab_size(tok) - 1, &iv)) {
            st = BAD("tokens", "tokens[%d] is not a token id below %zu", k,
                     xc_tokenizer_vocab_size(tok));
            break;
        }
        ids[k] = (int32_t)iv;
    }
    char *text = NULL;
    size_t tl = 0;
    if (st == XC_OK) {
        st = xc_tokenizer_decode(tok, ids, (size_t)n, &text, &tl);
    }
    if (st == XC_OK) {
        cJSON *res = cJSON_CreateObject();
        cJSON_AddItemToObject(res, "prompt", str_n(text, tl));
        *out = print_free(res);
        st = *out ? XC_OK : XC_ERR_NOMEM;
    }
    if (st == XC_ERR_NOMEM && !err->http_status) {
        xc_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    xc_free(text);
    xc_free(ids);
    cJSON_Delete(o);
    return st == XC_OK ? XC_OK : XC_ERR_ARG;
}

/* ---- /v1/completions answers ---- */

/* A token's text as the logprob entries show it (token_lp's rendering). */
static cJSON *legacy_lp_json(const xc_api_legacy_lp *l, const xc_tokenizer *tok) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = 0; i < l->n_echo + l->n_lp; i++) {
        bool echo = i < l->n_echo;
        int32_t id = echo ? l->echo_ids[i] : l->lp[i - l->n_echo].token;
        cJSON *e = token_lp(tok, id, 0.0f);
        cJSON_AddItemToArray(toks, cJSON_Duplicate(cJSON_GetObjectItem(e, "token"), true));
        cJSON_Delete(e);
        if (echo) { /* prompt logprobs are not computed */
            cJSON_AddItemToArray(lps, cJSON_CreateNull());
            cJSON_AddItemToArray(tops, cJSON_CreateNull());
        } else {
            const xc_api_logprob *lp = &l->lp[i - l->n_echo];
            cJSON_AddItemToArray(lps,
                                 cJSON_CreateNumber(isfinite(lp->logprob) ? lp->logprob : -9999.0));
            cJSON *m = cJSON_CreateObject();
            for (int k = 0; k < lp->n_top; k++) {
                cJSON *t = token_lp(tok, lp->top_ids[k], lp->top_logprobs[k]);
                const cJSON *ts = cJSON_GetObjectItem(t, "token");
                if (ts && cJSON_IsString(ts) && !cJSON_GetObjectItem(m, ts->valuestring)) {
                    cJSON_AddNumberToObject(m, ts->valuestring,
                                            isfinite(lp->top_logprobs[k]) ? lp->top_logprobs[k]
                                                                          : -9999.0);
                }
                cJSON_Delete(t);
            }
            cJSON_AddItemToArray(tops, m);
        }
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)l->offsets[i]));
    }
    return o;
}

char *xc_api_text_completion_json(const char *id, long created, const char *model,
                                  const xc_api_text_choice *choices, int n, int index,
                                  const xc_api_usage *usage, const xc_tokenizer *tok) {
    pthread_once(&g_hooks_once, cjson_hooks_once);
    cJSON *o = head_json(id, created, model, "text_completion");
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; arr && i < n; i++) {
        const xc_api_text_choice *c = &choices[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "index", index >= 0 ? index : i);
        cJSON_AddItemToObject(e, "text", str_n(c->text ? c->text : "", c->text ? c->len : 0));
        if (c->logprobs) {
            cJSON_AddItemToObject(e, "logprobs", legacy_lp_json(c->logprobs, tok));
        } else {
            cJSON_AddNullToObject(e, "logprobs");
        }
        if (c->finish_reason) {
            cJSON_AddStringToObject(e, "finish_reason", c->finish_reason);
        } else {
            cJSON_AddNullToObject(e, "finish_reason");
        }
        cJSON_AddItemToArray(arr, e);
    }
    if (usage) {
        cJSON_AddItemToObject(o, "usage", usage_json(usage));
    } else if (index >= 0 || n == 0) {
        cJSON_AddNullToObject(o, "usage");
    }
    return print_free(o);
}
