/* Helpers for the engine tests that run the real forward pass on a small
 * random model written by `duet mkmodel` (DUET_BIN names the binary). */
#ifndef DUET_TESTS_ENGINE_TESTUTIL_H
#define DUET_TESTS_ENGINE_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "model/config.h"
#include "model/gguf.h"
#include "tests/tap.h"

typedef struct {
    char           path[256];
    gguf_t        *g;
    model_config_t cfg;
} tmodel_t;

/* Write and open a model: mkmodel_args are the shape flags. Skips the test
 * (exit 77) when DUET_BIN is not set. */
static inline int tmodel_open(tmodel_t *m, const char *tag, const char *mkmodel_args)
{
    const char *bin = getenv("DUET_BIN");
    char cmd[1024], err[256];

    if (bin == NULL || access(bin, X_OK) != 0)
        tap_plan_skip("DUET_BIN (the duet binary, for mkmodel) is not set");
    snprintf(m->path, sizeof(m->path), "/tmp/duet_test_%s_%d.gguf", tag, (int)getpid());
    snprintf(cmd, sizeof(cmd), "%s mkmodel %s -o %s >/dev/null", bin, mkmodel_args, m->path);
    if (system(cmd) != 0) {
        diag("mkmodel failed: %s", cmd);
        return -1;
    }
    if (gguf_open(m->path, &m->g, err, sizeof(err)) != DUET_OK ||
        model_config_load(m->g, &m->cfg, err, sizeof(err)) != DUET_OK) {
        diag("cannot load %s: %s", m->path, err);
        return -1;
    }
    return 0;
}

static inline void tmodel_close(tmodel_t *m)
{
    gguf_close(m->g);
    unlink(m->path);
}

static inline engine_t *tengine(const tmodel_t *m, const engine_opts_t *o)
{
    char err[256] = "";
    engine_t *e = NULL;

    if (engine_create(m->g, &m->cfg, o, &e, err, sizeof(err)) != DUET_OK)
        diag("engine_create: %s", err);
    return e;
}

/* Every block free (cached-but-unreferenced counts as free) and the pool
 * invariants hold. */
static inline int tengine_whole(const engine_t *e)
{
    engine_stats_t st;
    char err[256] = "";

    if (engine_check(e, err, sizeof(err)) != DUET_OK) {
        diag("engine_check: %s", err);
        return 0;
    }
    engine_stats(e, &st);
    if (st.kv_used != 0 || st.kv_free != st.kv_blocks) {
        diag("KV: %d used, %d free of %d", st.kv_used, st.kv_free, st.kv_blocks);
        return 0;
    }
    return 1;
}

/* Outputs of a run: tokens per request (index = request id - 1). */
typedef struct {
    int32_t *toks[64];
    int32_t  n[64];
    int      finish[64];
} touts_t;

static inline void touts_free(touts_t *o)
{
    int i;

    for (i = 0; i < 64; i++)
        free(o->toks[i]);
    memset(o, 0, sizeof(*o));
}

/* Step e until it has no work; append every token to o (capacity cap per
 * request). Returns the number of steps, -1 on error. */
static inline int trun(engine_t *e, touts_t *o, int32_t cap, int max_steps)
{
    const engine_out_t *outs;
    int n, i, steps = 0;

    while (engine_has_work(e)) {
        if (++steps > max_steps || engine_step(e, &outs, &n) != DUET_OK)
            return -1;
        for (i = 0; i < n; i++) {
            int k = (int)outs[i].req_id - 1;
            if (k < 0 || k >= 64)
                continue;
            if (o->toks[k] == NULL)
                o->toks[k] = calloc((size_t)cap, sizeof(int32_t));
            if (outs[i].token >= 0 && o->n[k] < cap)
                o->toks[k][o->n[k]++] = outs[i].token;
            if (outs[i].finish != ENGINE_FINISH_NONE)
                o->finish[k] = outs[i].finish;
        }
    }
    return steps;
}

static inline int touts_equal(const touts_t *a, const touts_t *b, int n_req)
{
    int i, bad = 0;

    for (i = 0; i < n_req; i++) {
        if (a->n[i] != b->n[i] || a->finish[i] != b->finish[i] ||
            (a->n[i] > 0 && memcmp(a->toks[i], b->toks[i], sizeof(int32_t) * (size_t)a->n[i]))) {
            if (bad++ < 3)
                diag("request %d differs: %d vs %d tokens, finish %d vs %d", i + 1, a->n[i],
                     b->n[i], a->finish[i], b->finish[i]);
        }
    }
    return bad == 0;
}

#endif
