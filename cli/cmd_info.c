/* duet info: what this binary was built with and what the machine offers. */
#include <stdbool.h>
#include <stdio.h>
#include <unistd.h>

#include "duet_config.h"
#include "cli/cli.h"
#include "common/flags.h"
#if DUET_HAVE_CUDA
#include "kernels/cuda/probe.h"
#endif

static int info_run(int argc, char **argv)
{
    bool gpu = false;
    const flag_t flags[] = {
        {"gpu", 0, FLAG_BOOL, &gpu, "also run the GPU probe (kernel, cuBLAS, NCCL)",
         NULL, 0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet info", NULL,
                             "Print the build configuration and the machine's resources."};
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    printf("duet %s\n", DUET_VERSION);
    printf("cpus: %ld online\n", sysconf(_SC_NPROCESSORS_ONLN));
    printf("cuda backend: %s\n", DUET_HAVE_CUDA ? "built" : "not built");
#if DUET_HAVE_CUDA
    if (gpu) {
        char desc[256];
        duet_status_t ps = cuda_probe_run(desc, sizeof(desc));

        printf("gpu probe: %s: %s\n", ps == DUET_OK ? "ok" : duet_status_str(ps), desc);
        return ps == DUET_OK || ps == DUET_ERR_NOT_FOUND ? 0 : 1;
    }
#endif
    return 0;
}

const cli_cmd_t cli_cmd_info = {"info", "build configuration and machine resources", info_run};
