/* Paged KV storage and its block free list. */
#include "xc_kv.h"

#include <stdbool.h>
#include <string.h>

#include "xc_mem.h"

struct xc_kv_cache {
    xc_backend *be;
    int n_layers, n_blocks, block_size, width;
    xc_dtype dtype;
    xc_buf *k; /* (n_layers) */
    xc_buf *v;
};

size_t xc_kv_bytes(int n_layers, int n_blocks, int block_size, int width, xc_dtype dtype) {
    return 2u * (size_t)n_layers * (size_t)n_blocks * (size_t)block_size * (size_t)width *
           xc_dtype_size(dtype);
}

xc_status xc_kv_dtype_parse(const char *s, xc_dtype *out) {
    if (s && !strcmp(s, "bf16")) {
        *out = XC_DTYPE_BF16;
    } else if (s && !strcmp(s, "f32")) {
        *out = XC_DTYPE_F32;
    } else {
        return xc_errf(XC_ERR_ARG, "kv dtype '%s' is not bf16 or f32", s ? s : "(null)");
    }
    return XC_OK;
}

xc_status xc_kv_create(xc_backend *be, int n_layers, int n_blocks, int block_size, int width,
                       xc_dtype dtype, xc_kv_cache **out) {
    if (dtype != XC_DTYPE_F32 && dtype != XC_DTYPE_BF16) {
        return xc_errf(XC_ERR_ARG, "kv cache: dtype %s (f32 or bf16)", xc_dtype_name(dtype));
    }
    if (n_layers < 0 || n_blocks <= 0 || block_size <= 0 || width <= 0) {
        return xc_errf(XC_ERR_ARG,
                       "kv cache: bad dimensions (%d layers, %d blocks of %d, width %d)", n_layers,
                       n_blocks, block_size, width);
    }
    xc_status st = XC_OK;
    xc_kv_cache *kv = xc_calloc(1, sizeof *kv);
    if (!kv) {
        return XC_ERR_NOMEM;
    }
    kv->be = be;
    kv->n_layers = n_layers;
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->width = width;
    kv->dtype = dtype;
    size_t bytes = (size_t)n_blocks * (size_t)block_size * (size_t)width * xc_dtype_size(dtype);
    if (n_layers > 0) {
        kv->k = xc_calloc((size_t)n_layers, sizeof(xc_buf));
        kv->v = xc_calloc((size_t)n_layers, sizeof(xc_buf));
        if (!kv->k || !kv->v) {
            st = XC_ERR_NOMEM;
            goto fail;
        }
    }
    for (int l = 0; l < n_layers; l++) {
        st = xc_backend_buf_alloc(be, bytes, &kv->k[l]);
        if (st == XC_OK) {
            st = xc_backend_buf_alloc(be, bytes, &kv->v[l]);
        }
        if (st != XC_OK) {
            xc_errf(st, "kv cache: cannot allocate %zu bytes (%d layers x 2 x %zu)",
                    xc_kv_bytes(n_layers, n_blocks, block_size, width, dtype), n_layers, bytes);
            goto fail;
        }
    }
    *out = kv;
    return XC_OK;
fail:
    xc_kv_destroy(kv);
    return st;
}

void xc_kv_destroy(xc_kv_cache *kv) {
    if (!kv) {
        return;
    }
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k) {
            xc_backend_buf_free(kv->be, &kv->k[l]);
        }
        if (kv->v) {
            xc_backend_buf_free(kv->be, &kv->v[l]);
        }
    }
    xc_free(kv->k);
    xc_free(kv->v);
    xc_free(kv);
}

void *xc_kv_k(const xc_kv_cache *kv, int layer) {
    return kv->k[layer].data;
}

void *xc_kv_v(const xc_kv_cache *kv, int layer) {
    return kv->v[layer].data;
}

xc_dtype xc_kv_dtype(const xc_kv_cache *kv) {
    return kv->dtype;
}

xc_status xc_kv_copy_block(xc_kv_cache *kv, int src, int dst) {
    if (src < 0 || dst < 0 || src >= kv->n_blocks || dst >= kv->n_blocks || src == dst) {
        return xc_errf(XC_ERR_ARG, "kv cache: cannot copy block %d to %d (%d blocks)", src, dst,
                       kv->n_blocks);
    }
    /* a block is block_size rows of width elements: contiguous, copied as floats */
    size_t bytes = (size_t)kv->block_size * (size_t)kv->width * xc_dtype_size(kv->dtype);
    if (bytes % sizeof(float) != 0) {
        return xc_errf(XC_ERR_ARG, "kv cache: a block of %zu bytes is not whole floats", bytes);
    }
    int n = (int)(bytes / sizeof(float));
    for (int l = 0; l < kv->n_layers; l++) {
        for (int kv_i = 0; kv_i < 2; kv_i++) {
            float *base = (float *)(kv_i ? kv->v[l].data : kv->k[l].data);
            xc_copy2d_args a = {.src = base + (size_t)src * (size_t)n,
                                .dst = base + (size_t)dst * (size_t)n,
                                .m = 1,
                                .n = n,
                                .lds = n,
                                .ldd = n};
            XC_TRY(xc_backend_copy2d(kv->be, &a));
        }
    }
    return XC_OK;
}

int xc_kv_block_size(const xc_kv_cache *kv) {
    return kv->block_size;
}

int xc_kv_n_blocks(const xc_kv_cache *kv) {
    return kv->n_blocks;
}

/* ---- block pool ---- */

struct xc_block_pool {
    int n_total;
    int n_free;
    int32_t *stack; /* free ids, top at n_free - 1 */
    bool *used;
};

xc_status xc_block_pool_create(int n_blocks, xc_block_pool **out) {
    if (n_blocks <= 0) {
        return xc_errf(XC_ERR_ARG, "block pool: %d blocks", n_blocks);
    }
    xc_block_pool *p = xc_calloc(1, sizeof *p);
    if (!p) {
        return XC_ERR_NOMEM;
    }
    p->stack = xc_malloc((size_t)n_blocks * sizeof(int32_t));
    p->used = xc_calloc((size_t)n_blocks, sizeof(bool));
    if (!p->stack || !p->used) {
        xc_block_pool_destroy(p);
        return XC_ERR_NOMEM;
    }
    p->n_total = n_blocks;
    p->n_free = n_blocks;
    for (int i = 0; i < n_blocks; i++) {
        p->stack[i] = n_blocks - 1 - i; /* hand out low ids first */
    }
    *out = p;
    return XC_OK;
}

void xc_block_pool_destroy(xc_block_pool *p) {
    if (!p) {
        return;
    }
    xc_free(p->stack);
    xc_free(p->used);
    xc_free(p);
}

xc_status xc_block_pool_alloc(xc_block_pool *p, int n, int32_t *out) {
    if (n < 0) {
        return xc_errf(XC_ERR_ARG, "block pool: cannot take %d blocks", n);
    }
    if (n > p->n_free) {
        return XC_AGAIN;
    }
    for (int i = 0; i < n; i++) {
        int32_t b = p->stack[--p->n_free];
        p->used[b] = true;
        out[i] = b;
    }
    return XC_OK;
}

xc_status xc_block_pool_free(xc_block_pool *p, const int32_t *blocks, int n) {
    /* validate and release in one pass; undo on the first bad id (also catches duplicates) */
    for (int i = 0; i < n; i++) {
        if (blocks[i] < 0 || blocks[i] >= p->n_total || !p->used[blocks[i]]) {
            int32_t bad = blocks[i];
            for (int j = 0; j < i; j++) {
                p->used[blocks[j]] = true;
            }
            return xc_errf(XC_ERR_ARG, "block pool: block %d is not in use", bad);
        }
        p->used[blocks[i]] = false;
    }
    for (int i = 0; i < n; i++) {
        p->stack[p->n_free++] = blocks[i];
    }
    return XC_OK;
}

int xc_block_pool_n_free(const xc_block_pool *p) {
    return p->n_free;
}

int xc_block_pool_n_total(const xc_block_pool *p) {
    return p->n_total;
}
