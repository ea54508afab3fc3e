/* duet serve: an embedded local cluster on loopback: a router plus P prefill
 * and D decode nodes (or one colocated node), started and supervised as
 * child processes of this one (cli/supervisor.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/cli.h"
#include "cli/supervisor.h"
#include "common/flags.h"
#include "common/log.h"

#define SERVE_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct {
    const char *http_host;     /* where to ask /v1/cluster */
    int         http_port;
    int         want_prefill, want_decode, want_colocated;
    const char *bind_host;
} serve_ready_t;

/* A blocking HTTP/1.0 GET on loopback with a short deadline; the body (NUL-
 * terminated) in buf. Returns the status code, or -1. */
static int serve_http_get(const char *host, int port, const char *path, char *buf, size_t len)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char portstr[8], req[256];
    size_t got = 0;
    int fd = -1, status = -1;
    char *body;

    snprintf(portstr, sizeof(portstr), "%d", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0 || ai == NULL)
        return -1;
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
        goto out;
    snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req))
        goto out;
    while (got + 1 < len) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        if (poll(&p, 1, 500) <= 0)
            goto out;
        n = read(fd, buf + got, len - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1)
        status = -1;
    body = strstr(buf, "\r\n\r\n");
    if (body != NULL)
        memmove(buf, body + 4, strlen(body + 4) + 1);
out:
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return status;
}

/* Ready once every node has registered (which also makes /health 200). */
static bool serve_ready_cb(void *arg)
{
    serve_ready_t *r = arg;
    char buf[65536];
    json_t *root, *counts;
    bool ok = false;

    if (serve_http_get(r->http_host, r->http_port, "/v1/cluster", buf, sizeof(buf)) != 200)
        return false;
    root = json_loads(buf, 0, NULL);
    counts = root != NULL ? json_object_get(root, "counts") : NULL;
    if (counts != NULL)
        ok = json_integer_value(json_object_get(counts, "prefill")) == r->want_prefill &&
             json_integer_value(json_object_get(counts, "decode")) == r->want_decode &&
             json_integer_value(json_object_get(counts, "colocated")) == r->want_colocated;
    json_decref(root);
    if (ok && serve_http_get(r->http_host, r->http_port, "/health", buf, sizeof(buf)) != 200)
        ok = false;
    if (ok) {
        printf("duet serve: ready on http://%s:%d/v1 (%d prefill, %d decode, %d colocated)\n",
               r->bind_host, r->http_port, r->want_prefill, r->want_decode,
               r->want_colocated);
        fflush(stdout);
    }
    return ok;
}

/* argv builder: strings are copied by sup_start. */
typedef struct {
    char *argv[SUP_MAX_ARGS];
    char  store[SUP_MAX_ARGS][4200];   /* a path may be PATH_MAX long */
    int   n;
} serve_args_t;

static void arg_add(serve_args_t *a, const char *fmt, const char *s)
{
    if (a->n >= SUP_MAX_ARGS - 1)
        return;
    (void)fmt;
    snprintf(a->store[a->n], sizeof(a->store[a->n]), "%.4100s", s);
    a->argv[a->n] = a->store[a->n];
    a->n++;
    a->argv[a->n] = NULL;
}

static void arg_int(serve_args_t *a, const char *flag, int64_t v)
{
    char s[32];

    snprintf(s, sizeof(s), "%lld", (long long)v);
    arg_add(a, "%s", flag);
    arg_add(a, "%s", s);
}

static void arg_str(serve_args_t *a, const char *flag, const char *v)
{
    arg_add(a, "%s", flag);
    arg_add(a, "%s", v);
}

static int serve_run(int argc, char **argv)
{
    const char *model = SERVE_DEFAULT_MODEL, *host = "127.0.0.1", *log_level = NULL,
               *api_key = NULL, *token = getenv("DUET_CLUSTER_TOKEN"), *policy_p = NULL,
               *policy_d = NULL;
    int64_t n_prefill = 1, n_decode = 1, decode_tp = 1, port = 8000, ctl_port = 7100,
            threads = 0, kv_mem = 256, max_running = 64, max_step = 512, timeout_s = -1;
    double hb_timeout = 30.0;
    bool colocated = false, restart = false;
    const flag_t flags[] = {
        {"model", 'm', FLAG_STRING, &model, "GGUF model (default " SERVE_DEFAULT_MODEL ")",
         "FILE", 0, 0, 0, 0},
        {"prefill", 0, FLAG_INT, &n_prefill, "prefill nodes", "P", 1, 32, 0, 0},
        {"decode", 0, FLAG_INT, &n_decode, "decode nodes", "D", 1, 32, 0, 0},
        {"decode-tp", 0, FLAG_INT, &decode_tp, "tensor-parallel ranks per decode node", "T",
         1, 64, 0, 0},
        {"colocated", 0, FLAG_BOOL, &colocated, "one colocated node (prefill and decode in "
         "one engine) instead of prefill and decode nodes", NULL, 0, 0, 0, 0},
        {"restart", 0, FLAG_BOOL, &restart, "restart crashed nodes (with backoff)", NULL,
         0, 0, 0, 0},
        {"host", 0, FLAG_STRING, &host, "bind address of the HTTP and control ports "
         "(default 127.0.0.1)", "ADDR", 0, 0, 0, 0},
        {"port", 'p', FLAG_INT, &port, "HTTP port (default 8000)", "PORT", 1, 65535, 0, 0},
        {"ctl-port", 0, FLAG_INT, &ctl_port, "control-plane port (default 7100)", "PORT",
         1, 65535, 0, 0},
        {"api-key", 0, FLAG_STRING, &api_key, "require this API key (default: "
         "$DUET_API_KEY)", "KEY", 0, 0, 0, 0},
        {"cluster-token", 0, FLAG_STRING, &token, "token the nodes present to the router "
         "(default: $DUET_CLUSTER_TOKEN, else a random one)", "TOKEN", 0, 0, 0, 0},
        {"prefill-policy", 0, FLAG_STRING, &policy_p, "router prefill policy", "P",
         0, 0, 0, 0},
        {"decode-policy", 0, FLAG_STRING, &policy_d, "router decode policy", "P", 0, 0, 0, 0},
        {"threads", 't', FLAG_INT, &threads, "compute threads per node (0: the cores "
         "divided among the nodes)", "N", 0, 1024, 0, 0},
        {"kv-mem", 0, FLAG_INT, &kv_mem, "KV cache MiB per node", "MIB", 1, 1 << 20, 0, 0},
        {"max-running", 0, FLAG_INT, &max_running, "running batch per node", "N", 1, 4096,
         0, 0},
        {"max-step-tokens", 0, FLAG_INT, &max_step, "token budget of one engine step per "
         "node (default 512: shorter steps keep heartbeats and decodes flowing)", "N", 1,
         1 << 20, 0, 0},
        {"heartbeat-timeout", 0, FLAG_DOUBLE, &hb_timeout, "seconds without a heartbeat "
         "before the router drops a node (default 30: a node sends none during a step; a "
         "dead node is noticed at once by its closed connection)", "S", 0, 0, 0.5, 3600},
        {"timeout", 0, FLAG_INT, &timeout_s, "(testing) stop after S seconds", "S", -1,
         1 << 30, 0, 0},
    };
    const flags_usage_t u = {"duet serve", NULL,
        "Start and supervise a local cluster: router + prefill + decode nodes (or one "
        "colocated node) on loopback."};
    char exe[4096], ctl_addr[300], tokbuf[33], level[16];
    const char *node_host;
    serve_ready_t ready;
    supervisor_t *sup = NULL;
    duet_status_t s;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n_engines, per_node, rc = 1;
    ssize_t len;

    s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (access(model, R_OK) != 0) {
        fprintf(stderr, "duet serve: cannot read the model %s: %s\n", model, strerror(errno));
        return 2;
    }
    if (port == ctl_port) {
        fprintf(stderr, "duet serve: --port and --ctl-port must differ\n");
        return 2;
    }
    len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (len <= 0) {
        fprintf(stderr, "duet serve: cannot find this executable: %s\n", strerror(errno));
        return 1;
    }
    exe[len] = '\0';
    if (token == NULL || token[0] == '\0') {
        uint8_t rnd[16];

        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            fprintf(stderr, "duet serve: getrandom: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < 16; i++)
            snprintf(tokbuf + 2 * i, 3, "%02x", rnd[i]);
        token = tokbuf;
    }
    /* Children read the token from the environment, not argv (ps shows argv). */
    setenv("DUET_CLUSTER_TOKEN", token, 1);
    if (api_key != NULL)
        setenv("DUET_API_KEY", api_key, 1);
    /* Every node runs on this host: the connector's messages go over TCP (the
     * listener needs it) and its KV writes into the decode slab, mapped
     * through shared memory (docs/kvconnector.md). */
    setenv("UCX_TLS", getenv("UCX_TLS") != NULL ? getenv("UCX_TLS") : "sm,self,tcp", 1);
    snprintf(level, sizeof(level), "%s",
             log_get_level() <= LOG_LEVEL_DEBUG ? "debug" :
             log_get_level() == LOG_LEVEL_INFO ? "info" :
             log_get_level() == LOG_LEVEL_WARN ? "warn" :
             log_get_level() == LOG_LEVEL_ERROR ? "error" : "off");
    log_level = level;
    node_host = strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 ? "127.0.0.1" : host;
    snprintf(ctl_addr, sizeof(ctl_addr), strchr(node_host, ':') ? "[%s]:%lld" : "%s:%lld",
             node_host, (long long)ctl_port);
    n_engines = colocated ? 1 : (int)(n_prefill + n_decode * decode_tp);
    per_node = threads > 0 ? (int)threads
                           : (int)(ncpu / n_engines > 0 ? ncpu / n_engines : 1);
    s = sup_create(restart, 10000, &sup);
    if (s != DUET_OK) {
        fprintf(stderr, "duet serve: cannot create the supervisor: %s\n", duet_status_str(s));
        return 1;
    }
    /* Nodes first and the router last: stopping goes in reverse order, so the
     * router stops first and the nodes, seeing it gone, drop what is left and
     * exit at once. Nodes started before the router retry until it listens. */
    for (int role = 0; role < 2; role++) {
        int count = colocated ? (role == 0 ? 1 : 0) : (int)(role == 0 ? n_decode : n_prefill);

        for (int i = 0; i < count; i++) {
            sup_child_spec_t spec = {0};
            static serve_args_t a;
            char name[64];

            a.n = 0;
            snprintf(name, sizeof(name), "%s-%d",
                     colocated ? "colocated" : role == 0 ? "decode" : "prefill", i);
            arg_add(&a, "%s", exe);
            arg_add(&a, "%s", role == 0 ? "decode" : "prefill");
            if (colocated)
                arg_add(&a, "%s", "--colocated");
            if (role == 0 && !colocated)
                arg_int(&a, "--tp", decode_tp);
            arg_str(&a, "--model", model);
            arg_str(&a, "--router", ctl_addr);
            arg_str(&a, "--node-id", name);
            arg_int(&a, "--threads", per_node);
            arg_int(&a, "--kv-mem", kv_mem);
            arg_int(&a, "--max-running", max_running);
            arg_int(&a, "--max-step-tokens", max_step);
            arg_str(&a, "--log-level", log_level);
            spec.name = name;
            memcpy(spec.argv, a.argv, sizeof(spec.argv));
            spec.critical = false;
            s = sup_start(sup, &spec);
            if (s != DUET_OK) {
                fprintf(stderr, "duet serve: cannot start %s: %s\n", name, duet_status_str(s));
                goto out;
            }
        }
    }
    {
        sup_child_spec_t spec = {.name = "router", .critical = true};
        static serve_args_t a;

        a.n = 0;
        arg_add(&a, "%s", exe);
        arg_add(&a, "%s", "router");
        arg_str(&a, "--model", model);
        arg_str(&a, "--host", host);
        arg_int(&a, "--port", port);
        arg_int(&a, "--ctl-port", ctl_port);
        if (policy_p != NULL)
            arg_str(&a, "--prefill-policy", policy_p);
        if (policy_d != NULL)
            arg_str(&a, "--decode-policy", policy_d);
        {
            char hb[32];

            snprintf(hb, sizeof(hb), "%g", hb_timeout);
            arg_str(&a, "--heartbeat-timeout", hb);
        }
        arg_str(&a, "--log-level", log_level);
        memcpy(spec.argv, a.argv, sizeof(spec.argv));
        s = sup_start(sup, &spec);
        if (s != DUET_OK) {
            fprintf(stderr, "duet serve: cannot start the router: %s\n", duet_status_str(s));
            goto out;
        }
    }
    ready = (serve_ready_t){
        .http_host = node_host, .http_port = (int)port, .bind_host = host,
        .want_prefill = colocated ? 0 : (int)n_prefill,
        .want_decode = colocated ? 0 : (int)n_decode, .want_colocated = colocated ? 1 : 0,
    };
    log_info("starting %s, %d threads per node, model %s",
             colocated ? "1 colocated node" : "prefill and decode nodes", per_node, model);
    s = sup_run(sup, timeout_s < 0 ? -1 : (int)(timeout_s * 1000), serve_ready_cb, &ready);
    rc = s == DUET_OK ? 0 : 1;
    if (s != DUET_OK)
        fprintf(stderr, "duet serve: the router stopped; everything was shut down\n");
out:
    sup_destroy(sup);
    return rc;
}

const cli_cmd_t cli_cmd_serve = {"serve", "run a local cluster: router + prefill + decode "
                                 "(or colocated) nodes", serve_run};
