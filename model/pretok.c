/* Pre-tokenizers, written by hand (no regex engine). Each reproduces the
 * matches of one regex exactly, including its backtracking on whitespace:
 *
 * gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *         ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * smollm: every \p{N} character alone, then gpt2 on the text between them
 *         (Hugging Face: Sequence[Digits(individual_digits), ByteLevel]).
 *
 * An ill-formed UTF-8 byte counts as one character of no class (it is
 * matched like punctuation), so any byte string splits without error. */
#include "model/tokenizer_int.h"
#include "model/unicode.h"

/* Class and length of the character at s[i] (i < n). */
static inline unsigned cls_at(const uint8_t *s, size_t n, size_t i, int *len_p)
{
    uint32_t cp;

    if (s[i] < 0x80) {
        *len_p = 1;
        return unicode_ascii_class[s[i]];
    }
    *len_p = unicode_next(s + i, n - i, &cp);
    return unicode_class(cp);
}

/* End of the run of characters of class cls starting at i. */
static size_t run_of(const uint8_t *s, size_t n, size_t i, unsigned cls)
{
    int len;

    while (i < n && cls_at(s, n, i, &len) == cls)
        i += (size_t)len;
    return i;
}

static inline int lower(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* Length of a contraction at s[i] ('s 't 're 've 'm 'll 'd), or 0. */
static size_t contraction(const uint8_t *s, size_t n, size_t i, bool icase)
{
    int a, b;

    if (s[i] != '\'' || i + 1 >= n)
        return 0;
    a = icase ? lower(s[i + 1]) : s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if (i + 2 >= n)
        return 0;
    b = icase ? lower(s[i + 2]) : s[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* \s+(?!\S)|\s+ at i (a space character): the whole run when it reaches
 * the end, else the run less its last character, else one character. */
static size_t space_run(const uint8_t *s, size_t n, size_t i)
{
    size_t j = i, last = i;
    int len;

    while (j < n && cls_at(s, n, j, &len) == UNICODE_SPACE) {
        last = j;
        j += (size_t)len;
    }
    if (j == n || last == i)
        return j;
    return last;
}

static size_t gpt2_match(const uint8_t *s, size_t n, size_t i)
{
    size_t j = i, k;
    unsigned c;
    int len;

    if ((k = contraction(s, n, i, false)) != 0)
        return i + k;
    c = cls_at(s, n, i, &len);
    if (s[i] == ' ' && i + 1 < n) {
        unsigned c1 = cls_at(s, n, i + 1, &len);

        if (c1 != UNICODE_SPACE) {
            j = i + 1;
            c = c1;
        }
    }
    if (c != UNICODE_SPACE)
        return run_of(s, n, j, c);
    return space_run(s, n, i);
}

static size_t llama3_match(const uint8_t *s, size_t n, size_t i)
{
    size_t j, k;
    unsigned c;
    int len, len1;

    if ((k = contraction(s, n, i, true)) != 0)
        return i + k;
    c = cls_at(s, n, i, &len);
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (c == UNICODE_LETTER)
        return run_of(s, n, i, c);
    if (c != UNICODE_NUMBER && s[i] != '\r' && s[i] != '\n' && i + (size_t)len < n &&
        cls_at(s, n, i + (size_t)len, &len1) == UNICODE_LETTER)
        return run_of(s, n, i + (size_t)len, UNICODE_LETTER);
    /* \p{N}{1,3} */
    if (c == UNICODE_NUMBER) {
        j = i;
        for (int m = 0; m < 3 && j < n && cls_at(s, n, j, &len1) == UNICODE_NUMBER; m++)
            j += (size_t)len1;
        return j;
    }
    /* ' '?[^\s\p{L}\p{N}]+[\r\n]* */
    j = i;
    if (s[i] == ' ' && i + 1 < n && cls_at(s, n, i + 1, &len1) == UNICODE_OTHER) {
        j = i + 1;
        c = UNICODE_OTHER;
    }
    if (c == UNICODE_OTHER) {
        j = run_of(s, n, j, UNICODE_OTHER);
        while (j < n && (s[j] == '\r' || s[j] == '\n'))
            j++;
        return j;
    }
    /* \s*[\r\n]+ : through the last newline of the whitespace run */
    {
        size_t e = i, nl = 0;
        bool have_nl = false;

        while (e < n && cls_at(s, n, e, &len1) == UNICODE_SPACE) {
            if (s[e] == '\r' || s[e] == '\n') {
                nl = e;
                have_nl = true;
            }
            e += (size_t)len1;
        }
        if (have_nl)
            return nl + 1;
    }
    return space_run(s, n, i);
}

static duet_status_t split_gpt2(const uint8_t *s, size_t n, pretok_fn_t fn, void *ctx)
{
    size_t i = 0;

    while (i < n) {
        size_t e = gpt2_match(s, n, i);
        duet_status_t st = fn(ctx, s + i, e - i);

        if (st < 0)
            return st;
        i = e;
    }
    return DUET_OK;
}

static duet_status_t split_llama3(const uint8_t *s, size_t n, pretok_fn_t fn, void *ctx)
{
    size_t i = 0;

    while (i < n) {
        size_t e = llama3_match(s, n, i);
        duet_status_t st = fn(ctx, s + i, e - i);

        if (st < 0)
            return st;
        i = e;
    }
    return DUET_OK;
}

static duet_status_t split_smollm(const uint8_t *s, size_t n, pretok_fn_t fn, void *ctx)
{
    size_t i = 0, seg = 0;
    duet_status_t st;
    int len;

    while (i < n) {
        if (cls_at(s, n, i, &len) != UNICODE_NUMBER) {
            i += (size_t)len;
            continue;
        }
        if (i > seg && (st = split_gpt2(s + seg, i - seg, fn, ctx)) < 0)
            return st;
        if ((st = fn(ctx, s + i, (size_t)len)) < 0)
            return st;
        i += (size_t)len;
        seg = i;
    }
    return n > seg ? split_gpt2(s + seg, n - seg, fn, ctx) : DUET_OK;
}

duet_status_t pretok_split(pretok_kind_t kind, const uint8_t *s, size_t n,
                           pretok_fn_t fn, void *ctx)
{
    switch (kind) {
    case PRETOK_GPT2:
        return split_gpt2(s, n, fn, ctx);
    case PRETOK_LLAMA3:
        return split_llama3(s, n, fn, ctx);
    case PRETOK_SMOLLM:
        return split_smollm(s, n, fn, ctx);
    }
    return DUET_ERR_INTERNAL;
}

static const struct {
    const char   *name;
    pretok_kind_t kind;
} pretok_names[] = {
    {"default", PRETOK_GPT2},       {"gpt2", PRETOK_GPT2},
    {"gpt-2", PRETOK_GPT2},         {"mpt", PRETOK_GPT2},
    {"olmo", PRETOK_GPT2},          {"jais", PRETOK_GPT2},
    {"llama3", PRETOK_LLAMA3},      {"llama-v3", PRETOK_LLAMA3},
    {"llama-bpe", PRETOK_LLAMA3},   {"falcon3", PRETOK_LLAMA3},
    {"smollm", PRETOK_SMOLLM},      {"starcoder", PRETOK_SMOLLM},
    {"refact", PRETOK_SMOLLM},      {"command-r", PRETOK_SMOLLM},
    {"codeshell", PRETOK_SMOLLM},   {"exaone", PRETOK_SMOLLM},
};

duet_status_t pretok_by_name(const char *name, size_t len, pretok_kind_t *kind_p)
{
    for (size_t i = 0; i < sizeof(pretok_names) / sizeof(pretok_names[0]); i++) {
        if (strlen(pretok_names[i].name) == len && memcmp(pretok_names[i].name, name, len) == 0) {
            *kind_p = pretok_names[i].kind;
            return DUET_OK;
        }
    }
    return DUET_ERR_UNSUPPORTED;
}
