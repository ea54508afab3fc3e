/* Information endpoints of the HTTP API: /v1/models, /health,
 * /v1/cluster, /metrics, /tokenize, /detokenize. */
#define DUET_LOG_COMPONENT "router"
#include "router_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "common/clock.h"
#include "common/log.h"

void http_models(router_t *r, struct evhttp_request *hreq, const char *body, size_t len)
{
    http_send_json(hreq, 200, json_pack(
        "{s:s, s:[{s:s, s:s, s:I, s:s, s:s, s:n, s:i, s:[]}]}", "object", "list", "data",
        "id", r->served_name, "object", "model", "created", (json_int_t)r->created,
        "owned_by", "duet", "root", r->served_name, "parent", "max_model_len",
        r->tok->max_model_len, "permission"));
}

void http_health(router_t *r, struct evhttp_request *hreq, const char *body, size_t len)
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

void http_cluster(router_t *r, struct evhttp_request *hreq, const char *body,
                         size_t len)
{
    json_t *nodes = json_array(), *v;
    node_t *n;
    int np = registry_count(r, NODE_PREFILL), nd = registry_count(r, NODE_DECODE);
    char ratio[32], fp[24];

    TAILQ_FOREACH(n, &r->nodes, link) {
        json_t *ucx;
        double usage = n->total_blocks ?
            1.0 - (double)n->free_blocks / (double)n->total_blocks : 0.0;

        if (!n->registered || n->closing)
            continue;
        ucx = json_array();
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
    snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)r->tok->fingerprint);
    v = json_pack("{s:o, s:{s:i, s:i, s:i}, s:s, s:{s:s, s:s}, s:I, s:I, s:s, s:s}",
                  "nodes", nodes, "counts", "prefill", np, "decode", nd,
                  "colocated", registry_count(r, NODE_COLOCATED),
                  "prefill_decode_ratio", ratio,
                  "policies", "prefill", policy_str(r->ppolicy),
                  "decode", policy_str(r->dpolicy),
                  "requests_running", (json_int_t)r->nrunning,
                  "requests_waiting", (json_int_t)r->nqueued,
                  "model", r->served_name, "model_fingerprint", fp);
    http_send_json(hreq, 200, v);
}

void http_metrics(router_t *r, struct evhttp_request *hreq, const char *body,
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
    histogram_write(&m->node_itl, labels, out);
    histogram_write(&m->token_delay, labels, out);
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
void http_tokenize(router_t *r, struct evhttp_request *hreq, const char *body,
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
void http_detokenize(router_t *r, struct evhttp_request *hreq, const char *body,
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

