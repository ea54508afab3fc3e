/* Model config: a tiny llama written with the GGUF writer, its defaults,
 * rope scaling, the fingerprint, and the clear errors for another
 * architecture, a missing or misshapen tensor and a missing tokenizer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/tap.h"
#include "common/log.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"

static char tmpdir[256];

static void tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static int tmpdir_make(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/duet_test_XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

static void tmpdir_remove(void)
{
    char cmd[600];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        diag("could not remove %s", tmpdir);
}

typedef struct {
    const char *arch;
    const char *skip_tensor;     /* leave this one out */
    const char *rope_type;       /* llama.rope.scaling.type, or NULL */
    bool        tokenizer;
    int64_t     q_rows;          /* attn_q rows (default hidden) */
} tiny_opts_t;

/* A 1-layer llama, hidden 64, 4 heads, 2 KV heads, ffn 128, vocab 32. */
static duet_status_t write_tiny(const char *path, const tiny_opts_t *o, char *err, size_t errlen)
{
    static float zeros[128 * 64];
    gguf_writer_t *w = NULL;
    char key[64];
    duet_status_t s;
    const struct { const char *name; int nd; int64_t ne0, ne1; } ts[] = {
        {"token_embd.weight", 2, 64, 32}, {"output_norm.weight", 1, 64, 1},
        {"blk.0.attn_norm.weight", 1, 64, 1}, {"blk.0.attn_q.weight", 2, 64, o->q_rows ? o->q_rows : 64},
        {"blk.0.attn_k.weight", 2, 64, 32}, {"blk.0.attn_v.weight", 2, 64, 32},
        {"blk.0.attn_output.weight", 2, 64, 64}, {"blk.0.ffn_norm.weight", 1, 64, 1},
        {"blk.0.ffn_gate.weight", 2, 64, 128}, {"blk.0.ffn_up.weight", 2, 64, 128},
        {"blk.0.ffn_down.weight", 2, 128, 64},
    };

    CHECK(gguf_writer_create(&w));
    s = gguf_writer_set_str(w, "general.architecture", o->arch);
#define TINY_U32(k, v)                                                  \
    if (s == DUET_OK) {                                                 \
        snprintf(key, sizeof(key), "%s.%s", o->arch, k);                \
        s = gguf_writer_set_u32(w, key, v);                             \
    }
    TINY_U32("block_count", 1)
    TINY_U32("embedding_length", 64)
    TINY_U32("attention.head_count", 4)
    TINY_U32("attention.head_count_kv", 2)
    TINY_U32("feed_forward_length", 128)
    TINY_U32("context_length", 256)
#undef TINY_U32
    if (s == DUET_OK && o->rope_type != NULL) {
        snprintf(key, sizeof(key), "%s.rope.scaling.type", o->arch);
        s = gguf_writer_set_str(w, key, o->rope_type);
        snprintf(key, sizeof(key), "%s.rope.scaling.factor", o->arch);
        if (s == DUET_OK)
            s = gguf_writer_set_f32(w, key, 4.0f);
    }
    if (s == DUET_OK && o->tokenizer) {
        gguf_str_t toks[32];
        char bufs[32][4];

        for (int i = 0; i < 32; i++) {
            snprintf(bufs[i], sizeof(bufs[i]), "t%d", i);
            toks[i].ptr = bufs[i];
            toks[i].len = strlen(bufs[i]);
        }
        s = gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
        if (s == DUET_OK)
            s = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 32);
    }
    for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]) && s == DUET_OK; i++) {
        int64_t ne[2] = {ts[i].ne0, ts[i].ne1};

        if (o->skip_tensor == NULL || strcmp(o->skip_tensor, ts[i].name) != 0)
            s = gguf_writer_add_tensor(w, ts[i].name, DTYPE_F32, ts[i].nd, ne, zeros);
    }
    if (s == DUET_OK)
        s = gguf_writer_write(w, path, NULL, NULL, err, errlen);
    gguf_writer_destroy(w);
    return s;
}

static duet_status_t load_tiny(const tiny_opts_t *o, model_config_t *cfg, bool check_tok,
                               char *err, size_t errlen)
{
    char path[512];
    gguf_t *g = NULL;
    duet_status_t s;

    tmp_path(path, sizeof(path), "tiny.gguf");
    s = write_tiny(path, o, err, errlen);
    if (s != DUET_OK)
        return s;
    CHECK(gguf_open(path, &g, err, errlen));
    s = model_config_load(g, cfg, err, errlen);
    if (s == DUET_OK && check_tok)
        s = model_check_tokenizer(g, cfg, err, errlen);
    gguf_close(g);
    return s;
}

static void test_config(void)
{
    model_config_t cfg;
    char err[512];
    duet_status_t s;
    uint64_t fp;

    s = load_tiny(&(tiny_opts_t){"llama", NULL, NULL, true, 0}, &cfg, true, err, sizeof(err));
    ok(s == DUET_OK && cfg.n_layers == 1 && cfg.head_dim == 16 && cfg.n_kv_heads == 2 &&
       cfg.vocab == 32 && cfg.tied_output && cfg.rms_eps == 1e-5f &&
       cfg.rope_base == 10000.0f, "tiny llama loads with defaults (%s)", s ? err : "ok");
    fp = cfg.fingerprint;
    s = load_tiny(&(tiny_opts_t){"llama", NULL, NULL, true, 0}, &cfg, true, err, sizeof(err));
    ok(s == DUET_OK && cfg.fingerprint == fp, "fingerprint is stable");
    s = load_tiny(&(tiny_opts_t){"llama", NULL, "linear", true, 0}, &cfg, false, err, sizeof(err));
    ok(s == DUET_OK && cfg.rope_scaling == ROPE_SCALING_LINEAR && cfg.rope_scale == 4.0f &&
       cfg.rope_orig_ctx == 256 && cfg.fingerprint != fp, "linear rope scaling read");
    s = load_tiny(&(tiny_opts_t){"llama", NULL, "longrope", true, 0}, &cfg, false, err,
                  sizeof(err));
    ok(s == DUET_ERR_UNSUPPORTED && strstr(err, "'longrope'"), "unknown rope scaling: %s", err);
    s = load_tiny(&(tiny_opts_t){"qwen2", NULL, NULL, true, 0}, &cfg, false, err, sizeof(err));
    ok(s == DUET_ERR_UNSUPPORTED && strstr(err, "architecture 'qwen2' is not supported"),
       "unknown architecture: %s", err);
    s = load_tiny(&(tiny_opts_t){"llama", "blk.0.ffn_up.weight", NULL, true, 0}, &cfg, false,
                  err, sizeof(err));
    ok(s == DUET_ERR_NOT_FOUND && strstr(err, "missing tensor blk.0.ffn_up.weight"),
       "missing tensor: %s", err);
    s = load_tiny(&(tiny_opts_t){"llama", NULL, NULL, true, 96}, &cfg, false, err, sizeof(err));
    ok(s == DUET_ERR_CORRUPT && strstr(err, "blk.0.attn_q.weight has shape [64, 96]"),
       "wrong shape: %s", err);
    s = load_tiny(&(tiny_opts_t){"llama", NULL, NULL, false, 0}, &cfg, false, err, sizeof(err));
    ok(s == DUET_OK, "config loads without a tokenizer");
    s = load_tiny(&(tiny_opts_t){"llama", NULL, NULL, false, 0}, &cfg, true, err, sizeof(err));
    ok(s == DUET_ERR_NOT_FOUND && strstr(err, "no tokenizer"), "missing tokenizer: %s", err);
}

int main(void)
{
    log_set_level(LOG_LEVEL_OFF);
    if (tmpdir_make() != 0)
        return 1;
    test_config();
    tmpdir_remove();
    return tap_done();
}
