/* xcpipe bench: dispatches to the benchmark of each area. */
#include <stdio.h>
#include <string.h>

#include "xc_cli.h"

typedef struct bench_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} bench_cmd;

static const bench_cmd benches[] = {
    {"kernels", xc_cmd_bench_kernels, "CPU kernels at the InternLM2-7B layer shapes"},
#ifndef XC_CLI_SUBSET /* XC_CLUSTER=OFF builds */
    {"tokenize", xc_cmd_bench_tokenize, "tokenizer MB/s next to spm_encode"},
#endif
    {"attention", xc_cmd_bench_attention, "CPU attention on long contexts: 4k-row prefill, decode"},
    {"model", xc_cmd_bench_model, "prefill and decode tokens/s (llama-bench terms), roofline"},
    {"vision", xc_cmd_bench_vision, "CLIP ViT-L/14 + projector, ms per image"},
    {"preprocess", xc_cmd_bench_preprocess, "image decode+resize+normalize vs PIL"},
#ifndef XC_CLI_SUBSET
    {"pipeline", xc_cmd_bench_pipeline, "pipeline efficiency, bubbles at P = 2, 4, 8 (sim)"},
    {"sched", xc_cmd_bench_sched, "coordinator scheduling step at 2048 live sequences (sim)"},
    {"vision-serve", xc_cmd_bench_vision_serve,
     "vision worker images/s, requests batched vs one by one"},
    {"transport", xc_cmd_bench_transport, "forward-frame GB/s per transport vs raw zmq/MPI"},
    {"serve", xc_cmd_bench_serve, "HTTP load test: N streaming clients, req/s, TTFT, ITL, RSS"},
#endif
};

int xc_cmd_bench(int argc, char **argv) {
    if (argc >= 2) {
        for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++) {
            if (!strcmp(argv[1], benches[i].name)) {
                return benches[i].fn(argc - 1, argv + 1);
            }
        }
    }
    FILE *f = (argc >= 2 && !strcmp(argv[1], "--help")) ? stdout : stderr;
    fprintf(f, "usage: xcpipe bench <name> [options]\n\nbenchmarks:\n");
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++) {
        fprintf(f, "  %-12s %s\n", benches[i].name, benches[i].help);
    }
    return f == stdout ? 0 : 2;
}
