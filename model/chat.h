/* Chat templates. The family is detected from the text of
 * tokenizer.chat_template (ChatML, Llama 3, Llama 2, Mistral, Phi-3, Gemma)
 * or forced by name, and conversations are rendered in C, without a Jinja
 * engine, exactly as the family's template renders them.
 *
 * The rendered text never starts with the BOS token: encode it with
 * TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL so BOS is added when the model asks
 * for it (llama.cpp's convention). Later BOS/EOS markers inside the text
 * (Llama 2 multi-turn) are written as their special-token text. */
#ifndef DUET_MODEL_CHAT_H
#define DUET_MODEL_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"
#include "model/gguf.h"

typedef enum {
    CHAT_FAMILY_CHATML = 0,
    CHAT_FAMILY_LLAMA3,
    CHAT_FAMILY_LLAMA2,
    CHAT_FAMILY_MISTRAL,
    CHAT_FAMILY_PHI3,
    CHAT_FAMILY_GEMMA,
} chat_family_t;

typedef struct chat_template chat_template_t;

typedef struct {
    const char *role;           /* "system", "user" or "assistant" */
    const char *content;        /* content_len bytes (NULL: empty) */
    size_t      content_len;
} chat_msg_t;

/* Detect the family of a Jinja template's source. A default system prompt
 * that the template inserts when the conversation has none (SmolLM2's
 * "You are a helpful AI assistant named SmolLM, ...") is extracted and
 * reproduced. DUET_ERR_UNSUPPORTED with a reason for an unknown template. */
duet_status_t chat_template_detect(const char *src, size_t len, chat_template_t **tmpl_p,
                                   char *err, size_t errlen);

/* A template by name: chatml, llama3, llama2, mistral, phi3, gemma, or
 * smollm2 (ChatML with SmolLM2's default system prompt). */
duet_status_t chat_template_by_name(const char *name, chat_template_t **tmpl_p,
                                    char *err, size_t errlen);

/* The template of a model file: by name when force_name is not NULL, else
 * detected from tokenizer.chat_template (DUET_ERR_NOT_FOUND when absent). */
duet_status_t chat_template_from_gguf(const gguf_t *g, const char *force_name,
                                      chat_template_t **tmpl_p, char *err, size_t errlen);

void chat_template_destroy(chat_template_t *tmpl);

chat_family_t chat_template_family(const chat_template_t *tmpl);
const char   *chat_template_name(const chat_template_t *tmpl);
/* The default system prompt, or NULL. */
const char   *chat_template_default_system(const chat_template_t *tmpl);

/* Render msgs[0..n) into a malloc'd NUL-terminated string (the caller
 * frees it), followed by the assistant's generation prompt when asked.
 * An unknown role, or a system message the family cannot place, is
 * DUET_ERR_INVALID with a reason in err. */
duet_status_t chat_render(const chat_template_t *tmpl, const chat_msg_t *msgs, size_t n,
                          bool add_generation_prompt, char **text_p, size_t *len_p,
                          char *err, size_t errlen);

#endif
