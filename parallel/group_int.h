/* Internals of the group coordinator: the backend table, and the shared
 * memory, futex and peer-liveness helpers used by the shm backend and by
 * procgroup. */
#ifndef DUET_PARALLEL_GROUP_INT_H
#define DUET_PARALLEL_GROUP_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "duet_config.h"
#include "parallel/group.h"

/* A backend: a table of operations over a context pointer. Arguments are
 * validated by group.c before they reach a backend; world_size is >= 2 (a
 * group of one is handled in group.c). Every entry is required. */
typedef struct {
    const char *name;
    duet_status_t (*all_reduce)(void *ctx, void *dst, const void *src,
                                size_t count, group_dtype_t dt);
    duet_status_t (*all_gather)(void *ctx, void *dst, const void *src,
                                size_t count, group_dtype_t dt);
    duet_status_t (*reduce_scatter)(void *ctx, void *dst, const void *src,
                                    size_t count, group_dtype_t dt);
    duet_status_t (*broadcast)(void *ctx, void *buf, size_t count,
                               group_dtype_t dt, int root);
    duet_status_t (*barrier)(void *ctx);
    duet_status_t (*sync)(void *ctx);
    /* Optional: take part in the current collective as a failed participant
     * (this rank got bad arguments), so that the peers fail with
     * DUET_ERR_MISMATCH instead of pairing this collective with the next. */
    void (*poison)(void *ctx);
    bool (*ok)(void *ctx);
    void *(*input_buffer)(void *ctx, size_t bytes);    /* optional */
    void (*set_timeout)(void *ctx, uint64_t timeout_ns);
    void (*destroy)(void *ctx);
} group_ops_t;

/* Backend constructors: on success *ctx_p is the context for the table. */
duet_status_t group_shm_create(const group_config_t *cfg, void **ctx_p);
extern const group_ops_t group_shm_ops;
/* Shm groups: DUET_ERR_PEER when a peer process has exited (never blocks);
 * DUET_OK for other backends and groups of one. */
duet_status_t group_shm_check_peers(group_t *g);
duet_status_t group_shm_ctx_check_peers(void *ctx);
#if DUET_HAVE_CUDA
duet_status_t group_nccl_create(const group_config_t *cfg, void **ctx_p);
extern const group_ops_t group_nccl_ops;
#endif

#define SHM_MAX_RANKS 64        /* ranks of one shm group */

/* out1 and out2 (optional) (cnt) = sum over j < n of srcs[j] (cnt), in rank
 * order, accumulated in f32 for f16/bf16 (group_reduce.c). Each output may
 * be one of the sources (in place), element for element. nt: a hint that
 * out1 is not read soon (non-temporal stores where the path has them; the
 * values are the same). */
void group_reduce(group_dtype_t dt, void *out1, void *out2, uint8_t *const *srcs,
                  int n, size_t cnt, bool nt);

/* Ask for the cache lines of [p, p + bytes) in a writable state ahead of
 * stores (prefetchw): a copy another core holds is then invalidated in the
 * background, not by a store that stalls on it. */
void group_prefetch_w(const void *p, size_t bytes);

/* memcpy; nt: with non-temporal stores (for a destination far larger than
 * the caches, not read soon). */
void group_copy(void *dst, const void *src, size_t bytes, bool nt);

/* ---- shared helpers (pshm_*) ------------------------------------------- */

/* Wait until *word reaches target (wrapping compare) for a word that its
 * owner advances with pshm_post. */
typedef struct {
    _Atomic uint32_t value;     /* advanced by the owner only */
    _Atomic uint32_t nwait;     /* sleepers on value */
} pshm_word_t;

/* How a wait ends early: abort flag in shared memory, peers' pidfds, a pipe
 * whose writer is the peer (POLLHUP when it dies), and a deadline. */
typedef struct {
    _Atomic uint32_t *abort;    /* non-zero: fail with DUET_ERR_PEER; may be NULL */
    _Atomic uint32_t *gone;     /* non-zero: the word's owner left, it will
                                   never reach the target; may be NULL */
    const int *pidfds;          /* -1 entries ignored; may be NULL */
    int        npidfds;
    int        hup_fd;          /* -1: none */
    uint64_t   deadline_ns;     /* 0: none */
    uint64_t   spin_ns;         /* busy-poll this long before sleeping */
    uint64_t   yield_ns;        /* then poll with sched_yield() this long */
} pshm_waiter_t;

static inline bool pshm_reached(uint32_t v, uint32_t target)
{
    return (int32_t)(v - target) >= 0;
}

/* Store value (release, then full fence) and wake sleepers. */
void pshm_post(pshm_word_t *w, uint32_t value);
/* Wake every sleeper on w without changing it. */
void pshm_kick(pshm_word_t *w);
/* Spin briefly, then sleep on the futex in slices of at most 50 ms, checking
 * the waiter's conditions between slices. DUET_OK when reached;
 * DUET_ERR_PEER (abort set, a pidfd readable, hup_fd hung up),
 * DUET_ERR_TIMEOUT (deadline). */
duet_status_t pshm_wait(pshm_word_t *w, uint32_t target, const pshm_waiter_t *wt);

/* Poll pidfds and hup_fd once. DUET_ERR_PEER with *who_p = index of the dead
 * pidfd (or -1 for hup_fd). */
duet_status_t pshm_check_peers(const pshm_waiter_t *wt, int *who_p);

/* pidfd for pid (Linux >= 5.3); -1 with errno on failure. */
int pshm_pidfd_open(pid_t pid);

/* Create (O_EXCL; DUET_ERR_BUSY when it exists) a named POSIX shm segment
 * of size bytes and map it. */
duet_status_t pshm_create(const char *name, size_t size, void **addr_p);
/* Open and map a whole named segment, waiting up to timeout_s for its
 * creator to create and size it. */
duet_status_t pshm_open(const char *name, double timeout_s, size_t *size_p,
                        void **addr_p);
void pshm_unlink(const char *name);

/* Name check: starts without '/', up to 200 chars of [A-Za-z0-9._-]. */
bool pshm_name_valid(const char *name);

#endif
