/* GGUF writer: metadata is encoded as it is added into one growing buffer;
 * tensors are a table of shapes and data sources. gguf_writer_write lays the
 * file out as header, metadata, tensor infos, padding, and each tensor's data
 * padded to the alignment. */
#define DUET_LOG_COMPONENT "gguf"

#include "model/gguf_writer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

#define GGUF_MAGIC_BYTES "GGUF"
#define GGUF_WRITE_VERSION 3u

typedef struct {
    char        *name;
    dtype_t      type;
    int          n_dims;
    int64_t      ne[GGUF_MAX_DIMS];
    uint64_t     nbytes;
    uint64_t     offset;   /* from the start of the data section */
    const void  *data;     /* borrowed; NULL: from the fill callback */
} wtensor_t;

struct gguf_writer {
    uint8_t   *kv;         /* encoded metadata */
    size_t     kv_len, kv_cap;
    size_t    *key_off;    /* offset of each entry in kv (for duplicate checks) */
    size_t     n_kv, key_cap;
    wtensor_t *tensors;
    size_t     n_tensors, t_cap;
    uint64_t   data_len;   /* data section bytes so far, padded */
    uint32_t   alignment;
};

duet_status_t gguf_writer_create(gguf_writer_t **w_p)
{
    gguf_writer_t *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return DUET_ERR_NOMEM;
    w->alignment = 32;
    *w_p = w;
    return DUET_OK;
}

void gguf_writer_destroy(gguf_writer_t *w)
{
    if (w == NULL)
        return;
    for (size_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    free(w->key_off);
    free(w->kv);
    free(w);
}

static duet_status_t kv_reserve(gguf_writer_t *w, size_t more)
{
    size_t cap = w->kv_cap ? w->kv_cap : 4096;
    uint8_t *p;

    if (more > SIZE_MAX / 2 - w->kv_len)
        return DUET_ERR_TOO_BIG;
    while (cap < w->kv_len + more)
        cap *= 2;
    if (cap == w->kv_cap)
        return DUET_OK;
    p = realloc(w->kv, cap);
    if (p == NULL)
        return DUET_ERR_NOMEM;
    w->kv = p;
    w->kv_cap = cap;
    return DUET_OK;
}

static void kv_put(gguf_writer_t *w, const void *data, size_t n)
{
    if (n)
        memcpy(w->kv + w->kv_len, data, n);
    w->kv_len += n;
}

static void kv_put_u64(gguf_writer_t *w, uint64_t v)
{
    kv_put(w, &v, sizeof(v));
}

static void kv_put_u32(gguf_writer_t *w, uint32_t v)
{
    kv_put(w, &v, sizeof(v));
}

/* Start an entry: check the key is new, reserve room for key, type and
 * value_len bytes, and write the key and type. */
static duet_status_t kv_begin(gguf_writer_t *w, const char *key, gguf_type_t type,
                              size_t value_len)
{
    size_t klen = strlen(key);
    duet_status_t s;

    for (size_t i = 0; i < w->n_kv; i++) {
        uint64_t l;

        memcpy(&l, w->kv + w->key_off[i], sizeof(l));
        if (l == klen && memcmp(w->kv + w->key_off[i] + 8, key, klen) == 0) {
            log_error("metadata key %s added twice", key);
            return DUET_ERR_INVALID;
        }
    }
    if (w->n_kv == w->key_cap) {
        size_t cap = w->key_cap ? w->key_cap * 2 : 64;
        size_t *p = realloc(w->key_off, cap * sizeof(*p));

        if (p == NULL)
            return DUET_ERR_NOMEM;
        w->key_off = p;
        w->key_cap = cap;
    }
    if (value_len > SIZE_MAX / 2 || klen > SIZE_MAX / 2)
        return DUET_ERR_TOO_BIG;
    s = kv_reserve(w, 8 + klen + 4 + value_len);
    if (s != DUET_OK)
        return s;
    w->key_off[w->n_kv++] = w->kv_len;
    kv_put_u64(w, klen);
    kv_put(w, key, klen);
    kv_put_u32(w, (uint32_t)type);
    return DUET_OK;
}

static duet_status_t set_scalar(gguf_writer_t *w, const char *key, gguf_type_t type,
                                const void *v, size_t n)
{
    duet_status_t s = kv_begin(w, key, type, n);

    if (s != DUET_OK)
        return s;
    kv_put(w, v, n);
    return DUET_OK;
}

#define SETTER(fn, ctype, gtype)                                               \
    duet_status_t fn(gguf_writer_t *w, const char *key, ctype v)              \
    {                                                                         \
        return set_scalar(w, key, gtype, &v, sizeof(v));                      \
    }

SETTER(gguf_writer_set_u8, uint8_t, GGUF_TYPE_UINT8)
SETTER(gguf_writer_set_i8, int8_t, GGUF_TYPE_INT8)
SETTER(gguf_writer_set_u16, uint16_t, GGUF_TYPE_UINT16)
SETTER(gguf_writer_set_i16, int16_t, GGUF_TYPE_INT16)
SETTER(gguf_writer_set_u32, uint32_t, GGUF_TYPE_UINT32)
SETTER(gguf_writer_set_i32, int32_t, GGUF_TYPE_INT32)
SETTER(gguf_writer_set_u64, uint64_t, GGUF_TYPE_UINT64)
SETTER(gguf_writer_set_i64, int64_t, GGUF_TYPE_INT64)
SETTER(gguf_writer_set_f32, float, GGUF_TYPE_FLOAT32)
SETTER(gguf_writer_set_f64, double, GGUF_TYPE_FLOAT64)

duet_status_t gguf_writer_set_bool(gguf_writer_t *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;

    return set_scalar(w, key, GGUF_TYPE_BOOL, &b, 1);
}

duet_status_t gguf_writer_set_str(gguf_writer_t *w, const char *key, const char *v)
{
    size_t n = strlen(v);
    duet_status_t s = kv_begin(w, key, GGUF_TYPE_STRING, 8 + n);

    if (s != DUET_OK)
        return s;
    kv_put_u64(w, n);
    kv_put(w, v, n);
    return DUET_OK;
}

static size_t elem_size(gguf_type_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL:       return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:                          return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32:  return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64:  return 8;
    default:                                                              return 0;
    }
}

duet_status_t gguf_writer_set_arr(gguf_writer_t *w, const char *key, gguf_type_t elem,
                                  const void *data, uint64_t n)
{
    size_t sz = elem_size(elem);
    duet_status_t s;

    if (sz == 0)
        return DUET_ERR_INVALID;
    if (n > (SIZE_MAX / 4) / sz)
        return DUET_ERR_TOO_BIG;
    s = kv_begin(w, key, GGUF_TYPE_ARRAY, 12 + (size_t)n * sz);
    if (s != DUET_OK)
        return s;
    kv_put_u32(w, (uint32_t)elem);
    kv_put_u64(w, n);
    kv_put(w, data, (size_t)n * sz);
    return DUET_OK;
}

duet_status_t gguf_writer_set_arr_str(gguf_writer_t *w, const char *key,
                                      const gguf_str_t *strs, uint64_t n)
{
    size_t total = 12;
    duet_status_t s;

    for (uint64_t i = 0; i < n; i++) {
        if (strs[i].len > SIZE_MAX / 4 || total > SIZE_MAX / 4)
            return DUET_ERR_TOO_BIG;
        total += 8 + (size_t)strs[i].len;
    }
    s = kv_begin(w, key, GGUF_TYPE_ARRAY, total);
    if (s != DUET_OK)
        return s;
    kv_put_u32(w, GGUF_TYPE_STRING);
    kv_put_u64(w, n);
    for (uint64_t i = 0; i < n; i++) {
        kv_put_u64(w, strs[i].len);
        kv_put(w, strs[i].ptr, (size_t)strs[i].len);
    }
    return DUET_OK;
}

duet_status_t gguf_writer_copy_kv(gguf_writer_t *w, const gguf_t *src, size_t i)
{
    gguf_str_t k = gguf_kv_key(src, i);
    const void *raw;
    size_t len;
    char *key;
    duet_status_t s;

    if (memchr(k.ptr, 0, (size_t)k.len) != NULL)
        return DUET_ERR_INVALID;
    key = strndup(k.ptr, (size_t)k.len);
    if (key == NULL)
        return DUET_ERR_NOMEM;
    gguf_kv_raw(src, i, &raw, &len);
    s = kv_begin(w, key, gguf_kv_type(src, i), len);
    if (s == DUET_OK)
        kv_put(w, raw, len);
    free(key);
    return s;
}

duet_status_t gguf_writer_set_alignment(gguf_writer_t *w, uint32_t alignment)
{
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || w->n_tensors > 0)
        return DUET_ERR_INVALID;
    if (alignment != 32) {
        duet_status_t s = gguf_writer_set_u32(w, "general.alignment", alignment);

        if (s != DUET_OK)
            return s;
    }
    w->alignment = alignment;
    return DUET_OK;
}

static uint64_t pad_to(uint64_t n, uint64_t a)
{
    return (a - n % a) % a;
}

duet_status_t gguf_writer_add_tensor(gguf_writer_t *w, const char *name, dtype_t type,
                                     int n_dims, const int64_t *ne, const void *data)
{
    wtensor_t t;
    uint64_t rows = 1, row_bytes;

    memset(&t, 0, sizeof(t));
    if (!dtype_known((int)type) || n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return DUET_ERR_INVALID;
    for (int j = 0; j < GGUF_MAX_DIMS; j++) {
        t.ne[j] = j < n_dims ? ne[j] : 1;
        if (t.ne[j] < 1)
            return DUET_ERR_INVALID;
        if (j > 0) {
            if (rows > UINT64_MAX / 2 / (uint64_t)t.ne[j])
                return DUET_ERR_TOO_BIG;
            rows *= (uint64_t)t.ne[j];
        }
    }
    row_bytes = dtype_row_bytes(type, t.ne[0]);
    if (row_bytes == 0) {
        log_error("tensor %s: a row of %lld elements is not a whole number of %s blocks",
                  name, (long long)t.ne[0], dtype_name(type));
        return DUET_ERR_INVALID;
    }
    if (row_bytes > UINT64_MAX / 4 / rows)
        return DUET_ERR_TOO_BIG;
    for (size_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) {
            log_error("tensor %s added twice", name);
            return DUET_ERR_INVALID;
        }
    }
    if (w->n_tensors == w->t_cap) {
        size_t cap = w->t_cap ? w->t_cap * 2 : 64;
        wtensor_t *p = realloc(w->tensors, cap * sizeof(*p));

        if (p == NULL)
            return DUET_ERR_NOMEM;
        w->tensors = p;
        w->t_cap = cap;
    }
    t.name = strdup(name);
    if (t.name == NULL)
        return DUET_ERR_NOMEM;
    t.type = type;
    t.n_dims = n_dims;
    t.nbytes = row_bytes * rows;
    t.offset = w->data_len;
    t.data = data;
    w->data_len += t.nbytes + pad_to(t.nbytes, w->alignment);
    w->tensors[w->n_tensors++] = t;
    return DUET_OK;
}

static duet_status_t put(FILE *f, const void *data, size_t n)
{
    return fwrite(data, 1, n, f) == n ? DUET_OK : DUET_ERR_IO;
}

static duet_status_t put_zeros(FILE *f, uint64_t n)
{
    static const uint8_t zeros[256];

    return put(f, zeros, (size_t)n);   /* n < alignment <= 2^31; chunk below */
}

static duet_status_t put_pad(FILE *f, uint64_t pos, uint32_t a)
{
    uint64_t n = pad_to(pos, a);
    duet_status_t s = DUET_OK;

    while (n > 0 && s == DUET_OK) {
        uint64_t k = n > 256 ? 256 : n;

        s = put_zeros(f, k);
        n -= k;
    }
    return s;
}

static duet_status_t write_body(gguf_writer_t *w, FILE *f, gguf_fill_fn fill, void *ctx,
                                char *err, size_t errlen)
{
    uint64_t pos = 0, max_fill = 0;
    uint8_t *buf = NULL;
    duet_status_t s = DUET_OK;
    uint32_t u32;
    uint64_t u64;

    s = put(f, GGUF_MAGIC_BYTES, 4);
    u32 = GGUF_WRITE_VERSION;
    if (s == DUET_OK)
        s = put(f, &u32, 4);
    u64 = w->n_tensors;
    if (s == DUET_OK)
        s = put(f, &u64, 8);
    u64 = w->n_kv;
    if (s == DUET_OK)
        s = put(f, &u64, 8);
    if (s == DUET_OK)
        s = put(f, w->kv, w->kv_len);
    pos = 24 + w->kv_len;
    for (size_t i = 0; i < w->n_tensors && s == DUET_OK; i++) {
        const wtensor_t *t = &w->tensors[i];
        uint64_t len = strlen(t->name);

        u32 = (uint32_t)t->n_dims;
        s = put(f, &len, 8);
        if (s == DUET_OK)
            s = put(f, t->name, (size_t)len);
        if (s == DUET_OK)
            s = put(f, &u32, 4);
        for (int j = 0; j < t->n_dims && s == DUET_OK; j++)
            s = put(f, &t->ne[j], 8);
        u32 = (uint32_t)t->type;
        if (s == DUET_OK)
            s = put(f, &u32, 4);
        if (s == DUET_OK)
            s = put(f, &t->offset, 8);
        pos += 8 + len + 4 + 8 * (uint64_t)t->n_dims + 4 + 8;
        if (t->data == NULL && t->nbytes > max_fill)
            max_fill = t->nbytes;
    }
    if (s == DUET_OK)
        s = put_pad(f, pos, w->alignment);
    if (s != DUET_OK)
        goto err_io;
    if (max_fill > 0) {
        if (fill == NULL) {
            snprintf(err, errlen, "a tensor has no data and no fill callback was given");
            return DUET_ERR_INVALID;
        }
        buf = malloc((size_t)max_fill);
        if (buf == NULL) {
            snprintf(err, errlen, "out of memory for a %llu-byte tensor",
                     (unsigned long long)max_fill);
            return DUET_ERR_NOMEM;
        }
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        const void *data = t->data;

        if (data == NULL) {
            s = fill(ctx, i, buf, (size_t)t->nbytes);
            if (s != DUET_OK) {
                snprintf(err, errlen, "producing tensor %s failed: %s", t->name,
                         duet_status_str(s));
                goto err_free;
            }
            data = buf;
        }
        s = put(f, data, (size_t)t->nbytes);
        if (s == DUET_OK)
            s = put_pad(f, t->nbytes, w->alignment);
        if (s != DUET_OK)
            goto err_io;
    }
    free(buf);
    return DUET_OK;

err_io:
    snprintf(err, errlen, "write failed: %s", strerror(errno));
err_free:
    free(buf);
    return s;
}

duet_status_t gguf_writer_write(gguf_writer_t *w, const char *path, gguf_fill_fn fill,
                                void *ctx, char *err, size_t errlen)
{
    char tmp[4096], why[512] = "";
    FILE *f;
    duet_status_t s;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp)) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: path too long", path);
        return DUET_ERR_INVALID;
    }
    f = fopen(tmp, "wb");
    if (f == NULL) {
        s = duet_status_from_errno(errno);
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        return s < 0 ? s : DUET_ERR_IO;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    s = write_body(w, f, fill, ctx, why, sizeof(why));
    if (fclose(f) != 0 && s == DUET_OK) {
        snprintf(why, sizeof(why), "close failed: %s", strerror(errno));
        s = DUET_ERR_IO;
    }
    if (s == DUET_OK && rename(tmp, path) != 0) {
        snprintf(why, sizeof(why), "rename from %.400s failed: %s", tmp, strerror(errno));
        s = DUET_ERR_IO;
    }
    if (s != DUET_OK) {
        unlink(tmp);
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: %s", path, why);
        return s;
    }
    return DUET_OK;
}
