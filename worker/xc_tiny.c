/* Tiny-model generator: builds the tensor list of an InternLM-XComposer2 checkpoint at reduced
 * sizes and streams deterministic values into the checkpoint writers. */
#include "xc_tiny.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_ckpt_write.h"
#include "xc_mem.h"
#include "xc_spm_wire.h"

#define NAME_MAX_LEN 128
#define DIM_MAX      (1 << 24) /* any single size above this is surely a typo */

/* ---- deterministic normal samples ---- */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    }
    return h;
}

/* Natural log of x > 0 from +, -, *, / only (libm's log may differ in the last bit between
 * libraries; this must not, so every machine writes the same bytes). frexp is exact. */
static double det_log(double x) {
    int e;
    double m = frexp(x, &e); /* x = m * 2^e, m in [0.5, 1) */
    if (m < 0.70710678118654752) {
        m *= 2.0;
        e--;
    }
    /* log(m) = 2 atanh(t), t = (m-1)/(m+1), |t| <= 0.172: 14 odd terms reach 1e-17 */
    double t = (m - 1.0) / (m + 1.0), t2 = t * t, p = t, s = 0.0;
    for (int k = 0; k < 14; k++) {
        s += p / (double)(2 * k + 1);
        p *= t2;
    }
    return 2.0 * s + (double)e * 0.69314718055994531;
}

/* Standard normal number `index` of stream `key`: element-addressable (any element can be computed
 * alone), via the polar method on a splitmix64 sequence started from a hash of (key, index). */
static double normal_at(uint64_t key, uint64_t index) {
    uint64_t s = mix64(key + index * 0x9e3779b97f4a7c15ull);
    for (;;) {
        s += 0x9e3779b97f4a7c15ull;
        double u = (double)(mix64(s) >> 11) * 0x1p-52 - 1.0; /* [-1, 1) */
        s += 0x9e3779b97f4a7c15ull;
        double v = (double)(mix64(s) >> 11) * 0x1p-52 - 1.0;
        double r = u * u + v * v;
        if (r > 0.0 && r < 1.0) {
            return u * sqrt(-2.0 * det_log(r) / r); /* sqrt is correctly rounded (IEEE) */
        }
    }
}

static uint64_t stream_key(uint64_t seed, const char *name) {
    return mix64(seed ^ 0x5851f42d4c957f2dull) ^ fnv1a64(name);
}

/* ---- tensor list ---- */

typedef enum tkind {
    TK_NORMAL, /* mean + std * N(0,1), element i of the tensor's own stream */
    TK_QKV,    /* rows interleaved from three logical streams <name>:q, :k, :v */
} tkind;

typedef struct tspec {
    char name[NAME_MAX_LEN];
    int ndim;
    int64_t shape[4];
    tkind kind;
    float mean, std;
} tspec;

typedef struct tlist {
    tspec *t;
    size_t n, cap;
    xc_status st;
} tlist;

static tspec *add(tlist *l, tkind kind, float mean, float std, int ndim, int64_t d0, int64_t d1,
                  const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static tspec *add(tlist *l, tkind kind, float mean, float std, int ndim, int64_t d0, int64_t d1,
                  const char *fmt, ...) {
    if (l->st != XC_OK) {
        return NULL;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        tspec *t = xc_realloc(l->t, cap * sizeof *t);
        if (!t) {
            l->st = xc_errf(XC_ERR_NOMEM, "out of memory");
            return NULL;
        }
        l->t = t;
        l->cap = cap;
    }
    tspec *s = &l->t[l->n++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->kind = kind;
    s->mean = mean;
    s->std = std;
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    return s;
}

static float inv_sqrt(int n) {
    return (float)(1.0 / sqrt((double)n));
}

/* A PLoRA linear: weight (out, in) plus Plora_A (r, in) and Plora_B (out, r). B is nonzero (as
 * after training) and large enough that PLoRA visibly changes image rows. */
static void add_plora(tlist *l, const xc_tiny_conf *c, const char *base, int out, int in,
                      tkind kind) {
    add(l, kind, 0, inv_sqrt(in), 2, out, in, "%s.weight", base);
    add(l, TK_NORMAL, 0, inv_sqrt(in), 2, c->lora_rank, in, "%s.Plora_A.weight", base);
    add(l, kind, 0, 0.5f * inv_sqrt(c->lora_rank), 2, out, c->lora_rank, "%s.Plora_B.weight", base);
}

/* weight (1 + 0.1 N) and bias (0.1 N) of a LayerNorm, or weight only for an RMSNorm. */
static void add_norm(tlist *l, const char *base, int dim, bool bias) {
    add(l, TK_NORMAL, 1.0f, 0.1f, 1, dim, 0, "%s.weight", base);
    if (bias) {
        add(l, TK_NORMAL, 0, 0.1f, 1, dim, 0, "%s.bias", base);
    }
}

static void add_linear_bias(tlist *l, const char *base, int out, int in) {
    add(l, TK_NORMAL, 0, inv_sqrt(in), 2, out, in, "%s.weight", base);
    add(l, TK_NORMAL, 0, 0.1f, 1, out, 0, "%s.bias", base);
}

int xc_tiny_img_size(const xc_tiny_conf *c) {
    if (c->img_size > 0) {
        return c->img_size;
    }
    return (c->variant && !strcmp(c->variant, "vl")) ? 70 : 56;
}

/* The checkpoint's tensors in module order (the order of the model's state_dict). */
static xc_status build_list(const xc_tiny_conf *c, tlist *l) {
    memset(l, 0, sizeof *l);
    int hd = c->hidden / c->heads;
    int qkv_rows = (c->heads + 2 * c->kv_heads) * hd;
    char b[NAME_MAX_LEN];
    add(l, TK_NORMAL, 0, 1.0f, 2, c->vocab, c->hidden, "model.tok_embeddings.weight");
    for (int i = 0; i < c->layers; i++) {
        snprintf(b, sizeof b, "model.layers.%d.attention.wqkv", i);
        add_plora(l, c, b, qkv_rows, c->hidden, TK_QKV);
        snprintf(b, sizeof b, "model.layers.%d.attention.wo", i);
        add_plora(l, c, b, c->hidden, c->heads * hd, TK_NORMAL);
        snprintf(b, sizeof b, "model.layers.%d.feed_forward.w1", i);
        add_plora(l, c, b, c->intermediate, c->hidden, TK_NORMAL);
        snprintf(b, sizeof b, "model.layers.%d.feed_forward.w3", i);
        add_plora(l, c, b, c->intermediate, c->hidden, TK_NORMAL);
        snprintf(b, sizeof b, "model.layers.%d.feed_forward.w2", i);
        add_plora(l, c, b, c->hidden, c->intermediate, TK_NORMAL);
        snprintf(b, sizeof b, "model.layers.%d.attention_norm", i);
        add_norm(l, b, c->hidden, false);
        snprintf(b, sizeof b, "model.layers.%d.ffn_norm", i);
        add_norm(l, b, c->hidden, false);
    }
    add_norm(l, "model.norm", c->hidden, false);
    add(l, TK_NORMAL, 0, (c->output_gain > 0 ? c->output_gain : 1.0f) * inv_sqrt(c->hidden), 2,
        c->vocab, c->hidden, "output.weight");

    const char *vm = "vit.vision_tower.vision_model";
    int d = c->vision_dim, p = c->patch, mlp = c->vision_mlp ? c->vision_mlp : 4 * d;
    int grid = xc_tiny_img_size(c) / p;
    int pos_rows =
        c->pos_table_original ? XC_TINY_POS_ORIG_GRID * XC_TINY_POS_ORIG_GRID + 1 : grid * grid + 1;
    add(l, TK_NORMAL, 0, 0.5f, 1, d, 0, "%s.embeddings.class_embedding", vm);
    tspec *pe = add(l, TK_NORMAL, 0, inv_sqrt(3 * p * p), 4, d, 3,
                    "%s.embeddings.patch_embedding.weight", vm);
    if (pe) {
        pe->shape[2] = pe->shape[3] = p;
    }
    add(l, TK_NORMAL, 0, 0.5f, 2, pos_rows, d, "%s.embeddings.position_embedding.weight", vm);
    snprintf(b, sizeof b, "%s.pre_layrnorm", vm); /* sic: HF CLIP's spelling */
    add_norm(l, b, d, true);
    static const char *proj[4] = {"k_proj", "v_proj", "q_proj", "out_proj"};
    for (int i = 0; i < c->vision_layers; i++) {
        for (int k = 0; k < 4; k++) {
            snprintf(b, sizeof b, "%s.encoder.layers.%d.self_attn.%s", vm, i, proj[k]);
            add_linear_bias(l, b, d, d);
        }
        snprintf(b, sizeof b, "%s.encoder.layers.%d.layer_norm1", vm, i);
        add_norm(l, b, d, true);
        snprintf(b, sizeof b, "%s.encoder.layers.%d.mlp.fc1", vm, i);
        add_linear_bias(l, b, mlp, d);
        snprintf(b, sizeof b, "%s.encoder.layers.%d.mlp.fc2", vm, i);
        add_linear_bias(l, b, d, mlp);
        snprintf(b, sizeof b, "%s.encoder.layers.%d.layer_norm2", vm, i);
        add_norm(l, b, d, true);
    }
    if (c->post_layernorm) {
        snprintf(b, sizeof b, "%s.post_layernorm", vm);
        add_norm(l, b, d, true);
    }
    add_linear_bias(l, "vision_proj.0", c->hidden, d);
    add_linear_bias(l, "vision_proj.2", c->hidden, c->hidden);
    if (l->st != XC_OK) {
        xc_free(l->t);
        l->t = NULL;
    }
    return l->st;
}

static uint64_t numel(const tspec *s) {
    uint64_t n = 1;
    for (int d = 0; d < s->ndim; d++) {
        n *= (uint64_t)s->shape[d];
    }
    return n;
}

/* ---- configuration ---- */

void xc_tiny_conf_init(xc_tiny_conf *c, const char *variant) {
    memset(c, 0, sizeof *c);
    c->variant = variant;
    c->seed = 1;
    c->hidden = 64;
    c->layers = 2;
    c->heads = 4;
    c->kv_heads = 2;
    c->intermediate = 128;
    c->lora_rank = 8;
    c->vocab = 512;
    c->vision_dim = 64;
    c->vision_layers = 2;
    c->patch = 14;
    c->dtype = XC_DTYPE_BF16;
    c->format = XC_CKPT_FORMAT_SAFETENSORS;
    c->shards = 1;
}

static xc_status check_range(const char *what, int v, int lo) {
    if (v < lo || v > DIM_MAX) {
        return xc_errf(XC_ERR_ARG, "%s = %d is out of range [%d, %d]", what, v, lo, DIM_MAX);
    }
    return XC_OK;
}

xc_status xc_tiny_validate(const xc_tiny_conf *c) {
    if (!c->variant || (strcmp(c->variant, "7b") && strcmp(c->variant, "vl"))) {
        return xc_errf(XC_ERR_ARG, "variant '%s' is not 7b or vl",
                       c->variant ? c->variant : "(null)");
    }
    XC_TRY(check_range("hidden", c->hidden, 1));
    XC_TRY(check_range("layers", c->layers, 1));
    XC_TRY(check_range("heads", c->heads, 1));
    XC_TRY(check_range("kv_heads", c->kv_heads, 1));
    XC_TRY(check_range("intermediate", c->intermediate, 1));
    XC_TRY(check_range("lora_rank", c->lora_rank, 1));
    XC_TRY(check_range("vocab", c->vocab, 3)); /* bos 1 and eos/pad 2 must be valid ids */
    XC_TRY(check_range("vision_dim", c->vision_dim, 1));
    XC_TRY(check_range("vision_layers", c->vision_layers, 1));
    XC_TRY(check_range("vision_mlp", c->vision_mlp, 0));
    XC_TRY(check_range("patch", c->patch, 1));
    XC_TRY(check_range("img_size", c->img_size, 0));
    XC_TRY(check_range("shards", c->shards, 1));
    if (c->hidden % c->heads != 0) {
        return xc_errf(XC_ERR_ARG, "hidden %d is not a multiple of heads %d", c->hidden, c->heads);
    }
    if ((c->hidden / c->heads) % 2 != 0) {
        return xc_errf(XC_ERR_ARG, "head dim %d (hidden/heads) must be even for RoPE",
                       c->hidden / c->heads);
    }
    if (c->heads % c->kv_heads != 0) {
        return xc_errf(XC_ERR_ARG, "heads %d is not a multiple of kv_heads %d", c->heads,
                       c->kv_heads);
    }
    if (c->vision_dim % XC_TINY_VISION_HEAD_DIM != 0) {
        return xc_errf(XC_ERR_ARG, "vision_dim %d is not a multiple of the CLIP head dim %d",
                       c->vision_dim, XC_TINY_VISION_HEAD_DIM);
    }
    int img = xc_tiny_img_size(c);
    if (img < c->patch || img % c->patch != 0) {
        return xc_errf(XC_ERR_ARG, "img_size %d is not a positive multiple of patch %d", img,
                       c->patch);
    }
    if (c->dtype != XC_DTYPE_F32 && c->dtype != XC_DTYPE_F16 && c->dtype != XC_DTYPE_BF16) {
        return xc_errf(XC_ERR_ARG, "dtype %s is not f32, f16 or bf16", xc_dtype_name(c->dtype));
    }
    if (c->format != XC_CKPT_FORMAT_SAFETENSORS && c->format != XC_CKPT_FORMAT_TORCH_BIN) {
        return xc_errf(XC_ERR_ARG, "unknown checkpoint format %d", (int)c->format);
    }
    return XC_OK;
}

xc_status xc_tiny_count(const xc_tiny_conf *c, size_t *n_tensors, uint64_t *n_params,
                        uint64_t *n_bytes) {
    XC_TRY(xc_tiny_validate(c));
    tlist l;
    XC_TRY(build_list(c, &l));
    uint64_t p = 0;
    for (size_t i = 0; i < l.n; i++) {
        p += numel(&l.t[i]);
    }
    *n_tensors = l.n;
    *n_params = p;
    *n_bytes = p * xc_dtype_size(c->dtype);
    xc_free(l.t);
    return XC_OK;
}

xc_status xc_tiny_layers_for_bytes(const xc_tiny_conf *c, uint64_t bytes, int max_layers,
                                   int *layers) {
    xc_tiny_conf t = *c;
    size_t nt;
    uint64_t p, b1, b2;
    t.layers = 1;
    XC_TRY(xc_tiny_count(&t, &nt, &p, &b1));
    t.layers = 2;
    XC_TRY(xc_tiny_count(&t, &nt, &p, &b2));
    uint64_t per_layer = b2 - b1, base = b1 - per_layer; /* the size is affine in layers */
    uint64_t need = bytes <= b1 ? 1 : 1 + (bytes - b1 + per_layer - 1) / per_layer;
    if (need > (uint64_t)max_layers) {
        return xc_errf(XC_ERR_ARG,
                       "%.2f GB needs %" PRIu64 " layers of %.1f MB (fixed part %.1f MB), more "
                       "than %d: raise --hidden/--intermediate/--vocab",
                       (double)bytes / 1e9, need, (double)per_layer / 1e6, (double)base / 1e6,
                       max_layers);
    }
    *layers = (int)need;
    return XC_OK;
}

/* ---- values ---- */

typedef struct gen {
    const xc_tiny_conf *c;
    const tspec *t;
} gen;

/* Maps row r of the fused wqkv (or its Plora_B) to (which, logical row) per reference 3.2: KV
 * group g owns rows g*(q_per_kv+2)*hd .. : its q_per_kv query heads, then k head g, then v head
 * g. */
static void qkv_row(const xc_tiny_conf *c, int64_t r, int *which, int64_t *lrow) {
    int64_t hd = c->hidden / c->heads, qpk = c->heads / c->kv_heads;
    int64_t g = r / ((qpk + 2) * hd), j = r % ((qpk + 2) * hd);
    if (j < qpk * hd) {
        *which = 0;
        *lrow = g * qpk * hd + j;
    } else if (j < (qpk + 1) * hd) {
        *which = 1;
        *lrow = g * hd + (j - qpk * hd);
    } else {
        *which = 2;
        *lrow = g * hd + (j - (qpk + 1) * hd);
    }
}

static uint64_t qkv_key(const xc_tiny_conf *c, const char *name, int which) {
    char sub[NAME_MAX_LEN + 4];
    snprintf(sub, sizeof sub, "%s:%c", name, "qkv"[which]);
    return stream_key(c->seed, sub);
}

static void store(xc_dtype t, void *dst, uint64_t i, float v) {
    switch (t) {
    case XC_DTYPE_BF16:
        ((uint16_t *)dst)[i] = xc_f32_to_bf16(v);
        break;
    case XC_DTYPE_F16:
        ((uint16_t *)dst)[i] = xc_f32_to_f16(v);
        break;
    default:
        ((float *)dst)[i] = v;
    }
}

/* U(-1, 1) number `index` of stream `key`: one 64-bit hash gives four 16-bit lanes; the value is
 * (lane - 32767.5) / 32768, exact in float. */
static double uniform_at(uint64_t key, uint64_t index) {
    uint64_t h = mix64(key + (index >> 2) * 0x9e3779b97f4a7c15ull);
    uint32_t lane = (uint32_t)(h >> (16 * (index & 3))) & 0xffffu;
    return ((double)lane - 32767.5) * (1.0 / 32768.0);
}

#define SQRT3 1.7320508075688772

static float sample(const tspec *s, bool uniform, uint64_t key, uint64_t i) {
    if (uniform) {
        return (float)((double)s->mean + (double)s->std * SQRT3 * uniform_at(key, i));
    }
    return (float)((double)s->mean + (double)s->std * normal_at(key, i));
}

/* Elements [lo, hi) of tensor s into dst (indexed from the tensor's start). */
static void fill_range(const xc_tiny_conf *c, const tspec *s, void *dst, uint64_t lo, uint64_t hi) {
    xc_dtype dt = c->dtype;
    if (s->kind == TK_NORMAL) {
        uint64_t key = stream_key(c->seed, s->name);
        for (uint64_t i = lo; i < hi; i++) {
            store(dt, dst, i, sample(s, c->uniform, key, i));
        }
        return;
    }
    uint64_t keys[3];
    for (int w = 0; w < 3; w++) {
        keys[w] = qkv_key(c, s->name, w);
    }
    uint64_t cols = (uint64_t)s->shape[1];
    for (uint64_t e = lo; e < hi;) {
        uint64_t r = e / cols, k = e % cols, end = (r + 1) * cols < hi ? (r + 1) * cols : hi;
        int which;
        int64_t lrow;
        qkv_row(c, (int64_t)r, &which, &lrow);
        for (; e < end; e++, k++) {
            store(dt, dst, e, sample(s, c->uniform, keys[which], (uint64_t)lrow * cols + k));
        }
    }
}

typedef struct fill_job {
    const xc_tiny_conf *c;
    const tspec *s;
    void *dst;
    uint64_t lo, hi;
} fill_job;

static void *fill_thread(void *arg) {
    const fill_job *j = arg;
    fill_range(j->c, j->s, j->dst, j->lo, j->hi);
    return NULL;
}

#define FILL_MAX_THREADS    64
#define FILL_MIN_PER_THREAD (1u << 18) /* smaller tensors are filled by the calling thread */

static xc_status fill_tensor(void *user, size_t index, void *dst, size_t nbytes) {
    const gen *g = user;
    const tspec *s = &g->t[index];
    uint64_t n = numel(s);
    XC_ASSERT(n * xc_dtype_size(g->c->dtype) == nbytes);
    int nt = g->c->threads > 1 ? g->c->threads : 1;
    nt = nt > FILL_MAX_THREADS ? FILL_MAX_THREADS : nt;
    if (n / FILL_MIN_PER_THREAD < (uint64_t)nt) {
        nt = (int)(n / FILL_MIN_PER_THREAD) > 1 ? (int)(n / FILL_MIN_PER_THREAD) : 1;
    }
    fill_job jobs[FILL_MAX_THREADS];
    pthread_t tid[FILL_MAX_THREADS];
    int started = 0;
    for (int t = 0; t < nt; t++) {
        /* split on multiples of 4 elements (one hash each) */
        uint64_t lo = n * (uint64_t)t / (uint64_t)nt / 4 * 4;
        uint64_t hi = t == nt - 1 ? n : n * (uint64_t)(t + 1) / (uint64_t)nt / 4 * 4;
        jobs[t] = (fill_job){g->c, s, dst, lo, hi};
    }
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&tid[t], NULL, fill_thread, &jobs[t]) != 0) {
            break; /* the rest is done below by this thread */
        }
        started = t;
    }
    fill_thread(&jobs[0]);
    for (int t = started + 1; t < nt; t++) {
        fill_thread(&jobs[t]);
    }
    for (int t = 1; t <= started; t++) {
        pthread_join(tid[t], NULL);
    }
    return XC_OK;
}

xc_status xc_tiny_qkv_logical(const xc_tiny_conf *c, int layer, bool lora_b, int which,
                              float *out) {
    XC_TRY(xc_tiny_validate(c));
    if (layer < 0 || layer >= c->layers || which < 0 || which > 2 || !out) {
        return xc_errf(XC_ERR_ARG, "xc_tiny_qkv_logical: bad layer %d or block %d", layer, which);
    }
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, "model.layers.%d.attention.wqkv.%s", layer,
             lora_b ? "Plora_B.weight" : "weight");
    int64_t hd = c->hidden / c->heads;
    int64_t rows = (which == 0 ? c->heads : c->kv_heads) * hd;
    int64_t cols = lora_b ? c->lora_rank : c->hidden;
    tspec s = {.mean = 0, .std = lora_b ? 0.5f * inv_sqrt(c->lora_rank) : inv_sqrt(c->hidden)};
    uint64_t key = qkv_key(c, name, which);
    for (int64_t i = 0; i < rows * cols; i++) {
        out[i] = sample(&s, c->uniform, key, (uint64_t)i);
    }
    return XC_OK;
}

/* ---- files ---- */

static xc_status mkdir_p(const char *dir) {
    char path[4096];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof path) {
        return xc_errf(XC_ERR_ARG, "bad output directory '%s'", dir);
    }
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] == '/' || path[i] == '\0') {
            char saved = path[i];
            path[i] = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) {
                return xc_errf(XC_ERR_IO, "cannot create directory %s: %s", path, strerror(errno));
            }
            path[i] = saved;
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        return xc_errf(XC_ERR_IO, "%s is not a directory", dir);
    }
    return XC_OK;
}

static bool is_ckpt_file(const char *name) {
    static const char *pats[] = {
        "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
        "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"};
    for (size_t i = 0; i < sizeof pats / sizeof pats[0]; i++) {
        if (fnmatch(pats[i], name, 0) == 0) {
            return true;
        }
    }
    return false;
}

/* Refuses (or, with force, removes) checkpoint files already in dir. */
static xc_status clear_old(const char *dir, bool force) {
    DIR *d = opendir(dir);
    if (!d) {
        return xc_errf(XC_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
    }
    xc_status st = XC_OK;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_ckpt_file(e->d_name)) {
            continue;
        }
        if (!force) {
            st =
                xc_errf(XC_ERR_ARG, "%s already holds a checkpoint (%s); use --force to replace it",
                        dir, e->d_name);
            break;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0) {
            st = xc_errf(XC_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
            break;
        }
    }
    closedir(d);
    return st;
}

static xc_status write_text(const char *path, const char *text, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        return xc_errf(XC_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    size_t w = fwrite(text, 1, n, f);
    int rc = fclose(f);
    if (w != n || rc != 0) {
        unlink(path);
        return xc_errf(XC_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    return XC_OK;
}

/* config.json with the keys of the published configs (sorted, indent 2, as transformers writes
 * it); VL's derived configs have no attn_implementation. */
static xc_status write_config(const char *dir, const xc_tiny_conf *c) {
    const char *td = c->dtype == XC_DTYPE_BF16  ? "bfloat16"
                     : c->dtype == XC_DTYPE_F16 ? "float16"
                                                : "float32";
    bool vl = !strcmp(c->variant, "vl");
    char text[2048], path[4096];
    int n = snprintf(
        text, sizeof text,
        "{\n"
        "  \"architectures\": [\n    \"InternLMXComposer2ForCausalLM\"\n  ],\n"
        "%s"
        "  \"bias\": false,\n"
        "  \"bos_token_id\": 1,\n"
        "  \"eos_token_id\": 2,\n"
        "  \"hidden_act\": \"silu\",\n"
        "  \"hidden_size\": %d,\n"
        "  \"img_size\": %d,\n"
        "  \"initializer_range\": 0.02,\n"
        "  \"intermediate_size\": %d,\n"
        "  \"max_length\": 4096,\n"
        "  \"max_position_embeddings\": 32768,\n"
        "  \"model_type\": \"internlmxcomposer2\",\n"
        "  \"num_attention_heads\": %d,\n"
        "  \"num_hidden_layers\": %d,\n"
        "  \"num_key_value_heads\": %d,\n"
        "  \"pad_token_id\": 2,\n"
        "  \"rms_norm_eps\": 1e-05,\n"
        "  \"rope_scaling\": {\n    \"factor\": 1.0,\n    \"type\": \"dynamic\"\n  },\n"
        "  \"rope_theta\": 1000000,\n"
        "  \"tie_word_embeddings\": false,\n"
        "  \"torch_dtype\": \"%s\",\n"
        "  \"transformers_version\": \"4.33.1\",\n"
        "  \"use_cache\": false,\n"
        "  \"vocab_size\": %d\n"
        "}\n",
        vl ? "" : "  \"attn_implementation\": \"eager\",\n", c->hidden, xc_tiny_img_size(c),
        c->intermediate, c->heads, c->layers, c->kv_heads, td, c->vocab);
    XC_ASSERT(n > 0 && (size_t)n < sizeof text);
    snprintf(path, sizeof path, "%s/config.json", dir);
    return write_text(path, text, (size_t)n);
}

static xc_status copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) {
        return xc_errf(XC_ERR_IO, "cannot open tokenizer %s: %s", from, strerror(errno));
    }
    FILE *out = fopen(to, "wb");
    if (!out) {
        xc_status st = xc_errf(XC_ERR_IO, "cannot create %s: %s", to, strerror(errno));
        fclose(in);
        return st;
    }
    char buf[65536];
    size_t n;
    xc_status st = XC_OK;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        if (fwrite(buf, 1, n, out) != n) {
            st = xc_errf(XC_ERR_IO, "cannot write %s: %s", to, strerror(errno));
            break;
        }
    }
    if (st == XC_OK && ferror(in)) {
        st = xc_errf(XC_ERR_IO, "cannot read %s", from);
    }
    fclose(in);
    if (fclose(out) != 0 && st == XC_OK) {
        st = xc_errf(XC_ERR_IO, "cannot write %s: %s", to, strerror(errno));
    }
    if (st != XC_OK) {
        unlink(to);
    }
    return st;
}

/* The shard of every tensor in *shard_of (l->n entries); returns the number of files.
 * - max_shard_bytes > 0: transformers' shard_checkpoint (4.33): tensors in state_dict order, a
 *   new shard when adding the next tensor would pass the limit and the current shard is not
 *   empty;
 * - otherwise c->shards files of about equal size (shard k takes tensors until the running total
 *   passes (k+1)/N of all bytes, leaving at least one tensor for each later shard). */
static xc_status assign_shards(const xc_tiny_conf *c, const tlist *l, int *shard_of,
                               int *n_shards) {
    size_t esz = xc_dtype_size(c->dtype);
    if (c->max_shard_bytes > 0) {
        int k = 0;
        uint64_t last = 0;
        size_t in_cur = 0;
        for (size_t i = 0; i < l->n; i++) {
            uint64_t b = numel(&l->t[i]) * esz;
            if (last + b > c->max_shard_bytes && in_cur > 0) {
                k++;
                last = 0;
                in_cur = 0;
            }
            shard_of[i] = k;
            last += b;
            in_cur++;
        }
        if (k + 1 > 99999) {
            return xc_errf(XC_ERR_ARG, "max shard size gives %d shards (limit 99999)", k + 1);
        }
        *n_shards = k + 1;
        return XC_OK;
    }
    if ((size_t)c->shards > l->n) {
        return xc_errf(XC_ERR_ARG, "shards %d is more than the %zu tensors", c->shards, l->n);
    }
    uint64_t total = 0;
    for (size_t i = 0; i < l->n; i++) {
        total += numel(&l->t[i]) * esz;
    }
    size_t start = 0;
    uint64_t acc = 0;
    for (int k = 0; k < c->shards; k++) {
        size_t e = start;
        uint64_t goal = total / (uint64_t)c->shards * (uint64_t)(k + 1);
        size_t max_end = l->n - (size_t)(c->shards - 1 - k);
        do {
            acc += numel(&l->t[e]) * esz;
            shard_of[e] = k;
            e++;
        } while (e < max_end && (k == c->shards - 1 || acc < goal));
        start = e;
    }
    *n_shards = c->shards;
    return XC_OK;
}

xc_status xc_tiny_list(const xc_tiny_conf *c, xc_tiny_tensor **out, size_t *n, int *n_shards) {
    XC_TRY(xc_tiny_validate(c));
    tlist l;
    XC_TRY(build_list(c, &l));
    xc_tiny_tensor *t = xc_calloc(l.n, sizeof *t);
    int *shard_of = xc_calloc(l.n, sizeof *shard_of);
    xc_status st = XC_OK;
    if (!t || !shard_of) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory");
    } else {
        st = assign_shards(c, &l, shard_of, n_shards);
    }
    if (st == XC_OK) {
        for (size_t i = 0; i < l.n; i++) {
            snprintf(t[i].name, sizeof t[i].name, "%s", l.t[i].name);
            t[i].ndim = l.t[i].ndim;
            memcpy(t[i].shape, l.t[i].shape, sizeof t[i].shape);
            t[i].shard = shard_of[i];
        }
        *out = t;
        *n = l.n;
        t = NULL;
    }
    xc_free(t);
    xc_free(shard_of);
    xc_free(l.t);
    return st;
}

/* Writes the tensors as one file, or as shards (assign_shards) plus the index. */
static xc_status write_ckpt(const char *dir, const xc_tiny_conf *c, const tlist *l) {
    xc_status st = XC_OK;
    bool st_fmt = c->format == XC_CKPT_FORMAT_SAFETENSORS;
    xc_ckpt_wtensor *w = xc_calloc(l->n, sizeof *w);
    const char **names = xc_calloc(l->n, sizeof *names);
    const char **file_of = xc_calloc(l->n, sizeof *file_of);
    int *shard_of = xc_calloc(l->n, sizeof *shard_of);
    char(*files)[64] = NULL;
    int n_shards = 0;
    char path[4096];
    uint64_t total = 0;
    if (!w || !names || !file_of || !shard_of) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory");
        goto out;
    }
    XC_TRY_GOTO(assign_shards(c, l, shard_of, &n_shards), st, out);
    files = xc_calloc((size_t)n_shards, sizeof *files);
    if (!files) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < l->n; i++) {
        w[i].name = l->t[i].name;
        w[i].dtype = c->dtype;
        w[i].ndim = l->t[i].ndim;
        memcpy(w[i].shape, l->t[i].shape, sizeof l->t[i].shape);
        names[i] = l->t[i].name;
        total += numel(&l->t[i]) * xc_dtype_size(c->dtype);
    }
    gen g = {c, l->t};
    if (n_shards == 1) {
        snprintf(path, sizeof path, "%s/%s", dir,
                 st_fmt ? "model.safetensors" : "pytorch_model.bin");
        st = xc_ckpt_write(path, c->format, w, l->n, fill_tensor, &g);
        goto out;
    }
    size_t start = 0;
    for (int k = 0; k < n_shards; k++) {
        snprintf(files[k], sizeof files[k],
                 st_fmt ? "model-%05d-of-%05d.safetensors" : "pytorch_model-%05d-of-%05d.bin",
                 k + 1, n_shards);
        size_t end = start;
        while (end < l->n && shard_of[end] == k) {
            file_of[end] = files[k];
            end++;
        }
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        /* the fill callback indexes the whole list: pass it a view starting at `start` */
        gen gs = {c, l->t + start};
        XC_TRY_GOTO(xc_ckpt_write(path, c->format, w + start, end - start, fill_tensor, &gs), st,
                    out);
        start = end;
    }
    snprintf(path, sizeof path, "%s/%s", dir,
             st_fmt ? "model.safetensors.index.json" : "pytorch_model.bin.index.json");
    st = xc_ckpt_write_index(path, names, file_of, l->n, total);
out:
    xc_free(w);
    xc_free(names);
    xc_free(file_of);
    xc_free(shard_of);
    xc_free(files);
    return st;
}

/* ---- stand-in tokenizer ---- */

#define UNUSED_TOKENS     147 /* [UNUSED_TOKEN_0..146] */
#define STANDIN_MIN_VOCAB 600

/* Normal piece j (0-based) of the stand-in vocabulary into out (NUL-terminated); false when j is
 * past the generated list. */
static bool standin_piece(uint64_t j, char *out) {
    static const char ws[] = "\xe2\x96\x81"; /* U+2581, SentencePiece's word-start mark */
    if (j == 0) {
        strcpy(out, ws);
        return true;
    }
    j--;
    if (j < 2 * 94) { /* printable ASCII but space, alone then after the mark */
        char ch = (char)('!' + j % 94);
        snprintf(out, 8, "%s%c", j < 94 ? "" : ws, ch);
        return true;
    }
    j -= 2 * 94;
    uint64_t span = 26;
    for (int len = 2; len <= 4; len++) {
        span *= 26;
        if (j < 2 * span) {
            bool mark = j >= span;
            uint64_t v = j % span;
            char s[8];
            for (int k = len - 1; k >= 0; k--) {
                s[k] = (char)('a' + v % 26);
                v /= 26;
            }
            s[len] = '\0';
            snprintf(out, 16, "%s%s", mark ? ws : "", s);
            return true;
        }
        j -= 2 * span;
    }
    return false;
}

xc_status xc_tiny_standin_tokenizer(int vocab, uint8_t **out, size_t *len) {
    if (vocab < STANDIN_MIN_VOCAB || vocab > DIM_MAX) {
        return xc_errf(XC_ERR_ARG, "stand-in tokenizer: vocab %d is outside [%d, %d]", vocab,
                       STANDIN_MIN_VOCAB, DIM_MAX);
    }
    size_t n = (size_t)vocab;
    xc_spm_piece *p = xc_calloc(n, sizeof *p);
    char *pool = xc_malloc(n * 24);
    if (!p || !pool) {
        xc_free(p);
        xc_free(pool);
        return xc_errf(XC_ERR_NOMEM, "out of memory for %d pieces", vocab);
    }
    size_t first_unused = n - UNUSED_TOKENS;
    xc_status st = XC_OK;
    for (size_t i = 0; i < n; i++) {
        char *t = pool + i * 24;
        int type = XC_SPM_PIECE_NORMAL;
        float score = 0;
        if (i == 0) {
            strcpy(t, "<unk>");
            type = XC_SPM_PIECE_UNKNOWN;
        } else if (i <= 2) {
            strcpy(t, i == 1 ? "<s>" : "</s>");
            type = XC_SPM_PIECE_CONTROL;
        } else if (i < 3 + 256) {
            snprintf(t, 24, "<0x%02X>", (unsigned)(i - 3));
            type = XC_SPM_PIECE_BYTE;
        } else if (i >= first_unused) {
            snprintf(t, 24, "[UNUSED_TOKEN_%zu]", i - first_unused);
            type = XC_SPM_PIECE_USER_DEFINED;
        } else {
            uint64_t j = i - (3 + 256);
            if (!standin_piece(j, t)) {
                st = xc_errf(XC_ERR_ARG, "stand-in tokenizer: vocab %d is too large", vocab);
                break;
            }
            score = -(float)j; /* BPE merge rank: shorter pieces merge first */
        }
        p[i].text = t;
        p[i].len = strlen(t);
        p[i].score = score;
        p[i].type = type;
    }
    if (st == XC_OK) {
        xc_spm_model m;
        memset(&m, 0, sizeof m);
        m.pieces = p;
        m.n_pieces = n;
        m.has_trainer_spec = true;
        m.model_type = XC_SPM_MODEL_BPE;
        m.vocab_size = vocab;
        m.byte_fallback = true;
        m.unk_id = 0;
        m.bos_id = 1;
        m.eos_id = 2;
        m.pad_id = -1;
        m.normalizer_name = (char *)"identity";
        m.add_dummy_prefix = true;
        m.remove_extra_whitespaces = false;
        m.escape_whitespaces = true;
        st = xc_spm_wire_encode_model(&m, out, len);
    }
    xc_free(p);
    xc_free(pool);
    return st;
}

/* DIR/tokenizer.model (the stand-in) and the two small json files the original tokenizer class
 * reads with from_pretrained. */
static xc_status write_standin_tokenizer(const char *dir, const xc_tiny_conf *c) {
    uint8_t *buf = NULL;
    size_t n = 0;
    XC_TRY(xc_tiny_standin_tokenizer(c->vocab, &buf, &n));
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    xc_status st = write_text(path, (const char *)buf, n);
    xc_free(buf);
    static const char special[] = "{\n  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n"
                                  "  \"pad_token\": \"</s>\",\n  \"unk_token\": \"<unk>\"\n}\n";
    static const char tconf[] =
        "{\n  \"auto_map\": {\n    \"AutoTokenizer\": [\n"
        "      \"tokenization_internlm_xcomposer2.InternLMXComposer2Tokenizer\",\n      null\n"
        "    ]\n  },\n  \"bos_token\": \"<s>\",\n  \"clean_up_tokenization_spaces\": false,\n"
        "  \"eos_token\": \"</s>\",\n  \"pad_token\": \"</s>\",\n"
        "  \"tokenizer_class\": \"InternLMXComposer2Tokenizer\",\n  \"unk_token\": \"<unk>\"\n}\n";
    if (st == XC_OK) {
        snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
        st = write_text(path, special, sizeof special - 1);
    }
    if (st == XC_OK) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        st = write_text(path, tconf, sizeof tconf - 1);
    }
    return st;
}

void xc_tiny_conf_like(xc_tiny_conf *c, const char *variant) {
    xc_tiny_conf_init(c, variant);
    bool vl = variant && !strcmp(variant, "vl");
    c->hidden = 4096;
    c->layers = 32;
    c->heads = 32;
    c->kv_heads = 8;
    c->intermediate = 14336;
    c->lora_rank = 256;
    c->vocab = 92544;
    c->vision_dim = 1024;
    c->vision_layers = 24;
    c->vision_mlp = 4096;
    c->patch = 14;
    c->img_size = vl ? 490 : 224;
    c->dtype = XC_DTYPE_BF16;
    c->format = XC_CKPT_FORMAT_TORCH_BIN;
    c->shards = 1;
    c->max_shard_bytes = vl ? 10000000000ull : 0; /* save_pretrained's "10GB" */
    c->uniform = true;
    c->threads = 2;
    c->output_gain = 4.0f;
    c->standin_tokenizer = true;
}

xc_status xc_tiny_write(const char *dir, const xc_tiny_conf *c) {
    XC_TRY(xc_tiny_validate(c));
    XC_TRY(mkdir_p(dir));
    XC_TRY(clear_old(dir, c->force));
    tlist l;
    XC_TRY(build_list(c, &l));
    xc_status st = write_config(dir, c);
    if (st == XC_OK) {
        st = write_ckpt(dir, c, &l);
    }
    if (st == XC_OK && c->standin_tokenizer && !c->tokenizer) {
        st = write_standin_tokenizer(dir, c);
    }
    if (st == XC_OK && c->tokenizer) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.model", dir);
        st = copy_file(c->tokenizer, path);
    }
    xc_free(l.t);
    return st;
}
