/* Container limits: the cgroup v2 and v1 file formats (as the kernel writes them: Documentation/
 * admin-guide/cgroup-v2.rst "memory.max", "cpu.max"; cgroup-v1 memory.limit_in_bytes, CFS
 * quota/period) parsed from sample text, and whole sample hierarchies (a pod under kubepods, a
 * namespaced container, a v1 docker container) read from a temporary directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_cgroup.h"
#include "xc_test.h"

static void test_cgroup_parse_v2(void **state) {
    (void)state;
    uint64_t m = 1;
    double c = 1;
    assert_int_equal(xc_cgroup_parse_memory_max("max\n", &m), XC_OK);
    assert_int_equal(m, 0);
    assert_int_equal(xc_cgroup_parse_memory_max("17179869184\n", &m), XC_OK);
    assert_int_equal(m, 17179869184ull);
    assert_int_equal(xc_cgroup_parse_memory_max("12k", &m), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "memory.max: '12k'"));
    assert_int_equal(xc_cgroup_parse_memory_max("-1", &m), XC_ERR_ARG);
    assert_int_equal(xc_cgroup_parse_memory_max("", &m), XC_ERR_ARG);
    assert_int_equal(xc_cgroup_parse_memory_max("99999999999999999999999", &m), XC_ERR_ARG);

    assert_int_equal(xc_cgroup_parse_cpu_max("max 100000\n", &c), XC_OK);
    assert_true(c == 0);
    assert_int_equal(xc_cgroup_parse_cpu_max("250000 100000\n", &c), XC_OK);
    assert_true(c == 2.5);
    assert_int_equal(xc_cgroup_parse_cpu_max("50000 100000", &c), XC_OK);
    assert_true(c == 0.5);
    assert_int_equal(xc_cgroup_parse_cpu_max("max", &c), XC_OK); /* period omitted */
    assert_true(c == 0);
    assert_int_equal(xc_cgroup_parse_cpu_max("100000 0", &c), XC_ERR_ARG);
    assert_int_equal(xc_cgroup_parse_cpu_max("1 2 3", &c), XC_ERR_ARG);
    assert_int_equal(xc_cgroup_parse_cpu_max("abc 100000", &c), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), "quota 'abc'"));
}

static void test_cgroup_parse_v1(void **state) {
    (void)state;
    uint64_t m = 1;
    double c = 1;
    /* what an unlimited v1 cgroup reports on x86-64: LONG_MAX rounded down to a page */
    assert_int_equal(xc_cgroup_parse_v1_memory("9223372036854771712\n", &m), XC_OK);
    assert_int_equal(m, 0);
    assert_int_equal(xc_cgroup_parse_v1_memory("536870912\n", &m), XC_OK);
    assert_int_equal(m, 536870912ull);
    assert_int_equal(xc_cgroup_parse_v1_memory("lots", &m), XC_ERR_ARG);
    assert_int_equal(xc_cgroup_parse_v1_cpu("-1\n", "100000\n", &c), XC_OK);
    assert_true(c == 0);
    assert_int_equal(xc_cgroup_parse_v1_cpu("150000\n", "100000\n", &c), XC_OK);
    assert_true(c == 1.5);
    assert_int_equal(xc_cgroup_parse_v1_cpu("-2", "100000", &c), XC_ERR_ARG);
    assert_int_equal(xc_cgroup_parse_v1_cpu("100", "0", &c), XC_ERR_ARG);
}

/* ---- sample hierarchies ---- */

static char g_dir[64];

static void put(const char *rel, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, rel);
    for (char *p = path + strlen(g_dir) + 1; *p; p++) { /* mkdir -p of the parents */
        if (*p == '/') {
            *p = 0;
            mkdir(path, 0700);
            *p = '/';
        }
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void read_tree(const char *proc_text, xc_cgroup_limits *l) {
    put("proc-self-cgroup", proc_text);
    char root[128], proc[128];
    snprintf(root, sizeof root, "%s/fs", g_dir);
    snprintf(proc, sizeof proc, "%s/proc-self-cgroup", g_dir);
    xc_cgroup_read(root, proc, l);
}

static int make_dir(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/xc-cgroup-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int remove_dir(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* v2, no cgroup namespace: the pod's own limits and its parent's, the smaller wins */
static void test_cgroup_v2_pod_and_ancestors(void **state) {
    (void)state;
    put("fs/cgroup.controllers", "cpuset cpu io memory pids\n");
    put("fs/kubepods/memory.max", "max\n");
    put("fs/kubepods/cpu.max", "max 100000\n");
    put("fs/kubepods/pod1/memory.max", "8589934592\n");
    put("fs/kubepods/pod1/cpu.max", "400000 100000\n");
    put("fs/kubepods/pod1/c1/memory.max", "max\n");
    put("fs/kubepods/pod1/c1/cpu.max", "150000 100000\n");
    xc_cgroup_limits l;
    read_tree("0::/kubepods/pod1/c1\n", &l);
    assert_int_equal(l.mem_bytes, 8589934592ull);
    assert_true(l.cpus == 1.5);
    put("fs/kubepods/memory.max", "4294967296\n"); /* a smaller ancestor */
    read_tree("0::/kubepods/pod1/c1\n", &l);
    assert_int_equal(l.mem_bytes, 4294967296ull);
    /* unlimited everywhere */
    put("fs/kubepods/memory.max", "max\n");
    put("fs/kubepods/pod1/memory.max", "max\n");
    put("fs/kubepods/pod1/c1/cpu.max", "max 100000\n");
    put("fs/kubepods/pod1/cpu.max", "max 100000\n");
    read_tree("0::/kubepods/pod1/c1\n", &l);
    assert_int_equal(l.mem_bytes, 0);
    assert_true(l.cpus == 0);
}

/* v2 under a cgroup namespace (a container): the process sees "0::/" and its limits at the top */
static void test_cgroup_v2_namespaced(void **state) {
    (void)state;
    put("fs/cgroup.controllers", "cpu memory\n");
    put("fs/memory.max", "2147483648\n");
    put("fs/cpu.max", "200000 100000\n");
    xc_cgroup_limits l;
    read_tree("0::/\n", &l);
    assert_int_equal(l.mem_bytes, 2147483648ull);
    assert_true(l.cpus == 2.0);
    /* a garbled file is no limit, not a failure */
    put("fs/cpu.max", "garbage\n");
    read_tree("0::/\n", &l);
    assert_true(l.cpus == 0);
    assert_int_equal(l.mem_bytes, 2147483648ull);
}

/* v1 (no cgroup.controllers): memory and cpu,cpuacct hierarchies of a docker container */
static void test_cgroup_v1_docker(void **state) {
    (void)state;
    put("fs/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("fs/memory/docker/abc/memory.limit_in_bytes", "536870912\n");
    put("fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put("fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put("fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n");
    put("fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    xc_cgroup_limits l;
    read_tree("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n", &l);
    assert_int_equal(l.mem_bytes, 536870912ull);
    assert_true(l.cpus == 0.5);
    /* no membership lines: the tops of the hierarchies */
    read_tree("", &l);
    assert_int_equal(l.mem_bytes, 0);
    assert_true(l.cpus == 0);
}

/* the live process: never more than the node has, at least one CPU */
static void test_cgroup_this_process(void **state) {
    (void)state;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int n = xc_cgroup_cpus();
    assert_true(n >= 1 && n <= online);
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    uint64_t m = xc_cgroup_host_mem();
    assert_true(m > 0 && m <= (uint64_t)pages * (uint64_t)psz);
    xc_cgroup_limits l;
    xc_cgroup_read("/nonexistent", "/nonexistent/cgroup", &l);
    assert_int_equal(l.mem_bytes, 0);
    assert_true(l.cpus == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cgroup_parse_v2),
        cmocka_unit_test(test_cgroup_parse_v1),
        cmocka_unit_test_setup_teardown(test_cgroup_v2_pod_and_ancestors, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_cgroup_v2_namespaced, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_cgroup_v1_docker, make_dir, remove_dir),
        cmocka_unit_test(test_cgroup_this_process),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
