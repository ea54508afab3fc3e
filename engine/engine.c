/* The engine step loop: scheduler plan -> forward pass -> sampling. See
 * engine.h. */
#define DUET_LOG_COMPONENT "engine"

#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kv_layout.h"
#include "common/log.h"
#include "engine/block_manager.h"
#include "engine/executor.h"
#include "engine/forward.h"
#include "engine/scheduler.h"

struct engine {
    engine_opts_t         opts;
    const model_config_t *cfg;
    int32_t               vocab, eos, eot, max_model_len;
    bm_t                 *bm;
    sched_t              *sched;
    exec_t               *exec;       /* the forward pass on tp_size ranks */
    sampler_ws_t         *ws;
    sched_item_t         *items;      /* (max_running) */
    fwd_seq_t            *seqs;       /* (max_running) */
    engine_kv_seq_t      *kvseqs;     /* (max_running) the step, for on_layer_kv */
    int                   n_kvseqs;
    float                *logits;     /* (max_running, vocab) */
    engine_out_t         *outs;       /* (out_cap) */
    int                   n_out, out_cap;
    engine_out_t         *pending;    /* finishes to report at the next step */
    int                   n_pending, pending_cap;
    uint64_t              tokens_generated, tokens_prefilled;
};

const char *engine_finish_str(engine_finish_t f)
{
    switch (f) {
    case ENGINE_FINISH_NONE:      return "none";
    case ENGINE_FINISH_STOP:      return "stop";
    case ENGINE_FINISH_LENGTH:    return "length";
    case ENGINE_FINISH_PREFILLED: return "prefilled";
    }
    return "?";
}

void engine_opts_default(engine_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->threads = 0;
    o->kv_mem_mib = 256;
    o->kv_blocks = 0;
    o->block_size = 16;
    o->max_running = 64;
    o->max_step_tokens = 2048;
    o->max_model_len = 0;
    o->watermark = 0.01;
    o->chunked_prefill = true;
    o->prefix_caching = true;
    o->tp_rank = 0;
    o->tp_size = 1;
}

int engine_opts_flags(engine_opts_t *o, flag_t *flags, int max)
{
    const flag_t table[] = {
        { "kv-mem", 0, FLAG_INT, &o->kv_mem_mib, "KV cache size in MiB (when --kv-blocks is 0)",
          "MIB", 1, 1 << 20, 0, 0 },
        { "kv-blocks", 0, FLAG_INT, &o->kv_blocks, "KV cache size in blocks (0: from --kv-mem)",
          "N", 0, 1 << 24, 0, 0 },
        { "block-size", 0, FLAG_INT, &o->block_size, "tokens per KV block", "N", 1, 1024, 0, 0 },
        { "max-running", 0, FLAG_INT, &o->max_running, "requests in the running batch at most",
          "N", 1, 4096, 0, 0 },
        { "max-step-tokens", 0, FLAG_INT, &o->max_step_tokens,
          "token budget per engine step (decodes + prefill chunks)", "N", 1, 1 << 20, 0, 0 },
        { "max-model-len", 0, FLAG_INT, &o->max_model_len,
          "context length (0: the model's)", "N", 0, 1 << 24, 0, 0 },
        { "kv-watermark", 0, FLAG_DOUBLE, &o->watermark,
          "fraction of KV blocks kept free when admitting requests", "F", 0, 0, 0.0, 0.5 },
        { "chunked-prefill", 0, FLAG_BOOL, &o->chunked_prefill,
          "split long prompts into chunks that share steps with decodes", NULL, 0, 0, 0, 0 },
        { "prefix-caching", 0, FLAG_BOOL, &o->prefix_caching,
          "reuse the KV of shared prompt prefixes", NULL, 0, 0, 0, 0 },
    };
    int n = (int)(sizeof(table) / sizeof(table[0])), i;

    for (i = 0; i < n && i < max; i++)
        flags[i] = table[i];
    return i;
}

void engine_req_params_default(engine_req_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->max_tokens = 16;
    sampler_params_default(&p->sampling);
}

void engine_req_params_from_ctl(const ctl_sampling_t *s, uint64_t default_seed,
                                engine_req_params_t *p)
{
    engine_req_params_default(p);
    p->max_tokens = s->max_tokens > INT32_MAX ? INT32_MAX : (int32_t)s->max_tokens;
    p->sampling.temperature = (float)s->temperature;
    p->sampling.top_p = (float)s->top_p;
    p->sampling.min_p = (float)s->min_p;
    p->sampling.top_k = s->top_k < 0 ? 0 : s->top_k > INT32_MAX ? INT32_MAX : (int32_t)s->top_k;
    p->sampling.presence_penalty = (float)s->presence_penalty;
    p->sampling.frequency_penalty = (float)s->frequency_penalty;
    p->sampling.repetition_penalty = (float)s->repetition_penalty;
    p->sampling.ignore_eos = s->ignore_eos;
    p->sampling.seed = s->has_seed ? (uint64_t)s->seed : default_seed;
    for (uint32_t i = 0; i < s->n_eos && p->sampling.n_stop < SAMPLER_MAX_STOP; i++)
        p->sampling.stop_ids[p->sampling.n_stop++] = (int32_t)s->eos[i];
}

#define SET_ERR(...)                                     \
    do {                                                 \
        if (err != NULL && errlen > 0)                   \
            snprintf(err, errlen, __VA_ARGS__);          \
    } while (0)

static void engine_on_preempt(void *arg, uint64_t id)
{
    engine_t *e = arg;

    e->opts.on_preempt(e->opts.cb_arg, id);
}

static void engine_on_layer(void *arg, int32_t layer)
{
    engine_t *e = arg;

    e->opts.on_layer_kv(e->opts.cb_arg, layer, e->kvseqs, e->n_kvseqs);
}

duet_status_t engine_create(const gguf_t *g, const model_config_t *cfg,
                            const engine_opts_t *opts, engine_t **e_p,
                            char *err, size_t errlen)
{
    duet_status_t status = DUET_ERR_NOMEM;
    kv_layout_t layout;
    fwd_opts_t fo;
    exec_opts_t xo;
    bm_opts_t bo;
    sched_opts_t so;
    engine_t *e;
    uint32_t eos;
    int64_t n_blocks, cap_tokens;

    if (opts->block_size <= 0 || opts->max_running <= 0 || opts->max_step_tokens <= 0 ||
        opts->threads < 0 || opts->tp_size <= 0 || opts->tp_rank != 0 || opts->tp_timeout_s < 0 ||
        !(opts->watermark >= 0 && opts->watermark < 0.5)) {
        SET_ERR("bad engine options (block size %lld, max running %lld, step tokens %lld, "
                "threads %lld, watermark %g)", (long long)opts->block_size,
                (long long)opts->max_running, (long long)opts->max_step_tokens,
                (long long)opts->threads, opts->watermark);
        return DUET_ERR_INVALID;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return DUET_ERR_NOMEM;
    e->opts = *opts;
    e->cfg = cfg;
    e->vocab = cfg->vocab;
    /* End of generation: EOS, and end-of-turn where the file names one
     * (llama 3 style chat models end a reply with it). */
    e->eos = gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &eos) == DUET_OK &&
             eos < (uint32_t)cfg->vocab ? (int32_t)eos : -1;
    e->eot = gguf_get_u32(g, "tokenizer.ggml.eot_token_id", &eos) == DUET_OK &&
             eos < (uint32_t)cfg->vocab && (int32_t)eos != e->eos ? (int32_t)eos : -1;

    layout = (kv_layout_t){
        .n_layers = cfg->n_layers,
        .n_blocks = 1,
        .n_kv_heads = cfg->n_kv_heads / opts->tp_size > 0 ? cfg->n_kv_heads / opts->tp_size : 1,
        .block_size = (int32_t)opts->block_size,
        .head_dim = cfg->head_dim,
        .dtype = opts->kv_f32 ? DTYPE_F32 : DTYPE_F16,
    };
    n_blocks = opts->kv_blocks > 0 ? opts->kv_blocks
                                   : (int64_t)((size_t)opts->kv_mem_mib * (1u << 20) /
                                               kv_slab_bytes(&layout));
    if (n_blocks < 2 || n_blocks > INT32_MAX / 2) {
        SET_ERR("KV pool of %lld blocks is unusable (raise --kv-mem or --kv-blocks)",
                (long long)n_blocks);
        status = DUET_ERR_INVALID;
        goto err_free;
    }
    bo = (bm_opts_t){
        .n_blocks = (int32_t)n_blocks,
        .block_size = (int32_t)opts->block_size,
        .watermark_blocks = (int32_t)(opts->watermark * (double)n_blocks),
        .prefix_caching = opts->prefix_caching,
    };
    e->max_model_len = opts->max_model_len > 0 && opts->max_model_len < cfg->ctx_len
                           ? (int32_t)opts->max_model_len : cfg->ctx_len;
    cap_tokens = (int64_t)(bo.n_blocks - bo.watermark_blocks) * bo.block_size;
    if (e->max_model_len > cap_tokens) {
        log_warn("KV pool holds %lld tokens: context limited from %d to that",
                 (long long)cap_tokens, e->max_model_len);
        e->max_model_len = (int32_t)cap_tokens;
    }
    so = (sched_opts_t){
        .max_running = (int32_t)opts->max_running,
        .max_step_tokens = (int32_t)opts->max_step_tokens,
        .chunked_prefill = opts->chunked_prefill,
        .on_preempt = opts->on_preempt != NULL ? engine_on_preempt : NULL,
        .cb_arg = e,
    };
    fo = (fwd_opts_t){
        .n_threads = (int)opts->threads,
        .n_blocks = bo.n_blocks,
        .block_size = bo.block_size,
        .kv_dtype = layout.dtype,
        .tp_rank = opts->tp_rank,
        .tp_size = opts->tp_size,
        .kv_slab = opts->kv_slab,
        .on_layer = opts->on_layer_kv != NULL ? engine_on_layer : NULL,
        .layer_arg = e,
    };
    if (bm_create(&bo, &e->bm) != DUET_OK) {
        SET_ERR("cannot create the block manager (%d blocks)", bo.n_blocks);
        goto err_free;
    }
    if (sched_create(&so, e->bm, &e->sched) != DUET_OK ||
        sampler_ws_create(e->vocab, &e->ws) != DUET_OK) {
        SET_ERR("out of memory creating the scheduler");
        goto err_free;
    }
    e->items = calloc((size_t)opts->max_running, sizeof(*e->items));
    e->seqs = calloc((size_t)opts->max_running, sizeof(*e->seqs));
    e->kvseqs = calloc((size_t)opts->max_running, sizeof(*e->kvseqs));
    e->logits = malloc(sizeof(float) * (size_t)opts->max_running * (size_t)e->vocab);
    e->out_cap = (int)opts->max_running;
    e->outs = calloc((size_t)e->out_cap, sizeof(*e->outs));
    if (e->items == NULL || e->seqs == NULL || e->kvseqs == NULL || e->logits == NULL ||
        e->outs == NULL) {
        SET_ERR("out of memory for %lld running requests", (long long)opts->max_running);
        goto err_free;
    }
    xo = (exec_opts_t){
        .tp_size = opts->tp_size,
        .timeout_s = opts->tp_timeout_s,
        /* the largest step: every token of the budget, every block table whole */
        .plan_capacity = 64 + sizeof(int32_t) * ((size_t)opts->max_step_tokens +
                         (size_t)opts->max_running * (4 + (size_t)e->max_model_len /
                                                          (size_t)bo.block_size + 2)),
        .hooks = opts->rank_hooks,
    };
    status = exec_create(g, cfg, &fo, &xo, &e->exec, err, errlen);
    if (status != DUET_OK)
        goto err_free;
    log_info("engine: %d KV blocks of %d tokens (%.1f MiB), context %d, %lld running, "
             "%lld tokens per step, chunked prefill %s, prefix caching %s",
             bo.n_blocks, bo.block_size,
             (double)kv_slab_bytes(&layout) * (double)bo.n_blocks / (1 << 20), e->max_model_len,
             (long long)opts->max_running, (long long)opts->max_step_tokens,
             opts->chunked_prefill ? "on" : "off", opts->prefix_caching ? "on" : "off");
    *e_p = e;
    return DUET_OK;

err_free:
    engine_destroy(e);
    return status;
}

void engine_destroy(engine_t *e)
{
    sched_req_t *r;

    if (e == NULL)
        return;
    if (e->sched != NULL) {
        for (r = sched_next_req(e->sched, NULL); r != NULL; r = sched_next_req(e->sched, r)) {
            sampler_destroy(r->user);
            r->user = NULL;
        }
        sched_destroy(e->sched);
    }
    exec_destroy(e->exec);
    bm_destroy(e->bm);
    sampler_ws_destroy(e->ws);
    free(e->items);
    free(e->seqs);
    free(e->kvseqs);
    free(e->logits);
    free(e->outs);
    free(e->pending);
    free(e);
}

int32_t engine_eos(const engine_t *e)
{
    return e->eos;
}

int32_t engine_vocab(const engine_t *e)
{
    return e->vocab;
}

exec_t *engine_executor(engine_t *e)
{
    return e->exec;
}

const kv_layout_t *engine_kv_layout(const engine_t *e)
{
    return exec_kv_layout(e->exec);
}

void *engine_kv_slab(engine_t *e)
{
    return exec_kv_slab(e->exec);
}

/* --- adding requests --------------------------------------------------------- */

static duet_status_t check_req(const engine_t *e, uint64_t id, const int32_t *prompt,
                               int32_t n_prompt, const engine_req_params_t *p,
                               char *err, size_t errlen)
{
    int32_t i;

    if (sched_find(e->sched, id) != NULL) {
        SET_ERR("request id %llu is already in use", (unsigned long long)id);
        return DUET_ERR_INVALID;
    }
    if (p->max_tokens < 1) {
        SET_ERR("max_tokens must be at least 1, got %d", p->max_tokens);
        return DUET_ERR_INVALID;
    }
    if (n_prompt < 1 || prompt == NULL) {
        SET_ERR("the prompt is empty");
        return DUET_ERR_INVALID;
    }
    if (n_prompt >= e->max_model_len) {
        SET_ERR("the prompt has %d tokens; the context holds %d, so at most %d", n_prompt,
                e->max_model_len, e->max_model_len - 1);
        return DUET_ERR_INVALID;
    }
    if (!e->opts.chunked_prefill && n_prompt > e->opts.max_step_tokens) {
        SET_ERR("the prompt has %d tokens, over the %lld-token step budget (chunked prefill "
                "is off)", n_prompt, (long long)e->opts.max_step_tokens);
        return DUET_ERR_INVALID;
    }
    for (i = 0; i < n_prompt; i++) {
        if (prompt[i] < 0 || prompt[i] >= e->vocab) {
            SET_ERR("prompt token %d at position %d is outside the vocabulary [0, %d)",
                    prompt[i], i, e->vocab);
            return DUET_ERR_INVALID;
        }
    }
    return sampler_params_check(&p->sampling, e->vocab, err, errlen);
}

static duet_status_t new_req(engine_t *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
                             const engine_req_params_t *p, sched_req_t **r_p,
                             char *err, size_t errlen)
{
    duet_status_t status;
    sampler_t *smp = NULL;
    sched_req_t *r;

    CHECK(check_req(e, id, prompt, n_prompt, p, err, errlen));
    status = sampler_create(&p->sampling, e->vocab, prompt, n_prompt, &smp);
    if (status != DUET_OK) {
        SET_ERR("out of memory for the sampler");
        return status;
    }
    status = sched_req_new(e->sched, id, prompt, n_prompt, p->max_tokens, &r);
    if (status != DUET_OK) {
        SET_ERR("out of memory for the request");
        sampler_destroy(smp);
        return status;
    }
    r->user = smp;
    *r_p = r;
    return DUET_OK;
}

static void drop_req(engine_t *e, sched_req_t *r)
{
    sampler_destroy(r->user);
    r->user = NULL;
    sched_remove(e->sched, r);
}

duet_status_t engine_add(engine_t *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
                         const engine_req_params_t *params, char *err, size_t errlen)
{
    sched_req_t *r;

    CHECK(new_req(e, id, prompt, n_prompt, params, &r, err, errlen));
    sched_enqueue(e->sched, r);
    return DUET_OK;
}

duet_status_t engine_reserve(engine_t *e, uint64_t id, const int32_t *prompt,
                             int32_t n_prompt, const engine_req_params_t *params,
                             const int32_t **blocks_p, int32_t *n_blocks_p,
                             char *err, size_t errlen)
{
    duet_status_t status;
    sched_req_t *r;

    CHECK(new_req(e, id, prompt, n_prompt, params, &r, err, errlen));
    status = sched_reserve(e->sched, r);
    if (status != DUET_OK) {
        SET_ERR("no room in the KV pool for %d tokens (%d blocks free)", n_prompt,
                bm_n_free(e->bm));
        drop_req(e, r);
        return status;
    }
    *blocks_p = r->seq.blocks;
    *n_blocks_p = r->seq.n;
    return DUET_OK;
}

static duet_status_t push_pending(engine_t *e, uint64_t id, engine_finish_t f)
{
    if (e->n_pending == e->pending_cap) {
        int cap = e->pending_cap ? e->pending_cap * 2 : 8;
        engine_out_t *p = realloc(e->pending, sizeof(*p) * (size_t)cap);
        if (p == NULL)
            return DUET_ERR_NOMEM;
        e->pending = p;
        e->pending_cap = cap;
    }
    e->pending[e->n_pending++] = (engine_out_t){ .req_id = id, .token = -1, .finish = f };
    return DUET_OK;
}

/* Finish reason after token was appended to r. */
static engine_finish_t finish_of(const engine_t *e, const sched_req_t *r, int32_t token)
{
    if (sampler_is_stop(r->user, token, e->eos) ||
        (e->eot >= 0 && sampler_is_stop(r->user, token, e->eot)))
        return ENGINE_FINISH_STOP;
    if (r->n_tokens - r->n_prompt >= r->max_tokens || r->n_tokens >= e->max_model_len)
        return ENGINE_FINISH_LENGTH;
    return ENGINE_FINISH_NONE;
}

duet_status_t engine_add_prefilled(engine_t *e, uint64_t id, int32_t first_token,
                                   const uint64_t rng[SAMPLER_RNG_WORDS])
{
    sched_req_t *r = sched_find(e->sched, id);
    engine_finish_t f;

    if (r == NULL)
        return DUET_ERR_NOT_FOUND;
    if (r->state != REQ_RESERVED || first_token < 0 || first_token >= e->vocab)
        return DUET_ERR_INVALID;
    CHECK(sched_append(e->sched, r, first_token));
    CHECK(sampler_accept(r->user, first_token));
    if (rng != NULL)
        sampler_rng_set(r->user, rng);
    f = finish_of(e, r, first_token);
    if (f != ENGINE_FINISH_NONE) {
        CHECK(push_pending(e, id, f));
        drop_req(e, r);
        return DUET_OK;
    }
    sched_mark_prefilled_kv(e->sched, r);
    return DUET_OK;
}

/* --- stepping ------------------------------------------------------------------ */

static void emit(engine_t *e, uint64_t id, int32_t token, engine_finish_t f)
{
    if (e->n_out == e->out_cap) {
        /* out_cap >= max_running >= items per step; pending finishes may
         * add more. */
        int cap = e->out_cap * 2;
        engine_out_t *o = realloc(e->outs, sizeof(*o) * (size_t)cap);
        if (o == NULL) {
            log_error("out of memory for step outputs: dropping an event of request %llu",
                      (unsigned long long)id);
            return;
        }
        e->outs = o;
        e->out_cap = cap;
    }
    e->outs[e->n_out++] = (engine_out_t){ .req_id = id, .token = token, .finish = f };
}

bool engine_step_ran(const engine_t *e)
{
    return e->n_kvseqs > 0 || e->n_out > 0;
}

bool engine_has_work(const engine_t *e)
{
    sched_stats_t st;

    sched_stats(e->sched, &st);
    return e->n_pending > 0 || st.running > 0 || st.waiting > 0;
}

duet_status_t engine_step(engine_t *e, const engine_out_t **outs_p, int *n_out_p)
{
    duet_status_t status;
    int n_items = 0, i, k = 0;

    e->n_out = 0;
    sched_schedule(e->sched, e->items, &n_items);
    for (i = 0; i < n_items; i++) {
        const sched_item_t *it = &e->items[i];
        e->seqs[i] = (fwd_seq_t){
            .tokens = it->req->tokens + it->req->n_computed,
            .n_new = it->n_new,
            .n_past = it->req->n_computed,
            .block_table = it->req->seq.blocks,
            .n_blocks = it->req->seq.n,
            .want_logits = it->want_logits,
        };
        e->kvseqs[i] = (engine_kv_seq_t){
            .req_id = it->req->id, .n_past = it->req->n_computed, .n_new = it->n_new,
            .n_prompt = it->req->n_prompt, .blocks = it->req->seq.blocks,
            .n_blocks = it->req->seq.n,
        };
    }
    e->n_kvseqs = n_items;
    if (n_items > 0) {
        status = exec_run(e->exec, e->seqs, n_items, e->logits);
        if (status != DUET_OK) {
            /* Nothing advanced: the same plan can run again next step. */
            log_error("forward pass failed: %s", duet_status_str(status));
            return status;
        }
    }
    /* Finishes from engine_add_prefilled, reported once a step succeeds. */
    for (i = 0; i < e->n_pending; i++)
        emit(e, e->pending[i].req_id, e->pending[i].token, e->pending[i].finish);
    e->n_pending = 0;

    for (i = 0; i < n_items; i++) {
        const sched_item_t *it = &e->items[i];
        sched_req_t *r = it->req;
        engine_finish_t f;
        int32_t tok;

        sched_advance(e->sched, it);
        e->tokens_prefilled += (uint64_t)it->n_new;
        if (!it->want_logits)
            continue;
        tok = sampler_sample(r->user, e->ws, e->logits + (size_t)k * (size_t)e->vocab);
        k++;
        if (sched_append(e->sched, r, tok) != DUET_OK || sampler_accept(r->user, tok) != DUET_OK) {
            log_error("out of memory: request %llu stops", (unsigned long long)r->id);
            f = ENGINE_FINISH_LENGTH;
        } else {
            f = finish_of(e, r, tok);
        }
        e->tokens_generated++;
        if (f == ENGINE_FINISH_NONE && e->opts.prefill_only)
            f = ENGINE_FINISH_PREFILLED;
        emit(e, r->id, tok, f);
        if (f == ENGINE_FINISH_PREFILLED) {
            sched_finish(e->sched, r, REQ_PREFILLED);
            if (e->opts.on_prefilled != NULL)
                e->opts.on_prefilled(e->opts.cb_arg, r->id, tok, r->seq.blocks, r->seq.n,
                                     r->n_computed);
        } else if (f != ENGINE_FINISH_NONE) {
            sched_finish(e->sched, r, REQ_FINISHED);
            drop_req(e, r);
        }
    }
    *outs_p = e->outs;
    *n_out_p = e->n_out;
    return DUET_OK;
}

duet_status_t engine_abort(engine_t *e, uint64_t id)
{
    sched_req_t *r = sched_find(e->sched, id);
    int i;

    if (r == NULL) {
        /* A finish waiting to be reported is dropped with its request. */
        for (i = 0; i < e->n_pending; i++) {
            if (e->pending[i].req_id == id) {
                memmove(&e->pending[i], &e->pending[i + 1],
                        sizeof(*e->pending) * (size_t)(e->n_pending - i - 1));
                e->n_pending--;
                return DUET_OK;
            }
        }
        return DUET_ERR_NOT_FOUND;
    }
    drop_req(e, r);
    return DUET_OK;
}

duet_status_t engine_release(engine_t *e, uint64_t id)
{
    sched_req_t *r = sched_find(e->sched, id);

    if (r == NULL)
        return DUET_ERR_NOT_FOUND;
    if (r->state != REQ_PREFILLED)
        return DUET_ERR_INVALID;
    drop_req(e, r);
    return DUET_OK;
}

duet_status_t engine_req_rng(const engine_t *e, uint64_t id, uint64_t rng[SAMPLER_RNG_WORDS])
{
    const sched_req_t *r = sched_find(e->sched, id);

    if (r == NULL)
        return DUET_ERR_NOT_FOUND;
    sampler_rng_get(r->user, rng);
    return DUET_OK;
}

void engine_stats(const engine_t *e, engine_stats_t *st)
{
    sched_stats_t ss;
    bm_stats_t bs;

    sched_stats(e->sched, &ss);
    bm_stats(e->bm, &bs);
    memset(st, 0, sizeof(*st));
    st->running = ss.running;
    st->waiting = ss.waiting;
    st->reserved = ss.reserved;
    st->prefilled = ss.prefilled;
    st->kv_blocks = bs.n_blocks;
    st->kv_free = bs.free;
    st->kv_used = bs.used;
    st->kv_cached = bs.cached;
    st->kv_usage = (double)bs.used / (double)bs.n_blocks;
    st->preemptions = ss.preemptions;
    st->prefix_queries = bs.queries;
    st->prefix_hits = bs.hits;
    st->steps = ss.steps;
    st->tokens_generated = e->tokens_generated;
    st->tokens_prefilled = e->tokens_prefilled;
    st->max_model_len = e->max_model_len;
}

duet_status_t engine_check(const engine_t *e, char *err, size_t errlen)
{
    return sched_check(e->sched, err, errlen);
}
