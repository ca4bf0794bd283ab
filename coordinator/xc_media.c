/* http(s) image fetching for the chat API on libcurl: allowlisted hosts only, no redirects, no
 * proxies, a size cap while downloading, a total time limit, and no private addresses (checked
 * on every address curl is about to connect to). */
#include "xc_media.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "xc_mem.h"
#include "xc_time.h"

#define MAX_URL_LEN 8192

/* ---- libcurl ---- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static CURLcode g_init_rc = CURLE_FAILED_INIT;

static void global_init_once(void) {
    g_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

xc_status xc_media_global_init(void) {
    pthread_once(&g_once, global_init_once);
    if (g_init_rc != CURLE_OK) {
        return xc_errf(XC_ERR_IO, "libcurl cannot start: %s", curl_easy_strerror(g_init_rc));
    }
    return XC_OK;
}

/* ---- host allowlist ---- */

/* Lower-cases host into out without IPv6 brackets and a trailing dot. False if it does not fit. */
static bool norm_host(const char *h, size_t n, char *out, size_t cap) {
    while (n > 0 && isspace((unsigned char)*h)) {
        h++;
        n--;
    }
    while (n > 0 && isspace((unsigned char)h[n - 1])) {
        n--;
    }
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n > 0 && h[n - 1] == '.') {
        n--;
    }
    if (n + 1 > cap) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = (char)tolower((unsigned char)h[i]);
    }
    out[n] = 0;
    return true;
}

bool xc_media_host_allowed(const char *allowed_domains, const char *host) {
    char want[512], entry[512];
    if (!allowed_domains || !host || !norm_host(host, strlen(host), want, sizeof want) ||
        !want[0]) {
        return false;
    }
    size_t wl = strlen(want);
    for (const char *p = allowed_domains; *p;) {
        size_t n = strcspn(p, ",");
        if (norm_host(p, n, entry, sizeof entry) && entry[0]) {
            if (!strncmp(entry, "*.", 2)) {
                size_t sl = strlen(entry + 1); /* ".example.com" */
                if (sl > 1 && wl > sl && !strcmp(want + wl - sl, entry + 1)) {
                    return true;
                }
            } else if (!strcmp(entry, want)) {
                return true;
            }
        }
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    return false;
}

/* ---- addresses ---- */

static bool v4_private(uint32_t a) {
    static const struct {
        uint32_t net, mask;
    } nets[] = {
        {0x00000000u, 0xff000000u}, /* 0.0.0.0/8 "this network" */
        {0x0a000000u, 0xff000000u}, /* 10/8 RFC 1918 */
        {0x64400000u, 0xffc00000u}, /* 100.64/10 CGNAT (RFC 6598) */
        {0x7f000000u, 0xff000000u}, /* 127/8 loopback */
        {0xa9fe0000u, 0xffff0000u}, /* 169.254/16 link-local (cloud metadata lives here) */
        {0xac100000u, 0xfff00000u}, /* 172.16/12 RFC 1918 */
        {0xc0000000u, 0xffffff00u}, /* 192.0.0/24 IETF protocol assignments */
        {0xc0a80000u, 0xffff0000u}, /* 192.168/16 RFC 1918 */
        {0xc6120000u, 0xfffe0000u}, /* 198.18/15 benchmarking */
        {0xe0000000u, 0xf0000000u}, /* 224/4 multicast */
        {0xf0000000u, 0xf0000000u}, /* 240/4 reserved, 255.255.255.255 broadcast */
    };

    for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
        if ((a & nets[i].mask) == nets[i].net) {
            return true;
        }
    }
    return false;
}

static uint32_t be32(const uint8_t *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static bool v6_private(const uint8_t b[16]) {
    static const uint8_t zero[12] = {0};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    /* IPv4 inside IPv6: ::a.b.c.d (also :: and ::1), ::ffff:a.b.c.d, 64:ff9b::a.b.c.d */
    if (!memcmp(b, zero, 12) || !memcmp(b, mapped, 12) || !memcmp(b, nat64, 12)) {
        return v4_private(be32(b + 12));
    }
    if (b[0] == 0x20 && b[1] == 0x02) { /* 6to4 2002:a.b.c.d::/48 */
        return v4_private(be32(b + 2));
    }
    if ((b[0] & 0xfe) == 0xfc) { /* fc00::/7 unique local */
        return true;
    }
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) { /* fe80::/10 link-local */
        return true;
    }
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) { /* fec0::/10 site-local (deprecated) */
        return true;
    }
    return b[0] == 0xff; /* ff00::/8 multicast */
}

bool xc_media_addr_private(const struct sockaddr *addr) {
    if (addr->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, addr, sizeof in);
        return v4_private(ntohl(in.sin_addr.s_addr));
    }
    if (addr->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        return v6_private(in6.sin6_addr.s6_addr);
    }
    return true;
}

/* ---- URL checks ---- */

/* Parses and checks url into *out (a CURLU the caller frees) and host. */
static xc_media_error parse_url(const xc_media_conf *conf, const char *url, CURLU **out, char *host,
                                size_t host_len, char *msg, size_t msg_len) {
    if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8)) {
        snprintf(msg, msg_len, "only http:// and https:// image URLs are fetched");
        return XC_MEDIA_BAD_URL;
    }
    if (!conf || !conf->allowed_domains || !conf->allowed_domains[0]) {
        snprintf(msg, msg_len,
                 "http(s) image URLs are not fetched by this server (no "
                 "--allowed-media-domains); send the image as a data: URL "
                 "(data:image/png;base64,...)");
        return XC_MEDIA_DISABLED;
    }
    if (xc_media_global_init() != XC_OK) {
        snprintf(msg, msg_len, "image URLs cannot be fetched: %s", xc_err_last());
        return XC_MEDIA_NETWORK;
    }
    if (strlen(url) > MAX_URL_LEN) {
        snprintf(msg, msg_len, "image URL is longer than %d bytes", MAX_URL_LEN);
        return XC_MEDIA_BAD_URL;
    }
    CURLU *u = curl_url();
    if (!u) {
        snprintf(msg, msg_len, "out of memory for an image URL");
        return XC_MEDIA_NOMEM;
    }
    char *h = NULL, *user = NULL, *pw = NULL;
    xc_media_error e = XC_MEDIA_OK;
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        snprintf(msg, msg_len, "image URL cannot be parsed: %s", curl_url_strerror(uc));
        e = XC_MEDIA_BAD_URL;
    } else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
               curl_url_get(u, CURLUPART_PASSWORD, &pw, 0) == CURLUE_OK) {
        snprintf(msg, msg_len, "image URL may not hold credentials (user@host)");
        e = XC_MEDIA_BAD_URL;
    } else if (curl_url_get(u, CURLUPART_HOST, &h, 0) != CURLUE_OK || !h || !h[0]) {
        snprintf(msg, msg_len, "image URL has no host");
        e = XC_MEDIA_BAD_URL;
    } else if (!xc_media_host_allowed(conf->allowed_domains, h)) {
        snprintf(msg, msg_len,
                 "image host '%.200s' is not in this server's allowed media domains "
                 "(--allowed-media-domains)",
                 h);
        e = XC_MEDIA_HOST;
    } else {
        snprintf(host, host_len, "%s", h);
    }
    curl_free(h);
    curl_free(user);
    curl_free(pw);
    if (e != XC_MEDIA_OK) {
        curl_url_cleanup(u);
        return e;
    }
    *out = u;
    return XC_MEDIA_OK;
}

xc_media_error xc_media_check_url(const xc_media_conf *conf, const char *url, char *msg,
                                  size_t msg_len) {
    CURLU *u = NULL;
    char host[512];
    xc_media_error e = parse_url(conf, url, &u, host, sizeof host, msg, msg_len);
    curl_url_cleanup(u);
    return e;
}

/* ---- fetching ---- */

typedef struct fetch_ctx {
    const xc_media_conf *conf;
    CURL *curl;
    uint8_t *buf;
    size_t len, cap;
    bool too_large, bad_status, nomem;
    int refused; /* connection attempts refused as private */
    char refused_addr[INET6_ADDRSTRLEN];
} fetch_ctx;

/* Every address curl connects to passes here first: refuse private ones (DNS rebinding gets
 * nothing from a check made at another time). */
static curl_socket_t open_socket(void *user, curlsocktype purpose, struct curl_sockaddr *a) {
    fetch_ctx *x = user;
    if (purpose != CURLSOCKTYPE_IPCXN) {
        return CURL_SOCKET_BAD;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    size_t n = a->addrlen < sizeof ss ? a->addrlen : sizeof ss;
    memcpy(&ss, &a->addr, n);
    bool v6 = ss.ss_family == AF_INET6 && n >= sizeof(struct sockaddr_in6);
    bool v4 = ss.ss_family == AF_INET && n >= sizeof(struct sockaddr_in);
    if (!v4 && !v6) {
        x->refused++;
        return CURL_SOCKET_BAD;
    }
    if (!x->conf->allow_private && xc_media_addr_private((const struct sockaddr *)&ss)) {
        const void *ip = v6 ? (const void *)&((const struct sockaddr_in6 *)&ss)->sin6_addr
                            : (const void *)&((const struct sockaddr_in *)&ss)->sin_addr;
        inet_ntop(ss.ss_family, ip, x->refused_addr, sizeof x->refused_addr);
        x->refused++;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype, a->protocol);
}

static size_t on_data(char *p, size_t size, size_t nmemb, void *user) {
    fetch_ctx *x = user;
    size_t n = size * nmemb;
    if (n == 0) {
        return 0;
    }
    long code = 0;
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &code);
    if (code < 200 || code > 299) {
        x->bad_status = true;
        return 0; /* not an image: do not read the body */
    }
    if (n > x->conf->max_bytes - x->len) {
        x->too_large = true;
        return 0; /* aborts the transfer */
    }
    if (x->len + n > x->cap) {
        size_t cap = x->cap ? x->cap : 65536;
        while (cap < x->len + n) {
            cap *= 2;
        }
        cap = cap < x->conf->max_bytes ? cap : x->conf->max_bytes;
        uint8_t *b = xc_realloc(x->buf, cap);
        if (!b) {
            x->nomem = true;
            return 0;
        }
        x->buf = b;
        x->cap = cap;
    }
    memcpy(x->buf + x->len, p, n);
    x->len += n;
    return n;
}

xc_media_error xc_media_fetch(const xc_media_conf *conf, const char *url, uint64_t deadline_ns,
                              uint8_t **data, size_t *len, bool *deadline_hit, char *msg,
                              size_t msg_len) {
    *deadline_hit = false;
    CURLU *u = NULL;
    char host[512];
    xc_media_error e = parse_url(conf, url, &u, host, sizeof host, msg, msg_len);
    if (e != XC_MEDIA_OK) {
        return e;
    }
    /* the limit: the media timeout, or what is left of the caller's deadline if sooner */
    uint64_t now = xc_now_ns();
    double limit_s = conf->timeout_s > 0 ? conf->timeout_s : 1e9;
    if (deadline_ns) {
        double left = deadline_ns > now ? (double)(deadline_ns - now) * 1e-9 : 0;
        if (left <= limit_s) {
            limit_s = left;
            *deadline_hit = true; /* provisional: only reported with a timeout */
        }
    }
    long limit_ms = (long)(limit_s * 1000.0);
    if (limit_ms < 1) {
        curl_url_cleanup(u);
        snprintf(msg, msg_len, "no time left to fetch the image");
        return XC_MEDIA_TIMEOUT;
    }
    fetch_ctx x = {.conf = conf};
    x.curl = curl_easy_init();
    if (!x.curl) {
        curl_url_cleanup(u);
        snprintf(msg, msg_len, "out of memory for an image fetch");
        return XC_MEDIA_NOMEM;
    }
    CURL *c = x.curl;
    curl_easy_setopt(c, CURLOPT_CURLU, u); /* exactly the URL that was checked */
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never through a proxy from the environment */
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, limit_ms);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)conf->max_bytes);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &x);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "xcpipe-media/1");
    curl_easy_setopt(c, CURLOPT_HTTP_CONTENT_DECODING, 0L); /* bytes as sent: no zip bombs */
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 300 && code <= 399) {
        char *loc = NULL;
        curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &loc);
        snprintf(msg, msg_len,
                 "image URL answered %ld (a redirect%s%.200s); redirects are not followed: send "
                 "the final URL",
                 code, loc ? " to " : "", loc ? loc : "");
        e = XC_MEDIA_REDIRECT;
    } else if (code != 0 && (code < 200 || code > 299)) {
        snprintf(msg, msg_len, "image URL answered HTTP %ld", code);
        e = XC_MEDIA_STATUS;
    } else if (x.nomem) {
        snprintf(msg, msg_len, "out of memory for a fetched image");
        e = XC_MEDIA_NOMEM;
    } else if (x.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        snprintf(msg, msg_len, "image at the URL is larger than the limit of %zu bytes",
                 conf->max_bytes);
        e = XC_MEDIA_TOO_LARGE;
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        if (*deadline_hit) {
            snprintf(msg, msg_len, "the request's deadline passed while fetching the image");
        } else {
            snprintf(msg, msg_len, "fetching the image took longer than %.1f s (--media-timeout)",
                     conf->timeout_s);
        }
        e = XC_MEDIA_TIMEOUT;
    } else if (rc != CURLE_OK && x.refused > 0 && x.refused_addr[0]) {
        snprintf(msg, msg_len,
                 "image host '%.200s' resolves to a private or local address (%s); such "
                 "addresses are not fetched (--allow-private-media)",
                 host, x.refused_addr);
        e = XC_MEDIA_PRIVATE;
    } else if (rc != CURLE_OK) {
        snprintf(msg, msg_len, "cannot fetch the image: %s", curl_easy_strerror(rc));
        e = XC_MEDIA_NETWORK;
    }
    if (e != XC_MEDIA_TIMEOUT) {
        *deadline_hit = false;
    }
    curl_easy_cleanup(c);
    curl_url_cleanup(u);
    if (e != XC_MEDIA_OK) {
        xc_free(x.buf);
        return e;
    }
    if (!x.buf) { /* an empty body */
        x.buf = xc_malloc(1);
        if (!x.buf) {
            snprintf(msg, msg_len, "out of memory for a fetched image");
            return XC_MEDIA_NOMEM;
        }
    }
    *data = x.buf;
    *len = x.len;
    return XC_MEDIA_OK;
}
