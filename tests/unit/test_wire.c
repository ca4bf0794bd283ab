/* Wire protocol tests: round trips of every message, bytes checked against hand-encoded protobuf,
 * rejection of bad versions, truncations, impossible sizes and ranges (with their messages), and
 * random or mutated bytes that must never crash or pass the checks inconsistently. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_test.h"
#include "xc_wire.h"

/* ---- fixtures ---- */

static const uint32_t blocks_a[] = {3, 8};
static const uint32_t blocks_b[] = {1, 2, 5};
static const xc_wire_range ranges_a[] = {{1, 3}, {4, 5}};
static const uint32_t stops[] = {2, 92542};
static const uint64_t released[] = {100, 101, 1ull << 40};

static const uint32_t bias_ids[] = {5, 2147483647u};
static const float bias_vals[] = {-100.0f, 42.5f};
static const xc_wire_sampling sampling_a = {.greedy = false,
                                            .temperature = 0.7f,
                                            .top_k = 50,
                                            .top_p = 0.9f,
                                            .repetition_penalty = 1.05f,
                                            .seed = 1234567890123ull,
                                            .max_new_tokens = 64,
                                            .n_stop_ids = 2,
                                            .stop_ids = stops,
                                            .prompt_len = 9,
                                            .resumed_tokens = 3,
                                            .choice = 65535,
                                            .presence_penalty = -2.0f,
                                            .frequency_penalty = 1.5f,
                                            .min_p = 0.05f,
                                            .min_tokens = 7,
                                            .n_logit_bias = 2,
                                            .logit_bias_ids = bias_ids,
                                            .logit_bias_values = bias_vals};

/* Two sequences: A (new, 6 rows at 0..5 with image rows 1,2,4) and B (2 rows at 10..11). The
 * payload is token ids with 3 image rows of width 16 (stage 0). */
static void make_forward(xc_wire_seq seqs[2], xc_wire_forward *f) {
    seqs[0] = (xc_wire_seq){.id = 7,
                            .first_pos = 0,
                            .n_tokens = 6,
                            .n_blocks = 2,
                            .block_table = blocks_a,
                            .n_image_ranges = 2,
                            .image_ranges = ranges_a,
                            .sampling = &sampling_a};
    seqs[1] = (xc_wire_seq){
        .id = 9, .first_pos = 10, .n_tokens = 2, .n_blocks = 3, .block_table = blocks_b};
    *f = (xc_wire_forward){.microbatch_id = 77,
                           .kv_block_size = 4,
                           .n_seqs = 2,
                           .seqs = seqs,
                           .n_release = 3,
                           .release_ids = released,
                           .payload = {XC_DTYPE_I32, 8, 1},
                           .has_image_rows = true,
                           .image_rows = {XC_DTYPE_F32, 3, 16}};
}

static const size_t fwd_lens[2] = {8 * 4, 3 * 16 * 4};

/* Encodes without checks (as a hostile peer could) and decodes; returns the decode status. */
static xc_status roundtrip_unchecked(const xc_wire_msg *m, const size_t *lens, size_t n_lens,
                                     xc_arena *arena, xc_wire_msg *out) {
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_unchecked(m, XC_WIRE_VERSION, &buf, &len), XC_OK);
    xc_status st = xc_wire_decode(buf, len, lens, n_lens, arena, out);
    xc_free(buf);
    return st;
}

/* Asserts that decoding the unchecked encoding of m fails with XC_ERR_PROTO and a message that
 * contains `want`, and that the checked encoder refuses it with XC_ERR_ARG. */
static void expect_reject(const xc_wire_msg *m, const size_t *lens, size_t n_lens,
                          const char *want) {
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_msg out;
    xc_status st = roundtrip_unchecked(m, lens, n_lens, a, &out);
    if (st != XC_ERR_PROTO || !strstr(xc_err_last(), want)) {
        fail_msg("expected XC_ERR_PROTO with '%s', got %s: '%s'", want, xc_status_str(st),
                 xc_err_last());
    }
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode(m, lens, n_lens, &buf, &len), XC_ERR_ARG);
    assert_non_null(strstr(xc_err_last(), want));
    assert_null(buf);
    xc_arena_destroy(a);
}

/* The decoder half of expect_reject, for values the checked encoder words differently. */
static void expect_decode_reject(const xc_wire_msg *m, const size_t *lens, size_t n_lens,
                                 const char *want) {
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_msg out;
    xc_status st = roundtrip_unchecked(m, lens, n_lens, a, &out);
    if (st != XC_ERR_PROTO || !strstr(xc_err_last(), want)) {
        fail_msg("expected XC_ERR_PROTO with '%s', got %s: '%s'", want, xc_status_str(st),
                 xc_err_last());
    }
    xc_arena_destroy(a);
}

/* ---- round trips ---- */

static void test_wire_forward_roundtrip(void **state) {
    (void)state;
    xc_wire_seq seqs[2];
    xc_wire_forward f;
    make_forward(seqs, &f);
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_forward(&f, &buf, &len), XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_forward g;
    assert_int_equal(xc_wire_decode_forward(buf, len, fwd_lens, 2, a, &g), XC_OK);
    assert_int_equal(g.microbatch_id, 77);
    assert_int_equal(g.kv_block_size, 4);
    assert_int_equal(g.n_seqs, 2);
    for (size_t i = 0; i < 2; i++) {
        const xc_wire_seq *s = &seqs[i], *t = &g.seqs[i];
        assert_int_equal(t->id, s->id);
        assert_int_equal(t->first_pos, s->first_pos);
        assert_int_equal(t->n_tokens, s->n_tokens);
        assert_int_equal(t->n_blocks, s->n_blocks);
        assert_memory_equal(t->block_table, s->block_table, s->n_blocks * sizeof(uint32_t));
        assert_int_equal(t->n_image_ranges, s->n_image_ranges);
        for (size_t k = 0; k < s->n_image_ranges; k++) {
            assert_int_equal(t->image_ranges[k].start, s->image_ranges[k].start);
            assert_int_equal(t->image_ranges[k].end, s->image_ranges[k].end);
        }
        assert_int_equal(t->sampling != NULL, s->sampling != NULL);
    }
    const xc_wire_sampling *p = g.seqs[0].sampling;
    assert_false(p->greedy);
    assert_true(p->temperature == 0.7f && p->top_p == 0.9f && p->repetition_penalty == 1.05f);
    assert_int_equal(p->top_k, 50);
    assert_int_equal(p->seed, 1234567890123ull);
    assert_int_equal(p->choice, 65535);
    assert_true(p->presence_penalty == -2.0f && p->frequency_penalty == 1.5f && p->min_p == 0.05f);
    assert_int_equal(p->min_tokens, 7);
    assert_int_equal(p->n_logit_bias, 2);
    assert_int_equal(p->logit_bias_ids[1], 2147483647u);
    assert_true(p->logit_bias_values[0] == -100.0f && p->logit_bias_values[1] == 42.5f);
    assert_int_equal(p->max_new_tokens, 64);
    assert_int_equal(p->prompt_len, 9);
    assert_int_equal(p->resumed_tokens, 3);
    assert_int_equal(p->n_stop_ids, 2);
    assert_memory_equal(p->stop_ids, stops, sizeof stops);
    assert_int_equal(g.n_release, 3);
    assert_memory_equal(g.release_ids, released, sizeof released);
    assert_int_equal(g.payload.dtype, XC_DTYPE_I32);
    assert_int_equal(g.payload.rows, 8);
    assert_int_equal(g.payload.cols, 1);
    assert_true(g.has_image_rows);
    assert_int_equal(g.image_rows.dtype, XC_DTYPE_F32);
    assert_int_equal(g.image_rows.rows, 3);
    assert_int_equal(g.image_rows.cols, 16);
    xc_free(buf);
    xc_arena_destroy(a);
}

/* issue 13.3: forks of a sequence (ids and their own sampling) and the KV block copies travel
 * intact; a fork without sampling, a fork id equal to another sequence's and a copy onto itself
 * are rejected. */
static void test_wire_forks_and_copies(void **state) {
    (void)state;
    xc_wire_seq seqs[2];
    xc_wire_forward f;
    make_forward(seqs, &f);
    xc_wire_sampling s1 = sampling_a, s2 = sampling_a;
    s1.choice = 1;
    s2.choice = 2;
    s2.seed = 99;
    xc_wire_fork fk[2] = {{.id = 11, .sampling = &s1}, {.id = 12, .sampling = &s2}};
    seqs[0].n_forks = 2;
    seqs[0].forks = fk;
    static const uint32_t src[2] = {1, 1}, dst[2] = {5, 6};
    f.n_copies = 2;
    f.copy_src = src;
    f.copy_dst = dst;
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_forward(&f, &buf, &len), XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_forward g;
    assert_int_equal(xc_wire_decode_forward(buf, len, fwd_lens, 2, a, &g), XC_OK);
    xc_free(buf);
    assert_int_equal(g.seqs[0].n_forks, 2);
    assert_int_equal(g.seqs[1].n_forks, 0);
    assert_int_equal(g.seqs[0].forks[0].id, 11);
    assert_int_equal(g.seqs[0].forks[1].id, 12);
    assert_int_equal(g.seqs[0].forks[0].sampling->choice, 1);
    assert_int_equal(g.seqs[0].forks[1].sampling->choice, 2);
    assert_int_equal(g.seqs[0].forks[1].sampling->seed, 99);
    assert_int_equal(g.seqs[0].forks[1].sampling->prompt_len, sampling_a.prompt_len);
    assert_int_equal(g.n_copies, 2);
    assert_memory_equal(g.copy_src, src, sizeof src);
    assert_memory_equal(g.copy_dst, dst, sizeof dst);
    xc_arena_destroy(a);

    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD, .u.forward = f};
    fk[1].sampling = NULL;
    expect_reject(&m, fwd_lens, 2, "has no sampling parameters");
    fk[1].sampling = &s2;
    fk[1].id = 9; /* seqs[1]'s id */
    expect_reject(&m, fwd_lens, 2, "appears twice");
    fk[1].id = 7; /* its own parent's */
    expect_reject(&m, fwd_lens, 2, "appears twice");
    fk[1].id = 12;
    static const uint32_t self[2] = {5, 6};
    m.u.forward.copy_src = self;
    expect_reject(&m, fwd_lens, 2, "onto itself");
}

/* Hidden-state payloads in each float dtype, no image frame, an empty micro-batch that only
 * releases sequences. */
static void test_wire_forward_hidden_roundtrip(void **state) {
    (void)state;
    const xc_dtype dts[] = {XC_DTYPE_F32, XC_DTYPE_BF16, XC_DTYPE_F16};
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    for (size_t d = 0; d < 3; d++) {
        xc_wire_seq seqs[2];
        xc_wire_forward f;
        make_forward(seqs, &f);
        f.payload = (xc_wire_tensor){dts[d], 8, 4096};
        f.has_image_rows = false;
        void *buf = NULL;
        size_t len = 0;
        assert_int_equal(xc_wire_encode_forward(&f, &buf, &len), XC_OK);
        size_t lens[1] = {8 * 4096 * xc_dtype_size(dts[d])};
        xc_wire_forward g;
        assert_int_equal(xc_wire_decode_forward(buf, len, lens, 1, a, &g), XC_OK);
        assert_int_equal(g.payload.dtype, dts[d]);
        assert_int_equal(g.payload.cols, 4096);
        assert_false(g.has_image_rows);
        assert_int_equal(g.seqs[0].n_image_ranges, 2); /* the PLoRA mask travels on */
        xc_free(buf);
        xc_arena_reset(a);
    }
    xc_wire_forward e = {.microbatch_id = 5,
                         .n_release = 3,
                         .release_ids = released,
                         .payload = {XC_DTYPE_F32, 0, 4096}};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_forward(&e, &buf, &len), XC_OK);
    size_t zero = 0;
    xc_wire_forward g;
    assert_int_equal(xc_wire_decode_forward(buf, len, &zero, 1, a, &g), XC_OK);
    assert_int_equal(g.n_seqs, 0);
    assert_int_equal(g.n_release, 3);
    xc_free(buf);
    xc_arena_destroy(a);
}

static void check_control_roundtrip(const xc_wire_control *c, xc_wire_control *out, xc_arena *a) {
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_control(c, &buf, &len), XC_OK);
    assert_int_equal(xc_wire_decode_control(buf, len, a, out), XC_OK);
    assert_int_equal(out->kind, c->kind);
    xc_free(buf);
}

static void test_wire_control_roundtrip(void **state) {
    (void)state;
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_control c, d;

    c = (xc_wire_control){.kind = XC_WIRE_CTL_REGISTER,
                          .u.reg = {.worker_id = "w-0",
                                    .backend = XC_WIRE_BACKEND_CUDA,
                                    .device_mem_bytes = 80ull << 30,
                                    .host_mem_bytes = 1ull << 40,
                                    .endpoint = "tcp://10.0.0.2:5600",
                                    .device_name = "NVIDIA H100"}};
    check_control_roundtrip(&c, &d, a);
    assert_string_equal(d.u.reg.worker_id, "w-0");
    assert_int_equal(d.u.reg.backend, XC_WIRE_BACKEND_CUDA);
    assert_int_equal(d.u.reg.device_mem_bytes, 80ull << 30);
    assert_int_equal(d.u.reg.host_mem_bytes, 1ull << 40);
    assert_string_equal(d.u.reg.endpoint, "tcp://10.0.0.2:5600");
    assert_string_equal(d.u.reg.device_name, "NVIDIA H100");

    c = (xc_wire_control){.kind = XC_WIRE_CTL_ASSIGN,
                          .u.assign = {.role = XC_WIRE_ROLE_STAGE,
                                       .replica = 1,
                                       .stage = 2,
                                       .n_stages = 3,
                                       .layer_begin = 22,
                                       .layer_end = 32,
                                       .n_layers = 32,
                                       .model_path = "/models/xc2",
                                       .next_endpoint = "ipc:///tmp/xc-c",
                                       .kv_blocks = 900,
                                       .kv_block_size = 16}};
    check_control_roundtrip(&c, &d, a);
    assert_memory_equal(&d.u.assign.role, &c.u.assign.role, sizeof(xc_wire_role));
    assert_int_equal(d.u.assign.replica, 1);
    assert_int_equal(d.u.assign.stage, 2);
    assert_int_equal(d.u.assign.n_stages, 3);
    assert_int_equal(d.u.assign.layer_begin, 22);
    assert_int_equal(d.u.assign.layer_end, 32);
    assert_int_equal(d.u.assign.n_layers, 32);
    assert_string_equal(d.u.assign.model_path, "/models/xc2");
    assert_string_equal(d.u.assign.next_endpoint, "ipc:///tmp/xc-c");
    assert_int_equal(d.u.assign.kv_blocks, 900);
    assert_int_equal(d.u.assign.kv_block_size, 16);

    c = (xc_wire_control){
        .kind = XC_WIRE_CTL_ASSIGN,
        .u.assign = {
            .role = XC_WIRE_ROLE_VISION, .n_stages = 2, .model_path = "/m", .next_endpoint = ""}};
    check_control_roundtrip(&c, &d, a);
    assert_int_equal(d.u.assign.role, XC_WIRE_ROLE_VISION);

    c = (xc_wire_control){.kind = XC_WIRE_CTL_READY, .u.ready = {.stage = 1, .kv_blocks = 512}};
    check_control_roundtrip(&c, &d, a);
    assert_int_equal(d.u.ready.stage, 1);
    assert_int_equal(d.u.ready.kv_blocks, 512);

    c = (xc_wire_control){.kind = XC_WIRE_CTL_HEARTBEAT,
                          .u.heartbeat = {.seq = 41, .time_ns = 1ull << 62, .in_flight = 3}};
    check_control_roundtrip(&c, &d, a);
    assert_int_equal(d.u.heartbeat.seq, 41);
    assert_int_equal(d.u.heartbeat.time_ns, 1ull << 62);
    assert_int_equal(d.u.heartbeat.in_flight, 3);

    c = (xc_wire_control){.kind = XC_WIRE_CTL_DRAIN, .u.drain = {.deadline_ms = 30000}};
    check_control_roundtrip(&c, &d, a);
    assert_int_equal(d.u.drain.deadline_ms, 30000);

    c = (xc_wire_control){.kind = XC_WIRE_CTL_ERROR,
                          .u.error = {.code = XC_ERR_DEVICE,
                                      .message = "cudaMalloc failed: out of memory",
                                      .fatal = true,
                                      .has_microbatch = true,
                                      .microbatch_id = 0}};
    check_control_roundtrip(&c, &d, a);
    assert_int_equal(d.u.error.code, XC_ERR_DEVICE);
    assert_string_equal(d.u.error.message, "cudaMalloc failed: out of memory");
    assert_true(d.u.error.fatal);
    assert_true(d.u.error.has_microbatch); /* presence of a zero id survives (oneof) */
    assert_int_equal(d.u.error.microbatch_id, 0);
    c.u.error.has_microbatch = false;
    check_control_roundtrip(&c, &d, a);
    assert_false(d.u.error.has_microbatch);

    c = (xc_wire_control){.kind = XC_WIRE_CTL_SHUTDOWN, .u.shutdown = {.reason = "scale down"}};
    check_control_roundtrip(&c, &d, a);
    assert_string_equal(d.u.shutdown.reason, "scale down");
    assert_string_equal(xc_wire_ctl_name(d.kind), "shutdown");
    xc_arena_destroy(a);
}

static void test_wire_result_roundtrip(void **state) {
    (void)state;
    const uint64_t ids[] = {7, 9, 1ull << 50};
    const uint32_t toks[] = {92542, 0, 13};
    xc_wire_result r = {.microbatch_id = 77, .n = 3, .seq_ids = ids, .tokens = toks};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_result(&r, &buf, &len), XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_result g;
    assert_int_equal(xc_wire_decode_result(buf, len, a, &g), XC_OK);
    assert_int_equal(g.microbatch_id, 77);
    assert_int_equal(g.n, 3);
    assert_memory_equal(g.seq_ids, ids, sizeof ids);
    assert_memory_equal(g.tokens, toks, sizeof toks);
    xc_free(buf);
    xc_arena_destroy(a);
}

/* Result.failed_ids/codes/messages (fields 8-10, added): the encoding against protobuf's wire
 * format written out by hand (Envelope{version: 1, result: {failed_ids: [5], failed_codes: [-2],
 * failed_messages: ["x"]}}: packed varints, -2 as a ten-byte varint), the round trip, and the
 * checks (lengths, codes that are not errors, control characters). */
static void test_wire_result_failed_sequences(void **state) {
    (void)state;
    static const uint8_t want[] = {0x08, 0x01, 0x22, 0x12, 0x42, 0x01, 0x05, 0x4a,
                                   0x0a, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0xff, 0x01, 0x52, 0x01, 0x78};
    const uint64_t fid[] = {5};
    const int32_t fcode[] = {XC_ERR_ARG};
    const char *fmsg[] = {"x"};
    xc_wire_result r = {
        .n_failed = 1, .failed_ids = fid, .failed_codes = fcode, .failed_messages = fmsg};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_result(&r, &buf, &len), XC_OK);
    assert_int_equal(len, sizeof want);
    assert_memory_equal(buf, want, sizeof want);
    xc_free(buf);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_result g;
    assert_int_equal(xc_wire_decode_result(want, sizeof want, a, &g), XC_OK);
    assert_int_equal(g.n, 0);
    assert_int_equal(g.n_failed, 1);
    assert_int_equal(g.failed_ids[0], 5);
    assert_int_equal(g.failed_codes[0], XC_ERR_ARG);
    assert_string_equal(g.failed_messages[0], "x");
    /* with tokens for other sequences and two failures */
    const uint64_t ids[] = {1, 2};
    const uint32_t toks[] = {3, 4};
    const uint64_t fid2[] = {7, 8};
    const int32_t fcode2[] = {XC_ERR_NOMEM, XC_ERR_PROTO};
    const char *fmsg2[] = {"no memory for a sampler", "seq 8 is unknown here"};
    r = (xc_wire_result){.microbatch_id = 9,
                         .n = 2,
                         .seq_ids = ids,
                         .tokens = toks,
                         .n_failed = 2,
                         .failed_ids = fid2,
                         .failed_codes = fcode2,
                         .failed_messages = fmsg2};
    assert_int_equal(xc_wire_encode_result(&r, &buf, &len), XC_OK);
    assert_int_equal(xc_wire_decode_result(buf, len, a, &g), XC_OK);
    xc_free(buf);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.n_failed, 2);
    assert_memory_equal(g.failed_ids, fid2, sizeof fid2);
    assert_memory_equal(g.failed_codes, fcode2, sizeof fcode2);
    assert_string_equal(g.failed_messages[1], "seq 8 is unknown here");
    xc_wire_msg m = {.kind = XC_WIRE_KIND_RESULT, .u.result = r};
    const int32_t ok_code[] = {XC_ERR_NOMEM, 0};
    m.u.result.failed_codes = ok_code;
    expect_reject(&m, NULL, 0,
                  "result: failed sequence 8 has code 0 (an error status is negative)");
    const char *bad_msg[] = {"a", "b\n"};
    m.u.result.failed_codes = fcode2;
    m.u.result.failed_messages = bad_msg;
    expect_reject(&m, NULL, 0, "result.failed_messages has a control character (0x0a) at byte 1");
    /* inconsistent lengths on the wire: failed_ids [5] without codes or messages */
    static const uint8_t short_lists[] = {0x08, 0x01, 0x22, 0x03, 0x42, 0x01, 0x05};
    assert_int_equal(xc_wire_decode_result(short_lists, sizeof short_lists, a, &g), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "failed-sequence arrays of inconsistent lengths"));
    xc_arena_destroy(a);
}

/* The bytes against protobuf's wire format written out by hand: Envelope{version: 1, control:
 * {heartbeat: {seq: 5}}} is 08 01 | 12 04 | 22 02 | 08 05 (field 1 varint; field 2 and, inside,
 * field 4 length-delimited; seq = field 1 varint). */
static void test_wire_bytes_match_protobuf_encoding(void **state) {
    (void)state;
    static const uint8_t want[] = {0x08, 0x01, 0x12, 0x04, 0x22, 0x02, 0x08, 0x05};
    xc_wire_control c = {.kind = XC_WIRE_CTL_HEARTBEAT, .u.heartbeat = {.seq = 5}};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_control(&c, &buf, &len), XC_OK);
    assert_int_equal(len, sizeof want);
    assert_memory_equal(buf, want, sizeof want);
    xc_free(buf);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_control d;
    assert_int_equal(xc_wire_decode_control(want, sizeof want, a, &d), XC_OK);
    assert_int_equal(d.kind, XC_WIRE_CTL_HEARTBEAT);
    assert_int_equal(d.u.heartbeat.seq, 5);
    xc_arena_destroy(a);
}

/* The fuzz seeds, written by tools/wire/make_fuzz_seeds.py straight from the protobuf wire
 * format (not by protoc-c), decode as the messages that script describes. */
static void test_wire_decodes_hand_encoded_seeds(void **state) {
    (void)state;

    static const struct {
        const char *name;
        xc_wire_kind kind;
        int ctl;
    } seeds[] = {
        {"heartbeat", XC_WIRE_KIND_CONTROL, XC_WIRE_CTL_HEARTBEAT},
        {"register", XC_WIRE_KIND_CONTROL, XC_WIRE_CTL_REGISTER},
        {"assign", XC_WIRE_KIND_CONTROL, XC_WIRE_CTL_ASSIGN},
        {"ready", XC_WIRE_KIND_CONTROL, XC_WIRE_CTL_READY},
        {"drain", XC_WIRE_KIND_CONTROL, XC_WIRE_CTL_DRAIN},
        {"error", XC_WIRE_KIND_CONTROL, XC_WIRE_CTL_ERROR},
        {"shutdown", XC_WIRE_KIND_CONTROL, XC_WIRE_CTL_SHUTDOWN},
        {"forward_stage0", XC_WIRE_KIND_FORWARD, 0},
        {"forward_hidden", XC_WIRE_KIND_FORWARD, 0},
        {"result", XC_WIRE_KIND_RESULT, 0},
    };

    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/../fuzz/corpus/wire/%s", XC_FIXTURE_DIR, seeds[i].name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        uint8_t buf[512];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        assert_true(n > 9);
        /* The harness prefix: frame count, two little-endian u32 frame lengths. */
        size_t lens[2] = {buf[1] | buf[2] << 8 | buf[3] << 16 | (size_t)buf[4] << 24,
                          buf[5] | buf[6] << 8 | buf[7] << 16 | (size_t)buf[8] << 24};
        xc_wire_msg m;
        xc_status st = xc_wire_decode(buf + 9, n - 9, lens, buf[0] % 3, a, &m);
        if (st != XC_OK) {
            fail_msg("seed %s: %s", seeds[i].name, xc_err_last());
        }
        assert_int_equal(m.kind, seeds[i].kind);
        if (m.kind == XC_WIRE_KIND_CONTROL) {
            assert_int_equal(m.u.control.kind, seeds[i].ctl);
        }
        if (!strcmp(seeds[i].name, "error")) {
            assert_int_equal(m.u.control.u.error.code, -6);
            assert_string_equal(m.u.control.u.error.message, "device lost");
            assert_true(m.u.control.u.error.has_microbatch);
            assert_int_equal(m.u.control.u.error.microbatch_id, 7);
        }
        if (!strcmp(seeds[i].name, "forward_stage0")) {
            const xc_wire_forward *fw = &m.u.forward;
            assert_int_equal(fw->n_seqs, 2);
            assert_int_equal(fw->seqs[0].n_image_ranges, 2);
            assert_int_equal(fw->seqs[0].image_ranges[1].start, 4);
            assert_true(fw->seqs[0].sampling->top_p == 0.9f);
            assert_int_equal(fw->seqs[0].sampling->stop_ids[1], 92542);
            assert_int_equal(fw->seqs[1].block_table[2], 5);
            assert_int_equal(fw->image_rows.rows, 3);
        }
        if (!strcmp(seeds[i].name, "register")) {
            assert_string_equal(m.u.control.u.reg.endpoint, "tcp://10.0.0.2:5600");
            assert_int_equal(m.u.control.u.reg.device_mem_bytes, 80ull << 30);
        }
        xc_arena_reset(a);
    }
    xc_arena_destroy(a);
}

/* ---- rejects ---- */

static void expect_bytes_reject(const void *buf, size_t len, const char *want) {
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_msg m;
    xc_status st = xc_wire_decode(buf, len, NULL, 0, a, &m);
    if (st != XC_ERR_PROTO || !strstr(xc_err_last(), want)) {
        fail_msg("expected XC_ERR_PROTO with '%s', got %s: '%s'", want, xc_status_str(st),
                 xc_err_last());
    }
    xc_arena_destroy(a);
}

static void test_wire_decode_rejects_bad_version(void **state) {
    (void)state;
    /* Version 2, then no version at all (0), in front of a valid heartbeat. */
    static const uint8_t v2[] = {0x08, 0x02, 0x12, 0x04, 0x22, 0x02, 0x08, 0x05};
    static const uint8_t v0[] = {0x12, 0x04, 0x22, 0x02, 0x08, 0x05};
    expect_bytes_reject(v2, sizeof v2, "protocol version 2, this build speaks version 1");
    expect_bytes_reject(v0, sizeof v0, "protocol version 0");
    /* The same through the encoder of another version number. */
    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL,
                     .u.control = {.kind = XC_WIRE_CTL_DRAIN, .u.drain = {1}}};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_unchecked(&m, 300, &buf, &len), XC_OK);
    expect_bytes_reject(buf, len, "protocol version 300");
    xc_free(buf);
    static const uint8_t empty[1] = {0};
    expect_bytes_reject(empty, 0, "protocol version 0"); /* empty = a valid empty protobuf */
}

static void test_wire_decode_rejects_truncated(void **state) {
    (void)state;
    xc_wire_seq seqs[2];
    xc_wire_forward f;
    make_forward(seqs, &f);
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_forward(&f, &buf, &len), XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    /* Every strict prefix: the body is one length-delimited field running to the end. */
    for (size_t n = 0; n < len; n++) {
        xc_wire_forward g;
        xc_status st = xc_wire_decode_forward(buf, n, fwd_lens, 2, a, &g);
        if (st != XC_ERR_PROTO) {
            fail_msg("prefix of %zu/%zu bytes: %s", n, len, xc_status_str(st));
        }
        if (n > 2) {
            assert_non_null(strstr(xc_err_last(), "garbage or truncated"));
        }
        xc_arena_reset(a);
    }
    /* A truncated length-delimited field and 0xff garbage. */
    static const uint8_t cut[] = {0x08, 0x01, 0x1a, 0x7f, 0x01};
    expect_bytes_reject(cut, sizeof cut, "garbage or truncated");
    uint8_t ff[11];
    memset(ff, 0xff, sizeof ff);
    expect_bytes_reject(ff, sizeof ff, "garbage or truncated");
    xc_free(buf);
    xc_arena_destroy(a);
}

static void test_wire_decode_rejects_wrong_kind_and_frames(void **state) {
    (void)state;
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    static const uint8_t hb[] = {0x08, 0x01, 0x12, 0x04, 0x22, 0x02, 0x08, 0x05};
    xc_wire_forward g;
    assert_int_equal(xc_wire_decode_forward(hb, sizeof hb, NULL, 0, a, &g), XC_ERR_PROTO);
    assert_string_equal(xc_err_last(), "expected a forward message, got control");
    size_t one = 4;
    xc_wire_msg m;
    assert_int_equal(xc_wire_decode(hb, sizeof hb, &one, 1, a, &m), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "control message followed by 1 frames"));
    /* An envelope with no body: 08 01 only. */
    expect_bytes_reject(hb, 2, "no body");
    /* Result with 1 sequence id and no tokens, written by hand: field 4 {field 2 packed [1]}. */
    static const uint8_t res[] = {0x08, 0x01, 0x22, 0x03, 0x12, 0x01, 0x01};
    expect_bytes_reject(res, sizeof res, "1 sequence ids but 0 tokens");

    xc_wire_seq seqs[2];
    xc_wire_msg fm = {.kind = XC_WIRE_KIND_FORWARD};
    make_forward(seqs, &fm.u.forward);
    expect_reject(&fm, fwd_lens, 1, "1 tensor frames after the header, expected 2");
    size_t bad_lens[2] = {fwd_lens[0], fwd_lens[1] - 4};
    expect_reject(&fm, bad_lens, 2, "image rows frame has 188 bytes, but [3, 16] f32 needs 192");
    bad_lens[0] = 31;
    bad_lens[1] = fwd_lens[1];
    expect_reject(&fm, bad_lens, 2, "payload frame has 31 bytes, but [8, 1] i32 needs 32");
    xc_arena_destroy(a);
}

static void test_wire_decode_rejects_impossible_forward(void **state) {
    (void)state;
    xc_wire_seq seqs[2];
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD};
    xc_wire_forward *f = &m.u.forward;
    xc_wire_range r[2];
    xc_wire_sampling smp;

#define RESET()                                                                                    \
    do {                                                                                           \
        make_forward(seqs, f);                                                                     \
        memcpy(r, ranges_a, sizeof r);                                                             \
        seqs[0].image_ranges = r;                                                                  \
        smp = sampling_a;                                                                          \
        seqs[0].sampling = &smp;                                                                   \
    } while (0)

    RESET();
    f->payload.rows = 9;
    expect_reject(&m, fwd_lens, 2, "payload has 9 rows but the sequences have 8 tokens");
    RESET();
    seqs[1].n_tokens = 0;
    expect_reject(&m, fwd_lens, 2, "seq 1 (id 9): n_tokens is 0");
    RESET();
    seqs[1].n_blocks = 2; /* 2 x 4 < 12 */
    expect_reject(&m, fwd_lens, 2, "seq 1: block table of 2 blocks x 4 tokens does not cover");
    RESET();
    seqs[1].first_pos = XC_WIRE_MAX_POS - 1;
    expect_reject(&m, fwd_lens, 2, "seq 1: first_pos 16777215 + n_tokens 2 is past the limit");
    RESET();
    r[1] = (xc_wire_range){2, 5}; /* overlaps [1, 3) */
    expect_reject(&m, fwd_lens, 2, "seq 0: image range 1 [2, 5) overlaps or precedes");
    RESET();
    r[1] = (xc_wire_range){4, 7}; /* past n_tokens 6 */
    expect_reject(&m, fwd_lens, 2, "seq 0: image range 1 [4, 7) is empty or not inside [0, 6)");
    RESET();
    r[0] = (xc_wire_range){2, 2};
    expect_reject(&m, fwd_lens, 2, "seq 0: image range 0 [2, 2) is empty");
    RESET();
    f->image_rows.rows = 4;
    size_t lens4[2] = {32, 4 * 16 * 4};
    expect_reject(&m, lens4, 2, "image rows frame has 4 rows but the image ranges cover 3");
    RESET();
    f->has_image_rows = false;
    expect_reject(&m, fwd_lens, 1, "token payload with 3 image-range rows but no image rows");
    RESET();
    f->payload = (xc_wire_tensor){XC_DTYPE_F32, 8, 16};
    size_t lens_h[2] = {8 * 16 * 4, fwd_lens[1]};
    expect_reject(&m, lens_h, 2, "image rows travel only with token ids");
    RESET();
    f->payload = (xc_wire_tensor){XC_DTYPE_I32, 8, 2};
    size_t lens_2[2] = {64, fwd_lens[1]};
    expect_reject(&m, lens_2, 2, "payload must be f32/bf16/f16 hidden states or [rows, 1] i32");
    RESET();
    f->payload = (xc_wire_tensor){XC_DTYPE_U8, 8, 1}; /* no wire dtype: arrives as 0 */
    expect_decode_reject(&m, fwd_lens, 2, "payload dtype 0 is unknown");
    RESET();
    f->payload = (xc_wire_tensor){XC_DTYPE_F32, 8, XC_WIRE_MAX_COLS + 1};
    f->has_image_rows = false;
    size_t big = (size_t)8 * (XC_WIRE_MAX_COLS + 1) * 4;
    expect_reject(&m, &big, 1, "payload width 65537 is outside [1, 65536]");
    RESET();
    f->kv_block_size = 0;
    expect_reject(&m, fwd_lens, 2, "kv_block_size 0 is outside [1, 4096]");
    RESET();
    seqs[1].id = 7;
    expect_reject(&m, fwd_lens, 2, "sequence id 7 appears twice");
    RESET();
    smp.resumed_tokens = 10;
    expect_reject(&m, fwd_lens, 2, "seq 0: sampling.resumed_tokens 10 is over prompt_len 9");
    RESET();
    smp.temperature = NAN;
    expect_reject(&m, fwd_lens, 2, "sampling.temperature nan is not in (0, 1000]");
    RESET();
    smp.temperature = 0.0f;
    expect_reject(&m, fwd_lens, 2, "sampling.temperature 0 is not in (0, 1000]");
    smp.greedy = true; /* 0 is fine with greedy */
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    xc_wire_msg out;
    assert_int_equal(roundtrip_unchecked(&m, fwd_lens, 2, a, &out), XC_OK);
    xc_arena_destroy(a);
    RESET();
    smp.top_p = 0.0f;
    expect_reject(&m, fwd_lens, 2, "sampling.top_p 0 is not in (0, 1]");
    RESET();
    smp.repetition_penalty = INFINITY;
    expect_reject(&m, fwd_lens, 2, "sampling.repetition_penalty inf");
    RESET();
    smp.max_new_tokens = 0;
    expect_reject(&m, fwd_lens, 2, "sampling.max_new_tokens 0 is outside");
    RESET();
    smp.choice = 65536;
    expect_reject(&m, fwd_lens, 2, "sampling.choice 65536 is not below 65536");
    RESET();
    smp.presence_penalty = 2.01f;
    expect_reject(&m, fwd_lens, 2, "sampling.presence/frequency_penalty");
    RESET();
    smp.frequency_penalty = NAN;
    expect_reject(&m, fwd_lens, 2, "sampling.presence/frequency_penalty");
    RESET();
    smp.min_p = -0.1f;
    expect_reject(&m, fwd_lens, 2, "sampling.min_p -0.1");
    RESET();
    const float bad_bias[] = {0.0f, 100.5f};
    smp.logit_bias_values = bad_bias;
    expect_reject(&m, fwd_lens, 2, "logit_bias 2147483647: 100.5");
    RESET();
    const uint32_t bad_ids[] = {1, 2147483648u};
    smp.logit_bias_ids = bad_ids;
    expect_reject(&m, fwd_lens, 2, "logit_bias 2147483648");
    RESET();
    uint32_t many_stops[XC_WIRE_MAX_STOP_IDS + 1] = {0};
    smp.stop_ids = many_stops;
    smp.n_stop_ids = XC_WIRE_MAX_STOP_IDS + 1;
    expect_reject(&m, fwd_lens, 2, "65 stop ids (at most 64)");
    RESET();
    uint32_t neg_stop = 0x80000000u;
    smp.stop_ids = &neg_stop;
    smp.n_stop_ids = 1;
    expect_reject(&m, fwd_lens, 2, "stop id 2147483648 is not a token id");
#undef RESET
}

/* Counts past the limits: more sequences than XC_WIRE_MAX_SEQS, more rows than
 * XC_WIRE_MAX_TOKENS. */
static void test_wire_decode_rejects_counts_past_limits(void **state) {
    (void)state;
    size_t n = XC_WIRE_MAX_SEQS + 1;
    xc_wire_seq *seqs = xc_calloc(n, sizeof *seqs);
    assert_non_null(seqs);
    static const uint32_t blk[1] = {0};
    for (size_t i = 0; i < n; i++) {
        seqs[i] = (xc_wire_seq){.id = i, .n_tokens = 1, .n_blocks = 1, .block_table = blk};
    }
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.kv_block_size = 16,
                                   .n_seqs = n,
                                   .seqs = seqs,
                                   .payload = {XC_DTYPE_I32, (uint32_t)n, 1}}};
    size_t len = n * 4;
    expect_reject(&m, &len, 1, "4097 sequences (at most 4096)");
    /* 4 sequences of 2^18 + 1 rows each: past 2^20 rows. */
    static uint32_t many_blocks[(1u << 18) / 16 + 1];
    for (size_t i = 0; i < 4; i++) {
        seqs[i] = (xc_wire_seq){.id = i,
                                .n_tokens = (1u << 18) + 1,
                                .n_blocks = sizeof many_blocks / sizeof many_blocks[0],
                                .block_table = many_blocks};
    }
    m.u.forward.n_seqs = 4;
    m.u.forward.payload.rows = 4 * ((1u << 18) + 1);
    len = (size_t)m.u.forward.payload.rows * 4;
    expect_reject(&m, &len, 1, "more than 1048576 rows in one micro-batch");
    xc_free(seqs);
}

static void test_wire_decode_rejects_bad_control(void **state) {
    (void)state;
    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL};
    xc_wire_control *c = &m.u.control;
    const xc_wire_assign good = {.role = XC_WIRE_ROLE_STAGE,
                                 .stage = 1,
                                 .n_stages = 2,
                                 .layer_begin = 16,
                                 .layer_end = 32,
                                 .n_layers = 32,
                                 .model_path = "/m",
                                 .next_endpoint = "tcp://c:1",
                                 .kv_blocks = 10,
                                 .kv_block_size = 16};
    c->kind = XC_WIRE_CTL_ASSIGN;
    c->u.assign = good;
    c->u.assign.layer_end = 33;
    expect_reject(&m, NULL, 0, "assign layer range [16, 33) is empty or not inside [0, 32)");
    c->u.assign = good;
    c->u.assign.layer_begin = 32;
    expect_reject(&m, NULL, 0, "assign layer range [32, 32)");
    c->u.assign = good;
    c->u.assign.stage = 2;
    expect_reject(&m, NULL, 0, "assign.stage 2 is not below n_stages 2");
    c->u.assign = good;
    c->u.assign.role = (xc_wire_role)7;
    expect_reject(&m, NULL, 0, "assign.role 7 is not vision (1) or stage (2)");
    c->u.assign = good;
    c->u.assign.kv_block_size = 5000;
    expect_reject(&m, NULL, 0, "assign.kv_block_size 5000 is outside [1, 4096]");
    c->u.assign = good;
    c->u.assign.next_endpoint = "";
    expect_reject(&m, NULL, 0, "assign.next_endpoint is empty");

    c->kind = XC_WIRE_CTL_REGISTER;
    c->u.reg = (xc_wire_register){
        .worker_id = "", .backend = XC_WIRE_BACKEND_CPU, .endpoint = "tcp://w:1"};
    expect_reject(&m, NULL, 0, "register.worker_id is empty");
    c->u.reg.worker_id = "w\n1";
    expect_reject(&m, NULL, 0, "register.worker_id has a control character (0x0a) at byte 1");
    c->u.reg.worker_id = "w1";
    c->u.reg.backend = (xc_wire_backend)0;
    expect_reject(&m, NULL, 0, "register.backend 0 is not cpu (1) or cuda (2)");
    char *longs = xc_malloc(XC_WIRE_MAX_STR + 2);
    assert_non_null(longs);
    memset(longs, 'x', XC_WIRE_MAX_STR + 1);
    longs[XC_WIRE_MAX_STR + 1] = '\0';
    c->u.reg.backend = XC_WIRE_BACKEND_CPU;
    c->u.reg.endpoint = longs;
    expect_reject(&m, NULL, 0, "register.endpoint is longer than 4096 bytes");
    xc_free(longs);

    c->kind = XC_WIRE_CTL_ERROR;
    c->u.error = (xc_wire_error){.code = 3, .message = "x"};
    expect_reject(&m, NULL, 0, "error.code 3 is not a negative xc_status");
    /* A control envelope with no kind: 08 01 | 12 00. */
    static const uint8_t nokind[] = {0x08, 0x01, 0x12, 0x00};
    expect_bytes_reject(nokind, sizeof nokind, "control message has no kind");
}

/* Runtime-helper additions (Register.role, Heartbeat.endpoint, Control.reregister) against the
 * protobuf wire format written out by hand: Envelope{version: 1, control: {heartbeat: {seq: 5,
 * endpoint: "e"}}} is 08 01 | 12 07 | 22 05 | 08 05 42 01 65 (endpoint = field 8, bytes: tag
 * 0x42); {reregister: {reason: "x"}} is 08 01 | 12 05 | 42 03 | 0a 01 78 (reregister = control
 * field 8); a register's role = field 7, varint: tag 0x38. */
static void test_wire_runtime_fields(void **state) {
    (void)state;
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    static const uint8_t hb[] = {0x08, 0x01, 0x12, 0x07, 0x22, 0x05, 0x08, 0x05, 0x42, 0x01, 0x65};
    static const uint8_t rr[] = {0x08, 0x01, 0x12, 0x05, 0x42, 0x03, 0x0a, 0x01, 0x78};
    xc_wire_control c = {.kind = XC_WIRE_CTL_HEARTBEAT, .u.heartbeat = {.seq = 5, .endpoint = "e"}};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_control(&c, &buf, &len), XC_OK);
    assert_int_equal(len, sizeof hb);
    assert_memory_equal(buf, hb, sizeof hb);
    xc_free(buf);
    xc_wire_control d;
    assert_int_equal(xc_wire_decode_control(hb, sizeof hb, a, &d), XC_OK);
    assert_int_equal(d.kind, XC_WIRE_CTL_HEARTBEAT);
    assert_string_equal(d.u.heartbeat.endpoint, "e");

    c = (xc_wire_control){.kind = XC_WIRE_CTL_REREGISTER, .u.reregister = {.reason = "x"}};
    assert_int_equal(xc_wire_encode_control(&c, &buf, &len), XC_OK);
    assert_int_equal(len, sizeof rr);
    assert_memory_equal(buf, rr, sizeof rr);
    xc_free(buf);
    assert_int_equal(xc_wire_decode_control(rr, sizeof rr, a, &d), XC_OK);
    assert_int_equal(d.kind, XC_WIRE_CTL_REREGISTER);
    assert_string_equal(d.u.reregister.reason, "x");
    assert_string_equal(xc_wire_ctl_name(d.kind), "reregister");

    /* register with role stage: the encoding ends with 38 02 (fields in number order) */
    c = (xc_wire_control){.kind = XC_WIRE_CTL_REGISTER,
                          .u.reg = {.worker_id = "w",
                                    .backend = XC_WIRE_BACKEND_CPU,
                                    .endpoint = "ipc:///w",
                                    .role = XC_WIRE_ROLE_STAGE}};
    assert_int_equal(xc_wire_encode_control(&c, &buf, &len), XC_OK);
    assert_true(len > 2);
    assert_int_equal(((const uint8_t *)buf)[len - 2], 0x38);
    assert_int_equal(((const uint8_t *)buf)[len - 1], 0x02);
    assert_int_equal(xc_wire_decode_control(buf, len, a, &d), XC_OK);
    xc_free(buf);
    assert_int_equal(d.u.reg.role, XC_WIRE_ROLE_STAGE);
    c.u.reg.role = XC_WIRE_ROLE_ANY; /* proto3 default: not on the wire, decodes as any */
    check_control_roundtrip(&c, &d, a);
    assert_int_equal(d.u.reg.role, XC_WIRE_ROLE_ANY);

    xc_wire_msg m = {.kind = XC_WIRE_KIND_CONTROL, .u.control = c};
    m.u.control.u.reg.role = (xc_wire_role)3;
    expect_reject(&m, NULL, 0, "register.role 3 is not any (0), vision (1) or stage (2)");
    m.u.control = (xc_wire_control){.kind = XC_WIRE_CTL_HEARTBEAT,
                                    .u.heartbeat = {.endpoint = "tcp://w\t:1"}};
    expect_reject(&m, NULL, 0, "heartbeat.endpoint has a control character (0x09) at byte 7");
    xc_arena_destroy(a);
}

/* Register.incarnation (field 8) and Heartbeat.incarnation (field 10) are fixed64 (wire type 1,
 * tags 0x41 and 0x51, eight little-endian bytes), written out by hand: Envelope{version: 1,
 * control: {heartbeat: {seq: 5, incarnation: 0x0102030405060708}}} is 08 01 | 12 0d | 22 0b |
 * 08 05 51 08 07 06 05 04 03 02 01; a register ends with 41 + the 8 bytes. */
static void test_wire_incarnation(void **state) {
    (void)state;
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    static const uint8_t hb[] = {0x08, 0x01, 0x12, 0x0d, 0x22, 0x0b, 0x08, 0x05, 0x51,
                                 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01};
    xc_wire_control c = {.kind = XC_WIRE_CTL_HEARTBEAT,
                         .u.heartbeat = {.seq = 5, .incarnation = 0x0102030405060708ull}};
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(xc_wire_encode_control(&c, &buf, &len), XC_OK);
    assert_int_equal(len, sizeof hb);
    assert_memory_equal(buf, hb, sizeof hb);
    xc_free(buf);
    xc_wire_control d;
    assert_int_equal(xc_wire_decode_control(hb, sizeof hb, a, &d), XC_OK);
    assert_true(d.u.heartbeat.incarnation == 0x0102030405060708ull);

    c = (xc_wire_control){.kind = XC_WIRE_CTL_REGISTER,
                          .u.reg = {.worker_id = "w",
                                    .backend = XC_WIRE_BACKEND_CPU,
                                    .endpoint = "ipc:///w",
                                    .incarnation = 0xfedcba9876543210ull}};
    assert_int_equal(xc_wire_encode_control(&c, &buf, &len), XC_OK);
    assert_true(len > 9);
    static const uint8_t tail[] = {0x41, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe};
    assert_memory_equal((const uint8_t *)buf + len - 9, tail, 9);
    assert_int_equal(xc_wire_decode_control(buf, len, a, &d), XC_OK);
    xc_free(buf);
    assert_true(d.u.reg.incarnation == 0xfedcba9876543210ull);
    c.u.reg.incarnation = 0; /* proto3 default: absent, decodes as 0 (an older worker) */
    check_control_roundtrip(&c, &d, a);
    assert_true(d.u.reg.incarnation == 0);
    xc_arena_destroy(a);
}

/* ---- garbage ---- */

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Random buffers and random mutations of valid headers: every result is OK or XC_ERR_PROTO, and
 * whatever decodes passes xc_wire_check again (decoded views are consistent). */
static void test_wire_random_garbage_never_crashes(void **state) {
    (void)state;
    xc_wire_seq seqs[2];
    xc_wire_forward f;
    make_forward(seqs, &f);
    void *valid = NULL;
    size_t vlen = 0;
    assert_int_equal(xc_wire_encode_forward(&f, &valid, &vlen), XC_OK);
    xc_arena *a = NULL;
    assert_int_equal(xc_arena_create(4096, &a), XC_OK);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    uint8_t buf[256];
    int ok = 0;
    for (int it = 0; it < 40000; it++) {
        size_t n;
        if (it % 2 == 0) {
            n = rng_next(&s) % 64;
            for (size_t i = 0; i < n; i++) {
                buf[i] = (uint8_t)rng_next(&s);
            }
        } else {
            n = vlen;
            memcpy(buf, valid, vlen);
            int flips = 1 + (int)(rng_next(&s) % 4);
            for (int k = 0; k < flips; k++) {
                buf[rng_next(&s) % n] ^= (uint8_t)(1u << (rng_next(&s) % 8));
            }
        }
        size_t n_frames = rng_next(&s) % 3;
        xc_wire_msg m;
        xc_status st = xc_wire_decode(buf, n, fwd_lens, n_frames, a, &m);
        if (st == XC_OK) {
            ok++;
            assert_int_equal(xc_wire_check(&m, fwd_lens, n_frames), XC_OK);
        } else if (st != XC_ERR_PROTO) {
            fail_msg("iteration %d: %s: %s", it, xc_status_str(st), xc_err_last());
        }
        xc_arena_reset(a);
    }
    /* Some mutations land in values that stay valid (an id, a seed): the decoder is not just
     * rejecting everything. */
    assert_true(ok > 0);
    xc_free(valid);
    xc_arena_destroy(a);
}

/* The direct Forward encoder (the scheduling step's hot path) writes exactly protobuf-c's bytes:
 * random forwards with and without sampling parameters, image ranges, releases and image rows,
 * zero fields (left out), -0.0 floats, 64-bit ids, large block ids, protocol version 1 and 7. */
static void test_wire_direct_forward_matches_protobuf_c(void **state) {
    (void)state;
    uint64_t r = 0x9e3779b97f4a7c15ull;
#define RND() (r ^= r << 13, r ^= r >> 7, r ^= r << 17, r)

    enum { NS = 40 };

    static xc_wire_seq seqs[NS];
    static uint32_t blocks[NS][64], stop_ids[NS][4], pen[NS][30], lb_ids[NS][5];
    static uint8_t packed[NS][64 * 5];
    static float lb_vals[NS][5];
    static xc_wire_range ranges[NS][3];
    static xc_wire_sampling smp[NS];
    static uint64_t rel[17];
    static xc_wire_fork forks[NS][3];
    static uint32_t csrc[9], cdst[9];
    for (int trial = 0; trial < 300; trial++) {
        size_t n = (size_t)(RND() % (NS + 1));
        for (size_t i = 0; i < n; i++) {
            size_t nb = (size_t)(RND() % 64);
            for (size_t k = 0; k < nb; k++) {
                blocks[i][k] = (uint32_t)(RND() % 4 == 0 ? RND() : RND() % 300);
            }
            size_t nr = (size_t)(RND() % 4);
            for (size_t k = 0; k < nr; k++) {
                ranges[i][k] = (xc_wire_range){(uint32_t)(RND() % 3), (uint32_t)(RND() % 2000)};
            }
            xc_wire_sampling *w = &smp[i];
            memset(w, 0, sizeof *w);
            w->greedy = RND() % 2;
            w->temperature = RND() % 3 ? 0.7f : RND() % 2 ? -0.0f : 0.0f;
            w->top_k = (uint32_t)(RND() % 3 ? 0 : RND() % 100);
            w->top_p = RND() % 2 ? 1.0f : 0.25f;
            w->repetition_penalty = 1.05f;
            w->seed = RND() % 2 ? RND() : 0;
            w->max_new_tokens = (uint32_t)(RND() % 5000);
            w->n_stop_ids = (size_t)(RND() % 5);
            for (size_t k = 0; k < w->n_stop_ids; k++) {
                stop_ids[i][k] = (uint32_t)(RND() % 92544);
            }
            w->stop_ids = stop_ids[i];
            w->prompt_len = (uint32_t)(RND() % 3000);
            w->n_penalty_ids = (size_t)(RND() % 31);
            for (size_t k = 0; k < w->n_penalty_ids; k++) {
                pen[i][k] = (uint32_t)(RND() % 92544);
            }
            w->penalty_ids = pen[i];
            w->logprobs = RND() % 2;
            w->top_logprobs = (uint32_t)(RND() % 21);
            w->choice = (uint32_t)(RND() % 3 ? 0 : RND() % 65536);
            w->presence_penalty = RND() % 2 ? -1.5f : 0.0f;
            w->frequency_penalty = RND() % 2 ? 0.25f : 0.0f;
            w->min_p = RND() % 2 ? 0.05f : 0.0f;
            w->min_tokens = (uint32_t)(RND() % 4);
            w->n_logit_bias = (size_t)(RND() % 6);
            for (size_t k = 0; k < w->n_logit_bias; k++) {
                lb_ids[i][k] = (uint32_t)(RND() % 92544);
                lb_vals[i][k] = RND() % 2 ? -100.0f : 3.5f;
            }
            w->logit_bias_ids = lb_ids[i];
            w->logit_bias_values = lb_vals[i];
            w->resumed_tokens = (uint32_t)(RND() % 3);
            seqs[i] = (xc_wire_seq){.id = RND() % 2 ? RND() : RND() % 1000,
                                    .first_pos = (uint32_t)(RND() % 5000),
                                    .n_tokens = (uint32_t)(RND() % 300),
                                    .n_blocks = nb,
                                    .block_table = blocks[i],
                                    .n_image_ranges = nr,
                                    .image_ranges = ranges[i],
                                    .sampling = RND() % 3 == 0 ? w : NULL};
            if (RND() % 2) { /* a block table the caller packed (in two pieces) */
                size_t cut = nb ? (size_t)(RND() % (nb + 1)) : 0;
                size_t len = xc_wire_pack_u32(blocks[i], cut, packed[i]);
                len += xc_wire_pack_u32(blocks[i] + cut, nb - cut, packed[i] + len);
                seqs[i].block_table_packed = packed[i];
                seqs[i].block_table_packed_len = len;
            }
            /* issue 13.3: forks, each with sampling (or, unchecked, without) */
            seqs[i].n_forks = (size_t)(RND() % 4 ? 0 : RND() % 4);
            for (size_t k = 0; k < seqs[i].n_forks; k++) {
                forks[i][k] = (xc_wire_fork){.id = RND() % 2 ? RND() : RND() % 1000,
                                             .sampling = RND() % 5 ? &smp[RND() % (i + 1)] : NULL};
            }
            seqs[i].forks = forks[i];
        }
        size_t n_cp = (size_t)(RND() % 3 ? 0 : RND() % 10);
        for (size_t k = 0; k < n_cp; k++) {
            csrc[k] = (uint32_t)(RND() % 2 ? RND() : RND() % 100);
            cdst[k] = (uint32_t)(RND() % 4 ? RND() % 300 : 0);
        }
        size_t n_rel = (size_t)(RND() % 18);
        for (size_t k = 0; k < n_rel; k++) {
            rel[k] = RND() % 2 ? RND() : RND() % 100;
        }
        xc_wire_msg m = {
            .kind = XC_WIRE_KIND_FORWARD,
            .u.forward = {
                .microbatch_id = RND() % 2 ? RND() : 0,
                .kv_block_size = (uint32_t)(RND() % 3 ? 16 : 0),
                .n_seqs = n,
                .seqs = seqs,
                .n_release = n_rel,
                .release_ids = rel,
                .payload = {.dtype = RND() % 2 ? XC_DTYPE_I32 : XC_DTYPE_BF16,
                            .rows = (uint32_t)(RND() % 2000),
                            .cols = (uint32_t)(RND() % 2 ? 1 : 4096)},
                .has_image_rows = RND() % 2,
                .image_rows = {.dtype = XC_DTYPE_F32, .rows = (uint32_t)(RND() % 50), .cols = 4096},
                .epoch = (uint32_t)(RND() % 3),
                .n_copies = n_cp,
                .copy_src = csrc,
                .copy_dst = cdst}};
        uint32_t version = trial % 2 ? 1 : 7;
        void *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        assert_int_equal(xc_wire_encode_unchecked(&m, version, &a, &la), XC_OK);
        assert_int_equal(xc_wire_encode_generic(&m, version, &b, &lb), XC_OK);
        assert_int_equal(la, lb);
        assert_memory_equal(a, b, la);
        xc_free(a);
        xc_free(b);
    }
#undef RND
}

/* Duplicate sequence ids are found among many (the hash set) as among a few, and distinct ids,
 * 0 and UINT64_MAX among them, pass. */
static void test_wire_unique_ids_many(void **state) {
    (void)state;

    enum { N = 3000 };

    static xc_wire_seq seqs[N];
    static uint32_t block0 = 0;
    for (int i = 0; i < N; i++) {
        uint64_t id = i == 0 ? 0 : i == 1 ? UINT64_MAX : (uint64_t)i * 0x100000000ull + 5;
        seqs[i] = (xc_wire_seq){.id = id, .n_tokens = 1, .n_blocks = 1, .block_table = &block0};
    }
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.kv_block_size = 16,
                                   .n_seqs = N,
                                   .seqs = seqs,
                                   .payload = {.dtype = XC_DTYPE_I32, .rows = N, .cols = 1}}};
    size_t len = N * sizeof(int32_t);
    assert_int_equal(xc_wire_check(&m, &len, 1), XC_OK);
    seqs[N - 1].id = UINT64_MAX;
    assert_int_equal(xc_wire_check(&m, &len, 1), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "appears twice"));
    seqs[N - 1].id = 77;
    seqs[1234].id = 77;
    assert_int_equal(xc_wire_check(&m, &len, 1), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "sequence id 77 appears twice"));
    seqs[1234].id = 78;
    assert_int_equal(xc_wire_check(&m, &len, 1), XC_OK);
    /* a fork's id counts too */
    xc_wire_sampling smp = {
        .greedy = true, .top_p = 1, .repetition_penalty = 1, .max_new_tokens = 4, .prompt_len = 1};
    xc_wire_fork fk = {.id = 78, .sampling = &smp};
    seqs[5].n_forks = 1;
    seqs[5].forks = &fk;
    assert_int_equal(xc_wire_check(&m, &len, 1), XC_ERR_PROTO);
    assert_non_null(strstr(xc_err_last(), "sequence id 78 appears twice"));
    seqs[5].n_forks = 0;
    /* the trusted encoder (no walk over the message) writes the same bytes as the checked one */
    void *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    assert_int_equal(xc_wire_encode(&m, &len, 1, &a, &la), XC_OK);
    assert_int_equal(xc_wire_encode_trusted(&m, &b, &lb), XC_OK);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    xc_free(a);
    xc_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_forward_roundtrip),
        cmocka_unit_test(test_wire_forward_hidden_roundtrip),
        cmocka_unit_test(test_wire_forks_and_copies),
        cmocka_unit_test(test_wire_control_roundtrip),
        cmocka_unit_test(test_wire_result_roundtrip),
        cmocka_unit_test(test_wire_result_failed_sequences),
        cmocka_unit_test(test_wire_bytes_match_protobuf_encoding),
        cmocka_unit_test(test_wire_direct_forward_matches_protobuf_c),
        cmocka_unit_test(test_wire_unique_ids_many),
        cmocka_unit_test(test_wire_decodes_hand_encoded_seeds),
        cmocka_unit_test(test_wire_decode_rejects_bad_version),
        cmocka_unit_test(test_wire_decode_rejects_truncated),
        cmocka_unit_test(test_wire_decode_rejects_wrong_kind_and_frames),
        cmocka_unit_test(test_wire_decode_rejects_impossible_forward),
        cmocka_unit_test(test_wire_decode_rejects_counts_past_limits),
        cmocka_unit_test(test_wire_decode_rejects_bad_control),
        cmocka_unit_test(test_wire_runtime_fields),
        cmocka_unit_test(test_wire_incarnation),
        cmocka_unit_test(test_wire_random_garbage_never_crashes),
    };
    return cmocka_run_group_tests(tests, xc_test_hooks_setup, xc_test_hooks_teardown);
}
