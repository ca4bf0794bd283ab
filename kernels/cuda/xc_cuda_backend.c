/* The CUDA backend: its ops table, device buffers, one stream, the cuBLAS handle, a ring of pinned
 * memory for the small host-side arrays of each op, and the calls into the .cu launchers. Every
 * cudaError_t and cublasStatus_t becomes an xc_status here and nowhere else (XC_CUDA_CHECK). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../cpu/xc_cpu_impl.h"
#include "xc_backend.h"
#include "xc_cuda.h"
#include "xc_cuda_impl.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_opcheck.h"

/* ---- errors ---- */

static xc_status xc_cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
    XC_LOG_ERROR("%s:%d: %s: %s (%s)", file, line, call, cudaGetErrorString(e),
                 cudaGetErrorName(e));
    return xc_errf(XC_ERR_DEVICE, "cuda: %s: %s (%s)", call, cudaGetErrorString(e),
                   cudaGetErrorName(e));
}

static xc_status xc_cublas_fail(cublasStatus_t e, const char *call, const char *file, int line) {
    XC_LOG_ERROR("%s:%d: %s: %s", file, line, call, cublasGetStatusString(e));
    return xc_errf(XC_ERR_DEVICE, "cublas: %s: %s", call, cublasGetStatusString(e));
}

/* Converts a CUDA runtime error into XC_ERR_DEVICE with the runtime's message (NCCL's CUDACHECK).
 */
#define XC_CUDA_CHECK(call)                                                                        \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            return xc_cuda_fail(e_, #call, __FILE__, __LINE__);                                    \
        }                                                                                          \
    } while (0)

#define XC_CUBLAS_CHECK(call)                                                                      \
    do {                                                                                           \
        cublasStatus_t e_ = (call);                                                                \
        if (e_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            return xc_cublas_fail(e_, #call, __FILE__, __LINE__);                                  \
        }                                                                                          \
    } while (0)

/* ---- context ---- */

#define XC_CUDA_RING_BYTES  ((size_t)4 << 20)  /* parameter ring, grown on demand */
#define XC_CUDA_STAGE_BYTES ((size_t)32 << 20) /* each of the two weight upload buffers */

typedef struct xc_cuda_ctx {
    int device;
    /* XC_CUDA_DEBUG=1: every device argument of every op is checked with
     * cudaPointerGetAttributes (a host pointer is XC_ERR_ARG naming the op and the argument), and
     * the stream is synchronised after every op so a kernel fault names the op that caused it */
    bool debug;
    int n_sm;
    size_t smem_optin; /* most shared memory one block may use */
    char name[256];
    cudaStream_t stream;
    cublasHandle_t blas;
    /* device scratch, grown on demand (after a stream sync, since queued kernels may use it) */
    void *conv; /* activations rounded to bf16/f16 for the tensor-core GEMMs */
    size_t conv_size;
    void *tmp; /* PLoRA intermediate (rows, rank) f32 */
    size_t tmp_size;
    void *part; /* attention split partials */
    size_t part_size;
    void *argmax; /* softmax argmax results (m) int32 */
    size_t argmax_size;
    void *smp; /* sampling results: (m) ids, (m) logprobs, (20 m) alternatives and theirs */
    size_t smp_size;
    /* parameter ring: host arrays (positions, ids, slots, block tables, work lists) are written to
     * pinned memory and copied on the stream ahead of the kernel that reads them */
    char *ring_host, *ring_dev;
    size_t ring_size, ring_off;
    /* rings outgrown in the middle of an op: earlier puts of that op still point into them, so
     * they are freed only at close */
    void *retired[2 * 40];
    int n_retired;
    /* weight upload: two pinned staging buffers used in turn */
    void *stage[2];
    cudaEvent_t stage_ev[2];
    bool stage_used[2];
} xc_cuda_ctx;

static xc_cuda_ctx *xc_cuda_get(xc_backend *be) {
    xc_cuda_ctx *c = xc_backend_ctx(be);
    /* the device is per host thread: a caller on another thread must see the same one; it was
     * set successfully at open, so a failure here means a lost device, which the op's own calls
     * then report */
    cudaError_t e = cudaSetDevice(c->device);
    if (e != cudaSuccess) {
        XC_LOG_ERROR("cuda: cudaSetDevice(%d): %s", c->device, cudaGetErrorString(e));
    }
    return c;
}

/* Bytes spanned by m rows of n elements of esz bytes at row stride ld (0 = dense). */
static size_t xc_cuda_span(int m, int n, int ld, size_t esz) {
    if (m <= 0 || n <= 0) {
        return 0;
    }
    size_t l = (size_t)(ld > 0 ? ld : n);
    return ((size_t)(m - 1) * l + (size_t)n) * esz;
}

/* One address as device memory: cudaMemoryTypeDevice or Managed, never host or unregistered. */
static xc_status xc_cuda_dev_addr(const char *op, const char *arg, const void *p, const char *at) {
    struct cudaPointerAttributes pa;
    cudaError_t e = cudaPointerGetAttributes(&pa, p);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: clear it */
        return xc_errf(XC_ERR_ARG, "cuda %s: %s (%p, %s) is not device memory: %s", op, arg, p, at,
                       cudaGetErrorString(e));
    }
    if (pa.type != cudaMemoryTypeDevice && pa.type != cudaMemoryTypeManaged) {
        return xc_errf(XC_ERR_ARG, "cuda %s: %s (%p, %s) is %s memory, not device memory", op, arg,
                       p, at, pa.type == cudaMemoryTypeHost ? "pinned host" : "host");
    }
    return XC_OK;
}

/* Debug check (XC_CUDA_DEBUG=1) that a device argument of `bytes` bytes is device memory at both
 * ends; a no-op otherwise. NULL with bytes == 0 is allowed. */
static xc_status xc_cuda_dev_ptr(const xc_cuda_ctx *c, const char *op, const char *arg,
                                 const void *p, size_t bytes) {
    if (!c->debug || bytes == 0) {
        return XC_OK;
    }
    if (!p) {
        return xc_errf(XC_ERR_ARG, "cuda %s: %s is NULL", op, arg);
    }
    XC_TRY(xc_cuda_dev_addr(op, arg, p, "first byte"));
    return xc_cuda_dev_addr(op, arg, (const char *)p + bytes - 1, "last byte");
}

/* End of an op: under XC_CUDA_DEBUG=1 waits for the stream, so a kernel fault is reported by the
 * op that queued it rather than by the next synchronising call. */
static xc_status xc_cuda_done(xc_cuda_ctx *c, const char *op) {
    if (!c->debug) {
        return XC_OK;
    }
    cudaError_t e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) {
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) {
        XC_LOG_ERROR("cuda %s: the op's kernels failed: %s (%s)", op, cudaGetErrorString(e),
                     cudaGetErrorName(e));
        return xc_errf(XC_ERR_DEVICE, "cuda %s: the op's kernels failed: %s (%s)", op,
                       cudaGetErrorString(e), cudaGetErrorName(e));
    }
    return XC_OK;
}

/* Grows a device scratch buffer to at least need bytes. */
static xc_status xc_cuda_scratch(xc_cuda_ctx *c, void **p, size_t *size, size_t need) {
    if (need <= *size) {
        return XC_OK;
    }
    XC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    XC_CUDA_CHECK(cudaFree(*p));
    *p = NULL;
    *size = 0;
    size_t want = need + need / 2;
    if (cudaMalloc(p, want) != cudaSuccess) {
        cudaGetLastError();
        *p = NULL;
        return xc_errf(XC_ERR_NOMEM, "cuda: out of device memory for %zu bytes of scratch", want);
    }
    *size = want;
    return XC_OK;
}

/* Copies n bytes of host memory into the parameter ring and returns their device address; the
 * copy is queued on the stream, so kernels queued after it see the data. */
static xc_status xc_cuda_put(xc_cuda_ctx *c, const void *host, size_t n, void **dev) {
    size_t need = (n + 255) & ~(size_t)255;
    if (c->ring_off + need > c->ring_size) {
        XC_CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* every queued copy has been read */
        c->ring_off = 0;
        if (need > c->ring_size) {
            size_t size = need * 2;
            if (c->n_retired + 2 > (int)(sizeof c->retired / sizeof c->retired[0])) {
                return xc_errf(XC_ERR_NOMEM, "cuda: parameter ring grew too often");
            }
            c->retired[c->n_retired++] = c->ring_host;
            c->retired[c->n_retired++] = c->ring_dev;
            c->ring_host = NULL;
            c->ring_dev = NULL;
            c->ring_size = 0;
            XC_CUDA_CHECK(cudaMallocHost((void **)&c->ring_host, size));
            XC_CUDA_CHECK(cudaMalloc((void **)&c->ring_dev, size));
            c->ring_size = size;
        }
    }
    char *h = c->ring_host + c->ring_off, *d = c->ring_dev + c->ring_off;
    if (n) {
        memcpy(h, host, n);
        XC_CUDA_CHECK(cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, c->stream));
    }
    c->ring_off += need;
    *dev = d;
    return XC_OK;
}

static void xc_cuda_close(xc_backend *be) {
    xc_cuda_ctx *c = xc_backend_ctx(be);
    if (!c) {
        return;
    }
    /* teardown: nothing to return, so failures are logged (a fault left on the stream shows
     * here if nothing reported it before) */
    cudaError_t e = cudaSetDevice(c->device);
    if (e == cudaSuccess && c->stream) {
        e = cudaStreamSynchronize(c->stream);
    }
    if (e != cudaSuccess) {
        XC_LOG_ERROR("cuda: close: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (c->blas && cublasDestroy(c->blas) != CUBLAS_STATUS_SUCCESS) {
        XC_LOG_ERROR("cuda: close: cublasDestroy failed");
    }
    cudaFree(c->conv);
    cudaFree(c->tmp);
    cudaFree(c->part);
    cudaFree(c->argmax);
    cudaFree(c->smp);
    cudaFree(c->ring_dev);
    cudaFreeHost(c->ring_host);
    for (int i = 0; i + 1 < c->n_retired; i += 2) { /* (host, device) pairs */
        cudaFreeHost(c->retired[i]);
        cudaFree(c->retired[i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(c->stage[i]);
        if (c->stage_ev[i]) {
            cudaEventDestroy(c->stage_ev[i]);
        }
    }
    if (c->stream) {
        cudaStreamDestroy(c->stream);
    }
    xc_free(c);
    xc_backend_set_ctx(be, NULL);
}

static xc_status xc_cuda_open_ctx(xc_cuda_ctx *c) {
    XC_CUDA_CHECK(cudaSetDevice(c->device));
    struct cudaDeviceProp prop;
    XC_CUDA_CHECK(cudaGetDeviceProperties(&prop, c->device));
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    c->n_sm = prop.multiProcessorCount;
    XC_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    XC_CUBLAS_CHECK(cublasCreate(&c->blas));
    XC_CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    XC_CUDA_CHECK(cudaMallocHost((void **)&c->ring_host, XC_CUDA_RING_BYTES));
    XC_CUDA_CHECK(cudaMalloc((void **)&c->ring_dev, XC_CUDA_RING_BYTES));
    c->ring_size = XC_CUDA_RING_BYTES;
    for (int i = 0; i < 2; i++) {
        XC_CUDA_CHECK(cudaEventCreateWithFlags(&c->stage_ev[i], cudaEventDisableTiming));
    }
    c->smem_optin = prop.sharedMemPerBlockOptin;
    XC_CUDA_CHECK(xc_cuda_attn_setup(c->smem_optin));
    return XC_OK;
}

static xc_status xc_cuda_open(xc_backend *be, const xc_backend_conf *conf) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        /* no driver, no device or a stub: all mean "no device" (toolchain.md section 6) */
        xc_status st = xc_errf(XC_ERR_DEVICE, "no CUDA device: %s",
                               e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
        cudaGetLastError();
        return st;
    }
    if (conf->device < 0 || conf->device >= n) {
        return xc_errf(XC_ERR_ARG, "cuda: device %d does not exist (%d device%s)", conf->device, n,
                       n == 1 ? "" : "s");
    }
    const char *dbg = getenv("XC_CUDA_DEBUG");
    if (dbg && *dbg && strcmp(dbg, "0") != 0 && strcmp(dbg, "1") != 0) {
        return xc_errf(XC_ERR_ARG, "XC_CUDA_DEBUG must be 0 or 1, not '%s'", dbg);
    }
    xc_cuda_ctx *c = xc_calloc(1, sizeof *c);
    if (!c) {
        return XC_ERR_NOMEM;
    }
    c->device = conf->device;
    c->debug = dbg && strcmp(dbg, "1") == 0;
    xc_backend_set_ctx(be, c);
    xc_status st = xc_cuda_open_ctx(c);
    if (st != XC_OK) {
        xc_cuda_close(be);
        return st;
    }
    XC_LOG_INFO("cuda: device %d: %s, %d SMs%s", c->device, c->name, c->n_sm,
                c->debug ? " (XC_CUDA_DEBUG: pointer checks, sync after every op)" : "");
    return XC_OK;
}

/* ---- buffers ---- */

static xc_status xc_cuda_buf_alloc(xc_backend *be, size_t size, xc_buf *out) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    (void)c;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size ? size : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
            cudaGetLastError();
        }
        return xc_errf(XC_ERR_NOMEM, "cuda: cannot allocate %zu bytes (%s; %zu of %zu free)", size,
                       cudaGetErrorString(e), fr, tot);
    }
    *out = (xc_buf){.data = p, .size = size, .owned = true};
    return XC_OK;
}

static void xc_cuda_buf_free(xc_backend *be, xc_buf *buf) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    cudaError_t e = cudaStreamSynchronize(c->stream); /* queued kernels may still use it */
    if (e == cudaSuccess) {
        e = cudaFree(buf->data);
    }
    if (e != cudaSuccess) { /* nothing to return: log it, the next op reports it again */
        XC_LOG_ERROR("cuda: freeing %zu bytes: %s", buf->size, cudaGetErrorString(e));
    }
}

/* Uploads weights straight from (memory-mapped) host memory through two pinned staging buffers in
 * turn: the host fills one while the other is copied, and no full host copy is ever made. */
static xc_status xc_cuda_weights(xc_backend *be, const void *host, size_t size, xc_buf *out) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    xc_buf b;
    XC_TRY(xc_cuda_buf_alloc(be, size, &b));
    xc_status st = XC_OK;
    for (int i = 0; i < 2 && st == XC_OK; i++) {
        if (!c->stage[i] && cudaMallocHost(&c->stage[i], XC_CUDA_STAGE_BYTES) != cudaSuccess) {
            cudaGetLastError();
            c->stage[i] = NULL;
            st = xc_errf(XC_ERR_NOMEM, "cuda: cannot pin %zu bytes for the weight upload",
                         XC_CUDA_STAGE_BYTES);
        }
    }
    int k = 0;
    for (size_t off = 0; off < size && st == XC_OK; off += XC_CUDA_STAGE_BYTES, k ^= 1) {
        size_t n = size - off < XC_CUDA_STAGE_BYTES ? size - off : XC_CUDA_STAGE_BYTES;
        cudaError_t e = c->stage_used[k] ? cudaEventSynchronize(c->stage_ev[k]) : cudaSuccess;
        if (e == cudaSuccess) {
            memcpy(c->stage[k], (const char *)host + off, n);
            e = cudaMemcpyAsync((char *)b.data + off, c->stage[k], n, cudaMemcpyHostToDevice,
                                c->stream);
        }
        if (e == cudaSuccess) {
            e = cudaEventRecord(c->stage_ev[k], c->stream);
            c->stage_used[k] = true;
        }
        if (e != cudaSuccess) {
            st = xc_cuda_fail(e, "weight upload", __FILE__, __LINE__);
        }
    }
    if (st == XC_OK) {
        cudaError_t e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) {
            st = xc_cuda_fail(e, "cudaStreamSynchronize", __FILE__, __LINE__);
        }
    }
    if (st != XC_OK) {
        cudaFree(b.data);
        return st;
    }
    *out = b;
    return XC_OK;
}

/* Both copies are synchronous for the caller: src may be reused and dst read on return. */
static xc_status xc_cuda_copy_in(xc_backend *be, void *dst, const void *src, size_t n) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    if (n == 0) {
        return XC_OK;
    }
    XC_TRY(xc_cuda_dev_ptr(c, "copy_in", "dst", dst, n));
    XC_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, c->stream));
    XC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return XC_OK;
}

static xc_status xc_cuda_copy_out(xc_backend *be, void *dst, const void *src, size_t n) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    if (n == 0) {
        return XC_OK;
    }
    XC_TRY(xc_cuda_dev_ptr(c, "copy_out", "src", src, n));
    XC_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, c->stream));
    XC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return XC_OK;
}

static xc_status xc_cuda_sync(xc_backend *be) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return XC_OK;
}

static xc_status xc_cuda_copy2d(xc_backend *be, const xc_copy2d_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    if (a->m == 0 || a->n == 0) {
        return XC_OK;
    }
    if (!a->src || !a->dst) {
        return xc_errf(XC_ERR_ARG, "copy2d: %s is NULL", !a->src ? "src" : "dst");
    }
    XC_TRY(xc_cuda_dev_ptr(c, "copy2d", "src", a->src, xc_cuda_span(a->m, a->n, a->lds, 4)));
    XC_TRY(xc_cuda_dev_ptr(c, "copy2d", "dst", a->dst, xc_cuda_span(a->m, a->n, a->ldd, 4)));
    XC_CUDA_CHECK(cudaMemcpy2DAsync(a->dst, (size_t)a->ldd * sizeof(float), a->src,
                                    (size_t)a->lds * sizeof(float), (size_t)a->n * sizeof(float),
                                    (size_t)a->m, cudaMemcpyDeviceToDevice, c->stream));
    return xc_cuda_done(c, "copy2d");
}

/* ---- GEMM ---- */

/* y = alpha x w^T + bias (+ y): f32 weights through an f32 cuBLAS GEMM; bf16/f16 weights with x
 * rounded to the same type and fp32 accumulation on the tensor cores. Row-major trick: cuBLAS sees
 * y^T (n, m) = w (as k x n, transposed) times x^T (k x m). */
static xc_status xc_cuda_gemm(xc_cuda_ctx *c, const xc_matmul_args *a) {
    int ldx = a->ldx ? a->ldx : a->k, ldy = a->ldy ? a->ldy : a->n;
    float alpha = a->alpha != 0.0f ? a->alpha : 1.0f, beta = a->accumulate ? 1.0f : 0.0f;
    const void *x = a->x;
    int ldb = ldx;
    cudaDataType_t t = CUDA_R_32F;
    if (a->w_dtype != XC_DTYPE_F32) {
        bool bf = a->w_dtype == XC_DTYPE_BF16;
        t = bf ? CUDA_R_16BF : CUDA_R_16F;
        XC_TRY(xc_cuda_scratch(c, &c->conv, &c->conv_size, (size_t)a->m * (size_t)a->k * 2));
        XC_CUDA_CHECK(xc_cuda_convert_launch(a->x, ldx, c->conv, a->m, a->k, bf, c->stream));
        x = c->conv;
        ldb = a->k;
    }
    XC_CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, a->n, a->m, a->k, &alpha, a->w,
                                 t, a->k, x, t, ldb, &beta, a->y, CUDA_R_32F, ldy,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (a->bias) {
        XC_CUDA_CHECK(
            xc_cuda_bias_launch(a->y, ldy, a->bias, (int)a->bias_dtype, a->m, a->n, c->stream));
    }
    return XC_OK;
}

static xc_status xc_cuda_matmul(xc_backend *be, const xc_matmul_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_cpu_matmul_check(a));
    size_t ws = xc_dtype_size(a->w_dtype);
    XC_TRY(xc_cuda_dev_ptr(c, "matmul", "x", a->x, xc_cuda_span(a->m, a->k, a->ldx, 4)));
    XC_TRY(xc_cuda_dev_ptr(c, "matmul", "w", a->w, (size_t)a->n * (size_t)a->k * ws));
    if (a->bias) {
        XC_TRY(xc_cuda_dev_ptr(c, "matmul", "bias", a->bias,
                               (size_t)a->n * xc_dtype_size(a->bias_dtype)));
    }
    XC_TRY(xc_cuda_dev_ptr(c, "matmul", "y", a->y, xc_cuda_span(a->m, a->n, a->ldy, 4)));
    XC_TRY(xc_cuda_gemm(c, a));
    return xc_cuda_done(c, "matmul");
}

/* PLoRA on the image-row ranges only: per range (its rows are contiguous, so no gather copy is
 * needed) t = x A^T into scratch, then y += scale t B^T; nothing at all without ranges. */
static xc_status xc_cuda_plora(xc_backend *be, const xc_plora_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_plora(a));
    int max_rows = 0;
    for (int i = 0; i < a->n_ranges; i++) {
        int rows = a->ranges[i].end - a->ranges[i].start;
        max_rows = rows > max_rows ? rows : max_rows;
    }
    if (max_rows == 0 || a->scale == 0.0f) {
        return XC_OK;
    }
    size_t abs = xc_dtype_size(a->ab_dtype);
    XC_TRY(xc_cuda_dev_ptr(c, "plora", "x", a->x, xc_cuda_span(a->m, a->k, a->ldx, 4)));
    XC_TRY(xc_cuda_dev_ptr(c, "plora", "a", a->a, (size_t)a->rank * (size_t)a->k * abs));
    XC_TRY(xc_cuda_dev_ptr(c, "plora", "b", a->b, (size_t)a->n * (size_t)a->rank * abs));
    XC_TRY(xc_cuda_dev_ptr(c, "plora", "y", a->y, xc_cuda_span(a->m, a->n, a->ldy, 4)));
    XC_TRY(xc_cuda_scratch(c, &c->tmp, &c->tmp_size,
                           (size_t)max_rows * (size_t)a->rank * sizeof(float)));
    int ldx = xc_opcheck_ld(a->ldx, a->k), ldy = xc_opcheck_ld(a->ldy, a->n);
    for (int i = 0; i < a->n_ranges; i++) {
        int r0 = a->ranges[i].start, rows = a->ranges[i].end - r0;
        if (rows == 0) {
            continue;
        }
        xc_matmul_args down = {.x = a->x + (size_t)r0 * (size_t)ldx,
                               .w = a->a,
                               .w_dtype = a->ab_dtype,
                               .y = c->tmp,
                               .m = rows,
                               .n = a->rank,
                               .k = a->k,
                               .ldx = ldx};
        xc_matmul_args up = {.x = c->tmp,
                             .w = a->b,
                             .w_dtype = a->ab_dtype,
                             .y = a->y + (size_t)r0 * (size_t)ldy,
                             .m = rows,
                             .n = a->n,
                             .k = a->rank,
                             .ldy = ldy,
                             .alpha = a->scale,
                             .accumulate = true};
        XC_TRY(xc_cuda_gemm(c, &down));
        XC_TRY(xc_cuda_gemm(c, &up));
    }
    return xc_cuda_done(c, "plora");
}

/* ---- row ops ---- */

static xc_status xc_cuda_norm(xc_backend *be, const xc_norm_args *a, bool ln) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_norm(a, ln));
    const char *op = ln ? "layernorm" : "rmsnorm";
    size_t wb = (size_t)a->n * xc_dtype_size(a->wb_dtype);
    XC_TRY(xc_cuda_dev_ptr(c, op, "x", a->x, xc_cuda_span(a->m, a->n, a->ldx, 4)));
    XC_TRY(xc_cuda_dev_ptr(c, op, "y", a->y, xc_cuda_span(a->m, a->n, a->ldy, 4)));
    XC_TRY(xc_cuda_dev_ptr(c, op, "w", a->w, a->m > 0 ? wb : 0));
    if (ln && a->b) {
        XC_TRY(xc_cuda_dev_ptr(c, op, "b", a->b, a->m > 0 ? wb : 0));
    }
    XC_CUDA_CHECK(xc_cuda_norm_launch(a->x, xc_opcheck_ld(a->ldx, a->n), a->y,
                                      xc_opcheck_ld(a->ldy, a->n), a->w, ln ? a->b : NULL,
                                      (int)a->wb_dtype, a->m, a->n, a->eps, ln, c->stream));
    return xc_cuda_done(c, op);
}

static xc_status xc_cuda_rmsnorm(xc_backend *be, const xc_norm_args *a) {
    return xc_cuda_norm(be, a, false);
}

static xc_status xc_cuda_layernorm(xc_backend *be, const xc_norm_args *a) {
    return xc_cuda_norm(be, a, true);
}

static xc_status xc_cuda_rope(xc_backend *be, const xc_rope_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_rope(a));
    if (a->m == 0) {
        return XC_OK;
    }
    int half = a->head_dim / 2;
    float invf[256];
    if (half > 256) {
        return xc_errf(XC_ERR_UNSUPPORTED, "rope: head_dim %d above 512 on cuda", a->head_dim);
    }
    for (int d = 0; d < half; d++) {
        /* theta^(-2d/head_dim) rounded to f32, exactly as the CPU backend and xc_ref_rope */
        invf[d] = (float)(1.0 / pow((double)a->theta, 2.0 * d / a->head_dim));
    }
    XC_TRY(xc_cuda_dev_ptr(c, "rope", "x", a->x,
                           xc_cuda_span(a->m, a->n_heads * a->head_dim, a->ldx, 4)));
    void *dpos, *dinv;
    XC_TRY(xc_cuda_put(c, a->pos, (size_t)a->m * sizeof(int32_t), &dpos));
    XC_TRY(xc_cuda_put(c, invf, (size_t)half * sizeof(float), &dinv));
    XC_CUDA_CHECK(xc_cuda_rope_launch(a->x, xc_opcheck_ld(a->ldx, a->n_heads * a->head_dim), dpos,
                                      dinv, a->m, a->n_heads, a->head_dim, c->stream));
    return xc_cuda_done(c, "rope");
}

/* (slot, row) pairs ordered by slot, then row. */
static int xc_cuda_slot_cmp(const void *pa, const void *pb) {
    const int32_t *x = pa, *y = pb;
    if (x[0] != y[0]) {
        return x[0] < y[0] ? -1 : 1;
    }
    return (x[1] > y[1]) - (x[1] < y[1]);
}

/* Rows are copied in parallel, so a slot named twice keeps only its last row (the later row wins,
 * as on the CPU): rows are sorted by slot on the host and the earlier duplicates dropped. */
static xc_status xc_cuda_kv_store(xc_backend *be, const xc_kv_store_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_kv_store(a));
    if (a->m == 0) {
        return XC_OK;
    }
    size_t cache =
        (size_t)a->n_slots * (size_t)a->width * (a->cache_dtype == XC_DTYPE_BF16 ? 2 : 4);
    XC_TRY(xc_cuda_dev_ptr(c, "kv_store", "k", a->k, xc_cuda_span(a->m, a->width, a->ldk, 4)));
    XC_TRY(xc_cuda_dev_ptr(c, "kv_store", "v", a->v, xc_cuda_span(a->m, a->width, a->ldv, 4)));
    XC_TRY(xc_cuda_dev_ptr(c, "kv_store", "k_cache", a->k_cache, cache));
    XC_TRY(xc_cuda_dev_ptr(c, "kv_store", "v_cache", a->v_cache, cache));
    int32_t *pairs = xc_malloc((size_t)a->m * 2 * sizeof(int32_t));
    int32_t *rows = xc_malloc((size_t)a->m * 2 * sizeof(int32_t));
    if (!pairs || !rows) {
        xc_free(pairs);
        xc_free(rows);
        return xc_errf(XC_ERR_NOMEM, "kv_store: out of memory for %d rows", a->m);
    }
    for (int i = 0; i < a->m; i++) {
        pairs[2 * i] = a->slots[i];
        pairs[2 * i + 1] = i;
    }
    qsort(pairs, (size_t)a->m, 2 * sizeof(int32_t), xc_cuda_slot_cmp);
    int n = 0;
    int32_t *slots = rows + a->m;
    for (int i = 0; i < a->m; i++) {
        if (i + 1 < a->m && pairs[2 * i + 2] == pairs[2 * i]) {
            continue; /* a later row writes the same slot */
        }
        rows[n] = pairs[2 * i + 1];
        slots[n] = pairs[2 * i];
        n++;
    }
    void *drow = NULL, *dslot = NULL;
    xc_status st = xc_cuda_put(c, rows, (size_t)n * sizeof(int32_t), &drow);
    if (st == XC_OK) {
        st = xc_cuda_put(c, slots, (size_t)n * sizeof(int32_t), &dslot);
    }
    xc_free(pairs);
    xc_free(rows);
    XC_TRY(st);
    XC_CUDA_CHECK(xc_cuda_kv_store_launch(
        a->k, xc_opcheck_ld(a->ldk, a->width), a->v, xc_opcheck_ld(a->ldv, a->width), a->k_cache,
        a->v_cache, a->cache_dtype == XC_DTYPE_BF16, drow, dslot, n, a->width, c->stream));
    return xc_cuda_done(c, "kv_store");
}

static xc_status xc_cuda_act(xc_backend *be, const xc_act_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_act(a));
    bool two = a->kind == XC_ACT_SILU_MUL || a->kind == XC_ACT_ADD;
    XC_TRY(xc_cuda_dev_ptr(c, "act", "x", a->x, xc_cuda_span(a->m, a->n, a->ldx, 4)));
    if (two) {
        XC_TRY(xc_cuda_dev_ptr(c, "act", "x2", a->x2, xc_cuda_span(a->m, a->n, a->ldx2, 4)));
    }
    XC_TRY(xc_cuda_dev_ptr(c, "act", "y", a->y, xc_cuda_span(a->m, a->n, a->ldy, 4)));
    XC_CUDA_CHECK(xc_cuda_act_launch((int)a->kind, a->x, xc_opcheck_ld(a->ldx, a->n),
                                     two ? a->x2 : NULL, two ? xc_opcheck_ld(a->ldx2, a->n) : 0,
                                     a->y, xc_opcheck_ld(a->ldy, a->n), a->m, a->n, c->stream));
    return xc_cuda_done(c, "act");
}

static xc_status xc_cuda_embed(xc_backend *be, const xc_embed_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_embed(a));
    if (a->m == 0) {
        return XC_OK;
    }
    XC_TRY(xc_cuda_dev_ptr(c, "embed", "table", a->table,
                           (size_t)a->vocab * (size_t)a->n * xc_dtype_size(a->table_dtype)));
    XC_TRY(xc_cuda_dev_ptr(c, "embed", "y", a->y, xc_cuda_span(a->m, a->n, a->ldy, 4)));
    void *dids;
    XC_TRY(xc_cuda_put(c, a->ids, (size_t)a->m * sizeof(int32_t), &dids));
    XC_CUDA_CHECK(xc_cuda_embed_launch(a->table, (int)a->table_dtype, dids, a->y,
                                       xc_opcheck_ld(a->ldy, a->n), a->m, a->n, c->stream));
    return xc_cuda_done(c, "embed");
}

static xc_status xc_cuda_patchify(xc_backend *be, const xc_patchify_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_patchify(a));
    size_t px = (size_t)a->n_img * (size_t)a->channels * (size_t)a->size * (size_t)a->size * 4;
    XC_TRY(xc_cuda_dev_ptr(c, "patchify", "images", a->images, px));
    XC_TRY(xc_cuda_dev_ptr(c, "patchify", "y", a->y, px));
    XC_CUDA_CHECK(xc_cuda_patchify_launch(a->images, a->y, a->n_img, a->channels, a->size, a->patch,
                                          c->stream));
    return xc_cuda_done(c, "patchify");
}

/* argmax goes to host memory, so a call that asks for it waits for the result. */
static xc_status xc_cuda_softmax(xc_backend *be, const xc_softmax_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_softmax(a));
    if (a->m == 0 || (a->skip_softmax && !a->argmax)) {
        return XC_OK;
    }
    XC_TRY(xc_cuda_dev_ptr(c, "softmax", "x", a->x, xc_cuda_span(a->m, a->n, a->ldx, 4)));
    if (a->argmax) {
        XC_TRY(xc_cuda_scratch(c, &c->argmax, &c->argmax_size, (size_t)a->m * sizeof(int32_t)));
    }
    float t = a->temperature != 0.0f ? a->temperature : 1.0f;
    XC_CUDA_CHECK(xc_cuda_softmax_launch(a->x, xc_opcheck_ld(a->ldx, a->n), a->m, a->n, t,
                                         a->skip_softmax, a->argmax ? c->argmax : NULL, c->stream));
    if (a->argmax) {
        XC_CUDA_CHECK(cudaMemcpyAsync(a->argmax, c->argmax, (size_t)a->m * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, c->stream));
        XC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    }
    return xc_cuda_done(c, "softmax");
}

/* ---- attention ---- */

/* Host-side plan of one attention call: sequence descriptors, block tables, the block list and,
 * for the split path, the (seq, query) rows whose partials are folded. */
typedef struct xc_cuda_attn_plan {
    xc_cuda_attn_seq *seqs;
    int32_t *tables;
    xc_cuda_attn_work *work;
    int32_t *rows;
    int n_tables, n_work, n_rows;
    size_t n_part; /* partial records */
} xc_cuda_attn_plan;

static void xc_cuda_attn_plan_free(xc_cuda_attn_plan *pl) {
    xc_free(pl->seqs);
    xc_free(pl->tables);
    xc_free(pl->work);
    xc_free(pl->rows);
}

/* Keys visible to the last item of the block starting at item it0 (the kernel's blim). */
static int xc_cuda_attn_blim(const xc_attn_seq *s, int it0, int group, bool causal) {
    int items = s->n_q * group;
    int last = (it0 + XC_CUDA_ATTN_WARPS < items ? it0 + XC_CUDA_ATTN_WARPS : items) - 1;
    return causal ? s->kv_len - s->n_q + last / group + 1 : s->kv_len;
}

static xc_status xc_cuda_attn_build(const xc_attention_args *a, int n_sm, xc_cuda_attn_plan *pl) {
    int G = a->n_heads / a->n_kv_heads;
    long long n_tab = 0, n_tiles = 0, n_rows = 0, max_kv = 0, split_blocks = 0;
    for (int i = 0; i < a->n_seqs; i++) {
        const xc_attn_seq *s = &a->seqs[i];
        if (s->n_q <= 0) {
            continue;
        }
        if (s->block_table) {
            n_tab += (s->kv_len + a->block_size - 1) / a->block_size;
        }
        long long tiles = ((long long)s->n_q * G + XC_CUDA_ATTN_WARPS - 1) / XC_CUDA_ATTN_WARPS;
        n_tiles += tiles;
        n_rows += s->n_q;
        max_kv = s->kv_len > max_kv ? s->kv_len : max_kv;
        split_blocks += tiles * ((s->kv_len + XC_CUDA_ATTN_CHUNK - 1) / XC_CUDA_ATTN_CHUNK);
    }
    /* Split over the keys when one block per query tile would leave most SMs idle and the keys
     * are long enough to share out; both paths give the same bits. */
    bool split = max_kv > XC_CUDA_ATTN_CHUNK && n_tiles * a->n_kv_heads < 2LL * n_sm;
    long long n_work = split ? split_blocks : n_tiles;
    if (n_work > INT32_MAX || n_tab > INT32_MAX || n_rows > INT32_MAX) {
        return xc_errf(XC_ERR_ARG, "attention: too much work in one call");
    }
    memset(pl, 0, sizeof *pl);
    pl->seqs = xc_malloc((size_t)(a->n_seqs ? a->n_seqs : 1) * sizeof *pl->seqs);
    pl->tables = xc_malloc((size_t)(n_tab ? n_tab : 1) * sizeof *pl->tables);
    pl->work = xc_malloc((size_t)(n_work ? n_work : 1) * sizeof *pl->work);
    pl->rows = split ? xc_malloc((size_t)(n_rows ? n_rows : 1) * 2 * sizeof *pl->rows) : NULL;
    if (!pl->seqs || !pl->tables || !pl->work || (split && !pl->rows)) {
        xc_cuda_attn_plan_free(pl);
        return xc_errf(XC_ERR_NOMEM, "attention: out of memory for the plan");
    }
    size_t part = 0;
    for (int i = 0; i < a->n_seqs; i++) {
        const xc_attn_seq *s = &a->seqs[i];
        xc_cuda_attn_seq *d = &pl->seqs[i];
        *d = (xc_cuda_attn_seq){.q_start = s->q_start,
                                .n_q = s->n_q,
                                .kv_len = s->kv_len,
                                .kv_start = s->kv_start,
                                .table_off = -1,
                                .part_off = (int32_t)part};
        if (s->n_q <= 0) {
            continue;
        }
        int nch = (s->kv_len + XC_CUDA_ATTN_CHUNK - 1) / XC_CUDA_ATTN_CHUNK;
        if (split) {
            part += (size_t)s->n_q * (size_t)a->n_heads * (size_t)nch;
            if (part > INT32_MAX) {
                xc_cuda_attn_plan_free(pl);
                return xc_errf(XC_ERR_ARG, "attention: too many partials in one call");
            }
        }
        if (s->block_table) {
            int nb = (s->kv_len + a->block_size - 1) / a->block_size;
            d->table_off = pl->n_tables;
            memcpy(pl->tables + pl->n_tables, s->block_table, (size_t)nb * sizeof(int32_t));
            pl->n_tables += nb;
        }
        for (int it0 = 0; it0 < s->n_q * G; it0 += XC_CUDA_ATTN_WARPS) {
            if (!split) {
                pl->work[pl->n_work++] = (xc_cuda_attn_work){i, it0, 0, 0};
                continue;
            }
            int blim = xc_cuda_attn_blim(s, it0, G, a->causal);
            for (int ch = 0; ch * XC_CUDA_ATTN_CHUNK < blim; ch++) {
                pl->work[pl->n_work++] = (xc_cuda_attn_work){i, it0, ch, ch + 1};
            }
        }
        for (int q = 0; split && q < s->n_q; q++) {
            pl->rows[2 * pl->n_rows] = i;
            pl->rows[2 * pl->n_rows + 1] = q;
            pl->n_rows++;
        }
    }
    pl->n_part = part;
    return XC_OK;
}

static xc_status xc_cuda_attention(xc_backend *be, const xc_attention_args *a) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_TRY(xc_opcheck_attention(a));
    if (xc_cuda_attn_smem(a->head_dim) > c->smem_optin) {
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "attention: head_dim %d needs %zu bytes of shared memory, this device "
                       "allows %zu",
                       a->head_dim, xc_cuda_attn_smem(a->head_dim), c->smem_optin);
    }
    if (c->debug) { /* extents: the rows the sequences name, the cache rows they reach */
        long long qrows = 0, kvrows = 0;
        int bsz = a->block_size > 0 ? a->block_size : 1;
        for (int i = 0; i < a->n_seqs; i++) {
            const xc_attn_seq *s = &a->seqs[i];
            if (s->n_q <= 0) {
                continue;
            }
            qrows = s->q_start + s->n_q > qrows ? s->q_start + s->n_q : qrows;
            long long top = s->kv_start + s->kv_len;
            for (int b = 0; s->block_table && b * bsz < s->kv_len; b++) {
                long long end = (long long)(s->block_table[b] + 1) * bsz;
                top = b == 0 || end > top ? end : top;
            }
            kvrows = top > kvrows ? top : kvrows;
        }
        int qw = a->n_heads * a->head_dim, kw = a->n_kv_heads * a->head_dim;
        XC_TRY(xc_cuda_dev_ptr(c, "attention", "q", a->q, xc_cuda_span((int)qrows, qw, a->ldq, 4)));
        XC_TRY(xc_cuda_dev_ptr(c, "attention", "out", a->out,
                               xc_cuda_span((int)qrows, qw, a->ldo, 4)));
        size_t kvb = a->kv_dtype == XC_DTYPE_BF16 ? 2 : 4; /* bytes per stored KV element */
        XC_TRY(xc_cuda_dev_ptr(c, "attention", "k", a->k,
                               xc_cuda_span((int)kvrows, kw, a->ldkv, kvb)));
        XC_TRY(xc_cuda_dev_ptr(c, "attention", "v", a->v,
                               xc_cuda_span((int)kvrows, kw, a->ldkv, kvb)));
    }
    xc_cuda_attn_plan pl;
    XC_TRY(xc_cuda_attn_build(a, c->n_sm, &pl));
    xc_cuda_attn_params p = {
        .q = a->q,
        .out = a->out,
        .k = a->k,
        .v = a->v,
        .kv_bf16 = a->kv_dtype == XC_DTYPE_BF16,
        .ldq = xc_opcheck_ld(a->ldq, a->n_heads * a->head_dim),
        .ldo = xc_opcheck_ld(a->ldo, a->n_heads * a->head_dim),
        .ldkv = xc_opcheck_ld(a->ldkv, a->n_kv_heads * a->head_dim),
        .n_heads = a->n_heads,
        .n_kv_heads = a->n_kv_heads,
        .head_dim = a->head_dim,
        .block_size = a->block_size > 0 ? a->block_size : 1,
        .scale = a->scale != 0.0f ? a->scale : 1.0f / sqrtf((float)a->head_dim),
        .causal = a->causal,
    };
    void *dseqs = NULL, *dtab = NULL, *dwork = NULL, *drows = NULL;
    xc_status st = XC_OK;
    if (pl.n_work == 0) {
        goto out;
    }
    XC_TRY_GOTO(xc_cuda_put(c, pl.seqs, (size_t)a->n_seqs * sizeof *pl.seqs, &dseqs), st, out);
    XC_TRY_GOTO(xc_cuda_put(c, pl.tables, (size_t)pl.n_tables * sizeof *pl.tables, &dtab), st, out);
    XC_TRY_GOTO(xc_cuda_put(c, pl.work, (size_t)pl.n_work * sizeof *pl.work, &dwork), st, out);
    if (pl.rows) {
        XC_TRY_GOTO(xc_cuda_put(c, pl.rows, (size_t)pl.n_rows * 2 * sizeof *pl.rows, &drows), st,
                    out);
        XC_TRY_GOTO(xc_cuda_scratch(c, &c->part, &c->part_size,
                                    pl.n_part * (size_t)(a->head_dim + 2) * sizeof(float)),
                    st, out);
    }
    p.seqs = dseqs;
    p.tables = dtab;
    p.part = c->part;
    cudaError_t e = xc_cuda_attn_launch(&p, dwork, pl.n_work, c->stream);
    if (e == cudaSuccess && pl.rows) {
        e = xc_cuda_attn_combine_launch(&p, drows, pl.n_rows, c->stream);
    }
    if (e != cudaSuccess) {
        st = xc_cuda_fail(e, "attention launch", __FILE__, __LINE__);
    }
out:
    xc_cuda_attn_plan_free(&pl);
    XC_TRY(st);
    return xc_cuda_done(c, "attention");
}

/* ---- device info for benchmarks and sizing (xc_cuda.h) ---- */

xc_status xc_cuda_info(xc_backend *be, xc_cuda_dev_info *out) {
    if (strcmp(xc_backend_name(be), "cuda") != 0) {
        return xc_errf(XC_ERR_ARG, "xc_cuda_info: backend %s is not cuda", xc_backend_name(be));
    }
    xc_cuda_ctx *c = xc_cuda_get(be);
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", c->name);
    out->device = c->device;
    out->n_sm = c->n_sm;
    XC_CUDA_CHECK(cudaMemGetInfo(&out->free_bytes, &out->total_bytes));
    return XC_OK;
}

xc_status xc_cuda_fill_random(xc_backend *be, void *dev, xc_dtype t, size_t n, float amp,
                              uint64_t seed) {
    if (strcmp(xc_backend_name(be), "cuda") != 0) {
        return xc_errf(XC_ERR_ARG, "xc_cuda_fill_random: backend is not cuda");
    }
    if (t != XC_DTYPE_F32 && t != XC_DTYPE_F16 && t != XC_DTYPE_BF16) {
        return xc_errf(XC_ERR_UNSUPPORTED, "xc_cuda_fill_random: dtype %s", xc_dtype_name(t));
    }
    xc_cuda_ctx *c = xc_cuda_get(be);
    XC_CUDA_CHECK(xc_cuda_fill_random_launch(dev, (int)t, n, amp, seed, c->stream));
    return XC_OK;
}

xc_status xc_cuda_time_copy(xc_backend *be, void *dst, const void *src, size_t bytes, int iters,
                            double *ms) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    cudaEvent_t e0 = NULL, e1 = NULL;
    XC_CUDA_CHECK(cudaEventCreate(&e0));
    cudaError_t e = cudaEventCreate(&e1);
    float best = 1e30f;
    for (int i = 0; i < iters + 1 && e == cudaSuccess; i++) {
        e = cudaEventRecord(e0, c->stream);
        if (e == cudaSuccess) {
            e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream);
        }
        if (e == cudaSuccess) {
            e = cudaEventRecord(e1, c->stream);
        }
        if (e == cudaSuccess) {
            e = cudaEventSynchronize(e1);
        }
        float t = 0;
        if (e == cudaSuccess) {
            e = cudaEventElapsedTime(&t, e0, e1);
        }
        if (i > 0 && t < best) { /* the first run is a warm-up */
            best = t;
        }
    }
    cudaEventDestroy(e0);
    if (e1) {
        cudaEventDestroy(e1);
    }
    XC_CUDA_CHECK(e);
    *ms = best;
    return XC_OK;
}

xc_status xc_cuda_time_gemm(xc_backend *be, int m, int n, int k, int iters, double *ms) {
    xc_cuda_ctx *c = xc_cuda_get(be);
    xc_buf a = {0}, b = {0}, y = {0};
    xc_status st = XC_OK;
    XC_TRY_GOTO(xc_cuda_buf_alloc(be, (size_t)m * k * 2, &a), st, out);
    XC_TRY_GOTO(xc_cuda_buf_alloc(be, (size_t)n * k * 2, &b), st, out);
    XC_TRY_GOTO(xc_cuda_buf_alloc(be, (size_t)m * n * 4, &y), st, out);
    XC_TRY_GOTO(xc_cuda_fill_random(be, a.data, XC_DTYPE_BF16, (size_t)m * k, 1.0f, 11), st, out);
    XC_TRY_GOTO(xc_cuda_fill_random(be, b.data, XC_DTYPE_BF16, (size_t)n * k, 1.0f, 12), st, out);
    cudaEvent_t e0 = NULL, e1 = NULL;
    cudaError_t e = cudaEventCreate(&e0);
    if (e == cudaSuccess) {
        e = cudaEventCreate(&e1);
    }
    float best = 1e30f, alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < iters + 1 && e == cudaSuccess; i++) {
        e = cudaEventRecord(e0, c->stream);
        cublasStatus_t bs = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, b.data,
                                         CUDA_R_16BF, k, a.data, CUDA_R_16BF, k, &beta, y.data,
                                         CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            st = xc_cublas_fail(bs, "cublasGemmEx", __FILE__, __LINE__);
            break;
        }
        if (e == cudaSuccess) {
            e = cudaEventRecord(e1, c->stream);
        }
        if (e == cudaSuccess) {
            e = cudaEventSynchronize(e1);
        }
        float t = 0;
        if (e == cudaSuccess) {
            e = cudaEventElapsedTime(&t, e0, e1);
        }
        if (i > 0 && t < best) {
            best = t;
        }
    }
    if (e0) {
        cudaEventDestroy(e0);
    }
    if (e1) {
        cudaEventDestroy(e1);
    }
    if (st == XC_OK && e != cudaSuccess) {
        st = xc_cuda_fail(e, "gemm timing", __FILE__, __LINE__);
    }
    if (st == XC_OK) {
        *ms = best;
    }
out:
    xc_backend_buf_free(be, &a);
    xc_backend_buf_free(be, &b);
    xc_backend_buf_free(be, &y);
    return st;
}

/* ---- ops table ---- */

const xc_backend_ops xc_backend_cuda_ops = {
    .name = "cuda",
    .open = xc_cuda_open,
    .close = xc_cuda_close,
    .buf_alloc = xc_cuda_buf_alloc,
    .buf_free = xc_cuda_buf_free,
    .weights = xc_cuda_weights,
    .copy_in = xc_cuda_copy_in,
    .copy_out = xc_cuda_copy_out,
    .matmul = xc_cuda_matmul,
    .plora = xc_cuda_plora,
    .rmsnorm = xc_cuda_rmsnorm,
    .layernorm = xc_cuda_layernorm,
    .rope = xc_cuda_rope,
    .kv_store = xc_cuda_kv_store,
    .attention = xc_cuda_attention,
    .act = xc_cuda_act,
    .embed = xc_cuda_embed,
    .patchify = xc_cuda_patchify,
    .softmax = xc_cuda_softmax,
    .sync = xc_cuda_sync,
    .copy2d = xc_cuda_copy2d,
};

/* ---- sampling a micro-batch's rows on the device (issue 13.7) ---- */

xc_status xc_cuda_sample(xc_backend *be, float *logits, int ld, int n,
                         const xc_cuda_sample_row *rows, int m, int32_t *tok, float *lp,
                         int32_t *top_ids, float *top_lps) {
    if (strcmp(xc_backend_name(be), "cuda") != 0) {
        return xc_errf(XC_ERR_ARG, "xc_cuda_sample: backend %s is not cuda", xc_backend_name(be));
    }
    if (m < 0 || n < 1 || ld < n || (m > 0 && (!rows || !tok))) {
        return xc_errf(XC_ERR_ARG, "xc_cuda_sample: m %d, n %d, ld %d", m, n, ld);
    }
    if (m == 0) {
        return XC_OK;
    }
    xc_cuda_ctx *c = xc_cuda_get(be);
    bool any_lp = false;
    size_t n_seen = 0;
    for (int i = 0; i < m; i++) {
        const xc_cuda_sample_row *r = &rows[i];
        if (r->row < 0 || r->top_logprobs < -1 || r->top_logprobs > 20 || r->n_seen < 0 ||
            (r->n_seen > 0 && !r->seen) || (!r->greedy && !(r->temperature > 0.0f)) ||
            !(r->top_p > 0.0f && r->top_p <= 1.0f) || r->top_k < 0 ||
            !(r->u >= 0.0 && r->u < 1.0)) {
            return xc_errf(XC_ERR_ARG, "xc_cuda_sample: row %d has bad parameters", i);
        }
        for (int k = 0; k < r->n_seen; k++) {
            if (r->seen[k] < 0 || r->seen[k] >= n) {
                return xc_errf(XC_ERR_ARG, "xc_cuda_sample: row %d: seen id %d outside [0, %d)", i,
                               r->seen[k], n);
            }
        }
        any_lp = any_lp || r->top_logprobs >= 0;
        n_seen += (size_t)r->n_seen;
    }
    if (any_lp && (!lp || !top_ids || !top_lps)) {
        return xc_errf(XC_ERR_ARG, "xc_cuda_sample: logprobs asked without room for them");
    }
    int max_row = 0;
    for (int i = 0; i < m; i++) {
        max_row = rows[i].row > max_row ? rows[i].row : max_row;
    }
    XC_TRY(xc_cuda_dev_ptr(c, "sample", "logits", logits, xc_cuda_span(max_row + 1, n, ld, 4)));
    xc_cuda_sample_param *ps = xc_malloc((size_t)m * sizeof *ps);
    int32_t *seen = xc_malloc((n_seen ? n_seen : 1) * sizeof *seen);
    if (!ps || !seen) {
        xc_free(ps);
        xc_free(seen);
        return XC_ERR_NOMEM;
    }
    size_t off = 0;
    for (int i = 0; i < m; i++) {
        const xc_cuda_sample_row *r = &rows[i];
        ps[i] = (xc_cuda_sample_param){.row = r->row,
                                       .greedy = r->greedy,
                                       .top_k = r->top_k,
                                       .seen_off = (int)off,
                                       .n_seen = r->n_seen,
                                       .top_logprobs = r->top_logprobs,
                                       .temperature = r->greedy ? 1.0f : r->temperature,
                                       .top_p = r->top_p,
                                       .repetition_penalty = r->repetition_penalty,
                                       .u = r->u};
        if (r->n_seen > 0) {
            memcpy(seen + off, r->seen, (size_t)r->n_seen * sizeof *seen);
        }
        off += (size_t)r->n_seen;
    }
    /* results: ids (m), logprobs (m), alternatives (20 m) and theirs (20 m), 4 bytes each */
    size_t mz = (size_t)m;
    xc_status st = xc_cuda_scratch(c, &c->smp, &c->smp_size, mz * 42 * 4);
    void *d_ps = NULL, *d_seen = NULL;
    if (st == XC_OK) {
        st = xc_cuda_put(c, ps, mz * sizeof *ps, &d_ps);
    }
    if (st == XC_OK) {
        st = xc_cuda_put(c, seen, n_seen * sizeof *seen, &d_seen);
    }
    xc_free(ps);
    xc_free(seen);
    XC_TRY(st);
    int32_t *d_tok = c->smp;
    float *d_lp = (float *)c->smp + mz;
    int32_t *d_top = (int32_t *)c->smp + 2 * mz;
    float *d_top_lps = (float *)c->smp + 22 * mz;
    XC_CUDA_CHECK(xc_cuda_sample_launch(logits, ld, n, m, d_ps, d_seen, d_tok, d_lp, d_top,
                                        d_top_lps, c->stream));
    /* only the chosen ids, and the logprobs when some row asked */
    XC_CUDA_CHECK(
        cudaMemcpyAsync(tok, d_tok, mz * sizeof(int32_t), cudaMemcpyDeviceToHost, c->stream));
    if (any_lp) {
        XC_CUDA_CHECK(
            cudaMemcpyAsync(lp, d_lp, mz * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
        XC_CUDA_CHECK(cudaMemcpyAsync(top_ids, d_top, mz * 20 * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, c->stream));
        XC_CUDA_CHECK(cudaMemcpyAsync(top_lps, d_top_lps, mz * 20 * sizeof(float),
                                      cudaMemcpyDeviceToHost, c->stream));
    }
    XC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return xc_cuda_done(c, "sample");
}
