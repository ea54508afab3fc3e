/* Supervisor for `duet serve`: starts child processes, reports crashes,
 * restarts them with backoff when asked, and stops them all cleanly.
 *
 * Children get PR_SET_PDEATHSIG(SIGTERM) so that they go away with the
 * supervisor even on kill -9. Stopping sends SIGTERM to every child (in
 * reverse start order), waits up to a grace period, then SIGKILLs what is
 * left and reaps everything: no orphans. */
#ifndef DUET_CLI_SUPERVISOR_H
#define DUET_CLI_SUPERVISOR_H

#include <stdbool.h>
#include <sys/types.h>

#include "common/status.h"

#define SUP_MAX_CHILDREN 64
#define SUP_MAX_ARGS     64

typedef struct supervisor supervisor_t;

typedef struct {
    const char *name;                 /* "router", "prefill-0", ... */
    char       *argv[SUP_MAX_ARGS];   /* NULL-terminated; copied */
    bool        critical;             /* its death (without restart) stops all */
} sup_child_spec_t;

/* restart: restart crashed children (1 s, 2 s, ... up to 30 s backoff).
 * grace_ms: how long stop waits between SIGTERM and SIGKILL. */
duet_status_t sup_create(bool restart, int grace_ms, supervisor_t **sup_p);

/* Stops (if running) and frees. NULL is ignored. */
void sup_destroy(supervisor_t *sup);

/* Register and start a child. The spec is copied. */
duet_status_t sup_start(supervisor_t *sup, const sup_child_spec_t *spec);

/* Run until SIGINT/SIGTERM, or until a critical child dies for good, or
 * until timeout_ms passes (-1: no timeout). Blocks those signals for the
 * calling thread while it runs. ready_cb, if not NULL, is polled every
 * 100 ms until it returns true once (used to print "ready").
 * Returns DUET_OK on a signal or timeout, DUET_ERR_PEER when a critical
 * child died. */
duet_status_t sup_run(supervisor_t *sup, int timeout_ms,
                      bool (*ready_cb)(void *arg), void *arg);

/* SIGTERM every child, wait up to the grace period, SIGKILL the rest, reap. */
void sup_stop(supervisor_t *sup);

/* pid of a named child, or -1 when not running. */
pid_t sup_child_pid(const supervisor_t *sup, const char *name);

/* Times a child has been restarted. */
int sup_child_restarts(const supervisor_t *sup, const char *name);

#endif
