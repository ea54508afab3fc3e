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
    /* chat */
    rtok_msg_t *msgs;              /* malloc'd; contents may be malloc'd (see owned) */
    size_t      nmsgs;
    char      **owned;             /* joined content parts to free */
    size_t      nowned;
    /* completion: exactly one of text / ids */
    const char *prompt_text;
    size_t      prompt_len;
    int32_t    *prompt_ids;        /* malloc'd */
    size_t      nprompt_ids;
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

#endif
