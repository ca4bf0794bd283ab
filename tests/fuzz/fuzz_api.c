/* libFuzzer over the chat API's request parser (JSON body -> internal request) and, for accepted
 * requests, the prompt preparation (chat template, tokenizer, image decoding) with the tiny
 * fixture tokenizer. Oracles: no crash, no leak (ASan), a rejected body always carries an error
 * status in [400, 500] with a non-empty message and renders as valid JSON; an accepted request
 * satisfies every documented bound. The same body also goes through the /v1/completions parser
 * (and each accepted prompt's preparation), /tokenize and /detokenize (issue 14). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_api.h"
#include "xc_mem.h"

static xc_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (xc_tokenizer_load(XC_FIXTURE_DIR "/tokenizer/tiny.model", &tok) != XC_OK) {
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xc_api_conf c = {.model_name = "tiny",
                     .max_n = 4,
                     .max_stop = 4,
                     .max_tokens_limit = 64,
                     .default_max_tokens = 16,
                     .max_context = 512,
                     .max_images = 2,
                     .max_image_bytes = 1 << 16,
                     .max_pixels = 1 << 16,
                     .image_size = 28,
                     .image_tokens = 4,
                     .variant = XC_CHAT_VARIANT_7B};
    xc_api_request r;
    xc_api_error e;
    char *out = NULL;
    for (int k = 0; k < 2; k++) {
        if ((k ? xc_api_detokenize : xc_api_tokenize)(&c, tok, (const char *)data, size, &out,
                                                      &e) == XC_OK) {
            cJSON *o = cJSON_Parse(out);
            if (!o) {
                abort();
            }
            cJSON_Delete(o);
        } else if (e.http_status < 400 || !e.message[0]) {
            abort();
        }
        xc_free(out);
    }
    if (xc_api_parse_completion(&c, tok, (const char *)data, size, &r, &e) == XC_OK) {
        if (r.n_prompts < 1 || r.n_prompts * r.n > 4 || r.max_tokens < 1 || r.max_tokens > 64) {
            abort();
        }
        for (int k = 0; k < r.n_prompts; k++) {
            xc_api_prepared p;
            if (xc_api_prepare_prompt(&c, tok, &r, k, &p, &e) == XC_OK) {
                if ((long)p.req.n + p.req.max_new_tokens > 512) {
                    abort();
                }
                xc_api_prepared_fini(&p);
            }
        }
        xc_api_request_fini(&r);
    } else if (e.http_status < 400 || !e.message[0]) {
        abort();
    }
    xc_status st = xc_api_parse(&c, (const char *)data, size, &r, &e);
    if (st != XC_OK) {
        if (e.http_status < 400 || e.http_status > 500 || !e.message[0]) {
            abort();
        }
        char *js = xc_api_error_json(&e);
        cJSON *o = js ? cJSON_Parse(js) : NULL;
        if (js && !o) {
            abort();
        }
        cJSON_Delete(o);
        xc_free(js);
        return 0;
    }
    if (r.n < 1 || r.n > 4 || r.n_stop > 4 || r.n_images > 2 || r.max_tokens > 64 ||
        r.max_tokens < 0 || !r.query || !(r.top_p > 0 && r.top_p <= 1) || r.top_k < 0 ||
        r.top_logprobs > XC_API_MAX_TOP_LOGPROBS || (r.top_logprobs && !r.logprobs)) {
        abort();
    }
    xc_api_prepared p;
    if (xc_api_prepare(&c, tok, &r, &p, &e) == XC_OK) {
        if (p.req.n < 1 || (long)p.req.n + p.req.max_new_tokens > 512 ||
            p.req.n_img != r.n_images) {
            abort();
        }
        xc_api_prepared_fini(&p);
    } else if (e.http_status < 400 || !e.message[0]) {
        abort();
    }
    xc_api_request_fini(&r);
    return 0;
}
