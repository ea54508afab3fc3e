/* A node's way out: drain on the router's DRAIN, SIGINT or SIGTERM (no new
 * requests, the router told, the ones in flight finish), abort what is left
 * after a timeout or a second signal, and unregister from the router once
 * nothing is in flight; the event loop then exits.
 *
 * The node keeps its requests; node_life asks through node_life_ops_t. Call
 * node_life_check_drained() whenever a request leaves the node. */
#ifndef DUET_COMMON_NODE_LIFE_H
#define DUET_COMMON_NODE_LIFE_H

#include <stdbool.h>

#include "common/ctl_client.h"
#include "common/status.h"

struct event;
struct event_base;

typedef struct {
    int  (*inflight)(void *arg);    /* requests the node still holds */
    void (*abort_all)(void *arg);   /* end them all now (timeout, second signal) */
    void  *arg;
} node_life_ops_t;

typedef struct {
    struct event_base *base;
    ctl_client_t      *ctl;         /* set by the node once created */
    double             drain_timeout_s;
    node_life_ops_t    ops;
    struct event      *drain_ev, *sigint_ev, *sigterm_ev;
    bool               draining;    /* no new requests */
    bool               stopping;    /* unregistering; the loop exits after */
} node_life_t;

/* Install the SIGINT/SIGTERM handlers on base. On failure nothing is left
 * to free. */
duet_status_t node_life_init(node_life_t *l, struct event_base *base, double drain_timeout_s,
                             const node_life_ops_t *ops);

/* Free the events (a zeroed or failed node_life_t is fine). */
void node_life_fini(node_life_t *l);

/* Stop taking requests and tell the router; why goes to the log. */
void node_life_drain(node_life_t *l, const char *why);

/* Draining and nothing in flight: unregister (once). */
void node_life_check_drained(node_life_t *l);

/* Unregister now, drained or not (once); the loop exits when the router
 * connection is closed. */
void node_life_stop(node_life_t *l);

#endif
