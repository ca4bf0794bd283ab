/* libFuzzer harness for the wire decoders. Input: byte 0 picks the decoder and the number of
 * tensor frames, bytes 1..8 give two frame lengths (little-endian u32), the rest is frame 0.
 * Whatever decodes must pass xc_wire_check again, re-encode with the checked encoder, and decode
 * from that encoding to the same message (the decoder accepts only what it can reproduce). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "xc_mem.h"
#include "xc_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Traps unless a and b are the same message (the fields a re-encode could change). */
static void same(const xc_wire_msg *a, const xc_wire_msg *b) {
    if (a->kind != b->kind) {
        __builtin_trap();
    }
    if (a->kind == XC_WIRE_KIND_FORWARD) {
        const xc_wire_forward *x = &a->u.forward, *y = &b->u.forward;
        if (x->n_seqs != y->n_seqs || x->n_release != y->n_release ||
            x->microbatch_id != y->microbatch_id || x->payload.rows != y->payload.rows ||
            x->payload.cols != y->payload.cols || x->payload.dtype != y->payload.dtype ||
            x->has_image_rows != y->has_image_rows) {
            __builtin_trap();
        }
        for (size_t i = 0; i < x->n_seqs; i++) {
            const xc_wire_seq *s = &x->seqs[i], *t = &y->seqs[i];
            if (s->id != t->id || s->n_tokens != t->n_tokens || s->n_blocks != t->n_blocks ||
                s->n_image_ranges != t->n_image_ranges || !s->sampling != !t->sampling ||
                (s->n_blocks && memcmp(s->block_table, t->block_table, s->n_blocks * 4))) {
                __builtin_trap();
            }
        }
    } else if (a->kind == XC_WIRE_KIND_RESULT) {
        if (a->u.result.n != b->u.result.n ||
            (a->u.result.n && memcmp(a->u.result.tokens, b->u.result.tokens, a->u.result.n * 4))) {
            __builtin_trap();
        }
    } else if (a->u.control.kind != b->u.control.kind) {
        __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 9) {
        return 0;
    }
    size_t lens[2] = {rd32(data + 1), rd32(data + 5)};
    size_t n_frames = data[0] % 3;
    int which = (data[0] / 3) % 4; /* 0 any, 1 control, 2 forward, 3 result */
    data += 9;
    size -= 9;
    xc_arena *a = NULL;
    if (xc_arena_create(1 << 12, &a) != XC_OK) {
        return 0;
    }
    xc_wire_msg m;
    xc_status st;
    switch (which) {
    case 1:
        m.kind = XC_WIRE_KIND_CONTROL;
        st = xc_wire_decode_control(data, size, a, &m.u.control);
        break;
    case 2:
        m.kind = XC_WIRE_KIND_FORWARD;
        st = xc_wire_decode_forward(data, size, lens, n_frames, a, &m.u.forward);
        break;
    case 3:
        m.kind = XC_WIRE_KIND_RESULT;
        st = xc_wire_decode_result(data, size, a, &m.u.result);
        break;
    default:
        st = xc_wire_decode(data, size, lens, n_frames, a, &m);
        break;
    }
    if (st != XC_OK && st != XC_ERR_PROTO && st != XC_ERR_NOMEM) {
        __builtin_trap();
    }
    if (st == XC_OK) {
        size_t nf = m.kind == XC_WIRE_KIND_FORWARD ? n_frames : 0;
        if (xc_wire_check(&m, lens, nf) != XC_OK) {
            __builtin_trap();
        }
        void *buf = NULL;
        size_t len = 0;
        if (xc_wire_encode(&m, lens, nf, &buf, &len) != XC_OK) {
            __builtin_trap();
        }
        xc_wire_msg m2;
        if (xc_wire_decode(buf, len, lens, nf, a, &m2) != XC_OK) {
            __builtin_trap();
        }
        same(&m, &m2);
        xc_free(buf);
    }
    xc_arena_destroy(a);
    return 0;
}
