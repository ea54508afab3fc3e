/* Model configuration of the llama architecture family, read from GGUF
 * metadata, and its fingerprint (a hash of the config and the tensor
 * layout: names, types, shapes) that nodes compare to be sure they serve the
 * same model. Any other architecture is refused with a clear message.
 *
 * Tensor names (llama.cpp's): token_embd.weight, output_norm.weight,
 * output.weight (absent when tied to token_embd), and per layer i:
 * blk.i.attn_norm.weight, blk.i.attn_q/k/v.weight, blk.i.attn_output.weight,
 * blk.i.ffn_norm.weight, blk.i.ffn_gate/up/down.weight.
 * Q and K weights are stored for the adjacent-pair ("normal") RoPE: rotate
 * (x[2i], x[2i+1]) by theta_i = pos * base^(-2i/rot_dim). */
#ifndef DUET_MODEL_CONFIG_H
#define DUET_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "model/gguf.h"

typedef enum {
    ROPE_SCALING_NONE = 0,
    ROPE_SCALING_LINEAR,
    ROPE_SCALING_YARN,
    ROPE_SCALING_LLAMA3,
} rope_scaling_t;

typedef struct {
    char           arch[32];        /* "llama" */
    char           name[128];       /* general.name, may be empty */
    int32_t        n_layers;
    int32_t        hidden;          /* embedding length */
    int32_t        n_heads;
    int32_t        n_kv_heads;      /* GQA */
    int32_t        head_dim;        /* hidden / n_heads unless the file says */
    int32_t        rope_dim;        /* rope.dimension_count, default head_dim */
    int32_t        ffn;             /* feed-forward length */
    int32_t        vocab;
    int32_t        ctx_len;         /* context_length */
    float          rms_eps;
    float          rope_base;       /* rope.freq_base, default 10000 */
    rope_scaling_t rope_scaling;    /* LLAMA3 also when rope_freqs.weight exists
                                     * (per-dimension factors, [rope_dim / 2]) */
    float          rope_scale;      /* rope.scaling.factor, 1 when none */
    int32_t        rope_orig_ctx;   /* rope.scaling.original_context_length */
    bool           tied_output;     /* no output.weight: reuse token_embd */
    uint64_t       fingerprint;
} model_config_t;

/* Fill cfg from g. Checks that every tensor the architecture needs exists
 * with the right shape and a supported type. err gets a one-line reason.
 * Errors: DUET_ERR_UNSUPPORTED (another architecture, an unknown rope
 * scaling type), DUET_ERR_NOT_FOUND (a required key or tensor is missing),
 * DUET_ERR_CORRUPT (a value out of range, a tensor of the wrong shape).
 * The tokenizer is not required here; see model_check_tokenizer. */
duet_status_t model_config_load(const gguf_t *g, model_config_t *cfg,
                                char *err, size_t errlen);

/* The fingerprint stored in cfg->fingerprint by model_config_load: FNV-1a
 * (64 bit, offset 0xcbf29ce484222325, prime 0x100000001b3) over the bytes of
 * "duet-model-v1", the architecture name with its NUL, then as little-endian
 * u64 each: n_layers, hidden, n_heads, n_kv_heads, head_dim, rope_dim, ffn,
 * vocab, ctx_len, the bit patterns of rms_eps and rope_base, rope_scaling,
 * the bits of rope_scale, rope_orig_ctx, tied_output, the tensor count; then
 * for every tensor in file order: name length (u64), name bytes, type,
 * n_dims, ne[0..3], nbytes (u64 each), and the first and last
 * min(32, nbytes) bytes of its data. Metadata outside the config (name,
 * tokenizer) does not count. */
uint64_t model_config_fingerprint(const gguf_t *g, const model_config_t *cfg);

/* Check that g carries a tokenizer: tokenizer.ggml.model (a string) and
 * tokenizer.ggml.tokens (a non-empty string array) with, when cfg is not
 * NULL, cfg->vocab entries. DUET_ERR_NOT_FOUND with "no tokenizer in this
 * file ..." when absent, DUET_ERR_MISMATCH when the sizes differ. */
duet_status_t model_check_tokenizer(const gguf_t *g, const model_config_t *cfg,
                                    char *err, size_t errlen);

#endif
