/* safetensors reader: parses the JSON header with cJSON and checks every tensor's dtype, shape
 * and byte range against the buffer before handing out pointers into it. */
#include "xc_safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"

static const struct {
    const char *name;
    xc_dtype dtype;
} st_dtypes[] = {
    {"F32", XC_DTYPE_F32}, {"F16", XC_DTYPE_F16},   {"BF16", XC_DTYPE_BF16}, {"F64", XC_DTYPE_F64},
    {"I64", XC_DTYPE_I64}, {"I32", XC_DTYPE_I32},   {"I16", XC_DTYPE_I16},   {"I8", XC_DTYPE_I8},
    {"U8", XC_DTYPE_U8},   {"BOOL", XC_DTYPE_BOOL},
};

/* A JSON number that is an integer in [0, 2^53] (exact in a double). */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) {
        return 0;
    }
    double d = j->valuedouble;
    if (!(d >= 0.0 && d <= 9007199254740992.0) || floor(d) != d) {
        return 0;
    }
    *out = (uint64_t)d;
    return 1;
}

/* Byte range of tensor i inside the data area, for the overlap check. */
typedef struct st_range {
    uint64_t begin, end;
    size_t i;
} st_range;

static int range_cmp(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) {
        return x->begin < y->begin ? -1 : 1;
    }
    return (x->end > y->end) - (x->end < y->end);
}

/* Fills v from one header entry {dtype, shape, data_offsets}; r gets its byte range. */
static xc_status parse_entry(const cJSON *e, const unsigned char *data, size_t data_size,
                             xc_tensor_view *v, st_range *r) {
    const char *name = v->name;
    if (!cJSON_IsObject(e)) {
        return xc_errf(XC_ERR_PROTO, "safetensors: entry '%s' is not an object", name);
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) {
        return xc_errf(XC_ERR_PROTO, "safetensors: tensor '%s' has no dtype string", name);
    }
    size_t k = 0, nd = sizeof st_dtypes / sizeof st_dtypes[0];
    while (k < nd && strcmp(st_dtypes[k].name, dt->valuestring) != 0) {
        k++;
    }
    if (k == nd) {
        return xc_errf(XC_ERR_UNSUPPORTED, "safetensors: tensor '%s' has unsupported dtype '%.32s'",
                       name, dt->valuestring);
    }
    v->dtype = st_dtypes[k].dtype;
    if (!cJSON_IsArray(shape)) {
        return xc_errf(XC_ERR_PROTO, "safetensors: tensor '%s' has no shape array", name);
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > XC_CKPT_MAX_DIMS) {
        return xc_errf(XC_ERR_PROTO, "safetensors: tensor '%s' has %d dims (at most %d)", name,
                       ndim, XC_CKPT_MAX_DIMS);
    }
    v->ndim = ndim;
    size_t numel = 1;
    const cJSON *d;
    int i = 0;
    cJSON_ArrayForEach(d, shape) {
        uint64_t x;
        if (!json_uint(d, &x) || x > INT64_MAX) {
            return xc_errf(XC_ERR_PROTO,
                           "safetensors: tensor '%s': shape[%d] is not a "
                           "non-negative integer",
                           name, i);
        }
        v->shape[i++] = (int64_t)x;
        if (xc_mul_overflow(numel, (size_t)x, &numel)) {
            return xc_errf(XC_ERR_PROTO, "safetensors: tensor '%s': element count overflows", name);
        }
    }
    uint64_t b, en;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &b) ||
        !json_uint(offs->child->next, &en)) {
        return xc_errf(XC_ERR_PROTO, "safetensors: tensor '%s': data_offsets must be [begin, end]",
                       name);
    }
    if (b > en || en > data_size) {
        return xc_errf(XC_ERR_PROTO,
                       "safetensors: tensor '%s': data_offsets [%llu, %llu] out of range (data "
                       "area has %zu bytes)",
                       name, (unsigned long long)b, (unsigned long long)en, data_size);
    }
    size_t nbytes;
    if (xc_mul_overflow(numel, xc_dtype_size(v->dtype), &nbytes) || nbytes != en - b) {
        return xc_errf(XC_ERR_PROTO,
                       "safetensors: tensor '%s': shape x %s needs %zu bytes but data_offsets "
                       "span %llu",
                       name, xc_dtype_name(v->dtype), numel * xc_dtype_size(v->dtype),
                       (unsigned long long)(en - b));
    }
    v->data = data + b;
    v->nbytes = nbytes;
    r->begin = b;
    r->end = en;
    return XC_OK;
}

static xc_status parse_header(const cJSON *root, const unsigned char *data, size_t data_size,
                              xc_arena *arena, xc_tensor_view **out, size_t *n) {
    size_t cnt = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        cnt += strcmp(e->string, "__metadata__") != 0;
    }
    xc_tensor_view *vs = xc_arena_calloc(arena, cnt ? cnt : 1, sizeof *vs);
    st_range *rs = xc_malloc((cnt ? cnt : 1) * sizeof *rs);
    xc_status st = XC_OK;
    if (!vs || !rs) {
        st = XC_ERR_NOMEM;
        goto out;
    }
    size_t i = 0;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            continue;
        }
        vs[i].name = xc_arena_strndup(arena, e->string, strlen(e->string));
        if (!vs[i].name) {
            st = XC_ERR_NOMEM;
            goto out;
        }
        XC_TRY_GOTO(parse_entry(e, data, data_size, &vs[i], &rs[i]), st, out);
        rs[i].i = i;
        i++;
    }
    qsort(rs, cnt, sizeof *rs, range_cmp);
    for (i = 1; i < cnt; i++) {
        if (rs[i].begin < rs[i - 1].end) {
            st = xc_errf(XC_ERR_PROTO, "safetensors: tensors '%s' and '%s' overlap",
                         vs[rs[i - 1].i].name, vs[rs[i].i].name);
            goto out;
        }
    }
    *out = vs;
    *n = cnt;
out:
    xc_free(rs);
    return st;
}

xc_status xc_safetensors_parse(const unsigned char *buf, size_t size, xc_arena *arena,
                               xc_tensor_view **out, size_t *n) {
    if (size < 8) {
        return xc_errf(XC_ERR_PROTO,
                       "safetensors: file too short (%zu bytes) for the header "
                       "length",
                       size);
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) {
        hlen |= (uint64_t)buf[i] << (8 * i);
    }
    if (hlen > XC_SAFETENSORS_MAX_HEADER || hlen > size - 8) {
        return xc_errf(XC_ERR_PROTO,
                       "safetensors: header length %llu is out of range (file has %zu bytes, "
                       "limit %zu; truncated or not a safetensors file)",
                       (unsigned long long)hlen, size, XC_SAFETENSORS_MAX_HEADER);
    }
    const char *json = (const char *)buf + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &end, 0);
    if (!root) {
        return xc_errf(XC_ERR_PROTO,
                       "safetensors: header is not valid JSON (error near header "
                       "byte %zu)",
                       end ? (size_t)(end - json) : 0);
    }
    xc_status st = XC_OK;
    for (const char *p = end; p < json + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = xc_errf(XC_ERR_PROTO,
                         "safetensors: trailing bytes after the JSON header (at "
                         "header byte %zu)",
                         (size_t)(p - json));
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = xc_errf(XC_ERR_PROTO, "safetensors: header is not a JSON object");
        goto out;
    }
    st = parse_header(root, buf + 8 + hlen, size - 8 - (size_t)hlen, arena, out, n);
out:
    cJSON_Delete(root);
    return st;
}
