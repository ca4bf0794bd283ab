/* batch/xc_batch_input: the up-front checks of an OpenAI Batch line (every refusal code), image
 * paths confined to the input directory, data URLs (RFC 4648 vectors and a naive decoder), model
 * filling; and batch/xc_batch_ids against a linear list. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch_ids.h"
#include "xc_batch_input.h"
#include "xc_test.h"

static char g_dir[PATH_MAX + 8]; /* canonical temporary input directory */
static char g_outer[PATH_MAX];   /* its parent (outside the input directory) */

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static int group_setup(void **state) {
    char tmpl[] = "/tmp/xc-batch-in-XXXXXX";
    if (!mkdtemp(tmpl) || !realpath(tmpl, g_outer)) {
        return -1;
    }
    snprintf(g_dir, sizeof g_dir, "%s/in", g_outer);
    if (mkdir(g_dir, 0700) != 0) {
        return -1;
    }
    return xc_test_hooks_setup(state);
}

static int group_teardown(void **state) {
    char cmd[2 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_outer);
    if (system(cmd) != 0) {
        return -1;
    }
    return xc_test_hooks_teardown(state);
}

static xc_batch_input_conf conf(void) {
    return (xc_batch_input_conf){g_dir, 1000, NULL, NULL};
}

/* Checks a line; returns the status and leaves the error code in *code. */
static xc_status check(const char *line, const char **code, char *id, size_t id_n) {
    xc_batch_input_conf c = conf();
    xc_batch_input_line l;
    xc_batch_input_error e;
    xc_status st = xc_batch_input_check(&c, line, strlen(line), &l, &e);
    *code = st == XC_OK ? "" : e.code;
    if (id) {
        snprintf(id, id_n, "%s", l.custom_id ? l.custom_id : "(none)");
    }
    if (st != XC_OK) {
        assert_true(strlen(e.message) > 10); /* a message that says something */
    }
    xc_batch_input_line_fini(&l);
    return st;
}

#define LINE(id, method, url, body)                                                                \
    "{\"custom_id\":" id ",\"method\":" method ",\"url\":" url ",\"body\":" body "}"
#define OKBODY "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}"

static void test_batch_input_accepts_a_valid_line(void **state) {
    (void)state;
    xc_batch_input_conf c = conf();
    const char *s = LINE("\"r-1\"", "\"POST\"", "\"/v1/chat/completions\"", OKBODY) "  \r";
    xc_batch_input_line l;
    xc_batch_input_error e;
    assert_int_equal(xc_batch_input_check(&c, s, strlen(s), &l, &e), XC_OK);
    assert_string_equal(l.custom_id, "r-1");
    assert_int_equal(l.id_len, 3);
    assert_false(l.has_model);
    assert_int_equal(l.n_files, 0);
    xc_batch_input_line_fini(&l);
    xc_batch_input_line_fini(NULL);
}

static void test_batch_input_refuses_each_bad_line_with_its_code(void **state) {
    (void)state;

    static const struct {
        const char *line, *code;
        bool has_id;
    } cases[] = {
        {"not json", "invalid_json", false},
        {"{\"custom_id\":\"a\",", "invalid_json", false},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"", OKBODY) " x", "invalid_json", false},
        {"[1,2]", "invalid_json", false},
        {LINE("\"\"", "\"POST\"", "\"/v1/chat/completions\"", OKBODY), "invalid_custom_id", false},
        {LINE("7", "\"POST\"", "\"/v1/chat/completions\"", OKBODY), "invalid_custom_id", false},
        {LINE("\"a\"", "\"GET\"", "\"/v1/chat/completions\"", OKBODY), "invalid_method", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/embeddings\"", OKBODY), "invalid_url", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"", "[]"), "invalid_body", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"", "{\"messages\":[]}"), "invalid_body",
         true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"", "{\"messages\":[{\"content\":1}]}"),
         "invalid_body", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"",
              "{\"messages\":[{\"role\":\"user\",\"content\":5}]}"),
         "invalid_body", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"",
              "{\"model\":3,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}"),
         "invalid_body", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"",
              "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}"),
         "invalid_body", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"",
              "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
              "\"image_url\":{\"url\":\"ftp://x/y.png\"}}]}]}"),
         "invalid_body", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"",
              "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
              "\"image_url\":{}}]}]}"),
         "invalid_body", true},
        {LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"",
              "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
              "\"image_url\":{\"url\":\"missing.png\"}}]}]}"),
         "image_file", true},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *code;
        char id[16];
        assert_int_equal(check(cases[i].line, &code, id, sizeof id), XC_ERR_ARG);
        if (strcmp(code, cases[i].code)) {
            fail_msg("case %zu: code %s, expected %s", i, code, cases[i].code);
        }
        assert_string_equal(id, cases[i].has_id ? "a" : "(none)");
    }
    /* a custom_id over the limit */
    char *big = malloc(XC_BATCH_MAX_CUSTOM_ID + 200);
    assert_non_null(big);
    char *p = big + sprintf(big, "{\"custom_id\":\"");
    memset(p, 'x', XC_BATCH_MAX_CUSTOM_ID + 1);
    strcpy(p + XC_BATCH_MAX_CUSTOM_ID + 1, "\",\"method\":\"POST\"}");
    const char *code;
    assert_int_equal(check(big, &code, NULL, 0), XC_ERR_ARG);
    assert_string_equal(code, "invalid_custom_id");
    free(big);
}

/* ---- images ---- */

static const unsigned char png_head[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static void make_png(const char *path, size_t n, unsigned seed) {
    unsigned char buf[4096];
    assert_true(n <= sizeof buf && n >= sizeof png_head);
    memcpy(buf, png_head, sizeof png_head);
    for (size_t i = sizeof png_head; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (unsigned char)(seed >> 16);
    }
    write_file(path, buf, n);
}

static char *image_line(const char *id, const char *url) {
    char *s = malloc(strlen(url) + 400);
    sprintf(s,
            "{\"custom_id\":\"%s\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
            "\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
            "{\"type\":\"text\",\"text\":\"describe\"},{\"type\":\"image_url\","
            "\"image_url\":{\"url\":\"%s\"}}]}]}}",
            id, url);
    return s;
}

/* A naive base64 decoder (bit by bit), independent of the encoder under test. */
static size_t naive_b64_decode(const char *s, unsigned char *out) {
    const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = 0;
    unsigned bits = 0, nbits = 0;
    for (; *s && *s != '='; s++) {
        const char *q = strchr(tab, *s);
        assert_non_null(q);
        for (int b = 5; b >= 0; b--) {
            bits = (bits << 1) | ((unsigned)(q - tab) >> b & 1u);
            if (++nbits == 8) {
                out[n++] = (unsigned char)bits;
                bits = nbits = 0;
            }
        }
    }
    return n;
}

static void test_batch_input_base64_matches_rfc4648(void **state) {
    (void)state;
    static const char *const vec[][2] = {{"", ""},
                                         {"f", "Zg=="},
                                         {"fo", "Zm8="},
                                         {"foo", "Zm9v"},
                                         {"foob", "Zm9vYg=="},
                                         {"fooba", "Zm9vYmE="},
                                         {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        char *s = xc_batch_input_base64("p:", (const unsigned char *)vec[i][0], strlen(vec[i][0]));
        assert_non_null(s);
        assert_string_equal(s + 2, vec[i][1]);
        assert_memory_equal(s, "p:", 2);
        xc_free(s);
    }
}

static void test_batch_input_image_files_become_data_urls(void **state) {
    (void)state;
    char path[2 * PATH_MAX], sub[2 * PATH_MAX];
    snprintf(sub, sizeof sub, "%s/img", g_dir);
    mkdir(sub, 0700);
    snprintf(path, sizeof path, "%s/img/a.png", g_dir);
    make_png(path, 777, 5);
    xc_batch_input_conf c = conf();
    const char *urls[] = {"img/a.png", "file://img/a.png", "./img/../img/a.png", NULL};
    char abs_url[2 * PATH_MAX];
    snprintf(abs_url, sizeof abs_url, "file://%s/img/a.png", g_dir);
    urls[3] = abs_url;
    for (int u = 0; u < 4; u++) {
        char *line = image_line("i1", urls[u]);
        xc_batch_input_line l;
        xc_batch_input_error e;
        assert_int_equal(xc_batch_input_check(&c, line, strlen(line), &l, &e), XC_OK);
        assert_int_equal(l.n_files, 1);
        assert_true(l.has_model);
        xc_batch_input_line_fini(&l);
        char *body = NULL;
        size_t n = 0;
        assert_int_equal(xc_batch_input_body(&c, line, strlen(line), &body, &n, &e), XC_OK);
        assert_int_equal(strlen(body), n);
        /* read back the body with cJSON, decode the URL naively, compare with the file */
        cJSON *o = cJSON_Parse(body);
        assert_non_null(o);
        cJSON *part = cJSON_GetArrayItem(
            cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "messages"), 0),
                                "content"),
            1);
        const char *url =
            cJSON_GetObjectItem(cJSON_GetObjectItem(part, "image_url"), "url")->valuestring;
        const char *pre = "data:image/png;base64,";
        assert_memory_equal(url, pre, strlen(pre));
        unsigned char dec[1000], want[1000];
        assert_int_equal(naive_b64_decode(url + strlen(pre), dec), 777);
        FILE *f = fopen(path, "rb");
        assert_int_equal(fread(want, 1, sizeof want, f), 777);
        fclose(f);
        assert_memory_equal(dec, want, 777);
        assert_string_equal(cJSON_GetObjectItem(o, "model")->valuestring, "m");
        cJSON_Delete(o);
        xc_free(body);
        free(line);
    }
}

static void test_batch_input_refuses_paths_outside_and_bad_files(void **state) {
    (void)state;
    char p[2 * PATH_MAX], q[2 * PATH_MAX];
    snprintf(p, sizeof p, "%s/secret.png", g_outer); /* exists, but outside */
    make_png(p, 100, 1);
    snprintf(q, sizeof q, "%s/link.png", g_dir); /* a symlink inside pointing outside */
    unlink(q);
    assert_int_equal(symlink(p, q), 0);
    snprintf(q, sizeof q, "%s/big.png", g_dir);
    make_png(q, 1001, 2); /* over the 1000-byte limit of conf() */
    snprintf(q, sizeof q, "%s/text.png", g_dir);
    write_file(q, "hello, not an image", 19);
    snprintf(q, sizeof q, "%s/dir.png", g_dir);
    mkdir(q, 0700);
    char abs_out[2 * PATH_MAX];
    snprintf(abs_out, sizeof abs_out, "%s/secret.png", g_outer);
    const char *bad[] = {"../secret.png", "link.png", abs_out, "big.png", "dir.png", "nope.png"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *line = image_line("x", bad[i]);
        const char *code;
        assert_int_equal(check(line, &code, NULL, 0), XC_ERR_ARG);
        assert_string_equal(code, "image_file");
        free(line);
    }
    /* not an image: passes the check (it only stats), refused when the body is built */
    char *line = image_line("x", "text.png");
    const char *code;
    assert_int_equal(check(line, &code, NULL, 0), XC_OK);
    xc_batch_input_conf c = conf();
    xc_batch_input_error e;
    char *body = NULL;
    size_t n;
    assert_int_equal(xc_batch_input_body(&c, line, strlen(line), &body, &n, &e), XC_ERR_ARG);
    assert_string_equal(e.code, "image_file");
    assert_non_null(strstr(e.message, "not a PNG, JPEG or WebP"));
    assert_null(body);
    free(line);
    /* data: and http(s): URLs pass through untouched */
    line = image_line("x", "data:image/png;base64,AAAA");
    assert_int_equal(xc_batch_input_body(&c, line, strlen(line), &body, &n, &e), XC_OK);
    assert_non_null(strstr(body, "\"data:image/png;base64,AAAA\""));
    xc_free(body);
    free(line);
}

static void test_batch_input_model_is_filled_or_replaced(void **state) {
    (void)state;
    const char *no_model = LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"", OKBODY);
    const char *with = LINE("\"a\"", "\"POST\"", "\"/v1/chat/completions\"",
                            "{\"model\":\"mine\",\"messages\":[{\"role\":\"user\",\"content\":"
                            "\"hi\"}],\"seed\":12345}");

    static const struct {
        const char *set, *def;
        int line;
        const char *want; /* NULL = no model */
    } cases[] = {{NULL, NULL, 0, NULL},
                 {NULL, "srv", 0, "srv"},
                 {"forced", "srv", 0, "forced"},
                 {NULL, "srv", 1, "mine"},
                 {"forced", NULL, 1, "forced"}};

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        xc_batch_input_conf c = {g_dir, 1000, cases[i].set, cases[i].def};
        const char *line = cases[i].line ? with : no_model;
        char *body = NULL;
        size_t n;
        xc_batch_input_error e;
        assert_int_equal(xc_batch_input_body(&c, line, strlen(line), &body, &n, &e), XC_OK);
        cJSON *o = cJSON_Parse(body);
        cJSON *m = cJSON_GetObjectItem(o, "model");
        if (cases[i].want) {
            assert_true(cJSON_IsString(m));
            assert_string_equal(m->valuestring, cases[i].want);
        } else {
            assert_null(m);
        }
        if (cases[i].line) {
            assert_int_equal((int)cJSON_GetObjectItem(o, "seed")->valuedouble, 12345);
        }
        cJSON_Delete(o);
        xc_free(body);
    }
}

/* ---- the id set ---- */

static void test_batch_ids_matches_a_linear_list(void **state) {
    (void)state;

    enum { N = 3000 };

    char(*keys)[24] = malloc(N * sizeof *keys);
    int *vals = malloc(N * sizeof *vals);
    int n_keys = 0;
    xc_batch_ids *s = NULL;
    assert_int_equal(xc_batch_ids_create(&s), XC_OK);
    unsigned seed = 9;
    for (int i = 0; i < N; i++) {
        seed = seed * 1103515245u + 12345u;
        char k[24];
        snprintf(k, sizeof k, "id-%u", (seed >> 8) % 2000); /* many repeats */
        int found = -1;
        for (int j = 0; j < n_keys; j++) {
            if (!strcmp(keys[j], k)) {
                found = j;
            }
        }
        bool added;
        assert_int_equal(xc_batch_ids_add(s, k, strlen(k), i, &added), XC_OK);
        assert_int_equal(added, found < 0);
        if (found < 0) {
            strcpy(keys[n_keys], k);
            vals[n_keys++] = i;
        }
        int v = -1;
        assert_true(xc_batch_ids_find(s, k, strlen(k), &v));
        assert_int_equal(v, found < 0 ? i : vals[found]);
    }
    assert_int_equal(xc_batch_ids_count(s), n_keys);
    assert_false(xc_batch_ids_find(s, "id-2000", 7, NULL));
    assert_false(xc_batch_ids_find(s, "id-1", 3, NULL)); /* a prefix is not a member */
    xc_batch_ids_destroy(s);
    xc_batch_ids_destroy(NULL);
    free(keys);
    free(vals);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_input_accepts_a_valid_line),
        cmocka_unit_test(test_batch_input_refuses_each_bad_line_with_its_code),
        cmocka_unit_test(test_batch_input_base64_matches_rfc4648),
        cmocka_unit_test(test_batch_input_image_files_become_data_urls),
        cmocka_unit_test(test_batch_input_refuses_paths_outside_and_bad_files),
        cmocka_unit_test(test_batch_input_model_is_filled_or_replaced),
        cmocka_unit_test(test_batch_ids_matches_a_linear_list),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
