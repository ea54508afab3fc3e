/* duet gguf-dump: show a GGUF file's header, metadata, tensor table and
 * model config; or write tensors dequantized to float32 (for scripts and
 * the oracle tests that compare duet's dequantization with the gguf Python
 * package's). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/flags.h"
#include "model/config.h"
#include "model/gguf.h"

static const char *const type_names[] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64",
};

static void print_str(FILE *f, const char *p, uint64_t len, size_t max)
{
    fputc('"', f);
    for (uint64_t i = 0; i < len && i < max; i++) {
        unsigned char c = (unsigned char)p[i];

        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
    if (len > max)
        fprintf(f, "...(%" PRIu64 " bytes)", len);
}

/* One numeric element of type t at p. */
static void print_num(FILE *f, gguf_type_t t, const uint8_t *p)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            float f32; uint64_t u64; int64_t i64; double f64; } v;

    switch (t) {
    case GGUF_TYPE_UINT8:   memcpy(&v.u8, p, 1);  fprintf(f, "%u", v.u8); break;
    case GGUF_TYPE_INT8:    memcpy(&v.i8, p, 1);  fprintf(f, "%d", v.i8); break;
    case GGUF_TYPE_UINT16:  memcpy(&v.u16, p, 2); fprintf(f, "%u", v.u16); break;
    case GGUF_TYPE_INT16:   memcpy(&v.i16, p, 2); fprintf(f, "%d", v.i16); break;
    case GGUF_TYPE_UINT32:  memcpy(&v.u32, p, 4); fprintf(f, "%" PRIu32, v.u32); break;
    case GGUF_TYPE_INT32:   memcpy(&v.i32, p, 4); fprintf(f, "%" PRId32, v.i32); break;
    case GGUF_TYPE_FLOAT32: memcpy(&v.f32, p, 4); fprintf(f, "%.9g", (double)v.f32); break;
    case GGUF_TYPE_BOOL:    fprintf(f, "%s", p[0] ? "true" : "false"); break;
    case GGUF_TYPE_UINT64:  memcpy(&v.u64, p, 8); fprintf(f, "%" PRIu64, v.u64); break;
    case GGUF_TYPE_INT64:   memcpy(&v.i64, p, 8); fprintf(f, "%" PRId64, v.i64); break;
    case GGUF_TYPE_FLOAT64: memcpy(&v.f64, p, 8); fprintf(f, "%.17g", v.f64); break;
    default:                fprintf(f, "?"); break;
    }
}

static size_t num_size(gguf_type_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL:       return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:                          return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32:  return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64:  return 8;
    default:                                                              return 0;
    }
}

static void print_kv(FILE *f, const gguf_t *g, size_t i, int max_elems)
{
    gguf_str_t k = gguf_kv_key(g, i);
    gguf_type_t t = gguf_kv_type(g, i);
    const void *raw;
    size_t len;
    char key[512];

    gguf_kv_raw(g, i, &raw, &len);
    fprintf(f, "  %.*s: %s", (int)k.len, k.ptr, type_names[t]);
    if (k.len >= sizeof(key) || memchr(k.ptr, 0, (size_t)k.len) != NULL) {
        fprintf(f, "\n");
        return;
    }
    memcpy(key, k.ptr, (size_t)k.len);
    key[k.len] = 0;
    if (t == GGUF_TYPE_STRING) {
        gguf_str_t s;

        gguf_get_str(g, key, &s);
        fprintf(f, " = ");
        print_str(f, s.ptr, s.len, 120);
    } else if (t == GGUF_TYPE_ARRAY) {
        gguf_type_t elem;
        uint64_t n;
        const void *data;

        gguf_get_arr(g, key, &elem, &n, &data);
        fprintf(f, "[%s] (%" PRIu64 ") = [", type_names[elem], n);
        for (uint64_t j = 0; j < n && j < (uint64_t)max_elems; j++) {
            if (j)
                fprintf(f, ", ");
            if (elem == GGUF_TYPE_STRING) {
                gguf_str_t s;

                gguf_get_arr_str(g, key, j, &s);
                print_str(f, s.ptr, s.len, 40);
            } else if (num_size(elem) > 0) {
                print_num(f, elem, (const uint8_t *)data + j * num_size(elem));
            } else {
                fprintf(f, "[...]");
            }
        }
        fprintf(f, "%s]", n > (uint64_t)max_elems ? ", ..." : "");
    } else {
        fprintf(f, " = ");
        print_num(f, t, raw);
    }
    fprintf(f, "\n");
}

/* Write tensor t dequantized as float32 to f, a row at a time. */
static int dump_tensor(FILE *f, const gguf_tensor_t *t)
{
    int64_t n = gguf_tensor_nelements(t), row = t->ne[0];
    size_t row_bytes = dtype_row_bytes(t->type, row);
    float *buf;

    if (row == 0 || n == 0)
        return 0;
    buf = malloc((size_t)row * sizeof(float));
    if (buf == NULL)
        return 1;
    for (int64_t r = 0; r < n / row; r++) {
        gguf_dequantize(buf, (const uint8_t *)t->data + (size_t)r * row_bytes, t->type, row);
        if (fwrite(buf, sizeof(float), (size_t)row, f) != (size_t)row) {
            free(buf);
            return 1;
        }
    }
    free(buf);
    return 0;
}

static int gguf_dump_run(int argc, char **argv)
{
    const char *tensor = NULL, *out = NULL;
    bool all = false;
    int64_t max_elems = 8;
    const flag_t flags[] = {
        {"tensor", 't', FLAG_STRING, &tensor, "write this tensor dequantized to --out",
         "NAME", 0, 0, 0, 0},
        {"all-tensors", 0, FLAG_BOOL, &all,
         "write every tensor dequantized to --out, in file order", NULL, 0, 0, 0, 0},
        {"out", 'o', FLAG_STRING, &out, "file for raw little-endian float32 values", "FILE",
         0, 0, 0, 0},
        {"max-elems", 0, FLAG_INT, &max_elems, "array elements shown per key", "N",
         0, 1 << 30, 0, 0},
    };
    const flags_usage_t u = {"duet gguf-dump", "FILE",
                             "Show a GGUF file's metadata, tensors and model config, or write "
                             "tensors as float32."};
    char *pos[1];
    int npos = 0, rc = 1;
    char err[512];
    gguf_t *g = NULL;
    FILE *f = NULL;
    duet_status_t s;

    s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, pos, 1, &npos);
    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (npos != 1) {
        fprintf(stderr, "duet gguf-dump: give one FILE (see --help)\n");
        return 2;
    }
    if ((tensor != NULL || all) && out == NULL) {
        fprintf(stderr, "duet gguf-dump: --tensor and --all-tensors need --out FILE\n");
        return 2;
    }
    if (gguf_open(pos[0], &g, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "duet gguf-dump: %s\n", err);
        return 1;
    }
    if (tensor != NULL || all) {
        const gguf_tensor_t *t = tensor ? gguf_find_tensor(g, tensor) : NULL;

        if (tensor != NULL && t == NULL) {
            fprintf(stderr, "duet gguf-dump: %s: no tensor named %s\n", pos[0], tensor);
            goto out;
        }
        f = fopen(out, "wb");
        if (f == NULL) {
            perror(out);
            goto out;
        }
        if (t != NULL) {
            rc = dump_tensor(f, t);
        } else {
            rc = 0;
            for (size_t i = 0; i < gguf_n_tensors(g) && rc == 0; i++)
                rc = dump_tensor(f, gguf_tensor(g, i));
        }
        if (fclose(f) != 0 || rc != 0) {
            fprintf(stderr, "duet gguf-dump: writing %s failed\n", out);
            rc = 1;
        }
        goto out;
    }

    printf("%s: GGUF v%u, alignment %zu, %zu metadata entries, %zu tensors, data at %zu\n",
           pos[0], gguf_version(g), gguf_alignment(g), gguf_n_kv(g), gguf_n_tensors(g),
           gguf_data_offset(g));
    printf("metadata:\n");
    for (size_t i = 0; i < gguf_n_kv(g); i++)
        print_kv(stdout, g, i, (int)max_elems);
    printf("tensors:\n");
    for (size_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);

        printf("  %.*s: %s [", (int)t->name.len, t->name.ptr, dtype_name(t->type));
        for (int j = 0; j < t->n_dims; j++)
            printf("%s%" PRId64, j ? ", " : "", t->ne[j]);
        printf("] at %" PRIu64 ", %" PRIu64 " bytes\n", t->offset, t->nbytes);
    }
    {
        model_config_t c;

        if (model_config_load(g, &c, err, sizeof(err)) != DUET_OK) {
            printf("config: %s\n", err);
        } else {
            printf("config: %s, %d layers, hidden %d, %d heads, %d kv heads, head dim %d, "
                   "ffn %d, vocab %d, ctx %d, rms eps %g, rope base %g, %s output\n",
                   c.arch, c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn,
                   c.vocab, c.ctx_len, (double)c.rms_eps, (double)c.rope_base,
                   c.tied_output ? "tied" : "separate");
            printf("fingerprint: %016" PRIx64 "\n", c.fingerprint);
        }
    }
    rc = 0;
out:
    gguf_close(g);
    return rc;
}

const cli_cmd_t cli_cmd_gguf_dump = {"gguf-dump", "show a GGUF file or dump its tensors",
                                     gguf_dump_run};
