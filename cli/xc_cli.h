/* Subcommands of the xcpipe CLI. Each takes (argc, argv) with argv[0] = the subcommand name and
 * returns the process exit code: 0 ok, 1 failure, 2 bad usage. */
#pragma once

#include <signal.h>
#include <stddef.h>

int xc_cmd_model(int argc, char **argv); /* model make-tiny | inspect */
int xc_cmd_bench(int argc, char **argv); /* bench kernels | model | vision | tokenize | ... */
int xc_cmd_bench_kernels(int argc, char **argv);
int xc_cmd_bench_attention(int argc, char **argv);    /* bench attention (xc_cmd_bench_attn.c) */
int xc_cmd_bench_vision_serve(int argc, char **argv); /* bench vision-serve */
int xc_cmd_tokenize(int argc, char **argv);           /* tokenize --tokenizer FILE [--decode] */
int xc_cmd_bench_tokenize(int argc, char **argv);     /* bench tokenize */
int xc_cmd_preprocess(int argc, char **argv);         /* preprocess --image --size --out */
int xc_cmd_bench_preprocess(int argc, char **argv);   /* bench preprocess */
int xc_cmd_serve(int argc, char **argv);              /* serve: a whole cluster, local or MPI */
int xc_cmd_worker(int argc, char **argv);             /* worker: as xcpipe-worker */
int xc_cmd_coordinator(int argc, char **argv);        /* coordinator: as xcpipe-coordinator */
int xc_cmd_bench_pipeline(int argc, char **argv);     /* bench pipeline (sim backend) */
int xc_cmd_bench_sched(int argc, char **argv);        /* bench sched (coordinator step) */
int xc_cmd_generate(int argc, char **argv);           /* single-process generation */
int xc_cmd_bench_model(int argc, char **argv);        /* bench model */
int xc_cmd_bench_vision(int argc, char **argv);       /* bench vision */
/* bench model|vision --backend cuda (xc_cmd_bench_cuda.c); the --backend value of argv or NULL */
int xc_cmd_bench_model_cuda(int argc, char **argv);
int xc_cmd_bench_vision_cuda(int argc, char **argv);
const char *xc_cli_backend_arg(int argc, char **argv);
int xc_cmd_bench_transport(int argc, char **argv); /* bench transport */
int xc_cmd_eval(int argc, char **argv);            /* eval shapes | draw */
int xc_cmd_batch(int argc, char **argv);           /* batch: OpenAI Batch JSONL over the HTTP API */
int xc_cmd_bench_serve(int argc, char **argv);     /* bench serve (HTTP load test) */
int xc_cmd_compose(int argc, char **argv);         /* compose: an illustrated article via the API */

/* Prints "xcpipe <cmd>: <what>: <xc_err_last()>" to stderr for a failed status. */
void xc_cli_report(const char *cmd, const char *what, int status);

/* API keys the clients send: at most this many bytes, no line break (a key is never cut short). */
#define XC_CLI_KEY_MAX 512

/* The API key in `path`: its first line that is neither blank nor a '#' comment, trimmed. Prints
 * "xcpipe <cmd>: --api-key-file PATH: why" and returns -1 when the file cannot be read, holds no
 * key, or its key is longer than XC_CLI_KEY_MAX bytes or than n - 1. */
int xc_cli_read_key(const char *cmd, const char *path, char *key, size_t n);

/* 0 when `key` (given by `what`, e.g. "--api-key") is at most XC_CLI_KEY_MAX bytes and holds no
 * line break; else prints "xcpipe <cmd>: <what>: why" and returns -1. */
int xc_cli_check_key(const char *cmd, const char *what, const char *key);

/* Installs SIGINT and SIGTERM handlers (no SA_RESTART, so a signal wakes a poll at once) and
 * ignores SIGPIPE, for commands that drain and stop on the first signal and abort on the second:
 * *stop is set by the first signal, *abort_now by the second. */
void xc_cli_stop_signals(volatile sig_atomic_t **stop, volatile sig_atomic_t **abort_now);
