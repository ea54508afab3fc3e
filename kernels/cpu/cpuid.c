/* Run-time ISA detection (cpuid + xgetbv: the CPU has the instructions and
 * the OS saves the registers) and the core count. */
#include <sched.h>
#include <stdint.h>
#include <unistd.h>

#include "kernels/cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

typedef struct {
    bool avx2, avx512, vnni;
} isa_caps_t;

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;

    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static isa_caps_t isa_caps(void)
{
    isa_caps_t caps = {0};
    unsigned a, b, c, d;
    bool osxsave, fma, f16c, ymm_os, zmm_os;
    uint64_t xcr0;

    if (!__get_cpuid(1, &a, &b, &c, &d))
        return caps;
    osxsave = c & (1u << 27);
    fma = c & (1u << 12);
    f16c = c & (1u << 29);
    if (!osxsave)
        return caps;
    xcr0 = xgetbv0();
    ymm_os = (xcr0 & 0x6) == 0x6;
    zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return caps;
    caps.avx2 = ymm_os && fma && f16c && (b & (1u << 5));
    caps.avx512 = caps.avx2 && zmm_os && (b & (1u << 16)) /* F */ &&
                  (b & (1u << 30)) /* BW */ && (b & (1u << 31)) /* VL */;
    caps.vnni = caps.avx512 && (c & (1u << 11));
    return caps;
}
#endif

bool cpu_isa_supported(cpu_isa_t isa)
{
#if defined(__x86_64__) || defined(__i386__)
    isa_caps_t caps = isa_caps();
#endif

    switch (isa) {
    case CPU_ISA_AUTO:
    case CPU_ISA_REF:
        return true;
#ifdef DUET_CPU_HAVE_AVX2
    case CPU_ISA_AVX2:
        return caps.avx2;
#endif
#ifdef DUET_CPU_HAVE_AVX512
    case CPU_ISA_AVX512:
        return caps.avx512;
#endif
#ifdef DUET_CPU_HAVE_AVX512_VNNI
    case CPU_ISA_AVX512_VNNI:
        return caps.vnni;
#endif
    default:
        return false;
    }
}

cpu_isa_t cpu_isa_best(void)
{
    static const cpu_isa_t order[] = {CPU_ISA_AVX512_VNNI, CPU_ISA_AVX512, CPU_ISA_AVX2};

    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (cpu_isa_supported(order[i]))
            return order[i];
    return CPU_ISA_REF;
}

const char *cpu_isa_name(cpu_isa_t isa)
{
    switch (isa) {
    case CPU_ISA_AUTO:        return "cpu-auto";
    case CPU_ISA_REF:         return "cpu-ref";
    case CPU_ISA_AVX2:        return "cpu-avx2";
    case CPU_ISA_AVX512:      return "cpu-avx512";
    case CPU_ISA_AVX512_VNNI: return "cpu-avx512-vnni";
    }
    return "cpu-unknown";
}

int cpu_n_cores(void)
{
    cpu_set_t set;
    long n;

    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
