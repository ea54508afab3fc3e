/* Tokenizer from a GGUF file's tokenizer.ggml.* metadata.
 *
 * Two vocabulary kinds:
 *  - "gpt2": byte-level BPE with a pre-tokenizer named by tokenizer.ggml.pre
 *    (gpt2/default, llama3/llama-bpe, smollm/starcoder; see pretok.c);
 *  - "llama": SentencePiece-style BPE over scores, '▁' for spaces, an
 *    optional space prefix, and byte fallback through <0xXX> tokens.
 * Special tokens (control, user-defined, unknown) can be recognised in the
 * text; BOS/EOS/EOT ids and add_bos come from the metadata.
 *
 * A tok_t is immutable after tok_load: any number of threads may encode and
 * decode with it at once. It copies what it needs; the gguf_t may be closed. */
#ifndef DUET_MODEL_TOKENIZER_H
#define DUET_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/gguf.h"

typedef struct tok tok_t;

typedef enum {
    TOK_VOCAB_BPE = 1,          /* tokenizer.ggml.model "gpt2" */
    TOK_VOCAB_SPM = 2,          /* tokenizer.ggml.model "llama" */
} tok_vocab_t;

/* tokenizer.ggml.token_type values (llama.cpp's). */
typedef enum {
    TOK_TYPE_NORMAL       = 1,
    TOK_TYPE_UNKNOWN      = 2,
    TOK_TYPE_CONTROL      = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED       = 5,
    TOK_TYPE_BYTE         = 6,
} tok_type_t;

/* Encode flags. */
enum {
    /* Recognise control and unknown tokens written in the text (e.g.
     * "<|im_start|>"). User-defined tokens are always recognised. */
    TOK_PARSE_SPECIAL = 1u << 0,
    /* Add BOS (and EOS) when the metadata asks for them (add_bos_token,
     * add_eos_token). */
    TOK_ADD_SPECIAL   = 1u << 1,
};

/* Decode flags. */
enum {
    /* Render control and unknown tokens as their text; by default they
     * decode to nothing. */
    TOK_DECODE_SPECIAL = 1u << 0,
};

/* A growable array of token ids; zero-initialise, free with tok_ids_free. */
typedef struct {
    int32_t *v;
    size_t   n, cap;
} tok_ids_t;

void tok_ids_free(tok_ids_t *ids);
/* Append one id (DUET_ERR_NOMEM when it cannot grow). */
duet_status_t tok_ids_push(tok_ids_t *ids, int32_t id);

/* Build the tokenizer from g's metadata. Missing or inconsistent metadata
 * (no tokenizer.ggml.model, an unknown model or pre-tokenizer, array
 * lengths that disagree, ids out of range) gives an error and a one-line
 * reason in err. */
duet_status_t tok_load(const gguf_t *g, tok_t **tok_p, char *err, size_t errlen);

void tok_destroy(tok_t *tok);

tok_vocab_t tok_vocab_kind(const tok_t *tok);
/* The pre-tokenizer's canonical name ("gpt2", "llama3", "smollm"), or
 * "spm" for a SentencePiece vocabulary. */
const char *tok_pre_name(const tok_t *tok);
int32_t     tok_n_vocab(const tok_t *tok);
/* Special ids, -1 when the model has none. EOT is the end-of-turn token
 * (tokenizer.ggml.eot_token_id, else a known text like "<|im_end|>"). */
int32_t     tok_bos(const tok_t *tok);
int32_t     tok_eos(const tok_t *tok);
int32_t     tok_eot(const tok_t *tok);
bool        tok_add_bos(const tok_t *tok);
/* True for ids that end generation: EOS, EOT and the other end-of-text
 * control tokens of the vocabulary. */
bool        tok_is_eog(const tok_t *tok, int32_t id);
tok_type_t  tok_token_type(const tok_t *tok, int32_t id);
/* The vocabulary string of id (as stored in the file; not NUL-terminated),
 * or NULL when id is out of range. */
const char *tok_token_text(const tok_t *tok, int32_t id, size_t *len_p);
/* Id of an exact vocabulary string, or -1. */
int32_t     tok_lookup(const tok_t *tok, const char *text, size_t len);

/* Append the tokens of text[0..len) to out. Any byte string is accepted
 * (ill-formed UTF-8 is encoded byte by byte). */
duet_status_t tok_encode(const tok_t *tok, const char *text, size_t len, unsigned flags,
                         tok_ids_t *out);

/* Decode ids into a malloc'd, NUL-terminated string (*len_p excludes the
 * NUL); the caller frees it. The result is always valid UTF-8: ill-formed
 * bytes become U+FFFD. An id out of range is DUET_ERR_INVALID with a reason
 * in err. */
duet_status_t tok_decode(const tok_t *tok, const int32_t *ids, size_t n, unsigned flags,
                         char **text_p, size_t *len_p, char *err, size_t errlen);

/* Incremental detokenizer: feed ids one at a time, get text that is always
 * valid UTF-8. Bytes of a character split across tokens are held back until
 * it is complete; bytes that can never complete become U+FFFD. A plain
 * struct (no allocation): embed it in a request. */
typedef struct {
    const tok_t *tok;
    unsigned     flags;         /* TOK_DECODE_* */
    bool         started;       /* a piece was emitted (SPM leading space) */
    uint8_t      npend;
    uint8_t      pend[4];       /* incomplete UTF-8 tail, at most 3 bytes */
} tok_detok_t;

void tok_detok_init(tok_detok_t *d, const tok_t *tok, unsigned flags);

/* Most bytes one tok_detok_feed or tok_detok_flush can write. */
size_t tok_detok_max_out(const tok_t *tok);

/* Feed one id; write the newly complete text to out (room for
 * tok_detok_max_out bytes; not NUL-terminated) and its length to *len_p.
 * DUET_ERR_INVALID for an id out of range (the state is unchanged). */
duet_status_t tok_detok_feed(tok_detok_t *d, int32_t id, char *out, size_t cap,
                             size_t *len_p);

/* End of stream: write what is held back (as U+FFFD) and reset. */
size_t tok_detok_flush(tok_detok_t *d, char *out, size_t cap);

#endif
