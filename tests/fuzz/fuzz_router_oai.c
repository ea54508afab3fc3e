/* libFuzzer entry point for the router's request parsing, the stop-string
 * matcher and the byte tokenizer's detokenizer.
 * Build: CC=clang meson setup build-fuzz -Dfuzz=enabled -Db_sanitize=address,undefined
 * Run:   ./build-fuzz/tests/fuzz_router_oai -max_total_time=60 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/log.h"
#include "router/oai.h"
#include "router/text.h"
#include "router/tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static rtok_t *tok;
    oai_req_t req;
    oai_err_t err;

    log_set_level(LOG_LEVEL_OFF);
    if (tok == NULL && rtok_byte_create(4096, &tok) != DUET_OK)
        abort();
    for (int kind = OAI_CHAT; kind <= OAI_COMPLETION; kind++) {
        if (oai_parse(kind, (const char *)data, size, tok->vocab, &req, &err) != DUET_OK)
            continue;
        if (req.nprompts > 0 && req.prompts[0].text != NULL) {
            detok_t d;
            sbuf_t out;
            bool stopped = false;

            /* feed the prompt's bytes back as tokens through its stop strings */
            sbuf_init(&out);
            detok_init(&d, tok, req.skip_special_tokens, req.stop, req.nstop);
            for (size_t i = 0; i < req.prompts[0].len && !stopped; i++)
                detok_push(&d, (uint8_t)req.prompts[0].text[i], &out, &stopped);
            detok_flush(&d, &out);
            if (out.n && !utf8_valid(out.p, out.n))
                abort();
            detok_free(&d);
            sbuf_free(&out);
        }
        oai_req_release(&req);
    }
    return 0;
}
