/* Backend registry and the thin wrappers every caller uses instead of be->ops->... */
#include "xc_backend.h"

#include <string.h>

#include "xc_mem.h"

struct xc_backend {
    const xc_backend_ops *ops;
    void *ctx;
};

static const xc_backend_ops *const backends[] = {
    &xc_backend_cpu_ops,
#ifdef XC_HAVE_CUDA
    &xc_backend_cuda_ops,
#endif
};

xc_status xc_backend_create(const char *name, const xc_backend_conf *conf, xc_backend **out) {
    const xc_backend_ops *ops = NULL;
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        if (strcmp(backends[i]->name, name) == 0) {
            ops = backends[i];
        }
    }
    if (!ops) {
        return xc_errf(XC_ERR_UNSUPPORTED, "backend '%s' is not compiled into this build", name);
    }
    xc_backend *be = xc_calloc(1, sizeof *be);
    if (!be) {
        return XC_ERR_NOMEM;
    }
    be->ops = ops;
    xc_backend_conf def = {0};
    xc_status st = ops->open(be, conf ? conf : &def);
    if (st != XC_OK) {
        xc_free(be);
        return st;
    }
    *out = be;
    return XC_OK;
}

void xc_backend_destroy(xc_backend *be) {
    if (!be) {
        return;
    }
    be->ops->close(be);
    xc_free(be);
}

const char *xc_backend_name(const xc_backend *be) {
    return be->ops->name;
}

void *xc_backend_ctx(const xc_backend *be) {
    return be->ctx;
}

void xc_backend_set_ctx(xc_backend *be, void *ctx) {
    be->ctx = ctx;
}

xc_status xc_backend_buf_alloc(xc_backend *be, size_t size, xc_buf *out) {
    return be->ops->buf_alloc(be, size, out);
}

xc_status xc_backend_weights(xc_backend *be, const void *host, size_t size, xc_buf *out) {
    if (be->ops->weights) {
        return be->ops->weights(be, host, size, out);
    }
    xc_buf b;
    XC_TRY(be->ops->buf_alloc(be, size, &b));
    xc_status st = be->ops->copy_in(be, b.data, host, size);
    if (st != XC_OK) {
        be->ops->buf_free(be, &b);
        return st;
    }
    *out = b;
    return XC_OK;
}

void xc_backend_buf_free(xc_backend *be, xc_buf *buf) {
    if (buf && buf->data) {
        if (buf->owned) {
            be->ops->buf_free(be, buf);
        }
        buf->data = NULL;
        buf->size = 0;
        buf->owned = false;
    }
}

xc_status xc_backend_copy_in(xc_backend *be, void *dst, const void *src, size_t n) {
    return be->ops->copy_in(be, dst, src, n);
}

xc_status xc_backend_copy_out(xc_backend *be, void *dst, const void *src, size_t n) {
    return be->ops->copy_out(be, dst, src, n);
}

#define XC_BACKEND_WRAP(op, type)                                                                  \
    xc_status xc_backend_##op(xc_backend *be, const type *a) {                                     \
        if (!be->ops->op) {                                                                        \
            return xc_errf(XC_ERR_UNSUPPORTED, "backend %s has no " #op, be->ops->name);           \
        }                                                                                          \
        return be->ops->op(be, a);                                                                 \
    }

XC_BACKEND_WRAP(matmul, xc_matmul_args)
XC_BACKEND_WRAP(plora, xc_plora_args)
XC_BACKEND_WRAP(rmsnorm, xc_norm_args)
XC_BACKEND_WRAP(layernorm, xc_norm_args)
XC_BACKEND_WRAP(rope, xc_rope_args)
XC_BACKEND_WRAP(kv_store, xc_kv_store_args)
XC_BACKEND_WRAP(attention, xc_attention_args)
XC_BACKEND_WRAP(act, xc_act_args)
XC_BACKEND_WRAP(embed, xc_embed_args)
XC_BACKEND_WRAP(patchify, xc_patchify_args)
XC_BACKEND_WRAP(softmax, xc_softmax_args)

xc_status xc_backend_sync(xc_backend *be) {
    return be->ops->sync ? be->ops->sync(be) : XC_OK;
}

xc_status xc_backend_copy2d(xc_backend *be, const xc_copy2d_args *a) {
    if (a->m < 0 || a->n < 0 || a->lds < a->n || a->ldd < a->n) {
        return xc_errf(XC_ERR_ARG, "copy2d: bad shape m=%d n=%d lds=%d ldd=%d", a->m, a->n, a->lds,
                       a->ldd);
    }
    if (be->ops->copy2d) {
        return be->ops->copy2d(be, a);
    }
    for (int r = 0; r < a->m; r++) {
        memcpy(a->dst + (size_t)r * (size_t)a->ldd, a->src + (size_t)r * (size_t)a->lds,
               (size_t)a->n * sizeof(float));
    }
    return XC_OK;
}
