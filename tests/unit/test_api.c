/* Tests of the chat API's request parser (every parameter, every error with its status and
 * param), prompt preparation (against xc_chat_build and xc_image_preprocess on the raw file),
 * stop strings (against a naive cut of the whole decoded text), and the response JSON (parsed
 * back with cJSON). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_api.h"
#include "xc_arena.h"
#include "xc_chat.h"
#include "xc_image.h"
#include "xc_mem.h"
#include "xc_mmap.h"
#include "xc_sampler.h"
#include "xc_sha256.h"
#include "xc_test.h"
#include "xc_tokenizer.h"
#include "xc_wire.h"

#define TOKFILE XC_FIXTURE_DIR "/tokenizer/tiny.model"
#define IMGFILE XC_FIXTURE_DIR "/image/src/png_p4bit_80x60.png"

static xc_api_conf conf_default(void) {
    return (xc_api_conf){.model_name = "tiny",
                         .max_n = 4,
                         .max_stop = 4,
                         .max_tokens_limit = 100,
                         .default_max_tokens = 50,
                         .max_context = 400,
                         .max_images = 2,
                         .max_image_bytes = 1 << 20,
                         .max_pixels = 1000000,
                         .image_size = 56,
                         .image_tokens = 16,
                         .media_dir = NULL,
                         .variant = XC_CHAT_VARIANT_7B};
}

static xc_status parse(const xc_api_conf *c, const char *body, xc_api_request *r, xc_api_error *e) {
    return xc_api_parse(c, body, strlen(body), r, e);
}

/* Expects body to fail with status and param. */
static void expect_error(const xc_api_conf *c, const char *body, int status, const char *param) {
    xc_api_request r;
    xc_api_error e;
    xc_status st = parse(c, body, &r, &e);
    if (st == XC_OK) {
        xc_api_request_fini(&r);
        fail_msg("accepted: %s", body);
    }
    if (e.http_status != status || strcmp(e.param, param) != 0) {
        fail_msg("%s -> %d '%s' (%s), want %d '%s'", body, e.http_status, e.param, e.message,
                 status, param);
    }
    assert_true(e.message[0] != 0);
    /* the error renders as OpenAI's shape */
    char *js = xc_api_error_json(&e);
    cJSON *o = cJSON_Parse(js);
    xc_free(js);
    cJSON *err = cJSON_GetObjectItem(o, "error");
    assert_true(cJSON_IsString(cJSON_GetObjectItem(err, "message")));
    assert_true(cJSON_IsString(cJSON_GetObjectItem(err, "type")));
    assert_non_null(cJSON_GetObjectItem(err, "param"));
    assert_non_null(cJSON_GetObjectItem(err, "code"));
    cJSON_Delete(o);
}

static void test_api_parse_defaults(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
    xc_api_request r;
    xc_api_error e;
    assert_int_equal(
        parse(&c, "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r,
              &e),
        XC_OK);
    assert_string_equal(r.model, "tiny");
    assert_null(r.system);
    assert_int_equal(r.n_history, 0);
    assert_string_equal(r.query, "hi");
    assert_int_equal(r.n, 1);
    assert_int_equal(r.max_tokens, 0);
    assert_false(r.greedy);
    assert_true(r.temperature == 1.0f && r.top_p == 1.0f && r.repetition_penalty == 1.0f);
    assert_int_equal(r.top_k, 0);
    assert_false(r.has_seed || r.stream || r.logprobs || r.include_usage);
    assert_int_equal(r.n_stop, 0);
    xc_api_request_fini(&r);
}

static void test_api_parse_every_parameter(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
    xc_api_request r;
    xc_api_error e;
    const char *body =
        "{\"model\":\"tiny\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"and kind\"}]},"
        "{\"role\":\"user\",\"content\":\"q1\",\"name\":\"bob\"},"
        "{\"role\":\"assistant\",\"content\":\"a1\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look\"},"
        "{\"type\":\"text\",\"text\":\"here\"}]}],"
        "\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":-1,"
        "\"repetition_penalty\":1.1,\"stop\":[\"a\",\"bc\"],\"seed\":-3,\"n\":3,"
        "\"logprobs\":true,\"top_logprobs\":5,\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"user\":\"u\",\"frequency_penalty\":0,"
        "\"presence_penalty\":0,\"logit_bias\":{},\"response_format\":{\"type\":\"text\"},"
        "\"ignore_eos\":true}";
    assert_int_equal(parse(&c, body, &r, &e), XC_OK);
    assert_string_equal(r.system, "be brief\nand kind");
    assert_int_equal(r.n_history, 1);
    assert_string_equal(r.history[0].user, "q1");
    assert_string_equal(r.history[0].assistant, "a1");
    assert_string_equal(r.query, "look\nhere");
    assert_int_equal(r.max_tokens, 7);
    assert_true(fabsf(r.temperature - 0.5f) < 1e-7f && fabsf(r.top_p - 0.9f) < 1e-7f);
    assert_int_equal(r.top_k, 0);
    assert_true(fabsf(r.repetition_penalty - 1.1f) < 1e-6f);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[1], "bc");
    assert_true(r.has_seed);
    assert_true(r.seed == (uint64_t)-3);
    assert_int_equal(r.n, 3);
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 5);
    assert_true(r.stream && r.include_usage && r.ignore_eos);
    xc_api_request_fini(&r);
    /* temperature 0 is greedy; a single stop string; max_tokens; null means absent */
    assert_int_equal(parse(&c,
                           "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}"
                           "],\"temperature\":0,\"stop\":\"END\",\"max_tokens\":3,\"seed\":null,"
                           "\"top_k\":4}",
                           &r, &e),
                     XC_OK);
    assert_true(r.greedy);
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "END");
    assert_int_equal(r.max_tokens, 3);
    assert_int_equal(r.top_k, 4);
    assert_false(r.has_seed);
    xc_api_request_fini(&r);
}

static void test_api_parse_errors(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
#define U "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"
    expect_error(&c, "", 400, "");
    expect_error(&c, "{\"model\":", 400, "");
    expect_error(&c, "[1,2]", 400, "");
    xc_api_conf anon = c; /* model is optional only when the server names its model */
    anon.model_name = NULL;
    expect_error(&anon, "{" U "}", 400, "model");
    expect_error(&c, "{\"model\":5," U "}", 400, "model");
    expect_error(&c, "{\"model\":\"gpt-4\"," U "}", 404, "model");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"bogus\":1}", 400, "bogus");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"n\":1,\"n\":2}", 400, "n");
    expect_error(&c, "{\"model\":\"tiny\"}", 400, "messages");
    expect_error(&c, "{\"model\":\"tiny\",\"messages\":[]}", 400, "messages");
    expect_error(&c, "{\"model\":\"tiny\",\"messages\":{}}", 400, "messages");
    expect_error(&c, "{\"model\":\"tiny\",\"messages\":[5]}", 400, "messages[0]");
    expect_error(&c, "{\"model\":\"tiny\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}",
                 400, "messages[0]");
    expect_error(&c, "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0]");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\","
                 "\"tool_calls\":[]}]}",
                 400, "messages[0]");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
                 "{\"role\":\"assistant\",\"content\":\"y\"}]}",
                 400, "messages");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"assistant\",\"content\":\"y\"},"
                 "{\"role\":\"user\",\"content\":\"x\"}]}",
                 400, "messages[0]");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
                 "{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"x\"}]}",
                 400, "messages[1]");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"a "
                 "<ImageHere>\"}]}",
                 400, "messages[0].content");
    expect_error(&c, "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":7}]}", 400,
                 "messages[0].content");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"audio\"}]}]}",
                 400, "messages[0].content[0]");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"text\"}]}]}",
                 400, "messages[0].content[0]");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"max_tokens\":0}", 400, "max_tokens");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"max_tokens\":1.5}", 400, "max_tokens");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"max_tokens\":101}", 400, "max_tokens");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"max_completion_tokens\":\"5\"}", 400,
                 "max_completion_tokens");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"max_tokens\":5,\"max_completion_tokens\":6}", 400,
                 "max_completion_tokens");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"temperature\":2.5}", 400, "temperature");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"temperature\":-1}", 400, "temperature");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"temperature\":\"hot\"}", 400, "temperature");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"top_p\":0}", 400, "top_p");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"top_p\":1.01}", 400, "top_p");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"top_k\":-2}", 400, "top_k");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"top_k\":2.5}", 400, "top_k");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"repetition_penalty\":0}", 400,
                 "repetition_penalty");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"frequency_penalty\":2.5}", 400,
                 "frequency_penalty");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"presence_penalty\":-3}", 400, "presence_penalty");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"logit_bias\":{\"x\":5}}", 400, "logit_bias");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"logit_bias\":{\"1\":101}}", 400, "logit_bias");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"logit_bias\":[1]}", 400, "logit_bias");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"min_p\":1.5}", 400, "min_p");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"min_tokens\":-1}", 400, "min_tokens");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stop_token_ids\":[-1]}", 400, "stop_token_ids");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"skip_special_tokens\":1}", 400,
                 "skip_special_tokens");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"tools\":[{\"type\":\"function\"}]}", 400,
                 "tools");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"tool_choice\":\"required\"}", 400, "tool_choice");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"response_format\":{\"type\":\"json_object\"}}",
                 400, "response_format");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"user\":1}", 400, "user");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"seed\":\"x\"}", 400, "seed");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"seed\":0.5}", 400, "seed");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"seed\":18446744073709551616}", 400, "seed");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"seed\":-9223372036854775809}", 400, "seed");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"seed\":1e3}", 400, "seed");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"n\":0}", 400, "n");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"n\":5}", 400, "n");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stop\":5}", 400, "stop");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stop\":[\"\"]}", 400, "stop");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stop\":[\"a\",1]}", 400, "stop");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400,
                 "stop");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"logprobs\":1}", 400, "logprobs");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"top_logprobs\":2}", 400, "top_logprobs");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"logprobs\":true,\"top_logprobs\":21}", 400,
                 "top_logprobs");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stream\":\"yes\"}", 400, "stream");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"ignore_eos\":1}", 400, "ignore_eos");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stream_options\":{\"include_usage\":true}}", 400,
                 "stream_options");
    expect_error(&c, "{\"model\":\"tiny\"," U ",\"stream\":true,\"stream_options\":{\"x\":true}}",
                 400, "stream_options");
#undef U
    /* a stop string longer than the limit */
    char body[1024];
    char longstop[XC_API_MAX_STOP_LEN + 2];
    memset(longstop, 'a', sizeof longstop - 1);
    longstop[sizeof longstop - 1] = 0;
    snprintf(body, sizeof body,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":"
             "\"%s\"}",
             longstop);
    expect_error(&c, body, 400, "stop");
}

/* base64 of a file's bytes. */
static char *b64_file(const char *path, size_t *raw_len) {
    char *data = NULL;
    size_t n = 0;
    assert_int_equal(xc_file_read_all(path, 1 << 24, &data, &n), XC_OK);
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = xc_malloc(n * 4 / 3 + 8);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)data[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)(unsigned char)data[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= (unsigned char)data[i + 2];
        }
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = 0;
    xc_free(data);
    *raw_len = n;
    return out;
}

static char *image_body(const char *b64, int n_images, const char *extra) {
    size_t cap = strlen(b64) * (size_t)(n_images + 1) + 1024;
    char *b = xc_malloc(cap);
    size_t o = (size_t)snprintf(b, cap,
                                "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\","
                                "\"content\":[");
    for (int i = 0; i < n_images; i++) {
        o += (size_t)snprintf(b + o, cap - o,
                              "{\"type\":\"image_url\",\"image_url\":{\"url\":"
                              "\"data:image/png;base64,%s\"}},",
                              b64);
    }
    snprintf(b + o, cap - o, "{\"type\":\"text\",\"text\":\"what?\"}]}]%s}", extra);
    return b;
}

static void test_api_images_and_prepare(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_load(TOKFILE, &tok), XC_OK);
    size_t raw = 0;
    char *b64 = b64_file(IMGFILE, &raw);
    char *body = image_body(b64, 1, ",\"max_tokens\":9,\"temperature\":0");
    xc_api_request r;
    xc_api_error e;
    assert_int_equal(parse(&c, body, &r, &e), XC_OK);
    assert_int_equal(r.n_images, 1);
    assert_int_equal(r.images[0].len, raw);
    assert_string_equal(r.query, "<ImageHere>what?");
    xc_api_prepared p;
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_OK);
    /* the prompt as xc_chat_build makes it */
    xc_chat_request cr = {.variant = XC_CHAT_VARIANT_7B,
                          .query = "<ImageHere>what?",
                          .n_images = 1,
                          .tokens_per_image = 16};
    xc_chat_prompt cp;
    assert_int_equal(xc_chat_build(tok, &cr, &cp), XC_OK);
    assert_int_equal(p.req.n, (int)cp.n);
    assert_int_equal(p.prompt_tokens, (int)cp.n);
    assert_int_equal(p.image_tokens, 16);
    assert_int_equal(p.req.n_img, 1);
    assert_int_equal(p.req.img[0].start, (int)cp.images[0].start);
    assert_int_equal(p.req.img[0].end, (int)cp.images[0].end);
    for (size_t i = 0; i < cp.n; i++) {
        assert_int_equal(p.req.ids[i], cp.ids[i] < 0 ? 0 : cp.ids[i]);
    }
    xc_chat_prompt_fini(&cp);
    /* the pixels as xc_image_preprocess gives them from the file */
    char *data = NULL;
    size_t n = 0;
    assert_int_equal(xc_file_read_all(IMGFILE, 1 << 24, &data, &n), XC_OK);
    float *want = xc_malloc(3 * 56 * 56 * sizeof(float));
    assert_int_equal(xc_image_preprocess(data, n, NULL, 56, NULL, want), XC_OK);
    assert_memory_equal(want, p.req.pixels, 3 * 56 * 56 * sizeof(float));
    xc_free(want);
    xc_free(data);
    assert_true(p.req.sampling.greedy);
    assert_int_equal(p.req.max_new_tokens, 9);
    assert_int_equal(p.req.n_stop_ids, 2);
    assert_int_equal(p.req.stop_ids[0], 2);
    assert_int_equal(p.req.stop_ids[1], 148);
    assert_false(p.req.penalize_prompt);
    xc_api_prepared_fini(&p);
    xc_api_request_fini(&r);
    xc_free(body);
    /* too many images; a server without vision */
    body = image_body(b64, 3, "");
    expect_error(&c, body, 400, "messages");
    xc_free(body);
    xc_api_conf nov = c;
    nov.image_size = 0;
    body = image_body(b64, 1, "");
    expect_error(&nov, body, 400, "messages[0].content[0]");
    /* bytes over the limit */
    xc_api_conf small = c;
    small.max_image_bytes = raw - 1;
    expect_error(&small, body, 400, "messages[0].content[0]");
    /* pixels over the limit: parsed, refused while preparing */
    xc_api_conf tinypx = c;
    tinypx.max_pixels = 80 * 60 - 1;
    assert_int_equal(parse(&tinypx, body, &r, &e), XC_OK);
    assert_int_equal(xc_api_prepare(&tinypx, tok, &r, &p, &e), XC_ERR_ARG);
    assert_int_equal(e.http_status, 400);
    assert_string_equal(e.code, "image_too_large");
    xc_api_request_fini(&r);
    xc_free(body);
    xc_free(b64);
    /* an image part in an assistant message, bad base64, not an image, http and file URLs */
    const char *bad[] = {
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
        "\"assistant\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/"
        "png;base64,AAAA\"}}]},{\"role\":\"user\",\"content\":\"b\"}]}",
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
        "\"image_url\":{\"url\":\"data:image/png;base64,A*AA\"}}]}]}",
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
        "\"image_url\":{\"url\":\"data:text/plain;base64,AAAA\"}}]}]}",
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
        "\"image_url\":{\"url\":\"data:image/png,AAAA\"}}]}]}",
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
        "\"image_url\":{\"url\":\"https://example.com/a.png\"}}]}]}",
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
        "\"image_url\":{\"url\":\"file:///etc/passwd\"}}]}]}",
        "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
        "\"image_url\":{\"url\":\"data:image/png;base64,AAAA\",\"x\":1}}]}]}",
    };
    const char *bad_param[] = {"messages[1].content[0]", "messages[0].content[0]",
                               "messages[0].content[0]", "messages[0].content[0]",
                               "messages[0].content[0]", "messages[0].content[0]",
                               "messages[0].content[0]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        expect_error(&c, bad[i], 400, bad_param[i]);
    }
    /* garbage bytes that are valid base64 parse, but do not decode as an image */
    assert_int_equal(parse(&c,
                           "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{"
                           "\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,"
                           "AAAAAAAA\"}}]}]}",
                           &r, &e),
                     XC_OK);
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_ERR_ARG);
    assert_int_equal(e.http_status, 400);
    xc_api_request_fini(&r);
    xc_tokenizer_destroy(tok);
}

/* Data URLs: random bytes of every length from 1 to 200 bytes, encoded here bit by bit in the
 * standard or the URL alphabet, with and without padding, decode to the same bytes; one digit
 * replaced by a byte outside both alphabets (or '=' inside), or a length of 1 mod 4, is a 400. */
static void test_api_base64_round_trip(void **state) {
    (void)state;
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    static const char bad[] = "*.= !~\t";
    xc_api_conf c = conf_default();
    unsigned seed = 11;
    uint8_t raw[200];
    char enc[300], body[600];
    for (size_t n = 1; n <= sizeof raw; n++) {
        for (int variant = 0; variant < 4; variant++) {
            for (size_t i = 0; i < n; i++) {
                raw[i] = (uint8_t)(rand_r(&seed) >> 7);
            }
            const char *tbl = variant & 1 ? url : std;
            size_t k = 0;
            for (size_t bit = 0; bit < n * 8; bit += 6) { /* 6 bits at a time, zero-filled */
                unsigned v = 0;
                for (size_t b = bit; b < bit + 6; b++) {
                    v = v << 1 | (b < n * 8 ? (raw[b / 8] >> (7 - b % 8)) & 1u : 0u);
                }
                enc[k++] = tbl[v];
            }
            while (variant & 2 && k % 4) {
                enc[k++] = '=';
            }
            enc[k] = 0;
            snprintf(body, sizeof body,
                     "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                     "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,%s\"}}]}]}",
                     enc);
            xc_api_request r;
            xc_api_error e;
            assert_int_equal(parse(&c, body, &r, &e), XC_OK);
            assert_int_equal(r.n_images, 1);
            assert_int_equal(r.images[0].len, n);
            assert_memory_equal(r.images[0].data, raw, n);
            xc_api_request_fini(&r);
            /* one digit (not padding) replaced by a byte of neither alphabet */
            size_t digits = (n * 8 + 5) / 6, at = (size_t)rand_r(&seed) % digits;
            enc[at] = bad[(size_t)rand_r(&seed) % (sizeof bad - 1)];
            snprintf(body, sizeof body,
                     "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                     "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,%s\"}}]}]}",
                     enc);
            bool trailing_pad = enc[at] == '=' && at + 1 == k; /* then it is only shorter */
            if (!trailing_pad) {
                expect_error(&c, body, 400, "messages[0].content[0]");
            }
        }
    }
    /* 1 digit past a whole quad is no byte at all */
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAAB\"}}]}]}",
                 400, "messages[0].content[0]");
}

/* base64 of raw[0, n) in alphabet tbl, padded or not, '\/' for '/' when escape (JSON allows it). */
static size_t b64_enc(const uint8_t *raw, size_t n, const char *tbl, bool pad, bool escape,
                      char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? (uint32_t)raw[i + 1] << 8 : 0u) |
                     (i + 2 < n ? raw[i + 2] : 0u);
        int digits = i + 2 < n ? 4 : i + 1 < n ? 3 : 2;
        for (int d = 0; d < 4; d++) {
            char ch = d < digits ? tbl[(v >> (18 - 6 * d)) & 63] : '=';
            if (ch == '=' && !pad) {
                break;
            }
            if (ch == '/' && escape) {
                out[k++] = '\\';
            }
            out[k++] = ch;
        }
    }
    out[k] = 0;
    return k;
}

/* Large data URLs are decoded straight from the body before cJSON parses it (xc_api_parse):
 * random images of 3-60 KB in both alphabets, padded or not, as image_url.url and as a bare
 * image_url string, two in one request, decode to their bytes in order; a payload with '\/'
 * escapes (the usual path) too; one bad digit in a large payload is the same 400 as in a small
 * one; a large data URL that is a text part stays text, unchanged; a tag written by the client
 * in the lifted form decodes as the base64 it is (the same bytes as alone). */
static void test_api_large_data_urls(void **state) {
    (void)state;
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    xc_api_conf c = conf_default();
    c.max_images = 4;
    unsigned seed = 3;
    size_t sizes[] = {3000, 3073, 3074, 3075, 10000, 60001};
    size_t cap = 2 * 60001 * 2 + 4096;
    uint8_t *raw[2] = {xc_malloc(60001), xc_malloc(60001)};
    char *enc[2] = {xc_malloc(60001 * 2 + 8), xc_malloc(60001 * 2 + 8)};
    char *body = xc_malloc(cap);
    assert_true(raw[0] && raw[1] && enc[0] && enc[1] && body);
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        for (int variant = 0; variant < 8; variant++) {
            size_t n[2] = {sizes[t], sizes[(t + 3) % 6]};
            for (int i = 0; i < 2; i++) {
                for (size_t k = 0; k < n[i]; k++) {
                    raw[i][k] = (uint8_t)(rand_r(&seed) >> 9);
                }
                b64_enc(raw[i], n[i], variant & 1 ? url : std, variant & 2, variant == 4, enc[i]);
            }
            snprintf(body, cap,
                     "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                     "\"image_url\",\"image_url\":{\"url\" :\n \"data:image/png;base64,%s\"}},"
                     "{\"type\":\"text\",\"text\":\"x\"},{\"type\":\"image_url\",\"image_url\":"
                     "\"data:image/jpeg;base64,%s\"}]}]}",
                     enc[0], enc[1]);
            xc_api_request r;
            xc_api_error e;
            if (parse(&c, body, &r, &e) != XC_OK) {
                fail_msg("size %zu variant %d: %s", n[0], variant, e.message);
            }
            assert_int_equal(r.n_images, 2);
            for (int i = 0; i < 2; i++) {
                assert_int_equal(r.images[i].len, n[i]);
                assert_memory_equal(r.images[i].data, raw[i], n[i]);
            }
            xc_api_request_fini(&r);
        }
    }
    /* one bad digit in the middle of a large payload */
    size_t k = b64_enc(raw[0], 30000, std, true, false, enc[0]);
    enc[0][k / 2] = '*';
    snprintf(body, cap,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
             "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,%s\"}}]}]}",
             enc[0]);
    expect_error(&c, body, 400, "messages[0].content[0]");
    /* a large data URL as text stays text */
    b64_enc(raw[0], 30000, std, true, false, enc[0]);
    snprintf(body, cap,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
             "\"text\",\"text\":\"data:image/png;base64,%s\"}]}]}",
             enc[0]);
    xc_api_request r;
    xc_api_error e;
    assert_int_equal(parse(&c, body, &r, &e), XC_OK);
    assert_int_equal(r.n_images, 0);
    assert_true(!strncmp(r.query, "data:image/png;base64,", 22));
    assert_string_equal(r.query + 22, enc[0]);
    xc_api_request_fini(&r);
    /* a client's own tag beside a lifted image: decoded as base64, like alone */
    const char *tag = "xc-lifted-0123456789abcdef-0";
    snprintf(body, cap,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
             "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,%s\"}}]}]}",
             tag);
    assert_int_equal(parse(&c, body, &r, &e), XC_OK);
    size_t alone_len = r.images[0].len;
    uint8_t alone[64];
    assert_true(alone_len <= sizeof alone);
    memcpy(alone, r.images[0].data, alone_len);
    xc_api_request_fini(&r);
    snprintf(body, cap,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
             "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,%s\"}},{\"type\":"
             "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,%s\"}}]}]}",
             enc[0], tag);
    assert_int_equal(parse(&c, body, &r, &e), XC_OK);
    assert_int_equal(r.n_images, 2);
    assert_int_equal(r.images[0].len, 30000);
    assert_memory_equal(r.images[0].data, raw[0], 30000);
    assert_int_equal(r.images[1].len, alone_len);
    assert_memory_equal(r.images[1].data, alone, alone_len);
    xc_api_request_fini(&r);
    for (int i = 0; i < 2; i++) {
        xc_free(raw[i]);
        xc_free(enc[i]);
    }
    xc_free(body);
}

static void test_api_file_urls(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
    c.media_dir = XC_FIXTURE_DIR "/image/src";
    xc_api_request r;
    xc_api_error e;
    assert_int_equal(parse(&c,
                           "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{"
                           "\"type\":\"image_url\",\"image_url\":{\"url\":\"file://" XC_FIXTURE_DIR
                           "/image/src/png%5Fp4bit_80x60.png\"}}]}]}",
                           &r, &e),
                     XC_OK);
    char *data = NULL;
    size_t n = 0;
    assert_int_equal(xc_file_read_all(IMGFILE, 1 << 24, &data, &n), XC_OK);
    assert_int_equal(r.images[0].len, n);
    assert_memory_equal(r.images[0].data, data, n);
    xc_free(data);
    xc_api_request_fini(&r);
    /* escaping the directory with .. (an existing file), a missing file inside it and one
     * outside it: the same 403 and the same message (nothing tells which files exist) */
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"image_url\",\"image_url\":{\"url\":\"file://" XC_FIXTURE_DIR
                 "/image/src/../../tokenizer/tiny.meta\"}}]}]}",
                 403, "messages[0].content[0]");
    expect_error(&c,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"image_url\",\"image_url\":{\"url\":\"file://" XC_FIXTURE_DIR
                 "/image/src/nope.png\"}}]}]}",
                 403, "messages[0].content[0]");
    const char *paths[] = {"/image/src/../../tokenizer/tiny.meta", "/image/src/nope.png",
                           "/nope/x.png"};
    char msg[3][512];
    for (int i = 0; i < 3; i++) {
        char body[1024];
        snprintf(body, sizeof body,
                 "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"image_url\",\"image_url\":{\"url\":\"file://%s%s\"}}]}]}",
                 XC_FIXTURE_DIR, paths[i]);
        assert_int_equal(parse(&c, body, &r, &e), XC_ERR_ARG);
        assert_int_equal(e.http_status, 403);
        snprintf(msg[i], sizeof msg[i], "%s", e.message);
    }
    assert_string_equal(msg[0], msg[1]);
    assert_string_equal(msg[0], msg[2]);
}

/* The prepared pixels and their hash of `file` sent as the only image, through conf. */
static void prepare_image(const xc_api_conf *conf, const xc_tokenizer *tok, const char *file,
                          float *pixels, uint64_t *hash) {
    size_t raw = 0;
    char *b64 = b64_file(file, &raw);
    char *body = image_body(b64, 1, "");
    xc_api_request r;
    xc_api_error e;
    assert_int_equal(parse(conf, body, &r, &e), XC_OK);
    xc_api_prepared p;
    assert_int_equal(xc_api_prepare(conf, tok, &r, &p, &e), XC_OK);
    assert_non_null(p.req.img_hash);
    memcpy(pixels, p.req.pixels, 3 * 56 * 56 * sizeof(float));
    *hash = p.req.img_hash[0];
    xc_api_prepared_fini(&p);
    xc_api_request_fini(&r);
    xc_free(body);
    xc_free(b64);
}

/* The input image cache: a re-sent image gives the same pixels and pixel hash (SHA-256 of the
 * pixels, as xc_coord_submit computes it) as decoding it does; the least recently used image is
 * evicted to stay within the bytes given; off (NULL) gives the same answers. */
static void test_api_image_input_cache(void **state) {
    (void)state;
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_load(TOKFILE, &tok), XC_OK);
    const char *files[2] = {IMGFILE, XC_FIXTURE_DIR "/image/src/jpg_444_333x250.jpg"};
    size_t per = 3 * 56 * 56 * sizeof(float);
    float *want[2], *got = xc_malloc(per);
    uint64_t want_hash[2], h = 0;
    xc_api_conf plain = conf_default();
    for (int i = 0; i < 2; i++) { /* no cache: decoded each time */
        want[i] = xc_malloc(per);
        prepare_image(&plain, tok, files[i], want[i], &want_hash[i]);
        uint8_t d[32];
        xc_sha256_sum(want[i], per, d);
        uint64_t ref = 0;
        for (int k = 0; k < 8; k++) {
            ref = ref << 8 | d[k];
        }
        assert_true(want_hash[i] == ref);
    }
    xc_api_conf c = conf_default();
    assert_int_equal(xc_api_imgcache_create(per + per / 2, &c.imgcache), XC_OK); /* room for 1 */
    uint64_t hits, misses;
    size_t bytes;
    int entries;
    int seq[5] = {0, 0, 1, 1, 0}; /* miss, hit, miss (evicts 0), hit, miss */
    int want_hits[5] = {0, 1, 1, 2, 2};
    for (int t = 0; t < 5; t++) {
        int i = seq[t];
        prepare_image(&c, tok, files[i], got, &h);
        assert_memory_equal(got, want[i], per);
        assert_true(h == want_hash[i]);
        xc_api_imgcache_stats(c.imgcache, &hits, &misses, &entries, &bytes);
        assert_int_equal(hits, want_hits[t]);
        assert_int_equal(misses, t + 1 - want_hits[t]);
        assert_int_equal(entries, 1);
        assert_int_equal(bytes, per);
    }
    xc_api_imgcache_destroy(c.imgcache);
    /* smaller than one image: nothing kept */
    assert_int_equal(xc_api_imgcache_create(per - 1, &c.imgcache), XC_OK);
    prepare_image(&c, tok, files[0], got, &h);
    prepare_image(&c, tok, files[0], got, &h);
    assert_memory_equal(got, want[0], per);
    xc_api_imgcache_stats(c.imgcache, &hits, &misses, &entries, &bytes);
    assert_int_equal(hits, 0);
    assert_int_equal(entries, 0);
    xc_api_imgcache_destroy(c.imgcache);
    xc_free(want[0]);
    xc_free(want[1]);
    xc_free(got);
    xc_tokenizer_destroy(tok);
}

static void test_api_prepare_context(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
    c.max_context = 100000;
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_load(TOKFILE, &tok), XC_OK);
    xc_api_request r;
    xc_api_error e;
    xc_api_prepared p;
    assert_int_equal(parse(&c,
                           "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi"
                           "\"}]}",
                           &r, &e),
                     XC_OK);
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_OK);
    int n_prompt = p.prompt_tokens;
    assert_int_equal(p.req.max_new_tokens, 50); /* the default fits */
    assert_true(p.req.penalize_prompt);
    xc_api_prepared_fini(&p);
    /* the context rule of issue 14: the prompt within max_length (max_prompt), the reply may go
     * past it up to the context */
    c.max_context = n_prompt + 100;
    c.max_prompt = n_prompt - 1;
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_ERR_ARG);
    assert_string_equal(e.code, "context_length_exceeded");
    assert_non_null(strstr(e.message, "max_length"));
    c.max_prompt = n_prompt;
    c.default_max_tokens = 0;
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_OK);
    assert_int_equal(p.req.max_new_tokens, 100); /* past max_length, to the context */
    xc_api_prepared_fini(&p);
    c.max_prompt = 0;
    c.default_max_tokens = 50;
    /* default max_tokens is cut to the context left */
    c.max_context = n_prompt + 20;
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_OK);
    assert_int_equal(p.req.max_new_tokens, 20);
    xc_api_prepared_fini(&p);
    xc_api_request_fini(&r);
    /* an explicit max_tokens that does not fit */
    char body[256];
    snprintf(body, sizeof body,
             "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
             "\"max_tokens\":%d}",
             21);
    assert_int_equal(parse(&c, body, &r, &e), XC_OK);
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_ERR_ARG);
    assert_int_equal(e.http_status, 400);
    assert_string_equal(e.code, "context_length_exceeded");
    xc_api_request_fini(&r);
    /* a prompt longer than the context */
    char big[2048] = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"";
    for (int i = 0; i < 20; i++) {
        strcat(big, "word ");
    }
    strcat(big, "\"}]}");
    assert_int_equal(parse(&c, big, &r, &e), XC_OK);
    assert_int_equal(xc_api_prepare(&c, tok, &r, &p, &e), XC_ERR_ARG);
    assert_string_equal(e.code, "context_length_exceeded");
    xc_api_request_fini(&r);
    xc_tokenizer_destroy(tok);
}

/* Naive reference: decode everything, cut at the earliest occurrence of any stop string. */
static size_t naive_cut(const char *text, size_t len, char *const *stop, int n_stop, bool *hit) {
    size_t cut = len;
    *hit = false;
    for (int s = 0; s < n_stop; s++) {
        size_t sl = strlen(stop[s]);
        for (size_t i = 0; i + sl <= len; i++) {
            if (!memcmp(text + i, stop[s], sl)) {
                if (i < cut) {
                    cut = i;
                    *hit = true;
                }
                break;
            }
        }
    }
    return cut;
}

static void test_api_stop_strings_match_naive_cut(void **state) {
    (void)state;
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_load(TOKFILE, &tok), XC_OK);
    uint64_t rng = 12345;
    int n_hits = 0;
    for (int trial = 0; trial < 400; trial++) {
        int32_t ids[40];
        int n = 1 + (int)((rng >> 33) % 40);
        for (int i = 0; i < n; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            ids[i] = 3 + (int32_t)((rng >> 33) % 997); /* plain and byte pieces */
        }
        char *full = NULL;
        size_t flen = 0;
        assert_int_equal(xc_tokenizer_decode(tok, ids, (size_t)n, &full, &flen), XC_OK);
        /* stop strings: pieces of the text itself (so they hit, often across tokens), and one
         * that never occurs */
        char s1[8] = "", s2[8] = "";
        if (flen > 2) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t a = (rng >> 33) % (flen - 1), l = 1 + (rng >> 40) % 4;
            l = a + l > flen ? flen - a : l;
            memcpy(s1, full + a, l);
            s1[l] = 0;
        }
        snprintf(s2, sizeof s2, "\x01zz");
        char *stops[2] = {s1[0] && !memchr(s1, 0, 1) ? s1 : s2, s2};
        int n_stop = trial % 3 == 0 ? 0 : 2;
        bool hit = false;
        size_t cut = naive_cut(full, flen, stops, n_stop, &hit);
        xc_api_text t;
        xc_api_text_init(&t, tok, stops, n_stop);
        t.include_stop = trial % 2 == 1; /* include_stop_str_in_output: cut after the stop */
        for (int k = 0; hit && t.include_stop && k < n_stop; k++) {
            size_t sl = strlen(stops[k]);
            if (cut + sl <= flen && !memcmp(full + cut, stops[k], sl)) {
                cut += sl;
                break;
            }
        }
        char got[4096];
        size_t g = 0;
        bool stopped = false;
        for (int i = 0; i < n && !stopped; i++) {
            const char *em;
            size_t ne;
            assert_int_equal(xc_api_text_feed(&t, ids[i], &em, &ne, &stopped), XC_OK);
            memcpy(got + g, em, ne);
            g += ne;
        }
        if (!stopped) {
            const char *em;
            size_t ne;
            assert_int_equal(xc_api_text_finish(&t, &em, &ne), XC_OK);
            memcpy(got + g, em, ne);
            g += ne;
        }
        assert_int_equal(stopped, hit);
        n_hits += hit;
        assert_int_equal(g, cut);
        assert_memory_equal(got, full, cut);
        xc_api_text_fini(&t);
        xc_free(full);
    }
    assert_true(n_hits > 100); /* the test exercised stops, many across token boundaries */
    xc_tokenizer_destroy(tok);
}

static void test_api_response_json(void **state) {
    (void)state;
    xc_tokenizer *tok = NULL;
    assert_int_equal(xc_tokenizer_load(TOKFILE, &tok), XC_OK);
    xc_api_logprob lp[2] = {{.token = 500,
                             .logprob = -0.5f,
                             .n_top = 2,
                             .top_ids = {500, 201},
                             .top_logprobs = {-0.5f, -1.25f}},
                            {.token = 600, .logprob = -2.0f}};
    xc_api_choice ch[2] = {{.text = "h\xc3\xa9llo",
                            .len = 6,
                            .finish_reason = "stop",
                            .logprobs = lp,
                            .n_logprobs = 2},
                           {.text = "bad \xff byte", .len = 10, .finish_reason = "length"}};
    xc_api_usage u = {11, 7};
    char *js = xc_api_completion_json("chatcmpl-1", 1700000000, "tiny", ch, 2, &u, tok);
    cJSON *o = cJSON_Parse(js);
    xc_free(js);
    assert_non_null(o);
    assert_string_equal(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion");
    assert_string_equal(cJSON_GetObjectItem(o, "model")->valuestring, "tiny");
    cJSON *choices = cJSON_GetObjectItem(o, "choices");
    assert_int_equal(cJSON_GetArraySize(choices), 2);
    cJSON *c0 = cJSON_GetArrayItem(choices, 0);
    cJSON *m = cJSON_GetObjectItem(c0, "message");
    assert_string_equal(cJSON_GetObjectItem(m, "role")->valuestring, "assistant");
    assert_string_equal(cJSON_GetObjectItem(m, "content")->valuestring, "h\xc3\xa9llo");
    assert_string_equal(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content");
    assert_int_equal(cJSON_GetArraySize(content), 2);
    cJSON *e0 = cJSON_GetArrayItem(content, 0);
    size_t plen = 0;
    const char *piece = xc_tokenizer_id_to_piece(tok, 500, &plen);
    char want[64];
    size_t w = 0;
    for (size_t i = 0; i < plen;) { /* U+2581 shows as a space, <0xNN> as the byte */
        if (plen == 6 && !strncmp(piece, "<0x", 3)) {
            want[w++] = (char)strtol(piece + 3, NULL, 16);
            break;
        }
        if (i + 3 <= plen && !memcmp(piece + i, "\xe2\x96\x81", 3)) {
            want[w++] = ' ';
            i += 3;
        } else {
            want[w++] = piece[i++];
        }
    }
    want[w] = 0;
    assert_string_equal(cJSON_GetObjectItem(e0, "token")->valuestring, want);
    assert_true(cJSON_GetObjectItem(e0, "logprob")->valuedouble == -0.5);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(e0, "bytes")), (int)w);
    cJSON *top = cJSON_GetObjectItem(e0, "top_logprobs");
    assert_int_equal(cJSON_GetArraySize(top), 2);
    assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(top, 1), "logprob")->valuedouble == -1.25);
    cJSON *c1 = cJSON_GetArrayItem(choices, 1);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(c1, "logprobs")));
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(c1, "message"), "content")->valuestring,
        "bad \xef\xbf\xbd byte"); /* invalid UTF-8 replaced, JSON stays valid */
    cJSON *us = cJSON_GetObjectItem(o, "usage");
    assert_int_equal(cJSON_GetObjectItem(us, "prompt_tokens")->valueint, 11);
    assert_int_equal(cJSON_GetObjectItem(us, "completion_tokens")->valueint, 7);
    assert_int_equal(cJSON_GetObjectItem(us, "total_tokens")->valueint, 18);
    cJSON_Delete(o);
    /* stream chunks: first (role), content, final, usage-only */
    js = xc_api_chunk_json("id", 1, "tiny", 1, true, "", 0, NULL, 0, NULL, NULL, true, tok);
    o = cJSON_Parse(js);
    xc_free(js);
    assert_string_equal(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion.chunk");
    cJSON *ck = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    assert_int_equal(cJSON_GetObjectItem(ck, "index")->valueint, 1);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(ck, "delta"), "role")->valuestring,
                        "assistant");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(ck, "finish_reason")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "usage")));
    cJSON_Delete(o);
    js = xc_api_chunk_json("id", 1, "tiny", 0, false, NULL, 0, NULL, 0, "length", NULL, false, tok);
    o = cJSON_Parse(js);
    xc_free(js);
    ck = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    assert_string_equal(cJSON_GetObjectItem(ck, "finish_reason")->valuestring, "length");
    assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(ck, "delta"), "content"));
    assert_null(cJSON_GetObjectItem(o, "usage"));
    cJSON_Delete(o);
    js = xc_api_chunk_json("id", 1, "tiny", -1, false, NULL, 0, NULL, 0, NULL, &u, false, tok);
    o = cJSON_Parse(js);
    xc_free(js);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "choices")), 0);
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "usage"), "total_tokens")->valueint,
                     18);
    cJSON_Delete(o);
    js = xc_api_models_json("tiny", 5, 4096);
    o = cJSON_Parse(js);
    xc_free(js);
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "data"), 0), "id")
            ->valuestring,
        "tiny");
    cJSON_Delete(o);
    xc_tokenizer_destroy(tok);
}

/* xc_sampler_logprobs against a naive float64 log-softmax and a full sort. */
static void test_api_logprobs_match_naive(void **state) {
    (void)state;

    enum { V = 517 };

    float z[V];
    uint64_t rng = 99;
    for (int trial = 0; trial < 20; trial++) {
        for (int i = 0; i < V; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            z[i] = (float)((double)(rng >> 40) / (double)(1ull << 24) * 20.0 - 10.0);
        }
        z[trial * 7] = z[trial * 7 + 1]; /* a tie */
        double sum = 0;
        for (int i = 0; i < V; i++) {
            sum += exp((double)z[i]);
        }
        int k = trial % 21;
        int32_t tok = (int32_t)(trial * 25 % V), ids[20];
        float lp, lps[20];
        assert_int_equal(xc_sampler_logprobs(z, V, tok, k, &lp, ids, lps), XC_OK);
        assert_true(fabs(lp - ((double)z[tok] - log(sum))) < 1e-5);
        int order[V];
        for (int i = 0; i < V; i++) {
            order[i] = i;
        }
        for (int i = 0; i < k; i++) { /* selection sort: larger first, lower id on ties */
            for (int j = i + 1; j < V; j++) {
                if (z[order[j]] > z[order[i]] ||
                    (z[order[j]] == z[order[i]] && order[j] < order[i])) {
                    int t = order[i];
                    order[i] = order[j];
                    order[j] = t;
                }
            }
            assert_int_equal(ids[i], order[i]);
            assert_true(fabs(lps[i] - ((double)z[order[i]] - log(sum))) < 1e-5);
        }
    }
    float lp;
    int32_t ids[20];
    float lps[20];
    assert_int_equal(xc_sampler_logprobs(z, V, V, 0, &lp, ids, lps), XC_ERR_ARG);
    assert_int_equal(xc_sampler_logprobs(z, V, 0, 21, &lp, ids, lps), XC_ERR_ARG);
}

/* The wire fields the API added (Result logprobs, Sampling.logprobs, Heartbeat counters) survive
 * an encode/decode round trip; inconsistent lengths are refused. */
static void test_api_wire_logprob_fields(void **state) {
    (void)state;
    uint64_t ids[2] = {7, 9};
    uint32_t toks[2] = {11, 12}, n_top[2] = {2, 0}, top_ids[2] = {11, 5};
    float lps[2] = {-0.25f, -3.5f}, top_lps[2] = {-0.25f, -1.5f};
    xc_wire_result r = {.microbatch_id = 3,
                        .n = 2,
                        .seq_ids = ids,
                        .tokens = toks,
                        .n_logprobs = 2,
                        .logprobs = lps,
                        .n_top = n_top,
                        .n_top_ids = 2,
                        .top_ids = top_ids,
                        .top_logprobs = top_lps};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_result(&r, &buf, &len), XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_result d;
    assert_int_equal(xc_wire_decode_result(buf, len, a, &d), XC_OK);
    assert_int_equal(d.n_logprobs, 2);
    assert_true(d.logprobs[1] == -3.5f && d.n_top[0] == 2 && d.n_top[1] == 0);
    assert_int_equal(d.n_top_ids, 2);
    assert_true(d.top_ids[1] == 5 && d.top_logprobs[1] == -1.5f);
    xc_free(buf);
    r.n_top_ids = 1; /* counts disagree */
    assert_int_not_equal(xc_wire_encode_result(&r, &buf, &len), XC_OK);
    xc_arena_destroy(a);
}

/* Counts the values of a cJSON tree (the nodes cJSON allocates). */
static long count_nodes(const cJSON *o) {
    long n = 1;
    for (const cJSON *c = o->child; c; c = c->next) {
        n += count_nodes(c);
    }
    return n;
}

/* Random JSON text of random shape into b (depth d at most). */
static void random_json(char *b, size_t *n, size_t cap, int d, unsigned *seed) {
    int kind = d <= 0 ? 2 + (int)(rand_r(seed) % 2) : (int)(rand_r(seed) % 4);
    if (*n + 64 > cap) {
        kind = 2;
    }
    if (kind == 0 || kind == 1) {
        b[(*n)++] = kind ? '[' : '{';
        int k = (int)(rand_r(seed) % 4);
        for (int i = 0; i < k; i++) {
            if (i) {
                b[(*n)++] = ',';
            }
            if (!kind) {
                *n += (size_t)snprintf(b + *n, cap - *n, "\"k%d,[{\\\"\":", i);
            }
            random_json(b, n, cap, d - 1, seed);
        }
        b[(*n)++] = kind ? ']' : '}';
    } else if (kind == 2) {
        *n += (size_t)snprintf(b + *n, cap - *n, "%u", rand_r(seed) % 1000);
    } else {
        *n += (size_t)snprintf(b + *n, cap - *n, "\"a,b]}{[\\\\\"");
    }
    b[*n] = 0;
}

/* The pre-parse shape check (issue 12.5): its node count equals cJSON's real count,
 * its depth equals cJSON's nesting on random documents (strings full of brackets, commas and
 * escapes included); past either cap the parser refuses with 400 before building a tree. */
static void test_api_json_precheck(void **state) {
    (void)state;
    unsigned seed = 7;
    static char b[1 << 16];
    for (int it = 0; it < 2000; it++) {
        size_t n = 0;
        random_json(b, &n, sizeof b, 1 + it % 6, &seed);
        cJSON *o = cJSON_ParseWithLength(b, n);
        if (!o) {
            fail_msg("random JSON does not parse: %s", b);
        }
        long real = count_nodes(o);
        cJSON_Delete(o);
        assert_int_equal(xc_api_json_precheck(b, n, 64, real), XC_OK);
        assert_int_equal(xc_api_json_precheck(b, n, 64, real - 1), XC_ERR_ARG);
    }
    /* depth: 32 levels pass, 33 do not (and a bracket in a string does not count) */
    char deep[200];
    for (int d = 31; d <= 33; d++) {
        size_t k = 0;
        for (int i = 0; i < d; i++) {
            deep[k++] = '[';
        }
        k += (size_t)sprintf(deep + k, "\"[[[\\\"[\"");
        for (int i = 0; i < d; i++) {
            deep[k++] = ']';
        }
        deep[k] = 0;
        assert_int_equal(xc_api_json_precheck(deep, k, XC_API_MAX_JSON_DEPTH, 1000),
                         d <= XC_API_MAX_JSON_DEPTH ? XC_OK : XC_ERR_ARG);
    }
    /* through the parser: a deep request and one with too many values are 400s */
    xc_api_conf c = conf_default();
    char *body = xc_malloc(8u << 20);
    int k = sprintf(body, "{\"model\":\"tiny\",\"user\":");
    for (int i = 0; i < 40; i++) {
        body[k++] = '[';
    }
    for (int i = 0; i < 40; i++) {
        body[k++] = ']';
    }
    sprintf(body + k, ",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    expect_error(&c, body, 400, "");
    k = sprintf(body, "{\"model\":\"tiny\",\"user\":[");
    for (int i = 0; i < XC_API_MAX_JSON_NODES; i++) {
        k += sprintf(body + k, "%s1", i ? "," : "");
    }
    sprintf(body + k, "],\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    expect_error(&c, body, 400, "");
    xc_free(body);
}

/* seed: any 64-bit integer, read exactly (cJSON's double would merge 2^53 and 2^53 + 1). */
static void test_api_seed_64_bits(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
    const char *in[] = {"9007199254740992",
                        "9007199254740993",
                        "18446744073709551615",
                        "-9223372036854775808",
                        "0",
                        " -1 "};
    const uint64_t want[] = {9007199254740992ull, 9007199254740993ull, UINT64_MAX, 1ull << 63, 0,
                             UINT64_MAX};
    for (int i = 0; i < 6; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"user\":\"seed\",\"stream_options\":null,\"model\":\"tiny\",\"seed\":%s,"
                 "\"messages\":[{\"role\":\"user\",\"content\":\"seed\"}]}",
                 in[i]);
        xc_api_request r;
        xc_api_error e;
        assert_int_equal(parse(&c, body, &r, &e), XC_OK);
        assert_true(r.has_seed);
        assert_true(r.seed == want[i]);
        xc_api_request_fini(&r);
    }
}

/* issue 14: nulls are absent, a missing model is the served one, and the new sampling
 * parameters reach the request. */
static void test_api_lenient_and_new_params(void **state) {
    (void)state;
    xc_api_conf c = conf_default();
    xc_api_request r;
    xc_api_error e;
    assert_int_equal(
        parse(&c,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":null,"
              "\"tool_choice\":null,\"parallel_tool_calls\":null,\"model\":null,\"min_p\":null,"
              "\"logit_bias\":null,\"stop_token_ids\":null,\"user\":null,\"seed\":null,"
              "\"presence_penalty\":null,\"max_tokens\":null}",
              &r, &e),
        XC_OK);
    assert_string_equal(r.model, "tiny");
    assert_false(r.has_seed);
    assert_true(r.skip_special_tokens);
    xc_api_request_fini(&r);
    assert_int_equal(
        parse(&c,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"presence_penalty\":-2,"
              "\"frequency_penalty\":1.5,\"min_p\":0.1,\"min_tokens\":3,\"logit_bias\":{\"5\":-100,"
              "\"7\":2.5},\"stop_token_ids\":[9,10],\"include_stop_str_in_output\":true,"
              "\"skip_special_tokens\":false,\"tools\":[],\"tool_choice\":\"none\"}",
              &r, &e),
        XC_OK);
    assert_true(r.presence_penalty == -2.0f && r.frequency_penalty == 1.5f && r.min_p == 0.1f);
    assert_int_equal(r.min_tokens, 3);
    assert_int_equal(r.n_logit_bias, 2);
    assert_int_equal(r.logit_bias_ids[1], 7);
    assert_true(r.logit_bias[0] == -100.0f && r.logit_bias[1] == 2.5f);
    assert_int_equal(r.n_stop_token_ids, 2);
    assert_true(r.include_stop_str_in_output && !r.skip_special_tokens);
    xc_api_request_fini(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_parse_defaults),
        cmocka_unit_test(test_api_json_precheck),
        cmocka_unit_test(test_api_seed_64_bits),
        cmocka_unit_test(test_api_lenient_and_new_params),
        cmocka_unit_test(test_api_parse_every_parameter),
        cmocka_unit_test(test_api_parse_errors),
        cmocka_unit_test(test_api_images_and_prepare),
        cmocka_unit_test(test_api_base64_round_trip),
        cmocka_unit_test(test_api_large_data_urls),
        cmocka_unit_test(test_api_image_input_cache),
        cmocka_unit_test(test_api_file_urls),
        cmocka_unit_test(test_api_prepare_context),
        cmocka_unit_test(test_api_stop_strings_match_naive_cut),
        cmocka_unit_test(test_api_response_json),
        cmocka_unit_test(test_api_logprobs_match_naive),
        cmocka_unit_test(test_api_wire_logprob_fields),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
