/* Open addressing, linear probing, backward-shift deletion; see xc_idmap.h. */
#include "xc_idmap.h"

#include <string.h>

#include "xc_mem.h"

static size_t slot_of(uint64_t key, size_t cap) {
    /* splitmix64's finalizer: ids that differ in low or high bits spread over the table */
    key ^= key >> 30;
    key *= 0xbf58476d1ce4e5b9ull;
    key ^= key >> 27;
    key *= 0x94d049bb133111ebull;
    key ^= key >> 31;
    return (size_t)key & (cap - 1);
}

void xc_idmap_init(xc_idmap *m) {
    memset(m, 0, sizeof *m);
}

void xc_idmap_fini(xc_idmap *m) {
    if (!m) {
        return;
    }
    xc_free(m->keys);
    xc_free(m->vals);
    memset(m, 0, sizeof *m);
}

void *xc_idmap_get(const xc_idmap *m, uint64_t key) {
    if (m->n == 0) {
        return NULL;
    }
    for (size_t i = slot_of(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (!m->vals[i]) {
            return NULL;
        }
        if (m->keys[i] == key) {
            return m->vals[i];
        }
    }
}

/* Inserts into a table known to have room and not to hold key. */
static void insert_new(uint64_t *keys, void **vals, size_t cap, uint64_t key, void *val) {
    size_t i = slot_of(key, cap);
    while (vals[i]) {
        i = (i + 1) & (cap - 1);
    }
    keys[i] = key;
    vals[i] = val;
}

xc_status xc_idmap_reserve(xc_idmap *m, size_t n) {
    size_t cap = m->cap ? m->cap : 16;
    while (cap < 2 * n) { /* at most half full */
        if (cap > SIZE_MAX / 4) {
            return xc_errf(XC_ERR_NOMEM, "id map of %zu entries", n);
        }
        cap *= 2;
    }
    if (cap == m->cap) {
        return XC_OK;
    }
    uint64_t *keys = xc_malloc(cap * sizeof *keys);
    void **vals = xc_calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        xc_free(keys);
        xc_free(vals);
        return xc_errf(XC_ERR_NOMEM, "id map of %zu entries", n);
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (m->vals[i]) {
            insert_new(keys, vals, cap, m->keys[i], m->vals[i]);
        }
    }
    xc_free(m->keys);
    xc_free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return XC_OK;
}

xc_status xc_idmap_put(xc_idmap *m, uint64_t key, void *val) {
    if (!val) {
        return xc_errf(XC_ERR_ARG, "id map: NULL value");
    }
    if (m->n > 0) {
        for (size_t i = slot_of(key, m->cap); m->vals[i]; i = (i + 1) & (m->cap - 1)) {
            if (m->keys[i] == key) {
                m->vals[i] = val;
                return XC_OK;
            }
        }
    }
    XC_TRY(xc_idmap_reserve(m, m->n + 1));
    insert_new(m->keys, m->vals, m->cap, key, val);
    m->n++;
    return XC_OK;
}

void *xc_idmap_del(xc_idmap *m, uint64_t key) {
    if (m->n == 0) {
        return NULL;
    }
    size_t mask = m->cap - 1, i = slot_of(key, m->cap);
    while (m->vals[i] && m->keys[i] != key) {
        i = (i + 1) & mask;
    }
    void *val = m->vals[i];
    if (!val) {
        return NULL;
    }
    /* backward shift: move later entries of the probe run into the hole when their home slot
     * does not lie (cyclically) after the hole */
    for (size_t j = (i + 1) & mask; m->vals[j]; j = (j + 1) & mask) {
        size_t home = slot_of(m->keys[j], m->cap);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->vals[i] = NULL;
    m->n--;
    return val;
}
