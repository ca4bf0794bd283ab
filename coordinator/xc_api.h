/* The OpenAI-compatible chat API without the HTTP: a JSON body becomes a checked internal request
 * (every parameter and limit, errors in OpenAI's shape with the HTTP status to send), the request
 * becomes a coordinator request (chat template, tokenizer, image decoding and preprocessing), and
 * generated tokens become response text (incremental detokenization, stop strings that match
 * across token boundaries and are never emitted) and response JSON (whole or SSE chunks).
 * See docs/api.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_chat.h"
#include "xc_coord.h"
#include "xc_media.h"
#include "xc_status.h"
#include "xc_tokenizer.h"

#define XC_API_MAX_TOP_LOGPROBS 20
#define XC_API_MAX_STOP_LEN     256
/* JSON bodies are scanned before parsing: nesting deeper than this, or more values than this,
 * is refused (400) without building a tree (a cJSON node costs ~80 bytes). */
#define XC_API_MAX_JSON_DEPTH 32
#define XC_API_MAX_JSON_NODES (1 << 18)

/* Checks the shape of a JSON text without parsing it: nesting depth <= max_depth and at most
 * max_nodes values (an upper bound: containers plus separators). Strings are skipped with their
 * escapes. XC_ERR_ARG naming the limit; says nothing about validity otherwise. */
xc_status xc_api_json_precheck(const char *body, size_t len, int max_depth, long max_nodes);

/* What the server accepts (immutable after startup). */
/* A bounded cache of decoded, preprocessed images keyed by the SHA-256 of their encoded bytes
 * (thread-safe): a chat client re-sends the same image with every turn, and a hit skips its
 * decoding, resizing and normalizing (milliseconds) and the SHA-256 of its pixels (the prefix
 * cache's image key). Least recently used entries go first when max_bytes would be exceeded. */
typedef struct xc_api_imgcache xc_api_imgcache;
xc_status xc_api_imgcache_create(size_t max_bytes, xc_api_imgcache **out);
void xc_api_imgcache_destroy(xc_api_imgcache *c);
/* hits and misses so far, entries and pixel bytes held now */
void xc_api_imgcache_stats(xc_api_imgcache *c, uint64_t *hits, uint64_t *misses, int *entries,
                           size_t *bytes);

typedef struct xc_api_conf {
    const char *model_name;     /* the served model id: requests must name it */
    int max_n;                  /* choices per request at most */
    int max_stop;               /* stop strings at most */
    int max_tokens_limit;       /* largest max_tokens accepted */
    int default_max_tokens;     /* when the request gives none (cut to the context left) */
    int max_context;            /* prompt + max_tokens at most (tokens, image rows included) */
    int max_prompt;             /* prompt rows at most (config max_length); 0 = max_context */
    int max_images;             /* images per request, all messages together */
    size_t max_image_bytes;     /* encoded bytes of one image */
    uint64_t max_pixels;        /* width * height of one image, checked before decoding */
    int image_size;             /* S of the (3, S, S) vision input; 0 = no vision served */
    int image_tokens;           /* prompt rows per image */
    const char *media_dir;      /* file:// URLs are allowed below this directory; NULL = refused */
    const xc_media_conf *media; /* http(s) URLs (xc_api_fetch); NULL = refused */
    xc_chat_variant variant;    /* default meta instruction */
    xc_api_imgcache *imgcache;  /* preprocessed images by their encoded bytes; NULL = none */
} xc_api_conf;

/* An error in OpenAI's shape plus the HTTP status to send. */
typedef struct xc_api_error {
    int http_status;  /* 400, 401, 404, 408, 413, 429, 500, 503 */
    const char *type; /* "invalid_request_error", "authentication_error", ... (static) */
    const char *code; /* NULL or a static code: "context_length_exceeded", ... */
    char param[64];   /* the offending parameter ("" = none) */
    char message[512];
} xc_api_error;

/* Fills err (status, type, code, param, printf-style message). Returns XC_ERR_ARG. */
xc_status xc_api_error_set(xc_api_error *err, int http_status, const char *type, const char *code,
                           const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* The error as JSON {"error": {message, type, param, code}}: a new xc_malloc'd string. */
char *xc_api_error_json(const xc_api_error *err);

/* One image of a request: its encoded bytes (xc_malloc'd, owned by the request), or, for an
 * http(s) URL that xc_api_fetch has not fetched yet, the URL (data NULL). */
typedef struct xc_api_image {
    uint8_t *data;
    size_t len;
    char *url; /* xc_malloc'd; NULL for data: and file:// images and once fetched */
} xc_api_image;

/* A parsed, checked request. Strings point into memory the request owns. */
typedef struct xc_api_request {
    char *model;
    char *system;          /* joined system messages; NULL = the default meta instruction */
    xc_chat_turn *history; /* (n_history) earlier user/assistant turns, oldest first */
    size_t n_history;
    char *query;          /* the last user message; <ImageHere> where an image part was */
    xc_api_image *images; /* (n_images) in prompt order (history first) */
    int n_images;
    int max_tokens; /* 0 = not given */
    bool greedy;    /* temperature 0 */
    float temperature, top_p, repetition_penalty;
    int top_k; /* 0 = off */
    bool has_seed;
    uint64_t seed;
    int n;
    char **stop; /* (n_stop) non-empty strings */
    int n_stop;
    bool logprobs;
    int top_logprobs;
    bool stream, include_usage;
    bool ignore_eos; /* extension: generate past EOS/<|im_end|> (benchmarks) */
    /* issue 14: OpenAI's and vLLM's extra sampling parameters */
    float presence_penalty, frequency_penalty, min_p;
    int min_tokens;
    int n_logit_bias;
    uint32_t logit_bias_ids[300];
    float logit_bias[300];
    int32_t stop_token_ids[32]; /* extra stop ids (vLLM stop_token_ids) */
    int n_stop_token_ids;
    bool include_stop_str_in_output; /* a matched stop string stays in the text */
    bool skip_special_tokens;        /* default true: control/marker pieces give no text */
    /* POST /v1/completions (legacy): raw prompts, no chat template */
    bool legacy;
    bool echo;         /* the prompt text starts each choice's text */
    int n_prompts;     /* choices = n_prompts * n, index = prompt * n + j */
    int32_t **prompts; /* (n_prompts) token ids of each prompt (BOS first for text prompts) */
    int *prompt_len;   /* (n_prompts) */
} xc_api_request;

/* Parses and checks a /v1/chat/completions body (len bytes, need not be NUL-terminated). On XC_OK
 * *out is filled (release with xc_api_request_fini); otherwise err says what is wrong (status 400,
 * 404 for an unknown model, 403 for a file outside conf->media_dir or an http(s) host outside
 * conf->media's allowlist) and the status is XC_ERR_ARG (or XC_ERR_NOMEM). Never reads files
 * outside conf->media_dir and makes no network traffic: http(s) images are only checked here and
 * fetched by xc_api_fetch. */
xc_status xc_api_parse(const xc_api_conf *conf, const char *body, size_t len, xc_api_request *out,
                       xc_api_error *err);

/* Fetches the request's http(s) images (in order, each within conf->media->timeout_s and all
 * before deadline_ns, xc_now_ns clock, 0 = none). err on failure: 403 (private address), 400
 * (redirect, HTTP error, network, too large: code image_too_large, media timeout: code
 * media_timeout), 408 request_timeout when deadline_ns cut the fetch short; XC_ERR_ARG. */
xc_status xc_api_fetch(const xc_api_conf *conf, xc_api_request *r, uint64_t deadline_ns,
                       xc_api_error *err);

/* Frees what a parsed request owns and zeroes it. NULL is a no-op. */
void xc_api_request_fini(xc_api_request *r);

/* A request ready for xc_coord_submit: the chat prompt's ids (image rows hold 0), image ranges,
 * preprocessed pixels, sampling, stop ids. Owns its arrays. */
typedef struct xc_api_prepared {
    xc_coord_request req; /* points into the arrays below */
    int32_t *ids;
    xc_coord_range *img;
    float *pixels;            /* (n_img, 3, S, S) */
    uint64_t *img_hash;       /* (n_img) the pixels' hash as xc_coord_submit computes it */
    int32_t stop_ids[2 + 32]; /* EOS, [UNUSED_TOKEN_145], then stop_token_ids */
    int prompt_tokens;        /* rows, image rows included (usage.prompt_tokens) */
    int image_tokens;         /* image rows among them */
    double preprocess_s;      /* seconds spent decoding and preprocessing images */
} xc_api_prepared;

/* Builds the prompt with tok (chat template of conf->variant), decodes and preprocesses the
 * images, fixes max_tokens (the request's, or the default cut to the context left) and fills
 * out. err: 400 for an image that does not decode or is over a limit, for a prompt that leaves
 * no room in the context (code context_length_exceeded); 500 for an http(s) image that
 * xc_api_fetch did not fetch. Release with xc_api_prepared_fini. */
xc_status xc_api_prepare(const xc_api_conf *conf, const xc_tokenizer *tok, const xc_api_request *r,
                         xc_api_prepared *out, xc_api_error *err);

void xc_api_prepared_fini(xc_api_prepared *p);

/* ---- generated text ---- */

/* One choice's text: streaming detokenization with stop strings held back until they can no
 * longer match. Caller-owned struct; borrows tok and the stop strings. */
typedef struct xc_api_text {
    xc_tokenizer_stream ts;
    char *const *stop;
    int n_stop;
    char *pend; /* (n_pend) decoded text not yet emitted: it may begin a stop string */
    size_t n_pend, cap_pend;
    char *out; /* (n_out) text of the last call, a view for the caller */
    size_t n_out, cap_out;
    size_t emitted;    /* bytes emitted so far */
    bool stopped;      /* a stop string matched: nothing more is emitted */
    bool include_stop; /* include_stop_str_in_output: the matched stop string is emitted */
    bool show_special; /* skip_special_tokens false: BOS/EOS/PAD give their piece text */
    const xc_tokenizer *tok;
} xc_api_text;

void xc_api_text_init(xc_api_text *t, const xc_tokenizer *tok, char *const *stop, int n_stop);

/* Feeds one token. emit and n_emit get text that is now final (a view valid until the next call;
 * it never holds a stop string or anything after it). *stopped is set when a stop string
 * matched: the caller ends the generation. XC_ERR_ARG for an id outside the vocabulary. */
xc_status xc_api_text_feed(xc_api_text *t, int32_t token, const char **emit, size_t *n_emit,
                           bool *stopped);

/* The end of the generation: flushes held-back text (and incomplete UTF-8 as U+FFFD). */
xc_status xc_api_text_finish(xc_api_text *t, const char **emit, size_t *n_emit);

void xc_api_text_fini(xc_api_text *t);

/* ---- responses ---- */

/* A token's log-probability and its most likely alternatives (see docs/api.md for the exact
 * definition: log-softmax of the logits after repetition penalty and temperature). */
typedef struct xc_api_logprob {
    int32_t token;
    float logprob;
    int n_top;
    int32_t top_ids[XC_API_MAX_TOP_LOGPROBS];
    float top_logprobs[XC_API_MAX_TOP_LOGPROBS];
} xc_api_logprob;

/* One choice of a finished (non-streaming) completion. */
typedef struct xc_api_choice {
    const char *text;
    size_t len;
    const char *finish_reason;      /* "stop" or "length" */
    const xc_api_logprob *logprobs; /* (n_logprobs) or NULL when not asked */
    int n_logprobs;
} xc_api_choice;

typedef struct xc_api_usage {
    int prompt_tokens;
    int completion_tokens;
} xc_api_usage;

/* {"id", "object": "chat.completion", "created", "model", "choices", "usage"} as a new
 * xc_malloc'd string; NULL when out of memory. tok names the logprob tokens. */
char *xc_api_completion_json(const char *id, long created, const char *model,
                             const xc_api_choice *choices, int n, const xc_api_usage *usage,
                             const xc_tokenizer *tok);

/* One SSE chunk's JSON ("chat.completion.chunk"): for choice index with the role (first chunk),
 * content (may be NULL), logprobs (n_lp, NULL = none) and finish_reason (NULL = not yet); or,
 * when index < 0, the usage-only chunk with "choices": []. with_usage_null adds "usage": null to
 * choice chunks, as OpenAI does when stream_options.include_usage is set. */
char *xc_api_chunk_json(const char *id, long created, const char *model, int index, bool role,
                        const char *content, size_t len, const xc_api_logprob *lp, int n_lp,
                        const char *finish_reason, const xc_api_usage *usage, bool with_usage_null,
                        const xc_tokenizer *tok);

/* {"object": "list", "data": [{"id": model, "object": "model", "created", "owned_by",
 * "max_model_len"}]}. */
char *xc_api_models_json(const char *model, long created, int max_model_len);

/* POST /tokenize in vLLM's shape: {"prompt": text, "add_special_tokens": true} (BOS first) or
 * {"messages": [...], "add_generation_prompt": true} (chat()'s template; image parts count as
 * their rows, shown as -1 in "tokens"); answers {"count", "max_model_len", "tokens"} as a new
 * xc_malloc'd string in *out. Images are not decoded (data: URLs are checked as base64). err as
 * xc_api_parse; XC_ERR_ARG. */
xc_status xc_api_tokenize(const xc_api_conf *conf, const xc_tokenizer *tok, const char *body,
                          size_t len, char **out, xc_api_error *err);

/* POST /detokenize: {"tokens": [ids]} -> {"prompt": text} (control pieces give no text). */
xc_status xc_api_detokenize(const xc_api_conf *conf, const xc_tokenizer *tok, const char *body,
                            size_t len, char **out, xc_api_error *err);

/* ---- POST /v1/completions ---- */

/* Parses and checks a POST /v1/completions body: prompt (a string, a list of strings, a list of
 * token ids or a list of such lists; text is tokenized with tok as the tokenizer does by default:
 * BOS first, turn markers allowed), suffix (refused), echo, logprobs (an integer 0..5: the legacy
 * shape; r->logprobs with r->top_logprobs alternatives), best_of (null or n), and every sampling
 * parameter of the chat endpoint; max_tokens defaults to 16 (OpenAI's). As xc_api_parse. */
xc_status xc_api_parse_completion(const xc_api_conf *conf, const xc_tokenizer *tok,
                                  const char *body, size_t len, xc_api_request *out,
                                  xc_api_error *err);

/* Prepares prompt k of a parsed /v1/completions request (ids copied, no images), with the
 * context check of xc_api_prepare. */
xc_status xc_api_prepare_prompt(const xc_api_conf *conf, const xc_tokenizer *tok,
                                const xc_api_request *r, int k, xc_api_prepared *out,
                                xc_api_error *err);

/* The legacy logprobs of a completion choice: tokens, token_logprobs, top_logprobs (a map per
 * token), text_offset. n_echo prompt ids come first with null logprobs (prompt logprobs are not
 * computed); text_offset counts from the start of the choice text (echo included). */
typedef struct xc_api_legacy_lp {
    const int32_t *echo_ids; /* (n_echo) */
    int n_echo;
    const xc_api_logprob *lp; /* (n_lp) generated tokens */
    int n_lp;
    const size_t *offsets; /* (n_echo + n_lp) text offsets */
} xc_api_legacy_lp;

/* One choice of a /v1/completions answer. */
typedef struct xc_api_text_choice {
    const char *text;
    size_t len;
    const char *finish_reason;        /* NULL in a stream chunk that does not end it */
    const xc_api_legacy_lp *logprobs; /* NULL = "logprobs": null */
} xc_api_text_choice;

/* {"id", "object": "text_completion", "created", "model", "choices": [{"index", "text",
 * "logprobs", "finish_reason"}], "usage"} (whole: index = i; a stream chunk: one choice with
 * index, usage NULL, or index < 0 for the usage-only chunk). New xc_malloc'd string. */
char *xc_api_text_completion_json(const char *id, long created, const char *model,
                                  const xc_api_text_choice *choices, int n, int index,
                                  const xc_api_usage *usage, const xc_tokenizer *tok);
