/* The router: the OpenAI-compatible HTTP front end, the node registry and
 * control-plane server, routing policies, admission and metrics, all on one
 * libevent loop. `duet router` (cli/cmd_router.c) is its command line. */
#ifndef DUET_ROUTER_ROUTER_H
#define DUET_ROUTER_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "router/tok.h"

struct event_base;

typedef struct router router_t;

typedef struct {
    const char *host;              /* bind address of both ports; "127.0.0.1" */
    int         http_port;         /* 0: any free port */
    int         ctl_port;          /* 0: any free port */
    const char *api_key;           /* NULL or "": no key required */
    const char *cluster_token;     /* nodes must present it; "" accepted only if empty */
    const char *served_name;       /* model id in the API; NULL: tokenizer's name */
    const char *prefill_policy;    /* "round-robin" | "least-loaded" | "prefix-aware" */
    const char *decode_policy;     /* "round-robin" | "least-loaded" */
    int         max_inflight;      /* requests dispatched to nodes at once */
    int         max_queue;         /* requests waiting for admission; more: 429 */
    size_t      max_body;          /* bytes of a request body; more: 413 */
    double      heartbeat_timeout; /* seconds without HEARTBEAT before a node is dropped */
    const char *token_trace;       /* NULL: none; else a file: "rid read_ns queued_ns chunk"
                                    * per token (benchmarks, bench/router_overhead) */
} router_config_t;

/* Defaults for every field. */
void router_config_default(router_config_t *cfg);

/* Bind both listeners on base and start serving. Takes ownership of tok
 * (also on failure). Strings in cfg are borrowed and must outlive the
 * router. */
duet_status_t router_create(struct event_base *base, const router_config_t *cfg,
                            rtok_t *tok, router_t **router_p);

/* Begin a clean stop: stop accepting HTTP requests and nodes, answer every
 * request in flight (503, or an error event in its stream) and ABORT it at
 * its nodes. The caller then runs the loop briefly so those bytes leave,
 * and calls router_destroy. */
void router_shutdown(router_t *r);

/* Close every connection and free everything. In-flight requests get 503
 * and their nodes an ABORT. NULL is ignored. */
void router_destroy(router_t *r);

/* The ports actually bound (useful with port 0). */
int router_http_port(const router_t *r);
int router_ctl_port(const router_t *r);

#endif
