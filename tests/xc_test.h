/* Shared test helpers: cmocka includes in the right order and leak-checking allocator hooks. */
#pragma once

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "xc_mem.h"

static void *xc_test_malloc_(size_t n) {
    return test_malloc(n);
}

static void *xc_test_calloc_(size_t c, size_t s) {
    return test_calloc(c, s);
}

static void *xc_test_realloc_(void *p, size_t n) {
    return test_realloc(p, n);
}

static void xc_test_free_(void *p) {
    test_free(p);
}

/* Group setup: route xc_malloc & co. through cmocka so every test fails on a leak. */
static inline int xc_test_hooks_setup(void **state) {
    (void)state;
    static const xc_mem_hooks h = {xc_test_malloc_, xc_test_calloc_, xc_test_realloc_,
                                   xc_test_free_};
    xc_mem_set_hooks(&h);
    return 0;
}

static inline int xc_test_hooks_teardown(void **state) {
    (void)state;
    xc_mem_set_hooks(NULL);
    return 0;
}
