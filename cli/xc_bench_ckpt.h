/* Shared by the benchmarks: a random checkpoint cached on disk, the ViT-L/14-shaped tiny-model
 * configuration and comma-separated counts (model and vision, CPU and CUDA), and the weightless
 * model directory of the simulated clusters (pipeline, sched). */
#pragma once

#include "xc_dtype.h"
#include "xc_status.h"
#include "xc_tiny.h"

/* Writes the checkpoint of c into dir unless dir holds one made with the same stamp string
 * (kept in dir/xcpipe-bench.stamp). Errors as xc_tiny_write. */
xc_status xc_bench_ensure_ckpt(const char *dir, const xc_tiny_conf *c, const char *stamp);

/* A checkpoint with a CLIP tower of the given width and layers (MLP 4x, 577-row position table)
 * and a 4096-wide projector in front of one thin decoder layer. */
void xc_bench_vision_conf(xc_tiny_conf *tc, int width, int layers, xc_dtype dtype);

/* Parses "1,16,256" into out (at most max positive counts <= 2^20); -1 on anything else. */
int xc_bench_int_list(const char *s, int *out, int max);

/* Makes a temporary directory from the mkdtemp template dir (changed in place) holding only the
 * config.json of InternLM2-7B with the given decoder layers, the model of the sim backend's
 * clusters. XC_ERR_IO when it cannot (nothing is left behind). */
xc_status xc_bench_sim_model_dir(char *dir, int layers);

/* Removes what xc_bench_sim_model_dir made. */
void xc_bench_sim_model_dir_remove(const char *dir);
