/* Internals of the CPU backend: the per-ISA kernel table that the portable
 * op drivers (backend.c) call, and the activation block format. Each ISA
 * fills one cpu_kern_t in its own file (ref.c, avx2.c, avx512.c), compiled
 * with that ISA's flags only. */
#ifndef DUET_KERNELS_CPU_INT_H
#define DUET_KERNELS_CPU_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/kv_layout.h"

/* Activations quantized for the quantized weight types (like ggml's q8_1,
 * with float scale and sum): x[i] ~= qs[i] * d, d = max|x| / 127, and
 * ds = d * sum(qs) so that the constant terms of Q4_0 (-8 * d_w) and Q4_1
 * (m) cost one multiply per block: sum_i (q_i d_w + m) x_i ~=
 * d_w d sum_i q_i qs_i + m ds. */
typedef struct {
    float  d;
    float  ds;
    int8_t qs[QK];
} block_q8a_t;

_Static_assert(sizeof(block_q8a_t) == 40, "q8a block");

/* A tile of dot products: nr weight rows w(nr, n) (row r at
 * (const char *)w + r * w_stride) against nx <= CPU_TILE activation rows
 * x(nx, n) (row t at (const char *)x + t * x_stride) in the activation
 * format of the weight type: f32 for F32, f16 for F16, bf16 for BF16,
 * block_q8a_t for Q8_0/Q4_0/Q4_1. out(nx, out_stride): element (t, r) at
 * out[t * out_stride + r]. n is a multiple of 32 for the quantized types.
 * Each weight row is read once for the nx activation rows. */
typedef void (*cpu_dot_fn)(int64_t n, const void *w, size_t w_stride, int nr,
                           const void *x, size_t x_stride, int nx,
                           float *out, size_t out_stride);

#define CPU_TILE 4   /* activation rows per weight-row pass */

/* Multi-token quantized matmul on 16-row panels (filled only where the ISA
 * has a fast int8 dot, AVX-512 VNNI; NULL elsewhere). A pack function
 * turns 16 weight rows (row r at (const char *)w + r * w_stride, nb blocks
 * each) into a panel: per block, 8 vectors of 16 dwords, where dword j of
 * vector k holds elements 4k..4k+3 of row j as unsigned bytes (Q4 nibbles
 * 0..15, Q8_0 as w + 128), then the 16 scales d_w and the 16 constant
 * terms c_w (Q4_1: m, Q4_0: -8 d_w, Q8_0: -128 d_w), all as float. The
 * panel function dots one panel with ntok tokens of nlev (1 or 2)
 * block_q8a_t activation rows each (token t, level l at row t * nlev + l,
 * rows x_stride bytes apart), summing the levels:
 * out[t * out_stride + j] = sum_l sum_b d_w d_x isum + c_w ds_x. */
#define CPU_PANEL_ROWS 16
#define CPU_PANEL_MIN_TOK 1   /* tokens from which the matmul uses panels */
#define CPU_PANEL_BLOCK_BYTES (8 * 64 + 2 * 64)
typedef void (*cpu_pack_fn)(void *panel, const void *w, size_t w_stride, int64_t nb);
typedef void (*cpu_panel_fn)(int64_t nb, const void *panel, const void *x, size_t x_stride,
                             int nlev, int ntok, float *out, size_t out_stride);

/* Prepared panels (ops.prepare): a matrix repacked once, at load time, into
 * 16-row panels that keep the weights' own size, so the matmul reads them
 * straight and packs nothing per call. Per block of 32 columns:
 *   Q4_0/Q4_1: 4 vectors of 16 dwords, dword j of vector k = bytes
 *              4k..4k+3 of row j's nibbles as stored (elements 4k..4k+3 in
 *              the low nibbles, 16+4k.. in the high ones); then 16 f16 d_w
 *              and (Q4_1) 16 f16 m: 5 x 64 bytes for 16 x 32 weights;
 *   Q8_0:      8 vectors as in cpu_pack_fn (w + 128); then 16 f16 d_w:
 *              9 x 64 bytes.
 * The constant terms (Q4_0: -8 d_w, Q8_0: -128 d_w) are formed in the dot
 * exactly as cpu_pack_fn forms them, so both panel paths give the same bits.
 * Panel p (rows 16p .. 16p + 15) starts at p * nb * cpu_panelc_block_bytes(). */
#define CPU_PANELC_Q4_BYTES (5 * 64)
#define CPU_PANELC_Q8_BYTES (9 * 64)
typedef void (*cpu_panelc_fn)(int64_t nb, const void *panel, dtype_t type, const void *x,
                              size_t x_stride, int nlev, int ntok, float *out,
                              size_t out_stride);

static inline size_t cpu_panelc_block_bytes(dtype_t type)
{
    return type == DTYPE_Q8_0 ? CPU_PANELC_Q8_BYTES : CPU_PANELC_Q4_BYTES;
}

/* One attention task: n_q <= CPU_ATTN_MAX_Q query rows that share one KV
 * head; row i attends to positions 0 .. len[i] - 1. */
#define CPU_ATTN_MAX_Q 16

typedef struct {
    float             *out[CPU_ATTN_MAX_Q];   /* n_q rows of (head_dim) */
    const float       *q[CPU_ATTN_MAX_Q];     /* n_q rows of (head_dim) */
    int32_t            len[CPU_ATTN_MAX_Q];
    int                n_q;
    int32_t            max_len;      /* max of len[] */
    const uint8_t     *slab;
    const kv_layout_t *layout;
    int32_t            layer;
    int32_t            kv_head;
    const int32_t     *block_table;  /* covers max_len positions */
    float              scale;
    float             *scores;       /* scratch (n_q, max_len) */
    float             *row;          /* scratch (head_dim) */
} cpu_attn_args_t;

typedef struct {
    const char *name;

    /* y(n / 32) = x(n) quantized; n a multiple of 32. Rounding is to
     * nearest-even on every path, so every path quantizes identically. */
    void (*quantize_q8a)(block_q8a_t *y, const float *x, int64_t n);
    /* y(n) = x(n) rounded to f16 / bf16 (nearest even), as common/dtype.h. */
    void (*to_f16)(uint16_t *y, const float *x, int64_t n);
    void (*to_bf16)(uint16_t *y, const float *x, int64_t n);

    cpu_dot_fn dot_f32, dot_f16, dot_bf16, dot_q8_0, dot_q4_0, dot_q4_1;
    /* 16-row panels (see cpu_pack_fn); all NULL or all set */
    cpu_pack_fn  pack_q8_0, pack_q4_0, pack_q4_1;
    cpu_panel_fn dot_panel;
    /* prepared panels (see cpu_panelc_fn); all NULL or all set */
    cpu_pack_fn   packc_q8_0, packc_q4_0, packc_q4_1;
    cpu_panelc_fn dot_panelc;

    /* sum of x(n)^2 */
    float (*sumsq)(const float *x, int64_t n);
    /* out(n) = x(n) * s * w(n) */
    void (*scale_mul)(float *out, const float *x, float s, const float *w, int64_t n);
    /* out(n) = g / (1 + exp(-g)) * u */
    void (*silu_mul)(float *out, const float *g, const float *u, int64_t n);
    /* out(n) = a + b */
    void (*add)(float *out, const float *a, const float *b, int64_t n);
    /* softmax-weighted sum of V for one task (see cpu_attn_args_t) */
    void (*attn)(const cpu_attn_args_t *a);
    /* A value depending on every 8-byte word of p(bytes), bytes a multiple
     * of 256: the memory bandwidth probe. */
    uint64_t (*read_sum)(const void *p, size_t bytes);
} cpu_kern_t;

extern const cpu_kern_t cpu_kern_ref;
#ifdef DUET_CPU_HAVE_AVX2
extern const cpu_kern_t cpu_kern_avx2;
#endif
#ifdef DUET_CPU_HAVE_AVX512
extern const cpu_kern_t cpu_kern_avx512;
#endif
#ifdef DUET_CPU_HAVE_AVX512_VNNI
extern const cpu_kern_t cpu_kern_avx512_vnni;
#endif

/* Quantize one block of 32 given max|x| (the SIMD paths find amax, then
 * share this scalar rounding of d so that all paths agree bit for bit). */
void cpu_ref_quantize_block(block_q8a_t *y, const float *x, float amax);

/* Pointer to K (kv = 0) or V (kv = 1) of position p for an attention task. */
static inline const uint8_t *cpu_attn_kv_row(const cpu_attn_args_t *a, int kv, int32_t p)
{
    const kv_layout_t *l = a->layout;
    int32_t bs = l->block_size;

    return a->slab + kv_offset(l, a->layer, a->block_table[p / bs], kv, a->kv_head) +
           (size_t)(p % bs) * (size_t)l->head_dim * kv_elem_bytes(l);
}

#endif
