/* Sampler: parameter checks, greedy, exact top-k / top-p / min-p masks
 * against a brute-force sort, frequency checks against known distributions
 * with a fixed seed, penalties, stop rules, determinism per seed. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "tests/tap.h"

#define V 1000

static sampler_t *mk(const sampler_params_t *p, int32_t vocab)
{
    sampler_t *s = NULL;

    if (sampler_create(p, vocab, NULL, 0, &s) != DUET_OK)
        return NULL;
    return s;
}

static void test_params(void)
{
    sampler_params_t p;
    char err[256];

    sampler_params_default(&p);
    is_int(sampler_params_check(&p, V, err, sizeof(err)), DUET_OK, "defaults are valid");

#define BAD(field, val, word)                                                   \
    do {                                                                        \
        sampler_params_default(&p);                                             \
        p.field = (val);                                                        \
        err[0] = 0;                                                             \
        is_int(sampler_params_check(&p, V, err, sizeof(err)), DUET_ERR_INVALID, \
               #field " = " #val " rejected");                                  \
        ok(strstr(err, word) != NULL, "message names " word ": %s", err);       \
    } while (0)

    BAD(temperature, -0.5f, "temperature");
    BAD(temperature, NAN, "temperature");
    BAD(top_p, 0.0f, "top_p");
    BAD(top_p, 1.5f, "top_p");
    BAD(top_k, -2, "top_k");
    BAD(min_p, -0.1f, "min_p");
    BAD(min_p, 1.1f, "min_p");
    BAD(repetition_penalty, 0.0f, "repetition_penalty");
    BAD(presence_penalty, 2.5f, "presence_penalty");
    BAD(frequency_penalty, -3.0f, "frequency_penalty");
#undef BAD

    sampler_params_default(&p);
    p.top_k = -1;
    is_int(sampler_params_check(&p, V, err, sizeof(err)), DUET_OK, "top_k -1 means off");
    p.n_stop = 2;
    p.stop_ids[0] = 5;
    p.stop_ids[1] = V;
    is_int(sampler_params_check(&p, V, err, sizeof(err)), DUET_ERR_INVALID,
           "stop id outside the vocabulary rejected");
    ok(strstr(err, "stop token id") != NULL, "message: %s", err);
    {
        sampler_t *s = NULL;
        is_int(sampler_create(&p, V, NULL, 0, &s), DUET_ERR_INVALID,
               "sampler_create refuses bad params");
        ok(s == NULL, "no output on failure");
    }
}

static void test_greedy(void)
{
    sampler_params_t p;
    sampler_ws_t *ws = NULL;
    sampler_t *s;
    float logits[V];
    int i;

    sampler_params_default(&p);
    sampler_ws_create(V, &ws);
    s = mk(&p, V);
    for (i = 0; i < V; i++)
        logits[i] = sinf((float)i);
    logits[123] = 5.0f;
    is_int(sampler_sample(s, ws, logits), 123, "greedy picks the argmax");
    logits[77] = 5.0f;
    is_int(sampler_sample(s, ws, logits), 77, "greedy ties go to the lowest id");
    logits[500] = NAN;
    is_int(sampler_sample(s, ws, logits), 77, "NaN never wins");
    sampler_destroy(s);
    sampler_ws_destroy(ws);
}

/* Brute force: sort by (p desc, id asc), then min-p, top-k, top-p. */
typedef struct {
    float l;
    int32_t id;
} ref_t;

static int ref_cmp(const void *a, const void *b)
{
    const ref_t *x = a, *y = b;

    if (x->l != y->l)
        return x->l > y->l ? -1 : 1;
    return x->id - y->id;
}

static int ref_kept(const float *logits, int32_t vocab, const sampler_params_t *p,
                    uint8_t *kept)
{
    ref_t *r = malloc(sizeof(*r) * (size_t)vocab);
    int32_t n = 0, i;
    float max = -INFINITY;
    double total = 0, acc = 0;

    for (i = 0; i < vocab; i++)
        max = fmaxf(max, logits[i]);
    for (i = 0; i < vocab; i++) {
        float l = (logits[i] - max) * (1.0f / p->temperature);
        if (p->min_p > 0 && l < logf(p->min_p))
            continue;
        r[n].l = l;
        r[n].id = i;
        n++;
    }
    qsort(r, (size_t)n, sizeof(*r), ref_cmp);
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    for (i = 0; i < n; i++)
        total += expf(r[i].l);
    memset(kept, 0, (size_t)vocab);
    for (i = 0; i < n; i++) {
        kept[r[i].id] = 1;
        acc += expf(r[i].l);
        if (acc >= p->top_p * total)
            break;
    }
    n = i < n ? i + 1 : n;
    free(r);
    return n;
}

static void test_masks_exact(void)
{
    static const int32_t vocabs[] = { 7, 1000, 49152 };
    sampler_params_t p;
    sampler_ws_t *ws = NULL;
    float *logits, *copy;
    uint8_t *kept;
    int vi, trial, bad = 0, checked = 0;
    uint64_t x = 12345;

    for (vi = 0; vi < 3; vi++) {
        int32_t vocab = vocabs[vi];
        logits = malloc(sizeof(float) * (size_t)vocab);
        copy = malloc(sizeof(float) * (size_t)vocab);
        kept = malloc((size_t)vocab);
        sampler_ws_create(vocab, &ws);
        for (trial = 0; trial < 24; trial++) {
            sampler_t *s;
            int32_t i, n_ref, n;

            sampler_params_default(&p);
            p.temperature = 0.5f + 0.25f * (float)(trial % 4);
            p.top_k = (trial % 3 == 0) ? 0 : 1 + trial * 3;
            p.top_p = (trial % 2 == 0) ? 1.0f : 0.3f + 0.1f * (float)(trial % 6);
            p.min_p = (trial % 5 == 0) ? 0.05f : 0.0f;
            p.seed = (uint64_t)trial;
            for (i = 0; i < vocab; i++) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                logits[i] = (float)((x >> 40) % 100000) / 100000.0f * 12.0f - 6.0f;
            }
            if (trial % 7 == 3) /* many ties */
                for (i = 0; i < vocab; i++)
                    logits[i] = floorf(logits[i]);
            memcpy(copy, logits, sizeof(float) * (size_t)vocab);
            n_ref = ref_kept(logits, vocab, &p, kept);
            s = mk(&p, vocab);
            i = sampler_sample(s, ws, copy);
            n = sampler_ws_n_kept(ws);
            checked++;
            if (n != n_ref || !kept[i]) {
                bad++;
                diag("vocab %d trial %d: kept %d, reference %d", vocab, trial, n, n_ref);
            } else {
                for (i = 0; i < n; i++)
                    if (!kept[sampler_ws_kept(ws, i)]) {
                        bad++;
                        diag("vocab %d trial %d: token %d kept wrongly", vocab, trial,
                             sampler_ws_kept(ws, i));
                        break;
                    }
            }
            sampler_destroy(s);
        }
        sampler_ws_destroy(ws);
        free(logits);
        free(copy);
        free(kept);
    }
    is_int(bad, 0, "top-k/top-p/min-p sets equal a full sort in %d cases", checked);
}

/* Draw n tokens from logits; counts per token. */
static void draw(const sampler_params_t *p, const float *logits, int32_t vocab, int n,
                 int *counts)
{
    sampler_ws_t *ws = NULL;
    sampler_t *s = mk(p, vocab);
    float *tmp = malloc(sizeof(float) * (size_t)vocab);
    int i;

    sampler_ws_create(vocab, &ws);
    memset(counts, 0, sizeof(int) * (size_t)vocab);
    for (i = 0; i < n; i++) {
        memcpy(tmp, logits, sizeof(float) * (size_t)vocab);
        counts[sampler_sample(s, ws, tmp)]++;
    }
    free(tmp);
    sampler_ws_destroy(ws);
    sampler_destroy(s);
}

/* Chi-square of counts against expected probabilities over the tokens with
 * want > 0; returns the statistic, *zero_ok false if a token with want 0
 * was drawn. */
static double chi2(const int *counts, const double *want, int32_t vocab, int n, int *df,
                   int *outside)
{
    double x = 0;
    int32_t i;

    *df = -1;
    *outside = 0;
    for (i = 0; i < vocab; i++) {
        if (want[i] > 0) {
            double e = want[i] * n;
            x += (counts[i] - e) * (counts[i] - e) / e;
            (*df)++;
        } else {
            *outside += counts[i];
        }
    }
    return x;
}

static void test_distributions(void)
{
    /* 8 tokens with known probabilities. */
    static const double probs[8] = { 0.30, 0.20, 0.15, 0.12, 0.10, 0.07, 0.04, 0.02 };
    sampler_params_t p;
    float logits[8];
    double want[8], z;
    int counts[8], df, outside, i, n = 40000;
    double x;

    for (i = 0; i < 8; i++)
        logits[i] = (float)log(probs[i]) + 3.0f;   /* shift: softmax-invariant */

    /* chi-square critical values at p = 0.001: df 7: 24.32, df 3: 16.27,
     * df 2: 13.82, df 1: 10.83. */
    sampler_params_default(&p);
    p.temperature = 1.0f;
    p.seed = 42;
    draw(&p, logits, 8, n, counts);
    x = chi2(counts, probs, 8, n, &df, &outside);
    ok(x < 24.32 && df == 7, "T=1 matches softmax (chi2 %.2f, df %d)", x, df);

    p.temperature = 2.0f;
    for (z = 0, i = 0; i < 8; i++)
        z += sqrt(probs[i]);
    for (i = 0; i < 8; i++)
        want[i] = sqrt(probs[i]) / z;
    draw(&p, logits, 8, n, counts);
    x = chi2(counts, want, 8, n, &df, &outside);
    ok(x < 24.32, "T=2 flattens to p^(1/2) (chi2 %.2f)", x);

    p.temperature = 1.0f;
    p.top_k = 4;
    for (z = 0, i = 0; i < 8; i++)
        z += i < 4 ? probs[i] : 0;
    for (i = 0; i < 8; i++)
        want[i] = i < 4 ? probs[i] / z : 0;
    draw(&p, logits, 8, n, counts);
    x = chi2(counts, want, 8, n, &df, &outside);
    ok(x < 16.27 && outside == 0, "top_k=4 renormalises over 4 tokens (chi2 %.2f, outside %d)",
       x, outside);

    /* top_p 0.6: 0.30 + 0.20 = 0.50 < 0.6, + 0.15 = 0.65 >= 0.6: 3 tokens. */
    p.top_k = 0;
    p.top_p = 0.6f;
    for (z = 0, i = 0; i < 8; i++)
        z += i < 3 ? probs[i] : 0;
    for (i = 0; i < 8; i++)
        want[i] = i < 3 ? probs[i] / z : 0;
    draw(&p, logits, 8, n, counts);
    x = chi2(counts, want, 8, n, &df, &outside);
    ok(x < 13.82 && outside == 0, "top_p=0.6 keeps exactly 3 tokens (chi2 %.2f, outside %d)",
       x, outside);

    /* min_p 0.5: keep p >= 0.15 -> 3 tokens (0.30, 0.20, 0.15). */
    p.top_p = 1.0f;
    p.min_p = 0.5f;
    draw(&p, logits, 8, n, counts);
    x = chi2(counts, want, 8, n, &df, &outside);
    ok(x < 13.82 && outside == 0, "min_p=0.5 keeps exactly 3 tokens (chi2 %.2f, outside %d)",
       x, outside);

    /* top_k 4 then top_p 0.7 of the renormalised 4: 0.30/0.77=0.39,
     * +0.20/0.77 = 0.65, +0.15/0.77 = 0.84 -> 3 tokens. */
    p.min_p = 0.0f;
    p.top_k = 4;
    p.top_p = 0.7f;
    draw(&p, logits, 8, n, counts);
    x = chi2(counts, want, 8, n, &df, &outside);
    ok(x < 13.82 && outside == 0, "top_k then top_p over the renormalised rest (chi2 %.2f)", x);
}

static void test_determinism(void)
{
    sampler_params_t p;
    sampler_ws_t *ws = NULL;
    sampler_t *a, *b, *c, *d;
    float la[V], lb[V], lc[V];
    int i, t, same_ab = 1, diff_ac = 0, same_cont = 1;
    uint64_t st[SAMPLER_RNG_WORDS];

    sampler_params_default(&p);
    p.temperature = 1.0f;
    p.top_p = 0.95f;
    p.seed = 7;
    sampler_ws_create(V, &ws);
    a = mk(&p, V);
    b = mk(&p, V);
    p.seed = 8;
    c = mk(&p, V);
    for (t = 0; t < 200; t++) {
        int ta, tb, tc;
        for (i = 0; i < V; i++)
            la[i] = lb[i] = lc[i] = 0.01f * (float)((i * 37 + t * 11) % 100);
        ta = sampler_sample(a, ws, la);
        tb = sampler_sample(b, ws, lb);
        tc = sampler_sample(c, ws, lc);
        same_ab &= ta == tb;
        diff_ac += ta != tc;
    }
    ok(same_ab, "same seed, same tokens");
    ok(diff_ac > 100, "another seed, other tokens (%d of 200 differ)", diff_ac);

    /* Moving the PRNG state to a new sampler continues the same stream. */
    sampler_rng_get(a, st);
    p.seed = 999;
    d = mk(&p, V);
    sampler_rng_set(d, st);
    for (t = 0; t < 50; t++) {
        for (i = 0; i < V; i++)
            la[i] = lb[i] = 0.02f * (float)((i * 13 + t) % 50);
        same_cont &= sampler_sample(a, ws, la) == sampler_sample(d, ws, lb);
    }
    ok(same_cont, "rng state handed over continues the stream");
    sampler_destroy(a);
    sampler_destroy(b);
    sampler_destroy(c);
    sampler_destroy(d);
    sampler_ws_destroy(ws);
}

static void test_penalties(void)
{
    static const int32_t prompt[] = { 1, 2, 2 };
    sampler_params_t p;
    sampler_ws_t *ws = NULL;
    sampler_t *s = NULL;
    float l[8];
    int i;

    sampler_ws_create(8, &ws);
    sampler_params_default(&p);
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    sampler_create(&p, 8, prompt, 3, &s);
    sampler_accept(s, 3);
    sampler_accept(s, 3);
    sampler_accept(s, 4);
    for (i = 0; i < 8; i++)
        l[i] = 1.0f;
    l[2] = -1.0f;
    sampler_sample(s, ws, l);
    ok(l[0] == 1.0f, "unseen token untouched");
    ok(l[1] == 0.5f, "prompt token, positive logit divided by r (%g)", (double)l[1]);
    ok(l[2] == -2.0f, "prompt token, negative logit multiplied by r (%g)", (double)l[2]);
    /* 1 / 2 - 0.25 * 2 - 0.5 = -0.5 */
    ok(l[3] == -0.5f, "output token twice: rep, 2 x frequency, presence (%g)", (double)l[3]);
    /* 1 / 2 - 0.25 - 0.5 = -0.25 */
    ok(l[4] == -0.25f, "output token once (%g)", (double)l[4]);
    sampler_destroy(s);

    /* A strong frequency penalty stops greedy from repeating itself. */
    sampler_params_default(&p);
    p.frequency_penalty = 2.0f;
    sampler_create(&p, 8, NULL, 0, &s);
    {
        int seen[8] = { 0 }, t, rep = 0;
        for (t = 0; t < 8; t++) {
            int32_t tok;
            for (i = 0; i < 8; i++)
                l[i] = 1.0f + 0.1f * (float)i;
            tok = sampler_sample(s, ws, l);
            rep += seen[tok]++;
            sampler_accept(s, tok);
        }
        is_int(rep, 0, "frequency penalty spreads greedy picks over 8 tokens");
    }
    sampler_destroy(s);
    sampler_ws_destroy(ws);
}

static void test_stop(void)
{
    sampler_params_t p;
    sampler_t *s;

    sampler_params_default(&p);
    p.n_stop = 2;
    p.stop_ids[0] = 10;
    p.stop_ids[1] = 20;
    s = mk(&p, V);
    ok(sampler_is_stop(s, 10, 2) && sampler_is_stop(s, 20, 2), "stop ids stop");
    ok(sampler_is_stop(s, 2, 2), "eos stops");
    ok(!sampler_is_stop(s, 3, 2) && !sampler_is_stop(s, 3, -1), "other tokens do not");
    sampler_destroy(s);
    p.ignore_eos = true;
    s = mk(&p, V);
    ok(!sampler_is_stop(s, 2, 2), "ignore_eos: eos does not stop");
    ok(sampler_is_stop(s, 10, 2), "ignore_eos: stop ids still stop");
    sampler_destroy(s);
}

int main(void)
{
    test_params();
    test_greedy();
    test_masks_exact();
    test_distributions();
    test_determinism();
    test_penalties();
    test_stop();
    return tap_done();
}
