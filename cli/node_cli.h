/* What `duet prefill` and `duet decode` share on the command line: the
 * router address, node id, cluster token, threads, and loading the model. */
#ifndef DUET_CLI_NODE_CLI_H
#define DUET_CLI_NODE_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "common/flags.h"
#include "engine/engine.h"
#include "model/config.h"
#include "model/gguf.h"

#define NODE_CLI_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define NODE_CLI_MAX_FLAGS     32

typedef struct {
    const char    *model;
    const char    *router;        /* "host:port" */
    const char    *node_id;       /* NULL: <role>-<pid> */
    const char    *token;
    const char    *ucx_host;
    int64_t        lease_ms;
    double         drain_timeout;
    engine_opts_t  engine;
    int64_t        threads;
    bool           kv_f32;
    /* filled by node_cli_finish */
    char           host[256];
    uint16_t       port;
    char           id_buf[64];
    gguf_t        *g;
    model_config_t cfg;
} node_cli_t;

/* Defaults, and the shared flags appended to flags (room for
 * NODE_CLI_MAX_FLAGS); returns how many were written. */
int node_cli_init(node_cli_t *c, flag_t *flags);

/* After parsing: check the router address and node id, load the model.
 * Prints a clear error prefixed by cmd and returns false on failure. */
bool node_cli_finish(node_cli_t *c, const char *cmd, const char *role);

void node_cli_destroy(node_cli_t *c);

#endif
