/* Process group: the driver (rank 0) starts t-1 worker processes on this
 * host and broadcasts each step's plan to them through shared memory, after
 * vLLM's multiprocess executor.
 *
 * Workers are fork()ed from the driver and either run a function (fork mode:
 * cheap, the worker shares the driver's loaded state up to the fork, the
 * config needs no serialisation) or exec a program (exec mode: a fresh
 * address space; the program calls procgroup_join_env()). Start the group
 * early, before the driver creates threads, event loops or sockets: a fork
 * mode worker inherits the driver's memory and descriptors as they are.
 *
 * Lifetime: a worker exits when the driver exits, even on kill -9: it gets
 * PR_SET_PDEATHSIG (SIGKILL by default), and it also watches a pipe whose only
 * writer is the driver, so procgroup_plan_recv() returns DUET_ERR_PEER when the
 * driver is gone. Note: the death signal fires when the thread that called
 * procgroup_start() exits, so call it from the main thread. The driver
 * notices a worker that dies (pidfd) or stops acknowledging plans (timeout).
 *
 * A procgroup handle is used by one thread at a time. */
#ifndef DUET_PARALLEL_PROCGROUP_H
#define DUET_PARALLEL_PROCGROUP_H

#include <stddef.h>
#include <sys/types.h>

#include "common/status.h"

typedef struct procgroup procgroup_t;

/* Fork mode entry point, run in the worker; its return value (0..255) is the
 * worker's exit code. pg is the worker's own handle (rank >= 1), destroyed
 * after the function returns. */
typedef int (*procgroup_main_fn_t)(procgroup_t *pg, void *arg);

typedef struct {
    int                  world_size;    /* ranks including the driver, 1..64 */
    size_t               plan_capacity; /* largest plan in bytes; 0: 1 MiB */
    double               timeout_s;     /* worker start and plan-ack limit; 0: 10 s */
    int                  pdeathsig;     /* signal on driver death; 0: SIGKILL,
                                           -1: none (rely on the pipe) */
    procgroup_main_fn_t  worker_main;   /* fork mode, or */
    void                *worker_arg;
    char *const         *exec_argv;     /* exec mode: argv (argv[0] is looked
                                           up in PATH), NULL-terminated */
} procgroup_opts_t;

/* Driver: create the shared segment and start world_size - 1 workers; returns
 * once every worker reported ready. A worker that dies or does not start in
 * time fails the call (the others are killed and reaped). */
duet_status_t procgroup_start(const procgroup_opts_t *opts, procgroup_t **pg_p);

/* Exec mode worker: join the group described by the DUET_PROCGROUP
 * environment variable. DUET_ERR_NOT_FOUND when it is not set. */
duet_status_t procgroup_join_env(procgroup_t **pg_p);

int procgroup_rank(const procgroup_t *pg);
int procgroup_size(const procgroup_t *pg);
/* Unique for this group, identical on every rank: a prefix for group names
 * (parallel_config_t.prefix). */
const char *procgroup_id(const procgroup_t *pg);
/* Driver: pid of a worker rank (1..world-1), 0 otherwise. */
pid_t procgroup_pid(const procgroup_t *pg, int rank);

/* Driver: publish a plan (copied) and wake the workers. Waits first until
 * every worker consumed the previous plan: DUET_ERR_PEER when a worker died,
 * DUET_ERR_TIMEOUT when one did not consume it within the timeout,
 * DUET_ERR_TOO_BIG beyond plan_capacity. */
duet_status_t procgroup_plan_send(procgroup_t *pg, const void *plan, size_t len);

/* Worker: wait for the next plan and copy it into buf (cap bytes); *len_p is
 * its length. Waits as long as the driver lives. DUET_ERR_CLOSED when the
 * driver stopped the group, DUET_ERR_PEER when the driver is gone,
 * DUET_ERR_TOO_BIG when cap is too small (the plan is skipped). */
duet_status_t procgroup_plan_recv(procgroup_t *pg, void *buf, size_t cap, size_t *len_p);

/* Driver: DUET_OK while every worker runs; DUET_ERR_PEER (and a log line
 * naming the rank and how it ended) once one has exited. Never blocks. */
duet_status_t procgroup_check(procgroup_t *pg);

/* Driver: tell the workers to finish (their plan_recv returns
 * DUET_ERR_CLOSED), wait up to timeout_s for them to exit, then SIGKILL
 * the rest; reaps all. DUET_OK when every worker exited with code 0. */
duet_status_t procgroup_stop(procgroup_t *pg, double timeout_s);

/* Driver, after stop: the wait status (as from waitpid) of a worker rank;
 * -1 when unknown. */
int procgroup_wait_status(const procgroup_t *pg, int rank);

/* Driver: kills and reaps workers still running (use stop for a clean end),
 * then frees. Worker: detaches. NULL is a no-op. */
void procgroup_destroy(procgroup_t *pg);

#endif
