/* Internals of the GGUF reader shared by gguf.c (parsing, tensors) and
 * gguf_kv.c (metadata getters). */
#ifndef DUET_MODEL_GGUF_INT_H
#define DUET_MODEL_GGUF_INT_H

#include "model/gguf.h"

typedef struct {
    gguf_str_t     key;
    gguf_type_t    type;
    gguf_type_t    elem;       /* ARRAY: element type */
    uint64_t       n;          /* ARRAY: element count */
    const uint8_t *val;        /* scalar value, or the first array element */
    gguf_str_t     str;        /* STRING */
    uint64_t      *str_off;    /* string ARRAY: offset of element i from val (n) */
    const uint8_t *raw;        /* value encoding (after the type), for copying */
    size_t         raw_len;
} gguf_kv_t;

struct gguf {
    char            name[256];  /* path (or "<buffer>") for messages */
    const uint8_t  *base;
    size_t          size;
    bool            mapped;
    uint32_t        version;
    size_t          alignment;
    size_t          n_kv;
    gguf_kv_t      *kv;
    size_t         *kv_sorted;  /* kv indices sorted by key */
    size_t          n_tensors;
    gguf_tensor_t  *tensors;
    size_t         *t_sorted;   /* tensor indices sorted by name */
    size_t          data_off;   /* start of the data section */
};

#endif
