/* duet mkmodel: write a llama-architecture GGUF of any shape with seeded
 * random weights, for tests and benchmarks. The float weights depend only on
 * the seed and the tensor's name and shape, never on --type, so files of one
 * seed in different types hold the same model quantized differently. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/flags.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/quant.h"

#define MK_WEIGHT_STD 0.02f   /* GPT-2's init: keeps activations O(1) */
#define MK_NORM_STD   0.02f   /* norm weights are 1 + this * noise */

typedef struct {
    dtype_t  type;
    int      n_dims;
    int64_t  ne[2];
    bool     norm;             /* weights around 1 instead of 0 */
    uint64_t seed;
} mk_tensor_t;

typedef struct {
    mk_tensor_t *t;            /* (n) */
    size_t       n;
    float       *row;          /* (max ne[0]) scratch */
} mk_ctx_t;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately standard normal: the sum of four 16-bit uniforms, centred
 * and scaled to unit variance (cheap enough for 8B-parameter files). */
static float mk_normal(uint64_t *state)
{
    uint64_t r = splitmix64(state);
    uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
                   (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);

    return ((float)sum / 65536.0f - 2.0f) * 1.7320508f;
}

static duet_status_t mk_fill(void *arg, size_t i, void *buf, size_t nbytes)
{
    mk_ctx_t *c = arg;
    const mk_tensor_t *t = &c->t[i];
    uint64_t state = t->seed;
    int64_t rows = t->n_dims > 1 ? t->ne[1] : 1;
    size_t row_bytes = dtype_row_bytes(t->type, t->ne[0]);

    if (row_bytes * (size_t)rows != nbytes)
        return DUET_ERR_INTERNAL;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < t->ne[0]; j++) {
            float x = mk_normal(&state);

            c->row[j] = t->norm ? 1.0f + MK_NORM_STD * x : MK_WEIGHT_STD * x;
        }
        quant_quantize((uint8_t *)buf + (size_t)r * row_bytes, c->row, t->type, t->ne[0]);
    }
    return DUET_OK;
}

static bool mk_parse_type(const char *s, dtype_t *t_p, uint32_t *file_type_p)
{
    static const struct { const char *name; dtype_t t; uint32_t ftype; } types[] = {
        {"f32", DTYPE_F32, 0}, {"f16", DTYPE_F16, 1}, {"bf16", DTYPE_BF16, 32},
        {"q8_0", DTYPE_Q8_0, 7}, {"q4_0", DTYPE_Q4_0, 2}, {"q4_1", DTYPE_Q4_1, 3},
    };

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcasecmp(s, types[i].name) == 0) {
            *t_p = types[i].t;
            *file_type_p = types[i].ftype;
            return true;
        }
    }
    return false;
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Copy every tokenizer.* entry of path into w; *n_vocab_p gets the number of
 * tokens. */
static int mk_copy_tokenizer(gguf_writer_t *w, const char *path, int64_t *n_vocab_p)
{
    char err[512];
    gguf_t *src = NULL;
    gguf_type_t elem;
    uint64_t n = 0;
    int rc = 1;

    if (gguf_open(path, &src, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "duet mkmodel: --tokenizer-from: %s\n", err);
        return 1;
    }
    if (model_check_tokenizer(src, NULL, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "duet mkmodel: --tokenizer-from: %s\n", err);
        goto out;
    }
    gguf_get_arr(src, "tokenizer.ggml.tokens", &elem, &n, NULL);
    for (size_t i = 0; i < gguf_n_kv(src); i++) {
        gguf_str_t k = gguf_kv_key(src, i);

        if (k.len > 10 && memcmp(k.ptr, "tokenizer.", 10) == 0 &&
            gguf_writer_copy_kv(w, src, i) != DUET_OK) {
            fprintf(stderr, "duet mkmodel: cannot copy %.*s from %s\n", (int)k.len, k.ptr, path);
            goto out;
        }
    }
    *n_vocab_p = (int64_t)n;
    rc = 0;
out:
    gguf_close(src);
    return rc;
}

static int mkmodel_run(int argc, char **argv)
{
    int64_t layers = 2, hidden = 256, heads = 4, kv_heads = 0, ffn = 0, vocab = 0;
    int64_t ctx = 2048, seed = 1, head_dim = 0;
    double rope_base = 10000.0, rms_eps = 1e-5;
    bool tied = false;
    const char *type_name = "q8_0", *out = NULL, *tok_from = NULL, *name = "duet-mkmodel";
    const flag_t flags[] = {
        {"layers", 0, FLAG_INT, &layers, "transformer blocks", "N", 1, 4096, 0, 0},
        {"hidden", 0, FLAG_INT, &hidden, "embedding size", "N", 1, 1 << 20, 0, 0},
        {"heads", 0, FLAG_INT, &heads, "attention heads", "N", 1, 4096, 0, 0},
        {"kv-heads", 0, FLAG_INT, &kv_heads, "KV heads (default: --heads)", "N", 0, 4096, 0, 0},
        {"head-dim", 0, FLAG_INT, &head_dim, "head size (default: hidden / heads)", "N",
         0, 1 << 16, 0, 0},
        {"ffn", 0, FLAG_INT, &ffn, "feed-forward size (default: 4 * hidden)", "N",
         0, 1 << 22, 0, 0},
        {"vocab", 0, FLAG_INT, &vocab,
         "vocabulary size (default: the tokenizer's with --tokenizer-from, else 512)", "N",
         0, 1 << 24, 0, 0},
        {"ctx", 0, FLAG_INT, &ctx, "context length", "N", 1, 1 << 24, 0, 0},
        {"type", 0, FLAG_STRING, &type_name, "weight type: f32|f16|bf16|q8_0|q4_0|q4_1",
         "T", 0, 0, 0, 0},
        {"seed", 0, FLAG_INT, &seed, "random seed", "N", 0, INT64_MAX, 0, 0},
        {"tied", 0, FLAG_BOOL, &tied, "no output.weight: the head reuses token_embd",
         NULL, 0, 0, 0, 0},
        {"rope-base", 0, FLAG_DOUBLE, &rope_base, "rope.freq_base", "F", 0, 0, 1.0, 1e9},
        {"rms-eps", 0, FLAG_DOUBLE, &rms_eps, "RMSNorm epsilon", "F", 0, 0, 1e-12, 1.0},
        {"name", 0, FLAG_STRING, &name, "general.name", "S", 0, 0, 0, 0},
        {"tokenizer-from", 0, FLAG_STRING, &tok_from,
         "copy tokenizer.* metadata (vocabulary, merges, chat template) from this GGUF",
         "FILE", 0, 0, 0, 0},
        {"out", 'o', FLAG_STRING, &out, "output file (required)", "FILE", 0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet mkmodel", NULL,
                             "Write a llama GGUF with seeded random weights of any shape."};
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
    gguf_writer_t *w = NULL;
    mk_ctx_t mc = {0};
    dtype_t type;
    uint32_t file_type;
    int64_t q_dim, kv_dim, tok_vocab = 0, params = 0;
    char err[512], tname[96];
    gguf_t *g = NULL;
    model_config_t cfg;
    int rc = 1;

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (out == NULL) {
        fprintf(stderr, "duet mkmodel: --out FILE is required\n");
        return 2;
    }
    if (!mk_parse_type(type_name, &type, &file_type)) {
        fprintf(stderr, "duet mkmodel: --type %s: expected f32, f16, bf16, q8_0, q4_0 or q4_1\n",
                type_name);
        return 2;
    }
    if (kv_heads == 0)
        kv_heads = heads;
    if (ffn == 0)
        ffn = 4 * hidden;
    if (head_dim == 0) {
        if (hidden % heads != 0) {
            fprintf(stderr, "duet mkmodel: --hidden %" PRId64 " is not a multiple of --heads %"
                    PRId64 " (give --head-dim)\n", hidden, heads);
            return 2;
        }
        head_dim = hidden / heads;
    }
    if (heads % kv_heads != 0) {
        fprintf(stderr, "duet mkmodel: --heads %" PRId64 " is not a multiple of --kv-heads %"
                PRId64 "\n", heads, kv_heads);
        return 2;
    }
    if (head_dim % 2 != 0) {
        fprintf(stderr, "duet mkmodel: the head size %" PRId64 " must be even (rope)\n",
                head_dim);
        return 2;
    }
    q_dim = heads * head_dim;
    kv_dim = kv_heads * head_dim;
    {
        const struct { const char *flag; int64_t v; } rows[] = {
            {"--hidden", hidden}, {"--heads * --head-dim", q_dim}, {"--ffn", ffn},
        };
        int64_t be = dtype_block_elems(type);

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
            if (rows[i].v % be != 0) {
                fprintf(stderr, "duet mkmodel: %s = %" PRId64 " is not a multiple of %" PRId64
                        " (the %s block size)\n", rows[i].flag, rows[i].v, be, type_name);
                return 2;
            }
        }
    }

    if (gguf_writer_create(&w) != DUET_OK)
        goto err_nomem;
    if (tok_from != NULL) {
        /* First: the vocabulary size decides the embedding's shape. */
        if (mk_copy_tokenizer(w, tok_from, &tok_vocab) != 0)
            goto out;
        if (vocab == 0)
            vocab = tok_vocab;
        if (vocab != tok_vocab) {
            fprintf(stderr, "duet mkmodel: --vocab %" PRId64 " differs from the %" PRId64
                    " tokens of %s\n", vocab, tok_vocab, tok_from);
            rc = 2;
            goto out;
        }
    }
    if (vocab == 0)
        vocab = 512;

    s = gguf_writer_set_str(w, "general.architecture", "llama");
    if (s == DUET_OK) s = gguf_writer_set_str(w, "general.name", name);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "general.file_type", file_type);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "general.quantization_version", 2);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "llama.block_count", (uint32_t)layers);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "llama.context_length", (uint32_t)ctx);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)hidden);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)ffn);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)heads);
    if (s == DUET_OK)
        s = gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)kv_heads);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "llama.attention.key_length", (uint32_t)head_dim);
    if (s == DUET_OK)
        s = gguf_writer_set_u32(w, "llama.attention.value_length", (uint32_t)head_dim);
    if (s == DUET_OK)
        s = gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)head_dim);
    if (s == DUET_OK) s = gguf_writer_set_f32(w, "llama.rope.freq_base", (float)rope_base);
    if (s == DUET_OK)
        s = gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", (float)rms_eps);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)vocab);
    if (s != DUET_OK) {
        fprintf(stderr, "duet mkmodel: metadata: %s\n", duet_status_str(s));
        goto out;
    }

    mc.t = calloc(3 + 9 * (size_t)layers, sizeof(*mc.t));
    {
        int64_t widest = hidden > ffn ? hidden : ffn;

        mc.row = malloc((size_t)(widest > q_dim ? widest : q_dim) * sizeof(float));
    }
    if (mc.t == NULL || mc.row == NULL)
        goto err_nomem;
#define MK_ADD(nm, ty, nd, e0, e1, isnorm)                                       \
    do {                                                                         \
        mk_tensor_t *t_ = &mc.t[mc.n];                                           \
        int64_t ne_[2] = {(e0), (e1)};                                           \
        uint64_t st_ = (uint64_t)seed ^ name_hash(nm);                           \
                                                                                 \
        t_->type = (ty);                                                         \
        t_->n_dims = (nd);                                                       \
        t_->ne[0] = (e0);                                                        \
        t_->ne[1] = (e1);                                                        \
        t_->norm = (isnorm);                                                     \
        t_->seed = splitmix64(&st_);                                             \
        params += (e0) * ((nd) > 1 ? (e1) : 1);                                  \
        s = gguf_writer_add_tensor(w, (nm), (ty), (nd), ne_, NULL);              \
        if (s != DUET_OK) {                                                      \
            fprintf(stderr, "duet mkmodel: tensor %s: %s\n", (nm), duet_status_str(s)); \
            goto out;                                                            \
        }                                                                        \
        mc.n++;                                                                  \
    } while (0)

    MK_ADD("token_embd.weight", type, 2, hidden, vocab, false);
    MK_ADD("output_norm.weight", DTYPE_F32, 1, hidden, 1, true);
    if (!tied)
        MK_ADD("output.weight", type, 2, hidden, vocab, false);
    for (int64_t i = 0; i < layers; i++) {
#define MK_BLK(sfx, ty, nd, e0, e1, isnorm)                                      \
        do {                                                                     \
            snprintf(tname, sizeof(tname), "blk.%" PRId64 ".%s", i, sfx);        \
            MK_ADD(tname, ty, nd, e0, e1, isnorm);                               \
        } while (0)
        MK_BLK("attn_norm.weight", DTYPE_F32, 1, hidden, 1, true);
        MK_BLK("attn_q.weight", type, 2, hidden, q_dim, false);
        MK_BLK("attn_k.weight", type, 2, hidden, kv_dim, false);
        MK_BLK("attn_v.weight", type, 2, hidden, kv_dim, false);
        MK_BLK("attn_output.weight", type, 2, q_dim, hidden, false);
        MK_BLK("ffn_norm.weight", DTYPE_F32, 1, hidden, 1, true);
        MK_BLK("ffn_gate.weight", type, 2, hidden, ffn, false);
        MK_BLK("ffn_up.weight", type, 2, hidden, ffn, false);
        MK_BLK("ffn_down.weight", type, 2, ffn, hidden, false);
#undef MK_BLK
    }
#undef MK_ADD

    s = gguf_writer_write(w, out, mk_fill, &mc, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "duet mkmodel: %s\n", err);
        goto out;
    }
    /* Read it back as every consumer will. */
    if (gguf_open(out, &g, err, sizeof(err)) != DUET_OK ||
        model_config_load(g, &cfg, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "duet mkmodel: the file written does not load: %s\n", err);
        goto out;
    }
    printf("wrote %s: llama, %d layers, hidden %d, %d heads (%d kv, head dim %d), ffn %d, "
           "vocab %d, %s, %.1fM params, fingerprint %016" PRIx64 "\n",
           out, cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn,
           cfg.vocab, dtype_name(type), (double)params / 1e6, cfg.fingerprint);
    rc = 0;
    goto out;

err_nomem:
    fprintf(stderr, "duet mkmodel: out of memory\n");
out:
    gguf_close(g);
    free(mc.row);
    free(mc.t);
    gguf_writer_destroy(w);
    return rc;
}

const cli_cmd_t cli_cmd_mkmodel = {"mkmodel", "write a llama GGUF with random weights",
                                   mkmodel_run};
