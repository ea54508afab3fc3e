/* Decoding: whole sequences (tok_decode) and the incremental detokenizer,
 * both over the per-token byte pieces built at load time. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define DUET_LOG_COMPONENT "tokenizer"
#include "common/log.h"
#include "model/tokenizer_int.h"
#include "model/unicode.h"

/* The bytes id decodes to under flags; *first: no piece emitted yet (the
 * SPM space prefix is dropped from the first one). */
static const uint8_t *piece_of(const tok_t *t, int32_t id, unsigned flags, bool *first,
                               size_t *len_p)
{
    uint8_t ty = t->type[id];
    const uint8_t *p = t->piece + t->piece_off[id];
    size_t len = t->piece_off[id + 1] - t->piece_off[id];

    if ((ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN) && !(flags & TOK_DECODE_SPECIAL))
        len = 0;
    if (len > 0 && *first) {
        if (t->kind == TOK_VOCAB_SPM && t->add_space_prefix && p[0] == ' ') {
            p++;
            len--;
        }
        *first = false;
    }
    *len_p = len;
    return p;
}

duet_status_t tok_decode(const tok_t *t, const int32_t *ids, size_t n, unsigned flags,
                         char **text_p, size_t *len_p, char *err, size_t errlen)
{
    size_t total = 0, m = 0, o;
    uint8_t *raw;
    char *text;
    bool first = true;

    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) {
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "token id %d (at position %zu) is out of range: the "
                         "vocabulary has ids 0..%d", ids[i], i, t->n_vocab - 1);
            return DUET_ERR_INVALID;
        }
        total += t->piece_off[ids[i] + 1] - t->piece_off[ids[i]];
    }
    raw = malloc(total + 1);
    text = malloc(3 * total + 1);
    if (raw == NULL || text == NULL) {
        free(raw);
        free(text);
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "out of memory decoding %zu tokens", n);
        return DUET_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const uint8_t *p = piece_of(t, ids[i], flags, &first, &len);

        memcpy(raw + m, p, len);
        m += len;
    }
    o = unicode_repair(text, raw, m);
    text[o] = '\0';
    free(raw);
    *text_p = text;
    *len_p = o;
    return DUET_OK;
}

void tok_detok_init(tok_detok_t *d, const tok_t *tok, unsigned flags)
{
    memset(d, 0, sizeof(*d));
    d->tok = tok;
    d->flags = flags;
}

size_t tok_detok_max_out(const tok_t *t)
{
    return 3 * ((size_t)t->max_piece + sizeof(((tok_detok_t *)0)->pend));
}

duet_status_t tok_detok_feed(tok_detok_t *d, int32_t id, char *out, size_t cap, size_t *len_p)
{
    const tok_t *t = d->tok;
    uint8_t small[256], *buf = small;
    const uint8_t *p;
    size_t len, m, tail;
    bool first = !d->started;

    if (id < 0 || id >= t->n_vocab)
        return DUET_ERR_INVALID;
    p = piece_of(t, id, d->flags, &first, &len);
    m = d->npend + len;
    if (cap < 3 * m)
        return DUET_ERR_TOO_BIG;
    if (m > sizeof(small) && (buf = malloc(m)) == NULL)
        return DUET_ERR_NOMEM;
    memcpy(buf, d->pend, d->npend);
    memcpy(buf + d->npend, p, len);
    d->started = !first;
    tail = unicode_incomplete_tail(buf, m);
    *len_p = unicode_repair(out, buf, m - tail);
    memcpy(d->pend, buf + m - tail, tail);
    d->npend = (uint8_t)tail;
    if (buf != small)
        free(buf);
    return DUET_OK;
}

size_t tok_detok_flush(tok_detok_t *d, char *out, size_t cap)
{
    size_t n = 0;

    if (cap >= 3 * (size_t)d->npend)
        n = unicode_repair(out, d->pend, d->npend);
    tok_detok_init(d, d->tok, d->flags);
    return n;
}
