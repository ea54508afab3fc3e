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

size_t json_escape_to(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t k = 0;

    out[k++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\') {
            out[k++] = '\\';
            out[k++] = (char)c;
        } else if (c >= 0x20) {
            out[k++] = (char)c;
        } else {
            out[k++] = '\\';
            switch (c) {
            case '\b': out[k++] = 'b'; break;
            case '\f': out[k++] = 'f'; break;
            case '\n': out[k++] = 'n'; break;
            case '\r': out[k++] = 'r'; break;
            case '\t': out[k++] = 't'; break;
            default:
                out[k++] = 'u';
                out[k++] = '0';
                out[k++] = '0';
                out[k++] = hex[c >> 4];
                out[k++] = hex[c & 15];
            }
        }
    }
    out[k++] = '"';
    return k;
}

duet_status_t json_escape_append(struct evbuffer *out, const char *s, size_t n)
{
    char buf[JSON_ESCAPE_MAX(64)];
    int rc = 0;

    /* in pieces of 64 input bytes; the quotes of the pieces are dropped */
    rc |= evbuffer_add(out, "\"", 1);
    do {
        size_t take = n < 64 ? n : 64, k = json_escape_to(buf, s, take);

        rc |= evbuffer_add(out, buf + 1, k - 2);
        s += take;
        n -= take;
    } while (n > 0);
    rc |= evbuffer_add(out, "\"", 1);
    return rc == 0 ? DUET_OK : DUET_ERR_NOMEM;
}

/* `data: {"id":...,"choices":[{"index":I,` */
static int sse_head(struct evbuffer *out, const oai_meta_t *m, int index)
{
    int rc = 0;

    rc |= ADD_LIT(out, "data: {\"id\":");
    rc |= json_escape_append(out, m->id, strlen(m->id));
    rc |= evbuffer_add_printf(out, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                              m->kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion",
                              (long long)m->created) < 0;
    rc |= json_escape_append(out, m->model, strlen(m->model));
    rc |= evbuffer_add_printf(out, ",\"choices\":[{\"index\":%d,", index) < 0;
    return rc;
}

duet_status_t sse_text_prefix(struct evbuffer *out, const oai_meta_t *m, int index)
{
    int rc = sse_head(out, m, index);

    if (m->kind == OAI_CHAT)
        rc |= ADD_LIT(out, "\"delta\":{\"content\":");
    else
        rc |= ADD_LIT(out, "\"text\":");
    return rc == 0 ? DUET_OK : DUET_ERR_NOMEM;
}

const char *sse_text_suffix(oai_kind_t kind, size_t *len_p)
{
    static const char chat[] = "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    static const char comp[] = ",\"logprobs\":null,\"finish_reason\":null}]}\n\n";

    *len_p = kind == OAI_CHAT ? sizeof(chat) - 1 : sizeof(comp) - 1;
    return kind == OAI_CHAT ? chat : comp;
}

duet_status_t sse_chunk(struct evbuffer *out, const oai_meta_t *m, int index,
                        const char *text, size_t n, const char *finish, bool with_role)
{
    bool chat = m->kind == OAI_CHAT;
    int rc = 0;

    rc |= sse_head(out, m, index);
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
