/* Every op of every compiled CPU path (AVX2, AVX-512, AVX-512 VNNI, as far
 * as this CPU runs them) against the portable reference on random inputs,
 * with odd sizes and sizes that are not multiples of the SIMD width; the
 * reference itself against double-precision math on dequantized inputs;
 * and the argument checks.
 *
 * Tolerances (why they are what they are):
 * - SIMD vs reference matmul: both paths quantize/round the activations bit
 *   for bit identically (same scale arithmetic, round to nearest even) and
 *   form the same exact products (int8 x int8 / int4 x int8 integer sums,
 *   f16 x f16 and bf16 x bf16 products are exact in f32), so they differ
 *   only in the order of float additions. Recursive summation of m terms
 *   errs by at most (m - 1) * 2^-24 * sum|terms| per path, so we allow
 *   2 * (n + 16) * 2^-24 * sum_i |w_i x_i|.
 * - Reference matmul vs double-precision dequantized math: adds the
 *   activation rounding: Q8 blocks err by at most d_x / 2 = amax / 254 per
 *   element, so sum_blocks amax_b / 254 * sum_i |w_i|; f16 activations by
 *   2^-11 |x|, bf16 by 2^-8 |x|.
 * - exp-based ops (silu, attention softmax) use a polynomial exp of about
 *   2 ulp on the SIMD paths: 1e-5 relative to the output scale.
 * - Ops whose SIMD and reference arithmetic is the same (embed, add, rope,
 *   kv_write) must match exactly. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "tests/tap.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* uniform in [-a, a) */
static float frand(float a)
{
    return ((float)(rnd() & 0xffffff) / 8388608.0f - 1.0f) * a;
}

static void fill(float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand(a);
}

/* Random weights of any type: d rows of n elements. */
static void *make_weight(dtype_t t, int64_t n, int64_t d)
{
    size_t rb = dtype_row_bytes(t, n);
    uint8_t *p = malloc(rb * (size_t)d);

    for (int64_t r = 0; r < d; r++) {
        uint8_t *row = p + rb * (size_t)r;

        for (int64_t i = 0; i < n / dtype_block_elems(t); i++) {
            switch (t) {
            case DTYPE_F32: ((float *)(void *)row)[i] = frand(1.0f); break;
            case DTYPE_F16: ((uint16_t *)(void *)row)[i] = fp32_to_fp16(frand(1.0f)); break;
            case DTYPE_BF16: ((uint16_t *)(void *)row)[i] = fp32_to_bf16(frand(1.0f)); break;
            case DTYPE_Q8_0: {
                block_q8_0_t *b = (block_q8_0_t *)(void *)row + i;

                b->d = fp32_to_fp16(0.001f + fabsf(frand(0.02f)));
                for (int j = 0; j < QK; j++)
                    b->qs[j] = (int8_t)(rnd() & 0xff);   /* includes -128 */
                break;
            }
            case DTYPE_Q4_0: {
                block_q4_0_t *b = (block_q4_0_t *)(void *)row + i;

                b->d = fp32_to_fp16(0.001f + fabsf(frand(0.1f)));
                for (int j = 0; j < QK / 2; j++)
                    b->qs[j] = (uint8_t)rnd();
                break;
            }
            case DTYPE_Q4_1: {
                block_q4_1_t *b = (block_q4_1_t *)(void *)row + i;

                b->d = fp32_to_fp16(0.001f + fabsf(frand(0.1f)));
                b->m = fp32_to_fp16(-fabsf(frand(0.8f)));
                for (int j = 0; j < QK / 2; j++)
                    b->qs[j] = (uint8_t)rnd();
                break;
            }
            }
        }
    }
    return p;
}

/* Element i of row r, dequantized. */
static double w_at(const void *w, dtype_t t, int64_t n, int64_t r, int64_t i)
{
    const uint8_t *row = (const uint8_t *)w + dtype_row_bytes(t, n) * (size_t)r;

    switch (t) {
    case DTYPE_F32: return ((const float *)(const void *)row)[i];
    case DTYPE_F16: return fp16_to_fp32(((const uint16_t *)(const void *)row)[i]);
    case DTYPE_BF16: return bf16_to_fp32(((const uint16_t *)(const void *)row)[i]);
    case DTYPE_Q8_0: {
        const block_q8_0_t *b = (const block_q8_0_t *)(const void *)row + i / QK;

        return b->qs[i % QK] * (double)fp16_to_fp32(b->d);
    }
    case DTYPE_Q4_0: {
        const block_q4_0_t *b = (const block_q4_0_t *)(const void *)row + i / QK;
        int j = (int)(i % QK);
        int q = j < 16 ? (b->qs[j] & 15) : (b->qs[j - 16] >> 4);

        return (q - 8) * (double)fp16_to_fp32(b->d);
    }
    case DTYPE_Q4_1: {
        const block_q4_1_t *b = (const block_q4_1_t *)(const void *)row + i / QK;
        int j = (int)(i % QK);
        int q = j < 16 ? (b->qs[j] & 15) : (b->qs[j - 16] >> 4);

        return q * (double)fp16_to_fp32(b->d) + fp16_to_fp32(b->m);
    }
    }
    return 0.0;
}

typedef struct {
    cpu_isa_t isa;
    ops_t    *ops;
} path_t;

static ops_t *ref_ops;
static path_t paths[8];
static int n_paths;

static const dtype_t all_types[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16,
                                    DTYPE_Q8_0, DTYPE_Q4_0, DTYPE_Q4_1};

/* --- matmul ------------------------------------------------------------------- */

static void test_matmul_shape(dtype_t t, int64_t n, int64_t d, int32_t n_tok, bool precise)
{
    ops_weight_t w = {.type = t, .n = n, .d = d, .precise = precise};
    float *x = malloc(sizeof(float) * (size_t)(n * n_tok));
    float *ref = malloc(sizeof(float) * (size_t)(d * n_tok));
    float *got = malloc(sizeof(float) * (size_t)(d * n_tok));
    double worst_ref = 0.0;
    int bad_ref = 0;

    w.data = make_weight(t, n, d);
    fill(x, (size_t)(n * n_tok), 2.0f);
    /* a few large activations, as real hidden states have */
    x[rnd() % (uint32_t)(n * n_tok)] = 30.0f;
    is_int(ops_matmul(ref_ops, ref, x, &w, n_tok), DUET_OK, "ref matmul %s%s n=%lld d=%lld tok=%d",
           dtype_name(t), precise ? " precise" : "", (long long)n, (long long)d, n_tok);

    /* reference vs exact math on dequantized weights */
    for (int32_t tk = 0; tk < n_tok; tk++) {
        for (int64_t r = 0; r < d; r++) {
            double exact = 0.0, mag = 0.0, qerr = 0.0;
            const float *xr = x + (size_t)tk * (size_t)n;

            for (int64_t i = 0; i < n; i++) {
                double wi = w_at(w.data, t, n, r, i);

                exact += wi * xr[i];
                mag += fabs(wi * xr[i]);
            }
            if (t == DTYPE_F16) {
                qerr = mag * 0x1p-11;
            } else if (t == DTYPE_BF16) {
                qerr = mag * 0x1p-8;
            } else if (t != DTYPE_F32) {
                for (int64_t b = 0; b < n / QK; b++) {
                    double amax = 0.0, sw = 0.0;

                    for (int j = 0; j < QK; j++) {
                        amax = fmax(amax, fabs(xr[b * QK + j]));
                        sw += fabs(w_at(w.data, t, n, r, b * QK + j));
                    }
                    /* precise: the residual (|r| <= amax / 254) is itself
                     * quantized with a step of at most its amax / 127 */
                    qerr += (precise ? amax / 254.0 / 254.0 : amax / 254.0) * sw * 1.0001;
                }
            }
            {
                double err = fabs(ref[(size_t)tk * (size_t)d + (size_t)r] - exact);
                double tol = qerr + 2.0 * (double)(n + 16) * 0x1p-24 * (mag + qerr) + 1e-30;

                if (err > tol)
                    bad_ref++;
                if (err / tol > worst_ref)
                    worst_ref = err / tol;
            }
        }
    }
    ok(bad_ref == 0, "ref matmul %s%s within the quantization bound of exact (worst %.2f of bound)",
       dtype_name(t), precise ? " precise" : "", worst_ref);

    for (int p = 0; p < n_paths; p++) {
        int bad = 0;
        double worst = 0.0;

        memset(got, 0xff, sizeof(float) * (size_t)(d * n_tok));
        is_int(ops_matmul(paths[p].ops, got, x, &w, n_tok), DUET_OK, "%s matmul",
               paths[p].ops->name);
        for (int32_t tk = 0; tk < n_tok; tk++) {
            for (int64_t r = 0; r < d; r++) {
                double mag = 0.0, tol, err;
                const float *xr = x + (size_t)tk * (size_t)n;

                for (int64_t i = 0; i < n; i++)
                    mag += fabs(w_at(w.data, t, n, r, i) * xr[i]);
                mag *= 1.01;   /* rounded activations may be slightly larger */
                tol = 2.0 * (double)(n + 16) * 0x1p-24 * mag + 1e-30;
                err = fabs((double)got[(size_t)tk * (size_t)d + (size_t)r] -
                           ref[(size_t)tk * (size_t)d + (size_t)r]);
                if (!(err <= tol))
                    bad++;
                if (err / tol > worst)
                    worst = err / tol;
            }
        }
        ok(bad == 0, "%s matmul %s%s n=%lld d=%lld tok=%d matches ref (worst %.3f of tol)",
           paths[p].ops->name, dtype_name(t), precise ? " precise" : "", (long long)n,
           (long long)d, n_tok, worst);

        /* prepared (repacked once) weights: the same bits as unprepared */
        {
            ops_weight_t pw = w;
            float *again = malloc(sizeof(float) * (size_t)(d * n_tok));

            is_int(ops_prepare(paths[p].ops, &pw), DUET_OK, "%s prepare", paths[p].ops->name);
            memset(again, 0xff, sizeof(float) * (size_t)(d * n_tok));
            is_int(ops_matmul(paths[p].ops, again, x, &pw, n_tok), DUET_OK,
                   "%s matmul prepared", paths[p].ops->name);
            ok(memcmp(again, got, sizeof(float) * (size_t)(d * n_tok)) == 0,
               "%s matmul %s%s n=%lld d=%lld tok=%d: prepared (%s) gives the same bits",
               paths[p].ops->name, dtype_name(t), precise ? " precise" : "", (long long)n,
               (long long)d, n_tok, pw.prepared != NULL ? "repacked" : "as is");
            ops_release(paths[p].ops, &pw);
            ok(pw.prepared == NULL, "%s release", paths[p].ops->name);
            free(again);
        }
    }
    free((void *)w.data);
    free(x);
    free(ref);
    free(got);
}

static void test_matmul(void)
{
    static const struct { int64_t n, d; int32_t tok; } q_shapes[] = {
        {32, 1, 1}, {64, 7, 3}, {96, 33, 5}, {576, 67, 9}, {1536, 19, 4}, {160, 130, 2},
    };
    static const struct { int64_t n, d; int32_t tok; } f_shapes[] = {
        {1, 3, 1}, {7, 5, 2}, {37, 9, 5}, {33, 17, 3}, {576, 40, 6}, {100, 129, 1},
    };

    for (size_t ti = 0; ti < sizeof(all_types) / sizeof(all_types[0]); ti++) {
        dtype_t t = all_types[ti];
        bool q = dtype_block_elems(t) > 1;

        for (size_t s = 0; s < 6; s++) {
            if (q) {
                test_matmul_shape(t, q_shapes[s].n, q_shapes[s].d, q_shapes[s].tok, false);
                test_matmul_shape(t, q_shapes[s].n, q_shapes[s].d, q_shapes[s].tok, true);
            } else {
                /* precise is ignored for float types */
                test_matmul_shape(t, f_shapes[s].n, f_shapes[s].d, f_shapes[s].tok, s == 3);
            }
        }
    }
}

/* --- embed, rmsnorm, rope, silu, add -------------------------------------------- */

/* matmul_n: several matrices on one input give the same bits as one matmul
 * each, prepared or not; mixed shapes fall back; bad arguments refused. */
static void test_matmul_n(void)
{
    static const struct { dtype_t t; int64_t n, d[3]; int32_t tok; bool precise; } cases[] = {
        {DTYPE_Q4_1, 576, {576, 192, 192}, 1, true},
        {DTYPE_Q4_1, 96, {1536, 40, 17}, 9, false},
        {DTYPE_Q8_0, 64, {33, 16, 80}, 3, true},
        {DTYPE_Q4_0, 160, {48, 7, 130}, 2, false},
        {DTYPE_F16, 37, {9, 18, 5}, 4, false},
        /* more row chunks than one parallel region takes (MM_MAX_TASKS) */
        {DTYPE_F32, 4, {20000, 17000, 3}, 2, false},
    };

    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        int64_t n = cases[ci].n;
        int32_t T = cases[ci].tok;
        float *x = malloc(sizeof(float) * (size_t)(n * T));
        ops_weight_t w[3];
        const ops_weight_t *ws[3] = {&w[0], &w[1], &w[2]};
        float *one[3], *many[3];

        fill(x, (size_t)(n * T), 2.0f);
        for (int i = 0; i < 3; i++) {
            w[i] = (ops_weight_t){.type = cases[ci].t, .n = n, .d = cases[ci].d[i],
                                  .precise = cases[ci].precise};
            w[i].data = make_weight(cases[ci].t, n, w[i].d);
            one[i] = malloc(sizeof(float) * (size_t)(w[i].d * T));
            many[i] = malloc(sizeof(float) * (size_t)(w[i].d * T));
        }
        for (int p = 0; p < n_paths; p++) {
            for (int prep = 0; prep < 2; prep++) {
                bool same = true;

                for (int i = 0; i < 3 && prep; i++)
                    ops_prepare(paths[p].ops, &w[i]);
                for (int i = 0; i < 3; i++) {
                    ops_matmul(paths[p].ops, one[i], x, &w[i], T);
                    memset(many[i], 0xff, sizeof(float) * (size_t)(w[i].d * T));
                }
                is_int(ops_matmul_n(paths[p].ops, many, x, ws, 3, T), DUET_OK, "%s matmul_n",
                       paths[p].ops->name);
                for (int i = 0; i < 3; i++)
                    same = same && memcmp(one[i], many[i],
                                          sizeof(float) * (size_t)(w[i].d * T)) == 0;
                ok(same, "%s matmul_n %s n=%lld d=%lld,%lld,%lld tok=%d%s%s: same bits as "
                   "three matmuls", paths[p].ops->name, dtype_name(cases[ci].t), (long long)n,
                   (long long)w[0].d, (long long)w[1].d, (long long)w[2].d, T,
                   cases[ci].precise ? " precise" : "", prep ? " prepared" : "");
                for (int i = 0; i < 3; i++)
                    ops_release(paths[p].ops, &w[i]);
            }
        }
        for (int i = 0; i < 3; i++) {
            free((void *)w[i].data);
            free(one[i]);
            free(many[i]);
        }
        free(x);
    }

    /* mixed types: the same bits through the fallback; bad arguments */
    {
        ops_weight_t a = {.type = DTYPE_Q8_0, .n = 64, .d = 20};
        ops_weight_t b = {.type = DTYPE_F32, .n = 64, .d = 3};
        const ops_weight_t *ws[2] = {&a, &b};
        float x[64 * 2], oa[40], ob[6], ma[40], mb[6];
        float *outs[2] = {ma, mb};

        a.data = make_weight(a.type, a.n, a.d);
        b.data = make_weight(b.type, b.n, b.d);
        fill(x, 128, 1.0f);
        for (int p = 0; p < n_paths; p++) {
            ops_matmul(paths[p].ops, oa, x, &a, 2);
            ops_matmul(paths[p].ops, ob, x, &b, 2);
            is_int(ops_matmul_n(paths[p].ops, outs, x, ws, 2, 2), DUET_OK,
                   "%s matmul_n mixed types", paths[p].ops->name);
            ok(memcmp(oa, ma, sizeof(oa)) == 0 && memcmp(ob, mb, sizeof(ob)) == 0,
               "%s matmul_n mixed types: same bits", paths[p].ops->name);
        }
        is_int(ops_matmul_n(ref_ops, outs, x, ws, 0, 2), DUET_ERR_INVALID, "matmul_n of none");
        is_int(ops_matmul_n(ref_ops, outs, NULL, ws, 2, 2), DUET_ERR_INVALID, "matmul_n NULL x");
        outs[1] = NULL;
        is_int(ops_matmul_n(ref_ops, outs, x, ws, 2, 2), DUET_ERR_INVALID,
               "matmul_n NULL output");
        outs[1] = mb;
        {
            const void *bd = b.data;

            b.data = NULL;
            is_int(ops_matmul_n(ref_ops, outs, x, ws, 2, 2), DUET_ERR_INVALID,
                   "matmul_n NULL weights");
            free((void *)bd);
        }
        free((void *)a.data);
    }
}

static void test_embed(void)
{
    for (size_t ti = 0; ti < sizeof(all_types) / sizeof(all_types[0]); ti++) {
        dtype_t t = all_types[ti];
        int64_t n = dtype_block_elems(t) > 1 ? 96 : 37, d = 11;
        ops_weight_t w = {.data = make_weight(t, n, d), .type = t, .n = n, .d = d};
        int32_t ids[4] = {3, 0, 10, 3};
        float out[4 * 96];
        int bad = 0;

        is_int(ops_embed(ref_ops, out, &w, ids, 4), DUET_OK, "ref embed %s", dtype_name(t));
        for (int k = 0; k < 4; k++)
            for (int64_t i = 0; i < n; i++)
                if (out[k * n + i] != (float)w_at(w.data, t, n, ids[k], i))
                    bad++;
        ok(bad == 0, "ref embed %s equals the dequantized rows", dtype_name(t));
        for (int p = 0; p < n_paths; p++) {
            float got[4 * 96];

            is_int(ops_embed(paths[p].ops, got, &w, ids, 4), DUET_OK, "%s embed",
                   paths[p].ops->name);
            ok(memcmp(got, out, sizeof(float) * (size_t)(4 * n)) == 0, "%s embed %s exact",
               paths[p].ops->name, dtype_name(t));
        }
        ids[1] = (int32_t)d;
        is_int(ops_embed(ref_ops, out, &w, ids, 4), DUET_ERR_INVALID, "embed id out of range");
        ids[1] = -1;
        is_int(ops_embed(ref_ops, out, &w, ids, 4), DUET_ERR_INVALID, "embed negative id");
        free((void *)w.data);
    }
}

static void test_rmsnorm(void)
{
    static const int32_t ns[] = {1, 7, 33, 576, 1000};

    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        int32_t n = ns[k], n_tok = 5;
        float *x = malloc(sizeof(float) * (size_t)(n * n_tok)), *w = malloc(sizeof(float) * (size_t)n);
        float *ref = malloc(sizeof(float) * (size_t)(n * n_tok)), *got = malloc(sizeof(float) * (size_t)(n * n_tok));
        int bad = 0;

        fill(x, (size_t)(n * n_tok), 3.0f);
        fill(w, (size_t)n, 1.0f);
        is_int(ops_rmsnorm(ref_ops, ref, x, w, n_tok, n, 1e-5f), DUET_OK, "ref rmsnorm n=%d", n);
        for (int32_t t = 0; t < n_tok; t++) {
            double ss = 0.0;

            for (int32_t i = 0; i < n; i++)
                ss += (double)x[t * n + i] * x[t * n + i];
            for (int32_t i = 0; i < n; i++) {
                double e = x[t * n + i] / sqrt(ss / n + 1e-5) * w[i];

                if (fabs(ref[t * n + i] - e) > 1e-5 * (fabs(e) + 1e-3) + n * 1e-7 * fabs(e))
                    bad++;
            }
        }
        ok(bad == 0, "ref rmsnorm n=%d matches double precision", n);
        for (int p = 0; p < n_paths; p++) {
            bad = 0;
            is_int(ops_rmsnorm(paths[p].ops, got, x, w, n_tok, n, 1e-5f), DUET_OK, "%s rmsnorm",
                   paths[p].ops->name);
            /* sums of squares in another order: relative 2 n 2^-24 */
            for (int32_t i = 0; i < n * n_tok; i++)
                if (fabsf(got[i] - ref[i]) > (2.0f * (float)n * 0x1p-24f + 1e-6f) * fabsf(ref[i]) + 1e-30f)
                    bad++;
            ok(bad == 0, "%s rmsnorm n=%d matches ref", paths[p].ops->name, n);
        }
        /* in place */
        memcpy(got, x, sizeof(float) * (size_t)(n * n_tok));
        ops_rmsnorm(ref_ops, got, got, w, n_tok, n, 1e-5f);
        ok(memcmp(got, ref, sizeof(float) * (size_t)(n * n_tok)) == 0, "rmsnorm in place n=%d", n);
        free(x);
        free(w);
        free(ref);
        free(got);
    }
    {
        float x[4] = {0}, w[4] = {0};

        is_int(ops_rmsnorm(ref_ops, x, x, w, 1, 0, 1e-5f), DUET_ERR_INVALID, "rmsnorm n=0");
        is_int(ops_rmsnorm(ref_ops, x, x, w, 1, 4, -1.0f), DUET_ERR_INVALID, "rmsnorm eps<0");
    }
}

static void test_rope(void)
{
    static const struct { int32_t heads, hd, rot; float base, scale; } cases[] = {
        {9, 64, 64, 100000.0f, 1.0f}, {3, 20, 12, 10000.0f, 1.0f}, {2, 6, 6, 10000.0f, 4.0f},
    };

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        int32_t n_tok = 7, nh = cases[k].heads, hd = cases[k].hd;
        ops_rope_t rp = {.base = cases[k].base, .scale = cases[k].scale, .rot_dim = cases[k].rot};
        size_t nel = (size_t)(n_tok * nh * hd);
        float *x = malloc(sizeof(float) * nel), *ref = malloc(sizeof(float) * nel);
        float *got = malloc(sizeof(float) * nel);
        int32_t pos[7] = {0, 1, 2, 17, 100, 511, 4000};
        int bad = 0;

        fill(x, nel, 1.0f);
        memcpy(ref, x, sizeof(float) * nel);
        is_int(ops_rope(ref_ops, ref, pos, n_tok, nh, hd, &rp), DUET_OK, "ref rope case %zu", k);
        for (int32_t t = 0; t < n_tok; t++) {
            for (int32_t h = 0; h < nh; h++) {
                const float *v = x + ((size_t)t * nh + h) * hd;
                const float *r = ref + ((size_t)t * nh + h) * hd;

                for (int32_t i = 0; i < hd / 2; i++) {
                    double e0 = v[2 * i], e1 = v[2 * i + 1];

                    if (2 * i < rp.rot_dim) {
                        double th = pos[t] / (double)rp.scale * pow(rp.base, -2.0 * i / rp.rot_dim);

                        e0 = v[2 * i] * cos(th) - v[2 * i + 1] * sin(th);
                        e1 = v[2 * i] * sin(th) + v[2 * i + 1] * cos(th);
                    }
                    /* float angles of up to ~4000 rad carry ~4000 * 2^-24 error */
                    if (fabs(r[2 * i] - e0) > 1e-3 || fabs(r[2 * i + 1] - e1) > 1e-3)
                        bad++;
                }
            }
        }
        ok(bad == 0, "ref rope case %zu: adjacent pairs turn by pos/scale * base^(-2i/rot)", k);
        for (int p = 0; p < n_paths; p++) {
            memcpy(got, x, sizeof(float) * nel);
            is_int(ops_rope(paths[p].ops, got, pos, n_tok, nh, hd, &rp), DUET_OK, "%s rope",
                   paths[p].ops->name);
            ok(memcmp(got, ref, sizeof(float) * nel) == 0, "%s rope case %zu exact",
               paths[p].ops->name, k);
        }
        rp.rot_dim = 3;
        is_int(ops_rope(ref_ops, got, pos, n_tok, nh, hd, &rp), DUET_ERR_INVALID, "rope odd rot_dim");
        rp.rot_dim = hd + 2;
        is_int(ops_rope(ref_ops, got, pos, n_tok, nh, hd, &rp), DUET_ERR_INVALID, "rope rot_dim > head_dim");
        free(x);
        free(ref);
        free(got);
    }
}

static void test_silu_add(void)
{
    static const int64_t ns[] = {1, 15, 17, 1000, 70001};

    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        int64_t n = ns[k];
        float *g = malloc(sizeof(float) * (size_t)n), *u = malloc(sizeof(float) * (size_t)n);
        float *ref = malloc(sizeof(float) * (size_t)n), *got = malloc(sizeof(float) * (size_t)n);

        fill(g, (size_t)n, 12.0f);
        fill(u, (size_t)n, 3.0f);
        if (n > 3) {
            g[0] = -100.0f;      /* exp overflow side */
            g[1] = 100.0f;
            g[2] = 0.0f;
        }
        ops_silu_mul(ref_ops, ref, g, u, n);
        for (int p = 0; p < n_paths; p++) {
            int bad = 0;

            is_int(ops_silu_mul(paths[p].ops, got, g, u, n), DUET_OK, "%s silu_mul", paths[p].ops->name);
            for (int64_t i = 0; i < n; i++)
                if (fabsf(got[i] - ref[i]) > 1e-5f * fabsf(ref[i]) + 1e-30f)
                    bad++;
            ok(bad == 0, "%s silu_mul n=%lld within 1e-5 relative", paths[p].ops->name, (long long)n);
            is_int(ops_add(paths[p].ops, got, g, u, n), DUET_OK, "%s add", paths[p].ops->name);
            bad = 0;
            for (int64_t i = 0; i < n; i++)
                if (got[i] != g[i] + u[i])
                    bad++;
            ok(bad == 0, "%s add n=%lld exact", paths[p].ops->name, (long long)n);
        }
        {
            int bad = 0;

            for (int64_t i = 0; i < n; i++) {
                double e = g[i] / (1.0 + exp(-(double)g[i])) * u[i];

                if (fabs(ref[i] - e) > 1e-6 * fabs(e) + 1e-30)
                    bad++;
            }
            ok(bad == 0, "ref silu_mul n=%lld matches double precision", (long long)n);
        }
        free(g);
        free(u);
        free(ref);
        free(got);
    }
}

/* --- KV write and attention ------------------------------------------------------- */

typedef struct {
    int32_t n_new, n_past;
} seq_spec_t;

#define BAIL_OUT(...) do { printf("Bail out! "); printf(__VA_ARGS__); printf("\n"); exit(1); } while (0)

/* Naive attention in double over f32 K/V arrays kept by the test:
 * kall/vall (seq, pos, kv_head, hd). */
static void attn_exact(double *out, const float *q, const float *kall, const float *vall,
                       int32_t cap, int32_t n_kv, int32_t hd, int32_t n_heads,
                       const seq_spec_t *ss, int n_seqs, float scale)
{
    int64_t row = 0;
    int32_t group = n_heads / n_kv;

    for (int s = 0; s < n_seqs; s++) {
        for (int32_t j = 0; j < ss[s].n_new; j++, row++) {
            int32_t len = ss[s].n_past + j + 1;

            for (int32_t h = 0; h < n_heads; h++) {
                const float *qv = q + ((size_t)row * n_heads + h) * hd;
                int32_t g = h / group;
                double mx = -INFINITY, sum = 0.0, *sc = malloc(sizeof(double) * (size_t)len);
                double *o = out + ((size_t)row * n_heads + h) * hd;

                for (int32_t p = 0; p < len; p++) {
                    const float *kv = kall + (((size_t)s * cap + p) * n_kv + g) * hd;
                    double d = 0.0;

                    for (int32_t i = 0; i < hd; i++)
                        d += (double)qv[i] * kv[i];
                    sc[p] = d * scale;
                    mx = fmax(mx, sc[p]);
                }
                for (int32_t p = 0; p < len; p++) {
                    sc[p] = exp(sc[p] - mx);
                    sum += sc[p];
                }
                for (int32_t i = 0; i < hd; i++)
                    o[i] = 0.0;
                for (int32_t p = 0; p < len; p++) {
                    const float *vv = vall + (((size_t)s * cap + p) * n_kv + g) * hd;

                    for (int32_t i = 0; i < hd; i++)
                        o[i] += sc[p] / sum * vv[i];
                }
                free(sc);
            }
        }
    }
}

/* Fill the caches of every path with each sequence's prefix (n_past tokens,
 * written in one kv_write), then write the new tokens and attend. */
static void test_attn_case(const char *what, dtype_t kvt, int32_t n_kv, int32_t n_heads,
                           int32_t hd, int32_t bs, const seq_spec_t *ss, int n_seqs)
{
    kv_layout_t l = {.n_layers = 2, .n_blocks = 128, .n_kv_heads = n_kv, .block_size = bs,
                     .head_dim = hd, .dtype = kvt};
    int32_t cap = 0, blocks_per_seq;
    int64_t rows = 0;
    ops_seq_t seqs[8], pre[8];
    int32_t tables[8][32];
    int32_t perm[128];
    float *kall, *vall, *q, *knew, *vnew, *kpre, *vpre, *ref, *got;
    double *exact;
    uint8_t *slab_ref, *slab;
    ops_kv_t kv_ref = {.layout = &l, .layer = 1}, kvp = {.layout = &l, .layer = 1};
    size_t row_f = (size_t)n_kv * hd;
    int bad = 0;
    double tol_exact = kvt == DTYPE_F32 ? 1e-5 : 4e-3;   /* f16 K/V: 2^-11 relative each */

    for (int s = 0; s < n_seqs; s++) {
        cap = cap > ss[s].n_past + ss[s].n_new ? cap : ss[s].n_past + ss[s].n_new;
        rows += ss[s].n_new;
    }
    blocks_per_seq = (cap + bs - 1) / bs;
    if (blocks_per_seq * n_seqs > 128 || blocks_per_seq > 32)
        BAIL_OUT("attention case %s needs more blocks than the test slab", what);
    for (int i = 0; i < 128; i++)
        perm[i] = i;
    for (int i = 127; i > 0; i--) {   /* scattered blocks */
        int j = (int)(rnd() % (uint32_t)(i + 1)), t = perm[i];

        perm[i] = perm[j];
        perm[j] = t;
    }
    kall = calloc((size_t)n_seqs * cap * row_f, sizeof(float));
    vall = calloc((size_t)n_seqs * cap * row_f, sizeof(float));
    fill(kall, (size_t)n_seqs * cap * row_f, 1.0f);
    fill(vall, (size_t)n_seqs * cap * row_f, 1.0f);
    if (kvt == DTYPE_F16) {   /* keep the exact reference on the stored values */
        for (size_t i = 0; i < (size_t)n_seqs * cap * row_f; i++) {
            kall[i] = fp16_to_fp32(fp32_to_fp16(kall[i]));
            vall[i] = fp16_to_fp32(fp32_to_fp16(vall[i]));
        }
    }
    q = malloc(sizeof(float) * (size_t)rows * n_heads * hd);
    fill(q, (size_t)rows * n_heads * hd, 3.0f);
    knew = malloc(sizeof(float) * (size_t)rows * row_f);
    vnew = malloc(sizeof(float) * (size_t)rows * row_f);
    kpre = malloc(sizeof(float) * (size_t)n_seqs * cap * row_f);
    vpre = malloc(sizeof(float) * (size_t)n_seqs * cap * row_f);
    {
        int64_t r = 0, rp = 0;

        for (int s = 0; s < n_seqs; s++) {
            for (int32_t b = 0; b < blocks_per_seq; b++)
                tables[s][b] = perm[s * blocks_per_seq + b];
            seqs[s] = (ops_seq_t){.n_new = ss[s].n_new, .n_past = ss[s].n_past,
                                  .block_table = tables[s], .n_blocks = blocks_per_seq};
            pre[s] = (ops_seq_t){.n_new = ss[s].n_past, .n_past = 0,
                                 .block_table = tables[s], .n_blocks = blocks_per_seq};
            for (int32_t p = 0; p < ss[s].n_past; p++, rp++) {
                memcpy(kpre + rp * row_f, kall + ((size_t)s * cap + p) * row_f, row_f * sizeof(float));
                memcpy(vpre + rp * row_f, vall + ((size_t)s * cap + p) * row_f, row_f * sizeof(float));
            }
            for (int32_t j = 0; j < ss[s].n_new; j++, r++) {
                int32_t p = ss[s].n_past + j;

                memcpy(knew + r * row_f, kall + ((size_t)s * cap + p) * row_f, row_f * sizeof(float));
                memcpy(vnew + r * row_f, vall + ((size_t)s * cap + p) * row_f, row_f * sizeof(float));
            }
        }
    }
    slab_ref = calloc(1, kv_slab_bytes(&l));
    slab = calloc(1, kv_slab_bytes(&l));
    kv_ref.slab = slab_ref;
    kvp.slab = slab;
    ref = malloc(sizeof(float) * (size_t)rows * n_heads * hd);
    got = malloc(sizeof(float) * (size_t)rows * n_heads * hd);
    exact = malloc(sizeof(double) * (size_t)rows * n_heads * hd);

    is_int(ops_kv_write(ref_ops, &kv_ref, kpre, vpre, pre, n_seqs), DUET_OK, "%s: ref kv_write prefix", what);
    is_int(ops_kv_write(ref_ops, &kv_ref, knew, vnew, seqs, n_seqs), DUET_OK, "%s: ref kv_write new", what);
    /* K of sequence 0, position n_past, head n_kv - 1 sits where the layout says */
    {
        int32_t p = ss[0].n_past, hh = n_kv - 1;
        const uint8_t *at = slab_ref + kv_offset(&l, 1, tables[0][p / bs], 0, hh) +
                            (size_t)(p % bs) * hd * kv_elem_bytes(&l);
        float first = kvt == DTYPE_F32 ? *(const float *)(const void *)at
                                       : fp16_to_fp32(*(const uint16_t *)(const void *)at);

        ok(first == kall[((size_t)0 * cap + p) * row_f + (size_t)hh * hd],
           "%s: kv_write places [block][K][head][token][dim]", what);
    }
    is_int(ops_attn(ref_ops, ref, q, &kv_ref, seqs, n_seqs, n_heads, 1.0f / sqrtf((float)hd)),
           DUET_OK, "%s: ref attn", what);
    attn_exact(exact, q, kall, vall, cap, n_kv, hd, n_heads, ss, n_seqs, 1.0f / sqrtf((float)hd));
    {
        double worst = 0.0;

        for (size_t i = 0; i < (size_t)rows * n_heads * hd; i++) {
            if (fabs(ref[i] - exact[i]) > tol_exact)
                bad++;
            worst = fmax(worst, fabs(ref[i] - exact[i]));
        }
        ok(bad == 0, "%s: ref attn matches double precision (worst %.2g, tol %g)", what, worst,
           tol_exact);
    }

    for (int p = 0; p < n_paths; p++) {
        memset(slab, 0, kv_slab_bytes(&l));
        is_int(ops_kv_write(paths[p].ops, &kvp, kpre, vpre, pre, n_seqs), DUET_OK, "%s: %s kv_write",
               what, paths[p].ops->name);
        ops_kv_write(paths[p].ops, &kvp, knew, vnew, seqs, n_seqs);
        ok(memcmp(slab, slab_ref, kv_slab_bytes(&l)) == 0, "%s: %s kv_write exact", what,
           paths[p].ops->name);
        is_int(ops_attn(paths[p].ops, got, q, &kvp, seqs, n_seqs, n_heads, 1.0f / sqrtf((float)hd)),
               DUET_OK, "%s: %s attn", what, paths[p].ops->name);
        bad = 0;
        /* outputs are convex combinations of V rows (|v| <= 1): absolute 1e-5 */
        for (size_t i = 0; i < (size_t)rows * n_heads * hd; i++)
            if (!(fabsf(got[i] - ref[i]) <= 1e-5f))
                bad++;
        ok(bad == 0, "%s: %s attn matches ref", what, paths[p].ops->name);
    }

    /* bad block tables */
    {
        ops_seq_t bad_seq = seqs[0];
        int32_t tb[32];

        memcpy(tb, tables[0], sizeof(tb));
        tb[0] = l.n_blocks;
        bad_seq.block_table = tb;
        is_int(ops_attn(ref_ops, got, q, &kv_ref, &bad_seq, 1, n_heads, 1.0f), DUET_ERR_INVALID,
               "%s: attn block id out of range", what);
        is_int(ops_kv_write(ref_ops, &kv_ref, knew, vnew, &bad_seq, 1), DUET_ERR_INVALID,
               "%s: kv_write block id out of range", what);
        bad_seq = seqs[0];
        bad_seq.n_blocks = (seqs[0].n_past + seqs[0].n_new - 1) / bs;
        is_int(ops_attn(ref_ops, got, q, &kv_ref, &bad_seq, 1, n_heads, 1.0f), DUET_ERR_INVALID,
               "%s: attn block table too short", what);
        if (n_kv > 1)   /* refused before q is read */
            is_int(ops_attn(ref_ops, got, q, &kv_ref, seqs, 1, n_heads + 1, 1.0f),
                   DUET_ERR_INVALID, "%s: attn heads not a multiple of kv heads", what);
    }
    free(kall); free(vall); free(q); free(knew); free(vnew); free(kpre); free(vpre);
    free(ref); free(got); free(exact); free(slab_ref); free(slab);
}

static void test_attn(void)
{
    static const seq_spec_t prefill0[] = {{13, 0}};
    static const seq_spec_t prefill[] = {{21, 9}};
    static const seq_spec_t decode[] = {{1, 0}, {1, 17}, {1, 40}, {1, 5}, {1, 63}};
    static const seq_spec_t mixed[] = {{1, 30}, {6, 3}, {1, 0}};

    test_attn_case("prefill f16 hd64 gqa3", DTYPE_F16, 3, 9, 64, 16, prefill0, 1);
    test_attn_case("prefill+prefix f16 hd20", DTYPE_F16, 2, 4, 20, 4, prefill, 1);
    test_attn_case("prefill+prefix f32 hd64", DTYPE_F32, 1, 8, 64, 16, prefill, 1);
    test_attn_case("decode f16 hd64 gqa3", DTYPE_F16, 3, 9, 64, 16, decode, 5);
    test_attn_case("decode f32 hd7 mha", DTYPE_F32, 2, 2, 7, 5, decode, 5);
    test_attn_case("mixed f16 hd33", DTYPE_F16, 1, 3, 33, 8, mixed, 3);
}

/* --- helpers and checks ------------------------------------------------------------ */

static void test_argmax_softmax(void)
{
    float x[2 * 37];
    int32_t am[2];
    double s = 0.0;

    fill(x, 74, 5.0f);
    x[20] = 9.0f;
    x[37 + 36] = 9.5f;
    is_int(ops_argmax(ref_ops, am, x, 2, 37), DUET_OK, "argmax");
    ok(am[0] == 20 && am[1] == 36, "argmax picks the largest (%d, %d)", am[0], am[1]);
    ops_softmax(ref_ops, x, 2, 37);
    for (int i = 0; i < 37; i++)
        s += x[i];
    ok(fabs(s - 1.0) < 1e-5 && x[20] > x[0], "softmax sums to 1");
}

static void test_bad_args(void)
{
    ops_weight_t w = {.type = DTYPE_Q4_0, .n = 33, .d = 4};
    float out[8], x[64] = {0};
    ops_t *o = NULL;
    cpu_opts_t opts = {.n_threads = -1};

    w.data = x;
    is_int(ops_matmul(ref_ops, out, x, &w, 1), DUET_ERR_INVALID, "matmul Q4_0 row of 33");
    w.n = 32;
    w.type = (dtype_t)7;
    is_int(ops_matmul(ref_ops, out, x, &w, 1), DUET_ERR_INVALID, "matmul unknown dtype");
    w.type = DTYPE_F32;
    w.data = NULL;
    is_int(ops_matmul(ref_ops, out, x, &w, 1), DUET_ERR_INVALID, "matmul NULL weights");
    is_int(cpu_backend_create(&opts, &o), DUET_ERR_INVALID, "backend with -1 threads");
    ok(o == NULL, "no backend on failure");
}

static void test_membw(void)
{
    double gbps = 0.0;

    is_int(cpu_membw_measure(0, 16u << 20, 1, &gbps), DUET_OK, "membw small buffer");
    ok(gbps > 0.1, "membw reports %.1f GB/s (cache-resident here; the bench uses 1 GiB)", gbps);
    is_int(cpu_membw_measure(0, 1024, 1, &gbps), DUET_ERR_INVALID, "membw tiny buffer refused");
}

int main(void)
{
    static const cpu_isa_t isas[] = {CPU_ISA_REF, CPU_ISA_AVX2, CPU_ISA_AVX512, CPU_ISA_AVX512_VNNI};
    cpu_opts_t ro = {.n_threads = 1, .isa = CPU_ISA_REF};

    if (cpu_backend_create(&ro, &ref_ops) != DUET_OK) {
        printf("Bail out! cannot create the reference backend\n");
        return 1;
    }
    for (size_t i = 0; i < sizeof(isas) / sizeof(isas[0]); i++) {
        /* 3 threads on every path: uneven splits, more threads than cores */
        cpu_opts_t o = {.n_threads = 3, .isa = isas[i]};

        if (!cpu_isa_supported(isas[i])) {
            diag("%s: not compiled or not on this CPU, skipped", cpu_isa_name(isas[i]));
            continue;
        }
        if (cpu_backend_create(&o, &paths[n_paths].ops) == DUET_OK)
            paths[n_paths++].isa = isas[i];
    }
    diag("best ISA here: %s; %d paths under test", cpu_isa_name(cpu_isa_best()), n_paths);

    test_matmul();
    test_matmul_n();
    test_embed();
    test_rmsnorm();
    test_rope();
    test_silu_add();
    test_attn();
    test_argmax_softmax();
    test_bad_args();
    test_membw();

    for (int p = 0; p < n_paths; p++)
        ops_destroy(paths[p].ops);
    ops_destroy(ref_ops);
    return tap_done();
}
