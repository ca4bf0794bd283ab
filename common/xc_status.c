/* Status names, the thread-local error detail and xc_panic. */
#include "xc_status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char err_buf[512];

_Noreturn void xc_panic(const char *file, int line, const char *expr) {
    fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}

const char *xc_status_str(xc_status st) {
    switch (st) {
    case XC_OK:
        return "XC_OK";
    case XC_AGAIN:
        return "XC_AGAIN";
    case XC_ERR_NOMEM:
        return "XC_ERR_NOMEM";
    case XC_ERR_ARG:
        return "XC_ERR_ARG";
    case XC_ERR_IO:
        return "XC_ERR_IO";
    case XC_ERR_PROTO:
        return "XC_ERR_PROTO";
    case XC_ERR_TIMEOUT:
        return "XC_ERR_TIMEOUT";
    case XC_ERR_DEVICE:
        return "XC_ERR_DEVICE";
    case XC_ERR_UNSUPPORTED:
        return "XC_ERR_UNSUPPORTED";
    case XC_ERR_NOTFOUND:
        return "XC_ERR_NOTFOUND";
    }
    return "XC_ERR_UNKNOWN";
}

xc_status xc_verrf(xc_status st, const char *fmt, va_list ap) {
    /* format into a scratch buffer first: callers may pass xc_err_last() as an argument to add
     * context to a lower layer's message, and vsnprintf must not read what it is writing */
    char tmp[sizeof err_buf];
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    memcpy(err_buf, tmp, sizeof err_buf);
    return st;
}

xc_status xc_errf(xc_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    xc_verrf(st, fmt, ap);
    va_end(ap);
    return st;
}

const char *xc_err_last(void) {
    return err_buf;
}

void xc_err_clear(void) {
    err_buf[0] = '\0';
}
