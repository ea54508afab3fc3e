/* The prefill:decode planner (plan.h; the model is in docs/planning.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/plan.h"

#define PLAN_GRID 24        /* points of each length distribution */

void plan_curve_add(plan_curve_t *c, double x, double y)
{
    int i;

    if (c->n == PLAN_MAX_POINTS)
        return;
    for (i = c->n; i > 0 && c->x[i - 1] > x; i--) {
        c->x[i] = c->x[i - 1];
        c->y[i] = c->y[i - 1];
    }
    c->x[i] = x;
    c->y[i] = y;
    c->n++;
}

double plan_curve_eval(const plan_curve_t *c, double x)
{
    double y;
    int i;

    if (c->n == 0)
        return 0.0;
    if (c->n == 1)      /* one point: proportional */
        return c->x[0] > 0 ? c->y[0] * x / c->x[0] : c->y[0];
    for (i = 1; i < c->n - 1 && c->x[i] < x; i++)
        ;
    /* segment [i-1, i]; extrapolates past either end */
    if (c->x[i] == c->x[i - 1])
        y = c->y[i];
    else
        y = c->y[i - 1] + (c->y[i] - c->y[i - 1]) * (x - c->x[i - 1]) / (c->x[i] - c->x[i - 1]);
    if (y < 0.01 * c->y[0])
        y = 0.01 * c->y[0];
    return y;
}

static const plan_tp_profile_t *tp_find(const plan_profile_t *p, int tp)
{
    for (int i = 0; i < p->n_tp; i++)
        if (p->tp[i].tp == tp)
            return &p->tp[i];
    return NULL;
}

static double tp_scale(const plan_profile_t *p, int tp)
{
    double eff = p->tp_efficiency > 0 ? p->tp_efficiency : 0.8;

    return tp <= 1 ? 1.0 : 1.0 / ((double)tp * eff);
}

double plan_prefill_s(const plan_profile_t *p, int tp, double tokens)
{
    const plan_tp_profile_t *t = tp_find(p, tp);

    if (t != NULL && t->prefill_s.n > 0)
        return plan_curve_eval(&t->prefill_s, tokens);
    return plan_curve_eval(&p->tp[0].prefill_s, tokens) * tp_scale(p, tp);
}

double plan_step_s(const plan_profile_t *p, int tp, double batch)
{
    const plan_tp_profile_t *t = tp_find(p, tp);

    if (t != NULL && t->step_s.n > 0)
        return plan_curve_eval(&t->step_s, batch);
    return plan_curve_eval(&p->tp[0].step_s, batch) * tp_scale(p, tp);
}

bool plan_tp_ok(const plan_profile_t *p, int tp)
{
    if (tp < 1)
        return false;
    if (p->n_kv_heads <= 0)
        return true;
    return p->n_kv_heads % tp == 0 || tp % p->n_kv_heads == 0;
}

/* Grid of a uniform integer distribution [lo, hi]: values and weights. */
static int grid(int lo, int hi, double *v, double *wt)
{
    int n = hi - lo + 1 < PLAN_GRID ? hi - lo + 1 : PLAN_GRID;

    for (int i = 0; i < n; i++) {
        v[i] = n == 1 ? lo : lo + (hi - lo) * ((double)i + 0.5) / n;
        wt[i] = 1.0 / n;
    }
    return n;
}

static double norm_cdf(double z)
{
    return 0.5 * erfc(-z / sqrt(2.0));
}

/* M/G/1 waiting-time tail: P(W > t) ~ rho * exp(-rho t / E[W]). */
static double wait_tail(double rho, double ew, double t)
{
    if (t < 0)
        return 1.0;
    if (ew <= 0)
        return 0.0;
    return rho * exp(-rho * t / ew);
}

/* Solve B = k * step(tp, B) / (1 - stall) for the mean decode batch;
 * returns false when there is no solution below the batch cap. */
static bool decode_batch(const plan_profile_t *p, int tp, double k, double stall,
                         double *b_p)
{
    double cap = p->max_batch > 0 ? p->max_batch : 256, lo = 0, hi = cap;

    if (k * plan_step_s(p, tp, cap) / (1 - stall) > cap)
        return false;
    for (int it = 0; it < 100; it++) {
        double mid = 0.5 * (lo + hi);

        if (k * plan_step_s(p, tp, mid) / (1 - stall) > mid)
            lo = mid;
        else
            hi = mid;
    }
    *b_p = hi;
    return true;
}

void plan_eval(const plan_profile_t *p, const plan_workload_t *w, const plan_config_t *c,
               plan_result_t *out)
{
    double lv[PLAN_GRID], lw[PLAN_GRID], ov[PLAN_GRID], ow[PLAN_GRID];
    double s[PLAN_GRID], tail[PLAN_GRID];
    int nl = grid(w->in_lo, w->in_hi, lv, lw), no = grid(w->out_lo, w->out_hi, ov, ow);
    double es = 0, es2 = 0, eout = 0, lam_p, lam_d, rho, ew, step, slope, b = 0, stall = 0;
    double att_t = 0, att_p = 0, lo, hi;
    plan_result_t r;
    int tp_d;

    memset(&r, 0, sizeof(r));
    r.cfg = *c;
    r.workers = c->colocated ? c->n_p * c->tp_p : c->n_p * c->tp_p + c->n_d * c->tp_d;
    tp_d = c->colocated ? c->tp_p : c->tp_d;
    lam_p = w->rate / c->n_p;
    lam_d = c->colocated ? lam_p : w->rate / c->n_d;
    for (int i = 0; i < no; i++)
        eout += ow[i] * ov[i];
    for (int i = 0; i < nl; i++) {
        s[i] = plan_prefill_s(p, c->tp_p, lv[i]);
        es += lw[i] * s[i];
        es2 += lw[i] * s[i] * s[i];
    }
    r.stable = true;
    /* decode: the mean batch b from Little's law, B = lambda (out-1) TPOT;
     * colocated, prefill takes rho_p of the engine's time and stretches the
     * steps by 1 / (1 - rho_p) */
    r.rho_prefill = lam_p * es;
    stall = c->colocated ? r.rho_prefill : 0;
    if (r.rho_prefill >= 1 ||
        !decode_batch(p, tp_d, lam_d * (eout - 1 > 0 ? eout - 1 : 0), stall, &b)) {
        r.stable = false;
    }
    r.batch = b;
    r.rho_decode = b / (p->max_batch > 0 ? p->max_batch : 256);
    step = plan_step_s(p, tp_d, b);
    slope = plan_step_s(p, tp_d, b + 1) - step;
    /* prefill queue, M/G/1. Colocated, a prompt's chunks ride on decode
     * steps: its service is its prefill plus one step per chunk. */
    es = es2 = 0;
    for (int i = 0; i < nl; i++) {
        if (c->colocated && b > 0.01) {
            double chunk = p->chunk > 0 ? p->chunk : 256;

            s[i] += ceil(lv[i] / chunk) * step;
        }
        es += lw[i] * s[i];
        es2 += lw[i] * s[i] * s[i];
    }
    rho = lam_p * es;
    if (rho >= 1)
        r.stable = false;
    if (!r.stable) {
        r.mean_ttft_s = r.p99_ttft_s = r.mean_tpot_s = INFINITY;
        *out = r;
        return;
    }
    ew = lam_p * es2 / (2 * (1 - rho));
    r.mean_ttft_s = ew + es;
    /* KV transfer: the part not hidden behind the prefill's own layers */
    for (int i = 0; i < nl; i++) {
        double kv = 0;

        if (!c->colocated && p->kv_gbps > 0 && p->kv_bytes_per_token > 0) {
            double t = lv[i] * p->kv_bytes_per_token / (p->kv_gbps * 1e9);
            double per_layer = t / (p->n_layers > 0 ? p->n_layers : 1);

            kv = fmax(per_layer, t - s[i]);
        }
        tail[i] = kv;
        r.kv_tail_s += lw[i] * kv;
    }
    /* TPOT: the step at the mean batch (colocated: stretched by prefill),
     * plus the transfer tail and half a step of admission wait spread over
     * the output; per-request spread from the batch's fluctuation */
    r.mean_tpot_s = 0;
    for (int i = 0; i < nl; i++) {
        double ttft_ok = 1.0;

        if (w->slo_ttft_s > 0)
            ttft_ok = w->slo_ttft_s < s[i] ? 0 : 1.0 - wait_tail(rho, ew, w->slo_ttft_s - s[i]);
        att_t += lw[i] * ttft_ok;
        for (int j = 0; j < no; j++) {
            double n1 = ov[j] - 1, base = step / (1 - stall), tpot, sd, ok = 1.0;

            if (n1 < 1) {
                att_p += lw[i] * ow[j];     /* TPOT counts as 0 (vLLM) */
                continue;
            }
            tpot = base + (tail[i] + 0.5 * base) / n1;
            sd = fabs(slope) * sqrt(b > 1 ? b : 1) / (1 - stall);
            r.mean_tpot_s += lw[i] * ow[j] * tpot;
            if (w->slo_tpot_s > 0)
                ok = sd > 0 ? norm_cdf((w->slo_tpot_s - tpot) / sd) :
                     (tpot <= w->slo_tpot_s ? 1.0 : 0.0);
            att_p += lw[i] * ow[j] * ok;
        }
    }
    /* p99 TTFT: sum_i w_i P(W > t - s_i) = 0.01, by bisection */
    lo = 0;
    hi = es * 10 + ew * 50 + 10;
    for (int it = 0; it < 100; it++) {
        double mid = 0.5 * (lo + hi), tailp = 0;

        for (int i = 0; i < nl; i++)
            tailp += lw[i] * wait_tail(rho, ew, mid - s[i]);
        if (tailp > 0.01)
            lo = mid;
        else
            hi = mid;
    }
    r.p99_ttft_s = hi;
    r.attain_ttft = att_t;
    r.attain_tpot = att_p;
    r.attain = att_t * att_p;
    r.goodput = w->rate * r.attain;
    *out = r;
}

void plan_config_str(const plan_config_t *c, char *buf, size_t len)
{
    if (c->colocated)
        snprintf(buf, len, "colocated %dx tp%d", c->n_p, c->tp_p);
    else
        snprintf(buf, len, "%dP:%dD tp%d/tp%d", c->n_p, c->n_d, c->tp_p, c->tp_d);
}

double plan_max_rate(const plan_profile_t *p, const plan_workload_t *w, const plan_config_t *c,
                     double target)
{
    plan_workload_t x = *w;
    plan_result_t r;
    double lo = 0, hi = 1e-3;

    /* grow until it fails, then bisect (attainment falls with the rate) */
    for (;;) {
        x.rate = hi;
        plan_eval(p, &x, c, &r);
        if (!r.stable || r.attain < target)
            break;
        lo = hi;
        hi *= 2;
        if (hi > 1e6)
            return lo;
    }
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi);

        x.rate = mid;
        plan_eval(p, &x, c, &r);
        if (r.stable && r.attain >= target)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static int cmp_result(const void *a, const void *b)
{
    const plan_result_t *x = a, *y = b;
    double g = fmax(x->goodput, y->goodput);

    if (fabs(x->goodput - y->goodput) > 0.01 * g)
        return x->goodput > y->goodput ? -1 : 1;
    if (fabs(x->max_rate - y->max_rate) > 1e-6 * fmax(x->max_rate, y->max_rate))
        return x->max_rate > y->max_rate ? -1 : 1;
    if (x->workers != y->workers)
        return x->workers < y->workers ? -1 : 1;
    return 0;
}

duet_status_t plan_search(const plan_profile_t *p, const plan_workload_t *w, int budget,
                          const int *tps, int n_tps, double target,
                          plan_result_t **out_p, size_t *n_p)
{
    size_t n = 0, cap = 64;
    plan_result_t *v = malloc(cap * sizeof(*v));

    if (v == NULL)
        return DUET_ERR_NOMEM;
#define PLAN_PUSH(cfg_)                                                     \
    do {                                                                    \
        if (n == cap) {                                                     \
            plan_result_t *nv_ = realloc(v, 2 * cap * sizeof(*v));          \
            if (nv_ == NULL) {                                              \
                free(v);                                                    \
                return DUET_ERR_NOMEM;                                      \
            }                                                               \
            v = nv_;                                                        \
            cap *= 2;                                                       \
        }                                                                   \
        plan_eval(p, w, &(cfg_), &v[n]);                                    \
        v[n].max_rate = plan_max_rate(p, w, &(cfg_), target);               \
        n++;                                                                \
    } while (0)
    for (int a = 0; a < n_tps; a++) {
        int tp = tps[a];

        if (!plan_tp_ok(p, tp))
            continue;
        for (int k = 1; k * tp <= budget; k++) {
            plan_config_t c = {.colocated = true, .n_p = k, .tp_p = tp};

            PLAN_PUSH(c);
        }
    }
    for (int a = 0; a < n_tps; a++) {
        for (int d = 0; d < n_tps; d++) {
            int tp_p = tps[a], tp_d = tps[d];

            if (!plan_tp_ok(p, tp_p) || !plan_tp_ok(p, tp_d))
                continue;
            for (int np = 1; np * tp_p + tp_d <= budget; np++)
                for (int nd = 1; np * tp_p + nd * tp_d <= budget; nd++) {
                    plan_config_t c = {.colocated = false, .n_p = np, .tp_p = tp_p,
                                       .n_d = nd, .tp_d = tp_d};

                    PLAN_PUSH(c);
                }
        }
    }
#undef PLAN_PUSH
    qsort(v, n, sizeof(*v), cmp_result);
    *out_p = v;
    *n_p = n;
    return DUET_OK;
}
