/* xcpipe serve: the whole cluster from one command. Local mode starts the coordinator in this
 * process and the vision worker plus R x P decoder workers as child processes (posix_spawn of
 * this binary's `worker` subcommand over ipc:// sockets), restarting a child that dies. MPI mode
 * (mpirun -np N xcpipe serve --transport mpi): rank 0 is the coordinator, every other rank a
 * worker (rank 1 accepts any role and becomes the vision worker when the model has one, the other
 * ranks take stages only, in rank order).
 * Also `xcpipe worker` and `xcpipe coordinator`, the same as the standalone binaries. */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "xc_cgroup.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_coord.h"
#include "xc_coord_cli.h"
#include "xc_coord_lines.h"
#include "xc_http.h"
#include "xc_log.h"
#include "xc_time.h"
#include "xc_worker_cli.h"

extern char **environ;

int xc_cmd_worker(int argc, char **argv) {
    return xc_worker_cli_main(argc, argv);
}

int xc_cmd_coordinator(int argc, char **argv) {
    return xc_coord_cli_main(argc, argv);
}

typedef struct serve_conf {
    const char *model, *transport, *requests, *backend, *log_level, *endpoint;
    int stages, replicas, threads, chunk, max_rows;
    double dead_s, heartbeat_s, orphan_s, step_timeout_s, resume_timeout_s;
    int max_resumes;
    bool no_vision, exit_when_done, no_prefix_cache;
} serve_conf;

static const xc_conf_entry serve_entries[] = {
    XC_CONF_STR("model", "XC_MODEL", serve_conf, model, NULL, NULL, "model directory"),
    XC_CONF_INT("stages", "XC_STAGES", serve_conf, stages, 1, 1, 64,
                "decoder stages per pipeline (local mode: processes started)"),
    XC_CONF_INT("replicas", "XC_REPLICAS", serve_conf, replicas, 1, 1, 64, "pipelines"),
    XC_CONF_STR("transport", "XC_TRANSPORT", serve_conf, transport, "ipc", "ipc|tcp|mpi",
                "links between the local processes; mpi under mpirun (rank 0 = coordinator)"),
    XC_CONF_STR("endpoint", "XC_COORD_ENDPOINT", serve_conf, endpoint, NULL, NULL,
                "coordinator endpoint (default: ipc under /tmp, tcp://127.0.0.1:5555, mpi://0)"),
    XC_CONF_STR("backend", "XC_BACKEND", serve_conf, backend, "cpu", "cpu|cuda|sim",
                "workers' compute backend"),
    XC_CONF_INT("threads", "XC_THREADS", serve_conf, threads, 0, 0, 1024,
                "CPU threads per worker (0 = cores / workers)"),
    XC_CONF_INT("chunk", "XC_CHUNK", serve_conf, chunk, 128, 1, 65536, "prefill chunk rows"),
    XC_CONF_INT("max-rows", "XC_MAX_ROWS", serve_conf, max_rows, 256, 1, 65536,
                "rows per micro-batch"),
    XC_CONF_FLOAT("dead-timeout", "XC_DEAD_TIMEOUT", serve_conf, dead_s, 3.0, 0.05, 3600,
                  "seconds without a heartbeat after which a worker is dead"),
    XC_CONF_FLOAT(
        "step-timeout", "XC_STEP_TIMEOUT", serve_conf, step_timeout_s, 0, 0, 86400,
        "seconds a micro-batch may take before its replica is failed and re-formed "
        "(0 = 20 x its measured expected time, at least 10 s; before a measurement its rows "
        "x the replica's weight bytes at 1 GB/s, at least 60 s)"),
    XC_CONF_INT("max-resumes", "XC_MAX_RESUMES", serve_conf, max_resumes, 3, 0, 1000,
                "times a request is re-prefilled after losing its replica (0 = fail it)"),
    XC_CONF_FLOAT("resume-timeout", "XC_RESUME_TIMEOUT", serve_conf, resume_timeout_s, 30, 0.1,
                  86400, "seconds a resumed request may wait for a replica before it fails"),
    XC_CONF_FLOAT("heartbeat", "XC_HEARTBEAT", serve_conf, heartbeat_s, 0.5, 0.01, 60,
                  "workers' heartbeat period"),
    XC_CONF_FLOAT("orphan-timeout", "XC_ORPHAN_TIMEOUT", serve_conf, orphan_s, 60, 0, 1e7,
                  "local workers and MPI worker ranks exit after this many seconds without a "
                  "message from the coordinator (0 = never; local ones also exit when serve "
                  "dies)"),
    XC_CONF_BOOL("no-vision", "XC_NO_VISION", serve_conf, no_vision, 0, "text only"),
    XC_CONF_BOOL("no-prefix-cache", "XC_NO_PREFIX_CACHE", serve_conf, no_prefix_cache, 0,
                 "do not reuse the KV blocks of equal prompt prefixes (on by default)"),
    XC_CONF_STR("requests", "XC_REQUESTS", serve_conf, requests, NULL, NULL,
                "line-protocol requests (file, FIFO or '-'); answers on stdout"),
    XC_CONF_BOOL("exit-when-done", "XC_EXIT_WHEN_DONE", serve_conf, exit_when_done, 0,
                 "exit when --requests ends"),
    XC_CONF_STR("log-level", "XC_LOG_LEVEL", serve_conf, log_level, "info",
                "debug|info|warn|error|off", "log threshold"),
};

static const xc_conf_spec serve_spec = {
    "xcpipe serve --model DIR [--stages N] [--replicas R] [--transport ipc|tcp|mpi] [options]",
    "Runs a whole cluster: the coordinator here, the vision worker and the decoder workers as "
    "local processes (or as MPI ranks under mpirun). SIGTERM drains and stops everything.",
    serve_entries, sizeof serve_entries / sizeof serve_entries[0]};

static xc_http_flags g_http_flags; /* api helper: HTTP flags, taken out of argv first */

/* ---- local children ---- */

typedef struct child {
    pid_t pid;
    char id[32];
    const char *role; /* --role: "vision" for w0 when the model has vision, else "stage" */
    char endpoint[320];
} child;

typedef struct supervisor {
    const serve_conf *c;
    const char *coord_ep;
    char threads[16], hb[32], orphan[32], ppid[16];
    char dev_frac[32]; /* cuda: each local worker's share of the one GPU's free memory */
    child kids[130];
    int n;
} supervisor;

static pid_t spawn_worker(supervisor *s, child *k) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        return -1;
    }
    exe[n] = 0;
    char *argv[] = {exe, "worker", "--coordinator", (char *)s->coord_ep, "--endpoint", k->endpoint,
                    "--id", k->id, "--threads", s->threads, "--backend", (char *)s->c->backend,
                    "--heartbeat", s->hb, "--log-level", (char *)s->c->log_level, "--role",
                    (char *)k->role,
                    /* gone with serve: a parent-death signal, and silence as the fallback */
                    "--parent-pid", s->ppid, "--orphan-timeout", s->orphan, NULL, NULL, NULL};
    if (s->dev_frac[0]) { /* the workers share one GPU: each advertises its share */
        int a = (int)(sizeof argv / sizeof argv[0]) - 3;
        argv[a] = "--device-mem-frac";
        argv[a + 1] = (char *)s->dev_frac;
    }
    pid_t pid;
    if (posix_spawn(&pid, exe, NULL, NULL, argv, environ) != 0) {
        return -1;
    }
    return pid;
}

static void reap_and_restart(supervisor *s, bool restart) {
    for (int i = 0; i < s->n; i++) {
        int status;
        if (s->kids[i].pid > 0 && waitpid(s->kids[i].pid, &status, WNOHANG) == s->kids[i].pid) {
            XC_LOG_WARN("worker %s (pid %d) exited (%s %d)%s", s->kids[i].id, (int)s->kids[i].pid,
                        WIFSIGNALED(status) ? "signal" : "status",
                        WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                        restart ? "; restarting it" : "");
            s->kids[i].pid = restart ? spawn_worker(s, &s->kids[i]) : 0;
        }
    }
}

static volatile sig_atomic_t g_serve_stop, g_serve_reload;

static void on_serve_signal(int sig) {
    if (sig == SIGHUP) {
        g_serve_reload = 1;
    } else {
        g_serve_stop = 1;
    }
}

static int serve_local(const serve_conf *c, xc_coord_flags *f) {
    char dir[64], ep[512];
    snprintf(dir, sizeof dir, "/tmp/xcpipe-%d", (int)getpid());
    bool ipc = !strcmp(c->transport, "ipc");
    if (ipc && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "xcpipe serve: cannot create %s\n", dir);
        return 1;
    }
    snprintf(ep, sizeof ep, "%s",
             c->endpoint ? c->endpoint
             : ipc       ? "ipc:///tmp/xcpipe-coord"
                         : "tcp://127.0.0.1:5555");
    if (ipc && !c->endpoint) {
        snprintf(ep, sizeof ep, "ipc://%s/coord", dir);
    }
    f->endpoint = ep;
    xc_coord_conf cc;
    xc_coord_cli_conf(f, &cc);
    /* the workers are this process's children: one host's memory (CUDA workers get a share of
     * the device each already, XC_DEVICE_MEM_FRAC below) */
    cc.one_host = !strcmp(c->backend, "cpu");
    xc_coord *co = NULL;
    xc_status st = xc_coord_create(&cc, &co);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe serve: %s\n", xc_err_last());
        return st == XC_ERR_ARG ? 2 : 1;
    }
    supervisor *s = calloc(1, sizeof *s);
    if (!s) {
        xc_coord_destroy(co);
        return 1;
    }
    xc_http *http = NULL; /* api helper: the OpenAI-compatible HTTP API */
    if (xc_http_start_if(&g_http_flags, c->requests != NULL, c->model, co, &http) != XC_OK) {
        fprintf(stderr, "xcpipe serve: %s\n", xc_err_last());
        free(s);
        xc_coord_destroy(co);
        return 1;
    }
    s->c = c;
    s->coord_ep = xc_coord_endpoint(co);
    bool vision = xc_coord_image_tokens(co) > 0;
    int n_workers = c->stages * c->replicas + (vision ? 1 : 0);
    long cores = xc_cgroup_cpus(); /* online CPUs, affinity, cgroup quota */
    int thr = c->threads > 0 ? c->threads : (int)(cores / n_workers > 0 ? cores / n_workers : 1);
    snprintf(s->threads, sizeof s->threads, "%d", thr);
    snprintf(s->hb, sizeof s->hb, "%g", c->heartbeat_s);
    snprintf(s->orphan, sizeof s->orphan, "%g", c->orphan_s);
    snprintf(s->ppid, sizeof s->ppid, "%d", (int)getpid());
    /* local CUDA workers all use device 0 (CUDA_VISIBLE_DEVICES picks it): split its free memory
     * so that what placement gives them fits together, unless XC_DEVICE_MEM_FRAC says otherwise */
    s->dev_frac[0] = 0;
    if (!strcmp(c->backend, "cuda") && !getenv("XC_DEVICE_MEM_FRAC")) {
        snprintf(s->dev_frac, sizeof s->dev_frac, "%.4f", 0.9 / n_workers);
    }
    for (int i = 0; i < n_workers && i < 130; i++) {
        child *k = &s->kids[s->n++];
        snprintf(k->id, sizeof k->id, "w%d", i);
        k->role = vision && i == 0 ? "vision" : "stage";
        if (ipc) {
            snprintf(k->endpoint, sizeof k->endpoint, "ipc://%s/w%d", dir, i);
        } else {
            snprintf(k->endpoint, sizeof k->endpoint, "tcp://127.0.0.1:*");
        }
        k->pid = spawn_worker(s, k);
        if (k->pid < 0) {
            XC_LOG_ERROR("cannot start worker %s", k->id);
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_serve_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL); /* reload the API key file */
    signal(SIGPIPE, SIG_IGN);
    int rc = 0;
    if (c->requests) {
        /* the line protocol runs on this thread; supervision happens between its reads only
         * when the input is idle, so restart from a helper loop after it */
        FILE *in = strcmp(c->requests, "-") ? fopen(c->requests, "r") : stdin;
        if (!in) {
            fprintf(stderr, "xcpipe serve: cannot open %s\n", c->requests);
            rc = 1;
        } else {
            xc_coord_lines_run(co, in, stdout);
            if (in != stdin) {
                fclose(in);
            }
        }
    }
    while (rc == 0 && !(c->requests && c->exit_when_done) && !g_serve_stop) {
        reap_and_restart(s, true);
        if (g_serve_reload) {
            g_serve_reload = 0;
            if (http) {
                (void)xc_http_reload_keys(http); /* logs what happened */
            } else {
                XC_LOG_WARN("SIGHUP: no HTTP API, nothing to reload");
            }
        }
        usleep(200000);
    }
    xc_coord_stop(co, f->drain_s, true);
    /* the workers got Shutdown; give them a moment, then make sure */
    uint64_t end = xc_now_ns() + 5000000000ull;
    bool left = true;
    while (left && xc_now_ns() < end) {
        reap_and_restart(s, false);
        left = false;
        for (int i = 0; i < s->n; i++) {
            left = left || s->kids[i].pid > 0;
        }
        usleep(20000);
    }
    for (int i = 0; i < s->n; i++) {
        if (s->kids[i].pid > 0) {
            kill(s->kids[i].pid, SIGKILL);
            waitpid(s->kids[i].pid, NULL, 0);
        }
    }
    free(s);
    xc_http_destroy(http);
    xc_coord_destroy(co);
    if (ipc) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "%s", dir);
        for (int i = 0; i < n_workers; i++) {
            char p[300];
            snprintf(p, sizeof p, "%s/w%d", dir, i);
            unlink(p);
        }
        snprintf(cmd, sizeof cmd, "%s/coord", dir);
        unlink(cmd);
        rmdir(dir);
    }
    return rc;
}

static int env_int(const char *a, const char *b, int def) {
    const char *v = getenv(a);
    if (!v) {
        v = getenv(b);
    }
    return v ? atoi(v) : def;
}

int xc_cmd_serve(int argc, char **argv) {
    if (xc_http_cli_extract(&argc, argv, &g_http_flags) != XC_OK) {
        fprintf(stderr, "xcpipe serve: %s\n", xc_err_last());
        return 2;
    }
    serve_conf c;
    xc_status st = xc_conf_parse(&serve_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK || !c.model) {
        fprintf(stderr, "xcpipe serve: %s\n", st != XC_OK ? xc_err_last() : "--model is required");
        return 2;
    }
    xc_log_set_level((xc_log_level)xc_log_parse_level(c.log_level));
    /* the coordinator's flags, with serve's values */
    xc_coord_flags f;
    char *cargv[] = {"coordinator", "--model", (char *)c.model, NULL};
    if (xc_coord_cli_parse(3, cargv, &f) != XC_OK) {
        fprintf(stderr, "xcpipe serve: %s\n", xc_err_last());
        return 2;
    }
    f.stages = c.stages;
    f.replicas = c.replicas;
    f.no_vision = c.no_vision;
    f.no_prefix_cache = c.no_prefix_cache;
    f.dead_s = c.dead_s;
    f.step_timeout_s = c.step_timeout_s;
    f.max_resumes = c.max_resumes;
    f.resume_timeout_s = c.resume_timeout_s;
    f.chunk = c.chunk;
    f.max_rows = c.max_rows;
    f.requests = c.requests;
    f.exit_when_done = c.exit_when_done;
    f.shutdown_workers = true; /* serve owns its workers */
    if (strcmp(c.transport, "mpi")) {
        xc_log_set_role("C");
        return serve_local(&c, &f);
    }
    /* MPI: the rank decides the role (Open MPI, MPICH and PMIx names) */
    int rank = env_int("OMPI_COMM_WORLD_RANK", "PMI_RANK", -1);
    int size = env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", -1);
    if (rank < 0 || size < 2) {
        fprintf(stderr, "xcpipe serve --transport mpi: run under mpirun with at least 2 ranks\n");
        return 2;
    }
    if (rank == 0) {
        xc_log_set_role("C");
        f.endpoint = "mpi://0";
        f.shutdown_workers = true; /* the ranks are ours: mpirun ends when they do */
        f.workers = size - 1;
        f.stages = c.stages;
        f.replicas = 0;
        xc_coord_conf cc;
        xc_coord_cli_conf(&f, &cc);
        /* every rank on this node (Open MPI / MPICH say how many are local): one host's
         * memory for all the stages' KV pools, as for local processes */
        cc.one_host = !strcmp(c.backend, "cpu") &&
                      env_int("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", -1) == size;
        xc_coord *co = NULL;
        st = xc_coord_create(&cc, &co);
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe serve: %s\n", xc_err_last());
            return 1;
        }
        xc_http *http = NULL; /* api helper: the OpenAI-compatible HTTP API */
        if (xc_http_start_if(&g_http_flags, c.requests != NULL, c.model, co, &http) != XC_OK) {
            fprintf(stderr, "xcpipe serve: %s\n", xc_err_last());
            xc_coord_destroy(co);
            return 1;
        }
        int rc = xc_coord_cli_serve(co, &f, http);
        xc_http_destroy(http);
        xc_coord_destroy(co);
        return rc;
    }
    char ep[64], id[32], thr[16], hb[32], orphan[32];
    snprintf(ep, sizeof ep, "mpi://%d", rank);
    /* as for local workers: a rank that the coordinator stopped talking to (it exited before
     * this rank registered: mpirun would wait for it forever) exits on its own */
    snprintf(orphan, sizeof orphan, "%g", c.orphan_s);
    snprintf(id, sizeof id, "rank%d", rank);
    snprintf(thr, sizeof thr, "%d", c.threads);
    snprintf(hb, sizeof hb, "%g", c.heartbeat_s);
    char *wargv[] = {"worker",
                     "--coordinator",
                     "mpi://0",
                     "--endpoint",
                     ep,
                     "--id",
                     id,
                     "--threads",
                     thr,
                     "--backend",
                     (char *)c.backend,
                     "--heartbeat",
                     hb,
                     "--log-level",
                     (char *)c.log_level,
                     "--role",
                     rank == 1 ? "any" : "stage", /* rank 1: vision if the model has it */
                     "--orphan-timeout",
                     orphan,
                     NULL};
    return xc_worker_cli_main(19, wargv);
}
