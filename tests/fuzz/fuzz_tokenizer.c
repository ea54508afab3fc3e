/* libFuzzer entry point for the tokenizer: encode arbitrary bytes with
 * SmolLM2's tokenizer (first byte picks the flags), decode, stream through
 * the incremental detokenizer, and abort when the stream is not valid UTF-8
 * or differs from the whole decode.
 * Build: CC=clang meson setup build-fuzz -Dfuzz=enabled -Db_sanitize=address,undefined
 * Run:   DUET_FUZZ_MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf \
 *        ./build-fuzz/tests/fuzz_tokenizer -max_total_time=60 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/unicode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tok_t *fuzz_tok;

/* Valid UTF-8 is what repair leaves unchanged. */
static void check_utf8(const char *s, size_t n)
{
    char *tmp = malloc(3 * n + 1);

    if (unicode_repair(tmp, (const uint8_t *)s, n) != n || memcmp(tmp, s, n) != 0)
        abort();
    free(tmp);
}

static void load_once(void)
{
    const char *path = getenv("DUET_FUZZ_MODEL");
    char err[512];
    gguf_t *g;

    log_set_level(LOG_LEVEL_OFF);
    if (path == NULL)
        path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (gguf_open(path, &g, err, sizeof(err)) != DUET_OK ||
        tok_load(g, &fuzz_tok, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s (set DUET_FUZZ_MODEL)\n", err);
        abort();
    }
    gguf_close(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tok_ids_t ids = {0};
    tok_detok_t d;
    char *text, *piece, *streamed;
    size_t len, cap, k, n = 0;
    unsigned flags;

    if (fuzz_tok == NULL)
        load_once();
    if (size == 0)
        return 0;
    flags = data[0] & (TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL);
    if (tok_encode(fuzz_tok, (const char *)data + 1, size - 1, flags, &ids) != DUET_OK)
        abort();
    if (tok_decode(fuzz_tok, ids.v, ids.n, TOK_DECODE_SPECIAL, &text, &len, NULL, 0) != DUET_OK)
        abort();
    cap = tok_detok_max_out(fuzz_tok);
    piece = malloc(cap);
    streamed = malloc(cap * (ids.n + 1));
    tok_detok_init(&d, fuzz_tok, TOK_DECODE_SPECIAL);
    for (size_t i = 0; i < ids.n; i++) {
        if (tok_detok_feed(&d, ids.v[i], piece, cap, &k) != DUET_OK)
            abort();
        check_utf8(piece, k);
        memcpy(streamed + n, piece, k);
        n += k;
    }
    k = tok_detok_flush(&d, piece, cap);
    memcpy(streamed + n, piece, k);
    n += k;
    check_utf8(piece, k);
    if (n != len || memcmp(streamed, text, n) != 0)
        abort();
    free(streamed);
    free(piece);
    free(text);
    tok_ids_free(&ids);
    return 0;
}
