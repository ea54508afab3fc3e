/* OpenAI request parsing and validation (POST /v1/chat/completions and
 * /v1/completions), with vLLM's semantics: unknown fields are ignored,
 * wrong types and out-of-range values are 400 with the offending `param`.
 * Pure functions over a JSON body; no I/O. */
#ifndef DUET_ROUTER_OAI_H
#define DUET_ROUTER_OAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/status.h"
#include "router/text.h"
#include "router/tok.h"

#define OAI_MAX_DEPTH     32       /* JSON nesting accepted */
#define OAI_MAX_MESSAGES  4096
#define OAI_MAX_PROMPTS   64       /* prompts in one completions request */
#define OAI_MAX_N         16       /* choices per prompt */
#define OAI_MAX_CHOICES   128      /* prompts x n */

typedef enum {
    OAI_CHAT,
    OAI_COMPLETION,
} oai_kind_t;

/* An API error: HTTP status and the fields of {"error": {...}}. */
typedef struct {
    int  status;                /* 400, 401, 404, 405, 413, 429, 503, 5xx */
    char param[64];             /* offending field, "" for null */
    char message[512];
} oai_err_t;

/* Fill err and return DUET_ERR_INVALID (for `return oai_fail(...)`). */
duet_status_t oai_fail(oai_err_t *err, int status, const char *param,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* "BadRequestError" etc. for a status. */
const char *oai_err_type(int status);

/* One completions prompt: text or token ids. */
typedef struct {
    const char *text;              /* borrowed from the JSON tree; NULL for ids */
    size_t      len;
    int32_t    *ids;               /* malloc'd; NULL for text */
    size_t      nids;
} oai_prompt_t;

typedef struct {
    oai_kind_t  kind;
    json_t     *root;              /* owned; strings below are borrowed from it */
    const char *model;             /* NULL when absent */
    bool        stream;
    bool        include_usage;
    int64_t     max_tokens;        /* -1: not given (fill to the context) */
    double      temperature;       /* default 1 */
    double      top_p;             /* default 1 */
    int64_t     top_k;             /* -1: off */
    double      min_p;             /* default 0 */
    bool        has_seed;
    int64_t     seed;
    double      presence_penalty;
    double      frequency_penalty;
    double      repetition_penalty; /* default 1 */
    bool        ignore_eos;
    bool        skip_special_tokens; /* default true */
    bool        add_generation_prompt; /* default true (chat) */
    const char *stop[DETOK_MAX_STOP];
    int         nstop;
    int         n;                 /* choices per prompt, default 1 */
    /* chat */
    rtok_msg_t *msgs;              /* malloc'd; contents may be malloc'd (see owned) */
    size_t      nmsgs;
    char      **owned;             /* joined content parts to free */
    size_t      nowned;
    /* completion: a string, a list of strings, token ids or a list of
     * token-id lists; each entry is one prompt */
    oai_prompt_t *prompts;         /* malloc'd */
    size_t        nprompts;
} oai_req_t;

/* Reject bodies nested deeper than max_depth ([ and { outside strings),
 * before jansson builds a tree. */
bool oai_depth_ok(const char *body, size_t len, int max_depth);

/* Parse and validate a body. vocab bounds token ids in a prompt. On error
 * err is filled (status 400) and req is left empty. */
duet_status_t oai_parse(oai_kind_t kind, const char *body, size_t len,
                        int32_t vocab, oai_req_t *req, oai_err_t *err);

void oai_req_release(oai_req_t *req);

/* Parse the body as a JSON object with the depth bound (for /tokenize and
 * friends). *root_p is owned by the caller. */
duet_status_t oai_load_object(const char *body, size_t len, json_t **root_p,
                              oai_err_t *err);

/* Read an optional field of a given JSON kind: DUET_OK when present and
 * right, DUET_ERR_NOT_FOUND when absent or null, DUET_ERR_INVALID with err
 * filled when of the wrong type or out of range. */
duet_status_t oai_get_bool(json_t *o, const char *key, bool *v_p, oai_err_t *err);
duet_status_t oai_get_int(json_t *o, const char *key, int64_t min, int64_t max,
                          int64_t *v_p, oai_err_t *err);
duet_status_t oai_get_num(json_t *o, const char *key, double min, double max,
                          double *v_p, oai_err_t *err);

/* Parse a JSON array of token ids in [0, vocab). *ids_p malloc'd. */
duet_status_t oai_get_ids(json_t *arr, const char *param, int32_t vocab,
                          int32_t **ids_p, size_t *n_p, oai_err_t *err);

/* Collect "messages" into req->msgs (shared with /tokenize). */
duet_status_t oai_parse_messages(json_t *root, oai_req_t *req, oai_err_t *err);

/* --- responses (oai_out.c) ---------------------------------------------- */

struct evbuffer;

/* What every response and chunk of one request repeats. */
typedef struct {
    oai_kind_t  kind;
    const char *id;            /* "chatcmpl-..." / "cmpl-..." */
    int64_t     created;       /* Unix seconds */
    const char *model;
} oai_meta_t;

/* {"error": {"message", "type", "param", "code"}}; code is the status. */
json_t *oai_error_json(int status, const char *param, const char *msg);
json_t *oai_usage_json(size_t prompt, size_t completion);
/* One streaming chunk of choice `index`: text (UTF-8, n bytes; NULL in the
 * final chunk), finish ("stop" / "length", or NULL), with_role (chat: add
 * delta.role = "assistant", for the choice's first chunk). */
json_t *oai_chunk_json(const oai_meta_t *m, int index, const char *text, size_t n,
                       const char *finish, bool with_role);
/* The final usage chunk of a stream: empty choices and usage. */
json_t *oai_usage_chunk_json(const oai_meta_t *m, size_t prompt, size_t completion);
/* One choice of a whole response. */
typedef struct {
    const char *text;          /* UTF-8, len bytes (NULL: empty) */
    size_t      len;
    const char *finish;        /* "stop" / "length" */
} oai_choice_t;

/* A whole non-streaming response with nchoices choices (index = position). */
json_t *oai_response_json(const oai_meta_t *m, const oai_choice_t *choices, size_t nchoices,
                          size_t prompt, size_t completion);

/* Append the SSE event `data: <v as compact JSON>\n\n` to out; takes v
 * (also on failure; NULL is DUET_ERR_NOMEM). */
duet_status_t sse_event(struct evbuffer *out, json_t *v);
/* The hot path of streaming: append the SSE event of one chunk (the same
 * JSON as oai_chunk_json) to out without building a JSON tree. text must be
 * valid UTF-8. */
duet_status_t sse_chunk(struct evbuffer *out, const oai_meta_t *m, int index,
                        const char *text, size_t n, const char *finish, bool with_role);

/* The hot path's pieces: for a chunk that carries text and neither the
 * role nor a finish_reason, sse_text_prefix (appended to out; built once
 * per choice) + the text as a JSON string literal (json_escape_to) +
 * sse_text_suffix are byte for byte sse_chunk(out, m, index, text, n,
 * NULL, false). */
duet_status_t sse_text_prefix(struct evbuffer *out, const oai_meta_t *m, int index);
const char *sse_text_suffix(oai_kind_t kind, size_t *len_p);

/* Append s (n bytes of UTF-8) as a JSON string literal with its quotes. */
duet_status_t json_escape_append(struct evbuffer *out, const char *s, size_t n);
/* The same into out, which has room for JSON_ESCAPE_MAX(n) bytes; returns
 * the bytes written. */
#define JSON_ESCAPE_MAX(n) (6 * (size_t)(n) + 2)
size_t json_escape_to(char *out, const char *s, size_t n);

/* Append `data: [DONE]\n\n`. */
duet_status_t sse_done(struct evbuffer *out);

#endif
