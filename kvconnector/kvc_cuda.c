/* The staging copy for device slabs in CUDA builds: device -> pinned host. */
#define DUET_LOG_COMPONENT "kvc"

#include <cuda_runtime.h>

#include "common/log.h"
#include "kvconnector/kvc.h"

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
    cudaError_t e = cudaHostRegister(ptr, len, cudaHostRegisterPortable);

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
