/* Tensor parallel forward pass through the executor, on small `duet
 * mkmodel` models (real worker processes, the shm group):
 *   - 8 heads / 4 KV heads, Q4_1: TP=2 gives TP=1's greedy tokens for
 *     several prompts, logits within the tolerance (docs/parallel.md,
 *     "Executor"), with two-level and with 8-bit activations; the
 *     vocabulary (511) leaves the last slice padded;
 *   - the same shape in F16 (no block constraint on the row-parallel slices);
 *   - 8 heads / 2 KV heads at TP=4: replicated KV heads;
 *   - the engine with tp_size 2 gives the tokens of tp_size 1;
 *   - shapes that cannot be split are refused before any process starts;
 *   - the rank hooks (a slab from rank_init, replies, exec_call, rank_step,
 *     rank_fini) run in every rank's process;
 *   - every rank's KV heads are those of the KV connector's kvc_tp_heads. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "engine/engine.h"
#include "engine/executor.h"
#include "kvconnector/kvc.h"
#include "tests/unit/engine_testutil.h"
#include "tests/unit/tp_testutil.h"

/* Tolerance of ||l(TP) - l(TP=1)|| / ||l(TP=1) - mean|| per logits row:
 * twice the oracle's bound on a pass's distance from exact for that
 * activation rounding (docs/kernels.md; docs/parallel.md, "Executor"). */
#define TP_TOL_Q8X2 3e-3    /* quantized weights, two-level activations */
#define TP_TOL_Q8   5e-2    /* quantized weights, 8-bit activations (--act-q8) */
#define TP_TOL_F16  4e-3    /* f16 weights, f16 activations */

#define N_PROMPTS 6
#define LONG_LEN  110

static const int32_t p0[] = {1, 17, 42, 99, 3, 250, 7};
static const int32_t p1[] = {500, 2};
static const int32_t p2[] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 300, 301, 302, 303, 304,
                             305, 306, 307, 308};
/* Three long prompts (filled in main): the first step's all-reduces then
 * carry 360 tokens x hidden 192-256 x 4 B, above GROUP_SHM_ONE_SHOT_BYTES
 * at TP=2, so they run in place in the group's input buffer; the decode
 * steps take the one-shot path. */
static int32_t pl[3][LONG_LEN];
static const int32_t *const prompts[N_PROMPTS] = {p0, p1, p2, pl[0], pl[1], pl[2]};
static const int32_t lens[N_PROMPTS] = {7, 2, 21, LONG_LEN, LONG_LEN, LONG_LEN};

static int no_children(void)
{
    return waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD;
}

static void check_tp(const tmodel_t *m, int tp, bool act_q8, int n_gen, double tol,
                     const char *what)
{
    tpt_run_t ref, got;
    double rel = 0, md = 0;

    memset(&ref, 0, sizeof(ref));
    memset(&got, 0, sizeof(got));
    if (tpt_generate(m->g, &m->cfg, 1, act_q8, prompts, lens, N_PROMPTS, n_gen, &ref) != 0 ||
        tpt_generate(m->g, &m->cfg, tp, act_q8, prompts, lens, N_PROMPTS, n_gen, &got) != 0) {
        ok(0, "%s: TP=%d runs", what, tp);
        tpt_free(&ref);
        tpt_free(&got);
        return;
    }
    ok(tpt_compare(&ref, &got, &rel, &md), "%s: TP=%d greedy tokens equal TP=1 (%d prompts, "
       "%d tokens each)", what, tp, N_PROMPTS, n_gen);
    diag("%s: max relative logits distance %.3g (max |diff| %.3g)", what, rel, md);
    ok(rel <= tol, "%s: TP=%d logits within %g of TP=1's", what, tp, tol);
    ok(no_children(), "%s: every worker reaped", what);
    tpt_free(&ref);
    tpt_free(&got);
}

static void check_refused(const tmodel_t *m, int tp, const char *want)
{
    fwd_opts_t fo = {.n_threads = 1, .n_blocks = 4, .block_size = 16, .kv_dtype = DTYPE_F16};
    exec_opts_t xo = {.tp_size = tp};
    exec_t *ex = NULL;
    char err[256] = "";
    duet_status_t s = exec_create(m->g, &m->cfg, &fo, &xo, &ex, err, sizeof(err));

    ok(s == DUET_ERR_INVALID && ex == NULL && strstr(err, want) != NULL,
       "TP=%d refused at start: '%s'", tp, err);
    ok(no_children(), "TP=%d: no process started", tp);
    exec_destroy(ex);
}

static void check_engine(const tmodel_t *m)
{
    engine_req_params_t p;
    engine_opts_t o;
    touts_t ref = {0}, got = {0};
    engine_t *e;
    char err[256] = "";
    int i, okay = 1;

    engine_req_params_default(&p);
    p.max_tokens = 5;
    p.sampling.ignore_eos = true;
    for (int tp = 1; tp <= 2; tp++) {
        engine_opts_default(&o);
        o.threads = 1;
        o.kv_blocks = 32;
        o.tp_size = tp;
        e = NULL;
        if (engine_create(m->g, &m->cfg, &o, &e, err, sizeof(err)) != DUET_OK) {
            ok(0, "engine tp %d: %s", tp, err);
            return;
        }
        if (tp == 2)
            ok(exec_tp_size(engine_executor(e)) == 2 && exec_worker_pid(engine_executor(e), 1) > 0,
               "engine tp 2 runs a worker process");
        for (i = 0; i < N_PROMPTS && okay; i++)
            okay = engine_add(e, (uint64_t)i + 1, prompts[i], lens[i], &p, NULL, 0) == DUET_OK;
        okay = okay && trun(e, tp == 1 ? &ref : &got, 8, 100) >= 0;
        engine_destroy(e);
    }
    ok(okay && touts_equal(&ref, &got, N_PROMPTS), "engine: tp_size 2 gives tp_size 1's tokens");
    ok(no_children(), "engine: every worker reaped");
    touts_free(&ref);
    touts_free(&got);
}

/* ---- rank hooks ------------------------------------------------------------ */

typedef struct {
    void  *slab;
    size_t bytes;
    int    steps;
} hstate_t;

static duet_status_t h_init(void *arg, int rank, int tp, const kv_layout_t *l, void **slab_p,
                            void **state_p, char *reply, size_t cap)
{
    hstate_t *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return DUET_ERR_NOMEM;
    h->bytes = kv_slab_bytes(l);
    h->slab = mmap(NULL, h->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h->slab == MAP_FAILED) {
        free(h);
        return DUET_ERR_NOMEM;
    }
    *slab_p = h->slab;
    *state_p = h;
    snprintf(reply, cap, "rank %d/%d pid %d heads %d", rank, tp, (int)getpid(), l->n_kv_heads);
    return DUET_OK;
}

static duet_status_t h_call(void *arg, void *state, int rank, const void *msg, size_t len,
                            char *reply, size_t cap)
{
    hstate_t *h = state;

    if (len == 4 && memcmp(msg, "fail", 4) == 0 && rank == 1)
        return DUET_ERR_NO_RESOURCE;
    snprintf(reply, cap, "%.*s %d steps %d", (int)len, (const char *)msg, rank, h->steps);
    return DUET_OK;
}

static void h_step(void *arg, void *state, int rank)
{
    ((hstate_t *)state)->steps++;
}

static void h_fini(void *arg, void *state, int rank)
{
    hstate_t *h = state;
    char path[300];
    FILE *f;

    snprintf(path, sizeof(path), "%s.%d", (const char *)arg, rank);
    f = fopen(path, "w");
    if (f != NULL)
        fclose(f);
    munmap(h->slab, h->bytes);
    free(h);
}

static void check_hooks(const tmodel_t *m, int tp)
{
    char marker[256], want[64], err[256] = "";
    fwd_opts_t fo = {.n_threads = 1, .n_blocks = 4, .block_size = 16, .kv_dtype = DTYPE_F16};
    exec_opts_t xo = {.tp_size = tp,
                      .hooks = {h_init, h_call, h_step, h_fini, marker}};
    int32_t tok = 5, table[4] = {0, 1, 2, 3};
    fwd_seq_t sq = {.tokens = &tok, .n_new = 1, .n_past = 0, .block_table = table,
                    .n_blocks = 4, .want_logits = true};
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.vocab);
    const char *replies = NULL;
    exec_t *ex = NULL;
    int good = 1;

    snprintf(marker, sizeof(marker), "/tmp/duet_test_tp_hooks_%d", (int)getpid());
    if (exec_create(m->g, &m->cfg, &fo, &xo, &ex, err, sizeof(err)) != DUET_OK) {
        ok(0, "hooks, TP=%d: exec_create: %s", tp, err);
        free(logits);
        return;
    }
    for (int r = 0; r < tp; r++) {
        snprintf(want, sizeof(want), "rank %d/%d pid %d heads %d", r, tp,
                 r == 0 ? (int)getpid() : (int)exec_worker_pid(ex, r), m->cfg.n_kv_heads / tp);
        good = good && strcmp(exec_rank_reply(ex, r), want) == 0;
    }
    ok(good, "hooks, TP=%d: every rank's rank_init ran in its own process and replied", tp);
    ok(exec_kv_slab(ex) != NULL && exec_kv_layout(ex)->n_kv_heads == m->cfg.n_kv_heads / tp,
       "hooks, TP=%d: rank 0's forward pass uses the hook's slab", tp);
    good = exec_run(ex, &sq, 1, logits) == DUET_OK;
    tok = 6;
    sq.n_past = 1;
    good = good && exec_run(ex, &sq, 1, logits) == DUET_OK;
    good = good && exec_call(ex, "ping", 4, &replies) == DUET_OK;
    for (int r = 0; r < tp && good; r++) {
        snprintf(want, sizeof(want), "ping %d steps 2", r);
        good = strcmp(replies + (size_t)r * EXEC_REPLY_MAX, want) == 0;
        if (!good)
            diag("rank %d replied '%s'", r, replies + (size_t)r * EXEC_REPLY_MAX);
    }
    ok(good, "hooks, TP=%d: rank_step before each step, exec_call replies from every rank", tp);
    if (tp > 1)
        ok(exec_call(ex, "fail", 4, &replies) == DUET_ERR_NO_RESOURCE && exec_ok(ex),
           "hooks, TP=%d: a rank's call error comes back; the group stays usable", tp);
    ok(exec_run(ex, &sq, 1, logits) == DUET_OK, "hooks, TP=%d: steps go on", tp);
    exec_destroy(ex);
    good = 1;
    for (int r = 0; r < tp; r++) {
        char path[300];

        snprintf(path, sizeof(path), "%s.%d", marker, r);
        good = good && access(path, F_OK) == 0;
        unlink(path);
    }
    ok(good, "hooks, TP=%d: rank_fini ran on every rank", tp);
    ok(no_children(), "hooks, TP=%d: every worker reaped", tp);
    free(logits);
}

/* The forward pass's shard and the KV connector's kvc_tp_heads agree on
 * which KV heads each rank holds (decode ranks receive exactly those). */
static void check_kv_heads(void)
{
    int bad = 0, n_cases = 0;

    for (int32_t nkv = 1; nkv <= 12; nkv++) {
        for (int tp = 1; tp <= 16; tp++) {
            int valid = kvc_tp_valid(nkv, tp);
            tp_dims_t d = {.n_heads = nkv * tp, .n_kv_heads = nkv, .head_dim = 32,
                           .ffn = 32 * tp, .vocab = 1000, .in_block = 32};

            for (int r = 0; r < tp; r++) {
                tp_shard_t s;
                duet_status_t st = tp_shard_plan(&d, r, tp, &s, NULL, 0);
                int32_t first = -1, count = -1;

                if (valid && kvc_tp_heads(nkv, tp, r, &first, &count) != DUET_OK)
                    bad++;
                n_cases++;
                if ((st == DUET_OK) != valid ||
                    (valid && (s.kv_head0 != first || s.n_kv_heads != count))) {
                    if (bad++ < 3)
                        diag("%d KV heads, TP=%d, rank %d: shard %d+%d, kvc %d+%d", nkv, tp, r,
                             s.kv_head0, s.n_kv_heads, first, count);
                }
            }
        }
    }
    ok(bad == 0, "KV heads of every rank match kvc_tp_heads (%d cases)", n_cases);
}

int main(void)
{
    tmodel_t a, f16, rep, odd;

    for (int k = 0; k < 3; k++)
        for (int i = 0; i < LONG_LEN; i++)
            pl[k][i] = (i * 37 + k * 101 + 7) % 500;    /* below every model's vocab */

    if (tmodel_open(&a, "tp_a", "--layers 2 --hidden 256 --heads 8 --kv-heads 4 --ffn 512 "
                                "--vocab 511 --ctx 256 --type q4_1 --seed 11") != 0) {
        ok(0, "mkmodel");
        return tap_done();
    }
    check_tp(&a, 2, false, 6, TP_TOL_Q8X2, "8 heads / 4 KV heads, Q4_1");
    check_tp(&a, 2, true, 6, TP_TOL_Q8, "8 heads / 4 KV heads, Q4_1, 8-bit activations");
    check_engine(&a);
    check_hooks(&a, 1);
    check_hooks(&a, 2);
    check_hooks(&a, 4);
    check_refused(&a, 3, "8 query heads cannot be split across 3 ranks");
    check_refused(&a, 16, "cannot be split across 16 ranks");
    tmodel_close(&a);

    if (tmodel_open(&f16, "tp_f16", "--layers 2 --hidden 192 --heads 8 --kv-heads 4 --ffn 200 "
                                    "--vocab 601 --ctx 256 --type f16 --seed 12") == 0) {
        check_tp(&f16, 2, false, 5, TP_TOL_F16, "8 heads / 4 KV heads, F16, head dim 24");
        tmodel_close(&f16);
    } else {
        ok(0, "mkmodel f16");
    }

    if (tmodel_open(&rep, "tp_rep", "--layers 2 --hidden 256 --heads 8 --kv-heads 2 --ffn 512 "
                                    "--vocab 511 --ctx 256 --type q4_1 --seed 13") == 0) {
        check_tp(&rep, 4, false, 5, TP_TOL_Q8X2, "8 heads / 2 KV heads (replicated at TP=4)");
        check_refused(&rep, 3, "cannot be split across 3 ranks");
        tmodel_close(&rep);
    } else {
        ok(0, "mkmodel replicated");
    }

    /* head dim 16: one head's o columns are half a Q4_1 block */
    if (tmodel_open(&odd, "tp_odd", "--layers 1 --hidden 128 --heads 8 --ffn 256 --vocab 64 "
                                    "--ctx 64 --type q4_1 --seed 14") == 0) {
        check_refused(&odd, 8, "not whole 32-element blocks");
        tmodel_close(&odd);
    } else {
        ok(0, "mkmodel odd");
    }
    check_kv_heads();
    return tap_done();
}
