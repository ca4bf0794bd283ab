/* AVX2/FMA/F16C building blocks for the CPU ops (internal to kernels/cpu). Every function carries
 * the target attribute itself, so the files build without -mavx2 and callers choose these paths
 * only after a runtime check (xc_cpu_simd). Results are deterministic: the same inputs give the
 * same bits whatever the caller's batch, which the batch-invariance tests rely on. */
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "xc_dtype.h"

#define XC_SIMD __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

/* 8 weights of dtype t starting at element i, as f32 (exact for f16 and bf16). */
XC_SIMD __m256 xc_simd_load_w(const void *w, xc_dtype t, size_t i) {
    if (t == XC_DTYPE_F16) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    }
    if (t == XC_DTYPE_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)w + i);
}

/* Sum of the 8 lanes in a fixed order: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)). */
XC_SIMD float xc_simd_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

XC_SIMD float xc_simd_hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x), about 2 ulp on [-87, 88] (Cephes-style range reduction and degree-5 polynomial);
 * inputs below -87.3 (and -inf) give exactly 0, inputs above 88.7 saturate near FLT_MAX. */
XC_SIMD __m256 xc_simd_exp(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.72f);
    const __m256 lo = _mm256_set1_ps(-87.33f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n: n is in [-126, 128]; split it so that 2^128 (x near 88.7) does not overflow. */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1);
    __m256i n2 = _mm256_sub_epi32(ni, n1);
    __m256 s1 =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    __m256 s2 =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    p = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    return _mm256_andnot_ps(under, p);
}

/* x / (1 + exp(-a x)): silu for a = 1, quick_gelu for a = 1.702. */
XC_SIMD __m256 xc_simd_xsigmoid(__m256 x, float a) {
    __m256 e = xc_simd_exp(_mm256_mul_ps(x, _mm256_set1_ps(-a)));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* 0.5 x (1 + erf(x / sqrt 2)) with erf from Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7),
 * written as erfc for negative inputs so that the left tail keeps its relative accuracy. */
XC_SIMD __m256 xc_simd_gelu(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 az = _mm256_andnot_ps(sign, z);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    /* erfc(|z|) = p exp(-z^2) */
    __m256 ec = _mm256_mul_ps(p, xc_simd_exp(_mm256_mul_ps(_mm256_xor_ps(az, sign), az)));
    /* 1 + erf(z) = erfc(|z|) for z < 0, 2 - erfc(z) otherwise */
    __m256 neg = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
    __m256 one_p = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), ec), ec, neg);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), one_p);
}
