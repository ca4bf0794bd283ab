/* The worker's command line (xcpipe-worker and `xcpipe worker`): flags and XC_* variables from one
 * xc_conf table, SIGTERM/SIGINT for a clean stop. */
#pragma once

/* Parses argv, runs a worker until stopped; returns the exit code (0 ok, 1 failure, 2 usage). */
int xc_worker_cli_main(int argc, char **argv);
