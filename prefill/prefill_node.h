/* The prefill node service: registers with the router, runs the prompts of
 * PREFILL frames in a prefill-only engine (chunked prefill in shared
 * batches), and when a prompt's KV is complete sends every layer through the
 * KV connector into the blocks that the named decode node granted, then
 * KV_END (first token + sampler PRNG state) to the decode node and
 * FIRST_TOKEN to the router at once. Its own blocks go back to the engine
 * (prefix cache) when the connector is done with them. ABORT works at every
 * stage; SIGTERM/SIGINT or DRAIN drain the node. */
#ifndef DUET_PREFILL_PREFILL_NODE_H
#define DUET_PREFILL_PREFILL_NODE_H

#include <stdint.h>

#include "common/status.h"
#include "engine/engine.h"
#include "model/config.h"
#include "model/gguf.h"

typedef struct {
    const gguf_t         *g;            /* borrowed, outlives the node */
    const model_config_t *cfg;          /* borrowed */
    engine_opts_t         engine;       /* prefill_only/kv_slab are set here */
    const char           *node_id;
    const char           *router_host;
    uint16_t              router_port;
    const char           *token;        /* cluster token */
    uint32_t              lease_ms;     /* abort a transfer not done in time */
    uint32_t              connect_ms;   /* KV connection setup to a decode rank */
    double                drain_timeout_s;
} prefill_node_opts_t;

/* Run until drained or refused for good; returns the exit code (0 after a
 * drain). err gets a one-line reason. */
int prefill_node_run(const prefill_node_opts_t *o, char *err, size_t errlen);

#endif
