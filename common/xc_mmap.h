/* Read-only memory maps of whole files. */
#pragma once

#include <stddef.h>

#include "xc_status.h"

typedef struct xc_mmap {
    const unsigned char *data; /* (size) bytes, NULL for an empty file */
    size_t size;
} xc_mmap;

/* Maps path read-only. XC_ERR_IO (with the errno text in xc_err_last) if it cannot be opened,
 * is not a regular file or cannot be mapped. */
xc_status xc_mmap_open(const char *path, xc_mmap *out);

/* Unmaps; a zeroed struct is a no-op. */
void xc_mmap_close(xc_mmap *m);

/* Reads a whole (small) file into a new xc_malloc'd, NUL-terminated buffer. Refuses files larger
 * than max_size with XC_ERR_ARG. */
xc_status xc_file_read_all(const char *path, size_t max_size, char **out, size_t *out_len);
