/* Logging to stderr with a level from XC_LOG_LEVEL; one write per line so lines never interleave. */
#include "xc_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_level = -1;
static char log_role[16] = "-";

int xc_log_parse_level(const char *s) {
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

xc_log_level xc_log_get_level(void) {
    if (log_level < 0) {
        const char *env = getenv("XC_LOG_LEVEL");
        int lvl = env ? xc_log_parse_level(env) : -1;
        log_level = lvl < 0 ? XC_LOG_LEVEL_INFO : lvl;
    }
    return (xc_log_level)log_level;
}

void xc_log_set_level(xc_log_level lvl) {
    log_level = (int)lvl;
}

void xc_log_set_role(const char *role) {
    snprintf(log_role, sizeof log_role, "%s", role);
}

void xc_log_write(xc_log_level lvl, const char *file, int line, const char *fmt, ...) {
    static const char tags[] = "DIWE";
    char buf[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    int n = snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %c %s:%d ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_role, tags[lvl & 3], base, line);
    if (n < 0 || (size_t)n >= sizeof buf) {
        n = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) {
        m = 0;
    }
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof buf - 2) {
        len = sizeof buf - 2;
    }
    buf[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}
