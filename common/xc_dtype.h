/* Element types shared by checkpoints and kernels, and exact scalar bf16/f16 conversions. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum xc_dtype {
    XC_DTYPE_F32 = 0,
    XC_DTYPE_F16 = 1,
    XC_DTYPE_BF16 = 2,
    XC_DTYPE_F64 = 3,
    XC_DTYPE_I64 = 4,
    XC_DTYPE_I32 = 5,
    XC_DTYPE_I16 = 6,
    XC_DTYPE_I8 = 7,
    XC_DTYPE_U8 = 8,
    XC_DTYPE_BOOL = 9,
    XC_DTYPE_COUNT = 10,
} xc_dtype;

/* Bytes per element (0 for an invalid value). */
static inline size_t xc_dtype_size(xc_dtype t) {
    static const unsigned char sz[XC_DTYPE_COUNT] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};
    return (unsigned)t < XC_DTYPE_COUNT ? sz[t] : 0;
}

/* Lower-case name as safetensors and `xcpipe model inspect` print it ("bf16"). */
static inline const char *xc_dtype_name(xc_dtype t) {
    static const char *names[XC_DTYPE_COUNT] = {"f32", "f16", "bf16", "f64", "i64",
                                                "i32", "i16", "i8",   "u8",  "bool"};
    return (unsigned)t < XC_DTYPE_COUNT ? names[t] : "invalid";
}

static inline uint32_t xc_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float xc_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* bf16 -> f32 is exact: the bf16 bits are the top half of the f32. */
static inline float xc_bf16_to_f32(uint16_t h) {
    return xc_bits_f32((uint32_t)h << 16);
}

/* f32 -> bf16, round to nearest even (as torch does); NaN stays NaN. */
static inline uint16_t xc_f32_to_bf16(float f) {
    uint32_t u = xc_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x40);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* IEEE binary16 -> f32, exact (normals, subnormals, inf, NaN). */
static inline float xc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while ((man & 0x400u) == 0);
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) { /* inf, or NaN made quiet as F16C does */
        u = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    return xc_bits_f32(u);
}

/* f32 -> IEEE binary16, round to nearest even, overflow to inf. */
static inline uint16_t xc_f32_to_f16(float f) {
    uint32_t u = xc_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u;
    }
    if (a >= 0x477ff000u) { /* rounds to >= 65520: inf */
        return sign | 0x7c00u;
    }
    if (a < 0x38800000u) { /* below the smallest normal: subnormal or zero */
        if (a < 0x33000000u) {
            return sign;
        }
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        /* value = man * 2^(e-150) and the f16 subnormal unit is 2^-24: result = man >> (126-e) */
        uint32_t sh = (uint32_t)(126 - (int)(a >> 23));
        uint32_t r = man >> sh;
        uint32_t rem = man & ((1u << sh) - 1);
        uint32_t half = 1u << (sh - 1);
        if (rem > half || (rem == half && (r & 1u))) {
            r++;
        }
        return sign | (uint16_t)r;
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

/* Reads element i of a float-like array of dtype t (f32, f16, bf16) as f32. */
static inline float xc_load_f32(const void *p, xc_dtype t, size_t i) {
    switch (t) {
    case XC_DTYPE_F16:
        return xc_f16_to_f32(((const uint16_t *)p)[i]);
    case XC_DTYPE_BF16:
        return xc_bf16_to_f32(((const uint16_t *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}
