/* xcpipe-worker: a cluster worker process (see xc_worker_cli.h). */
#include "xc_worker_cli.h"

int main(int argc, char **argv) {
    return xc_worker_cli_main(argc, argv);
}
