/* Composition documents on disk (see xc_batch_docs.h). */
#include "xc_batch_docs.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_mem.h"

int xc_batch_docs_name_ok(const char *n) {
    if (!n || !n[0] || n[0] == '.' || strlen(n) > 200) {
        return 0;
    }
    for (const char *c = n; *c; c++) {
        if (*c == '/' || *c == '\\' || (unsigned char)*c < 0x20) {
            return 0;
        }
    }
    return 1;
}

static int b64v(int c) {
    return c >= 'A' && c <= 'Z'   ? c - 'A'
           : c >= 'a' && c <= 'z' ? c - 'a' + 26
           : c >= '0' && c <= '9' ? c - '0' + 52
           : c == '+'             ? 62
           : c == '/'             ? 63
                                  : -1;
}

/* Decodes base64 (no whitespace); -1 on a bad character. */
static long b64_decode(const char *s, uint8_t *out) {
    size_t n = strlen(s);
    long k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=') {
            break;
        }
        int v = b64v((unsigned char)s[i]);
        if (v < 0) {
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (uint8_t)(acc >> bits);
        }
    }
    return k;
}

static xc_status write_file(const char *dir, const char *name, const void *data, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return xc_errf(XC_ERR_IO, "%s: %s", path, strerror(errno));
    }
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            int e = errno;
            close(fd);
            return xc_errf(XC_ERR_IO, "%s: %s", path, strerror(e));
        }
        p += w;
        n -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        return xc_errf(XC_ERR_IO, "%s: %s", path, strerror(errno));
    }
    return XC_OK;
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) {
            continue;
        }
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

xc_status xc_batch_docs_write(const char *dir, const char *response, size_t len, int *n_images) {
    if (n_images) {
        *n_images = 0;
    }
    cJSON *o = cJSON_ParseWithLength(response, len);
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(o, "markdown");
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(o, "images");
    if (!cJSON_IsString(md) || (imgs && !cJSON_IsArray(imgs))) {
        cJSON_Delete(o);
        return xc_errf(XC_ERR_PROTO, "the composition response has no markdown");
    }
    char tmp[4096], old[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", dir, (int)getpid());
    snprintf(old, sizeof old, "%s.old.%d", dir, (int)getpid());
    rm_tree(tmp);
    if (mkdir(tmp, 0755) != 0) {
        int e = errno;
        cJSON_Delete(o);
        return xc_errf(XC_ERR_IO, "%s: %s", tmp, strerror(e));
    }
    xc_status st = write_file(tmp, "article.md", md->valuestring, strlen(md->valuestring));
    int n = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, imgs) {
        if (st != XC_OK) {
            break;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        cJSON *data = cJSON_GetObjectItemCaseSensitive(e, "data");
        if (!cJSON_IsString(name)) {
            continue; /* a slot with a caption and no image */
        }
        if (!xc_batch_docs_name_ok(name->valuestring)) {
            st = xc_errf(XC_ERR_PROTO, "image name '%.100s' is not a plain file name",
                         name->valuestring);
            break;
        }
        if (!cJSON_IsString(data)) {
            continue; /* asked without image bytes */
        }
        const char *c = strstr(data->valuestring, ";base64,");
        if (strncmp(data->valuestring, "data:", 5) || !c) {
            st = xc_errf(XC_ERR_PROTO, "image %s: not a base64 data: URL", name->valuestring);
            break;
        }
        c += 8;
        uint8_t *bytes = xc_malloc(strlen(c) / 4 * 3 + 4);
        long k = bytes ? b64_decode(c, bytes) : -2;
        if (k < 0) {
            xc_free(bytes);
            st = k == -2 ? xc_errf(XC_ERR_NOMEM, "out of memory")
                         : xc_errf(XC_ERR_PROTO, "image %s: bad base64", name->valuestring);
            break;
        }
        st = write_file(tmp, name->valuestring, bytes, (size_t)k);
        xc_free(bytes);
        n++;
        cJSON_DeleteItemFromObjectCaseSensitive(e, "data");
    }
    if (st == XC_OK) {
        char *meta = cJSON_Print(o);
        st = meta ? write_file(tmp, "composition.json", meta, strlen(meta))
                  : xc_errf(XC_ERR_NOMEM, "out of memory");
        cJSON_free(meta);
    }
    cJSON_Delete(o);
    if (st == XC_OK) {
        struct stat sb;
        bool had = stat(dir, &sb) == 0;
        if (had && rename(dir, old) != 0) {
            st = xc_errf(XC_ERR_IO, "%s: %s", dir, strerror(errno));
        } else if (rename(tmp, dir) != 0) {
            st = xc_errf(XC_ERR_IO, "%s: %s", dir, strerror(errno));
        } else if (had) {
            rm_tree(old);
        }
    }
    if (st != XC_OK) {
        rm_tree(tmp);
    } else if (n_images) {
        *n_images = n;
    }
    return st;
}
