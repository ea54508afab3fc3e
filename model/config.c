/* Model configuration of the llama family from GGUF metadata, the check that
 * every tensor the forward pass needs is there with the right shape, and the
 * model fingerprint (see model_config_fingerprint in config.h). */
#define DUET_LOG_COMPONENT "model"

#include "model/config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"

#define CFG_MAX_DIM  (1 << 24)   /* sanity bound on sizes and counts */

__attribute__((format(printf, 5, 6)))
static duet_status_t cfg_fail(const gguf_t *g, duet_status_t s, char *err, size_t errlen,
                              const char *fmt, ...);

static duet_status_t cfg_fail(const gguf_t *g, duet_status_t s, char *err, size_t errlen,
                              const char *fmt, ...)
{
    va_list ap;
    int n;

    if (err == NULL || errlen == 0)
        return s;
    n = snprintf(err, errlen, "%s: ", gguf_name(g));
    if (n < 0 || (size_t)n >= errlen)
        return s;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return s;
}

/* "<arch>.<suffix>" into key. */
static const char *arch_key(char *key, size_t len, const char *arch, const char *suffix)
{
    snprintf(key, len, "%s.%s", arch, suffix);
    return key;
}

/* Read a positive integer <arch>.<suffix> no larger than CFG_MAX_DIM. When
 * dflt >= 0 the key is optional. */
static duet_status_t cfg_int(const gguf_t *g, const char *arch, const char *suffix,
                             int64_t dflt, int32_t *v_p, char *err, size_t errlen)
{
    char key[96];
    int64_t v;
    duet_status_t s = gguf_get_i64(g, arch_key(key, sizeof(key), arch, suffix), &v);

    if (s == DUET_ERR_NOT_FOUND && dflt >= 0) {
        *v_p = (int32_t)dflt;
        return DUET_OK;
    }
    if (s == DUET_ERR_NOT_FOUND)
        return cfg_fail(g, DUET_ERR_NOT_FOUND, err, errlen, "missing metadata %s", key);
    if (s != DUET_OK)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen, "metadata %s is not an integer", key);
    if (v < 1 || v > CFG_MAX_DIM)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen, "metadata %s = %" PRId64
                        " is out of range (1 to %d)", key, v, CFG_MAX_DIM);
    *v_p = (int32_t)v;
    return DUET_OK;
}

static duet_status_t cfg_float(const gguf_t *g, const char *arch, const char *suffix,
                               float dflt, bool required, float *v_p, char *err, size_t errlen)
{
    char key[96];
    float v;
    duet_status_t s = gguf_get_f32(g, arch_key(key, sizeof(key), arch, suffix), &v);

    if (s == DUET_ERR_NOT_FOUND && !required) {
        *v_p = dflt;
        return DUET_OK;
    }
    if (s == DUET_ERR_NOT_FOUND)
        return cfg_fail(g, DUET_ERR_NOT_FOUND, err, errlen, "missing metadata %s", key);
    if (s != DUET_OK)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen, "metadata %s is not a float", key);
    if (!(v > 0.0f) || v > 1e30f)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen, "metadata %s = %g is out of range",
                        key, (double)v);
    *v_p = v;
    return DUET_OK;
}

/* Check that tensor name exists with exactly the given shape. */
static duet_status_t cfg_tensor(const gguf_t *g, const char *name, int n_dims, int64_t ne0,
                                int64_t ne1, char *err, size_t errlen)
{
    const gguf_tensor_t *t = gguf_find_tensor(g, name);

    if (t == NULL)
        return cfg_fail(g, DUET_ERR_NOT_FOUND, err, errlen, "missing tensor %s", name);
    if (t->n_dims != n_dims || t->ne[0] != ne0 || (n_dims > 1 && t->ne[1] != ne1)) {
        if (n_dims == 1)
            return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                            "tensor %s has shape [%" PRId64 ", %" PRId64 "] (%d dims), "
                            "expected [%" PRId64 "]", name, t->ne[0], t->ne[1], t->n_dims, ne0);
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "tensor %s has shape [%" PRId64 ", %" PRId64 "] (%d dims), "
                        "expected [%" PRId64 ", %" PRId64 "]",
                        name, t->ne[0], t->ne[1], t->n_dims, ne0, ne1);
    }
    return DUET_OK;
}

static duet_status_t cfg_check_tensors(const gguf_t *g, const model_config_t *c,
                                       char *err, size_t errlen)
{
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim;
    int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    char name[96];

    CHECK(cfg_tensor(g, "output_norm.weight", 1, c->hidden, 1, err, errlen));
    if (!c->tied_output)
        CHECK(cfg_tensor(g, "output.weight", 2, c->hidden, c->vocab, err, errlen));
    for (int i = 0; i < c->n_layers; i++) {
        const struct { const char *suffix; int n_dims; int64_t ne0, ne1; } need[] = {
            {"attn_norm.weight",   1, c->hidden, 1},
            {"attn_q.weight",      2, c->hidden, q_dim},
            {"attn_k.weight",      2, c->hidden, kv_dim},
            {"attn_v.weight",      2, c->hidden, kv_dim},
            {"attn_output.weight", 2, q_dim, c->hidden},
            {"ffn_norm.weight",    1, c->hidden, 1},
            {"ffn_gate.weight",    2, c->hidden, c->ffn},
            {"ffn_up.weight",      2, c->hidden, c->ffn},
            {"ffn_down.weight",    2, c->ffn, c->hidden},
        };

        for (size_t k = 0; k < sizeof(need) / sizeof(need[0]); k++) {
            snprintf(name, sizeof(name), "blk.%d.%s", i, need[k].suffix);
            CHECK(cfg_tensor(g, name, need[k].n_dims, need[k].ne0, need[k].ne1, err, errlen));
        }
    }
    return DUET_OK;
}

static duet_status_t cfg_rope_scaling(const gguf_t *g, model_config_t *c,
                                      char *err, size_t errlen)
{
    char key[96];
    gguf_str_t type;
    duet_status_t s;
    float f;

    c->rope_scaling = ROPE_SCALING_NONE;
    c->rope_scale = 1.0f;
    c->rope_orig_ctx = c->ctx_len;
    s = gguf_get_str(g, arch_key(key, sizeof(key), c->arch, "rope.scaling.type"), &type);
    if (s == DUET_OK) {
        static const struct { const char *name; rope_scaling_t v; } types[] = {
            {"none", ROPE_SCALING_NONE}, {"linear", ROPE_SCALING_LINEAR},
            {"yarn", ROPE_SCALING_YARN}, {"llama3", ROPE_SCALING_LLAMA3},
        };
        bool found = false;

        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
            if (type.len == strlen(types[i].name) &&
                memcmp(type.ptr, types[i].name, type.len) == 0) {
                c->rope_scaling = types[i].v;
                found = true;
            }
        }
        if (!found)
            return cfg_fail(g, DUET_ERR_UNSUPPORTED, err, errlen,
                            "rope scaling type '%.*s' is not supported (none, linear, yarn)",
                            (int)(type.len > 32 ? 32 : type.len), type.ptr);
    } else if (s != DUET_ERR_NOT_FOUND) {
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen, "metadata %s is not a string", key);
    } else if (gguf_get_f32(g, arch_key(key, sizeof(key), c->arch, "rope.scale_linear"),
                            &f) == DUET_OK && f != 1.0f) {
        c->rope_scaling = ROPE_SCALING_LINEAR;   /* the older key */
        c->rope_scale = f;
    }
    /* llama.cpp's converter stores llama3-style scaling as per-dimension
     * frequency factors in rope_freqs.weight. */
    if (c->rope_scaling == ROPE_SCALING_NONE && gguf_find_tensor(g, "rope_freqs.weight"))
        c->rope_scaling = ROPE_SCALING_LLAMA3;
    if (gguf_find_tensor(g, "rope_freqs.weight") != NULL)
        CHECK(cfg_tensor(g, "rope_freqs.weight", 1, c->rope_dim / 2, 1, err, errlen));
    if (c->rope_scaling != ROPE_SCALING_NONE) {
        CHECK(cfg_float(g, c->arch, "rope.scaling.factor", c->rope_scale, false,
                        &c->rope_scale, err, errlen));
        CHECK(cfg_int(g, c->arch, "rope.scaling.original_context_length", c->ctx_len,
                      &c->rope_orig_ctx, err, errlen));
    }
    return DUET_OK;
}

/* FNV-1a, 64 bit. */
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME  0x100000001b3ull

static uint64_t fnv(uint64_t h, const void *data, size_t n)
{
    const uint8_t *p = data;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    return fnv(h, &v, sizeof(v));   /* little-endian host (gguf.c checks) */
}

uint64_t model_config_fingerprint(const gguf_t *g, const model_config_t *c)
{
    uint64_t h = fnv(FNV_OFFSET, "duet-model-v1", 13);
    uint32_t bits;
    size_t n = gguf_n_tensors(g);

    h = fnv(h, c->arch, strlen(c->arch) + 1);
    h = fnv_u64(h, (uint64_t)c->n_layers);
    h = fnv_u64(h, (uint64_t)c->hidden);
    h = fnv_u64(h, (uint64_t)c->n_heads);
    h = fnv_u64(h, (uint64_t)c->n_kv_heads);
    h = fnv_u64(h, (uint64_t)c->head_dim);
    h = fnv_u64(h, (uint64_t)c->rope_dim);
    h = fnv_u64(h, (uint64_t)c->ffn);
    h = fnv_u64(h, (uint64_t)c->vocab);
    h = fnv_u64(h, (uint64_t)c->ctx_len);
    memcpy(&bits, &c->rms_eps, 4);
    h = fnv_u64(h, bits);
    memcpy(&bits, &c->rope_base, 4);
    h = fnv_u64(h, bits);
    h = fnv_u64(h, (uint64_t)c->rope_scaling);
    memcpy(&bits, &c->rope_scale, 4);
    h = fnv_u64(h, bits);
    h = fnv_u64(h, (uint64_t)c->rope_orig_ctx);
    h = fnv_u64(h, c->tied_output);
    h = fnv_u64(h, n);
    /* Tensors in file order: name, type, dims, and a sample of the data (the
     * first and last 32 bytes), so that two files of one shape with other
     * weights (another mkmodel seed) differ, without reading gigabytes. */
    for (size_t i = 0; i < n; i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);
        size_t k = t->nbytes < 32 ? (size_t)t->nbytes : 32;

        h = fnv_u64(h, t->name.len);
        h = fnv(h, t->name.ptr, (size_t)t->name.len);
        h = fnv_u64(h, (uint64_t)t->type);
        h = fnv_u64(h, (uint64_t)t->n_dims);
        for (int j = 0; j < GGUF_MAX_DIMS; j++)
            h = fnv_u64(h, (uint64_t)t->ne[j]);
        h = fnv_u64(h, t->nbytes);
        h = fnv(h, t->data, k);
        h = fnv(h, (const uint8_t *)t->data + t->nbytes - k, k);
    }
    return h;
}

duet_status_t model_config_load(const gguf_t *g, model_config_t *cfg,
                                char *err, size_t errlen)
{
    model_config_t c;
    gguf_str_t arch, name;
    const gguf_tensor_t *emb;
    char key[96];
    int32_t kl, vl;
    int64_t vs;
    duet_status_t s;

    memset(&c, 0, sizeof(c));
    s = gguf_get_str(g, "general.architecture", &arch);
    if (s == DUET_ERR_NOT_FOUND)
        return cfg_fail(g, DUET_ERR_NOT_FOUND, err, errlen,
                        "missing metadata general.architecture");
    if (s != DUET_OK)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "metadata general.architecture is not a string");
    if (arch.len != 5 || memcmp(arch.ptr, "llama", 5) != 0)
        return cfg_fail(g, DUET_ERR_UNSUPPORTED, err, errlen,
                        "architecture '%.*s' is not supported (duet runs the llama family)",
                        (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    memcpy(c.arch, arch.ptr, arch.len);
    if (gguf_get_str(g, "general.name", &name) == DUET_OK)
        snprintf(c.name, sizeof(c.name), "%.*s",
                 (int)(name.len >= sizeof(c.name) ? sizeof(c.name) - 1 : name.len), name.ptr);

    CHECK(cfg_int(g, c.arch, "block_count", -1, &c.n_layers, err, errlen));
    CHECK(cfg_int(g, c.arch, "embedding_length", -1, &c.hidden, err, errlen));
    CHECK(cfg_int(g, c.arch, "attention.head_count", -1, &c.n_heads, err, errlen));
    CHECK(cfg_int(g, c.arch, "attention.head_count_kv", c.n_heads, &c.n_kv_heads, err, errlen));
    CHECK(cfg_int(g, c.arch, "feed_forward_length", -1, &c.ffn, err, errlen));
    CHECK(cfg_int(g, c.arch, "context_length", -1, &c.ctx_len, err, errlen));
    if (c.hidden % c.n_heads != 0)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "embedding length %d is not a multiple of the head count %d",
                        c.hidden, c.n_heads);
    CHECK(cfg_int(g, c.arch, "attention.key_length", c.hidden / c.n_heads, &kl, err, errlen));
    CHECK(cfg_int(g, c.arch, "attention.value_length", kl, &vl, err, errlen));
    if (kl != vl)
        return cfg_fail(g, DUET_ERR_UNSUPPORTED, err, errlen,
                        "key length %d differs from value length %d", kl, vl);
    c.head_dim = kl;
    CHECK(cfg_int(g, c.arch, "rope.dimension_count", c.head_dim, &c.rope_dim, err, errlen));
    if (c.n_heads % c.n_kv_heads != 0)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "head count %d is not a multiple of the KV head count %d",
                        c.n_heads, c.n_kv_heads);
    if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "rope dimension %d must be even and at most the head dim %d",
                        c.rope_dim, c.head_dim);
    CHECK(cfg_float(g, c.arch, "attention.layer_norm_rms_epsilon", 1e-5f, false, &c.rms_eps,
                    err, errlen));
    CHECK(cfg_float(g, c.arch, "rope.freq_base", 10000.0f, false, &c.rope_base, err, errlen));

    emb = gguf_find_tensor(g, "token_embd.weight");
    if (emb == NULL)
        return cfg_fail(g, DUET_ERR_NOT_FOUND, err, errlen, "missing tensor token_embd.weight");
    if (emb->n_dims != 2 || emb->ne[0] != c.hidden || emb->ne[1] < 1 ||
        emb->ne[1] > CFG_MAX_DIM)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "tensor token_embd.weight has shape [%" PRId64 ", %" PRId64
                        "] (%d dims), expected [%d, vocab]",
                        emb->ne[0], emb->ne[1], emb->n_dims, c.hidden);
    c.vocab = (int32_t)emb->ne[1];
    s = gguf_get_i64(g, arch_key(key, sizeof(key), c.arch, "vocab_size"), &vs);
    if (s == DUET_OK && vs != c.vocab)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "metadata %s = %" PRId64 " but token_embd.weight has %d rows",
                        key, vs, c.vocab);
    c.tied_output = gguf_find_tensor(g, "output.weight") == NULL;

    CHECK(cfg_rope_scaling(g, &c, err, errlen));
    CHECK(cfg_check_tensors(g, &c, err, errlen));
    c.fingerprint = model_config_fingerprint(g, &c);
    *cfg = c;
    return DUET_OK;
}

duet_status_t model_check_tokenizer(const gguf_t *g, const model_config_t *cfg,
                                    char *err, size_t errlen)
{
    gguf_str_t model;
    gguf_type_t elem;
    uint64_t n;
    duet_status_t s;

    s = gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (s == DUET_ERR_NOT_FOUND)
        return cfg_fail(g, DUET_ERR_NOT_FOUND, err, errlen,
                        "no tokenizer in this file (metadata tokenizer.ggml.model is missing)");
    if (s != DUET_OK)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "metadata tokenizer.ggml.model is not a string");
    s = gguf_get_arr(g, "tokenizer.ggml.tokens", &elem, &n, NULL);
    if (s == DUET_ERR_NOT_FOUND)
        return cfg_fail(g, DUET_ERR_NOT_FOUND, err, errlen,
                        "no tokenizer vocabulary in this file "
                        "(metadata tokenizer.ggml.tokens is missing)");
    if (s != DUET_OK || elem != GGUF_TYPE_STRING)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen,
                        "metadata tokenizer.ggml.tokens is not an array of strings");
    if (n == 0)
        return cfg_fail(g, DUET_ERR_CORRUPT, err, errlen, "the tokenizer vocabulary is empty");
    if (cfg != NULL && n != (uint64_t)cfg->vocab)
        return cfg_fail(g, DUET_ERR_MISMATCH, err, errlen,
                        "the tokenizer has %llu tokens but the model's vocabulary is %d",
                        (unsigned long long)n, cfg->vocab);
    return DUET_OK;
}
