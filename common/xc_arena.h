/* Bump allocator freed in one call: per-request scratch and decoded messages (nginx pools). */
#pragma once

#include <stddef.h>

#include "xc_status.h"

typedef struct xc_arena xc_arena;

/* Creates an arena whose blocks are at least block_size bytes. XC_ERR_NOMEM. */
xc_status xc_arena_create(size_t block_size, xc_arena **out);

/* Frees every block and the arena. NULL is a no-op. */
void xc_arena_destroy(xc_arena *a);

/* Returns n bytes aligned to 16 that live until reset/destroy, or NULL if out of memory. */
void *xc_arena_alloc(xc_arena *a, size_t n);

/* Like xc_arena_alloc but zero-filled. */
void *xc_arena_calloc(xc_arena *a, size_t count, size_t size);

/* Copies a string into the arena; NULL if out of memory. */
char *xc_arena_strndup(xc_arena *a, const char *s, size_t n);

/* Forgets all allocations but keeps the first block for reuse. */
void xc_arena_reset(xc_arena *a);

/* Like xc_arena_reset, but if the arena held several blocks whose sizes add up to at most
 * max_keep bytes, they are replaced by one block of that size: an arena reset at each step of a
 * loop settles on one block as big as its busiest step and mallocs nothing after that. */
void xc_arena_reset_keep(xc_arena *a, size_t max_keep);

/* Bytes handed out since creation or the last reset. */
size_t xc_arena_used(const xc_arena *a);
