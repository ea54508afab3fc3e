/* Byte buffer, UTF-8, incremental detokenizer and stop strings. */
#define DUET_LOG_COMPONENT "router"
#include "text.h"

#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "common/log.h"

void sbuf_init(sbuf_t *b)
{
    b->p = NULL;
    b->n = b->cap = 0;
}

void sbuf_free(sbuf_t *b)
{
    free(b->p);
    sbuf_init(b);
}

void sbuf_clear(sbuf_t *b)
{
    b->n = 0;
}

duet_status_t sbuf_add(sbuf_t *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        char *np;

        while (cap < b->n + n + 1)
            cap *= 2;
        np = realloc(b->p, cap);
        if (np == NULL)
            return DUET_ERR_NOMEM;
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
    return DUET_OK;
}

int utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    int len;
    uint8_t lo = 0x80, hi = 0xbf;   /* bounds of the second byte */

    if (c < 0x80)
        return 1;
    if (c < 0xc2)
        return -1;
    if (c < 0xe0) {
        len = 2;
    } else if (c < 0xf0) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;              /* overlong */
        else if (c == 0xed)
            hi = 0x9f;              /* surrogates */
    } else if (c < 0xf5) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;              /* overlong */
        else if (c == 0xf4)
            hi = 0x8f;              /* > U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return 0;
        if (i == 1 ? (p[i] < lo || p[i] > hi) : (p[i] & 0xc0) != 0x80)
            return -1;
    }
    return len;
}

bool utf8_valid(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;

    while (i < n) {
        int l = utf8_seq(p + i, n - i);

        if (l <= 0)
            return false;
        i += (size_t)l;
    }
    return true;
}

void detok_init(detok_t *d, const rtok_t *tok, bool skip_special,
                const char *const *stops, int nstop)
{
    memset(d, 0, sizeof(*d));
    d->tok = tok;
    rtok_detok_init(tok, &d->st, !skip_special);
    sbuf_init(&d->hold);
    for (int i = 0; i < nstop && d->nstop < DETOK_MAX_STOP; i++) {
        size_t l = strlen(stops[i]);

        if (l == 0)
            continue;
        d->stop[d->nstop] = stops[i];
        d->stop_len[d->nstop] = l;
        d->nstop++;
    }
}

void detok_free(detok_t *d)
{
    sbuf_free(&d->hold);
}

/* Longest suffix of hold that is a proper prefix of some stop string. */
static size_t detok_stop_tail(const detok_t *d)
{
    size_t best = 0;

    for (int s = 0; s < d->nstop; s++) {
        size_t max = d->stop_len[s] - 1;

        if (max > d->hold.n)
            max = d->hold.n;
        for (size_t k = max; k > best; k--) {
            if (memcmp(d->hold.p + d->hold.n - k, d->stop[s], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

/* Move what is safe from hold to out; detect a complete stop string. */
static duet_status_t detok_release(detok_t *d, sbuf_t *out)
{
    size_t first = SIZE_MAX, keep;

    for (int s = 0; s < d->nstop && d->hold.n; s++) {
        const char *m = memmem(d->hold.p, d->hold.n, d->stop[s], d->stop_len[s]);

        if (m != NULL && (size_t)(m - d->hold.p) < first)
            first = (size_t)(m - d->hold.p);
    }
    if (first != SIZE_MAX) {
        CHECK(sbuf_add(out, d->hold.p, first));
        sbuf_clear(&d->hold);
        d->stopped = true;
        return DUET_OK;
    }
    keep = detok_stop_tail(d);
    CHECK(sbuf_add(out, d->hold.p, d->hold.n - keep));
    memmove(d->hold.p, d->hold.p + d->hold.n - keep, keep);
    d->hold.n = keep;
    return DUET_OK;
}

duet_status_t detok_push(detok_t *d, int32_t id, sbuf_t *out, bool *stopped_p)
{
    char text[RTOK_DETOK_MAX_OUT];
    size_t n = 0;

    *stopped_p = d->stopped;
    if (d->stopped)
        return DUET_OK;
    CHECK(rtok_detok_feed(d->tok, &d->st, id, text, sizeof(text), &n));
    CHECK(sbuf_add(&d->hold, text, n));
    CHECK(detok_release(d, out));
    *stopped_p = d->stopped;
    return DUET_OK;
}

duet_status_t detok_flush(detok_t *d, sbuf_t *out)
{
    char text[RTOK_DETOK_MAX_OUT];
    size_t n;

    if (d->stopped)
        return DUET_OK;
    n = rtok_detok_flush(d->tok, &d->st, text, sizeof(text));
    CHECK(sbuf_add(&d->hold, text, n));
    CHECK(sbuf_add(out, d->hold.p, d->hold.n));
    sbuf_clear(&d->hold);
    return DUET_OK;
}

duet_status_t detok_all(const rtok_t *tok, const int32_t *ids, size_t n,
                        bool skip_special, sbuf_t *out)
{
    detok_t d;
    duet_status_t status = DUET_OK;
    bool stopped;

    detok_init(&d, tok, skip_special, NULL, 0);
    for (size_t i = 0; i < n && status == DUET_OK; i++)
        status = detok_push(&d, ids[i], out, &stopped);
    if (status == DUET_OK)
        status = detok_flush(&d, out);
    detok_free(&d);
    return status;
}
