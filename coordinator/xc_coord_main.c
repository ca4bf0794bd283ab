/* xcpipe-coordinator: the cluster coordinator process (see xc_coord_cli.h). */
#include "xc_coord_cli.h"

int main(int argc, char **argv) {
    return xc_coord_cli_main(argc, argv);
}
