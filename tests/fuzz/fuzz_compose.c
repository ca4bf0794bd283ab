/* libFuzzer over the composition parsers that read model answers (xc_compose.h): paragraphs,
 * <Seg> positions, captions, the selection letter, Python's strip. Oracles: no crash, no leak
 * (ASan); paragraphs are 1..60 strings with no newline and no outer whitespace change on a
 * second strip; positions are non-negative; a refused answer holds "<Seg". */
#include <stdlib.h>
#include <string.h>

#include "xc_compose.h"
#include "xc_mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) {
        return 0;
    }
    memcpy(s, data, size);
    s[size] = 0; /* the parsers take NUL-terminated text, as decoded answers are */
    char **p = NULL;
    int n = 0;
    if (xc_compose_paragraphs(s, &p, &n) == XC_OK) {
        if (n < 1 || n > XC_COMPOSE_MAX_SECTION) {
            abort();
        }
        for (int i = 0; i < n; i++) {
            if (strchr(p[i], '\n')) {
                abort();
            }
            xc_free(p[i]);
        }
        xc_free(p);
    }
    int *l = NULL;
    xc_status st = xc_compose_parse_locs(s, &l, &n);
    if (st == XC_OK) {
        for (int i = 0; i < n; i++) {
            if (l[i] < 0) {
                abort();
            }
        }
        xc_free(l);
    } else if (st == XC_ERR_ARG && !strstr(s, "<Seg")) {
        abort();
    }
    char *c = xc_compose_parse_caption(s);
    if (c) {
        if (strchr(c, '"')) {
            abort();
        }
        size_t before = strlen(c);
        if (strlen(xc_compose_strip(c)) != before) {
            abort(); /* strip is idempotent */
        }
        xc_free(c);
    }
    (void)xc_compose_parse_letter(s);
    free(s);
    return 0;
}
