/* KV connector: moves a request's paged KV cache, layer by layer, from a
 * prefill rank's slab into the blocks a decode rank granted, with one-sided
 * UCX puts. One kvc_t per rank; each has its own UCX worker and slab.
 *
 * Decode ranks listen; prefill ranks connect to every rank of a decode node.
 * Block ids are the same on every decode rank of a node (each rank holds its
 * head slice in its own slab), so the decode caller calls kvc_grant() with the
 * same ids on each rank.
 *
 * Ownership of blocks. Decode: blocks passed to kvc_grant() are on loan to the
 * connector until kvc_recv_kv_cache() returns anything but DUET_INPROGRESS;
 * then they are back with the caller (holding the KV on DUET_OK, free to reuse
 * otherwise). Prefill: local blocks passed to kvc_send_kv_cache() are read
 * until kvc_send_status() returns anything but DUET_INPROGRESS.
 *
 * Single-threaded: every call on one kvc_t from one thread. Nothing blocks
 * except kvc_connect() (setup only); kvc_progress() drives everything.
 * The connector knows nothing of HTTP or scheduling. */
#ifndef DUET_KVCONNECTOR_KVC_H
#define DUET_KVCONNECTOR_KVC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kv_layout.h"
#include "common/status.h"

typedef struct kvc kvc_t;

typedef enum {
    KVC_ROLE_PREFILL = 0,
    KVC_ROLE_DECODE  = 1,
} kvc_role_t;

#define KVC_STATE_MAX 512   /* bytes of sampling state carried by KV_END */

/* Called from kvc_progress() when a request reaches its final status on this
 * rank (the next kvc_recv_kv_cache / kvc_send_status returns it). */
typedef void (*kvc_done_cb_t)(void *arg, uint64_t req, duet_status_t status);

/* Where the slab lives. */
typedef enum {
    KVC_MEM_HOST = 0,
    KVC_MEM_CUDA = 1,   /* device memory (params.slab must be given) */
} kvc_mem_t;

/* Copy len bytes of device memory at src into host memory at dst, complete
 * on return (e.g. cudaMemcpy device-to-host). Used by the staging path. */
typedef duet_status_t (*kvc_copy_fn_t)(void *arg, void *dst, const void *src, size_t len);

/* One piece of a batched staging copy: len bytes of device memory at src
 * into host memory at dst. */
typedef struct {
    void       *dst;
    const void *src;
    size_t      len;
} kvc_copy_t;

/* Copy n pieces, complete on return: one launch for a layer's scattered
 * blocks instead of a copy call per block (each call costs microseconds; a
 * block is a few KiB). Only given pinned destinations. */
typedef duet_status_t (*kvc_copy_batch_fn_t)(void *arg, const kvc_copy_t *v, int n);

/* Page-lock (pin) len bytes of host memory at ptr for the staging copies,
 * and undo it. */
typedef duet_status_t (*kvc_pin_fn_t)(void *arg, void *ptr, size_t len);
typedef void (*kvc_unpin_fn_t)(void *arg, void *ptr);

/* Only in CUDA builds (DUET_HAVE_CUDA): a kvc_copy_fn_t doing cudaMemcpy
 * device-to-host, pinning by cudaHostRegister / cudaHostUnregister, and a
 * kvc_copy_batch_fn_t whose arg is a kvc_cuda_batch_t (one kernel writes
 * every piece straight into the pinned host memory). */
typedef struct kvc_cuda_batch kvc_cuda_batch_t;

duet_status_t kvc_cuda_copy_d2h(void *arg, void *dst, const void *src, size_t len);
duet_status_t kvc_cuda_pin(void *arg, void *ptr, size_t len);
void kvc_cuda_unpin(void *arg, void *ptr);
duet_status_t kvc_cuda_batch_create(kvc_cuda_batch_t **out);
void kvc_cuda_batch_destroy(kvc_cuda_batch_t *b);
duet_status_t kvc_cuda_copy_batch_d2h(void *arg, const kvc_copy_t *v, int n);

typedef struct {
    kvc_role_t  role;
    uint64_t    node_id;          /* same on every rank of a node; peers name
                                     a node by it (kvc_grant's prefill_node) */
    int         tp_rank, tp_size; /* this rank in its node's tensor parallel group */
    int32_t     n_kv_heads_total; /* the model's KV heads */
    kv_layout_t layout;           /* this rank's slab; layout.n_kv_heads must be
                                     kvc_tp_heads(n_kv_heads_total, tp_size, tp_rank) */
    uint64_t    model_fp;         /* model fingerprint, must match the peer's */
    void       *slab;             /* NULL: allocated by ucp_mem_map; else borrowed
                                     memory of kv_slab_bytes(&layout), registered once */
    const char *listen_ip;        /* decode: address to listen on; NULL = "0.0.0.0" */
    uint16_t    listen_port;      /* decode: 0 = any free port */
    size_t      max_inflight;     /* bytes of puts in flight; 0 = 64 MiB */
    size_t      data_msg_bytes;   /* over TCP: payload per DATA message; 0 = 60 KiB,
                                     the most (tests make it small, to split runs) */
    uint32_t    abort_timeout_ms; /* decode: wait for senders' abort replies; 0 = 5000 */
    kvc_done_cb_t done_cb;        /* optional */
    void       *done_arg;
    /* Device slabs. KVC_MEM_CUDA with a UCX that handles CUDA memory: the
     * slab is registered as UCS_MEMORY_TYPE_CUDA and put directly. Without
     * one (or with stage_force), a prefill rank stages: each put's bytes are
     * copied by stage_copy into one of two pinned host buffers of stage_bytes
     * (default 4 MiB), so that one copy overlaps the other buffer's put. A
     * decode rank needs a UCX that handles CUDA memory (or a host slab). */
    kvc_mem_t     mem;
    kvc_copy_fn_t stage_copy;     /* required when staging */
    kvc_copy_batch_fn_t stage_copy_batch;  /* optional: copies in batches, into
                                     a pinned decode slab mapped here (a layer
                                     at a time) or into the pinned staging
                                     buffers (runs gathered, then put each) */
    kvc_pin_fn_t  stage_pin;      /* optional: pins what stage_copy writes (the
                                     staging buffers at create, a decode slab
                                     mapped here at connect: that one is as big
                                     as the peer's slab, and kvc_connect waits
                                     for it); a device copy into pageable memory
                                     goes through the driver's bounce buffer */
    kvc_unpin_fn_t stage_unpin;
    void         *stage_arg;      /* for stage_copy, stage_pin, stage_unpin */
    void         *stage_batch_arg;  /* for stage_copy_batch */
    size_t        stage_bytes;
    int           stage_force;    /* stage even host memory (tests, benchmarks) */
} kvc_params_t;

typedef struct {
    uint64_t batches;      /* stage_copy_batch calls */
    uint64_t staged;       /* bytes copied out of a device slab by stage_copy or
                              stage_copy_batch (into
                              the host staging buffers, or straight into a mapped
                              decode slab) */
    uint64_t bytes;        /* KV bytes put (prefill) or received (decode) */
    double   seconds;      /* sum over finished requests of first send/grant to done */
    uint64_t transfers;    /* requests finished with DUET_OK */
    uint64_t puts;         /* writes (prefill): ucp_put_nbx calls, copies into a
                              mapped decode slab, or DATA messages */
    uint64_t data_msgs;    /* DATA messages sent (prefill) or copied in (decode);
                              the data path over TCP, docs/kvconnector.md */
    uint64_t failures;     /* requests finished with an error */
    uint64_t nacks;        /* NACKs sent (decode) or received (prefill) */
    uint64_t expired;      /* grants whose lease ran out (decode) */
    uint64_t rejected;     /* malformed or out-of-range messages dropped */
} kvc_stats_t;

typedef struct {
    int32_t  first_token;
    uint32_t state_len;
    uint8_t  state[KVC_STATE_MAX];
} kvc_end_t;

/* ---- heads per rank: the one function every part uses ------------------ */

/* True when n_kv_heads can be split over tp ranks: tp divides the heads, or
 * the heads divide tp (then each head is replicated tp / n_kv_heads times). */
int kvc_tp_valid(int32_t n_kv_heads, int tp);

/* Heads [*first_p, *first_p + *count_p) held by rank `rank` of `tp`.
 * DUET_ERR_INVALID when the split is not valid. */
duet_status_t kvc_tp_heads(int32_t n_kv_heads, int tp, int rank,
                           int32_t *first_p, int32_t *count_p);

/* The heads prefill rank prank (of p) sends to decode rank drank (of d):
 * *count_p heads, starting at local head *src_p of the prefill slab and
 * *dst_p of the decode slab. *count_p = 0: this pair exchanges nothing. With
 * replicated prefill heads, exactly one replica sends each head to each
 * decode rank. */
duet_status_t kvc_tp_route(int32_t n_kv_heads, int p, int prank, int d, int drank,
                           int32_t *src_p, int32_t *dst_p, int32_t *count_p);

/* ---- lifecycle ---------------------------------------------------------- */

/* Create a rank's connector: UCX context, worker, slab (registered once) and,
 * on decode, the listener. */
duet_status_t kvc_create(const kvc_params_t *params, kvc_t **kvc_p);

/* A UCX setting the connector applies to its own context on top of the
 * environment's (ucp_config_modify(key, value)); env is the variable that
 * would set the same from the environment. */
typedef struct {
    const char *env;    /* "UCX_TCP_TX_SEG_SIZE" */
    const char *key;    /* "TX_SEG_SIZE": what UCX 1.13 takes for a transport key */
    const char *value;  /* "64K" */
} kvc_ucx_setting_t;

/* The settings kvc_create applies now (they depend on the environment);
 * returns their number, *settings_p points to a static table:
 * - always UCX_MAX_EAGER_RAILS=1, whatever the environment says: DATA
 *   messages and the LAYER_DONE after them must arrive in order, which one
 *   eager lane per endpoint guarantees (docs/kvconnector.md, "Over TCP: DATA
 *   messages"; UCX's default, forced so that a multi-rail setting cannot
 *   fail requests);
 * - UCX_TCP_TX_SEG_SIZE=64K (UCX 1.13's 8K split every scattered 12 KiB
 *   block put into two messages over TCP, and a DATA message must fit one
 *   segment; docs/kvconnector.md, "TCP against ucx_perftest"), unless
 *   UCX_TCP_TX_SEG_SIZE is set or UCX_TLS names no tcp transport. A peer's
 *   UCX_TCP_RX_SEG_SIZE must be at least this (its default, 64K, is).
 * Benchmarks give their references and ucx_perftest the same. */
int kvc_ucx_settings(const kvc_ucx_setting_t **settings_p);

/* Close endpoints, listener, slab and worker. Requests still open are dropped. */
void kvc_destroy(kvc_t *kvc);

/* The slab: kv_slab_bytes(layout) bytes, laid out as common/kv_layout.h. */
void *kvc_slab(kvc_t *kvc);

/* Decode: "ip:port" the listener is bound to. */
duet_status_t kvc_listen_address(kvc_t *kvc, char *buf, size_t len);

/* Drive UCX, issue queued puts, expire leases. Returns the number of events
 * handled (0: idle). Call between layers, or whenever idle. */
int kvc_progress(kvc_t *kvc);

void kvc_stats(const kvc_t *kvc, kvc_stats_t *stats_p);

/* ---- prefill ------------------------------------------------------------ */

/* Connect to one decode rank at "ip:port" and exchange layouts, keys and slab
 * base. Blocks (progressing the worker) for at most timeout_ms. Sets
 * *decode_node_p to the peer's node id. DUET_ERR_MISMATCH (logged with the
 * differing field) when the layout fingerprints disagree. Connect to every
 * rank of a decode node before it grants. */
duet_status_t kvc_connect(kvc_t *kvc, const char *addr, int timeout_ms,
                          uint64_t *decode_node_p);

/* Layer `layer` of tokens [tok0, tok1) of request req is in the local slab, in
 * local_blocks[0..nblocks) (copied), the blocks holding tokens
 * tok0 / block_size .. (tok1 - 1) / block_size. Whole blocks are written; a
 * receiver must not read past the request's length in its last block.
 * Never waits: before the grant arrives the layer is queued. */
duet_status_t kvc_send_kv_cache(kvc_t *kvc, uint64_t req, int32_t layer,
                                int32_t tok0, int32_t tok1,
                                const int32_t *local_blocks, int32_t nblocks);

/* The last layer of req has been passed to kvc_send_kv_cache: send KV_END with
 * the first token and sampling state (state_len <= KVC_STATE_MAX). */
duet_status_t kvc_end(kvc_t *kvc, uint64_t req, int32_t first_token,
                      const void *state, uint32_t state_len);

/* DUET_INPROGRESS while the connector may still read req's local blocks;
 * then the final status (DUET_OK: delivered; DUET_ERR_NO_RESOURCE: NACKed;
 * DUET_ERR_CANCELED: aborted; DUET_ERR_PEER: decode rank died; DUET_ERR_TIMEOUT:
 * lease expired) and the request is forgotten. Unknown req: DUET_ERR_NOT_FOUND. */
duet_status_t kvc_send_status(kvc_t *kvc, uint64_t req);

/* The caller is about to reuse the local blocks of req's queued layers (its
 * engine preempted the prompt). DUET_OK: no put will read them any more:
 * every queued layer was put and completed, or none had started and all
 * are dropped (*resend_p: queue them again, from the new blocks).
 * DUET_ERR_BUSY: puts may be reading them: abort req. DUET_ERR_NOT_FOUND:
 * unknown req. */
duet_status_t kvc_send_blocks_reused(kvc_t *kvc, uint64_t req, bool *resend_p);

/* True once a decode node granted req (it holds blocks for it; a NACK can no
 * longer come), while the connector still knows req. */
bool kvc_send_granted(kvc_t *kvc, uint64_t req);

/* ---- decode ------------------------------------------------------------- */

/* Lend blocks[0..nblocks) (copied; ceil(n_tokens / block_size) of them) to
 * prefill node prefill_node for req, for lease_ms. Sends GRANT to each of its
 * ranks that holds heads for this rank. DUET_ERR_NOT_FOUND when those ranks
 * are not all connected; DUET_ERR_INVALID for bad ids; DUET_ERR_BUSY when req
 * is already granted. */
duet_status_t kvc_grant(kvc_t *kvc, uint64_t prefill_node, uint64_t req,
                        int32_t n_tokens, const int32_t *blocks, int32_t nblocks,
                        uint32_t lease_ms);

/* Tell prefill_node's ranks that req cannot be granted. */
duet_status_t kvc_nack(kvc_t *kvc, uint64_t prefill_node, uint64_t req);

/* DUET_INPROGRESS while the blocks are on loan; DUET_OK with *end_p filled
 * once every layer from every sender and KV_END have arrived; otherwise the
 * error that ended it. Any return but DUET_INPROGRESS gives the blocks back
 * and forgets req. end_p may be NULL. Unknown req: DUET_ERR_NOT_FOUND. */
duet_status_t kvc_recv_kv_cache(kvc_t *kvc, uint64_t req, kvc_end_t *end_p);

/* ---- both --------------------------------------------------------------- */

/* Abort req: stop writing (prefill) or accepting (decode), tell the peers,
 * which free it too. The final status (DUET_ERR_CANCELED) is reported by
 * kvc_send_status / kvc_recv_kv_cache once no peer can still write into the
 * blocks. Unknown req: DUET_ERR_NOT_FOUND. */
duet_status_t kvc_abort(kvc_t *kvc, uint64_t req);

#endif
