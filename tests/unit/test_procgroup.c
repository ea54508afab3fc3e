/* The process group: fork and exec workers, the plan channel (every plan
 * arrives once, in order, intact), idle waits that burn no CPU (in
 * plan_recv and in a collective), clean stop, bad arguments, and a worker
 * that dies (plan_send fails instead of hanging). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "parallel/group.h"
#include "parallel/procgroup.h"
#include "tests/tap.h"
#include "tests/unit/group_testlib.h"

#define NPLANS 2000

static size_t plan_len(uint32_t k)
{
    return k % 7 == 0 ? 0 : (gt_hash(k) % 5000) + 1;
}

static void plan_make(uint8_t *buf, uint32_t k)
{
    size_t n = plan_len(k);

    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)gt_hash(k * 31u + (uint32_t)i);
}

/* Receive NPLANS plans and check each; exit code 0 when all were right and
 * the group then stopped cleanly. */
static int plan_worker(procgroup_t *pg, void *arg)
{
    static uint8_t buf[8192], want[8192];
    size_t len;
    int bad = 0;

    for (uint32_t k = 0; k < NPLANS; k++) {
        if (procgroup_plan_recv(pg, buf, sizeof(buf), &len) != DUET_OK)
            return 10;
        plan_make(want, k);
        if (len != plan_len(k) || memcmp(buf, want, len) != 0) {
            if (!bad)
                fprintf(stderr, "rank %d: plan %u: %zu bytes, want %zu\n",
                        procgroup_rank(pg), k, len, plan_len(k));
            bad = 1;
        }
    }
    /* a plan larger than our buffer is reported, then we carry on */
    if (procgroup_plan_recv(pg, buf, 16, &len) != DUET_ERR_TOO_BIG) {
        fprintf(stderr, "rank %d: no TOO_BIG\n", procgroup_rank(pg));
        bad = 1;
    }
    if (procgroup_plan_recv(pg, buf, sizeof(buf), &len) != DUET_ERR_CLOSED)
        return 11;
    return bad;
}

static double cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Idle for a second in plan_recv, then for a second in a barrier: exit 0 when
 * that cost under 0.1 s of CPU (no spinning). */
static int idle_worker(procgroup_t *pg, void *arg)
{
    char name[224];
    group_config_t cfg = {.backend = GROUP_BACKEND_SHM, .rank = procgroup_rank(pg),
                          .world_size = procgroup_size(pg), .name = name};
    group_t *g = NULL;
    uint8_t b;
    size_t len;
    double t0, spent;
    int rc = 0;

    snprintf(name, sizeof(name), "%s.idle", procgroup_id(pg));
    if (group_create(&cfg, &g) != DUET_OK)
        return 20;
    t0 = cpu_s();
    if (procgroup_plan_recv(pg, &b, 1, &len) != DUET_OK)
        rc = 21;
    spent = cpu_s() - t0;
    if (spent > 0.1)
        rc = 22;
    t0 = cpu_s();
    if (group_barrier(g) != DUET_OK)
        rc = 23;
    if (cpu_s() - t0 > 0.1)
        rc = 24;
    group_destroy(g);
    while (procgroup_plan_recv(pg, &b, 1, &len) == DUET_OK)
        ;
    return rc;
}

static int crash_worker(procgroup_t *pg, void *arg)
{
    uint8_t b[16];
    size_t len;

    if (procgroup_rank(pg) == 2)
        raise(SIGKILL);
    while (procgroup_plan_recv(pg, b, sizeof(b), &len) == DUET_OK)
        ;
    return 0;
}

static void test_plans(char *const *argv, const char *mode)
{
    procgroup_opts_t o = {.world_size = 4, .plan_capacity = 8192,
                          .worker_main = argv ? NULL : plan_worker, .exec_argv = argv};
    static uint8_t buf[9000];
    procgroup_t *pg = NULL;
    duet_status_t s = DUET_OK;

    if (!ok(procgroup_start(&o, &pg) == DUET_OK, "%s: start 3 workers", mode))
        return;
    ok(procgroup_rank(pg) == 0 && procgroup_size(pg) == 4 && procgroup_pid(pg, 1) > 0 &&
       strlen(procgroup_id(pg)) > 0, "%s: driver rank, size, pids, id", mode);
    for (uint32_t k = 0; k < NPLANS && s == DUET_OK; k++) {
        plan_make(buf, k);
        s = procgroup_plan_send(pg, buf, plan_len(k));
    }
    ok(s == DUET_OK, "%s: %d plans sent", mode, NPLANS);
    is_int(procgroup_plan_send(pg, buf, 8193), DUET_ERR_TOO_BIG, "%s: plan over capacity", mode);
    ok(procgroup_plan_send(pg, buf, 100) == DUET_OK, "%s: plan too big for the workers' buffer",
       mode);
    is_int(procgroup_check(pg), DUET_OK, "%s: every worker alive", mode);
    ok(procgroup_stop(pg, 10) == DUET_OK, "%s: every worker got every plan intact and exited 0",
       mode);
    for (int r = 1; r < 4; r++)
        if (procgroup_wait_status(pg, r) != 0)
            diag("rank %d status 0x%x", r, procgroup_wait_status(pg, r));
    procgroup_destroy(pg);
}

static void test_idle(void)
{
    procgroup_opts_t o = {.world_size = 3, .worker_main = idle_worker};
    group_config_t cfg = {.backend = GROUP_BACKEND_SHM, .world_size = 3};
    procgroup_t *pg = NULL;
    group_t *g = NULL;
    char name[224];
    uint8_t b = 1;

    if (!ok(procgroup_start(&o, &pg) == DUET_OK, "idle: start 2 workers"))
        return;
    snprintf(name, sizeof(name), "%s.idle", procgroup_id(pg));
    cfg.name = name;
    ok(group_create(&cfg, &g) == DUET_OK, "idle: group joined");
    sleep(1);
    procgroup_plan_send(pg, &b, 1);
    sleep(1);
    ok(group_barrier(g) == DUET_OK, "idle: barrier");
    group_destroy(g);
    ok(procgroup_stop(pg, 10) == DUET_OK,
       "idle: workers waiting 1 s in plan_recv and 1 s in a barrier used < 0.1 s CPU");
    for (int r = 1; r < 3; r++)
        if (procgroup_wait_status(pg, r) != 0)
            diag("rank %d status 0x%x", r, procgroup_wait_status(pg, r));
    procgroup_destroy(pg);
}

static void test_crash(void)
{
    procgroup_opts_t o = {.world_size = 3, .worker_main = crash_worker, .timeout_s = 5};
    procgroup_t *pg = NULL;
    uint8_t b[4] = {0};
    duet_status_t s = DUET_OK;

    if (!ok(procgroup_start(&o, &pg) == DUET_OK, "crash: start"))
        return;
    for (int k = 0; k < 100 && s == DUET_OK; k++)
        s = procgroup_plan_send(pg, b, sizeof(b));
    is_int(s, DUET_ERR_PEER, "crash: plan_send reports the dead worker");
    is_int(procgroup_check(pg), DUET_ERR_PEER, "crash: procgroup_check too");
    is_int(procgroup_stop(pg, 5), DUET_ERR_PEER, "crash: stop reports the failure");
    ok(WIFEXITED(procgroup_wait_status(pg, 1)) && WEXITSTATUS(procgroup_wait_status(pg, 1)) == 0,
       "crash: the surviving worker exited cleanly");
    procgroup_destroy(pg);
}

static void test_bad(void)
{
    procgroup_opts_t o = {.world_size = 0, .worker_main = plan_worker};
    procgroup_t *pg = NULL;
    char *argv[] = {"/nonexistent/duet-worker", NULL};

    is_int(procgroup_start(&o, &pg), DUET_ERR_INVALID, "world size 0 is invalid");
    o.world_size = 65;
    is_int(procgroup_start(&o, &pg), DUET_ERR_INVALID, "world size 65 is invalid");
    o.world_size = 2;
    o.worker_main = NULL;
    is_int(procgroup_start(&o, &pg), DUET_ERR_INVALID, "no worker entry is invalid");
    is_int(procgroup_start(NULL, &pg), DUET_ERR_INVALID, "NULL options are invalid");
    o.exec_argv = argv;
    o.timeout_s = 2;
    ok(procgroup_start(&o, &pg) != DUET_OK, "a worker whose exec fails fails the start");
    is_int(procgroup_join_env(&pg), DUET_ERR_NOT_FOUND, "join without the environment");
    o.world_size = 1;
    o.exec_argv = NULL;
    ok(procgroup_start(&o, &pg) == DUET_OK && procgroup_stop(pg, 1) == DUET_OK,
       "a group of one (no workers)");
    procgroup_destroy(pg);
    procgroup_destroy(NULL);
}

int main(int argc, char **argv)
{
    char *exec_argv[] = {"/proc/self/exe", "--worker", NULL};

    if (argc > 1 && strcmp(argv[1], "--worker") == 0) {
        procgroup_t *pg = NULL;
        int rc;

        if (procgroup_join_env(&pg) != DUET_OK)
            return 30;
        rc = plan_worker(pg, NULL);
        procgroup_destroy(pg);
        return rc;
    }
    if (getenv("DUET_TEST_VERBOSE") == NULL)
        log_set_level(LOG_LEVEL_OFF);
    test_bad();
    test_plans(NULL, "fork");
    test_plans(exec_argv, "exec");
    test_idle();
    test_crash();
    return tap_done();
}
