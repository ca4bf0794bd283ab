/* xcpipe bench model|vision --backend cuda: GPU figures on random bf16 weights. Decode step time
 * of an InternLM2-7B-shaped stage at batch 1 to 64 against the memory roofline, prefill
 * tokens/s and TFLOP/s against the matrix-rate ceiling, and CLIP ViT-L/14 images/s; both ceilings
 * (a device-to-device copy and a cuBLAS bf16 GEMM) are measured in the same run, and every figure
 * line names the device. Figure lines start with "| " so scripts/gpu-check can collect them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_bench_ckpt.h"
#include "xc_cli.h"

/* The `--backend` value in argv, or NULL (both "--backend X" and "--backend=X"). */
const char *xc_cli_backend_arg(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            return argv[i + 1];
        }
        if (!strncmp(argv[i], "--backend=", 10)) {
            return argv[i] + 10;
        }
    }
    return NULL;
}

#ifndef XC_HAVE_CUDA

int xc_cmd_bench_model_cuda(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "xcpipe bench: this build has no CUDA backend (configure with -DXC_CUDA=ON)\n");
    return 2;
}

int xc_cmd_bench_vision_cuda(int argc, char **argv) {
    return xc_cmd_bench_model_cuda(argc, argv);
}

#else

#include "xc_backend.h"
#include "xc_ckpt.h"
#include "xc_conf.h"
#include "xc_cuda.h"
#include "xc_kv.h"
#include "xc_llm.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_model_config.h"
#include "xc_time.h"
#include "xc_tiny.h"
#include "xc_vision.h"

/* ---- shared ---- */

static int cb_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Opens the device once before any checkpoint is written, so a host without one fails fast. */
static int cb_probe(const char *cmd, int device) {
    xc_backend *be = NULL;
    xc_backend_conf bc = {.device = device};
    xc_status st = xc_backend_create("cuda", &bc, &be);
    if (st != XC_OK) {
        xc_cli_report(cmd, "cuda", st);
        return 1;
    }
    xc_backend_destroy(be);
    return 0;
}

/* The two ceilings: copy GB/s (bytes read + written) and bf16 GEMM TFLOP/s. */
typedef struct cb_ceil {
    double copy_gbps, gemm_tflops;
} cb_ceil;

static xc_status cb_ceilings(xc_backend *be, const char *dev, cb_ceil *out) {
    size_t bytes = (size_t)1 << 30;
    xc_buf a = {0}, b = {0};
    xc_status st = XC_OK;
    double ms = 0;
    XC_TRY_GOTO(xc_backend_buf_alloc(be, bytes, &a), st, out);
    XC_TRY_GOTO(xc_backend_buf_alloc(be, bytes, &b), st, out);
    XC_TRY_GOTO(xc_cuda_fill_random(be, a.data, XC_DTYPE_F32, bytes / 4, 1.0f, 7), st, out);
    XC_TRY_GOTO(xc_cuda_time_copy(be, b.data, a.data, bytes, 10, &ms), st, out);
    out->copy_gbps = 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
    xc_backend_buf_free(be, &a);
    xc_backend_buf_free(be, &b);
    int g = 8192;
    XC_TRY_GOTO(xc_cuda_time_gemm(be, g, g, g, 10, &ms), st, out);
    out->gemm_tflops = 2.0 * g * (double)g * g / (ms * 1e-3) / 1e12;
    printf("| ceiling | d2d copy 1 GiB (read + write) | %.1f | GB/s | | | %s |\n", out->copy_gbps,
           dev);
    printf("| ceiling | cuBLAS bf16 GEMM %d^3, fp32 accumulate | %.1f | TFLOP/s | | | %s |\n", g,
           out->gemm_tflops, dev);
out:
    xc_backend_buf_free(be, &a);
    xc_backend_buf_free(be, &b);
    return st;
}

/* ---- bench model --backend cuda ---- */

typedef struct cbm_conf {
    int layers, hidden, heads, kv_heads, inter, rank, ctx, iters, device;
    double kv_frac;
    const char *backend, *dir, *batches, *pp;
} cbm_conf;

static const xc_conf_entry cbm_entries[] = {
    XC_CONF_STR("backend", NULL, cbm_conf, backend, "cuda", "cuda", "compute backend"),
    XC_CONF_INT("device", "XC_CUDA_DEVICE", cbm_conf, device, 0, 0, 64, "CUDA device ordinal"),
    XC_CONF_INT("layers", NULL, cbm_conf, layers, 8, 1, 256, "decoder layers of the stage"),
    XC_CONF_INT("hidden", NULL, cbm_conf, hidden, 4096, 64, 16384, "hidden size"),
    XC_CONF_INT("heads", NULL, cbm_conf, heads, 32, 1, 256, "attention heads"),
    XC_CONF_INT("kv-heads", NULL, cbm_conf, kv_heads, 8, 1, 256, "key/value heads"),
    XC_CONF_INT("inter", NULL, cbm_conf, inter, 14336, 64, 65536, "FFN width"),
    XC_CONF_INT("rank", NULL, cbm_conf, rank, 256, 1, 1024, "PLoRA rank"),
    XC_CONF_STR("batches", NULL, cbm_conf, batches, "1,2,4,8,16,32,64", NULL, "decode batch sizes"),
    XC_CONF_INT("ctx", NULL, cbm_conf, ctx, 1024, 1, 1 << 20,
                "cached tokens per decoding sequence"),
    XC_CONF_STR("pp", NULL, cbm_conf, pp, "512,2048", NULL, "prompt lengths for prefill"),
    XC_CONF_INT("iters", NULL, cbm_conf, iters, 20, 1, 10000, "timed steps (median printed)"),
    XC_CONF_FLOAT("kv-frac", "XC_KV_FRAC", cbm_conf, kv_frac, 0.9, 0.01, 1.0,
                  "fraction of the free device memory (after weights) the KV pool may take"),
    XC_CONF_STR("dir", "XC_BENCH_DIR", cbm_conf, dir, NULL, NULL,
                "where to keep the random checkpoint (default /tmp/xcpipe-bench-cuda-...)"),
};

static const xc_conf_spec cbm_spec = {
    "xcpipe bench model --backend cuda [--layers 8 --batches 1,2,4,8,16,32,64 --ctx 1024 "
    "--pp 512,2048]",
    "Decode step time at each batch size against the memory roofline (weight + KV bytes read over "
    "the measured copy bandwidth), and prefill tokens/s and TFLOP/s against the measured cuBLAS "
    "bf16 GEMM rate, for one InternLM2-7B-shaped stage (no embedding or head) on random bf16 "
    "weights.",
    cbm_entries, sizeof cbm_entries / sizeof cbm_entries[0]};

/* Median wall time in ms of `iters` forwards of batch b (after one warm-up), re-randomising the
 * input rows before each step outside the timed region. */
static xc_status cbm_time(xc_backend *be, xc_llm *m, xc_kv_cache *kv, const xc_llm_batch *b,
                          float *hidden, size_t hidden_n, int iters, double *ms) {
    double *t = xc_malloc((size_t)iters * sizeof *t);
    if (!t) {
        return XC_ERR_NOMEM;
    }
    xc_status st = XC_OK;
    for (int i = -1; i < iters && st == XC_OK; i++) {
        st = xc_cuda_fill_random(be, hidden, XC_DTYPE_F32, hidden_n, 1.0f, 100 + (uint64_t)i);
        if (st == XC_OK) {
            st = xc_backend_sync(be);
        }
        double t0 = xc_now_s();
        if (st == XC_OK) {
            st = xc_llm_forward(m, kv, b, hidden, NULL);
        }
        if (st == XC_OK) {
            st = xc_backend_sync(be);
        }
        if (i >= 0) {
            t[i] = (xc_now_s() - t0) * 1e3;
        }
    }
    if (st == XC_OK) {
        qsort(t, (size_t)iters, sizeof *t, cb_cmp_double);
        *ms = t[iters / 2];
    }
    xc_free(t);
    return st;
}

int xc_cmd_bench_model_cuda(int argc, char **argv) {
    cbm_conf c;
    xc_status st = xc_conf_parse(&cbm_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench model: %s\n", xc_err_last());
        return 2;
    }
    int batches[8], pps[8];
    int n_b = xc_bench_int_list(c.batches, batches, 8), n_pp = xc_bench_int_list(c.pp, pps, 8);
    if (n_b <= 0 || n_pp <= 0) {
        fprintf(stderr, "xcpipe bench model: --batches and --pp take comma-separated counts\n");
        return 2;
    }
    xc_tiny_conf tc;
    xc_tiny_conf_init(&tc, "7b");
    tc.seed = 3;
    tc.hidden = c.hidden;
    tc.layers = c.layers;
    tc.heads = c.heads;
    tc.kv_heads = c.kv_heads;
    tc.intermediate = c.inter;
    tc.vocab = 256; /* a middle stage holds neither the embedding nor the head */
    tc.lora_rank = c.rank;
    tc.dtype = XC_DTYPE_BF16;
    if (xc_tiny_validate(&tc) != XC_OK) {
        fprintf(stderr, "xcpipe bench model: %s\n", xc_err_last());
        return 2;
    }
    char stamp[256], dir[512];
    snprintf(stamp, sizeof stamp, "cuda-l%d-h%d-a%d-kv%d-i%d-r%d-bf16", c.layers, c.hidden, c.heads,
             c.kv_heads, c.inter, c.rank);
    snprintf(dir, sizeof dir, "%s", c.dir ? c.dir : "");
    if (!c.dir) {
        snprintf(dir, sizeof dir, "/tmp/xcpipe-bench-%s", stamp);
    }
    if (cb_probe("bench model", c.device) != 0) {
        return 1;
    }
    st = xc_bench_ensure_ckpt(dir, &tc, stamp);
    if (st != XC_OK) {
        xc_cli_report("bench model", dir, st);
        return 1;
    }
    int max_pp = 0, max_b = 0;
    for (int i = 0; i < n_pp; i++) {
        max_pp = pps[i] > max_pp ? pps[i] : max_pp;
    }
    for (int i = 0; i < n_b; i++) {
        max_b = batches[i] > max_b ? batches[i] : max_b;
    }
    int max_rows = max_pp > max_b ? max_pp : max_b;

    xc_backend *be = NULL;
    xc_ckpt *ck = NULL;
    xc_llm *m = NULL;
    xc_kv_cache *kv = NULL;
    xc_buf hid = {0};
    int32_t *tables = NULL;
    xc_llm_seq *seqs = NULL;
    xc_model_config cfg;
    xc_cuda_dev_info di;
    cb_ceil ceil = {0};
    int rc = 1;
    xc_backend_conf bc = {.device = c.device};
    XC_TRY_GOTO(xc_backend_create("cuda", &bc, &be), st, fail);
    XC_TRY_GOTO(xc_cuda_info(be, &di), st, fail);
    printf("device: %s (%d SMs, %.1f GiB)\n", di.name, di.n_sm,
           (double)di.total_bytes / 1073741824.0);
    printf("| kind | figure | value | unit | ceiling | fraction | device |\n");
    printf("|---|---|---|---|---|---|---|\n");
    XC_TRY_GOTO(cb_ceilings(be, di.name, &ceil), st, fail);
    XC_TRY_GOTO(xc_model_config_load(dir, &cfg), st, fail);
    XC_TRY_GOTO(xc_ckpt_open(dir, &ck), st, fail);
    double t0 = xc_now_s();
    xc_llm_conf lc = {.layer_begin = 0, .layer_end = c.layers, .max_rows = max_rows};
    XC_TRY_GOTO(xc_llm_create(be, ck, &cfg, &lc, &m), st, fail);
    double up_s = xc_now_s() - t0;
    size_t wbytes = xc_llm_weight_bytes(m);
    printf("| load | weights uploaded (pinned staging) | %.2f | GB/s | %.2f GB | | %s |\n",
           (double)wbytes / up_s / 1e9, (double)wbytes / 1e9, di.name);

    /* KV pool: what the runs need, capped by kv_frac of the free memory left after the weights */
    int bs = 16, hd = c.hidden / c.heads, width = c.kv_heads * hd;
    int per_seq = (c.ctx + 1 + bs - 1) / bs;
    int need = max_b * per_seq > (max_pp + bs - 1) / bs ? max_b * per_seq : (max_pp + bs - 1) / bs;
    XC_TRY_GOTO(xc_cuda_info(be, &di), st, fail);
    size_t per_block = xc_kv_bytes(c.layers, 1, bs, width, XC_DTYPE_BF16); /* serving default */
    size_t fit = (size_t)((double)di.free_bytes * c.kv_frac) / per_block;
    if ((size_t)need > fit) {
        st = xc_errf(XC_ERR_NOMEM, "KV pool: %d blocks needed, %zu fit in %.0f%% of %.2f GiB free",
                     need, fit, 100 * c.kv_frac, (double)di.free_bytes / 1073741824.0);
        goto fail;
    }
    XC_TRY_GOTO(xc_kv_create(be, c.layers, need, bs, width, XC_DTYPE_BF16, &kv), st, fail);
    for (int l = 0; l < c.layers; l++) {
        size_t n = (size_t)need * bs * width;
        XC_TRY_GOTO(xc_cuda_fill_random(be, xc_kv_k(kv, l), XC_DTYPE_BF16, n, 1.0f, 1000 + l), st,
                    fail);
        XC_TRY_GOTO(xc_cuda_fill_random(be, xc_kv_v(kv, l), XC_DTYPE_BF16, n, 1.0f, 2000 + l), st,
                    fail);
    }
    size_t hidden_n = (size_t)max_rows * (size_t)c.hidden;
    XC_TRY_GOTO(xc_backend_buf_alloc(be, hidden_n * sizeof(float), &hid), st, fail);
    tables = xc_malloc((size_t)need * sizeof *tables);
    seqs = xc_calloc((size_t)max_b, sizeof *seqs);
    if (!tables || !seqs) {
        st = XC_ERR_NOMEM;
        goto fail;
    }
    for (int i = 0; i < need; i++) {
        tables[i] = i;
    }

    /* prefill: one sequence of pp tokens from position 0 */
    double layer_params = (double)(c.heads + 2 * c.kv_heads) * hd * c.hidden +
                          (double)c.hidden * c.hidden + 3.0 * c.inter * c.hidden;
    for (int i = 0; i < n_pp; i++) {
        int n = pps[i];
        seqs[0] = (xc_llm_seq){.n_tokens = n, .pos0 = 0, .block_table = tables};
        xc_llm_batch b = {.seqs = seqs, .n_seqs = 1, .n_rows = n};
        double ms = 0;
        XC_TRY_GOTO(
            cbm_time(be, m, kv, &b, hid.data, (size_t)n * c.hidden, c.iters < 5 ? c.iters : 5, &ms),
            st, fail);
        double flops =
            c.layers * (2.0 * layer_params * n + 4.0 * c.heads * hd * ((double)n * (n + 1) / 2.0));
        double tf = flops / (ms * 1e-3) / 1e12;
        printf("| prefill | pp%d: %.1f tokens/s, %.2f ms | %.1f | TFLOP/s | %.1f | %.0f%% | %s |\n",
               n, n / (ms * 1e-3), ms, tf, ceil.gemm_tflops, 100.0 * tf / ceil.gemm_tflops,
               di.name);
        fflush(stdout);
    }
    /* decode: batch sequences, each one new token after ctx cached ones */
    double wstep = layer_params * 2.0 * c.layers; /* bf16 weight bytes per step (no PLoRA) */
    for (int i = 0; i < n_b; i++) {
        int nb = batches[i];
        for (int s = 0; s < nb; s++) {
            seqs[s] =
                (xc_llm_seq){.n_tokens = 1, .pos0 = c.ctx, .block_table = tables + s * per_seq};
        }
        xc_llm_batch b = {.seqs = seqs, .n_seqs = nb, .n_rows = nb};
        double ms = 0;
        XC_TRY_GOTO(cbm_time(be, m, kv, &b, hid.data, (size_t)nb * c.hidden, c.iters, &ms), st,
                    fail);
        double bytes = wstep + 2.0 * c.layers * nb * (double)(c.ctx + 1) * width * sizeof(float);
        double gbps = bytes / (ms * 1e-3) / 1e9;
        printf("| decode | batch %d, ctx %d: step %.3f ms, %.1f tokens/s | %.1f | GB/s | %.1f | "
               "%.0f%% | %s |\n",
               nb, c.ctx, ms, nb / (ms * 1e-3), gbps, ceil.copy_gbps, 100.0 * gbps / ceil.copy_gbps,
               di.name);
        fflush(stdout);
    }
    rc = 0;
fail:
    if (rc != 0) {
        xc_cli_report("bench model", "cuda", st);
    }
    xc_free(tables);
    xc_free(seqs);
    if (be) {
        xc_backend_buf_free(be, &hid);
    }
    xc_kv_destroy(kv);
    xc_llm_destroy(m);
    xc_ckpt_close(ck);
    xc_backend_destroy(be);
    return rc;
}

/* ---- bench vision --backend cuda ---- */

typedef struct cbv_conf {
    const char *backend, *dir, *sizes;
    int images, iters, device;
} cbv_conf;

static const xc_conf_entry cbv_entries[] = {
    XC_CONF_STR("backend", NULL, cbv_conf, backend, "cuda", "cuda", "compute backend"),
    XC_CONF_INT("device", "XC_CUDA_DEVICE", cbv_conf, device, 0, 0, 64, "CUDA device ordinal"),
    XC_CONF_STR("sizes", NULL, cbv_conf, sizes, "490", NULL, "image sizes (multiples of 14)"),
    XC_CONF_INT("images", NULL, cbv_conf, images, 8, 1, 256, "images per batch"),
    XC_CONF_INT("iters", NULL, cbv_conf, iters, 5, 1, 1000, "timed batches (median printed)"),
    XC_CONF_STR("dir", "XC_BENCH_DIR", cbv_conf, dir, NULL, NULL,
                "where to keep the random checkpoint"),
};

static const xc_conf_spec cbv_spec = {
    "xcpipe bench vision --backend cuda [--sizes 490] [--images 8]",
    "Images/s for CLIP ViT-L/14 plus the projector on random bf16 weights, and TFLOP/s against "
    "the cuBLAS bf16 GEMM rate measured in the same run.",
    cbv_entries, sizeof cbv_entries / sizeof cbv_entries[0]};

int xc_cmd_bench_vision_cuda(int argc, char **argv) {
    cbv_conf c;
    xc_status st = xc_conf_parse(&cbv_spec, &c, argc, argv, NULL);
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
    xc_bench_vision_conf(&tc, 1024, 24, XC_DTYPE_BF16);
    const char *stamp = "cuda-vision-vitl14-bf16";
    char dir[512];
    snprintf(dir, sizeof dir, "%s", c.dir ? c.dir : "/tmp/xcpipe-bench-cuda-vision-vitl14-bf16");
    if (cb_probe("bench vision", c.device) != 0) {
        return 1;
    }
    st = xc_bench_ensure_ckpt(dir, &tc, stamp);
    if (st != XC_OK) {
        xc_cli_report("bench vision", dir, st);
        return 1;
    }
    xc_backend *be = NULL;
    xc_ckpt *ck = NULL;
    xc_vision *v = NULL;
    float *pixels = NULL;
    xc_buf out = {0}; /* device memory: the encoder writes its output on the device */
    double *t = NULL;
    xc_model_config cfg;
    xc_cuda_dev_info di;
    cb_ceil ceil = {0};
    int rc = 1;
    xc_backend_conf bc = {.device = c.device};
    XC_TRY_GOTO(xc_backend_create("cuda", &bc, &be), st, fail);
    XC_TRY_GOTO(xc_cuda_info(be, &di), st, fail);
    printf("device: %s (%d SMs)\n", di.name, di.n_sm);
    printf("| kind | figure | value | unit | ceiling | fraction | device |\n");
    printf("|---|---|---|---|---|---|---|\n");
    XC_TRY_GOTO(cb_ceilings(be, di.name, &ceil), st, fail);
    XC_TRY_GOTO(xc_model_config_load(dir, &cfg), st, fail);
    XC_TRY_GOTO(xc_ckpt_open(dir, &ck), st, fail);
    t = xc_malloc((size_t)c.iters * sizeof *t);
    if (!t) {
        st = XC_ERR_NOMEM;
        goto fail;
    }
    for (int i = 0; i < n_sizes; i++) {
        cfg.img_size = sizes[i];
        XC_TRY_GOTO(xc_vision_create(be, ck, &cfg, &v), st, fail);
        const xc_vision_info *vi = xc_vision_get_info(v);
        size_t px = (size_t)c.images * 3 * (size_t)sizes[i] * (size_t)sizes[i];
        pixels = xc_malloc(px * sizeof(float));
        if (!pixels) {
            st = XC_ERR_NOMEM;
            goto fail;
        }
        XC_TRY_GOTO(xc_backend_buf_alloc(
                        be, (size_t)c.images * vi->n_tokens * vi->out_dim * sizeof(float), &out),
                    st, fail);
        for (size_t k = 0; k < px; k++) {
            pixels[k] = (float)((k * 2654435761u) % 1000) / 500.0f - 1.0f;
        }
        for (int r = -1; r < c.iters; r++) {            /* one warm-up */
            XC_TRY_GOTO(xc_backend_sync(be), st, fail); /* nothing queued before the clock */
            double t0 = xc_now_s();
            XC_TRY_GOTO(xc_vision_encode(v, pixels, c.images, out.data, NULL), st, fail);
            XC_TRY_GOTO(xc_backend_sync(be), st, fail); /* the work is done before the clock */
            if (r >= 0) {
                t[r] = xc_now_s() - t0;
            }
        }
        qsort(t, (size_t)c.iters, sizeof *t, cb_cmp_double);
        double dt = t[c.iters / 2];
        double T = vi->n_tokens + 1, W = vi->width, I = vi->inter;
        double flops =
            c.images * (2.0 * vi->n_tokens * W * 3 * 14 * 14 +
                        vi->n_layers * (2.0 * T * (4 * W * W + 2 * W * I) + 4.0 * T * T * W) +
                        2.0 * vi->n_tokens * (W * vi->out_dim + (double)vi->out_dim * vi->out_dim));
        double tf = flops / dt / 1e12;
        printf("| vision | ViT-L/14 at %d, %d images per batch: %.2f ms/image | %.1f | images/s | "
               "%.1f TFLOP/s of %.1f | %.0f%% | %s |\n",
               sizes[i], c.images, 1e3 * dt / c.images, c.images / dt, tf, ceil.gemm_tflops,
               100.0 * tf / ceil.gemm_tflops, di.name);
        fflush(stdout);
        xc_free(pixels);
        pixels = NULL;
        xc_backend_buf_free(be, &out);
        out = (xc_buf){0};
        xc_vision_destroy(v);
        v = NULL;
    }
    rc = 0;
fail:
    if (rc != 0) {
        xc_cli_report("bench vision", "cuda", st);
    }
    xc_free(t);
    xc_free(pixels);
    if (be && out.data) {
        xc_backend_buf_free(be, &out);
    }
    xc_vision_destroy(v);
    xc_ckpt_close(ck);
    xc_backend_destroy(be);
    return rc;
}

#endif
