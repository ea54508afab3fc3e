/* Tensor-parallel partition of a llama-family model (after vLLM's
 * ColumnParallelLinear, RowParallelLinear and VocabParallelEmbedding): which
 * heads, FFN rows and vocabulary rows one TP rank holds, checked at start-up
 * so that a shape that cannot be split is a clear error, never a wrong
 * answer.
 *
 *   q, k, v, gate, up   column-parallel: a rank holds whole output rows
 *                       (its heads; its FFN rows)
 *   o, down             row-parallel: a rank holds the matching input
 *                       columns; its partial output is all-reduced
 *   token_embd, output  vocab-parallel: a rank holds vocab rows
 *                       [vocab0, vocab0 + n_vocab); embedding lookups of
 *                       other tokens give zeros (all-reduce), logits are
 *                       all-gathered in slices of vocab_per_rank
 *
 * KV heads are split across ranks; when ranks outnumber KV heads, each KV
 * head is replicated on tp / n_kv_heads consecutive ranks (each rank keeps
 * one, and the query heads that use it). */
#ifndef DUET_PARALLEL_SHARD_H
#define DUET_PARALLEL_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct {
    int32_t n_heads;        /* query heads */
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t ffn;            /* feed-forward width */
    int32_t vocab;
    int32_t in_block;       /* elements per block along a weight row for
                               quantized matrices (32), 1 for float: the
                               input columns of a row-parallel shard must be
                               whole blocks */
} tp_dims_t;

typedef struct {
    int     tp_rank, tp_size;
    int32_t q_head0, n_q_heads;     /* query heads [q_head0, q_head0 + n_q_heads) */
    int32_t kv_head0, n_kv_heads;   /* KV heads held (and cached) by this rank */
    int32_t kv_replicas;            /* ranks holding each KV head (1: split) */
    int32_t ffn0, n_ffn;            /* gate/up rows, down columns */
    int32_t vocab0, n_vocab;        /* embedding / output rows held */
    int32_t vocab_per_rank;         /* the same on every rank (all-gather
                                       slices; the last rank's tail is padding) */
} tp_shard_t;

/* Plan rank tp_rank's shard of a model split over tp_size ranks. On a shape
 * that cannot be split, DUET_ERR_INVALID with a one-line reason in err
 * (e.g. "9 query heads cannot be split across 2 ranks"). */
duet_status_t tp_shard_plan(const tp_dims_t *d, int tp_rank, int tp_size,
                            tp_shard_t *shard_p, char *err, size_t errlen);

#endif
