/* Slow suite: the engine on the real SmolLM2 (Q4_1) file. Six requests of
 * mixed lengths, two of them sharing a prefix, give the same greedy tokens
 * batched (chunked prefill, prefix caching, a pool small enough to preempt)
 * as one at a time. Skips when the model file is absent. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "engine/engine.h"
#include "tests/unit/engine_testutil.h"

#define N_REQ 6
#define GEN   6

int main(void)
{
    const char *root = getenv("DUET_SOURCE_ROOT");
    char path[512], err[256] = "";
    static const int32_t lens[N_REQ] = { 3, 40, 17, 33, 9, 40 };
    int32_t toks[N_REQ][48];
    engine_req_params_t p;
    touts_t ref = { 0 }, got = { 0 };
    engine_opts_t o;
    engine_stats_t st;
    model_config_t cfg;
    gguf_t *g = NULL;
    engine_t *e;
    int i, j, okay = 1;

    log_set_level(LOG_LEVEL_WARN);
    snprintf(path, sizeof(path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", root ? root : ".");
    if (access(path, R_OK) != 0)
        tap_plan_skip("SmolLM2 model file not found");
    if (gguf_open(path, &g, err, sizeof(err)) != DUET_OK ||
        model_config_load(g, &cfg, err, sizeof(err)) != DUET_OK) {
        ok(0, "load %s: %s", path, err);
        return tap_done();
    }
    for (i = 0; i < N_REQ; i++)
        for (j = 0; j < lens[i]; j++)
            toks[i][j] = (int32_t)((j * 7919u + (uint32_t)i * 104729u * (j >= 32)) % 49152u);
    /* Every prompt starts with the same 32 tokens (the rest differ). */
    engine_req_params_default(&p);
    p.max_tokens = GEN;
    p.sampling.ignore_eos = true;

    engine_opts_default(&o);
    o.prefix_caching = false;
    o.kv_blocks = 64;
    e = NULL;
    if (engine_create(g, &cfg, &o, &e, err, sizeof(err)) != DUET_OK) {
        ok(0, "engine: %s", err);
        return tap_done();
    }
    for (i = 0; i < N_REQ && okay; i++)
        okay = engine_add(e, (uint64_t)i + 1, toks[i], lens[i], &p, NULL, 0) == DUET_OK &&
               trun(e, &ref, GEN, 1000) >= 0;
    ok(okay && tengine_whole(e), "six requests one at a time");
    engine_destroy(e);

    o.prefix_caching = true;
    o.max_step_tokens = 24;
    o.kv_blocks = 6;      /* 96 tokens: the batch needs about 180 */
    e = NULL;
    if (engine_create(g, &cfg, &o, &e, err, sizeof(err)) != DUET_OK) {
        ok(0, "engine: %s", err);
        return tap_done();
    }
    for (i = 0; i < N_REQ; i++)
        engine_add(e, (uint64_t)i + 1, toks[i], lens[i], &p, NULL, 0);
    okay = trun(e, &got, GEN, 10000) >= 0;
    engine_stats(e, &st);
    ok(okay && tengine_whole(e), "batched: 24-token chunks, prefix caching, 6-block pool");
    diag("%llu preemptions, %llu of %llu prompt tokens from the cache",
         (unsigned long long)st.preemptions, (unsigned long long)st.prefix_hits,
         (unsigned long long)st.prefix_queries);
    ok(st.preemptions > 0, "the pool forced preemptions");
    ok(touts_equal(&ref, &got, N_REQ), "batched == one at a time, token for token");
    engine_destroy(e);
    touts_free(&ref);
    touts_free(&got);
    gguf_close(g);
    return tap_done();
}
