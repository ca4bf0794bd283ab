/* Internal to kernels/cuda: the extern "C" launchers of the .cu files (one file per op family)
 * that xc_cuda_backend.c calls. Every launcher enqueues its kernels on `stream` and returns
 * cudaGetLastError(); pointers are device memory unless a comment says otherwise, and host-side
 * arrays (positions, ids, slots, block tables) have already been copied to device memory by the
 * backend's parameter ring. Shapes have been validated by the caller (xc_opcheck). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Weight dtypes as the kernels see them (xc_dtype values: 0 f32, 1 f16, 2 bf16). */
enum { XC_CUDA_F32 = 0, XC_CUDA_F16 = 1, XC_CUDA_BF16 = 2 };

/* ---- xc_cuda_matmul.cu: conversions and epilogues around the cuBLAS GEMMs ---- */

/* dst (m, k) dense 16-bit (bf16 when to_bf16, else f16) = src (m, k) row stride lds, rounded to
 * nearest even. */
cudaError_t xc_cuda_convert_launch(const float *src, int lds, void *dst, int m, int k, int to_bf16,
                                   cudaStream_t stream);

/* y (m, n) row stride ldy += bias (n), bias of dtype bt. */
cudaError_t xc_cuda_bias_launch(float *y, int ldy, const void *bias, int bt, int m, int n,
                                cudaStream_t stream);

/* ---- xc_cuda_norm.cu ---- */

/* RMSNorm (layernorm = 0, b unused) or LayerNorm over rows of x (m, n) into y; w, b of dtype wt. */
cudaError_t xc_cuda_norm_launch(const float *x, int ldx, float *y, int ldy, const void *w,
                                const void *b, int wt, int m, int n, float eps, int layernorm,
                                cudaStream_t stream);

/* ---- xc_cuda_rope.cu ---- */

/* NeoX RoPE in place on x (m, n_heads * head_dim): pos (m) and inv_freq (head_dim / 2, computed on
 * the host in double and rounded to f32, as the CPU backend does) in device memory. */
cudaError_t xc_cuda_rope_launch(float *x, int ldx, const int32_t *pos, const float *inv_freq, int m,
                                int n_heads, int head_dim, cudaStream_t stream);

/* ---- xc_cuda_kv.cu ---- */

/* For i < n: k_cache[slot[i]] = k[row[i]] and the same for v (width values; bf16 != 0: the
 * cache is bf16 and every value is rounded to nearest even). The rows name distinct slots (the
 * backend drops rows that a later row overwrites). */
cudaError_t xc_cuda_kv_store_launch(const float *k, int ldk, const float *v, int ldv, void *k_cache,
                                    void *v_cache, int bf16, const int32_t *row,
                                    const int32_t *slot, int n, int width, cudaStream_t stream);

/* ---- xc_cuda_act.cu ---- */

/* Elementwise op `kind` (xc_act_kind values) on (m, n). */
cudaError_t xc_cuda_act_launch(int kind, const float *x, int ldx, const float *x2, int ldx2,
                               float *y, int ldy, int m, int n, cudaStream_t stream);

/* ---- xc_cuda_embed.cu: embedding gather and patchify ---- */

/* y[i] = table[ids[i]] converted to f32 (table dtype tt, rows of n). */
cudaError_t xc_cuda_embed_launch(const void *table, int tt, const int32_t *ids, float *y, int ldy,
                                 int m, int n, cudaStream_t stream);

/* im2col for stride == kernel (see xc_patchify_args). */
cudaError_t xc_cuda_patchify_launch(const float *images, float *y, int n_img, int channels,
                                    int size, int patch, cudaStream_t stream);

/* ---- xc_cuda_softmax.cu ---- */

/* Per row of x (m, n): argmax of the input (first maximum) into argmax (device, m) when not NULL;
 * then unless skip, x = softmax(x / t) in place. */
cudaError_t xc_cuda_softmax_launch(float *x, int ldx, int m, int n, float t, int skip,
                                   int32_t *argmax, cudaStream_t stream);

/* ---- xc_cuda_attn.cu ---- */

/* Keys per fixed chunk: every query folds its keys chunk by chunk (chunk c = keys
 * [c * XC_CUDA_ATTN_CHUNK, (c + 1) * XC_CUDA_ATTN_CHUNK)), whether one block walks all chunks
 * (prefill) or one block per chunk writes partials that a second kernel folds (split decode); the
 * fold is the same arithmetic either way, so both give the same bits. */
#define XC_CUDA_ATTN_CHUNK 512
/* Query items (query row, head) per block: one warp each. */
#define XC_CUDA_ATTN_WARPS 8

/* One sequence as the kernels see it. table_off < 0: contiguous keys from kv_start. */
typedef struct xc_cuda_attn_seq {
    int32_t q_start, n_q, kv_len, kv_start, table_off;
    int32_t part_off; /* split mode: first partial record of this sequence */
} xc_cuda_attn_seq;

/* One block of work: XC_CUDA_ATTN_WARPS consecutive items of a sequence from it0, for one kv head
 * (blockIdx.y), over chunks [c0, c1) (c1 <= c0 means all chunks, with the output written). */
typedef struct xc_cuda_attn_work {
    int32_t seq, it0, c0, c1;
} xc_cuda_attn_work;

typedef struct xc_cuda_attn_params {
    const float *q;
    float *out;
    const void *k, *v; /* f32, or bf16 when kv_bf16 (widened exactly to f32 on load) */
    int kv_bf16;
    int ldq, ldo, ldkv;
    int n_heads, n_kv_heads, head_dim, block_size;
    float scale;
    int causal;
    const xc_cuda_attn_seq *seqs; /* device (n_seqs) */
    const int32_t *tables;        /* device: all block tables, concatenated */
    float *part;                  /* split mode: partial records of (head_dim + 2) floats */
} xc_cuda_attn_params;

/* Shared memory bytes the attention kernel needs for head_dim (the backend raises the kernel's
 * limit once at open). */
size_t xc_cuda_attn_smem(int head_dim);

/* Raises the attention kernels' dynamic shared memory limit to cover head_dim 512, or to
 * max_bytes (the device's opt-in limit) if that is less. */
cudaError_t xc_cuda_attn_setup(size_t max_bytes);

/* Runs n_work blocks (times n_kv_heads). With split, blocks write partial records; then
 * xc_cuda_attn_combine_launch folds them for the n_rows (seq, query) pairs in rows (device,
 * 2 ints each). */
cudaError_t xc_cuda_attn_launch(const xc_cuda_attn_params *p, const xc_cuda_attn_work *work,
                                int n_work, cudaStream_t stream);
cudaError_t xc_cuda_attn_combine_launch(const xc_cuda_attn_params *p, const int32_t *rows,
                                        int n_rows, cudaStream_t stream);

/* ---- xc_cuda_bench.cu: ceilings for xcpipe bench (random data, no libraries but cuBLAS) ---- */

/* Fills n values of dtype t (0 f32, 2 bf16) with uniform values in [-a, a) from seed. */
cudaError_t xc_cuda_fill_random_launch(void *p, int t, size_t n, float a, uint64_t seed,
                                       cudaStream_t stream);

/* ---- xc_cuda_sample.cu: sampling a micro-batch's rows (issue 13.7) ---- */

/* One row to sample (see xc_cuda.h's xc_cuda_sample_row; seen ids at seen_off of the array). */
typedef struct xc_cuda_sample_param {
    int row, greedy, top_k, seen_off, n_seen, top_logprobs; /* top_logprobs -1: no logprobs */
    float temperature, top_p, repetition_penalty;
    double u;
} xc_cuda_sample_param;

/* For each of the m params (one block each): the token into tok[b]; with logprobs, lp[b] and
 * top_logprobs alternatives at top_ids / top_lps + 20 b. Logits (rows of n at stride ld) are
 * modified in place (penalty, temperature). */
cudaError_t xc_cuda_sample_launch(float *logits, int ld, int n, int m,
                                  const xc_cuda_sample_param *params, const int32_t *seen,
                                  int32_t *tok, float *lp, int32_t *top_ids, float *top_lps,
                                  cudaStream_t stream);

#ifdef __cplusplus
}
#endif
