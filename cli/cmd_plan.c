/* duet plan: recommend a prefill:decode split and the TP of each role for a
 * workload, from measured profiles (bench/plan.h; the model and the profile
 * format are in docs/planning.md). With --compare it puts the prediction
 * next to a bench/pd_sweep CSV. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench/plan.h"
#include "bench/serve_stats.h"
#include "cli/cli.h"
#include "common/flags.h"

#define PLAN_ERR(...) (fprintf(stderr, "duet plan: " __VA_ARGS__), fputc('\n', stderr))

/* Points of a curve: [{"tokens": N, "ms": X}] or duet bench engine's
 * {"pp": N, "pp_tps": X} for prefill; [{"batch": B, "step_ms": X}] or
 * bench engine --batch's {"rows": [...]} for decode. */
static int load_curve(json_t *arr, bool prefill, plan_curve_t *c, const char *what)
{
    json_t *e;
    size_t i;

    if (json_is_object(arr) && json_is_array(json_object_get(arr, "rows")))
        arr = json_object_get(arr, "rows");
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        PLAN_ERR("profile: '%s' must be a non-empty array of points", what);
        return -1;
    }
    json_array_foreach(arr, i, e) {
        double x = -1, y = -1;

        if (prefill) {
            json_t *t = json_object_get(e, "tokens"), *ms = json_object_get(e, "ms");
            json_t *pp = json_object_get(e, "pp"), *tps = json_object_get(e, "pp_tps");

            if (json_is_number(t) && json_is_number(ms)) {
                x = json_number_value(t);
                y = json_number_value(ms) / 1e3;
            } else if (json_is_number(pp) && json_is_number(tps) && json_number_value(tps) > 0) {
                x = json_number_value(pp);
                y = x / json_number_value(tps);
            }
        } else {
            json_t *b = json_object_get(e, "batch"), *ms = json_object_get(e, "step_ms");

            if (json_is_number(b) && json_is_number(ms)) {
                x = json_number_value(b);
                y = json_number_value(ms) / 1e3;
            }
        }
        if (!(x > 0) || !(y > 0)) {
            PLAN_ERR("profile: point %zu of '%s' needs positive %s", i, what,
                     prefill ? "\"tokens\" and \"ms\" (or \"pp\" and \"pp_tps\")"
                             : "\"batch\" and \"step_ms\"");
            return -1;
        }
        if (c->n == PLAN_MAX_POINTS) {
            PLAN_ERR("profile: '%s' has more than %d points", what, PLAN_MAX_POINTS);
            return -1;
        }
        plan_curve_add(c, x, y);
    }
    return 0;
}

static double num_or(json_t *o, const char *key, double dflt)
{
    json_t *v = json_object_get(o, key);

    return json_is_number(v) ? json_number_value(v) : dflt;
}

static int load_profile(const char *path, plan_profile_t *p)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je), *tps, *e;
    size_t i;
    int rc = -1;

    memset(p, 0, sizeof(*p));
    if (root == NULL) {
        PLAN_ERR("%s:%d: %s", path, je.line, je.text);
        return -1;
    }
    if (!json_is_object(root)) {
        PLAN_ERR("%s: expected a JSON object (docs/planning.md: profile format)", path);
        goto out;
    }
    p->n_tp = 1;
    p->tp[0].tp = 1;
    if (load_curve(json_object_get(root, "prefill"), true, &p->tp[0].prefill_s, "prefill") ||
        load_curve(json_object_get(root, "decode"), false, &p->tp[0].step_s, "decode"))
        goto out;
    tps = json_object_get(root, "tp");
    json_array_foreach(tps, i, e) {
        plan_tp_profile_t *t;
        json_t *v = json_object_get(e, "tp");

        if (!json_is_integer(v) || json_integer_value(v) < 2 || p->n_tp == PLAN_MAX_TP) {
            PLAN_ERR("profile: tp[%zu] needs \"tp\" >= 2 (at most %d entries)", i,
                     PLAN_MAX_TP - 1);
            goto out;
        }
        t = &p->tp[p->n_tp++];
        t->tp = (int)json_integer_value(v);
        if ((json_object_get(e, "prefill") &&
             load_curve(json_object_get(e, "prefill"), true, &t->prefill_s, "tp.prefill")) ||
            (json_object_get(e, "decode") &&
             load_curve(json_object_get(e, "decode"), false, &t->step_s, "tp.decode")))
            goto out;
    }
    p->tp_efficiency = num_or(root, "tp_efficiency", 0.8);
    p->kv_bytes_per_token = num_or(root, "kv_bytes_per_token", 0);
    p->kv_gbps = num_or(root, "kv_gbps", 0);
    p->n_layers = (int)num_or(root, "n_layers", 1);
    p->n_kv_heads = (int)num_or(root, "n_kv_heads", 0);
    p->max_batch = num_or(root, "max_batch", 256);
    p->chunk = num_or(root, "chunk", 256);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* "1,2,4" into tps. */
static int parse_tps(const char *s, int *tps, int *n)
{
    *n = 0;
    while (*s != '\0') {
        char *end;
        long v = strtol(s, &end, 10);

        if (end == s || v < 1 || v > 64 || *n == PLAN_MAX_TP)
            return -1;
        tps[(*n)++] = (int)v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s != '\0')
            return -1;
    }
    return *n > 0 ? 0 : -1;
}

static json_t *result_to_json(const plan_result_t *r)
{
    char name[64];
    json_t *j;

    plan_config_str(&r->cfg, name, sizeof(name));
    j = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:b, s:f, s:f, s:f, s:f, s:f, s:f}",
                  "config", name, "mode", r->cfg.colocated ? "colocated" : "disaggregated",
                  "n_prefill", r->cfg.n_p, "tp_prefill", r->cfg.tp_p,
                  "n_decode", r->cfg.colocated ? 0 : r->cfg.n_d,
                  "tp_decode", r->cfg.colocated ? r->cfg.tp_p : r->cfg.tp_d,
                  "workers", r->workers, "stable", r->stable,
                  "goodput", r->goodput, "attainment", r->attain,
                  "rho_prefill", r->rho_prefill, "decode_batch", r->batch,
                  "kv_tail_ms", r->kv_tail_s * 1e3, "attain_ttft", r->attain_ttft);
    json_object_set_new(j, "attain_tpot", json_real(r->attain_tpot));
    json_object_set_new(j, "max_rate", json_real(r->max_rate));
    json_object_set_new(j, "mean_ttft_ms", r->stable ? json_real(r->mean_ttft_s * 1e3)
                                                     : json_null());
    json_object_set_new(j, "p99_ttft_ms", r->stable ? json_real(r->p99_ttft_s * 1e3)
                                                    : json_null());
    json_object_set_new(j, "mean_tpot_ms", r->stable ? json_real(r->mean_tpot_s * 1e3)
                                                     : json_null());
    return j;
}

/* --- --compare sweep.csv ------------------------------------------------ */

typedef struct {
    char   *cols[40];
    int     n;
} csv_row_t;

/* Split one CSV line in place (no quoting: pd_sweep writes none). */
static void csv_split(char *line, csv_row_t *r)
{
    char *p = line;

    r->n = 0;
    line[strcspn(line, "\r\n")] = '\0';
    while (r->n < 40) {
        r->cols[r->n++] = p;
        p = strchr(p, ',');
        if (p == NULL)
            break;
        *p++ = '\0';
    }
}

static int csv_col(const csv_row_t *hdr, const char *name)
{
    for (int i = 0; i < hdr->n; i++)
        if (strcmp(hdr->cols[i], name) == 0)
            return i;
    return -1;
}

static double rel_err(double pred, double meas)
{
    if (!isfinite(pred))
        return INFINITY;
    return meas != 0 ? (pred - meas) / fabs(meas) : (pred == 0 ? 0 : INFINITY);
}

static int compare_sweep(const char *path, const plan_profile_t *p, const plan_workload_t *w,
                         bool json, json_t *out)
{
    static const char *const need[] = {"mode", "n_prefill", "tp_prefill", "n_decode",
                                       "tp_decode", "rate", "request_goodput", "p99_ttft_ms",
                                       "mean_tpot_ms", "request_throughput"};
    enum { C_MODE, C_NP, C_TPP, C_ND, C_TPD, C_RATE, C_GOOD, C_P99T, C_TPOT, C_TPUT, C_N };
    FILE *f = fopen(path, "r");
    char *line = NULL, *hline = NULL;
    size_t cap = 0, hcap = 0;
    csv_row_t hdr, row;
    int idx[C_N], rc = -1, nrows = 0;
    json_t *arr = json_array();
    double sum_abs = 0, best_meas = -1, best_pred = -1;
    char best_meas_name[64] = "", best_pred_name[64] = "";

    if (f == NULL) {
        PLAN_ERR("--compare %s: %s", path, strerror(errno));
        json_decref(arr);
        return -1;
    }
    if (getline(&hline, &hcap, f) < 0) {
        PLAN_ERR("--compare %s: empty file", path);
        goto out;
    }
    csv_split(hline, &hdr);
    for (int i = 0; i < C_N; i++) {
        idx[i] = csv_col(&hdr, need[i]);
        if (idx[i] < 0) {
            PLAN_ERR("--compare %s: no column '%s' (expected bench/pd_sweep's CSV)", path,
                     need[i]);
            goto out;
        }
    }
    if (!json)
        printf("\ncomparison with %s (prediction vs measurement):\n"
               "%-24s %6s %8s %8s %9s %9s %7s %10s %10s %9s %9s\n", path, "config", "rate",
               "att pred", "att meas", "good pred", "good meas", "err", "p99TTFT p",
               "p99TTFT m", "TPOT p", "TPOT m");
    while (getline(&line, &cap, f) >= 0) {
        plan_workload_t wr = *w;
        plan_config_t c = {0};
        plan_result_t r;
        char name[64];
        double meas, e, tput, att_meas;

        if (line[0] == '\n' || line[0] == '\0')
            continue;
        csv_split(line, &row);
        if (row.n < hdr.n) {
            PLAN_ERR("--compare %s: a row has %d columns, the header %d", path, row.n, hdr.n);
            goto out;
        }
        c.colocated = strcmp(row.cols[idx[C_MODE]], "colocated") == 0;
        c.n_p = atoi(row.cols[idx[C_NP]]);
        c.tp_p = atoi(row.cols[idx[C_TPP]]);
        c.n_d = atoi(row.cols[idx[C_ND]]);
        c.tp_d = atoi(row.cols[idx[C_TPD]]);
        wr.rate = atof(row.cols[idx[C_RATE]]);
        if (c.n_p < 1 || c.tp_p < 1 || (!c.colocated && (c.n_d < 1 || c.tp_d < 1)) ||
            !(wr.rate > 0)) {
            PLAN_ERR("--compare %s: a row has a bad configuration or rate", path);
            goto out;
        }
        plan_eval(p, &wr, &c, &r);
        plan_config_str(&c, name, sizeof(name));
        /* the sweep's goodput is good requests over its duration, which
         * depends on the sampled arrivals; compare its attainment times the
         * offered rate instead */
        tput = atof(row.cols[idx[C_TPUT]]);
        att_meas = tput > 0 ? atof(row.cols[idx[C_GOOD]]) / tput : 0;
        meas = att_meas * wr.rate;
        e = rel_err(r.goodput, meas);
        if (isfinite(e))
            sum_abs += fabs(e);
        nrows++;
        if (meas > best_meas) {
            best_meas = meas;
            snprintf(best_meas_name, sizeof(best_meas_name), "%s", name);
        }
        if (r.goodput > best_pred) {
            best_pred = r.goodput;
            snprintf(best_pred_name, sizeof(best_pred_name), "%s", name);
        }
        if (json) {
            json_t *j = result_to_json(&r);

            json_object_set_new(j, "rate", json_real(wr.rate));
            json_object_set_new(j, "measured_goodput", json_real(meas));
            json_object_set_new(j, "measured_attainment", json_real(att_meas));
            json_object_set_new(j, "measured_p99_ttft_ms", json_real(atof(row.cols[idx[C_P99T]])));
            json_object_set_new(j, "measured_mean_tpot_ms", json_real(atof(row.cols[idx[C_TPOT]])));
            json_object_set_new(j, "goodput_rel_error", isfinite(e) ? json_real(e) : json_null());
            json_array_append_new(arr, j);
        } else {
            printf("%-24s %6.2f %7.1f%% %7.1f%% %9.3f %9.3f %6.0f%% %10.1f %10.1f %9.1f %9.1f\n",
                   name, wr.rate, 100 * r.attain, 100 * att_meas, r.goodput, meas,
                   isfinite(e) ? 100 * e : INFINITY, r.p99_ttft_s * 1e3,
                   atof(row.cols[idx[C_P99T]]), r.mean_tpot_s * 1e3,
                   atof(row.cols[idx[C_TPOT]]));
        }
    }
    if (json) {
        json_object_set_new(out, "compare", arr);
        arr = NULL;
        json_object_set_new(out, "compare_mean_abs_goodput_error",
                            nrows ? json_real(sum_abs / nrows) : json_null());
        json_object_set_new(out, "compare_best_measured", json_string(best_meas_name));
        json_object_set_new(out, "compare_best_predicted", json_string(best_pred_name));
    } else if (nrows > 0) {
        printf("mean |goodput error| %.0f%% over %d rows; best measured: %s, best predicted "
               "among them: %s\n", 100 * sum_abs / nrows, nrows, best_meas_name, best_pred_name);
    }
    rc = 0;
out:
    json_decref(arr);
    free(line);
    free(hline);
    fclose(f);
    return rc;
}

static int plan_run(int argc, char **argv)
{
    const char *profile = NULL, *goodput = NULL, *tp_list = "1,2,4", *compare = NULL;
    int64_t budget = 2, in_len = 128, out_len = 64, top = 10;
    double rate = 1.0, ratio = 0.0, tp_eff = 0, kv_gbps = -1, kv_bpt = -1, max_batch = 0;
    double target = 0.9;
    bool json = false;
    const flag_t flags[] = {
        {"profile", 'p', FLAG_STRING, &profile, "measured profile JSON (bench/profile)",
         "FILE", 0, 0, 0, 0},
        {"rate", 'r', FLAG_DOUBLE, &rate, "requests per second (default 1)", "R", 0, 0, 1e-6, 1e9},
        {"input-len", 0, FLAG_INT, &in_len, "prompt tokens (default 128; the middle of the range)", "N",
         1, 1 << 20, 0, 0},
        {"output-len", 0, FLAG_INT, &out_len, "output tokens (default 64; the middle of the range)", "N",
         1, 1 << 20, 0, 0},
        {"range-ratio", 0, FLAG_DOUBLE, &ratio, "lengths uniform in [len*(1-R), len*(1+R)] (default 0)",
         "R", 0, 0, 0.0, 0.999},
        {"goodput", 0, FLAG_STRING, &goodput, "SLOs, e.g. \"ttft:500 tpot:50\" (ms)", "SLOS",
         0, 0, 0, 0},
        {"budget", 'b', FLAG_INT, &budget, "workers (cores or processes) to divide (default 2)", "N",
         1, 64, 0, 0},
        {"tp", 0, FLAG_STRING, &tp_list, "TP sizes to consider (default 1,2,4)", "LIST", 0, 0, 0, 0},
        {"tp-efficiency", 0, FLAG_DOUBLE, &tp_eff, "speed-up per rank for TP sizes the "
         "profile lacks (default: the profile's, else 0.8)", "E", 0, 0, 0.01, 1.0},
        {"kv-gbps", 0, FLAG_DOUBLE, &kv_gbps, "KV transfer GB/s (default: the profile's)",
         "X", 0, 0, 0.0, 1e6},
        {"kv-bytes-per-token", 0, FLAG_DOUBLE, &kv_bpt, "KV bytes per prompt token "
         "(default: the profile's)", "N", 0, 0, 0.0, 1e9},
        {"max-batch", 0, FLAG_DOUBLE, &max_batch, "decode batch cap (default: the "
         "profile's, else 256)", "N", 0, 0, 1.0, 1e6},
        {"attainment", 0, FLAG_DOUBLE, &target, "SLO attainment that defines a "
         "configuration's max rate (default 0.9)", "F", 0, 0, 0.01, 0.9999},
        {"top", 0, FLAG_INT, &top, "configurations to list (default 10)", "N", 1, 10000, 0, 0},
        {"compare", 0, FLAG_STRING, &compare, "bench/pd_sweep CSV to compare with", "FILE",
         0, 0, 0, 0},
        {"json", 0, FLAG_BOOL, &json, "print one JSON object", NULL, 0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet plan", NULL,
                             "Recommend a prefill:decode split and TP sizes for a workload, "
                             "from measured profiles."};
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
    plan_profile_t prof;
    plan_workload_t w = {0};
    serve_slo_t slo = {0};
    plan_result_t *res = NULL;
    size_t n = 0;
    int tps[PLAN_MAX_TP], n_tps, rc = 1;
    char err[256], name[64];
    json_t *out = NULL;

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (profile == NULL) {
        PLAN_ERR("--profile FILE is required (make one with bench/profile; see --help)");
        return 2;
    }
    if (parse_tps(tp_list, tps, &n_tps) != 0) {
        PLAN_ERR("--tp '%s': expected sizes in [1, 64], e.g. 1,2,4", tp_list);
        return 2;
    }
    if (goodput == NULL) {
        PLAN_ERR("--goodput \"ttft:MS tpot:MS\" is required: the plan maximises requests "
                 "per second that meet it");
        return 2;
    }
    if (serve_slo_parse(goodput, &slo, err, sizeof(err)) != DUET_OK) {
        PLAN_ERR("%s", err);
        return 2;
    }
    if (slo.e2el_ms > 0) {
        PLAN_ERR("--goodput: the planner models ttft and tpot only");
        return 2;
    }
    if (load_profile(profile, &prof) != 0)
        return 1;
    if (tp_eff > 0)
        prof.tp_efficiency = tp_eff;
    if (kv_gbps >= 0)
        prof.kv_gbps = kv_gbps;
    if (kv_bpt >= 0)
        prof.kv_bytes_per_token = kv_bpt;
    if (max_batch > 0)
        prof.max_batch = max_batch;
    w.rate = rate;
    w.in_lo = (int)fmax(1, floor((double)in_len * (1 - ratio)));
    w.in_hi = (int)ceil((double)in_len * (1 + ratio));
    w.out_lo = (int)fmax(1, floor((double)out_len * (1 - ratio)));
    w.out_hi = (int)ceil((double)out_len * (1 + ratio));
    w.slo_ttft_s = slo.ttft_ms / 1e3;
    w.slo_tpot_s = slo.tpot_ms / 1e3;
    if (plan_search(&prof, &w, (int)budget, tps, n_tps, target, &res, &n) != DUET_OK) {
        PLAN_ERR("out of memory");
        return 1;
    }
    if (n == 0) {
        PLAN_ERR("no configuration fits %lld workers with TP sizes %s%s", (long long)budget,
                 tp_list, prof.n_kv_heads > 0 ? " (TP must split or replicate the KV heads)"
                                              : "");
        goto out;
    }
    if (json) {
        json_t *list = json_array();

        out = json_object();
        json_object_set_new(out, "workload",
                            json_pack("{s:f, s:[i,i], s:[i,i], s:f, s:f}", "rate", rate,
                                      "input_len", w.in_lo, w.in_hi, "output_len", w.out_lo,
                                      w.out_hi, "slo_ttft_ms", slo.ttft_ms,
                                      "slo_tpot_ms", slo.tpot_ms));
        json_object_set_new(out, "budget", json_integer(budget));
        json_object_set_new(out, "recommended", result_to_json(&res[0]));
        for (size_t i = 0; i < n && (int64_t)i < top; i++)
            json_array_append_new(list, result_to_json(&res[i]));
        json_object_set_new(out, "configs", list);
    } else {
        printf("workload: %.3g req/s, input %d-%d, output %d-%d tokens; SLO ttft %g ms, "
               "tpot %g ms; budget %lld workers\n", rate, w.in_lo, w.in_hi, w.out_lo, w.out_hi,
               slo.ttft_ms, slo.tpot_ms, (long long)budget);
        printf("%-24s %4s %8s %7s %8s %6s %6s %9s %9s %8s\n", "config", "wrk", "goodput",
               "attain", "max rate", "rho_p", "batch", "TTFT ms", "p99 ms", "TPOT ms");
        for (size_t i = 0; i < n && (int64_t)i < top; i++) {
            const plan_result_t *r = &res[i];

            plan_config_str(&r->cfg, name, sizeof(name));
            if (r->stable)
                printf("%-24s %4d %8.3f %6.1f%% %8.3f %6.2f %6.1f %9.1f %9.1f %8.2f\n", name,
                       r->workers, r->goodput, 100 * r->attain, r->max_rate, r->rho_prefill,
                       r->batch, r->mean_ttft_s * 1e3, r->p99_ttft_s * 1e3,
                       r->mean_tpot_s * 1e3);
            else
                printf("%-24s %4d %8.3f %7s %8.3f %6.2f %6s  (overloaded: a queue grows "
                       "without bound)\n", name, r->workers, 0.0, "-", r->max_rate,
                       r->rho_prefill, "-");
        }
        plan_config_str(&res[0].cfg, name, sizeof(name));
        printf("recommended: %s, predicted goodput %.3f req/s (%.1f%% of requests within "
               "the SLO); it keeps %.0f%% up to %.3f req/s\n", name, res[0].goodput,
               100 * res[0].attain, 100 * target, res[0].max_rate);
    }
    if (compare != NULL && compare_sweep(compare, &prof, &w, json, out) != 0)
        goto out;
    if (json) {
        char *text = json_dumps(out, JSON_INDENT(1) | JSON_REAL_PRECISION(8));

        if (text == NULL)
            goto out;
        printf("%s\n", text);
        free(text);
    }
    rc = 0;
out:
    json_decref(out);
    free(res);
    return rc;
}

const cli_cmd_t cli_cmd_plan = {"plan", "recommend a prefill:decode ratio from profiles",
                                plan_run};
