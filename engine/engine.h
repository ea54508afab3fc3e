/* The engine step loop shared by the colocated, prefill and decode nodes:
 * requests in, one step at a time (schedule, forward pass over paged KV,
 * sample), tokens and finish reasons out.
 *
 *   colocated: engine_add, then engine_step until each request finishes.
 *   prefill:   opts.prefill_only; a request stops after its first token and
 *              its blocks go to opts.on_prefilled (the KV connector), held
 *              until engine_release.
 *   decode:    engine_reserve (blocks for a prompt whose KV another node
 *              computes) returns block ids; once the KV is in them,
 *              engine_add_prefilled with the first token; then engine_step.
 *
 * Not thread-safe: one thread drives an engine. */
#ifndef DUET_ENGINE_ENGINE_H
#define DUET_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/ctl_client.h"
#include "common/flags.h"
#include "common/kv_layout.h"
#include "common/status.h"
#include "engine/executor.h"
#include "engine/sampler.h"
#include "model/config.h"
#include "model/gguf.h"

typedef enum {
    ENGINE_FINISH_NONE = 0,    /* still generating */
    ENGINE_FINISH_STOP,        /* a stop id, EOS or end-of-turn (unless
                                  ignore_eos: then only stop ids) */
    ENGINE_FINISH_LENGTH,      /* max_tokens or the context length */
    ENGINE_FINISH_PREFILLED,   /* prefill-only: first token out, KV handed over */
} engine_finish_t;

const char *engine_finish_str(engine_finish_t f);

/* Called from engine_step in prefill-only mode when a request's prompt KV
 * is complete. blocks (n_blocks, borrowed until engine_release or
 * engine_abort of the request) cover n_tokens positions. */
typedef void (*engine_prefilled_cb_t)(void *arg, uint64_t req_id, int32_t first_token,
                                      const int32_t *blocks, int32_t n_blocks,
                                      int32_t n_tokens);

/* One sequence of a step, for engine_layer_cb_t: its KV of tokens
 * [n_past, n_past + n_new) is new in this step; blocks (n_blocks, borrowed
 * for the call) hold tokens [0, n_past + n_new). */
typedef struct {
    uint64_t       req_id;
    int32_t        n_past, n_new;
    int32_t        n_prompt;
    const int32_t *blocks;
    int32_t        n_blocks;
} engine_kv_seq_t;

/* Called from engine_step, inside the forward pass, after each layer: that
 * layer's KV of the step's new tokens is in the slab. It must not call the
 * engine. */
typedef void (*engine_layer_cb_t)(void *arg, int32_t layer, const engine_kv_seq_t *seqs,
                                  int n_seqs);

/* Called from engine_step when the scheduler preempts a request: its blocks
 * are free again (another request may write them in this step) and its KV
 * will be recomputed. It must not call the engine. */
typedef void (*engine_preempt_cb_t)(void *arg, uint64_t req_id);

typedef struct {
    /* Settable by flags (engine_opts_flags). */
    int64_t threads;            /* 0: all cores */
    int64_t kv_mem_mib;         /* KV pool size when kv_blocks is 0 */
    int64_t kv_blocks;          /* KV pool size in blocks; 0: from kv_mem_mib */
    int64_t block_size;         /* tokens per block */
    int64_t max_running;        /* requests in the running batch */
    int64_t max_step_tokens;    /* token budget per step */
    int64_t max_model_len;      /* context; 0: the model's */
    double  watermark;          /* fraction of blocks kept free at admission */
    bool    chunked_prefill;
    bool    prefix_caching;
    bool    kv_f32;             /* f32 KV instead of f16 */
    /* Set by the node. */
    bool                  prefill_only;
    engine_prefilled_cb_t on_prefilled;
    engine_layer_cb_t     on_layer_kv;  /* optional; cb_arg too */
    engine_preempt_cb_t   on_preempt;   /* optional; cb_arg too */
    void                 *cb_arg;
    void                 *kv_slab;    /* NULL: allocate; else borrowed */
    int32_t               tp_rank, tp_size;
    /* tp_size > 1: engine_create starts the executor's tp_size - 1 worker
     * processes (engine/executor.h; call it before creating threads, event
     * loops or sockets) and every step runs on all ranks. tp_rank is 0. */
    double                tp_timeout_s;   /* a rank late inside a step; 0: 10 s */
    exec_hooks_t          rank_hooks;     /* per-rank setup (KV connector) */
} engine_opts_t;

void engine_opts_default(engine_opts_t *o);

/* Append flag entries for the settable options to flags (room for max);
 * returns how many were written (9 when max allows). */
int engine_opts_flags(engine_opts_t *o, flag_t *flags, int max);

typedef struct {
    int32_t  max_tokens;        /* >= 1 */
    sampler_params_t sampling;
} engine_req_params_t;

void engine_req_params_default(engine_req_params_t *p);

/* Request parameters from the sampling fields of a RESERVE / PREFILL frame
 * (both node services use this one translation). A request without a seed
 * gets default_seed. The frame's EOS ids become stop ids. */
void engine_req_params_from_ctl(const ctl_sampling_t *s, uint64_t default_seed,
                                engine_req_params_t *p);

/* One event of a step. */
typedef struct {
    uint64_t        req_id;
    int32_t         token;      /* new token, -1 when none (decode-side
                                   finish right at engine_add_prefilled) */
    engine_finish_t finish;
} engine_out_t;

typedef struct {
    int32_t  running, waiting, reserved, prefilled;
    int32_t  kv_blocks, kv_free, kv_used, kv_cached;
    double   kv_usage;          /* used / total */
    uint64_t preemptions;
    uint64_t prefix_queries, prefix_hits;   /* tokens */
    uint64_t steps, tokens_generated, tokens_prefilled;
    int32_t  max_model_len;
} engine_stats_t;

typedef struct engine engine_t;

/* g and cfg are borrowed and must outlive the engine. err gets a one-line
 * reason on failure. */
duet_status_t engine_create(const gguf_t *g, const model_config_t *cfg,
                            const engine_opts_t *opts, engine_t **e_p,
                            char *err, size_t errlen);
/* Aborts every request and frees everything. */
void engine_destroy(engine_t *e);

/* Queue a request (prompt borrowed, copied). DUET_ERR_INVALID with a reason
 * in err for: a taken id, zero max_tokens, an empty prompt, a prompt that
 * leaves no room in the context, a token or stop id outside the vocabulary,
 * a sampling value out of range, or (chunked prefill off) a prompt over the
 * step budget. */
duet_status_t engine_add(engine_t *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
                         const engine_req_params_t *params, char *err, size_t errlen);

/* Decode side: check like engine_add, then allocate blocks for the prompt.
 * *blocks_p (borrowed, valid until the request is added, aborted or
 * finished) and *n_blocks_p receive the block table.
 * DUET_ERR_NO_RESOURCE when the pool (less the watermark) is short. */
duet_status_t engine_reserve(engine_t *e, uint64_t id, const int32_t *prompt,
                             int32_t n_prompt, const engine_req_params_t *params,
                             const int32_t **blocks_p, int32_t *n_blocks_p,
                             char *err, size_t errlen);

/* The reserved request's KV is filled; first_token was sampled by the
 * prefill node, which also hands over its PRNG state (rng may be NULL: keep
 * the seed's). The request joins the batch; if first_token already ends it,
 * the next engine_step reports the finish with token -1. */
duet_status_t engine_add_prefilled(engine_t *e, uint64_t id, int32_t first_token,
                                   const uint64_t rng[SAMPLER_RNG_WORDS]);

/* Run one step. *outs_p (n_out entries, owned by the engine, valid until
 * the next call) lists each request that produced a token or finished.
 * A finished request is gone afterwards (its id may be reused), except in
 * prefill-only mode where it is held until engine_release. */
duet_status_t engine_step(engine_t *e, const engine_out_t **outs_p, int *n_out_p);

/* True when there is work for engine_step. */
bool engine_has_work(const engine_t *e);

/* True when the last engine_step ran a forward pass or reported something.
 * False: it found nothing it could run (no blocks to admit or grow a
 * request while other requests hold them); calling it again at once would
 * only spin, so the caller waits for a change (a timer, a freed block). */
bool engine_step_ran(const engine_t *e);

/* Abort a request in any state; frees all it holds. DUET_ERR_NOT_FOUND for
 * an unknown id. */
duet_status_t engine_abort(engine_t *e, uint64_t id);

/* Prefill-only: the KV connector is done with the request's blocks. */
duet_status_t engine_release(engine_t *e, uint64_t id);

/* PRNG state of a request (prefill-only: to hand to the decode node). */
duet_status_t engine_req_rng(const engine_t *e, uint64_t id, uint64_t rng[SAMPLER_RNG_WORDS]);

void engine_stats(const engine_t *e, engine_stats_t *st);

/* Pool invariants (tests): every block accounted for. */
duet_status_t engine_check(const engine_t *e, char *err, size_t errlen);

int32_t engine_eos(const engine_t *e);
int32_t engine_vocab(const engine_t *e);

/* The executor that runs the forward pass (tp_size ranks): exec_call and
 * exec_rank_reply reach the rank hooks. */
exec_t *engine_executor(engine_t *e);

/* The KV slab and its layout (common/kv_layout.h), for the KV connector. */
const kv_layout_t *engine_kv_layout(const engine_t *e);
void *engine_kv_slab(engine_t *e);

#endif
