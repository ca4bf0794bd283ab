/* Image decoding and CLIP preprocessing with the bytes PIL + torchvision produce: decoders
 * (libjpeg-turbo, libpng, libwebp) followed by PIL's convert('RGB') rules, PIL's fixed-point
 * bicubic resize, and ToTensor + Normalize in float32. */
#include "xc_image.h"

#include <limits.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <webp/decode.h>
#include <webp/demux.h>
/* jpeglib.h uses FILE without including stdio.h, so it must come after it. */
// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include "xc_mem.h"

const float xc_image_clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float xc_image_clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* Progressive JPEGs with thousands of scans are a CPU bomb; real encoders write about 10. */
#define XC_JPEG_MAX_SCANS 500
/* Largest side accepted by the resizer (PIL keeps box sizes in float: exact up to 2^24). */
#define XC_IMAGE_MAX_SIDE (1 << 24)

void xc_image_limits_default(xc_image_limits *lim) {
    lim->max_bytes = XC_IMAGE_DEFAULT_MAX_BYTES;
    lim->max_pixels = XC_IMAGE_DEFAULT_MAX_PIXELS;
    lim->max_images = XC_IMAGE_DEFAULT_MAX_IMAGES;
}

const char *xc_image_format_name(xc_image_format fmt) {
    switch (fmt) {
    case XC_IMAGE_FORMAT_JPEG:
        return "jpeg";
    case XC_IMAGE_FORMAT_PNG:
        return "png";
    case XC_IMAGE_FORMAT_WEBP:
        return "webp";
    default:
        return "unknown";
    }
}

xc_image_format xc_image_detect(const void *data, size_t n) {
    const uint8_t *p = data;
    if (!p) {
        return XC_IMAGE_FORMAT_UNKNOWN;
    }
    if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) {
        return XC_IMAGE_FORMAT_JPEG;
    }
    if (n >= 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", 8)) {
        return XC_IMAGE_FORMAT_PNG;
    }
    if (n >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4)) {
        return XC_IMAGE_FORMAT_WEBP;
    }
    return XC_IMAGE_FORMAT_UNKNOWN;
}

/* Names the formats people send most often, for a clearer "unsupported" message. */
static const char *other_format_name(const uint8_t *p, size_t n) {
    if (n >= 6 && (!memcmp(p, "GIF87a", 6) || !memcmp(p, "GIF89a", 6))) {
        return "GIF";
    }
    if (n >= 2 && p[0] == 'B' && p[1] == 'M') {
        return "BMP";
    }
    if (n >= 4 && (!memcmp(p, "II*\0", 4) || !memcmp(p, "MM\0*", 4))) {
        return "TIFF";
    }
    if (n >= 12 && !memcmp(p + 4, "ftyp", 4)) {
        return "HEIF/AVIF";
    }
    if (n >= 4 && !memcmp(p, "\0\0\1\0", 4)) {
        return "ICO";
    }
    return NULL;
}

xc_status xc_image_check_count(int n, const xc_image_limits *lim) {
    if (n < 0) {
        return xc_errf(XC_ERR_ARG, "negative image count %d", n);
    }
    if (lim && lim->max_images > 0 && n > lim->max_images) {
        return xc_errf(XC_ERR_ARG, "%d images in one request exceed the limit of %d (max-images)",
                       n, lim->max_images);
    }
    return XC_OK;
}

/* Checks the header's dimensions against the limits; called before pixel data is decoded. */
static xc_status check_dims(const char *fmt, uint64_t w, uint64_t h, const xc_image_limits *lim) {
    if (w == 0 || h == 0) {
        return xc_errf(XC_ERR_PROTO, "%s header has an empty size %llux%llu", fmt,
                       (unsigned long long)w, (unsigned long long)h);
    }
    if (w > INT_MAX / 4 || h > INT_MAX / 4) {
        return xc_errf(XC_ERR_ARG, "%s image %llux%llu is too large", fmt, (unsigned long long)w,
                       (unsigned long long)h);
    }
    if (lim && lim->max_pixels > 0 && w * h > lim->max_pixels) {
        return xc_errf(XC_ERR_ARG,
                       "%s image %llux%llu has %llu pixels, over the limit of %llu (max-pixels)",
                       fmt, (unsigned long long)w, (unsigned long long)h,
                       (unsigned long long)(w * h), (unsigned long long)lim->max_pixels);
    }
    return XC_OK;
}

/* Allocates the (h, w, 3) output with an overflow check. */
static uint8_t *alloc_rgb(int w, int h) {
    size_t n;
    if (xc_mul_overflow((size_t)w * 3, (size_t)h, &n)) {
        return NULL;
    }
    return xc_malloc(n);
}

/* ---- PIL mode conversions to RGB (Convert.c semantics, re-derived) ---- */

/* Gray to RGB ("L" -> "RGB": the value is repeated). */
static void gray_to_rgb(const uint8_t *in, int w, uint8_t *out) {
    for (int x = 0; x < w; x++) {
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = in[x];
    }
}

/* a*b/255 rounded the way PIL's MULDIV255 does it (exact for 8-bit operands). */
static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

/* Adobe-style inverted CMYK (PIL's "CMYK;I" raw mode) to RGB, as PIL's cmyk2rgb. */
static void cmyk_inv_to_rgb(const uint8_t *in, int w, uint8_t *out) {
    for (int x = 0; x < w; x++) {
        /* Inverted samples: c = 255 - raw; PIL's nk = 255 - k = the raw K byte. */
        int c = 255 - in[4 * x], m = 255 - in[4 * x + 1], y = 255 - in[4 * x + 2];
        int nk = in[4 * x + 3];
        int v[3] = {nk - muldiv255(c, nk), nk - muldiv255(m, nk), nk - muldiv255(y, nk)};
        for (int i = 0; i < 3; i++) {
            out[3 * x + i] = (uint8_t)(v[i] < 0 ? 0 : v[i] > 255 ? 255 : v[i]);
        }
    }
}

/* ---- JPEG (libjpeg-turbo with PIL's settings: islow DCT, fancy upsampling, full size) ---- */

typedef struct jpeg_err {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
} jpeg_err;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    cinfo->err->format_message(cinfo, e->msg);
    longjmp(e->jb, 1);
}

/* Warnings are ignored as PIL ignores them, except running out of data: PIL refuses truncated
 * files, and libjpeg would otherwise pad them with gray. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level < 0) {
        if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
            jpeg_on_error(cinfo);
        }
        cinfo->err->num_warnings++;
    }
}

static void jpeg_on_output(j_common_ptr cinfo) {
    (void)cinfo;
}

static void jpeg_on_progress(j_common_ptr cinfo) {
    if (cinfo->is_decompressor &&
        ((j_decompress_ptr)cinfo)->input_scan_number > XC_JPEG_MAX_SCANS) {
        jpeg_err *e = (jpeg_err *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", XC_JPEG_MAX_SCANS);
        longjmp(e->jb, 1);
    }
}

/* Header only when out is NULL. */
static xc_status jpeg_decode(const uint8_t *data, size_t n, const xc_image_limits *lim,
                             xc_image_info *info, xc_image *out) {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_progress_mgr prog;
    jpeg_err err;
    uint8_t *volatile rgb = NULL;
    uint8_t *volatile row = NULL;
    volatile xc_status st = XC_OK;

    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.emit_message = jpeg_on_message;
    err.pub.output_message = jpeg_on_output;
    err.msg[0] = '\0';
    if (setjmp(err.jb)) {
        jpeg_destroy_decompress(&cinfo);
        xc_free(rgb);
        xc_free(row);
        return xc_errf(XC_ERR_PROTO, "corrupt or truncated JPEG: %s", err.msg);
    }
    jpeg_create_decompress(&cinfo);
    prog.progress_monitor = jpeg_on_progress;
    cinfo.progress = &prog;
    jpeg_mem_src(&cinfo, data, (unsigned long)n);
    jpeg_read_header(&cinfo, TRUE);

    const char *mode;
    J_COLOR_SPACE cs;
    switch (cinfo.num_components) {
    case 1:
        mode = "L";
        cs = JCS_GRAYSCALE;
        break;
    case 3:
        mode = "RGB";
        cs = JCS_RGB;
        break;
    case 4:
        mode = "CMYK";
        cs = JCS_CMYK;
        break;
    default:
        st = xc_errf(XC_ERR_UNSUPPORTED, "JPEG with %d color components is not supported",
                     cinfo.num_components);
        goto out;
    }
    info->format = XC_IMAGE_FORMAT_JPEG;
    info->width = (int)cinfo.image_width;
    info->height = (int)cinfo.image_height;
    snprintf(info->mode, sizeof info->mode, "%s", mode);
    st = check_dims("JPEG", cinfo.image_width, cinfo.image_height, lim);
    if (st != XC_OK || !out) {
        goto out;
    }

    /* The library defaults, spelled out: these are what PIL decodes with (no draft mode). */
    cinfo.out_color_space = cs;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    cinfo.scale_num = cinfo.scale_denom = 1;
    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
    int nc = cinfo.output_components;
    rgb = alloc_rgb(w, h);
    if (nc != 3) {
        row = xc_malloc((size_t)w * (size_t)nc);
    }
    if (!rgb || (nc != 3 && !row)) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory for a %dx%d JPEG", w, h);
        goto out;
    }
    while ((int)cinfo.output_scanline < h) {
        uint8_t *dst = rgb + (size_t)cinfo.output_scanline * (size_t)w * 3;
        JSAMPROW rp = nc == 3 ? dst : row;
        if (jpeg_read_scanlines(&cinfo, &rp, 1) != 1) {
            st = xc_errf(XC_ERR_PROTO, "corrupt JPEG: no scanline returned");
            goto out;
        }
        if (nc == 1) {
            gray_to_rgb(row, w, dst);
        } else if (nc == 4) {
            cmyk_inv_to_rgb(row, w, dst);
        }
    }
    /* Like PIL, the image is complete once every scanline is decoded: a missing EOI is not an
     * error, so jpeg_finish_decompress (which would look for it) is not called. */
    out->width = w;
    out->height = h;
    out->rgb = rgb;
    rgb = NULL;
out:
    jpeg_destroy_decompress(&cinfo);
    xc_free(rgb);
    xc_free(row);
    return st;
}

xc_status xc_image_write_jpeg(const uint8_t *rgb, int w, int h, int quality, uint8_t **out,
                              size_t *n) {
    if (!rgb || w < 1 || h < 1 || w > 65500 || h > 65500 || quality < 1 || quality > 100) {
        return xc_errf(XC_ERR_ARG, "write_jpeg: bad image %dx%d or quality %d", w, h, quality);
    }
    struct jpeg_compress_struct cinfo;
    jpeg_err err;
    unsigned char *volatile buf = NULL;
    unsigned long len = 0;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.output_message = jpeg_on_output;
    if (setjmp(err.jb)) {
        jpeg_destroy_compress(&cinfo);
        free(buf); /* jpeg_mem_dest allocates with malloc */
        return xc_errf(XC_ERR_NOMEM, "JPEG encoding failed: %s", err.msg);
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, (unsigned char **)&buf, &len);
    cinfo.image_width = (JDIMENSION)w;
    cinfo.image_height = (JDIMENSION)h;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)cinfo.next_scanline * (size_t)w * 3);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    uint8_t *copy = xc_malloc(len);
    if (!copy) {
        free(buf);
        return xc_errf(XC_ERR_NOMEM, "out of memory for a %lu-byte JPEG", len);
    }
    memcpy(copy, buf, len);
    free(buf);
    *out = copy;
    *n = len;
    return XC_OK;
}

/* ---- PNG (libpng for the bitstream; conversions as PIL's PNG plugin + convert) ---- */

typedef struct png_src {
    const uint8_t *data;
    size_t n;
    size_t pos;
    char msg[160];
} png_src;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_src *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void png_on_read(png_structp png, png_bytep dst, size_t len) {
    png_src *s = png_get_io_ptr(png);
    if (len > s->n - s->pos) {
        png_error(png, "file is truncated");
    }
    memcpy(dst, s->data + s->pos, len);
    s->pos += len;
}

/* PIL's mode for a PNG header (PngImagePlugin's table). */
static const char *png_mode(int color_type, int depth) {
    switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
        return depth == 1 ? "1" : depth == 16 ? "I" : "L";
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        return depth == 16 ? "RGBA" : "LA"; /* PIL unpacks 16-bit LA into RGBA */
    case PNG_COLOR_TYPE_RGB:
        return "RGB";
    case PNG_COLOR_TYPE_RGB_ALPHA:
        return "RGBA";
    case PNG_COLOR_TYPE_PALETTE:
        return "P";
    default:
        return NULL;
    }
}

/* One unpacked libpng row (1 byte per sample below 8 bits, big-endian 16-bit samples) to RGB:
 * 1-bit gray is 0/255, 2/4-bit gray scale by 85/17, 16-bit gray ("I") clips at 255, other 16-bit
 * samples keep their high byte, alpha is dropped, palette indices look up pal. */
static void png_row_to_rgb(const uint8_t *in, int w, int color_type, int depth,
                           const uint8_t (*pal)[3], uint8_t *out) {
    int x;
    switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
        for (x = 0; x < w; x++) {
            int v;
            if (depth == 16) {
                v = (in[2 * x] << 8) | in[2 * x + 1];
                v = v > 255 ? 255 : v;
            } else if (depth == 1) {
                v = in[x] ? 255 : 0;
            } else {
                v = in[x] * (depth == 2 ? 85 : depth == 4 ? 17 : 1);
            }
            out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = (uint8_t)v;
        }
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
        int step = depth == 16 ? 4 : 2;
        for (x = 0; x < w; x++) {
            out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = in[step * x];
        }
        break;
    }
    case PNG_COLOR_TYPE_RGB:
    case PNG_COLOR_TYPE_RGB_ALPHA: {
        int bps = depth == 16 ? 2 : 1;
        int step = (color_type == PNG_COLOR_TYPE_RGB ? 3 : 4) * bps;
        for (x = 0; x < w; x++) {
            out[3 * x] = in[step * x];
            out[3 * x + 1] = in[step * x + bps];
            out[3 * x + 2] = in[step * x + 2 * bps];
        }
        break;
    }
    case PNG_COLOR_TYPE_PALETTE:
        for (x = 0; x < w; x++) {
            memcpy(out + 3 * x, pal[in[x]], 3);
        }
        break;
    default:
        break;
    }
}

/* Chunks that never change pixels and that a hostile file could make expensive. */
static const png_byte png_skip_chunks[] = "iCCP\0zTXt\0iTXt\0tEXt\0eXIf\0sPLT\0";

/* Header only when out is NULL. */
static xc_status png_decode(const uint8_t *data, size_t n, const xc_image_limits *lim,
                            xc_image_info *info, xc_image *out) {
    png_src src = {.data = data, .n = n, .pos = 0};
    png_structp png = NULL;
    png_infop pinfo = NULL;
    uint8_t *volatile rgb = NULL;
    uint8_t *volatile raw = NULL;
    png_bytep *volatile rows = NULL;
    volatile xc_status st = XC_OK;

    /* IHDR must come first; its size is checked here, before libpng reads the chunks that
     * precede the image data. */
    if (n >= 33 && !memcmp(data + 12, "IHDR", 4)) {
        uint32_t w0 = (uint32_t)data[16] << 24 | (uint32_t)data[17] << 16 |
                      (uint32_t)data[18] << 8 | data[19];
        uint32_t h0 = (uint32_t)data[20] << 24 | (uint32_t)data[21] << 16 |
                      (uint32_t)data[22] << 8 | data[23];
        if (w0 > 0 && h0 > 0) {
            XC_TRY(check_dims("PNG", w0, h0, lim));
        }
    }
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    if (png) {
        pinfo = png_create_info_struct(png);
    }
    if (!png || !pinfo) {
        png_destroy_read_struct(&png, NULL, NULL);
        return xc_errf(XC_ERR_NOMEM, "out of memory creating a PNG reader");
    }
    if (setjmp(png_jmpbuf(png))) {
        st = xc_errf(XC_ERR_PROTO, "corrupt or truncated PNG: %s", src.msg);
        goto out;
    }
    png_set_read_fn(png, &src, png_on_read);
    png_set_user_limits(png, XC_IMAGE_MAX_SIDE, XC_IMAGE_MAX_SIDE);
    png_set_chunk_malloc_max(png, 8u << 20);
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, png_skip_chunks,
                                (int)(sizeof png_skip_chunks / 5));
    png_read_info(png, pinfo);

    png_uint_32 w, h;
    int depth, color_type, interlace;
    png_get_IHDR(png, pinfo, &w, &h, &depth, &color_type, &interlace, NULL, NULL);
    const char *mode = png_mode(color_type, depth);
    if (!mode) {
        st = xc_errf(XC_ERR_UNSUPPORTED, "PNG color type %d is not supported", color_type);
        goto out;
    }
    info->format = XC_IMAGE_FORMAT_PNG;
    info->width = (int)w;
    info->height = (int)h;
    snprintf(info->mode, sizeof info->mode, "%s", mode);
    st = check_dims("PNG", w, h, lim);
    if (st != XC_OK || !out) {
        goto out;
    }

    /* PIL keeps a 256-entry palette that starts as a gray ramp and is overwritten by PLTE, so
     * an index past the PLTE entries reads the ramp. */
    uint8_t pal[256][3];
    for (int i = 0; i < 256; i++) {
        pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
    }
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte = NULL;
        int n_plte = 0;
        if (png_get_PLTE(png, pinfo, &plte, &n_plte) & PNG_INFO_PLTE) {
            for (int i = 0; i < n_plte && i < 256; i++) {
                pal[i][0] = plte[i].red;
                pal[i][1] = plte[i].green;
                pal[i][2] = plte[i].blue;
            }
        }
    }
    if (depth < 8) {
        png_set_packing(png);
    }
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, pinfo);
    size_t rowbytes = png_get_rowbytes(png, pinfo);
    size_t raw_size;
    rgb = alloc_rgb((int)w, (int)h);
    if (xc_mul_overflow(rowbytes, passes > 1 ? (size_t)h : 1, &raw_size) || !rgb ||
        !(raw = xc_malloc(raw_size))) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory for a %ux%u PNG", (unsigned)w, (unsigned)h);
        goto out;
    }
    if (passes > 1) {
        /* Adam7: every pass touches every row, so the whole raw image is needed at once. */
        rows = xc_malloc(sizeof(png_bytep) * h);
        if (!rows) {
            st = xc_errf(XC_ERR_NOMEM, "out of memory for a %ux%u PNG", (unsigned)w, (unsigned)h);
            goto out;
        }
        for (png_uint_32 y = 0; y < h; y++) {
            rows[y] = raw + (size_t)y * rowbytes;
        }
        png_read_image(png, rows);
    }
    for (png_uint_32 y = 0; y < h; y++) {
        uint8_t *r = raw;
        if (passes > 1) {
            r = rows[y];
        } else {
            png_read_row(png, raw, NULL);
        }
        png_row_to_rgb(r, (int)w, color_type, depth, (const uint8_t(*)[3])pal,
                       rgb + (size_t)y * w * 3);
    }
    /* Like PIL, chunks after the image data (up to IEND) are not required. */
    out->width = (int)w;
    out->height = (int)h;
    out->rgb = rgb;
    rgb = NULL;
out:
    png_destroy_read_struct(&png, &pinfo, NULL);
    xc_free(rgb);
    xc_free(raw);
    xc_free(rows);
    return st;
}

/* ---- WebP (PIL decodes through WebPAnimDecoder: RGBA, first frame, alpha then dropped) ---- */

static const char *webp_status_str(VP8StatusCode c) {
    switch (c) {
    case VP8_STATUS_OUT_OF_MEMORY:
        return "out of memory";
    case VP8_STATUS_INVALID_PARAM:
        return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:
        return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
        return "unsupported feature";
    case VP8_STATUS_SUSPENDED:
        return "suspended";
    case VP8_STATUS_USER_ABORT:
        return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA:
        return "not enough data (truncated)";
    default:
        return "unknown error";
    }
}

static xc_status webp_decode(const uint8_t *data, size_t n, const xc_image_limits *lim,
                             xc_image_info *info, xc_image *out) {
    WebPBitstreamFeatures f;
    VP8StatusCode vs = WebPGetFeatures(data, n, &f);
    if (vs != VP8_STATUS_OK) {
        return xc_errf(XC_ERR_PROTO, "corrupt or truncated WebP header: %s", webp_status_str(vs));
    }
    info->format = XC_IMAGE_FORMAT_WEBP;
    info->width = f.width;
    info->height = f.height;
    snprintf(info->mode, sizeof info->mode, "%s", f.has_alpha ? "RGBA" : "RGB");
    XC_TRY(check_dims("WebP", (uint64_t)f.width, (uint64_t)f.height, lim));
    if (!out) {
        return XC_OK;
    }
    int w = f.width, h = f.height;
    uint8_t *rgb = alloc_rgb(w, h);
    if (!rgb) {
        return xc_errf(XC_ERR_NOMEM, "out of memory for a %dx%d WebP", w, h);
    }
    if (!f.has_animation) {
        /* A still image is the first frame decoded onto a cleared canvas with no blending, so
         * its RGB equals a direct decode. */
        WebPDecoderConfig cfg;
        if (!WebPInitDecoderConfig(&cfg)) {
            xc_free(rgb);
            return xc_errf(XC_ERR_UNSUPPORTED, "libwebp version mismatch");
        }
        cfg.output.colorspace = MODE_RGB;
        cfg.output.is_external_memory = 1;
        cfg.output.u.RGBA.rgba = rgb;
        cfg.output.u.RGBA.stride = w * 3;
        cfg.output.u.RGBA.size = (size_t)w * (size_t)h * 3;
        vs = WebPDecode(data, n, &cfg);
        WebPFreeDecBuffer(&cfg.output);
        if (vs != VP8_STATUS_OK) {
            xc_free(rgb);
            return xc_errf(XC_ERR_PROTO, "corrupt or truncated WebP: %s", webp_status_str(vs));
        }
    } else {
        WebPAnimDecoderOptions opt;
        if (!WebPAnimDecoderOptionsInit(&opt)) {
            xc_free(rgb);
            return xc_errf(XC_ERR_UNSUPPORTED, "libwebpdemux version mismatch");
        }
        opt.color_mode = MODE_RGBA;
        opt.use_threads = 0;
        WebPData wd = {data, n};
        WebPAnimDecoder *dec = WebPAnimDecoderNew(&wd, &opt);
        WebPAnimInfo ai;
        uint8_t *canvas = NULL;
        int ts = 0;
        if (!dec || !WebPAnimDecoderGetInfo(dec, &ai) || (int)ai.canvas_width != w ||
            (int)ai.canvas_height != h || !WebPAnimDecoderGetNext(dec, &canvas, &ts)) {
            WebPAnimDecoderDelete(dec);
            xc_free(rgb);
            return xc_errf(XC_ERR_PROTO, "corrupt or truncated animated WebP");
        }
        for (size_t i = 0; i < (size_t)w * (size_t)h; i++) {
            memcpy(rgb + 3 * i, canvas + 4 * i, 3);
        }
        WebPAnimDecoderDelete(dec);
    }
    out->width = w;
    out->height = h;
    out->rgb = rgb;
    return XC_OK;
}

/* ---- dispatch ---- */

static xc_status decode_any(const void *data, size_t n, const xc_image_limits *lim,
                            xc_image_info *info, xc_image *out) {
    if (!data && n > 0) {
        return xc_errf(XC_ERR_ARG, "image data is NULL");
    }
    if (n == 0) {
        return xc_errf(XC_ERR_PROTO, "image is empty (0 bytes)");
    }
    if (lim && lim->max_bytes > 0 && n > lim->max_bytes) {
        return xc_errf(XC_ERR_ARG, "image of %zu bytes is over the limit of %zu bytes (max-bytes)",
                       n, lim->max_bytes);
    }
    memset(info, 0, sizeof *info);
    switch (xc_image_detect(data, n)) {
    case XC_IMAGE_FORMAT_JPEG:
        return jpeg_decode(data, n, lim, info, out);
    case XC_IMAGE_FORMAT_PNG:
        return png_decode(data, n, lim, info, out);
    case XC_IMAGE_FORMAT_WEBP:
        return webp_decode(data, n, lim, info, out);
    default: {
        const char *other = other_format_name(data, n);
        if (other) {
            return xc_errf(XC_ERR_UNSUPPORTED,
                           "%s images are not supported (only JPEG, PNG and WebP)", other);
        }
        return xc_errf(XC_ERR_UNSUPPORTED,
                       "unrecognized image format (only JPEG, PNG and WebP are supported)");
    }
    }
}

xc_status xc_image_probe(const void *data, size_t n, const xc_image_limits *lim,
                         xc_image_info *out) {
    xc_image_info info;
    XC_TRY(decode_any(data, n, lim, &info, NULL));
    *out = info;
    return XC_OK;
}

xc_status xc_image_decode(const void *data, size_t n, const xc_image_limits *lim, xc_image *out) {
    xc_image_info info;
    xc_image img = {0};
    XC_TRY(decode_any(data, n, lim, &info, &img));
    *out = img;
    return XC_OK;
}

void xc_image_fini(xc_image *img) {
    if (img) {
        xc_free(img->rgb);
        img->rgb = NULL;
        img->width = img->height = 0;
    }
}

/* ---- resize: PIL's two-pass fixed-point convolution (Resample.c semantics, re-derived) ---- */

/* Fraction bits of the fixed-point coefficients: 32 bits minus 8 for the value, 2 for the
 * overshoot of negative lobes. */
#define RS_PREC 22

typedef struct rs_coeffs {
    int ksize;   /* coefficient slots per output sample */
    int *bounds; /* (out, 2): first input sample, number of taps */
    int32_t *k;  /* (out, ksize): fixed-point weights */
} rs_coeffs;

/* Keys' cubic with a = -0.5 (PIL's BICUBIC), support 2. */
static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    }
    if (x < 2.0) {
        return (((x - 5) * x + 8) * x - 4) * a;
    }
    return 0.0;
}

static void rs_coeffs_fini(rs_coeffs *c) {
    xc_free(c->bounds);
    xc_free(c->k);
}

/* Weights for in_size -> out_size over the whole axis. The filter widens by the shrink factor
 * (antialiasing); windows are rounded to whole samples and clipped at the edges; weights are
 * normalized in double and then rounded half away from zero to RS_PREC bits. Every double
 * expression keeps PIL's operation order so the rounded integers come out the same. */
static xc_status rs_coeffs_make(int in_size, int out_size, rs_coeffs *c) {
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = NULL;
    c->ksize = ksize;
    c->bounds = xc_malloc(sizeof(int) * 2 * (size_t)out_size);
    c->k = xc_malloc(sizeof(int32_t) * (size_t)ksize * (size_t)out_size);
    w = xc_malloc(sizeof(double) * (size_t)ksize);
    if (!c->bounds || !c->k || !w) {
        rs_coeffs_fini(c);
        xc_free(w);
        return xc_errf(XC_ERR_NOMEM, "out of memory for resize coefficients");
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) {
            xmin = 0;
        }
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) {
            xmax = in_size;
        }
        xmax -= xmin;
        XC_ASSERT(xmax >= 1 && xmax <= ksize);
        for (int x = 0; x < xmax; x++) {
            double v = bicubic(((double)(x + xmin) - center + 0.5) * ss);
            w[x] = v;
            ww += v;
        }
        int32_t *k = c->k + (size_t)xx * ksize;
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? w[x] : 0.0;
            if (x < xmax && ww != 0.0) {
                v /= ww;
            }
            k[x] =
                v < 0 ? (int32_t)(-0.5 + v * (1 << RS_PREC)) : (int32_t)(0.5 + v * (1 << RS_PREC));
        }
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    xc_free(w);
    return XC_OK;
}

/* The 8-bit result of a fixed-point sum that started at half a unit. */
static inline uint8_t rs_clip8(int32_t v) {
    v >>= RS_PREC;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Horizontal pass over rows [y0, y1) of src (w wide) into dst (y1 - y0 rows, out_w wide). */
static void rs_horizontal(const uint8_t *src, int w, int y0, int y1, const rs_coeffs *c, int out_w,
                          uint8_t *dst) {
    for (int y = y0; y < y1; y++) {
        const uint8_t *row = src + (size_t)y * w * 3;
        uint8_t *o = dst + (size_t)(y - y0) * out_w * 3;
        for (int xx = 0; xx < out_w; xx++) {
            const uint8_t *p = row + (size_t)c->bounds[2 * xx] * 3;
            const int32_t *k = c->k + (size_t)xx * c->ksize;
            int n = c->bounds[2 * xx + 1];
            int32_t s0 = 1 << (RS_PREC - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < n; x++) {
                s0 += p[3 * x] * k[x];
                s1 += p[3 * x + 1] * k[x];
                s2 += p[3 * x + 2] * k[x];
            }
            o[3 * xx] = rs_clip8(s0);
            o[3 * xx + 1] = rs_clip8(s1);
            o[3 * xx + 2] = rs_clip8(s2);
        }
    }
}

/* Vertical pass: src rows are (w * 3) bytes, c->bounds index them directly. Sums run a whole
 * output row at a time (integer sums, so the order does not change the result). */
static void rs_vertical(const uint8_t *src, int w, const rs_coeffs *c, int out_h, int32_t *acc,
                        uint8_t *dst) {
    size_t rowlen = (size_t)w * 3;
    for (int yy = 0; yy < out_h; yy++) {
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        int ymin = c->bounds[2 * yy], n = c->bounds[2 * yy + 1];
        for (size_t i = 0; i < rowlen; i++) {
            acc[i] = 1 << (RS_PREC - 1);
        }
        for (int y = 0; y < n; y++) {
            const uint8_t *r = src + (size_t)(ymin + y) * rowlen;
            int32_t kv = k[y];
            for (size_t i = 0; i < rowlen; i++) {
                acc[i] += r[i] * kv;
            }
        }
        uint8_t *o = dst + (size_t)yy * rowlen;
        for (size_t i = 0; i < rowlen; i++) {
            o[i] = rs_clip8(acc[i]);
        }
    }
}

xc_status xc_image_resize(const uint8_t *src, int w, int h, uint8_t *dst, int out_w, int out_h) {
    if (!src || !dst) {
        return xc_errf(XC_ERR_ARG, "resize: NULL image");
    }
    if (w < 1 || h < 1 || out_w < 1 || out_h < 1 || w > XC_IMAGE_MAX_SIDE ||
        h > XC_IMAGE_MAX_SIDE || out_w > XC_IMAGE_MAX_SIDE || out_h > XC_IMAGE_MAX_SIDE) {
        return xc_errf(XC_ERR_ARG, "resize: bad size %dx%d -> %dx%d", w, h, out_w, out_h);
    }
    if (w == out_w && h == out_h) {
        /* PIL returns a copy when nothing changes. */
        memcpy(dst, src, (size_t)w * (size_t)h * 3);
        return XC_OK;
    }
    rs_coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL;
    int32_t *acc = NULL;
    xc_status st = XC_OK;
    bool need_h = out_w != w, need_v = out_h != h;
    XC_TRY_GOTO(rs_coeffs_make(h, out_h, &cv), st, out);
    if (need_h) {
        XC_TRY_GOTO(rs_coeffs_make(w, out_w, &ch), st, out);
        /* Only the source rows the vertical pass reads are resampled horizontally. */
        int y0 = cv.bounds[0];
        int y1 = cv.bounds[2 * out_h - 2] + cv.bounds[2 * out_h - 1];
        if (need_v) {
            tmp = xc_malloc((size_t)(y1 - y0) * (size_t)out_w * 3);
            if (!tmp) {
                st = xc_errf(XC_ERR_NOMEM, "out of memory resizing");
                goto out;
            }
            for (int i = 0; i < out_h; i++) {
                cv.bounds[2 * i] -= y0;
            }
            rs_horizontal(src, w, y0, y1, &ch, out_w, tmp);
        } else {
            rs_horizontal(src, w, 0, h, &ch, out_w, dst);
        }
    }
    if (need_v) {
        acc = xc_malloc(sizeof(int32_t) * (size_t)out_w * 3);
        if (!acc) {
            st = xc_errf(XC_ERR_NOMEM, "out of memory resizing");
            goto out;
        }
        rs_vertical(need_h ? tmp : src, out_w, &cv, out_h, acc, dst);
    }
out:
    rs_coeffs_fini(&ch);
    rs_coeffs_fini(&cv);
    xc_free(tmp);
    xc_free(acc);
    return st;
}

/* ---- tensor ---- */

void xc_image_to_tensor(const uint8_t *rgb, int w, int h, float *out) {
    size_t plane = (size_t)w * (size_t)h;
    for (int c = 0; c < 3; c++) {
        /* torchvision: float32(v) / 255, then (x - mean) / std, each rounded to float32. */
        const float mean = xc_image_clip_mean[c], sd = xc_image_clip_std[c];
        float *o = out + (size_t)c * plane;
        for (size_t i = 0; i < plane; i++) {
            float x = (float)rgb[3 * i + c] / 255.0f;
            o[i] = (x - mean) / sd;
        }
    }
}

xc_status xc_image_preprocess(const void *data, size_t n, const xc_image_limits *lim, int size,
                              uint8_t *resized, float *tensor) {
    if (size < 1 || size > 8192) {
        return xc_errf(XC_ERR_ARG, "preprocess: image size %d out of range 1..8192", size);
    }
    xc_image img = {0};
    uint8_t *buf = resized;
    xc_status st;
    XC_TRY(xc_image_decode(data, n, lim, &img));
    if (!buf) {
        buf = xc_malloc((size_t)size * (size_t)size * 3);
        if (!buf) {
            xc_image_fini(&img);
            return xc_errf(XC_ERR_NOMEM, "out of memory for a %dx%d image", size, size);
        }
    }
    st = xc_image_resize(img.rgb, img.width, img.height, buf, size, size);
    if (st == XC_OK && tensor) {
        xc_image_to_tensor(buf, size, size, tensor);
    }
    if (buf != resized) {
        xc_free(buf);
    }
    xc_image_fini(&img);
    return st;
}
