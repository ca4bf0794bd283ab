/* Replica scheduler: FIFO admission by free KV blocks, decode rows spread over P micro-batches,
 * prefill chunks in the rest of the row budget; sequences found through a hash map; prefix
 * caching of full KV blocks (hash chain, reference counts, LRU eviction). */
#include "xc_sched.h"

#include <string.h>

#include "xc_mem.h"

#define NOBLK (-1)

typedef struct sseq {
    uint64_t id;
    int n_prompt, max_new;
    bool ready, admitted;
    int32_t *blocks;
    int n_blocks;
    int prefilled;  /* prompt rows sent (or taken from the prefix cache) */
    int n_gen;      /* tokens received */
    bool waiting;   /* a sampling row is in flight */
    bool started;   /* its first chunk went out (it carried the sampling parameters) */
    int32_t last;   /* last token received */
    uint64_t order; /* arrival order */
    uint64_t stamp; /* micro-batch being formed that lists it */
    /* prefix cache */
    uint64_t *keys;  /* (n_prompt + max_new) row keys; NULL = never shared */
    uint64_t *chain; /* (n_blocks_total) chain hash of each full block */
    int n_cached;    /* leading blocks shared from the cache at admission */
    bool chain_ok;   /* its full blocks are entered in the cache (false after a duplicate) */
    int data_rows;   /* rows that need data the caller did not fetch (covered by the cache) */
    bool has_dep;    /* covered by the blocks of a sequence still waiting for admission */
    uint64_t dep;
    /* issue 13.3: to be forked from fork_of (the same prompt) when its last prompt chunk forms */
    bool has_fork;
    uint64_t fork_of;
    uint64_t fork_mb; /* the micro-batch it was forked in (0 = not forked) */
} sseq;

/* a pending copy on write: src (the parent's partial last block) -> dst (fork id's), to be sent
 * with the first micro-batch formed after mb */
typedef struct cow {
    int32_t src, dst;
    uint64_t id, mb;
} cow;

struct xc_sched {
    xc_sched_conf conf;
    sseq *seqs;
    int n_seqs, cap_seqs;
    /* id -> index into seqs (open addressing, linear probing; -1 = empty) */
    uint64_t *map_id;
    int32_t *map_ix;
    int map_cap;
    int32_t *free_blocks; /* stack */
    int n_free;
    uint64_t next_mb, next_order;
    uint64_t *inflight;
    int n_inflight;
    uint64_t *release, *release_out;
    int n_release, cap_release;
    xc_sched_item *items;
    /* prefix cache, per block */
    int32_t *ref;
    uint8_t *hashed, *ready, *in_lru;
    uint64_t *bhash, *bkeys, *owner, *fill_mb, *reg_mb;
    int32_t *parent, *hnext, *lru_prev, *lru_next;
    uint32_t *gen, *parent_gen;
    int32_t *bucket;
    int n_bucket;
    int lru_head, lru_tail, n_lru;
    uint64_t *uncovered;
    int n_uncovered;
    /* sequences by state (count_seq), so that a step scans only when there is work of a kind */
    int n_unadmitted, n_prefilling, n_decoding, n_dec_ready;
    /* issue 13.3: forks of the batch being formed, pending copies, copies handed out (each at
     * most one per sequence: capacity cap_seqs) */
    xc_sched_fork *forks;
    int n_forks;
    int n_fork_wait; /* at least the sequences waiting to be forked (0: fork_twins has nothing
                        to look for) */
    cow *cows, *cows_out;
    int n_cows;
    xc_sched_copy *copies; /* the pending copies handed out (cows_out), as the batch shows them */
    int n_copies;
};

/* ---- hashing ---- */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t xc_sched_image_key(uint64_t image_hash, int offset) {
    return mix64(image_hash ^ mix64((uint64_t)offset + 0x9e3779b97f4a7c15ull)) | (1ull << 63);
}

static uint64_t chain_hash(uint64_t parent, const uint64_t *keys, int n) {
    uint64_t h = mix64(parent + 0x632be59bd9b4e019ull);
    for (int i = 0; i < n; i++) {
        h = mix64(h ^ keys[i]) + (uint64_t)i;
    }
    return h;
}

/* ---- id map ---- */

static int map_slot(const xc_sched *s, uint64_t id) {
    return (int)(mix64(id) & (uint64_t)(s->map_cap - 1));
}

static int find_ix(const xc_sched *s, uint64_t id) {
    if (!s->map_cap) {
        return -1;
    }
    for (int i = map_slot(s, id);; i = (i + 1) & (s->map_cap - 1)) {
        if (s->map_ix[i] < 0) {
            return -1;
        }
        if (s->map_id[i] == id) {
            return s->map_ix[i];
        }
    }
}

static sseq *find(const xc_sched *s, uint64_t id) {
    int i = find_ix(s, id);
    return i >= 0 ? &s->seqs[i] : NULL;
}

static void map_put(xc_sched *s, uint64_t id, int ix) {
    int i = map_slot(s, id);
    while (s->map_ix[i] >= 0 && s->map_id[i] != id) {
        i = (i + 1) & (s->map_cap - 1);
    }
    s->map_id[i] = id;
    s->map_ix[i] = ix;
}

static void map_del(xc_sched *s, uint64_t id) {
    int i = map_slot(s, id);
    while (s->map_ix[i] >= 0 && s->map_id[i] != id) {
        i = (i + 1) & (s->map_cap - 1);
    }
    if (s->map_ix[i] < 0) {
        return;
    }
    /* backward-shift deletion: no tombstones */
    int m = s->map_cap - 1;
    for (int j = (i + 1) & m;; j = (j + 1) & m) {
        if (s->map_ix[j] < 0) {
            break;
        }
        int home = map_slot(s, s->map_id[j]);
        /* j's entry may move to i if its home is not in (i, j] cyclically */
        bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            s->map_id[i] = s->map_id[j];
            s->map_ix[i] = s->map_ix[j];
            i = j;
        }
    }
    s->map_ix[i] = -1;
}

static xc_status map_grow(xc_sched *s, int cap) {
    uint64_t *id = xc_malloc((size_t)cap * sizeof *id);
    int32_t *ix = xc_malloc((size_t)cap * sizeof *ix);
    if (!id || !ix) {
        xc_free(id);
        xc_free(ix);
        return XC_ERR_NOMEM;
    }
    xc_free(s->map_id);
    xc_free(s->map_ix);
    s->map_id = id;
    s->map_ix = ix;
    s->map_cap = cap;
    for (int i = 0; i < cap; i++) {
        ix[i] = -1;
    }
    for (int i = 0; i < s->n_seqs; i++) {
        map_put(s, s->seqs[i].id, i);
    }
    return XC_OK;
}

/* ---- block cache ---- */

/* Adds d to the counter of q's state: waiting for admission, prefilling (admitted, prompt rows
 * left), decoding (and ready to: no row in flight). Every change of admitted, prefilled, n_gen or
 * waiting is bracketed by count_seq(-1) and count_seq(+1). */
static void count_seq(xc_sched *s, const sseq *q, int d) {
    if (!q->admitted) {
        s->n_unadmitted += d;
    } else if (q->prefilled < q->n_prompt) {
        s->n_prefilling += d;
    } else if (q->n_gen > 0) {
        s->n_decoding += d;
        s->n_dec_ready += q->waiting ? 0 : d;
    }
}

static int bs_of(const xc_sched *s) {
    return s->conf.block_size;
}

static void lru_remove(xc_sched *s, int32_t b) {
    if (!s->in_lru[b]) {
        return;
    }
    int32_t p = s->lru_prev[b], n = s->lru_next[b];
    if (p != NOBLK) {
        s->lru_next[p] = n;
    } else {
        s->lru_head = n;
    }
    if (n != NOBLK) {
        s->lru_prev[n] = p;
    } else {
        s->lru_tail = p;
    }
    s->in_lru[b] = 0;
    s->n_lru--;
}

static void lru_push(xc_sched *s, int32_t b) {
    s->lru_prev[b] = s->lru_tail;
    s->lru_next[b] = NOBLK;
    if (s->lru_tail != NOBLK) {
        s->lru_next[s->lru_tail] = b;
    } else {
        s->lru_head = b;
    }
    s->lru_tail = b;
    s->in_lru[b] = 1;
    s->n_lru++;
}

static int32_t lookup(const xc_sched *s, uint64_t h, const uint64_t *keys, int32_t parent) {
    int bs = bs_of(s);
    for (int32_t b = s->bucket[h & (uint64_t)(s->n_bucket - 1)]; b != NOBLK; b = s->hnext[b]) {
        if (s->bhash[b] == h && s->parent[b] == parent &&
            (parent == NOBLK || s->parent_gen[b] == s->gen[parent]) &&
            !memcmp(keys, s->bkeys + (size_t)b * bs, (size_t)bs * sizeof(uint64_t))) {
            return b;
        }
    }
    return NOBLK;
}

static void enter(xc_sched *s, int32_t b, uint64_t h, const uint64_t *keys, int32_t parent,
                  uint64_t owner, bool ready) {
    int bs = bs_of(s);
    int32_t *head = &s->bucket[h & (uint64_t)(s->n_bucket - 1)];
    s->hnext[b] = *head;
    *head = b;
    s->hashed[b] = 1;
    s->bhash[b] = h;
    memcpy(s->bkeys + (size_t)b * bs, keys, (size_t)bs * sizeof(uint64_t));
    s->parent[b] = parent;
    s->parent_gen[b] = parent == NOBLK ? 0 : s->gen[parent];
    s->owner[b] = owner;
    s->ready[b] = ready;
    s->fill_mb[b] = 0;
    s->reg_mb[b] = 0;
}

static void leave(xc_sched *s, int32_t b) {
    if (!s->hashed[b]) {
        return;
    }
    int32_t *p = &s->bucket[s->bhash[b] & (uint64_t)(s->n_bucket - 1)];
    while (*p != b) {
        p = &s->hnext[*p];
    }
    *p = s->hnext[b];
    lru_remove(s, b);
    s->hashed[b] = 0;
    s->ready[b] = 0;
    s->gen[b]++; /* blocks entered with b as their parent no longer match */
}

/* A free block: the free list first, then the least recently used cached one. */
static int32_t take_block(xc_sched *s) {
    if (s->n_free > 0) {
        return s->free_blocks[--s->n_free];
    }
    int32_t b = s->lru_head;
    if (b != NOBLK) {
        leave(s, b);
    }
    return b;
}

/* Leading blocks of q (at most max) held by the cache. out may be NULL. */
static int match(const xc_sched *s, const sseq *q, int max, int32_t *out) {
    int bs = bs_of(s), m = 0;
    int32_t prev = NOBLK;
    for (; m < max; m++) {
        int32_t b = lookup(s, q->chain[m], q->keys + (size_t)m * bs, prev);
        if (b == NOBLK) {
            break;
        }
        if (out) {
            out[m] = b;
        }
        prev = b;
    }
    return m;
}

/* The most blocks a sequence of n_prompt rows may share: those before the block that holds its
 * last prompt row. */
static int max_shared(const xc_sched *s, int n_prompt) {
    return (n_prompt - 1) / bs_of(s);
}

static void reset_cache(xc_sched *s) {
    if (!s->conf.prefix_cache) {
        return;
    }
    int n = s->conf.n_blocks;
    memset(s->ref, 0, (size_t)n * sizeof *s->ref);
    memset(s->hashed, 0, (size_t)n);
    memset(s->ready, 0, (size_t)n);
    memset(s->in_lru, 0, (size_t)n);
    for (int i = 0; i < n; i++) {
        s->gen[i]++;
    }
    for (int i = 0; i < s->n_bucket; i++) {
        s->bucket[i] = NOBLK;
    }
    s->lru_head = s->lru_tail = NOBLK;
    s->n_lru = 0;
    s->n_uncovered = 0;
}

/* ---- life cycle ---- */

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
    s->lru_head = s->lru_tail = NOBLK;
    size_t n = (size_t)conf->n_blocks;
    s->free_blocks = xc_malloc(n * sizeof(int32_t));
    s->inflight = xc_malloc((size_t)conf->max_inflight * sizeof(uint64_t));
    s->items = xc_malloc((size_t)conf->max_rows * sizeof(xc_sched_item));
    if (!s->free_blocks || !s->inflight || !s->items || map_grow(s, 128) != XC_OK) {
        xc_sched_destroy(s);
        return XC_ERR_NOMEM;
    }
    if (conf->prefix_cache) {
        s->n_bucket = 16;
        while ((size_t)s->n_bucket < 2 * n) {
            s->n_bucket *= 2;
        }
        s->ref = xc_calloc(n, sizeof *s->ref);
        s->hashed = xc_calloc(n, 1);
        s->ready = xc_calloc(n, 1);
        s->in_lru = xc_calloc(n, 1);
        s->bhash = xc_calloc(n, sizeof *s->bhash);
        s->bkeys = xc_calloc(n * (size_t)conf->block_size, sizeof *s->bkeys);
        s->owner = xc_calloc(n, sizeof *s->owner);
        s->fill_mb = xc_calloc(n, sizeof *s->fill_mb);
        s->reg_mb = xc_calloc(n, sizeof *s->reg_mb);
        s->parent = xc_calloc(n, sizeof *s->parent);
        s->hnext = xc_calloc(n, sizeof *s->hnext);
        s->lru_prev = xc_calloc(n, sizeof *s->lru_prev);
        s->lru_next = xc_calloc(n, sizeof *s->lru_next);
        s->gen = xc_calloc(n, sizeof *s->gen);
        s->parent_gen = xc_calloc(n, sizeof *s->parent_gen);
        s->bucket = xc_malloc((size_t)s->n_bucket * sizeof *s->bucket);
        if (!s->ref || !s->hashed || !s->ready || !s->in_lru || !s->bhash || !s->bkeys ||
            !s->owner || !s->fill_mb || !s->reg_mb || !s->parent || !s->hnext || !s->lru_prev ||
            !s->lru_next || !s->gen || !s->parent_gen || !s->bucket) {
            xc_sched_destroy(s);
            return XC_ERR_NOMEM;
        }
        reset_cache(s);
    }
    for (int i = 0; i < conf->n_blocks; i++) {
        s->free_blocks[i] = conf->n_blocks - 1 - i; /* pops 0, 1, 2, ... */
    }
    s->n_free = conf->n_blocks;
    s->next_mb = 1;
    *out = s;
    return XC_OK;
}

static void seq_free(sseq *q) {
    xc_free(q->blocks);
    xc_free(q->keys);
    xc_free(q->chain);
}

void xc_sched_destroy(xc_sched *s) {
    if (!s) {
        return;
    }
    for (int i = 0; i < s->n_seqs; i++) {
        seq_free(&s->seqs[i]);
    }
    xc_free(s->seqs);
    xc_free(s->map_id);
    xc_free(s->map_ix);
    xc_free(s->free_blocks);
    xc_free(s->inflight);
    xc_free(s->release);
    xc_free(s->release_out);
    xc_free(s->items);
    xc_free(s->ref);
    xc_free(s->hashed);
    xc_free(s->ready);
    xc_free(s->in_lru);
    xc_free(s->bhash);
    xc_free(s->bkeys);
    xc_free(s->owner);
    xc_free(s->fill_mb);
    xc_free(s->reg_mb);
    xc_free(s->parent);
    xc_free(s->hnext);
    xc_free(s->lru_prev);
    xc_free(s->lru_next);
    xc_free(s->gen);
    xc_free(s->parent_gen);
    xc_free(s->bucket);
    xc_free(s->uncovered);
    xc_free(s->forks);
    xc_free(s->cows);
    xc_free(s->cows_out);
    xc_free(s->copies);
    xc_free(s);
}

static int blocks_for(const xc_sched *s, int tokens) {
    return (tokens + s->conf.block_size - 1) / s->conf.block_size;
}

xc_status xc_sched_add(xc_sched *s, uint64_t id, int n_prompt, int max_new, bool ready) {
    return xc_sched_add_keyed(s, id, n_prompt, max_new, ready, NULL, 0, NULL);
}

/* Leading full blocks that sequence q shares with w (a sequence waiting for admission), at most
 * max. */
static int twin_blocks(const xc_sched *s, const sseq *q, const sseq *w, int max) {
    int bs = bs_of(s), full = w->n_prompt / bs, m = 0;
    max = max < full ? max : full;
    while (m < max && q->chain[m] == w->chain[m] &&
           !memcmp(q->keys + (size_t)m * bs, w->keys + (size_t)m * bs,
                   (size_t)bs * sizeof(uint64_t))) {
        m++;
    }
    return m;
}

xc_status xc_sched_add_keyed(xc_sched *s, uint64_t id, int n_prompt, int max_new, bool ready,
                             const uint64_t *keys, int data_rows, bool *covered) {
    if (covered) {
        *covered = false;
    }
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
        xc_sched_fork *fk = xc_realloc(s->forks, (size_t)cap * sizeof *fk);
        if (fk) {
            s->forks = fk;
        }
        cow *cw = fk ? xc_realloc(s->cows, (size_t)cap * sizeof *cw) : NULL;
        if (cw) {
            s->cows = cw;
        }
        cow *co = cw ? xc_realloc(s->cows_out, (size_t)cap * sizeof *co) : NULL;
        if (co) {
            s->cows_out = co;
        }
        xc_sched_copy *cp = co ? xc_realloc(s->copies, (size_t)cap * sizeof *cp) : NULL;
        if (!cp) {
            return XC_ERR_NOMEM; /* cap_seqs stays: every array holds at least that many */
        }
        s->copies = cp;
        s->cap_seqs = cap;
    }
    if (2 * (s->n_seqs + 1) > s->map_cap) {
        XC_TRY(map_grow(s, s->map_cap * 2));
    }
    /* room for this sequence's release id (and its uncovered report) now, so that finishing or
     * failing it never has to allocate (a dropped release would leave its state on every stage) */
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
        uint64_t *u = xc_realloc(s->uncovered, (size_t)cap * sizeof *u);
        if (!u) {
            return XC_ERR_NOMEM;
        }
        s->uncovered = u;
        s->cap_release = cap;
    }
    sseq q = {.id = id,
              .n_prompt = n_prompt,
              .max_new = max_new,
              .ready = ready,
              .order = s->next_order++};
    if (keys && s->conf.prefix_cache) {
        int bs = bs_of(s), nb = blocks_for(s, n_prompt + max_new);
        q.keys = xc_malloc((size_t)nb * bs * sizeof(uint64_t));
        q.chain = xc_malloc((size_t)nb * sizeof(uint64_t));
        if (!q.keys || !q.chain) {
            seq_free(&q);
            return XC_ERR_NOMEM;
        }
        memcpy(q.keys, keys, (size_t)n_prompt * sizeof(uint64_t));
        uint64_t h = 0;
        for (int k = 0; k < n_prompt / bs; k++) {
            h = q.chain[k] = chain_hash(h, q.keys + (size_t)k * bs, bs);
        }
        q.chain_ok = true;
        int max = max_shared(s, n_prompt);
        /* n > 1 (issue 13.3): the same prompt as a sequence whose last prompt chunk is not formed
         * yet: it will be forked from that one and compute no prompt row */
        for (int i = 0; i < s->n_seqs && !q.has_fork; i++) {
            const sseq *w = &s->seqs[i];
            if (w->keys && w->n_prompt == n_prompt && !w->has_fork && !w->fork_mb &&
                !(w->admitted && w->prefilled == w->n_prompt) &&
                !memcmp(w->keys, keys, (size_t)n_prompt * sizeof(uint64_t))) {
                q.has_fork = true;
                q.fork_of = w->id;
                s->n_fork_wait++;
            }
        }
        int rows = q.has_fork ? n_prompt : match(s, &q, max, NULL) * bs;
        if (rows < data_rows) {
            /* a twin waiting for admission (n > 1, or the same prompt sent twice at once) */
            for (int i = 0; i < s->n_seqs; i++) {
                const sseq *w = &s->seqs[i];
                if (!w->admitted && w->keys && twin_blocks(s, &q, w, max) * bs >= data_rows) {
                    q.has_dep = true;
                    q.dep = w->id;
                    rows = data_rows;
                    break;
                }
            }
        }
        if (data_rows > 0 && rows >= data_rows) {
            q.data_rows = data_rows;
            q.ready = true; /* without its data */
            if (covered) {
                *covered = true;
            }
        }
    }
    s->seqs[s->n_seqs] = q;
    map_put(s, id, s->n_seqs);
    s->n_seqs++;
    count_seq(s, &q, 1);
    return XC_OK;
}

xc_status xc_sched_set_ready(xc_sched *s, uint64_t id) {
    sseq *q = find(s, id);
    if (!q) {
        return xc_errf(XC_ERR_ARG, "sequence %llu is unknown", (unsigned long long)id);
    }
    q->ready = true;
    q->data_rows = 0; /* its data is here */
    return XC_OK;
}

int xc_sched_take_uncovered(xc_sched *s, uint64_t *ids, int cap) {
    int n = s->n_uncovered < cap ? s->n_uncovered : cap;
    if (n <= 0) {
        return 0;
    }
    memcpy(ids, s->uncovered, (size_t)n * sizeof(uint64_t));
    memmove(s->uncovered, s->uncovered + n, (size_t)(s->n_uncovered - n) * sizeof(uint64_t));
    s->n_uncovered -= n;
    return n;
}

int xc_sched_cached_rows(const xc_sched *s, const uint64_t *keys, int n_prompt) {
    if (!s->conf.prefix_cache || !keys || n_prompt < 1) {
        return 0;
    }
    int bs = bs_of(s), max = max_shared(s, n_prompt), m = 0;
    uint64_t h = 0;
    int32_t prev = NOBLK;
    for (; m < max; m++) {
        h = chain_hash(h, keys + (size_t)m * bs, bs);
        int32_t b = lookup(s, h, keys + (size_t)m * bs, prev);
        if (b == NOBLK) {
            break;
        }
        prev = b;
    }
    /* or the blocks a twin waiting for admission will write (n > 1 siblings) */
    for (int i = 0; i < s->n_seqs; i++) {
        const sseq *w = &s->seqs[i];
        if (w->admitted || !w->keys) {
            continue;
        }
        int full = w->n_prompt / bs < max ? w->n_prompt / bs : max, t = 0;
        while (t < full && !memcmp(keys + (size_t)t * bs, w->keys + (size_t)t * bs,
                                   (size_t)bs * sizeof(uint64_t))) {
            t++;
        }
        m = t > m ? t : m;
    }
    return m * bs;
}

int xc_sched_n_cached_blocks(const xc_sched *s) {
    return s->n_lru;
}

/* Admits q with blocks: shares the m leading cached blocks in shared, takes the rest, enters its
 * own full prompt blocks (not ready until written). */
static void take_blocks(xc_sched *s, sseq *q, const int32_t *shared, int m, int need) {
    for (int k = 0; k < m; k++) {
        lru_remove(s, shared[k]);
        s->ref[shared[k]]++;
        q->blocks[k] = shared[k];
    }
    for (int k = m; k < need; k++) {
        q->blocks[k] = take_block(s);
        XC_ASSERT(q->blocks[k] != NOBLK);
        if (s->conf.prefix_cache) {
            s->ref[q->blocks[k]] = 1;
        }
    }
    q->n_cached = m;
    q->prefilled = m * bs_of(s);
    if (!q->keys) {
        return;
    }
    int bs = bs_of(s);
    for (int k = m; k < q->n_prompt / bs && q->chain_ok; k++) {
        int32_t parent = k > 0 ? q->blocks[k - 1] : NOBLK;
        if (lookup(s, q->chain[k], q->keys + (size_t)k * bs, parent) != NOBLK) {
            q->chain_ok = false; /* an equal block is cached (its last prompt row is recomputed) */
            break;
        }
        enter(s, q->blocks[k], q->chain[k], q->keys + (size_t)k * bs, parent, q->id, false);
    }
}

static void admit(xc_sched *s) {
    /* FIFO: the oldest waiting sequence first; a big one at the head blocks later ones (no
     * starvation) */
    while (s->n_unadmitted > 0) {
        sseq *best = NULL;
        for (int i = 0; i < s->n_seqs; i++) {
            sseq *q = &s->seqs[i];
            if (q->admitted || !q->ready || (best && q->order >= best->order)) {
                continue;
            }
            if (q->has_fork) { /* to be forked when its twin's last prompt chunk forms */
                const sseq *w = find(s, q->fork_of);
                if (w && !(w->admitted && w->prefilled == w->n_prompt)) {
                    continue;
                }
                q->has_fork = false; /* the twin ended, or it came too late: admitted as usual */
            }
            if (q->has_dep) { /* wait for its twin's admission: it shares the twin's blocks */
                const sseq *w = find(s, q->dep);
                if (w && !w->admitted) {
                    continue;
                }
                q->has_dep = false;
            }
            best = q;
        }
        if (!best) {
            return;
        }
        int need = blocks_for(s, best->n_prompt + best->max_new);
        int m = 0, taken = 0;
        int32_t *shared = NULL;
        if (best->keys) {
            shared = xc_malloc((size_t)need * sizeof(int32_t));
            if (!shared) {
                return;
            }
            m = match(s, best, max_shared(s, best->n_prompt), shared);
            if (m * bs_of(s) < best->data_rows) {
                /* its data was not fetched and the cache no longer holds those rows */
                xc_free(shared);
                best->ready = false;
                best->data_rows = 0;
                XC_ASSERT(s->n_uncovered < s->cap_release); /* reserved by xc_sched_add */
                s->uncovered[s->n_uncovered++] = best->id;
                continue;
            }
            for (int k = 0; k < m; k++) {
                taken += s->in_lru[shared[k]];
            }
        }
        if (need - m > s->n_free + s->n_lru - taken) {
            xc_free(shared);
            return;
        }
        best->blocks = xc_malloc((size_t)need * sizeof(int32_t));
        if (!best->blocks) {
            xc_free(shared);
            return;
        }
        count_seq(s, best, -1);
        take_blocks(s, best, shared, m, need);
        xc_free(shared);
        best->n_blocks = need;
        best->admitted = true;
        count_seq(s, best, 1);
    }
}

/* Whether q's shared blocks are written (on every stage, by micro-batches formed before). */
static bool shared_ready(const xc_sched *s, const sseq *q) {
    return q->n_cached == 0 || s->ready[q->blocks[q->n_cached - 1]];
}

/* After micro-batch mb was formed: the blocks its rows completed become shareable. */
static void blocks_written(xc_sched *s, const xc_sched_item *it, uint64_t mb) {
    int bs = bs_of(s), end = it->first_pos + it->n_tokens;
    if (it->first_pos / bs == end / bs) {
        return; /* its rows complete no block (most decode rows): no lookup */
    }
    sseq *q = find(s, it->id);
    if (!q || !q->keys) {
        return;
    }
    for (int k = it->first_pos / bs; k < end / bs && k < q->n_blocks; k++) {
        int32_t b = q->blocks[k];
        if (k < q->n_prompt / bs) { /* a prompt block entered at admission */
            if (s->hashed[b] && !s->ready[b] && s->owner[b] == q->id) {
                s->ready[b] = 1;
                s->fill_mb[b] = mb;
            }
            continue;
        }
        /* a block completed by decode rows (or holding the prompt's tail): enter it now */
        if (!q->chain_ok) {
            return;
        }
        int32_t parent = k > 0 ? q->blocks[k - 1] : NOBLK;
        if (k > 0 && !s->hashed[parent]) {
            q->chain_ok = false;
            return;
        }
        uint64_t h = chain_hash(k > 0 ? q->chain[k - 1] : 0, q->keys + (size_t)k * bs, bs);
        if (lookup(s, h, q->keys + (size_t)k * bs, parent) != NOBLK) {
            q->chain_ok = false;
            return;
        }
        q->chain[k] = h;
        enter(s, b, h, q->keys + (size_t)k * bs, parent, q->id, true);
        s->fill_mb[b] = mb;
        s->reg_mb[b] = mb;
    }
}

/* Gives block b back (a user let go of it): cached if it is a written full block, else free. */
static void unref_block(xc_sched *s, int32_t b) {
    if (--s->ref[b] > 0) {
        return;
    }
    if (s->hashed[b] && s->ready[b]) {
        lru_push(s, b);
    } else {
        leave(s, b);
        s->free_blocks[s->n_free++] = b;
    }
}

/* issue 13.3: the last prompt chunk of t (item it) is being formed in micro-batch mb: the
 * sequences waiting to be forked from it are admitted now, sharing its full blocks, with a copy of
 * its partial last block (sent with the next micro-batch, which every stage runs after this one)
 * and blocks of their own for what they generate; their first token is drawn from t's last row.
 * One that does not fit (in the free blocks, or past max forks: a fork counts as a row of the
 * micro-batch's budget, so that sequences and forks stay within max_rows) is admitted as usual
 * later. Returns the forks made. */
static int fork_twins(xc_sched *s, const sseq *t, xc_sched_item *it, uint64_t mb, int max) {
    int bs = bs_of(s), full = t->n_prompt / bs;
    bool partial = t->n_prompt % bs != 0;
    it->fork0 = s->n_forks;
    if (s->n_fork_wait == 0) {
        return 0;
    }
    int waiting = 0; /* the others still waiting to be forked */
    for (int i = 0; i < s->n_seqs; i++) {
        sseq *q = &s->seqs[i];
        if (!q->has_fork || q->admitted) {
            continue;
        }
        if (q->fork_of != t->id || !q->ready) {
            waiting++;
            continue;
        }
        int need = blocks_for(s, q->n_prompt + q->max_new);
        q->has_fork = false; /* from here on: forked, or admitted as usual */
        if (it->n_forks >= max || need - full > s->n_free + s->n_lru) {
            continue;
        }
        q->blocks = xc_malloc((size_t)need * sizeof(int32_t));
        if (!q->blocks) {
            continue;
        }
        for (int k = 0; k < full; k++) {
            q->blocks[k] = t->blocks[k];
            s->ref[t->blocks[k]]++; /* t holds them: none is in the LRU list */
        }
        for (int k = full; k < need; k++) {
            q->blocks[k] = take_block(s);
            XC_ASSERT(q->blocks[k] != NOBLK);
            s->ref[q->blocks[k]] = 1;
        }
        if (partial) {
            XC_ASSERT(s->n_cows < s->cap_seqs);
            s->cows[s->n_cows++] =
                (cow){.src = t->blocks[full], .dst = q->blocks[full], .id = q->id, .mb = mb};
        }
        q->has_fork = true; /* kept with fork_mb, so that an abort can undo the fork */
        q->n_blocks = need;
        count_seq(s, q, -1);
        q->admitted = true;
        q->n_cached = full;
        q->prefilled = q->n_prompt;
        q->started = true;
        q->waiting = true;
        count_seq(s, q, 1);
        q->stamp = mb;
        q->fork_mb = mb;
        XC_ASSERT(s->n_forks < s->cap_seqs);
        s->forks[s->n_forks++] = (xc_sched_fork){.parent = t->id, .id = q->id};
        it->n_forks++;
    }
    s->n_fork_wait = waiting;
    return it->n_forks;
}

/* Undoes the fork of q in micro-batch mb (aborted): it waits to be forked again. */
static void unfork(xc_sched *s, sseq *q) {
    for (int k = q->n_blocks - 1; k >= 0; k--) {
        unref_block(s, q->blocks[k]);
    }
    xc_free(q->blocks);
    q->blocks = NULL;
    q->n_blocks = 0;
    count_seq(s, q, -1);
    q->admitted = q->started = q->waiting = false;
    q->n_cached = q->prefilled = 0;
    count_seq(s, q, 1);
    q->fork_mb = 0;
    q->stamp = 0;
    s->n_fork_wait++;
}

/* Drops the pending copies into sequence id's blocks (it ended, or its fork was undone). */
static void drop_cows(xc_sched *s, uint64_t id) {
    int k = 0;
    for (int i = 0; i < s->n_cows; i++) {
        if (s->cows[i].id != id) {
            s->cows[k++] = s->cows[i];
        }
    }
    s->n_cows = k;
}

bool xc_sched_next(xc_sched *s, xc_sched_batch *out) {
    if (s->n_inflight >= s->conf.max_inflight) {
        return false;
    }
    admit(s);
    uint64_t mb = s->next_mb;
    /* decode rows: spread the decoding sequences over P micro-batches */
    int n_decoding = s->n_decoding;
    int decode_cap = (n_decoding + s->conf.n_stages - 1) / s->conf.n_stages;
    /* Decode rows form P groups that cycle through the pipeline. With P micro-batches already in
     * flight, a smaller decode-only batch would only split a group and pay each layer's fixed
     * cost twice: wait for the group unless prefill work can fill the batch. */
    if (s->n_inflight >= s->conf.n_stages) {
        int ready = s->n_dec_ready;
        bool prefill = false;
        for (int i = 0; i < s->n_seqs && s->n_prefilling > 0 && !prefill; i++) {
            const sseq *q = &s->seqs[i];
            prefill = q->admitted && q->ready && q->prefilled < q->n_prompt && shared_ready(s, q);
        }
        if (!prefill && ready < decode_cap) {
            return false;
        }
    }
    int budget = s->conf.max_rows, n = 0, rows = 0, n_dec = 0;
    s->n_forks = 0;
    /* oldest first, so that every stream advances */
    for (int i = 0; i < s->n_seqs && n_dec < decode_cap && s->n_dec_ready > 0 && rows < budget;
         i++) {
        sseq *q = &s->seqs[i];
        if (q->admitted && q->prefilled == q->n_prompt && q->n_gen > 0 && !q->waiting) {
            int pos = q->n_prompt + q->n_gen - 1;
            s->items[n++] = (xc_sched_item){.id = q->id,
                                            .first_pos = pos,
                                            .n_tokens = 1,
                                            .samples = true,
                                            .token = q->last,
                                            .blocks = q->blocks,
                                            .n_blocks = q->n_blocks};
            if (q->keys && pos < q->n_blocks * bs_of(s)) {
                q->keys[pos] = (uint64_t)(uint32_t)q->last;
            }
            count_seq(s, q, -1);
            q->waiting = true;
            count_seq(s, q, 1);
            q->stamp = mb;
            rows++;
            n_dec++;
        }
    }
    /* prefill chunks in arrival order */
    while (s->n_prefilling > 0) {
        sseq *best = NULL;
        for (int i = 0; i < s->n_seqs; i++) {
            sseq *q = &s->seqs[i];
            if (q->admitted && q->ready && q->prefilled < q->n_prompt && q->stamp != mb &&
                (!best || q->order < best->order) && shared_ready(s, q)) {
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
                                        .first_chunk = !best->started,
                                        .samples = last,
                                        .blocks = best->blocks,
                                        .n_blocks = best->n_blocks};
        best->started = true;
        best->stamp = mb;
        count_seq(s, best, -1);
        best->prefilled += c;
        best->waiting = best->waiting || last;
        count_seq(s, best, 1);
        rows += c;
        if (last && best->keys) {
            budget -= fork_twins(s, best, &s->items[n - 1], mb, budget - rows);
        }
    }
    if (n == 0 && s->n_release == 0) {
        return false;
    }
    /* the copies of forks formed in earlier micro-batches go out with this one; this one's wait
     * for the next (their source is written by this one) */
    s->n_copies = 0;
    int keep = 0;
    for (int i = 0; i < s->n_cows; i++) {
        if (s->cows[i].mb != mb) {
            s->cows_out[s->n_copies] = s->cows[i];
            s->copies[s->n_copies++] = (xc_sched_copy){s->cows[i].src, s->cows[i].dst};
        } else {
            s->cows[keep++] = s->cows[i];
        }
    }
    s->n_cows = keep;
    if (s->conf.prefix_cache) {
        for (int i = 0; i < n; i++) {
            blocks_written(s, &s->items[i], mb);
        }
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
                            .release = s->release_out,
                            .n_forks = s->n_forks,
                            .forks = s->forks,
                            .n_copies = s->n_copies,
                            .copies = s->copies};
    return true;
}

void xc_sched_abort(xc_sched *s, const xc_sched_batch *b) {
    xc_sched_batch_done(s, b->id);
    int bs = bs_of(s);
    /* its forks wait to be forked again; the copies it carried are pending again (before any
     * new one: they are older) */
    for (int i = 0; i < b->n_forks; i++) {
        sseq *q = find(s, b->forks[i].id);
        if (q && q->fork_mb == b->id) {
            drop_cows(s, q->id);
            unfork(s, q);
        }
    }
    if (b->n_copies > 0 && b->copies == s->copies) {
        XC_ASSERT(s->n_cows + b->n_copies <= s->cap_seqs);
        memmove(s->cows + b->n_copies, s->cows, (size_t)s->n_cows * sizeof(cow));
        memcpy(s->cows, s->cows_out, (size_t)b->n_copies * sizeof(cow));
        s->n_cows += b->n_copies;
        s->n_copies = 0;
    }
    for (int i = 0; i < b->n_items; i++) {
        const xc_sched_item *it = &b->items[i];
        sseq *q = find(s, it->id);
        if (!q) {
            continue;
        }
        if (s->conf.prefix_cache && q->admitted) { /* what its rows completed is not written */
            int end = it->first_pos + it->n_tokens;
            for (int k = it->first_pos / bs; k < end / bs && k < q->n_blocks; k++) {
                int32_t blk = q->blocks[k];
                if (s->hashed[blk] && s->fill_mb[blk] == b->id) {
                    if (s->reg_mb[blk] == b->id) {
                        leave(s, blk);
                    } else {
                        s->ready[blk] = 0;
                        s->fill_mb[blk] = 0;
                    }
                }
            }
        }
        count_seq(s, q, -1);
        if (it->first_pos >= q->n_prompt) { /* a decode row */
            q->waiting = false;
        } else if (q->prefilled == it->first_pos + it->n_tokens) { /* a prefill chunk */
            q->prefilled = it->first_pos;
            q->waiting = q->waiting && !it->samples;
            q->started = q->started && !it->first_chunk;
        }
        count_seq(s, q, 1);
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
    count_seq(s, q, -1);
    q->waiting = false;
    q->last = token;
    q->n_gen++;
    count_seq(s, q, 1);
    return XC_OK;
}

/* q (which entered block b and has not written it) ends while others share b: the oldest of them
 * computes b and what follows it from then on; the rest keep waiting for it. */
static void hand_over(xc_sched *s, const sseq *q, int32_t b) {
    sseq *heir = NULL;
    int at = 0;
    for (int i = 0; i < s->n_seqs; i++) {
        sseq *r = &s->seqs[i];
        if (r == q || !r->admitted || (heir && r->order >= heir->order)) {
            continue;
        }
        for (int k = 0; k < r->n_cached; k++) {
            if (r->blocks[k] == b) {
                heir = r;
                at = k;
                break;
            }
        }
    }
    if (!heir) {
        return;
    }
    /* it waited for b, so it has sent nothing yet */
    XC_ASSERT(!heir->started);
    for (int k = at; k < heir->n_cached; k++) {
        int32_t c = heir->blocks[k];
        if (s->hashed[c] && !s->ready[c]) {
            s->owner[c] = heir->id;
        }
    }
    heir->n_cached = at;
    count_seq(s, heir, -1);
    heir->prefilled = at * bs_of(s);
    count_seq(s, heir, 1);
    if (heir->data_rows > heir->prefilled) {
        /* it now computes rows whose data it never fetched: it waits for them */
        heir->ready = false;
        heir->data_rows = 0;
        XC_ASSERT(s->n_uncovered < s->cap_release); /* reserved by xc_sched_add */
        s->uncovered[s->n_uncovered++] = heir->id;
    }
}

void xc_sched_finish(xc_sched *s, uint64_t id) {
    int ix = find_ix(s, id);
    if (ix < 0) {
        return;
    }
    sseq *q = &s->seqs[ix];
    count_seq(s, q, -1);
    if (q->fork_mb) {
        drop_cows(s, id); /* its private last block is free again: nothing to copy into it */
    }
    if (q->admitted) {
        /* the tail first: the cache evicts a sequence's last blocks before its first ones */
        for (int k = q->n_blocks - 1; k >= 0; k--) {
            int32_t b = q->blocks[k];
            if (!s->conf.prefix_cache) {
                s->free_blocks[s->n_free++] = b;
                continue;
            }
            if (--s->ref[b] > 0) {
                if (s->hashed[b] && !s->ready[b] && s->owner[b] == q->id) {
                    hand_over(s, q, b);
                }
                continue;
            }
            if (s->hashed[b] && s->ready[b]) {
                lru_push(s, b);
            } else {
                leave(s, b);
                s->free_blocks[s->n_free++] = b;
            }
        }
        XC_ASSERT(s->n_release < s->cap_release); /* reserved by xc_sched_add */
        s->release[s->n_release++] = id;
    }
    seq_free(q);
    map_del(s, id);
    int last = s->n_seqs - 1;
    if (ix != last) {
        s->seqs[ix] = s->seqs[last];
        map_put(s, s->seqs[ix].id, ix);
    }
    s->n_seqs--;
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
        map_del(s, s->seqs[i].id);
        seq_free(&s->seqs[i]);
    }
    s->n_seqs = 0;
    s->n_inflight = 0;
    s->n_unadmitted = s->n_prefilling = s->n_decoding = s->n_dec_ready = 0;
    s->n_cows = s->n_copies = s->n_fork_wait = 0;
    for (int i = 0; i < s->conf.n_blocks; i++) {
        s->free_blocks[i] = s->conf.n_blocks - 1 - i;
    }
    s->n_free = s->conf.n_blocks;
    /* the re-formed stages may be new processes: nothing cached is trusted */
    reset_cache(s);
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

bool xc_sched_counts_ok(const xc_sched *s) {
    xc_sched t = {.n_unadmitted = 0};
    for (int i = 0; i < s->n_seqs; i++) {
        count_seq(&t, &s->seqs[i], 1);
    }
    return t.n_unadmitted == s->n_unadmitted && t.n_prefilling == s->n_prefilling &&
           t.n_decoding == s->n_decoding && t.n_dec_ready == s->n_dec_ready;
}

int xc_sched_n_live(const xc_sched *s) {
    return s->n_seqs;
}

int xc_sched_n_inflight(const xc_sched *s) {
    return s->n_inflight;
}

int xc_sched_n_free_blocks(const xc_sched *s) {
    return s->n_free + s->n_lru;
}
