/* OpenAI response bodies and SSE events (pure; no connection state). */
#include "oai.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#define ADD_LIT(out, lit) evbuffer_add((out), (lit), sizeof(lit) - 1)

json_t *oai_error_json(int status, const char *param, const char *msg)
{
    return json_pack("{s:{s:s, s:s, s:o, s:i}}", "error", "message", msg,
                     "type", oai_err_type(status),
                     "param", param && param[0] ? json_string(param) : json_null(),
                     "code", status);
}

json_t *oai_usage_json(size_t prompt, size_t completion)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)prompt,
                     "completion_tokens", (json_int_t)completion,
                     "total_tokens", (json_int_t)(prompt + completion));
}

static json_t *oai_envelope(const oai_meta_t *m, const char *object, json_t *choices)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", m->id, "object", object,
                     "created", (json_int_t)m->created, "model", m->model, "choices", choices);
}

json_t *oai_chunk_json(const oai_meta_t *m, int index, const char *text, size_t n,
                       const char *finish, bool with_role)
{
    json_t *choice, *fin = finish ? json_string(finish) : json_null();

    if (m->kind == OAI_CHAT) {
        json_t *delta = json_object();

        if (with_role)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (text != NULL)
            json_object_set_new(delta, "content", json_stringn(text, n));
        choice = json_pack("{s:i, s:o, s:n, s:o}", "index", index, "delta", delta,
                           "logprobs", "finish_reason", fin);
        return oai_envelope(m, "chat.completion.chunk", json_pack("[o]", choice));
    }
    choice = json_pack("{s:i, s:s%, s:n, s:o}", "index", index, "text", text ? text : "",
                       text ? n : 0, "logprobs", "finish_reason", fin);
    return oai_envelope(m, "text_completion", json_pack("[o]", choice));
}

json_t *oai_usage_chunk_json(const oai_meta_t *m, size_t prompt, size_t completion)
{
    json_t *v = oai_envelope(m, m->kind == OAI_CHAT ? "chat.completion.chunk" :
                             "text_completion", json_array());

    if (v != NULL)
        json_object_set_new(v, "usage", oai_usage_json(prompt, completion));
    return v;
}

json_t *oai_response_json(const oai_meta_t *m, const oai_choice_t *choices, size_t nchoices,
                          size_t prompt, size_t completion)
{
    json_t *arr = json_array(), *v;

    if (arr == NULL)
        return NULL;
    for (size_t i = 0; i < nchoices; i++) {
        const oai_choice_t *c = &choices[i];
        const char *text = c->text ? c->text : "";
        size_t len = c->text ? c->len : 0;
        json_t *choice;

        if (m->kind == OAI_CHAT)
            choice = json_pack("{s:I, s:{s:s, s:s%}, s:n, s:s}", "index", (json_int_t)i,
                               "message", "role", "assistant", "content", text, len,
                               "logprobs", "finish_reason", c->finish);
        else
            choice = json_pack("{s:I, s:s%, s:n, s:s}", "index", (json_int_t)i, "text", text,
                               len, "logprobs", "finish_reason", c->finish);
        if (choice == NULL || json_array_append_new(arr, choice) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    v = oai_envelope(m, m->kind == OAI_CHAT ? "chat.completion" : "text_completion", arr);
    if (v != NULL)
        json_object_set_new(v, "usage", oai_usage_json(prompt, completion));
    return v;
}

duet_status_t sse_event(struct evbuffer *out, json_t *v)
{
    char *s;
    int rc;

    if (v == NULL)
        return DUET_ERR_NOMEM;
    s = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    if (s == NULL)
        return DUET_ERR_NOMEM;
    rc = evbuffer_add(out, "data: ", 6) | evbuffer_add(out, s, strlen(s)) |
         evbuffer_add(out, "\n\n", 2);
    free(s);
    return rc == 0 ? DUET_OK : DUET_ERR_NOMEM;
}

duet_status_t sse_done(struct evbuffer *out)
{
    return evbuffer_add(out, "data: [DONE]\n\n", 14) == 0 ? DUET_OK : DUET_ERR_NOMEM;
}

duet_status_t json_escape_append(struct evbuffer *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char buf[512];
    size_t k = 0;
    int rc = 0;

    buf[k++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (k > sizeof(buf) - 8) {
            rc |= evbuffer_add(out, buf, k);
            k = 0;
        }
        if (c == '"' || c == '\\') {
            buf[k++] = '\\';
            buf[k++] = (char)c;
        } else if (c >= 0x20) {
            buf[k++] = (char)c;
        } else {
            buf[k++] = '\\';
            switch (c) {
            case '\b': buf[k++] = 'b'; break;
            case '\f': buf[k++] = 'f'; break;
            case '\n': buf[k++] = 'n'; break;
            case '\r': buf[k++] = 'r'; break;
            case '\t': buf[k++] = 't'; break;
            default:
                buf[k++] = 'u';
                buf[k++] = '0';
                buf[k++] = '0';
                buf[k++] = hex[c >> 4];
                buf[k++] = hex[c & 15];
            }
        }
    }
    buf[k++] = '"';
    rc |= evbuffer_add(out, buf, k);
    return rc == 0 ? DUET_OK : DUET_ERR_NOMEM;
}

duet_status_t sse_chunk(struct evbuffer *out, const oai_meta_t *m, int index,
                        const char *text, size_t n, const char *finish, bool with_role)
{
    bool chat = m->kind == OAI_CHAT;
    int rc = 0;

    rc |= ADD_LIT(out, "data: {\"id\":");
    rc |= json_escape_append(out, m->id, strlen(m->id));
    rc |= evbuffer_add_printf(out, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                              chat ? "chat.completion.chunk" : "text_completion",
                              (long long)m->created) < 0;
    rc |= json_escape_append(out, m->model, strlen(m->model));
    rc |= evbuffer_add_printf(out, ",\"choices\":[{\"index\":%d,", index) < 0;
    if (chat) {
        rc |= ADD_LIT(out, "\"delta\":{");
        if (with_role)
            rc |= ADD_LIT(out, "\"role\":\"assistant\"");
        if (text != NULL) {
            if (with_role)
                rc |= ADD_LIT(out, ",");
            rc |= ADD_LIT(out, "\"content\":");
            rc |= json_escape_append(out, text, n);
        }
        rc |= ADD_LIT(out, "},");
    } else {
        rc |= ADD_LIT(out, "\"text\":");
        rc |= json_escape_append(out, text ? text : "", text ? n : 0);
        rc |= ADD_LIT(out, ",");
    }
    rc |= ADD_LIT(out, "\"logprobs\":null,\"finish_reason\":");
    if (finish != NULL)
        rc |= json_escape_append(out, finish, strlen(finish));
    else
        rc |= ADD_LIT(out, "null");
    rc |= ADD_LIT(out, "}]}\n\n");
    return rc == 0 ? DUET_OK : DUET_ERR_NOMEM;
}
