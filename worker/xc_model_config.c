/* config.json parsing with cJSON: every key the decoder needs, validated. */
#include "xc_model_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "xc_mem.h"
#include "xc_mmap.h"

#define CONFIG_MAX_BYTES (4u << 20)

static xc_status get_int(const cJSON *root, const char *key, bool required, int def, int lo,
                         int hi, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            return xc_errf(XC_ERR_PROTO, "config.json: missing required key \"%s\"", key);
        }
        *out = def;
        return XC_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble)) {
        return xc_errf(XC_ERR_PROTO, "config.json: \"%s\" must be an integer", key);
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        return xc_errf(XC_ERR_PROTO, "config.json: \"%s\" = %g is out of range [%d, %d]", key,
                       v->valuedouble, lo, hi);
    }
    *out = (int)v->valuedouble;
    return XC_OK;
}

static xc_status get_float(const cJSON *root, const char *key, double def, double lo, double hi,
                           float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = (float)def;
        return XC_OK;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        return xc_errf(XC_ERR_PROTO, "config.json: \"%s\" must be a number in [%g, %g]", key, lo,
                       hi);
    }
    *out = (float)v->valuedouble;
    return XC_OK;
}

static xc_status get_bool(const cJSON *root, const char *key, bool def, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return XC_OK;
    }
    if (!cJSON_IsBool(v)) {
        return xc_errf(XC_ERR_PROTO, "config.json: \"%s\" must be true or false", key);
    }
    *out = cJSON_IsTrue(v);
    return XC_OK;
}

static void get_str(const cJSON *v, char *out, size_t cap) {
    out[0] = '\0';
    if (v && cJSON_IsString(v) && v->valuestring) {
        snprintf(out, cap, "%s", v->valuestring);
    }
}

static xc_status parse_root(const cJSON *root, xc_model_config *c) {
    if (!cJSON_IsObject(root)) {
        return xc_errf(XC_ERR_PROTO, "config.json: top level is not an object");
    }
    XC_TRY(get_int(root, "hidden_size", true, 0, 1, 1 << 16, &c->hidden_size));
    XC_TRY(get_int(root, "intermediate_size", true, 0, 1, 1 << 18, &c->intermediate_size));
    XC_TRY(get_int(root, "num_hidden_layers", true, 0, 1, 1024, &c->num_hidden_layers));
    XC_TRY(get_int(root, "num_attention_heads", true, 0, 1, 1024, &c->num_attention_heads));
    XC_TRY(get_int(root, "num_key_value_heads", false, c->num_attention_heads, 1, 1024,
                   &c->num_key_value_heads));
    XC_TRY(get_int(root, "vocab_size", true, 0, 1, 1 << 24, &c->vocab_size));
    XC_TRY(get_float(root, "rms_norm_eps", 1e-6, 0.0, 1.0, &c->rms_norm_eps));
    XC_TRY(get_float(root, "rope_theta", 10000.0, 1.0, 1e12, &c->rope_theta));
    XC_TRY(get_int(root, "max_position_embeddings", false, 2048, 1, 1 << 24,
                   &c->max_position_embeddings));
    XC_TRY(get_int(root, "max_length", false, 4096, 1, 1 << 24, &c->max_length));
    XC_TRY(get_int(root, "img_size", false, 0, 0, 8192, &c->img_size));
    XC_TRY(get_int(root, "bos_token_id", false, 1, 0, 1 << 24, &c->bos_token_id));
    XC_TRY(get_int(root, "eos_token_id", false, 2, 0, 1 << 24, &c->eos_token_id));
    XC_TRY(get_int(root, "pad_token_id", false, 2, 0, 1 << 24, &c->pad_token_id));
    XC_TRY(get_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings));
    XC_TRY(get_bool(root, "bias", false, &c->bias));

    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    c->rope_scaling_factor = 1.0f;
    c->rope_scaling_type[0] = '\0';
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs)) {
            return xc_errf(XC_ERR_PROTO, "config.json: \"rope_scaling\" must be an object or null");
        }
        get_str(cJSON_GetObjectItemCaseSensitive(rs, "type"), c->rope_scaling_type,
                sizeof c->rope_scaling_type);
        XC_TRY(get_float(rs, "factor", 1.0, 1e-3, 1e6, &c->rope_scaling_factor));
        if (strcmp(c->rope_scaling_type, "dynamic") && strcmp(c->rope_scaling_type, "linear")) {
            return xc_errf(XC_ERR_UNSUPPORTED, "config.json: rope_scaling type \"%s\" unsupported",
                           c->rope_scaling_type);
        }
    }
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    get_str(cJSON_IsArray(arch) ? cJSON_GetArrayItem(arch, 0) : NULL, c->architecture,
            sizeof c->architecture);
    get_str(cJSON_GetObjectItemCaseSensitive(root, "model_type"), c->model_type,
            sizeof c->model_type);

    if (c->hidden_size % c->num_attention_heads != 0) {
        return xc_errf(XC_ERR_PROTO, "config.json: hidden_size %d is not a multiple of "
                                     "num_attention_heads %d",
                       c->hidden_size, c->num_attention_heads);
    }
    if (c->num_attention_heads % c->num_key_value_heads != 0) {
        return xc_errf(XC_ERR_PROTO, "config.json: num_attention_heads %d is not a multiple of "
                                     "num_key_value_heads %d",
                       c->num_attention_heads, c->num_key_value_heads);
    }
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (c->head_dim % 2 != 0) {
        return xc_errf(XC_ERR_PROTO, "config.json: head dim %d is odd (RoPE needs pairs)",
                       c->head_dim);
    }
    if (c->tie_word_embeddings) {
        return xc_errf(XC_ERR_UNSUPPORTED, "config.json: tie_word_embeddings=true is not "
                                           "XComposer2 (its output head is untied)");
    }
    if (c->bias) {
        return xc_errf(XC_ERR_UNSUPPORTED, "config.json: bias=true is not supported");
    }
    if (c->bos_token_id >= c->vocab_size || c->eos_token_id >= c->vocab_size) {
        return xc_errf(XC_ERR_PROTO, "config.json: bos/eos ids outside the vocabulary");
    }
    return XC_OK;
}

xc_status xc_model_config_parse(const char *json, size_t len, xc_model_config *out) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = (at && at >= json && at <= json + len) ? (size_t)(at - json) : 0;
        return xc_errf(XC_ERR_PROTO, "config.json: invalid JSON near byte %zu", off);
    }
    xc_model_config c;
    memset(&c, 0, sizeof c);
    xc_status st = parse_root(root, &c);
    cJSON_Delete(root);
    if (st == XC_OK) {
        *out = c;
    }
    return st;
}

xc_status xc_model_config_load(const char *path, xc_model_config *out) {
    char file[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(file, sizeof file, "%s/config.json", path);
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    char *text = NULL;
    size_t len = 0;
    XC_TRY(xc_file_read_all(file, CONFIG_MAX_BYTES, &text, &len));
    xc_status st = xc_model_config_parse(text, len, out);
    xc_free(text);
    return st;
}
