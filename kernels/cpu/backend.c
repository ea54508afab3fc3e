/* The CPU backend's op drivers: argument checks, activation conversion,
 * work splitting over the thread pool, and the calls into the per-ISA
 * kernel table (cpu_int.h) chosen at create time from cpuid. */
#define DUET_LOG_COMPONENT "kernels"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/cpu/threadpool.h"

#define ROPE_MAX_DIM 1024   /* rot_dim bound: freqs live on the stack */

typedef struct {
    ops_t             ops;
    const cpu_kern_t *k;
    cpu_isa_t         isa;
    tpool_t          *pool;
    int               nth;
    void             *act;          /* converted activations */
    size_t            act_bytes;
    void             *work;         /* task lists, attention scratch */
    size_t            work_bytes;
} cpu_ctx_t;

static duet_status_t grow(void **buf, size_t *cap, size_t need)
{
    void *p;

    if (need <= *cap)
        return DUET_OK;
    need = need + need / 4 + 4096;
    p = aligned_alloc(64, (need + 63) & ~(size_t)63);
    if (p == NULL)
        return DUET_ERR_NOMEM;
    free(*buf);
    *buf = p;
    *cap = need;
    return DUET_OK;
}

/* --- parallel for ------------------------------------------------------------ */

typedef void (*range_fn_t)(void *arg, int64_t begin, int64_t end, int ith);

typedef struct {
    range_fn_t      fn;
    void           *arg;
    int64_t         n;
    int64_t         chunk;
    _Atomic int64_t next;
} par_t;

static void par_worker(void *p, int ith, int nth)
{
    par_t *par = p;
    int64_t b;

    while ((b = atomic_fetch_add_explicit(&par->next, par->chunk, memory_order_relaxed)) <
           par->n) {
        int64_t e = b + par->chunk < par->n ? b + par->chunk : par->n;

        par->fn(par->arg, b, e, ith);
    }
}

/* Run fn over [0, n) in chunks of `chunk`, dynamically balanced. */
static void par_for(cpu_ctx_t *c, int64_t n, int64_t chunk, range_fn_t fn, void *arg)
{
    par_t par = {.fn = fn, .arg = arg, .n = n, .chunk = chunk < 1 ? 1 : chunk};

    if (n <= 0)
        return;
    if (c->nth == 1 || n <= par.chunk) {
        fn(arg, 0, n, 0);
        return;
    }
    atomic_init(&par.next, 0);
    tpool_run(c->pool, par_worker, &par);
}

/* --- weights ----------------------------------------------------------------- */

static bool weight_ok(const ops_weight_t *w)
{
    return w != NULL && w->data != NULL && dtype_known((int)w->type) && w->n > 0 &&
           w->d > 0 && w->n <= INT32_MAX && dtype_row_bytes(w->type, w->n) != 0;
}

/* Dequantize one row of n elements of type t to f32 (portable; only the
 * embedding lookup uses it). */
static void row_to_f32(float *dst, const void *src, dtype_t t, int64_t n)
{
    switch (t) {
    case DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = fp16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = bf16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case DTYPE_Q8_0:
        for (int64_t b = 0; b < n / QK; b++) {
            const block_q8_0_t *q = (const block_q8_0_t *)src + b;
            float d = fp16_to_fp32(q->d);

            for (int j = 0; j < QK; j++)
                dst[b * QK + j] = q->qs[j] * d;
        }
        break;
    case DTYPE_Q4_0:
        for (int64_t b = 0; b < n / QK; b++) {
            const block_q4_0_t *q = (const block_q4_0_t *)src + b;
            float d = fp16_to_fp32(q->d);

            for (int j = 0; j < QK / 2; j++) {
                dst[b * QK + j] = ((q->qs[j] & 0x0f) - 8) * d;
                dst[b * QK + j + QK / 2] = ((q->qs[j] >> 4) - 8) * d;
            }
        }
        break;
    case DTYPE_Q4_1:
        for (int64_t b = 0; b < n / QK; b++) {
            const block_q4_1_t *q = (const block_q4_1_t *)src + b;
            float d = fp16_to_fp32(q->d), m = fp16_to_fp32(q->m);

            for (int j = 0; j < QK / 2; j++) {
                dst[b * QK + j] = (q->qs[j] & 0x0f) * d + m;
                dst[b * QK + j + QK / 2] = (q->qs[j] >> 4) * d + m;
            }
        }
        break;
    }
}

static duet_status_t cpu_embed(void *ctx, float *out, const ops_weight_t *w,
                               const int32_t *ids, int32_t n_tok)
{
    size_t rb;

    if (!weight_ok(w) || out == NULL || ids == NULL || n_tok < 0)
        return DUET_ERR_INVALID;
    for (int32_t t = 0; t < n_tok; t++)
        if (ids[t] < 0 || ids[t] >= w->d)
            return DUET_ERR_INVALID;
    rb = dtype_row_bytes(w->type, w->n);
    for (int32_t t = 0; t < n_tok; t++)
        row_to_f32(out + (size_t)t * (size_t)w->n, (const char *)w->data + (size_t)ids[t] * rb,
                   w->type, w->n);
    return DUET_OK;
}

/* --- matmul ------------------------------------------------------------------- */

typedef struct {
    const cpu_kern_t *k;
    float            *out;       /* (n_tok, d) */
    const float      *x;         /* (n_tok, n) */
    void             *xa;        /* (n_act, xa_stride bytes) converted */
    size_t            xa_stride;
    float            *out2;      /* (n_act, d) when precise, else NULL */
    float            *resid;     /* (nth, n) scratch when precise */
    const void       *w;
    size_t            w_stride;
    int64_t           n, d;
    int32_t           n_tok;
    int32_t           n_act;     /* activation rows: n_tok, or 2 n_tok when precise */
    dtype_t           type;
    cpu_dot_fn        dot;
    cpu_pack_fn       pack;      /* 16-row panels, or NULL */
    void             *panels;    /* (nth, panel_bytes) scratch when pack */
    size_t            panel_bytes;
    const char       *prepared;  /* prepared panels (cpu_panelc_fn), or NULL */
    size_t            prepared_panel_bytes;
} mm_t;

static void mm_convert(void *arg, int64_t b, int64_t e, int ith)
{
    mm_t *m = arg;

    for (int64_t t = b; t < e; t++) {
        const float *src = m->x + (size_t)t * (size_t)m->n;
        void *dst = (char *)m->xa + (size_t)t * m->xa_stride;

        switch (m->type) {
        case DTYPE_F16:  m->k->to_f16(dst, src, m->n); break;
        case DTYPE_BF16: m->k->to_bf16(dst, src, m->n); break;
        case DTYPE_F32:  break;
        default:
            if (m->out2 == NULL) {
                m->k->quantize_q8a(dst, src, m->n);
            } else {
                /* two levels: row 2t = q8(x), row 2t+1 = q8(x - q8(x)); the
                 * residual is formed here, in portable code, so every path
                 * quantizes it identically */
                block_q8a_t *hi = (block_q8a_t *)(void *)((char *)m->xa + (size_t)(2 * t) * m->xa_stride);
                float *r = m->resid + (size_t)ith * (size_t)m->n;

                m->k->quantize_q8a(hi, src, m->n);
                for (int64_t i = 0; i < m->n; i++)
                    r[i] = src[i] - (float)hi[i / QK].qs[i % QK] * hi[i / QK].d;
                m->k->quantize_q8a((block_q8a_t *)(void *)((char *)hi + m->xa_stride), r, m->n);
            }
            break;
        }
    }
}

/* Rows [r0, r1) of the output for every token: tiles of CPU_TILE activation
 * rows, so each weight row of the chunk (which stays in L1) is read once per
 * tile. In precise mode the two levels of each token are two activation
 * rows whose dot products are summed at the end. */
static void mm_rows(void *arg, int64_t r0, int64_t r1, int ith)
{
    mm_t *m = arg;
    const char *w;
    float *o = m->out2 != NULL ? m->out2 : m->out;
    int nlev = m->out2 != NULL ? 2 : 1;

    if (m->prepared != NULL) {
        /* as below, on the panels packed once by cpu_prepare */
        for (; r0 + CPU_PANEL_ROWS <= r1; r0 += CPU_PANEL_ROWS)
            m->k->dot_panelc(m->n / QK,
                             m->prepared + (size_t)(r0 / CPU_PANEL_ROWS) * m->prepared_panel_bytes,
                             m->type, m->xa, m->xa_stride, nlev, m->n_tok, m->out + r0,
                             (size_t)m->d);
        if (r0 == r1)
            return;
    } else if (m->pack != NULL) {
        /* whole panels: chunks are multiples of 16 rows, so only the last
         * d % 16 rows of the matrix take the tile path below, whatever the
         * thread count */
        void *panel = (char *)m->panels + (size_t)ith * m->panel_bytes;

        for (; r0 + CPU_PANEL_ROWS <= r1; r0 += CPU_PANEL_ROWS) {
            m->pack(panel, (const char *)m->w + (size_t)r0 * m->w_stride, m->w_stride,
                    m->n / QK);
            m->k->dot_panel(m->n / QK, panel, m->xa, m->xa_stride, nlev, m->n_tok,
                            m->out + r0, (size_t)m->d);
        }
        if (r0 == r1)
            return;
    }
    w = (const char *)m->w + (size_t)r0 * m->w_stride;
    for (int32_t t = 0; t < m->n_act; t += CPU_TILE) {
        int nx = m->n_act - t < CPU_TILE ? m->n_act - t : CPU_TILE;

        m->dot(m->n, w, m->w_stride, (int)(r1 - r0),
               (const char *)m->xa + (size_t)t * m->xa_stride, m->xa_stride, nx,
               o + (size_t)t * (size_t)m->d + (size_t)r0, (size_t)m->d);
    }
    if (m->out2 == NULL)
        return;
    for (int32_t t = 0; t < m->n_tok; t++) {
        const float *hi = m->out2 + (size_t)(2 * t) * (size_t)m->d;
        const float *lo = hi + m->d;
        float *dst = m->out + (size_t)t * (size_t)m->d;

        for (int64_t r = r0; r < r1; r++)
            dst[r] = hi[r] + lo[r];
    }
}

/* One call's matrices share the input x, so their activations are converted
 * once and all their row chunks run in one parallel region (tasks). */
#define MM_MAX_W     4
#define MM_MAX_TASKS 256

typedef struct {
    mm_t   *m;
    struct { int i; int64_t r0, r1; } t[MM_MAX_TASKS];
} mm_tasks_t;

static void mm_tasks(void *arg, int64_t b, int64_t e, int ith)
{
    mm_tasks_t *a = arg;

    for (int64_t j = b; j < e; j++)
        mm_rows(&a->m[a->t[j].i], a->t[j].r0, a->t[j].r1, ith);
}

/* Rows per chunk: ~16 chunks per thread for balance on shared cores, 4..64
 * rows each, whole panels where panels are used. */
static int64_t mm_chunk(const cpu_ctx_t *c, const mm_t *m)
{
    int64_t chunk = m->d / ((int64_t)c->nth * 16);

    chunk = chunk < 4 ? 4 : chunk > 64 ? 64 : chunk;
    if (m->pack != NULL || m->prepared != NULL)
        chunk = (chunk + CPU_PANEL_ROWS - 1) / CPU_PANEL_ROWS * CPU_PANEL_ROWS;
    return chunk;
}

/* outs[i](n_tok, ws[i]->d) = x(n_tok, n) . ws[i]^T for nw matrices of the
 * same n, type and precision (checked by the caller). */
static duet_status_t mm_run(cpu_ctx_t *c, float *const *outs, const float *x,
                            const ops_weight_t *const *ws, int nw, int32_t n_tok)
{
    const ops_weight_t *w = ws[0];
    mm_t m[MM_MAX_W];
    mm_t *b = &m[0];
    bool quant, precise;
    size_t act_bytes, out2_bytes = 0, resid_bytes = 0, out2_off[MM_MAX_W];

    *b = (mm_t){.k = c->k, .out = outs[0], .x = x, .w = w->data};
    b->n = w->n;
    b->d = w->d;
    b->n_tok = n_tok;
    b->type = w->type;
    b->w_stride = dtype_row_bytes(w->type, w->n);
    quant = dtype_block_elems(w->type) > 1;
    precise = quant && w->precise;
    b->n_act = precise ? 2 * n_tok : n_tok;
    switch (w->type) {
    case DTYPE_F32:  b->dot = c->k->dot_f32;  b->xa_stride = (size_t)b->n * 4; break;
    case DTYPE_F16:  b->dot = c->k->dot_f16;  b->xa_stride = (size_t)b->n * 2; break;
    case DTYPE_BF16: b->dot = c->k->dot_bf16; b->xa_stride = (size_t)b->n * 2; break;
    case DTYPE_Q8_0: b->dot = c->k->dot_q8_0; break;
    case DTYPE_Q4_0: b->dot = c->k->dot_q4_0; break;
    case DTYPE_Q4_1: b->dot = c->k->dot_q4_1; break;
    }
    if (quant)
        b->xa_stride = (size_t)(b->n / QK) * sizeof(block_q8a_t);
    /* Panels once several tokens share each packed weight block (n_tok only,
     * so the path never depends on the thread count). */
    if (quant && c->k->dot_panel != NULL && n_tok >= CPU_PANEL_MIN_TOK) {
        b->pack = w->type == DTYPE_Q8_0 ? c->k->pack_q8_0 :
                  w->type == DTYPE_Q4_0 ? c->k->pack_q4_0 : c->k->pack_q4_1;
        b->panel_bytes = (size_t)(b->n / QK) * CPU_PANEL_BLOCK_BYTES;
    }
    for (int i = 0; i < nw; i++) {
        if (i > 0) {
            m[i] = *b;
            m[i].out = outs[i];
            m[i].w = ws[i]->data;
            m[i].d = ws[i]->d;
        }
        if (quant && ws[i]->prepared != NULL && c->k->dot_panelc != NULL) {
            m[i].prepared = ws[i]->prepared;
            m[i].prepared_panel_bytes = (size_t)(b->n / QK) * cpu_panelc_block_bytes(w->type);
        }
        out2_off[i] = out2_bytes;
        if (precise)
            out2_bytes += ((size_t)b->n_act * (size_t)m[i].d * sizeof(float) + 63) & ~(size_t)63;
    }
    if (w->type == DTYPE_F32) {
        for (int i = 0; i < nw; i++)
            m[i].xa = (void *)x;
    } else {
        act_bytes = ((size_t)b->n_act * b->xa_stride + 63) & ~(size_t)63;
        if (precise)
            resid_bytes = (size_t)c->nth * (size_t)b->n * sizeof(float);
        CHECK(grow(&c->act, &c->act_bytes,
                   act_bytes + out2_bytes + ((resid_bytes + 63) & ~(size_t)63) +
                   (size_t)c->nth * b->panel_bytes));
        for (int i = 0; i < nw; i++) {
            m[i].xa = c->act;
            if (b->pack != NULL)
                m[i].panels = (char *)c->act + act_bytes + out2_bytes +
                              ((resid_bytes + 63) & ~(size_t)63);
            if (precise) {
                m[i].out2 = (float *)(void *)((char *)c->act + act_bytes + out2_off[i]);
                m[i].resid = (float *)(void *)((char *)c->act + act_bytes + out2_bytes);
            }
        }
        par_for(c, n_tok, 8, mm_convert, b);
    }
    if (nw == 1) {
        par_for(c, b->d, mm_chunk(c, b), mm_rows, b);
    } else {
        mm_tasks_t a = {.m = m};
        int64_t nt = 0;

        for (int i = 0; i < nw; i++) {
            int64_t chunk = mm_chunk(c, &m[i]);

            for (int64_t r = 0; r < m[i].d; r += chunk, nt++) {
                if (nt == MM_MAX_TASKS) {
                    par_for(c, nt, 1, mm_tasks, &a);
                    nt = 0;
                }
                a.t[nt].i = i;
                a.t[nt].r0 = r;
                a.t[nt].r1 = r + chunk < m[i].d ? r + chunk : m[i].d;
            }
        }
        par_for(c, nt, 1, mm_tasks, &a);
    }
    return DUET_OK;
}

static duet_status_t cpu_matmul(void *ctx, float *out, const float *x,
                                const ops_weight_t *w, int32_t n_tok)
{
    if (!weight_ok(w) || out == NULL || x == NULL || n_tok < 0)
        return DUET_ERR_INVALID;
    if (n_tok == 0)
        return DUET_OK;
    return mm_run(ctx, &out, x, &w, 1, n_tok);
}

static duet_status_t cpu_matmul_n(void *ctx, float *const *outs, const float *x,
                                  const ops_weight_t *const *ws, int nw, int32_t n_tok)
{
    bool same = nw <= MM_MAX_W;

    if (nw < 1 || outs == NULL || ws == NULL || x == NULL || n_tok < 0)
        return DUET_ERR_INVALID;
    for (int i = 0; i < nw; i++) {
        if (!weight_ok(ws[i]) || outs[i] == NULL)
            return DUET_ERR_INVALID;
        if (ws[i]->n != ws[0]->n || ws[i]->type != ws[0]->type ||
            ws[i]->precise != ws[0]->precise)
            same = false;
    }
    if (n_tok == 0)
        return DUET_OK;
    if (same)
        return mm_run(ctx, outs, x, ws, nw, n_tok);
    for (int i = 0; i < nw; i++)
        CHECK(mm_run(ctx, &outs[i], x, &ws[i], 1, n_tok));
    return DUET_OK;
}

/* --- prepared weights ------------------------------------------------------ */

typedef struct {
    cpu_pack_fn packc;
    char       *dst;
    const char *w;
    size_t      w_stride, panel_bytes;
    int64_t     nb;
} prep_t;

static void prep_panels(void *arg, int64_t b, int64_t e, int ith)
{
    prep_t *p = arg;

    (void)ith;
    for (int64_t i = b; i < e; i++)
        p->packc(p->dst + (size_t)i * p->panel_bytes,
                 p->w + (size_t)i * CPU_PANEL_ROWS * p->w_stride, p->w_stride, p->nb);
}

/* Quantized matrices of at least 16 rows, where the ISA has prepared panels:
 * the whole rows' 16-row panels, packed once (the last d % 16 rows stay on
 * the row path, as unprepared). */
static duet_status_t cpu_prepare(void *ctx, ops_weight_t *w)
{
    cpu_ctx_t *c = ctx;
    prep_t p;
    size_t bytes;

    if (!weight_ok(w))
        return DUET_ERR_INVALID;
    if (w->prepared != NULL || c->k->dot_panelc == NULL || w->d < CPU_PANEL_ROWS)
        return DUET_OK;
    switch (w->type) {
    case DTYPE_Q8_0: p.packc = c->k->packc_q8_0; break;
    case DTYPE_Q4_0: p.packc = c->k->packc_q4_0; break;
    case DTYPE_Q4_1: p.packc = c->k->packc_q4_1; break;
    default: return DUET_OK;
    }
    p.nb = w->n / QK;
    p.w = w->data;
    p.w_stride = dtype_row_bytes(w->type, w->n);
    p.panel_bytes = (size_t)p.nb * cpu_panelc_block_bytes(w->type);
    bytes = (size_t)(w->d / CPU_PANEL_ROWS) * p.panel_bytes;
    p.dst = aligned_alloc(64, bytes);
    if (p.dst == NULL)
        return DUET_ERR_NOMEM;
    par_for(c, w->d / CPU_PANEL_ROWS, 4, prep_panels, &p);
    w->prepared = p.dst;
    return DUET_OK;
}

static void cpu_release(void *ctx, ops_weight_t *w)
{
    (void)ctx;
    if (w == NULL)
        return;
    free(w->prepared);
    w->prepared = NULL;
}

/* --- rmsnorm, rope, silu, add --------------------------------------------------- */

typedef struct {
    const cpu_kern_t *k;
    float            *out;
    const float      *x, *w, *y;
    int64_t           n;
    float             eps;
} ew_t;

static void rms_rows(void *arg, int64_t b, int64_t e, int ith)
{
    ew_t *a = arg;

    for (int64_t t = b; t < e; t++) {
        const float *xr = a->x + (size_t)t * (size_t)a->n;
        float ss = a->k->sumsq(xr, a->n) / (float)a->n;

        a->k->scale_mul(a->out + (size_t)t * (size_t)a->n, xr, 1.0f / sqrtf(ss + a->eps),
                        a->w, a->n);
    }
}

static duet_status_t cpu_rmsnorm(void *ctx, float *out, const float *x, const float *w,
                                 int32_t n_tok, int32_t n, float eps)
{
    ew_t a = {.k = ((cpu_ctx_t *)ctx)->k, .out = out, .x = x, .w = w, .n = n, .eps = eps};

    if (out == NULL || x == NULL || w == NULL || n_tok < 0 || n <= 0 || !(eps >= 0.0f))
        return DUET_ERR_INVALID;
    par_for(ctx, n_tok, 16, rms_rows, &a);
    return DUET_OK;
}

typedef struct {
    float         *x;
    const int32_t *pos;
    int32_t        n_heads, head_dim, half;
    float          inv_scale;
    const float   *freq;
} rope_args_t;

static void rope_rows(void *arg, int64_t b, int64_t e, int ith)
{
    rope_args_t *a = arg;
    float cs[ROPE_MAX_DIM / 2], sn[ROPE_MAX_DIM / 2];

    for (int64_t t = b; t < e; t++) {
        float p = (float)a->pos[t] * a->inv_scale;

        for (int32_t i = 0; i < a->half; i++) {
            float th = p * a->freq[i];

            cs[i] = cosf(th);
            sn[i] = sinf(th);
        }
        for (int32_t h = 0; h < a->n_heads; h++) {
            float *v = a->x + ((size_t)t * (size_t)a->n_heads + (size_t)h) * (size_t)a->head_dim;

            for (int32_t i = 0; i < a->half; i++) {
                float x0 = v[2 * i], x1 = v[2 * i + 1];

                v[2 * i] = x0 * cs[i] - x1 * sn[i];
                v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}

static duet_status_t cpu_rope(void *ctx, float *x, const int32_t *pos, int32_t n_tok,
                              int32_t n_heads, int32_t head_dim, const ops_rope_t *rope)
{
    float freq[ROPE_MAX_DIM / 2];
    rope_args_t a = {.x = x, .pos = pos, .n_heads = n_heads, .head_dim = head_dim,
                     .freq = freq};

    if (x == NULL || pos == NULL || rope == NULL || n_tok < 0 || n_heads <= 0 ||
        head_dim <= 0 || rope->rot_dim <= 0 || rope->rot_dim % 2 != 0 ||
        rope->rot_dim > head_dim || rope->rot_dim > ROPE_MAX_DIM || !(rope->base > 0.0f) ||
        !(rope->scale > 0.0f))
        return DUET_ERR_INVALID;
    a.half = rope->rot_dim / 2;
    a.inv_scale = 1.0f / rope->scale;
    for (int32_t i = 0; i < a.half; i++)
        freq[i] = (float)pow((double)rope->base, -2.0 * i / rope->rot_dim);
    par_for(ctx, n_tok, 16, rope_rows, &a);
    return DUET_OK;
}

static void silu_range(void *arg, int64_t b, int64_t e, int ith)
{
    ew_t *a = arg;

    a->k->silu_mul(a->out + b, a->x + b, a->y + b, e - b);
}

static duet_status_t cpu_silu_mul(void *ctx, float *out, const float *gate,
                                  const float *up, int64_t n)
{
    ew_t a = {.k = ((cpu_ctx_t *)ctx)->k, .out = out, .x = gate, .y = up};

    if (out == NULL || gate == NULL || up == NULL || n < 0)
        return DUET_ERR_INVALID;
    par_for(ctx, n, 16384, silu_range, &a);
    return DUET_OK;
}

static void add_range(void *arg, int64_t b, int64_t e, int ith)
{
    ew_t *a = arg;

    a->k->add(a->out + b, a->x + b, a->y + b, e - b);
}

static duet_status_t cpu_add(void *ctx, float *out, const float *a_, const float *b,
                             int64_t n)
{
    ew_t a = {.k = ((cpu_ctx_t *)ctx)->k, .out = out, .x = a_, .y = b};

    if (out == NULL || a_ == NULL || b == NULL || n < 0)
        return DUET_ERR_INVALID;
    par_for(ctx, n, 65536, add_range, &a);
    return DUET_OK;
}

/* --- KV write and attention ------------------------------------------------------ */

static bool kv_ok(const ops_kv_t *kv)
{
    const kv_layout_t *l;

    if (kv == NULL || kv->slab == NULL || kv->layout == NULL)
        return false;
    l = kv->layout;
    return l->n_layers > 0 && kv->layer >= 0 && kv->layer < l->n_layers && l->n_blocks > 0 &&
           l->n_kv_heads > 0 && l->block_size > 0 && l->head_dim > 0 &&
           (l->dtype == DTYPE_F16 || l->dtype == DTYPE_F32);
}

/* Every sequence's block table covers its positions with valid block ids. */
static duet_status_t seqs_check(const kv_layout_t *l, const ops_seq_t *seqs, int32_t n_seqs,
                                bool need_new, int64_t *rows_p, int32_t *max_len_p)
{
    int64_t rows = 0;
    int32_t max_len = 0;

    if (n_seqs < 0 || (n_seqs > 0 && seqs == NULL))
        return DUET_ERR_INVALID;
    for (int32_t s = 0; s < n_seqs; s++) {
        const ops_seq_t *q = &seqs[s];
        int64_t len = (int64_t)q->n_past + q->n_new;
        int64_t need;

        if (q->n_new < (need_new ? 1 : 0) || q->n_past < 0 || len > INT32_MAX)
            return DUET_ERR_INVALID;
        need = (len + l->block_size - 1) / l->block_size;
        if (need > q->n_blocks || (need > 0 && q->block_table == NULL))
            return DUET_ERR_INVALID;
        for (int64_t b = 0; b < need; b++)
            if (q->block_table[b] < 0 || q->block_table[b] >= l->n_blocks)
                return DUET_ERR_INVALID;
        rows += q->n_new;
        if (len > max_len)
            max_len = (int32_t)len;
    }
    *rows_p = rows;
    *max_len_p = max_len;
    return DUET_OK;
}

static duet_status_t cpu_kv_write(void *ctx, const ops_kv_t *kv, const float *k,
                                  const float *v, const ops_seq_t *seqs, int32_t n_seqs)
{
    cpu_ctx_t *c = ctx;
    const kv_layout_t *l;
    int64_t rows, row = 0;
    int32_t max_len;
    size_t esz, hd, row_floats;

    if (!kv_ok(kv) || k == NULL || v == NULL)
        return DUET_ERR_INVALID;
    l = kv->layout;
    CHECK(seqs_check(l, seqs, n_seqs, false, &rows, &max_len));
    esz = kv_elem_bytes(l);
    hd = (size_t)l->head_dim;
    row_floats = (size_t)l->n_kv_heads * hd;
    for (int32_t s = 0; s < n_seqs; s++) {
        for (int32_t j = 0; j < seqs[s].n_new; j++, row++) {
            int32_t pos = seqs[s].n_past + j;
            int32_t blk = seqs[s].block_table[pos / l->block_size];
            size_t slot = (size_t)(pos % l->block_size) * hd * esz;

            for (int32_t h = 0; h < l->n_kv_heads; h++) {
                const float *src[2] = {k + (size_t)row * row_floats + (size_t)h * hd,
                                       v + (size_t)row * row_floats + (size_t)h * hd};

                for (int kvi = 0; kvi < 2; kvi++) {
                    uint8_t *dst = (uint8_t *)kv->slab + kv_offset(l, kv->layer, blk, kvi, h) + slot;

                    if (l->dtype == DTYPE_F32)
                        memcpy(dst, src[kvi], hd * sizeof(float));
                    else
                        c->k->to_f16((uint16_t *)(void *)dst, src[kvi], (int64_t)hd);
                }
            }
        }
    }
    return DUET_OK;
}

/* One attention task: sequence, KV head, first new token and count. */
typedef struct {
    int32_t seq, kv_head, t0, nt;
    int64_t row0;    /* first row of the sequence in q/out */
} attn_task_t;

typedef struct {
    cpu_ctx_t         *c;
    float             *out;
    const float       *q;
    const ops_kv_t    *kv;
    const ops_seq_t   *seqs;
    const attn_task_t *tasks;
    int32_t            n_heads, group;
    float              scale;
    float             *scratch;       /* (nth, per_thread) */
    size_t             per_thread;
} attn_run_t;

static void attn_range(void *arg, int64_t b, int64_t e, int ith)
{
    attn_run_t *r = arg;
    const kv_layout_t *l = r->kv->layout;
    size_t hd = (size_t)l->head_dim;

    for (int64_t i = b; i < e; i++) {
        const attn_task_t *t = &r->tasks[i];
        const ops_seq_t *s = &r->seqs[t->seq];
        cpu_attn_args_t a = {
            .slab = r->kv->slab, .layout = l, .layer = r->kv->layer, .kv_head = t->kv_head,
            .block_table = s->block_table, .scale = r->scale,
        };

        for (int32_t j = 0; j < t->nt; j++) {
            int64_t row = t->row0 + t->t0 + j;

            for (int32_t g = 0; g < r->group; g++) {
                size_t off = ((size_t)row * (size_t)r->n_heads +
                              (size_t)(t->kv_head * r->group + g)) * hd;

                a.q[a.n_q] = r->q + off;
                a.out[a.n_q] = r->out + off;
                a.len[a.n_q] = s->n_past + t->t0 + j + 1;
                a.n_q++;
            }
        }
        a.max_len = s->n_past + t->t0 + t->nt;
        a.row = r->scratch + (size_t)ith * r->per_thread;
        a.scores = a.row + ((hd + 15) & ~(size_t)15);
        r->c->k->attn(&a);
    }
}

static duet_status_t cpu_attn(void *ctx, float *out, const float *q, const ops_kv_t *kv,
                              const ops_seq_t *seqs, int32_t n_seqs, int32_t n_heads,
                              float scale)
{
    cpu_ctx_t *c = ctx;
    const kv_layout_t *l;
    attn_run_t r = {.c = c, .out = out, .q = q, .kv = kv, .seqs = seqs, .n_heads = n_heads,
                    .scale = scale};
    attn_task_t *tasks;
    int64_t rows, n_tasks = 0, row0 = 0;
    int32_t max_len, tile;
    size_t tasks_bytes;

    if (!kv_ok(kv) || out == NULL || q == NULL || n_heads <= 0 ||
        n_heads % kv->layout->n_kv_heads != 0 || !isfinite(scale))
        return DUET_ERR_INVALID;
    l = kv->layout;
    CHECK(seqs_check(l, seqs, n_seqs, true, &rows, &max_len));
    if (n_seqs == 0)
        return DUET_OK;
    r.group = n_heads / l->n_kv_heads;
    if (r.group > CPU_ATTN_MAX_Q)
        return DUET_ERR_UNSUPPORTED;
    tile = CPU_ATTN_MAX_Q / r.group;   /* new tokens per task */
    for (int32_t s = 0; s < n_seqs; s++)
        n_tasks += (int64_t)l->n_kv_heads * ((seqs[s].n_new + tile - 1) / tile);
    tasks_bytes = ((size_t)n_tasks * sizeof(attn_task_t) + 63) & ~(size_t)63;
    r.per_thread = (((size_t)l->head_dim + 15) & ~(size_t)15) +
                   (size_t)CPU_ATTN_MAX_Q * (size_t)max_len + 16;
    CHECK(grow(&c->work, &c->work_bytes,
               tasks_bytes + (size_t)c->nth * r.per_thread * sizeof(float)));
    tasks = c->work;
    r.scratch = (float *)(void *)((char *)c->work + tasks_bytes);
    n_tasks = 0;
    /* longest first: prefill tiles at the end of a sequence cost the most */
    for (int32_t s = 0; s < n_seqs; s++) {
        for (int32_t t0 = ((seqs[s].n_new - 1) / tile) * tile; t0 >= 0; t0 -= tile)
            for (int32_t h = 0; h < l->n_kv_heads; h++)
                tasks[n_tasks++] = (attn_task_t){
                    .seq = s, .kv_head = h, .t0 = t0, .row0 = row0,
                    .nt = seqs[s].n_new - t0 < tile ? seqs[s].n_new - t0 : tile};
        row0 += seqs[s].n_new;
    }
    r.tasks = tasks;
    par_for(c, n_tasks, 1, attn_range, &r);
    return DUET_OK;
}

/* --- helpers -------------------------------------------------------------------- */

static duet_status_t cpu_argmax(void *ctx, int32_t *out, const float *x, int32_t n_rows,
                                int64_t n)
{
    if (out == NULL || x == NULL || n_rows < 0 || n <= 0 || n > INT32_MAX)
        return DUET_ERR_INVALID;
    for (int32_t r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * (size_t)n;
        int64_t best = 0;

        for (int64_t i = 1; i < n; i++)
            if (xr[i] > xr[best])
                best = i;
        out[r] = (int32_t)best;
    }
    return DUET_OK;
}

static duet_status_t cpu_softmax(void *ctx, float *x, int32_t n_rows, int64_t n)
{
    if (x == NULL || n_rows < 0 || n <= 0)
        return DUET_ERR_INVALID;
    for (int32_t r = 0; r < n_rows; r++) {
        float *xr = x + (size_t)r * (size_t)n;
        float mx = -INFINITY, sum = 0.0f;

        for (int64_t i = 0; i < n; i++)
            mx = fmaxf(mx, xr[i]);
        for (int64_t i = 0; i < n; i++) {
            xr[i] = expf(xr[i] - mx);
            sum += xr[i];
        }
        for (int64_t i = 0; i < n; i++)
            xr[i] /= sum;
    }
    return DUET_OK;
}

/* --- create / destroy ------------------------------------------------------------ */

static void cpu_destroy(ops_t *ops)
{
    cpu_ctx_t *c;

    if (ops == NULL)
        return;
    c = ops->ctx;
    tpool_destroy(c->pool);
    free(c->act);
    free(c->work);
    free(c);
}

static const cpu_kern_t *kern_for(cpu_isa_t isa)
{
    switch (isa) {
#ifdef DUET_CPU_HAVE_AVX2
    case CPU_ISA_AVX2: return &cpu_kern_avx2;
#endif
#ifdef DUET_CPU_HAVE_AVX512
    case CPU_ISA_AVX512: return &cpu_kern_avx512;
#endif
#ifdef DUET_CPU_HAVE_AVX512_VNNI
    case CPU_ISA_AVX512_VNNI: return &cpu_kern_avx512_vnni;
#endif
    default: return &cpu_kern_ref;
    }
}

/* DUET_CPU_ISA=ref|avx2|avx512|avx512-vnni overrides the automatic choice
 * (benchmarks, debugging); unknown or unsupported values are ignored with a
 * warning. */
static cpu_isa_t cpu_isa_from_env(void)
{
    static const cpu_isa_t all[] = {CPU_ISA_REF, CPU_ISA_AVX2, CPU_ISA_AVX512,
                                    CPU_ISA_AVX512_VNNI};
    const char *e = getenv("DUET_CPU_ISA");

    if (e == NULL || *e == '\0')
        return cpu_isa_best();
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(e, cpu_isa_name(all[i]) + 4) == 0) {   /* skip "cpu-" */
            if (cpu_isa_supported(all[i]))
                return all[i];
            break;
        }
    }
    log_warn("DUET_CPU_ISA=%s is not available here; using %s", e,
             cpu_isa_name(cpu_isa_best()));
    return cpu_isa_best();
}

duet_status_t cpu_backend_create(const cpu_opts_t *opts, ops_t **ops_p)
{
    cpu_opts_t o = opts ? *opts : (cpu_opts_t){0};
    cpu_ctx_t *c;
    duet_status_t st;

    if (o.n_threads < 0)
        return DUET_ERR_INVALID;
    if (o.isa == CPU_ISA_AUTO)
        o.isa = cpu_isa_from_env();
    if (!cpu_isa_supported(o.isa)) {
        log_error("CPU ISA %s is not available on this machine or build", cpu_isa_name(o.isa));
        return DUET_ERR_UNSUPPORTED;
    }
    if (o.n_threads == 0)
        o.n_threads = cpu_n_cores();
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return DUET_ERR_NOMEM;
    CHECK_GOTO(tpool_create(o.n_threads, &c->pool), st, err_ctx);
    c->nth = o.n_threads;
    c->isa = o.isa;
    c->k = kern_for(o.isa);
    c->ops = (ops_t){
        .name = cpu_isa_name(o.isa),
        .ctx = c,
        .embed = cpu_embed,
        .matmul = cpu_matmul,
        .matmul_n = cpu_matmul_n,
        .prepare = cpu_prepare,
        .release = cpu_release,
        .rmsnorm = cpu_rmsnorm,
        .rope = cpu_rope,
        .silu_mul = cpu_silu_mul,
        .add = cpu_add,
        .kv_write = cpu_kv_write,
        .attn = cpu_attn,
        .logits = cpu_matmul,
        .argmax = cpu_argmax,
        .softmax = cpu_softmax,
        .destroy = cpu_destroy,
    };
    *ops_p = &c->ops;
    return DUET_OK;

err_ctx:
    free(c);
    return st;
}
