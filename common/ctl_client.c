/* Node side of the control plane: connect, HELLO, heartbeats, reconnect. */
#define DUET_LOG_COMPONENT "ctl"

#include "common/ctl_client.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include "common/log.h"

#define CTL_BACKOFF_MIN_MS   100
#define CTL_BACKOFF_MAX_MS   5000
#define CTL_HELLO_TIMEOUT_MS 10000

typedef enum {
    CTL_DOWN = 0,      /* waiting to reconnect */
    CTL_CONNECTING,
    CTL_HELLO_SENT,
    CTL_UP,
    CTL_SHUT,          /* shut down for good */
} ctl_state_t;

struct ctl_client {
    struct event_base  *base;
    char               *host;
    uint16_t            port;
    ctl_hello_t         hello;          /* strings owned (strdup) */
    ctl_client_cbs_t    cbs;
    ctl_state_t         state;
    struct bufferevent *bev;
    struct event       *retry_ev;       /* reconnect after backoff */
    struct event       *hb_ev;          /* heartbeat, persistent */
    struct event       *hello_ev;       /* HELLO_OK deadline */
    int                 backoff_ms;
    uint32_t            heartbeat_ms;
    size_t              max_frame;      /* router's limit for our frames */
    bool                draining;
    frame_writer_t      fw;
    void              (*shut_done)(void *arg);
    void               *shut_arg;
    bool                shut_flushing;
};

static void ctl_connect(ctl_client_t *c);

static char *dup_or_empty(const char *s)
{
    return strdup(s != NULL ? s : "");
}

static void ctl_free_hello(ctl_hello_t *h)
{
    free((char *)h->role);
    free((char *)h->node);
    free((char *)h->token);
    free((char *)h->kv_dtype);
    for (uint32_t i = 0; i < h->n_ucx; i++)
        free((char *)h->ucx[i]);
}

/* Drop the connection. notify: tell the node its requests are void. */
static void ctl_close(ctl_client_t *c, bool notify)
{
    bool was_up = c->state == CTL_UP;

    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    event_del(c->hb_ev);
    event_del(c->hello_ev);
    if (c->state == CTL_SHUT)
        return;
    c->state = CTL_DOWN;
    if (was_up && notify && c->cbs.on_down != NULL)
        c->cbs.on_down(c->cbs.arg);
    if (c->state == CTL_DOWN) {   /* on_down may have shut us down */
        struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};

        evtimer_add(c->retry_ev, &tv);
        c->backoff_ms = c->backoff_ms * 2 > CTL_BACKOFF_MAX_MS ? CTL_BACKOFF_MAX_MS
                                                               : c->backoff_ms * 2;
    }
}

static void ctl_finish_shutdown(ctl_client_t *c)
{
    void (*done)(void *) = c->shut_done;

    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    event_del(c->hb_ev);
    event_del(c->hello_ev);
    event_del(c->retry_ev);
    c->shut_done = NULL;
    c->shut_flushing = false;
    if (done != NULL)
        done(c->shut_arg);
}

static duet_status_t ctl_send_hello(ctl_client_t *c)
{
    const ctl_hello_t *h = &c->hello;
    frame_writer_t *w = &c->fw;

    frame_begin(w, FRAME_HELLO, 11 + (h->n_ucx > 0));
    frame_put_str(w, "role", h->role);
    frame_put_str(w, "node", h->node);
    frame_put_str(w, "token", h->token);
    frame_put_u64(w, "model", h->model_fp);
    frame_put_u64(w, "tp", h->tp);
    frame_put_u64(w, "block_size", h->block_size);
    frame_put_u64(w, "blocks", h->blocks);
    if (h->n_ucx > 0) {
        frame_key(w, "ucx");
        msgpack_pack_array(&w->pk, h->n_ucx);
        for (uint32_t i = 0; i < h->n_ucx; i++) {
            size_t n = strlen(h->ucx[i]);

            msgpack_pack_str(&w->pk, n);
            msgpack_pack_str_body(&w->pk, h->ucx[i], n);
        }
    }
    frame_put_u64(w, "n_layers", h->n_layers);
    frame_put_u64(w, "n_kv_heads", h->n_kv_heads);
    frame_put_u64(w, "head_dim", h->head_dim);
    frame_put_str(w, "kv_dtype", h->kv_dtype);
    return frame_end(w, bufferevent_get_output(c->bev), 0);
}

static void ctl_send_drain(ctl_client_t *c)
{
    frame_begin(&c->fw, FRAME_DRAIN, 0);
    if (frame_end(&c->fw, bufferevent_get_output(c->bev), c->max_frame) != DUET_OK)
        log_warn("cannot queue DRAIN");
}

static void ctl_heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
    ctl_client_t *c = arg;
    ctl_load_t load = {0};

    (void)fd;
    (void)what;
    if (c->state != CTL_UP)
        return;
    if (c->cbs.load != NULL)
        c->cbs.load(c->cbs.arg, &load);
    frame_begin(&c->fw, FRAME_HEARTBEAT, 4);
    frame_put_u64(&c->fw, "running", load.running);
    frame_put_u64(&c->fw, "waiting", load.waiting);
    frame_put_u64(&c->fw, "free_blocks", load.free_blocks);
    frame_put_u64(&c->fw, "queued_tokens", load.queued_tokens);
    if (frame_end(&c->fw, bufferevent_get_output(c->bev), c->max_frame) != DUET_OK)
        log_warn("cannot queue HEARTBEAT");
}

static void ctl_hello_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    ctl_client_t *c = arg;

    (void)fd;
    (void)what;
    log_warn("no HELLO_OK from the router at %s:%u within %d ms; reconnecting", c->host,
             c->port, CTL_HELLO_TIMEOUT_MS);
    ctl_close(c, true);
}

static void ctl_on_hello_reply(ctl_client_t *c, const frame_msg_t *msg)
{
    uint64_t hb = 1000, mf = FRAME_DEFAULT_MAX;
    struct timeval tv;

    if (msg->type == FRAME_ERROR) {
        const char *code = "", *text = "";
        size_t ncode = 0, ntext = 0;
        char cbuf[64], tbuf[256];

        frame_get_str(msg, "code", &code, &ncode);
        frame_get_str(msg, "msg", &text, &ntext);
        snprintf(cbuf, sizeof(cbuf), "%.*s", (int)ncode, code);
        snprintf(tbuf, sizeof(tbuf), "%.*s", (int)ntext, text);
        log_error("router refused HELLO: %s (%s)", tbuf, cbuf);
        if ((strcmp(cbuf, "bad_token") == 0 || strcmp(cbuf, "version") == 0 ||
             strcmp(cbuf, "model_mismatch") == 0 || strcmp(cbuf, "malformed") == 0) &&
            c->cbs.on_fatal != NULL) {
            ctl_close(c, false);
            c->cbs.on_fatal(c->cbs.arg, cbuf, tbuf);
            return;
        }
        ctl_close(c, false);
        return;
    }
    if (msg->type != FRAME_HELLO_OK) {
        log_warn("router sent %s before HELLO_OK; reconnecting", frame_type_str(msg->type));
        ctl_close(c, false);
        return;
    }
    if (frame_get_u64(msg, "heartbeat_ms", &hb) != DUET_OK || hb == 0 || hb > 600000)
        hb = 1000;
    if (frame_get_u64(msg, "max_frame", &mf) != DUET_OK || mf < 1024)
        mf = FRAME_DEFAULT_MAX;
    c->heartbeat_ms = (uint32_t)hb;
    c->max_frame = (size_t)mf;
    c->state = CTL_UP;
    c->backoff_ms = CTL_BACKOFF_MIN_MS;
    event_del(c->hello_ev);
    tv.tv_sec = c->heartbeat_ms / 1000;
    tv.tv_usec = (c->heartbeat_ms % 1000) * 1000;
    event_add(c->hb_ev, &tv);
    log_info("registered with the router at %s:%u as %s '%s'", c->host, c->port,
             c->hello.role, c->hello.node);
    if (c->draining)
        ctl_send_drain(c);
    if (c->cbs.on_up != NULL)
        c->cbs.on_up(c->cbs.arg);
    ctl_heartbeat_cb(-1, 0, c);   /* load at once, not a second later */
}

static void ctl_read_cb(struct bufferevent *bev, void *arg)
{
    ctl_client_t *c = arg;

    while (c->bev == bev && c->state != CTL_SHUT) {
        frame_msg_t msg;
        duet_status_t s = frame_decode(bufferevent_get_input(bev), FRAME_DEFAULT_MAX, &msg);

        if (s == DUET_AGAIN)
            return;
        if (s != DUET_OK) {
            log_error("bad frame from the router (%s); closing the connection",
                      duet_status_str(s));
            ctl_close(c, true);
            return;
        }
        if (c->state == CTL_HELLO_SENT) {
            ctl_on_hello_reply(c, &msg);
        } else if (c->state == CTL_UP) {
            switch (msg.type) {
            case FRAME_RESERVE:
            case FRAME_PREFILL:
            case FRAME_ABORT:
            case FRAME_DRAIN:
                c->cbs.on_frame(c->cbs.arg, &msg);
                break;
            case FRAME_ERROR: {
                uint64_t rid;
                const char *text = "";
                size_t n = 0;

                if (frame_get_u64(&msg, "rid", &rid) == DUET_OK) {
                    c->cbs.on_frame(c->cbs.arg, &msg);
                    break;
                }
                frame_get_str(&msg, "msg", &text, &n);
                log_error("router: %.*s; reconnecting", (int)n, text);
                ctl_close(c, true);
                break;
            }
            default:
                log_error("router sent an unexpected %s frame; closing the connection",
                          frame_type_str(msg.type));
                ctl_close(c, true);
                break;
            }
        }
        frame_msg_release(&msg);
    }
}

static void ctl_write_cb(struct bufferevent *bev, void *arg)
{
    ctl_client_t *c = arg;

    (void)bev;
    if (c->shut_flushing)
        ctl_finish_shutdown(c);
}

static void ctl_event_cb(struct bufferevent *bev, short what, void *arg)
{
    ctl_client_t *c = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        struct timeval tv = {CTL_HELLO_TIMEOUT_MS / 1000, 0};

        setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (ctl_send_hello(c) != DUET_OK) {
            log_error("cannot build HELLO");
            ctl_close(c, false);
            return;
        }
        c->state = CTL_HELLO_SENT;
        evtimer_add(c->hello_ev, &tv);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (c->shut_flushing) {
            ctl_finish_shutdown(c);
            return;
        }
        if (c->state == CTL_CONNECTING)
            log_debug("cannot connect to the router at %s:%u; retrying in %d ms", c->host,
                      c->port, c->backoff_ms);
        else
            log_warn("connection to the router closed%s", c->state == CTL_UP ?
                     "; dropping its requests and reconnecting" : "");
        ctl_close(c, true);
    }
}

static void ctl_connect(ctl_client_t *c)
{
    struct evutil_addrinfo hints, *ai = NULL;
    char port[8];

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%u", c->port);
    if (evutil_getaddrinfo(c->host, port, &hints, &ai) != 0 || ai == NULL) {
        log_error("cannot resolve the router address %s", c->host);
        c->state = CTL_CONNECTING;
        ctl_close(c, false);
        return;
    }
    c->bev = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        evutil_freeaddrinfo(ai);
        c->state = CTL_CONNECTING;
        ctl_close(c, false);
        return;
    }
    bufferevent_setcb(c->bev, ctl_read_cb, ctl_write_cb, ctl_event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->state = CTL_CONNECTING;
    if (bufferevent_socket_connect(c->bev, ai->ai_addr, (int)ai->ai_addrlen) != 0) {
        evutil_freeaddrinfo(ai);
        ctl_close(c, false);
        return;
    }
    evutil_freeaddrinfo(ai);
}

static void ctl_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    ctl_client_t *c = arg;

    (void)fd;
    (void)what;
    if (c->state == CTL_DOWN)
        ctl_connect(c);
}

duet_status_t ctl_client_create(struct event_base *base, const char *host, uint16_t port,
                                const ctl_hello_t *hello, const ctl_client_cbs_t *cbs,
                                ctl_client_t **c_p)
{
    ctl_client_t *c;

    if (hello->n_ucx > CTL_MAX_UCX || cbs->on_frame == NULL)
        return DUET_ERR_INVALID;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return DUET_ERR_NOMEM;
    c->base = base;
    c->port = port;
    c->cbs = *cbs;
    c->backoff_ms = CTL_BACKOFF_MIN_MS;
    c->heartbeat_ms = 1000;
    c->max_frame = FRAME_DEFAULT_MAX;
    frame_writer_init(&c->fw);
    c->hello = *hello;
    c->hello.role = dup_or_empty(hello->role);
    c->hello.node = dup_or_empty(hello->node);
    c->hello.token = dup_or_empty(hello->token);
    c->hello.kv_dtype = dup_or_empty(hello->kv_dtype);
    c->hello.n_ucx = 0;
    for (uint32_t i = 0; i < hello->n_ucx; i++) {
        c->hello.ucx[i] = dup_or_empty(hello->ucx[i]);
        if (c->hello.ucx[i] == NULL)
            goto err_free;
        c->hello.n_ucx++;
    }
    c->host = strdup(host);
    c->retry_ev = evtimer_new(base, ctl_retry_cb, c);
    c->hb_ev = event_new(base, -1, EV_PERSIST, ctl_heartbeat_cb, c);
    c->hello_ev = evtimer_new(base, ctl_hello_timeout_cb, c);
    if (c->host == NULL || c->hello.role == NULL || c->hello.node == NULL ||
        c->hello.token == NULL || c->hello.kv_dtype == NULL || c->retry_ev == NULL ||
        c->hb_ev == NULL || c->hello_ev == NULL)
        goto err_free;
    ctl_connect(c);
    *c_p = c;
    return DUET_OK;

err_free:
    ctl_client_destroy(c);
    return DUET_ERR_NOMEM;
}

void ctl_client_destroy(ctl_client_t *c)
{
    if (c == NULL)
        return;
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    if (c->retry_ev != NULL)
        event_free(c->retry_ev);
    if (c->hb_ev != NULL)
        event_free(c->hb_ev);
    if (c->hello_ev != NULL)
        event_free(c->hello_ev);
    ctl_free_hello(&c->hello);
    frame_writer_destroy(&c->fw);
    free(c->host);
    free(c);
}

bool ctl_client_up(const ctl_client_t *c)
{
    return c->state == CTL_UP;
}

frame_writer_t *ctl_client_writer(ctl_client_t *c)
{
    return &c->fw;
}

duet_status_t ctl_client_send(ctl_client_t *c)
{
    duet_status_t s;

    if (c->state != CTL_UP || c->bev == NULL || c->shut_flushing) {
        frame_begin(&c->fw, FRAME_DRAIN, 0);   /* drop what was built */
        return DUET_ERR_CLOSED;
    }
    s = frame_end(&c->fw, bufferevent_get_output(c->bev), c->max_frame);
    if (s != DUET_OK)
        log_error("cannot queue a frame to the router: %s", duet_status_str(s));
    return s;
}

static duet_status_t send_rid_str(ctl_client_t *c, frame_type_t type, uint64_t rid,
                                  const char *key, const char *str)
{
    frame_writer_t *w = ctl_client_writer(c);

    frame_begin(w, type, 2);
    frame_put_u64(w, "rid", rid);
    frame_put_str(w, key, str);
    return ctl_client_send(c);
}

duet_status_t ctl_client_send_error(ctl_client_t *c, uint64_t rid, const char *msg)
{
    return send_rid_str(c, FRAME_ERROR, rid, "msg", msg);
}

duet_status_t ctl_client_send_nack(ctl_client_t *c, uint64_t rid, const char *reason)
{
    return send_rid_str(c, FRAME_NACK, rid, "reason", reason);
}

void ctl_client_drain(ctl_client_t *c)
{
    if (c->draining)
        return;
    c->draining = true;
    if (c->state == CTL_UP)
        ctl_send_drain(c);
}

void ctl_client_shutdown(ctl_client_t *c, void (*done)(void *arg), void *arg)
{
    bool flush = c->state == CTL_UP && c->bev != NULL &&
                 evbuffer_get_length(bufferevent_get_output(c->bev)) > 0;

    c->state = CTL_SHUT;
    c->shut_done = done;
    c->shut_arg = arg;
    if (flush) {
        c->shut_flushing = true;
        event_del(c->hb_ev);
        event_del(c->retry_ev);
        bufferevent_disable(c->bev, EV_READ);
        return;
    }
    ctl_finish_shutdown(c);
}

/* ---- request fields -------------------------------------------------------- */

#define SET_ERR(...) snprintf(err, errlen, __VA_ARGS__)

static duet_status_t opt_f64(const frame_msg_t *msg, const char *key, double *v, char *err,
                             size_t errlen)
{
    duet_status_t s = frame_get_f64(msg, key, v);

    if (s == DUET_ERR_NOT_FOUND)
        return DUET_OK;   /* the default stays */
    if (s != DUET_OK)
        SET_ERR("field '%s' must be a number", key);
    return s == DUET_OK ? DUET_OK : DUET_ERR_PROTO;
}

duet_status_t ctl_sampling_parse(const frame_msg_t *msg, ctl_sampling_t *s, char *err,
                                 size_t errlen)
{
    uint64_t mt;
    duet_status_t st;
    size_t n = 0;

    memset(s, 0, sizeof(*s));
    s->top_p = 1.0;
    s->top_k = -1;
    s->repetition_penalty = 1.0;
    if (frame_get_u64(msg, "max_tokens", &mt) != DUET_OK || mt == 0 || mt > INT32_MAX) {
        SET_ERR("field 'max_tokens' must be an integer >= 1");
        return DUET_ERR_PROTO;
    }
    s->max_tokens = (uint32_t)mt;
    CHECK(opt_f64(msg, "temperature", &s->temperature, err, errlen));
    CHECK(opt_f64(msg, "top_p", &s->top_p, err, errlen));
    CHECK(opt_f64(msg, "min_p", &s->min_p, err, errlen));
    CHECK(opt_f64(msg, "presence_penalty", &s->presence_penalty, err, errlen));
    CHECK(opt_f64(msg, "frequency_penalty", &s->frequency_penalty, err, errlen));
    CHECK(opt_f64(msg, "repetition_penalty", &s->repetition_penalty, err, errlen));
    st = frame_get_i64(msg, "top_k", &s->top_k);
    if (st != DUET_OK && st != DUET_ERR_NOT_FOUND) {
        SET_ERR("field 'top_k' must be an integer");
        return DUET_ERR_PROTO;
    }
    st = frame_get_bool(msg, "ignore_eos", &s->ignore_eos);
    if (st != DUET_OK && st != DUET_ERR_NOT_FOUND) {
        SET_ERR("field 'ignore_eos' must be a bool");
        return DUET_ERR_PROTO;
    }
    st = frame_get_u32_array(msg, "eos", s->eos, CTL_MAX_EOS, &n);
    if (st != DUET_OK && st != DUET_ERR_NOT_FOUND) {
        SET_ERR("field 'eos' must be an array of at most %d token ids", CTL_MAX_EOS);
        return DUET_ERR_PROTO;
    }
    s->n_eos = st == DUET_OK ? (uint32_t)n : 0;
    st = frame_get_i64(msg, "seed", &s->seed);
    if (st != DUET_OK && st != DUET_ERR_NOT_FOUND) {
        SET_ERR("field 'seed' must be an integer");
        return DUET_ERR_PROTO;
    }
    s->has_seed = st == DUET_OK;
    return DUET_OK;
}

duet_status_t ctl_get_tokens(const frame_msg_t *msg, const char *key, int32_t **toks_p,
                             int32_t *n_p)
{
    const msgpack_object *o = frame_get(msg, key);
    int32_t *t;

    if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0 ||
        o->via.array.size > INT32_MAX)
        return DUET_ERR_PROTO;
    t = malloc(sizeof(*t) * o->via.array.size);
    if (t == NULL)
        return DUET_ERR_NOMEM;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];

        if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > INT32_MAX) {
            free(t);
            return DUET_ERR_PROTO;
        }
        t[i] = (int32_t)e->via.u64;
    }
    *toks_p = t;
    *n_p = (int32_t)o->via.array.size;
    return DUET_OK;
}

duet_status_t ctl_get_strbuf(const frame_msg_t *msg, const char *key, char *buf, size_t len)
{
    const char *s;
    size_t n;
    duet_status_t st = frame_get_str(msg, key, &s, &n);

    if (st != DUET_OK)
        return st;
    if (n + 1 > len || memchr(s, '\0', n) != NULL)
        return DUET_ERR_TOO_BIG;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return DUET_OK;
}

uint64_t ctl_node_hash(const char *id)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (; *id; id++) {
        h ^= (uint8_t)*id;
        h *= 0x100000001b3ull;
    }
    return h ? h : 1;
}

duet_status_t ctl_client_get_request(ctl_client_t *c, const frame_msg_t *msg, uint64_t rid,
                                     const char *what, int32_t **toks_p, int32_t *ntok_p,
                                     ctl_sampling_t *sp)
{
    char err[256];
    duet_status_t s;

    s = ctl_get_tokens(msg, "tokens", toks_p, ntok_p);
    if (s != DUET_OK) {
        snprintf(err, sizeof(err), "%s: bad 'tokens'", what);
        ctl_client_send_error(c, rid, s == DUET_ERR_NOMEM ? "out of memory" : err);
        return s;
    }
    s = ctl_sampling_parse(msg, sp, err, sizeof(err));
    if (s != DUET_OK) {
        free(*toks_p);
        *toks_p = NULL;
        ctl_client_send_error(c, rid, err);
    }
    return s;
}
