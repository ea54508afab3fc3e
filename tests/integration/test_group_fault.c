/* Failure model of the group coordinator and the process group, with real
 * processes and real signals:
 *  - a worker killed with kill -9 in the middle of a collective: the other
 *    ranks fail within 5 s, and every process is reaped;
 *  - a worker that stops arriving: the others time out (1 s limit);
 *  - the driver killed with kill -9: workers exit within 5 s, through the
 *    death signal, through the pipe (no death signal) while idle, and through
 *    the group's pidfd watch while inside a collective. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "parallel/group.h"
#include "parallel/procgroup.h"
#include "tests/tap.h"

#define COUNT (1u << 20)

typedef struct {
    int    n;
    double timeout_s;
    int    hang_rank;       /* this rank stops arriving (sleeps) after a while */
} fault_t;

static duet_status_t join(procgroup_t *pg, const fault_t *f, group_t **g_p)
{
    char name[224];
    group_config_t cfg = {.backend = GROUP_BACKEND_SHM, .rank = procgroup_rank(pg),
                          .world_size = f->n, .name = name, .timeout_s = 30};

    snprintf(name, sizeof(name), "%s.f", procgroup_id(pg));
    CHECK(group_create(&cfg, g_p));
    return group_set_timeout(*g_p, f->timeout_s);
}

/* all-reduce until an error; returns it (DUET_OK after 20 s without one) */
static duet_status_t loop(group_t *g, int hang_rank)
{
    float *a = calloc(COUNT, 4), *b = calloc(COUNT, 4);
    uint64_t t0 = clock_now_ns();
    duet_status_t s = DUET_OK;

    for (int it = 0; clock_now_ns() - t0 < 20ull * 1000000000; it++) {
        if (group_rank(g) == hang_rank && it == 20)
            sleep(3);
        s = group_all_reduce(g, b, a, COUNT, GROUP_F32);
        if (s != DUET_OK)
            break;
    }
    free(a);
    free(b);
    return s;
}

static int fault_worker(procgroup_t *pg, void *arg)
{
    const fault_t *f = arg;
    group_t *g = NULL;
    duet_status_t s;

    if (join(pg, f, &g) != DUET_OK)
        return 2;
    s = loop(g, f->hang_rank);
    group_destroy(g);
    return s == DUET_ERR_PEER ? 3 : s == DUET_ERR_TIMEOUT ? 4 : s == DUET_OK ? 0 : 5;
}

typedef struct {
    pid_t             victim;
    _Atomic uint64_t  killed_ns;
} killer_t;

static void *killer(void *arg)
{
    killer_t *k = arg;

    usleep(300 * 1000);
    atomic_store(&k->killed_ns, clock_now_ns());
    kill(k->victim, SIGKILL);
    return NULL;
}

static bool gone(pid_t pid)
{
    return kill(pid, 0) != 0 && errno == ESRCH;
}

static void test_kill_worker(void)
{
    fault_t f = {.n = 3, .timeout_s = 30, .hang_rank = -1};
    procgroup_opts_t o = {.world_size = 3, .worker_main = fault_worker, .worker_arg = &f};
    procgroup_t *pg = NULL;
    group_t *g = NULL;
    killer_t k = {0};
    pthread_t th;
    duet_status_t s;
    double dt;
    int st1, st2;
    pid_t p1, p2;

    if (!ok(procgroup_start(&o, &pg) == DUET_OK, "kill -9: start 3 ranks"))
        return;
    if (!ok(join(pg, &f, &g) == DUET_OK, "kill -9: join the group")) {
        procgroup_destroy(pg);
        return;
    }
    p1 = procgroup_pid(pg, 1);
    p2 = procgroup_pid(pg, 2);
    k.victim = p2;
    pthread_create(&th, NULL, killer, &k);
    s = loop(g, -1);
    dt = (double)(clock_now_ns() - atomic_load(&k.killed_ns)) * 1e-9;
    pthread_join(th, NULL);
    ok(s == DUET_ERR_PEER, "kill -9 of rank 2 mid all-reduce: rank 0 gets %s",
       duet_status_str(s));
    ok(dt < 5.0, "rank 0 noticed within 5 s (%.3f s)", dt);
    ok(!group_ok(g) && group_barrier(g) == DUET_ERR_PEER, "the group stays broken");
    is_int(procgroup_check(pg), DUET_ERR_PEER, "procgroup_check names the dead worker");
    group_destroy(g);
    procgroup_stop(pg, 5);
    st1 = procgroup_wait_status(pg, 1);
    st2 = procgroup_wait_status(pg, 2);
    ok(WIFEXITED(st1) && WEXITSTATUS(st1) == 3, "rank 1 reported the peer failure (status 0x%x)", st1);
    ok(WIFSIGNALED(st2) && WTERMSIG(st2) == SIGKILL, "rank 2 died of SIGKILL");
    procgroup_destroy(pg);
    ok(gone(p1) && gone(p2), "no process left behind");
}

static void test_hang(void)
{
    fault_t f = {.n = 3, .timeout_s = 1, .hang_rank = 2};   /* set after joining */
    procgroup_opts_t o = {.world_size = 3, .worker_main = fault_worker, .worker_arg = &f};
    procgroup_t *pg = NULL;
    group_t *g = NULL;
    uint64_t t0;
    duet_status_t s;
    int st1, st2;

    if (!ok(procgroup_start(&o, &pg) == DUET_OK, "hang: start 3 ranks"))
        return;
    if (!ok(join(pg, &f, &g) == DUET_OK, "hang: join the group")) {
        procgroup_destroy(pg);
        return;
    }
    t0 = clock_now_ns();
    s = loop(g, 2);
    ok(s == DUET_ERR_TIMEOUT || s == DUET_ERR_PEER,
       "rank 2 stops arriving: rank 0 gets %s", duet_status_str(s));
    ok((double)(clock_now_ns() - t0) * 1e-9 < 4.0, "within the 1 s timeout (plus setup)");
    group_destroy(g);
    procgroup_stop(pg, 10);
    st1 = procgroup_wait_status(pg, 1);
    st2 = procgroup_wait_status(pg, 2);
    ok(WIFEXITED(st1) && (WEXITSTATUS(st1) == 3 || WEXITSTATUS(st1) == 4),
       "rank 1 failed too (status 0x%x)", st1);
    ok(WIFEXITED(st2) && WEXITSTATUS(st2) == 3,
       "rank 2 finds the group broken when it comes back (status 0x%x)", st2);
    procgroup_destroy(pg);
}

/* ---- driver death --------------------------------------------------------- */

enum { IDLE_IN_RECV, IN_COLLECTIVE };

typedef struct {
    int mode;
    int pdeathsig;
} orphan_t;

static int orphan_worker(procgroup_t *pg, void *arg)
{
    const orphan_t *o = arg;
    char buf[64];
    size_t len;

    if (o->mode == IDLE_IN_RECV) {
        duet_status_t s;

        while ((s = procgroup_plan_recv(pg, buf, sizeof(buf), &len)) == DUET_OK)
            ;
        return s == DUET_ERR_PEER ? 7 : 8;
    } else {
        fault_t f = {.n = 3, .timeout_s = 60, .hang_rank = -1};
        group_t *g = NULL;
        duet_status_t s;

        if (join(pg, &f, &g) != DUET_OK)
            return 2;
        s = loop(g, -1);
        group_destroy(g);
        return s == DUET_ERR_PEER ? 9 : 10;
    }
}

/* In a child: become a driver, report worker pids on fd, then work forever. */
static void driver_proc(const orphan_t *oa, int fd)
{
    procgroup_opts_t o = {.world_size = 3, .worker_main = orphan_worker,
                          .worker_arg = (void *)oa, .pdeathsig = oa->pdeathsig};
    procgroup_t *pg = NULL;
    pid_t pids[2];

    if (procgroup_start(&o, &pg) != DUET_OK)
        _exit(1);
    pids[0] = procgroup_pid(pg, 1);
    pids[1] = procgroup_pid(pg, 2);
    if (write(fd, pids, sizeof(pids)) != (ssize_t)sizeof(pids))
        _exit(1);
    close(fd);
    if (oa->mode == IN_COLLECTIVE) {
        fault_t f = {.n = 3, .timeout_s = 60, .hang_rank = -1};
        group_t *g = NULL;

        if (join(pg, &f, &g) != DUET_OK)
            _exit(1);
        loop(g, -1);
    }
    for (;;)
        pause();
}

/* Wait up to limit_s for pid (our child, thanks to the subreaper flag). */
static bool reap_within(pid_t pid, double limit_s, int *status_p)
{
    uint64_t t0 = clock_now_ns();

    while ((double)(clock_now_ns() - t0) * 1e-9 < limit_s) {
        pid_t p = waitpid(pid, status_p, WNOHANG);

        if (p == pid)
            return true;
        if (p < 0)
            return false;
        usleep(10 * 1000);
    }
    return false;
}

static void test_driver_death(int mode, int pdeathsig, const char *what, int want_code)
{
    orphan_t oa = {.mode = mode, .pdeathsig = pdeathsig};
    int fds[2], st;
    pid_t driver, pids[2];
    bool all = true;

    if (pipe(fds) != 0)
        return;
    fflush(NULL);
    driver = fork();
    if (driver == 0) {
        close(fds[0]);
        driver_proc(&oa, fds[1]);
    }
    close(fds[1]);
    if (!ok(read(fds[0], pids, sizeof(pids)) == (ssize_t)sizeof(pids),
            "%s: driver started two workers", what)) {
        kill(driver, SIGKILL);
        waitpid(driver, &st, 0);
        close(fds[0]);
        return;
    }
    close(fds[0]);
    usleep(200 * 1000);
    kill(driver, SIGKILL);
    waitpid(driver, &st, 0);
    for (int i = 0; i < 2; i++) {
        bool reaped = reap_within(pids[i], 5.0, &st);
        bool right = want_code < 0 ? WIFSIGNALED(st) && WTERMSIG(st) == -want_code
                                   : WIFEXITED(st) && WEXITSTATUS(st) == want_code;

        if (!reaped) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], &st, 0);
        }
        all = all && reaped && right;
        if (!reaped || !right)
            diag("worker %d: reaped %d status 0x%x", i + 1, reaped, st);
    }
    ok(all, "%s: workers exit within 5 s of the driver's kill -9", what);
}

int main(void)
{
    /* orphaned workers are reparented to us, so we can reap and check them */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
        tap_plan_skip("PR_SET_CHILD_SUBREAPER not available");
    if (getenv("DUET_TEST_VERBOSE") == NULL)
        log_set_level(LOG_LEVEL_OFF);
    test_kill_worker();
    test_hang();
    test_driver_death(IDLE_IN_RECV, 0, "death signal, idle", -SIGKILL);
    test_driver_death(IDLE_IN_RECV, -1, "pipe only, idle in plan_recv", 7);
    test_driver_death(IN_COLLECTIVE, -1, "pipe only, inside a collective", 9);
    return tap_done();
}
