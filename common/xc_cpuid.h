/* x86 CPU feature checks that work with gcc and clang alike (clang 14's __builtin_cpu_supports
 * does not know "f16c"). */
#pragma once

#include <cpuid.h>
#include <stdbool.h>

/* F16C: CPUID leaf 1, ECX bit 29. */
static inline bool xc_cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
