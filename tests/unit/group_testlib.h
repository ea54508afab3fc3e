/* Shared helpers for the group coordinator tests: deterministic inputs that
 * every rank can regenerate for every other rank, and serial references. */
#ifndef DUET_TESTS_GROUP_TESTLIB_H
#define DUET_TESTS_GROUP_TESTLIB_H

#include <stdint.h>
#include <string.h>

#include "common/dtype.h"
#include "parallel/group.h"

static inline uint32_t gt_hash(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* Raw value (as stored in a buffer of dt) of element i of rank r's input. */
static inline uint32_t gt_raw(group_dtype_t dt, int r, size_t i, uint32_t salt)
{
    uint32_t h = gt_hash((uint32_t)i * 0x9e3779b9u ^ gt_hash((uint32_t)r + salt * 131u) ^
                         (uint32_t)(i >> 32));
    float f = (float)(h >> 8) * (1.0f / 8388608.0f) - 1.0f;   /* [-1, 1) */
    uint32_t bits;

    switch (dt) {
    case GROUP_F32:  memcpy(&bits, &f, 4); return bits;
    case GROUP_F16:  return fp32_to_fp16(f);
    case GROUP_BF16: return fp32_to_bf16(f);
    case GROUP_I32:  return h;
    case GROUP_U8:   return h & 0xff;
    default:         return 0;
    }
}

static inline float gt_to_f32(group_dtype_t dt, uint32_t raw)
{
    float f;

    switch (dt) {
    case GROUP_F32:  memcpy(&f, &raw, 4); return f;
    case GROUP_F16:  return fp16_to_fp32((uint16_t)raw);
    case GROUP_BF16: return bf16_to_fp32((uint16_t)raw);
    default:         return 0;
    }
}

static inline void gt_store(group_dtype_t dt, void *buf, size_t i, uint32_t raw)
{
    switch (group_dtype_size(dt)) {
    case 4: ((uint32_t *)buf)[i] = raw; break;
    case 2: ((uint16_t *)buf)[i] = (uint16_t)raw; break;
    case 1: ((uint8_t *)buf)[i] = (uint8_t)raw; break;
    default: break;
    }
}

static inline uint32_t gt_load(group_dtype_t dt, const void *buf, size_t i)
{
    switch (group_dtype_size(dt)) {
    case 4: return ((const uint32_t *)buf)[i];
    case 2: return ((const uint16_t *)buf)[i];
    case 1: return ((const uint8_t *)buf)[i];
    default: return 0;
    }
}

static inline void gt_fill(group_dtype_t dt, void *buf, size_t count, int r,
                           size_t first, uint32_t salt)
{
    for (size_t i = 0; i < count; i++)
        gt_store(dt, buf, i, gt_raw(dt, r, first + i, salt));
}

/* The serial reference of a sum over ranks 0..n-1 of element idx, in rank
 * order, accumulating in f32 for the float types. */
static inline uint32_t gt_sum(group_dtype_t dt, int n, size_t idx, uint32_t salt)
{
    if (dt == GROUP_I32 || dt == GROUP_U8) {
        uint32_t acc = 0;

        for (int r = 0; r < n; r++)
            acc += gt_raw(dt, r, idx, salt);
        return dt == GROUP_U8 ? (acc & 0xff) : acc;
    } else {
        float acc = gt_to_f32(dt, gt_raw(dt, 0, idx, salt));
        uint32_t bits;

        for (int r = 1; r < n; r++)
            acc += gt_to_f32(dt, gt_raw(dt, r, idx, salt));
        if (dt == GROUP_F16)
            return fp32_to_fp16(acc);
        if (dt == GROUP_BF16)
            return fp32_to_bf16(acc);
        memcpy(&bits, &acc, 4);
        return bits;
    }
}

static inline uint64_t gt_fnv(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

#endif
