/* Token sampling: penalties, temperature, min-p, top-k, top-p and a seeded
 * xoshiro256** stream per request. See sampler.h for the semantics. */
#define DUET_LOG_COMPONENT "sampler"

#include "engine/sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* Below this temperature sampling is greedy (vLLM's epsilon). */
#define SAMPLER_GREEDY_EPS 1e-5f

typedef struct {
    int32_t  token;      /* -1: empty slot */
    uint32_t out_count;  /* times in the output */
    uint32_t in_prompt;  /* seen in the prompt */
} tok_count_t;

struct sampler {
    sampler_params_t params;
    int32_t          vocab;
    uint64_t         rng[SAMPLER_RNG_WORDS];
    bool             track;        /* any penalty active */
    tok_count_t     *slots;        /* open addressing, power of two */
    uint32_t         n_slots, n_used;
};

typedef struct {
    float   p;                     /* logit, then unnormalised probability */
    int32_t id;
} cand_t;

struct sampler_ws {
    int32_t vocab;
    cand_t *cands;                 /* (vocab) */
    int32_t n_kept;                /* candidates of the last draw */
};

/* --- PRNG: xoshiro256**, seeded through splitmix64 ------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4])
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

/* --- parameters ----------------------------------------------------------- */

void sampler_params_default(sampler_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
}

#define PARAM_ERR(...)                                   \
    do {                                                 \
        if (err != NULL && errlen > 0)                   \
            snprintf(err, errlen, __VA_ARGS__);          \
        return DUET_ERR_INVALID;                         \
    } while (0)

duet_status_t sampler_params_check(const sampler_params_t *p, int32_t vocab,
                                   char *err, size_t errlen)
{
    int i;

    /* Written as negated range tests so NaN fails every one of them. */
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
        PARAM_ERR("temperature must be in [0, 100], got %g", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        PARAM_ERR("top_p must be in (0, 1], got %g", (double)p->top_p);
    if (p->top_k < -1)
        PARAM_ERR("top_k must be >= 1, or 0 or -1 to disable, got %d", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        PARAM_ERR("min_p must be in [0, 1], got %g", (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 10.0f))
        PARAM_ERR("repetition_penalty must be in (0, 10], got %g",
                  (double)p->repetition_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        PARAM_ERR("presence_penalty must be in [-2, 2], got %g",
                  (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        PARAM_ERR("frequency_penalty must be in [-2, 2], got %g",
                  (double)p->frequency_penalty);
    if (p->n_stop < 0 || p->n_stop > SAMPLER_MAX_STOP)
        PARAM_ERR("at most %d stop token ids, got %d", SAMPLER_MAX_STOP, p->n_stop);
    for (i = 0; i < p->n_stop; i++) {
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= vocab)
            PARAM_ERR("stop token id %d is outside the vocabulary [0, %d)",
                      p->stop_ids[i], vocab);
    }
    return DUET_OK;
}

/* --- token counts ------------------------------------------------------------ */

static inline uint32_t tok_hash(int32_t t)
{
    return (uint32_t)t * 2654435761u;
}

static tok_count_t *counts_find(sampler_t *s, int32_t token, bool insert)
{
    uint32_t mask = s->n_slots - 1;
    uint32_t i = tok_hash(token) & mask;

    for (;;) {
        tok_count_t *c = &s->slots[i];
        if (c->token == token)
            return c;
        if (c->token < 0) {
            if (!insert)
                return NULL;
            c->token = token;
            s->n_used++;
            return c;
        }
        i = (i + 1) & mask;
    }
}

static duet_status_t counts_reserve(sampler_t *s, uint32_t extra)
{
    tok_count_t *old = s->slots, *slots;
    uint32_t old_n = s->n_slots, n = old_n ? old_n : 64, i;

    while ((s->n_used + extra) * 2 > n)
        n *= 2;
    if (n == old_n)
        return DUET_OK;
    slots = malloc((size_t)n * sizeof(*slots));
    if (slots == NULL)
        return DUET_ERR_NOMEM;
    for (i = 0; i < n; i++)
        slots[i] = (tok_count_t){ .token = -1 };
    s->slots = slots;
    s->n_slots = n;
    s->n_used = 0;
    for (i = 0; i < old_n; i++) {
        if (old[i].token >= 0)
            *counts_find(s, old[i].token, true) = old[i];
    }
    free(old);
    return DUET_OK;
}

/* --- lifecycle ------------------------------------------------------------- */

duet_status_t sampler_ws_create(int32_t vocab, sampler_ws_t **ws_p)
{
    sampler_ws_t *ws;

    if (vocab <= 0)
        return DUET_ERR_INVALID;
    ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return DUET_ERR_NOMEM;
    ws->cands = malloc((size_t)vocab * sizeof(*ws->cands));
    if (ws->cands == NULL) {
        free(ws);
        return DUET_ERR_NOMEM;
    }
    ws->vocab = vocab;
    *ws_p = ws;
    return DUET_OK;
}

void sampler_ws_destroy(sampler_ws_t *ws)
{
    if (ws == NULL)
        return;
    free(ws->cands);
    free(ws);
}

duet_status_t sampler_create(const sampler_params_t *params, int32_t vocab,
                             const int32_t *prompt, int32_t n_prompt,
                             sampler_t **s_p)
{
    duet_status_t status;
    sampler_t *s;
    uint64_t seed;
    int32_t i;

    CHECK(sampler_params_check(params, vocab, NULL, 0));
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return DUET_ERR_NOMEM;
    s->params = *params;
    s->vocab = vocab;
    seed = params->seed;
    for (i = 0; i < SAMPLER_RNG_WORDS; i++)
        s->rng[i] = splitmix64(&seed);
    s->track = params->repetition_penalty != 1.0f || params->presence_penalty != 0.0f ||
               params->frequency_penalty != 0.0f;
    if (s->track) {
        CHECK_GOTO(counts_reserve(s, (uint32_t)n_prompt), status, err_free);
        for (i = 0; i < n_prompt; i++) {
            if (prompt[i] >= 0 && prompt[i] < vocab)
                counts_find(s, prompt[i], true)->in_prompt = 1;
        }
    }
    *s_p = s;
    return DUET_OK;

err_free:
    sampler_destroy(s);
    return status;
}

void sampler_destroy(sampler_t *s)
{
    if (s == NULL)
        return;
    free(s->slots);
    free(s);
}

const sampler_params_t *sampler_params(const sampler_t *s)
{
    return &s->params;
}

duet_status_t sampler_accept(sampler_t *s, int32_t token)
{
    if (!s->track || token < 0 || token >= s->vocab)
        return DUET_OK;
    CHECK(counts_reserve(s, 1));
    counts_find(s, token, true)->out_count++;
    return DUET_OK;
}

bool sampler_is_stop(const sampler_t *s, int32_t token, int32_t eos)
{
    int i;

    if (eos >= 0 && token == eos && !s->params.ignore_eos)
        return true;
    for (i = 0; i < s->params.n_stop; i++) {
        if (s->params.stop_ids[i] == token)
            return true;
    }
    return false;
}

void sampler_rng_get(const sampler_t *s, uint64_t state[SAMPLER_RNG_WORDS])
{
    memcpy(state, s->rng, sizeof(s->rng));
}

void sampler_rng_set(sampler_t *s, const uint64_t state[SAMPLER_RNG_WORDS])
{
    memcpy(s->rng, state, sizeof(s->rng));
}

/* --- sampling ---------------------------------------------------------------- */

static void apply_penalties(const sampler_t *s, float *logits)
{
    const sampler_params_t *p = &s->params;
    uint32_t i;

    for (i = 0; i < s->n_slots; i++) {
        const tok_count_t *c = &s->slots[i];
        float *l;

        if (c->token < 0)
            continue;
        l = &logits[c->token];
        if (p->repetition_penalty != 1.0f)
            *l = *l > 0.0f ? *l / p->repetition_penalty : *l * p->repetition_penalty;
        if (c->out_count > 0)
            *l -= p->frequency_penalty * (float)c->out_count + p->presence_penalty;
    }
}

/* Strict total order: higher p first, then lower id. */
static inline bool cand_before(const cand_t *a, const cand_t *b)
{
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static inline void cand_swap(cand_t *a, cand_t *b)
{
    cand_t t = *a;
    *a = *b;
    *b = t;
}

/* Partition c[lo, hi) around a median-of-three pivot: on return c[lo, m)
 * come before c[m] and c[m + 1, hi) after it. Returns m. */
static int32_t cand_partition(cand_t *c, int32_t lo, int32_t hi)
{
    int32_t mid = lo + (hi - lo) / 2, last = hi - 1, store = lo, i;
    cand_t pivot;

    /* Order c[lo], c[mid], c[last]; the median ends at mid. */
    if (cand_before(&c[mid], &c[lo]))
        cand_swap(&c[mid], &c[lo]);
    if (cand_before(&c[last], &c[lo]))
        cand_swap(&c[last], &c[lo]);
    if (cand_before(&c[last], &c[mid]))
        cand_swap(&c[last], &c[mid]);
    cand_swap(&c[mid], &c[last]);
    pivot = c[last];
    for (i = lo; i < last; i++) {
        if (cand_before(&c[i], &pivot))
            cand_swap(&c[i], &c[store++]);
    }
    cand_swap(&c[store], &c[last]);
    return store;
}

/* Reorder so that c[0, k) are the k first candidates (in no order). */
static void cand_select_k(cand_t *c, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n, m;

    while (hi - lo > 1) {
        m = cand_partition(c, lo, hi);
        if (m == k || m == k - 1)
            return;
        if (m < k)
            lo = m + 1;
        else
            hi = m;
    }
}

/* Reorder and return the smallest m such that the m first candidates hold
 * at least `need` of the mass; c[0, m) are those candidates. */
static int32_t cand_select_mass(cand_t *c, int32_t n, double need)
{
    int32_t lo = 0, hi = n, m, i;
    double base = 0.0, upper;

    while (lo < hi) {
        m = cand_partition(c, lo, hi);
        upper = 0.0;
        for (i = lo; i < m; i++)
            upper += c[i].p;
        if (base + upper >= need) {
            hi = m;
        } else if (base + upper + c[m].p >= need) {
            return m + 1;
        } else {
            base += upper + c[m].p;
            lo = m + 1;
        }
    }
    return hi > 0 ? hi : 1;
}

/* First index of the largest logit; NaN counts as -inf. */
static int32_t argmax(const float *logits, int32_t vocab)
{
    float best_l = -INFINITY;
    int32_t best = 0, i;

    for (i = 0; i < vocab; i++) {
        if (logits[i] > best_l) {
            best_l = logits[i];
            best = i;
        }
    }
    return best;
}

int32_t sampler_sample(sampler_t *s, sampler_ws_t *ws, float *logits)
{
    const sampler_params_t *p = &s->params;
    cand_t *c = ws->cands;
    int32_t vocab = s->vocab, n = 0, i;
    float max, inv_t, min_l;
    double total, u, acc;

    ws->n_kept = 0;
    if (s->track)
        apply_penalties(s, logits);
    if (p->temperature < SAMPLER_GREEDY_EPS)
        return argmax(logits, vocab);

    max = logits[argmax(logits, vocab)];
    if (!isfinite(max))
        return argmax(logits, vocab);
    inv_t = 1.0f / p->temperature;
    /* min-p: keep p >= min_p * p_max, i.e. (l - max) / T >= log(min_p). */
    min_l = p->min_p > 0.0f ? logf(p->min_p) : -INFINITY;
    for (i = 0; i < vocab; i++) {
        float l = (logits[i] - max) * inv_t;
        if (!(l >= min_l))          /* also drops NaN and -inf */
            continue;
        c[n].p = l;
        c[n].id = i;
        n++;
    }
    if (n == 0)
        return argmax(logits, vocab);

    if (p->top_k > 0 && p->top_k < n) {
        cand_select_k(c, n, p->top_k);
        n = p->top_k;
    }
    total = 0.0;
    for (i = 0; i < n; i++) {
        c[i].p = expf(c[i].p);
        total += c[i].p;
    }
    if (p->top_p < 1.0f) {
        n = cand_select_mass(c, n, (double)p->top_p * total);
        total = 0.0;
        for (i = 0; i < n; i++)
            total += c[i].p;
    }
    ws->n_kept = n;

    u = rng_uniform(s->rng) * total;
    acc = 0.0;
    for (i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc)
            return c[i].id;
    }
    return c[n - 1].id;
}

int32_t sampler_ws_n_kept(const sampler_ws_t *ws)
{
    return ws->n_kept;
}

int32_t sampler_ws_kept(const sampler_ws_t *ws, int32_t i)
{
    return ws->cands[i].id;
}
