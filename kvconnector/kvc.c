/* KV connector core: head routing, UCX context/worker/slab, the decode
 * listener and prefill connect, the handshake, message dispatch, progress. */
#define DUET_LOG_COMPONENT "kvc"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "common/clock.h"
#include "common/log.h"
#include "kvconnector/kvc_int.h"

/* ---- fingerprint --------------------------------------------------------- */

void kvc_fp_fill(const kvc_t *kvc, kvc_fp_t *fp)
{
    memset(fp, 0, sizeof(*fp));
    fp->model_fp = kvc->p.model_fp;
    fp->node_id = kvc->p.node_id;
    fp->n_layers = kvc->p.layout.n_layers;
    fp->n_kv_heads_total = kvc->p.n_kv_heads_total;
    fp->head_dim = kvc->p.layout.head_dim;
    fp->block_size = kvc->p.layout.block_size;
    fp->dtype = (int32_t)kvc->p.layout.dtype;
    fp->tp_size = kvc->p.tp_size;
    fp->tp_rank = kvc->p.tp_rank;
    fp->n_blocks = kvc->p.layout.n_blocks;
    fp->role = (int32_t)kvc->p.role;
}

duet_status_t kvc_fp_check(const kvc_t *kvc, const kvc_fp_t *peer)
{
    kvc_fp_t me;

    kvc_fp_fill(kvc, &me);
    if (me.model_fp != peer->model_fp) {
        log_error("layout fingerprint mismatch: model fingerprint %016llx here, "
                  "%016llx at the peer", (unsigned long long)me.model_fp,
                  (unsigned long long)peer->model_fp);
        return DUET_ERR_MISMATCH;
    }
#define FP_FIELD(f)                                                                 \
    if (me.f != peer->f) {                                                          \
        log_error("layout fingerprint mismatch: " #f " is %d here, %d at the peer", \
                  (int)me.f, (int)peer->f);                                         \
        return DUET_ERR_MISMATCH;                                                   \
    }
    FP_FIELD(n_layers)
    FP_FIELD(n_kv_heads_total)
    FP_FIELD(head_dim)
    FP_FIELD(block_size)
    FP_FIELD(dtype)
#undef FP_FIELD
    if (me.role == peer->role) {
        log_error("layout fingerprint mismatch: both sides are %s",
                  me.role == KVC_ROLE_DECODE ? "decode" : "prefill");
        return DUET_ERR_MISMATCH;
    }
    if (!kvc_tp_valid(peer->n_kv_heads_total, peer->tp_size) || peer->tp_rank < 0 ||
        peer->tp_rank >= peer->tp_size || peer->tp_size > KVC_MAX_TP ||
        peer->n_blocks <= 0) {
        log_error("layout fingerprint mismatch: peer TP %d rank %d cannot split %d KV "
                  "heads (or %d blocks)", (int)peer->tp_size, (int)peer->tp_rank,
                  (int)peer->n_kv_heads_total, (int)peer->n_blocks);
        return DUET_ERR_MISMATCH;
    }
    return DUET_OK;
}

/* ---- messages ------------------------------------------------------------ */

static duet_status_t status_from_ucs(ucs_status_t s)
{
    switch (s) {
    case UCS_OK: return DUET_OK;
    case UCS_INPROGRESS: return DUET_INPROGRESS;
    case UCS_ERR_NO_MEMORY: return DUET_ERR_NOMEM;
    case UCS_ERR_CANCELED: return DUET_ERR_CANCELED;
    case UCS_ERR_TIMED_OUT: return DUET_ERR_TIMEOUT;
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_REJECTED: return DUET_ERR_PEER;
    default: return DUET_ERR_UCX;
    }
}

void *kvc_msg_new(size_t len, int type, uint64_t req)
{
    kvc_hdr_t *h = calloc(1, len);

    if (h == NULL)
        return NULL;
    h->magic = KVC_WIRE_MAGIC;
    h->type = (uint16_t)type;
    h->req = req;
    return h;
}

typedef struct {
    void *buf;
    int  *outstanding;
} am_ctx_t;

static void am_send_done(void *request, ucs_status_t status, void *user_data)
{
    am_ctx_t *c = user_data;

    if (status != UCS_OK)
        log_debug("message send failed: %s", ucs_status_string(status));
    if (c->outstanding)
        (*c->outstanding)--;
    free(c->buf);
    free(c);
    ucp_request_free(request);
}

/* The decode slab is written here and read by its owner only later (the
 * mapped slab on the prefill side, DATA messages on the decode side), so on
 * x86 the bulk goes with non-temporal stores: no read-for-ownership of the
 * destination lines, a third less memory traffic than memcpy. */
void kvc_copy_nt(void *dst, const void *src, size_t len)
{
#if defined(__x86_64__)
    if (((uintptr_t)dst & 15) == 0 && len >= 1024) {
        __m128i *d = dst;
        const __m128i *s = src;
        size_t n = len / 64;

        for (size_t i = 0; i < n; i++, d += 4, s += 4) {
            __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1);
            __m128i c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);

            _mm_stream_si128(d, a);
            _mm_stream_si128(d + 1, b);
            _mm_stream_si128(d + 2, c);
            _mm_stream_si128(d + 3, e);
        }
        memcpy(d, s, len % 64);
        return;
    }
#endif
    memcpy(dst, src, len);
}

void kvc_copy_fence(void)
{
#if defined(__x86_64__)
    _mm_sfence();
#endif
    atomic_thread_fence(memory_order_release);
}

duet_status_t kvc_am_send(kvc_conn_t *conn, void *buf, size_t len, int *outstanding)
{
    ucp_request_param_t prm = {0};
    am_ctx_t *c;
    void *r;

    if (!kvc_conn_alive(conn)) {
        free(buf);
        return DUET_ERR_PEER;
    }
    c = malloc(sizeof(*c));
    if (c == NULL) {
        free(buf);
        return DUET_ERR_NOMEM;
    }
    c->buf = buf;
    c->outstanding = outstanding;
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_FLAGS;
    prm.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    prm.cb.send = am_send_done;
    prm.user_data = c;
    r = ucp_am_send_nbx(conn->ep, KVC_AM_ID, NULL, 0, buf, len, &prm);
    if (r == NULL) {
        free(buf);
        free(c);
        return DUET_OK;
    }
    if (UCS_PTR_IS_ERR(r)) {
        log_warn("message send failed: %s", ucs_status_string(UCS_PTR_STATUS(r)));
        free(buf);
        free(c);
        return status_from_ucs(UCS_PTR_STATUS(r));
    }
    if (outstanding)
        (*outstanding)++;
    return DUET_OK;
}

/* ---- connections --------------------------------------------------------- */

bool kvc_conn_alive(const kvc_conn_t *conn)
{
    return conn != NULL && (conn->state == KVC_CONN_READY || conn->state == KVC_CONN_HELLO);
}

kvc_conn_t *kvc_conn_find(kvc_t *kvc, uint64_t node, int tp_rank)
{
    for (int i = 0; i < kvc->nconns; i++) {
        kvc_conn_t *c = kvc->conns[i];

        if (c->state == KVC_CONN_READY && c->peer.node_id == node &&
            c->peer.tp_rank == tp_rank)
            return c;
    }
    return NULL;
}

static void conn_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    kvc_conn_t *c = arg;

    if (c->state == KVC_CONN_DEAD || c->state == KVC_CONN_FAILED)
        return;
    log_warn("endpoint to node %llu rank %d failed: %s",
             (unsigned long long)c->peer.node_id, (int)c->peer.tp_rank,
             ucs_status_string(status));
    c->state = KVC_CONN_FAILED;
    c->kvc->conn_failed = true;
}

static kvc_conn_t *conn_new(kvc_t *kvc)
{
    kvc_conn_t *c;

    if (kvc->nconns == KVC_MAX_CONNS) {
        log_error("too many connections (%d)", KVC_MAX_CONNS);
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->kvc = kvc;
    c->state = KVC_CONN_HELLO;
    c->hello_status = DUET_INPROGRESS;
    kvc->conns[kvc->nconns++] = c;
    return c;
}

static void wait_req(kvc_t *kvc, void *r, uint64_t deadline_ns)
{
    if (!UCS_PTR_IS_PTR(r))
        return;
    while (ucp_request_check_status(r) == UCS_INPROGRESS && clock_now_ns() < deadline_ns)
        ucp_worker_progress(kvc->worker);
    ucp_request_free(r);
}

/* Pin host memory the staging copy writes into, when the caller gave a way
 * to. Failing to pin only makes the copies slower: warn and go on. */
static bool stage_pin(kvc_t *kvc, void *ptr, size_t len)
{
    duet_status_t s;

    if (kvc->p.stage_pin == NULL)
        return false;
    s = kvc->p.stage_pin(kvc->p.stage_arg, ptr, len);
    if (s != DUET_OK) {
        log_warn("pinning %zu bytes of staging memory failed (%s): device copies into it "
                 "go through the driver's bounce buffer", len, duet_status_str(s));
        return false;
    }
    return true;
}

static void stage_unpin(kvc_t *kvc, void *ptr)
{
    if (kvc->p.stage_unpin != NULL)
        kvc->p.stage_unpin(kvc->p.stage_arg, ptr);
}

/* Close the shared-memory data endpoint. It was created without error
 * handling, so it is closed in flush mode (a forced close needs
 * UCP_ERR_HANDLING_MODE_PEER); over shared memory the flush is local and
 * needs nothing from the peer. */
static void data_ep_close(kvc_t *kvc, kvc_conn_t *c)
{
    ucp_request_param_t prm = {0};

    if (c->dep == NULL)
        return;
    if (c->rptr_pinned)
        stage_unpin(kvc, c->rptr);
    c->rptr_pinned = false;
    c->rptr = NULL;   /* unmapped with drkey */
    if (c->drkey) {
        ucp_rkey_destroy(c->drkey);
        c->drkey = NULL;
    }
    wait_req(kvc, ucp_ep_close_nbx(c->dep, &prm), clock_now_ns() + 1000000000ull);
    c->dep = NULL;
}

/* Close the endpoint: flush what was sent while the peer is alive (at most
 * 100 ms) so that the last messages are not dropped, then force the close,
 * which needs nothing from the peer. */
static void conn_close(kvc_t *kvc, kvc_conn_t *c)
{
    ucp_request_param_t prm = {0};

    if (c->ep && kvc_conn_alive(c))
        wait_req(kvc, ucp_ep_flush_nbx(c->ep, &prm), clock_now_ns() + 100000000ull);
    data_ep_close(kvc, c);
    if (c->rkey) {
        ucp_rkey_destroy(c->rkey);
        c->rkey = NULL;
    }
    if (c->ep == NULL)
        return;
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    prm.flags = UCP_EP_CLOSE_FLAG_FORCE;
    wait_req(kvc, ucp_ep_close_nbx(c->ep, &prm), clock_now_ns() + 1000000000ull);
    c->ep = NULL;
    c->state = KVC_CONN_DEAD;   /* nothing is sent on it any more */
}

static kvc_conn_t *conn_by_ep(kvc_t *kvc, ucp_ep_h ep)
{
    for (int i = 0; i < kvc->nconns; i++)
        if (kvc->conns[i]->ep == ep && ep != NULL)
            return kvc->conns[i];
    return NULL;
}

static void listener_conn_cb(ucp_conn_request_h creq, void *arg)
{
    kvc_t *kvc = arg;
    ucp_ep_params_t ep_params = {0};
    kvc_conn_t *c = conn_new(kvc);
    ucs_status_t us;

    if (c == NULL) {
        ucp_listener_reject(kvc->listener, creq);
        return;
    }
    ep_params.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                           UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep_params.conn_request = creq;
    ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep_params.err_handler.cb = conn_err_cb;
    ep_params.err_handler.arg = c;
    us = ucp_ep_create(kvc->worker, &ep_params, &c->ep);
    if (us != UCS_OK) {
        log_warn("accepting a connection failed: %s", ucs_status_string(us));
        c->ep = NULL;
        c->state = KVC_CONN_DEAD;
    }
}

/* Decode: a prefill rank introduced itself. Answer with our fingerprint, slab
 * base and key, or the mismatch. */
static void on_hello(kvc_t *kvc, kvc_conn_t *c, const void *data, size_t len)
{
    const kvc_msg_hello_t *m = data;
    kvc_msg_hello_ack_t *a;
    void *rkey_buf = NULL;
    size_t rkey_len = 0, waddr_len = 0;
    ucp_address_t *waddr = NULL;
    duet_status_t s;

    if (len != sizeof(*m) || c->state != KVC_CONN_HELLO || kvc->p.role != KVC_ROLE_DECODE) {
        kvc->stats.rejected++;
        return;
    }
    s = kvc_fp_check(kvc, &m->fp);
    if (s == DUET_OK && (kvc->memh == NULL ||
                         ucp_rkey_pack(kvc->ctx, kvc->memh, &rkey_buf, &rkey_len) != UCS_OK))
        s = DUET_ERR_UCX;
    /* our worker address, for a shared-memory data endpoint (see on_hello_ack) */
    if (s == DUET_OK && kvc->shm && ucp_worker_get_address(kvc->worker, &waddr, &waddr_len) != UCS_OK) {
        waddr = NULL;
        waddr_len = 0;
    }
    a = kvc_msg_new(sizeof(*a) + rkey_len + waddr_len, KVC_MSG_HELLO_ACK, 0);
    if (a == NULL) {
        s = DUET_ERR_NOMEM;
        goto out;
    }
    a->status = s;
    a->rkey_len = (uint32_t)rkey_len;
    kvc_fp_fill(kvc, &a->fp);
    a->slab_base = (uint64_t)(uintptr_t)kvc->slab;
    a->waddr_len = (uint32_t)waddr_len;
    /* DATA is copied in by the CPU: not into a device slab */
    a->flags = kvc->p.mem == KVC_MEM_CUDA ? 0 : KVC_ACK_DATA;
    memcpy(a->boot_id, kvc->boot_id, sizeof(a->boot_id));
    if (rkey_len)
        memcpy(a + 1, rkey_buf, rkey_len);
    if (waddr_len)
        memcpy((char *)(a + 1) + rkey_len, waddr, waddr_len);
    c->peer = m->fp;
    kvc_am_send(c, a, sizeof(*a) + rkey_len + waddr_len, NULL);
out:
    if (rkey_buf)
        ucp_rkey_buffer_release(rkey_buf);
    if (waddr)
        ucp_worker_release_address(kvc->worker, waddr);
    c->state = s == DUET_OK ? KVC_CONN_READY : KVC_CONN_REJECTED;
    if (s == DUET_OK)
        log_info("prefill node %llu rank %d/%d connected",
                 (unsigned long long)m->fp.node_id, (int)m->fp.tp_rank, (int)m->fp.tp_size);
}

/* Does every RMA lane of ep use one of the transports in `tls` (names as
 * ucp_ep_print_info prints them: "posix/", "tcp/", ...)? UCX 1.13 has no
 * query for an endpoint's transports, so read its lane table. */
static bool ep_rma_lanes_are(ucp_ep_h ep, const char *const *tls)
{
    char *buf = NULL, *line, *save = NULL;
    size_t len = 0;
    int match = 0, other = 0;
    FILE *f = open_memstream(&buf, &len);

    if (f == NULL)
        return false;
    ucp_ep_print_info(ep, f);
    fclose(f);
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        bool m = false;

        if (strstr(line, "lane[") == NULL || strstr(line, "rma") == NULL)
            continue;
        for (int i = 0; tls[i] && !m; i++)
            m = strstr(line, tls[i]) != NULL;
        if (m)
            match++;
        else
            other++;
    }
    free(buf);
    return match > 0 && other == 0;
}

static const char *const shm_tls[] = {"posix/", "sysv/", "cma/", "xpmem/", "knem/", NULL};
static const char *const tcp_tls[] = {"tcp/", NULL};

/* Fill in this process's page tables for a slab (ours, or a peer's mapped
 * here), writable, without changing its contents: otherwise the first store
 * to each page of every transfer takes a page fault (measured: half the copy
 * rate). Kernels before 5.14 lack MADV_POPULATE_WRITE; they take the faults. */
static void slab_prefault(void *p, size_t len)
{
#ifdef MADV_POPULATE_WRITE
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p & ~(pg - 1);

    if (madvise((void *)a, len + ((uintptr_t)p - a), MADV_POPULATE_WRITE) != 0)
        log_debug("prefaulting the mapped peer slab: %s", strerror(errno));
#else
    (void)p;
    (void)len;
#endif
}

/* DUET_KVC_RKEY_PTR=0: put over the shared-memory endpoint even when the
 * decode slab could be mapped (to compare the two). */
static bool rkey_ptr_enabled(void)
{
    const char *env = getenv("DUET_KVC_RKEY_PTR");

    return env == NULL || strcmp(env, "0") != 0;
}

/* Prefill: when the decode rank runs on this host and both contexts have a
 * shared-memory transport, open a second endpoint from the decode worker's
 * address for the puts. It is created without error handling, so UCX may pick
 * posix/sysv/cma (which offer peer error handling only with
 * UCX_{POSIX,SYSV}_ERROR_HANDLING=y, and which the sockaddr endpoint cannot
 * use at all); the sockaddr endpoint keeps the messages and detects the peer's
 * death. If the new endpoint would not put over shared memory it is closed
 * again and the puts stay on the sockaddr endpoint. */
static void data_ep_open(kvc_t *kvc, kvc_conn_t *c)
{
    ucp_ep_params_t ep_params = {0};
    ucs_status_t us;
    void *rptr = NULL;
    const char *env = getenv("DUET_KVC_SHM_EP");

    if (c->ack_extra == NULL)
        return;
    if (env != NULL && strcmp(env, "0") == 0) {
        log_info("DUET_KVC_SHM_EP=0: puts stay on the sockaddr endpoint");
        return;
    }
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                           UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep_params.address = (const ucp_address_t *)((const char *)c->ack_extra + c->ack_rkey_len);
    ep_params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    us = ucp_ep_create(kvc->worker, &ep_params, &c->dep);
    if (us != UCS_OK) {
        log_info("no shared-memory endpoint to the decode rank: %s", ucs_status_string(us));
        c->dep = NULL;
        return;
    }
    us = ucp_ep_rkey_unpack(c->dep, c->ack_extra, &c->drkey);
    if (us != UCS_OK) {
        log_info("the decode slab's key does not unpack on the shared-memory endpoint: %s; "
                 "puts stay on the sockaddr endpoint", ucs_status_string(us));
        c->drkey = NULL;
        data_ep_close(kvc, c);
        return;
    }
    /* The decode slab was allocated by a shared-memory domain (UCX_ALLOC_PRIO
     * puts md:sysv and md:posix first): map it here, and every write becomes
     * one copy from our slab into it, the floor of any transfer on one host.
     * Otherwise puts, over whatever RMA lane the endpoint has (cma: one
     * process_vm_writev per put). */
    if (rkey_ptr_enabled() &&
        ucp_rkey_ptr(c->drkey, c->remote_base, &rptr) == UCS_OK && rptr != NULL) {
        c->rptr = rptr;
        slab_prefault(rptr, kv_slab_bytes(&c->peer_layout));
        /* staging copies go from the device straight into the mapping */
        if (kvc->staging)
            c->rptr_pinned = stage_pin(kvc, rptr, kv_slab_bytes(&c->peer_layout));
        log_info("writes to decode rank %d are stores into its slab, mapped here",
                 (int)c->peer.tp_rank);
        return;
    }
    if (!ep_rma_lanes_are(c->dep, shm_tls)) {
        log_info("the address endpoint to the decode rank does not put over shared memory; "
                 "puts stay on the sockaddr endpoint");
        data_ep_close(kvc, c);
        return;
    }
    log_info("puts to decode rank %d go over shared memory", (int)c->peer.tp_rank);
}

/* Prefill: how writes to c travel when they are not copies into a mapped
 * slab nor puts over shared memory. UCX's TCP transport emulates a put with
 * a message that its receive handler copies into the target with memcpy;
 * into a slab far larger than the cache that copy reads every destination
 * line first. With DATA messages the decode rank makes that copy itself,
 * with non-temporal stores, and checks each run against the grant.
 * DUET_KVC_DATA=put or =am overrides the choice (to compare the two). */
static void data_path_pick(kvc_t *kvc, kvc_conn_t *c)
{
    const char *env = getenv("DUET_KVC_DATA");

    if (c->rptr != NULL || c->dep != NULL)
        return;
    /* the decode rank copies DATA with the CPU, and UCX reads an iov as host
     * memory: neither side's slab may be device memory (a staged one is
     * sent from the host staging buffers) */
    if ((env != NULL && strcmp(env, "put") == 0) || !c->peer_data ||
        (kvc->p.mem == KVC_MEM_CUDA && !kvc->staging))
        return;
    c->am_data = (env != NULL && strcmp(env, "am") == 0) || ep_rma_lanes_are(c->ep, tcp_tls);
    if (c->am_data)
        log_info("writes to decode rank %d are DATA messages, copied by the decode rank",
                 (int)c->peer.tp_rank);
}

/* Prefill: the decode rank answered our HELLO. */
static void on_hello_ack(kvc_t *kvc, kvc_conn_t *c, const void *data, size_t len)
{
    const kvc_msg_hello_ack_t *a = data;
    duet_status_t s;
    int32_t first, count;

    if (len < sizeof(*a) || len != sizeof(*a) + (uint64_t)a->rkey_len + a->waddr_len ||
        c->state != KVC_CONN_HELLO ||
        kvc->p.role != KVC_ROLE_PREFILL) {
        kvc->stats.rejected++;
        return;
    }
    s = a->status;
    if (s != DUET_OK) {
        log_error("decode rank refused the connection: %s", duet_status_str(s));
        if (s == DUET_ERR_MISMATCH)
            kvc_fp_check(kvc, &a->fp);   /* logs the field that differs */
        goto fail;
    }
    s = kvc_fp_check(kvc, &a->fp);
    if (s != DUET_OK)
        goto fail;
    if (ucp_ep_rkey_unpack(c->ep, a + 1, &c->rkey) != UCS_OK) {
        s = DUET_ERR_UCX;
        goto fail;
    }
    c->peer = a->fp;
    c->remote_base = a->slab_base;
    c->peer_data = (a->flags & KVC_ACK_DATA) != 0;
    kvc_tp_heads(a->fp.n_kv_heads_total, a->fp.tp_size, a->fp.tp_rank, &first, &count);
    c->peer_layout = kvc->p.layout;
    c->peer_layout.n_kv_heads = count;
    c->peer_layout.n_blocks = a->fp.n_blocks;
    kvc_tp_route(kvc->p.n_kv_heads_total, kvc->p.tp_size, kvc->p.tp_rank,
                 a->fp.tp_size, a->fp.tp_rank, &c->src_head, &c->dst_head, &c->nheads);
    /* same host, both with shared memory: keep the rkey and the worker
     * address for data_ep_open, called by kvc_connect outside this callback
     * (creating and closing endpoints progresses the worker) */
    if (a->waddr_len > 0 && kvc->shm && kvc->boot_id[0] != '\0' &&
        strncmp(a->boot_id, kvc->boot_id, sizeof(a->boot_id)) == 0 &&
        (c->ack_extra = malloc((size_t)a->rkey_len + a->waddr_len)) != NULL) {
        memcpy(c->ack_extra, a + 1, (size_t)a->rkey_len + a->waddr_len);
        c->ack_rkey_len = a->rkey_len;
        c->ack_waddr_len = a->waddr_len;
    }
    c->hello_status = DUET_OK;
    c->state = KVC_CONN_READY;
    return;
fail:
    c->hello_status = s;
    c->state = KVC_CONN_REJECTED;
}

static ucs_status_t am_cb(void *arg, const void *header, size_t header_length, void *data,
                          size_t length, const ucp_am_recv_param_t *param)
{
    kvc_t *kvc = arg;
    kvc_conn_t *c = NULL;
    void *aligned = NULL;
    kvc_hdr_t h;

    if (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP)
        c = conn_by_ep(kvc, param->reply_ep);
    if (header_length > 0) {
        /* DATA: the only message with an AM header */
        if (c == NULL || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) || kvc->destroying ||
            kvc->p.role != KVC_ROLE_DECODE || kvc->p.mem == KVC_MEM_CUDA ||
            (c->state != KVC_CONN_READY && c->state != KVC_CONN_FAILED)) {
            if (kvc_log_rejected(kvc))
                log_warn("dropped a DATA message (%zu bytes, attr %llx): no connection, "
                         "rendezvous, or not a decode rank with a host slab", length,
                         (unsigned long long)param->recv_attr);
            return UCS_OK;
        }
        kvc_recv_on_data(kvc, c, header, header_length, data, length);
        return UCS_OK;
    }
    if (c == NULL || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) || length < sizeof(h) ||
        kvc->destroying) {
        kvc->stats.rejected++;
        log_warn("dropped a message (%zu bytes, attr %llx, ep %p, %d conns): no connection, "
                 "rendezvous, or too short", length, (unsigned long long)param->recv_attr,
                 (void *)param->reply_ep, kvc->nconns);
        return UCS_OK;
    }
    if ((uintptr_t)data % 8) {
        /* transports deliver at any alignment; the structs need 8 */
        aligned = malloc(length);
        if (aligned == NULL)
            return UCS_OK;
        memcpy(aligned, data, length);
        data = aligned;
    }
    memcpy(&h, data, sizeof(h));
    if (h.magic != KVC_WIRE_MAGIC) {
        free(aligned);
        kvc->stats.rejected++;
        log_warn("dropped a message with bad magic %08x", h.magic);
        return UCS_OK;
    }
    if (h.type == KVC_MSG_HELLO)
        on_hello(kvc, c, data, length);
    else if (h.type == KVC_MSG_HELLO_ACK)
        on_hello_ack(kvc, c, data, length);
    else if (c->state != KVC_CONN_READY && c->state != KVC_CONN_FAILED)
        kvc->stats.rejected++;   /* (a failed peer's last messages still count) */
    else if (kvc->p.role == KVC_ROLE_PREFILL)
        kvc_send_on_msg(kvc, c, &h, data, length);
    else
        kvc_recv_on_msg(kvc, c, &h, data, length);
    free(aligned);
    return UCS_OK;
}

/* ---- create / destroy ---------------------------------------------------- */

static duet_status_t params_check(const kvc_params_t *p)
{
    const kv_layout_t *l = &p->layout;
    int32_t first, count;

    if (p->role != KVC_ROLE_PREFILL && p->role != KVC_ROLE_DECODE)
        return DUET_ERR_INVALID;
    if (l->n_layers <= 0 || l->n_blocks <= 0 || l->block_size <= 0 || l->head_dim <= 0 ||
        (l->dtype != DTYPE_F16 && l->dtype != DTYPE_F32 && l->dtype != DTYPE_BF16)) {
        log_error("bad KV layout: %d layers, %d blocks, block size %d, head dim %d, dtype %d",
                  l->n_layers, l->n_blocks, l->block_size, l->head_dim, (int)l->dtype);
        return DUET_ERR_INVALID;
    }
    if (p->tp_size > KVC_MAX_TP ||
        kvc_tp_heads(p->n_kv_heads_total, p->tp_size, p->tp_rank, &first, &count) != DUET_OK) {
        log_error("TP %d (rank %d) cannot split %d KV heads", p->tp_size, p->tp_rank,
                  p->n_kv_heads_total);
        return DUET_ERR_INVALID;
    }
    if (count != l->n_kv_heads) {
        log_error("layout holds %d KV heads but rank %d of TP %d holds %d",
                  l->n_kv_heads, p->tp_rank, p->tp_size, count);
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

/* Two pinned host buffers for staging device memory through. */
static duet_status_t stage_map(kvc_t *kvc)
{
    ucp_mem_map_params_t mp = {0};
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS};

    if (kvc->p.stage_copy == NULL) {
        log_error("staging a device slab needs params.stage_copy");
        return DUET_ERR_INVALID;
    }
    if (kvc->p.stage_bytes == 0)
        kvc->p.stage_bytes = 4u << 20;
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.length = 2 * kvc->p.stage_bytes;
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    if (ucp_mem_map(kvc->ctx, &mp, &kvc->stage_memh) != UCS_OK)
        return DUET_ERR_NOMEM;
    if (ucp_mem_query(kvc->stage_memh, &ma) != UCS_OK) {
        ucp_mem_unmap(kvc->ctx, kvc->stage_memh);
        kvc->stage_memh = NULL;
        return DUET_ERR_UCX;
    }
    kvc->stage_buf[0] = ma.address;
    kvc->stage_buf[1] = (char *)ma.address + kvc->p.stage_bytes;
    kvc->staging = true;
    kvc->stage_pinned = stage_pin(kvc, kvc->stage_buf[0], 2 * kvc->p.stage_bytes);
    return DUET_OK;
}

/* Undo slab_map (and stage_map): safe on a partly mapped kvc, and twice. */
static void slab_unmap(kvc_t *kvc)
{
    if (kvc->memh)
        ucp_mem_unmap(kvc->ctx, kvc->memh);
    kvc->memh = NULL;
    if (kvc->stage_pinned)
        stage_unpin(kvc, kvc->stage_buf[0]);
    kvc->stage_pinned = false;
    if (kvc->stage_memh)
        ucp_mem_unmap(kvc->ctx, kvc->stage_memh);
    kvc->stage_memh = NULL;
    if (kvc->slab_owned)
        free(kvc->slab);
    kvc->slab_owned = false;
}

static duet_status_t slab_map(kvc_t *kvc)
{
    ucp_mem_map_params_t mp = {0};
    ucp_mem_attr_t ma = {0};
    ucp_context_attr_t ca = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    bool cuda_ok;
    ucs_status_t us;

    cuda_ok = ucp_context_query(kvc->ctx, &ca) == UCS_OK &&
              (ca.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA));
    if (kvc->p.mem == KVC_MEM_CUDA && kvc->p.slab == NULL) {
        log_error("a device slab must be given (params.slab)");
        return DUET_ERR_INVALID;
    }
    if (kvc->p.stage_force || (kvc->p.mem == KVC_MEM_CUDA && !cuda_ok)) {
        if (kvc->p.role == KVC_ROLE_DECODE) {
            log_error("this UCX cannot write into device memory; give the decode rank a "
                      "host slab");
            return DUET_ERR_UNSUPPORTED;
        }
        CHECK(stage_map(kvc));
        log_info("prefill slab staged through 2 x %zu bytes of pinned host memory",
                 kvc->p.stage_bytes);
        /* the device slab itself is never registered */
        kvc->slab = kvc->p.slab;
        if (kvc->slab == NULL) {
            kvc->slab = calloc(1, kv_slab_bytes(&kvc->p.layout));
            kvc->slab_owned = true;
            if (kvc->slab == NULL) {
                slab_unmap(kvc);
                return DUET_ERR_NOMEM;
            }
        }
        return DUET_OK;
    }
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.length = kv_slab_bytes(&kvc->p.layout);
    if (kvc->p.mem == KVC_MEM_CUDA) {
        mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
        mp.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    if (kvc->p.slab) {
        mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_ADDRESS;
        mp.address = kvc->p.slab;
    } else {
        mp.flags = UCP_MEM_MAP_ALLOCATE;
    }
    us = ucp_mem_map(kvc->ctx, &mp, &kvc->memh);
    if (us != UCS_OK) {
        log_error("registering the %zu-byte KV slab failed: %s", mp.length,
                  ucs_status_string(us));
        return us == UCS_ERR_NO_MEMORY ? DUET_ERR_NOMEM : DUET_ERR_UCX;
    }
    ma.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
    us = ucp_mem_query(kvc->memh, &ma);
    if (us != UCS_OK) {
        ucp_mem_unmap(kvc->ctx, kvc->memh);
        kvc->memh = NULL;
        return DUET_ERR_UCX;
    }
    kvc->slab = ma.address;
    /* fault the slab in now, not page by page under the first transfers
     * (into a fresh 1 GiB slab they ran at a third of the later rate,
     * zeroing pages) */
    if (kvc->p.mem != KVC_MEM_CUDA)
        slab_prefault(kvc->slab, mp.length);
    return DUET_OK;
}

static duet_status_t listen_start(kvc_t *kvc)
{
    ucp_listener_params_t lp = {0};
    ucp_listener_attr_t la = {0};
    struct sockaddr_in sa = {0};
    const char *ip = kvc->p.listen_ip ? kvc->p.listen_ip : "0.0.0.0";
    char buf[INET_ADDRSTRLEN];
    ucs_status_t us;

    sa.sin_family = AF_INET;
    sa.sin_port = htons(kvc->p.listen_port);
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
        log_error("bad listen address '%s'", ip);
        return DUET_ERR_INVALID;
    }
    lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    lp.sockaddr.addr = (const struct sockaddr *)&sa;
    lp.sockaddr.addrlen = sizeof(sa);
    lp.conn_handler.cb = listener_conn_cb;
    lp.conn_handler.arg = kvc;
    us = ucp_listener_create(kvc->worker, &lp, &kvc->listener);
    if (us != UCS_OK) {
        log_error("listening on %s:%u failed: %s", ip, kvc->p.listen_port,
                  ucs_status_string(us));
        return DUET_ERR_IO;
    }
    la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    if (ucp_listener_query(kvc->listener, &la) != UCS_OK) {
        ucp_listener_destroy(kvc->listener);
        kvc->listener = NULL;
        return DUET_ERR_UCX;
    }
    snprintf(kvc->listen_addr, sizeof(kvc->listen_addr), "%s:%u",
             strcmp(ip, "0.0.0.0") == 0 ? "127.0.0.1" : inet_ntop(AF_INET, &sa.sin_addr, buf, sizeof(buf)),
             ntohs(((struct sockaddr_in *)&la.sockaddr)->sin_port));
    return DUET_OK;
}

/* This host's boot id and whether the context has a shared-memory transport
 * (both sides need one for the data endpoint; see data_ep_open). */
static void host_probe(kvc_t *kvc)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");

    if (f != NULL) {
        if (fgets(kvc->boot_id, sizeof(kvc->boot_id), f) == NULL)
            kvc->boot_id[0] = '\0';
        kvc->boot_id[strcspn(kvc->boot_id, "\n")] = '\0';
        fclose(f);
    }
    f = open_memstream(&buf, &len);
    if (f == NULL)
        return;
    ucp_context_print_info(kvc->ctx, f);
    fclose(f);
    kvc->shm = buf && (strstr(buf, "posix/") || strstr(buf, "sysv/") || strstr(buf, "cma/") ||
                       strstr(buf, "xpmem/") || strstr(buf, "knem/"));
    free(buf);
}

/* UCX_TLS may select tcp (unset, "all", naming tcp, or an exclusion list
 * that does not exclude it); otherwise a tcp setting would only draw UCX's
 * "invalid configurations" warning. */
static bool tls_has_tcp(void)
{
    const char *tls = getenv("UCX_TLS");

    if (tls == NULL)
        return true;
    if (tls[0] == '^')
        return strstr(tls, "tcp") == NULL;
    return strstr(tls, "tcp") != NULL || strstr(tls, "all") != NULL;
}

int kvc_ucx_settings(const kvc_ucx_setting_t **settings_p)
{
    /* UCX 1.13 applies a transport key given to ucp_config_modify without the
     * transport's prefix ("TX_SEG_SIZE"; "TCP_TX_SEG_SIZE" is reported as an
     * invalid configuration and ignored); only tcp has this key here */
    static const kvc_ucx_setting_t set[] = {
        {"UCX_MAX_EAGER_RAILS", "MAX_EAGER_RAILS", "1"},
        {"UCX_TCP_TX_SEG_SIZE", "TX_SEG_SIZE", "64K"},
    };

    *settings_p = set;
    return getenv(set[1].env) == NULL && tls_has_tcp() ? 2 : 1;
}

duet_status_t kvc_create(const kvc_params_t *params, kvc_t **kvc_p)
{
    ucp_params_t up = {0};
    ucp_worker_params_t wp = {0};
    ucp_am_handler_param_t ap = {0};
    ucp_config_t *cfg;
    const kvc_ucx_setting_t *set;
    ucs_status_t us;
    duet_status_t s;
    kvc_t *kvc;

    CHECK(params_check(params));
    kvc = calloc(1, sizeof(*kvc));
    if (kvc == NULL)
        return DUET_ERR_NOMEM;
    kvc->p = *params;
    kvc->p.listen_ip = NULL;   /* not kept past create */
    if (kvc->p.max_inflight == 0)
        kvc->p.max_inflight = 64u << 20;
    if (kvc->p.data_msg_bytes == 0 || kvc->p.data_msg_bytes > KVC_DATA_BYTES)
        kvc->p.data_msg_bytes = KVC_DATA_BYTES;
    if (kvc->p.abort_timeout_ms == 0)
        kvc->p.abort_timeout_ms = 5000;
    kvc_rmap_init(&kvc->reqs);

    up.field_mask = UCP_PARAM_FIELD_FEATURES;
    up.features = UCP_FEATURE_AM | UCP_FEATURE_RMA;
    us = ucp_config_read(NULL, NULL, &cfg);
    if (us != UCS_OK) {
        log_error("ucp_config_read failed: %s", ucs_status_string(us));
        s = DUET_ERR_UCX;
        goto err_free;
    }
    for (int i = 0, n = kvc_ucx_settings(&set); i < n; i++) {
        us = ucp_config_modify(cfg, set[i].key, set[i].value);
        if (us != UCS_OK) {
            log_warn("ucp_config_modify(%s=%s) failed: %s (left to UCX)", set[i].key,
                     set[i].value, ucs_status_string(us));
            continue;
        }
        snprintf(kvc->ucx_set + strlen(kvc->ucx_set), sizeof(kvc->ucx_set) - strlen(kvc->ucx_set),
                 "%s%s=%s", kvc->ucx_set[0] ? " " : "", set[i].env, set[i].value);
    }
    us = ucp_init(&up, cfg, &kvc->ctx);
    ucp_config_release(cfg);
    if (us != UCS_OK) {
        log_error("ucp_init failed: %s", ucs_status_string(us));
        s = DUET_ERR_UCX;
        goto err_free;
    }
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    us = ucp_worker_create(kvc->ctx, &wp, &kvc->worker);
    if (us != UCS_OK) {
        log_error("ucp_worker_create failed: %s", ucs_status_string(us));
        s = DUET_ERR_UCX;
        goto err_ctx;
    }
    ap.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG;
    ap.id = KVC_AM_ID;
    ap.cb = am_cb;
    ap.arg = kvc;
    us = ucp_worker_set_am_recv_handler(kvc->worker, &ap);
    if (us != UCS_OK) {
        s = DUET_ERR_UCX;
        goto err_worker;
    }
    CHECK_GOTO(slab_map(kvc), s, err_worker);
    host_probe(kvc);
    if (params->role == KVC_ROLE_DECODE) {
        kvc->p.listen_ip = params->listen_ip;
        s = listen_start(kvc);
        kvc->p.listen_ip = NULL;
        if (s != DUET_OK)
            goto err_slab;
    }
    *kvc_p = kvc;
    return DUET_OK;

err_slab:
    slab_unmap(kvc);
err_worker:
    ucp_worker_destroy(kvc->worker);
err_ctx:
    ucp_cleanup(kvc->ctx);
err_free:
    free(kvc);
    return s;
}

void kvc_destroy(kvc_t *kvc)
{
    if (kvc == NULL)
        return;
    kvc->destroying = true;
    if (kvc->listener)
        ucp_listener_destroy(kvc->listener);
    for (int i = 0; i < kvc->nconns; i++)
        conn_close(kvc, kvc->conns[i]);
    for (int i = 0; i < 100; i++)
        ucp_worker_progress(kvc->worker);
    if (kvc->p.role == KVC_ROLE_PREFILL)
        kvc_send_destroy(kvc);
    else
        kvc_recv_destroy(kvc);
    for (int i = 0; i < kvc->nconns; i++)
        free(kvc->conns[i]);
    slab_unmap(kvc);
    ucp_worker_destroy(kvc->worker);
    ucp_cleanup(kvc->ctx);
    free(kvc);
}

void *kvc_slab(kvc_t *kvc)
{
    return kvc->slab;
}

duet_status_t kvc_listen_address(kvc_t *kvc, char *buf, size_t len)
{
    if (kvc->listener == NULL)
        return DUET_ERR_INVALID;
    if ((size_t)snprintf(buf, len, "%s", kvc->listen_addr) >= len)
        return DUET_ERR_TOO_BIG;
    return DUET_OK;
}

void kvc_stats(const kvc_t *kvc, kvc_stats_t *stats_p)
{
    *stats_p = kvc->stats;
}

/* ---- prefill connect ----------------------------------------------------- */

duet_status_t kvc_connect(kvc_t *kvc, const char *addr, int timeout_ms,
                          uint64_t *decode_node_p)
{
    ucp_ep_params_t ep_params = {0};
    struct sockaddr_in sa = {0};
    char ip[64];
    const char *colon;
    kvc_msg_hello_t *m;
    kvc_conn_t *c;
    uint64_t deadline;
    ucs_status_t us;
    duet_status_t s;
    long port;

    if (kvc->p.role != KVC_ROLE_PREFILL)
        return DUET_ERR_INVALID;
    colon = addr ? strrchr(addr, ':') : NULL;
    if (colon == NULL || (size_t)(colon - addr) >= sizeof(ip)) {
        log_error("bad decode address '%s' (want ip:port)", addr ? addr : "(null)");
        return DUET_ERR_INVALID;
    }
    memcpy(ip, addr, (size_t)(colon - addr));
    ip[colon - addr] = '\0';
    port = strtol(colon + 1, NULL, 10);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
        log_error("bad decode address '%s' (want ip:port)", addr);
        return DUET_ERR_INVALID;
    }
    c = conn_new(kvc);
    if (c == NULL)
        return DUET_ERR_NO_RESOURCE;
    ep_params.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                           UCP_EP_PARAM_FIELD_ERR_HANDLER |
                           UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep_params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    ep_params.sockaddr.addr = (const struct sockaddr *)&sa;
    ep_params.sockaddr.addrlen = sizeof(sa);
    ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep_params.err_handler.cb = conn_err_cb;
    ep_params.err_handler.arg = c;
    us = ucp_ep_create(kvc->worker, &ep_params, &c->ep);
    if (us != UCS_OK) {
        log_error("connecting to %s failed: %s", addr, ucs_status_string(us));
        c->ep = NULL;
        c->state = KVC_CONN_DEAD;
        return DUET_ERR_PEER;
    }
    m = kvc_msg_new(sizeof(*m), KVC_MSG_HELLO, 0);
    if (m == NULL) {
        s = DUET_ERR_NOMEM;
        goto err_close;
    }
    kvc_fp_fill(kvc, &m->fp);
    CHECK_GOTO(kvc_am_send(c, m, sizeof(*m), NULL), s, err_close);
    deadline = clock_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (c->state == KVC_CONN_HELLO && clock_now_ns() < deadline)
        kvc_progress(kvc);
    if (c->state != KVC_CONN_READY) {
        s = c->state == KVC_CONN_HELLO ? DUET_ERR_TIMEOUT
            : c->hello_status < 0 ? c->hello_status : DUET_ERR_PEER;
        log_error("connecting to decode rank at %s: %s", addr, duet_status_str(s));
        goto err_close;
    }
    data_ep_open(kvc, c);
    data_path_pick(kvc, c);
    free(c->ack_extra);
    c->ack_extra = NULL;
    log_info("connected to decode node %llu rank %d/%d at %s (%d heads from local head %d)",
             (unsigned long long)c->peer.node_id, (int)c->peer.tp_rank, (int)c->peer.tp_size,
             addr, c->nheads, c->src_head);
    *decode_node_p = c->peer.node_id;
    return DUET_OK;

err_close:
    free(c->ack_extra);
    c->ack_extra = NULL;
    conn_close(kvc, c);
    c->state = KVC_CONN_DEAD;
    return s;
}

/* ---- progress ------------------------------------------------------------ */

static void conns_reap(kvc_t *kvc)
{
    kvc->conn_failed = false;
    for (int i = 0; i < kvc->nconns; i++) {
        kvc_conn_t *c = kvc->conns[i];

        if (c->state != KVC_CONN_FAILED)
            continue;
        c->state = KVC_CONN_DEAD;
        if (kvc->p.role == KVC_ROLE_PREFILL)
            kvc_send_conn_failed(kvc, c);
        else
            kvc_recv_conn_failed(kvc, c);
        conn_close(kvc, c);
    }
}

int kvc_progress(kvc_t *kvc)
{
    int n = 0;
    uint64_t now;

    while (ucp_worker_progress(kvc->worker))
        n++;
    if (kvc->conn_failed) {
        conns_reap(kvc);
        n++;
    }
    if (kvc->p.role == KVC_ROLE_PREFILL) {
        n += kvc_send_progress(kvc);
    } else {
        now = clock_now_ns();
        if (now >= kvc->next_timer_ns) {
            kvc->next_timer_ns = now + 1000000ull;
            n += kvc_recv_progress(kvc, now);
        }
    }
    return n;
}

duet_status_t kvc_abort(kvc_t *kvc, uint64_t req)
{
    return kvc->p.role == KVC_ROLE_PREFILL ? kvc_send_abort(kvc, req)
                                           : kvc_recv_abort(kvc, req);
}

duet_status_t kvc_test_send_raw(kvc_t *kvc, uint64_t node, const void *buf, size_t len)
{
    for (int i = 0; i < kvc->nconns; i++) {
        kvc_conn_t *c = kvc->conns[i];
        void *copy;

        if (c->state != KVC_CONN_READY || c->peer.node_id != node)
            continue;
        copy = malloc(len ? len : 1);
        if (copy == NULL)
            return DUET_ERR_NOMEM;
        memcpy(copy, buf, len);
        return kvc_am_send(c, copy, len, NULL);
    }
    return DUET_ERR_NOT_FOUND;
}

duet_status_t kvc_test_send_data(kvc_t *kvc, uint64_t node, int rank, const void *hdr,
                                 size_t hlen, const void *payload, size_t len)
{
    kvc_conn_t *c = kvc_conn_find(kvc, node, rank);
    ucp_request_param_t prm = {0};
    ucs_status_t us = UCS_OK;
    void *q;

    if (c == NULL)
        return DUET_ERR_NOT_FOUND;
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    prm.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    q = ucp_am_send_nbx(c->ep, KVC_AM_ID, hdr, hlen, payload, len, &prm);
    if (UCS_PTR_IS_ERR(q))
        return status_from_ucs(UCS_PTR_STATUS(q));
    if (q != NULL) {
        while ((us = ucp_request_check_status(q)) == UCS_INPROGRESS)
            ucp_worker_progress(kvc->worker);
        ucp_request_free(q);
    }
    return us == UCS_OK ? DUET_OK : status_from_ucs(us);
}

void kvc_test_drop_data(kvc_t *kvc, uint64_t req, int n)
{
    kvc->drop_req = req;
    kvc->drop_n = n;
}

duet_status_t kvc_test_quiesce(kvc_t *kvc, int timeout_ms)
{
    uint64_t deadline = clock_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    duet_status_t s = DUET_OK;

    for (int i = 0; i < kvc->nconns; i++) {
        kvc_conn_t *c = kvc->conns[i];
        ucp_request_param_t prm = {0};
        ucs_status_t us = UCS_OK;
        void *r;

        if (!kvc_conn_alive(c) || c->ep == NULL)
            continue;
        r = ucp_ep_flush_nbx(kvc_conn_put_ep(c), &prm);
        if (UCS_PTR_IS_ERR(r)) {
            us = UCS_PTR_STATUS(r);
        } else if (r != NULL) {
            while ((us = ucp_request_check_status(r)) == UCS_INPROGRESS &&
                   clock_now_ns() < deadline)
                ucp_worker_progress(kvc->worker);
            ucp_request_free(r);
        }
        if (us != UCS_OK && s == DUET_OK)
            s = us == UCS_INPROGRESS ? DUET_ERR_TIMEOUT : status_from_ucs(us);
    }
    return s;
}

const char *kvc_test_ucx_settings(const kvc_t *kvc)
{
    return kvc->ucx_set;
}
