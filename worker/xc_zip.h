/* Read-only ZIP reader over a memory buffer (the container of PyTorch .bin files): end of central
 * directory (ZIP64 included), central directory, local headers. Stored entries only. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

typedef struct xc_zip xc_zip;

/* One central-directory entry. name is not NUL-terminated (name_len bytes) and points into the
 * buffer given to xc_zip_open. */
typedef struct xc_zip_entry {
    const char *name;
    size_t name_len;
    uint64_t size;         /* uncompressed bytes */
    uint64_t comp_size;    /* compressed bytes (== size for stored entries) */
    uint64_t local_offset; /* offset of the local file header */
    uint16_t method;       /* 0 = stored, 8 = deflate, ... */
    uint16_t flags;        /* general purpose bit flags */
} xc_zip_entry;

/* Parses the central directory of buf (size bytes, borrowed: it must outlive the xc_zip). Every
 * offset and size is bounds-checked; entries are sorted by name for xc_zip_find.
 * XC_ERR_PROTO (not a zip, truncated, offsets out of range, duplicate names; xc_err_last says
 * which), XC_ERR_UNSUPPORTED (multi-disk archives), XC_ERR_NOMEM. */
xc_status xc_zip_open(const unsigned char *buf, size_t size, xc_zip **out);

/* Frees the entry table (the buffer is not touched). NULL is a no-op. */
void xc_zip_close(xc_zip *z);

/* Number of entries. */
size_t xc_zip_count(const xc_zip *z);

/* Entry i in name order (i < xc_zip_count). The view is valid until xc_zip_close. */
const xc_zip_entry *xc_zip_entry_at(const xc_zip *z, size_t i);

/* Looks up an entry by exact name (name_len bytes). XC_ERR_NOTFOUND naming it if absent. */
xc_status xc_zip_find(const xc_zip *z, const char *name, size_t name_len, const xc_zip_entry **out);

/* Points *out at the bytes of a stored entry inside the buffer (no copy), after checking its
 * local header. XC_ERR_UNSUPPORTED for compressed or encrypted entries, XC_ERR_PROTO for a bad
 * local header or data out of range. */
xc_status xc_zip_entry_data(const xc_zip *z, const xc_zip_entry *e, const unsigned char **out);
