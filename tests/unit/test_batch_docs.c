/* xc_batch_docs: composition documents on disk (article.md, images from data: URLs,
 * composition.json without the bytes), whole or not at all, replacing a previous one; refusals
 * of responses that would write outside the directory or do not decode. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch_docs.h"
#include "xc_mmap.h"
#include "xc_test.h"

static char g_dir[256];

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/xc-docs-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *slurp(const char *path, size_t *n) {
    char *d = NULL;
    if (xc_file_read_all(path, 1u << 20, &d, n) != XC_OK) {
        return NULL;
    }
    return d;
}

static int entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        return -1;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    }
    closedir(d);
    return n;
}

static void test_write_replace(void **state) {
    (void)state;
    char dir[300], p[400];
    snprintf(dir, sizeof dir, "%s/doc-1", g_dir);
    /* "hi!" and "\x89PNG" as base64; a slot without an image */
    const char *resp = "{\"markdown\":\"Para.\\n<div align=\\\"center\\\"> <img src=temp_0_1.png "
                       "width = 500/> </div>\",\"images\":[{\"name\":\"temp_0_1.png\",\"data\":"
                       "\"data:image/png;base64,iVBORw==\"},{\"name\":null,\"caption\":\"c\"}]}";
    int n = -1;
    assert_int_equal(xc_batch_docs_write(dir, resp, strlen(resp), &n), XC_OK);
    assert_int_equal(n, 1);
    size_t len;
    snprintf(p, sizeof p, "%s/temp_0_1.png", dir);
    char *img = slurp(p, &len);
    assert_non_null(img);
    assert_int_equal(len, 4);
    assert_memory_equal(img, "\x89PNG", 4);
    xc_free(img);
    snprintf(p, sizeof p, "%s/composition.json", dir);
    char *meta = slurp(p, &len);
    assert_non_null(meta);
    assert_null(strstr(meta, "base64")); /* the bytes are in the file, not the JSON */
    xc_free(meta);
    assert_int_equal(entries(dir), 3);
    /* a second write replaces the whole directory */
    const char *resp2 = "{\"markdown\":\"Other.\\n\",\"images\":[]}";
    assert_int_equal(xc_batch_docs_write(dir, resp2, strlen(resp2), &n), XC_OK);
    assert_int_equal(n, 0);
    assert_int_equal(entries(dir), 2);
    snprintf(p, sizeof p, "%s/article.md", dir);
    char *md = slurp(p, &len);
    assert_string_equal(md, "Other.\n");
    xc_free(md);
    assert_int_equal(entries(g_dir), 1); /* no .tmp or .old left */
}

static void test_refusals(void **state) {
    (void)state;
    char dir[300];
    snprintf(dir, sizeof dir, "%s/doc-2", g_dir);
    const char *bad[] = {
        "{\"images\":[]}",                                       /* no markdown */
        "not json",                                              /* not JSON */
        "{\"markdown\":\"x\",\"images\":[{\"name\":\"../evil\"," /* a path, not a name */
        "\"data\":\"data:image/png;base64,AAAA\"}]}",
        "{\"markdown\":\"x\",\"images\":[{\"name\":\".hidden\",\"data\":\"data:,x\"}]}",
        "{\"markdown\":\"x\",\"images\":[{\"name\":\"a.png\",\"data\":\"data:image/png;base64,"
        "@@@@\"}]}",
        "{\"markdown\":\"x\",\"images\":[{\"name\":\"a.png\",\"data\":\"http://x/y.png\"}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(xc_batch_docs_write(dir, bad[i], strlen(bad[i]), NULL), XC_ERR_PROTO);
        struct stat sb;
        assert_int_not_equal(stat(dir, &sb), 0); /* nothing appeared */
    }
    assert_int_equal(entries(g_dir), 1);
    assert_true(xc_batch_docs_name_ok("doc-07"));
    assert_false(xc_batch_docs_name_ok("a/b"));
    assert_false(xc_batch_docs_name_ok(".."));
    assert_false(xc_batch_docs_name_ok(""));
    assert_false(xc_batch_docs_name_ok("x\ny"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_replace),
        cmocka_unit_test(test_refusals),
    };
    if (setup(NULL) != 0) {
        return 1;
    }
    int r = cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
    teardown(NULL);
    return r;
}
