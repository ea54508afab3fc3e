/* duet: one binary, many subcommands. */
#include <stdio.h>
#include <string.h>

#include "duet_config.h"
#include "cli/cli.h"

static const cli_cmd_t *const cli_commands[] = {
    &cli_cmd_info,
    &cli_cmd_mkmodel,
    &cli_cmd_gguf_dump,
    &cli_cmd_bench,
    &cli_cmd_tokenize,
    &cli_cmd_detokenize,
    &cli_cmd_generate,
    &cli_cmd_router,
    &cli_cmd_serve,
    &cli_cmd_prefill,
    &cli_cmd_decode,
    &cli_cmd_plan,
};

#define NCOMMANDS ((int)(sizeof(cli_commands) / sizeof(cli_commands[0])))

static void usage(FILE *out)
{
    fprintf(out,
            "usage: duet <command> [flags]\n"
            "\n"
            "duet serves LLMs with prefill/decode disaggregation.\n"
            "\n"
            "commands:\n");
    for (int i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-12s %s\n", cli_commands[i]->name, cli_commands[i]->summary);
    fprintf(out,
            "\n"
            "Run 'duet <command> --help' for a command's flags.\n"
            "'duet --version' prints the version.\n");
}

int main(int argc, char **argv)
{
    char name[64];

    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("duet %s%s\n", DUET_VERSION, DUET_HAVE_CUDA ? " (cuda)" : "");
        return 0;
    }
    for (int i = 0; i < NCOMMANDS; i++) {
        if (strcmp(argv[1], cli_commands[i]->name) == 0) {
            snprintf(name, sizeof(name), "duet %s", cli_commands[i]->name);
            argv[1] = name;
            return cli_commands[i]->run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "duet: unknown command '%s' (see duet --help)\n", argv[1]);
    return 2;
}
