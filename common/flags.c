/* Table-driven flag parser shared by every subcommand. */
#include "flags.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const flag_t *flags_find_long(const flag_t *flags, int n,
                                     const char *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(flags[i].name) == len && strncmp(flags[i].name, name, len) == 0)
            return &flags[i];
    return NULL;
}

static const flag_t *flags_find_short(const flag_t *flags, int n, char c)
{
    for (int i = 0; i < n; i++)
        if (flags[i].short_name == c)
            return &flags[i];
    return NULL;
}

static duet_status_t flags_set(const flags_usage_t *usage, const flag_t *f,
                               const char *val)
{
    char *end;

    switch (f->type) {
    case FLAG_BOOL:
        if (val == NULL || strcmp(val, "true") == 0 || strcmp(val, "1") == 0) {
            *(bool *)f->dst = true;
        } else if (strcmp(val, "false") == 0 || strcmp(val, "0") == 0) {
            *(bool *)f->dst = false;
        } else {
            fprintf(stderr, "%s: --%s takes true or false, not '%s'\n",
                    usage->cmd, f->name, val);
            return DUET_ERR_INVALID;
        }
        return DUET_OK;
    case FLAG_INT: {
        long long v;

        errno = 0;
        v = strtoll(val, &end, 0);
        if (errno != 0 || end == val || *end != '\0') {
            fprintf(stderr, "%s: --%s needs an integer, not '%s'\n",
                    usage->cmd, f->name, val);
            return DUET_ERR_INVALID;
        }
        if ((f->min != 0 || f->max != 0) && (v < f->min || v > f->max)) {
            fprintf(stderr, "%s: --%s must be between %lld and %lld, not %lld\n",
                    usage->cmd, f->name, (long long)f->min, (long long)f->max, v);
            return DUET_ERR_INVALID;
        }
        *(int64_t *)f->dst = v;
        return DUET_OK;
    }
    case FLAG_DOUBLE: {
        double v;

        errno = 0;
        v = strtod(val, &end);
        if (errno != 0 || end == val || *end != '\0' || !isfinite(v)) {
            fprintf(stderr, "%s: --%s needs a number, not '%s'\n",
                    usage->cmd, f->name, val);
            return DUET_ERR_INVALID;
        }
        if ((f->dmin != 0 || f->dmax != 0) && (v < f->dmin || v > f->dmax)) {
            fprintf(stderr, "%s: --%s must be between %g and %g, not %g\n",
                    usage->cmd, f->name, f->dmin, f->dmax, v);
            return DUET_ERR_INVALID;
        }
        *(double *)f->dst = v;
        return DUET_OK;
    }
    case FLAG_STRING:
        *(const char **)f->dst = val;
        return DUET_OK;
    }
    return DUET_ERR_INTERNAL;
}

static duet_status_t flags_log_level(const flags_usage_t *usage, const char *val)
{
    log_level_t level;

    if (val == NULL || log_level_parse(val, &level) != DUET_OK) {
        fprintf(stderr, "%s: --log-level takes trace, debug, info, warn, error "
                "or off, not '%s'\n", usage->cmd, val ? val : "");
        return DUET_ERR_INVALID;
    }
    log_set_level(level);
    return DUET_OK;
}

duet_status_t flags_parse(const flags_usage_t *usage, const flag_t *flags,
                          int nflags, int argc, char **argv,
                          char **pos, int max_pos, int *npos_p)
{
    int npos = 0;
    bool only_pos = false;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const flag_t *f = NULL;
        const char *val = NULL;
        bool negated = false;

        if (only_pos || arg[0] != '-' || arg[1] == '\0') {
            if (npos >= max_pos) {
                fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n",
                        usage->cmd, arg);
                return DUET_ERR_INVALID;
            }
            pos[npos++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            flags_print_usage(stdout, usage, flags, nflags);
            return DUET_DONE;
        }
        if (arg[1] == '-') {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);

            if (len == 9 && strncmp(name, "log-level", 9) == 0) {
                if (eq == NULL && i + 1 >= argc) {
                    fprintf(stderr, "%s: --log-level needs a value\n", usage->cmd);
                    return DUET_ERR_INVALID;
                }
                CHECK(flags_log_level(usage, eq ? eq + 1 : argv[++i]));
                continue;
            }
            f = flags_find_long(flags, nflags, name, len);
            if (f == NULL && len > 3 && strncmp(name, "no-", 3) == 0) {
                f = flags_find_long(flags, nflags, name + 3, len - 3);
                if (f != NULL && f->type != FLAG_BOOL)
                    f = NULL;
                negated = f != NULL;
            }
            if (f == NULL) {
                fprintf(stderr, "%s: unknown flag '--%.*s' (see --help)\n",
                        usage->cmd, (int)len, name);
                return DUET_ERR_INVALID;
            }
            if (eq != NULL) {
                if (negated) {
                    fprintf(stderr, "%s: --no-%s takes no value\n", usage->cmd,
                            f->name);
                    return DUET_ERR_INVALID;
                }
                val = eq + 1;
            }
        } else {
            f = flags_find_short(flags, nflags, arg[1]);
            if (f == NULL || arg[2] != '\0') {
                fprintf(stderr, "%s: unknown flag '%s' (see --help)\n",
                        usage->cmd, arg);
                return DUET_ERR_INVALID;
            }
        }
        if (f->type == FLAG_BOOL) {
            if (negated) {
                *(bool *)f->dst = false;
                continue;
            }
        } else if (val == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: --%s needs a value\n", usage->cmd, f->name);
                return DUET_ERR_INVALID;
            }
            val = argv[++i];
        }
        CHECK(flags_set(usage, f, val));
    }
    if (npos_p != NULL)
        *npos_p = npos;
    return DUET_OK;
}

void flags_print_usage(FILE *out, const flags_usage_t *usage,
                       const flag_t *flags, int nflags)
{
    fprintf(out, "usage: %s [flags]%s%s\n", usage->cmd,
            usage->args ? " " : "", usage->args ? usage->args : "");
    if (usage->summary)
        fprintf(out, "\n%s\n", usage->summary);
    fprintf(out, "\nflags:\n");
    for (int i = 0; i < nflags; i++) {
        const flag_t *f = &flags[i];
        char left[64];

        snprintf(left, sizeof(left), "%s%c%s--%s%s%s",
                 f->short_name ? "-" : "", f->short_name ? f->short_name : ' ',
                 f->short_name ? ", " : " ", f->name,
                 f->type == FLAG_BOOL ? "" : " ",
                 f->type == FLAG_BOOL ? "" : (f->metavar ? f->metavar : "VALUE"));
        fprintf(out, "  %-28s %s\n", f->short_name ? left : left + 2,
                f->help ? f->help : "");
    }
    fprintf(out, "  %-28s %s\n", "--log-level LEVEL",
            "trace, debug, info, warn, error or off (default info)");
    fprintf(out, "  %-28s %s\n", "-h, --help", "show this help");
}
