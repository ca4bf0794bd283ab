/* xcpipe generate: single-process generation on a checkpoint directory, from a chat prompt with
 * images (tokenizer, chat template and image preprocessing as the original chat()) or from raw
 * token ids and preprocessed pixels. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "xc_chat.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_engine.h"
#include "xc_image.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_time.h"
#include "xc_tokenizer.h"

typedef struct gen_conf {
    const char *model;
    const char *prompt;
    xc_conf_list images;
    const char *system;
    const char *history;
    bool raw;
    const char *variant;
    bool single_bos;
    const char *tokenizer;
    const char *input_ids;
    xc_conf_list pixels;
    int max_tokens;
    bool greedy;
    double temperature, top_p, rep;
    int top_k;
    int seed;
    bool print_ids;
    bool timings;
    int threads;
    int stages;
    int chunk;
    int max_image_bytes, max_image_mpixels, max_images;
    const char *backend;
    const char *kv_dtype;
} gen_conf;

static const xc_conf_entry gen_entries[] = {
    XC_CONF_STR("model", "XC_MODEL", gen_conf, model, NULL, NULL, "checkpoint directory"),
    XC_CONF_STR("prompt", NULL, gen_conf, prompt, NULL, NULL,
                "user text; each <ImageHere> marks where the next --image goes"),
    XC_CONF_LIST("image", NULL, gen_conf, images,
                 "image file (JPEG, PNG, WebP, GIF, BMP), in order"),
    XC_CONF_STR("history", NULL, gen_conf, history, NULL, NULL,
                "JSON file: a list of [user, assistant] pairs before --prompt (oldest first); "
                "<ImageHere> in a user text takes the next --image"),
    XC_CONF_STR("system", NULL, gen_conf, system, NULL, NULL,
                "replace the default meta instruction (\"\" for none)"),
    XC_CONF_BOOL("raw", NULL, gen_conf, raw, 0, "send the prompt untemplated (no chat markers)"),
    XC_CONF_STR("variant", NULL, gen_conf, variant, "auto", "auto|7b|vl",
                "default meta instruction: 7b or vl (auto: vl when img_size > 224)"),
    XC_CONF_BOOL("single-bos", NULL, gen_conf, single_bos, 0,
                 "one leading BOS instead of chat()'s BOS per text segment"),
    XC_CONF_STR("tokenizer", NULL, gen_conf, tokenizer, NULL, NULL,
                "SentencePiece model (default MODEL/tokenizer.model)"),
    XC_CONF_STR("input-ids", NULL, gen_conf, input_ids, NULL, NULL,
                "instead of --prompt: comma-separated token ids; 'img' marks one image slot"),
    XC_CONF_LIST("pixels", NULL, gen_conf, pixels,
                 "with --input-ids: raw float32 (3, S, S) file per 'img' slot"),
    XC_CONF_INT("max-tokens", NULL, gen_conf, max_tokens, 128, 1, 1 << 20, "new tokens at most"),
    XC_CONF_BOOL("greedy", NULL, gen_conf, greedy, 0,
                 "greedy decoding: argmax after the repetition penalty (chat(do_sample=False))"),
    XC_CONF_FLOAT("temperature", NULL, gen_conf, temperature, 1.0, 0, 100,
                  "temperature (0 = greedy)"),
    XC_CONF_FLOAT("top-p", NULL, gen_conf, top_p, 0.8, 1e-6, 1, "nucleus mass"),
    XC_CONF_INT("top-k", NULL, gen_conf, top_k, 50, 0, 1 << 24, "top-k (0 = off)"),
    XC_CONF_FLOAT("repetition-penalty", NULL, gen_conf, rep, 1.005, 1e-3, 100,
                  "repetition penalty (HF rule), also under --greedy as in chat(); 1 = off"),
    XC_CONF_INT("seed", NULL, gen_conf, seed, 0, 0, 2147483647, "sampling seed"),
    XC_CONF_BOOL("print-ids", NULL, gen_conf, print_ids, 0,
                 "also print the prompt's and the answer's token ids"),
    XC_CONF_BOOL("timings", NULL, gen_conf, timings, 0,
                 "print load, vision (timed in an extra run), prefill, decode tok/s and peak RSS "
                 "to stderr"),
    XC_CONF_INT("threads", "XC_THREADS", gen_conf, threads, 0, 0, 1024,
                "CPU threads (0 = all cores)"),
    XC_CONF_INT("stages", NULL, gen_conf, stages, 1, 1, 64,
                "cut the decoder into this many in-process stages"),
    XC_CONF_INT("chunk", NULL, gen_conf, chunk, 256, 1, 1 << 16, "prefill chunk rows"),
    XC_CONF_INT("max-image-bytes", "XC_IMAGE_MAX_BYTES", gen_conf, max_image_bytes,
                XC_IMAGE_DEFAULT_MAX_BYTES, 1, 1 << 30, "largest encoded image"),
    XC_CONF_INT("max-image-mpixels", NULL, gen_conf, max_image_mpixels, 40, 1, 1000,
                "largest image in megapixels (checked before decoding)"),
    XC_CONF_INT("max-images", NULL, gen_conf, max_images, XC_IMAGE_DEFAULT_MAX_IMAGES, 1, 64,
                "images per request"),
    XC_CONF_STR("backend", "XC_BACKEND", gen_conf, backend, "cpu", "cpu|cuda", "compute backend"),
    XC_CONF_STR("kv-dtype", "XC_KV_DTYPE", gen_conf, kv_dtype, "bf16", "bf16|f32",
                "KV cache element type: keys (after RoPE) and values rounded to bf16 on store, "
                "or kept in f32"),
};

static const xc_conf_spec gen_spec = {
    "xcpipe generate --model DIR --prompt TEXT [--image FILE]... [options]",
    "Runs the model in this process and prints the answer. The prompt is built as the original "
    "model.chat() builds it; --input-ids/--pixels bypass the tokenizer and image decoding.",
    gen_entries, sizeof gen_entries / sizeof gen_entries[0]};

/* A prompt being assembled: ids with image rows, ranges, pixels. */
typedef struct gen_prompt {
    int32_t *ids;
    int n;
    xc_row_range *img;
    int n_img;
    float *pixels;
} gen_prompt;

static void gen_prompt_fini(gen_prompt *p) {
    xc_free(p->ids);
    xc_free(p->img);
    xc_free(p->pixels);
    memset(p, 0, sizeof *p);
}

/* Parses "1,2,img,3" into ids and image ranges of n_img_tokens rows each. */
static int parse_ids(const char *s, int n_img_tokens, gen_prompt *p) {
    size_t cap = 64;
    p->ids = xc_malloc(cap * sizeof(int32_t));
    p->img = xc_malloc(64 * sizeof(xc_row_range));
    if (!p->ids || !p->img) {
        return -1;
    }
    const char *c = s;
    while (*c) {
        while (*c == ',' || *c == ' ') {
            c++;
        }
        if (!*c) {
            break;
        }
        int add = 1;
        int32_t val = 0;
        if (!strncmp(c, "img", 3)) {
            if (n_img_tokens <= 0 || p->n_img == 64) {
                fprintf(stderr, "xcpipe generate: 'img' slot but the model has no vision tower "
                                "(or more than 64 images)\n");
                return -1;
            }
            add = n_img_tokens;
            p->img[p->n_img++] = (xc_row_range){p->n, p->n + n_img_tokens};
            c += 3;
        } else {
            char *end;
            errno = 0;
            long x = strtol(c, &end, 10);
            if (end == c || errno || x < 0 || x > 0x7fffffff) {
                fprintf(stderr, "xcpipe generate: bad token id near '%.16s'\n", c);
                return -1;
            }
            val = (int32_t)x;
            c = end;
        }
        while ((size_t)(p->n + add) > cap) {
            cap *= 2;
            int32_t *nv = xc_realloc(p->ids, cap * sizeof(int32_t));
            if (!nv) {
                return -1;
            }
            p->ids = nv;
        }
        for (int i = 0; i < add; i++) {
            p->ids[p->n++] = val;
        }
        if (*c && *c != ',' && *c != ' ') {
            fprintf(stderr, "xcpipe generate: bad character '%c' in --input-ids\n", *c);
            return -1;
        }
    }
    return 0;
}

static int load_pixel_files(const gen_conf *c, int size, float *px) {
    size_t per = 3u * (size_t)size * (size_t)size;
    for (int i = 0; i < c->pixels.n; i++) {
        xc_mmap m;
        if (xc_mmap_open(c->pixels.items[i], &m) != XC_OK) {
            xc_cli_report("generate", c->pixels.items[i], XC_ERR_IO);
            return -1;
        }
        bool ok = m.size == per * sizeof(float);
        if (ok) {
            memcpy(px + (size_t)i * per, m.data, m.size);
        } else {
            fprintf(stderr,
                    "xcpipe generate: %s has %zu bytes; a (3, %d, %d) float32 image has %zu\n",
                    c->pixels.items[i], m.size, size, size, per * sizeof(float));
        }
        xc_mmap_close(&m);
        if (!ok) {
            return -1;
        }
    }
    return 0;
}

static int load_image_files(const gen_conf *c, const xc_image_limits *lim, int size, float *px) {
    size_t per = 3u * (size_t)size * (size_t)size;
    for (int i = 0; i < c->images.n; i++) {
        char *data = NULL;
        size_t len = 0;
        xc_status st = xc_file_read_all(c->images.items[i], lim->max_bytes, &data, &len);
        if (st == XC_OK) {
            st = xc_image_preprocess(data, len, lim, size, NULL, px + (size_t)i * per);
        }
        xc_free(data);
        if (st != XC_OK) {
            xc_cli_report("generate", c->images.items[i], st);
            return -1;
        }
    }
    return 0;
}

/* Reads --history: a JSON list of [user, assistant] string pairs. *buf owns the strings (one
 * allocation), *turns points into it. */
static int load_history(const char *path, char **buf, xc_chat_turn **turns, size_t *n) {
    char *data = NULL;
    size_t len = 0;
    xc_status st = xc_file_read_all(path, (size_t)64 << 20, &data, &len);
    if (st != XC_OK) {
        xc_cli_report("generate", path, st);
        return -1;
    }
    cJSON *o = cJSON_ParseWithLength(data, len);
    xc_free(data);
    int k = cJSON_IsArray(o) ? cJSON_GetArraySize(o) : -1;
    size_t total = 0;
    for (const cJSON *t = k > 0 ? o->child : NULL; t; t = t->next) {
        const cJSON *u = cJSON_GetArrayItem(t, 0), *a = cJSON_GetArrayItem(t, 1);
        if (!cJSON_IsArray(t) || cJSON_GetArraySize(t) != 2 || !cJSON_IsString(u) ||
            !cJSON_IsString(a)) {
            k = -1;
            break;
        }
        total += strlen(u->valuestring) + strlen(a->valuestring) + 2;
    }
    if (k < 0) {
        fprintf(stderr,
                "xcpipe generate: --history %s must be a JSON list of [user, assistant] "
                "string pairs\n",
                path);
        cJSON_Delete(o);
        return -1;
    }
    *turns = xc_calloc((size_t)(k ? k : 1), sizeof **turns);
    *buf = xc_malloc(total + 1);
    if (!*turns || !*buf) {
        cJSON_Delete(o);
        return -1;
    }
    char *w = *buf;
    int i = 0;
    for (const cJSON *t = k > 0 ? o->child : NULL; t; t = t->next, i++) {
        const char *s[2] = {cJSON_GetArrayItem(t, 0)->valuestring,
                            cJSON_GetArrayItem(t, 1)->valuestring};
        for (int j = 0; j < 2; j++) {
            size_t l = strlen(s[j]) + 1;
            memcpy(w, s[j], l);
            if (j) {
                (*turns)[i].assistant = w;
            } else {
                (*turns)[i].user = w;
            }
            w += l;
        }
    }
    *n = (size_t)k;
    cJSON_Delete(o);
    return 0;
}

/* Builds the prompt from --prompt/--image with the tokenizer and chat template. */
static int build_chat(const gen_conf *c, const xc_tokenizer *tok, const xc_engine *e,
                      gen_prompt *p) {
    const xc_vision_info *vi = xc_engine_vision_info(e);
    xc_image_limits lim;
    xc_image_limits_default(&lim);
    lim.max_bytes = (size_t)c->max_image_bytes;
    lim.max_pixels = (uint64_t)c->max_image_mpixels * 1000000u;
    lim.max_images = c->max_images;
    if (c->images.n > 0 && !vi) {
        fprintf(stderr, "xcpipe generate: --image given but the model has no vision tower\n");
        return -1;
    }
    if (xc_image_check_count(c->images.n, &lim) != XC_OK) {
        xc_cli_report("generate", "images", XC_ERR_ARG);
        return -1;
    }
    bool vl =
        !strcmp(c->variant, "vl") || (!strcmp(c->variant, "auto") && vi && vi->img_size > 224);
    xc_chat_turn *turns = NULL;
    size_t n_turns = 0;
    char *hist_buf = NULL;
    if (c->history && load_history(c->history, &hist_buf, &turns, &n_turns) != 0) {
        return -1;
    }
    xc_chat_request req = {.variant = vl ? XC_CHAT_VARIANT_VL : XC_CHAT_VARIANT_7B,
                           .system = c->system,
                           .history = turns,
                           .n_history = n_turns,
                           .query = c->prompt,
                           .n_images = (size_t)c->images.n,
                           .tokens_per_image = vi ? (size_t)vi->n_tokens : 0,
                           .bos = c->single_bos ? XC_CHAT_BOS_SINGLE : XC_CHAT_BOS_PER_SEGMENT,
                           .max_rows = (size_t)xc_engine_max_prompt(e),
                           .raw = c->raw};
    xc_chat_prompt cp;
    xc_status st = xc_chat_build(tok, &req, &cp);
    xc_free(turns);
    xc_free(hist_buf);
    if (st != XC_OK) {
        xc_cli_report("generate", "prompt", st);
        return -1;
    }
    p->n = (int)cp.n;
    p->ids = cp.ids;
    p->n_img = (int)cp.n_images;
    p->img = p->n_img ? xc_malloc((size_t)p->n_img * sizeof(xc_row_range)) : NULL;
    for (int i = 0; i < p->n_img && p->img; i++) {
        p->img[i] = (xc_row_range){(int32_t)cp.images[i].start, (int32_t)cp.images[i].end};
    }
    cp.ids = NULL;
    xc_chat_prompt_fini(&cp);
    if (p->n_img && !p->img) {
        return -1;
    }
    if (p->n_img) {
        size_t per = 3u * (size_t)vi->img_size * (size_t)vi->img_size;
        p->pixels = xc_malloc((size_t)p->n_img * per * sizeof(float));
        if (!p->pixels || load_image_files(c, &lim, vi->img_size, p->pixels) != 0) {
            return -1;
        }
    }
    return 0;
}

typedef struct gen_out {
    xc_tokenizer_stream stream;
    bool have_tok;
    bool first;
    double t_first, t_last; /* when the first and the latest token arrived */
    int n;
} gen_out;

static bool on_token(void *user, int32_t tok) {
    gen_out *o = user;
    if (o->have_tok) {
        const char *text = NULL;
        size_t len = 0;
        if (xc_tokenizer_stream_feed(&o->stream, tok, &text, &len) == XC_OK && len) {
            fwrite(text, 1, len, stdout);
        }
    } else {
        printf("%s%d", o->first ? "" : " ", tok);
    }
    o->first = false;
    fflush(stdout);
    o->t_last = xc_now_s();
    if (o->n++ == 0) {
        o->t_first = o->t_last;
    }
    return true;
}

static void print_ids(const char *label, const int32_t *ids, int n) {
    printf("%s:", label);
    for (int i = 0; i < n; i++) {
        printf(" %d", ids[i]);
    }
    printf("\n");
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
    if (c.temperature == 0.0) { /* temperature 0 = greedy, as over HTTP */
        c.greedy = true;
        c.temperature = 1.0;
    }
    if (c.history && !c.prompt) {
        fprintf(stderr, "xcpipe generate: --history goes with --prompt\n");
        return 2;
    }
    if (!c.model || (!c.prompt == !c.input_ids)) {
        fprintf(stderr, "xcpipe generate: --model and one of --prompt or --input-ids are "
                        "required (see --help)\n");
        return 2;
    }
    if ((c.prompt && c.pixels.n) || (c.input_ids && c.images.n)) {
        fprintf(stderr, "xcpipe generate: --image goes with --prompt, --pixels with --input-ids\n");
        return 2;
    }
    xc_engine_conf ec = {.model_dir = c.model,
                         .backend = c.backend,
                         .n_threads = c.threads,
                         .n_stages = c.stages,
                         .chunk = c.chunk,
                         .kv_dtype = c.kv_dtype};
    xc_engine *e = NULL;
    xc_tokenizer *tok = NULL;
    gen_prompt p = {0};
    int32_t *out = NULL;
    int rc = 1;
    gen_out go = {.first = true};
    double t_load = xc_now_s();
    st = xc_engine_create(&ec, &e);
    t_load = xc_now_s() - t_load;
    if (st != XC_OK) {
        xc_cli_report("generate", c.model, st);
        return 1;
    }
    char tpath[4096];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.model", c.model);
    const char *tfile = c.tokenizer ? c.tokenizer : tpath;
    if (c.tokenizer || c.prompt || access(tfile, R_OK) == 0) {
        st = xc_tokenizer_load(tfile, &tok);
        if (st != XC_OK) {
            xc_cli_report("generate", tfile, st);
            goto out;
        }
    }
    const xc_vision_info *vi = xc_engine_vision_info(e);
    if (c.prompt) {
        if (build_chat(&c, tok, e, &p) != 0) {
            rc = 2;
            goto out;
        }
    } else {
        if (parse_ids(c.input_ids, vi ? vi->n_tokens : 0, &p) != 0) {
            rc = 2;
            goto out;
        }
        if (p.n_img != c.pixels.n) {
            fprintf(stderr, "xcpipe generate: %d 'img' slots but %d --pixels files\n", p.n_img,
                    c.pixels.n);
            rc = 2;
            goto out;
        }
        if (p.n_img) {
            size_t per = 3u * (size_t)vi->img_size * (size_t)vi->img_size;
            p.pixels = xc_malloc((size_t)p.n_img * per * sizeof(float));
            if (!p.pixels || load_pixel_files(&c, vi->img_size, p.pixels) != 0) {
                goto out;
            }
        }
    }
    /* stop ids of chat(): EOS and [UNUSED_TOKEN_145] from the tokenizer, else config EOS */
    int32_t stops[2] = {2, -1};
    size_t n_stops = 1;
    if (tok) {
        xc_chat_stop_ids(tok, stops, &n_stops);
    }
    xc_gen_params g = {.max_new_tokens = c.max_tokens,
                       .stop_ids = stops,
                       .n_stop_ids = (int)n_stops,
                       .penalize_prompt = p.n_img == 0,
                       .sampling = {.greedy = c.greedy,
                                    .temperature = (float)c.temperature,
                                    .top_k = c.top_k,
                                    .top_p = (float)c.top_p,
                                    .repetition_penalty = (float)c.rep,
                                    .seed = (uint64_t)c.seed}};
    out = xc_malloc((size_t)c.max_tokens * sizeof(int32_t));
    if (!out) {
        goto out;
    }
    if (tok) {
        xc_tokenizer_stream_init(&go.stream, tok);
        go.have_tok = true;
    }
    for (int i = 0; i < p.n; i++) { /* image rows carry -1 from the template: any id will do */
        if (p.ids[i] < 0) {
            p.ids[i] = 0;
        }
    }
    xc_prompt xp = {.ids = p.ids, .n = p.n, .img = p.img, .n_img = p.n_img, .pixels = p.pixels};
    int n_out = 0;
    bool stopped = false;
    double t_vision = 0;
    if (c.timings && p.n_img > 0) { /* the vision tower alone, once more, to time it */
        float *emb =
            xc_malloc((size_t)p.n_img * vi->n_tokens * xc_engine_hidden(e) * sizeof(float));
        if (!emb) {
            goto out;
        }
        t_vision = xc_now_s();
        st = xc_engine_encode_images(e, p.pixels, p.n_img, emb);
        t_vision = xc_now_s() - t_vision;
        xc_free(emb);
        if (st != XC_OK) {
            xc_cli_report("generate", "vision", st);
            goto out;
        }
    }
    double t_gen = xc_now_s();
    st = xc_engine_generate(e, &xp, &g, on_token, &go, out, &n_out, &stopped);
    if (go.have_tok) {
        const char *text = NULL;
        size_t len = 0;
        if (xc_tokenizer_stream_finish(&go.stream, &text, &len) == XC_OK && len) {
            fwrite(text, 1, len, stdout);
        }
        xc_tokenizer_stream_fini(&go.stream);
    }
    printf("\n");
    if (st != XC_OK) {
        xc_cli_report("generate", "generation failed", st);
        goto out;
    }
    if (c.timings) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double first = go.n ? go.t_first - t_gen : 0;
        double dec = go.n > 1 ? (double)(go.n - 1) / (go.t_last - go.t_first) : 0;
        fprintf(stderr,
                "timings: load %.2f s; vision %.2f s (%d image%s, timed alone); first token after "
                "%.2f s (vision + prefill of %d rows + first step; prefill ~%.2f s, %.0f rows/s); "
                "decode %.3f tok/s over %d tokens; total %.2f s; peak RSS %.0f MB (10^6 bytes)\n",
                t_load, t_vision, p.n_img, p.n_img == 1 ? "" : "s", first, p.n, first - t_vision,
                first - t_vision > 0 ? p.n / (first - t_vision) : 0, dec, go.n, xc_now_s() - t_gen,
                (double)ru.ru_maxrss * 1024.0 / 1e6);
    }
    if (c.print_ids) {
        for (int r = 0; r < p.n_img; r++) { /* show image rows as -1 */
            for (int i = p.img[r].start; i < p.img[r].end; i++) {
                p.ids[i] = -1;
            }
        }
        print_ids("prompt ids", p.ids, p.n);
        print_ids("answer ids", out, n_out);
        printf("finish: %s\n", stopped ? "stop" : "length");
    }
    rc = 0;
out:
    gen_prompt_fini(&p);
    xc_free(out);
    xc_tokenizer_destroy(tok);
    xc_engine_destroy(e);
    return rc;
}
