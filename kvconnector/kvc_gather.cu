/* The batched staging copy: one kernel moves a layer's scattered KV pieces
 * from device memory straight into pinned host memory (a decode slab mapped
 * here), one thread block per piece, 16 bytes a thread when aligned. */
#include <cstdint>

#include <cuda_runtime.h>

#include "kvconnector/kvc_cuda_int.h"

static __global__ void kvc_gather(const kvc_cuda_piece_t *v, int n)
{
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const char *src = (const char *)v[i].src;
        char *dst = (char *)v[i].dst;
        size_t len = v[i].len;

        if ((((uintptr_t)src | (uintptr_t)dst | len) & 15) == 0) {
            const uint4 *s4 = (const uint4 *)src;
            uint4 *d4 = (uint4 *)dst;

            for (size_t k = threadIdx.x; k < len / 16; k += blockDim.x)
                d4[k] = s4[k];
        } else {
            for (size_t k = threadIdx.x; k < len; k += blockDim.x)
                dst[k] = src[k];
        }
    }
}

extern "C" int kvc_cuda_gather_launch(const kvc_cuda_piece_t *v, int n, cudaStream_t stream)
{
    int blocks = n < 1024 ? n : 1024;

    kvc_gather<<<blocks, 256, 0, stream>>>(v, n);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}
