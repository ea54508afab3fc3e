/* OpenAI request parsing and validation. */
#define DUET_LOG_COMPONENT "router"
#include "oai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

duet_status_t oai_fail(oai_err_t *err, int status, const char *param,
                       const char *fmt, ...)
{
    va_list ap;

    err->status = status;
    snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return DUET_ERR_INVALID;
}

const char *oai_err_type(int status)
{
    switch (status) {
    case 400: return "BadRequestError";
    case 401: return "AuthenticationError";
    case 404: return "NotFoundError";
    case 405: return "MethodNotAllowedError";
    case 413: return "RequestTooLargeError";
    case 429: return "RateLimitError";
    case 503: return "ServiceUnavailableError";
    default:  return status >= 500 ? "InternalServerError" : "BadRequestError";
    }
}

bool oai_depth_ok(const char *body, size_t len, int max_depth)
{
    int depth = 0;
    bool in_str = false, esc = false;

    for (size_t i = 0; i < len; i++) {
        char c = body[i];

        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                return false;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return true;
}

duet_status_t oai_load_object(const char *body, size_t len, json_t **root_p,
                              oai_err_t *err)
{
    json_error_t jerr;
    json_t *root;

    if (len == 0)
        return oai_fail(err, 400, NULL, "request body is empty; expected a JSON object");
    if (!oai_depth_ok(body, len, OAI_MAX_DEPTH))
        return oai_fail(err, 400, NULL, "JSON nested deeper than %d levels", OAI_MAX_DEPTH);
    root = json_loadb(body, len, 0, &jerr);
    if (root == NULL)
        return oai_fail(err, 400, NULL, "invalid JSON at line %d column %d: %s",
                        jerr.line, jerr.column, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return oai_fail(err, 400, NULL, "request body must be a JSON object");
    }
    *root_p = root;
    return DUET_OK;
}

static json_t *oai_field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return (v == NULL || json_is_null(v)) ? NULL : v;
}

duet_status_t oai_get_bool(json_t *o, const char *key, bool *v_p, oai_err_t *err)
{
    json_t *v = oai_field(o, key);

    if (v == NULL)
        return DUET_ERR_NOT_FOUND;
    if (!json_is_boolean(v))
        return oai_fail(err, 400, key, "'%s' must be a boolean", key);
    *v_p = json_is_true(v);
    return DUET_OK;
}

duet_status_t oai_get_int(json_t *o, const char *key, int64_t min, int64_t max,
                          int64_t *v_p, oai_err_t *err)
{
    json_t *v = oai_field(o, key);
    int64_t x;

    if (v == NULL)
        return DUET_ERR_NOT_FOUND;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e18) {
        x = (int64_t)json_real_value(v);
    } else {
        return oai_fail(err, 400, key, "'%s' must be an integer", key);
    }
    if (x < min || x > max)
        return oai_fail(err, 400, key, "'%s' must be between %lld and %lld, got %lld",
                        key, (long long)min, (long long)max, (long long)x);
    *v_p = x;
    return DUET_OK;
}

duet_status_t oai_get_num(json_t *o, const char *key, double min, double max,
                          double *v_p, oai_err_t *err)
{
    json_t *v = oai_field(o, key);
    double x;

    if (v == NULL)
        return DUET_ERR_NOT_FOUND;
    if (!json_is_number(v))
        return oai_fail(err, 400, key, "'%s' must be a number", key);
    x = json_number_value(v);
    if (!(x >= min && x <= max))
        return oai_fail(err, 400, key, "'%s' must be between %g and %g, got %g",
                        key, min, max, x);
    *v_p = x;
    return DUET_OK;
}

duet_status_t oai_get_ids(json_t *arr, const char *param, int32_t vocab,
                          int32_t **ids_p, size_t *n_p, oai_err_t *err)
{
    size_t n = json_array_size(arr);
    int32_t *ids;

    if (n == 0)
        return oai_fail(err, 400, param, "'%s' must not be empty", param);
    ids = malloc(n * sizeof(*ids));
    if (ids == NULL)
        return oai_fail(err, 500, param, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, i);

        if (!json_is_integer(e) || json_integer_value(e) < 0 ||
            json_integer_value(e) >= vocab) {
            free(ids);
            return oai_fail(err, 400, param,
                            "'%s' must hold token ids in [0, %d); item %zu is not",
                            param, vocab, i);
        }
        ids[i] = (int32_t)json_integer_value(e);
    }
    *ids_p = ids;
    *n_p = n;
    return DUET_OK;
}

static const char *const oai_roles[] = {"system", "user", "assistant", "tool", "developer"};

/* Join the text parts of a content array with "\n", as vLLM does. */
static duet_status_t oai_join_parts(json_t *parts, oai_req_t *req, const char **out_p,
                                    oai_err_t *err)
{
    sbuf_t b;
    size_t i;
    json_t *part;
    char **owned;

    sbuf_init(&b);
    json_array_foreach(parts, i, part) {
        json_t *type = json_object_get(part, "type");
        json_t *text = json_object_get(part, "text");

        if (!json_is_object(part) || !json_is_string(type)) {
            sbuf_free(&b);
            return oai_fail(err, 400, "messages",
                            "content parts must be objects with a string 'type'");
        }
        if (strcmp(json_string_value(type), "text") != 0) {
            sbuf_free(&b);
            return oai_fail(err, 400, "messages",
                            "content part type '%s' is not supported (only 'text')",
                            json_string_value(type));
        }
        if (!json_is_string(text)) {
            sbuf_free(&b);
            return oai_fail(err, 400, "messages", "a text content part needs a string 'text'");
        }
        if ((i > 0 && sbuf_add(&b, "\n", 1) != DUET_OK) ||
            sbuf_add(&b, json_string_value(text), json_string_length(text)) != DUET_OK) {
            sbuf_free(&b);
            return oai_fail(err, 500, NULL, "out of memory");
        }
    }
    if (sbuf_add(&b, "", 0) != DUET_OK)
        return oai_fail(err, 500, NULL, "out of memory");
    owned = realloc(req->owned, (req->nowned + 1) * sizeof(*owned));
    if (owned == NULL) {
        sbuf_free(&b);
        return oai_fail(err, 500, NULL, "out of memory");
    }
    req->owned = owned;
    req->owned[req->nowned++] = b.p;
    *out_p = b.p;
    return DUET_OK;
}

duet_status_t oai_parse_messages(json_t *root, oai_req_t *req, oai_err_t *err)
{
    json_t *msgs = json_object_get(root, "messages"), *m;
    size_t i;

    if (msgs == NULL || json_is_null(msgs))
        return oai_fail(err, 400, "messages", "'messages' is required");
    if (!json_is_array(msgs))
        return oai_fail(err, 400, "messages", "'messages' must be an array");
    if (json_array_size(msgs) == 0)
        return oai_fail(err, 400, "messages", "'messages' must not be empty");
    if (json_array_size(msgs) > OAI_MAX_MESSAGES)
        return oai_fail(err, 400, "messages", "more than %d messages", OAI_MAX_MESSAGES);
    req->msgs = calloc(json_array_size(msgs), sizeof(*req->msgs));
    if (req->msgs == NULL)
        return oai_fail(err, 500, NULL, "out of memory");
    json_array_foreach(msgs, i, m) {
        json_t *role, *content;
        const char *r;
        bool known = false;

        if (!json_is_object(m))
            return oai_fail(err, 400, "messages", "messages[%zu] must be an object", i);
        role = json_object_get(m, "role");
        if (!json_is_string(role))
            return oai_fail(err, 400, "messages", "messages[%zu].role must be a string", i);
        r = json_string_value(role);
        for (size_t k = 0; k < sizeof(oai_roles) / sizeof(oai_roles[0]); k++)
            known |= strcmp(r, oai_roles[k]) == 0;
        if (!known)
            return oai_fail(err, 400, "messages",
                            "messages[%zu].role '%.64s' is not one of system, user, "
                            "assistant, tool, developer", i, r);
        content = json_object_get(m, "content");
        if (content == NULL || json_is_null(content)) {
            if (strcmp(r, "assistant") != 0)
                return oai_fail(err, 400, "messages", "messages[%zu].content is required", i);
            req->msgs[i].content = "";
        } else if (json_is_string(content)) {
            req->msgs[i].content = json_string_value(content);
        } else if (json_is_array(content)) {
            CHECK(oai_join_parts(content, req, &req->msgs[i].content, err));
        } else {
            return oai_fail(err, 400, "messages",
                            "messages[%zu].content must be a string or an array of parts", i);
        }
        req->msgs[i].role = r;
        req->nmsgs++;
    }
    return DUET_OK;
}

static duet_status_t oai_prompt_one(json_t *p, int32_t vocab, oai_prompt_t *out,
                                    oai_err_t *err)
{
    if (json_is_string(p)) {
        if (json_string_length(p) == 0)
            return oai_fail(err, 400, "prompt", "'prompt' must not be empty");
        out->text = json_string_value(p);
        out->len = json_string_length(p);
        return DUET_OK;
    }
    if (!json_is_array(p))
        return oai_fail(err, 400, "prompt",
                        "'prompt' must be a string, a list of strings, a list of token ids "
                        "or a list of token-id lists");
    return oai_get_ids(p, "prompt", vocab, &out->ids, &out->nids, err);
}

static duet_status_t oai_parse_prompt(json_t *root, int32_t vocab, oai_req_t *req,
                                      oai_err_t *err)
{
    json_t *p = json_object_get(root, "prompt"), *e;
    size_t i, n = 1;
    bool batch;

    if (p == NULL || json_is_null(p))
        return oai_fail(err, 400, "prompt", "'prompt' is required");
    if (json_is_array(p) && json_array_size(p) == 0)
        return oai_fail(err, 400, "prompt", "'prompt' must not be empty");
    /* a list of strings or of id lists is a batch; a list of ints is one prompt */
    batch = json_is_array(p) && (json_is_string(json_array_get(p, 0)) ||
                                 json_is_array(json_array_get(p, 0)));
    if (batch) {
        n = json_array_size(p);
        if (n > OAI_MAX_PROMPTS)
            return oai_fail(err, 400, "prompt", "at most %d prompts in one request",
                            OAI_MAX_PROMPTS);
        json_array_foreach(p, i, e)
            if (!json_is_string(e) && !json_is_array(e))
                return oai_fail(err, 400, "prompt", "'prompt' mixes strings, lists and "
                                "other values");
    }
    req->prompts = calloc(n, sizeof(*req->prompts));
    if (req->prompts == NULL)
        return oai_fail(err, 500, NULL, "out of memory");
    for (i = 0; i < n; i++) {
        CHECK(oai_prompt_one(batch ? json_array_get(p, i) : p, vocab, &req->prompts[i], err));
        req->nprompts++;
    }
    return DUET_OK;
}

static duet_status_t oai_parse_stop(json_t *root, oai_req_t *req, oai_err_t *err)
{
    json_t *s = json_object_get(root, "stop"), *e;
    size_t i;

    if (s == NULL || json_is_null(s))
        return DUET_OK;
    if (json_is_string(s)) {
        if (json_string_length(s) > DETOK_MAX_STOP_LEN)
            return oai_fail(err, 400, "stop", "a stop string is longer than %d bytes",
                            DETOK_MAX_STOP_LEN);
        req->stop[req->nstop++] = json_string_value(s);
        return DUET_OK;
    }
    if (!json_is_array(s))
        return oai_fail(err, 400, "stop", "'stop' must be a string or a list of strings");
    if (json_array_size(s) > DETOK_MAX_STOP)
        return oai_fail(err, 400, "stop", "at most %d stop strings", DETOK_MAX_STOP);
    json_array_foreach(s, i, e) {
        if (!json_is_string(e))
            return oai_fail(err, 400, "stop", "'stop' must be a string or a list of strings");
        if (json_string_length(e) > DETOK_MAX_STOP_LEN)
            return oai_fail(err, 400, "stop", "a stop string is longer than %d bytes",
                            DETOK_MAX_STOP_LEN);
        req->stop[req->nstop++] = json_string_value(e);
    }
    return DUET_OK;
}

/* Optional fields: NOT_FOUND keeps the default, INVALID is returned. */
#define OAI_OPT(expr)                                   \
    do {                                                \
        duet_status_t _s = (expr);                      \
        if (_s != DUET_OK && _s != DUET_ERR_NOT_FOUND)  \
            return _s;                                  \
    } while (0)

static duet_status_t oai_parse_fields(oai_kind_t kind, int32_t vocab, oai_req_t *req,
                                      oai_err_t *err)
{
    json_t *root = req->root, *v, *so;
    int64_t n = 1, mt = -1, best_of = 1;
    bool lp = false;

    v = json_object_get(root, "model");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v))
            return oai_fail(err, 400, "model", "'model' must be a string");
        req->model = json_string_value(v);
    }
    OAI_OPT(oai_get_bool(root, "stream", &req->stream, err));
    so = json_object_get(root, "stream_options");
    if (so != NULL && !json_is_null(so)) {
        if (!json_is_object(so))
            return oai_fail(err, 400, "stream_options", "'stream_options' must be an object");
        if (!req->stream)
            return oai_fail(err, 400, "stream_options",
                            "'stream_options' is only allowed when 'stream' is true");
        OAI_OPT(oai_get_bool(so, "include_usage", &req->include_usage, err));
    }
    OAI_OPT(oai_get_int(root, "max_tokens", 1, INT32_MAX, &mt, err));
    if (kind == OAI_CHAT)
        OAI_OPT(oai_get_int(root, "max_completion_tokens", 1, INT32_MAX, &mt, err));
    req->max_tokens = mt;
    OAI_OPT(oai_get_num(root, "temperature", 0, 100, &req->temperature, err));
    OAI_OPT(oai_get_num(root, "top_p", 1e-9, 1, &req->top_p, err));
    OAI_OPT(oai_get_int(root, "top_k", -1, INT32_MAX, &req->top_k, err));
    if (req->top_k == 0)
        req->top_k = -1;
    OAI_OPT(oai_get_num(root, "min_p", 0, 1, &req->min_p, err));
    if (oai_get_int(root, "seed", INT64_MIN, INT64_MAX, &req->seed, err) == DUET_OK)
        req->has_seed = true;
    else if (err->status)
        return DUET_ERR_INVALID;
    OAI_OPT(oai_get_num(root, "presence_penalty", -2, 2, &req->presence_penalty, err));
    OAI_OPT(oai_get_num(root, "frequency_penalty", -2, 2, &req->frequency_penalty, err));
    OAI_OPT(oai_get_num(root, "repetition_penalty", 1e-6, 10, &req->repetition_penalty, err));
    OAI_OPT(oai_get_bool(root, "ignore_eos", &req->ignore_eos, err));
    OAI_OPT(oai_get_bool(root, "skip_special_tokens", &req->skip_special_tokens, err));
    OAI_OPT(oai_get_int(root, "n", 1, OAI_MAX_N, &n, err));
    req->n = (int)n;
    OAI_OPT(oai_get_int(root, "best_of", 1, 128, &best_of, err));
    if (best_of != 1)
        return oai_fail(err, 400, "best_of", "best_of > 1 is not supported");
    if (kind == OAI_CHAT) {
        OAI_OPT(oai_get_bool(root, "logprobs", &lp, err));
        if (lp || oai_field(root, "top_logprobs") != NULL)
            return oai_fail(err, 400, lp ? "logprobs" : "top_logprobs",
                            "logprobs are not supported by this server");
        OAI_OPT(oai_get_bool(root, "add_generation_prompt", &req->add_generation_prompt, err));
    } else {
        bool echo = false;

        if (oai_field(root, "logprobs") != NULL)
            return oai_fail(err, 400, "logprobs", "logprobs are not supported by this server");
        OAI_OPT(oai_get_bool(root, "echo", &echo, err));
        if (echo)
            return oai_fail(err, 400, "echo", "echo is not supported by this server");
        if (oai_field(root, "suffix") != NULL)
            return oai_fail(err, 400, "suffix", "suffix is not supported by this server");
    }
    CHECK(oai_parse_stop(root, req, err));
    if (kind == OAI_CHAT)
        return oai_parse_messages(root, req, err);
    CHECK(oai_parse_prompt(root, vocab, req, err));
    if (req->nprompts * (size_t)req->n > OAI_MAX_CHOICES)
        return oai_fail(err, 400, "n", "prompts x n is %zu, more than %d choices",
                        req->nprompts * (size_t)req->n, OAI_MAX_CHOICES);
    return DUET_OK;
}

duet_status_t oai_parse(oai_kind_t kind, const char *body, size_t len,
                        int32_t vocab, oai_req_t *req, oai_err_t *err)
{
    duet_status_t status;

    memset(req, 0, sizeof(*req));
    memset(err, 0, sizeof(*err));
    req->kind = kind;
    req->max_tokens = -1;
    req->temperature = 1.0;
    req->top_p = 1.0;
    req->top_k = -1;
    req->repetition_penalty = 1.0;
    req->skip_special_tokens = true;
    req->add_generation_prompt = true;
    req->n = 1;
    status = oai_load_object(body, len, &req->root, err);
    if (status != DUET_OK)
        return status;
    status = oai_parse_fields(kind, vocab, req, err);
    if (status != DUET_OK) {
        if (err->status == 0)
            oai_fail(err, 500, NULL, "internal error: %s", duet_status_str(status));
        oai_req_release(req);
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

void oai_req_release(oai_req_t *req)
{
    for (size_t i = 0; i < req->nowned; i++)
        free(req->owned[i]);
    free(req->owned);
    free(req->msgs);
    for (size_t i = 0; i < req->nprompts; i++)
        free(req->prompts[i].ids);
    free(req->prompts);
    if (req->root != NULL)
        json_decref(req->root);
    memset(req, 0, sizeof(*req));
}
