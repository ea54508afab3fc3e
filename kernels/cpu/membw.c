/* Memory read bandwidth: every thread streams its slice of one large buffer
 * through the widest load the CPU has; the best of several passes counts.
 * The engine bench divides its weight traffic by this figure. */
#define DUET_LOG_COMPONENT "kernels"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common/log.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/cpu/threadpool.h"

typedef struct {
    const cpu_kern_t *k;
    const uint8_t    *buf;
    size_t            bytes;
    _Atomic uint64_t  sink;
} membw_t;

static void membw_worker(void *arg, int ith, int nth)
{
    membw_t *m = arg;
    size_t slice = (m->bytes / (size_t)nth) & ~(size_t)4095;
    uint64_t v = m->k->read_sum(m->buf + (size_t)ith * slice, slice);

    atomic_fetch_xor(&m->sink, v);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

duet_status_t cpu_membw_measure(int n_threads, size_t bytes, int passes, double *gbps_p)
{
    cpu_isa_t isa = cpu_isa_best();
    membw_t m = {.bytes = bytes};
    tpool_t *pool = NULL;
    void *buf;
    double best = 0.0;
    duet_status_t st;
    size_t slice;

    if (n_threads < 0 || passes < 1 || bytes < (1u << 20) || gbps_p == NULL)
        return DUET_ERR_INVALID;
    if (n_threads == 0)
        n_threads = cpu_n_cores();
    m.k = &cpu_kern_ref;
#ifdef DUET_CPU_HAVE_AVX2
    if (isa != CPU_ISA_REF)
        m.k = &cpu_kern_avx2;   /* 32-byte loads already saturate memory */
#endif
    buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return DUET_ERR_NOMEM;
    madvise(buf, bytes, MADV_HUGEPAGE);
    memset(buf, 0x5a, bytes);                   /* fault every page in */
    m.buf = buf;
    CHECK_GOTO(tpool_create(n_threads, &pool), st, err_buf);
    slice = (bytes / (size_t)n_threads) & ~(size_t)4095;
    for (int p = 0; p <= passes; p++) {
        double t0 = now_s(), dt;

        tpool_run(pool, membw_worker, &m);
        dt = now_s() - t0;
        if (p > 0 && dt > 0.0 && (double)(slice * (size_t)n_threads) / dt / 1e9 > best)
            best = (double)(slice * (size_t)n_threads) / dt / 1e9;
    }
    tpool_destroy(pool);
    munmap(buf, bytes);
    *gbps_p = best;
    return DUET_OK;

err_buf:
    munmap(buf, bytes);
    return st;
}
