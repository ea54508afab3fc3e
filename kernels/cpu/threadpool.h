/* A fork-join thread pool for the CPU kernels. tpool_run runs fn on the
 * caller (thread 0) and on every worker that joins before the caller has
 * finished its own share and closed the job; it returns when all who joined
 * are done. So fn must take its work from a shared counter (dynamic
 * chunks), never assume that all nth threads run: on a machine whose cores
 * are shared with other processes a descheduled or sleeping worker then
 * costs nothing, instead of a scheduler time slice per op.
 * Idle workers spin briefly for the next job, then sleep on a futex, so a
 * busy decode loop pays no syscall and an idle engine burns no CPU. */
#ifndef DUET_KERNELS_CPU_THREADPOOL_H
#define DUET_KERNELS_CPU_THREADPOOL_H

#include "common/status.h"

typedef struct tpool tpool_t;

/* fn(arg, ith, nth): ith in 0 .. nth - 1. */
typedef void (*tpool_fn_t)(void *arg, int ith, int nth);

/* n_threads >= 1 (the caller counts as one). */
duet_status_t tpool_create(int n_threads, tpool_t **pool_p);
void tpool_destroy(tpool_t *pool);
int tpool_size(const tpool_t *pool);

/* Run fn on the caller and on the workers that join in time (see above);
 * not reentrant (one caller at a time). */
void tpool_run(tpool_t *pool, tpool_fn_t fn, void *arg);

#endif
