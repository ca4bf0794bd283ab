/* Naive reference implementations of every backend op: plain loops on host memory, written for
 * clarity (llama2.c style) and accumulated in double where that is the clearest statement of the
 * math. Tests hold every backend to these within stated tolerances. Same args structs as the
 * backend ops; pointers are host memory. Return XC_ERR_ARG on impossible shapes. */
#pragma once

#include "xc_backend.h"

xc_status xc_ref_matmul(const xc_matmul_args *a);
xc_status xc_ref_plora(const xc_plora_args *a);
xc_status xc_ref_rmsnorm(const xc_norm_args *a);
xc_status xc_ref_layernorm(const xc_norm_args *a);
xc_status xc_ref_rope(const xc_rope_args *a);
xc_status xc_ref_kv_store(const xc_kv_store_args *a);
xc_status xc_ref_attention(const xc_attention_args *a);
xc_status xc_ref_act(const xc_act_args *a);
xc_status xc_ref_embed(const xc_embed_args *a);
xc_status xc_ref_patchify(const xc_patchify_args *a);
xc_status xc_ref_softmax(const xc_softmax_args *a);
