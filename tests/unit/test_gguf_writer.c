/* GGUF writer and quantizers: a file of every metadata and tensor type read
 * back, writer refusals, quantizer edge cases. Also a helper for
 * tests/oracle/test_gguf_oracle.py: --write-sample FILE writes that file,
 * --quantize TYPE-ID IN.f32 OUT quantizes raw float32 values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/tap.h"
#include "common/log.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/quant.h"

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

/* --- writer ------------------------------------------------------------ */


/* Every metadata type, arrays of each, and a tensor of every dtype with a
 * 64-byte alignment. Values are the ones the checks below (and
 * tests/oracle/test_gguf_oracle.py) expect. */
static duet_status_t write_sample(const char *path, float *src /* (2, 64) */,
                                  char *err, size_t errlen)
{
    static const dtype_t types[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16,
                                    DTYPE_Q8_0, DTYPE_Q4_0, DTYPE_Q4_1};
    static const char *const tnames[] = {"t.f32", "t.f16", "t.bf16", "t.q8_0", "t.q4_0", "t.q4_1"};
    static uint8_t qbuf[6][2 * 64 * 4];
    gguf_writer_t *w = NULL;
    uint8_t a_u8[3] = {1, 2, 255};
    int8_t a_i8[3] = {-128, 0, 127};
    uint16_t a_u16[2] = {0, 65535};
    int16_t a_i16[2] = {-32768, 32767};
    uint32_t a_u32[2] = {7, 4000000000u};
    int32_t a_i32[3] = {-1, 0, 2147483647};
    uint64_t a_u64[2] = {0, UINT64_MAX};
    int64_t a_i64[2] = {INT64_MIN, INT64_MAX};
    float a_f32[3] = {0.5f, -1.25f, 3.0e38f};
    double a_f64[2] = {1e-300, -2.5};
    uint8_t a_bool[3] = {1, 0, 1};
    gguf_str_t a_str[3] = {{"alpha", 5}, {"", 0}, {"\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", 11}};
    uint64_t st = 12345;
    duet_status_t s;

    for (int i = 0; i < 2 * 64; i++) {   /* a reproducible spread, with exact zeros */
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        src[i] = (i % 97 == 0) ? 0.0f : ((float)(int64_t)(st >> 40) / (float)(1 << 24) - 0.5f) *
                 (float)(1 + i % 7);
    }
    CHECK(gguf_writer_create(&w));
    s = gguf_writer_set_alignment(w, 64);
    if (s == DUET_OK) s = gguf_writer_set_str(w, "general.architecture", "test");
    if (s == DUET_OK) s = gguf_writer_set_u8(w, "v.u8", 200);
    if (s == DUET_OK) s = gguf_writer_set_i8(w, "v.i8", -100);
    if (s == DUET_OK) s = gguf_writer_set_u16(w, "v.u16", 60000);
    if (s == DUET_OK) s = gguf_writer_set_i16(w, "v.i16", -30000);
    if (s == DUET_OK) s = gguf_writer_set_u32(w, "v.u32", 4000000000u);
    if (s == DUET_OK) s = gguf_writer_set_i32(w, "v.i32", -2000000000);
    if (s == DUET_OK) s = gguf_writer_set_u64(w, "v.u64", 18000000000000000000ull);
    if (s == DUET_OK) s = gguf_writer_set_i64(w, "v.i64", -9000000000000000000ll);
    if (s == DUET_OK) s = gguf_writer_set_f32(w, "v.f32", 0.15625f);
    if (s == DUET_OK) s = gguf_writer_set_f64(w, "v.f64", 1.0 / 3.0);
    if (s == DUET_OK) s = gguf_writer_set_bool(w, "v.bool", true);
    if (s == DUET_OK) s = gguf_writer_set_str(w, "v.str", "h\xc3\xa9llo \"gguf\"\n");
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.u8", GGUF_TYPE_UINT8, a_u8, 3);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.i8", GGUF_TYPE_INT8, a_i8, 3);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.u16", GGUF_TYPE_UINT16, a_u16, 2);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.i16", GGUF_TYPE_INT16, a_i16, 2);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.u32", GGUF_TYPE_UINT32, a_u32, 2);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.i32", GGUF_TYPE_INT32, a_i32, 3);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.u64", GGUF_TYPE_UINT64, a_u64, 2);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.i64", GGUF_TYPE_INT64, a_i64, 2);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.f32", GGUF_TYPE_FLOAT32, a_f32, 3);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.f64", GGUF_TYPE_FLOAT64, a_f64, 2);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.bool", GGUF_TYPE_BOOL, a_bool, 3);
    if (s == DUET_OK) s = gguf_writer_set_arr(w, "a.empty", GGUF_TYPE_UINT32, NULL, 0);
    if (s == DUET_OK) s = gguf_writer_set_arr_str(w, "a.str", a_str, 3);
    for (int k = 0; k < 6 && s == DUET_OK; k++) {
        int64_t ne[2] = {64, 2};

        quant_quantize(qbuf[k], src, types[k], 128);   /* one source for all */
        s = gguf_writer_add_tensor(w, tnames[k], types[k], 2, ne, qbuf[k]);
    }
    if (s == DUET_OK)
        s = gguf_writer_write(w, path, NULL, NULL, err, errlen);
    gguf_writer_destroy(w);
    return s;
}

static void test_writer_round_trip(void)
{
    static const dtype_t types[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16,
                                    DTYPE_Q8_0, DTYPE_Q4_0, DTYPE_Q4_1};
    static const char *const tnames[] = {"t.f32", "t.f16", "t.bf16", "t.q8_0", "t.q4_0", "t.q4_1"};
    static const float tol[] = {0.0f, 1e-3f, 8e-3f, 1.0f / 127, 1.0f / 8, 1.0f / 15};
    float src[128], out[128];
    char path[512], err[512];
    gguf_t *g = NULL;
    gguf_writer_t *w = NULL;
    uint32_t u32;
    int64_t i64;
    float f32;
    bool b;
    gguf_str_t s;
    gguf_type_t elem;
    uint64_t n;
    const void *data;

    tmp_path(path, sizeof(path), "sample.gguf");
    if (!ok(write_sample(path, src, err, sizeof(err)) == DUET_OK, "write the sample file")) {
        diag("%s", err);
        return;
    }
    if (!ok(gguf_open(path, &g, err, sizeof(err)) == DUET_OK, "read it back")) {
        diag("%s", err);
        return;
    }
    is_int(gguf_alignment(g), 64, "alignment 64");
    is_int(gguf_n_kv(g), 27, "27 entries (with general.alignment)");
    ok(gguf_get_u32(g, "v.u8", &u32) == DUET_OK && u32 == 200, "u8");
    ok(gguf_get_i64(g, "v.i8", &i64) == DUET_OK && i64 == -100, "i8");
    ok(gguf_get_u32(g, "v.i8", &u32) == DUET_ERR_INVALID, "negative i8 is no u32");
    ok(gguf_get_u32(g, "v.u16", &u32) == DUET_OK && u32 == 60000, "u16");
    ok(gguf_get_i64(g, "v.i16", &i64) == DUET_OK && i64 == -30000, "i16");
    ok(gguf_get_u32(g, "v.u32", &u32) == DUET_OK && u32 == 4000000000u, "u32");
    ok(gguf_get_i64(g, "v.i32", &i64) == DUET_OK && i64 == -2000000000, "i32");
    ok(gguf_get_i64(g, "v.u64", &i64) == DUET_ERR_INVALID, "u64 > INT64_MAX is no i64");
    ok(gguf_get_u32(g, "v.u64", &u32) == DUET_ERR_INVALID, "u64 is no u32");
    ok(gguf_get_i64(g, "v.i64", &i64) == DUET_OK && i64 == -9000000000000000000ll, "i64");
    ok(gguf_get_f32(g, "v.f32", &f32) == DUET_OK && f32 == 0.15625f, "f32");
    ok(gguf_get_f32(g, "v.f64", &f32) == DUET_OK && f32 == (float)(1.0 / 3.0), "f64 as f32");
    ok(gguf_get_bool(g, "v.bool", &b) == DUET_OK && b, "bool");
    ok(gguf_get_str(g, "v.str", &s) == DUET_OK && s.len == 14 &&
       memcmp(s.ptr, "h\xc3\xa9llo \"gguf\"\n", 14) == 0, "string");
    ok(gguf_get_arr(g, "a.i64", &elem, &n, &data) == DUET_OK && elem == GGUF_TYPE_INT64 &&
       n == 2 && memcmp((const int64_t *)data + 1, &(int64_t){INT64_MAX}, 8) == 0, "i64 array");
    ok(gguf_get_arr(g, "a.empty", &elem, &n, &data) == DUET_OK && n == 0, "empty array");
    ok(gguf_get_arr_str(g, "a.str", 2, &s) == DUET_OK && s.len == 11, "utf-8 string element");
    ok(gguf_get_arr_str(g, "a.str", 1, &s) == DUET_OK && s.len == 0, "empty string element");
    for (int k = 0; k < 6; k++) {
        const gguf_tensor_t *t = gguf_find_tensor(g, tnames[k]);
        float maxerr = 0.0f, amax = 0.0f;

        if (!ok(t != NULL && t->type == types[k] && t->ne[0] == 64 && t->ne[1] == 2 &&
                ((uintptr_t)t->data % 64) == 0, "tensor %s present, 64-aligned", tnames[k]))
            continue;
        gguf_dequantize(out, t->data, t->type, 128);
        for (int i = 0; i < 128; i++) {
            float e = fabsf(out[i] - src[i]);

            maxerr = e > maxerr ? e : maxerr;
            amax = fabsf(src[i]) > amax ? fabsf(src[i]) : amax;
        }
        /* Per-block error bounds: half a step, plus f16 rounding of d. */
        ok(maxerr <= tol[k] * amax * 1.01f + 1e-6f,
           "%s round trip max error %g (amax %g)", tnames[k], (double)maxerr, (double)amax);
    }
    gguf_close(g);

    /* Writer refusals. */
    gguf_writer_create(&w);
    ok(gguf_writer_set_u32(w, "k", 1) == DUET_OK && gguf_writer_set_u32(w, "k", 2) ==
       DUET_ERR_INVALID, "duplicate key refused");
    ok(gguf_writer_add_tensor(w, "q", DTYPE_Q4_0, 1, (int64_t[]){48}, NULL) == DUET_ERR_INVALID,
       "48-element Q4_0 row refused");
    ok(gguf_writer_set_alignment(w, 48) == DUET_ERR_INVALID, "alignment 48 refused");
    ok(gguf_writer_add_tensor(w, "x", DTYPE_F32, 1, (int64_t[]){4}, NULL) == DUET_OK &&
       gguf_writer_add_tensor(w, "x", DTYPE_F32, 1, (int64_t[]){4}, NULL) == DUET_ERR_INVALID,
       "duplicate tensor refused");
    tmp_path(path, sizeof(path), "nofill.gguf");
    ok(gguf_writer_write(w, path, NULL, NULL, err, sizeof(err)) == DUET_ERR_INVALID &&
       access(path, F_OK) != 0, "no data and no fill: refused, no file left (%s)", err);
    gguf_writer_destroy(w);
}

/* --- quantizers ------------------------------------------------------- */

static void test_quant_edges(void)
{
    float x[32], y[32];
    block_q4_0_t q40;
    block_q4_1_t q41;
    block_q8_0_t q80;
    bool all8 = true;

    memset(x, 0, sizeof(x));
    quant_quantize(&q40, x, DTYPE_Q4_0, 32);
    for (int j = 0; j < 16; j++)
        all8 = all8 && q40.qs[j] == 0x88;
    ok(fp16_to_fp32(q40.d) == 0.0f && all8, "Q4_0 of zeros: d (-)0, every q 8");
    for (int j = 0; j < 32; j++)
        x[j] = 2.5f;
    quant_quantize(&q41, x, DTYPE_Q4_1, 32);
    gguf_dequantize(y, &q41, DTYPE_Q4_1, 32);
    ok(q41.d == 0 && y[0] == 2.5f && y[31] == 2.5f, "Q4_1 of a constant is exact");
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j - 16) / 16.0f;
    x[5] = -3.0f;   /* largest magnitude is negative: d = -3 / -8 > 0 */
    quant_quantize(&q40, x, DTYPE_Q4_0, 32);
    gguf_dequantize(y, &q40, DTYPE_Q4_0, 32);
    ok(fp16_to_fp32(q40.d) == 0.375f && y[5] == -3.0f, "Q4_0 keeps the signed extreme exactly");
    quant_quantize(&q80, x, DTYPE_Q8_0, 32);
    ok(q80.qs[5] == -127, "Q8_0 maps the extreme to -127");
    x[0] = 127.0f * 0.5f / 127.0f;  /* 0.5 with d = 3/127: q = round(21.1666) */
    x[5] = 3.0f;
    x[7] = 1.5f;                    /* x * id = 63.5 exactly: rounds away from zero */
    quant_quantize(&q80, x, DTYPE_Q8_0, 32);
    ok(q80.qs[7] == 64 && q80.qs[5] == 127, "Q8_0 rounds half away from zero (%d)", q80.qs[7]);
}

static int quantize_file(int type, const char *in, const char *out)
{
    size_t size = 0, n, nbytes;
    uint8_t *buf = read_file(in, &size);
    void *q;
    FILE *f;

    if (buf == NULL || !dtype_known(type) || size % 4 != 0 ||
        (size / 4) % (size_t)dtype_block_elems((dtype_t)type) != 0) {
        fprintf(stderr, "--quantize: bad type or input\n");
        free(buf);
        return 1;
    }
    n = size / 4;
    nbytes = dtype_row_bytes((dtype_t)type, (int64_t)n);
    q = malloc(nbytes ? nbytes : 1);
    quant_quantize(q, (const float *)buf, (dtype_t)type, (int64_t)n);
    f = fopen(out, "wb");
    if (f == NULL || fwrite(q, 1, nbytes, f) != nbytes || fclose(f) != 0) {
        fprintf(stderr, "--quantize: cannot write %s\n", out);
        free(q);
        free(buf);
        return 1;
    }
    free(q);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    char err[512];
    float src[128];

    log_set_level(LOG_LEVEL_OFF);
    if (argc == 3 && strcmp(argv[1], "--write-sample") == 0) {
        if (write_sample(argv[2], src, err, sizeof(err)) != DUET_OK) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "--quantize") == 0)
        return quantize_file(atoi(argv[2]), argv[3], argv[4]);
    if (tmpdir_make() != 0)
        return 1;
    test_writer_round_trip();
    test_quant_edges();
    tmpdir_remove();
    return tap_done();
}
