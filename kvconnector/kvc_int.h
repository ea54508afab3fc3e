/* KV connector internals shared by kvc.c (context, connections, messages),
 * kvc_send.c (prefill) and kvc_recv.c (decode). Not a public header. */
#ifndef DUET_KVCONNECTOR_KVC_INT_H
#define DUET_KVCONNECTOR_KVC_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <ucp/api/ucp.h>

#include "kvconnector/kvc.h"

#define KVC_AM_ID        0x4b
#define KVC_WIRE_MAGIC   0x4b564332u   /* "KVC2": DATA, LAYER_DONE.data_bytes */
#define KVC_MAX_TP       8             /* ranks of a peer node we track */
#define KVC_MAX_CONNS    64
#define KVC_MAX_BLOCKS   (1 << 20)     /* per grant */
#define KVC_NBUCKETS     256
#define KVC_TOMBSTONES   1024

/* ---- wire messages: fixed little-endian structs, one per AM ------------ */

enum {
    KVC_MSG_HELLO = 1,     /* prefill -> decode: fingerprint */
    KVC_MSG_HELLO_ACK,     /* decode -> prefill: status, fingerprint, slab base, rkey */
    KVC_MSG_GRANT,         /* decode -> prefill: blocks for a request */
    KVC_MSG_NACK,          /* decode -> prefill: cannot grant */
    KVC_MSG_LAYER_DONE,    /* prefill -> decode: a layer's tokens are in place */
    KVC_MSG_KV_END,        /* prefill -> decode: first token + sampling state */
    KVC_MSG_ABORT,         /* both: stop; from prefill also "no more writes" */
    KVC_MSG_DATA,          /* prefill -> decode: KV runs to copy into granted blocks */
};

/* DATA messages (the data path over TCP, see kvc_conn_t.am_data): at most
 * this many payload bytes and runs each, so that one fits a 64 KiB TCP
 * segment (kvc_ucx_settings) and arrives as one eager message. */
#define KVC_DATA_BYTES   (60u << 10)
#define KVC_DATA_RUNS    32

typedef struct {
    uint32_t magic;
    uint16_t type;
    uint16_t pad;
    uint64_t req;
} kvc_hdr_t;

typedef struct {
    uint64_t model_fp;
    uint64_t node_id;
    int32_t  n_layers;
    int32_t  n_kv_heads_total;
    int32_t  head_dim;
    int32_t  block_size;
    int32_t  dtype;
    int32_t  tp_size;
    int32_t  tp_rank;
    int32_t  n_blocks;
    int32_t  role;
    int32_t  pad;
} kvc_fp_t;

typedef struct {
    kvc_hdr_t h;
    kvc_fp_t  fp;
} kvc_msg_hello_t;

typedef struct {
    kvc_hdr_t h;
    int32_t   status;
    uint32_t  rkey_len;
    kvc_fp_t  fp;
    uint64_t  slab_base;
    uint32_t  waddr_len;   /* bytes of worker address after the rkey (0: none) */
    uint32_t  flags;       /* KVC_ACK_* */
    char      boot_id[40]; /* the decode host's boot id (same host: shared memory) */
    /* rkey_len bytes of packed rkey, then waddr_len bytes of the decode
     * worker's address follow */
} kvc_msg_hello_ack_t;

#define KVC_ACK_DATA 1u    /* HELLO_ACK: the slab is host memory, DATA welcome */

typedef struct {
    kvc_hdr_t h;
    int32_t   n_tokens;
    int32_t   nblocks;
    uint32_t  lease_ms;
    int32_t   pad;
    /* int32_t blocks[nblocks] follow */
} kvc_msg_grant_t;

typedef struct {
    kvc_hdr_t h;
    int32_t   layer;
    int32_t   tok0, tok1;
    int32_t   n_layers;    /* layers layer .. layer + n_layers - 1, same tokens (0: 1) */
    uint64_t  data_bytes;  /* DATA payload bytes sent for the request so far, this
                              message's included (0 on the put paths) */
} kvc_msg_layer_t;

/* The AM header of a DATA message; nruns kvc_run_t follow it in the header,
 * and the payload is the runs' bytes back to back. */
typedef struct {
    kvc_hdr_t h;
    uint32_t  nruns;
    uint32_t  pad;
} kvc_msg_data_t;

typedef struct {
    uint64_t off;          /* offset in the decode rank's slab */
    uint64_t len;
} kvc_run_t;

typedef struct {
    kvc_hdr_t h;
    int32_t   first_token;
    uint32_t  state_len;
    /* state_len bytes follow */
} kvc_msg_end_t;

typedef struct {
    kvc_hdr_t h;
    int32_t   reason;   /* duet_status_t */
    int32_t   pad;
} kvc_msg_abort_t;      /* also NACK */

/* ---- requests: hashed by id and linked in creation order --------------- */

typedef struct kvc_rhdr {
    uint64_t         id;
    struct kvc_rhdr *hnext;
    struct kvc_rhdr *prev, *next;
} kvc_rhdr_t;

typedef struct {
    kvc_rhdr_t *buckets[KVC_NBUCKETS];
    kvc_rhdr_t  list;    /* sentinel */
    int         count;
} kvc_rmap_t;

void kvc_rmap_init(kvc_rmap_t *m);
kvc_rhdr_t *kvc_rmap_get(kvc_rmap_t *m, uint64_t id);
void kvc_rmap_add(kvc_rmap_t *m, kvc_rhdr_t *h);
void kvc_rmap_del(kvc_rmap_t *m, kvc_rhdr_t *h);

/* ---- connections -------------------------------------------------------- */

typedef enum {
    KVC_CONN_HELLO = 0,   /* waiting for the handshake */
    KVC_CONN_READY,
    KVC_CONN_REJECTED,    /* handshake failed */
    KVC_CONN_FAILED,      /* endpoint error seen; requests not yet failed */
    KVC_CONN_DEAD,        /* closed */
} kvc_conn_state_t;

typedef struct kvc_conn {
    kvc_t           *kvc;
    ucp_ep_h         ep;
    kvc_conn_state_t state;
    duet_status_t    hello_status;
    kvc_fp_t         peer;          /* the peer's fingerprint (after HELLO) */
    kv_layout_t      peer_layout;   /* the peer's slab (prefill: decode rank's) */
    uint64_t         remote_base;   /* prefill: decode slab address */
    ucp_rkey_h       rkey;          /* prefill: decode slab key, unpacked on the put ep */
    ucp_ep_h         dep;           /* prefill: shared-memory data endpoint from the
                                       decode worker's address (puts only), or NULL:
                                       puts go on ep */
    ucp_rkey_h       drkey;         /* prefill: decode slab key unpacked on dep */
    bool             am_data;       /* prefill: writes are DATA messages on ep,
                                       copied into the slab by the decode rank
                                       (every RMA lane of ep is TCP) */
    bool             peer_data;     /* prefill: the decode rank takes DATA */
    char            *rptr;          /* prefill: the decode slab mapped here
                                       (ucp_rkey_ptr on drkey): writes are
                                       copies into it; NULL: writes are puts */
    bool             rptr_pinned;   /* rptr pinned by params.stage_pin */
    void            *ack_extra;     /* prefill, until kvc_connect returns: the
                                       HELLO_ACK's packed rkey + worker address */
    size_t           ack_rkey_len, ack_waddr_len;
    int32_t          src_head, dst_head, nheads;  /* route, see kvc_tp_route */
} kvc_conn_t;

/* ---- the context -------------------------------------------------------- */

/* A put from a staging buffer that several runs share: its bytes at boff,
 * gathered by the pending batch, go to remote offset ro. */
typedef struct {
    size_t boff, ro, len;
} kvc_gput_t;

struct kvc {
    kvc_params_t   p;
    ucp_context_h  ctx;
    ucp_worker_h   worker;
    ucp_mem_h      memh;
    void          *slab;
    ucp_listener_h listener;
    char           listen_addr[64];
    char           boot_id[40];     /* this host's boot id ("" if unknown) */
    bool           shm;             /* the context has a shared-memory transport */
    char           ucx_set[128];    /* the kvc_ucx_settings applied, "ENV=value ..." */
    kvc_conn_t    *conns[KVC_MAX_CONNS];
    int            nconns;
    bool           conn_failed;     /* some conn is KVC_CONN_FAILED */
    kvc_rmap_t     reqs;            /* kvc_sreq_t (prefill) or kvc_rreq_t (decode) */
    size_t         inflight;        /* bytes of puts issued, not completed */
    uint64_t       tomb[KVC_TOMBSTONES];
    int            ntomb;
    uint64_t       next_timer_ns;
    bool           destroying;
    kvc_stats_t    stats;
    /* staging (prefill with a device slab UCX cannot put from) */
    bool           staging;
    bool           slab_owned;      /* staging test stand-in allocated here */
    ucp_mem_h      stage_memh;
    char          *stage_buf[2];    /* pinned host, [stage_bytes] each */
    int            stage_busy[2];   /* puts in flight from each buffer */
    bool           stage_pinned;    /* stage_buf pinned by params.stage_pin */
    kvc_copy_t    *batch;           /* copies for params.stage_copy_batch */
    int            nbatch, capbatch;
    kvc_gput_t    *gput;            /* puts waiting for their batch (gather) */
    int            ngput, capgput;
    struct kvc_dmsg *dmsg;          /* the DATA message being filled, or NULL */
    uint64_t       drop_req;        /* kvc_test_drop_data */
    int            drop_n;
};

/* Send one message (buf of len bytes, taken over and freed) on conn as an
 * eager AM. *outstanding, when not NULL, counts it until it completes. */
duet_status_t kvc_am_send(kvc_conn_t *conn, void *buf, size_t len, int *outstanding);

/* A message buffer of len bytes with its header filled. NULL on ENOMEM. */
void *kvc_msg_new(size_t len, int type, uint64_t req);

bool kvc_conn_alive(const kvc_conn_t *conn);

/* The endpoint puts (and the flushes that order LAYER_DONE/ABORT behind them)
 * go on: the shared-memory data endpoint when there is one. */
static inline ucp_ep_h kvc_conn_put_ep(const kvc_conn_t *conn)
{
    return conn->dep ? conn->dep : conn->ep;
}

static inline ucp_rkey_h kvc_conn_put_rkey(const kvc_conn_t *conn)
{
    return conn->dep ? conn->drkey : conn->rkey;
}
kvc_conn_t *kvc_conn_find(kvc_t *kvc, uint64_t node, int tp_rank);

/* Layout fingerprint of this rank. */
void kvc_fp_fill(const kvc_t *kvc, kvc_fp_t *fp);
/* DUET_ERR_MISMATCH (logged) when a peer's fingerprint cannot work with ours. */
duet_status_t kvc_fp_check(const kvc_t *kvc, const kvc_fp_t *peer);

bool kvc_tomb_has(const kvc_t *kvc, uint64_t req);
void kvc_tomb_add(kvc_t *kvc, uint64_t req);

/* Role-specific parts. */
void kvc_send_on_msg(kvc_t *kvc, kvc_conn_t *conn, const kvc_hdr_t *h,
                     const void *data, size_t len);
int kvc_send_progress(kvc_t *kvc);
void kvc_send_conn_failed(kvc_t *kvc, kvc_conn_t *conn);
void kvc_send_destroy(kvc_t *kvc);
duet_status_t kvc_send_abort(kvc_t *kvc, uint64_t req);

void kvc_recv_on_msg(kvc_t *kvc, kvc_conn_t *conn, const kvc_hdr_t *h,
                     const void *data, size_t len);
/* A DATA message: hdr (hlen bytes, any alignment) and its payload. */
void kvc_recv_on_data(kvc_t *kvc, kvc_conn_t *conn, const void *hdr, size_t hlen,
                      const void *payload, size_t len);

/* Copy len bytes that this process will not read back soon: non-temporal
 * stores on x86 (no read-for-ownership of the destination lines). Order them
 * before a message that announces them with kvc_copy_fence. */
void kvc_copy_nt(void *dst, const void *src, size_t len);
void kvc_copy_fence(void);
int kvc_recv_progress(kvc_t *kvc, uint64_t now_ns);
void kvc_recv_conn_failed(kvc_t *kvc, kvc_conn_t *conn);
void kvc_recv_destroy(kvc_t *kvc);
duet_status_t kvc_recv_abort(kvc_t *kvc, uint64_t req);

/* Test hook (tests/integration/test_kvc.c): send raw bytes as one message on
 * the first live connection to node `node`. */
duet_status_t kvc_test_send_raw(kvc_t *kvc, uint64_t node, const void *buf, size_t len);

/* Test hook: send a DATA message with AM header hdr (hlen bytes) and payload
 * (len bytes) to rank `rank` of node `node`; returns once it left. */
duet_status_t kvc_test_send_data(kvc_t *kvc, uint64_t node, int rank, const void *hdr,
                                 size_t hlen, const void *payload, size_t len);

/* Test hook: the next n DATA messages of request req are counted as sent
 * but never leave (a message lost on the way). */
void kvc_test_drop_data(kvc_t *kvc, uint64_t req, int n);

/* Count a rejected message; true when it should be logged (the first 10,
 * then every 1000th: a peer's stream of late DATA must not flood the log). */
static inline bool kvc_log_rejected(kvc_t *kvc)
{
    uint64_t n = ++kvc->stats.rejected;

    return n <= 10 || n % 1000 == 0;
}

/* Test hook: flush every live endpoint, progressing only the UCX worker (no
 * new puts are issued meanwhile), for at most timeout_ms. On DUET_OK every put
 * issued so far has been acknowledged by its target: none is on the wire.
 * The sender-killed tests use it to pick their moment (docs/kvconnector.md,
 * "Known UCX 1.13 crash"). */
duet_status_t kvc_test_quiesce(kvc_t *kvc, int timeout_ms);

/* Test hook: the UCX settings kvc_create applied to this context, as
 * "UCX_NAME=value" separated by spaces ("" for none). */
const char *kvc_test_ucx_settings(const kvc_t *kvc);

#endif
