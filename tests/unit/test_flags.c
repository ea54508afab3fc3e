/* Flag parser: forms, bounds, errors and --help. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/flags.h"
#include "common/log.h"
#include "tests/tap.h"

static int64_t threads;
static double temp;
static const char *model;
static bool chat;

static const flag_t table[] = {
    {"threads", 't', FLAG_INT, &threads, "threads", "N", 1, 1024, 0, 0},
    {"temp", 0, FLAG_DOUBLE, &temp, "temperature", "T", 0, 0, 0.0, 2.0},
    {"model", 'm', FLAG_STRING, &model, "model path", "PATH", 0, 0, 0, 0},
    {"chat", 0, FLAG_BOOL, &chat, "chat template", NULL, 0, 0, 0, 0},
};
static const flags_usage_t usage = {"duet test", "[PROMPT]", "a test"};

static duet_status_t parse(int argc, char **argv, int *npos, char **pos)
{
    threads = 4; temp = 1.0; model = NULL; chat = false;
    return flags_parse(&usage, table, FLAGS_COUNT(table), argc, argv, pos, 2, npos);
}

int main(void)
{
    char *pos[2];
    int npos = -1;

    {
        char *argv[] = {"x", "--threads", "8", "--temp=0.5", "-m", "a.gguf",
                        "--chat", "hello", NULL};
        ok(parse(8, argv, &npos, pos) == DUET_OK, "parses all forms");
        is_int(threads, 8, "--threads 8");
        ok(temp == 0.5, "--temp=0.5");
        ok(model && model[0] == 'a', "-m a.gguf");
        ok(chat, "--chat");
        ok(npos == 1 && pos[0][0] == 'h', "one positional");
    }
    {
        char *argv[] = {"x", "--chat", "--no-chat", NULL};
        ok(parse(3, argv, &npos, pos) == DUET_OK && !chat, "--no-chat");
    }
    {
        char *argv[] = {"x", "--threads", "0", NULL};
        ok(parse(3, argv, &npos, pos) == DUET_ERR_INVALID, "--threads 0 refused");
    }
    {
        char *argv[] = {"x", "--threads", "abc", NULL};
        ok(parse(3, argv, &npos, pos) == DUET_ERR_INVALID, "non-integer refused");
    }
    {
        char *argv[] = {"x", "--temp", "3", NULL};
        ok(parse(3, argv, &npos, pos) == DUET_ERR_INVALID, "double out of range");
    }
    {
        char *argv[] = {"x", "--temp", "nan", NULL};
        ok(parse(3, argv, &npos, pos) == DUET_ERR_INVALID, "nan refused");
    }
    {
        char *argv[] = {"x", "--bogus", NULL};
        ok(parse(2, argv, &npos, pos) == DUET_ERR_INVALID, "unknown flag refused");
    }
    {
        char *argv[] = {"x", "--model", NULL};
        ok(parse(2, argv, &npos, pos) == DUET_ERR_INVALID, "missing value refused");
    }
    {
        char *argv[] = {"x", "a", "b", "c", NULL};
        ok(parse(4, argv, &npos, pos) == DUET_ERR_INVALID, "too many positionals");
    }
    {
        char *argv[] = {"x", "--log-level", "debug", NULL};
        ok(parse(3, argv, &npos, pos) == DUET_OK && log_get_level() == LOG_LEVEL_DEBUG,
           "--log-level debug");
        log_set_level(LOG_LEVEL_INFO);
    }
    {
        char *argv[] = {"x", "--log-level=loud", NULL};
        ok(parse(2, argv, &npos, pos) == DUET_ERR_INVALID, "bad log level refused");
    }
    {
        char *argv[] = {"x", "--help", NULL};
        ok(parse(2, argv, &npos, pos) == DUET_DONE, "--help returns DONE");
    }
    {
        char *argv[] = {"x", "--", "--threads", NULL};
        ok(parse(3, argv, &npos, pos) == DUET_OK && npos == 1, "-- ends flags");
    }
    return tap_done();
}
