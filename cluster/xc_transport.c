/* Transport wrappers: endpoint-scheme dispatch, argument checks, and the wire helpers that encode
 * a header frame on send and validate it on receive. */
#include "xc_transport.h"

#include <stdio.h>
#include <string.h>

#include "xc_cluster_impl.h"
#include "xc_log.h"
#include "xc_mem.h"

void xc_frame_free_xc(void *data, void *hint) {
    (void)hint;
    xc_free(data);
}

void xc_msg_fini(xc_msg *m) {
    if (!m) {
        return;
    }
    for (size_t i = 0; i < m->n && i < XC_MSG_MAX_FRAMES; i++) {
        xc_frame *f = &m->frames[i];
        if (f->free_fn) {
            f->free_fn(f->data, f->hint);
        }
    }
    memset(m, 0, sizeof *m);
}

/* Picks the implementation from the endpoint's scheme. */
static const xc_transport_ops *ops_for(const char *endpoint) {
    if (!strncmp(endpoint, "tcp://", 6) || !strncmp(endpoint, "ipc://", 6)) {
        return &xc_transport_zmq_ops;
    }
    if (!strncmp(endpoint, "inproc://", 9)) {
        return &xc_transport_inproc_ops;
    }
#ifdef XC_HAVE_MPI
    if (!strncmp(endpoint, "mpi://", 6)) {
        return &xc_transport_mpi_ops;
    }
#endif
    return NULL;
}

xc_status xc_transport_open(const char *endpoint, xc_transport_mode mode,
                            const xc_transport_conf *conf, xc_transport **out) {
    static const xc_transport_conf defaults = XC_TRANSPORT_CONF_INIT;
    if (!endpoint || strlen(endpoint) >= XC_ENDPOINT_MAX) {
        return xc_errf(XC_ERR_ARG, "transport: endpoint is missing or longer than %d bytes",
                       XC_ENDPOINT_MAX - 1);
    }
    if (mode != XC_TRANSPORT_RECV && mode != XC_TRANSPORT_SEND) {
        return xc_errf(XC_ERR_ARG, "transport: mode %d is not RECV or SEND", (int)mode);
    }
    conf = conf ? conf : &defaults;
    if (conf->hwm < 1 || conf->linger_ms < 0 || conf->max_frame_bytes == 0) {
        return xc_errf(XC_ERR_ARG,
                       "transport %s: hwm %d must be >= 1, linger_ms %d >= 0 and "
                       "max_frame_bytes > 0",
                       endpoint, conf->hwm, conf->linger_ms);
    }
    const xc_transport_ops *ops = ops_for(endpoint);
    if (!ops) {
#ifndef XC_HAVE_MPI
        if (!strncmp(endpoint, "mpi://", 6)) {
            return xc_errf(XC_ERR_UNSUPPORTED,
                           "transport %s: this build has no MPI (configure with -DXC_MPI=ON)",
                           endpoint);
        }
#endif
        return xc_errf(XC_ERR_ARG,
                       "transport: endpoint '%s' is not tcp://, ipc://, inproc:// or mpi://",
                       endpoint);
    }
    xc_transport *tx = xc_calloc(1, sizeof *tx);
    if (!tx) {
        return xc_errf(XC_ERR_NOMEM, "transport %s: no memory", endpoint);
    }
    tx->ops = ops;
    tx->mode = mode;
    snprintf(tx->endpoint, sizeof tx->endpoint, "%s", endpoint);
    xc_status st = ops->open(tx, endpoint, conf);
    if (st != XC_OK) {
        xc_free(tx);
        return st;
    }
    *out = tx;
    return XC_OK;
}

void xc_transport_close(xc_transport *tx) {
    if (!tx) {
        return;
    }
    tx->ops->close(tx);
    xc_free(tx);
}

xc_status xc_transport_send(xc_transport *tx, xc_frame *frames, size_t n, int timeout_ms) {
    if (tx->mode != XC_TRANSPORT_SEND) {
        return xc_errf(XC_ERR_ARG, "transport %s: send on a receiving transport", tx->endpoint);
    }
    if (n < 1 || n > XC_MSG_MAX_FRAMES) {
        return xc_errf(XC_ERR_ARG, "transport %s: a message has 1 to %d frames, not %zu",
                       tx->endpoint, XC_MSG_MAX_FRAMES, n);
    }
    for (size_t i = 0; i < n; i++) {
        if (!frames[i].data && frames[i].len > 0) {
            return xc_errf(XC_ERR_ARG, "transport %s: frame %zu has %zu bytes but no data",
                           tx->endpoint, i, frames[i].len);
        }
    }
    return tx->ops->send(tx, frames, n, timeout_ms);
}

xc_status xc_transport_recv(xc_transport *tx, int timeout_ms, xc_msg *out) {
    if (tx->mode != XC_TRANSPORT_RECV) {
        return xc_errf(XC_ERR_ARG, "transport %s: recv on a sending transport", tx->endpoint);
    }
    xc_msg m;
    memset(&m, 0, sizeof m);
    XC_TRY(tx->ops->recv(tx, timeout_ms, &m));
    *out = m;
    return XC_OK;
}

const char *xc_transport_endpoint(const xc_transport *tx) {
    return tx->endpoint;
}

const char *xc_transport_name(const xc_transport *tx) {
    return tx->ops->name;
}

/* ---- wire helpers ---- */

void xc_transport_wake(xc_transport *tx) {
    if (tx && tx->mode == XC_TRANSPORT_RECV && tx->ops->wake) {
        tx->ops->wake(tx);
    }
}

static xc_status send_wire(xc_transport *tx, const xc_wire_msg *m, xc_frame *tensors,
                           size_t n_tensors, int timeout_ms, bool trusted) {
    if (n_tensors > XC_MSG_MAX_FRAMES - 1) {
        return xc_errf(XC_ERR_ARG, "transport %s: %zu tensor frames (at most %d)", tx->endpoint,
                       n_tensors, XC_MSG_MAX_FRAMES - 1);
    }
    size_t lens[XC_MSG_MAX_FRAMES];
    xc_frame frames[XC_MSG_MAX_FRAMES];
    for (size_t i = 0; i < n_tensors; i++) {
        lens[i] = tensors[i].len;
        frames[i + 1] = tensors[i];
    }
    void *hdr = NULL;
    size_t hdr_len = 0;
    XC_TRY(trusted ? xc_wire_encode_trusted(m, &hdr, &hdr_len)
                   : xc_wire_encode(m, lens, n_tensors, &hdr, &hdr_len));
    frames[0] = (xc_frame){.data = hdr, .len = hdr_len, .free_fn = xc_frame_free_xc};
    xc_status st = xc_transport_send(tx, frames, n_tensors + 1, timeout_ms);
    if (st != XC_OK) {
        xc_free(hdr); /* the tensors stay the caller's */
    }
    return st;
}

xc_status xc_transport_send_wire(xc_transport *tx, const xc_wire_msg *m, xc_frame *tensors,
                                 size_t n_tensors, int timeout_ms) {
    return send_wire(tx, m, tensors, n_tensors, timeout_ms, false);
}

xc_status xc_transport_send_wire_trusted(xc_transport *tx, const xc_wire_msg *m, xc_frame *tensors,
                                         size_t n_tensors, int timeout_ms) {
    return send_wire(tx, m, tensors, n_tensors, timeout_ms, true);
}

xc_status xc_transport_recv_wire(xc_transport *tx, int timeout_ms, xc_arena *arena, xc_msg *msg,
                                 xc_wire_msg *out) {
    xc_msg m;
    XC_TRY(xc_transport_recv(tx, timeout_ms, &m));
    size_t lens[XC_MSG_MAX_FRAMES];
    for (size_t i = 1; i < m.n; i++) {
        lens[i - 1] = m.frames[i].len;
    }
    xc_status st = xc_wire_decode(m.frames[0].data, m.frames[0].len, lens, m.n - 1, arena, out);
    if (st != XC_OK) {
        XC_LOG_WARN("transport %s: dropped a bad message (%zu frames, header %zu bytes): %s",
                    tx->endpoint, m.n, m.frames[0].len, xc_err_last());
        xc_msg_fini(&m);
        return st;
    }
    *msg = m;
    return XC_OK;
}
