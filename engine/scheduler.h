/* Continuous-batching scheduler: request queues, a token budget per step,
 * chunked prefill, prefix-cache admission and preemption by recompute. It
 * decides, each step, which requests run and how many of their tokens; the
 * engine (engine.h) runs the forward pass over that plan, samples, and
 * reports back with sched_advance / sched_append / sched_finish.
 *
 * One request's tokens are its prompt followed by its output; n_computed of
 * them have KV in the cache. A step schedules, for each chosen request,
 * tokens n_computed .. n_computed + n_new - 1; when that reaches the last
 * token, the step's logits give the next token. Decode steps (one token) and
 * prefill chunks (many) are the same thing at different sizes.
 *
 * Policy per step (docs/engine.md):
 *   1. running requests that are decoding, oldest first, one token each;
 *   2. running requests still in prefill, oldest first, a chunk each;
 *   3. if nothing was preempted this step, waiting requests (preempted ones
 *      first, then FCFS) while budget, the running limit and the KV pool
 *      (less the watermark) allow; a new one first takes what the prefix
 *      cache holds of its tokens.
 * When a running request cannot get the blocks it needs, the newest running
 * request is preempted (blocks freed, back to the front of the waiting
 * queue, recomputed later) until it can, or it is itself the newest.
 *
 * Not thread-safe: one engine thread owns it. */
#ifndef DUET_ENGINE_SCHEDULER_H
#define DUET_ENGINE_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/block_manager.h"

typedef enum {
    REQ_WAITING = 0,    /* queued, holds no blocks (or a received KV) */
    REQ_RUNNING,        /* in the running batch, holds blocks */
    REQ_PREEMPTED,      /* evicted to make room; queued for recompute */
    REQ_FINISHED,       /* done; blocks released */
    REQ_ABORTED,        /* aborted; blocks released */
    REQ_RESERVED,       /* decode side: blocks granted, KV not yet received */
    REQ_PREFILLED,      /* prefill-only: first token out, blocks held for
                           the KV connector until released */
} req_state_t;

const char *req_state_str(req_state_t s);

typedef struct sched_req sched_req_t;
struct sched_req {
    uint64_t     id;
    req_state_t  state;
    int32_t     *tokens;        /* (cap) prompt, then output */
    int32_t      n_tokens, cap;
    int32_t      n_prompt;
    int32_t      n_computed;    /* tokens whose KV is in the cache */
    int32_t      max_tokens;    /* output tokens at most */
    bm_seq_t     seq;           /* block table */
    uint64_t     order;         /* admission order into running (newest highest) */
    int32_t      n_preempted;   /* times preempted */
    int32_t      n_cached;      /* prompt tokens found in the prefix cache */
    void        *user;          /* the engine's per-request state */
    /* scheduler-private */
    sched_req_t *prev, *next;   /* queue links */
    sched_req_t *hnext;         /* id table chain */
    int          queue;         /* which queue holds it */
};

/* One scheduled request of a step. */
typedef struct {
    sched_req_t *req;
    int32_t      n_new;         /* tokens to compute this step */
    bool         want_logits;   /* the chunk ends at the last token */
} sched_item_t;

typedef struct {
    int32_t max_running;        /* requests in the running batch */
    int32_t max_step_tokens;    /* token budget per step */
    bool    chunked_prefill;    /* split prompts larger than the budget */
    /* optional: a request was preempted (its blocks are free again) */
    void  (*on_preempt)(void *arg, uint64_t id);
    void   *cb_arg;
} sched_opts_t;

typedef struct {
    int32_t  running, waiting, reserved, prefilled;
    uint64_t preemptions;
    uint64_t steps;
} sched_stats_t;

typedef struct sched sched_t;

/* bm is borrowed and must outlive the scheduler. */
duet_status_t sched_create(const sched_opts_t *opts, bm_t *bm, sched_t **s_p);
/* Frees every request still held (their blocks go back to bm; user state
 * must have been released by the caller, see sched_next_req). */
void sched_destroy(sched_t *s);

/* A new request, state WAITING (or RESERVED when reserved): the caller
 * fills tokens/n_prompt/max_tokens/user on the returned object (tokens are
 * copied in). DUET_ERR_INVALID when the id is taken. */
duet_status_t sched_req_new(sched_t *s, uint64_t id, const int32_t *prompt, int32_t n_prompt,
                            int32_t max_tokens, sched_req_t **req_p);
/* Queue a new request at the tail of the waiting queue. */
void sched_enqueue(sched_t *s, sched_req_t *req);

sched_req_t *sched_find(const sched_t *s, uint64_t id);

/* Decode side of disaggregation: allocate blocks for the prompt of a request
 * that sched_req_new just made (state becomes RESERVED), keeping the
 * watermark. DUET_ERR_NO_RESOURCE when the pool is short. */
duet_status_t sched_reserve(sched_t *s, sched_req_t *req);
/* The reserved request's KV for its prompt is filled: n_computed becomes
 * n_prompt and it joins the waiting queue's front to be admitted. */
void sched_mark_prefilled_kv(sched_t *s, sched_req_t *req);

/* Plan one step into items (room for max_running entries). *n_items_p may
 * be 0 (nothing to run). */
void sched_schedule(sched_t *s, sched_item_t *items, int *n_items_p);

/* After the forward pass: item's tokens are computed (and their full blocks
 * registered in the prefix cache). */
void sched_advance(sched_t *s, const sched_item_t *item);

/* Append a sampled token to a running request. DUET_ERR_NOMEM only. */
duet_status_t sched_append(sched_t *s, sched_req_t *req, int32_t token);

/* Leave the running batch: state FINISHED frees the blocks; state PREFILLED
 * keeps them until sched_release. */
void sched_finish(sched_t *s, sched_req_t *req, req_state_t state);

/* Remove a request in any state, freeing its blocks; the object is freed
 * (the caller has released req->user). */
void sched_remove(sched_t *s, sched_req_t *req);

/* Iterate over every request (for teardown): NULL starts, NULL ends. */
sched_req_t *sched_next_req(const sched_t *s, const sched_req_t *prev);

void sched_stats(const sched_t *s, sched_stats_t *st);

/* Pool invariants against every request's block table (bm_check). */
duet_status_t sched_check(const sched_t *s, char *err, size_t errlen);

#endif
