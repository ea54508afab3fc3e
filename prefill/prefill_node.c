/* Prefill node: the control-plane driver around a prefill-only engine and a
 * prefill-side KV connector. */
#define DUET_LOG_COMPONENT "prefill"

#include "prefill/prefill_node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/ctl_client.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/node_life.h"
#include "kvconnector/kvc.h"

#define PF_TICK_US       2000    /* connector progress with requests in flight */
#define PF_IDLE_TICK_US  20000   /* ... and without */
#define PF_MAX_PEERS   256
#define PF_MAX_TP      64

typedef enum {
    PR_COMPUTING = 0,   /* in the engine: queued or prefilling */
    PR_SENDING,         /* KV handed to the connector, blocks held by the engine */
    PR_ABORTING,        /* aborted: waiting for the connector's final status */
} preq_state_t;

typedef struct preq {
    TAILQ_ENTRY(preq) link;
    uint64_t     rid;
    preq_state_t state;
    int32_t      n_prompt;
    bool         in_engine;     /* the engine still holds it (abort/release due) */
    int32_t      kv_sent;       /* prompt tokens whose every layer is queued */
    duet_status_t kv_err;       /* a layer could not be queued, or preempted */
    bool         first_due;     /* PR_SENDING: FIRST_TOKEN waits for the grant */
    int32_t      first_token;
    uint64_t     kv_bytes;
    double       deadline;      /* PR_SENDING / PR_ABORTING: give up then */
    char         decode[65];
} preq_t;

TAILQ_HEAD(preq_list, preq);

/* A decode node this prefill node has KV endpoints to. */
typedef struct {
    char     name[65];
    uint32_t tp;
    char     addrs[PF_MAX_TP][257];
    bool     ok;
} peer_t;

typedef struct {
    uint64_t       rid;
    int32_t        first_token;
    const int32_t *blocks;      /* borrowed from the engine until release */
    int32_t        nblocks, ntokens;
} handover_t;

typedef struct {
    const prefill_node_opts_t *o;
    struct event_base *base;
    engine_t          *engine;
    kvc_t             *kvc;
    ctl_client_t      *ctl;
    struct preq_list   reqs;
    int                n_reqs;
    uint64_t           queued_tokens;
    peer_t            *peers;
    int                n_peers;
    handover_t        *ho;          /* filled by the engine's on_prefilled */
    int                n_ho, ho_cap;
    size_t             kv_bytes_per_block;   /* all layers, all heads */
    int32_t            block_size, n_layers;
    struct event      *step_ev, *tick_ev;
    node_life_t        life;
    int                exit_code;
    uint64_t           seed_ctr;
} pnode_t;

static preq_t *pn_find(pnode_t *n, uint64_t rid)
{
    preq_t *r;

    TAILQ_FOREACH(r, &n->reqs, link)
        if (r->rid == rid)
            return r;
    return NULL;
}

static void pn_remove(pnode_t *n, preq_t *r)
{
    if (r->state == PR_COMPUTING)
        n->queued_tokens -= (uint64_t)r->n_prompt;
    TAILQ_REMOVE(&n->reqs, r, link);
    n->n_reqs--;
    free(r);
    node_life_check_drained(&n->life);
}

static void pn_schedule_step(pnode_t *n)
{
    struct timeval zero = {0, 0};

    if (!evtimer_pending(n->step_ev, NULL))
        evtimer_add(n->step_ev, &zero);
}

/* Drop a request at whatever stage. The engine's blocks are freed at once
 * unless the prompt is done (PR_SENDING): then once the connector says it
 * is done. A computing prompt may have layers queued: puts already issued
 * may still read its freed blocks, which is harmless, as the aborted
 * transfer's remote blocks are discarded (the decode side frees them only
 * once this side answered its ABORT, after a flush). */
static void pn_abort(pnode_t *n, preq_t *r)
{
    duet_status_t s;

    if (r->state == PR_ABORTING)
        return;
    if (r->state == PR_SENDING && r->first_due)   /* no token out: it can be retried */
        ctl_client_send_error(n->ctl, r->rid, "KV transfer aborted before the decode node granted");
    s = kvc_abort(n->kvc, r->rid);
    if (r->state == PR_COMPUTING) {
        engine_abort(n->engine, r->rid);
        r->in_engine = false;
        n->queued_tokens -= (uint64_t)r->n_prompt;
    }
    if (s != DUET_OK && r->state == PR_COMPUTING) {
        /* The connector never heard of it: nothing to wait for. */
        r->state = PR_ABORTING;   /* not counted in queued_tokens any more */
        pn_remove(n, r);
        return;
    }
    r->state = PR_ABORTING;
    r->deadline = clock_now_s() + 10.0;
}

static void pn_abort_all(pnode_t *n)
{
    preq_t *r, *next;

    for (r = TAILQ_FIRST(&n->reqs); r != NULL; r = next) {
        next = TAILQ_NEXT(r, link);
        pn_abort(n, r);
    }
}

static void pn_fail(pnode_t *n, preq_t *r, const char *msg)
{
    log_req(LOG_LEVEL_WARN, r->rid, "%s", msg);
    ctl_client_send_error(n->ctl, r->rid, msg);
    pn_abort(n, r);
}

/* ---- the engine ------------------------------------------------------------ */

/* Layer `layer` of this step is in the slab: queue it for the decode node
 * now, so that its puts overlap the next layers' compute. Until the chunk
 * that ends the prompt only whole blocks go (a block sent twice could land
 * out of order); every layer of a step sends the same tokens, so kv_sent
 * moves at the last one. Prefix-cached tokens go with the first chunk. */
static void pn_on_layer(void *arg, int32_t layer, const engine_kv_seq_t *seqs, int n_seqs)
{
    pnode_t *n = arg;
    int32_t bs = n->block_size;

    for (int i = 0; i < n_seqs; i++) {
        const engine_kv_seq_t *q = &seqs[i];
        preq_t *r = pn_find(n, q->req_id);
        int32_t t0, end = q->n_past + q->n_new;
        duet_status_t s;

        if (r == NULL || r->state != PR_COMPUTING || r->kv_err != DUET_OK)
            continue;
        if (end < q->n_prompt)
            end -= end % bs;
        t0 = r->kv_sent;
        if (end <= t0)
            continue;
        s = kvc_send_kv_cache(n->kvc, r->rid, layer, t0, end, q->blocks + t0 / bs,
                              (end - 1) / bs - t0 / bs + 1);
        if (s != DUET_OK)
            r->kv_err = s;   /* the hand-over fails it: not from inside a step */
        else if (layer == n->n_layers - 1)
            r->kv_sent = end;
    }
    kvc_progress(n->kvc);
}

/* The engine preempted a prompt: its blocks are free, and may be written by
 * another request in this very step, while the connector holds their ids
 * for the layers already queued. Layers not started yet are dropped and
 * sent again once recomputed; layers all put already are fine; a transfer
 * under way is aborted, and the step's end fails the request (no token
 * went out, so the router retries it). */
static void pn_on_preempt(void *arg, uint64_t id)
{
    pnode_t *n = arg;
    preq_t *r = pn_find(n, id);
    bool resend;

    if (r == NULL || r->state != PR_COMPUTING || r->kv_sent == 0 || r->kv_err != DUET_OK)
        return;
    if (kvc_send_blocks_reused(n->kvc, id, &resend) == DUET_OK) {
        if (resend)
            r->kv_sent = 0;
        return;
    }
    r->kv_err = DUET_ERR_CANCELED;
    kvc_abort(n->kvc, id);
}

static void pn_on_prefilled(void *arg, uint64_t id, int32_t first_token,
                            const int32_t *blocks, int32_t n_blocks, int32_t n_tokens)
{
    pnode_t *n = arg;

    if (n->n_ho == n->ho_cap) {
        int cap = n->ho_cap ? n->ho_cap * 2 : 16;
        handover_t *p = realloc(n->ho, sizeof(*p) * (size_t)cap);

        if (p == NULL) {
            log_req(LOG_LEVEL_ERROR, id, "out of memory queueing a KV handover");
            return;   /* the request stays prefilled until aborted/timed out */
        }
        n->ho = p;
        n->ho_cap = cap;
    }
    n->ho[n->n_ho++] = (handover_t){id, first_token, blocks, n_blocks, n_tokens};
}

/* The first token to the router. Sent only once the decode node granted:
 * before that it may still NACK (full, draining), and the router retries
 * elsewhere only while it has seen no token of the request. */
static void pn_send_first(pnode_t *n, preq_t *r)
{
    frame_writer_t *w = ctl_client_writer(n->ctl);

    r->first_due = false;
    frame_begin(w, FRAME_FIRST_TOKEN, 3);
    frame_put_u64(w, "rid", r->rid);
    frame_put_u64(w, "token", (uint64_t)r->first_token);
    frame_put_u64(w, "kv_bytes", r->kv_bytes);
    ctl_client_send(n->ctl);
}

/* FIRST_TOKEN now if it is due and the grant is in. */
static void pn_first_if_granted(pnode_t *n, preq_t *r)
{
    if (r->state == PR_SENDING && r->first_due && kvc_send_granted(n->kvc, r->rid))
        pn_send_first(n, r);
}

/* The prompt is in the slab: every layer to the decode node, KV_END, and the
 * first token to the router (now, or at the grant). */
static void pn_hand_over(pnode_t *n, const handover_t *h)
{
    preq_t *r = pn_find(n, h->rid);
    uint64_t rng[SAMPLER_RNG_WORDS];
    duet_status_t s = DUET_OK;
    char msg[160];

    if (r == NULL || r->state != PR_COMPUTING) {
        engine_release(n->engine, h->rid);
        return;
    }
    /* The decode side may have given up while the step ran (lease expiry,
     * NACK, death): then no token goes out, so the router can still retry. */
    kvc_progress(n->kvc);
    s = kvc_send_status(n->kvc, h->rid);
    if (s != DUET_INPROGRESS && s != DUET_ERR_NOT_FOUND) {
        snprintf(msg, sizeof(msg), "decode node %s ended the transfer before the prompt was "
                 "done: %s", r->decode, duet_status_str(s));
        log_req(LOG_LEVEL_WARN, h->rid, "%s", msg);
        ctl_client_send_error(n->ctl, h->rid, msg);
        engine_release(n->engine, h->rid);
        r->in_engine = false;
        pn_remove(n, r);
        return;
    }
    n->queued_tokens -= (uint64_t)r->n_prompt;
    r->state = PR_SENDING;
    r->deadline = clock_now_s() + n->o->lease_ms / 1000.0;
    /* the layers went out as they were computed; what is left (nothing,
     * unless a layer could not be queued) goes now */
    s = r->kv_err;
    for (int32_t l = 0; l < n->n_layers && s == DUET_OK && r->kv_sent < h->ntokens; l++) {
        int32_t b0 = r->kv_sent / n->block_size;

        s = kvc_send_kv_cache(n->kvc, h->rid, l, r->kv_sent, h->ntokens, h->blocks + b0,
                              h->nblocks - b0);
    }
    if (s == DUET_OK)
        s = engine_req_rng(n->engine, h->rid, rng);
    if (s == DUET_OK)
        s = kvc_end(n->kvc, h->rid, h->first_token, rng, sizeof(rng));
    if (s != DUET_OK) {
        snprintf(msg, sizeof(msg), "KV send to %s failed: %s", r->decode, duet_status_str(s));
        pn_fail(n, r, msg);
        return;
    }
    r->first_due = true;
    r->first_token = h->first_token;
    r->kv_bytes = (uint64_t)h->nblocks * n->kv_bytes_per_block;
    pn_first_if_granted(n, r);
}

/* After a step, not inside it: fail the prompts whose layers could not be
 * queued or that were preempted with layers queued, and send the
 * FIRST_TOKENs whose grant came in during the step. */
static void pn_after_step(pnode_t *n)
{
    preq_t *r, *next;
    char msg[160];

    for (r = TAILQ_FIRST(&n->reqs); r != NULL; r = next) {
        next = TAILQ_NEXT(r, link);
        if (r->state == PR_COMPUTING && r->kv_err != DUET_OK) {
            snprintf(msg, sizeof(msg), "KV send to %s stopped before the prompt was done: %s",
                     r->decode, r->kv_err == DUET_ERR_CANCELED ? "preempted (blocks reused)"
                                                               : duet_status_str(r->kv_err));
            pn_fail(n, r, msg);
        } else {
            pn_first_if_granted(n, r);
        }
    }
}

static void pn_step_cb(evutil_socket_t fd, short what, void *arg)
{
    pnode_t *n = arg;
    const engine_out_t *outs;
    int n_out = 0;
    duet_status_t s;

    (void)fd;
    (void)what;
    if (!engine_has_work(n->engine))
        return;
    n->n_ho = 0;
    s = engine_step(n->engine, &outs, &n_out);
    if (s != DUET_OK) {
        preq_t *r, *next;

        log_error("engine step failed (%s): failing the prompts in flight",
                  duet_status_str(s));
        for (r = TAILQ_FIRST(&n->reqs); r != NULL; r = next) {
            next = TAILQ_NEXT(r, link);
            if (r->state == PR_COMPUTING)
                pn_fail(n, r, "prefill failed");
        }
        return;
    }
    for (int i = 0; i < n->n_ho; i++)
        pn_hand_over(n, &n->ho[i]);
    n->n_ho = 0;
    pn_after_step(n);
    /* A request that ended at its first token without a handover: only the
     * context can do that here (stop rules are the decode node's). */
    for (int i = 0; i < n_out; i++) {
        preq_t *r;

        if (outs[i].finish == ENGINE_FINISH_NONE || outs[i].finish == ENGINE_FINISH_PREFILLED)
            continue;
        r = pn_find(n, outs[i].req_id);
        if (r != NULL && r->state == PR_COMPUTING) {
            r->in_engine = false;
            pn_fail(n, r, "the prompt leaves no room in this prefill node's context");
        }
    }
    kvc_progress(n->kvc);
    /* A step that ran nothing (no blocks: finished prompts hold them until
     * their transfers end) is tried again from the tick, not at once: at
     * once it would spin, admitting and preempting the same prompt. */
    if (engine_has_work(n->engine) && engine_step_ran(n->engine))
        pn_schedule_step(n);
}

static void pn_arm_tick(pnode_t *n, bool busy)
{
    struct timeval tv = {0, busy || n->n_reqs > 0 ? PF_TICK_US : PF_IDLE_TICK_US};

    evtimer_add(n->tick_ev, &tv);
}

static void pn_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    pnode_t *n = arg;
    preq_t *r, *next;
    double now = clock_now_s();
    char msg[160];
    int events;

    (void)fd;
    (void)what;
    events = kvc_progress(n->kvc);
    for (r = TAILQ_FIRST(&n->reqs); r != NULL; r = next) {
        duet_status_t s;

        next = TAILQ_NEXT(r, link);
        s = kvc_send_status(n->kvc, r->rid);
        if (s == DUET_INPROGRESS || (s == DUET_ERR_NOT_FOUND && r->state == PR_COMPUTING)) {
            pn_first_if_granted(n, r);
            if (r->state != PR_COMPUTING && now > r->deadline) {
                if (r->state == PR_SENDING) {
                    log_req(LOG_LEVEL_WARN, r->rid, "KV transfer to %s not done in %u ms: "
                            "aborting it", r->decode, n->o->lease_ms);
                    pn_abort(n, r);
                } else {
                    log_req(LOG_LEVEL_WARN, r->rid, "the KV connector did not let go of an "
                            "aborted transfer; releasing");
                    if (r->in_engine)
                        engine_release(n->engine, r->rid);
                    pn_remove(n, r);
                }
            }
            continue;
        }
        /* Final (or forgotten): the connector reads no more of its blocks. */
        switch (r->state) {
        case PR_COMPUTING:
            /* The decode side gave up before the prompt was done (NACK,
             * lease expiry, death): stop computing it. */
            snprintf(msg, sizeof(msg), "decode node %s ended the transfer early: %s",
                     r->decode, duet_status_str(s));
            engine_abort(n->engine, r->rid);
            r->in_engine = false;
            log_req(LOG_LEVEL_WARN, r->rid, "%s", msg);
            ctl_client_send_error(n->ctl, r->rid, msg);
            pn_remove(n, r);
            break;
        case PR_SENDING:
            if (s == DUET_OK && r->first_due) {
                pn_send_first(n, r);
            } else if (s != DUET_OK && r->first_due) {
                /* no token went out: the router can still retry */
                snprintf(msg, sizeof(msg), "KV transfer to %s failed before the grant: %s",
                         r->decode, duet_status_str(s));
                log_req(LOG_LEVEL_WARN, r->rid, "%s", msg);
                ctl_client_send_error(n->ctl, r->rid, msg);
            } else if (s != DUET_OK) {
                log_req(LOG_LEVEL_WARN, r->rid, "KV transfer to %s failed after the first "
                        "token: %s", r->decode, duet_status_str(s));
            }
            /* fall through */
        case PR_ABORTING:
            if (r->in_engine)
                engine_release(n->engine, r->rid);
            pn_remove(n, r);
            break;
        }
    }
    if (engine_has_work(n->engine))
        pn_schedule_step(n);
    pn_arm_tick(n, events > 0);
}

/* ---- decode peers ------------------------------------------------------------ */

/* Endpoints to every rank of decode node `name`, connecting on first use or
 * when its addresses changed (a restarted node). */
static duet_status_t pn_peer(pnode_t *n, const char *name, const frame_msg_t *msg,
                             char *err, size_t errlen)
{
    const msgpack_object *ucx = frame_get(msg, "decode_ucx");
    peer_t *p = NULL;
    uint64_t tp = 0, node;
    bool same;

    if (ucx == NULL || ucx->type != MSGPACK_OBJECT_ARRAY || ucx->via.array.size == 0 ||
        ucx->via.array.size > PF_MAX_TP) {
        snprintf(err, errlen, "PREFILL: 'decode_ucx' must list the decode node's ranks");
        return DUET_ERR_PROTO;
    }
    if (frame_get_u64(msg, "decode_tp", &tp) == DUET_OK && tp != ucx->via.array.size) {
        snprintf(err, errlen, "PREFILL: decode_tp %llu but %u addresses",
                 (unsigned long long)tp, ucx->via.array.size);
        return DUET_ERR_PROTO;
    }
    for (uint32_t i = 0; i < ucx->via.array.size; i++) {
        const msgpack_object *e = &ucx->via.array.ptr[i];

        if (e->type != MSGPACK_OBJECT_STR || e->via.str.size == 0 || e->via.str.size > 256) {
            snprintf(err, errlen, "PREFILL: bad 'decode_ucx' entry");
            return DUET_ERR_PROTO;
        }
    }
    for (int i = 0; i < n->n_peers; i++)
        if (strcmp(n->peers[i].name, name) == 0)
            p = &n->peers[i];
    if (p != NULL) {
        same = p->ok && p->tp == ucx->via.array.size;
        for (uint32_t i = 0; same && i < p->tp; i++) {
            const msgpack_object *e = &ucx->via.array.ptr[i];

            same = strlen(p->addrs[i]) == e->via.str.size &&
                   memcmp(p->addrs[i], e->via.str.ptr, e->via.str.size) == 0;
        }
        if (same)
            return DUET_OK;
    } else {
        if (n->n_peers == PF_MAX_PEERS) {
            snprintf(err, errlen, "too many decode nodes (%d)", PF_MAX_PEERS);
            return DUET_ERR_NO_RESOURCE;
        }
        p = &n->peers[n->n_peers++];
        snprintf(p->name, sizeof(p->name), "%s", name);
    }
    p->ok = false;
    p->tp = ucx->via.array.size;
    for (uint32_t i = 0; i < p->tp; i++) {
        const msgpack_object *e = &ucx->via.array.ptr[i];
        duet_status_t s;

        memcpy(p->addrs[i], e->via.str.ptr, e->via.str.size);
        p->addrs[i][e->via.str.size] = '\0';
        s = kvc_connect(n->kvc, p->addrs[i], (int)n->o->connect_ms, &node);
        if (s != DUET_OK) {
            snprintf(err, errlen, "cannot connect to decode node %s rank %u at %s: %s", name,
                     i, p->addrs[i], duet_status_str(s));
            return s;
        }
        if (node != ctl_node_hash(name))
            log_warn("decode node %s answers with KV node id %llx, expected %llx", name,
                     (unsigned long long)node, (unsigned long long)ctl_node_hash(name));
    }
    p->ok = true;
    return DUET_OK;
}

/* ---- frames from the router ------------------------------------------------ */

static void pn_on_prefill(pnode_t *n, const frame_msg_t *msg, uint64_t rid)
{
    char err[256], dname[65];
    ctl_sampling_t sp;
    engine_req_params_t p;
    int32_t *toks = NULL, ntok = 0;
    preq_t *r;

    if (n->life.draining) {
        ctl_client_send_error(n->ctl, rid, "node is draining");
        return;
    }
    if (pn_find(n, rid) != NULL)
        return;
    if (ctl_get_strbuf(msg, "decode", dname, sizeof(dname)) != DUET_OK || !dname[0]) {
        ctl_client_send_error(n->ctl, rid, "PREFILL without 'decode' sent to a prefill node "
                              "(colocated requests need a colocated node)");
        return;
    }
    if (ctl_client_get_request(n->ctl, msg, rid, "PREFILL", &toks, &ntok, &sp) != DUET_OK)
        return;
    if (pn_peer(n, dname, msg, err, sizeof(err)) != DUET_OK) {
        ctl_client_send_error(n->ctl, rid, err);
        goto out;
    }
    /* The prefill samples only the first token, with the request's sampler
     * (penalties, seed); the stop rules are the decode node's, so the KV is
     * always handed over and the decode node ends a request whose first
     * token stops it. */
    engine_req_params_from_ctl(&sp, (uint64_t)clock_now_ns() ^ (++n->seed_ctr << 32), &p);
    p.max_tokens = 2;
    p.sampling.ignore_eos = true;
    p.sampling.n_stop = 0;
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
    r->state = PR_COMPUTING;
    r->in_engine = true;
    memcpy(r->decode, dname, sizeof(dname));
    TAILQ_INSERT_TAIL(&n->reqs, r, link);
    n->n_reqs++;
    n->queued_tokens += (uint64_t)ntok;
    pn_arm_tick(n, true);
    pn_schedule_step(n);
out:
    free(toks);
}

static void pn_on_frame(void *arg, const frame_msg_t *msg)
{
    pnode_t *n = arg;
    uint64_t rid = 0;
    preq_t *r;

    if (msg->type == FRAME_DRAIN) {
        node_life_drain(&n->life, "the router asked");
        return;
    }
    if (frame_get_u64(msg, "rid", &rid) != DUET_OK || rid == 0) {
        log_warn("%s without a valid rid: ignored", frame_type_str(msg->type));
        return;
    }
    switch (msg->type) {
    case FRAME_PREFILL:
        pn_on_prefill(n, msg, rid);
        break;
    case FRAME_RESERVE:
        ctl_client_send_error(n->ctl, rid, "RESERVE sent to a prefill node");
        break;
    case FRAME_ABORT:
    case FRAME_ERROR:
        r = pn_find(n, rid);
        if (r != NULL) {
            log_req(LOG_LEVEL_DEBUG, rid, "aborted by the router");
            pn_abort(n, r);
        }
        break;
    default:
        break;
    }
}

static void pn_on_down(void *arg)
{
    pnode_t *n = arg;

    if (n->n_reqs > 0)
        log_warn("router gone: dropping %d requests", n->n_reqs);
    pn_abort_all(n);
}

static void pn_on_fatal(void *arg, const char *code, const char *msg)
{
    pnode_t *n = arg;

    log_error("the router refused this node for good (%s: %s); exiting", code, msg);
    n->exit_code = 1;
    pn_abort_all(n);
    event_base_loopbreak(n->base);
}

static void pn_load(void *arg, ctl_load_t *l)
{
    pnode_t *n = arg;
    engine_stats_t st;

    engine_stats(n->engine, &st);
    l->running = (uint64_t)st.running;
    l->waiting = (uint64_t)st.waiting;
    l->free_blocks = (uint64_t)st.kv_free;
    l->queued_tokens = n->queued_tokens;
}

/* ---- drain ---------------------------------------------------------------- */

static int pn_inflight(void *arg)
{
    return ((pnode_t *)arg)->n_reqs;
}

/* Drain timeout or a second signal: fail what is still computing, abort the
 * transfers. */
static void pn_drain_abort(void *arg)
{
    pnode_t *n = arg;
    preq_t *r, *next;

    for (r = TAILQ_FIRST(&n->reqs); r != NULL; r = next) {
        next = TAILQ_NEXT(r, link);
        if (r->state == PR_COMPUTING)
            pn_fail(n, r, "node shut down");
        else
            pn_abort(n, r);
    }
}

/* ---- setup ------------------------------------------------------------------ */

#define SET_ERR(...) snprintf(err, errlen, __VA_ARGS__)

int prefill_node_run(const prefill_node_opts_t *o, char *err, size_t errlen)
{
    pnode_t n = {.o = o, .exit_code = 1};
    engine_opts_t eo = o->engine;
    ctl_hello_t hello = {0};
    ctl_client_cbs_t cbs;
    node_life_ops_t life_ops = {.inflight = pn_inflight, .abort_all = pn_drain_abort};
    kv_layout_t l = {
        .n_layers = o->cfg->n_layers, .n_blocks = 1, .n_kv_heads = o->cfg->n_kv_heads,
        .block_size = (int32_t)eo.block_size, .head_dim = o->cfg->head_dim,
        .dtype = eo.kv_f32 ? DTYPE_F32 : DTYPE_F16,
    };
    int64_t nb;
    duet_status_t s;

    TAILQ_INIT(&n.reqs);
    n.peers = calloc(PF_MAX_PEERS, sizeof(*n.peers));
    n.base = event_base_new();
    if (n.base == NULL || n.peers == NULL) {
        SET_ERR("out of memory");
        goto err_base;
    }
    nb = eo.kv_blocks > 0 ? eo.kv_blocks
                          : (int64_t)((size_t)eo.kv_mem_mib * (1u << 20) / kv_slab_bytes(&l));
    if (nb < 2 || nb > INT32_MAX / 2) {
        SET_ERR("KV pool of %lld blocks is unusable (raise --kv-mem or --kv-blocks)",
                (long long)nb);
        goto err_base;
    }
    n.kv_bytes_per_block = kv_slab_bytes(&l);
    n.block_size = l.block_size;
    n.n_layers = l.n_layers;
    l.n_blocks = (int32_t)nb;
    eo.kv_blocks = nb;
    {
        kvc_params_t kp = {
            .role = KVC_ROLE_PREFILL, .node_id = ctl_node_hash(o->node_id),
            .tp_rank = 0, .tp_size = 1, .n_kv_heads_total = o->cfg->n_kv_heads,
            .layout = l, .model_fp = o->cfg->fingerprint,
        };

        s = kvc_create(&kp, &n.kvc);
        if (s != DUET_OK) {
            SET_ERR("cannot create the KV connector: %s", duet_status_str(s));
            goto err_base;
        }
    }
    eo.kv_slab = kvc_slab(n.kvc);
    eo.prefill_only = true;
    eo.on_prefilled = pn_on_prefilled;
    eo.on_layer_kv = pn_on_layer;
    eo.on_preempt = pn_on_preempt;
    eo.cb_arg = &n;
    eo.tp_rank = 0;
    eo.tp_size = 1;
    s = engine_create(o->g, o->cfg, &eo, &n.engine, err, errlen);
    if (s != DUET_OK)
        goto err_kvc;
    hello = (ctl_hello_t){
        .role = "prefill", .node = o->node_id, .token = o->token,
        .model_fp = o->cfg->fingerprint, .tp = 1, .block_size = (uint32_t)l.block_size,
        .blocks = (uint32_t)l.n_blocks, .n_layers = (uint32_t)l.n_layers,
        .n_kv_heads = (uint32_t)l.n_kv_heads, .head_dim = (uint32_t)l.head_dim,
        .kv_dtype = l.dtype == DTYPE_F32 ? "f32" : "f16",
    };
    n.step_ev = evtimer_new(n.base, pn_step_cb, &n);
    n.tick_ev = evtimer_new(n.base, pn_tick_cb, &n);
    life_ops.arg = &n;
    if (n.step_ev == NULL || n.tick_ev == NULL ||
        node_life_init(&n.life, n.base, o->drain_timeout_s, &life_ops) != DUET_OK) {
        SET_ERR("cannot set up events");
        goto err_events;
    }
    cbs = (ctl_client_cbs_t){
        .on_down = pn_on_down, .on_frame = pn_on_frame, .on_fatal = pn_on_fatal,
        .load = pn_load, .arg = &n,
    };
    s = ctl_client_create(n.base, o->router_host, o->router_port, &hello, &cbs, &n.ctl);
    if (s != DUET_OK) {
        SET_ERR("cannot start the control-plane client: %s", duet_status_str(s));
        goto err_events;
    }
    n.life.ctl = n.ctl;
    pn_arm_tick(&n, false);
    log_info("prefill node '%s': %d KV blocks of %d tokens, router %s:%u", o->node_id,
             l.n_blocks, l.block_size, o->router_host, o->router_port);
    n.exit_code = 0;
    event_base_dispatch(n.base);
    pn_abort_all(&n);
    ctl_client_destroy(n.ctl);
    if (n.exit_code != 0)
        SET_ERR("refused by the router");

err_events:
    while (!TAILQ_EMPTY(&n.reqs)) {
        preq_t *r = TAILQ_FIRST(&n.reqs);

        TAILQ_REMOVE(&n.reqs, r, link);
        free(r);
    }
    if (n.step_ev != NULL)
        event_free(n.step_ev);
    if (n.tick_ev != NULL)
        event_free(n.tick_ev);
    node_life_fini(&n.life);
    engine_destroy(n.engine);
err_kvc:
    kvc_destroy(n.kvc);
err_base:
    free(n.ho);
    free(n.peers);
    if (n.base != NULL)
        event_base_free(n.base);
    return n.exit_code;
}
