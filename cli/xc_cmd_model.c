/* xcpipe model: `make-tiny` writes a deterministic tiny checkpoint in the real layout;
 * `make-random` a full-size one laid out as the published 7b / VL downloads;
 * `inspect` lists a checkpoint's tensors and its parameter count per component. */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "xc_ckpt.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_mem.h"
#include "xc_time.h"
#include "xc_tiny.h"

/* tests/fixtures/tokenizer/tiny.model (1000 pieces), embedded at build time (cli/CMakeLists.txt):
 * make-tiny writes it by default so that a tiny model runs with `generate` and `serve` as is. */
extern const unsigned char xc_tiny_tokenizer_model[];
extern const size_t xc_tiny_tokenizer_model_len;
#define XC_TINY_TOKENIZER_PIECES 1000

/* ---- argument helper ---- */

/* xc_conf stops at the first positional argument; `inspect DIR --filter X` puts options after
 * it. This moves the single positional argument out of argv (order of options kept). Returns the
 * positional (NULL if none) and sets *n_pos to how many there were. */
static const char *take_positional(const xc_conf_spec *spec, int argc, char **argv, char **out,
                                   int *out_argc, int *n_pos) {
    const char *pos = NULL;
    int k = 0;
    *n_pos = 0;
    out[k++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] != '\0') {
            out[k++] = argv[i];
            if (a[1] == '-' && !strchr(a, '=')) { /* does this option take the next argument? */
                for (size_t e = 0; e < spec->n_entries; e++) {
                    if (!strcmp(a + 2, spec->entries[e].name) &&
                        spec->entries[e].type != XC_CONF_T_BOOL && i + 1 < argc) {
                        out[k++] = argv[++i];
                        break;
                    }
                }
            }
            continue;
        }
        if (!pos) {
            pos = a;
        }
        (*n_pos)++;
    }
    *out_argc = k;
    return pos;
}

static int parse_or_exit(const char *cmd, const xc_conf_spec *spec, void *obj, int argc,
                         char **argv) {
    xc_status st = xc_conf_parse(spec, obj, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0; /* --help printed */
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe model %s: %s\n", cmd, xc_err_last());
        return 2;
    }
    return -1; /* go on */
}

/* ---- make-tiny ---- */

typedef struct tiny_opts {
    const char *out, *variant, *dtype, *format, *pos_table, *tokenizer;
    int seed, hidden, layers, heads, kv_heads, intermediate, lora_rank, vocab;
    int vision_dim, vision_layers, vision_mlp, patch, img_size, shards;
    double size_gb;
    bool post_layernorm, force;
} tiny_opts;

#define MAXD (1 << 24)

static const xc_conf_entry tiny_entries[] = {
    XC_CONF_STR("out", NULL, tiny_opts, out, NULL, NULL, "output directory (required)"),
    XC_CONF_STR("variant", NULL, tiny_opts, variant, "7b", "7b|vl",
                "config layout and default img_size (7b: 56, vl: 70)"),
    XC_CONF_INT("seed", NULL, tiny_opts, seed, 1, 0, 2147483647,
                "PRNG seed: same seed and sizes give identical bytes"),
    XC_CONF_STR("dtype", NULL, tiny_opts, dtype, "bf16", "bf16|f16|f32", "weight dtype"),
    XC_CONF_STR("format", NULL, tiny_opts, format, "safetensors", "safetensors|bin",
                "model.safetensors or pytorch_model.bin (torch.save layout)"),
    XC_CONF_INT("shards", NULL, tiny_opts, shards, 1, 1, 1000,
                "write N shard files plus the HF index json"),
    XC_CONF_INT("hidden", NULL, tiny_opts, hidden, 64, 2, MAXD, "hidden_size"),
    XC_CONF_INT("layers", NULL, tiny_opts, layers, 2, 1, 4096, "num_hidden_layers"),
    XC_CONF_INT("heads", NULL, tiny_opts, heads, 4, 1, MAXD, "num_attention_heads"),
    XC_CONF_INT("kv-heads", NULL, tiny_opts, kv_heads, 2, 1, MAXD,
                "num_key_value_heads (GQA groups)"),
    XC_CONF_INT("intermediate", NULL, tiny_opts, intermediate, 128, 1, MAXD,
                "intermediate_size (SwiGLU width)"),
    XC_CONF_INT("lora-rank", NULL, tiny_opts, lora_rank, 8, 1, MAXD,
                "PLoRA rank r on wqkv, wo, w1, w3, w2 (scaling 1)"),
    XC_CONF_INT("vocab", NULL, tiny_opts, vocab, 0, 0, MAXD,
                "vocab_size (0 = 1000, the built-in tokenizer's pieces; 512 with --tokenizer "
                "none; match a tokenizer given with --tokenizer FILE)"),
    XC_CONF_INT("vision-dim", NULL, tiny_opts, vision_dim, 64, 64, MAXD,
                "CLIP width D, a multiple of 64 (heads = D/64)"),
    XC_CONF_INT("vision-layers", NULL, tiny_opts, vision_layers, 2, 1, 4096, "CLIP encoder layers"),
    XC_CONF_INT("vision-mlp", NULL, tiny_opts, vision_mlp, 0, 0, MAXD, "CLIP MLP width (0 = 4*D)"),
    XC_CONF_INT("patch", NULL, tiny_opts, patch, 14, 1, 4096, "patch size"),
    XC_CONF_INT("img-size", NULL, tiny_opts, img_size, 0, 0, MAXD,
                "config img_size (0 = variant default); grid = img_size/patch"),
    XC_CONF_STR("pos-table", NULL, tiny_opts, pos_table, "grid", "grid|original",
                "position table: grid*grid+1 rows, or the 577-row 24x24 original "
                "(exercises interpolation)"),
    XC_CONF_BOOL("post-layernorm", NULL, tiny_opts, post_layernorm, 0,
                 "also write the (unused) vision post_layernorm"),
    XC_CONF_STR("tokenizer", NULL, tiny_opts, tokenizer, "builtin", NULL,
                "tokenizer.model to write: builtin (a 1000-piece SentencePiece BPE model), "
                "none, or a file to copy"),
    XC_CONF_FLOAT("size-gb", NULL, tiny_opts, size_gb, 0, 0, 1000,
                  "pick --layers so the checkpoint holds at least this many GB (1e9 bytes); "
                  "0 = off"),
    XC_CONF_BOOL("force", NULL, tiny_opts, force, 0,
                 "replace checkpoint files already in the output directory"),
};

static const xc_conf_spec tiny_spec = {
    "xcpipe model make-tiny --out DIR [options]",
    "Writes a deterministic InternLM-XComposer2 checkpoint with the real tensor names, config "
    "keys\n"
    "and layouts (interleaved wqkv, PLoRA on all five projections, CLIP with class token and\n"
    "position table, vision_proj) at reduced sizes: DIR/config.json plus model.safetensors or\n"
    "pytorch_model.bin (or shards + index). Defaults: hidden 64, 2 layers, 4 heads, 2 KV heads,\n"
    "intermediate 128, PLoRA rank 8, vocab 1000 and the built-in 1000-piece tokenizer, CLIP D\n"
    "64 (1 head), 2 layers, patch 14,\n"
    "img_size 56 (7b: 16 image tokens) or 70 (vl: 25 image tokens).\n\n"
    "Large checkpoint for benchmarks (--size-gb sets --layers; 94 MB per layer here, 0.82 GB\n"
    "of embeddings, output and vision; --size-gb 1 gives 2 layers, 1.5 gives 8; ~20 MB/s):\n"
    "  xcpipe model make-tiny --out /tmp/xc-big --hidden 2048 --heads 16 --kv-heads 4 \\\n"
    "      --intermediate 5632 --lora-rank 64 --vocab 92544 --vision-dim 1024 --size-gb 1.5",
    tiny_entries,
    sizeof tiny_entries / sizeof tiny_entries[0],
};

static xc_status write_builtin_tokenizer(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    FILE *f = fopen(path, "wb");
    if (!f) {
        return xc_errf(XC_ERR_IO, "cannot write %s", path);
    }
    size_t n = fwrite(xc_tiny_tokenizer_model, 1, xc_tiny_tokenizer_model_len, f);
    if (fclose(f) != 0 || n != xc_tiny_tokenizer_model_len) {
        return xc_errf(XC_ERR_IO, "cannot write %s", path);
    }
    return XC_OK;
}

static int cmd_make_tiny(int argc, char **argv) {
    tiny_opts o;
    int rc = parse_or_exit("make-tiny", &tiny_spec, &o, argc, argv);
    if (rc >= 0) {
        return rc;
    }
    if (!o.out || !o.out[0]) {
        fprintf(stderr, "xcpipe model make-tiny: --out DIR is required (see --help)\n");
        return 2;
    }
    xc_tiny_conf c;
    xc_tiny_conf_init(&c, o.variant);
    c.seed = (uint64_t)o.seed;
    c.hidden = o.hidden;
    c.layers = o.layers;
    c.heads = o.heads;
    c.kv_heads = o.kv_heads;
    c.intermediate = o.intermediate;
    c.lora_rank = o.lora_rank;
    bool builtin_tok = !strcmp(o.tokenizer, "builtin");
    bool no_tok = !strcmp(o.tokenizer, "none");
    c.vocab = o.vocab ? o.vocab : builtin_tok ? XC_TINY_TOKENIZER_PIECES : 512;
    if (c.vocab < 3) {
        fprintf(stderr, "xcpipe model make-tiny: --vocab must be at least 3\n");
        return 2;
    }
    if (builtin_tok && c.vocab < XC_TINY_TOKENIZER_PIECES) {
        fprintf(stderr,
                "xcpipe model make-tiny: --vocab %d is smaller than the built-in tokenizer's %d "
                "pieces (use --tokenizer none or FILE)\n",
                c.vocab, XC_TINY_TOKENIZER_PIECES);
        return 2;
    }
    c.vision_dim = o.vision_dim;
    c.vision_layers = o.vision_layers;
    c.vision_mlp = o.vision_mlp;
    c.patch = o.patch;
    c.img_size = o.img_size;
    c.pos_table_original = !strcmp(o.pos_table, "original");
    c.post_layernorm = o.post_layernorm;
    c.dtype = !strcmp(o.dtype, "f32")   ? XC_DTYPE_F32
              : !strcmp(o.dtype, "f16") ? XC_DTYPE_F16
                                        : XC_DTYPE_BF16;
    c.format = !strcmp(o.format, "bin") ? XC_CKPT_FORMAT_TORCH_BIN : XC_CKPT_FORMAT_SAFETENSORS;
    c.shards = o.shards;
    c.tokenizer = builtin_tok || no_tok ? NULL : o.tokenizer;
    c.force = o.force;
    xc_status st = xc_tiny_validate(&c);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe model make-tiny: %s\n", xc_err_last());
        return 2;
    }
    if (o.size_gb > 0) {
        st = xc_tiny_layers_for_bytes(&c, (uint64_t)(o.size_gb * 1e9), 4096, &c.layers);
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe model make-tiny: --size-gb: %s\n", xc_err_last());
            return 2;
        }
    }
    size_t nt;
    uint64_t np, nb;
    st = xc_tiny_count(&c, &nt, &np, &nb);
    if (st == XC_OK) {
        st = xc_tiny_write(o.out, &c);
    }
    if (st == XC_OK && builtin_tok) {
        st = write_builtin_tokenizer(o.out);
    }
    if (st != XC_OK) {
        xc_cli_report("model make-tiny", o.out, st);
        return 1;
    }
    printf("wrote %s: %s variant, %zu tensors, %" PRIu64 " parameters, %" PRIu64
           " bytes of %s weights (%s, %d file%s), %d layers, seed %d\n",
           o.out, c.variant, nt, np, nb, xc_dtype_name(c.dtype), o.format, c.shards,
           c.shards > 1 ? "s + index" : "", c.layers, o.seed);
    return 0;
}

/* ---- make-random ---- */

typedef struct random_opts {
    const char *out, *like, *format;
    int seed, threads, layers;
    bool force;
} random_opts;

static const xc_conf_entry random_entries[] = {
    XC_CONF_STR("out", NULL, random_opts, out, NULL, NULL, "output directory (required)"),
    XC_CONF_STR("like", NULL, random_opts, like, NULL, "7b|vl",
                "internlm-xcomposer2-7b or internlm-xcomposer2-vl-7b (required)"),
    XC_CONF_INT("seed", NULL, random_opts, seed, 1, 0, 2147483647,
                "PRNG seed: the same seed gives identical bytes"),
    XC_CONF_INT("threads", NULL, random_opts, threads, 2, 1, 64, "threads generating values"),
    XC_CONF_INT("layers", NULL, random_opts, layers, 0, 0, 32,
                "decoder layers (0 = all 32); fewer gives a real-width checkpoint for tests"),
    XC_CONF_STR("format", NULL, random_opts, format, "bin", "bin|safetensors",
                "PyTorch .bin as published, or safetensors (same names and sharding)"),
    XC_CONF_BOOL("force", NULL, random_opts, force, 0,
                 "replace checkpoint files already in the output directory"),
};

static const xc_conf_spec random_spec = {
    "xcpipe model make-random --like 7b|vl --out DIR [--seed S] [options]",
    "Writes a checkpoint with the exact names, shapes, dtype (bf16), config.json and file layout\n"
    "of the published downloads, with random weights scaled so activations stay finite:\n"
    "  7b: one pytorch_model.bin (17.3 GB), img_size 224, a 257-row CLIP position table;\n"
    "  vl: pytorch_model-00001-of-00002.bin (9.98 GB) + -00002 (7.35 GB) + the index, cut as\n"
    "      save_pretrained cuts at 10 GB, img_size 490, 1226 rows.\n"
    "Also a stand-in tokenizer.model of 92,544 pieces with <s> 1, </s> 2, [UNUSED_TOKEN_k] at\n"
    "92397 + k (145 = 92542, 146 = 92543). Values are U(-1,1) * sqrt(3) * std (std "
    "1/sqrt(fan_in),\n"
    "norms 1 + 0.1 N, output 4/sqrt(4096)) from a counter-based hash, generated by --threads\n"
    "threads one tensor at a time (memory: the largest tensor, 0.76 GB) and streamed to disk.",
    random_entries,
    sizeof random_entries / sizeof random_entries[0],
};

static int cmd_make_random(int argc, char **argv) {
    random_opts o;
    int rc = parse_or_exit("make-random", &random_spec, &o, argc, argv);
    if (rc >= 0) {
        return rc;
    }
    if (!o.out || !o.out[0] || !o.like) {
        fprintf(stderr, "xcpipe model make-random: --like 7b|vl and --out DIR are required (see "
                        "--help)\n");
        return 2;
    }
    xc_tiny_conf c;
    xc_tiny_conf_like(&c, o.like);
    c.seed = (uint64_t)o.seed;
    c.threads = o.threads;
    c.force = o.force;
    if (o.layers > 0) {
        c.layers = o.layers;
    }
    if (!strcmp(o.format, "safetensors")) {
        c.format = XC_CKPT_FORMAT_SAFETENSORS;
    }
    size_t nt;
    uint64_t np, nb;
    xc_status st = xc_tiny_count(&c, &nt, &np, &nb);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe model make-random: %s\n", xc_err_last());
        return 2;
    }
    double t0 = xc_now_s();
    st = xc_tiny_write(o.out, &c);
    if (st != XC_OK) {
        xc_cli_report("model make-random", o.out, st);
        return 1;
    }
    double dt = xc_now_s() - t0;
    printf("wrote %s: like %s, %zu tensors, %" PRIu64 " parameters, %" PRIu64
           " bytes of bf16 weights, %d layers, seed %d, %.1f s (%.0f MB/s)\n",
           o.out, c.variant, nt, np, nb, c.layers, o.seed, dt, dt > 0 ? (double)nb / 1e6 / dt : 0);
    return 0;
}

/* ---- inspect ---- */

typedef struct inspect_opts {
    const char *filter;
    bool summary;
} inspect_opts;

static const xc_conf_entry inspect_entries[] = {
    XC_CONF_STR("filter", NULL, inspect_opts, filter, NULL, NULL,
                "list and count only tensors whose name starts with this prefix"),
    XC_CONF_BOOL("summary", NULL, inspect_opts, summary, 0,
                 "print only the per-component counts, not every tensor"),
};

static const xc_conf_spec inspect_spec = {
    "xcpipe model inspect DIR|FILE [--filter PREFIX] [--summary]",
    "Lists every tensor of a checkpoint (safetensors or PyTorch .bin, single or sharded): name,\n"
    "dtype, shape and bytes; then the parameter count per component (vision tower, projector,\n"
    "token embeddings, decoder base weights, PLoRA, norms, output head) and the total.",
    inspect_entries,
    sizeof inspect_entries / sizeof inspect_entries[0],
};

enum { C_VISION, C_PROJ, C_EMBED, C_BASE, C_PLORA, C_NORM, C_OUTPUT, C_OTHER, C_COUNT };

static const char *comp_names[C_COUNT] = {
    "vision tower", "projector", "token embeddings", "decoder base weights",
    "PLoRA",        "norms",     "output head",      "other",
};

static bool starts(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

static int component_of(const char *name) {
    if (starts(name, "vit.")) {
        return C_VISION;
    }
    if (starts(name, "vision_proj.")) {
        return C_PROJ;
    }
    if (starts(name, "model.tok_embeddings.")) {
        return C_EMBED;
    }
    if (strstr(name, ".Plora_A.") || strstr(name, ".Plora_B.")) {
        return C_PLORA;
    }
    if (starts(name, "model.norm.") ||
        (starts(name, "model.layers.") &&
         (strstr(name, ".attention_norm.") || strstr(name, ".ffn_norm.")))) {
        return C_NORM;
    }
    if (starts(name, "model.layers.")) {
        return C_BASE;
    }
    if (starts(name, "output.")) {
        return C_OUTPUT;
    }
    return C_OTHER;
}

static void fmt_shape(const xc_tensor_view *v, char *out, size_t cap) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < v->ndim && k < cap; d++) {
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, d ? ", " : "", v->shape[d]);
    }
    if (k < cap) {
        snprintf(out + k, cap - k, "]");
    }
}

static int cmd_inspect(int argc, char **argv) {
    char **av = xc_malloc((size_t)(argc + 1) * sizeof *av);
    if (!av) {
        fprintf(stderr, "xcpipe model inspect: out of memory\n");
        return 1;
    }
    int ac, n_pos;
    const char *path = take_positional(&inspect_spec, argc, argv, av, &ac, &n_pos);
    inspect_opts o;
    int rc = parse_or_exit("inspect", &inspect_spec, &o, ac, av);
    xc_free(av);
    if (rc >= 0) {
        return rc;
    }
    if (n_pos != 1) {
        fprintf(stderr,
                "xcpipe model inspect: expected one checkpoint directory or file, got %d "
                "(see --help)\n",
                n_pos);
        return 2;
    }
    xc_ckpt *ck = NULL;
    xc_status st = xc_ckpt_open(path, &ck);
    if (st != XC_OK) {
        xc_cli_report("model inspect", path, st);
        return 1;
    }
    size_t n = xc_ckpt_count(ck);
    uint64_t params[C_COUNT] = {0}, bytes[C_COUNT] = {0}, tot_p = 0, tot_b = 0;
    size_t listed = 0;
    int width = 6; /* name column: the longest listed name */
    for (size_t i = 0; i < n; i++) {
        const char *name = xc_ckpt_name(ck, i);
        if (!o.filter || starts(name, o.filter)) {
            int len = (int)strlen(name);
            width = len > width ? len : width;
        }
    }
    if (!o.summary) {
        printf("%-*s %-5s %-18s %12s\n", width, "tensor", "dtype", "shape", "bytes");
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = xc_ckpt_name(ck, i);
        if (o.filter && !starts(name, o.filter)) {
            continue;
        }
        xc_tensor_view v;
        st = xc_ckpt_get(ck, name, &v);
        if (st != XC_OK) {
            xc_cli_report("model inspect", name, st);
            xc_ckpt_close(ck);
            return 1;
        }
        uint64_t ne = 1;
        for (int d = 0; d < v.ndim; d++) {
            ne *= (uint64_t)v.shape[d];
        }
        int c = component_of(name);
        params[c] += ne;
        bytes[c] += v.nbytes;
        tot_p += ne;
        tot_b += v.nbytes;
        listed++;
        if (!o.summary) {
            char shape[96];
            fmt_shape(&v, shape, sizeof shape);
            printf("%-*s %-5s %-18s %12zu\n", width, name, xc_dtype_name(v.dtype), shape, v.nbytes);
        }
    }
    const char *fmt =
        xc_ckpt_get_format(ck) == XC_CKPT_FORMAT_SAFETENSORS ? "safetensors" : "pytorch .bin";
    xc_ckpt_close(ck);
    printf("%s%s: %s, %zu of %zu tensors%s%s\n", o.summary ? "" : "\n", path, fmt, listed, n,
           o.filter ? " with prefix " : "", o.filter ? o.filter : "");
    printf("%-22s %14s %10s %14s\n", "component", "parameters", "millions", "bytes");
    for (int c = 0; c < C_COUNT; c++) {
        if (c == C_OTHER && params[c] == 0 && bytes[c] == 0) {
            continue; /* only shown when something did not fit a known component */
        }
        printf("%-22s %14" PRIu64 " %10.3f %14" PRIu64 "\n", comp_names[c], params[c],
               (double)params[c] / 1e6, bytes[c]);
    }
    printf("%-22s %14" PRIu64 " %10.3f %14" PRIu64 "\n", "total", tot_p, (double)tot_p / 1e6,
           tot_b);
    return 0;
}

int xc_cmd_model(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "make-tiny")) {
        return cmd_make_tiny(argc - 1, argv + 1);
    }
    if (argc >= 2 && !strcmp(argv[1], "make-random")) {
        return cmd_make_random(argc - 1, argv + 1);
    }
    if (argc >= 2 && !strcmp(argv[1], "inspect")) {
        return cmd_inspect(argc - 1, argv + 1);
    }
    bool help = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
    FILE *f = help ? stdout : stderr;
    if (argc >= 2 && !help) {
        fprintf(stderr, "xcpipe model: unknown subcommand '%s'\n", argv[1]);
    }
    fprintf(f, "usage: xcpipe model <subcommand> [options]   (--help on each)\n\n"
               "subcommands:\n"
               "  make-tiny    write a deterministic tiny checkpoint in the real layout\n"
               "  make-random  write a full-size random checkpoint laid out as the 7b or VL "
               "download\n"
               "  inspect      list a checkpoint's tensors and parameter counts per component\n");
    return help ? 0 : 2;
}
