/* The control-plane server: a TCP listener, one bufferevent per node,
 * HELLO / HEARTBEAT registration and the frames of the request lifecycle
 * (docs/protocol.md). A bad frame closes that node's connection only:
 * the router answers ERROR, fails or retries the node's requests, and frees
 * the connection once the ERROR is flushed (or after a short timeout). */
#define DUET_LOG_COMPONENT "router"
#include "router_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "common/clock.h"
#include "common/log.h"

#define CTL_MAX_FRAME    FRAME_DEFAULT_MAX
#define CTL_CLOSE_TIMEOUT 2     /* seconds to flush a final ERROR */

static void ctl_read_cb(struct bufferevent *bev, void *arg);
static void ctl_event_cb(struct bufferevent *bev, short what, void *arg);

/* --- connection teardown ------------------------------------------------ */

static void ctl_node_free(node_t *node)
{
    router_t *r = node->r;

    TAILQ_REMOVE(&r->nodes, node, link);
    if (node->bev != NULL)
        bufferevent_free(node->bev);
    for (uint32_t i = 0; i < node->nucx; i++)
        free(node->ucx[i]);
    free(node->ucx);
    free(node->prefix);
    free(node);
}

static void ctl_free_later_cb(evutil_socket_t fd, short what, void *arg)
{
    ctl_node_free(arg);
}

static void ctl_free_later(node_t *node)
{
    static const struct timeval now = {0, 0};

    bufferevent_disable(node->bev, EV_READ | EV_WRITE);
    bufferevent_setcb(node->bev, NULL, NULL, NULL, NULL);
    if (event_base_once(node->r->base, -1, EV_TIMEOUT, ctl_free_later_cb, node, &now) != 0)
        log_error("cannot schedule freeing node %s", node->id);   /* leaks one node */
}

static void ctl_closing_write_cb(struct bufferevent *bev, void *arg)
{
    node_t *node = arg;

    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        ctl_free_later(node);
}

static void ctl_closing_event_cb(struct bufferevent *bev, short what, void *arg)
{
    ctl_free_later(arg);
}

/* Stop reading, fail the node's requests, flush what is queued for it (an
 * ERROR) and free it. Safe to call from the node's own callbacks. */
static void ctl_node_close(node_t *node, const char *why)
{
    struct timeval tv = {CTL_CLOSE_TIMEOUT, 0};

    if (node->closing)
        return;
    node->closing = true;
    if (node->registered)
        log_warn("node %s (%s, %s) leaves: %s", node->id, node_role_str(node->role),
                 node->peer, why);
    else
        log_info("control connection from %s closed: %s", node->peer, why);
    if (node->registered)
        lifecycle_node_gone(node->r, node);
    bufferevent_disable(node->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(node->bev)) == 0) {
        ctl_free_later(node);
        return;
    }
    bufferevent_set_timeouts(node->bev, NULL, &tv);
    bufferevent_setcb(node->bev, NULL, ctl_closing_write_cb, ctl_closing_event_cb, node);
    bufferevent_enable(node->bev, EV_WRITE);
}

void ctl_node_drop(node_t *node, const char *why)
{
    ctl_node_close(node, why);
}

static void ctl_send_error(router_t *r, node_t *node, const char *code, const char *msg,
                           uint64_t rid)
{
    frame_begin(&r->fw, FRAME_ERROR, rid ? 3 : 2);
    frame_put_str(&r->fw, "msg", msg);
    frame_put_str(&r->fw, "code", code);
    if (rid)
        frame_put_u64(&r->fw, "rid", rid);
    if (frame_end(&r->fw, bufferevent_get_output(node->bev), CTL_MAX_FRAME) != DUET_OK)
        log_error("cannot encode ERROR frame");
}

/* Answer ERROR and close: the peer broke the protocol. */
static void ctl_reject(node_t *node, const char *code, const char *msg)
{
    log_warn("rejecting control connection %s%s%s: %s", node->peer,
             node->registered ? " node " : "", node->registered ? node->id : "", msg);
    ctl_send_error(node->r, node, code, msg, 0);
    ctl_node_close(node, msg);
}

/* --- senders ------------------------------------------------------------ */

static void ctl_flush(router_t *r, node_t *node, const char *what)
{
    if (node->closing)
        return;
    if (frame_end(&r->fw, bufferevent_get_output(node->bev), CTL_MAX_FRAME) != DUET_OK) {
        log_error("cannot encode %s for node %s", what, node->id);
        ctl_node_close(node, "frame encoding failed");
    }
}

static uint32_t ctl_sampling_fields(const rreq_t *req)
{
    return 11 + (req->job->p.has_seed ? 1 : 0);
}

/* Sampling fields shared by RESERVE and PREFILL. */
static void ctl_put_sampling(router_t *r, const rreq_t *req)
{
    const oai_req_t *p = &req->job->p;
    uint32_t eos[RTOK_MAX_EOS];
    size_t neos = 0;

    if (!p->ignore_eos)
        for (int i = 0; i < r->tok->n_eos; i++)
            eos[neos++] = (uint32_t)r->tok->eos[i];
    frame_put_u64(&r->fw, "max_tokens", req->max_tokens);
    frame_put_f64(&r->fw, "temperature", p->temperature);
    frame_put_f64(&r->fw, "top_p", p->top_p);
    frame_put_i64(&r->fw, "top_k", p->top_k);
    frame_put_f64(&r->fw, "min_p", p->min_p);
    frame_put_f64(&r->fw, "presence_penalty", p->presence_penalty);
    frame_put_f64(&r->fw, "frequency_penalty", p->frequency_penalty);
    frame_put_f64(&r->fw, "repetition_penalty", p->repetition_penalty);
    frame_put_bool(&r->fw, "ignore_eos", p->ignore_eos);
    frame_put_u32_array(&r->fw, "eos", eos, neos);
    frame_put_u64(&r->fw, "prompt_tokens", req->nprompt);
    if (p->has_seed)
        frame_put_i64(&r->fw, "seed", req->seed);
}

static void ctl_put_tokens(router_t *r, const rreq_t *req)
{
    frame_key(&r->fw, "tokens");
    msgpack_pack_array(&r->fw.pk, req->nprompt);
    for (size_t i = 0; i < req->nprompt; i++)
        msgpack_pack_uint32(&r->fw.pk, (uint32_t)req->prompt[i]);
}

static void ctl_put_str_array(router_t *r, const char *key, char *const *v, uint32_t n)
{
    frame_key(&r->fw, key);
    msgpack_pack_array(&r->fw.pk, n);
    for (uint32_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);

        msgpack_pack_str(&r->fw.pk, l);
        msgpack_pack_str_body(&r->fw.pk, v[i], l);
    }
}

void ctl_send_reserve(router_t *r, node_t *decode, const rreq_t *req)
{
    frame_begin(&r->fw, FRAME_RESERVE, 3 + ctl_sampling_fields(req));
    frame_put_u64(&r->fw, "rid", req->rid);
    frame_put_str(&r->fw, "prefill", req->pnode->id);
    ctl_put_tokens(r, req);
    ctl_put_sampling(r, req);
    ctl_flush(r, decode, "RESERVE");
}

void ctl_send_prefill(router_t *r, node_t *prefill, const rreq_t *req)
{
    bool colocated = req->dnode == NULL;

    frame_begin(&r->fw, FRAME_PREFILL, (colocated ? 2 : 5) + ctl_sampling_fields(req));
    frame_put_u64(&r->fw, "rid", req->rid);
    ctl_put_tokens(r, req);
    if (!colocated) {
        frame_put_str(&r->fw, "decode", req->dnode->id);
        frame_put_u64(&r->fw, "decode_tp", req->dnode->tp);
        ctl_put_str_array(r, "decode_ucx", req->dnode->ucx, req->dnode->nucx);
    }
    ctl_put_sampling(r, req);
    ctl_flush(r, prefill, "PREFILL");
}

void ctl_send_abort(router_t *r, node_t *node, uint64_t rid)
{
    if (node == NULL || node->closing)
        return;
    frame_begin(&r->fw, FRAME_ABORT, 1);
    frame_put_u64(&r->fw, "rid", rid);
    ctl_flush(r, node, "ABORT");
}

void ctl_send_drain(router_t *r, node_t *node)
{
    frame_begin(&r->fw, FRAME_DRAIN, 0);
    ctl_flush(r, node, "DRAIN");
}

/* --- HELLO -------------------------------------------------------------- */

static bool ctl_id_ok(const char *s, size_t n)
{
    if (n == 0 || n > NODE_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':'))
            return false;
    }
    return true;
}

static bool ctl_token_eq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    unsigned char diff = alen != blen;

    for (size_t i = 0; i < alen; i++)
        diff |= (unsigned char)(a[i] ^ b[i % (blen ? blen : 1)]);
    return diff == 0;
}

static node_t *ctl_find_node(router_t *r, const char *id)
{
    node_t *n;

    TAILQ_FOREACH(n, &r->nodes, link)
        if (n->registered && !n->closing && strcmp(n->id, id) == 0)
            return n;
    return NULL;
}

/* Read an unsigned field into *v_p, bounded by max; false when missing, of
 * the wrong type or out of range. */
static bool ctl_u32(const frame_msg_t *msg, const char *key, uint32_t min, uint32_t max,
                    uint32_t *v_p)
{
    uint64_t v;

    if (frame_get_u64(msg, key, &v) != DUET_OK || v < min || v > max)
        return false;
    *v_p = (uint32_t)v;
    return true;
}

static void ctl_on_hello(node_t *node, const frame_msg_t *msg)
{
    router_t *r = node->r;
    const char *s, *tok, *id;
    size_t n, toklen, idlen;
    const msgpack_object *ucx;
    uint64_t fp = 0;
    char err[256];

    if (frame_get_str(msg, "token", &tok, &toklen) != DUET_OK)
        return ctl_reject(node, "malformed", "HELLO: 'token' must be a string");
    if (!ctl_token_eq(tok, toklen, r->cfg.cluster_token ? r->cfg.cluster_token : ""))
        return ctl_reject(node, "bad_token", "HELLO: wrong cluster token");
    if (frame_get_str(msg, "role", &s, &n) != DUET_OK)
        return ctl_reject(node, "malformed", "HELLO: 'role' must be a string");
    if (n == 7 && memcmp(s, "prefill", 7) == 0)
        node->role = NODE_PREFILL;
    else if (n == 6 && memcmp(s, "decode", 6) == 0)
        node->role = NODE_DECODE;
    else if (n == 9 && memcmp(s, "colocated", 9) == 0)
        node->role = NODE_COLOCATED;
    else
        return ctl_reject(node, "malformed",
                          "HELLO: 'role' must be prefill, decode or colocated");
    if (frame_get_str(msg, "node", &id, &idlen) != DUET_OK || !ctl_id_ok(id, idlen))
        return ctl_reject(node, "malformed",
                          "HELLO: 'node' must be 1-64 characters of [A-Za-z0-9._:-]");
    memcpy(node->id, id, idlen);
    node->id[idlen] = '\0';
    if (ctl_find_node(r, node->id) != NULL) {
        snprintf(err, sizeof(err), "HELLO: node id '%s' is already registered", node->id);
        node->id[0] = '\0';
        return ctl_reject(node, "duplicate_node", err);
    }
    if (frame_get_u64(msg, "model", &fp) != DUET_OK)
        return ctl_reject(node, "malformed", "HELLO: 'model' (fingerprint, uint) is required");
    if (r->tok->fingerprint != 0 && fp != r->tok->fingerprint) {
        snprintf(err, sizeof(err), "HELLO: model fingerprint %016llx differs from the "
                 "router's %016llx", (unsigned long long)fp,
                 (unsigned long long)r->tok->fingerprint);
        return ctl_reject(node, "model_mismatch", err);
    }
    node->fingerprint = fp;
    if (!ctl_u32(msg, "tp", 1, NODE_MAX_TP, &node->tp))
        return ctl_reject(node, "malformed", "HELLO: 'tp' must be an integer in [1, 64]");
    if (!ctl_u32(msg, "block_size", 1, 4096, &node->block_size) ||
        !ctl_u32(msg, "blocks", 0, UINT32_MAX, &node->total_blocks))
        return ctl_reject(node, "malformed",
                          "HELLO: 'block_size' (1-4096) and 'blocks' (uint) are required");
    if (node->role != NODE_PREFILL && node->total_blocks == 0)
        return ctl_reject(node, "malformed", "HELLO: a decode node needs 'blocks' > 0");
    ucx = frame_get(msg, "ucx");
    if (ucx != NULL) {
        if (ucx->type != MSGPACK_OBJECT_ARRAY || ucx->via.array.size > NODE_MAX_TP)
            return ctl_reject(node, "malformed", "HELLO: 'ucx' must be an array of strings");
        node->ucx = calloc(ucx->via.array.size ? ucx->via.array.size : 1, sizeof(char *));
        if (node->ucx == NULL)
            return ctl_reject(node, "internal", "out of memory");
        for (uint32_t i = 0; i < ucx->via.array.size; i++) {
            const msgpack_object *e = &ucx->via.array.ptr[i];

            if (e->type != MSGPACK_OBJECT_STR || e->via.str.size == 0 ||
                e->via.str.size > NODE_ADDR_MAX)
                return ctl_reject(node, "malformed",
                                  "HELLO: 'ucx' items must be non-empty strings");
            node->ucx[i] = strndup(e->via.str.ptr, e->via.str.size);
            if (node->ucx[i] == NULL)
                return ctl_reject(node, "internal", "out of memory");
            node->nucx++;
        }
    }
    if (node->role == NODE_DECODE && node->nucx != node->tp)
        return ctl_reject(node, "malformed",
                          "HELLO: a decode node needs one 'ucx' address per TP rank");
    if (node->role == NODE_PREFILL) {
        node->prefix = calloc(NODE_PREFIX_SLOTS, sizeof(uint64_t));
        if (node->prefix == NULL)
            return ctl_reject(node, "internal", "out of memory");
    }
    node->free_blocks = node->total_blocks;
    node->last_hb_ns = clock_now_ns();
    node->registered = true;
    frame_begin(&r->fw, FRAME_HELLO_OK, 4);
    frame_put_str(&r->fw, "node", node->id);
    frame_put_u64(&r->fw, "heartbeat_ms", ROUTER_HEARTBEAT_MS);
    frame_put_u64(&r->fw, "timeout_ms", (uint64_t)(r->cfg.heartbeat_timeout * 1000));
    frame_put_u64(&r->fw, "max_frame", CTL_MAX_FRAME);
    ctl_flush(r, node, "HELLO_OK");
    log_info("node %s registered: %s, tp %u, %u blocks of %u tokens, from %s", node->id,
             node_role_str(node->role), node->tp, node->total_blocks, node->block_size,
             node->peer);
}

/* --- frames from registered nodes --------------------------------------- */

static void ctl_on_heartbeat(node_t *node, const frame_msg_t *msg)
{
    uint64_t q;

    if (!ctl_u32(msg, "running", 0, UINT32_MAX, &node->running) ||
        !ctl_u32(msg, "waiting", 0, UINT32_MAX, &node->waiting) ||
        !ctl_u32(msg, "free_blocks", 0, UINT32_MAX, &node->free_blocks) ||
        frame_get_u64(msg, "queued_tokens", &q) != DUET_OK)
        return ctl_reject(node, "malformed", "HEARTBEAT needs running, waiting, free_blocks "
                          "and queued_tokens (uints)");
    node->queued_tokens = q;
    node->sent_tokens = 0;
    node->sent_blocks = 0;
    node->last_hb_ns = clock_now_ns();
}

static bool ctl_token_ok(node_t *node, uint64_t t)
{
    return t < (uint64_t)node->r->tok->vocab;
}

static void ctl_on_first_token(node_t *node, const frame_msg_t *msg)
{
    uint64_t rid, tok, kv_bytes = 0;
    double kv_s = -1;

    if (node->role == NODE_DECODE)
        return ctl_reject(node, "unexpected", "FIRST_TOKEN from a decode node");
    if (frame_get_u64(msg, "rid", &rid) != DUET_OK ||
        frame_get_u64(msg, "token", &tok) != DUET_OK || !ctl_token_ok(node, tok))
        return ctl_reject(node, "malformed", "FIRST_TOKEN needs rid and a token in the vocabulary");
    if (frame_get_u64(msg, "kv_bytes", &kv_bytes) == DUET_ERR_PROTO ||
        frame_get_f64(msg, "kv_s", &kv_s) == DUET_ERR_PROTO)
        return ctl_reject(node, "malformed", "FIRST_TOKEN: kv_bytes (uint), kv_s (float)");
    rreq_on_first_token(node->r, node, rid, (int32_t)tok, kv_bytes, kv_s);
}

/* Mark the items of a TOKENS frame whose stream has had only its first
 * token. They go out first: that token came alone (FIRST_TOKEN), so a
 * place late in this frame's fan-out would stretch the stream's first gap
 * by the whole fan-out, while the other streams keep their places from
 * step to step (a constant delay stretches no gap). All items of one rid
 * get the same mark, so each stream's tokens stay in order. */
static void ctl_mark_fresh(router_t *r, const msgpack_object *items)
{
    uint32_t n = items->via.array.size;

    if (n > r->tok_cap) {
        uint8_t *m = realloc(r->tok_first, n);

        if (m == NULL) {
            r->tok_cap = 0;   /* out of memory: none first, all in frame order */
            return;
        }
        r->tok_first = m;
        r->tok_cap = n;
    }
    for (uint32_t i = 0; i < n; i++) {
        const rreq_t *req = rreq_find(r, items->via.array.ptr[i].via.array.ptr[0].via.u64);

        r->tok_first[i] = req != NULL && req->first_seen && req->ncompletion == 1;
    }
}

static void ctl_on_tokens(node_t *node, const frame_msg_t *msg)
{
    const msgpack_object *items = frame_get(msg, "items");

    if (node->role == NODE_PREFILL)
        return ctl_reject(node, "unexpected", "TOKENS from a prefill node");
    if (items->type != MSGPACK_OBJECT_ARRAY)
        return ctl_reject(node, "malformed", "TOKENS: 'items' must be an array");
    for (uint32_t i = 0; i < items->via.array.size; i++) {
        const msgpack_object *it = &items->via.array.ptr[i];

        if (it->type != MSGPACK_OBJECT_ARRAY || it->via.array.size != 2 ||
            it->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            it->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            !ctl_token_ok(node, it->via.array.ptr[1].via.u64))
            return ctl_reject(node, "malformed",
                              "TOKENS: each item must be [rid, token] with a token in the vocabulary");
    }
    ctl_mark_fresh(node->r, items);
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < items->via.array.size && !node->closing; i++) {
            const msgpack_object *it = &items->via.array.ptr[i];

            bool first = i < node->r->tok_cap && node->r->tok_first[i];

            if (first == (pass == 0))
                rreq_on_token(node->r, node, it->via.array.ptr[0].via.u64,
                              (int32_t)it->via.array.ptr[1].via.u64);
        }
    }
}

static void ctl_on_finish(node_t *node, const frame_msg_t *msg)
{
    uint64_t rid;
    const char *s, *m = NULL;
    size_t n, mn = 0;
    finish_reason_t reason;
    char text[256];

    if (frame_get_u64(msg, "rid", &rid) != DUET_OK ||
        frame_get_str(msg, "reason", &s, &n) != DUET_OK)
        return ctl_reject(node, "malformed", "FINISH needs rid (uint) and reason (string)");
    if (n == 4 && memcmp(s, "stop", 4) == 0)
        reason = FINISH_STOP;
    else if (n == 6 && memcmp(s, "length", 6) == 0)
        reason = FINISH_LENGTH;
    else if (n == 5 && memcmp(s, "abort", 5) == 0)
        reason = FINISH_ABORT;
    else if (n == 5 && memcmp(s, "error", 5) == 0)
        reason = FINISH_ERROR;
    else
        return ctl_reject(node, "malformed", "FINISH: reason must be stop, length, abort or error");
    if (frame_get_str(msg, "msg", &m, &mn) != DUET_OK)
        mn = 0;
    snprintf(text, sizeof(text), "%.*s", (int)mn, m ? m : "");
    rreq_on_finish(node->r, node, rid, reason, text);
}

static void ctl_on_rid_failure(node_t *node, const frame_msg_t *msg, const char *what)
{
    uint64_t rid;
    const char *m;
    size_t mn;
    char why[256];

    if (frame_get_u64(msg, "rid", &rid) != DUET_OK)
        return ctl_reject(node, "malformed", "NACK/ABORT need rid (uint)");
    if (frame_get_str(msg, "reason", &m, &mn) != DUET_OK &&
        frame_get_str(msg, "msg", &m, &mn) != DUET_OK) {
        m = "";
        mn = 0;
    }
    snprintf(why, sizeof(why), "%s from %s%s%.*s", what, node->id, mn ? ": " : "",
             (int)mn, m);
    rreq_on_failure(node->r, node, rid, why);
}

static void ctl_on_error(node_t *node, const frame_msg_t *msg)
{
    uint64_t rid;
    const char *m = "";
    size_t mn = 0;
    char why[256];

    frame_get_str(msg, "msg", &m, &mn);
    if (frame_get_u64(msg, "rid", &rid) == DUET_OK) {
        snprintf(why, sizeof(why), "node %s failed the request: %.*s", node->id, (int)mn, m);
        rreq_on_failure(node->r, node, rid, why);
        return;
    }
    snprintf(why, sizeof(why), "node reported an error: %.*s", (int)mn, m);
    ctl_node_close(node, why);
}

static void ctl_dispatch(node_t *node, const frame_msg_t *msg)
{
    if (!node->registered) {
        if (msg->type != FRAME_HELLO)
            return ctl_reject(node, "unexpected", "the first frame must be HELLO");
        return ctl_on_hello(node, msg);
    }
    switch (msg->type) {
    case FRAME_HEARTBEAT:   return ctl_on_heartbeat(node, msg);
    case FRAME_FIRST_TOKEN: return ctl_on_first_token(node, msg);
    case FRAME_TOKENS:      return ctl_on_tokens(node, msg);
    case FRAME_FINISH:      return ctl_on_finish(node, msg);
    case FRAME_NACK:
        if (node->role != NODE_DECODE)
            return ctl_reject(node, "unexpected", "NACK from a node that is not decode");
        return ctl_on_rid_failure(node, msg, "NACK");
    case FRAME_ABORT:       return ctl_on_rid_failure(node, msg, "ABORT");
    case FRAME_ERROR:       return ctl_on_error(node, msg);
    case FRAME_DRAIN:
        log_info("node %s drains: no new requests go there", node->id);
        node->draining = true;
        return;
    default:
        break;
    }
    {
        char why[96];

        snprintf(why, sizeof(why), "unexpected %s from a node", frame_type_str(msg->type));
        ctl_reject(node, "unexpected", why);
    }
}

/* --- socket callbacks --------------------------------------------------- */

static void ctl_read_cb(struct bufferevent *bev, void *arg)
{
    node_t *node = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    node->r->t_read = clock_now_ns();
    while (!node->closing) {
        frame_msg_t msg;
        duet_status_t s = frame_decode(in, CTL_MAX_FRAME, &msg);

        if (s == DUET_AGAIN)
            return;
        if (s == DUET_ERR_MISMATCH)
            return ctl_reject(node, "version", "protocol version mismatch: this router "
                              "speaks version " "1");
        if (s == DUET_ERR_TOO_BIG)
            return ctl_reject(node, "too_big", "frame larger than the limit");
        if (s != DUET_OK)
            return ctl_reject(node, "malformed", "malformed frame (bad msgpack, unknown type "
                              "or a missing required field)");
        ctl_dispatch(node, &msg);
        frame_msg_release(&msg);
    }
}

static void ctl_event_cb(struct bufferevent *bev, short what, void *arg)
{
    node_t *node = arg;

    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        ctl_node_close(node, (what & BEV_EVENT_EOF) ? "connection closed" : "connection error");
}

static void ctl_accept_cb(struct evconnlistener *l, evutil_socket_t fd,
                          struct sockaddr *sa, int salen, void *arg)
{
    router_t *r = arg;
    node_t *node = calloc(1, sizeof(*node));
    int one = 1;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (node == NULL) {
        evutil_closesocket(fd);
        return;
    }
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
        port = ntohs(((struct sockaddr_in *)sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
        port = ntohs(((struct sockaddr_in6 *)sa)->sin6_port);
    }
    snprintf(node->peer, sizeof(node->peer), "%s:%d", host, port);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    node->r = r;
    node->connected_ns = clock_now_ns();
    node->bev = bufferevent_socket_new(r->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (node->bev == NULL) {
        evutil_closesocket(fd);
        free(node);
        return;
    }
    TAILQ_INSERT_TAIL(&r->nodes, node, link);
    bufferevent_setcb(node->bev, ctl_read_cb, NULL, ctl_event_cb, node);
    bufferevent_enable(node->bev, EV_READ | EV_WRITE);
    log_debug("control connection from %s", node->peer);
}

void ctl_check_timeouts(router_t *r)
{
    uint64_t now = clock_now_ns();
    node_t *n, *next;

    for (n = TAILQ_FIRST(&r->nodes); n != NULL; n = next) {
        next = TAILQ_NEXT(n, link);
        if (n->closing)
            continue;
        if (!n->registered && (double)(now - n->connected_ns) * 1e-9 > NODE_HELLO_TIMEOUT)
            ctl_reject(n, "timeout", "no HELLO within 5 seconds");
        else if (n->registered &&
                 (double)(now - n->last_hb_ns) * 1e-9 > r->cfg.heartbeat_timeout)
            ctl_reject(n, "timeout", "heartbeats stopped");
    }
}

duet_status_t ctl_listen(router_t *r)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char spec[300];
    socklen_t len = sizeof(ss);

    snprintf(spec, sizeof(spec), "%s:%d", r->cfg.host, r->cfg.ctl_port);
    memset(&ss, 0, sizeof(ss));
    if (evutil_parse_sockaddr_port(r->cfg.host, (struct sockaddr *)&ss, &sslen) != 0) {
        log_error("bad control address %s", spec);
        return DUET_ERR_INVALID;
    }
    if (ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)r->cfg.ctl_port);
    else
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)r->cfg.ctl_port);
    r->ctl = evconnlistener_new_bind(r->base, ctl_accept_cb, r,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 128,
                                     (struct sockaddr *)&ss, sslen);
    if (r->ctl == NULL) {
        log_error("cannot listen for nodes on %s: %s", spec,
                  evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return DUET_ERR_IO;
    }
    if (getsockname(evconnlistener_get_fd(r->ctl), (struct sockaddr *)&ss, &len) == 0)
        r->ctl_port = ntohs(ss.ss_family == AF_INET6 ?
                            ((struct sockaddr_in6 *)&ss)->sin6_port :
                            ((struct sockaddr_in *)&ss)->sin_port);
    return DUET_OK;
}
