/* Router internals shared by its files: the node registry, the request
 * record and the router context. Everything runs on the router's single
 * event loop; nothing here is thread-safe. */
#ifndef DUET_ROUTER_ROUTER_INT_H
#define DUET_ROUTER_ROUTER_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/queue.h>

#include "common/frame.h"
#include "router/metrics.h"
#include "router/oai.h"
#include "router/router.h"
#include "router/text.h"
#include "router/tok.h"

struct bufferevent;
struct evconnlistener;
struct evhttp;
struct evhttp_bound_socket;
struct evhttp_connection;
struct evhttp_request;
struct event;
struct evbuffer;

#define NODE_ID_MAX        64
#define NODE_MAX_TP        64
#define NODE_ADDR_MAX      256
#define NODE_PREFIX_SLOTS  8192   /* prefix-block hashes remembered per prefill node */
#define NODE_HELLO_TIMEOUT 5.0    /* seconds to send HELLO after connecting */
#define RREQ_MAX_EARLY     4096   /* decode tokens buffered before FIRST_TOKEN */
#define RID_BUCKETS        4096
#define ROUTER_HEARTBEAT_MS 1000

typedef enum {
    NODE_PREFILL = 0,
    NODE_DECODE,
    NODE_COLOCATED,
    NODE_NROLES,
} node_role_t;

const char *node_role_str(node_role_t role);

typedef enum {
    POLICY_ROUND_ROBIN = 0,
    POLICY_LEAST_LOADED,
    POLICY_PREFIX_AWARE,
} policy_t;

typedef struct router router_t;

/* One control-plane connection; a node once its HELLO was accepted. */
typedef struct node {
    TAILQ_ENTRY(node) link;
    router_t          *r;
    struct bufferevent *bev;
    char               peer[64];           /* ip:port of the connection */
    bool               registered;
    bool               closing;            /* flushing an ERROR, then freed */
    bool               draining;           /* takes no new requests */
    char               id[NODE_ID_MAX + 1];
    node_role_t        role;
    uint32_t           tp;
    uint64_t           fingerprint;
    uint32_t           block_size;         /* tokens per KV block */
    uint32_t           total_blocks;
    char             **ucx;                /* (tp) UCX listener address per rank */
    uint32_t           nucx;
    /* last HEARTBEAT */
    uint32_t           running, waiting, free_blocks;
    uint64_t           queued_tokens;
    uint64_t           connected_ns, last_hb_ns;
    /* router-side accounting between heartbeats */
    uint32_t           inflight;           /* requests routed here, not finished */
    uint64_t           sent_tokens;        /* prompt tokens sent since the last heartbeat */
    uint32_t           sent_blocks;        /* blocks reserved since the last heartbeat */
    uint64_t          *prefix;             /* (NODE_PREFIX_SLOTS) direct-mapped hashes */
} node_t;

typedef enum {
    RREQ_NEW = 0,                          /* built, not admitted yet */
    RREQ_QUEUED,
    RREQ_RUNNING,
    RREQ_DONE,                             /* finished, failed or aborted */
} rreq_state_t;

typedef struct rjob rjob_t;

/* One sequence of an HTTP request (one choice: a prompt, or one of its n
 * samples). This is what nodes see as one rid. */
typedef struct rreq {
    TAILQ_ENTRY(rreq)        link;         /* r->queue or r->running */
    struct rreq             *hnext;        /* rid hash chain */
    router_t                *r;
    rjob_t                  *job;          /* owner */
    int                      index;        /* choice index */
    rreq_state_t             state;
    int32_t                 *prompt;       /* (nprompt) malloc'd */
    size_t                   nprompt;
    uint32_t                 max_tokens;
    int64_t                  seed;         /* when job->p.has_seed */
    /* the current attempt */
    uint64_t                 rid;
    int                      attempts;
    node_t                  *pnode;        /* prefill or colocated node */
    node_t                  *dnode;        /* decode node; NULL when colocated */
    node_t                  *failed;       /* excluded from the retry */
    bool                     first_seen;
    int32_t                 *early;        /* decode tokens before FIRST_TOKEN */
    size_t                   nearly;
    bool                     early_finish;
    finish_reason_t          early_reason;
    /* output */
    detok_t                  dt;
    sbuf_t                   text;         /* whole completion (non-streaming) */
    sbuf_t                   delta;        /* scratch for one token's text */
    uint32_t                 ncompletion;
    bool                     role_sent;
    finish_reason_t          reason;       /* once DONE after a success */
    uint64_t                 t_dispatch, t_first, t_last;
    uint64_t                 t_read_last;  /* frame read time of the last chunk's token */
    char                    *sse_pre;      /* (nsse_pre) sse_text_prefix, built at first use */
    size_t                   nsse_pre;
} rreq_t;

/* One HTTP generation request: its connection, parameters and sequences. */
struct rjob {
    router_t                *r;
    struct evhttp_request   *hreq;         /* NULL once answered or gone */
    struct evhttp_connection *hconn;
    struct event            *hup;          /* EV_CLOSED watch on the client socket */
    oai_req_t                p;
    char                     id[48];       /* "chatcmpl-..." / "cmpl-..." */
    int64_t                  created;
    rreq_t                 **seqs;         /* (nseq) owned */
    uint32_t                 nseq;
    uint32_t                 nlive;        /* sequences not DONE */
    bool                     headers_sent;
    bool                     chunked;      /* HTTP/1.1 chunked stream: the fast text path */
    struct bufferevent      *bev;          /* the client connection's, once headers_sent */
    int                      fd;
    size_t                   prompt_tokens; /* counted once per prompt */
    size_t                   completion_tokens;
    uint64_t                 t_arrive;
};

struct router {
    struct event_base          *base;
    router_config_t             cfg;
    rtok_t                     *tok;
    char                        served_name[256];
    struct evhttp              *http;
    struct evhttp_bound_socket *hsock;
    struct evconnlistener      *ctl;
    struct event               *tick;
    int                         http_port, ctl_port;
    TAILQ_HEAD(, node)          nodes;
    TAILQ_HEAD(, rreq)          queue;
    TAILQ_HEAD(, rreq)          running;
    size_t                      nqueued, nrunning;
    rreq_t                     *rids[RID_BUCKETS];
    uint64_t                    next_rid;
    uint64_t                    next_http_id;
    bool                        pumping;
    policy_t                    ppolicy, dpolicy;
    uint64_t                    rr[NODE_NROLES];
    metrics_t                   m;
    int64_t                     created;
    frame_writer_t              fw;
    struct evbuffer            *scratch;   /* one SSE event at a time */
    char                       *wbuf;      /* (wcap) one HTTP chunk of the fast text path */
    size_t                      wcap;
    uint64_t                    t_read;    /* when the node bytes being handled were read */
    uint8_t                    *tok_first; /* (tok_cap) TOKENS items of fresh streams */
    size_t                      tok_cap;
    FILE                       *token_trace;   /* --token-trace: one line per token */
};

/* --- registry.c --------------------------------------------------------- */

duet_status_t policy_parse(const char *name, bool prefill, policy_t *p_p);
const char *policy_str(policy_t p);

/* Pick a registered, non-draining node of role for req, never `exclude`.
 * NULL when none. */
node_t *registry_pick(router_t *r, node_role_t role, const rreq_t *req,
                      const node_t *exclude);

/* Count registered nodes of a role. */
int registry_count(const router_t *r, node_role_t role);

/* Whether the cluster can serve (>=1 prefill and >=1 decode, or >=1
 * colocated). */
bool registry_ready(const router_t *r);

/* Remember that req's prompt prefix blocks now live on node. */
void registry_note_prefix(node_t *node, const int32_t *ids, size_t n);

/* --- ctl.c -------------------------------------------------------------- */

duet_status_t ctl_listen(router_t *r);
/* Frame senders; failures close the node's connection later. */
void ctl_send_reserve(router_t *r, node_t *decode, const rreq_t *req);
void ctl_send_prefill(router_t *r, node_t *prefill, const rreq_t *req);
void ctl_send_abort(router_t *r, node_t *node, uint64_t rid);
void ctl_send_drain(router_t *r, node_t *node);
/* Drop a node now: fail or retry its requests, close and free. */
void ctl_node_drop(node_t *node, const char *why);
/* Called every tick: heartbeat and HELLO timeouts. */
void ctl_check_timeouts(router_t *r);

/* --- lifecycle.c -------------------------------------------------------- */

/* Admit a job whose sequences are built: dispatch them now, queue them,
 * or answer 429/503. Takes ownership of job. */
void rjob_admit(router_t *r, rjob_t *job);
/* Free a job and its sequences (they must be DONE or never admitted). */
void rjob_free(rjob_t *job);
/* The HTTP client went away: abort every sequence, free the job. */
void rjob_client_gone(rjob_t *job);
rreq_t *rreq_find(router_t *r, uint64_t rid);
void rreq_on_first_token(router_t *r, node_t *from, uint64_t rid, int32_t token,
                         uint64_t kv_bytes, double kv_s);
void rreq_on_token(router_t *r, node_t *from, uint64_t rid, int32_t token);
void rreq_on_finish(router_t *r, node_t *from, uint64_t rid, finish_reason_t reason,
                    const char *msg);
/* NACK, ERROR with rid, or the death of a node the request used. */
void rreq_on_failure(router_t *r, node_t *from, uint64_t rid, const char *why);
/* The node is going away: every request that uses it fails or retries. */
void lifecycle_node_gone(router_t *r, node_t *node);
/* Fail every request (shutdown). */
void lifecycle_shutdown(router_t *r);

/* --- http.c ------------------------------------------------------------- */

duet_status_t http_listen(router_t *r);
/* Send {"error": ...} with the status. Ends the HTTP request. */
void http_send_error(struct evhttp_request *hreq, int status, const char *param,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Send a JSON value (taken) with a status. */
void http_send_json(struct evhttp_request *hreq, int status, json_t *v);
void http_send_oai_err(struct evhttp_request *hreq, const oai_err_t *err);
/* true when model is NULL or the served name; else sends 404. */
bool http_model_ok(router_t *r, struct evhttp_request *hreq, const char *model);

/* --- http_info.c: handlers(r, hreq, body, len) --------------------------- */

void http_models(router_t *r, struct evhttp_request *hreq, const char *body, size_t len);
void http_health(router_t *r, struct evhttp_request *hreq, const char *body, size_t len);
void http_cluster(router_t *r, struct evhttp_request *hreq, const char *body, size_t len);
void http_metrics(router_t *r, struct evhttp_request *hreq, const char *body, size_t len);
void http_tokenize(router_t *r, struct evhttp_request *hreq, const char *body, size_t len);
void http_detokenize(router_t *r, struct evhttp_request *hreq, const char *body, size_t len);

/* Output of one sequence: the text of one token (may be empty). */
void http_emit_token(rreq_t *seq, const char *text, size_t n);
/* One sequence finished (seq->reason): its final stream chunk. */
void http_emit_seq_finish(rreq_t *seq);
/* Every sequence finished: the usage chunk and [DONE], or the whole
 * response. */
void http_emit_job_done(rjob_t *job);
/* The job failed: an HTTP error when nothing was sent yet, else an error
 * event in the stream. */
void http_emit_failure(rjob_t *job, int status, const char *msg);
/* Stop watching the client (the job is about to be freed). */
void http_detach(rjob_t *job);

#endif
