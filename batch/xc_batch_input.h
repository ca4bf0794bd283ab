/* One line of an OpenAI Batch input file (JSONL: custom_id, method, url, body): the checks done up
 * front (with clear messages for the caller to prefix with the line number), and the HTTP body
 * sent for it, with image files referenced by path turned into data URLs. See docs/batch.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xc_status.h"

#define XC_BATCH_MAX_CUSTOM_ID 1024 /* bytes */
#define XC_BATCH_URL           "/v1/chat/completions"
#define XC_BATCH_URL_COMPOSE   "/v1/compositions" /* issue 18: compositions */

typedef struct xc_batch_input_conf {
    const char *base_dir;      /* canonical (realpath) directory: image paths resolve below it */
    size_t max_image_bytes;    /* one image file at most */
    const char *set_model;     /* replaces every body's "model"; NULL = keep the body's */
    const char *default_model; /* for bodies without "model"; NULL = leave them as they are */
} xc_batch_input_conf;

/* Why a line was refused: a static code (also written to the error record) and a message. */
typedef struct xc_batch_input_error {
    const char *code; /* invalid_json, invalid_custom_id, invalid_method, invalid_url,
                         invalid_body, image_file */
    char message[600];
} xc_batch_input_error;

/* What the up-front check learned about a line. */
typedef struct xc_batch_input_line {
    char *custom_id; /* xc_malloc'd, NUL-terminated (NULL when the line has no usable one) */
    size_t id_len;   /* strlen(custom_id) */
    bool has_model;  /* the body names a model */
    int n_files;     /* image files referenced by path */
    bool compose;    /* url "/v1/compositions": body {instruction, images, ...} */
} xc_batch_input_line;

/* Checks one line (len bytes, no newline): a JSON object; custom_id a non-empty string of at most
 * XC_BATCH_MAX_CUSTOM_ID bytes; method "POST"; url "/v1/chat/completions"; body an object with
 * a non-empty "messages" array of objects with a string "role" and string, array or null
 * "content"; no "stream": true; every image part's URL is data:, http(s): or a file (a path or
 * file://PATH) that resolves below base_dir to a regular file of at most max_image_bytes. On XC_OK
 * out is filled. On XC_ERR_ARG err says why and out->custom_id is still set when the line had a
 * valid one (so the refusal can be recorded against it); release out with
 * xc_batch_input_line_fini either way. XC_ERR_NOMEM. */
xc_status xc_batch_input_check(const xc_batch_input_conf *c, const char *line, size_t len,
                               xc_batch_input_line *out, xc_batch_input_error *err);

/* Frees what out owns and zeroes it. NULL is a no-op. */
void xc_batch_input_line_fini(xc_batch_input_line *l);

/* The HTTP body for a line that passed xc_batch_input_check: its "body" object with "model" set
 * as conf says and every image file replaced by a data URL (base64, MIME type from the magic
 * bytes: PNG, JPEG, WebP). *body (xc_malloc'd, NUL-terminated, *body_len bytes) is the caller's.
 * XC_ERR_ARG (err filled) for a file that is gone, over the limit or not an image. */
xc_status xc_batch_input_body(const xc_batch_input_conf *c, const char *line, size_t len,
                              char **body, size_t *body_len, xc_batch_input_error *err);

/* Standard base64 (with padding) of n bytes into a new xc_malloc'd NUL-terminated string, after
 * prefix (may be ""). NULL when out of memory. */
char *xc_batch_input_base64(const char *prefix, const unsigned char *data, size_t n);

/* Installs xc_malloc/xc_free as cJSON's allocator (once per process; what xc_api does too). */
void xc_batch_input_cjson_hooks(void);
