// GPU toolchain probe: one kernel, one cuBLAS call, one NCCL collective.
#include "kernels/cuda/probe.h"

#include <cstdio>
#include <cmath>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

__global__ static void probe_add(float *out, const float *a, const float *b, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = a[i] + b[i];
}

#define PROBE_CUDA(call, label)                                             \
    do {                                                                    \
        cudaError_t _e = (call);                                            \
        if (_e != cudaSuccess) {                                            \
            std::snprintf(desc, desc_len, "%s:%d %s: %s", __FILE__, __LINE__, \
                          #call, cudaGetErrorString(_e));                   \
            goto label;                                                     \
        }                                                                   \
    } while (0)

extern "C" duet_status_t cuda_probe_run(char *desc, size_t desc_len)
{
    const int n = 256;
    float host[n], *a = nullptr, *b = nullptr, *c = nullptr;
    cublasHandle_t blas = nullptr;
    ncclComm_t comm = nullptr;
    cudaDeviceProp prop;
    int ndev = 0, dev = 0, nccl_version = 0;
    const float one = 1.0f, zero = 0.0f;
    duet_status_t status = DUET_ERR_CUDA;

    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        std::snprintf(desc, desc_len, "no CUDA device");
        return DUET_ERR_NOT_FOUND;
    }
    PROBE_CUDA(cudaGetDeviceProperties(&prop, 0), err_out);
    PROBE_CUDA(cudaMalloc(&a, n * sizeof(float)), err_out);
    PROBE_CUDA(cudaMalloc(&b, n * sizeof(float)), err_free);
    PROBE_CUDA(cudaMalloc(&c, n * sizeof(float)), err_free);
    for (int i = 0; i < n; i++)
        host[i] = (float)i;
    PROBE_CUDA(cudaMemcpy(a, host, sizeof(host), cudaMemcpyHostToDevice), err_free);
    PROBE_CUDA(cudaMemcpy(b, host, sizeof(host), cudaMemcpyHostToDevice), err_free);
    probe_add<<<(n + 127) / 128, 128>>>(c, a, b, n);
    PROBE_CUDA(cudaGetLastError(), err_free);
    PROBE_CUDA(cudaMemcpy(host, c, sizeof(host), cudaMemcpyDeviceToHost), err_free);
    for (int i = 0; i < n; i++) {
        if (host[i] != 2.0f * (float)i) {
            std::snprintf(desc, desc_len, "vector add wrong at %d", i);
            goto err_free;
        }
    }
    // 16x16 SGEMM of c (as a 16x16 matrix) by identity-scaled b: checks the link
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
        std::snprintf(desc, desc_len, "cublasCreate failed");
        goto err_free;
    }
    if (cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, 16, 16, 16, &one, c, 16, a, 16,
                    &zero, b, 16) != CUBLAS_STATUS_SUCCESS) {
        std::snprintf(desc, desc_len, "cublasSgemm failed");
        goto err_blas;
    }
    PROBE_CUDA(cudaDeviceSynchronize(), err_blas);
    if (ncclGetVersion(&nccl_version) != ncclSuccess ||
        ncclCommInitAll(&comm, 1, &dev) != ncclSuccess ||
        ncclAllReduce(a, c, n, ncclFloat, ncclSum, comm, 0) != ncclSuccess) {
        std::snprintf(desc, desc_len, "NCCL one-rank all-reduce failed");
        goto err_comm;
    }
    PROBE_CUDA(cudaMemcpy(host, c, sizeof(host), cudaMemcpyDeviceToHost), err_comm);
    if (host[7] != 7.0f) {
        std::snprintf(desc, desc_len, "NCCL all-reduce result wrong");
        goto err_comm;
    }
    std::snprintf(desc, desc_len, "%s (sm_%d%d, %d devices), NCCL %d", prop.name,
                  prop.major, prop.minor, ndev, nccl_version);
    status = DUET_OK;
err_comm:
    if (comm)
        ncclCommDestroy(comm);
err_blas:
    cublasDestroy(blas);
err_free:
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
err_out:
    return status;
}
