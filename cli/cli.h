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
extern const cli_cmd_t cli_cmd_bench;

#endif
