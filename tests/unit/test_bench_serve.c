/* duet bench serve's pure parts: the incremental SSE parser (every split of
 * a stream gives the same events), metrics with vLLM's semantics, SLO
 * parsing, and the arrival process. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/serve_data.h"
#include "bench/serve_stats.h"
#include "bench/sse.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "tests/tap.h"

typedef struct {
    char   out[4096];
    size_t len;
    int    n;
} collect_t;

static duet_status_t collect(void *arg, const char *data, size_t len)
{
    collect_t *c = arg;

    if (strlen(data) != len)
        return DUET_ERR_INTERNAL;       /* NUL-terminated, len bytes */
    c->len += (size_t)snprintf(c->out + c->len, sizeof(c->out) - c->len, "[%s]", data);
    c->n++;
    return DUET_OK;
}

static duet_status_t stop_at_bad(void *arg, const char *data, size_t len)
{
    (void)arg;
    return strcmp(data, "bad") == 0 ? DUET_ERR_PROTO : DUET_OK;
}

/* Feed s in pieces split at a and b; return the collected events. */
static int feed3(const char *s, size_t a, size_t b, collect_t *c)
{
    sse_parser_t p;
    size_t n = strlen(s);
    int rc = 0;

    memset(c, 0, sizeof(*c));
    sse_init(&p, 0);
    if (sse_feed(&p, s, a, collect, c) != DUET_OK ||
        sse_feed(&p, s + a, b - a, collect, c) != DUET_OK ||
        sse_feed(&p, s + b, n - b, collect, c) != DUET_OK)
        rc = -1;
    sse_free(&p);
    return rc;
}

static void test_sse(void)
{
    const char *stream =
        ": comment\r\n"
        "data: {\"a\":1}\r\n\r\n"
        "event: x\n"
        "data:no-space\n\n"
        "data: line1\rdata: line2\r\r"
        "id: 7\n"
        "retry: 100\n"
        "data\n\n"
        "\n\n"
        "data: [DONE]\n\n";
    const char *want = "[{\"a\":1}][no-space][line1\nline2][][[DONE]]";
    size_t n = strlen(stream);
    int bad = 0, total = 0;
    collect_t c;
    sse_parser_t p;

    /* every pair of split points */
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++) {
            total++;
            if (feed3(stream, a, b, &c) != 0 || strcmp(c.out, want) != 0) {
                if (bad++ == 0)
                    diag("split %zu/%zu gave %s", a, b, c.out);
            }
        }
    ok(bad == 0, "SSE: all %d two-point splits give the same 5 events", total);

    /* byte at a time */
    memset(&c, 0, sizeof(c));
    sse_init(&p, 0);
    for (size_t i = 0; i < n; i++)
        sse_feed(&p, stream + i, 1, collect, &c);
    ok(strcmp(c.out, want) == 0 && !sse_pending(&p), "SSE: one byte at a time");
    sse_free(&p);

    /* an unfinished event is pending, not dispatched */
    memset(&c, 0, sizeof(c));
    sse_init(&p, 0);
    sse_feed(&p, "data: half", 10, collect, &c);
    ok(c.n == 0 && sse_pending(&p), "SSE: a cut event stays pending");
    sse_free(&p);

    /* a line over the bound */
    {
        char big[300];

        memset(big, 'x', sizeof(big));
        memset(&c, 0, sizeof(c));
        sse_init(&p, 128);
        is_int(sse_feed(&p, big, sizeof(big), collect, &c), DUET_ERR_TOO_BIG,
               "SSE: a line over max_bytes is DUET_ERR_TOO_BIG");
        sse_free(&p);
    }
    /* the callback's error stops the feed */
    sse_init(&p, 0);
    is_int(sse_feed(&p, "data: bad\n\ndata: ok\n\n", 21, stop_at_bad, NULL), DUET_ERR_PROTO,
           "SSE: a callback error is returned");
    sse_free(&p);
}

static void test_stats(void)
{
    double v[] = {5, 1, 4, 2, 3};
    serve_dist_t d;
    serve_rec_t recs[4] = {
        {.err = SERVE_OK, .input_tokens = 10, .output_tokens = 11, .ttft_s = 0.1, .e2el_s = 0.6},
        {.err = SERVE_OK, .input_tokens = 20, .output_tokens = 1, .ttft_s = 0.3, .e2el_s = 0.3},
        {.err = SERVE_OK, .input_tokens = 30, .output_tokens = 6, .ttft_s = 0.05, .e2el_s = 1.05},
        {.err = SERVE_ERR_HTTP},
    };
    double itl[] = {0.05, 0.05, 0.2};
    serve_slo_t slo = {0};
    serve_summary_t s;
    char err[128];

    serve_dist(v, 5, &d);
    ok(d.mean == 3 && d.median == 3 && fabs(d.p90 - 4.6) < 1e-12 && fabs(d.p99 - 4.96) < 1e-12,
       "percentiles interpolate like numpy (p90 4.6, p99 4.96)");
    ok(fabs(d.std - sqrt(2.0)) < 1e-12, "std is numpy's (ddof 0)");

    ok(serve_slo_parse("ttft:200 tpot:60", &slo, err, sizeof(err)) == DUET_OK &&
       slo.ttft_ms == 200 && slo.tpot_ms == 60 && slo.e2el_ms == 0, "SLO parse");
    ok(serve_slo_parse("ttft:200,e2el:900", &slo, err, sizeof(err)) == DUET_OK &&
       slo.e2el_ms == 900, "SLO parse with commas");
    ok(serve_slo_parse("tpot", &slo, err, sizeof(err)) == DUET_ERR_INVALID, "SLO: no value");
    ok(serve_slo_parse("ttft:-1", &slo, err, sizeof(err)) == DUET_ERR_INVALID,
       "SLO: negative value");
    ok(serve_slo_parse("foo:1", &slo, err, sizeof(err)) == DUET_ERR_INVALID &&
       strstr(err, "foo") != NULL, "SLO: unknown metric named in the error");

    slo = (serve_slo_t){.ttft_ms = 200, .tpot_ms = 60};
    ok(serve_summarize(recs, 4, itl, 3, 2.0, &slo, &s) == DUET_OK, "summarize");
    is_int(s.sent, 4, "sent");
    is_int(s.completed + s.failed, s.sent, "completed + failed = sent");
    is_int(s.errors[SERVE_ERR_HTTP], 1, "one HTTP failure");
    is_int(s.total_input, 60, "input tokens of completed requests");
    is_int(s.total_output, 18, "output tokens");
    ok(fabs(s.out_tput - 9.0) < 1e-12 && fabs(s.total_tput - 39.0) < 1e-12 &&
       fabs(s.req_tput - 1.5) < 1e-12, "throughput = tokens / duration");
    /* tpot: (0.6-0.1)/10 = 50 ms, (1.05-0.05)/5 = 200 ms; request 2 has 1 token */
    is_int(s.tpot_ms.n, 2, "TPOT only over requests with > 1 token");
    ok(fabs(s.tpot_ms.mean - 125) < 1e-9, "mean TPOT 125 ms");
    /* good: #0 (ttft 100, tpot 50); #1 ttft 300 fails; #2 tpot 200 fails */
    is_int(s.good, 1, "goodput counts requests meeting every SLO");
    ok(fabs(s.goodput - 0.5) < 1e-12, "goodput = good / duration");
    ok(fabs(s.itl_ms.median - 50) < 1e-9, "ITL in ms");
}

static void test_arrivals(void)
{
    serve_rng_t r;
    enum { N = 20000 };
    static double t[N];
    double m, var = 0;

    serve_rng_seed(&r, 1);
    serve_arrivals(&r, N, 10.0, 1.0, t);
    ok(t[0] == 0.0, "first request at t = 0");
    m = t[N - 1] / (N - 1);
    ok(fabs(m - 0.1) < 0.005, "Poisson: mean gap 1/rate (%.4f)", m);
    for (int i = 1; i < N; i++)
        var += (t[i] - t[i - 1] - m) * (t[i] - t[i - 1] - m);
    var /= N - 1;
    ok(fabs(var / (m * m) - 1.0) < 0.1, "Poisson: gap CV^2 = 1 (%.3f)", var / (m * m));
    serve_arrivals(&r, N, 10.0, 0.25, t);
    m = t[N - 1] / (N - 1);
    var = 0;
    for (int i = 1; i < N; i++)
        var += (t[i] - t[i - 1] - m) * (t[i] - t[i - 1] - m);
    var /= N - 1;
    ok(fabs(m - 0.1) < 0.008 && fabs(var / (m * m) - 4.0) < 0.6,
       "gamma burstiness 0.25: same mean, CV^2 = 4 (%.3f, %.3f)", m, var / (m * m));
    serve_arrivals(&r, 5, INFINITY, 1.0, t);
    ok(t[4] == 0.0, "infinite rate: all at once");
}

/* Random prompts through the real tokenizer: valid words, exact lengths,
 * reproducible. */
static void test_random_prompts(const char *model)
{
    gguf_t *g = NULL;
    tok_t *tok = NULL;
    serve_dataset_t a = {0}, b = {0}, c = {0};
    serve_rng_t r1, r2;
    tok_ids_t ids = {0};
    char err[256];
    int exact = 0, clean = 0, in_range = 0;

    if (model == NULL || gguf_open(model, &g, err, sizeof(err)) != DUET_OK ||
        tok_load(g, &tok, err, sizeof(err)) != DUET_OK) {
        diag("no model (%s): skipping the tokenizer checks", model ? model : "none given");
        gguf_close(g);
        return;
    }
    serve_rng_seed(&r1, 7);
    serve_rng_seed(&r2, 7);
    ok(serve_data_random(tok, 20, 5, 60, 3, 9, &r1, &a, err, sizeof(err)) == DUET_OK &&
       a.exact && strcmp(a.kind, "random") == 0, "random dataset with the tokenizer");
    ok(serve_data_random(tok, 20, 5, 60, 3, 9, &r2, &b, err, sizeof(err)) == DUET_OK,
       "again with the same seed");
    for (size_t i = 0; i < a.n; i++) {
        const char *p = a.v[i].prompt;
        bool cl = true;

        ids.n = 0;
        tok_encode(tok, p, strlen(p), TOK_ADD_SPECIAL, &ids);
        exact += (int64_t)ids.n == a.v[i].prompt_tokens;
        in_range += a.v[i].prompt_tokens >= 5 && a.v[i].prompt_tokens <= 60 &&
                    a.v[i].output_len >= 3 && a.v[i].output_len <= 9;
        for (; *p; p++)
            cl = cl && (*p == ' ' || (*p >= 'a' && *p <= 'z'));
        clean += cl;
    }
    is_int(exact, 20, "every prompt encodes to its recorded token count");
    is_int(in_range, 20, "input and output lengths within their ranges");
    is_int(clean, 20, "prompts are plain lowercase words");
    ok(strcmp(a.v[3].prompt, b.v[3].prompt) == 0 && a.v[3].output_len == b.v[3].output_len,
       "the seed reproduces the prompts");
    ok(serve_data_random(NULL, 3, 4, 4, 2, 2, &r1, &c, err, sizeof(err)) == DUET_OK &&
       !c.exact && strcmp(c.kind, "fixed") == 0 && c.v[0].prompt_tokens == -1,
       "without a tokenizer: built-in words, lengths approximate");
    tok_ids_free(&ids);
    serve_data_free(&a);
    serve_data_free(&b);
    serve_data_free(&c);
    tok_destroy(tok);
    gguf_close(g);
}

static void test_jsonl(void)
{
    char path[] = "/tmp/duet_test_jsonl_XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    serve_dataset_t d = {0};
    char err[256] = "";

    if (f == NULL) {
        ok(0, "temp file");
        return;
    }
    fputs("{\"prompt\": \"a b\", \"output_len\": 5}\n\n{\"prompt\": \"c\"}\n", f);
    fclose(f);
    ok(serve_data_jsonl(path, NULL, 5, 7, &d, err, sizeof(err)) == DUET_OK && d.n == 5 &&
       strcmp(d.v[1].prompt, "c") == 0 && d.v[1].output_len == 7 &&
       strcmp(d.v[2].prompt, "a b") == 0 && d.v[2].output_len == 5,
       "JSONL: blank lines skipped, default output length, lines reused in order");
    serve_data_free(&d);
    f = fopen(path, "w");
    fputs("{\"prompt\": \"ok\"}\n{\"prompt\": \"x\", \"output_len\": -2}\n", f);
    fclose(f);
    ok(serve_data_jsonl(path, NULL, 2, 7, &d, err, sizeof(err)) == DUET_ERR_INVALID &&
       strstr(err, ":2:") != NULL, "JSONL: a bad line is named (%s)", err);
    unlink(path);
}

int main(int argc, char **argv)
{
    test_sse();
    test_stats();
    test_arrivals();
    test_random_prompts(argc > 1 ? argv[1] : NULL);
    test_jsonl();
    return tap_done();
}
