/* Element types of weights, activations and KV, with ggml's ids and block
 * layouts (GGUF stores these ids). Quantized types pack 32 elements per block;
 * in Q4_0/Q4_1 the low nibble of qs[j] is element j and the high nibble is
 * element j + 16. Header-only: conversions are inline for the hot paths. */
#ifndef DUET_COMMON_DTYPE_H
#define DUET_COMMON_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    DTYPE_F32  = 0,
    DTYPE_F16  = 1,
    DTYPE_Q4_0 = 2,
    DTYPE_Q4_1 = 3,
    DTYPE_Q8_0 = 8,
    DTYPE_BF16 = 30,
} dtype_t;

#define QK 32   /* elements per quantized block */

typedef struct {
    uint16_t d;             /* f16 scale */
    uint8_t  qs[QK / 2];    /* x = (q - 8) * d */
} block_q4_0_t;

typedef struct {
    uint16_t d;             /* f16 scale */
    uint16_t m;             /* f16 min */
    uint8_t  qs[QK / 2];    /* x = q * d + m */
} block_q4_1_t;

typedef struct {
    uint16_t d;             /* f16 scale */
    int8_t   qs[QK];        /* x = q * d */
} block_q8_0_t;

_Static_assert(sizeof(block_q4_0_t) == 18, "q4_0 block");
_Static_assert(sizeof(block_q4_1_t) == 20, "q4_1 block");
_Static_assert(sizeof(block_q8_0_t) == 34, "q8_0 block");

static inline bool dtype_known(int t)
{
    return t == DTYPE_F32 || t == DTYPE_F16 || t == DTYPE_Q4_0 ||
           t == DTYPE_Q4_1 || t == DTYPE_Q8_0 || t == DTYPE_BF16;
}

static inline const char *dtype_name(int t)
{
    switch (t) {
    case DTYPE_F32:  return "F32";
    case DTYPE_F16:  return "F16";
    case DTYPE_Q4_0: return "Q4_0";
    case DTYPE_Q4_1: return "Q4_1";
    case DTYPE_Q8_0: return "Q8_0";
    case DTYPE_BF16: return "BF16";
    default:         return "unknown";
    }
}

/* Elements per block (1 for plain types). */
static inline int64_t dtype_block_elems(dtype_t t)
{
    return (t == DTYPE_Q4_0 || t == DTYPE_Q4_1 || t == DTYPE_Q8_0) ? QK : 1;
}

/* Bytes per block. */
static inline size_t dtype_block_bytes(dtype_t t)
{
    switch (t) {
    case DTYPE_F32:  return 4;
    case DTYPE_F16:
    case DTYPE_BF16: return 2;
    case DTYPE_Q4_0: return sizeof(block_q4_0_t);
    case DTYPE_Q4_1: return sizeof(block_q4_1_t);
    case DTYPE_Q8_0: return sizeof(block_q8_0_t);
    }
    return 0;
}

/* Bytes of a row of n elements; 0 when n is not a whole number of blocks. */
static inline size_t dtype_row_bytes(dtype_t t, int64_t n)
{
    int64_t be = dtype_block_elems(t);

    if (n < 0 || n % be != 0)
        return 0;
    return (size_t)(n / be) * dtype_block_bytes(t);
}

/* IEEE half <-> float, exact (round to nearest even on the way down). */
static inline float fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    float f;

    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {    /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while ((mant & 0x400) == 0) {
                mant <<= 1;
                exp--;
            }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline uint16_t fp32_to_fp16(float f)
{
    uint32_t x;
    uint32_t sign, exp, mant;

    memcpy(&x, &f, sizeof(x));
    sign = (x >> 16) & 0x8000;
    exp = (x >> 23) & 0xff;
    mant = x & 0x7fffff;
    if (exp == 0xff)                              /* inf / nan */
        return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp > 127 + 15)                           /* overflow -> inf */
        return (uint16_t)(sign | 0x7c00);
    if (exp < 127 - 14) {                         /* subnormal or zero */
        uint32_t shift;
        uint32_t m, r;

        if (exp < 127 - 25)
            return (uint16_t)sign;
        m = mant | 0x800000;
        shift = 127 - 14 - exp + 13;
        r = m >> shift;
        /* round to nearest even */
        if ((m & ((1u << shift) - 1)) > (1u << (shift - 1)) ||
            ((m & ((1u << shift) - 1)) == (1u << (shift - 1)) && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    {
        uint32_t h = sign | ((exp - 127 + 15) << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fff;

        if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
            h++;   /* may carry into the exponent: still correct */
        return (uint16_t)h;
    }
}

static inline float bf16_to_fp32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;

    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline uint16_t fp32_to_bf16(float f)
{
    uint32_t x;

    memcpy(&x, &f, sizeof(x));
    if ((x & 0x7fffffff) > 0x7f800000)            /* nan: keep it quiet */
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);                /* round to nearest even */
    return (uint16_t)(x >> 16);
}

#endif
