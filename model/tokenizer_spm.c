/* SentencePiece-style BPE (tokenizer.ggml.model "llama"): spaces become
 * U+2581 '▁' (with one prepended to each fragment when add_space_prefix),
 * symbols start as single characters, and the adjacent pair whose
 * concatenation is in the vocabulary with the highest score merges first
 * (leftmost on ties). A final symbol missing from the vocabulary falls back
 * to its bytes as <0xXX> tokens, else to the unknown token. */
#include <stdlib.h>

#define DUET_LOG_COMPONENT "tokenizer"
#include "common/log.h"
#include "model/tokenizer_int.h"
#include "model/unicode.h"

static duet_status_t push_bigram(tok_enc_t *e, int32_t l, int32_t r)
{
    const tok_sym_t *a = &e->sym[l], *b = &e->sym[r];
    int32_t id = tok_lookup(e->tok, e->buf + a->start, a->len + b->len);
    tok_pair_t p;

    if (id < 0)
        return DUET_OK;
    p.score = e->tok->scores[id];
    p.left = l;
    p.lid = p.rid = p.mid = id;
    p.len = a->len + b->len;
    return tok_heap_push(e, &p);
}

static duet_status_t emit_symbol(tok_enc_t *e, const tok_sym_t *y)
{
    const tok_t *t = e->tok;
    int32_t id = tok_lookup(t, e->buf + y->start, y->len);

    if (id >= 0)
        return tok_ids_push(e->out, id);
    for (uint32_t i = 0; i < y->len; i++) {
        id = t->byte_tok[(uint8_t)e->buf[y->start + i]];
        if (id < 0)
            id = t->unk;
        if (id >= 0)
            CHECK(tok_ids_push(e->out, id));
    }
    return DUET_OK;
}

duet_status_t tok_spm_fragment(tok_enc_t *e, const uint8_t *s, size_t n, bool prefix_space)
{
    static const char sp[3] = {(char)0xE2, (char)0x96, (char)0x81};   /* U+2581 */
    size_t nsp = prefix_space, m = 0, nsym = 0;
    tok_sym_t *sym;
    tok_pair_t p;

    for (size_t i = 0; i < n; i++)
        nsp += s[i] == ' ';
    CHECK(tok_enc_reserve(e, n + 1, n + 2 * nsp + 1));
    if (prefix_space) {
        memcpy(e->buf, sp, 3);
        m = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(e->buf + m, sp, 3);
            m += 3;
        } else {
            e->buf[m++] = (char)s[i];
        }
    }
    sym = e->sym;
    for (size_t i = 0; i < m;) {
        uint32_t cp;
        int len = unicode_next((const uint8_t *)e->buf + i, m - i, &cp);

        sym[nsym].start = (uint32_t)i;
        sym[nsym].len = (uint32_t)len;
        sym[nsym].prev = (int32_t)nsym - 1;
        sym[nsym].next = -1;
        if (nsym > 0)
            sym[nsym - 1].next = (int32_t)nsym;
        nsym++;
        i += (size_t)len;
    }
    if (nsym == 0)
        return DUET_OK;
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < nsym; i++)
        CHECK(push_bigram(e, (int32_t)i, (int32_t)i + 1));
    while (tok_heap_pop(e, &p)) {
        int32_t l = p.left, r = sym[l].next;

        if (sym[l].len == 0 || r < 0 || sym[l].len + sym[r].len != p.len)
            continue;           /* stale */
        sym[l].len += sym[r].len;
        sym[l].next = sym[r].next;
        if (sym[r].next >= 0)
            sym[sym[r].next].prev = l;
        sym[r].len = 0;
        if (sym[l].prev >= 0)
            CHECK(push_bigram(e, sym[l].prev, l));
        if (sym[l].next >= 0)
            CHECK(push_bigram(e, l, sym[l].next));
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        CHECK(emit_symbol(e, &sym[i]));
    return DUET_OK;
}
