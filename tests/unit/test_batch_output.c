/* batch/xc_batch_output: records in the OpenAI Batch output shape (read back with cJSON), whole
 * appends, and recovery on open: torn last line cut, unreadable lines dropped, failed records
 * dropped for a retry, the answered custom_ids collected. Files are compared byte for byte with
 * what a naive model of the rules expects. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch_input.h"
#include "xc_batch_output.h"
#include "xc_test.h"

static char g_dir[PATH_MAX];

static int group_setup(void **state) {
    char tmpl[] = "/tmp/xc-batch-out-XXXXXX";
    if (!mkdtemp(tmpl)) {
        return -1;
    }
    snprintf(g_dir, sizeof g_dir, "%s", tmpl);
    xc_batch_input_cjson_hooks();
    return xc_test_hooks_setup(state);
}

static int group_teardown(void **state) {
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) {
        return -1;
    }
    return xc_test_hooks_teardown(state);
}

static void path_of(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", g_dir, name);
}

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The whole file (malloc'd). */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_batch_output_records_have_the_openai_shape(void **state) {
    (void)state;
    const char *body = "{\"id\":\"chatcmpl-9\",\"choices\":[{\"message\":{\"content\":\"hi\"}}],"
                       "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}";
    size_t n = 0;
    char *line = xc_batch_output_response("batch_req_1", "c\"1", 200, NULL, body, strlen(body), &n);
    assert_non_null(line);
    assert_int_equal(strlen(line), n);
    assert_int_equal(line[n - 1], '\n');
    assert_null(memchr(line, '\n', n - 1));
    cJSON *o = cJSON_Parse(line);
    assert_string_equal(cJSON_GetObjectItem(o, "id")->valuestring, "batch_req_1");
    assert_string_equal(cJSON_GetObjectItem(o, "custom_id")->valuestring, "c\"1");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "error")));
    cJSON *r = cJSON_GetObjectItem(o, "response");
    assert_int_equal((int)cJSON_GetObjectItem(r, "status_code")->valuedouble, 200);
    assert_string_equal(cJSON_GetObjectItem(r, "request_id")->valuestring, "chatcmpl-9");
    cJSON *b = cJSON_GetObjectItem(r, "body");
    cJSON *want = cJSON_Parse(body);
    assert_true(cJSON_Compare(b, want, true)); /* the body is kept as the server sent it */
    assert_false(xc_batch_output_is_failure(o));
    cJSON_Delete(want);
    cJSON_Delete(o);
    xc_free(line);

    /* a 503 with an explicit request id, a body that is not JSON */
    line = xc_batch_output_response("batch_req_2", "c2", 503, "rq-7", "<html>busy</html>", 17, &n);
    o = cJSON_Parse(line);
    r = cJSON_GetObjectItem(o, "response");
    assert_int_equal((int)cJSON_GetObjectItem(r, "status_code")->valuedouble, 503);
    assert_string_equal(cJSON_GetObjectItem(r, "request_id")->valuestring, "rq-7");
    cJSON *e = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "body"), "error");
    assert_string_equal(cJSON_GetObjectItem(e, "message")->valuestring, "<html>busy</html>");
    assert_true(xc_batch_output_is_failure(o));
    cJSON_Delete(o);
    xc_free(line);

    /* a failure without an HTTP answer */
    line = xc_batch_output_error("batch_req_3", "c3", "image_file", "line 4:\nbad", &n);
    assert_null(memchr(line, '\n', n - 1)); /* the newline in the message is escaped */
    o = cJSON_Parse(line);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "response")));
    e = cJSON_GetObjectItem(o, "error");
    assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring, "image_file");
    assert_string_equal(cJSON_GetObjectItem(e, "message")->valuestring, "line 4:\nbad");
    assert_true(xc_batch_output_is_failure(o));
    cJSON_Delete(o);
    xc_free(line);
}

#define OK_REC(id)                                                                                 \
    "{\"id\":\"b\",\"custom_id\":\"" id "\",\"response\":{\"status_code\":200,\"request_id\":"     \
    "\"r\",\"body\":{}},\"error\":null}\n"
#define FAIL_REC(id)                                                                               \
    "{\"id\":\"b\",\"custom_id\":\"" id "\",\"response\":null,\"error\":{\"code\":\"x\","          \
    "\"message\":\"m\"}}\n"
#define HTTP_FAIL_REC(id)                                                                          \
    "{\"id\":\"b\",\"custom_id\":\"" id "\",\"response\":{\"status_code\":400,\"request_id\":"     \
    "\"r\",\"body\":{}},\"error\":null}\n"

static void test_batch_output_new_file_and_appends(void **state) {
    (void)state;
    char p[PATH_MAX + 16];
    path_of("new.jsonl", p, sizeof p);
    xc_batch_ids *done = NULL;
    assert_int_equal(xc_batch_ids_create(&done), XC_OK);
    xc_batch_output *o = NULL;
    xc_batch_output_recovery rec;
    assert_int_equal(xc_batch_output_open(p, 2, false, done, &o, &rec), XC_OK);
    assert_int_equal(rec.records, 0);
    const char *a = OK_REC("a"), *b = FAIL_REC("b");
    assert_int_equal(xc_batch_output_append(o, a, strlen(a)), XC_OK);
    assert_int_equal(xc_batch_output_append(o, "x\ny\n", 4), XC_ERR_ARG); /* two lines */
    assert_int_equal(xc_batch_output_append(o, "x", 1), XC_ERR_ARG);      /* no newline */
    assert_int_equal(xc_batch_output_append(o, b, strlen(b)), XC_OK);
    assert_int_equal(xc_batch_output_close(o), XC_OK);
    assert_int_equal(xc_batch_output_close(NULL), XC_OK);
    char *got = slurp(p);
    char want[1024];
    snprintf(want, sizeof want, "%s%s", a, b);
    assert_string_equal(got, want);
    free(got);
    /* reopening collects both ids (a failure is an answer unless drop_failed) */
    assert_int_equal(xc_batch_output_open(p, 1, false, done, &o, &rec), XC_OK);
    assert_int_equal(rec.records, 2);
    assert_int_equal(rec.torn_bytes + rec.bad_lines + rec.dropped_failed, 0);
    assert_true(xc_batch_ids_find(done, "a", 1, NULL));
    assert_true(xc_batch_ids_find(done, "b", 1, NULL));
    /* a second writer is refused while the first holds the file */
    xc_batch_output *o2 = NULL;
    assert_int_equal(xc_batch_output_open(p, 1, false, done, &o2, &rec), XC_ERR_IO);
    assert_non_null(strstr(xc_err_last(), "in use by another batch run"));
    assert_null(o2);
    assert_int_equal(xc_batch_output_close(o), XC_OK);
    xc_batch_ids_destroy(done);
}

static void test_batch_output_recovers_torn_and_bad_lines(void **state) {
    (void)state;
    char p[PATH_MAX + 16];
    path_of("torn.jsonl", p, sizeof p);
    /* a good record, garbage, a record without custom_id, a good one, then a torn record */
    const char *torn = "{\"id\":\"b\",\"custom_id\":\"z\",\"respo";
    char text[2048];
    snprintf(text, sizeof text, "%s%s%s%s%s", OK_REC("a"), "\x01garbage\n",
             "{\"id\":\"b\",\"response\":null}\n", OK_REC("c"), torn);
    put(p, text);
    xc_batch_ids *done = NULL;
    assert_int_equal(xc_batch_ids_create(&done), XC_OK);
    xc_batch_output *o = NULL;
    xc_batch_output_recovery rec;
    assert_int_equal(xc_batch_output_open(p, 1, false, done, &o, &rec), XC_OK);
    assert_int_equal(rec.records, 2);
    assert_int_equal(rec.torn_bytes, strlen(torn));
    assert_int_equal(rec.bad_lines, 2);
    assert_int_equal(xc_batch_ids_count(done), 2);
    assert_false(xc_batch_ids_find(done, "z", 1, NULL));
    /* appending after recovery gives whole lines only */
    const char *d = OK_REC("d");
    assert_int_equal(xc_batch_output_append(o, d, strlen(d)), XC_OK);
    assert_int_equal(xc_batch_output_close(o), XC_OK);
    char *got = slurp(p);
    char want[2048];
    snprintf(want, sizeof want, "%s%s%s", OK_REC("a"), OK_REC("c"), OK_REC("d"));
    assert_string_equal(got, want);
    free(got);
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    assert_int_not_equal(access(tmp, F_OK), 0); /* no temporary left behind */
    xc_batch_ids_destroy(done);
}

static void test_batch_output_drop_failed_for_a_retry(void **state) {
    (void)state;
    char p[PATH_MAX + 16];
    path_of("retry.jsonl", p, sizeof p);
    char text[2048];
    snprintf(text, sizeof text, "%s%s%s%s", OK_REC("a"), FAIL_REC("b"), HTTP_FAIL_REC("c"),
             OK_REC("a"));
    put(p, text);
    xc_batch_ids *done = NULL;
    assert_int_equal(xc_batch_ids_create(&done), XC_OK);
    xc_batch_output *o = NULL;
    xc_batch_output_recovery rec;
    assert_int_equal(xc_batch_output_open(p, 0, true, done, &o, &rec), XC_OK);
    assert_int_equal(rec.records, 2);
    assert_int_equal(rec.duplicates, 1);
    assert_int_equal(rec.dropped_failed, 2);
    assert_int_equal(xc_batch_ids_count(done), 1);
    assert_int_equal(xc_batch_output_close(o), XC_OK);
    char *got = slurp(p);
    snprintf(text, sizeof text, "%s%s", OK_REC("a"), OK_REC("a"));
    assert_string_equal(got, text);
    free(got);
    xc_batch_ids_destroy(done);
}

static void test_batch_output_refuses_unwritable_paths(void **state) {
    (void)state;
    xc_batch_ids *done = NULL;
    assert_int_equal(xc_batch_ids_create(&done), XC_OK);
    xc_batch_output *o = NULL;
    xc_batch_output_recovery rec;
    char p[PATH_MAX + 32];
    path_of("no/such/dir.jsonl", p, sizeof p);
    assert_int_equal(xc_batch_output_open(p, 1, false, done, &o, &rec), XC_ERR_IO);
    assert_non_null(strstr(xc_err_last(), "no/such/dir.jsonl"));
    assert_int_equal(xc_batch_output_open(g_dir, 1, false, done, &o, &rec), XC_ERR_IO);
    xc_batch_ids_destroy(done);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_output_records_have_the_openai_shape),
        cmocka_unit_test(test_batch_output_new_file_and_appends),
        cmocka_unit_test(test_batch_output_recovers_torn_and_bad_lines),
        cmocka_unit_test(test_batch_output_drop_failed_for_a_retry),
        cmocka_unit_test(test_batch_output_refuses_unwritable_paths),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
