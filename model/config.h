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
    rope_scaling_t rope_scaling;
    float          rope_scale;      /* rope.scaling.factor, 1 when none */
    int32_t        rope_orig_ctx;   /* rope.scaling.original_context_length */
    bool           tied_output;     /* no output.weight: reuse token_embd */
    uint64_t       fingerprint;
} model_config_t;

/* Fill cfg from g. Checks that every tensor the architecture needs exists
 * with the right shape and a supported type. err gets a one-line reason. */
duet_status_t model_config_load(const gguf_t *g, model_config_t *cfg,
                                char *err, size_t errlen);

#endif
