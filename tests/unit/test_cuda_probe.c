/* The GPU toolchain works: kernel, cuBLAS and NCCL. Skips without a GPU. */
#include "kernels/cuda/probe.h"
#include "tests/tap.h"

int main(void)
{
    char desc[256];
    duet_status_t s = cuda_probe_run(desc, sizeof(desc));

    if (s == DUET_ERR_NOT_FOUND)
        tap_exit_skip(desc);
    ok(s == DUET_OK, "cuda probe: %s", desc);
    return tap_done();
}
