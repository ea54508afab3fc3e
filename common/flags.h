/* Command-line flags shared by every subcommand: a table of flag_t, parsed
 * by flags_parse. Accepted forms: --name value, --name=value, -x value,
 * --bool-flag, --no-bool-flag. "--help"/"-h" prints usage and returns
 * DUET_DONE; "--log-level L" is understood by every command. */
#ifndef DUET_COMMON_FLAGS_H
#define DUET_COMMON_FLAGS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "status.h"

typedef enum {
    FLAG_BOOL,      /* dst: bool */
    FLAG_INT,       /* dst: int64_t, checked against [min, max] */
    FLAG_DOUBLE,    /* dst: double, checked against [dmin, dmax] */
    FLAG_STRING,    /* dst: const char * (points into argv) */
} flag_type_t;

typedef struct {
    const char  *name;      /* long name without "--" */
    char         short_name;/* 0 for none */
    flag_type_t  type;
    void        *dst;
    const char  *help;
    const char  *metavar;   /* shown in usage, e.g. "N" */
    int64_t      min, max;  /* FLAG_INT bounds; min == max == 0: any */
    double       dmin, dmax;/* FLAG_DOUBLE bounds; dmin == dmax == 0: any */
} flag_t;

typedef struct {
    const char *cmd;        /* "duet generate" */
    const char *args;       /* positional synopsis, e.g. "[PROMPT]" or NULL */
    const char *summary;    /* one line */
} flags_usage_t;

/* Parse argv[1..argc-1] (argv[0] is the command name) into the table.
 * Positional arguments are collected into pos (up to max_pos; more is an
 * error) and counted in *npos_p. On a bad flag or value, prints a clear
 * error naming the flag to stderr and returns DUET_ERR_INVALID. */
duet_status_t flags_parse(const flags_usage_t *usage, const flag_t *flags,
                          int nflags, int argc, char **argv,
                          char **pos, int max_pos, int *npos_p);

/* Print usage for the table. */
void flags_print_usage(FILE *out, const flags_usage_t *usage,
                       const flag_t *flags, int nflags);

#define FLAGS_COUNT(table) ((int)(sizeof(table) / sizeof((table)[0])))

#endif
