/* The engine over the real forward pass, on a small `duet mkmodel` model:
 *   - 32 requests of mixed lengths batched (with and without chunked
 *     prefill) give the same greedy tokens as each run alone;
 *   - prefix caching on and off give the same tokens, and hits rise;
 *   - a KV pool too small for the load preempts, same tokens;
 *   - seeded sampling is per request: batched == alone;
 *   - prefill-only + decode (KV copied between two engines' slabs, the
 *     first token and PRNG state handed over) == colocated;
 *   - bad parameters are refused at add time; abort works in every state;
 *   - every block is free after every test. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "tests/unit/engine_testutil.h"

#define N_REQ   32
#define MAX_GEN 24

typedef struct {
    int32_t toks[160];
    int32_t n;
    engine_req_params_t p;
} treq_t;

static treq_t reqs[N_REQ];
static tmodel_t model;

static uint64_t lcg = 12345;

static uint32_t rnd(uint32_t n)
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(lcg >> 33) % n;
}

/* Mixed lengths; when shared_prefix, every prompt starts with the same 48
 * tokens. */
static void make_reqs(bool shared_prefix, bool sampled)
{
    int i, j;

    for (i = 0; i < N_REQ; i++) {
        treq_t *r = &reqs[i];
        r->n = shared_prefix ? 49 + (int32_t)rnd(60) : 1 + (int32_t)rnd(120);
        for (j = 0; j < r->n; j++)
            r->toks[j] = (shared_prefix && j < 48) ? (j * 7) % model.cfg.vocab
                                                    : (int32_t)rnd((uint32_t)model.cfg.vocab);
        engine_req_params_default(&r->p);
        r->p.max_tokens = 1 + (int32_t)rnd(MAX_GEN);
        if (sampled) {
            r->p.sampling.temperature = 0.9f;
            r->p.sampling.top_p = 0.9f;
            r->p.sampling.seed = 1000 + (uint64_t)i;
        }
    }
}

static void opts_for(engine_opts_t *o, int64_t kv_blocks, int64_t budget, bool pc)
{
    engine_opts_default(o);
    o->threads = 1;
    o->kv_blocks = kv_blocks;
    o->max_step_tokens = budget;
    o->prefix_caching = pc;
    o->max_running = 64;
}

/* Every request alone, in one engine (prefix caching off). */
static int run_alone(touts_t *out)
{
    engine_opts_t o;
    engine_t *e;
    int i, okay = 1;

    opts_for(&o, 256, 2048, false);
    e = tengine(&model, &o);
    if (e == NULL)
        return 0;
    for (i = 0; i < N_REQ && okay; i++) {
        okay = engine_add(e, (uint64_t)i + 1, reqs[i].toks, reqs[i].n, &reqs[i].p, NULL, 0) ==
                   DUET_OK && trun(e, out, MAX_GEN, 10000) >= 0;
    }
    okay = okay && tengine_whole(e);
    engine_destroy(e);
    return okay;
}

static int run_batched(touts_t *out, const engine_opts_t *o, engine_stats_t *st)
{
    engine_t *e = tengine(&model, o);
    int i, okay = 1;

    if (e == NULL)
        return 0;
    for (i = 0; i < N_REQ && okay; i++)
        okay = engine_add(e, (uint64_t)i + 1, reqs[i].toks, reqs[i].n, &reqs[i].p, NULL, 0) ==
               DUET_OK;
    okay = okay && trun(e, out, MAX_GEN, 100000) >= 0;
    engine_stats(e, st);
    okay = okay && tengine_whole(e);
    engine_destroy(e);
    return okay;
}

static void test_batched_equals_alone(void)
{
    touts_t ref = { 0 }, got = { 0 };
    engine_opts_t o;
    engine_stats_t st;

    make_reqs(false, false);
    ok(run_alone(&ref), "32 greedy requests one at a time");
    opts_for(&o, 256, 2048, false);
    ok(run_batched(&got, &o, &st), "the same 32 batched (budget 2048)");
    ok(touts_equal(&ref, &got, N_REQ), "batched == one at a time");
    touts_free(&got);
    opts_for(&o, 256, 48, false);
    ok(run_batched(&got, &o, &st), "batched with 48-token chunks");
    ok(touts_equal(&ref, &got, N_REQ), "chunked prefill == one at a time");
    touts_free(&got);
    /* 20 blocks of 16 tokens: a fraction of what 32 requests want. */
    opts_for(&o, 20, 2048, false);
    ok(run_batched(&got, &o, &st), "batched in a 20-block pool");
    ok(st.preemptions > 0, "the small pool forced preemptions (%llu)",
       (unsigned long long)st.preemptions);
    ok(touts_equal(&ref, &got, N_REQ), "with preemption == one at a time");
    touts_free(&got);
    touts_free(&ref);
}

static void test_prefix_caching(void)
{
    touts_t ref = { 0 }, got = { 0 };
    engine_opts_t o;
    engine_stats_t st;
    uint64_t hits_before;
    engine_t *e;
    int i, okay = 1;

    make_reqs(true, false);
    ok(run_alone(&ref), "shared-prefix requests one at a time, no caching");
    opts_for(&o, 256, 2048, true);
    ok(run_batched(&got, &o, &st), "batched with prefix caching");
    ok(touts_equal(&ref, &got, N_REQ), "prefix caching on == off");
    touts_free(&got);

    /* Serially with caching: each request after the first hits. */
    e = tengine(&model, &o);
    hits_before = 0;
    for (i = 0; i < N_REQ && okay && e != NULL; i++) {
        okay = engine_add(e, (uint64_t)i + 1, reqs[i].toks, reqs[i].n, &reqs[i].p, NULL, 0) ==
                   DUET_OK && trun(e, &got, MAX_GEN, 10000) >= 0;
        engine_stats(e, &st);
        if (i > 0 && st.prefix_hits < hits_before + 48)
            okay = 0;
        hits_before = st.prefix_hits;
    }
    ok(okay, "the hit counter rises by the shared prefix with every request (%llu of %llu)",
       (unsigned long long)st.prefix_hits, (unsigned long long)st.prefix_queries);
    ok(touts_equal(&ref, &got, N_REQ), "cached serial == uncached");
    ok(e != NULL && tengine_whole(e), "pool whole, cached blocks evictable");
    engine_destroy(e);
    touts_free(&got);

    /* Small pool with caching: eviction and preemption together. */
    opts_for(&o, 24, 64, true);
    ok(run_batched(&got, &o, &st), "prefix caching in a 24-block pool");
    ok(touts_equal(&ref, &got, N_REQ), "same tokens (%llu preemptions)",
       (unsigned long long)st.preemptions);
    touts_free(&got);
    touts_free(&ref);
}

static void test_seeded(void)
{
    touts_t ref = { 0 }, got = { 0 };
    engine_opts_t o;
    engine_stats_t st;

    make_reqs(false, true);
    ok(run_alone(&ref), "seeded sampling one at a time");
    opts_for(&o, 256, 64, false);
    ok(run_batched(&got, &o, &st), "seeded sampling batched");
    ok(touts_equal(&ref, &got, N_REQ), "per-request seeds: batched == alone");
    touts_free(&got);
    touts_free(&ref);
}

/* --- disaggregation: prefill-only engine -> decode engine ------------------ */

typedef struct {
    uint64_t id;
    int32_t  first, n_blocks, n_tokens;
    int32_t  blocks[64];
    int      called;
} handoff_t;

static void on_prefilled(void *arg, uint64_t id, int32_t first, const int32_t *blocks,
                         int32_t n_blocks, int32_t n_tokens)
{
    handoff_t *h = arg;

    h->id = id;
    h->first = first;
    h->n_blocks = n_blocks;
    h->n_tokens = n_tokens;
    memcpy(h->blocks, blocks, sizeof(int32_t) * (size_t)n_blocks);
    h->called++;
}

static void test_disaggregated(void)
{
    touts_t ref = { 0 }, got = { 0 };
    engine_opts_t po, dop;
    engine_t *pe, *de;
    handoff_t h;
    int i, okay = 1;

    make_reqs(false, true);
    ok(run_alone(&ref), "colocated reference (seeded sampling)");
    opts_for(&po, 64, 2048, true);
    po.prefill_only = true;
    po.on_prefilled = on_prefilled;
    po.cb_arg = &h;
    opts_for(&dop, 256, 2048, false);
    pe = tengine(&model, &po);
    de = tengine(&model, &dop);
    for (i = 0; i < 8 && okay && pe != NULL && de != NULL; i++) {
        const kv_layout_t *pl = engine_kv_layout(pe), *dl = engine_kv_layout(de);
        const int32_t *dblocks;
        int32_t n_dblocks, b, layer;
        uint64_t rng[SAMPLER_RNG_WORDS];
        const engine_out_t *outs;
        int n;
        uint64_t id = (uint64_t)i + 1;

        memset(&h, 0, sizeof(h));
        okay = engine_add(pe, id, reqs[i].toks, reqs[i].n, &reqs[i].p, NULL, 0) == DUET_OK;
        while (okay && h.called == 0)
            okay = engine_step(pe, &outs, &n) == DUET_OK;
        if (!okay || h.id != id || h.n_tokens != reqs[i].n)
            break;
        okay = engine_reserve(de, id, reqs[i].toks, reqs[i].n, &reqs[i].p, &dblocks,
                              &n_dblocks, NULL, 0) == DUET_OK && n_dblocks == h.n_blocks;
        for (layer = 0; okay && layer < pl->n_layers; layer++)
            for (b = 0; b < n_dblocks; b++)
                memcpy((char *)engine_kv_slab(de) + kv_offset(dl, layer, dblocks[b], 0, 0),
                       (char *)engine_kv_slab(pe) + kv_offset(pl, layer, h.blocks[b], 0, 0),
                       kv_block_bytes(pl));
        okay = okay && engine_req_rng(pe, id, rng) == DUET_OK &&
               engine_release(pe, id) == DUET_OK &&
               engine_add_prefilled(de, id, h.first, rng) == DUET_OK;
        got.toks[i] = calloc(MAX_GEN, sizeof(int32_t));
        got.toks[i][got.n[i]++] = h.first;
        if (reqs[i].p.max_tokens == 1)
            got.finish[i] = ENGINE_FINISH_LENGTH;
        okay = okay && trun(de, &got, MAX_GEN, 10000) >= 0;
    }
    ok(okay, "8 requests prefilled on one engine, decoded on another");
    ok(touts_equal(&ref, &got, 8), "disaggregated == colocated, token for token");
    ok(pe != NULL && de != NULL && tengine_whole(pe) && tengine_whole(de),
       "both pools whole");
    engine_destroy(pe);
    engine_destroy(de);
    touts_free(&got);
    touts_free(&ref);
}

/* --- bad input and abort ----------------------------------------------------- */

static void test_bad_params_and_abort(void)
{
    engine_opts_t o;
    engine_req_params_t p;
    engine_stats_t st;
    const engine_out_t *outs;
    const int32_t *blocks;
    int32_t nb, *long_prompt, toks[100], i;
    char err[256];
    engine_t *e;
    int n;

    opts_for(&o, 40, 32, true);
    e = tengine(&model, &o);
    if (e == NULL) {
        ok(0, "engine");
        return;
    }
    for (i = 0; i < 100; i++)
        toks[i] = i % model.cfg.vocab;
    engine_req_params_default(&p);
    p.max_tokens = 0;
    err[0] = 0;
    is_int(engine_add(e, 1, toks, 10, &p, err, sizeof(err)), DUET_ERR_INVALID,
           "zero max_tokens refused");
    ok(strstr(err, "max_tokens") != NULL, "message: %s", err);
    p.max_tokens = 4;
    long_prompt = calloc((size_t)model.cfg.ctx_len, sizeof(int32_t));
    is_int(engine_add(e, 1, long_prompt, model.cfg.ctx_len, &p, err, sizeof(err)),
           DUET_ERR_INVALID, "prompt of the whole context refused");
    ok(strstr(err, "context") != NULL, "message: %s", err);
    free(long_prompt);
    p.sampling.n_stop = 1;
    p.sampling.stop_ids[0] = model.cfg.vocab;
    is_int(engine_add(e, 1, toks, 10, &p, err, sizeof(err)), DUET_ERR_INVALID,
           "unknown stop id refused");
    ok(strstr(err, "stop token id") != NULL, "message: %s", err);
    p.sampling.n_stop = 0;
    p.sampling.temperature = -1.0f;
    is_int(engine_add(e, 1, toks, 10, &p, err, sizeof(err)), DUET_ERR_INVALID,
           "negative temperature refused");
    p.sampling.temperature = 0.0f;
    is_int(engine_add(e, 1, toks, 0, &p, err, sizeof(err)), DUET_ERR_INVALID,
           "empty prompt refused");
    toks[3] = model.cfg.vocab + 5;
    is_int(engine_add(e, 1, toks, 10, &p, err, sizeof(err)), DUET_ERR_INVALID,
           "token outside the vocabulary refused");
    toks[3] = 3;
    engine_stats(e, &st);
    ok(st.waiting == 0 && st.running == 0 && tengine_whole(e), "refusals left nothing behind");

    /* One request in each state, then abort them all. */
    p.max_tokens = 200;
    engine_add(e, 1, toks, 100, &p, NULL, 0);          /* will be mid-prefill */
    engine_add(e, 2, toks + 50, 8, &p, NULL, 0);
    engine_step(e, &outs, &n);                          /* 1 gets 32 tokens */
    engine_stats(e, &st);
    ok(st.running == 1 && st.waiting == 1, "one running mid-prefill, one waiting");
    is_int(engine_reserve(e, 3, toks, 40, &p, &blocks, &nb, err, sizeof(err)), DUET_OK,
           "reserve for a decode-side request");
    is_int(nb, 3, "40 tokens: 3 blocks");
    is_int(engine_add_prefilled(e, 2, 5, NULL), DUET_ERR_INVALID,
           "add_prefilled on a request that was not reserved refused");
    is_int(engine_abort(e, 99), DUET_ERR_NOT_FOUND, "abort of an unknown id");
    for (i = 0; i < 6; i++)
        engine_step(e, &outs, &n);
    engine_stats(e, &st);
    diag("before abort: running %d waiting %d reserved %d, %d blocks used", st.running,
         st.waiting, st.reserved, st.kv_used);
    is_int(engine_abort(e, 3), DUET_OK, "abort reserved");
    is_int(engine_abort(e, 1), DUET_OK, "abort running");
    is_int(engine_abort(e, 2), DUET_OK, "abort the last");
    ok(!engine_has_work(e) && tengine_whole(e), "pool whole after aborts");
    engine_destroy(e);
}

int main(void)
{
    if (tmodel_open(&model, "sched",
                    "--layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 256 "
                    "--ctx 512 --type f32 --seed 3") != 0) {
        ok(0, "test model");
        return tap_done();
    }
    test_batched_equals_alone();
    test_prefix_caching();
    test_seeded();
    test_disaggregated();
    test_bad_params_and_abort();
    tmodel_close(&model);
    return tap_done();
}
