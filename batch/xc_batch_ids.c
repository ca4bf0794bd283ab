/* A string set with one int per entry (open addressing with linear probing, FNV-1a). */
#include "xc_batch_ids.h"

#include <stdint.h>
#include <string.h>

#include "xc_mem.h"

typedef struct slot {
    char *id; /* NULL = empty */
    size_t len;
    uint64_t hash;
    int v;
} slot;

struct xc_batch_ids {
    slot *slots; /* (cap) cap is a power of two */
    size_t cap, n;
};

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

xc_status xc_batch_ids_create(xc_batch_ids **out) {
    xc_batch_ids *s = xc_calloc(1, sizeof *s);
    if (!s) {
        return xc_errf(XC_ERR_NOMEM, "id set: out of memory");
    }
    s->cap = 64;
    s->slots = xc_calloc(s->cap, sizeof *s->slots);
    if (!s->slots) {
        xc_free(s);
        return xc_errf(XC_ERR_NOMEM, "id set: out of memory");
    }
    *out = s;
    return XC_OK;
}

void xc_batch_ids_destroy(xc_batch_ids *s) {
    if (!s) {
        return;
    }
    for (size_t i = 0; i < s->cap; i++) {
        xc_free(s->slots[i].id);
    }
    xc_free(s->slots);
    xc_free(s);
}

/* The slot holding id, or the empty slot where it would go. */
static slot *probe(slot *slots, size_t cap, const char *id, size_t len, uint64_t h) {
    size_t i = (size_t)h & (cap - 1);
    while (slots[i].id) {
        if (slots[i].hash == h && slots[i].len == len && !memcmp(slots[i].id, id, len)) {
            return &slots[i];
        }
        i = (i + 1) & (cap - 1);
    }
    return &slots[i];
}

static xc_status grow(xc_batch_ids *s) {
    size_t cap = s->cap * 2;
    slot *ns = xc_calloc(cap, sizeof *ns);
    if (!ns) {
        return xc_errf(XC_ERR_NOMEM, "id set: out of memory (%zu ids)", s->n);
    }
    for (size_t i = 0; i < s->cap; i++) {
        if (s->slots[i].id) {
            *probe(ns, cap, s->slots[i].id, s->slots[i].len, s->slots[i].hash) = s->slots[i];
        }
    }
    xc_free(s->slots);
    s->slots = ns;
    s->cap = cap;
    return XC_OK;
}

xc_status xc_batch_ids_add(xc_batch_ids *s, const char *id, size_t len, int v, bool *added) {
    if ((s->n + 1) * 4 > s->cap * 3) { /* load factor 3/4 */
        XC_TRY(grow(s));
    }
    uint64_t h = fnv1a(id, len);
    slot *sl = probe(s->slots, s->cap, id, len, h);
    if (sl->id) {
        if (added) {
            *added = false;
        }
        return XC_OK;
    }
    char *copy = xc_malloc(len + 1);
    if (!copy) {
        return xc_errf(XC_ERR_NOMEM, "id set: out of memory");
    }
    memcpy(copy, id, len);
    copy[len] = 0;
    *sl = (slot){copy, len, h, v};
    s->n++;
    if (added) {
        *added = true;
    }
    return XC_OK;
}

bool xc_batch_ids_find(const xc_batch_ids *s, const char *id, size_t len, int *v) {
    const slot *sl = probe(s->slots, s->cap, id, len, fnv1a(id, len));
    if (!sl->id) {
        return false;
    }
    if (v) {
        *v = sl->v;
    }
    return true;
}

size_t xc_batch_ids_count(const xc_batch_ids *s) {
    return s->n;
}
