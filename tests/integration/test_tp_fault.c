/* Failures of a tensor-parallel engine (real worker processes):
 *   - kill -9 of a worker in the middle of a step (TP=2, TP=3): engine_step
 *     fails within 5 s, later steps fail at once, engine_destroy reaps every
 *     worker;
 *   - a worker that hangs (SIGSTOP) with a 1 s step timeout: the step fails
 *     with a timeout, and the stopped worker is killed and reaped;
 *   - kill -9 of the driver (TP=4, idle between steps): its workers are gone
 *     within 5 s (this test is
 *     their subreaper, so it sees them end). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "engine/engine.h"
#include "tests/unit/engine_testutil.h"

#define PROMPT 384

static int32_t prompt[PROMPT];

typedef struct {
    pid_t          victim;
    int            sig;
    double         delay_s;
    atomic_int     in_step;     /* main: 1 while inside engine_step */
    double         t_sig;
    int            mid_step;    /* in_step when the signal went out */
} killer_t;

static void *killer_main(void *arg)
{
    killer_t *k = arg;
    struct timespec ts = {0, 1000000};

    while (!atomic_load(&k->in_step))
        nanosleep(&ts, NULL);
    ts.tv_sec = (time_t)k->delay_s;
    ts.tv_nsec = (long)((k->delay_s - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
    k->mid_step = atomic_load(&k->in_step);
    k->t_sig = clock_now_s();
    kill(k->victim, k->sig);
    return NULL;
}

static int no_children(void)
{
    return waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD;
}

static engine_t *start(const tmodel_t *m, int tp, double timeout_s)
{
    engine_req_params_t p;
    engine_opts_t o;
    engine_t *e;

    engine_opts_default(&o);
    o.threads = 1;
    o.kv_blocks = 64;
    o.tp_size = tp;
    o.tp_timeout_s = timeout_s;
    e = tengine(m, &o);
    if (e == NULL)
        return NULL;
    engine_req_params_default(&p);
    p.max_tokens = 200;
    p.sampling.ignore_eos = true;
    for (uint64_t id = 1; id <= 2; id++) {
        if (engine_add(e, id, prompt, PROMPT, &p, NULL, 0) != DUET_OK) {
            engine_destroy(e);
            return NULL;
        }
    }
    return e;
}

/* Step until a step fails; the signal goes to worker `rank` delay_s into
 * the first step. */
static void fault(const tmodel_t *m, int tp, int rank, int sig, double timeout_s,
                  duet_status_t want, double limit_s, const char *what)
{
    const engine_out_t *outs;
    killer_t k = {.sig = sig, .delay_s = 0.02};
    pthread_t th;
    pid_t pids[8] = {0};
    duet_status_t s = DUET_OK;
    double t_err = 0;
    int n, steps = 0;
    engine_t *e = start(m, tp, timeout_s);

    if (e == NULL) {
        ok(0, "%s: engine", what);
        return;
    }
    for (int r = 1; r < tp; r++)
        pids[r] = exec_worker_pid(engine_executor(e), r);
    k.victim = pids[rank];
    /* threads only after the fork (engine_create) */
    pthread_create(&th, NULL, killer_main, &k);
    while (s == DUET_OK && steps < 1000) {
        atomic_store(&k.in_step, 1);
        s = engine_step(e, &outs, &n);
        atomic_store(&k.in_step, 0);
        steps++;
    }
    t_err = clock_now_s();
    pthread_join(th, NULL);
    ok(s == want, "%s: the step fails with %s (got %s after %d steps)", what,
       duet_status_str(want), duet_status_str(s), steps);
    diag("%s: signal %s a step; error after %.3f s", what, k.mid_step ? "inside" : "between",
         t_err - k.t_sig);
    ok(t_err - k.t_sig < limit_s, "%s: reported within %.0f s (%.3f s)", what, limit_s,
       t_err - k.t_sig);
    ok(engine_step(e, &outs, &n) != DUET_OK && !exec_ok(engine_executor(e)),
       "%s: later steps fail at once", what);
    engine_destroy(e);
    ok(no_children(), "%s: every worker reaped", what);
    for (int r = 1; r < tp; r++)
        if (kill(pids[r], 0) == 0)
            diag("pid %d still exists", (int)pids[r]);
}

/* The driver in a child: it writes its workers' pids to fd and waits. */
static void driver_child(const tmodel_t *m, int fd)
{
    engine_t *e = start(m, 4, 0);
    pid_t pids[3];

    if (e == NULL)
        _exit(1);
    for (int r = 1; r < 4; r++)
        pids[r - 1] = exec_worker_pid(engine_executor(e), r);
    if (write(fd, pids, sizeof(pids)) != (ssize_t)sizeof(pids))
        _exit(1);
    for (;;)
        pause();
}

static void driver_death(const tmodel_t *m)
{
    int fds[2], st, gone = 0;
    pid_t drv, pids[3] = {0, 0, 0};
    double t0;

    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0 || pipe(fds) != 0) {
        ok(0, "subreaper");
        return;
    }
    drv = fork();
    if (drv == 0) {
        close(fds[0]);
        driver_child(m, fds[1]);
    }
    close(fds[1]);
    ok(read(fds[0], pids, sizeof(pids)) == (ssize_t)sizeof(pids) && pids[0] > 0 && pids[2] > 0,
       "driver child started 3 workers");
    close(fds[0]);
    kill(drv, SIGKILL);
    waitpid(drv, &st, 0);
    t0 = clock_now_s();
    while (gone < 3 && clock_now_s() - t0 < 5.0) {
        pid_t p = waitpid(-1, &st, WNOHANG);

        if (p == pids[0] || p == pids[1] || p == pids[2])
            gone++;
        else
            usleep(10000);
    }
    ok(gone == 3, "kill -9 of the driver: its 3 workers gone in %.3f s", clock_now_s() - t0);
    ok(no_children(), "driver death: nothing left behind");
}

int main(void)
{
    tmodel_t m;

    for (int i = 0; i < PROMPT; i++)
        prompt[i] = (int32_t)((i * 7919u) % 1024u);
    if (tmodel_open(&m, "tp_fault", "--layers 4 --hidden 512 --heads 8 --kv-heads 4 --ffn 1536 "
                                    "--vocab 1024 --ctx 1024 --type q4_1 --seed 21") != 0) {
        ok(0, "mkmodel");
        return tap_done();
    }
    fault(&m, 2, 1, SIGKILL, 0, DUET_ERR_PEER, 5.0, "TP=2, kill -9 of worker 1");
    fault(&m, 4, 2, SIGKILL, 0, DUET_ERR_PEER, 5.0, "TP=4, kill -9 of worker 2");
    fault(&m, 2, 1, SIGSTOP, 1.0, DUET_ERR_TIMEOUT, 5.0, "TP=2, worker 1 stopped, 1 s timeout");
    driver_death(&m);
    tmodel_close(&m);
    return tap_done();
}
