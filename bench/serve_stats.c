/* Metrics of the serving benchmark (serve_stats.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/serve_stats.h"

const char *serve_err_name(serve_err_t e)
{
    static const char *const names[SERVE_ERR_COUNT] = {
        "ok", "connect", "http", "malformed_sse", "incomplete", "timeout", "server_error",
    };

    return (unsigned)e < SERVE_ERR_COUNT ? names[e] : "unknown";
}

double serve_percentile(const double *sorted, size_t n, double q)
{
    double idx, frac;
    size_t lo;

    if (n == 0)
        return 0.0;
    idx = q / 100.0 * (double)(n - 1);
    lo = (size_t)floor(idx);
    if (lo >= n - 1)
        return sorted[n - 1];
    frac = idx - (double)lo;
    return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * frac;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

void serve_dist(double *v, size_t n, serve_dist_t *d)
{
    double m = 0.0, s = 0.0;

    memset(d, 0, sizeof(*d));
    if (n == 0)
        return;
    qsort(v, n, sizeof(double), cmp_double);
    for (size_t i = 0; i < n; i++)
        m += v[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++)
        s += (v[i] - m) * (v[i] - m);
    d->n = n;
    d->mean = m;
    d->std = sqrt(s / (double)n);      /* numpy's std (ddof 0), as vLLM */
    d->median = serve_percentile(v, n, 50.0);
    d->p90 = serve_percentile(v, n, 90.0);
    d->p99 = serve_percentile(v, n, 99.0);
}

bool serve_slo_any(const serve_slo_t *slo)
{
    return slo != NULL && (slo->ttft_ms > 0 || slo->tpot_ms > 0 || slo->e2el_ms > 0);
}

duet_status_t serve_slo_parse(const char *spec, serve_slo_t *slo, char *err, size_t errlen)
{
    serve_slo_t out = *slo;
    const char *p = spec;
    int n = 0;

    while (*p != '\0') {
        const char *name = p, *colon;
        char *end;
        double v;
        size_t nlen;

        if (*p == ' ' || *p == ',') {
            p++;
            continue;
        }
        colon = strchr(p, ':');
        if (colon == NULL) {
            snprintf(err, errlen, "--goodput: expected NAME:MS (ttft, tpot, e2el), got '%s'", p);
            return DUET_ERR_INVALID;
        }
        nlen = (size_t)(colon - name);
        v = strtod(colon + 1, &end);
        if (end == colon + 1 || !(v > 0) || !isfinite(v) ||
            (*end != '\0' && *end != ' ' && *end != ',')) {
            snprintf(err, errlen, "--goodput: '%.*s' needs a positive number of milliseconds",
                     (int)nlen, name);
            return DUET_ERR_INVALID;
        }
        if (nlen == 4 && memcmp(name, "ttft", 4) == 0)
            out.ttft_ms = v;
        else if (nlen == 4 && memcmp(name, "tpot", 4) == 0)
            out.tpot_ms = v;
        else if (nlen == 4 && memcmp(name, "e2el", 4) == 0)
            out.e2el_ms = v;
        else {
            snprintf(err, errlen, "--goodput: unknown metric '%.*s' (ttft, tpot, e2el)",
                     (int)nlen, name);
            return DUET_ERR_INVALID;
        }
        n++;
        p = end;
    }
    if (n == 0) {
        snprintf(err, errlen, "--goodput: empty (e.g. ttft:500 tpot:50)");
        return DUET_ERR_INVALID;
    }
    *slo = out;
    return DUET_OK;
}

duet_status_t serve_summarize(const serve_rec_t *recs, size_t n, double *itl_s, size_t n_itl,
                              double duration_s, const serve_slo_t *slo,
                              serve_summary_t *out)
{
    double *ttft = NULL, *tpot = NULL, *e2el = NULL;
    serve_summary_t s;
    size_t nt = 0, np = 0;

    memset(&s, 0, sizeof(s));
    ttft = malloc(sizeof(double) * (n ? n : 1));
    tpot = malloc(sizeof(double) * (n ? n : 1));
    e2el = malloc(sizeof(double) * (n ? n : 1));
    if (ttft == NULL || tpot == NULL || e2el == NULL) {
        free(ttft);
        free(tpot);
        free(e2el);
        return DUET_ERR_NOMEM;
    }
    s.sent = n;
    for (size_t i = 0; i < n; i++) {
        const serve_rec_t *r = &recs[i];
        double tp = 0.0;
        bool good = true;

        if (r->err != SERVE_OK) {
            s.failed++;
            s.errors[r->err]++;
            continue;
        }
        s.completed++;
        s.errors[SERVE_OK]++;
        s.total_input += r->input_tokens;
        s.total_output += r->output_tokens;
        ttft[nt] = r->ttft_s * 1e3;
        e2el[nt] = r->e2el_s * 1e3;
        nt++;
        if (r->output_tokens > 1) {
            tp = (r->e2el_s - r->ttft_s) / (double)(r->output_tokens - 1);
            tpot[np++] = tp * 1e3;
        }
        if (serve_slo_any(slo)) {
            if (slo->ttft_ms > 0 && r->ttft_s * 1e3 > slo->ttft_ms)
                good = false;
            if (slo->tpot_ms > 0 && tp * 1e3 > slo->tpot_ms)
                good = false;
            if (slo->e2el_ms > 0 && r->e2el_s * 1e3 > slo->e2el_ms)
                good = false;
            if (good)
                s.good++;
        }
    }
    for (size_t i = 0; i < n_itl; i++)
        itl_s[i] *= 1e3;
    serve_dist(ttft, nt, &s.ttft_ms);
    serve_dist(tpot, np, &s.tpot_ms);
    serve_dist(e2el, nt, &s.e2el_ms);
    serve_dist(itl_s, n_itl, &s.itl_ms);
    s.duration_s = duration_s;
    if (duration_s > 0) {
        s.req_tput = (double)s.completed / duration_s;
        s.in_tput = (double)s.total_input / duration_s;
        s.out_tput = (double)s.total_output / duration_s;
        s.total_tput = (double)(s.total_input + s.total_output) / duration_s;
        s.goodput = (double)s.good / duration_s;
    }
    free(ttft);
    free(tpot);
    free(e2el);
    *out = s;
    return DUET_OK;
}
