/* Image input for the vision worker: JPEG/PNG/WebP decoding to 8-bit RGB exactly as PIL's
 * Image.open(f).convert('RGB') gives it, limits checked before any pixel data is decoded, PIL's
 * bicubic resize (byte-identical), and torchvision ToTensor + CLIP Normalize. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"

typedef enum xc_image_format {
    XC_IMAGE_FORMAT_UNKNOWN = 0,
    XC_IMAGE_FORMAT_JPEG,
    XC_IMAGE_FORMAT_PNG,
    XC_IMAGE_FORMAT_WEBP,
} xc_image_format;

/* Limits on untrusted images. A value of 0 means "no limit" for that field. */
typedef struct xc_image_limits {
    size_t max_bytes;    /* encoded bytes of one image */
    uint64_t max_pixels; /* width * height, checked from the header before decoding pixels */
    int max_images;      /* images in one request (checked by xc_image_check_count) */
} xc_image_limits;

#define XC_IMAGE_DEFAULT_MAX_BYTES  (20u * 1024u * 1024u) /* 20 MiB */
#define XC_IMAGE_DEFAULT_MAX_PIXELS 40000000u             /* 40 MP: 120 MB as RGB */
#define XC_IMAGE_DEFAULT_MAX_IMAGES 8

/* What the header says, before any pixel data is decoded. */
typedef struct xc_image_info {
    xc_image_format format;
    int width;    /* pixels */
    int height;   /* pixels */
    char mode[8]; /* the mode PIL's Image.open reports: "1" "L" "LA" "P" "I" "RGB" "RGBA" "CMYK" */
} xc_image_info;

/* A decoded image, always 8-bit RGB, row-major, no padding. */
typedef struct xc_image {
    int width;
    int height;
    uint8_t *rgb; /* (height, width, 3), xc_malloc'd, owned */
} xc_image;

/* CLIP normalization constants (torchvision Normalize after ToTensor). */
extern const float xc_image_clip_mean[3];
extern const float xc_image_clip_std[3];

/* Fills *lim with the defaults above. */
void xc_image_limits_default(xc_image_limits *lim);

/* Name of a format ("jpeg", "png", "webp", "unknown"). Never NULL. */
const char *xc_image_format_name(xc_image_format fmt);

/* Format from the magic bytes; XC_IMAGE_FORMAT_UNKNOWN when it is none of the three. */
xc_image_format xc_image_detect(const void *data, size_t n);

/* Returns XC_ERR_ARG if n exceeds lim->max_images (a request with too many images). */
xc_status xc_image_check_count(int n, const xc_image_limits *lim);

/* Reads only the header: format, size and PIL mode; checks max_bytes and max_pixels.
 * lim may be NULL (no limits). Errors: XC_ERR_UNSUPPORTED (not JPEG/PNG/WebP, or a variant we
 * do not decode), XC_ERR_PROTO (corrupt/truncated header), XC_ERR_ARG (over a limit). */
xc_status xc_image_probe(const void *data, size_t n, const xc_image_limits *lim,
                         xc_image_info *out);

/* Decodes to RGB with the bytes PIL's convert('RGB') gives (no EXIF rotation, alpha dropped
 * without compositing, palette looked up, 16-bit reduced the way PIL reduces it). Limits are
 * checked from the header before pixel data is decoded. On XC_OK *out owns a new buffer
 * (release with xc_image_fini). Errors: as xc_image_probe, plus XC_ERR_PROTO for corrupt or
 * truncated pixel data and XC_ERR_NOMEM. */
xc_status xc_image_decode(const void *data, size_t n, const xc_image_limits *lim, xc_image *out);

/* Frees the pixels of an image from xc_image_decode; accepts NULL and zeroed images. */
void xc_image_fini(xc_image *img);

/* PIL's Image.resize((out_w, out_h), BICUBIC) of an RGB image, byte-identical: src is
 * (h, w, 3), dst is (out_h, out_w, 3), both borrowed. Antialiased when shrinking. Errors:
 * XC_ERR_ARG (a size < 1 or > 2^24), XC_ERR_NOMEM. */
xc_status xc_image_resize(const uint8_t *src, int w, int h, uint8_t *dst, int out_w, int out_h);

/* torchvision ToTensor + Normalize(xc_image_clip_mean, xc_image_clip_std) in float32:
 * rgb (h, w, 3) -> out (3, h, w), ((v / 255) - mean[c]) / std[c]. */
void xc_image_to_tensor(const uint8_t *rgb, int w, int h, float *out);

/* The whole vision preprocessing: decode, resize to (size, size), normalize. resized
 * ((size, size, 3) uint8) and/or tensor ((3, size, size) float32) may be NULL when not wanted.
 * Errors: as xc_image_decode and xc_image_resize. */
xc_status xc_image_preprocess(const void *data, size_t n, const xc_image_limits *lim, int size,
                              uint8_t *resized, float *tensor);

/* Encodes rgb (h, w, 3) as a baseline 4:2:0 JPEG of the given quality (1..100), the way PIL's
 * save(quality=q) does by default; for benchmarks and tests. On XC_OK *out is xc_malloc'd (free
 * with xc_free) and *n is its size. Errors: XC_ERR_ARG, XC_ERR_NOMEM. */
xc_status xc_image_write_jpeg(const uint8_t *rgb, int w, int h, int quality, uint8_t **out,
                              size_t *n);
