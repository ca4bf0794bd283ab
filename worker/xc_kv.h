/* Paged KV cache storage for the layers of one stage, and the block allocator that hands out its
 * blocks. A sequence owns a block table; position p lives in block table[p / block_size] at
 * offset p % block_size. Keys are stored after RoPE. */
#pragma once

#include <stdint.h>

#include "xc_backend.h"
#include "xc_status.h"

typedef struct xc_kv_cache xc_kv_cache;

/* Allocates K and V storage of (n_blocks * block_size, width) rows of dtype (XC_DTYPE_BF16: values
 * rounded to nearest even on store; XC_DTYPE_F32: exact) for n_layers layers on the backend.
 * XC_ERR_NOMEM (with the byte count in the message) if it does not fit; XC_ERR_ARG for another
 * dtype. */
xc_status xc_kv_create(xc_backend *be, int n_layers, int n_blocks, int block_size, int width,
                       xc_dtype dtype, xc_kv_cache **out);

/* Frees the storage. NULL is a no-op. */
void xc_kv_destroy(xc_kv_cache *kv);

/* Backend pointers to layer l's (n_slots, width) key and value rows (l relative to the stage),
 * of xc_kv_dtype. */
void *xc_kv_k(const xc_kv_cache *kv, int layer);
void *xc_kv_v(const xc_kv_cache *kv, int layer);
xc_dtype xc_kv_dtype(const xc_kv_cache *kv);

/* Copies block src's keys and values to block dst in every layer (issue 13.3: copy on write of
 * a forked sequence's partial last block), on the backend (CUDA: device to device, on its
 * stream). XC_ERR_ARG for a block id out of range or src == dst. */
xc_status xc_kv_copy_block(xc_kv_cache *kv, int src, int dst);

int xc_kv_block_size(const xc_kv_cache *kv);
int xc_kv_n_blocks(const xc_kv_cache *kv);

/* Bytes needed for a cache of these dimensions (for sizing from a memory budget):
 * 2 (K and V) x layers x slots x width x the dtype's size. */
size_t xc_kv_bytes(int n_layers, int n_blocks, int block_size, int width, xc_dtype dtype);

/* Parses "bf16" or "f32" (the --kv-dtype values) into *out; anything else is XC_ERR_ARG. */
xc_status xc_kv_dtype_parse(const char *s, xc_dtype *out);

typedef struct xc_block_pool xc_block_pool;

/* A free list of block ids 0 .. n_blocks-1. */
xc_status xc_block_pool_create(int n_blocks, xc_block_pool **out);
void xc_block_pool_destroy(xc_block_pool *p);

/* Takes n blocks (all or nothing) into out. XC_AGAIN when fewer than n are free. */
xc_status xc_block_pool_alloc(xc_block_pool *p, int n, int32_t *out);

/* Returns blocks to the pool. Returning a block that is already free is XC_ERR_ARG. */
xc_status xc_block_pool_free(xc_block_pool *p, const int32_t *blocks, int n);

int xc_block_pool_n_free(const xc_block_pool *p);
int xc_block_pool_n_total(const xc_block_pool *p);
