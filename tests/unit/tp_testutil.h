/* Helpers for the tensor-parallel tests: greedy generation of a batch of
 * prompts through the executor at some TP size, keeping every step's
 * logits, and the comparison of two runs. */
#ifndef DUET_TESTS_TP_TESTUTIL_H
#define DUET_TESTS_TP_TESTUTIL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/executor.h"
#include "tests/tap.h"

#define TPT_MAX_SEQS 8
#define TPT_BLOCK    16

typedef struct {
    int      n_seqs, n_gen;
    int32_t  vocab;
    int32_t  toks[TPT_MAX_SEQS][64];     /* generated tokens */
    float   *logits;                     /* (n_gen, n_seqs, vocab) */
} tpt_run_t;

static inline int32_t tpt_argmax(const float *x, int32_t n)
{
    int32_t b = 0;

    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* Prefill every prompt in one batch, then n_gen - 1 batched decode steps;
 * greedy. act_q8: 8-bit activations (else two levels, the default).
 * Returns 0, or -1 after a diag. */
static inline int tpt_generate(const gguf_t *g, const model_config_t *cfg, int tp,
                               bool act_q8, const int32_t *const *prompts, const int32_t *lens,
                               int n_seqs, int n_gen, tpt_run_t *out)
{
    int32_t bps = (int32_t)((64 + 64 + TPT_BLOCK - 1) / TPT_BLOCK);
    int32_t tables[TPT_MAX_SEQS][8], past[TPT_MAX_SEQS];
    fwd_seq_t seqs[TPT_MAX_SEQS];
    fwd_opts_t fo = {.n_threads = 1, .n_blocks = bps * n_seqs, .block_size = TPT_BLOCK,
                     .kv_dtype = DTYPE_F16, .act_q8 = act_q8};
    exec_opts_t xo = {.tp_size = tp};
    exec_t *ex = NULL;
    char err[256] = "";
    duet_status_t s;
    float *lg;

    memset(out, 0, sizeof(*out));
    out->n_seqs = n_seqs;
    out->n_gen = n_gen;
    out->vocab = cfg->vocab;
    out->logits = malloc(sizeof(float) * (size_t)n_gen * (size_t)n_seqs * (size_t)cfg->vocab);
    if (out->logits == NULL || n_seqs > TPT_MAX_SEQS || n_gen > 64 || bps > 8)
        return -1;
    s = exec_create(g, cfg, &fo, &xo, &ex, err, sizeof(err));
    if (s != DUET_OK) {
        diag("exec_create(tp %d): %s: %s", tp, duet_status_str(s), err);
        return -1;
    }
    for (int i = 0; i < n_seqs; i++) {
        for (int32_t b = 0; b < bps; b++)
            tables[i][b] = i * bps + b;
        seqs[i] = (fwd_seq_t){.tokens = prompts[i], .n_new = lens[i], .n_past = 0,
                              .block_table = tables[i], .n_blocks = bps, .want_logits = true};
        past[i] = lens[i];
    }
    for (int step = 0; step < n_gen; step++) {
        lg = out->logits + (size_t)step * (size_t)n_seqs * (size_t)cfg->vocab;
        s = exec_run(ex, seqs, n_seqs, lg);
        if (s != DUET_OK) {
            diag("exec_run(tp %d) step %d: %s", tp, step, duet_status_str(s));
            exec_destroy(ex);
            return -1;
        }
        for (int i = 0; i < n_seqs; i++) {
            out->toks[i][step] = tpt_argmax(lg + (size_t)i * (size_t)cfg->vocab, cfg->vocab);
            seqs[i] = (fwd_seq_t){.tokens = &out->toks[i][step], .n_new = 1,
                                  .n_past = past[i], .block_table = tables[i], .n_blocks = bps,
                                  .want_logits = true};
            past[i]++;
        }
    }
    exec_destroy(ex);
    return 0;
}

/* Tokens equal (returns 1 when they are). *max_rel_p: the largest, over
 * every row of logits (sequence and step), of ||b - a|| / ||a - mean(a)||,
 * the oracle's metric (tests/oracle/test_forward_oracle.py); *max_abs_p:
 * the largest |b - a|. */
static inline int tpt_compare(const tpt_run_t *a, const tpt_run_t *b, double *max_rel_p,
                              double *max_abs_p)
{
    size_t rows = (size_t)a->n_gen * (size_t)a->n_seqs, v = (size_t)a->vocab;
    double mr = 0.0, ma = 0.0;
    int same = 1;

    for (int i = 0; i < a->n_seqs; i++) {
        if (memcmp(a->toks[i], b->toks[i], sizeof(int32_t) * (size_t)a->n_gen) != 0) {
            diag("sequence %d: tokens differ", i);
            same = 0;
        }
    }
    for (size_t r = 0; r < rows; r++) {
        const float *x = a->logits + r * v, *y = b->logits + r * v;
        double mean = 0.0, num = 0.0, den = 0.0;

        for (size_t k = 0; k < v; k++)
            mean += x[k];
        mean /= (double)v;
        for (size_t k = 0; k < v; k++) {
            double d = (double)y[k] - (double)x[k];

            num += d * d;
            den += ((double)x[k] - mean) * ((double)x[k] - mean);
            if (fabs(d) > ma)
                ma = fabs(d);
        }
        if (getenv("TPT_VERBOSE") != NULL && den > 0)
            diag("row %zu (step %zu, seq %zu): %.3g", r, r / (size_t)a->n_seqs,
                 r % (size_t)a->n_seqs, sqrt(num / den));
        if (den > 0 && sqrt(num / den) > mr)
            mr = sqrt(num / den);
    }
    *max_rel_p = mr;
    *max_abs_p = ma;
    return same;
}

static inline void tpt_free(tpt_run_t *r)
{
    free(r->logits);
    r->logits = NULL;
}

#endif
