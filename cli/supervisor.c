/* duet serve's process supervisor: fork/exec, crash reports, restarts with
 * backoff, clean stop. Signals are consumed through a signalfd so that the
 * loop never races a handler. */
#define DUET_LOG_COMPONENT "serve"
#include "cli/supervisor.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"

typedef struct {
    char    *name;
    char    *argv[SUP_MAX_ARGS];
    bool     critical;
    pid_t    pid;            /* -1 when not running */
    int      restarts;
    uint64_t restart_at_ns;  /* 0: none scheduled */
    bool     dead;           /* exited and will not be restarted */
} sup_child_t;

struct supervisor {
    sup_child_t children[SUP_MAX_CHILDREN];
    int         n;
    bool        restart;
    int         grace_ms;
    pid_t       self;
};

duet_status_t sup_create(bool restart, int grace_ms, supervisor_t **sup_p)
{
    supervisor_t *sup = calloc(1, sizeof(*sup));

    if (sup == NULL)
        return DUET_ERR_NOMEM;
    sup->restart = restart;
    sup->grace_ms = grace_ms;
    sup->self = getpid();
    *sup_p = sup;
    return DUET_OK;
}

static void sup_child_free(sup_child_t *c)
{
    free(c->name);
    for (int i = 0; i < SUP_MAX_ARGS && c->argv[i] != NULL; i++)
        free(c->argv[i]);
    memset(c, 0, sizeof(*c));
}

void sup_destroy(supervisor_t *sup)
{
    if (sup == NULL)
        return;
    sup_stop(sup);
    for (int i = 0; i < sup->n; i++)
        sup_child_free(&sup->children[i]);
    free(sup);
}

static duet_status_t sup_spawn(supervisor_t *sup, sup_child_t *c)
{
    sigset_t all;
    pid_t pid;

    pid = fork();
    if (pid < 0) {
        log_error("fork %s: %s", c->name, strerror(errno));
        return duet_status_from_errno(errno);
    }
    if (pid == 0) {
        /* child: die with the supervisor, restore default signal state */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != sup->self)
            _exit(1);   /* supervisor already gone */
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        execv(c->argv[0], c->argv);
        log_error("exec %s (%s): %s", c->name, c->argv[0], strerror(errno));
        _exit(127);
    }
    c->pid = pid;
    c->restart_at_ns = 0;
    log_info("started %s (pid %d)", c->name, (int)pid);
    return DUET_OK;
}

duet_status_t sup_start(supervisor_t *sup, const sup_child_spec_t *spec)
{
    sup_child_t *c;
    duet_status_t status;
    int i;

    if (sup->n >= SUP_MAX_CHILDREN || spec->argv[0] == NULL)
        return DUET_ERR_INVALID;
    c = &sup->children[sup->n];
    memset(c, 0, sizeof(*c));
    c->name = strdup(spec->name);
    if (c->name == NULL)
        goto err_nomem;
    for (i = 0; i < SUP_MAX_ARGS - 1 && spec->argv[i] != NULL; i++) {
        c->argv[i] = strdup(spec->argv[i]);
        if (c->argv[i] == NULL)
            goto err_nomem;
    }
    c->critical = spec->critical;
    c->pid = -1;
    status = sup_spawn(sup, c);
    if (status != DUET_OK) {
        sup_child_free(c);
        return status;
    }
    sup->n++;
    return DUET_OK;

err_nomem:
    sup_child_free(c);
    return DUET_ERR_NOMEM;
}

static sup_child_t *sup_find_pid(supervisor_t *sup, pid_t pid)
{
    for (int i = 0; i < sup->n; i++)
        if (sup->children[i].pid == pid)
            return &sup->children[i];
    return NULL;
}

static uint64_t sup_backoff_ns(int restarts)
{
    uint64_t s = 1;

    for (int i = 0; i < restarts && s < 30; i++)
        s *= 2;
    return (s > 30 ? 30 : s) * 1000000000ull;
}

/* Reap exited children; returns true when a critical child died for good. */
static bool sup_reap(supervisor_t *sup)
{
    bool fatal = false;
    int wstatus;
    pid_t pid;

    while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
        sup_child_t *c = sup_find_pid(sup, pid);

        if (c == NULL)
            continue;
        c->pid = -1;
        if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) {
            log_info("%s exited", c->name);
        } else if (WIFEXITED(wstatus)) {
            log_error("%s exited with status %d", c->name, WEXITSTATUS(wstatus));
        } else {
            log_error("%s killed by signal %d (%s)", c->name, WTERMSIG(wstatus),
                      strsignal(WTERMSIG(wstatus)));
        }
        if (sup->restart) {
            c->restart_at_ns = clock_now_ns() + sup_backoff_ns(c->restarts);
            log_info("restarting %s in %.0f s", c->name,
                     (double)sup_backoff_ns(c->restarts) * 1e-9);
        } else {
            c->dead = true;
            if (c->critical)
                fatal = true;
        }
    }
    return fatal;
}

static void sup_restart_due(supervisor_t *sup)
{
    uint64_t now = clock_now_ns();

    for (int i = 0; i < sup->n; i++) {
        sup_child_t *c = &sup->children[i];

        if (c->pid < 0 && c->restart_at_ns != 0 && now >= c->restart_at_ns) {
            c->restarts++;
            if (sup_spawn(sup, c) != DUET_OK)
                c->restart_at_ns = now + sup_backoff_ns(c->restarts);
        }
    }
}

duet_status_t sup_run(supervisor_t *sup, int timeout_ms,
                      bool (*ready_cb)(void *arg), void *arg)
{
    sigset_t mask, old;
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX
                                       : clock_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    duet_status_t status = DUET_OK;
    bool ready = ready_cb == NULL;
    int sfd;

    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, &old);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        return duet_status_from_errno(errno);
    }
    for (;;) {
        struct pollfd pfd = {.fd = sfd, .events = POLLIN};
        struct signalfd_siginfo si;
        bool stop = false;

        if (sup_reap(sup)) {
            status = DUET_ERR_PEER;
            break;
        }
        sup_restart_due(sup);
        if (!ready && ready_cb(arg))
            ready = true;
        if (clock_now_ns() >= deadline)
            break;
        if (poll(&pfd, 1, 100) > 0) {
            while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) {
                    log_info("received %s, stopping", strsignal((int)si.ssi_signo));
                    stop = true;
                }
            }
        }
        if (stop)
            break;
    }
    close(sfd);
    sup_stop(sup);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return status;
}

void sup_stop(supervisor_t *sup)
{
    uint64_t deadline = clock_now_ns() + (uint64_t)sup->grace_ms * 1000000ull;
    bool any;

    for (int i = sup->n - 1; i >= 0; i--) {
        sup->children[i].restart_at_ns = 0;
        if (sup->children[i].pid > 0)
            kill(sup->children[i].pid, SIGTERM);
    }
    do {
        any = false;
        for (int i = 0; i < sup->n; i++) {
            sup_child_t *c = &sup->children[i];
            int wstatus;

            if (c->pid > 0 && waitpid(c->pid, &wstatus, WNOHANG) == c->pid)
                c->pid = -1;
            if (c->pid > 0)
                any = true;
        }
        if (any)
            usleep(10000);
    } while (any && clock_now_ns() < deadline);
    for (int i = 0; i < sup->n; i++) {
        sup_child_t *c = &sup->children[i];

        if (c->pid > 0) {
            log_warn("%s did not stop in %d ms, killing it", c->name, sup->grace_ms);
            kill(c->pid, SIGKILL);
            waitpid(c->pid, NULL, 0);
            c->pid = -1;
        }
        c->dead = true;
    }
}

pid_t sup_child_pid(const supervisor_t *sup, const char *name)
{
    for (int i = 0; i < sup->n; i++)
        if (strcmp(sup->children[i].name, name) == 0)
            return sup->children[i].pid;
    return -1;
}

int sup_child_restarts(const supervisor_t *sup, const char *name)
{
    for (int i = 0; i < sup->n; i++)
        if (strcmp(sup->children[i].name, name) == 0)
            return sup->children[i].restarts;
    return -1;
}
