/* Tokenizer: loading from GGUF metadata, lookups and accessors. Encoding is
 * in tokenizer_enc.c (+ _bpe, _spm, pretok.c), decoding in tokenizer_dec.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define DUET_LOG_COMPONENT "tokenizer"
#include "common/log.h"
#include "model/tokenizer_int.h"
#include "model/unicode.h"

__attribute__((format(printf, 4, 5)))
static duet_status_t fail(char *err, size_t errlen, duet_status_t st, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return st;
}
#define FAIL(st, ...) fail(err, errlen, (st), __VA_ARGS__)

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t c = 16;

    while (c < n)
        c <<= 1;
    return c;
}

int32_t tok_lookup(const tok_t *t, const char *text, size_t len)
{
    uint32_t i = tok_hash_bytes(text, len) & t->smap_mask;

    for (;; i = (i + 1) & t->smap_mask) {
        int32_t id = t->smap[i];
        size_t l;
        const char *s;

        if (id < 0)
            return -1;
        s = tok_str(t, id, &l);
        if (l == len && memcmp(s, text, len) == 0)
            return id;
    }
}

static duet_status_t load_strings(tok_t *t, const gguf_t *g, char *err, size_t errlen)
{
    gguf_type_t elem;
    uint64_t n, total = 0;
    const void *data;
    gguf_str_t s;
    duet_status_t st;

    st = gguf_get_arr(g, "tokenizer.ggml.tokens", &elem, &n, &data);
    if (st == DUET_ERR_NOT_FOUND)
        return FAIL(DUET_ERR_NOT_FOUND, "tokenizer.ggml.tokens is missing");
    if (st < 0 || elem != GGUF_TYPE_STRING)
        return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.tokens is not an array of strings");
    if (n == 0 || n > INT32_MAX / 2)
        return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.tokens has %llu entries",
                    (unsigned long long)n);
    t->n_vocab = (int32_t)n;
    for (uint64_t i = 0; i < n; i++) {
        if (gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s) < 0)
            return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.tokens[%llu] is unreadable",
                        (unsigned long long)i);
        total += s.len;
    }
    if (total > UINT32_MAX / 4)
        return FAIL(DUET_ERR_TOO_BIG, "tokenizer.ggml.tokens holds %llu bytes",
                    (unsigned long long)total);
    t->text = malloc(total + 1);
    t->text_off = malloc((n + 1) * sizeof(*t->text_off));
    t->smap_mask = pow2_at_least(2 * n) - 1;
    t->smap = malloc(((size_t)t->smap_mask + 1) * sizeof(*t->smap));
    if (t->text == NULL || t->text_off == NULL || t->smap == NULL)
        return FAIL(DUET_ERR_NOMEM, "out of memory for the vocabulary");
    memset(t->smap, 0xFF, ((size_t)t->smap_mask + 1) * sizeof(*t->smap));
    total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t h;

        gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s);
        t->text_off[i] = (uint32_t)total;
        memcpy(t->text + total, s.ptr, s.len);
        total += s.len;
        /* The first of duplicate strings wins. */
        if (tok_lookup(t, s.ptr, s.len) >= 0) {
            t->text_off[i + 1] = (uint32_t)total;
            continue;
        }
        for (h = tok_hash_bytes(s.ptr, s.len) & t->smap_mask; t->smap[h] >= 0;
             h = (h + 1) & t->smap_mask)
            ;
        t->text_off[i + 1] = (uint32_t)total;
        t->smap[h] = (int32_t)i;
    }
    t->text_off[n] = (uint32_t)total;
    return DUET_OK;
}

/* token_type and scores: optional numeric arrays as long as the vocab. */
static duet_status_t load_numeric(tok_t *t, const gguf_t *g, char *err, size_t errlen)
{
    gguf_type_t elem;
    uint64_t n;
    const void *data;
    duet_status_t st;

    t->type = malloc((size_t)t->n_vocab);
    t->scores = calloc((size_t)t->n_vocab, sizeof(float));
    if (t->type == NULL || t->scores == NULL)
        return FAIL(DUET_ERR_NOMEM, "out of memory for the vocabulary");
    memset(t->type, TOK_TYPE_NORMAL, (size_t)t->n_vocab);
    st = gguf_get_arr(g, "tokenizer.ggml.token_type", &elem, &n, &data);
    if (st == DUET_OK) {
        if ((elem != GGUF_TYPE_INT32 && elem != GGUF_TYPE_UINT32) || n != (uint64_t)t->n_vocab)
            return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.token_type: %llu entries of type %d "
                        "for %d tokens", (unsigned long long)n, (int)elem, t->n_vocab);
        for (int32_t i = 0; i < t->n_vocab; i++) {
            int32_t v;

            memcpy(&v, (const char *)data + 4 * (size_t)i, 4);
            t->type[i] = v >= TOK_TYPE_NORMAL && v <= TOK_TYPE_BYTE ? (uint8_t)v : TOK_TYPE_NORMAL;
        }
    } else if (st != DUET_ERR_NOT_FOUND) {
        return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.token_type is not an array");
    }
    st = gguf_get_arr(g, "tokenizer.ggml.scores", &elem, &n, &data);
    if (st == DUET_OK) {
        if (elem != GGUF_TYPE_FLOAT32 || n != (uint64_t)t->n_vocab)
            return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.scores: %llu entries of type %d "
                        "for %d tokens", (unsigned long long)n, (int)elem, t->n_vocab);
        memcpy(t->scores, data, 4 * (size_t)t->n_vocab);
    } else if (st != DUET_ERR_NOT_FOUND) {
        return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.scores is not an array");
    } else if (t->kind == TOK_VOCAB_SPM) {
        return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.scores is missing (needed by a 'llama' "
                    "vocabulary)");
    }
    return DUET_OK;
}

static duet_status_t load_merges(tok_t *t, const gguf_t *g, char *err, size_t errlen)
{
    gguf_type_t elem;
    uint64_t n, skipped = 0;
    const void *data;
    char *cat = NULL;
    size_t cat_cap = 0;
    duet_status_t st;

    st = gguf_get_arr(g, "tokenizer.ggml.merges", &elem, &n, &data);
    if (st == DUET_ERR_NOT_FOUND)
        return FAIL(DUET_ERR_NOT_FOUND, "tokenizer.ggml.merges is missing (needed by a 'gpt2' "
                    "vocabulary)");
    if (st < 0 || elem != GGUF_TYPE_STRING || n > INT32_MAX / 4)
        return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.merges is not an array of strings");
    t->mmap_mask = pow2_at_least(2 * n + 2) - 1;
    t->mmap = calloc((size_t)t->mmap_mask + 1, sizeof(*t->mmap));
    if (t->mmap == NULL)
        return FAIL(DUET_ERR_NOMEM, "out of memory for %llu merges", (unsigned long long)n);
    for (uint64_t r = 0; r < n; r++) {
        gguf_str_t s;
        size_t sp;
        int32_t a, b, m;
        uint64_t key;
        uint32_t h;

        if (gguf_get_arr_str(g, "tokenizer.ggml.merges", r, &s) < 0) {
            free(cat);
            return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.merges[%llu] is unreadable",
                        (unsigned long long)r);
        }
        for (sp = 1; sp < s.len && s.ptr[sp] != ' '; sp++)
            ;
        if (sp >= s.len) {
            free(cat);
            return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.merges[%llu] '%.*s' is not 'A B'",
                        (unsigned long long)r, (int)(s.len > 64 ? 64 : s.len), s.ptr);
        }
        if (s.len > cat_cap) {
            char *p = realloc(cat, s.len);

            if (p == NULL) {
                free(cat);
                return FAIL(DUET_ERR_NOMEM, "out of memory for the merges");
            }
            cat = p;
            cat_cap = s.len;
        }
        memcpy(cat, s.ptr, sp);
        memcpy(cat + sp, s.ptr + sp + 1, s.len - sp - 1);
        a = tok_lookup(t, s.ptr, sp);
        b = tok_lookup(t, s.ptr + sp + 1, s.len - sp - 1);
        m = tok_lookup(t, cat, s.len - 1);
        if (a < 0 || b < 0 || m < 0) {
            skipped++;
            continue;
        }
        key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        for (h = tok_hash_pair(key) & t->mmap_mask; t->mmap[h].key != 0 && t->mmap[h].key != key;
             h = (h + 1) & t->mmap_mask)
            ;
        if (t->mmap[h].key == key)
            continue;           /* the first (lowest rank) wins */
        t->mmap[h].key = key;
        t->mmap[h].rank = (int32_t)r;
        t->mmap[h].id = m;
    }
    free(cat);
    if (skipped > 0)
        log_warn("%llu of %llu merges name tokens missing from the vocabulary; ignored",
                 (unsigned long long)skipped, (unsigned long long)n);
    return DUET_OK;
}

/* The bytes each token decodes to. */
static duet_status_t build_pieces(tok_t *t, char *err, size_t errlen)
{
    uint32_t total = t->text_off[t->n_vocab], o = 0;

    /* No piece is longer than its text (byte-level and '▁' shrink). */
    t->piece = malloc((size_t)total + 1);
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof(*t->piece_off));
    if (t->piece == NULL || t->piece_off == NULL)
        return FAIL(DUET_ERR_NOMEM, "out of memory for the vocabulary");
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len;
        const uint8_t *s = (const uint8_t *)tok_str(t, id, &len);
        uint8_t type = t->type[id];
        uint32_t start = o;

        t->piece_off[id] = o;
        if (type == TOK_TYPE_UNUSED) {
            /* nothing */
        } else if (type == TOK_TYPE_CONTROL || type == TOK_TYPE_UNKNOWN ||
                   type == TOK_TYPE_USER_DEFINED) {
            memcpy(t->piece + o, s, len);
            o += (uint32_t)len;
        } else if (t->kind == TOK_VOCAB_BPE) {
            for (size_t i = 0; i < len;) {
                uint32_t cp;
                int l = unicode_next(s + i, len - i, &cp);
                int b = unicode_cp_to_byte(cp);

                if (b >= 0) {
                    t->piece[o++] = (uint8_t)b;
                } else {            /* not byte-level text: keep it as is */
                    memcpy(t->piece + o, s + i, (size_t)l);
                    o += (uint32_t)l;
                }
                i += (size_t)l;
            }
        } else if (type == TOK_TYPE_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
            char hex[3] = {(char)s[3], (char)s[4], 0};

            t->piece[o++] = (uint8_t)strtoul(hex, NULL, 16);
        } else {
            for (size_t i = 0; i < len;) {
                if (i + 3 <= len && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
                    t->piece[o++] = ' ';
                    i += 3;
                } else {
                    t->piece[o++] = s[i++];
                }
            }
        }
        if (o - start > t->max_piece)
            t->max_piece = o - start;
    }
    t->piece_off[t->n_vocab] = o;
    return DUET_OK;
}

static int cmp_special(const void *a, const void *b, void *arg)
{
    const tok_t *t = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    size_t lx, ly;
    const uint8_t *sx = (const uint8_t *)tok_str(t, x, &lx);
    const uint8_t *sy = (const uint8_t *)tok_str(t, y, &ly);

    if (sx[0] != sy[0])
        return sx[0] < sy[0] ? -1 : 1;
    if (lx != ly)
        return lx > ly ? -1 : 1;    /* longest first */
    return x < y ? -1 : x > y;
}

static duet_status_t build_specials(tok_t *t, char *err, size_t errlen)
{
    uint32_t n = 0;

    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->type[id];

        n += (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN || ty == TOK_TYPE_USER_DEFINED) &&
             t->text_off[id + 1] > t->text_off[id];
    }
    t->special = malloc(((size_t)n + 1) * sizeof(*t->special));
    if (t->special == NULL)
        return FAIL(DUET_ERR_NOMEM, "out of memory for the special tokens");
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->type[id];

        if ((ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN || ty == TOK_TYPE_USER_DEFINED) &&
            t->text_off[id + 1] > t->text_off[id])
            t->special[n++] = id;
    }
    t->n_special = n;
    qsort_r(t->special, n, sizeof(*t->special), cmp_special, t);
    for (unsigned b = 0, k = 0; b <= 256; b++) {
        while (k < n && (uint8_t)t->text[t->text_off[t->special[k]]] < b)
            k++;
        t->special_start[b] = k;
    }
    t->special_start[256] = n;
    return DUET_OK;
}

static duet_status_t load_id(tok_t *t, const gguf_t *g, const char *key, int32_t *id_p,
                             char *err, size_t errlen)
{
    uint32_t v;
    duet_status_t st = gguf_get_u32(g, key, &v);

    if (st == DUET_ERR_NOT_FOUND) {
        *id_p = -1;
        return DUET_OK;
    }
    if (st < 0 || v >= (uint32_t)t->n_vocab)
        return FAIL(DUET_ERR_CORRUPT, "%s is out of range (vocabulary of %d)", key, t->n_vocab);
    *id_p = (int32_t)v;
    return DUET_OK;
}

static bool load_bool(const gguf_t *g, const char *key, bool dflt)
{
    bool v;

    return gguf_get_bool(g, key, &v) == DUET_OK ? v : dflt;
}

static int32_t find_control(const tok_t *t, const char *text)
{
    int32_t id = tok_lookup(t, text, strlen(text));

    return id >= 0 && (t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_USER_DEFINED)
               ? id : -1;
}

static void add_eog(tok_t *t, int32_t id)
{
    if (id < 0 || t->n_eog == TOK_MAX_EOG)
        return;
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id)
            return;
    t->eog[t->n_eog++] = id;
}

static duet_status_t load_special_ids(tok_t *t, const gguf_t *g, char *err, size_t errlen)
{
    static const char *const eot_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>",
                                            "<end_of_turn>"};
    static const char *const eog_texts[] = {"<|eot_id|>", "<|eom_id|>", "<|im_end|>",
                                            "<|end|>", "<end_of_turn>", "<|endoftext|>"};
    duet_status_t st;

    CHECK_GOTO(load_id(t, g, "tokenizer.ggml.bos_token_id", &t->bos, err, errlen), st, out);
    CHECK_GOTO(load_id(t, g, "tokenizer.ggml.eos_token_id", &t->eos, err, errlen), st, out);
    CHECK_GOTO(load_id(t, g, "tokenizer.ggml.eot_token_id", &t->eot, err, errlen), st, out);
    CHECK_GOTO(load_id(t, g, "tokenizer.ggml.unknown_token_id", &t->unk, err, errlen), st, out);
    for (size_t i = 0; t->eot < 0 && i < sizeof(eot_texts) / sizeof(eot_texts[0]); i++)
        t->eot = find_control(t, eot_texts[i]);
    add_eog(t, t->eos);
    add_eog(t, t->eot);
    for (size_t i = 0; i < sizeof(eog_texts) / sizeof(eog_texts[0]); i++)
        add_eog(t, find_control(t, eog_texts[i]));
    t->add_bos = load_bool(g, "tokenizer.ggml.add_bos_token", t->kind == TOK_VOCAB_SPM);
    t->add_eos = load_bool(g, "tokenizer.ggml.add_eos_token", false);
    t->add_space_prefix = load_bool(g, "tokenizer.ggml.add_space_prefix",
                                    t->kind == TOK_VOCAB_SPM);
    if (t->add_bos && t->bos < 0)
        t->add_bos = false;
    if (t->add_eos && t->eos < 0)
        t->add_eos = false;
out:
    return st;
}

duet_status_t tok_load(const gguf_t *g, tok_t **tok_p, char *err, size_t errlen)
{
    gguf_str_t model, pre;
    tok_t *t;
    duet_status_t st;

    st = gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (st == DUET_ERR_NOT_FOUND)
        return FAIL(DUET_ERR_NOT_FOUND, "the file has no tokenizer (tokenizer.ggml.model is "
                    "missing)");
    if (st < 0)
        return FAIL(DUET_ERR_CORRUPT, "tokenizer.ggml.model is not a string");
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return FAIL(DUET_ERR_NOMEM, "out of memory");
    if (model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0) {
        t->kind = TOK_VOCAB_BPE;
    } else if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0) {
        t->kind = TOK_VOCAB_SPM;
    } else {
        st = FAIL(DUET_ERR_UNSUPPORTED, "unsupported tokenizer model '%.*s' (supported: gpt2, "
                  "llama)", (int)(model.len > 64 ? 64 : model.len), model.ptr);
        goto err_free;
    }
    if (t->kind == TOK_VOCAB_BPE) {
        st = gguf_get_str(g, "tokenizer.ggml.pre", &pre);
        if (st == DUET_ERR_NOT_FOUND) {
            log_warn("tokenizer.ggml.pre is missing; using the gpt2 pre-tokenizer");
            t->pre = PRETOK_GPT2;
        } else if (st < 0 || pretok_by_name(pre.ptr, pre.len, &t->pre) < 0) {
            st = FAIL(DUET_ERR_UNSUPPORTED, "unsupported pre-tokenizer '%.*s' (supported: "
                      "default, gpt2, llama3, llama-bpe, smollm, starcoder, ...)",
                      st < 0 ? 0 : (int)(pre.len > 64 ? 64 : pre.len), st < 0 ? "" : pre.ptr);
            goto err_free;
        }
        t->ignore_merges = t->pre == PRETOK_LLAMA3;
    }
    CHECK_GOTO(load_strings(t, g, err, errlen), st, err_free);
    CHECK_GOTO(load_numeric(t, g, err, errlen), st, err_free);
    if (t->kind == TOK_VOCAB_BPE)
        CHECK_GOTO(load_merges(t, g, err, errlen), st, err_free);
    for (int b = 0; b < 256; b++) {
        char s[8];
        int n;

        if (t->kind == TOK_VOCAB_BPE)
            n = unicode_put(s, unicode_byte_to_cp((uint8_t)b));
        else
            n = snprintf(s, sizeof(s), "<0x%02X>", b);
        t->byte_tok[b] = tok_lookup(t, s, (size_t)n);
    }
    CHECK_GOTO(build_pieces(t, err, errlen), st, err_free);
    CHECK_GOTO(build_specials(t, err, errlen), st, err_free);
    CHECK_GOTO(load_special_ids(t, g, err, errlen), st, err_free);
    *tok_p = t;
    return DUET_OK;

err_free:
    tok_destroy(t);
    return st;
}

void tok_destroy(tok_t *t)
{
    if (t == NULL)
        return;
    free(t->special);
    free(t->mmap);
    free(t->smap);
    free(t->type);
    free(t->scores);
    free(t->piece_off);
    free(t->piece);
    free(t->text_off);
    free(t->text);
    free(t);
}

tok_vocab_t tok_vocab_kind(const tok_t *t)
{
    return t->kind;
}

const char *tok_pre_name(const tok_t *t)
{
    if (t->kind == TOK_VOCAB_SPM)
        return "spm";
    switch (t->pre) {
    case PRETOK_GPT2:   return "gpt2";
    case PRETOK_LLAMA3: return "llama3";
    case PRETOK_SMOLLM: return "smollm";
    }
    return "?";
}

int32_t tok_n_vocab(const tok_t *t) { return t->n_vocab; }
int32_t tok_bos(const tok_t *t) { return t->bos; }
int32_t tok_eos(const tok_t *t) { return t->eos; }
int32_t tok_eot(const tok_t *t) { return t->eot; }
bool    tok_add_bos(const tok_t *t) { return t->add_bos; }

bool tok_is_eog(const tok_t *t, int32_t id)
{
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id)
            return true;
    return false;
}

tok_type_t tok_token_type(const tok_t *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? (tok_type_t)t->type[id] : TOK_TYPE_UNUSED;
}

const char *tok_token_text(const tok_t *t, int32_t id, size_t *len_p)
{
    if (id < 0 || id >= t->n_vocab)
        return NULL;
    return tok_str(t, id, len_p);
}
