/* Router metrics in Prometheus text format, with vLLM-style names
 * (duet:...). Histograms have fixed bucket bounds; everything lives in
 * the router's context (no globals) and is touched only on the event loop. */
#ifndef DUET_ROUTER_METRICS_H
#define DUET_ROUTER_METRICS_H

#include <stdint.h>

struct evbuffer;

#define METRICS_MAX_BUCKETS 24

typedef struct {
    const char   *name;
    const char   *help;
    const double *bounds;               /* upper bounds, ascending */
    int           nbounds;
    uint64_t      counts[METRICS_MAX_BUCKETS];   /* per bucket, not cumulative */
    uint64_t      count;
    double        sum;
} histogram_t;

typedef enum {
    FINISH_STOP = 0,
    FINISH_LENGTH,
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_NREASONS,
} finish_reason_t;

const char *finish_reason_str(finish_reason_t r);

typedef struct {
    histogram_t ttft, itl, e2e, queue, kv_transfer;
    histogram_t node_itl;       /* gaps between arrivals of chunk-producing tokens */
    histogram_t token_delay;    /* token frame read -> its SSE chunk queued */
    uint64_t    prompt_tokens;
    uint64_t    generation_tokens;
    uint64_t    success[FINISH_NREASONS];
    uint64_t    kv_transfer_bytes;
} metrics_t;

void metrics_init(metrics_t *m);
void histogram_observe(histogram_t *h, double v);
void histogram_write(const histogram_t *h, const char *labels, struct evbuffer *out);

#endif
