/* Checkpoint reader: tensors by name from PyTorch .bin (zip + restricted unpickler) or safetensors,
 * single file or sharded with an index json. Everything is memory-mapped; shards are opened
 * lazily, so a worker maps only the files holding the tensors it asks for. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_dtype.h"
#include "xc_status.h"

#define XC_CKPT_MAX_DIMS 8

typedef struct xc_ckpt xc_ckpt;

typedef enum xc_ckpt_format {
    XC_CKPT_FORMAT_SAFETENSORS = 0,
    XC_CKPT_FORMAT_TORCH_BIN = 1,
} xc_ckpt_format;

/* A view of one tensor. data points into a read-only mapping owned by the xc_ckpt: valid until
 * xc_ckpt_close. Tensors are always dense row-major (the readers refuse other strides). In a
 * .bin, data is where torch put it (zip entries 64-byte aligned, plus storage_offset); in a
 * safetensors file it is wherever data_offsets say (the library writes it element-aligned, but a
 * hand-made file may not be). */
typedef struct xc_tensor_view {
    const char *name;
    xc_dtype dtype;
    int ndim;
    int64_t shape[XC_CKPT_MAX_DIMS];
    const void *data; /* NULL until the tensor's shard is mapped (see xc_ckpt_get) */
    size_t nbytes;
    int shard; /* index of the file that holds it */
} xc_tensor_view;

/* Opens a checkpoint. path is a directory (looks for model.safetensors.index.json,
 * model.safetensors, pytorch_model.bin.index.json, pytorch_model.bin in that order) or one file
 * (.safetensors or .bin). Only the index (or the single file's header) is read now.
 * Errors: XC_ERR_IO (missing/unreadable), XC_ERR_PROTO (malformed; xc_err_last() says where),
 * XC_ERR_UNSUPPORTED (e.g. compressed zip entries, an unknown dtype). */
xc_status xc_ckpt_open(const char *path, xc_ckpt **out);

/* Opens one checkpoint file held in memory as fmt (no format sniffing): buf (size bytes) is
 * borrowed and must outlive the xc_ckpt. For tests and fuzzers. Errors as xc_ckpt_open. */
xc_status xc_ckpt_open_mem(const void *buf, size_t size, xc_ckpt_format fmt, xc_ckpt **out);

/* Unmaps everything. NULL is a no-op. */
void xc_ckpt_close(xc_ckpt *ck);

xc_ckpt_format xc_ckpt_get_format(const xc_ckpt *ck);

/* Number of tensors (in a sharded checkpoint, the index's count). */
size_t xc_ckpt_count(const xc_ckpt *ck);

/* Name of tensor i in a stable (sorted by name) order. */
const char *xc_ckpt_name(const xc_ckpt *ck, size_t i);

/* Looks a tensor up and maps its shard if needed; out->data is valid on XC_OK.
 * XC_ERR_NOTFOUND if absent; XC_ERR_PROTO / XC_ERR_IO if its shard is malformed or missing. */
xc_status xc_ckpt_get(xc_ckpt *ck, const char *name, xc_tensor_view *out);

/* xc_ckpt_get, then checks ndim and shape (a shape entry of -1 matches anything) and that dtype is
 * one of f32/f16/bf16. XC_ERR_PROTO naming the tensor, expected and actual shapes on mismatch. */
xc_status xc_ckpt_get_shaped(xc_ckpt *ck, const char *name, int ndim, const int64_t *shape,
                             xc_tensor_view *out);

/* 1 if the tensor exists (no shard is mapped), else 0. */
int xc_ckpt_has(const xc_ckpt *ck, const char *name);

/* Total bytes of mapped tensor data so far (for memory accounting): the sizes of the files
 * mapped so far (a shard is mapped whole when one of its tensors is first asked for). */
size_t xc_ckpt_mapped_bytes(const xc_ckpt *ck);
