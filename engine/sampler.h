/* Token sampling: penalties, temperature, min-p, top-k, top-p, a per-request
 * seeded PRNG, and the stop rules (stop ids, EOS, ignore_eos).
 *
 * Order of operations (vLLM's): repetition / presence / frequency penalties
 * on the raw logits, then greedy argmax when temperature is 0, otherwise
 * temperature, min-p, top-k, top-p over what is left, and one draw from the
 * renormalised distribution. Every step is O(vocab): top-k and top-p use
 * partial selection (quickselect), never a full sort of the vocabulary.
 *
 * Penalties (OpenAI / vLLM semantics):
 *   repetition_penalty r (> 0, 1 = off): for every token seen in the prompt
 *     or the output, a positive logit is divided by r, a negative one is
 *     multiplied by r.
 *   presence_penalty  p ([-2, 2]): subtract p once from tokens that appear
 *     in the output.
 *   frequency_penalty f ([-2, 2]): subtract f * count from tokens that
 *     appear count times in the output.
 *
 * Determinism: the same parameters, seed and logits give the same tokens,
 * whatever else is in the batch. */
#ifndef DUET_ENGINE_SAMPLER_H
#define DUET_ENGINE_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define SAMPLER_MAX_STOP 16

typedef struct {
    float    temperature;          /* >= 0; 0: greedy */
    int32_t  top_k;                /* 0 or -1: off */
    float    top_p;                /* (0, 1]; 1: off */
    float    min_p;                /* [0, 1]; 0: off */
    float    repetition_penalty;   /* > 0 (at most 10); 1: off */
    float    presence_penalty;     /* [-2, 2] */
    float    frequency_penalty;    /* [-2, 2] */
    uint64_t seed;                 /* PRNG seed (the engine picks one when
                                      the request gives none) */
    int32_t  stop_ids[SAMPLER_MAX_STOP];
    int      n_stop;
    bool     ignore_eos;           /* do not stop at the model's EOS */
} sampler_params_t;

/* Defaults: greedy, no filters, no penalties, no stop ids, seed 0. */
void sampler_params_default(sampler_params_t *p);

/* DUET_ERR_INVALID with a one-line reason in err (naming the parameter and
 * its bounds) when a value is out of range or a stop id is outside
 * [0, vocab). NaN is out of every range. */
duet_status_t sampler_params_check(const sampler_params_t *p, int32_t vocab,
                                   char *err, size_t errlen);

/* Per-request sampling state: the PRNG and the counts the penalties need. */
typedef struct sampler sampler_t;

/* Scratch shared by every request of one engine (one thread at a time). */
typedef struct sampler_ws sampler_ws_t;

duet_status_t sampler_ws_create(int32_t vocab, sampler_ws_t **ws_p);
void sampler_ws_destroy(sampler_ws_t *ws);

/* Create a request's state. params must pass sampler_params_check (checked
 * again here). prompt (n_prompt tokens, borrowed) marks tokens seen by the
 * repetition penalty. */
duet_status_t sampler_create(const sampler_params_t *params, int32_t vocab,
                             const int32_t *prompt, int32_t n_prompt,
                             sampler_t **s_p);
void sampler_destroy(sampler_t *s);

const sampler_params_t *sampler_params(const sampler_t *s);

/* Pick the next token from logits (vocab floats, modified in place: they
 * come back with the penalties applied). Does not record the token: call
 * sampler_accept with what the caller keeps. */
int32_t sampler_sample(sampler_t *s, sampler_ws_t *ws, float *logits);

/* The candidates that survived min-p / top-k / top-p in the last
 * non-greedy sampler_sample on ws (0 after a greedy one), in no order. */
int32_t sampler_ws_n_kept(const sampler_ws_t *ws);
int32_t sampler_ws_kept(const sampler_ws_t *ws, int32_t i);

/* Record an output token (penalty counts). DUET_ERR_NOMEM is the only
 * failure. */
duet_status_t sampler_accept(sampler_t *s, int32_t token);

/* True when token ends the request: one of the stop ids, or eos (>= 0) unless
 * ignore_eos is set. */
bool sampler_is_stop(const sampler_t *s, int32_t token, int32_t eos);

/* PRNG state, so a request can continue on another node with the same
 * stream (prefill node -> decode node). */
#define SAMPLER_RNG_WORDS 4
void sampler_rng_get(const sampler_t *s, uint64_t state[SAMPLER_RNG_WORDS]);
void sampler_rng_set(sampler_t *s, const uint64_t state[SAMPLER_RNG_WORDS]);

#endif
