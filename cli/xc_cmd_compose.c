/* xcpipe compose: one illustrated article through POST /v1/compositions (streamed: progress on
 * stderr), written as OUT/article.md with its images, against a running server (--endpoint) or a
 * local cluster it starts itself (--model, like batch). See docs/compose.md. */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch_docs.h"
#include "xc_batch_server.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_mmap.h"

typedef struct compose_flags {
    const char *instruction, *out, *endpoint, *api_key_file, *model, *image_count, *serve_log;
    const char *log_level;
    xc_conf_list images, serve_args;
    int stages, seed, max_tokens;
    double temperature, timeout_s, ready_timeout_s;
    bool llm_only, with_meta;
} compose_flags;

static const xc_conf_entry compose_entries[] = {
    XC_CONF_STR("instruction", "XC_COMPOSE_INSTRUCTION", compose_flags, instruction, NULL, NULL,
                "what to write: an outline, requirements, material (required)"),
    XC_CONF_LIST("image", "XC_COMPOSE_IMAGES", compose_flags, images,
                 "an image file to illustrate with (repeat; at most 10): the model places them"),
    XC_CONF_STR("out", "XC_COMPOSE_OUT", compose_flags, out, NULL, NULL,
                "directory for article.md, its images and composition.json (required)"),
    XC_CONF_STR("endpoint", "XC_COMPOSE_ENDPOINT", compose_flags, endpoint, NULL, NULL,
                "base URL of a running xcpipe server (http://HOST:PORT)"),
    XC_CONF_STR("api-key-file", "XC_COMPOSE_API_KEY_FILE", compose_flags, api_key_file, NULL, NULL,
                "file whose first line is the API key (else env XC_COMPOSE_API_KEY)"),
    XC_CONF_STR("model", "XC_COMPOSE_MODEL", compose_flags, model, NULL, NULL,
                "start a local cluster on this model directory (instead of --endpoint)"),
    XC_CONF_INT("stages", "XC_COMPOSE_STAGES", compose_flags, stages, 1, 1, 64,
                "decoder stages of the local cluster"),
    XC_CONF_LIST("serve-arg", "XC_COMPOSE_SERVE_ARGS", compose_flags, serve_args,
                 "one more `xcpipe serve` argument for the local cluster (repeat), e.g. "
                 "--serve-arg=--image-search-url=http://..."),
    XC_CONF_STR("serve-log", "XC_COMPOSE_SERVE_LOG", compose_flags, serve_log, NULL, NULL,
                "the local cluster's log (default: OUT.serve.log)"),
    XC_CONF_FLOAT("ready-timeout", "XC_COMPOSE_READY_TIMEOUT", compose_flags, ready_timeout_s, 600,
                  1, 86400, "seconds the local cluster may take to become ready"),
    XC_CONF_STR("image-count", "XC_COMPOSE_IMAGE_COUNT", compose_flags, image_count, NULL, NULL,
                "images to place: 1-15 or auto (default: the number of --image, else 6)"),
    XC_CONF_BOOL("llm-only", "XC_COMPOSE_LLM_ONLY", compose_flags, llm_only, 0,
                 "write the text only (no positions, captions, images)"),
    XC_CONF_BOOL("with-meta", "XC_COMPOSE_WITH_META", compose_flags, with_meta, 0,
                 "use the meta instruction (the demo's 'With Meta' box)"),
    XC_CONF_INT("seed", "XC_COMPOSE_SEED", compose_flags, seed, -1, -1, INT_MAX,
                "sampling seed (-1 = random)"),
    XC_CONF_FLOAT("temperature", "XC_COMPOSE_TEMPERATURE", compose_flags, temperature, 1, 0, 2,
                  "sampling temperature (0 = greedy)"),
    XC_CONF_INT("max-tokens", "XC_COMPOSE_MAX_TOKENS", compose_flags, max_tokens, 0, 0, 1 << 20,
                "the article's max new tokens (0 = the demo's 4096, cut to the context)"),
    XC_CONF_FLOAT("timeout", "XC_COMPOSE_TIMEOUT", compose_flags, timeout_s, 3600, 0, 86400,
                  "seconds the composition may take (0 = no limit)"),
    XC_CONF_STR("log-level", "XC_LOG_LEVEL", compose_flags, log_level, "warn",
                "debug|info|warn|error|off", "log threshold"),
};

static const xc_conf_spec compose_spec = {
    "xcpipe compose --instruction TEXT [--image FILE]... --out DIR (--endpoint URL | --model DIR "
    "[--stages N])",
    "Writes an illustrated article the way XComposer2's composition demo does (article, image "
    "positions, captions, image choice) through POST /v1/compositions: OUT/article.md, the "
    "images it shows, OUT/composition.json. Progress goes to stderr. Exit: 0 ok, 1 the "
    "composition failed, 2 usage. See docs/compose.md.",
    compose_entries, sizeof compose_entries / sizeof compose_entries[0]};

typedef struct sse {
    char *buf;
    size_t n, cap;
    char *final; /* the composition JSON (the "done" event) */
    char err[1024];
    int http;
} sse;

static void on_event(sse *s, const char *data) {
    if (!strcmp(data, "[DONE]")) {
        return;
    }
    cJSON *o = cJSON_Parse(data);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stage");
    const char *stage = cJSON_IsString(st) ? st->valuestring : "";
    if (!strcmp(stage, "article.delta")) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
        if (cJSON_IsString(t)) {
            fputs(t->valuestring, stderr);
        }
    } else if (!strcmp(stage, "paragraphs")) {
        fprintf(stderr, "\n[compose] article: %d paragraphs\n",
                cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "paragraphs")));
    } else if (!strcmp(stage, "positions")) {
        char *p = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, "positions"));
        fprintf(stderr, "[compose] image positions: %s\n", p ? p : "?");
        cJSON_free(p);
    } else if (!strcmp(stage, "caption")) {
        fprintf(stderr, "[compose] caption after paragraph %d: %s\n",
                cJSON_GetObjectItemCaseSensitive(o, "paragraph")->valueint,
                cJSON_GetObjectItemCaseSensitive(o, "caption")->valuestring);
    } else if (!strcmp(stage, "candidates")) {
        fprintf(stderr, "[compose] %d candidate image(s) for paragraph %d\n",
                cJSON_GetObjectItemCaseSensitive(o, "count")->valueint,
                cJSON_GetObjectItemCaseSensitive(o, "paragraph")->valueint);
    } else if (!strcmp(stage, "selection")) {
        fprintf(stderr, "[compose] image chosen for paragraph %d\n",
                cJSON_GetObjectItemCaseSensitive(o, "paragraph")->valueint);
    } else if (!strcmp(stage, "done")) {
        s->final = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, "composition"));
    } else if (!strcmp(stage, "error")) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(o, "error"), "message");
        snprintf(s->err, sizeof s->err, "%s", cJSON_IsString(m) ? m->valuestring : data);
    }
    cJSON_Delete(o);
}

static size_t on_body(char *d, size_t sz, size_t nm, void *u) {
    sse *s = u;
    size_t k = sz * nm;
    if (s->n + k + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 65536;
        while (cap < s->n + k + 1) {
            cap *= 2;
        }
        char *p = realloc(s->buf, cap);
        if (!p) {
            return 0;
        }
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->n, d, k);
    s->n += k;
    s->buf[s->n] = 0;
    long code = 0;
    (void)code;
    if (s->http != 200 && s->http != 0) {
        return k; /* an error body: read whole */
    }
    char *end;
    while ((end = strstr(s->buf, "\n\n"))) {
        *end = 0;
        if (!strncmp(s->buf, "data: ", 6)) {
            on_event(s, s->buf + 6);
        }
        size_t used = (size_t)(end + 2 - s->buf);
        memmove(s->buf, end + 2, s->n - used + 1);
        s->n -= used;
    }
    return k;
}

static size_t on_header(char *d, size_t sz, size_t nm, void *u) {
    sse *s = u;
    if (!strncmp(d, "HTTP/", 5)) {
        const char *sp = memchr(d, ' ', sz * nm);
        s->http = sp ? atoi(sp + 1) : 0;
    }
    return sz * nm;
}

static char *data_url(const char *path) {
    char *data = NULL;
    size_t n = 0;
    if (xc_file_read_all(path, 64u << 20, &data, &n) != XC_OK) {
        return NULL;
    }
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *u = (const unsigned char *)data;
    const char *mime = n > 3 && u[0] == 0xff && u[1] == 0xd8 ? "image/jpeg"
                       : n > 4 && !memcmp(u, "\x89PNG", 4)   ? "image/png"
                       : n > 4 && !memcmp(u, "RIFF", 4)      ? "image/webp"
                                                             : "image/png";
    size_t cap = 64 + (n + 2) / 3 * 4;
    char *o = xc_malloc(cap);
    if (!o) {
        xc_free(data);
        return NULL;
    }
    size_t k = (size_t)snprintf(o, cap, "data:%s;base64,", mime);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)u[i] << 16 | (i + 1 < n ? (uint32_t)u[i + 1] << 8 : 0) |
                     (i + 2 < n ? u[i + 2] : 0);
        o[k++] = tb[(v >> 18) & 63];
        o[k++] = tb[(v >> 12) & 63];
        o[k++] = i + 1 < n ? tb[(v >> 6) & 63] : '=';
        o[k++] = i + 2 < n ? tb[v & 63] : '=';
    }
    o[k] = 0;
    xc_free(data);
    return o;
}

int xc_cmd_compose(int argc, char **argv) {
    compose_flags f;
    xc_status st = xc_conf_parse(&compose_spec, &f, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe compose: %s\n", xc_err_last());
        return 2;
    }
    xc_log_set_level((xc_log_level)xc_log_parse_level(f.log_level));
    if (!f.instruction || !f.instruction[0] || !f.out) {
        fprintf(stderr, "xcpipe compose: --instruction and --out are required (see --help)\n");
        return 2;
    }
    if (!f.endpoint == !f.model) {
        fprintf(stderr, "xcpipe compose: give exactly one of --endpoint URL and --model DIR\n");
        return 2;
    }
    if (f.images.n > 10) {
        fprintf(stderr, "xcpipe compose: at most 10 --image (the demo's limit)\n");
        return 2;
    }
    if (f.image_count && strcmp(f.image_count, "auto") &&
        (atoi(f.image_count) < 1 || atoi(f.image_count) > 15)) {
        fprintf(stderr, "xcpipe compose: --image-count '%s': use 1-15 or auto\n", f.image_count);
        return 2;
    }
    char key[600] = "";
    if (f.api_key_file) {
        if (xc_cli_read_key("compose", f.api_key_file, key, sizeof key) != 0) {
            return 2;
        }
    } else if (getenv("XC_COMPOSE_API_KEY")) {
        if (xc_cli_check_key("compose", "XC_COMPOSE_API_KEY", getenv("XC_COMPOSE_API_KEY")) != 0) {
            return 2;
        }
        snprintf(key, sizeof key, "%s", getenv("XC_COMPOSE_API_KEY"));
    }
    /* the request */
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "instruction", f.instruction);
    cJSON *imgs = cJSON_AddArrayToObject(body, "images");
    for (int i = 0; i < f.images.n; i++) {
        char *u = data_url(f.images.items[i]);
        if (!u) {
            fprintf(stderr, "xcpipe compose: --image %s cannot be read\n", f.images.items[i]);
            cJSON_Delete(body);
            return 2;
        }
        cJSON_AddItemToArray(imgs, cJSON_CreateString(u));
        xc_free(u);
    }
    if (f.image_count) {
        if (!strcmp(f.image_count, "auto")) {
            cJSON_AddStringToObject(body, "image_count", "auto");
        } else {
            cJSON_AddNumberToObject(body, "image_count", atoi(f.image_count));
        }
    }
    cJSON_AddBoolToObject(body, "llm_only", f.llm_only);
    cJSON_AddBoolToObject(body, "with_meta", f.with_meta);
    if (f.seed >= 0) {
        cJSON_AddNumberToObject(body, "seed", f.seed);
    }
    cJSON_AddNumberToObject(body, "temperature", f.temperature);
    if (f.max_tokens > 0) {
        cJSON_AddNumberToObject(body, "max_tokens", f.max_tokens);
    }
    cJSON_AddBoolToObject(body, "stream", true);
    char *req = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);

    xc_batch_server *srv = NULL;
    const char *endpoint = f.endpoint;
    char exe[PATH_MAX], log_path[PATH_MAX];
    if (f.model) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            fprintf(stderr, "xcpipe compose: cannot find this program's path\n");
            cJSON_free(req);
            return 2;
        }
        exe[n] = 0;
        snprintf(log_path, sizeof log_path, "%s%s", f.serve_log ? f.serve_log : f.out,
                 f.serve_log ? "" : ".serve.log");
        xc_batch_server_conf sc = {.exe = exe,
                                   .model = f.model,
                                   .stages = f.stages,
                                   .extra = f.serve_args.items,
                                   .n_extra = f.serve_args.n,
                                   .log_path = log_path,
                                   .ready_timeout_s = f.ready_timeout_s};
        fprintf(stderr, "[compose] starting a local cluster (%s, %d stage(s); log %s)\n", f.model,
                f.stages, log_path);
        st = xc_batch_server_start(&sc, &srv);
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe compose: the local cluster did not start: %s\n", xc_err_last());
            cJSON_free(req);
            return 1;
        }
        endpoint = xc_batch_server_url(srv);
        snprintf(key, sizeof key, "%s", xc_batch_server_key(srv));
    }
    char url[2048];
    size_t el = strlen(endpoint);
    while (el > 0 && endpoint[el - 1] == '/') {
        el--;
    }
    if (el >= 3 && !strncmp(endpoint + el - 3, "/v1", 3)) {
        el -= 3;
    }
    snprintf(url, sizeof url, "%.*s/v1/compositions", (int)el, endpoint);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *cu = curl_easy_init();
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    char auth[700];
    if (key[0]) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        hd = curl_slist_append(hd, auth);
    }
    sse s = {0};
    curl_easy_setopt(cu, CURLOPT_URL, url);
    curl_easy_setopt(cu, CURLOPT_POSTFIELDS, req);
    curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(cu, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(cu, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(cu, CURLOPT_HEADERDATA, &s);
    curl_easy_setopt(cu, CURLOPT_TIMEOUT_MS, (long)(f.timeout_s * 1000));
    curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(cu);
    curl_easy_cleanup(cu);
    curl_slist_free_all(hd);
    cJSON_free(req);
    int ret = 0;
    if (rc != CURLE_OK) {
        fprintf(stderr, "xcpipe compose: %s: %s\n", url, curl_easy_strerror(rc));
        ret = 1;
    } else if (s.http != 200) {
        fprintf(stderr, "xcpipe compose: HTTP %d: %s\n", s.http, s.buf ? s.buf : "");
        ret = 1;
    } else if (!s.final) {
        fprintf(stderr, "xcpipe compose: the composition failed: %s\n",
                s.err[0] ? s.err : "no result");
        ret = 1;
    } else {
        int n_img = 0;
        st = xc_batch_docs_write(f.out, s.final, strlen(s.final), &n_img);
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe compose: %s\n", xc_err_last());
            ret = 1;
        } else {
            fprintf(stderr, "[compose] wrote %s/article.md and %d image(s)\n", f.out, n_img);
        }
    }
    free(s.buf);
    cJSON_free(s.final);
    if (srv) {
        fprintf(stderr, "[compose] stopping the local cluster\n");
        if (xc_batch_server_stop(srv, 60) != XC_OK && ret == 0) {
            fprintf(stderr, "xcpipe compose: %s (log: %s)\n", xc_err_last(), log_path);
        }
    }
    return ret;
}
