/* GGUF reader and model config: SmolLM2's real file, then hostile files
 * (truncations, wrong magic, huge counts, bad offsets, unknown types) that
 * must each fail with a clear message and never read out of bounds (this
 * test runs under ASan in the sanitizer build; every buffer handed to the
 * reader is a heap copy of exactly the size under test). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/tap.h"
#include "common/log.h"
#include "model/config.h"
#include "model/gguf.h"

static char model_path[4096];

static uint8_t *read_file(const char *path, size_t *size_p)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size_p = (size_t)n;
    return buf;
}

/* Open a heap copy of data[0..size); returns the status, err filled. */
static duet_status_t open_copy(const uint8_t *data, size_t size, char *err, size_t errlen)
{
    uint8_t *copy = malloc(size ? size : 1);
    gguf_t *g = NULL;
    duet_status_t s;

    memcpy(copy, data, size);
    err[0] = 0;
    s = gguf_open_buffer(copy, size, &g, err, errlen);
    if (s == DUET_OK) {
        model_config_t cfg;

        s = model_config_load(g, &cfg, err, errlen);
        gguf_close(g);
    }
    free(copy);
    return s;
}

static void test_smollm2(void)
{
    char err[512];
    gguf_t *g = NULL;
    model_config_t cfg;
    const gguf_tensor_t *t;
    gguf_str_t s;
    gguf_type_t elem;
    uint64_t n;
    uint32_t u;
    int counts[64] = {0};
    duet_status_t st;

    st = gguf_open(model_path, &g, err, sizeof(err));
    if (!ok(st == DUET_OK, "open SmolLM2")) {
        diag("%s", err);
        return;
    }
    is_int(gguf_version(g), 3, "version 3");
    is_int(gguf_alignment(g), 32, "alignment 32");
    is_int(gguf_n_tensors(g), 272, "272 tensors");
    for (size_t i = 0; i < gguf_n_tensors(g); i++)
        counts[gguf_tensor(g, i)->type]++;
    is_int(counts[DTYPE_Q4_1], 210, "210 Q4_1 tensors");
    is_int(counts[DTYPE_F32], 61, "61 F32 tensors");
    is_int(counts[DTYPE_Q8_0], 1, "1 Q8_0 tensor");
    t = gguf_find_tensor(g, "token_embd.weight");
    ok(t != NULL && t->type == DTYPE_Q8_0 && t->ne[0] == 576 && t->ne[1] == 49152,
       "token_embd.weight Q8_0 [576, 49152]");
    ok(gguf_find_tensor(g, "output.weight") == NULL, "no output.weight (tied)");
    ok(gguf_find_tensor(g, "blk.29.ffn_down.weight") != NULL, "blk.29.ffn_down.weight");
    ok(gguf_find_tensor(g, "blk.30.ffn_down.weight") == NULL, "no blk.30");
    ok(gguf_get_str(g, "general.architecture", &s) == DUET_OK && s.len == 5 &&
       memcmp(s.ptr, "llama", 5) == 0, "architecture llama");
    ok(gguf_get_u32(g, "llama.block_count", &u) == DUET_OK && u == 30, "block_count 30");
    ok(gguf_get_arr(g, "tokenizer.ggml.tokens", &elem, &n, NULL) == DUET_OK &&
       elem == GGUF_TYPE_STRING && n == 49152, "49152 tokens");
    ok(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 0, &s) == DUET_OK &&
       s.len == 13 && memcmp(s.ptr, "<|endoftext|>", 13) == 0, "token 0 <|endoftext|>");
    ok(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 49152, &s) == DUET_ERR_INVALID,
       "token index past the end refused");
    ok(gguf_get_u32(g, "no.such.key", &u) == DUET_ERR_NOT_FOUND, "absent key NOT_FOUND");
    ok(gguf_get_u32(g, "general.architecture", &u) == DUET_ERR_INVALID,
       "u32 of a string INVALID");

    st = model_config_load(g, &cfg, err, sizeof(err));
    if (!ok(st == DUET_OK, "config loads")) {
        diag("%s", err);
    } else {
        is_int(cfg.n_layers, 30, "30 layers");
        is_int(cfg.hidden, 576, "hidden 576");
        is_int(cfg.n_heads, 9, "9 heads");
        is_int(cfg.n_kv_heads, 3, "3 kv heads");
        is_int(cfg.head_dim, 64, "head_dim 64");
        is_int(cfg.rope_dim, 64, "rope_dim 64");
        is_int(cfg.ffn, 1536, "ffn 1536");
        is_int(cfg.vocab, 49152, "vocab 49152");
        is_int(cfg.ctx_len, 8192, "ctx 8192");
        ok(cfg.rope_base == 100000.0f, "rope base 1e5 (%g)", (double)cfg.rope_base);
        ok(cfg.rms_eps == 1e-5f, "rms eps 1e-5 (%g)", (double)cfg.rms_eps);
        ok(cfg.rope_scaling == ROPE_SCALING_NONE, "no rope scaling");
        ok(cfg.tied_output, "tied output");
        ok(cfg.fingerprint != 0 && cfg.fingerprint == model_config_fingerprint(g, &cfg),
           "fingerprint %016llx", (unsigned long long)cfg.fingerprint);
        ok(model_check_tokenizer(g, &cfg, err, sizeof(err)) == DUET_OK, "has a tokenizer");
    }
    gguf_close(g);
}

/* Truncate the real header at many points: every cut must fail cleanly. */
static void test_truncated(void)
{
    size_t size = 0, hdr;
    uint8_t *buf = read_file(model_path, &size);
    char err[512];
    gguf_t *g = NULL;
    int bad = 0, cuts = 0;

    if (buf == NULL || gguf_open_buffer(buf, size, &g, err, sizeof(err)) != DUET_OK) {
        ok(0, "read SmolLM2 for truncation");
        free(buf);
        return;
    }
    hdr = gguf_data_offset(g);
    gguf_close(g);
    /* Every 1/97 of the header, the first 64 bytes one by one, around the
     * end of the header, and points inside the data section. */
    for (size_t k = 0; k <= 97 + 64 + 64 + 16; k++) {
        size_t cut;
        duet_status_t s;

        if (k <= 97)
            cut = hdr * k / 97;
        else if (k <= 97 + 64)
            cut = k - 98;
        else if (k <= 97 + 64 + 64)
            cut = hdr - 32 + (k - 98 - 64);
        else
            cut = hdr + (size - hdr) / 17 * (k - 97 - 64 - 64);
        if (cut >= size)
            continue;
        s = open_copy(buf, cut, err, sizeof(err));
        cuts++;
        if (s == DUET_OK || strstr(err, "<buffer>: ") != err) {
            bad++;
            diag("cut at %zu: %s (%s)", cut, duet_status_str(s), err);
        }
    }
    ok(bad == 0, "%d truncations all fail with a message", cuts);
    open_copy(buf, hdr / 2, err, sizeof(err));
    diag("e.g. %s", err);
    ok(strstr(err, "truncated") != NULL || strstr(err, "past the end") != NULL ||
       strstr(err, "can hold") != NULL || strstr(err, "fit") != NULL,
       "a truncation message says so");
    free(buf);
}

int main(int argc, char **argv)
{
    const char *root = getenv("DUET_SOURCE_ROOT");

    log_set_level(LOG_LEVEL_OFF);
    snprintf(model_path, sizeof(model_path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             root ? root : ".");
    test_smollm2();
    test_truncated();
    return tap_done();
}
