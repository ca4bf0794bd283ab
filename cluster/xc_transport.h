/* Message transports behind one vtable: ZeroMQ (tcp://, ipc://), MPI (mpi://RANK) and in-process
 * queues (inproc://NAME). A message is a short list of frames (frame 0 = an xc_wire header,
 * then raw tensor frames) that arrives whole or not at all.
 *
 * Links are one-way mailboxes (ZeroMQ PUSH/PULL): a process opens one XC_TRANSPORT_RECV transport
 * on its own endpoint (bind) and one XC_TRANSPORT_SEND transport per peer it sends to (connect).
 * Who sent a message is in the message (xc_wire Register carries the worker id), so no routing
 * ids are needed. A transport object is used by one thread at a time. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_arena.h"
#include "xc_status.h"
#include "xc_wire.h"

/* Releases a frame's data; may run on another thread (a ZeroMQ I/O thread, or the receiver's
 * thread for inproc), so it must be thread-safe. */
typedef void (*xc_frame_free_fn)(void *data, void *hint);

/* One frame of a message. With free_fn set, xc_transport_send takes the data zero-copy: on XC_OK
 * the transport owns it and calls free_fn(data, hint) exactly once when done (the data must stay
 * untouched until then). With free_fn NULL the data is borrowed and copied before send returns. */
typedef struct xc_frame {
    void *data;
    size_t len;
    xc_frame_free_fn free_fn;
    void *hint;
} xc_frame;

#define XC_MSG_MAX_FRAMES 4 /* header + payload + image rows, and one spare */

/* A received message; owns its frames until xc_msg_fini. */
typedef struct xc_msg {
    size_t n;
    xc_frame frames[XC_MSG_MAX_FRAMES];
    uint64_t queued_ns; /* inproc: when the sender queued it (xc_now_ns); 0 where not known (zmq,
                           mpi). The sim backend starts its modeled compute from it. */
} xc_msg;

/* Releases every frame (calls each free_fn) and empties m. NULL or an empty message is a no-op. */
void xc_msg_fini(xc_msg *m);

typedef enum xc_transport_mode {
    XC_TRANSPORT_RECV = 1, /* bind the endpoint and receive */
    XC_TRANSPORT_SEND = 2, /* connect to a peer's endpoint and send */
} xc_transport_mode;

typedef struct xc_transport_conf {
    int hwm;                /* messages queued per link on each side (tensor sockets: small) */
    int linger_ms;          /* how long close waits for undelivered messages (>= 0) */
    size_t max_frame_bytes; /* a receiver drops peers that send a bigger frame */
    /* ZeroMQ CURVE (tcp/ipc). Keys are 40-character Z85 strings; a NULL key is read from the
     * environment: XC_CURVE_SERVER_KEY, XC_CURVE_SECRET_KEY, XC_CURVE_PUBLIC_KEY, or a file
     * named by the same variable with _FILE appended. CURVE is on when curve is true or
     * XC_CURVE=1. See docs/protocol.md. */
    bool curve;
    const char *curve_server_key; /* the RECV side's public key (needed by SEND) */
    const char *curve_secret_key; /* own secret key (required by RECV; SEND makes one if unset) */
    const char *curve_public_key; /* own public key (derived from the secret if unset) */
    /* RECV only: public keys of the senders let in (comma or whitespace separated); NULL reads
     * XC_CURVE_CLIENT_KEYS(_FILE); none at all admits any sender that knows the server key. */
    const char *curve_client_keys;
    /* RECV: xc_transport_wake can end a receive early (zmq: an eventfd polled with the socket,
     * one more poll per message; mpi: a flag its polling loop checks; inproc always can) */
    bool wakeable;
} xc_transport_conf;

#define XC_TRANSPORT_CONF_INIT                                                                     \
    { .hwm = 4, .linger_ms = 1000, .max_frame_bytes = (size_t)1 << 30 }

typedef struct xc_transport xc_transport;

/* Opens a transport on endpoint: "tcp://HOST:PORT" (RECV may use port *), "ipc:///PATH",
 * "inproc://NAME" or "mpi://RANK[/CHANNEL]" (RECV: RANK is this rank or *). conf NULL means
 * XC_TRANSPORT_CONF_INIT. XC_ERR_ARG for a bad endpoint or key, XC_ERR_UNSUPPORTED for mpi:// in
 * a build without MPI, XC_ERR_IO if the bind/connect fails, XC_ERR_NOMEM. */
xc_status xc_transport_open(const char *endpoint, xc_transport_mode mode,
                            const xc_transport_conf *conf, xc_transport **out);

/* Closes the link, waiting at most linger_ms for undelivered messages; never hangs on a peer that
 * is gone. Frees every frame it still holds. NULL is a no-op. */
void xc_transport_close(xc_transport *tx);

/* Sends frames[0..n) as one message (1 <= n <= XC_MSG_MAX_FRAMES), waiting at most timeout_ms
 * (< 0: forever) for room or for a connected peer. On XC_OK the frames with a free_fn belong to
 * the transport; on failure the caller still owns them (nothing was taken). A send that fails
 * after the native layer took part of the message (a ZeroMQ context terminated mid-message, an
 * MPI send of a later part refused) has consumed every frame: it is logged and returns XC_OK,
 * and the message is lost as if the peer had failed after receiving it. XC_ERR_TIMEOUT,
 * XC_ERR_ARG, XC_ERR_IO. */
xc_status xc_transport_send(xc_transport *tx, xc_frame *frames, size_t n, int timeout_ms);

/* Tests only: the next ZeroMQ multipart send fails at part `part` (>= 1) as if its context had
 * been terminated (ETERM) after libzmq took the earlier parts; -1 cancels. */
void xc_transport_zmq_fault_at(int part);

/* Receives one whole message into *out (owned by the caller: xc_msg_fini), waiting at most
 * timeout_ms (< 0: forever). XC_ERR_TIMEOUT, XC_ERR_PROTO (a message with too many frames, which
 * is dropped), XC_ERR_IO, XC_ERR_NOMEM. */
xc_status xc_transport_recv(xc_transport *tx, int timeout_ms, xc_msg *out);

/* From any thread: a xc_transport_recv waiting on tx (RECV, opened with conf.wakeable) returns
 * XC_ERR_TIMEOUT now, or the next one does at once if none waits (one wake-up is kept until a
 * receive returns). A no-op on a receiver not opened wakeable (zmq, mpi). */
void xc_transport_wake(xc_transport *tx);

/* The endpoint as opened, resolved ("tcp://127.0.0.1:41234" for port *). A view valid until
 * close. */
const char *xc_transport_endpoint(const xc_transport *tx);

/* "zmq", "mpi" or "inproc". */
const char *xc_transport_name(const xc_transport *tx);

/* Encodes m (xc_wire_encode) as frame 0 and sends it followed by tensors[0..n_tensors) as
 * xc_transport_send does (the tensor frames' ownership moves only on XC_OK). XC_ERR_ARG for an
 * invalid message. */
/* xc_transport_send_wire with xc_wire_encode_trusted: for messages the sender built itself from
 * checked state (the coordinator's micro-batches); the receiver checks them. */
xc_status xc_transport_send_wire_trusted(xc_transport *tx, const xc_wire_msg *m, xc_frame *tensors,
                                         size_t n_tensors, int timeout_ms);

xc_status xc_transport_send_wire(xc_transport *tx, const xc_wire_msg *m, xc_frame *tensors,
                                 size_t n_tensors, int timeout_ms);

/* Receives a message and decodes its header into *out (views into arena and into *msg, which
 * the caller owns on XC_OK and releases with xc_msg_fini after using the tensor frames
 * msg->frames[1..]). A bad header (garbage, truncated, wrong version, impossible sizes) is
 * logged, dropped and reported as XC_ERR_PROTO; the link stays usable. */
xc_status xc_transport_recv_wire(xc_transport *tx, int timeout_ms, xc_arena *arena, xc_msg *msg,
                                 xc_wire_msg *out);
