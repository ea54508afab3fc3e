/* Sums over ranks for the shm backend, in rank order with an f32
 * accumulator for the half types: for every element, every path computes
 * (((x0 + x1) + x2) + ...) in f32 and rounds once, so the result does not
 * depend on which path, tile or rank computed it. */
#include "parallel/group_int.h"

#include <string.h>

#include "common/dtype.h"

#define TILE 512                /* f32 accumulator elements */

/* n = 2..4 straight into the outputs, same order: ((x0 + x1) + x2) + x3 */
static void reduce_f32_direct(float *out1, float *out2, uint8_t *const *srcs, int n,
                              size_t cnt)
{
    const float *a = (const float *)srcs[0], *b = (const float *)srcs[1];
    const float *x2 = n > 2 ? (const float *)srcs[2] : NULL;
    const float *x3 = n > 3 ? (const float *)srcs[3] : NULL;

    if (n == 2 && out2 == NULL) {
        for (size_t i = 0; i < cnt; i++)
            out1[i] = a[i] + b[i];
    } else if (n == 2) {
        for (size_t i = 0; i < cnt; i++)
            out1[i] = out2[i] = a[i] + b[i];
    } else if (n == 3) {
        for (size_t i = 0; i < cnt; i++) {
            float v = (a[i] + b[i]) + x2[i];

            out1[i] = v;
            if (out2 != NULL)
                out2[i] = v;
        }
    } else {
        for (size_t i = 0; i < cnt; i++) {
            float v = ((a[i] + b[i]) + x2[i]) + x3[i];

            out1[i] = v;
            if (out2 != NULL)
                out2[i] = v;
        }
    }
}

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

/* n = 2 with AVX: the 2-rank all-reduce's whole sum. One cache line per
 * iteration, both sources loaded before either output is stored (in place is
 * element for element). Plain IEEE adds: the same bits as the scalar loop.
 * The cached outputs' lines are requested writable PREFETCHW_AHEAD bytes
 * ahead (prefetchw): the other core usually holds copies of them (it read
 * the result or the input last time), and a store to a shared line waits
 * for the invalidation unless it was asked for early (docs/parallel.md,
 * round 4: 256 KiB in place after a read of the result, 70 us against 6 us
 * for the sum). A prefetch past the end is harmless (never faults). */
#define PREFETCHW_AHEAD 1024

__attribute__((target("avx,prfchw")))
static size_t reduce_f32_pair_avx(float *out1, float *out2, const float *a,
                                  const float *b, size_t cnt, bool nt)
{
    size_t i = 0;

    /* nt: out1 with non-temporal stores (32-byte aligned: the caller did the
     * head); out2 is read by peers next, so it stays cached */
    for (; i + 16 <= cnt; i += 16) {
        if (!nt)
            _m_prefetchw((void *)((uintptr_t)(out1 + i) + PREFETCHW_AHEAD));
        if (out2 != NULL)
            _m_prefetchw((void *)((uintptr_t)(out2 + i) + PREFETCHW_AHEAD));
        __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));

        if (nt) {
            _mm256_stream_ps(out1 + i, v0);
            _mm256_stream_ps(out1 + i + 8, v1);
        } else {
            _mm256_storeu_ps(out1 + i, v0);
            _mm256_storeu_ps(out1 + i + 8, v1);
        }
        if (out2 != NULL) {
            _mm256_storeu_ps(out2 + i, v0);
            _mm256_storeu_ps(out2 + i + 8, v1);
        }
    }
    if (nt)
        _mm_sfence();
    return i;
}

static bool have_avx(void)
{
    static int cached = -1;     /* one process-wide CPU fact */

    if (cached < 0)
        cached = __builtin_cpu_supports("avx");
    return cached;
}
#endif

static void reduce_f32(void *out1, void *out2, uint8_t *const *srcs, int n, size_t cnt,
                       bool nt)
{
    float acc[TILE];

    /* The outputs may alias one source only element for element (in place):
     * every element is read before it is written, in both paths. */
#if defined(__x86_64__)
    if (n == 2 && have_avx()) {
        size_t head = 0, done;
        uint8_t *tail[2];

        /* non-temporal stores to out1 start at its first 32-byte boundary */
        if (nt && ((uintptr_t)out1 & 3) == 0) {
            head = ((32 - ((uintptr_t)out1 & 31)) & 31) / 4;
            head = head < cnt ? head : cnt;
            if (head > 0)
                reduce_f32_direct(out1, out2, srcs, 2, head);
        } else {
            nt = false;
        }
        tail[0] = srcs[0] + 4 * head;
        tail[1] = srcs[1] + 4 * head;
        done = head + reduce_f32_pair_avx((float *)out1 + head,
                                          out2 != NULL ? (float *)out2 + head : NULL,
                                          (const float *)tail[0], (const float *)tail[1],
                                          cnt - head, nt);
        if (done == cnt)
            return;
        tail[0] = srcs[0] + 4 * done;
        tail[1] = srcs[1] + 4 * done;
        reduce_f32_direct((float *)out1 + done, out2 != NULL ? (float *)out2 + done : NULL,
                          tail, 2, cnt - done);
        return;
    }
#endif
    if (n <= 4) {
        reduce_f32_direct(out1, out2, srcs, n, cnt);
        return;
    }

    for (size_t i0 = 0; i0 < cnt; i0 += TILE) {
        size_t m = cnt - i0 < TILE ? cnt - i0 : TILE;
        const float *a = (const float *)srcs[0] + i0;
        const float *b = (const float *)srcs[1] + i0;

        for (size_t i = 0; i < m; i++)
            acc[i] = a[i] + b[i];
        for (int j = 2; j < n; j++) {
            const float *x = (const float *)srcs[j] + i0;

            for (size_t i = 0; i < m; i++)
                acc[i] += x[i];
        }
        memcpy((float *)out1 + i0, acc, m * sizeof(float));
        if (out2 != NULL)
            memcpy((float *)out2 + i0, acc, m * sizeof(float));
    }
}

/* Same rounding as fp32_to_bf16 (common/dtype.h), written without branches
 * so that the loop vectorises. */
static inline uint16_t bf16_round(float f)
{
    uint32_t x, r, q;

    memcpy(&x, &f, sizeof(x));
    r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    q = (x >> 16) | 0x40u;                          /* quiet NaN */
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? q : r);
}

static inline float bf16_widen(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;

    memcpy(&f, &bits, sizeof(f));
    return f;
}

#if defined(__x86_64__)
/* f16 sums with the F16C conversions: IEEE round to nearest even like
 * fp16_to_fp32/fp32_to_fp16, so finite results are the same bits (NaN
 * payloads may differ). Every rank of a host takes the same path. */
__attribute__((target("avx,f16c")))
static size_t reduce_f16_f16c(void *out1, void *out2, uint8_t *const *srcs, int n, size_t cnt)
{
    size_t i = 0;

    for (; i + 8 <= cnt; i += 8) {
        __m256 acc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(srcs[0] + 2 * i)));
        __m128i h;

        for (int j = 1; j < n; j++)
            acc = _mm256_add_ps(acc, _mm256_cvtph_ps(
                                         _mm_loadu_si128((const __m128i *)(srcs[j] + 2 * i))));
        h = _mm256_cvtps_ph(acc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)((uint8_t *)out1 + 2 * i), h);
        if (out2 != NULL)
            _mm_storeu_si128((__m128i *)((uint8_t *)out2 + 2 * i), h);
    }
    return i;
}

static bool have_f16c(void)
{
    static int cached = -1;     /* one process-wide CPU fact */

    if (cached < 0) {
        /* cpuid leaf 1 ECX: avx (28), f16c (29), osxsave (27); and the OS
         * must save the YMM state (xgetbv bits 1-2). __builtin_cpu_supports
         * has no "f16c" in clang 14, so ask cpuid directly. */
        unsigned a, b, c, d;

        cached = 0;
        if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27)) &&
            (c & (1u << 28)) && (c & (1u << 29))) {
            unsigned lo, hi;

            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            cached = (lo & 6u) == 6u;
        }
    }
    return cached;
}
#endif

#if defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))   /* wider bf16 packing */
#endif
static void reduce_half(void *out1, void *out2, uint8_t *const *srcs, int n,
                        size_t cnt, bool bf16)
{
    float acc[TILE];
    uint16_t res[TILE];
    uint8_t *tail[SHM_MAX_RANKS];
    size_t done = 0;

#if defined(__x86_64__)
    if (!bf16 && have_f16c()) {
        done = reduce_f16_f16c(out1, out2, srcs, n, cnt);
        if (done == cnt)
            return;
    }
#endif
    if (done > 0) {
        for (int j = 0; j < n; j++)
            tail[j] = srcs[j] + 2 * done;
        srcs = tail;
        out1 = (uint16_t *)out1 + done;
        out2 = out2 != NULL ? (uint16_t *)out2 + done : NULL;
        cnt -= done;
    }
    for (size_t i0 = 0; i0 < cnt; i0 += TILE) {
        size_t m = cnt - i0 < TILE ? cnt - i0 : TILE;

        for (int j = 0; j < n; j++) {
            const uint16_t *x = (const uint16_t *)srcs[j] + i0;

            if (bf16) {
                if (j == 0)
                    for (size_t i = 0; i < m; i++)
                        acc[i] = bf16_widen(x[i]);
                else
                    for (size_t i = 0; i < m; i++)
                        acc[i] += bf16_widen(x[i]);
            } else {
                if (j == 0)
                    for (size_t i = 0; i < m; i++)
                        acc[i] = fp16_to_fp32(x[i]);
                else
                    for (size_t i = 0; i < m; i++)
                        acc[i] += fp16_to_fp32(x[i]);
            }
        }
        if (bf16)
            for (size_t i = 0; i < m; i++)
                res[i] = bf16_round(acc[i]);
        else
            for (size_t i = 0; i < m; i++)
                res[i] = fp32_to_fp16(acc[i]);
        memcpy((uint16_t *)out1 + i0, res, m * 2);
        if (out2 != NULL)
            memcpy((uint16_t *)out2 + i0, res, m * 2);
    }
}

static void reduce_i32(void *out1, void *out2, uint8_t *const *srcs, int n, size_t cnt)
{
    uint32_t acc[TILE];

    for (size_t i0 = 0; i0 < cnt; i0 += TILE) {
        size_t m = cnt - i0 < TILE ? cnt - i0 : TILE;

        memcpy(acc, (const uint32_t *)srcs[0] + i0, m * 4);
        for (int j = 1; j < n; j++) {
            const uint32_t *x = (const uint32_t *)srcs[j] + i0;

            for (size_t i = 0; i < m; i++)
                acc[i] += x[i];
        }
        memcpy((uint32_t *)out1 + i0, acc, m * 4);
        if (out2 != NULL)
            memcpy((uint32_t *)out2 + i0, acc, m * 4);
    }
}

static void reduce_u8(void *out1, void *out2, uint8_t *const *srcs, int n, size_t cnt)
{
    uint8_t acc[TILE];

    for (size_t i0 = 0; i0 < cnt; i0 += TILE) {
        size_t m = cnt - i0 < TILE ? cnt - i0 : TILE;

        memcpy(acc, srcs[0] + i0, m);
        for (int j = 1; j < n; j++)
            for (size_t i = 0; i < m; i++)
                acc[i] = (uint8_t)(acc[i] + srcs[j][i0 + i]);
        memcpy((uint8_t *)out1 + i0, acc, m);
        if (out2 != NULL)
            memcpy((uint8_t *)out2 + i0, acc, m);
    }
}

#if defined(__x86_64__)
__attribute__((target("avx")))
static void copy_nt_avx(uint8_t *d, const uint8_t *s, size_t n)
{
    size_t head = (32 - ((uintptr_t)d & 31)) & 31, i = 0;

    head = head < n ? head : n;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    for (; i + 128 <= n; i += 128) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(s + i + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(s + i + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(s + i + 96));

        _mm256_stream_si256((__m256i *)(d + i), v0);
        _mm256_stream_si256((__m256i *)(d + i + 32), v1);
        _mm256_stream_si256((__m256i *)(d + i + 64), v2);
        _mm256_stream_si256((__m256i *)(d + i + 96), v3);
    }
    _mm_sfence();
    memcpy(d + i, s + i, n - i);
}
#endif

#if defined(__x86_64__)
__attribute__((target("prfchw")))
static void prefetch_w_x86(const uint8_t *p, size_t bytes)
{
    for (size_t i = 0; i < bytes; i += 64)
        _m_prefetchw((void *)(p + i));
}
#endif

void group_prefetch_w(const void *p, size_t bytes)
{
#if defined(__x86_64__)
    prefetch_w_x86(p, bytes);
#else
    for (size_t i = 0; i < bytes; i += 64)
        __builtin_prefetch((const uint8_t *)p + i, 1, 3);
#endif
}

void group_copy(void *dst, const void *src, size_t bytes, bool nt)
{
#if defined(__x86_64__)
    if (nt && bytes >= 4096 && have_avx()) {
        copy_nt_avx(dst, src, bytes);
        return;
    }
#endif
    memcpy(dst, src, bytes);
}

void group_reduce(group_dtype_t dt, void *out1, void *out2, uint8_t *const *srcs,
                  int n, size_t cnt, bool nt)
{
    switch (dt) {
    case GROUP_F32:  reduce_f32(out1, out2, srcs, n, cnt, nt); break;
    case GROUP_F16:  reduce_half(out1, out2, srcs, n, cnt, false); break;
    case GROUP_BF16: reduce_half(out1, out2, srcs, n, cnt, true); break;
    case GROUP_I32:  reduce_i32(out1, out2, srcs, n, cnt); break;
    case GROUP_U8:   reduce_u8(out1, out2, srcs, n, cnt); break;
    default:         break;
    }
}
