/* Process group: worker start (fork or fork+exec), parent-death detection,
 * and the shared-memory plan channel from the driver to the workers.
 *
 * Segment (memfd, inherited by the workers, never named):
 *   header | worker areas (64) | plan bytes (plan_capacity)
 * The driver advances plan_seq once per plan; worker r advances its ack word
 * to the plan's sequence number after copying it out. The driver overwrites
 * the plan only once every worker acknowledged the previous one. */
#define DUET_LOG_COMPONENT "parallel"
#include "parallel/procgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "parallel/group_int.h"

#define PG_MAGIC      0x31475044544555ull   /* "DUETPG1" */
#define PG_MAX        64
#define PG_ENV        "DUET_PROCGROUP"
#define PG_SPIN_NS    (20ull * 1000)

typedef struct {
    uint64_t         magic;
    uint32_t         world_size;
    uint32_t         pad0;
    uint64_t         plan_capacity;
    uint64_t         plan_len;      /* of the plan at plan_seq */
    _Atomic uint32_t stop;          /* sequence number of the stop message;
                                       plans before it are still delivered */
    uint32_t         pad1;
    char             id[80];
    pshm_word_t      plan_seq;      /* owner: the driver */
    char             pad2[56];
} pg_hdr_t;

typedef struct {
    pshm_word_t      ack;           /* owner: the worker; last plan consumed */
    pshm_word_t      ready;         /* owner: the worker; 1 once started */
    _Atomic int32_t  pid;
    char             pad[44];
} pg_worker_t;

_Static_assert(sizeof(pg_worker_t) == 64, "worker area is a cache line");

#define PG_HDR_BYTES  8192
_Static_assert(sizeof(pg_hdr_t) <= 256, "header fits before the worker areas");
_Static_assert(256 + PG_MAX * sizeof(pg_worker_t) <= PG_HDR_BYTES,
               "header and worker areas fit");

struct procgroup {
    int          rank, world;
    bool         driver;
    uint8_t     *base;
    size_t       size;
    pg_hdr_t    *hdr;
    pg_worker_t *workers;       /* (PG_MAX), index = rank */
    uint8_t     *plan;          /* (plan_capacity) */
    int          memfd;
    int          hup_fd;        /* driver: write end; worker: read end */
    int          hup_rd;        /* driver, while starting: the workers' read end */
    uint64_t     timeout_ns;
    uint32_t     seq;           /* driver: last plan posted; worker: last consumed */
    bool         stopped;
    pid_t        pids[PG_MAX];
    int          pidfds[PG_MAX];
    int          status[PG_MAX];/* wait status once reaped, -1 before */
};

static procgroup_t *pg_alloc(void)
{
    procgroup_t *pg = calloc(1, sizeof(*pg));

    if (pg == NULL)
        return NULL;
    pg->memfd = -1;
    pg->hup_fd = -1;
    pg->hup_rd = -1;
    for (int r = 0; r < PG_MAX; r++) {
        pg->pidfds[r] = -1;
        pg->status[r] = -1;
    }
    return pg;
}

static void pg_layout(procgroup_t *pg)
{
    pg->hdr = (pg_hdr_t *)pg->base;
    pg->workers = (pg_worker_t *)(pg->base + 256);
    pg->plan = pg->base + PG_HDR_BYTES;
}

int procgroup_rank(const procgroup_t *pg)
{
    return pg->rank;
}

int procgroup_size(const procgroup_t *pg)
{
    return pg->world;
}

const char *procgroup_id(const procgroup_t *pg)
{
    return pg->hdr->id;
}

pid_t procgroup_pid(const procgroup_t *pg, int rank)
{
    return pg->driver && rank > 0 && rank < pg->world ? pg->pids[rank] : 0;
}

int procgroup_wait_status(const procgroup_t *pg, int rank)
{
    return pg->driver && rank > 0 && rank < pg->world ? pg->status[rank] : -1;
}

/* ---- driver: reaping ---------------------------------------------------- */

static void describe_exit(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with code %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "ended with status 0x%x", status);
}

/* Reap worker r if it has exited (or wait until it does when block). */
static bool reap(procgroup_t *pg, int r, bool block)
{
    int st;
    pid_t p;

    if (pg->pids[r] <= 0 || pg->status[r] != -1)
        return pg->status[r] != -1;
    do
        p = waitpid(pg->pids[r], &st, block ? 0 : WNOHANG);
    while (p < 0 && errno == EINTR);
    if (p == pg->pids[r]) {
        pg->status[r] = st;
        return true;
    }
    if (p < 0) {    /* not our child any more (ECHILD): count it as gone */
        pg->status[r] = 0xff00;
        return true;
    }
    return false;
}

static void kill_all(procgroup_t *pg)
{
    for (int r = 1; r < pg->world; r++)
        if (pg->pids[r] > 0 && pg->status[r] == -1)
            kill(pg->pids[r], SIGKILL);
    for (int r = 1; r < pg->world; r++)
        reap(pg, r, true);
}

duet_status_t procgroup_check(procgroup_t *pg)
{
    char how[96];

    if (pg == NULL || !pg->driver)
        return DUET_ERR_INVALID;
    for (int r = 1; r < pg->world; r++) {
        if (pg->status[r] != -1 || reap(pg, r, false)) {
            describe_exit(pg->status[r], how, sizeof(how));
            log_error("procgroup %s: worker rank %d (pid %d) %s", pg->hdr->id, r,
                      (int)pg->pids[r], how);
            return DUET_ERR_PEER;
        }
    }
    return DUET_OK;
}

/* ---- worker side -------------------------------------------------------- */

static void worker_ready(procgroup_t *pg)
{
    atomic_store(&pg->workers[pg->rank].pid, (int32_t)getpid());
    pshm_post(&pg->workers[pg->rank].ready, 1);
}

duet_status_t procgroup_plan_recv(procgroup_t *pg, void *buf, size_t cap, size_t *len_p)
{
    pshm_waiter_t wt = {.hup_fd = -1, .spin_ns = PG_SPIN_NS};
    size_t len;
    duet_status_t s;

    if (pg == NULL || pg->driver || (buf == NULL && cap > 0) || len_p == NULL)
        return DUET_ERR_INVALID;
    wt.hup_fd = pg->hup_fd;
    s = pshm_wait(&pg->hdr->plan_seq, pg->seq + 1, &wt);
    if (s != DUET_OK) {
        log_error("procgroup %s: rank %d: the driver is gone", pg->hdr->id, pg->rank);
        return DUET_ERR_PEER;
    }
    pg->seq++;
    if (atomic_load(&pg->hdr->stop) == pg->seq) {
        pg->seq--;      /* stay on the stop message: every later call ends too */
        return DUET_ERR_CLOSED;
    }
    len = pg->hdr->plan_len;
    if (len > cap) {
        log_error("procgroup %s: rank %d: plan of %zu bytes exceeds the buffer (%zu)",
                  pg->hdr->id, pg->rank, len, cap);
        pshm_post(&pg->workers[pg->rank].ack, pg->seq);
        return DUET_ERR_TOO_BIG;
    }
    if (len > 0)
        memcpy(buf, pg->plan, len);
    pshm_post(&pg->workers[pg->rank].ack, pg->seq);
    *len_p = len;
    return DUET_OK;
}

duet_status_t procgroup_join_env(procgroup_t **pg_p)
{
    const char *env = getenv(PG_ENV);
    int rank, world, memfd, hupfd, ppid;
    procgroup_t *pg;
    struct stat st;
    duet_status_t s;

    if (pg_p == NULL)
        return DUET_ERR_INVALID;
    if (env == NULL)
        return DUET_ERR_NOT_FOUND;
    if (sscanf(env, "%d,%d,%d,%d,%d", &rank, &world, &memfd, &hupfd, &ppid) != 5 ||
        world < 2 || world > PG_MAX || rank < 1 || rank >= world) {
        log_error("procgroup: bad %s='%s'", PG_ENV, env);
        return DUET_ERR_INVALID;
    }
    if (getppid() != ppid) {
        log_error("procgroup: the driver (pid %d) is gone", ppid);
        return DUET_ERR_PEER;
    }
    pg = pg_alloc();
    if (pg == NULL)
        return DUET_ERR_NOMEM;
    pg->rank = rank;
    pg->world = world;
    if (fstat(memfd, &st) != 0 || st.st_size < PG_HDR_BYTES) {
        log_error("procgroup: inherited descriptor %d is not the group segment", memfd);
        s = DUET_ERR_INVALID;
        goto err_free;
    }
    pg->size = (size_t)st.st_size;
    pg->base = mmap(NULL, pg->size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (pg->base == MAP_FAILED) {
        pg->base = NULL;
        s = duet_status_from_errno(errno);
        goto err_free;
    }
    close(memfd);
    pg_layout(pg);
    if (pg->hdr->magic != PG_MAGIC || pg->hdr->world_size != (uint32_t)world) {
        log_error("procgroup: segment header does not match %s", PG_ENV);
        s = DUET_ERR_MISMATCH;
        goto err_unmap;
    }
    pg->hup_fd = hupfd;
    fcntl(hupfd, F_SETFD, FD_CLOEXEC);
    pg->seq = atomic_load(&pg->hdr->plan_seq.value);
    unsetenv(PG_ENV);
    worker_ready(pg);
    *pg_p = pg;
    return DUET_OK;

err_unmap:
    munmap(pg->base, pg->size);
err_free:
    free(pg);
    return s;
}

/* In the child after fork(). Never returns. */
static void child_main(const procgroup_opts_t *o, procgroup_t *parent, int rank,
                       pid_t driver)
{
    int sig = o->pdeathsig == 0 ? SIGKILL : o->pdeathsig;
    procgroup_t *pg;
    int rc;

    if (o->pdeathsig >= 0 && prctl(PR_SET_PDEATHSIG, sig) != 0)
        _exit(120);
    if (getppid() != driver)     /* the driver died before prctl */
        _exit(121);
    close(parent->hup_fd);      /* only the driver holds the write end */
    for (int r = 1; r < rank; r++)
        if (parent->pidfds[r] >= 0)
            close(parent->pidfds[r]);

    if (o->exec_argv != NULL) {
        char env[96];
        int rd = parent->hup_rd;

        fcntl(parent->memfd, F_SETFD, 0);
        fcntl(rd, F_SETFD, 0);
        snprintf(env, sizeof(env), "%d,%d,%d,%d,%d", rank, parent->world,
                 parent->memfd, rd, (int)driver);
        setenv(PG_ENV, env, 1);
        execvp(o->exec_argv[0], o->exec_argv);
        fprintf(stderr, "procgroup: exec %s: %s\n", o->exec_argv[0], strerror(errno));
        _exit(127);
    }

    pg = pg_alloc();
    if (pg == NULL)
        _exit(122);
    pg->rank = rank;
    pg->world = parent->world;
    pg->base = parent->base;
    pg->size = parent->size;
    pg_layout(pg);
    close(parent->memfd);
    pg->hup_fd = parent->hup_rd;
    pg->seq = atomic_load(&pg->hdr->plan_seq.value);
    worker_ready(pg);
    rc = o->worker_main(pg, o->worker_arg);
    procgroup_destroy(pg);
    fflush(NULL);
    _exit(rc & 0xff);
}

/* ---- driver ------------------------------------------------------------- */

duet_status_t procgroup_start(const procgroup_opts_t *o, procgroup_t **pg_p)
{
    procgroup_t *pg;
    size_t cap;
    int hup[2];
    pid_t self = getpid();
    duet_status_t s;
    double timeout_s;

    if (o == NULL || pg_p == NULL || o->world_size < 1 || o->world_size > PG_MAX ||
        o->timeout_s < 0 || (o->world_size > 1 && (o->worker_main == NULL) ==
                                                      (o->exec_argv == NULL))) {
        log_error("procgroup: bad options (world size 1..%d, exactly one of "
                  "worker_main and exec_argv)", PG_MAX);
        return DUET_ERR_INVALID;
    }
    timeout_s = o->timeout_s > 0 ? o->timeout_s : 10.0;
    cap = o->plan_capacity ? o->plan_capacity : (size_t)1 << 20;
    pg = pg_alloc();
    if (pg == NULL)
        return DUET_ERR_NOMEM;
    pg->driver = true;
    pg->rank = 0;
    pg->world = o->world_size;
    pg->timeout_ns = (uint64_t)(timeout_s * 1e9);
    pg->size = PG_HDR_BYTES + ((cap + 4095) & ~(size_t)4095);

    pg->memfd = memfd_create("duet-procgroup", MFD_CLOEXEC);
    if (pg->memfd < 0 || ftruncate(pg->memfd, (off_t)pg->size) != 0) {
        log_error("procgroup: memfd of %zu bytes: %s", pg->size, strerror(errno));
        s = duet_status_from_errno(errno);
        goto err_free;
    }
    pg->base = mmap(NULL, pg->size, PROT_READ | PROT_WRITE, MAP_SHARED, pg->memfd, 0);
    if (pg->base == MAP_FAILED) {
        pg->base = NULL;
        s = DUET_ERR_NOMEM;
        goto err_free;
    }
    pg_layout(pg);
    pg->hdr->magic = PG_MAGIC;
    pg->hdr->world_size = (uint32_t)pg->world;
    pg->hdr->plan_capacity = cap;
    CHECK_GOTO(group_unique_name("pg", pg->hdr->id, sizeof(pg->hdr->id)), s, err_free);
    if (pipe2(hup, O_CLOEXEC) != 0) {
        s = duet_status_from_errno(errno);
        goto err_free;
    }
    pg->hup_fd = hup[1];
    pg->hup_rd = hup[0];

    fflush(NULL);               /* children must not inherit buffered output */
    for (int r = 1; r < pg->world; r++) {
        pid_t pid = fork();

        if (pid < 0) {
            log_error("procgroup: fork: %s", strerror(errno));
            s = duet_status_from_errno(errno);
            goto err_kill;
        }
        if (pid == 0)
            child_main(o, pg, r, self);
        pg->pids[r] = pid;
        pg->pidfds[r] = pshm_pidfd_open(pid);
    }
    close(pg->hup_rd);
    pg->hup_rd = -1;
    close(pg->memfd);
    pg->memfd = -1;

    /* every worker reported ready */
    for (int r = 1; r < pg->world; r++) {
        pshm_waiter_t wt = {
            .pidfds = &pg->pidfds[r], .npidfds = 1, .hup_fd = -1, .spin_ns = 0,
            .deadline_ns = clock_now_ns() + pg->timeout_ns,
        };

        s = pshm_wait(&pg->workers[r].ready, 1, &wt);
        if (s != DUET_OK) {
            if (reap(pg, r, false)) {
                char how[96];

                describe_exit(pg->status[r], how, sizeof(how));
                log_error("procgroup: worker rank %d %s while starting", r, how);
            } else {
                log_error("procgroup: worker rank %d did not start in %.1f s", r, timeout_s);
            }
            goto err_kill;
        }
    }
    *pg_p = pg;
    return DUET_OK;

err_kill:
    kill_all(pg);
err_free:
    procgroup_destroy(pg);
    return s;
}

static duet_status_t wait_acks(procgroup_t *pg)
{
    for (int r = 1; r < pg->world; r++) {
        pshm_waiter_t wt = {
            .pidfds = &pg->pidfds[r], .npidfds = 1, .hup_fd = -1,
            .spin_ns = PG_SPIN_NS, .deadline_ns = clock_now_ns() + pg->timeout_ns,
        };
        duet_status_t s = pshm_wait(&pg->workers[r].ack, pg->seq, &wt);

        if (s == DUET_ERR_TIMEOUT) {
            log_error("procgroup %s: worker rank %d did not take plan %u within %.1f s",
                      pg->hdr->id, r, pg->seq, (double)pg->timeout_ns * 1e-9);
            return s;
        }
        if (s != DUET_OK)
            return procgroup_check(pg) == DUET_OK ? s : DUET_ERR_PEER;
    }
    return DUET_OK;
}

duet_status_t procgroup_plan_send(procgroup_t *pg, const void *plan, size_t len)
{
    if (pg == NULL || !pg->driver || (plan == NULL && len > 0) || pg->stopped)
        return DUET_ERR_INVALID;
    if (len > pg->hdr->plan_capacity) {
        log_error("procgroup %s: plan of %zu bytes exceeds the capacity %llu",
                  pg->hdr->id, len, (unsigned long long)pg->hdr->plan_capacity);
        return DUET_ERR_TOO_BIG;
    }
    CHECK(wait_acks(pg));
    if (len > 0)
        memcpy(pg->plan, plan, len);
    pg->hdr->plan_len = len;
    pg->seq++;
    pshm_post(&pg->hdr->plan_seq, pg->seq);
    return DUET_OK;
}

duet_status_t procgroup_stop(procgroup_t *pg, double timeout_s)
{
    uint64_t deadline;
    duet_status_t s = DUET_OK;

    if (pg == NULL || !pg->driver)
        return DUET_ERR_INVALID;
    if (!pg->stopped) {
        pg->stopped = true;
        pg->seq++;
        atomic_store(&pg->hdr->stop, pg->seq);
        pshm_post(&pg->hdr->plan_seq, pg->seq);
    }
    deadline = clock_now_ns() + (uint64_t)(timeout_s * 1e9);
    for (int r = 1; r < pg->world; r++) {
        while (!reap(pg, r, false)) {
            uint64_t now = clock_now_ns();
            struct pollfd pfd = {.fd = pg->pidfds[r], .events = POLLIN};

            if (now >= deadline) {
                log_warn("procgroup %s: worker rank %d did not exit in time; killing it",
                         pg->hdr->id, r);
                kill(pg->pids[r], SIGKILL);
                reap(pg, r, true);
                break;
            }
            if (pfd.fd >= 0)
                poll(&pfd, 1, (int)((deadline - now) / 1000000 + 1));
            else
                usleep(1000);
        }
        if (!WIFEXITED(pg->status[r]) || WEXITSTATUS(pg->status[r]) != 0)
            s = DUET_ERR_PEER;
    }
    return s;
}

void procgroup_destroy(procgroup_t *pg)
{
    if (pg == NULL)
        return;
    if (pg->driver)
        kill_all(pg);
    for (int r = 0; r < PG_MAX; r++)
        if (pg->pidfds[r] >= 0)
            close(pg->pidfds[r]);
    if (pg->hup_fd >= 0)
        close(pg->hup_fd);
    if (pg->hup_rd >= 0)
        close(pg->hup_rd);
    if (pg->memfd >= 0)
        close(pg->memfd);
    if (pg->base != NULL)
        munmap(pg->base, pg->size);
    free(pg);
}
