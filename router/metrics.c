/* Histograms and the metric names. */
#include "metrics.h"

#include <string.h>

#include <event2/buffer.h>

static const double metrics_latency_bounds[] = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
};
static const double metrics_itl_bounds[] = {
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
};

/* the router's own per-token work: microseconds to tens of milliseconds */
static const double metrics_delay_bounds[] = {
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
};

#define NB(a) ((int)(sizeof(a) / sizeof((a)[0])))

const char *finish_reason_str(finish_reason_t r)
{
    static const char *const names[FINISH_NREASONS] = {"stop", "length", "abort", "error"};

    return r < FINISH_NREASONS ? names[r] : "error";
}

static void histogram_init(histogram_t *h, const char *name, const char *help,
                           const double *bounds, int n)
{
    memset(h, 0, sizeof(*h));
    h->name = name;
    h->help = help;
    h->bounds = bounds;
    h->nbounds = n;
}

void metrics_init(metrics_t *m)
{
    memset(m, 0, sizeof(*m));
    histogram_init(&m->ttft, "duet:time_to_first_token_seconds",
                   "Time from request arrival to the first generated token.",
                   metrics_latency_bounds, NB(metrics_latency_bounds));
    histogram_init(&m->itl, "duet:inter_token_latency_seconds",
                   "Time between consecutive generated tokens of a request.",
                   metrics_itl_bounds, NB(metrics_itl_bounds));
    histogram_init(&m->e2e, "duet:e2e_request_latency_seconds",
                   "Time from request arrival to its last token.",
                   metrics_latency_bounds, NB(metrics_latency_bounds));
    histogram_init(&m->queue, "duet:request_queue_time_seconds",
                   "Time a request waited in the router's admission queue.",
                   metrics_latency_bounds, NB(metrics_latency_bounds));
    histogram_init(&m->kv_transfer, "duet:kv_transfer_seconds",
                   "Time a prefill node spent moving a request's KV cache to its decode node.",
                   metrics_latency_bounds, NB(metrics_latency_bounds));
    histogram_init(&m->node_itl, "duet:node_inter_token_latency_seconds",
                   "Time between the router reading consecutive text-producing tokens of a "
                   "request from its node (the nodes' inter-token latency).",
                   metrics_itl_bounds, NB(metrics_itl_bounds));
    histogram_init(&m->token_delay, "duet:router_token_delay_seconds",
                   "Time from the router reading a token's frame from a node to the token's "
                   "SSE chunk being written to the client socket (or queued on the client "
                   "connection when the socket is busy).",
                   metrics_delay_bounds, NB(metrics_delay_bounds));
}

void histogram_observe(histogram_t *h, double v)
{
    int i = 0;

    while (i < h->nbounds && v > h->bounds[i])
        i++;
    h->counts[i]++;     /* i == nbounds: the +Inf bucket */
    h->count++;
    h->sum += v;
}

void histogram_write(const histogram_t *h, const char *labels, struct evbuffer *out)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";

    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    for (int i = 0; i < h->nbounds; i++) {
        cum += h->counts[i];
        evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", h->name, labels, sep,
                            h->bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[h->nbounds];
    evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", h->name, labels, sep,
                        (unsigned long long)cum);
    evbuffer_add_printf(out, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", h->name, labels, h->sum,
                        h->name, labels, (unsigned long long)h->count);
}
