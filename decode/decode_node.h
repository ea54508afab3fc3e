/* The decode node service (and the colocated node, which is the same driver
 * taking whole requests): registers with the router, reserves KV blocks on
 * RESERVE and grants them to the named prefill node over the KV connector,
 * admits a request once its KV arrived, runs continuous batching with
 * engine_step, and streams TOKENS / FINISH to the router. ABORT works in
 * every state; SIGTERM/SIGINT or DRAIN drain the node.
 *
 * With tp > 1 the engine's executor runs one process per rank; each rank
 * owns its own decode kvc_t (rank hooks), receives its KV heads from the
 * prefill node itself, and the driver grants, polls and aborts on every
 * rank through exec_call (docs/nodes.md, "Tensor parallelism"). */
#ifndef DUET_DECODE_DECODE_NODE_H
#define DUET_DECODE_DECODE_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/engine.h"
#include "model/config.h"
#include "model/gguf.h"

typedef struct {
    const gguf_t         *g;            /* borrowed, outlives the node */
    const model_config_t *cfg;          /* borrowed */
    engine_opts_t         engine;       /* tp_size/rank_hooks/prefill_only are set here */
    bool                  colocated;    /* take whole requests (PREFILL) */
    const char           *node_id;
    const char           *router_host;
    uint16_t              router_port;
    const char           *token;        /* cluster token */
    int                   tp;
    const char           *ucx_host;     /* address the KV listeners bind to */
    uint32_t              lease_ms;     /* how long granted blocks wait for KV */
    uint32_t              grant_wait_ms;/* how long to wait for the prefill node
                                           to connect before failing a RESERVE */
    double                drain_timeout_s; /* then abort what is left */
} decode_node_opts_t;

/* Run the node until it has drained (SIGTERM, SIGINT, DRAIN) or the router
 * refused it for good. Returns the process exit code: 0 after a drain, 1 on
 * a setup failure or a fatal refusal. err gets a one-line reason. */
int decode_node_run(const decode_node_opts_t *o, char *err, size_t errlen);

#endif
