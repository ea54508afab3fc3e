/* Tensor-parallel shard plans: SmolLM2 at TP 1/3 (and clear errors at 2),
 * replicated KV heads, and for many shapes and TP sizes: the shards cover
 * every query head, FFN row and vocab row exactly once, and every query head
 * finds its KV head on its own rank. */
#include <stdlib.h>
#include <string.h>

#include "parallel/shard.h"
#include "tests/tap.h"

static const tp_dims_t smollm2 = {.n_heads = 9, .n_kv_heads = 3, .head_dim = 64,
                                  .ffn = 1536, .vocab = 49152, .in_block = 32};

/* 1 when every rank's plan succeeds and the plans are consistent. */
static int check_cover(const tp_dims_t *d, int tp)
{
    int32_t *q = calloc((size_t)d->n_heads, 4), *f = calloc((size_t)d->ffn, 4);
    int32_t *v = calloc((size_t)d->vocab, 4), *kv = calloc((size_t)d->n_kv_heads, 4);
    int32_t group = d->n_heads / d->n_kv_heads;
    int good = 1;

    for (int r = 0; r < tp && good; r++) {
        tp_shard_t s;

        if (tp_shard_plan(d, r, tp, &s, NULL, 0) != DUET_OK) {
            good = 0;
            break;
        }
        for (int32_t h = s.q_head0; h < s.q_head0 + s.n_q_heads; h++) {
            q[h]++;
            good = good && h / group >= s.kv_head0 && h / group < s.kv_head0 + s.n_kv_heads;
        }
        for (int32_t h = s.kv_head0; h < s.kv_head0 + s.n_kv_heads; h++)
            kv[h]++;
        for (int32_t i = s.ffn0; i < s.ffn0 + s.n_ffn; i++)
            f[i]++;
        for (int32_t i = s.vocab0; i < s.vocab0 + s.n_vocab; i++)
            v[i]++;
        good = good && s.n_vocab <= s.vocab_per_rank;
    }
    for (int32_t i = 0; i < d->n_heads && good; i++)
        good = q[i] == 1;
    for (int32_t i = 0; i < d->n_kv_heads && good; i++)
        good = kv[i] == (tp > d->n_kv_heads ? tp / d->n_kv_heads : 1);
    for (int32_t i = 0; i < d->ffn && good; i++)
        good = f[i] == 1;
    for (int32_t i = 0; i < d->vocab && good; i++)
        good = v[i] == 1;
    free(q);
    free(f);
    free(v);
    free(kv);
    return good;
}

int main(void)
{
    tp_shard_t s;
    char err[160];
    tp_dims_t d;

    ok(tp_shard_plan(&smollm2, 0, 1, &s, err, sizeof(err)) == DUET_OK && s.n_q_heads == 9 &&
       s.n_kv_heads == 3 && s.n_ffn == 1536 && s.n_vocab == 49152, "SmolLM2 TP=1 holds everything");
    ok(tp_shard_plan(&smollm2, 2, 3, &s, err, sizeof(err)) == DUET_OK && s.q_head0 == 6 &&
       s.n_q_heads == 3 && s.kv_head0 == 2 && s.n_kv_heads == 1 && s.kv_replicas == 1 &&
       s.ffn0 == 1024 && s.n_ffn == 512 && s.vocab0 == 32768 && s.n_vocab == 16384,
       "SmolLM2 TP=3 rank 2: heads 6-8, KV head 2, FFN 1024+512, vocab 32768+16384");
    is_int(tp_shard_plan(&smollm2, 0, 2, &s, err, sizeof(err)), DUET_ERR_INVALID,
           "SmolLM2 TP=2 is refused");
    ok(strstr(err, "9 query heads cannot be split across 2 ranks") != NULL, "reason: %s", err);
    is_int(tp_shard_plan(&smollm2, 0, 9, &s, err, sizeof(err)), DUET_ERR_INVALID,
           "SmolLM2 TP=9 is refused");
    ok(strstr(err, "feed-forward width 1536") != NULL, "reason: %s", err);

    d = (tp_dims_t){.n_heads = 8, .n_kv_heads = 2, .head_dim = 64, .ffn = 1024, .vocab = 1000,
                    .in_block = 32};
    ok(tp_shard_plan(&d, 1, 4, &s, err, sizeof(err)) == DUET_OK && s.kv_replicas == 2 &&
       s.kv_head0 == 0 && s.n_kv_heads == 1 && s.q_head0 == 2 && s.n_q_heads == 2,
       "2 KV heads at TP=4: replicated twice, rank 1 keeps KV head 0 for heads 2-3");
    ok(tp_shard_plan(&d, 2, 4, &s, err, sizeof(err)) == DUET_OK && s.kv_head0 == 1,
       "rank 2 keeps KV head 1");
    ok(tp_shard_plan(&d, 3, 4, &s, err, sizeof(err)) == DUET_OK && s.vocab_per_rank == 250 &&
       s.vocab0 == 750 && s.n_vocab == 250, "vocab 1000 over 4: 250 rows each");
    d.vocab = 1001;
    ok(tp_shard_plan(&d, 3, 4, &s, err, sizeof(err)) == DUET_OK && s.vocab_per_rank == 251 &&
       s.n_vocab == 248, "vocab 1001 over 4: slices of 251, the last one padded");
    d = (tp_dims_t){.n_heads = 12, .n_kv_heads = 4, .head_dim = 64, .ffn = 1536, .vocab = 100,
                    .in_block = 32};
    is_int(tp_shard_plan(&d, 0, 6, &s, err, sizeof(err)), DUET_ERR_INVALID,
           "4 KV heads over 6 ranks is refused");
    ok(strstr(err, "cannot share 4 KV heads") != NULL || strstr(err, "KV heads") != NULL,
       "reason: %s", err);
    d = (tp_dims_t){.n_heads = 8, .n_kv_heads = 8, .head_dim = 8, .ffn = 64, .vocab = 100,
                    .in_block = 32};
    is_int(tp_shard_plan(&d, 0, 8, &s, err, sizeof(err)), DUET_ERR_INVALID,
           "a row-parallel shard of 8 columns in Q4 blocks of 32 is refused");
    d.in_block = 1;
    ok(tp_shard_plan(&d, 0, 8, &s, err, sizeof(err)) == DUET_OK, "the same in f32 is fine");
    is_int(tp_shard_plan(&smollm2, 3, 3, &s, err, sizeof(err)), DUET_ERR_INVALID,
           "rank out of range");
    is_int(tp_shard_plan(&smollm2, 0, 0, &s, err, sizeof(err)), DUET_ERR_INVALID,
           "TP size 0");
    is_int(tp_shard_plan(NULL, 0, 1, &s, err, sizeof(err)), DUET_ERR_INVALID, "NULL dims");
    d = smollm2;
    d.n_kv_heads = 4;
    is_int(tp_shard_plan(&d, 0, 1, &s, err, sizeof(err)), DUET_ERR_INVALID,
           "9 heads over 4 KV heads is not GQA");

    {
        static const tp_dims_t shapes[] = {
            {9, 3, 64, 1536, 49152, 32},  {8, 4, 64, 1024, 32000, 32},
            {8, 2, 64, 1024, 1001, 32},   {32, 8, 128, 11008, 32000, 32},
            {16, 1, 64, 4096, 50257, 1},  {12, 12, 64, 3072, 50257, 1},
        };
        int bad = 0, tried = 0;

        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
            for (int tp = 1; tp <= 16; tp++) {
                if (tp_shard_plan(&shapes[i], 0, tp, &s, NULL, 0) != DUET_OK)
                    continue;
                tried++;
                bad += !check_cover(&shapes[i], tp);
            }
        }
        ok(bad == 0 && tried > 20,
           "%d accepted (shape, TP) plans cover heads, FFN and vocab exactly once", tried);
    }
    return tap_done();
}
