/* duet decode: the decode node service (or, with --colocated, the colocated
 * node that serves whole requests). */
#include <signal.h>
#include <stdio.h>

#include "cli/cli.h"
#include "cli/node_cli.h"
#include "decode/decode_node.h"

static int decode_run(int argc, char **argv)
{
    node_cli_t c;
    flag_t flags[NODE_CLI_MAX_FLAGS + 4];
    int64_t tp = 1, grant_wait = 10000;
    bool colocated = false;
    int nf;
    duet_status_t s;
    char err[512] = "";
    int rc;

    nf = node_cli_init(&c, flags);
    flags[nf++] = (flag_t){"tp", 0, FLAG_INT, &tp, "tensor-parallel ranks (one process "
                           "each; each receives its KV heads itself)", "N", 1, 64, 0, 0};
    flags[nf++] = (flag_t){"colocated", 0, FLAG_BOOL, &colocated, "serve whole requests "
                           "(prefill and decode in one engine) instead of decoding for "
                           "prefill nodes", NULL, 0, 0, 0, 0};
    flags[nf++] = (flag_t){"grant-wait-ms", 0, FLAG_INT, &grant_wait, "how long a RESERVE "
                           "waits for the named prefill node to connect", "MS", 100, 600000,
                           0, 0};
    {
        const flags_usage_t u = {"duet decode", NULL,
            "Run a decode node (or a colocated node) that registers with a router."};

        s = flags_parse(&u, flags, nf, argc, argv, NULL, 0, NULL);
        if (s == DUET_DONE)
            return 0;
        if (s != DUET_OK)
            return 2;
    }
    if (!node_cli_finish(&c, "duet decode", colocated ? "colocated" : "decode"))
        return 2;
    signal(SIGPIPE, SIG_IGN);
    {
        decode_node_opts_t o = {
            .g = c.g, .cfg = &c.cfg, .engine = c.engine, .colocated = colocated,
            .node_id = c.node_id, .router_host = c.host, .router_port = c.port,
            .token = c.token, .tp = (int)tp, .ucx_host = c.ucx_host,
            .lease_ms = (uint32_t)c.lease_ms, .grant_wait_ms = (uint32_t)grant_wait,
            .drain_timeout_s = c.drain_timeout,
        };

        rc = decode_node_run(&o, err, sizeof(err));
    }
    if (rc != 0 && err[0])
        fprintf(stderr, "duet decode: %s\n", err);
    node_cli_destroy(&c);
    return rc;
}

const cli_cmd_t cli_cmd_decode = {"decode", "decode node (or --colocated node) for a router",
                                  decode_run};
