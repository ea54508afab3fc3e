/* The node side of the control plane (docs/protocol.md): one TCP
 * connection to the router, HELLO on connect, HEARTBEAT every heartbeat_ms,
 * reconnection with backoff when the router goes away, and the request
 * frames handed to the node through callbacks. Shared by the prefill,
 * decode and colocated nodes; it knows frames and sockets, no engine.
 *
 * Also the parser of the sampling fields that RESERVE and PREFILL carry.
 *
 * Single-threaded: everything runs on the caller's event base. */
#ifndef DUET_COMMON_CTL_CLIENT_H
#define DUET_COMMON_CTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/frame.h"
#include "common/status.h"

struct event_base;

#define CTL_MAX_UCX   64
#define CTL_MAX_EOS   16

typedef struct {
    const char *role;              /* "prefill", "decode", "colocated" */
    const char *node;              /* node id */
    const char *token;             /* cluster token ("" when none) */
    uint64_t    model_fp;
    uint32_t    tp;
    uint32_t    block_size;
    uint32_t    blocks;
    const char *ucx[CTL_MAX_UCX];  /* per rank, n_ucx of them (decode) */
    uint32_t    n_ucx;
    uint32_t    n_layers, n_kv_heads, head_dim;
    const char *kv_dtype;          /* "f16" / "f32" */
} ctl_hello_t;

typedef struct {
    uint64_t running, waiting, free_blocks, queued_tokens;
} ctl_load_t;

/* Callback contracts. All are called from the event loop; the client may be
 * used (ctl_client_send, ...) from inside them but not destroyed. */
typedef struct {
    /* HELLO_OK arrived: the node is registered. */
    void (*on_up)(void *arg);
    /* The connection is gone (router closed, protocol violation, ERROR
     * without rid): every request the router gave the node is void. The
     * client reconnects with backoff unless shut down. */
    void (*on_down)(void *arg);
    /* A frame from the router after HELLO_OK (RESERVE, PREFILL, ABORT,
     * DRAIN, ERROR with a rid). msg is borrowed for the call. */
    void (*on_frame)(void *arg, const frame_msg_t *msg);
    /* The router refused the node for good (bad token, version, model
     * mismatch): retrying cannot help. */
    void (*on_fatal)(void *arg, const char *code, const char *msg);
    /* Fill the load for a HEARTBEAT. */
    void (*load)(void *arg, ctl_load_t *load_p);
    void *arg;
} ctl_client_cbs_t;

typedef struct ctl_client ctl_client_t;

/* hello is copied (strings too). Starts connecting at once. */
duet_status_t ctl_client_create(struct event_base *base, const char *host, uint16_t port,
                                const ctl_hello_t *hello, const ctl_client_cbs_t *cbs,
                                ctl_client_t **c_p);
void ctl_client_destroy(ctl_client_t *c);

/* True between HELLO_OK and the loss of the connection. */
bool ctl_client_up(const ctl_client_t *c);

/* Build a frame: frame_begin(ctl_client_writer(c), ...), frame_put_*, then
 * ctl_client_send. DUET_ERR_CLOSED when not registered (the frame is
 * dropped: the router that knew the request is gone). */
frame_writer_t *ctl_client_writer(ctl_client_t *c);
duet_status_t ctl_client_send(ctl_client_t *c);

/* Convenience frames. */
duet_status_t ctl_client_send_error(ctl_client_t *c, uint64_t rid, const char *msg);
duet_status_t ctl_client_send_nack(ctl_client_t *c, uint64_t rid, const char *reason);

/* Tell the router this node drains (now, and again after a reconnect). */
void ctl_client_drain(ctl_client_t *c);

/* Flush what is queued, close, and stop reconnecting. done (may be NULL) is
 * called once the connection is closed (at once when it is not up). */
void ctl_client_shutdown(ctl_client_t *c, void (*done)(void *arg), void *arg);

/* ---- request fields ------------------------------------------------------ */

typedef struct {
    uint32_t max_tokens;
    double   temperature, top_p, min_p;
    int64_t  top_k;
    double   presence_penalty, frequency_penalty, repetition_penalty;
    bool     ignore_eos;
    uint32_t eos[CTL_MAX_EOS];
    uint32_t n_eos;
    bool     has_seed;
    int64_t  seed;
} ctl_sampling_t;

/* Parse the sampling fields of RESERVE / PREFILL. DUET_ERR_PROTO with a
 * reason in err for a missing or mistyped field. */
duet_status_t ctl_sampling_parse(const frame_msg_t *msg, ctl_sampling_t *s,
                                 char *err, size_t errlen);

/* "tokens" as int32 ids (malloc'ed, caller frees): a non-empty array of
 * uints below 2^31. */
duet_status_t ctl_get_tokens(const frame_msg_t *msg, const char *key, int32_t **toks_p,
                             int32_t *n_p);

/* The prompt ("tokens") and sampling fields of a RESERVE or PREFILL, `what`
 * naming it in the error. On failure ERROR {rid, why} has gone to the
 * router, nothing is left to free, and the status says why. */
duet_status_t ctl_client_get_request(ctl_client_t *c, const frame_msg_t *msg, uint64_t rid,
                                     const char *what, int32_t **toks_p, int32_t *ntok_p,
                                     ctl_sampling_t *sp);

/* A copy of a string field, NUL-terminated, into buf (DUET_ERR_TOO_BIG when
 * it does not fit). */
duet_status_t ctl_get_strbuf(const frame_msg_t *msg, const char *key, char *buf,
                             size_t len);

/* FNV-1a 64 of a node id: the number the KV connector knows a node by
 * (both sides derive it from the id the router uses). Never 0. */
uint64_t ctl_node_hash(const char *id);

#endif
