/* batch/xc_batch: the runner against a fake OpenAI-compatible server (libmicrohttpd, a thread per
 * connection) whose answers are scripted by the message text: every request answered exactly
 * once, C requests in flight, retries of 429/503/dropped connections with their limits, failure
 * records, resume from a partial output, a stop that finishes what is in flight, bad lines with
 * line numbers, refused keys and unreachable endpoints, image files as data URLs. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch.h"
#include "xc_batch_input.h"
#include "xc_batch_server.h"
#include "xc_test.h"

/* ---- the fake server ---- */

#define MAX_KEYS 512

static struct {
    struct MHD_Daemon *d;
    int port;
    const char *key; /* required bearer key; NULL = none */
    int delay_us;
    atomic_int in_flight, max_in_flight, received, answered;
    int stop_after; /* set *stop_flag once this many requests arrived (0 = never) */
    volatile sig_atomic_t *stop_flag;
    pthread_mutex_t mu;
    char keys[MAX_KEYS][64]; /* attempts per message text */
    int attempts[MAX_KEYS];
    int n_keys;
} fk = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct upload {
    char *data;
    size_t n;
} upload;

/* Attempt number (1, 2, ...) of this message text. */
static int count_attempt(const char *text) {
    pthread_mutex_lock(&fk.mu);
    int i = 0;
    /* keys are the first (sizeof key - 1) bytes of the text, compared the same way */
    size_t klen = sizeof fk.keys[0] - 1;
    while (i < fk.n_keys && strncmp(fk.keys[i], text, klen)) {
        i++;
    }
    if (i == fk.n_keys && fk.n_keys < MAX_KEYS) {
        size_t n = strnlen(text, klen);
        memcpy(fk.keys[fk.n_keys], text, n);
        fk.keys[fk.n_keys++][n] = '\0';
    }
    int a = i < MAX_KEYS ? ++fk.attempts[i] : 0;
    pthread_mutex_unlock(&fk.mu);
    return a;
}

static int attempts_of(const char *text) {
    pthread_mutex_lock(&fk.mu);
    int a = 0;
    for (int i = 0; i < fk.n_keys; i++) {
        if (!strncmp(fk.keys[i], text, sizeof fk.keys[0] - 1)) {
            a = fk.attempts[i];
        }
    }
    pthread_mutex_unlock(&fk.mu);
    return a;
}

/* The string value after "key":" in a compact JSON body (values here hold no quotes). */
static void field(const char *body, const char *key, char *out, size_t n) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = strstr(body, pat);
    out[0] = 0;
    if (p) {
        p += strlen(pat);
        const char *q = strchr(p, '"');
        snprintf(out, n, "%.*s", (int)(q ? q - p : 0), p);
    }
}

static enum MHD_Result reply(struct MHD_Connection *c, int status, const char *body,
                             const char *retry_after) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (retry_after) {
        MHD_add_response_header(r, "Retry-After", retry_after);
    }
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *data_size, void **con_cls) {
    (void)cls;
    (void)version;
    upload *u = *con_cls;
    if (!u) {
        *con_cls = calloc(1, sizeof(upload));
        return MHD_YES;
    }
    if (*data_size) {
        u->data = realloc(u->data, u->n + *data_size + 1);
        memcpy(u->data + u->n, data, *data_size);
        u->n += *data_size;
        u->data[u->n] = 0;
        *data_size = 0;
        return MHD_YES;
    }
    if (fk.key) {
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        char want[128];
        snprintf(want, sizeof want, "Bearer %s", fk.key);
        if (!auth || strcmp(auth, want)) {
            return reply(c, 401, "{\"error\":{\"message\":\"bad key\"}}", NULL);
        }
    }
    if (!strcmp(method, "GET") && !strcmp(url, "/v1/models")) {
        return reply(c, 200, "{\"object\":\"list\",\"data\":[{\"id\":\"fake-model\"}]}", NULL);
    }
    if (strcmp(method, "POST") || strcmp(url, "/v1/chat/completions") || !u->data) {
        return reply(c, 404, "{\"error\":{\"message\":\"no such route\"}}", NULL);
    }
    int now = atomic_fetch_add(&fk.in_flight, 1) + 1;
    int prev = atomic_load(&fk.max_in_flight);
    while (now > prev && !atomic_compare_exchange_weak(&fk.max_in_flight, &prev, now)) {
    }
    int n = atomic_fetch_add(&fk.received, 1) + 1;
    if (fk.stop_after && n == fk.stop_after) {
        *fk.stop_flag = 1;
    }
    char text[600], model[64], out[1200];
    field(u->data, "text", text, sizeof text);
    if (!text[0]) {
        field(u->data, "content", text, sizeof text);
    }
    field(u->data, "model", model, sizeof model);
    int attempt = count_attempt(text);
    usleep((useconds_t)fk.delay_us);
    enum MHD_Result ret;
    if (!strncmp(text, "flaky429:", 9) && attempt <= 2) {
        ret = reply(c, 429, "{\"error\":{\"message\":\"queue full\"}}", "0");
    } else if (!strncmp(text, "busy:", 5)) {
        ret = reply(c, 503, "{\"error\":{\"message\":\"not ready\"}}", NULL);
    } else if (!strncmp(text, "bad:", 4)) {
        ret = reply(c, 400, "{\"error\":{\"message\":\"bad request\"}}", NULL);
    } else if (!strncmp(text, "garbage:", 8)) {
        ret = reply(c, 200, "<html>oops</html>", NULL);
    } else if (!strncmp(text, "drop:", 5) && attempt == 1) {
        ret = MHD_NO; /* close the connection without an answer */
    } else {
        /* echo: the text (an image URL: its first 30 bytes) and a token count of its length */
        const char *img = strstr(u->data, "\"url\":\"");
        char shown[64];
        snprintf(shown, sizeof shown, "%.30s", img ? img + 7 : text);
        snprintf(out, sizeof out,
                 "{\"id\":\"chatcmpl-%d\",\"object\":\"chat.completion\",\"model\":\"%s\","
                 "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
                 "\"echo:%s\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":%zu,"
                 "\"completion_tokens\":2,\"total_tokens\":%zu}}",
                 n, model, shown, strlen(text), strlen(text) + 2);
        ret = reply(c, 200, out, NULL);
        atomic_fetch_add(&fk.answered, 1);
    }
    atomic_fetch_sub(&fk.in_flight, 1);
    return ret;
}

static void done_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    (void)toe;
    upload *u = *con_cls;
    if (u) {
        free(u->data);
        free(u);
        *con_cls = NULL;
    }
}

static void fake_reset(const char *key, int delay_us) {
    fk.key = key;
    fk.delay_us = delay_us;
    fk.in_flight = fk.max_in_flight = fk.received = fk.answered = 0;
    fk.stop_after = 0;
    fk.n_keys = 0;
    memset(fk.attempts, 0, sizeof fk.attempts);
}

/* ---- helpers ---- */

static char g_dir[PATH_MAX];
static char g_in[PATH_MAX + 32], g_out[PATH_MAX + 32], g_err[PATH_MAX + 32], g_url[64];

static int group_setup(void **state) {
    char tmpl[] = "/tmp/xc-batch-XXXXXX";
    if (!mkdtemp(tmpl)) {
        return -1;
    }
    snprintf(g_dir, sizeof g_dir, "%s", tmpl);
    snprintf(g_in, sizeof g_in, "%s/in.jsonl", g_dir);
    snprintf(g_out, sizeof g_out, "%s/out.jsonl", g_dir);
    snprintf(g_err, sizeof g_err, "%s/err.jsonl", g_dir);
    static struct sockaddr_in lo;
    lo.sin_family = AF_INET;
    lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fk.d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0,
                            NULL, NULL, handle, NULL, MHD_OPTION_NOTIFY_COMPLETED, done_cb, NULL,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&lo, MHD_OPTION_END);
    if (!fk.d) {
        return -1;
    }
    fk.port = MHD_get_daemon_info(fk.d, MHD_DAEMON_INFO_BIND_PORT)->port;
    snprintf(g_url, sizeof g_url, "http://127.0.0.1:%d/v1", fk.port);
    xc_batch_input_cjson_hooks();
    return xc_test_hooks_setup(state);
}

static int group_teardown(void **state) {
    MHD_stop_daemon(fk.d);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) {
        return -1;
    }
    return xc_test_hooks_teardown(state);
}

static int reset_files(void **state) {
    (void)state;
    unlink(g_in);
    unlink(g_out);
    unlink(g_err);
    return 0;
}

static void request_line(FILE *f, const char *id, const char *text, bool model) {
    fprintf(f,
            "{\"custom_id\":\"%s\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
            "\"body\":{%s\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],"
            "\"max_tokens\":4}}\n",
            id, model ? "\"model\":\"mine\"," : "", text);
}

/* n requests "ok:<i>" with ids "r<i>". */
static void write_ok_input(int n) {
    FILE *f = fopen(g_in, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++) {
        char id[16], text[32];
        snprintf(id, sizeof id, "r%d", i);
        snprintf(text, sizeof text, "ok:%d", i);
        request_line(f, id, text, i % 2 == 0);
    }
    fclose(f);
}

static xc_batch_conf base_conf(FILE *log) {
    xc_batch_conf c;
    xc_batch_conf_defaults(&c);
    c.input = g_in;
    c.output = g_out;
    c.endpoint = g_url;
    c.concurrency = 4;
    c.retry_base_s = 0.01;
    c.retry_max_s = 0.05;
    c.timeout_s = 20;
    c.progress = XC_BATCH_PROGRESS_LINES;
    c.progress_interval_s = 0.05;
    c.log = log;
    return c;
}

/* Every record of a file: counts per custom_id (ids "r0".."r<n-1>"), checks each parses and
 * that a 200 echoes its request's text. Returns the number of records. */
static int read_records(const char *path, int n, int *per_id, int *n_ok) {
    FILE *f = fopen(path, "r");
    if (!f) {
        return 0;
    }
    char line[8192];
    int recs = 0;
    while (fgets(line, sizeof line, f)) {
        assert_int_equal(line[strlen(line) - 1], '\n');
        cJSON *o = cJSON_Parse(line);
        assert_non_null(o);
        const char *id = cJSON_GetObjectItem(o, "custom_id")->valuestring;
        assert_true(id[0] == 'r');
        int i = atoi(id + 1);
        assert_true(i >= 0 && i < n);
        per_id[i]++;
        cJSON *r = cJSON_GetObjectItem(o, "response");
        cJSON *sc = cJSON_GetObjectItem(r, "status_code");
        if (sc && sc->valuedouble == 200) {
            cJSON *msg = cJSON_GetObjectItem(
                cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "body"), "choices"),
                                   0),
                "message");
            const char *content = cJSON_GetObjectItem(msg, "content")->valuestring;
            assert_true(!strncmp(content, "echo:", 5));
            if (!strncmp(content, "echo:ok:", 8)) {
                assert_int_equal(atoi(content + 8), i); /* the answer is this request's */
            }
            (*n_ok)++;
        }
        cJSON_Delete(o);
        recs++;
    }
    fclose(f);
    return recs;
}

static bool log_has(FILE *log, const char *what) {
    fflush(log);
    rewind(log);
    char line[2048];
    bool found = false;
    while (fgets(line, sizeof line, log)) {
        found = found || strstr(line, what);
    }
    fseek(log, 0, SEEK_END);
    return found;
}

/* ---- tests ---- */

static void test_batch_runs_every_request_once_with_c_in_flight(void **state) {
    (void)state;

    enum { N = 40 };

    fake_reset(NULL, 20000);
    write_ok_input(N);
    FILE *log = tmpfile();
    xc_batch_conf c = base_conf(log);
    xc_batch_summary s;
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    int per_id[N] = {0}, ok = 0;
    assert_int_equal(read_records(g_out, N, per_id, &ok), N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(per_id[i], 1);
    }
    assert_int_equal(ok, N);
    assert_int_equal(s.ok, N);
    assert_int_equal(s.to_run, N);
    assert_int_equal(s.failed + s.left + s.retries + s.invalid, 0);
    assert_int_equal(atomic_load(&fk.received), N);
    /* the concurrency limit is reached and never passed */
    assert_int_equal(atomic_load(&fk.max_in_flight), 4);
    /* usage is summed: prompt tokens = the text lengths ("ok:<i>") */
    unsigned long long want = 0;
    for (int i = 0; i < N; i++) {
        char t[32];
        want += (unsigned long long)snprintf(t, sizeof t, "ok:%d", i);
    }
    assert_int_equal(s.prompt_tokens, want);
    assert_int_equal(s.completion_tokens, 2 * N);
    /* bodies without a model got the server's; the others kept theirs */
    FILE *f = fopen(g_out, "r");
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        int i = atoi(cJSON_GetObjectItem(o, "custom_id")->valuestring + 1);
        cJSON *b = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "response"), "body");
        assert_string_equal(cJSON_GetObjectItem(b, "model")->valuestring,
                            i % 2 == 0 ? "mine" : "fake-model");
        cJSON_Delete(o);
    }
    fclose(f);
    assert_true(log_has(log, "batch: 40/40 done (40 ok, 0 failed"));
    fclose(log);
}

static void test_batch_retries_with_limits_and_records_failures(void **state) {
    (void)state;
    fake_reset(NULL, 1000);
    FILE *f = fopen(g_in, "w");
    request_line(f, "r0", "flaky429:a", true);
    request_line(f, "r1", "busy:b", true);
    request_line(f, "r2", "bad:c", true);
    request_line(f, "r3", "drop:d", true);
    request_line(f, "r4", "ok:4", true);
    request_line(f, "r5", "garbage:e", true);
    fclose(f);
    FILE *log = tmpfile();
    xc_batch_conf c = base_conf(log);
    c.errors = g_err;
    c.max_retries = 2;
    xc_batch_summary s;
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_int_equal(attempts_of("flaky429:a"), 3); /* 429, 429, 200 */
    assert_int_equal(attempts_of("busy:b"), 3);     /* 1 + max_retries, then recorded */
    assert_int_equal(attempts_of("bad:c"), 1);      /* 400 is not retried */
    assert_int_equal(attempts_of("drop:d"), 2);     /* a dropped connection is */
    assert_int_equal(s.retries, 2 + 2 + 1);
    assert_int_equal(s.ok, 3);
    assert_int_equal(s.failed, 3);
    int per_id[6] = {0}, ok = 0;
    assert_int_equal(read_records(g_out, 6, per_id, &ok), 3);
    assert_int_equal(ok, 3);
    assert_int_equal(read_records(g_err, 6, per_id, &ok), 3);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(per_id[i], 1);
    }
    /* the failures keep the server's status and body */
    f = fopen(g_err, "r");
    char line[4096];
    int seen = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        const char *id = cJSON_GetObjectItem(o, "custom_id")->valuestring;
        if (!strcmp(id, "r5")) { /* a 200 that is not JSON: not an answer */
            cJSON *e = cJSON_GetObjectItem(o, "error");
            assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring, "invalid_response");
            assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "response")));
            seen |= 4;
        } else {
            int code = (int)cJSON_GetObjectItem(cJSON_GetObjectItem(o, "response"), "status_code")
                           ->valuedouble;
            assert_int_equal(code, !strcmp(id, "r1") ? 503 : 400);
            seen |= !strcmp(id, "r1") ? 1 : 2;
        }
        cJSON_Delete(o);
    }
    fclose(f);
    assert_int_equal(seen, 7);
    /* --retry-errors sends the three failures again and only them */
    fake_reset(NULL, 1000);
    c.retry_errors = true;
    c.max_retries = 0;
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_int_equal(s.to_run, 3);
    assert_int_equal(s.skipped, 3);
    assert_int_equal(atomic_load(&fk.received), 3);
    memset(per_id, 0, sizeof per_id);
    read_records(g_out, 6, per_id, &ok);
    read_records(g_err, 6, per_id, &ok);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(per_id[i], 1);
    }
    assert_true(log_has(log, "removed 3 failed record(s)"));
    fclose(log);
}

static void test_batch_resumes_from_a_partial_output(void **state) {
    (void)state;

    enum { N = 30 };

    fake_reset(NULL, 1000);
    write_ok_input(N);
    /* records of r0..r9 from an earlier run, then a torn record of r10 */
    FILE *f = fopen(g_out, "w");
    for (int i = 0; i < 10; i++) {
        fprintf(f,
                "{\"id\":\"b%d\",\"custom_id\":\"r%d\",\"response\":{\"status_code\":200,"
                "\"request_id\":\"x\",\"body\":{\"choices\":[{\"message\":{\"content\":"
                "\"echo:ok:%d\"}}]}},\"error\":null}\n",
                i, i, i);
    }
    fprintf(f, "{\"id\":\"b10\",\"custom_id\":\"r10\",\"resp");
    fclose(f);
    FILE *log = tmpfile();
    xc_batch_conf c = base_conf(log);
    c.fsync_every = 5;
    xc_batch_summary s;
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_int_equal(s.skipped, 10);
    assert_int_equal(s.to_run, N - 10);
    assert_int_equal(s.rec_out.torn_bytes, strlen("{\"id\":\"b10\",\"custom_id\":\"r10\",\"resp"));
    assert_int_equal(atomic_load(&fk.received), N - 10);
    int per_id[N] = {0}, ok = 0;
    assert_int_equal(read_records(g_out, N, per_id, &ok), N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(per_id[i], 1);
    }
    /* a second rerun has nothing left to send */
    fake_reset(NULL, 1000);
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_int_equal(s.to_run, 0);
    assert_int_equal(s.skipped, N);
    assert_int_equal(atomic_load(&fk.received), 0);
    assert_true(log_has(log, "cut off a torn last line"));
    fclose(log);
}

static void test_batch_stop_finishes_in_flight_and_resumes(void **state) {
    (void)state;

    enum { N = 60 };

    static volatile sig_atomic_t stop, abort_now;
    stop = abort_now = 0;
    fake_reset(NULL, 30000);
    fk.stop_after = 10;
    fk.stop_flag = &stop;
    write_ok_input(N);
    FILE *log = tmpfile();
    xc_batch_conf c = base_conf(log);
    c.stop = &stop;
    c.abort_now = &abort_now;
    xc_batch_summary s;
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_true(s.interrupted);
    /* everything that reached the server was answered and recorded, nothing more was sent */
    int received = atomic_load(&fk.received);
    assert_true(received >= 10 && received <= 10 + 4);
    int per_id[N] = {0}, ok = 0;
    assert_int_equal(read_records(g_out, N, per_id, &ok), received);
    assert_int_equal(s.ok, received);
    assert_int_equal(s.left, N - received);
    assert_true(log_has(log, "stopping: no new requests"));
    /* the rerun sends exactly the rest */
    stop = 0;
    fake_reset(NULL, 1000);
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_false(s.interrupted);
    assert_int_equal(atomic_load(&fk.received), N - received);
    memset(per_id, 0, sizeof per_id);
    ok = 0;
    assert_int_equal(read_records(g_out, N, per_id, &ok), N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(per_id[i], 1);
    }
    fclose(log);
}

static void test_batch_reports_bad_lines_and_runs_the_rest(void **state) {
    (void)state;
    fake_reset(NULL, 1000);
    FILE *f = fopen(g_in, "w");
    request_line(f, "r0", "ok:0", true);            /* line 1 */
    fprintf(f, "{\"custom_id\": \"r1\", broken\n"); /* line 2 */
    fprintf(f, "\n");                               /* blank */
    fprintf(f, "{\"custom_id\":\"r2\",\"method\":\"POST\",\"url\":\"/v1/embeddings\","
               "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}}\n"); /* 4 */
    request_line(f, "r0", "ok:0-again", true);                                        /* line 5 */
    fprintf(f, "{\"custom_id\":\"r3\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
               "\"body\":{\"messages\":\"hi\"}}\n"); /* line 6 */
    request_line(f, "r4", "ok:4", false);            /* line 7 */
    fclose(f);
    FILE *log = tmpfile();
    xc_batch_conf c = base_conf(log);
    c.errors = g_err;
    xc_batch_summary s;
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_int_equal(s.lines, 6);
    assert_int_equal(s.invalid, 3);
    assert_int_equal(s.duplicates, 1);
    assert_int_equal(s.ok, 2);
    assert_true(log_has(log, "input line 2: not valid JSON"));
    assert_true(log_has(log, "input line 4: url must be \"/v1/chat/completions\""));
    assert_true(log_has(log, "input line 5: duplicate custom_id 'r0' (first on line 1)"));
    assert_true(log_has(log, "input line 6: body.messages must be a non-empty array"));
    assert_int_equal(attempts_of("ok:0-again"), 0); /* the duplicate never ran */
    int per_id[5] = {0}, ok = 0;
    assert_int_equal(read_records(g_out, 5, per_id, &ok), 2);
    assert_int_equal(ok, 2);
    /* invalid lines with a custom_id get an error record naming the line */
    assert_int_equal(read_records(g_err, 5, per_id, &ok), 2);
    assert_int_equal(per_id[0] + per_id[2] + per_id[3] + per_id[4], 4);
    assert_int_equal(per_id[1], 0);
    f = fopen(g_err, "r");
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        cJSON *e = cJSON_GetObjectItem(o, "error");
        const char *id = cJSON_GetObjectItem(o, "custom_id")->valuestring;
        assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring,
                            !strcmp(id, "r2") ? "invalid_url" : "invalid_body");
        assert_non_null(strstr(cJSON_GetObjectItem(e, "message")->valuestring,
                               !strcmp(id, "r2") ? "input line 4:" : "input line 6:"));
        cJSON_Delete(o);
    }
    fclose(f);
    fclose(log);
}

static void test_batch_stops_on_refused_key_and_unreachable_endpoint(void **state) {
    (void)state;
    fake_reset("sekrit", 1000);
    write_ok_input(5);
    FILE *log = tmpfile();
    xc_batch_conf c = base_conf(log);
    c.api_key = "wrong";
    xc_batch_summary s;
    assert_int_equal(xc_batch_run(&c, &s), XC_ERR_IO);
    assert_non_null(strstr(s.fatal, "401"));
    assert_int_equal(s.ok + s.failed, 0);
    assert_int_equal(s.left, 5);
    struct stat sb;
    assert_int_equal(stat(g_out, &sb), 0);
    assert_int_equal(sb.st_size, 0); /* nothing recorded: a rerun sends everything */
    /* the right key works */
    c.api_key = "sekrit";
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_int_equal(s.ok, 5);
    /* nothing listens: retried, then stopped without records */
    unlink(g_out);
    c.endpoint = "http://127.0.0.1:1";
    c.max_retries = 2;
    assert_int_equal(xc_batch_run(&c, &s), XC_ERR_IO);
    assert_non_null(strstr(s.fatal, "127.0.0.1:1"));
    assert_int_equal(s.ok + s.failed, 0);
    assert_int_equal(stat(g_out, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    /* bad configuration */
    c.endpoint = "ftp://x";
    assert_int_equal(xc_batch_run(&c, &s), XC_ERR_ARG);
    c.endpoint = g_url;
    c.errors = g_out;
    assert_int_equal(xc_batch_run(&c, &s), XC_ERR_ARG);
    c.errors = NULL;
    c.input = "/nonexistent/in.jsonl";
    assert_int_equal(xc_batch_run(&c, &s), XC_ERR_IO);
    fclose(log);
}

static void test_batch_sends_image_files_as_data_urls(void **state) {
    (void)state;
    fake_reset(NULL, 1000);
    char img[PATH_MAX + 32];
    snprintf(img, sizeof img, "%s/cat.jpg", g_dir);
    FILE *f = fopen(img, "wb");
    fwrite("\xff\xd8\xff\xe0 jpeg bytes", 1, 15, f);
    fclose(f);
    f = fopen(g_in, "w");
    fprintf(f,
            "{\"custom_id\":\"r0\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
            "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
            "\"image_url\":{\"url\":\"cat.jpg\"}},{\"type\":\"text\",\"text\":\"img:0\"}]}]}}\n");
    fprintf(f, "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
               "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
               "\"image_url\":{\"url\":\"../outside.jpg\"}}]}]}}\n");
    fclose(f);
    FILE *log = tmpfile();
    xc_batch_conf c = base_conf(log);
    xc_batch_summary s;
    assert_int_equal(xc_batch_run(&c, &s), XC_OK);
    assert_int_equal(s.ok, 1);
    assert_int_equal(s.invalid, 1);
    f = fopen(g_out, "r");
    char line[4096];
    bool saw_url = false;
    while (fgets(line, sizeof line, f)) {
        /* the server saw the data URL (its first 30 bytes are echoed) */
        saw_url = saw_url || strstr(line, "echo:data:image/jpeg;base64,/9j/");
    }
    fclose(f);
    assert_true(saw_url);
    assert_true(log_has(log, "input line 2: image file '../outside.jpg'"));
    fclose(log);
}

/* The local cluster's set-up: this program's own path, the caller's configuration, the hooks
 * xc_batch_conf wants, and nothing started before the first use. */
static void test_batch_server_lazy_init_hooks_this_program(void **state) {
    (void)state;
    char want[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", want, sizeof want - 1);
    assert_true(n > 0);
    want[n] = 0;
    const char *extra[] = {"--threads", "1"};
    volatile sig_atomic_t stop = 0;
    xc_batch_server_conf sc = {.exe = "/not/this",
                               .model = "models/x",
                               .stages = 3,
                               .extra = extra,
                               .n_extra = 2,
                               .log_path = "/tmp/x.log",
                               .ready_timeout_s = 7,
                               .abort = &stop};
    xc_batch_conf c;
    xc_batch_conf_defaults(&c);
    xc_batch_server_lazy l;
    assert_int_equal(xc_batch_server_lazy_init(&l, "xcpipe test", &sc, &c.start, &c.start_ud,
                                               &c.alive, &c.alive_ud),
                     XC_OK);
    assert_string_equal(l.exe, want);
    assert_ptr_equal(l.sc.exe, l.exe);
    assert_string_equal(l.sc.model, "models/x");
    assert_int_equal(l.sc.stages, 3);
    assert_ptr_equal(l.sc.extra, extra);
    assert_int_equal(l.sc.n_extra, 2);
    assert_string_equal(l.sc.log_path, "/tmp/x.log");
    assert_true(l.sc.ready_timeout_s == 7);
    assert_ptr_equal(l.sc.abort, &stop);
    assert_string_equal(l.who, "xcpipe test");
    assert_null(l.srv);
    assert_ptr_equal(c.start, xc_batch_server_lazy_start);
    assert_ptr_equal(c.start_ud, &l);
    assert_ptr_equal(c.alive, xc_batch_server_lazy_alive);
    assert_ptr_equal(c.alive_ud, &l);
    assert_true(c.alive(c.alive_ud)); /* not started yet: nothing has gone */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_batch_runs_every_request_once_with_c_in_flight, reset_files),
        cmocka_unit_test_setup(test_batch_retries_with_limits_and_records_failures, reset_files),
        cmocka_unit_test_setup(test_batch_resumes_from_a_partial_output, reset_files),
        cmocka_unit_test_setup(test_batch_stop_finishes_in_flight_and_resumes, reset_files),
        cmocka_unit_test_setup(test_batch_reports_bad_lines_and_runs_the_rest, reset_files),
        cmocka_unit_test_setup(test_batch_stops_on_refused_key_and_unreachable_endpoint,
                               reset_files),
        cmocka_unit_test_setup(test_batch_sends_image_files_as_data_urls, reset_files),
        cmocka_unit_test(test_batch_server_lazy_init_hooks_this_program),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
