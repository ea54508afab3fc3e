/* Tokenizer unit tests: the incremental detokenizer never emits broken
 * UTF-8, special tokens parse or not, hostile input (ill-formed UTF-8,
 * huge words, empty text, ids out of range) is handled, and a small
 * SentencePiece vocabulary with byte fallback. SmolLM2 checks run when the
 * model file is present. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/tokenizer.h"
#include "model/unicode.h"
#include "tests/tap.h"

/* Well-formed UTF-8? (independent of unicode.c: Table 3-7) */
static int utf8_ok(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;

    for (size_t i = 0; i < n;) {
        unsigned c = s[i], need, lo = 0x80, hi = 0xBF;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF)
            need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
            need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else
            return 0;
        if (i + need >= n)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (unsigned k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return 0;
        i += need + 1;
    }
    return 1;
}

/* Feed ids one by one; every piece must be valid UTF-8; returns the
 * concatenation (malloc'd) including the flush. */
static char *stream(const tok_t *tok, const int32_t *ids, size_t n, unsigned flags,
                    int *all_valid, size_t *len_p)
{
    tok_detok_t d;
    size_t cap = tok_detok_max_out(tok), len = 0, k;
    char *piece = malloc(cap), *out = malloc(cap * (n + 1) + 1);

    *all_valid = 1;
    tok_detok_init(&d, tok, flags);
    for (size_t i = 0; i < n; i++) {
        if (tok_detok_feed(&d, ids[i], piece, cap, &k) != DUET_OK) {
            *all_valid = 0;
            continue;
        }
        *all_valid &= utf8_ok(piece, k);
        memcpy(out + len, piece, k);
        len += k;
    }
    k = tok_detok_flush(&d, piece, cap);
    *all_valid &= utf8_ok(piece, k);
    memcpy(out + len, piece, k);
    len += k;
    out[len] = '\0';
    free(piece);
    *len_p = len;
    return out;
}

/* The one-byte token of byte b in a byte-level vocabulary. */
static int32_t byte_token(const tok_t *tok, unsigned char b)
{
    char s[4];
    int n = unicode_put(s, unicode_byte_to_cp(b));

    return tok_lookup(tok, s, (size_t)n);
}

static void test_unicode(void)
{
    char out[64];
    size_t n;

    is_int(unicode_class('a'), UNICODE_LETTER, "ascii letter");
    is_int(unicode_class('7'), UNICODE_NUMBER, "ascii digit");
    is_int(unicode_class(0x4E2D), UNICODE_LETTER, "CJK is a letter");
    is_int(unicode_class(0x0663), UNICODE_NUMBER, "arabic-indic digit");
    is_int(unicode_class(0x00BD), UNICODE_NUMBER, "vulgar fraction is N");
    is_int(unicode_class(0x3000), UNICODE_SPACE, "ideographic space");
    is_int(unicode_class(0x1F600), UNICODE_OTHER, "emoji is neither");
    is_int(unicode_incomplete_tail((const uint8_t *)"a\xF0\x9F\x98", 4), 3, "held tail");
    is_int(unicode_incomplete_tail((const uint8_t *)"a\xF0\x9F\x98\x80", 5), 0, "complete");
    is_int(unicode_incomplete_tail((const uint8_t *)"\xC3(", 2), 0, "bad is not held");
    n = unicode_repair(out, (const uint8_t *)"\xF0\x9F\x98" "a\xED\xA0\x80", 7);
    ok(n == 13 && memcmp(out, "\xEF\xBF\xBD" "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 13) == 0,
       "maximal-subpart replacement");
    for (unsigned b = 0; b < 256; b++)
        if (unicode_cp_to_byte(unicode_byte_to_cp((uint8_t)b)) != (int)b)
            break;
        else if (b == 255)
            ok(1, "byte mapping round-trips");
}

static void test_smollm2(const char *path)
{
    char err[512] = "", *txt;
    gguf_t *g;
    tok_t *tok;
    tok_ids_t ids = {0};
    size_t len;
    int valid;
    static const char *const texts[] = {
        "😀😃 emoji", "你好，世界！中文", "👨‍👩‍👧‍👦 family", "mixed 日本語 and 😀 123",
        "é̃ combining", "tabs\t\tand\nnewlines",
    };

    if (gguf_open(path, &g, err, sizeof(err)) != DUET_OK || tok_load(g, &tok, err, sizeof(err)) != DUET_OK) {
        ok(0, "load SmolLM2 tokenizer: %s", err);
        return;
    }
    gguf_close(g);      /* the tokenizer keeps its own copy */
    is_int(tok_n_vocab(tok), 49152, "vocab size");
    is_int(tok_bos(tok), 1, "bos");
    is_int(tok_eos(tok), 2, "eos");
    is_int(tok_eot(tok), 2, "eot <|im_end|>");
    ok(!tok_add_bos(tok), "add_bos false from metadata");
    ok(tok_is_eog(tok, 2) && tok_is_eog(tok, 0) && !tok_is_eog(tok, 1), "end-of-generation set");
    ok(strcmp(tok_pre_name(tok), "smollm") == 0, "pre-tokenizer smollm");
    is_int(tok_token_type(tok, 1), TOK_TYPE_CONTROL, "<|im_start|> is control");

    /* Streams of real encodings: pieces valid, concatenation exact. */
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        ids.n = 0;
        tok_encode(tok, texts[i], strlen(texts[i]), 0, &ids);
        txt = stream(tok, ids.v, ids.n, 0, &valid, &len);
        ok(valid && len == strlen(texts[i]) && memcmp(txt, texts[i], len) == 0,
           "stream of text %zu (%zu tokens)", i, ids.n);
        free(txt);
    }
    /* An emoji fed byte by byte: held back until complete. */
    {
        const unsigned char emoji[] = {0xF0, 0x9F, 0x98, 0x80};
        tok_detok_t d;
        size_t cap = tok_detok_max_out(tok), k, total = 0;
        char *piece = malloc(cap);
        int held = 1;

        tok_detok_init(&d, tok, 0);
        for (int i = 0; i < 4; i++) {
            tok_detok_feed(&d, byte_token(tok, emoji[i]), piece, cap, &k);
            if (i < 3)
                held &= k == 0;
            total = k;
        }
        ok(held && total == 4 && memcmp(piece, emoji, 4) == 0, "split emoji held then emitted");
        /* Incomplete at the end: flush gives U+FFFD. */
        tok_detok_feed(&d, byte_token(tok, 0xE4), piece, cap, &k);
        tok_detok_feed(&d, byte_token(tok, 0xBD), piece, cap, &k);
        is_int(k, 0, "two bytes of a CJK character held");
        k = tok_detok_flush(&d, piece, cap);
        ok(k == 3 && memcmp(piece, "\xEF\xBF\xBD", 3) == 0, "flush of a partial char is U+FFFD");
        /* A sequence broken by an ASCII byte. */
        tok_detok_feed(&d, byte_token(tok, 0xF0), piece, cap, &k);
        tok_detok_feed(&d, byte_token(tok, 0x9F), piece, cap, &k);
        tok_detok_feed(&d, byte_token(tok, 'a'), piece, cap, &k);
        ok(k == 4 && memcmp(piece, "\xEF\xBF\xBD" "a", 4) == 0, "interrupted sequence: U+FFFD a");
        is_int(tok_detok_feed(&d, -1, piece, cap, &k), DUET_ERR_INVALID, "feed -1 refused");
        is_int(tok_detok_feed(&d, 49152, piece, cap, &k), DUET_ERR_INVALID, "feed n_vocab refused");
        is_int(tok_detok_feed(&d, 19556, piece, 1, &k), DUET_ERR_TOO_BIG, "small out buffer refused");
        free(piece);
    }

    /* Special tokens. */
    ids.n = 0;
    tok_encode(tok, "<|im_start|>user", 16, TOK_PARSE_SPECIAL, &ids);
    ok(ids.n == 2 && ids.v[0] == 1, "<|im_start|> parsed with TOK_PARSE_SPECIAL");
    ids.n = 0;
    tok_encode(tok, "<|im_start|>user", 16, 0, &ids);
    valid = 1;
    for (size_t i = 0; i < ids.n; i++)
        valid &= tok_token_type(tok, ids.v[i]) == TOK_TYPE_NORMAL;
    ok(ids.n > 2 && valid, "<|im_start|> is plain text without it (%zu tokens)", ids.n);
    {
        int32_t one = 1;

        tok_decode(tok, &one, 1, 0, &txt, &len, NULL, 0);
        ok(len == 0, "control token decodes to nothing by default");
        free(txt);
        tok_decode(tok, &one, 1, TOK_DECODE_SPECIAL, &txt, &len, NULL, 0);
        ok(strcmp(txt, "<|im_start|>") == 0, "... and to its text with TOK_DECODE_SPECIAL");
        free(txt);
    }

    /* Bad input. */
    ids.n = 0;
    is_int(tok_encode(tok, "", 0, TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL, &ids), DUET_OK,
           "empty text");
    is_int(ids.n, 0, "empty text has no tokens (add_bos false)");
    {
        const char bad[] = "ok \xFF\xFE broken \xC3 and \xE4\xBD tail \xF0\x9F";
        int32_t oob[2] = {5, 49152};

        ids.n = 0;
        is_int(tok_encode(tok, bad, sizeof(bad) - 1, 0, &ids), DUET_OK, "ill-formed UTF-8 encodes");
        valid = 1;
        for (size_t i = 0; i < ids.n; i++)
            valid &= ids.v[i] >= 0 && ids.v[i] < 49152;
        ok(valid, "ids in range");
        tok_decode(tok, ids.v, ids.n, 0, &txt, &len, NULL, 0);
        ok(utf8_ok(txt, len) && strstr(txt, " broken ") != NULL, "decodes to repaired UTF-8");
        free(txt);
        err[0] = '\0';
        is_int(tok_decode(tok, oob, 2, 0, &txt, &len, err, sizeof(err)), DUET_ERR_INVALID,
               "id out of range in decode");
        ok(strstr(err, "49152") != NULL && strstr(err, "out of range") != NULL, "clear: %s", err);
    }
    /* Random bytes: no crash, and bytes the vocabulary has round-trip. */
    {
        unsigned seed = 12345, fails = 0;
        unsigned char buf[200];
        char *rep = malloc(3 * sizeof(buf));

        for (int it = 0; it < 300; it++) {
            size_t n = (size_t)(rand_r(&seed) % sizeof(buf)), rl;

            for (size_t i = 0; i < n; i++) {
                buf[i] = (unsigned char)rand_r(&seed);
                if (byte_token(tok, buf[i]) < 0)
                    buf[i] = ' ';   /* no token: dropped (tested below) */
            }
            ids.n = 0;
            if (tok_encode(tok, (char *)buf, n, TOK_PARSE_SPECIAL, &ids) != DUET_OK) {
                fails++;
                continue;
            }
            txt = stream(tok, ids.v, ids.n, 0, &valid, &len);
            rl = unicode_repair(rep, buf, n);
            fails += !valid || len != rl || memcmp(txt, rep, rl) != 0;
            free(txt);
        }
        is_int(fails, 0, "300 random byte strings encode, stream valid UTF-8, round-trip");
        free(rep);
    }
    /* A byte without a token (0x16 in SmolLM2) is dropped, as HF does. */
    ids.n = 0;
    tok_encode(tok, "a\x16" "b", 3, 0, &ids);
    tok_decode(tok, ids.v, ids.n, 0, &txt, &len, NULL, 0);
    ok(byte_token(tok, 0x16) < 0 && strcmp(txt, "ab") == 0, "byte without a token dropped");
    free(txt);
    /* Huge words stay fast (priority-queue merges). */
    {
        size_t n = 200000;
        char *big = malloc(n);

        memset(big, 'a', n);
        ids.n = 0;
        is_int(tok_encode(tok, big, n, 0, &ids), DUET_OK, "200 kB single word");
        tok_decode(tok, ids.v, ids.n, 0, &txt, &len, NULL, 0);
        ok(len == n, "... round-trips (%zu tokens)", ids.n);
        free(txt);
        memset(big, ' ', n);
        ids.n = 0;
        is_int(tok_encode(tok, big, n, 0, &ids), DUET_OK, "200 kB of spaces");
        free(big);
    }
    tok_ids_free(&ids);
    tok_destroy(tok);
}

/* A SentencePiece vocabulary: <unk> <s> </s>, <0x00>..<0xFF>, then pieces. */
static void test_spm(const char *dir)
{
    static const char *const pieces[] = {
        "\xE2\x96\x81", "h", "e", "l", "o", "w", "r", "d", "\xE2\x96\x81h", "he", "ll", "llo",
        "\xE2\x96\x81he", "\xE2\x96\x81hello", "hello", "\xE2\x96\x81w", "or", "wor", "world",
        "\xE2\x96\x81world", "\xE2\x96\x81wor", "\xE2\x96\x81worl",
    };
    enum { NP = sizeof(pieces) / sizeof(pieces[0]), NV = 3 + 256 + NP };
    gguf_str_t strs[NV];
    char bytes[256][8], path[512], err[512] = "", *txt;
    int32_t types[NV];
    float scores[NV];
    gguf_writer_t *w;
    gguf_t *g;
    tok_t *tok;
    tok_ids_t ids = {0};
    size_t len;
    int valid;

    strs[0] = (gguf_str_t){"<unk>", 5};
    strs[1] = (gguf_str_t){"<s>", 3};
    strs[2] = (gguf_str_t){"</s>", 4};
    types[0] = TOK_TYPE_UNKNOWN;
    types[1] = types[2] = TOK_TYPE_CONTROL;
    scores[0] = scores[1] = scores[2] = 0;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof(bytes[b]), "<0x%02X>", b);
        strs[3 + b] = (gguf_str_t){bytes[b], 6};
        types[3 + b] = TOK_TYPE_BYTE;
        scores[3 + b] = 0;
    }
    for (int i = 0; i < NP; i++) {
        strs[259 + i] = (gguf_str_t){pieces[i], strlen(pieces[i])};
        types[259 + i] = TOK_TYPE_NORMAL;
        scores[259 + i] = -(float)i;    /* later pieces merge later */
    }
    snprintf(path, sizeof(path), "%s/spm.gguf", dir);
    gguf_writer_create(&w);
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", strs, NV);
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, NV);
    gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, NV);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    if (gguf_writer_write(w, path, NULL, NULL, err, sizeof(err)) != DUET_OK ||
        gguf_open(path, &g, err, sizeof(err)) != DUET_OK) {
        ok(0, "write/open SPM vocab: %s", err);
        gguf_writer_destroy(w);
        return;
    }
    gguf_writer_destroy(w);
    is_int(tok_load(g, &tok, err, sizeof(err)), DUET_OK, "SPM vocab loads %s", err);
    gguf_close(g);
    ok(tok_add_bos(tok), "SPM: add_bos defaults to true");
    tok_encode(tok, "hello world", 11, TOK_ADD_SPECIAL, &ids);
    ok(ids.n == 3 && ids.v[0] == 1 && ids.v[1] == 259 + 13 && ids.v[2] == 259 + 19,
       "<s> ▁hello ▁world");
    tok_decode(tok, ids.v, ids.n, 0, &txt, &len, NULL, 0);
    ok(strcmp(txt, "hello world") == 0, "decode drops BOS and the space prefix: '%s'", txt);
    free(txt);
    /* Byte fallback: 你 is not in the vocabulary. */
    ids.n = 0;
    tok_encode(tok, "\xE4\xBD\xA0", 3, 0, &ids);
    ok(ids.n == 4 && ids.v[0] == 259 && ids.v[1] == 3 + 0xE4 && ids.v[2] == 3 + 0xBD &&
       ids.v[3] == 3 + 0xA0, "▁ <0xE4> <0xBD> <0xA0>");
    {
        tok_detok_t d;
        size_t cap = tok_detok_max_out(tok), ks[4];
        char piece[64];

        tok_detok_init(&d, tok, 0);
        for (int i = 0; i < 4; i++)
            tok_detok_feed(&d, ids.v[i], piece, cap, &ks[i]);
        ok(ks[0] == 0 && ks[1] == 0 && ks[2] == 0 && ks[3] == 3 &&
           memcmp(piece, "\xE4\xBD\xA0", 3) == 0, "byte-fallback pieces held until complete");
    }
    txt = stream(tok, ids.v, ids.n, 0, &valid, &len);
    ok(valid && strcmp(txt, "\xE4\xBD\xA0") == 0, "stream of byte fallback");
    free(txt);
    ids.n = 0;
    tok_encode(tok, "<s>hello", 8, TOK_PARSE_SPECIAL, &ids);
    ok(ids.n == 2 && ids.v[0] == 1 && ids.v[1] == 259 + 13, "<s> parsed, prefix after it");
    tok_ids_free(&ids);
    tok_destroy(tok);
}

/* Write a tokenizer-only GGUF from the given pieces and try to load it. */
typedef struct {
    const char *model;          /* tokenizer.ggml.model, NULL: absent */
    const char *pre;
    uint64_t    n_types;        /* token_type entries (0: absent) */
    const char *merge;          /* one merge string, NULL: none */
    bool        scores;
    uint32_t    bos;            /* 0xFFFFFFFF: absent */
} bad_meta_t;

static duet_status_t load_meta(const char *dir, const bad_meta_t *m, char *err, size_t errlen)
{
    static const gguf_str_t toks[] = {{"a", 1}, {"b", 1}, {"ab", 2}, {"<s>", 3}};
    const int32_t types[8] = {1, 1, 1, 3, 1, 1, 1, 1};
    const float scores[4] = {0, 0, 1, 0};
    char path[512];
    gguf_writer_t *w;
    gguf_t *g;
    tok_t *tok = NULL;
    duet_status_t st;

    snprintf(path, sizeof(path), "%s/meta.gguf", dir);
    gguf_writer_create(&w);
    gguf_writer_set_str(w, "general.architecture", "llama");
    if (m->model)
        gguf_writer_set_str(w, "tokenizer.ggml.model", m->model);
    if (m->pre)
        gguf_writer_set_str(w, "tokenizer.ggml.pre", m->pre);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 4);
    if (m->n_types)
        gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, m->n_types);
    if (m->merge) {
        gguf_str_t ms = {m->merge, strlen(m->merge)};

        gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", &ms, 1);
    }
    if (m->scores)
        gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 4);
    if (m->bos != 0xFFFFFFFFu)
        gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", m->bos);
    st = gguf_writer_write(w, path, NULL, NULL, err, errlen);
    gguf_writer_destroy(w);
    if (st != DUET_OK)
        return st;
    if ((st = gguf_open(path, &g, err, errlen)) != DUET_OK)
        return st;
    st = tok_load(g, &tok, err, errlen);
    if (st == DUET_OK) {
        tok_ids_t ids = {0};

        /* 'ab' merges: one token; the BOS id is usable */
        tok_encode(tok, "ab<s>", 5, TOK_PARSE_SPECIAL, &ids);
        if (ids.n != 2 || ids.v[0] != 2 || ids.v[1] != 3)
            st = DUET_ERR_INTERNAL;
        tok_ids_free(&ids);
    }
    tok_destroy(tok);
    gguf_close(g);
    unlink(path);
    return st;
}

static void test_bad_metadata(const char *dir)
{
    const bad_meta_t good = {"gpt2", "gpt2", 4, "a b", false, 3};
    char err[512];
    bad_meta_t m;

    is_int(load_meta(dir, &good, err, sizeof(err)), DUET_OK, "minimal BPE vocabulary loads");
    m = good;
    m.pre = NULL;
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_OK, "missing pre: gpt2 default");
    m = good;
    m.model = NULL;
    err[0] = 0;
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_NOT_FOUND, "no tokenizer.ggml.model");
    ok(strstr(err, "no tokenizer") != NULL, "clear: %s", err);
    m = good;
    m.model = "bert";
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_UNSUPPORTED, "model 'bert' refused");
    ok(strstr(err, "bert") != NULL, "clear: %s", err);
    m = good;
    m.pre = "qwen9";
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_UNSUPPORTED, "unknown pre refused");
    ok(strstr(err, "qwen9") != NULL, "clear: %s", err);
    m = good;
    m.n_types = 7;
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_CORRUPT, "token_type length mismatch");
    ok(strstr(err, "token_type") != NULL, "clear: %s", err);
    m = good;
    m.merge = NULL;
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_NOT_FOUND, "BPE without merges");
    ok(strstr(err, "merges") != NULL, "clear: %s", err);
    m = good;
    m.merge = "ab";
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_CORRUPT, "merge without a space");
    m = good;
    m.bos = 4;
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_CORRUPT, "bos id out of range");
    ok(strstr(err, "bos_token_id") != NULL, "clear: %s", err);
    m = good;
    m.model = "llama";
    m.merge = NULL;
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_ERR_CORRUPT, "SPM without scores");
    m.scores = true;
    is_int(load_meta(dir, &m, err, sizeof(err)), DUET_OK, "SPM with scores loads");
}

static void test_no_tokenizer(void)
{
    /* GGUF v3, no tensors, one key: general.architecture = "llama". */
    static const unsigned char file[] = {
        'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        20, 0, 0, 0, 0, 0, 0, 0, 'g', 'e', 'n', 'e', 'r', 'a', 'l', '.', 'a', 'r', 'c', 'h',
        'i', 't', 'e', 'c', 't', 'u', 'r', 'e', 8, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0,
        'l', 'l', 'a', 'm', 'a',
    };
    char err[256] = "";
    gguf_t *g;
    tok_t *tok = NULL;

    if (gguf_open_buffer(file, sizeof(file), &g, err, sizeof(err)) != DUET_OK) {
        ok(0, "open tiny gguf: %s", err);
        return;
    }
    is_int(tok_load(g, &tok, err, sizeof(err)), DUET_ERR_NOT_FOUND, "no tokenizer");
    ok(strstr(err, "no tokenizer") != NULL && tok == NULL, "clear: %s", err);
    gguf_close(g);
}

int main(void)
{
    const char *root = getenv("DUET_SOURCE_ROOT");
    char path[512], dir[] = "/tmp/duet_test_tok.XXXXXX";

    log_set_level(LOG_LEVEL_OFF);
    test_unicode();
    test_no_tokenizer();
    if (mkdtemp(dir) != NULL) {
        test_spm(dir);
        test_bad_metadata(dir);
        snprintf(path, sizeof(path), "%s/spm.gguf", dir);
        unlink(path);
        rmdir(dir);
    }
    snprintf(path, sizeof(path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", root ? root : ".");
    if (access(path, R_OK) == 0)
        test_smollm2(path);
    else
        diag("SKIP SmolLM2 checks: %s not found (scripts/fetch-model)", path);
    return tap_done();
}
