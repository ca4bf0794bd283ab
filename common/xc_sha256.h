/* SHA-256 (FIPS 180-4): the content hash of preprocessed images (the vision worker's embedding
 * cache keys on it, so two different images must never share a key). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct xc_sha256 {
    uint32_t h[8];
    uint64_t len; /* bytes hashed so far */
    uint8_t buf[64];
    size_t n_buf; /* bytes waiting in buf */
} xc_sha256;

void xc_sha256_init(xc_sha256 *s);
void xc_sha256_update(xc_sha256 *s, const void *data, size_t n);
void xc_sha256_final(xc_sha256 *s, uint8_t out[32]);

/* One call: out = SHA-256(data[0..n)). */
void xc_sha256_sum(const void *data, size_t n, uint8_t out[32]);

/* Whether the x86 SHA extensions (SHA-NI) compute the blocks: decided once from CPUID (about 6x
 * the portable code: 31 us instead of 195 us for the 49 KB image a chat client re-sends every
 * turn, whose SHA-256 keys the HTTP side's image cache). The digests are the same either way. */
bool xc_sha256_accel(void);
/* Tests: on = use the extensions where the CPU has them, off = the portable code. Returns whether
 * the extensions are used now. Not to be called while another thread hashes. */
bool xc_sha256_set_accel(bool on);
