/* GGUF reader: SmolLM2's real file, then hostile files (truncations, wrong
 * magic, huge counts, bad offsets, unknown types) that must each fail with a
 * clear message and never read out of bounds (this test runs under ASan in
 * the sanitizer build; every buffer handed to the reader is a heap copy of
 * exactly the size under test). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* --- hand-built files to corrupt -------------------------------------- */

typedef struct {
    uint8_t buf[2048];
    size_t  len;
} bld_t;

static size_t b_put(bld_t *b, const void *p, size_t n)
{
    size_t at = b->len;

    memcpy(b->buf + b->len, p, n);
    b->len += n;
    return at;
}

static size_t b_u32(bld_t *b, uint32_t v) { return b_put(b, &v, 4); }
static size_t b_u64(bld_t *b, uint64_t v) { return b_put(b, &v, 8); }

static size_t b_str(bld_t *b, const char *s)
{
    size_t at = b_u64(b, strlen(s));

    b_put(b, s, strlen(s));
    return at;
}

static void b_set_u32(bld_t *b, size_t at, uint32_t v) { memcpy(b->buf + at, &v, 4); }
static void b_set_u64(bld_t *b, size_t at, uint64_t v) { memcpy(b->buf + at, &v, 8); }

/* Field positions in the base file. */
typedef struct {
    size_t version, n_tensors, n_kv, key0, type0, val0, arr_n, strs_n, str1_len;
    size_t t0_name, t0_ndims, t0_ne0, t0_ne1, t0_type, t0_off, t1_ne0, t1_type, t1_off;
} pos_t;

/* magic, v3, 2 tensors, 3 kvs: general.architecture = "llama",
 * test.arr = [1, 2, 3] (u32), test.strs = ["a", "bc"]; tensors
 * a: F32 [32, 2] at 0 (256 bytes), b: Q8_0 [64] at 256 (68 bytes). */
static void build_base(bld_t *b, pos_t *p)
{
    memset(b, 0, sizeof(*b));
    b_put(b, "GGUF", 4);
    p->version = b_u32(b, 3);
    p->n_tensors = b_u64(b, 2);
    p->n_kv = b_u64(b, 3);
    p->key0 = b_str(b, "general.architecture");
    p->type0 = b_u32(b, GGUF_TYPE_STRING);
    p->val0 = b_str(b, "llama");
    b_str(b, "test.arr");
    b_u32(b, GGUF_TYPE_ARRAY);
    b_u32(b, GGUF_TYPE_UINT32);
    p->arr_n = b_u64(b, 3);
    b_u32(b, 1); b_u32(b, 2); b_u32(b, 3);
    b_str(b, "test.strs");
    b_u32(b, GGUF_TYPE_ARRAY);
    b_u32(b, GGUF_TYPE_STRING);
    p->strs_n = b_u64(b, 2);
    b_str(b, "a");
    p->str1_len = b_str(b, "bc");
    p->t0_name = b_str(b, "a");
    p->t0_ndims = b_u32(b, 2);
    p->t0_ne0 = b_u64(b, 32);
    p->t0_ne1 = b_u64(b, 2);
    p->t0_type = b_u32(b, DTYPE_F32);
    p->t0_off = b_u64(b, 0);
    b_str(b, "b");
    b_u32(b, 1);
    p->t1_ne0 = b_u64(b, 64);
    p->t1_type = b_u32(b, DTYPE_Q8_0);
    p->t1_off = b_u64(b, 256);
    b->len += (32 - b->len % 32) % 32;
    for (int i = 0; i < 64; i++) {       /* tensor a: 0..63 */
        float f = (float)i;

        b_put(b, &f, 4);
    }
    for (int k = 0; k < 2; k++) {        /* tensor b: d = 0.5, q = j - 16 */
        uint16_t d = fp32_to_fp16(0.5f);

        b_put(b, &d, 2);
        for (int j = 0; j < 32; j++) {
            int8_t q = (int8_t)(j - 16);

            b_put(b, &q, 1);
        }
    }
    b->len += (32 - b->len % 32) % 32;
}

static void test_base_reads(void)
{
    bld_t b;
    pos_t p;
    char err[512];
    gguf_t *g = NULL;
    gguf_type_t elem;
    uint64_t n;
    const void *data;
    gguf_str_t s;
    float out[64];
    const gguf_tensor_t *t;
    duet_status_t st;

    build_base(&b, &p);
    st = gguf_open_buffer(b.buf, b.len, &g, err, sizeof(err));
    if (!ok(st == DUET_OK, "hand-built file opens")) {
        diag("%s", err);
        return;
    }
    ok(gguf_get_arr(g, "test.arr", &elem, &n, &data) == DUET_OK && elem == GGUF_TYPE_UINT32 &&
       n == 3 && memcmp(data, "\1\0\0\0\2\0\0\0\3\0\0\0", 12) == 0, "u32 array");
    ok(gguf_get_arr_str(g, "test.strs", 1, &s) == DUET_OK && s.len == 2 &&
       memcmp(s.ptr, "bc", 2) == 0, "string array element");
    t = gguf_find_tensor(g, "b");
    ok(t != NULL && t->nbytes == 68 && t->offset == 256, "Q8_0 tensor table entry");
    gguf_dequantize(out, t->data, t->type, 64);
    ok(out[0] == -8.0f && out[31] == 7.5f && out[63] == 7.5f, "Q8_0 dequantized");
    t = gguf_find_tensor(g, "a");
    gguf_dequantize(out, t->data, t->type, 64);
    ok(out[63] == 63.0f, "F32 read");
    gguf_close(g);

    b_set_u32(&b, p.version, 2);
    st = gguf_open_buffer(b.buf, b.len, &g, err, sizeof(err));
    ok(st == DUET_OK, "version 2 accepted");
    if (st == DUET_OK) {
        is_int(gguf_version(g), 2, "version 2 reported");
        gguf_close(g);
    }
}

typedef void (*corrupt_fn)(bld_t *b, const pos_t *p);

static void expect_bad(const char *what, corrupt_fn fn, duet_status_t want, const char *needle)
{
    bld_t b;
    pos_t p;
    char err[512];
    duet_status_t s;

    build_base(&b, &p);
    fn(&b, &p);
    s = open_copy(b.buf, b.len, err, sizeof(err));
    if (!ok(s == want && strstr(err, needle) != NULL, "%s: %s", what, err))
        diag("status %s, want %s and '%s'", duet_status_str(s), duet_status_str(want), needle);
}

static void c_magic(bld_t *b, const pos_t *p) { memcpy(b->buf, "GGUX", 4); (void)p; }
static void c_version1(bld_t *b, const pos_t *p) { b_set_u32(b, p->version, 1); }
static void c_big_endian(bld_t *b, const pos_t *p) { b_set_u32(b, p->version, 0x03000000u); }
static void c_kv_count(bld_t *b, const pos_t *p) { b_set_u64(b, p->n_kv, 1ull << 60); }
static void c_kv_count_max(bld_t *b, const pos_t *p) { b_set_u64(b, p->n_kv, UINT64_MAX); }
static void c_t_count(bld_t *b, const pos_t *p) { b_set_u64(b, p->n_tensors, 1ull << 60); }
static void c_t_count_small(bld_t *b, const pos_t *p) { b_set_u64(b, p->n_tensors, 3); }
static void c_key_len(bld_t *b, const pos_t *p) { b_set_u64(b, p->key0, UINT64_MAX); }
static void c_str_len(bld_t *b, const pos_t *p) { b_set_u64(b, p->val0, 1ull << 40); }
static void c_val_type(bld_t *b, const pos_t *p) { b_set_u32(b, p->type0, 99); }
static void c_arr_len(bld_t *b, const pos_t *p) { b_set_u64(b, p->arr_n, 1ull << 61); }
static void c_strs_len(bld_t *b, const pos_t *p) { b_set_u64(b, p->strs_n, 1ull << 62); }
static void c_str1_len(bld_t *b, const pos_t *p) { b_set_u64(b, p->str1_len, UINT64_MAX - 3); }
static void c_ndims(bld_t *b, const pos_t *p) { b_set_u32(b, p->t0_ndims, 5); }
static void c_ndims0(bld_t *b, const pos_t *p) { b_set_u32(b, p->t0_ndims, 0); }
static void c_dim_huge(bld_t *b, const pos_t *p) { b_set_u64(b, p->t0_ne0, 1ull << 63); }
static void c_dim_overflow(bld_t *b, const pos_t *p)
{
    b_set_u64(b, p->t0_ne0, 1ull << 62);
    b_set_u64(b, p->t0_ne1, 4);
}
static void c_dim_past_end(bld_t *b, const pos_t *p) { b_set_u64(b, p->t0_ne1, 1ull << 40); }
static void c_type(bld_t *b, const pos_t *p) { b_set_u32(b, p->t0_type, 12); }
static void c_type_unknown(bld_t *b, const pos_t *p) { b_set_u32(b, p->t0_type, 1000); }
static void c_offset(bld_t *b, const pos_t *p) { b_set_u64(b, p->t1_off, 1ull << 40); }
static void c_offset_max(bld_t *b, const pos_t *p) { b_set_u64(b, p->t1_off, UINT64_MAX - 31); }
static void c_offset_edge(bld_t *b, const pos_t *p) { b_set_u64(b, p->t1_off, 288); }
static void c_misaligned(bld_t *b, const pos_t *p) { b_set_u64(b, p->t1_off, 260); }
static void c_blocks(bld_t *b, const pos_t *p) { b_set_u64(b, p->t1_ne0, 48); }
static void c_dup_tensor(bld_t *b, const pos_t *p) { b->buf[p->t0_name + 8] = 'b'; }

static void test_bad_files(void)
{
    char err[512];

    expect_bad("wrong magic", c_magic, DUET_ERR_CORRUPT, "not a GGUF file");
    expect_bad("version 1", c_version1, DUET_ERR_UNSUPPORTED, "version 1 is not supported");
    expect_bad("big-endian", c_big_endian, DUET_ERR_UNSUPPORTED, "big-endian");
    expect_bad("huge kv count", c_kv_count, DUET_ERR_CORRUPT, "metadata count");
    expect_bad("max kv count", c_kv_count_max, DUET_ERR_CORRUPT, "metadata count");
    expect_bad("huge tensor count", c_t_count, DUET_ERR_CORRUPT, "tensor count");
    expect_bad("tensor count one too many", c_t_count_small, DUET_ERR_CORRUPT, "");
    expect_bad("huge key length", c_key_len, DUET_ERR_CORRUPT, "string length");
    expect_bad("huge string length", c_str_len, DUET_ERR_CORRUPT, "string length");
    expect_bad("unknown value type", c_val_type, DUET_ERR_CORRUPT, "unknown value type 99");
    expect_bad("huge array length", c_arr_len, DUET_ERR_CORRUPT, "runs past the end");
    expect_bad("huge string array length", c_strs_len, DUET_ERR_CORRUPT, "cannot fit");
    expect_bad("huge string in an array", c_str1_len, DUET_ERR_CORRUPT, "string length");
    expect_bad("5 dims", c_ndims, DUET_ERR_CORRUPT, "5 dimensions");
    expect_bad("0 dims", c_ndims0, DUET_ERR_CORRUPT, "0 dimensions");
    expect_bad("dim > INT64_MAX", c_dim_huge, DUET_ERR_CORRUPT, "too large");
    expect_bad("element count overflow", c_dim_overflow, DUET_ERR_CORRUPT, "overflows");
    expect_bad("dims past the end", c_dim_past_end, DUET_ERR_CORRUPT, "past the end");
    expect_bad("ggml type duet lacks", c_type, DUET_ERR_UNSUPPORTED,
               "unsupported tensor type 12 (Q4_K) in tensor 'a'");
    expect_bad("unknown type", c_type_unknown, DUET_ERR_UNSUPPORTED,
               "unsupported tensor type 1000 (unknown) in tensor 'a'");
    expect_bad("offset past the end", c_offset, DUET_ERR_CORRUPT, "past the end");
    expect_bad("offset near UINT64_MAX", c_offset_max, DUET_ERR_CORRUPT, "past the end");
    expect_bad("data one block past the end", c_offset_edge, DUET_ERR_CORRUPT, "past the end");
    expect_bad("misaligned offset", c_misaligned, DUET_ERR_CORRUPT,
               "not a multiple of the alignment");
    expect_bad("row not whole blocks", c_blocks, DUET_ERR_CORRUPT, "whole number");
    expect_bad("duplicate tensor", c_dup_tensor, DUET_ERR_CORRUPT, "duplicate tensor name 'b'");
    for (int k = 0; k < 2; k++) {   /* general.alignment: not a power of two; not a u32 */
        bld_t b;

        memset(&b, 0, sizeof(b));
        b_put(&b, "GGUF", 4);
        b_u32(&b, 3);
        b_u64(&b, 0);
        b_u64(&b, 1);
        b_str(&b, "general.alignment");
        b_u32(&b, k == 0 ? GGUF_TYPE_UINT32 : GGUF_TYPE_UINT64);
        b_u64(&b, 48);
        ok(open_copy(b.buf, b.len, err, sizeof(err)) == DUET_ERR_CORRUPT &&
           strstr(err, k == 0 ? "not a power of two" : "not UINT32") != NULL,
           "bad alignment: %s", err);
    }
    ok(open_copy((const uint8_t *)"", 0, err, sizeof(err)) == DUET_ERR_CORRUPT &&
       strstr(err, "truncated") != NULL, "empty buffer: %s", err);
    {
        gguf_t *g = NULL;

        ok(gguf_open("/nonexistent/x.gguf", &g, err, sizeof(err)) == DUET_ERR_NOT_FOUND &&
           strstr(err, "/nonexistent/x.gguf: cannot open") != NULL, "missing file: %s", err);
    }
}

int main(void)
{
    const char *root = getenv("DUET_SOURCE_ROOT");

    log_set_level(LOG_LEVEL_OFF);
    snprintf(model_path, sizeof(model_path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             root ? root : ".");
    test_base_reads();
    test_bad_files();
    if (access(model_path, R_OK) == 0) {
        test_smollm2();
        test_truncated();
    } else {
        diag("SKIP SmolLM2 checks: %s not found (scripts/fetch-model)", model_path);
    }
    return tap_done();
}
