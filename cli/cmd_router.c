/* duet router: the OpenAI-compatible front end and control-plane server. */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cli/cli.h"
#include "common/flags.h"
#include "common/log.h"
#include "router/router.h"
#include "router/tok.h"

typedef struct {
    struct event_base *base;
    router_t          *router;
    bool               stopping;
} router_cli_t;

/* First SIGINT/SIGTERM: answer what is in flight, give the bytes 300 ms to
 * leave, then stop. A second signal stops at once. */
static void router_signal_cb(evutil_socket_t sig, short what, void *arg)
{
    router_cli_t *c = arg;
    struct timeval flush = {0, 300 * 1000};

    log_info("signal %d: shutting down", (int)sig);
    if (c->stopping) {
        event_base_loopbreak(c->base);
        return;
    }
    c->stopping = true;
    router_shutdown(c->router);
    event_base_loopexit(c->base, &flush);
}

static int router_run(int argc, char **argv)
{
    router_config_t cfg;
    const char *model = NULL, *tokenizer = NULL, *chat_template = NULL, *env;
    int64_t http_port = 8000, ctl_port = 7100, max_inflight, max_queue, max_body,
            max_model_len = 4096;
    double hb;
    struct event_base *base = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    router_t *r = NULL;
    rtok_t *tok = NULL;
    duet_status_t s;
    router_cli_t cli = {0};
    int rc = 1;

    router_config_default(&cfg);
    max_inflight = cfg.max_inflight;
    max_queue = cfg.max_queue;
    max_body = (int64_t)cfg.max_body;
    hb = cfg.heartbeat_timeout;
    env = getenv("DUET_API_KEY");
    if (env != NULL && env[0])
        cfg.api_key = env;
    env = getenv("DUET_CLUSTER_TOKEN");
    if (env != NULL)
        cfg.cluster_token = env;
    env = getenv("DUET_ROUTER_TOKEN_TRACE");
    if (env != NULL && env[0])
        cfg.token_trace = env;
    {
        const flag_t flags[] = {
            {"model", 'm', FLAG_STRING, &model, "GGUF file whose tokenizer and chat template "
             "to use (never its weights)", "FILE", 0, 0, 0, 0},
            {"tokenizer", 0, FLAG_STRING, &tokenizer, "'byte' (one token per byte, ChatML; "
             "for protocol tests without a model) instead of --model", "NAME", 0, 0, 0, 0},
            {"chat-template", 0, FLAG_STRING, &chat_template, "force a chat template: "
             "chatml, llama3, llama2, mistral, phi3, gemma, smollm2 (default: from the "
             "model)", "NAME", 0, 0, 0, 0},
            {"served-model-name", 0, FLAG_STRING, &cfg.served_name, "model id in the API "
             "(default: from the model)", "NAME", 0, 0, 0, 0},
            {"max-model-len", 0, FLAG_INT, &max_model_len, "context length with "
             "--tokenizer byte", "N", 2, 1 << 24, 0, 0},
            {"host", 0, FLAG_STRING, &cfg.host, "bind address of the HTTP and control ports",
             "ADDR", 0, 0, 0, 0},
            {"port", 'p', FLAG_INT, &http_port, "HTTP port (0: any free port)", "PORT",
             0, 65535, 0, 0},
            {"ctl-port", 0, FLAG_INT, &ctl_port, "control-plane port for nodes (0: any)",
             "PORT", 0, 65535, 0, 0},
            {"api-key", 0, FLAG_STRING, &cfg.api_key, "require 'Authorization: Bearer KEY' "
             "(default: $DUET_API_KEY)", "KEY", 0, 0, 0, 0},
            {"cluster-token", 0, FLAG_STRING, &cfg.cluster_token, "token nodes must present "
             "in HELLO (default: $DUET_CLUSTER_TOKEN or empty)", "TOKEN", 0, 0, 0, 0},
            {"prefill-policy", 0, FLAG_STRING, &cfg.prefill_policy,
             "round-robin | least-loaded | prefix-aware", "P", 0, 0, 0, 0},
            {"decode-policy", 0, FLAG_STRING, &cfg.decode_policy,
             "round-robin | least-loaded", "P", 0, 0, 0, 0},
            {"max-inflight", 0, FLAG_INT, &max_inflight, "requests at the nodes at once",
             "N", 1, 1 << 20, 0, 0},
            {"max-queue", 0, FLAG_INT, &max_queue, "requests waiting for admission; more "
             "get 429", "N", 0, 1 << 20, 0, 0},
            {"max-body-bytes", 0, FLAG_INT, &max_body, "largest request body (413 above)",
             "N", 1024, 1 << 30, 0, 0},
            {"heartbeat-timeout", 0, FLAG_DOUBLE, &hb, "seconds without a heartbeat before "
             "a node is dropped", "S", 0, 0, 0.5, 3600},
            {"token-trace", 0, FLAG_STRING, &cfg.token_trace, "write 'rid read_ns "
             "queued_ns' per streamed token to FILE (benchmarks; default "
             "$DUET_ROUTER_TOKEN_TRACE)", "FILE", 0, 0, 0, 0},
        };
        const flags_usage_t u = {"duet router", NULL,
            "Serve the OpenAI API and route requests to prefill/decode nodes."};

        s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
        if (s == DUET_DONE)
            return 0;
        if (s != DUET_OK)
            return 2;
    }
    cfg.http_port = (int)http_port;
    cfg.ctl_port = (int)ctl_port;
    cfg.max_inflight = (int)max_inflight;
    cfg.max_queue = (int)max_queue;
    cfg.max_body = (size_t)max_body;
    cfg.heartbeat_timeout = hb;
    if (tokenizer != NULL && strcmp(tokenizer, "byte") == 0 && model == NULL) {
        s = rtok_byte_create((int32_t)max_model_len, &tok);
    } else if (tokenizer != NULL) {
        fprintf(stderr, "duet router: unknown --tokenizer '%s' (only 'byte')\n", tokenizer);
        return 2;
    } else if (model != NULL) {
        char err[256] = "";

        s = rtok_gguf_create(model, chat_template, &tok, err, sizeof(err));
        if (s != DUET_OK) {
            fprintf(stderr, "duet router: %s\n", err[0] ? err : duet_status_str(s));
            return 1;
        }
    } else {
        fprintf(stderr, "duet router: give --model FILE or --tokenizer byte\n");
        return 2;
    }
    if (s != DUET_OK) {
        fprintf(stderr, "duet router: cannot load the tokenizer: %s\n", duet_status_str(s));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (base == NULL)
        goto err_tok;
    s = router_create(base, &cfg, tok, &r);
    tok = NULL;   /* owned by the router now, also on failure */
    if (s != DUET_OK) {
        fprintf(stderr, "duet router: cannot start: %s\n", duet_status_str(s));
        goto err_base;
    }
    cli.base = base;
    cli.router = r;
    sigint = evsignal_new(base, SIGINT, router_signal_cb, &cli);
    sigterm = evsignal_new(base, SIGTERM, router_signal_cb, &cli);
    if (sigint == NULL || sigterm == NULL || evsignal_add(sigint, NULL) != 0 ||
        evsignal_add(sigterm, NULL) != 0)
        goto err_router;
    printf("duet router: http %s:%d control %s:%d\n", cfg.host, router_http_port(r),
           cfg.host, router_ctl_port(r));
    fflush(stdout);
    event_base_dispatch(base);
    rc = 0;

err_router:
    if (sigint != NULL)
        event_free(sigint);
    if (sigterm != NULL)
        event_free(sigterm);
    router_destroy(r);
err_base:
    event_base_free(base);
err_tok:
    rtok_destroy(tok);
    return rc;
}

const cli_cmd_t cli_cmd_router = {"router", "OpenAI-compatible HTTP front end and node registry",
                                  router_run};
