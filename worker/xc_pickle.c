/* Restricted unpickler: a small stack machine over the protocol-2 opcodes torch.save emits for a
 * state dict. Values are immutable records in an arena (dicts only grow), nothing is ever called:
 * REDUCE on OrderedDict makes an empty dict, REDUCE on _rebuild_tensor_v2 makes a tensor record,
 * and every other global is refused by name. Work and memory are linear in the input size, and no
 * function recurses over values, so hostile nesting cannot exhaust the C stack. */
#include "xc_pickle.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "xc_mem.h"

/* ---- values ---- */

typedef enum pv_kind {
    PV_NONE,
    PV_BOOL,
    PV_INT,
    PV_STR,
    PV_TUPLE,
    PV_DICT,
    PV_GLOBAL,
    PV_STORAGE,
    PV_TENSOR,
} pv_kind;

static const char *const pv_kind_names[] = {"None", "bool",   "int",     "str",   "tuple",
                                            "dict", "global", "storage", "tensor"};

typedef enum pv_global {
    G_ORDERED_DICT,   /* collections.OrderedDict: callable with () */
    G_REBUILD_TENSOR, /* torch._utils._rebuild_tensor_v2: callable */
    G_STORAGE_TYPE,   /* torch.<X>Storage: type tag inside a persistent id only */
} pv_global;

typedef struct pv pv;

typedef struct pv_pair {
    pv *k;
    pv *v;
} pv_pair;

struct pv {
    pv_kind kind;

    union {
        int64_t i; /* PV_INT, PV_BOOL */

        struct {
            const char *s; /* NUL-terminated, no embedded NUL */
            size_t len;
        } str;

        struct {
            pv **items; /* (n) */
            size_t n;
        } tup;

        struct {
            pv_pair *pairs; /* (n) of (cap), arena-allocated */
            size_t n, cap;
        } dict;

        struct {
            pv_global which;
            xc_dtype dtype; /* G_STORAGE_TYPE only */
            const char *name;
        } glob;

        struct {
            const char *key;
            xc_dtype dtype;
            int64_t numel;
        } storage;

        xc_pickle_tensor *tensor; /* name unset */
    } u;
};

/* The torch storage classes accepted as type tags, and the element type each stands for. */
static const struct {
    const char *name;
    xc_dtype dtype;
} storage_types[] = {
    {"BFloat16Storage", XC_DTYPE_BF16}, {"HalfStorage", XC_DTYPE_F16},
    {"FloatStorage", XC_DTYPE_F32},     {"DoubleStorage", XC_DTYPE_F64},
    {"LongStorage", XC_DTYPE_I64},      {"IntStorage", XC_DTYPE_I32},
    {"ShortStorage", XC_DTYPE_I16},     {"CharStorage", XC_DTYPE_I8},
    {"ByteStorage", XC_DTYPE_U8},       {"BoolStorage", XC_DTYPE_BOOL},
};

/* ---- machine ---- */

typedef struct up {
    const unsigned char *buf; /* (size) pickle bytes */
    size_t size;
    size_t pos;    /* next byte to read */
    size_t op_pos; /* offset of the opcode being executed (for messages) */
    xc_arena *arena;
    pv **stack; /* (sp) of (stack_cap), xc_malloc'd */
    size_t sp, stack_cap;
    size_t marks[XC_PICKLE_MAX_MARKS]; /* stack heights at each open MARK */
    int n_marks;
    pv **memo; /* (memo_cap), NULL = unset, xc_malloc'd */
    size_t memo_cap;
    size_t n_puts; /* PUT opcodes executed so far */
} up;

/* XC_ERR_PROTO "<message> (pickle byte N)" for the current opcode. */
__attribute__((format(printf, 2, 3))) static xc_status perr(const up *u, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return xc_errf(XC_ERR_PROTO, "%s (pickle byte %zu)", msg, u->op_pos);
}

static xc_status need(up *u, size_t n, const char *what) {
    if (u->size - u->pos < n) {
        return perr(u, "pickle truncated: %s needs %zu more bytes, %zu left", what, n,
                    u->size - u->pos);
    }
    return XC_OK;
}

static pv *pv_new(up *u, pv_kind kind) {
    pv *v = xc_arena_alloc(u->arena, sizeof *v);
    if (v) {
        memset(v, 0, sizeof *v);
        v->kind = kind;
    }
    return v;
}

static xc_status push(up *u, pv *v) {
    if (!v) {
        return XC_ERR_NOMEM;
    }
    if (u->sp == u->stack_cap) {
        if (u->stack_cap >= XC_PICKLE_MAX_STACK) {
            return perr(u, "pickle stack exceeds %zu values", XC_PICKLE_MAX_STACK);
        }
        size_t cap = u->stack_cap ? u->stack_cap * 2 : 64;
        pv **s = xc_realloc(u->stack, cap * sizeof *s);
        if (!s) {
            return XC_ERR_NOMEM;
        }
        u->stack = s;
        u->stack_cap = cap;
    }
    u->stack[u->sp++] = v;
    return XC_OK;
}

/* The lowest stack index usable by the current opcode: values under an open MARK belong to an
 * outer construct and must not be popped by a plain opcode. */
static size_t floor_sp(const up *u) {
    return u->n_marks ? u->marks[u->n_marks - 1] : 0;
}

static xc_status pop(up *u, pv **out, const char *op) {
    if (u->sp <= floor_sp(u)) {
        return perr(u, "pickle stack underflow in %s", op);
    }
    *out = u->stack[--u->sp];
    return XC_OK;
}

static xc_status top(up *u, pv **out, const char *op) {
    if (u->sp <= floor_sp(u)) {
        return perr(u, "pickle stack underflow in %s", op);
    }
    *out = u->stack[u->sp - 1];
    return XC_OK;
}

/* Pops the values above the innermost MARK and the MARK: *items (n) points at them on the stack
 * (valid until the next push). */
static xc_status pop_mark(up *u, pv ***items, size_t *n, const char *op) {
    if (u->n_marks == 0) {
        return perr(u, "pickle %s without a MARK", op);
    }
    size_t m = u->marks[--u->n_marks];
    *n = u->sp - m;
    *items = *n ? u->stack + m : NULL;
    u->sp = m;
    return XC_OK;
}

static xc_status make_tuple(up *u, pv **items, size_t n) {
    pv *t = pv_new(u, PV_TUPLE);
    if (!t) {
        return XC_ERR_NOMEM;
    }
    if (n > 0) {
        t->u.tup.items = xc_arena_alloc(u->arena, n * sizeof *items);
        if (!t->u.tup.items) {
            return XC_ERR_NOMEM;
        }
        memcpy(t->u.tup.items, items, n * sizeof *items);
    }
    t->u.tup.n = n;
    return push(u, t);
}

static xc_status dict_add(up *u, pv *d, pv *k, pv *v) {
    if (d->u.dict.n == d->u.dict.cap) {
        size_t cap = d->u.dict.cap ? d->u.dict.cap * 2 : 8;
        pv_pair *p = xc_arena_alloc(u->arena, cap * sizeof *p);
        if (!p) {
            return XC_ERR_NOMEM;
        }
        if (d->u.dict.n) {
            memcpy(p, d->u.dict.pairs, d->u.dict.n * sizeof *p);
        }
        d->u.dict.pairs = p;
        d->u.dict.cap = cap;
    }
    d->u.dict.pairs[d->u.dict.n].k = k;
    d->u.dict.pairs[d->u.dict.n].v = v;
    d->u.dict.n++;
    return XC_OK;
}

/* ---- opcodes with arguments ---- */

/* Copies at most 80 bytes of s for a message, replacing unprintable bytes by '?'. */
static void printable(char *dst, size_t cap, const char *s, size_t n) {
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[j] = '\0';
}

/* Reads "text\n" (the line syntax of GLOBAL) without the newline. */
static xc_status read_line(up *u, const char **s, size_t *n) {
    const unsigned char *p = u->buf + u->pos;
    size_t left = u->size - u->pos;
    const unsigned char *nl = memchr(p, '\n', left < 256 ? left : 256);
    if (!nl) {
        return perr(u, "pickle GLOBAL: no newline within 256 bytes (truncated or malformed)");
    }
    *s = (const char *)p;
    *n = (size_t)(nl - p);
    u->pos += *n + 1;
    return XC_OK;
}

static int eq(const char *s, size_t n, const char *lit) {
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static xc_status op_global(up *u) {
    const char *mod = NULL, *name = NULL;
    size_t nm = 0, nn = 0;
    XC_TRY(read_line(u, &mod, &nm));
    XC_TRY(read_line(u, &name, &nn));
    pv *g = pv_new(u, PV_GLOBAL);
    if (!g) {
        return XC_ERR_NOMEM;
    }
    if (eq(mod, nm, "collections") && eq(name, nn, "OrderedDict")) {
        g->u.glob.which = G_ORDERED_DICT;
        g->u.glob.name = "collections.OrderedDict";
        return push(u, g);
    }
    if (eq(mod, nm, "torch._utils") && eq(name, nn, "_rebuild_tensor_v2")) {
        g->u.glob.which = G_REBUILD_TENSOR;
        g->u.glob.name = "torch._utils._rebuild_tensor_v2";
        return push(u, g);
    }
    if (eq(mod, nm, "torch")) {
        for (size_t i = 0; i < sizeof storage_types / sizeof storage_types[0]; i++) {
            if (eq(name, nn, storage_types[i].name)) {
                g->u.glob.which = G_STORAGE_TYPE;
                g->u.glob.dtype = storage_types[i].dtype;
                g->u.glob.name = storage_types[i].name;
                return push(u, g);
            }
        }
    }
    char pm[96], pn[96];
    printable(pm, sizeof pm, mod, nm);
    printable(pn, sizeof pn, name, nn);
    if (eq(mod, nm, "torch") && nn > 7 && memcmp(name + nn - 7, "Storage", 7) == 0) {
        // A storage class of a dtype with no xc_dtype (complex, quantized, fp8...): valid, but
        // not something xcpipe can hold.
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "pickle storage type 'torch.%s' is not supported (supported: bf16, f16, "
                       "f32, f64, i64, i32, i16, i8, u8, bool) (pickle byte %zu)",
                       pn, u->op_pos);
    }
    return perr(u,
                "pickle global '%s.%s' is not allowed (a state dict may use only "
                "collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.*Storage)",
                pm, pn);
}

static xc_status op_binunicode(up *u) {
    XC_TRY(need(u, 4, "BINUNICODE"));
    const unsigned char *p = u->buf + u->pos;
    size_t n = (size_t)p[0] | ((size_t)p[1] << 8) | ((size_t)p[2] << 16) | ((size_t)p[3] << 24);
    u->pos += 4;
    XC_TRY(need(u, n, "BINUNICODE"));
    if (memchr(u->buf + u->pos, 0, n)) {
        return perr(u, "pickle string contains a NUL byte");
    }
    pv *v = pv_new(u, PV_STR);
    if (!v) {
        return XC_ERR_NOMEM;
    }
    char *s = xc_arena_strndup(u->arena, (const char *)u->buf + u->pos, n);
    if (!s) {
        return XC_ERR_NOMEM;
    }
    v->u.str.s = s;
    v->u.str.len = n;
    u->pos += n;
    return push(u, v);
}

static xc_status push_int(up *u, pv_kind kind, int64_t i) {
    pv *v = pv_new(u, kind);
    if (!v) {
        return XC_ERR_NOMEM;
    }
    v->u.i = i;
    return push(u, v);
}

/* BININT1 (1 byte unsigned), BININT2 (2 bytes unsigned), BININT (4 bytes signed). */
static xc_status op_binint(up *u, size_t n) {
    XC_TRY(need(u, n, "BININT"));
    const unsigned char *p = u->buf + u->pos;
    uint32_t x = 0;
    for (size_t i = 0; i < n; i++) {
        x |= (uint32_t)p[i] << (8 * i);
    }
    u->pos += n;
    return push_int(u, PV_INT, n == 4 ? (int64_t)(int32_t)x : (int64_t)x);
}

/* LONG1: a length byte, then that many bytes of little-endian two's complement. */
static xc_status op_long1(up *u) {
    XC_TRY(need(u, 1, "LONG1"));
    size_t n = u->buf[u->pos++];
    if (n > 8) {
        return perr(u, "pickle LONG1 of %zu bytes does not fit in 64 bits", n);
    }
    XC_TRY(need(u, n, "LONG1"));
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        x |= (uint64_t)u->buf[u->pos + i] << (8 * i);
    }
    if (n > 0 && n < 8 && (u->buf[u->pos + n - 1] & 0x80)) {
        x |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    }
    u->pos += n;
    int64_t v;
    memcpy(&v, &x, sizeof v);
    return push_int(u, PV_INT, v);
}

/* Reads a memo slot number. A PUT may name at most slot n_puts: Python's pickler numbers slots
 * 0, 1, 2... in order, and the bound keeps the memo table linear in the number of opcodes. */
static xc_status memo_index(up *u, size_t width, size_t limit, size_t *idx) {
    XC_TRY(need(u, width, "memo index"));
    const unsigned char *p = u->buf + u->pos;
    size_t i = p[0];
    if (width == 4) {
        i |= ((size_t)p[1] << 8) | ((size_t)p[2] << 16) | ((size_t)p[3] << 24);
    }
    u->pos += width;
    if (i > limit) {
        return perr(u, "pickle memo index %zu is out of range (%zu slots assigned so far)", i,
                    u->n_puts);
    }
    *idx = i;
    return XC_OK;
}

static xc_status op_put(up *u, size_t width) {
    size_t i = 0;
    XC_TRY(memo_index(u, width, u->n_puts, &i));
    pv *v = NULL;
    XC_TRY(top(u, &v, "BINPUT"));
    u->n_puts++;
    if (i >= u->memo_cap) {
        size_t cap = u->memo_cap ? u->memo_cap : 64;
        while (cap <= i) {
            cap *= 2;
        }
        pv **m = xc_realloc(u->memo, cap * sizeof *m);
        if (!m) {
            return XC_ERR_NOMEM;
        }
        memset(m + u->memo_cap, 0, (cap - u->memo_cap) * sizeof *m);
        u->memo = m;
        u->memo_cap = cap;
    }
    u->memo[i] = v;
    return XC_OK;
}

static xc_status op_get(up *u, size_t width) {
    size_t i = 0;
    XC_TRY(memo_index(u, width, SIZE_MAX, &i));
    if (i >= u->memo_cap || !u->memo[i]) {
        return perr(u, "pickle BINGET of memo slot %zu that was never set", i);
    }
    return push(u, u->memo[i]);
}

/* ---- REDUCE, BINPERSID, BUILD ---- */

static xc_status get_int(up *u, const pv *v, const char *what, int64_t *out) {
    if (v->kind != PV_INT || v->u.i < 0) {
        return perr(u, "_rebuild_tensor_v2: %s must be a non-negative int, got %s", what,
                    v->kind == PV_INT ? "a negative int" : pv_kind_names[v->kind]);
    }
    *out = v->u.i;
    return XC_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
 * [, metadata]) -> a tensor record. Only the layout is kept; requires_grad and hooks are dropped.
 */
static xc_status rebuild_tensor(up *u, const pv *args) {
    size_t n = args->u.tup.n;
    pv **a = args->u.tup.items;
    if (n != 6 && n != 7) {
        return perr(u, "_rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", n);
    }
    if (a[0]->kind != PV_STORAGE) {
        return perr(u, "_rebuild_tensor_v2: argument 1 must be a storage, got %s",
                    pv_kind_names[a[0]->kind]);
    }
    if (a[2]->kind != PV_TUPLE || a[3]->kind != PV_TUPLE) {
        return perr(u, "_rebuild_tensor_v2: size and stride must be tuples");
    }
    if (a[2]->u.tup.n != a[3]->u.tup.n) {
        return perr(u, "_rebuild_tensor_v2: size has %zu dims but stride has %zu", a[2]->u.tup.n,
                    a[3]->u.tup.n);
    }
    if (a[2]->u.tup.n > XC_CKPT_MAX_DIMS) {
        return perr(u, "_rebuild_tensor_v2: %zu dims (at most %d supported)", a[2]->u.tup.n,
                    XC_CKPT_MAX_DIMS);
    }
    if (a[4]->kind != PV_BOOL || a[5]->kind != PV_DICT ||
        (n == 7 && a[6]->kind != PV_DICT && a[6]->kind != PV_NONE)) {
        return perr(u, "_rebuild_tensor_v2: requires_grad must be a bool and backward_hooks a "
                       "dict");
    }
    xc_pickle_tensor *t = xc_arena_calloc(u->arena, 1, sizeof *t);
    pv *v = pv_new(u, PV_TENSOR);
    if (!t || !v) {
        return XC_ERR_NOMEM;
    }
    t->storage_key = a[0]->u.storage.key;
    t->dtype = a[0]->u.storage.dtype;
    t->storage_numel = a[0]->u.storage.numel;
    XC_TRY(get_int(u, a[1], "storage_offset", &t->offset));
    t->ndim = (int)a[2]->u.tup.n;
    for (int d = 0; d < t->ndim; d++) {
        XC_TRY(get_int(u, a[2]->u.tup.items[d], "a size", &t->shape[d]));
        XC_TRY(get_int(u, a[3]->u.tup.items[d], "a stride", &t->stride[d]));
    }
    v->u.tensor = t;
    return push(u, v);
}

static xc_status op_reduce(up *u) {
    pv *args = NULL, *fn = NULL;
    XC_TRY(pop(u, &args, "REDUCE"));
    XC_TRY(pop(u, &fn, "REDUCE"));
    if (fn->kind != PV_GLOBAL) {
        return perr(u, "pickle REDUCE target is not a callable (got %s)", pv_kind_names[fn->kind]);
    }
    if (args->kind != PV_TUPLE) {
        return perr(u, "pickle REDUCE arguments are not a tuple (got %s)",
                    pv_kind_names[args->kind]);
    }
    switch (fn->u.glob.which) {
    case G_ORDERED_DICT:
        if (args->u.tup.n != 0) {
            return perr(u, "collections.OrderedDict called with %zu arguments (expected none)",
                        args->u.tup.n);
        }
        return push(u, pv_new(u, PV_DICT));
    case G_REBUILD_TENSOR:
        return rebuild_tensor(u, args);
    default:
        return perr(u, "torch.%s may only appear as a type tag in a persistent id, not be called",
                    fn->u.glob.name);
    }
}

/* BINPERSID: ('storage', storage_type, key, location, numel) -> a storage reference. */
static xc_status op_binpersid(up *u) {
    pv *pid = NULL;
    XC_TRY(pop(u, &pid, "BINPERSID"));
    pv **a = pid->kind == PV_TUPLE ? pid->u.tup.items : NULL;
    if (!a || pid->u.tup.n != 5 || a[0]->kind != PV_STR || strcmp(a[0]->u.str.s, "storage") != 0) {
        return perr(u, "pickle persistent id is not ('storage', type, key, location, numel)");
    }
    if (a[1]->kind != PV_GLOBAL || a[1]->u.glob.which != G_STORAGE_TYPE) {
        return perr(u, "pickle persistent id: storage type must be a torch.*Storage class");
    }
    if (a[2]->kind != PV_STR || a[3]->kind != PV_STR || a[4]->kind != PV_INT || a[4]->u.i < 0) {
        return perr(u, "pickle persistent id: key and location must be str, numel a "
                       "non-negative int");
    }
    pv *s = pv_new(u, PV_STORAGE);
    if (!s) {
        return XC_ERR_NOMEM;
    }
    s->u.storage.key = a[2]->u.str.s;
    s->u.storage.dtype = a[1]->u.glob.dtype;
    s->u.storage.numel = a[4]->u.i;
    return push(u, s);
}

static xc_status op_setitems(up *u, int single) {
    pv **items = NULL;
    size_t n = 0;
    pv *kv[2] = {NULL, NULL};
    if (single) {
        XC_TRY(pop(u, &kv[1], "SETITEM"));
        XC_TRY(pop(u, &kv[0], "SETITEM"));
        items = kv;
        n = 2;
    } else {
        XC_TRY(pop_mark(u, &items, &n, "SETITEMS"));
        if (n % 2) {
            return perr(u, "pickle SETITEMS with an odd number (%zu) of values", n);
        }
    }
    pv *d = NULL;
    XC_TRY(top(u, &d, single ? "SETITEM" : "SETITEMS"));
    if (d->kind != PV_DICT) {
        return perr(u, "pickle SETITEM(S) target is not a dict (got %s)", pv_kind_names[d->kind]);
    }
    // items still point into the stack above sp: nothing is pushed before they are consumed.
    for (size_t i = 0; i < n; i += 2) {
        XC_TRY(dict_add(u, d, items[i], items[i + 1]));
    }
    return XC_OK;
}

/* BUILD sets attributes from a state; state dicts carry `_metadata` this way. Dropped. */
static xc_status op_build(up *u) {
    pv *state = NULL, *obj = NULL;
    XC_TRY(pop(u, &state, "BUILD"));
    XC_TRY(top(u, &obj, "BUILD"));
    if (obj->kind != PV_DICT) {
        return perr(u, "pickle BUILD target is not a dict (got %s)", pv_kind_names[obj->kind]);
    }
    return XC_OK;
}

/* ---- main loop ---- */

static xc_status step(up *u, int *stop) {
    u->op_pos = u->pos;
    if (u->pos >= u->size) {
        return perr(u, "pickle truncated: no STOP opcode");
    }
    unsigned char op = u->buf[u->pos++];
    pv **items = NULL;
    size_t n = 0;
    pv *a = NULL, *b = NULL, *c = NULL;
    switch (op) {
    case 0x80: /* PROTO */
        XC_TRY(need(u, 1, "PROTO"));
        if (u->buf[u->pos] > 2) {
            return xc_errf(XC_ERR_UNSUPPORTED,
                           "pickle protocol %u is not supported (torch.save writes protocol 2)",
                           u->buf[u->pos]);
        }
        u->pos++;
        return XC_OK;
    case '.': /* STOP */
        *stop = 1;
        return XC_OK;
    case '(': /* MARK */
        if (u->n_marks == XC_PICKLE_MAX_MARKS) {
            return perr(u, "pickle MARKs nested deeper than %d", XC_PICKLE_MAX_MARKS);
        }
        u->marks[u->n_marks++] = u->sp;
        return XC_OK;
    case 'c': /* GLOBAL */
        return op_global(u);
    case 'X': /* BINUNICODE */
        return op_binunicode(u);
    case 'K': /* BININT1 */
        return op_binint(u, 1);
    case 'M': /* BININT2 */
        return op_binint(u, 2);
    case 'J': /* BININT */
        return op_binint(u, 4);
    case 0x8a: /* LONG1 */
        return op_long1(u);
    case 'N': /* NONE */
        return push(u, pv_new(u, PV_NONE));
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
        return push_int(u, PV_BOOL, op == 0x88);
    case 'q': /* BINPUT */
        return op_put(u, 1);
    case 'r': /* LONG_BINPUT */
        return op_put(u, 4);
    case 'h': /* BINGET */
        return op_get(u, 1);
    case 'j': /* LONG_BINGET */
        return op_get(u, 4);
    case ')': /* EMPTY_TUPLE */
        return make_tuple(u, NULL, 0);
    case 't': /* TUPLE */
        XC_TRY(pop_mark(u, &items, &n, "TUPLE"));
        return make_tuple(u, items, n);
    case 0x85: /* TUPLE1 */
        XC_TRY(pop(u, &a, "TUPLE1"));
        return make_tuple(u, &a, 1);
    case 0x86: /* TUPLE2 */
        XC_TRY(pop(u, &b, "TUPLE2"));
        XC_TRY(pop(u, &a, "TUPLE2"));
        return make_tuple(u, (pv *[]){a, b}, 2);
    case 0x87: /* TUPLE3 */
        XC_TRY(pop(u, &c, "TUPLE3"));
        XC_TRY(pop(u, &b, "TUPLE3"));
        XC_TRY(pop(u, &a, "TUPLE3"));
        return make_tuple(u, (pv *[]){a, b, c}, 3);
    case '}': /* EMPTY_DICT */
        return push(u, pv_new(u, PV_DICT));
    case 's': /* SETITEM */
        return op_setitems(u, 1);
    case 'u': /* SETITEMS */
        return op_setitems(u, 0);
    case 'R': /* REDUCE */
        return op_reduce(u);
    case 'Q': /* BINPERSID */
        return op_binpersid(u);
    case 'b': /* BUILD */
        return op_build(u);
    default:
        if (op >= 0x20 && op < 0x7f) {
            return perr(u, "unsupported pickle opcode 0x%02x ('%c')", op, op);
        }
        return perr(u, "unsupported pickle opcode 0x%02x", op);
    }
}

/* The result: the dict on top of the stack at STOP, every key a str and every value a tensor. */
static xc_status collect(up *u, xc_pickle_tensor **out, size_t *n) {
    pv *d = NULL;
    XC_TRY(top(u, &d, "STOP"));
    if (d->kind != PV_DICT) {
        return perr(u, "pickle result is not a state dict (got %s)", pv_kind_names[d->kind]);
    }
    size_t cnt = d->u.dict.n;
    xc_pickle_tensor *ts = xc_arena_calloc(u->arena, cnt ? cnt : 1, sizeof *ts);
    if (!ts) {
        return XC_ERR_NOMEM;
    }
    for (size_t i = 0; i < cnt; i++) {
        const pv_pair *p = &d->u.dict.pairs[i];
        if (p->k->kind != PV_STR) {
            return perr(u, "state dict key %zu is not a str (got %s)", i,
                        pv_kind_names[p->k->kind]);
        }
        if (p->v->kind != PV_TENSOR) {
            char name[96];
            printable(name, sizeof name, p->k->u.str.s, p->k->u.str.len);
            return perr(u, "state dict entry '%s' is not a tensor (got %s)", name,
                        pv_kind_names[p->v->kind]);
        }
        ts[i] = *p->v->u.tensor;
        ts[i].name = p->k->u.str.s;
    }
    *out = ts;
    *n = cnt;
    return XC_OK;
}

xc_status xc_pickle_load_state_dict(const unsigned char *buf, size_t size, xc_arena *arena,
                                    xc_pickle_tensor **out, size_t *n) {
    if (size > XC_PICKLE_MAX_SIZE) {
        return xc_errf(XC_ERR_PROTO, "pickle of %zu bytes exceeds the limit of %zu", size,
                       XC_PICKLE_MAX_SIZE);
    }
    up u = {.buf = buf, .size = size, .arena = arena};
    xc_status st = XC_OK;
    int stop = 0;
    while (!stop) {
        XC_TRY_GOTO(step(&u, &stop), st, out);
    }
    st = collect(&u, out, n);
out:
    xc_free(u.stack);
    xc_free(u.memo);
    return st;
}
