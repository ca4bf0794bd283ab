/* xcpipe model: make-tiny and inspect (being written; see issue 2). */
#include <stdio.h>

#include "xc_cli.h"

int xc_cmd_model(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "xcpipe model: not built yet\n");
    return 1;
}
