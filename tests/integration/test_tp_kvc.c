/* A tensor-parallel decode engine fed by a prefill engine over the real KV
 * connector, the shape a decode node takes (docs/parallel.md, "Executor"):
 *
 *   prefill (a child process): engine, TP=1, prefill-only; its own kvc
 *     over the engine's slab; connects to both decode ranks, sends every
 *     layer of the prompt's KV and KV_END with the first token.
 *   decode (this process): engine with tp_size 2; the rank hooks create one
 *     decode kvc per rank in that rank's process, over a UCX-mapped slab
 *     that the rank's forward pass uses, and reply with its listener
 *     address; exec_call grants the blocks on every rank and polls
 *     kvc_recv_kv_cache on every rank; then engine_add_prefilled and decode.
 *
 * The decode ranks hold KV heads 0-1 and 2-3 of the model's 4, received
 * straight from the prefill slab, so the greedy tokens equal a colocated
 * TP=1 run only if the forward pass and the connector agree on every
 * rank's heads. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "engine/engine.h"
#include "engine/executor.h"
#include "kvconnector/kvc.h"
#include "tests/unit/engine_testutil.h"

#define PREFILL_NODE 0x9f11ull
#define DECODE_NODE  0xdec0ull
#define REQ          7
#define GEN          8
#define NP           40

static int32_t prompt[NP];

/* ---- decode rank hooks ------------------------------------------------------ */

typedef struct {
    uint64_t fp;
    int32_t  n_kv_heads_total;
} dec_arg_t;

enum { CALL_PROGRESS = 1, CALL_GRANT = 2, CALL_RECV = 3 };

typedef struct {
    int32_t op;
    int32_t n_tokens, n_blocks;
    int32_t blocks[32];
} dec_msg_t;

static duet_status_t dec_init(void *arg, int rank, int tp, const kv_layout_t *l, void **slab_p,
                              void **state_p, char *reply, size_t cap)
{
    const dec_arg_t *a = arg;
    kvc_params_t p = {.role = KVC_ROLE_DECODE, .node_id = DECODE_NODE, .tp_rank = rank,
                      .tp_size = tp, .n_kv_heads_total = a->n_kv_heads_total, .layout = *l,
                      .model_fp = a->fp, .listen_ip = "127.0.0.1"};
    kvc_t *k = NULL;

    CHECK(kvc_create(&p, &k));
    if (kvc_listen_address(k, reply, cap) != DUET_OK) {
        kvc_destroy(k);
        return DUET_ERR_INVALID;
    }
    *slab_p = kvc_slab(k);
    *state_p = k;
    return DUET_OK;
}

/* reply: "<status> <first token>" */
static duet_status_t dec_call(void *arg, void *state, int rank, const void *msg, size_t len,
                              char *reply, size_t cap)
{
    const dec_msg_t *m = msg;
    kvc_t *k = state;
    kvc_end_t end = {0};
    duet_status_t s = DUET_OK;

    if (len != sizeof(*m))
        return DUET_ERR_INVALID;
    kvc_progress(k);
    if (m->op == CALL_GRANT) {
        s = kvc_grant(k, PREFILL_NODE, REQ, m->n_tokens, m->blocks, m->n_blocks, 10000);
    } else if (m->op == CALL_RECV) {
        s = kvc_recv_kv_cache(k, REQ, &end);
        snprintf(reply, cap, "%d %d", (int)s, end.first_token);
        return DUET_OK;
    }
    snprintf(reply, cap, "%d", (int)s);
    return DUET_OK;
}

static void dec_step(void *arg, void *state, int rank)
{
    kvc_progress(state);
}

static void dec_fini(void *arg, void *state, int rank)
{
    kvc_destroy(state);
}

/* ---- the prefill child ------------------------------------------------------ */

typedef struct {
    int32_t first, blocks[32], n_blocks, n_tokens;
    int     done;
} pre_t;

static void on_prefilled(void *arg, uint64_t id, int32_t first, const int32_t *blocks,
                         int32_t n_blocks, int32_t n_tokens)
{
    pre_t *p = arg;

    p->first = first;
    p->n_blocks = n_blocks;
    p->n_tokens = n_tokens;
    memcpy(p->blocks, blocks, sizeof(int32_t) * (size_t)n_blocks);
    p->done = 1;
}

static int rline(int fd, char *buf, size_t cap)
{
    size_t n = 0;

    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, 1);

        if (r <= 0)
            return -1;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return 0;
}

static void prefill_child(const tmodel_t *m, int afd, int sfd)
{
    engine_req_params_t rp;
    engine_opts_t o;
    const engine_out_t *outs;
    pre_t pre = {0};
    engine_t *e = NULL;
    kvc_t *k = NULL;
    char line[256];
    uint64_t node;
    int n;

    engine_opts_default(&o);
    o.threads = 1;
    o.kv_blocks = 16;
    o.prefill_only = true;
    o.on_prefilled = on_prefilled;
    o.cb_arg = &pre;
    if (engine_create(m->g, &m->cfg, &o, &e, NULL, 0) != DUET_OK)
        _exit(2);
    {
        kvc_params_t p = {.role = KVC_ROLE_PREFILL, .node_id = PREFILL_NODE, .tp_rank = 0,
                          .tp_size = 1, .n_kv_heads_total = m->cfg.n_kv_heads,
                          .layout = *engine_kv_layout(e), .model_fp = m->cfg.fingerprint,
                          .slab = engine_kv_slab(e)};

        if (kvc_create(&p, &k) != DUET_OK)
            _exit(3);
    }
    for (int r = 0; r < 2; r++)
        if (rline(afd, line, sizeof(line)) != 0 || kvc_connect(k, line, 10000, &node) != DUET_OK ||
            node != DECODE_NODE)
            _exit(4);
    if (write(sfd, "connected\n", 10) != 10)
        _exit(5);
    engine_req_params_default(&rp);
    rp.max_tokens = GEN;
    rp.sampling.ignore_eos = true;
    if (engine_add(e, REQ, prompt, NP, &rp, NULL, 0) != DUET_OK)
        _exit(6);
    while (!pre.done)
        if (engine_step(e, &outs, &n) != DUET_OK)
            _exit(7);
    for (int32_t l = 0; l < m->cfg.n_layers; l++)
        if (kvc_send_kv_cache(k, REQ, l, 0, pre.n_tokens, pre.blocks, pre.n_blocks) != DUET_OK)
            _exit(8);
    if (kvc_end(k, REQ, pre.first, NULL, 0) != DUET_OK)
        _exit(9);
    for (uint64_t t0 = clock_now_ns(); kvc_send_status(k, REQ) == DUET_INPROGRESS;) {
        kvc_progress(k);
        if (clock_now_ns() - t0 > 20000000000ull)
            _exit(10);
    }
    snprintf(line, sizeof(line), "sent %d\n", pre.first);
    if (write(sfd, line, strlen(line)) < 0)
        _exit(11);
    for (uint64_t t0 = clock_now_ns(); clock_now_ns() - t0 < 300000000ull;)
        kvc_progress(k);   /* let the decode side read the last messages */
    kvc_destroy(k);
    engine_release(e, REQ);
    _exit(0);
}

/* ---- the test ---------------------------------------------------------------- */

/* Poll a line from fd while progressing every decode rank. */
static int wait_line(exec_t *ex, int fd, char *buf, size_t cap, double limit_s)
{
    dec_msg_t msg = {.op = CALL_PROGRESS};
    const char *replies;
    double t0 = clock_now_s();

    while (clock_now_s() - t0 < limit_s) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};

        if (poll(&pfd, 1, 1) == 1)
            return rline(fd, buf, cap);
        if (exec_call(ex, &msg, sizeof(msg), &replies) != DUET_OK)
            return -1;
    }
    return -1;
}

int main(void)
{
    dec_arg_t da;
    engine_opts_t o;
    engine_req_params_t rp;
    tmodel_t m;
    engine_t *e = NULL, *ref = NULL;
    exec_t *ex;
    touts_t got = {0}, want = {0};
    const int32_t *blocks;
    const char *replies;
    dec_msg_t msg;
    int32_t n_blocks, first = -1;
    int afd[2], sfd[2], st, done[2] = {0, 0}, good = 1;
    char line[256];
    pid_t pre;

    for (int i = 0; i < NP; i++)
        prompt[i] = (int32_t)((i * 131u + 7u) % 500u);
    if (tmodel_open(&m, "tp_kvc", "--layers 3 --hidden 256 --heads 8 --kv-heads 4 --ffn 512 "
                                  "--vocab 512 --ctx 256 --type q4_1 --seed 31") != 0) {
        ok(0, "mkmodel");
        return tap_done();
    }
    log_set_level(getenv("TP_KVC_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
    if (pipe(afd) != 0 || pipe(sfd) != 0)
        return 1;
    pre = fork();
    if (pre == 0) {
        close(afd[1]);
        close(sfd[0]);
        prefill_child(&m, afd[0], sfd[1]);
    }
    close(afd[0]);
    close(sfd[1]);

    da = (dec_arg_t){.fp = m.cfg.fingerprint, .n_kv_heads_total = m.cfg.n_kv_heads};
    engine_opts_default(&o);
    o.threads = 1;
    o.kv_blocks = 16;
    o.tp_size = 2;
    o.rank_hooks = (exec_hooks_t){dec_init, dec_call, dec_step, dec_fini, &da};
    e = tengine(&m, &o);
    if (e == NULL) {
        ok(0, "decode engine with kvc rank hooks");
        kill(pre, SIGKILL);
        waitpid(pre, &st, 0);
        return tap_done();
    }
    ex = engine_executor(e);
    ok(strncmp(exec_rank_reply(ex, 0), "127.0.0.1:", 10) == 0 &&
       strncmp(exec_rank_reply(ex, 1), "127.0.0.1:", 10) == 0 &&
       strcmp(exec_rank_reply(ex, 0), exec_rank_reply(ex, 1)) != 0,
       "each rank listens on its own address (%s, %s)", exec_rank_reply(ex, 0),
       exec_rank_reply(ex, 1));
    ok(engine_kv_layout(e)->n_kv_heads == 2, "each decode rank holds 2 of the 4 KV heads");
    snprintf(line, sizeof(line), "%s\n%s\n", exec_rank_reply(ex, 0), exec_rank_reply(ex, 1));
    if (write(afd[1], line, strlen(line)) < 0)
        good = 0;
    ok(good && wait_line(ex, sfd[0], line, sizeof(line), 20) == 0 &&
       strcmp(line, "connected") == 0, "the prefill node connected to both decode ranks");

    engine_req_params_default(&rp);
    rp.max_tokens = GEN;
    rp.sampling.ignore_eos = true;
    good = engine_reserve(e, REQ, prompt, NP, &rp, &blocks, &n_blocks, NULL, 0) == DUET_OK;
    ok(good && n_blocks <= 32, "decode reserves %d blocks", good ? n_blocks : -1);
    msg = (dec_msg_t){.op = CALL_GRANT, .n_tokens = NP, .n_blocks = n_blocks};
    memcpy(msg.blocks, blocks, sizeof(int32_t) * (size_t)n_blocks);
    good = exec_call(ex, &msg, sizeof(msg), &replies) == DUET_OK &&
           atoi(replies) == DUET_OK && atoi(replies + EXEC_REPLY_MAX) == DUET_OK;
    ok(good, "every rank granted the blocks");

    msg.op = CALL_RECV;
    for (double t0 = clock_now_s(); (!done[0] || !done[1]) && clock_now_s() - t0 < 20;) {
        if (exec_call(ex, &msg, sizeof(msg), &replies) != DUET_OK)
            break;
        for (int r = 0; r < 2; r++) {
            int s, tok;

            if (done[r] || sscanf(replies + (size_t)r * EXEC_REPLY_MAX, "%d %d", &s, &tok) != 2)
                continue;
            if (s == DUET_INPROGRESS)
                continue;
            done[r] = s == DUET_OK ? 1 : -1;
            if (r == 0)
                first = tok;
        }
    }
    ok(done[0] == 1 && done[1] == 1, "every decode rank received every layer and KV_END");
    ok(wait_line(ex, sfd[0], line, sizeof(line), 10) == 0 && atoi(line + 5) == first,
       "prefill reports the first token it sent (%s)", line);
    ok(engine_add_prefilled(e, REQ, first, NULL) == DUET_OK && trun(e, &got, GEN + 1, 100) >= 0,
       "decode generates over the received KV");
    engine_destroy(e);
    waitpid(pre, &st, 0);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "prefill child exited 0 (status 0x%x)", st);

    /* colocated TP=1 reference */
    engine_opts_default(&o);
    o.threads = 1;
    o.kv_blocks = 16;
    ref = tengine(&m, &o);
    good = ref != NULL && engine_add(ref, REQ, prompt, NP, &rp, NULL, 0) == DUET_OK &&
           trun(ref, &want, GEN + 1, 100) >= 0;
    engine_destroy(ref);
    /* decode's outputs start after the first token, which came from prefill */
    good = good && want.n[REQ - 1] == GEN && got.n[REQ - 1] == GEN - 1 &&
           want.toks[REQ - 1][0] == first &&
           memcmp(want.toks[REQ - 1] + 1, got.toks[REQ - 1], sizeof(int32_t) * (GEN - 1)) == 0;
    ok(good, "disaggregated TP=1 prefill -> TP=2 decode gives the colocated TP=1 tokens");
    touts_free(&got);
    touts_free(&want);
    tmodel_close(&m);
    return tap_done();
}
