/* The xcpipe wire protocol (proto/xc.proto, version XC_WIRE_VERSION) as plain C structs, with
 * encoders and validating decoders. This is the only module that sees protobuf-c types.
 *
 * A message on a transport is frame 0 = an encoded header (control, forward or result), followed
 * for forward messages by raw tensor frames (payload, then image rows on stage 0). Decoders take
 * the header bytes plus the byte length of every following frame and check everything: version,
 * enum ranges, counts against the XC_WIRE_MAX_* limits, ranges sorted and inside token counts,
 * block tables long enough, frame sizes == rows * cols * dtype size. Nothing a peer sends is
 * trusted. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xc_arena.h"
#include "xc_dtype.h"
#include "xc_status.h"

#define XC_WIRE_VERSION 1u

/* Limits the decoder enforces; a header past any of them is rejected with XC_ERR_PROTO. */
#define XC_WIRE_MAX_HEADER_BYTES (16u << 20) /* encoded frame 0 */
#define XC_WIRE_MAX_SEQS         4096u       /* sequences per micro-batch */
#define XC_WIRE_MAX_TOKENS       (1u << 20)  /* rows per micro-batch */
#define XC_WIRE_MAX_POS          (1u << 24)  /* first_pos + n_tokens of a sequence */
#define XC_WIRE_MAX_BLOCKS       (1u << 20)  /* block-table entries per sequence */
#define XC_WIRE_MAX_BLOCK_SIZE   4096u       /* tokens per KV block */
#define XC_WIRE_MAX_RANGES       1024u       /* image ranges per sequence */
#define XC_WIRE_MAX_STOP_IDS     64u
#define XC_WIRE_MAX_RELEASE      65536u /* released sequence ids per micro-batch */
#define XC_WIRE_MAX_COLS         65536u /* hidden width of a tensor frame */
#define XC_WIRE_MAX_STR          4096u  /* bytes of any string field */
#define XC_WIRE_MAX_LAYERS       4096u
#define XC_WIRE_MAX_STAGES       256u
#define XC_WIRE_MAX_FRAMES       2u /* tensor frames after a forward header */

/* ---- control ---- */

typedef enum xc_wire_backend {
    XC_WIRE_BACKEND_CPU = 1,
    XC_WIRE_BACKEND_CUDA = 2,
} xc_wire_backend;

typedef enum xc_wire_role {
    XC_WIRE_ROLE_ANY = 0,    /* Register only: the worker takes whichever role it is given */
    XC_WIRE_ROLE_VISION = 1, /* CLIP + vision_proj */
    XC_WIRE_ROLE_STAGE = 2,  /* a contiguous range of decoder layers */
} xc_wire_role;

typedef enum xc_wire_ctl {
    XC_WIRE_CTL_REGISTER = 1,
    XC_WIRE_CTL_ASSIGN = 2,
    XC_WIRE_CTL_READY = 3,
    XC_WIRE_CTL_HEARTBEAT = 4,
    XC_WIRE_CTL_DRAIN = 5,
    XC_WIRE_CTL_ERROR = 6,
    XC_WIRE_CTL_SHUTDOWN = 7,
    XC_WIRE_CTL_REREGISTER = 8, /* coordinator -> worker: unknown here, register again */
} xc_wire_ctl;

/* Strings are NUL-terminated, at most XC_WIRE_MAX_STR bytes, without control characters. */
typedef struct xc_wire_register {
    const char *worker_id; /* non-empty */
    xc_wire_backend backend;
    uint64_t device_mem_bytes; /* free accelerator memory, 0 on CPU */
    uint64_t host_mem_bytes;
    const char *endpoint;    /* non-empty: where this worker receives forward frames */
    const char *device_name; /* may be empty */
    xc_wire_role role;       /* the role the worker accepts: ANY, VISION or STAGE */
    uint64_t incarnation;    /* random nonce of this worker process (0 = unknown) */
    uint32_t kv_elem_bytes;  /* bytes per stored KV element: 2 (bf16), 4 (f32), 0 = unknown (f32) */
} xc_wire_register;

typedef struct xc_wire_assign {
    xc_wire_role role;
    uint32_t replica;
    uint32_t stage;       /* < n_stages; 0 for VISION */
    uint32_t n_stages;    /* 1 .. XC_WIRE_MAX_STAGES */
    uint32_t layer_begin; /* STAGE: layer_begin < layer_end <= n_layers; VISION: all 0 */
    uint32_t layer_end;
    uint32_t n_layers;
    const char *model_path;    /* non-empty */
    const char *next_endpoint; /* non-empty for STAGE */
    uint32_t kv_blocks;        /* STAGE: >= 1 */
    uint32_t kv_block_size;    /* STAGE: 1 .. XC_WIRE_MAX_BLOCK_SIZE */
    uint32_t max_rows;         /* rows per micro-batch at most, <= XC_WIRE_MAX_TOKENS; 0 = 256 */
    /* STAGE: half-layer units [unit_begin, unit_end) held (unit 2l = layer l's attention, 2l+1
     * its FFN); unit_end = 0: whole layers [layer_begin, layer_end). When set, unit_begin <
     * unit_end <= 2 n_layers, layer_begin = unit_begin / 2 and layer_end = (unit_end + 1) / 2. */
    uint32_t unit_begin;
    uint32_t unit_end;
    uint32_t epoch; /* STAGE: the replica's generation (grows when it is re-formed); 0 = none */
} xc_wire_assign;

typedef struct xc_wire_ready {
    uint32_t stage;
    uint32_t kv_blocks;
    const char *worker_id; /* may be NULL/empty: who is ready */
} xc_wire_ready;

typedef struct xc_wire_heartbeat {
    uint64_t seq;     /* +1 per heartbeat */
    uint64_t time_ns; /* sender's monotonic clock */
    uint32_t in_flight;
    const char *worker_id;     /* may be NULL/empty: who is alive */
    uint64_t busy_ns;          /* api helper: cumulative time processing messages */
    uint64_t microbatches;     /* api helper: cumulative messages processed */
    uint64_t bytes_sent;       /* api helper: cumulative frame bytes sent downstream */
    const char *endpoint;      /* may be NULL/empty: the sender's mailbox (for Reregister) */
    uint32_t live_seqs;        /* sequences the sending stage holds state for */
    uint64_t incarnation;      /* the sender's Register.incarnation (0: the coordinator, unknown) */
    uint64_t image_cache_hits; /* vision: images found in the embedding cache, cumulative */
    uint64_t image_cache_misses; /* vision: images looked up and not found, cumulative */
} xc_wire_heartbeat;

typedef struct xc_wire_drain {
    uint32_t deadline_ms;
} xc_wire_drain;

typedef struct xc_wire_error {
    int32_t code;        /* an xc_status, negative */
    const char *message; /* may be empty */
    bool fatal;          /* the sender is exiting */
    bool has_microbatch;
    uint64_t microbatch_id; /* valid when has_microbatch */
    const char *worker_id;  /* may be NULL/empty: the sender */
} xc_wire_error;

typedef struct xc_wire_shutdown {
    const char *reason;
} xc_wire_shutdown;

typedef struct xc_wire_reregister {
    const char *reason; /* may be empty */
} xc_wire_reregister;

typedef struct xc_wire_control {
    xc_wire_ctl kind; /* selects the member of u */

    union {
        xc_wire_register reg;
        xc_wire_assign assign;
        xc_wire_ready ready;
        xc_wire_heartbeat heartbeat;
        xc_wire_drain drain;
        xc_wire_error error;
        xc_wire_shutdown shutdown;
        xc_wire_reregister reregister;
    } u;
} xc_wire_control;

/* ---- forward and result ---- */

/* [start, end) rows of a sequence's tokens in this micro-batch; 0 <= start < end <= n_tokens. */
typedef struct xc_wire_range {
    uint32_t start;
    uint32_t end;
} xc_wire_range;

typedef struct xc_wire_sampling {
    bool greedy;
    float temperature;        /* finite, [0, 1000]; > 0 unless greedy */
    uint32_t top_k;           /* 0 = off */
    float top_p;              /* (0, 1] */
    float repetition_penalty; /* (0, 1000]; 1 = off */
    uint64_t seed;
    uint32_t max_new_tokens;     /* 1 .. XC_WIRE_MAX_POS */
    size_t n_stop_ids;           /* <= XC_WIRE_MAX_STOP_IDS */
    const uint32_t *stop_ids;    /* (n_stop_ids), each <= INT32_MAX */
    uint32_t prompt_len;         /* <= XC_WIRE_MAX_POS: sample once rows [0, prompt_len) ran; 0 =
                                    after every micro-batch */
    size_t n_penalty_ids;        /* <= XC_WIRE_MAX_POS */
    const uint32_t *penalty_ids; /* (n_penalty_ids) ids observed before the first sample */
    bool logprobs;               /* api helper: return the token's logprob ... */
    uint32_t top_logprobs;       /* ... and this many alternatives (<= XC_WIRE_MAX_TOP_LOGPROBS) */
    uint32_t choice;             /* choice index among the request's n (< XC_WIRE_MAX_CHOICE) */
    float presence_penalty;      /* [-2, 2] */
    float frequency_penalty;     /* [-2, 2] */
    float min_p;                 /* [0, 1] */
    uint32_t min_tokens;         /* <= XC_WIRE_MAX_POS */
    size_t n_logit_bias;         /* <= XC_WIRE_MAX_LOGIT_BIAS */
    const uint32_t *logit_bias_ids; /* (n_logit_bias), each <= INT32_MAX */
    const float *logit_bias_values; /* (n_logit_bias), each in [-100, 100] */
    uint32_t resumed_tokens; /* the last ones of the prompt_len rows are tokens it generated before
                                a failure (it was resumed): its next draw is generated token
                                resumed_tokens + 1, at position prompt_len; 0 = not resumed */
} xc_wire_sampling;

#define XC_WIRE_MAX_LOGIT_BIAS 300

#define XC_WIRE_MAX_CHOICE 65536

#define XC_WIRE_MAX_TOP_LOGPROBS 20

/* issue 13.3: a new sequence forked from a Seq's last prompt row (n > 1 shares one prefill). */
typedef struct xc_wire_fork {
    uint64_t id;                      /* unique within the micro-batch (with the seqs' ids) */
    const xc_wire_sampling *sampling; /* required */
} xc_wire_fork;

typedef struct xc_wire_seq {
    uint64_t id;        /* unique within the micro-batch */
    uint32_t first_pos; /* position of the first row; first_pos + n_tokens <= XC_WIRE_MAX_POS */
    uint32_t n_tokens;  /* >= 1 rows, in order after the previous sequence's */
    size_t n_blocks;    /* n_blocks * kv_block_size >= first_pos + n_tokens */
    const uint32_t *block_table;       /* (n_blocks) KV block ids */
    size_t n_image_ranges;             /* <= XC_WIRE_MAX_RANGES */
    const xc_wire_range *image_ranges; /* (n_image_ranges) sorted, disjoint */
    const xc_wire_sampling *sampling;  /* set only when the sequence is new, else NULL */
    size_t n_forks;                    /* sequences that draw their first token from this one's
                                          last row (its sampling's prompt_len must end in this
                                          chunk on the last stage); all forks of a micro-batch
                                          and its seqs <= XC_WIRE_MAX_SEQS */
    const xc_wire_fork *forks;         /* (n_forks) */
    /* optional (NULL = none): block_table already packed (xc_wire_pack_u32 of its n_blocks
     * entries), copied by the Forward encoder instead of packing the ids again; the caller keeps
     * it equal to block_table (the generic encoder and the checks read block_table) */
    const uint8_t *block_table_packed;
    size_t block_table_packed_len;
} xc_wire_seq;

/* Shape of a raw row-major tensor frame: exactly rows * cols * xc_dtype_size(dtype) bytes. */
typedef struct xc_wire_tensor {
    xc_dtype dtype; /* F32, BF16, F16 (hidden states / image rows) or I32 (token ids, cols 1) */
    uint32_t rows;
    uint32_t cols; /* 1 .. XC_WIRE_MAX_COLS */
} xc_wire_tensor;

/* Header of a forward message. Frame 1 is payload: [sum n_tokens, hidden] hidden states, or
 * [sum n_tokens, 1] I32 token ids for stage 0. Frame 2 exists only with has_image_rows (stage 0):
 * [sum of image range lengths, hidden] float rows spliced into the image ranges in order. */
typedef struct xc_wire_forward {
    uint64_t microbatch_id;
    uint32_t kv_block_size; /* 1 .. XC_WIRE_MAX_BLOCK_SIZE when n_seqs > 0 */
    size_t n_seqs;          /* <= XC_WIRE_MAX_SEQS */
    const xc_wire_seq *seqs;
    size_t n_release; /* <= XC_WIRE_MAX_RELEASE */
    const uint64_t *release_ids;
    xc_wire_tensor payload;
    bool has_image_rows;
    xc_wire_tensor image_rows;
    uint32_t epoch; /* the replica's Assign.epoch it was formed in (0 = unchecked) */
    /* issue 13.3: KV blocks to copy (src -> dst, src != dst) on every stage before its rows run */
    size_t n_copies; /* <= XC_WIRE_MAX_SEQS */
    const uint32_t *copy_src, *copy_dst;
} xc_wire_forward;

/* Last stage -> coordinator: the token sampled for each sequence of a micro-batch. */
typedef struct xc_wire_result {
    uint64_t microbatch_id;
    size_t n;                /* <= XC_WIRE_MAX_SEQS */
    const uint64_t *seq_ids; /* (n) */
    const uint32_t *tokens;  /* (n), each <= INT32_MAX */
    /* api helper: logprobs, present when n_logprobs == n (else 0): per sequence the token's
     * logprob and n_top[i] (<= XC_WIRE_MAX_TOP_LOGPROBS) alternatives, concatenated */
    size_t n_logprobs;
    const float *logprobs;     /* (n_logprobs) */
    const uint32_t *n_top;     /* (n_logprobs) */
    size_t n_top_ids;          /* sum of n_top */
    const uint32_t *top_ids;   /* (n_top_ids) */
    const float *top_logprobs; /* (n_top_ids) */
    /* sequences that failed on the last stage alone (only their requests end): ids, codes (an
     * xc_status, negative) and messages (strings as everywhere) */
    size_t n_failed;                    /* <= XC_WIRE_MAX_SEQS */
    const uint64_t *failed_ids;         /* (n_failed) */
    const int32_t *failed_codes;        /* (n_failed) */
    const char *const *failed_messages; /* (n_failed) */
} xc_wire_result;

/* ---- any message ---- */

typedef enum xc_wire_kind {
    XC_WIRE_KIND_CONTROL = 1,
    XC_WIRE_KIND_FORWARD = 2,
    XC_WIRE_KIND_RESULT = 3,
} xc_wire_kind;

typedef struct xc_wire_msg {
    xc_wire_kind kind; /* selects the member of u */

    union {
        xc_wire_control control;
        xc_wire_forward forward;
        xc_wire_result result;
    } u;
} xc_wire_msg;

/* Short name of a message kind or control kind, for logs ("forward", "heartbeat"). */
const char *xc_wire_kind_name(xc_wire_kind kind);
const char *xc_wire_ctl_name(xc_wire_ctl kind);

/* Checks a message as the decoder does; frame_lens (n_frames) are the byte lengths of the frames
 * after the header. XC_ERR_PROTO with an xc_errf message naming the first bad field. */
xc_status xc_wire_check(const xc_wire_msg *m, const size_t *frame_lens, size_t n_frames);

/* Checks m (XC_ERR_ARG if invalid: nothing bad is ever sent) and encodes it as a version-1 header.
 * *out is xc_malloc'd and owned by the caller (free with xc_free); XC_ERR_NOMEM. Tensor frames are
 * not part of the header: their sizes are checked against frame_lens (n_frames). */
xc_status xc_wire_encode(const xc_wire_msg *m, const size_t *frame_lens, size_t n_frames,
                         void **out, size_t *out_len);
xc_status xc_wire_encode_control(const xc_wire_control *c, void **out, size_t *out_len);
xc_status xc_wire_encode_forward(const xc_wire_forward *f, void **out, size_t *out_len);
xc_status xc_wire_encode_result(const xc_wire_result *r, void **out, size_t *out_len);

/* xc_wire_encode without xc_wire_check's walk over the message: for a sender that built m itself
 * from state it checked (the coordinator's micro-batches, the scheduling step's hot path); the
 * receiver's xc_wire_decode checks all of it. The header size limit still holds. */
xc_status xc_wire_encode_trusted(const xc_wire_msg *m, void **out, size_t *out_len);

/* Encodes without any check and with the given version number: for tests and fuzz seeds only,
 * to produce the bad headers a broken or hostile peer could send. */
xc_status xc_wire_encode_unchecked(const xc_wire_msg *m, uint32_t version, void **out,
                                   size_t *out_len);

/* The same through protobuf-c's generic packer for every kind (xc_wire_encode_unchecked writes
 * Forward headers with a direct encoder, the hot path of a scheduling step): for tests that
 * compare the two byte for byte. */
xc_status xc_wire_encode_generic(const xc_wire_msg *m, uint32_t version, void **out,
                                 size_t *out_len);

/* Decodes and checks header bytes buf (len) followed by n_frames tensor frames of frame_lens
 * bytes. Everything *out points to lives in arena (reset or destroy it to free). On failure *out
 * is untouched and the status is XC_ERR_PROTO (bad bytes, wrong version, failed check) or
 * XC_ERR_NOMEM, with an xc_errf message. The arena may have grown either way. */
xc_status xc_wire_decode(const void *buf, size_t len, const size_t *frame_lens, size_t n_frames,
                         xc_arena *arena, xc_wire_msg *out);

/* xc_wire_decode that also requires the given kind (XC_ERR_PROTO "expected forward, got ..."). */
xc_status xc_wire_decode_control(const void *buf, size_t len, xc_arena *arena,
                                 xc_wire_control *out);
xc_status xc_wire_decode_forward(const void *buf, size_t len, const size_t *frame_lens,
                                 size_t n_frames, xc_arena *arena, xc_wire_forward *out);
xc_status xc_wire_decode_result(const void *buf, size_t len, xc_arena *arena, xc_wire_result *out);

/* Writes v[0..n) as the payload of a packed repeated uint32 field (varints, at most 5 bytes
 * each) to out; returns the bytes written. Packed payloads concatenate: the bytes of v[0..n+m)
 * are those of v[0..n) followed by those of v[n..n+m). */
size_t xc_wire_pack_u32(const uint32_t *v, size_t n, uint8_t *out);

/* Bytes of the frame a tensor descriptor announces (rows * cols * dtype size; no overflow is
 * possible within the XC_WIRE_MAX_* limits, and 0 for an invalid dtype). */
size_t xc_wire_tensor_bytes(const xc_wire_tensor *t);
