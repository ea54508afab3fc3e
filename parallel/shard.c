/* Tensor-parallel partition arithmetic and its start-up checks. */
#include "parallel/shard.h"

#include <stdio.h>
#include <string.h>

#define FAIL(...)                                   \
    do {                                            \
        if (err != NULL && errlen > 0)              \
            snprintf(err, errlen, __VA_ARGS__);     \
        return DUET_ERR_INVALID;                    \
    } while (0)

duet_status_t tp_shard_plan(const tp_dims_t *d, int tp_rank, int tp_size,
                            tp_shard_t *shard_p, char *err, size_t errlen)
{
    tp_shard_t s;
    int32_t blk;

    if (d == NULL || shard_p == NULL)
        FAIL("no model dimensions");
    if (tp_size < 1 || tp_rank < 0 || tp_rank >= tp_size)
        FAIL("bad tensor-parallel rank %d of %d", tp_rank, tp_size);
    if (d->n_heads < 1 || d->n_kv_heads < 1 || d->head_dim < 1 || d->ffn < 1 ||
        d->vocab < 1 || d->in_block < 0)
        FAIL("bad model dimensions (heads %d, kv heads %d, head dim %d, ffn %d, vocab %d)",
             d->n_heads, d->n_kv_heads, d->head_dim, d->ffn, d->vocab);
    if (d->n_heads % d->n_kv_heads != 0)
        FAIL("%d query heads are not a multiple of %d KV heads", d->n_heads, d->n_kv_heads);
    blk = d->in_block > 0 ? d->in_block : 1;
    memset(&s, 0, sizeof(s));
    s.tp_rank = tp_rank;
    s.tp_size = tp_size;

    if (d->n_heads % tp_size != 0)
        FAIL("%d query heads cannot be split across %d ranks", d->n_heads, tp_size);
    s.n_q_heads = d->n_heads / tp_size;
    s.q_head0 = tp_rank * s.n_q_heads;
    if (d->n_kv_heads >= tp_size) {
        if (d->n_kv_heads % tp_size != 0)
            FAIL("%d KV heads cannot be split across %d ranks", d->n_kv_heads, tp_size);
        s.n_kv_heads = d->n_kv_heads / tp_size;
        s.kv_head0 = tp_rank * s.n_kv_heads;
        s.kv_replicas = 1;
    } else {
        if (tp_size % d->n_kv_heads != 0)
            FAIL("%d ranks cannot share %d KV heads evenly (replication needs a multiple)",
                 tp_size, d->n_kv_heads);
        s.kv_replicas = tp_size / d->n_kv_heads;
        s.n_kv_heads = 1;
        s.kv_head0 = tp_rank / s.kv_replicas;
    }
    /* o is row-parallel over this rank's heads */
    if (((int64_t)s.n_q_heads * d->head_dim) % blk != 0)
        FAIL("attention output shard of %d x %d columns is not whole %d-element blocks",
             s.n_q_heads, d->head_dim, blk);

    if (d->ffn % tp_size != 0)
        FAIL("feed-forward width %d cannot be split across %d ranks", d->ffn, tp_size);
    s.n_ffn = d->ffn / tp_size;
    s.ffn0 = tp_rank * s.n_ffn;
    if (s.n_ffn % blk != 0)
        FAIL("feed-forward shard of %d columns is not whole %d-element blocks", s.n_ffn, blk);

    s.vocab_per_rank = (d->vocab + tp_size - 1) / tp_size;
    s.vocab0 = tp_rank * s.vocab_per_rank;
    if (s.vocab0 >= d->vocab)
        FAIL("vocabulary of %d rows leaves rank %d of %d empty", d->vocab, tp_rank, tp_size);
    s.n_vocab = d->vocab - s.vocab0 < s.vocab_per_rank ? d->vocab - s.vocab0 : s.vocab_per_rank;

    *shard_p = s;
    return DUET_OK;
}
