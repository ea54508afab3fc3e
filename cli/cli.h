/* The duet binary's subcommands. Each lives in cmd_<name>.c and is listed
 * in cli_commands[] (main.c). */
#ifndef DUET_CLI_CLI_H
#define DUET_CLI_CLI_H

typedef struct {
    const char *name;
    const char *summary;
    /* argv[0] is "duet <name>"; returns the process exit code. */
    int (*run)(int argc, char **argv);
} cli_cmd_t;

extern const cli_cmd_t cli_cmd_info;
extern const cli_cmd_t cli_cmd_mkmodel;
extern const cli_cmd_t cli_cmd_gguf_dump;
extern const cli_cmd_t cli_cmd_bench;
extern const cli_cmd_t cli_cmd_tokenize;
extern const cli_cmd_t cli_cmd_detokenize;
extern const cli_cmd_t cli_cmd_generate;
extern const cli_cmd_t cli_cmd_router;
extern const cli_cmd_t cli_cmd_decode;
extern const cli_cmd_t cli_cmd_prefill;
extern const cli_cmd_t cli_cmd_serve;
extern const cli_cmd_t cli_cmd_plan;

/* Benchmarks, dispatched by cli_cmd_bench (cmd_bench.c). */
extern const cli_cmd_t cli_bench_engine;
extern const cli_cmd_t cli_bench_allreduce;
extern const cli_cmd_t cli_bench_kv;
extern const cli_cmd_t cli_bench_serve;

#endif
