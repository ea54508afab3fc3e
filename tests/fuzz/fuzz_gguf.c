/* libFuzzer entry point for the GGUF reader: parse the input as a GGUF file,
 * then touch everything the API exposes (every metadata value, every string
 * of every string array, and the first block of every tensor), so that an
 * out-of-bounds offset anywhere shows up under AddressSanitizer.
 * Build: CC=clang meson setup build-fuzz -Dfuzz=enabled -Db_sanitize=address,undefined
 * Run:   ./build-fuzz/tests/fuzz_gguf -max_total_time=60 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "model/config.h"
#include "model/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy sized exactly, so ASan sees any read past the end. */
    uint8_t *copy = malloc(size ? size : 1);
    gguf_t *g = NULL;
    char err[256];
    volatile float sink = 0;

    log_set_level(LOG_LEVEL_OFF);
    if (copy == NULL)
        return 0;
    if (size)
        memcpy(copy, data, size);
    if (gguf_open_buffer(copy, size, &g, err, sizeof(err)) == DUET_OK) {
        model_config_t cfg;

        for (size_t i = 0; i < gguf_n_kv(g); i++) {
            gguf_str_t k = gguf_kv_key(g, i);
            char key[256];
            gguf_type_t elem;
            uint64_t n;
            const void *raw;
            size_t rawlen;

            gguf_kv_raw(g, i, &raw, &rawlen);
            if (rawlen)
                sink += ((const uint8_t *)raw)[rawlen - 1];
            if (k.len >= sizeof(key) || memchr(k.ptr, 0, k.len) != NULL)
                continue;
            memcpy(key, k.ptr, k.len);
            key[k.len] = 0;
            {
                uint32_t u; int64_t v; float f; bool b; gguf_str_t s;

                if (gguf_get_u32(g, key, &u) == DUET_OK) sink += (float)u;
                if (gguf_get_i64(g, key, &v) == DUET_OK) sink += (float)v;
                if (gguf_get_f32(g, key, &f) == DUET_OK) sink += f;
                if (gguf_get_bool(g, key, &b) == DUET_OK) sink += b;
                if (gguf_get_str(g, key, &s) == DUET_OK && s.len) sink += s.ptr[s.len - 1];
            }
            if (gguf_get_arr(g, key, &elem, &n, &raw) == DUET_OK && elem == GGUF_TYPE_STRING) {
                for (uint64_t j = 0; j < n; j++) {
                    gguf_str_t s;

                    if (gguf_get_arr_str(g, key, j, &s) == DUET_OK && s.len)
                        sink += s.ptr[s.len - 1];
                }
            }
        }
        for (size_t i = 0; i < gguf_n_tensors(g); i++) {
            const gguf_tensor_t *t = gguf_tensor(g, i);
            int64_t be = dtype_block_elems(t->type);
            float buf[32];

            if (t->nbytes > 0) {
                sink += ((const uint8_t *)t->data)[t->nbytes - 1];
                if (gguf_tensor_nelements(t) >= be) {
                    gguf_dequantize(buf, t->data, t->type, be);
                    sink += buf[0];
                }
            }
        }
        (void)model_config_load(g, &cfg, err, sizeof(err));
        gguf_close(g);
    }
    free(copy);
    (void)sink;
    return 0;
}
