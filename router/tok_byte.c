/* The byte tokenizer: one token per byte plus three ChatML control tokens.
 * It needs no model file, so the router, its protocol and its tests run
 * before (and independently of) a real tokenizer. */
#include "tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_BYTE_EOT       256
#define TOK_BYTE_IM_START  257
#define TOK_BYTE_IM_END    258
#define TOK_BYTE_VOCAB     259

static const char *const tok_byte_specials[] = {
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
};

typedef struct {
    int unused;
} tok_byte_t;

static duet_status_t tok_byte_encode(void *ctx, const char *text, size_t len,
                                     bool add_bos, int32_t **ids_p, size_t *n_p)
{
    int32_t *ids = malloc((len ? len : 1) * sizeof(*ids));
    size_t n = 0, i = 0;

    if (ids == NULL)
        return DUET_ERR_NOMEM;
    while (i < len) {
        int special = -1;

        if (text[i] == '<') {
            for (int s = 0; s < 3; s++) {
                size_t sl = strlen(tok_byte_specials[s]);

                if (len - i >= sl && memcmp(text + i, tok_byte_specials[s], sl) == 0) {
                    special = s;
                    i += sl;
                    break;
                }
            }
        }
        if (special >= 0)
            ids[n++] = TOK_BYTE_EOT + special;
        else
            ids[n++] = (uint8_t)text[i++];
    }
    *ids_p = ids;
    *n_p = n;
    return DUET_OK;
}

typedef struct {
    bool    show_special;
    uint8_t npend;
    uint8_t pend[4];        /* an incomplete UTF-8 sequence (< 4 bytes) */
} tok_byte_detok_t;

_Static_assert(sizeof(tok_byte_detok_t) <= RTOK_DETOK_STATE, "detok state too big");

static const char tok_byte_fffd[] = "\xef\xbf\xbd";

/* Length of the valid UTF-8 sequence at p: >0 complete, 0 a valid
 * incomplete prefix, -1 invalid (overlong, surrogate, > U+10FFFF, stray
 * continuation). */
static int tok_byte_utf8(const uint8_t *p, size_t n)
{
    uint8_t c = p[0], lo = 0x80, hi = 0xbf;
    int len;

    if (c < 0x80)
        return 1;
    if (c < 0xc2 || c > 0xf4)
        return -1;
    len = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return 0;
        if (i == 1 ? (p[i] < lo || p[i] > hi) : (p[i] & 0xc0) != 0x80)
            return -1;
    }
    return len;
}

static void tok_byte_detok_init(void *ctx, void *state, bool show_special)
{
    tok_byte_detok_t *d = state;

    memset(d, 0, sizeof(*d));
    d->show_special = show_special;
}

static duet_status_t tok_byte_detok_feed(void *ctx, void *state, int32_t id, char *out,
                                         size_t cap, size_t *len_p)
{
    tok_byte_detok_t *d = state;
    uint8_t buf[4 + 16];
    size_t n = 0, len = 0, j = 0;

    if (id < 0 || id >= TOK_BYTE_VOCAB)
        return DUET_ERR_INVALID;
    if (id >= TOK_BYTE_EOT) {
        const char *sp = tok_byte_specials[id - TOK_BYTE_EOT];

        *len_p = 0;
        if (d->show_special && strlen(sp) <= cap) {
            memcpy(out, sp, strlen(sp));
            *len_p = strlen(sp);
        }
        return DUET_OK;
    }
    memcpy(buf, d->pend, d->npend);
    n = d->npend;
    buf[n++] = (uint8_t)id;
    d->npend = 0;
    while (j < n) {
        int l = tok_byte_utf8(buf + j, n - j);

        if (l == 0) {
            memcpy(d->pend, buf + j, n - j);
            d->npend = (uint8_t)(n - j);
            break;
        }
        if (l < 0) {
            if (len + 3 > cap)
                return DUET_ERR_TOO_BIG;
            memcpy(out + len, tok_byte_fffd, 3);
            len += 3;
            j++;
            continue;
        }
        if (len + (size_t)l > cap)
            return DUET_ERR_TOO_BIG;
        memcpy(out + len, buf + j, (size_t)l);
        len += (size_t)l;
        j += (size_t)l;
    }
    *len_p = len;
    return DUET_OK;
}

static size_t tok_byte_detok_flush(void *ctx, void *state, char *out, size_t cap)
{
    tok_byte_detok_t *d = state;

    if (d->npend == 0 || cap < 3)
        return 0;
    d->npend = 0;
    memcpy(out, tok_byte_fffd, 3);
    return 3;
}

/* ChatML, as SmolLM2's template renders it (without its default system
 * prompt). */
static duet_status_t tok_byte_apply_chat(void *ctx, const rtok_msg_t *msgs, size_t n,
                                         bool add_gen, char **text_p,
                                         char *err, size_t errlen)
{
    size_t cap = 32, off = 0;
    char *out;

    for (size_t i = 0; i < n; i++)
        cap += strlen(msgs[i].role) + strlen(msgs[i].content) + 32;
    out = malloc(cap);
    if (out == NULL)
        return DUET_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(out + off, cap - off, "<|im_start|>%s\n%s<|im_end|>\n",
                                msgs[i].role, msgs[i].content);
    if (add_gen)
        off += (size_t)snprintf(out + off, cap - off, "<|im_start|>assistant\n");
    *text_p = out;
    return DUET_OK;
}

static void tok_byte_destroy(void *ctx)
{
    free(ctx);
}

static const rtok_ops_t tok_byte_ops = {
    .encode = tok_byte_encode,
    .detok_init = tok_byte_detok_init,
    .detok_feed = tok_byte_detok_feed,
    .detok_flush = tok_byte_detok_flush,
    .apply_chat = tok_byte_apply_chat,
    .destroy = tok_byte_destroy,
};

duet_status_t rtok_byte_create(int32_t max_model_len, rtok_t **tok_p)
{
    rtok_t *tok = calloc(1, sizeof(*tok));
    tok_byte_t *tb = calloc(1, sizeof(*tb));

    if (tok == NULL || tb == NULL) {
        free(tok);
        free(tb);
        return DUET_ERR_NOMEM;
    }
    tok->ops = &tok_byte_ops;
    tok->ctx = tb;
    tok->vocab = TOK_BYTE_VOCAB;
    tok->eos[0] = TOK_BYTE_EOT;
    tok->eos[1] = TOK_BYTE_IM_END;
    tok->n_eos = 2;
    tok->max_model_len = max_model_len;
    tok->fingerprint = 0;
    snprintf(tok->name, sizeof(tok->name), "duet-byte");
    *tok_p = tok;
    return DUET_OK;
}

void rtok_destroy(rtok_t *tok)
{
    if (tok == NULL)
        return;
    tok->ops->destroy(tok->ctx);
    free(tok);
}
