/* xcpipe bench kernels (being written; see issue 2). */
#include <stdio.h>

#include "xc_cli.h"

int xc_cmd_bench_kernels(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "xcpipe bench kernels: not built yet\n");
    return 1;
}
