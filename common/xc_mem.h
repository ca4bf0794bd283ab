/* Heap hooks: every allocation in xcpipe goes through these so tests can check for leaks. */
#pragma once

#include <stddef.h>

typedef struct xc_mem_hooks {
    void *(*malloc_fn)(size_t n);
    void *(*calloc_fn)(size_t count, size_t size);
    void *(*realloc_fn)(void *p, size_t n);
    void (*free_fn)(void *p);
} xc_mem_hooks;

/* Installs allocation hooks (NULL restores libc). Tests point them at cmocka's test_malloc. */
void xc_mem_set_hooks(const xc_mem_hooks *hooks);

/* malloc/calloc/realloc/free through the hooks. Return NULL on failure (or n == 0 for malloc). */
void *xc_malloc(size_t n);
void *xc_calloc(size_t count, size_t size);
void *xc_realloc(void *p, size_t n);
void xc_free(void *p);

/* Copies a NUL-terminated string (or the first n bytes) into a new xc_malloc'd string. */
char *xc_strdup(const char *s);
char *xc_strndup(const char *s, size_t n);

/* 64-byte aligned allocation for SIMD buffers, always from libc (not hooked); free with
 * xc_aligned_free. Returns NULL on failure. */
void *xc_aligned_alloc(size_t n);
void xc_aligned_free(void *p);

/* Overflow-checked a*b; returns 0 and sets *out on success, -1 on overflow. */
int xc_mul_overflow(size_t a, size_t b, size_t *out);
