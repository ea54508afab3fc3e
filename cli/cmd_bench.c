/* duet bench: a table of benchmarks, each `duet bench <name> [flags]`. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct {
    const char *name;
    const char *summary;
    int (*fn)(int argc, char **argv);
} bench_entry_t;

int bench_kv_run(int argc, char **argv);

static const bench_entry_t benches[] = {
    {"kv", "KV connector transfer rate and latency against UCX and memcpy references",
     bench_kv_run},
};

#define NBENCH ((int)(sizeof(benches) / sizeof(benches[0])))

static void usage(FILE *out)
{
    fprintf(out, "usage: duet bench <benchmark> [flags]\n\nbenchmarks:\n");
    for (int i = 0; i < NBENCH; i++)
        fprintf(out, "  %-10s %s\n", benches[i].name, benches[i].summary);
}

static int bench_run(int argc, char **argv)
{
    char name[64];

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < NBENCH; i++) {
        if (strcmp(argv[1], benches[i].name) == 0) {
            snprintf(name, sizeof(name), "duet bench %s", benches[i].name);
            argv[1] = name;
            return benches[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "duet bench: unknown benchmark '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

const cli_cmd_t cli_cmd_bench = {"bench", "benchmarks (duet bench --help)", bench_run};
