/* Router context: configuration, listeners and the periodic tick. */
#define DUET_LOG_COMPONENT "router"
#include "router_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "common/clock.h"
#include "common/log.h"

#define ROUTER_TICK_MS 250

void router_config_default(router_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->http_port = 8000;
    cfg->ctl_port = 7100;
    cfg->cluster_token = "";
    cfg->prefill_policy = "least-loaded";
    cfg->decode_policy = "least-loaded";
    cfg->max_inflight = 1024;
    cfg->max_queue = 4096;
    cfg->max_body = 8u << 20;
    cfg->heartbeat_timeout = 5.0;
}

static void router_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    ctl_check_timeouts(arg);
}

duet_status_t router_create(struct event_base *base, const router_config_t *cfg,
                            rtok_t *tok, router_t **router_p)
{
    router_t *r = calloc(1, sizeof(*r));
    struct timeval tick = {0, ROUTER_TICK_MS * 1000};
    duet_status_t status;

    if (r == NULL) {
        rtok_destroy(tok);
        return DUET_ERR_NOMEM;
    }
    r->base = base;
    r->cfg = *cfg;
    r->tok = tok;
    r->created = clock_wall_s();
    TAILQ_INIT(&r->nodes);
    TAILQ_INIT(&r->queue);
    TAILQ_INIT(&r->running);
    metrics_init(&r->m);
    frame_writer_init(&r->fw);
    r->scratch = evbuffer_new();
    if (r->scratch == NULL) {
        status = DUET_ERR_NOMEM;
        goto err_free;
    }
    snprintf(r->served_name, sizeof(r->served_name), "%s",
             cfg->served_name && cfg->served_name[0] ? cfg->served_name : tok->name);
    if (policy_parse(cfg->prefill_policy, true, &r->ppolicy) != DUET_OK ||
        policy_parse(cfg->decode_policy, false, &r->dpolicy) != DUET_OK) {
        log_error("unknown routing policy (prefill: round-robin, least-loaded, prefix-aware; "
                  "decode: round-robin, least-loaded)");
        status = DUET_ERR_INVALID;
        goto err_free;
    }
    if (cfg->max_inflight < 1 || cfg->max_queue < 0 || cfg->max_body < 1024 ||
        tok->max_model_len < 2) {
        log_error("bad router limits");
        status = DUET_ERR_INVALID;
        goto err_free;
    }
    if (cfg->token_trace != NULL && cfg->token_trace[0] != '\0') {
        r->token_trace = fopen(cfg->token_trace, "w");
        if (r->token_trace == NULL) {
            log_error("cannot write the token trace %s: %s", cfg->token_trace, strerror(errno));
            status = DUET_ERR_IO;
            goto err_free;
        }
        /* a big buffer: few write(2)s on the event loop while tokens stream */
        setvbuf(r->token_trace, NULL, _IOFBF, 1 << 20);
    }
    CHECK_GOTO(http_listen(r), status, err_free);
    CHECK_GOTO(ctl_listen(r), status, err_free);
    r->tick = event_new(base, -1, EV_PERSIST, router_tick_cb, r);
    if (r->tick == NULL || event_add(r->tick, &tick) != 0) {
        status = DUET_ERR_NOMEM;
        goto err_free;
    }
    if ((cfg->cluster_token == NULL || cfg->cluster_token[0] == '\0') &&
        strcmp(cfg->host, "127.0.0.1") != 0 && strcmp(cfg->host, "::1") != 0 &&
        strcmp(cfg->host, "localhost") != 0)
        log_warn("listening on %s with an empty cluster token: any host that reaches port "
                 "%d can register as a node (set --cluster-token)", cfg->host, r->ctl_port);
    if (cfg->api_key == NULL || cfg->api_key[0] == '\0')
        log_info("no API key: the HTTP API is open to whoever reaches %s:%d", cfg->host,
                 r->http_port);
    log_info("policies: prefill %s, decode %s; max %d in flight, %d queued; model %s, "
             "context %d", policy_str(r->ppolicy), policy_str(r->dpolicy), cfg->max_inflight,
             cfg->max_queue, r->served_name, tok->max_model_len);
    *router_p = r;
    return DUET_OK;

err_free:
    router_destroy(r);
    return status;
}

void router_shutdown(router_t *r)
{
    if (r->hsock != NULL) {
        evhttp_del_accept_socket(r->http, r->hsock);
        r->hsock = NULL;
    }
    if (r->ctl != NULL)
        evconnlistener_disable(r->ctl);
    lifecycle_shutdown(r);
}

void router_destroy(router_t *r)
{
    node_t *n;

    if (r == NULL)
        return;
    lifecycle_shutdown(r);
    while ((n = TAILQ_FIRST(&r->nodes)) != NULL) {
        TAILQ_REMOVE(&r->nodes, n, link);
        if (n->bev != NULL)
            bufferevent_free(n->bev);
        for (uint32_t i = 0; i < n->nucx; i++)
            free(n->ucx[i]);
        free(n->ucx);
        free(n->prefix);
        free(n);
    }
    if (r->tick != NULL)
        event_free(r->tick);
    if (r->ctl != NULL)
        evconnlistener_free(r->ctl);
    if (r->http != NULL)
        evhttp_free(r->http);
    frame_writer_destroy(&r->fw);
    if (r->scratch != NULL)
        evbuffer_free(r->scratch);
    free(r->wbuf);
    free(r->tok_first);
    if (r->token_trace != NULL)
        fclose(r->token_trace);
    rtok_destroy(r->tok);
    free(r);
}

int router_http_port(const router_t *r)
{
    return r->http_port;
}

int router_ctl_port(const router_t *r)
{
    return r->ctl_port;
}
