/* xcpipe bench attention: the CPU attention kernel on long contexts (a causal prefill of N prompt
 * rows over a paged KV cache, and decode over the same cache), f32 or bf16 KV, at 1 and 2
 * threads; checks on the way that rows of the prefill have the bits of single-query calls (batch
 * invariance at this length) and that the call's memory growth is far below a score matrix. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "xc_backend.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_dtype.h"
#include "xc_mem.h"
#include "xc_time.h"

typedef struct ba_conf {
    int rows, heads, kv_heads, head_dim, block_size, reps, decode_seqs;
    xc_conf_list threads;
    const char *kv_dtype;
} ba_conf;

static const xc_conf_entry ba_entries[] = {
    XC_CONF_INT("rows", "XC_BENCH_ROWS", ba_conf, rows, 4096, 1, 1 << 17,
                "prompt rows of the causal prefill (= keys in the cache)"),
    XC_CONF_INT("heads", NULL, ba_conf, heads, 32, 1, 256, "query heads"),
    XC_CONF_INT("kv-heads", NULL, ba_conf, kv_heads, 8, 1, 256, "KV heads (GQA)"),
    XC_CONF_INT("head-dim", NULL, ba_conf, head_dim, 128, 1, 512, "head dimension"),
    XC_CONF_INT("block-size", NULL, ba_conf, block_size, 16, 1, 4096, "KV block size in tokens"),
    XC_CONF_INT("reps", NULL, ba_conf, reps, 2, 1, 100, "timed calls per case (best is kept)"),
    XC_CONF_INT("decode-seqs", NULL, ba_conf, decode_seqs, 8, 1, 256,
                "sequences in the batched decode case (each over all rows)"),
    XC_CONF_LIST("threads", "XC_BENCH_THREADS", ba_conf, threads,
                 "thread counts to time, e.g. --threads 1,2 (default)"),
    XC_CONF_STR("kv-dtype", "XC_KV_DTYPE", ba_conf, kv_dtype, "bf16", "bf16|f32",
                "KV cache element type"),
};

static const xc_conf_spec ba_spec = {
    .usage = "xcpipe bench attention [options]",
    .summary = "Times CPU attention at InternLM2-7B shapes (32 heads, 8 KV heads, head dim 128): a "
               "causal prefill of --rows prompt rows over a paged KV cache, one decode query over "
               "all of them, and --decode-seqs such queries batched. Prints ms, GFLOP/s (4 x heads "
               "x head_dim per visible query-key pair) and KV GB/s for decode; checks that prefill "
               "rows equal single-query calls bit for bit and reports the call's peak RSS growth "
               "against the size of one score matrix.",
    .entries = ba_entries,
    .n_entries = sizeof ba_entries / sizeof ba_entries[0],
};

static long ba_maxrss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static uint64_t ba_rng(uint64_t *s) {
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float ba_uniform(uint64_t *s) { /* [-1, 1) */
    return (float)((double)(ba_rng(s) >> 11) * 0x1p-52 - 1.0);
}

static double ba_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Times one attention call: the best wall time of reps calls, and the process CPU time (all
 * threads) of that call, which a loaded machine inflates far less than the wall time. */
static xc_status ba_time(xc_backend *be, const xc_attention_args *a, int reps, double *best_ms,
                         double *cpu_ms) {
    *best_ms = 1e30;
    for (int r = 0; r < reps; r++) {
        double c0 = ba_cpu_s(), t0 = xc_now_s();
        XC_TRY(xc_backend_attention(be, a));
        double ms = (xc_now_s() - t0) * 1e3, cms = (ba_cpu_s() - c0) * 1e3;
        if (ms < *best_ms) {
            *best_ms = ms;
            *cpu_ms = cms;
        }
    }
    return XC_OK;
}

int xc_cmd_bench_attention(int argc, char **argv) {
    ba_conf c;
    xc_status st = xc_conf_parse(&ba_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench attention: %s\n", xc_err_last());
        return 2;
    }
    if (c.heads % c.kv_heads != 0) {
        fprintf(stderr, "xcpipe bench attention: --heads %d is not a multiple of --kv-heads %d\n",
                c.heads, c.kv_heads);
        return 2;
    }
    int threads[16], n_thr = 0;
    for (int i = 0; i < c.threads.n; i++) { /* items may hold comma-separated lists */
        const char *p = c.threads.items[i];
        while (*p) {
            char *end = NULL;
            long val = strtol(p, &end, 10);
            if (end == p || (*end && *end != ',') || val < 1 || val > 1024 || n_thr == 16) {
                fprintf(stderr, "xcpipe bench attention: --threads: bad value '%s'\n",
                        c.threads.items[i]);
                return 2;
            }
            threads[n_thr++] = (int)val;
            p = *end ? end + 1 : end;
        }
    }
    if (n_thr == 0) {
        threads[n_thr++] = 1;
        threads[n_thr++] = 2;
    }
    xc_dtype kvt = !strcmp(c.kv_dtype, "f32") ? XC_DTYPE_F32 : XC_DTYPE_BF16;
    int N = c.rows, hd = c.head_dim, qw = c.heads * hd, kw = c.kv_heads * hd;
    int bs = c.block_size, nb = (N + bs - 1) / bs, S = c.decode_seqs;
    size_t es = xc_dtype_size(kvt);
    size_t slots = (size_t)nb * (size_t)bs;
    float *q = xc_malloc((size_t)N * qw * sizeof(float));
    float *out = xc_malloc((size_t)N * qw * sizeof(float));
    float *one = xc_malloc((size_t)S * qw * sizeof(float));
    void *k = xc_malloc(slots * kw * es), *v = xc_malloc(slots * kw * es);
    int32_t *table = xc_malloc((size_t)nb * sizeof(int32_t));
    xc_attn_seq *seqs = xc_malloc((size_t)S * sizeof(xc_attn_seq));
    if (!q || !out || !one || !k || !v || !table || !seqs) {
        fprintf(stderr, "xcpipe bench attention: out of memory\n");
        st = XC_ERR_NOMEM;
        goto done;
    }
    uint64_t rs = 42;
    for (size_t i = 0; i < (size_t)N * qw; i++) {
        q[i] = ba_uniform(&rs) * 2.0f;
    }
    for (size_t i = 0; i < slots * kw; i++) {
        float kx = ba_uniform(&rs) * 2.0f, vx = ba_uniform(&rs);
        if (kvt == XC_DTYPE_BF16) {
            ((uint16_t *)k)[i] = xc_f32_to_bf16(kx);
            ((uint16_t *)v)[i] = xc_f32_to_bf16(vx);
        } else {
            ((float *)k)[i] = kx;
            ((float *)v)[i] = vx;
        }
    }
    for (int b = 0; b < nb; b++) { /* scattered blocks, as a pool hands them out */
        table[b] = (int32_t)((size_t)b * 7919u % (size_t)nb);
    }
    if (nb % 7919 == 0) {
        for (int b = 0; b < nb; b++) {
            table[b] = b;
        }
    }
    memset(out, 0, (size_t)N * qw * sizeof(float)); /* fault every buffer in before the RSS probe */
    memset(one, 0, (size_t)S * qw * sizeof(float));
    double pairs = (double)N * (N + 1) / 2.0; /* visible (query, key) pairs per head */
    double flops = 4.0 * c.heads * hd * pairs;
    printf("attention: %d prompt rows, %d heads / %d KV heads, head dim %d, paged KV (blocks of "
           "%d) in %s: %.1f MiB of K+V\n",
           N, c.heads, c.kv_heads, hd, bs, xc_dtype_name(kvt),
           2.0 * (double)N * kw * es / 1048576.0);
    printf("one score matrix (heads x rows x rows f32) would be %.1f MiB\n",
           (double)c.heads * N * N * 4.0 / 1048576.0);
    printf("%-16s %7s %10s %10s %9s %13s %8s\n", "case", "threads", "wall ms", "CPU ms", "GFLOP/s",
           "GFLOP/CPU-s", "KV GB/s");
    for (int ti = 0; ti < n_thr && st == XC_OK; ti++) {
        xc_backend *be = NULL;
        xc_backend_conf bc = {.n_threads = threads[ti]};
        st = xc_backend_create("cpu", &bc, &be);
        if (st != XC_OK) {
            break;
        }
        xc_attn_seq pre = {.q_start = 0, .n_q = N, .kv_len = N, .block_table = table};
        xc_attention_args a = {.q = q,
                               .out = out,
                               .k = k,
                               .v = v,
                               .n_heads = c.heads,
                               .n_kv_heads = c.kv_heads,
                               .head_dim = hd,
                               .block_size = bs,
                               .causal = true,
                               .seqs = &pre,
                               .n_seqs = 1,
                               .kv_dtype = kvt};
        long rss0 = ba_maxrss_kb();
        double ms = 0, cms = 0;
        st = ba_time(be, &a, c.reps, &ms, &cms);
        long rss_grow = ba_maxrss_kb() - rss0;
        if (st != XC_OK) {
            xc_backend_destroy(be);
            break;
        }
        printf("%-16s %7d %10.1f %10.1f %9.2f %13.2f %8s\n", "prefill", threads[ti], ms, cms,
               flops / ms / 1e6, flops / cms / 1e6, "-");
        if (ti == 0) {
            printf("peak RSS growth during the prefill calls: %ld KiB (all buffers were touched "
                   "before)\n",
                   rss_grow);
        }
        /* decode: the last row alone, then S sequences each with one query over all N keys;
         * every result must equal the prefill's row bit for bit */
        int rows_chk[3] = {0, N / 2, N - 1};
        for (int r = 0; r < 3 && st == XC_OK; r++) {
            int row = rows_chk[r];
            xc_attn_seq d = {.q_start = 0, .n_q = 1, .kv_len = row + 1, .block_table = table};
            xc_attention_args da = a;
            da.q = q + (size_t)row * qw;
            da.out = one;
            da.seqs = &d;
            st = xc_backend_attention(be, &da);
            if (st == XC_OK && memcmp(one, out + (size_t)row * qw, (size_t)qw * sizeof(float))) {
                st = xc_errf(XC_ERR_PROTO,
                             "row %d: the single-query call differs from the "
                             "prefill's row (batch invariance broken)",
                             row);
            }
        }
        for (int ns = 1; ns <= S && st == XC_OK; ns = ns == S ? S + 1 : S) {
            for (int i = 0; i < ns; i++) {
                seqs[i] = (xc_attn_seq){.q_start = i, .n_q = 1, .kv_len = N, .block_table = table};
            }
            xc_attention_args da = a;
            da.q = q + (size_t)(N - ns) * qw; /* the last ns rows' queries, one per sequence */
            da.out = one;
            da.seqs = seqs;
            da.n_seqs = ns;
            st = ba_time(be, &da, c.reps + 2, &ms, &cms);
            double kvbytes = 2.0 * N * kw * es * ns;
            char label[32];
            snprintf(label, sizeof label, "decode x %d", ns);
            if (st == XC_OK) {
                double f = 4.0 * c.heads * hd * (double)N * ns;
                printf("%-16s %7d %10.3f %10.3f %9.2f %13.2f %8.2f\n", label, threads[ti], ms, cms,
                       f / ms / 1e6, f / cms / 1e6, kvbytes / ms / 1e6);
            }
        }
        xc_backend_destroy(be);
    }
    if (st == XC_OK) {
        printf("prefill rows 0, %d, %d equal single-query calls bit for bit\n", N / 2, N - 1);
    }
done:
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench attention: %s\n", xc_err_last());
    }
    xc_free(q);
    xc_free(out);
    xc_free(one);
    xc_free(k);
    xc_free(v);
    xc_free(table);
    xc_free(seqs);
    return st == XC_OK ? 0 : 1;
}
