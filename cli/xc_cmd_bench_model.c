/* xcpipe bench model / bench vision: whole-model throughput on random weights of InternLM2 and
 * CLIP ViT-L/14 shapes, in llama-bench's terms (pp = prompt tokens/s, tg = generated tokens/s),
 * with decode compared against the memory-bandwidth roofline measured in the same run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "xc_bench_ckpt.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_engine.h"
#include "xc_kbench.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_model_config.h"
#include "xc_time.h"
#include "xc_tiny.h"
#include "xc_vision.h"

/* ---- shared: a cached random checkpoint ---- */

/* Writes the checkpoint of c into dir unless dir already holds one made from the same stamp. The
 * values are uniform (one hash each) and written by one thread per core: a few seconds per GB on
 * a many-core host, where normal values on one thread took about 50 s per GB. */
xc_status xc_bench_ensure_ckpt(const char *dir, const xc_tiny_conf *c, const char *stamp_in) {
    char path[1024], stamp[512];
    snprintf(path, sizeof path, "%s/xcpipe-bench.stamp", dir);
    snprintf(stamp, sizeof stamp, "%s values=uniform", stamp_in);
    char *old = NULL;
    if (xc_file_read_all(path, 4096, &old, NULL) == XC_OK) {
        int same = strcmp(old, stamp) == 0;
        xc_free(old);
        if (same) {
            return XC_OK;
        }
    }
    uint64_t bytes = 0, params = 0;
    size_t n_t = 0;
    XC_TRY(xc_tiny_count(c, &n_t, &params, &bytes));
    xc_tiny_conf w = *c;
    w.force = true;
    w.uniform = true;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    w.threads = cores < 1 ? 1 : cores > 64 ? 64 : (int)cores;
    fprintf(
        stderr,
        "bench: writing a random checkpoint of %.2f GB (%zu tensors) to %s with %d threads ...\n",
        (double)bytes / 1e9, n_t, dir, w.threads);
    double t0 = xc_now_s();
    XC_TRY(xc_tiny_write(dir, &w));
    fprintf(stderr, "bench: written in %.1f s\n", xc_now_s() - t0);
    FILE *f = fopen(path, "w");
    if (!f) {
        return xc_errf(XC_ERR_IO, "cannot write %s", path);
    }
    fputs(stamp, f);
    fclose(f);
    return XC_OK;
}

int xc_bench_int_list(const char *s, int *out, int max) {
    int n = 0;
    const char *p = s;
    while (*p && n < max) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v <= 0 || v > 1 << 20 || (*end && *end != ',')) {
            return -1;
        }
        out[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    return *p ? -1 : n;
}

/* ---- bench model ---- */

typedef struct bm_conf {
    int layers, hidden, heads, kv_heads, inter, vocab, rank;
    const char *weights, *dir, *threads, *pp;
    int tg;
    int reps;
    int chunk;
    bool paired;
} bm_conf;

static const xc_conf_entry bm_entries[] = {
    XC_CONF_INT("layers", NULL, bm_conf, layers, 3, 1, 256, "decoder layers"),
    XC_CONF_INT("hidden", NULL, bm_conf, hidden, 4096, 64, 16384, "hidden size"),
    XC_CONF_INT("heads", NULL, bm_conf, heads, 32, 1, 256, "attention heads"),
    XC_CONF_INT("kv-heads", NULL, bm_conf, kv_heads, 8, 1, 256, "key/value heads"),
    XC_CONF_INT("inter", NULL, bm_conf, inter, 14336, 64, 65536, "FFN width"),
    XC_CONF_INT("vocab", NULL, bm_conf, vocab, 32000, 16, 262144, "vocabulary (output head rows)"),
    XC_CONF_INT("rank", NULL, bm_conf, rank, 256, 1, 1024, "PLoRA rank"),
    XC_CONF_STR("weights", NULL, bm_conf, weights, "bf16", "bf16|f16|f32", "weight dtype"),
    XC_CONF_STR("dir", "XC_BENCH_DIR", bm_conf, dir, NULL, NULL,
                "where to keep the random checkpoint (default /tmp/xcpipe-bench-model-...)"),
    XC_CONF_STR("threads", NULL, bm_conf, threads, "1,2", NULL, "thread counts to run"),
    XC_CONF_STR("pp", NULL, bm_conf, pp, "128,512", NULL, "prompt lengths for prefill"),
    XC_CONF_INT("tg", NULL, bm_conf, tg, 128, 2, 4096, "generated tokens for decode"),
    XC_CONF_INT("reps", NULL, bm_conf, reps, 2, 1, 100, "repetitions (best is printed)"),
    XC_CONF_INT("chunk", NULL, bm_conf, chunk, 0, 0, 65536,
                "prefill rows per forward (0, or more than the longest --pp: one forward per "
                "prompt; the engine's own default is 256)"),
    XC_CONF_BOOL("paired", NULL, bm_conf, paired, false,
                 "one more decode run with a read-bandwidth sample after every step: decode's "
                 "share of the reads taken between its own steps (about 3 reads of the 1 GiB "
                 "buffer per step, so about 20 s more per thread count)"),
};

static const xc_conf_spec bm_spec = {
    "xcpipe bench model [--layers L --hidden H ... --weights bf16|f32]",
    "Prefill (pp) and decode (tg) tokens/s on random InternLM2-shaped weights, like llama-bench, "
    "and decode as a fraction of the read bandwidth measured in the same run (best of passes "
    "before and between the decode repetitions). The defaults are "
    "3 layers of the real 7B shapes (1.57 GB of bf16 weights read per token).",
    bm_entries, sizeof bm_entries / sizeof bm_entries[0]};

typedef struct tg_timer {
    double t_first, t_last;
    int n;
} tg_timer;

static bool tg_tick(void *user, int32_t tok) {
    (void)tok;
    tg_timer *t = user;
    double now = xc_now_s();
    if (t->n == 0) {
        t->t_first = now;
    }
    t->t_last = now;
    t->n++;
    return true;
}

/* Greedy generation of n_new tokens after n_prompt ids; cb(user, token) after every token (it may
 * do its own timing); *total_s: the whole call. */
static xc_status run_gen(xc_engine *e, int32_t *ids, int n_prompt, int n_new,
                         bool (*cb)(void *, int32_t), void *user, double *total_s) {
    xc_prompt p = {.ids = ids, .n = n_prompt};
    xc_gen_params g = {
        .sampling = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1},
        .max_new_tokens = n_new};
    int32_t *out = xc_malloc((size_t)n_new * sizeof(int32_t));
    if (!out) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    int n_out = 0;
    double t0 = xc_now_s();
    xc_status st = xc_engine_generate(e, &p, &g, cb, user, out, &n_out, NULL);
    *total_s = xc_now_s() - t0;
    xc_free(out);
    return st;
}

/* --paired: after every decode step (the callback runs between steps, on the generating thread)
 * one bandwidth sample with the same thread count; the step times exclude the samples. */
typedef struct tg_paired {
    xc_backend *be;
    xc_kbench_bw *bwb;
    double t_start; /* when the current step began (after the last sample) */
    double step_s;  /* decode seconds over the counted steps */
    double inv_bw;  /* sum of 1 / sample GB/s */
    double *shares; /* per counted step: step GB/s over the sample after it */
    double step_gb; /* GB a step reads */
    int n, n_tok;   /* counted steps, tokens seen */
    xc_status st;
} tg_paired;

static bool tg_paired_tick(void *user, int32_t tok) {
    (void)tok;
    tg_paired *p = user;
    double now = xc_now_s();
    if (p->n_tok++ > 0) {
        // Not the first token (its time is the prefill's): one decode step ended now.
        double dt = now - p->t_start;
        // The engine's idle workers spin for up to about a millisecond before they sleep; let
        // them, so they do not take a core from the sample.
        struct timespec ts = {0, 3000000};
        nanosleep(&ts, NULL);
        double g = 0;
        p->st = xc_kbench_bw_sample(p->be, p->bwb, &g);
        if (p->st != XC_OK) {
            return false; /* ends the run; the caller reports p->st */
        }
        p->step_s += dt;
        p->inv_bw += 1.0 / g;
        p->shares[p->n++] = p->step_gb / dt / g;
    }
    p->t_start = xc_now_s();
    return true;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* FLOPs of a prefill of n tokens in forwards of `chunk` rows, as the engine runs it: in each
 * forward every layer's matmuls on all its rows, but the last layer's attention, wo, FFN and the
 * head on the forward's last row alone; attention 4 hidden FLOPs per (query, key) pair, causal,
 * over the keys cached before the forward too. (llama.cpp's last layer also takes every row
 * through attention and wo: tools/bench/side-by-side.sh adds that for its figure.) */
static double bm_prefill_flops(const bm_conf *c, int n, int chunk) {
    double w_qkv = (double)(c->heads + 2 * c->kv_heads) * (c->hidden / c->heads) * c->hidden;
    double w_rest = (double)c->hidden * c->hidden + 3.0 * c->inter * c->hidden;
    double f = 0;
    for (int p = 0; p < n; p += chunk) {
        int s = n - p < chunk ? n - p : chunk;
        double pairs = (double)s * p + (double)s * (s + 1) / 2; /* queries p .. p + s - 1 */
        f += (c->layers - 1) * (2.0 * (w_qkv + w_rest) * s + 4.0 * c->hidden * pairs);
        f += 2.0 * w_qkv * s + 4.0 * c->hidden * (p + s) + 2.0 * w_rest +
             2.0 * (double)c->vocab * c->hidden;
    }
    return f;
}

/* One more measurement of the read bandwidth into *best (kept if higher); nothing without a
 * buffer (its allocation failed: the roofline column then says 0). */
static void bw_pass(xc_backend *be, xc_kbench_bw *bwb, int passes, double *best) {
    double g = 0;
    if (be && bwb && xc_kbench_bw_run(be, bwb, passes, &g) == XC_OK && g > *best) {
        *best = g;
    }
}

int xc_cmd_bench_model(int argc, char **argv) {
    const char *backend = xc_cli_backend_arg(argc, argv); /* cuda: xc_cmd_bench_cuda.c */
    if (backend && strcmp(backend, "cpu") != 0) {
        return xc_cmd_bench_model_cuda(argc, argv);
    }
    bm_conf c;
    xc_status st = xc_conf_parse(&bm_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench model: %s\n", xc_err_last());
        return 2;
    }
    int threads[8], pps[8];
    int n_thr = xc_bench_int_list(c.threads, threads, 8), n_pp = xc_bench_int_list(c.pp, pps, 8);
    if (n_thr <= 0 || n_pp <= 0) {
        fprintf(stderr, "xcpipe bench model: --threads and --pp take comma-separated counts\n");
        return 2;
    }
    xc_tiny_conf tc;
    xc_tiny_conf_init(&tc, "7b");
    tc.seed = 1;
    tc.hidden = c.hidden;
    tc.layers = c.layers;
    tc.heads = c.heads;
    tc.kv_heads = c.kv_heads;
    tc.intermediate = c.inter;
    tc.vocab = c.vocab;
    tc.lora_rank = c.rank;
    tc.dtype = !strcmp(c.weights, "f32")   ? XC_DTYPE_F32
               : !strcmp(c.weights, "f16") ? XC_DTYPE_F16
                                           : XC_DTYPE_BF16;
    st = xc_tiny_validate(&tc);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench model: %s\n", xc_err_last());
        return 2;
    }
    int max_pp = 0;
    for (int i = 0; i < n_pp; i++) {
        max_pp = pps[i] > max_pp ? pps[i] : max_pp;
    }
    char stamp[256], dir[512];
    snprintf(stamp, sizeof stamp, "l%d-h%d-a%d-kv%d-i%d-v%d-r%d-%s", c.layers, c.hidden, c.heads,
             c.kv_heads, c.inter, c.vocab, c.rank, c.weights);
    snprintf(dir, sizeof dir, "%s", c.dir ? c.dir : "");
    if (!c.dir) {
        snprintf(dir, sizeof dir, "/tmp/xcpipe-bench-model-%s", stamp);
    }
    st = xc_bench_ensure_ckpt(dir, &tc, stamp);
    if (st != XC_OK) {
        xc_cli_report("bench model", dir, st);
        return 1;
    }
    /* bytes one decode step reads: every decoder weight except PLoRA (decode rows never run the
     * adapters), the output head and one embedding row; KV reads are added per step below */
    size_t esz = xc_dtype_size(tc.dtype);
    double layer_w = ((double)(c.heads + 2 * c.kv_heads) * (c.hidden / c.heads) * c.hidden +
                      (double)c.hidden * c.hidden + 3.0 * c.inter * c.hidden) *
                         (double)esz +
                     2.0 * c.hidden * (double)esz;
    double step_bytes =
        layer_w * c.layers + (double)c.vocab * c.hidden * esz + (double)(c.hidden + c.hidden) * esz;
    int kv_width = c.kv_heads * (c.hidden / c.heads);
    printf("model: %d layers, hidden %d, heads %d/%d, FFN %d, vocab %d, PLoRA r %d, %s weights; "
           "decode reads %.3f GB of weights per token\n",
           c.layers, c.hidden, c.heads, c.kv_heads, c.inter, c.vocab, c.rank, c.weights,
           step_bytes / 1e9);
    printf("%-8s %8s %12s %10s %10s %10s\n", "test", "threads", "tokens/s", "ms/token", "read GB/s",
           "roofline");
    int32_t *ids = xc_malloc((size_t)(max_pp + c.tg + 1) * sizeof(int32_t));
    if (!ids) {
        return 1;
    }
    for (int i = 0; i < max_pp + c.tg + 1; i++) {
        ids[i] = (int32_t)((i * 7919u + 17u) % (unsigned)c.vocab);
    }
    int rc = 0;
    for (int ti = 0; ti < n_thr && rc == 0; ti++) {
        xc_engine_conf ec = {.model_dir = dir,
                             .n_threads = threads[ti],
                             .max_context = max_pp + c.tg + 8,
                             .chunk = c.chunk > 0 && c.chunk < max_pp ? c.chunk : max_pp,
                             .no_vision = true};
        xc_engine *e = NULL;
        st = xc_engine_create(&ec, &e);
        if (st != XC_OK) {
            xc_cli_report("bench model", "engine", st);
            rc = 1;
            break;
        }
        /* The read-bandwidth reference: best of 3 passes now and of one pass after each decode
         * repetition, so it samples the same minutes as the decode it is compared with (on a
         * shared host the memory bandwidth moves by 10-20 % from minute to minute). */
        xc_backend *be = NULL;
        xc_backend_conf bc = {.n_threads = threads[ti]};
        xc_kbench_bw *bwb = NULL;
        double bw = 0;
        if (xc_backend_create("cpu", &bc, &be) == XC_OK &&
            xc_kbench_bw_create((size_t)1 << 30, &bwb) == XC_OK) {
            bw_pass(be, bwb, 3, &bw);
        }
        /* The compute ceiling of prefill: the FMA peak with the same threads, best of 3 passes
         * now and of one pass after each prefill repetition (the clock and the other tenants of
         * a shared host move it as they move the bandwidth). */
        double peak = 0;
        bool have_peak = be && xc_kbench_fma_peak(be, 3, &peak) == XC_OK;
        for (int k = 0; k < n_pp && st == XC_OK; k++) {
            double best = 1e30;
            for (int r = 0; r < c.reps && st == XC_OK; r++) {
                tg_timer t;
                double total = 0;
                memset(&t, 0, sizeof t);
                st = run_gen(e, ids, pps[k], 1, tg_tick, &t, &total);
                best = total < best ? total : best;
                double g = 0;
                if (have_peak && xc_kbench_fma_peak(be, 1, &g) == XC_OK && g > peak) {
                    peak = g;
                }
            }
            if (st == XC_OK) {
                char name[16], comp[96] = "";
                double flops = bm_prefill_flops(&c, pps[k], ec.chunk);
                if (have_peak) {
                    snprintf(comp, sizeof comp,
                             "  (compute: %.4g GFLOP/s, %.0f%% of the FMA peak %.1f)",
                             flops / best * 1e-9, 100.0 * flops / best * 1e-9 / peak, peak);
                }
                snprintf(name, sizeof name, "pp%d", pps[k]);
                printf("%-8s %8d %12.1f %10.2f %10s %10s%s\n", name, threads[ti], pps[k] / best,
                       1e3 * best / pps[k], "", "", comp);
            }
        }
        double best_tps = 0;
        for (int r = 0; r < c.reps && st == XC_OK; r++) {
            tg_timer t;
            double total = 0;
            memset(&t, 0, sizeof t);
            st = run_gen(e, ids, 1, c.tg, tg_tick, &t, &total);
            if (st == XC_OK && t.n > 1) {
                double tps = (t.n - 1) / (t.t_last - t.t_first);
                best_tps = tps > best_tps ? tps : best_tps;
            }
            bw_pass(be, bwb, 1, &bw);
        }
        /* average KV bytes read per step: K and V of every layer up to the mean position */
        double kv = 2.0 * c.layers * (c.tg / 2.0) * kv_width * sizeof(float);
        if (st == XC_OK) {
            double gbps = best_tps * (step_bytes + kv) / 1e9;
            char name[16], roof[32];
            snprintf(name, sizeof name, "tg%d", c.tg);
            snprintf(roof, sizeof roof, "%.0f%% of %.1f", bw > 0 ? 100.0 * gbps / bw : 0.0, bw);
            printf("%-8s %8d %12.2f %10.2f %10.1f %10s\n", name, threads[ti], best_tps,
                   1e3 / best_tps, gbps, roof);
        }
        if (st == XC_OK && c.paired && be && bwb) {
            tg_paired p = {.be = be, .bwb = bwb, .step_gb = (step_bytes + kv) / 1e9};
            p.shares = xc_malloc((size_t)c.tg * sizeof(double));
            if (!p.shares) {
                st = xc_errf(XC_ERR_NOMEM, "out of memory");
            } else {
                double total = 0;
                st = run_gen(e, ids, 1, c.tg, tg_paired_tick, &p, &total);
                if (st == XC_OK && p.st != XC_OK) {
                    st = p.st;
                }
                if (st == XC_OK && p.n > 0) {
                    // Both sides aggregated the same way: bytes over summed seconds.
                    double dec = p.n * p.step_gb / p.step_s, ref = p.n / p.inv_bw;
                    qsort(p.shares, (size_t)p.n, sizeof(double), cmp_double);
                    char name[24], roof[32];
                    snprintf(name, sizeof name, "tg%d-p", c.tg);
                    snprintf(roof, sizeof roof, "%.0f%% of %.1f", 100.0 * dec / ref, ref);
                    printf("%-8s %8d %12.2f %10.2f %10.1f %10s  (paired: %d steps, median step "
                           "%.0f%%, 10th-90th %.0f-%.0f%%)\n",
                           name, threads[ti], p.n / p.step_s, 1e3 * p.step_s / p.n, dec, roof, p.n,
                           100.0 * p.shares[p.n / 2], 100.0 * p.shares[p.n / 10],
                           100.0 * p.shares[p.n * 9 / 10]);
                }
            }
            xc_free(p.shares);
        } else if (st == XC_OK && c.paired) {
            printf("tg%d-p: no paired run (the bandwidth buffer could not be allocated)\n", c.tg);
        }
        xc_kbench_bw_destroy(bwb);
        xc_backend_destroy(be);
        if (st != XC_OK) {
            xc_cli_report("bench model", "run", st);
            rc = 1;
        }
        fflush(stdout);
        xc_engine_destroy(e);
    }
    xc_free(ids);
    return rc;
}

/* ---- bench vision ---- */

void xc_bench_vision_conf(xc_tiny_conf *tc, int width, int layers, xc_dtype dtype) {
    xc_tiny_conf_init(tc, "vl");
    tc->seed = 2;
    tc->hidden = 4096; /* the projector's real output width; one thin decoder layer */
    tc->layers = 1;
    tc->heads = 32;
    tc->kv_heads = 8;
    tc->intermediate = 64;
    tc->vocab = 64;
    tc->lora_rank = 8;
    tc->vision_dim = width;
    tc->vision_layers = layers;
    tc->vision_mlp = 4 * width;
    tc->pos_table_original = true; /* 577 rows: interpolated to any grid at load */
    tc->dtype = dtype;
}

typedef struct bv_conf {
    const char *sizes, *dir, *weights;
    int threads, images, layers, width;
} bv_conf;

static const xc_conf_entry bv_entries[] = {
    XC_CONF_STR("sizes", NULL, bv_conf, sizes, "224,490", NULL, "image sizes (multiples of 14)"),
    XC_CONF_INT("images", NULL, bv_conf, images, 1, 1, 64, "images per batch"),
    XC_CONF_INT("threads", NULL, bv_conf, threads, 0, 0, 1024, "CPU threads (0 = all)"),
    XC_CONF_INT("layers", NULL, bv_conf, layers, 24, 1, 64, "encoder layers (ViT-L: 24)"),
    XC_CONF_INT("width", NULL, bv_conf, width, 1024, 64, 4096, "encoder width (ViT-L: 1024)"),
    XC_CONF_STR("weights", NULL, bv_conf, weights, "bf16", "bf16|f16|f32", "weight dtype"),
    XC_CONF_STR("dir", "XC_BENCH_DIR", bv_conf, dir, NULL, NULL,
                "where to keep the random checkpoint"),
};

static const xc_conf_spec bv_spec = {
    "xcpipe bench vision [--sizes 224,490] [--images N] [--threads N]",
    "Milliseconds per image for CLIP ViT-L/14 plus the projector on random weights.", bv_entries,
    sizeof bv_entries / sizeof bv_entries[0]};

int xc_cmd_bench_vision(int argc, char **argv) {
    const char *backend = xc_cli_backend_arg(argc, argv); /* cuda: xc_cmd_bench_cuda.c */
    if (backend && strcmp(backend, "cpu") != 0) {
        return xc_cmd_bench_vision_cuda(argc, argv);
    }
    bv_conf c;
    xc_status st = xc_conf_parse(&bv_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench vision: %s\n", xc_err_last());
        return 2;
    }
    int sizes[8];
    int n_sizes = xc_bench_int_list(c.sizes, sizes, 8);
    if (n_sizes <= 0) {
        fprintf(stderr, "xcpipe bench vision: --sizes takes comma-separated sizes\n");
        return 2;
    }
    xc_tiny_conf tc;
    xc_bench_vision_conf(&tc, c.width, c.layers,
                         !strcmp(c.weights, "f32")   ? XC_DTYPE_F32
                         : !strcmp(c.weights, "f16") ? XC_DTYPE_F16
                                                     : XC_DTYPE_BF16);
    char stamp[128], dir[512];
    snprintf(stamp, sizeof stamp, "vision-w%d-l%d-%s", c.width, c.layers, c.weights);
    snprintf(dir, sizeof dir, "%s", c.dir ? c.dir : "");
    if (!c.dir) {
        snprintf(dir, sizeof dir, "/tmp/xcpipe-bench-%s", stamp);
    }
    st = xc_bench_ensure_ckpt(dir, &tc, stamp);
    if (st != XC_OK) {
        xc_cli_report("bench vision", dir, st);
        return 1;
    }
    xc_model_config cfg;
    xc_ckpt *ck = NULL;
    xc_backend *be = NULL;
    xc_backend_conf bc = {.n_threads = c.threads};
    if (xc_model_config_load(dir, &cfg) != XC_OK || xc_ckpt_open(dir, &ck) != XC_OK ||
        xc_backend_create("cpu", &bc, &be) != XC_OK) {
        xc_cli_report("bench vision", dir, XC_ERR_IO);
        xc_ckpt_close(ck);
        return 1;
    }
    printf("CLIP width %d, %d layers, %s weights, %d image(s) per batch, %d threads\n", c.width,
           c.layers, c.weights, c.images, xc_kbench_threads(be));
    printf("%6s %8s %12s %12s\n", "size", "tokens", "ms/image", "GFLOP/s");
    int rc = 0;
    for (int i = 0; i < n_sizes && rc == 0; i++) {
        cfg.img_size = sizes[i];
        xc_vision *v = NULL;
        st = xc_vision_create(be, ck, &cfg, &v);
        if (st != XC_OK) {
            xc_cli_report("bench vision", "vision tower", st);
            rc = 1;
            break;
        }
        const xc_vision_info *vi = xc_vision_get_info(v);
        size_t px = (size_t)c.images * 3 * (size_t)sizes[i] * (size_t)sizes[i];
        float *pixels = xc_malloc(px * sizeof(float));
        float *out = xc_malloc((size_t)c.images * vi->n_tokens * vi->out_dim * sizeof(float));
        for (size_t k = 0; pixels && k < px; k++) {
            pixels[k] = (float)((k * 2654435761u) % 1000) / 500.0f - 1.0f;
        }
        double t0 = xc_now_s();
        st = (pixels && out) ? xc_vision_encode(v, pixels, c.images, out, NULL) : XC_ERR_NOMEM;
        double dt = xc_now_s() - t0;
        if (st == XC_OK) {
            double T = vi->n_tokens + 1, W = vi->width, I = vi->inter;
            double flops =
                c.images *
                (2.0 * vi->n_tokens * W * 3 * 14 * 14 +
                 vi->n_layers * (2.0 * T * (4 * W * W + 2 * W * I) + 4.0 * T * T * W) +
                 2.0 * vi->n_tokens * (W * vi->out_dim + (double)vi->out_dim * vi->out_dim));
            printf("%6d %8d %12.1f %12.1f\n", sizes[i], vi->n_tokens, 1e3 * dt / c.images,
                   flops / dt / 1e9);
            fflush(stdout);
        } else {
            xc_cli_report("bench vision", "encode", st);
            rc = 1;
        }
        xc_free(pixels);
        xc_free(out);
        xc_vision_destroy(v);
    }
    xc_backend_destroy(be);
    xc_ckpt_close(ck);
    return rc;
}
