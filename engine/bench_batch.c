/* Batch sweep of the engine: decode throughput per batch size and prefill
 * throughput with and without chunking. See bench_batch.h. */
#define DUET_LOG_COMPONENT "bench"

#include "engine/bench_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

void bench_batch_opts_default(bench_batch_opts_t *o)
{
    static const int32_t batches[] = { 1, 4, 16, 64 };

    memset(o, 0, sizeof(*o));
    memcpy(o->batches, batches, sizeof(batches));
    o->n_batches = 4;
    o->prompt_len = 32;
    o->gen_len = 32;
    o->prefill_reqs = 4;
    o->prefill_len = 512;
    o->chunk = 256;
    o->seed = 1;
}

static uint64_t next_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static void fill_prompt(int32_t *t, int32_t n, int32_t vocab, uint64_t *s)
{
    int32_t i;

    for (i = 0; i < n; i++)
        t[i] = (int32_t)(next_rand(s) % (uint64_t)vocab);
}

/* Add n requests of len random tokens generating up to max_tokens. */
static duet_status_t add_reqs(engine_t *e, int32_t n, int32_t len, int32_t max_tokens,
                              uint64_t *seed, char *err, size_t errlen)
{
    engine_req_params_t p;
    int32_t *t = malloc(sizeof(*t) * (size_t)len), i;
    duet_status_t status = DUET_OK;

    if (t == NULL)
        return DUET_ERR_NOMEM;
    engine_req_params_default(&p);
    p.max_tokens = max_tokens;
    p.sampling.ignore_eos = true;
    for (i = 0; i < n && status == DUET_OK; i++) {
        fill_prompt(t, len, engine_vocab(e), seed);
        status = engine_add(e, (uint64_t)i + 1, t, len, &p, err, errlen);
    }
    free(t);
    return status;
}

static duet_status_t make_engine(const gguf_t *g, const model_config_t *cfg,
                                 const engine_opts_t *base, int32_t max_running,
                                 int32_t budget, bool chunked, int64_t tokens_per_req,
                                 engine_t **e_p, char *err, size_t errlen)
{
    engine_opts_t o = *base;
    int64_t per_req = (tokens_per_req + base->block_size - 1) / base->block_size;

    o.max_running = max_running;
    o.max_step_tokens = budget;
    o.chunked_prefill = chunked;
    o.prefix_caching = false;
    o.watermark = 0.0;
    o.kv_blocks = per_req * max_running + 4;
    o.prefill_only = false;
    o.on_prefilled = NULL;
    return engine_create(g, cfg, &o, e_p, err, errlen);
}

static duet_status_t decode_row(const gguf_t *g, const model_config_t *cfg,
                                const engine_opts_t *eo, const bench_batch_opts_t *bo,
                                int32_t batch, bench_batch_row_t *row, char *err, size_t errlen)
{
    int32_t budget = batch * bo->prompt_len > eo->max_step_tokens
                         ? batch * bo->prompt_len : (int32_t)eo->max_step_tokens;
    const engine_out_t *outs;
    engine_stats_t st;
    duet_status_t status;
    engine_t *e = NULL;
    uint64_t seed = bo->seed, tokens = 0;
    double t0, t1;
    int n, s, i;

    CHECK(make_engine(g, cfg, eo, batch, budget, true, bo->prompt_len + bo->gen_len + 2, &e,
                      err, errlen));
    CHECK_GOTO(add_reqs(e, batch, bo->prompt_len, bo->gen_len + 1, &seed, err, errlen), status,
               err_engine);
    /* Prefill every request (its first token), untimed. */
    do {
        CHECK_GOTO(engine_step(e, &outs, &n), status, err_engine);
        engine_stats(e, &st);
    } while (st.tokens_generated < (uint64_t)batch);

    t0 = clock_now_s();
    for (s = 0; s < bo->gen_len; s++) {
        CHECK_GOTO(engine_step(e, &outs, &n), status, err_engine);
        for (i = 0; i < n; i++)
            tokens += outs[i].token >= 0;
    }
    t1 = clock_now_s();
    row->batch = batch;
    row->tok_s = (double)tokens / (t1 - t0);
    row->step_ms = (t1 - t0) * 1e3 / bo->gen_len;
    row->ratio = 0.0;
    engine_destroy(e);
    return DUET_OK;

err_engine:
    if (err != NULL && errlen > 0 && err[0] == 0)
        snprintf(err, errlen, "decode at batch %d: %s", batch, duet_status_str(status));
    engine_destroy(e);
    return status;
}

static duet_status_t prefill_run(const gguf_t *g, const model_config_t *cfg,
                                 const engine_opts_t *eo, const bench_batch_opts_t *bo,
                                 bool chunked, double *tok_s_p, char *err, size_t errlen)
{
    int32_t total = bo->prefill_reqs * bo->prefill_len;
    int32_t budget = chunked ? bo->chunk : (total > bo->prefill_len ? total : bo->prefill_len);
    const engine_out_t *outs;
    duet_status_t status;
    engine_t *e = NULL;
    uint64_t seed = bo->seed + 1;
    double t0, t1;
    int n;

    CHECK(make_engine(g, cfg, eo, bo->prefill_reqs, budget, chunked, bo->prefill_len + 2, &e,
                      err, errlen));
    CHECK_GOTO(add_reqs(e, bo->prefill_reqs, bo->prefill_len, 1, &seed, err, errlen), status,
               err_engine);
    t0 = clock_now_s();
    while (engine_has_work(e))
        CHECK_GOTO(engine_step(e, &outs, &n), status, err_engine);
    t1 = clock_now_s();
    *tok_s_p = (double)total / (t1 - t0);
    engine_destroy(e);
    return DUET_OK;

err_engine:
    if (err != NULL && errlen > 0 && err[0] == 0)
        snprintf(err, errlen, "prefill (%s): %s", chunked ? "chunked" : "whole",
                 duet_status_str(status));
    engine_destroy(e);
    return status;
}

duet_status_t bench_batch_run(const gguf_t *g, const model_config_t *cfg,
                              const engine_opts_t *eo, const bench_batch_opts_t *bo,
                              bench_batch_result_t *res, char *err, size_t errlen)
{
    bench_batch_result_t r;
    double base = 0.0;
    int i;

    if (bo->n_batches < 1 || bo->n_batches > BENCH_BATCH_MAX || bo->prompt_len < 1 ||
        bo->gen_len < 1 || bo->prefill_reqs < 1 || bo->prefill_len < 1 || bo->chunk < 1) {
        snprintf(err, errlen, "bad benchmark options");
        return DUET_ERR_INVALID;
    }
    for (i = 0; i < bo->n_batches; i++) {
        if (bo->batches[i] < 1 || bo->batches[i] > 4096) {
            snprintf(err, errlen, "batch size %d is outside [1, 4096]", bo->batches[i]);
            return DUET_ERR_INVALID;
        }
    }
    memset(&r, 0, sizeof(r));
    if (err != NULL && errlen > 0)
        err[0] = 0;
    for (i = 0; i < bo->n_batches; i++) {
        CHECK(decode_row(g, cfg, eo, bo, bo->batches[i], &r.rows[i], err, errlen));
        if (bo->batches[i] == 1)
            base = r.rows[i].tok_s;
        r.n_rows++;
    }
    for (i = 0; i < r.n_rows; i++)
        r.rows[i].ratio = base > 0.0 ? r.rows[i].tok_s / base : 0.0;
    CHECK(prefill_run(g, cfg, eo, bo, true, &r.prefill_chunked_tok_s, err, errlen));
    CHECK(prefill_run(g, cfg, eo, bo, false, &r.prefill_whole_tok_s, err, errlen));
    r.prompt_len = bo->prompt_len;
    r.gen_len = bo->gen_len;
    r.prefill_reqs = bo->prefill_reqs;
    r.prefill_len = bo->prefill_len;
    r.chunk = bo->chunk;
    r.threads = eo->threads;
    *res = r;
    return DUET_OK;
}

void bench_batch_print(FILE *out, const bench_batch_result_t *r, bool json)
{
    int i;

    if (json) {
        fprintf(out, "{\"decode\": {\"prompt_len\": %d, \"steps\": %d, \"rows\": [", r->prompt_len,
                r->gen_len);
        for (i = 0; i < r->n_rows; i++)
            fprintf(out, "%s{\"batch\": %d, \"tok_s\": %.3f, \"step_ms\": %.3f, "
                    "\"ratio_to_batch1\": %.3f}", i ? ", " : "", r->rows[i].batch,
                    r->rows[i].tok_s, r->rows[i].step_ms, r->rows[i].ratio);
        fprintf(out, "]}, \"prefill\": {\"requests\": %d, \"prompt_len\": %d, \"chunk\": %d, "
                "\"chunked_tok_s\": %.3f, \"whole_tok_s\": %.3f}, \"threads\": %lld}\n",
                r->prefill_reqs, r->prefill_len, r->chunk, r->prefill_chunked_tok_s,
                r->prefill_whole_tok_s, (long long)r->threads);
        return;
    }
    fprintf(out, "decode: prompt %d tokens, %d timed steps per batch size\n", r->prompt_len,
            r->gen_len);
    fprintf(out, "%8s %12s %10s %10s\n", "batch", "tokens/s", "step ms", "x batch 1");
    for (i = 0; i < r->n_rows; i++)
        fprintf(out, "%8d %12.1f %10.2f %10.2f\n", r->rows[i].batch, r->rows[i].tok_s,
                r->rows[i].step_ms, r->rows[i].ratio);
    fprintf(out, "prefill: %d x %d tokens: chunked (%d per step) %.1f tokens/s, "
            "whole prompts %.1f tokens/s (chunked / whole %.2f)\n", r->prefill_reqs,
            r->prefill_len, r->chunk, r->prefill_chunked_tok_s, r->prefill_whole_tok_s,
            r->prefill_whole_tok_s > 0 ? r->prefill_chunked_tok_s / r->prefill_whole_tok_s : 0);
}
