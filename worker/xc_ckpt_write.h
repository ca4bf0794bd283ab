/* Checkpoint writers: a set of named dense tensors as safetensors or as a PyTorch zip `.bin`
 * (the layout torch.save of torch 1.13 produces, byte for byte), plus the HF shard index json. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_ckpt.h"
#include "xc_dtype.h"
#include "xc_status.h"

/* One tensor to write. All fields are borrowed for the duration of the write call. */
typedef struct xc_ckpt_wtensor {
    const char *name;                /* unique, non-empty */
    xc_dtype dtype;                  /* any xc_dtype */
    int ndim;                        /* 0..XC_CKPT_MAX_DIMS */
    int64_t shape[XC_CKPT_MAX_DIMS]; /* (ndim) entries >= 0 */
    const void *data;                /* numel * dtype size bytes, or NULL: ask the fill callback */
} xc_ckpt_wtensor;

/* Produces the bytes of tensor `index` (an index into the caller's array) into dst (nbytes, the
 * dense row-major size). Called once per tensor, in file order, only for tensors with data NULL.
 * A failure status aborts the write and is returned as is. */
typedef xc_status (*xc_ckpt_fill_fn)(void *user, size_t index, void *dst, size_t nbytes);

/* Dense byte size of t (numel * element size) in *out. XC_ERR_ARG on a bad dtype, ndim or shape,
 * or when the size overflows size_t. */
xc_status xc_ckpt_wtensor_nbytes(const xc_ckpt_wtensor *t, size_t *out);

/* Writes n tensors to path in format fmt, atomically (a temp file renamed into place; nothing is
 * left behind on failure).
 * - safetensors: the layout of the `safetensors` library's save_file(..., metadata={"format":
 *   "pt"}): header JSON with __metadata__ first, data ordered by dtype (widest first) then name,
 *   no gaps, header padded with spaces to a multiple of 8.
 * - torch .bin: a stored zip like torch.save (torch 1.13): `<stem>/data.pkl` (a protocol-2 pickle
 *   of an OrderedDict name -> torch._utils._rebuild_tensor_v2(persistent storage, ...)),
 *   `<stem>/data/<key>` (one raw little-endian storage per tensor, 64-byte aligned),
 *   `<stem>/version` ("3\n"); stem = file name up to its first '.'. Files over 4 GiB get ZIP64
 *   offsets (extra field tag 1 in the central directory); a single entry of 4 GiB or more is
 *   XC_ERR_UNSUPPORTED.
 * Errors: XC_ERR_ARG (empty or duplicate names, bad shapes, data NULL with no fill), XC_ERR_IO
 * (naming path and the OS error), XC_ERR_NOMEM, or the fill callback's status. */
xc_status xc_ckpt_write(const char *path, xc_ckpt_format fmt, const xc_ckpt_wtensor *t, size_t n,
                        xc_ckpt_fill_fn fill, void *user);

/* Writes a HF shard index (`model.safetensors.index.json` / `pytorch_model.bin.index.json`):
 * {"metadata": {"total_size": total_size}, "weight_map": {name: file_of[i]}} with sorted keys and
 * an indent of 2, as transformers writes it. file_of[i] is the shard file name (no directory) of
 * tensor names[i]. Errors: XC_ERR_ARG (duplicate names), XC_ERR_IO, XC_ERR_NOMEM. */
xc_status xc_ckpt_write_index(const char *path, const char *const *names,
                              const char *const *file_of, size_t n, uint64_t total_size);
