/* Minimal TAP producer for meson's 'tap' protocol. Header-only; each test
 * program includes it once. Exit with tap_done(); tap_plan_skip skips the
 * whole program (tap_exit_skip in tests registered with 'exitcode'). */
#ifndef DUET_TESTS_TAP_H
#define DUET_TESTS_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed;

/* Nothing here can run (no model file, say): "1..0 # SKIP" and exit 0, which
 * meson's TAP parser counts as skipped (a non-zero exit, 77 too, is an
 * error there). */
static inline void tap_plan_skip(const char *why)
{
    printf("1..0 # SKIP %s\n", why);
    fflush(stdout);
    exit(0);
}

/* The same for a test registered with protocol 'exitcode' (GPU tests): exit
 * code 77 is the skip there. */
static inline void tap_exit_skip(const char *why)
{
    printf("1..0 # SKIP %s\n", why);
    fflush(stdout);
    exit(77);
}

/* One check that cannot run here (no device, say): counted, not failed. */
static inline void tap_skip(const char *why)
{
    tap_n++;
    printf("ok %d # SKIP %s\n", tap_n, why);
    fflush(stdout);
}

__attribute__((format(printf, 4, 5)))
static inline int tap_ok_at(int cond, const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    tap_n++;
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!cond) {
        tap_failed++;
        printf("#   failed at %s:%d\n", file, line);
    }
    fflush(stdout);
    return cond;
}

#define ok(cond, ...) tap_ok_at(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define is_int(got, want, ...)                                              \
    do {                                                                    \
        long long _g = (long long)(got), _w = (long long)(want);            \
        if (!ok(_g == _w, __VA_ARGS__))                                     \
            printf("#   got %lld, want %lld\n", _g, _w);                    \
    } while (0)
#define diag(...) (printf("# "), printf(__VA_ARGS__), printf("\n"))

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    if (tap_failed)
        printf("# %d of %d failed\n", tap_failed, tap_n);
    return tap_failed ? 1 : 0;
}

#endif
