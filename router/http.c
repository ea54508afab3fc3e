/* The OpenAI-compatible HTTP front end on libevent's evhttp: routing,
 * API keys, body limits, request handlers and response writers (whole JSON
 * bodies and SSE streams). */
#define DUET_LOG_COMPONENT "router"
#include "router_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
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
static void http_send_json(struct evhttp_request *hreq, int status, json_t *v)
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

static json_t *http_error_body(int status, const char *param, const char *msg)
{
    return json_pack("{s:{s:s, s:s, s:o, s:i}}", "error", "message", msg,
                     "type", oai_err_type(status),
                     "param", param && param[0] ? json_string(param) : json_null(),
                     "code", status);
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
    http_send_json(hreq, status, http_error_body(status, param, msg));
}

static void http_send_oai_err(struct evhttp_request *hreq, const oai_err_t *err)
{
    http_send_error(hreq, err->status ? err->status : 400, err->param, "%s", err->message);
}

/* --- streaming output ---------------------------------------------------- */

static void http_detach(rreq_t *req)
{
    if (req->hup != NULL) {
        event_free(req->hup);
        req->hup = NULL;
    }
    if (req->hconn != NULL)
        evhttp_connection_set_closecb(req->hconn, NULL, NULL);
    req->hconn = NULL;
    req->hreq = NULL;
}

static void http_sse_start(rreq_t *req)
{
    struct evkeyvalq *h;

    if (req->headers_sent)
        return;
    h = evhttp_request_get_output_headers(req->hreq);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_send_reply_start(req->hreq, 200, "OK");
    req->headers_sent = true;
}

/* Write `data: <json>\n\n` (v stolen). */
static void http_sse_send(rreq_t *req, json_t *v)
{
    struct evbuffer *buf = evbuffer_new();
    char *s = json_dumps(v, JSON_COMPACT);

    json_decref(v);
    if (buf != NULL && s != NULL) {
        evbuffer_add(buf, "data: ", 6);
        evbuffer_add(buf, s, strlen(s));
        evbuffer_add(buf, "\n\n", 2);
        evhttp_send_reply_chunk(req->hreq, buf);
    }
    free(s);
    if (buf != NULL)
        evbuffer_free(buf);
}

static void http_sse_done(rreq_t *req)
{
    struct evbuffer *buf = evbuffer_new();

    if (buf != NULL) {
        evbuffer_add(buf, "data: [DONE]\n\n", 14);
        evhttp_send_reply_chunk(req->hreq, buf);
        evbuffer_free(buf);
    }
    evhttp_send_reply_end(req->hreq);
}

static json_t *http_usage(const rreq_t *req)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)req->nprompt,
                     "completion_tokens", (json_int_t)req->ncompletion,
                     "total_tokens", (json_int_t)(req->nprompt + req->ncompletion));
}

/* The envelope of every chunk and response; choice is stolen. */
static json_t *http_envelope(const rreq_t *req, const char *object, json_t *choice)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", req->id, "object", object,
                     "created", (json_int_t)req->created, "model", req->r->served_name,
                     "choices", choice);
}

static json_t *http_chunk(rreq_t *req, const char *text, size_t n, const char *finish)
{
    json_t *choice, *fin = finish ? json_string(finish) : json_null();

    if (req->p.kind == OAI_CHAT) {
        json_t *delta = json_object();

        if (!req->role_sent) {
            json_object_set_new(delta, "role", json_string("assistant"));
            req->role_sent = true;
        }
        if (text != NULL)
            json_object_set_new(delta, "content", json_stringn(text, n));
        choice = json_pack("{s:i, s:o, s:n, s:o}", "index", 0, "delta", delta,
                           "logprobs", "finish_reason", fin);
        return http_envelope(req, "chat.completion.chunk", choice);
    }
    choice = json_pack("{s:i, s:s%, s:n, s:o}", "index", 0, "text", text ? text : "",
                       text ? n : 0, "logprobs", "finish_reason", fin);
    return http_envelope(req, "text_completion", choice);
}

void http_emit_token(rreq_t *req, const char *text, size_t n)
{
    json_t *v;

    if (req->hreq == NULL)
        return;
    if (!req->p.stream) {
        if (sbuf_add(&req->text, text, n) != DUET_OK)
            log_error("out of memory collecting the output of %s", req->id);
        return;
    }
    http_sse_start(req);
    v = http_chunk(req, text, n, NULL);
    if (v != NULL)
        http_sse_send(req, v);
}

void http_emit_finish(rreq_t *req, finish_reason_t reason)
{
    const char *fin = reason == FINISH_LENGTH ? "length" : "stop";
    json_t *v, *choice;

    if (req->hreq == NULL)
        return;
    if (req->p.stream) {
        http_sse_start(req);
        v = http_chunk(req, NULL, 0, fin);
        if (v != NULL)
            http_sse_send(req, v);
        if (req->p.include_usage) {
            v = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", req->id,
                          "object", req->p.kind == OAI_CHAT ? "chat.completion.chunk" :
                          "text_completion", "created", (json_int_t)req->created,
                          "model", req->r->served_name, "choices", "usage", http_usage(req));
            if (v != NULL)
                http_sse_send(req, v);
        }
        http_sse_done(req);
        http_detach(req);
        return;
    }
    if (req->p.kind == OAI_CHAT)
        choice = json_pack("{s:i, s:{s:s, s:s%}, s:n, s:s}", "index", 0, "message", "role",
                           "assistant", "content", req->text.p ? req->text.p : "", req->text.n,
                           "logprobs", "finish_reason", fin);
    else
        choice = json_pack("{s:i, s:s%, s:n, s:s}", "index", 0, "text",
                           req->text.p ? req->text.p : "", req->text.n, "logprobs",
                           "finish_reason", fin);
    v = http_envelope(req, req->p.kind == OAI_CHAT ? "chat.completion" : "text_completion",
                      choice);
    if (v != NULL)
        json_object_set_new(v, "usage", http_usage(req));
    {
        struct evhttp_request *hreq = req->hreq;

        http_detach(req);
        if (v == NULL)
            http_send_error(hreq, 500, NULL, "cannot encode the response");
        else
            http_send_json(hreq, 200, v);
    }
}

void http_emit_failure(rreq_t *req, int status, const char *msg)
{
    struct evhttp_request *hreq = req->hreq;

    if (hreq == NULL)
        return;
    if (!req->headers_sent) {
        http_detach(req);
        http_send_error(hreq, status, NULL, "%s", msg);
        return;
    }
    http_sse_send(req, http_error_body(status, NULL, msg));
    http_sse_done(req);
    http_detach(req);
}

/* The client closed the connection while its request was in progress. */
static void http_close_cb(struct evhttp_connection *conn, void *arg)
{
    rreq_t *req = arg;
    struct evhttp_request *hreq = req->hreq;

    req->hconn = NULL;
    if (req->hup != NULL) {
        event_free(req->hup);
        req->hup = NULL;
    }
    /* evhttp detached an unfinished request from the dying connection and
     * left it to us; one still attached is freed with the connection */
    if (hreq != NULL && evhttp_request_get_connection(hreq) == NULL)
        evhttp_request_free(hreq);
    rreq_client_gone(req);
}

/* The client's socket reported EOF or an error while its request was in
 * progress. evhttp itself only notices while writing, so a client that
 * gives up on a long non-streaming request would otherwise keep its KV
 * blocks busy until the end. Freeing the connection runs http_close_cb. */
static void http_hup_cb(evutil_socket_t fd, short what, void *arg)
{
    rreq_t *req = arg;

    if (req->hconn != NULL)
        evhttp_connection_free(req->hconn);
}

static void http_watch_client(router_t *r, rreq_t *req)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(req->hconn);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;

    if (fd < 0 || !(event_base_get_features(r->base) & EV_FEATURE_EARLY_CLOSE))
        return;
    req->hup = event_new(r->base, fd, EV_CLOSED, http_hup_cb, req);
    if (req->hup != NULL && event_add(req->hup, NULL) != 0) {
        event_free(req->hup);
        req->hup = NULL;
    }
}

/* --- generation endpoints ----------------------------------------------- */

static bool http_model_ok(router_t *r, struct evhttp_request *hreq, const char *model)
{
    if (model == NULL || strcmp(model, r->served_name) == 0)
        return true;
    http_send_error(hreq, 404, "model", "The model `%.200s` does not exist.", model);
    return false;
}

static void http_generate(router_t *r, struct evhttp_request *hreq, const char *body,
                          size_t len, oai_kind_t kind)
{
    rreq_t *req = calloc(1, sizeof(*req));
    oai_err_t err;
    char *text = NULL;
    duet_status_t s;
    char terr[256] = "";

    if (req == NULL) {
        http_send_error(hreq, 500, NULL, "out of memory");
        return;
    }
    req->r = r;
    req->t_arrive = clock_now_ns();
    sbuf_init(&req->text);
    sbuf_init(&req->delta);
    if (oai_parse(kind, body, len, r->tok->vocab, &req->p, &err) != DUET_OK) {
        http_send_oai_err(hreq, &err);
        free(req);
        return;
    }
    detok_init(&req->dt, r->tok, req->p.skip_special_tokens, req->p.stop, req->p.nstop);
    if (!http_model_ok(r, hreq, req->p.model))
        goto err_free;
    if (kind == OAI_CHAT) {
        s = rtok_apply_chat(r->tok, req->p.msgs, req->p.nmsgs, req->p.add_generation_prompt,
                            &text, terr, sizeof(terr));
        if (s == DUET_ERR_INVALID) {
            http_send_error(hreq, 400, "messages", "%s", terr[0] ? terr : "invalid conversation");
            goto err_free;
        }
        if (s == DUET_OK)
            s = rtok_encode(r->tok, text, strlen(text), true, &req->prompt, &req->nprompt);
        free(text);
    } else if (req->p.prompt_ids != NULL) {
        req->prompt = req->p.prompt_ids;
        req->nprompt = req->p.nprompt_ids;
        req->p.prompt_ids = NULL;
        s = DUET_OK;
    } else {
        s = rtok_encode(r->tok, req->p.prompt_text, req->p.prompt_len, true, &req->prompt,
                        &req->nprompt);
    }
    if (s != DUET_OK) {
        http_send_error(hreq, 500, NULL, "tokenization failed: %s", duet_status_str(s));
        goto err_free;
    }
    if (req->nprompt == 0) {
        http_send_error(hreq, 400, kind == OAI_CHAT ? "messages" : "prompt",
                        "the prompt is empty after tokenization");
        goto err_free;
    }
    if (req->nprompt >= (size_t)r->tok->max_model_len) {
        http_send_error(hreq, 400, kind == OAI_CHAT ? "messages" : "prompt",
                        "This model's maximum context length is %d tokens. However, your "
                        "request has %zu input tokens. Please reduce the length of the input.",
                        r->tok->max_model_len, req->nprompt);
        goto err_free;
    }
    if (req->p.max_tokens < 0) {
        req->max_tokens = (uint32_t)((size_t)r->tok->max_model_len - req->nprompt);
    } else if ((uint64_t)req->p.max_tokens + req->nprompt > (uint64_t)r->tok->max_model_len) {
        http_send_error(hreq, 400, "max_tokens",
                        "This model's maximum context length is %d tokens. However, you "
                        "requested %llu tokens (%zu in the input, %lld in the completion). "
                        "Please reduce the length of the input or the completion.",
                        r->tok->max_model_len,
                        (unsigned long long)req->p.max_tokens + req->nprompt, req->nprompt,
                        (long long)req->p.max_tokens);
        goto err_free;
    } else {
        req->max_tokens = (uint32_t)req->p.max_tokens;
    }
    snprintf(req->id, sizeof(req->id), "%s-%016llx", kind == OAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)(++r->next_http_id * 0x9e3779b97f4a7c15ull));
    req->created = clock_wall_s();
    req->hreq = hreq;
    req->hconn = evhttp_request_get_connection(hreq);
    if (req->hconn != NULL) {
        evhttp_connection_set_closecb(req->hconn, http_close_cb, req);
        http_watch_client(r, req);
    }
    r->m.prompt_tokens += req->nprompt;
    rreq_admit(r, req);
    return;

err_free:
    rreq_free(req);
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

/* --- information endpoints ---------------------------------------------- */

static void http_models(router_t *r, struct evhttp_request *hreq, const char *body, size_t len)
{
    http_send_json(hreq, 200, json_pack(
        "{s:s, s:[{s:s, s:s, s:I, s:s, s:s, s:n, s:i, s:[]}]}", "object", "list", "data",
        "id", r->served_name, "object", "model", "created", (json_int_t)r->created,
        "owned_by", "duet", "root", r->served_name, "parent", "max_model_len",
        r->tok->max_model_len, "permission"));
}

static void http_health(router_t *r, struct evhttp_request *hreq, const char *body, size_t len)
{
    struct evbuffer *buf;

    if (!registry_ready(r)) {
        http_send_error(hreq, 503, NULL, "not ready: %d prefill, %d decode, %d colocated nodes "
                        "registered", registry_count(r, NODE_PREFILL),
                        registry_count(r, NODE_DECODE), registry_count(r, NODE_COLOCATED));
        return;
    }
    buf = evbuffer_new();
    evhttp_send_reply(hreq, 200, "OK", buf);
    if (buf != NULL)
        evbuffer_free(buf);
}

static void http_cluster(router_t *r, struct evhttp_request *hreq, const char *body,
                         size_t len)
{
    json_t *nodes = json_array(), *v;
    node_t *n;
    int np = registry_count(r, NODE_PREFILL), nd = registry_count(r, NODE_DECODE);
    char ratio[32];

    TAILQ_FOREACH(n, &r->nodes, link) {
        json_t *ucx = json_array();
        double usage = n->total_blocks ?
            1.0 - (double)n->free_blocks / (double)n->total_blocks : 0.0;

        if (!n->registered || n->closing)
            continue;
        for (uint32_t i = 0; i < n->nucx; i++)
            json_array_append_new(ucx, json_string(n->ucx[i]));
        json_array_append_new(nodes, json_pack(
            "{s:s, s:s, s:s, s:i, s:b, s:i, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:f, s:o}",
            "id", n->id, "role", node_role_str(n->role), "address", n->peer, "tp", (int)n->tp,
            "draining", n->draining, "block_size", (int)n->block_size,
            "total_blocks", (json_int_t)n->total_blocks,
            "free_blocks", (json_int_t)n->free_blocks,
            "running", (json_int_t)n->running, "waiting", (json_int_t)n->waiting,
            "queued_prompt_tokens", (json_int_t)n->queued_tokens,
            "kv_usage", usage, "inflight", (json_int_t)n->inflight,
            "heartbeat_age_s", (double)(clock_now_ns() - n->last_hb_ns) * 1e-9,
            "ucx", ucx));
    }
    snprintf(ratio, sizeof(ratio), "%d:%d", np, nd);
    v = json_pack("{s:o, s:{s:i, s:i, s:i}, s:s, s:{s:s, s:s}, s:I, s:I, s:s}",
                  "nodes", nodes, "counts", "prefill", np, "decode", nd,
                  "colocated", registry_count(r, NODE_COLOCATED),
                  "prefill_decode_ratio", ratio,
                  "policies", "prefill", policy_str(r->ppolicy),
                  "decode", policy_str(r->dpolicy),
                  "requests_running", (json_int_t)r->nrunning,
                  "requests_waiting", (json_int_t)r->nqueued,
                  "model", r->served_name);
    http_send_json(hreq, 200, v);
}

static void http_metrics(router_t *r, struct evhttp_request *hreq, const char *body,
                         size_t len)
{
    struct evbuffer *out = evbuffer_new();
    metrics_t *m = &r->m;
    char labels[300];
    node_t *n;

    if (out == NULL) {
        evhttp_send_error(hreq, 500, "Internal Server Error");
        return;
    }
    snprintf(labels, sizeof(labels), "model_name=\"%s\"", r->served_name);
    histogram_write(&m->ttft, labels, out);
    histogram_write(&m->itl, labels, out);
    histogram_write(&m->e2e, labels, out);
    histogram_write(&m->queue, labels, out);
    histogram_write(&m->kv_transfer, labels, out);
    evbuffer_add_printf(out,
        "# HELP duet:num_requests_running Requests dispatched to nodes.\n"
        "# TYPE duet:num_requests_running gauge\n"
        "duet:num_requests_running{%s} %zu\n"
        "# HELP duet:num_requests_waiting Requests waiting in the admission queue.\n"
        "# TYPE duet:num_requests_waiting gauge\n"
        "duet:num_requests_waiting{%s} %zu\n", labels, r->nrunning, labels, r->nqueued);
    evbuffer_add_printf(out,
        "# HELP duet:kv_cache_usage_perc Fraction of a node's KV blocks in use (1 = full).\n"
        "# TYPE duet:kv_cache_usage_perc gauge\n");
    TAILQ_FOREACH(n, &r->nodes, link) {
        if (n->registered && !n->closing && n->total_blocks > 0)
            evbuffer_add_printf(out, "duet:kv_cache_usage_perc{node=\"%s\",role=\"%s\"} %.6f\n",
                                n->id, node_role_str(n->role),
                                1.0 - (double)n->free_blocks / (double)n->total_blocks);
    }
    evbuffer_add_printf(out, "# HELP duet:nodes Registered nodes by role.\n"
                        "# TYPE duet:nodes gauge\n");
    for (int role = 0; role < NODE_NROLES; role++)
        evbuffer_add_printf(out, "duet:nodes{role=\"%s\"} %d\n", node_role_str(role),
                            registry_count(r, role));
    evbuffer_add_printf(out,
        "# HELP duet:prompt_tokens_total Prompt tokens of admitted requests.\n"
        "# TYPE duet:prompt_tokens_total counter\n"
        "duet:prompt_tokens_total{%s} %llu\n"
        "# HELP duet:generation_tokens_total Generated tokens.\n"
        "# TYPE duet:generation_tokens_total counter\n"
        "duet:generation_tokens_total{%s} %llu\n"
        "# HELP duet:kv_transfer_bytes_total KV cache bytes moved from prefill to decode nodes.\n"
        "# TYPE duet:kv_transfer_bytes_total counter\n"
        "duet:kv_transfer_bytes_total{%s} %llu\n"
        "# HELP duet:request_success_total Finished requests by finish reason.\n"
        "# TYPE duet:request_success_total counter\n",
        labels, (unsigned long long)m->prompt_tokens, labels,
        (unsigned long long)m->generation_tokens, labels,
        (unsigned long long)m->kv_transfer_bytes);
    for (int i = 0; i < FINISH_NREASONS; i++)
        evbuffer_add_printf(out, "duet:request_success_total{%s,finished_reason=\"%s\"} %llu\n",
                            labels, finish_reason_str(i), (unsigned long long)m->success[i]);
    evhttp_add_header(evhttp_request_get_output_headers(hreq), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(hreq, 200, "OK", out);
    evbuffer_free(out);
}

/* POST /tokenize: {"prompt": str} or {"messages": [...]} as vLLM. */
static void http_tokenize(router_t *r, struct evhttp_request *hreq, const char *body,
                          size_t len)
{
    oai_req_t q;
    oai_err_t err;
    json_t *root = NULL, *p, *tokens;
    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL, terr[256] = "";
    bool add_special = true, add_gen = true;
    duet_status_t s;

    memset(&q, 0, sizeof(q));
    memset(&err, 0, sizeof(err));
    if (oai_load_object(body, len, &root, &err) != DUET_OK)
        return http_send_oai_err(hreq, &err);
    q.root = root;
    p = json_object_get(root, "model");
    if (p != NULL && !json_is_null(p) && !json_is_string(p)) {
        http_send_error(hreq, 400, "model", "'model' must be a string");
        goto out;
    }
    if (p != NULL && json_is_string(p) && !http_model_ok(r, hreq, json_string_value(p)))
        goto out;
    if ((s = oai_get_bool(root, "add_special_tokens", &add_special, &err)) == DUET_ERR_INVALID ||
        (s = oai_get_bool(root, "add_generation_prompt", &add_gen, &err)) == DUET_ERR_INVALID) {
        http_send_oai_err(hreq, &err);
        goto out;
    }
    if (json_object_get(root, "messages") != NULL) {
        if (oai_parse_messages(root, &q, &err) != DUET_OK) {
            http_send_oai_err(hreq, &err);
            goto out;
        }
        s = rtok_apply_chat(r->tok, q.msgs, q.nmsgs, add_gen, &text, terr, sizeof(terr));
        if (s == DUET_OK)
            s = rtok_encode(r->tok, text, strlen(text), add_special, &ids, &n);
    } else {
        p = json_object_get(root, "prompt");
        if (!json_is_string(p)) {
            http_send_error(hreq, 400, "prompt", "'prompt' (a string) or 'messages' is required");
            goto out;
        }
        s = rtok_encode(r->tok, json_string_value(p), json_string_length(p), add_special,
                        &ids, &n);
    }
    if (s != DUET_OK) {
        http_send_error(hreq, s == DUET_ERR_INVALID ? 400 : 500, NULL, "cannot tokenize: %s",
                        terr[0] ? terr : duet_status_str(s));
        goto out;
    }
    tokens = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(tokens, json_integer(ids[i]));
    http_send_json(hreq, 200, json_pack("{s:I, s:i, s:o, s:n}", "count", (json_int_t)n,
                                        "max_model_len", r->tok->max_model_len,
                                        "tokens", tokens, "token_strs"));
out:
    free(text);
    free(ids);
    oai_req_release(&q);
}

/* POST /detokenize: {"tokens": [...]} -> {"prompt": text}. */
static void http_detokenize(router_t *r, struct evhttp_request *hreq, const char *body,
                            size_t len)
{
    oai_err_t err;
    json_t *root = NULL, *t, *p;
    int32_t *ids = NULL;
    size_t n = 0;
    sbuf_t out;

    memset(&err, 0, sizeof(err));
    sbuf_init(&out);
    if (oai_load_object(body, len, &root, &err) != DUET_OK)
        return http_send_oai_err(hreq, &err);
    p = json_object_get(root, "model");
    if (p != NULL && !json_is_null(p) &&
        (!json_is_string(p) ? (http_send_error(hreq, 400, "model", "'model' must be a string"), 1)
                            : !http_model_ok(r, hreq, json_string_value(p))))
        goto out;
    t = json_object_get(root, "tokens");
    if (!json_is_array(t)) {
        http_send_error(hreq, 400, "tokens", "'tokens' (an array of token ids) is required");
        goto out;
    }
    if (json_array_size(t) > 0 &&
        oai_get_ids(t, "tokens", r->tok->vocab, &ids, &n, &err) != DUET_OK) {
        http_send_oai_err(hreq, &err);
        goto out;
    }
    if (detok_all(r->tok, ids, n, false, &out) != DUET_OK) {
        http_send_error(hreq, 500, NULL, "out of memory");
        goto out;
    }
    http_send_json(hreq, 200, json_pack("{s:s%}", "prompt", out.p ? out.p : "", out.n));
out:
    sbuf_free(&out);
    free(ids);
    json_decref(root);
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
