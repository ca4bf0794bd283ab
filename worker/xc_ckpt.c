/* Checkpoint reader: finds the checkpoint files, reads a sharded index, maps each shard only when
 * one of its tensors is first asked for, and serves tensors by name as views into the mapping. */
#include "xc_ckpt.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "xc_arena.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_pickle.h"
#include "xc_safetensors.h"
#include "xc_zip.h"

#define INDEX_MAX_BYTES ((size_t)64 << 20)

/* One checkpoint file. Its tensor table exists only while it is loaded (mapped and parsed). */
typedef struct ck_shard {
    char *path; /* xc_malloc'd; NULL when the bytes are the caller's (open_mem) */
    int loaded;
    xc_mmap map;              /* the mapping when path != NULL */
    const unsigned char *buf; /* (size) the file's bytes */
    size_t size;
    xc_arena *arena;         /* tensor table and names of this shard */
    xc_tensor_view *tensors; /* (n) sorted by name */
    size_t n;
} ck_shard;

/* One tensor name and the shard that holds it. */
typedef struct ck_entry {
    const char *name;
    int shard;
} ck_entry;

struct xc_ckpt {
    xc_ckpt_format format;
    ck_shard *shards; /* (n_shards) */
    int n_shards;
    ck_entry *entries; /* (n) sorted by name */
    size_t n;
    xc_arena *arena; /* index names */
    size_t mapped;   /* bytes of the loaded shards */
};

/* Prefixes the current error detail with a file name ("path: detail"). */
static xc_status with_path(xc_status st, const char *path) {
    if (st == XC_OK || st == XC_ERR_NOMEM || !path) {
        return st;
    }
    char msg[512];
    snprintf(msg, sizeof msg, "%s", xc_err_last());
    return xc_errf(st, "%s: %s", path, msg);
}

static int view_cmp(const void *a, const void *b) {
    return strcmp(((const xc_tensor_view *)a)->name, ((const xc_tensor_view *)b)->name);
}

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const ck_entry *)a)->name, ((const ck_entry *)b)->name);
}

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* ---- PyTorch zip (.bin) ---- */

/* Finds the one "<archive>/data.pkl" entry; *prefix_len covers "<archive>/". */
static xc_status find_pickle(const xc_zip *z, const xc_zip_entry **out, size_t *prefix_len) {
    const xc_zip_entry *found = NULL;
    for (size_t i = 0; i < xc_zip_count(z); i++) {
        const xc_zip_entry *e = xc_zip_entry_at(z, i);
        const char *slash = memchr(e->name, '/', e->name_len);
        if (slash && e->name_len - (size_t)(slash - e->name) == 9 &&
            memcmp(slash, "/data.pkl", 9) == 0) {
            if (found) {
                return xc_errf(XC_ERR_PROTO, "torch zip holds more than one data.pkl");
            }
            found = e;
            *prefix_len = (size_t)(slash - e->name) + 1;
        }
    }
    if (!found) {
        return xc_errf(XC_ERR_PROTO, "torch zip has no <archive>/data.pkl entry (not a file "
                                     "written by torch.save)");
    }
    *out = found;
    return XC_OK;
}

/* Turns one unpickled tensor into a view: finds its storage entry, checks the storage size, the
 * element range and that the strides are dense row-major. */
static xc_status torch_view(const xc_zip *z, const char *prefix, size_t prefix_len,
                            const xc_pickle_tensor *t, xc_tensor_view *v) {
    char ename[512];
    int len = snprintf(ename, sizeof ename, "%.*sdata/%s", (int)prefix_len, prefix, t->storage_key);
    if (len < 0 || (size_t)len >= sizeof ename) {
        return xc_errf(XC_ERR_PROTO, "tensor '%s': storage key is too long", t->name);
    }
    const xc_zip_entry *e = NULL;
    xc_status st = xc_zip_find(z, ename, (size_t)len, &e);
    if (st != XC_OK) {
        return xc_errf(XC_ERR_PROTO, "tensor '%s': its storage entry '%s' is missing from the zip",
                       t->name, ename);
    }
    const unsigned char *data = NULL;
    XC_TRY(xc_zip_entry_data(z, e, &data));
    size_t es = xc_dtype_size(t->dtype), sbytes, numel = 1;
    if (xc_mul_overflow((size_t)t->storage_numel, es, &sbytes) || sbytes != e->size) {
        return xc_errf(XC_ERR_PROTO,
                       "tensor '%s': storage '%s' declares %lld %s elements but its zip entry has "
                       "%llu bytes",
                       t->name, t->storage_key, (long long)t->storage_numel,
                       xc_dtype_name(t->dtype), (unsigned long long)e->size);
    }
    // Dense row-major: stride[d] == prod(shape[d+1:]) for every dim longer than 1 (torch's own
    // is_contiguous rule; a size-1 dim's stride is never used to address anything).
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != (int64_t)numel) {
            return xc_errf(XC_ERR_PROTO,
                           "tensor '%s' is not contiguous (dim %d has stride %lld, row-major needs "
                           "%zu); save it with .contiguous()",
                           t->name, d, (long long)t->stride[d], numel);
        }
        if (xc_mul_overflow(numel, (size_t)t->shape[d], &numel)) {
            return xc_errf(XC_ERR_PROTO, "tensor '%s': element count overflows", t->name);
        }
    }
    if (numel > 0 && ((uint64_t)t->offset > (uint64_t)t->storage_numel ||
                      numel > (size_t)(t->storage_numel - t->offset))) {
        return xc_errf(XC_ERR_PROTO,
                       "tensor '%s': elements [%lld, +%zu) exceed its storage '%s' of %lld "
                       "elements",
                       t->name, (long long)t->offset, numel, t->storage_key,
                       (long long)t->storage_numel);
    }
    v->dtype = t->dtype;
    v->ndim = t->ndim;
    memcpy(v->shape, t->shape, sizeof v->shape);
    v->data = numel > 0 ? data + (size_t)t->offset * es : data;
    v->nbytes = numel * es;
    return XC_OK;
}

static xc_status parse_torch(const unsigned char *buf, size_t size, xc_arena *arena,
                             xc_tensor_view **out, size_t *n) {
    xc_zip *z = NULL;
    xc_arena *tmp = NULL;
    xc_status st;
    XC_TRY_GOTO(xc_zip_open(buf, size, &z), st, out);
    const xc_zip_entry *pkl = NULL;
    size_t plen = 0;
    XC_TRY_GOTO(find_pickle(z, &pkl, &plen), st, out);
    const xc_zip_entry *bo = NULL;
    char boname[300];
    int bl = snprintf(boname, sizeof boname, "%.*sbyteorder", (int)plen, pkl->name);
    if (bl > 0 && (size_t)bl < sizeof boname && xc_zip_find(z, boname, (size_t)bl, &bo) == XC_OK) {
        const unsigned char *b = NULL;
        XC_TRY_GOTO(xc_zip_entry_data(z, bo, &b), st, out);
        if (bo->size != 6 || memcmp(b, "little", 6) != 0) {
            st = xc_errf(XC_ERR_UNSUPPORTED, "torch zip: only little-endian checkpoints are "
                                             "supported");
            goto out;
        }
    }
    const unsigned char *pbytes = NULL;
    XC_TRY_GOTO(xc_zip_entry_data(z, pkl, &pbytes), st, out);
    XC_TRY_GOTO(xc_arena_create(1 << 16, &tmp), st, out);
    xc_pickle_tensor *ts = NULL;
    size_t cnt = 0;
    XC_TRY_GOTO(xc_pickle_load_state_dict(pbytes, (size_t)pkl->size, tmp, &ts, &cnt), st, out);
    xc_tensor_view *vs = xc_arena_calloc(arena, cnt ? cnt : 1, sizeof *vs);
    if (!vs) {
        st = XC_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < cnt; i++) {
        XC_TRY_GOTO(torch_view(z, pkl->name, plen, &ts[i], &vs[i]), st, out);
        vs[i].name = xc_arena_strndup(arena, ts[i].name, strlen(ts[i].name));
        if (!vs[i].name) {
            st = XC_ERR_NOMEM;
            goto out;
        }
    }
    *out = vs;
    *n = cnt;
out:
    xc_arena_destroy(tmp);
    xc_zip_close(z);
    return st;
}

/* ---- one file ---- */

/* Guesses the format from the first bytes, falling back to hint. XC_ERR_UNSUPPORTED for the
 * legacy (pre-1.6) torch format, which is a bare pickle stream. */
static xc_status sniff(const unsigned char *b, size_t n, xc_ckpt_format hint, xc_ckpt_format *out) {
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' && (b[2] == 3 || b[2] == 5)) {
        *out = XC_CKPT_FORMAT_TORCH_BIN;
    } else if (n >= 2 && b[0] == 0x80 && b[1] <= 5) {
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "legacy (non-zip) torch serialization is not supported; re-save with "
                       "torch.save(sd, path) from torch >= 1.6 (zip format)");
    } else if (n >= 9 && b[8] == '{') {
        *out = XC_CKPT_FORMAT_SAFETENSORS;
    } else {
        *out = hint;
    }
    return XC_OK;
}

/* Parses the shard's bytes as fmt into its sorted tensor table. */
static xc_status parse_shard(ck_shard *s, xc_ckpt_format fmt) {
    xc_status st;
    XC_TRY(xc_arena_create(1 << 14, &s->arena));
    if (fmt == XC_CKPT_FORMAT_SAFETENSORS) {
        st = xc_safetensors_parse(s->buf, s->size, s->arena, &s->tensors, &s->n);
    } else {
        st = parse_torch(s->buf, s->size, s->arena, &s->tensors, &s->n);
    }
    if (st != XC_OK) {
        return st;
    }
    qsort(s->tensors, s->n, sizeof *s->tensors, view_cmp);
    for (size_t i = 1; i < s->n; i++) {
        if (strcmp(s->tensors[i - 1].name, s->tensors[i].name) == 0) {
            return xc_errf(XC_ERR_PROTO, "tensor '%s' appears twice", s->tensors[i].name);
        }
    }
    return XC_OK;
}

static void shard_unload(ck_shard *s) {
    xc_mmap_close(&s->map);
    xc_arena_destroy(s->arena);
    s->arena = NULL;
    s->tensors = NULL;
    s->n = 0;
    s->loaded = 0;
    if (s->path) {
        s->buf = NULL;
        s->size = 0;
    }
}

/* Maps (when it is a file) and parses shard i. On failure the shard is left unloaded. */
static xc_status shard_load(xc_ckpt *ck, int i, xc_ckpt_format hint, int do_sniff) {
    ck_shard *s = &ck->shards[i];
    if (s->loaded) {
        return XC_OK;
    }
    xc_status st;
    if (s->path) {
        XC_TRY(xc_mmap_open(s->path, &s->map));
        s->buf = s->map.data;
        s->size = s->map.size;
    }
    xc_ckpt_format fmt = hint;
    if (do_sniff) {
        XC_TRY_GOTO(sniff(s->buf, s->size, hint, &fmt), st, fail);
    }
    XC_TRY_GOTO(parse_shard(s, fmt), st, fail);
    s->loaded = 1;
    ck->mapped += s->size;
    return XC_OK;
fail:
    shard_unload(s);
    return with_path(st, s->path);
}

/* ---- index json ---- */

/* A shard file name from an index must stay inside the checkpoint directory. */
static int safe_relpath(const char *f) {
    if (f[0] == '\0' || f[0] == '/') {
        return 0;
    }
    for (const char *p = f; *p;) {
        const char *q = strchr(p, '/');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            return 0;
        }
        p += n + (q != NULL);
    }
    return 1;
}

/* A (tensor name, shard file) pair read from the weight map. */
typedef struct ck_pair {
    const char *name;
    const char *file;
    size_t idx; /* into entries */
} ck_pair;

static int pair_file_cmp(const void *a, const void *b) {
    return strcmp(((const ck_pair *)a)->file, ((const ck_pair *)b)->file);
}

/* Builds entries and the (unloaded) shard list from the weight map; shard paths are dir/file. */
static xc_status index_build(xc_ckpt *ck, const cJSON *wm, const char *dir) {
    size_t cnt = (size_t)cJSON_GetArraySize(wm);
    if (cnt == 0) {
        return xc_errf(XC_ERR_PROTO, "weight_map is empty");
    }
    ck_pair *ps = xc_calloc(cnt, sizeof *ps);
    ck->entries = xc_calloc(cnt, sizeof *ck->entries);
    if (!ps || !ck->entries) {
        xc_free(ps);
        return XC_ERR_NOMEM;
    }
    xc_status st = XC_OK;
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !safe_relpath(e->valuestring)) {
            st = xc_errf(XC_ERR_PROTO,
                         "weight_map entry '%s' is not a relative file name inside the checkpoint "
                         "directory",
                         e->string);
            goto out;
        }
        ps[i].name = xc_arena_strndup(ck->arena, e->string, strlen(e->string));
        ps[i].file = e->valuestring;
        ps[i].idx = i;
        if (!ps[i].name) {
            st = XC_ERR_NOMEM;
            goto out;
        }
        i++;
    }
    // Sort by file to number the distinct shards in O(n log n).
    qsort(ps, cnt, sizeof *ps, pair_file_cmp);
    int ns = 0;
    for (i = 0; i < cnt; i++) {
        ns += i == 0 || strcmp(ps[i].file, ps[i - 1].file) != 0;
    }
    ck->shards = xc_calloc((size_t)ns, sizeof *ck->shards);
    if (!ck->shards) {
        st = XC_ERR_NOMEM;
        goto out;
    }
    int s = -1;
    for (i = 0; i < cnt; i++) {
        if (i == 0 || strcmp(ps[i].file, ps[i - 1].file) != 0) {
            s++;
            size_t len = strlen(dir) + 1 + strlen(ps[i].file) + 1;
            ck->shards[s].path = xc_malloc(len);
            if (!ck->shards[s].path) {
                st = XC_ERR_NOMEM;
                goto out;
            }
            ck->n_shards = s + 1;
            snprintf(ck->shards[s].path, len, "%s/%s", dir, ps[i].file);
        }
        ck->entries[ps[i].idx].name = ps[i].name;
        ck->entries[ps[i].idx].shard = s;
    }
    ck->n = cnt;
    qsort(ck->entries, cnt, sizeof *ck->entries, entry_cmp);
    for (i = 1; i < cnt; i++) {
        if (strcmp(ck->entries[i - 1].name, ck->entries[i].name) == 0) {
            st = xc_errf(XC_ERR_PROTO, "weight_map lists '%s' twice", ck->entries[i].name);
            goto out;
        }
    }
out:
    xc_free(ps);
    return st;
}

static xc_status open_index(xc_ckpt *ck, const char *path) {
    char *json = NULL;
    size_t len = 0;
    XC_TRY(xc_file_read_all(path, INDEX_MAX_BYTES, &json, &len));
    xc_status st = XC_OK;
    cJSON *root = cJSON_ParseWithLength(json, len);
    char *dir = xc_strdup(path);
    if (!dir) {
        st = XC_ERR_NOMEM;
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
    } else {
        strcpy(dir, ".");
    }
    if (!root) {
        st = xc_errf(XC_ERR_PROTO, "%s: invalid JSON", path);
        goto out;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        st = xc_errf(XC_ERR_PROTO, "%s: no \"weight_map\" object", path);
        goto out;
    }
    st = with_path(index_build(ck, wm, dir), path);
    if (st == XC_OK) {
        ck->format = has_suffix(ck->shards[0].path, ".safetensors") ? XC_CKPT_FORMAT_SAFETENSORS
                                                                    : XC_CKPT_FORMAT_TORCH_BIN;
    }
out:
    cJSON_Delete(root);
    xc_free(dir);
    xc_free(json);
    return st;
}

/* ---- single file ---- */

/* Loads shard 0 now and lists its tensors as the entries. */
static xc_status open_single(xc_ckpt *ck, xc_ckpt_format hint, int do_sniff) {
    xc_status st = shard_load(ck, 0, hint, do_sniff);
    if (st != XC_OK) {
        return st;
    }
    ck_shard *s = &ck->shards[0];
    ck->entries = xc_calloc(s->n ? s->n : 1, sizeof *ck->entries);
    if (!ck->entries) {
        return XC_ERR_NOMEM;
    }
    for (size_t i = 0; i < s->n; i++) {
        ck->entries[i].name = s->tensors[i].name;
        ck->entries[i].shard = 0;
    }
    ck->n = s->n;
    // What the bytes turned out to be, for xc_ckpt_get_format.
    ck->format = hint;
    if (do_sniff) {
        (void)sniff(s->buf, s->size, hint, &ck->format);
    }
    return XC_OK;
}

static xc_status ck_new(int n_shards, xc_ckpt **out) {
    xc_ckpt *ck = xc_calloc(1, sizeof *ck);
    if (!ck) {
        return XC_ERR_NOMEM;
    }
    if (xc_arena_create(1 << 14, &ck->arena) != XC_OK ||
        (n_shards > 0 && !(ck->shards = xc_calloc((size_t)n_shards, sizeof *ck->shards)))) {
        xc_ckpt_close(ck);
        return XC_ERR_NOMEM;
    }
    ck->n_shards = n_shards;
    *out = ck;
    return XC_OK;
}

/* ---- API ---- */

static int is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

xc_status xc_ckpt_open(const char *path, xc_ckpt **out) {
    static const char *const names[] = {"model.safetensors.index.json", "model.safetensors",
                                        "pytorch_model.bin.index.json", "pytorch_model.bin"};
    struct stat sb;
    if (stat(path, &sb) != 0) {
        return xc_errf(XC_ERR_IO, "checkpoint %s does not exist", path);
    }
    char file[4096];
    if (S_ISDIR(sb.st_mode)) {
        size_t k = 0;
        for (; k < sizeof names / sizeof names[0]; k++) {
            int n = snprintf(file, sizeof file, "%s/%s", path, names[k]);
            if (n > 0 && (size_t)n < sizeof file && is_file(file)) {
                break;
            }
        }
        if (k == sizeof names / sizeof names[0]) {
            return xc_errf(XC_ERR_IO,
                           "no checkpoint in %s (looked for model.safetensors.index.json, "
                           "model.safetensors, pytorch_model.bin.index.json, pytorch_model.bin)",
                           path);
        }
    } else if ((size_t)snprintf(file, sizeof file, "%s", path) >= sizeof file) {
        return xc_errf(XC_ERR_ARG, "checkpoint path is too long");
    }
    xc_ckpt *ck = NULL;
    xc_status st;
    if (has_suffix(file, ".index.json")) {
        XC_TRY(ck_new(0, &ck));
        st = open_index(ck, file);
    } else {
        XC_TRY(ck_new(1, &ck));
        ck->shards[0].path = xc_strdup(file);
        if (!ck->shards[0].path) {
            st = XC_ERR_NOMEM;
        } else {
            xc_ckpt_format hint = has_suffix(file, ".safetensors") ? XC_CKPT_FORMAT_SAFETENSORS
                                                                   : XC_CKPT_FORMAT_TORCH_BIN;
            st = open_single(ck, hint, 1);
        }
    }
    if (st != XC_OK) {
        xc_ckpt_close(ck);
        return st;
    }
    *out = ck;
    return XC_OK;
}

xc_status xc_ckpt_open_mem(const void *buf, size_t size, xc_ckpt_format fmt, xc_ckpt **out) {
    if (fmt != XC_CKPT_FORMAT_SAFETENSORS && fmt != XC_CKPT_FORMAT_TORCH_BIN) {
        return xc_errf(XC_ERR_ARG, "unknown checkpoint format %d", (int)fmt);
    }
    xc_ckpt *ck = NULL;
    XC_TRY(ck_new(1, &ck));
    ck->shards[0].buf = buf;
    ck->shards[0].size = size;
    xc_status st = open_single(ck, fmt, 0);
    if (st != XC_OK) {
        xc_ckpt_close(ck);
        return st;
    }
    *out = ck;
    return XC_OK;
}

void xc_ckpt_close(xc_ckpt *ck) {
    if (!ck) {
        return;
    }
    for (int i = 0; i < ck->n_shards; i++) {
        shard_unload(&ck->shards[i]);
        xc_free(ck->shards[i].path);
    }
    xc_free(ck->shards);
    xc_free(ck->entries);
    xc_arena_destroy(ck->arena);
    xc_free(ck);
}

xc_ckpt_format xc_ckpt_get_format(const xc_ckpt *ck) {
    return ck->format;
}

size_t xc_ckpt_count(const xc_ckpt *ck) {
    return ck->n;
}

const char *xc_ckpt_name(const xc_ckpt *ck, size_t i) {
    return i < ck->n ? ck->entries[i].name : NULL;
}

static const ck_entry *find_entry(const xc_ckpt *ck, const char *name) {
    ck_entry key = {.name = name};
    return ck->n ? bsearch(&key, ck->entries, ck->n, sizeof key, entry_cmp) : NULL;
}

int xc_ckpt_has(const xc_ckpt *ck, const char *name) {
    return find_entry(ck, name) != NULL;
}

xc_status xc_ckpt_get(xc_ckpt *ck, const char *name, xc_tensor_view *out) {
    const ck_entry *e = find_entry(ck, name);
    if (!e) {
        return xc_errf(XC_ERR_NOTFOUND, "tensor '%s' is not in the checkpoint", name);
    }
    ck_shard *s = &ck->shards[e->shard];
    XC_TRY(shard_load(ck, e->shard, ck->format, 1));
    xc_tensor_view key = {.name = name};
    const xc_tensor_view *v = bsearch(&key, s->tensors, s->n, sizeof key, view_cmp);
    if (!v) {
        return xc_errf(XC_ERR_PROTO, "the index maps tensor '%s' to %s, which does not hold it",
                       name, s->path ? s->path : "the file");
    }
    *out = *v;
    out->name = e->name;
    out->shard = e->shard;
    return XC_OK;
}

/* "[4096, -1]" into buf. */
static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (n < cap) {
        snprintf(buf + n, cap - n, "]");
    }
}

xc_status xc_ckpt_get_shaped(xc_ckpt *ck, const char *name, int ndim, const int64_t *shape,
                             xc_tensor_view *out) {
    xc_tensor_view v = {0};
    XC_TRY(xc_ckpt_get(ck, name, &v));
    if (v.dtype != XC_DTYPE_F32 && v.dtype != XC_DTYPE_F16 && v.dtype != XC_DTYPE_BF16) {
        return xc_errf(XC_ERR_PROTO, "tensor '%s' has dtype %s; expected f32, f16 or bf16", name,
                       xc_dtype_name(v.dtype));
    }
    int ok = v.ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) {
        ok = shape[i] == -1 || shape[i] == v.shape[i];
    }
    if (!ok) {
        char want[160], have[160];
        shape_str(want, sizeof want, ndim > XC_CKPT_MAX_DIMS ? XC_CKPT_MAX_DIMS : ndim, shape);
        shape_str(have, sizeof have, v.ndim, v.shape);
        return xc_errf(XC_ERR_PROTO, "tensor '%s': expected shape %s but the checkpoint has %s",
                       name, want, have);
    }
    *out = v;
    return XC_OK;
}

size_t xc_ckpt_mapped_bytes(const xc_ckpt *ck) {
    return ck->mapped;
}
