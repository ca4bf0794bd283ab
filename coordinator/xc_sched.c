/* Replica scheduler: FIFO admission by free KV blocks, decode rows spread over P micro-batches,
 * prefill chunks in the rest of the row budget. */
#include "xc_sched.h"

#include <string.h>

#include "xc_mem.h"

typedef struct sseq {
    uint64_t id;
    int n_prompt, max_new;
    bool ready, admitted;
    int32_t *blocks;
    int n_blocks;
    int prefilled;  /* prompt rows sent */
    int n_gen;      /* tokens received */
    bool waiting;   /* a sampling row is in flight */
    int32_t last;   /* last token received */
    uint64_t order; /* arrival order */
} sseq;

struct xc_sched {
    xc_sched_conf conf;
    sseq *seqs;
    int n_seqs, cap_seqs;
    int32_t *free_blocks; /* stack */
    int n_free;
    uint64_t next_mb, next_order;
    uint64_t *inflight;
    int n_inflight;
    uint64_t *release, *release_out;
    int n_release, cap_release;
    xc_sched_item *items;
};

xc_status xc_sched_create(const xc_sched_conf *conf, xc_sched **out) {
    if (conf->max_rows < 1 || conf->chunk < 1 || conf->block_size < 1 || conf->n_blocks < 1 ||
        conf->max_inflight < 1 || conf->n_stages < 1) {
        return xc_errf(XC_ERR_ARG, "scheduler: every size must be >= 1");
    }
    xc_sched *s = xc_calloc(1, sizeof *s);
    if (!s) {
        return XC_ERR_NOMEM;
    }
    s->conf = *conf;
    s->free_blocks = xc_malloc((size_t)conf->n_blocks * sizeof(int32_t));
    s->inflight = xc_malloc((size_t)conf->max_inflight * sizeof(uint64_t));
    s->items = xc_malloc((size_t)conf->max_rows * sizeof(xc_sched_item));
    if (!s->free_blocks || !s->inflight || !s->items) {
        xc_sched_destroy(s);
        return XC_ERR_NOMEM;
    }
    for (int i = 0; i < conf->n_blocks; i++) {
        s->free_blocks[i] = conf->n_blocks - 1 - i; /* pops 0, 1, 2, ... */
    }
    s->n_free = conf->n_blocks;
    s->next_mb = 1;
    *out = s;
    return XC_OK;
}

void xc_sched_destroy(xc_sched *s) {
    if (!s) {
        return;
    }
    for (int i = 0; i < s->n_seqs; i++) {
        xc_free(s->seqs[i].blocks);
    }
    xc_free(s->seqs);
    xc_free(s->free_blocks);
    xc_free(s->inflight);
    xc_free(s->release);
    xc_free(s->release_out);
    xc_free(s->items);
    xc_free(s);
}

static sseq *find(const xc_sched *s, uint64_t id) {
    for (int i = 0; i < s->n_seqs; i++) {
        if (s->seqs[i].id == id) {
            return &s->seqs[i];
        }
    }
    return NULL;
}

static int blocks_for(const xc_sched *s, int tokens) {
    return (tokens + s->conf.block_size - 1) / s->conf.block_size;
}

xc_status xc_sched_add(xc_sched *s, uint64_t id, int n_prompt, int max_new, bool ready) {
    if (n_prompt < 1 || max_new < 1) {
        return xc_errf(XC_ERR_ARG, "sequence %llu: empty prompt or no new tokens",
                       (unsigned long long)id);
    }
    if (blocks_for(s, n_prompt + max_new) > s->conf.n_blocks) {
        return xc_errf(XC_ERR_ARG,
                       "sequence of %d + %d tokens needs %d KV blocks; the replica has %d",
                       n_prompt, max_new, blocks_for(s, n_prompt + max_new), s->conf.n_blocks);
    }
    if (find(s, id)) {
        return xc_errf(XC_ERR_ARG, "sequence id %llu is in use", (unsigned long long)id);
    }
    if (s->n_seqs == s->cap_seqs) {
        int cap = s->cap_seqs ? s->cap_seqs * 2 : 64;
        sseq *n = xc_realloc(s->seqs, (size_t)cap * sizeof *n);
        if (!n) {
            return XC_ERR_NOMEM;
        }
        s->seqs = n;
        s->cap_seqs = cap;
    }
    /* room for this sequence's release id now, so that finishing or failing it never has to
     * allocate (a dropped release would leave its state on every stage) */
    if (s->n_release + s->n_seqs + 1 > s->cap_release) {
        int cap = s->cap_release ? s->cap_release * 2 : 64;
        while (cap < s->n_release + s->n_seqs + 1) {
            cap *= 2;
        }
        uint64_t *a = xc_realloc(s->release, (size_t)cap * sizeof *a);
        if (!a) {
            return XC_ERR_NOMEM;
        }
        s->release = a;
        uint64_t *b = xc_realloc(s->release_out, (size_t)cap * sizeof *b);
        if (!b) {
            return XC_ERR_NOMEM; /* the bigger release array stays; cap is the smaller one */
        }
        s->release_out = b;
        s->cap_release = cap;
    }
    s->seqs[s->n_seqs++] = (sseq){.id = id,
                                  .n_prompt = n_prompt,
                                  .max_new = max_new,
                                  .ready = ready,
                                  .order = s->next_order++};
    return XC_OK;
}

xc_status xc_sched_set_ready(xc_sched *s, uint64_t id) {
    sseq *q = find(s, id);
    if (!q) {
        return xc_errf(XC_ERR_ARG, "sequence %llu is unknown", (unsigned long long)id);
    }
    q->ready = true;
    return XC_OK;
}

static void admit(xc_sched *s) {
    /* FIFO: the oldest waiting sequence first; a big one at the head blocks later ones (no
     * starvation) */
    for (;;) {
        sseq *best = NULL;
        for (int i = 0; i < s->n_seqs; i++) {
            sseq *q = &s->seqs[i];
            if (!q->admitted && q->ready && (!best || q->order < best->order)) {
                best = q;
            }
        }
        if (!best) {
            return;
        }
        int need = blocks_for(s, best->n_prompt + best->max_new);
        if (need > s->n_free) {
            return;
        }
        best->blocks = xc_malloc((size_t)need * sizeof(int32_t));
        if (!best->blocks) {
            return;
        }
        for (int k = 0; k < need; k++) {
            best->blocks[k] = s->free_blocks[--s->n_free];
        }
        best->n_blocks = need;
        best->admitted = true;
    }
}

bool xc_sched_next(xc_sched *s, xc_sched_batch *out) {
    if (s->n_inflight >= s->conf.max_inflight) {
        return false;
    }
    admit(s);
    /* decode rows: spread the decoding sequences over P micro-batches */
    int n_decoding = 0;
    for (int i = 0; i < s->n_seqs; i++) {
        const sseq *q = &s->seqs[i];
        if (q->admitted && q->prefilled == q->n_prompt && q->n_gen > 0) {
            n_decoding++;
        }
    }
    int decode_cap = (n_decoding + s->conf.n_stages - 1) / s->conf.n_stages;
    /* Decode rows form P groups that cycle through the pipeline. With P micro-batches already in
     * flight, a smaller decode-only batch would only split a group and pay each layer's fixed
     * cost twice: wait for the group unless prefill work can fill the batch. */
    if (s->n_inflight >= s->conf.n_stages) {
        int ready = 0;
        bool prefill = false;
        for (int i = 0; i < s->n_seqs; i++) {
            const sseq *q = &s->seqs[i];
            ready += q->admitted && q->prefilled == q->n_prompt && q->n_gen > 0 && !q->waiting;
            prefill = prefill || (q->admitted && q->prefilled < q->n_prompt);
        }
        if (!prefill && ready < decode_cap) {
            return false;
        }
    }
    int budget = s->conf.max_rows, n = 0, rows = 0, n_dec = 0;
    /* oldest first, so that every stream advances */
    for (int i = 0; i < s->n_seqs && n_dec < decode_cap && rows < budget; i++) {
        sseq *q = &s->seqs[i];
        if (q->admitted && q->prefilled == q->n_prompt && q->n_gen > 0 && !q->waiting) {
            s->items[n++] = (xc_sched_item){.id = q->id,
                                            .first_pos = q->n_prompt + q->n_gen - 1,
                                            .n_tokens = 1,
                                            .samples = true,
                                            .token = q->last};
            q->waiting = true;
            rows++;
            n_dec++;
        }
    }
    /* prefill chunks in arrival order */
    for (;;) {
        sseq *best = NULL;
        for (int i = 0; i < s->n_seqs; i++) {
            sseq *q = &s->seqs[i];
            bool listed = false;
            for (int k = 0; k < n && !listed; k++) {
                listed = s->items[k].id == q->id;
            }
            if (q->admitted && q->prefilled < q->n_prompt && !listed &&
                (!best || q->order < best->order)) {
                best = q;
            }
        }
        if (!best || rows >= budget) {
            break;
        }
        int c = best->n_prompt - best->prefilled;
        c = c < s->conf.chunk ? c : s->conf.chunk;
        c = c < budget - rows ? c : budget - rows;
        bool last = best->prefilled + c == best->n_prompt;
        s->items[n++] = (xc_sched_item){.id = best->id,
                                        .first_pos = best->prefilled,
                                        .n_tokens = c,
                                        .first_chunk = best->prefilled == 0,
                                        .samples = last};
        best->prefilled += c;
        best->waiting = best->waiting || last;
        rows += c;
    }
    if (n == 0 && s->n_release == 0) {
        return false;
    }
    /* n == 0 with releases pending: a release-only micro-batch (no rows), so that the stages drop
     * finished or cancelled sequences now rather than with the next request's rows; every stage
     * passes it on and the last stage answers it, like any micro-batch */
    uint64_t id = s->next_mb++;
    s->inflight[s->n_inflight++] = id;
    /* hand out the pending releases */
    uint64_t *tmp = s->release_out;
    s->release_out = s->release;
    s->release = tmp;
    int n_rel = s->n_release;
    s->n_release = 0;
    *out = (xc_sched_batch){.id = id,
                            .n_items = n,
                            .items = s->items,
                            .n_rows = rows,
                            .n_release = n_rel,
                            .release = s->release_out};
    return true;
}

void xc_sched_abort(xc_sched *s, const xc_sched_batch *b) {
    xc_sched_batch_done(s, b->id);
    for (int i = 0; i < b->n_items; i++) {
        const xc_sched_item *it = &b->items[i];
        sseq *q = find(s, it->id);
        if (!q) {
            continue;
        }
        if (it->first_pos >= q->n_prompt) { /* a decode row */
            q->waiting = false;
        } else if (q->prefilled == it->first_pos + it->n_tokens) { /* a prefill chunk */
            q->prefilled = it->first_pos;
            q->waiting = q->waiting && !it->samples;
        }
    }
    /* the releases it carried are pending again (release_out holds them; release is empty, and
     * both arrays have the same capacity) */
    if (b->n_release > 0 && b->release == s->release_out) {
        memmove(s->release + b->n_release, s->release, (size_t)s->n_release * sizeof(uint64_t));
        memcpy(s->release, s->release_out, (size_t)b->n_release * sizeof(uint64_t));
        s->n_release += b->n_release;
    }
}

const int32_t *xc_sched_blocks(const xc_sched *s, uint64_t id, int *n_blocks) {
    const sseq *q = find(s, id);
    if (!q || !q->admitted) {
        return NULL;
    }
    *n_blocks = q->n_blocks;
    return q->blocks;
}

void xc_sched_batch_done(xc_sched *s, uint64_t mb_id) {
    for (int i = 0; i < s->n_inflight; i++) {
        if (s->inflight[i] == mb_id) {
            s->inflight[i] = s->inflight[--s->n_inflight];
            return;
        }
    }
}

xc_status xc_sched_token(xc_sched *s, uint64_t id, int32_t token) {
    sseq *q = find(s, id);
    if (!q || !q->waiting) {
        return xc_errf(XC_ERR_PROTO, "token for sequence %llu that expects none",
                       (unsigned long long)id);
    }
    q->waiting = false;
    q->last = token;
    q->n_gen++;
    return XC_OK;
}

void xc_sched_finish(xc_sched *s, uint64_t id) {
    sseq *q = find(s, id);
    if (!q) {
        return;
    }
    if (q->admitted) {
        for (int k = 0; k < q->n_blocks; k++) {
            s->free_blocks[s->n_free++] = q->blocks[k];
        }
        XC_ASSERT(s->n_release < s->cap_release); /* reserved by xc_sched_add */
        s->release[s->n_release++] = id;
    }
    xc_free(q->blocks);
    *q = s->seqs[--s->n_seqs];
}

void xc_sched_fail_all(xc_sched *s, uint64_t *ids, int cap, int *n) {
    int k = 0;
    for (int i = 0; i < s->n_seqs; i++) {
        if (k < cap) {
            ids[k++] = s->seqs[i].id;
        }
        /* the stages may hold state for an admitted sequence: release it there too (pending
         * releases stay queued as well) */
        if (s->seqs[i].admitted) {
            XC_ASSERT(s->n_release < s->cap_release); /* reserved by xc_sched_add */
            s->release[s->n_release++] = s->seqs[i].id;
        }
        xc_free(s->seqs[i].blocks);
    }
    s->n_seqs = 0;
    s->n_inflight = 0;
    for (int i = 0; i < s->conf.n_blocks; i++) {
        s->free_blocks[i] = s->conf.n_blocks - 1 - i;
    }
    s->n_free = s->conf.n_blocks;
    *n = k;
}

void xc_sched_drop_releases(xc_sched *s) {
    s->n_release = 0;
}

bool xc_sched_is_inflight(const xc_sched *s, uint64_t mb_id) {
    for (int i = 0; i < s->n_inflight; i++) {
        if (s->inflight[i] == mb_id) {
            return true;
        }
    }
    return false;
}

int xc_sched_n_live(const xc_sched *s) {
    return s->n_seqs;
}

int xc_sched_n_inflight(const xc_sched *s) {
    return s->n_inflight;
}

int xc_sched_n_free_blocks(const xc_sched *s) {
    return s->n_free;
}
