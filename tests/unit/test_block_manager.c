/* Block manager: allocation, contiguity, watermark, all-or-nothing,
 * prefix caching (sharing, LRU eviction, counters), and a random
 * alloc/share/free storm with the invariants checked as it goes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/block_manager.h"
#include "tests/tap.h"

static bm_t *mk(int32_t n_blocks, int32_t bs, int32_t wm, bool pc)
{
    bm_opts_t o = { .n_blocks = n_blocks, .block_size = bs, .watermark_blocks = wm,
                    .prefix_caching = pc };
    bm_t *bm = NULL;

    bm_create(&o, &bm);
    return bm;
}

static int check(bm_t *bm, bm_seq_t **seqs, int n)
{
    char err[256] = "";
    duet_status_t s = bm_check(bm, (const bm_seq_t *const *)seqs, n, err, sizeof(err));

    if (s != DUET_OK)
        diag("bm_check: %s", err);
    return s == DUET_OK;
}

static bool contiguous(const bm_seq_t *s)
{
    int32_t i;

    for (i = 1; i < s->n; i++)
        if (s->blocks[i] != s->blocks[i - 1] + 1)
            return false;
    return true;
}

static void test_basic(void)
{
    bm_opts_t bad = { .n_blocks = 0, .block_size = 16 };
    bm_t *bm = NULL;
    bm_seq_t a, b, c;
    bm_seq_t *all[3] = { &a, &b, &c };
    bm_stats_t st;

    is_int(bm_create(&bad, &bm), DUET_ERR_INVALID, "zero blocks rejected");
    bad.n_blocks = 8;
    bad.watermark_blocks = 8;
    is_int(bm_create(&bad, &bm), DUET_ERR_INVALID, "watermark >= pool rejected");
    ok(bm == NULL, "no output on failure");

    bm = mk(64, 16, 4, false);
    bm_seq_init(&a);
    bm_seq_init(&b);
    bm_seq_init(&c);
    is_int(bm_blocks_needed(bm, &a, 33), 3, "33 tokens need 3 blocks");
    is_int(bm_allocate(bm, &a, 33, true), DUET_OK, "allocate 3 blocks");
    is_int(bm_allocate(bm, &b, 16 * 10, true), DUET_OK, "allocate 10 blocks");
    ok(a.n == 3 && b.n == 10 && contiguous(&a) && contiguous(&b),
       "each sequence gets a contiguous run");
    is_int(bm_allocate(bm, &a, 16 * 5, true), DUET_OK, "grow a by 2 blocks");
    ok(a.n == 5 && a.blocks[3] != a.blocks[2] + 1 && a.blocks[3] + 1 == a.blocks[4],
       "growth that cannot extend takes a run of its own");
    is_int(bm_allocate(bm, &a, 16 * 5, true), DUET_OK, "no-op when covered");
    is_int(a.n, 5, "still 5 blocks");
    ok(check(bm, all, 3), "invariants hold");

    /* 64 - 15 = 49 free; watermark 4. */
    is_int(bm_allocate(bm, &c, 16 * 46, true), DUET_ERR_NO_RESOURCE,
           "new request may not dip into the watermark");
    is_int(c.n, 0, "all or nothing: nothing taken");
    is_int(bm_n_free(bm), 49, "free count unchanged");
    is_int(bm_allocate(bm, &c, 16 * 45, true), DUET_OK, "up to the watermark is fine");
    is_int(bm_allocate(bm, &a, 16 * 9, false), DUET_OK, "running request may use the watermark");
    is_int(bm_allocate(bm, &a, 16 * 10, false), DUET_ERR_NO_RESOURCE, "pool exhausted");
    bm_stats(bm, &st);
    ok(st.free == 0 && st.used == 64, "stats: free 0 used 64");
    ok(check(bm, all, 3), "invariants hold when full");
    bm_free_seq(bm, &a);
    bm_free_seq(bm, &b);
    bm_free_seq(bm, &c);
    ok(a.n == 0 && a.blocks == NULL, "freed table is empty");
    is_int(bm_n_free(bm), 64, "every block free again");
    ok(check(bm, NULL, 0), "invariants hold when empty");
    bm_destroy(bm);
}

static void fill(int32_t *t, int32_t n, int32_t base)
{
    int32_t i;

    for (i = 0; i < n; i++)
        t[i] = base + i;
}

static void test_prefix(void)
{
    bm_t *bm = mk(16, 4, 0, true);
    int32_t ta[40], tb[40], n_cached;
    bm_seq_t a, b, c, d;
    bm_seq_t *all[4] = { &a, &b, &c, &d };
    bm_stats_t st;

    fill(ta, 40, 100);
    memcpy(tb, ta, sizeof(tb));
    tb[13] = 7;                      /* b diverges inside block 3 */
    bm_seq_init(&a);
    bm_seq_init(&b);
    bm_seq_init(&c);
    bm_seq_init(&d);

    is_int(bm_match_prefix(bm, &a, ta, 18, &n_cached), DUET_OK, "match on an empty cache");
    is_int(n_cached, 0, "nothing cached yet");
    bm_allocate(bm, &a, 18, true);
    bm_commit(bm, &a, ta, 18);
    bm_stats(bm, &st);
    is_int(st.cached, 4, "4 full blocks of 18 tokens cached after commit");
    is_int(a.n_hashed, 4, "a has 4 hashed blocks");

    bm_match_prefix(bm, &b, tb, 20, &n_cached);
    is_int(n_cached, 12, "b shares the 3 blocks before its divergence");
    ok(b.blocks[0] == a.blocks[0] && b.blocks[2] == a.blocks[2], "same block ids");
    bm_note_query(bm, 20, n_cached);
    bm_allocate(bm, &b, 20, true);
    ok(b.blocks[3] != a.blocks[3], "diverging block is private");
    ok(check(bm, all, 2), "refcounts: shared blocks at 2");

    bm_match_prefix(bm, &c, ta, 16, &n_cached);
    is_int(n_cached, 12, "a 16-token prompt matching 4 cached blocks reuses 3 (last token recomputed)");
    bm_free_seq(bm, &c);

    bm_free_seq(bm, &a);
    bm_free_seq(bm, &b);
    bm_stats(bm, &st);
    ok(st.free == 16 && st.evictable == 4, "after free: all allocatable, 4 evictable (got %d)",
       st.evictable);
    bm_match_prefix(bm, &c, ta, 40, &n_cached);
    is_int(n_cached, 16, "unreferenced cached blocks still hit");
    bm_note_query(bm, 40, n_cached);
    bm_stats(bm, &st);
    ok(st.queries == 60 && st.hits == 28, "counters: queries %llu hits %llu",
       (unsigned long long)st.queries, (unsigned long long)st.hits);
    bm_free_seq(bm, &c);

    /* Take the whole pool: plain blocks go first, then cached ones in LRU
     * order (the tail of a chain before its head). */
    bm_allocate(bm, &d, 4 * 12, true);
    bm_stats(bm, &st);
    ok(st.evictions == 0 && st.cached == 4, "plain free blocks used before evicting");
    bm_allocate(bm, &d, 4 * 13, true);
    bm_match_prefix(bm, &c, ta, 40, &n_cached);
    is_int(n_cached, 12, "evicting one block removed the chain's tail, head still hits");
    bm_free_seq(bm, &c);
    bm_free_seq(bm, &d);
    ok(check(bm, NULL, 0), "invariants hold");
    is_int(bm_n_free(bm), 16, "every block free");
    bm_destroy(bm);

    bm = mk(16, 4, 0, false);
    bm_seq_init(&a);
    bm_allocate(bm, &a, 20, true);
    bm_commit(bm, &a, ta, 20);
    bm_free_seq(bm, &a);
    bm_match_prefix(bm, &a, ta, 20, &n_cached);
    is_int(n_cached, 0, "prefix caching off: no hits");
    bm_stats(bm, &st);
    is_int(st.cached, 0, "prefix caching off: nothing cached");
    bm_free_seq(bm, &a);
    bm_destroy(bm);
}

/* Random storm: sequences drawn from a few shared "documents" so prefixes
 * repeat; start (match + allocate), grow (allocate + commit), free. */
#define STORM_SEQS 48
#define STORM_DOCS 4
#define STORM_LEN  512

static uint64_t rng = 88172645463325252ull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void test_storm(bool pc)
{
    bm_t *bm = mk(200, 8, 8, pc);
    static int32_t docs[STORM_DOCS][STORM_LEN];
    bm_seq_t seqs[STORM_SEQS];
    bm_seq_t *live[STORM_SEQS];
    int32_t len[STORM_SEQS], doc[STORM_SEQS];
    bool on[STORM_SEQS] = { false };
    int step, i, bad = 0, n_no_res = 0, n_start = 0;
    bm_stats_t st;

    for (i = 0; i < STORM_DOCS; i++) {
        int32_t j;
        for (j = 0; j < STORM_LEN; j++)
            docs[i][j] = j < 64 ? j : (int32_t)rnd(1000);   /* shared 64-token head */
    }
    for (step = 0; step < 20000; step++) {
        int k = (int)rnd(STORM_SEQS), n_live = 0;
        uint32_t op = rnd(10);

        if (!on[k]) {
            int32_t n_cached, want = 1 + (int32_t)rnd(200);
            bm_seq_init(&seqs[k]);
            doc[k] = (int32_t)rnd(STORM_DOCS);
            bm_match_prefix(bm, &seqs[k], docs[doc[k]], want, &n_cached);
            if (n_cached >= want || n_cached % 8 != 0)
                bad++;
            if (bm_allocate(bm, &seqs[k], want, true) != DUET_OK) {
                bm_free_seq(bm, &seqs[k]);
                n_no_res++;
            } else {
                bm_note_query(bm, want, n_cached);
                bm_commit(bm, &seqs[k], docs[doc[k]], want);
                len[k] = want;
                on[k] = true;
                n_start++;
            }
        } else if (op < 6) {
            int32_t grow = len[k] + 1 + (int32_t)rnd(40);
            if (grow <= STORM_LEN && bm_allocate(bm, &seqs[k], grow, false) == DUET_OK) {
                len[k] = grow;
                bm_commit(bm, &seqs[k], docs[doc[k]], grow);
            }
        } else {
            bm_free_seq(bm, &seqs[k]);
            on[k] = false;
        }
        if (step % 50 == 0 || step > 19900) {
            for (i = 0; i < STORM_SEQS; i++)
                if (on[i])
                    live[n_live++] = &seqs[i];
            if (!check(bm, live, n_live)) {
                bad++;
                break;
            }
        }
    }
    for (i = 0; i < STORM_SEQS; i++)
        if (on[i])
            bm_free_seq(bm, &seqs[i]);
    bm_stats(bm, &st);
    is_int(bad, 0, "storm (prefix caching %s): invariants held over 20000 ops", pc ? "on" : "off");
    ok(check(bm, NULL, 0) && st.free == 200 && st.used == 0,
       "storm: every block free at the end (free %d used %d)", st.free, st.used);
    diag("storm: %d starts, %d refused, %llu/%llu tokens hit, %llu evictions", n_start, n_no_res,
         (unsigned long long)st.hits, (unsigned long long)st.queries,
         (unsigned long long)st.evictions);
    if (pc)
        ok(st.hits > 0 && st.evictions > 0, "storm shared and evicted cached blocks");
    ok(n_no_res > 0, "storm ran the pool out at times");
    bm_destroy(bm);
}

int main(void)
{
    test_basic();
    test_prefix();
    test_storm(false);
    test_storm(true);
    return tap_done();
}
