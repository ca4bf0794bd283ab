/* SHA-256 as FIPS 180-4 specifies it: 64-byte blocks, big-endian words, 64 rounds. */
#include "xc_sha256.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define XC_SHA_X86 1
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror(uint32_t x, int n) {
    return (x >> n) | (x << (32 - n));
}

static void block_portable(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

#ifdef XC_SHA_X86
/* n blocks with the SHA extensions (SHA-NI: sha256rnds2 does two rounds, sha256msg1/msg2 the
 * message schedule; about 6x the portable code). The state lives in two registers as the
 * instruction wants it: ABEF and CDGH (lane 3 first). */
__attribute__((target("sha,sse4.1"))) static void blocks_shani(uint32_t h[8], const uint8_t *p,
                                                               size_t n) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bll, 0x0405060700010203ll);
    __m128i dcba = _mm_loadu_si128((const __m128i *)h);       /* lanes: a b c d */
    __m128i hgfe = _mm_loadu_si128((const __m128i *)(h + 4)); /* lanes: e f g h */
    __m128i badc = _mm_shuffle_epi32(dcba, 0xB1);             /* lanes: b a d c */
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);             /* lanes: h g f e */
    __m128i abef = _mm_alignr_epi8(badc, efgh, 8);            /* lanes: f e b a */
    __m128i cdgh = _mm_blend_epi16(efgh, badc, 0xF0);         /* lanes: h g d c */
    for (; n > 0; n--, p += 64) {
        __m128i abef0 = abef, cdgh0 = cdgh, m[4];
        for (int j = 0; j < 4; j++) {
            m[j] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * j)), bswap);
        }
        for (int g = 0; g < 16; g++) { /* 4 rounds: message words w[4g, 4g + 4) */
            __m128i w = m[g & 3];
            if (g >= 4) { /* w[t] = s1(w[t-2]) + w[t-7] + s0(w[t-15]) + w[t-16] */
                __m128i t = _mm_sha256msg1_epu32(m[g & 3], m[(g + 1) & 3]);
                t = _mm_add_epi32(t, _mm_alignr_epi8(m[(g + 3) & 3], m[(g + 2) & 3], 4));
                w = m[g & 3] = _mm_sha256msg2_epu32(t, m[(g + 3) & 3]);
            }
            __m128i x = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *)(K + 4 * g)));
            cdgh =
                _mm_sha256rnds2_epu32(cdgh, abef, x); /* cdgh: the new abef; abef: the new cdgh */
            x = _mm_shuffle_epi32(x, 0x0E);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, x); /* and back */
        }
        abef = _mm_add_epi32(abef, abef0);
        cdgh = _mm_add_epi32(cdgh, cdgh0);
    }
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B); /* lanes: a b e f */
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1); /* lanes: g h c d */
    dcba = _mm_blend_epi16(feba, dchg, 0xF0);     /* lanes: a b c d */
    hgfe = _mm_alignr_epi8(dchg, feba, 8);        /* lanes: e f g h */
    _mm_storeu_si128((__m128i *)h, dcba);
    _mm_storeu_si128((__m128i *)(h + 4), hgfe);
}

static bool cpu_has_sha(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19))) { /* SSE4.1 */
        return false;
    }
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29)); /* SHA */
}
#endif

/* -1: not decided yet; 0: portable; 1: SHA extensions */
static _Atomic int g_accel = -1;

bool xc_sha256_accel(void) {
    int a = atomic_load_explicit(&g_accel, memory_order_relaxed);
    if (a < 0) {
#ifdef XC_SHA_X86
        a = cpu_has_sha();
#else
        a = 0;
#endif
        atomic_store_explicit(&g_accel, a, memory_order_relaxed);
    }
    return a == 1;
}

bool xc_sha256_set_accel(bool on) {
    atomic_store(&g_accel, -1);
    bool can = xc_sha256_accel();
    atomic_store(&g_accel, on && can ? 1 : 0);
    return on && can;
}

static void blocks(uint32_t h[8], const uint8_t *p, size_t n) {
#ifdef XC_SHA_X86
    if (xc_sha256_accel()) {
        blocks_shani(h, p, n);
        return;
    }
#endif
    for (; n > 0; n--, p += 64) {
        block_portable(h, p);
    }
}

void xc_sha256_init(xc_sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->n_buf = 0;
}

void xc_sha256_update(xc_sha256 *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->len += n;
    if (s->n_buf > 0) {
        size_t take = 64 - s->n_buf < n ? 64 - s->n_buf : n;
        memcpy(s->buf + s->n_buf, p, take);
        s->n_buf += take;
        p += take;
        n -= take;
        if (s->n_buf < 64) {
            return;
        }
        blocks(s->h, s->buf, 1);
        s->n_buf = 0;
    }
    blocks(s->h, p, n / 64);
    p += n / 64 * 64;
    n %= 64;
    memcpy(s->buf, p, n);
    s->n_buf = n;
}

void xc_sha256_final(xc_sha256 *s, uint8_t out[32]) {
    uint64_t bits = s->len * 8;
    uint8_t pad[72] = {0x80};
    size_t padn = (s->n_buf < 56 ? 56 : 120) - s->n_buf; /* to 56 mod 64 */
    for (int i = 0; i < 8; i++) {
        pad[padn + i] = (uint8_t)(bits >> (56 - 8 * i));
    }
    xc_sha256_update(s, pad, padn + 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

void xc_sha256_sum(const void *data, size_t n, uint8_t out[32]) {
    xc_sha256 s;
    xc_sha256_init(&s);
    xc_sha256_update(&s, data, n);
    xc_sha256_final(&s, out);
}
