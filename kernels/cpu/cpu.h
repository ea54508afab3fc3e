/* The CPU backend: a portable C reference for every op plus AVX2 and
 * AVX-512 kernels chosen at run time from cpuid, run on a thread pool.
 * cpu_backend_create fills an ops_t (kernels/ops.h). */
#ifndef DUET_KERNELS_CPU_H
#define DUET_KERNELS_CPU_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"
#include "kernels/ops.h"

typedef enum {
    CPU_ISA_AUTO = 0,   /* the best this CPU supports */
    CPU_ISA_REF,        /* portable C */
    CPU_ISA_AVX2,       /* AVX2 + FMA + F16C */
    CPU_ISA_AVX512,     /* AVX-512 F/BW/VL (int8 dots with vpmaddubsw) */
    CPU_ISA_AVX512_VNNI,/* AVX-512 F/BW/VL + VNNI (int8 dots with vpdpbusd) */
} cpu_isa_t;

typedef struct {
    int       n_threads;   /* 0: all cores */
    cpu_isa_t isa;         /* CPU_ISA_AUTO unless a test forces one */
} cpu_opts_t;

/* Whether this build and this CPU can run isa (AUTO and REF: always). */
bool cpu_isa_supported(cpu_isa_t isa);
/* The best supported ISA. */
cpu_isa_t cpu_isa_best(void);
const char *cpu_isa_name(cpu_isa_t isa);
/* Cores this process may run on (sched_getaffinity), at least 1. */
int cpu_n_cores(void);

/* Create a backend; opts NULL means defaults. With CPU_ISA_AUTO the
 * environment variable DUET_CPU_ISA (ref, avx2, avx512, avx512-vnni) may
 * pick a supported ISA instead of the best one. DUET_ERR_UNSUPPORTED when a
 * forced ISA cannot run here, DUET_ERR_INVALID for n_threads < 0. The
 * caller destroys it with ops_destroy. */
duet_status_t cpu_backend_create(const cpu_opts_t *opts, ops_t **ops_p);

/* Memory read bandwidth in GB/s (1e9 bytes/s): n_threads (0: all cores)
 * stream-read a buffer of `bytes` (use >= 4x the last-level cache, e.g.
 * 1 GiB) `passes` times after one warm-up pass; the best pass counts. */
duet_status_t cpu_membw_measure(int n_threads, size_t bytes, int passes,
                                double *gbps_p);

#endif
