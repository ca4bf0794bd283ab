/* Free-form text-image composition the way XComposer2's own composition demo does it
 * (InternLM-XComposer-2.0/examples/gradio_demo_composition.py, commit 0f70c3e3): write an article
 * from an instruction, label its paragraphs <Seg{i}>, ask where images go, caption each slot,
 * take candidates (the user's uploads or an image-search service), let the model pick one per
 * slot, and emit the Markdown. Paragraph edits (expand, rewrite, abbreviate, insert before/after).
 *
 * Every model call is one ordinary generation request handed to a backend (the coordinator's
 * scheduler when serving; the single-process engine in tests), so many compositions run in
 * parallel in one pipeline. The prompts, answer prefixes, generation parameters and parsing rules
 * are the original's, byte for byte; docs/compose.md lists them. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_coord.h"
#include "xc_status.h"
#include "xc_tokenizer.h"

#define XC_COMPOSE_MAX_SECTION   60   /* paragraphs kept (max_section) */
#define XC_COMPOSE_MAX_LEN       4096 /* interleav_wrap's truncation */
#define XC_COMPOSE_CAPTION_CHARS 53   /* characters of a caption sent to the image search */
#define XC_COMPOSE_SEARCH_KEEP   4    /* candidates kept per slot (temp_{pt}_{0..3}) */
#define XC_COMPOSE_MAX_IMAGES    10   /* uploads at most (the demo's limit) */

/* One image the composition may show: encoded bytes, its (3, S, S) pixels, where it came from. */
typedef struct xc_compose_image {
    uint8_t *data; /* encoded bytes (owned) */
    size_t len;
    float *pixels; /* (3, S, S) preprocessed (owned) */
    char *source;  /* "upload:N" or the URL it was fetched from (owned) */
} xc_compose_image;

/* Candidates the image search returned for one slot. */
typedef struct xc_compose_cands {
    xc_compose_image *img; /* (n) the first XC_COMPOSE_SEARCH_KEEP that could be fetched */
    int n;
    int64_t *indices; /* (n_indices) every index the service returned (the exclude list grows) */
    int n_indices;
} xc_compose_cands;

void xc_compose_image_fini(xc_compose_image *im);
void xc_compose_cands_fini(xc_compose_cands *c);

/* The model calls and the outside world. generate runs one request to its end: out gets the
 * generated ids (a stop id ends it and is not delivered), *stopped whether a stop id ended it.
 * on_token (may be NULL) sees each id as it comes. search (may be NULL: no retrieval) asks the
 * image-search service for caption with the exclude list. event (may be NULL) gets progress as
 * JSON text ({"stage": ..., ...}). cancelled (may be NULL) is polled between steps. */
typedef struct xc_compose_backend {
    void *user;
    xc_status (*generate)(void *user, const xc_coord_request *r,
                          void (*on_token)(void *tu, int32_t id), void *tu, xc_tokens *out,
                          bool *stopped);
    xc_status (*search)(void *user, const char *caption, const int64_t *exclude, int n_exclude,
                        xc_compose_cands *out);
    void (*event)(void *user, const char *json);
    bool (*cancelled)(void *user);
} xc_compose_backend;

/* Sampling of every step (defaults: the original's; see xc_compose_conf_defaults). */
typedef struct xc_compose_sampling {
    bool greedy;              /* do_sample False */
    float temperature;        /* 1 */
    int top_k;                /* 40 */
    float top_p;              /* 0.8 */
    float repetition_penalty; /* 1.005 */
    uint64_t seed;            /* step k samples with seed + k */
} xc_compose_sampling;

typedef struct xc_compose_conf {
    const xc_tokenizer *tok;
    int image_tokens; /* prompt rows per image */
    int image_size;   /* S */
    int max_context;  /* prompt + reply rows the backend accepts (0 = no check) */
    bool with_meta;   /* the demo's "With Meta" box (off by default) */
    /* the model's tokenizer_config.json clean_up_tokenization_spaces (true when absent): decode
     * cleans up once more, as transformers does (xc_compose_read_clean_up) */
    bool clean_up_spaces;
    xc_compose_sampling sampling;
    int article_max_tokens; /* the article's max_new_tokens (the demo's 4096, cut to the context) */
    xc_compose_backend be;
} xc_compose_conf;

void xc_compose_conf_defaults(xc_compose_conf *c);

/* clean_up_tokenization_spaces of model_dir/tokenizer_config.json (true when the file or the key
 * is missing, as transformers' default). */
bool xc_compose_read_clean_up(const char *model_dir);

/* ---- prompts ---- */

/* A step's prompt: ids (image rows hold 0) and image row ranges; img_of[k] = which of the step's
 * images range k shows. embeds: built as input embeddings (interleav_wrap, or tok_embeddings of
 * the tokenized text), so the repetition penalty sees only generated ids; else generate()'s
 * input_ids, penalized too. */
typedef struct xc_compose_prompt {
    int32_t *ids;
    int n;
    xc_coord_range *img;
    int *img_of;
    int n_img;
    bool embeds;
} xc_compose_prompt;

void xc_compose_prompt_fini(xc_compose_prompt *p);

/* text2instruction: the turn wrapper (with or without the meta instruction); new string. */
char *xc_compose_instruction(bool with_meta, const char *text);

/* interleav_wrap: text split on "<image>", each non-empty part tokenized with BOS on the first
 * one only, image i after part i (n_images images; markers beyond them add nothing), cut at
 * XC_COMPOSE_MAX_LEN rows. XC_ERR_ARG when the cut falls inside an image (the pipeline cannot
 * show part of one). */
xc_status xc_compose_interleave(const xc_compose_conf *c, const char *text, int n_images,
                                xc_compose_prompt *out);

/* tokenizer(text): BOS + the text's ids, no cut. */
xc_status xc_compose_tokenize(const xc_compose_conf *c, const char *text, bool embeds,
                              xc_compose_prompt *out);

/* ---- parsing (pure; the original's rules) ---- */

/* generate_article: strip, collapse runs of newlines+whitespace to one newline, split on newline,
 * keep the first XC_COMPOSE_MAX_SECTION. An empty text gives one empty paragraph (as the demo). */
xc_status xc_compose_paragraphs(const char *text, char ***out, int *n);

/* generate_loc: positions from every "<Seg[0-9]*>" in order (duplicates and out-of-range
 * indices kept, as the original). XC_ERR_ARG for "<Seg>" with no digits or a number over INT_MAX
 * (the original raises). */
xc_status xc_compose_parse_locs(const char *text, int **locs, int *n);

/* generate_cap: the caption is the answer up to the first '"', stripped. New string. */
char *xc_compose_parse_caption(const char *answer);

/* model_select_*: the first character of the lstripped answer ("" when there is none). Returns
 * 0-3 for 'A'-'D', -1 for no character, -2 for any other character. */
int xc_compose_parse_letter(const char *answer);

/* Strips Python's whitespace (str.strip: ASCII and Unicode spaces) in place; returns s. */
char *xc_compose_strip(char *s);

/* ---- steps (each one or more backend calls) ---- */

typedef struct xc_compose_usage {
    char step[24];
    int prompt_tokens, completion_tokens;
} xc_compose_usage;

/* The state of one composition: inputs, results of the steps so far, usage. */
typedef struct xc_compose {
    const xc_compose_conf *conf;
    int step_no; /* seeds: sampling.seed + step_no */
    xc_compose_usage *usage;
    int n_usage;
    char err[512]; /* why the last step failed */
} xc_compose;

void xc_compose_init(xc_compose *s, const xc_compose_conf *conf);
void xc_compose_fini(xc_compose *s);

/* generate_article: the article's paragraphs. */
xc_status xc_compose_article(xc_compose *s, const char *instruction, const xc_compose_image *up,
                             int n_up, char ***paras, int *n_paras);

/* generate_loc: image_num "" (automatic) or a count; positions in the model's order. */
xc_status xc_compose_loc(xc_compose *s, char *const *paras, int n_paras, const xc_compose_image *up,
                         int n_up, const char *image_num, int **locs, int *n_locs);

/* generate_cap: one caption per position, in order, each seeing the earlier ones ("past");
 * caps[k] is the caption made at locs[k] (a repeated position is captioned again). */
xc_status xc_compose_captions(xc_compose *s, char *const *paras, int n_paras, const int *locs,
                              int n_locs, char ***caps);

/* model_select_image: for each paragraph i in slots (in paragraph order) pick among cands[k]
 * (slot k = slots[k]). choice[k] = the picked candidate. */
xc_status xc_compose_select(xc_compose *s, char *const *paras, int n_paras, const int *slots,
                            int n_slots, const xc_compose_cands *cands, int *choice);

/* model_select_imagebase: picks among the unused uploads at each paragraph in locs (paragraph
 * order), then maps locs[k] -> k-th pick as the original's zip does. upload_of[k] gets the upload
 * for locs[k], or -1 when zip gave it none. XC_ERR_ARG when no upload is left or the letter is
 * not a candidate's (the original raises). */
xc_status xc_compose_select_base(xc_compose *s, char *const *paras, int n_paras, const int *locs,
                                 int n_locs, const xc_compose_image *up, int n_up, int *upload_of);

typedef enum xc_compose_edit_kind {
    XC_COMPOSE_EDIT_EXPAND,
    XC_COMPOSE_EDIT_REWRITE,
    XC_COMPOSE_EDIT_ABBREVIATE,
    XC_COMPOSE_EDIT_INSERT_BEFORE,
    XC_COMPOSE_EDIT_INSERT_AFTER,
} xc_compose_edit_kind;

/* The kind for a name: expand|rewrite|abbreviate|insert_before|insert_after, the demo's English
 * labels or its Chinese ones. -1 if unknown. */
int xc_compose_edit_kind_of(const char *name);

/* paragraph_edit: the new text for paragraph index (streamed text with '\n' doubled, as the demo
 * shows it). XC_ERR_ARG for an insert without an instruction or a bad index. */
xc_status xc_compose_edit(xc_compose *s, xc_compose_edit_kind kind, char *const *paras, int n_paras,
                          int index, const char *instruction, char **text);

/* ---- the whole procedure ---- */

typedef struct xc_compose_request {
    const char *instruction;
    const xc_compose_image *up; /* (n_up) uploads */
    int n_up;
    const char *image_num; /* NULL/"" = automatic */
    bool llm_only;
    /* extension: where the images go (paragraph indices, as generate_loc's answer would give
     * them); generate_loc is skipped. NULL = ask the model, as the demo does. */
    const int *positions;
    int n_positions;
} xc_compose_request;

typedef struct xc_compose_slot {
    int paragraph;          /* the image goes after this paragraph */
    char *caption;          /* "" for uploads */
    int upload;             /* the upload shown, or -1 */
    xc_compose_image image; /* a searched image (data NULL for uploads) */
    char name[64];          /* file name in the document */
} xc_compose_slot;

typedef struct xc_compose_result {
    char **paras;
    int n_paras;
    int *locs; /* generate_loc's answer */
    int n_locs;
    xc_compose_slot *slots; /* in paragraph order */
    int n_slots;
    char *markdown;
} xc_compose_result;

void xc_compose_result_fini(xc_compose_result *r);

/* Runs the procedure (insert_images after generate_article). */
xc_status xc_compose_run(xc_compose *s, const xc_compose_request *req, xc_compose_result *out);

/* The document as the demo saves it: each paragraph + "\n", and after a paragraph with an image
 * '<div align="center"> <img src=NAME width = 500/> </div>'. New string. */
char *xc_compose_markdown(const xc_compose_result *r);

/* The file name extension of encoded image bytes ("png", "jpg", ... or "bin"). */
const char *xc_compose_image_ext(const uint8_t *data, size_t len);
