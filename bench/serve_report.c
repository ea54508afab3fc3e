/* The result of duet bench serve: one JSON object (vLLM's result-file field
 * names plus failure counts) and the human-readable table (serve_report.h). */
#include <inttypes.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "bench/serve_report.h"

static void put_dist(json_t *j, const char *name, const serve_dist_t *d)
{
    char k[64];

    snprintf(k, sizeof(k), "mean_%s_ms", name);
    json_object_set_new(j, k, json_real(d->mean));
    snprintf(k, sizeof(k), "median_%s_ms", name);
    json_object_set_new(j, k, json_real(d->median));
    snprintf(k, sizeof(k), "std_%s_ms", name);
    json_object_set_new(j, k, json_real(d->std));
    snprintf(k, sizeof(k), "p90_%s_ms", name);
    json_object_set_new(j, k, json_real(d->p90));
    snprintf(k, sizeof(k), "p99_%s_ms", name);
    json_object_set_new(j, k, json_real(d->p99));
}

json_t *serve_report_json(const serve_report_t *o, const serve_summary_t *s,
                          const serve_slo_t *slo)
{
    json_t *j = json_object(), *errs = json_object(), *samp = json_array();
    char date[32];
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y%m%dT%H%M%SZ", &tm);
    json_object_set_new(j, "date", json_string(date));
    json_object_set_new(j, "backend", json_string(o->chat ? "openai-chat" : "openai"));
    json_object_set_new(j, "base_url", json_string(o->base_url));
    json_object_set_new(j, "endpoint", json_string(o->endpoint));
    json_object_set_new(j, "model", o->model ? json_string(o->model) : json_null());
    json_object_set_new(j, "tokenizer", json_string(o->tokenizer));
    json_object_set_new(j, "dataset", json_string(o->dataset));
    json_object_set_new(j, "prompt_lengths_exact", json_boolean(o->lengths_exact));
    json_object_set_new(j, "num_prompts", json_integer(o->num_prompts));
    json_object_set_new(j, "request_rate", isfinite(o->rate) && o->rate > 0 ?
                        json_real(o->rate) : json_string("inf"));
    json_object_set_new(j, "burstiness", json_real(o->burstiness));
    json_object_set_new(j, "max_concurrency", o->max_concurrency > 0 ? json_integer(o->max_concurrency)
                                                              : json_null());
    json_object_set_new(j, "num_warmups", json_integer(o->num_warmups));
    json_object_set_new(j, "ignore_eos", json_boolean(o->ignore_eos));
    json_object_set_new(j, "duration", json_real(s->duration_s));
    json_object_set_new(j, "sent", json_integer((json_int_t)s->sent));
    json_object_set_new(j, "completed", json_integer((json_int_t)s->completed));
    json_object_set_new(j, "failed", json_integer((json_int_t)s->failed));
    for (int e = 1; e < SERVE_ERR_COUNT; e++)
        json_object_set_new(errs, serve_err_name((serve_err_t)e),
                            json_integer((json_int_t)s->errors[e]));
    json_object_set_new(j, "errors", errs);
    for (size_t i = 0; i < o->n_samples; i++)
        json_array_append_new(samp, json_string(o->samples[i]));
    json_object_set_new(j, "error_samples", samp);
    json_object_set_new(j, "output_tokens_from",
                        json_string(o->n_usage == 0 ? "chunks" :
                                    o->n_usage == s->completed ? "usage" : "mixed"));
    json_object_set_new(j, "total_input_tokens", json_integer(s->total_input));
    json_object_set_new(j, "total_output_tokens", json_integer(s->total_output));
    json_object_set_new(j, "request_throughput", json_real(s->req_tput));
    json_object_set_new(j, "input_throughput", json_real(s->in_tput));
    json_object_set_new(j, "output_throughput", json_real(s->out_tput));
    json_object_set_new(j, "total_token_throughput", json_real(s->total_tput));
    if (serve_slo_any(slo)) {
        json_t *g = json_object();

        if (slo->ttft_ms > 0)
            json_object_set_new(g, "ttft", json_real(slo->ttft_ms));
        if (slo->tpot_ms > 0)
            json_object_set_new(g, "tpot", json_real(slo->tpot_ms));
        if (slo->e2el_ms > 0)
            json_object_set_new(g, "e2el", json_real(slo->e2el_ms));
        json_object_set_new(j, "goodput_slo_ms", g);
        json_object_set_new(j, "good_requests", json_integer((json_int_t)s->good));
        json_object_set_new(j, "request_goodput", json_real(s->goodput));
    } else {
        json_object_set_new(j, "request_goodput", json_null());
    }
    put_dist(j, "ttft", &s->ttft_ms);
    put_dist(j, "tpot", &s->tpot_ms);
    put_dist(j, "itl", &s->itl_ms);
    put_dist(j, "e2el", &s->e2el_ms);
    return j;
}

static void print_dist(FILE *out, const char *title, const char *name, const serve_dist_t *d)
{
    int pad = (50 - (int)strlen(title) - 2) / 2;

    fprintf(out, "%.*s %s %.*s\n", pad, "--------------------------", title,
           50 - pad - (int)strlen(title) - 2, "--------------------------");
    fprintf(out, "Mean %-35s %.2f\n", name, d->mean);
    fprintf(out, "Median %-33s %.2f\n", name, d->median);
    fprintf(out, "P90 %-36s %.2f\n", name, d->p90);
    fprintf(out, "P99 %-36s %.2f\n", name, d->p99);
}

void serve_report_print(FILE *out, const serve_report_t *o, const serve_summary_t *s,
                        const serve_slo_t *slo)
{
    fprintf(out, "============ Serving Benchmark Result ============\n");
    fprintf(out, "%-40s %zu\n", "Successful requests:", s->completed);
    fprintf(out, "%-40s %zu\n", "Failed requests:", s->failed);
    for (int e = 1; e < SERVE_ERR_COUNT; e++)
        if (s->errors[e] > 0)
            fprintf(out, "  %-38s %zu\n", serve_err_name((serve_err_t)e), s->errors[e]);
    fprintf(out, "%-40s %.2f\n", "Benchmark duration (s):", s->duration_s);
    fprintf(out, "%-40s %" PRId64 "\n", "Total input tokens:", s->total_input);
    fprintf(out, "%-40s %" PRId64 "\n", "Total generated tokens:", s->total_output);
    fprintf(out, "%-40s %.2f\n", "Request throughput (req/s):", s->req_tput);
    if (serve_slo_any(slo))
        fprintf(out, "%-40s %.2f\n", "Request goodput (req/s):", s->goodput);
    fprintf(out, "%-40s %.2f\n", "Input token throughput (tok/s):", s->in_tput);
    fprintf(out, "%-40s %.2f\n", "Output token throughput (tok/s):", s->out_tput);
    fprintf(out, "%-40s %.2f\n", "Total token throughput (tok/s):", s->total_tput);
    print_dist(out, "Time to First Token", "TTFT (ms):", &s->ttft_ms);
    print_dist(out, "Time per Output Token (excl. 1st token)", "TPOT (ms):", &s->tpot_ms);
    print_dist(out, "Inter-token Latency", "ITL (ms):", &s->itl_ms);
    print_dist(out, "End-to-end Latency", "E2EL (ms):", &s->e2el_ms);
    fprintf(out, "==================================================\n");
    for (size_t i = 0; i < o->n_samples; i++)
        fprintf(out, "error: %s\n", o->samples[i]);
}
