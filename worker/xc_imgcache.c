/* Image embedding cache: a doubly linked list in recency order (head = most recent); lookups scan
 * it (a bound of a few GiB holds tens to hundreds of images, each lookup costs far less than the
 * hash of the pixels). */
#include "xc_imgcache.h"

#include <string.h>

#include "xc_mem.h"
#include "xc_sha256.h"

typedef struct entry {
    uint8_t key[32];
    float *emb;
    size_t n;
    struct entry *prev, *next;
} entry;

struct xc_imgcache {
    size_t max_bytes;
    entry *head, *tail;
    xc_imgcache_stats st;
};

xc_status xc_imgcache_create(size_t max_bytes, xc_imgcache **out) {
    xc_imgcache *c = xc_calloc(1, sizeof *c);
    if (!c) {
        return XC_ERR_NOMEM;
    }
    c->max_bytes = max_bytes;
    *out = c;
    return XC_OK;
}

static void unlink_entry(xc_imgcache *c, entry *e) {
    if (e->prev) {
        e->prev->next = e->next;
    } else {
        c->head = e->next;
    }
    if (e->next) {
        e->next->prev = e->prev;
    } else {
        c->tail = e->prev;
    }
    e->prev = e->next = NULL;
}

static void push_front(xc_imgcache *c, entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) {
        c->head->prev = e;
    }
    c->head = e;
    if (!c->tail) {
        c->tail = e;
    }
}

static void drop(xc_imgcache *c, entry *e) {
    unlink_entry(c, e);
    c->st.bytes -= e->n * sizeof(float);
    c->st.entries--;
    xc_free(e->emb);
    xc_free(e);
}

void xc_imgcache_destroy(xc_imgcache *c) {
    if (!c) {
        return;
    }
    while (c->head) {
        drop(c, c->head);
    }
    xc_free(c);
}

void xc_imgcache_key(const void *pixels, size_t n_bytes, uint8_t key[32]) {
    xc_sha256_sum(pixels, n_bytes, key);
}

static entry *find(xc_imgcache *c, const uint8_t key[32]) {
    for (entry *e = c->head; e; e = e->next) {
        if (!memcmp(e->key, key, 32)) {
            return e;
        }
    }
    return NULL;
}

bool xc_imgcache_has(const xc_imgcache *c, const uint8_t key[32], size_t n) {
    const entry *e = find((xc_imgcache *)c, key);
    return e && e->n == n;
}

bool xc_imgcache_get(xc_imgcache *c, const uint8_t key[32], float *out, size_t n) {
    entry *e = find(c, key);
    if (!e || e->n != n) {
        c->st.misses++;
        return false;
    }
    memcpy(out, e->emb, n * sizeof(float));
    unlink_entry(c, e);
    push_front(c, e);
    c->st.hits++;
    return true;
}

xc_status xc_imgcache_put(xc_imgcache *c, const uint8_t key[32], const float *emb, size_t n) {
    size_t bytes = n * sizeof(float);
    if (bytes == 0 || bytes > c->max_bytes || n > SIZE_MAX / sizeof(float)) {
        return XC_OK; /* never fits (or the cache is off) */
    }
    entry *old = find(c, key);
    if (old) {
        drop(c, old);
    }
    while (c->st.bytes + bytes > c->max_bytes && c->tail) {
        drop(c, c->tail);
        c->st.evictions++;
    }
    entry *e = xc_calloc(1, sizeof *e);
    float *copy = xc_malloc(bytes);
    if (!e || !copy) {
        xc_free(e);
        xc_free(copy);
        return xc_errf(XC_ERR_NOMEM, "image cache: cannot hold %zu bytes", bytes);
    }
    memcpy(e->key, key, 32);
    memcpy(copy, emb, bytes);
    e->emb = copy;
    e->n = n;
    push_front(c, e);
    c->st.bytes += bytes;
    c->st.entries++;
    return XC_OK;
}

void xc_imgcache_get_stats(const xc_imgcache *c, xc_imgcache_stats *out) {
    *out = c->st;
}
