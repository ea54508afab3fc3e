/* Drain, signals and unregistering, shared by the node services. */
#define DUET_LOG_COMPONENT "node"

#include "common/node_life.h"

#include <signal.h>
#include <string.h>
#include <sys/time.h>

#include <event2/event.h>

#include "common/log.h"

static void life_shut_done(void *arg)
{
    node_life_t *l = arg;

    event_base_loopexit(l->base, NULL);
}

void node_life_stop(node_life_t *l)
{
    if (l->stopping)
        return;
    l->stopping = true;
    ctl_client_shutdown(l->ctl, life_shut_done, l);
}

void node_life_check_drained(node_life_t *l)
{
    if (!l->draining || l->stopping || l->ops.inflight(l->ops.arg) > 0)
        return;
    log_info("drained: unregistering");
    node_life_stop(l);
}

static void life_drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    node_life_t *l = arg;

    (void)fd;
    (void)what;
    log_warn("drain timeout: aborting %d requests", l->ops.inflight(l->ops.arg));
    l->ops.abort_all(l->ops.arg);
    node_life_check_drained(l);
}

void node_life_drain(node_life_t *l, const char *why)
{
    struct timeval tv;

    if (l->draining)
        return;
    l->draining = true;
    log_info("draining (%s): %d requests in flight", why, l->ops.inflight(l->ops.arg));
    ctl_client_drain(l->ctl);
    tv.tv_sec = (time_t)l->drain_timeout_s;
    tv.tv_usec = (suseconds_t)((l->drain_timeout_s - (double)tv.tv_sec) * 1e6);
    evtimer_add(l->drain_ev, &tv);
    node_life_check_drained(l);
}

static void life_signal_cb(evutil_socket_t sig, short what, void *arg)
{
    node_life_t *l = arg;

    (void)what;
    if (l->draining) {
        log_info("signal %d again: aborting what is left", (int)sig);
        l->ops.abort_all(l->ops.arg);
        node_life_stop(l);
        return;
    }
    node_life_drain(l, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

duet_status_t node_life_init(node_life_t *l, struct event_base *base, double drain_timeout_s,
                             const node_life_ops_t *ops)
{
    memset(l, 0, sizeof(*l));
    l->base = base;
    l->drain_timeout_s = drain_timeout_s;
    l->ops = *ops;
    l->drain_ev = evtimer_new(base, life_drain_timeout_cb, l);
    l->sigint_ev = evsignal_new(base, SIGINT, life_signal_cb, l);
    l->sigterm_ev = evsignal_new(base, SIGTERM, life_signal_cb, l);
    if (l->drain_ev == NULL || l->sigint_ev == NULL || l->sigterm_ev == NULL ||
        evsignal_add(l->sigint_ev, NULL) != 0 || evsignal_add(l->sigterm_ev, NULL) != 0) {
        node_life_fini(l);
        return DUET_ERR_NOMEM;
    }
    return DUET_OK;
}

void node_life_fini(node_life_t *l)
{
    if (l->drain_ev != NULL)
        event_free(l->drain_ev);
    if (l->sigint_ev != NULL)
        event_free(l->sigint_ev);
    if (l->sigterm_ev != NULL)
        event_free(l->sigterm_ev);
    l->drain_ev = l->sigint_ev = l->sigterm_ev = NULL;
}
