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
    char bytes[256];
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

static duet_status_t tok_byte_piece(void *ctx, int32_t id, const char **p_p, size_t *n_p)
{
    tok_byte_t *tb = ctx;

    if (id < 0 || id >= TOK_BYTE_VOCAB)
        return DUET_ERR_INVALID;
    if (id >= TOK_BYTE_EOT) {
        *p_p = tok_byte_specials[id - TOK_BYTE_EOT];
        *n_p = strlen(*p_p);
    } else {
        *p_p = &tb->bytes[id];
        *n_p = 1;
    }
    return DUET_OK;
}

static bool tok_byte_is_special(void *ctx, int32_t id)
{
    return id >= TOK_BYTE_EOT && id < TOK_BYTE_VOCAB;
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
    .piece = tok_byte_piece,
    .is_special = tok_byte_is_special,
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
    for (int i = 0; i < 256; i++)
        tb->bytes[i] = (char)i;
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
