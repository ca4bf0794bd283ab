/* xcpipe: the command-line entry point; dispatches to subcommands in cli/xc_cmd_*.c. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "xc_cli.h"
#include "xc_log.h"
#include "xc_status.h"

typedef struct cli_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} cli_cmd;

static const cli_cmd cmds[] = {
    {"model", xc_cmd_model, "make-tiny | inspect: write a tiny checkpoint, list a checkpoint"},
    {"bench", xc_cmd_bench, "kernels | ...: print performance figures"},
#ifndef XC_CLI_SUBSET /* XC_CLUSTER=OFF builds leave out what needs the cluster libraries */
    {"tokenize", xc_cmd_tokenize, "text <-> token ids with a tokenizer.model, line by line"},
#endif
    {"preprocess", xc_cmd_preprocess, "decode, resize, normalize one image (vision input)"},
#ifndef XC_CLI_SUBSET
    {"generate", xc_cmd_generate, "run the model in this process on a prompt"},
    {"serve", xc_cmd_serve, "run a cluster: coordinator + vision + decoder workers (local/MPI)"},
    {"worker", xc_cmd_worker, "a cluster worker process (as xcpipe-worker)"},
    {"coordinator", xc_cmd_coordinator, "the cluster coordinator (as xcpipe-coordinator)"},
    {"batch", xc_cmd_batch, "run an OpenAI Batch JSONL file against the API (resumable)"},
    {"compose", xc_cmd_compose, "write an illustrated article (XComposer2's composition)"},
    {"eval", xc_cmd_eval, "shapes | draw: accuracy of the shapes model through the API"},
#endif
};

void xc_cli_report(const char *cmd, const char *what, int status) {
    const char *detail = xc_err_last();
    fprintf(stderr, "xcpipe %s: %s: %s%s%s\n", cmd, what, xc_status_str((xc_status)status),
            detail[0] ? ": " : "", detail);
}

int xc_cli_read_key(const char *cmd, const char *path, char *key, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "xcpipe %s: --api-key-file %s: %s\n", cmd, path, strerror(errno));
        return -1;
    }
    char line[XC_CLI_KEY_MAX + 64];
    key[0] = 0;
    bool too_long = false;
    while (fgets(line, sizeof line, f)) {
        size_t ll = strlen(line);
        if (ll == sizeof line - 1 && line[ll - 1] != '\n' && !feof(f)) {
            too_long = true; /* a line longer than any key may be */
            break;
        }
        char *s = line + strspn(line, " \t");
        size_t l = strcspn(s, "\r\n");
        while (l > 0 && (s[l - 1] == ' ' || s[l - 1] == '\t')) {
            l--;
        }
        if (l > 0 && s[0] != '#') {
            too_long = l > XC_CLI_KEY_MAX || l >= n;
            if (!too_long) {
                snprintf(key, n, "%.*s", (int)l, s);
            }
            break;
        }
    }
    fclose(f);
    if (too_long) {
        fprintf(stderr, "xcpipe %s: --api-key-file %s: the key is longer than %d bytes\n", cmd,
                path, XC_CLI_KEY_MAX);
        return -1;
    }
    if (!key[0]) {
        fprintf(stderr, "xcpipe %s: --api-key-file %s holds no key\n", cmd, path);
        return -1;
    }
    return 0;
}

int xc_cli_check_key(const char *cmd, const char *what, const char *key) {
    if (strlen(key) > XC_CLI_KEY_MAX) {
        fprintf(stderr, "xcpipe %s: %s: the key is longer than %d bytes\n", cmd, what,
                XC_CLI_KEY_MAX);
        return -1;
    }
    if (strpbrk(key, "\r\n")) {
        fprintf(stderr, "xcpipe %s: %s: the key holds a line break\n", cmd, what);
        return -1;
    }
    return 0;
}

static volatile sig_atomic_t g_stop, g_abort;

static void on_stop_signal(int sig) {
    (void)sig;
    if (g_stop) {
        g_abort = 1;
    }
    g_stop = 1;
}

void xc_cli_stop_signals(volatile sig_atomic_t **stop, volatile sig_atomic_t **abort_now) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    *stop = &g_stop;
    *abort_now = &g_abort;
}

static void usage(FILE *f) {
    fprintf(f, "usage: xcpipe <command> [options]   (xcpipe <command> --help for details)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        fprintf(f, "  %-12s %s\n", cmds[i].name, cmds[i].help);
    }
}

int main(int argc, char **argv) {
    xc_log_set_role("cli");
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (!strcmp(argv[1], cmds[i].name)) {
            return cmds[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "xcpipe: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
