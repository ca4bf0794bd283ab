/* Monotonic clock helpers. */
#pragma once

#include <stdint.h>
#include <time.h>

/* Nanoseconds from an arbitrary fixed point (CLOCK_MONOTONIC). */
static inline uint64_t xc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Seconds as a double, for benchmarks. */
static inline double xc_now_s(void) {
    return (double)xc_now_ns() * 1e-9;
}
