/* The shm group backend with real processes: every collective against a
 * serial reference (rank-order sums, bit-exact) for sizes 1..16M, odd sizes,
 * every dtype, 2/3/4 ranks; a tiny slot (many pipelined chunks); determinism
 * across runs and ranks; bad arguments; TP/PP groups. Rank 0 prints TAP,
 * the other ranks report through the group itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parallel/group.h"
#include "parallel/procgroup.h"
#include "tests/tap.h"
#include "tests/unit/group_testlib.h"

enum { OP_AR, OP_AG, OP_RS, OP_BC, NOPS };
static const char *op_names[NOPS] = {"all_reduce", "all_gather", "reduce_scatter", "broadcast"};

typedef struct {
    int    n;
    size_t slot;            /* 0: default */
    size_t max_count;       /* largest size in the sweep */
    bool   huge;            /* also 16M+1 f32 all_reduce */
    bool   extras;          /* bad arguments, TP/PP */
    bool   det_only;        /* determinism case only */
    bool   stress;          /* random ops, sizes and delays only */
    uint64_t det_hash;      /* out (rank 0) */
} run_t;

static const size_t sizes[] = {1, 2, 3, 7, 16, 17, 31, 100, 1023, 4097, 65537,
                               262147, 1048579, 16777217};
static bool slow;       /* --slow: every dtype and op up to 16M+1 elements */

/* Run one collective on this rank and check its output against the serial
 * reference. Returns 1 when right, 0 when wrong, negative status on error. */
static int one_case(group_t *g, int op, group_dtype_t dt, size_t count, uint32_t salt)
{
    int n = group_size(g), r = group_rank(g);
    size_t esz = group_dtype_size(dt);
    size_t in_n = op == OP_RS ? (size_t)n * count : count;
    size_t out_n = op == OP_AG ? (size_t)n * count : count;
    uint8_t *src0 = malloc(in_n * esz + 1), *dst = malloc(out_n * esz + 1), *src = src0;
    int root = (int)(salt % (uint32_t)n), good = 1;
    /* variants by salt: 1 in place, 2 input in the group's buffer, 3 both */
    bool in_place = (salt & 1) == 1;
    uint8_t *staged = (salt & 2) ? group_input_buffer(g, in_n * esz) : NULL;
    duet_status_t s = DUET_OK;

    if (src0 == NULL || dst == NULL) {
        free(src0);
        free(dst);
        return DUET_ERR_NOMEM;
    }
    if (staged != NULL)
        src = staged;
    switch (op) {
    case OP_AR:
        gt_fill(dt, src, count, r, 0, salt);
        s = group_all_reduce(g, in_place ? src : dst, src, count, dt);
        if (in_place)
            memcpy(dst, src, count * esz);
        for (size_t i = 0; i < count && good; i++)
            good = gt_load(dt, dst, i) == gt_sum(dt, n, i, salt);
        break;
    case OP_AG:
        if (in_place && staged == NULL) {
            gt_fill(dt, dst + (size_t)r * count * esz, count, r, 0, salt);
            s = group_all_gather(g, dst, dst + (size_t)r * count * esz, count, dt);
        } else {
            gt_fill(dt, src, count, r, 0, salt);
            s = group_all_gather(g, dst, src, count, dt);
        }
        for (int j = 0; j < n && good; j++)
            for (size_t i = 0; i < count && good; i++)
                good = gt_load(dt, dst, (size_t)j * count + i) == gt_raw(dt, j, i, salt);
        break;
    case OP_RS:
        gt_fill(dt, src, in_n, r, 0, salt);
        s = group_reduce_scatter(g, dst, src, count, dt);
        for (size_t i = 0; i < count && good; i++)
            good = gt_load(dt, dst, i) == gt_sum(dt, n, (size_t)r * count + i, salt);
        break;
    case OP_BC: {
        uint8_t *buf = staged != NULL && r == root ? staged : dst;

        if (r == root)
            gt_fill(dt, buf, count, root, 0, salt);
        else
            memset(buf, 0xab, count * esz);
        s = group_broadcast(g, buf, count, dt, root);
        for (size_t i = 0; i < count && good; i++)
            good = gt_load(dt, buf, i) == gt_raw(dt, root, i, salt);
        break;
    }
    }
    free(src0);
    free(dst);
    return s != DUET_OK ? s : good;
}

/* Every rank contributes one int; rank 0 gets all of them. */
static duet_status_t gather_int(group_t *g, int32_t mine, int32_t *all)
{
    return group_all_gather(g, all, &mine, 1, GROUP_I32);
}

static bool all_equal(const int32_t *v, int n, int32_t want)
{
    for (int j = 0; j < n; j++)
        if (v[j] != want)
            return false;
    return true;
}

static int sweep(group_t *g, const run_t *rt, bool tap)
{
    int n = group_size(g), fails = 0;
    int32_t oks[64];
    uint32_t salt = 1;

    for (int op = 0; op < NOPS; op++) {
        for (int dt = 0; dt < GROUP_DTYPE_COUNT; dt++) {
            size_t bad_count = 0;
            int32_t all_ok = 1;
            duet_status_t s;

            for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
                int got;

                if (sizes[k] > rt->max_count)
                    continue;
                /* the largest size once per op, in f32 and bf16 */
                if (sizes[k] > 300000 && dt != GROUP_F32 && dt != GROUP_BF16 && !slow)
                    continue;
                got = one_case(g, op, (group_dtype_t)dt, sizes[k], salt++);
                s = gather_int(g, got, oks);
                if (s != DUET_OK) {
                    if (tap)
                        ok(0, "n=%d: gather failed: %s", n, duet_status_str(s));
                    return fails + 1;
                }
                if (!all_equal(oks, n, 1) && all_ok) {
                    all_ok = 0;
                    bad_count = sizes[k];
                }
            }
            if (!all_ok)
                fails++;
            if (tap && !ok(all_ok, "n=%d slot=%zu %s %s, sizes 1..%zu", n, rt->slot,
                           op_names[op], group_dtype_name((group_dtype_t)dt),
                           rt->max_count))
                diag("first wrong size: %zu", bad_count);
        }
    }
    if (rt->huge) {
        size_t count = 16u * 1024 * 1024 + 1;
        int got = one_case(g, OP_AR, GROUP_F32, count, 4242);

        if (gather_int(g, got, oks) != DUET_OK || !all_equal(oks, n, 1))
            fails++;
        if (tap)
            ok(all_equal(oks, n, 1), "n=%d all_reduce f32 of %zu elements", n, count);
    }
    return fails;
}

/* Same all-reduce twice: bit-identical; every rank holds the same bytes.
 * Returns the output hash (rank 0), 0 on failure. */
static uint64_t determinism(group_t *g, bool tap)
{
    size_t count = 300001;
    float *src = malloc(count * 4), *a = malloc(count * 4), *b = malloc(count * 4);
    int n = group_size(g), r = group_rank(g);
    uint64_t h = 0, hs[64];
    bool same;

    for (size_t i = 0; i < count; i++)      /* magnitudes over 12 decades */
        src[i] = (gt_to_f32(GROUP_F32, gt_raw(GROUP_F32, r, i, 77)) *
                  (float)(1ull << (gt_hash((uint32_t)(i * 7 + (size_t)r)) % 40))) /
                 (float)(1u << 20);
    if (group_all_reduce(g, a, src, count, GROUP_F32) == DUET_OK &&
        group_all_reduce(g, b, src, count, GROUP_F32) == DUET_OK) {
        same = memcmp(a, b, count * 4) == 0;
        h = gt_fnv(a, count * 4);
    } else {
        same = false;
    }
    /* gather the 8-byte hashes as bytes */
    if (group_all_gather(g, hs, &h, sizeof(h), GROUP_U8) != DUET_OK)
        same = false;
    for (int j = 0; j < n; j++)
        same = same && hs[j] == h;
    if (tap)
        ok(same && h != 0, "n=%d all_reduce repeats bit for bit on every rank (%016llx)", n,
           (unsigned long long)h);
    free(src);
    free(a);
    free(b);
    return same ? h : 0;
}

static void bad_calls(group_t *g, bool tap)
{
    int n = group_size(g), r = group_rank(g);
    float x[16] = {0}, y[16];
    int32_t st[64];
    duet_status_t s;

    /* rank 1 passes NULL: it gets INVALID, the others MISMATCH */
    s = group_all_reduce(g, y, r == 1 ? NULL : x, 10, GROUP_F32);
    gather_int(g, s, st);
    if (tap) {
        bool good = st[1] == DUET_ERR_INVALID;

        for (int j = 0; j < n; j++)
            good = good && (j == 1 || st[j] == DUET_ERR_MISMATCH);
        ok(good, "n=%d NULL buffer on rank 1: INVALID there, MISMATCH elsewhere", n);
    }
    /* different counts: MISMATCH everywhere */
    s = group_all_reduce(g, y, x, 10 + (size_t)r, GROUP_F32);
    gather_int(g, s, st);
    if (tap)
        ok(all_equal(st, n, DUET_ERR_MISMATCH), "n=%d count mismatch fails on every rank", n);
    /* different ops */
    s = r == 0 ? group_barrier(g) : group_broadcast(g, x, 4, GROUP_F32, 0);
    gather_int(g, s, st);
    if (tap)
        ok(all_equal(st, n, DUET_ERR_MISMATCH), "n=%d barrier against broadcast: MISMATCH", n);
    s = group_broadcast(g, x, 4, GROUP_F32, n);
    gather_int(g, s, st);
    if (tap)
        ok(all_equal(st, n, DUET_ERR_INVALID), "n=%d root out of range: INVALID", n);
    s = group_all_reduce(g, y, x, 4, (group_dtype_t)99);
    gather_int(g, s, st);
    if (tap)
        ok(all_equal(st, n, DUET_ERR_INVALID), "n=%d unknown dtype: INVALID", n);
    /* still usable */
    for (int i = 0; i < 16; i++)
        x[i] = (float)(r + i);
    s = group_all_reduce(g, y, x, 16, GROUP_F32);
    if (tap)
        ok(s == DUET_OK && y[3] == (float)(n * 3 + n * (n - 1) / 2) && group_ok(g),
           "n=%d the group works after the bad calls", n);
}

static void tp_pp(procgroup_t *pg, int r, bool tap)
{
    char prefix[160];
    parallel_t *par = NULL;
    parallel_config_t pc = {.backend = GROUP_BACKEND_SHM, .world_rank = r, .tp_size = 2,
                            .pp_size = 2, .prefix = prefix, .timeout_s = 10};
    int32_t v[4], all[4 * 4];
    duet_status_t s;

    snprintf(prefix, sizeof(prefix), "%s.par", procgroup_id(pg));
    s = parallel_create(&pc, &par);
    if (s != DUET_OK) {
        if (tap)
            ok(0, "parallel_create tp=2 pp=2: %s", duet_status_str(s));
        return;
    }
    v[0] = parallel_tp_rank(par);
    v[1] = parallel_pp_rank(par);
    v[2] = r;
    v[3] = r;
    /* TP sum of world ranks: 0+1 or 2+3; PP sum: 0+2 or 1+3 */
    s = group_all_reduce(parallel_tp(par), &v[2], &v[2], 1, GROUP_I32);
    if (s == DUET_OK)
        s = group_all_reduce(parallel_pp(par), &v[3], &v[3], 1, GROUP_I32);
    if (s == DUET_OK)
        s = group_all_gather(parallel_world(par), all, v, 4, GROUP_I32);
    if (tap) {
        bool good = s == DUET_OK && parallel_tp_size(par) == 2 && parallel_pp_size(par) == 2;

        for (int w = 0; w < 4 && good; w++)
            good = all[w * 4 + 0] == w % 2 && all[w * 4 + 1] == w / 2 &&
                   all[w * 4 + 2] == (w / 2 == 0 ? 1 : 5) &&
                   all[w * 4 + 3] == (w % 2 == 0 ? 2 : 4);
        ok(good, "tp=2 pp=2: ranks, and TP/PP all-reduce stay inside their groups");
    }
    parallel_destroy(par);
}

/* TP only (pp = 1): the TP group is the world group; PP groups are local. */
static void tp_only(procgroup_t *pg, int r, int n, bool tap)
{
    char prefix[160];
    parallel_t *par = NULL;
    parallel_config_t pc = {.backend = GROUP_BACKEND_SHM, .world_rank = r, .tp_size = n,
                            .pp_size = 1, .prefix = prefix, .timeout_s = 10};
    int32_t v = r + 1;
    duet_status_t s;

    snprintf(prefix, sizeof(prefix), "%s.tponly", procgroup_id(pg));
    s = parallel_create(&pc, &par);
    if (s == DUET_OK)
        s = group_all_reduce(parallel_tp(par), &v, &v, 1, GROUP_I32);
    if (tap)
        ok(s == DUET_OK && parallel_tp(par) == parallel_world(par) &&
           group_size(parallel_pp(par)) == 1 && parallel_tp_rank(par) == r &&
           parallel_tp_size(par) == n && parallel_pp_rank(par) == 0 &&
           parallel_pp_size(par) == 1 && v == n * (n + 1) / 2,
           "tp=%d pp=1: the TP group is the world, PP is local, all-reduce works", n);
    parallel_destroy(par);
}

/* Random collectives (the same sequence on every rank, from a shared seed),
 * sizes of up to a few slots, and random per-rank delays before and inside
 * the sequence: any interleaving of fast and slow ranks gives right results. */
static void stress(group_t *g, bool tap)
{
    int n = group_size(g), r = group_rank(g), bad = 0, nops = 200;
    uint32_t shared = 12345, own = 777u + (uint32_t)r * 7919u;
    int32_t oks[64];

    for (int k = 0; k < nops; k++) {
        int op, got;
        group_dtype_t dt;
        size_t count;

        shared = gt_hash(shared + 1);
        op = (int)(shared % NOPS);
        dt = (group_dtype_t)((shared >> 8) % GROUP_DTYPE_COUNT);
        count = (shared >> 12) % 3000 + ((shared >> 20) & 1);
        own = gt_hash(own + 1);
        if (own % 4 == 0)
            usleep(own % 300);
        else if (own % 4 == 1)
            sched_yield();
        got = one_case(g, op, dt, count, shared);
        bad += got != 1;
    }
    if (gather_int(g, bad, oks) != DUET_OK)
        oks[0] = -1;
    if (tap)
        ok(all_equal(oks, n, 0), "n=%d slot=4096: %d random collectives with random delays",
           n, nops);
}

/* Body of every rank; rank 0 (tap) prints. Returns failures seen here. */
static int rank_body(procgroup_t *pg, run_t *rt, bool tap)
{
    char name[224];
    group_t *g = NULL;
    group_config_t cfg = {.backend = GROUP_BACKEND_SHM, .rank = procgroup_rank(pg),
                          .world_size = rt->n, .name = name, .timeout_s = 20,
                          .slot_bytes = rt->slot};
    duet_status_t s;
    int fails = 0;

    snprintf(name, sizeof(name), "%s.w", procgroup_id(pg));
    s = group_create(&cfg, &g);
    if (tap)
        ok(s == DUET_OK, "n=%d slot=%zu: group_create: %s", rt->n, rt->slot,
           duet_status_str(s));
    if (s != DUET_OK)
        return 1;
    if (rt->det_only) {
        rt->det_hash = determinism(g, tap);
    } else if (rt->stress) {
        stress(g, tap);
    } else {
        fails += sweep(g, rt, tap);
        rt->det_hash = determinism(g, tap);
        if (rt->extras) {
            bad_calls(g, tap);
            if (rt->n == 4)
                tp_pp(pg, cfg.rank, tap);
            else
                tp_only(pg, cfg.rank, rt->n, tap);
        }
    }
    group_destroy(g);
    return fails;
}

static int worker_main(procgroup_t *pg, void *arg)
{
    return rank_body(pg, arg, false) ? 1 : 0;
}

static uint64_t run(run_t *rt)
{
    procgroup_opts_t o = {.world_size = rt->n, .worker_main = worker_main, .worker_arg = rt,
                          .timeout_s = 20};
    procgroup_t *pg = NULL;
    duet_status_t s = procgroup_start(&o, &pg);

    if (!ok(s == DUET_OK, "n=%d: start %d worker processes", rt->n, rt->n - 1))
        return 0;
    rank_body(pg, rt, true);
    s = procgroup_stop(pg, 20);
    ok(s == DUET_OK, "n=%d: every worker agreed and exited 0", rt->n);
    procgroup_destroy(pg);
    return rt->det_hash;
}

static void local_checks(void)
{
    group_config_t cfg = {.backend = GROUP_BACKEND_SHM, .rank = 0, .world_size = 0,
                          .name = "duet.test.bad"};
    group_t *g = NULL;
    float a[3] = {1, 2, 3}, b[3] = {0};
    char nm[16];

    is_int(group_create(&cfg, &g), DUET_ERR_INVALID, "world size 0 is invalid");
    cfg.world_size = 2;
    cfg.rank = 2;
    is_int(group_create(&cfg, &g), DUET_ERR_INVALID, "rank >= world size is invalid");
    cfg.rank = -1;
    is_int(group_create(&cfg, &g), DUET_ERR_INVALID, "negative rank is invalid");
    cfg.rank = 0;
    cfg.name = "bad/name";
    is_int(group_create(&cfg, &g), DUET_ERR_INVALID, "a name with '/' is invalid");
    cfg.name = NULL;
    is_int(group_create(&cfg, &g), DUET_ERR_INVALID, "a NULL name is invalid");
    cfg.name = "duet.test.bad";
    cfg.slot_bytes = 100;
    is_int(group_create(&cfg, &g), DUET_ERR_INVALID, "a slot under 4096 bytes is invalid");
    is_int(group_create(NULL, &g), DUET_ERR_INVALID, "NULL config is invalid");
    cfg.slot_bytes = 0;
    cfg.backend = (group_backend_t)7;
    is_int(group_create(&cfg, &g), DUET_ERR_INVALID, "unknown backend is invalid");
    is_int(group_unique_name("x", nm, sizeof(nm)), DUET_ERR_TOO_BIG,
           "unique name: too small a buffer");

    {
        /* a segment larger than /dev/shm: a clear error at creation, not a
         * SIGBUS later (the pages are reserved up front) */
        struct statvfs vfs;
        char big[64];

        if (statvfs("/dev/shm", &vfs) == 0 && vfs.f_blocks > 0) {
            cfg.backend = GROUP_BACKEND_SHM;
            cfg.world_size = 2;
            cfg.rank = 0;
            cfg.slot_bytes = (size_t)vfs.f_blocks * vfs.f_frsize;
            group_unique_name("big", big, sizeof(big));
            cfg.name = big;
            is_int(group_create(&cfg, &g), DUET_ERR_NOMEM,
                   "a segment larger than /dev/shm is refused");
            cfg.slot_bytes = 0;
        }
    }
    cfg.backend = GROUP_BACKEND_SHM;
    cfg.world_size = 1;
    cfg.name = NULL;
    ok(group_create(&cfg, &g) == DUET_OK, "a group of one needs no name");
    ok(group_all_reduce(g, b, a, 3, GROUP_F32) == DUET_OK && b[2] == 3.0f,
       "group of one: all_reduce copies");
    is_int(group_all_reduce(g, b, NULL, 3, GROUP_F32), DUET_ERR_INVALID, "NULL src is invalid");
    is_int(group_broadcast(g, b, 3, GROUP_F32, 1), DUET_ERR_INVALID, "root 1 of 1 is invalid");
    ok(group_barrier(g) == DUET_OK && group_size(g) == 1 && group_rank(g) == 0,
       "group of one: barrier, size, rank");
    group_destroy(g);
    group_destroy(NULL);
}

int main(int argc, char **argv)
{
    run_t r2 = {.n = 2, .max_count = 1048579, .huge = true, .extras = true};
    /* huge at 3 ranks: the n > 2 sum with a streamed private dst */
    run_t r3 = {.n = 3, .max_count = 262147, .huge = true, .extras = true};
    run_t r4 = {.n = 4, .max_count = 262147, .extras = true};
    run_t small = {.n = 3, .slot = 4096, .max_count = 65537};
    run_t again = {.n = 3, .det_only = true};
    run_t mixed = {.n = 4, .slot = 4096, .stress = true};
    run_t five = {.n = 5, .max_count = 65537};    /* the generic (tiled) f32 sum */
    uint64_t h3;

    if (argc > 1 && strcmp(argv[1], "--slow") == 0) {
        /* suite 'slow': the whole matrix up to 16M+1 elements */
        slow = true;
        r2.max_count = r3.max_count = r4.max_count = 16777217;
        r2.huge = r3.huge = false;
    }
    local_checks();
    run(&r2);
    h3 = run(&r3);
    run(&r4);
    run(&small);
    run(&mixed);
    run(&five);
    ok(h3 != 0 && run(&again) == h3, "n=3: a second run gives the same bits (%016llx)",
       (unsigned long long)h3);
    return tap_done();
}
