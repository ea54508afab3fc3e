/* The portable C reference of every CPU kernel: plain scalar loops that the
 * SIMD paths are tested against. Also the fallback on CPUs without AVX2. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_int.h"

void cpu_ref_quantize_block(block_q8a_t *y, const float *x, float amax)
{
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;

    for (int j = 0; j < QK; j++) {
        int q = (int)nearbyintf(x[j] * id);   /* nearest even, as the SIMD paths */

        y->qs[j] = (int8_t)q;
        sum += q;
    }
    y->d = d;
    y->ds = d * (float)sum;
}

static void ref_quantize_q8a(block_q8a_t *y, const float *x, int64_t n)
{
    for (int64_t b = 0; b < n / QK; b++) {
        float amax = 0.0f;

        for (int j = 0; j < QK; j++)
            amax = fmaxf(amax, fabsf(x[b * QK + j]));
        cpu_ref_quantize_block(&y[b], x + b * QK, amax);
    }
}

static void ref_to_f16(uint16_t *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = fp32_to_fp16(x[i]);
}

static void ref_to_bf16(uint16_t *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = fp32_to_bf16(x[i]);
}

#define ROW(p, i, stride) ((const void *)((const char *)(p) + (size_t)(i) * (stride)))

/* Scalar dot of one weight row with one activation row, per type. */
static float ref_dot1_f32(int64_t n, const float *w, const float *x)
{
    float acc = 0.0f;

    for (int64_t i = 0; i < n; i++)
        acc += w[i] * x[i];
    return acc;
}

static float ref_dot1_f16(int64_t n, const uint16_t *w, const uint16_t *x)
{
    float acc = 0.0f;

    for (int64_t i = 0; i < n; i++)
        acc += fp16_to_fp32(w[i]) * fp16_to_fp32(x[i]);
    return acc;
}

static float ref_dot1_bf16(int64_t n, const uint16_t *w, const uint16_t *x)
{
    float acc = 0.0f;

    for (int64_t i = 0; i < n; i++)
        acc += bf16_to_fp32(w[i]) * bf16_to_fp32(x[i]);
    return acc;
}

static float ref_dot1_q8_0(int64_t n, const block_q8_0_t *w, const block_q8a_t *x)
{
    float acc = 0.0f;

    for (int64_t b = 0; b < n / QK; b++) {
        int isum = 0;

        for (int j = 0; j < QK; j++)
            isum += w[b].qs[j] * x[b].qs[j];
        acc += fp16_to_fp32(w[b].d) * x[b].d * (float)isum;
    }
    return acc;
}

static float ref_dot1_q4_0(int64_t n, const block_q4_0_t *w, const block_q8a_t *x)
{
    float acc = 0.0f;

    for (int64_t b = 0; b < n / QK; b++) {
        float dw = fp16_to_fp32(w[b].d);
        int isum = 0;

        for (int j = 0; j < QK / 2; j++)
            isum += (w[b].qs[j] & 0x0f) * x[b].qs[j] +
                    (w[b].qs[j] >> 4) * x[b].qs[j + QK / 2];
        /* (q - 8) d_w: the -8 folds into the precomputed block sum */
        acc += dw * x[b].d * (float)isum - 8.0f * dw * x[b].ds;
    }
    return acc;
}

static float ref_dot1_q4_1(int64_t n, const block_q4_1_t *w, const block_q8a_t *x)
{
    float acc = 0.0f;

    for (int64_t b = 0; b < n / QK; b++) {
        int isum = 0;

        for (int j = 0; j < QK / 2; j++)
            isum += (w[b].qs[j] & 0x0f) * x[b].qs[j] +
                    (w[b].qs[j] >> 4) * x[b].qs[j + QK / 2];
        acc += fp16_to_fp32(w[b].d) * x[b].d * (float)isum +
               fp16_to_fp32(w[b].m) * x[b].ds;
    }
    return acc;
}

#define REF_DOT_TILE(type)                                                      \
    static void ref_dot_##type(int64_t n, const void *w, size_t ws, int nr,    \
                               const void *x, size_t xs, int nx, float *out,   \
                               size_t os)                                       \
    {                                                                           \
        for (int r = 0; r < nr; r++)                                            \
            for (int t = 0; t < nx; t++)                                        \
                out[(size_t)t * os + (size_t)r] =                               \
                    ref_dot1_##type(n, ROW(w, r, ws), ROW(x, t, xs));           \
    }

REF_DOT_TILE(f32)
REF_DOT_TILE(f16)
REF_DOT_TILE(bf16)
REF_DOT_TILE(q8_0)
REF_DOT_TILE(q4_0)
REF_DOT_TILE(q4_1)

static float ref_sumsq(const float *x, int64_t n)
{
    float acc = 0.0f;

    for (int64_t i = 0; i < n; i++)
        acc += x[i] * x[i];
    return acc;
}

static void ref_scale_mul(float *out, const float *x, float s, const float *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * s * w[i];
}

static void ref_silu_mul(float *out, const float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void ref_add(float *out, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* One K or V row to f32. */
static void ref_kv_row(float *dst, const uint8_t *src, dtype_t t, int32_t hd)
{
    if (t == DTYPE_F32) {
        memcpy(dst, src, (size_t)hd * sizeof(float));
    } else {
        const uint16_t *h = (const uint16_t *)(const void *)src;

        for (int32_t i = 0; i < hd; i++)
            dst[i] = fp16_to_fp32(h[i]);
    }
}

static void ref_attn(const cpu_attn_args_t *a)
{
    int32_t hd = a->layout->head_dim;
    float *row = a->row;

    for (int32_t p = 0; p < a->max_len; p++) {
        ref_kv_row(row, cpu_attn_kv_row(a, 0, p), a->layout->dtype, hd);
        for (int i = 0; i < a->n_q; i++) {
            const float *q = a->q[i];
            float s = 0.0f;

            if (p >= a->len[i])
                continue;
            for (int32_t j = 0; j < hd; j++)
                s += q[j] * row[j];
            a->scores[(size_t)i * a->max_len + p] = s * a->scale;
        }
    }
    for (int i = 0; i < a->n_q; i++) {
        float *s = a->scores + (size_t)i * a->max_len;
        float mx = -INFINITY, sum = 0.0f;

        for (int32_t p = 0; p < a->len[i]; p++)
            mx = fmaxf(mx, s[p]);
        for (int32_t p = 0; p < a->len[i]; p++) {
            s[p] = expf(s[p] - mx);
            sum += s[p];
        }
        for (int32_t p = 0; p < a->len[i]; p++)
            s[p] /= sum;
        memset(a->out[i], 0, (size_t)hd * sizeof(float));
    }
    for (int32_t p = 0; p < a->max_len; p++) {
        ref_kv_row(row, cpu_attn_kv_row(a, 1, p), a->layout->dtype, hd);
        for (int i = 0; i < a->n_q; i++) {
            float *o = a->out[i];
            float w = a->scores[(size_t)i * a->max_len + p];

            if (p >= a->len[i])
                continue;
            for (int32_t j = 0; j < hd; j++)
                o[j] += w * row[j];
        }
    }
}

static uint64_t ref_read_sum(const void *p, size_t bytes)
{
    const uint64_t *w = p;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;

    for (size_t i = 0; i < bytes / 8; i += 4) {
        a0 ^= w[i];
        a1 ^= w[i + 1];
        a2 ^= w[i + 2];
        a3 ^= w[i + 3];
    }
    return a0 ^ a1 ^ a2 ^ a3;
}

const cpu_kern_t cpu_kern_ref = {
    .name = "ref",
    .quantize_q8a = ref_quantize_q8a,
    .to_f16 = ref_to_f16,
    .to_bf16 = ref_to_bf16,
    .dot_f32 = ref_dot_f32,
    .dot_f16 = ref_dot_f16,
    .dot_bf16 = ref_dot_bf16,
    .dot_q8_0 = ref_dot_q8_0,
    .dot_q4_0 = ref_dot_q4_0,
    .dot_q4_1 = ref_dot_q4_1,
    .sumsq = ref_sumsq,
    .scale_mul = ref_scale_mul,
    .silu_mul = ref_silu_mul,
    .add = ref_add,
    .attn = ref_attn,
    .read_sum = ref_read_sum,
};
