/* Container limits: the memory limit and CPU quota of the cgroup this process runs in (cgroup v2,
 * and v1 where the node still uses it), so that a worker in a pod advertises the memory it may
 * use and starts as many threads as it may run, not the node's. See docs/cluster.md. */
#pragma once

#include <stdint.h>

#include "xc_status.h"

typedef struct xc_cgroup_limits {
    uint64_t mem_bytes; /* memory limit; 0 = none found */
    double cpus;        /* CPU quota in cores (quota / period); 0 = none found */
} xc_cgroup_limits;

/* cgroup v2 memory.max: "max" (no limit: *out = 0) or a byte count. XC_ERR_ARG names bad text. */
xc_status xc_cgroup_parse_memory_max(const char *text, uint64_t *out);

/* cgroup v2 cpu.max: "max [PERIOD]" (no quota: *out = 0) or "QUOTA PERIOD" in microseconds
 * (*out = QUOTA / PERIOD cores). XC_ERR_ARG names bad text. */
xc_status xc_cgroup_parse_cpu_max(const char *text, double *out);

/* cgroup v1 memory.limit_in_bytes: a byte count; values of 2^62 and more are the kernel's "no
 * limit" (*out = 0). XC_ERR_ARG names bad text. */
xc_status xc_cgroup_parse_v1_memory(const char *text, uint64_t *out);

/* cgroup v1 cpu.cfs_quota_us (-1 = no quota: *out = 0) and cpu.cfs_period_us. XC_ERR_ARG. */
xc_status xc_cgroup_parse_v1_cpu(const char *quota, const char *period, double *out);

/* The limits that apply to this process: proc_cgroup is its membership file (normally
 * "/proc/self/cgroup"), root the cgroup mount ("/sys/fs/cgroup"); tests pass sample trees.
 * v2 (root/cgroup.controllers exists): the smallest memory.max and cpu.max over the process's
 * cgroup and its ancestors below root, and root itself (the container's own cgroup under a
 * cgroup namespace). v1: the same over the memory and cpu controllers' hierarchies. Files that
 * are missing or unreadable mean no limit; never fails. */
void xc_cgroup_read(const char *root, const char *proc_cgroup, xc_cgroup_limits *out);

/* Physical memory, or the cgroup memory limit if smaller (bytes; 0 if neither is known). */
uint64_t xc_cgroup_host_mem(void);

/* CPUs this process may run on: the smallest of the online CPUs, its affinity mask and the
 * cgroup CPU quota (rounded down: a thread beyond the quota gets throttled and stalls the others
 * at every barrier), at least 1. */
int xc_cgroup_cpus(void);
