/* Allocation hooks (redis zmalloc style) and small memory helpers. */
#include "xc_mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static xc_mem_hooks hooks = {malloc, calloc, realloc, free};

void xc_mem_set_hooks(const xc_mem_hooks *h) {
    if (h) {
        hooks = *h;
    } else {
        hooks = (xc_mem_hooks){malloc, calloc, realloc, free};
    }
}

void *xc_malloc(size_t n) {
    return n ? hooks.malloc_fn(n) : NULL;
}

void *xc_calloc(size_t count, size_t size) {
    return (count && size) ? hooks.calloc_fn(count, size) : NULL;
}

void *xc_realloc(void *p, size_t n) {
    return hooks.realloc_fn(p, n);
}

void xc_free(void *p) {
    if (p) {
        hooks.free_fn(p);
    }
}

char *xc_strndup(const char *s, size_t n) {
    char *d = hooks.malloc_fn(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

char *xc_strdup(const char *s) {
    return xc_strndup(s, strlen(s));
}

void *xc_aligned_alloc(size_t n) {
    void *p = NULL;
    if (n == 0) {
        n = 64;
    }
    if (posix_memalign(&p, 64, n) != 0) {
        return NULL;
    }
    return p;
}

void xc_aligned_free(void *p) {
    free(p);
}

int xc_mul_overflow(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) {
        return -1;
    }
    *out = a * b;
    return 0;
}
