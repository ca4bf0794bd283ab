/* mmap wrapper: checkpoints are mapped, never read into heap copies. */
#include "xc_mmap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_mem.h"

xc_status xc_mmap_open(const char *path, xc_mmap *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return xc_errf(XC_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return xc_errf(XC_ERR_IO, "%s is not a regular file", path);
    }
    xc_mmap m = {NULL, (size_t)sb.st_size};
    if (m.size > 0) {
        void *p = mmap(NULL, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return xc_errf(XC_ERR_IO, "cannot map %s: %s", path, strerror(e));
        }
        // Weights are streamed once per token: ask for 2 MB pages where the file system and
        // the kernel can back the mapping with them (THP "madvise" mode, large page-cache
        // folios), so decode crosses fewer page boundaries (hardware prefetchers stop at each
        // 4 KB page) and TLB misses. Best effort: refused or unsupported changes nothing.
        if (m.size >= ((size_t)2 << 20)) {
            (void)madvise(p, m.size, MADV_HUGEPAGE);
        }
        m.data = p;
    }
    close(fd);
    *out = m;
    return XC_OK;
}

void xc_mmap_close(xc_mmap *m) {
    if (m && m->data) {
        munmap((void *)m->data, m->size);
    }
    if (m) {
        m->data = NULL;
        m->size = 0;
    }
}

xc_status xc_file_read_all(const char *path, size_t max_size, char **out, size_t *out_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return xc_errf(XC_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    size_t cap = 4096, len = 0;
    char *buf = xc_malloc(cap);
    xc_status st = XC_OK;
    if (!buf) {
        st = XC_ERR_NOMEM;
        goto out;
    }
    for (;;) {
        if (cap - len < 2) {
            char *nb = xc_realloc(buf, cap * 2);
            if (!nb) {
                st = XC_ERR_NOMEM;
                goto out;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (len > max_size) {
            st = xc_errf(XC_ERR_ARG, "%s is larger than the limit of %zu bytes", path, max_size);
            goto out;
        }
        if (n == 0) {
            if (ferror(f)) {
                st = xc_errf(XC_ERR_IO, "cannot read %s", path);
            }
            break;
        }
    }
out:
    fclose(f);
    if (st != XC_OK) {
        xc_free(buf);
        return st;
    }
    buf[len] = '\0';
    *out = buf;
    if (out_len) {
        *out_len = len;
    }
    return XC_OK;
}
