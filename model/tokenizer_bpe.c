/* Byte-level BPE (GPT-2 style): pre-tokenize, map each byte to its one-byte
 * token, then repeatedly merge the adjacent pair of lowest rank (leftmost
 * on ties) through a priority queue over a linked list of symbols. */
#include <stdlib.h>

#define DUET_LOG_COMPONENT "tokenizer"
#include "common/log.h"
#include "model/tokenizer_int.h"
#include "model/unicode.h"

static duet_status_t push_pair(tok_enc_t *e, int32_t l, int32_t r)
{
    const tok_merge_t *m = tok_merge_find(e->tok, e->sym[l].id, e->sym[r].id);
    tok_pair_t p;

    if (m == NULL)
        return DUET_OK;
    p.score = -(float)m->rank;
    p.left = l;
    p.lid = e->sym[l].id;
    p.rid = e->sym[r].id;
    p.mid = m->id;
    return tok_heap_push(e, &p);
}

static duet_status_t emit(tok_enc_t *e, int32_t id)
{
    return id < 0 ? DUET_OK : tok_ids_push(e->out, id);
}

/* One pre-token. */
static duet_status_t bpe_word(void *ctx, const uint8_t *s, size_t n)
{
    tok_enc_t *e = ctx;
    const tok_t *t = e->tok;
    tok_sym_t *sym;
    tok_pair_t p;
    size_t m = 0;
    duet_status_t st;

    if (n == 1)
        return emit(e, t->byte_tok[s[0]]);
    if (t->ignore_merges) {
        int32_t id;

        CHECK(tok_enc_reserve(e, 0, 2 * n));
        for (size_t i = 0; i < n; i++)
            m += (size_t)unicode_put(e->buf + m, unicode_byte_to_cp(s[i]));
        id = tok_lookup(t, e->buf, m);
        m = 0;
        if (id >= 0)
            return tok_ids_push(e->out, id);
    }
    CHECK(tok_enc_reserve(e, n, 0));
    sym = e->sym;
    /* A byte the vocabulary lacks is dropped and its neighbours meet, as in
     * Hugging Face's BPE without an unknown token. */
    for (size_t i = 0, k = 0; i < n; i++) {
        if (t->byte_tok[s[i]] < 0)
            continue;
        sym[k].id = t->byte_tok[s[i]];
        sym[k].prev = (int32_t)k - 1;
        sym[k].next = -1;
        if (k > 0)
            sym[k - 1].next = (int32_t)k;
        k++;
        m = k;
    }
    if (m == 0)
        return DUET_OK;
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < m; i++)
        CHECK(push_pair(e, (int32_t)i, (int32_t)i + 1));
    while (tok_heap_pop(e, &p)) {
        int32_t l = p.left, r = sym[l].next;

        if (sym[l].id != p.lid || r < 0 || sym[r].id != p.rid)
            continue;           /* stale: one side was merged since */
        sym[l].id = p.mid;
        sym[l].next = sym[r].next;
        if (sym[r].next >= 0)
            sym[sym[r].next].prev = l;
        sym[r].id = -2;
        if (sym[l].prev >= 0)
            CHECK(push_pair(e, sym[l].prev, l));
        if (sym[l].next >= 0)
            CHECK(push_pair(e, l, sym[l].next));
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if ((st = emit(e, sym[i].id)) < 0)
            return st;
    return DUET_OK;
}

duet_status_t tok_bpe_fragment(tok_enc_t *e, const uint8_t *s, size_t n)
{
    return pretok_split(e->tok->pre, s, n, bpe_word, e);
}
