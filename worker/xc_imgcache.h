/* The vision worker's image embedding cache: embeddings of recently encoded images, keyed by the
 * SHA-256 of the image's preprocessed pixels (the exact f32 bytes the vision tower reads), bounded
 * in bytes, least recently used evicted first. A re-sent image (every turn of a chat re-sends the
 * history's images) is copied from here instead of encoded again. Single-threaded. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

typedef struct xc_imgcache xc_imgcache;

typedef struct xc_imgcache_stats {
    uint64_t hits, misses, evictions;
    size_t bytes;   /* embedding bytes held */
    size_t entries; /* images held */
} xc_imgcache_stats;

/* A cache holding at most max_bytes of embeddings (0: stores nothing, every lookup misses). */
xc_status xc_imgcache_create(size_t max_bytes, xc_imgcache **out);

/* NULL is a no-op. */
void xc_imgcache_destroy(xc_imgcache *c);

/* The key of an image: SHA-256 of its n_bytes of pixels. */
void xc_imgcache_key(const void *pixels, size_t n_bytes, uint8_t key[32]);

/* Copies the n floats stored under key into out and makes the entry the most recently used:
 * true. false (a miss) if the key is absent or holds another number of floats. */
bool xc_imgcache_get(xc_imgcache *c, const uint8_t key[32], float *out, size_t n);

/* Whether n floats are stored under key (what xc_imgcache_get would find); counts nothing and
 * leaves the order of use as it is. */
bool xc_imgcache_has(const xc_imgcache *c, const uint8_t key[32], size_t n);

/* Stores a copy of emb (n floats) under key (replacing an entry with that key), evicting the least
 * recently used entries until it fits. An entry larger than the whole bound is not stored (XC_OK).
 * XC_ERR_NOMEM if the copy cannot be allocated (the cache stays as it was, less evictions). */
xc_status xc_imgcache_put(xc_imgcache *c, const uint8_t key[32], const float *emb, size_t n);

void xc_imgcache_get_stats(const xc_imgcache *c, xc_imgcache_stats *out);
