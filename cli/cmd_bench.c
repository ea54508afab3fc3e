/* duet bench <name>: dispatcher over the benchmarks. A benchmark joins by
 * defining `const cli_cmd_t cli_bench_<name>` (its argv[0] is
 * "duet bench <name>"), declaring it in cli/cli.h and adding one line to
 * benches[]. Every benchmark accepts --json. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const cli_cmd_t *const benches[] = {
    &cli_bench_engine,
    &cli_bench_allreduce,
    &cli_bench_kv,
    &cli_bench_serve,
    NULL,   /* keep last */
};

static void bench_usage(FILE *out)
{
    fprintf(out, "usage: duet bench <benchmark> [flags] [--json]\n\nbenchmarks:\n");
    for (int i = 0; benches[i] != NULL; i++)
        fprintf(out, "  %-12s %s\n", benches[i]->name, benches[i]->summary);
    fprintf(out, "\nRun 'duet bench <benchmark> --help' for its flags.\n");
}

static int bench_run(int argc, char **argv)
{
    char name[64];

    if (argc < 2) {
        bench_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        bench_usage(stdout);
        return 0;
    }
    for (int i = 0; benches[i] != NULL; i++) {
        if (strcmp(argv[1], benches[i]->name) == 0) {
            snprintf(name, sizeof(name), "duet bench %s", benches[i]->name);
            argv[1] = name;
            return benches[i]->run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "duet bench: unknown benchmark '%s' (see duet bench --help)\n", argv[1]);
    return 2;
}

const cli_cmd_t cli_cmd_bench = {"bench", "benchmarks (duet bench --help lists them)", bench_run};
