/* duet prefill: the prefill node service. */
#include <signal.h>
#include <stdio.h>

#include "cli/cli.h"
#include "cli/node_cli.h"
#include "prefill/prefill_node.h"

static int prefill_run(int argc, char **argv)
{
    node_cli_t c;
    flag_t flags[NODE_CLI_MAX_FLAGS + 2];
    int64_t connect_ms = 3000;
    int nf, rc;
    duet_status_t s;
    char err[512] = "";

    nf = node_cli_init(&c, flags);
    flags[nf++] = (flag_t){"connect-ms", 0, FLAG_INT, &connect_ms, "how long setting up the "
                           "KV connection to a decode rank may take", "MS", 100, 60000, 0, 0};
    {
        const flags_usage_t u = {"duet prefill", NULL,
            "Run a prefill node that registers with a router and streams KV to decode nodes."};

        s = flags_parse(&u, flags, nf, argc, argv, NULL, 0, NULL);
        if (s == DUET_DONE)
            return 0;
        if (s != DUET_OK)
            return 2;
    }
    if (!node_cli_finish(&c, "duet prefill", "prefill"))
        return 2;
    signal(SIGPIPE, SIG_IGN);
    {
        prefill_node_opts_t o = {
            .g = c.g, .cfg = &c.cfg, .engine = c.engine, .node_id = c.node_id,
            .router_host = c.host, .router_port = c.port, .token = c.token,
            .lease_ms = (uint32_t)c.lease_ms, .connect_ms = (uint32_t)connect_ms,
            .drain_timeout_s = c.drain_timeout,
        };

        rc = prefill_node_run(&o, err, sizeof(err));
    }
    if (rc != 0 && err[0])
        fprintf(stderr, "duet prefill: %s\n", err);
    node_cli_destroy(&c);
    return rc;
}

const cli_cmd_t cli_cmd_prefill = {"prefill", "prefill node for a router", prefill_run};
