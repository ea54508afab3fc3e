/* GGUF reader: parses the header, metadata and tensor table of a mapped file
 * (or a caller's buffer) and checks every length, count and offset against
 * the bytes that are there before using it; then the tensor table lookups.
 * Metadata getters are in gguf_kv.c, dequantization in quant.c. */
#define DUET_LOG_COMPONENT "gguf"

#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "model/gguf_int.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

#define GGUF_MAGIC          0x46554747u   /* "GGUF" read as little-endian u32 */
#define GGUF_DEFAULT_ALIGN  32
#define GGUF_MAX_ARR_DEPTH  4            /* arrays of arrays, at most this deep */

/* A cursor over the bytes being parsed, and where errors go. */
typedef struct {
    const uint8_t *p;
    size_t         size;
    size_t         pos;
    const char    *name;
    char          *err;
    size_t         errlen;
} rd_t;

__attribute__((format(printf, 3, 4)))
static duet_status_t rd_fail(rd_t *r, duet_status_t s, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (r->err == NULL || r->errlen == 0)
        return s;
    n = snprintf(r->err, r->errlen, "%s: ", r->name);
    if (n < 0 || (size_t)n >= r->errlen)
        return s;
    va_start(ap, fmt);
    vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return s;
}

static duet_status_t rd_trunc(rd_t *r, const char *what)
{
    return rd_fail(r, DUET_ERR_CORRUPT,
                   "truncated: the file ends (%zu bytes) while reading %s at byte %zu",
                   r->size, what, r->pos);
}

static bool rd_has(const rd_t *r, uint64_t n)
{
    return n <= (uint64_t)(r->size - r->pos);
}

static duet_status_t rd_bytes(rd_t *r, void *dst, size_t n, const char *what)
{
    if (!rd_has(r, n))
        return rd_trunc(r, what);
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return DUET_OK;
}

static duet_status_t rd_u32(rd_t *r, uint32_t *v, const char *what)
{
    return rd_bytes(r, v, sizeof(*v), what);
}

static duet_status_t rd_u64(rd_t *r, uint64_t *v, const char *what)
{
    return rd_bytes(r, v, sizeof(*v), what);
}

static duet_status_t rd_str(rd_t *r, gguf_str_t *s, const char *what)
{
    uint64_t len = 0;
    duet_status_t st = rd_u64(r, &len, what);

    if (st != DUET_OK)
        return st;
    if (!rd_has(r, len))
        return rd_fail(r, DUET_ERR_CORRUPT,
                       "%s: string length %llu at byte %zu runs past the end of the file (%zu bytes)",
                       what, (unsigned long long)len, r->pos - 8, r->size);
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += len;
    return DUET_OK;
}

/* Size of a fixed-size value type; 0 for STRING, ARRAY and unknown types. */
static size_t type_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL:       return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:                          return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32:  return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64:  return 8;
    default:                                                              return 0;
    }
}

static bool type_valid(uint32_t t)
{
    return t <= GGUF_TYPE_FLOAT64;
}

/* ggml's names for the types it knows, for error messages only. */
static const char *ggml_type_name(uint32_t t)
{
    static const char *const names[] = {
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0",
        "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS",
        "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
        "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4",
        "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0",
    };

    return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown";
}

/* Skip the elements of an array value whose header was just read (nested
 * arrays only: their offsets are not indexed). */
static duet_status_t rd_skip_array(rd_t *r, uint32_t elem, uint64_t n, int depth,
                                   const char *what)
{
    size_t sz = type_size(elem);

    if (!type_valid(elem))
        return rd_fail(r, DUET_ERR_CORRUPT, "%s: unknown array element type %u", what, elem);
    if (sz > 0) {
        if (n > (uint64_t)(r->size - r->pos) / sz)
            return rd_fail(r, DUET_ERR_CORRUPT,
                           "%s: array of %llu elements runs past the end of the file",
                           what, (unsigned long long)n);
        r->pos += (size_t)n * sz;
        return DUET_OK;
    }
    if (elem == GGUF_TYPE_ARRAY && depth >= GGUF_MAX_ARR_DEPTH)
        return rd_fail(r, DUET_ERR_CORRUPT, "%s: arrays nested deeper than %d",
                       what, GGUF_MAX_ARR_DEPTH);
    for (uint64_t i = 0; i < n; i++) {
        duet_status_t s;

        if (elem == GGUF_TYPE_STRING) {
            gguf_str_t str;

            s = rd_str(r, &str, what);
        } else {
            uint32_t e2 = 0;
            uint64_t n2 = 0;

            s = rd_u32(r, &e2, what);
            if (s == DUET_OK)
                s = rd_u64(r, &n2, what);
            if (s == DUET_OK)
                s = rd_skip_array(r, e2, n2, depth + 1, what);
        }
        if (s != DUET_OK)
            return s;
    }
    return DUET_OK;
}

static duet_status_t rd_kv(rd_t *r, uint64_t idx, gguf_kv_t *kv)
{
    char what[96];
    uint32_t type = 0;
    duet_status_t s;

    snprintf(what, sizeof(what), "the key of metadata entry %llu", (unsigned long long)idx);
    s = rd_str(r, &kv->key, what);
    if (s != DUET_OK)
        return s;
    snprintf(what, sizeof(what), "metadata '%.*s'",
             (int)(kv->key.len > 64 ? 64 : kv->key.len), kv->key.ptr);
    s = rd_u32(r, &type, what);
    if (s != DUET_OK)
        return s;
    if (!type_valid(type))
        return rd_fail(r, DUET_ERR_CORRUPT, "%s has unknown value type %u", what, type);
    kv->type = (gguf_type_t)type;
    kv->raw = r->p + r->pos;

    if (type == GGUF_TYPE_STRING) {
        s = rd_str(r, &kv->str, what);
    } else if (type == GGUF_TYPE_ARRAY) {
        uint32_t elem = 0;
        uint64_t n = 0;

        s = rd_u32(r, &elem, what);
        if (s == DUET_OK)
            s = rd_u64(r, &n, what);
        if (s != DUET_OK)
            return s;
        if (!type_valid(elem))
            return rd_fail(r, DUET_ERR_CORRUPT, "%s: unknown array element type %u", what, elem);
        kv->elem = (gguf_type_t)elem;
        kv->n = n;
        kv->val = r->p + r->pos;
        if (elem == GGUF_TYPE_STRING) {
            /* Every string takes at least its 8-byte length: bound n by the
             * bytes left before allocating the offset index. */
            if (n > (uint64_t)(r->size - r->pos) / 8)
                return rd_fail(r, DUET_ERR_CORRUPT,
                               "%s: array of %llu strings cannot fit in the %zu bytes left",
                               what, (unsigned long long)n, r->size - r->pos);
            kv->str_off = malloc((n ? n : 1) * sizeof(uint64_t));
            if (kv->str_off == NULL)
                return rd_fail(r, DUET_ERR_NOMEM, "%s: out of memory for %llu strings",
                               what, (unsigned long long)n);
            for (uint64_t i = 0; i < n && s == DUET_OK; i++) {
                gguf_str_t str;

                kv->str_off[i] = (uint64_t)(r->p + r->pos - kv->val);
                s = rd_str(r, &str, what);
            }
        } else {
            s = rd_skip_array(r, elem, n, 1, what);
        }
    } else {
        size_t sz = type_size(type);

        if (!rd_has(r, sz))
            return rd_trunc(r, what);
        kv->val = r->p + r->pos;
        r->pos += sz;
    }
    if (s == DUET_OK)
        kv->raw_len = (size_t)(r->p + r->pos - kv->raw);
    return s;
}

static int str_cmp(gguf_str_t a, gguf_str_t b)
{
    size_t n = a.len < b.len ? (size_t)a.len : (size_t)b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;

    if (c != 0)
        return c;
    return a.len < b.len ? -1 : a.len > b.len ? 1 : 0;
}

static int kv_idx_cmp(const void *a, const void *b, void *ctx)
{
    const gguf_kv_t *kv = ctx;

    return str_cmp(kv[*(const size_t *)a].key, kv[*(const size_t *)b].key);
}

static int t_idx_cmp(const void *a, const void *b, void *ctx)
{
    const gguf_tensor_t *t = ctx;

    return str_cmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static duet_status_t rd_tensor_info(rd_t *r, uint64_t idx, gguf_tensor_t *t)
{
    char what[128];
    uint32_t n_dims = 0, type = 0;
    duet_status_t s;

    snprintf(what, sizeof(what), "the name of tensor %llu", (unsigned long long)idx);
    s = rd_str(r, &t->name, what);
    if (s != DUET_OK)
        return s;
    snprintf(what, sizeof(what), "tensor '%.*s'",
             (int)(t->name.len > 64 ? 64 : t->name.len), t->name.ptr);
    s = rd_u32(r, &n_dims, what);
    if (s != DUET_OK)
        return s;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return rd_fail(r, DUET_ERR_CORRUPT, "%s has %u dimensions (1 to %d allowed)",
                       what, n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int j = 0; j < GGUF_MAX_DIMS; j++) {
        uint64_t ne = 1;

        if (j < (int)n_dims) {
            s = rd_u64(r, &ne, what);
            if (s != DUET_OK)
                return s;
            if (ne > (uint64_t)INT64_MAX)
                return rd_fail(r, DUET_ERR_CORRUPT, "%s: dimension %d is %llu, too large",
                               what, j, (unsigned long long)ne);
        }
        t->ne[j] = (int64_t)ne;
    }
    s = rd_u32(r, &type, what);
    if (s != DUET_OK)
        return s;
    if (!dtype_known((int)type))
        return rd_fail(r, DUET_ERR_UNSUPPORTED,
                       "unsupported tensor type %u (%s) in tensor '%.*s' "
                       "(duet reads F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                       type, ggml_type_name(type), (int)(t->name.len > 64 ? 64 : t->name.len),
                       t->name.ptr);
    t->type = (dtype_t)type;
    return rd_u64(r, &t->offset, what);
}

/* Check one tensor against the data section; fills nbytes and data. */
static duet_status_t check_tensor(rd_t *r, const struct gguf *g, gguf_tensor_t *t)
{
    int nl = (int)(t->name.len > 64 ? 64 : t->name.len);
    uint64_t n = 1, rows, nbytes;
    int64_t be = dtype_block_elems(t->type);

    for (int j = 0; j < t->n_dims; j++) {
        if (t->ne[j] != 0 && n > (uint64_t)INT64_MAX / (uint64_t)t->ne[j])
            return rd_fail(r, DUET_ERR_CORRUPT,
                           "tensor '%.*s': the element count overflows (dimensions too large)",
                           nl, t->name.ptr);
        n *= (uint64_t)t->ne[j];
    }
    if (t->ne[0] % be != 0)
        return rd_fail(r, DUET_ERR_CORRUPT,
                       "tensor '%.*s': a row of %lld elements is not a whole number of "
                       "%lld-element %s blocks", nl, t->name.ptr, (long long)t->ne[0],
                       (long long)be, dtype_name(t->type));
    rows = t->ne[0] ? n / (uint64_t)t->ne[0] : 0;
    nbytes = (uint64_t)dtype_row_bytes(t->type, t->ne[0]);
    if (rows != 0 && nbytes > UINT64_MAX / rows)
        return rd_fail(r, DUET_ERR_CORRUPT, "tensor '%.*s': the byte size overflows",
                       nl, t->name.ptr);
    nbytes *= rows;
    if (t->offset % g->alignment != 0)
        return rd_fail(r, DUET_ERR_CORRUPT,
                       "tensor '%.*s': offset %llu is not a multiple of the alignment %zu",
                       nl, t->name.ptr, (unsigned long long)t->offset, g->alignment);
    if (g->data_off > r->size || t->offset > (uint64_t)(r->size - g->data_off) ||
        nbytes > (uint64_t)(r->size - g->data_off) - t->offset)
        return rd_fail(r, DUET_ERR_CORRUPT,
                       "tensor '%.*s': data at offset %llu (+%llu bytes) runs past the end of "
                       "the file (data section starts at %zu, file is %zu bytes)",
                       nl, t->name.ptr, (unsigned long long)t->offset,
                       (unsigned long long)nbytes, g->data_off, r->size);
    t->nbytes = nbytes;
    t->data = r->p + g->data_off + t->offset;
    return DUET_OK;
}

static void gguf_free_tables(struct gguf *g)
{
    if (g->kv != NULL) {
        for (size_t i = 0; i < g->n_kv; i++)
            free(g->kv[i].str_off);
    }
    free(g->kv);
    free(g->kv_sorted);
    free(g->tensors);
    free(g->t_sorted);
}

static duet_status_t gguf_parse(struct gguf *g, char *err, size_t errlen)
{
    rd_t r = {g->base, g->size, 0, g->name, err, errlen};
    uint32_t magic = 0;
    uint64_t n_tensors = 0, n_kv = 0;
    duet_status_t s;
    int64_t ai;

    CHECK(rd_u32(&r, &magic, "the magic number"));
    if (magic != GGUF_MAGIC)
        return rd_fail(&r, DUET_ERR_CORRUPT,
                       "not a GGUF file (magic %02x %02x %02x %02x, expected 'GGUF')",
                       magic & 0xff, (magic >> 8) & 0xff, (magic >> 16) & 0xff, magic >> 24);
    CHECK(rd_u32(&r, &g->version, "the version"));
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return rd_fail(&r, DUET_ERR_UNSUPPORTED, "big-endian GGUF files are not supported");
    if (g->version != 2 && g->version != 3)
        return rd_fail(&r, DUET_ERR_UNSUPPORTED,
                       "GGUF version %u is not supported (versions 2 and 3 are)", g->version);
    CHECK(rd_u64(&r, &n_tensors, "the tensor count"));
    CHECK(rd_u64(&r, &n_kv, "the metadata count"));
    /* Smallest encodings: a kv is key length (8) + type (4) + one byte; a
     * tensor info is name length (8) + n_dims (4) + one dim (8) + type (4)
     * + offset (8). A count that cannot fit is refused before allocating. */
    if (n_kv > (r.size - r.pos) / 13)
        return rd_fail(&r, DUET_ERR_CORRUPT,
                       "metadata count %llu is more than the %zu-byte file can hold",
                       (unsigned long long)n_kv, r.size);
    g->kv = calloc(n_kv ? n_kv : 1, sizeof(*g->kv));
    g->kv_sorted = malloc((n_kv ? n_kv : 1) * sizeof(size_t));
    if (g->kv == NULL || g->kv_sorted == NULL)
        return rd_fail(&r, DUET_ERR_NOMEM, "out of memory for %llu metadata entries",
                       (unsigned long long)n_kv);
    g->n_kv = (size_t)n_kv;
    for (size_t i = 0; i < g->n_kv; i++) {
        s = rd_kv(&r, i, &g->kv[i]);
        if (s != DUET_OK)
            return s;
        g->kv_sorted[i] = i;
    }
    qsort_r(g->kv_sorted, g->n_kv, sizeof(size_t), kv_idx_cmp, g->kv);
    for (size_t i = 1; i < g->n_kv; i++) {
        const gguf_kv_t *kv = &g->kv[g->kv_sorted[i]];

        if (str_cmp(kv->key, g->kv[g->kv_sorted[i - 1]].key) == 0)
            return rd_fail(&r, DUET_ERR_CORRUPT, "duplicate metadata key '%.*s'",
                           (int)(kv->key.len > 64 ? 64 : kv->key.len), kv->key.ptr);
    }

    g->alignment = GGUF_DEFAULT_ALIGN;
    ai = gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        const gguf_kv_t *kv = &g->kv[ai];
        uint32_t a;

        if (kv->type != GGUF_TYPE_UINT32)
            return rd_fail(&r, DUET_ERR_CORRUPT, "general.alignment has type %d, not UINT32",
                           kv->type);
        memcpy(&a, kv->val, sizeof(a));
        if (a == 0 || (a & (a - 1)) != 0)
            return rd_fail(&r, DUET_ERR_CORRUPT,
                           "general.alignment %u is not a power of two", a);
        g->alignment = a;
    }

    if (n_tensors > (r.size - r.pos) / 32)
        return rd_fail(&r, DUET_ERR_CORRUPT,
                       "tensor count %llu is more than the %zu-byte file can hold",
                       (unsigned long long)n_tensors, r.size);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(*g->tensors));
    g->t_sorted = malloc((n_tensors ? n_tensors : 1) * sizeof(size_t));
    if (g->tensors == NULL || g->t_sorted == NULL)
        return rd_fail(&r, DUET_ERR_NOMEM, "out of memory for %llu tensors",
                       (unsigned long long)n_tensors);
    g->n_tensors = (size_t)n_tensors;
    for (size_t i = 0; i < g->n_tensors; i++) {
        s = rd_tensor_info(&r, i, &g->tensors[i]);
        if (s != DUET_OK)
            return s;
        g->t_sorted[i] = i;
    }
    /* The data section starts at the next multiple of the alignment; it may
     * lie past the end only when there is no tensor data at all. */
    g->data_off = r.pos + (g->alignment - r.pos % g->alignment) % g->alignment;
    for (size_t i = 0; i < g->n_tensors; i++) {
        s = check_tensor(&r, g, &g->tensors[i]);
        if (s != DUET_OK)
            return s;
    }
    qsort_r(g->t_sorted, g->n_tensors, sizeof(size_t), t_idx_cmp, g->tensors);
    for (size_t i = 1; i < g->n_tensors; i++) {
        const gguf_tensor_t *t = &g->tensors[g->t_sorted[i]];

        if (str_cmp(t->name, g->tensors[g->t_sorted[i - 1]].name) == 0)
            return rd_fail(&r, DUET_ERR_CORRUPT, "duplicate tensor name '%.*s'",
                           (int)(t->name.len > 64 ? 64 : t->name.len), t->name.ptr);
    }
    return DUET_OK;
}

static duet_status_t gguf_new(const char *name, const void *data, size_t size, bool mapped,
                              gguf_t **gguf_p, char *err, size_t errlen)
{
    struct gguf *g = calloc(1, sizeof(*g));
    duet_status_t s;

    if (g == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: out of memory", name);
        return DUET_ERR_NOMEM;
    }
    snprintf(g->name, sizeof(g->name), "%s", name);
    g->base = data;
    g->size = size;
    g->mapped = mapped;
    s = gguf_parse(g, err, errlen);
    if (s != DUET_OK) {
        g->mapped = false;   /* the caller unmaps on failure */
        gguf_free_tables(g);
        free(g);
        return s;
    }
    *gguf_p = g;
    return DUET_OK;
}

duet_status_t gguf_open(const char *path, gguf_t **gguf_p, char *err, size_t errlen)
{
    struct stat st;
    void *map;
    duet_status_t s;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        s = duet_status_from_errno(errno);
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return s == DUET_OK ? DUET_ERR_IO : s;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: not a regular file", path);
        s = DUET_ERR_INVALID;
        goto err_close;
    }
    if (st.st_size == 0) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: empty file, not a GGUF file", path);
        s = DUET_ERR_CORRUPT;
        goto err_close;
    }
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        s = DUET_ERR_IO;
        goto err_close;
    }
    close(fd);
    s = gguf_new(path, map, (size_t)st.st_size, true, gguf_p, err, errlen);
    if (s != DUET_OK)
        munmap(map, (size_t)st.st_size);
    return s;

err_close:
    close(fd);
    return s;
}

duet_status_t gguf_open_buffer(const void *data, size_t size, gguf_t **gguf_p,
                               char *err, size_t errlen)
{
    static const uint8_t empty[1];

    return gguf_new("<buffer>", size ? data : empty, size, false, gguf_p, err, errlen);
}

void gguf_close(gguf_t *g)
{
    if (g == NULL)
        return;
    gguf_free_tables(g);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(g);
}

uint32_t gguf_version(const gguf_t *g)
{
    return g->version;
}

size_t gguf_alignment(const gguf_t *g)
{
    return g->alignment;
}

const char *gguf_name(const gguf_t *g)
{
    return g->name;
}

size_t gguf_data_offset(const gguf_t *g)
{
    return g->data_off;
}

int64_t gguf_find_key(const gguf_t *g, const char *key)
{
    gguf_str_t k = {key, strlen(key)};
    size_t lo = 0, hi = g->n_kv;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = str_cmp(g->kv[g->kv_sorted[mid]].key, k);

        if (c == 0)
            return (int64_t)g->kv_sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* --- tensors ----------------------------------------------------------- */

size_t gguf_n_tensors(const gguf_t *g)
{
    return g->n_tensors;
}

const gguf_tensor_t *gguf_tensor(const gguf_t *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const gguf_tensor_t *gguf_find_tensor(const gguf_t *g, const char *name)
{
    gguf_str_t k = {name, strlen(name)};
    size_t lo = 0, hi = g->n_tensors;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = str_cmp(g->tensors[g->t_sorted[mid]].name, k);

        if (c == 0)
            return &g->tensors[g->t_sorted[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int64_t gguf_tensor_nelements(const gguf_tensor_t *t)
{
    int64_t n = 1;

    for (int j = 0; j < t->n_dims; j++)
        n *= t->ne[j];
    return n;
}
