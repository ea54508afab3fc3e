/* The paged KV cache layout shared by kernels (KV write, paged attention),
 * the engine, and the KV connector (which moves blocks between slabs).
 *
 * One slab per rank holds every layer:
 *   slab[layer][block][kv][head][token][head_dim]     kv: 0 = K, 1 = V
 * so, per block and layer, K and V are each [kv_head][token][head_dim] with
 * heads outermost: the slice of heads that one decode rank needs is
 * contiguous, and consecutive blocks of one layer are adjacent in memory
 * (a run of blocks coalesces into one transfer). n_kv_heads is the number of
 * heads this rank holds (its shard), not the model's total. */
#ifndef DUET_COMMON_KV_LAYOUT_H
#define DUET_COMMON_KV_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

typedef struct {
    int32_t n_layers;
    int32_t n_blocks;       /* blocks in the slab */
    int32_t n_kv_heads;     /* heads held by this rank */
    int32_t block_size;     /* tokens per block (default 16) */
    int32_t head_dim;
    dtype_t dtype;          /* DTYPE_F16 (default) or DTYPE_F32 */
} kv_layout_t;

static inline size_t kv_elem_bytes(const kv_layout_t *l)
{
    return l->dtype == DTYPE_F32 ? 4 : 2;
}

/* Bytes of one head's K (or V) in one block: [token][head_dim]. */
static inline size_t kv_head_bytes(const kv_layout_t *l)
{
    return (size_t)l->block_size * (size_t)l->head_dim * kv_elem_bytes(l);
}

/* Bytes of K (or V) of one block and layer: [head][token][head_dim]. */
static inline size_t kv_half_bytes(const kv_layout_t *l)
{
    return (size_t)l->n_kv_heads * kv_head_bytes(l);
}

/* Bytes of one block in one layer (K then V). */
static inline size_t kv_block_bytes(const kv_layout_t *l)
{
    return 2 * kv_half_bytes(l);
}

/* Bytes of one layer across all blocks. */
static inline size_t kv_layer_bytes(const kv_layout_t *l)
{
    return (size_t)l->n_blocks * kv_block_bytes(l);
}

static inline size_t kv_slab_bytes(const kv_layout_t *l)
{
    return (size_t)l->n_layers * kv_layer_bytes(l);
}

/* Offset of block's K (kv = 0) or V (kv = 1), head `head`, token 0, in layer. */
static inline size_t kv_offset(const kv_layout_t *l, int32_t layer, int32_t block,
                               int kv, int32_t head)
{
    return (size_t)layer * kv_layer_bytes(l) + (size_t)block * kv_block_bytes(l) +
           (size_t)kv * kv_half_bytes(l) + (size_t)head * kv_head_bytes(l);
}

#endif
