/* Argument validation shared by the naive references and the CPU ops (matmul has its own,
 * xc_cpu_matmul_check): one place decides which shapes are legal, so every implementation rejects
 * the same inputs with the same status. Internal to kernels/. All return XC_OK, XC_ERR_ARG
 * (impossible shapes, NULL pointers, ids/slots/positions out of range, ranges out of order) or
 * XC_ERR_UNSUPPORTED (a weight dtype other than f32/f16/bf16), with a message via xc_errf. */
#pragma once

#include "xc_backend.h"

xc_status xc_opcheck_plora(const xc_plora_args *a);
xc_status xc_opcheck_norm(const xc_norm_args *a, bool layernorm);
xc_status xc_opcheck_rope(const xc_rope_args *a);
xc_status xc_opcheck_kv_store(const xc_kv_store_args *a);
xc_status xc_opcheck_attention(const xc_attention_args *a);
xc_status xc_opcheck_act(const xc_act_args *a);
xc_status xc_opcheck_embed(const xc_embed_args *a);
xc_status xc_opcheck_patchify(const xc_patchify_args *a);
xc_status xc_opcheck_softmax(const xc_softmax_args *a);

/* Largest head_dim attention accepts (the CPU kernel keeps per-query accumulators on the stack). */
#define XC_OPCHECK_MAX_HEAD_DIM 512

/* ld if non-zero, else the dense row length n. */
static inline int xc_opcheck_ld(int ld, int n) {
    return ld ? ld : n;
}
