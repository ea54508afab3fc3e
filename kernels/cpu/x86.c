/* x86 SIMD kernels. This one file is compiled three times, each time into
 * its own static library with its own flags (kernels/meson.build):
 *   -mavx2 -mfma -mf16c                          -> cpu_kern_avx2
 *   ... -mavx512f -mavx512bw -mavx512vl          -> cpu_kern_avx512
 *   ... -mavx512vnni                             -> cpu_kern_avx512_vnni
 * Float kernels use 512-bit vectors under AVX-512 (VF_* macros below);
 * quantized dot products use 256-bit integer vectors everywhere (one
 * 32-element block per register), with vpdpbusd under VNNI and
 * vpmaddubsw + vpmaddwd otherwise. backend.c picks one table from cpuid. */
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "kernels/cpu/cpu_int.h"

#ifndef KERN_NAME
#error "KERN_NAME must name the kernel table"
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* --- float vectors: 16 lanes under AVX-512, 8 under AVX2 ---------------- */
#ifdef __AVX512F__
#define VW 16
typedef __m512 vf_t;
typedef __m512i vi_t;
#define vf_load(p)        _mm512_loadu_ps(p)
#define vf_store(p, v)    _mm512_storeu_ps((p), (v))
#define vf_set1(x)        _mm512_set1_ps(x)
#define vf_zero()         _mm512_setzero_ps()
#define vf_add(a, b)      _mm512_add_ps((a), (b))
#define vf_sub(a, b)      _mm512_sub_ps((a), (b))
#define vf_mul(a, b)      _mm512_mul_ps((a), (b))
#define vf_div(a, b)      _mm512_div_ps((a), (b))
#define vf_max(a, b)      _mm512_max_ps((a), (b))
#define vf_min(a, b)      _mm512_min_ps((a), (b))
#define vf_fma(a, b, c)   _mm512_fmadd_ps((a), (b), (c))
#define vf_fnma(a, b, c)  _mm512_fnmadd_ps((a), (b), (c))
#define vf_hsum(v)        _mm512_reduce_add_ps(v)
#define vf_hmax(v)        _mm512_reduce_max_ps(v)
#define vf_round(v)       _mm512_roundscale_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vf_to_i(v)        _mm512_cvtps_epi32(v)
#define vi_add(a, b)      _mm512_add_epi32((a), (b))
#define vi_set1(x)        _mm512_set1_epi32(x)
#define vi_slli(a, n)     _mm512_slli_epi32((a), (n))
#define vi_as_f(a)        _mm512_castsi512_ps(a)
/* 16 halves / bfloat16s at p to floats */
#define vf_load_f16(p)    _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
#define vf_load_bf16(p)   _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32( \
                              _mm256_loadu_si256((const __m256i *)(const void *)(p))), 16))
#else
#define VW 8
typedef __m256 vf_t;
typedef __m256i vi_t;
#define vf_load(p)        _mm256_loadu_ps(p)
#define vf_store(p, v)    _mm256_storeu_ps((p), (v))
#define vf_set1(x)        _mm256_set1_ps(x)
#define vf_zero()         _mm256_setzero_ps()
#define vf_add(a, b)      _mm256_add_ps((a), (b))
#define vf_sub(a, b)      _mm256_sub_ps((a), (b))
#define vf_mul(a, b)      _mm256_mul_ps((a), (b))
#define vf_div(a, b)      _mm256_div_ps((a), (b))
#define vf_max(a, b)      _mm256_max_ps((a), (b))
#define vf_min(a, b)      _mm256_min_ps((a), (b))
#define vf_fma(a, b, c)   _mm256_fmadd_ps((a), (b), (c))
#define vf_fnma(a, b, c)  _mm256_fnmadd_ps((a), (b), (c))
#define vf_hsum(v)        hsum256(v)
#define vf_hmax(v)        hmax256(v)
#define vf_round(v)       _mm256_round_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vf_to_i(v)        _mm256_cvtps_epi32(v)
#define vi_add(a, b)      _mm256_add_epi32((a), (b))
#define vi_set1(x)        _mm256_set1_epi32(x)
#define vi_slli(a, n)     _mm256_slli_epi32((a), (n))
#define vi_as_f(a)        _mm256_castsi256_ps(a)
#define vf_load_f16(p)    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define vf_load_bf16(p)   _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32( \
                              _mm_loadu_si128((const __m128i *)(const void *)(p))), 16))
#endif

ALWAYS_INLINE float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

ALWAYS_INLINE float hmax256(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

ALWAYS_INLINE float f16(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* exp(x) to about 2 ulp (Cephes expf): exp(x) = 2^n exp(r), |r| <= ln2/2.
 * Inputs are clamped to [-87.3, 88.3], so tiny results are ~1e-38 instead of
 * denormals or 0, and huge ones stay finite. */
ALWAYS_INLINE vf_t vf_exp(vf_t x)
{
    vf_t n, r, p;

    x = vf_min(vf_max(x, vf_set1(-87.3f)), vf_set1(88.3f));
    n = vf_round(vf_mul(x, vf_set1(1.44269504088896341f)));
    r = vf_fnma(n, vf_set1(0.693359375f), x);
    r = vf_fnma(n, vf_set1(-2.12194440e-4f), r);
    p = vf_set1(1.9875691500e-4f);
    p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
    p = vf_fma(p, vf_mul(r, r), vf_add(r, vf_set1(1.0f)));
    return vf_mul(p, vi_as_f(vi_slli(vi_add(vf_to_i(n), vi_set1(127)), 23)));
}

/* --- activation conversion ------------------------------------------------ */

static void x86_quantize_q8a(block_q8a_t *y, const float *x, int64_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);

    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0),
                                                _mm256_andnot_ps(sign, v1)),
                                  _mm256_max_ps(_mm256_andnot_ps(sign, v2),
                                                _mm256_andnot_ps(sign, v3)));
        float amax = hmax256(mx);
        float d = amax / 127.0f;              /* as cpu_ref_quantize_block */
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        /* cvtps rounds to nearest even, as nearbyintf in the reference */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        __m256i p16a = _mm256_packs_epi32(i0, i1), p16b = _mm256_packs_epi32(i2, i3);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);

        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        _mm256_storeu_si256((__m256i *)(void *)y[b].qs, _mm256_permutevar8x32_epi32(p8, perm));
        y[b].d = d;
        y[b].ds = d * (float)_mm_cvtsi128_si32(s4);
    }
}

static void x86_to_f16(uint16_t *y, const float *x, int64_t n)
{
    int64_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = fp32_to_fp16(x[i]);
}

static void x86_to_bf16(uint16_t *y, const float *x, int64_t n)
{
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    int64_t i = 0;

    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256i u = _mm256_castps_si256(v);
        __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(bias,
                        _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        /* NaN keeps its bits and turns quiet, as fp32_to_bf16 */
        __m256i nan = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
        __m256 isnan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
        __m256i h;

        r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r),
                                                 _mm256_castsi256_ps(nan), isnan));
        h = _mm256_srli_epi32(r, 16);
        h = _mm256_packus_epi32(h, h);   /* lanes: 0-3 4-7 | 0-3 4-7 per 128 */
        h = _mm256_permute4x64_epi64(h, 0x08);
        _mm_storeu_si128((__m128i *)(void *)(y + i), _mm256_castsi256_si128(h));
    }
    for (; i < n; i++)
        y[i] = fp32_to_bf16(x[i]);
}

/* --- float dot tiles ------------------------------------------------------- */

#define ROW(p, i, stride) ((const void *)((const char *)(p) + (size_t)(i) * (stride)))

/* One weight row against T activation rows, two accumulators per row so
 * that even T = 1 keeps two FMA chains in flight. */
#define FLOAT_DOT(name, wtype, LOADW, LOADX, CVT1)                              \
    ALWAYS_INLINE void name##_row(int64_t n, const wtype *w, const void *x,   \
                                  size_t xs, float *out, size_t os, const int T) \
    {                                                                          \
        vf_t a0[CPU_TILE], a1[CPU_TILE];                                        \
        const wtype *xr[CPU_TILE];                                              \
        int64_t i = 0;                                                         \
                                                                               \
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                                          \
            a0[t] = vf_zero();                                                 \
            a1[t] = vf_zero();                                                 \
            xr[t] = ROW(x, t, xs);                                             \
        }                                                                      \
        for (; i + 2 * VW <= n; i += 2 * VW) {                                 \
            vf_t w0 = LOADW(w + i), w1 = LOADW(w + i + VW);                    \
            _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                                      \
                a0[t] = vf_fma(w0, LOADX(xr[t] + i), a0[t]);                   \
                a1[t] = vf_fma(w1, LOADX(xr[t] + i + VW), a1[t]);              \
            }                                                                  \
        }                                                                      \
        for (; i + VW <= n; i += VW) {                                         \
            vf_t w0 = LOADW(w + i);                                            \
            _Pragma("GCC unroll 4") for (int t = 0; t < T; t++)                                        \
                a0[t] = vf_fma(w0, LOADX(xr[t] + i), a0[t]);                   \
        }                                                                      \
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                                          \
            float s = vf_hsum(vf_add(a0[t], a1[t]));                           \
            for (int64_t j = i; j < n; j++)                                    \
                s += CVT1(w[j]) * CVT1(xr[t][j]);                              \
            out[(size_t)t * os] = s;                                           \
        }                                                                      \
    }                                                                          \
    static void name(int64_t n, const void *w, size_t ws, int nr, const void *x, \
                     size_t xs, int nx, float *out, size_t os)                 \
    {                                                                          \
        for (int r = 0; r < nr; r++) {                                         \
            const wtype *wr = ROW(w, r, ws);                                   \
            switch (nx) {                                                      \
            case 4: name##_row(n, wr, x, xs, out + r, os, 4); break;           \
            case 3: name##_row(n, wr, x, xs, out + r, os, 3); break;           \
            case 2: name##_row(n, wr, x, xs, out + r, os, 2); break;           \
            default: name##_row(n, wr, x, xs, out + r, os, 1); break;          \
            }                                                                  \
        }                                                                      \
    }

#define ID1(v) (v)
FLOAT_DOT(x86_dot_f32, float, vf_load, vf_load, ID1)
FLOAT_DOT(x86_dot_f16, uint16_t, vf_load_f16, vf_load_f16, fp16_to_fp32)
FLOAT_DOT(x86_dot_bf16, uint16_t, vf_load_bf16, vf_load_bf16, bf16_to_fp32)

/* --- quantized dot tiles ---------------------------------------------------- */

/* sum over groups of 4 of u8(a) * s8(b) into 8 int32 lanes */
ALWAYS_INLINE __m256i dot_u8s8(__m256i a, __m256i b)
{
#ifdef __AVX512VNNI__
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

/* 16 bytes of nibbles to 32 bytes: low nibbles first (elements 0..15), then
 * high nibbles (16..31), the order of dtype.h. */
ALWAYS_INLINE __m256i unpack_nibbles(const uint8_t *qs)
{
    __m128i q = _mm_loadu_si128((const __m128i *)(const void *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);

    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* Q4_1: sum_b d_w d_x isum_b + m ds_x; Q4_0: sum_b d_w d_x isum_b - 8 d_w ds_x. */
#define Q4_DOT(name, btype, MIN_TERM)                                           \
    ALWAYS_INLINE void name##_row(int64_t nb, const btype *w, const void *x,   \
                                  size_t xs, float *out, size_t os, const int T) \
    {                                                                          \
        __m256 acc[CPU_TILE];                                                  \
        float summ[CPU_TILE];                                                  \
        const block_q8a_t *xr[CPU_TILE];                                       \
                                                                               \
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                                          \
            acc[t] = _mm256_setzero_ps();                                      \
            summ[t] = 0.0f;                                                    \
            xr[t] = ROW(x, t, xs);                                             \
        }                                                                      \
        for (int64_t b = 0; b < nb; b++) {                                     \
            __m256i q = unpack_nibbles(w[b].qs);                               \
            __m256 dw = _mm256_set1_ps(f16(w[b].d));                           \
            float mw = MIN_TERM;                                               \
            _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                                      \
                const block_q8a_t *xb = &xr[t][b];                             \
                __m256i y = _mm256_loadu_si256((const __m256i *)(const void *)xb->qs); \
                __m256 p = _mm256_cvtepi32_ps(dot_u8s8(q, y));                 \
                acc[t] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw, _mm256_broadcast_ss(&xb->d)), acc[t]); \
                summ[t] += mw * xb->ds;                                        \
            }                                                                  \
        }                                                                      \
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++)                                            \
            out[(size_t)t * os] = hsum256(acc[t]) + summ[t];                   \
    }

Q4_DOT(x86_dot_q4_1, block_q4_1_t, f16(w[b].m))
Q4_DOT(x86_dot_q4_0, block_q4_0_t, -8.0f * f16(w[b].d))

ALWAYS_INLINE void x86_dot_q8_0_row(int64_t nb, const block_q8_0_t *w, const void *x,
                                    size_t xs, float *out, size_t os, const int T)
{
    __m256 acc[CPU_TILE];
    const block_q8a_t *xr[CPU_TILE];

    _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        xr[t] = ROW(x, t, xs);
    }
    for (int64_t b = 0; b < nb; b++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)w[b].qs);
        __m256i aq = _mm256_abs_epi8(q);      /* |w| as u8 (128 fits) */
        __m256 dw = _mm256_set1_ps(f16(w[b].d));

        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {
            const block_q8a_t *xb = &xr[t][b];
            __m256i y = _mm256_loadu_si256((const __m256i *)(const void *)xb->qs);
            __m256 p = _mm256_cvtepi32_ps(dot_u8s8(aq, _mm256_sign_epi8(y, q)));

            acc[t] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw, _mm256_broadcast_ss(&xb->d)), acc[t]);
        }
    }
    _Pragma("GCC unroll 4") for (int t = 0; t < T; t++)
        out[(size_t)t * os] = hsum256(acc[t]);
}

#ifdef __AVX512F__
/* Two weight rows at once in 512-bit registers: the low half of every
 * vector works on row r, the high half on row r + 1, and each activation
 * block is broadcast to both halves, so per token and block one vpdpbusd,
 * one convert and two FMAs serve two rows. The constant term (Q4_1's min,
 * Q4_0's -8 d_w, Q8_0's -128 d_w for the +128 bias of its unsigned weights)
 * sits in lane 0 of each half and meets the token's precomputed ds. */
ALWAYS_INLINE __m512i dot_u8s8_512(__m512i a, __m512i b)
{
#ifdef __AVX512VNNI__
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), a, b);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(a, b), _mm512_set1_epi16(1));
#endif
}

/* [a x8 | b x8] */
ALWAYS_INLINE __m512 halves(float a, float b)
{
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(a)),
                                               _mm256_castps_pd(_mm256_set1_ps(b)), 1));
}

/* Nibbles of two rows' blocks: [lo0 hi0 | lo1 hi1] as unsigned bytes. */
ALWAYS_INLINE __m512i unpack2_q4(const uint8_t *qs0, const uint8_t *qs1)
{
    __m256i a = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(const void *)qs1),
                                 _mm_loadu_si128((const __m128i *)(const void *)qs0));
    __m256i m = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(a, m), hi = _mm256_and_si256(_mm256_srli_epi16(a, 4), m);
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);   /* lo0 lo1 hi0 hi1 */

    return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
}

#define PAIR_STEP(b, ACC, UNPACK2, CONST0, CONST1)                                                     \
    do {                                                                       \
        __m512i q = UNPACK2(&w0[b], &w1[b]);                                   \
        __m512 dw = halves(f16(w0[b].d), f16(w1[b].d));                        \
        __m512 cw = _mm512_maskz_mov_ps(0x0101, halves(CONST0(b), CONST1(b))); \
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                  \
            const block_q8a_t *xb = &xr[t][b];                                 \
            __m512i y = _mm512_broadcast_i64x4(                                \
                _mm256_loadu_si256((const __m256i *)(const void *)xb->qs));    \
            __m512 p = _mm512_cvtepi32_ps(dot_u8s8_512(q, y));                 \
            ACC[t] = _mm512_fmadd_ps(p, _mm512_mul_ps(dw, _mm512_set1_ps(xb->d)), ACC[t]); \
            accc[t] = _mm512_fmadd_ps(cw, _mm512_set1_ps(xb->ds), accc[t]);    \
        }                                                                      \
    } while (0)

/* Even and odd blocks and the constant term go to separate accumulators:
 * three FMA chains per token keep a single-token (decode) pass from
 * waiting on FMA latency. */
#define PAIR_DOT(name, btype, UNPACK2, CONST0, CONST1)                          \
    ALWAYS_INLINE void name##_pair(int64_t nb, const btype *w0, const btype *w1, \
                                   const void *x, size_t xs, float *out, size_t os, \
                                   const int T)                                \
    {                                                                          \
        __m512 acca[CPU_TILE], accb[CPU_TILE], accc[CPU_TILE];                 \
        const block_q8a_t *xr[CPU_TILE];                                       \
        int64_t b = 0;                                                         \
                                                                               \
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                  \
            acca[t] = accb[t] = accc[t] = _mm512_setzero_ps();                 \
            xr[t] = ROW(x, t, xs);                                             \
        }                                                                      \
        for (; b + 2 <= nb; b += 2) {                                          \
            PAIR_STEP(b, acca, UNPACK2, CONST0, CONST1);                                              \
            PAIR_STEP(b + 1, accb, UNPACK2, CONST0, CONST1);                                          \
        }                                                                      \
        if (b < nb)                                                            \
            PAIR_STEP(b, acca, UNPACK2, CONST0, CONST1);                                              \
        _Pragma("GCC unroll 4") for (int t = 0; t < T; t++) {                  \
            __m512 acc = _mm512_add_ps(_mm512_add_ps(acca[t], accb[t]), accc[t]); \
            out[(size_t)t * os] = hsum256(_mm512_castps512_ps256(acc));        \
            out[(size_t)t * os + 1] = hsum256(_mm256_castpd_ps(                \
                _mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));            \
        }                                                                      \
    }

#define UNPACK2_Q4(a, b) unpack2_q4((a)->qs, (b)->qs)
#define MIN0(b) f16(w0[b].m)
#define MIN1(b) f16(w1[b].m)
#define NEG8_0(b) (-8.0f * f16(w0[b].d))
#define NEG8_1(b) (-8.0f * f16(w1[b].d))
PAIR_DOT(x86_dot_q4_1, block_q4_1_t, UNPACK2_Q4, MIN0, MIN1)
PAIR_DOT(x86_dot_q4_0, block_q4_0_t, UNPACK2_Q4, NEG8_0, NEG8_1)
#define HAVE_PAIR_Q4 1

#ifdef __AVX512VNNI__
/* Q8_0 as unsigned w + 128 (vpdpbusd is u8 x s8; without VNNI the
 * vpmaddubsw pairs of 255 * 127 would saturate, so that path keeps the
 * 256-bit sign trick). */
ALWAYS_INLINE __m512i unpack2_q8(const block_q8_0_t *a, const block_q8_0_t *b)
{
    __m512i z = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)a->qs)),
        _mm256_loadu_si256((const __m256i *)(const void *)b->qs), 1);

    return _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80));
}

#define NEG128_0(b) (-128.0f * f16(w0[b].d))
#define NEG128_1(b) (-128.0f * f16(w1[b].d))
PAIR_DOT(x86_dot_q8_0, block_q8_0_t, unpack2_q8, NEG128_0, NEG128_1)
#define HAVE_PAIR_Q8 1
#endif
#endif

/* The tile entry points: rows in pairs where a pair kernel exists and the
 * tile has several tokens to amortize its setup over, the rest one row at a
 * time. */
#define DOT_TILE(name, btype, PAIR)                                             \
    static void name(int64_t n, const void *w, size_t ws, int nr, const void *x, \
                     size_t xs, int nx, float *out, size_t os)                 \
    {                                                                          \
        int r = 0;                                                             \
                                                                               \
        if (PAIR && nx >= 2) { /* one token: the 256-bit row kernel is leaner */ \
            for (; r + 2 <= nr; r += 2)                                        \
                DOT_SWITCH(name##_pair, (n / QK, ROW(w, r, ws), ROW(w, r + 1, ws), \
                           x, xs, out + r, os, T_));                           \
        }                                                                      \
        for (; r < nr; r++)                                                    \
            DOT_SWITCH(name##_row, (n / QK, ROW(w, r, ws), x, xs, out + r, os, T_)); \
    }

#define T_ nx_const
#define DOT_SWITCH(fn, args)                                                   \
    switch (nx) {                                                              \
    case 4: { const int nx_const = 4; (void)nx_const; fn args; break; }                        \
    case 3: { const int nx_const = 3; (void)nx_const; fn args; break; }                        \
    case 2: { const int nx_const = 2; (void)nx_const; fn args; break; }                        \
    default: { const int nx_const = 1; (void)nx_const; fn args; break; }                       \
    }

#ifndef HAVE_PAIR_Q4
#define HAVE_PAIR_Q4 0
#define x86_dot_q4_1_pair(...) ((void)0)
#define x86_dot_q4_0_pair(...) ((void)0)
#endif
#ifndef HAVE_PAIR_Q8
#define HAVE_PAIR_Q8 0
#define x86_dot_q8_0_pair(...) ((void)0)
#endif

DOT_TILE(x86_dot_q4_1, block_q4_1_t, HAVE_PAIR_Q4)
DOT_TILE(x86_dot_q4_0, block_q4_0_t, HAVE_PAIR_Q4)
DOT_TILE(x86_dot_q8_0, block_q8_0_t, HAVE_PAIR_Q8)

#ifdef __AVX512VNNI__
/* --- 16-row panels (multi-token quantized matmul) ---------------------------
 * One zmm holds one int32 sum per weight row, so a block costs 8 vpdpbusd
 * (weights in registers, the activation dword broadcast from memory), one
 * convert and two FMAs per token for 16 rows, and the outputs are stored
 * without any horizontal reduction. See cpu_pack_fn for the layout. */

/* byte offsets of the 16 rows' blocks */
ALWAYS_INLINE __m512i panel_rows(size_t ws)
{
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int)ws));
}

ALWAYS_INLINE __m512 panel_f16_lo(__m512i v)   /* f16 in the low half of each dword */
{
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
}

/* A panel's scales from the f16 d of its 16 rows: d (vector 8) and the
 * constant c d (vector 9) that undoes the unsigned offset of the weights. */
ALWAYS_INLINE void panel_put_scales(__m512i *p, __m512i dm, float c)
{
    __m512 d = panel_f16_lo(dm);

    _mm512_store_ps(p + 8, d);
    _mm512_store_ps(p + 9, _mm512_mul_ps(d, _mm512_set1_ps(c)));
}

static void x86_pack_q4(void *panel, const void *w, size_t ws, int64_t nb, bool q4_1)
{
    const __m512i idx = panel_rows(ws), m4 = _mm512_set1_epi8(0x0f);
    __m512i *p = panel;

    for (int64_t b = 0; b < nb; b++, p += 10) {
        const char *blk = (const char *)w + b * (int64_t)sizeof(block_q4_1_t);
        __m512i dm;

        if (!q4_1)
            blk = (const char *)w + b * (int64_t)sizeof(block_q4_0_t);
        for (int k = 0; k < 4; k++) {
            /* dword k of the packed nibbles: elements 4k.. low, 16+4k.. high */
            __m512i v = _mm512_i32gather_epi32(idx, blk + (q4_1 ? 4 : 2) + 4 * k, 1);

            _mm512_store_si512(p + k, _mm512_and_si512(v, m4));
            _mm512_store_si512(p + 4 + k, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
        }
        dm = _mm512_i32gather_epi32(idx, blk, 1);
        if (q4_1) {
            _mm512_store_ps(p + 8, panel_f16_lo(dm));
            _mm512_store_ps(p + 9, panel_f16_lo(_mm512_srli_epi32(dm, 16)));
        } else {
            panel_put_scales(p, dm, -8.0f);
        }
    }
}

static void x86_pack_q4_1(void *panel, const void *w, size_t ws, int64_t nb)
{
    x86_pack_q4(panel, w, ws, nb, true);
}

static void x86_pack_q4_0(void *panel, const void *w, size_t ws, int64_t nb)
{
    x86_pack_q4(panel, w, ws, nb, false);
}

/* Q8_0 panels: the 8 vectors of w + 128, then the scales as 16 floats and the
 * 16 constants -128 d (cpu_pack_fn), or compact: 16 f16 d (cpu_panelc_fn). */
static void x86_pack_q8(void *panel, const void *w, size_t ws, int64_t nb, bool compact)
{
    const __m512i idx = panel_rows(ws), bias = _mm512_set1_epi8((char)0x80);
    __m512i *p = panel;

    for (int64_t b = 0; b < nb; b++, p += compact ? 9 : 10) {
        const char *blk = (const char *)w + b * (int64_t)sizeof(block_q8_0_t);
        __m512i dm = _mm512_i32gather_epi32(idx, blk, 1);

        for (int k = 0; k < 8; k++)
            _mm512_store_si512(p + k, _mm512_xor_si512(
                _mm512_i32gather_epi32(idx, blk + 2 + 4 * k, 1), bias));
        if (compact) {
            _mm256_store_si256((__m256i *)(void *)(p + 8), _mm512_cvtepi32_epi16(dm));
            _mm256_store_si256((__m256i *)(void *)(p + 8) + 1, _mm256_setzero_si256());
        } else {
            panel_put_scales(p, dm, -128.0f);
        }
    }
}

static void x86_pack_q8_0(void *panel, const void *w, size_t ws, int64_t nb)
{
    x86_pack_q8(panel, w, ws, nb, false);
}

/* Block b of one panel (8 weight vectors, scales dw, constants cw) against
 * T tokens of NL levels: acc[t] += per row, d_w d_x isum + c_w ds_x. */
ALWAYS_INLINE void panel_block(__m512 *acc, const block_q8a_t *const *xr, int64_t b,
                               __m512i w0, __m512i w1, __m512i w2, __m512i w3,
                               __m512i w4, __m512i w5, __m512i w6, __m512i w7,
                               __m512 dw, __m512 cw, const int NL, const int T)
{
    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {
        _Pragma("GCC unroll 2") for (int l = 0; l < NL; l++) {
            const block_q8a_t *xb = &xr[t * NL + l][b];
            const int32_t *q = (const int32_t *)(const void *)xb->qs;
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_set1_epi32(q[0]));
            __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, _mm512_set1_epi32(q[1]));

            s0 = _mm512_dpbusd_epi32(s0, w2, _mm512_set1_epi32(q[2]));
            s1 = _mm512_dpbusd_epi32(s1, w3, _mm512_set1_epi32(q[3]));
            s0 = _mm512_dpbusd_epi32(s0, w4, _mm512_set1_epi32(q[4]));
            s1 = _mm512_dpbusd_epi32(s1, w5, _mm512_set1_epi32(q[5]));
            s0 = _mm512_dpbusd_epi32(s0, w6, _mm512_set1_epi32(q[6]));
            s1 = _mm512_dpbusd_epi32(s1, w7, _mm512_set1_epi32(q[7]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),
                                     _mm512_mul_ps(dw, _mm512_set1_ps(xb->d)), acc[t]);
            acc[t] = _mm512_fmadd_ps(cw, _mm512_set1_ps(xb->ds), acc[t]);
        }
    }
}

ALWAYS_INLINE void x86_panel_tile(int64_t nb, const __m512i *p, const void *x, size_t xs,
                                  const int NL, const int T, float *out, size_t os)
{
    __m512 acc[8];
    const block_q8a_t *xr[16];

    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++)
        acc[t] = _mm512_setzero_ps();
    _Pragma("GCC unroll 16") for (int i = 0; i < T * NL; i++)
        xr[i] = ROW(x, i, xs);
    for (int64_t b = 0; b < nb; b++, p += 10) {
        __m512i w0 = _mm512_load_si512(p), w1 = _mm512_load_si512(p + 1);
        __m512i w2 = _mm512_load_si512(p + 2), w3 = _mm512_load_si512(p + 3);
        __m512i w4 = _mm512_load_si512(p + 4), w5 = _mm512_load_si512(p + 5);
        __m512i w6 = _mm512_load_si512(p + 6), w7 = _mm512_load_si512(p + 7);
        __m512 dw = _mm512_load_ps(p + 8), cw = _mm512_load_ps(p + 9);

        panel_block(acc, xr, b, w0, w1, w2, w3, w4, w5, w6, w7, dw, cw, NL, T);
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++)
        _mm512_storeu_ps(out + (size_t)t * os, acc[t]);
}

#define PANEL_T 8   /* tokens per panel pass */

static void x86_dot_panel(int64_t nb, const void *panel, const void *x, size_t xs,
                          int nlev, int ntok, float *out, size_t os)
{
    for (int t = 0; t < ntok; t += PANEL_T) {
        int nt = ntok - t < PANEL_T ? ntok - t : PANEL_T;
        const void *xt = ROW(x, (size_t)t * (size_t)nlev, xs);
        float *ot = out + (size_t)t * os;

#define PANEL_CASE(NT)                                                         \
        case NT:                                                               \
            if (nlev == 2)                                                     \
                x86_panel_tile(nb, panel, xt, xs, 2, NT, ot, os);              \
            else                                                               \
                x86_panel_tile(nb, panel, xt, xs, 1, NT, ot, os);              \
            break;
        switch (nt) {
        PANEL_CASE(8) PANEL_CASE(7) PANEL_CASE(6) PANEL_CASE(5)
        PANEL_CASE(4) PANEL_CASE(3) PANEL_CASE(2)
        default: PANEL_CASE(1)
        }
#undef PANEL_CASE
    }
}

/* --- prepared panels (cpu_panelc_fn): packed once, at the weights' size --- */

static void x86_packc_q4(void *panel, const void *w, size_t ws, int64_t nb, bool q4_1)
{
    const __m512i idx = panel_rows(ws);
    const size_t bsz = q4_1 ? sizeof(block_q4_1_t) : sizeof(block_q4_0_t);
    __m512i *p = panel;

    for (int64_t b = 0; b < nb; b++, p += 5) {
        const char *blk = (const char *)w + (size_t)b * bsz;
        __m512i dm = _mm512_i32gather_epi32(idx, blk, 1);

        for (int k = 0; k < 4; k++)
            _mm512_store_si512(p + k, _mm512_i32gather_epi32(idx, blk + (q4_1 ? 4 : 2) + 4 * k, 1));
        /* 16 f16 d, then 16 f16 m (Q4_1) or zeros */
        _mm256_store_si256((__m256i *)(void *)(p + 4), _mm512_cvtepi32_epi16(dm));
        _mm256_store_si256((__m256i *)(void *)(p + 4) + 1,
                           q4_1 ? _mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))
                                : _mm256_setzero_si256());
    }
}

static void x86_packc_q4_1(void *panel, const void *w, size_t ws, int64_t nb)
{
    x86_packc_q4(panel, w, ws, nb, true);
}

static void x86_packc_q4_0(void *panel, const void *w, size_t ws, int64_t nb)
{
    x86_packc_q4(panel, w, ws, nb, false);
}

static void x86_packc_q8_0(void *panel, const void *w, size_t ws, int64_t nb)
{
    x86_pack_q8(panel, w, ws, nb, true);
}

#ifndef PANELC_PREFETCH
#define PANELC_PREFETCH 8   /* blocks ahead */
#endif

/* As x86_panel_tile, on a prepared panel of type FMT (Q4_1, Q4_0 or Q8_0):
 * the Q4 nibbles are split in registers, the scales widened from f16. */
ALWAYS_INLINE void x86_panelc_tile(int64_t nb, const __m512i *p, const int FMT,
                                   const void *x, size_t xs, const int NL, const int T,
                                   float *out, size_t os)
{
    const int stride = FMT == DTYPE_Q8_0 ? 9 : 5;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[8];
    const block_q8a_t *xr[16];

    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++)
        acc[t] = _mm512_setzero_ps();
    _Pragma("GCC unroll 16") for (int i = 0; i < T * NL; i++)
        xr[i] = ROW(x, i, xs);
    for (int64_t b = 0; b < nb; b++, p += stride) {
        __m512i w0, w1, w2, w3, w4, w5, w6, w7;
        __m512 dw, cw;

        /* the panel streams from memory once per call: ask for it early */
        _Pragma("GCC unroll 9") for (int k = 0; k < stride; k++)
            _mm_prefetch((const char *)(p + PANELC_PREFETCH * stride + k), _MM_HINT_T0);

        if (FMT == DTYPE_Q8_0) {
            w0 = _mm512_load_si512(p);
            w1 = _mm512_load_si512(p + 1);
            w2 = _mm512_load_si512(p + 2);
            w3 = _mm512_load_si512(p + 3);
            w4 = _mm512_load_si512(p + 4);
            w5 = _mm512_load_si512(p + 5);
            w6 = _mm512_load_si512(p + 6);
            w7 = _mm512_load_si512(p + 7);
            dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(p + 8)));
            cw = _mm512_mul_ps(dw, _mm512_set1_ps(-128.0f));
        } else {
            __m512i v0 = _mm512_load_si512(p), v1 = _mm512_load_si512(p + 1);
            __m512i v2 = _mm512_load_si512(p + 2), v3 = _mm512_load_si512(p + 3);

            w0 = _mm512_and_si512(v0, m4);
            w1 = _mm512_and_si512(v1, m4);
            w2 = _mm512_and_si512(v2, m4);
            w3 = _mm512_and_si512(v3, m4);
            w4 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
            w5 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
            w6 = _mm512_and_si512(_mm512_srli_epi16(v2, 4), m4);
            w7 = _mm512_and_si512(_mm512_srli_epi16(v3, 4), m4);
            dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(p + 4)));
            if (FMT == DTYPE_Q4_1)
                cw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(const void *)(p + 4) + 1));
            else
                cw = _mm512_mul_ps(dw, _mm512_set1_ps(-8.0f));
        }
        panel_block(acc, xr, b, w0, w1, w2, w3, w4, w5, w6, w7, dw, cw, NL, T);
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < T; t++)
        _mm512_storeu_ps(out + (size_t)t * os, acc[t]);
}

#define PANELC_FMT(FMT)                                                        \
    static void x86_dot_panelc_##FMT(int64_t nb, const void *panel, const void *x, \
                                     size_t xs, int nlev, int ntok, float *out, size_t os) \
    {                                                                          \
        for (int t = 0; t < ntok; t += PANEL_T) {                              \
            int nt = ntok - t < PANEL_T ? ntok - t : PANEL_T;                  \
            const void *xt = ROW(x, (size_t)t * (size_t)nlev, xs);             \
            float *ot = out + (size_t)t * os;                                  \
                                                                               \
            switch (nt * 2 + (nlev == 2)) {                                    \
            PANELC_CASE(FMT, 8) PANELC_CASE(FMT, 7) PANELC_CASE(FMT, 6)        \
            PANELC_CASE(FMT, 5) PANELC_CASE(FMT, 4) PANELC_CASE(FMT, 3)        \
            PANELC_CASE(FMT, 2) PANELC_CASE(FMT, 1)                            \
            default: break;                                                    \
            }                                                                  \
        }                                                                      \
    }
#define PANELC_CASE(FMT, NT)                                                   \
    case 2 * NT + 1: x86_panelc_tile(nb, panel, DTYPE_##FMT, xt, xs, 2, NT, ot, os); break; \
    case 2 * NT:     x86_panelc_tile(nb, panel, DTYPE_##FMT, xt, xs, 1, NT, ot, os); break;

PANELC_FMT(Q4_1)
PANELC_FMT(Q4_0)
PANELC_FMT(Q8_0)
#undef PANELC_CASE
#undef PANELC_FMT

static void x86_dot_panelc(int64_t nb, const void *panel, dtype_t type, const void *x,
                           size_t xs, int nlev, int ntok, float *out, size_t os)
{
    switch (type) {
    case DTYPE_Q4_1: x86_dot_panelc_Q4_1(nb, panel, x, xs, nlev, ntok, out, os); break;
    case DTYPE_Q4_0: x86_dot_panelc_Q4_0(nb, panel, x, xs, nlev, ntok, out, os); break;
    default:         x86_dot_panelc_Q8_0(nb, panel, x, xs, nlev, ntok, out, os); break;
    }
}

#define PANEL_FNS .pack_q8_0 = x86_pack_q8_0, .pack_q4_0 = x86_pack_q4_0, \
                  .pack_q4_1 = x86_pack_q4_1, .dot_panel = x86_dot_panel, \
                  .packc_q8_0 = x86_packc_q8_0, .packc_q4_0 = x86_packc_q4_0, \
                  .packc_q4_1 = x86_packc_q4_1, .dot_panelc = x86_dot_panelc,
#else
#define PANEL_FNS
#endif

/* --- elementwise ---------------------------------------------------------- */

static float x86_sumsq(const float *x, int64_t n)
{
    vf_t a0 = vf_zero(), a1 = vf_zero();
    int64_t i = 0;
    float s;

    for (; i + 2 * VW <= n; i += 2 * VW) {
        vf_t v0 = vf_load(x + i), v1 = vf_load(x + i + VW);

        a0 = vf_fma(v0, v0, a0);
        a1 = vf_fma(v1, v1, a1);
    }
    for (; i + VW <= n; i += VW) {
        vf_t v0 = vf_load(x + i);

        a0 = vf_fma(v0, v0, a0);
    }
    s = vf_hsum(vf_add(a0, a1));
    for (; i < n; i++)
        s += x[i] * x[i];
    return s;
}

static void x86_scale_mul(float *out, const float *x, float s, const float *w, int64_t n)
{
    vf_t vs = vf_set1(s);
    int64_t i = 0;

    for (; i + VW <= n; i += VW)
        vf_store(out + i, vf_mul(vf_mul(vf_load(x + i), vs), vf_load(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * s * w[i];
}

static void x86_silu_mul(float *out, const float *g, const float *u, int64_t n)
{
    const vf_t one = vf_set1(1.0f), zero = vf_zero();
    int64_t i = 0;

    for (; i + VW <= n; i += VW) {
        vf_t vg = vf_load(g + i);
        vf_t e = vf_exp(vf_sub(zero, vg));

        vf_store(out + i, vf_mul(vf_div(vg, vf_add(one, e)), vf_load(u + i)));
    }
    for (; i < n; i++)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void x86_add(float *out, const float *a, const float *b, int64_t n)
{
    int64_t i = 0;

    for (; i + VW <= n; i += VW)
        vf_store(out + i, vf_add(vf_load(a + i), vf_load(b + i)));
    for (; i < n; i++)
        out[i] = a[i] + b[i];
}

/* --- attention -------------------------------------------------------------- */

/* One K or V row to f32 in dst(hd). */
ALWAYS_INLINE void kv_row(float *dst, const uint8_t *src, dtype_t t, int32_t hd)
{
    int32_t i = 0;

    if (t == DTYPE_F32) {
        memcpy(dst, src, (size_t)hd * sizeof(float));
        return;
    }
    for (; i + VW <= hd; i += VW)
        vf_store(dst + i, vf_load_f16(src + 2 * (size_t)i));
    for (; i < hd; i++) {
        uint16_t h;

        memcpy(&h, src + 2 * (size_t)i, 2);
        dst[i] = fp16_to_fp32(h);
    }
}

ALWAYS_INLINE float dot_f(const float *a, const float *b, int32_t n)
{
    vf_t acc = vf_zero();
    int32_t i = 0;
    float s;

    for (; i + VW <= n; i += VW)
        acc = vf_fma(vf_load(a + i), vf_load(b + i), acc);
    s = vf_hsum(acc);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void x86_attn(const cpu_attn_args_t *a)
{
    int32_t hd = a->layout->head_dim;
    dtype_t kt = a->layout->dtype;
    float *row = a->row;
    float inv_sum[CPU_ATTN_MAX_Q];

    for (int32_t p = 0; p < a->max_len; p++) {
        kv_row(row, cpu_attn_kv_row(a, 0, p), kt, hd);
        for (int i = 0; i < a->n_q; i++)
            if (p < a->len[i])
                a->scores[(size_t)i * a->max_len + p] = dot_f(a->q[i], row, hd) * a->scale;
    }
    for (int i = 0; i < a->n_q; i++) {
        float *s = a->scores + (size_t)i * a->max_len;
        int32_t len = a->len[i], p = 0;
        vf_t vmax = vf_set1(-INFINITY), vsum = vf_zero();
        float mx, sum;

        for (; p + VW <= len; p += VW)
            vmax = vf_max(vmax, vf_load(s + p));
        mx = vf_hmax(vmax);
        for (; p < len; p++)
            mx = fmaxf(mx, s[p]);
        for (p = 0; p + VW <= len; p += VW) {
            vf_t e = vf_exp(vf_sub(vf_load(s + p), vf_set1(mx)));

            vf_store(s + p, e);
            vsum = vf_add(vsum, e);
        }
        sum = vf_hsum(vsum);
        for (; p < len; p++) {
            s[p] = expf(s[p] - mx);
            sum += s[p];
        }
        inv_sum[i] = 1.0f / sum;
        memset(a->out[i], 0, (size_t)hd * sizeof(float));
    }
    for (int32_t p = 0; p < a->max_len; p++) {
        kv_row(row, cpu_attn_kv_row(a, 1, p), kt, hd);
        for (int i = 0; i < a->n_q; i++) {
            float *o = a->out[i];
            float w = a->scores[(size_t)i * a->max_len + p];
            vf_t vw = vf_set1(w);
            int32_t j = 0;

            if (p >= a->len[i])
                continue;
            for (; j + VW <= hd; j += VW)
                vf_store(o + j, vf_fma(vw, vf_load(row + j), vf_load(o + j)));
            for (; j < hd; j++)
                o[j] += w * row[j];
        }
    }
    for (int i = 0; i < a->n_q; i++) {
        vf_t vs = vf_set1(inv_sum[i]);
        float *o = a->out[i];
        int32_t j = 0;

        for (; j + VW <= hd; j += VW)
            vf_store(o + j, vf_mul(vf_load(o + j), vs));
        for (; j < hd; j++)
            o[j] *= inv_sum[i];
    }
}

/* --- memory bandwidth probe ---------------------------------------------- */

static uint64_t x86_read_sum(const void *p, size_t bytes)
{
    const __m256i *v = p;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    __m256i a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    uint64_t out[4];

    for (size_t i = 0; i < bytes / 32; i += 8) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256(v + i));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256(v + i + 1));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256(v + i + 2));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256(v + i + 3));
        a4 = _mm256_xor_si256(a4, _mm256_load_si256(v + i + 4));
        a5 = _mm256_xor_si256(a5, _mm256_load_si256(v + i + 5));
        a6 = _mm256_xor_si256(a6, _mm256_load_si256(v + i + 6));
        a7 = _mm256_xor_si256(a7, _mm256_load_si256(v + i + 7));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    a4 = _mm256_xor_si256(_mm256_xor_si256(a4, a5), _mm256_xor_si256(a6, a7));
    _mm256_storeu_si256((__m256i *)(void *)out, _mm256_xor_si256(a0, a4));
    return out[0] ^ out[1] ^ out[2] ^ out[3];
}

#define STR2(x) #x
#define STR(x) STR2(x)

const cpu_kern_t KERN_NAME = {
    .name = STR(KERN_LABEL),
    .quantize_q8a = x86_quantize_q8a,
    .to_f16 = x86_to_f16,
    .to_bf16 = x86_to_bf16,
    .dot_f32 = x86_dot_f32,
    .dot_f16 = x86_dot_f16,
    .dot_bf16 = x86_dot_bf16,
    .dot_q8_0 = x86_dot_q8_0,
    .dot_q4_0 = x86_dot_q4_0,
    .dot_q4_1 = x86_dot_q4_1,
    PANEL_FNS
    .sumsq = x86_sumsq,
    .scale_mul = x86_scale_mul,
    .silu_mul = x86_silu_mul,
    .add = x86_add,
    .attn = x86_attn,
    .read_sum = x86_read_sum,
};
