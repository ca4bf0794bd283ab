/* xcpipe preprocess: one image through the vision preprocessing (decode, PIL bicubic squash,
 * CLIP normalization), written raw; and xcpipe bench preprocess: the same path timed side by
 * side with PIL + numpy (tools/image/bench_pil.py). */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xc_cli.h"
#include "xc_conf.h"
#include "xc_image.h"
#include "xc_mem.h"
#include "xc_time.h"

/* Reads a whole file, refusing it before reading when it is over max_bytes (0: no limit). */
static xc_status read_file(const char *path, size_t max_bytes, uint8_t **out, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return xc_errf(XC_ERR_IO, "cannot open %s", path);
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return xc_errf(XC_ERR_IO, "%s is not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    if (max_bytes > 0 && len > max_bytes) {
        fclose(f);
        return xc_errf(XC_ERR_ARG, "%s has %zu bytes, over the limit of %zu (max-bytes)", path, len,
                       max_bytes);
    }
    uint8_t *buf = xc_malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return xc_errf(XC_ERR_NOMEM, "out of memory reading %s", path);
    }
    if (fread(buf, 1, len, f) != len) {
        fclose(f);
        xc_free(buf);
        return xc_errf(XC_ERR_IO, "short read on %s", path);
    }
    fclose(f);
    *out = buf;
    *n = len;
    return XC_OK;
}

static xc_status write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        return xc_errf(XC_ERR_IO, "cannot create %s", path);
    }
    size_t w = fwrite(data, 1, n, f);
    if (fclose(f) != 0 || w != n) {
        return xc_errf(XC_ERR_IO, "cannot write %s", path);
    }
    return XC_OK;
}

/* ---- xcpipe preprocess ---- */

typedef struct pp_conf {
    const char *image;
    int size;
    const char *out;
    bool normalized;
    int max_bytes;
    int max_pixels;
} pp_conf;

static const xc_conf_entry pp_entries[] = {
    XC_CONF_STR("image", NULL, pp_conf, image, NULL, NULL, "input image: JPEG, PNG or WebP"),
    XC_CONF_INT("size", NULL, pp_conf, size, 490, 1, 8192,
                "side S of the square output (224 for IXC2-7b, 490 for IXC2-VL-7b)"),
    XC_CONF_STR("out", NULL, pp_conf, out, NULL, NULL,
                "output file: raw uint8 RGB (S, S, 3) row-major, or with --normalized the float32 "
                "tensor (3, S, S), little-endian"),
    XC_CONF_BOOL("normalized", NULL, pp_conf, normalized, 0,
                 "write the normalized tensor the model sees instead of the resized pixels"),
    XC_CONF_INT("max-bytes", "XC_IMAGE_MAX_BYTES", pp_conf, max_bytes, XC_IMAGE_DEFAULT_MAX_BYTES,
                0, INT_MAX, "largest encoded image accepted, in bytes (0: no limit)"),
    XC_CONF_INT("max-pixels", "XC_IMAGE_MAX_PIXELS", pp_conf, max_pixels,
                XC_IMAGE_DEFAULT_MAX_PIXELS, 0, INT_MAX,
                "largest width*height accepted, checked from the header (0: no limit)"),
};

static const xc_conf_spec pp_spec = {
    "xcpipe preprocess --image FILE --size N --out FILE [--normalized]",
    "Decodes an image as PIL's Image.open(f).convert('RGB'), squashes it to SxS with PIL's "
    "bicubic resize (byte-identical) and writes the pixels, or the ToTensor + CLIP Normalize "
    "tensor.",
    pp_entries,
    sizeof pp_entries / sizeof pp_entries[0],
};

int xc_cmd_preprocess(int argc, char **argv) {
    pp_conf c;
    xc_status st = xc_conf_parse(&pp_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe preprocess: %s\n", xc_err_last());
        return 2;
    }
    if (!c.image || !c.out) {
        fprintf(stderr, "xcpipe preprocess: --image and --out are required (see --help)\n");
        return 2;
    }
    xc_image_limits lim;
    xc_image_limits_default(&lim);
    lim.max_bytes = (size_t)c.max_bytes;
    lim.max_pixels = (uint64_t)c.max_pixels;

    uint8_t *data = NULL, *px = NULL;
    float *t = NULL;
    size_t n = 0, npx = (size_t)c.size * (size_t)c.size * 3;
    int rc = 1;
    st = read_file(c.image, lim.max_bytes, &data, &n);
    if (st != XC_OK) {
        xc_cli_report("preprocess", c.image, st);
        goto out;
    }
    px = xc_malloc(npx);
    t = c.normalized ? xc_malloc(npx * sizeof(float)) : NULL;
    if (!px || (c.normalized && !t)) {
        xc_cli_report("preprocess", "allocate", xc_errf(XC_ERR_NOMEM, "out of memory"));
        goto out;
    }
    st = xc_image_preprocess(data, n, &lim, c.size, px, t);
    if (st != XC_OK) {
        xc_cli_report("preprocess", c.image, st);
        goto out;
    }
    st = c.normalized ? write_file(c.out, t, npx * sizeof(float)) : write_file(c.out, px, npx);
    if (st != XC_OK) {
        xc_cli_report("preprocess", c.out, st);
        goto out;
    }
    rc = 0;
out:
    xc_free(data);
    xc_free(px);
    xc_free(t);
    return rc;
}

/* ---- xcpipe bench preprocess ---- */

typedef struct bp_conf {
    const char *image;
    int size;
    int runs;
    const char *python;
    const char *pil_script;
} bp_conf;

static const xc_conf_entry bp_entries[] = {
    XC_CONF_STR("image", NULL, bp_conf, image, NULL, NULL,
                "JPEG to time (default: a synthetic 1920x1080 JPEG, quality 90, 4:2:0)"),
    XC_CONF_INT("size", NULL, bp_conf, size, 490, 1, 8192, "output side S"),
    XC_CONF_INT("runs", NULL, bp_conf, runs, 31, 1, 100000, "timed runs (the median is shown)"),
    XC_CONF_STR("python", "XC_PYTHON", bp_conf, python, "/usr/bin/python3", NULL,
                "Python with PIL and numpy for the baseline ('' to skip it)"),
    XC_CONF_STR("pil-script", NULL, bp_conf, pil_script, NULL, NULL,
                "path of tools/image/bench_pil.py (default: found from the cwd or the binary)"),
};

static const xc_conf_spec bp_spec = {
    "xcpipe bench preprocess [--image FILE] [--size N] [--runs N]",
    "Times decode + PIL-identical bicubic resize + CLIP normalization of a 1920x1080 JPEG to an "
    "SxS float32 tensor (median of N runs) and the same with PIL + numpy, and checks that both "
    "give the same resized bytes.",
    bp_entries,
    sizeof bp_entries / sizeof bp_entries[0],
};

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A photo-like 1920x1080 test card: gradients, soft blobs, sharp text-like bars, mild noise. */
static xc_status make_test_jpeg(uint8_t **out, size_t *n) {
    const int w = 1920, h = 1080;
    uint8_t *rgb = xc_malloc((size_t)w * h * 3);
    if (!rgb) {
        return xc_errf(XC_ERR_NOMEM, "out of memory");
    }
    uint32_t s = 12345;
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            s = s * 1664525u + 1013904223u;
            int noise = (int)(s >> 29) - 4;
            int dx = x - 1300, dy = y - 400;
            int blob = (dx * dx + dy * dy) < 250 * 250 ? 60 : 0;
            int bar = ((y / 24) % 5 == 0 && (x / 7) % 3 != 0 && x < 900) ? -120 : 0;
            int v[3] = {x * 255 / w + blob + bar, y * 255 / h + bar, 128 + (x - y) / 12 - blob};
            for (int c = 0; c < 3; c++) {
                int u = v[c] + noise;
                rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)(u < 0 ? 0 : u > 255 ? 255 : u);
            }
        }
    }
    xc_status st = xc_image_write_jpeg(rgb, w, h, 90, out, n);
    xc_free(rgb);
    return st;
}

static const char *find_pil_script(const char *given, char *buf, size_t cap) {
    if (given) {
        return given;
    }
    if (access("tools/image/bench_pil.py", R_OK) == 0) {
        return "tools/image/bench_pil.py";
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            /* <repo>/<build>/bin/xcpipe -> <repo>/tools/image/bench_pil.py */
            snprintf(buf, cap, "%s/../../tools/image/bench_pil.py", exe);
            if (access(buf, R_OK) == 0) {
                return buf;
            }
        }
    }
    return NULL;
}

typedef struct pil_times {
    double decode, resize, normalize, total; /* ms, medians */
} pil_times;

/* Runs the PIL baseline; *ok false (with a reason printed) when it cannot run. */
static bool run_pil(const bp_conf *c, const char *jpeg_path, const char *resized_path,
                    pil_times *pt) {
    char sbuf[PATH_MAX + 64];
    const char *script = find_pil_script(c->pil_script, sbuf, sizeof sbuf);
    if (!c->python || !c->python[0]) {
        printf("PIL baseline skipped (--python '')\n");
        return false;
    }
    if (!script) {
        printf("PIL baseline skipped: tools/image/bench_pil.py not found (use --pil-script)\n");
        return false;
    }
    if (strchr(c->python, '\'') || strchr(script, '\'') || strchr(jpeg_path, '\'')) {
        printf("PIL baseline skipped: a path contains a quote\n");
        return false;
    }
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' '%s' --image '%s' --size %d --runs %d --out '%s'", c->python,
             script, jpeg_path, c->size, c->runs, resized_path);
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("PIL baseline skipped: cannot run %s\n", c->python);
        return false;
    }
    char line[512];
    bool got = false;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "pil decode_ms %lf resize_ms %lf normalize_ms %lf total_ms %lf",
                   &pt->decode, &pt->resize, &pt->normalize, &pt->total) == 4) {
            got = true;
        }
    }
    int rc = pclose(p);
    if (!got || rc != 0) {
        printf("PIL baseline failed (exit status %d): run %s by hand to see why\n", rc, cmd);
        return false;
    }
    return true;
}

int xc_cmd_bench_preprocess(int argc, char **argv) {
    bp_conf c;
    xc_status st = xc_conf_parse(&bp_spec, &c, argc, argv, NULL);
    if (st == XC_AGAIN) {
        return 0;
    }
    if (st != XC_OK) {
        fprintf(stderr, "xcpipe bench preprocess: %s\n", xc_err_last());
        return 2;
    }
    int rc = 1, runs = c.runs, s = c.size;
    uint8_t *data = NULL, *px = NULL;
    float *t = NULL;
    double *tv = NULL;
    size_t n = 0, npx = (size_t)s * s * 3;
    char jpeg_path[64] = "", resized_path[64] = "";
    xc_image img = {0};
    xc_image_limits lim;
    xc_image_limits_default(&lim);

    st = c.image ? read_file(c.image, 0, &data, &n) : make_test_jpeg(&data, &n);
    if (st != XC_OK) {
        xc_cli_report("bench preprocess", c.image ? c.image : "test image", st);
        goto out;
    }
    snprintf(resized_path, sizeof resized_path, "/tmp/xcpipe-bench-XXXXXX");
    int fd = mkstemp(resized_path);
    if (fd < 0) {
        xc_cli_report("bench preprocess", "temp file", xc_errf(XC_ERR_IO, "mkstemp failed"));
        resized_path[0] = '\0';
        goto out;
    }
    close(fd);
    if (!c.image) {
        snprintf(jpeg_path, sizeof jpeg_path, "/tmp/xcpipe-bench-XXXXXX");
        fd = mkstemp(jpeg_path);
        if (fd < 0 || close(fd) != 0 || write_file(jpeg_path, data, n) != XC_OK) {
            xc_cli_report("bench preprocess", "temp file", xc_errf(XC_ERR_IO, "cannot write"));
            goto out;
        }
    }
    px = xc_malloc(npx);
    t = xc_malloc(npx * sizeof(float));
    tv = xc_malloc(sizeof(double) * 4 * (size_t)runs);
    if (!px || !t || !tv) {
        xc_cli_report("bench preprocess", "allocate", xc_errf(XC_ERR_NOMEM, "out of memory"));
        goto out;
    }
    xc_image_info info;
    st = xc_image_probe(data, n, &lim, &info);
    if (st != XC_OK) {
        xc_cli_report("bench preprocess", "probe", st);
        goto out;
    }
    /* Whole path first (what the worker runs), then each step alone for the breakdown. */
    for (int r = -2; r < runs; r++) {
        double t0 = xc_now_s();
        st = xc_image_preprocess(data, n, &lim, s, px, t);
        double t1 = xc_now_s();
        if (st != XC_OK) {
            xc_cli_report("bench preprocess", "preprocess", st);
            goto out;
        }
        if (r >= 0) {
            tv[r] = (t1 - t0) * 1e3;
        }
    }
    for (int r = -1; r < runs; r++) {
        double t0 = xc_now_s();
        st = xc_image_decode(data, n, &lim, &img);
        double t1 = xc_now_s();
        if (st == XC_OK) {
            st = xc_image_resize(img.rgb, img.width, img.height, px, s, s);
        }
        double t2 = xc_now_s();
        xc_image_to_tensor(px, s, s, t);
        double t3 = xc_now_s();
        xc_image_fini(&img);
        if (st != XC_OK) {
            xc_cli_report("bench preprocess", "decode/resize", st);
            goto out;
        }
        if (r >= 0) {
            tv[runs + r] = (t1 - t0) * 1e3;
            tv[2 * runs + r] = (t2 - t1) * 1e3;
            tv[3 * runs + r] = (t3 - t2) * 1e3;
        }
    }
    double c_total = median(tv, runs), c_dec = median(tv + runs, runs);
    double c_rs = median(tv + 2 * runs, runs), c_norm = median(tv + 3 * runs, runs);

    printf("xcpipe bench preprocess: %dx%d %s (%zu bytes, %s) -> %dx%d float32 tensor, median of "
           "%d runs\n",
           info.width, info.height, xc_image_format_name(info.format), n, info.mode, s, s, runs);
    pil_times pt;
    bool have_pil = run_pil(&c, c.image ? c.image : jpeg_path, resized_path, &pt);
    printf("  %-28s %10s %16s\n", "step", "C (ms)", "PIL+numpy (ms)");
    const char *names[] = {"decode (+convert RGB)", "resize bicubic", "ToTensor+Normalize",
                           "total (whole path)"};
    double cv[] = {c_dec, c_rs, c_norm, c_total};
    double pv[] = {pt.decode, pt.resize, pt.normalize, pt.total};
    for (int i = 0; i < 4; i++) {
        if (have_pil) {
            printf("  %-28s %10.2f %16.2f\n", names[i], cv[i], pv[i]);
        } else {
            printf("  %-28s %10.2f %16s\n", names[i], cv[i], "-");
        }
    }
    if (have_pil) {
        size_t got_n = 0;
        uint8_t *got = NULL;
        bool same = read_file(resized_path, 0, &got, &got_n) == XC_OK && got_n == npx &&
                    !memcmp(got, px, npx);
        xc_free(got);
        printf("  C/PIL time ratio %.2f; resized bytes identical to PIL: %s\n", c_total / pt.total,
               same ? "yes" : "NO");
        if (!same) {
            goto out;
        }
    }
    rc = 0;
out:
    if (jpeg_path[0]) {
        unlink(jpeg_path);
    }
    if (resized_path[0]) {
        unlink(resized_path);
    }
    xc_image_fini(&img);
    xc_free(data);
    xc_free(px);
    xc_free(t);
    xc_free(tv);
    return rc;
}
