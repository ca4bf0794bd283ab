/* Image decoding and preprocessing against PIL/torchvision fixtures (tools/image/
 * make_fixtures.py): decoded RGB and bicubic resize byte-identical, normalized tensor within
 * 1e-6; limits, truncated, corrupt and unsupported input. Fixture PNGs are read with libpng's
 * simplified API, a path independent of the decoder under test. */
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_image.h"
#include "xc_test.h"

#define IMG_DIR XC_FIXTURE_DIR "/image/"

/* ---- fixture helpers ---- */

static uint8_t *read_file(const char *rel, size_t *n) {
    char path[512];
    snprintf(path, sizeof path, "%s%s", IMG_DIR, rel);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail_msg("cannot open fixture %s (run tools/image/make_fixtures.py)", path);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = xc_malloc(len > 0 ? (size_t)len : 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

/* An 8-bit RGB PNG fixture through libpng's simplified reader. */
static uint8_t *read_png_rgb(const char *rel, int *w, int *h) {
    char path[512];
    snprintf(path, sizeof path, "%s%s", IMG_DIR, rel);
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&im, path)) {
        fail_msg("cannot read %s: %s", path, im.message);
    }
    im.format = PNG_FORMAT_RGB;
    uint8_t *buf = xc_malloc(PNG_IMAGE_SIZE(im));
    assert_non_null(buf);
    if (!png_image_finish_read(&im, NULL, buf, 0, NULL)) {
        fail_msg("cannot decode %s: %s", path, im.message);
    }
    *w = (int)im.width;
    *h = (int)im.height;
    return buf;
}

typedef struct fx_line {
    char kind[8];
    char name[64];
    char a[96]; /* image: SRC; resize: W; tensor: S */
    char b[16]; /* image: MODE; resize: H */
    int w, h;
    char file[128];
} fx_line;

static fx_line fx[256];
static int n_fx;

static void load_manifest(void) {
    if (n_fx) {
        return;
    }
    FILE *f = fopen(IMG_DIR "manifest.txt", "r");
    if (!f) {
        fail_msg("missing %smanifest.txt", IMG_DIR);
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        fx_line *l = &fx[n_fx];
        if (line[0] == '#' || line[0] == '\n') {
            continue;
        }
        assert_true(n_fx < 256);
        memset(l, 0, sizeof *l);
        if (sscanf(line, "%7s %63s", l->kind, l->name) != 2) {
            fail_msg("bad manifest line %s", line);
        }
        if (!strcmp(l->kind, "image")) {
            assert_int_equal(
                sscanf(line, "%*s %*s %95s %15s %d %d %127s", l->a, l->b, &l->w, &l->h, l->file),
                5);
        } else if (!strcmp(l->kind, "resize")) {
            assert_int_equal(sscanf(line, "%*s %*s %d %d %127s", &l->w, &l->h, l->file), 3);
        } else if (!strcmp(l->kind, "tensor")) {
            assert_int_equal(sscanf(line, "%*s %*s %d %127s", &l->w, l->file), 2);
            l->h = l->w;
        } else {
            fail_msg("unknown manifest kind %s", l->kind);
        }
        n_fx++;
    }
    fclose(f);
    assert_true(n_fx > 0);
}

static const fx_line *find_image(const char *name) {
    for (int i = 0; i < n_fx; i++) {
        if (!strcmp(fx[i].kind, "image") && !strcmp(fx[i].name, name)) {
            return &fx[i];
        }
    }
    fail_msg("no image %s in the manifest", name);
    return NULL;
}

static void assert_same_bytes(const char *what, const char *name, const uint8_t *got,
                              const uint8_t *want, size_t n, int w) {
    for (size_t i = 0; i < n; i++) {
        if (got[i] != want[i]) {
            size_t px = i / 3;
            fail_msg("%s %s: byte %zu (x=%zu y=%zu c=%zu) is %d, PIL has %d", what, name, i,
                     px % (size_t)w, px / (size_t)w, i % 3, got[i], want[i]);
        }
    }
}

/* ---- differential tests against PIL ---- */

static void test_image_fixture_set_is_varied(void **state) {
    (void)state;
    load_manifest();
    int images = 0, shrink = 0, enlarge = 0, formats[XC_IMAGE_FORMAT_BMP + 1] = {0};
    const char *modes[] = {"1", "L", "LA", "P", "I", "RGB", "RGBA", "CMYK"};
    int mode_seen[8] = {0};
    for (int i = 0; i < n_fx; i++) {
        if (!strcmp(fx[i].kind, "image")) {
            images++;
            size_t n;
            uint8_t *d = read_file(fx[i].a, &n);
            formats[xc_image_detect(d, n)]++;
            xc_free(d);
            for (int m = 0; m < 8; m++) {
                mode_seen[m] += !strcmp(fx[i].b, modes[m]);
            }
        } else if (!strcmp(fx[i].kind, "resize")) {
            const fx_line *im = find_image(fx[i].name);
            shrink += fx[i].w < im->w && fx[i].h < im->h;
            enlarge += fx[i].w > im->w && fx[i].h > im->h;
        }
    }
    assert_true(images >= 30);
    assert_int_equal(formats[XC_IMAGE_FORMAT_UNKNOWN], 0);
    assert_true(formats[XC_IMAGE_FORMAT_JPEG] >= 5 && formats[XC_IMAGE_FORMAT_PNG] >= 10 &&
                formats[XC_IMAGE_FORMAT_WEBP] >= 4 && formats[XC_IMAGE_FORMAT_GIF] >= 5 &&
                formats[XC_IMAGE_FORMAT_BMP] >= 5);
    for (int m = 0; m < 8; m++) {
        if (!mode_seen[m]) {
            fail_msg("no fixture in PIL mode %s", modes[m]);
        }
    }
    assert_true(shrink >= 10 && enlarge >= 10);
}

/* Header fields and decoded RGB equal PIL's Image.open().mode/.size and convert('RGB'). */
static void test_image_decode_matches_pil(void **state) {
    (void)state;
    load_manifest();
    for (int i = 0; i < n_fx; i++) {
        const fx_line *l = &fx[i];
        if (strcmp(l->kind, "image")) {
            continue;
        }
        size_t n;
        uint8_t *data = read_file(l->a, &n);
        xc_image_info info;
        xc_status st = xc_image_probe(data, n, NULL, &info);
        if (st != XC_OK) {
            fail_msg("probe %s: %s", l->name, xc_err_last());
        }
        if (info.width != l->w || info.height != l->h || strcmp(info.mode, l->b)) {
            fail_msg("%s: header says %dx%d %s, PIL says %dx%d %s", l->name, info.width,
                     info.height, info.mode, l->w, l->h, l->b);
        }
        xc_image img = {0};
        st = xc_image_decode(data, n, NULL, &img);
        if (st != XC_OK) {
            fail_msg("decode %s: %s", l->name, xc_err_last());
        }
        int w, h;
        uint8_t *want = read_png_rgb(l->file, &w, &h);
        assert_int_equal(img.width, w);
        assert_int_equal(img.height, h);
        assert_same_bytes("decode", l->name, img.rgb, want, (size_t)w * h * 3, w);
        xc_free(want);
        xc_image_fini(&img);
        xc_free(data);
    }
}

/* xc_image_resize on PIL's own decoded RGB equals PIL's resize, byte for byte. */
static void test_image_resize_matches_pil(void **state) {
    (void)state;
    load_manifest();
    int checked = 0;
    for (int i = 0; i < n_fx; i++) {
        const fx_line *l = &fx[i];
        if (strcmp(l->kind, "resize")) {
            continue;
        }
        const fx_line *im = find_image(l->name);
        int sw, sh, w, h;
        uint8_t *src = read_png_rgb(im->file, &sw, &sh);
        uint8_t *want = read_png_rgb(l->file, &w, &h);
        assert_int_equal(w, l->w);
        assert_int_equal(h, l->h);
        uint8_t *got = xc_malloc((size_t)w * h * 3);
        assert_non_null(got);
        assert_int_equal(xc_image_resize(src, sw, sh, got, w, h), XC_OK);
        char what[160];
        snprintf(what, sizeof what, "resize %dx%d->%dx%d", sw, sh, w, h);
        assert_same_bytes(what, l->name, got, want, (size_t)w * h * 3, w);
        xc_free(got);
        xc_free(want);
        xc_free(src);
        checked++;
    }
    assert_true(checked >= 60);
}

/* The whole path from the encoded file to the square resized image. */
static void test_image_preprocess_matches_pil(void **state) {
    (void)state;
    load_manifest();
    for (int i = 0; i < n_fx; i++) {
        const fx_line *l = &fx[i];
        if (strcmp(l->kind, "resize") || l->w != l->h) {
            continue;
        }
        const fx_line *im = find_image(l->name);
        size_t n;
        uint8_t *data = read_file(im->a, &n);
        int w, h;
        uint8_t *want = read_png_rgb(l->file, &w, &h);
        uint8_t *got = xc_malloc((size_t)w * h * 3);
        assert_non_null(got);
        if (xc_image_preprocess(data, n, NULL, w, got, NULL) != XC_OK) {
            fail_msg("preprocess %s: %s", l->name, xc_err_last());
        }
        assert_same_bytes("preprocess", l->name, got, want, (size_t)w * h * 3, w);
        xc_free(got);
        xc_free(want);
        xc_free(data);
    }
}

/* The float tensor equals torchvision's Resize + ToTensor + Normalize within 1e-6. */
static void test_image_tensor_matches_torchvision(void **state) {
    (void)state;
    load_manifest();
    int checked = 0;
    for (int i = 0; i < n_fx; i++) {
        const fx_line *l = &fx[i];
        if (strcmp(l->kind, "tensor")) {
            continue;
        }
        const fx_line *im = find_image(l->name);
        size_t n, nt;
        uint8_t *data = read_file(im->a, &n);
        float *want = (float *)read_file(l->file, &nt);
        int s = l->w;
        assert_int_equal(nt, (size_t)3 * s * s * sizeof(float));
        float *got = xc_malloc(nt);
        assert_non_null(got);
        if (xc_image_preprocess(data, n, NULL, s, NULL, got) != XC_OK) {
            fail_msg("preprocess %s: %s", l->name, xc_err_last());
        }
        double worst = 0;
        for (size_t j = 0; j < (size_t)3 * s * s; j++) {
            double d = fabs((double)got[j] - (double)want[j]);
            worst = d > worst ? d : worst;
        }
        if (!(worst <= 1e-6)) {
            fail_msg("tensor %s %d: max |diff| %g > 1e-6", l->name, s, worst);
        }
        xc_free(got);
        xc_free(want);
        xc_free(data);
        checked++;
    }
    assert_true(checked >= 4);
}

/* ---- limits ---- */

static void test_image_limit_bytes(void **state) {
    (void)state;
    size_t n;
    uint8_t *data = read_file("src/jpg_444_333x250.jpg", &n);
    xc_image_limits lim = {.max_bytes = n - 1};
    xc_image img = {0};
    assert_int_equal(xc_image_decode(data, n, &lim, &img), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "max-bytes"));
    assert_null(img.rgb);
    lim.max_bytes = n;
    assert_int_equal(xc_image_decode(data, n, &lim, &img), XC_OK);
    xc_image_fini(&img);
    xc_free(data);
}

static uint32_t crc32_naive(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) {
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        }
    }
    return ~c;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Expects XC_ERR_ARG naming max-pixels: the header is read, the (inconsistent) pixel data is
 * never touched — decoding it would fail with XC_ERR_PROTO instead. */
static void expect_pixel_limit(const uint8_t *d, size_t n, const xc_image_limits *lim) {
    xc_image img = {0};
    xc_image_info info;
    assert_int_equal(xc_image_probe(d, n, lim, &info), XC_ERR_ARG);
    assert_int_equal(xc_image_decode(d, n, lim, &img), XC_ERR_ARG);
    if (!strstr(xc_err_last(), "max-pixels")) {
        fail_msg("unexpected message: %s", xc_err_last());
    }
    assert_null(img.rgb);
}

static void test_image_limit_pixels_before_decode(void **state) {
    (void)state;
    xc_image_limits lim;
    xc_image_limits_default(&lim);
    size_t n;
    /* PNG: IHDR claims 30000x30000 (900 MP), the IDAT is a 64x64 image's. */
    uint8_t *d = read_file("src/png_rgb_trns_color_64x64.png", &n);
    put_be32(d + 16, 30000);
    put_be32(d + 20, 30000);
    put_be32(d + 29, crc32_naive(d + 12, 17));
    expect_pixel_limit(d, n, &lim);
    /* Only the header: 8 + 25 bytes, nothing after IHDR. */
    expect_pixel_limit(d, 33, &lim);
    xc_free(d);

    /* JPEG: SOF0 claims 60000x60000. */
    d = read_file("src/jpg_420_q90_640x480.jpg", &n);
    size_t sof = 0;
    for (size_t i = 2; i + 9 < n; i++) {
        if (d[i] == 0xFF && d[i + 1] == 0xC0) {
            sof = i;
            break;
        }
    }
    assert_true(sof > 0);
    d[sof + 5] = 60000 >> 8;
    d[sof + 6] = 60000 & 0xFF;
    d[sof + 7] = 60000 >> 8;
    d[sof + 8] = 60000 & 0xFF;
    expect_pixel_limit(d, n, &lim);
    xc_free(d);

    /* WebP (simple lossy): the VP8 frame header claims 16383x16383 (268 MP). */
    d = read_file("src/webp_lossy_300x200.webp", &n);
    assert_true(!memcmp(d + 12, "VP8 ", 4) && d[23] == 0x9d && d[24] == 0x01 && d[25] == 0x2a);
    d[26] = 0xFF;
    d[27] = 0x3F;
    d[28] = 0xFF;
    d[29] = 0x3F;
    expect_pixel_limit(d, n, &lim);
    xc_free(d);

    /* A real image exactly at and one pixel over the limit. */
    d = read_file("src/webp_lossless_150x150.webp", &n);
    xc_image img = {0};
    lim.max_pixels = 150 * 150 - 1;
    expect_pixel_limit(d, n, &lim);
    lim.max_pixels = 150 * 150;
    assert_int_equal(xc_image_decode(d, n, &lim, &img), XC_OK);
    xc_image_fini(&img);
    xc_free(d);
}

static void test_image_limit_count(void **state) {
    (void)state;
    xc_image_limits lim;
    xc_image_limits_default(&lim);
    assert_int_equal(xc_image_check_count(lim.max_images, &lim), XC_OK);
    assert_int_equal(xc_image_check_count(lim.max_images + 1, &lim), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "max-images"));
    assert_int_equal(xc_image_check_count(-1, &lim), XC_ERR_ARG);
    lim.max_images = 0; /* no limit */
    assert_int_equal(xc_image_check_count(1000, &lim), XC_OK);
}

/* ---- bad input ---- */

static const char *const bad_input_files[] = {
    "src/jpg_420_q90_640x480.jpg",       "src/jpg_progressive_400x300.jpg",
    "src/jpg_cmyk_120x80.jpg",           "src/jpg_gray_257x129.jpg",
    "src/png_rgb_gradient_320x240.png",  "src/png_interlaced_rgb_150x100.png",
    "src/png_p_adaptive_256x256.png",    "src/png_rgba16_70x100.png",
    "src/webp_lossy_300x200.webp",       "src/webp_lossless_alpha_99x77.webp",
    "src/webp_lossy_alpha_200x120.webp", "src/webp_anim_64x48.webp",
};

/* Every prefix either fails with a message or (when only trailing chunks/markers are cut)
 * decodes to exactly the full image; anything shorter than half the file must fail. */
static void test_image_truncated_files_error_cleanly(void **state) {
    (void)state;
    for (size_t f = 0; f < sizeof bad_input_files / sizeof bad_input_files[0]; f++) {
        size_t n;
        uint8_t *d = read_file(bad_input_files[f], &n);
        xc_image full = {0};
        assert_int_equal(xc_image_decode(d, n, NULL, &full), XC_OK);
        size_t step = n / 97 + 1;
        int errors = 0;
        for (size_t cut = 0; cut < n; cut += (cut + 24 >= n ? 1 : step)) {
            /* A fresh copy of exactly cut bytes, so ASan sees any read past the end. */
            uint8_t *p = xc_malloc(cut ? cut : 1);
            assert_non_null(p);
            memcpy(p, d, cut);
            xc_image img = {0};
            xc_status st = xc_image_decode(p, cut, NULL, &img);
            if (st == XC_OK) {
                if (cut < n / 2 || img.width != full.width || img.height != full.height ||
                    memcmp(img.rgb, full.rgb, (size_t)full.width * full.height * 3)) {
                    fail_msg("%s cut at %zu of %zu decoded to a different image",
                             bad_input_files[f], cut, n);
                }
                xc_image_fini(&img);
            } else {
                assert_true(st == XC_ERR_PROTO || st == XC_ERR_UNSUPPORTED);
                assert_true(strlen(xc_err_last()) > 10);
                assert_null(img.rgb);
                errors++;
            }
            xc_free(p);
        }
        assert_true(errors > 90);
        xc_image_fini(&full);
        xc_free(d);
    }
}

/* Deterministic byte corruption: any status is fine, but no crash, leak or hang (ASan/UBSan in
 * the sanitizer build), errors carry a message, and a success has the header's size. */
static void test_image_corrupt_files_never_crash(void **state) {
    (void)state;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    /* A flipped size byte can claim a huge image; keep the test fast with a tight limit. */
    xc_image_limits lim = {.max_pixels = 1u << 20};
    for (size_t f = 0; f < sizeof bad_input_files / sizeof bad_input_files[0]; f++) {
        size_t n;
        uint8_t *d = read_file(bad_input_files[f], &n);
        uint8_t *p = xc_malloc(n);
        assert_non_null(p);
        for (int trial = 0; trial < 40; trial++) {
            memcpy(p, d, n);
            int flips = 1 + trial % 8;
            for (int k = 0; k < flips; k++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)(rng >> 33) % n;
                p[at] ^= (uint8_t)(1 + ((rng >> 20) & 0xFE));
            }
            xc_image img = {0};
            xc_image_info info;
            xc_status st = xc_image_decode(p, n, &lim, &img);
            if (st == XC_OK) {
                assert_int_equal(xc_image_probe(p, n, &lim, &info), XC_OK);
                assert_int_equal(img.width, info.width);
                assert_int_equal(img.height, info.height);
                xc_image_fini(&img);
            } else {
                assert_true(strlen(xc_err_last()) > 10);
            }
        }
        xc_free(p);
        xc_free(d);
    }
}

static void expect_unsupported(const void *d, size_t n, const char *needle) {
    xc_image img = {0};
    assert_int_equal(xc_image_decode(d, n, NULL, &img), XC_ERR_UNSUPPORTED);
    if (!strstr(xc_err_last(), needle)) {
        fail_msg("message '%s' does not mention '%s'", xc_err_last(), needle);
    }
    assert_null(img.rgb);
}

/* A BMP with a 40-byte header of the given depth and compression (and 256 palette entries when
 * bpp <= 8), 4x2 pixels of zeros. */
static size_t bmp_header(uint8_t *b, int bpp, uint32_t comp) {
    size_t pal = bpp <= 8 ? (size_t)4 << bpp : 0, off = 14 + 40 + pal, n = off + 64;
    memset(b, 0, n);
    b[0] = 'B', b[1] = 'M';
    b[2] = (uint8_t)n, b[3] = (uint8_t)(n >> 8);
    b[10] = (uint8_t)off, b[11] = (uint8_t)(off >> 8);
    b[14] = 40, b[18] = 4, b[22] = 2, b[26] = 1, b[28] = (uint8_t)bpp, b[30] = (uint8_t)comp;
    return n;
}

static void test_image_unsupported_formats(void **state) {
    (void)state;
    expect_unsupported("II*\0\x08\0\0\0", 8, "TIFF");
    expect_unsupported("hello, I am not an image", 24, "only JPEG, PNG, WebP, GIF and BMP");
    /* GIF and BMP decode (test_image_matches_pil); the variants PIL reads differently from
     * stb_image, or that are not decoded, are refused by name */
    static uint8_t b[14 + 40 + 1024 + 64];
    expect_unsupported(b, bmp_header(b, 8, 1), "RLE");
    expect_unsupported(b, bmp_header(b, 4, 2), "RLE");
    expect_unsupported(b, bmp_header(b, 16, 0), "16-bit");
    expect_unsupported(b, bmp_header(b, 16, 3), "16-bit BMP with bit masks");
    size_t n = bmp_header(b, 8, 0);
    b[46] = 16; /* 16 colors declared for an 8-bit image */
    expect_unsupported(b, n, "fewer than 256 colors");
    n = bmp_header(b, 24, 0);
    xc_image im = {0};
    assert_int_equal(xc_image_decode(b, n, NULL, &im), XC_OK); /* a valid 24-bit one decodes */
    assert_true(im.width == 4 && im.height == 2 && im.rgb[0] == 0);
    xc_image_fini(&im);
    assert_int_equal(xc_image_decode(b, 20, NULL, &im), XC_ERR_PROTO); /* truncated header */
    assert_int_equal(xc_image_decode("GIF89a\x01\x00\x01\x00\x00\x00\x00;", 14, NULL, &im),
                     XC_ERR_PROTO); /* no image in it */
    assert_non_null(strstr(xc_err_last(), "GIF"));
    xc_image img = {0};
    assert_int_equal(xc_image_decode("", 0, NULL, &img), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "empty"));
}

static void test_image_resize_rejects_bad_sizes(void **state) {
    (void)state;
    uint8_t px[3] = {1, 2, 3}, out[12];
    assert_int_equal(xc_image_resize(px, 1, 1, out, 0, 2), XC_ERR_ARG);
    assert_int_equal(xc_image_resize(px, 0, 1, out, 2, 2), XC_ERR_ARG);
    assert_int_equal(xc_image_resize(NULL, 1, 1, out, 2, 2), XC_ERR_ARG);
    assert_int_equal(xc_image_resize(px, 1, 1, out, 2, 2), XC_OK);
    /* A constant image stays constant whatever the filter does. */
    for (int i = 0; i < 12; i++) {
        assert_int_equal(out[i], px[i % 3]);
    }
    assert_int_equal(xc_image_preprocess(px, 3, NULL, 0, NULL, NULL), XC_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_fixture_set_is_varied),
        cmocka_unit_test(test_image_decode_matches_pil),
        cmocka_unit_test(test_image_resize_matches_pil),
        cmocka_unit_test(test_image_preprocess_matches_pil),
        cmocka_unit_test(test_image_tensor_matches_torchvision),
        cmocka_unit_test(test_image_limit_bytes),
        cmocka_unit_test(test_image_limit_pixels_before_decode),
        cmocka_unit_test(test_image_limit_count),
        cmocka_unit_test(test_image_truncated_files_error_cleanly),
        cmocka_unit_test(test_image_corrupt_files_never_crash),
        cmocka_unit_test(test_image_unsupported_formats),
        cmocka_unit_test(test_image_resize_rejects_bad_sizes),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
