/* Workloads of the serving benchmark (serve_data.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench/serve_data.h"

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void serve_rng_seed(serve_rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) {       /* splitmix64 */
        uint64_t z = (seed += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        r->s[i] = z ^ (z >> 31);
    }
}

uint64_t serve_rng_next(serve_rng_t *r)
{
    uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

double serve_rng_uniform(serve_rng_t *r)
{
    return (double)(serve_rng_next(r) >> 11) * 0x1.0p-53;
}

static double rng_normal(serve_rng_t *r)
{
    double u1 = serve_rng_uniform(r), u2 = serve_rng_uniform(r);

    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
}

/* Marsaglia and Tsang; shape < 1 by the boost gamma(a+1) * U^(1/a). */
double serve_rng_gamma(serve_rng_t *r, double shape, double scale)
{
    double d, c;

    if (shape < 1.0) {
        double u = serve_rng_uniform(r);

        return serve_rng_gamma(r, shape + 1.0, scale) * pow(1.0 - u, 1.0 / shape);
    }
    d = shape - 1.0 / 3.0;
    c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = rng_normal(r), v = 1.0 + c * x, u;

        if (v <= 0.0)
            continue;
        v = v * v * v;
        u = serve_rng_uniform(r);
        if (u < 1.0 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return d * v * scale;
    }
}

void serve_arrivals(serve_rng_t *r, size_t n, double rate, double burstiness, double *t)
{
    double now = 0.0;

    for (size_t i = 0; i < n; i++) {
        t[i] = now;
        if (rate > 0 && isfinite(rate))
            now += serve_rng_gamma(r, burstiness, 1.0 / (rate * burstiness));
    }
}

void serve_data_free(serve_dataset_t *ds)
{
    if (ds->v != NULL)
        for (size_t i = 0; i < ds->n; i++)
            free(ds->v[i].prompt);
    free(ds->v);
    ds->v = NULL;
    ds->n = 0;
}

static const char *const builtin_words[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but",
    "have", "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her",
    "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no",
    "time", "people", "year", "way", "day", "man", "thing", "woman", "life", "child",
    "world", "school", "state", "family", "student", "group", "country", "problem", "hand",
    "part", "place", "case", "week", "company", "system", "program", "question", "work",
    "number", "night", "point", "home", "water", "room", "mother", "area", "money", "story",
};
#define N_BUILTIN ((int)(sizeof(builtin_words) / sizeof(builtin_words[0])))

/* Words of the vocabulary: " word" tokens that encode back to themselves. */
typedef struct {
    char  **w;          /* " word", borrowed from the decode results */
    size_t  n;
} wordlist_t;

static void wordlist_free(wordlist_t *wl)
{
    for (size_t i = 0; i < wl->n; i++)
        free(wl->w[i]);
    free(wl->w);
}

static duet_status_t wordlist_build(const tok_t *tok, wordlist_t *wl, char *err, size_t errlen)
{
    int32_t nv = tok_n_vocab(tok);
    tok_ids_t ids = {0};
    duet_status_t s = DUET_OK;

    wl->w = calloc((size_t)nv, sizeof(char *));
    wl->n = 0;
    if (wl->w == NULL)
        return DUET_ERR_NOMEM;
    for (int32_t id = 0; id < nv; id++) {
        char *text = NULL;
        size_t len = 0, k;

        if (tok_token_type(tok, id) != TOK_TYPE_NORMAL)
            continue;
        if (tok_decode(tok, &id, 1, 0, &text, &len, NULL, 0) != DUET_OK)
            continue;
        if (len < 3 || len > 13 || text[0] != ' ')
            goto skip;
        for (k = 1; k < len; k++)
            if (text[k] < 'a' || text[k] > 'z')
                break;
        if (k != len)
            goto skip;
        ids.n = 0;
        if (tok_encode(tok, text, len, 0, &ids) != DUET_OK || ids.n != 1 || ids.v[0] != id)
            goto skip;
        wl->w[wl->n++] = text;
        continue;
skip:
        free(text);
    }
    tok_ids_free(&ids);
    if (wl->n < 16) {
        snprintf(err, errlen, "the tokenizer has only %zu plain word tokens; use --tokenizer none",
                 wl->n);
        wordlist_free(wl);
        s = DUET_ERR_UNSUPPORTED;
    }
    return s;
}

/* Append " word" to a growable string. */
static duet_status_t str_add(char **buf, size_t *len, size_t *cap, const char *w, size_t wl)
{
    if (*len + wl + 1 > *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        char *nb;

        while (nc < *len + wl + 1)
            nc *= 2;
        nb = realloc(*buf, nc);
        if (nb == NULL)
            return DUET_ERR_NOMEM;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, w, wl);
    *len += wl;
    (*buf)[*len] = '\0';
    return DUET_OK;
}

static int32_t uniform_int(serve_rng_t *r, int32_t lo, int32_t hi)
{
    if (hi <= lo)
        return lo;
    return lo + (int32_t)(serve_rng_next(r) % (uint64_t)(hi - lo + 1));
}

static int64_t count_tokens(const tok_t *tok, const char *text, size_t len, tok_ids_t *ids)
{
    ids->n = 0;
    if (tok_encode(tok, text, len, TOK_ADD_SPECIAL, ids) != DUET_OK)
        return -1;
    return (int64_t)ids->n;
}

duet_status_t serve_data_random(const tok_t *tok, size_t n, int32_t in_lo, int32_t in_hi,
                                int32_t out_lo, int32_t out_hi, serve_rng_t *rng,
                                serve_dataset_t *ds, char *err, size_t errlen)
{
    wordlist_t wl = {0};
    tok_ids_t ids = {0};
    serve_dataset_t out = {0};
    int32_t bos = 0;
    duet_status_t s;

    if (in_lo < 1 || in_hi < in_lo || out_lo < 1 || out_hi < out_lo) {
        snprintf(err, errlen, "bad length range: input [%d, %d], output [%d, %d]",
                 in_lo, in_hi, out_lo, out_hi);
        return DUET_ERR_INVALID;
    }
    if (tok != NULL) {
        s = wordlist_build(tok, &wl, err, errlen);
        if (s != DUET_OK)
            return s;
        bos = tok_add_bos(tok) ? 1 : 0;
    }
    out.v = calloc(n ? n : 1, sizeof(serve_prompt_t));
    if (out.v == NULL) {
        s = DUET_ERR_NOMEM;
        goto err_alloc;
    }
    out.n = n;
    out.kind = in_lo == in_hi && out_lo == out_hi ? "fixed" : "random";
    out.exact = tok != NULL;
    for (size_t i = 0; i < n; i++) {
        int32_t want = uniform_int(rng, in_lo, in_hi), words = want - bos;
        char *buf = NULL;
        size_t len = 0, cap = 0;
        int64_t have = -1;

        if (words < 1)
            words = 1;
        for (int32_t k = 0; k < words; k++) {
            const char *w;
            char tmp[32];

            if (tok != NULL) {
                w = wl.w[serve_rng_next(rng) % wl.n];
            } else {
                snprintf(tmp, sizeof(tmp), "%s%s", k ? " " : "",
                         builtin_words[serve_rng_next(rng) % N_BUILTIN]);
                w = tmp;
            }
            s = str_add(&buf, &len, &cap, w, strlen(w));
            if (s != DUET_OK) {
                free(buf);
                goto err_gen;
            }
        }
        if (tok != NULL) {
            /* words usually stay one token each; correct the rare merge */
            for (int tries = 0; tries < 64; tries++) {
                have = count_tokens(tok, buf, len, &ids);
                if (have < 0 || have >= want)
                    break;
                const char *w = wl.w[serve_rng_next(rng) % wl.n];

                s = str_add(&buf, &len, &cap, w, strlen(w));
                if (s != DUET_OK) {
                    free(buf);
                    goto err_gen;
                }
            }
        }
        out.v[i].prompt = buf;
        out.v[i].prompt_tokens = have;
        out.v[i].output_len = uniform_int(rng, out_lo, out_hi);
    }
    tok_ids_free(&ids);
    wordlist_free(&wl);
    *ds = out;
    return DUET_OK;

err_gen:
    snprintf(err, errlen, "out of memory building prompts");
    serve_data_free(&out);
err_alloc:
    tok_ids_free(&ids);
    wordlist_free(&wl);
    return s;
}

duet_status_t serve_data_jsonl(const char *path, const tok_t *tok, size_t n,
                               int32_t default_out, serve_dataset_t *ds,
                               char *err, size_t errlen)
{
    serve_dataset_t out = {0};
    serve_prompt_t *lines = NULL;
    size_t nl = 0, capl = 0, lineno = 0;
    char *line = NULL;
    size_t linecap = 0;
    ssize_t got;
    tok_ids_t ids = {0};
    FILE *f = fopen(path, "r");
    duet_status_t s = DUET_ERR_INVALID;

    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return DUET_ERR_IO;
    }
    while ((got = getline(&line, &linecap, f)) >= 0) {
        json_error_t je;
        json_t *o, *p, *ol;
        const char *c = line;
        int64_t olen = default_out;

        lineno++;
        while (*c == ' ' || *c == '\t' || *c == '\r' || *c == '\n')
            c++;
        if (*c == '\0')
            continue;
        o = json_loadb(line, (size_t)got, 0, &je);
        if (o == NULL || !json_is_object(o) || !json_is_string(p = json_object_get(o, "prompt"))) {
            snprintf(err, errlen, "%s:%zu: expected {\"prompt\": \"...\"}%s%s", path, lineno,
                     o == NULL ? ": " : "", o == NULL ? je.text : "");
            json_decref(o);
            goto err_parse;
        }
        ol = json_object_get(o, "output_len");
        if (ol == NULL)
            ol = json_object_get(o, "max_tokens");
        if (ol != NULL) {
            if (!json_is_integer(ol) || json_integer_value(ol) < 1 ||
                json_integer_value(ol) > (1 << 24)) {
                snprintf(err, errlen, "%s:%zu: output_len must be a positive integer", path,
                         lineno);
                json_decref(o);
                goto err_parse;
            }
            olen = json_integer_value(ol);
        }
        if (nl == capl) {
            size_t nc = capl ? capl * 2 : 64;
            serve_prompt_t *nv = realloc(lines, nc * sizeof(*nv));

            if (nv == NULL) {
                json_decref(o);
                s = DUET_ERR_NOMEM;
                goto err_parse;
            }
            lines = nv;
            capl = nc;
        }
        lines[nl].prompt = strdup(json_string_value(p));
        lines[nl].output_len = (int32_t)olen;
        lines[nl].prompt_tokens = tok ? count_tokens(tok, json_string_value(p),
                                                     json_string_length(p), &ids) : -1;
        json_decref(o);
        if (lines[nl].prompt == NULL) {
            s = DUET_ERR_NOMEM;
            goto err_parse;
        }
        nl++;
    }
    if (nl == 0) {
        snprintf(err, errlen, "%s: no prompts", path);
        goto err_parse;
    }
    out.v = calloc(n ? n : 1, sizeof(serve_prompt_t));
    if (out.v == NULL) {
        s = DUET_ERR_NOMEM;
        goto err_parse;
    }
    out.n = n;
    out.kind = "jsonl";
    out.exact = tok != NULL;
    for (size_t i = 0; i < n; i++) {
        out.v[i] = lines[i % nl];
        out.v[i].prompt = strdup(lines[i % nl].prompt);
        if (out.v[i].prompt == NULL) {
            s = DUET_ERR_NOMEM;
            serve_data_free(&out);
            goto err_parse;
        }
    }
    s = DUET_OK;
    *ds = out;
err_parse:
    for (size_t i = 0; i < nl; i++)
        free(lines[i].prompt);
    free(lines);
    free(line);
    tok_ids_free(&ids);
    fclose(f);
    return s;
}
