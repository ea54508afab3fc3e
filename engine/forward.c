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

void fwd_destroy(fwd_t *f)
{
    if (f == NULL)
        return;
    if (f->layers != NULL) {
        for (int32_t i = 0; i < f->cfg.n_layers; i++) {
            free(f->layers[i].attn_norm);
            free(f->layers[i].ffn_norm);
        }
        free(f->layers);
    }
    free(f->out_norm);
    if (f->own_slab && f->slab != NULL)
        munmap(f->slab, f->slab_bytes);
    scratch_free(f);
    ops_destroy(f->ops);
    free(f);
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
    if (opts->tp_size != 1 || opts->tp_rank != 0) {
        log_error("forward: tensor parallel shards (tp %d/%d) are not implemented on CPU yet",
                  opts->tp_rank, opts->tp_size);
        return DUET_ERR_UNSUPPORTED;
    }
    if (cfg->rope_scaling != ROPE_SCALING_NONE && cfg->rope_scaling != ROPE_SCALING_LINEAR) {
        log_error("forward: rope scaling other than linear is not supported");
        return DUET_ERR_UNSUPPORTED;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        return DUET_ERR_NOMEM;
    f->cfg = *cfg;
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

    f->layout = (kv_layout_t){.n_layers = cfg->n_layers, .n_blocks = opts->n_blocks,
                              .n_kv_heads = cfg->n_kv_heads, .block_size = opts->block_size,
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

    /* attention block: x += Wo . attn(rope(Wq xn), rope(Wk xn), Wv xn) */
    CHECK(ops_rmsnorm(o, f->xn, f->x, L->attn_norm, T, c->hidden, c->rms_eps));
    CHECK(ops_matmul(o, f->q, f->xn, &L->wq, T));
    CHECK(ops_matmul(o, f->k, f->xn, &L->wk, T));
    CHECK(ops_matmul(o, f->v, f->xn, &L->wv, T));
    CHECK(ops_rope(o, f->q, f->pos, T, c->n_heads, c->head_dim, &f->rope));
    CHECK(ops_rope(o, f->k, f->pos, T, c->n_kv_heads, c->head_dim, &f->rope));
    CHECK(ops_kv_write(o, &kv, f->k, f->v, f->oseqs, n_seqs));
    CHECK(ops_attn(o, f->att, f->q, &kv, f->oseqs, n_seqs, c->n_heads,
                   1.0f / sqrtf((float)c->head_dim)));
    CHECK(ops_matmul(o, f->xn, f->att, &L->wo, T));
    CHECK(ops_add(o, f->x, f->x, f->xn, nh));

    /* feed-forward block: x += W_down . (silu(W_gate xn) * W_up xn) */
    CHECK(ops_rmsnorm(o, f->xn, f->x, L->ffn_norm, T, c->hidden, c->rms_eps));
    CHECK(ops_matmul(o, f->gate, f->xn, &L->w_gate, T));
    CHECK(ops_matmul(o, f->up, f->xn, &L->w_up, T));
    CHECK(ops_silu_mul(o, f->gate, f->gate, f->up, (int64_t)T * c->ffn));
    CHECK(ops_matmul(o, f->xn, f->gate, &L->w_down, T));
    CHECK(ops_add(o, f->x, f->x, f->xn, nh));
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
    if (total > INT32_MAX || (n_want > 0 && logits == NULL))
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
    CHECK(ops_embed(f->ops, f->x, &f->tok_embd, f->tok, T));
    for (int32_t l = 0; l < c->n_layers; l++)
        CHECK(fwd_layer(f, &f->layers[l], l, T, n_seqs));
    if (n_want == 0)
        return DUET_OK;

    /* the last new token of each sequence that wants logits */
    row = 0;
    for (int s = 0; s < n_seqs; s++)
        if (seqs[s].want_logits)
            memcpy(f->xn + (size_t)row++ * (size_t)c->hidden,
                   f->x + (size_t)f->last[s] * (size_t)c->hidden, sizeof(float) * (size_t)c->hidden);
    CHECK(ops_rmsnorm(f->ops, f->xn, f->xn, f->out_norm, n_want, c->hidden, c->rms_eps));
    CHECK(ops_logits(f->ops, logits, f->xn, &f->output, n_want));
    return DUET_OK;
}
