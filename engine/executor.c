/* The executor: the forward pass on one rank, or on a TP group of forked
 * worker processes driven by rank 0 through the process group's plan
 * channel. See executor.h.
 *
 * Messages (the plan bytes, int32 little-endian host order, one host):
 *   STEP  msg_t | seq_t (n_seqs) | tokens of every sequence | block tables
 *   CALL  msg_t | the driver's bytes
 * The TP group's collectives inside fwd_run keep the ranks in step; the
 * gathers of rank_init and exec_call replies use the same group. */
#define DUET_LOG_COMPONENT "executor"

#include "engine/executor.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kernels/cpu/cpu.h"
#include "parallel/group.h"
#include "parallel/procgroup.h"
#include "parallel/shard.h"

enum { MSG_STEP = 1, MSG_CALL = 2 };

typedef struct {
    uint32_t kind;
    int32_t  n_seqs;        /* STEP */
    uint32_t len;           /* bytes after this header */
    uint32_t pad;
} msg_t;

typedef struct {
    int32_t n_new, n_past, n_blocks, want_logits;
} seq_t;

/* One rank's answer, all-gathered to every rank. */
typedef struct {
    int32_t status;
    int32_t pad;
    char    reply[EXEC_REPLY_MAX];
} rec_t;

struct exec {
    const gguf_t         *g;
    const model_config_t *cfg;
    fwd_opts_t            fo;           /* rank-independent options */
    exec_opts_t           eo;
    int                   tp, rank;
    procgroup_t          *pg;           /* tp > 1 */
    parallel_t           *par;          /* tp > 1 */
    fwd_t                *fwd;
    void                 *hook_state;
    bool                  hook_inited;
    bool                  broken;
    kv_layout_t           layout;
    uint8_t              *plan;         /* (plan_cap) driver: encoding; worker: received */
    size_t                plan_cap;
    fwd_seq_t            *seqs;         /* worker: (cap_seqs) decoded batch */
    int                   cap_seqs;
    rec_t                *recs;         /* (tp) */
    char                 *init_replies; /* (tp, EXEC_REPLY_MAX) */
    char                 *replies;      /* (tp, EXEC_REPLY_MAX) of the last exec_call */
};

#define SET_ERR(...)                                     \
    do {                                                 \
        if (err != NULL && errlen > 0)                   \
            snprintf(err, errlen, __VA_ARGS__);          \
    } while (0)

static group_t *tp_group(const exec_t *ex)
{
    return ex->par != NULL ? parallel_tp(ex->par) : NULL;
}

/* Gather each rank's record into ex->recs (tp); the first failing rank's
 * status, or the collective's own failure. */
static duet_status_t gather(exec_t *ex, const rec_t *mine, int *bad_rank_p)
{
    duet_status_t s;

    *bad_rank_p = -1;
    if (ex->tp == 1) {
        ex->recs[0] = *mine;
    } else {
        s = group_all_gather(tp_group(ex), ex->recs, mine, sizeof(*mine), GROUP_U8);
        if (s != DUET_OK)
            return s;
    }
    for (int r = 0; r < ex->tp; r++) {
        if (ex->recs[r].status != DUET_OK) {
            *bad_rank_p = r;
            return (duet_status_t)ex->recs[r].status;
        }
    }
    return DUET_OK;
}

/* In every rank's process: rank_init, the rank's forward pass, and a gather
 * of how it went on every rank, so that all succeed or all fail. */
static duet_status_t rank_setup(exec_t *ex, char *err, size_t errlen)
{
    fwd_opts_t fo = ex->fo;
    tp_shard_t sh;
    void *slab = NULL;
    rec_t mine;
    duet_status_t s;
    int bad;

    memset(&mine, 0, sizeof(mine));
    fo.tp_rank = ex->rank;
    fo.tp_size = ex->tp;
    fo.tp_group = tp_group(ex);
    if (ex->rank != 0)
        fo.kv_slab = NULL;      /* the driver's; each rank has its own */
    sh.n_kv_heads = ex->cfg->n_kv_heads;
    s = ex->tp > 1 ? fwd_tp_plan(ex->g, ex->cfg, ex->rank, ex->tp, &sh, NULL, 0) : DUET_OK;
    ex->layout = (kv_layout_t){.n_layers = ex->cfg->n_layers, .n_blocks = fo.n_blocks,
                               .n_kv_heads = sh.n_kv_heads, .block_size = fo.block_size,
                               .head_dim = ex->cfg->head_dim, .dtype = fo.kv_dtype};
    if (s == DUET_OK && ex->eo.hooks.rank_init != NULL) {
        s = ex->eo.hooks.rank_init(ex->eo.hooks.arg, ex->rank, ex->tp, &ex->layout, &slab,
                                   &ex->hook_state, mine.reply, sizeof(mine.reply));
        ex->hook_inited = s == DUET_OK;
        if (s != DUET_OK)
            snprintf(mine.reply, sizeof(mine.reply), "the rank init hook failed: %s",
                     duet_status_str(s));
    }
    if (s == DUET_OK) {
        if (slab != NULL)
            fo.kv_slab = slab;
        s = fwd_create(ex->g, ex->cfg, &fo, &ex->fwd);
        if (s != DUET_OK)
            snprintf(mine.reply, sizeof(mine.reply), "forward pass setup failed: %s",
                     duet_status_str(s));
    }
    mine.status = s;
    s = gather(ex, &mine, &bad);
    if (s != DUET_OK) {
        if (bad >= 0 && ex->tp > 1)
            SET_ERR("tensor parallel rank %d: %.*s", bad, EXEC_REPLY_MAX, ex->recs[bad].reply);
        else if (bad >= 0)
            SET_ERR("%.*s", EXEC_REPLY_MAX, ex->recs[bad].reply);
        else
            SET_ERR("tensor parallel ranks did not all start: %s", duet_status_str(s));
        return s;
    }
    for (int r = 0; r < ex->tp; r++)
        memcpy(ex->init_replies + (size_t)r * EXEC_REPLY_MAX, ex->recs[r].reply, EXEC_REPLY_MAX);
    if (ex->tp > 1)
        CHECK(group_set_timeout(tp_group(ex), ex->eo.timeout_s));
    return DUET_OK;
}

/* The rank's own resources (not the process group). */
static void rank_teardown(exec_t *ex)
{
    fwd_destroy(ex->fwd);
    ex->fwd = NULL;
    if (ex->hook_inited && ex->eo.hooks.rank_fini != NULL)
        ex->eo.hooks.rank_fini(ex->eo.hooks.arg, ex->hook_state, ex->rank);
    ex->hook_inited = false;
    parallel_destroy(ex->par);
    ex->par = NULL;
}

static duet_status_t rank_join(exec_t *ex, double timeout_s)
{
    parallel_config_t pc = {
        .backend = GROUP_BACKEND_SHM, .world_rank = ex->rank, .tp_size = ex->tp, .pp_size = 1,
        .prefix = procgroup_id(ex->pg), .timeout_s = timeout_s,
    };

    return parallel_create(&pc, &ex->par);
}

/* Run rank_call here and gather every rank's reply into ex->replies. */
static duet_status_t call_local(exec_t *ex, const void *msg, size_t len)
{
    rec_t mine;
    duet_status_t s;
    int bad;

    memset(&mine, 0, sizeof(mine));
    if (ex->eo.hooks.rank_call != NULL)
        mine.status = ex->eo.hooks.rank_call(ex->eo.hooks.arg, ex->hook_state, ex->rank, msg,
                                             len, mine.reply, sizeof(mine.reply));
    s = gather(ex, &mine, &bad);
    if (bad < 0 && s != DUET_OK)
        return s;           /* the collective itself failed */
    for (int r = 0; r < ex->tp; r++)
        memcpy(ex->replies + (size_t)r * EXEC_REPLY_MAX, ex->recs[r].reply, EXEC_REPLY_MAX);
    return s;
}

/* ---- worker ---------------------------------------------------------------- */

/* The batch of a STEP message into ex->seqs (pointers into ex->plan). */
static duet_status_t step_decode(exec_t *ex, size_t len, int *n_p)
{
    const msg_t *m = (const msg_t *)ex->plan;
    const seq_t *sq = (const seq_t *)(m + 1);
    const int32_t *p;
    size_t words, used;
    int n = m->n_seqs;

    if (n < 1 || (size_t)n > (len - sizeof(*m)) / sizeof(seq_t))
        return DUET_ERR_INVALID;
    if (n > ex->cap_seqs) {
        fwd_seq_t *t = realloc(ex->seqs, sizeof(*t) * (size_t)n);

        if (t == NULL)
            return DUET_ERR_NOMEM;
        ex->seqs = t;
        ex->cap_seqs = n;
    }
    p = (const int32_t *)(sq + n);
    words = (len - sizeof(*m) - sizeof(seq_t) * (size_t)n) / sizeof(int32_t);
    used = 0;
    for (int i = 0; i < n; i++) {
        if (sq[i].n_new < 0 || sq[i].n_blocks < 0 ||
            (size_t)sq[i].n_new + (size_t)sq[i].n_blocks > words - used)
            return DUET_ERR_INVALID;
        ex->seqs[i] = (fwd_seq_t){.tokens = p + used, .n_new = sq[i].n_new,
                                  .n_past = sq[i].n_past, .n_blocks = sq[i].n_blocks,
                                  .want_logits = sq[i].want_logits != 0};
        used += (size_t)sq[i].n_new;
    }
    for (int i = 0; i < n; i++) {
        ex->seqs[i].block_table = p + used;
        used += (size_t)sq[i].n_blocks;
    }
    *n_p = n;
    return DUET_OK;
}

/* Fork-mode entry of worker ranks: ex is the worker's copy of the driver's
 * executor as it was at procgroup_start. */
static int worker_main(procgroup_t *pg, void *arg)
{
    exec_t *ex = arg;
    duet_status_t s;
    char err[256] = "";
    int rc = 1;

    ex->pg = pg;
    ex->rank = procgroup_rank(pg);
    ex->plan = malloc(ex->plan_cap);
    if (ex->plan == NULL)
        return 1;
    if (rank_join(ex, ex->eo.load_timeout_s) != DUET_OK)
        goto out;
    if (rank_setup(ex, err, sizeof(err)) != DUET_OK) {
        log_debug("rank %d: start-up failed: %s", ex->rank, err);
        goto out;
    }
    for (;;) {
        const msg_t *m = (const msg_t *)ex->plan;
        size_t len;
        int n;

        s = procgroup_plan_recv(pg, ex->plan, ex->plan_cap, &len);
        if (s == DUET_ERR_CLOSED) {
            rc = 0;
            break;
        }
        if (s != DUET_OK)
            break;          /* the driver is gone */
        if (len < sizeof(*m) || m->len != len - sizeof(*m)) {
            log_error("rank %d: malformed plan of %zu bytes", ex->rank, len);
            break;
        }
        if (m->kind == MSG_STEP) {
            s = step_decode(ex, len, &n);
            if (s != DUET_OK) {
                log_error("rank %d: malformed batch plan: %s", ex->rank, duet_status_str(s));
                break;
            }
            if (ex->eo.hooks.rank_step != NULL)
                ex->eo.hooks.rank_step(ex->eo.hooks.arg, ex->hook_state, ex->rank);
            s = fwd_run(ex->fwd, ex->seqs, n, NULL);
            /* a bad batch fails the same way on every rank, before any
             * collective; a broken group ends the worker */
            if (s != DUET_OK && !group_ok(tp_group(ex))) {
                log_debug("rank %d: forward pass failed: %s", ex->rank, duet_status_str(s));
                break;
            }
        } else if (m->kind == MSG_CALL) {
            s = call_local(ex, m + 1, m->len);
            if (s != DUET_OK && !group_ok(tp_group(ex)))
                break;
        } else {
            log_error("rank %d: unknown plan kind %u", ex->rank, m->kind);
            break;
        }
    }
out:
    rank_teardown(ex);
    free(ex->plan);
    free(ex->seqs);
    return rc;
}

/* ---- driver ---------------------------------------------------------------- */

duet_status_t exec_create(const gguf_t *g, const model_config_t *cfg, const fwd_opts_t *fo,
                          const exec_opts_t *eo, exec_t **ex_p, char *err, size_t errlen)
{
    tp_shard_t sh;
    exec_t *ex;
    duet_status_t s;
    int tp;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (g == NULL || cfg == NULL || fo == NULL || eo == NULL || ex_p == NULL) {
        SET_ERR("no model or options");
        return DUET_ERR_INVALID;
    }
    tp = eo->tp_size;
    if (tp < 1 || tp > 64 || eo->timeout_s < 0 || eo->load_timeout_s < 0) {
        SET_ERR("bad executor options (tensor parallel size %d: 1..64)", tp);
        return DUET_ERR_INVALID;
    }
    /* every rank's shard, before any process starts */
    for (int r = 0; r < tp && tp > 1; r++)
        CHECK(fwd_tp_plan(g, cfg, r, tp, &sh, err, errlen));
    ex = calloc(1, sizeof(*ex));
    if (ex == NULL) {
        SET_ERR("out of memory");
        return DUET_ERR_NOMEM;
    }
    ex->g = g;
    ex->cfg = cfg;
    ex->fo = *fo;
    ex->eo = *eo;
    ex->tp = tp;
    if (ex->eo.timeout_s == 0)
        ex->eo.timeout_s = 10.0;
    if (ex->eo.load_timeout_s == 0)
        ex->eo.load_timeout_s = 120.0;
    if (ex->fo.n_threads == 0 && tp > 1)
        ex->fo.n_threads = cpu_n_cores() / tp > 1 ? cpu_n_cores() / tp : 1;
    ex->plan_cap = eo->plan_capacity ? eo->plan_capacity : (size_t)1 << 20;
    ex->recs = calloc((size_t)tp, sizeof(*ex->recs));
    ex->init_replies = calloc((size_t)tp, EXEC_REPLY_MAX);
    ex->replies = calloc((size_t)tp, EXEC_REPLY_MAX);
    if (ex->recs == NULL || ex->init_replies == NULL || ex->replies == NULL) {
        s = DUET_ERR_NOMEM;
        goto err_free;
    }
    if (tp > 1) {
        procgroup_opts_t po = {.world_size = tp, .plan_capacity = ex->plan_cap,
                               .timeout_s = ex->eo.timeout_s, .worker_main = worker_main,
                               .worker_arg = ex};

        s = procgroup_start(&po, &ex->pg);
        if (s != DUET_OK) {
            SET_ERR("cannot start %d tensor parallel worker processes: %s", tp - 1,
                    duet_status_str(s));
            goto err_free;
        }
        s = rank_join(ex, ex->eo.load_timeout_s);
        if (s != DUET_OK) {
            SET_ERR("cannot build the tensor parallel group of %d ranks: %s", tp,
                    duet_status_str(s));
            goto err_free;
        }
        ex->plan = malloc(ex->plan_cap);
        if (ex->plan == NULL) {
            s = DUET_ERR_NOMEM;
            goto err_free;
        }
    }
    CHECK_GOTO(rank_setup(ex, err, errlen), s, err_free);
    if (tp > 1)
        log_info("executor: %d tensor parallel ranks (workers %d..%d), %d threads each",
                 tp, (int)procgroup_pid(ex->pg, 1), (int)procgroup_pid(ex->pg, tp - 1),
                 ex->fo.n_threads);
    *ex_p = ex;
    return DUET_OK;

err_free:
    if (err != NULL && errlen > 0 && err[0] == '\0')
        SET_ERR("%s", duet_status_str(s));
    ex->broken = true;      /* the workers may have failed too: short grace */
    exec_destroy(ex);
    return s;
}

void exec_destroy(exec_t *ex)
{
    if (ex == NULL)
        return;
    if (ex->pg != NULL && procgroup_stop(ex->pg, ex->broken ? 1.0 : 10.0) != DUET_OK &&
        !ex->broken)
        log_warn("executor: a worker did not end cleanly");
    rank_teardown(ex);
    procgroup_destroy(ex->pg);
    free(ex->plan);
    free(ex->seqs);
    free(ex->recs);
    free(ex->init_replies);
    free(ex->replies);
    free(ex);
}

/* A rank failed: the group is unusable from now on. */
static duet_status_t broken(exec_t *ex, duet_status_t s, const char *what)
{
    ex->broken = true;
    if (procgroup_check(ex->pg) == DUET_OK)     /* else it named the dead worker */
        log_error("executor: %s failed on the tensor parallel group: %s", what,
                  duet_status_str(s));
    else
        log_error("executor: %s failed: a worker is gone", what);
    return s == DUET_ERR_TIMEOUT ? s : DUET_ERR_PEER;
}

static duet_status_t send(exec_t *ex, uint32_t kind, int32_t n_seqs, size_t len,
                          const char *what)
{
    msg_t *m = (msg_t *)ex->plan;
    duet_status_t s;

    m->kind = kind;
    m->n_seqs = n_seqs;
    m->len = (uint32_t)len;
    m->pad = 0;
    s = procgroup_plan_send(ex->pg, ex->plan, sizeof(*m) + len);
    return s == DUET_OK ? s : broken(ex, s, what);
}

static duet_status_t step_encode(exec_t *ex, const fwd_seq_t *seqs, int n, size_t *len_p)
{
    seq_t *sq = (seq_t *)(ex->plan + sizeof(msg_t));
    size_t bytes = sizeof(seq_t) * (size_t)n;
    int32_t *p;

    for (int i = 0; i < n; i++) {
        if (seqs[i].n_new < 0 || seqs[i].n_blocks < 0 ||
            (seqs[i].n_new > 0 && seqs[i].tokens == NULL) ||
            (seqs[i].n_blocks > 0 && seqs[i].block_table == NULL))
            return DUET_ERR_INVALID;
        bytes += sizeof(int32_t) * ((size_t)seqs[i].n_new + (size_t)seqs[i].n_blocks);
    }
    if (sizeof(msg_t) + bytes > ex->plan_cap) {
        log_error("executor: a batch of %d sequences needs a plan of %zu bytes; the capacity "
                  "is %zu", n, sizeof(msg_t) + bytes, ex->plan_cap);
        return DUET_ERR_TOO_BIG;
    }
    p = (int32_t *)(sq + n);
    for (int i = 0; i < n; i++) {
        sq[i] = (seq_t){.n_new = seqs[i].n_new, .n_past = seqs[i].n_past,
                        .n_blocks = seqs[i].n_blocks, .want_logits = seqs[i].want_logits};
        memcpy(p, seqs[i].tokens, sizeof(int32_t) * (size_t)seqs[i].n_new);
        p += seqs[i].n_new;
    }
    for (int i = 0; i < n; i++) {
        memcpy(p, seqs[i].block_table, sizeof(int32_t) * (size_t)seqs[i].n_blocks);
        p += seqs[i].n_blocks;
    }
    *len_p = bytes;
    return DUET_OK;
}

duet_status_t exec_run(exec_t *ex, const fwd_seq_t *seqs, int n_seqs, float *logits)
{
    duet_status_t s;
    size_t len;

    if (ex == NULL || seqs == NULL || n_seqs <= 0)
        return DUET_ERR_INVALID;
    if (ex->broken)
        return DUET_ERR_PEER;
    if (ex->tp > 1) {
        CHECK(step_encode(ex, seqs, n_seqs, &len));
        CHECK(send(ex, MSG_STEP, n_seqs, len, "sending the batch"));
    }
    if (ex->eo.hooks.rank_step != NULL)
        ex->eo.hooks.rank_step(ex->eo.hooks.arg, ex->hook_state, 0);
    s = fwd_run(ex->fwd, seqs, n_seqs, logits);
    if (s != DUET_OK && ex->tp > 1 && !group_ok(tp_group(ex)))
        return broken(ex, s, "the forward pass");
    return s;
}

duet_status_t exec_call(exec_t *ex, const void *msg, size_t len, const char **replies_p)
{
    duet_status_t s;

    if (ex == NULL || (msg == NULL && len > 0) || replies_p == NULL)
        return DUET_ERR_INVALID;
    if (ex->broken)
        return DUET_ERR_PEER;
    if (ex->tp > 1) {
        if (sizeof(msg_t) + len > ex->plan_cap)
            return DUET_ERR_TOO_BIG;
        if (len > 0)
            memcpy(ex->plan + sizeof(msg_t), msg, len);
        CHECK(send(ex, MSG_CALL, 0, len, "exec_call"));
    }
    s = call_local(ex, msg, len);
    if (s != DUET_OK && ex->tp > 1 && !group_ok(tp_group(ex)))
        return broken(ex, s, "exec_call");
    *replies_p = ex->replies;
    return s;
}

const char *exec_rank_reply(const exec_t *ex, int rank)
{
    if (ex == NULL || rank < 0 || rank >= ex->tp)
        return NULL;
    return ex->init_replies + (size_t)rank * EXEC_REPLY_MAX;
}

bool exec_ok(const exec_t *ex)
{
    return ex != NULL && !ex->broken;
}

int exec_tp_size(const exec_t *ex)
{
    return ex->tp;
}

pid_t exec_worker_pid(const exec_t *ex, int rank)
{
    return ex->pg != NULL ? procgroup_pid(ex->pg, rank) : 0;
}

const kv_layout_t *exec_kv_layout(const exec_t *ex)
{
    return fwd_kv_layout(ex->fwd);
}

void *exec_kv_slab(exec_t *ex)
{
    return fwd_kv_slab(ex->fwd);
}
