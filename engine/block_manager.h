/* Paged KV block manager: a pool of fixed-size blocks (default 16 tokens),
 * reference counts, per-sequence block tables, a watermark kept free for
 * running requests, and hash-based prefix caching.
 *
 * Prefix caching: a full block's hash chains its parent's hash with its
 * token ids, so equal hashes mean equal prefixes. When a sequence's KV for a
 * full block has been computed (bm_commit) the block is registered under its
 * hash; a new sequence whose prompt starts with the same tokens takes a
 * reference on the cached blocks instead of recomputing them
 * (bm_match_prefix). Only full blocks are shared. A block whose last
 * reference goes away stays cached and evictable; blocks that were never
 * cached are handed out first, and evictable cached blocks are reused in LRU
 * order only when no plain free block is left. The stored token ids are
 * compared on every hit, so a hash collision is a miss, never wrong KV.
 *
 * Contiguity: a sequence that grows gets the block after its last one when
 * that is free, otherwise the first run of free blocks long enough for the
 * whole request (the KV connector moves a run of adjacent blocks as one
 * transfer).
 *
 * Not thread-safe: one engine thread owns it. */
#ifndef DUET_ENGINE_BLOCK_MANAGER_H
#define DUET_ENGINE_BLOCK_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct {
    int32_t n_blocks;           /* blocks in the pool (> 0) */
    int32_t block_size;         /* tokens per block (> 0), default 16 */
    int32_t watermark_blocks;   /* kept free when admitting new requests */
    bool    prefix_caching;
} bm_opts_t;

/* A sequence's block table. Embedded in the caller's request; initialise
 * with bm_seq_init, release with bm_free_seq. */
typedef struct {
    int32_t  *blocks;           /* (n) block ids, position p in blocks[p / bs] */
    int32_t   n, cap;
    int32_t   n_hashed;         /* leading full blocks whose hash is known */
    uint64_t  last_hash;        /* hash of block n_hashed - 1 */
} bm_seq_t;

typedef struct {
    int32_t  n_blocks;
    int32_t  free;              /* allocatable: plain free + evictable */
    int32_t  used;              /* referenced by at least one sequence */
    int32_t  cached;            /* registered in the prefix cache */
    int32_t  evictable;         /* cached with no reference */
    uint64_t queries;           /* prompt tokens looked up in the cache */
    uint64_t hits;              /* of those, found cached */
    uint64_t evictions;
} bm_stats_t;

typedef struct bm bm_t;

duet_status_t bm_create(const bm_opts_t *opts, bm_t **bm_p);
/* Frees the pool. Sequences still holding blocks must not be used after. */
void bm_destroy(bm_t *bm);

int32_t bm_block_size(const bm_t *bm);
int32_t bm_n_free(const bm_t *bm);
void bm_stats(const bm_t *bm, bm_stats_t *st);

void bm_seq_init(bm_seq_t *seq);

/* Blocks seq lacks to cover n_tokens positions. */
int32_t bm_blocks_needed(const bm_t *bm, const bm_seq_t *seq, int32_t n_tokens);

/* True when n_blocks more can be allocated (keeping the watermark free when
 * keep_watermark). */
bool bm_can_allocate(const bm_t *bm, int32_t n_blocks, bool keep_watermark);

/* For a sequence holding no blocks: take references on the cached blocks
 * that hold the longest prefix of tokens (n_tokens), at most n_tokens - 1
 * tokens (the last token is always computed, to get its logits), and put
 * them in seq's table. *n_cached_p: tokens covered (a multiple of the block
 * size; 0 when prefix caching is off). Counts nothing: the caller reports
 * an admitted request with bm_note_query. */
duet_status_t bm_match_prefix(bm_t *bm, bm_seq_t *seq, const int32_t *tokens,
                              int32_t n_tokens, int32_t *n_cached_p);

/* Add n_query prompt tokens, n_hit of them cached, to the counters. */
void bm_note_query(bm_t *bm, int32_t n_query, int32_t n_hit);

/* Grow seq's table to cover n_tokens positions. All or nothing:
 * DUET_ERR_NO_RESOURCE (nothing changed) when the pool (less the watermark,
 * when keep_watermark) has too few blocks. */
duet_status_t bm_allocate(bm_t *bm, bm_seq_t *seq, int32_t n_tokens, bool keep_watermark);

/* Register in the prefix cache every full block among the first n_computed
 * tokens (whose KV is now written). tokens holds at least n_computed ids. */
void bm_commit(bm_t *bm, bm_seq_t *seq, const int32_t *tokens, int32_t n_computed);

/* Drop seq's references (tail blocks become the first to evict) and empty
 * its table; the table's memory is freed. */
void bm_free_seq(bm_t *bm, bm_seq_t *seq);

/* Check the pool's invariants, with the reference counts implied by the
 * given live sequences (all of them). DUET_ERR_CORRUPT and a reason when one
 * fails. For tests and debug builds: O(n_blocks + total table length). */
duet_status_t bm_check(const bm_t *bm, const bm_seq_t *const *seqs, int n_seqs,
                       char *err, size_t errlen);

#endif
