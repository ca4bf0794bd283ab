/* xcpipe eval: accuracy of a model on the shapes world (cli/xc_shapes.h) through the HTTP API.
 *   eval shapes (--endpoint URL | --model DIR [--stages N]) [--count N] [--seed S] ...
 *       held-out pictures and questions sent as an OpenAI Batch (batch/xc_batch.h) to an
 *       endpoint or to a local cluster started for the run; exact answers scored per type.
 *   eval draw --seed S --out FILE.png [--type T]
 *       one item's picture as a PNG, and its question, answer and caption as JSON on stdout
 *       (scripts/demo uses it). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_batch.h"
#include "xc_batch_server.h"
#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_log.h"
#include "xc_mem.h"
#include "xc_shapes.h"

typedef struct eval_flags {
    const char *endpoint, *model, *types, *answers, *expect, *serve_log, *log_level, *api_key_file;
    const char *work_dir;
    int stages, count, concurrency, max_tokens;
    int seed;
    double min_accuracy, ready_timeout_s, timeout_s;
    xc_conf_list serve_args;
} eval_flags;

static const xc_conf_entry eval_entries[] = {
    XC_CONF_STR("endpoint", "XC_EVAL_ENDPOINT", eval_flags, endpoint, NULL, NULL,
                "base URL of an OpenAI-compatible server serving the shapes model"),
    XC_CONF_STR("api-key-file", "XC_EVAL_API_KEY_FILE", eval_flags, api_key_file, NULL, NULL,
                "file with the endpoint's API key: its first non-blank, non-# line, trimmed"),
    XC_CONF_STR("model", "XC_EVAL_MODEL", eval_flags, model, NULL, NULL,
                "start a local cluster on this model directory (instead of --endpoint)"),
    XC_CONF_INT("stages", "XC_EVAL_STAGES", eval_flags, stages, 2, 1, 64,
                "decoder stages of the local cluster"),
    XC_CONF_LIST("serve-arg", "XC_EVAL_SERVE_ARGS", eval_flags, serve_args,
                 "one more `xcpipe serve` argument for the local cluster (repeat)"),
    XC_CONF_INT("count", "XC_EVAL_COUNT", eval_flags, count, 140, 1, 1000000,
                "questions (types in turn: caption, color, shape, where, count, exists, text)"),
    XC_CONF_INT("seed", "XC_EVAL_SEED", eval_flags, seed, 1000000000, 0, 2147483647,
                "first item seed (training used seeds below 1e9)"),
    XC_CONF_STR("types", "XC_EVAL_TYPES", eval_flags, types, "all", NULL,
                "comma-separated question types, or all"),
    XC_CONF_INT("max-tokens", "XC_EVAL_MAX_TOKENS", eval_flags, max_tokens, 48, 1, 4096,
                "max_tokens per answer (greedy: temperature 0)"),
    XC_CONF_INT("concurrency", "XC_EVAL_CONCURRENCY", eval_flags, concurrency, 8, 1, 4096,
                "requests in flight"),
    XC_CONF_FLOAT("timeout", "XC_EVAL_TIMEOUT", eval_flags, timeout_s, 600, 0, 86400,
                  "seconds one request may take"),
    XC_CONF_STR("answers", "XC_EVAL_ANSWERS", eval_flags, answers, NULL, NULL,
                "write one JSON line per question (seed, type, question, expected, answer)"),
    XC_CONF_STR("expect", "XC_EVAL_EXPECT", eval_flags, expect, NULL, NULL,
                "JSON lines with 'seed' and 'answer' (e.g. the original PyTorch code's): every "
                "answer must be identical (exit 1 otherwise)"),
    XC_CONF_FLOAT("min-accuracy", "XC_EVAL_MIN_ACCURACY", eval_flags, min_accuracy, 0, 0, 1,
                  "exit 1 when the overall accuracy is below this fraction"),
    XC_CONF_STR("work-dir", "XC_EVAL_WORK_DIR", eval_flags, work_dir, NULL, NULL,
                "keep the pictures, requests and records here (default: a temporary directory, "
                "removed)"),
    XC_CONF_STR("serve-log", "XC_EVAL_SERVE_LOG", eval_flags, serve_log, NULL, NULL,
                "the local cluster's log (default: in the work directory)"),
    XC_CONF_FLOAT("ready-timeout", "XC_EVAL_READY_TIMEOUT", eval_flags, ready_timeout_s, 300, 1,
                  86400, "seconds the local cluster may take to become ready"),
    XC_CONF_STR("log-level", "XC_LOG_LEVEL", eval_flags, log_level, "warn",
                "debug|info|warn|error|off", "log threshold"),
};

static const xc_conf_spec eval_spec = {
    "xcpipe eval shapes (--endpoint URL | --model DIR [--stages N]) [--count N] [--seed S]",
    "Generates held-out shapes-world pictures and questions (cli/xc_shapes.h, the world "
    "models/shapes was trained on), sends them through /v1/chat/completions (greedy, no system "
    "prompt, the picture before the question) and prints the accuracy per question type. "
    "Answers must be exact; a caption counts when its colour and shape words are right, in "
    "order. Exit: 0 done, 1 failed requests, accuracy below --min-accuracy or answers differing "
    "from --expect, 2 usage. A local cluster inherits the environment: XC_PLORA=off|all runs "
    "the decoder without the PLoRA adapters or with them on every row (the ablation of "
    "docs/model.md). See docs/model.md.",
    eval_entries, sizeof eval_entries / sizeof eval_entries[0]};

typedef struct draw_flags {
    const char *out, *type;
    int seed;
} draw_flags;

static const xc_conf_entry draw_entries[] = {
    XC_CONF_INT("seed", "XC_DRAW_SEED", draw_flags, seed, 1000000000, 0, 2147483647, "item seed"),
    XC_CONF_STR("type", "XC_DRAW_TYPE", draw_flags, type, "any", NULL,
                "question type (caption, color, shape, where, count, exists, text) or any"),
    XC_CONF_STR("out", "XC_DRAW_OUT", draw_flags, out, NULL, NULL, "the picture (PNG)"),
};

static const xc_conf_spec draw_spec = {
    "xcpipe eval draw --seed S --out FILE.png [--type T]",
    "Draws shapes-world item S and prints its question, answer and caption as one JSON line.",
    draw_entries, sizeof draw_entries / sizeof draw_entries[0]};

/* types "all" or "color,where": the enabled types in order; returns their number, -1 bad */
static int parse_types(const char *s, int *out) {
    if (!strcmp(s, "all")) {
        for (int i = 0; i < XC_SHAPES_NQ; i++) {
            out[i] = i;
        }
        return XC_SHAPES_NQ;
    }
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int q = xc_shapes_qtype_parse(t);
        if (q < 0 || n >= XC_SHAPES_NQ) {
            return -1;
        }
        out[n++] = q;
    }
    return n;
}

/* The request line of item it (its picture is img<i>.png in the work directory). */
static char *request_line(const xc_shapes_item *it, int i, int max_tokens) {
    cJSON *root = cJSON_CreateObject(), *body = cJSON_CreateObject();
    char id[32], img[32];
    snprintf(id, sizeof id, "q%d", i);
    snprintf(img, sizeof img, "img%d.png", i);
    cJSON_AddStringToObject(root, "custom_id", id);
    cJSON_AddStringToObject(root, "method", "POST");
    cJSON_AddStringToObject(root, "url", "/v1/chat/completions");
    cJSON_AddItemToObject(root, "body", body);
    cJSON_AddNumberToObject(body, "max_tokens", max_tokens);
    cJSON_AddNumberToObject(body, "temperature", 0);
    cJSON *msgs = cJSON_AddArrayToObject(body, "messages");
    cJSON *sys = cJSON_CreateObject(), *user = cJSON_CreateObject();
    cJSON_AddStringToObject(sys, "role", "system"); /* "": no meta instruction, as trained */
    cJSON_AddStringToObject(sys, "content", "");
    cJSON_AddStringToObject(user, "role", "user");
    cJSON_AddItemToArray(msgs, sys);
    cJSON_AddItemToArray(msgs, user);
    if (it->image) {
        cJSON *parts = cJSON_AddArrayToObject(user, "content");
        cJSON *ip = cJSON_CreateObject(), *tp = cJSON_CreateObject();
        cJSON_AddStringToObject(ip, "type", "image_url");
        cJSON_AddItemToObject(ip, "image_url", cJSON_CreateObject());
        cJSON_AddStringToObject(cJSON_GetObjectItem(ip, "image_url"), "url", img);
        cJSON_AddStringToObject(tp, "type", "text");
        cJSON_AddStringToObject(tp, "text", it->question);
        cJSON_AddItemToArray(parts, ip);
        cJSON_AddItemToArray(parts, tp);
    } else {
        cJSON_AddStringToObject(user, "content", it->question);
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

typedef struct result {
    char *answer; /* NULL: no 200 answer */
    char *error;
} result;

/* Reads the batch records into res[i] by custom_id "q<i>". */
static int read_records(const char *path, result *res, int count) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "xcpipe eval: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *r = cJSON_Parse(line);
        const cJSON *id = cJSON_GetObjectItem(r, "custom_id");
        int i = -1;
        if (cJSON_IsString(id) && sscanf(id->valuestring, "q%d", &i) == 1 && i >= 0 && i < count &&
            !res[i].answer) {
            const cJSON *resp = cJSON_GetObjectItem(r, "response");
            const cJSON *code = cJSON_GetObjectItem(resp, "status_code");
            const cJSON *body = cJSON_GetObjectItem(resp, "body");
            const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(body, "choices"), 0);
            const cJSON *content =
                cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content");
            if (cJSON_IsNumber(code) && code->valueint == 200 && cJSON_IsString(content)) {
                res[i].answer = xc_strdup(content->valuestring);
            } else if (!res[i].error) {
                char *e = cJSON_PrintUnformatted(cJSON_GetObjectItem(r, "error"));
                char *b = cJSON_PrintUnformatted(body);
                size_t n = (e ? strlen(e) : 0) + (b ? strlen(b) : 0) + 32;
                res[i].error = xc_malloc(n);
                if (res[i].error) {
                    snprintf(res[i].error, n, "%s %s", e ? e : "", b ? b : "");
                }
                free(e);
                free(b);
            }
        }
        cJSON_Delete(r);
    }
    free(line);
    fclose(f);
    return 0;
}

/* --expect: one JSON line per item with "seed" and "answer"; returns mismatches (-1 bad file) */
static int compare_expected(const char *path, const xc_shapes_item *items, const result *res,
                            int count) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "xcpipe eval: --expect %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int lines = 0, bad = 0, matched = 0;
    while (getline(&line, &cap, f) > 0) {
        if (line[strspn(line, " \t\r\n")] == 0) {
            continue;
        }
        lines++;
        cJSON *r = cJSON_Parse(line);
        const cJSON *seed = cJSON_GetObjectItem(r, "seed");
        const cJSON *ans = cJSON_GetObjectItem(r, "answer");
        if (!cJSON_IsNumber(seed) || !cJSON_IsString(ans)) {
            fprintf(stderr, "xcpipe eval: --expect %s line %d: needs 'seed' and 'answer'\n", path,
                    lines);
            bad++;
            cJSON_Delete(r);
            continue;
        }
        int i = -1;
        for (int k = 0; k < count; k++) {
            if ((double)items[k].seed == seed->valuedouble) {
                i = k;
            }
        }
        if (i < 0) {
            fprintf(stderr,
                    "xcpipe eval: --expect line %d: seed %.0f was not asked (match "
                    "--seed/--count/--types)\n",
                    lines, seed->valuedouble);
            bad++;
        } else if (!res[i].answer || strcmp(res[i].answer, ans->valuestring)) {
            fprintf(stderr, "xcpipe eval: seed %.0f (%s): expected %s, got %s\n", seed->valuedouble,
                    items[i].question, ans->valuestring,
                    res[i].answer ? res[i].answer : "(no answer)");
            bad++;
        } else {
            matched++;
        }
        cJSON_Delete(r);
    }
    free(line);
    fclose(f);
    printf("expected answers (%s): %d of %d identical\n", path, matched, lines);
    return lines ? bad : (fprintf(stderr, "xcpipe eval: --expect %s is empty\n", path), -1);
}

static int write_answers(const char *path, const xc_shapes_item *items, const result *res,
                         int count) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "xcpipe eval: --answers %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (int i = 0; i < count; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "seed", (double)items[i].seed);
        cJSON_AddStringToObject(o, "type", xc_shapes_qtype_name(items[i].qtype));
        cJSON_AddStringToObject(o, "question", items[i].question);
        cJSON_AddStringToObject(o, "expected", items[i].answer);
        if (res[i].answer) {
            cJSON_AddStringToObject(o, "answer", res[i].answer);
            cJSON_AddBoolToObject(o, "correct",
                                  xc_shapes_score(items[i].qtype, items[i].answer, res[i].answer));
        } else {
            cJSON_AddNullToObject(o, "answer");
        }
        char *s = cJSON_PrintUnformatted(o);
        fprintf(f, "%s\n", s);
        free(s);
        cJSON_Delete(o);
    }
    return fclose(f) == 0 ? 0 : -1;
}

#define DIR_MAX (PATH_MAX - 64) /* room for the file names below it */

static void remove_dir(const char *dir, int count) {
    char p[PATH_MAX];
    for (int i = 0; i < count; i++) {
        snprintf(p, sizeof p, "%s/img%d.png", dir, i);
        unlink(p);
    }
    const char *names[] = {"requests.jsonl", "records.jsonl", "serve.log"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[k]);
        unlink(p);
    }
    rmdir(dir);
}

static int cmd_shapes(int argc, char **argv) {
    eval_flags f;
    xc_status st = xc_conf_parse(&eval_spec, &f, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe eval shapes: %s\n", xc_err_last());
        return 2;
    }
    xc_log_set_level((xc_log_level)xc_log_parse_level(f.log_level));
    if (!f.endpoint == !f.model) {
        fprintf(stderr, "xcpipe eval shapes: give exactly one of --endpoint URL and --model DIR\n");
        return 2;
    }
    if (f.model) {
        char cfg[PATH_MAX];
        snprintf(cfg, sizeof cfg, "%s/config.json", f.model);
        if (access(cfg, R_OK) != 0) {
            fprintf(stderr, "xcpipe eval shapes: --model %s: no readable config.json there\n",
                    f.model);
            return 2;
        }
    }
    int types[XC_SHAPES_NQ];
    int n_types = parse_types(f.types, types);
    if (n_types <= 0) {
        fprintf(stderr,
                "xcpipe eval shapes: --types '%s': use all or a comma-separated list of caption, "
                "color, shape, where, count, exists, text\n",
                f.types);
        return 2;
    }
    char key[600] = "";
    if (f.api_key_file && xc_cli_read_key("eval shapes", f.api_key_file, key, sizeof key) != 0) {
        return 2;
    }

    char dir[DIR_MAX];
    bool temp_dir = !f.work_dir;
    if (f.work_dir && strlen(f.work_dir) >= sizeof dir) {
        fprintf(stderr, "xcpipe eval shapes: --work-dir is too long\n");
        return 2;
    }
    if (temp_dir) {
        const char *tmp = getenv("TMPDIR");
        int w = snprintf(dir, sizeof dir, "%s/xcpipe-eval-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (w < 0 || (size_t)w >= sizeof dir) {
            fprintf(stderr, "xcpipe eval shapes: TMPDIR is too long\n");
            return 2;
        }
        if (!mkdtemp(dir)) {
            fprintf(stderr, "xcpipe eval shapes: cannot create %s: %s\n", dir, strerror(errno));
            return 1;
        }
    } else {
        snprintf(dir, sizeof dir, "%s", f.work_dir);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "xcpipe eval shapes: --work-dir %s: %s\n", dir, strerror(errno));
            return 2;
        }
    }
    char req_path[PATH_MAX], rec_path[PATH_MAX], log_path[PATH_MAX];
    snprintf(req_path, sizeof req_path, "%s/requests.jsonl", dir);
    snprintf(rec_path, sizeof rec_path, "%s/records.jsonl", dir);
    snprintf(log_path, sizeof log_path, "%s", f.serve_log ? f.serve_log : "");
    if (!f.serve_log) {
        snprintf(log_path, sizeof log_path, "%s/serve.log", dir);
    }
    unlink(rec_path); /* a fresh run, not a resume */

    int rc = 1;
    xc_shapes_item *items = xc_calloc((size_t)f.count, sizeof *items);
    result *res = xc_calloc((size_t)f.count, sizeof *res);
    uint8_t *px = xc_malloc(XC_SHAPES_IMG * XC_SHAPES_IMG * 3);
    FILE *rq = fopen(req_path, "w");
    if (!items || !res || !px || !rq) {
        fprintf(stderr, "xcpipe eval shapes: %s\n", rq ? "out of memory" : strerror(errno));
        goto done;
    }
    for (int i = 0; i < f.count; i++) {
        xc_shapes_item *it = &items[i];
        xc_shapes_item_make((uint64_t)f.seed + (uint64_t)i, types[i % n_types], it);
        if (it->image) {
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/img%d.png", dir, i);
            xc_shapes_render(&it->scene, px);
            if (xc_shapes_write_png(p, px, XC_SHAPES_IMG, XC_SHAPES_IMG) != XC_OK) {
                fprintf(stderr, "xcpipe eval shapes: %s\n", xc_err_last());
                fclose(rq);
                goto done;
            }
        }
        char *line = request_line(it, i, f.max_tokens);
        if (!line) {
            fprintf(stderr, "xcpipe eval shapes: out of memory\n");
            fclose(rq);
            goto done;
        }
        fprintf(rq, "%s\n", line);
        free(line);
    }
    if (fclose(rq) != 0) {
        fprintf(stderr, "xcpipe eval shapes: writing %s: %s\n", req_path, strerror(errno));
        goto done;
    }

    xc_batch_conf c;
    xc_batch_conf_defaults(&c);
    c.input = req_path;
    c.output = rec_path;
    c.endpoint = f.endpoint;
    c.api_key = key[0] ? key : NULL;
    c.concurrency = f.concurrency;
    c.timeout_s = f.timeout_s;
    c.fsync_every = 0;
    c.progress = XC_BATCH_PROGRESS_OFF;
    xc_cli_stop_signals(&c.stop, &c.abort_now);
    xc_batch_server_lazy local = {0};
    if (f.model) {
        xc_batch_server_conf sc = {.model = f.model,
                                   .stages = f.stages,
                                   .extra = f.serve_args.items,
                                   .n_extra = f.serve_args.n,
                                   .log_path = log_path,
                                   .ready_timeout_s = f.ready_timeout_s,
                                   .abort = c.stop};
        if (xc_batch_server_lazy_init(&local, "xcpipe eval", &sc, &c.start, &c.start_ud, &c.alive,
                                      &c.alive_ud) != XC_OK) {
            fprintf(stderr, "xcpipe eval shapes: %s\n", xc_err_last());
            goto done;
        }
    }

    xc_batch_summary sum;
    st = xc_batch_run(&c, &sum);
    char why[600];
    snprintf(why, sizeof why, "%s", st != XC_OK ? xc_err_last() : "");
    if (local.srv && xc_batch_server_stop(local.srv, 60) != XC_OK) {
        fprintf(stderr, "xcpipe eval shapes: %s (log: %s)\n", xc_err_last(), log_path);
    }
    if (st != XC_OK || sum.interrupted) {
        struct stat sb;
        bool have_log = stat(log_path, &sb) == 0 && sb.st_size > 0;
        fprintf(stderr, "xcpipe eval shapes: the run stopped: %s%s%s\n",
                sum.fatal[0] ? sum.fatal
                : why[0]     ? why
                             : "interrupted",
                have_log ? "; the cluster's log: " : "", have_log ? log_path : "");
        temp_dir = temp_dir && !have_log; /* keep the log for a look */
        goto done;
    }
    if (read_records(rec_path, res, f.count) != 0) {
        goto done;
    }

    int right[XC_SHAPES_NQ] = {0}, total[XC_SHAPES_NQ] = {0}, failed = 0, all_right = 0;
    for (int i = 0; i < f.count; i++) {
        total[items[i].qtype]++;
        if (!res[i].answer) {
            failed++;
            if (failed <= 3) {
                fprintf(stderr, "xcpipe eval shapes: q%d failed: %s\n", i,
                        res[i].error ? res[i].error : "no record");
            }
            continue;
        }
        int ok = xc_shapes_score(items[i].qtype, items[i].answer, res[i].answer);
        right[items[i].qtype] += ok;
        all_right += ok;
    }
    printf("%-8s %9s %8s\n", "type", "correct", "accuracy");
    for (int t = 0; t < XC_SHAPES_NQ; t++) {
        if (total[t]) {
            printf("%-8s %4d/%-4d %7.1f%%\n", xc_shapes_qtype_name((xc_shapes_qtype)t), right[t],
                   total[t], 100.0 * right[t] / total[t]);
        }
    }
    double acc = (double)all_right / f.count;
    printf("%-8s %4d/%-4d %7.1f%%\n", "all", all_right, f.count, 100.0 * acc);
    if (failed) {
        printf("failed requests: %d\n", failed);
    }
    rc = failed || acc < f.min_accuracy ? 1 : 0;
    if (acc < f.min_accuracy) {
        fprintf(stderr, "xcpipe eval shapes: accuracy %.1f%% is below --min-accuracy %.1f%%\n",
                100 * acc, 100 * f.min_accuracy);
    }
    if (f.answers && write_answers(f.answers, items, res, f.count) != 0) {
        rc = 1;
    }
    if (f.expect) {
        int bad = compare_expected(f.expect, items, res, f.count);
        if (bad != 0) {
            rc = 1;
        }
    }
done:
    if (res) {
        for (int i = 0; i < f.count; i++) {
            xc_free(res[i].answer);
            xc_free(res[i].error);
        }
    }
    xc_free(res);
    xc_free(items);
    xc_free(px);
    if (temp_dir) {
        remove_dir(dir, f.count);
    }
    return rc;
}

static int cmd_draw(int argc, char **argv) {
    draw_flags f;
    xc_status st = xc_conf_parse(&draw_spec, &f, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe eval draw: %s\n", xc_err_last());
        return 2;
    }
    int qt = strcmp(f.type, "any") ? xc_shapes_qtype_parse(f.type) : -1;
    if (strcmp(f.type, "any") && qt < 0) {
        fprintf(stderr,
                "xcpipe eval draw: --type '%s': use any, caption, color, shape, where, "
                "count, exists or text\n",
                f.type);
        return 2;
    }
    if (!f.out) {
        fprintf(stderr, "xcpipe eval draw: --out FILE.png is required\n");
        return 2;
    }
    xc_shapes_item it;
    xc_shapes_item_make((uint64_t)f.seed, qt, &it);
    uint8_t *px = xc_malloc(XC_SHAPES_IMG * XC_SHAPES_IMG * 3);
    if (!px) {
        fprintf(stderr, "xcpipe eval draw: out of memory\n");
        return 1;
    }
    xc_shapes_render(&it.scene, px);
    st = xc_shapes_write_png(f.out, px, XC_SHAPES_IMG, XC_SHAPES_IMG);
    xc_free(px);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe eval draw: %s\n", xc_err_last());
        return 1;
    }
    char cap[256];
    xc_shapes_caption(&it.scene, cap, sizeof cap);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seed", (double)it.seed);
    cJSON_AddStringToObject(o, "type", xc_shapes_qtype_name(it.qtype));
    cJSON_AddBoolToObject(o, "image", it.image);
    cJSON_AddStringToObject(o, "question", it.question);
    cJSON_AddStringToObject(o, "answer", it.answer);
    cJSON_AddStringToObject(o, "caption", cap);
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
    return 0;
}

int xc_cmd_eval(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "shapes")) {
        return cmd_shapes(argc - 1, argv + 1);
    }
    if (argc >= 2 && !strcmp(argv[1], "draw")) {
        return cmd_draw(argc - 1, argv + 1);
    }
    bool help = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
    FILE *out = help ? stdout : stderr;
    if (argc >= 2 && !help) {
        fprintf(stderr, "xcpipe eval: unknown subcommand '%s'\n", argv[1]);
    }
    fprintf(out, "usage: xcpipe eval <subcommand> [options]   (--help on each)\n\n"
                 "subcommands:\n"
                 "  shapes   accuracy on held-out shapes-world questions through the HTTP API\n"
                 "  draw     one shapes-world picture (PNG) with its question and answer\n");
    return help ? 0 : 2;
}
