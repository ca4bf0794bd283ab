/* Checkpoint writers: safetensors and PyTorch zip `.bin` files laid out exactly as the reference
 * libraries lay them out (so tests can compare bytes), and the HF shard index. */
#include "xc_ckpt_write.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_mem.h"

#define ZIP_ALIGN    64   /* torch's kFieldAlignment: entry data starts 64-byte aligned */
#define ZIP_LOCAL_SZ 30   /* local file header size without name and extra */
#define ZIP_CDIR_SZ  46   /* central directory header size without name */
#define PKL_BATCH    1000 /* pickle's _BATCHSIZE for SETITEMS */

/* ---- growable byte buffer (errors are sticky, checked once at the end) ---- */

typedef struct wbuf {
    unsigned char *p;
    size_t n, cap;
    bool oom;
} wbuf;

static void wb_put(wbuf *b, const void *src, size_t n) {
    if (b->oom) {
        return;
    }
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) {
            cap *= 2;
        }
        unsigned char *p = xc_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void wb_byte(wbuf *b, unsigned c) {
    unsigned char x = (unsigned char)c;
    wb_put(b, &x, 1);
}

static void wb_str(wbuf *b, const char *s) {
    wb_put(b, s, strlen(s));
}

static void wb_le(wbuf *b, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) {
        wb_byte(b, (unsigned)(v >> (8 * i)) & 0xffu);
    }
}

static void wb_fmt(wbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void wb_fmt(wbuf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    XC_ASSERT(k >= 0 && (size_t)k < sizeof tmp);
    wb_put(b, tmp, (size_t)k);
}

/* A JSON string the way serde_json (safetensors) and Python's json (transformers) escape ASCII
 * names: \" \\ and control characters; other bytes pass through. */
static void wb_json_str(wbuf *b, const char *s) {
    wb_byte(b, '"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"':
            wb_str(b, "\\\"");
            break;
        case '\\':
            wb_str(b, "\\\\");
            break;
        case '\n':
            wb_str(b, "\\n");
            break;
        case '\r':
            wb_str(b, "\\r");
            break;
        case '\t':
            wb_str(b, "\\t");
            break;
        case '\b':
            wb_str(b, "\\b");
            break;
        case '\f':
            wb_str(b, "\\f");
            break;
        default:
            if (*c < 0x20) {
                wb_fmt(b, "\\u%04x", *c);
            } else {
                wb_byte(b, *c);
            }
        }
    }
    wb_byte(b, '"');
}

/* ---- output file: temp file renamed into place on success ---- */

typedef struct wfile {
    FILE *f;
    const char *path;
    char *tmp;
    uint64_t pos;
    xc_status st;
} wfile;

static xc_status wf_open(wfile *w, const char *path) {
    memset(w, 0, sizeof *w);
    w->path = path;
    size_t len = strlen(path);
    w->tmp = xc_malloc(len + 5);
    if (!w->tmp) {
        return xc_errf(XC_ERR_NOMEM, "out of memory writing %s", path);
    }
    memcpy(w->tmp, path, len);
    memcpy(w->tmp + len, ".tmp", 5);
    w->f = fopen(w->tmp, "wb");
    if (!w->f) {
        xc_status st = xc_errf(XC_ERR_IO, "cannot create %s: %s", w->tmp, strerror(errno));
        xc_free(w->tmp);
        w->tmp = NULL;
        return st;
    }
    return XC_OK;
}

static void wf_write(wfile *w, const void *p, size_t n) {
    if (w->st != XC_OK || n == 0) {
        return;
    }
    if (fwrite(p, 1, n, w->f) != n) {
        w->st = xc_errf(XC_ERR_IO, "cannot write %s: %s", w->tmp, strerror(errno));
        return;
    }
    w->pos += n;
}

/* Closes; on success renames the temp file to the final path, otherwise removes it. */
static xc_status wf_close(wfile *w, xc_status st) {
    if (!w->f) {
        return st;
    }
    if (st == XC_OK) {
        st = w->st;
    }
    if (fclose(w->f) != 0 && st == XC_OK) {
        st = xc_errf(XC_ERR_IO, "cannot write %s: %s", w->tmp, strerror(errno));
    }
    if (st == XC_OK && rename(w->tmp, w->path) != 0) {
        st = xc_errf(XC_ERR_IO, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
    }
    if (st != XC_OK) {
        unlink(w->tmp);
    }
    xc_free(w->tmp);
    w->f = NULL;
    w->tmp = NULL;
    return st;
}

/* ---- validation and helpers ---- */

xc_status xc_ckpt_wtensor_nbytes(const xc_ckpt_wtensor *t, size_t *out) {
    size_t esz = xc_dtype_size(t->dtype);
    if (esz == 0) {
        return xc_errf(XC_ERR_ARG, "tensor '%s': invalid dtype %d", t->name ? t->name : "?",
                       (int)t->dtype);
    }
    if (t->ndim < 0 || t->ndim > XC_CKPT_MAX_DIMS) {
        return xc_errf(XC_ERR_ARG, "tensor '%s': ndim %d is outside 0..%d", t->name ? t->name : "?",
                       t->ndim, XC_CKPT_MAX_DIMS);
    }
    size_t n = esz;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || (uint64_t)t->shape[d] > SIZE_MAX ||
            xc_mul_overflow(n, (size_t)t->shape[d], &n)) {
            return xc_errf(XC_ERR_ARG, "tensor '%s': bad or too large shape",
                           t->name ? t->name : "?");
        }
    }
    *out = n;
    return XC_OK;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks names (non-empty, unique), dtypes and shapes; fills sizes[i]. */
static xc_status validate(const xc_ckpt_wtensor *t, size_t n, xc_ckpt_fill_fn fill, size_t *sizes) {
    for (size_t i = 0; i < n; i++) {
        if (!t[i].name || !t[i].name[0]) {
            return xc_errf(XC_ERR_ARG, "tensor %zu has an empty name", i);
        }
        XC_TRY(xc_ckpt_wtensor_nbytes(&t[i], &sizes[i]));
        if (!t[i].data && !fill) {
            return xc_errf(XC_ERR_ARG, "tensor '%s' has no data and no fill callback", t[i].name);
        }
    }
    if (n < 2) {
        return XC_OK;
    }
    const char **names = xc_malloc(n * sizeof *names);
    if (!names) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        names[i] = t[i].name;
    }
    qsort(names, n, sizeof *names, cmp_str_ptr);
    xc_status st = XC_OK;
    for (size_t i = 1; i < n; i++) {
        if (!strcmp(names[i - 1], names[i])) {
            st = xc_errf(XC_ERR_ARG, "duplicate tensor name '%s'", names[i]);
            break;
        }
    }
    xc_free(names);
    return st;
}

/* Points *out at tensor i's bytes: its data, or the fill callback's output in a scratch buffer
 * that grows to the largest tensor (one tensor in memory at a time). */
static xc_status tensor_bytes(const xc_ckpt_wtensor *t, size_t i, size_t nbytes,
                              xc_ckpt_fill_fn fill, void *user, unsigned char **scratch,
                              size_t *scratch_cap, const unsigned char **out) {
    if (t[i].data) {
        *out = t[i].data;
        return XC_OK;
    }
    if (nbytes > *scratch_cap) {
        unsigned char *p = xc_realloc(*scratch, nbytes);
        if (!p) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for tensor '%s' (%zu bytes)", t[i].name,
                           nbytes);
        }
        *scratch = p;
        *scratch_cap = nbytes;
    }
    if (nbytes > 0) {
        XC_TRY(fill(user, i, *scratch, nbytes));
    }
    *out = *scratch;
    return XC_OK;
}

/* ---- safetensors ---- */

/* Rank of a dtype in the safetensors Rust enum (BOOL < U8 < I8 < I16 < F16 < BF16 < I32 < F32 <
 * F64 < I64); the library writes the data of higher ranks first. */
static int st_rank(xc_dtype t) {
    static const int rank[XC_DTYPE_COUNT] = {
        [XC_DTYPE_BOOL] = 0, [XC_DTYPE_U8] = 1,   [XC_DTYPE_I8] = 2,  [XC_DTYPE_I16] = 3,
        [XC_DTYPE_F16] = 4,  [XC_DTYPE_BF16] = 5, [XC_DTYPE_I32] = 6, [XC_DTYPE_F32] = 7,
        [XC_DTYPE_F64] = 8,  [XC_DTYPE_I64] = 9,
    };
    return rank[t];
}

static const char *st_dtype(xc_dtype t) {
    static const char *names[XC_DTYPE_COUNT] = {
        [XC_DTYPE_F32] = "F32",   [XC_DTYPE_F16] = "F16", [XC_DTYPE_BF16] = "BF16",
        [XC_DTYPE_F64] = "F64",   [XC_DTYPE_I64] = "I64", [XC_DTYPE_I32] = "I32",
        [XC_DTYPE_I16] = "I16",   [XC_DTYPE_I8] = "I8",   [XC_DTYPE_U8] = "U8",
        [XC_DTYPE_BOOL] = "BOOL",
    };
    return names[t];
}

static const xc_ckpt_wtensor *g_sort_t; /* qsort has no context argument; writes are serial */

static int st_order(const void *a, const void *b) {
    const xc_ckpt_wtensor *x = &g_sort_t[*(const size_t *)a], *y = &g_sort_t[*(const size_t *)b];
    int rx = st_rank(x->dtype), ry = st_rank(y->dtype);
    if (rx != ry) {
        return ry - rx;
    }
    return strcmp(x->name, y->name);
}

static xc_status write_safetensors(wfile *w, const xc_ckpt_wtensor *t, size_t n,
                                   const size_t *sizes, xc_ckpt_fill_fn fill, void *user) {
    xc_status st = XC_OK;
    wbuf hb = {0};
    unsigned char *scratch = NULL;
    size_t scratch_cap = 0;
    size_t *order = xc_malloc((n ? n : 1) * sizeof *order);
    if (!order) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        order[i] = i;
    }
    g_sort_t = t;
    qsort(order, n, sizeof *order, st_order);
    g_sort_t = NULL;

    wb_str(&hb, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (size_t k = 0; k < n; k++) {
        const xc_ckpt_wtensor *x = &t[order[k]];
        wb_byte(&hb, ',');
        wb_json_str(&hb, x->name);
        wb_fmt(&hb, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype(x->dtype));
        for (int d = 0; d < x->ndim; d++) {
            wb_fmt(&hb, "%s%" PRId64, d ? "," : "", x->shape[d]);
        }
        wb_fmt(&hb, "],\"data_offsets\":[%" PRIu64 ",", off);
        off += sizes[order[k]];
        wb_fmt(&hb, "%" PRIu64 "]}", off);
    }
    wb_byte(&hb, '}');
    while (hb.n % 8 != 0) {
        wb_byte(&hb, ' ');
    }
    if (hb.oom) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory building the safetensors header");
        goto out;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) {
        len8[i] = (unsigned char)((uint64_t)hb.n >> (8 * i));
    }
    wf_write(w, len8, 8);
    wf_write(w, hb.p, hb.n);
    for (size_t k = 0; k < n && w->st == XC_OK; k++) {
        const unsigned char *bytes = NULL;
        XC_TRY_GOTO(
            tensor_bytes(t, order[k], sizes[order[k]], fill, user, &scratch, &scratch_cap, &bytes),
            st, out);
        wf_write(w, bytes, sizes[order[k]]);
    }
    st = w->st;
out:
    xc_free(order);
    xc_free(hb.p);
    xc_free(scratch);
    return st;
}

/* ---- pickle (protocol 2, as Python's pickle module writes torch.save's state dict) ---- */

typedef struct pkl {
    wbuf b;
    uint32_t next_memo;
    /* memo slots of the objects Python's pickler would find again: -1 until first written */
    int64_t m_odict, m_rebuild, m_storage_str, m_cpu_str, m_stype[XC_DTYPE_COUNT];
} pkl;

static void pkl_put(pkl *p) {
    uint32_t i = p->next_memo++;
    if (i < 256) {
        wb_byte(&p->b, 'q'); /* BINPUT */
        wb_byte(&p->b, i);
    } else {
        wb_byte(&p->b, 'r'); /* LONG_BINPUT */
        wb_le(&p->b, i, 4);
    }
}

static void pkl_get(pkl *p, int64_t i) {
    if (i < 256) {
        wb_byte(&p->b, 'h'); /* BINGET */
        wb_byte(&p->b, (unsigned)i);
    } else {
        wb_byte(&p->b, 'j'); /* LONG_BINGET */
        wb_le(&p->b, (uint64_t)i, 4);
    }
}

/* A memoised object: BINGET if seen, else write it (via the op) and BINPUT. */
static void pkl_global(pkl *p, int64_t *slot, const char *module, const char *name) {
    if (*slot >= 0) {
        pkl_get(p, *slot);
        return;
    }
    wb_byte(&p->b, 'c'); /* GLOBAL */
    wb_str(&p->b, module);
    wb_byte(&p->b, '\n');
    wb_str(&p->b, name);
    wb_byte(&p->b, '\n');
    *slot = p->next_memo;
    pkl_put(p);
}

static void pkl_unicode(pkl *p, const char *s, int64_t *slot) {
    if (slot && *slot >= 0) {
        pkl_get(p, *slot);
        return;
    }
    size_t n = strlen(s);
    wb_byte(&p->b, 'X'); /* BINUNICODE */
    wb_le(&p->b, n, 4);
    wb_put(&p->b, s, n);
    if (slot) {
        *slot = p->next_memo;
    }
    pkl_put(p);
}

/* Python's save_long for protocol 2 on a non-negative integer. */
static void pkl_int(pkl *p, uint64_t v) {
    if (v <= 0xff) {
        wb_byte(&p->b, 'K'); /* BININT1 */
        wb_byte(&p->b, (unsigned)v);
    } else if (v <= 0xffff) {
        wb_byte(&p->b, 'M'); /* BININT2 */
        wb_le(&p->b, v, 2);
    } else if (v <= 0x7fffffff) {
        wb_byte(&p->b, 'J'); /* BININT */
        wb_le(&p->b, v, 4);
    } else {
        int bits = 64 - __builtin_clzll(v);
        int nbytes = (bits >> 3) + 1; /* room for the sign bit, as encode_long does */
        wb_byte(&p->b, 0x8a);         /* LONG1 */
        wb_byte(&p->b, (unsigned)nbytes);
        wb_le(&p->b, v, nbytes > 8 ? 8 : nbytes);
        for (int i = 8; i < nbytes; i++) {
            wb_byte(&p->b, 0);
        }
    }
}

/* A tuple of non-negative ints, as save_tuple writes it (memoised unless empty). */
static void pkl_int_tuple(pkl *p, const uint64_t *v, int n) {
    if (n == 0) {
        wb_byte(&p->b, ')'); /* EMPTY_TUPLE */
        return;
    }
    if (n > 3) {
        wb_byte(&p->b, '('); /* MARK */
    }
    for (int i = 0; i < n; i++) {
        pkl_int(p, v[i]);
    }
    wb_byte(&p->b, n > 3 ? 't' : 0x84 + n); /* TUPLE or TUPLE1/2/3 */
    pkl_put(p);
}

static const char *torch_storage(xc_dtype t) {
    static const char *names[XC_DTYPE_COUNT] = {
        [XC_DTYPE_F32] = "FloatStorage",     [XC_DTYPE_F16] = "HalfStorage",
        [XC_DTYPE_BF16] = "BFloat16Storage", [XC_DTYPE_F64] = "DoubleStorage",
        [XC_DTYPE_I64] = "LongStorage",      [XC_DTYPE_I32] = "IntStorage",
        [XC_DTYPE_I16] = "ShortStorage",     [XC_DTYPE_I8] = "CharStorage",
        [XC_DTYPE_U8] = "ByteStorage",       [XC_DTYPE_BOOL] = "BoolStorage",
    };
    return names[t];
}

/* One tensor: _rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict()). Tensor i's
 * storage key is str(i) (keys are handed out in pickling order, as torch.save does). */
static void pkl_tensor(pkl *p, const xc_ckpt_wtensor *t, size_t i, size_t nbytes) {
    pkl_global(p, &p->m_rebuild, "torch._utils", "_rebuild_tensor_v2");
    wb_byte(&p->b, '('); /* MARK: args tuple */
    wb_byte(&p->b, '('); /* MARK: persistent id tuple */
    pkl_unicode(p, "storage", &p->m_storage_str);
    pkl_global(p, &p->m_stype[t->dtype], "torch", torch_storage(t->dtype));
    char key[32];
    snprintf(key, sizeof key, "%zu", i);
    pkl_unicode(p, key, NULL);
    pkl_unicode(p, "cpu", &p->m_cpu_str);
    pkl_int(p, nbytes / xc_dtype_size(t->dtype));
    wb_byte(&p->b, 't');
    pkl_put(p);
    wb_byte(&p->b, 'Q'); /* BINPERSID */
    pkl_int(p, 0);       /* storage offset */
    uint64_t shape[XC_CKPT_MAX_DIMS], stride[XC_CKPT_MAX_DIMS];
    uint64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        shape[d] = (uint64_t)t->shape[d];
        stride[d] = s;
        s *= shape[d] ? shape[d] : 1;
    }
    pkl_int_tuple(p, shape, t->ndim);
    pkl_int_tuple(p, stride, t->ndim);
    wb_byte(&p->b, 0x89); /* NEWFALSE: requires_grad */
    pkl_global(p, &p->m_odict, "collections", "OrderedDict");
    wb_byte(&p->b, ')');
    wb_byte(&p->b, 'R'); /* OrderedDict(): backward hooks */
    pkl_put(p);
    wb_byte(&p->b, 't');
    pkl_put(p);
    wb_byte(&p->b, 'R');
    pkl_put(p);
}

static xc_status build_pickle(const xc_ckpt_wtensor *t, size_t n, const size_t *sizes, wbuf *out) {
    pkl p;
    memset(&p, 0, sizeof p);
    p.m_odict = p.m_rebuild = p.m_storage_str = p.m_cpu_str = -1;
    for (int i = 0; i < XC_DTYPE_COUNT; i++) {
        p.m_stype[i] = -1;
    }
    wb_byte(&p.b, 0x80); /* PROTO 2 */
    wb_byte(&p.b, 2);
    pkl_global(&p, &p.m_odict, "collections", "OrderedDict");
    wb_byte(&p.b, ')');
    wb_byte(&p.b, 'R');
    pkl_put(&p);
    for (size_t start = 0; start < n; start += PKL_BATCH) {
        size_t cnt = n - start < PKL_BATCH ? n - start : PKL_BATCH;
        if (cnt > 1) {
            wb_byte(&p.b, '(');
        }
        for (size_t i = start; i < start + cnt; i++) {
            pkl_unicode(&p, t[i].name, NULL);
            pkl_tensor(&p, &t[i], i, sizes[i]);
        }
        wb_byte(&p.b, cnt > 1 ? 'u' : 's'); /* SETITEMS / SETITEM */
    }
    wb_byte(&p.b, '.'); /* STOP */
    if (p.b.oom) {
        xc_free(p.b.p);
        return xc_errf(XC_ERR_NOMEM, "out of memory building data.pkl");
    }
    *out = p.b;
    return XC_OK;
}

/* ---- zip (stored entries, data descriptors, 64-byte aligned data, zip64 end records: the
 * layout of PyTorch's PyTorchStreamWriter over miniz) ---- */

typedef struct zentry {
    char *name;
    uint32_t crc, size;
    uint64_t offset;
} zentry;

/* CRC-32 (zip's polynomial), slice-by-8: table[0] is the classic byte table, table[k][b] the CRC
 * of byte b followed by k zero bytes, so eight input bytes are folded per step (a 17 GB
 * checkpoint is checksummed at memory speed rather than ~0.5 GB/s). */
typedef uint32_t crc_tables[8][256];

static void crc_table(crc_tables t) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }
        t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int k = 1; k < 8; k++) {
            t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xffu];
        }
    }
}

static uint32_t crc32_calc(crc_tables t, const unsigned char *p, size_t n) {
    uint32_t c = 0xffffffffu;
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi =
            (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^ t[4][lo >> 24] ^
            t[3][hi & 0xffu] ^ t[2][(hi >> 8) & 0xffu] ^ t[1][(hi >> 16) & 0xffu] ^ t[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    for (size_t i = 0; i < n; i++) {
        c = t[0][(c ^ p[i]) & 0xffu] ^ (c >> 8);
    }
    return c ^ 0xffffffffu;
}

static crc_tables g_crc;

static void crc_init(void) {
    crc_table(g_crc);
}

static void le_store(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

/* Writes one stored entry: local header with the "FB" padding field, data, data descriptor. */
static xc_status zip_entry(wfile *w, crc_tables crct, zentry *e, const char *name,
                           const unsigned char *data, size_t n) {
    size_t name_len = strlen(name);
    if (n >= 0xffffffffu) {
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "%s: entry '%s' of %zu bytes: entries of 4 GiB and more (zip64 sizes) are "
                       "not written",
                       w->path, name, n);
    }
    e->name = xc_strdup(name);
    if (!e->name) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    e->crc = crc32_calc(crct, data, n);
    e->size = (uint32_t)n;
    e->offset = w->pos;
    uint64_t start = w->pos + ZIP_LOCAL_SZ + name_len + 4;
    size_t pad = (ZIP_ALIGN - start % ZIP_ALIGN) % ZIP_ALIGN;
    unsigned char h[ZIP_LOCAL_SZ + 4];
    memset(h, 0, sizeof h);
    le_store(h, 0x04034b50u, 4);
    le_store(h + 6, 0x0808, 2); /* flags: data descriptor, UTF-8 names */
    le_store(h + 26, name_len, 2);
    le_store(h + 28, 4 + pad, 2);
    wf_write(w, h, ZIP_LOCAL_SZ);
    wf_write(w, name, name_len);
    unsigned char fb[4] = {'F', 'B', (unsigned char)pad, (unsigned char)(pad >> 8)};
    wf_write(w, fb, 4);
    char zz[ZIP_ALIGN];
    memset(zz, 'Z', sizeof zz);
    wf_write(w, zz, pad);
    wf_write(w, data, n);
    unsigned char dd[16];
    le_store(dd, 0x08074b50u, 4);
    le_store(dd + 4, e->crc, 4);
    le_store(dd + 8, n, 4);
    le_store(dd + 12, n, 4);
    wf_write(w, dd, 16);
    return w->st;
}

/* Entries whose local header lies at 4 GiB or beyond (files over 4 GiB, like the 9.98 GB first
 * shard of the VL download) get the offset field saturated and a ZIP64 extended information extra
 * field (tag 1) holding the 64-bit offset, as APPNOTE 4.5.3 and miniz's reader expect. */
static void zip_finish(wfile *w, const zentry *e, size_t n) {
    uint64_t cd_off = w->pos;
    for (size_t i = 0; i < n; i++) {
        unsigned char h[ZIP_CDIR_SZ];
        memset(h, 0, sizeof h);
        size_t name_len = strlen(e[i].name);
        bool z64 = e[i].offset >= 0xffffffffu;
        le_store(h, 0x02014b50u, 4);
        le_store(h + 6, z64 ? 0x2d : 0, 2); /* version needed: 4.5 for ZIP64 */
        le_store(h + 8, 0x0808, 2);
        le_store(h + 16, e[i].crc, 4);
        le_store(h + 20, e[i].size, 4);
        le_store(h + 24, e[i].size, 4);
        le_store(h + 28, name_len, 2);
        le_store(h + 30, z64 ? 12 : 0, 2);
        le_store(h + 42, z64 ? 0xffffffffu : e[i].offset, 4);
        wf_write(w, h, ZIP_CDIR_SZ);
        wf_write(w, e[i].name, name_len);
        if (z64) {
            unsigned char x[12];
            le_store(x, 1, 2);
            le_store(x + 2, 8, 2);
            le_store(x + 4, e[i].offset, 8);
            wf_write(w, x, sizeof x);
        }
    }
    uint64_t cd_size = w->pos - cd_off;
    uint64_t z64_off = w->pos;
    unsigned char z[56 + 20 + 22];
    memset(z, 0, sizeof z);
    le_store(z, 0x06064b50u, 4); /* zip64 end of central directory record */
    le_store(z + 4, 44, 8);
    le_store(z + 12, 0x031e, 2);
    le_store(z + 14, 0x2d, 2);
    le_store(z + 24, n, 8);
    le_store(z + 32, n, 8);
    le_store(z + 40, cd_size, 8);
    le_store(z + 48, cd_off, 8);
    le_store(z + 56, 0x07064b50u, 4); /* zip64 locator */
    le_store(z + 64, z64_off, 8);
    le_store(z + 72, 1, 4);
    le_store(z + 76, 0x06054b50u, 4); /* end of central directory */
    le_store(z + 84, n, 2);
    le_store(z + 86, n, 2);
    le_store(z + 88, cd_size >= 0xffffffffu ? 0xffffffffu : cd_size, 4);
    le_store(z + 92, cd_off >= 0xffffffffu ? 0xffffffffu : cd_off, 4);
    wf_write(w, z, sizeof z);
}

/* torch's archive name: the file's base name up to its first '.' ("archive" if that is empty). */
static void archive_stem(const char *path, char *out, size_t cap) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t len = strcspn(base, ".");
    if (len == 0) {
        base = "archive";
        len = 7;
    }
    if (len >= cap) {
        len = cap - 1;
    }
    memcpy(out, base, len);
    out[len] = '\0';
}

static int cmp_key(const void *a, const void *b) {
    char x[32], y[32];
    snprintf(x, sizeof x, "%zu", *(const size_t *)a);
    snprintf(y, sizeof y, "%zu", *(const size_t *)b);
    return strcmp(x, y);
}

static xc_status write_torch_bin(wfile *w, const xc_ckpt_wtensor *t, size_t n, const size_t *sizes,
                                 xc_ckpt_fill_fn fill, void *user) {
    xc_status st;
    static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
    pthread_once(&crc_once, crc_init);
    uint32_t(*crct)[256] = g_crc;
    char stem[256], name[512];
    archive_stem(w->path, stem, sizeof stem);
    wbuf pk = {0};
    unsigned char *scratch = NULL;
    size_t scratch_cap = 0, ne = 0;
    zentry *e = xc_calloc(n + 2, sizeof *e);
    size_t *keys = xc_malloc((n ? n : 1) * sizeof *keys);
    if (!e || !keys) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory");
        goto out;
    }
    XC_TRY_GOTO(build_pickle(t, n, sizes, &pk), st, out);
    snprintf(name, sizeof name, "%s/data.pkl", stem);
    XC_TRY_GOTO(zip_entry(w, crct, &e[ne++], name, pk.p, pk.n), st, out);
    /* torch.save writes the storages in sorted order of their string keys: 0, 1, 10, 11, ... */
    for (size_t i = 0; i < n; i++) {
        keys[i] = i;
    }
    qsort(keys, n, sizeof *keys, cmp_key);
    for (size_t k = 0; k < n; k++) {
        size_t i = keys[k];
        const unsigned char *bytes = NULL;
        XC_TRY_GOTO(tensor_bytes(t, i, sizes[i], fill, user, &scratch, &scratch_cap, &bytes), st,
                    out);
        snprintf(name, sizeof name, "%s/data/%zu", stem, i);
        XC_TRY_GOTO(zip_entry(w, crct, &e[ne++], name, bytes, sizes[i]), st, out);
    }
    snprintf(name, sizeof name, "%s/version", stem);
    XC_TRY_GOTO(zip_entry(w, crct, &e[ne++], name, (const unsigned char *)"3\n", 2), st, out);
    zip_finish(w, e, ne);
    st = w->st;
out:
    for (size_t i = 0; e && i < ne; i++) {
        xc_free(e[i].name);
    }
    xc_free(e);
    xc_free(keys);
    xc_free(pk.p);
    xc_free(scratch);
    return st;
}

/* ---- public entry points ---- */

xc_status xc_ckpt_write(const char *path, xc_ckpt_format fmt, const xc_ckpt_wtensor *t, size_t n,
                        xc_ckpt_fill_fn fill, void *user) {
    if (!path || !path[0] || (n > 0 && !t)) {
        return xc_errf(XC_ERR_ARG, "xc_ckpt_write: no path or no tensors");
    }
    if (fmt != XC_CKPT_FORMAT_SAFETENSORS && fmt != XC_CKPT_FORMAT_TORCH_BIN) {
        return xc_errf(XC_ERR_ARG, "xc_ckpt_write: unknown format %d", (int)fmt);
    }
    size_t *sizes = xc_malloc((n ? n : 1) * sizeof *sizes);
    if (!sizes) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    wfile w;
    xc_status st = validate(t, n, fill, sizes);
    if (st == XC_OK) {
        st = wf_open(&w, path);
        if (st == XC_OK) {
            st = fmt == XC_CKPT_FORMAT_SAFETENSORS ? write_safetensors(&w, t, n, sizes, fill, user)
                                                   : write_torch_bin(&w, t, n, sizes, fill, user);
            st = wf_close(&w, st);
        }
    }
    xc_free(sizes);
    return st;
}

typedef struct idx_pair {
    const char *name, *file;
} idx_pair;

static int cmp_pair(const void *a, const void *b) {
    return strcmp(((const idx_pair *)a)->name, ((const idx_pair *)b)->name);
}

xc_status xc_ckpt_write_index(const char *path, const char *const *names,
                              const char *const *file_of, size_t n, uint64_t total_size) {
    idx_pair *p = xc_malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        p[i] = (idx_pair){names[i], file_of[i]};
    }
    qsort(p, n, sizeof *p, cmp_pair);
    xc_status st = XC_OK;
    wbuf b = {0};
    wb_fmt(&b, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n", total_size);
    wb_str(&b, "  \"weight_map\": {");
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && !strcmp(p[i - 1].name, p[i].name)) {
            st = xc_errf(XC_ERR_ARG, "duplicate tensor name '%s' in the index", p[i].name);
            goto out;
        }
        wb_str(&b, i ? ",\n    " : "\n    ");
        wb_json_str(&b, p[i].name);
        wb_str(&b, ": ");
        wb_json_str(&b, p[i].file);
    }
    wb_str(&b, n ? "\n  }\n}\n" : "}\n}\n");
    if (b.oom) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory");
        goto out;
    }
    wfile w;
    XC_TRY_GOTO(wf_open(&w, path), st, out);
    wf_write(&w, b.p, b.n);
    st = wf_close(&w, XC_OK);
out:
    xc_free(p);
    xc_free(b.p);
    return st;
}
