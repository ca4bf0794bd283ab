/* A hash map from 64-bit ids to non-NULL pointers: open addressing with linear probing and
 * backward-shift deletion (no tombstones), at most half full. Lookups and deletions never
 * allocate; xc_idmap_put may grow the table (reserve first where a put must not fail). Used for
 * the coordinator's requests by id (issue 13.6: a scheduling step at thousands of live sequences
 * must not scan them). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

typedef struct xc_idmap {
    uint64_t *keys;
    void **vals; /* NULL = empty slot */
    size_t cap;  /* 0 or a power of two */
    size_t n;
} xc_idmap;

/* An empty map (no memory until the first put). */
void xc_idmap_init(xc_idmap *m);
void xc_idmap_fini(xc_idmap *m);

/* The value of key, or NULL. */
void *xc_idmap_get(const xc_idmap *m, uint64_t key);

/* Sets key to val (val != NULL, XC_ERR_ARG otherwise), replacing any value; XC_ERR_NOMEM leaves
 * the map as it was. */
xc_status xc_idmap_put(xc_idmap *m, uint64_t key, void *val);

/* Makes room for n entries in all, so that puts up to that count do not allocate. */
xc_status xc_idmap_reserve(xc_idmap *m, size_t n);

/* Removes key; returns its value, or NULL if absent. Never allocates. */
void *xc_idmap_del(xc_idmap *m, uint64_t key);

static inline size_t xc_idmap_count(const xc_idmap *m) {
    return m->n;
}
