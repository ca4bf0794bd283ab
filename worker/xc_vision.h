/* The vision side: CLIP ViT (conv patchify as a GEMM, class token, position table, pre-LayerNorm,
 * encoder layers with quick-GELU), last layer's output without the class token and without
 * post-LayerNorm, then vision_proj (Linear, exact GELU, Linear). Batched over images. */
#pragma once

#include "xc_backend.h"
#include "xc_ckpt.h"
#include "xc_model_config.h"
#include "xc_status.h"

typedef struct xc_vision xc_vision;

/* Facts read from the checkpoint's tensor shapes and config.json. */
typedef struct xc_vision_info {
    int width;             /* CLIP hidden (1024 for ViT-L) */
    int n_layers;          /* 24 */
    int n_heads;           /* width / 64 */
    int inter;             /* MLP width (4096) */
    int patch;             /* 14 */
    int img_size;          /* input side in pixels (224 for 7b, 490 for VL) */
    int grid;              /* img_size / patch */
    int n_tokens;          /* grid * grid: image rows given to the decoder */
    int pos_rows;          /* rows of the stored position table */
    bool pos_interpolated; /* the stored table was bicubic-resized to the grid at load */
    int out_dim;           /* projector output = decoder hidden */
} xc_vision_info;

/* Loads CLIP and the projector. img_size comes from cfg->img_size (config.json). A position table
 * with grid*grid+1 rows is used as stored; one with g0*g0+1 rows for another g0 is interpolated
 * to the grid exactly as PyTorch's bicubic (A = -0.75, align_corners = False). */
xc_status xc_vision_create(xc_backend *be, xc_ckpt *ck, const xc_model_config *cfg,
                           xc_vision **out);

void xc_vision_destroy(xc_vision *v);

const xc_vision_info *xc_vision_get_info(const xc_vision *v);

/* Encodes n images. pixels: host memory (n, 3, img_size, img_size), normalized as CLIP expects.
 * out: backend memory (n * n_tokens, out_dim). clip_out (optional, backend memory,
 * (n * n_tokens, width)) receives the CLIP features before the projector. */
xc_status xc_vision_encode(xc_vision *v, const float *pixels, int n, float *out, float *clip_out);

/* Called after every CLIP layer of an encode, from the encode's thread (progress for a hang
 * watchdog: one 490-px image takes a minute on a small CPU). NULL clears it. */
void xc_vision_set_progress(xc_vision *v, void (*fn)(void *user), void *user);

/* PyTorch-exact bicubic resize of a (g0, g0, c) grid (row-major, channels last) to (g, g, c):
 * A = -0.75, align_corners = False, border-clamped taps. Exposed for tests. */
void xc_vision_bicubic_resize(const float *src, int g0, int c, float *dst, int g);
