/* GGUF metadata getters over the entries that gguf.c parsed and checked:
 * every pointer here was bounds-checked at open. */
#include <stdbool.h>
#include <string.h>

#include "model/gguf.h"
#include "model/gguf_int.h"

size_t gguf_n_kv(const gguf_t *g)
{
    return g->n_kv;
}

gguf_str_t gguf_kv_key(const gguf_t *g, size_t i)
{
    return g->kv[i].key;
}

gguf_type_t gguf_kv_type(const gguf_t *g, size_t i)
{
    return g->kv[i].type;
}

void gguf_kv_raw(const gguf_t *g, size_t i, const void **data_p, size_t *len_p)
{
    *data_p = g->kv[i].raw;
    *len_p = g->kv[i].raw_len;
}

static const gguf_kv_t *kv_get(const gguf_t *g, const char *key)
{
    int64_t i = gguf_find_key(g, key);

    return i < 0 ? NULL : &g->kv[i];
}

/* An integer value of any width as a sign and a magnitude, so that one
 * range check serves both signed and unsigned targets. */
static duet_status_t kv_int(const gguf_kv_t *kv, bool *neg_p, uint64_t *mag_p)
{
    const uint8_t *v = kv->val;
    int64_t sv = 0;
    uint64_t uv = 0;
    bool is_signed = false;

    switch (kv->type) {
    case GGUF_TYPE_UINT8:  { uint8_t x;  memcpy(&x, v, 1); uv = x; break; }
    case GGUF_TYPE_UINT16: { uint16_t x; memcpy(&x, v, 2); uv = x; break; }
    case GGUF_TYPE_UINT32: { uint32_t x; memcpy(&x, v, 4); uv = x; break; }
    case GGUF_TYPE_UINT64: { uint64_t x; memcpy(&x, v, 8); uv = x; break; }
    case GGUF_TYPE_INT8:   { int8_t x;   memcpy(&x, v, 1); sv = x; is_signed = true; break; }
    case GGUF_TYPE_INT16:  { int16_t x;  memcpy(&x, v, 2); sv = x; is_signed = true; break; }
    case GGUF_TYPE_INT32:  { int32_t x;  memcpy(&x, v, 4); sv = x; is_signed = true; break; }
    case GGUF_TYPE_INT64:  { int64_t x;  memcpy(&x, v, 8); sv = x; is_signed = true; break; }
    default:
        return DUET_ERR_INVALID;
    }
    if (is_signed && sv < 0) {
        *neg_p = true;
        *mag_p = (uint64_t)0 - (uint64_t)sv;
    } else {
        *neg_p = false;
        *mag_p = is_signed ? (uint64_t)sv : uv;
    }
    return DUET_OK;
}

duet_status_t gguf_get_u32(const gguf_t *g, const char *key, uint32_t *v_p)
{
    const gguf_kv_t *kv = kv_get(g, key);
    bool neg;
    uint64_t mag;

    if (kv == NULL)
        return DUET_ERR_NOT_FOUND;
    if (kv_int(kv, &neg, &mag) != DUET_OK || neg || mag > UINT32_MAX)
        return DUET_ERR_INVALID;
    *v_p = (uint32_t)mag;
    return DUET_OK;
}

duet_status_t gguf_get_i64(const gguf_t *g, const char *key, int64_t *v_p)
{
    const gguf_kv_t *kv = kv_get(g, key);
    bool neg;
    uint64_t mag;

    if (kv == NULL)
        return DUET_ERR_NOT_FOUND;
    if (kv_int(kv, &neg, &mag) != DUET_OK)
        return DUET_ERR_INVALID;
    if (neg) {
        if (mag > (uint64_t)INT64_MAX + 1)
            return DUET_ERR_INVALID;
        *v_p = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    } else {
        if (mag > (uint64_t)INT64_MAX)
            return DUET_ERR_INVALID;
        *v_p = (int64_t)mag;
    }
    return DUET_OK;
}

duet_status_t gguf_get_f32(const gguf_t *g, const char *key, float *v_p)
{
    const gguf_kv_t *kv = kv_get(g, key);

    if (kv == NULL)
        return DUET_ERR_NOT_FOUND;
    if (kv->type == GGUF_TYPE_FLOAT32) {
        memcpy(v_p, kv->val, sizeof(float));
    } else if (kv->type == GGUF_TYPE_FLOAT64) {
        double d;

        memcpy(&d, kv->val, sizeof(d));
        *v_p = (float)d;
    } else {
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

duet_status_t gguf_get_bool(const gguf_t *g, const char *key, bool *v_p)
{
    const gguf_kv_t *kv = kv_get(g, key);

    if (kv == NULL)
        return DUET_ERR_NOT_FOUND;
    if (kv->type != GGUF_TYPE_BOOL)
        return DUET_ERR_INVALID;
    *v_p = kv->val[0] != 0;
    return DUET_OK;
}

duet_status_t gguf_get_str(const gguf_t *g, const char *key, gguf_str_t *v_p)
{
    const gguf_kv_t *kv = kv_get(g, key);

    if (kv == NULL)
        return DUET_ERR_NOT_FOUND;
    if (kv->type != GGUF_TYPE_STRING)
        return DUET_ERR_INVALID;
    *v_p = kv->str;
    return DUET_OK;
}

duet_status_t gguf_get_arr(const gguf_t *g, const char *key, gguf_type_t *elem_p,
                           uint64_t *n_p, const void **data_p)
{
    const gguf_kv_t *kv = kv_get(g, key);

    if (kv == NULL)
        return DUET_ERR_NOT_FOUND;
    if (kv->type != GGUF_TYPE_ARRAY)
        return DUET_ERR_INVALID;
    *elem_p = kv->elem;
    *n_p = kv->n;
    if (data_p != NULL)
        *data_p = kv->val;
    return DUET_OK;
}

duet_status_t gguf_get_arr_str(const gguf_t *g, const char *key, uint64_t i,
                               gguf_str_t *v_p)
{
    const gguf_kv_t *kv = kv_get(g, key);
    const uint8_t *p;
    uint64_t len;

    if (kv == NULL)
        return DUET_ERR_NOT_FOUND;
    if (kv->type != GGUF_TYPE_ARRAY || kv->elem != GGUF_TYPE_STRING || i >= kv->n)
        return DUET_ERR_INVALID;
    p = kv->val + kv->str_off[i];
    memcpy(&len, p, sizeof(len));   /* checked at open */
    v_p->ptr = (const char *)p + 8;
    v_p->len = len;
    return DUET_OK;
}
