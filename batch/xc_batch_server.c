/* Starts and stops the local cluster (`xcpipe serve`) that a batch run with --model uses. */
#include "xc_batch_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <curl/curl.h>

#include "xc_mem.h"
#include "xc_time.h"

extern char **environ;

struct xc_batch_server {
    pid_t pid;
    bool exited;
    int status; /* waitpid status once exited */
    char url[64];
    char key[40];
    char log_path[PATH_MAX];
};

/* A port the kernel considers free right now (bound and released: a small race that start
 * covers by retrying with another port). */
static xc_status free_port(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return xc_errf(XC_ERR_IO, "socket: %s", strerror(errno));
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t n = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &n) != 0) {
        int e = errno;
        close(fd);
        return xc_errf(XC_ERR_IO, "cannot find a free loopback port: %s", strerror(e));
    }
    close(fd);
    *port = ntohs(a.sin_port);
    return XC_OK;
}

static void random_key(char *buf, size_t n) {
    unsigned char b[16] = {0};
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, b, sizeof b) != (ssize_t)sizeof b) {
        uint64_t t = xc_now_ns() ^ (uint64_t)getpid() << 40;
        memcpy(b, &t, sizeof t);
    }
    if (fd >= 0) {
        close(fd);
    }
    size_t o = (size_t)snprintf(buf, n, "xcb-");
    for (size_t i = 0; i < sizeof b && o + 2 < n; i++) {
        o += (size_t)snprintf(buf + o, n - o, "%02x", b[i]);
    }
}

static bool env_dropped(const char *e) {
    static const char *const drop[] = {
        "XC_API_KEYS=", "XC_API_KEY_FILE=", "XC_PORT=", "XC_HOST=", "XC_NO_HTTP=", "XC_REQUESTS="};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++) {
        if (!strncmp(e, drop[i], strlen(drop[i]))) {
            return true;
        }
    }
    return false;
}

static xc_status spawn(xc_batch_server *s, const xc_batch_server_conf *c, int port) {
    char port_s[16], stages_s[16], keyenv[64];
    snprintf(port_s, sizeof port_s, "%d", port);
    snprintf(stages_s, sizeof stages_s, "%d", c->stages);
    snprintf(keyenv, sizeof keyenv, "XC_API_KEYS=%s", s->key);
    size_t n_env = 0;
    while (environ[n_env]) {
        n_env++;
    }
    char **argv = xc_calloc((size_t)c->n_extra + 16, sizeof *argv);
    char **envp = xc_calloc(n_env + 2, sizeof *envp);
    if (!argv || !envp) {
        xc_free(argv);
        xc_free(envp);
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    int a = 0;
    const char *fixed[] = {c->exe,   "serve",  "--model",   c->model, "--stages",
                           stages_s, "--host", "127.0.0.1", "--port", port_s};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        argv[a++] = (char *)fixed[i];
    }
    for (int i = 0; i < c->n_extra; i++) {
        argv[a++] = (char *)c->extra[i];
    }
    size_t e = 0;
    for (size_t i = 0; i < n_env; i++) {
        if (!env_dropped(environ[i])) {
            envp[e++] = environ[i];
        }
    }
    envp[e++] = keyenv;
    const char *lp = c->log_path ? c->log_path : "/dev/null";
    int logfd = open(lp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = getpid();
    pid_t pid = logfd >= 0 && nullfd >= 0 ? fork() : -2;
    if (pid == 0) {
        /* child: only async-signal-safe calls from here on */
        setpgid(0, 0);
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
        if (getppid() != parent) {
            _exit(127);
        }
        dup2(nullfd, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execve(c->exe, argv, envp);
        _exit(127);
    }
    int err = errno;
    if (logfd >= 0) {
        close(logfd);
    }
    if (nullfd >= 0) {
        close(nullfd);
    }
    xc_free(argv);
    xc_free(envp);
    if (pid == -2) {
        return xc_errf(XC_ERR_IO, "cannot open the server log %s: %s", lp, strerror(err));
    }
    if (pid < 0) {
        return xc_errf(XC_ERR_IO, "fork: %s", strerror(err));
    }
    s->pid = pid;
    s->exited = false;
    return XC_OK;
}

bool xc_batch_server_alive(void *p) {
    xc_batch_server *s = p;
    if (!s->exited && waitpid(s->pid, &s->status, WNOHANG) == s->pid) {
        s->exited = true;
    }
    return !s->exited;
}

static size_t discard(char *p, size_t sz, size_t nm, void *ud) {
    (void)p;
    (void)ud;
    return sz * nm;
}

/* GET /ready with the key: 200 means ready. */
static bool ready(const xc_batch_server *s) {
    CURL *e = curl_easy_init();
    if (!e) {
        return false;
    }
    char url[96], auth[80];
    snprintf(url, sizeof url, "%s/ready", s->url);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", s->key);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    long status = 0;
    if (h && curl_easy_perform(e) == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    return status == 200;
}

/* The last lines of the server log, for an error message. */
static void log_tail(const char *path, char *buf, size_t n) {
    buf[0] = 0;
    int fd = path[0] ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0) {
        return;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)(n - 1) ? end - (off_t)(n - 1) : 0;
    ssize_t r = pread(fd, buf, n - 1, from);
    close(fd);
    buf[r > 0 ? r : 0] = 0;
    char *nl = from > 0 ? strchr(buf, '\n') : NULL;
    if (nl) {
        memmove(buf, nl + 1, strlen(nl + 1) + 1);
    }
}

xc_status xc_batch_server_start(const xc_batch_server_conf *c, xc_batch_server **out) {
    char cfg[PATH_MAX];
    struct stat sb;
    snprintf(cfg, sizeof cfg, "%s/config.json", c->model);
    if (stat(cfg, &sb) != 0) {
        return xc_errf(XC_ERR_ARG, "--model %s: no config.json there (%s)", c->model,
                       strerror(errno));
    }
    if (access(c->exe, X_OK) != 0) {
        return xc_errf(XC_ERR_ARG, "cannot run %s: %s", c->exe, strerror(errno));
    }
    xc_batch_server *s = xc_calloc(1, sizeof *s);
    if (!s) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    random_key(s->key, sizeof s->key);
    snprintf(s->log_path, sizeof s->log_path, "%s", c->log_path ? c->log_path : "");
    xc_status st = XC_OK;
    for (int attempt = 0; attempt < 3; attempt++) {
        int port = 0;
        XC_TRY_GOTO(free_port(&port), st, fail);
        snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", port);
        XC_TRY_GOTO(spawn(s, c, port), st, fail);
        uint64_t end = xc_now_ns() + (uint64_t)(c->ready_timeout_s * 1e9);
        while (xc_batch_server_alive(s) && !ready(s)) {
            if (xc_now_ns() > end || (c->abort && *c->abort)) {
                bool interrupted = c->abort && *c->abort;
                xc_batch_server_stop(s, 10);
                if (interrupted) {
                    return xc_errf(XC_ERR_TIMEOUT, "interrupted while the local server started");
                }
                return xc_errf(XC_ERR_TIMEOUT,
                               "the local server was not ready within %g s (its log: %s)",
                               c->ready_timeout_s, c->log_path ? c->log_path : "none");
            }
            usleep(100000);
        }
        if (!s->exited) {
            *out = s;
            return XC_OK;
        }
        /* it exited before it was ready: maybe the port was taken meanwhile; try another */
    }
    {
        char tail[1200];
        log_tail(s->log_path, tail, sizeof tail);
        st = xc_errf(XC_ERR_IO, "the local server (%s serve --model %s) exited with %s %d%s%s",
                     c->exe, c->model, WIFSIGNALED(s->status) ? "signal" : "status",
                     WIFSIGNALED(s->status) ? WTERMSIG(s->status) : WEXITSTATUS(s->status),
                     tail[0] ? "; the end of its log:\n" : "", tail);
    }
fail:
    xc_free(s);
    return st;
}

const char *xc_batch_server_url(const xc_batch_server *s) {
    return s->url;
}

const char *xc_batch_server_key(const xc_batch_server *s) {
    return s->key;
}

xc_status xc_batch_server_stop(xc_batch_server *s, double grace_s) {
    if (!s) {
        return XC_OK;
    }
    xc_status st = XC_OK;
    if (xc_batch_server_alive(s)) {
        kill(s->pid, SIGTERM);
        uint64_t end = xc_now_ns() + (uint64_t)(grace_s * 1e9);
        while (xc_batch_server_alive(s) && xc_now_ns() < end) {
            usleep(20000);
        }
        if (!s->exited) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &s->status, 0);
            s->exited = true;
            st = xc_errf(XC_ERR_IO, "the local server did not stop within %g s: killed", grace_s);
        }
    }
    if (st == XC_OK && !(WIFEXITED(s->status) && WEXITSTATUS(s->status) == 0)) {
        st = xc_errf(XC_ERR_IO, "the local server exited with %s %d",
                     WIFSIGNALED(s->status) ? "signal" : "status",
                     WIFSIGNALED(s->status) ? WTERMSIG(s->status) : WEXITSTATUS(s->status));
    }
    xc_free(s);
    return st;
}

xc_status xc_batch_server_lazy_init(xc_batch_server_lazy *l, const char *who,
                                    const xc_batch_server_conf *sc,
                                    xc_status (**start)(void *, const char **, const char **),
                                    void **start_ud, bool (**alive)(void *), void **alive_ud) {
    memset(l, 0, sizeof *l);
    l->who = who;
    ssize_t n = readlink("/proc/self/exe", l->exe, sizeof l->exe - 1);
    if (n <= 0) {
        return xc_errf(XC_ERR_IO, "cannot find this program's path: %s", strerror(errno));
    }
    l->exe[n] = 0;
    l->sc = *sc;
    l->sc.exe = l->exe;
    *start = xc_batch_server_lazy_start;
    *start_ud = l;
    *alive = xc_batch_server_lazy_alive;
    *alive_ud = l;
    return XC_OK;
}

xc_status xc_batch_server_lazy_start(void *ud, const char **endpoint, const char **api_key) {
    xc_batch_server_lazy *l = ud;
    fprintf(stderr, "%s: starting a local cluster (%s, %d stage(s); log %s)\n", l->who, l->sc.model,
            l->sc.stages, l->sc.log_path ? l->sc.log_path : "/dev/null");
    XC_TRY(xc_batch_server_start(&l->sc, &l->srv));
    fprintf(stderr, "%s: local cluster ready on %s\n", l->who, xc_batch_server_url(l->srv));
    *endpoint = xc_batch_server_url(l->srv);
    *api_key = xc_batch_server_key(l->srv);
    return XC_OK;
}

bool xc_batch_server_lazy_alive(void *ud) {
    xc_batch_server_lazy *l = ud;
    return !l->srv || xc_batch_server_alive(l->srv);
}
