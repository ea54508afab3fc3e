/* KV connector, prefill side: queue layers, match them with grants, put each
 * decode rank's head slice into its granted blocks, flush, LAYER_DONE, KV_END,
 * and the abort paths. */
#define DUET_LOG_COMPONENT "kvc"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "kvconnector/kvc_int.h"

typedef struct {
    int32_t  layer, tok0, tok1, nblocks;
    int32_t *blocks;            /* local block ids, [nblocks] */
} sjob_t;

typedef struct {
    kvc_conn_t *conn;
    bool        expected;       /* this decode rank needs heads from us */
    bool        granted, end_sent;
    int32_t     n_tokens, nblocks;
    int32_t    *blocks;         /* granted remote block ids, [nblocks] */
    int         job;            /* next job to put */
    int32_t     seg;            /* next segment of that job: block * 2 + kv */
    size_t      off;            /* bytes of the run at seg already put (staging) */
    uint64_t    data_bytes;     /* DATA payload bytes sent (conn->am_data) */
} sdest_t;

typedef enum { SREQ_ACTIVE, SREQ_DRAIN, SREQ_FINAL } sreq_state_t;

typedef struct {
    kvc_rhdr_t    h;
    sreq_state_t  state;
    duet_status_t status;
    bool          caller_known; /* created by the caller, not by a GRANT */
    bool          ended, bound;
    int32_t       first_token;
    uint32_t      state_len;
    uint8_t       end_state[KVC_STATE_MAX];
    uint64_t      node;         /* the decode node it goes to */
    int           ndest;
    sdest_t       dest[KVC_MAX_TP];
    sjob_t       *jobs;
    int           njobs, capjobs;
    int           outstanding;  /* puts, flushes, messages not completed */
    uint64_t      t_start, bytes;
} sreq_t;

typedef struct {
    kvc_t  *kvc;
    sreq_t *r;
    size_t  len;
    int     stage;              /* staging buffer to free, or -1 */
} put_ctx_t;

typedef struct {
    sreq_t *r;
    int     dest;
    int     kind;               /* KVC_MSG_LAYER_DONE or KVC_MSG_ABORT */
    int32_t layer, tok0, tok1;
    int32_t n_layers;           /* LAYER_DONE: layers from `layer` */
    uint64_t data_bytes;        /* LAYER_DONE: the dest's data_bytes */
} flush_ctx_t;

/* A DATA message: its AM header (the message struct, then the runs) and
 * the payload as an iov over the slab, sent without a copy. */
struct kvc_dmsg {
    kvc_t          *kvc;
    sreq_t         *r;
    size_t          bytes;
    int             stage;      /* the staging buffer the runs are in, or -1 */
    uint32_t        n;
    kvc_msg_data_t  hdr;
    kvc_run_t       runs[KVC_DATA_RUNS];   /* right after hdr: one AM header */
    ucp_dt_iov_t    iov[KVC_DATA_RUNS];
};

_Static_assert(offsetof(struct kvc_dmsg, runs) ==
               offsetof(struct kvc_dmsg, hdr) + sizeof(kvc_msg_data_t),
               "the runs follow the DATA header");

static sreq_t *sreq_get(kvc_t *kvc, uint64_t id)
{
    return (sreq_t *)kvc_rmap_get(&kvc->reqs, id);
}

static sreq_t *sreq_new(kvc_t *kvc, uint64_t id)
{
    sreq_t *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->h.id = id;
    r->state = SREQ_ACTIVE;
    r->status = DUET_INPROGRESS;
    r->t_start = clock_now_ns();
    kvc_rmap_add(&kvc->reqs, &r->h);
    return r;
}

static void sreq_free(kvc_t *kvc, sreq_t *r)
{
    kvc_rmap_del(&kvc->reqs, &r->h);
    for (int i = 0; i < r->njobs; i++)
        free(r->jobs[i].blocks);
    for (int j = 0; j < r->ndest; j++)
        free(r->dest[j].blocks);
    free(r->jobs);
    free(r);
}

static void send_abort_msg(kvc_conn_t *conn, uint64_t req, duet_status_t reason, int *outst)
{
    kvc_msg_abort_t *m = kvc_msg_new(sizeof(*m), KVC_MSG_ABORT, req);

    if (m == NULL)
        return;
    m->reason = reason;
    kvc_am_send(conn, m, sizeof(*m), outst);
}

static void sreq_fail(kvc_t *kvc, sreq_t *r, duet_status_t status);

static void flush_done(void *request, ucs_status_t status, void *user_data)
{
    flush_ctx_t *f = user_data;
    sreq_t *r = f->r;
    kvc_conn_t *conn = r->dest[f->dest].conn;

    if (status != UCS_OK && f->kind == KVC_MSG_KV_END && r->state == SREQ_ACTIVE) {
        /* KV_END may not have left: the request is not delivered, whatever
         * order the endpoint error and this completion come in */
        log_req(LOG_LEVEL_WARN, r->h.id, "flush after KV_END failed: %s",
                ucs_status_string(status));
        sreq_fail(conn->kvc, r, DUET_ERR_PEER);
    }
    if (status == UCS_OK && f->kind == KVC_MSG_LAYER_DONE && r->state == SREQ_ACTIVE) {
        kvc_msg_layer_t *m = kvc_msg_new(sizeof(*m), KVC_MSG_LAYER_DONE, r->h.id);

        if (m) {
            m->layer = f->layer;
            m->tok0 = f->tok0;
            m->tok1 = f->tok1;
            m->n_layers = f->n_layers;
            m->data_bytes = f->data_bytes;
            kvc_am_send(conn, m, sizeof(*m), &r->outstanding);
        }
    } else if (status == UCS_OK && f->kind == KVC_MSG_ABORT) {
        send_abort_msg(conn, r->h.id, r->status, &r->outstanding);
    }
    r->outstanding--;
    free(f);
    if (request)
        ucp_request_free(request);
}

/* Flush conn's endpoint (every put issued so far lands remotely), then send
 * LAYER_DONE or ABORT. */
static void flush_then(kvc_t *kvc, sreq_t *r, int dest, int kind, const sjob_t *job,
                       int32_t n_layers)
{
    ucp_request_param_t prm = {0};
    flush_ctx_t *f = calloc(1, sizeof(*f));
    void *q;

    if (f == NULL)
        return;
    f->r = r;
    f->dest = dest;
    f->kind = kind;
    if (job) {
        f->layer = job->layer;
        f->tok0 = job->tok0;
        f->tok1 = job->tok1;
        f->n_layers = n_layers;
        f->data_bytes = r->dest[dest].data_bytes;
    }
    r->outstanding++;
    if (kind != KVC_MSG_KV_END && r->dest[dest].conn->rptr != NULL) {
        /* the writes were copies, done when they returned: nothing to flush,
         * only our stores (non-temporal ones included) to order before the
         * message */
        kvc_copy_fence();
        flush_done(NULL, UCS_OK, f);
        return;
    }
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    prm.cb.send = flush_done;
    prm.user_data = f;
    /* LAYER_DONE and ABORT follow the puts: flush the put endpoint;
     * KV_END went on the message endpoint: flush that one */
    q = ucp_ep_flush_nbx(kind == KVC_MSG_KV_END ? r->dest[dest].conn->ep
                                                : kvc_conn_put_ep(r->dest[dest].conn), &prm);
    if (q == NULL) {
        flush_done(NULL, UCS_OK, f);
    } else if (UCS_PTR_IS_ERR(q)) {
        log_req(LOG_LEVEL_WARN, r->h.id, "flush failed: %s",
                ucs_status_string(UCS_PTR_STATUS(q)));
        flush_done(NULL, UCS_PTR_STATUS(q), f);
    }
}

/* Stop writing; tell every live rank of the decode node (after a flush, so
 * the ABORT also means "no more writes from this rank"). */
static void sreq_fail(kvc_t *kvc, sreq_t *r, duet_status_t status)
{
    if (r->state != SREQ_ACTIVE)
        return;
    r->state = SREQ_DRAIN;
    r->status = status;
    log_req(LOG_LEVEL_INFO, r->h.id, "KV send ends: %s", duet_status_str(status));
    if (!r->bound)
        return;
    for (int j = 0; j < r->ndest; j++)
        if (kvc_conn_alive(r->dest[j].conn) && r->dest[j].conn->ep)
            flush_then(kvc, r, j, KVC_MSG_ABORT, NULL, 0);
}

/* A write (a put, or a DATA message) of len bytes, from staging buffer
 * `stage` or -1, completed. A failure fails the request at once (the
 * endpoint's error handler would too, later, if the endpoint failed; a DATA
 * message would also be missed by the decode rank). */
static void write_done(kvc_t *kvc, sreq_t *r, size_t len, int stage, ucs_status_t status,
                       const char *what)
{
    r->outstanding--;
    kvc->inflight -= len;
    if (stage >= 0)
        kvc->stage_busy[stage]--;
    if (status != UCS_OK && r->state == SREQ_ACTIVE) {
        log_req(LOG_LEVEL_WARN, r->h.id, "%s failed: %s", what, ucs_status_string(status));
        sreq_fail(kvc, r, DUET_ERR_PEER);
    }
}

static void put_done(void *request, ucs_status_t status, void *user_data)
{
    put_ctx_t *p = user_data;

    write_done(p->kvc, p->r, p->len, p->stage, status, "put");
    free(p);
    ucp_request_free(request);
}

/* Room for one more element in the array *v of *cap elements of size esz,
 * n of them used. */
static duet_status_t room_for_one(void **v, int *cap, int n, size_t esz)
{
    void *nv;
    int ncap;

    if (n < *cap)
        return DUET_OK;
    ncap = *cap ? 2 * *cap : 256;
    nv = realloc(*v, (size_t)ncap * esz);
    if (nv == NULL)
        return DUET_ERR_NOMEM;
    *v = nv;
    *cap = ncap;
    return DUET_OK;
}

/* Queue one copy for params.stage_copy_batch. */
static duet_status_t batch_add(kvc_t *kvc, void *dst, const void *src, size_t len)
{
    CHECK(room_for_one((void **)&kvc->batch, &kvc->capbatch, kvc->nbatch, sizeof(*kvc->batch)));
    kvc->batch[kvc->nbatch++] = (kvc_copy_t){dst, src, len};
    return DUET_OK;
}

/* Run the queued copies; done when it returns. */
static duet_status_t batch_run(kvc_t *kvc)
{
    int n = kvc->nbatch;

    kvc->nbatch = 0;
    if (n == 0)
        return DUET_OK;
    kvc->stats.batches++;
    return kvc->p.stage_copy_batch(kvc->p.stage_batch_arg, kvc->batch, n);
}

/* One put of len bytes at src to remote offset ro on c, from staging buffer
 * `stage` (or -1). DUET_OK, or the request failed. */
static duet_status_t put_one(kvc_t *kvc, sreq_t *r, kvc_conn_t *c, void *src, size_t ro,
                             size_t len, int stage)
{
    ucp_request_param_t prm = {0};
    put_ctx_t *p = malloc(sizeof(*p));
    void *q;

    if (p == NULL) {
        sreq_fail(kvc, r, DUET_ERR_NOMEM);
        return DUET_ERR_NOMEM;
    }
    p->kvc = kvc;
    p->r = r;
    p->len = len;
    p->stage = stage;
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    prm.cb.send = put_done;
    prm.user_data = p;
    q = ucp_put_nbx(kvc_conn_put_ep(c), src, len, c->remote_base + ro, kvc_conn_put_rkey(c),
                    &prm);
    kvc->stats.puts++;
    r->bytes += len;
    if (q == NULL) {
        free(p);
    } else if (UCS_PTR_IS_ERR(q)) {
        free(p);
        log_req(LOG_LEVEL_WARN, r->h.id, "put failed: %s", ucs_status_string(UCS_PTR_STATUS(q)));
        sreq_fail(kvc, r, DUET_ERR_PEER);
        return DUET_ERR_PEER;
    } else {
        r->outstanding++;
        kvc->inflight += len;
        if (stage >= 0)
            kvc->stage_busy[stage]++;
    }
    return DUET_OK;
}

/* Staged puts: runs share staging buffer `stage`, then a put per run from
 * it. Copy one run into the buffer at boff (queued for one batch when the
 * buffers are pinned and params.stage_copy_batch is given, else at once by
 * params.stage_copy) and queue its put. */
static duet_status_t gather_add(kvc_t *kvc, int stage, size_t boff, const void *src, size_t ro,
                                size_t len)
{
    void *dst = kvc->stage_buf[stage] + boff;

    CHECK(room_for_one((void **)&kvc->gput, &kvc->capgput, kvc->ngput, sizeof(*kvc->gput)));
    if (kvc->stage_pinned && kvc->p.stage_copy_batch != NULL)
        CHECK(batch_add(kvc, dst, src, len));
    else if (kvc->p.stage_copy(kvc->p.stage_arg, dst, src, len) != DUET_OK)
        return DUET_ERR_CUDA;
    kvc->gput[kvc->ngput++] = (kvc_gput_t){boff, ro, len};
    kvc->stats.staged += len;
    return DUET_OK;
}

static void data_done(void *request, ucs_status_t status, void *user_data)
{
    struct kvc_dmsg *d = user_data;

    write_done(d->kvc, d->r, d->bytes, d->stage, status, "DATA send");
    free(d);
    ucp_request_free(request);
}

/* Send the DATA message being filled for r on c. Returns 1 when one was
 * sent, 0 when none was pending, -1 when the request failed. */
static int data_flush(kvc_t *kvc, sreq_t *r, kvc_conn_t *c)
{
    struct kvc_dmsg *d = kvc->dmsg;
    ucp_request_param_t prm = {0};
    void *q;

    kvc->dmsg = NULL;
    if (d == NULL)
        return 0;
    d->hdr.nruns = d->n;
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_FLAGS;
    prm.cb.send = data_done;
    prm.user_data = d;
    prm.datatype = ucp_dt_make_iov();
    prm.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    if (kvc->drop_n > 0 && kvc->drop_req == r->h.id) {
        kvc->drop_n--;              /* kvc_test_drop_data: lost on the way */
        q = NULL;
    } else {
        q = ucp_am_send_nbx(c->ep, KVC_AM_ID, &d->hdr,
                            sizeof(d->hdr) + (size_t)d->n * sizeof(kvc_run_t), d->iov, d->n,
                            &prm);
    }
    if (!UCS_PTR_IS_ERR(q)) {
        kvc->stats.puts++;
        kvc->stats.data_msgs++;
    }
    if (q == NULL) {
        free(d);
    } else if (UCS_PTR_IS_ERR(q)) {
        free(d);
        log_req(LOG_LEVEL_WARN, r->h.id, "DATA send failed: %s",
                ucs_status_string(UCS_PTR_STATUS(q)));
        sreq_fail(kvc, r, DUET_ERR_PEER);
        return -1;
    } else {
        r->outstanding++;
        kvc->inflight += d->bytes;
        if (d->stage >= 0)
            kvc->stage_busy[d->stage]++;
    }
    return 1;
}

/* Add a run (len bytes at src, in staging buffer `stage` or -1, for offset
 * ro of the decode slab) to the DATA message being filled for dest di of r. */
static duet_status_t data_add(kvc_t *kvc, sreq_t *r, int di, void *src, size_t ro, size_t len,
                              int stage)
{
    struct kvc_dmsg *d = kvc->dmsg;

    if (d == NULL) {
        d = kvc->dmsg = malloc(sizeof(*d));
        if (d == NULL)
            return DUET_ERR_NOMEM;
        d->kvc = kvc;
        d->r = r;
        d->bytes = 0;
        d->stage = stage;
        d->n = 0;
        d->hdr = (kvc_msg_data_t){.h = {.magic = KVC_WIRE_MAGIC, .type = KVC_MSG_DATA,
                                        .req = r->h.id}};
    }
    d->runs[d->n] = (kvc_run_t){ro, len};
    d->iov[d->n] = (ucp_dt_iov_t){src, len};
    d->n++;
    d->bytes += len;
    r->bytes += len;
    r->dest[di].data_bytes += len;
    return DUET_OK;
}

/* Write len bytes at src (in staging buffer `stage`, or -1) to offset ro of
 * dest di's slab as part of a DATA message, sending messages as they fill.
 * Returns the bytes taken (a run longer than a message is split: the caller
 * comes back for the rest), or 0 when the request failed. */
static size_t data_put(kvc_t *kvc, sreq_t *r, int di, void *src, size_t ro, size_t len,
                       int stage)
{
    kvc_conn_t *c = r->dest[di].conn;
    duet_status_t s;

    if (kvc->dmsg && kvc->dmsg->bytes + len > kvc->p.data_msg_bytes && data_flush(kvc, r, c) < 0)
        return 0;
    if (len > kvc->p.data_msg_bytes)
        len = kvc->p.data_msg_bytes;
    if ((s = data_add(kvc, r, di, src, ro, len, stage)) != DUET_OK) {
        sreq_fail(kvc, r, s);
        return 0;
    }
    if ((kvc->dmsg->n == KVC_DATA_RUNS || kvc->dmsg->bytes == kvc->p.data_msg_bytes) &&
        data_flush(kvc, r, c) < 0)
        return 0;
    return len;
}

/* Run the queued copies into buffer `stage`, then write each run from it: a
 * put each, or DATA messages (all sent before this returns: the buffer is
 * free again once the writes from it completed, and a message still being
 * filled is not counted). Returns the writes issued, or -1 when the request
 * failed. */
static int gather_flush(kvc_t *kvc, sreq_t *r, int di, int stage)
{
    kvc_conn_t *c = r->dest[di].conn;
    int n = kvc->ngput;
    duet_status_t s;

    kvc->ngput = 0;
    if (n == 0)
        return 0;
    s = batch_run(kvc);
    if (s != DUET_OK) {
        sreq_fail(kvc, r, s);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const kvc_gput_t *g = &kvc->gput[i];
        char *src = kvc->stage_buf[stage] + g->boff;

        if (!c->am_data) {
            if (put_one(kvc, r, c, src, g->ro, g->len, stage) != DUET_OK)
                return -1;
            continue;
        }
        for (size_t o = 0, t; o < g->len; o += t)
            if ((t = data_put(kvc, r, di, src + o, g->ro + o, g->len - o, stage)) == 0)
                return -1;
    }
    if (c->am_data && data_flush(kvc, r, c) < 0)
        return -1;
    return n;
}

/* Issue writes for dest's current job until it is done or the in-flight
 * bound is reached. Returns the number of writes issued. */
static int dest_pump(kvc_t *kvc, sreq_t *r, int di)
{
    sdest_t *d = &r->dest[di];
    kvc_conn_t *c = d->conn;
    const kv_layout_t *ll = &kvc->p.layout, *rl = &c->peer_layout;
    size_t seg_len = (size_t)c->nheads * kv_head_bytes(ll);
    const sjob_t *done = NULL;  /* layers written (puts issued), LAYER_DONE not sent */
    int32_t ndone = 0;
    int n = 0;
    /* copies from a device slab into a pinned mapped decode slab: one batch
     * per job */
    bool batched = kvc->staging && c->rptr_pinned && kvc->p.stage_copy_batch != NULL;
    /* puts from a device slab: runs copied into a staging buffer, gbuf (-1:
     * none) filled up to gfill, then put from it */
    bool gather = kvc->staging && c->rptr == NULL;
    int gbuf = -1, g;
    size_t gfill = 0;
    duet_status_t bs;

    while (d->job < r->njobs && r->state == SREQ_ACTIVE) {
        const sjob_t *j = &r->jobs[d->job];
        int32_t fb = j->tok0 / ll->block_size, nseg = 2 * j->nblocks;

        if (j->tok1 > d->n_tokens) {
            log_req(LOG_LEVEL_ERROR, r->h.id, "layer %d tokens [%d, %d) exceed the grant of %d",
                    j->layer, j->tok0, j->tok1, d->n_tokens);
            sreq_fail(kvc, r, DUET_ERR_INVALID);
            break;
        }
        while (d->seg < nseg) {
            size_t lo, ro, len;
            void *src;
            int32_t s = d->seg;

            /* (copies into a mapped slab are never in flight) */
            if (c->rptr == NULL && kvc->inflight >= kvc->p.max_inflight)
                goto out;
            lo = kv_offset(ll, j->layer, j->blocks[s / 2], s % 2, c->src_head);
            ro = kv_offset(rl, j->layer, d->blocks[fb + s / 2], s % 2, c->dst_head);
            len = seg_len;
            /* coalesce segments adjacent on both sides */
            for (s++; s < nseg && len < kvc->p.max_inflight; s++) {
                size_t lo2 = kv_offset(ll, j->layer, j->blocks[s / 2], s % 2, c->src_head);
                size_t ro2 = kv_offset(rl, j->layer, d->blocks[fb + s / 2], s % 2, c->dst_head);

                if (lo2 != lo + len || ro2 != ro + len)
                    break;
                len += seg_len;
            }
            src = (char *)kvc->slab + lo + d->off;
            ro += d->off;
            len -= d->off;
            if (c->rptr != NULL) {
                /* the decode slab is mapped here: one copy, done when it
                 * returns (a device slab copies straight into it) */
                if (kvc->staging) {
                    duet_status_t cs = batched ? batch_add(kvc, c->rptr + ro, src, len)
                                               : kvc->p.stage_copy(kvc->p.stage_arg,
                                                                   c->rptr + ro, src, len);

                    if (cs != DUET_OK) {
                        sreq_fail(kvc, r, cs == DUET_ERR_NOMEM ? cs : DUET_ERR_CUDA);
                        goto out;
                    }
                    kvc->stats.staged += len;
                } else {
                    kvc_copy_nt(c->rptr + ro, src, len);
                }
                kvc->stats.puts++;
                r->bytes += len;
                n++;
                d->seg = s;
                d->off = 0;
                continue;
            }
            if (gather) {
                /* copy into the buffer being filled (the other one's puts
                 * may be in flight); put when it is full */
                if (gbuf < 0) {
                    gbuf = !kvc->stage_busy[0] ? 0 : !kvc->stage_busy[1] ? 1 : -1;
                    if (gbuf < 0)
                        goto out;   /* both in flight: resume on a completion */
                    gfill = 0;
                }
                if (len > kvc->p.stage_bytes - gfill)
                    len = kvc->p.stage_bytes - gfill;
                if ((bs = gather_add(kvc, gbuf, gfill, src, ro, len)) != DUET_OK) {
                    sreq_fail(kvc, r, bs);
                    goto out;
                }
                gfill += len;
                if (gfill == kvc->p.stage_bytes) {
                    if ((g = gather_flush(kvc, r, di, gbuf)) < 0)
                        goto out;
                    n += g;
                    gbuf = -1;
                }
            } else if (c->am_data) {
                /* runs packed into DATA messages; a longer run is split */
                if ((len = data_put(kvc, r, di, src, ro, len, -1)) == 0)
                    goto out;
                n++;
            } else {
                if (put_one(kvc, r, c, src, ro, len, -1) != DUET_OK)
                    goto out;
                n++;
            }
            if (lo + d->off + len < lo + (size_t)(s - d->seg) * seg_len) {
                d->off += len;          /* the rest of this run goes next */
            } else {
                d->seg = s;
                d->off = 0;
            }
        }
        /* the job's copies, queued above, run before its LAYER_DONE */
        if (batched && (bs = batch_run(kvc)) != DUET_OK) {
            sreq_fail(kvc, r, bs);
            goto out;
        }
        if (done != NULL && j->layer == done->layer + ndone && j->tok0 == done->tok0 &&
            j->tok1 == done->tok1) {
            ndone++;    /* one flush and one LAYER_DONE for the run of layers */
        } else {
            /* gathered puts (a buffer may hold several layers) go before
             * the flush that LAYER_DONE waits for */
            if (done != NULL && gbuf >= 0) {
                if ((g = gather_flush(kvc, r, di, gbuf)) < 0)
                    goto out;
                n += g;
                gbuf = -1;
            }
            if (done != NULL && (g = data_flush(kvc, r, c)) < 0)
                goto out;
            if (done != NULL)
                flush_then(kvc, r, di, KVC_MSG_LAYER_DONE, done, ndone);
            done = j;
            ndone = 1;
        }
        d->job++;
        d->seg = 0;
    }
out:
    /* runs gathered but not put: put them (their segments are passed) */
    if (gbuf >= 0 && r->state == SREQ_ACTIVE && (g = gather_flush(kvc, r, di, gbuf)) > 0)
        n += g;
    if (r->state == SREQ_ACTIVE && (g = data_flush(kvc, r, c)) > 0)
        n += g;
    kvc->nbatch = kvc->ngput = 0;
    free(kvc->dmsg);    /* (the request failed) */
    kvc->dmsg = NULL;
    /* the layers whose writes were all issued: flush (puts) and LAYER_DONE */
    if (done != NULL && r->state == SREQ_ACTIVE)
        flush_then(kvc, r, di, KVC_MSG_LAYER_DONE, done, ndone);
    return n;
}

static void sreq_finish(kvc_t *kvc, sreq_t *r, duet_status_t status)
{
    double secs = (double)(clock_now_ns() - r->t_start) * 1e-9;

    r->state = SREQ_FINAL;
    r->status = status;
    kvc->stats.seconds += secs;
    if (status == DUET_OK) {
        kvc->stats.transfers++;
        kvc->stats.bytes += r->bytes;
    } else {
        kvc->stats.failures++;
    }
    kvc_tomb_add(kvc, r->h.id);
    if (kvc->p.done_cb && r->caller_known)
        kvc->p.done_cb(kvc->p.done_arg, r->h.id, status);
    if (!r->caller_known && status != DUET_ERR_NO_RESOURCE)
        sreq_free(kvc, r);
}

/* Every expected destination has its KV_END sent, and every put, flush and
 * message of r completed: r is delivered. */
static bool sreq_delivered(const sreq_t *r)
{
    if (r->state != SREQ_ACTIVE || !r->bound || !r->ended || r->outstanding != 0)
        return false;
    for (int j = 0; j < r->ndest; j++)
        if (r->dest[j].expected && !r->dest[j].end_sent)
            return false;
    return true;
}

/* Push r forward: puts, KV_END, completion. */
static int sreq_pump(kvc_t *kvc, sreq_t *r)
{
    int n = 0;

    if (r->state == SREQ_ACTIVE && r->bound) {
        for (int j = 0; j < r->ndest; j++) {
            sdest_t *d = &r->dest[j];

            if (!d->expected)
                continue;
            if (d->granted)
                n += dest_pump(kvc, r, j);
            if (r->state != SREQ_ACTIVE)
                break;
            if (d->granted && r->ended && !d->end_sent && d->job == r->njobs) {
                kvc_msg_end_t *m = kvc_msg_new(sizeof(*m) + r->state_len, KVC_MSG_KV_END,
                                               r->h.id);

                if (m == NULL)
                    break;
                m->first_token = r->first_token;
                m->state_len = r->state_len;
                memcpy(m + 1, r->end_state, r->state_len);
                kvc_am_send(d->conn, m, sizeof(*m) + r->state_len, &r->outstanding);
                /* done only once KV_END left this side */
                flush_then(kvc, r, j, KVC_MSG_KV_END, NULL, 0);
                d->end_sent = true;
                n++;
            }
        }
    }
    if (sreq_delivered(r))
        sreq_finish(kvc, r, DUET_OK);
    else if (r->state == SREQ_DRAIN && r->outstanding == 0)
        sreq_finish(kvc, r, r->status);
    return n;
}

int kvc_send_progress(kvc_t *kvc)
{
    int n = 0;
    kvc_rhdr_t *h, *next;

    for (h = kvc->reqs.list.next; h != &kvc->reqs.list; h = next) {
        sreq_t *r = (sreq_t *)h;

        next = h->next;
        if (r->state != SREQ_FINAL)
            n += sreq_pump(kvc, r);
    }
    return n;
}

duet_status_t kvc_send_kv_cache(kvc_t *kvc, uint64_t req, int32_t layer, int32_t tok0,
                                int32_t tok1, const int32_t *local_blocks, int32_t nblocks)
{
    const kv_layout_t *l = &kvc->p.layout;
    sreq_t *r;
    sjob_t *j;

    if (kvc->p.role != KVC_ROLE_PREFILL || layer < 0 || layer >= l->n_layers || tok0 < 0 ||
        tok1 <= tok0 || local_blocks == NULL ||
        nblocks != (tok1 - 1) / l->block_size - tok0 / l->block_size + 1) {
        log_req(LOG_LEVEL_ERROR, req, "bad send: layer %d tokens [%d, %d) in %d blocks",
                layer, tok0, tok1, nblocks);
        return DUET_ERR_INVALID;
    }
    for (int32_t i = 0; i < nblocks; i++) {
        if (local_blocks[i] < 0 || local_blocks[i] >= l->n_blocks) {
            log_req(LOG_LEVEL_ERROR, req, "local block %d outside the slab", local_blocks[i]);
            return DUET_ERR_INVALID;
        }
    }
    r = sreq_get(kvc, req);
    if (r == NULL && kvc_tomb_has(kvc, req))
        return DUET_ERR_CANCELED;
    if (r == NULL && (r = sreq_new(kvc, req)) == NULL)
        return DUET_ERR_NOMEM;
    if (!r->caller_known) {
        r->caller_known = true;
        r->t_start = clock_now_ns();
    }
    if (r->state != SREQ_ACTIVE)
        return r->status;
    if (r->ended)
        return DUET_ERR_INVALID;
    if (r->njobs == r->capjobs) {
        int cap = r->capjobs ? 2 * r->capjobs : 64;
        sjob_t *nj = realloc(r->jobs, (size_t)cap * sizeof(*nj));

        if (nj == NULL)
            return DUET_ERR_NOMEM;
        r->jobs = nj;
        r->capjobs = cap;
    }
    j = &r->jobs[r->njobs];
    j->blocks = malloc((size_t)nblocks * sizeof(int32_t));
    if (j->blocks == NULL)
        return DUET_ERR_NOMEM;
    memcpy(j->blocks, local_blocks, (size_t)nblocks * sizeof(int32_t));
    j->layer = layer;
    j->tok0 = tok0;
    j->tok1 = tok1;
    j->nblocks = nblocks;
    r->njobs++;
    sreq_pump(kvc, r);
    return DUET_OK;
}

duet_status_t kvc_end(kvc_t *kvc, uint64_t req, int32_t first_token, const void *state,
                      uint32_t state_len)
{
    sreq_t *r = sreq_get(kvc, req);

    if (kvc->p.role != KVC_ROLE_PREFILL || state_len > KVC_STATE_MAX ||
        (state_len && state == NULL))
        return DUET_ERR_INVALID;
    if (r == NULL || !r->caller_known)
        return DUET_ERR_NOT_FOUND;
    if (r->state != SREQ_ACTIVE)
        return r->status;
    if (r->ended)
        return DUET_ERR_INVALID;
    r->ended = true;
    r->first_token = first_token;
    r->state_len = state_len;
    if (state_len)
        memcpy(r->end_state, state, state_len);
    sreq_pump(kvc, r);
    return DUET_OK;
}

duet_status_t kvc_send_blocks_reused(kvc_t *kvc, uint64_t req, bool *resend_p)
{
    sreq_t *r = sreq_get(kvc, req);
    bool started = false, done = true;

    *resend_p = false;
    if (r == NULL || kvc->p.role != KVC_ROLE_PREFILL)
        return DUET_ERR_NOT_FOUND;
    if (r->state == SREQ_FINAL)
        return DUET_OK;
    if (r->state != SREQ_ACTIVE)
        return DUET_ERR_BUSY;
    for (int j = 0; r->bound && j < r->ndest; j++) {
        const sdest_t *d = &r->dest[j];

        if (!d->expected)
            continue;
        started |= d->job > 0 || d->seg > 0 || d->off > 0;
        done &= d->job == r->njobs;
    }
    if (!started) {
        for (int i = 0; i < r->njobs; i++)
            free(r->jobs[i].blocks);
        r->njobs = 0;
        *resend_p = true;
        return DUET_OK;
    }
    return done && r->outstanding == 0 ? DUET_OK : DUET_ERR_BUSY;
}

bool kvc_send_granted(kvc_t *kvc, uint64_t req)
{
    const sreq_t *r = sreq_get(kvc, req);

    /* bound at the node's first GRANT to this rank; its ranks grant together */
    return r != NULL && kvc->p.role == KVC_ROLE_PREFILL && r->bound;
}

duet_status_t kvc_send_status(kvc_t *kvc, uint64_t req)
{
    sreq_t *r = sreq_get(kvc, req);
    duet_status_t s;

    if (r == NULL || kvc->p.role != KVC_ROLE_PREFILL)
        return DUET_ERR_NOT_FOUND;
    if (r->state != SREQ_FINAL)
        return DUET_INPROGRESS;
    s = r->status;
    sreq_free(kvc, r);
    return s;
}

duet_status_t kvc_send_abort(kvc_t *kvc, uint64_t req)
{
    sreq_t *r = sreq_get(kvc, req);

    if (r == NULL)
        return DUET_ERR_NOT_FOUND;
    sreq_fail(kvc, r, DUET_ERR_CANCELED);
    sreq_pump(kvc, r);
    return DUET_OK;
}

/* Bind r to the decode node of conn: one destination per decode rank. */
static duet_status_t sreq_bind(kvc_t *kvc, sreq_t *r, kvc_conn_t *conn)
{
    int d = conn->peer.tp_size;

    r->bound = true;
    r->node = conn->peer.node_id;
    r->ndest = d;
    for (int j = 0; j < d; j++) {
        int32_t src, dst, cnt;

        kvc_tp_route(kvc->p.n_kv_heads_total, kvc->p.tp_size, kvc->p.tp_rank, d, j, &src,
                     &dst, &cnt);
        r->dest[j].conn = kvc_conn_find(kvc, r->node, j);
        r->dest[j].expected = cnt > 0;
        if (cnt > 0 && r->dest[j].conn == NULL) {
            log_req(LOG_LEVEL_ERROR, r->h.id, "not connected to decode node %llu rank %d",
                    (unsigned long long)r->node, j);
            return DUET_ERR_NOT_FOUND;
        }
    }
    return DUET_OK;
}

static void on_grant(kvc_t *kvc, kvc_conn_t *c, const kvc_hdr_t *h, const void *data,
                     size_t len)
{
    const kvc_msg_grant_t *g = data;
    const int32_t *blocks = (const int32_t *)(g + 1);
    int32_t bs = kvc->p.layout.block_size;
    sreq_t *r;
    sdest_t *d;

    if (len < sizeof(*g) || g->nblocks <= 0 || g->nblocks > KVC_MAX_BLOCKS ||
        len != sizeof(*g) + (size_t)g->nblocks * sizeof(int32_t) || g->n_tokens <= 0 ||
        g->nblocks != (g->n_tokens + bs - 1) / bs)
        goto reject;
    for (int32_t i = 0; i < g->nblocks; i++)
        if (blocks[i] < 0 || blocks[i] >= c->peer.n_blocks)
            goto reject;
    r = sreq_get(kvc, h->req);
    if ((r == NULL && kvc_tomb_has(kvc, h->req)) || (r && r->state != SREQ_ACTIVE)) {
        send_abort_msg(c, h->req, DUET_ERR_CANCELED, NULL);
        return;
    }
    if (r == NULL && (r = sreq_new(kvc, h->req)) == NULL) {
        send_abort_msg(c, h->req, DUET_ERR_NOMEM, NULL);
        return;
    }
    if (r->bound && r->node != c->peer.node_id) {
        log_req(LOG_LEVEL_WARN, h->req, "grant from a second decode node %llu refused",
                (unsigned long long)c->peer.node_id);
        send_abort_msg(c, h->req, DUET_ERR_CANCELED, NULL);
        kvc->stats.rejected++;
        return;
    }
    if (!r->bound && sreq_bind(kvc, r, c) != DUET_OK) {
        sreq_fail(kvc, r, DUET_ERR_PEER);
        return;
    }
    d = &r->dest[c->peer.tp_rank];
    if (!d->expected) {
        /* a rank holding no heads for that decode rank: it only learns the
         * request's destination, so that it can finish */
        sreq_pump(kvc, r);
        return;
    }
    if (d->granted || d->conn != c)
        goto reject;
    d->blocks = malloc((size_t)g->nblocks * sizeof(int32_t));
    if (d->blocks == NULL) {
        sreq_fail(kvc, r, DUET_ERR_NOMEM);
        return;
    }
    memcpy(d->blocks, blocks, (size_t)g->nblocks * sizeof(int32_t));
    d->nblocks = g->nblocks;
    d->n_tokens = g->n_tokens;
    d->granted = true;
    sreq_pump(kvc, r);
    return;
reject:
    kvc->stats.rejected++;
    log_req(LOG_LEVEL_WARN, h->req, "rejected a malformed or out-of-range GRANT (%zu bytes)",
            len);
}

void kvc_send_on_msg(kvc_t *kvc, kvc_conn_t *c, const kvc_hdr_t *h, const void *data,
                     size_t len)
{
    sreq_t *r;

    if (h->type == KVC_MSG_GRANT) {
        on_grant(kvc, c, h, data, len);
        return;
    }
    if ((h->type != KVC_MSG_NACK && h->type != KVC_MSG_ABORT) ||
        len != sizeof(kvc_msg_abort_t)) {
        kvc->stats.rejected++;
        log_req(LOG_LEVEL_WARN, h->req, "rejected message type %d (%zu bytes)", h->type, len);
        return;
    }
    r = sreq_get(kvc, h->req);
    if (h->type == KVC_MSG_NACK) {
        kvc->stats.nacks++;
        if (r == NULL && kvc_tomb_has(kvc, h->req))
            return;
        if (r == NULL && (r = sreq_new(kvc, h->req)) == NULL)
            return;
        sreq_fail(kvc, r, DUET_ERR_NO_RESOURCE);
        sreq_pump(kvc, r);
        return;
    }
    /* ABORT from a decode rank: stop, and answer so it can free its blocks. */
    if (r == NULL || r->state == SREQ_FINAL || !r->bound || r->node != c->peer.node_id) {
        send_abort_msg(c, h->req, DUET_ERR_CANCELED, NULL);
        return;
    }
    if (r->state == SREQ_ACTIVE) {
        int32_t reason = ((const kvc_msg_abort_t *)data)->reason;

        sreq_fail(kvc, r, reason == DUET_ERR_TIMEOUT ? DUET_ERR_TIMEOUT : DUET_ERR_CANCELED);
    }
    sreq_pump(kvc, r);
}

void kvc_send_conn_failed(kvc_t *kvc, kvc_conn_t *conn)
{
    kvc_rhdr_t *h, *next;

    for (h = kvc->reqs.list.next; h != &kvc->reqs.list; h = next) {
        sreq_t *r = (sreq_t *)h;

        next = h->next;
        if (!r->bound || r->node != conn->peer.node_id || r->state != SREQ_ACTIVE)
            continue;
        /* The last completions and the endpoint error can come in the same
         * worker progress, before sreq_pump saw the completions: a request
         * already delivered is not failed by its peer leaving afterwards. */
        if (sreq_delivered(r))
            sreq_finish(kvc, r, DUET_OK);
        else
            sreq_fail(kvc, r, DUET_ERR_PEER);
    }
}

void kvc_send_destroy(kvc_t *kvc)
{
    while (kvc->reqs.list.next != &kvc->reqs.list)
        sreq_free(kvc, (sreq_t *)kvc->reqs.list.next);
    free(kvc->batch);
    free(kvc->gput);
    free(kvc->dmsg);
}
