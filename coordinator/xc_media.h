/* Fetching images from http(s) URLs for the chat API, on libcurl, with the guards an open fetcher
 * needs: a host allowlist, only http/https, no redirects, no proxies, a size cap enforced while
 * downloading, a total time limit, and no connection to loopback, private, link-local, CGNAT,
 * ULA, multicast or unspecified addresses unless allowed (checked on the address curl is about to
 * connect to, so DNS rebinding cannot slip one in). See docs/api.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "xc_status.h"

/* What the server fetches (immutable after startup; strings borrowed). */
typedef struct xc_media_conf {
    const char *allowed_domains; /* comma-separated host names; "*.example.com" = any subdomain
                                    of example.com; NULL or "" = no http(s) fetching */
    size_t max_bytes;            /* largest body accepted */
    double timeout_s;            /* whole fetch (resolve, connect, transfer) at most */
    bool allow_private;          /* allow loopback/private/link-local/... addresses */
} xc_media_conf;

/* Why a fetch failed (the HTTP API maps these to statuses, docs/api.md). */
typedef enum xc_media_error {
    XC_MEDIA_OK = 0,
    XC_MEDIA_BAD_URL,   /* not http(s), unparsable, credentials in the URL */
    XC_MEDIA_DISABLED,  /* no allowed domains configured */
    XC_MEDIA_HOST,      /* host not in the allowlist */
    XC_MEDIA_PRIVATE,   /* every address of the host is private (and that is not allowed) */
    XC_MEDIA_REDIRECT,  /* a 3xx answer */
    XC_MEDIA_STATUS,    /* another non-2xx answer */
    XC_MEDIA_TOO_LARGE, /* Content-Length or the body over max_bytes */
    XC_MEDIA_TIMEOUT,   /* past timeout_s (or the caller's deadline) */
    XC_MEDIA_NETWORK,   /* DNS, connect, TLS or transfer failure */
    XC_MEDIA_NOMEM,
} xc_media_error;

/* Initializes libcurl once per process (thread-safe; call before threads use xc_media_fetch, or
 * let xc_media_fetch do it). XC_ERR_IO if libcurl cannot start. */
xc_status xc_media_global_init(void);

/* Whether host (a name or an IP literal, IPv6 with or without brackets; case-insensitive) is
 * allowed by the comma-separated list: an exact match, or "*.example.com" matching a name that
 * ends in ".example.com". */
bool xc_media_host_allowed(const char *allowed_domains, const char *host);

/* Whether a connection to addr (AF_INET or AF_INET6) must be refused without allow_private:
 * 0.0.0.0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16, 224/4 multicast, 240/4
 * and broadcast; ::, ::1, fc00::/7, fe80::/10, fec0::/10, ff00::/8, and IPv4 addresses embedded
 * in ::ffff:0:0/96, ::/96, 64:ff9b::/96 and 2002::/16 by the IPv4 rules. Other families: true. */
bool xc_media_addr_private(const struct sockaddr *addr);

/* Checks url against the conf without any network traffic (scheme, syntax, allowlist).
 * XC_MEDIA_OK or the reason; msg (msg_len) gets a message naming what is wrong. */
xc_media_error xc_media_check_url(const xc_media_conf *conf, const char *url, char *msg,
                                  size_t msg_len);

/* Fetches url (checked as xc_media_check_url) and returns the body in *data (xc_malloc'd, the
 * caller frees) and *len. deadline_ns (xc_now_ns clock, 0 = none) cuts the fetch short as well
 * as conf->timeout_s; *deadline_hit tells the caller that the deadline, not the media timeout,
 * ended it. On failure returns the reason, msg gets a message, *data is untouched. */
xc_media_error xc_media_fetch(const xc_media_conf *conf, const char *url, uint64_t deadline_ns,
                              uint8_t **data, size_t *len, bool *deadline_hit, char *msg,
                              size_t msg_len);
