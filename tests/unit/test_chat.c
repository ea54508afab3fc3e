/* Chat templates: detection of each family from template text (SmolLM2's
 * verbatim), rendering against hand-written expected strings, the default
 * system prompt, forced names, and errors. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "tests/tap.h"

/* SmolLM2-135M-Instruct's tokenizer.chat_template, verbatim. */
static const char smollm2_tmpl[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

#define M(r, c) {r, c, sizeof(c) - 1}

static char *render(const chat_template_t *t, const chat_msg_t *m, size_t n, bool gen)
{
    char *txt = NULL, err[256] = "";
    size_t len;

    if (chat_render(t, m, n, gen, &txt, &len, err, sizeof(err)) != DUET_OK) {
        diag("render: %s", err);
        return NULL;
    }
    if (strlen(txt) != len)
        diag("length mismatch");
    return txt;
}

static void check(const chat_template_t *t, const chat_msg_t *m, size_t n, bool gen,
                  const char *want, const char *what)
{
    char *got = render(t, m, n, gen);

    ok(got != NULL && strcmp(got, want) == 0, "%s", what);
    if (got != NULL && strcmp(got, want) != 0)
        diag("got  '%s'\n# want '%s'", got, want);
    free(got);
}

static chat_template_t *detect(const char *src)
{
    chat_template_t *t = NULL;
    char err[256];

    chat_template_detect(src, strlen(src), &t, err, sizeof(err));
    return t;
}

static void test_chatml(void)
{
    chat_template_t *t = detect(smollm2_tmpl);
    const chat_msg_t one[] = {M("user", "Hi")};
    const chat_msg_t sys[] = {M("system", "Be brief."), M("user", "Hi")};
    const chat_msg_t multi[] = {M("user", "Hi"), M("assistant", "Hello!"), M("user", "2+2?")};

    ok(t != NULL && chat_template_family(t) == CHAT_FAMILY_CHATML, "SmolLM2 is ChatML");
    if (t == NULL)
        return;
    ok(chat_template_default_system(t) != NULL &&
       strcmp(chat_template_default_system(t),
              "You are a helpful AI assistant named SmolLM, trained by Hugging Face") == 0,
       "default system prompt extracted from the template");
    check(t, one, 1, true,
          "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
          "default system prompt inserted, generation prompt");
    check(t, sys, 2, false, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
          "<|im_end|>\n", "own system prompt, no generation prompt");
    check(t, multi, 3, true,
          "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
          "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", "multi-turn");
    check(t, NULL, 0, true, "<|im_start|>assistant\n", "no messages: the loop adds nothing");
    chat_template_destroy(t);

    /* Qwen-style: escaped newline, the default in a later literal. */
    t = detect("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
               "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>"
               "system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}");
    ok(t != NULL && chat_template_default_system(t) != NULL &&
       strcmp(chat_template_default_system(t), "You are Qwen.") == 0, "Qwen default system");
    chat_template_destroy(t);
    t = detect("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
               "'<|im_end|>\\n'}}{% endfor %}");
    ok(t != NULL && chat_template_default_system(t) == NULL, "plain ChatML has no default");
    chat_template_destroy(t);
}

static void test_families(void)
{
    const chat_msg_t conv[] = {M("system", "S"), M("user", " U1 "), M("assistant", "A1"),
                               M("user", "U2")};
    chat_template_t *t;
    char err[256];

    t = detect("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}");
    ok(t && chat_template_family(t) == CHAT_FAMILY_LLAMA3, "llama3 detected");
    check(t, conv, 4, true,
          "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n", "llama3 render");
    chat_template_destroy(t);

    t = detect("{{ bos_token + '[INST] ' + '<<SYS>>\\n' + content.strip() + ' [/INST]' }}");
    ok(t && chat_template_family(t) == CHAT_FAMILY_LLAMA2, "llama2 detected");
    check(t, conv, 4, true,
          "[INST] <<SYS>>\nS\n<</SYS>>\n\n U1 [/INST] A1 </s><s>[INST] U2 [/INST]",
          "llama2 render");
    chat_template_destroy(t);

    t = detect("{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
               "{% endfor %}");
    ok(t && chat_template_family(t) == CHAT_FAMILY_MISTRAL, "mistral detected");
    check(t, conv, 4, true, "[INST] S\n\n U1  [/INST]A1</s>[INST] U2 [/INST]", "mistral render");
    chat_template_destroy(t);

    t = detect("{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n'}}"
               "{{ '<|assistant|>\\n' }}");
    ok(t && chat_template_family(t) == CHAT_FAMILY_PHI3, "phi3 detected");
    check(t, conv, 4, true, "<|system|>\nS<|end|>\n<|user|>\n U1 <|end|>\n<|assistant|>\nA1"
          "<|end|>\n<|user|>\nU2<|end|>\n<|assistant|>\n", "phi3 render");
    chat_template_destroy(t);

    t = detect("{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
               "'<end_of_turn>\\n' }}");
    ok(t && chat_template_family(t) == CHAT_FAMILY_GEMMA, "gemma detected");
    check(t, conv, 4, true, "<start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\n"
          "A1<end_of_turn>\n<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n",
          "gemma render");
    chat_template_destroy(t);

    t = NULL;
    is_int(chat_template_detect("{{ messages | tojson }}", 23, &t, err, sizeof(err)),
           DUET_ERR_UNSUPPORTED, "unknown template refused");
    ok(t == NULL && strstr(err, "--chat-template") != NULL, "clear: %s", err);
    is_int(chat_template_by_name("nope", &t, err, sizeof(err)), DUET_ERR_INVALID,
           "unknown name refused");
    ok(strstr(err, "nope") != NULL, "clear: %s", err);
    is_int(chat_template_by_name("smollm2", &t, err, sizeof(err)), DUET_OK, "smollm2 by name");
    ok(t && chat_template_default_system(t) != NULL, "smollm2 by name has the default");
    chat_template_destroy(t);
    is_int(chat_template_by_name("gemma", &t, err, sizeof(err)), DUET_OK, "gemma by name");
    {
        const chat_msg_t bad[] = {M("user", "a"), M("system", "late")};
        const chat_msg_t role[] = {M("tool", "x")};
        char *txt = NULL;
        size_t len;

        is_int(chat_render(t, bad, 2, true, &txt, &len, err, sizeof(err)), DUET_ERR_INVALID,
               "gemma: late system message refused");
        ok(txt == NULL && strstr(err, "system") != NULL, "clear: %s", err);
        is_int(chat_render(t, role, 1, true, &txt, &len, err, sizeof(err)), DUET_ERR_INVALID,
               "unknown role refused");
        ok(strstr(err, "tool") != NULL, "clear: %s", err);
    }
    chat_template_destroy(t);
}

static void test_gguf(const char *path)
{
    char err[512] = "";
    gguf_t *g;
    chat_template_t *t = NULL;
    gguf_str_t s;

    if (gguf_open(path, &g, err, sizeof(err)) != DUET_OK) {
        ok(0, "open %s: %s", path, err);
        return;
    }
    ok(gguf_get_str(g, "tokenizer.chat_template", &s) == DUET_OK && s.len == strlen(smollm2_tmpl) &&
       memcmp(s.ptr, smollm2_tmpl, s.len) == 0, "the model's template is the one tested above");
    is_int(chat_template_from_gguf(g, NULL, &t, err, sizeof(err)), DUET_OK, "from the model");
    ok(t && chat_template_family(t) == CHAT_FAMILY_CHATML && chat_template_default_system(t),
       "ChatML with the default system prompt");
    chat_template_destroy(t);
    is_int(chat_template_from_gguf(g, "llama3", &t, err, sizeof(err)), DUET_OK, "forced name");
    ok(t && chat_template_family(t) == CHAT_FAMILY_LLAMA3, "forced family wins");
    chat_template_destroy(t);
    gguf_close(g);
}

int main(void)
{
    const char *root = getenv("DUET_SOURCE_ROOT");
    char path[512];

    log_set_level(LOG_LEVEL_OFF);
    test_chatml();
    test_families();
    snprintf(path, sizeof(path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", root ? root : ".");
    if (access(path, R_OK) == 0)
        test_gguf(path);
    else
        diag("SKIP model checks: %s not found", path);
    return tap_done();
}
