/* Group coordinator front end: argument checks, groups of one, dispatch to
 * the backend table; and the parallel state (world, TP and PP groups). */
#define DUET_LOG_COMPONENT "parallel"
#include "parallel/group_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

struct group {
    const group_ops_t *ops;     /* NULL for a group of one */
    void              *ctx;
    int                rank, size;
    group_backend_t    backend;
};

size_t group_dtype_size(group_dtype_t dt)
{
    switch (dt) {
    case GROUP_F32:
    case GROUP_I32:  return 4;
    case GROUP_F16:
    case GROUP_BF16: return 2;
    case GROUP_U8:   return 1;
    default:         return 0;
    }
}

const char *group_dtype_name(group_dtype_t dt)
{
    switch (dt) {
    case GROUP_F32:  return "f32";
    case GROUP_F16:  return "f16";
    case GROUP_BF16: return "bf16";
    case GROUP_I32:  return "i32";
    case GROUP_U8:   return "u8";
    default:         return "unknown";
    }
}

duet_status_t group_unique_name(const char *tag, char *buf, size_t len)
{
    static _Atomic unsigned counter;    /* names made by this process */
    struct timespec ts;
    int n;

    if (tag == NULL || buf == NULL)
        return DUET_ERR_INVALID;
    clock_gettime(CLOCK_REALTIME, &ts);
    n = snprintf(buf, len, "duet.%s.%d.%u.%08lx", tag, (int)getpid(),
                 atomic_fetch_add(&counter, 1),
                 (unsigned long)(((uint64_t)ts.tv_nsec * 2654435761u) ^ (uint64_t)ts.tv_sec) &
                     0xffffffffu);
    if (n < 0 || (size_t)n >= len || !pshm_name_valid(buf))
        return n >= 0 && (size_t)n >= len ? DUET_ERR_TOO_BIG : DUET_ERR_INVALID;
    return DUET_OK;
}

duet_status_t group_create(const group_config_t *cfg, group_t **group_p)
{
    group_t *g;
    duet_status_t s;

    if (cfg == NULL || group_p == NULL)
        return DUET_ERR_INVALID;
    if (cfg->world_size < 1 || cfg->rank < 0 || cfg->rank >= cfg->world_size) {
        log_error("group: bad rank %d / world size %d", cfg->rank, cfg->world_size);
        return DUET_ERR_INVALID;
    }
    if (cfg->timeout_s < 0 || (cfg->slot_bytes != 0 && cfg->slot_bytes < 4096)) {
        log_error("group: bad timeout %.3f s or slot size %zu (>= 4096)",
                  cfg->timeout_s, cfg->slot_bytes);
        return DUET_ERR_INVALID;
    }
    if (cfg->world_size > 1 && !pshm_name_valid(cfg->name)) {
        log_error("group: bad name '%s' (1-200 chars of [A-Za-z0-9._-])",
                  cfg->name ? cfg->name : "(null)");
        return DUET_ERR_INVALID;
    }
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return DUET_ERR_NOMEM;
    g->rank = cfg->rank;
    g->size = cfg->world_size;
    g->backend = cfg->backend;
    switch (cfg->backend) {
    case GROUP_BACKEND_SHM:
        if (g->size > 1) {
            g->ops = &group_shm_ops;
            CHECK_GOTO(group_shm_create(cfg, &g->ctx), s, err_free);
        }
        break;
    case GROUP_BACKEND_NCCL:
#if DUET_HAVE_CUDA
        /* NCCL handles a group of one too: device memory stays on device */
        g->ops = &group_nccl_ops;
        CHECK_GOTO(group_nccl_create(cfg, &g->ctx), s, err_free);
        break;
#else
        log_error("group: the NCCL backend is not built (no CUDA)");
        s = DUET_ERR_UNSUPPORTED;
        goto err_free;
#endif
    default:
        log_error("group: unknown backend %d", (int)cfg->backend);
        s = DUET_ERR_INVALID;
        goto err_free;
    }
    *group_p = g;
    return DUET_OK;

err_free:
    free(g);
    return s;
}

void group_destroy(group_t *g)
{
    if (g == NULL)
        return;
    if (g->ops != NULL)
        g->ops->destroy(g->ctx);
    free(g);
}

int group_rank(const group_t *g)
{
    return g->rank;
}

int group_size(const group_t *g)
{
    return g->size;
}

const char *group_backend_name(const group_t *g)
{
    return g->ops != NULL ? g->ops->name : "local";
}

duet_status_t group_set_timeout(group_t *g, double timeout_s)
{
    if (g == NULL || !(timeout_s > 0) || timeout_s > 1e6)
        return DUET_ERR_INVALID;
    if (g->ops != NULL)
        g->ops->set_timeout(g->ctx, (uint64_t)(timeout_s * 1e9));
    return DUET_OK;
}

bool group_ok(const group_t *g)
{
    return g->ops == NULL || g->ops->ok(g->ctx);
}

duet_status_t group_shm_check_peers(group_t *g)
{
    if (g == NULL || g->ops != &group_shm_ops)
        return DUET_OK;
    return group_shm_ctx_check_peers(g->ctx);
}

/* Bad arguments on this rank: fail here and make the peers fail the same
 * collective instead of pairing it with our next one. */
static duet_status_t bad_call(group_t *g, const char *op, const char *why)
{
    log_error("group %s: rank %d: %s: %s", group_backend_name(g), g->rank, op, why);
    if (g->ops != NULL && g->ops->poison != NULL)
        g->ops->poison(g->ctx);
    return DUET_ERR_INVALID;
}

static const char *check_args(group_dtype_t dt, const void *a, const void *b, size_t count)
{
    if ((unsigned)dt >= GROUP_DTYPE_COUNT)
        return "unknown dtype";
    if (count > ((size_t)1 << 40))
        return "count too large";
    if (count > 0 && (a == NULL || b == NULL))
        return "NULL buffer";
    return NULL;
}

duet_status_t group_all_reduce(group_t *g, void *dst, const void *src,
                               size_t count, group_dtype_t dt)
{
    const char *why;

    if (g == NULL)
        return DUET_ERR_INVALID;
    why = check_args(dt, dst, src, count);
    if (why != NULL)
        return bad_call(g, "all_reduce", why);
    if (g->ops == NULL) {
        if (dst != src && count > 0)
            memmove(dst, src, count * group_dtype_size(dt));
        return DUET_OK;
    }
    return g->ops->all_reduce(g->ctx, dst, src, count, dt);
}

duet_status_t group_all_gather(group_t *g, void *dst, const void *src,
                               size_t count, group_dtype_t dt)
{
    const char *why;

    if (g == NULL)
        return DUET_ERR_INVALID;
    why = check_args(dt, dst, src, count);
    if (why != NULL)
        return bad_call(g, "all_gather", why);
    if (g->ops == NULL) {
        if (dst != src && count > 0)
            memmove(dst, src, count * group_dtype_size(dt));
        return DUET_OK;
    }
    return g->ops->all_gather(g->ctx, dst, src, count, dt);
}

duet_status_t group_reduce_scatter(group_t *g, void *dst, const void *src,
                                   size_t count, group_dtype_t dt)
{
    const char *why;

    if (g == NULL)
        return DUET_ERR_INVALID;
    why = check_args(dt, dst, src, count);
    if (why != NULL)
        return bad_call(g, "reduce_scatter", why);
    if (g->ops == NULL) {
        if (dst != src && count > 0)
            memmove(dst, src, count * group_dtype_size(dt));
        return DUET_OK;
    }
    return g->ops->reduce_scatter(g->ctx, dst, src, count, dt);
}

duet_status_t group_broadcast(group_t *g, void *buf, size_t count,
                              group_dtype_t dt, int root)
{
    const char *why;

    if (g == NULL)
        return DUET_ERR_INVALID;
    why = check_args(dt, buf, buf, count);
    if (why == NULL && (root < 0 || root >= g->size))
        why = "root out of range";
    if (why != NULL)
        return bad_call(g, "broadcast", why);
    if (g->ops == NULL)
        return DUET_OK;
    return g->ops->broadcast(g->ctx, buf, count, dt, root);
}

duet_status_t group_barrier(group_t *g)
{
    if (g == NULL)
        return DUET_ERR_INVALID;
    return g->ops == NULL ? DUET_OK : g->ops->barrier(g->ctx);
}

void *group_input_buffer(group_t *g, size_t bytes)
{
    if (g == NULL || g->ops == NULL || g->ops->input_buffer == NULL)
        return NULL;
    return g->ops->input_buffer(g->ctx, bytes);
}

duet_status_t group_sync(group_t *g)
{
    if (g == NULL)
        return DUET_ERR_INVALID;
    return g->ops == NULL ? DUET_OK : g->ops->sync(g->ctx);
}

/* ---- parallel state ----------------------------------------------------- */

struct parallel {
    group_t *world, *tp, *pp;
    int      tp_rank, tp_size, pp_rank, pp_size;
};

static duet_status_t make_group(const parallel_config_t *cfg, const char *kind,
                                int index, int rank, int size, group_t **g_p)
{
    char name[224];
    group_config_t gc = {
        .backend = cfg->backend, .rank = rank, .world_size = size,
        .name = name, .timeout_s = cfg->timeout_s, .slot_bytes = cfg->slot_bytes,
        .cuda_device = cfg->cuda_device, .cuda_stream = cfg->cuda_stream,
    };

    if (index >= 0)
        snprintf(name, sizeof(name), "%s.%s%d", cfg->prefix, kind, index);
    else
        snprintf(name, sizeof(name), "%s.%s", cfg->prefix, kind);
    return group_create(&gc, g_p);
}

duet_status_t parallel_create(const parallel_config_t *cfg, parallel_t **par_p)
{
    parallel_t *p;
    int world;
    duet_status_t s;

    if (cfg == NULL || par_p == NULL || cfg->tp_size < 1 || cfg->pp_size < 1 ||
        cfg->tp_size > 64 || cfg->pp_size > 64) {
        log_error("parallel: bad configuration (tp and pp sizes must be 1..64)");
        return DUET_ERR_INVALID;
    }
    world = cfg->tp_size * cfg->pp_size;
    if (cfg->world_rank < 0 || cfg->world_rank >= world) {
        log_error("parallel: world rank %d outside 0..%d", cfg->world_rank, world - 1);
        return DUET_ERR_INVALID;
    }
    if (world > 1 && (cfg->prefix == NULL || strlen(cfg->prefix) > 160 ||
                      !pshm_name_valid(cfg->prefix))) {
        log_error("parallel: bad group name prefix");
        return DUET_ERR_INVALID;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return DUET_ERR_NOMEM;
    p->tp_size = cfg->tp_size;
    p->pp_size = cfg->pp_size;
    p->tp_rank = cfg->world_rank % cfg->tp_size;
    p->pp_rank = cfg->world_rank / cfg->tp_size;
    /* Created in the same order on every rank: world, TP, PP. */
    CHECK_GOTO(make_group(cfg, "world", -1, cfg->world_rank, world, &p->world), s, err_free);
    CHECK_GOTO(make_group(cfg, "tp", p->pp_rank, p->tp_rank, p->tp_size, &p->tp), s, err_world);
    CHECK_GOTO(make_group(cfg, "pp", p->tp_rank, p->pp_rank, p->pp_size, &p->pp), s, err_tp);
    *par_p = p;
    return DUET_OK;

err_tp:
    group_destroy(p->tp);
err_world:
    group_destroy(p->world);
err_free:
    free(p);
    return s;
}

void parallel_destroy(parallel_t *par)
{
    if (par == NULL)
        return;
    group_destroy(par->pp);
    group_destroy(par->tp);
    group_destroy(par->world);
    free(par);
}

group_t *parallel_world(const parallel_t *par) { return par->world; }
group_t *parallel_tp(const parallel_t *par) { return par->tp; }
group_t *parallel_pp(const parallel_t *par) { return par->pp; }
int parallel_tp_rank(const parallel_t *par) { return par->tp_rank; }
int parallel_tp_size(const parallel_t *par) { return par->tp_size; }
int parallel_pp_rank(const parallel_t *par) { return par->pp_rank; }
int parallel_pp_size(const parallel_t *par) { return par->pp_size; }
