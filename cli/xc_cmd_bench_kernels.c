/* xcpipe bench kernels: the CPU matmul at the InternLM2-7B layer shapes, against this machine's
 * measured DRAM read bandwidth. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_backend.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_kbench.h"

#define KB_MAX_M 16

typedef struct kb_conf {
    const char *dtype;
    int threads;
    int iters;
    xc_conf_list m;
    int bw_mib;
    int bw_passes;
    bool blas;
} kb_conf;

static const xc_conf_entry kb_entries[] = {
    XC_CONF_STR("dtype", "XC_BENCH_DTYPE", kb_conf, dtype, "all", "f32|f16|bf16|all",
                "weight dtype to time"),
    XC_CONF_INT("threads", "XC_BENCH_THREADS", kb_conf, threads, 0, 0, 1024,
                "CPU threads (0 = all online cores)"),
    XC_CONF_INT("iters", "XC_BENCH_ITERS", kb_conf, iters, 5, 1, 1000,
                "timed calls per case (best is kept; stops early after 2 s)"),
    XC_CONF_LIST("m", "XC_BENCH_M", kb_conf, m, "rows per call, e.g. --m 1,16,256 (default)"),
    XC_CONF_INT("bw-mib", "XC_BENCH_BW_MIB", kb_conf, bw_mib, 1024, 64, 65536,
                "buffer for the read-bandwidth measurement, MiB (>> L3)"),
    XC_CONF_INT("bw-passes", "XC_BENCH_BW_PASSES", kb_conf, bw_passes, 5, 1, 100,
                "read-bandwidth passes (best is kept)"),
    XC_CONF_BOOL("blas", "XC_BENCH_BLAS", kb_conf, blas, 0,
                 "also time OpenBLAS on f32 weights (sgemv at M = 1, and sgemm at every M)"),
};

static const xc_conf_spec kb_spec = {
    .usage = "xcpipe bench kernels [options]",
    .summary = "Times the CPU matmul y = x @ W^T at the InternLM2-7B layer shapes (k x n: wqkv "
               "4096x6144, wo 4096x4096, w1/w3 4096x14336, w2 14336x4096) and prints ms, GFLOP/s, "
               "GB/s of weights and, for M = 1, the fraction of the read bandwidth measured here "
               "with the same thread count (M = 1 calls alternate with bandwidth passes, 2 x iters "
               "of each, best kept), for M > 1 the fraction of the FMA peak measured here (8-lane "
               "FMA chains in registers, re-measured after every case, best kept). Caches are "
               "flushed before every timed call.",
    .entries = kb_entries,
    .n_entries = sizeof kb_entries / sizeof kb_entries[0],
};

static const struct {
    const char *name;
    int k, n;
} kb_shapes[] = {
    {"wqkv", 4096, 6144},
    {"wo", 4096, 4096},
    {"w1/w3", 4096, 14336},
    {"w2", 14336, 4096},
};

/* Parses the --m items ("1,16" or repeated flags) into ms; defaults to 1, 16, 256. */
static int kb_parse_m(const xc_conf_list *l, int *ms, int *n_ms) {
    *n_ms = 0;
    for (int i = 0; i < l->n; i++) {
        const char *p = l->items[i];
        while (*p) {
            char *end = NULL;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > 65536 || (*end != ',' && *end != '\0')) {
                fprintf(stderr,
                        "xcpipe bench kernels: --m: '%s' is not a list of integers in "
                        "[1, 65536]\n",
                        l->items[i]);
                return 2;
            }
            if (*n_ms >= KB_MAX_M) {
                fprintf(stderr, "xcpipe bench kernels: --m: at most %d values\n", KB_MAX_M);
                return 2;
            }
            ms[(*n_ms)++] = (int)v;
            p = *end == ',' ? end + 1 : end;
        }
    }
    if (*n_ms == 0) {
        ms[0] = 1;
        ms[1] = 16;
        ms[2] = 256;
        *n_ms = 3;
    }
    return 0;
}

/* One line of the table, kept until the end so that every M = 1 ratio uses the best bandwidth
 * measured during the whole run. */
typedef struct kb_row {
    int shape, m;
    const char *kind;
    xc_kbench_result r;
} kb_row;

#define KB_MAX_ROWS 640

/* The state of one run: backends, the bandwidth probe and the rows so far. */
typedef struct kb_run {
    const kb_conf *c;
    xc_backend *be;  /* the benchmark's threads */
    xc_backend *be1; /* one thread */
    int threads;
    xc_kbench_bw *bw;
    double bw1, bwn; /* best read bandwidth with 1 and with `threads` threads, GB/s */
    double peak;     /* best FMA peak with `threads` threads, GFLOP/s (0: not measured) */
    kb_row rows[KB_MAX_ROWS];
    int n_rows;
} kb_run;

static void kb_add_row(kb_run *run, int shape, int m, const char *kind, const xc_kbench_result *r) {
    if (run->n_rows < KB_MAX_ROWS) {
        run->rows[run->n_rows++] = (kb_row){shape, m, kind, *r};
    }
    fprintf(stderr, ".");
}

/* Re-measures the read bandwidth (both thread counts) and keeps the best seen. */
static xc_status kb_measure_bw(kb_run *run, int passes) {
    double g;
    XC_TRY(xc_kbench_bw_run(run->be1, run->bw, passes, &g));
    run->bw1 = g > run->bw1 ? g : run->bw1;
    if (run->threads > 1) {
        XC_TRY(xc_kbench_bw_run(run->be, run->bw, passes, &g));
        run->bwn = g > run->bwn ? g : run->bwn;
    } else {
        run->bwn = run->bw1;
    }
    return XC_OK;
}

/* M = 1 is memory-bound and the bandwidth of a shared machine drifts from one moment to the next,
 * so the timed calls (2 x iters) alternate with read-bandwidth passes on the same threads; the
 * best of each goes into the ratio. */
static xc_status kb_run_decode(kb_run *run, xc_kbench_mm *mm, xc_kbench_result *out) {
    int reps = 2 * run->c->iters;
    for (int i = 0; i < reps; i++) {
        xc_kbench_result r;
        XC_TRY(xc_kbench_mm_run(run->be, mm, 1, 1, false, false, &r));
        if (i == 0 || r.ms < out->ms) {
            *out = r;
        }
        double g;
        XC_TRY(xc_kbench_bw_run(run->be, run->bw, 1, &g));
        run->bwn = g > run->bwn ? g : run->bwn;
    }
    out->runs = reps;
    return XC_OK;
}

/* Times every shape and M for one dtype (and OpenBLAS when asked, f32 only). */
static int kb_run_dtype(kb_run *run, xc_dtype wt, const int *ms, int n_ms, int max_m) {
    const kb_conf *c = run->c;
    for (int s = 0; s < (int)(sizeof kb_shapes / sizeof kb_shapes[0]); s++) {
        xc_kbench_mm *mm = NULL;
        xc_status st = xc_kbench_mm_create(kb_shapes[s].n, kb_shapes[s].k, wt, max_m, &mm);
        if (st != XC_OK) {
            xc_cli_report("bench kernels", "set up", st);
            return 1;
        }
        for (int i = 0; i < n_ms && st == XC_OK; i++) {
            xc_kbench_result r;
            if (ms[i] == 1) {
                st = kb_run_decode(run, mm, &r);
            } else {
                st = xc_kbench_mm_run(run->be, mm, ms[i], c->iters, false, false, &r);
                // the compute ceiling, re-measured beside every GEMM case (it drifts as well)
                double g = 0;
                if (st == XC_OK && run->peak > 0 && xc_kbench_fma_peak(run->be, 1, &g) == XC_OK &&
                    g > run->peak) {
                    run->peak = g;
                }
            }
            if (st != XC_OK) {
                break;
            }
            kb_add_row(run, s, ms[i], xc_dtype_name(wt), &r);
            if (c->blas && wt == XC_DTYPE_F32) {
                for (int gemv = ms[i] == 1 ? 1 : 0; gemv >= 0 && st == XC_OK; gemv--) {
                    st = xc_kbench_mm_run(run->be, mm, ms[i], c->iters, true, gemv, &r);
                    if (st == XC_OK) {
                        kb_add_row(run, s, ms[i], gemv ? "f32 sgemv" : "f32 sgemm", &r);
                    }
                }
            }
        }
        xc_kbench_mm_destroy(mm);
        if (st != XC_OK) {
            xc_cli_report("bench kernels", "matmul", st);
            return 1;
        }
    }
    return 0;
}

static void kb_print(const kb_run *run) {
    const kb_conf *c = run->c;
    fprintf(stderr, "\n");
    printf("read bandwidth (%d MiB buffer; best of %d passes at the start and, for %d threads, of "
           "one pass after each M = 1 call): 1 thread %.1f GB/s",
           c->bw_mib, c->bw_passes, run->threads, run->bw1);
    if (run->threads > 1) {
        printf(", %d threads %.1f GB/s", run->threads, run->bwn);
    }
    if (run->peak > 0) {
        printf("\nFMA peak (8-lane FMA chains in registers, %d threads; best of 3 passes at the "
               "start and of one pass after each M > 1 case): %.1f GFLOP/s",
               run->threads, run->peak);
    }
    printf("\n\n%-6s %-11s %5s  %-11s %3s %9s %9s %8s %7s\n", "layer", "k x n", "M", "weights",
           "thr", "ms", "GFLOP/s", "GB/s(w)", "%roof");
    for (int i = 0; i < run->n_rows; i++) {
        const kb_row *w = &run->rows[i];
        char dims[32];
        snprintf(dims, sizeof dims, "%dx%d", kb_shapes[w->shape].k, kb_shapes[w->shape].n);
        printf("%-6s %-11s %5d  %-11s %3d %9.3f %9.1f %8.1f", kb_shapes[w->shape].name, dims, w->m,
               w->kind, run->threads, w->r.ms, w->r.gflops, w->r.wgbps);
        if (w->m == 1) {
            printf(" %6.1f%%", 100.0 * w->r.wgbps / run->bwn);
        } else if (run->peak > 0) {
            printf(" %6.1f%%", 100.0 * w->r.gflops / run->peak);
        }
        printf("\n");
    }
    printf("\n%%roof = at M = 1, GB/s of weights / best read bandwidth with the same thread count "
           "(%d); at M > 1, GFLOP/s / the FMA peak with the same threads (not measured without "
           "AVX2/FMA).\n",
           run->threads);
}

int xc_cmd_bench_kernels(int argc, char **argv) {
    kb_conf c;
    xc_status st = xc_conf_parse(&kb_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench kernels: %s\n", xc_err_last());
        return 2;
    }
    int ms[KB_MAX_M], n_ms = 0;
    if (kb_parse_m(&c.m, ms, &n_ms) != 0) {
        return 2;
    }
    int max_m = 1;
    for (int i = 0; i < n_ms; i++) {
        max_m = ms[i] > max_m ? ms[i] : max_m;
    }

    int rc = 1;
    kb_run *run = calloc(1, sizeof *run);
    if (!run) {
        fprintf(stderr, "xcpipe bench kernels: out of memory\n");
        return 1;
    }
    run->c = &c;
    xc_backend_conf bc = {.n_threads = c.threads};
    xc_backend_conf bc1 = {.n_threads = 1};
    if ((st = xc_backend_create("cpu", &bc, &run->be)) != XC_OK ||
        (st = xc_backend_create("cpu", &bc1, &run->be1)) != XC_OK) {
        xc_cli_report("bench kernels", "cpu backend", st);
        goto out;
    }
    run->threads = xc_kbench_threads(run->be); /* 0 resolved to the online core count */
    if ((st = xc_kbench_bw_create((size_t)c.bw_mib << 20, &run->bw)) != XC_OK ||
        (st = kb_measure_bw(run, c.bw_passes)) != XC_OK) {
        xc_cli_report("bench kernels", "read bandwidth", st);
        goto out;
    }
    if (xc_kbench_fma_peak(run->be, 3, &run->peak) != XC_OK) {
        run->peak = 0; /* no AVX2/FMA: the %roof column stays empty for M > 1 */
    }
    static const xc_dtype all[3] = {XC_DTYPE_BF16, XC_DTYPE_F16, XC_DTYPE_F32};
    for (int d = 0; d < 3; d++) {
        if (strcmp(c.dtype, "all") != 0 && strcmp(c.dtype, xc_dtype_name(all[d])) != 0) {
            continue;
        }
        if (kb_run_dtype(run, all[d], ms, n_ms, max_m) != 0) {
            goto out;
        }
    }
    kb_print(run);
    rc = 0;
out:
    xc_kbench_bw_destroy(run->bw);
    xc_backend_destroy(run->be);
    xc_backend_destroy(run->be1);
    free(run);
    return rc;
}
