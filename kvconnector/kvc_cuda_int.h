/* Between kvc_cuda.c and the gather kernel (kvc_gather.cu), which nvcc
 * compiles as C++ without kvc.h: kvc_cuda_piece_t has kvc_copy_t's layout. */
#ifndef DUET_KVC_CUDA_INT_H
#define DUET_KVC_CUDA_INT_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    void       *dst;
    const void *src;
    size_t      len;
} kvc_cuda_piece_t;

/* Launch the copy of v[0..n) (v in device memory) on stream; 0 or -1. */
int kvc_cuda_gather_launch(const kvc_cuda_piece_t *v, int n, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
