/* The compute backend interface: a table of operations with a context
 * pointer (ggml-backend style). kernels/cpu fills it today; a CUDA backend
 * fills the same table later. Callers use the ops_* wrappers below, never
 * the table directly.
 *
 * Conventions: tensors are row-major; shapes are given in comments as
 * (outer, ..., inner); the output comes first. A weight matrix W(d, n) is d
 * GGUF rows of ne[0] = n elements each, stored in its own dtype. Every op
 * returns DUET_OK or DUET_ERR_INVALID for arguments it can check cheaply
 * (sizes, dtypes, token ids, block tables); it never allocates per call
 * except to grow its scratch (DUET_ERR_NOMEM).
 *
 * A backend instance is used by one thread of control at a time (it owns
 * scratch memory and a thread pool); create one per engine. */
#ifndef DUET_KERNELS_OPS_H
#define DUET_KERNELS_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/kv_layout.h"
#include "common/status.h"

/* A weight matrix W(d, n): d rows of n elements of type `type`; rows are
 * contiguous, each dtype_row_bytes(type, n) bytes. Borrowed. */
typedef struct {
    const void *data;
    dtype_t     type;
    int64_t     n;          /* elements per row (GGUF ne[0]) */
    int64_t     d;          /* rows (GGUF ne[1]) */
    /* Quantized types only: carry the activations in two 8-bit levels,
     * x ~= d1 q1 + d2 q2 with q2 the quantized residual, so they keep about
     * 15 bits instead of 8 at twice the integer dot work (the weights are
     * still read once). For matrices whose inputs have outliers that make
     * 8-bit blocks too coarse (see docs/kernels.md). */
    bool        precise;
    /* This matrix repacked by ops.prepare for the backend's matmul (owned by
     * the backend, freed by ops.release; NULL: none). data stays valid and is
     * what embed reads. */
    void       *prepared;
} ops_weight_t;

/* The paged KV cache of one layer (common/kv_layout.h). Borrowed. */
typedef struct {
    void              *slab;
    const kv_layout_t *layout;
    int32_t            layer;
} ops_kv_t;

/* One sequence of a batch for KV write and attention: n_new new tokens at
 * positions n_past .. n_past + n_new - 1; its rows in q/k/v/out follow the
 * rows of the sequences before it. block_table covers every position
 * 0 .. n_past + n_new - 1 (position p lives in block_table[p / block_size],
 * slot p % block_size). */
typedef struct {
    int32_t        n_new;
    int32_t        n_past;
    const int32_t *block_table;    /* (n_blocks) */
    int32_t        n_blocks;
} ops_seq_t;

typedef struct {
    float   base;       /* rope.freq_base */
    float   scale;      /* linear scaling factor: positions are divided by it (1: none) */
    int32_t rot_dim;    /* leading dims of each head that rotate (even, <= head_dim) */
} ops_rope_t;

typedef struct ops ops_t;

struct ops {
    const char *name;   /* "cpu-ref", "cpu-avx2", "cpu-avx512", ... */
    void       *ctx;

    /* out(n_tok, w->n) = rows ids[] of w, converted to f32. */
    duet_status_t (*embed)(void *ctx, float *out, const ops_weight_t *w,
                           const int32_t *ids, int32_t n_tok);

    /* out(n_tok, w->d) = x(n_tok, w->n) . W(d, n)^T. Quantized weights get
     * the activations quantized once per call to 8-bit blocks of 32 with a
     * float scale and a precomputed block sum; F16/BF16 weights get them
     * rounded to f16/bf16; F32 uses them as they are. */
    duet_status_t (*matmul)(void *ctx, float *out, const float *x,
                            const ops_weight_t *w, int32_t n_tok);

    /* outs[i](n_tok, ws[i]->d) = x(n_tok, n) . ws[i]^T for nw matrices that
     * read the same input (q/k/v, gate/up): the same bits as nw matmul
     * calls, with the activations converted once and one parallel region. */
    duet_status_t (*matmul_n)(void *ctx, float *const *outs, const float *x,
                              const ops_weight_t *const *ws, int nw, int32_t n_tok);

    /* Optional (NULL: nothing to prepare). Repack w once into the layout the
     * backend's matmul and logits read fastest (w->prepared), so no call
     * repacks it again; results are the same bits as unprepared. w->data
     * must not change while w is prepared. release frees it (w->prepared =
     * NULL); both accept weights the backend does not prepare. */
    duet_status_t (*prepare)(void *ctx, ops_weight_t *w);
    void (*release)(void *ctx, ops_weight_t *w);

    /* out(n_tok, n) = x / sqrt(mean(x^2) + eps) * w(n). out may equal x. */
    duet_status_t (*rmsnorm)(void *ctx, float *out, const float *x, const float *w,
                             int32_t n_tok, int32_t n, float eps);

    /* In place on x(n_tok, n_heads, head_dim): adjacent-pair rotation of the
     * first rot_dim dims of every head: (x[2i], x[2i+1]) turns by
     * (pos[t] / scale) * base^(-2i / rot_dim). */
    duet_status_t (*rope)(void *ctx, float *x, const int32_t *pos, int32_t n_tok,
                          int32_t n_heads, int32_t head_dim, const ops_rope_t *rope);

    /* out(n) = silu(gate(n)) * up(n). out may equal gate or up. */
    duet_status_t (*silu_mul)(void *ctx, float *out, const float *gate,
                              const float *up, int64_t n);

    /* out(n) = a(n) + b(n). out may equal a or b. */
    duet_status_t (*add)(void *ctx, float *out, const float *a, const float *b, int64_t n);

    /* Store k and v (n_rows, layout->n_kv_heads, head_dim), n_rows = sum of
     * seqs[].n_new, into the cache at each sequence's new positions
     * (converted to layout->dtype). */
    duet_status_t (*kv_write)(void *ctx, const ops_kv_t *kv, const float *k,
                              const float *v, const ops_seq_t *seqs, int32_t n_seqs);

    /* Paged causal attention, prefill and batched decode alike:
     * out(n_rows, n_heads, head_dim) for q(n_rows, n_heads, head_dim); new
     * token j of a sequence attends to positions 0 .. n_past + j, read from
     * the cache (kv_write the new tokens first). GQA: query head h reads KV
     * head h / (n_heads / n_kv_heads). scores are scaled by `scale`. A
     * prefill is one sequence with n_new > 1 over a cached prefix of n_past;
     * a decode step is many sequences with n_new = 1. */
    duet_status_t (*attn)(void *ctx, float *out, const float *q, const ops_kv_t *kv,
                          const ops_seq_t *seqs, int32_t n_seqs, int32_t n_heads,
                          float scale);

    /* out(n_tok, vocab) = x(n_tok, n) . head(vocab, n)^T: the matmul above,
     * kept as its own entry so a backend can place or shard it. */
    duet_status_t (*logits)(void *ctx, float *out, const float *x,
                            const ops_weight_t *head, int32_t n_tok);

    /* out(n_rows) = index of the largest value of each row of x(n_rows, n)
     * (the first on ties). */
    duet_status_t (*argmax)(void *ctx, int32_t *out, const float *x, int32_t n_rows,
                            int64_t n);

    /* In place on x(n_rows, n): x = exp(x - max) / sum. */
    duet_status_t (*softmax)(void *ctx, float *x, int32_t n_rows, int64_t n);

    /* Destroy the backend (ctx and the table itself). */
    void (*destroy)(ops_t *ops);
};

/* --- wrappers ----------------------------------------------------------- */

static inline duet_status_t ops_embed(ops_t *o, float *out, const ops_weight_t *w,
                                      const int32_t *ids, int32_t n_tok)
{
    return o->embed(o->ctx, out, w, ids, n_tok);
}

static inline duet_status_t ops_prepare(ops_t *o, ops_weight_t *w)
{
    return o->prepare != NULL ? o->prepare(o->ctx, w) : DUET_OK;
}

static inline void ops_release(ops_t *o, ops_weight_t *w)
{
    if (o->release != NULL)
        o->release(o->ctx, w);
}

static inline duet_status_t ops_matmul(ops_t *o, float *out, const float *x,
                                       const ops_weight_t *w, int32_t n_tok)
{
    return o->matmul(o->ctx, out, x, w, n_tok);
}

static inline duet_status_t ops_matmul_n(ops_t *o, float *const *outs, const float *x,
                                         const ops_weight_t *const *ws, int nw,
                                         int32_t n_tok)
{
    if (o->matmul_n != NULL)
        return o->matmul_n(o->ctx, outs, x, ws, nw, n_tok);
    for (int i = 0; i < nw; i++) {
        duet_status_t s = o->matmul(o->ctx, outs[i], x, ws[i], n_tok);

        if (s != DUET_OK)
            return s;
    }
    return DUET_OK;
}

static inline duet_status_t ops_rmsnorm(ops_t *o, float *out, const float *x,
                                        const float *w, int32_t n_tok, int32_t n,
                                        float eps)
{
    return o->rmsnorm(o->ctx, out, x, w, n_tok, n, eps);
}

static inline duet_status_t ops_rope(ops_t *o, float *x, const int32_t *pos,
                                     int32_t n_tok, int32_t n_heads, int32_t head_dim,
                                     const ops_rope_t *rope)
{
    return o->rope(o->ctx, x, pos, n_tok, n_heads, head_dim, rope);
}

static inline duet_status_t ops_silu_mul(ops_t *o, float *out, const float *gate,
                                         const float *up, int64_t n)
{
    return o->silu_mul(o->ctx, out, gate, up, n);
}

static inline duet_status_t ops_add(ops_t *o, float *out, const float *a,
                                    const float *b, int64_t n)
{
    return o->add(o->ctx, out, a, b, n);
}

static inline duet_status_t ops_kv_write(ops_t *o, const ops_kv_t *kv, const float *k,
                                         const float *v, const ops_seq_t *seqs,
                                         int32_t n_seqs)
{
    return o->kv_write(o->ctx, kv, k, v, seqs, n_seqs);
}

static inline duet_status_t ops_attn(ops_t *o, float *out, const float *q,
                                     const ops_kv_t *kv, const ops_seq_t *seqs,
                                     int32_t n_seqs, int32_t n_heads, float scale)
{
    return o->attn(o->ctx, out, q, kv, seqs, n_seqs, n_heads, scale);
}

static inline duet_status_t ops_logits(ops_t *o, float *out, const float *x,
                                       const ops_weight_t *head, int32_t n_tok)
{
    return o->logits(o->ctx, out, x, head, n_tok);
}

static inline duet_status_t ops_argmax(ops_t *o, int32_t *out, const float *x,
                                       int32_t n_rows, int64_t n)
{
    return o->argmax(o->ctx, out, x, n_rows, n);
}

static inline duet_status_t ops_softmax(ops_t *o, float *x, int32_t n_rows, int64_t n)
{
    return o->softmax(o->ctx, x, n_rows, n);
}

static inline void ops_destroy(ops_t *o)
{
    if (o != NULL)
        o->destroy(o);
}

#endif
