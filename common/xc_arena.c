/* A chain of blocks; allocations bump a pointer, large ones get a block of their own. */
#include "xc_arena.h"

#include <stdint.h>
#include <string.h>

#include "xc_mem.h"

typedef struct xc_arena_block {
    struct xc_arena_block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
} xc_arena_block;

struct xc_arena {
    xc_arena_block *head; /* current block first */
    size_t block_size;
    size_t total;
};

#define ARENA_HDR ((sizeof(xc_arena_block) + 15) & ~(size_t)15)

static xc_arena_block *block_new(size_t size) {
    if (size > SIZE_MAX - ARENA_HDR) {
        return NULL;
    }
    xc_arena_block *b = xc_malloc(ARENA_HDR + size);
    if (b) {
        b->next = NULL;
        b->size = size;
        b->used = 0;
    }
    return b;
}

xc_status xc_arena_create(size_t block_size, xc_arena **out) {
    xc_arena *a = xc_calloc(1, sizeof *a);
    if (!a) {
        return XC_ERR_NOMEM;
    }
    a->block_size = block_size < 256 ? 256 : block_size;
    *out = a;
    return XC_OK;
}

void xc_arena_destroy(xc_arena *a) {
    if (!a) {
        return;
    }
    xc_arena_block *b = a->head;
    while (b) {
        xc_arena_block *next = b->next;
        xc_free(b);
        b = next;
    }
    xc_free(a);
}

void *xc_arena_alloc(xc_arena *a, size_t n) {
    if (n > SIZE_MAX - 15) {
        return NULL;
    }
    n = (n + 15) & ~(size_t)15;
    if (n == 0) {
        n = 16;
    }
    xc_arena_block *b = a->head;
    if (!b || b->size - b->used < n) {
        b = block_new(n > a->block_size ? n : a->block_size);
        if (!b) {
            return NULL;
        }
        b->next = a->head;
        a->head = b;
    }
    void *p = (char *)b + ARENA_HDR + b->used;
    b->used += n;
    a->total += n;
    return p;
}

void *xc_arena_calloc(xc_arena *a, size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) {
        return NULL;
    }
    void *p = xc_arena_alloc(a, count * size);
    if (p) {
        memset(p, 0, count * size);
    }
    return p;
}

char *xc_arena_strndup(xc_arena *a, const char *s, size_t n) {
    char *d = xc_arena_alloc(a, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

void xc_arena_reset(xc_arena *a) {
    xc_arena_block *keep = NULL;
    xc_arena_block *b = a->head;
    while (b) {
        xc_arena_block *next = b->next;
        if (!next) {
            keep = b; /* the oldest block */
        } else {
            xc_free(b);
        }
        b = next;
    }
    if (keep) {
        keep->used = 0;
    }
    a->head = keep;
    a->total = 0;
}

void xc_arena_reset_keep(xc_arena *a, size_t max_keep) {
    size_t cap = 0;
    int n = 0;
    for (xc_arena_block *b = a->head; b; b = b->next) {
        cap += b->size;
        n++;
    }
    xc_arena_reset(a);
    if (n > 1 && cap <= max_keep) {
        xc_arena_block *one = block_new(cap); /* without memory: the oldest block stays */
        if (one) {
            xc_free(a->head);
            a->head = one;
        }
    }
}

size_t xc_arena_used(const xc_arena *a) {
    return a->total;
}
