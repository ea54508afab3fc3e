/* Tokenizer internals shared by tokenizer.c (loading, special tokens,
 * decoding), tokenizer_bpe.c, tokenizer_spm.c and pretok.c. */
#ifndef DUET_MODEL_TOKENIZER_INT_H
#define DUET_MODEL_TOKENIZER_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "model/tokenizer.h"

typedef enum {
    PRETOK_GPT2,
    PRETOK_LLAMA3,
    PRETOK_SMOLLM,
} pretok_kind_t;

/* Called for each pre-token; a negative status stops the split. */
typedef duet_status_t (*pretok_fn_t)(void *ctx, const uint8_t *piece, size_t len);

duet_status_t pretok_split(pretok_kind_t kind, const uint8_t *s, size_t n,
                           pretok_fn_t fn, void *ctx);
/* DUET_ERR_UNSUPPORTED for an unknown name. */
duet_status_t pretok_by_name(const char *name, size_t len, pretok_kind_t *kind_p);

/* One merge: (left id, right id) -> (rank, merged id). */
typedef struct {
    uint64_t key;               /* left << 32 | right; 0 marks a free slot */
    int32_t  rank;
    int32_t  id;
} tok_merge_t;

#define TOK_MAX_EOG 8

struct tok {
    tok_vocab_t    kind;
    pretok_kind_t  pre;
    bool           ignore_merges;   /* llama3: a pre-token in the vocab is one token */
    int32_t        n_vocab;

    char          *text;            /* all vocab strings, back to back */
    uint32_t      *text_off;        /* (n_vocab + 1) */
    uint8_t       *piece;           /* decoded bytes of each token */
    uint32_t      *piece_off;       /* (n_vocab + 1) */
    uint32_t       max_piece;
    float         *scores;          /* (n_vocab), SPM only */
    uint8_t       *type;            /* (n_vocab) tok_type_t */

    int32_t       *smap;            /* string -> id, open addressing, -1 free */
    uint32_t       smap_mask;
    tok_merge_t   *mmap;            /* pair -> merge, open addressing */
    uint32_t       mmap_mask;

    int32_t        byte_tok[256];   /* BPE: the one-byte token; SPM: <0xXX>; -1 */

    /* Special tokens that may be matched in text, grouped by first byte and
     * longest first within a group. */
    int32_t       *special;         /* ids */
    uint32_t       n_special;
    uint32_t       special_start[257];  /* group of byte b: [start[b], start[b+1]) */

    int32_t        bos, eos, eot, unk;
    bool           add_bos, add_eos, add_space_prefix;
    int32_t        eog[TOK_MAX_EOG];
    int            n_eog;
};

static inline const char *tok_str(const tok_t *t, int32_t id, size_t *len_p)
{
    *len_p = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

static inline uint32_t tok_hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

static inline uint32_t tok_hash_pair(uint64_t key)
{
    key *= 0x9E3779B97F4A7C15ull;
    return (uint32_t)(key >> 32);
}

static inline const tok_merge_t *tok_merge_find(const tok_t *t, int32_t l, int32_t r)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint32_t i = tok_hash_pair(key) & t->mmap_mask;

    for (;; i = (i + 1) & t->mmap_mask) {
        if (t->mmap[i].key == key)
            return &t->mmap[i];
        if (t->mmap[i].key == 0)
            return NULL;
    }
}

/* Scratch space for one tok_encode call. */
typedef struct {
    int32_t  id;
    int32_t  prev, next;        /* -1 at the ends */
    uint32_t start, len;        /* SPM: bytes of the symbol in the text */
} tok_sym_t;

typedef struct {
    float    score;             /* SPM: higher first; BPE: -rank */
    int32_t  left;              /* symbol index; lower first on ties */
    int32_t  lid, rid;          /* ids when queued; stale entries are dropped */
    int32_t  mid;               /* BPE: the merged id */
    uint32_t len;               /* SPM: byte length of the merged symbol */
} tok_pair_t;

typedef struct {
    const tok_t *tok;
    tok_ids_t   *out;
    tok_sym_t   *sym;
    size_t       sym_cap;
    tok_pair_t  *heap;
    size_t       heap_n, heap_cap;
    char        *buf;           /* byte-level text, SPM normalised text */
    size_t       buf_cap;
} tok_enc_t;

duet_status_t tok_enc_reserve(tok_enc_t *e, size_t nsym, size_t nbuf);
duet_status_t tok_heap_push(tok_enc_t *e, const tok_pair_t *p);
bool          tok_heap_pop(tok_enc_t *e, tok_pair_t *p);

/* Encode one raw-text fragment (no special tokens in it); prefix_space
 * prepends the SPM space prefix. */
duet_status_t tok_bpe_fragment(tok_enc_t *e, const uint8_t *s, size_t n);
duet_status_t tok_spm_fragment(tok_enc_t *e, const uint8_t *s, size_t n, bool prefix_space);

#endif
