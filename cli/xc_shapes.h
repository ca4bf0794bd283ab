/* The shapes world: deterministic scenes of coloured shapes, their pictures, questions and
 * answers, and how an answer is scored. This is the C twin of tools/train/shapes_world.py (the
 * specification the shapes model models/shapes/ was trained on); tests/unit/test_shapes.c checks
 * that both give identical pixels, questions and answers for the same seeds. Integer arithmetic
 * only (splitmix64, pixel centres in half-pixel units, no anti-aliasing), so the two agree bit for
 * bit. Used by `xcpipe eval shapes` and `xcpipe eval draw` (scripts/demo). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

#define XC_SHAPES_IMG     84 /* image side in pixels (6 x 6 CLIP patches of 14) */
#define XC_SHAPES_MAX_OBJ 3

typedef enum xc_shapes_qtype {
    XC_SHAPES_Q_CAPTION,
    XC_SHAPES_Q_COLOR,
    XC_SHAPES_Q_SHAPE,
    XC_SHAPES_Q_WHERE,
    XC_SHAPES_Q_COUNT,
    XC_SHAPES_Q_EXISTS,
    XC_SHAPES_Q_TEXT, /* text-only: no image */
    XC_SHAPES_NQ
} xc_shapes_qtype;

typedef struct xc_shapes_obj {
    int cell;  /* 0..8, reading order of a 3 x 3 grid */
    int shape; /* circle, square, triangle, star */
    int color; /* red, green, blue, yellow, purple, orange */
    int r2;    /* radius in half pixels */
    int cx2, cy2;
} xc_shapes_obj;

typedef struct xc_shapes_scene {
    uint64_t seed;
    int bg[3];
    bool noisy;
    int n; /* 1..3 objects, sorted by cell */
    xc_shapes_obj obj[XC_SHAPES_MAX_OBJ];
    uint64_t noise_state; /* the scene stream's state after the objects (noise continues it) */
} xc_shapes_scene;

typedef struct xc_shapes_item {
    uint64_t seed;
    xc_shapes_scene scene;
    xc_shapes_qtype qtype;
    bool image; /* false for text-only questions */
    char question[96];
    char answer[192];
} xc_shapes_item;

/* The scene of item `seed`. */
void xc_shapes_scene_make(uint64_t seed, xc_shapes_scene *sc);

/* Its picture: XC_SHAPES_IMG^2 RGB pixels, row-major. */
void xc_shapes_render(const xc_shapes_scene *sc, uint8_t *rgb);

/* "A red circle at the top left and a blue square on the right." */
void xc_shapes_caption(const xc_shapes_scene *sc, char *buf, size_t n);

/* Item `seed`: its scene and its question (of type `qtype`, or drawn when qtype < 0). */
void xc_shapes_item_make(uint64_t seed, int qtype, xc_shapes_item *it);

/* 1 when `got` answers correctly: the exact answer (surrounding white space ignored); for
 * captions, the same colour and shape words in the same order. */
int xc_shapes_score(xc_shapes_qtype t, const char *expected, const char *got);

/* "caption", "color", ...; parse returns -1 for an unknown name. */
const char *xc_shapes_qtype_name(xc_shapes_qtype t);
int xc_shapes_qtype_parse(const char *name);

/* An 8-bit RGB PNG (libpng). XC_ERR_IO with the path on failure. */
xc_status xc_shapes_write_png(const char *path, const uint8_t *rgb, int w, int h);
