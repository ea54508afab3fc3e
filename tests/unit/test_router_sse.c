/* OpenAI response shapes and SSE framing: exact bytes of events, chunk and
 * response fields, JSON escaping of awkward text (NUL, quotes, non-ASCII),
 * the usage chunk and [DONE]. */
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "router/oai.h"
#include "tests/tap.h"

/* Take everything in buf as a NUL-terminated string (static storage). */
static const char *drain(struct evbuffer *buf)
{
    static char s[4096];
    size_t n = evbuffer_get_length(buf);

    if (n >= sizeof(s))
        n = sizeof(s) - 1;
    evbuffer_remove(buf, s, n);
    s[n] = '\0';
    return s;
}

/* Parse one "data: {...}\n\n" event. */
static json_t *parse_event(const char *ev)
{
    size_t n = strlen(ev);

    if (n < 8 || strncmp(ev, "data: ", 6) != 0 || strcmp(ev + n - 2, "\n\n") != 0)
        return NULL;
    return json_loadb(ev + 6, n - 8, JSON_ALLOW_NUL, NULL);
}

int main(void)
{
    struct evbuffer *buf = evbuffer_new();
    oai_meta_t chat = {OAI_CHAT, "chatcmpl-1", 1700000000, "m"};
    oai_meta_t comp = {OAI_COMPLETION, "cmpl-2", 1700000001, "m"};
    const char awkward[] = "a\"b\\c\n\0d\xe2\x82\xac";   /* 11 bytes incl. NUL */
    json_t *v, *c;

    /* chat chunk with role, awkward text */
    ok(sse_event(buf, oai_chunk_json(&chat, 0, awkward, sizeof(awkward) - 1, NULL, true)) == DUET_OK,
       "chat chunk encoded");
    v = parse_event(drain(buf));
    ok(v != NULL, "event is data: <json>\\n\\n");
    ok(strcmp(json_string_value(json_object_get(v, "object")), "chat.completion.chunk") == 0,
       "object");
    ok(strcmp(json_string_value(json_object_get(v, "id")), "chatcmpl-1") == 0, "id");
    is_int(json_integer_value(json_object_get(v, "created")), 1700000000, "created");
    c = json_array_get(json_object_get(v, "choices"), 0);
    ok(strcmp(json_string_value(json_object_get(json_object_get(c, "delta"), "role")),
              "assistant") == 0, "role in the first chunk");
    {
        json_t *t = json_object_get(json_object_get(c, "delta"), "content");

        ok(json_string_length(t) == sizeof(awkward) - 1 &&
           memcmp(json_string_value(t), awkward, sizeof(awkward) - 1) == 0,
           "text with quote, backslash, newline, NUL and euro round-trips");
    }
    ok(json_is_null(json_object_get(c, "finish_reason")), "finish_reason null mid-stream");
    is_int(json_integer_value(json_object_get(c, "index")), 0, "index 0");
    json_decref(v);

    /* final chat chunk: empty delta, finish reason */
    sse_event(buf, oai_chunk_json(&chat, 3, NULL, 0, "length", false));
    v = parse_event(drain(buf));
    c = json_array_get(json_object_get(v, "choices"), 0);
    ok(json_object_size(json_object_get(c, "delta")) == 0, "final delta is empty");
    ok(strcmp(json_string_value(json_object_get(c, "finish_reason")), "length") == 0, "length");
    is_int(json_integer_value(json_object_get(c, "index")), 3, "choice index");
    json_decref(v);

    /* completion chunk */
    sse_event(buf, oai_chunk_json(&comp, 0, "hi", 2, NULL, false));
    v = parse_event(drain(buf));
    c = json_array_get(json_object_get(v, "choices"), 0);
    ok(strcmp(json_string_value(json_object_get(v, "object")), "text_completion") == 0 &&
       strcmp(json_string_value(json_object_get(c, "text")), "hi") == 0 &&
       json_is_null(json_object_get(c, "logprobs")), "completion chunk");
    json_decref(v);

    /* usage chunk: empty choices */
    sse_event(buf, oai_usage_chunk_json(&chat, 7, 3));
    v = parse_event(drain(buf));
    ok(json_array_size(json_object_get(v, "choices")) == 0, "usage chunk has no choices");
    is_int(json_integer_value(json_object_get(json_object_get(v, "usage"), "total_tokens")), 10,
           "total tokens");
    json_decref(v);

    sse_done(buf);
    ok(strcmp(drain(buf), "data: [DONE]\n\n") == 0, "[DONE] event");

    /* whole responses */
    v = oai_response_json(&chat, (oai_choice_t[]){{"ok", 2, "stop"}}, 1, 5, 2);
    c = json_array_get(json_object_get(v, "choices"), 0);
    ok(strcmp(json_string_value(json_object_get(v, "object")), "chat.completion") == 0 &&
       strcmp(json_string_value(json_object_get(json_object_get(c, "message"), "content")),
              "ok") == 0 &&
       strcmp(json_string_value(json_object_get(json_object_get(c, "message"), "role")),
              "assistant") == 0, "chat response");
    is_int(json_integer_value(json_object_get(json_object_get(v, "usage"), "completion_tokens")),
           2, "usage in the response");
    json_decref(v);
    v = oai_response_json(&comp, (oai_choice_t[]){{NULL, 0, "length"}, {"x", 1, "stop"}}, 2,
                          5, 0);
    c = json_array_get(json_object_get(v, "choices"), 0);
    ok(strcmp(json_string_value(json_object_get(c, "text")), "") == 0 &&
       strcmp(json_string_value(json_object_get(c, "finish_reason")), "length") == 0,
       "empty completion choice");
    c = json_array_get(json_object_get(v, "choices"), 1);
    ok(strcmp(json_string_value(json_object_get(c, "text")), "x") == 0 &&
       json_integer_value(json_object_get(c, "index")) == 1, "second choice");
    json_decref(v);

    /* error shape */
    v = oai_error_json(400, "max_tokens", "bad");
    c = json_object_get(v, "error");
    ok(json_object_size(c) == 4 && json_integer_value(json_object_get(c, "code")) == 400 &&
       strcmp(json_string_value(json_object_get(c, "param")), "max_tokens") == 0 &&
       strcmp(json_string_value(json_object_get(c, "type")), "BadRequestError") == 0,
       "error shape");
    json_decref(v);
    v = oai_error_json(503, NULL, "x");
    ok(json_is_null(json_object_get(json_object_get(v, "error"), "param")), "null param");
    json_decref(v);
    ok(sse_event(buf, NULL) == DUET_ERR_NOMEM, "NULL value refused");

    /* the hand-formatted hot path says exactly what the jansson path says */
    {
        static const char *const texts[] = {"", "plain", "q\"uo\\te", "\x01\x1f\t\n\r\b\f",
                                            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "/<>&"};
        oai_meta_t odd = {OAI_CHAT, "id\"x", 5, "m\\odel\n"};
        const oai_meta_t *metas[] = {&chat, &comp, &odd};
        int same = 0, total = 0;

        for (int mi = 0; mi < 3; mi++)
            for (int ti = -1; ti < 6; ti++)
                for (int role = 0; role < 2; role++) {
                    const char *t = ti < 0 ? NULL : texts[ti];
                    size_t tn = t ? strlen(t) : 0;
                    const char *fin = ti < 0 ? "stop" : NULL;
                    json_t *a, *b;

                    sse_event(buf, oai_chunk_json(metas[mi], ti + 1, t, tn, fin, role));
                    a = parse_event(drain(buf));
                    sse_chunk(buf, metas[mi], ti + 1, t, tn, fin, role);
                    b = parse_event(drain(buf));
                    total++;
                    same += a != NULL && b != NULL && json_equal(a, b);
                    json_decref(a);
                    json_decref(b);
                }
        is_int(same, total, "sse_chunk equals the jansson chunk in %d cases", total);
        sse_chunk(buf, &comp, 0, "a\0b", 3, NULL, false);
        v = parse_event(drain(buf));
        c = json_array_get(json_object_get(v, "choices"), 0);
        ok(json_string_length(json_object_get(c, "text")) == 3, "NUL escaped as \\u0000");
        json_decref(v);
    }

    /* the fast text path's pieces are byte for byte sse_chunk's text chunk,
     * including texts longer than json_escape_append's 64-byte pieces */
    {
        static const char *const texts[] = {"", "plain", "q\"uo\\te", "\x01\x1f\t\n\r\b\f",
                                            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "/<>&"};
        oai_meta_t odd = {OAI_CHAT, "id\"x", 5, "m\\odel\n"};
        const oai_meta_t *metas[] = {&chat, &comp, &odd};
        char long_text[300], esc[JSON_ESCAPE_MAX(300)];
        int same = 0, total = 0;

        for (size_t i = 0; i < sizeof(long_text); i++)
            long_text[i] = (char)(i % 7 == 0 ? '"' : i % 11 == 0 ? '\n' : 'a' + i % 26);
        for (int mi = 0; mi < 3; mi++)
            for (int ti = 0; ti < 8; ti++) {
                const char *t = ti < 6 ? texts[ti] : long_text;
                size_t tn = ti < 6 ? strlen(t) : ti == 6 ? 64 : sizeof(long_text);
                const char *suf;
                size_t nsuf, ne, na, nb;
                char *a, *b;

                sse_chunk(buf, metas[mi], ti, t, tn, NULL, false);
                na = evbuffer_get_length(buf);
                a = malloc(na);
                evbuffer_remove(buf, a, na);
                sse_text_prefix(buf, metas[mi], ti);
                ne = json_escape_to(esc, t, tn);
                evbuffer_add(buf, esc, ne);
                suf = sse_text_suffix(metas[mi]->kind, &nsuf);
                evbuffer_add(buf, suf, nsuf);
                nb = evbuffer_get_length(buf);
                b = malloc(nb);
                evbuffer_remove(buf, b, nb);
                total++;
                same += na == nb && memcmp(a, b, na) == 0;
                free(a);
                free(b);
            }
        is_int(same, total, "prefix + escaped text + suffix equal sse_chunk in %d cases", total);
        ok(json_escape_to(esc, "\x01\"", 2) == 10 && memcmp(esc, "\"\\u0001\\\"\"", 10) == 0,
           "json_escape_to: control character and quote");
    }
    evbuffer_free(buf);
    return tap_done();
}
