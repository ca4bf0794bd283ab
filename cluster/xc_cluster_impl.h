/* Inside cluster/ only: the transport vtable that each implementation fills. */
#pragma once

#include <stdint.h>

#include "xc_time.h"
#include "xc_transport.h"

#define XC_ENDPOINT_MAX 256

/* One implementation of a transport (redis CT_Socket style). Callers use the xc_transport_*
 * wrappers, which check arguments before calling these. */
typedef struct xc_transport_ops {
    const char *name; /* "zmq", "mpi", "inproc" */
    /* Sets tx->ctx and tx->endpoint (resolved); on failure leaves nothing to close. */
    xc_status (*open)(xc_transport *tx, const char *endpoint, const xc_transport_conf *conf);
    void (*close)(xc_transport *tx);
    /* 1 <= n <= XC_MSG_MAX_FRAMES, mode SEND. */
    xc_status (*send)(xc_transport *tx, xc_frame *frames, size_t n, int timeout_ms);
    /* mode RECV; *out is empty on entry. */
    xc_status (*recv)(xc_transport *tx, int timeout_ms, xc_msg *out);
    /* optional (xc_transport_wake); any thread */
    void (*wake)(xc_transport *tx);
} xc_transport_ops;

struct xc_transport {
    const xc_transport_ops *ops;
    void *ctx; /* the implementation's state */
    xc_transport_mode mode;
    char endpoint[XC_ENDPOINT_MAX];
};

extern const xc_transport_ops xc_transport_zmq_ops;
extern const xc_transport_ops xc_transport_inproc_ops;
#ifdef XC_HAVE_MPI
extern const xc_transport_ops xc_transport_mpi_ops;
#endif

/* Frees a frame that was allocated with xc_malloc (hint unused). */
void xc_frame_free_xc(void *data, void *hint);

/* Absolute deadline helpers: timeout_ms < 0 means no deadline (UINT64_MAX). */
static inline uint64_t xc_deadline_ns(int timeout_ms) {
    return timeout_ms < 0 ? UINT64_MAX : xc_now_ns() + (uint64_t)timeout_ms * 1000000ull;
}

/* Milliseconds left until deadline (-1 = forever, 0 when passed). */
static inline int xc_deadline_left_ms(uint64_t deadline) {
    if (deadline == UINT64_MAX) {
        return -1;
    }
    uint64_t now = xc_now_ns();
    if (now >= deadline) {
        return 0;
    }
    uint64_t ms = (deadline - now + 999999ull) / 1000000ull;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}
