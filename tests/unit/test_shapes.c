/* The shapes world in C (cli/xc_shapes.c) against its Python specification
 * (tools/train/shapes_world.py, the generator the shapes model was trained on): for every item of
 * tests/fixtures/shapes/world.json, the same question, answer, caption and the same pixels (FNV-1a
 * 64 over the RGB bytes, and their sum). Also the scoring rules and the PNG writer (read back with
 * libpng). */
#include <cjson/cJSON.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_shapes.h"
#include "xc_test.h"

#define NPX (XC_SHAPES_IMG * XC_SHAPES_IMG * 3)

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

static uint64_t fnv1a64(const uint8_t *p, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001B3ull;
    }
    return h;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

static void test_shapes_matches_python(void **state) {
    (void)state;
    char *text = slurp(XC_FIXTURE_DIR "/shapes/world.json");
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItem(root, "image_size")->valueint, XC_SHAPES_IMG);
    const cJSON *items = cJSON_GetObjectItem(root, "items");
    int n = 0, seen[XC_SHAPES_NQ] = {0};
    uint8_t *px = malloc(NPX);
    assert_non_null(px);
    for (const cJSON *o = items->child; o; o = o->next, n++) {
        uint64_t seed = strtoull(str(o, "seed_str"), NULL, 10);
        const cJSON *forced = cJSON_GetObjectItem(o, "forced_type");
        int qt = cJSON_IsString(forced) ? xc_shapes_qtype_parse(forced->valuestring) : -1;
        xc_shapes_item it;
        xc_shapes_item_make(seed, qt, &it);
        assert_string_equal(xc_shapes_qtype_name(it.qtype), str(o, "qtype"));
        assert_string_equal(it.question, str(o, "question"));
        assert_string_equal(it.answer, str(o, "answer"));
        assert_int_equal(it.image, cJSON_IsTrue(cJSON_GetObjectItem(o, "image")));
        char cap[256];
        xc_shapes_caption(&it.scene, cap, sizeof cap);
        assert_string_equal(cap, str(o, "caption"));
        xc_shapes_render(&it.scene, px);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64(px, NPX));
        long long sum = 0;
        for (int i = 0; i < NPX; i++) {
            sum += px[i];
        }
        assert_int_equal(sum, (long long)cJSON_GetObjectItem(o, "pixel_sum")->valuedouble);
        assert_string_equal(hex, str(o, "pixels_fnv1a64"));
        seen[it.qtype]++;
    }
    assert_true(n >= 40);
    for (int t = 0; t < XC_SHAPES_NQ; t++) {
        assert_true(seen[t] > 0); /* every question type is covered */
    }
    free(px);
    cJSON_Delete(root);
    free(text);
}

/* Different seeds give different pictures; each shape covers the pixel at its centre and leaves
 * the corners of its cell to the background. */
static void test_shapes_render_content(void **state) {
    (void)state;
    uint8_t *a = malloc(NPX), *b = malloc(NPX);
    assert_non_null(a);
    assert_non_null(b);
    xc_shapes_scene s1, s2;
    xc_shapes_scene_make(5, &s1);
    xc_shapes_scene_make(6, &s2);
    xc_shapes_render(&s1, a);
    xc_shapes_render(&s2, b);
    assert_true(memcmp(a, b, NPX) != 0);
    for (uint64_t seed = 0; seed < 50; seed++) {
        xc_shapes_scene sc;
        xc_shapes_scene_make(seed, &sc);
        assert_true(sc.n >= 1 && sc.n <= 3);
        sc.noisy = false;
        xc_shapes_render(&sc, a);
        for (int k = 0; k < sc.n; k++) {
            const xc_shapes_obj *o = &sc.obj[k];
            const uint8_t *c =
                a + ((size_t)(o->cy2 / 2) * XC_SHAPES_IMG + (size_t)(o->cx2 / 2)) * 3;
            assert_true(c[0] != sc.bg[0] || c[1] != sc.bg[1] || c[2] != sc.bg[2]);
            int x0 = (o->cell % 3) * (XC_SHAPES_IMG / 3), y0 = (o->cell / 3) * (XC_SHAPES_IMG / 3);
            const uint8_t *corner = a + ((size_t)y0 * XC_SHAPES_IMG + (size_t)x0) * 3;
            for (int ch = 0; ch < 3; ch++) {
                assert_int_equal(corner[ch], sc.bg[ch]);
            }
        }
    }
    free(a);
    free(b);
}

static void test_shapes_score(void **state) {
    (void)state;
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_COLOR, "red", "red"), 1);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_COLOR, "red", " red\n"), 1);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_COLOR, "red", "Red"), 0);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_COLOR, "red", "red."), 0);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_WHERE, "top left", "top"), 0);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_TEXT, "14", "14"), 1);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_TEXT, "14", ""), 0);
    const char *cap = "A red circle at the top left and a blue square on the right.";
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_CAPTION, cap, cap), 1);
    /* positions are not scored in captions; colour and shape words and their order are */
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_CAPTION, cap,
                                     "A red circle at the bottom and a blue square at the top."),
                     1);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_CAPTION, cap, "A red circle at the top left."), 0);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_CAPTION, cap,
                                     "A blue square on the right and a red circle at the top."),
                     0);
    assert_int_equal(xc_shapes_score(XC_SHAPES_Q_CAPTION, cap,
                                     "A red star at the top left and a blue square on the right."),
                     0);
    assert_int_equal(xc_shapes_qtype_parse("where"), XC_SHAPES_Q_WHERE);
    assert_int_equal(xc_shapes_qtype_parse("colour"), -1);
}

static void test_shapes_png_roundtrip(void **state) {
    (void)state;
    uint8_t *px = malloc(NPX), *back = malloc(NPX);
    assert_non_null(px);
    assert_non_null(back);
    xc_shapes_scene sc;
    xc_shapes_scene_make(42, &sc);
    xc_shapes_render(&sc, px);
    char path[] = "/tmp/xc-test-shapes-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(xc_shapes_write_png(path, px, XC_SHAPES_IMG, XC_SHAPES_IMG), XC_OK);
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    assert_true(png_image_begin_read_from_file(&img, path));
    assert_int_equal(img.width, XC_SHAPES_IMG);
    assert_int_equal(img.height, XC_SHAPES_IMG);
    img.format = PNG_FORMAT_RGB;
    assert_true(png_image_finish_read(&img, NULL, back, XC_SHAPES_IMG * 3, NULL));
    assert_memory_equal(px, back, NPX);
    unlink(path);
    assert_int_equal(
        xc_shapes_write_png("/nonexistent-dir/x.png", px, XC_SHAPES_IMG, XC_SHAPES_IMG), XC_ERR_IO);
    free(px);
    free(back);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes_matches_python),
        cmocka_unit_test(test_shapes_render_content),
        cmocka_unit_test(test_shapes_score),
        cmocka_unit_test(test_shapes_png_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
