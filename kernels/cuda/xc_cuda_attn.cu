/* Attention for the CUDA backend: f32 scaled dot-product attention with GQA over paged or
 * contiguous f32 or bf16 keys (widened to f32 in shared memory), causal (prefill and decode) or
 * bidirectional (CLIP).
 *
 * Flash style: no score matrix is ever stored. A block holds XC_CUDA_ATTN_WARPS query items (one
 * (query row, head) per warp) of one sequence and kv head, and walks the keys in tiles of 32 that
 * all its warps share through shared memory; each warp keeps an online softmax (running max, sum
 * and output accumulator in registers). Keys are grouped into fixed chunks of XC_CUDA_ATTN_CHUNK:
 * a warp's (max, sum, accumulator) of one chunk is folded into its total at the chunk's end. The
 * split decode path runs one block per chunk, stores the same per-chunk triples and folds them in
 * a second kernel with the same arithmetic, so a query gets the same bits on either path, alone
 * or batched, paged or contiguous, in one prefill or in chunks. All arithmetic uses explicit
 * round-to-nearest intrinsics so that the compiler cannot contract it differently per kernel. */
#include "xc_cuda_common.cuh"

#define TK    32                 /* keys per tile: one per lane in the score phase */
#define CH    XC_CUDA_ATTN_CHUNK /* keys per chunk (a multiple of TK) */
#define WARPS XC_CUDA_ATTN_WARPS

/* Row stride of the K/V tiles in shared memory: head_dim padded to 4 floats (16-byte loads), plus
 * 4 so that the 32 lanes reading 32 different key rows hit different banks. */
static __host__ __device__ __forceinline__ int xc_attn_hdp(int hd) {
    return (hd + 3) & ~3;
}

static __host__ __device__ __forceinline__ int xc_attn_stride(int hd) {
    return xc_attn_hdp(hd) + 4;
}

/* Folds one chunk's (m, l, a) into the total (M, L, A). */
template <int DPL>
static __device__ __forceinline__ void xc_attn_fold(float &M, float &L, float (&A)[DPL], bool &have,
                                                    float m, float l, const float (&a)[DPL]) {
    if (!have) {
        M = m;
        L = l;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            A[i] = a[i];
        }
        have = true;
        return;
    }
    float mn = fmaxf(M, m);
    float s1 = expf(__fsub_rn(M, mn)), s2 = expf(__fsub_rn(m, mn));
    L = __fmaf_rn(L, s1, __fmul_rn(l, s2));
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        A[i] = __fmaf_rn(A[i], s1, __fmul_rn(a[i], s2));
    }
    M = mn;
}

/* Keys visible to query row qi of sequence s. */
static __device__ __forceinline__ int xc_attn_limit(const xc_cuda_attn_seq &s, int qi, int causal) {
    return causal ? s.kv_len - s.n_q + qi + 1 : s.kv_len;
}

template <int DPL>
static __global__ void __launch_bounds__(WARPS * 32, 2)
    xc_cuda_attn_kernel(const xc_cuda_attn_params p, const xc_cuda_attn_work *work) {
    extern __shared__ float4 sm4[];
    float *sm = (float *)sm4;
    const int hd = p.head_dim, hdp = xc_attn_hdp(hd), st = xc_attn_stride(hd);
    float *ks = sm, *vs = ks + TK * st, *qs = vs + TK * st;
    const xc_cuda_attn_work w = work[blockIdx.x];
    const xc_cuda_attn_seq s = p.seqs[w.seq];
    const int g = blockIdx.y, G = p.n_heads / p.n_kv_heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int items = s.n_q * G;
    const int it = w.it0 + warp;
    const bool active = it < items;
    const int qi = active ? it / G : 0;
    const int h = g * G + (active ? it % G : 0);
    const int limit = active ? xc_attn_limit(s, qi, p.causal) : 0;
    const int last = min(w.it0 + WARPS, items) - 1;
    const int blim = xc_attn_limit(s, last / G, p.causal); /* the block's largest limit */
    const bool all = w.c1 <= w.c0;
    const int kbeg = all ? 0 : w.c0 * CH;
    const int kend = all ? blim : min(w.c1 * CH, blim);
    const size_t qrow = (size_t)s.q_start + (size_t)qi;

    float *qw = qs + warp * hdp;
    for (int d = lane; d < hdp; d += 32) {
        qw[d] = (active && d < hd) ? p.q[qrow * (size_t)p.ldq + (size_t)h * hd + d] : 0.0f;
    }
    float M = -INFINITY, L = 0.0f, A[DPL];
    float m = -INFINITY, l = 0.0f, a[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        A[i] = 0.0f;
        a[i] = 0.0f;
    }
    bool have = false, cur = false;

    for (int kt = kbeg; kt < kend; kt += TK) {
        if (kt % CH == 0 && cur) { /* a chunk ended: fold it and start the next */
            xc_attn_fold<DPL>(M, L, A, have, m, l, a);
            m = -INFINITY;
            l = 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                a[i] = 0.0f;
            }
            cur = false;
        }
        __syncthreads(); /* every warp is done with the previous tile (and qs is written) */
        for (int r = warp; r < TK; r += WARPS) {
            float *kr = ks + r * st, *vr = vs + r * st;
            int pidx = kt + r;
            if (pidx < kend) {
                size_t row = s.table_off >= 0
                                 ? (size_t)p.tables[s.table_off + pidx / p.block_size] *
                                           (size_t)p.block_size +
                                       (size_t)(pidx % p.block_size)
                                 : (size_t)s.kv_start + (size_t)pidx;
                size_t off = row * (size_t)p.ldkv + (size_t)g * hd;
                if (p.kv_bf16) { /* bf16 -> f32 is exact: the bits are the f32's top half */
                    const unsigned short *kp = (const unsigned short *)p.k + off;
                    const unsigned short *vp = (const unsigned short *)p.v + off;
                    for (int d = lane; d < hdp; d += 32) {
                        kr[d] = d < hd ? __uint_as_float((unsigned int)kp[d] << 16) : 0.0f;
                        vr[d] = d < hd ? __uint_as_float((unsigned int)vp[d] << 16) : 0.0f;
                    }
                } else {
                    const float *kp = (const float *)p.k + off;
                    const float *vp = (const float *)p.v + off;
                    for (int d = lane; d < hdp; d += 32) {
                        kr[d] = d < hd ? kp[d] : 0.0f;
                        vr[d] = d < hd ? vp[d] : 0.0f;
                    }
                }
            } else {
                for (int d = lane; d < hdp; d += 32) {
                    kr[d] = 0.0f;
                    vr[d] = 0.0f;
                }
            }
        }
        __syncthreads();
        const int nv = min(limit - kt, TK); /* this warp's visible keys in the tile */
        if (nv <= 0) {
            continue; /* uniform across the warp */
        }
        /* scores: lane j takes key kt + j */
        const float *kr = ks + lane * st;
        float sc = 0.0f;
        for (int d = 0; d < hdp; d += 4) {
            float4 qv = *(const float4 *)(qw + d);
            float4 kv = *(const float4 *)(kr + d);
            sc = __fmaf_rn(qv.x, kv.x, sc);
            sc = __fmaf_rn(qv.y, kv.y, sc);
            sc = __fmaf_rn(qv.z, kv.z, sc);
            sc = __fmaf_rn(qv.w, kv.w, sc);
        }
        sc = lane < nv ? __fmul_rn(sc, p.scale) : -INFINITY;
        float mt = sc;
        for (int o = 16; o > 0; o >>= 1) {
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
        }
        float mn = fmaxf(m, mt);
        float pj = lane < nv ? expf(__fsub_rn(sc, mn)) : 0.0f;
        float lt = pj;
        for (int o = 16; o > 0; o >>= 1) {
            lt = __fadd_rn(lt, __shfl_xor_sync(0xffffffffu, lt, o));
        }
        float corr = expf(__fsub_rn(m, mn));
        l = __fmaf_rn(l, corr, lt);
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            a[i] = __fmul_rn(a[i], corr);
        }
        for (int j = 0; j < nv; j++) {
            float pv = __shfl_sync(0xffffffffu, pj, j);
            const float *vr = vs + j * st;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                int d = lane + 32 * i;
                if (d < hdp) {
                    a[i] = __fmaf_rn(pv, vr[d], a[i]);
                }
            }
        }
        m = mn;
        cur = true;
    }
    if (!active) {
        return;
    }
    if (!all) { /* split: store this chunk's triple for the combine kernel */
        if (!cur) {
            return; /* no visible key in this chunk: the combine kernel never reads it */
        }
        int nch = (s.kv_len + CH - 1) / CH;
        float *rec = p.part + ((size_t)s.part_off + ((size_t)qi * p.n_heads + h) * (size_t)nch +
                               (size_t)w.c0) *
                                  (size_t)(hd + 2);
        if (lane == 0) {
            rec[0] = m;
            rec[1] = l;
        }
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            int d = lane + 32 * i;
            if (d < hd) {
                rec[2 + d] = a[i];
            }
        }
        return;
    }
    if (cur) {
        xc_attn_fold<DPL>(M, L, A, have, m, l, a);
    }
    float *o = p.out + qrow * (size_t)p.ldo + (size_t)h * hd;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        int d = lane + 32 * i;
        if (d < hd) {
            o[d] = __fdiv_rn(A[i], L);
        }
    }
}

/* Folds the per-chunk triples of each (row, head): one warp each, chunks in order. */
template <int DPL>
static __global__ void xc_cuda_attn_combine_kernel(const xc_cuda_attn_params p, const int32_t *rows,
                                                   int n_rows) {
    size_t gw = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (gw >= (size_t)n_rows * (size_t)p.n_heads) {
        return;
    }
    int r = (int)(gw / (size_t)p.n_heads), h = (int)(gw % (size_t)p.n_heads);
    const xc_cuda_attn_seq s = p.seqs[rows[2 * r]];
    int qi = rows[2 * r + 1], hd = p.head_dim;
    int nch = (s.kv_len + CH - 1) / CH;
    int used = (xc_attn_limit(s, qi, p.causal) + CH - 1) / CH;
    float M = -INFINITY, L = 0.0f, A[DPL], a[DPL];
    bool have = false;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        A[i] = 0.0f;
    }
    for (int c = 0; c < used; c++) {
        const float *rec = p.part + ((size_t)s.part_off + ((size_t)qi * p.n_heads + h) * nch + c) *
                                        (size_t)(hd + 2);
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            int d = lane + 32 * i;
            a[i] = d < hd ? rec[2 + d] : 0.0f;
        }
        xc_attn_fold<DPL>(M, L, A, have, rec[0], rec[1], a);
    }
    float *o = p.out + ((size_t)s.q_start + qi) * (size_t)p.ldo + (size_t)h * hd;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        int d = lane + 32 * i;
        if (d < hd) {
            o[d] = __fdiv_rn(A[i], L);
        }
    }
}

extern "C" size_t xc_cuda_attn_smem(int head_dim) {
    return (size_t)(2 * TK * xc_attn_stride(head_dim) + WARPS * xc_attn_hdp(head_dim)) *
           sizeof(float);
}

extern "C" cudaError_t xc_cuda_attn_setup(size_t max_bytes) {
    size_t want = xc_cuda_attn_smem(512);
    int bytes = (int)(want < max_bytes ? want : max_bytes);
    /* every result is checked: a failure here (no kernel image for this architecture, most
     * likely) must stop the open, not surface later as a launch error naming attention */
    cudaError_t e = cudaFuncSetAttribute(xc_cuda_attn_kernel<1>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess) {
        e = cudaFuncSetAttribute(xc_cuda_attn_kernel<2>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    }
    if (e == cudaSuccess) {
        e = cudaFuncSetAttribute(xc_cuda_attn_kernel<4>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    }
    if (e == cudaSuccess) {
        e = cudaFuncSetAttribute(xc_cuda_attn_kernel<8>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    }
    if (e == cudaSuccess) {
        e = cudaFuncSetAttribute(xc_cuda_attn_kernel<16>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    }
    return e;
}

extern "C" cudaError_t xc_cuda_attn_launch(const xc_cuda_attn_params *p,
                                           const xc_cuda_attn_work *work, int n_work,
                                           cudaStream_t stream) {
    if (n_work <= 0) {
        return cudaGetLastError();
    }
    dim3 grid((unsigned)n_work, (unsigned)p->n_kv_heads);
    size_t smem = xc_cuda_attn_smem(p->head_dim);
    int hd = p->head_dim;
    if (hd <= 32) {
        xc_cuda_attn_kernel<1><<<grid, WARPS * 32, smem, stream>>>(*p, work);
    } else if (hd <= 64) {
        xc_cuda_attn_kernel<2><<<grid, WARPS * 32, smem, stream>>>(*p, work);
    } else if (hd <= 128) {
        xc_cuda_attn_kernel<4><<<grid, WARPS * 32, smem, stream>>>(*p, work);
    } else if (hd <= 256) {
        xc_cuda_attn_kernel<8><<<grid, WARPS * 32, smem, stream>>>(*p, work);
    } else {
        xc_cuda_attn_kernel<16><<<grid, WARPS * 32, smem, stream>>>(*p, work);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t xc_cuda_attn_combine_launch(const xc_cuda_attn_params *p,
                                                   const int32_t *rows, int n_rows,
                                                   cudaStream_t stream) {
    size_t warps = (size_t)n_rows * (size_t)p->n_heads;
    if (warps == 0) {
        return cudaGetLastError();
    }
    unsigned blocks = xc_cuda_blocks(warps * 32, 256);
    int hd = p->head_dim;
    if (hd <= 32) {
        xc_cuda_attn_combine_kernel<1><<<blocks, 256, 0, stream>>>(*p, rows, n_rows);
    } else if (hd <= 64) {
        xc_cuda_attn_combine_kernel<2><<<blocks, 256, 0, stream>>>(*p, rows, n_rows);
    } else if (hd <= 128) {
        xc_cuda_attn_combine_kernel<4><<<blocks, 256, 0, stream>>>(*p, rows, n_rows);
    } else if (hd <= 256) {
        xc_cuda_attn_combine_kernel<8><<<blocks, 256, 0, stream>>>(*p, rows, n_rows);
    } else {
        xc_cuda_attn_combine_kernel<16><<<blocks, 256, 0, stream>>>(*p, rows, n_rows);
    }
    return cudaGetLastError();
}
