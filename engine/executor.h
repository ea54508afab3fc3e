/* The executor: runs the forward pass on one rank or on a tensor-parallel
 * group of processes, after vLLM's multiprocess executor. The engine (and
 * `duet generate`) call exec_run where they would call fwd_run; with
 * tp_size 1 that is fwd_run itself, so there is one code path.
 *
 * tp_size > 1: exec_create, in the driver (rank 0), forks tp_size - 1
 * worker processes (parallel/procgroup.h) and builds the TP group
 * (parallel/group.h, shared memory). Every rank then loads its own shard of
 * the weights (engine/forward.h) and its own KV slab, which holds its KV
 * heads (the assignment of kvc_tp_heads). Each exec_run broadcasts the
 * batch (per sequence: tokens, n_past, block table, want_logits) to the
 * workers through shared memory; all ranks run the forward pass on their
 * shard, with an all-reduce after each row-parallel matmul; rank 0 gets the
 * whole logits rows and the caller samples.
 *
 * Failures: a worker that dies is noticed within ~50 ms (pidfds), one that
 * hangs when a collective or the plan hand-off passes opts.timeout_s; the
 * call then fails with DUET_ERR_PEER or DUET_ERR_TIMEOUT (a log line names
 * the rank and how it ended) and the executor is broken: every later call
 * fails at once with DUET_ERR_PEER, and exec_destroy ends and reaps the
 * rest. Workers exit when the driver exits, even on kill -9 (death signal,
 * hang-up pipe, the group's pidfds).
 *
 * The fork rule: call exec_create before the process creates threads,
 * event loops or sockets (workers inherit memory and descriptors as they
 * are), and from the main thread (the workers' death signal follows the
 * thread that forked them). Rank-private resources (a UCX context, a KV
 * connector) belong in the rank hooks below, which run in each rank's own
 * process after the fork.
 *
 * An executor is driven by one thread. */
#ifndef DUET_ENGINE_EXECUTOR_H
#define DUET_ENGINE_EXECUTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "common/kv_layout.h"
#include "common/status.h"
#include "engine/forward.h"
#include "model/config.h"
#include "model/gguf.h"

/* Bytes of each rank's reply to rank_init and exec_call. */
#define EXEC_REPLY_MAX 256

/* Per-rank hooks, for what each rank process must own itself. The decode
 * node's use: every rank receives its KV heads from prefill nodes through
 * its own KV connector (kvc_t, with its own UCX listener), so
 *
 *   rank_init  kvc_create() with this rank's layout (slab NULL: UCX maps
 *              it), *slab_p = kvc_slab(kvc), *state_p = kvc, and the
 *              listener address ("ip:port", from kvc_listen_address) as
 *              the reply; the driver reads every rank's address with
 *              exec_rank_reply() and advertises them in HELLO;
 *   rank_call  the driver's exec_call(ex, "progress"...) from its event
 *              loop: each rank runs kvc_progress() and replies with what
 *              the driver needs (e.g. request ids whose layers all arrived
 *              on this rank); recv_kv_cache is complete when every rank
 *              says so;
 *   rank_step  kvc_progress() once before each forward pass;
 *   rank_fini  kvc_destroy().
 *
 * Every hook is optional and runs in each rank's process, the driver's
 * (rank 0) included, with the same arg (fork: the worker's copy of it). A
 * hook must not call the executor. Replies are up to EXEC_REPLY_MAX bytes
 * (zero-filled beyond what the hook writes). */
typedef struct {
    /* Before the rank's forward pass is created. layout: this rank's KV
     * slab (n_kv_heads is its share). *slab_p: NULL, or memory of
     * kv_slab_bytes(layout) that the forward pass borrows (it must outlive
     * rank_fini). An error fails exec_create on every rank. */
    duet_status_t (*rank_init)(void *arg, int tp_rank, int tp_size, const kv_layout_t *layout,
                               void **slab_p, void **state_p, char *reply, size_t reply_cap);
    /* For exec_call: msg (len bytes) as the driver sent it. */
    duet_status_t (*rank_call)(void *arg, void *state, int tp_rank, const void *msg, size_t len,
                               char *reply, size_t reply_cap);
    /* Before each exec_run's forward pass. */
    void (*rank_step)(void *arg, void *state, int tp_rank);
    /* At exec_destroy (or a failed exec_create), after rank_init succeeded;
     * the forward pass is gone by then. */
    void (*rank_fini)(void *arg, void *state, int tp_rank);
    void *arg;
} exec_hooks_t;

typedef struct {
    int          tp_size;          /* ranks, 1..64; 1: no worker processes */
    double       timeout_s;        /* a late peer inside a step (collectives,
                                      plan hand-off); 0: 10 s */
    double       load_timeout_s;   /* start-up (every rank loads its shard); 0: 120 s */
    size_t       plan_capacity;    /* largest batch plan in bytes; 0: 1 MiB */
    exec_hooks_t hooks;
} exec_opts_t;

typedef struct exec exec_t;

/* Create the executor. g and cfg are borrowed and must outlive it. fo:
 * the forward-pass options of every rank (tp_rank, tp_size and tp_group
 * are set by the executor; kv_slab is rank 0's, unless rank_init gives
 * one; n_threads 0 means the cores divided by tp_size, at least 1). A
 * model that cannot be split tp_size ways is refused before any process
 * starts: DUET_ERR_INVALID with the reason in err ("9 query heads cannot be
 * split across 2 ranks"). */
duet_status_t exec_create(const gguf_t *g, const model_config_t *cfg, const fwd_opts_t *fo,
                          const exec_opts_t *eo, exec_t **ex_p, char *err, size_t errlen);

/* Stop the workers (waits for them to exit; kills those that do not) and
 * free everything. NULL is a no-op. */
void exec_destroy(exec_t *ex);

/* One forward pass over the batch on every rank; as fwd_run (logits: rank
 * 0's whole rows). DUET_ERR_TOO_BIG when the batch does not fit
 * plan_capacity (nothing ran); DUET_ERR_PEER / DUET_ERR_TIMEOUT when a rank
 * failed (the executor is then broken). */
duet_status_t exec_run(exec_t *ex, const fwd_seq_t *seqs, int n_seqs, float *logits);

/* Run hooks.rank_call on every rank with msg (len bytes) and gather the
 * replies: *replies_p (tp_size, EXEC_REPLY_MAX), owned by the executor,
 * valid until the next call. Returns the first rank's error, if any. */
duet_status_t exec_call(exec_t *ex, const void *msg, size_t len, const char **replies_p);

/* Rank `rank`'s reply to rank_init (EXEC_REPLY_MAX bytes), NULL when the
 * rank does not exist. */
const char *exec_rank_reply(const exec_t *ex, int rank);

/* False once a rank failed. */
bool exec_ok(const exec_t *ex);
int exec_tp_size(const exec_t *ex);
/* pid of worker rank 1..tp_size-1 (tests, operators), 0 otherwise. */
pid_t exec_worker_pid(const exec_t *ex, int rank);

/* Rank 0's KV slab and its layout (n_kv_heads: rank 0's share). */
const kv_layout_t *exec_kv_layout(const exec_t *ex);
void *exec_kv_slab(exec_t *ex);

#endif
