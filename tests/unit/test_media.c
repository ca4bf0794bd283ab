/* Tests of http(s) image fetching (xc_media and xc_api_fetch) against a local libmicrohttpd
 * server on 127.0.0.1 that serves an image, a redirect, a 404, a body announced too large, an
 * endless chunked body and a slow body: fetched bytes equal the file, pixels equal the data-URL
 * path, private addresses, hosts off the allowlist and redirects are refused (without following
 * them), oversize bodies are cut, slow ones time out within the limit. The address and host rules
 * are checked against tables written from the RFCs. Traffic goes only to 127.0.0.1. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xc_api.h"
#include "xc_media.h"
#include "xc_mem.h"
#include "xc_test.h"
#include "xc_time.h"
#include "xc_tokenizer.h"

#define TOKFILE XC_FIXTURE_DIR "/tokenizer/tiny.model"
#define IMGFILE XC_FIXTURE_DIR "/image/src/png_p4bit_80x60.png"

/* ---- the local server ---- */

static struct MHD_Daemon *g_d;
static int g_port;
static unsigned char *g_img; /* the image file (plain malloc: outlives the per-test leak checks) */
static size_t g_img_len;
static atomic_int g_hits_img; /* GET /img.png answered */

typedef struct stream {
    bool slow, late;
    uint64_t start_ns;
} stream;

/* /endless: zeros forever; /slow: one byte every 100 ms for 5 s; late (/announced-huge): zeros
 * after 2 s, so that only a client that refuses on the header ends quickly. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *s = cls;
    (void)pos;
    if (s->late) {
        s->late = false;
        usleep(2000000);
    }
    if (s->slow) {
        if (xc_now_ns() - s->start_ns > 5000000000ull) {
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        usleep(100000);
        buf[0] = 'x';
        return 1;
    }
    size_t n = max < 65536 ? max : 65536;
    memset(buf, 0, n);
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    free(cls);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    (void)cls, (void)method, (void)version, (void)upload, (void)upload_size, (void)con_cls;
    struct MHD_Response *r = NULL;
    unsigned status = 200;
    if (!strcmp(url, "/img.png")) {
        atomic_fetch_add(&g_hits_img, 1);
        r = MHD_create_response_from_buffer(g_img_len, g_img, MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Content-Type", "image/png");
    } else if (!strcmp(url, "/redirect")) {
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", "/img.png");
        status = 302;
    } else if (!strcmp(url, "/announced-huge")) {
        /* announces 100 MB (never produced: the client must refuse on the header) */
        stream *s = calloc(1, sizeof *s);
        s->late = true;
        r = MHD_create_response_from_callback(100000000ull, 65536, stream_read, s, stream_free);
    } else if (!strcmp(url, "/endless") || !strcmp(url, "/slow")) {
        stream *s = calloc(1, sizeof *s);
        s->slow = !strcmp(url, "/slow");
        s->start_ns = xc_now_ns();
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536, stream_read, s, stream_free);
    } else {
        static const char nf[] = "not found";
        r = MHD_create_response_from_buffer(sizeof nf - 1, (void *)nf, MHD_RESPMEM_PERSISTENT);
        status = 404;
    }
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static int group_setup(void **state) {
    FILE *f = fopen(IMGFILE, "rb");
    if (!f) {
        return -1;
    }
    fseek(f, 0, SEEK_END);
    g_img_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g_img = malloc(g_img_len);
    if (fread(g_img, 1, g_img_len, f) != g_img_len) {
        fclose(f);
        return -1;
    }
    fclose(f);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g_d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD, 0, NULL,
                           NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_END);
    if (!g_d) {
        return -1;
    }
    g_port = MHD_get_daemon_info(g_d, MHD_DAEMON_INFO_BIND_PORT)->port;
    if (xc_media_global_init() != XC_OK) {
        return -1;
    }
    return xc_test_hooks_setup(state);
}

static int group_teardown(void **state) {
    MHD_stop_daemon(g_d);
    free(g_img);
    return xc_test_hooks_teardown(state);
}

static void url_of(char *out, size_t n, const char *host, const char *path) {
    snprintf(out, n, "http://%s:%d%s", host, g_port, path);
}

/* ---- rules ---- */

static bool private_of(const char *text) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
        in6->sin6_family = AF_INET6;
    }
    return xc_media_addr_private((const struct sockaddr *)&ss);
}

static void test_media_addr_private_table(void **state) {
    (void)state;

    /* the edges of every range (RFC 1122, 1918, 6598, 3927, 6890, 2544, 5771, 1112, 4291, 4193,
     * 3879, 6052, 3056) and public neighbours */
    static const struct {
        const char *addr;
        bool priv;
    } t[] = {
        {"0.0.0.0", true},
        {"0.255.255.255", true},
        {"1.0.0.0", false},
        {"9.255.255.255", false},
        {"10.0.0.0", true},
        {"10.255.255.255", true},
        {"11.0.0.0", false},
        {"100.63.255.255", false},
        {"100.64.0.0", true},
        {"100.127.255.255", true},
        {"100.128.0.0", false},
        {"126.255.255.255", false},
        {"127.0.0.1", true},
        {"127.255.255.255", true},
        {"128.0.0.0", false},
        {"169.253.255.255", false},
        {"169.254.169.254", true},
        {"169.255.0.0", false},
        {"172.15.255.255", false},
        {"172.16.0.0", true},
        {"172.31.255.255", true},
        {"172.32.0.0", false},
        {"192.0.0.1", true},
        {"192.0.1.0", false},
        {"192.167.255.255", false},
        {"192.168.0.1", true},
        {"192.169.0.0", false},
        {"198.17.255.255", false},
        {"198.18.0.0", true},
        {"198.19.255.255", true},
        {"198.20.0.0", false},
        {"223.255.255.255", false},
        {"224.0.0.1", true},
        {"239.255.255.255", true},
        {"240.0.0.1", true},
        {"255.255.255.255", true},
        {"8.8.8.8", false},
        {"93.184.216.34", false},
        {"::", true},
        {"::1", true},
        {"::2", true},
        {"::ffff:127.0.0.1", true},
        {"::ffff:10.1.2.3", true},
        {"::ffff:8.8.8.8", false},
        {"64:ff9b::a9fe:a9fe", true},
        {"64:ff9b::808:808", false},
        {"2002:c0a8:101::1", true},
        {"2002:808:808::1", false},
        {"fbff:ffff::1", false},
        {"fc00::1", true},
        {"fdff:ffff::1", true},
        {"fe00::1", false},
        {"fe80::1", true},
        {"febf:ffff::1", true},
        {"fec0::1", true},
        {"feff::1", true},
        {"ff02::1", true},
        {"2001:4860:4860::8888", false},
        {"2606:4700::1111", false},
    };

    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (private_of(t[i].addr) != t[i].priv) {
            fail_msg("%s: private %d, want %d", t[i].addr, !t[i].priv, t[i].priv);
        }
    }
    struct sockaddr other = {.sa_family = AF_UNIX};
    assert_true(xc_media_addr_private(&other));
}

static void test_media_host_allowlist(void **state) {
    (void)state;

    static const struct {
        const char *list, *host;
        bool ok;
    } t[] = {
        {"example.com", "example.com", true},
        {"example.com", "EXAMPLE.com", true},
        {"example.com", "example.com.", true},
        {" a.org , example.com ", "example.com", true},
        {"example.com", "www.example.com", false},
        {"example.com", "example.com.evil.net", false},
        {"example.com", "evilexample.com", false},
        {"*.example.com", "www.example.com", true},
        {"*.example.com", "a.b.example.com", true},
        {"*.example.com", "example.com", false},
        {"*.example.com", "badexample.com", false},
        {"*.", "example.com", false},
        {"127.0.0.1", "127.0.0.1", true},
        {"127.0.0.1", "127.0.0.2", false},
        {"::1", "[::1]", true},
        {"[::1]", "::1", true},
        {"", "example.com", false},
        {",,", "example.com", false},
    };

    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (xc_media_host_allowed(t[i].list, t[i].host) != t[i].ok) {
            fail_msg("'%s' in '%s': %d, want %d", t[i].host, t[i].list, !t[i].ok, t[i].ok);
        }
    }
    assert_false(xc_media_host_allowed(NULL, "example.com"));
}

static void test_media_check_url(void **state) {
    (void)state;
    char msg[400];
    xc_media_conf off = {.max_bytes = 1000, .timeout_s = 1};
    assert_int_equal(xc_media_check_url(&off, "http://127.0.0.1/x.png", msg, sizeof msg),
                     XC_MEDIA_DISABLED);
    assert_non_null(strstr(msg, "--allowed-media-domains"));
    assert_int_equal(xc_media_check_url(NULL, "http://127.0.0.1/x.png", msg, sizeof msg),
                     XC_MEDIA_DISABLED);
    xc_media_conf on = {.allowed_domains = "example.com", .max_bytes = 1000, .timeout_s = 1};
    assert_int_equal(xc_media_check_url(&on, "https://example.com/x.png", msg, sizeof msg),
                     XC_MEDIA_OK);
    assert_int_equal(xc_media_check_url(&on, "HTTPS://EXAMPLE.COM:8443/x.png?a=1", msg, sizeof msg),
                     XC_MEDIA_OK);
    assert_int_equal(xc_media_check_url(&on, "ftp://example.com/x.png", msg, sizeof msg),
                     XC_MEDIA_BAD_URL);
    assert_int_equal(xc_media_check_url(&on, "https://u:p@example.com/x.png", msg, sizeof msg),
                     XC_MEDIA_BAD_URL);
    /* the host is what curl parses, whatever precedes an '@' */
    assert_int_equal(xc_media_check_url(&on, "https://example.com@evil.net/x.png", msg, sizeof msg),
                     XC_MEDIA_BAD_URL);
    assert_int_equal(xc_media_check_url(&on, "https://evil.net/example.com", msg, sizeof msg),
                     XC_MEDIA_HOST);
    assert_non_null(strstr(msg, "evil.net"));
    assert_int_equal(xc_media_check_url(&on, "http://", msg, sizeof msg), XC_MEDIA_BAD_URL);
    assert_int_equal(xc_media_check_url(&on, "http://exa mple.com/", msg, sizeof msg),
                     XC_MEDIA_BAD_URL);
}

/* ---- fetching ---- */

static xc_media_conf local_conf(const char *hosts, bool allow_private) {
    return (xc_media_conf){.allowed_domains = hosts,
                           .max_bytes = 1 << 20,
                           .timeout_s = 5,
                           .allow_private = allow_private};
}

static void test_media_fetch_image(void **state) {
    (void)state;
    xc_media_conf mc = local_conf("127.0.0.1", true);
    char url[128], msg[400];
    url_of(url, sizeof url, "127.0.0.1", "/img.png");
    uint8_t *data = NULL;
    size_t len = 0;
    bool dl = true;
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg), XC_MEDIA_OK);
    assert_false(dl);
    assert_int_equal(len, g_img_len);
    assert_memory_equal(data, g_img, len);
    xc_free(data);
    /* a 404 is an error naming the status */
    url_of(url, sizeof url, "127.0.0.1", "/nothing");
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_STATUS);
    assert_non_null(strstr(msg, "404"));
    /* nothing listens on port 1 */
    assert_int_equal(
        xc_media_fetch(&mc, "http://127.0.0.1:1/x.png", 0, &data, &len, &dl, msg, sizeof msg),
        XC_MEDIA_NETWORK);
}

static void test_media_private_refused(void **state) {
    (void)state;
    char url[128], msg[400];
    uint8_t *data = NULL;
    size_t len = 0;
    bool dl = false;
    int hits = atomic_load(&g_hits_img);
    xc_media_conf mc = local_conf("127.0.0.1,localhost", false);
    url_of(url, sizeof url, "127.0.0.1", "/img.png");
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_PRIVATE);
    assert_non_null(strstr(msg, "127.0.0.1"));
    assert_non_null(strstr(msg, "--allow-private-media"));
    /* a name that resolves to loopback: refused on the address, whatever the name */
    url_of(url, sizeof url, "localhost", "/img.png");
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_PRIVATE);
    assert_int_equal(atomic_load(&g_hits_img), hits); /* the server never saw a request */
    /* allowed: localhost works too */
    mc.allow_private = true;
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg), XC_MEDIA_OK);
    assert_int_equal(len, g_img_len);
    xc_free(data);
    /* a host off the list: refused before any traffic */
    xc_media_conf other = local_conf("example.com", true);
    url_of(url, sizeof url, "127.0.0.1", "/img.png");
    assert_int_equal(xc_media_fetch(&other, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_HOST);
    assert_int_equal(atomic_load(&g_hits_img), hits + 1);
}

static void test_media_redirect_refused(void **state) {
    (void)state;
    char url[128], msg[400];
    uint8_t *data = NULL;
    size_t len = 0;
    bool dl = false;
    int hits = atomic_load(&g_hits_img);
    xc_media_conf mc = local_conf("127.0.0.1", true);
    url_of(url, sizeof url, "127.0.0.1", "/redirect");
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_REDIRECT);
    assert_non_null(strstr(msg, "302"));
    assert_non_null(strstr(msg, "/img.png"));
    assert_int_equal(atomic_load(&g_hits_img), hits); /* not followed */
}

static void test_media_size_cap(void **state) {
    (void)state;
    char url[128], msg[400];
    uint8_t *data = NULL;
    size_t len = 0;
    bool dl = false;
    xc_media_conf mc = local_conf("127.0.0.1", true);
    mc.max_bytes = 200000;
    /* announced above the cap: refused on the header */
    url_of(url, sizeof url, "127.0.0.1", "/announced-huge");
    uint64_t t0 = xc_now_ns();
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_TOO_LARGE);
    assert_non_null(strstr(msg, "200000"));
    assert_true((double)(xc_now_ns() - t0) * 1e-9 < 1.5); /* not after the body began */
    /* no length announced: cut while downloading, long before the server would stop */
    url_of(url, sizeof url, "127.0.0.1", "/endless");
    t0 = xc_now_ns();
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_TOO_LARGE);
    assert_true((double)(xc_now_ns() - t0) * 1e-9 < 3.0);
    /* the cap equal to the file size still works; one byte less does not */
    mc.max_bytes = g_img_len;
    url_of(url, sizeof url, "127.0.0.1", "/img.png");
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg), XC_MEDIA_OK);
    xc_free(data);
    mc.max_bytes = g_img_len - 1;
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_TOO_LARGE);
}

static void test_media_slow_times_out(void **state) {
    (void)state;
    char url[128], msg[400];
    uint8_t *data = NULL;
    size_t len = 0;
    bool dl = true;
    xc_media_conf mc = local_conf("127.0.0.1", true);
    mc.timeout_s = 0.5;
    url_of(url, sizeof url, "127.0.0.1", "/slow");
    uint64_t t0 = xc_now_ns();
    assert_int_equal(xc_media_fetch(&mc, url, 0, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_TIMEOUT);
    double s = (double)(xc_now_ns() - t0) * 1e-9;
    assert_false(dl);
    assert_non_null(strstr(msg, "--media-timeout"));
    print_message("media timeout 0.5 s: the fetch ended after %.3f s\n", s);
    if (s < 0.45 || s > 1.0) {
        fail_msg("timed out after %.3f s, want about 0.5", s);
    }
    /* a request deadline sooner than the media timeout ends it first and says so */
    mc.timeout_s = 5;
    t0 = xc_now_ns();
    assert_int_equal(xc_media_fetch(&mc, url, t0 + 300000000ull, &data, &len, &dl, msg, sizeof msg),
                     XC_MEDIA_TIMEOUT);
    s = (double)(xc_now_ns() - t0) * 1e-9;
    assert_true(dl);
    if (s < 0.25 || s > 0.8) {
        fail_msg("deadline hit after %.3f s, want about 0.3", s);
    }
}

/* ---- through the chat API ---- */

static xc_api_conf api_conf(const xc_media_conf *mc) {
    return (xc_api_conf){.model_name = "tiny",
                         .max_n = 1,
                         .max_stop = 4,
                         .max_tokens_limit = 100,
                         .default_max_tokens = 10,
                         .max_context = 400,
                         .max_images = 2,
                         .max_image_bytes = 1 << 20,
                         .max_pixels = 1000000,
                         .image_size = 56,
                         .image_tokens = 16,
                         .media = mc,
                         .variant = XC_CHAT_VARIANT_7B};
}

static char *body_with(const char *url) {
    size_t cap = strlen(url) + 256;
    char *b = xc_malloc(cap);
    snprintf(b, cap,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
             "\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"what?\"}"
             "]}]}",
             url);
    return b;
}

static char *data_url_of_file(void) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = xc_malloc(g_img_len * 4 / 3 + 64);
    size_t o = (size_t)sprintf(out, "data:image/png;base64,");
    for (size_t i = 0; i < g_img_len; i += 3) {
        uint32_t v = (uint32_t)g_img[i] << 16;
        v |= i + 1 < g_img_len ? (uint32_t)g_img[i + 1] << 8 : 0;
        v |= i + 2 < g_img_len ? g_img[i + 2] : 0;
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < g_img_len ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < g_img_len ? tbl[v & 63] : '=';
    }
    out[o] = 0;
    return out;
}

/* Parses body and fetches its images: the HTTP status of the first failure, 200 when both pass
 * (then r is filled and owned by the caller). */
static int parse_fetch(const xc_api_conf *c, const char *url, uint64_t deadline, xc_api_request *r,
                       xc_api_error *e) {
    char *b = body_with(url);
    xc_status st = xc_api_parse(c, b, strlen(b), r, e);
    xc_free(b);
    if (st != XC_OK) {
        return e->http_status;
    }
    if (xc_api_fetch(c, r, deadline, e) != XC_OK) {
        xc_api_request_fini(r);
        return e->http_status;
    }
    return 200;
}

static void test_media_api_pixels_equal_data_url(void **state) {
    (void)state;
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_load(TOKFILE, &tok), XC_OK);
    xc_media_conf mc = local_conf("localhost,127.0.0.1", true);
    xc_api_conf c = api_conf(&mc);
    char url[128];
    url_of(url, sizeof url, "127.0.0.1", "/img.png");
    xc_api_request r1, r2;
    xc_api_error e;
    assert_int_equal(parse_fetch(&c, url, 0, &r1, &e), 200);
    assert_null(r1.images[0].url);
    char *du = data_url_of_file();
    assert_int_equal(parse_fetch(&c, du, 0, &r2, &e), 200);
    xc_free(du);
    xc_api_prepared p1, p2;
    assert_int_equal(xc_api_prepare(&c, tok, &r1, &p1, &e), XC_OK);
    assert_int_equal(xc_api_prepare(&c, tok, &r2, &p2, &e), XC_OK);
    assert_int_equal(p1.prompt_tokens, p2.prompt_tokens);
    assert_memory_equal(p1.ids, p2.ids, (size_t)p1.prompt_tokens * sizeof(int32_t));
    assert_memory_equal(p1.pixels, p2.pixels, 3u * 56 * 56 * sizeof(float));
    xc_api_prepared_fini(&p1);
    xc_api_prepared_fini(&p2);
    /* prepare refuses an image that was parsed but never fetched */
    xc_api_request_fini(&r1);
    char *b = body_with(url);
    assert_int_equal(xc_api_parse(&c, b, strlen(b), &r1, &e), XC_OK);
    xc_free(b);
    assert_non_null(r1.images[0].url);
    assert_int_equal(xc_api_prepare(&c, tok, &r1, &p1, &e), XC_ERR_ARG);
    assert_int_equal(e.http_status, 500);
    xc_api_request_fini(&r1);
    xc_api_request_fini(&r2);
    xc_tokenizer_destroy(tok);
}

static void test_media_api_errors(void **state) {
    (void)state;
    char url[128];
    xc_api_request r;
    xc_api_error e;
    /* no allowlist: 400 as before, naming the flag */
    xc_api_conf c = api_conf(NULL);
    url_of(url, sizeof url, "127.0.0.1", "/img.png");
    assert_int_equal(parse_fetch(&c, url, 0, &r, &e), 400);
    assert_string_equal(e.code, "invalid_image_url");
    assert_string_equal(e.param, "messages[0].content[0]");
    /* host off the list: 403 at parse time */
    xc_media_conf mc = local_conf("example.com", false);
    c = api_conf(&mc);
    assert_int_equal(parse_fetch(&c, url, 0, &r, &e), 403);
    assert_string_equal(e.type, "permission_error");
    assert_string_equal(e.code, "media_host_not_allowed");
    /* private address: 403 */
    mc = local_conf("127.0.0.1", false);
    assert_int_equal(parse_fetch(&c, url, 0, &r, &e), 403);
    assert_string_equal(e.code, "media_address_not_allowed");
    assert_string_equal(e.param, "image 0");
    /* redirect, too large, slow: 400 with their codes; the deadline: 408 */
    mc = local_conf("127.0.0.1", true);
    mc.max_bytes = 100000;
    mc.timeout_s = 0.3;
    url_of(url, sizeof url, "127.0.0.1", "/redirect");
    assert_int_equal(parse_fetch(&c, url, 0, &r, &e), 400);
    assert_string_equal(e.code, "media_fetch_failed");
    url_of(url, sizeof url, "127.0.0.1", "/endless");
    assert_int_equal(parse_fetch(&c, url, 0, &r, &e), 400);
    assert_string_equal(e.code, "image_too_large");
    url_of(url, sizeof url, "127.0.0.1", "/slow");
    assert_int_equal(parse_fetch(&c, url, 0, &r, &e), 400);
    assert_string_equal(e.code, "media_timeout");
    mc.timeout_s = 5;
    assert_int_equal(parse_fetch(&c, url, xc_now_ns() + 200000000ull, &r, &e), 408);
    assert_string_equal(e.code, "request_timeout");
    /* the error renders as OpenAI's shape */
    char *js = xc_api_error_json(&e);
    assert_non_null(strstr(js, "\"request_timeout\""));
    xc_free(js);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_media_addr_private_table),
        cmocka_unit_test(test_media_host_allowlist),
        cmocka_unit_test(test_media_check_url),
        cmocka_unit_test(test_media_fetch_image),
        cmocka_unit_test(test_media_private_refused),
        cmocka_unit_test(test_media_redirect_refused),
        cmocka_unit_test(test_media_size_cap),
        cmocka_unit_test(test_media_slow_times_out),
        cmocka_unit_test(test_media_api_pixels_equal_data_url),
        cmocka_unit_test(test_media_api_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
