/* A random storm of adds and aborts across 10 000 engine steps on a small
 * `duet mkmodel` model, with a KV pool small enough to preempt and prefix
 * caching on: the pool stays consistent throughout, is whole at the end, and
 * the engine still serves (a greedy request afterwards matches a fresh
 * engine's output). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "tests/unit/engine_testutil.h"

#define STEPS 10000

static uint64_t rs = 0x2545f4914f6cdd1dull;

static uint32_t rnd(uint32_t n)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs % n);
}

int main(void)
{
    tmodel_t m;
    engine_opts_t o;
    engine_req_params_t p;
    engine_stats_t st;
    engine_t *e, *fresh;
    touts_t a = { 0 }, b = { 0 };
    int32_t toks[64];
    uint64_t next_id = 100, n_added = 0, n_aborted = 0, n_finished = 0;
    int step, bad = 0, i;

    if (tmodel_open(&m, "storm",
                    "--layers 1 --hidden 32 --heads 2 --kv-heads 1 --ffn 64 --vocab 128 "
                    "--ctx 256 --type f32 --seed 5") != 0) {
        ok(0, "test model");
        return tap_done();
    }
    engine_opts_default(&o);
    o.threads = 1;
    o.block_size = 8;
    o.kv_blocks = 40;
    o.max_running = 8;
    o.max_step_tokens = 32;
    o.watermark = 0.05;
    e = tengine(&m, &o);
    if (e == NULL) {
        ok(0, "engine");
        return tap_done();
    }
    for (step = 0; step < STEPS; step++) {
        const engine_out_t *outs;
        uint32_t op = rnd(10);
        int n;

        if (op < 3) {
            int32_t len = 1 + (int32_t)rnd(60), shared = (int32_t)rnd(2);
            for (i = 0; i < len; i++)
                toks[i] = shared && i < 24 ? i : (int32_t)rnd(128);
            engine_req_params_default(&p);
            p.max_tokens = 1 + (int32_t)rnd(40);
            if (rnd(2)) {
                p.sampling.temperature = 0.7f;
                p.sampling.top_k = (int32_t)rnd(20);
                p.sampling.seed = rnd(1000);
                p.sampling.frequency_penalty = 0.5f;
            }
            if (engine_add(e, next_id++, toks, len, &p, NULL, 0) == DUET_OK)
                n_added++;
        } else if (op < 5 && next_id > 100) {
            if (engine_abort(e, 100 + rnd((uint32_t)(next_id - 100))) == DUET_OK)
                n_aborted++;
        }
        if (engine_step(e, &outs, &n) != DUET_OK) {
            bad++;
            break;
        }
        for (i = 0; i < n; i++)
            n_finished += outs[i].finish != ENGINE_FINISH_NONE;
        if (step % 100 == 0) {
            char err[256] = "";
            if (engine_check(e, err, sizeof(err)) != DUET_OK) {
                diag("step %d: %s", step, err);
                bad++;
                break;
            }
        }
    }
    engine_stats(e, &st);
    is_int(bad, 0, "%d steps of random adds and aborts, pool consistent", STEPS);
    diag("%llu added, %llu aborted, %llu finished, %llu preemptions, %llu/%llu prefix hits, "
         "%d running %d waiting at the end", (unsigned long long)n_added,
         (unsigned long long)n_aborted, (unsigned long long)n_finished,
         (unsigned long long)st.preemptions, (unsigned long long)st.prefix_hits,
         (unsigned long long)st.prefix_queries, st.running, st.waiting);
    ok(st.preemptions > 0 && st.prefix_hits > 0 && n_aborted > 0 && n_finished > 0,
       "the storm preempted, hit the cache, aborted and finished requests");
    for (i = 100; i < (int)next_id; i++)
        engine_abort(e, (uint64_t)i);
    ok(tengine_whole(e), "after aborting the rest: every block free");

    /* Still serving: the same greedy request in the stormed engine and a
     * fresh one. */
    engine_req_params_default(&p);
    p.max_tokens = 20;
    for (i = 0; i < 30; i++)
        toks[i] = (i * 5) % 128;
    fresh = tengine(&m, &o);
    ok(engine_add(e, 1, toks, 30, &p, NULL, 0) == DUET_OK && trun(e, &a, 20, 1000) > 0 &&
       fresh != NULL && engine_add(fresh, 1, toks, 30, &p, NULL, 0) == DUET_OK &&
       trun(fresh, &b, 20, 1000) > 0, "a request after the storm runs");
    ok(a.n[0] == 20 && touts_equal(&a, &b, 1), "and matches a fresh engine's output");
    ok(tengine_whole(e), "pool whole again");
    touts_free(&a);
    touts_free(&b);
    engine_destroy(fresh);
    engine_destroy(e);
    tmodel_close(&m);
    return tap_done();
}
