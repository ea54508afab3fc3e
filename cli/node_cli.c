/* Shared command-line handling of the node commands. */
#include "cli/node_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int node_cli_init(node_cli_t *c, flag_t *flags)
{
    const char *env = getenv("DUET_CLUSTER_TOKEN");
    int n = 0;

    memset(c, 0, sizeof(*c));
    c->model = NODE_CLI_DEFAULT_MODEL;
    c->router = "127.0.0.1:7100";
    c->token = env != NULL ? env : "";
    c->ucx_host = "127.0.0.1";
    c->lease_ms = 60000;
    c->drain_timeout = 60.0;
    engine_opts_default(&c->engine);
    /* Heartbeats go out between engine steps: keep steps short by default. */
    c->engine.max_step_tokens = 512;
    c->threads = 0;
    flags[n++] = (flag_t){"model", 'm', FLAG_STRING, &c->model, "GGUF model file (default "
                          NODE_CLI_DEFAULT_MODEL ")", "FILE", 0, 0, 0, 0};
    flags[n++] = (flag_t){"router", 0, FLAG_STRING, &c->router, "the router's control "
                          "address (default 127.0.0.1:7100)", "HOST:PORT", 0, 0, 0, 0};
    flags[n++] = (flag_t){"node-id", 0, FLAG_STRING, &c->node_id, "this node's id, unique in "
                          "the cluster: [A-Za-z0-9._:-]{1,64} (default <role>-<pid>)", "ID",
                          0, 0, 0, 0};
    flags[n++] = (flag_t){"cluster-token", 0, FLAG_STRING, &c->token, "token to present to the "
                          "router (default: $DUET_CLUSTER_TOKEN or empty)", "TOKEN", 0, 0, 0, 0};
    flags[n++] = (flag_t){"ucx-host", 0, FLAG_STRING, &c->ucx_host, "address of the KV "
                          "connector (decode: its listeners; default 127.0.0.1)", "ADDR",
                          0, 0, 0, 0};
    flags[n++] = (flag_t){"threads", 't', FLAG_INT, &c->threads, "compute threads (0: all "
                          "cores)", "N", 0, 1024, 0, 0};
    flags[n++] = (flag_t){"kv-f32", 0, FLAG_BOOL, &c->kv_f32, "keep the KV cache in f32 "
                          "(default f16)", NULL, 0, 0, 0, 0};
    flags[n++] = (flag_t){"lease-ms", 0, FLAG_INT, &c->lease_ms, "KV transfer deadline: "
                          "granted blocks not filled in time are reclaimed (decode), sends "
                          "not completed in time are aborted (prefill)", "MS", 100, 3600000,
                          0, 0};
    flags[n++] = (flag_t){"drain-timeout", 0, FLAG_DOUBLE, &c->drain_timeout, "seconds a "
                          "drain waits for requests in flight before aborting them", "S",
                          0, 0, 0.0, 86400.0};
    n += engine_opts_flags(&c->engine, flags + n, NODE_CLI_MAX_FLAGS - n);
    return n;
}

static bool valid_id(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == ':' || *s == '-'))
            return false;
    return true;
}

bool node_cli_finish(node_cli_t *c, const char *cmd, const char *role)
{
    const char *colon = strrchr(c->router, ':');
    char *end;
    long port;
    char err[512] = "";
    duet_status_t s;

    if (colon == NULL || colon == c->router || (size_t)(colon - c->router) >= sizeof(c->host)) {
        fprintf(stderr, "%s: --router '%s': expected HOST:PORT\n", cmd, c->router);
        return false;
    }
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535) {
        fprintf(stderr, "%s: --router '%s': bad port\n", cmd, c->router);
        return false;
    }
    memcpy(c->host, c->router, (size_t)(colon - c->router));
    c->host[colon - c->router] = '\0';
    if (c->host[0] == '[' && c->host[strlen(c->host) - 1] == ']') {   /* [::1]:7100 */
        memmove(c->host, c->host + 1, strlen(c->host));
        c->host[strlen(c->host) - 1] = '\0';
    }
    c->port = (uint16_t)port;
    if (c->node_id == NULL) {
        snprintf(c->id_buf, sizeof(c->id_buf), "%s-%ld", role, (long)getpid());
        c->node_id = c->id_buf;
    }
    if (!valid_id(c->node_id)) {
        fprintf(stderr, "%s: --node-id '%s': 1-64 characters of [A-Za-z0-9._:-]\n", cmd,
                c->node_id);
        return false;
    }
    c->engine.threads = c->threads;
    c->engine.kv_f32 = c->kv_f32;
    s = gguf_open(c->model, &c->g, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "%s: %s\n", cmd, err[0] ? err : duet_status_str(s));
        return false;
    }
    s = model_config_load(c->g, &c->cfg, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "%s: %s: %s\n", cmd, c->model, err[0] ? err : duet_status_str(s));
        gguf_close(c->g);
        c->g = NULL;
        return false;
    }
    return true;
}

void node_cli_destroy(node_cli_t *c)
{
    gguf_close(c->g);
    c->g = NULL;
}
