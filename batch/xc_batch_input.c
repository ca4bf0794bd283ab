/* Batch input lines: up-front checks with clear messages, and the HTTP body with image files
 * turned into data URLs (paths confined to the input file's directory). */
#include "xc_batch_input.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_mem.h"

static void *cjson_malloc(size_t n) {
    return xc_malloc(n);
}

static void cjson_free(void *p) {
    xc_free(p);
}

static void install_hooks(void) {
    cJSON_Hooks h = {cjson_malloc, cjson_free};
    cJSON_InitHooks(&h);
}

void xc_batch_input_cjson_hooks(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install_hooks);
}

static xc_status refuse(xc_batch_input_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static xc_status refuse(xc_batch_input_error *err, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    err->code = code;
    return xc_errf(XC_ERR_ARG, "%s", err->message);
}

/* A value quoted for a message, cut to 60 bytes. */
static const char *shown(const char *s, char *buf, size_t n) {
    size_t len = strlen(s);
    if (len <= 60) {
        snprintf(buf, n, "'%s'", s);
    } else {
        snprintf(buf, n, "'%.57s...'", s);
    }
    return buf;
}

/* ---- image references ---- */

typedef enum ref_kind { REF_PASS, REF_FILE } ref_kind;

/* Classifies an image URL: data:/http(s): URLs pass through to the server; a path or file://PATH
 * is a file. Other schemes are refused. */
static xc_status classify(const char *url, ref_kind *kind, const char **path,
                          xc_batch_input_error *err) {
    char b[80];
    if (!strncmp(url, "data:", 5) || !strncmp(url, "http://", 7) || !strncmp(url, "https://", 8)) {
        *kind = REF_PASS;
        return XC_OK;
    }
    const char *p = !strncmp(url, "file://", 7) ? url + 7 : url;
    if (p == url && strstr(url, "://")) {
        return refuse(err, "invalid_body",
                      "image URL %s: unsupported scheme (use data:, http(s):, "
                      "file:// or a path relative to the input file)",
                      shown(url, b, sizeof b));
    }
    if (!*p) {
        return refuse(err, "invalid_body", "empty image path");
    }
    *kind = REF_FILE;
    *path = p;
    return XC_OK;
}

/* Resolves path (relative to base, or absolute) to a canonical path that must lie below base and
 * name a regular file of at most max bytes. *real is xc_malloc'd. */
static xc_status resolve(const xc_batch_input_conf *c, const char *path, char **real, size_t *size,
                         xc_batch_input_error *err) {
    char b[80], joined[PATH_MAX], canon[PATH_MAX];
    int n = path[0] == '/' ? snprintf(joined, sizeof joined, "%s", path)
                           : snprintf(joined, sizeof joined, "%s/%s", c->base_dir, path);
    if (n < 0 || (size_t)n >= sizeof joined) {
        return refuse(err, "image_file", "image path %s is too long", shown(path, b, sizeof b));
    }
    if (!realpath(joined, canon)) {
        int e = errno;
        return refuse(err, "image_file", "image file %s: %s", shown(path, b, sizeof b),
                      e == ENOENT ? "not found (paths are relative to the input file's directory)"
                                  : strerror(e));
    }
    size_t bl = strlen(c->base_dir);
    bool inside = !strncmp(canon, c->base_dir, bl) &&
                  (canon[bl] == '/' || (bl == 1 && c->base_dir[0] == '/'));
    if (!inside) {
        return refuse(err, "image_file",
                      "image file %s is outside the input file's directory %s (refused)",
                      shown(path, b, sizeof b), c->base_dir);
    }
    struct stat sb;
    if (stat(canon, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        return refuse(err, "image_file", "image file %s is not a regular file",
                      shown(path, b, sizeof b));
    }
    if ((unsigned long long)sb.st_size > (unsigned long long)c->max_image_bytes) {
        return refuse(err, "image_file", "image file %s is %lld bytes, over the limit of %zu",
                      shown(path, b, sizeof b), (long long)sb.st_size, c->max_image_bytes);
    }
    *real = xc_strdup(canon);
    if (!*real) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    *size = (size_t)sb.st_size;
    return XC_OK;
}

static const char *mime_of(const unsigned char *d, size_t n) {
    if (n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8)) {
        return "image/png";
    }
    if (n >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff) {
        return "image/jpeg";
    }
    if (n >= 12 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4)) {
        return "image/webp";
    }
    return NULL;
}

/* Reads the file (at most max bytes: it may have grown since the check) into a data URL. */
static xc_status load_data_url(const xc_batch_input_conf *c, const char *path, const char *real,
                               char **url, xc_batch_input_error *err) {
    char b[80];
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return refuse(err, "image_file", "image file %s: %s", shown(path, b, sizeof b),
                      strerror(errno));
    }
    unsigned char *buf = xc_malloc(c->max_image_bytes + 1);
    if (!buf) {
        close(fd);
        return xc_errf(XC_ERR_NOMEM, "out of memory (image of up to %zu bytes)",
                       c->max_image_bytes);
    }
    size_t n = 0;
    xc_status st = XC_OK;
    while (n <= c->max_image_bytes) {
        ssize_t r = read(fd, buf + n, c->max_image_bytes + 1 - n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            st = refuse(err, "image_file", "image file %s: %s", shown(path, b, sizeof b),
                        strerror(errno));
            break;
        }
        if (r == 0) {
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    const char *mime = mime_of(buf, n);
    if (st == XC_OK && n > c->max_image_bytes) {
        st = refuse(err, "image_file", "image file %s is over the limit of %zu bytes",
                    shown(path, b, sizeof b), c->max_image_bytes);
    } else if (st == XC_OK && !mime) {
        st = refuse(err, "image_file", "image file %s is not a PNG, JPEG or WebP image",
                    shown(path, b, sizeof b));
    }
    if (st == XC_OK) {
        char prefix[40];
        snprintf(prefix, sizeof prefix, "data:%s;base64,", mime);
        *url = xc_batch_input_base64(prefix, buf, n);
        if (!*url) {
            st = xc_errf(XC_ERR_NOMEM, "out of memory (data URL of %zu bytes)", n);
        }
    }
    xc_free(buf);
    return st;
}

char *xc_batch_input_base64(const char *prefix, const unsigned char *d, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t pl = strlen(prefix), out_n = (n + 2) / 3 * 4;
    char *s = xc_malloc(pl + out_n + 1);
    if (!s) {
        return NULL;
    }
    memcpy(s, prefix, pl);
    char *o = s + pl;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (unsigned)d[i + 1] << 8 | d[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)d[i] << 16;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        unsigned v = (unsigned)d[i] << 16 | (unsigned)d[i + 1] << 8;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = 0;
    return s;
}

/* ---- the body ---- */

/* One image URL of a body: a file reference (file://, or a path relative to the input) is
 * checked and counted in *n_files, and with `load` replaced by its data URL; others pass as they
 * are. */
static xc_status take_url(const xc_batch_input_conf *c, cJSON *url, bool load, int *n_files,
                          xc_batch_input_error *err) {
    ref_kind kind = REF_PASS;
    const char *path = NULL;
    XC_TRY(classify(url->valuestring, &kind, &path, err));
    if (kind != REF_FILE) {
        return XC_OK;
    }
    char *real = NULL, *data = NULL;
    size_t size;
    XC_TRY(resolve(c, path, &real, &size, err));
    xc_status st = load ? load_data_url(c, path, real, &data, err) : XC_OK;
    xc_free(real);
    XC_TRY(st);
    if (load) {
        /* cJSON_SetValuestring only shrinks; swap the string ourselves */
        cJSON_free(url->valuestring);
        url->valuestring = data;
    }
    (*n_files)++;
    return XC_OK;
}

/* Walks every image part of every message. With load, file references are replaced by data
 * URLs in place; without, they are only resolved and counted. */
static xc_status walk_images(const xc_batch_input_conf *c, cJSON *body, bool load, int *n_files,
                             xc_batch_input_error *err) {
    cJSON *cimgs = cJSON_GetObjectItemCaseSensitive(body, "instruction")
                       ? cJSON_GetObjectItemCaseSensitive(body, "images")
                       : NULL;
    int ci = 0;
    cJSON *ce;
    cJSON_ArrayForEach(ce, cimgs) { /* a composition's images: URL strings or {"url"} */
        cJSON *url = cJSON_IsString(ce) ? ce : cJSON_GetObjectItemCaseSensitive(ce, "url");
        if (!cJSON_IsString(url)) {
            return refuse(err, "invalid_body", "body.images[%d] has no url string", ci);
        }
        XC_TRY(take_url(c, url, load, n_files, err));
        ci++;
    }
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    int mi = 0;
    cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        int pi = 0;
        cJSON *part;
        cJSON *parts = cJSON_IsArray(content) ? content : NULL;
        cJSON_ArrayForEach(part, parts) {
            cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
            if (!iu) {
                pi++;
                continue;
            }
            cJSON *url = cJSON_IsString(iu) ? iu : cJSON_GetObjectItemCaseSensitive(iu, "url");
            if (!cJSON_IsString(url)) {
                return refuse(err, "invalid_body",
                              "body.messages[%d].content[%d].image_url has no url string", mi, pi);
            }
            XC_TRY(take_url(c, url, load, n_files, err));
            pi++;
        }
        mi++;
    }
    return XC_OK;
}

/* The structural checks of a composition body. */
static xc_status check_compose_body(const cJSON *body, xc_batch_input_error *err) {
    if (!cJSON_IsObject(body)) {
        return refuse(err, "invalid_body", "body must be a JSON object");
    }
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(body, "instruction");
    if (!cJSON_IsString(in) || !in->valuestring[0]) {
        return refuse(err, "invalid_body", "body.instruction must be a non-empty string");
    }
    const cJSON *im = cJSON_GetObjectItemCaseSensitive(body, "images");
    if (im && !cJSON_IsArray(im)) {
        return refuse(err, "invalid_body", "body.images must be an array");
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (model && !cJSON_IsString(model)) {
        return refuse(err, "invalid_body", "body.model must be a string");
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "stream"))) {
        return refuse(err, "invalid_body", "body.stream must not be true in a batch");
    }
    return XC_OK;
}

/* The structural checks of a body (the server checks every parameter again). */
static xc_status check_body(const cJSON *body, xc_batch_input_error *err) {
    if (!cJSON_IsObject(body)) {
        return refuse(err, "invalid_body", "body must be a JSON object");
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        return refuse(err, "invalid_body", "body.messages must be a non-empty array");
    }
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            return refuse(err, "invalid_body",
                          "body.messages[%d] must be an object with a string "
                          "role",
                          i);
        }
        if (content && !cJSON_IsString(content) && !cJSON_IsArray(content) &&
            !cJSON_IsNull(content)) {
            return refuse(err, "invalid_body",
                          "body.messages[%d].content must be a string or an array of parts", i);
        }
        i++;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (model && !cJSON_IsString(model)) {
        return refuse(err, "invalid_body", "body.model must be a string");
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "stream"))) {
        return refuse(err, "invalid_body", "body.stream must not be true in a batch");
    }
    return XC_OK;
}

/* Parses a line into its top-level object, checking everything but the body's images. */
static xc_status parse_line(const char *line, size_t len, cJSON **root, xc_batch_input_line *out,
                            xc_batch_input_error *err) {
    xc_batch_input_cjson_hooks();
    char b[80];
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    if (o && end) {
        while ((size_t)(end - line) < len && strchr(" \t\r", *end)) {
            end++;
        }
    }
    if (!o || (size_t)(end - line) < len) {
        size_t at = end ? (size_t)(end - line) : 0;
        if (!o) {
            const char *ep = cJSON_GetErrorPtr();
            at = ep && ep >= line && ep <= line + len ? (size_t)(ep - line) : 0;
        }
        cJSON_Delete(o);
        return refuse(err, "invalid_json", "not valid JSON (near byte %zu)", at + 1);
    }
    *root = o;
    if (!cJSON_IsObject(o)) {
        return refuse(err, "invalid_json", "a line must be a JSON object");
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "custom_id");
    if (!cJSON_IsString(id) || !id->valuestring[0]) {
        return refuse(err, "invalid_custom_id", "custom_id must be a non-empty string");
    }
    size_t il = strlen(id->valuestring);
    if (il > XC_BATCH_MAX_CUSTOM_ID) {
        return refuse(err, "invalid_custom_id", "custom_id is %zu bytes, over %d", il,
                      XC_BATCH_MAX_CUSTOM_ID);
    }
    out->custom_id = xc_strdup(id->valuestring);
    if (!out->custom_id) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    out->id_len = il;
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(o, "method");
    if (!cJSON_IsString(method) || strcmp(method->valuestring, "POST")) {
        return refuse(err, "invalid_method", "method must be \"POST\"%s%s",
                      cJSON_IsString(method) ? ", not " : "",
                      cJSON_IsString(method) ? shown(method->valuestring, b, sizeof b) : "");
    }
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(o, "url");
    out->compose = cJSON_IsString(url) && !strcmp(url->valuestring, XC_BATCH_URL_COMPOSE);
    if (!cJSON_IsString(url) || (strcmp(url->valuestring, XC_BATCH_URL) && !out->compose)) {
        return refuse(err, "invalid_url",
                      "url must be \"" XC_BATCH_URL "\" or \"" XC_BATCH_URL_COMPOSE "\"%s%s",
                      cJSON_IsString(url) ? ", not " : "",
                      cJSON_IsString(url) ? shown(url->valuestring, b, sizeof b) : "");
    }
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(o, "body");
    XC_TRY(out->compose ? check_compose_body(body, err) : check_body(body, err));
    out->has_model = cJSON_GetObjectItemCaseSensitive(body, "model") != NULL;
    return XC_OK;
}

xc_status xc_batch_input_check(const xc_batch_input_conf *c, const char *line, size_t len,
                               xc_batch_input_line *out, xc_batch_input_error *err) {
    memset(out, 0, sizeof *out);
    err->code = "";
    err->message[0] = 0;
    cJSON *root = NULL;
    xc_status st = parse_line(line, len, &root, out, err);
    if (st == XC_OK) {
        st = walk_images(c, cJSON_GetObjectItemCaseSensitive(root, "body"), false, &out->n_files,
                         err);
    }
    cJSON_Delete(root);
    return st;
}

void xc_batch_input_line_fini(xc_batch_input_line *l) {
    if (!l) {
        return;
    }
    xc_free(l->custom_id);
    memset(l, 0, sizeof *l);
}

xc_status xc_batch_input_body(const xc_batch_input_conf *c, const char *line, size_t len,
                              char **body, size_t *body_len, xc_batch_input_error *err) {
    err->code = "";
    err->message[0] = 0;
    cJSON *root = NULL;
    xc_batch_input_line info = {0};
    xc_status st = parse_line(line, len, &root, &info, err);
    xc_batch_input_line_fini(&info);
    cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "body");
    int n_files = 0;
    if (st == XC_OK) {
        st = walk_images(c, b, true, &n_files, err);
    }
    const char *model = c->set_model;
    if (!model && !cJSON_GetObjectItemCaseSensitive(b, "model")) {
        model = c->default_model;
    }
    if (st == XC_OK && model) {
        cJSON *m = cJSON_CreateString(model);
        if (!m || (cJSON_GetObjectItemCaseSensitive(b, "model")
                       ? !cJSON_ReplaceItemInObjectCaseSensitive(b, "model", m)
                       : !cJSON_AddItemToObject(b, "model", m))) {
            st = xc_errf(XC_ERR_NOMEM, "out of memory");
        }
    }
    char *s = st == XC_OK ? cJSON_PrintUnformatted(b) : NULL;
    if (st == XC_OK && !s) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory (printing a body)");
    }
    cJSON_Delete(root);
    if (st == XC_OK) {
        *body = s;
        *body_len = strlen(s);
    }
    return st;
}
