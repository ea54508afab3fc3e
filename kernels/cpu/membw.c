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

#define MEMBW_PIECES 256

typedef struct {
    const cpu_kern_t *k;
    const uint8_t    *buf;
    size_t            piece;       /* bytes per piece */
    _Atomic int       next;
    _Atomic uint64_t  sink;
} membw_t;

static void membw_worker(void *arg, int ith, int nth)
{
    membw_t *m = arg;
    uint64_t v = 0;
    int i;

    while ((i = atomic_fetch_add(&m->next, 1)) < MEMBW_PIECES)
        v ^= m->k->read_sum(m->buf + (size_t)i * m->piece, m->piece);
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
    membw_t m = {.piece = (bytes / MEMBW_PIECES) & ~(size_t)4095};
    tpool_t *pool = NULL;
    void *buf;
    double best = 0.0;
    duet_status_t st;

    if (n_threads < 0 || passes < 1 || bytes < (4u << 20) || gbps_p == NULL)
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
    for (int p = 0; p <= passes; p++) {
        double t0 = now_s(), dt;

        atomic_store(&m.next, 0);
        tpool_run(pool, membw_worker, &m);
        dt = now_s() - t0;
        if (p > 0 && dt > 0.0 && (double)(m.piece * MEMBW_PIECES) / dt / 1e9 > best)
            best = (double)(m.piece * MEMBW_PIECES) / dt / 1e9;
    }
    tpool_destroy(pool);
    munmap(buf, bytes);
    *gbps_p = best;
    return DUET_OK;

err_buf:
    munmap(buf, bytes);
    return st;
}
