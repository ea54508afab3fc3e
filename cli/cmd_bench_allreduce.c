/* duet bench allreduce: latency and bandwidth of the shm group all-reduce
 * by message size and rank count, next to single-thread memcpy bandwidth
 * of the same size measured in the same run.
 *
 * algbw = bytes / time per all-reduce; busbw = algbw * 2 (n-1) / n (the
 * bytes each rank must move in a ring, as nccl-tests report it);
 * ratio = algbw / memcpy bandwidth (the target's reference). For
 * information, xcore = memcpy of a buffer another core just wrote (the
 * cross-core rate every all-reduce is bound by), and xratio = algbw / xcore.
 * Ranks are real processes (procgroup). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/flags.h"
#include "common/log.h"
#include "parallel/group.h"
#include "parallel/procgroup.h"

#define MAX_SIZES 32

typedef struct {
    size_t        sizes[MAX_SIZES];     /* bytes */
    int           nsizes;
    double        budget_s;             /* per size and rank count */
    size_t        slot;
    group_dtype_t dt;
    bool          staged;               /* input built in group_input_buffer() */
    bool          in_place;             /* dst = src */
    bool          produce;              /* every rank writes its input before each call */
    bool          consume;              /* every rank reads the result after each call */
    double        lat_us[MAX_SIZES];    /* out, rank 0 */
    double        cpu_us[MAX_SIZES];    /* rank 0's CPU time per all-reduce */
    int           iters[MAX_SIZES];
} ar_plan_t;

static double cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static duet_status_t ar_body(procgroup_t *pg, ar_plan_t *p)
{
    char name[224];
    group_config_t cfg = {.backend = GROUP_BACKEND_SHM, .rank = procgroup_rank(pg),
                          .world_size = procgroup_size(pg), .name = name,
                          .timeout_s = 30, .slot_bytes = p->slot};
    size_t maxb = p->sizes[p->nsizes - 1], esz = group_dtype_size(p->dt);
    uint8_t *src = NULL, *dst = NULL, *next = NULL;
    group_t *g = NULL;
    duet_status_t s;

    snprintf(name, sizeof(name), "%s.bench", procgroup_id(pg));
    CHECK(group_create(&cfg, &g));
    src = calloc(1, maxb);
    dst = calloc(1, maxb);
    next = p->consume ? calloc(1, maxb) : NULL;
    if (src == NULL || dst == NULL || (p->consume && next == NULL)) {
        s = DUET_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < maxb; i++)
        src[i] = (uint8_t)(i * 7);      /* finite values in every dtype */
    for (int k = 0; k < p->nsizes; k++) {
        size_t count = p->sizes[k] / esz;
        int32_t iters = 0;
        uint64_t t0;
        double c0;

        /* rank 0 times a few warm-up rounds and picks the count for all */
        t0 = clock_now_ns();
        for (int w = 0; w < 3; w++)
            CHECK_GOTO(group_all_reduce(g, dst, src, count, p->dt), s, out);
        if (cfg.rank == 0) {
            double one = (double)(clock_now_ns() - t0) * 1e-9 / 3;

            iters = (int32_t)(p->budget_s / (one > 1e-9 ? one : 1e-9));
            iters = iters < 5 ? 5 : iters > 200000 ? 200000 : iters;
        }
        CHECK_GOTO(group_broadcast(g, &iters, 1, GROUP_I32, 0), s, out);
        CHECK_GOTO(group_barrier(g), s, out);
        c0 = cpu_s();
        t0 = clock_now_ns();
        for (int32_t i = 0; i < iters; i++) {
            /* staged: the producer (a matmul) wrote its output straight into
             * the group's buffer, so there is nothing to copy in */
            void *in = p->staged ? group_input_buffer(g, count * esz) : NULL;
            void *x = in != NULL ? in : src;

            if (p->produce) {
                /* the producer (a matmul) writes this call's input */
                memset(x, (int)(i & 0x3f), count * esz);
                __asm__ __volatile__("" ::: "memory");
            }

            CHECK_GOTO(group_all_reduce(g, p->in_place ? x : dst, x, count, p->dt), s, out);
            if (p->consume) {
                /* the next layer reads the result (at memcpy speed) */
                memcpy(next, p->in_place ? x : dst, count * esz);
                __asm__ __volatile__("" ::: "memory");
            }
        }
        CHECK_GOTO(group_barrier(g), s, out);
        p->lat_us[k] = (double)(clock_now_ns() - t0) * 1e-3 / iters;
        p->cpu_us[k] = (cpu_s() - c0) * 1e6 / iters;
        p->iters[k] = iters;
    }
    s = DUET_OK;
out:
    free(src);
    free(dst);
    free(next);
    group_destroy(g);
    return s;
}

static int ar_worker(procgroup_t *pg, void *arg)
{
    return ar_body(pg, arg) == DUET_OK ? 0 : 1;
}

/* Per-core L2 size in bytes (0: unknown). */
static size_t l2_bytes(void)
{
    long v = sysconf(_SC_LEVEL2_CACHE_SIZE);

    return v > 0 ? (size_t)v : 0;
}

/* Single-thread memcpy bandwidth (GB/s) for bytes, over about budget_s.
 * Two buffers of the message size copied back and forth, like the
 * collective's own src and dst (reused every iteration): they stay in L2
 * when both fit there and come from L3 or memory otherwise, which is the
 * cache state of the collective's data of the same size. */
static double memcpy_gbps(size_t bytes, double budget_s)
{
    uint8_t *a = malloc(bytes), *b = malloc(bytes);
    double best = 0;
    uint64_t t0;
    int iters;

    if (a == NULL || b == NULL) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    t0 = clock_now_ns();
    for (int i = 0; i < 3; i++)
        memcpy(b, a, bytes);
    iters = (int)(budget_s / ((double)(clock_now_ns() - t0) * 1e-9 / 3 + 1e-9));
    iters = iters < 3 ? 3 : iters > 1000000 ? 1000000 : iters;
    /* best of three rounds: the machine is shared */
    for (int round = 0; round < 3; round++) {
        double dt;

        t0 = clock_now_ns();
        for (int i = 0; i < iters / 3 + 1; i++) {
            memcpy(i & 1 ? a : b, i & 1 ? b : a, bytes);
            __asm__ __volatile__("" ::: "memory");
        }
        dt = (double)(clock_now_ns() - t0) * 1e-9 / (iters / 3 + 1);
        if ((double)bytes / dt * 1e-9 > best)
            best = (double)bytes / dt * 1e-9;
    }
    free(a);
    free(b);
    return best;
}

static inline void spin_pause(void)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

typedef struct {
    uint8_t       *buf;
    size_t         bytes;
    int            cpu;
    _Atomic int    want;        /* > done: fill once more; < 0: stop */
    _Atomic int    done;
} xc_writer_t;

static void *xc_writer(void *arg)
{
    xc_writer_t *w = arg;
    cpu_set_t set;
    int it = 0;

    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    for (;;) {
        int want;

        while ((want = atomic_load_explicit(&w->want, memory_order_acquire)) == it)
            spin_pause();
        if (want < 0)
            return NULL;
        memset(w->buf, (uint8_t)(want + 1), w->bytes);
        it = want;
        atomic_store_explicit(&w->done, it, memory_order_release);
    }
}

/* Cross-core memcpy bandwidth (GB/s) for bytes: a writer thread on another
 * CPU fills the buffer, then this thread copies it into a buffer of its own
 * (reused, like memcpy_gbps's): the lines come from the other core's cache,
 * as every byte a peer rank wrote does in an all-reduce. Best of three
 * rounds of about budget_s / 3; 0 when fewer than two CPUs are usable. The
 * calling thread's CPU affinity is restored (forked ranks inherit it). */
static double xcore_gbps(size_t bytes, double budget_s)
{
    cpu_set_t saved, set;
    int cpus[2], ncpus = 0;
    xc_writer_t w = {.bytes = bytes};
    uint8_t *dst = NULL;
    pthread_t th;
    double best = 0;
    int it = 0, per_round;
    uint64_t t0, spent = 0;

    if (sched_getaffinity(0, sizeof(saved), &saved) != 0)
        return 0;
    for (int i = 0; i < CPU_SETSIZE && ncpus < 2; i++)
        if (CPU_ISSET(i, &saved))
            cpus[ncpus++] = i;
    if (ncpus < 2)
        return 0;
    w.buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    dst = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (w.buf == NULL || dst == NULL)
        goto out;
    memset(w.buf, 0, bytes);
    memset(dst, 0, bytes);
    w.cpu = cpus[1];
    if (pthread_create(&th, NULL, xc_writer, &w) != 0)
        goto out;
    CPU_ZERO(&set);
    CPU_SET(cpus[0], &set);
    sched_setaffinity(0, sizeof(set), &set);
    /* round 0: three copies size the three timed rounds */
    per_round = 0;
    for (int round = 0; round < 4; round++) {
        int iters = round == 0 ? 3 : per_round;

        spent = 0;
        for (int i = 0; i < iters; i++) {
            atomic_store_explicit(&w.want, ++it, memory_order_release);
            while (atomic_load_explicit(&w.done, memory_order_acquire) != it)
                spin_pause();
            t0 = clock_now_ns();
            memcpy(dst, w.buf, bytes);
            __asm__ __volatile__("" ::: "memory");
            spent += clock_now_ns() - t0;
        }
        if (round == 0) {
            double one = (double)spent * 1e-9 / iters;

            per_round = (int)(budget_s / 3 / (one > 1e-9 ? one : 1e-9));
            per_round = per_round < 3 ? 3 : per_round > 100000 ? 100000 : per_round;
            continue;
        }
        if ((double)bytes * iters / ((double)spent + 1) > best)
            best = (double)bytes * iters / ((double)spent + 1);     /* bytes/ns = GB/s */
    }
    atomic_store_explicit(&w.want, -1, memory_order_release);
    pthread_join(th, NULL);
    sched_setaffinity(0, sizeof(saved), &saved);
out:
    free(w.buf);
    free(dst);
    return best;
}

static duet_status_t parse_dtype(const char *s, group_dtype_t *dt_p)
{
    for (int d = 0; d < GROUP_DTYPE_COUNT; d++) {
        if (strcmp(s, group_dtype_name((group_dtype_t)d)) == 0) {
            *dt_p = (group_dtype_t)d;
            return DUET_OK;
        }
    }
    return DUET_ERR_INVALID;
}

static int allreduce_run(int argc, char **argv)
{
    int64_t min_ranks = 2, max_ranks = 0, min_bytes = 4096, max_bytes = 16 << 20, slot = 0;
    double budget = 0.2;
    bool json = false, staged = false, in_place = false, consume_res = false, produce = false;
    const char *dtype = "f32";
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const flag_t flags[] = {
        {"min-ranks", 0, FLAG_INT, &min_ranks, "fewest ranks", "N", 2, 64, 0, 0},
        {"max-ranks", 0, FLAG_INT, &max_ranks, "most ranks (default: CPUs, at least 2, at most 8)",
         "N", 0, 64, 0, 0},
        {"min-bytes", 0, FLAG_INT, &min_bytes, "smallest message", "B", 4, 1ll << 32, 0, 0},
        {"max-bytes", 0, FLAG_INT, &max_bytes, "largest message (sizes grow by 4x)", "B", 4,
         1ll << 32, 0, 0},
        {"time", 0, FLAG_DOUBLE, &budget, "seconds per measurement", "S", 0, 0, 0.001, 60},
        {"slot", 0, FLAG_INT, &slot, "shm staging bytes per rank (0: default 1 MiB)", "B", 0,
         1ll << 30, 0, 0},
        {"dtype", 0, FLAG_STRING, &dtype, "f32, f16, bf16, i32 or u8", "T", 0, 0, 0, 0},
        {"staged", 0, FLAG_BOOL, &staged, "inputs built in the group's shared buffer "
         "(group_input_buffer: no copy-in; messages up to the slot size)", NULL, 0, 0, 0, 0},
        {"in-place", 0, FLAG_BOOL, &in_place, "the result overwrites the input (with "
         "--staged: in the group's buffer, as the forward pass uses it)", NULL, 0, 0, 0, 0},
        {"produce", 0, FLAG_BOOL, &produce, "every rank writes its input (memset) before "
         "each all-reduce (the producer; counted in the latency)", NULL, 0, 0, 0, 0},
        {"consume", 0, FLAG_BOOL, &consume_res, "every rank copies the whole result out after "
         "each all-reduce (the next layer reading it; counted in the latency)", NULL, 0, 0, 0, 0},
        {"json", 0, FLAG_BOOL, &json, "print JSON", NULL, 0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet bench allreduce", NULL,
                             "All-reduce latency and bandwidth (shm group, one process per "
                             "rank) against memcpy bandwidth measured in the same run."};
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
    ar_plan_t *p;
    double mc[MAX_SIZES], xc[MAX_SIZES];
    bool first = true;
    int rc = 0;

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (max_ranks == 0)
        max_ranks = ncpu < 2 ? 2 : ncpu > 8 ? 8 : ncpu;
    if (max_ranks < min_ranks || max_bytes < min_bytes || (slot != 0 && slot < 4096)) {
        fprintf(stderr, "duet bench allreduce: need min <= max for ranks and bytes, "
                        "slot 0 or >= 4096\n");
        return 2;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return 1;
    if (parse_dtype(dtype, &p->dt) != DUET_OK) {
        fprintf(stderr, "duet bench allreduce: unknown --dtype '%s'\n", dtype);
        free(p);
        return 2;
    }
    p->budget_s = budget;
    p->staged = staged;
    p->in_place = in_place;
    p->consume = consume_res;
    p->produce = produce;
    p->slot = (size_t)slot;
    for (int64_t b = min_bytes; b <= max_bytes && p->nsizes < MAX_SIZES; b *= 4) {
        size_t esz = group_dtype_size(p->dt);

        p->sizes[p->nsizes++] = ((size_t)b + esz - 1) / esz * esz;
    }
    for (int k = 0; k < p->nsizes; k++) {
        mc[k] = memcpy_gbps(p->sizes[k], budget);
        xc[k] = xcore_gbps(p->sizes[k], budget);
    }

    if (json)
        printf("{\"bench\": \"allreduce\", \"backend\": \"shm\", \"dtype\": \"%s\", "
               "\"cpus\": %ld, \"l2_bytes\": %zu, \"slot_bytes\": %zu, \"staged\": %s, "
               "\"in_place\": %s, \"produce\": %s, \"consume\": %s, "
               "\"memcpy\": \"one thread, src and dst of the message size, reused: in L2 "
               "when 2 x bytes fits (memcpy_in_l2), else from L3 or memory\", "
               "\"xcore_memcpy\": \"informational: memcpy of a buffer that a thread on "
               "another CPU just wrote, into a reused dst (0: one CPU); xcore_ratio = "
               "algbw / xcore_memcpy_gbps\", \"results\": [",
               group_dtype_name(p->dt), ncpu, l2_bytes(), p->slot ? p->slot : (size_t)1 << 20,
               staged ? "true" : "false", in_place ? "true" : "false",
               produce ? "true" : "false", consume_res ? "true" : "false");
    else
        printf("# all-reduce (%s, shm, one process per rank%s%s%s%s) on %ld CPUs, L2 %zu KiB/core\n"
               "# memcpy: one thread, src and dst of the message size reused like the "
               "collective's (l2: both fit in L2, hot; out: from L3 or memory); "
               "ratio = algbw / memcpy\n"
               "# xcore (informational): memcpy of a buffer another CPU just wrote; "
               "xratio = algbw / xcore\n"
               "# %5s %11s %8s %11s %9s %10s %10s %11s %6s %6s %10s %6s\n",
               group_dtype_name(p->dt), staged ? ", staged input" : "",
               in_place ? ", in place" : "", produce ? ", input written" : "",
               consume_res ? ", result read" : "", ncpu,
               l2_bytes() >> 10, "ranks", "bytes", "iters", "lat_us", "cpu_us",
               "algbw_GB/s", "busbw_GB/s", "memcpy_GB/s", "cache", "ratio", "xcore_GB/s",
               "xratio");
    for (int n = (int)min_ranks; n <= max_ranks; n++) {
        procgroup_opts_t o = {.world_size = n, .worker_main = ar_worker, .worker_arg = p,
                              .timeout_s = 30};
        procgroup_t *pg = NULL;

        fflush(stdout);
        s = procgroup_start(&o, &pg);
        if (s == DUET_OK)
            s = ar_body(pg, p);
        if (pg != NULL && procgroup_stop(pg, 30) != DUET_OK && s == DUET_OK)
            s = DUET_ERR_PEER;
        procgroup_destroy(pg);
        if (s != DUET_OK) {
            fprintf(stderr, "duet bench allreduce: %d ranks: %s\n", n, duet_status_str(s));
            rc = 1;
            break;
        }
        for (int k = 0; k < p->nsizes; k++) {
            double alg = (double)p->sizes[k] / (p->lat_us[k] * 1e-6) * 1e-9;
            double bus = alg * 2.0 * (n - 1) / n;
            bool in_l2 = 2 * p->sizes[k] <= l2_bytes();

            if (json)
                printf("%s\n  {\"ranks\": %d, \"bytes\": %zu, \"iters\": %d, \"lat_us\": %.6g, "
                       "\"cpu_us\": %.6g, \"algbw_gbps\": %.6g, \"busbw_gbps\": %.6g, "
                       "\"memcpy_gbps\": %.6g, \"memcpy_in_l2\": %s, "
                       "\"ratio\": %.6g, \"xcore_memcpy_gbps\": %.6g, \"xcore_ratio\": %.6g}",
                       first ? "" : ",", n, p->sizes[k], p->iters[k],
                       p->lat_us[k], p->cpu_us[k], alg, bus, mc[k], in_l2 ? "true" : "false",
                       mc[k] > 0 ? alg / mc[k] : 0, xc[k], xc[k] > 0 ? alg / xc[k] : 0);
            else
                printf("  %5d %11zu %8d %11.2f %9.2f %10.2f %10.2f %11.2f %6s %6.2f %10.2f %6.2f\n",
                       n, p->sizes[k], p->iters[k], p->lat_us[k], p->cpu_us[k], alg, bus, mc[k],
                       in_l2 ? "l2" : "out", mc[k] > 0 ? alg / mc[k] : 0, xc[k],
                       xc[k] > 0 ? alg / xc[k] : 0);
            first = false;
        }
    }
    if (json)
        printf("\n]}\n");
    free(p);
    return rc;
}

const cli_cmd_t cli_bench_allreduce = {"allreduce",
                                       "shm all-reduce latency/bandwidth vs memcpy",
                                       allreduce_run};
