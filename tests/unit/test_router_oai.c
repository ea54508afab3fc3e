/* OpenAI request validation: defaults, types, ranges, shapes. */
#include <string.h>

#include "router/oai.h"
#include "tests/tap.h"

static int parse(oai_kind_t kind, const char *body, oai_req_t *req, oai_err_t *err)
{
    return oai_parse(kind, body, strlen(body), 259, req, err);
}

/* Expect a 400 naming param. */
static void bad(oai_kind_t kind, const char *body, const char *param)
{
    oai_req_t req;
    oai_err_t err;
    int s = parse(kind, body, &req, &err);

    ok(s == DUET_ERR_INVALID && err.status == 400 && strcmp(err.param, param) == 0,
       "rejected (param '%s'): %.60s", param, body);
    if (s == DUET_ERR_INVALID && strcmp(err.param, param) != 0)
        diag("got param '%s': %s", err.param, err.message);
    if (s == DUET_OK)
        oai_req_release(&req);
}

int main(void)
{
    oai_req_t req;
    oai_err_t err;
    char deep[200];

    ok(parse(OAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
             &req, &err) == DUET_OK, "minimal chat");
    ok(req.nmsgs == 1 && strcmp(req.msgs[0].content, "hi") == 0, "message content");
    ok(req.max_tokens == -1 && req.temperature == 1.0 && req.top_p == 1.0 && req.top_k == -1,
       "defaults");
    ok(!req.stream && req.skip_special_tokens, "defaults 2");
    oai_req_release(&req);

    ok(parse(OAI_CHAT, "{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"text\","
             "\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"user\","
             "\"content\":\"q\"}],\"stream\":true,\"stream_options\":{\"include_usage\":true},"
             "\"max_completion_tokens\":5,\"stop\":[\"x\",\"y\"],\"seed\":-3,\"top_k\":0,"
             "\"unknown_field\":{\"a\":[1,2]},\"user\":\"u\"}", &req, &err) == DUET_OK,
       "chat with parts and options");
    ok(strcmp(req.msgs[0].content, "a\nb") == 0, "text parts joined with newline");
    ok(req.stream && req.include_usage && req.max_tokens == 5 && req.nstop == 2, "options");
    ok(req.has_seed && req.seed == -3 && req.top_k == -1, "seed and top_k 0 = off");
    oai_req_release(&req);

    ok(parse(OAI_COMPLETION, "{\"prompt\":[1,2,3],\"max_tokens\":4}", &req, &err) == DUET_OK &&
       req.nprompts == 1 && req.prompts[0].nids == 3 && req.prompts[0].ids[2] == 3,
       "token-id prompt");
    oai_req_release(&req);
    ok(parse(OAI_COMPLETION, "{\"prompt\":[\"one\"]}", &req, &err) == DUET_OK &&
       req.nprompts == 1 && req.prompts[0].len == 3, "list of one string");
    oai_req_release(&req);
    ok(parse(OAI_COMPLETION, "{\"prompt\":[\"a\",[5,6],\"ccc\"],\"n\":2}", &req, &err) ==
       DUET_OK && req.nprompts == 3 && req.n == 2 && req.prompts[1].nids == 2 &&
       req.prompts[2].len == 3, "batch of strings and id lists, n = 2");
    oai_req_release(&req);

    bad(OAI_CHAT, "{\"messages\":[]}", "messages");
    bad(OAI_CHAT, "{\"messages\":\"hi\"}", "messages");
    bad(OAI_CHAT, "{}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
        "messages");
    bad(OAI_CHAT, "{\"model\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", "max_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":99999999999}", "max_tokens");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"temperature\":-1}", "temperature");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"top_p\":0}", "top_p");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"top_p\":1.5}", "top_p");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"min_p\":2}", "min_p");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"presence_penalty\":3}", "presence_penalty");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"repetition_penalty\":0}", "repetition_penalty");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"n\":17}", "n");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"n\":0}", "n");
    bad(OAI_COMPLETION, "{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"],"
        "\"n\":16}", "n");
    bad(OAI_COMPLETION, "{\"prompt\":[\"a\",5]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[\"a\",\"\"]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[[1],[]]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":1}", "logprobs");
    bad(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true}",
        "logprobs");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stop\":5}", "stop");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"a\",1]}", "stop");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stream\":\"yes\"}", "stream");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}",
        "stream_options");
    bad(OAI_COMPLETION, "{\"prompt\":\"\"}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[1,-1]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":[1,259]}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":{\"a\":1}}", "prompt");
    bad(OAI_COMPLETION, "{\"prompt\":\"x\",\"echo\":true}", "echo");
    bad(OAI_COMPLETION, "[1,2]", "");
    bad(OAI_COMPLETION, "{\"prompt\":", "");
    bad(OAI_COMPLETION, "", "");
    bad(OAI_COMPLETION, "{\"prompt\":\"\xff\xfe\"}", "");
    bad(OAI_COMPLETION, "{\"prompt\":\"a\\u0000b\"}", "");
    memset(deep, '[', sizeof(deep));
    deep[sizeof(deep) - 1] = '\0';
    bad(OAI_COMPLETION, deep, "");
    ok(oai_depth_ok("{\"a\":\"[[[[[[[[\"}", 15, 2), "brackets inside strings do not count");
    ok(!oai_depth_ok("[[[", 3, 2), "depth 3 > 2");
    return tap_done();
}
