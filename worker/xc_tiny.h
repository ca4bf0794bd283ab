/* Deterministic tiny InternLM-XComposer2 checkpoints: the real tensor names, config keys and
 * layouts (interleaved wqkv, PLoRA on all five projections, CLIP with class token and position
 * table, the two-layer projector) at sizes small enough for fast tests. Values come from a
 * counter-based PRNG (splitmix64 + Marsaglia polar normals with a libm-free log), so the same
 * configuration gives the same bytes on every machine. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_ckpt.h"
#include "xc_dtype.h"
#include "xc_status.h"

#define XC_TINY_VISION_HEAD_DIM 64 /* CLIP ViT-L/14's head dim: vision heads = vision_dim / 64 */
#define XC_TINY_POS_ORIG_GRID   24 /* the original 336-px CLIP table: 24 x 24 + 1 rows */

typedef struct xc_tiny_conf {
    const char *variant; /* "7b" or "vl": sets the config.json layout and the default img_size */
    uint64_t seed;
    /* decoder */
    int hidden;       /* hidden_size (64) */
    int layers;       /* num_hidden_layers (2) */
    int heads;        /* num_attention_heads (4) */
    int kv_heads;     /* num_key_value_heads (2) */
    int intermediate; /* intermediate_size (128) */
    int lora_rank;    /* PLoRA r on wqkv, wo, w1, w3, w2 (8); scaling alpha/r is 1 as in 7b/VL */
    int vocab;        /* vocab_size (512) */
    /* vision tower (head dim fixed at 64) */
    int vision_dim;          /* D (64: one head) */
    int vision_layers;       /* encoder layers (2) */
    int vision_mlp;          /* fc1 width; 0 = 4 * D */
    int patch;               /* patch size (14) */
    int img_size;            /* config img_size; 0 = 56 for 7b (4x4 grid), 70 for vl (5x5) */
    bool pos_table_original; /* position table of 577 rows (24x24+1) instead of grid^2+1 */
    bool post_layernorm;     /* also write vision post_layernorm (absent in VL, unused) */
    /* output */
    xc_dtype dtype;        /* f32, f16 or bf16 (bf16 like the real model) */
    xc_ckpt_format format; /* safetensors (model.safetensors) or torch .bin (pytorch_model.bin) */
    int shards;            /* 1 = single file; N > 1 = N shards plus the HF index json */
    const char *tokenizer; /* copied to DIR/tokenizer.model, or NULL */
    bool force;            /* replace checkpoint files already in DIR */
    /* full-scale generation (xcpipe model make-random; xc_tiny_conf_like sets these) */
    bool uniform;             /* values mean + std*sqrt(3)*U(-1,1) from 16-bit hash lanes (fast,
                                 same variance) instead of polar-method normals */
    int threads;              /* generation threads per tensor (0 or 1 = the calling thread) */
    uint64_t max_shard_bytes; /* > 0: shards as transformers' save_pretrained cuts them (a new
                                 shard when the next tensor would pass this many bytes; one shard
                                 = a single file, no index), instead of `shards` */
    float output_gain;        /* output.weight std = gain / sqrt(hidden); 0 = 1 */
    bool standin_tokenizer;   /* write DIR/tokenizer.model (+ tokenizer_config.json and
                                 special_tokens_map.json): xc_tiny_standin_tokenizer's model */
} xc_tiny_conf;

/* One tensor of the checkpoint c describes, in file order, and the shard it goes to. */
typedef struct xc_tiny_tensor {
    char name[128];
    int ndim;
    int64_t shape[4];
    int shard; /* 0-based; 0 when the checkpoint is one file */
} xc_tiny_tensor;

/* Fills c with the defaults of a variant ("7b" or "vl"; anything else is left for
 * xc_tiny_validate to reject). */
void xc_tiny_conf_init(xc_tiny_conf *c, const char *variant);

/* Fills c with the exact sizes of the published internlm-xcomposer2-7b ("7b": img_size 224, a
 * 257-row position table, one pytorch_model.bin) or internlm-xcomposer2-vl-7b ("vl": img_size 490,
 * 1226 rows, pytorch_model-0000K-of-00002.bin shards of at most 10 GB plus the index): hidden
 * 4096, 32 layers, 32/8 heads, FFN 14336, PLoRA r 256, vocab 92544, CLIP ViT-L/14 (1024 wide, 24
 * layers), bf16, no vision post_layernorm; uniform values, 2 threads, output gain 4, the stand-in
 * tokenizer. */
void xc_tiny_conf_like(xc_tiny_conf *c, const char *variant);

/* The tensors of c's checkpoint in file order with their shard (*out xc_malloc'd, *n entries)
 * and the number of files in *n_shards. */
xc_status xc_tiny_list(const xc_tiny_conf *c, xc_tiny_tensor **out, size_t *n, int *n_shards);

/* A stand-in SentencePiece BPE model of `vocab` pieces with the InternLM2 layout of special
 * pieces: <unk> 0, <s> 1, </s> 2, the 256 byte pieces <0x00>..<0xFF> at 3..258,
 * [UNUSED_TOKEN_k] (k = 0..146, user-defined) at vocab - 147 + k (92397 + k for 92544, so
 * [UNUSED_TOKEN_145] = 92542 and [UNUSED_TOKEN_146] = 92543 as in the real model), and
 * deterministic normal pieces in between ("\xe2\x96\x81", printable ASCII with and without the
 * word-start mark, then lowercase 2-, 3- and 4-letter strings). Identity normalizer, dummy prefix,
 * byte fallback. vocab >= 600. *out is xc_malloc'd. */
xc_status xc_tiny_standin_tokenizer(int vocab, uint8_t **out, size_t *len);

/* Checks every size and option; XC_ERR_ARG naming the offending field. */
xc_status xc_tiny_validate(const xc_tiny_conf *c);

/* The image size actually used (img_size, or the variant's default). */
int xc_tiny_img_size(const xc_tiny_conf *c);

/* Writes DIR/config.json, the checkpoint (single file or shards + index) and, if asked,
 * DIR/tokenizer.model. DIR is created if missing. If DIR already holds checkpoint files
 * (model*.safetensors, pytorch_model*.bin, their index json) it fails with XC_ERR_ARG unless
 * c->force, which removes them first (so a reader never picks up a stale file).
 * Errors: XC_ERR_ARG, XC_ERR_IO (naming the path), XC_ERR_NOMEM. */
xc_status xc_tiny_write(const char *dir, const xc_tiny_conf *c);

/* Number of tensors, parameters and bytes the checkpoint of c holds. */
xc_status xc_tiny_count(const xc_tiny_conf *c, size_t *n_tensors, uint64_t *n_params,
                        uint64_t *n_bytes);

/* Smallest layer count >= 1 for which the checkpoint of c (other sizes as given) holds at least
 * bytes bytes, in *layers. XC_ERR_ARG if more than max_layers would be needed. */
xc_status xc_tiny_layers_for_bytes(const xc_tiny_conf *c, uint64_t bytes, int max_layers,
                                   int *layers);

/* The logical, un-interleaved block of layer `layer`'s fused projection, in f32 before rounding to
 * c->dtype: which = 0 (q: heads*head_dim rows), 1 (k) or 2 (v: kv_heads*head_dim rows each);
 * lora_b = false for attention.wqkv.weight (cols = hidden), true for its Plora_B (cols = r).
 * out holds rows*cols floats. The checkpoint stores these interleaved per KV group as
 * [q heads of the group, k, v] (reference section 3.2). XC_ERR_ARG on bad arguments. */
xc_status xc_tiny_qkv_logical(const xc_tiny_conf *c, int layer, bool lora_b, int which, float *out);
