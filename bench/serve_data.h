/* Workloads of the serving benchmark: a seeded random generator, arrival
 * times (Poisson or gamma, vLLM's --burstiness) and prompt sets (random or
 * fixed lengths, or a JSONL file).
 *
 * Random prompts are random *words* of the model's vocabulary: the tokens
 * that decode to a space and 2-12 lowercase ASCII letters and encode back
 * to themselves. A prompt of L such words is valid text that the tokenizer
 * turns into L tokens (checked, and corrected word by word, when the prompt
 * is built). Without a tokenizer, a built-in list of common English words
 * is used and lengths are approximate (one token per word in most BPE
 * vocabularies). */
#ifndef DUET_BENCH_SERVE_DATA_H
#define DUET_BENCH_SERVE_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/tokenizer.h"

typedef struct {
    uint64_t s[4];          /* xoshiro256** */
} serve_rng_t;

void     serve_rng_seed(serve_rng_t *r, uint64_t seed);
uint64_t serve_rng_next(serve_rng_t *r);
double   serve_rng_uniform(serve_rng_t *r);                 /* [0, 1) */
double   serve_rng_gamma(serve_rng_t *r, double shape, double scale);

/* Send times in seconds from the start, t[0] = 0: gaps drawn from
 * gamma(shape = burstiness, scale = 1 / (rate * burstiness)) (burstiness 1
 * is a Poisson process); rate <= 0 or infinite sends everything at 0. */
void serve_arrivals(serve_rng_t *r, size_t n, double rate, double burstiness, double *t);

typedef struct {
    char    *prompt;        /* NUL-terminated UTF-8 text */
    int64_t  prompt_tokens; /* local count (-1: no tokenizer) */
    int32_t  output_len;    /* max_tokens of the request */
} serve_prompt_t;

typedef struct {
    serve_prompt_t *v;
    size_t          n;
    const char     *kind;   /* "random", "fixed" or "jsonl" */
    int             exact;  /* 1 when lengths were checked with the tokenizer */
} serve_dataset_t;

/* n prompts with input lengths uniform in [in_lo, in_hi] and output lengths
 * in [out_lo, out_hi] (equal bounds: fixed). tok may be NULL (built-in
 * words). Takes nothing; fills *ds on success. */
duet_status_t serve_data_random(const tok_t *tok, size_t n, int32_t in_lo, int32_t in_hi,
                                int32_t out_lo, int32_t out_hi, serve_rng_t *rng,
                                serve_dataset_t *ds, char *err, size_t errlen);

/* n prompts from a JSONL file: one object per line with "prompt" (a string)
 * and optionally "output_len" or "max_tokens" (else default_out); blank
 * lines are skipped; lines are reused in order when n exceeds them. A line
 * that is not such an object is an error naming its line number. */
duet_status_t serve_data_jsonl(const char *path, const tok_t *tok, size_t n,
                               int32_t default_out, serve_dataset_t *ds,
                               char *err, size_t errlen);

void serve_data_free(serve_dataset_t *ds);

#endif
