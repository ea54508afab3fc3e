/* Text pieces of the router that need no network: a growable byte buffer,
 * UTF-8 validation, the incremental detokenizer (never splits a UTF-8
 * sequence) and the stop-string matcher (matches across token boundaries
 * and holds back text that could still become a stop string). */
#ifndef DUET_ROUTER_TEXT_H
#define DUET_ROUTER_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "router/tok.h"

typedef struct {
    char   *p;
    size_t  n, cap;
} sbuf_t;

void sbuf_init(sbuf_t *b);
void sbuf_free(sbuf_t *b);
duet_status_t sbuf_add(sbuf_t *b, const void *p, size_t n);
void sbuf_clear(sbuf_t *b);

/* Length of the valid UTF-8 sequence at p: >0 complete and valid,
 * 0 a valid but incomplete prefix (n too short), -1 invalid lead or
 * continuation, overlong form, surrogate or beyond U+10FFFF. */
int utf8_seq(const uint8_t *p, size_t n);

/* True when all n bytes are valid UTF-8. */
bool utf8_valid(const char *p, size_t n);

#define DETOK_MAX_STOP      16
#define DETOK_MAX_STOP_LEN  256

/* Per-sequence output state. */
typedef struct {
    const rtok_t *tok;            /* borrowed */
    rtok_detok_state_t st;        /* the tokenizer's incremental state */
    sbuf_t        hold;           /* decoded text held back for stop matching */
    const char   *stop[DETOK_MAX_STOP];      /* borrowed, NUL-terminated */
    size_t        stop_len[DETOK_MAX_STOP];
    int           nstop;
    bool          stopped;
} detok_t;

/* stops: borrowed strings that outlive the detok_t (empty ones are
 * skipped). */
void detok_init(detok_t *d, const rtok_t *tok, bool skip_special,
                const char *const *stops, int nstop);
void detok_free(detok_t *d);

/* Feed one token. Text that is now safe to show is appended to out. When a
 * stop string completes, out gets the text before it, *stopped_p is set and
 * later pushes are ignored. DUET_ERR_INVALID for a token outside the
 * vocabulary. */
duet_status_t detok_push(detok_t *d, int32_t id, sbuf_t *out, bool *stopped_p);

/* Generation ended without a stop string: release everything held (an
 * incomplete UTF-8 tail becomes U+FFFD). */
duet_status_t detok_flush(detok_t *d, sbuf_t *out);

/* Detokenize a whole sequence at once (for /detokenize). */
duet_status_t detok_all(const rtok_t *tok, const int32_t *ids, size_t n,
                        bool skip_special, sbuf_t *out);

#endif
