/* Decode and colocated node: the control-plane driver around one engine. */
#define DUET_LOG_COMPONENT "decode"

#include "decode/decode_node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/ctl_client.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/node_life.h"
#include "engine/executor.h"
#include "kvconnector/kvc.h"

#define DEC_MAX_TP        CTL_MAX_UCX
#define DEC_TICK_US       2000   /* KV connector progress period with transfers on */
#define DEC_IDLE_STEP_US  2000   /* the next try after a step that ran nothing */
#define DEC_IDLE_TICK_US  20000  /* ... and without (accepting connections, keepalive) */

typedef enum {
    DR_WAIT_GRANT = 0,   /* blocks reserved; the prefill node is not connected yet */
    DR_GRANTED,          /* blocks on loan to the KV connector */
    DR_ABORTING,         /* aborted while on loan: wait for the connector */
    DR_RUNNING,          /* in the engine's batch (or queue) */
} dreq_state_t;

typedef struct dreq {
    TAILQ_ENTRY(dreq) link;
    uint64_t     rid;
    dreq_state_t state;
    uint64_t     prefill;        /* the prefill node's KV connector id */
    char         prefill_name[65];
    int32_t      n_prompt;
    int32_t     *blocks;         /* copy of the reservation (grant retries) */
    int32_t      nblocks;
    double       wait_deadline;  /* DR_WAIT_GRANT: give up then */
    bool         rank_granted[DEC_MAX_TP];
    bool         rank_done[DEC_MAX_TP];
    duet_status_t kv_status;
    char         fail_msg[160];  /* DR_ABORTING: report ERROR with this when done */
    kvc_end_t    end;
    uint32_t     n_gen;          /* tokens generated, the first included */
    bool         notify;         /* report the outcome to the router */
} dreq_t;

TAILQ_HEAD(dreq_list, dreq);

typedef struct {
    const decode_node_opts_t *o;
    struct event_base *base;
    engine_t          *engine;
    exec_t            *ex;              /* the engine's executor: one kvc per rank */
    int                n_ranks;         /* 0: colocated, no KV connector */
    struct dec_rank_arg *rank_arg;
    uint8_t           *msg;             /* rank-call scratch */
    size_t             msg_cap;
    ctl_client_t      *ctl;
    struct dreq_list   reqs;
    int                n_reqs;
    uint64_t           queued_tokens;   /* colocated: prompts not started */
    struct event      *step_ev, *tick_ev;
    node_life_t        life;
    bool               broken;
    int                exit_code;
    const char        *fail_why;        /* why exit_code is not 0 */
    uint64_t           seed_ctr;
} dnode_t;

/* ---- KV connector ranks -------------------------------------------------------
 *
 * Every TP rank owns a decode kvc_t in its own process (the executor's rank
 * hooks): its slab is the rank's KV shard, used by the rank's forward pass,
 * and it listens on its own address. The driver reaches the ranks with
 * exec_call; with one rank that is a plain function call. */

typedef struct dec_rank_arg {
    uint64_t node_id, model_fp;
    int32_t  n_kv_heads_total;
    char     ucx_host[64];
} dec_rank_arg_t;

enum { DRC_PROGRESS = 1, DRC_GRANT, DRC_RECV, DRC_ABORT };

typedef struct {
    int32_t  op;
    uint32_t lease_ms;
    uint64_t rid, prefill;
    int32_t  n_tokens, n_blocks;
    int32_t  only_rank;      /* GRANT: -1 every rank, else just this one */
    int32_t  pad;
    int32_t  blocks[];       /* (n_blocks), GRANT only */
} drc_msg_t;

typedef struct {
    int32_t  status;         /* PROGRESS: events handled */
    int32_t  first_token;    /* RECV OK */
    uint32_t state_len;
    uint8_t  state[EXEC_REPLY_MAX - 12];
} drc_reply_t;

static duet_status_t drc_init(void *arg, int rank, int tp, const kv_layout_t *l, void **slab_p,
                              void **state_p, char *reply, size_t cap)
{
    const dec_rank_arg_t *a = arg;
    kvc_params_t p = {.role = KVC_ROLE_DECODE, .node_id = a->node_id, .tp_rank = rank,
                      .tp_size = tp, .n_kv_heads_total = a->n_kv_heads_total, .layout = *l,
                      .model_fp = a->model_fp, .listen_ip = a->ucx_host};
    kvc_t *k = NULL;
    duet_status_t s = kvc_create(&p, &k);

    if (s != DUET_OK) {
        log_error("rank %d: cannot create the KV connector: %s", rank, duet_status_str(s));
        return s;
    }
    s = kvc_listen_address(k, reply, cap);
    if (s != DUET_OK) {
        kvc_destroy(k);
        return s;
    }
    *slab_p = kvc_slab(k);
    *state_p = k;
    return DUET_OK;
}

static duet_status_t drc_call(void *arg, void *state, int rank, const void *msg, size_t len,
                              char *reply, size_t cap)
{
    kvc_t *k = state;
    drc_msg_t m;
    drc_reply_t rep;
    kvc_end_t end;

    (void)arg;
    (void)rank;
    if (len < sizeof(m) || cap < sizeof(rep))
        return DUET_ERR_INVALID;
    memcpy(&m, msg, sizeof(m));
    memset(&rep, 0, sizeof(rep));
    rep.status = kvc_progress(k);
    switch (m.op) {
    case DRC_GRANT:
        if (len != sizeof(m) + sizeof(int32_t) * (size_t)m.n_blocks)
            return DUET_ERR_INVALID;
        if (m.only_rank >= 0 && m.only_rank != rank) {
            rep.status = DUET_INPROGRESS;   /* not asked */
            break;
        }
        rep.status = kvc_grant(k, m.prefill, m.rid, m.n_tokens,
                               (const int32_t *)((const uint8_t *)msg + sizeof(m)),
                               m.n_blocks, m.lease_ms);
        if (rep.status == DUET_ERR_BUSY)
            rep.status = DUET_OK;    /* granted by an earlier, partial call */
        break;
    case DRC_RECV:
        rep.status = kvc_recv_kv_cache(k, m.rid, &end);
        if (rep.status == DUET_OK) {
            rep.first_token = end.first_token;
            if (end.state_len <= sizeof(rep.state)) {
                rep.state_len = end.state_len;
                memcpy(rep.state, end.state, end.state_len);
            }
        }
        break;
    case DRC_ABORT:
        rep.status = kvc_abort(k, m.rid);
        break;
    default:
        break;
    }
    memcpy(reply, &rep, sizeof(rep));
    return DUET_OK;
}

static void drc_step(void *arg, void *state, int rank)
{
    (void)arg;
    (void)rank;
    kvc_progress(state);
}

static void drc_fini(void *arg, void *state, int rank)
{
    (void)arg;
    (void)rank;
    kvc_destroy(state);
}

static void dn_broken(dnode_t *n);

/* Run op on every rank; *reps_p gets n_ranks replies. NULL on failure (a
 * rank died: the node is broken). */
static const drc_reply_t *dn_call_rank(dnode_t *n, int op, const dreq_t *r, int only_rank,
                                       drc_reply_t *reps)
{
    size_t len = sizeof(drc_msg_t) + (op == DRC_GRANT ? sizeof(int32_t) * (size_t)r->nblocks : 0);
    drc_msg_t m = {.op = op, .only_rank = only_rank};
    const char *replies;

    if (n->broken)
        return NULL;
    if (len > n->msg_cap) {
        uint8_t *p = realloc(n->msg, len);

        if (p == NULL)
            return NULL;
        n->msg = p;
        n->msg_cap = len;
    }
    if (r != NULL) {
        m.rid = r->rid;
        m.prefill = r->prefill;
        m.n_tokens = r->n_prompt;
        m.n_blocks = r->nblocks;
        m.lease_ms = n->o->lease_ms;
    }
    memcpy(n->msg, &m, sizeof(m));
    if (op == DRC_GRANT)
        memcpy(n->msg + sizeof(m), r->blocks, sizeof(int32_t) * (size_t)r->nblocks);
    if (exec_call(n->ex, n->msg, len, &replies) != DUET_OK) {
        dn_broken(n);
        return NULL;
    }
    for (int i = 0; i < n->n_ranks; i++)
        memcpy(&reps[i], replies + (size_t)i * EXEC_REPLY_MAX, sizeof(reps[i]));
    return reps;
}

static const drc_reply_t *dn_call(dnode_t *n, int op, const dreq_t *r, drc_reply_t *reps)
{
    return dn_call_rank(n, op, r, -1, reps);
}

/* ---- requests ----------------------------------------------------------- */

static dreq_t *dn_find(dnode_t *n, uint64_t rid)
{
    dreq_t *r;

    TAILQ_FOREACH(r, &n->reqs, link)
        if (r->rid == rid)
            return r;
    return NULL;
}

static void dn_remove(dnode_t *n, dreq_t *r)
{
    if (n->o->colocated && r->n_gen == 0)
        n->queued_tokens -= (uint64_t)r->n_prompt;
    TAILQ_REMOVE(&n->reqs, r, link);
    n->n_reqs--;
    free(r->blocks);
    free(r);
    node_life_check_drained(&n->life);
}

/* The next step after delay_us. A zero timer, not event_active: the loop
 * polls the sockets between two steps. A step due now replaces one
 * pending later (new work after a step that ran nothing). */
static void dn_schedule_step_in(dnode_t *n, long delay_us)
{
    struct timeval tv = {0, delay_us};

    if (delay_us == 0 || !evtimer_pending(n->step_ev, NULL))
        evtimer_add(n->step_ev, &tv);
}

static void dn_schedule_step(dnode_t *n)
{
    dn_schedule_step_in(n, 0);
}

static void dn_send_finish(dnode_t *n, uint64_t rid, const char *reason, uint32_t ntok,
                           const char *msg)
{
    frame_writer_t *w = ctl_client_writer(n->ctl);

    frame_begin(w, FRAME_FINISH, 3 + (msg != NULL));
    frame_put_u64(w, "rid", rid);
    frame_put_str(w, "reason", reason);
    frame_put_u64(w, "completion_tokens", ntok);
    if (msg != NULL)
        frame_put_str(w, "msg", msg);
    ctl_client_send(n->ctl);
}

/* Drop a request at whatever stage; the blocks come back at once or, when on
 * loan to the connector, once it lets go (dn_poll_kv). */
static void dn_abort(dnode_t *n, dreq_t *r, bool notify, const char *why)
{
    switch (r->state) {
    case DR_WAIT_GRANT:
    case DR_RUNNING: {
        bool lent = false;

        for (int i = 0; i < n->n_ranks && r->state == DR_WAIT_GRANT; i++)
            lent |= r->rank_granted[i];
        if (!lent) {
            engine_abort(n->engine, r->rid);
            if (notify)
                dn_send_finish(n, r->rid, "abort", r->n_gen, why);
            dn_remove(n, r);
            break;
        }
        /* some ranks lent the blocks */
        __attribute__((fallthrough));
    }
    case DR_GRANTED: {
        drc_reply_t reps[DEC_MAX_TP];

        r->state = DR_ABORTING;
        r->notify = notify;
        dn_call(n, DRC_ABORT, r, reps);
        break;
    }
    case DR_ABORTING:
        break;
    }
}

static void dn_abort_all(dnode_t *n, bool notify, const char *why)
{
    dreq_t *r, *next;

    for (r = TAILQ_FIRST(&n->reqs); r != NULL && !n->broken; r = next) {
        next = TAILQ_NEXT(r, link);
        dn_abort(n, r, notify, why);
    }
}

static void dn_params(dnode_t *n, const ctl_sampling_t *s, engine_req_params_t *p)
{
    engine_req_params_from_ctl(s, (uint64_t)clock_now_ns() ^ (++n->seed_ctr << 32), p);
}

/* ---- KV grants and completions ------------------------------------------- */

/* Grant on every rank; DUET_ERR_NOT_FOUND while the prefill node's ranks are
 * not all connected. */
static duet_status_t dn_try_grant(dnode_t *n, dreq_t *r)
{
    drc_reply_t reps[DEC_MAX_TP];
    duet_status_t worst = DUET_OK;
    int last = n->n_ranks - 1;

    /* A prefill node connects to the ranks in rank order, and a GRANT it
     * receives binds the request to every rank, so the last rank grants
     * first: once it can, the prefill node has endpoints to all of them. */
    if (last > 0 && !r->rank_granted[last]) {
        if (dn_call_rank(n, DRC_GRANT, r, last, reps) == NULL)
            return DUET_ERR_PEER;
        if (reps[last].status != DUET_OK)
            return reps[last].status;
        r->rank_granted[last] = true;
    }
    if (dn_call(n, DRC_GRANT, r, reps) == NULL)
        return DUET_ERR_PEER;
    for (int i = 0; i < n->n_ranks; i++) {
        if (reps[i].status == DUET_OK)
            r->rank_granted[i] = true;
        else if (worst == DUET_OK || worst == DUET_ERR_NOT_FOUND)
            worst = reps[i].status;
    }
    if (worst == DUET_OK)
        r->state = DR_GRANTED;
    return worst;
}

static void dn_fail(dnode_t *n, dreq_t *r, const char *msg)
{
    log_req(LOG_LEVEL_WARN, r->rid, "%s", msg);
    for (int i = 0; i < n->n_ranks && r->state == DR_WAIT_GRANT; i++) {
        if (r->rank_granted[i]) {
            /* Some ranks lent the blocks: take them back first, report then. */
            snprintf(r->fail_msg, sizeof(r->fail_msg), "%s", msg);
            dn_abort(n, r, false, NULL);
            return;
        }
    }
    engine_abort(n->engine, r->rid);
    ctl_client_send_error(n->ctl, r->rid, msg);
    dn_remove(n, r);
}

/* Requests on loan: when every rank is done, admit or free them. */
static void dn_poll_kv(dnode_t *n)
{
    dreq_t *r, *next;
    drc_reply_t reps[DEC_MAX_TP];
    char msg[200];

    for (r = TAILQ_FIRST(&n->reqs); r != NULL; r = next) {
        bool all = true;

        next = TAILQ_NEXT(r, link);
        if (r->state != DR_GRANTED && r->state != DR_ABORTING)
            continue;
        if (dn_call(n, DRC_RECV, r, reps) == NULL)
            return;
        for (int i = 0; i < n->n_ranks; i++) {
            duet_status_t s = reps[i].status;

            if (r->rank_done[i])
                continue;
            if (s == DUET_INPROGRESS) {
                all = false;
                continue;
            }
            r->rank_done[i] = true;
            if (s == DUET_ERR_NOT_FOUND && r->state == DR_ABORTING)
                continue;   /* this rank never lent the blocks */
            if (s != DUET_OK && r->kv_status == DUET_OK)
                r->kv_status = s;
            if (i == 0 && s == DUET_OK) {
                r->end.first_token = reps[0].first_token;
                r->end.state_len = reps[0].state_len;
                memcpy(r->end.state, reps[0].state, reps[0].state_len);
            }
        }
        if (!all)
            continue;
        if (r->state == DR_ABORTING) {
            engine_abort(n->engine, r->rid);
            if (r->fail_msg[0])
                ctl_client_send_error(n->ctl, r->rid, r->fail_msg);
            else if (r->notify)
                dn_send_finish(n, r->rid, "abort", 0, "aborted");
            dn_remove(n, r);
            continue;
        }
        if (r->kv_status != DUET_OK) {
            snprintf(msg, sizeof(msg), "KV transfer from %s failed: %s", r->prefill_name,
                     duet_status_str(r->kv_status));
            dn_fail(n, r, msg);
            continue;
        }
        {
            uint64_t rng[SAMPLER_RNG_WORDS];
            bool have_rng = r->end.state_len == sizeof(rng);
            duet_status_t s;

            if (have_rng)
                memcpy(rng, r->end.state, sizeof(rng));
            s = engine_add_prefilled(n->engine, r->rid, r->end.first_token,
                                     have_rng ? rng : NULL);
            if (s != DUET_OK) {
                snprintf(msg, sizeof(msg), "cannot admit the request (first token %d): %s",
                         r->end.first_token, duet_status_str(s));
                dn_fail(n, r, msg);
                continue;
            }
            r->state = DR_RUNNING;
            r->n_gen = 1;
            dn_schedule_step(n);
        }
    }
}

/* Progress the connector often while any request waits for KV, rarely when
 * none does (so an idle node does not keep a core awake). */
static void dn_arm_tick(dnode_t *n, bool busy)
{
    struct timeval tv = {0, 0};
    dreq_t *r;

    if (n->n_ranks == 0)
        return;
    TAILQ_FOREACH(r, &n->reqs, link)
        if (r->state != DR_RUNNING)
            busy = true;
    tv.tv_usec = busy ? DEC_TICK_US : DEC_IDLE_TICK_US;
    evtimer_add(n->tick_ev, &tv);
}

static void dn_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    dnode_t *n = arg;
    double now = clock_now_s();
    dreq_t *r, *next;
    int events = 0;

    (void)fd;
    (void)what;
    {
        drc_reply_t reps[DEC_MAX_TP];

        if (dn_call(n, DRC_PROGRESS, NULL, reps) == NULL)
            return;
        for (int i = 0; i < n->n_ranks; i++)
            events += reps[i].status;
    }
    for (r = TAILQ_FIRST(&n->reqs); r != NULL; r = next) {
        next = TAILQ_NEXT(r, link);
        if (r->state != DR_WAIT_GRANT)
            continue;
        {
            duet_status_t s = dn_try_grant(n, r);
            char msg[160];

            if (n->broken)
                return;
            if (s == DUET_OK)
                continue;
            if (s == DUET_ERR_NOT_FOUND && now < r->wait_deadline)
                continue;
            snprintf(msg, sizeof(msg), "cannot grant KV blocks to prefill node %s: %s",
                     r->prefill_name, s == DUET_ERR_NOT_FOUND ? "it never connected"
                                                              : duet_status_str(s));
            dn_fail(n, r, msg);
        }
    }
    dn_poll_kv(n);
    dn_arm_tick(n, events > 0);
}

/* ---- the step loop -------------------------------------------------------- */

static void dn_step_cb(evutil_socket_t fd, short what, void *arg)
{
    dnode_t *n = arg;
    const engine_out_t *outs;
    int n_out = 0, n_items = 0;
    duet_status_t s;

    (void)fd;
    (void)what;
    if (!engine_has_work(n->engine))
        return;
    s = engine_step(n->engine, &outs, &n_out);
    if (s != DUET_OK) {
        if (n->ex != NULL && !exec_ok(n->ex)) {
            dn_broken(n);
            return;
        }
        log_error("engine step failed (%s): failing every request", duet_status_str(s));
        dn_abort_all(n, true, "engine step failed");
        return;
    }
    /* First tokens (colocated) go as FIRST_TOKEN at once; the others as one
     * TOKENS frame for the step; then the finishes. */
    for (int i = 0; i < n_out; i++) {
        dreq_t *r = dn_find(n, outs[i].req_id);

        if (r == NULL || outs[i].token < 0)
            continue;
        if (r->n_gen == 0) {
            frame_writer_t *w = ctl_client_writer(n->ctl);

            n->queued_tokens -= (uint64_t)r->n_prompt;
            frame_begin(w, FRAME_FIRST_TOKEN, 2);
            frame_put_u64(w, "rid", r->rid);
            frame_put_u64(w, "token", (uint64_t)outs[i].token);
            ctl_client_send(n->ctl);
        } else {
            n_items++;
        }
        r->n_gen++;
    }
    if (n_items > 0) {
        frame_writer_t *w = ctl_client_writer(n->ctl);
        int k = 0;

        frame_begin(w, FRAME_TOKENS, 1);
        frame_key(w, "items");
        msgpack_pack_array(&w->pk, (size_t)n_items);
        for (int i = 0; i < n_out; i++) {
            dreq_t *r = dn_find(n, outs[i].req_id);

            if (r == NULL || outs[i].token < 0 || r->n_gen <= 1)
                continue;
            msgpack_pack_array(&w->pk, 2);
            msgpack_pack_uint64(&w->pk, r->rid);
            msgpack_pack_uint32(&w->pk, (uint32_t)outs[i].token);
            k++;
        }
        if (k == n_items)
            ctl_client_send(n->ctl);
        else
            log_error("TOKENS frame: %d items, expected %d (dropped)", k, n_items);
    }
    for (int i = 0; i < n_out; i++) {
        dreq_t *r;

        if (outs[i].finish == ENGINE_FINISH_NONE)
            continue;
        r = dn_find(n, outs[i].req_id);
        if (r == NULL)
            continue;
        dn_send_finish(n, r->rid, outs[i].finish == ENGINE_FINISH_STOP ? "stop" : "length",
                       r->n_gen, NULL);
        dn_remove(n, r);
    }
    /* A step that ran nothing (a running request cannot grow while the
     * blocks are held by requests still receiving their KV) is tried again
     * a little later: at once it would spin, preempting and readmitting the
     * same request. */
    if (engine_has_work(n->engine))
        dn_schedule_step_in(n, engine_step_ran(n->engine) ? 0 : DEC_IDLE_STEP_US);
}

/* ---- frames from the router ----------------------------------------------- */

static void dn_on_reserve(dnode_t *n, const frame_msg_t *msg, uint64_t rid)
{
    char err[256], pname[65];
    ctl_sampling_t sp;
    engine_req_params_t p;
    int32_t *toks = NULL, ntok = 0, nblocks;
    const int32_t *blocks;
    dreq_t *r;
    duet_status_t s;

    if (n->o->colocated) {
        ctl_client_send_error(n->ctl, rid, "RESERVE sent to a colocated node");
        return;
    }
    if (n->life.draining) {
        ctl_client_send_nack(n->ctl, rid, "draining");
        return;
    }
    if (dn_find(n, rid) != NULL) {
        log_req(LOG_LEVEL_WARN, rid, "RESERVE for a rid already held: ignored");
        return;
    }
    if (ctl_get_strbuf(msg, "prefill", pname, sizeof(pname)) != DUET_OK || !pname[0]) {
        ctl_client_send_error(n->ctl, rid, "RESERVE: bad 'prefill'");
        return;
    }
    if (ctl_client_get_request(n->ctl, msg, rid, "RESERVE", &toks, &ntok, &sp) != DUET_OK)
        return;
    dn_params(n, &sp, &p);
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        ctl_client_send_error(n->ctl, rid, "out of memory");
        goto out;
    }
    s = engine_reserve(n->engine, rid, toks, ntok, &p, &blocks, &nblocks, err, sizeof(err));
    if (s == DUET_ERR_NO_RESOURCE) {
        free(r);
        ctl_client_send_nack(n->ctl, rid, err);
        goto out;
    }
    if (s != DUET_OK) {
        free(r);
        ctl_client_send_error(n->ctl, rid, err);
        goto out;
    }
    r->blocks = malloc(sizeof(*r->blocks) * (size_t)nblocks);
    if (r->blocks == NULL) {
        free(r);
        engine_abort(n->engine, rid);
        ctl_client_send_error(n->ctl, rid, "out of memory");
        goto out;
    }
    memcpy(r->blocks, blocks, sizeof(*blocks) * (size_t)nblocks);
    r->nblocks = nblocks;
    r->rid = rid;
    r->n_prompt = ntok;
    r->prefill = ctl_node_hash(pname);
    memcpy(r->prefill_name, pname, sizeof(pname));
    r->wait_deadline = clock_now_s() + n->o->grant_wait_ms / 1000.0;
    r->state = DR_WAIT_GRANT;
    TAILQ_INSERT_TAIL(&n->reqs, r, link);
    n->n_reqs++;
    s = dn_try_grant(n, r);
    if (n->broken)
        goto out;
    if (s != DUET_OK && s != DUET_ERR_NOT_FOUND) {
        snprintf(err, sizeof(err), "cannot grant KV blocks: %s", duet_status_str(s));
        dn_fail(n, r, err);
    }
    dn_arm_tick(n, true);
    log_req(LOG_LEVEL_DEBUG, rid, "reserved %d blocks for %d tokens from %s%s", nblocks, ntok,
            pname, s == DUET_OK ? "" : " (prefill not connected yet)");
out:
    free(toks);
}

static void dn_on_prefill(dnode_t *n, const frame_msg_t *msg, uint64_t rid)
{
    char err[256];
    ctl_sampling_t sp;
    engine_req_params_t p;
    int32_t *toks = NULL, ntok = 0;
    dreq_t *r;

    if (!n->o->colocated || frame_get(msg, "decode") != NULL) {
        ctl_client_send_error(n->ctl, rid, "PREFILL for a prefill node sent to a decode node");
        return;
    }
    if (n->life.draining) {
        ctl_client_send_error(n->ctl, rid, "node is draining");
        return;
    }
    if (dn_find(n, rid) != NULL)
        return;
    if (ctl_client_get_request(n->ctl, msg, rid, "PREFILL", &toks, &ntok, &sp) != DUET_OK)
        return;
    dn_params(n, &sp, &p);
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        ctl_client_send_error(n->ctl, rid, "out of memory");
        goto out;
    }
    if (engine_add(n->engine, rid, toks, ntok, &p, err, sizeof(err)) != DUET_OK) {
        free(r);
        ctl_client_send_error(n->ctl, rid, err);
        goto out;
    }
    r->rid = rid;
    r->n_prompt = ntok;
    r->state = DR_RUNNING;
    TAILQ_INSERT_TAIL(&n->reqs, r, link);
    n->n_reqs++;
    n->queued_tokens += (uint64_t)ntok;
    dn_schedule_step(n);
out:
    free(toks);
}

static void dn_on_frame(void *arg, const frame_msg_t *msg)
{
    dnode_t *n = arg;
    uint64_t rid = 0;
    dreq_t *r;

    if (msg->type == FRAME_DRAIN) {
        node_life_drain(&n->life, "the router asked");
        return;
    }
    if (frame_get_u64(msg, "rid", &rid) != DUET_OK || rid == 0) {
        log_warn("%s without a valid rid: ignored", frame_type_str(msg->type));
        return;
    }
    switch (msg->type) {
    case FRAME_RESERVE:
        dn_on_reserve(n, msg, rid);
        break;
    case FRAME_PREFILL:
        dn_on_prefill(n, msg, rid);
        break;
    case FRAME_ABORT:
        r = dn_find(n, rid);
        if (r != NULL) {
            log_req(LOG_LEVEL_DEBUG, rid, "aborted by the router");
            dn_abort(n, r, false, NULL);
        }
        break;
    case FRAME_ERROR:
        r = dn_find(n, rid);
        if (r != NULL)
            dn_abort(n, r, false, NULL);
        break;
    default:
        break;
    }
}

static void dn_on_down(void *arg)
{
    dnode_t *n = arg;

    if (n->n_reqs > 0)
        log_warn("router gone: dropping %d requests", n->n_reqs);
    dn_abort_all(n, false, NULL);
}

static void dn_on_fatal(void *arg, const char *code, const char *msg)
{
    dnode_t *n = arg;

    log_error("the router refused this node for good (%s: %s); exiting", code, msg);
    n->exit_code = 1;
    n->fail_why = "refused by the router";
    dn_abort_all(n, false, NULL);
    event_base_loopbreak(n->base);
}

static void dn_load(void *arg, ctl_load_t *l)
{
    dnode_t *n = arg;
    engine_stats_t st;

    engine_stats(n->engine, &st);
    l->running = (uint64_t)st.running;
    l->waiting = (uint64_t)(st.waiting + st.reserved);
    l->free_blocks = (uint64_t)st.kv_free;
    l->queued_tokens = n->queued_tokens;
}

/* A rank died or hung (the executor says so within seconds): every request
 * fails, and the node leaves with exit status 1 for its supervisor to
 * restart it. */
static void dn_broken(dnode_t *n)
{
    dreq_t *r;

    if (n->broken)
        return;
    n->broken = true;
    n->exit_code = 1;
    n->fail_why = "a tensor-parallel rank failed";
    log_error("a tensor-parallel rank failed: failing %d requests and leaving", n->n_reqs);
    while ((r = TAILQ_FIRST(&n->reqs)) != NULL) {
        engine_abort(n->engine, r->rid);
        ctl_client_send_error(n->ctl, r->rid, "the decode node lost a tensor-parallel rank");
        TAILQ_REMOVE(&n->reqs, r, link);
        n->n_reqs--;
        free(r->blocks);
        free(r);
    }
    node_life_stop(&n->life);
}

/* ---- drain ---------------------------------------------------------------- */

static int dn_inflight(void *arg)
{
    return ((dnode_t *)arg)->n_reqs;
}

/* Drain timeout or a second signal. */
static void dn_drain_abort(void *arg)
{
    dn_abort_all(arg, true, "node shut down");
}

/* ---- setup ------------------------------------------------------------------ */

#define SET_ERR(...) snprintf(err, errlen, __VA_ARGS__)

int decode_node_run(const decode_node_opts_t *o, char *err, size_t errlen)
{
    dnode_t n = {.o = o, .exit_code = 1};
    engine_opts_t eo = o->engine;
    ctl_hello_t hello = {0};
    ctl_client_cbs_t cbs = {0};
    node_life_ops_t life_ops = {.inflight = dn_inflight, .abort_all = dn_drain_abort, .arg = &n};
    static char addrs[DEC_MAX_TP][EXEC_REPLY_MAX];
    duet_status_t s;

    TAILQ_INIT(&n.reqs);
    if (o->tp < 1 || o->tp > DEC_MAX_TP) {
        SET_ERR("--tp %d: between 1 and %d ranks", o->tp, DEC_MAX_TP);
        return 2;
    }
    /* The engine first: with tp > 1 it forks the rank processes, which must
     * happen before any event loop, socket or UCX context exists here. */
    eo.prefill_only = false;
    eo.tp_rank = 0;
    eo.tp_size = o->tp;
    if (!o->colocated) {
        n.rank_arg = calloc(1, sizeof(*n.rank_arg));
        if (n.rank_arg == NULL) {
            SET_ERR("out of memory");
            return 1;
        }
        *n.rank_arg = (dec_rank_arg_t){.node_id = ctl_node_hash(o->node_id),
                                       .model_fp = o->cfg->fingerprint,
                                       .n_kv_heads_total = o->cfg->n_kv_heads};
        snprintf(n.rank_arg->ucx_host, sizeof(n.rank_arg->ucx_host), "%s", o->ucx_host);
        eo.rank_hooks = (exec_hooks_t){drc_init, drc_call, drc_step, drc_fini, n.rank_arg};
        n.n_ranks = o->tp;
    }
    s = engine_create(o->g, o->cfg, &eo, &n.engine, err, errlen);
    if (s != DUET_OK) {
        free(n.rank_arg);
        return s == DUET_ERR_INVALID ? 2 : 1;
    }
    n.ex = engine_executor(n.engine);
    for (int i = 0; i < n.n_ranks; i++) {
        const char *a = exec_rank_reply(n.ex, i);

        snprintf(addrs[i], sizeof(addrs[i]), "%s", a != NULL ? a : "");
        hello.ucx[i] = addrs[i];
    }
    hello.n_ucx = (uint32_t)n.n_ranks;
    n.base = event_base_new();
    if (n.base == NULL) {
        SET_ERR("cannot create the event loop");
        goto err_events;
    }
    {
        const kv_layout_t *l = engine_kv_layout(n.engine);

        hello.role = o->colocated ? "colocated" : "decode";
        hello.node = o->node_id;
        hello.token = o->token;
        hello.model_fp = o->cfg->fingerprint;
        hello.tp = (uint32_t)o->tp;
        hello.block_size = (uint32_t)l->block_size;
        hello.blocks = (uint32_t)l->n_blocks;
        hello.n_layers = (uint32_t)l->n_layers;
        hello.n_kv_heads = (uint32_t)o->cfg->n_kv_heads;
        hello.head_dim = (uint32_t)l->head_dim;
        hello.kv_dtype = l->dtype == DTYPE_F32 ? "f32" : "f16";
    }
    n.step_ev = evtimer_new(n.base, dn_step_cb, &n);
    n.tick_ev = evtimer_new(n.base, dn_tick_cb, &n);
    if (n.step_ev == NULL || n.tick_ev == NULL ||
        node_life_init(&n.life, n.base, o->drain_timeout_s, &life_ops) != DUET_OK) {
        SET_ERR("cannot set up events");
        goto err_events;
    }
    dn_arm_tick(&n, false);
    cbs = (ctl_client_cbs_t){
        .on_down = dn_on_down, .on_frame = dn_on_frame, .on_fatal = dn_on_fatal,
        .load = dn_load, .arg = &n,
    };
    s = ctl_client_create(n.base, o->router_host, o->router_port, &hello, &cbs, &n.ctl);
    if (s != DUET_OK) {
        SET_ERR("cannot start the control-plane client: %s", duet_status_str(s));
        goto err_events;
    }
    n.life.ctl = n.ctl;
    log_info("%s node '%s': %d KV blocks of %d tokens, KV listener %s, router %s:%u",
             hello.role, o->node_id, (int)hello.blocks, (int)hello.block_size,
             n.n_ranks > 0 ? addrs[0] : "-", o->router_host, o->router_port);
    n.exit_code = 0;
    event_base_dispatch(n.base);
    dn_abort_all(&n, false, NULL);
    /* Requests still on loan (aborted at exit): the connector drops them. */
    ctl_client_destroy(n.ctl);
    if (n.exit_code != 0)
        SET_ERR("%s", n.fail_why != NULL ? n.fail_why : "failed");

err_events:
    while (!TAILQ_EMPTY(&n.reqs)) {
        dreq_t *r = TAILQ_FIRST(&n.reqs);

        TAILQ_REMOVE(&n.reqs, r, link);
        free(r->blocks);
        free(r);
    }
    if (n.step_ev != NULL)
        event_free(n.step_ev);
    if (n.tick_ev != NULL)
        event_free(n.tick_ev);
    node_life_fini(&n.life);
    engine_destroy(n.engine);   /* stops the ranks; their hooks destroy the kvc_t */
    free(n.rank_arg);
    free(n.msg);
    if (n.base != NULL)
        event_base_free(n.base);
    return n.exit_code;
}
