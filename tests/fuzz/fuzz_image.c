/* libFuzzer harness: arbitrary bytes through one decoder of the image path (the format is chosen at
 * build time with XC_FUZZ_IMAGE_FORMAT: one binary per decoder, so each spends its time on one),
 * then the resize and normalization the vision worker runs. Limits keep single inputs fast. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_image.h"

#ifndef XC_FUZZ_IMAGE_FORMAT
#error "build with -DXC_FUZZ_IMAGE_FORMAT=XC_IMAGE_FORMAT_JPEG (or _PNG, _WEBP, _GIF, _BMP)"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (xc_image_detect(data, size) != XC_FUZZ_IMAGE_FORMAT) {
        return 0;
    }
    xc_image_limits lim = {.max_bytes = 1u << 20, .max_pixels = 1u << 20, .max_images = 1};
    xc_image_info info;
    xc_status ps = xc_image_probe(data, size, &lim, &info);
    xc_image img = {0};
    if (xc_image_decode(data, size, &lim, &img) != XC_OK) {
        if (img.rgb) {
            __builtin_trap(); /* nothing may be returned on failure */
        }
        return 0;
    }
    /* A decoded image must agree with its header, and every pixel must be readable. */
    if (ps != XC_OK || !img.rgb || img.width != info.width || img.height != info.height ||
        (uint64_t)img.width * (uint64_t)img.height > lim.max_pixels) {
        __builtin_trap();
    }
    uint8_t small[7 * 5 * 3];
    float t[3 * 7 * 5];
    if (xc_image_resize(img.rgb, img.width, img.height, small, 7, 5) != XC_OK) {
        __builtin_trap();
    }
    xc_image_to_tensor(small, 7, 5, t);
    for (int i = 0; i < 3 * 7 * 5; i++) {
        if (!isfinite(t[i]) || t[i] < -2.0f || t[i] > 2.2f) {
            __builtin_trap(); /* (0 - mean) / std and (1 - mean) / std bound every value */
        }
    }
    xc_image_fini(&img);
    return 0;
}
