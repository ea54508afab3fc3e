/* Chat template families: detection from the Jinja source and rendering. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat.h"

struct chat_template {
    chat_family_t family;
    char         *default_system;   /* NULL when none */
};

static const char *const family_names[] = {
    [CHAT_FAMILY_CHATML] = "chatml",   [CHAT_FAMILY_LLAMA3] = "llama3",
    [CHAT_FAMILY_LLAMA2] = "llama2",   [CHAT_FAMILY_MISTRAL] = "mistral",
    [CHAT_FAMILY_PHI3] = "phi3",       [CHAT_FAMILY_GEMMA] = "gemma",
};

#define SMOLLM2_SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static duet_status_t tmpl_new(chat_family_t family, const char *sys, size_t sys_len,
                              chat_template_t **tmpl_p)
{
    chat_template_t *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return DUET_ERR_NOMEM;
    t->family = family;
    if (sys != NULL) {
        t->default_system = strndup(sys, sys_len);
        if (t->default_system == NULL) {
            free(t);
            return DUET_ERR_NOMEM;
        }
    }
    *tmpl_p = t;
    return DUET_OK;
}

void chat_template_destroy(chat_template_t *t)
{
    if (t == NULL)
        return;
    free(t->default_system);
    free(t);
}

chat_family_t chat_template_family(const chat_template_t *t) { return t->family; }
const char *chat_template_name(const chat_template_t *t) { return family_names[t->family]; }
const char *chat_template_default_system(const chat_template_t *t) { return t->default_system; }

static bool has(const char *s, size_t n, const char *needle)
{
    return memmem(s, n, needle, strlen(needle)) != NULL;
}

/* A ChatML template's default system prompt: a string literal holding
 * "<|im_start|>system" + newline + text + "<|im_end|>", the text free of
 * quotes and template syntax. Escaped newlines ("\n") are unescaped. */
static duet_status_t chatml_default_system(const char *s, size_t n, char **sys_p)
{
    static const char head[] = "<|im_start|>system";
    const char *p = s, *end = s + n;

    *sys_p = NULL;
    while ((p = memmem(p, (size_t)(end - p), head, sizeof(head) - 1)) != NULL) {
        const char *q = p + sizeof(head) - 1, *e;
        char *out;
        size_t o = 0;

        p = q;
        if (q < end && *q == '\n')
            q++;
        else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        e = memmem(q, (size_t)(end - q), "<|im_end|>", 10);
        if (e == NULL || e == q || memchr(q, '\'', (size_t)(e - q)) != NULL ||
            memchr(q, '"', (size_t)(e - q)) != NULL || memchr(q, '{', (size_t)(e - q)) != NULL)
            continue;
        out = malloc((size_t)(e - q) + 1);
        if (out == NULL)
            return DUET_ERR_NOMEM;
        for (const char *c = q; c < e; c++) {
            if (c + 1 < e && c[0] == '\\' && c[1] == 'n') {
                out[o++] = '\n';
                c++;
            } else {
                out[o++] = *c;
            }
        }
        out[o] = '\0';
        *sys_p = out;
        return DUET_OK;
    }
    return DUET_OK;
}

duet_status_t chat_template_detect(const char *src, size_t len, chat_template_t **tmpl_p,
                                   char *err, size_t errlen)
{
    chat_family_t f;
    duet_status_t st;

    if (has(src, len, "<|im_start|>")) {
        char *sys;

        if ((st = chatml_default_system(src, len, &sys)) < 0)
            return st;
        st = tmpl_new(CHAT_FAMILY_CHATML, sys, sys ? strlen(sys) : 0, tmpl_p);
        free(sys);
        return st;
    }
    if (has(src, len, "<|start_header_id|>"))
        f = CHAT_FAMILY_LLAMA3;
    else if (has(src, len, "<start_of_turn>"))
        f = CHAT_FAMILY_GEMMA;
    else if (has(src, len, "<|assistant|>") && has(src, len, "<|end|>"))
        f = CHAT_FAMILY_PHI3;
    else if (has(src, len, "[INST]") && has(src, len, "<<SYS>>"))
        f = CHAT_FAMILY_LLAMA2;
    else if (has(src, len, "[INST]"))
        f = CHAT_FAMILY_MISTRAL;
    else {
        set_err(err, errlen, "unrecognised chat template (starts \"%.40s\"); name one with "
                "--chat-template (chatml, llama3, llama2, mistral, phi3, gemma)", src);
        return DUET_ERR_UNSUPPORTED;
    }
    return tmpl_new(f, NULL, 0, tmpl_p);
}

duet_status_t chat_template_by_name(const char *name, chat_template_t **tmpl_p,
                                    char *err, size_t errlen)
{
    if (strcmp(name, "smollm2") == 0 || strcmp(name, "smollm") == 0)
        return tmpl_new(CHAT_FAMILY_CHATML, SMOLLM2_SYSTEM, strlen(SMOLLM2_SYSTEM), tmpl_p);
    for (size_t i = 0; i < sizeof(family_names) / sizeof(family_names[0]); i++)
        if (strcmp(name, family_names[i]) == 0)
            return tmpl_new((chat_family_t)i, NULL, 0, tmpl_p);
    set_err(err, errlen, "unknown chat template '%s' (known: chatml, smollm2, llama3, llama2, "
            "mistral, phi3, gemma)", name);
    return DUET_ERR_INVALID;
}

duet_status_t chat_template_from_gguf(const gguf_t *g, const char *force_name,
                                      chat_template_t **tmpl_p, char *err, size_t errlen)
{
    gguf_str_t s;

    if (force_name != NULL)
        return chat_template_by_name(force_name, tmpl_p, err, errlen);
    if (gguf_get_str(g, "tokenizer.chat_template", &s) != DUET_OK) {
        set_err(err, errlen, "the model has no tokenizer.chat_template; name one with "
                "--chat-template (chatml, llama3, llama2, mistral, phi3, gemma)");
        return DUET_ERR_NOT_FOUND;
    }
    return chat_template_detect(s.ptr, s.len, tmpl_p, err, errlen);
}

/* --- rendering ---------------------------------------------------------- */

typedef struct {
    char  *p;
    size_t n, cap;
    bool   oom;
} sbuf_t;

static void put(sbuf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;

        while (cap < b->n + n + 1)
            cap *= 2;
        if ((p = realloc(b->p, cap)) == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(sbuf_t *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Jinja's trim: strip leading and trailing whitespace. */
static void put_trimmed(sbuf_t *b, const char *s, size_t n)
{
    while (n > 0 && strchr(" \t\n\r\f\v", s[0]) != NULL) {
        s++;
        n--;
    }
    while (n > 0 && strchr(" \t\n\r\f\v", s[n - 1]) != NULL)
        n--;
    put(b, s, n);
}

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role_t;

static duet_status_t parse_roles(const chat_msg_t *msgs, size_t n, role_t *roles,
                                 char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        const char *r = msgs[i].role ? msgs[i].role : "(null)";

        if (strcmp(r, "system") == 0)
            roles[i] = ROLE_SYSTEM;
        else if (strcmp(r, "user") == 0)
            roles[i] = ROLE_USER;
        else if (strcmp(r, "assistant") == 0)
            roles[i] = ROLE_ASSISTANT;
        else {
            set_err(err, errlen, "message %zu has unsupported role '%.32s' (system, user or "
                    "assistant)", i, r);
            return DUET_ERR_INVALID;
        }
    }
    return DUET_OK;
}

static void render_chatml(const chat_template_t *t, const chat_msg_t *m, const role_t *roles,
                          size_t n, bool gen, sbuf_t *b)
{
    if (n > 0 && roles[0] != ROLE_SYSTEM && t->default_system != NULL) {
        puts_(b, "<|im_start|>system\n");
        puts_(b, t->default_system);
        puts_(b, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|im_start|>");
        puts_(b, m[i].role);
        puts_(b, "\n");
        put(b, m[i].content, m[i].content_len);
        puts_(b, "<|im_end|>\n");
    }
    if (gen)
        puts_(b, "<|im_start|>assistant\n");
}

static void render_llama3(const chat_msg_t *m, size_t n, bool gen, sbuf_t *b)
{
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|start_header_id|>");
        puts_(b, m[i].role);
        puts_(b, "<|end_header_id|>\n\n");
        put_trimmed(b, m[i].content, m[i].content_len);
        puts_(b, "<|eot_id|>");
    }
    if (gen)
        puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_phi3(const chat_msg_t *m, size_t n, bool gen, sbuf_t *b)
{
    for (size_t i = 0; i < n; i++) {
        puts_(b, "<|");
        puts_(b, m[i].role);
        puts_(b, "|>\n");
        put(b, m[i].content, m[i].content_len);
        puts_(b, "<|end|>\n");
    }
    if (gen)
        puts_(b, "<|assistant|>\n");
}

/* Llama 2, Mistral and Gemma fold a leading system message into the first
 * user turn; sys is that message or NULL. */
static void render_llama2(const chat_msg_t *m, const role_t *roles, size_t n,
                          const chat_msg_t *sys, sbuf_t *b)
{
    bool first = true;

    for (size_t i = 0; i < n; i++) {
        if (roles[i] == ROLE_USER) {
            if (!first)
                puts_(b, "<s>");
            puts_(b, "[INST] ");
            if (first && sys != NULL) {
                sbuf_t c = {0};

                puts_(&c, "<<SYS>>\n");
                put(&c, sys->content, sys->content_len);
                puts_(&c, "\n<</SYS>>\n\n");
                put(&c, m[i].content, m[i].content_len);
                put_trimmed(b, c.p, c.n);
                b->oom |= c.oom;
                free(c.p);
            } else {
                put_trimmed(b, m[i].content, m[i].content_len);
            }
            puts_(b, " [/INST]");
        } else {
            puts_(b, " ");
            put_trimmed(b, m[i].content, m[i].content_len);
            puts_(b, " </s>");
        }
        first = false;
    }
}

static void render_mistral(const chat_msg_t *m, const role_t *roles, size_t n,
                           const chat_msg_t *sys, sbuf_t *b)
{
    bool first = true;

    for (size_t i = 0; i < n; i++) {
        if (roles[i] == ROLE_USER) {
            puts_(b, "[INST] ");
            if (first && sys != NULL) {
                put(b, sys->content, sys->content_len);
                puts_(b, "\n\n");
            }
            put(b, m[i].content, m[i].content_len);
            puts_(b, " [/INST]");
        } else {
            put(b, m[i].content, m[i].content_len);
            puts_(b, "</s>");
        }
        first = false;
    }
}

static void render_gemma(const chat_msg_t *m, const role_t *roles, size_t n,
                         const chat_msg_t *sys, bool gen, sbuf_t *b)
{
    bool first = true;

    for (size_t i = 0; i < n; i++) {
        puts_(b, roles[i] == ROLE_USER ? "<start_of_turn>user\n" : "<start_of_turn>model\n");
        if (first && sys != NULL && roles[i] == ROLE_USER) {
            put_trimmed(b, sys->content, sys->content_len);
            puts_(b, "\n\n");
        }
        put_trimmed(b, m[i].content, m[i].content_len);
        puts_(b, "<end_of_turn>\n");
        first = false;
    }
    if (gen)
        puts_(b, "<start_of_turn>model\n");
}

duet_status_t chat_render(const chat_template_t *t, const chat_msg_t *msgs, size_t n,
                          bool add_generation_prompt, char **text_p, size_t *len_p,
                          char *err, size_t errlen)
{
    role_t *roles;
    const chat_msg_t *sys = NULL, *m = msgs;
    const role_t *r;
    size_t k = n;
    sbuf_t b = {0};
    duet_status_t st;

    roles = malloc((n ? n : 1) * sizeof(*roles));
    if (roles == NULL)
        return DUET_ERR_NOMEM;
    r = roles;
    if ((st = parse_roles(msgs, n, roles, err, errlen)) < 0)
        goto out;
    if (t->family == CHAT_FAMILY_LLAMA2 || t->family == CHAT_FAMILY_MISTRAL ||
        t->family == CHAT_FAMILY_GEMMA) {
        if (n > 0 && roles[0] == ROLE_SYSTEM) {
            sys = &msgs[0];
            m++;
            r++;
            k--;
        }
        for (size_t i = 0; i < k; i++) {
            if (r[i] == ROLE_SYSTEM) {
                set_err(err, errlen, "message %zu: the %s template takes a system message "
                        "only first", i + (size_t)(m - msgs), family_names[t->family]);
                st = DUET_ERR_INVALID;
                goto out;
            }
        }
    }
    puts_(&b, "");
    switch (t->family) {
    case CHAT_FAMILY_CHATML:
        render_chatml(t, m, r, k, add_generation_prompt, &b);
        break;
    case CHAT_FAMILY_LLAMA3:
        render_llama3(m, k, add_generation_prompt, &b);
        break;
    case CHAT_FAMILY_PHI3:
        render_phi3(m, k, add_generation_prompt, &b);
        break;
    case CHAT_FAMILY_LLAMA2:
        render_llama2(m, r, k, sys, &b);
        break;
    case CHAT_FAMILY_MISTRAL:
        render_mistral(m, r, k, sys, &b);
        break;
    case CHAT_FAMILY_GEMMA:
        render_gemma(m, r, k, sys, add_generation_prompt, &b);
        break;
    }
    if (b.oom) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    *text_p = b.p;
    *len_p = b.n;
    b.p = NULL;
    st = DUET_OK;
out:
    free(b.p);
    free(roles);
    return st;
}
