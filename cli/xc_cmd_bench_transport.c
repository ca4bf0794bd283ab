/* xcpipe bench transport: forward-frame throughput of each transport against its raw baseline
 * (cluster/xc_tbench.h). MPI runs under mpirun: when not started by it, this command starts
 * `mpirun -np 2` on itself for the MPI rows. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_tbench.h"

typedef struct tb_conf {
    const char *transport;
    int frames;
    int reps;
    int hwm;
    xc_conf_list sizes;
} tb_conf;

static const xc_conf_entry tb_entries[] = {
    XC_CONF_STR("transport", "XC_BENCH_TRANSPORT", tb_conf, transport, "all",
                "all|inproc|ipc|tcp|mpi", "transport to time (all: every one this build has)"),
    XC_CONF_INT("frames", "XC_BENCH_FRAMES", tb_conf, frames, 200, 1, 100000,
                "timed messages per run"),
    XC_CONF_INT("reps", "XC_BENCH_REPS", tb_conf, reps, 3, 1, 100,
                "runs of raw and framed, interleaved (the best of each is kept)"),
    XC_CONF_INT("hwm", "XC_BENCH_HWM", tb_conf, hwm, 4, 1, 1000, "messages queued per link"),
    XC_CONF_LIST("sizes", "XC_BENCH_SIZES", tb_conf, sizes,
                 "tensor frame sizes in MiB, e.g. --sizes 4,16 (default)"),
};

static const xc_conf_spec tb_spec = {
    .usage = "xcpipe bench transport [options]",
    .summary = "Sends forward messages (an xc_wire header of 16 sequences with block tables plus "
               "one f32 [rows, 4096] tensor frame, zero copy) through each transport and "
               "validates them on receipt, then sends the same tensor bytes through the plain "
               "library without our framing (libzmq PUSH/PULL zero copy for inproc, ipc and "
               "tcp; MPI_Send/MPI_Recv for mpi), and prints GB/s of tensor bytes for both and "
               "their ratio. ipc and tcp use a forked sender process; mpi uses ranks 1 -> 0.",
    .entries = tb_entries,
    .n_entries = sizeof tb_entries / sizeof tb_entries[0],
};

#define TB_MAX_SIZES 8

static int parse_sizes(const xc_conf_list *l, int *mib, int *n) {
    *n = 0;
    for (int i = 0; i < l->n; i++) {
        const char *p = l->items[i];
        while (*p) {
            char *end = NULL;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > 1024 || (*end != ',' && *end != '\0') ||
                *n >= TB_MAX_SIZES) {
                fprintf(stderr,
                        "xcpipe bench transport: --sizes: '%s' is not a list of at most %d sizes "
                        "in [1, 1024] MiB\n",
                        l->items[i], TB_MAX_SIZES);
                return 2;
            }
            mib[(*n)++] = (int)v;
            p = *end == ',' ? end + 1 : end;
        }
    }
    if (*n == 0) {
        mib[0] = 4;
        mib[1] = 16;
        *n = 2;
    }
    return 0;
}

static void print_header(void) {
    printf("%-7s %6s %6s %7s %10s %11s %7s %9s %10s\n", "transp", "frame", "msgs", "hdr B",
           "raw GB/s", "framed GB/s", "ratio", "raw us", "framed us");
    fflush(stdout);
}

/* Re-runs this command for the MPI rows under `mpirun -np 2` and waits for it. */
static int spawn_mpirun(const tb_conf *c, int argc, char **argv) {
    (void)argc;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "xcpipe bench transport: cannot find this executable for mpirun\n");
        return 1;
    }
    self[n] = '\0';
    char frames[16], reps[16], hwm[16];
    snprintf(frames, sizeof frames, "%d", c->frames);
    snprintf(reps, sizeof reps, "%d", c->reps);
    snprintf(hwm, sizeof hwm, "%d", c->hwm);
    char *args[40];
    int k = 0;
    args[k++] = "mpirun";
    args[k++] = "-np";
    args[k++] = "2";
    args[k++] = "--oversubscribe";
    if (geteuid() == 0) {
        args[k++] = "--allow-run-as-root";
    }
    args[k++] = self;
    args[k++] = "bench";
    args[k++] = "transport";
    args[k++] = "--transport";
    args[k++] = "mpi";
    args[k++] = "--frames";
    args[k++] = frames;
    args[k++] = "--reps";
    args[k++] = reps;
    args[k++] = "--hwm";
    args[k++] = hwm;
    args[k++] = "--no-header";
    for (int i = 0; i < c->sizes.n && k < 38; i++) {
        args[k++] = "--sizes";
        args[k++] = (char *)c->sizes.items[i];
    }
    args[k] = NULL;
    (void)argv;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execvp("mpirun", args);
        fprintf(stderr, "xcpipe bench transport: cannot run mpirun\n");
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        fprintf(stderr, "xcpipe bench transport: the mpirun run failed\n");
        return 1;
    }
    return 0;
}

int xc_cmd_bench_transport(int argc, char **argv) {
    /* --no-header (internal, used when re-run under mpirun) is stripped before parsing. */
    bool header = true;
    char *args[128];
    int n_args = 0;
    for (int i = 0; i < argc && n_args < 127; i++) {
        if (!strcmp(argv[i], "--no-header")) {
            header = false;
        } else {
            args[n_args++] = argv[i];
        }
    }
    args[n_args] = NULL;
    tb_conf c;
    xc_status st = xc_conf_parse(&tb_spec, &c, n_args, args, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench transport: %s\n", xc_err_last());
        return 2;
    }
    int mib[TB_MAX_SIZES], n_sizes = 0;
    if (parse_sizes(&c.sizes, mib, &n_sizes) != 0) {
        return 2;
    }
    bool all = !strcmp(c.transport, "all");
    bool in_mpi = xc_tbench_under_mpirun();
    if (header && !in_mpi) {
        print_header();
    }
    for (int kind = XC_TBENCH_INPROC; kind <= XC_TBENCH_MPI; kind++) {
        const char *name = xc_tbench_kind_name((xc_tbench_kind)kind);
        if (!all && strcmp(c.transport, name)) {
            continue;
        }
        if (kind == XC_TBENCH_MPI && !in_mpi) {
#ifdef XC_HAVE_MPI
            if (spawn_mpirun(&c, argc, argv) != 0) {
                return 1;
            }
#else
            if (!all) {
                fprintf(stderr, "xcpipe bench transport: this build has no MPI\n");
                return 1;
            }
#endif
            continue;
        }
        for (int s = 0; s < n_sizes; s++) {
            xc_tbench_conf tc = {.frame_bytes = (size_t)mib[s] << 20,
                                 .n_msgs = c.frames,
                                 .reps = c.reps,
                                 .hwm = c.hwm};
            xc_tbench_result r;
            st = xc_tbench_run((xc_tbench_kind)kind, &tc, &r);
            if (st != XC_OK) {
                xc_cli_report("bench transport", name, st);
                return 1;
            }
            if (r.valid) {
                char frame[16];
                snprintf(frame, sizeof frame, "%dMiB", mib[s]);
                printf("%-7s %6s %6d %7zu %10.2f %11.2f %6.1f%% %9.1f %10.1f\n", name, frame,
                       c.frames, r.header_bytes, r.raw_gbps, r.framed_gbps,
                       100.0 * r.framed_gbps / r.raw_gbps, r.raw_us, r.framed_us);
                fflush(stdout);
            }
        }
    }
    return 0;
}
