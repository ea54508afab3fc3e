/* Incremental Server-Sent Events parser (sse.h). */
#include <stdlib.h>
#include <string.h>

#include "bench/sse.h"

void sse_init(sse_parser_t *p, size_t max_bytes)
{
    memset(p, 0, sizeof(*p));
    p->max_bytes = max_bytes ? max_bytes : (size_t)1 << 20;
}

void sse_reset(sse_parser_t *p)
{
    p->line_len = 0;
    p->data_len = 0;
    p->has_data = false;
    p->after_cr = false;
}

void sse_free(sse_parser_t *p)
{
    free(p->line);
    free(p->data);
    p->line = p->data = NULL;
    p->line_cap = p->data_cap = 0;
    sse_reset(p);
}

bool sse_pending(const sse_parser_t *p)
{
    return p->line_len > 0 || p->has_data;
}

/* Make room for need bytes plus a NUL in *buf. */
static duet_status_t grow(char **buf, size_t *cap, size_t need, size_t max)
{
    size_t ncap;
    char *nb;

    if (need > max)
        return DUET_ERR_TOO_BIG;
    if (need + 1 <= *cap)
        return DUET_OK;
    ncap = *cap ? *cap : 256;
    while (ncap < need + 1)
        ncap *= 2;
    nb = realloc(*buf, ncap);
    if (nb == NULL)
        return DUET_ERR_NOMEM;
    *buf = nb;
    *cap = ncap;
    return DUET_OK;
}

/* One complete line (without its terminator) in p->line. */
static duet_status_t on_line(sse_parser_t *p, sse_event_cb_t cb, void *arg)
{
    const char *l = p->line, *colon, *val;
    size_t n = p->line_len, flen, vlen;
    duet_status_t s;

    if (n == 0) {                       /* blank line: dispatch */
        if (!p->has_data)
            return DUET_OK;
        s = grow(&p->data, &p->data_cap, p->data_len, p->max_bytes);
        if (s != DUET_OK)
            return s;
        p->data[p->data_len] = '\0';
        p->has_data = false;
        n = p->data_len;
        p->data_len = 0;
        p->n_events++;
        return cb(arg, p->data, n);
    }
    if (l[0] == ':')                    /* comment */
        return DUET_OK;
    colon = memchr(l, ':', n);
    flen = colon ? (size_t)(colon - l) : n;
    if (flen != 4 || memcmp(l, "data", 4) != 0)
        return DUET_OK;                 /* event, id, retry, unknown fields */
    val = colon ? colon + 1 : l + n;
    vlen = (size_t)(l + n - val);
    if (vlen > 0 && val[0] == ' ') {
        val++;
        vlen--;
    }
    s = grow(&p->data, &p->data_cap, p->data_len + vlen + 1, p->max_bytes);
    if (s != DUET_OK)
        return s;
    if (p->has_data)
        p->data[p->data_len++] = '\n';
    memcpy(p->data + p->data_len, val, vlen);
    p->data_len += vlen;
    p->has_data = true;
    return DUET_OK;
}

duet_status_t sse_feed(sse_parser_t *p, const char *buf, size_t n, sse_event_cb_t cb,
                       void *arg)
{
    size_t i = 0;
    duet_status_t s;

    while (i < n) {
        const char *start = buf + i, *eol;
        size_t run, k;

        if (p->after_cr) {              /* LF right after CR ends nothing */
            p->after_cr = false;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        /* the next CR or LF */
        eol = NULL;
        for (k = i; k < n; k++) {
            if (buf[k] == '\n' || buf[k] == '\r') {
                eol = buf + k;
                break;
            }
        }
        run = eol ? (size_t)(eol - start) : n - i;
        s = grow(&p->line, &p->line_cap, p->line_len + run, p->max_bytes);
        if (s != DUET_OK)
            return s;
        memcpy(p->line + p->line_len, start, run);
        p->line_len += run;
        i += run;
        if (eol == NULL)
            break;
        p->after_cr = (*eol == '\r');
        i++;
        s = on_line(p, cb, arg);
        p->line_len = 0;
        if (s < 0)
            return s;
    }
    return DUET_OK;
}
