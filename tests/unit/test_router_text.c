/* Router text pieces: UTF-8 validation, incremental detokenization that
 * never splits a UTF-8 sequence, stop strings across token boundaries. */
#include <stdlib.h>
#include <string.h>

#include "router/text.h"
#include "router/tok.h"
#include "tests/tap.h"

/* Feed a string byte by byte (byte tokenizer: one token per byte) and
 * collect what is emitted after each token. */
static void feed(rtok_t *tok, const char *in, const char *const *stops, int nstop,
                 sbuf_t *out, int *stopped_at, int *emits)
{
    detok_t d;
    size_t n = strlen(in);

    detok_init(&d, tok, true, stops, nstop);
    *stopped_at = -1;
    *emits = 0;
    for (size_t i = 0; i < n; i++) {
        bool stopped = false;
        size_t before = out->n;

        detok_push(&d, (uint8_t)in[i], out, &stopped);
        if (out->n > before) {
            (*emits)++;
            /* every emission is valid UTF-8 on its own */
            if (!utf8_valid(out->p + before, out->n - before))
                diag("emission %d is not valid UTF-8", *emits);
        }
        if (stopped) {
            *stopped_at = (int)i;
            break;
        }
    }
    if (*stopped_at < 0)
        detok_flush(&d, out);
    detok_free(&d);
}

int main(void)
{
    rtok_t *tok;
    sbuf_t out;
    int at, emits;

    ok(rtok_byte_create(4096, &tok) == DUET_OK, "byte tokenizer");

    /* UTF-8 validation */
    ok(utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15), "valid UTF-8");
    ok(!utf8_valid("\xc3", 1), "truncated sequence is invalid");
    ok(!utf8_valid("\xc0\xaf", 2), "overlong is invalid");
    ok(!utf8_valid("\xed\xa0\x80", 3), "surrogate is invalid");
    ok(!utf8_valid("\xf4\x90\x80\x80", 4), "beyond U+10FFFF is invalid");
    ok(!utf8_valid("\xff", 1), "0xff is invalid");
    is_int(utf8_seq((const uint8_t *)"\xe2\x82", 2), 0, "incomplete prefix -> 0");

    /* multi-byte characters split over tokens are emitted whole */
    sbuf_init(&out);
    feed(tok, "a\xe2\x82\xac" "b\xf0\x9f\x98\x80", NULL, 0, &out, &at, &emits);
    ok(out.n == 9 && memcmp(out.p, "a\xe2\x82\xac" "b\xf0\x9f\x98\x80", 9) == 0,
       "euro and emoji survive byte-wise detokenization");
    is_int(emits, 4, "one emission per character");
    sbuf_free(&out);

    /* invalid bytes become U+FFFD, a dangling tail is flushed as U+FFFD */
    sbuf_init(&out);
    feed(tok, "x\xff" "y\xe2\x82", NULL, 0, &out, &at, &emits);
    ok(out.n == 8 && memcmp(out.p, "x\xef\xbf\xbdy\xef\xbf\xbd", 8) == 0,
       "invalid byte and dangling tail become U+FFFD (%zu bytes)", out.n);
    sbuf_free(&out);

    /* stop string across token boundaries, not emitted */
    {
        const char *stops[] = {"STOP"};

        sbuf_init(&out);
        feed(tok, "hello STOP world", stops, 1, &out, &at, &emits);
        ok(out.n == 6 && memcmp(out.p, "hello ", 6) == 0, "text before the stop string only");
        is_int(at, 9, "stopped at the token completing the stop string");
        sbuf_free(&out);
    }
    /* a partial stop prefix is held back, then released when it diverges */
    {
        const char *stops[] = {"STOP"};

        sbuf_init(&out);
        feed(tok, "a STOrm", stops, 1, &out, &at, &emits);
        ok(out.n == 7 && memcmp(out.p, "a STOrm", 7) == 0, "diverging prefix released");
        is_int(at, -1, "no stop");
        sbuf_free(&out);
    }
    /* held prefix at the end of generation is flushed */
    {
        const char *stops[] = {"\n\nUser:"};

        sbuf_init(&out);
        feed(tok, "answer\n\nUse", stops, 1, &out, &at, &emits);
        ok(out.n == 11 && memcmp(out.p, "answer\n\nUse", 11) == 0, "held tail flushed at end");
        sbuf_free(&out);
    }
    /* earliest of several stop strings wins; multi-byte stop */
    {
        const char *stops[] = {"xyz", "\xe2\x82\xac", "b"};

        sbuf_init(&out);
        feed(tok, "a\xe2\x82\xac" "b", stops, 3, &out, &at, &emits);
        ok(out.n == 1 && out.p[0] == 'a', "multi-byte stop string matched");
        sbuf_free(&out);
    }
    /* empty stop strings are ignored */
    {
        const char *stops[] = {""};

        sbuf_init(&out);
        feed(tok, "abc", stops, 1, &out, &at, &emits);
        ok(out.n == 3, "empty stop string ignored");
        sbuf_free(&out);
    }
    /* special tokens are skipped, and shown by detok_all without skipping */
    {
        int32_t ids[] = {'h', 'i', 258, 256};
        detok_t d;
        bool stopped;

        sbuf_init(&out);
        detok_init(&d, tok, true, NULL, 0);
        for (int i = 0; i < 4; i++)
            detok_push(&d, ids[i], &out, &stopped);
        detok_flush(&d, &out);
        detok_free(&d);
        ok(out.n == 2 && memcmp(out.p, "hi", 2) == 0, "special tokens skipped");
        sbuf_clear(&out);
        detok_all(tok, ids, 4, false, &out);
        ok(strcmp(out.p, "hi<|im_end|><|endoftext|>") == 0, "detok_all shows specials");
        sbuf_free(&out);
        ok(detok_all(tok, (int32_t[]){999}, 1, false, &out) == DUET_ERR_INVALID,
           "token outside the vocabulary rejected");
        sbuf_free(&out);
    }
    /* encode recognises special-token strings */
    {
        int32_t *ids;
        size_t n;

        rtok_encode(tok, "<|im_start|>ab<|im_end|>", 24, false, &ids, &n);
        ok(n == 4 && ids[0] == 257 && ids[1] == 'a' && ids[3] == 258, "specials encoded");
        free(ids);
    }
    rtok_destroy(tok);
    return tap_done();
}
