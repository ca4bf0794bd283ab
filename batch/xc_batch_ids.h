/* A set of custom_id strings, each with an int (the input line it came from): the ids already in
 * the output files, and duplicate detection over the input. Open addressing, FNV-1a hash. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xc_status.h"

typedef struct xc_batch_ids xc_batch_ids;

/* An empty set. XC_ERR_NOMEM. */
xc_status xc_batch_ids_create(xc_batch_ids **out);

/* Frees the set and its copies of the ids. NULL is a no-op. */
void xc_batch_ids_destroy(xc_batch_ids *s);

/* Adds a copy of id (len bytes, may hold any byte) with value v. *added (optional) is false when
 * the id was already there (its value is kept). XC_ERR_NOMEM. */
xc_status xc_batch_ids_add(xc_batch_ids *s, const char *id, size_t len, int v, bool *added);

/* True when id is in the set; *v (optional) gets its value. */
bool xc_batch_ids_find(const xc_batch_ids *s, const char *id, size_t len, int *v);

/* Number of ids in the set. */
size_t xc_batch_ids_count(const xc_batch_ids *s);
