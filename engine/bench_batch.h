/* The engine's batching benchmark, called by `duet bench engine --batch`:
 * decode throughput at several batch sizes with the ratio to batch 1, and
 * prefill throughput with and without chunked prefill. It drives the real
 * engine (scheduler + forward pass + sampling), so the figures include the
 * scheduling overhead that a server pays. */
#ifndef DUET_ENGINE_BENCH_BATCH_H
#define DUET_ENGINE_BENCH_BATCH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "engine/engine.h"

#define BENCH_BATCH_MAX 16

typedef struct {
    int32_t batches[BENCH_BATCH_MAX];   /* decode batch sizes, e.g. 1 4 16 64 */
    int     n_batches;
    int32_t prompt_len;      /* tokens per request before the timed decode */
    int32_t gen_len;         /* timed decode steps per batch size */
    int32_t prefill_reqs;    /* requests in the prefill measurement */
    int32_t prefill_len;     /* their prompt length */
    int32_t chunk;           /* step budget of the chunked prefill run */
    uint64_t seed;           /* prompt token ids */
} bench_batch_opts_t;

/* Defaults: batches 1 4 16 64, prompt 32, 32 decode steps, prefill 4 x 512
 * tokens, chunk 256. */
void bench_batch_opts_default(bench_batch_opts_t *o);

typedef struct {
    int32_t batch;
    double  tok_s;           /* generated tokens per second */
    double  step_ms;         /* mean decode step */
    double  ratio;           /* tok_s / batch 1's tok_s (0 without batch 1) */
} bench_batch_row_t;

typedef struct {
    bench_batch_row_t rows[BENCH_BATCH_MAX];
    int     n_rows;
    int32_t prompt_len, gen_len, prefill_reqs, prefill_len, chunk;
    double  prefill_chunked_tok_s;   /* prompt tokens per second */
    double  prefill_whole_tok_s;
    int64_t threads;
} bench_batch_result_t;

/* Run the sweep on engines made with eo (its batch and budget limits are
 * raised as each measurement needs; prefix caching is turned off so every
 * prompt token is computed). err gets a reason on failure. */
duet_status_t bench_batch_run(const gguf_t *g, const model_config_t *cfg,
                              const engine_opts_t *eo, const bench_batch_opts_t *bo,
                              bench_batch_result_t *res, char *err, size_t errlen);

/* A table, or one JSON object when json. */
void bench_batch_print(FILE *out, const bench_batch_result_t *res, bool json);

#endif
