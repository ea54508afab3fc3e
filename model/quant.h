/* Quantizers that write ggml's block layouts from floats, with ggml's
 * reference rounding (quantize_row_*_ref in ggml-quants.c), bit-identical to
 * the gguf Python package's gguf.quants.quantize. Portable C for writing
 * files; the fast kernels live in kernels/. The inverse is gguf_dequantize
 * (model/gguf.h). */
#ifndef DUET_MODEL_QUANT_H
#define DUET_MODEL_QUANT_H

#include <stdint.h>

#include "common/dtype.h"

/* Quantize n floats of src (n a multiple of dtype_block_elems(t)) into dst,
 * which holds dtype_row_bytes(t, n) bytes. Every dtype_t is accepted:
 * F32 copies, F16 and BF16 round to nearest even, and
 *   Q8_0: d = amax / 127, q = roundf(x / d) (half away from zero);
 *   Q4_0: d = m / -8 with m the element of largest magnitude (first one on
 *         ties), q = min(15, trunc(x / d + 8.5));
 *   Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min) / d + 0.5));
 * where "/ d" is a multiply by the float 1/d (0 when d is 0), every step
 * rounded to float, and d, m stored as f16. */
void quant_quantize(void *dst, const float *src, dtype_t t, int64_t n);

#endif
