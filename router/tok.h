/* The router's view of a tokenizer and chat template: a small table of
 * operations behind an opaque context, so the router never depends on how a
 * tokenizer is built. Two providers exist:
 *  - "byte" (tok_byte.c): token id = byte value 0..255 plus the ChatML
 *    special tokens; no model file. For protocol tests and bring-up only.
 *  - the GGUF tokenizer and chat template from model/ (tok_gguf.c),
 *    selected by `duet router --model FILE`.
 * The router calls these through the rtok_* wrappers only. */
#ifndef DUET_ROUTER_TOK_H
#define DUET_ROUTER_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define RTOK_MAX_EOS        8
#define RTOK_DETOK_STATE    64      /* bytes of opaque detokenizer state */
#define RTOK_DETOK_MAX_OUT  1024    /* most bytes one feed or flush writes */

typedef struct {
    const char *role;       /* "system" | "user" | "assistant" | "tool" (NUL-terminated) */
    const char *content;    /* UTF-8, NUL-terminated */
} rtok_msg_t;

typedef struct {
    /* Encode UTF-8 text; special-token strings in the text become their
     * ids. add_bos: add the model's BOS when its metadata asks for it. *ids_p is
     * malloc'd (caller frees); *n_p its length. */
    duet_status_t (*encode)(void *ctx, const char *text, size_t len, bool add_bos,
                            int32_t **ids_p, size_t *n_p);
    /* Incremental detokenization over a caller-provided state of
     * RTOK_DETOK_STATE bytes: detok_init prepares it; detok_feed appends
     * the text that token id completes to out (always whole UTF-8
     * characters; at most RTOK_DETOK_MAX_OUT bytes, not NUL-terminated) and
     * sets *len_p; detok_flush writes what is held back (as U+FFFD) and
     * returns its length. Special tokens render as nothing unless
     * show_special. DUET_ERR_INVALID for an id outside the vocabulary. */
    void (*detok_init)(void *ctx, void *state, bool show_special);
    duet_status_t (*detok_feed)(void *ctx, void *state, int32_t id, char *out,
                                size_t cap, size_t *len_p);
    size_t (*detok_flush)(void *ctx, void *state, char *out, size_t cap);
    /* Render a conversation with the model's chat template. *text_p is
     * malloc'd. DUET_ERR_INVALID (with err filled) for a conversation the
     * template rejects. */
    duet_status_t (*apply_chat)(void *ctx, const rtok_msg_t *msgs, size_t n,
                                bool add_generation_prompt, char **text_p,
                                char *err, size_t errlen);
    void (*destroy)(void *ctx);
} rtok_ops_t;

typedef struct {
    const rtok_ops_t *ops;
    void             *ctx;
    int32_t           vocab;
    int32_t           eos[RTOK_MAX_EOS];   /* ids that end generation */
    int               n_eos;
    int32_t           max_model_len;       /* context length in tokens */
    uint64_t          fingerprint;         /* model fingerprint nodes must match; 0: any */
    char              name[128];           /* served model name default */
} rtok_t;

/* The byte tokenizer: vocab 259 (0..255 bytes, 256 <|endoftext|>,
 * 257 <|im_start|>, 258 <|im_end|>), ChatML template, EOS {256, 258}. */
duet_status_t rtok_byte_create(int32_t max_model_len, rtok_t **tok_p);

/* The tokenizer, chat template (by name when chat_template is not NULL,
 * else tokenizer.chat_template), context length and fingerprint of a GGUF
 * file. err gets a one-line reason. */
duet_status_t rtok_gguf_create(const char *path, const char *chat_template,
                               rtok_t **tok_p, char *err, size_t errlen);

/* Free a tokenizer from any provider. NULL is ignored. */
void rtok_destroy(rtok_t *tok);

static inline duet_status_t rtok_encode(const rtok_t *t, const char *text, size_t len,
                                        bool add_bos, int32_t **ids_p, size_t *n_p)
{
    return t->ops->encode(t->ctx, text, len, add_bos, ids_p, n_p);
}

/* Opaque, aligned detokenizer state (embed in a request). */
typedef struct {
    _Alignas(16) unsigned char bytes[RTOK_DETOK_STATE];
} rtok_detok_state_t;

static inline void rtok_detok_init(const rtok_t *t, rtok_detok_state_t *st, bool show_special)
{
    t->ops->detok_init(t->ctx, st->bytes, show_special);
}

static inline duet_status_t rtok_detok_feed(const rtok_t *t, rtok_detok_state_t *st,
                                            int32_t id, char *out, size_t cap, size_t *len_p)
{
    return t->ops->detok_feed(t->ctx, st->bytes, id, out, cap, len_p);
}

static inline size_t rtok_detok_flush(const rtok_t *t, rtok_detok_state_t *st, char *out,
                                      size_t cap)
{
    return t->ops->detok_flush(t->ctx, st->bytes, out, cap);
}

static inline duet_status_t rtok_apply_chat(const rtok_t *t, const rtok_msg_t *msgs,
                                            size_t n, bool add_gen, char **text_p,
                                            char *err, size_t errlen)
{
    return t->ops->apply_chat(t->ctx, msgs, n, add_gen, text_p, err, errlen);
}

static inline bool rtok_is_eos(const rtok_t *t, int32_t id)
{
    for (int i = 0; i < t->n_eos; i++)
        if (t->eos[i] == id)
            return true;
    return false;
}

#endif
