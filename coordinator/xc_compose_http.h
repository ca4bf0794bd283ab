/* The composition endpoints of the HTTP API: POST /v1/compositions (whole or SSE per stage) and
 * POST /v1/compositions/edit. Each step of a composition is an ordinary request to the
 * coordinator, so compositions share the pipeline with chat. Images come from the request (the
 * chat API's URL rules: data:, file:// below --allowed-media-dir, http(s) from
 * --allowed-media-domains) or from an image-search service (--image-search-url, the demo's JSON
 * contract), whose image URLs are fetched under the same rules. See docs/compose.md. */
#pragma once

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#include "xc_api.h"
#include "xc_coord.h"
#include "xc_status.h"
#include "xc_tokenizer.h"

typedef struct xc_compose_http xc_compose_http;

typedef struct xc_compose_http_conf {
    const xc_api_conf *api; /* model name, image limits, media rules (borrowed) */
    const xc_tokenizer *tok;
    xc_coord *c;
    const char *search_url; /* NULL/"" = no image search */
    double search_timeout_s;
    int max_concurrent;   /* compositions in service at once; more get 429 */
    bool clean_up_spaces; /* xc_compose_read_clean_up of the model directory */
} xc_compose_http_conf;

xc_status xc_compose_http_create(const xc_compose_http_conf *conf, xc_compose_http **out);
/* Ends the compositions in service at their next step and waits up to 10 s for them. */
void xc_compose_http_stop(xc_compose_http *h);
void xc_compose_http_destroy(xc_compose_http *h);

/* Whether url is one of the composition routes. */
bool xc_compose_http_is_route(const char *url);

/* Answers one request on a composition route (any method: others get 405). too_big: the body
 * was over the limit (413). */
enum MHD_Result xc_compose_http_handle(xc_compose_http *h, struct MHD_Connection *conn,
                                       const char *url, const char *method, const char *body,
                                       size_t len, bool too_big);

/* The image-search client on its own (tests): POSTs {"caption", "exclude", "need_idxs": true}
 * to url and reads {"data": {"image_urls": [...], "indices": [...]}}. *urls (n_urls) and
 * *indices (n_idx) are xc_malloc'd (strings too). XC_ERR_IO with a message for a failed
 * request or an answer of another shape. */
xc_status xc_compose_search_post(const char *url, double timeout_s, const char *caption,
                                 const int64_t *exclude, int n_exclude, char ***urls, int *n_urls,
                                 int64_t **indices, int *n_idx);
