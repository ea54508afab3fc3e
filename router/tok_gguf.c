/* The GGUF tokenizer and chat template (model/tokenizer.h, model/chat.h)
 * behind the router's rtok_ops_t. Only metadata is read: the file stays
 * mapped for the chat template's sake, and no tensor is ever touched. */
#define DUET_LOG_COMPONENT "router"
#include "tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "model/chat.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

_Static_assert(sizeof(tok_detok_t) <= RTOK_DETOK_STATE, "tok_detok_t outgrew the state");

typedef struct {
    gguf_t          *g;
    tok_t           *tok;
    chat_template_t *tmpl;     /* NULL: the model has no chat template */
} tok_gguf_t;

static duet_status_t tok_gguf_encode(void *ctx, const char *text, size_t len, bool add_bos,
                                     int32_t **ids_p, size_t *n_p)
{
    tok_gguf_t *tg = ctx;
    tok_ids_t ids = {0};
    int32_t *out;
    duet_status_t status;

    status = tok_encode(tg->tok, text, len, TOK_PARSE_SPECIAL | (add_bos ? TOK_ADD_SPECIAL : 0),
                        &ids);
    if (status != DUET_OK) {
        tok_ids_free(&ids);
        return status;
    }
    out = malloc((ids.n ? ids.n : 1) * sizeof(*out));
    if (out == NULL) {
        tok_ids_free(&ids);
        return DUET_ERR_NOMEM;
    }
    if (ids.n)
        memcpy(out, ids.v, ids.n * sizeof(*out));
    *ids_p = out;
    *n_p = ids.n;
    tok_ids_free(&ids);
    return DUET_OK;
}

static void tok_gguf_detok_init(void *ctx, void *state, bool show_special)
{
    tok_gguf_t *tg = ctx;

    tok_detok_init(state, tg->tok, show_special ? TOK_DECODE_SPECIAL : 0);
}

static duet_status_t tok_gguf_detok_feed(void *ctx, void *state, int32_t id, char *out,
                                         size_t cap, size_t *len_p)
{
    return tok_detok_feed(state, id, out, cap, len_p);
}

static size_t tok_gguf_detok_flush(void *ctx, void *state, char *out, size_t cap)
{
    return tok_detok_flush(state, out, cap);
}

static duet_status_t tok_gguf_apply_chat(void *ctx, const rtok_msg_t *msgs, size_t n,
                                         bool add_gen, char **text_p, char *err, size_t errlen)
{
    tok_gguf_t *tg = ctx;
    chat_msg_t *cm;
    size_t len;
    duet_status_t status;

    if (tg->tmpl == NULL) {
        snprintf(err, errlen, "this model has no chat template; use /v1/completions");
        return DUET_ERR_INVALID;
    }
    cm = calloc(n ? n : 1, sizeof(*cm));
    if (cm == NULL)
        return DUET_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        cm[i].role = msgs[i].role;
        cm[i].content = msgs[i].content;
        cm[i].content_len = strlen(msgs[i].content);
    }
    status = chat_render(tg->tmpl, cm, n, add_gen, text_p, &len, err, errlen);
    free(cm);
    return status;
}

static void tok_gguf_destroy(void *ctx)
{
    tok_gguf_t *tg = ctx;

    chat_template_destroy(tg->tmpl);
    tok_destroy(tg->tok);
    gguf_close(tg->g);
    free(tg);
}

static const rtok_ops_t tok_gguf_ops = {
    .encode = tok_gguf_encode,
    .detok_init = tok_gguf_detok_init,
    .detok_feed = tok_gguf_detok_feed,
    .detok_flush = tok_gguf_detok_flush,
    .apply_chat = tok_gguf_apply_chat,
    .destroy = tok_gguf_destroy,
};

duet_status_t rtok_gguf_create(const char *path, const char *chat_template,
                               rtok_t **tok_p, char *err, size_t errlen)
{
    tok_gguf_t *tg = calloc(1, sizeof(*tg));
    rtok_t *tok = calloc(1, sizeof(*tok));
    model_config_t cfg;
    duet_status_t status;

    if (tg == NULL || tok == NULL) {
        status = DUET_ERR_NOMEM;
        goto err_free;
    }
    CHECK_GOTO(gguf_open(path, &tg->g, err, errlen), status, err_free);
    CHECK_GOTO(model_config_load(tg->g, &cfg, err, errlen), status, err_free);
    CHECK_GOTO(tok_load(tg->g, &tg->tok, err, errlen), status, err_free);
    if (tok_detok_max_out(tg->tok) > RTOK_DETOK_MAX_OUT) {
        snprintf(err, errlen, "%s: a token decodes to more than %d bytes", path,
                 RTOK_DETOK_MAX_OUT);
        status = DUET_ERR_UNSUPPORTED;
        goto err_free;
    }
    status = chat_template_from_gguf(tg->g, chat_template, &tg->tmpl, err, errlen);
    if (status == DUET_ERR_NOT_FOUND) {
        log_warn("%s has no chat template: /v1/chat/completions will answer 400", path);
        tg->tmpl = NULL;
    } else if (status != DUET_OK) {
        goto err_free;
    }
    tok->ops = &tok_gguf_ops;
    tok->ctx = tg;
    tok->vocab = tok_n_vocab(tg->tok);
    for (int32_t id = 0; id < tok->vocab && tok->n_eos < RTOK_MAX_EOS; id++)
        if (tok_is_eog(tg->tok, id))
            tok->eos[tok->n_eos++] = id;
    tok->max_model_len = cfg.ctx_len;
    tok->fingerprint = cfg.fingerprint;
    snprintf(tok->name, sizeof(tok->name), "%s", path);
    *tok_p = tok;
    return DUET_OK;

err_free:
    if (tg != NULL) {
        chat_template_destroy(tg->tmpl);
        tok_destroy(tg->tok);
        gguf_close(tg->g);
        free(tg);
    }
    free(tok);
    return status;
}
