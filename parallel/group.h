/* Group coordinator: the collectives of one parallel group (world, TP, PP),
 * after vLLM's GroupCoordinator, behind a backend table:
 *
 *   shm   CPU ranks on one host, one process per rank, host pointers.
 *         Deterministic: sums run in rank order 0..n-1 (in f32 for f16/bf16),
 *         and every rank copies the same reduced bytes, so results are
 *         bit-identical from run to run and across ranks.
 *   nccl  GPU ranks (built when CUDA is found), device pointers; ops are
 *         enqueued on a CUDA stream and group_sync() waits for them. The
 *         NCCL unique id travels from rank 0 through a small shm group.
 *
 * Every collective is called by every rank of the group, in the same order,
 * with the same count, dtype (and root). shm: a rank that calls a different
 * collective or count gets DUET_ERR_MISMATCH, on every rank (NCCL does not
 * check; a mismatch there ends in the timeout). A peer that dies
 * (detected within ~50 ms) or does not arrive within the timeout makes the
 * collective fail on every rank with DUET_ERR_PEER / DUET_ERR_TIMEOUT; the
 * group is then broken and every later call returns DUET_ERR_PEER. The caller
 * (the executor) tears it down.
 *
 * A group handle is used by one thread at a time. */
#ifndef DUET_PARALLEL_GROUP_H
#define DUET_PARALLEL_GROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum {
    GROUP_F32  = 0,
    GROUP_F16  = 1,     /* IEEE half; sums accumulate in f32 */
    GROUP_BF16 = 2,     /* bfloat16; sums accumulate in f32 */
    GROUP_I32  = 3,     /* sums wrap (two's complement) */
    GROUP_U8   = 4,     /* bytes (broadcast of blobs); sums wrap */
    GROUP_DTYPE_COUNT
} group_dtype_t;

typedef enum {
    GROUP_BACKEND_SHM  = 0,
    GROUP_BACKEND_NCCL = 1,
} group_backend_t;

typedef struct {
    group_backend_t backend;
    int         rank;           /* 0 .. world_size - 1 */
    int         world_size;     /* >= 1 */
    /* Unique per group and identical on every rank, e.g. from
     * group_unique_name() on the driver, passed to the workers. Rank 0
     * creates the shared-memory segment under this name and unlinks it
     * once every rank has attached. Up to 200 chars, [A-Za-z0-9._-]. */
    const char *name;
    double      timeout_s;      /* peer arrival limit; 0: 10 s */
    size_t      slot_bytes;     /* shm: per-rank staging buffer (three of
                                   them, used in turn); 0: 1 MiB. Larger
                                   tensors are pipelined through it in
                                   chunks. */
    int         cuda_device;    /* nccl: device ordinal of this rank */
    void       *cuda_stream;    /* nccl: cudaStream_t to enqueue on; NULL:
                                   the group creates its own */
} group_config_t;

typedef struct group group_t;

/* Write a fresh group name "duet.<tag>.<pid>.<n>.<random>" into buf.
 * DUET_ERR_TOO_BIG when it does not fit. */
duet_status_t group_unique_name(const char *tag, char *buf, size_t len);

/* Join the group: rank 0 creates the segment, the others attach (waiting up
 * to the timeout for rank 0 and for one another). Collective: returns when
 * every rank has joined. DUET_ERR_INVALID for bad config (world size 0, rank
 * out of range, bad name), DUET_ERR_UNSUPPORTED for a backend not built,
 * DUET_ERR_BUSY when the rank is already taken, DUET_ERR_MISMATCH when ranks
 * disagree on world size or slot size. */
duet_status_t group_create(const group_config_t *cfg, group_t **group_p);

/* Leave the group and free it. Not collective: a peer still waiting on this
 * rank sees it go away (DUET_ERR_PEER). NULL is a no-op. */
void group_destroy(group_t *g);

int group_rank(const group_t *g);
int group_size(const group_t *g);
const char *group_backend_name(const group_t *g);
/* Change how long a collective waits for a late peer (seconds, > 0), e.g.
 * long for the barrier after loading weights, short inside a step. */
duet_status_t group_set_timeout(group_t *g, double timeout_s);
/* False once a collective failed with a peer error or timeout. */
bool group_ok(const group_t *g);

size_t group_dtype_size(group_dtype_t dt);
const char *group_dtype_name(group_dtype_t dt);

/* dst (count) = sum over ranks of src (count). dst may equal src. */
duet_status_t group_all_reduce(group_t *g, void *dst, const void *src,
                               size_t count, group_dtype_t dt);

/* dst (world_size, count) = concatenation of every rank's src (count) in
 * rank order. src may be dst + rank * count (in place). */
duet_status_t group_all_gather(group_t *g, void *dst, const void *src,
                               size_t count, group_dtype_t dt);

/* dst (count) = sum over ranks of src[rank] where src is (world_size, count):
 * rank r receives the reduced r-th block. dst may be src + rank * count. */
duet_status_t group_reduce_scatter(group_t *g, void *dst, const void *src,
                                   size_t count, group_dtype_t dt);

/* buf (count): root's contents are copied to every rank. */
duet_status_t group_broadcast(group_t *g, void *buf, size_t count,
                              group_dtype_t dt, int root);

/* Returns when every rank has entered it. */
duet_status_t group_barrier(group_t *g);

/* shm: a buffer in shared memory for this rank's input to the next
 * collective (up to bytes; NULL when larger than the slot, or for backends
 * without one). Build the input there (e.g. as a matmul's output) and pass
 * it as src to the next all_reduce, all_gather, reduce_scatter or broadcast
 * (root): the copy into shared memory is skipped. Valid until that next
 * collective, which clobbers it; ask again before each one. It may also be
 * the all_reduce's dst (in place); the result there then stays valid until
 * the following collective. */
void *group_input_buffer(group_t *g, size_t bytes);

/* shm: an all_reduce of n ranks whose bytes x (n - 1) are at most this,
 * and that fits one slot, takes one sync (every rank sums the whole
 * message), unless dst is the input buffer itself: the peers still read
 * it, so in place takes the two-sync path. For tiny messages, build the
 * input in group_input_buffer() and pass a private dst; from about 16 KiB
 * (2 ranks, input written before and result read after, as in a forward
 * pass; docs/parallel.md round 4), in place in the input buffer is faster
 * and moves the fewest bytes. */
#define GROUP_SHM_ONE_SHOT_BYTES (256u * 1024)

/* NCCL: wait until the ops enqueued so far on the group's stream completed
 * (with the same failure detection). shm: ops complete before they return,
 * so this is a no-op. */
duet_status_t group_sync(group_t *g);

/* ---- parallel state: the world, TP and PP groups of one process --------
 *
 * World rank w = pp_rank * tp_size + tp_rank (TP innermost, as in vLLM).
 * The TP group of a pipeline stage holds its tp_size consecutive ranks; the
 * PP group holds the ranks with the same tp_rank. Groups of size 1 exist
 * too (every collective is then a local copy), so callers never
 * special-case TP=1. When TP (or PP) spans the whole world, it is the world
 * group's handle (one segment, not two). Segment names derive from prefix. */
typedef struct {
    group_backend_t backend;
    int         world_rank;
    int         tp_size;        /* >= 1 */
    int         pp_size;        /* >= 1; world size = tp_size * pp_size */
    const char *prefix;         /* unique per run, identical on every rank
                                   (e.g. procgroup_id()); up to 160 chars */
    double      timeout_s;
    size_t      slot_bytes;
    int         cuda_device;
    void       *cuda_stream;
} parallel_config_t;

typedef struct parallel parallel_t;

/* Create the world, TP and PP groups (collective over the world). */
duet_status_t parallel_create(const parallel_config_t *cfg, parallel_t **par_p);
void parallel_destroy(parallel_t *par);

group_t *parallel_world(const parallel_t *par);
group_t *parallel_tp(const parallel_t *par);
group_t *parallel_pp(const parallel_t *par);
int parallel_tp_rank(const parallel_t *par);
int parallel_tp_size(const parallel_t *par);
int parallel_pp_rank(const parallel_t *par);
int parallel_pp_size(const parallel_t *par);

#endif
