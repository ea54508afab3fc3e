/* tok_encode: split the text at special tokens (leftmost-longest), encode
 * each raw fragment with the vocabulary's algorithm, add BOS/EOS. Also the
 * scratch space and priority queue the BPE and SPM merges share. */
#include <stdlib.h>

#define DUET_LOG_COMPONENT "tokenizer"
#include "common/log.h"
#include "model/tokenizer_int.h"

void tok_ids_free(tok_ids_t *ids)
{
    free(ids->v);
    ids->v = NULL;
    ids->n = ids->cap = 0;
}

duet_status_t tok_ids_push(tok_ids_t *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? 2 * ids->cap : 64;
        int32_t *v = realloc(ids->v, cap * sizeof(*v));

        if (v == NULL)
            return DUET_ERR_NOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return DUET_OK;
}

duet_status_t tok_enc_reserve(tok_enc_t *e, size_t nsym, size_t nbuf)
{
    if (nsym > e->sym_cap) {
        size_t cap = nsym < 256 ? 256 : nsym;
        tok_sym_t *s = realloc(e->sym, cap * sizeof(*s));

        if (s == NULL)
            return DUET_ERR_NOMEM;
        e->sym = s;
        e->sym_cap = cap;
    }
    if (nbuf > e->buf_cap) {
        size_t cap = nbuf < 1024 ? 1024 : nbuf;
        char *b = realloc(e->buf, cap);

        if (b == NULL)
            return DUET_ERR_NOMEM;
        e->buf = b;
        e->buf_cap = cap;
    }
    return DUET_OK;
}

/* a before b: higher score, then lower left. */
static inline bool pair_before(const tok_pair_t *a, const tok_pair_t *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

duet_status_t tok_heap_push(tok_enc_t *e, const tok_pair_t *p)
{
    size_t i;

    if (e->heap_n == e->heap_cap) {
        size_t cap = e->heap_cap ? 2 * e->heap_cap : 256;
        tok_pair_t *h = realloc(e->heap, cap * sizeof(*h));

        if (h == NULL)
            return DUET_ERR_NOMEM;
        e->heap = h;
        e->heap_cap = cap;
    }
    i = e->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;

        if (!pair_before(p, &e->heap[parent]))
            break;
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = *p;
    return DUET_OK;
}

bool tok_heap_pop(tok_enc_t *e, tok_pair_t *p)
{
    tok_pair_t last;
    size_t i = 0, n;

    if (e->heap_n == 0)
        return false;
    *p = e->heap[0];
    last = e->heap[--e->heap_n];
    n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;

        if (c >= n)
            break;
        if (c + 1 < n && pair_before(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!pair_before(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0)
        e->heap[i] = last;
    return true;
}

/* A raw fragment starts the text or follows a special token, so with
 * add_space_prefix every fragment gets the SPM space prefix (llama.cpp and
 * Hugging Face's Prepend normalizer agree). */
static duet_status_t fragment(tok_enc_t *e, const uint8_t *s, size_t n)
{
    if (n == 0)
        return DUET_OK;
    if (e->tok->kind == TOK_VOCAB_SPM)
        return tok_spm_fragment(e, s, n, e->tok->add_space_prefix);
    return tok_bpe_fragment(e, s, n);
}

/* The longest special token starting at s (n bytes left), or -1. */
static int32_t match_special(const tok_t *t, const uint8_t *s, size_t n, unsigned flags,
                             size_t *len_p)
{
    for (uint32_t k = t->special_start[s[0]]; k < t->special_start[s[0] + 1]; k++) {
        int32_t id = t->special[k];
        size_t len;
        const char *txt = tok_str(t, id, &len);

        if (t->type[id] != TOK_TYPE_USER_DEFINED && !(flags & TOK_PARSE_SPECIAL))
            continue;
        if (len <= n && memcmp(txt, s, len) == 0) {
            *len_p = len;
            return id;
        }
    }
    return -1;
}

duet_status_t tok_encode(const tok_t *t, const char *text, size_t len, unsigned flags,
                         tok_ids_t *out)
{
    const uint8_t *s = (const uint8_t *)text;
    tok_enc_t e = {.tok = t, .out = out};
    size_t i = 0, frag = 0, n0 = out->n;
    duet_status_t st = DUET_OK;

    if ((flags & TOK_ADD_SPECIAL) && t->add_bos)
        CHECK_GOTO(tok_ids_push(out, t->bos), st, err_undo);
    while (t->n_special > 0 && i < len) {
        size_t mlen;
        int32_t id;

        if (t->special_start[s[i]] == t->special_start[s[i] + 1] ||
            (id = match_special(t, s + i, len - i, flags, &mlen)) < 0) {
            i++;
            continue;
        }
        CHECK_GOTO(fragment(&e, s + frag, i - frag), st, err_undo);
        CHECK_GOTO(tok_ids_push(out, id), st, err_undo);
        i += mlen;
        frag = i;
    }
    CHECK_GOTO(fragment(&e, s + frag, len - frag), st, err_undo);
    if ((flags & TOK_ADD_SPECIAL) && t->add_eos)
        CHECK_GOTO(tok_ids_push(out, t->eos), st, err_undo);
    goto out;

err_undo:
    out->n = n0;
out:
    free(e.buf);
    free(e.heap);
    free(e.sym);
    return st;
}
