/* duet bench serve: an online serving benchmark against any OpenAI-compatible
 * HTTP server (vLLM's benchmark_serving.py, in C on libevent's HTTP client).
 *
 * Requests arrive by a Poisson or gamma process (--request-rate,
 * --burstiness), wait for a free slot (--max-concurrency), and stream their
 * answer over SSE (stream: true, stream_options.include_usage). Each stream
 * is parsed incrementally (bench/sse.h) and timed; the metrics and their
 * semantics are in bench/serve_stats.h. A request that fails (no connection,
 * an HTTP error, a malformed or cut stream, a timeout) is counted as failed
 * and the benchmark goes on. One event loop, no threads.
 *
 * Connections are kept alive and reused: a finished request returns its
 * connection to an idle list, and evhttp reconnects one that was closed. */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#define DUET_LOG_COMPONENT "bench-serve"
#include "bench/serve_data.h"
#include "bench/serve_report.h"
#include "bench/serve_stats.h"
#include "bench/sse.h"
#include "cli/cli.h"
#include "common/clock.h"
#include "common/flags.h"
#include "common/log.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#define BS_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define BS_MAX_SAMPLES   8        /* error messages kept for the report */
#define BS_ERRBODY       512      /* bytes of an HTTP error body kept */

typedef struct {
    const char *base_url, *endpoint, *model, *tokenizer, *dataset, *dataset_path;
    const char *goodput, *result_file, *api_key;
    int64_t num_prompts, input_len, output_len, max_conc, warmups, seed;
    double  rate, burstiness, range_ratio, timeout_s, temperature;
    bool    ignore_eos, json, progress, chat;
} bs_opts_t;

typedef struct bs_run bs_run_t;

/* One request in flight. Freed in its done callback. */
typedef struct {
    bs_run_t *run;
    size_t    idx;              /* record index (bench) or prompt index (warm-up) */
    bool      warmup;
    struct evhttp_connection *conn;
    sse_parser_t sse;
    double    t_send, t_last, t_prev_text, ttft;   /* t_last: the chunk being parsed */
    bool      got_first, got_bytes, done_marker, had_error_cb;
    bool      in_make;          /* inside evhttp_make_request */
    bool      completed;        /* done_cb ran (while in_make: send_one frees q) */
    serve_err_t err;            /* first failure seen in the stream */
    enum evhttp_request_error http_err;
    int64_t   chunks, usage_in, usage_out;
    double   *itl;              /* gaps of this request, seconds */
    size_t    n_itl, cap_itl;
    char      errbody[BS_ERRBODY];
    size_t    errbody_len;
    char      errmsg[160];
} bs_req_t;

struct bs_run {
    const bs_opts_t *o;
    struct event_base *base;
    struct event *pump_ev;
    char     host[256], path[1024], hosthdr[300], auth[512];
    int      port;
    serve_dataset_t ds;
    /* the current phase: warm-up, then the benchmark */
    bool     warmup;
    size_t   n_phase, next_arrival, next_dispatch, in_flight, finished;
    double  *arrivals;          /* [n_phase] seconds from t0 */
    double   t0, t_end;
    /* connections */
    struct evhttp_connection **conns, **idle;
    size_t   n_conns, n_idle, cap_conns;
    /* results of the benchmark phase */
    serve_rec_t *recs;          /* [num_prompts] */
    double  *itl;               /* pooled gaps of successful requests */
    size_t   n_itl, cap_itl;
    size_t   n_usage, n_failed;
    char     samples[BS_MAX_SAMPLES][200];
    size_t   n_samples;
    double   last_progress;
    bool     oom;
};

/* --- small helpers ------------------------------------------------------ */

static bool push_double(double **v, size_t *n, size_t *cap, double x)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        double *nv = realloc(*v, nc * sizeof(double));

        if (nv == NULL)
            return false;
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = x;
    return true;
}

static void progress_draw(bs_run_t *r, bool final)
{
    double now = clock_now_s(), el;
    size_t n = r->n_phase, done = r->finished;
    int width = 30, fill;
    char bar[64];

    if (!r->o->progress || r->warmup)
        return;
    if (!final && now - r->last_progress < 0.1)
        return;
    r->last_progress = now;
    el = now - r->t0;
    fill = n ? (int)((double)done * width / (double)n) : width;
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %zu/%zu done, %zu failed, %zu in flight, %.1f s, %.2f req/s ", bar,
            done, n, r->n_failed, r->in_flight, el, el > 0 ? (double)done / el : 0.0);
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
}

/* --- one request --------------------------------------------------------- */

static void req_fail(bs_req_t *q, serve_err_t e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void req_fail(bs_req_t *q, serve_err_t e, const char *fmt, ...)
{
    va_list ap;

    if (q->err != SERVE_OK)
        return;
    q->err = e;
    va_start(ap, fmt);
    vsnprintf(q->errmsg, sizeof(q->errmsg), fmt, ap);
    va_end(ap);
}

/* One SSE event of the stream (see sse_event_cb_t). */
static duet_status_t on_event(void *arg, const char *data, size_t len)
{
    bs_req_t *q = arg;
    json_error_t je;
    json_t *o, *choices, *usage, *e;
    double now = q->t_last;     /* the chunk's arrival time, set by chunk_cb */
    bool text = false;

    if (q->err != SERVE_OK || q->done_marker)
        return DUET_OK;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        q->done_marker = true;
        return DUET_OK;
    }
    o = json_loadb(data, len, 0, &je);
    if (o == NULL || !json_is_object(o)) {
        req_fail(q, SERVE_ERR_SSE, "malformed SSE data: %.60s", data);
        json_decref(o);
        return DUET_ERR_PROTO;
    }
    if ((e = json_object_get(o, "error")) != NULL && !json_is_null(e)) {
        json_t *m = json_is_object(e) ? json_object_get(e, "message") : e;

        req_fail(q, SERVE_ERR_SERVER, "error event: %.100s",
                 json_is_string(m) ? json_string_value(m) : "(no message)");
        json_decref(o);
        return DUET_ERR_PEER;
    }
    usage = json_object_get(o, "usage");
    if (json_is_object(usage)) {
        json_t *ct = json_object_get(usage, "completion_tokens");
        json_t *pt = json_object_get(usage, "prompt_tokens");

        if (json_is_integer(ct))
            q->usage_out = json_integer_value(ct);
        if (json_is_integer(pt))
            q->usage_in = json_integer_value(pt);
    }
    choices = json_object_get(o, "choices");
    if (!json_is_array(choices) && !json_is_object(usage)) {
        req_fail(q, SERVE_ERR_SSE, "chunk without choices: %.60s", data);
        json_decref(o);
        return DUET_ERR_PROTO;
    }
    for (size_t i = 0; json_is_array(choices) && i < json_array_size(choices); i++) {
        json_t *c = json_array_get(choices, i), *t = json_object_get(c, "text");

        if (t == NULL) {
            json_t *d = json_object_get(c, "delta");

            t = json_is_object(d) ? json_object_get(d, "content") : NULL;
        }
        if (json_is_string(t) && json_string_length(t) > 0)
            text = true;
    }
    json_decref(o);
    if (!text)
        return DUET_OK;
    q->chunks++;
    if (!q->got_first) {
        q->got_first = true;
        q->ttft = now - q->t_send;
    } else if (!push_double(&q->itl, &q->n_itl, &q->cap_itl, now - q->t_prev_text)) {
        q->run->oom = true;
    }
    q->t_prev_text = now;
    return DUET_OK;
}

static void chunk_cb(struct evhttp_request *req, void *arg)
{
    bs_req_t *q = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    int code = evhttp_request_get_response_code(req);

    if (n == 0)
        return;
    q->got_bytes = true;
    if (code != 200) {          /* keep the start of the error body */
        size_t k = n < sizeof(q->errbody) - 1 - q->errbody_len ?
                   n : sizeof(q->errbody) - 1 - q->errbody_len;

        evbuffer_copyout(in, q->errbody + q->errbody_len, k);
        q->errbody_len += k;
        q->errbody[q->errbody_len] = '\0';
    } else if (q->err == SERVE_OK) {
        const char *data = (const char *)evbuffer_pullup(in, -1);
        duet_status_t s;

        q->t_last = clock_now_s();
        s = data ? sse_feed(&q->sse, data, n, on_event, q) : DUET_ERR_NOMEM;
        if (s == DUET_ERR_TOO_BIG)
            req_fail(q, SERVE_ERR_SSE, "SSE line or event over %zu bytes", q->sse.max_bytes);
        else if (s < 0 && q->err == SERVE_OK)
            req_fail(q, SERVE_ERR_SSE, "SSE: %s", duet_status_str(s));
    }
    evbuffer_drain(in, n);
}

static void error_cb(enum evhttp_request_error e, void *arg)
{
    bs_req_t *q = arg;

    q->had_error_cb = true;
    q->http_err = e;
}

static const char *http_err_str(enum evhttp_request_error e)
{
    switch (e) {
    case EVREQ_HTTP_TIMEOUT:        return "timeout";
    case EVREQ_HTTP_EOF:            return "connection closed";
    case EVREQ_HTTP_INVALID_HEADER: return "invalid response header";
    case EVREQ_HTTP_BUFFER_ERROR:   return "connection error";
    case EVREQ_HTTP_REQUEST_CANCEL: return "canceled";
    case EVREQ_HTTP_DATA_TOO_LONG:  return "response too long";
    }
    return "error";
}

static void record_sample(bs_run_t *r, const bs_req_t *q)
{
    for (size_t i = 0; i < r->n_samples; i++)
        if (strcmp(r->samples[i], q->errmsg) == 0)
            return;
    if (r->n_samples < BS_MAX_SAMPLES)
        snprintf(r->samples[r->n_samples++], sizeof(r->samples[0]), "%s", q->errmsg);
}

/* evhttp's completion callback: req is NULL when the connection failed
 * (error_cb ran first with the reason). Frees q. */
static void done_cb(struct evhttp_request *req, void *arg)
{
    bs_req_t *q = arg;
    bs_run_t *r = q->run;
    double now = clock_now_s();

    if (req == NULL || q->had_error_cb) {
        serve_err_t e = q->http_err == EVREQ_HTTP_TIMEOUT ? SERVE_ERR_TIMEOUT :
                        q->got_bytes ? SERVE_ERR_INCOMPLETE : SERVE_ERR_CONNECT;

        if (q->err == SERVE_OK || e == SERVE_ERR_TIMEOUT) {
            q->err = SERVE_OK;
            if (e == SERVE_ERR_CONNECT)
                req_fail(q, e, "no response: connection failed or closed (%s)",
                         http_err_str(q->http_err));
            else
                req_fail(q, e, "%s during the stream", http_err_str(q->http_err));
        }
    } else {
        int code = evhttp_request_get_response_code(req);

        if (code == 0) {
            req_fail(q, SERVE_ERR_CONNECT, "no response (connection refused or reset)");
        } else if (code != 200) {
            q->err = SERVE_OK;
            req_fail(q, SERVE_ERR_HTTP, "HTTP %d: %.120s", code, q->errbody);
        } else if (q->err == SERVE_OK && !q->done_marker) {
            req_fail(q, SERVE_ERR_INCOMPLETE, "the stream ended without data: [DONE]");
        }
    }
    if (!q->warmup) {
        serve_rec_t *rec = &r->recs[q->idx];

        rec->err = q->err;
        if (q->err == SERVE_OK) {
            const serve_prompt_t *p = &r->ds.v[q->idx % r->ds.n];

            rec->e2el_s = now - q->t_send;
            rec->ttft_s = q->got_first ? q->ttft : rec->e2el_s;
            rec->output_tokens = q->usage_out >= 0 ? q->usage_out : q->chunks;
            rec->input_tokens = q->usage_in >= 0 ? q->usage_in :
                                p->prompt_tokens > 0 ? p->prompt_tokens : 0;
            if (q->usage_out >= 0)
                r->n_usage++;
            for (size_t i = 0; i < q->n_itl; i++)
                if (!push_double(&r->itl, &r->n_itl, &r->cap_itl, q->itl[i]))
                    r->oom = true;
        } else {
            r->n_failed++;
            record_sample(r, q);
        }
        r->t_end = now;
    } else if (q->err != SERVE_OK) {
        log_warn("warm-up request failed: %s", q->errmsg);
    }
    r->idle[r->n_idle++] = q->conn;
    r->in_flight--;
    r->finished++;
    q->completed = true;
    if (!q->in_make) {      /* else send_one frees q when make_request returns */
        sse_free(&q->sse);
        free(q->itl);
        free(q);
    }
    progress_draw(r, false);
    event_active(r->pump_ev, EV_TIMEOUT, 0);    /* next sends, outside evhttp's callback */
}

/* The JSON body of prompt p. */
static char *request_body(const bs_run_t *r, const serve_prompt_t *p)
{
    const bs_opts_t *o = r->o;
    json_t *b = json_object();
    char *s;

    if (b == NULL)
        return NULL;
    if (o->model != NULL)
        json_object_set_new(b, "model", json_string(o->model));
    if (o->chat) {
        json_t *msgs = json_array(), *m = json_object();

        json_object_set_new(m, "role", json_string("user"));
        json_object_set_new(m, "content", json_string(p->prompt));
        json_array_append_new(msgs, m);
        json_object_set_new(b, "messages", msgs);
        json_object_set_new(b, "max_completion_tokens", json_integer(p->output_len));
    } else {
        json_object_set_new(b, "prompt", json_string(p->prompt));
        json_object_set_new(b, "max_tokens", json_integer(p->output_len));
    }
    json_object_set_new(b, "temperature", json_real(o->temperature));
    json_object_set_new(b, "stream", json_true());
    json_object_set_new(b, "stream_options", json_pack("{s:b}", "include_usage", 1));
    if (o->ignore_eos)
        json_object_set_new(b, "ignore_eos", json_true());
    s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return s;
}

static struct evhttp_connection *conn_get(bs_run_t *r)
{
    struct evhttp_connection *c;
    struct timeval tv;

    if (r->n_idle > 0)
        return r->idle[--r->n_idle];
    if (r->n_conns == r->cap_conns) {
        size_t nc = r->cap_conns ? r->cap_conns * 2 : 16;
        struct evhttp_connection **a = realloc(r->conns, nc * sizeof(*a));
        struct evhttp_connection **b;

        if (a == NULL)
            return NULL;
        r->conns = a;
        b = realloc(r->idle, nc * sizeof(*b));
        if (b == NULL)
            return NULL;
        r->idle = b;
        r->cap_conns = nc;
    }
    c = evhttp_connection_base_new(r->base, NULL, r->host, (unsigned short)r->port);
    if (c == NULL)
        return NULL;
    tv.tv_sec = (time_t)r->o->timeout_s;
    tv.tv_usec = (suseconds_t)((r->o->timeout_s - (double)tv.tv_sec) * 1e6);
    evhttp_connection_set_timeout_tv(c, &tv);
    evhttp_connection_set_retries(c, 0);
    r->conns[r->n_conns++] = c;
    return c;
}

/* Start request i of the phase. A request that cannot even be started is
 * recorded as failed at once. */
static void send_one(bs_run_t *r, size_t i)
{
    const serve_prompt_t *p = &r->ds.v[i % r->ds.n];
    bs_req_t *q = calloc(1, sizeof(*q));
    struct evhttp_request *req = NULL;
    struct evkeyvalq *h;
    char *body = NULL;
    int mk;

    if (q == NULL)
        goto err_start;
    q->run = r;
    q->idx = i;
    q->warmup = r->warmup;
    q->usage_in = q->usage_out = -1;
    sse_init(&q->sse, 0);
    body = request_body(r, p);
    q->conn = conn_get(r);
    if (body == NULL || q->conn == NULL)
        goto err_start;
    req = evhttp_request_new(done_cb, q);
    if (req == NULL)
        goto err_start;
    evhttp_request_set_chunked_cb(req, chunk_cb);
    evhttp_request_set_error_cb(req, error_cb);
    h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", r->hosthdr);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Accept", "text/event-stream");
    evhttp_add_header(h, "User-Agent", "duet-bench-serve");
    if (r->auth[0] != '\0')
        evhttp_add_header(h, "Authorization", r->auth);
    evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    free(body);
    body = NULL;
    r->in_flight++;
    q->t_send = clock_now_s();
    q->in_make = true;
    mk = evhttp_make_request(q->conn, req, EVHTTP_REQ_POST, r->path);
    q->in_make = false;
    if (q->completed) {     /* failed synchronously: done_cb did the accounting */
        sse_free(&q->sse);
        free(q->itl);
        free(q);
        return;
    }
    if (mk != 0) {
        /* refused before it was queued; evhttp owns (and freed) req */
        r->in_flight--;
        req = NULL;
        goto err_start;
    }
    return;

err_start:
    if (req != NULL)
        evhttp_request_free(req);
    free(body);
    if (q != NULL) {
        if (q->conn != NULL)
            r->idle[r->n_idle++] = q->conn;
        sse_free(&q->sse);
        free(q);
    }
    if (!r->warmup) {
        r->recs[i].err = SERVE_ERR_CONNECT;
        r->n_failed++;
        if (r->n_samples < BS_MAX_SAMPLES)
            snprintf(r->samples[r->n_samples++], sizeof(r->samples[0]),
                     "could not start the request (out of memory?)");
    }
    r->finished++;
}

static void phase_start(bs_run_t *r, bool warmup, size_t n);

/* Send what has arrived while slots are free; arm the timer for the next
 * arrival; move on when the phase is over. */
static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_run_t *r = arg;
    double now = clock_now_s() - r->t0;
    int64_t mc = r->o->max_conc;

    while (r->next_arrival < r->n_phase && r->arrivals[r->next_arrival] <= now)
        r->next_arrival++;
    while (r->next_dispatch < r->next_arrival && (mc <= 0 || (int64_t)r->in_flight < mc))
        send_one(r, r->next_dispatch++);
    if (r->finished == r->n_phase) {
        if (r->warmup) {
            phase_start(r, false, (size_t)r->o->num_prompts);
            return;
        }
        progress_draw(r, true);
        event_base_loopexit(r->base, NULL);
        return;
    }
    if (r->next_arrival < r->n_phase) {
        double dt = r->arrivals[r->next_arrival] - (clock_now_s() - r->t0);
        struct timeval tv;

        if (dt < 0)
            dt = 0;
        tv.tv_sec = (time_t)dt;
        tv.tv_usec = (suseconds_t)((dt - (double)tv.tv_sec) * 1e6);
        evtimer_add(r->pump_ev, &tv);
    }
}

static void phase_start(bs_run_t *r, bool warmup, size_t n)
{
    r->warmup = warmup;
    r->n_phase = n;
    r->next_arrival = r->next_dispatch = r->finished = 0;
    if (!warmup) {
        serve_rng_t rng;

        serve_rng_seed(&rng, (uint64_t)r->o->seed ^ 0xa11a1ull);
        serve_arrivals(&rng, n, r->o->rate, r->o->burstiness, r->arrivals);
    } else {
        for (size_t i = 0; i < n; i++)
            r->arrivals[i] = 0.0;
    }
    r->t0 = clock_now_s();
    r->t_end = r->t0;
    event_active(r->pump_ev, EV_TIMEOUT, 0);
}

/* --- set-up and report ------------------------------------------------- */

static int parse_url(bs_run_t *r, const bs_opts_t *o)
{
    struct evhttp_uri *u = evhttp_uri_parse(o->base_url);
    const char *scheme, *host, *path;
    char prefix[512] = "";
    const char *ep = o->endpoint;
    size_t pl;

    if (u == NULL) {
        fprintf(stderr, "duet bench serve: --base-url '%s' is not a URL\n", o->base_url);
        return -1;
    }
    scheme = evhttp_uri_get_scheme(u);
    host = evhttp_uri_get_host(u);
    path = evhttp_uri_get_path(u);
    if (scheme == NULL || strcmp(scheme, "http") != 0 || host == NULL || host[0] == '\0') {
        fprintf(stderr, "duet bench serve: --base-url '%s': only http://HOST[:PORT] is "
                "supported\n", o->base_url);
        evhttp_uri_free(u);
        return -1;
    }
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
    snprintf(r->hosthdr, sizeof(r->hosthdr), "%s:%d", host, r->port);
    if (path != NULL)
        snprintf(prefix, sizeof(prefix), "%s", path);
    evhttp_uri_free(u);
    pl = strlen(prefix);
    while (pl > 0 && prefix[pl - 1] == '/')
        prefix[--pl] = '\0';
    if (ep[0] != '/') {
        fprintf(stderr, "duet bench serve: --endpoint '%s' must start with '/'\n", ep);
        return -1;
    }
    snprintf(r->path, sizeof(r->path), "%s%s", prefix, ep);
    return 0;
}

static int write_result(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (f == NULL || fputs(text, f) < 0 || fputc('\n', f) < 0) {
        fprintf(stderr, "duet bench serve: cannot write %s: %s\n", path, strerror(errno));
        if (f != NULL)
            fclose(f);
        return -1;
    }
    return fclose(f) == 0 ? 0 : -1;
}

static int bench_serve_run(int argc, char **argv)
{
    const char *rate_s = "inf";
    bs_opts_t o = {
        .base_url = "http://127.0.0.1:8000", .endpoint = "/v1/completions",
        .dataset = "random", .num_prompts = 100, .input_len = 128, .output_len = 64,
        .rate = INFINITY, .burstiness = 1.0, .range_ratio = -1.0, .timeout_s = 600.0,
        .progress = isatty(STDERR_FILENO) != 0,
    };
    const flag_t flags[] = {
        {"base-url", 0, FLAG_STRING, &o.base_url, "server, http://HOST:PORT[/PREFIX] (default http://127.0.0.1:8000)", "URL",
         0, 0, 0, 0},
        {"endpoint", 0, FLAG_STRING, &o.endpoint,
         "/v1/completions (default) or /v1/chat/completions", "PATH", 0, 0, 0, 0},
        {"model", 0, FLAG_STRING, &o.model, "model name sent in requests (default: none); "
         "a .gguf path is also the default --tokenizer", "NAME", 0, 0, 0, 0},
        {"tokenizer", 0, FLAG_STRING, &o.tokenizer, "GGUF whose tokenizer builds and counts "
         "prompts, or 'none' (default: --model if a file, else " BS_DEFAULT_MODEL ")", "FILE",
         0, 0, 0, 0},
        {"dataset", 'd', FLAG_STRING, &o.dataset, "random (default) | fixed | jsonl", "NAME", 0, 0, 0, 0},
        {"dataset-path", 0, FLAG_STRING, &o.dataset_path,
         "jsonl: {\"prompt\": str, \"output_len\": n} per line", "FILE", 0, 0, 0, 0},
        {"num-prompts", 'n', FLAG_INT, &o.num_prompts, "requests to send (default 100)", "N", 1, 10000000,
         0, 0},
        {"input-len", 0, FLAG_INT, &o.input_len, "prompt tokens (default 128; random: the "
         "middle of the range)", "N", 1, 1 << 20, 0, 0},
        {"random-input-len", 0, FLAG_INT, &o.input_len, "same as --input-len", "N", 1, 1 << 20,
         0, 0},
        {"output-len", 0, FLAG_INT, &o.output_len, "max_tokens (default 64; random: the middle "
         "of the range; jsonl: when a line has none)", "N", 1, 1 << 20, 0, 0},
        {"random-output-len", 0, FLAG_INT, &o.output_len, "same as --output-len", "N", 1,
         1 << 20, 0, 0},
        {"range-ratio", 0, FLAG_DOUBLE, &o.range_ratio, "random: lengths uniform in "
         "[len*(1-R), len*(1+R)] (default 0.5)", "R", 0, 0, 0.0, 0.999},
        {"random-range-ratio", 0, FLAG_DOUBLE, &o.range_ratio, "same as --range-ratio", "R",
         0, 0, 0.0, 0.999},
        {"request-rate", 'r', FLAG_STRING, &rate_s, "requests per second, or inf (default: "
         "all at once)", "R", 0, 0, 0, 0},
        {"burstiness", 0, FLAG_DOUBLE, &o.burstiness, "gamma shape of the arrivals: 1 Poisson, "
         "< 1 burstier, > 1 more regular", "B", 0, 0, 1e-3, 1e3},
        {"max-concurrency", 'c', FLAG_INT, &o.max_conc, "requests in flight at most (0: no "
         "limit)", "N", 0, 1000000, 0, 0},
        {"num-warmups", 0, FLAG_INT, &o.warmups, "warm-up requests before the benchmark "
         "(not counted)", "N", 0, 100000, 0, 0},
        {"ignore-eos", 0, FLAG_BOOL, &o.ignore_eos, "send ignore_eos: generate max_tokens",
         NULL, 0, 0, 0, 0},
        {"temperature", 0, FLAG_DOUBLE, &o.temperature, "sampling temperature (default 0)",
         "T", 0, 0, 0.0, 100.0},
        {"seed", 0, FLAG_INT, &o.seed, "seed of prompts and arrivals", "N", 0, INT64_MAX, 0, 0},
        {"goodput", 0, FLAG_STRING, &o.goodput, "SLOs for goodput, e.g. \"ttft:500 tpot:50\" "
         "(ms; ttft, tpot, e2el)", "SLOS", 0, 0, 0, 0},
        {"timeout", 0, FLAG_DOUBLE, &o.timeout_s, "seconds without a byte before a request "
         "fails (default 600)", "S", 0, 0, 0.001, 86400.0},
        {"api-key", 0, FLAG_STRING, &o.api_key, "bearer token (default: $OPENAI_API_KEY)",
         "KEY", 0, 0, 0, 0},
        {"progress", 0, FLAG_BOOL, &o.progress, "progress bar on stderr (default: when it "
         "is a terminal)", NULL, 0, 0, 0, 0},
        {"json", 0, FLAG_BOOL, &o.json, "print the result as one JSON object", NULL, 0, 0, 0, 0},
        {"result-file", 0, FLAG_STRING, &o.result_file, "also write the result JSON here",
         "FILE", 0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet bench serve", "[SLO...]",
                             "Online serving benchmark against an OpenAI-compatible server: "
                             "TTFT, TPOT, ITL, E2EL, throughput and goodput."};
    char *pos[8], *end;
    int npos = 0, rc = 1;
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, pos, 8, &npos);
    serve_slo_t slo = {0};
    serve_summary_t sum;
    serve_report_t info;
    const char *samples[BS_MAX_SAMPLES];
    serve_rng_t rng;
    bs_run_t r;
    gguf_t *g = NULL;
    tok_t *tok = NULL;
    const char *tok_path = NULL;
    char err[512] = "", spec[512] = "";
    json_t *res = NULL;
    char *text = NULL;
    size_t n_arr;

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    memset(&r, 0, sizeof(r));
    r.o = &o;
    /* vLLM's --goodput takes several words: extra positionals continue it */
    if (npos > 0 && o.goodput == NULL) {
        fprintf(stderr, "duet bench serve: unexpected argument '%s' (see --help)\n", pos[0]);
        return 2;
    }
    if (o.goodput != NULL) {
        size_t l = (size_t)snprintf(spec, sizeof(spec), "%s", o.goodput);

        for (int i = 0; i < npos && l < sizeof(spec); i++)
            l += (size_t)snprintf(spec + l, sizeof(spec) - l, " %s", pos[i]);
        if (serve_slo_parse(spec, &slo, err, sizeof(err)) != DUET_OK) {
            fprintf(stderr, "duet bench serve: %s\n", err);
            return 2;
        }
    }
    o.rate = strtod(rate_s, &end);
    if (end == rate_s || *end != '\0' || !(o.rate > 0)) {
        fprintf(stderr, "duet bench serve: --request-rate needs a positive number or inf, "
                "not '%s'\n", rate_s);
        return 2;
    }
    o.chat = strstr(o.endpoint, "chat/completions") != NULL;
    if (parse_url(&r, &o) != 0)
        return 2;
    if (o.api_key == NULL)
        o.api_key = getenv("OPENAI_API_KEY");
    if (o.api_key != NULL && o.api_key[0] != '\0')
        snprintf(r.auth, sizeof(r.auth), "Bearer %s", o.api_key);
    if (strcmp(o.dataset, "random") != 0 && strcmp(o.dataset, "fixed") != 0 &&
        strcmp(o.dataset, "jsonl") != 0) {
        fprintf(stderr, "duet bench serve: --dataset '%s': expected random, fixed or jsonl\n",
                o.dataset);
        return 2;
    }
    if (strcmp(o.dataset, "jsonl") == 0 && o.dataset_path == NULL) {
        fprintf(stderr, "duet bench serve: --dataset jsonl needs --dataset-path FILE\n");
        return 2;
    }
    if (strcmp(o.dataset, "jsonl") != 0 && o.dataset_path != NULL) {
        fprintf(stderr, "duet bench serve: --dataset-path needs --dataset jsonl\n");
        return 2;
    }
    if (o.range_ratio >= 0 && strcmp(o.dataset, "random") != 0) {
        fprintf(stderr, "duet bench serve: --range-ratio applies to --dataset random only\n");
        return 2;
    }
    if (o.range_ratio < 0)
        o.range_ratio = 0.5;

    /* tokenizer */
    if (o.tokenizer != NULL)
        tok_path = strcmp(o.tokenizer, "none") == 0 ? NULL : o.tokenizer;
    else if (o.model != NULL && access(o.model, R_OK) == 0)
        tok_path = o.model;
    else if (access(BS_DEFAULT_MODEL, R_OK) == 0)
        tok_path = BS_DEFAULT_MODEL;
    if (tok_path != NULL && (gguf_open(tok_path, &g, err, sizeof(err)) != DUET_OK ||
                             tok_load(g, &tok, err, sizeof(err)) != DUET_OK)) {
        fprintf(stderr, "duet bench serve: --tokenizer %s: %s\n", tok_path, err);
        goto out;
    }

    /* prompts */
    serve_rng_seed(&rng, (uint64_t)o.seed);
    if (strcmp(o.dataset, "jsonl") == 0) {
        s = serve_data_jsonl(o.dataset_path, tok, (size_t)o.num_prompts, (int32_t)o.output_len,
                             &r.ds, err, sizeof(err));
    } else {
        double rr = strcmp(o.dataset, "fixed") == 0 ? 0.0 : o.range_ratio;
        int32_t il = (int32_t)floor((double)o.input_len * (1 - rr)),
                ih = (int32_t)ceil((double)o.input_len * (1 + rr)),
                ol = (int32_t)floor((double)o.output_len * (1 - rr)),
                oh = (int32_t)ceil((double)o.output_len * (1 + rr));

        s = serve_data_random(tok, (size_t)o.num_prompts, il < 1 ? 1 : il, ih,
                              ol < 1 ? 1 : ol, oh, &rng, &r.ds, err, sizeof(err));
        if (s == DUET_OK && strcmp(o.dataset, "fixed") == 0)
            r.ds.kind = "fixed";
    }
    if (s != DUET_OK) {
        fprintf(stderr, "duet bench serve: %s\n", err[0] ? err : duet_status_str(s));
        goto out;
    }

    n_arr = (size_t)(o.num_prompts > o.warmups ? o.num_prompts : o.warmups);
    r.arrivals = calloc(n_arr ? n_arr : 1, sizeof(double));
    r.recs = calloc((size_t)o.num_prompts, sizeof(serve_rec_t));
    r.base = event_base_new();
    if (r.arrivals == NULL || r.recs == NULL || r.base == NULL)
        goto err_nomem;
    r.pump_ev = evtimer_new(r.base, pump_cb, &r);
    if (r.pump_ev == NULL)
        goto err_nomem;
    if (!o.json)
        printf("duet bench serve: %s%s, %s dataset (%s), %" PRId64 " prompts, rate %g/s, "
               "burstiness %g, max concurrency %" PRId64 "%s\n", o.base_url, r.path,
               r.ds.kind, tok ? "tokenizer-exact lengths" : "approximate lengths",
               o.num_prompts, o.rate, o.burstiness, o.max_conc,
               o.max_conc ? "" : " (unlimited)");
    fflush(stdout);
    phase_start(&r, o.warmups > 0, (size_t)(o.warmups > 0 ? o.warmups : o.num_prompts));
    event_base_dispatch(r.base);
    if (r.oom)
        goto err_nomem;

    if (serve_summarize(r.recs, (size_t)o.num_prompts, r.itl, r.n_itl, r.t_end - r.t0, &slo,
                        &sum) != DUET_OK)
        goto err_nomem;
    for (size_t i = 0; i < r.n_samples; i++)
        samples[i] = r.samples[i];
    info = (serve_report_t){
        .base_url = o.base_url, .endpoint = o.endpoint, .model = o.model,
        .tokenizer = tok_path ? tok_path : "none", .dataset = r.ds.kind,
        .lengths_exact = r.ds.exact != 0, .chat = o.chat, .ignore_eos = o.ignore_eos,
        .num_prompts = o.num_prompts, .max_concurrency = o.max_conc,
        .num_warmups = o.warmups, .rate = o.rate, .burstiness = o.burstiness,
        .n_usage = r.n_usage, .samples = samples, .n_samples = r.n_samples,
    };
    res = serve_report_json(&info, &sum, &slo);
    text = res ? json_dumps(res, JSON_INDENT(1) | JSON_REAL_PRECISION(10)) : NULL;
    if (text == NULL)
        goto err_nomem;
    if (o.json)
        printf("%s\n", text);
    else
        serve_report_print(stdout, &info, &sum, &slo);
    if (o.result_file != NULL && write_result(o.result_file, text) != 0)
        goto out;
    rc = sum.completed > 0 ? 0 : 3;
    goto out;

err_nomem:
    fprintf(stderr, "duet bench serve: out of memory\n");
out:
    free(text);
    json_decref(res);
    for (size_t i = 0; i < r.n_conns; i++)
        evhttp_connection_free(r.conns[i]);
    free(r.conns);
    free(r.idle);
    if (r.pump_ev != NULL)
        event_free(r.pump_ev);
    if (r.base != NULL)
        event_base_free(r.base);
    free(r.itl);
    free(r.recs);
    free(r.arrivals);
    serve_data_free(&r.ds);
    tok_destroy(tok);
    gguf_close(g);
    return rc;
}

const cli_cmd_t cli_bench_serve = {"serve", "online serving benchmark (OpenAI-compatible server)",
                                   bench_serve_run};
