/* NCCL group backend (built when CUDA is found): device pointers, ops
 * enqueued on a CUDA stream. NCCL's API is C, so this is a C file compiled
 * against the CUDA headers.
 *
 * Bootstrap: a small shm group under "<name>.boot" carries the NCCL unique id
 * from rank 0 to the others and stays up to watch the peers' processes.
 * The communicator is non-blocking (config.blocking = 0), so that a peer that
 * dies or hangs is noticed while polling and the communicator aborted instead
 * of blocking the caller forever. */
#define DUET_LOG_COMPONENT "parallel"
#include "parallel/group_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "common/clock.h"
#include "common/log.h"

typedef struct {
    group_t     *boot;          /* shm group: id exchange and liveness */
    ncclComm_t   comm;
    cudaStream_t stream;
    bool         own_stream;
    float       *scratch;       /* (1) device, for barrier */
    int          device, rank, n;
    uint64_t     timeout_ns;
    bool         broken;
} nccl_ctx_t;

#define NCCL_CHECK(call, ctx, label, st)                                    \
    do {                                                                    \
        ncclResult_t _r = (call);                                           \
        if (_r != ncclSuccess && _r != ncclInProgress) {                    \
            log_error("%s: %s", #call, ncclGetErrorString(_r));             \
            (st) = DUET_ERR_PEER;                                           \
            goto label;                                                     \
        }                                                                   \
    } while (0)

#define CUDA_CHECK(call, label, st)                                         \
    do {                                                                    \
        cudaError_t _e = (call);                                            \
        if (_e != cudaSuccess) {                                            \
            log_error("%s: %s", #call, cudaGetErrorString(_e));             \
            (st) = DUET_ERR_CUDA;                                           \
            goto label;                                                     \
        }                                                                   \
    } while (0)

static ncclDataType_t nccl_type(group_dtype_t dt)
{
    switch (dt) {
    case GROUP_F32:  return ncclFloat32;
    case GROUP_F16:  return ncclFloat16;
    case GROUP_BF16: return ncclBfloat16;
    case GROUP_I32:  return ncclInt32;
    default:         return ncclUint8;
    }
}

static void nccl_break(nccl_ctx_t *c, const char *why)
{
    if (c->broken)
        return;
    log_error("nccl group rank %d: %s; aborting the communicator", c->rank, why);
    c->broken = true;
    if (c->comm != NULL) {
        ncclCommAbort(c->comm);
        c->comm = NULL;
    }
}

/* Poll until the communicator's pending work (and, with stream, the stream)
 * completed; fails on an NCCL error, a dead peer or the timeout. */
static duet_status_t nccl_wait(nccl_ctx_t *c, bool stream)
{
    uint64_t deadline = clock_now_ns() + c->timeout_ns;
    unsigned spins = 0;

    for (;;) {
        ncclResult_t r = ncclInProgress;

        if (c->comm == NULL || ncclCommGetAsyncError(c->comm, &r) != ncclSuccess) {
            nccl_break(c, "communicator error");
            return DUET_ERR_PEER;
        }
        if (r != ncclSuccess && r != ncclInProgress) {
            log_error("nccl: %s", ncclGetErrorString(r));
            nccl_break(c, "asynchronous NCCL error");
            return DUET_ERR_PEER;
        }
        if (r == ncclSuccess) {
            cudaError_t e = stream ? cudaStreamQuery(c->stream) : cudaSuccess;

            if (e == cudaSuccess)
                return DUET_OK;
            if (e != cudaErrorNotReady) {
                log_error("cudaStreamQuery: %s", cudaGetErrorString(e));
                nccl_break(c, "stream error");
                return DUET_ERR_CUDA;
            }
        }
        if ((++spins & 255) == 0) {
            if (group_shm_check_peers(c->boot) != DUET_OK) {
                nccl_break(c, "a peer process is gone");
                return DUET_ERR_PEER;
            }
            if (clock_now_ns() >= deadline) {
                nccl_break(c, "timed out waiting for peers");
                return DUET_ERR_TIMEOUT;
            }
            usleep(50);
        }
    }
}

static duet_status_t nccl_enqueued(nccl_ctx_t *c, ncclResult_t r, const char *what)
{
    if (r != ncclSuccess && r != ncclInProgress) {
        log_error("nccl %s: %s", what, ncclGetErrorString(r));
        nccl_break(c, "collective failed");
        return DUET_ERR_PEER;
    }
    /* non-blocking communicator: the call may still be enqueuing */
    return r == ncclInProgress ? nccl_wait(c, false) : DUET_OK;
}

static duet_status_t nccl_all_reduce(void *ctx, void *dst, const void *src,
                                     size_t count, group_dtype_t dt)
{
    nccl_ctx_t *c = ctx;

    if (c->broken)
        return DUET_ERR_PEER;
    return nccl_enqueued(c, ncclAllReduce(src, dst, count, nccl_type(dt), ncclSum,
                                          c->comm, c->stream), "all_reduce");
}

static duet_status_t nccl_all_gather(void *ctx, void *dst, const void *src,
                                     size_t count, group_dtype_t dt)
{
    nccl_ctx_t *c = ctx;

    if (c->broken)
        return DUET_ERR_PEER;
    return nccl_enqueued(c, ncclAllGather(src, dst, count, nccl_type(dt), c->comm,
                                          c->stream), "all_gather");
}

static duet_status_t nccl_reduce_scatter(void *ctx, void *dst, const void *src,
                                         size_t count, group_dtype_t dt)
{
    nccl_ctx_t *c = ctx;

    if (c->broken)
        return DUET_ERR_PEER;
    return nccl_enqueued(c, ncclReduceScatter(src, dst, count, nccl_type(dt), ncclSum,
                                              c->comm, c->stream), "reduce_scatter");
}

static duet_status_t nccl_broadcast(void *ctx, void *buf, size_t count,
                                    group_dtype_t dt, int root)
{
    nccl_ctx_t *c = ctx;

    if (c->broken)
        return DUET_ERR_PEER;
    return nccl_enqueued(c, ncclBroadcast(buf, buf, count, nccl_type(dt), root, c->comm,
                                          c->stream), "broadcast");
}

static duet_status_t nccl_sync(void *ctx)
{
    nccl_ctx_t *c = ctx;

    return c->broken ? DUET_ERR_PEER : nccl_wait(c, true);
}

static duet_status_t nccl_barrier(void *ctx)
{
    nccl_ctx_t *c = ctx;

    CHECK(nccl_all_reduce(c, c->scratch, c->scratch, 1, GROUP_F32));
    return nccl_sync(c);
}

static void nccl_set_timeout(void *ctx, uint64_t timeout_ns)
{
    nccl_ctx_t *c = ctx;

    c->timeout_ns = timeout_ns;
    group_set_timeout(c->boot, (double)timeout_ns * 1e-9);
}

static bool nccl_ok(void *ctx)
{
    nccl_ctx_t *c = ctx;

    return !c->broken;
}

static void nccl_destroy(void *ctx)
{
    nccl_ctx_t *c = ctx;

    if (c == NULL)
        return;
    if (c->comm != NULL) {
        /* finalize flushes pending work; abort if that fails or hangs */
        if (ncclCommFinalize(c->comm) != ncclSuccess && !c->broken)
            c->broken = true;
        if (!c->broken && nccl_wait(c, false) == DUET_OK)
            ncclCommDestroy(c->comm);
        else if (c->comm != NULL)
            ncclCommAbort(c->comm);
    }
    if (c->scratch != NULL)
        cudaFree(c->scratch);
    if (c->own_stream && c->stream != NULL)
        cudaStreamDestroy(c->stream);
    group_destroy(c->boot);
    free(c);
}

duet_status_t group_nccl_create(const group_config_t *cfg, void **ctx_p)
{
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    ncclUniqueId id;
    group_config_t bc = *cfg;
    char boot_name[224];
    nccl_ctx_t *c;
    int ndev = 0;
    duet_status_t s = DUET_OK;

    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        log_error("nccl group: no CUDA device");
        return DUET_ERR_NOT_FOUND;
    }
    if (cfg->cuda_device < 0 || cfg->cuda_device >= ndev) {
        log_error("nccl group: device %d outside 0..%d", cfg->cuda_device, ndev - 1);
        return DUET_ERR_INVALID;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return DUET_ERR_NOMEM;
    c->device = cfg->cuda_device;
    c->rank = cfg->rank;
    c->n = cfg->world_size;
    c->timeout_ns = (uint64_t)((cfg->timeout_s > 0 ? cfg->timeout_s : 10.0) * 1e9);

    /* the unique id goes from rank 0 through the shm bootstrap group */
    snprintf(boot_name, sizeof(boot_name), "%s.boot", cfg->name ? cfg->name : "nccl");
    bc.backend = GROUP_BACKEND_SHM;
    bc.name = boot_name;
    bc.slot_bytes = 4096;
    CHECK_GOTO(group_create(&bc, &c->boot), s, err_free);
    memset(&id, 0, sizeof(id));
    if (cfg->rank == 0)
        NCCL_CHECK(ncclGetUniqueId(&id), c, err_boot, s);
    CHECK_GOTO(group_broadcast(c->boot, &id, sizeof(id), GROUP_U8, 0), s, err_boot);

    CUDA_CHECK(cudaSetDevice(c->device), err_boot, s);
    if (cfg->cuda_stream != NULL) {
        c->stream = (cudaStream_t)cfg->cuda_stream;
    } else {
        CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), err_boot, s);
        c->own_stream = true;
    }
    CUDA_CHECK(cudaMalloc((void **)&c->scratch, sizeof(float)), err_stream, s);
    CUDA_CHECK(cudaMemset(c->scratch, 0, sizeof(float)), err_scratch, s);

    config.blocking = 0;
    NCCL_CHECK(ncclCommInitRankConfig(&c->comm, c->n, id, c->rank, &config), c,
               err_scratch, s);
    CHECK_GOTO(nccl_wait(c, false), s, err_scratch);
    *ctx_p = c;
    return DUET_OK;

err_scratch:
    if (c->comm != NULL)
        ncclCommAbort(c->comm);
    cudaFree(c->scratch);
err_stream:
    if (c->own_stream)
        cudaStreamDestroy(c->stream);
err_boot:
    group_destroy(c->boot);
err_free:
    free(c);
    return s;
}

const group_ops_t group_nccl_ops = {
    .name           = "nccl",
    .all_reduce     = nccl_all_reduce,
    .all_gather     = nccl_all_gather,
    .reduce_scatter = nccl_reduce_scatter,
    .broadcast      = nccl_broadcast,
    .barrier        = nccl_barrier,
    .sync           = nccl_sync,
    .poison         = NULL,
    .ok             = nccl_ok,
    .input_buffer   = NULL,
    .set_timeout    = nccl_set_timeout,
    .destroy        = nccl_destroy,
};
