/* The batch output files: OpenAI Batch output records (one JSON line per request) appended whole
 * with one write() each, an fsync policy, and recovery on open (a torn last line is cut off,
 * unreadable lines are dropped, the custom_ids already answered are collected). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xc_batch_ids.h"
#include "xc_status.h"

typedef struct xc_batch_output xc_batch_output;

/* What xc_batch_output_open found and repaired. */
typedef struct xc_batch_output_recovery {
    size_t records;        /* readable records kept */
    size_t torn_bytes;     /* bytes of a torn last line that were cut off (0 = none) */
    size_t bad_lines;      /* complete lines that were not records: dropped (file rewritten) */
    size_t dropped_failed; /* failed records dropped for a retry (drop_failed) */
    size_t duplicates;     /* records whose custom_id was already in done (kept) */
} xc_batch_output_recovery;

/* Opens (creating it, mode 0644) the output file at path for appending, after recovery: a last
 * line without its newline is truncated away; complete lines that are not JSON objects with a
 * string custom_id are dropped by rewriting the file (a temporary file, fsync, rename); with
 * drop_failed, failed records (see xc_batch_output_is_failure) are dropped too. The custom_id of
 * every record kept is added to done (borrowed; the value is -1). fsync_every: 1 = fsync after
 * every line, N = after every N lines, 0 = only on close. The file stays locked (flock) until
 * close, so a second run on it fails. XC_ERR_IO (with the path and errno, or "in use by another
 * batch run"), XC_ERR_NOMEM. */
xc_status xc_batch_output_open(const char *path, int fsync_every, bool drop_failed,
                               xc_batch_ids *done, xc_batch_output **out,
                               xc_batch_output_recovery *rec);

/* Appends one record: line (len bytes, must end with '\n' and hold no other) goes out in one
 * write() on an O_APPEND descriptor, then the fsync policy applies. A short write is undone
 * (truncated back) and reported. XC_ERR_IO, XC_ERR_ARG for a line that is not one line. */
xc_status xc_batch_output_append(xc_batch_output *o, const char *line, size_t len);

/* fsyncs if anything was written since the last fsync. XC_ERR_IO. */
xc_status xc_batch_output_sync(xc_batch_output *o);

/* Syncs (see above), closes and frees. Returns the status of the final fsync; NULL is XC_OK. */
xc_status xc_batch_output_close(xc_batch_output *o);

/* True when a parsed record (a cJSON object, passed as void * to keep cJSON out of this header)
 * is a failure: "error" is not null, or "response" is null or its status_code is not 200. */
bool xc_batch_output_is_failure(const void *record);

/* A success or HTTP-answer record: {"id", "custom_id", "response": {"status_code", "request_id",
 * "body"}, "error": null} plus '\n'. body (len bytes) is the server's JSON response; a body that
 * is not JSON is kept as {"error": {"message": <its first 2000 bytes>, "type":
 * "invalid_response"}}. request_id NULL = the body's "id" or "". New xc_malloc'd string, NULL
 * when out of memory. */
char *xc_batch_output_response(const char *id, const char *custom_id, int status,
                               const char *request_id, const char *body, size_t len,
                               size_t *out_len);

/* A failure without an HTTP answer: {"id", "custom_id", "response": null, "error": {"code",
 * "message"}} plus '\n'. New xc_malloc'd string, NULL when out of memory. */
char *xc_batch_output_error(const char *id, const char *custom_id, const char *code,
                            const char *message, size_t *out_len);
