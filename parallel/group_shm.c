/* Shared-memory group backend: CPU ranks on one host, one process each.
 *
 * Segment (named, created by rank 0, unlinked once every rank attached):
 *   header | rank areas (n) | data [buffer 3][rank n][slot_bytes]
 * Every collective runs as a sequence of steps over chunks that fit a slot.
 * Step k uses data buffer k % 3 (a ring of three), so a rank may fill its
 * slot for step k+1 while slower peers still read step k (and, in the
 * pipelined all-reduce, step k-1). Each rank advances its own
 * sequence word once per sync point; a sync waits until every peer's word
 * reached ours (32-bit wrapping compare; peers are never more than two posts
 * apart, so no ABA). Reuse of a buffer is safe: writing step k+3 happens
 * after the first sync of step k+2 (all-reduce: the sync that ends step k+1),
 * which every peer posts only after it finished reading step k.
 *
 * all_reduce, large: copy in the parts the peers sum, sync, rank r sums part
 * r over ranks 0..n-1 in rank order (group_reduce.c) into its output and
 * over part r of every peer's slot ("push"), sync, copy the other parts out
 * of its own slot (reduce-scatter + all-gather). Pipelined over chunks with
 * one sync per chunk: after summing chunk k a rank copies in chunk k+1, and
 * one sync both publishes chunk k's sums and chunk k+1's inputs; chunk k's
 * copy-out then runs. A message of s steps takes s + 1 syncs, not 2 s.
 * Staged in place (src = dst = our slot, from group_input_buffer()): no
 * copy-in, no copy-out; each rank's sums land in every slot. A large
 * private dst (>= 2 x L2) is written with non-temporal stores.
 * all_reduce, small (bytes x (n-1) <= SMALL_BYTES, one chunk): copy in, sync, every rank
 * sums the whole chunk in the same rank order (one sync; same bytes on every
 * rank).
 * The first sync of each collective also compares the ranks' descriptors
 * (op, dtype, count, root): a mismatch fails on every rank. */
#define DUET_LOG_COMPONENT "parallel"
#include "parallel/group_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/dtype.h"
#include "common/log.h"

#define SHM_MAGIC       0x3147534d54455544ull    /* "DUETSMG1" */
#define SHM_VERSION     2u
#define SHM_SPIN_NS     (5ull * 1000)           /* spin before yield-polling */
#define SHM_YIELD_MAX_NS (2ull * 1000 * 1000)   /* yield-poll cap before sleeping */
#define SMALL_BYTES     GROUP_SHM_ONE_SHOT_BYTES /* one-shot all-reduce */
#define SHM_BUFS        3                       /* data buffers, used in turn */
#define PUSH_BLOCK_BYTES (16u << 10)            /* n > 2 push sums: block in L1 */

enum {
    OP_INVALID = 0,             /* a rank got bad arguments (poison) */
    OP_ALL_REDUCE,
    OP_ALL_GATHER,
    OP_REDUCE_SCATTER,
    OP_BROADCAST,
    OP_BARRIER,
};

typedef struct {
    _Atomic uint64_t magic;     /* stored last by rank 0: header is valid */
    uint32_t         version;
    uint32_t         world_size;
    uint64_t         slot_bytes;
    uint64_t         total_bytes;
    _Atomic uint32_t abort;     /* a rank saw a failure: the group is broken */
    uint32_t         pad0;
    pshm_word_t      joined;    /* ranks attached */
    char             pad1[64];
} shm_hdr_t;

typedef struct {
    uint32_t op, dtype;
    uint64_t count;
    int32_t  root;
    uint32_t pad;
} op_desc_t;

typedef struct {
    pshm_word_t      seq;       /* advanced by this rank at each sync */
    char             pad0[56];
    _Atomic int32_t  pid;       /* 0: free */
    _Atomic uint32_t gone;      /* left the group */
    op_desc_t        desc[2];   /* per parity, valid from the first sync */
    char             pad1[8];
} shm_rank_t;

_Static_assert(sizeof(shm_rank_t) == 128, "rank area is two cache lines");

typedef struct {
    char          name[208];
    uint8_t      *base;
    size_t        size;
    shm_hdr_t    *hdr;
    shm_rank_t   *ranks;        /* (n) */
    uint8_t      *data;         /* (SHM_BUFS, n, slot) */
    int           rank, n;
    size_t        slot;
    uint32_t      seq;          /* our last posted sequence value */
    uint64_t      step;         /* steps completed (same on every rank) */
    uint64_t      timeout_ns;
    int           pidfds[SHM_MAX_RANKS];
    size_t        nt_bytes;     /* all-reduces this large store dst non-temporally */
    bool          broken;
    _Alignas(64) uint8_t scratch[PUSH_BLOCK_BYTES];  /* n > 2 sums before a streamed dst */
} shm_ctx_t;

#define RANKS_OFF 128     /* rank areas start on a cache line of their own */
_Static_assert(sizeof(shm_hdr_t) <= RANKS_OFF, "header fits before the rank areas");

static size_t hdr_bytes(int n)
{
    size_t b = RANKS_OFF + (size_t)n * sizeof(shm_rank_t);

    return (b + 4095) & ~(size_t)4095;
}

static uint8_t *slot_at(shm_ctx_t *c, uint64_t step, int r)
{
    return c->data + ((size_t)(step % SHM_BUFS) * (size_t)c->n + (size_t)r) * c->slot;
}

/* ---- sync points -------------------------------------------------------- */

static void mark_broken(shm_ctx_t *c)
{
    c->broken = true;
    atomic_store(&c->hdr->abort, 1);
    for (int j = 0; j < c->n; j++)
        pshm_kick(&c->ranks[j].seq);
}

/* Post our next sequence value and wait until every peer posted it too. */
static duet_status_t shm_sync(shm_ctx_t *c, const char *what, size_t step_bytes)
{
    pshm_waiter_t wt = {
        .abort = &c->hdr->abort, .npidfds = 1, .hup_fd = -1, .spin_ns = SHM_SPIN_NS,
        /* peers are likely busy moving as many bytes as we are: poll about
         * as long as that takes (1 ns per byte, at most 2 ms) */
        .yield_ns = step_bytes < SHM_YIELD_MAX_NS ? step_bytes : SHM_YIELD_MAX_NS,
        .deadline_ns = clock_now_ns() + c->timeout_ns,
    };
    duet_status_t s;

    c->seq++;
    pshm_post(&c->ranks[c->rank].seq, c->seq);
    for (int j = 0; j < c->n; j++) {
        if (j == c->rank)
            continue;
        /* Watch only the rank we wait for: a peer that already posted and
         * then exited is no failure. A peer stuck on a dead third rank
         * notices it and sets abort. */
        wt.gone = &c->ranks[j].gone;
        wt.pidfds = &c->pidfds[j];
        s = pshm_wait(&c->ranks[j].seq, c->seq, &wt);
        if (s != DUET_OK) {
            int who = j;

            if (s == DUET_ERR_PEER && atomic_load(&c->hdr->abort))
                log_error("group %s rank %d: %s aborted by a peer", c->name,
                          c->rank, what);
            else
                log_error("group %s rank %d: %s: rank %d %s", c->name, c->rank,
                          what, who,
                          s == DUET_ERR_TIMEOUT ? "did not arrive in time" : "is gone");
            mark_broken(c);
            return s;
        }
    }
    return DUET_OK;
}

static void desc_put(shm_ctx_t *c, uint32_t op, group_dtype_t dt, size_t count, int root)
{
    op_desc_t *d = &c->ranks[c->rank].desc[c->step & 1];

    d->op = op;
    d->dtype = (uint32_t)dt;
    d->count = count;
    d->root = root;
}

static duet_status_t desc_check(shm_ctx_t *c)
{
    const op_desc_t *mine = &c->ranks[c->rank].desc[c->step & 1];

    for (int j = 0; j < c->n; j++) {
        const op_desc_t *d = &c->ranks[j].desc[c->step & 1];

        if (d->op != mine->op || d->dtype != mine->dtype ||
            d->count != mine->count || d->root != mine->root) {
            if (mine->op != OP_INVALID)
                log_error("group %s: rank %d called op %u dtype %u count %llu root %d "
                          "but rank %d called op %u dtype %u count %llu root %d",
                          c->name, c->rank, mine->op, mine->dtype,
                          (unsigned long long)mine->count, mine->root, j, d->op,
                          d->dtype, (unsigned long long)d->count, d->root);
            c->step++;      /* every rank stops here: steps stay aligned */
            return DUET_ERR_MISMATCH;
        }
    }
    return DUET_OK;
}

/* First sync of a collective: descriptor out, sync, descriptors compared. */
static duet_status_t sync_first(shm_ctx_t *c, uint32_t op, group_dtype_t dt,
                                size_t count, int root, const char *what,
                                size_t step_bytes)
{
    duet_status_t s;

    desc_put(c, op, dt, count, root);
    s = shm_sync(c, what, step_bytes);
    if (s != DUET_OK) {
        c->step++;
        return s;
    }
    return desc_check(c);
}

/* Rank r's part of a chunk of c elements in the two-shot all-reduce. */
static void part_range(size_t c, int r, int n, size_t *lo_p, size_t *hi_p)
{
    size_t per = (c + (size_t)n - 1) / (size_t)n;
    size_t lo, hi;

    per = (per + 15) & ~(size_t)15;      /* 64-byte parts for f32 */
    lo = (size_t)r * per;
    hi = lo + per;
    *lo_p = lo < c ? lo : c;
    *hi_p = hi < c ? hi : c;
}

/* ---- collectives -------------------------------------------------------- */

/* Two-shot all-reduce, our part of one chunk: out (cnt) = the rank-order
 * sum of srcs[0..n-1] (cnt each; srcs[j] is part r of rank j's slot, ours
 * may be our private src), also written over part r of every peer's slot
 * ("push": each peer then finds the whole result in its own slot). A peer's
 * part r is read here and rewritten at once, so its cache line crosses
 * cores once; pulling the sums from our slot instead made each peer first
 * invalidate the copies we had read, then fetch the sums (docs/parallel.md,
 * round 4). out is part r of our slot (in place on the staged input) or of
 * the caller's dst; in the latter case our slot's part r is not written,
 * nobody reads it. nt: stream out (a large private dst). */
static void ar_sum_push(shm_ctx_t *c, group_dtype_t dt, uint8_t *out,
                        uint8_t *const *srcs, size_t cnt, bool nt)
{
    size_t esz = group_dtype_size(dt), blk = PUSH_BLOCK_BYTES / esz;
    uint8_t *bs[SHM_MAX_RANKS];

    if (c->n == 2) {
        /* one pass: both outputs stored from the same registers */
        group_reduce(dt, out, srcs[1 - c->rank], srcs, 2, cnt, nt);
        return;
    }
    /* n > 2, by blocks that stay in L1: sum into a cached place (out, or a
     * scratch block when out is streamed), then copy that to the peers'
     * slots (and to a streamed out) */
    for (size_t b = 0; b < cnt; b += blk) {
        size_t m = cnt - b < blk ? cnt - b : blk;
        uint8_t *ob = out + b * esz, *sb = nt ? c->scratch : ob;

        for (int j = 0; j < c->n; j++) {
            bs[j] = srcs[j] + b * esz;
            if (j != c->rank)
                group_prefetch_w(bs[j], m * esz);   /* read now, stored below */
        }
        group_reduce(dt, sb, NULL, bs, c->n, m, false);
        for (int j = 0; j < c->n; j++)
            if (j != c->rank)
                memcpy(bs[j], sb, m * esz);
        if (sb != ob)
            group_copy(ob, sb, m * esz, true);
    }
}

static duet_status_t shm_start(shm_ctx_t *c)
{
    if (c->broken || atomic_load(&c->hdr->abort)) {
        c->broken = true;
        return DUET_ERR_PEER;
    }
    return DUET_OK;
}

static size_t nsteps(size_t count, size_t chunk)
{
    return count == 0 ? 1 : (count + chunk - 1) / chunk;
}

/* All-reduce step k's copy-in: the parts of chunk k the peers sum (all of it
 * on the one-shot path), into our slot of step c->step + k. */
static void ar_copy_in(shm_ctx_t *c, const uint8_t *src, size_t count, size_t chunk,
                       size_t esz, size_t k, bool small)
{
    size_t off = k * chunk;
    size_t cnt = count - off < chunk ? count - off : chunk;
    uint8_t *mine = slot_at(c, c->step + k, c->rank);
    const uint8_t *in = src + off * esz;
    size_t lo, hi;

    if (in == mine)
        return;                 /* staged in group_input_buffer() */
    if (small) {
        memcpy(mine, in, cnt * esz);
        return;
    }
    /* two-shot: we sum our own part straight from src, so the peers only
     * need the other parts */
    part_range(cnt, c->rank, c->n, &lo, &hi);
    memcpy(mine, in, lo * esz);
    memcpy(mine + hi * esz, in + hi * esz, (cnt - hi) * esz);
}

static duet_status_t shm_all_reduce(void *ctx, void *dst, const void *src,
                                    size_t count, group_dtype_t dt)
{
    shm_ctx_t *c = ctx;
    size_t esz = group_dtype_size(dt), chunk = c->slot / esz;
    size_t steps = nsteps(count, chunk);
    /* one-shot: each rank reads (n-1) x the message from its peers, against
     * about 2 (n-1)/n x in two-shot, but takes one sync instead of two */
    bool small = count * esz * (size_t)(c->n - 1) <= SMALL_BYTES && steps == 1;
    /* a large private dst: stream it (never our slot: peers read that) */
    bool nt = count * esz >= c->nt_bytes &&
              ((uint8_t *)dst + count * esz <= c->base || (uint8_t *)dst >= c->base + c->size);
    uint8_t *srcs[SHM_MAX_RANKS];
    duet_status_t s;

    CHECK(shm_start(c));
    /* in place on the input buffer: our slot is our output, which the
     * one-shot path must not write while peers still read it */
    if (dst == slot_at(c, c->step, c->rank))
        small = false;
    if (small) {
        /* one chunk: copy in, sync, every rank sums the whole of it */
        ar_copy_in(c, src, count, chunk, esz, 0, true);
        CHECK(sync_first(c, OP_ALL_REDUCE, dt, count, 0, "all_reduce", count * esz));
        for (int j = 0; j < c->n; j++)
            srcs[j] = slot_at(c, c->step, j);
        group_reduce(dt, dst, NULL, srcs, c->n, count, false);
        c->step++;
        return DUET_OK;
    }

    /* Step k (chunk k) uses the buffers of c->step + k. Sync k+1 publishes
     * our sums of chunk k and our inputs of chunk k+1. Buffer reuse: our
     * copy-in of chunk k+1 overwrites chunk k-2's buffer, which every rank
     * finished reading (its copy-out of k-2, from its own slot) and writing
     * (the sums of k-2 into our slot) before it posted sync k. */
    ar_copy_in(c, src, count, chunk, esz, 0, false);
    s = sync_first(c, OP_ALL_REDUCE, dt, count, 0, "all_reduce",
                   (count < chunk ? count : chunk) * esz);
    if (s != DUET_OK)
        return s;   /* sync_first advanced the step */
    for (size_t k = 0; k < steps; k++) {
        size_t off = k * chunk;
        size_t cnt = count - off < chunk ? count - off : chunk;
        uint8_t *out = (uint8_t *)dst + off * esz;
        uint8_t *mine = slot_at(c, c->step + k, c->rank);
        const uint8_t *in = (const uint8_t *)src + off * esz;
        size_t lo, hi;

        part_range(cnt, c->rank, c->n, &lo, &hi);
        for (int j = 0; j < c->n; j++)
            srcs[j] = slot_at(c, c->step + k, j) + lo * esz;
        srcs[c->rank] = (uint8_t *)in + lo * esz;
        ar_sum_push(c, dt, out + lo * esz, srcs, hi - lo, nt);
        if (k + 1 < steps)
            ar_copy_in(c, src, count, chunk, esz, k + 1, false);
        s = shm_sync(c, "all_reduce", cnt * esz);
        if (s != DUET_OK) {
            c->step += steps;
            return s;
        }
        /* our slot now holds every part's sum (the peers wrote theirs) */
        if (out != mine) {
            group_copy(out, mine, lo * esz, nt);
            group_copy(out + hi * esz, mine + hi * esz, (cnt - hi) * esz, nt);
        }
    }
    c->step += steps;
    return DUET_OK;
}

static duet_status_t shm_all_gather(void *ctx, void *dst, const void *src,
                                    size_t count, group_dtype_t dt)
{
    shm_ctx_t *c = ctx;
    size_t esz = group_dtype_size(dt), chunk = c->slot / esz;
    size_t steps = nsteps(count, chunk);

    CHECK(shm_start(c));
    for (size_t k = 0; k < steps; k++) {
        size_t off = k * chunk;
        size_t cnt = count - off < chunk ? count - off : chunk;
        const uint8_t *in = (const uint8_t *)src + off * esz;

        if (in != slot_at(c, c->step, c->rank))
            memcpy(slot_at(c, c->step, c->rank), in, cnt * esz);
        if (k == 0)
            CHECK(sync_first(c, OP_ALL_GATHER, dt, count, 0, "all_gather", cnt * esz));
        else
            CHECK(shm_sync(c, "all_gather", cnt * esz));
        for (int j = 0; j < c->n; j++) {
            uint8_t *out = (uint8_t *)dst + ((size_t)j * count + off) * esz;

            if (j != c->rank)
                memcpy(out, slot_at(c, c->step, j), cnt * esz);
            else if (out != in)
                memmove(out, in, cnt * esz);
        }
        c->step++;
    }
    return DUET_OK;
}

static duet_status_t shm_reduce_scatter(void *ctx, void *dst, const void *src,
                                        size_t count, group_dtype_t dt)
{
    shm_ctx_t *c = ctx;
    size_t esz = group_dtype_size(dt), chunk = c->slot / (esz * (size_t)c->n);
    size_t steps = nsteps(count, chunk);
    uint8_t *srcs[SHM_MAX_RANKS];

    CHECK(shm_start(c));
    for (size_t k = 0; k < steps; k++) {
        size_t off = k * chunk;
        size_t cnt = count - off < chunk ? count - off : chunk;
        uint8_t *mine = slot_at(c, c->step, c->rank);

        /* slot = (n, cnt): block j of this chunk */
        for (int j = 0; j < c->n; j++) {
            const uint8_t *in = (const uint8_t *)src + ((size_t)j * count + off) * esz;

            if (in != mine + (size_t)j * cnt * esz)
                memcpy(mine + (size_t)j * cnt * esz, in, cnt * esz);
        }
        if (k == 0)
            CHECK(sync_first(c, OP_REDUCE_SCATTER, dt, count, 0, "reduce_scatter",
                             cnt * esz * (size_t)c->n));
        else
            CHECK(shm_sync(c, "reduce_scatter", cnt * esz * (size_t)c->n));
        for (int j = 0; j < c->n; j++)
            srcs[j] = slot_at(c, c->step, j) + (size_t)c->rank * cnt * esz;
        group_reduce(dt, (uint8_t *)dst + off * esz, NULL, srcs, c->n, cnt, false);
        c->step++;
    }
    return DUET_OK;
}

static duet_status_t shm_broadcast(void *ctx, void *buf, size_t count,
                                   group_dtype_t dt, int root)
{
    shm_ctx_t *c = ctx;
    size_t esz = group_dtype_size(dt), chunk = c->slot / esz;
    size_t steps = nsteps(count, chunk);

    CHECK(shm_start(c));
    for (size_t k = 0; k < steps; k++) {
        size_t off = k * chunk;
        size_t cnt = count - off < chunk ? count - off : chunk;
        uint8_t *p = (uint8_t *)buf + off * esz;

        if (c->rank == root && p != slot_at(c, c->step, root))
            memcpy(slot_at(c, c->step, root), p, cnt * esz);
        if (k == 0)
            CHECK(sync_first(c, OP_BROADCAST, dt, count, root, "broadcast", cnt * esz));
        else
            CHECK(shm_sync(c, "broadcast", cnt * esz));
        if (c->rank != root)
            memcpy(p, slot_at(c, c->step, root), cnt * esz);
        c->step++;
    }
    return DUET_OK;
}

static duet_status_t shm_barrier(void *ctx)
{
    shm_ctx_t *c = ctx;

    CHECK(shm_start(c));
    CHECK(sync_first(c, OP_BARRIER, GROUP_U8, 0, 0, "barrier", 0));
    c->step++;
    return DUET_OK;
}

static void shm_poison(void *ctx)
{
    shm_ctx_t *c = ctx;

    /* mismatch and sync failures advance the step themselves */
    if (shm_start(c) == DUET_OK &&
        sync_first(c, OP_INVALID, GROUP_U8, 0, -1, "invalid call", 0) == DUET_OK)
        c->step++;
}

static duet_status_t shm_sync_noop(void *ctx)
{
    shm_ctx_t *c = ctx;

    return c->broken ? DUET_ERR_PEER : DUET_OK;
}

static void *shm_input_buffer(void *ctx, size_t bytes)
{
    shm_ctx_t *c = ctx;

    return bytes <= c->slot ? slot_at(c, c->step, c->rank) : NULL;
}

static void shm_set_timeout(void *ctx, uint64_t timeout_ns)
{
    shm_ctx_t *c = ctx;

    c->timeout_ns = timeout_ns;
}

static bool shm_ok(void *ctx)
{
    shm_ctx_t *c = ctx;

    return !c->broken && !atomic_load(&c->hdr->abort);
}

duet_status_t group_shm_ctx_check_peers(void *ctx)
{
    shm_ctx_t *c = ctx;
    pshm_waiter_t wt = {.pidfds = c->pidfds, .npidfds = c->n, .hup_fd = -1};

    if (c->broken || atomic_load(&c->hdr->abort))
        return DUET_ERR_PEER;
    return pshm_check_peers(&wt, NULL);
}

/* ---- create / destroy --------------------------------------------------- */

static void shm_destroy(void *ctx)
{
    shm_ctx_t *c = ctx;

    if (c == NULL)
        return;
    if (c->base != NULL) {
        atomic_store(&c->ranks[c->rank].gone, 1);
        pshm_kick(&c->ranks[c->rank].seq);
        munmap(c->base, c->size);
    }
    for (int j = 0; j < SHM_MAX_RANKS; j++)
        if (c->pidfds[j] >= 0)
            close(c->pidfds[j]);
    free(c);
}

static duet_status_t wait_header(shm_ctx_t *c, uint64_t deadline)
{
    while (atomic_load_explicit(&c->hdr->magic, memory_order_acquire) != SHM_MAGIC) {
        if (clock_now_ns() >= deadline) {
            log_error("group %s: rank 0 did not initialise the segment in time", c->name);
            return DUET_ERR_TIMEOUT;
        }
        usleep(1000);
    }
    if (c->hdr->version != SHM_VERSION || c->hdr->world_size != (uint32_t)c->n ||
        c->hdr->slot_bytes != c->slot || c->hdr->total_bytes != c->size) {
        log_error("group %s: rank %d expects world %d, slot %zu bytes; the segment has "
                  "version %u, world %u, slot %llu bytes", c->name, c->rank, c->n,
                  c->slot, c->hdr->version, c->hdr->world_size,
                  (unsigned long long)c->hdr->slot_bytes);
        return DUET_ERR_MISMATCH;
    }
    return DUET_OK;
}

/* Message size from which the all-reduce writes the caller's dst with
 * non-temporal stores: twice the per-core L2 (2 MiB if unknown). A dst that
 * large cannot stay in L2; streaming it saves the read-for-ownership of
 * every line (about 25% of the CPU time at 16-64 MiB, docs/parallel.md). */
static size_t nt_threshold(void)
{
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);

    return 2 * (l2 > 0 ? (size_t)l2 : (size_t)2 << 20);
}

duet_status_t group_shm_create(const group_config_t *cfg, void **ctx_p)
{
    shm_ctx_t *c;
    double timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : 10.0;
    uint64_t deadline;
    int32_t zero = 0;
    size_t size;
    duet_status_t s;
    pshm_waiter_t wt = {.hup_fd = -1, .spin_ns = 0};

    if (cfg->world_size > SHM_MAX_RANKS) {
        log_error("group %s: shm backend supports up to %d ranks, not %d",
                  cfg->name, SHM_MAX_RANKS, cfg->world_size);
        return DUET_ERR_INVALID;
    }
    /* aligned: the scratch is _Alignas(64), which calloc does not honour */
    c = aligned_alloc(64, (sizeof(*c) + 63) & ~(size_t)63);
    if (c == NULL)
        return DUET_ERR_NOMEM;
    memset(c, 0, sizeof(*c));
    for (int j = 0; j < SHM_MAX_RANKS; j++)
        c->pidfds[j] = -1;
    snprintf(c->name, sizeof(c->name), "%s", cfg->name);
    c->rank = cfg->rank;
    c->n = cfg->world_size;
    c->slot = cfg->slot_bytes ? cfg->slot_bytes : (size_t)1 << 20;
    c->slot = (c->slot + 63) & ~(size_t)63;
    c->timeout_ns = (uint64_t)(timeout_s * 1e9);
    c->nt_bytes = nt_threshold();
    size = hdr_bytes(c->n) + SHM_BUFS * (size_t)c->n * c->slot;
    deadline = clock_now_ns() + c->timeout_ns;

    if (c->rank == 0) {
        CHECK_GOTO(pshm_create(c->name, size, (void **)&c->base), s, err_free);
        c->size = size;
        c->hdr = (shm_hdr_t *)c->base;
        c->hdr->version = SHM_VERSION;
        c->hdr->world_size = (uint32_t)c->n;
        c->hdr->slot_bytes = c->slot;
        c->hdr->total_bytes = size;
        c->ranks = (shm_rank_t *)(c->base + RANKS_OFF);
        atomic_store(&c->ranks[0].pid, (int32_t)getpid());
        atomic_store(&c->hdr->joined.value, 1);
        atomic_store_explicit(&c->hdr->magic, SHM_MAGIC, memory_order_release);
    } else {
        CHECK_GOTO(pshm_open(c->name, timeout_s, &c->size, (void **)&c->base), s, err_free);
        c->hdr = (shm_hdr_t *)c->base;
        if (c->size < hdr_bytes(1)) {
            s = DUET_ERR_MISMATCH;
            goto err_unmap;
        }
        CHECK_GOTO(wait_header(c, deadline), s, err_unmap);
        c->ranks = (shm_rank_t *)(c->base + RANKS_OFF);
        if (!atomic_compare_exchange_strong(&c->ranks[c->rank].pid, &zero,
                                            (int32_t)getpid())) {
            log_error("group %s: rank %d is already taken", c->name, c->rank);
            s = DUET_ERR_BUSY;
            goto err_unmap;
        }
        atomic_fetch_add(&c->hdr->joined.value, 1);
        pshm_kick(&c->hdr->joined);
    }
    c->data = c->base + hdr_bytes(c->n);

    /* every rank attached: the name is no longer needed */
    wt.abort = &c->hdr->abort;
    wt.deadline_ns = deadline;
    s = pshm_wait(&c->hdr->joined, (uint32_t)c->n, &wt);
    if (s != DUET_OK) {
        log_error("group %s: only %u of %d ranks joined in %.1f s", c->name,
                  atomic_load(&c->hdr->joined.value), c->n, timeout_s);
        atomic_store(&c->hdr->abort, 1);
        pshm_kick(&c->hdr->joined);
        goto err_unmap;
    }
    if (c->rank == 0)
        pshm_unlink(c->name);
    for (int j = 0; j < c->n; j++) {
        pid_t pid = atomic_load(&c->ranks[j].pid);

        if (j == c->rank || pid == getpid())
            continue;   /* ranks in this process (tests) are not watched */
        c->pidfds[j] = pshm_pidfd_open(pid);
        if (c->pidfds[j] < 0 && errno == ESRCH) {
            log_error("group %s: rank %d (pid %d) exited while joining", c->name, j, (int)pid);
            s = DUET_ERR_PEER;
            goto err_unmap;
        }
    }
    *ctx_p = c;
    return DUET_OK;

err_unmap:
    pshm_unlink(c->name);   /* any rank: a failed join leaves no name behind */
    atomic_store(&c->hdr->abort, 1);
    munmap(c->base, c->size);
    c->base = NULL;
err_free:
    shm_destroy(c);
    return s;
}

const group_ops_t group_shm_ops = {
    .name           = "shm",
    .all_reduce     = shm_all_reduce,
    .all_gather     = shm_all_gather,
    .reduce_scatter = shm_reduce_scatter,
    .broadcast      = shm_broadcast,
    .barrier        = shm_barrier,
    .sync           = shm_sync_noop,
    .poison         = shm_poison,
    .ok             = shm_ok,
    .input_buffer   = shm_input_buffer,
    .set_timeout    = shm_set_timeout,
    .destroy        = shm_destroy,
};
