/* Fork-join pool: a generation counter announces each job; workers spin on
 * it for about SPIN_NS, then futex-wait. A worker joins a job by counting
 * itself in `active` and checking that the job is still open; the caller
 * closes the job when its own share is done and waits for `active` to drain,
 * spinning then sleeping the same way. Sleepers are counted so that a wake
 * syscall is made only when someone sleeps. (seq_cst on the join/close pair:
 * either the caller sees the worker counted, or the worker sees the job
 * closed.) */
#define DUET_LOG_COMPONENT "kernels"

#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "kernels/cpu/threadpool.h"

#define SPIN_NS 200000   /* ~ the gap between two ops of a decode step */

struct tpool {
    int               n;
    pthread_t        *threads;     /* (n - 1) */
    tpool_fn_t        fn;
    void             *arg;
    _Atomic uint32_t  gen;         /* bumped once per job */
    _Atomic uint32_t  active;      /* workers inside fn */
    _Atomic int       closed;      /* no more joins for the current job */
    _Atomic int       sleepers;    /* workers in futex_wait on gen */
    _Atomic int       main_sleeps; /* caller in futex_wait on active */
    _Atomic int       stop;
};

typedef struct {
    tpool_t *pool;
    int      ith;
} tpool_worker_t;

static void futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Wait until *addr != val: spin, then sleep. */
static uint32_t wait_change(_Atomic uint32_t *addr, uint32_t val, _Atomic int *sleep_flag)
{
    uint64_t t0 = 0;
    uint32_t cur;

    for (unsigned i = 0;; i++) {
        cur = atomic_load_explicit(addr, memory_order_acquire);
        if (cur != val)
            return cur;
        cpu_relax();
        if ((i & 255) != 255)
            continue;
        if (t0 == 0) {
            t0 = now_ns();
        } else if (now_ns() - t0 > SPIN_NS) {
            atomic_fetch_add(sleep_flag, 1);
            cur = atomic_load(addr);
            if (cur == val)
                futex_wait(addr, val);
            atomic_fetch_sub(sleep_flag, 1);
        }
    }
}

static void *tpool_worker_main(void *p)
{
    tpool_worker_t *w = p;
    tpool_t *pool = w->pool;
    uint32_t gen = 0;

    for (;;) {
        gen = wait_change(&pool->gen, gen, &pool->sleepers);
        if (atomic_load(&pool->stop))
            break;
        atomic_fetch_add(&pool->active, 1);
        if (!atomic_load(&pool->closed))
            pool->fn(pool->arg, w->ith, pool->n);
        if (atomic_fetch_sub(&pool->active, 1) == 1 && atomic_load(&pool->main_sleeps))
            futex_wake(&pool->active, 1);
    }
    free(w);
    return NULL;
}

duet_status_t tpool_create(int n_threads, tpool_t **pool_p)
{
    tpool_t *pool;
    int i;

    if (n_threads < 1)
        return DUET_ERR_INVALID;
    pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return DUET_ERR_NOMEM;
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (pool->threads == NULL)
        goto err_pool;
    pool->n = 1;
    for (i = 1; i < n_threads; i++) {
        tpool_worker_t *w = malloc(sizeof(*w));

        if (w == NULL)
            goto err_threads;
        w->pool = pool;
        w->ith = i;
        if (pthread_create(&pool->threads[i - 1], NULL, tpool_worker_main, w) != 0) {
            free(w);
            log_error("cannot start kernel thread %d of %d", i, n_threads);
            goto err_threads;
        }
        pool->n++;
    }
    *pool_p = pool;
    return DUET_OK;

err_threads:
    tpool_destroy(pool);
    return DUET_ERR_NO_RESOURCE;
err_pool:
    free(pool);
    return DUET_ERR_NOMEM;
}

void tpool_destroy(tpool_t *pool)
{
    if (pool == NULL)
        return;
    atomic_store(&pool->stop, 1);
    atomic_fetch_add(&pool->gen, 1);
    futex_wake(&pool->gen, 1 << 30);
    for (int i = 1; i < pool->n; i++)
        pthread_join(pool->threads[i - 1], NULL);
    free(pool->threads);
    free(pool);
}

int tpool_size(const tpool_t *pool)
{
    return pool->n;
}

void tpool_run(tpool_t *pool, tpool_fn_t fn, void *arg)
{
    uint32_t left;

    if (pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    /* no worker is inside fn here (active drained at the end of the last job) */
    pool->fn = fn;
    pool->arg = arg;
    atomic_store(&pool->closed, 0);
    atomic_fetch_add(&pool->gen, 1);             /* seq_cst: publishes fn, arg */
    if (atomic_load(&pool->sleepers) > 0)
        futex_wake(&pool->gen, 1 << 30);
    fn(arg, 0, pool->n);
    atomic_store(&pool->closed, 1);
    while ((left = atomic_load(&pool->active)) != 0)
        wait_change(&pool->active, left, &pool->main_sleeps);
}
