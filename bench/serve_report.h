/* The result of duet bench serve: a JSON object and a table. */
#ifndef DUET_BENCH_SERVE_REPORT_H
#define DUET_BENCH_SERVE_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "bench/serve_stats.h"

/* What the run was (all borrowed). */
typedef struct {
    const char *base_url, *endpoint, *model;    /* model may be NULL */
    const char *tokenizer;                      /* a path or "none" */
    const char *dataset;                        /* random, fixed, jsonl */
    bool        lengths_exact, chat, ignore_eos;
    int64_t     num_prompts, max_concurrency, num_warmups;   /* max_concurrency 0: none */
    double      rate, burstiness;               /* rate: infinite for "all at once" */
    size_t      n_usage;        /* completed requests whose counts came from usage */
    const char *const *samples; /* distinct error messages */
    size_t      n_samples;
} serve_report_t;

/* A new JSON object (caller decrefs; NULL when out of memory). Field names
 * follow vLLM's result file: completed, request_throughput, mean_ttft_ms,
 * p99_tpot_ms, ... plus sent, failed, errors{}, error_samples. */
json_t *serve_report_json(const serve_report_t *info, const serve_summary_t *s,
                          const serve_slo_t *slo);

/* vLLM's "Serving Benchmark Result" table. */
void serve_report_print(FILE *out, const serve_report_t *info, const serve_summary_t *s,
                        const serve_slo_t *slo);

#endif
