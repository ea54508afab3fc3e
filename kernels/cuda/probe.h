/* Proof that the GPU toolchain works end to end: a kernel, cuBLAS and NCCL. */
#ifndef DUET_KERNELS_CUDA_PROBE_H
#define DUET_KERNELS_CUDA_PROBE_H

#include <stddef.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Run a vector add kernel, a cuBLAS SGEMM and a one-rank NCCL all-reduce on
 * device 0 and check their results. Writes a one-line description into desc.
 * DUET_ERR_NOT_FOUND when no GPU is present; DUET_ERR_CUDA on any failure. */
duet_status_t cuda_probe_run(char *desc, size_t desc_len);

#ifdef __cplusplus
}
#endif

#endif
