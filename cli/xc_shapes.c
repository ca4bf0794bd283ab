/* The shapes world (see xc_shapes.h); the specification is tools/train/shapes_world.py. */
#include "xc_shapes.h"

#include <ctype.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CELL     (XC_SHAPES_IMG / 3)
#define NOISE    20
#define N_SHAPES 4
#define N_COLORS 6

static const char *const shape_names[N_SHAPES] = {"circle", "square", "triangle", "star"};
static const char *const color_names[N_COLORS] = {"red",    "green",  "blue",
                                                  "yellow", "purple", "orange"};
static const uint8_t color_rgb[N_COLORS][3] = {{215, 40, 40},  {40, 170, 60},  {45, 75, 215},
                                               {235, 215, 40}, {140, 60, 190}, {245, 135, 25}};
static const char *const positions[9] = {"top left",    "top",    "top right",
                                         "left",        "center", "right",
                                         "bottom left", "bottom", "bottom right"};
static const char *const numbers[4] = {"zero", "one", "two", "three"};
static const char *const corners[N_SHAPES] = {"zero", "four", "three", "ten"};
static const char *const qtype_names[XC_SHAPES_NQ] = {"caption", "color",  "shape", "where",
                                                      "count",   "exists", "text"};
/* a five-pointed star pointing up, outer radius 1000, inner 400, y downwards (rounded) */
static const int star[10][2] = {{0, -1000}, {235, -324}, {951, -309}, {380, 124},   {588, 809},
                                {0, 400},   {-588, 809}, {-380, 124}, {-951, -309}, {-235, -324}};

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) {
    r->s += 0x9E3779B97F4A7C15ull;
    uint64_t z = r->s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int rnd(rng *r, int n) {
    return (int)(rng_next(r) % (uint64_t)n);
}

/* k distinct values of 0..n-1 (partial Fisher-Yates), in drawing order */
static void pick(rng *r, int n, int k, int *out) {
    int a[16];
    for (int i = 0; i < n; i++) {
        a[i] = i;
    }
    for (int i = 0; i < k; i++) {
        int j = i + rnd(r, n - i);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
        out[i] = a[i];
    }
}

void xc_shapes_scene_make(uint64_t seed, xc_shapes_scene *sc) {
    memset(sc, 0, sizeof *sc);
    rng r = {2 * seed};
    sc->seed = seed;
    int level = 80 + rnd(&r, 96);
    for (int c = 0; c < 3; c++) {
        sc->bg[c] = level + rnd(&r, 21) - 10;
    }
    sc->noisy = rnd(&r, 2) != 0;
    sc->n = 1 + rnd(&r, 3);
    int cells[XC_SHAPES_MAX_OBJ], kinds[XC_SHAPES_MAX_OBJ];
    pick(&r, 9, sc->n, cells);
    pick(&r, N_SHAPES, sc->n, kinds);
    for (int i = 0; i < sc->n; i++) {
        xc_shapes_obj *o = &sc->obj[i];
        o->color = rnd(&r, N_COLORS);
        o->r2 = 16 + rnd(&r, 9);
        int jx = rnd(&r, 5) - 2;
        int jy = rnd(&r, 5) - 2;
        o->cell = cells[i];
        o->shape = kinds[i];
        o->cx2 = (o->cell % 3) * 2 * CELL + CELL + jx;
        o->cy2 = (o->cell / 3) * 2 * CELL + CELL + jy;
    }
    for (int i = 1; i < sc->n; i++) { /* sort by cell (cells are distinct) */
        for (int j = i; j > 0 && sc->obj[j - 1].cell > sc->obj[j].cell; j--) {
            xc_shapes_obj t = sc->obj[j];
            sc->obj[j] = sc->obj[j - 1];
            sc->obj[j - 1] = t;
        }
    }
    sc->noise_state = r.s;
}

static bool inside(const xc_shapes_obj *o, int x, int y) {
    int64_t dx = 2 * x + 1 - o->cx2, dy = 2 * y + 1 - o->cy2, r2 = o->r2;
    switch (o->shape) {
    case 0:
        return dx * dx + dy * dy <= r2 * r2;
    case 1: {
        int64_t h = r2 * 4 / 5;
        return llabs(dx) <= h && llabs(dy) <= h;
    }
    case 2:
        return dy <= r2 && 2 * llabs(dx) <= dy + r2;
    default: {
        int64_t px = dx * 1000, py = dy * 1000;
        bool in = false;
        for (int i = 0; i < 10; i++) {
            int64_t ax = star[i][0] * r2, ay = star[i][1] * r2;
            int64_t bx = star[(i + 1) % 10][0] * r2, by = star[(i + 1) % 10][1] * r2;
            if ((ay > py) != (by > py)) {
                int64_t lhs = (px - ax) * (by - ay), rhs = (py - ay) * (bx - ax);
                if (by - ay > 0 ? lhs < rhs : lhs > rhs) {
                    in = !in;
                }
            }
        }
        return in;
    }
    }
}

void xc_shapes_render(const xc_shapes_scene *sc, uint8_t *rgb) {
    rng r = {sc->noise_state};
    for (int i = 0; i < XC_SHAPES_IMG * XC_SHAPES_IMG * 3; i++) {
        int v = sc->bg[i % 3];
        if (sc->noisy) {
            v += rnd(&r, 2 * NOISE + 1) - NOISE;
            v = v < 0 ? 0 : v > 255 ? 255 : v;
        }
        rgb[i] = (uint8_t)v;
    }
    for (int k = 0; k < sc->n; k++) {
        const xc_shapes_obj *o = &sc->obj[k];
        for (int y = 0; y < XC_SHAPES_IMG; y++) {
            for (int x = 0; x < XC_SHAPES_IMG; x++) {
                if (inside(o, x, y)) {
                    memcpy(rgb + ((size_t)y * XC_SHAPES_IMG + (size_t)x) * 3, color_rgb[o->color],
                           3);
                }
            }
        }
    }
}

/* "at the top left", "in the center", "on the left" */
static const char *prep(int cell) {
    return cell == 4 ? "in" : (cell == 3 || cell == 5) ? "on" : "at";
}

void xc_shapes_caption(const xc_shapes_scene *sc, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < sc->n && len < n; i++) {
        const xc_shapes_obj *o = &sc->obj[i];
        const char *col = color_names[o->color];
        const char *sep = i == 0 ? "" : i == sc->n - 1 ? " and " : ", ";
        int w = snprintf(buf + len, n - len, "%s%s %s %s %s the %s", sep,
                         strchr("aeiou", col[0]) ? "an" : "a", col, shape_names[o->shape],
                         prep(o->cell), positions[o->cell]);
        len += w > 0 ? (size_t)w : 0;
    }
    if (len + 1 < n) {
        buf[len] = '.';
        buf[len + 1] = 0;
    }
    buf[0] = (char)toupper((unsigned char)buf[0]);
}

void xc_shapes_item_make(uint64_t seed, int qtype, xc_shapes_item *it) {
    memset(it, 0, sizeof *it);
    it->seed = seed;
    xc_shapes_scene_make(seed, &it->scene);
    const xc_shapes_scene *sc = &it->scene;
    rng r = {2 * seed + 1};
    int t = rnd(&r, XC_SHAPES_NQ);
    if (qtype >= 0 && qtype < XC_SHAPES_NQ) {
        t = qtype;
    }
    const xc_shapes_obj *o = &sc->obj[rnd(&r, sc->n)];
    it->qtype = (xc_shapes_qtype)t;
    it->image = t != XC_SHAPES_Q_TEXT;
    char *q = it->question, *a = it->answer;
    size_t qn = sizeof it->question, an = sizeof it->answer;
    switch (it->qtype) {
    case XC_SHAPES_Q_CAPTION:
        snprintf(q, qn, "Describe the image.");
        xc_shapes_caption(sc, a, an);
        break;
    case XC_SHAPES_Q_COLOR:
        snprintf(q, qn, "What color is the %s?", shape_names[o->shape]);
        snprintf(a, an, "%s", color_names[o->color]);
        break;
    case XC_SHAPES_Q_SHAPE:
        snprintf(q, qn, "What shape is %s the %s?", prep(o->cell), positions[o->cell]);
        snprintf(a, an, "%s", shape_names[o->shape]);
        break;
    case XC_SHAPES_Q_WHERE:
        snprintf(q, qn, "Where is the %s %s?", color_names[o->color], shape_names[o->shape]);
        snprintf(a, an, "%s", positions[o->cell]);
        break;
    case XC_SHAPES_Q_COUNT:
        snprintf(q, qn, "How many shapes are there?");
        snprintf(a, an, "%s", numbers[sc->n]);
        break;
    case XC_SHAPES_Q_EXISTS: {
        int c = o->color, s = o->shape;
        if (!rnd(&r, 2)) {
            c = rnd(&r, N_COLORS);
            s = rnd(&r, N_SHAPES);
        }
        bool yes = false;
        for (int i = 0; i < sc->n; i++) {
            yes |= sc->obj[i].color == c && sc->obj[i].shape == s;
        }
        snprintf(q, qn, "Is there a %s %s?", color_names[c], shape_names[s]);
        snprintf(a, an, "%s", yes ? "yes" : "no");
        break;
    }
    default:
        if (rnd(&r, 2)) {
            int x = rnd(&r, 10);
            int y = rnd(&r, 10);
            snprintf(q, qn, "What is %d plus %d?", x, y);
            snprintf(a, an, "%d", x + y);
        } else {
            int s = rnd(&r, N_SHAPES);
            snprintf(q, qn, "How many corners does a %s have?", shape_names[s]);
            snprintf(a, an, "%s", corners[s]);
        }
        break;
    }
}

/* The colour and shape words of a caption, in order, as indexes (colours 0.., shapes 100..). */
static int caption_words(const char *s, int *out, int max) {
    int n = 0;
    while (*s) {
        while (*s && (isspace((unsigned char)*s) || *s == '.' || *s == ',')) {
            s++;
        }
        size_t l = 0;
        while (s[l] && !isspace((unsigned char)s[l]) && s[l] != '.' && s[l] != ',') {
            l++;
        }
        if (!l) {
            break;
        }
        for (int i = 0; i < N_COLORS + N_SHAPES; i++) {
            const char *w = i < N_COLORS ? color_names[i] : shape_names[i - N_COLORS];
            if (strlen(w) == l && !strncmp(s, w, l)) {
                if (n < max) {
                    out[n] = i;
                }
                n++;
            }
        }
        s += l;
    }
    return n;
}

int xc_shapes_score(xc_shapes_qtype t, const char *expected, const char *got) {
    if (t == XC_SHAPES_Q_CAPTION) {
        int a[64], b[64];
        int na = caption_words(expected, a, 64), nb = caption_words(got, b, 64);
        return na == nb && na <= 64 && !memcmp(a, b, (size_t)na * sizeof a[0]);
    }
    while (isspace((unsigned char)*got)) {
        got++;
    }
    size_t l = strlen(got);
    while (l > 0 && isspace((unsigned char)got[l - 1])) {
        l--;
    }
    return l == strlen(expected) && !strncmp(got, expected, l);
}

const char *xc_shapes_qtype_name(xc_shapes_qtype t) {
    return (int)t >= 0 && t < XC_SHAPES_NQ ? qtype_names[t] : "?";
}

int xc_shapes_qtype_parse(const char *name) {
    for (int i = 0; i < XC_SHAPES_NQ; i++) {
        if (!strcmp(name, qtype_names[i])) {
            return i;
        }
    }
    return -1;
}

xc_status xc_shapes_write_png(const char *path, const uint8_t *rgb, int w, int h) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&img, path, 0, rgb, w * 3, NULL)) {
        xc_status st = xc_errf(XC_ERR_IO, "cannot write PNG %s: %s", path, img.message);
        png_image_free(&img);
        return st;
    }
    return XC_OK;
}
