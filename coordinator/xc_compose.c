/* The composition procedure of XComposer2's demo (see xc_compose.h and docs/compose.md). The
 * prompt strings below are data the model was trained on; they are the demo's, byte for byte. */
#include "xc_compose.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_chat.h"
#include "xc_mem.h"
#include "xc_mmap.h"

/* ---- the original's strings ---- */

#define IM_START   "[UNUSED_TOKEN_146]"
#define IM_END     "[UNUSED_TOKEN_145]"
#define UNUSED0    "[UNUSED_TOKEN_0]"
#define IMAGE_MARK "<image>"

#define LOC_Q1     "给定文章\""
#define LOC_Q2     "\" 根据上述文章，选择适合插入图像的"
#define LOC_Q3     "行"
#define LOC_PREFIX "适合插入图像的行是"

#define CAP_Q1        "给定文章\""
#define CAP_Q2        "\" "
#define CAP_Q3        "给出适合在<Seg%d>后插入的图像对应的标题。"
#define CAP_PREFIX    "标题是\""
#define CAP_PAST0     "现在<Seg%d>后插入图像对应的标题是\"%s\"， "
#define CAP_PASTN     "<Seg%d>后插入图像对应的标题是\"%s\"， "
#define CAP_PAST_TAIL "， " /* pasts[:-2]: a fullwidth comma and a space */
#define CAP_PAST_END  "。"

#define SEL_Q1     "根据给定上下文和候选图像，选择合适的配图："
#define SEL_Q2     "候选图像包括: "
#define SEL_PREFIX "最合适的图是"

#define EDIT_EXPAND  "扩写以下段落："
#define EDIT_REWRITE "改写以下段落："
#define EDIT_BASED   "\n基于以下素材："
#define EDIT_ABBR    "缩写以下段落："
#define EDIT_INSERT  "在以下两段中插入一段。\n第一段："
#define EDIT_SECOND  "\n第二段："
#define EDIT_OUTLINE "\n插入段的大纲："

#define GEN_LOC_MAX   200
#define GEN_CAP_MAX   200
#define GEN_SEL_MAX   10
#define GEN_EDIT_SPAN 500 /* paragraph_edit: max_length = 500 - prompt tokens */

/* ---- strings ---- */

typedef struct sb {
    char *p;
    size_t n, cap;
    bool oom;
} sb;

static void sb_addn(sb *b, const char *s, size_t n) {
    if (b->oom) {
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) {
            cap *= 2;
        }
        char *p = xc_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_add(sb *b, const char *s) {
    sb_addn(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_addf(sb *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (k < 0) {
        b->oom = true;
        return;
    }
    char *t = xc_malloc((size_t)k + 1);
    if (!t) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(t, (size_t)k + 1, fmt, ap);
    va_end(ap);
    sb_addn(b, t, (size_t)k);
    xc_free(t);
}

/* The string (owned by the caller), or NULL when out of memory. */
static char *sb_take(sb *b) {
    if (b->oom) {
        xc_free(b->p);
        return NULL;
    }
    if (!b->p) {
        return xc_strdup("");
    }
    return b->p;
}

/* One UTF-8 code point at s (n bytes left): its value and length (a bad byte is itself, len 1). */
static unsigned utf8_at(const unsigned char *s, size_t n, int *len) {
    unsigned c = s[0];
    int k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (k == 0 || (size_t)k > n) {
        *len = 1;
        return c;
    }
    unsigned v = k == 1 ? c : k == 2 ? c & 0x1f : k == 3 ? c & 0x0f : c & 0x07;
    for (int i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *len = 1;
            return c;
        }
        v = (v << 6) | (s[i] & 0x3f);
    }
    *len = k;
    return v;
}

/* Python's str.isspace. */
static bool py_space(unsigned c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Bytes of leading whitespace of s[0, n). */
static size_t lead_space(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int k;
        unsigned c = utf8_at((const unsigned char *)s + i, n - i, &k);
        if (!py_space(c)) {
            break;
        }
        i += (size_t)k;
    }
    return i;
}

/* Length of s[0, n) without trailing whitespace. */
static size_t trail_keep(const char *s, size_t n) {
    size_t keep = 0, i = 0;
    while (i < n) {
        int k;
        unsigned c = utf8_at((const unsigned char *)s + i, n - i, &k);
        i += (size_t)k;
        if (!py_space(c)) {
            keep = i;
        }
    }
    return keep;
}

char *xc_compose_strip(char *s) {
    size_t n = strlen(s);
    size_t a = lead_space(s, n);
    size_t e = a + trail_keep(s + a, n - a);
    memmove(s, s + a, e - a);
    s[e - a] = 0;
    return s;
}

/* Removes every occurrence of pat from s in place. */
static void remove_all(char *s, const char *pat) {
    size_t pl = strlen(pat);
    char *w = s;
    for (const char *r = s; *r;) {
        if (!strncmp(r, pat, pl)) {
            r += pl;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
}

/* ---- parsing ---- */

static void free_strv(char **v, int n) {
    for (int i = 0; v && i < n; i++) {
        xc_free(v[i]);
    }
    xc_free(v);
}

xc_status xc_compose_paragraphs(const char *text, char ***out, int *n) {
    *out = NULL;
    *n = 0;
    char *t = xc_strdup(text);
    if (!t) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    xc_compose_strip(t);
    /* re.sub(r'(\n\s*)+', '\n', t) */
    size_t len = strlen(t), w = 0;
    for (size_t i = 0; i < len;) {
        if (t[i] == '\n') {
            t[w++] = '\n';
            i++;
            i += lead_space(t + i, len - i);
        } else {
            t[w++] = t[i++];
        }
    }
    t[w] = 0;
    int cap = 1;
    for (size_t i = 0; i < w; i++) {
        cap += t[i] == '\n';
    }
    cap = cap < XC_COMPOSE_MAX_SECTION ? cap : XC_COMPOSE_MAX_SECTION;
    char **v = xc_calloc((size_t)cap, sizeof *v);
    if (!v) {
        xc_free(t);
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    const char *p = t;
    int k = 0;
    while (k < cap) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        v[k] = xc_malloc(l + 1);
        if (!v[k]) {
            free_strv(v, k);
            xc_free(t);
            return xc_errf(XC_ERR_NOMEM, "out of memory");
        }
        memcpy(v[k], p, l);
        v[k][l] = 0;
        k++;
        if (!nl) {
            break;
        }
        p = nl + 1;
    }
    xc_free(t);
    *out = v;
    *n = k;
    return XC_OK;
}

xc_status xc_compose_parse_locs(const char *text, int **locs, int *n) {
    *locs = NULL;
    *n = 0;
    int cap = 0, k = 0;
    int *v = NULL;
    for (const char *p = strstr(text, "<Seg"); p; p = strstr(p + 1, "<Seg")) {
        const char *q = p + 4;
        while (*q >= '0' && *q <= '9') {
            q++;
        }
        if (*q != '>') {
            continue; /* not a match of <Seg[0-9]*> */
        }
        if (q == p + 4) {
            xc_free(v);
            return xc_errf(XC_ERR_ARG, "the position answer holds '<Seg>' without a number");
        }
        long long x = 0;
        for (const char *d = p + 4; d < q; d++) {
            x = x * 10 + (*d - '0');
            if (x > INT_MAX) {
                xc_free(v);
                return xc_errf(XC_ERR_ARG, "the position answer holds a <Seg> index over %d",
                               INT_MAX);
            }
        }
        if (k == cap) {
            cap = cap ? cap * 2 : 8;
            int *nv = xc_realloc(v, (size_t)cap * sizeof *nv);
            if (!nv) {
                xc_free(v);
                return xc_errf(XC_ERR_NOMEM, "out of memory");
            }
            v = nv;
        }
        v[k++] = (int)x;
    }
    *locs = v;
    *n = k;
    return XC_OK;
}

char *xc_compose_parse_caption(const char *answer) {
    const char *q = strchr(answer, '"');
    size_t l = q ? (size_t)(q - answer) : strlen(answer);
    char *c = xc_malloc(l + 1);
    if (!c) {
        return NULL;
    }
    memcpy(c, answer, l);
    c[l] = 0;
    return xc_compose_strip(c);
}

int xc_compose_parse_letter(const char *answer) {
    size_t n = strlen(answer);
    size_t a = lead_space(answer, n);
    if (a == n) {
        return -1;
    }
    int k;
    return (int)utf8_at((const unsigned char *)answer + a, n - a, &k);
}

/* ---- prompts ---- */

void xc_compose_prompt_fini(xc_compose_prompt *p) {
    if (!p) {
        return;
    }
    xc_free(p->ids);
    xc_free(p->img);
    xc_free(p->img_of);
    memset(p, 0, sizeof *p);
}

char *xc_compose_instruction(bool with_meta, const char *text) {
    sb b = {0};
    if (with_meta) {
        /* the demo's meta_instruction: the 7b one, with its trailing newline */
        sb_add(&b, IM_START "system\n");
        sb_add(&b, xc_chat_default_system(XC_CHAT_VARIANT_7B));
        sb_add(&b, "\n" IM_END "\n");
    }
    sb_add(&b, IM_START "user\n");
    sb_add(&b, text);
    sb_add(&b, IM_END "\n" IM_START "assistant\n");
    return sb_take(&b);
}

static xc_status prompt_push(xc_compose_prompt *p, int *cap, int32_t id) {
    if (p->n == *cap) {
        int nc = *cap ? *cap * 2 : 256;
        int32_t *v = xc_realloc(p->ids, (size_t)nc * sizeof *v);
        if (!v) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for a prompt");
        }
        p->ids = v;
        *cap = nc;
    }
    p->ids[p->n++] = id;
    return XC_OK;
}

xc_status xc_compose_tokenize(const xc_compose_conf *c, const char *text, bool embeds,
                              xc_compose_prompt *out) {
    memset(out, 0, sizeof *out);
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(c->tok);
    if (sp->bos < 0) {
        return xc_errf(XC_ERR_ARG, "the tokenizer has no BOS");
    }
    xc_tokens t = {0};
    xc_status st = xc_tokenizer_tokens_push(&t, sp->bos);
    if (st == XC_OK) {
        st = xc_tokenizer_encode(c->tok, text, strlen(text), &t);
    }
    if (st != XC_OK) {
        xc_tokenizer_tokens_fini(&t);
        return st;
    }
    out->ids = t.ids;
    out->n = (int)t.n;
    out->embeds = embeds;
    return XC_OK;
}

xc_status xc_compose_interleave(const xc_compose_conf *c, const char *text, int n_images,
                                xc_compose_prompt *out) {
    memset(out, 0, sizeof *out);
    out->embeds = true;
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(c->tok);
    if (sp->bos < 0) {
        return xc_errf(XC_ERR_ARG, "the tokenizer has no BOS");
    }
    if (n_images > 0 && c->image_tokens <= 0) {
        return xc_errf(XC_ERR_ARG, "images in a composition need a vision model");
    }
    out->img = xc_calloc((size_t)(n_images > 0 ? n_images : 1), sizeof *out->img);
    out->img_of = xc_calloc((size_t)(n_images > 0 ? n_images : 1), sizeof *out->img_of);
    if (!out->img || !out->img_of) {
        xc_compose_prompt_fini(out);
        return xc_errf(XC_ERR_NOMEM, "out of memory for a prompt");
    }
    int cap = 0;
    bool need_bos = true;
    long temp_len = 0;
    const char *p = text;
    xc_status st = XC_OK;
    xc_tokens t = {0};
    for (int idx = 0;; idx++) {
        const char *m = strstr(p, IMAGE_MARK);
        size_t pl = m ? (size_t)(m - p) : strlen(p);
        if (pl > 0) {
            t.n = 0;
            if (need_bos) {
                XC_TRY_GOTO(xc_tokenizer_tokens_push(&t, sp->bos), st, fail);
                need_bos = false;
            }
            XC_TRY_GOTO(xc_tokenizer_encode(c->tok, p, pl, &t), st, fail);
            for (size_t i = 0; i < t.n; i++) {
                XC_TRY_GOTO(prompt_push(out, &cap, t.ids[i]), st, fail);
            }
            temp_len += (long)t.n;
        }
        if (idx < n_images) {
            int start = out->n;
            for (int i = 0; i < c->image_tokens; i++) {
                XC_TRY_GOTO(prompt_push(out, &cap, 0), st, fail);
            }
            out->img[out->n_img] = (xc_coord_range){start, out->n};
            out->img_of[out->n_img] = idx;
            out->n_img++;
            temp_len += c->image_tokens;
        }
        if (temp_len > XC_COMPOSE_MAX_LEN || !m) {
            break;
        }
        p = m + strlen(IMAGE_MARK);
    }
    xc_tokenizer_tokens_fini(&t);
    if (out->n > XC_COMPOSE_MAX_LEN) {
        out->n = XC_COMPOSE_MAX_LEN;
        while (out->n_img > 0 && out->img[out->n_img - 1].start >= out->n) {
            out->n_img--;
        }
        if (out->n_img > 0 && out->img[out->n_img - 1].end > out->n) {
            xc_compose_prompt_fini(out);
            return xc_errf(XC_ERR_ARG,
                           "the prompt is cut at %d rows inside an image (the original would "
                           "show part of it); shorten the article or use fewer images",
                           XC_COMPOSE_MAX_LEN);
        }
    }
    return XC_OK;
fail:
    xc_tokenizer_tokens_fini(&t);
    xc_compose_prompt_fini(out);
    return st;
}

/* ---- images ---- */

void xc_compose_image_fini(xc_compose_image *im) {
    if (!im) {
        return;
    }
    xc_free(im->data);
    xc_free(im->pixels);
    xc_free(im->source);
    memset(im, 0, sizeof *im);
}

void xc_compose_cands_fini(xc_compose_cands *c) {
    if (!c) {
        return;
    }
    for (int i = 0; i < c->n; i++) {
        xc_compose_image_fini(&c->img[i]);
    }
    xc_free(c->img);
    xc_free(c->indices);
    memset(c, 0, sizeof *c);
}

const char *xc_compose_image_ext(const uint8_t *d, size_t n) {
    if (n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8)) {
        return "png";
    }
    if (n >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff) {
        return "jpg";
    }
    if (n >= 6 && (!memcmp(d, "GIF87a", 6) || !memcmp(d, "GIF89a", 6))) {
        return "gif";
    }
    if (n >= 12 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4)) {
        return "webp";
    }
    if (n >= 2 && d[0] == 'B' && d[1] == 'M') {
        return "bmp";
    }
    return "bin";
}

/* ---- configuration and state ---- */

void xc_compose_conf_defaults(xc_compose_conf *c) {
    memset(c, 0, sizeof *c);
    c->sampling = (xc_compose_sampling){.greedy = false,
                                        .temperature = 1.0f,
                                        .top_k = 40,
                                        .top_p = 0.8f,
                                        .repetition_penalty = 1.005f,
                                        .seed = 1234};
    c->article_max_tokens = 4096;
    c->clean_up_spaces = true;
}

bool xc_compose_read_clean_up(const char *model_dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    char *data = NULL;
    size_t n = 0;
    if (!model_dir || xc_file_read_all(path, 1u << 20, &data, &n) != XC_OK) {
        return true;
    }
    cJSON *o = cJSON_ParseWithLength(data, n);
    xc_free(data);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "clean_up_tokenization_spaces");
    bool r = !cJSON_IsFalse(v);
    cJSON_Delete(o);
    return r;
}

void xc_compose_init(xc_compose *s, const xc_compose_conf *conf) {
    memset(s, 0, sizeof *s);
    s->conf = conf;
}

void xc_compose_fini(xc_compose *s) {
    if (!s) {
        return;
    }
    xc_free(s->usage);
    s->usage = NULL;
    s->n_usage = 0;
}

static xc_status fail(xc_compose *s, xc_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static xc_status fail(xc_compose *s, xc_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return xc_errf(st, "%s", s->err);
}

static void emit(xc_compose *s, cJSON *o) {
    const xc_compose_backend *be = &s->conf->be;
    if (o && be->event) {
        char *j = cJSON_PrintUnformatted(o);
        if (j) {
            be->event(be->user, j);
            cJSON_free(j);
        }
    }
    cJSON_Delete(o);
}

static cJSON *event_obj(const char *stage) {
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddStringToObject(o, "stage", stage);
    }
    return o;
}

/* Which ids end a step: the article and edits (EOS, [UNUSED_TOKEN_145] that the stream loop
 * breaks on, [UNUSED_TOKEN_0] of the stopping criteria); generate()/generate_with_emb (EOS and
 * [UNUSED_TOKEN_0]); the selections (EOS only: no stopping criteria). */
typedef enum stops { STOPS_STREAM, STOPS_GENERATE, STOPS_EOS } stops;

/* The article as it is written, one token behind: the token that reaches max_length is never
 * shown (see run), and only the end of the generation tells whether the last one was it. */
typedef struct delta_ctx {
    xc_compose *s;
    xc_tokenizer_stream ts;
    int32_t pending; /* -1 = none */
} delta_ctx;

static void delta_emit(delta_ctx *d, const char *txt, size_t len) {
    if (len == 0) {
        return;
    }
    cJSON *o = event_obj("article.delta");
    char *t = xc_malloc(len + 1);
    if (o && t) {
        memcpy(t, txt, len);
        t[len] = 0;
        cJSON_AddStringToObject(o, "text", t);
    }
    xc_free(t);
    emit(d->s, o);
}

static void delta_flush(delta_ctx *d) {
    const char *txt;
    size_t len;
    if (d->pending >= 0 && xc_tokenizer_stream_feed(&d->ts, d->pending, &txt, &len) == XC_OK) {
        delta_emit(d, txt, len);
    }
    d->pending = -1;
}

static void on_delta(void *u, int32_t id) {
    delta_ctx *d = u;
    delta_flush(d);
    d->pending = id;
}

/* Runs one model call. images[k] are the step's images; range r shows images[p->img_of[r]]. */
static xc_status run(xc_compose *s, const char *step, const xc_compose_prompt *p,
                     const xc_compose_image *const *images, int max_new, stops which, bool deltas,
                     xc_tokens *out, bool *stopped) {
    const xc_compose_conf *c = s->conf;
    if (c->be.cancelled && c->be.cancelled(c->be.user)) {
        return fail(s, XC_ERR_TIMEOUT, "cancelled");
    }
    if (c->max_context > 0 && p->n + max_new > c->max_context) {
        max_new = c->max_context - p->n;
        if (max_new < 1) {
            return fail(s, XC_ERR_ARG,
                        "%s: the prompt has %d rows; the context holds %d (the article is too "
                        "long for this step)",
                        step, p->n, c->max_context);
        }
    }
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(c->tok);
    int32_t stop_ids[3];
    int n_stop = 0;
    int32_t unused0 = xc_tokenizer_piece_to_id(c->tok, UNUSED0, strlen(UNUSED0));
    if (sp->eos >= 0) {
        stop_ids[n_stop++] = sp->eos;
    }
    if (which == STOPS_STREAM && sp->im_end >= 0) {
        stop_ids[n_stop++] = sp->im_end;
    }
    if (which != STOPS_EOS && unused0 >= 0) {
        stop_ids[n_stop++] = unused0;
    }
    size_t per = 3u * (size_t)c->image_size * (size_t)c->image_size;
    float *pix = NULL;
    if (p->n_img > 0) {
        pix = xc_malloc((size_t)p->n_img * per * sizeof(float));
        if (!pix) {
            return fail(s, XC_ERR_NOMEM, "out of memory for pixels");
        }
        for (int r = 0; r < p->n_img; r++) {
            memcpy(pix + (size_t)r * per, images[p->img_of[r]]->pixels, per * sizeof(float));
        }
    }
    const xc_compose_sampling *sm = &c->sampling;
    xc_coord_request req = {.ids = p->ids,
                            .n = p->n,
                            .img = p->img,
                            .n_img = p->n_img,
                            .pixels = pix,
                            .sampling = {.greedy = sm->greedy,
                                         .temperature = sm->temperature,
                                         .top_k = sm->top_k,
                                         .top_p = sm->top_p,
                                         .repetition_penalty = sm->repetition_penalty,
                                         .seed = sm->seed + (uint64_t)s->step_no},
                            .max_new_tokens = max_new,
                            .stop_ids = stop_ids,
                            .n_stop_ids = n_stop,
                            .penalize_prompt = !p->embeds};
    s->step_no++;
    delta_ctx d = {.s = s, .pending = -1};
    xc_tokenizer_stream_init(&d.ts, c->tok);
    out->n = 0;
    *stopped = false;
    xc_status st = c->be.generate(c->be.user, &req, deltas ? on_delta : NULL, &d, out, stopped);
    if (st == XC_OK && deltas && (*stopped || (int)out->n < max_new)) {
        delta_flush(&d); /* the last token is shown unless it reached max_length */
    }
    const char *tail;
    size_t tl;
    if (deltas && xc_tokenizer_stream_finish(&d.ts, &tail, &tl) == XC_OK) {
        delta_emit(&d, tail, tl);
    }
    xc_tokenizer_stream_fini(&d.ts);
    xc_free(pix);
    if (st != XC_OK) {
        return fail(s, st, "%s: generation failed: %s", step, xc_err_last());
    }
    xc_compose_usage *u = xc_realloc(s->usage, (size_t)(s->n_usage + 1) * sizeof *u);
    if (u) {
        s->usage = u;
        memset(&u[s->n_usage], 0, sizeof *u);
        snprintf(u[s->n_usage].step, sizeof u[s->n_usage].step, "%s", step);
        u[s->n_usage].prompt_tokens = p->n;
        u[s->n_usage].completion_tokens = (int)out->n;
        s->n_usage++;
    }
    /* the streaming loops never show the token that hits max_length: HF's MaxLengthCriteria
     * comes first in the stopping list and any() stops before the Stream callback sees it */
    if (which == STOPS_STREAM && !*stopped && (int)out->n == max_new && out->n > 0) {
        out->n--;
    }
    return XC_OK;
}

/* Runs one model call on `text` with the request's uploaded images: the prompt interleaves
 * them where the text has image marks, or is the text alone (with BOS only where `bos`). */
static xc_status run_uploads(xc_compose *s, const char *step, const char *text, bool bos,
                             const xc_compose_image *up, int n_up, int max_new, stops which,
                             bool deltas, xc_tokens *out, bool *stopped) {
    xc_compose_prompt p;
    xc_status st = n_up ? xc_compose_interleave(s->conf, text, n_up, &p)
                        : xc_compose_tokenize(s->conf, text, bos, &p);
    if (st != XC_OK) {
        return fail(s, st, "%s prompt: %s", step, xc_err_last());
    }
    const xc_compose_image *imgs[XC_COMPOSE_MAX_IMAGES];
    for (int i = 0; i < n_up && i < XC_COMPOSE_MAX_IMAGES; i++) {
        imgs[i] = &up[i];
    }
    st = run(s, step, &p, imgs, max_new, which, deltas, out, stopped);
    xc_compose_prompt_fini(&p);
    return st;
}

/* HF's clean_up_tokenization: each replacement over the whole string, in this order. */
static void clean_up(char *t) {
    static const char *const rep[][2] = {
        {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
        {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (size_t k = 0; k < sizeof rep / sizeof rep[0]; k++) {
        size_t fl = strlen(rep[k][0]), tl = strlen(rep[k][1]);
        char *w = t;
        for (const char *r = t; *r;) {
            if (!strncmp(r, rep[k][0], fl)) {
                memcpy(w, rep[k][1], tl);
                w += tl;
                r += fl;
            } else {
                *w++ = *r++;
            }
        }
        *w = 0;
    }
}

/* tokenizer.decode(ids) as the original InternLMXComposer2Tokenizer does it (transformers 4.33):
 * with skip_special, BOS/EOS/UNK/PAD ids are dropped first; otherwise each special token ends a
 * run of pieces, the run is decoded on its own (so its first piece loses its leading space) and
 * the special token's text follows, with one space put before the run when the previous token
 * was not special; then clean_up_tokenization once (convert_tokens_to_string) and once more when
 * the model's tokenizer_config.json says clean_up_tokenization_spaces (the default). */
static xc_status hf_decode(xc_compose *s, const int32_t *ids, size_t n, bool skip_special,
                           char **out) {
    const xc_tokenizer *tok = s->conf->tok;
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(tok);
    sb b = {0};
    int32_t *run = xc_malloc((n + 1) * sizeof *run);
    if (!run) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    size_t nr = 0;
    bool prev_special = false;
    xc_status st = XC_OK;
    for (size_t i = 0; i <= n && st == XC_OK; i++) {
        int32_t id = i < n ? ids[i] : -1;
        bool special =
            i < n && id >= 0 && (id == sp->bos || id == sp->eos || id == sp->unk || id == sp->pad);
        if (special && skip_special) {
            continue;
        }
        if (i < n && !special) {
            run[nr++] = id;
            prev_special = false;
            continue;
        }
        if (special && !prev_special) {
            sb_add(&b, " ");
        }
        if (nr > 0) {
            char *d = NULL;
            size_t dl;
            st = xc_tokenizer_decode(tok, run, nr, &d, &dl);
            if (st == XC_OK) {
                sb_addn(&b, d, dl);
            }
            xc_free(d);
            nr = 0;
        }
        if (special) {
            size_t pl;
            const char *pc = xc_tokenizer_id_to_piece(tok, id, &pl);
            sb_addn(&b, pc ? pc : "", pc ? pl : 0);
            prev_special = true;
        }
    }
    xc_free(run);
    if (st != XC_OK) {
        xc_free(b.p);
        return fail(s, st, "decode: %s", xc_err_last());
    }
    *out = sb_take(&b);
    if (!*out) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    clean_up(*out);
    if (s->conf->clean_up_spaces) {
        clean_up(*out);
    }
    return XC_OK;
}

/* generate()'s answer: decode(skip_special_tokens=True) then the removal of the turn markers. */
static xc_status decode_clean(xc_compose *s, const xc_tokens *t, size_t from, char **out) {
    XC_TRY(hf_decode(s, t->ids + from, t->n - from, true, out));
    remove_all(*out, IM_END);
    remove_all(*out, IM_START);
    return XC_OK;
}

/* decode(ids) with special tokens kept as their text (the streams and the selections). */
static xc_status decode_special(xc_compose *s, const xc_tokens *t, size_t from, char **out) {
    return hf_decode(s, t->ids + from, t->n - from, false, out);
}

/* ---- steps ---- */

xc_status xc_compose_article(xc_compose *s, const char *instruction, const xc_compose_image *up,
                             int n_up, char ***paras, int *n_paras) {
    *paras = NULL;
    *n_paras = 0;
    sb b = {0};
    for (int i = 0; i < n_up; i++) {
        sb_add(&b, i ? " " IMAGE_MARK : IMAGE_MARK); /* ('<image> ' * n).strip() */
    }
    sb_add(&b, instruction);
    char *instr = sb_take(&b);
    char *text = instr ? xc_compose_instruction(s->conf->with_meta, instr) : NULL;
    xc_free(instr);
    if (!text) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    xc_tokens t = {0};
    bool stopped;
    xc_status st = run_uploads(s, "article", text, true, up, n_up, s->conf->article_max_tokens,
                               STOPS_STREAM, true, &t, &stopped);
    xc_free(text);
    char *out = NULL;
    if (st == XC_OK) {
        st = decode_special(s, &t, 0, &out); /* decode(output[1:]): the stream's text */
    }
    xc_tokenizer_tokens_fini(&t);
    if (st == XC_OK) {
        st = xc_compose_paragraphs(out, paras, n_paras);
    }
    xc_free(out);
    if (st == XC_OK) {
        cJSON *o = event_obj("paragraphs");
        cJSON *a = cJSON_AddArrayToObject(o, "paragraphs");
        for (int i = 0; a && i < *n_paras; i++) {
            cJSON_AddItemToArray(a, cJSON_CreateString((*paras)[i]));
        }
        emit(s, o);
    }
    return st;
}

static char *sections(char *const *paras, int n, int upto) {
    sb b = {0};
    for (int i = 0; i < n && i < upto; i++) {
        sb_addf(&b, "<Seg%d> %s\n", i, paras[i]);
    }
    return sb_take(&b);
}

xc_status xc_compose_loc(xc_compose *s, char *const *paras, int n_paras, const xc_compose_image *up,
                         int n_up, const char *image_num, int **locs, int *n_locs) {
    *locs = NULL;
    *n_locs = 0;
    char *full = sections(paras, n_paras, n_paras);
    sb b = {0};
    for (int i = 0; i < n_up; i++) {
        sb_add(&b, IMAGE_MARK " ");
    }
    sb_add(&b, LOC_Q1);
    sb_add(&b, full ? full : "");
    sb_add(&b, LOC_Q2);
    sb_add(&b, image_num ? image_num : "");
    sb_add(&b, LOC_Q3);
    xc_free(full);
    char *q = sb_take(&b);
    char *instr = q ? xc_compose_instruction(s->conf->with_meta, q) : NULL;
    xc_free(q);
    sb b2 = {0};
    sb_add(&b2, instr ? instr : "");
    sb_add(&b2, LOC_PREFIX);
    char *text = instr ? sb_take(&b2) : NULL;
    if (!instr) {
        xc_free(b2.p);
    }
    xc_free(instr);
    if (!text) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    xc_tokens t = {0};
    bool stopped;
    xc_status st = run_uploads(s, "positions", text, false, up, n_up, GEN_LOC_MAX, STOPS_GENERATE,
                               false, &t, &stopped);
    xc_free(text);
    char *ans = NULL;
    if (st == XC_OK) {
        st = decode_clean(s, &t, 0, &ans);
    }
    xc_tokenizer_tokens_fini(&t);
    if (st != XC_OK) {
        return st;
    }
    sb b3 = {0};
    sb_add(&b3, LOC_PREFIX);
    sb_add(&b3, ans);
    xc_free(ans);
    char *inject = sb_take(&b3);
    if (!inject) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    st = xc_compose_parse_locs(inject, locs, n_locs);
    if (st != XC_OK) {
        fail(s, st, "positions: %s (answer: %.200s)", xc_err_last(), inject);
    } else {
        cJSON *o = event_obj("positions");
        cJSON_AddStringToObject(o, "answer", inject);
        cJSON *a = cJSON_AddArrayToObject(o, "positions");
        for (int i = 0; a && i < *n_locs; i++) {
            cJSON_AddItemToArray(a, cJSON_CreateNumber((*locs)[i]));
        }
        emit(s, o);
    }
    xc_free(inject);
    return st;
}

xc_status xc_compose_captions(xc_compose *s, char *const *paras, int n_paras, const int *locs,
                              int n_locs, char ***caps) {
    *caps = xc_calloc((size_t)(n_locs > 0 ? n_locs : 1), sizeof **caps);
    if (!*caps) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    sb pasts = {0};
    xc_status st = XC_OK;
    for (int idx = 0; idx < n_locs && st == XC_OK; idx++) {
        int po = locs[idx];
        int upto = po > INT_MAX - 2 ? INT_MAX : po + 2;
        char *full = sections(paras, n_paras, upto);
        sb q = {0};
        sb_add(&q, CAP_Q1);
        sb_add(&q, full ? full : "");
        sb_add(&q, CAP_Q2);
        if (idx > 0 && pasts.n >= strlen(CAP_PAST_TAIL)) {
            sb_addn(&q, pasts.p, pasts.n - strlen(CAP_PAST_TAIL));
            sb_add(&q, CAP_PAST_END);
        } else if (pasts.p) {
            sb_add(&q, pasts.p);
        }
        sb_addf(&q, CAP_Q3, po);
        xc_free(full);
        char *qs = sb_take(&q);
        char *instr = qs ? xc_compose_instruction(s->conf->with_meta, qs) : NULL;
        xc_free(qs);
        sb w = {0};
        if (instr) {
            sb_add(&w, instr);
            sb_add(&w, CAP_PREFIX);
        }
        xc_free(instr);
        char *text = instr ? sb_take(&w) : NULL;
        if (!text) {
            st = fail(s, XC_ERR_NOMEM, "out of memory");
            break;
        }
        xc_compose_prompt p;
        st = xc_compose_tokenize(s->conf, text, false, &p);
        xc_free(text);
        if (st != XC_OK) {
            st = fail(s, st, "caption prompt: %s", xc_err_last());
            break;
        }
        xc_tokens t = {0};
        bool stopped;
        st = run(s, "caption", &p, NULL, GEN_CAP_MAX, STOPS_GENERATE, false, &t, &stopped);
        xc_compose_prompt_fini(&p);
        char *ans = NULL;
        if (st == XC_OK) {
            st = decode_clean(s, &t, 0, &ans);
        }
        xc_tokenizer_tokens_fini(&t);
        if (st != XC_OK) {
            break;
        }
        char *cap = xc_compose_parse_caption(ans);
        xc_free(ans);
        if (!cap) {
            st = fail(s, XC_ERR_NOMEM, "out of memory");
            break;
        }
        (*caps)[idx] = cap;
        if (idx == 0) {
            sb_addf(&pasts, CAP_PAST0, po, cap);
        } else {
            sb_addf(&pasts, CAP_PASTN, po, cap);
        }
        if (pasts.oom) {
            st = fail(s, XC_ERR_NOMEM, "out of memory");
        }
        cJSON *o = event_obj("caption");
        cJSON_AddNumberToObject(o, "paragraph", po);
        cJSON_AddStringToObject(o, "caption", cap);
        emit(s, o);
    }
    xc_free(pasts.p);
    if (st != XC_OK) {
        free_strv(*caps, n_locs);
        *caps = NULL;
    }
    return st;
}

/* The selection prompt of both pickers (context segments joined by <image>, then the lettered
 * candidates). */
static char *select_text(bool with_meta, const sb *ctx_list, int n_ctx, int n_cand) {
    sb b = {0};
    sb_add(&b, SEL_Q1);
    for (int i = 0; i < n_ctx; i++) {
        if (i) {
            sb_add(&b, IMAGE_MARK);
        }
        sb_add(&b, ctx_list[i].p ? ctx_list[i].p : "");
    }
    sb_add(&b, SEL_Q2);
    for (int j = 0; j < n_cand; j++) {
        if (j) {
            sb_add(&b, "\n");
        }
        sb_addf(&b, "%c." IMAGE_MARK, 'A' + j);
    }
    char *q = sb_take(&b);
    char *instr = q ? xc_compose_instruction(with_meta, q) : NULL;
    xc_free(q);
    if (!instr) {
        return NULL;
    }
    sb w = {0};
    sb_add(&w, instr);
    sb_add(&w, SEL_PREFIX);
    xc_free(instr);
    return sb_take(&w);
}

/* One selection call: the letter the model answers (code point; -1 none). */
static xc_status select_call(xc_compose *s, const char *text, const xc_compose_image *const *imgs,
                             int n_imgs, int *letter, char **answer) {
    xc_compose_prompt p;
    xc_status st = xc_compose_interleave(s->conf, text, n_imgs, &p);
    if (st != XC_OK) {
        return fail(s, st, "selection prompt: %s", xc_err_last());
    }
    xc_tokens t = {0};
    bool stopped;
    st = run(s, "selection", &p, imgs, GEN_SEL_MAX, STOPS_EOS, false, &t, &stopped);
    xc_compose_prompt_fini(&p);
    char *ans = NULL;
    if (st == XC_OK) {
        /* outputs[0][2:]: BOS and the first generated id are skipped */
        st = decode_special(s, &t, t.n > 0 ? 1 : 0, &ans);
    }
    xc_tokenizer_tokens_fini(&t);
    if (st != XC_OK) {
        return st;
    }
    *letter = xc_compose_parse_letter(ans);
    *answer = ans;
    return XC_OK;
}

static void sb_list_fini(sb *v, int n) {
    for (int i = 0; v && i < n; i++) {
        xc_free(v[i].p);
    }
    xc_free(v);
}

xc_status xc_compose_select(xc_compose *s, char *const *paras, int n_paras, const int *slots,
                            int n_slots, const xc_compose_cands *cands, int *choice) {
    for (int k = 0; k < n_slots; k++) {
        choice[k] = -1;
    }
    sb *ctx = xc_calloc((size_t)n_slots + 1, sizeof *ctx);
    const xc_compose_image **imgs =
        xc_calloc((size_t)n_slots + XC_COMPOSE_SEARCH_KEEP + 1, sizeof *imgs);
    if (!ctx || !imgs) {
        xc_free(ctx);
        xc_free(imgs);
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    int n_ctx = 0, n_pre = 0;
    sb pre = {0};
    xc_status st = XC_OK;
    for (int i = 0; i < n_paras && st == XC_OK; i++) {
        sb_add(&pre, paras[i]);
        sb_add(&pre, "\n");
        int k = -1;
        for (int j = 0; j < n_slots && k < 0; j++) {
            k = slots[j] == i ? j : -1;
        }
        if (k < 0) {
            continue;
        }
        const xc_compose_cands *cd = &cands[k];
        ctx[n_ctx++] = pre;
        memset(&pre, 0, sizeof pre);
        int n_imgs = n_pre;
        for (int j = 0; j < cd->n && j < XC_COMPOSE_SEARCH_KEEP; j++) {
            imgs[n_imgs++] = &cd->img[j];
        }
        int n_cand = n_imgs - n_pre;
        char *text = select_text(s->conf->with_meta, ctx, n_ctx, n_cand);
        if (!text) {
            st = fail(s, XC_ERR_NOMEM, "out of memory");
            break;
        }
        int letter;
        char *ans = NULL;
        st = select_call(s, text, imgs, n_imgs, &letter, &ans);
        xc_free(text);
        if (st != XC_OK) {
            break;
        }
        /* ans2idx = A..D; images[len(pre_img) + idx] past the candidates raises: both fall back
         * to 'A' */
        int pick = letter >= 'A' && letter <= 'D' ? letter - 'A' : -1;
        bool fallback = pick < 0 || pick >= n_cand;
        if (fallback) {
            pick = 0;
        }
        choice[k] = pick;
        imgs[n_pre++] = &cd->img[pick];
        cJSON *o = event_obj("selection");
        cJSON_AddNumberToObject(o, "paragraph", i);
        cJSON_AddNumberToObject(o, "choice", pick);
        cJSON_AddStringToObject(o, "answer", ans);
        cJSON_AddBoolToObject(o, "fallback", fallback);
        emit(s, o);
        xc_free(ans);
    }
    xc_free(pre.p);
    sb_list_fini(ctx, n_ctx);
    xc_free(imgs);
    return st;
}

xc_status xc_compose_select_base(xc_compose *s, char *const *paras, int n_paras, const int *locs,
                                 int n_locs, const xc_compose_image *up, int n_up, int *upload_of) {
    for (int k = 0; k < n_locs; k++) {
        upload_of[k] = -1;
    }
    sb *ctx = xc_calloc((size_t)n_paras + 1, sizeof *ctx);
    int *selected = xc_calloc((size_t)n_paras + 1, sizeof *selected);
    const xc_compose_image **imgs = xc_calloc((size_t)n_paras + (size_t)n_up + 1, sizeof *imgs);
    int *cand = xc_calloc((size_t)n_up + 1, sizeof *cand);
    if (!ctx || !selected || !imgs || !cand) {
        xc_free(ctx);
        xc_free(selected);
        xc_free(imgs);
        xc_free(cand);
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    int n_ctx = 0, n_sel = 0;
    sb pre = {0};
    xc_status st = XC_OK;
    for (int i = 0; i < n_paras && st == XC_OK; i++) {
        sb_add(&pre, paras[i]);
        sb_add(&pre, "\n");
        bool in = false;
        for (int j = 0; j < n_locs && !in; j++) {
            in = locs[j] == i;
        }
        if (!in) {
            continue;
        }
        ctx[n_ctx++] = pre;
        memset(&pre, 0, sizeof pre);
        int n_cand = 0;
        for (int j = 0; j < n_up; j++) {
            bool used = false;
            for (int q = 0; q < n_sel && !used; q++) {
                used = selected[q] == j;
            }
            if (!used) {
                cand[n_cand++] = j;
            }
        }
        if (n_cand == 0) {
            st = fail(s, XC_ERR_ARG,
                      "selection: paragraph %d asks for an image but every upload is used "
                      "(the original fails here too)",
                      i);
            break;
        }
        int pick = 0;
        char *ans = NULL;
        if (n_cand > 1) {
            int n_imgs = 0;
            for (int q = 0; q < n_sel; q++) {
                imgs[n_imgs++] = &up[selected[q]];
            }
            for (int q = 0; q < n_cand; q++) {
                imgs[n_imgs++] = &up[cand[q]];
            }
            char *text = select_text(s->conf->with_meta, ctx, n_ctx, n_cand);
            if (!text) {
                st = fail(s, XC_ERR_NOMEM, "out of memory");
                break;
            }
            int letter;
            st = select_call(s, text, imgs, n_imgs, &letter, &ans);
            xc_free(text);
            if (st != XC_OK) {
                break;
            }
            if (letter >= 0) { /* no character at all: the original's fallback 'A' */
                pick = letter - 'A';
                if (letter < 'A' || pick >= n_cand) {
                    st = fail(s, XC_ERR_ARG,
                              "selection: the model answered '%s' for paragraph %d, which names "
                              "none of the %d candidates (the original fails here too)",
                              ans, i, n_cand);
                    xc_free(ans);
                    break;
                }
            }
        }
        selected[n_sel++] = cand[pick];
        cJSON *o = event_obj("selection");
        cJSON_AddNumberToObject(o, "paragraph", i);
        cJSON_AddNumberToObject(o, "upload", cand[pick]);
        cJSON_AddStringToObject(o, "answer", ans ? ans : "");
        emit(s, o);
        xc_free(ans);
    }
    if (st == XC_OK) {
        for (int k = 0; k < n_locs && k < n_sel; k++) {
            upload_of[k] = selected[k]; /* zip(locs, selected) */
        }
    }
    xc_free(pre.p);
    sb_list_fini(ctx, n_ctx);
    xc_free(selected);
    xc_free(imgs);
    xc_free(cand);
    return st;
}

/* ---- edits ---- */

int xc_compose_edit_kind_of(const char *n) {
    static const struct {
        const char *name;
        int kind;
    } names[] = {
        {"expand", XC_COMPOSE_EDIT_EXPAND},
        {"扩写", XC_COMPOSE_EDIT_EXPAND},
        {"rewrite", XC_COMPOSE_EDIT_REWRITE},
        {"改写", XC_COMPOSE_EDIT_REWRITE},
        {"abbreviate", XC_COMPOSE_EDIT_ABBREVIATE},
        {"缩写", XC_COMPOSE_EDIT_ABBREVIATE},
        {"insert_before", XC_COMPOSE_EDIT_INSERT_BEFORE},
        {"insert a paragraph before", XC_COMPOSE_EDIT_INSERT_BEFORE},
        {"前插入一段", XC_COMPOSE_EDIT_INSERT_BEFORE},
        {"insert_after", XC_COMPOSE_EDIT_INSERT_AFTER},
        {"insert a paragraph after", XC_COMPOSE_EDIT_INSERT_AFTER},
        {"后插入一段", XC_COMPOSE_EDIT_INSERT_AFTER},
    };

    for (size_t i = 0; n && i < sizeof names / sizeof names[0]; i++) {
        if (!strcmp(n, names[i].name)) {
            return names[i].kind;
        }
    }
    return -1;
}

xc_status xc_compose_edit(xc_compose *s, xc_compose_edit_kind kind, char *const *paras, int n_paras,
                          int index, const char *instruction, char **out) {
    *out = NULL;
    if (index < 0 || index >= n_paras) {
        return fail(s, XC_ERR_ARG, "index %d is not a paragraph (0..%d)", index, n_paras - 1);
    }
    if (!instruction) {
        instruction = "";
    }
    bool insert = kind == XC_COMPOSE_EDIT_INSERT_BEFORE || kind == XC_COMPOSE_EDIT_INSERT_AFTER;
    if (insert && !instruction[0]) {
        return fail(s, XC_ERR_ARG, "inserting a paragraph needs an instruction (its outline)");
    }
    const char *text = paras[index];
    sb b = {0};
    switch (kind) {
    case XC_COMPOSE_EDIT_EXPAND:
    case XC_COMPOSE_EDIT_REWRITE:
        sb_add(&b, kind == XC_COMPOSE_EDIT_EXPAND ? EDIT_EXPAND : EDIT_REWRITE);
        sb_add(&b, text);
        sb_add(&b, EDIT_BASED);
        sb_add(&b, instruction);
        break;
    case XC_COMPOSE_EDIT_ABBREVIATE:
        sb_add(&b, EDIT_ABBR);
        sb_add(&b, text);
        break;
    case XC_COMPOSE_EDIT_INSERT_BEFORE:
        sb_add(&b, EDIT_INSERT);
        sb_add(&b, index == 0 ? "" : paras[index - 1]);
        sb_add(&b, EDIT_SECOND);
        sb_add(&b, text);
        sb_add(&b, EDIT_OUTLINE);
        sb_add(&b, instruction);
        break;
    case XC_COMPOSE_EDIT_INSERT_AFTER:
        sb_add(&b, EDIT_INSERT);
        sb_add(&b, text);
        sb_add(&b, EDIT_SECOND);
        sb_add(&b, index + 1 >= n_paras ? "" : paras[index + 1]);
        sb_add(&b, EDIT_OUTLINE);
        sb_add(&b, instruction);
        break;
    default:
        xc_free(b.p);
        return fail(s, XC_ERR_ARG, "unknown edit type");
    }
    char *q = sb_take(&b);
    char *instr = q ? xc_compose_instruction(s->conf->with_meta, q) : NULL;
    xc_free(q);
    if (!instr) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    xc_compose_prompt p;
    xc_status st = xc_compose_tokenize(s->conf, instr, true, &p);
    xc_free(instr);
    if (st != XC_OK) {
        return fail(s, st, "edit prompt: %s", xc_err_last());
    }
    /* max_length = 500 - len(input_ids) counts the one BOS that generate() starts from */
    int max_new = GEN_EDIT_SPAN - p.n - 1;
    if (max_new < 1) {
        xc_compose_prompt_fini(&p);
        return fail(s, XC_ERR_ARG,
                    "the edit prompt has %d tokens; the original allows at most %d (max_length "
                    "500)",
                    p.n, GEN_EDIT_SPAN - 2);
    }
    xc_tokens t = {0};
    bool stopped;
    st = run(s, "edit", &p, NULL, max_new, STOPS_STREAM, false, &t, &stopped);
    xc_compose_prompt_fini(&p);
    char *d = NULL;
    if (st == XC_OK) {
        st = decode_special(s, &t, 0, &d);
    }
    xc_tokenizer_tokens_fini(&t);
    if (st != XC_OK) {
        return st;
    }
    sb w = {0}; /* the demo shows '\n' as '\n\n' */
    for (const char *c = d; *c; c++) {
        sb_addn(&w, c, 1);
        if (*c == '\n') {
            sb_addn(&w, "\n", 1);
        }
    }
    xc_free(d);
    *out = sb_take(&w);
    return *out ? XC_OK : fail(s, XC_ERR_NOMEM, "out of memory");
}

/* ---- the whole procedure ---- */

void xc_compose_result_fini(xc_compose_result *r) {
    if (!r) {
        return;
    }
    free_strv(r->paras, r->n_paras);
    xc_free(r->locs);
    for (int i = 0; i < r->n_slots; i++) {
        xc_free(r->slots[i].caption);
        xc_compose_image_fini(&r->slots[i].image);
    }
    xc_free(r->slots);
    xc_free(r->markdown);
    memset(r, 0, sizeof *r);
}

char *xc_compose_markdown(const xc_compose_result *r) {
    sb b = {0};
    for (int i = 0; i < r->n_paras; i++) {
        sb_add(&b, r->paras[i]);
        sb_add(&b, "\n");
        for (int k = 0; k < r->n_slots; k++) {
            if (r->slots[k].paragraph == i && r->slots[k].name[0]) {
                sb_addf(&b, "<div align=\"center\"> <img src=%s width = 500/> </div>",
                        r->slots[k].name);
            }
        }
    }
    return sb_take(&b);
}

static xc_status add_slot(xc_compose *s, xc_compose_result *r, int paragraph, const char *caption,
                          int upload, xc_compose_image *img, const char *name) {
    xc_compose_slot *v = xc_realloc(r->slots, (size_t)(r->n_slots + 1) * sizeof *v);
    if (!v) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    r->slots = v;
    xc_compose_slot *sl = &v[r->n_slots];
    memset(sl, 0, sizeof *sl);
    sl->paragraph = paragraph;
    sl->caption = xc_strdup(caption ? caption : "");
    if (!sl->caption) {
        return fail(s, XC_ERR_NOMEM, "out of memory");
    }
    sl->upload = upload;
    if (img) {
        sl->image = *img;
        memset(img, 0, sizeof *img);
    }
    snprintf(sl->name, sizeof sl->name, "%s", name ? name : "");
    r->n_slots++;
    return XC_OK;
}

/* caption.strip()[:53]: the first 53 code points. */
static char *search_caption(const char *cap) {
    char *c = xc_strdup(cap);
    if (!c) {
        return NULL;
    }
    xc_compose_strip(c);
    size_t n = strlen(c), i = 0;
    for (int k = 0; k < XC_COMPOSE_CAPTION_CHARS && i < n; k++) {
        int l;
        utf8_at((const unsigned char *)c + i, n - i, &l);
        i += (size_t)l;
    }
    c[i] = 0;
    return c;
}

static xc_status run_search(xc_compose *s, xc_compose_result *r, char **caps, int n_locs) {
    const xc_compose_backend *be = &s->conf->be;
    /* caps.items(): distinct positions in first-caption order, each with its last caption */
    int *keys = xc_calloc((size_t)n_locs + 1, sizeof *keys);
    const char **kcap = xc_calloc((size_t)n_locs + 1, sizeof *kcap);
    xc_compose_cands *cands = xc_calloc((size_t)n_locs + 1, sizeof *cands);
    int *slot_para = xc_calloc((size_t)n_locs + 1, sizeof *slot_para);
    int *slot_key = xc_calloc((size_t)n_locs + 1, sizeof *slot_key);
    int *choice = xc_calloc((size_t)n_locs + 1, sizeof *choice);
    int64_t *exclude = NULL;
    int n_ex = 0;
    xc_status st = XC_OK;
    if (!keys || !kcap || !cands || !slot_para || !slot_key || !choice) {
        st = fail(s, XC_ERR_NOMEM, "out of memory");
        goto out;
    }
    int n_keys = 0;
    for (int k = 0; k < n_locs; k++) {
        int j = 0;
        while (j < n_keys && keys[j] != r->locs[k]) {
            j++;
        }
        if (j == n_keys) {
            keys[n_keys++] = r->locs[k];
        }
        kcap[j] = caps[k];
    }
    if (!be->search) {
        for (int j = 0; j < n_keys && st == XC_OK; j++) {
            if (keys[j] < r->n_paras) {
                st = add_slot(s, r, keys[j], kcap[j], -1, NULL, NULL);
            }
        }
        goto out;
    }
    int n_slots = 0;
    for (int j = 0; j < n_keys; j++) {
        char *q = search_caption(kcap[j]);
        if (!q) {
            st = fail(s, XC_ERR_NOMEM, "out of memory");
            goto out;
        }
        if (be->cancelled && be->cancelled(be->user)) {
            xc_free(q);
            st = fail(s, XC_ERR_TIMEOUT, "cancelled");
            goto out;
        }
        st = be->search(be->user, q, exclude, n_ex, &cands[j]);
        xc_free(q);
        if (st != XC_OK) {
            st = fail(s, st, "image search: %s", xc_err_last());
            goto out;
        }
        if (cands[j].n_indices > 0) {
            int64_t *e = xc_realloc(exclude, (size_t)(n_ex + cands[j].n_indices) * sizeof *e);
            if (!e) {
                st = fail(s, XC_ERR_NOMEM, "out of memory");
                goto out;
            }
            exclude = e;
            memcpy(exclude + n_ex, cands[j].indices, (size_t)cands[j].n_indices * sizeof *e);
            n_ex += cands[j].n_indices;
        }
        cJSON *o = event_obj("candidates");
        cJSON_AddNumberToObject(o, "paragraph", keys[j]);
        cJSON_AddNumberToObject(o, "count", cands[j].n);
        emit(s, o);
        if (cands[j].n > 0) {
            slot_para[n_slots] = keys[j];
            slot_key[n_slots] = j;
            n_slots++;
        }
    }
    xc_compose_cands *sc = xc_calloc((size_t)n_slots + 1, sizeof *sc);
    if (!sc) {
        st = fail(s, XC_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int k = 0; k < n_slots; k++) {
        sc[k] = cands[slot_key[k]];
    }
    st = xc_compose_select(s, r->paras, r->n_paras, slot_para, n_slots, sc, choice);
    xc_free(sc);
    if (st != XC_OK) {
        goto out;
    }
    for (int i = 0; i < r->n_paras && st == XC_OK; i++) {
        for (int k = 0; k < n_slots; k++) {
            if (slot_para[k] == i && choice[k] >= 0) {
                xc_compose_cands *cd = &cands[slot_key[k]];
                char name[64];
                snprintf(name, sizeof name, "temp_%d_%d.%s", slot_key[k], choice[k],
                         xc_compose_image_ext(cd->img[choice[k]].data, cd->img[choice[k]].len));
                st = add_slot(s, r, i, kcap[slot_key[k]], -1, &cd->img[choice[k]], name);
            }
        }
    }
out:
    for (int j = 0; cands && j < n_locs; j++) {
        xc_compose_cands_fini(&cands[j]);
    }
    xc_free(keys);
    xc_free(kcap);
    xc_free(cands);
    xc_free(slot_para);
    xc_free(slot_key);
    xc_free(choice);
    xc_free(exclude);
    return st;
}

xc_status xc_compose_run(xc_compose *s, const xc_compose_request *req, xc_compose_result *r) {
    memset(r, 0, sizeof *r);
    if (!req->instruction || !req->instruction[0]) {
        return fail(s, XC_ERR_ARG, "the instruction is empty");
    }
    if (req->n_up > XC_COMPOSE_MAX_IMAGES) {
        return fail(s, XC_ERR_ARG, "at most %d images (the demo's limit)", XC_COMPOSE_MAX_IMAGES);
    }
    xc_status st =
        xc_compose_article(s, req->instruction, req->up, req->n_up, &r->paras, &r->n_paras);
    if (st == XC_OK && !req->llm_only) {
        if (req->positions) {
            r->locs = xc_calloc((size_t)req->n_positions + 1, sizeof *r->locs);
            st = r->locs ? XC_OK : fail(s, XC_ERR_NOMEM, "out of memory");
            for (int i = 0; st == XC_OK && i < req->n_positions; i++) {
                r->locs[i] = req->positions[i];
            }
            r->n_locs = req->n_positions;
        } else {
            st = xc_compose_loc(s, r->paras, r->n_paras, req->up, req->n_up,
                                req->image_num ? req->image_num : "", &r->locs, &r->n_locs);
        }
        if (st == XC_OK && req->n_up == 0) {
            char **caps = NULL;
            st = xc_compose_captions(s, r->paras, r->n_paras, r->locs, r->n_locs, &caps);
            if (st == XC_OK) {
                st = run_search(s, r, caps, r->n_locs);
            }
            free_strv(caps, r->n_locs);
        } else if (st == XC_OK) {
            int *upload_of = xc_calloc((size_t)r->n_locs + 1, sizeof *upload_of);
            if (!upload_of) {
                st = fail(s, XC_ERR_NOMEM, "out of memory");
            } else {
                st = xc_compose_select_base(s, r->paras, r->n_paras, r->locs, r->n_locs, req->up,
                                            req->n_up, upload_of);
            }
            /* {loc: j for loc, j in zip(locs, selected)}: a later position wins */
            for (int i = 0; st == XC_OK && i < r->n_paras; i++) {
                int u = -1;
                for (int k = 0; k < r->n_locs; k++) {
                    if (r->locs[k] == i && upload_of[k] >= 0) {
                        u = upload_of[k];
                    }
                }
                if (u >= 0) {
                    char name[64];
                    snprintf(name, sizeof name, "upload_%d.%s", u,
                             xc_compose_image_ext(req->up[u].data, req->up[u].len));
                    st = add_slot(s, r, i, "", u, NULL, name);
                }
            }
            xc_free(upload_of);
        }
    }
    if (st == XC_OK) {
        r->markdown = xc_compose_markdown(r);
        if (!r->markdown) {
            st = fail(s, XC_ERR_NOMEM, "out of memory");
        }
    }
    if (st != XC_OK) {
        xc_compose_result_fini(r);
    }
    return st;
}
