/* Composition documents on disk: a /v1/compositions response becomes DIR/article.md, its images
 * (from their data: URLs, under the names the Markdown uses) and DIR/composition.json (the
 * response without the image bytes). The directory appears whole or not at all: it is written
 * under a temporary name and renamed into place (a previous one is replaced). Used by
 * `xcpipe compose` and by batch lines with "url": "/v1/compositions". See docs/compose.md. */
#pragma once

#include <stddef.h>

#include "xc_status.h"

/* Writes the document of response (len bytes of JSON) to dir. XC_ERR_PROTO with a message for a
 * response of another shape (no markdown, an image name that is not a plain file name, a data
 * URL that does not decode), XC_ERR_IO when a file cannot be written. *n_images (may be NULL)
 * gets the number of image files written. */
xc_status xc_batch_docs_write(const char *dir, const char *response, size_t len, int *n_images);

/* Whether a custom_id can name a directory (no '/', NUL, not "." or "..", no leading '.'). */
int xc_batch_docs_name_ok(const char *name);
