/* GGUF files: a bounds-checked reader over an mmap, and a writer.
 *
 * Reader: versions 2 and 3, every metadata value type, arrays,
 * general.alignment. Every offset, length and count in the file is checked
 * against the file size before use; a corrupt file gets DUET_ERR_CORRUPT (or
 * DUET_ERR_UNSUPPORTED for a tensor type outside dtype.h) and a message.
 * Strings returned point into the mapping and are NOT NUL-terminated. */
#ifndef DUET_MODEL_GGUF_H
#define DUET_MODEL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"

typedef enum {
    GGUF_TYPE_UINT8   = 0,
    GGUF_TYPE_INT8    = 1,
    GGUF_TYPE_UINT16  = 2,
    GGUF_TYPE_INT16   = 3,
    GGUF_TYPE_UINT32  = 4,
    GGUF_TYPE_INT32   = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL    = 7,
    GGUF_TYPE_STRING  = 8,
    GGUF_TYPE_ARRAY   = 9,
    GGUF_TYPE_UINT64  = 10,
    GGUF_TYPE_INT64   = 11,
    GGUF_TYPE_FLOAT64 = 12,
} gguf_type_t;

#define GGUF_MAX_DIMS 4

typedef struct {
    const char *ptr;    /* into the mapping; not NUL-terminated */
    uint64_t    len;
} gguf_str_t;

typedef struct {
    gguf_str_t   name;
    dtype_t      type;
    int          n_dims;
    int64_t      ne[GGUF_MAX_DIMS];   /* ne[0] is the contiguous dimension */
    uint64_t     offset;              /* from the start of the data section */
    uint64_t     nbytes;
    const void  *data;                /* into the mapping, aligned */
} gguf_tensor_t;

typedef struct gguf gguf_t;

/* Map and parse path. On failure, err (if not NULL) receives a one-line
 * reason naming the file and what is wrong. */
duet_status_t gguf_open(const char *path, gguf_t **gguf_p, char *err, size_t errlen);

/* Same over a caller-owned buffer (borrowed; must outlive the handle). */
duet_status_t gguf_open_buffer(const void *data, size_t size, gguf_t **gguf_p,
                               char *err, size_t errlen);

void gguf_close(gguf_t *g);

uint32_t gguf_version(const gguf_t *g);
size_t   gguf_alignment(const gguf_t *g);
/* The path given to gguf_open ("<buffer>" for gguf_open_buffer). */
const char *gguf_name(const gguf_t *g);
/* Byte offset of the data section from the start of the file. */
size_t   gguf_data_offset(const gguf_t *g);

/* --- metadata ---------------------------------------------------------- */

size_t      gguf_n_kv(const gguf_t *g);
gguf_str_t  gguf_kv_key(const gguf_t *g, size_t i);
gguf_type_t gguf_kv_type(const gguf_t *g, size_t i);
/* The encoded value of entry i (the bytes after its type field, in the
 * mapping): lets a writer copy any entry, arrays included, verbatim. */
void        gguf_kv_raw(const gguf_t *g, size_t i, const void **data_p, size_t *len_p);
/* Index of key, or -1. */
int64_t     gguf_find_key(const gguf_t *g, const char *key);

/* Scalars. Integer getters accept any integer type whose value fits
 * (DUET_ERR_INVALID otherwise); float getters accept FLOAT32/FLOAT64.
 * DUET_ERR_NOT_FOUND when the key is absent. */
duet_status_t gguf_get_u32(const gguf_t *g, const char *key, uint32_t *v_p);
duet_status_t gguf_get_i64(const gguf_t *g, const char *key, int64_t *v_p);
duet_status_t gguf_get_f32(const gguf_t *g, const char *key, float *v_p);
duet_status_t gguf_get_bool(const gguf_t *g, const char *key, bool *v_p);
duet_status_t gguf_get_str(const gguf_t *g, const char *key, gguf_str_t *v_p);

/* Arrays. gguf_get_arr gives the element type and count; for numeric
 * element types *data_p points at the packed little-endian elements in the
 * mapping (possibly unaligned: read with memcpy). String arrays are read
 * one element at a time with gguf_get_arr_str (constant time: the offsets are
 * indexed at open). data_p may be NULL. */
duet_status_t gguf_get_arr(const gguf_t *g, const char *key, gguf_type_t *elem_p,
                           uint64_t *n_p, const void **data_p);
duet_status_t gguf_get_arr_str(const gguf_t *g, const char *key, uint64_t i,
                               gguf_str_t *v_p);

/* --- tensors ----------------------------------------------------------- */

size_t               gguf_n_tensors(const gguf_t *g);
const gguf_tensor_t *gguf_tensor(const gguf_t *g, size_t i);
/* NULL when absent. */
const gguf_tensor_t *gguf_find_tensor(const gguf_t *g, const char *name);

/* Product of the dimensions (checked not to overflow at open). */
int64_t gguf_tensor_nelements(const gguf_tensor_t *t);

/* Dequantize n elements of a tensor of type t starting at element 0 of src
 * (n a multiple of the block size) into dst. Plain C, bit-identical to the
 * gguf Python package's dequantize (no fused multiply-add; see quant.c). */
void gguf_dequantize(float *dst, const void *src, dtype_t t, int64_t n);

#endif
