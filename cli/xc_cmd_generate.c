/* xcpipe generate: single-process generation on a checkpoint directory. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_engine.h"
#include "xc_mem.h"
#include "xc_mmap.h"

typedef struct gen_conf {
    const char *model;
    const char *input_ids;
    xc_conf_list pixels;
    int max_tokens;
    bool greedy;
    double temperature, top_p, rep;
    int top_k;
    int seed;
    bool print_ids;
    int threads;
    int stages;
    int chunk;
    const char *backend;
} gen_conf;

static const xc_conf_entry gen_entries[] = {
    XC_CONF_STR("model", "XC_MODEL", gen_conf, model, NULL, NULL, "checkpoint directory"),
    XC_CONF_STR("input-ids", NULL, gen_conf, input_ids, NULL, NULL,
                "prompt as comma-separated token ids; 'img' marks one image slot"),
    XC_CONF_LIST("pixels", NULL, gen_conf, pixels,
                 "preprocessed image: raw float32 (3, S, S) file, one per 'img' slot"),
    XC_CONF_INT("max-tokens", NULL, gen_conf, max_tokens, 128, 1, 1 << 20, "new tokens at most"),
    XC_CONF_BOOL("greedy", NULL, gen_conf, greedy, 0, "greedy decoding (argmax)"),
    XC_CONF_FLOAT("temperature", NULL, gen_conf, temperature, 1.0, 1e-3, 100, "temperature"),
    XC_CONF_FLOAT("top-p", NULL, gen_conf, top_p, 0.8, 1e-6, 1, "nucleus mass"),
    XC_CONF_INT("top-k", NULL, gen_conf, top_k, 50, 0, 1 << 24, "top-k (0 = off)"),
    XC_CONF_FLOAT("repetition-penalty", NULL, gen_conf, rep, 1.005, 1e-3, 100,
                  "repetition penalty (HF rule)"),
    XC_CONF_INT("seed", NULL, gen_conf, seed, 0, 0, 2147483647, "sampling seed"),
    XC_CONF_BOOL("print-ids", NULL, gen_conf, print_ids, 0,
                 "also print the prompt's and the answer's token ids"),
    XC_CONF_INT("threads", "XC_THREADS", gen_conf, threads, 0, 0, 1024,
                "CPU threads (0 = all cores)"),
    XC_CONF_INT("stages", NULL, gen_conf, stages, 1, 1, 64,
                "cut the decoder into this many in-process stages"),
    XC_CONF_INT("chunk", NULL, gen_conf, chunk, 256, 1, 1 << 16, "prefill chunk rows"),
    XC_CONF_STR("backend", "XC_BACKEND", gen_conf, backend, "cpu", "cpu|cuda", "compute backend"),
};

static const xc_conf_spec gen_spec = {
    "xcpipe generate --model DIR --input-ids IDS [--pixels FILE]... [options]",
    "Runs the model in this process and prints the generated token ids.", gen_entries,
    sizeof gen_entries / sizeof gen_entries[0]};

/* Parses "1,2,img,3" into ids and image ranges of n_img_tokens rows each. */
static int parse_ids(const char *s, int n_img_tokens, int32_t **ids, int *n, xc_row_range **rr,
                     int *n_r) {
    size_t cap = 64;
    int32_t *v = xc_malloc(cap * sizeof(int32_t));
    xc_row_range *r = xc_malloc(64 * sizeof(xc_row_range));
    int cnt = 0, nr = 0;
    const char *p = s;
    while (v && r && *p) {
        while (*p == ',' || *p == ' ') {
            p++;
        }
        if (!*p) {
            break;
        }
        int add = 1;
        int32_t val = 0;
        if (!strncmp(p, "img", 3)) {
            if (n_img_tokens <= 0 || nr == 64) {
                fprintf(stderr, "xcpipe generate: 'img' slot but the model has no vision tower "
                                "(or more than 64 images)\n");
                goto fail;
            }
            add = n_img_tokens;
            r[nr++] = (xc_row_range){cnt, cnt + n_img_tokens};
            p += 3;
        } else {
            char *end;
            errno = 0;
            long x = strtol(p, &end, 10);
            if (end == p || errno || x < 0 || x > 0x7fffffff) {
                fprintf(stderr, "xcpipe generate: bad token id near '%.16s'\n", p);
                goto fail;
            }
            val = (int32_t)x;
            p = end;
        }
        while ((size_t)(cnt + add) > cap) {
            cap *= 2;
            int32_t *nv = xc_realloc(v, cap * sizeof(int32_t));
            if (!nv) {
                goto fail;
            }
            v = nv;
        }
        for (int i = 0; i < add; i++) {
            v[cnt++] = val;
        }
        if (*p && *p != ',' && *p != ' ') {
            fprintf(stderr, "xcpipe generate: bad character '%c' in --input-ids\n", *p);
            goto fail;
        }
    }
    if (!v || !r) {
        goto fail;
    }
    *ids = v;
    *n = cnt;
    *rr = r;
    *n_r = nr;
    return 0;
fail:
    xc_free(v);
    xc_free(r);
    return -1;
}

static int load_pixels(const gen_conf *c, const xc_vision_info *vi, float **out) {
    size_t per = 3u * (size_t)vi->img_size * (size_t)vi->img_size;
    float *px = xc_malloc((size_t)c->pixels.n * per * sizeof(float));
    if (!px) {
        return -1;
    }
    for (int i = 0; i < c->pixels.n; i++) {
        xc_mmap m;
        if (xc_mmap_open(c->pixels.items[i], &m) != XC_OK) {
            xc_cli_report("generate", c->pixels.items[i], XC_ERR_IO);
            xc_free(px);
            return -1;
        }
        if (m.size != per * sizeof(float)) {
            fprintf(stderr,
                    "xcpipe generate: %s has %zu bytes; a (3, %d, %d) float32 image has %zu\n",
                    c->pixels.items[i], m.size, vi->img_size, vi->img_size, per * sizeof(float));
            xc_mmap_close(&m);
            xc_free(px);
            return -1;
        }
        memcpy(px + (size_t)i * per, m.data, m.size);
        xc_mmap_close(&m);
    }
    *out = px;
    return 0;
}

static bool print_token(void *user, int32_t tok) {
    int *first = user;
    printf("%s%d", *first ? "" : " ", tok);
    *first = 0;
    fflush(stdout);
    return true;
}

int xc_cmd_generate(int argc, char **argv) {
    gen_conf c;
    xc_status st = xc_conf_parse(&gen_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe generate: %s\n", xc_err_last());
        return 2;
    }
    if (!c.model || !c.input_ids) {
        fprintf(stderr, "xcpipe generate: --model and --input-ids are required (see --help)\n");
        return 2;
    }
    xc_engine_conf ec = {.model_dir = c.model,
                         .backend = c.backend,
                         .n_threads = c.threads,
                         .n_stages = c.stages,
                         .chunk = c.chunk};
    xc_engine *e = NULL;
    int32_t *ids = NULL, *out = NULL;
    xc_row_range *rr = NULL;
    float *px = NULL;
    int n = 0, n_r = 0, rc = 1;
    st = xc_engine_create(&ec, &e);
    if (st != XC_OK) {
        xc_cli_report("generate", c.model, st);
        return 1;
    }
    const xc_vision_info *vi = xc_engine_vision_info(e);
    if (parse_ids(c.input_ids, vi ? vi->n_tokens : 0, &ids, &n, &rr, &n_r) != 0) {
        rc = 2;
        goto out;
    }
    if (n_r != c.pixels.n) {
        fprintf(stderr, "xcpipe generate: %d 'img' slots but %d --pixels files\n", n_r, c.pixels.n);
        rc = 2;
        goto out;
    }
    if (n_r > 0 && load_pixels(&c, vi, &px) != 0) {
        goto out;
    }
    xc_gen_params g = {.max_new_tokens = c.max_tokens,
                       .penalize_prompt = n_r == 0,
                       .sampling = {.greedy = c.greedy,
                                    .temperature = (float)c.temperature,
                                    .top_k = c.top_k,
                                    .top_p = (float)c.top_p,
                                    .repetition_penalty = (float)c.rep,
                                    .seed = (uint64_t)c.seed}};
    if (c.greedy) {
        g.sampling.repetition_penalty = 1.0f;
    }
    out = xc_malloc((size_t)c.max_tokens * sizeof(int32_t));
    if (!out) {
        goto out;
    }
    xc_prompt p = {.ids = ids, .n = n, .img = rr, .n_img = n_r, .pixels = px};
    int first = 1, n_out = 0;
    bool stopped = false;
    st = xc_engine_generate(e, &p, &g, print_token, &first, out, &n_out, &stopped);
    printf("\n");
    if (st != XC_OK) {
        xc_cli_report("generate", "generation failed", st);
        goto out;
    }
    if (c.print_ids) {
        fprintf(stderr, "prompt tokens: %d (%d image rows), generated: %d%s\n", n,
                n_r * (vi ? vi->n_tokens : 0), n_out, stopped ? " (stop id)" : "");
    }
    rc = 0;
out:
    xc_free(ids);
    xc_free(rr);
    xc_free(px);
    xc_free(out);
    xc_engine_destroy(e);
    return rc;
}
