/* Worker command line: config table, signal handling, create / run / destroy. */
#include "xc_worker_cli.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "xc_conf.h"
#include "xc_log.h"
#include "xc_worker.h"

typedef struct worker_flags {
    const char *coordinator, *endpoint, *id, *backend, *log_level, *role, *kv_dtype;
    int threads, send_timeout_ms, mem_mb, sim_width, parent_pid, device, device_mem_mb;
    int image_cache_mb, vision_batch, vision_wait_ms;
    double heartbeat_s, hang_s, orphan_s, device_mem_frac, stop_grace_s;
    double sim_layer_us, sim_layer_row_us, sim_embed_us, sim_head_us, sim_head_row_us, sim_scale;
} worker_flags;

static const xc_conf_entry worker_entries[] = {
    XC_CONF_STR("coordinator", "XC_COORDINATOR", worker_flags, coordinator, NULL, NULL,
                "coordinator endpoint: tcp://HOST:PORT, ipc:///PATH or mpi://0"),
    XC_CONF_STR("endpoint", "XC_ENDPOINT", worker_flags, endpoint, "tcp://127.0.0.1:*", NULL,
                "own mailbox endpoint (tcp port * = any free port)"),
    XC_CONF_STR("id", "XC_WORKER_ID", worker_flags, id, NULL, NULL,
                "unique worker name (default HOST:PID)"),
    XC_CONF_STR("backend", "XC_BACKEND", worker_flags, backend, "cpu", "cpu|cuda|sim",
                "compute backend; sim does no math and sleeps per the cost model"),
    XC_CONF_INT("device", "XC_CUDA_DEVICE", worker_flags, device, 0, 0, 1024,
                "cuda: device ordinal, counted among the devices CUDA_VISIBLE_DEVICES leaves"),
    XC_CONF_FLOAT("device-mem-frac", "XC_DEVICE_MEM_FRAC", worker_flags, device_mem_frac, 0.9,
                  0.001, 1,
                  "cuda: share of the device's free memory (measured at start) to advertise to "
                  "placement and KV sizing; two workers on one GPU: 0.45 each"),
    XC_CONF_INT("device-mem-mb", "XC_DEVICE_MEM_MB", worker_flags, device_mem_mb, 0, 0, 1 << 30,
                "cuda: advertise at most this much device memory in MiB (0 = no cap)"),
    XC_CONF_STR("role", "XC_ROLE", worker_flags, role, "any", "any|vision|stage",
                "the role this worker accepts: vision encoder, decoder stages, or any"),
    XC_CONF_STR("kv-dtype", "XC_KV_DTYPE", worker_flags, kv_dtype, "bf16", "bf16|f32",
                "KV cache element type: keys (after RoPE) and values rounded to bf16 on store "
                "(half the memory per token), or kept in f32; attention computes in f32"),
    XC_CONF_INT("image-cache-mb", "XC_IMAGE_CACHE_MB", worker_flags, image_cache_mb, 512, 0, 65536,
                "vision: MiB of image embeddings kept by the SHA-256 of the preprocessed pixels, "
                "so that a re-sent image is not encoded again (least recently used evicted; 0 = "
                "off)"),
    XC_CONF_INT("vision-batch", "XC_VISION_BATCH", worker_flags, vision_batch, 8, 1, 1024,
                "vision: images of different requests encoded together, at most (1 = no batching)"),
    XC_CONF_INT("vision-wait-ms", "XC_VISION_WAIT_MS", worker_flags, vision_wait_ms, 5, 0, 10000,
                "vision: how long a request's images wait for others to batch with (images all in "
                "the image cache do not wait)"),
    XC_CONF_INT("threads", "XC_THREADS", worker_flags, threads, 0, 0, 1024,
                "CPU threads (0 = the cores this process may use: online CPUs, affinity and the "
                "cgroup CPU quota)"),
    XC_CONF_FLOAT("heartbeat", "XC_HEARTBEAT", worker_flags, heartbeat_s, 0.5, 0.01, 60,
                  "heartbeat period in seconds"),
    XC_CONF_FLOAT("hang-timeout", "XC_HANG_TIMEOUT", worker_flags, hang_s, 60, 0.1, 86400,
                  "seconds one message may run before the worker stops heartbeating"),
    XC_CONF_FLOAT("orphan-timeout", "XC_ORPHAN_TIMEOUT", worker_flags, orphan_s, 0, 0, 1e7,
                  "exit (status 1) after this many seconds without a message from the "
                  "coordinator, which sends one every second (0 = wait for it forever)"),
    XC_CONF_FLOAT("stop-grace", "XC_STOP_GRACE", worker_flags, stop_grace_s, 15, 0, 86400,
                  "on SIGTERM/SIGINT, seconds to finish the message in hand (a full-size "
                  "micro-batch or image can take minutes) before the process ends anyway "
                  "(SIGALRM; 0 = wait for the message)"),
    XC_CONF_INT("parent-pid", "XC_PARENT_PID", worker_flags, parent_pid, 0, 0, 1 << 30,
                "exit when process PID, which started this worker, exits (Linux parent-death "
                "signal; 0 = no such parent)"),
    XC_CONF_INT("send-timeout-ms", "XC_SEND_TIMEOUT_MS", worker_flags, send_timeout_ms, 2000, 1,
                600000, "give up a send to a peer that is gone after this"),
    XC_CONF_INT("mem-mb", "XC_MEM_MB", worker_flags, mem_mb, 0, 0, 1 << 30,
                "memory advertised to placement in MiB (0 = physical memory or the cgroup limit, "
                "if smaller)"),
    XC_CONF_FLOAT("sim-layer-us", "XC_SIM_LAYER_US", worker_flags, sim_layer_us, 140, 0, 1e9,
                  "sim: microseconds per layer and micro-batch"),
    XC_CONF_FLOAT("sim-layer-row-us", "XC_SIM_LAYER_ROW_US", worker_flags, sim_layer_row_us, 0.75,
                  0, 1e9, "sim: microseconds per layer and row"),
    XC_CONF_FLOAT("sim-embed-us", "XC_SIM_EMBED_US", worker_flags, sim_embed_us, 5, 0, 1e9,
                  "sim: first stage, per micro-batch"),
    XC_CONF_FLOAT("sim-head-us", "XC_SIM_HEAD_US", worker_flags, sim_head_us, 230, 0, 1e9,
                  "sim: last stage, per micro-batch"),
    XC_CONF_FLOAT("sim-head-row-us", "XC_SIM_HEAD_ROW_US", worker_flags, sim_head_row_us, 1.3, 0,
                  1e9, "sim: last stage, per sampled row"),
    XC_CONF_FLOAT("sim-scale", "XC_SIM_SCALE", worker_flags, sim_scale, 1, 1e-6, 1e6,
                  "sim: multiply every cost"),
    XC_CONF_INT("sim-width", "XC_SIM_WIDTH", worker_flags, sim_width, 64, 1, 65536,
                "sim: columns of the hidden rows sent between stages"),
    XC_CONF_STR("log-level", "XC_LOG_LEVEL", worker_flags, log_level, "info",
                "debug|info|warn|error|off", "log threshold"),
};

static const xc_conf_spec worker_spec = {
    "xcpipe-worker --coordinator ENDPOINT [options]",
    "A cluster worker: registers with the coordinator, loads the role it is given (vision or a "
    "range of decoder layers) and runs micro-batches until SIGTERM.",
    worker_entries, sizeof worker_entries / sizeof worker_entries[0]};

static volatile sig_atomic_t g_stop;

static unsigned g_grace_s; /* --stop-grace, whole seconds (0 = none) */

/* The main loop sees g_stop between messages; one message can run for minutes at full size, so
 * the first signal also arms an alarm: the process ends (SIGALRM's default action) if it is still
 * running --stop-grace seconds later. Both calls are async-signal-safe. */
static void on_signal(int sig) {
    (void)sig;
    if (!g_stop && g_grace_s > 0) {
        alarm(g_grace_s);
    }
    g_stop = 1;
}

int xc_worker_cli_main(int argc, char **argv) {
    worker_flags c;
    xc_status st = xc_conf_parse(&worker_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe-worker: %s\n", xc_err_last());
        return 2;
    }
    if (!c.coordinator) {
        fprintf(stderr, "xcpipe-worker: --coordinator is required (see --help)\n");
        return 2;
    }
    xc_log_set_level((xc_log_level)xc_log_parse_level(c.log_level));
    xc_log_set_role("W");
    g_grace_s = c.stop_grace_s > 0 ? (unsigned)(c.stop_grace_s + 0.999) : 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (c.parent_pid > 0) {
        /* started by xcpipe serve: SIGTERM when it dies, however it dies (SIGKILL included).
         * The parent may have died before the prctl: then no signal will come, so check. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) {
            fprintf(stderr, "xcpipe-worker: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
            return 1;
        }
        if (getppid() != (pid_t)c.parent_pid) {
            fprintf(stderr, "xcpipe-worker: parent %d is gone; exiting\n", c.parent_pid);
            return 1;
        }
    }
    xc_worker_conf wc = {.coordinator = c.coordinator,
                         .endpoint = c.endpoint,
                         .id = c.id,
                         .backend = c.backend,
                         .n_threads = c.threads,
                         .heartbeat_s = c.heartbeat_s,
                         .hang_s = c.hang_s,
                         .send_timeout_ms = c.send_timeout_ms,
                         .mem_bytes = (uint64_t)c.mem_mb << 20,
                         .sim = {.layer_us = c.sim_layer_us,
                                 .layer_row_us = c.sim_layer_row_us,
                                 .embed_us = c.sim_embed_us,
                                 .head_us = c.sim_head_us,
                                 .head_row_us = c.sim_head_row_us,
                                 .scale = c.sim_scale},
                         .sim_width = c.sim_width,
                         .orphan_s = c.orphan_s,
                         .device = c.device,
                         .device_mem_frac = c.device_mem_frac,
                         .device_mem_bytes = (uint64_t)c.device_mem_mb << 20,
                         .kv_dtype = c.kv_dtype,
                         .image_cache_bytes = (size_t)c.image_cache_mb << 20,
                         .vision_batch = c.vision_batch,
                         .vision_wait_ms = c.vision_wait_ms,
                         .role = !strcmp(c.role, "vision")  ? XC_WIRE_ROLE_VISION
                                 : !strcmp(c.role, "stage") ? XC_WIRE_ROLE_STAGE
                                                            : XC_WIRE_ROLE_ANY};
    xc_worker *w = NULL;
    st = xc_worker_create(&wc, &w);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe-worker: %s\n", xc_err_last());
        return st == XC_ERR_ARG ? 2 : 1;
    }
    st = xc_worker_run(w, &g_stop);
    xc_worker_destroy(w);
    XC_LOG_INFO("worker exits (%s)", xc_status_str(st));
    return st == XC_OK ? 0 : 1;
}
