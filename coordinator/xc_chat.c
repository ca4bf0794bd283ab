/* Chat template of InternLM-XComposer2 chat() (build_inputs for text-only, interleav_wrap_chat
 * with images): prompt text, segments split at <ImageHere>, BOS placement, image row ranges. */
#include "xc_chat.h"

#include <string.h>

#include "xc_mem.h"

#define IM_START "[UNUSED_TOKEN_146]"
#define IM_END   "[UNUSED_TOKEN_145]"

static const char meta_vl[] =
    "You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).\n"
    "- InternLM-XComposer (浦语·灵笔) is a multi-modality conversational language model that is "
    "developed by Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, "
    "honest, and harmless.\n"
    "- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language "
    "chosen by the user such as English and 中文.\n"
    "- InternLM-XComposer (浦语·灵笔) is capable of comprehending and articulating responses "
    "effectively based on the provided image.";

static const char meta_7b[] =
    "You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).\n"
    "- InternLM-XComposer (浦语·灵笔) is a conversational language model that is developed by "
    "Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and "
    "harmless.\n"
    "- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language "
    "chosen by the user such as English and 中文.";

const char *xc_chat_default_system(xc_chat_variant variant) {
    return variant == XC_CHAT_VARIANT_7B ? meta_7b : meta_vl;
}

/* ---- prompt text ---- */

typedef struct pbuf {
    char *p;
    uint8_t *lit; /* (cap) 1 where the byte is message text (literal), when tracked */
    bool track;
    size_t len, cap;
} pbuf;

static xc_status text_put(pbuf *t, const char *s, bool literal) {
    size_t n = strlen(s);
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1) {
            cap *= 2;
        }
        char *p = xc_realloc(t->p, cap);
        if (p == NULL) {
            return xc_errf(XC_ERR_NOMEM, "out of memory for a %zu-byte chat prompt", cap);
        }
        t->p = p;
        if (t->track) {
            uint8_t *l = xc_realloc(t->lit, cap);
            if (l == NULL) {
                return xc_errf(XC_ERR_NOMEM, "out of memory for a %zu-byte chat prompt", cap);
            }
            t->lit = l;
        }
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n + 1);
    if (t->track) {
        memset(t->lit + t->len, literal, n + 1);
    }
    t->len += n;
    return XC_OK;
}

/* Template text (markers, role names). */
static xc_status text_add(pbuf *t, const char *s) {
    return text_put(t, s, false);
}

/* A message's content: literal text that never becomes a turn marker (docs/api.md, Security). */
static xc_status text_msg(pbuf *t, const char *s) {
    return text_put(t, s, true);
}

/* The prompt text, and with lit non-NULL a per-byte flag of message text (xc_malloc'd). */
static xc_status prompt_text(const xc_chat_request *req, char **out, size_t *out_len,
                             uint8_t **lit);

xc_status xc_chat_prompt_text(const xc_chat_request *req, char **out, size_t *out_len) {
    return prompt_text(req, out, out_len, NULL);
}

static xc_status prompt_text(const xc_chat_request *req, char **out, size_t *out_len,
                             uint8_t **lit) {
    if (req->query == NULL) {
        return xc_errf(XC_ERR_ARG, "chat request has no query");
    }
    for (size_t i = 0; i < req->n_history; i++) {
        if (req->history[i].user == NULL || req->history[i].assistant == NULL) {
            return xc_errf(XC_ERR_ARG, "chat history turn %zu has no user or assistant text", i);
        }
    }
    const char *meta = req->system ? req->system : xc_chat_default_system(req->variant);
    pbuf t = {.track = lit != NULL};
    xc_status st;
    XC_TRY_GOTO(text_add(&t, ""), st, fail);
    if (req->raw) {
        XC_TRY_GOTO(text_add(&t, req->query), st, fail); /* raw: the caller's own prompt */
        goto done;
    }
    if (meta[0]) {
        XC_TRY_GOTO(text_add(&t, IM_START "system\n"), st, fail);
        XC_TRY_GOTO(req->system ? text_msg(&t, meta) : text_add(&t, meta), st, fail);
        XC_TRY_GOTO(text_add(&t, IM_END "\n"), st, fail);
    }
    for (size_t i = 0; i < req->n_history; i++) {
        XC_TRY_GOTO(text_add(&t, IM_START "user\n"), st, fail);
        XC_TRY_GOTO(text_msg(&t, req->history[i].user), st, fail);
        XC_TRY_GOTO(text_add(&t, IM_END "\n" IM_START "assistant\n"), st, fail);
        XC_TRY_GOTO(text_msg(&t, req->history[i].assistant), st, fail);
        XC_TRY_GOTO(text_add(&t, IM_END "\n"), st, fail);
    }
    XC_TRY_GOTO(text_add(&t, IM_START "user\n"), st, fail);
    XC_TRY_GOTO(text_msg(&t, req->query), st, fail);
    XC_TRY_GOTO(
        text_add(&t, req->no_generation_prompt ? IM_END "\n" : IM_END "\n" IM_START "assistant\n"),
        st, fail);
done:
    *out = t.p;
    *out_len = t.len;
    if (lit) {
        *lit = t.lit;
    }
    return XC_OK;
fail:
    xc_free(t.p);
    xc_free(t.lit);
    return st;
}

/* ---- token ids ---- */

static size_t count_markers(const char *s, size_t n) {
    size_t k = 0;
    const size_t ml = sizeof XC_CHAT_IMAGE_MARKER - 1;
    for (size_t i = 0; i + ml <= n;) {
        if (memcmp(s + i, XC_CHAT_IMAGE_MARKER, ml) == 0) {
            k++;
            i += ml;
        } else {
            i++;
        }
    }
    return k;
}

xc_status xc_chat_build(const xc_tokenizer *tok, const xc_chat_request *req, xc_chat_prompt *out) {
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(tok);
    if (sp->bos < 0 || sp->im_start < 0 || sp->im_end < 0) {
        return xc_errf(XC_ERR_ARG,
                       "tokenizer lacks BOS or the chat markers " IM_START "/" IM_END
                       " (ids %d, %d, %d)",
                       sp->bos, sp->im_start, sp->im_end);
    }
    if (req->n_images && req->tokens_per_image == 0) {
        return xc_errf(XC_ERR_ARG, "chat request has %zu images but tokens_per_image is 0",
                       req->n_images);
    }
    char *prompt = NULL;
    uint8_t *lit = NULL;
    size_t plen = 0;
    XC_TRY(prompt_text(req, &prompt, &plen, &lit));
    xc_tokens ids = {0};
    xc_chat_range *ranges = NULL;
    xc_status st = XC_OK;
    size_t markers = count_markers(prompt, plen);
    if (markers != req->n_images) {
        st = xc_errf(XC_ERR_ARG,
                     "the prompt has %zu " XC_CHAT_IMAGE_MARKER " markers but %zu images are "
                     "attached; they must match",
                     markers, req->n_images);
        goto out;
    }
    if (req->n_images == 0) {
        // build_inputs(): "<s>" + prompt through a tokenizer that also adds BOS -> two BOS.
        XC_TRY_GOTO(xc_tokenizer_tokens_push(&ids, sp->bos), st, out);
        if (req->bos == XC_CHAT_BOS_PER_SEGMENT && !req->raw) {
            XC_TRY_GOTO(xc_tokenizer_tokens_push(&ids, sp->bos), st, out);
        }
        XC_TRY_GOTO(xc_tokenizer_encode_literal(tok, prompt, plen, lit, &ids), st, out);
    } else {
        // interleav_wrap_chat(): text parts between the markers, each non-empty part tokenized
        // on its own (with BOS), an image's rows after every part but the last.
        ranges = xc_calloc(req->n_images, sizeof *ranges);
        if (ranges == NULL) {
            st = xc_errf(XC_ERR_NOMEM, "out of memory for %zu image ranges", req->n_images);
            goto out;
        }
        const size_t ml = sizeof XC_CHAT_IMAGE_MARKER - 1;
        size_t pos = 0;
        for (size_t img = 0; img <= req->n_images; img++) {
            const char *end = strstr(prompt + pos, XC_CHAT_IMAGE_MARKER);
            size_t part_end = (img < req->n_images) ? (size_t)(end - prompt) : plen;
            if (part_end > pos) {
                if (req->bos == XC_CHAT_BOS_PER_SEGMENT || ids.n == 0) {
                    XC_TRY_GOTO(xc_tokenizer_tokens_push(&ids, sp->bos), st, out);
                }
                XC_TRY_GOTO(xc_tokenizer_encode_literal(tok, prompt + pos, part_end - pos,
                                                        lit ? lit + pos : NULL, &ids),
                            st, out);
            }
            if (img < req->n_images) {
                ranges[img].start = ids.n;
                for (size_t r = 0; r < req->tokens_per_image; r++) {
                    XC_TRY_GOTO(xc_tokenizer_tokens_push(&ids, XC_CHAT_IMAGE_ROW), st, out);
                }
                ranges[img].end = ids.n;
                pos = part_end + ml;
            }
        }
    }
    if (req->max_rows && ids.n > req->max_rows) {
        st = xc_errf(XC_ERR_ARG, "the chat prompt has %zu rows, more than the limit of %zu", ids.n,
                     req->max_rows);
        goto out;
    }
    out->ids = ids.ids;
    out->n = ids.n;
    out->images = ranges;
    out->n_images = req->n_images;
    ids.ids = NULL;
    ranges = NULL;
out:
    xc_free(prompt);
    xc_free(lit);
    xc_free(ranges);
    xc_tokenizer_tokens_fini(&ids);
    return st;
}

void xc_chat_prompt_fini(xc_chat_prompt *p) {
    if (p == NULL) {
        return;
    }
    xc_free(p->ids);
    xc_free(p->images);
    memset(p, 0, sizeof *p);
}

void xc_chat_stop_ids(const xc_tokenizer *tok, int32_t out[2], size_t *n) {
    const xc_tokenizer_special *sp = xc_tokenizer_special_ids(tok);
    size_t k = 0;
    if (sp->eos >= 0) {
        out[k++] = sp->eos;
    }
    if (sp->im_end >= 0) {
        out[k++] = sp->im_end;
    }
    *n = k;
}

size_t xc_chat_cut_reply(const char *text, size_t len) {
    const size_t ml = sizeof IM_END - 1;
    for (size_t i = 0; i + ml <= len; i++) {
        if (memcmp(text + i, IM_END, ml) == 0) {
            return i;
        }
    }
    return len;
}
