/* ZeroMQ transport: PUSH (send, connect) / PULL (receive, bind) over tcp:// and ipc://, with
 * zero-copy sends, small high-water marks, ZMQ_IMMEDIATE, bounded LINGER and optional CURVE.
 *
 * Why PUSH/PULL and not DEALER/ROUTER: every link is a one-way mailbox (xc_transport.h), the
 * sender identity travels in the messages, and PUSH/PULL has no routing ids to get wrong (a
 * ROUTER would silently drop messages to unknown ids unless ZMQ_ROUTER_MANDATORY is set). Each
 * transport owns its context (one I/O thread), so a transport survives fork() in its parent and
 * never shares sockets between threads. All native errors go through XC_ZMQ_CHECK. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <zmq.h>

#include "xc_cluster_impl.h"
#include "xc_log.h"
#include "xc_mem.h"

/* Frames smaller than this are copied (and their free_fn called before send returns): a copy of
 * a header costs less than the zero-copy bookkeeping, and it keeps small frees on our thread. */
#define ZMQ_COPY_BELOW (64u << 10)

#define ZAP_MAX_KEYS 1024

typedef struct zmq_tx {
    void *ctx;
    void *sock;
    int snd_timeo; /* last ZMQ_SNDTIMEO/RCVTIMEO set, to skip redundant setsockopt calls */
    int rcv_timeo;
    /* CURVE client authentication (RECV side): a ZAP handler thread that admits only these
     * client public keys. */
    void *zap; /* REP socket on inproc://zeromq.zap.01, owned by the thread once it runs */
    pthread_t zap_thread;
    bool zap_running;
    size_t n_keys;
    uint8_t (*keys)[32]; /* (n_keys) */
    int wake_fd;         /* RECV with conf.wakeable: an eventfd polled with the socket; else -1 */
} zmq_tx;

/* ---- native errors: converted here and only here ---- */

/* Maps zmq_errno() to a status with a message naming what failed. EAGAIN (a timeout on a
 * blocking call, or a full queue) is the only one that is not logged. */
static xc_status zmq_status(const char *endpoint, const char *what) {
    int e = zmq_errno();
    xc_status st;
    switch (e) {
    case EAGAIN:
        return xc_errf(XC_ERR_TIMEOUT, "zmq %s: %s: timed out", endpoint, what);
    case ENOMEM:
        st = XC_ERR_NOMEM;
        break;
    case EINVAL:
    case EPROTONOSUPPORT:
    case ENOCOMPATPROTO:
    case ENODEV: /* bind to an address no interface has */
        st = XC_ERR_ARG;
        break;
    default:
        st = XC_ERR_IO;
        break;
    }
    XC_LOG_WARN("zmq %s: %s: %s", endpoint, what, zmq_strerror(e));
    return xc_errf(st, "zmq %s: %s: %s", endpoint, what, zmq_strerror(e));
}

/* Evaluates a zmq call returning -1 on error; on error returns (or jumps with) a status. */
#define XC_ZMQ_CHECK(call, ep, what)                                                               \
    do {                                                                                           \
        if ((call) == -1) {                                                                        \
            return zmq_status((ep), (what));                                                       \
        }                                                                                          \
    } while (0)

#define XC_ZMQ_CHECK_GOTO(call, ep, what, st, label)                                               \
    do {                                                                                           \
        if ((call) == -1) {                                                                        \
            (st) = zmq_status((ep), (what));                                                       \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

static xc_status set_int(void *sock, const char *ep, int opt, int v, const char *what) {
    XC_ZMQ_CHECK(zmq_setsockopt(sock, opt, &v, sizeof v), ep, what);
    return XC_OK;
}

/* ---- CURVE client authentication (ZAP, ZeroMQ RFC 27) ---- */

/* Parses whitespace- or comma-separated Z85 public keys into z->keys. */
static xc_status parse_client_keys(zmq_tx *z, const char *ep, const char *list, const char *from) {
    size_t cap = 16;
    z->keys = xc_malloc(cap * sizeof *z->keys);
    if (!z->keys) {
        return xc_errf(XC_ERR_NOMEM, "zmq %s: no memory", ep);
    }
    const char *p = list;
    for (;;) {
        p += strspn(p, " ,\t\r\n");
        if (!*p) {
            break;
        }
        size_t n = strcspn(p, " ,\t\r\n");
        char key[41];
        if (n != 40) {
            return xc_errf(XC_ERR_ARG,
                           "zmq %s: client key %zu from %s is not a 40-character Z85 key", ep,
                           z->n_keys + 1, from);
        }
        memcpy(key, p, 40);
        key[40] = '\0';
        if (z->n_keys == ZAP_MAX_KEYS) {
            return xc_errf(XC_ERR_ARG, "zmq %s: more than %d client keys in %s", ep, ZAP_MAX_KEYS,
                           from);
        }
        if (z->n_keys == cap) {
            void *more = xc_realloc(z->keys, 2 * cap * sizeof *z->keys);
            if (!more) {
                return xc_errf(XC_ERR_NOMEM, "zmq %s: no memory", ep);
            }
            z->keys = more;
            cap *= 2;
        }
        if (!zmq_z85_decode(z->keys[z->n_keys], key)) {
            return xc_errf(XC_ERR_ARG, "zmq %s: client key %zu from %s is not valid Z85", ep,
                           z->n_keys + 1, from);
        }
        z->n_keys++;
        p += n;
    }
    if (z->n_keys == 0) {
        return xc_errf(XC_ERR_ARG, "zmq %s: %s lists no client key", ep, from);
    }
    return XC_OK;
}

/* Reads the allowed client keys from conf, XC_CURVE_CLIENT_KEYS or XC_CURVE_CLIENT_KEYS_FILE.
 * *found is false when none is configured (then any client with the server key may connect). */
static xc_status load_client_keys(zmq_tx *z, const char *ep, const xc_transport_conf *conf,
                                  bool *found) {
    *found = false;
    if (conf->curve_client_keys) {
        *found = true;
        return parse_client_keys(z, ep, conf->curve_client_keys, "the transport config");
    }
    const char *env = getenv("XC_CURVE_CLIENT_KEYS");
    if (env) {
        *found = true;
        return parse_client_keys(z, ep, env, "XC_CURVE_CLIENT_KEYS");
    }
    const char *path = getenv("XC_CURVE_CLIENT_KEYS_FILE");
    if (!path) {
        return XC_OK;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        return xc_errf(XC_ERR_ARG, "zmq %s: cannot open XC_CURVE_CLIENT_KEYS_FILE=%s: %s", ep, path,
                       strerror(errno));
    }
    size_t cap = (size_t)ZAP_MAX_KEYS * 42 + 1;
    char *buf = xc_malloc(cap);
    if (!buf) {
        fclose(f);
        return xc_errf(XC_ERR_NOMEM, "zmq %s: no memory", ep);
    }
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    *found = true;
    xc_status st = parse_client_keys(z, ep, buf, "XC_CURVE_CLIENT_KEYS_FILE");
    xc_free(buf);
    return st;
}

static bool key_allowed(const zmq_tx *z, const uint8_t *key) {
    for (size_t i = 0; i < z->n_keys; i++) {
        if (!memcmp(z->keys[i], key, 32)) {
            return true;
        }
    }
    return false;
}

/* Answers ZAP requests until the context terminates. Uses no xc_malloc: it runs on its own
 * thread. Request: version, request id, domain, address, identity, mechanism, credentials. */
static void *zap_main(void *arg) {
    zmq_tx *z = arg;
    for (;;) {
        char part[8][64];
        size_t len[8];
        int n = 0, more = 1;
        while (more) {
            int rc = zmq_recv(z->zap, part[n < 8 ? n : 7], sizeof part[0], 0);
            if (rc == -1) {
                if (zmq_errno() == EINTR) {
                    continue;
                }
                goto done; /* ETERM: the transport is closing */
            }
            if (n < 8) {
                len[n] = (size_t)rc < sizeof part[0] ? (size_t)rc : sizeof part[0];
                n++;
            }
            size_t sz = sizeof more;
            zmq_getsockopt(z->zap, ZMQ_RCVMORE, &more, &sz);
        }
        bool ok = n == 7 && len[5] == 5 && !memcmp(part[5], "CURVE", 5) && len[6] == 32 &&
                  key_allowed(z, (const uint8_t *)part[6]);
        if (!ok) {
            XC_LOG_WARN("zmq: refused a CURVE client whose key is not in the allowed list");
        }
        zmq_send(z->zap, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(z->zap, part[1], n > 1 ? len[1] : 0, ZMQ_SNDMORE);
        zmq_send(z->zap, ok ? "200" : "400", 3, ZMQ_SNDMORE);
        zmq_send(z->zap, ok ? "OK" : "unknown client key", ok ? 2 : 18, ZMQ_SNDMORE);
        zmq_send(z->zap, "", 0, ZMQ_SNDMORE);
        zmq_send(z->zap, "", 0, 0);
    }
done:
    zmq_close(z->zap);
    return NULL;
}

/* Binds the ZAP endpoint in this transport's context and starts the handler; must run before
 * the server socket binds. */
static xc_status zap_start(zmq_tx *z, const char *ep) {
    if (!(z->zap = zmq_socket(z->ctx, ZMQ_REP))) {
        return zmq_status(ep, "ZAP zmq_socket");
    }
    int zero = 0;
    zmq_setsockopt(z->zap, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(z->zap, "inproc://zeromq.zap.01") == -1) {
        xc_status st = zmq_status(ep, "ZAP bind");
        zmq_close(z->zap);
        z->zap = NULL;
        return st;
    }
    if (pthread_create(&z->zap_thread, NULL, zap_main, z) != 0) {
        zmq_close(z->zap);
        z->zap = NULL;
        return xc_errf(XC_ERR_IO, "zmq %s: cannot start the ZAP thread", ep);
    }
    z->zap_running = true;
    return XC_OK;
}

/* ---- CURVE keys ---- */

/* Reads a Z85 key from an explicit value, else env var `name`, else the file named by
 * `name`_FILE. *found is false when none is set. The key must decode as 32 bytes. */
static xc_status curve_key(const char *ep, const char *value, const char *name, char out[41],
                           bool *found) {
    *found = false;
    char buf[128];
    const char *src = value;
    const char *from = "the transport config";
    if (!src) {
        src = getenv(name);
        from = name;
    }
    char fname[64];
    snprintf(fname, sizeof fname, "%s_FILE", name);
    if (!src && getenv(fname)) {
        const char *path = getenv(fname);
        FILE *f = fopen(path, "r");
        if (!f) {
            return xc_errf(XC_ERR_ARG, "zmq %s: cannot open %s=%s: %s", ep, fname, path,
                           strerror(errno));
        }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) {
            buf[--n] = '\0';
        }
        src = buf;
        from = fname;
    }
    if (!src) {
        return XC_OK;
    }
    uint8_t raw[32];
    if (strlen(src) != 40 || !zmq_z85_decode(raw, src)) {
        return xc_errf(XC_ERR_ARG, "zmq %s: CURVE key from %s is not a 40-character Z85 key", ep,
                       from);
    }
    memcpy(out, src, 41);
    *found = true;
    return XC_OK;
}

static bool curve_wanted(const xc_transport_conf *conf) {
    const char *e = getenv("XC_CURVE");
    return conf->curve || (e && !strcmp(e, "1"));
}

/* RECV (server): own secret key, and a ZAP handler when client keys are configured. SEND
 * (client): the server's public key and own keypair (ephemeral when none is configured). */
static xc_status curve_setup(zmq_tx *z, const char *ep, xc_transport_mode mode,
                             const xc_transport_conf *conf) {
    void *sock = z->sock;
    if (!zmq_has("curve")) {
        return xc_errf(XC_ERR_UNSUPPORTED, "zmq %s: CURVE requested but libzmq lacks it", ep);
    }
    char secret[41], pub[41], server[41];
    bool have_secret, have_pub, have_server;
    XC_TRY(curve_key(ep, conf->curve_secret_key, "XC_CURVE_SECRET_KEY", secret, &have_secret));
    XC_TRY(curve_key(ep, conf->curve_public_key, "XC_CURVE_PUBLIC_KEY", pub, &have_pub));
    if (mode == XC_TRANSPORT_RECV) {
        if (!have_secret) {
            return xc_errf(XC_ERR_ARG,
                           "zmq %s: CURVE server needs a secret key "
                           "(XC_CURVE_SECRET_KEY or XC_CURVE_SECRET_KEY_FILE)",
                           ep);
        }
        XC_TRY(set_int(sock, ep, ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER"));
        XC_ZMQ_CHECK(zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret, 40), ep,
                     "ZMQ_CURVE_SECRETKEY");
        bool have_clients = false;
        XC_TRY(load_client_keys(z, ep, conf, &have_clients));
        if (have_clients) {
            XC_ZMQ_CHECK(zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "xc", 2), ep, "ZMQ_ZAP_DOMAIN");
            XC_TRY(zap_start(z, ep));
        }
        return XC_OK;
    }
    XC_TRY(curve_key(ep, conf->curve_server_key, "XC_CURVE_SERVER_KEY", server, &have_server));
    if (!have_server) {
        return xc_errf(XC_ERR_ARG,
                       "zmq %s: CURVE client needs the server's public key "
                       "(XC_CURVE_SERVER_KEY or XC_CURVE_SERVER_KEY_FILE)",
                       ep);
    }
    if (!have_secret) {
        /* No client identity configured: an ephemeral keypair still encrypts the link. */
        XC_ZMQ_CHECK(zmq_curve_keypair(pub, secret), ep, "zmq_curve_keypair");
    } else if (!have_pub) {
        XC_ZMQ_CHECK(zmq_curve_public(pub, secret), ep, "zmq_curve_public");
    }
    XC_ZMQ_CHECK(zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, 40), ep, "ZMQ_CURVE_SERVERKEY");
    XC_ZMQ_CHECK(zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 40), ep, "ZMQ_CURVE_PUBLICKEY");
    XC_ZMQ_CHECK(zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret, 40), ep, "ZMQ_CURVE_SECRETKEY");
    return XC_OK;
}

/* ---- open / close ---- */

static void zmq_close_tx(xc_transport *tx) {
    zmq_tx *z = tx->ctx;
    if (!z) {
        return;
    }
    if (z->sock) {
        zmq_close(z->sock); /* LINGER (set at open) bounds how long ctx_term waits */
    }
    if (z->ctx) {
        /* Terminating the context wakes the ZAP thread with ETERM; it closes its socket. */
        while (zmq_ctx_term(z->ctx) == -1 && zmq_errno() == EINTR) {
        }
    }
    if (z->zap_running) {
        pthread_join(z->zap_thread, NULL);
    }
    if (z->wake_fd >= 0) {
        close(z->wake_fd);
    }
    xc_free(z->keys);
    xc_free(z);
    tx->ctx = NULL;
}

static xc_status zmq_open_tx(xc_transport *tx, const char *ep, const xc_transport_conf *conf) {
    xc_status st = XC_OK;
    zmq_tx *z = xc_calloc(1, sizeof *z);
    if (!z) {
        return xc_errf(XC_ERR_NOMEM, "zmq %s: no memory", ep);
    }
    tx->ctx = z;
    z->snd_timeo = z->rcv_timeo = -2; /* not set yet */
    z->wake_fd = -1;
    if (tx->mode == XC_TRANSPORT_RECV && conf->wakeable &&
        (z->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        st = xc_errf(XC_ERR_IO, "zmq %s: eventfd: %s", ep, strerror(errno));
        goto fail;
    }
    if (!(z->ctx = zmq_ctx_new())) {
        st = zmq_status(ep, "zmq_ctx_new");
        goto fail;
    }
    bool recv = tx->mode == XC_TRANSPORT_RECV;
    if (!(z->sock = zmq_socket(z->ctx, recv ? ZMQ_PULL : ZMQ_PUSH))) {
        st = zmq_status(ep, "zmq_socket");
        goto fail;
    }
    /* LINGER: close never waits forever for a peer that is gone (the default is -1). */
    XC_TRY_GOTO(set_int(z->sock, ep, ZMQ_LINGER, conf->linger_ms, "ZMQ_LINGER"), st, fail);
    if (recv) {
        /* A small RCVHWM: a few tensor messages queued per peer, not 1000 x 16 MiB. */
        XC_TRY_GOTO(set_int(z->sock, ep, ZMQ_RCVHWM, conf->hwm, "ZMQ_RCVHWM"), st, fail);
        int64_t max = conf->max_frame_bytes > INT64_MAX ? -1 : (int64_t)conf->max_frame_bytes;
        XC_ZMQ_CHECK_GOTO(zmq_setsockopt(z->sock, ZMQ_MAXMSGSIZE, &max, sizeof max), ep,
                          "ZMQ_MAXMSGSIZE", st, fail);
    } else {
        XC_TRY_GOTO(set_int(z->sock, ep, ZMQ_SNDHWM, conf->hwm, "ZMQ_SNDHWM"), st, fail);
        /* IMMEDIATE: queue only to completed connections, so a send to an absent peer times
         * out instead of piling up silently. */
        XC_TRY_GOTO(set_int(z->sock, ep, ZMQ_IMMEDIATE, 1, "ZMQ_IMMEDIATE"), st, fail);
    }
    if (curve_wanted(conf)) {
        if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "tcp://", 6)) {
            XC_TRY_GOTO(curve_setup(z, ep, tx->mode, conf), st, fail);
        }
    }
    if (recv) {
        XC_ZMQ_CHECK_GOTO(zmq_bind(z->sock, ep), ep, "zmq_bind", st, fail);
        size_t n = sizeof tx->endpoint;
        XC_ZMQ_CHECK_GOTO(zmq_getsockopt(z->sock, ZMQ_LAST_ENDPOINT, tx->endpoint, &n), ep,
                          "ZMQ_LAST_ENDPOINT", st, fail);
    } else {
        XC_ZMQ_CHECK_GOTO(zmq_connect(z->sock, ep), ep, "zmq_connect", st, fail);
    }
    return XC_OK;
fail:
    if (z->sock) {
        int zero = 0;
        zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero);
    }
    zmq_close_tx(tx);
    return st;
}

/* ---- send ---- */

/* Zero-copy ownership: libzmq calls frame_release once it is done with the data, possibly on its
 * I/O thread. If the send fails the message is closed by us with committed == 0 and the caller
 * keeps the data (ownership moves only on XC_OK). The box uses libc malloc on purpose: it is
 * freed on libzmq's thread, where the xc_mem hooks (cmocka's allocator in tests) must not run. */
typedef struct frame_box {
    xc_frame_free_fn free_fn;
    void *hint;
    int committed;
} frame_box;

static void frame_release(void *data, void *hint) {
    frame_box *b = hint;
    if (__atomic_load_n(&b->committed, __ATOMIC_ACQUIRE)) {
        b->free_fn(data, b->hint);
    }
    free(b);
}

static xc_status set_timeo(zmq_tx *z, const char *ep, int opt, int *cache, int ms) {
    if (*cache != ms) {
        XC_TRY(
            set_int(z->sock, ep, opt, ms, opt == ZMQ_SNDTIMEO ? "ZMQ_SNDTIMEO" : "ZMQ_RCVTIMEO"));
        *cache = ms;
    }
    return XC_OK;
}

/* Tests only (xc_transport_zmq_fault_at): the part at which the next multipart send fails as if
 * the context had been terminated; -1 = none. */
static int g_fault_part = -1;

void xc_transport_zmq_fault_at(int part) {
    __atomic_store_n(&g_fault_part, part, __ATOMIC_SEQ_CST);
}

static xc_status zmq_send_tx(xc_transport *tx, xc_frame *frames, size_t n, int timeout_ms) {
    zmq_tx *z = tx->ctx;
    const char *ep = tx->endpoint;
    zmq_msg_t msgs[XC_MSG_MAX_FRAMES];
    frame_box *boxes[XC_MSG_MAX_FRAMES] = {0};
    size_t built = 0;
    xc_status st = XC_OK;
    for (; built < n; built++) {
        xc_frame *f = &frames[built];
        zmq_msg_t *m = &msgs[built];
        if (f->free_fn && f->len >= ZMQ_COPY_BELOW) {
            frame_box *b = malloc(sizeof *b);
            if (!b) {
                st = xc_errf(XC_ERR_NOMEM, "zmq %s: no memory", ep);
                goto fail;
            }
            *b = (frame_box){.free_fn = f->free_fn, .hint = f->hint, .committed = 0};
            if (zmq_msg_init_data(m, f->data, f->len, frame_release, b) == -1) {
                free(b);
                st = zmq_status(ep, "zmq_msg_init_data");
                goto fail;
            }
            boxes[built] = b;
        } else {
            XC_ZMQ_CHECK_GOTO(zmq_msg_init_size(m, f->len), ep, "zmq_msg_init_size", st, fail);
            if (f->len) {
                memcpy(zmq_msg_data(m), f->data, f->len);
            }
        }
    }
    /* The first part waits (for room and a connected peer) up to the timeout; libzmq delivers a
     * multipart message atomically, so the later parts never wait. EINTR restarts the wait. */
    uint64_t deadline = xc_deadline_ns(timeout_ms);
    size_t sent = 0;
    for (; sent < n; sent++) {
        int flags = (sent + 1 < n ? ZMQ_SNDMORE : 0) | (sent > 0 ? ZMQ_DONTWAIT : 0);
        if (boxes[sent]) {
            __atomic_store_n(&boxes[sent]->committed, 1, __ATOMIC_RELEASE);
        }
        int rc = -1;
        for (;;) {
            if (sent == 0 && (st = set_timeo(z, ep, ZMQ_SNDTIMEO, &z->snd_timeo,
                                             xc_deadline_left_ms(deadline))) != XC_OK) {
                break;
            }
            if (sent > 0 && (int)sent == __atomic_load_n(&g_fault_part, __ATOMIC_SEQ_CST)) {
                __atomic_store_n(&g_fault_part, -1, __ATOMIC_SEQ_CST);
                errno = ETERM; /* fault injection: what a terminated context does mid-message */
                break;
            }
            rc = zmq_msg_send(&msgs[sent], z->sock, flags);
            if (rc != -1 || zmq_errno() != EINTR) {
                break;
            }
        }
        if (rc == -1) {
            st = st != XC_OK ? st : zmq_status(ep, "zmq_msg_send");
            break;
        }
    }
    /* On success, or after a failure past the first part (which only context termination can
     * cause: the sent parts are libzmq's already), every frame counts as consumed. Such a send
     * returns XC_OK (ownership moves only on XC_OK, so the caller must not free the frames): the
     * message is lost, as if the peer had failed right after receiving it, which the cluster's
     * failure handling (heartbeats) covers. An empty last part closes the open multipart message
     * so that the next send starts a new one (the receiver drops the truncated message). */
    bool consumed = sent > 0;
    if (consumed && sent < n) {
        XC_LOG_ERROR("zmq %s: multipart send failed after part %zu of %zu (%s); the frames are "
                     "consumed and the message is lost",
                     ep, sent, n, xc_err_last());
        (void)zmq_send(z->sock, "", 0, ZMQ_DONTWAIT);
    }
    for (size_t k = sent; k < n; k++) {
        if (boxes[k]) {
            __atomic_store_n(&boxes[k]->committed, consumed ? 1 : 0, __ATOMIC_RELEASE);
        }
        zmq_msg_close(&msgs[k]); /* releases the box; the data only if consumed */
    }
    if (consumed) {
        /* Copied frames are no longer needed: release them now, on the caller's thread. */
        for (size_t i = 0; i < n; i++) {
            if (!boxes[i] && frames[i].free_fn) {
                frames[i].free_fn(frames[i].data, frames[i].hint);
            }
        }
    }
    return consumed ? XC_OK : st;
fail:
    for (size_t k = 0; k < built; k++) {
        zmq_msg_close(&msgs[k]);
    }
    return st;
}

/* ---- receive ---- */

static void zmq_frame_free(void *data, void *hint) {
    (void)data;
    zmq_msg_close(hint);
    xc_free(hint);
}

/* Waits (wakeable receivers) until a message is there (XC_OK), a wake-up or the deadline
 * (XC_ERR_TIMEOUT). */
static xc_status wait_readable(zmq_tx *z, const char *ep, uint64_t deadline, int timeout_ms) {
    zmq_pollitem_t it[2] = {{.socket = z->sock, .events = ZMQ_POLLIN},
                            {.fd = z->wake_fd, .events = ZMQ_POLLIN}};
    int rc;
    do {
        it[0].revents = it[1].revents = 0;
        rc = zmq_poll(it, 2, xc_deadline_left_ms(deadline));
    } while (rc == -1 && zmq_errno() == EINTR);
    if (rc == -1) {
        return zmq_status(ep, "zmq_poll");
    }
    if (it[1].revents & ZMQ_POLLIN) {
        uint64_t v;
        if (read(z->wake_fd, &v, sizeof v) < 0) {
            /* nothing pending after all (EAGAIN): the wake-up is spent either way */
        }
    }
    if (!(it[0].revents & ZMQ_POLLIN)) {
        return xc_errf(XC_ERR_TIMEOUT, "zmq %s: nothing received in %d ms", ep, timeout_ms);
    }
    return XC_OK;
}

static void zmq_wake_tx(xc_transport *tx) {
    zmq_tx *z = tx->ctx;
    uint64_t one = 1;
    if (z->wake_fd >= 0 && write(z->wake_fd, &one, sizeof one) < 0) {
        /* the counter is full: a wake-up is pending anyway */
    }
}

static xc_status zmq_recv_tx(xc_transport *tx, int timeout_ms, xc_msg *out) {
    zmq_tx *z = tx->ctx;
    const char *ep = tx->endpoint;
    uint64_t deadline = xc_deadline_ns(timeout_ms);
    xc_status st = XC_OK;
    size_t n = 0;
    if (z->wake_fd >= 0) {
        XC_TRY(wait_readable(z, ep, deadline, timeout_ms));
    }
    for (;;) {
        zmq_msg_t *m = xc_malloc(sizeof *m);
        if (!m) {
            st = xc_errf(XC_ERR_NOMEM, "zmq %s: no memory", ep);
            goto fail;
        }
        zmq_msg_init(m);
        int rc;
        do {
            if (n == 0) {
                st = set_timeo(z, ep, ZMQ_RCVTIMEO, &z->rcv_timeo, xc_deadline_left_ms(deadline));
                if (st != XC_OK) {
                    zmq_frame_free(NULL, m);
                    goto fail;
                }
            }
            rc = zmq_msg_recv(m, z->sock, 0);
        } while (rc == -1 && zmq_errno() == EINTR);
        if (rc == -1) {
            st = zmq_status(ep, "zmq_msg_recv");
            zmq_frame_free(NULL, m);
            goto fail;
        }
        int more = zmq_msg_more(m);
        if (n == XC_MSG_MAX_FRAMES) {
            /* Too many parts: drain the rest of this message so the next one starts clean. */
            zmq_frame_free(NULL, m);
            while (more) {
                zmq_msg_t tmp;
                zmq_msg_init(&tmp);
                zmq_msg_recv(&tmp, z->sock, 0);
                more = zmq_msg_more(&tmp);
                zmq_msg_close(&tmp);
            }
            st = xc_errf(XC_ERR_PROTO, "zmq %s: dropped a message of more than %d frames", ep,
                         XC_MSG_MAX_FRAMES);
            XC_LOG_WARN("%s", xc_err_last());
            goto fail;
        }
        out->frames[n++] = (xc_frame){
            .data = zmq_msg_data(m), .len = zmq_msg_size(m), .free_fn = zmq_frame_free, .hint = m};
        out->n = n;
        if (!more) {
            return XC_OK;
        }
    }
fail:
    xc_msg_fini(out);
    return st;
}

const xc_transport_ops xc_transport_zmq_ops = {
    .name = "zmq",
    .open = zmq_open_tx,
    .close = zmq_close_tx,
    .send = zmq_send_tx,
    .recv = zmq_recv_tx,
    .wake = zmq_wake_tx,
};
