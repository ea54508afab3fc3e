/* The forward pass over a batch of sequences on paged KV. One code path
 * serves prefill chunks and decode steps alike: each sequence brings n_new
 * tokens at positions n_past .. n_past + n_new - 1, and its block table
 * covers positions 0 .. n_past + n_new - 1 (block_table[p / block_size]).
 * The pass writes the new tokens' K and V into those blocks, attends
 * causally over the cached prefix plus the new tokens, and produces logits
 * for the last new token of each sequence that asks for them.
 *
 * The KV slab follows common/kv_layout.h. The forward pass never allocates
 * blocks: the caller (scheduler) owns the block tables. */
#ifndef DUET_ENGINE_FORWARD_H
#define DUET_ENGINE_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "common/kv_layout.h"
#include "common/status.h"
#include "model/config.h"
#include "model/gguf.h"
#include "parallel/group.h"
#include "parallel/shard.h"

typedef struct {
    const int32_t *tokens;        /* (n_new) */
    int32_t        n_new;
    int32_t        n_past;        /* tokens already in this sequence's KV */
    const int32_t *block_table;   /* (ceil((n_past + n_new) / block_size)) */
    int32_t        n_blocks;
    bool           want_logits;   /* logits of the last new token */
} fwd_seq_t;

/* fwd_run has written layer `layer`'s KV of every new token of the step
 * into the slab (rank 0 only). */
typedef void (*fwd_layer_cb_t)(void *arg, int32_t layer);

typedef struct {
    int      n_threads;           /* 0: all cores */
    int32_t  n_blocks;            /* KV slab size in blocks */
    int32_t  block_size;          /* tokens per block, default 16 */
    dtype_t  kv_dtype;            /* DTYPE_F16 (default) or DTYPE_F32 */
    int      tp_rank, tp_size;    /* tensor parallel shard (1 rank: 0, 1) */
    group_t *tp_group;            /* tp_size > 1: the TP group (borrowed), whose
                                     collectives every rank's fwd_run calls */
    void    *kv_slab;             /* NULL: allocate; else borrowed memory of
                                     kv_slab_bytes() (e.g. a UCX-mapped slab) */
    bool     act_q8;              /* quantized matmuls take 8-bit activations
                                     (llama.cpp's choice: about 2x faster
                                     prefill, but logits move by up to ~20%
                                     on SmolLM2); default false: two 8-bit
                                     levels, within ~0.1% of exact */
    fwd_layer_cb_t on_layer;      /* optional, called between layers */
    void          *layer_arg;
} fwd_opts_t;

typedef struct fwd fwd_t;

/* Load weights (borrowed from g, which must outlive f) and allocate the KV
 * slab and scratch. */
duet_status_t fwd_create(const gguf_t *g, const model_config_t *cfg,
                         const fwd_opts_t *opts, fwd_t **fwd_p);
void fwd_destroy(fwd_t *f);

/* Run one step. logits: (n_want, vocab) row-major, one row per sequence with
 * want_logits, in sequence order.
 *
 * Tensor parallel (tp_size > 1): every rank of the TP group calls fwd_run
 * with the same batch (the executor broadcasts it). Each rank holds its
 * shard of the weights (column-parallel q/k/v/gate/up, row-parallel o/down
 * each followed by an all-reduce, vocab-parallel embedding and output
 * head) and its KV heads in its own slab (parallel/shard.h: heads
 * [kv_head0, kv_head0 + n_kv_heads), the same assignment as the KV
 * connector's kvc_tp_heads). The logits are all-gathered; rank 0 gets the
 * whole rows, the other ranks may pass logits NULL. A collective that fails
 * (a peer died or hung) fails the call; the group is then broken. */
duet_status_t fwd_run(fwd_t *f, const fwd_seq_t *seqs, int n_seqs, float *logits);

/* The shard of rank tp_rank of tp_size (parallel/shard.h) for this model,
 * the check that fwd_create makes: DUET_ERR_INVALID with a one-line reason
 * in err when the shape cannot be split. */
duet_status_t fwd_tp_plan(const gguf_t *g, const model_config_t *cfg, int tp_rank, int tp_size,
                          tp_shard_t *shard_p, char *err, size_t errlen);

const kv_layout_t *fwd_kv_layout(const fwd_t *f);
void *fwd_kv_slab(fwd_t *f);

#endif
