/* Quantize and dequantize rows of ggml's element types in portable C.
 *
 * Rounding: both directions reproduce ggml's reference code and the gguf
 * Python package step by step, each operation rounded to float. This file is
 * compiled with -ffp-contract=off (model/meson.build) so that the compiler
 * never fuses a multiply and an add (q * d + m would otherwise round once
 * instead of twice on FMA machines and differ in the last bit). */
#include "model/gguf.h"
#include "model/quant.h"

#include <assert.h>
#include <math.h>
#include <string.h>

void gguf_dequantize(float *dst, const void *src, dtype_t t, int64_t n)
{
    const uint8_t *s = src;

    assert(n >= 0 && n % dtype_block_elems(t) == 0);
    switch (t) {
    case DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case DTYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;

            memcpy(&h, s + 2 * i, 2);
            dst[i] = fp16_to_fp32(h);
        }
        break;
    case DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;

            memcpy(&h, s + 2 * i, 2);
            dst[i] = bf16_to_fp32(h);
        }
        break;
    case DTYPE_Q8_0:
        for (int64_t b = 0; b < n / QK; b++) {
            block_q8_0_t blk;
            float d;

            memcpy(&blk, s + b * sizeof(blk), sizeof(blk));
            d = fp16_to_fp32(blk.d);
            for (int j = 0; j < QK; j++)
                dst[b * QK + j] = (float)blk.qs[j] * d;
        }
        break;
    case DTYPE_Q4_0:
        for (int64_t b = 0; b < n / QK; b++) {
            block_q4_0_t blk;
            float d;

            memcpy(&blk, s + b * sizeof(blk), sizeof(blk));
            d = fp16_to_fp32(blk.d);
            for (int j = 0; j < QK / 2; j++) {
                dst[b * QK + j] = (float)((blk.qs[j] & 0x0f) - 8) * d;
                dst[b * QK + j + QK / 2] = (float)((blk.qs[j] >> 4) - 8) * d;
            }
        }
        break;
    case DTYPE_Q4_1:
        for (int64_t b = 0; b < n / QK; b++) {
            block_q4_1_t blk;
            float d, m;

            memcpy(&blk, s + b * sizeof(blk), sizeof(blk));
            d = fp16_to_fp32(blk.d);
            m = fp16_to_fp32(blk.m);
            for (int j = 0; j < QK / 2; j++) {
                dst[b * QK + j] = (float)(blk.qs[j] & 0x0f) * d + m;
                dst[b * QK + j + QK / 2] = (float)(blk.qs[j] >> 4) * d + m;
            }
        }
        break;
    }
}

/* Float to integer as x86-64 converts it (cvttss2si, what numpy's
 * astype() and ggml's casts compile to there): truncate to int32, NaN, inf
 * and out-of-range values becoming INT32_MIN; then keep the low byte.
 * In-range values are plain truncation; the rest only arise from degenerate
 * blocks (d subnormal, 1/d infinite) and are matched to the gguf package. */
static uint8_t low_byte(float v)
{
    if (!(fabsf(v) < 2147483648.0f))
        return 0;
    return (uint8_t)(uint32_t)(int32_t)v;
}

/* numpy's trunc(v).astype(uint8).clip(0, 15); for the usual 0 <= v < 16.5
 * this is ggml's MIN(15, (int8_t)v). */
static uint8_t nibble(float v)
{
    uint8_t b = low_byte(v);

    return b > 15 ? 15 : b;
}

static void quantize_q8_0(block_q8_0_t *y, const float *x)
{
    float amax = 0.0f, d, id;

    for (int j = 0; j < QK; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    d = amax / 127.0f;
    id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = fp32_to_fp16(d);
    for (int j = 0; j < QK; j++)
        y->qs[j] = (int8_t)low_byte(roundf(x[j] * id));
}

static void quantize_q4_0(block_q4_0_t *y, const float *x)
{
    float amax = 0.0f, max = 0.0f, d, id;

    for (int j = 0; j < QK; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    d = max / -8.0f;
    id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = fp32_to_fp16(d);
    for (int j = 0; j < QK / 2; j++) {
        uint8_t lo = nibble(x[j] * id + 8.5f);
        uint8_t hi = nibble(x[j + QK / 2] * id + 8.5f);

        y->qs[j] = (uint8_t)(lo | (hi << 4));
    }
}

static void quantize_q4_1(block_q4_1_t *y, const float *x)
{
    float min = x[0], max = x[0], d, id;

    for (int j = 1; j < QK; j++) {
        if (x[j] < min)
            min = x[j];
        if (x[j] > max)
            max = x[j];
    }
    d = (max - min) / 15.0f;
    id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = fp32_to_fp16(d);
    y->m = fp32_to_fp16(min);
    for (int j = 0; j < QK / 2; j++) {
        uint8_t lo = nibble((x[j] - min) * id + 0.5f);
        uint8_t hi = nibble((x[j + QK / 2] - min) * id + 0.5f);

        y->qs[j] = (uint8_t)(lo | (hi << 4));
    }
}

void quant_quantize(void *dst, const float *src, dtype_t t, int64_t n)
{
    uint8_t *d = dst;

    assert(n >= 0 && n % dtype_block_elems(t) == 0);
    switch (t) {
    case DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case DTYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = fp32_to_fp16(src[i]);

            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = fp32_to_bf16(src[i]);

            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case DTYPE_Q8_0:
        for (int64_t b = 0; b < n / QK; b++) {
            block_q8_0_t blk;

            quantize_q8_0(&blk, src + b * QK);
            memcpy(d + b * sizeof(blk), &blk, sizeof(blk));
        }
        break;
    case DTYPE_Q4_0:
        for (int64_t b = 0; b < n / QK; b++) {
            block_q4_0_t blk;

            quantize_q4_0(&blk, src + b * QK);
            memcpy(d + b * sizeof(blk), &blk, sizeof(blk));
        }
        break;
    case DTYPE_Q4_1:
        for (int64_t b = 0; b < n / QK; b++) {
            block_q4_1_t blk;

            quantize_q4_1(&blk, src + b * QK);
            memcpy(d + b * sizeof(blk), &blk, sizeof(blk));
        }
        break;
    }
}
