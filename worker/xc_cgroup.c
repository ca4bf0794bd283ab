/* Container limits from cgroup v2 (memory.max, cpu.max) and v1 (memory.limit_in_bytes,
 * cpu.cfs_quota_us / cpu.cfs_period_us), combined with the node's memory and CPUs. */
#include "xc_cgroup.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define V1_UNLIMITED (1ull << 62) /* v1 reports "no limit" as LONG_MAX rounded to a page */

/* ---- parsing ---- */

/* Copies text without surrounding whitespace into buf (size n); false if it does not fit. */
static bool trim(const char *text, char *buf, size_t n) {
    while (isspace((unsigned char)*text)) {
        text++;
    }
    size_t len = strlen(text);
    while (len > 0 && isspace((unsigned char)text[len - 1])) {
        len--;
    }
    if (len >= n) {
        return false;
    }
    memcpy(buf, text, len);
    buf[len] = 0;
    return true;
}

/* A whole decimal unsigned number (digits only). */
static bool parse_u64(const char *s, uint64_t *out) {
    if (!isdigit((unsigned char)*s)) {
        return false;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) {
        return false;
    }
    *out = v;
    return true;
}

xc_status xc_cgroup_parse_memory_max(const char *text, uint64_t *out) {
    char b[64];
    uint64_t v;
    if (!trim(text, b, sizeof b)) {
        return xc_errf(XC_ERR_ARG, "memory.max: '%.40s' is too long", text);
    }
    if (!strcmp(b, "max")) {
        *out = 0;
        return XC_OK;
    }
    if (!parse_u64(b, &v)) {
        return xc_errf(XC_ERR_ARG, "memory.max: '%s' is neither 'max' nor a byte count", b);
    }
    *out = v;
    return XC_OK;
}

xc_status xc_cgroup_parse_cpu_max(const char *text, double *out) {
    char b[64], q[32], p[32] = "100000", extra[2];
    uint64_t quota, period;
    if (!trim(text, b, sizeof b)) {
        return xc_errf(XC_ERR_ARG, "cpu.max: '%.40s' is too long", text);
    }
    int n = sscanf(b, "%31s %31s %1s", q, p, extra);
    if (n < 1 || n > 2 || !parse_u64(p, &period) || period == 0) {
        return xc_errf(XC_ERR_ARG, "cpu.max: '%s' is not 'QUOTA PERIOD' or 'max PERIOD'", b);
    }
    if (!strcmp(q, "max")) {
        *out = 0;
        return XC_OK;
    }
    if (!parse_u64(q, &quota)) {
        return xc_errf(XC_ERR_ARG, "cpu.max: quota '%s' is not a number", q);
    }
    *out = (double)quota / (double)period;
    return XC_OK;
}

xc_status xc_cgroup_parse_v1_memory(const char *text, uint64_t *out) {
    char b[64];
    uint64_t v;
    if (!trim(text, b, sizeof b) || !parse_u64(b, &v)) {
        return xc_errf(XC_ERR_ARG, "memory.limit_in_bytes: '%.40s' is not a byte count", text);
    }
    *out = v >= V1_UNLIMITED ? 0 : v;
    return XC_OK;
}

xc_status xc_cgroup_parse_v1_cpu(const char *quota, const char *period, double *out) {
    char q[32], p[32];
    uint64_t qv, pv;
    if (!trim(quota, q, sizeof q) || !trim(period, p, sizeof p) || !parse_u64(p, &pv) || !pv) {
        return xc_errf(XC_ERR_ARG, "cpu.cfs_period_us: '%.20s' is not a positive number", period);
    }
    if (!strcmp(q, "-1")) {
        *out = 0;
        return XC_OK;
    }
    if (!parse_u64(q, &qv)) {
        return xc_errf(XC_ERR_ARG, "cpu.cfs_quota_us: '%s' is neither -1 nor a number", q);
    }
    *out = (double)qv / (double)pv;
    return XC_OK;
}

/* ---- reading the hierarchy ---- */

/* Reads a small file into buf; false if missing or unreadable. */
static bool read_small(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        return false;
    }
    size_t got = fread(buf, 1, n - 1, f);
    fclose(f);
    buf[got] = 0;
    return got > 0;
}

static void take_mem(uint64_t v, uint64_t *best) {
    if (v && (!*best || v < *best)) {
        *best = v;
    }
}

static void take_cpu(double v, double *best) {
    if (v > 0 && (*best == 0 || v < *best)) {
        *best = v;
    }
}

/* Takes the limits found in base + cg and in each ancestor of cg down to base itself (v2: both;
 * v1: the memory or the cpu controller's files). */
static void walk(const char *base, const char *cg, bool v2, bool mem, xc_cgroup_limits *out) {
    char rel[1024];
    snprintf(rel, sizeof rel, "%s", cg);
    for (;;) {
        char dir[2048], path[2100], a[128], b[128];
        size_t l = strlen(rel);
        while (l > 0 && rel[l - 1] == '/') {
            rel[--l] = 0;
        }
        snprintf(dir, sizeof dir, "%s%s", base, rel);
        uint64_t m;
        double c;
        if (v2) {
            snprintf(path, sizeof path, "%s/memory.max", dir);
            if (read_small(path, a, sizeof a) && xc_cgroup_parse_memory_max(a, &m) == XC_OK) {
                take_mem(m, &out->mem_bytes);
            }
            snprintf(path, sizeof path, "%s/cpu.max", dir);
            if (read_small(path, a, sizeof a) && xc_cgroup_parse_cpu_max(a, &c) == XC_OK) {
                take_cpu(c, &out->cpus);
            }
        } else if (mem) {
            snprintf(path, sizeof path, "%s/memory.limit_in_bytes", dir);
            if (read_small(path, a, sizeof a) && xc_cgroup_parse_v1_memory(a, &m) == XC_OK) {
                take_mem(m, &out->mem_bytes);
            }
        } else {
            snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
            bool ok = read_small(path, a, sizeof a);
            snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
            if (ok && read_small(path, b, sizeof b) && xc_cgroup_parse_v1_cpu(a, b, &c) == XC_OK) {
                take_cpu(c, &out->cpus);
            }
        }
        char *slash = strrchr(rel, '/');
        if (!slash) {
            break; /* base itself done */
        }
        *slash = 0;
    }
}

void xc_cgroup_read(const char *root, const char *proc_cgroup, xc_cgroup_limits *out) {
    *out = (xc_cgroup_limits){0};
    char path[2048], line[1024];
    snprintf(path, sizeof path, "%s/cgroup.controllers", root);
    bool v2 = access(path, F_OK) == 0;
    FILE *f = fopen(proc_cgroup, "r");
    bool seen_mem = false, seen_cpu = false;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        /* "ID:CONTROLLERS:PATH"; v2 has "0::PATH" */
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || c2[1] != '/') {
            continue;
        }
        *c2 = 0;
        const char *ctl = c1 + 1, *cg = c2 + 1;
        if (v2) {
            if (!*ctl) {
                walk(root, cg, true, false, out);
                seen_mem = seen_cpu = true;
            }
            continue;
        }
        /* v1: the controller list is comma-separated ("cpu,cpuacct"); the mount is named after
         * the list (systemd also links "cpu" to it) */
        char list[256];
        snprintf(list, sizeof list, ",%s,", ctl);
        bool is_mem = strstr(list, ",memory,") != NULL, is_cpu = strstr(list, ",cpu,") != NULL;
        if (is_mem || is_cpu) {
            snprintf(path, sizeof path, "%s/%s", root, ctl);
            if (access(path, F_OK) != 0) {
                snprintf(path, sizeof path, "%s/%s", root, is_mem ? "memory" : "cpu");
            }
            walk(path, cg, false, is_mem, out);
            seen_mem = seen_mem || is_mem;
            seen_cpu = seen_cpu || is_cpu;
        }
    }
    if (f) {
        fclose(f);
    }
    /* no membership line: the mount's top is all we can see (a container's own cgroup) */
    if (v2 && !seen_mem) {
        walk(root, "", true, false, out);
    }
    if (!v2 && !seen_mem) {
        snprintf(path, sizeof path, "%s/memory", root);
        walk(path, "", false, true, out);
    }
    if (!v2 && !seen_cpu) {
        snprintf(path, sizeof path, "%s/cpu", root);
        walk(path, "", false, false, out);
    }
}

/* ---- this process ---- */

uint64_t xc_cgroup_host_mem(void) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    uint64_t phys = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
    xc_cgroup_limits l;
    xc_cgroup_read("/sys/fs/cgroup", "/proc/self/cgroup", &l);
    if (l.mem_bytes && (!phys || l.mem_bytes < phys)) {
        return l.mem_bytes;
    }
    return phys;
}

int xc_cgroup_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int a = CPU_COUNT(&set);
        if (a > 0 && (n < 1 || a < n)) {
            n = a;
        }
    }
    xc_cgroup_limits l;
    xc_cgroup_read("/sys/fs/cgroup", "/proc/self/cgroup", &l);
    if (l.cpus > 0 && floor(l.cpus) < (double)n) {
        n = (long)floor(l.cpus);
    }
    return n < 1 ? 1 : (int)n;
}
