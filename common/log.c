/* Logging to stderr with one write(2) per line so concurrent processes and
 * threads do not interleave partial lines. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Process-wide level: the documented global of this module. */
static _Atomic int log_level = LOG_LEVEL_INFO;

static const char *const log_level_names[] = {
    "trace", "debug", "info", "warn", "error", "off",
};

void log_set_level(log_level_t level)
{
    atomic_store(&log_level, (int)level);
}

log_level_t log_get_level(void)
{
    return (log_level_t)atomic_load(&log_level);
}

duet_status_t log_level_parse(const char *name, log_level_t *level_p)
{
    for (int i = LOG_LEVEL_TRACE; i <= LOG_LEVEL_OFF; i++) {
        if (strcasecmp(name, log_level_names[i]) == 0) {
            *level_p = (log_level_t)i;
            return DUET_OK;
        }
    }
    if (strcasecmp(name, "warning") == 0) {
        *level_p = LOG_LEVEL_WARN;
        return DUET_OK;
    }
    return DUET_ERR_INVALID;
}

void log_emit(log_level_t level, const char *component, uint64_t req_id,
              const char *file, int line, const char *fmt, ...)
{
    char buf[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    const char *base = strrchr(file, '/');
    va_list ap;
    int r;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
    r = snprintf(buf + n, sizeof(buf) - n, ".%03ld %-5s %s[%d] ",
                 ts.tv_nsec / 1000000, log_level_names[level], component,
                 (int)getpid());
    n += (r > 0) ? (size_t)r : 0;
    if (req_id != 0 && n < sizeof(buf)) {
        r = snprintf(buf + n, sizeof(buf) - n, "req=%llu ",
                     (unsigned long long)req_id);
        n += (r > 0) ? (size_t)r : 0;
    }
    if (level <= LOG_LEVEL_DEBUG && n < sizeof(buf)) {
        r = snprintf(buf + n, sizeof(buf) - n, "%s:%d ",
                     base ? base + 1 : file, line);
        n += (r > 0) ? (size_t)r : 0;
    }
    if (n < sizeof(buf)) {
        va_start(ap, fmt);
        r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
        va_end(ap);
        n += (r > 0) ? (size_t)r : 0;
    }
    if (n >= sizeof(buf) - 1)
        n = sizeof(buf) - 2;
    buf[n++] = '\n';
    if (write(STDERR_FILENO, buf, n) < 0) {
        /* nowhere left to report it */
    }
}
