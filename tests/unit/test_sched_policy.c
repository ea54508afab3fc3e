/* Scheduler policy, without a model: which requests run each step and how
 * many of their tokens (budget, decode first, chunked prefill, limits),
 * preemption order, prefix-cache admission, abort in every state, and the
 * pool whole afterwards. The test plays the engine's part after each plan
 * (mark the tokens computed, append a token id); it checks decisions and
 * block accounting only. Model outputs under this scheduler are tested with
 * the real forward pass in test_scheduler.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/block_manager.h"
#include "engine/scheduler.h"
#include "tests/tap.h"

typedef struct {
    bm_t    *bm;
    sched_t *s;
    sched_item_t items[64];
    int      n;
} fx_t;

static void fx_init(fx_t *f, int32_t n_blocks, int32_t bs, int32_t wm, bool pc,
                    int32_t max_running, int32_t budget, bool chunked)
{
    bm_opts_t bo = { .n_blocks = n_blocks, .block_size = bs, .watermark_blocks = wm,
                     .prefix_caching = pc };
    sched_opts_t so = { .max_running = max_running, .max_step_tokens = budget,
                        .chunked_prefill = chunked };

    memset(f, 0, sizeof(*f));
    bm_create(&bo, &f->bm);
    sched_create(&so, f->bm, &f->s);
}

static int fx_whole(fx_t *f)
{
    char err[256] = "";
    bm_stats_t st;

    if (sched_check(f->s, err, sizeof(err)) != DUET_OK) {
        diag("%s", err);
        return 0;
    }
    bm_stats(f->bm, &st);
    return 1;
}

static void fx_done(fx_t *f)
{
    bm_stats_t st;
    sched_req_t *r;

    while ((r = sched_next_req(f->s, NULL)) != NULL)
        sched_remove(f->s, r);
    bm_stats(f->bm, &st);
    ok(st.free == st.n_blocks && fx_whole(f), "every block free at the end (%d of %d)", st.free,
       st.n_blocks);
    sched_destroy(f->s);
    bm_destroy(f->bm);
}

static sched_req_t *add(fx_t *f, uint64_t id, int32_t n_prompt, int32_t base, int32_t max_tokens)
{
    int32_t *t = malloc(sizeof(int32_t) * (size_t)n_prompt), i;
    sched_req_t *r = NULL;

    for (i = 0; i < n_prompt; i++)
        t[i] = base + i;
    sched_req_new(f->s, id, t, n_prompt, max_tokens, &r);
    sched_enqueue(f->s, r);
    free(t);
    return r;
}

/* Plan, then complete the plan: computed, a token for each want_logits, and
 * finish requests that reached max_tokens. */
static void step(fx_t *f)
{
    int i;

    sched_schedule(f->s, f->items, &f->n);
    for (i = 0; i < f->n; i++) {
        sched_req_t *r = f->items[i].req;
        sched_advance(f->s, &f->items[i]);
        if (f->items[i].want_logits) {
            sched_append(f->s, r, 7);
            if (r->n_tokens - r->n_prompt >= r->max_tokens)
                sched_finish(f->s, r, REQ_FINISHED);
        }
    }
}

static int32_t planned(const fx_t *f, const sched_req_t *r)
{
    int i;

    for (i = 0; i < f->n; i++)
        if (f->items[i].req == r)
            return f->items[i].n_new;
    return 0;
}

static void test_budget_and_chunks(void)
{
    fx_t f;
    sched_req_t *a, *b, *c;

    fx_init(&f, 100, 16, 0, false, 8, 64, true);
    a = add(&f, 1, 100, 0, 4);
    b = add(&f, 2, 50, 1000, 4);
    c = add(&f, 3, 10, 2000, 4);
    step(&f);
    ok(f.n == 1 && planned(&f, a) == 64 && !f.items[0].want_logits,
       "step 1: the first prompt takes the whole budget as a chunk");
    ok(a->state == REQ_RUNNING && b->state == REQ_WAITING, "a running, b waiting");
    step(&f);
    ok(planned(&f, a) == 36 && f.items[0].want_logits && planned(&f, b) == 28,
       "step 2: a's last 36 tokens, then 28 of b");
    step(&f);
    ok(f.n == 3 && f.items[0].req == a && planned(&f, a) == 1 && planned(&f, b) == 22 &&
       planned(&f, c) == 10, "step 3: a's decode first, then b's rest, then c (%d items)", f.n);
    step(&f);
    ok(f.n == 3 && planned(&f, a) == 1 && planned(&f, b) == 1 && planned(&f, c) == 1,
       "step 4: three decodes");
    while (a->state == REQ_RUNNING || b->state == REQ_RUNNING || c->state == REQ_RUNNING)
        step(&f);
    ok(a->n_tokens == 104 && b->n_tokens == 54 && c->n_tokens == 14,
       "each produced max_tokens tokens");
    fx_done(&f);
}

static void test_limits(void)
{
    fx_t f;
    sched_req_t *r[6];
    int i;

    fx_init(&f, 100, 16, 0, false, 4, 1000, true);
    for (i = 0; i < 6; i++)
        r[i] = add(&f, (uint64_t)i + 1, 5, 100 * i, 3);
    step(&f);
    is_int(f.n, 4, "max_running 4: four of six admitted");
    ok(r[4]->state == REQ_WAITING && r[5]->state == REQ_WAITING, "the last two wait");
    step(&f);
    step(&f);
    step(&f);
    ok(r[4]->state == REQ_RUNNING, "a slot frees when one finishes");
    fx_done(&f);

    /* Chunked prefill off: a prompt over the remaining budget waits. */
    fx_init(&f, 100, 16, 0, false, 8, 64, false);
    r[0] = add(&f, 1, 40, 0, 5);
    r[1] = add(&f, 2, 40, 100, 5);
    step(&f);
    ok(f.n == 1 && planned(&f, r[0]) == 40, "no chunking: only the first prompt fits");
    step(&f);
    ok(planned(&f, r[0]) == 1 && planned(&f, r[1]) == 40, "next step: a decode and b whole");
    fx_done(&f);

    /* Watermark: admission keeps it free. */
    fx_init(&f, 10, 4, 3, false, 8, 1000, true);
    r[0] = add(&f, 1, 24, 0, 100);
    r[1] = add(&f, 2, 8, 100, 100);
    step(&f);
    ok(r[0]->state == REQ_RUNNING && r[1]->state == REQ_WAITING,
       "watermark: 6 + 2 blocks would leave 2 < 3 free, b waits");
    fx_done(&f);
}

static void test_preemption(void)
{
    fx_t f;
    sched_req_t *r[3];
    int i, steps = 0;
    bool order_ok = true;

    /* 12 blocks of 4 tokens. Three requests of 8 prompt tokens grow to 8 + 12. */
    fx_init(&f, 12, 4, 0, false, 8, 1000, true);
    for (i = 0; i < 3; i++)
        r[i] = add(&f, (uint64_t)i + 1, 8, 100 * i, 12);
    step(&f);
    is_int(f.n, 3, "all three admitted");
    while ((r[0]->state != REQ_FINISHED || r[1]->state != REQ_FINISHED ||
            r[2]->state != REQ_FINISHED) && steps < 200) {
        uint64_t before[3];
        for (i = 0; i < 3; i++)
            before[i] = (uint64_t)r[i]->n_preempted;
        step(&f);
        steps++;
        /* Never preempt an older request while a newer one runs. */
        for (i = 0; i < 3; i++) {
            if ((uint64_t)r[i]->n_preempted > before[i]) {
                int j;
                for (j = 0; j < 3; j++)
                    if (j != i && r[j]->state == REQ_RUNNING && r[j]->order > r[i]->order)
                        order_ok = false;
            }
        }
        if (!fx_whole(&f))
            break;
    }
    ok(steps < 200, "all finished (%d steps)", steps);
    ok(r[2]->n_preempted > 0, "the newest request was preempted (%d times)", r[2]->n_preempted);
    is_int(r[0]->n_preempted, 0, "the oldest was never preempted");
    ok(order_ok, "preemption always took the newest running request");
    ok(r[0]->n_tokens == 20 && r[1]->n_tokens == 20 && r[2]->n_tokens == 20,
       "every request completed its tokens after recompute");
    fx_done(&f);
}

static void test_prefix_admission(void)
{
    fx_t f;
    sched_req_t *a, *b;
    bm_stats_t st;

    fx_init(&f, 64, 4, 0, true, 8, 1000, true);
    a = add(&f, 1, 20, 0, 10);
    step(&f);
    b = add(&f, 2, 22, 0, 2);    /* same first 20 tokens */
    step(&f);
    ok(planned(&f, b) == 2 && b->n_cached == 20, "b computes 2 tokens, 20 from the cache (%d)",
       planned(&f, b));
    bm_stats(f.bm, &st);
    ok(st.hits == 20 && st.queries == 42, "counters: hits %llu of %llu",
       (unsigned long long)st.hits, (unsigned long long)st.queries);
    ok(a->seq.blocks[0] == b->seq.blocks[0], "blocks shared");
    fx_done(&f);
}

static void test_abort_everywhere(void)
{
    fx_t f;
    sched_req_t *w, *run, *pre, *res, *pf, *mid;
    int32_t toks[12] = { 0 };
    bm_stats_t st;

    fx_init(&f, 24, 4, 0, true, 8, 1000, true);
    run = add(&f, 1, 10, 0, 100);
    step(&f);
    mid = add(&f, 2, 30, 200, 100);
    step(&f);                           /* mid computed whole; now decoding */
    w = add(&f, 3, 6, 300, 100);
    /* Reserved (decode side). */
    sched_req_new(f.s, 4, toks, 12, 5, &res);
    is_int(sched_reserve(f.s, res), DUET_OK, "reserve 3 blocks");
    ok(res->state == REQ_RESERVED && res->seq.n == 3, "reserved holds its blocks");
    /* Prefilled (prefill-only side): finish with blocks held. */
    pf = add(&f, 5, 4, 500, 100);
    step(&f);
    sched_finish(f.s, pf, REQ_PREFILLED);
    ok(pf->state == REQ_PREFILLED && pf->seq.n == 1, "prefilled keeps its blocks (%d)", pf->seq.n);
    /* Grow until someone is preempted. */
    while (run->n_preempted + mid->n_preempted + w->n_preempted == 0 && run->n_tokens < 60)
        step(&f);
    pre = mid->n_preempted ? mid : w->n_preempted ? w : run;
    ok(pre->n_preempted > 0 && pre->seq.n == 0, "a preempted request holds no blocks");
    ok(fx_whole(&f), "invariants hold");
    sched_remove(f.s, res);
    sched_remove(f.s, pf);
    ok(fx_whole(&f), "abort reserved and prefilled: blocks back");
    if (pre != w)
        sched_remove(f.s, w);
    sched_remove(f.s, pre);
    ok(fx_whole(&f), "abort preempted / waiting");
    if (pre != run)
        sched_remove(f.s, run);
    if (pre != mid)
        sched_remove(f.s, mid);
    bm_stats(f.bm, &st);
    is_int(st.free, 24, "abort running: pool whole");
    fx_done(&f);
}

static uint64_t rs = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs % n);
}

static void test_storm(void)
{
    fx_t f;
    uint64_t next_id = 1;
    int stepno, bad = 0, i;
    bm_stats_t st;
    sched_stats_t ss;

    fx_init(&f, 48, 4, 2, true, 16, 96, true);
    for (stepno = 0; stepno < 10000; stepno++) {
        uint32_t op = rnd(10);
        if (op < 3) {
            int32_t n = 1 + (int32_t)rnd(40), base = (int32_t)rnd(3) * 1000;
            add(&f, next_id++, n, base, 1 + (int32_t)rnd(30));
        } else if (op < 5) {
            uint64_t id = 1 + rnd((uint32_t)next_id);
            sched_req_t *r = sched_find(f.s, id);
            if (r != NULL)
                sched_remove(f.s, r);
        }
        step(&f);
        /* Reap finished requests. */
        for (i = 0; i < 4; i++) {
            sched_req_t *r = NULL;
            while ((r = sched_next_req(f.s, r)) != NULL)
                if (r->state == REQ_FINISHED)
                    break;
            if (r == NULL)
                break;
            sched_remove(f.s, r);
        }
        if (stepno % 25 == 0 && !fx_whole(&f)) {
            bad++;
            break;
        }
    }
    sched_stats(f.s, &ss);
    bm_stats(f.bm, &st);
    is_int(bad, 0, "10000-step add/abort storm: invariants held");
    diag("storm: %llu preemptions, %llu/%llu prefix tokens hit, %d running %d waiting at the end",
         (unsigned long long)ss.preemptions, (unsigned long long)st.hits,
         (unsigned long long)st.queries, ss.running, ss.waiting);
    ok(ss.preemptions > 0 && st.hits > 0, "storm preempted and hit the prefix cache");
    fx_done(&f);
}

int main(void)
{
    test_budget_and_chunks();
    test_limits();
    test_preemption();
    test_prefix_admission();
    test_abort_everywhere();
    test_storm();
    return tap_done();
}
