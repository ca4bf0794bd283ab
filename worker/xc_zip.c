/* ZIP reader for PyTorch checkpoints: finds the (ZIP64) end of central directory, reads the central
 * directory into a name-sorted table and hands out stored entries as pointers into the buffer. */
#include "xc_zip.h"

#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"

#define SIG_LOCAL    0x04034b50u
#define SIG_CENTRAL  0x02014b50u
#define SIG_EOCD     0x06054b50u
#define SIG_EOCD64   0x06064b50u
#define SIG_LOCATOR  0x07064b50u
#define EOCD_SIZE    22
#define LOCATOR_SIZE 20
#define EOCD64_SIZE  56
#define CENTRAL_SIZE 46
#define LOCAL_SIZE   30

struct xc_zip {
    const unsigned char *buf; /* (size) bytes, borrowed */
    size_t size;
    xc_zip_entry *entries; /* (n) sorted by name */
    size_t n;
};

static uint16_t rd16(const unsigned char *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const unsigned char *p) {
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

/* 1 if [off, off + len) lies inside a buffer of size bytes (overflow-safe). */
static int in_range(uint64_t off, uint64_t len, size_t size) {
    return off <= size && len <= size - off;
}

/* ---- end of central directory ---- */

typedef struct cd_info {
    uint64_t n_entries;
    uint64_t cd_offset;
    uint64_t cd_size;
    uint64_t cd_end; /* where the central directory must end (start of the EOCD64 or EOCD) */
} cd_info;

/* Scans backwards for the EOCD record: it sits in the last 22 + 65535 bytes (comment limit). */
static xc_status find_eocd(const unsigned char *buf, size_t size, size_t *pos) {
    if (size < EOCD_SIZE) {
        return xc_errf(XC_ERR_PROTO,
                       "zip: file too short (%zu bytes) for an end of central "
                       "directory record",
                       size);
    }
    size_t lowest = size - EOCD_SIZE > 65535 ? size - EOCD_SIZE - 65535 : 0;
    for (size_t p = size - EOCD_SIZE + 1; p-- > lowest;) {
        if (rd32(buf + p) == SIG_EOCD && rd16(buf + p + 20) == size - p - EOCD_SIZE) {
            *pos = p;
            return XC_OK;
        }
    }
    return xc_errf(XC_ERR_PROTO,
                   "zip: no end of central directory record (not a zip file, or truncated)");
}

static xc_status read_cd_info(const unsigned char *buf, size_t size, cd_info *ci) {
    size_t eocd = 0;
    XC_TRY(find_eocd(buf, size, &eocd));
    const unsigned char *e = buf + eocd;
    if (rd16(e + 4) != 0 || rd16(e + 6) != 0 || rd16(e + 8) != rd16(e + 10)) {
        return xc_errf(XC_ERR_UNSUPPORTED, "zip: multi-disk archives are not supported");
    }
    ci->n_entries = rd16(e + 10);
    ci->cd_size = rd32(e + 12);
    ci->cd_offset = rd32(e + 16);
    ci->cd_end = eocd;
    // torch writes the ZIP64 records for every archive; when the locator is there, the ZIP64
    // record is authoritative (the classic fields may be saturated at 0xffff / 0xffffffff).
    if (eocd >= LOCATOR_SIZE && rd32(buf + eocd - LOCATOR_SIZE) == SIG_LOCATOR) {
        const unsigned char *l = buf + eocd - LOCATOR_SIZE;
        uint64_t off64 = rd64(l + 8);
        if (rd32(l + 4) != 0 || rd32(l + 16) > 1) {
            return xc_errf(XC_ERR_UNSUPPORTED, "zip: multi-disk ZIP64 archives are not supported");
        }
        if (!in_range(off64, EOCD64_SIZE, eocd - LOCATOR_SIZE)) {
            return xc_errf(XC_ERR_PROTO,
                           "zip: ZIP64 end of central directory offset %llu is out of range",
                           (unsigned long long)off64);
        }
        const unsigned char *z = buf + off64;
        if (rd32(z) != SIG_EOCD64) {
            return xc_errf(XC_ERR_PROTO,
                           "zip: bad ZIP64 end of central directory signature at "
                           "offset %llu",
                           (unsigned long long)off64);
        }
        if (rd32(z + 16) != 0 || rd32(z + 20) != 0 || rd64(z + 24) != rd64(z + 32)) {
            return xc_errf(XC_ERR_UNSUPPORTED, "zip: multi-disk ZIP64 archives are not supported");
        }
        ci->n_entries = rd64(z + 32);
        ci->cd_size = rd64(z + 40);
        ci->cd_offset = rd64(z + 48);
        ci->cd_end = off64;
    }
    if (!in_range(ci->cd_offset, ci->cd_size, ci->cd_end)) {
        return xc_errf(XC_ERR_PROTO,
                       "zip: central directory [%llu, +%llu) is out of range (file has %zu bytes)",
                       (unsigned long long)ci->cd_offset, (unsigned long long)ci->cd_size, size);
    }
    if (ci->n_entries > ci->cd_size / CENTRAL_SIZE) {
        return xc_errf(XC_ERR_PROTO,
                       "zip: %llu entries cannot fit in a central directory of %llu bytes",
                       (unsigned long long)ci->n_entries, (unsigned long long)ci->cd_size);
    }
    return XC_OK;
}

/* ---- central directory ---- */

/* Replaces saturated 32-bit fields by the values of the ZIP64 extended information extra field
 * (tag 1), which holds them in a fixed order, each only when the classic field is saturated. */
static xc_status apply_zip64_extra(const unsigned char *x, size_t xlen, xc_zip_entry *e,
                                   int need_size, int need_comp, int need_off) {
    size_t p = 0;
    while (xlen - p >= 4) {
        uint16_t tag = rd16(x + p);
        uint16_t len = rd16(x + p + 2);
        if (len > xlen - p - 4) {
            return xc_errf(XC_ERR_PROTO, "zip: extra field of entry '%.*s' overruns its header",
                           (int)e->name_len, e->name);
        }
        if (tag == 1) {
            const unsigned char *f = x + p + 4;
            size_t need = 8u * (size_t)(need_size + need_comp + need_off);
            if (len < need) {
                return xc_errf(XC_ERR_PROTO, "zip: ZIP64 extra field of entry '%.*s' is too short",
                               (int)e->name_len, e->name);
            }
            if (need_size) {
                e->size = rd64(f);
                f += 8;
            }
            if (need_comp) {
                e->comp_size = rd64(f);
                f += 8;
            }
            if (need_off) {
                e->local_offset = rd64(f);
            }
            return XC_OK;
        }
        p += 4u + len;
    }
    return xc_errf(XC_ERR_PROTO, "zip: entry '%.*s' has saturated sizes but no ZIP64 extra field",
                   (int)e->name_len, e->name);
}

static int entry_cmp(const void *a, const void *b) {
    const xc_zip_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c != 0) {
        return c;
    }
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static xc_status read_central(xc_zip *z, const cd_info *ci) {
    const unsigned char *p = z->buf + ci->cd_offset;
    const unsigned char *end = p + ci->cd_size;
    for (size_t i = 0; i < z->n; i++) {
        if ((size_t)(end - p) < CENTRAL_SIZE || rd32(p) != SIG_CENTRAL) {
            return xc_errf(XC_ERR_PROTO, "zip: bad central directory header %zu at offset %zu", i,
                           (size_t)(p - z->buf));
        }
        size_t nlen = rd16(p + 28), xlen = rd16(p + 30), clen = rd16(p + 32);
        if (nlen + xlen + clen > (size_t)(end - p) - CENTRAL_SIZE) {
            return xc_errf(XC_ERR_PROTO, "zip: central directory header %zu overruns the directory",
                           i);
        }
        xc_zip_entry *e = &z->entries[i];
        e->flags = rd16(p + 8);
        e->method = rd16(p + 10);
        e->comp_size = rd32(p + 20);
        e->size = rd32(p + 24);
        e->local_offset = rd32(p + 42);
        e->name = (const char *)p + CENTRAL_SIZE;
        e->name_len = nlen;
        if (rd16(p + 34) != 0 && rd16(p + 34) != 0xffff) {
            return xc_errf(XC_ERR_UNSUPPORTED, "zip: entry '%.*s' is on another disk", (int)nlen,
                           e->name);
        }
        int ns = e->size == 0xffffffffu, nc = e->comp_size == 0xffffffffu;
        int no = e->local_offset == 0xffffffffu;
        if (ns || nc || no) {
            XC_TRY(apply_zip64_extra(p + CENTRAL_SIZE + nlen, xlen, e, ns, nc, no));
        }
        if (!in_range(e->local_offset, LOCAL_SIZE, ci->cd_offset)) {
            return xc_errf(XC_ERR_PROTO,
                           "zip: local header of entry '%.*s' at %llu is out of range", (int)nlen,
                           e->name, (unsigned long long)e->local_offset);
        }
        p += CENTRAL_SIZE + nlen + xlen + clen;
    }
    if (z->n > 1) {
        qsort(z->entries, z->n, sizeof *z->entries, entry_cmp);
    }
    for (size_t i = 1; i < z->n; i++) {
        if (entry_cmp(&z->entries[i - 1], &z->entries[i]) == 0) {
            return xc_errf(XC_ERR_PROTO, "zip: duplicate entry '%.*s'", (int)z->entries[i].name_len,
                           z->entries[i].name);
        }
    }
    return XC_OK;
}

/* ---- API ---- */

xc_status xc_zip_open(const unsigned char *buf, size_t size, xc_zip **out) {
    cd_info ci = {0};
    XC_TRY(read_cd_info(buf, size, &ci));
    xc_zip *z = xc_calloc(1, sizeof *z);
    if (!z) {
        return XC_ERR_NOMEM;
    }
    z->buf = buf;
    z->size = size;
    z->n = (size_t)ci.n_entries;
    xc_status st = XC_OK;
    if (z->n > 0) {
        z->entries = xc_calloc(z->n, sizeof *z->entries);
        if (!z->entries) {
            st = XC_ERR_NOMEM;
            goto fail;
        }
    }
    XC_TRY_GOTO(read_central(z, &ci), st, fail);
    *out = z;
    return XC_OK;
fail:
    xc_zip_close(z);
    return st;
}

void xc_zip_close(xc_zip *z) {
    if (!z) {
        return;
    }
    xc_free(z->entries);
    xc_free(z);
}

size_t xc_zip_count(const xc_zip *z) {
    return z->n;
}

const xc_zip_entry *xc_zip_entry_at(const xc_zip *z, size_t i) {
    return i < z->n ? &z->entries[i] : NULL;
}

xc_status xc_zip_find(const xc_zip *z, const char *name, size_t name_len,
                      const xc_zip_entry **out) {
    xc_zip_entry key = {.name = name, .name_len = name_len};
    const xc_zip_entry *e = z->n ? bsearch(&key, z->entries, z->n, sizeof key, entry_cmp) : NULL;
    if (!e) {
        return xc_errf(XC_ERR_NOTFOUND, "zip: no entry '%.*s'", (int)name_len, name);
    }
    *out = e;
    return XC_OK;
}

xc_status xc_zip_entry_data(const xc_zip *z, const xc_zip_entry *e, const unsigned char **out) {
    int nl = (int)e->name_len;
    if (e->flags & 1u) {
        return xc_errf(XC_ERR_UNSUPPORTED, "zip: entry '%.*s' is encrypted", nl, e->name);
    }
    if (e->method != 0) {
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "zip: entry '%.*s' is compressed (method %u); only stored entries are "
                       "supported (torch.save never compresses)",
                       nl, e->name, (unsigned)e->method);
    }
    if (e->comp_size != e->size) {
        return xc_errf(XC_ERR_PROTO, "zip: stored entry '%.*s' has size %llu but %llu stored bytes",
                       nl, e->name, (unsigned long long)e->size, (unsigned long long)e->comp_size);
    }
    // Offsets were checked against the central directory start in read_central.
    const unsigned char *l = z->buf + e->local_offset;
    if (rd32(l) != SIG_LOCAL) {
        return xc_errf(XC_ERR_PROTO, "zip: bad local header signature for entry '%.*s' at %llu", nl,
                       e->name, (unsigned long long)e->local_offset);
    }
    uint64_t data_off = e->local_offset + LOCAL_SIZE + rd16(l + 26) + rd16(l + 28);
    if (!in_range(data_off, e->size, z->size)) {
        return xc_errf(XC_ERR_PROTO,
                       "zip: data of entry '%.*s' [%llu, +%llu) is out of range (file has %zu "
                       "bytes; truncated?)",
                       nl, e->name, (unsigned long long)data_off, (unsigned long long)e->size,
                       z->size);
    }
    *out = z->buf + data_off;
    return XC_OK;
}
