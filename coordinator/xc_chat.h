/* The chat template of InternLM-XComposer2's chat(): system/meta instruction, history turns,
 * <ImageHere> splitting into text segments and image slots, BOS placement, stop ids, and the
 * cut of a decoded reply at the first [UNUSED_TOKEN_145]. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_status.h"
#include "xc_tokenizer.h"

/* Which default meta instruction (system prompt) to use. */
typedef enum xc_chat_variant {
    XC_CHAT_VARIANT_VL = 0, /* internlm-xcomposer2-vl-7b: 4 lines, mentions the image */
    XC_CHAT_VARIANT_7B = 1, /* internlm-xcomposer2-7b: 3 lines, "conversational language model" */
} xc_chat_variant;

/* Where BOS goes. */
typedef enum xc_chat_bos {
    /* As the original chat(): with images, BOS starts every non-empty text segment (also the one
     * right after an image); text-only, the prompt's literal "<s>" plus the tokenizer's BOS give
     * two BOS tokens. */
    XC_CHAT_BOS_PER_SEGMENT = 0,
    /* One BOS at the very start only (training, LMDeploy). */
    XC_CHAT_BOS_SINGLE = 1,
} xc_chat_bos;

/* Image rows in the prompt hold this value instead of a token id. */
#define XC_CHAT_IMAGE_ROW (-1)

/* The marker that <ImageHere> stands for in prompt text. */
#define XC_CHAT_IMAGE_MARKER "<ImageHere>"

typedef struct xc_chat_turn {
    const char *user;      /* NUL-terminated */
    const char *assistant; /* NUL-terminated */
} xc_chat_turn;

typedef struct xc_chat_request {
    xc_chat_variant variant;
    const char *system;          /* NULL = the variant's default meta instruction; "" = none */
    const xc_chat_turn *history; /* (n_history) earlier turns, oldest first */
    size_t n_history;
    const char *query;       /* this turn's user text; may hold <ImageHere> markers */
    size_t n_images;         /* images attached; must equal the number of <ImageHere> */
    size_t tokens_per_image; /* rows per image (256 for 7b, 1225 for VL) */
    xc_chat_bos bos;
    size_t max_rows; /* refuse prompts longer than this (0 = no limit) */
    bool raw;        /* the query is the whole prompt: no markers, meta or history; text-only
                        prompts get one BOS (images still split at <ImageHere>) */
    bool no_generation_prompt; /* end after the query's [UNUSED_TOKEN_145]\n, without the
                                  assistant turn's opening (/tokenize add_generation_prompt) */
} xc_chat_request;

/* [start, end) rows of one image in the prompt. */
typedef struct xc_chat_range {
    size_t start, end;
} xc_chat_range;

/* A built prompt (caller-owned struct; release with xc_chat_prompt_fini). */
typedef struct xc_chat_prompt {
    int32_t *ids; /* (n) token ids, XC_CHAT_IMAGE_ROW on image rows */
    size_t n;
    xc_chat_range *images; /* (n_images) image row ranges: the PLoRA mask */
    size_t n_images;
} xc_chat_prompt;

/* The default meta instruction of a variant (static string). */
const char *xc_chat_default_system(xc_chat_variant variant);

/* Builds the prompt text of chat() (before any <ImageHere> split) into a new xc_malloc'd string.
 * XC_ERR_ARG for a NULL query or turn text, XC_ERR_NOMEM. */
xc_status xc_chat_prompt_text(const xc_chat_request *req, char **out, size_t *out_len);

/* Builds token ids and image slots for req with tok. XC_ERR_ARG when the number of
 * <ImageHere> markers differs from n_images (also for n_images == 0: a literal marker in a
 * text-only prompt is refused rather than silently tokenized), when tokens_per_image is 0 with
 * images, when the prompt exceeds max_rows, or when the model lacks BOS or the chat markers;
 * tokenizer errors pass through. out is written only on XC_OK. */
xc_status xc_chat_build(const xc_tokenizer *tok, const xc_chat_request *req, xc_chat_prompt *out);

/* Frees a prompt and zeroes it. NULL is a no-op. */
void xc_chat_prompt_fini(xc_chat_prompt *p);

/* Stop ids of chat(): EOS and [UNUSED_TOKEN_145], in that order; *n gets how many exist (0-2). */
void xc_chat_stop_ids(const xc_tokenizer *tok, int32_t out[2], size_t *n);

/* Length of the reply text before the first "[UNUSED_TOKEN_145]" (len if there is none), as
 * chat() cuts the decoded reply. */
size_t xc_chat_cut_reply(const char *text, size_t len);
