/* Paged KV block manager with hash-based prefix caching. See
 * block_manager.h for the policy.
 *
 * Every block is in exactly one of three places:
 *   used       ref > 0 (may also be cached);
 *   plain free ref == 0, not cached: a bit in free_bits;
 *   evictable  ref == 0, cached: on the LRU list (head evicted first). */
#define DUET_LOG_COMPONENT "bm"

#include "engine/block_manager.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define BM_NONE        (-1)
#define BM_HASH_ROOT   0x6a09e667f3bcc909ull

typedef struct {
    int32_t  ref;
    bool     cached;
    int32_t  lru_prev, lru_next;   /* when evictable */
    int32_t  hash_next;            /* bucket chain, when cached */
    uint64_t hash, parent;         /* when cached */
} bm_block_t;

struct bm {
    bm_opts_t   opts;
    bm_block_t *blk;               /* (n_blocks) */
    int32_t    *toks;              /* (n_blocks, block_size) ids of cached blocks */
    uint64_t   *free_bits;         /* (n_words) plain free blocks */
    int32_t     n_words;
    int32_t     n_plain;           /* plain free blocks */
    int32_t     n_evictable;
    int32_t     n_cached;
    int32_t     lru_head, lru_tail;
    int32_t    *buckets;           /* (n_buckets) */
    uint32_t    n_buckets;         /* power of two */
    uint64_t    queries, hits, evictions;
};

/* --- hashing --------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t block_hash(uint64_t parent, const int32_t *tokens, int32_t n)
{
    uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ull);
    int32_t i;

    for (i = 0; i < n; i++)
        h = mix64(h ^ ((uint64_t)(uint32_t)tokens[i] + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)));
    return h;
}

/* Cached block with this hash, parent and tokens, or BM_NONE. */
static int32_t cache_find(const bm_t *bm, uint64_t hash, uint64_t parent,
                          const int32_t *tokens)
{
    int32_t bs = bm->opts.block_size;
    int32_t id = bm->buckets[hash & (bm->n_buckets - 1)];

    for (; id != BM_NONE; id = bm->blk[id].hash_next) {
        const bm_block_t *b = &bm->blk[id];
        if (b->hash == hash && b->parent == parent &&
            memcmp(&bm->toks[(size_t)id * (size_t)bs], tokens, sizeof(int32_t) * (size_t)bs) == 0)
            return id;
    }
    return BM_NONE;
}

static void cache_insert(bm_t *bm, int32_t id, uint64_t hash, uint64_t parent,
                         const int32_t *tokens)
{
    int32_t bs = bm->opts.block_size;
    int32_t *head = &bm->buckets[hash & (bm->n_buckets - 1)];
    bm_block_t *b = &bm->blk[id];

    b->cached = true;
    b->hash = hash;
    b->parent = parent;
    memcpy(&bm->toks[(size_t)id * (size_t)bs], tokens, sizeof(int32_t) * (size_t)bs);
    b->hash_next = *head;
    *head = id;
    bm->n_cached++;
}

static void cache_remove(bm_t *bm, int32_t id)
{
    bm_block_t *b = &bm->blk[id];
    int32_t *link = &bm->buckets[b->hash & (bm->n_buckets - 1)];

    while (*link != id) {
        assert(*link != BM_NONE);   /* a cached block is in its bucket */
        link = &bm->blk[*link].hash_next;
    }
    *link = b->hash_next;
    b->hash_next = BM_NONE;
    b->cached = false;
    bm->n_cached--;
}

/* --- free structures ------------------------------------------------------- */

static inline bool bit_get(const bm_t *bm, int32_t id)
{
    return (bm->free_bits[id >> 6] >> (id & 63)) & 1u;
}

static inline void bit_set(bm_t *bm, int32_t id)
{
    bm->free_bits[id >> 6] |= 1ull << (id & 63);
}

static inline void bit_clear(bm_t *bm, int32_t id)
{
    bm->free_bits[id >> 6] &= ~(1ull << (id & 63));
}

static void lru_remove(bm_t *bm, int32_t id)
{
    bm_block_t *b = &bm->blk[id];

    if (b->lru_prev != BM_NONE)
        bm->blk[b->lru_prev].lru_next = b->lru_next;
    else
        bm->lru_head = b->lru_next;
    if (b->lru_next != BM_NONE)
        bm->blk[b->lru_next].lru_prev = b->lru_prev;
    else
        bm->lru_tail = b->lru_prev;
    b->lru_prev = b->lru_next = BM_NONE;
    bm->n_evictable--;
}

static void lru_append(bm_t *bm, int32_t id)
{
    bm_block_t *b = &bm->blk[id];

    b->lru_prev = bm->lru_tail;
    b->lru_next = BM_NONE;
    if (bm->lru_tail != BM_NONE)
        bm->blk[bm->lru_tail].lru_next = id;
    else
        bm->lru_head = id;
    bm->lru_tail = id;
    bm->n_evictable++;
}

/* First plain free run of at least len blocks, or BM_NONE. */
static int32_t find_run(const bm_t *bm, int32_t len)
{
    int32_t run_start = BM_NONE, run_len = 0, w, b;

    for (w = 0; w < bm->n_words; w++) {
        uint64_t word = bm->free_bits[w];
        if (word == 0) {
            run_len = 0;
            continue;
        }
        for (b = 0; b < 64; b++) {
            int32_t id = w * 64 + b;
            if (id >= bm->opts.n_blocks)
                break;
            if ((word >> b) & 1u) {
                if (run_len++ == 0)
                    run_start = id;
                if (run_len >= len)
                    return run_start;
            } else {
                run_len = 0;
            }
        }
    }
    return BM_NONE;
}

static int32_t first_free(const bm_t *bm)
{
    int32_t w;

    for (w = 0; w < bm->n_words; w++) {
        if (bm->free_bits[w] != 0)
            return w * 64 + __builtin_ctzll(bm->free_bits[w]);
    }
    return BM_NONE;
}

/* Take one block with ref 1: id if it is plain free, else any plain free
 * block, else the least recently used evictable one. */
static int32_t take_block(bm_t *bm, int32_t id)
{
    if (bm->n_plain > 0) {
        if (id < 0 || id >= bm->opts.n_blocks || !bit_get(bm, id))
            id = first_free(bm);
        bit_clear(bm, id);
        bm->n_plain--;
    } else {
        id = bm->lru_head;
        lru_remove(bm, id);
        cache_remove(bm, id);
        bm->evictions++;
    }
    bm->blk[id].ref = 1;
    return id;
}

static void release_block(bm_t *bm, int32_t id)
{
    bm_block_t *b = &bm->blk[id];

    if (--b->ref > 0)
        return;
    if (b->cached) {
        lru_append(bm, id);
    } else {
        bit_set(bm, id);
        bm->n_plain++;
    }
}

/* --- public ---------------------------------------------------------------- */

duet_status_t bm_create(const bm_opts_t *opts, bm_t **bm_p)
{
    bm_t *bm;
    int32_t i;

    if (opts->n_blocks <= 0 || opts->block_size <= 0 || opts->watermark_blocks < 0 ||
        opts->watermark_blocks >= opts->n_blocks) {
        log_error("bad block manager options: %d blocks of %d tokens, watermark %d",
                  opts->n_blocks, opts->block_size, opts->watermark_blocks);
        return DUET_ERR_INVALID;
    }
    bm = calloc(1, sizeof(*bm));
    if (bm == NULL)
        return DUET_ERR_NOMEM;
    bm->opts = *opts;
    bm->n_words = (opts->n_blocks + 63) / 64;
    bm->n_buckets = 16;
    while (bm->n_buckets < (uint32_t)opts->n_blocks)
        bm->n_buckets *= 2;
    bm->blk = calloc((size_t)opts->n_blocks, sizeof(*bm->blk));
    bm->free_bits = calloc((size_t)bm->n_words, sizeof(*bm->free_bits));
    bm->buckets = malloc(sizeof(*bm->buckets) * bm->n_buckets);
    if (opts->prefix_caching)
        bm->toks = malloc(sizeof(*bm->toks) * (size_t)opts->n_blocks * (size_t)opts->block_size);
    if (bm->blk == NULL || bm->free_bits == NULL || bm->buckets == NULL ||
        (opts->prefix_caching && bm->toks == NULL)) {
        bm_destroy(bm);
        return DUET_ERR_NOMEM;
    }
    for (i = 0; i < (int32_t)bm->n_buckets; i++)
        bm->buckets[i] = BM_NONE;
    for (i = 0; i < opts->n_blocks; i++) {
        bm->blk[i].lru_prev = bm->blk[i].lru_next = bm->blk[i].hash_next = BM_NONE;
        bit_set(bm, i);
    }
    bm->n_plain = opts->n_blocks;
    bm->lru_head = bm->lru_tail = BM_NONE;
    *bm_p = bm;
    return DUET_OK;
}

void bm_destroy(bm_t *bm)
{
    if (bm == NULL)
        return;
    free(bm->toks);
    free(bm->buckets);
    free(bm->free_bits);
    free(bm->blk);
    free(bm);
}

int32_t bm_block_size(const bm_t *bm)
{
    return bm->opts.block_size;
}

int32_t bm_n_free(const bm_t *bm)
{
    return bm->n_plain + bm->n_evictable;
}

void bm_stats(const bm_t *bm, bm_stats_t *st)
{
    st->n_blocks = bm->opts.n_blocks;
    st->free = bm_n_free(bm);
    st->used = bm->opts.n_blocks - st->free;
    st->cached = bm->n_cached;
    st->evictable = bm->n_evictable;
    st->queries = bm->queries;
    st->hits = bm->hits;
    st->evictions = bm->evictions;
}

void bm_seq_init(bm_seq_t *seq)
{
    memset(seq, 0, sizeof(*seq));
    seq->last_hash = BM_HASH_ROOT;
}

int32_t bm_blocks_needed(const bm_t *bm, const bm_seq_t *seq, int32_t n_tokens)
{
    int32_t bs = bm->opts.block_size;
    int32_t want = (n_tokens + bs - 1) / bs;

    return want > seq->n ? want - seq->n : 0;
}

bool bm_can_allocate(const bm_t *bm, int32_t n_blocks, bool keep_watermark)
{
    int32_t reserve = keep_watermark ? bm->opts.watermark_blocks : 0;

    return bm_n_free(bm) - n_blocks >= reserve;
}

static duet_status_t seq_reserve(bm_seq_t *seq, int32_t n)
{
    int32_t cap = seq->cap ? seq->cap : 8;
    int32_t *blocks;

    if (n <= seq->cap)
        return DUET_OK;
    while (cap < n)
        cap *= 2;
    blocks = realloc(seq->blocks, sizeof(*blocks) * (size_t)cap);
    if (blocks == NULL)
        return DUET_ERR_NOMEM;
    seq->blocks = blocks;
    seq->cap = cap;
    return DUET_OK;
}

duet_status_t bm_match_prefix(bm_t *bm, bm_seq_t *seq, const int32_t *tokens,
                              int32_t n_tokens, int32_t *n_cached_p)
{
    int32_t bs = bm->opts.block_size, max_blocks, i, id;
    uint64_t parent = BM_HASH_ROOT;

    if (seq->n != 0)
        return DUET_ERR_INVALID;
    bm_seq_init(seq);
    if (!bm->opts.prefix_caching || n_tokens <= 1) {
        *n_cached_p = 0;
        return DUET_OK;
    }
    max_blocks = (n_tokens - 1) / bs;
    CHECK(seq_reserve(seq, max_blocks));
    for (i = 0; i < max_blocks; i++) {
        const int32_t *t = tokens + (size_t)i * (size_t)bs;
        uint64_t h = block_hash(parent, t, bs);

        id = cache_find(bm, h, parent, t);
        if (id == BM_NONE)
            break;
        if (bm->blk[id].ref++ == 0)
            lru_remove(bm, id);
        seq->blocks[seq->n++] = id;
        parent = h;
    }
    seq->n_hashed = seq->n;
    seq->last_hash = parent;
    *n_cached_p = seq->n * bs;
    return DUET_OK;
}

void bm_note_query(bm_t *bm, int32_t n_query, int32_t n_hit)
{
    bm->queries += (uint64_t)n_query;
    bm->hits += (uint64_t)n_hit;
}

duet_status_t bm_allocate(bm_t *bm, bm_seq_t *seq, int32_t n_tokens, bool keep_watermark)
{
    int32_t need = bm_blocks_needed(bm, seq, n_tokens), hint, run;

    if (need == 0)
        return DUET_OK;
    if (!bm_can_allocate(bm, need, keep_watermark))
        return DUET_ERR_NO_RESOURCE;
    CHECK(seq_reserve(seq, seq->n + need));

    /* Extend the sequence's last run, then the first run that fits the
     * rest, then whatever is free. */
    hint = seq->n > 0 ? seq->blocks[seq->n - 1] + 1 : BM_NONE;
    while (need > 0 && hint >= 0 && hint < bm->opts.n_blocks && bit_get(bm, hint)) {
        seq->blocks[seq->n++] = take_block(bm, hint++);
        need--;
    }
    if (need > 1 && bm->n_plain >= need) {
        run = find_run(bm, need);
        while (run != BM_NONE && need > 0) {
            seq->blocks[seq->n++] = take_block(bm, run++);
            need--;
        }
    }
    while (need > 0) {
        seq->blocks[seq->n] = take_block(bm, seq->n > 0 ? seq->blocks[seq->n - 1] + 1 : BM_NONE);
        seq->n++;
        need--;
    }
    return DUET_OK;
}

void bm_commit(bm_t *bm, bm_seq_t *seq, const int32_t *tokens, int32_t n_computed)
{
    int32_t bs = bm->opts.block_size, n_full = n_computed / bs;

    if (!bm->opts.prefix_caching)
        return;
    if (n_full > seq->n)
        n_full = seq->n;
    while (seq->n_hashed < n_full) {
        int32_t i = seq->n_hashed, id = seq->blocks[i];
        const int32_t *t = tokens + (size_t)i * (size_t)bs;
        uint64_t h = block_hash(seq->last_hash, t, bs);

        /* A block already cached with the same contents (computed by
         * another request meanwhile) stays the cached copy; this one stays
         * private and returns to the plain free pool when released. */
        if (!bm->blk[id].cached && cache_find(bm, h, seq->last_hash, t) == BM_NONE)
            cache_insert(bm, id, h, seq->last_hash, t);
        seq->last_hash = h;
        seq->n_hashed++;
    }
}

void bm_free_seq(bm_t *bm, bm_seq_t *seq)
{
    int32_t i;

    for (i = seq->n - 1; i >= 0; i--)
        release_block(bm, seq->blocks[i]);
    free(seq->blocks);
    bm_seq_init(seq);
}

#define CHECK_ERR(...)                                     \
    do {                                                   \
        if (err != NULL && errlen > 0)                     \
            snprintf(err, errlen, __VA_ARGS__);            \
        status = DUET_ERR_CORRUPT;                         \
        goto out;                                          \
    } while (0)

duet_status_t bm_check(const bm_t *bm, const bm_seq_t *const *seqs, int n_seqs,
                       char *err, size_t errlen)
{
    int32_t n = bm->opts.n_blocks, i, id, n_plain = 0, n_lru = 0, n_cached = 0, prev;
    int32_t *refs = calloc((size_t)n, sizeof(*refs));
    duet_status_t status = DUET_OK;
    uint32_t b;

    if (refs == NULL)
        return DUET_ERR_NOMEM;
    for (i = 0; i < n_seqs; i++) {
        int32_t j;
        if (seqs[i]->n_hashed > seqs[i]->n)
            CHECK_ERR("sequence %d: %d hashed blocks of %d", i, seqs[i]->n_hashed, seqs[i]->n);
        for (j = 0; j < seqs[i]->n; j++) {
            id = seqs[i]->blocks[j];
            if (id < 0 || id >= n)
                CHECK_ERR("sequence %d holds block id %d", i, id);
            refs[id]++;
        }
    }
    for (id = 0; id < n; id++) {
        const bm_block_t *blk = &bm->blk[id];
        if (blk->ref != refs[id])
            CHECK_ERR("block %d: ref %d, tables hold %d", id, blk->ref, refs[id]);
        if (bit_get(bm, id)) {
            n_plain++;
            if (blk->ref != 0 || blk->cached)
                CHECK_ERR("block %d is plain free with ref %d cached %d", id, blk->ref,
                          blk->cached);
        }
        if (blk->cached)
            n_cached++;
        if (blk->ref == 0 && !blk->cached && !bit_get(bm, id))
            CHECK_ERR("block %d is lost: no reference, not free, not cached", id);
    }
    prev = BM_NONE;
    for (id = bm->lru_head; id != BM_NONE; id = bm->blk[id].lru_next) {
        if (++n_lru > n)
            CHECK_ERR("LRU list has a cycle");
        if (bm->blk[id].ref != 0 || !bm->blk[id].cached)
            CHECK_ERR("block %d on the LRU list with ref %d cached %d", id,
                      bm->blk[id].ref, bm->blk[id].cached);
        if (bm->blk[id].lru_prev != prev)
            CHECK_ERR("LRU list back link broken at block %d", id);
        prev = id;
    }
    if (prev != bm->lru_tail)
        CHECK_ERR("LRU tail is %d, list ends at %d", bm->lru_tail, prev);
    for (id = 0; id < n; id++) {
        if (bm->blk[id].ref == 0 && bm->blk[id].cached && bm->blk[id].lru_prev == BM_NONE &&
            bm->lru_head != id)
            CHECK_ERR("evictable block %d is not on the LRU list", id);
    }
    if (n_plain != bm->n_plain || n_lru != bm->n_evictable || n_cached != bm->n_cached)
        CHECK_ERR("counters: plain %d/%d evictable %d/%d cached %d/%d", n_plain, bm->n_plain,
                  n_lru, bm->n_evictable, n_cached, bm->n_cached);
    for (b = 0; b < bm->n_buckets; b++) {
        for (id = bm->buckets[b]; id != BM_NONE; id = bm->blk[id].hash_next) {
            if (!bm->blk[id].cached || (bm->blk[id].hash & (bm->n_buckets - 1)) != b)
                CHECK_ERR("hash bucket %u holds block %d wrongly", b, id);
            if (--n_cached < 0)
                CHECK_ERR("hash table has more entries than cached blocks");
        }
    }
    if (n_cached != 0)
        CHECK_ERR("%d cached blocks are missing from the hash table", n_cached);

out:
    free(refs);
    return status;
}
