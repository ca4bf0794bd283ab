/* The compute backend: one vtable (CPU, CUDA), one args struct per op, thin wrappers.
 *
 * Conventions for every op:
 *  - Activations are f32 row-major on the CPU path. Pointers in args live in the backend's address
 *    space (host for CPU, device for CUDA): get them from xc_backend_buf_alloc/_weights.
 *  - Weights are nn.Linear-shaped (out, in) row-major, dtype f32, f16 or bf16.
 *  - "ld*" fields are row strides in elements; 0 means dense (the row length).
 *  - Every op is batch-invariant: a row's result does not depend on how many rows are computed
 *    with it, nor on the thread count (fixed reduction order). Tests hold backends to this.
 *  - Ops return XC_ERR_ARG for impossible shapes and XC_ERR_UNSUPPORTED for dtypes they lack. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_dtype.h"
#include "xc_status.h"

typedef struct xc_backend xc_backend;

/* A region of backend memory. owned = false when it is a view of memory owned elsewhere (the CPU
 * backend maps checkpoint weights without copying them). */
typedef struct xc_buf {
    void *data;
    size_t size;
    bool owned;
} xc_buf;

typedef struct xc_backend_conf {
    int n_threads; /* CPU: worker threads incl. the caller; 0 = all online cores */
    int device;    /* CUDA: device ordinal */
} xc_backend_conf;

/* A half-open row range [start, end): the image rows that get PLoRA. */
typedef struct xc_row_range {
    int32_t start;
    int32_t end;
} xc_row_range;

/* y (m, n) = alpha * x (m, k) @ w (n, k)^T [+ bias (n)] [+ y if accumulate]. */
typedef struct xc_matmul_args {
    const float *x;   /* (m, k), row stride ldx */
    const void *w;    /* (n, k) dense row-major, dtype w_dtype */
    xc_dtype w_dtype; /* f32, f16 or bf16 */
    const void *bias; /* (n) or NULL, dtype bias_dtype */
    xc_dtype bias_dtype;
    float *y; /* (m, n), row stride ldy; must not alias x */
    int m, n, k;
    int ldx, ldy;    /* 0 = dense */
    float alpha;     /* 0 is read as 1 so zero-initialised args mean a plain product */
    bool accumulate; /* add into y instead of overwriting it */
} xc_matmul_args;

/* Partial LoRA on row ranges only: for each row r inside a range,
 * y[r] += scale * b (n, rank) @ (a (rank, k) @ x[r]). Rows outside every range are untouched;
 * with n_ranges == 0 the op does nothing. Ranges must be sorted, disjoint and inside [0, m). */
typedef struct xc_plora_args {
    const float *x; /* (m, k), row stride ldx */
    const void *a;  /* Plora_A (rank, k), dtype ab_dtype */
    const void *b;  /* Plora_B (n, rank), dtype ab_dtype */
    xc_dtype ab_dtype;
    float *y; /* (m, n), row stride ldy */
    int m, n, k, rank;
    int ldx, ldy;
    float scale; /* lora_alpha / lora_r */
    const xc_row_range *ranges;
    int n_ranges;
} xc_plora_args;

/* RMSNorm (InternLM2): y = x * rsqrt(mean(x^2) + eps) * w; LayerNorm (CLIP):
 * y = (x - mean) * rsqrt(var + eps) * w + b. y may equal x. */
typedef struct xc_norm_args {
    const float *x; /* (m, n), row stride ldx */
    float *y;       /* (m, n), row stride ldy */
    const void *w;  /* (n), dtype wb_dtype */
    const void *b;  /* (n) or NULL (LayerNorm only), dtype wb_dtype */
    xc_dtype wb_dtype;
    int m, n;
    int ldx, ldy;
    float eps;
} xc_norm_args;

/* Rotary embedding, NeoX half-split: for d < half = head_dim/2,
 * x'[d] = x[d] cos - x[d+half] sin, x'[d+half] = x[d+half] cos + x[d] sin,
 * angle = pos * theta^(-2d/head_dim), with inv_freq = theta^(-2d/head_dim) and the angle each
 * rounded to f32 as the HF tables are built. In place on (m, n_heads, head_dim). */
typedef struct xc_rope_args {
    float *x;           /* (m, n_heads * head_dim), row stride ldx */
    const int32_t *pos; /* (m) absolute positions (host memory on every backend) */
    int m, n_heads, head_dim;
    int ldx;
    float theta;
} xc_rope_args;

/* Writes rows of keys and values into cache slots: k_cache[slot[i]] = k[i] (same for v); if two
 * rows name the same slot, the later row wins.
 * A slot is block * block_size + offset in a cache of (n_slots, width) rows. A bf16 cache stores
 * every value rounded to nearest even (xc_f32_to_bf16), an f32 cache stores it as is. */
typedef struct xc_kv_store_args {
    const float *k;       /* (m, width), row stride ldk */
    const float *v;       /* (m, width), row stride ldv */
    void *k_cache;        /* (n_slots, width) of cache_dtype */
    void *v_cache;        /* (n_slots, width) of cache_dtype */
    const int32_t *slots; /* (m) host memory */
    int m, width, ldk, ldv;
    int n_slots;          /* bounds check */
    xc_dtype cache_dtype; /* XC_DTYPE_F32 (0) or XC_DTYPE_BF16 */
} xc_kv_store_args;

/* One sequence of an attention call. Its n_q query rows are positions kv_len - n_q .. kv_len - 1
 * (causal) and see keys 0 .. their own position; without causal every query sees all kv_len keys.
 */
typedef struct xc_attn_seq {
    int q_start; /* first row of this sequence in q/out */
    int n_q;
    int kv_len;                 /* keys visible to the last query (cache length after this step) */
    const int32_t *block_table; /* host memory: (ceil(kv_len / block_size)) cache blocks, or NULL
                                   for contiguous keys at rows kv_start.. of k/v */
    int kv_start;
} xc_attn_seq;

/* Scaled dot-product attention with GQA: query head h uses kv head h / (n_heads / n_kv_heads).
 * Softmax in f32 with the max subtracted. out = softmax(q k^T * scale) v. head_dim <= 512; out
 * may be q (same stride); query rows of different sequences must not overlap. K and V are f32 or
 * bf16 (kv_dtype); bf16 is widened exactly to f32, so the result equals that of an f32 K/V holding
 * the same (rounded) values, bit for bit. */
typedef struct xc_attention_args {
    const float *q; /* (rows, n_heads * head_dim), row stride ldq */
    float *out;     /* (rows, n_heads * head_dim), row stride ldo */
    const void *k;  /* paged: (n_blocks * block_size, n_kv_heads * head_dim);
                       contiguous: (rows, n_kv_heads * head_dim) with row stride ldkv */
    const void *v;  /* same layout as k */
    int ldq, ldo, ldkv;
    int n_heads, n_kv_heads, head_dim;
    int block_size; /* paged mode only */
    float scale;    /* usually 1/sqrt(head_dim); 0 is read as 1/sqrt(head_dim) */
    bool causal;
    const xc_attn_seq *seqs; /* host memory */
    int n_seqs;
    xc_dtype kv_dtype; /* of k and v: XC_DTYPE_F32 (0) or XC_DTYPE_BF16 */
} xc_attention_args;

typedef enum xc_act_kind {
    XC_ACT_SILU_MUL = 0,   /* y = silu(x) * x2 (SwiGLU: x = gate w1, x2 = up w3) */
    XC_ACT_GELU = 1,       /* y = 0.5 x (1 + erf(x / sqrt 2)), exact (vision_proj) */
    XC_ACT_QUICK_GELU = 2, /* y = x * sigmoid(1.702 x) (CLIP MLP) */
    XC_ACT_ADD = 3,        /* y = x + x2 (residual) */
} xc_act_kind;

/* Elementwise ops on (m, n). y may equal x. */
typedef struct xc_act_args {
    xc_act_kind kind;
    const float *x;  /* (m, n), row stride ldx */
    const float *x2; /* (m, n), row stride ldx2; SILU_MUL and ADD only */
    float *y;        /* (m, n), row stride ldy */
    int m, n;
    int ldx, ldx2, ldy;
} xc_act_args;

/* y[i] = table[ids[i]] converted to f32. ids outside [0, vocab) are XC_ERR_ARG. */
typedef struct xc_embed_args {
    const void *table; /* (vocab, n), dtype table_dtype */
    xc_dtype table_dtype;
    const int32_t *ids; /* (m) host memory */
    float *y;           /* (m, n), row stride ldy */
    int m, n, vocab, ldy;
} xc_embed_args;

/* Conv patchify as im2col for stride == kernel: images (n_img, channels, size, size) f32 ->
 * y (n_img * grid * grid, channels * patch * patch) with grid = size / patch, patches in row-major
 * order and each row laid out (channel, ky, kx) like a Conv2d weight. size must be a multiple of
 * patch (XC_ERR_ARG otherwise). */
typedef struct xc_patchify_args {
    const float *images;
    float *y;
    int n_img, channels, size, patch;
} xc_patchify_args;

/* Row softmax in place with optional temperature (x / temperature first; 0 means 1), and argmax
 * of the input row (before temperature; first maximum wins) into argmax (host memory, m entries)
 * when argmax != NULL. */
typedef struct xc_softmax_args {
    float *x; /* (m, n), row stride ldx */
    int m, n, ldx;
    float temperature;
    bool skip_softmax; /* only compute argmax */
    int32_t *argmax;   /* (m) or NULL */
} xc_softmax_args;

/* 2-D strided copy (like cudaMemcpy2D) within backend memory: dst[r][0..n) = src[r][0..n) for
 * r < m, in floats. Used to split the interleaved wqkv output, splice image rows and so on. */
typedef struct xc_copy2d_args {
    const float *src; /* (m, n), row stride lds */
    float *dst;       /* (m, n), row stride ldd; must not overlap src */
    int m, n, lds, ldd;
} xc_copy2d_args;

typedef struct xc_backend_ops {
    const char *name; /* "cpu", "cuda" */
    xc_status (*open)(xc_backend *be, const xc_backend_conf *conf);
    void (*close)(xc_backend *be);
    xc_status (*buf_alloc)(xc_backend *be, size_t size, xc_buf *out);
    void (*buf_free)(xc_backend *be, xc_buf *buf);
    /* (optional) map host weights: CPU returns a view, CUDA uploads. NULL = alloc + copy_in */
    xc_status (*weights)(xc_backend *be, const void *host, size_t size, xc_buf *out);
    xc_status (*copy_in)(xc_backend *be, void *dst, const void *src, size_t n);
    xc_status (*copy_out)(xc_backend *be, void *dst, const void *src, size_t n);
    xc_status (*matmul)(xc_backend *be, const xc_matmul_args *a);
    xc_status (*plora)(xc_backend *be, const xc_plora_args *a);
    xc_status (*rmsnorm)(xc_backend *be, const xc_norm_args *a);
    xc_status (*layernorm)(xc_backend *be, const xc_norm_args *a);
    xc_status (*rope)(xc_backend *be, const xc_rope_args *a);
    xc_status (*kv_store)(xc_backend *be, const xc_kv_store_args *a);
    xc_status (*attention)(xc_backend *be, const xc_attention_args *a);
    xc_status (*act)(xc_backend *be, const xc_act_args *a);
    xc_status (*embed)(xc_backend *be, const xc_embed_args *a);
    xc_status (*patchify)(xc_backend *be, const xc_patchify_args *a);
    xc_status (*softmax)(xc_backend *be, const xc_softmax_args *a);
    xc_status (*sync)(xc_backend *be); /* (optional) NULL = synchronous */
    /* (optional) NULL = host memcpy per row, valid only for host-memory backends (cpu) */
    xc_status (*copy2d)(xc_backend *be, const xc_copy2d_args *a);
} xc_backend_ops;

extern const xc_backend_ops xc_backend_cpu_ops;
#ifdef XC_HAVE_CUDA
extern const xc_backend_ops xc_backend_cuda_ops;
#endif

/* Creates a backend by name ("cpu", "cuda"). XC_ERR_UNSUPPORTED if not compiled in,
 * XC_ERR_DEVICE if the device cannot be opened. */
xc_status xc_backend_create(const char *name, const xc_backend_conf *conf, xc_backend **out);

/* Closes the backend; NULL is a no-op. Buffers must have been freed. */
void xc_backend_destroy(xc_backend *be);

/* The backend's name. */
const char *xc_backend_name(const xc_backend *be);

/* The backend's private context (for its own implementation only). */
void *xc_backend_ctx(const xc_backend *be);
void xc_backend_set_ctx(xc_backend *be, void *ctx);

/* Buffers: alloc gives owned memory; weights gives a view (CPU) or an uploaded copy (CUDA) of
 * host memory that must outlive the buffer. free accepts a zeroed buf. */
xc_status xc_backend_buf_alloc(xc_backend *be, size_t size, xc_buf *out);
xc_status xc_backend_weights(xc_backend *be, const void *host, size_t size, xc_buf *out);
void xc_backend_buf_free(xc_backend *be, xc_buf *buf);
xc_status xc_backend_copy_in(xc_backend *be, void *dst, const void *src, size_t n);
xc_status xc_backend_copy_out(xc_backend *be, void *dst, const void *src, size_t n);

/* One wrapper per op; see the args structs above. */
xc_status xc_backend_matmul(xc_backend *be, const xc_matmul_args *a);
xc_status xc_backend_plora(xc_backend *be, const xc_plora_args *a);
xc_status xc_backend_rmsnorm(xc_backend *be, const xc_norm_args *a);
xc_status xc_backend_layernorm(xc_backend *be, const xc_norm_args *a);
xc_status xc_backend_rope(xc_backend *be, const xc_rope_args *a);
xc_status xc_backend_kv_store(xc_backend *be, const xc_kv_store_args *a);
xc_status xc_backend_attention(xc_backend *be, const xc_attention_args *a);
xc_status xc_backend_act(xc_backend *be, const xc_act_args *a);
xc_status xc_backend_embed(xc_backend *be, const xc_embed_args *a);
xc_status xc_backend_patchify(xc_backend *be, const xc_patchify_args *a);
xc_status xc_backend_softmax(xc_backend *be, const xc_softmax_args *a);
xc_status xc_backend_sync(xc_backend *be);
xc_status xc_backend_copy2d(xc_backend *be, const xc_copy2d_args *a);
