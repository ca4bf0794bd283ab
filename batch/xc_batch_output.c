/* Batch output files: whole-line appends, fsync policy, recovery of torn and unreadable lines,
 * and the OpenAI Batch output records. */
#include "xc_batch_output.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch_input.h"
#include "xc_mem.h"

struct xc_batch_output {
    int fd;
    char *path;
    int fsync_every; /* 1 = every line, N, 0 = on close */
    size_t unsynced; /* lines since the last fsync */
    long long size;  /* bytes in the file (we are its only writer) */
};

/* ---- records ---- */

bool xc_batch_output_is_failure(const void *record) {
    const cJSON *r = record;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(r, "error");
    if (err && !cJSON_IsNull(err)) {
        return true;
    }
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(r, "response");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(resp, "status_code");
    return !cJSON_IsObject(resp) || !cJSON_IsNumber(code) || code->valuedouble != 200;
}

/* Prints o plus '\n' into a new string and deletes o. */
static char *finish_line(cJSON *o, size_t *out_len) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) {
        return NULL;
    }
    size_t n = strlen(s);
    char *line = xc_realloc(s, n + 2);
    if (!line) {
        xc_free(s);
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = 0;
    if (out_len) {
        *out_len = n + 1;
    }
    return line;
}

char *xc_batch_output_response(const char *id, const char *custom_id, int status,
                               const char *request_id, const char *body, size_t len,
                               size_t *out_len) {
    xc_batch_input_cjson_hooks();
    cJSON *b = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsObject(b)) {
        cJSON_Delete(b);
        b = cJSON_CreateObject();
        cJSON *e = cJSON_AddObjectToObject(b, "error");
        char *text = xc_strndup(body, len < 2000 ? len : 2000);
        if (!e || !text || !cJSON_AddStringToObject(e, "message", text) ||
            !cJSON_AddStringToObject(e, "type", "invalid_response")) {
            xc_free(text);
            cJSON_Delete(b);
            return NULL;
        }
        xc_free(text);
    }
    if (!request_id) {
        const cJSON *bid = cJSON_GetObjectItemCaseSensitive(b, "id");
        request_id = cJSON_IsString(bid) ? bid->valuestring : "";
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *resp = cJSON_CreateObject();
    bool ok = o && resp && cJSON_AddStringToObject(o, "id", id) &&
              cJSON_AddStringToObject(o, "custom_id", custom_id) &&
              cJSON_AddNumberToObject(resp, "status_code", status) &&
              cJSON_AddStringToObject(resp, "request_id", request_id);
    if (!ok) {
        cJSON_Delete(b);
        cJSON_Delete(resp);
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddItemToObject(resp, "body", b);
    cJSON_AddItemToObject(o, "response", resp);
    if (!cJSON_AddNullToObject(o, "error")) {
        cJSON_Delete(o);
        return NULL;
    }
    return finish_line(o, out_len);
}

char *xc_batch_output_error(const char *id, const char *custom_id, const char *code,
                            const char *message, size_t *out_len) {
    xc_batch_input_cjson_hooks();
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_CreateObject();
    bool ok = o && e && cJSON_AddStringToObject(o, "id", id) &&
              cJSON_AddStringToObject(o, "custom_id", custom_id) &&
              cJSON_AddNullToObject(o, "response") && cJSON_AddStringToObject(e, "code", code) &&
              cJSON_AddStringToObject(e, "message", message);
    if (!ok) {
        cJSON_Delete(e);
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddItemToObject(o, "error", e);
    return finish_line(o, out_len);
}

/* ---- the file ---- */

static xc_status sync_dir(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    int dfd = open(dirname(tmp), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        return xc_errf(XC_ERR_IO, "%s: cannot open its directory: %s", path, strerror(errno));
    }
    int r = fsync(dfd);
    int e = errno;
    close(dfd);
    /* some file systems refuse fsync on directories (EINVAL); nothing more can be done there */
    if (r != 0 && e != EINVAL) {
        return xc_errf(XC_ERR_IO, "%s: fsync of its directory: %s", path, strerror(e));
    }
    return XC_OK;
}

static xc_status lock(xc_batch_output *o) {
    if (flock(o->fd, LOCK_EX | LOCK_NB) != 0) {
        return xc_errf(XC_ERR_IO, "%s: %s", o->path,
                       errno == EWOULDBLOCK ? "in use by another batch run (locked)"
                                            : strerror(errno));
    }
    return XC_OK;
}

typedef enum line_kind { LINE_KEEP, LINE_BAD, LINE_DROP } line_kind;

/* Classifies one complete line (without '\n'); for a kept record, *id gets its custom_id (a
 * cJSON node the caller frees through *root). */
static line_kind classify_line(const char *s, size_t n, bool drop_failed, cJSON **root,
                               const char **id) {
    *root = cJSON_ParseWithLength(s, n);
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(*root, "custom_id");
    if (!cJSON_IsObject(*root) || !cJSON_IsString(cid) || !cid->valuestring[0]) {
        return LINE_BAD;
    }
    if (drop_failed && xc_batch_output_is_failure(*root)) {
        return LINE_DROP;
    }
    *id = cid->valuestring;
    return LINE_KEEP;
}

/* Pass 1: reads every line, collects the kept ids, counts what must go. *good_end is the offset
 * just past the last newline. */
static xc_status scan(const char *path, bool drop_failed, xc_batch_ids *done,
                      xc_batch_output_recovery *rec, long long *good_end, long long *total) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return xc_errf(XC_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long long off = 0;
    xc_status st = XC_OK;
    *good_end = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        off += n;
        if (line[n - 1] != '\n') {
            rec->torn_bytes = (size_t)n;
            break;
        }
        *good_end = off;
        cJSON *root = NULL;
        const char *id = NULL;
        line_kind k = classify_line(line, (size_t)n - 1, drop_failed, &root, &id);
        if (k == LINE_BAD) {
            rec->bad_lines++;
        } else if (k == LINE_DROP) {
            rec->dropped_failed++;
        } else {
            bool added = true;
            st = xc_batch_ids_add(done, id, strlen(id), -1, &added);
            rec->records++;
            rec->duplicates += added ? 0 : 1;
        }
        cJSON_Delete(root);
        if (st != XC_OK) {
            break;
        }
    }
    if (st == XC_OK && ferror(f)) {
        st = xc_errf(XC_ERR_IO, "%s: read error", path);
    }
    free(line); /* getline's buffer comes from libc */
    fclose(f);
    *total = off;
    return st;
}

/* Pass 2 (only when lines must go): copies the kept lines to PATH.tmp, fsyncs, renames. */
static xc_status rewrite(const char *path, bool drop_failed) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        return xc_errf(XC_ERR_ARG, "%s: path too long", path);
    }
    FILE *in = fopen(path, "rb");
    FILE *out = in ? fopen(tmp, "wb") : NULL;
    if (!in || !out) {
        int e = errno;
        if (in) {
            fclose(in);
        }
        return xc_errf(XC_ERR_IO, "%s: cannot rewrite: %s", path, strerror(e));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    xc_status st = XC_OK;
    while ((n = getline(&line, &cap, in)) > 0 && line[n - 1] == '\n') {
        cJSON *root = NULL;
        const char *id = NULL;
        if (classify_line(line, (size_t)n - 1, drop_failed, &root, &id) == LINE_KEEP &&
            fwrite(line, 1, (size_t)n, out) != (size_t)n) {
            st = xc_errf(XC_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        }
        cJSON_Delete(root);
        if (st != XC_OK) {
            break;
        }
    }
    free(line);
    fclose(in);
    if (st == XC_OK && (fflush(out) != 0 || fsync(fileno(out)) != 0)) {
        st = xc_errf(XC_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    }
    fclose(out);
    if (st == XC_OK && rename(tmp, path) != 0) {
        st = xc_errf(XC_ERR_IO, "%s: rename from %s: %s", path, tmp, strerror(errno));
    }
    if (st != XC_OK) {
        unlink(tmp);
        return st;
    }
    return sync_dir(path);
}

xc_status xc_batch_output_open(const char *path, int fsync_every, bool drop_failed,
                               xc_batch_ids *done, xc_batch_output **out,
                               xc_batch_output_recovery *rec) {
    xc_batch_input_cjson_hooks();
    memset(rec, 0, sizeof *rec);
    struct stat sb;
    bool existed = stat(path, &sb) == 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        return xc_errf(XC_ERR_IO, "%s: cannot open for appending: %s", path, strerror(errno));
    }
    xc_batch_output *o = xc_calloc(1, sizeof *o);
    char *p = xc_strdup(path);
    if (!o || !p) {
        close(fd);
        xc_free(o);
        xc_free(p);
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    o->fd = fd;
    o->path = p;
    o->fsync_every = fsync_every;
    /* one writer per file: a second run on the same output would answer requests twice (the
     * lock goes away with the process, SIGKILL included) */
    xc_status st = lock(o);
    if (st == XC_OK && !existed) {
        st = sync_dir(path);
    }
    long long good_end = 0, total = 0;
    if (st == XC_OK) {
        st = scan(path, drop_failed, done, rec, &good_end, &total);
    }
    if (st == XC_OK && rec->torn_bytes) {
        /* a record that did not reach its newline never counted: cut it off */
        if (ftruncate(fd, (off_t)good_end) != 0 || fsync(fd) != 0) {
            st = xc_errf(XC_ERR_IO, "%s: cannot cut the torn last line: %s", path, strerror(errno));
        }
    }
    if (st == XC_OK && (rec->bad_lines || rec->dropped_failed)) {
        st = rewrite(path, drop_failed);
        if (st == XC_OK) {
            /* the descriptor still names the old file: reopen the new one */
            close(o->fd);
            o->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
            if (o->fd < 0) {
                st = xc_errf(XC_ERR_IO, "%s: cannot reopen: %s", path, strerror(errno));
            } else {
                st = lock(o);
            }
        }
    }
    if (st == XC_OK && fstat(o->fd, &sb) != 0) {
        st = xc_errf(XC_ERR_IO, "%s: fstat: %s", path, strerror(errno));
    }
    if (st != XC_OK) {
        if (o->fd >= 0) {
            close(o->fd);
        }
        xc_free(o->path);
        xc_free(o);
        return st;
    }
    o->size = (long long)sb.st_size;
    *out = o;
    return XC_OK;
}

xc_status xc_batch_output_sync(xc_batch_output *o) {
    if (o->unsynced == 0) {
        return XC_OK;
    }
    if (fsync(o->fd) != 0) {
        return xc_errf(XC_ERR_IO, "%s: fsync: %s", o->path, strerror(errno));
    }
    o->unsynced = 0;
    return XC_OK;
}

xc_status xc_batch_output_append(xc_batch_output *o, const char *line, size_t len) {
    if (len == 0 || line[len - 1] != '\n' || memchr(line, '\n', len - 1)) {
        return xc_errf(XC_ERR_ARG, "%s: a record must be exactly one line", o->path);
    }
    ssize_t w;
    do {
        w = write(o->fd, line, len);
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)len) {
        int e = w < 0 ? errno : ENOSPC;
        /* never leave half a record behind (a restart would cut it anyway) */
        if (w > 0) {
            (void)!ftruncate(o->fd, (off_t)o->size);
        }
        return xc_errf(XC_ERR_IO, "%s: write of a %zu-byte record failed: %s", o->path, len,
                       strerror(e));
    }
    o->size += (long long)len;
    o->unsynced++;
    if (o->fsync_every > 0 && o->unsynced >= (size_t)o->fsync_every) {
        return xc_batch_output_sync(o);
    }
    return XC_OK;
}

xc_status xc_batch_output_close(xc_batch_output *o) {
    if (!o) {
        return XC_OK;
    }
    xc_status st = xc_batch_output_sync(o);
    if (close(o->fd) != 0 && st == XC_OK) {
        st = xc_errf(XC_ERR_IO, "%s: close: %s", o->path, strerror(errno));
    }
    xc_free(o->path);
    xc_free(o);
    return st;
}
