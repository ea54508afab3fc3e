/* duet serve's supervisor with real child processes: clean stop, stubborn
 * children, crash reports, restarts, exec failures and parent death. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/supervisor.h"
#include "common/clock.h"
#include "common/log.h"
#include "tests/tap.h"

static int alive(pid_t pid)
{
    return pid > 0 && kill(pid, 0) == 0;
}

static sup_child_spec_t sh(const char *name, const char *script, bool critical)
{
    sup_child_spec_t s = {.name = name, .critical = critical};

    s.argv[0] = "/bin/sh";
    s.argv[1] = "-c";
    s.argv[2] = (char *)script;
    return s;
}

static void test_stop(void)
{
    supervisor_t *sup;
    sup_child_spec_t a = sh("a", "exec sleep 100", true);
    sup_child_spec_t b = sh("b", "exec sleep 100", false);
    sup_child_spec_t stubborn = sh("stubborn", "trap '' TERM; while :; do sleep 0.05; done", false);
    pid_t pa, pb, ps;
    uint64_t t0;

    ok(sup_create(false, 300, &sup) == DUET_OK, "create");
    ok(sup_start(sup, &a) == DUET_OK && sup_start(sup, &b) == DUET_OK &&
       sup_start(sup, &stubborn) == DUET_OK, "three children started");
    pa = sup_child_pid(sup, "a");
    pb = sup_child_pid(sup, "b");
    ps = sup_child_pid(sup, "stubborn");
    ok(alive(pa) && alive(pb) && alive(ps), "children running");
    t0 = clock_now_ns();
    ok(sup_run(sup, 200, NULL, NULL) == DUET_OK, "run returns at timeout");
    ok(!alive(pa) && !alive(pb), "SIGTERM stopped the well-behaved children");
    ok(!alive(ps), "the child ignoring SIGTERM was killed after the grace period");
    ok(clock_now_ns() - t0 < 3000000000ull, "stop took less than 3 s");
    sup_destroy(sup);
}

static void test_crash(void)
{
    supervisor_t *sup;
    sup_child_spec_t crash = sh("crash", "sleep 0.1; exit 3", true);
    sup_child_spec_t other = sh("other", "exec sleep 100", false);
    pid_t po;

    sup_create(false, 500, &sup);
    sup_start(sup, &other);
    sup_start(sup, &crash);
    po = sup_child_pid(sup, "other");
    ok(sup_run(sup, 5000, NULL, NULL) == DUET_ERR_PEER,
       "a critical child's crash ends the run with an error");
    ok(!alive(po), "and the other children are stopped");
    sup_destroy(sup);
}

static void test_restart(void)
{
    supervisor_t *sup;
    sup_child_spec_t flaky = sh("flaky", "exit 1", true);
    sup_child_spec_t missing = {.name = "missing", .argv = {"/nonexistent/duet", NULL}};

    sup_create(true, 500, &sup);
    sup_start(sup, &flaky);
    ok(sup_start(sup, &missing) == DUET_OK, "a child whose exec fails still starts (and exits 127)");
    ok(sup_run(sup, 1600, NULL, NULL) == DUET_OK, "run with restarts survives crashes");
    ok(sup_child_restarts(sup, "flaky") >= 1, "crashed child was restarted (%d)",
       sup_child_restarts(sup, "flaky"));
    sup_destroy(sup);
}

static bool ready_after_two(void *arg)
{
    int *calls = arg;

    return ++*calls >= 2;
}

static void test_ready(void)
{
    supervisor_t *sup;
    sup_child_spec_t a = sh("a", "exec sleep 100", false);
    int calls = 0;

    sup_create(false, 300, &sup);
    sup_start(sup, &a);
    sup_run(sup, 500, ready_after_two, &calls);
    is_int(calls, 2, "ready callback polled until it said yes, then no more");
    sup_destroy(sup);
}

static void test_parent_death(void)
{
    int fd[2];
    pid_t mid, grandchild = -1;

    if (pipe(fd) != 0) {
        ok(0, "pipe");
        return;
    }
    mid = fork();
    if (mid == 0) {
        supervisor_t *sup;
        sup_child_spec_t a = sh("a", "exec sleep 100", false);
        pid_t p;

        close(fd[0]);
        sup_create(false, 300, &sup);
        sup_start(sup, &a);
        p = sup_child_pid(sup, "a");
        if (write(fd[1], &p, sizeof(p)) != sizeof(p))
            _exit(1);
        pause();
        _exit(0);
    }
    close(fd[1]);
    if (read(fd[0], &grandchild, sizeof(grandchild)) != sizeof(grandchild))
        grandchild = -1;
    close(fd[0]);
    ok(alive(grandchild), "grandchild started");
    kill(mid, SIGKILL);
    waitpid(mid, NULL, 0);
    for (int i = 0; i < 200 && alive(grandchild); i++)
        usleep(10000);
    ok(!alive(grandchild), "kill -9 of the supervisor takes its children down");
}

int main(void)
{
    log_set_level(LOG_LEVEL_OFF);
    signal(SIGCHLD, SIG_DFL);
    test_stop();
    test_crash();
    test_restart();
    test_ready();
    test_parent_death();
    return tap_done();
}
