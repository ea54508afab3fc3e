/* GGUF writer: collect metadata and a tensor table, then write a version 3
 * file in one pass (to PATH.tmp.<pid>, renamed over PATH on success).
 * Tensor data comes either from a borrowed pointer given with the tensor or,
 * for files too large to hold in memory, from a fill callback called once
 * per tensor in order. */
#ifndef DUET_MODEL_GGUF_WRITER_H
#define DUET_MODEL_GGUF_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"
#include "model/gguf.h"

typedef struct gguf_writer gguf_writer_t;

duet_status_t gguf_writer_create(gguf_writer_t **w_p);
void          gguf_writer_destroy(gguf_writer_t *w);

/* Metadata, written in the order added. Keys and values are copied. A key
 * added twice is refused with DUET_ERR_INVALID. */
duet_status_t gguf_writer_set_u8(gguf_writer_t *w, const char *key, uint8_t v);
duet_status_t gguf_writer_set_i8(gguf_writer_t *w, const char *key, int8_t v);
duet_status_t gguf_writer_set_u16(gguf_writer_t *w, const char *key, uint16_t v);
duet_status_t gguf_writer_set_i16(gguf_writer_t *w, const char *key, int16_t v);
duet_status_t gguf_writer_set_u32(gguf_writer_t *w, const char *key, uint32_t v);
duet_status_t gguf_writer_set_i32(gguf_writer_t *w, const char *key, int32_t v);
duet_status_t gguf_writer_set_u64(gguf_writer_t *w, const char *key, uint64_t v);
duet_status_t gguf_writer_set_i64(gguf_writer_t *w, const char *key, int64_t v);
duet_status_t gguf_writer_set_f32(gguf_writer_t *w, const char *key, float v);
duet_status_t gguf_writer_set_f64(gguf_writer_t *w, const char *key, double v);
duet_status_t gguf_writer_set_bool(gguf_writer_t *w, const char *key, bool v);
duet_status_t gguf_writer_set_str(gguf_writer_t *w, const char *key, const char *v);
/* An array of n numeric or bool elements of type elem, packed little-endian. */
duet_status_t gguf_writer_set_arr(gguf_writer_t *w, const char *key, gguf_type_t elem,
                                  const void *data, uint64_t n);
/* An array of n strings. */
duet_status_t gguf_writer_set_arr_str(gguf_writer_t *w, const char *key,
                                      const gguf_str_t *strs, uint64_t n);
/* Entry i of another file, verbatim (any type, arrays included). */
duet_status_t gguf_writer_copy_kv(gguf_writer_t *w, const gguf_t *src, size_t i);

/* Data alignment (a power of two, default 32). Also sets general.alignment
 * (UINT32) when it differs from 32. Call before adding tensors. */
duet_status_t gguf_writer_set_alignment(gguf_writer_t *w, uint32_t alignment);

/* Add a tensor; ne[0] is the contiguous dimension and must be a whole
 * number of blocks of type. data (dtype_row_bytes(type, ne[0]) * rows
 * bytes) is borrowed until gguf_writer_write returns; NULL means the fill
 * callback provides it. */
duet_status_t gguf_writer_add_tensor(gguf_writer_t *w, const char *name, dtype_t type,
                                     int n_dims, const int64_t *ne, const void *data);

/* Fill buf with the nbytes of tensor i (in the order added). */
typedef duet_status_t (*gguf_fill_fn)(void *ctx, size_t i, void *buf, size_t nbytes);

/* Write everything to path. fill may be NULL when every tensor has data.
 * err gets a one-line reason on failure; no partial file is left. */
duet_status_t gguf_writer_write(gguf_writer_t *w, const char *path, gguf_fill_fn fill,
                                void *ctx, char *err, size_t errlen);

#endif
