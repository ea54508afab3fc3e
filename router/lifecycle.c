/* The router's side of the request lifecycle (DESIGN.md "Request
 * lifecycle", docs/protocol.md): admission, dispatch of RESERVE and PREFILL
 * at the same moment, FIRST_TOKEN / TOKENS / FINISH, one retry on another
 * node before any token was received, and failures confined to the
 * requests of the node that failed. */
#define DUET_LOG_COMPONENT "router"
#include "router_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/log.h"

#define RREQ_MAX_ATTEMPTS 2

static void rreq_token(rreq_t *req, int32_t token);

/* --- rid table ---------------------------------------------------------- */

rreq_t *rreq_find(router_t *r, uint64_t rid)
{
    rreq_t *q;

    for (q = r->rids[rid & (RID_BUCKETS - 1)]; q != NULL; q = q->hnext)
        if (q->rid == rid)
            return q;
    return NULL;
}

static void rreq_rid_insert(router_t *r, rreq_t *req)
{
    rreq_t **b = &r->rids[req->rid & (RID_BUCKETS - 1)];

    req->hnext = *b;
    *b = req;
}

static void rreq_rid_remove(router_t *r, rreq_t *req)
{
    rreq_t **pp = &r->rids[req->rid & (RID_BUCKETS - 1)];

    while (*pp != NULL && *pp != req)
        pp = &(*pp)->hnext;
    if (*pp == req)
        *pp = req->hnext;
    req->hnext = NULL;
    req->rid = 0;
}

/* --- attempt bookkeeping ------------------------------------------------ */

/* Forget the current attempt: its rid and its nodes. ABORT goes to every
 * node of the attempt except `skip` (which already dropped it). */
static void rreq_detach(rreq_t *req, bool abort, const node_t *skip)
{
    router_t *r = req->r;

    if (req->rid == 0)
        return;
    if (req->pnode != NULL) {
        if (abort && req->pnode != skip)
            ctl_send_abort(r, req->pnode, req->rid);
        req->pnode->inflight--;
        req->pnode = NULL;
    }
    if (req->dnode != NULL) {
        if (abort && req->dnode != skip)
            ctl_send_abort(r, req->dnode, req->rid);
        req->dnode->inflight--;
        req->dnode = NULL;
    }
    rreq_rid_remove(r, req);
    free(req->early);
    req->early = NULL;
    req->nearly = 0;
    req->early_finish = false;
    req->first_seen = false;
}

static void rreq_free(rreq_t *req)
{
    if (req == NULL)
        return;
    detok_free(&req->dt);
    sbuf_free(&req->text);
    sbuf_free(&req->delta);
    free(req->early);
    free(req->prompt);
    free(req->sse_pre);
    free(req);
}

void rjob_free(rjob_t *job)
{
    if (job == NULL)
        return;
    http_detach(job);
    for (uint32_t i = 0; i < job->nseq; i++)
        rreq_free(job->seqs[i]);
    free(job->seqs);
    oai_req_release(&job->p);
    free(job);
}

/* The sequence stops for good: out of the queue or the running set, off
 * its nodes (ABORT when abort), DONE. The job stays. */
static void rreq_stop(rreq_t *req, bool abort)
{
    router_t *r = req->r;

    if (req->state == RREQ_DONE)
        return;
    if (req->state == RREQ_RUNNING) {
        TAILQ_REMOVE(&r->running, req, link);
        r->nrunning--;
    } else if (req->state == RREQ_QUEUED) {
        TAILQ_REMOVE(&r->queue, req, link);
        r->nqueued--;
    }
    rreq_detach(req, abort, NULL);
    req->state = RREQ_DONE;
    req->job->nlive--;
}

/* Fail the whole job: answer the client, abort every live sequence, free. */
static void rjob_fail(rjob_t *job, int status, const char *why, finish_reason_t reason)
{
    router_t *r = job->r;

    http_emit_failure(job, status, why);
    for (uint32_t i = 0; i < job->nseq; i++) {
        if (job->seqs[i]->state != RREQ_DONE) {
            rreq_stop(job->seqs[i], true);
            r->m.success[reason]++;
        }
    }
    rjob_free(job);
}

static void rreq_fail(rreq_t *req, int status, const char *why)
{
    log_warn("request %s (choice %d) failed: %s", req->job->id, req->index, why);
    rjob_fail(req->job, status, why, FINISH_ERROR);
}

/* The sequence ended normally. May free the job (the last one). */
static void rreq_complete(rreq_t *req, finish_reason_t reason, bool abort_nodes)
{
    router_t *r = req->r;
    rjob_t *job = req->job;

    if (reason != FINISH_STOP || !req->dt.stopped) {
        sbuf_clear(&req->delta);
        if (detok_flush(&req->dt, &req->delta) == DUET_OK && req->delta.n)
            http_emit_token(req, req->delta.p, req->delta.n);
    }
    rreq_stop(req, abort_nodes);
    req->reason = reason;
    job->completion_tokens += req->ncompletion;
    http_emit_seq_finish(req);
    r->m.success[reason]++;
    histogram_observe(&r->m.e2e, (double)(clock_now_ns() - job->t_arrive) * 1e-9);
    if (job->nlive == 0) {
        http_emit_job_done(job);
        rjob_free(job);
    }
}

/* --- dispatch ------------------------------------------------------------ */

static duet_status_t rreq_dispatch(rreq_t *req)
{
    router_t *r = req->r;
    node_t *p = NULL, *d = NULL;
    uint32_t bs;

    p = registry_pick(r, NODE_PREFILL, req, req->failed);
    d = registry_pick(r, NODE_DECODE, req, req->failed);
    /* one failed node is excluded; if that leaves no pair, allow it for the
     * role that did not fail */
    if (p == NULL && req->failed != NULL && req->failed->role != NODE_PREFILL)
        p = registry_pick(r, NODE_PREFILL, req, NULL);
    if (d == NULL && req->failed != NULL && req->failed->role != NODE_DECODE)
        d = registry_pick(r, NODE_DECODE, req, NULL);
    if (p == NULL || d == NULL) {
        p = registry_pick(r, NODE_COLOCATED, req, req->failed);
        d = NULL;
        if (p == NULL)
            return DUET_ERR_NOT_FOUND;
    }
    req->rid = ++r->next_rid;
    req->attempts++;
    req->pnode = p;
    req->dnode = d;
    req->first_seen = false;
    rreq_rid_insert(r, req);
    p->inflight++;
    p->sent_tokens += req->nprompt;
    registry_note_prefix(p, req->prompt, req->nprompt);
    if (d != NULL) {
        d->inflight++;
        bs = d->block_size ? d->block_size : 16;
        d->sent_blocks += (uint32_t)((req->nprompt + bs) / bs);
        /* both at once: the decode's GRANT overlaps the prefill's queueing */
        ctl_send_reserve(r, d, req);
    }
    ctl_send_prefill(r, p, req);
    log_req(LOG_LEVEL_DEBUG, req->rid, "%s/%d: prefill %s, decode %s, %zu prompt tokens",
            req->job->id, req->index, p->id, d ? d->id : "(colocated)", req->nprompt);
    return DUET_OK;
}

/* Move a sequence into the running set and dispatch it. false when that
 * failed the job (which is then freed). */
static bool rreq_run(rreq_t *req)
{
    router_t *r = req->r;

    req->state = RREQ_RUNNING;
    TAILQ_INSERT_TAIL(&r->running, req, link);
    r->nrunning++;
    req->t_dispatch = clock_now_ns();
    histogram_observe(&r->m.queue, (double)(req->t_dispatch - req->job->t_arrive) * 1e-9);
    if (rreq_dispatch(req) != DUET_OK) {
        rreq_fail(req, 503, "no node available to serve the request");
        return false;
    }
    return true;
}

/* Dispatch queued sequences while there is room. Entry points call it last;
 * it does not nest. */
static void lifecycle_pump(router_t *r)
{
    if (r->pumping)
        return;
    r->pumping = true;
    while (r->nqueued > 0 && r->nrunning < (size_t)r->cfg.max_inflight) {
        rreq_t *req = TAILQ_FIRST(&r->queue);

        TAILQ_REMOVE(&r->queue, req, link);
        r->nqueued--;
        rreq_run(req);
    }
    r->pumping = false;
}

void rjob_admit(router_t *r, rjob_t *job)
{
    size_t room, need_queue;

    if (!registry_ready(r)) {
        http_emit_failure(job, 503, "no prefill and decode (or colocated) nodes are registered");
        rjob_free(job);
        return;
    }
    room = r->nqueued == 0 && r->nrunning < (size_t)r->cfg.max_inflight ?
           (size_t)r->cfg.max_inflight - r->nrunning : 0;
    need_queue = job->nseq > room ? job->nseq - room : 0;
    if (r->nqueued + need_queue > (size_t)r->cfg.max_queue) {
        http_emit_failure(job, 429, "the server is at capacity (admission queue full); "
                          "retry later");
        rjob_free(job);
        return;
    }
    r->m.prompt_tokens += job->prompt_tokens;
    job->nlive = job->nseq;
    /* queue first, so a dispatch failure that frees the job leaves nothing
     * of it behind */
    for (uint32_t i = 0; i < job->nseq; i++) {
        if (i >= room) {
            job->seqs[i]->state = RREQ_QUEUED;
            TAILQ_INSERT_TAIL(&r->queue, job->seqs[i], link);
            r->nqueued++;
        }
    }
    for (uint32_t i = 0; i < job->nseq && i < room; i++)
        if (!rreq_run(job->seqs[i]))
            break;
    lifecycle_pump(r);
}

/* --- retry and failure --------------------------------------------------- */

/* The current attempt failed because of `bad` (NULL: unknown). Retry once on
 * another node while no token has been received, else fail the job. */
static void rreq_attempt_failed(rreq_t *req, node_t *bad, const char *why)
{
    bool can_retry = req->attempts < RREQ_MAX_ATTEMPTS && !req->first_seen &&
                     req->ncompletion == 0;

    if (!can_retry) {
        rreq_fail(req, 503, why);
        return;
    }
    log_info("request %s (choice %d): %s; retrying on another node", req->job->id,
             req->index, why);
    rreq_detach(req, true, bad);
    req->failed = bad;
    if (rreq_dispatch(req) != DUET_OK)
        rreq_fail(req, 503, why);
}

void rreq_on_failure(router_t *r, node_t *from, uint64_t rid, const char *why)
{
    rreq_t *req = rreq_find(r, rid);

    if (req == NULL || (from != req->pnode && from != req->dnode)) {
        log_debug("ignoring a failure for unknown request %llu from %s: %s",
                  (unsigned long long)rid, from->id, why);
        return;
    }
    rreq_attempt_failed(req, from, why);
    lifecycle_pump(r);
}

void lifecycle_node_gone(router_t *r, node_t *node)
{
    uint64_t *rids;
    size_t n = 0, cap = r->nrunning;
    rreq_t *req;

    if (cap == 0)
        return;
    rids = malloc(cap * sizeof(*rids));
    if (rids == NULL) {
        log_error("out of memory failing the requests of node %s", node->id);
        return;
    }
    TAILQ_FOREACH(req, &r->running, link)
        if (n < cap && req->rid != 0 && (req->pnode == node || req->dnode == node))
            rids[n++] = req->rid;
    /* by rid: failing one sequence may free its job and its siblings */
    for (size_t i = 0; i < n; i++) {
        req = rreq_find(r, rids[i]);
        if (req != NULL && (req->pnode == node || req->dnode == node)) {
            char why[128];

            snprintf(why, sizeof(why), "node %s went away", node->id);
            rreq_attempt_failed(req, node, why);
        }
    }
    free(rids);
    lifecycle_pump(r);
}

void lifecycle_shutdown(router_t *r)
{
    rreq_t *req;

    r->pumping = true;   /* nothing new starts */
    while ((req = TAILQ_FIRST(&r->running)) != NULL ||
           (req = TAILQ_FIRST(&r->queue)) != NULL)
        rjob_fail(req->job, 503, "the router is shutting down", FINISH_ABORT);
}

void rjob_client_gone(rjob_t *job)
{
    router_t *r = job->r;

    log_info("request %s: client went away; aborting", job->id);
    job->hreq = NULL;
    job->hconn = NULL;
    rjob_fail(job, 499, "client went away", FINISH_ABORT);
    lifecycle_pump(r);
}

/* --- tokens ------------------------------------------------------------- */

/* Append the decimal digits of v to p; returns the end. */
static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int k = 0;

    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (k > 0)
        *p++ = tmp[--k];
    return p;
}

/* One --token-trace line, `rid read_ns queued_ns`, without printf (it runs
 * for every token of every stream). */
static void rreq_trace(FILE *f, uint64_t rid, uint64_t t_read, uint64_t queued)
{
    char line[64], *p = line;

    p = put_u64(p, rid);
    *p++ = ' ';
    p = put_u64(p, t_read);
    *p++ = ' ';
    p = put_u64(p, queued);
    *p++ = '\n';
    fwrite(line, 1, (size_t)(p - line), f);
}

/* One generated token, in order. May complete the sequence and free its
 * job. */
static void rreq_token(rreq_t *req, int32_t token)
{
    router_t *r = req->r;
    uint64_t now = clock_now_ns();
    bool stopped = false;

    req->ncompletion++;
    r->m.generation_tokens++;
    if (req->t_last != 0)
        histogram_observe(&r->m.itl, (double)(now - req->t_last) * 1e-9);
    req->t_last = now;
    sbuf_clear(&req->delta);
    if (detok_push(&req->dt, token, &req->delta, &stopped) != DUET_OK) {
        rreq_fail(req, 502, "a node sent a token outside the vocabulary");
        return;
    }
    if (req->delta.n) {
        uint64_t t_read = r->t_read != 0 ? r->t_read : now;
        uint64_t queued;

        http_emit_token(req, req->delta.p, req->delta.n);
        queued = clock_now_ns();
        histogram_observe(&r->m.token_delay, (double)(queued - t_read) * 1e-9);
        if (req->t_read_last != 0)
            histogram_observe(&r->m.node_itl, (double)(t_read - req->t_read_last) * 1e-9);
        req->t_read_last = t_read;
        if (r->token_trace != NULL)
            rreq_trace(r->token_trace, req->rid, t_read, queued);
    }
    if (stopped)
        rreq_complete(req, FINISH_STOP, true);
    else if (!req->job->p.ignore_eos && rtok_is_eos(r->tok, token))
        rreq_complete(req, FINISH_STOP, false);
    else if (req->ncompletion >= req->max_tokens)
        rreq_complete(req, FINISH_LENGTH, false);
}

void rreq_on_first_token(router_t *r, node_t *from, uint64_t rid, int32_t token,
                         uint64_t kv_bytes, double kv_s)
{
    rreq_t *req = rreq_find(r, rid);
    uint64_t nearly;
    int32_t *early;
    bool early_finish;
    finish_reason_t early_reason;
    node_t *dnode;

    if (req == NULL || from != req->pnode || req->first_seen) {
        log_debug("ignoring FIRST_TOKEN for request %llu from %s", (unsigned long long)rid,
                  from->id);
        return;
    }
    req->first_seen = true;
    req->t_first = clock_now_ns();
    histogram_observe(&r->m.ttft, (double)(req->t_first - req->job->t_arrive) * 1e-9);
    r->m.kv_transfer_bytes += kv_bytes;
    if (kv_s >= 0 && req->dnode != NULL)
        histogram_observe(&r->m.kv_transfer, kv_s);
    if (req->dnode != NULL) {
        /* the prefill node is done with this request */
        req->pnode->inflight--;
        req->pnode = NULL;
    }
    dnode = req->dnode;
    early = req->early;
    nearly = req->nearly;
    early_finish = req->early_finish;
    early_reason = req->early_reason;
    req->early = NULL;
    req->nearly = 0;
    req->early_finish = false;
    /* rreq_token may end the sequence or free the job: re-find by rid */
    rreq_token(req, token);
    for (uint64_t i = 0; i < nearly && rreq_find(r, rid) == req; i++)
        rreq_token(req, early[i]);
    free(early);
    if (early_finish && rreq_find(r, rid) == req)
        rreq_on_finish(r, dnode, rid, early_reason, "");
    lifecycle_pump(r);
}

void rreq_on_token(router_t *r, node_t *from, uint64_t rid, int32_t token)
{
    rreq_t *req = rreq_find(r, rid);
    node_t *gen;

    if (req == NULL)
        return;   /* finished or aborted already */
    gen = req->dnode != NULL ? req->dnode : req->pnode;
    if (from != gen) {
        log_debug("ignoring TOKENS for request %llu from %s", (unsigned long long)rid, from->id);
        return;
    }
    if (!req->first_seen) {
        int32_t *e;

        /* decode's tokens overtook the prefill's FIRST_TOKEN */
        if (req->nearly >= RREQ_MAX_EARLY) {
            rreq_attempt_failed(req, from, "too many tokens before FIRST_TOKEN");
            lifecycle_pump(r);
            return;
        }
        e = realloc(req->early, (req->nearly + 1) * sizeof(*e));
        if (e == NULL) {
            rreq_fail(req, 500, "out of memory");
            lifecycle_pump(r);
            return;
        }
        req->early = e;
        req->early[req->nearly++] = token;
        return;
    }
    rreq_token(req, token);
    lifecycle_pump(r);
}

void rreq_on_finish(router_t *r, node_t *from, uint64_t rid, finish_reason_t reason,
                    const char *msg)
{
    rreq_t *req = rreq_find(r, rid);
    char why[300];

    if (req == NULL || (from != req->pnode && from != req->dnode))
        return;   /* the router finished it already (EOS, length, stop) */
    if (reason == FINISH_ERROR || reason == FINISH_ABORT) {
        snprintf(why, sizeof(why), "node %s ended the request (%s)%s%s", from->id,
                 finish_reason_str(reason), msg && msg[0] ? ": " : "", msg ? msg : "");
        rreq_attempt_failed(req, from, why);
    } else if (!req->first_seen) {
        req->early_finish = true;
        req->early_reason = reason;
        return;
    } else {
        rreq_complete(req, reason, false);
    }
    lifecycle_pump(r);
}
