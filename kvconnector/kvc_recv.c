/* KV connector, decode side: grants (leases), NACK, LAYER_DONE / KV_END
 * bookkeeping, lease expiry and the abort handshake that decides when the
 * granted blocks can go back to the caller. */
#define DUET_LOG_COMPONENT "kvc"

#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "kvconnector/kvc_int.h"

typedef enum { RREQ_RECV, RREQ_ABORTING, RREQ_FINAL } rreq_state_t;

typedef struct {
    kvc_rhdr_t    h;
    rreq_state_t  state;
    duet_status_t status;
    uint64_t      node;             /* the prefill node granted to */
    int32_t       n_tokens, nblocks;
    uint8_t      *granted;          /* granted blocks: a bitmap over the slab's */
    uint64_t      t_start, deadline_ns, abort_deadline_ns;
    int           nsend;            /* prefill ranks that write to this rank */
    kvc_conn_t   *senders[KVC_MAX_TP];
    int32_t       heads[KVC_MAX_TP][2]; /* per sender: first head it writes here, count */
    bool          acked[KVC_MAX_TP];    /* sender will write no more */
    bool          ended[KVC_MAX_TP];    /* KV_END seen from sender */
    int32_t      *tokens;           /* tokens received, [n_layers][nsend] */
    uint64_t      rx_bytes[KVC_MAX_TP]; /* DATA payload copied in, per sender */
    int           complete;         /* (layer, sender) pairs with all tokens */
    int           nended;
    kvc_end_t     end;
} rreq_t;

static rreq_t *rreq_get(kvc_t *kvc, uint64_t id)
{
    return (rreq_t *)kvc_rmap_get(&kvc->reqs, id);
}

static void rreq_free(kvc_t *kvc, rreq_t *r)
{
    kvc_rmap_del(&kvc->reqs, &r->h);
    free(r->granted);
    free(r->tokens);
    free(r);
}

static void send_small(kvc_conn_t *c, int type, uint64_t req, duet_status_t reason)
{
    kvc_msg_abort_t *m = kvc_msg_new(sizeof(*m), type, req);

    if (m == NULL)
        return;
    m->reason = reason;
    kvc_am_send(c, m, sizeof(*m), NULL);
}

static void rreq_finish(kvc_t *kvc, rreq_t *r, duet_status_t status)
{
    r->state = RREQ_FINAL;
    r->status = status;
    kvc->stats.seconds += (double)(clock_now_ns() - r->t_start) * 1e-9;
    if (status == DUET_OK) {
        kvc->stats.transfers++;
        kvc->stats.bytes += (uint64_t)kvc->p.layout.n_layers * (uint64_t)r->nblocks *
                            kv_block_bytes(&kvc->p.layout);
    } else {
        kvc->stats.failures++;
    }
    log_req(LOG_LEVEL_DEBUG, r->h.id, "KV receive ends: %s", duet_status_str(status));
    if (kvc->p.done_cb)
        kvc->p.done_cb(kvc->p.done_arg, r->h.id, status);
}

static void rreq_check(kvc_t *kvc, rreq_t *r)
{
    if (r->state == RREQ_RECV && r->nended == r->nsend &&
        r->complete == r->nsend * kvc->p.layout.n_layers) {
        rreq_finish(kvc, r, DUET_OK);
    } else if (r->state == RREQ_ABORTING) {
        for (int s = 0; s < r->nsend; s++)
            if (!r->acked[s])
                return;
        rreq_finish(kvc, r, r->status);
    }
}

/* Stop accepting; ask every sender that may still write to stop and answer.
 * The blocks are back with the caller once all have answered (or died). */
static void rreq_abort(kvc_t *kvc, rreq_t *r, duet_status_t status)
{
    if (r->state != RREQ_RECV)
        return;
    r->state = RREQ_ABORTING;
    r->status = status;
    r->abort_deadline_ns = clock_now_ns() + (uint64_t)kvc->p.abort_timeout_ms * 1000000ull;
    log_req(LOG_LEVEL_INFO, r->h.id, "KV receive aborting: %s", duet_status_str(status));
    for (int s = 0; s < r->nsend; s++) {
        if (!kvc_conn_alive(r->senders[s]))
            r->acked[s] = true;
        else if (!r->acked[s])
            send_small(r->senders[s], KVC_MSG_ABORT, r->h.id, status);
    }
    rreq_check(kvc, r);
}

duet_status_t kvc_grant(kvc_t *kvc, uint64_t prefill_node, uint64_t req, int32_t n_tokens,
                        const int32_t *blocks, int32_t nblocks, uint32_t lease_ms)
{
    const kv_layout_t *l = &kvc->p.layout;
    kvc_conn_t *senders[KVC_MAX_TP], *all[KVC_MAX_TP];
    int32_t heads[KVC_MAX_TP][2];
    kvc_conn_t *any = NULL;
    int nsend = 0, p;
    rreq_t *r;

    if (kvc->p.role != KVC_ROLE_DECODE || n_tokens <= 0 || blocks == NULL ||
        nblocks != (n_tokens + l->block_size - 1) / l->block_size || lease_ms == 0)
        return DUET_ERR_INVALID;
    for (int32_t i = 0; i < nblocks; i++)
        if (blocks[i] < 0 || blocks[i] >= l->n_blocks)
            return DUET_ERR_INVALID;
    if (rreq_get(kvc, req))
        return DUET_ERR_BUSY;
    for (int i = 0; i < kvc->nconns && any == NULL; i++)
        if (kvc->conns[i]->state == KVC_CONN_READY && kvc->conns[i]->peer.node_id == prefill_node)
            any = kvc->conns[i];
    if (any == NULL)
        return DUET_ERR_NOT_FOUND;
    p = any->peer.tp_size;
    for (int pr = 0; pr < p; pr++) {
        int32_t src, dst, cnt;

        all[pr] = kvc_conn_find(kvc, prefill_node, pr);
        if (all[pr] == NULL) {
            log_req(LOG_LEVEL_WARN, req, "prefill node %llu rank %d is not connected",
                    (unsigned long long)prefill_node, pr);
            return DUET_ERR_NOT_FOUND;
        }
        kvc_tp_route(kvc->p.n_kv_heads_total, p, pr, kvc->p.tp_size, kvc->p.tp_rank, &src,
                     &dst, &cnt);
        if (cnt > 0) {
            heads[nsend][0] = dst;
            heads[nsend][1] = cnt;
            senders[nsend++] = all[pr];
        }
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return DUET_ERR_NOMEM;
    r->granted = calloc((size_t)l->n_blocks / 8 + 1, 1);
    r->tokens = calloc((size_t)l->n_layers * (size_t)nsend, sizeof(int32_t));
    if (r->granted == NULL || r->tokens == NULL) {
        free(r->granted);
        free(r->tokens);
        free(r);
        return DUET_ERR_NOMEM;
    }
    for (int32_t i = 0; i < nblocks; i++)
        r->granted[blocks[i] / 8] |= (uint8_t)(1u << (blocks[i] % 8));
    r->h.id = req;
    r->state = RREQ_RECV;
    r->status = DUET_INPROGRESS;
    r->node = prefill_node;
    r->n_tokens = n_tokens;
    r->nblocks = nblocks;
    r->t_start = clock_now_ns();
    r->deadline_ns = r->t_start + (uint64_t)lease_ms * 1000000ull;
    r->nsend = nsend;
    memcpy(r->senders, senders, (size_t)nsend * sizeof(senders[0]));
    memcpy(r->heads, heads, (size_t)nsend * sizeof(heads[0]));
    kvc_rmap_add(&kvc->reqs, &r->h);
    /* every rank of the prefill node learns the grant (those that send us
     * nothing need it to finish); only senders write */
    for (int s = 0; s < p; s++) {
        size_t len = sizeof(kvc_msg_grant_t) + (size_t)nblocks * sizeof(int32_t);
        kvc_msg_grant_t *g = kvc_msg_new(len, KVC_MSG_GRANT, req);

        if (g == NULL) {
            rreq_abort(kvc, r, DUET_ERR_NOMEM);
            return DUET_OK;  /* reported by kvc_recv_kv_cache */
        }
        g->n_tokens = n_tokens;
        g->nblocks = nblocks;
        g->lease_ms = lease_ms;
        memcpy(g + 1, blocks, (size_t)nblocks * sizeof(int32_t));
        kvc_am_send(all[s], g, len, NULL);
    }
    return DUET_OK;
}

duet_status_t kvc_nack(kvc_t *kvc, uint64_t prefill_node, uint64_t req)
{
    int sent = 0;

    if (kvc->p.role != KVC_ROLE_DECODE)
        return DUET_ERR_INVALID;
    for (int i = 0; i < kvc->nconns; i++) {
        kvc_conn_t *c = kvc->conns[i];

        if (c->state == KVC_CONN_READY && c->peer.node_id == prefill_node) {
            send_small(c, KVC_MSG_NACK, req, DUET_ERR_NO_RESOURCE);
            sent++;
        }
    }
    if (sent == 0)
        return DUET_ERR_NOT_FOUND;
    kvc->stats.nacks++;
    return DUET_OK;
}

duet_status_t kvc_recv_kv_cache(kvc_t *kvc, uint64_t req, kvc_end_t *end_p)
{
    rreq_t *r = rreq_get(kvc, req);
    duet_status_t s;

    if (r == NULL || kvc->p.role != KVC_ROLE_DECODE)
        return DUET_ERR_NOT_FOUND;
    if (r->state != RREQ_FINAL)
        return DUET_INPROGRESS;
    s = r->status;
    if (s == DUET_OK && end_p)
        *end_p = r->end;
    rreq_free(kvc, r);
    return s;
}

duet_status_t kvc_recv_abort(kvc_t *kvc, uint64_t req)
{
    rreq_t *r = rreq_get(kvc, req);

    if (r == NULL)
        return DUET_ERR_NOT_FOUND;
    rreq_abort(kvc, r, DUET_ERR_CANCELED);
    return DUET_OK;
}

static int sender_index(const rreq_t *r, const kvc_conn_t *c)
{
    for (int s = 0; s < r->nsend; s++)
        if (r->senders[s] == c)
            return s;
    return -1;
}

void kvc_recv_on_msg(kvc_t *kvc, kvc_conn_t *c, const kvc_hdr_t *h, const void *data,
                     size_t len)
{
    rreq_t *r = rreq_get(kvc, h->req);
    int s = r ? sender_index(r, c) : -1;

    if (h->type == KVC_MSG_ABORT && len == sizeof(kvc_msg_abort_t)) {
        if (r == NULL || s < 0 || r->state == RREQ_FINAL)
            return;   /* an answer to an abort already settled */
        r->acked[s] = true;
        if (r->state == RREQ_RECV) {
            int32_t reason = ((const kvc_msg_abort_t *)data)->reason;

            rreq_abort(kvc, r, reason == DUET_ERR_TIMEOUT || reason == DUET_ERR_PEER ||
                               reason == DUET_ERR_NO_RESOURCE ? (duet_status_t)reason
                                                               : DUET_ERR_CANCELED);
        }
        rreq_check(kvc, r);
        return;
    }
    if (r == NULL || s < 0) {
        kvc->stats.rejected++;
        log_req(LOG_LEVEL_WARN, h->req, "rejected message type %d: unknown request or sender",
                h->type);
        return;
    }
    if (r->state != RREQ_RECV)
        return;   /* late message for a request being aborted */
    if (h->type == KVC_MSG_LAYER_DONE && len == sizeof(kvc_msg_layer_t)) {
        const kvc_msg_layer_t *m = data;
        int32_t nl = m->n_layers == 0 ? 1 : m->n_layers;

        if (m->layer < 0 || nl < 0 || m->layer >= kvc->p.layout.n_layers ||
            nl > kvc->p.layout.n_layers - m->layer || m->tok0 < 0 ||
            m->tok1 <= m->tok0 || m->tok1 > r->n_tokens)
            goto reject;
        if (r->rx_bytes[s] < m->data_bytes) {
            /* DATA sent before this message is missing: some was dropped */
            log_req(LOG_LEVEL_WARN, h->req, "layer %d done, but %llu of %llu bytes sent "
                    "arrived", m->layer, (unsigned long long)r->rx_bytes[s],
                    (unsigned long long)m->data_bytes);
            rreq_abort(kvc, r, DUET_ERR_PROTO);
            return;
        }
        for (int32_t l = m->layer; l < m->layer + nl; l++)   /* all or nothing */
            if (r->tokens[l * r->nsend + s] + (m->tok1 - m->tok0) > r->n_tokens)
                goto reject;
        for (int32_t l = m->layer; l < m->layer + nl; l++) {
            int32_t *t = &r->tokens[l * r->nsend + s];

            *t += m->tok1 - m->tok0;
            if (*t == r->n_tokens)
                r->complete++;
        }
        rreq_check(kvc, r);
        return;
    }
    if (h->type == KVC_MSG_KV_END && len >= sizeof(kvc_msg_end_t)) {
        const kvc_msg_end_t *m = data;

        if (m->state_len > KVC_STATE_MAX || len != sizeof(*m) + m->state_len || r->ended[s])
            goto reject;
        r->ended[s] = true;
        r->nended++;
        r->end.first_token = m->first_token;
        r->end.state_len = m->state_len;
        memcpy(r->end.state, m + 1, m->state_len);
        rreq_check(kvc, r);
        return;
    }
reject:
    kvc->stats.rejected++;
    log_req(LOG_LEVEL_WARN, h->req, "rejected a malformed or out-of-range message type %d "
            "(%zu bytes)", h->type, len);
}

/* Is [off, off + len) of the slab inside one layer, inside blocks granted
 * to r, and inside the heads sender s writes here? A sender of every head
 * may write K and V of consecutive blocks in one run; one of some heads
 * writes within one K or V half of one block. */
static bool run_granted(const kvc_t *kvc, const rreq_t *r, int s, uint64_t off, uint64_t len)
{
    const kv_layout_t *l = &kvc->p.layout;
    uint64_t lb = kv_layer_bytes(l), bb = kv_block_bytes(l), in = off % lb;
    uint64_t half = kv_half_bytes(l), hb = kv_head_bytes(l), inh = in % bb % half;

    if (len == 0 || off / lb >= (uint64_t)l->n_layers || len > lb - in)
        return false;
    /* (len <= lb here: inh + len cannot wrap) */
    if (r->heads[s][1] < l->n_kv_heads &&
        (inh < (uint64_t)r->heads[s][0] * hb ||
         inh + len > (uint64_t)(r->heads[s][0] + r->heads[s][1]) * hb))
        return false;
    for (uint64_t b = in / bb; b <= (in + len - 1) / bb; b++)
        if (!(r->granted[b / 8] & (1u << (b % 8))))
            return false;
    return true;
}

void kvc_recv_on_data(kvc_t *kvc, kvc_conn_t *c, const void *hdr, size_t hlen,
                      const void *payload, size_t len)
{
    kvc_msg_data_t m = {0};
    kvc_run_t runs[KVC_DATA_RUNS];
    uint64_t total = 0;
    rreq_t *r = NULL;
    int s = -1;

    if (hlen >= sizeof(m))
        memcpy(&m, hdr, sizeof(m));
    if (hlen < sizeof(m) || m.h.magic != KVC_WIRE_MAGIC || m.h.type != KVC_MSG_DATA ||
        m.nruns == 0 || m.nruns > KVC_DATA_RUNS ||
        hlen != sizeof(m) + (size_t)m.nruns * sizeof(kvc_run_t))
        goto reject;
    r = rreq_get(kvc, m.h.req);
    s = r ? sender_index(r, c) : -1;
    if (r == NULL || s < 0)
        goto reject;
    if (r->state != RREQ_RECV)
        return;   /* late data for a request being aborted */
    memcpy(runs, (const char *)hdr + sizeof(m), (size_t)m.nruns * sizeof(kvc_run_t));
    /* every run checked before any byte is written */
    for (uint32_t i = 0; i < m.nruns; i++) {
        if (runs[i].len > len - total || !run_granted(kvc, r, s, runs[i].off, runs[i].len))
            goto reject;
        total += runs[i].len;
    }
    if (total != len)
        goto reject;
    total = 0;
    for (uint32_t i = 0; i < m.nruns; i++) {
        kvc_copy_nt((char *)kvc->slab + runs[i].off, (const char *)payload + total,
                    runs[i].len);
        total += runs[i].len;
    }
    kvc_copy_fence();
    r->rx_bytes[s] += total;
    kvc->stats.data_msgs++;
    return;
reject:
    if (kvc_log_rejected(kvc))
        log_req(LOG_LEVEL_WARN, m.h.req, "rejected a DATA message (%zu + %zu bytes): "
                "malformed, outside the grant, or for an unknown request or sender "
                "(%llu rejected in all)", hlen, len, (unsigned long long)kvc->stats.rejected);
}

int kvc_recv_progress(kvc_t *kvc, uint64_t now_ns)
{
    kvc_rhdr_t *h;
    int n = 0;

    for (h = kvc->reqs.list.next; h != &kvc->reqs.list; h = h->next) {
        rreq_t *r = (rreq_t *)h;

        if (r->state == RREQ_RECV && now_ns > r->deadline_ns) {
            kvc->stats.expired++;
            log_req(LOG_LEVEL_WARN, r->h.id, "grant expired");
            rreq_abort(kvc, r, DUET_ERR_TIMEOUT);
            n++;
        } else if (r->state == RREQ_ABORTING && now_ns > r->abort_deadline_ns) {
            log_req(LOG_LEVEL_WARN, r->h.id, "no abort answer from prefill node %llu in %u ms; "
                    "releasing the blocks", (unsigned long long)r->node,
                    kvc->p.abort_timeout_ms);
            rreq_finish(kvc, r, r->status);
            n++;
        }
    }
    return n;
}

void kvc_recv_conn_failed(kvc_t *kvc, kvc_conn_t *conn)
{
    kvc_rhdr_t *h;

    for (h = kvc->reqs.list.next; h != &kvc->reqs.list; h = h->next) {
        rreq_t *r = (rreq_t *)h;
        int s = sender_index(r, conn);

        if (s < 0 || r->state == RREQ_FINAL)
            continue;
        r->acked[s] = true;
        if (r->state == RREQ_RECV)
            rreq_abort(kvc, r, DUET_ERR_PEER);
        rreq_check(kvc, r);
    }
}

void kvc_recv_destroy(kvc_t *kvc)
{
    while (kvc->reqs.list.next != &kvc->reqs.list)
        rreq_free(kvc, (rreq_t *)kvc->reqs.list.next);
}
