/* The node side of the control plane (common/ctl_client.h) against an
 * in-process router played by the test over real loopback TCP: HELLO
 * contents, HELLO_OK, heartbeats with the node's load, request frames handed
 * to the node, ERROR back, reconnection after garbage and after a retryable
 * refusal, DRAIN and a flushed shutdown, and a fatal refusal. Plus the
 * request-field parsers. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "common/ctl_client.h"
#include "common/frame.h"
#include "tests/tap.h"

typedef struct {
    struct event_base  *base;
    struct evconnlistener *lis;
    struct bufferevent *conn;      /* the router's side of the current connection */
    int                 n_conns;
    int                 step;      /* frames seen on the current connection */
    ctl_client_t       *client;
    ctl_client_t       *client2;
    int                 ups, downs, frames, fatals, heartbeats, drains, shut_done;
    bool                got_error_rid, got_hello_fields, finished;
    frame_writer_t      fw;
} t_ctx_t;

static void start_client2(t_ctx_t *t);

static void router_send(t_ctx_t *t, frame_writer_t *w)
{
    frame_end(w, bufferevent_get_output(t->conn), 0);
}

static void router_reply_ok(t_ctx_t *t)
{
    frame_begin(&t->fw, FRAME_HELLO_OK, 4);
    frame_put_str(&t->fw, "node", "n1");
    frame_put_u64(&t->fw, "heartbeat_ms", 50);
    frame_put_u64(&t->fw, "timeout_ms", 5000);
    frame_put_u64(&t->fw, "max_frame", 1 << 20);
    router_send(t, &t->fw);
}

static void router_reply_err(t_ctx_t *t, const char *code)
{
    frame_begin(&t->fw, FRAME_ERROR, 2);
    frame_put_str(&t->fw, "msg", "refused by the test");
    frame_put_str(&t->fw, "code", code);
    router_send(t, &t->fw);
}

static void router_send_reserve(t_ctx_t *t)
{
    const uint32_t toks[] = {5, 6, 7};
    const uint32_t eos[] = {2};

    frame_begin(&t->fw, FRAME_RESERVE, 8);
    frame_put_u64(&t->fw, "rid", 7);
    frame_put_str(&t->fw, "prefill", "p0");
    frame_put_u32_array(&t->fw, "tokens", toks, 3);
    frame_put_u64(&t->fw, "max_tokens", 9);
    frame_put_f64(&t->fw, "temperature", 0.5);
    frame_put_i64(&t->fw, "top_k", -1);
    frame_put_u32_array(&t->fw, "eos", eos, 1);
    frame_put_i64(&t->fw, "seed", -3);
    router_send(t, &t->fw);
}

static void on_router_frame(t_ctx_t *t, frame_msg_t *m)
{
    const char *s;
    size_t n;

    t->step++;
    if (m->type == FRAME_HEARTBEAT) {
        uint64_t running = 0;

        t->heartbeats++;
        frame_get_u64(m, "running", &running);
        if (running != 3)
            ok(0, "heartbeat carries the node's load (running %llu)",
               (unsigned long long)running);
        return;
    }
    switch (t->n_conns) {
    case 1:
        if (m->type == FRAME_HELLO) {
            uint64_t tp = 0, blocks = 0;
            const msgpack_object *ucx = frame_get(m, "ucx");

            t->got_hello_fields =
                frame_get_str(m, "role", &s, &n) == DUET_OK && n == 6 &&
                memcmp(s, "decode", 6) == 0 &&
                frame_get_str(m, "token", &s, &n) == DUET_OK && n == 3 &&
                frame_get_u64(m, "tp", &tp) == DUET_OK && tp == 2 &&
                frame_get_u64(m, "blocks", &blocks) == DUET_OK && blocks == 100 &&
                ucx != NULL && ucx->type == MSGPACK_OBJECT_ARRAY && ucx->via.array.size == 2;
            router_reply_ok(t);
            router_send_reserve(t);
        } else if (m->type == FRAME_ERROR) {
            uint64_t rid = 0;

            t->got_error_rid = frame_get_u64(m, "rid", &rid) == DUET_OK && rid == 7;
            /* garbage: the client must drop the connection and come back */
            evbuffer_add(bufferevent_get_output(t->conn), "\x00\x00\x00\x03\xc1\xc1\xc1", 7);
        }
        break;
    case 2:
        if (m->type == FRAME_HELLO)
            router_reply_err(t, "duplicate_node");   /* retryable */
        break;
    case 3:
        if (m->type == FRAME_HELLO) {
            router_reply_ok(t);
        } else if (m->type == FRAME_DRAIN) {
            t->drains++;
            ctl_client_shutdown(t->client, NULL, NULL);
        }
        break;
    case 4:
        if (m->type == FRAME_HELLO)
            router_reply_err(t, "bad_token");        /* fatal */
        break;
    default:
        break;
    }
}

static void router_read_cb(struct bufferevent *bev, void *arg)
{
    t_ctx_t *t = arg;
    frame_msg_t m;

    for (;;) {
        duet_status_t s = frame_decode(bufferevent_get_input(bev), 0, &m);

        if (s != DUET_OK)
            return;
        on_router_frame(t, &m);
        frame_msg_release(&m);
    }
}

static void router_event_cb(struct bufferevent *bev, short what, void *arg)
{
    t_ctx_t *t = arg;

    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (bev == t->conn)
            t->conn = NULL;
        bufferevent_free(bev);
        if (t->n_conns == 3 && t->drains == 1)
            start_client2(t);   /* the drained client closed */
    }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int len, void *arg)
{
    t_ctx_t *t = arg;

    (void)l;
    (void)sa;
    (void)len;
    if (t->conn != NULL)
        bufferevent_free(t->conn);
    t->conn = bufferevent_socket_new(t->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(t->conn, router_read_cb, NULL, router_event_cb, t);
    bufferevent_enable(t->conn, EV_READ | EV_WRITE);
    t->n_conns++;
    t->step = 0;
}

/* ---- the node's callbacks ---------------------------------------------------- */

static t_ctx_t T;

static void n_up(void *arg)
{
    t_ctx_t *t = arg;

    t->ups++;
    if (t->ups == 2)
        ctl_client_drain(t->client);
}

static void n_down(void *arg)
{
    ((t_ctx_t *)arg)->downs++;
}

static void n_frame(void *arg, const frame_msg_t *msg)
{
    t_ctx_t *t = arg;
    ctl_sampling_t sp;
    int32_t *toks = NULL, ntok = 0;
    char err[128], pname[8];

    t->frames++;
    if (msg->type != FRAME_RESERVE) {
        ok(0, "unexpected frame %s", frame_type_str(msg->type));
        return;
    }
    ok(ctl_sampling_parse(msg, &sp, err, sizeof(err)) == DUET_OK, "sampling fields parse");
    ok(sp.max_tokens == 9 && sp.temperature == 0.5 && sp.top_k == -1 && sp.top_p == 1.0 &&
       sp.repetition_penalty == 1.0 && sp.n_eos == 1 && sp.eos[0] == 2 && sp.has_seed &&
       sp.seed == -3 && !sp.ignore_eos, "sampling values and defaults");
    ok(ctl_get_tokens(msg, "tokens", &toks, &ntok) == DUET_OK && ntok == 3 && toks[2] == 7,
       "tokens");
    free(toks);
    ok(ctl_get_strbuf(msg, "prefill", pname, sizeof(pname)) == DUET_OK &&
       strcmp(pname, "p0") == 0, "prefill name");
    ok(ctl_get_strbuf(msg, "prefill", pname, 2) == DUET_ERR_TOO_BIG, "short buffer refused");
    ok(ctl_client_send_error(t->client, 7, "no room") == DUET_OK, "ERROR queued");
}

static void n_fatal(void *arg, const char *code, const char *msg)
{
    t_ctx_t *t = arg;

    (void)msg;
    t->fatals++;
    ok(strcmp(code, "bad_token") == 0, "fatal refusal code %s", code);
    t->finished = true;
    event_base_loopexit(t->base, NULL);
}

static void n_load(void *arg, ctl_load_t *l)
{
    (void)arg;
    l->running = 3;
    l->free_blocks = 99;
}

/* A second client that the router refuses for good. */
static void start_client2(t_ctx_t *t)
{
    ctl_hello_t h = {.role = "prefill", .node = "n2", .token = "bad", .tp = 1,
                     .block_size = 16, .blocks = 10, .kv_dtype = "f16"};
    ctl_client_cbs_t cbs = {.on_frame = n_frame, .on_fatal = n_fatal, .arg = t};
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);

    getsockname(evconnlistener_get_fd(t->lis), (struct sockaddr *)&sa, &len);
    ok(ctl_client_create(t->base, "127.0.0.1", ntohs(sa.sin_port), &h, &cbs,
                         &t->client2) == DUET_OK, "second client created");
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    diag("timed out");
    event_base_loopexit(((t_ctx_t *)arg)->base, NULL);
}

/* ---- parsers ------------------------------------------------------------------- */

static duet_status_t parse_one(frame_writer_t *w, ctl_sampling_t *sp)
{
    const uint8_t *data;
    size_t len, used;
    frame_msg_t m;
    char err[128];
    duet_status_t s;

    if (frame_end_buf(w, 0, &data, &len) != DUET_OK ||
        frame_decode_buf(data, len, 0, &m, &used) != DUET_OK)
        return DUET_ERR_INTERNAL;
    s = ctl_sampling_parse(&m, sp, err, sizeof(err));
    frame_msg_release(&m);
    return s;
}

static void test_parsers(void)
{
    frame_writer_t w;
    ctl_sampling_t sp;
    uint32_t many[17] = {0};

    frame_writer_init(&w);
    frame_begin(&w, FRAME_RESERVE, 1);
    frame_put_u64(&w, "rid", 1);
    is_int(parse_one(&w, &sp), DUET_ERR_PROTO, "max_tokens required");
    frame_begin(&w, FRAME_RESERVE, 2);
    frame_put_u64(&w, "rid", 1);
    frame_put_u64(&w, "max_tokens", 0);
    is_int(parse_one(&w, &sp), DUET_ERR_PROTO, "max_tokens 0 refused");
    frame_begin(&w, FRAME_RESERVE, 3);
    frame_put_u64(&w, "rid", 1);
    frame_put_u64(&w, "max_tokens", 4);
    frame_put_str(&w, "temperature", "hot");
    is_int(parse_one(&w, &sp), DUET_ERR_PROTO, "a string temperature refused");
    frame_begin(&w, FRAME_RESERVE, 3);
    frame_put_u64(&w, "rid", 1);
    frame_put_u64(&w, "max_tokens", 4);
    frame_put_u32_array(&w, "eos", many, 17);
    is_int(parse_one(&w, &sp), DUET_ERR_PROTO, "17 eos ids refused");
    frame_begin(&w, FRAME_RESERVE, 3);
    frame_put_u64(&w, "rid", 1);
    frame_put_u64(&w, "max_tokens", 4);
    frame_put_u64(&w, "top_p", 1);   /* an integer where a float is expected */
    ok(parse_one(&w, &sp) == DUET_OK && sp.top_p == 1.0 && !sp.has_seed,
       "integer accepted as a float; no seed");
    frame_writer_destroy(&w);
    ok(ctl_node_hash("a") == 0xaf63dc4c8601ec8cull, "FNV-1a 64 of \"a\"");
    ok(ctl_node_hash("") == 0xcbf29ce484222325ull, "FNV-1a 64 of \"\"");
}

int main(void)
{
    t_ctx_t *t = &T;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    ctl_hello_t h = {.role = "decode", .node = "n1", .token = "tok", .model_fp = 42, .tp = 2,
                     .block_size = 16, .blocks = 100, .ucx = {"127.0.0.1:1", "127.0.0.1:2"},
                     .n_ucx = 2, .n_layers = 2, .n_kv_heads = 2, .head_dim = 16,
                     .kv_dtype = "f16"};
    ctl_client_cbs_t cbs = {.on_up = n_up, .on_down = n_down, .on_frame = n_frame,
                            .on_fatal = n_fatal, .load = n_load, .arg = t};
    struct timeval tmo = {20, 0};
    struct event *tev;

    test_parsers();
    frame_writer_init(&t->fw);
    t->base = event_base_new();
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    t->lis = evconnlistener_new_bind(t->base, accept_cb, t, LEV_OPT_REUSEABLE |
                                     LEV_OPT_CLOSE_ON_FREE, 16, (struct sockaddr *)&sa,
                                     sizeof(sa));
    if (t->lis == NULL) {
        ok(0, "listen");
        return tap_done();
    }
    getsockname(evconnlistener_get_fd(t->lis), (struct sockaddr *)&sa, &len);
    ok(ctl_client_create(t->base, "127.0.0.1", ntohs(sa.sin_port), &h, &cbs, &t->client) ==
       DUET_OK, "client created");
    tev = evtimer_new(t->base, timeout_cb, t);
    evtimer_add(tev, &tmo);
    event_base_dispatch(t->base);
    ok(t->finished, "the scenario ran to its end");
    ok(t->got_hello_fields, "HELLO carries role, token, tp, blocks, ucx");
    ok(t->heartbeats >= 1, "heartbeats (%d)", t->heartbeats);
    is_int(t->frames, 1, "the RESERVE reached the node");
    ok(t->got_error_rid, "ERROR with the rid reached the router");
    is_int(t->n_conns, 4, "reconnected after garbage and after duplicate_node");
    is_int(t->ups, 2, "registered twice");
    is_int(t->downs, 1, "one loss of a registered connection reported");
    is_int(t->drains, 1, "DRAIN sent");
    is_int(t->fatals, 1, "bad_token is fatal");
    event_free(tev);
    ctl_client_destroy(t->client);
    ctl_client_destroy(t->client2);
    if (t->conn != NULL)
        bufferevent_free(t->conn);
    evconnlistener_free(t->lis);
    frame_writer_destroy(&t->fw);
    event_base_free(t->base);
    return tap_done();
}
