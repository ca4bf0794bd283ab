/* xcpipe tokenize (text <-> ids, one line in, one line out) and xcpipe bench tokenize (MB/s of
 * the C tokenizer next to spm_encode on the same file). */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_time.h"
#include "xc_tokenizer.h"

extern char **environ;

/* ---- xcpipe tokenize ---- */

typedef struct tok_conf {
    const char *tokenizer;
    bool decode;
    bool bos;
    int max_bytes;
} tok_conf;

static const xc_conf_entry tok_entries[] = {
    XC_CONF_STR("tokenizer", "XC_TOKENIZER", tok_conf, tokenizer, NULL, NULL,
                "SentencePiece tokenizer.model (required)"),
    XC_CONF_BOOL("decode", NULL, tok_conf, decode, 0,
                 "read space-separated ids per line and print the text"),
    XC_CONF_BOOL("bos", NULL, tok_conf, bos, 0, "encode: put the model's BOS id first"),
    XC_CONF_INT("max-bytes", "XC_TOKENIZER_MAX_BYTES", tok_conf, max_bytes, 1 << 20, 1, 1 << 30,
                "longest input line accepted"),
};

static const xc_conf_spec tok_spec = {
    "xcpipe tokenize --tokenizer FILE [--decode] [--bos]",
    "Reads stdin line by line. Encoding prints the ids of each line (without its newline), "
    "space-separated; --decode reads ids and prints the decoded text. One line in, one line out.",
    tok_entries, sizeof tok_entries / sizeof tok_entries[0]};

static int decode_line(xc_tokenizer *tok, const char *line, size_t lineno, xc_tokens *ids) {
    ids->n = 0;
    const char *s = line;
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\r') {
            s++;
        }
        if (*s == '\0') {
            break;
        }
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < INT32_MIN || v > INT32_MAX) {
            fprintf(stderr, "xcpipe tokenize: line %zu: '%.20s' is not a token id\n", lineno, s);
            return 1;
        }
        if (xc_tokenizer_tokens_push(ids, (int32_t)v) != XC_OK) {
            xc_cli_report("tokenize", "decode", XC_ERR_NOMEM);
            return 1;
        }
        s = end;
    }
    char *text;
    size_t len;
    xc_status st = xc_tokenizer_decode(tok, ids->ids, ids->n, &text, &len);
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe tokenize: line %zu: %s\n", lineno, xc_err_last());
        return 1;
    }
    fwrite(text, 1, len, stdout);
    fputc('\n', stdout);
    xc_free(text);
    return 0;
}

int xc_cmd_tokenize(int argc, char **argv) {
    tok_conf c;
    xc_status st = xc_conf_parse(&tok_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe tokenize: %s\n", xc_err_last());
        return 2;
    }
    if (c.tokenizer == NULL) {
        fprintf(stderr, "xcpipe tokenize: --tokenizer FILE is required\n");
        return 2;
    }
    xc_tokenizer *tok = NULL;
    st = xc_tokenizer_load(c.tokenizer, &tok);
    if (st != XC_OK) {
        xc_cli_report("tokenize", "load", st);
        return 1;
    }
    xc_tokenizer_set_max_input(tok, (size_t)c.max_bytes);
    int bos = xc_tokenizer_special_ids(tok)->bos;
    if (c.bos && bos < 0) {
        fprintf(stderr, "xcpipe tokenize: --bos: the model has no BOS piece\n");
        xc_tokenizer_destroy(tok);
        return 2;
    }
    char *line = NULL; // getline's buffer (libc malloc)
    size_t cap = 0, lineno = 0;
    ssize_t n;
    xc_tokens ids = {0};
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (n > 0 && line[n - 1] == '\n') {
            line[--n] = '\0';
        }
        if (c.decode) {
            rc = decode_line(tok, line, lineno, &ids);
            continue;
        }
        ids.n = 0;
        if (c.bos) {
            st = xc_tokenizer_tokens_push(&ids, bos);
        }
        if (st == XC_OK) {
            st = xc_tokenizer_encode(tok, line, (size_t)n, &ids);
        }
        if (st != XC_OK) {
            fprintf(stderr, "xcpipe tokenize: line %zu: %s\n", lineno, xc_err_last());
            rc = 1;
            break;
        }
        for (size_t i = 0; i < ids.n; i++) {
            printf(i ? " %d" : "%d", ids.ids[i]);
        }
        fputc('\n', stdout);
    }
    free(line);
    xc_tokenizer_tokens_fini(&ids);
    xc_tokenizer_destroy(tok);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "xcpipe tokenize: writing stdout failed\n");
        rc = 1;
    }
    return rc;
}

/* ---- xcpipe bench tokenize ---- */

typedef struct btok_conf {
    const char *tokenizer;
    const char *corpus;
    const char *spm_encode;
    int min_mb;
} btok_conf;

static const xc_conf_entry btok_entries[] = {
    XC_CONF_STR("tokenizer", "XC_TOKENIZER", btok_conf, tokenizer,
                "tests/fixtures/tokenizer/internlm_like.model", NULL, "tokenizer.model"),
    XC_CONF_STR("corpus", NULL, btok_conf, corpus, "tests/fixtures/tokenizer/bench_corpus.txt",
                NULL, "text file, one input per line"),
    XC_CONF_STR("spm-encode", NULL, btok_conf, spm_encode, "spm_encode", NULL,
                "the SentencePiece CLI to compare with (\"\" to skip)"),
    XC_CONF_INT("min-mb", NULL, btok_conf, min_mb, 32, 1, 4096,
                "repeat the corpus to at least this many MB"),
};

static const xc_conf_spec btok_spec = {
    "xcpipe bench tokenize [--tokenizer FILE] [--corpus FILE] [--min-mb N]",
    "Encodes the corpus (repeated to --min-mb) line by line and prints MB/s, next to spm_encode "
    "--output_format=id on the same file (its start-up, measured on an empty file, is shown and "
    "subtracted). Both write the ids as text to /dev/null.",
    btok_entries, sizeof btok_entries / sizeof btok_entries[0]};

/* Runs argv with stdout to /dev/null; returns wall seconds or -1. */
static double run_timed(char *const argv[]) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    double t0 = xc_now_s();
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        return -1;
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return -1;
    }
    return xc_now_s() - t0;
}

/* Our side: encode every line and format the ids as text, written to /dev/null. */
static xc_status bench_ours(xc_tokenizer *tok, const char *data, size_t len, double *secs,
                            size_t *n_tokens) {
    FILE *null = fopen("/dev/null", "w");
    if (null == NULL) {
        return xc_errf(XC_ERR_IO, "cannot open /dev/null");
    }
    xc_tokens ids = {0};
    char num[16];
    size_t total = 0;
    xc_status st = XC_OK;
    double t0 = xc_now_s();
    for (size_t i = 0; i < len && st == XC_OK;) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (data + i)) : len - i;
        ids.n = 0;
        st = xc_tokenizer_encode(tok, data + i, n, &ids);
        for (size_t k = 0; k < ids.n && st == XC_OK; k++) {
            int w = snprintf(num, sizeof num, k ? " %d" : "%d", ids.ids[k]);
            fwrite(num, 1, (size_t)w, null);
        }
        fputc('\n', null);
        total += ids.n;
        i += n + 1;
    }
    *secs = xc_now_s() - t0;
    *n_tokens = total;
    fclose(null);
    xc_tokenizer_tokens_fini(&ids);
    return st;
}

int xc_cmd_bench_tokenize(int argc, char **argv) {
    btok_conf c;
    xc_status st = xc_conf_parse(&btok_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench tokenize: %s\n", xc_err_last());
        return 2;
    }
    xc_tokenizer *tok = NULL;
    char *corpus = NULL, *big = NULL;
    size_t clen = 0;
    int rc = 1;
    char path[] = "/tmp/xcpipe-bench-tokenize-XXXXXX";
    char empty[] = "/tmp/xcpipe-bench-tokenize-empty-XXXXXX";
    int fd = -1, fd_empty = -1;
    if ((st = xc_tokenizer_load(c.tokenizer, &tok)) != XC_OK) {
        xc_cli_report("bench tokenize", "load", st);
        goto out;
    }
    xc_tokenizer_set_max_input(tok, (size_t)1 << 24);
    if ((st = xc_file_read_all(c.corpus, (size_t)1 << 30, &corpus, &clen)) != XC_OK) {
        xc_cli_report("bench tokenize", "corpus", st);
        goto out;
    }
    if (clen == 0) {
        fprintf(stderr, "xcpipe bench tokenize: corpus %s is empty\n", c.corpus);
        goto out;
    }
    if (corpus[clen - 1] != '\n') {
        corpus[clen++] = '\n'; // read_all leaves room for the NUL, which we overwrite
    }
    size_t reps = ((size_t)c.min_mb * 1000000 + clen - 1) / clen;
    size_t blen = reps * clen;
    big = xc_malloc(blen);
    if (big == NULL) {
        fprintf(stderr, "xcpipe bench tokenize: out of memory for %zu bytes\n", blen);
        goto out;
    }
    for (size_t r = 0; r < reps; r++) {
        memcpy(big + r * clen, corpus, clen);
    }
    double ours = 0, best = 1e30;
    size_t n_tok = 0;
    for (int rep = 0; rep < 3; rep++) { // best of three
        if ((st = bench_ours(tok, big, blen, &ours, &n_tok)) != XC_OK) {
            xc_cli_report("bench tokenize", "encode", st);
            goto out;
        }
        best = ours < best ? ours : best;
    }
    double mb = (double)blen / 1e6;
    size_t lines = 0;
    for (size_t i = 0; i < clen; i++) {
        lines += corpus[i] == '\n';
    }
    printf("corpus %s x%zu = %.1f MB, %zu lines per copy, %zu tokens (%.2f bytes/token)\n",
           c.corpus, reps, mb, lines, n_tok, n_tok ? (double)blen / (double)n_tok : 0.0);
    printf("%-28s %10s %10s %10s\n", "tokenizer", "seconds", "MB/s", "Mtok/s");
    printf("%-28s %10.3f %10.2f %10.2f\n", "xcpipe (C, this process)", best, mb / best,
           (double)n_tok / best / 1e6);
    if (c.spm_encode[0]) {
        fd = mkstemp(path);
        fd_empty = mkstemp(empty);
        if (fd < 0 || fd_empty < 0 || write(fd, big, blen) != (ssize_t)blen) {
            fprintf(stderr, "xcpipe bench tokenize: cannot write a temporary file\n");
            goto out;
        }
        char model_arg[4200];
        snprintf(model_arg, sizeof model_arg, "--model=%s", c.tokenizer);
        char *args[] = {(char *)c.spm_encode, model_arg, "--output_format=id", path, NULL};
        char *args0[] = {(char *)c.spm_encode, model_arg, "--output_format=id", empty, NULL};
        double t_start = 1e30, t_all = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            double a = run_timed(args0), b = run_timed(args);
            if (a < 0 || b < 0) {
                fprintf(stderr,
                        "xcpipe bench tokenize: running %s failed (install Debian's "
                        "sentencepiece, or --spm-encode \"\" to skip)\n",
                        c.spm_encode);
                goto out;
            }
            t_start = a < t_start ? a : t_start;
            t_all = b < t_all ? b : t_all;
        }
        double t = t_all - t_start > 1e-6 ? t_all - t_start : 1e-6;
        printf("%-28s %10.3f %10.2f %10.2f   (start-up %.3f s subtracted)\n",
               "spm_encode (SentencePiece)", t, mb / t, (double)n_tok / t / 1e6, t_start);
        printf("%-28s %10.3f %10.2f\n", "spm_encode incl. start-up", t_all, mb / t_all);
        printf("ratio xcpipe / spm_encode: %.2fx\n", t / best);
    }
    rc = 0;
out:
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
    if (fd_empty >= 0) {
        close(fd_empty);
        unlink(empty);
    }
    xc_free(big);
    xc_free(corpus);
    xc_tokenizer_destroy(tok);
    return rc;
}
