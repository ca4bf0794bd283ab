/* Restricted unpickler for torch.save state dicts (pickle protocol 2). It understands exactly what
 * a state dict needs and never executes anything: the only callables are
 * collections.OrderedDict and torch._utils._rebuild_tensor_v2, the torch.*Storage classes are
 * accepted only as type tags inside persistent ids, and every other global is refused. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_arena.h"
#include "xc_ckpt.h"
#include "xc_dtype.h"
#include "xc_status.h"

/* Limits that bound memory and work on hostile input. */
#define XC_PICKLE_MAX_SIZE  ((size_t)1 << 30) /* bytes of pickle */
#define XC_PICKLE_MAX_STACK ((size_t)1 << 20) /* values on the stack */
#define XC_PICKLE_MAX_MARKS 64                /* nested MARKs */

/* One tensor of the state dict, as _rebuild_tensor_v2 describes it. All strings live in the
 * arena given to xc_pickle_load_state_dict. */
typedef struct xc_pickle_tensor {
    const char *name;                /* state-dict key */
    const char *storage_key;         /* persistent id key: the zip entry is "<prefix>data/<key>" */
    xc_dtype dtype;                  /* from the storage type tag (torch.BFloat16Storage -> bf16) */
    int64_t storage_numel;           /* elements in the storage */
    int64_t offset;                  /* storage_offset, in elements */
    int ndim;                        /* 0..XC_CKPT_MAX_DIMS */
    int64_t shape[XC_CKPT_MAX_DIMS]; /* (ndim) */
    int64_t stride[XC_CKPT_MAX_DIMS]; /* (ndim), in elements */
} xc_pickle_tensor;

/* Unpickles buf (size bytes) as a dict (or OrderedDict) of name -> tensor, in pickle order.
 * *out (n entries) and its strings are allocated in arena, which the caller owns.
 * XC_ERR_PROTO with a message for: a global other than the allowed ones ("pickle global
 * 'os.system' is not allowed"), an unknown opcode (byte and offset), truncation, a malformed
 * stack, a value that is not a tensor, a limit exceeded. XC_ERR_UNSUPPORTED for another pickle
 * protocol or a torch storage type with no xc_dtype (torch.ComplexFloatStorage). XC_ERR_NOMEM.
 * Nothing is executed in any case. */
xc_status xc_pickle_load_state_dict(const unsigned char *buf, size_t size, xc_arena *arena,
                                    xc_pickle_tensor **out, size_t *n);
