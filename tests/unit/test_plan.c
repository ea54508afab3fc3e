/* The P:D planner on synthetic profiles whose optimum is known. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/plan.h"
#include "tests/tap.h"

/* prefill: ms_per_tok ms per prompt token; decode step: a + b * batch ms */
static void synth(plan_profile_t *p, double ms_per_tok, double a, double b)
{
    memset(p, 0, sizeof(*p));
    p->n_tp = 1;
    p->tp[0].tp = 1;
    for (int t = 16; t <= 4096; t *= 4)
        plan_curve_add(&p->tp[0].prefill_s, t, t * ms_per_tok / 1e3);
    for (int bs = 1; bs <= 256; bs *= 2)
        plan_curve_add(&p->tp[0].step_s, bs, (a + b * bs) / 1e3);
    p->tp_efficiency = 0.8;
    p->max_batch = 256;
    p->chunk = 256;
    p->n_layers = 30;
}

/* The best disaggregated configuration of a search. */
static const plan_result_t *best_disagg(const plan_result_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!v[i].cfg.colocated)
            return &v[i];
    return NULL;
}

static void test_curve(void)
{
    plan_curve_t c = {0};

    plan_curve_add(&c, 4, 40);
    plan_curve_add(&c, 1, 10);
    plan_curve_add(&c, 2, 20);
    ok(c.x[0] == 1 && c.x[2] == 4, "points kept in x order");
    ok(fabs(plan_curve_eval(&c, 3) - 30) < 1e-9, "interpolates");
    ok(fabs(plan_curve_eval(&c, 8) - 80) < 1e-9, "extrapolates past the end");
    ok(plan_curve_eval(&c, -100) > 0, "never below zero");
}

static void test_tp(void)
{
    plan_profile_t p;

    synth(&p, 1.0, 10, 0.1);
    ok(fabs(plan_prefill_s(&p, 2, 1000) - 1.0 / 1.6) < 1e-9,
       "unmeasured TP 2: time / (2 * 0.8)");
    p.n_tp = 2;
    p.tp[1].tp = 2;
    plan_curve_add(&p.tp[1].prefill_s, 1000, 0.7);
    ok(fabs(plan_prefill_s(&p, 2, 1000) - 0.7) < 1e-9, "a measured TP point wins");
    p.n_kv_heads = 3;
    ok(plan_tp_ok(&p, 1) && plan_tp_ok(&p, 3) && plan_tp_ok(&p, 6) && !plan_tp_ok(&p, 2) &&
       !plan_tp_ok(&p, 4), "TP must split or replicate 3 KV heads");
}

static void test_queue(void)
{
    plan_profile_t p;
    plan_workload_t w = {.rate = 0.5, .in_lo = 1000, .in_hi = 1000, .out_lo = 2, .out_hi = 2,
                         .slo_ttft_s = 100, .slo_tpot_s = 100};
    plan_config_t c = {.colocated = false, .n_p = 1, .tp_p = 1, .n_d = 1, .tp_d = 1};
    plan_result_t r;

    synth(&p, 1.0, 10, 0.1);
    plan_eval(&p, &w, &c, &r);
    /* M/D/1: rho 0.5, W = lambda S^2 / (2 (1 - rho)) = 0.5 s; TTFT = 1.5 s */
    ok(r.stable && fabs(r.rho_prefill - 0.5) < 1e-9, "rho = lambda E[S]");
    ok(fabs(r.mean_ttft_s - 1.5) < 1e-6, "mean TTFT = P-K wait + service (%.4f)",
       r.mean_ttft_s);
    w.rate = 1.2;
    plan_eval(&p, &w, &c, &r);
    ok(!r.stable && r.goodput == 0, "rho > 1: overloaded, goodput 0");
}

static void test_prefill_bound(void)
{
    plan_profile_t p;
    /* 1 s prompts, 4 output tokens, 1.5 req/s: prefill needs >= 2 nodes */
    plan_workload_t w = {.rate = 1.5, .in_lo = 1000, .in_hi = 1000, .out_lo = 4, .out_hi = 4,
                         .slo_ttft_s = 5.0, .slo_tpot_s = 0.1};
    int tps[] = {1};
    plan_result_t *v = NULL;
    const plan_result_t *b;
    size_t n = 0;

    synth(&p, 1.0, 10, 0.1);
    is_int(plan_search(&p, &w, 4, tps, 1, 0.9, &v, &n), DUET_OK, "search");
    /* colocated 1-4x, and P + D <= 4: 3 + 2 + 1 splits */
    is_int(n, 10, "10 configurations of 4 workers at TP 1");
    b = best_disagg(v, n);
    ok(b != NULL && b->cfg.n_p == 3 && b->cfg.n_d == 1,
       "prefill-bound: best split is 3P:1D (got %dP:%dD)", b ? b->cfg.n_p : 0,
       b ? b->cfg.n_d : 0);
    for (size_t i = 0; i < n; i++)
        if (!v[i].cfg.colocated && v[i].cfg.n_p == 1)
            ok(!v[i].stable, "1 prefill node at rho 1.5 is overloaded");
    free(v);
}

static void test_decode_bound(void)
{
    plan_profile_t p;
    /* short prompts, 200 output tokens, a steep step curve: decode-bound */
    plan_workload_t w = {.rate = 4, .in_lo = 16, .in_hi = 16, .out_lo = 200, .out_hi = 200,
                         .slo_ttft_s = 1.0, .slo_tpot_s = 0.02};
    int tps[] = {1};
    plan_result_t *v = NULL;
    const plan_result_t *b;
    size_t n = 0;

    synth(&p, 1.0, 10, 1.0);
    ok(plan_search(&p, &w, 4, tps, 1, 0.9, &v, &n) == DUET_OK, "search");
    b = best_disagg(v, n);
    ok(b != NULL && b->cfg.n_p == 1 && b->cfg.n_d == 3,
       "decode-bound: best split is 1P:3D (got %dP:%dD)", b ? b->cfg.n_p : 0,
       b ? b->cfg.n_d : 0);
    ok(b != NULL && b->attain > 0.9, "and it meets the SLO (%.3f)", b ? b->attain : 0);
    free(v);
}

static void test_interference(void)
{
    plan_profile_t p;
    /* long prompts stall colocated decode steps: a tight TPOT SLO is met
     * only by separating prefill from decode */
    plan_workload_t w = {.rate = 0.8, .in_lo = 1000, .in_hi = 1000, .out_lo = 100,
                         .out_hi = 100, .slo_ttft_s = 5.0, .slo_tpot_s = 0.012};
    int tps[] = {1};
    plan_result_t *v = NULL;
    size_t n = 0;

    synth(&p, 1.0, 10, 0.1);
    ok(plan_search(&p, &w, 4, tps, 1, 0.9, &v, &n) == DUET_OK, "search");
    ok(!v[0].cfg.colocated, "interference: disaggregated is recommended (%s %dP:%dD)",
       v[0].cfg.colocated ? "colocated" : "disagg", v[0].cfg.n_p, v[0].cfg.n_d);
    for (size_t i = 0; i < n; i++)
        if (v[i].cfg.colocated && v[i].cfg.n_p == 4)
            ok(v[i].mean_tpot_s > w.slo_tpot_s,
               "colocated 4x: TPOT stretched by prefill (%.1f ms)", v[i].mean_tpot_s * 1e3);
    /* with a loose SLO and light load, colocated keeps up with fewer parts */
    free(v);
}

static void test_kv_tail(void)
{
    plan_profile_t p;
    plan_workload_t w = {.rate = 0.1, .in_lo = 1000, .in_hi = 1000, .out_lo = 11, .out_hi = 11,
                         .slo_ttft_s = 5, .slo_tpot_s = 1};
    plan_config_t c = {.colocated = false, .n_p = 1, .tp_p = 1, .n_d = 1, .tp_d = 1};
    plan_result_t fast, slow;

    synth(&p, 1.0, 10, 0.1);
    p.kv_bytes_per_token = 1e6;      /* 1 GB per request */
    p.kv_gbps = 100;                 /* 10 ms: hidden behind the 1 s prefill */
    plan_eval(&p, &w, &c, &fast);
    p.kv_gbps = 0.5;                 /* 2 s: 1 s is not hidden */
    plan_eval(&p, &w, &c, &slow);
    ok(fast.kv_tail_s < 0.001 && fabs(slow.kv_tail_s - 1.0) < 1e-6,
       "KV tail: per layer when hidden, transfer - prefill when not (%.4f, %.4f)",
       fast.kv_tail_s, slow.kv_tail_s);
    ok(slow.mean_tpot_s > fast.mean_tpot_s + 0.09, "the tail raises TPOT over 10 tokens");
}

int main(void)
{
    test_curve();
    test_tp();
    test_queue();
    test_prefill_bound();
    test_decode_bound();
    test_interference();
    test_kv_tail();
    return tap_done();
}
