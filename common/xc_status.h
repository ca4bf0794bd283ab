/* Status codes, the error-detail channel and the TRY/ASSERT macros used by every library. */
#pragma once

#include <stdarg.h>

typedef enum xc_status {
    XC_OK = 0,
    XC_AGAIN = 1,            /* not an error: retry (non-blocking I/O) */
    XC_ERR_NOMEM = -1,       /* allocation failed */
    XC_ERR_ARG = -2,         /* bad argument, bad config or bad user input */
    XC_ERR_IO = -3,          /* file or socket I/O failed */
    XC_ERR_PROTO = -4,       /* malformed data: bad frame, bad file format */
    XC_ERR_TIMEOUT = -5,     /* deadline passed */
    XC_ERR_DEVICE = -6,      /* accelerator failure (fatal for a worker) */
    XC_ERR_UNSUPPORTED = -7, /* valid but not supported by this build or format */
    XC_ERR_NOTFOUND = -8,    /* a named thing (tensor, key, file) does not exist */
} xc_status;

#define XC_TRY(e)                                                                                  \
    do {                                                                                           \
        xc_status st_ = (e);                                                                       \
        if (st_ != XC_OK) {                                                                        \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

#define XC_TRY_GOTO(e, st, l)                                                                      \
    do {                                                                                           \
        (st) = (e);                                                                                \
        if ((st) != XC_OK) {                                                                       \
            goto l;                                                                                \
        }                                                                                          \
    } while (0)

/* Invariants only; never for network, config or user input. Always compiled in. */
#define XC_ASSERT(c) ((c) ? (void)0 : xc_panic(__FILE__, __LINE__, #c))

/* Prints "file:line: assertion failed: expr" to stderr and aborts. */
_Noreturn void xc_panic(const char *file, int line, const char *expr);

/* Short constant name of a status ("XC_ERR_PROTO"). Never NULL. */
const char *xc_status_str(xc_status st);

/* Records a human-readable detail for the error being returned (thread-local, replaces the
 * previous one) and returns st, so callers write `return xc_errf(XC_ERR_ARG, "bad %s", x);`. */
xc_status xc_errf(xc_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Same as xc_errf with a va_list. */
xc_status xc_verrf(xc_status st, const char *fmt, va_list ap);

/* The last detail recorded on this thread by xc_errf, or "" if none. Valid until the next
 * xc_errf/xc_err_clear on this thread. */
const char *xc_err_last(void);

/* Forgets the detail recorded on this thread. */
void xc_err_clear(void);
