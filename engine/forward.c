/* The llama forward pass over a batch of sequences on the paged KV cache,
 * built from the ops table of kernels/ops.h (CPU backend). All new tokens
 * of all sequences go through every matmul together (a prefill chunk of
 * 512 tokens and a decode step of 64 sequences are the same code), so each
 * weight matrix is read once per step. */
#define DUET_LOG_COMPONENT "forward"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/log.h"
#include "engine/forward.h"
#include "kernels/cpu/cpu.h"
#include "kernels/ops.h"
#include "parallel/shard.h"

typedef struct {
    float        *attn_norm;    /* (hidden) f32 copy */
    ops_weight_t  wq;           /* (n_heads * head_dim, hidden) */
    ops_weight_t  wk;           /* (n_kv_heads * head_dim, hidden) */
    ops_weight_t  wv;           /* (n_kv_heads * head_dim, hidden) */
    ops_weight_t  wo;           /* (hidden, n_heads * head_dim) */
    float        *ffn_norm;     /* (hidden) */
    ops_weight_t  w_gate;       /* (ffn, hidden) */
    ops_weight_t  w_up;         /* (ffn, hidden) */
    ops_weight_t  w_down;       /* (hidden, ffn) */
    void         *own_o;        /* TP: the copied column slices of wo and */
    void         *own_down;     /* w_down (row-parallel shards) */
} fwd_layer_t;

struct fwd {
    model_config_t cfg;
    ops_t         *ops;
    ops_weight_t   tok_embd;    /* (vocab, hidden) */
    ops_weight_t   output;      /* (vocab, hidden), token_embd when tied */
    float         *out_norm;    /* (hidden) */
    fwd_layer_t   *layers;      /* (n_layers) */
    ops_rope_t     rope;
    kv_layout_t    layout;
    void          *slab;
    size_t         slab_bytes;
    bool           own_slab;
    fwd_layer_cb_t on_layer;
    void          *layer_arg;

    /* scratch for up to cap_tok tokens and cap_seqs sequences */
    int32_t        cap_tok, cap_seqs;
    float         *x;           /* (T, hidden) residual stream */
    float         *xn;          /* (T, hidden) normed / branch output */
    float         *q;           /* (T, n_heads * head_dim) */
    float         *k;           /* (T, n_kv_heads * head_dim) */
    float         *v;           /* (T, n_kv_heads * head_dim) */
    float         *att;         /* (T, n_heads * head_dim) */
    float         *gate;        /* (T, ffn) */
    float         *up;          /* (T, ffn) */
    int32_t       *tok;         /* (T) */
    int32_t       *pos;         /* (T) */
    ops_seq_t     *oseqs;       /* (n_seqs) */
    int32_t       *last;        /* (n_seqs) rows that want logits */

    /* Tensor parallel (tp_size > 1). cfg then holds this rank's n_heads,
     * n_kv_heads and ffn; every weight above is this rank's shard. */
    tp_shard_t     shard;
    group_t       *tp;          /* borrowed; NULL at tp_size 1 */
    int32_t       *tp_ids;      /* (cap_tp_ids) token ids local to the vocab slice */
    int32_t        cap_tp_ids;
    float         *gath;        /* (tp_size, cap_gath, vocab_per_rank) logits slices */
    int32_t        cap_gath;
};

static duet_status_t weight_get(const gguf_t *g, const char *name, ops_weight_t *w)
{
    const gguf_tensor_t *t = gguf_find_tensor(g, name);

    if (t == NULL || t->n_dims > 2) {
        log_error("tensor %s is missing or not a matrix", name);
        return DUET_ERR_NOT_FOUND;
    }
    *w = (ops_weight_t){.data = t->data, .type = t->type, .n = t->ne[0],
                        .d = t->n_dims > 1 ? t->ne[1] : 1};
    return DUET_OK;
}

/* An f32 copy of a vector (norm weights may be stored in any type). */
static duet_status_t vec_get(const gguf_t *g, const char *name, int64_t n, float **out_p)
{
    const gguf_tensor_t *t = gguf_find_tensor(g, name);
    float *v;

    if (t == NULL || t->ne[0] != n || n % dtype_block_elems(t->type) != 0) {
        log_error("tensor %s is missing or has the wrong size", name);
        return DUET_ERR_NOT_FOUND;
    }
    v = malloc(sizeof(float) * (size_t)n);
    if (v == NULL)
        return DUET_ERR_NOMEM;
    gguf_dequantize(v, t->data, t->type, n);
    *out_p = v;
    return DUET_OK;
}

static void scratch_free(fwd_t *f)
{
    free(f->x);
    free(f->xn);
    free(f->q);
    free(f->k);
    free(f->v);
    free(f->att);
    free(f->gate);
    free(f->up);
    free(f->tok);
    free(f->pos);
    free(f->oseqs);
    free(f->last);
}

static duet_status_t scratch_grow(fwd_t *f, int32_t n_tok, int32_t n_seqs)
{
    const model_config_t *c = &f->cfg;
    size_t t;

    if (n_tok > f->cap_tok) {
        t = (size_t)n_tok;
        free(f->x); free(f->xn); free(f->q); free(f->k); free(f->v);
        free(f->att); free(f->gate); free(f->up); free(f->tok); free(f->pos);
        f->x = malloc(sizeof(float) * t * (size_t)c->hidden);
        f->xn = malloc(sizeof(float) * t * (size_t)c->hidden);
        f->q = malloc(sizeof(float) * t * (size_t)c->n_heads * (size_t)c->head_dim);
        f->k = malloc(sizeof(float) * t * (size_t)c->n_kv_heads * (size_t)c->head_dim);
        f->v = malloc(sizeof(float) * t * (size_t)c->n_kv_heads * (size_t)c->head_dim);
        f->att = malloc(sizeof(float) * t * (size_t)c->n_heads * (size_t)c->head_dim);
        f->gate = malloc(sizeof(float) * t * (size_t)c->ffn);
        f->up = malloc(sizeof(float) * t * (size_t)c->ffn);
        f->tok = malloc(sizeof(int32_t) * t);
        f->pos = malloc(sizeof(int32_t) * t);
        f->cap_tok = n_tok;
        if (!f->x || !f->xn || !f->q || !f->k || !f->v || !f->att || !f->gate || !f->up ||
            !f->tok || !f->pos) {
            f->cap_tok = 0;
            return DUET_ERR_NOMEM;
        }
    }
    if (n_seqs > f->cap_seqs) {
        free(f->oseqs);
        free(f->last);
        f->oseqs = malloc(sizeof(ops_seq_t) * (size_t)n_seqs);
        f->last = malloc(sizeof(int32_t) * (size_t)n_seqs);
        f->cap_seqs = n_seqs;
        if (!f->oseqs || !f->last) {
            f->cap_seqs = 0;
            return DUET_ERR_NOMEM;
        }
    }
    return DUET_OK;
}

/* Every matrix the matmul reads, repacked once for the backend (ops.prepare),
 * or released. */
static duet_status_t prepare_weights(fwd_t *f, bool prepare)
{
    for (int32_t i = 0; f->layers != NULL && i < f->cfg.n_layers; i++) {
        fwd_layer_t *L = &f->layers[i];
        ops_weight_t *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up,
                                &L->w_down};

        for (size_t m = 0; m < sizeof(mats) / sizeof(mats[0]); m++) {
            if (!prepare)
                ops_release(f->ops, mats[m]);
            else
                CHECK(ops_prepare(f->ops, mats[m]));
        }
    }
    if (!prepare)
        ops_release(f->ops, &f->output);
    else
        CHECK(ops_prepare(f->ops, &f->output));
    return DUET_OK;
}

void fwd_destroy(fwd_t *f)
{
    if (f == NULL)
        return;
    if (f->ops != NULL)
        prepare_weights(f, false);
    if (f->layers != NULL) {
        for (int32_t i = 0; i < f->cfg.n_layers; i++) {
            free(f->layers[i].attn_norm);
            free(f->layers[i].ffn_norm);
            free(f->layers[i].own_o);
            free(f->layers[i].own_down);
        }
        free(f->layers);
    }
    free(f->out_norm);
    if (f->own_slab && f->slab != NULL)
        munmap(f->slab, f->slab_bytes);
    scratch_free(f);
    free(f->tp_ids);
    free(f->gath);
    ops_destroy(f->ops);
    free(f);
}

/* ---- tensor parallel shards (tp_size > 1) -------------------------------- */

duet_status_t fwd_tp_plan(const gguf_t *g, const model_config_t *cfg, int tp_rank, int tp_size,
                          tp_shard_t *shard_p, char *err, size_t errlen)
{
    const gguf_tensor_t *o = gguf_find_tensor(g, "blk.0.attn_output.weight");
    const gguf_tensor_t *d = gguf_find_tensor(g, "blk.0.ffn_down.weight");
    tp_dims_t dims = {.n_heads = cfg->n_heads, .n_kv_heads = cfg->n_kv_heads,
                      .head_dim = cfg->head_dim, .ffn = cfg->ffn, .vocab = cfg->vocab,
                      .in_block = 1};
    char why[160];

    if (o != NULL && dtype_block_elems(o->type) > dims.in_block)
        dims.in_block = (int32_t)dtype_block_elems(o->type);
    if (d != NULL && dtype_block_elems(d->type) > dims.in_block)
        dims.in_block = (int32_t)dtype_block_elems(d->type);
    if (tp_shard_plan(&dims, tp_rank, tp_size, shard_p, why, sizeof(why)) != DUET_OK) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "tensor parallel size %d does not fit the model: %s",
                     tp_size, why);
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

/* This rank's shard; f->cfg then holds the rank's heads, KV heads and FFN
 * rows, which the scratch, the KV layout and the layer code use as they
 * are. */
static duet_status_t tp_plan(fwd_t *f, const gguf_t *g, const fwd_opts_t *opts)
{
    char err[256];

    if (fwd_tp_plan(g, &f->cfg, opts->tp_rank, opts->tp_size, &f->shard, err,
                    sizeof(err)) != DUET_OK) {
        log_error("forward: %s", err);
        return DUET_ERR_INVALID;
    }
    f->tp = opts->tp_group;
    f->cfg.n_heads = f->shard.n_q_heads;
    f->cfg.n_kv_heads = f->shard.n_kv_heads;
    f->cfg.ffn = f->shard.n_ffn;
    return DUET_OK;
}

/* Column-parallel: keep output rows [r0, r0 + n) of w (rows of `rows`). */
static duet_status_t keep_rows(ops_weight_t *w, const char *what, int32_t layer, int64_t rows,
                               int64_t r0, int64_t n)
{
    if (w->d != rows) {
        log_error("forward: layer %d %s has %lld rows, expected %lld", layer, what,
                  (long long)w->d, (long long)rows);
        return DUET_ERR_INVALID;
    }
    w->data = (const uint8_t *)w->data + (size_t)r0 * dtype_row_bytes(w->type, w->n);
    w->d = n;
    return DUET_OK;
}

/* Row-parallel: copy input columns [c0, c0 + n) of every row of w (rows of
 * `cols`) into *own_p, which w then points at. Quantized rows split only at
 * block boundaries: the slice must be whole blocks. */
static duet_status_t keep_cols(ops_weight_t *w, const char *what, int32_t layer, int64_t cols,
                               int64_t c0, int64_t n, void **own_p)
{
    int64_t be = dtype_block_elems(w->type);
    size_t src_row, dst_row, off;
    uint8_t *dst;
    void *mem;

    if (w->n != cols) {
        log_error("forward: layer %d %s has rows of %lld, expected %lld", layer, what,
                  (long long)w->n, (long long)cols);
        return DUET_ERR_INVALID;
    }
    if (c0 % be != 0 || n % be != 0) {
        log_error("forward: layer %d %s: the columns %lld..%lld of this rank are not whole "
                  "%lld-element blocks of %s", layer, what, (long long)c0,
                  (long long)(c0 + n - 1), (long long)be, dtype_name(w->type));
        return DUET_ERR_INVALID;
    }
    src_row = dtype_row_bytes(w->type, w->n);
    dst_row = dtype_row_bytes(w->type, n);
    off = dtype_row_bytes(w->type, c0);
    if (posix_memalign(&mem, 64, dst_row * (size_t)w->d + 64) != 0)
        return DUET_ERR_NOMEM;
    dst = mem;
    for (int64_t r = 0; r < w->d; r++)
        memcpy(dst + (size_t)r * dst_row, (const uint8_t *)w->data + (size_t)r * src_row + off,
               dst_row);
    w->data = dst;
    w->n = n;
    *own_p = mem;
    return DUET_OK;
}

/* Cut every weight down to this rank's shard: q, k, v, gate, up by rows
 * (views into the file), o and down by columns (copies), the embedding and
 * the output head by vocabulary rows. full: the whole model's shape. */
static duet_status_t tp_shard_weights(fwd_t *f, const model_config_t *full)
{
    const tp_shard_t *s = &f->shard;
    int64_t hd = full->head_dim;

    CHECK(keep_rows(&f->tok_embd, "token_embd", -1, full->vocab, s->vocab0, s->n_vocab));
    CHECK(keep_rows(&f->output, "output", -1, full->vocab, s->vocab0, s->n_vocab));
    for (int32_t l = 0; l < full->n_layers; l++) {
        fwd_layer_t *L = &f->layers[l];

        CHECK(keep_rows(&L->wq, "attn_q", l, full->n_heads * hd, s->q_head0 * hd,
                        s->n_q_heads * hd));
        CHECK(keep_rows(&L->wk, "attn_k", l, full->n_kv_heads * hd, s->kv_head0 * hd,
                        s->n_kv_heads * hd));
        CHECK(keep_rows(&L->wv, "attn_v", l, full->n_kv_heads * hd, s->kv_head0 * hd,
                        s->n_kv_heads * hd));
        CHECK(keep_rows(&L->w_gate, "ffn_gate", l, full->ffn, s->ffn0, s->n_ffn));
        CHECK(keep_rows(&L->w_up, "ffn_up", l, full->ffn, s->ffn0, s->n_ffn));
        CHECK(keep_cols(&L->wo, "attn_output", l, full->n_heads * hd, s->q_head0 * hd,
                        s->n_q_heads * hd, &L->own_o));
        CHECK(keep_cols(&L->w_down, "ffn_down", l, full->ffn, s->ffn0, s->n_ffn,
                        &L->own_down));
    }
    return DUET_OK;
}

/* Where a row-parallel matmul writes its partial y (n) before tp_sum: the
 * TP group's input buffer when it fits (shm: no copy into shared memory),
 * else f->xn. */
static float *tp_sum_buffer(fwd_t *f, int64_t n)
{
    float *y = NULL;

    if (f->tp != NULL)
        y = group_input_buffer(f->tp, sizeof(float) * (size_t)n);
    return y != NULL ? y : f->xn;
}

/* *sum_p (n) = the sum of every rank's partial y (n) (from tp_sum_buffer),
 * in rank order (deterministic, bit-identical on every rank). A large y in
 * the group's buffer is summed in place there (shm: no second store of the
 * sums; valid until the next collective); a small one into f->xn, which
 * keeps the one-sync path (GROUP_SHM_ONE_SHOT_BYTES). */
static duet_status_t tp_sum(fwd_t *f, float *y, int64_t n, float **sum_p)
{
    float *dst = y;

    if (f->tp != NULL) {
        if (y != f->xn && sizeof(float) * (size_t)n * (size_t)(f->shard.tp_size - 1) <=
                              GROUP_SHM_ONE_SHOT_BYTES)
            dst = f->xn;
        CHECK(group_all_reduce(f->tp, dst, y, (size_t)n, GROUP_F32));
    }
    *sum_p = dst;
    return DUET_OK;
}

/* x (T, hidden) = embedding rows of f->tok. TP: each rank looks up the
 * tokens of its vocabulary slice and leaves zeros for the others; the
 * all-reduce adds exactly one non-zero row per token, so x is exact. */
static duet_status_t tp_embed(fwd_t *f, int32_t T)
{
    const tp_shard_t *s = &f->shard;
    size_t row = (size_t)f->cfg.hidden;
    float *e;           /* (T, hidden) this rank's rows, zeros elsewhere */

    if (f->tp == NULL)
        return ops_embed(f->ops, f->x, &f->tok_embd, f->tok, T);
    if (T > f->cap_tp_ids) {
        free(f->tp_ids);
        f->tp_ids = malloc(sizeof(int32_t) * (size_t)T);
        f->cap_tp_ids = f->tp_ids != NULL ? T : 0;
        if (f->tp_ids == NULL)
            return DUET_ERR_NOMEM;
    }
    for (int32_t t = 0; t < T; t++) {
        int32_t id = f->tok[t] - s->vocab0;

        f->tp_ids[t] = id >= 0 && id < s->n_vocab ? id : 0;
    }
    /* built in the group's input buffer when it fits: no copy in */
    e = group_input_buffer(f->tp, sizeof(float) * row * (size_t)T);
    if (e == NULL)
        e = f->x;
    CHECK(ops_embed(f->ops, e, &f->tok_embd, f->tp_ids, T));
    for (int32_t t = 0; t < T; t++) {
        int32_t id = f->tok[t] - s->vocab0;

        if (id < 0 || id >= s->n_vocab)
            memset(e + (size_t)t * row, 0, sizeof(float) * row);
    }
    return group_all_reduce(f->tp, f->x, e, row * (size_t)T, GROUP_F32);
}

/* logits (n, vocab) for the normed rows xn (n, hidden). TP: each rank
 * computes its vocabulary slice into its block of the gather buffer
 * (tp, n, vocab_per_rank), the blocks are all-gathered, and rank 0
 * reassembles the rows (workers pass logits NULL). */
static duet_status_t tp_logits(fwd_t *f, float *logits, int32_t n)
{
    const tp_shard_t *s = &f->shard;
    size_t vpr = (size_t)s->vocab_per_rank, blk = (size_t)n * vpr;
    float *mine;        /* (n, vocab_per_rank) this rank's logits */

    if (f->tp == NULL)
        return ops_logits(f->ops, logits, f->xn, &f->output, n);
    if (n > f->cap_gath) {
        free(f->gath);
        f->gath = calloc((size_t)s->tp_size * blk, sizeof(float));
        f->cap_gath = f->gath != NULL ? n : 0;
        if (f->gath == NULL)
            return DUET_ERR_NOMEM;
    }
    /* our block straight into the group's input buffer when it fits (no
     * copy in) */
    mine = group_input_buffer(f->tp, sizeof(float) * blk);
    if (mine == NULL)
        mine = f->gath + (size_t)s->tp_rank * blk;
    CHECK(ops_logits(f->ops, mine, f->xn, &f->output, n));
    CHECK(group_all_gather(f->tp, f->gath, mine, blk, GROUP_F32));
    if (logits == NULL)
        return DUET_OK;
    for (int r = 0; r < s->tp_size; r++) {
        size_t v0 = (size_t)r * vpr;
        size_t nv = (size_t)f->cfg.vocab - v0 < vpr ? (size_t)f->cfg.vocab - v0 : vpr;

        /* rank r's block holds its rows packed at nv floats each */
        for (int32_t i = 0; i < n; i++)
            memcpy(logits + (size_t)i * (size_t)f->cfg.vocab + v0,
                   f->gath + (size_t)r * blk + (size_t)i * nv, sizeof(float) * nv);
    }
    return DUET_OK;
}

duet_status_t fwd_create(const gguf_t *g, const model_config_t *cfg,
                         const fwd_opts_t *opts, fwd_t **fwd_p)
{
    cpu_opts_t co = {0};
    fwd_t *f;
    duet_status_t st;
    char name[96];

    if (g == NULL || cfg == NULL || opts == NULL || fwd_p == NULL)
        return DUET_ERR_INVALID;
    if (opts->n_threads < 0 || opts->n_blocks <= 0 || opts->block_size <= 0 ||
        (opts->kv_dtype != DTYPE_F16 && opts->kv_dtype != DTYPE_F32)) {
        log_error("forward: bad options (threads %d, blocks %d, block size %d, kv dtype %s)",
                  opts->n_threads, opts->n_blocks, opts->block_size, dtype_name(opts->kv_dtype));
        return DUET_ERR_INVALID;
    }
    if (opts->tp_size < 1 || opts->tp_rank < 0 || opts->tp_rank >= opts->tp_size ||
        (opts->tp_size > 1 && (opts->tp_group == NULL ||
                               group_size(opts->tp_group) != opts->tp_size ||
                               group_rank(opts->tp_group) != opts->tp_rank))) {
        log_error("forward: tensor parallel rank %d of %d needs its TP group of that size",
                  opts->tp_rank, opts->tp_size);
        return DUET_ERR_INVALID;
    }
    if (cfg->rope_scaling != ROPE_SCALING_NONE && cfg->rope_scaling != ROPE_SCALING_LINEAR) {
        log_error("forward: rope scaling other than linear is not supported");
        return DUET_ERR_UNSUPPORTED;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        return DUET_ERR_NOMEM;
    f->cfg = *cfg;
    f->shard = (tp_shard_t){.tp_rank = 0, .tp_size = 1};
    if (opts->tp_size > 1)
        CHECK_GOTO(tp_plan(f, g, opts), st, err_fwd);
    co.n_threads = opts->n_threads;
    CHECK_GOTO(cpu_backend_create(&co, &f->ops), st, err_fwd);

    CHECK_GOTO(weight_get(g, "token_embd.weight", &f->tok_embd), st, err_fwd);
    CHECK_GOTO(weight_get(g, cfg->tied_output ? "token_embd.weight" : "output.weight", &f->output),
               st, err_fwd);
    CHECK_GOTO(vec_get(g, "output_norm.weight", cfg->hidden, &f->out_norm), st, err_fwd);
    f->layers = calloc((size_t)cfg->n_layers, sizeof(fwd_layer_t));
    if (f->layers == NULL) {
        st = DUET_ERR_NOMEM;
        goto err_fwd;
    }
    for (int32_t i = 0; i < cfg->n_layers; i++) {
        fwd_layer_t *L = &f->layers[i];
        const struct { const char *sfx; ops_weight_t *w; } mats[] = {
            {"attn_q", &L->wq}, {"attn_k", &L->wk}, {"attn_v", &L->wv},
            {"attn_output", &L->wo}, {"ffn_gate", &L->w_gate}, {"ffn_up", &L->w_up},
            {"ffn_down", &L->w_down},
        };

        for (size_t m = 0; m < sizeof(mats) / sizeof(mats[0]); m++) {
            snprintf(name, sizeof(name), "blk.%d.%s.weight", i, mats[m].sfx);
            CHECK_GOTO(weight_get(g, name, mats[m].w), st, err_fwd);
        }
        for (size_t m = 0; m < sizeof(mats) / sizeof(mats[0]); m++)
            mats[m].w->precise = !opts->act_q8;
        snprintf(name, sizeof(name), "blk.%d.attn_norm.weight", i);
        CHECK_GOTO(vec_get(g, name, cfg->hidden, &L->attn_norm), st, err_fwd);
        snprintf(name, sizeof(name), "blk.%d.ffn_norm.weight", i);
        CHECK_GOTO(vec_get(g, name, cfg->hidden, &L->ffn_norm), st, err_fwd);
    }
    f->output.precise = !opts->act_q8;
    f->rope = (ops_rope_t){.base = cfg->rope_base, .rot_dim = cfg->rope_dim,
                           .scale = cfg->rope_scaling == ROPE_SCALING_LINEAR ? cfg->rope_scale : 1.0f};
    if (f->tp != NULL)
        CHECK_GOTO(tp_shard_weights(f, cfg), st, err_fwd);
    CHECK_GOTO(prepare_weights(f, true), st, err_fwd);

    f->layout = (kv_layout_t){.n_layers = cfg->n_layers, .n_blocks = opts->n_blocks,
                              .n_kv_heads = f->cfg.n_kv_heads, .block_size = opts->block_size,
                              .head_dim = cfg->head_dim, .dtype = opts->kv_dtype};
    f->slab_bytes = kv_slab_bytes(&f->layout);
    if (opts->kv_slab != NULL) {
        f->slab = opts->kv_slab;
    } else {
        f->slab = mmap(NULL, f->slab_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (f->slab == MAP_FAILED) {
            f->slab = NULL;
            log_error("forward: cannot map a KV slab of %zu bytes", f->slab_bytes);
            st = DUET_ERR_NOMEM;
            goto err_fwd;
        }
        f->own_slab = true;
    }
    if (opts->tp_rank == 0) {
        f->on_layer = opts->on_layer;
        f->layer_arg = opts->layer_arg;
    }
    log_debug("forward: %s, %d threads, KV %d blocks x %d tokens (%s, %.1f MiB)",
              f->ops->name, co.n_threads, opts->n_blocks, opts->block_size,
              dtype_name(opts->kv_dtype), (double)f->slab_bytes / 1048576.0);
    *fwd_p = f;
    return DUET_OK;

err_fwd:
    fwd_destroy(f);
    return st;
}

const kv_layout_t *fwd_kv_layout(const fwd_t *f)
{
    return &f->layout;
}

void *fwd_kv_slab(fwd_t *f)
{
    return f->slab;
}

static duet_status_t fwd_layer(fwd_t *f, const fwd_layer_t *L, int32_t layer, int32_t T,
                               int32_t n_seqs)
{
    const model_config_t *c = &f->cfg;
    ops_t *o = f->ops;
    ops_kv_t kv = {.slab = f->slab, .layout = &f->layout, .layer = layer};
    int64_t nh = (int64_t)T * c->hidden;
    float *y;       /* (T, hidden) row-parallel partial sums, then their total */

    /* attention block: x += Wo . attn(rope(Wq xn), rope(Wk xn), Wv xn) */
    CHECK(ops_rmsnorm(o, f->xn, f->x, L->attn_norm, T, c->hidden, c->rms_eps));
    {
        float *outs[] = {f->q, f->k, f->v};
        const ops_weight_t *ws[] = {&L->wq, &L->wk, &L->wv};

        CHECK(ops_matmul_n(o, outs, f->xn, ws, 3, T));
    }
    CHECK(ops_rope(o, f->q, f->pos, T, c->n_heads, c->head_dim, &f->rope));
    CHECK(ops_rope(o, f->k, f->pos, T, c->n_kv_heads, c->head_dim, &f->rope));
    CHECK(ops_kv_write(o, &kv, f->k, f->v, f->oseqs, n_seqs));
    CHECK(ops_attn(o, f->att, f->q, &kv, f->oseqs, n_seqs, c->n_heads,
                   1.0f / sqrtf((float)c->head_dim)));
    y = tp_sum_buffer(f, nh);
    CHECK(ops_matmul(o, y, f->att, &L->wo, T));
    CHECK(tp_sum(f, y, nh, &y));
    CHECK(ops_add(o, f->x, f->x, y, nh));

    /* feed-forward block: x += W_down . (silu(W_gate xn) * W_up xn) */
    CHECK(ops_rmsnorm(o, f->xn, f->x, L->ffn_norm, T, c->hidden, c->rms_eps));
    {
        float *outs[] = {f->gate, f->up};
        const ops_weight_t *ws[] = {&L->w_gate, &L->w_up};

        CHECK(ops_matmul_n(o, outs, f->xn, ws, 2, T));
    }
    CHECK(ops_silu_mul(o, f->gate, f->gate, f->up, (int64_t)T * c->ffn));
    y = tp_sum_buffer(f, nh);
    CHECK(ops_matmul(o, y, f->gate, &L->w_down, T));
    CHECK(tp_sum(f, y, nh, &y));
    CHECK(ops_add(o, f->x, f->x, y, nh));
    return DUET_OK;
}

duet_status_t fwd_run(fwd_t *f, const fwd_seq_t *seqs, int n_seqs, float *logits)
{
    const model_config_t *c;
    int64_t total = 0;
    int32_t T, n_want = 0, row = 0;

    if (f == NULL || seqs == NULL || n_seqs <= 0)
        return DUET_ERR_INVALID;
    c = &f->cfg;
    for (int s = 0; s < n_seqs; s++) {
        const fwd_seq_t *q = &seqs[s];

        if (q->tokens == NULL || q->n_new <= 0 || q->n_past < 0 ||
            (int64_t)q->n_past + q->n_new > c->ctx_len) {
            log_error("forward: sequence %d: %d new tokens after %d do not fit the context of %d",
                      s, q->n_new, q->n_past, c->ctx_len);
            return DUET_ERR_INVALID;
        }
        for (int32_t j = 0; j < q->n_new; j++) {
            if (q->tokens[j] < 0 || q->tokens[j] >= c->vocab) {
                log_error("forward: sequence %d: token id %d is outside the vocabulary of %d",
                          s, q->tokens[j], c->vocab);
                return DUET_ERR_INVALID;
            }
        }
        total += q->n_new;
        n_want += q->want_logits ? 1 : 0;
    }
    if (total > INT32_MAX || (n_want > 0 && logits == NULL && f->shard.tp_rank == 0))
        return DUET_ERR_INVALID;
    T = (int32_t)total;
    CHECK(scratch_grow(f, T, n_seqs));
    for (int s = 0; s < n_seqs; s++) {
        const fwd_seq_t *q = &seqs[s];

        f->oseqs[s] = (ops_seq_t){.n_new = q->n_new, .n_past = q->n_past,
                                  .block_table = q->block_table, .n_blocks = q->n_blocks};
        for (int32_t j = 0; j < q->n_new; j++) {
            f->tok[row + j] = q->tokens[j];
            f->pos[row + j] = q->n_past + j;
        }
        row += q->n_new;
        f->last[s] = row - 1;
    }
    CHECK(tp_embed(f, T));
    for (int32_t l = 0; l < c->n_layers; l++) {
        CHECK(fwd_layer(f, &f->layers[l], l, T, n_seqs));
        if (f->on_layer != NULL)
            f->on_layer(f->layer_arg, l);
    }
    if (n_want == 0)
        return DUET_OK;

    /* the last new token of each sequence that wants logits */
    row = 0;
    for (int s = 0; s < n_seqs; s++)
        if (seqs[s].want_logits)
            memcpy(f->xn + (size_t)row++ * (size_t)c->hidden,
                   f->x + (size_t)f->last[s] * (size_t)c->hidden, sizeof(float) * (size_t)c->hidden);
    CHECK(ops_rmsnorm(f->ops, f->xn, f->xn, f->out_norm, n_want, c->hidden, c->rms_eps));
    CHECK(tp_logits(f, logits, n_want));
    return DUET_OK;
}
