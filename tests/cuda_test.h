/* For tests that use a GPU when there is one (CUDA builds only). */
#ifndef DUET_TESTS_CUDA_TEST_H
#define DUET_TESTS_CUDA_TEST_H

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

/* CUDA devices here, counted in a child: CUDA must not be initialised in a
 * process that forks afterwards. */
static inline int test_cuda_devices(void)
{
    pid_t pid;
    int st;

    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        int n = 0;

        if (cudaGetDeviceCount(&n) != cudaSuccess)
            n = 0;
        _exit(n > 100 ? 100 : n);
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
        return 0;
    return WEXITSTATUS(st);
}

#endif
