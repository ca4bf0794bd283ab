/* safetensors parser over a memory buffer: 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the tensor bytes. */
#pragma once

#include <stddef.h>

#include "xc_arena.h"
#include "xc_ckpt.h"
#include "xc_status.h"

/* Largest JSON header accepted (the reference implementation's limit is 100 MB too). */
#define XC_SAFETENSORS_MAX_HEADER ((size_t)100 << 20)

/* Parses buf (size bytes, borrowed) into *out (n views, in header order; names and the array in
 * arena, data pointing into buf; shard set to 0). Checks: header length and JSON, dtype strings
 * (F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL), shapes, data_offsets inside the data area,
 * numel * element size == bytes, no two tensors overlapping. __metadata__ is ignored.
 * XC_ERR_PROTO naming the tensor and the problem; XC_ERR_UNSUPPORTED for another dtype
 * (e.g. F8_E4M3); XC_ERR_NOMEM. Data is not necessarily aligned to the element size. */
xc_status xc_safetensors_parse(const unsigned char *buf, size_t size, xc_arena *arena,
                               xc_tensor_view **out, size_t *n);
