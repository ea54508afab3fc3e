/* The staging copies for device slabs in CUDA builds: device -> pinned host,
 * one by one (cudaMemcpy) or a batch in one kernel (kvc_gather.cu). */
#define DUET_LOG_COMPONENT "kvc"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "common/log.h"
#include "kvconnector/kvc.h"
#include "kvconnector/kvc_cuda_int.h"

duet_status_t kvc_cuda_copy_d2h(void *arg, void *dst, const void *src, size_t len)
{
    cudaError_t e = cudaMemcpy(dst, src, len, cudaMemcpyDeviceToHost);

    (void)arg;
    if (e != cudaSuccess) {
        log_error("staging copy of %zu bytes failed: %s", len, cudaGetErrorString(e));
        return DUET_ERR_CUDA;
    }
    return DUET_OK;
}

duet_status_t kvc_cuda_pin(void *arg, void *ptr, size_t len)
{
    cudaError_t e = cudaHostRegister(ptr, len, cudaHostRegisterPortable | cudaHostRegisterMapped);

    (void)arg;
    if (e != cudaSuccess) {
        (void)cudaGetLastError();   /* not sticky: clear it */
        log_warn("cudaHostRegister of %zu bytes: %s", len, cudaGetErrorString(e));
        return DUET_ERR_CUDA;
    }
    return DUET_OK;
}

void kvc_cuda_unpin(void *arg, void *ptr)
{
    (void)arg;
    if (cudaHostUnregister(ptr) != cudaSuccess)
        (void)cudaGetLastError();
}

/* ---- batched copies: one kernel per batch -------------------------------- */

_Static_assert(sizeof(kvc_cuda_piece_t) == sizeof(kvc_copy_t) &&
               offsetof(kvc_cuda_piece_t, src) == offsetof(kvc_copy_t, src) &&
               offsetof(kvc_cuda_piece_t, len) == offsetof(kvc_copy_t, len),
               "kvc_cuda_piece_t must have kvc_copy_t's layout");

struct kvc_cuda_batch {
    cudaStream_t      stream;
    kvc_cuda_piece_t *host;     /* pinned, [cap]: the descriptors, uploaded */
    kvc_cuda_piece_t *dev;      /* [cap] */
    int               cap;
};

duet_status_t kvc_cuda_batch_create(kvc_cuda_batch_t **out)
{
    kvc_cuda_batch_t *b;
    int dev = 0, host_ptr_ok = 0;

    /* the kernel writes through the host pointers of registered memory */
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&host_ptr_ok, cudaDevAttrCanUseHostPointerForRegisteredMem,
                               dev) != cudaSuccess || !host_ptr_ok) {
        (void)cudaGetLastError();
        log_info("this device cannot use host pointers of registered memory: "
                 "staging copies go one by one");
        return DUET_ERR_UNSUPPORTED;
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return DUET_ERR_NOMEM;
    if (cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking) != cudaSuccess) {
        (void)cudaGetLastError();
        free(b);
        return DUET_ERR_CUDA;
    }
    *out = b;
    return DUET_OK;
}

void kvc_cuda_batch_destroy(kvc_cuda_batch_t *b)
{
    if (b == NULL)
        return;
    cudaFreeHost(b->host);
    cudaFree(b->dev);
    cudaStreamDestroy(b->stream);
    free(b);
}

static duet_status_t batch_reserve(kvc_cuda_batch_t *b, int n)
{
    int cap = b->cap ? b->cap : 1024;

    if (n <= b->cap)
        return DUET_OK;
    while (cap < n)
        cap *= 2;
    cudaFreeHost(b->host);
    cudaFree(b->dev);
    b->host = NULL;
    b->dev = NULL;
    b->cap = 0;
    if (cudaMallocHost((void **)&b->host, (size_t)cap * sizeof(*b->host)) != cudaSuccess ||
        cudaMalloc((void **)&b->dev, (size_t)cap * sizeof(*b->dev)) != cudaSuccess) {
        (void)cudaGetLastError();
        return DUET_ERR_NOMEM;
    }
    b->cap = cap;
    return DUET_OK;
}

duet_status_t kvc_cuda_copy_batch_d2h(void *arg, const kvc_copy_t *v, int n)
{
    kvc_cuda_batch_t *b = arg;
    cudaError_t e;

    CHECK(batch_reserve(b, n));
    memcpy(b->host, v, (size_t)n * sizeof(*v));
    e = cudaMemcpyAsync(b->dev, b->host, (size_t)n * sizeof(*v), cudaMemcpyHostToDevice,
                        b->stream);
    if (e == cudaSuccess && kvc_cuda_gather_launch(b->dev, n, b->stream) != 0)
        e = cudaErrorLaunchFailure;
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(b->stream);
    if (e != cudaSuccess) {
        log_error("batched staging copy of %d pieces failed: %s", n, cudaGetErrorString(e));
        return DUET_ERR_CUDA;
    }
    return DUET_OK;
}
