/* Shared-memory plumbing for the shm group backend and procgroup: named
 * segments, futex waits that spin briefly and then sleep, and peer liveness
 * through pidfds and hang-up pipes. */
#define DUET_LOG_COMPONENT "parallel"
#include "parallel/group_int.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"

#define PSHM_SLICE_NS (50ull * 1000 * 1000)   /* longest single futex sleep */
/* A sched_yield() that took this long ran another task: the CPUs are
 * contended, so stop polling and sleep on the futex. A sleeper that is
 * woken tends to run at once (wakeup preemption), whereas a task that keeps
 * yielding waits for the others' time slices. */
#define PSHM_YIELD_BUSY_NS (20ull * 1000)

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long futex(_Atomic uint32_t *uaddr, int op, uint32_t val,
                  const struct timespec *ts)
{
    /* shared (not FUTEX_PRIVATE_FLAG): waiters live in other processes */
    return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, 0);
}

void pshm_post(pshm_word_t *w, uint32_t value)
{
    atomic_store_explicit(&w->value, value, memory_order_seq_cst);
    /* Dekker pairing with pshm_wait: store value, load nwait (both seq_cst)
     * against increment nwait, load value. One side always sees the other. */
    if (atomic_load_explicit(&w->nwait, memory_order_seq_cst) != 0)
        futex(&w->value, FUTEX_WAKE, INT_MAX, NULL);
}

void pshm_kick(pshm_word_t *w)
{
    futex(&w->value, FUTEX_WAKE, INT_MAX, NULL);
}

duet_status_t pshm_check_peers(const pshm_waiter_t *wt, int *who_p)
{
    struct pollfd pfd[65];
    int n = 0;
    int map[65];

    if (wt->hup_fd >= 0) {
        pfd[n].fd = wt->hup_fd;
        pfd[n].events = POLLIN;
        map[n++] = -1;
    }
    for (int i = 0; i < wt->npidfds && n < 65; i++) {
        if (wt->pidfds[i] < 0)
            continue;
        pfd[n].fd = wt->pidfds[i];
        pfd[n].events = POLLIN;
        map[n++] = i;
    }
    if (n == 0 || poll(pfd, (nfds_t)n, 0) <= 0)
        return DUET_OK;
    for (int i = 0; i < n; i++) {
        if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) {
            if (who_p != NULL)
                *who_p = map[i];
            return DUET_ERR_PEER;
        }
    }
    return DUET_OK;
}

duet_status_t pshm_wait(pshm_word_t *w, uint32_t target, const pshm_waiter_t *wt)
{
    uint64_t t0, now;
    uint32_t v;

    v = atomic_load_explicit(&w->value, memory_order_acquire);
    if (pshm_reached(v, target))
        return DUET_OK;

    /* Spin: cheap when the peer is a few microseconds behind. */
    t0 = clock_now_ns();
    for (unsigned i = 1;; i++) {
        cpu_relax();
        v = atomic_load_explicit(&w->value, memory_order_acquire);
        if (pshm_reached(v, target))
            return DUET_OK;
        if ((i & 63) == 0 && clock_now_ns() - t0 >= wt->spin_ns)
            break;
    }
    /* Poll while giving the CPU away: a peer busy copying a large chunk, or
     * one waiting for our core, is not worth a futex round trip, as long as
     * nothing else wants our CPU (see PSHM_YIELD_BUSY_NS). */
    if (wt->yield_ns > 0) {
        t0 = now = clock_now_ns();
        do {
            uint64_t t1 = now;

            sched_yield();
            v = atomic_load_explicit(&w->value, memory_order_acquire);
            if (pshm_reached(v, target))
                return DUET_OK;
            now = clock_now_ns();
            if (now - t1 > PSHM_YIELD_BUSY_NS)
                break;
        } while (now - t0 < wt->yield_ns);
    }

    /* Sleep on the futex in bounded slices, checking for failures between. */
    for (;;) {
        struct timespec ts;
        uint64_t slice = PSHM_SLICE_NS;

        if (wt->abort != NULL && atomic_load(wt->abort) != 0)
            return DUET_ERR_PEER;
        if (wt->gone != NULL && atomic_load(wt->gone) != 0) {
            v = atomic_load_explicit(&w->value, memory_order_acquire);
            return pshm_reached(v, target) ? DUET_OK : DUET_ERR_PEER;
        }
        if (pshm_check_peers(wt, NULL) != DUET_OK) {
            /* the peer may have posted just before it exited */
            v = atomic_load_explicit(&w->value, memory_order_acquire);
            return pshm_reached(v, target) ? DUET_OK : DUET_ERR_PEER;
        }
        now = clock_now_ns();
        if (wt->deadline_ns != 0) {
            if (now >= wt->deadline_ns)
                return DUET_ERR_TIMEOUT;
            if (wt->deadline_ns - now < slice)
                slice = wt->deadline_ns - now;
        }
        ts.tv_sec = (time_t)(slice / 1000000000ull);
        ts.tv_nsec = (long)(slice % 1000000000ull);

        atomic_fetch_add_explicit(&w->nwait, 1, memory_order_seq_cst);
        v = atomic_load_explicit(&w->value, memory_order_seq_cst);
        if (!pshm_reached(v, target))
            futex(&w->value, FUTEX_WAIT, v, &ts);
        atomic_fetch_sub_explicit(&w->nwait, 1, memory_order_seq_cst);

        v = atomic_load_explicit(&w->value, memory_order_acquire);
        if (pshm_reached(v, target))
            return DUET_OK;
    }
}

int pshm_pidfd_open(pid_t pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

bool pshm_name_valid(const char *name)
{
    size_t n;

    if (name == NULL)
        return false;
    n = strlen(name);
    if (n == 0 || n > 200 || name[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void shm_path(const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "/%s", name);
}

duet_status_t pshm_create(const char *name, size_t size, void **addr_p)
{
    char path[256];
    void *addr;
    int fd, err;

    shm_path(name, path, sizeof(path));
    fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = errno;
        log_error("shm_open(%s): %s", path, strerror(err));
        return err == EEXIST ? DUET_ERR_BUSY : duet_status_from_errno(err);
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        err = errno;
        log_error("ftruncate(%s, %zu): %s", path, size, strerror(err));
        goto err_unlink;
    }
    /* Reserve the pages now: a tmpfs too small for the segment is a clear
     * error here, not a SIGBUS in the middle of a collective. */
    err = posix_fallocate(fd, 0, (off_t)size);
    if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
        log_error("cannot reserve %zu bytes of shared memory for %s (is /dev/shm too "
                  "small?): %s", size, path, strerror(err));
        err = ENOSPC;
        goto err_unlink;
    }
    addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
        err = errno;
        log_error("mmap(%s, %zu): %s", path, size, strerror(err));
        goto err_unlink;
    }
    close(fd);
    *addr_p = addr;
    return DUET_OK;

err_unlink:
    shm_unlink(path);
    close(fd);
    return err == ENOMEM || err == ENOSPC ? DUET_ERR_NOMEM : duet_status_from_errno(err);
}

duet_status_t pshm_open(const char *name, double timeout_s, size_t *size_p,
                        void **addr_p)
{
    uint64_t deadline = clock_now_ns() + (uint64_t)(timeout_s * 1e9);
    char path[256];
    struct stat st;
    void *addr;
    int fd = -1, err;

    shm_path(name, path, sizeof(path));
    for (;;) {
        if (fd < 0)
            fd = shm_open(path, O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0 && errno != ENOENT) {
            err = errno;
            log_error("shm_open(%s): %s", path, strerror(err));
            return duet_status_from_errno(err);
        }
        /* the creator sizes the segment right after creating it */
        if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0)
            break;
        if (clock_now_ns() >= deadline) {
            log_error("shm segment %s did not appear within %.1f s", path, timeout_s);
            if (fd >= 0)
                close(fd);
            return DUET_ERR_TIMEOUT;
        }
        usleep(1000);
    }
    addr = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    err = errno;
    close(fd);
    if (addr == MAP_FAILED) {
        log_error("mmap(%s, %lld): %s", path, (long long)st.st_size, strerror(err));
        return duet_status_from_errno(err);
    }
    *size_p = (size_t)st.st_size;
    *addr_p = addr;
    return DUET_OK;
}

void pshm_unlink(const char *name)
{
    char path[256];

    shm_path(name, path, sizeof(path));
    if (shm_unlink(path) != 0 && errno != ENOENT)
        log_warn("shm_unlink(%s): %s", path, strerror(errno));
}
