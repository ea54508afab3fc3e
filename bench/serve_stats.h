/* Metrics of the serving benchmark (duet bench serve), with vLLM's
 * benchmark_serving.py semantics:
 *   TTFT  send -> first chunk that carries text;
 *   ITL   gaps between successive text chunks of one request (all pooled);
 *   TPOT  (E2EL - TTFT) / (output tokens - 1), requests with > 1 token;
 *   E2EL  send -> end of the stream;
 *   goodput: completed requests meeting every SLO given, over the duration
 *   (a request with <= 1 output token counts TPOT as 0).
 * Percentiles interpolate linearly between order statistics (numpy's
 * default). Pure functions: unit-tested in tests/unit/test_bench_serve.c. */
#ifndef DUET_BENCH_SERVE_STATS_H
#define DUET_BENCH_SERVE_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum {
    SERVE_OK = 0,
    SERVE_ERR_CONNECT,      /* no response: refused, reset before headers */
    SERVE_ERR_HTTP,         /* status other than 200 */
    SERVE_ERR_SSE,          /* malformed event stream or chunk JSON */
    SERVE_ERR_INCOMPLETE,   /* the stream ended without data: [DONE] */
    SERVE_ERR_TIMEOUT,      /* no bytes for --timeout seconds */
    SERVE_ERR_SERVER,       /* an error object inside the stream */
    SERVE_ERR_COUNT
} serve_err_t;

/* "connect", "http", "malformed_sse", "incomplete", "timeout", "server_error" */
const char *serve_err_name(serve_err_t e);

typedef struct {
    serve_err_t err;
    int     http_status;
    int64_t input_tokens;   /* usage.prompt_tokens, else the local count */
    int64_t output_tokens;  /* usage.completion_tokens, else text chunks */
    double  ttft_s, e2el_s;
} serve_rec_t;

typedef struct {
    double ttft_ms, tpot_ms, e2el_ms;   /* 0: not part of the SLO */
} serve_slo_t;

typedef struct {
    size_t n;
    double mean, std, median, p90, p99;
} serve_dist_t;

typedef struct {
    size_t  sent, completed, failed, good;
    size_t  errors[SERVE_ERR_COUNT];
    int64_t total_input, total_output;
    double  duration_s;
    double  req_tput, in_tput, out_tput, total_tput, goodput;   /* per second */
    serve_dist_t ttft_ms, tpot_ms, itl_ms, e2el_ms;
} serve_summary_t;

/* Percentile q in [0, 100] of sorted[0..n) (0 when n == 0). */
double serve_percentile(const double *sorted, size_t n, double q);

/* Sorts v in place; fills d (all 0 when n == 0). */
void serve_dist(double *v, size_t n, serve_dist_t *d);

/* Parse "ttft:MS tpot:MS e2el:MS" (any subset, separated by spaces or
 * commas). An unknown name, a missing or non-positive value is an error
 * with a reason in err; *slo is then unchanged. */
duet_status_t serve_slo_parse(const char *spec, serve_slo_t *slo, char *err, size_t errlen);

bool serve_slo_any(const serve_slo_t *slo);

/* Summarise n records and the pooled inter-token gaps itl_s[0..n_itl)
 * (seconds; the array is sorted in place) over duration_s seconds.
 * slo may be NULL. */
duet_status_t serve_summarize(const serve_rec_t *recs, size_t n, double *itl_s, size_t n_itl,
                              double duration_s, const serve_slo_t *slo,
                              serve_summary_t *out);

#endif
