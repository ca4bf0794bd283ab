/* Sampling of a micro-batch's rows on the device (issue 13.7): one block per row applies the
 * repetition penalty, then greedy argmax, or temperature, top-k, top-p and the draw with the
 * row's uniform u (computed on the host by the CPU sampler's counter-based generator), by the
 * rules of worker/xc_sampler.c; and, when asked, the row's logprob and most likely alternatives.
 *
 * Written to be plainly correct rather than fast. The CPU sampler sorts candidates by descending
 * logit (ties: lower id first) and walks them accumulating probabilities; here every question of
 * the form "which sorted candidate is it" becomes a bisection over the 32-bit order-preserving key
 * of the logits: the largest key T for which (a block reduction over the row of) the count or the
 * probability mass of the candidates with key >= T passes a threshold, then one thread walks the
 * tokens of key T in id order. Tokens therefore equal the CPU sampler's, except when a draw falls
 * within float rounding of a boundary between two candidates (the device's expf and its
 * parallel double sums round differently from glibc's expf and sequential sums). */
#include "xc_cuda_common.cuh"

#define XC_SAMPLE_THREADS 256

/* Order-preserving key of a float: a > b (as floats) iff key(a) > key(b); -0 counts as +0. */
static __device__ __forceinline__ unsigned xc_smp_key(float f) {
    unsigned b = __float_as_uint(__fadd_rn(f, 0.0f)); /* -0 + 0 = +0 */
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Sums over the block in a fixed tree order; every thread gets the result. sh holds
 * XC_SAMPLE_THREADS entries. */
static __device__ double xc_smp_sum_d(double v, double *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = XC_SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            sh[threadIdx.x] += sh[threadIdx.x + s];
        }
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

static __device__ float xc_smp_max_f(float v, float *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = XC_SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        }
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

/* The largest value, lowest index on ties, among x[i] for i not in excl[0..n_excl); index n if
 * none. */
static __device__ int xc_smp_argmax(const float *x, int n, const int32_t *excl, int n_excl,
                                    float *shv, int *shi) {
    float bv = -INFINITY;
    int bi = n;
    for (int i = threadIdx.x; i < n; i += XC_SAMPLE_THREADS) {
        bool skip = false;
        for (int k = 0; k < n_excl && !skip; k++) {
            skip = excl[k] == i;
        }
        float v = x[i];
        if (!skip && (bi == n || v > bv || (v == bv && i < bi))) {
            bv = v;
            bi = i;
        }
    }
    shv[threadIdx.x] = bv;
    shi[threadIdx.x] = bi;
    __syncthreads();
    for (int s = XC_SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            float ov = shv[threadIdx.x + s];
            int oi = shi[threadIdx.x + s];
            if (oi < n && (shi[threadIdx.x] == n || ov > shv[threadIdx.x] ||
                           (ov == shv[threadIdx.x] && oi < shi[threadIdx.x]))) {
                shv[threadIdx.x] = ov;
                shi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    int r = shi[0];
    __syncthreads();
    return r;
}

/* What a row keeps: the top-k set (key >= tk; every token when tk is 0), and within it the
 * nucleus (key > tb, or key == tb and index <= idcut; every candidate when tb is 0 and idcut is
 * n). */
typedef struct xc_smp_set {
    unsigned tk, tb;
    int idcut;
} xc_smp_set;

static __device__ __forceinline__ bool xc_smp_in(const xc_smp_set *s, unsigned key, int i) {
    return key >= s->tk && (key > s->tb || (key == s->tb && i <= s->idcut));
}

/* Count (mass = 0) or probability mass (mass = 1) of the set's tokens with key >= t. */
static __device__ double xc_smp_reduce(const float *x, int n, float mx, const xc_smp_set *set,
                                       unsigned t, int mass, double *sh) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += XC_SAMPLE_THREADS) {
        unsigned k = xc_smp_key(x[i]);
        if (k >= t && xc_smp_in(set, k, i)) {
            acc += mass ? (double)expf(__fsub_rn(x[i], mx)) : 1.0;
        }
    }
    return xc_smp_sum_d(acc, sh);
}

/* The largest key t with reduce(t) >= thr (ge) or > thr (!ge); 0 when even reduce(0) fails (the
 * caller checks). reduce is non-increasing in t, so the answer is built bit by bit. */
static __device__ unsigned xc_smp_bisect(const float *x, int n, float mx, const xc_smp_set *set,
                                         int mass, double thr, bool ge, double *sh) {
    unsigned lo = 0;
    for (int b = 31; b >= 0; b--) {
        unsigned cand = lo | (1u << b);
        double v = xc_smp_reduce(x, n, mx, set, cand, mass, sh);
        if (ge ? v >= thr : v > thr) {
            lo = cand;
        }
    }
    return lo;
}

static __global__ void xc_cuda_sample_kernel(float *logits, int ld, int n,
                                             const xc_cuda_sample_param *ps, const int32_t *seen,
                                             int32_t *tok_out, float *lp_out, int32_t *top_ids,
                                             float *top_lps) {
    __shared__ double shd[XC_SAMPLE_THREADS];
    __shared__ float shf[XC_SAMPLE_THREADS];
    __shared__ int shi[XC_SAMPLE_THREADS];
    __shared__ int32_t picked[20];
    __shared__ int tok_sh;
    const xc_cuda_sample_param p = ps[blockIdx.x];
    float *x = logits + (size_t)p.row * (size_t)ld;
    /* 1. repetition penalty (distinct ids: no two threads touch one logit) */
    if (p.repetition_penalty != 1.0f) {
        for (int i = threadIdx.x; i < p.n_seen; i += XC_SAMPLE_THREADS) {
            int id = seen[p.seen_off + i];
            float v = x[id];
            x[id] = v < 0 ? __fmul_rn(v, p.repetition_penalty) : __fdiv_rn(v, p.repetition_penalty);
        }
    }
    __syncthreads();
    if (p.greedy) {
        int t = xc_smp_argmax(x, n, NULL, 0, shf, shi);
        if (threadIdx.x == 0) {
            tok_sh = t < n ? t : 0; /* an all -inf (or NaN) row: the CPU keeps index 0 */
        }
    } else {
        /* 2. temperature, in place like the CPU sampler (logprobs see it) */
        for (int i = threadIdx.x; i < n; i += XC_SAMPLE_THREADS) {
            x[i] = __fdiv_rn(x[i], p.temperature);
        }
        __syncthreads();
        float mx = -INFINITY;
        for (int i = threadIdx.x; i < n; i += XC_SAMPLE_THREADS) {
            mx = fmaxf(mx, x[i]);
        }
        mx = xc_smp_max_f(mx, shf);
        xc_smp_set set = {0u, 0u, n};
        bool topk = p.top_k > 0 && p.top_k < n;
        if (topk || p.top_p < 1.0f) {
            if (topk) { /* 3. every token >= the k-th largest (ties kept) */
                set.tk = xc_smp_bisect(x, n, mx, &set, 0, (double)p.top_k, true, shd);
            }
            if (p.top_p < 1.0f) { /* 4. nucleus within the top-k set */
                double denom = xc_smp_reduce(x, n, mx, &set, 0u, 1, shd);
                double target = (double)p.top_p * denom;
                unsigned tb = xc_smp_bisect(x, n, mx, &set, 1, target, true, shd);
                double g_above = 0.0, n_above = 0.0;
                if (tb != 0xffffffffu) { /* tokens sorted before the boundary group */
                    g_above = xc_smp_reduce(x, n, mx, &set, tb + 1u, 1, shd);
                    n_above = xc_smp_reduce(x, n, mx, &set, tb + 1u, 0, shd);
                }
                if (threadIdx.x == 0) { /* the boundary group in id order */
                    double acc = g_above;
                    bool first = n_above == 0.0;
                    int cut = -1;
                    for (int i = 0; i < n; i++) {
                        unsigned k = xc_smp_key(x[i]);
                        if (k != tb || k < set.tk) {
                            continue;
                        }
                        if (!first && !(acc < target)) {
                            break;
                        }
                        first = false;
                        acc += (double)expf(__fsub_rn(x[i], mx));
                        cut = i;
                    }
                    shi[0] = cut;
                }
                __syncthreads();
                set.tb = tb;
                set.idcut = shi[0];
                __syncthreads();
            }
            /* 5. the draw over the kept candidates in sorted order */
            double total = xc_smp_reduce(x, n, mx, &set, 0u, 1, shd);
            double r = p.u * total;
            bool ok = total > r;
            unsigned tc = ok ? xc_smp_bisect(x, n, mx, &set, 1, r, false, shd) : 0u;
            double h_above =
                ok && tc != 0xffffffffu ? xc_smp_reduce(x, n, mx, &set, tc + 1u, 1, shd) : 0.0;
            if (threadIdx.x == 0) {
                int t = -1, last = -1;
                unsigned last_key = 0xffffffffu;
                double acc = h_above;
                for (int i = 0; i < n; i++) {
                    unsigned k = xc_smp_key(x[i]);
                    if (!xc_smp_in(&set, k, i)) {
                        continue;
                    }
                    if (last < 0 || k <= last_key) { /* the last candidate in sorted order */
                        last = i;
                        last_key = k;
                    }
                    if (ok && k == tc && t < 0) {
                        acc += (double)expf(__fsub_rn(x[i], mx));
                        if (r < acc) {
                            t = i;
                        }
                    }
                }
                if (t < 0) { /* rounding: the CPU's fallback, or the group's last member */
                    t = last >= 0 ? last : 0;
                }
                tok_sh = t;
            }
        } else {
            /* 6. no filter: the first index whose running mass (index order) passes r */
            double denom = xc_smp_reduce(x, n, mx, &set, 0u, 1, shd);
            double r = p.u * denom;
            int lo = 0, hi = n - 1; /* smallest I with sum_{j <= I} p_j > r, else n - 1 */
            while (lo < hi) {
                int mid = lo + (hi - lo) / 2;
                double acc = 0.0;
                for (int i = threadIdx.x; i <= mid; i += XC_SAMPLE_THREADS) {
                    acc += (double)expf(__fsub_rn(x[i], mx));
                }
                acc = xc_smp_sum_d(acc, shd);
                if (acc > r) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            if (threadIdx.x == 0) {
                tok_sh = lo;
            }
        }
    }
    __syncthreads();
    int tok = tok_sh;
    if (threadIdx.x == 0) {
        tok_out[blockIdx.x] = tok;
    }
    if (p.top_logprobs < 0) {
        return;
    }
    /* 7. logprobs: log-softmax of the logits as they are now (after the penalty and, unless
     * greedy, the temperature), in double like xc_sampler_logprobs */
    float mx2 = -INFINITY;
    for (int i = threadIdx.x; i < n; i += XC_SAMPLE_THREADS) {
        mx2 = fmaxf(mx2, x[i]);
    }
    mx2 = xc_smp_max_f(mx2, shf);
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += XC_SAMPLE_THREADS) {
        s += exp((double)x[i] - (double)mx2);
    }
    s = xc_smp_sum_d(s, shd);
    double lse = (double)mx2 + log(s);
    if (threadIdx.x == 0) {
        lp_out[blockIdx.x] = (float)((double)x[tok] - lse);
    }
    for (int k = 0; k < p.top_logprobs; k++) {
        int t = xc_smp_argmax(x, n, picked, k, shf, shi);
        if (threadIdx.x == 0) {
            picked[k] = t < n ? t : 0;
            top_ids[(size_t)blockIdx.x * 20 + k] = picked[k];
            top_lps[(size_t)blockIdx.x * 20 + k] = (float)((double)x[picked[k]] - lse);
        }
        __syncthreads();
    }
}

extern "C" cudaError_t xc_cuda_sample_launch(float *logits, int ld, int n, int m,
                                             const xc_cuda_sample_param *params,
                                             const int32_t *seen, int32_t *tok, float *lp,
                                             int32_t *top_ids, float *top_lps,
                                             cudaStream_t stream) {
    if (m > 0) {
        xc_cuda_sample_kernel<<<m, XC_SAMPLE_THREADS, 0, stream>>>(logits, ld, n, params, seen, tok,
                                                                   lp, top_ids, top_lps);
    }
    return cudaGetLastError();
}
