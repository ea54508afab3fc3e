/* The prefill:decode planner behind `duet plan` (docs/planning.md has the
 * model). Pure functions of measured profiles and a workload: unit-tested in
 * tests/unit/test_plan.c on synthetic profiles whose optimum is known.
 *
 * Units: a "worker" is one engine rank (one process with its share of the
 * cores, or one GPU). A node of tensor-parallel size t uses t workers. The
 * profiles are measured on one worker; TP points may be measured too, else
 * time(t) = time(1) / (t * tp_efficiency). */
#ifndef DUET_BENCH_PLAN_H
#define DUET_BENCH_PLAN_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"

#define PLAN_MAX_POINTS 64
#define PLAN_MAX_TP     8

/* A piecewise-linear curve y(x) through measured points (x ascending);
 * linear extrapolation beyond the ends, never below 1% of the first y. */
typedef struct {
    double x[PLAN_MAX_POINTS], y[PLAN_MAX_POINTS];
    int    n;
} plan_curve_t;

typedef struct {
    int          tp;
    plan_curve_t prefill_s;     /* seconds to prefill one prompt of x tokens */
    plan_curve_t step_s;        /* seconds of one decode step at batch x */
} plan_tp_profile_t;

typedef struct {
    plan_tp_profile_t tp[PLAN_MAX_TP];  /* tp[0] is TP 1 (required) */
    int    n_tp;
    double tp_efficiency;       /* for TP sizes not measured (default 0.8) */
    double kv_bytes_per_token;  /* KV bytes a request moves per prompt token */
    double kv_gbps;             /* measured transfer rate (duet bench kv); 0: free */
    int    n_layers;            /* the transfer overlaps prefill layer by layer */
    int    n_kv_heads;          /* TP sizes must split or replicate them (0: any) */
    double max_batch;           /* decode batch cap (KV blocks, max_num_seqs) */
    double chunk;               /* colocated: prefill tokens per step (default 256) */
} plan_profile_t;

typedef struct {
    double rate;                /* requests per second */
    int    in_lo, in_hi;        /* prompt tokens, uniform */
    int    out_lo, out_hi;      /* output tokens, uniform */
    double slo_ttft_s, slo_tpot_s;  /* 0: not part of the SLO */
} plan_workload_t;

typedef struct {
    bool colocated;
    int  n_p, tp_p;             /* colocated: n_p nodes of TP tp_p */
    int  n_d, tp_d;
} plan_config_t;

typedef struct {
    plan_config_t cfg;
    int    workers;
    bool   stable;              /* every queue has utilisation < 1 */
    double rho_prefill;         /* prefill utilisation lambda_p E[S] */
    double rho_decode;          /* mean decode batch / batch cap */
    double batch;               /* mean decode batch per decode node */
    double mean_ttft_s, p99_ttft_s;
    double mean_tpot_s;
    double kv_tail_s;           /* mean transfer time not hidden by prefill */
    double attain_ttft, attain_tpot, attain;    /* fractions meeting the SLOs */
    double goodput;             /* rate * attain (0 when unstable) */
    double max_rate;            /* highest rate with attain >= the target (plan_search) */
} plan_result_t;

void plan_curve_add(plan_curve_t *c, double x, double y);    /* keeps x ascending */
double plan_curve_eval(const plan_curve_t *c, double x);

/* Prefill seconds of one prompt / decode step seconds, at TP tp. */
double plan_prefill_s(const plan_profile_t *p, int tp, double tokens);
double plan_step_s(const plan_profile_t *p, int tp, double batch);

/* True when TP size tp can serve the model (splits or replicates KV heads). */
bool plan_tp_ok(const plan_profile_t *p, int tp);

/* Predict one configuration under workload w. */
void plan_eval(const plan_profile_t *p, const plan_workload_t *w, const plan_config_t *c,
               plan_result_t *out);

/* The highest request rate (up to 1e6) at which c keeps attain >= target,
 * by bisection over w's lengths and SLOs; 0 when even a trickle misses. */
double plan_max_rate(const plan_profile_t *p, const plan_workload_t *w, const plan_config_t *c,
                     double target);

/* Every configuration within budget workers: colocated (n nodes of TP t)
 * and disaggregated (n_p x TP tp_p + n_d x TP tp_d), TP sizes from tps[].
 * Results are sorted best first: goodput (within 1%), then the highest
 * rate that keeps attainment >= target (headroom), then fewer workers. *out_p is malloc'd (caller frees); *n_p its length. */
duet_status_t plan_search(const plan_profile_t *p, const plan_workload_t *w, int budget,
                          const int *tps, int n_tps, double target,
                          plan_result_t **out_p, size_t *n_p);

/* "colocated 2x tp1" / "1P:2D tp1/tp1" into buf. */
void plan_config_str(const plan_config_t *c, char *buf, size_t len);

#endif
