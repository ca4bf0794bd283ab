/* Wire encode/decode: plain xc_wire_* structs <-> protobuf-c (xc.proto), and the checks that make
 * every decoded header safe to use. The only file that includes xc.pb-c.h. */
#include "xc_wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc.pb-c.h"
#include "xc_mem.h"

/* ---- names ---- */

const char *xc_wire_kind_name(xc_wire_kind kind) {
    switch (kind) {
    case XC_WIRE_KIND_CONTROL:
        return "control";
    case XC_WIRE_KIND_FORWARD:
        return "forward";
    case XC_WIRE_KIND_RESULT:
        return "result";
    }
    return "invalid";
}

const char *xc_wire_ctl_name(xc_wire_ctl kind) {
    static const char *names[] = {"register", "assign", "ready",    "heartbeat",
                                  "drain",    "error",  "shutdown", "reregister"};
    if (kind >= XC_WIRE_CTL_REGISTER && kind <= XC_WIRE_CTL_REREGISTER) {
        return names[kind - XC_WIRE_CTL_REGISTER];
    }
    return "invalid";
}

size_t xc_wire_tensor_bytes(const xc_wire_tensor *t) {
    size_t n;
    if (xc_mul_overflow(t->rows, t->cols, &n) || xc_mul_overflow(n, xc_dtype_size(t->dtype), &n)) {
        return SIZE_MAX;
    }
    return n;
}

/* ---- checks ---- */

#define BAD(...) xc_errf(XC_ERR_PROTO, __VA_ARGS__)

static xc_status check_str(const char *what, const char *s, bool required) {
    if (!s) {
        return required ? BAD("%s is missing", what) : XC_OK;
    }
    size_t n = strnlen(s, XC_WIRE_MAX_STR + 1);
    if (n > XC_WIRE_MAX_STR) {
        return BAD("%s is longer than %u bytes", what, XC_WIRE_MAX_STR);
    }
    if (required && n == 0) {
        return BAD("%s is empty", what);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            return BAD("%s has a control character (0x%02x) at byte %zu", what, c, i);
        }
    }
    return XC_OK;
}

static xc_status check_control(const xc_wire_control *c) {
    switch (c->kind) {
    case XC_WIRE_CTL_REGISTER: {
        const xc_wire_register *r = &c->u.reg;
        XC_TRY(check_str("register.worker_id", r->worker_id, true));
        if (r->backend != XC_WIRE_BACKEND_CPU && r->backend != XC_WIRE_BACKEND_CUDA) {
            return BAD("register.backend %d is not cpu (1) or cuda (2)", (int)r->backend);
        }
        XC_TRY(check_str("register.endpoint", r->endpoint, true));
        if (r->role != XC_WIRE_ROLE_ANY && r->role != XC_WIRE_ROLE_VISION &&
            r->role != XC_WIRE_ROLE_STAGE) {
            return BAD("register.role %d is not any (0), vision (1) or stage (2)", (int)r->role);
        }
        if (r->kv_elem_bytes != 0 && r->kv_elem_bytes != 2 && r->kv_elem_bytes != 4) {
            return BAD("register.kv_elem_bytes %u is not 2 (bf16) or 4 (f32)", r->kv_elem_bytes);
        }
        return check_str("register.device_name", r->device_name, false);
    }
    case XC_WIRE_CTL_ASSIGN: {
        const xc_wire_assign *a = &c->u.assign;
        if (a->n_stages < 1 || a->n_stages > XC_WIRE_MAX_STAGES) {
            return BAD("assign.n_stages %u is outside [1, %u]", a->n_stages, XC_WIRE_MAX_STAGES);
        }
        XC_TRY(check_str("assign.model_path", a->model_path, true));
        if (a->role == XC_WIRE_ROLE_VISION) {
            if (a->stage != 0 || a->layer_begin != 0 || a->layer_end != 0 || a->kv_blocks != 0 ||
                a->unit_begin != 0 || a->unit_end != 0) {
                return BAD("assign: a vision worker gets no stage, layers or KV blocks");
            }
            return check_str("assign.next_endpoint", a->next_endpoint, false);
        }
        if (a->role != XC_WIRE_ROLE_STAGE) {
            return BAD("assign.role %d is not vision (1) or stage (2)", (int)a->role);
        }
        if (a->stage >= a->n_stages) {
            return BAD("assign.stage %u is not below n_stages %u", a->stage, a->n_stages);
        }
        if (a->n_layers < 1 || a->n_layers > XC_WIRE_MAX_LAYERS) {
            return BAD("assign.n_layers %u is outside [1, %u]", a->n_layers, XC_WIRE_MAX_LAYERS);
        }
        if (a->layer_begin >= a->layer_end || a->layer_end > a->n_layers) {
            return BAD("assign layer range [%u, %u) is empty or not inside [0, %u)", a->layer_begin,
                       a->layer_end, a->n_layers);
        }
        if (a->unit_end != 0 &&
            (a->unit_begin >= a->unit_end || a->unit_end > 2 * a->n_layers ||
             a->layer_begin != a->unit_begin / 2 || a->layer_end != (a->unit_end + 1) / 2)) {
            return BAD("assign unit range [%u, %u) is empty, not inside [0, %u) or does not match "
                       "layers [%u, %u)",
                       a->unit_begin, a->unit_end, 2 * a->n_layers, a->layer_begin, a->layer_end);
        }
        if (a->kv_blocks < 1) {
            return BAD("assign.kv_blocks is 0");
        }
        if (a->kv_block_size < 1 || a->kv_block_size > XC_WIRE_MAX_BLOCK_SIZE) {
            return BAD("assign.kv_block_size %u is outside [1, %u]", a->kv_block_size,
                       XC_WIRE_MAX_BLOCK_SIZE);
        }
        if (a->max_rows > XC_WIRE_MAX_TOKENS) {
            return BAD("assign.max_rows %u is above %u", a->max_rows, XC_WIRE_MAX_TOKENS);
        }
        return check_str("assign.next_endpoint", a->next_endpoint, true);
    }
    case XC_WIRE_CTL_READY:
        return check_str("ready.worker_id", c->u.ready.worker_id, false);
    case XC_WIRE_CTL_HEARTBEAT:
        XC_TRY(check_str("heartbeat.endpoint", c->u.heartbeat.endpoint, false));
        return check_str("heartbeat.worker_id", c->u.heartbeat.worker_id, false);
    case XC_WIRE_CTL_DRAIN:
        return XC_OK; /* every value of every field is meaningful */
    case XC_WIRE_CTL_ERROR:
        if (c->u.error.code >= 0 || c->u.error.code < -1000) {
            return BAD("error.code %d is not a negative xc_status", (int)c->u.error.code);
        }
        XC_TRY(check_str("error.worker_id", c->u.error.worker_id, false));
        return check_str("error.message", c->u.error.message, false);
    case XC_WIRE_CTL_SHUTDOWN:
        return check_str("shutdown.reason", c->u.shutdown.reason, false);
    case XC_WIRE_CTL_REREGISTER:
        return check_str("reregister.reason", c->u.reregister.reason, false);
    }
    return BAD("control kind %d is unknown", (int)c->kind);
}

static xc_status check_sampling(size_t i, const xc_wire_sampling *s) {
    if (!isfinite(s->temperature) || s->temperature < 0.0f || s->temperature > 1000.0f ||
        (!s->greedy && s->temperature == 0.0f)) {
        return BAD("seq %zu: sampling.temperature %g is not in (0, 1000] (or 0 with greedy)", i,
                   (double)s->temperature);
    }
    if (!isfinite(s->top_p) || !(s->top_p > 0.0f) || s->top_p > 1.0f) {
        return BAD("seq %zu: sampling.top_p %g is not in (0, 1]", i, (double)s->top_p);
    }
    if (!isfinite(s->repetition_penalty) || !(s->repetition_penalty > 0.0f) ||
        s->repetition_penalty > 1000.0f) {
        return BAD("seq %zu: sampling.repetition_penalty %g is not in (0, 1000]", i,
                   (double)s->repetition_penalty);
    }
    if (s->max_new_tokens < 1 || s->max_new_tokens > XC_WIRE_MAX_POS) {
        return BAD("seq %zu: sampling.max_new_tokens %u is outside [1, %u]", i, s->max_new_tokens,
                   XC_WIRE_MAX_POS);
    }
    if (s->n_stop_ids > XC_WIRE_MAX_STOP_IDS) {
        return BAD("seq %zu: %zu stop ids (at most %u)", i, s->n_stop_ids, XC_WIRE_MAX_STOP_IDS);
    }
    for (size_t k = 0; k < s->n_stop_ids; k++) {
        if (s->stop_ids[k] > INT32_MAX) {
            return BAD("seq %zu: stop id %u is not a token id", i, s->stop_ids[k]);
        }
    }
    if (s->top_logprobs > XC_WIRE_MAX_TOP_LOGPROBS) { /* api helper */
        return BAD("seq %zu: sampling.top_logprobs %u is over %u", i, s->top_logprobs,
                   XC_WIRE_MAX_TOP_LOGPROBS);
    }
    if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f) ||
        !(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f)) {
        return BAD("seq %zu: sampling.presence/frequency_penalty %g / %g not in [-2, 2]", i,
                   (double)s->presence_penalty, (double)s->frequency_penalty);
    }
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f)) {
        return BAD("seq %zu: sampling.min_p %g is not in [0, 1]", i, (double)s->min_p);
    }
    if (s->min_tokens > XC_WIRE_MAX_POS) {
        return BAD("seq %zu: sampling.min_tokens %u is over %u", i, s->min_tokens, XC_WIRE_MAX_POS);
    }
    if (s->n_logit_bias > XC_WIRE_MAX_LOGIT_BIAS) {
        return BAD("seq %zu: %zu logit_bias entries (at most %u)", i, s->n_logit_bias,
                   XC_WIRE_MAX_LOGIT_BIAS);
    }
    for (size_t k = 0; k < s->n_logit_bias; k++) {
        if (s->logit_bias_ids[k] > INT32_MAX ||
            !(s->logit_bias_values[k] >= -100.0f && s->logit_bias_values[k] <= 100.0f)) {
            return BAD("seq %zu: logit_bias %u: %g (ids <= INT32_MAX, bias in [-100, 100])", i,
                       s->logit_bias_ids[k], (double)s->logit_bias_values[k]);
        }
    }
    if (s->choice >= XC_WIRE_MAX_CHOICE) {
        return BAD("seq %zu: sampling.choice %u is not below %u", i, s->choice, XC_WIRE_MAX_CHOICE);
    }
    if (s->resumed_tokens > s->prompt_len) {
        return BAD("seq %zu: sampling.resumed_tokens %u is over prompt_len %u", i,
                   s->resumed_tokens, s->prompt_len);
    }
    if (s->prompt_len > XC_WIRE_MAX_POS || s->n_penalty_ids > XC_WIRE_MAX_POS) {
        return BAD("seq %zu: sampling.prompt_len %u / %zu penalty ids past %u", i, s->prompt_len,
                   s->n_penalty_ids, XC_WIRE_MAX_POS);
    }
    for (size_t k = 0; k < s->n_penalty_ids; k++) {
        if (s->penalty_ids[k] > INT32_MAX) {
            return BAD("seq %zu: penalty id %u is not a token id", i, s->penalty_ids[k]);
        }
    }
    return XC_OK;
}

/* Sequence ids (forks' included) must be unique within a micro-batch: a pairwise look for a few,
 * an open-addressing hash set (linear time) for more (n <= XC_WIRE_MAX_SEQS). */
static xc_status check_unique_ids(const xc_wire_forward *f, size_t n_forks) {
    size_t n = f->n_seqs + n_forks;
    if (n < 2) {
        return XC_OK;
    }
    uint64_t small[16];
    size_t cap = 32;
    while (cap < 2 * n) {
        cap *= 2;
    }
    /* ids (n), then for more than 16 the set: keys (cap) and their used flags (cap) */
    uint64_t *ids = n <= 16 ? small : xc_malloc(n * sizeof *ids + cap * sizeof *ids + cap);
    if (!ids) {
        return xc_errf(XC_ERR_NOMEM, "forward: no memory to check %zu sequence ids", n);
    }
    size_t k = 0;
    for (size_t i = 0; i < f->n_seqs; i++) {
        ids[k++] = f->seqs[i].id;
        for (size_t j = 0; j < f->seqs[i].n_forks; j++) {
            ids[k++] = f->seqs[i].forks[j].id;
        }
    }
    xc_status st = XC_OK;
    if (n <= 16) {
        for (size_t i = 1; i < n && st == XC_OK; i++) {
            for (size_t j = 0; j < i; j++) {
                if (ids[i] == ids[j]) {
                    st = BAD("forward: sequence id %llu appears twice", (unsigned long long)ids[i]);
                    break;
                }
            }
        }
        return st;
    }
    uint64_t *key = ids + n;
    uint8_t *used = (uint8_t *)(key + cap);
    memset(used, 0, cap);
    for (size_t i = 0; i < n && st == XC_OK; i++) {
        uint64_t id = ids[i], h = id * 0x9e3779b97f4a7c15ull;
        for (size_t j = (size_t)(h >> 32) & (cap - 1);; j = (j + 1) & (cap - 1)) {
            if (!used[j]) {
                used[j] = 1;
                key[j] = id;
                break;
            }
            if (key[j] == id) {
                st = BAD("forward: sequence id %llu appears twice", (unsigned long long)id);
                break;
            }
        }
    }
    xc_free(ids);
    return st;
}

static bool is_float_dtype(xc_dtype t) {
    return t == XC_DTYPE_F32 || t == XC_DTYPE_BF16 || t == XC_DTYPE_F16;
}

static xc_status check_frame(const char *what, const xc_wire_tensor *t, size_t i,
                             const size_t *frame_lens, size_t n_frames) {
    if (i >= n_frames) {
        return BAD("forward: %s frame (frame %zu after the header) is missing", what, i + 1);
    }
    size_t want = xc_wire_tensor_bytes(t);
    if (frame_lens[i] != want) {
        return BAD("forward: %s frame has %zu bytes, but [%u, %u] %s needs %zu", what,
                   frame_lens[i], t->rows, t->cols, xc_dtype_name(t->dtype), want);
    }
    return XC_OK;
}

static xc_status check_forward(const xc_wire_forward *f, const size_t *frame_lens,
                               size_t n_frames) {
    if (f->n_seqs > XC_WIRE_MAX_SEQS) {
        return BAD("forward: %zu sequences (at most %u)", f->n_seqs, XC_WIRE_MAX_SEQS);
    }
    if (f->n_release > XC_WIRE_MAX_RELEASE) {
        return BAD("forward: %zu released ids (at most %u)", f->n_release, XC_WIRE_MAX_RELEASE);
    }
    if (f->n_seqs > 0 && (f->kv_block_size < 1 || f->kv_block_size > XC_WIRE_MAX_BLOCK_SIZE)) {
        return BAD("forward: kv_block_size %u is outside [1, %u]", f->kv_block_size,
                   XC_WIRE_MAX_BLOCK_SIZE);
    }
    if (f->n_copies > XC_WIRE_MAX_SEQS) {
        return BAD("forward: %zu block copies (at most %u)", f->n_copies, XC_WIRE_MAX_SEQS);
    }
    for (size_t i = 0; i < f->n_copies; i++) {
        if (f->copy_src[i] == f->copy_dst[i]) {
            return BAD("forward: block copy %zu copies block %u onto itself", i, f->copy_src[i]);
        }
    }
    uint64_t rows = 0, image_rows = 0;
    size_t n_forks = 0;
    for (size_t i = 0; i < f->n_seqs; i++) {
        const xc_wire_seq *s = &f->seqs[i];
        n_forks += s->n_forks;
        if (f->n_seqs + n_forks > XC_WIRE_MAX_SEQS) {
            return BAD("forward: %zu sequences and forks (at most %u)", f->n_seqs + n_forks,
                       XC_WIRE_MAX_SEQS);
        }
        for (size_t k = 0; k < s->n_forks; k++) {
            if (!s->forks[k].sampling) {
                return BAD("seq %zu: fork %zu (id %llu) has no sampling parameters", i, k,
                           (unsigned long long)s->forks[k].id);
            }
            XC_TRY(check_sampling(i, s->forks[k].sampling));
        }
        if (s->n_tokens < 1) {
            return BAD("seq %zu (id %llu): n_tokens is 0", i, (unsigned long long)s->id);
        }
        uint64_t end = (uint64_t)s->first_pos + s->n_tokens;
        if (end > XC_WIRE_MAX_POS) {
            return BAD("seq %zu: first_pos %u + n_tokens %u is past the limit %u", i, s->first_pos,
                       s->n_tokens, XC_WIRE_MAX_POS);
        }
        rows += s->n_tokens;
        if (rows > XC_WIRE_MAX_TOKENS) {
            return BAD("forward: more than %u rows in one micro-batch", XC_WIRE_MAX_TOKENS);
        }
        if (s->n_blocks > XC_WIRE_MAX_BLOCKS) {
            return BAD("seq %zu: block table has %zu entries (at most %u)", i, s->n_blocks,
                       XC_WIRE_MAX_BLOCKS);
        }
        if ((uint64_t)s->n_blocks * f->kv_block_size < end) {
            return BAD("seq %zu: block table of %zu blocks x %u tokens does not cover positions "
                       "up to %llu",
                       i, s->n_blocks, f->kv_block_size, (unsigned long long)end);
        }
        if (s->n_image_ranges > XC_WIRE_MAX_RANGES) {
            return BAD("seq %zu: %zu image ranges (at most %u)", i, s->n_image_ranges,
                       XC_WIRE_MAX_RANGES);
        }
        uint32_t prev_end = 0;
        for (size_t k = 0; k < s->n_image_ranges; k++) {
            const xc_wire_range *r = &s->image_ranges[k];
            if (r->start >= r->end || r->end > s->n_tokens) {
                return BAD("seq %zu: image range %zu [%u, %u) is empty or not inside [0, %u)", i, k,
                           r->start, r->end, s->n_tokens);
            }
            if (k > 0 && r->start < prev_end) {
                return BAD("seq %zu: image range %zu [%u, %u) overlaps or precedes the one before "
                           "(ends at %u)",
                           i, k, r->start, r->end, prev_end);
            }
            prev_end = r->end;
            image_rows += r->end - r->start;
        }
        if (s->sampling) {
            XC_TRY(check_sampling(i, s->sampling));
        }
    }
    XC_TRY(check_unique_ids(f, n_forks));

    const xc_wire_tensor *p = &f->payload;
    bool tokens = p->dtype == XC_DTYPE_I32;
    if (tokens ? p->cols != 1 : !is_float_dtype(p->dtype)) {
        return BAD("forward: payload must be f32/bf16/f16 hidden states or [rows, 1] i32 token "
                   "ids, not [%u, %u] %s",
                   p->rows, p->cols, xc_dtype_name(p->dtype));
    }
    if (p->cols < 1 || p->cols > XC_WIRE_MAX_COLS) {
        return BAD("forward: payload width %u is outside [1, %u]", p->cols, XC_WIRE_MAX_COLS);
    }
    if (p->rows != rows) {
        return BAD("forward: payload has %u rows but the sequences have %llu tokens", p->rows,
                   (unsigned long long)rows);
    }
    size_t want_frames = f->has_image_rows ? 2 : 1;
    if (n_frames != want_frames) {
        return BAD("forward: %zu tensor frames after the header, expected %zu", n_frames,
                   want_frames);
    }
    XC_TRY(check_frame("payload", p, 0, frame_lens, n_frames));
    if (tokens && image_rows > 0 && !f->has_image_rows) {
        return BAD("forward: token payload with %llu image-range rows but no image rows frame",
                   (unsigned long long)image_rows);
    }
    if (f->has_image_rows) {
        const xc_wire_tensor *im = &f->image_rows;
        if (!tokens) {
            return BAD("forward: image rows travel only with token ids (stage 0)");
        }
        if (!is_float_dtype(im->dtype) || im->cols < 1 || im->cols > XC_WIRE_MAX_COLS) {
            return BAD("forward: image rows must be [rows, 1..%u] f32/bf16/f16, not [%u, %u] %s",
                       XC_WIRE_MAX_COLS, im->rows, im->cols, xc_dtype_name(im->dtype));
        }
        if (im->rows != image_rows) {
            return BAD("forward: image rows frame has %u rows but the image ranges cover %llu",
                       im->rows, (unsigned long long)image_rows);
        }
        XC_TRY(check_frame("image rows", im, 1, frame_lens, n_frames));
    }
    return XC_OK;
}

static xc_status check_result(const xc_wire_result *r) {
    if (r->n > XC_WIRE_MAX_SEQS) {
        return BAD("result: %zu tokens (at most %u)", r->n, XC_WIRE_MAX_SEQS);
    }
    for (size_t i = 0; i < r->n; i++) {
        if (r->tokens[i] > INT32_MAX) {
            return BAD("result: token %u for sequence %llu is not a token id", r->tokens[i],
                       (unsigned long long)r->seq_ids[i]);
        }
    }
    /* api helper: logprobs */
    if (r->n_logprobs != 0 && r->n_logprobs != r->n) {
        return BAD("result: %zu logprobs for %zu sequences", r->n_logprobs, r->n);
    }
    size_t tops = 0;
    for (size_t i = 0; i < r->n_logprobs; i++) {
        if (r->n_top[i] > XC_WIRE_MAX_TOP_LOGPROBS || !(r->logprobs[i] <= 0.0f)) {
            return BAD("result: logprob %g with %u alternatives for sequence %zu", r->logprobs[i],
                       r->n_top[i], i);
        }
        tops += r->n_top[i];
    }
    if (tops != r->n_top_ids) {
        return BAD("result: %zu alternatives listed, %zu counted", r->n_top_ids, tops);
    }
    for (size_t i = 0; i < r->n_top_ids; i++) {
        if (r->top_ids[i] > INT32_MAX || !(r->top_logprobs[i] <= 0.0f)) {
            return BAD("result: alternative %zu is not a token id with a logprob", i);
        }
    }
    /* per-sequence failures */
    if (r->n_failed > XC_WIRE_MAX_SEQS) {
        return BAD("result: %zu failed sequences (at most %u)", r->n_failed, XC_WIRE_MAX_SEQS);
    }
    for (size_t i = 0; i < r->n_failed; i++) {
        if (r->failed_codes[i] >= 0 || r->failed_codes[i] < -1000) {
            return BAD("result: failed sequence %llu has code %d (an error status is negative)",
                       (unsigned long long)r->failed_ids[i], (int)r->failed_codes[i]);
        }
        XC_TRY(check_str("result.failed_messages", r->failed_messages[i], false));
    }
    return XC_OK;
}

xc_status xc_wire_check(const xc_wire_msg *m, const size_t *frame_lens, size_t n_frames) {
    if (m->kind != XC_WIRE_KIND_FORWARD && n_frames != 0) {
        return BAD("%s message followed by %zu frames (expected none)", xc_wire_kind_name(m->kind),
                   n_frames);
    }
    switch (m->kind) {
    case XC_WIRE_KIND_CONTROL:
        return check_control(&m->u.control);
    case XC_WIRE_KIND_FORWARD:
        return check_forward(&m->u.forward, frame_lens, n_frames);
    case XC_WIRE_KIND_RESULT:
        return check_result(&m->u.result);
    }
    return BAD("message kind %d is unknown", (int)m->kind);
}

/* ---- dtype and enum mapping ---- */

static Xc__V1__DType dtype_to_pb(xc_dtype t) {
    switch (t) {
    case XC_DTYPE_F32:
        return XC__V1__DTYPE__DTYPE_F32;
    case XC_DTYPE_BF16:
        return XC__V1__DTYPE__DTYPE_BF16;
    case XC_DTYPE_F16:
        return XC__V1__DTYPE__DTYPE_F16;
    case XC_DTYPE_I32:
        return XC__V1__DTYPE__DTYPE_I32;
    default:
        return XC__V1__DTYPE__DTYPE_UNSPECIFIED;
    }
}

/* Returns false for a wire dtype this build does not know (unknown enum numbers arrive raw). */
static bool dtype_from_pb(int v, xc_dtype *out) {
    switch (v) {
    case XC__V1__DTYPE__DTYPE_F32:
        *out = XC_DTYPE_F32;
        return true;
    case XC__V1__DTYPE__DTYPE_BF16:
        *out = XC_DTYPE_BF16;
        return true;
    case XC__V1__DTYPE__DTYPE_F16:
        *out = XC_DTYPE_F16;
        return true;
    case XC__V1__DTYPE__DTYPE_I32:
        *out = XC_DTYPE_I32;
        return true;
    default:
        return false;
    }
}

/* ---- arena-backed protobuf-c allocator ---- */

static void *pb_arena_alloc(void *data, size_t size) {
    return xc_arena_alloc(data, size);
}

static void pb_arena_free(void *data, void *p) {
    (void)data; /* the arena frees everything at once */
    (void)p;
}

#define A_NEW(arena, T, n) ((T *)xc_arena_calloc((arena), (n) ? (n) : 1, sizeof(T)))

/* protobuf-c takes `char *` for strings it only reads. */
static char *pb_str(const char *s) {
    return (char *)(s ? s : "");
}

/* ---- encode ---- */

static Xc__V1__Tensor *tensor_to_pb(xc_arena *a, const xc_wire_tensor *t) {
    Xc__V1__Tensor *p = A_NEW(a, Xc__V1__Tensor, 1);
    if (p) {
        xc__v1__tensor__init(p);
        p->dtype = dtype_to_pb(t->dtype);
        p->rows = t->rows;
        p->cols = t->cols;
    }
    return p;
}

static Xc__V1__Control *control_to_pb(xc_arena *a, const xc_wire_control *c) {
    Xc__V1__Control *p = A_NEW(a, Xc__V1__Control, 1);
    if (!p) {
        return NULL;
    }
    xc__v1__control__init(p);
    switch (c->kind) {
    case XC_WIRE_CTL_REGISTER: {
        Xc__V1__Register *r = A_NEW(a, Xc__V1__Register, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__register__init(r);
        r->worker_id = pb_str(c->u.reg.worker_id);
        r->backend = (Xc__V1__Backend)c->u.reg.backend;
        r->device_mem_bytes = c->u.reg.device_mem_bytes;
        r->host_mem_bytes = c->u.reg.host_mem_bytes;
        r->endpoint = pb_str(c->u.reg.endpoint);
        r->device_name = pb_str(c->u.reg.device_name);
        r->role = (Xc__V1__Role)c->u.reg.role;
        r->incarnation = c->u.reg.incarnation;
        r->kv_elem_bytes = c->u.reg.kv_elem_bytes;
        p->kind_case = XC__V1__CONTROL__KIND_REGISTER;
        p->register_ = r;
        break;
    }
    case XC_WIRE_CTL_ASSIGN: {
        const xc_wire_assign *s = &c->u.assign;
        Xc__V1__Assign *r = A_NEW(a, Xc__V1__Assign, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__assign__init(r);
        r->role = (Xc__V1__Role)s->role;
        r->replica = s->replica;
        r->stage = s->stage;
        r->n_stages = s->n_stages;
        r->layer_begin = s->layer_begin;
        r->layer_end = s->layer_end;
        r->n_layers = s->n_layers;
        r->model_path = pb_str(s->model_path);
        r->next_endpoint = pb_str(s->next_endpoint);
        r->kv_blocks = s->kv_blocks;
        r->kv_block_size = s->kv_block_size;
        r->max_rows = s->max_rows;
        r->unit_begin = s->unit_begin;
        r->unit_end = s->unit_end;
        r->epoch = s->epoch;
        p->kind_case = XC__V1__CONTROL__KIND_ASSIGN;
        p->assign = r;
        break;
    }
    case XC_WIRE_CTL_READY: {
        Xc__V1__Ready *r = A_NEW(a, Xc__V1__Ready, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__ready__init(r);
        r->stage = c->u.ready.stage;
        r->kv_blocks = c->u.ready.kv_blocks;
        r->worker_id = pb_str(c->u.ready.worker_id);
        p->kind_case = XC__V1__CONTROL__KIND_READY;
        p->ready = r;
        break;
    }
    case XC_WIRE_CTL_HEARTBEAT: {
        Xc__V1__Heartbeat *r = A_NEW(a, Xc__V1__Heartbeat, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__heartbeat__init(r);
        r->seq = c->u.heartbeat.seq;
        r->time_ns = c->u.heartbeat.time_ns;
        r->in_flight = c->u.heartbeat.in_flight;
        r->worker_id = pb_str(c->u.heartbeat.worker_id);
        r->busy_ns = c->u.heartbeat.busy_ns; /* api helper */
        r->microbatches = c->u.heartbeat.microbatches;
        r->bytes_sent = c->u.heartbeat.bytes_sent;
        r->endpoint = pb_str(c->u.heartbeat.endpoint);
        r->live_sequences = c->u.heartbeat.live_seqs;
        r->incarnation = c->u.heartbeat.incarnation;
        r->image_cache_hits = c->u.heartbeat.image_cache_hits;
        r->image_cache_misses = c->u.heartbeat.image_cache_misses;
        p->kind_case = XC__V1__CONTROL__KIND_HEARTBEAT;
        p->heartbeat = r;
        break;
    }
    case XC_WIRE_CTL_DRAIN: {
        Xc__V1__Drain *r = A_NEW(a, Xc__V1__Drain, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__drain__init(r);
        r->deadline_ms = c->u.drain.deadline_ms;
        p->kind_case = XC__V1__CONTROL__KIND_DRAIN;
        p->drain = r;
        break;
    }
    case XC_WIRE_CTL_ERROR: {
        Xc__V1__Error *r = A_NEW(a, Xc__V1__Error, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__error__init(r);
        r->code = c->u.error.code;
        r->message = pb_str(c->u.error.message);
        r->fatal = c->u.error.fatal;
        r->worker_id = pb_str(c->u.error.worker_id);
        if (c->u.error.has_microbatch) {
            r->maybe_microbatch_case = XC__V1__ERROR__MAYBE_MICROBATCH_MICROBATCH_ID;
            r->microbatch_id = c->u.error.microbatch_id;
        }
        p->kind_case = XC__V1__CONTROL__KIND_ERROR;
        p->error = r;
        break;
    }
    case XC_WIRE_CTL_SHUTDOWN: {
        Xc__V1__Shutdown *r = A_NEW(a, Xc__V1__Shutdown, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__shutdown__init(r);
        r->reason = pb_str(c->u.shutdown.reason);
        p->kind_case = XC__V1__CONTROL__KIND_SHUTDOWN;
        p->shutdown = r;
        break;
    }
    case XC_WIRE_CTL_REREGISTER: {
        Xc__V1__Reregister *r = A_NEW(a, Xc__V1__Reregister, 1);
        if (!r) {
            return NULL;
        }
        xc__v1__reregister__init(r);
        r->reason = pb_str(c->u.reregister.reason);
        p->kind_case = XC__V1__CONTROL__KIND_REREGISTER;
        p->reregister = r;
        break;
    }
    default:
        break; /* unchecked encode of an unknown kind: an empty Control */
    }
    return p;
}

static Xc__V1__Sampling *sampling_to_pb(xc_arena *a, const xc_wire_sampling *w);

static Xc__V1__Seq *seq_to_pb(xc_arena *a, const xc_wire_seq *s) {
    Xc__V1__Seq *p = A_NEW(a, Xc__V1__Seq, 1);
    if (!p) {
        return NULL;
    }
    xc__v1__seq__init(p);
    p->id = s->id;
    p->first_pos = s->first_pos;
    p->n_tokens = s->n_tokens;
    p->n_block_table = s->n_blocks;
    p->block_table = (uint32_t *)s->block_table;
    if (s->n_image_ranges > 0) {
        Xc__V1__Range *rs = A_NEW(a, Xc__V1__Range, s->n_image_ranges);
        p->image_ranges = A_NEW(a, Xc__V1__Range *, s->n_image_ranges);
        if (!rs || !p->image_ranges) {
            return NULL;
        }
        for (size_t k = 0; k < s->n_image_ranges; k++) {
            xc__v1__range__init(&rs[k]);
            rs[k].start = s->image_ranges[k].start;
            rs[k].end = s->image_ranges[k].end;
            p->image_ranges[k] = &rs[k];
        }
        p->n_image_ranges = s->n_image_ranges;
    }
    if (s->sampling && !(p->sampling = sampling_to_pb(a, s->sampling))) {
        return NULL;
    }
    if (s->n_forks > 0) { /* issue 13.3 */
        Xc__V1__Fork *fs = A_NEW(a, Xc__V1__Fork, s->n_forks);
        p->forks = A_NEW(a, Xc__V1__Fork *, s->n_forks);
        if (!fs || !p->forks) {
            return NULL;
        }
        for (size_t k = 0; k < s->n_forks; k++) {
            xc__v1__fork__init(&fs[k]);
            fs[k].id = s->forks[k].id;
            if (s->forks[k].sampling &&
                !(fs[k].sampling = sampling_to_pb(a, s->forks[k].sampling))) {
                return NULL;
            }
            p->forks[k] = &fs[k];
        }
        p->n_forks = s->n_forks;
    }
    return p;
}

static Xc__V1__Sampling *sampling_to_pb(xc_arena *a, const xc_wire_sampling *w) {
    Xc__V1__Sampling *q = A_NEW(a, Xc__V1__Sampling, 1);
    if (!q) {
        return NULL;
    }
    xc__v1__sampling__init(q);
    q->greedy = w->greedy;
    q->temperature = w->temperature;
    q->top_k = w->top_k;
    q->top_p = w->top_p;
    q->repetition_penalty = w->repetition_penalty;
    q->seed = w->seed;
    q->max_new_tokens = w->max_new_tokens;
    q->n_stop_ids = w->n_stop_ids;
    q->stop_ids = (uint32_t *)w->stop_ids;
    q->prompt_len = w->prompt_len;
    q->n_penalty_ids = w->n_penalty_ids;
    q->penalty_ids = (uint32_t *)w->penalty_ids;
    q->logprobs = w->logprobs; /* api helper */
    q->top_logprobs = w->top_logprobs;
    q->choice = w->choice;
    q->presence_penalty = w->presence_penalty;
    q->frequency_penalty = w->frequency_penalty;
    q->min_p = w->min_p;
    q->min_tokens = w->min_tokens;
    q->n_logit_bias_ids = w->n_logit_bias;
    q->logit_bias_ids = (uint32_t *)w->logit_bias_ids;
    q->n_logit_bias_values = w->n_logit_bias;
    q->logit_bias_values = (float *)w->logit_bias_values;
    q->resumed_tokens = w->resumed_tokens;
    return q;
}

static Xc__V1__Forward *forward_to_pb(xc_arena *a, const xc_wire_forward *f) {
    Xc__V1__Forward *p = A_NEW(a, Xc__V1__Forward, 1);
    if (!p) {
        return NULL;
    }
    xc__v1__forward__init(p);
    p->microbatch_id = f->microbatch_id;
    p->kv_block_size = f->kv_block_size;
    p->epoch = f->epoch;
    if (f->n_seqs > 0) {
        p->seqs = A_NEW(a, Xc__V1__Seq *, f->n_seqs);
        if (!p->seqs) {
            return NULL;
        }
        for (size_t i = 0; i < f->n_seqs; i++) {
            if (!(p->seqs[i] = seq_to_pb(a, &f->seqs[i]))) {
                return NULL;
            }
        }
        p->n_seqs = f->n_seqs;
    }
    p->n_release_ids = f->n_release;
    p->release_ids = (uint64_t *)f->release_ids;
    p->n_copy_src = p->n_copy_dst = f->n_copies; /* issue 13.3 */
    p->copy_src = (uint32_t *)f->copy_src;
    p->copy_dst = (uint32_t *)f->copy_dst;
    if (!(p->payload = tensor_to_pb(a, &f->payload))) {
        return NULL;
    }
    if (f->has_image_rows && !(p->image_rows = tensor_to_pb(a, &f->image_rows))) {
        return NULL;
    }
    return p;
}

static Xc__V1__Result *result_to_pb(xc_arena *a, const xc_wire_result *r) {
    Xc__V1__Result *p = A_NEW(a, Xc__V1__Result, 1);
    if (p) {
        xc__v1__result__init(p);
        p->microbatch_id = r->microbatch_id;
        p->n_seq_ids = r->n;
        p->seq_ids = (uint64_t *)r->seq_ids;
        p->n_tokens = r->n;
        p->tokens = (uint32_t *)r->tokens;
        p->n_logprobs = r->n_logprobs; /* api helper: logprobs */
        p->logprobs = (float *)r->logprobs;
        p->n_n_top = r->n_logprobs;
        p->n_top = (uint32_t *)r->n_top;
        p->n_top_ids = r->n_top_ids;
        p->top_ids = (uint32_t *)r->top_ids;
        p->n_top_logprobs = r->n_top_ids;
        p->top_logprobs = (float *)r->top_logprobs;
        if (r->n_failed > 0) { /* per-sequence failures */
            p->failed_messages = A_NEW(a, char *, r->n_failed);
            if (!p->failed_messages) {
                return NULL;
            }
            for (size_t i = 0; i < r->n_failed; i++) {
                p->failed_messages[i] = pb_str(r->failed_messages[i]);
            }
            p->n_failed_ids = r->n_failed;
            p->failed_ids = (uint64_t *)r->failed_ids;
            p->n_failed_codes = r->n_failed;
            p->failed_codes = (int32_t *)r->failed_codes;
            p->n_failed_messages = r->n_failed;
        }
    }
    return p;
}

/* ---- a direct encoder for Forward ----
 *
 * A Forward header is encoded at every scheduling step (issue 13.6: 1,024 sequences, each with its
 * KV block table). protobuf-c's generic packer walks the descriptors twice (size, then bytes) and
 * needs the message rebuilt in its own structs; this writes the same bytes straight from the
 * plain structs (test_wire compares them with protobuf-c's on random messages): proto3 rules,
 * fields in number order, scalars equal to 0 (and false, and floats == 0) left out, repeated
 * scalars packed, sub-messages present when set. */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static size_t vsz(uint64_t v) {
    return v ? (size_t)(64 - __builtin_clzll(v) + 6) / 7 : 1; /* 7 bits per byte */
}

static uint8_t *put_v(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static size_t tsz(uint32_t field) {
    return vsz((uint64_t)field << 3);
}

static uint8_t *put_tag(uint8_t *p, uint32_t field, int wt) {
    return put_v(p, ((uint64_t)field << 3) | (uint64_t)wt);
}

/* optional scalar fields (left out when zero) */
static size_t u_sz(uint32_t f, uint64_t v) {
    return v ? tsz(f) + vsz(v) : 0;
}

static uint8_t *u_put(uint8_t *p, uint32_t f, uint64_t v) {
    return v ? put_v(put_tag(p, f, WT_VARINT), v) : p;
}

static size_t f_sz(uint32_t f, float v) {
    return v != 0.0f ? tsz(f) + 4 : 0;
}

static uint8_t *f_put(uint8_t *p, uint32_t f, float v) {
    if (v == 0.0f) {
        return p;
    }
    p = put_tag(p, f, WT_I32);
    uint32_t b;
    memcpy(&b, &v, 4);
    for (int i = 0; i < 4; i++) {
        *p++ = (uint8_t)(b >> (8 * i));
    }
    return p;
}

/* packed repeated uint32 / uint64 / float: payload bytes, then the field */
static size_t pk32_len(const uint32_t *v, size_t n) {
    size_t b = 0;
    for (size_t i = 0; i < n; i++) {
        b += vsz(v[i]);
    }
    return b;
}

static size_t pk64_len(const uint64_t *v, size_t n) {
    size_t b = 0;
    for (size_t i = 0; i < n; i++) {
        b += vsz(v[i]);
    }
    return b;
}

static size_t len_sz(uint32_t f, size_t len) {
    return tsz(f) + vsz(len) + len;
}

static uint8_t *pk32_put(uint8_t *p, uint32_t f, const uint32_t *v, size_t n) {
    if (n == 0) {
        return p;
    }
    p = put_v(put_tag(p, f, WT_LEN), pk32_len(v, n));
    for (size_t i = 0; i < n; i++) {
        p = put_v(p, v[i]);
    }
    return p;
}

static uint8_t *pk64_put(uint8_t *p, uint32_t f, const uint64_t *v, size_t n) {
    if (n == 0) {
        return p;
    }
    p = put_v(put_tag(p, f, WT_LEN), pk64_len(v, n));
    for (size_t i = 0; i < n; i++) {
        p = put_v(p, v[i]);
    }
    return p;
}

static uint8_t *pkf_put(uint8_t *p, uint32_t f, const float *v, size_t n) {
    if (n == 0) {
        return p;
    }
    p = put_v(put_tag(p, f, WT_LEN), 4 * n);
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &v[i], 4);
        for (int k = 0; k < 4; k++) {
            *p++ = (uint8_t)(b >> (8 * k));
        }
    }
    return p;
}

static size_t pk32_sz(uint32_t f, const uint32_t *v, size_t n) {
    return n ? len_sz(f, pk32_len(v, n)) : 0;
}

static size_t tensor_body(const xc_wire_tensor *t) {
    return u_sz(1, (uint32_t)dtype_to_pb(t->dtype)) + u_sz(2, t->rows) + u_sz(3, t->cols);
}

static uint8_t *tensor_put(uint8_t *p, uint32_t f, const xc_wire_tensor *t) {
    p = put_v(put_tag(p, f, WT_LEN), tensor_body(t));
    p = u_put(p, 1, (uint32_t)dtype_to_pb(t->dtype));
    p = u_put(p, 2, t->rows);
    return u_put(p, 3, t->cols);
}

static size_t sampling_body(const xc_wire_sampling *w) {
    return u_sz(1, w->greedy) + f_sz(2, w->temperature) + u_sz(3, w->top_k) + f_sz(4, w->top_p) +
           f_sz(5, w->repetition_penalty) + u_sz(6, w->seed) + u_sz(7, w->max_new_tokens) +
           pk32_sz(8, w->stop_ids, w->n_stop_ids) + u_sz(9, w->prompt_len) +
           pk32_sz(10, w->penalty_ids, w->n_penalty_ids) + u_sz(11, w->logprobs) +
           u_sz(12, w->top_logprobs) + u_sz(20, w->choice) + f_sz(21, w->presence_penalty) +
           f_sz(22, w->frequency_penalty) + f_sz(23, w->min_p) + u_sz(24, w->min_tokens) +
           pk32_sz(25, w->logit_bias_ids, w->n_logit_bias) +
           (w->n_logit_bias ? len_sz(26, 4 * w->n_logit_bias) : 0) + u_sz(30, w->resumed_tokens);
}

static uint8_t *sampling_put(uint8_t *p, const xc_wire_sampling *w) {
    p = put_v(put_tag(p, 6, WT_LEN), sampling_body(w));
    p = u_put(p, 1, w->greedy);
    p = f_put(p, 2, w->temperature);
    p = u_put(p, 3, w->top_k);
    p = f_put(p, 4, w->top_p);
    p = f_put(p, 5, w->repetition_penalty);
    p = u_put(p, 6, w->seed);
    p = u_put(p, 7, w->max_new_tokens);
    p = pk32_put(p, 8, w->stop_ids, w->n_stop_ids);
    p = u_put(p, 9, w->prompt_len);
    p = pk32_put(p, 10, w->penalty_ids, w->n_penalty_ids);
    p = u_put(p, 11, w->logprobs);
    p = u_put(p, 12, w->top_logprobs);
    p = u_put(p, 20, w->choice);
    p = f_put(p, 21, w->presence_penalty);
    p = f_put(p, 22, w->frequency_penalty);
    p = f_put(p, 23, w->min_p);
    p = u_put(p, 24, w->min_tokens);
    p = pk32_put(p, 25, w->logit_bias_ids, w->n_logit_bias);
    p = pkf_put(p, 26, w->logit_bias_values, w->n_logit_bias);
    return u_put(p, 30, w->resumed_tokens);
}

static size_t range_body(const xc_wire_range *r) {
    return u_sz(1, r->start) + u_sz(2, r->end);
}

size_t xc_wire_pack_u32(const uint32_t *v, size_t n, uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        p = put_v(p, v[i]);
    }
    return (size_t)(p - out);
}

/* the block table field: its packed bytes when the caller has them */
static size_t table_sz(const xc_wire_seq *s) {
    if (s->n_blocks == 0) {
        return 0;
    }
    return s->block_table_packed ? len_sz(4, s->block_table_packed_len)
                                 : pk32_sz(4, s->block_table, s->n_blocks);
}

static uint8_t *table_put(uint8_t *p, const xc_wire_seq *s) {
    if (s->n_blocks == 0 || !s->block_table_packed) {
        return pk32_put(p, 4, s->block_table, s->n_blocks);
    }
    p = put_v(put_tag(p, 4, WT_LEN), s->block_table_packed_len);
    memcpy(p, s->block_table_packed, s->block_table_packed_len);
    return p + s->block_table_packed_len;
}

/* issue 13.3: Fork{id = 1, sampling = 6} */
static size_t fork_body(const xc_wire_fork *k) {
    return u_sz(1, k->id) + (k->sampling ? len_sz(6, sampling_body(k->sampling)) : 0);
}

static size_t seq_body(const xc_wire_seq *s) {
    size_t b = u_sz(1, s->id) + u_sz(2, s->first_pos) + u_sz(3, s->n_tokens) + table_sz(s);
    for (size_t k = 0; k < s->n_image_ranges; k++) {
        b += len_sz(5, range_body(&s->image_ranges[k]));
    }
    if (s->sampling) {
        b += len_sz(6, sampling_body(s->sampling));
    }
    for (size_t k = 0; k < s->n_forks; k++) {
        b += len_sz(7, fork_body(&s->forks[k]));
    }
    return b;
}

static uint8_t *seq_put(uint8_t *p, const xc_wire_seq *s, size_t body) {
    p = put_v(put_tag(p, 3, WT_LEN), body);
    p = u_put(p, 1, s->id);
    p = u_put(p, 2, s->first_pos);
    p = u_put(p, 3, s->n_tokens);
    p = table_put(p, s);
    for (size_t k = 0; k < s->n_image_ranges; k++) {
        const xc_wire_range *r = &s->image_ranges[k];
        p = put_v(put_tag(p, 5, WT_LEN), range_body(r));
        p = u_put(p, 1, r->start);
        p = u_put(p, 2, r->end);
    }
    p = s->sampling ? sampling_put(p, s->sampling) : p;
    for (size_t k = 0; k < s->n_forks; k++) {
        const xc_wire_fork *fk = &s->forks[k];
        p = put_v(put_tag(p, 7, WT_LEN), fork_body(fk));
        p = u_put(p, 1, fk->id);
        p = fk->sampling ? sampling_put(p, fk->sampling) : p;
    }
    return p;
}

/* Envelope{version, forward: f} into a new buffer. */
static xc_status encode_forward_direct(const xc_wire_forward *f, uint32_t version, void **out,
                                       size_t *out_len) {
    size_t *seq_len = xc_malloc((f->n_seqs ? f->n_seqs : 1) * sizeof *seq_len);
    if (!seq_len) {
        return xc_errf(XC_ERR_NOMEM, "wire: no memory to encode a forward message");
    }
    size_t body = u_sz(1, f->microbatch_id) + u_sz(2, f->kv_block_size);
    for (size_t i = 0; i < f->n_seqs; i++) {
        seq_len[i] = seq_body(&f->seqs[i]);
        body += len_sz(3, seq_len[i]);
    }
    body += f->n_release ? len_sz(4, pk64_len(f->release_ids, f->n_release)) : 0;
    body += len_sz(5, tensor_body(&f->payload));
    body += f->has_image_rows ? len_sz(6, tensor_body(&f->image_rows)) : 0;
    body += pk32_sz(7, f->copy_src, f->n_copies) + pk32_sz(8, f->copy_dst, f->n_copies);
    body += u_sz(30, f->epoch);
    size_t n = u_sz(1, version) + len_sz(3, body);
    uint8_t *buf = xc_malloc(n);
    if (!buf) {
        xc_free(seq_len);
        return xc_errf(XC_ERR_NOMEM, "wire: no memory for a %zu-byte header", n);
    }
    uint8_t *p = u_put(buf, 1, version);
    p = put_v(put_tag(p, 3, WT_LEN), body);
    p = u_put(p, 1, f->microbatch_id);
    p = u_put(p, 2, f->kv_block_size);
    for (size_t i = 0; i < f->n_seqs; i++) {
        p = seq_put(p, &f->seqs[i], seq_len[i]);
    }
    p = pk64_put(p, 4, f->release_ids, f->n_release);
    p = tensor_put(p, 5, &f->payload);
    if (f->has_image_rows) {
        p = tensor_put(p, 6, &f->image_rows);
    }
    p = pk32_put(p, 7, f->copy_src, f->n_copies);
    p = pk32_put(p, 8, f->copy_dst, f->n_copies);
    p = u_put(p, 30, f->epoch);
    XC_ASSERT((size_t)(p - buf) == n);
    xc_free(seq_len);
    *out = buf;
    *out_len = n;
    return XC_OK;
}

xc_status xc_wire_encode_generic(const xc_wire_msg *m, uint32_t version, void **out,
                                 size_t *out_len) {
    xc_arena *a = NULL;
    XC_TRY(xc_arena_create(4096, &a));
    xc_status st = XC_OK;
    Xc__V1__Envelope env = XC__V1__ENVELOPE__INIT;
    env.version = version;
    bool ok = true;
    switch (m->kind) {
    case XC_WIRE_KIND_CONTROL:
        env.body_case = XC__V1__ENVELOPE__BODY_CONTROL;
        ok = (env.control = control_to_pb(a, &m->u.control)) != NULL;
        break;
    case XC_WIRE_KIND_FORWARD:
        env.body_case = XC__V1__ENVELOPE__BODY_FORWARD;
        ok = (env.forward = forward_to_pb(a, &m->u.forward)) != NULL;
        break;
    case XC_WIRE_KIND_RESULT:
        env.body_case = XC__V1__ENVELOPE__BODY_RESULT;
        ok = (env.result = result_to_pb(a, &m->u.result)) != NULL;
        break;
    default:
        break; /* an envelope without a body */
    }
    if (!ok) {
        st = xc_errf(XC_ERR_NOMEM, "wire: no memory to encode a %s message",
                     xc_wire_kind_name(m->kind));
        goto out;
    }
    size_t n = xc__v1__envelope__get_packed_size(&env);
    uint8_t *buf = xc_malloc(n ? n : 1);
    if (!buf) {
        st = xc_errf(XC_ERR_NOMEM, "wire: no memory for a %zu-byte header", n);
        goto out;
    }
    size_t got = xc__v1__envelope__pack(&env, buf);
    XC_ASSERT(got == n);
    *out = buf;
    *out_len = n;
out:
    xc_arena_destroy(a);
    return st;
}

xc_status xc_wire_encode_unchecked(const xc_wire_msg *m, uint32_t version, void **out,
                                   size_t *out_len) {
    if (m->kind == XC_WIRE_KIND_FORWARD) {
        return encode_forward_direct(&m->u.forward, version, out, out_len);
    }
    return xc_wire_encode_generic(m, version, out, out_len);
}

xc_status xc_wire_encode(const xc_wire_msg *m, const size_t *frame_lens, size_t n_frames,
                         void **out, size_t *out_len) {
    xc_status st = xc_wire_check(m, frame_lens, n_frames);
    if (st != XC_OK) {
        /* The same message the decoder would give, but it is our caller's mistake. (Copied
         * first: xc_errf writes the buffer xc_err_last points to.) */
        char why[512];
        snprintf(why, sizeof why, "%s", xc_err_last());
        return xc_errf(XC_ERR_ARG, "wire: refusing to encode an invalid %s message: %s",
                       xc_wire_kind_name(m->kind), why);
    }
    st = xc_wire_encode_unchecked(m, XC_WIRE_VERSION, out, out_len);
    if (st == XC_OK && *out_len > XC_WIRE_MAX_HEADER_BYTES) {
        xc_free(*out);
        *out = NULL;
        return xc_errf(XC_ERR_ARG, "wire: %s header of %zu bytes is over the %u-byte limit",
                       xc_wire_kind_name(m->kind), *out_len, XC_WIRE_MAX_HEADER_BYTES);
    }
    return st;
}

xc_status xc_wire_encode_trusted(const xc_wire_msg *m, void **out, size_t *out_len) {
    XC_TRY(xc_wire_encode_unchecked(m, XC_WIRE_VERSION, out, out_len));
    if (*out_len > XC_WIRE_MAX_HEADER_BYTES) {
        xc_free(*out);
        *out = NULL;
        return xc_errf(XC_ERR_ARG, "wire: %s header of %zu bytes is over the %u-byte limit",
                       xc_wire_kind_name(m->kind), *out_len, XC_WIRE_MAX_HEADER_BYTES);
    }
    return XC_OK;
}

xc_status xc_wire_encode_control(const xc_wire_control *c, void **out, size_t *out_len) {
    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL, .u.control = *c};
    return xc_wire_encode(&m, NULL, 0, out, out_len);
}

xc_status xc_wire_encode_forward(const xc_wire_forward *f, void **out, size_t *out_len) {
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD, .u.forward = *f};
    size_t lens[2] = {xc_wire_tensor_bytes(&f->payload),
                      f->has_image_rows ? xc_wire_tensor_bytes(&f->image_rows) : 0};
    return xc_wire_encode(&m, lens, f->has_image_rows ? 2 : 1, out, out_len);
}

xc_status xc_wire_encode_result(const xc_wire_result *r, void **out, size_t *out_len) {
    xc_wire_msg m = {.kind = XC_WIRE_KIND_RESULT, .u.result = *r};
    return xc_wire_encode(&m, NULL, 0, out, out_len);
}

/* ---- decode ---- */

/* Converts an unpacked body to the plain structs (views into the arena). Only the shapes that
 * the plain structs cannot hold are rejected here (missing sub-messages, unknown enum numbers,
 * parallel arrays of different lengths); xc_wire_check does the rest. */
static xc_status control_from_pb(const Xc__V1__Control *p, xc_wire_control *c) {
    memset(c, 0, sizeof *c);
    switch (p->kind_case) {
    case XC__V1__CONTROL__KIND_REGISTER:
        c->kind = XC_WIRE_CTL_REGISTER;
        c->u.reg = (xc_wire_register){.worker_id = p->register_->worker_id,
                                      .backend = (xc_wire_backend)p->register_->backend,
                                      .device_mem_bytes = p->register_->device_mem_bytes,
                                      .host_mem_bytes = p->register_->host_mem_bytes,
                                      .endpoint = p->register_->endpoint,
                                      .device_name = p->register_->device_name,
                                      .role = (xc_wire_role)p->register_->role,
                                      .incarnation = p->register_->incarnation,
                                      .kv_elem_bytes = p->register_->kv_elem_bytes};
        return XC_OK;
    case XC__V1__CONTROL__KIND_ASSIGN: {
        const Xc__V1__Assign *s = p->assign;
        c->kind = XC_WIRE_CTL_ASSIGN;
        c->u.assign = (xc_wire_assign){.role = (xc_wire_role)s->role,
                                       .replica = s->replica,
                                       .stage = s->stage,
                                       .n_stages = s->n_stages,
                                       .layer_begin = s->layer_begin,
                                       .layer_end = s->layer_end,
                                       .n_layers = s->n_layers,
                                       .model_path = s->model_path,
                                       .next_endpoint = s->next_endpoint,
                                       .kv_blocks = s->kv_blocks,
                                       .kv_block_size = s->kv_block_size,
                                       .max_rows = s->max_rows,
                                       .unit_begin = s->unit_begin,
                                       .unit_end = s->unit_end,
                                       .epoch = s->epoch};
        return XC_OK;
    }
    case XC__V1__CONTROL__KIND_READY:
        c->kind = XC_WIRE_CTL_READY;
        c->u.ready = (xc_wire_ready){.stage = p->ready->stage,
                                     .kv_blocks = p->ready->kv_blocks,
                                     .worker_id = p->ready->worker_id};
        return XC_OK;
    case XC__V1__CONTROL__KIND_HEARTBEAT:
        c->kind = XC_WIRE_CTL_HEARTBEAT;
        c->u.heartbeat =
            (xc_wire_heartbeat){.seq = p->heartbeat->seq,
                                .time_ns = p->heartbeat->time_ns,
                                .in_flight = p->heartbeat->in_flight,
                                .worker_id = p->heartbeat->worker_id,
                                .busy_ns = p->heartbeat->busy_ns,
                                .microbatches = p->heartbeat->microbatches,
                                .bytes_sent = p->heartbeat->bytes_sent,
                                .endpoint = p->heartbeat->endpoint,
                                .live_seqs = p->heartbeat->live_sequences,
                                .incarnation = p->heartbeat->incarnation,
                                .image_cache_hits = p->heartbeat->image_cache_hits,
                                .image_cache_misses = p->heartbeat->image_cache_misses};
        return XC_OK;
    case XC__V1__CONTROL__KIND_DRAIN:
        c->kind = XC_WIRE_CTL_DRAIN;
        c->u.drain.deadline_ms = p->drain->deadline_ms;
        return XC_OK;
    case XC__V1__CONTROL__KIND_ERROR:
        c->kind = XC_WIRE_CTL_ERROR;
        c->u.error =
            (xc_wire_error){.code = p->error->code,
                            .message = p->error->message,
                            .fatal = p->error->fatal,
                            .has_microbatch = p->error->maybe_microbatch_case ==
                                              XC__V1__ERROR__MAYBE_MICROBATCH_MICROBATCH_ID,
                            .microbatch_id = p->error->microbatch_id,
                            .worker_id = p->error->worker_id};
        return XC_OK;
    case XC__V1__CONTROL__KIND_SHUTDOWN:
        c->kind = XC_WIRE_CTL_SHUTDOWN;
        c->u.shutdown.reason = p->shutdown->reason;
        return XC_OK;
    case XC__V1__CONTROL__KIND_REREGISTER:
        c->kind = XC_WIRE_CTL_REREGISTER;
        c->u.reregister.reason = p->reregister->reason;
        return XC_OK;
    default:
        return BAD("control message has no kind (unknown to protocol version %u)", XC_WIRE_VERSION);
    }
}

static xc_status tensor_from_pb(const char *what, const Xc__V1__Tensor *p, xc_wire_tensor *t) {
    if (!dtype_from_pb(p->dtype, &t->dtype)) {
        return BAD("forward: %s dtype %d is unknown", what, (int)p->dtype);
    }
    t->rows = p->rows;
    t->cols = p->cols;
    return XC_OK;
}

static xc_status sampling_from_pb(xc_arena *a, size_t i, const Xc__V1__Sampling *w,
                                  const xc_wire_sampling **out);

static xc_status forward_from_pb(xc_arena *a, const Xc__V1__Forward *p, xc_wire_forward *f) {
    memset(f, 0, sizeof *f);
    f->microbatch_id = p->microbatch_id;
    f->epoch = p->epoch;
    f->kv_block_size = p->kv_block_size;
    if (p->n_seqs > XC_WIRE_MAX_SEQS) {
        return BAD("forward: %zu sequences (at most %u)", p->n_seqs, XC_WIRE_MAX_SEQS);
    }
    xc_wire_seq *seqs = A_NEW(a, xc_wire_seq, p->n_seqs);
    if (!seqs) {
        return xc_errf(XC_ERR_NOMEM, "wire: no memory for %zu sequences", p->n_seqs);
    }
    for (size_t i = 0; i < p->n_seqs; i++) {
        const Xc__V1__Seq *q = p->seqs[i];
        xc_wire_seq *s = &seqs[i];
        s->id = q->id;
        s->first_pos = q->first_pos;
        s->n_tokens = q->n_tokens;
        s->n_blocks = q->n_block_table;
        s->block_table = q->block_table;
        if (q->n_image_ranges > XC_WIRE_MAX_RANGES) {
            return BAD("seq %zu: %zu image ranges (at most %u)", i, q->n_image_ranges,
                       XC_WIRE_MAX_RANGES);
        }
        xc_wire_range *rs = A_NEW(a, xc_wire_range, q->n_image_ranges);
        if (!rs) {
            return xc_errf(XC_ERR_NOMEM, "wire: no memory for image ranges");
        }
        for (size_t k = 0; k < q->n_image_ranges; k++) {
            rs[k].start = q->image_ranges[k]->start;
            rs[k].end = q->image_ranges[k]->end;
        }
        s->n_image_ranges = q->n_image_ranges;
        s->image_ranges = rs;
        if (q->sampling) {
            XC_TRY(sampling_from_pb(a, i, q->sampling, &s->sampling));
        }
        if (q->n_forks > XC_WIRE_MAX_SEQS) {
            return BAD("seq %zu: %zu forks (at most %u)", i, q->n_forks, XC_WIRE_MAX_SEQS);
        }
        if (q->n_forks > 0) { /* issue 13.3 */
            xc_wire_fork *fk = A_NEW(a, xc_wire_fork, q->n_forks);
            if (!fk) {
                return xc_errf(XC_ERR_NOMEM, "wire: no memory for %zu forks", q->n_forks);
            }
            for (size_t k = 0; k < q->n_forks; k++) {
                fk[k].id = q->forks[k]->id;
                fk[k].sampling = NULL;
                if (q->forks[k]->sampling) {
                    XC_TRY(sampling_from_pb(a, i, q->forks[k]->sampling, &fk[k].sampling));
                }
            }
            s->n_forks = q->n_forks;
            s->forks = fk;
        }
    }
    f->n_seqs = p->n_seqs;
    f->seqs = seqs;
    f->n_release = p->n_release_ids;
    f->release_ids = p->release_ids;
    if (p->n_copy_src != p->n_copy_dst) {
        return BAD("forward: %zu copy sources but %zu destinations", p->n_copy_src, p->n_copy_dst);
    }
    f->n_copies = p->n_copy_src;
    f->copy_src = p->copy_src;
    f->copy_dst = p->copy_dst;
    if (!p->payload) {
        return BAD("forward: payload tensor descriptor is missing");
    }
    XC_TRY(tensor_from_pb("payload", p->payload, &f->payload));
    if (p->image_rows) {
        f->has_image_rows = true;
        XC_TRY(tensor_from_pb("image rows", p->image_rows, &f->image_rows));
    }
    return XC_OK;
}

static xc_status sampling_from_pb(xc_arena *a, size_t i, const Xc__V1__Sampling *w,
                                  const xc_wire_sampling **out) {
    xc_wire_sampling *smp = A_NEW(a, xc_wire_sampling, 1);
    if (!smp) {
        return xc_errf(XC_ERR_NOMEM, "wire: no memory for sampling parameters");
    }
    *smp = (xc_wire_sampling){.greedy = w->greedy,
                              .temperature = w->temperature,
                              .top_k = w->top_k,
                              .top_p = w->top_p,
                              .repetition_penalty = w->repetition_penalty,
                              .seed = w->seed,
                              .max_new_tokens = w->max_new_tokens,
                              .n_stop_ids = w->n_stop_ids,
                              .stop_ids = w->stop_ids,
                              .prompt_len = w->prompt_len,
                              .n_penalty_ids = w->n_penalty_ids,
                              .penalty_ids = w->penalty_ids,
                              .logprobs = w->logprobs, /* api helper */
                              .top_logprobs = w->top_logprobs,
                              .choice = w->choice,
                              .presence_penalty = w->presence_penalty,
                              .frequency_penalty = w->frequency_penalty,
                              .min_p = w->min_p,
                              .min_tokens = w->min_tokens,
                              .n_logit_bias = w->n_logit_bias_ids,
                              .logit_bias_ids = w->logit_bias_ids,
                              .logit_bias_values = w->logit_bias_values,
                              .resumed_tokens = w->resumed_tokens};
    if (w->n_logit_bias_ids != w->n_logit_bias_values) {
        return BAD("seq %zu: %zu logit_bias ids but %zu values", i, w->n_logit_bias_ids,
                   w->n_logit_bias_values);
    }
    *out = smp;
    return XC_OK;
}

static xc_status result_from_pb(const Xc__V1__Result *p, xc_wire_result *r) {
    if (p->n_seq_ids != p->n_tokens) {
        return BAD("result: %zu sequence ids but %zu tokens", p->n_seq_ids, p->n_tokens);
    }
    r->microbatch_id = p->microbatch_id;
    r->n = p->n_seq_ids;
    r->seq_ids = p->seq_ids;
    r->tokens = p->tokens;
    /* api helper: logprobs */
    if ((p->n_logprobs && p->n_logprobs != p->n_seq_ids) || p->n_n_top != p->n_logprobs ||
        p->n_top_ids != p->n_top_logprobs) {
        return BAD("result: logprob arrays of inconsistent lengths");
    }
    r->n_logprobs = p->n_logprobs;
    r->logprobs = p->logprobs;
    r->n_top = p->n_top;
    r->n_top_ids = p->n_top_ids;
    r->top_ids = p->top_ids;
    r->top_logprobs = p->top_logprobs;
    if (p->n_failed_ids != p->n_failed_codes || p->n_failed_ids != p->n_failed_messages) {
        return BAD("result: failed-sequence arrays of inconsistent lengths");
    }
    r->n_failed = p->n_failed_ids;
    r->failed_ids = p->failed_ids;
    r->failed_codes = p->failed_codes;
    r->failed_messages = (const char *const *)p->failed_messages;
    return XC_OK;
}

/* Unpacks and converts a header without the semantic checks. */
static xc_status decode_body(const void *buf, size_t len, xc_arena *arena, xc_wire_msg *m) {
    if (len > XC_WIRE_MAX_HEADER_BYTES) {
        return BAD("header of %zu bytes is over the %u-byte limit", len, XC_WIRE_MAX_HEADER_BYTES);
    }
    ProtobufCAllocator alloc = {
        .alloc = pb_arena_alloc, .free = pb_arena_free, .allocator_data = arena};
    Xc__V1__Envelope *env = xc__v1__envelope__unpack(&alloc, len, buf);
    if (!env) {
        return BAD("header of %zu bytes is not a valid protobuf xc.v1.Envelope (garbage or "
                   "truncated)",
                   len);
    }
    if (env->version != XC_WIRE_VERSION) {
        return BAD("header has protocol version %u, this build speaks version %u", env->version,
                   XC_WIRE_VERSION);
    }
    memset(m, 0, sizeof *m);
    switch (env->body_case) {
    case XC__V1__ENVELOPE__BODY_CONTROL:
        m->kind = XC_WIRE_KIND_CONTROL;
        return control_from_pb(env->control, &m->u.control);
    case XC__V1__ENVELOPE__BODY_FORWARD:
        m->kind = XC_WIRE_KIND_FORWARD;
        return forward_from_pb(arena, env->forward, &m->u.forward);
    case XC__V1__ENVELOPE__BODY_RESULT:
        m->kind = XC_WIRE_KIND_RESULT;
        return result_from_pb(env->result, &m->u.result);
    default:
        return BAD("header has no body (control, forward or result)");
    }
}

xc_status xc_wire_decode(const void *buf, size_t len, const size_t *frame_lens, size_t n_frames,
                         xc_arena *arena, xc_wire_msg *out) {
    xc_wire_msg m;
    XC_TRY(decode_body(buf, len, arena, &m));
    XC_TRY(xc_wire_check(&m, frame_lens, n_frames));
    *out = m;
    return XC_OK;
}

/* Checks the kind first, so a message on the wrong link gets the clearer error. */
static xc_status decode_kind(const void *buf, size_t len, const size_t *frame_lens, size_t n_frames,
                             xc_arena *arena, xc_wire_kind want, xc_wire_msg *m) {
    XC_TRY(decode_body(buf, len, arena, m));
    if (m->kind != want) {
        return BAD("expected a %s message, got %s", xc_wire_kind_name(want),
                   xc_wire_kind_name(m->kind));
    }
    return xc_wire_check(m, frame_lens, n_frames);
}

xc_status xc_wire_decode_control(const void *buf, size_t len, xc_arena *arena,
                                 xc_wire_control *out) {
    xc_wire_msg m;
    XC_TRY(decode_kind(buf, len, NULL, 0, arena, XC_WIRE_KIND_CONTROL, &m));
    *out = m.u.control;
    return XC_OK;
}

xc_status xc_wire_decode_forward(const void *buf, size_t len, const size_t *frame_lens,
                                 size_t n_frames, xc_arena *arena, xc_wire_forward *out) {
    xc_wire_msg m;
    XC_TRY(decode_kind(buf, len, frame_lens, n_frames, arena, XC_WIRE_KIND_FORWARD, &m));
    *out = m.u.forward;
    return XC_OK;
}

xc_status xc_wire_decode_result(const void *buf, size_t len, xc_arena *arena, xc_wire_result *out) {
    xc_wire_msg m;
    XC_TRY(decode_kind(buf, len, NULL, 0, arena, XC_WIRE_KIND_RESULT, &m));
    *out = m.u.result;
    return XC_OK;
}
