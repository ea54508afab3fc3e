/* Logging: levels, timestamps, component and request id, and the CHECK
 * macros that log file:line at each hop of a failure.
 *
 * A file names its component by defining DUET_LOG_COMPONENT before including
 * this header; the default is "duet". The level is process-wide (the one
 * documented mutable global of this module), set by --log-level. */
#ifndef DUET_COMMON_LOG_H
#define DUET_COMMON_LOG_H

#include <stdint.h>

#include "status.h"

#ifndef DUET_LOG_COMPONENT
#define DUET_LOG_COMPONENT "duet"
#endif

typedef enum {
    LOG_LEVEL_TRACE = 0,
    LOG_LEVEL_DEBUG,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
    LOG_LEVEL_OFF,
} log_level_t;

void log_set_level(log_level_t level);
log_level_t log_get_level(void);

/* Parse "trace|debug|info|warn|error|off". */
duet_status_t log_level_parse(const char *name, log_level_t *level_p);

/* Write one line to stderr: "time level component [req id] file:line msg".
 * req_id 0 means no request. Thread-safe (one write per line). */
void log_emit(log_level_t level, const char *component, uint64_t req_id,
              const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#define LOG_AT(level, req, ...)                                              \
    do {                                                                     \
        if ((level) >= log_get_level())                                      \
            log_emit((level), DUET_LOG_COMPONENT, (req), __FILE__, __LINE__, \
                     __VA_ARGS__);                                           \
    } while (0)

#define log_trace(...) LOG_AT(LOG_LEVEL_TRACE, 0, __VA_ARGS__)
#define log_debug(...) LOG_AT(LOG_LEVEL_DEBUG, 0, __VA_ARGS__)
#define log_info(...)  LOG_AT(LOG_LEVEL_INFO, 0, __VA_ARGS__)
#define log_warn(...)  LOG_AT(LOG_LEVEL_WARN, 0, __VA_ARGS__)
#define log_error(...) LOG_AT(LOG_LEVEL_ERROR, 0, __VA_ARGS__)
/* Same, tagged with a request id. */
#define log_req(level, req, ...) LOG_AT((level), (req), __VA_ARGS__)

/* Evaluate a duet_status_t expression; on error, log it with file:line and
 * return it from the enclosing function. */
#define CHECK(expr)                                                         \
    do {                                                                    \
        duet_status_t _chk_s = (expr);                                      \
        if (_chk_s < 0) {                                                   \
            LOG_AT(LOG_LEVEL_DEBUG, 0, "%s: %s", #expr,                      \
                   duet_status_str(_chk_s));                                \
            return _chk_s;                                                  \
        }                                                                   \
    } while (0)

/* Evaluate into status_var; on error, log with file:line and goto label. */
#define CHECK_GOTO(expr, status_var, label)                                 \
    do {                                                                    \
        (status_var) = (expr);                                              \
        if ((status_var) < 0) {                                             \
            LOG_AT(LOG_LEVEL_DEBUG, 0, "%s: %s", #expr,                      \
                   duet_status_str(status_var));                            \
            goto label;                                                     \
        }                                                                   \
    } while (0)

#endif
