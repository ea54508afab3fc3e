/* The OpenAI-compatible HTTP front end on libevent's evhttp: routing,
 * API keys, body limits, request handlers and response writers (whole JSON
 * bodies and SSE streams). */
#define DUET_LOG_COMPONENT "router"
#include "router_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "common/clock.h"
#include "common/log.h"

#define HTTP_CHUNK_HEAD 18      /* "%zx\r\n" of any size_t */

typedef void (*http_handler_t)(router_t *r, struct evhttp_request *hreq,
                               const char *body, size_t len);

typedef struct {
    const char    *path;
    int            method;          /* EVHTTP_REQ_GET or EVHTTP_REQ_POST */
    bool           auth;            /* needs the API key when one is set */
    http_handler_t handler;
} http_route_t;

/* --- responses ---------------------------------------------------------- */

static const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default:  return "Error";
    }
}

/* Send a JSON value (stolen) with a status. */
void http_send_json(struct evhttp_request *hreq, int status, json_t *v)
{
    struct evbuffer *buf = evbuffer_new();
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;

    if (v != NULL)
        json_decref(v);
    if (buf == NULL || s == NULL) {
        free(s);
        if (buf)
            evbuffer_free(buf);
        evhttp_send_error(hreq, 500, "Internal Server Error");
        return;
    }
    evbuffer_add(buf, s, strlen(s));
    free(s);
    evhttp_add_header(evhttp_request_get_output_headers(hreq), "Content-Type",
                      "application/json");
    evhttp_send_reply(hreq, status, http_reason(status), buf);
    evbuffer_free(buf);
}

void http_send_error(struct evhttp_request *hreq, int status, const char *param,
                     const char *fmt, ...)
{
    char msg[600];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* a message cut inside a UTF-8 sequence would make json_pack fail */
    if (!utf8_valid(msg, strlen(msg)))
        snprintf(msg, sizeof(msg), "invalid request");
    http_send_json(hreq, status, oai_error_json(status, param, msg));
}

void http_send_oai_err(struct evhttp_request *hreq, const oai_err_t *err)
{
    http_send_error(hreq, err->status ? err->status : 400, err->param, "%s", err->message);
}

/* --- streaming output ---------------------------------------------------- */

void http_detach(rjob_t *job)
{
    if (job->hup != NULL) {
        event_free(job->hup);
        job->hup = NULL;
    }
    if (job->hconn != NULL)
        evhttp_connection_set_closecb(job->hconn, NULL, NULL);
    job->hconn = NULL;
    job->hreq = NULL;
}

static void http_sse_start(rjob_t *job)
{
    struct evkeyvalq *h;
    const char *te;
    int one = 1;

    if (job->headers_sent)
        return;
    h = evhttp_request_get_output_headers(job->hreq);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_send_reply_start(job->hreq, 200, "OK");
    job->headers_sent = true;
    /* evhttp chose chunked encoding (HTTP/1.1): text chunks may take the
     * fast path (http_sse_text) */
    te = evhttp_find_header(h, "Transfer-Encoding");
    job->bev = job->hconn != NULL ? evhttp_connection_get_bufferevent(job->hconn) : NULL;
    job->fd = job->bev != NULL ? bufferevent_getfd(job->bev) : -1;
    job->chunked = te != NULL && strcasecmp(te, "chunked") == 0 && job->fd >= 0;
    /* each token leaves at once, not held back by Nagle until the client's
     * ACK of the previous one */
    if (job->fd >= 0)
        setsockopt(job->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static oai_meta_t http_meta(const rjob_t *job)
{
    oai_meta_t m = {job->p.kind, job->id, job->created, job->r->served_name};

    return m;
}

/* Send one SSE event (v stolen). */
static void http_sse_send(rjob_t *job, json_t *v)
{
    struct evbuffer *buf = job->r->scratch;

    if (sse_event(buf, v) == DUET_OK)
        evhttp_send_reply_chunk(job->hreq, buf);
    evbuffer_drain(buf, evbuffer_get_length(buf));
}

/* `data: [DONE]`, end the stream, stop watching the client. The close
 * callback is cleared before evhttp_send_reply_end, which may free the
 * connection (and run that callback) at once. */
static void http_sse_done(rjob_t *job)
{
    struct evbuffer *buf = job->r->scratch;
    struct evhttp_request *hreq = job->hreq;

    if (sse_done(buf) == DUET_OK)
        evhttp_send_reply_chunk(hreq, buf);
    evbuffer_drain(buf, evbuffer_get_length(buf));
    http_detach(job);
    evhttp_send_reply_end(hreq);
}

/* Send one chunk of a sequence (text NULL: its final one). */
static void http_sse_chunk(rreq_t *seq, const char *text, size_t n, const char *finish)
{
    rjob_t *job = seq->job;
    oai_meta_t m = http_meta(job);
    bool role = job->p.kind == OAI_CHAT && !seq->role_sent;
    struct evbuffer *buf = job->r->scratch;

    seq->role_sent = true;
    if (sse_chunk(buf, &m, seq->index, text, n, finish, role) == DUET_OK)
        evhttp_send_reply_chunk(job->hreq, buf);
    evbuffer_drain(buf, evbuffer_get_length(buf));
}

/* Bytes of the client's response stream, in order after everything queued
 * before: written to the socket at once when nothing is queued (no event
 * loop round trip, no epoll_ctl), else (and for what the socket does not
 * take now) appended to the connection's output for its bufferevent. On an
 * error other than EAGAIN the bytes are queued too, so that the
 * bufferevent meets the error and evhttp closes the connection as usual. */
static void http_conn_write(rjob_t *job, const char *p, size_t n)
{
    struct evbuffer *out = bufferevent_get_output(job->bev);
    ssize_t w = 0;

    if (evbuffer_get_length(out) == 0) {
        w = send(job->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0)
            w = 0;
    }
    if ((size_t)w < n) {
        if (evbuffer_add(out, p + w, n - (size_t)w) != 0)
            log_error("out of memory queueing the output of %s", job->id);
        bufferevent_enable(job->bev, EV_WRITE);
    }
}

/* The SSE chunk of one token's text on a chunked stream (not the role
 * chunk), as one HTTP chunk built in one buffer: the choice's prebuilt
 * prefix, the escaped text, the constant suffix. false when this path does
 * not apply (the caller uses http_sse_chunk). */
static bool http_sse_text(rreq_t *seq, const char *text, size_t n)
{
    static const char hexd[] = "0123456789abcdef";
    rjob_t *job = seq->job;
    router_t *r = job->r;
    const char *suf;
    size_t nsuf, need, len, k;
    char *body, *start;

    if (!job->chunked || (job->p.kind == OAI_CHAT && !seq->role_sent))
        return false;
    if (seq->sse_pre == NULL) {
        oai_meta_t m = http_meta(job);
        struct evbuffer *b = r->scratch;
        size_t np;

        evbuffer_drain(b, evbuffer_get_length(b));
        if (sse_text_prefix(b, &m, seq->index) != DUET_OK)
            return false;
        np = evbuffer_get_length(b);
        seq->sse_pre = malloc(np);
        if (seq->sse_pre == NULL)
            return false;
        evbuffer_remove(b, seq->sse_pre, np);
        seq->nsse_pre = np;
    }
    suf = sse_text_suffix(job->p.kind, &nsuf);
    /* room before the body for the chunk-size line, written once the
     * length is known: up to 16 hex digits and CRLF */
    need = HTTP_CHUNK_HEAD + seq->nsse_pre + JSON_ESCAPE_MAX(n) + nsuf + 2;
    if (need > r->wcap) {
        size_t cap = need < 4096 ? 4096 : need * 2;
        char *nb = realloc(r->wbuf, cap);

        if (nb == NULL)
            return false;
        r->wbuf = nb;
        r->wcap = cap;
    }
    body = r->wbuf + HTTP_CHUNK_HEAD;
    memcpy(body, seq->sse_pre, seq->nsse_pre);
    len = seq->nsse_pre;
    len += json_escape_to(body + len, text, n);
    memcpy(body + len, suf, nsuf);
    len += nsuf;
    /* the chunk: HEX-LENGTH CRLF body CRLF (evhttp_send_reply_chunk's bytes) */
    start = body - 2;
    start[0] = '\r';
    start[1] = '\n';
    k = len;
    do {
        *--start = hexd[k & 15];
        k >>= 4;
    } while (k != 0);
    body[len] = '\r';
    body[len + 1] = '\n';
    http_conn_write(job, start, (size_t)(body + len + 2 - start));
    return true;
}

static const char *http_finish_str(finish_reason_t reason)
{
    return reason == FINISH_LENGTH ? "length" : "stop";
}

void http_emit_token(rreq_t *seq, const char *text, size_t n)
{
    rjob_t *job = seq->job;

    if (job->hreq == NULL)
        return;
    if (!job->p.stream) {
        if (sbuf_add(&seq->text, text, n) != DUET_OK)
            log_error("out of memory collecting the output of %s", job->id);
        return;
    }
    http_sse_start(job);
    if (!http_sse_text(seq, text, n))
        http_sse_chunk(seq, text, n, NULL);
}

void http_emit_seq_finish(rreq_t *seq)
{
    rjob_t *job = seq->job;

    if (job->hreq == NULL || !job->p.stream)
        return;
    http_sse_start(job);
    http_sse_chunk(seq, NULL, 0, http_finish_str(seq->reason));
}

void http_emit_job_done(rjob_t *job)
{
    oai_meta_t m = http_meta(job);
    struct evhttp_request *hreq = job->hreq;
    oai_choice_t *choices;
    json_t *v;

    if (hreq == NULL)
        return;
    if (job->p.stream) {
        http_sse_start(job);
        if (job->p.include_usage)
            http_sse_send(job, oai_usage_chunk_json(&m, job->prompt_tokens,
                                                    job->completion_tokens));
        http_sse_done(job);
        return;
    }
    choices = calloc(job->nseq, sizeof(*choices));
    v = NULL;
    if (choices != NULL) {
        for (uint32_t i = 0; i < job->nseq; i++) {
            choices[i].text = job->seqs[i]->text.p;
            choices[i].len = job->seqs[i]->text.n;
            choices[i].finish = http_finish_str(job->seqs[i]->reason);
        }
        v = oai_response_json(&m, choices, job->nseq, job->prompt_tokens,
                              job->completion_tokens);
        free(choices);
    }
    http_detach(job);
    if (v == NULL)
        http_send_error(hreq, 500, NULL, "cannot encode the response");
    else
        http_send_json(hreq, 200, v);
}

void http_emit_failure(rjob_t *job, int status, const char *msg)
{
    struct evhttp_request *hreq = job->hreq;

    if (hreq == NULL)
        return;
    if (!job->headers_sent) {
        http_detach(job);
        http_send_error(hreq, status, NULL, "%s", msg);
        return;
    }
    http_sse_send(job, oai_error_json(status, NULL, msg));
    http_sse_done(job);
}

/* The client closed the connection while its request was in progress. */
static void http_close_cb(struct evhttp_connection *conn, void *arg)
{
    rjob_t *job = arg;
    struct evhttp_request *hreq = job->hreq;

    job->hconn = NULL;
    if (job->hup != NULL) {
        event_free(job->hup);
        job->hup = NULL;
    }
    /* evhttp detached an unfinished request from the dying connection and
     * left it to us; one still attached is freed with the connection */
    if (hreq != NULL && evhttp_request_get_connection(hreq) == NULL)
        evhttp_request_free(hreq);
    rjob_client_gone(job);
}

/* The client's socket reported EOF or an error while its request was in
 * progress. evhttp itself only notices while writing, so a client that
 * gives up on a long non-streaming request would otherwise keep its KV
 * blocks busy until the end. Freeing the connection runs http_close_cb. */
static void http_hup_cb(evutil_socket_t fd, short what, void *arg)
{
    rjob_t *job = arg;

    if (job->hconn != NULL)
        evhttp_connection_free(job->hconn);
}

static void http_watch_client(router_t *r, rjob_t *job)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(job->hconn);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;

    if (fd < 0 || !(event_base_get_features(r->base) & EV_FEATURE_EARLY_CLOSE))
        return;
    job->hup = event_new(r->base, fd, EV_CLOSED, http_hup_cb, job);
    if (job->hup != NULL && event_add(job->hup, NULL) != 0) {
        event_free(job->hup);
        job->hup = NULL;
    }
}

/* --- generation endpoints ----------------------------------------------- */

bool http_model_ok(router_t *r, struct evhttp_request *hreq, const char *model)
{
    if (model == NULL || strcmp(model, r->served_name) == 0)
        return true;
    http_send_error(hreq, 404, "model", "The model `%.200s` does not exist.", model);
    return false;
}

/* Tokenize prompt i of the job (chat: the rendered conversation) into
 * *ids_p / *n_p and check it against the context. Sends the HTTP error and
 * returns false on failure. */
static bool http_prompt_ids(router_t *r, struct evhttp_request *hreq, rjob_t *job, size_t i,
                            int32_t **ids_p, size_t *n_p, uint32_t *max_tokens_p)
{
    const char *param = job->p.kind == OAI_CHAT ? "messages" : "prompt";
    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL, terr[256] = "";
    duet_status_t s;

    if (job->p.kind == OAI_CHAT) {
        s = rtok_apply_chat(r->tok, job->p.msgs, job->p.nmsgs, job->p.add_generation_prompt,
                            &text, terr, sizeof(terr));
        if (s == DUET_ERR_INVALID) {
            http_send_error(hreq, 400, "messages", "%s", terr[0] ? terr : "invalid conversation");
            return false;
        }
        if (s == DUET_OK)
            s = rtok_encode(r->tok, text, strlen(text), true, &ids, &n);
        free(text);
    } else if (job->p.prompts[i].ids != NULL) {
        n = job->p.prompts[i].nids;
        ids = malloc(n * sizeof(*ids));
        s = ids != NULL ? DUET_OK : DUET_ERR_NOMEM;
        if (ids != NULL)
            memcpy(ids, job->p.prompts[i].ids, n * sizeof(*ids));
    } else {
        s = rtok_encode(r->tok, job->p.prompts[i].text, job->p.prompts[i].len, true, &ids, &n);
    }
    if (s != DUET_OK) {
        http_send_error(hreq, 500, NULL, "tokenization failed: %s", duet_status_str(s));
        return false;
    }
    if (n == 0) {
        free(ids);
        http_send_error(hreq, 400, param, "the prompt is empty after tokenization");
        return false;
    }
    if (n >= (size_t)r->tok->max_model_len) {
        free(ids);
        http_send_error(hreq, 400, param,
                        "This model's maximum context length is %d tokens. However, your "
                        "request has %zu input tokens. Please reduce the length of the input.",
                        r->tok->max_model_len, n);
        return false;
    }
    if (job->p.max_tokens < 0) {
        *max_tokens_p = (uint32_t)((size_t)r->tok->max_model_len - n);
    } else if ((uint64_t)job->p.max_tokens + n > (uint64_t)r->tok->max_model_len) {
        free(ids);
        http_send_error(hreq, 400, "max_tokens",
                        "This model's maximum context length is %d tokens. However, you "
                        "requested %llu tokens (%zu in the input, %lld in the completion). "
                        "Please reduce the length of the input or the completion.",
                        r->tok->max_model_len, (unsigned long long)job->p.max_tokens + n, n,
                        (long long)job->p.max_tokens);
        return false;
    } else {
        *max_tokens_p = (uint32_t)job->p.max_tokens;
    }
    *ids_p = ids;
    *n_p = n;
    return true;
}

static rreq_t *http_seq_new(router_t *r, rjob_t *job, int index)
{
    rreq_t *seq = calloc(1, sizeof(*seq));

    if (seq == NULL)
        return NULL;
    seq->r = r;
    seq->job = job;
    seq->index = index;
    sbuf_init(&seq->text);
    sbuf_init(&seq->delta);
    detok_init(&seq->dt, r->tok, job->p.skip_special_tokens, job->p.stop, job->p.nstop);
    /* n samples of one prompt must differ: seed, seed + 1, ... */
    seq->seed = job->p.seed + (int64_t)(index % job->p.n);
    return seq;
}

static void http_generate(router_t *r, struct evhttp_request *hreq, const char *body,
                          size_t len, oai_kind_t kind)
{
    rjob_t *job = calloc(1, sizeof(*job));
    oai_err_t err;
    size_t nprompts;

    if (job == NULL) {
        http_send_error(hreq, 500, NULL, "out of memory");
        return;
    }
    job->r = r;
    job->t_arrive = clock_now_ns();
    if (oai_parse(kind, body, len, r->tok->vocab, &job->p, &err) != DUET_OK) {
        http_send_oai_err(hreq, &err);
        free(job);
        return;
    }
    if (!http_model_ok(r, hreq, job->p.model))
        goto err_free;
    nprompts = kind == OAI_CHAT ? 1 : job->p.nprompts;
    job->seqs = calloc(nprompts * (size_t)job->p.n, sizeof(*job->seqs));
    if (job->seqs == NULL) {
        http_send_error(hreq, 500, NULL, "out of memory");
        goto err_free;
    }
    for (size_t i = 0; i < nprompts; i++) {
        int32_t *ids;
        size_t n;
        uint32_t max_tokens;

        if (!http_prompt_ids(r, hreq, job, i, &ids, &n, &max_tokens))
            goto err_free;
        job->prompt_tokens += n;
        for (int j = 0; j < job->p.n; j++) {
            rreq_t *seq = http_seq_new(r, job, (int)(i * (size_t)job->p.n) + j);

            if (seq != NULL) {
                seq->prompt = j == job->p.n - 1 ? ids : malloc(n * sizeof(*ids));
                if (seq->prompt != NULL && seq->prompt != ids)
                    memcpy(seq->prompt, ids, n * sizeof(*ids));
            }
            if (seq == NULL || seq->prompt == NULL) {
                if (seq != NULL)
                    job->seqs[job->nseq++] = seq;
                if (seq == NULL || seq->prompt != ids)
                    free(ids);
                http_send_error(hreq, 500, NULL, "out of memory");
                goto err_free;
            }
            seq->nprompt = n;
            seq->max_tokens = max_tokens;
            job->seqs[job->nseq++] = seq;
        }
    }
    snprintf(job->id, sizeof(job->id), "%s-%016llx", kind == OAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)(++r->next_http_id * 0x9e3779b97f4a7c15ull));
    job->created = clock_wall_s();
    job->hreq = hreq;
    job->hconn = evhttp_request_get_connection(hreq);
    if (job->hconn != NULL) {
        evhttp_connection_set_closecb(job->hconn, http_close_cb, job);
        http_watch_client(r, job);
    }
    rjob_admit(r, job);
    return;

err_free:
    rjob_free(job);
}

static void http_chat(router_t *r, struct evhttp_request *hreq, const char *body, size_t len)
{
    http_generate(r, hreq, body, len, OAI_CHAT);
}

static void http_completions(router_t *r, struct evhttp_request *hreq, const char *body,
                             size_t len)
{
    http_generate(r, hreq, body, len, OAI_COMPLETION);
}

/* --- dispatch ------------------------------------------------------------ */

static const http_route_t http_routes[] = {
    {"/v1/chat/completions", EVHTTP_REQ_POST, true,  http_chat},
    {"/v1/completions",      EVHTTP_REQ_POST, true,  http_completions},
    {"/v1/models",           EVHTTP_REQ_GET,  true,  http_models},
    {"/v1/cluster",          EVHTTP_REQ_GET,  true,  http_cluster},
    {"/tokenize",            EVHTTP_REQ_POST, true,  http_tokenize},
    {"/detokenize",          EVHTTP_REQ_POST, true,  http_detokenize},
    {"/health",              EVHTTP_REQ_GET,  false, http_health},
    {"/metrics",             EVHTTP_REQ_GET,  false, http_metrics},
};

static bool http_auth_ok(router_t *r, struct evhttp_request *hreq)
{
    const char *key = r->cfg.api_key, *h;
    size_t klen, hlen;
    unsigned char diff;

    if (key == NULL || key[0] == '\0')
        return true;
    h = evhttp_find_header(evhttp_request_get_input_headers(hreq), "Authorization");
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    klen = strlen(key);
    hlen = strlen(h);
    diff = hlen != klen;
    for (size_t i = 0; i < hlen; i++)
        diff |= (unsigned char)(h[i] ^ key[i % klen]);
    return diff == 0;
}

static void http_gencb(struct evhttp_request *hreq, void *arg)
{
    router_t *r = arg;
    const char *uri = evhttp_request_get_uri(hreq);
    struct evbuffer *in = evhttp_request_get_input_buffer(hreq);
    char path[256];
    size_t plen = strcspn(uri, "?#"), blen;
    int method = evhttp_request_get_command(hreq);
    const http_route_t *route = NULL;
    const char *body;

    if (plen >= sizeof(path))
        plen = sizeof(path) - 1;
    memcpy(path, uri, plen);
    path[plen] = '\0';
    while (plen > 1 && path[plen - 1] == '/')
        path[--plen] = '\0';
    for (size_t i = 0; i < sizeof(http_routes) / sizeof(http_routes[0]); i++)
        if (strcmp(path, http_routes[i].path) == 0)
            route = &http_routes[i];
    if (route == NULL) {
        http_send_error(hreq, 404, NULL, "no such endpoint: %.200s", path);
        return;
    }
    if (method != route->method && !(method == EVHTTP_REQ_HEAD && route->method == EVHTTP_REQ_GET)) {
        evhttp_add_header(evhttp_request_get_output_headers(hreq), "Allow",
                          route->method == EVHTTP_REQ_GET ? "GET, HEAD" : "POST");
        http_send_error(hreq, 405, NULL, "method not allowed on %s (use %s)", route->path,
                        route->method == EVHTTP_REQ_GET ? "GET" : "POST");
        return;
    }
    if (route->auth && !http_auth_ok(r, hreq)) {
        http_send_error(hreq, 401, NULL, "missing or invalid API key (send 'Authorization: "
                        "Bearer <key>')");
        return;
    }
    blen = evbuffer_get_length(in);
    if (blen > r->cfg.max_body) {
        http_send_error(hreq, 413, NULL, "request body of %zu bytes exceeds the limit of %zu",
                        blen, r->cfg.max_body);
        return;
    }
    body = blen ? (const char *)evbuffer_pullup(in, -1) : "";
    if (body == NULL) {
        http_send_error(hreq, 500, NULL, "out of memory");
        return;
    }
    route->handler(r, hreq, body, blen);
}

duet_status_t http_listen(router_t *r)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    evutil_socket_t fd;

    r->http = evhttp_new(r->base);
    if (r->http == NULL)
        return DUET_ERR_NOMEM;
    /* bodies up to max_body get a JSON 413 from us; evhttp refuses anything
     * past twice that before reading it (its own 413 page) */
    evhttp_set_max_body_size(r->http, (ev_ssize_t)(2 * r->cfg.max_body));
    evhttp_set_max_headers_size(r->http, 64 * 1024);
    evhttp_set_allowed_methods(r->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                               EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                               EVHTTP_REQ_PATCH);
    evhttp_set_gencb(r->http, http_gencb, r);
    r->hsock = evhttp_bind_socket_with_handle(r->http, r->cfg.host, (uint16_t)r->cfg.http_port);
    if (r->hsock == NULL) {
        log_error("cannot listen for HTTP on %s:%d", r->cfg.host, r->cfg.http_port);
        return DUET_ERR_IO;
    }
    fd = evhttp_bound_socket_get_fd(r->hsock);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
        r->http_port = ntohs(ss.ss_family == AF_INET6 ?
                             ((struct sockaddr_in6 *)&ss)->sin6_port :
                             ((struct sockaddr_in *)&ss)->sin_port);
    return DUET_OK;
}
