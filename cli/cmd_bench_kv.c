/* duet bench kv: the KV connector between two processes (prefill ranks in
 * this one, decode ranks in a forked child) over whatever UCX_TLS selects,
 * with slabs larger than the last-level cache and scattered blocks. Each case
 * reports GB/s and per-request latency, next to three references measured in
 * the same run: a plain UCX put of the same segments, a single-thread memcpy
 * of the same segments out of cache, and ucx_perftest put bandwidth at the
 * same message size (a cache-hot buffer). Last, the pipelining check for
 * SmolLM2's shapes: does a layer's transfer finish before the next layer's
 * compute would? With --cuda (CUDA builds) the prefill slabs are in GPU
 * memory and staged through pinned host buffers; the put reference is then
 * one contiguous device-to-host copy of the same bytes. */
#define DUET_LOG_COMPONENT "bench"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/flags.h"
#include "common/log.h"
#include "duet_config.h"
#include "kvconnector/kvc.h"
#if DUET_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

static int bench_kv_run(int argc, char **argv);

#define MAXR 3          /* ranks per side */
#define MAXREQ 256
#define MAXROUND 9
#define MAXDEPTH 16
#define MAXSTREAM 4096  /* requests in one streamed pass */
/* Requests before each round, not measured (ucx_perftest warms up too: -w
 * 100): the first ones pay for UCX's buffer pools and the sockets' windows,
 * and the first after the previous round's references and ucx_perftest run
 * slower for a few milliseconds. */
#define WARMUP 3

typedef struct {
    const char *name;
    int32_t layers, heads, head_dim;
    dtype_t dtype;
    int p, d;
    int32_t blocks_per_req;
    int32_t run;        /* blocks come in runs of this many consecutive ids */
    int     check;      /* also run the pipelining check */
} kvcase_t;

/* Medians over the rounds (each round: `requests` connector requests, then
 * the plain put and memcpy of the same requests, then ucx_perftest over the
 * same bytes); the ratios are medians of the per-round ratios, so that the
 * two sides of a ratio were measured in the same minute. */
typedef struct {
    double gbps, serial_gbps, p50_ms, p99_ms, bytes_per_req, puts_per_req, data_per_req;
    double ref_put_gbps, ref_memcpy_gbps, perftest_gbps, msg_size;
    double r_put, r_cpy, r_perf, r_perf_serial, r_perf_min, r_perf_max, hot_put_gbps;
    double round_gbps[MAXROUND], round_serial_gbps[MAXROUND], round_perf[MAXROUND];
    int    rounds;
    double tail_between_ms, tail_thread_ms, layer_ms;   /* pipelining check */
    int    ok;
} kvres_t;

typedef struct {
    int64_t     slab_mib, requests, rounds, check_tokens, depth, stream_mib;
    double      us_per_token;
    bool        json, perftest, quick, hot, cuda, pin;
    const char *only, *hot_arg;
    char        hot_side;   /* --hot-side: 'b' both hot, 's' source only, 'd' destination only */
    int         cpu[2];     /* --pin: the prefill's CPU, the decode's */
} opts_t;

/* Run this thread (and the threads it creates) on one CPU only. */
static void pin_to(int cpu)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        log_warn("cannot pin to CPU %d: %s", cpu, strerror(errno));
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static kv_layout_t case_layout(const kvcase_t *c, int tp, int rank, int64_t slab_mib)
{
    int32_t first, count;
    kv_layout_t l = {c->layers, 1, 0, 16, c->head_dim, c->dtype};

    kvc_tp_heads(c->heads, tp, rank, &first, &count);
    l.n_kv_heads = count;
    l.n_blocks = (int32_t)(((size_t)slab_mib << 20) / ((size_t)c->layers * kv_block_bytes(&l)));
    return l;
}

/* Blocks for request i out of n: runs of `run` consecutive ids at random
 * places (run 1: fully scattered). Same on both sides (deterministic). */
static void pick_blocks(int32_t *out, int32_t nb, int32_t nblocks, int32_t run, uint64_t seed)
{
    int32_t nruns = nblocks / run;

    for (int32_t k = 0; k < nb;) {
        int32_t r = (int32_t)(mix(seed * 7919 + (uint64_t)k) % (uint64_t)nruns);
        bool dup = false;

        for (int32_t x = 0; x < k && !dup; x++)
            dup = out[x] == r * run;
        if (dup) {
            seed++;
            continue;
        }
        for (int32_t j = 0; j < run && k < nb; j++)
            out[k++] = r * run + j;
    }
}

/* Every put issued on w has completed remotely. */
static void worker_flush_wait(ucp_worker_h w)
{
    ucp_request_param_t prm = {0};
    void *q = ucp_worker_flush_nbx(w, &prm);

    if (UCS_PTR_IS_PTR(q)) {
        while (ucp_request_check_status(q) == UCS_INPROGRESS)
            ucp_worker_progress(w);
        ucp_request_free(q);
    }
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void wr(int fd, const void *p, size_t n)
{
    if (write(fd, p, n) != (ssize_t)n)
        _exit(9);
}

static int rd(int fd, void *p, size_t n)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);

        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* A UCX context for the references, with the settings the connector applies
 * to its own (kvc_ucx_settings), so that they run on the same transport
 * configuration. */
static ucs_status_t ref_ucp_init(ucp_context_h *ctx)
{
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_RMA};
    const kvc_ucx_setting_t *set;
    ucp_config_t *cfg;
    ucs_status_t us = ucp_config_read(NULL, NULL, &cfg);

    if (us != UCS_OK)
        return us;
    for (int i = 0, n = kvc_ucx_settings(&set); i < n && us == UCS_OK; i++)
        us = ucp_config_modify(cfg, set[i].key, set[i].value);
    if (us == UCS_OK)
        us = ucp_init(&up, cfg, ctx);
    ucp_config_release(cfg);
    return us;
}

/* A device slab of len bytes, every byte `fill`; NULL without CUDA. */
static void *dev_slab(size_t len, int fill)
{
#if DUET_HAVE_CUDA
    void *d = NULL;

    cudaError_t e = cudaMalloc(&d, len);

    if (e != cudaSuccess) {
        log_error("cudaMalloc of %zu bytes: %s", len, cudaGetErrorString(e));
        return NULL;
    }
    if (cudaMemset(d, fill, len) != cudaSuccess) {
        cudaFree(d);
        return NULL;
    }
    return d;
#else
    (void)len;
    (void)fill;
    return NULL;
#endif
}

/* A prefill rank's device slab and its batched-copy state (--cuda). */
typedef struct {
    void *slab, *batch;
} devslab_t;

static void dev_free(devslab_t *d)
{
#if DUET_HAVE_CUDA
    if (d->slab != NULL)
        cudaFree(d->slab);
    kvc_cuda_batch_destroy(d->batch);
#endif
    d->slab = d->batch = NULL;
}

/* kvc's CUDA helpers, which exist in CUDA builds only. */
static duet_status_t dev_copy_d2h(void *dst, const void *src, size_t len)
{
#if DUET_HAVE_CUDA
    return kvc_cuda_copy_d2h(NULL, dst, src, len);
#else
    (void)dst;
    (void)src;
    (void)len;
    return DUET_ERR_UNSUPPORTED;
#endif
}

static duet_status_t host_pin(void *ptr, size_t len)
{
#if DUET_HAVE_CUDA
    return kvc_cuda_pin(NULL, ptr, len);
#else
    (void)ptr;
    (void)len;
    return DUET_ERR_UNSUPPORTED;
#endif
}

static void host_unpin(void *ptr)
{
#if DUET_HAVE_CUDA
    kvc_cuda_unpin(NULL, ptr);
#else
    (void)ptr;
#endif
}

/* dev: a prefill rank's device slab (--cuda), for the caller to dev_free
 * after kvc_destroy. */
static kvc_t *make(const kvcase_t *c, kvc_role_t role, int tp, int rank, int64_t slab_mib,
                   bool cuda, devslab_t *dev)
{
    kvc_params_t prm = {0};
    kvc_t *k = NULL;

    prm.role = role;
    prm.node_id = role == KVC_ROLE_DECODE ? 2 : 1;
    prm.tp_rank = rank;
    prm.tp_size = tp;
    prm.n_kv_heads_total = c->heads;
    prm.layout = case_layout(c, tp, rank, slab_mib);
    prm.model_fp = 42;
    prm.listen_ip = "127.0.0.1";
    if (cuda && role == KVC_ROLE_PREFILL) {
#if DUET_HAVE_CUDA
        prm.mem = KVC_MEM_CUDA;
        prm.stage_copy = kvc_cuda_copy_d2h;
        prm.stage_pin = kvc_cuda_pin;
        prm.stage_unpin = kvc_cuda_unpin;
        if (kvc_cuda_batch_create((kvc_cuda_batch_t **)&dev->batch) == DUET_OK)
            prm.stage_copy_batch = kvc_cuda_copy_batch_d2h;
        prm.stage_batch_arg = dev->batch;
#endif
        prm.slab = dev->slab = dev_slab(kv_slab_bytes(&prm.layout), rank + 1);
        if (prm.slab == NULL || kvc_create(&prm, &k) != DUET_OK) {
            dev_free(dev);
            return NULL;
        }
        return k;
    }
    if (kvc_create(&prm, &k) != DUET_OK)
        return NULL;
    memset(kvc_slab(k), rank + 1, kv_slab_bytes(&prm.layout));   /* fault it in */
    return k;
}

/* The segments the connector puts for one request and route, coalesced the
 * same way: (local offset, remote offset, length). */
typedef struct {
    size_t lo, ro, len;
} seg_t;

static int route_segments(const kvcase_t *c, int pr, int dr, const int32_t *lb,
                          const int32_t *rb, int32_t nb, int64_t slab_mib, seg_t *out)
{
    kv_layout_t ll = case_layout(c, c->p, pr, slab_mib), rl = case_layout(c, c->d, dr, slab_mib);
    int32_t src, dst, cnt;
    int n = 0;

    kvc_tp_route(c->heads, c->p, pr, c->d, dr, &src, &dst, &cnt);
    if (cnt == 0)
        return 0;
    for (int32_t L = 0; L < c->layers; L++) {
        for (int32_t s = 0; s < 2 * nb; s++) {
            size_t lo = kv_offset(&ll, L, lb[s / 2], s % 2, src);
            size_t ro = kv_offset(&rl, L, rb[s / 2], s % 2, dst);
            size_t len = (size_t)cnt * kv_head_bytes(&ll);

            if (n && out[n - 1].lo + out[n - 1].len == lo && out[n - 1].ro + out[n - 1].len == ro)
                out[n - 1].len += len;
            else
                out[n++] = (seg_t){lo, ro, len};
        }
    }
    return n;
}

/* KV bytes one request of c moves, over every route. */
static double req_bytes(const kvcase_t *c, const opts_t *o)
{
    double b = 0;

    for (int r = 0; r < c->p; r++)
        for (int dr = 0; dr < c->d; dr++) {
            int32_t src, dst, cnt;
            kv_layout_t l = case_layout(c, c->p, r, o->slab_mib);

            kvc_tp_route(c->heads, c->p, r, c->d, dr, &src, &dst, &cnt);
            b += (double)cnt * (double)kv_head_bytes(&l) * 2.0 * c->blocks_per_req * c->layers;
        }
    return b;
}

/* The prefill blocks of request id (on every prefill rank). */
static void prefill_blocks(const kvcase_t *c, const opts_t *o, int64_t id, int32_t *out,
                           int32_t nb)
{
    pick_blocks(out, nb, case_layout(c, c->p, 0, o->slab_mib).n_blocks, c->run,
                (uint64_t)id + 1000);
}

/* ---- the decode child ------------------------------------------------------ */

enum { CMD_REQ, CMD_STREAM, CMD_PAUSE, CMD_END };

/* CMD_REQ: grant request `id` of ntok tokens and wait for it; its seconds
 * from grant to completion go to lat_s[slot] (slot >= 0), nowhere (-1: a
 * warm-up request), or, for the pipelining check (slots -2 and -3), the tail
 * after the last layer to tail_s[-slot - 2]. CMD_STREAM: requests id .. id +
 * n - 1, at most o->depth granted at a time; the seconds from the first
 * grant to the last completion go to stream_s[slot]. CMD_PAUSE: the parent
 * runs ucx_perftest; block until the next command. */
typedef struct {
    int32_t kind, ntok, n, slot;
    int64_t id;
} cmd_t;

typedef struct {
    double lat_s[MAXREQ];
    double stream_s[MAXROUND];
    double tail_s[2];     /* pipelining check: between-layers, thread */
} child_out_t;

/* The decode blocks of request id: scattered over the whole slab, or, for
 * the request in stream slot `slot` (of o->depth), over that slot's share of
 * it, so that no two requests in flight share a block. */
static void decode_blocks(const kvcase_t *c, const opts_t *o, int64_t id, int slot,
                          int32_t *out, int32_t nb)
{
    int32_t n = case_layout(c, c->d, 0, o->slab_mib).n_blocks;

    if (slot < 0) {
        pick_blocks(out, nb, n, c->run, (uint64_t)id);
        return;
    }
    n = n / (int32_t)o->depth / c->run * c->run;
    pick_blocks(out, nb, n, c->run, (uint64_t)id);
    for (int32_t b = 0; b < nb; b++)
        out[b] += slot * n;
}

/* The next command from the parent, progressing the workers meanwhile (the
 * parent's reference puts need this side progressed). A pause blocks in
 * read() so that this process takes no CPU from ucx_perftest (nothing is in
 * flight then). The parent gone: exit. */
static void child_next_cmd(int rfd, ucp_worker_h w, kvc_t **k, int nk, cmd_t *cmd)
{
    for (;;) {
        ssize_t n = read(rfd, cmd, sizeof(*cmd));

        if (n == (ssize_t)sizeof(*cmd) && cmd->kind != CMD_PAUSE)
            return;
        if (n == (ssize_t)sizeof(*cmd)) {           /* CMD_PAUSE */
            fcntl(rfd, F_SETFL, 0);
            if (rd(rfd, cmd, sizeof(*cmd)) < 0)
                _exit(9);
            fcntl(rfd, F_SETFL, O_NONBLOCK);
            if (cmd->kind != CMD_PAUSE)
                return;
            continue;
        }
        if (n >= 0 || errno != EAGAIN)   /* commands are written whole (< PIPE_BUF) */
            _exit(9);
        n = ucp_worker_progress(w);
        for (int r = 0; r < nk; r++)
            n += kvc_progress(k[r]);
        if (n == 0)
            usleep(50);   /* 2 cores: leave them to the sender */
    }
}

/* Poll request id on every decode rank not in *done (a bit per rank) and
 * add those where it completed; true once all nk have. A failure exits. */
static bool child_poll(kvc_t **k, int nk, int64_t id, uint8_t *done)
{
    for (int r = 0; r < nk; r++) {
        duet_status_t s;

        if (*done & (1u << r))
            continue;
        s = kvc_recv_kv_cache(k[r], (uint64_t)id, NULL);
        if (s == DUET_INPROGRESS)
            continue;
        if (s != DUET_OK)
            _exit(6);
        *done |= (uint8_t)(1u << r);
    }
    return *done == (1u << nk) - 1;
}

/* Progress until request id is complete on every decode rank. */
static void child_wait(kvc_t **k, int nk, int64_t id)
{
    uint8_t done = 0;

    for (;;) {
        int n = 0;

        for (int r = 0; r < nk; r++)
            n += kvc_progress(k[r]);
        if (child_poll(k, nk, id, &done))
            return;
        if (n == 0)
            sched_yield();
    }
}

static void child_grant(kvc_t **k, int nk, int64_t id, int32_t ntok, const int32_t *blocks,
                        int32_t nb)
{
    for (int r = 0; r < nk; r++)
        if (kvc_grant(k[r], 1, (uint64_t)id, ntok, blocks, nb, 60000) != DUET_OK)
            _exit(5);
}

/* CMD_STREAM: keep o->depth requests granted until all cmd->n are done;
 * returns the seconds from the first grant to the last completion. */
static double child_stream(const kvcase_t *c, const opts_t *o, kvc_t **k, const cmd_t *cmd)
{
    int32_t nb = (cmd->ntok + 15) / 16, blocks[4096];
    int8_t slot_of[MAXSTREAM];
    uint8_t done[MAXSTREAM] = {0}, all = (uint8_t)((1u << c->d) - 1);
    bool busy[MAXDEPTH] = {false};
    int32_t granted = 0, ndone = 0, lo = 0;
    uint64_t t0 = clock_now_ns();

    while (ndone < cmd->n) {
        int n = 0;

        while (granted < cmd->n && granted - ndone < o->depth) {
            int s = 0;

            while (busy[s])
                s++;
            busy[s] = true;
            slot_of[granted] = (int8_t)s;
            decode_blocks(c, o, cmd->id + granted, s, blocks, nb);
            child_grant(k, c->d, cmd->id + granted, cmd->ntok, blocks, nb);
            granted++;
        }
        for (int r = 0; r < c->d; r++)
            n += kvc_progress(k[r]);
        for (int32_t j = lo; j < granted; j++)
            if (done[j] != all && child_poll(k, c->d, cmd->id + j, &done[j])) {
                busy[slot_of[j]] = false;
                ndone++;
            }
        while (lo < granted && done[lo] == all)
            lo++;
        if (n == 0)
            sched_yield();
    }
    return (double)(clock_now_ns() - t0) * 1e-9;
}

static void child_main(const kvcase_t *c, const opts_t *o, int wfd, int rfd,
                       volatile uint64_t *shared)
{
    kvc_t *k[MAXR] = {0};
    child_out_t out = {0};
    ucp_context_h ctx;
    ucp_worker_h w;
    ucp_mem_h memh;
    ucp_worker_params_t wp = {0};
    ucp_mem_map_params_t mp = {0};
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS};
    ucp_address_t *addr;
    size_t addr_len, rkey_len;
    void *rkey_buf;
    uint64_t base;
    kv_layout_t l0 = case_layout(c, c->d, 0, o->slab_mib);
    int32_t blocks[4096];
    char addrs[MAXR][64];
    cmd_t cmd;

    if (o->pin)
        pin_to(o->cpu[1]);
    for (int r = 0; r < c->d; r++) {
        k[r] = make(c, KVC_ROLE_DECODE, c->d, r, o->slab_mib, false, NULL);
        if (k[r] == NULL)
            _exit(3);
        kvc_listen_address(k[r], addrs[r], sizeof(addrs[r]));
    }
    /* the plain-put reference target: its own context, slab-sized */
    if (ref_ucp_init(&ctx) != UCS_OK || ucp_worker_create(ctx, &wp, &w) != UCS_OK)
        _exit(4);
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.length = kv_slab_bytes(&l0) + (64u << 20);
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    if (ucp_mem_map(ctx, &mp, &memh) != UCS_OK || ucp_mem_query(memh, &ma) != UCS_OK)
        _exit(4);
    memset(ma.address, 0, mp.length);
    base = (uint64_t)(uintptr_t)ma.address;
    wr(wfd, addrs, sizeof(addrs));   /* from here on the workers are progressed */
    ucp_worker_get_address(w, &addr, &addr_len);
    ucp_rkey_pack(ctx, memh, &rkey_buf, &rkey_len);
    wr(wfd, &addr_len, sizeof(addr_len));
    wr(wfd, addr, addr_len);
    wr(wfd, &rkey_len, sizeof(rkey_len));
    wr(wfd, rkey_buf, rkey_len);
    wr(wfd, &base, sizeof(base));
    fcntl(rfd, F_SETFL, O_NONBLOCK);
    /* until CMD_END; the workers are progressed between commands too (the
     * prefill's flush after its last KV_END completes only when this side
     * acknowledges it) */
    for (child_next_cmd(rfd, w, k, c->d, &cmd); cmd.kind != CMD_END;
         child_next_cmd(rfd, w, k, c->d, &cmd)) {
        int32_t nb = (cmd.ntok + 15) / 16;
        uint64_t t0;
        double s;

        if (cmd.kind == CMD_STREAM) {
            out.stream_s[cmd.slot] = child_stream(c, o, k, &cmd);
            continue;
        }
        decode_blocks(c, o, cmd.id, -1, blocks, nb);
        t0 = clock_now_ns();
        child_grant(k, c->d, cmd.id, cmd.ntok, blocks, nb);
        child_wait(k, c->d, cmd.id);
        s = (double)(clock_now_ns() - t0) * 1e-9;
        if (cmd.slot >= 0)
            out.lat_s[cmd.slot] = s;
        else if (cmd.slot <= -2)
            out.tail_s[-cmd.slot - 2] = (double)(clock_now_ns() - shared[0]) * 1e-9;
    }
    fcntl(wfd, F_SETFL, 0);
    wr(wfd, &out, sizeof(out));
    for (int r = 0; r < c->d; r++)
        kvc_destroy(k[r]);
    _exit(0);
}

/* ---- the prefill parent ------------------------------------------------------ */

typedef struct {
    kvc_t          *k[MAXR];
    int             n;
    pthread_mutex_t mu;
    volatile bool   stop;
} prog_t;

static void *prog_thread(void *arg)
{
    prog_t *pt = arg;

    while (!pt->stop) {
        int n = 0;

        pthread_mutex_lock(&pt->mu);
        for (int r = 0; r < pt->n; r++)
            n += kvc_progress(pt->k[r]);
        pthread_mutex_unlock(&pt->mu);
        if (n == 0)
            usleep(20);
    }
    return NULL;
}

/* ucx_perftest put bandwidth at `size` bytes per put, `bytes` in all (the
 * bytes of one round of the connector), in GB/s; 0 if it is not installed or
 * did not run. Same environment (UCX_TLS and every UCX_ variable) plus the
 * settings the connector applies to its own context (kvc_ucx_settings), the
 * same nice level as this process and, with --pin, the same two CPUs (the
 * client on the prefill's, the server on the decode's). The server is started
 * first and the client retried while it is not listening yet (under load 0.3
 * s was not always enough); both are bounded by `timeout`. */
static double ucx_perftest_gbps(const opts_t *o, size_t size, double bytes)
{
    char cmd[1024], line[512], env[256] = "", pin_c[16] = "", pin_s[16] = "";
    const kvc_ucx_setting_t *set;
    double mbps = 0;
    int port = 20000 + (int)((getpid() * 7 + (int)(clock_now_ns() / 1000)) % 20000);
    long iters = (long)(bytes / (double)(size ? size : 1));
    FILE *f;

    if (system("command -v ucx_perftest >/dev/null 2>&1") != 0)
        return 0;
    iters = iters < 1000 ? 1000 : iters > 200000 ? 200000 : iters;
    /* the settings the connector applies to its own context, on both sides */
    for (int i = 0, n = kvc_ucx_settings(&set); i < n; i++)
        snprintf(env + strlen(env), sizeof(env) - strlen(env), "%s=%s ", set[i].env,
                 set[i].value);
    if (o->pin) {
        snprintf(pin_c, sizeof(pin_c), "-c %d", o->cpu[0]);
        snprintf(pin_s, sizeof(pin_s), "-c %d", o->cpu[1]);
    }
    snprintf(cmd, sizeof(cmd),
             "(%stimeout 90 ucx_perftest %s -p %d >/dev/null 2>&1 &) ; sleep 0.3; "
             "for t in 1 2 3 4 5 6 7 8 9 10; do "
             "%stimeout 60 ucx_perftest 127.0.0.1 %s -p %d -t ucp_put_bw -s %zu -n %ld -w 100 "
             "2>&1 | grep '^Final:' && break; sleep 0.3; done",
             env, pin_s, port, env, pin_c, port, size, iters);
    f = popen(cmd, "r");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        double a, b, c2, d2, e;
        long n;

        /* Final: iterations, 50%ile, avg, overall latency (us), bandwidth
         * avg, overall (MB/s, 2^20), message rate avg, overall */
        if (sscanf(line, "Final: %ld %lf %lf %lf %lf %lf", &n, &a, &b, &c2, &d2, &e) == 6)
            mbps = e;
    }
    pclose(f);
    return mbps * 1048576.0 / 1e9;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* What the references need: the prefill slabs, a UCX endpoint to a
 * UCX-mapped slab in the child (the child progresses it while it waits for
 * its next command), and a local buffer for the memcpy. */
typedef struct {
    const kvcase_t *c;
    const opts_t   *o;
    const prog_t   *pt;
    const devslab_t *dev;
    const void     *src_host;
    ucp_worker_h    w;
    ucp_ep_h        ep;
    ucp_rkey_h      rkey;
    uint64_t        base;
    seg_t          *segs;
    void           *cpy_dst;
} refs_t;

enum { REF_PUT, REF_COPY, REF_HOT };

/* Request id's segments, from its prefill blocks to its decode blocks:
 * REF_PUT, a plain UCX put each (--cuda: one device-to-host copy of the same
 * bytes per route); REF_COPY, a memcpy each into a local buffer; REF_HOT, a
 * put each from and to the start of the slabs, i.e. ucx_perftest's
 * cache-hot pattern inside this bench (--hot-side src / dst: only that side
 * hot, the other scattered). Puts are not flushed here. Returns the bytes, or
 * -1 when a device copy failed. */
static double ref_request(const refs_t *x, int kind, int64_t id)
{
    const kvcase_t *c = x->c;
    const opts_t *o = x->o;
    int32_t lb[4096], rb[4096];
    int32_t nb = c->blocks_per_req;
    double bytes = 0;

    prefill_blocks(c, o, id, lb, nb);
    decode_blocks(c, o, id, -1, rb, nb);
    for (int r = 0; r < c->p; r++)
        for (int dr = 0; dr < c->d; dr++) {
            int n = route_segments(c, r, dr, lb, rb, nb, o->slab_mib, x->segs);
            const char *src = o->cuda ? x->src_host : kvc_slab(x->pt->k[r]);
            ucp_request_param_t prm = {0};
            size_t len = 0;

            for (int s = 0; s < n; s++)
                len += x->segs[s].len;
            bytes += (double)len;
            if (kind == REF_PUT && o->cuda) {
                /* --cuda: the device-to-host copy any staging must make, as
                 * one contiguous copy of the same bytes (the link's limit) */
                if (dev_copy_d2h(x->cpy_dst, x->dev[r].slab, len) != DUET_OK)
                    return -1;
                continue;
            }
            for (int s = 0; s < n; s++) {
                const seg_t *g = &x->segs[s];
                size_t so = g->lo, dof = g->ro;
                void *q;

                if (kind == REF_COPY) {
                    memcpy((char *)x->cpy_dst + g->ro, src + g->lo, g->len);
                    continue;
                }
                if (kind == REF_HOT) {
                    so = o->hot_side == 'd' ? g->lo : 0;    /* 'd': only dst hot */
                    dof = o->hot_side == 's' ? g->ro : 0;   /* 's': only src hot */
                }
                q = ucp_put_nbx(x->ep, (char *)kvc_slab(x->pt->k[r]) + so, g->len,
                                x->base + dof, x->rkey, &prm);
                if (UCS_PTR_IS_PTR(q))
                    ucp_request_free(q);
            }
        }
    return bytes;
}

/* The seconds of one reference over requests first .. first + n - 1, issued
 * back to back and flushed once, as the streamed connector requests are;
 * *bytes: bytes per request. Negative when a device copy failed. */
static double ref_round(const refs_t *x, int kind, int64_t first, int64_t n, double *bytes)
{
    uint64_t t0 = clock_now_ns();

    for (int64_t j = 0; j < n; j++)
        if ((*bytes = ref_request(x, kind, first + j)) < 0)
            return -1;
    if (kind != REF_COPY)
        worker_flush_wait(x->w);
    return (double)(clock_now_ns() - t0) * 1e-9;
}

/* Queue every layer of request id on every prefill rank, then its end: the
 * KV is ready before the grant, so the transfer is the only wait. */
static void queue_request(const kvcase_t *c, const opts_t *o, prog_t *pt, int64_t id,
                          int32_t ntok)
{
    int32_t nb = (ntok + 15) / 16, lb[4096];

    prefill_blocks(c, o, id, lb, nb);
    for (int r = 0; r < c->p; r++) {
        for (int32_t L = 0; L < c->layers; L++)
            kvc_send_kv_cache(pt->k[r], (uint64_t)id, L, 0, ntok, lb, nb);
        kvc_end(pt->k[r], (uint64_t)id, 1, NULL, 0);
    }
}

/* The pipelining check's request: granted first, then each layer sent after
 * its compute time (slept), with progress calls between layers or from a
 * thread (slot -3). */
static void check_request(const kvcase_t *c, const opts_t *o, prog_t *pt, int wfd,
                          volatile uint64_t *shared, int64_t id, int slot)
{
    int32_t ntok = (int32_t)o->check_tokens, nb = (ntok + 15) / 16, lb[4096];
    double layer_s = o->us_per_token * 1e-6 * ntok;
    bool thread = slot == -3;
    cmd_t cmd = {CMD_REQ, ntok, 1, slot, id};
    pthread_t th;

    prefill_blocks(c, o, id, lb, nb);
    wr(wfd, &cmd, sizeof(cmd));
    if (thread)
        pthread_create(&th, NULL, prog_thread, pt);
    for (int32_t L = 0; L < c->layers; L++) {
        usleep((useconds_t)(layer_s * 1e6));
        /* the tail starts when the last layer is handed over; stamped before
         * the send, since over shared memory the decode side can complete
         * (and read the stamp) before the send returns */
        if (L == c->layers - 1)
            shared[0] = clock_now_ns();
        pthread_mutex_lock(&pt->mu);
        for (int r = 0; r < c->p; r++) {
            kvc_send_kv_cache(pt->k[r], (uint64_t)id, L, 0, ntok, lb, nb);
            if (L == c->layers - 1)
                kvc_end(pt->k[r], (uint64_t)id, 1, NULL, 0);
            if (!thread)
                kvc_progress(pt->k[r]);   /* progress between layers */
        }
        pthread_mutex_unlock(&pt->mu);
    }
    if (thread) {
        pt->stop = true;
        pthread_join(th, NULL);
        pt->stop = false;
    }
}

/* Progress until requests first .. first + n - 1 are sent on every prefill
 * rank; DUET_OK, or the first failure. */
static duet_status_t wait_sent(prog_t *pt, int64_t first, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        bool fin[MAXR] = {false};
        int left = pt->n;

        while (left) {
            int m = 0;

            for (int r = 0; r < pt->n; r++) {
                duet_status_t s;

                m += kvc_progress(pt->k[r]);
                if (fin[r])
                    continue;
                s = kvc_send_status(pt->k[r], (uint64_t)(first + j));
                if (s == DUET_INPROGRESS)
                    continue;
                if (s != DUET_OK)
                    return s;
                fin[r] = true;
                left--;
            }
            if (m == 0)
                sched_yield();
        }
    }
    return DUET_OK;
}

/* One request at a time: queued, granted, sent; its latency to slot. */
static duet_status_t one_request(const kvcase_t *c, const opts_t *o, prog_t *pt, int wfd,
                                 int64_t id, int slot)
{
    int32_t ntok = c->blocks_per_req * 16;
    cmd_t cmd = {CMD_REQ, ntok, 1, slot, id};

    queue_request(c, o, pt, id, ntok);
    wr(wfd, &cmd, sizeof(cmd));
    return wait_sent(pt, id, 1);
}

static void count_writes(const prog_t *pt, uint64_t *writes, uint64_t *data)
{
    *writes = *data = 0;
    for (int r = 0; r < pt->n; r++) {
        kvc_stats_t st;

        kvc_stats(pt->k[r], &st);
        *writes += st.puts;
        *data += st.data_msgs;
    }
}

static int run_case(const kvcase_t *c, const opts_t *o, kvres_t *res)
{
    int to_c[2], to_p[2];
    pid_t pid;
    prog_t pt = {.n = c->p};
    char addrs[MAXR][64];
    child_out_t out;
    volatile uint64_t *shared;
    uint64_t writes = 0, datas = 0;
    double lat[MAXREQ], bytes_req = 0;
    double tref[MAXROUND] = {0}, tcpy[MAXROUND] = {0}, thot[MAXROUND] = {0},
           perf[MAXROUND] = {0};
    seg_t *segs = NULL;
    ucp_context_h ctx = NULL;
    ucp_worker_h w = NULL;
    ucp_ep_h ep = NULL;
    ucp_rkey_h rkey = NULL;
    ucp_worker_params_t wp = {0};
    ucp_ep_params_t ep_params = {0};
    size_t addr_len, rkey_len, cpy_len = ((size_t)o->slab_mib << 20) + (64u << 20);
    void *addr = NULL, *rkey_buf = NULL, *cpy_dst = NULL;
    uint64_t base;
    int64_t nreq = o->rounds * o->requests, id = 1, nstream;
    int32_t ntok = c->blocks_per_req * 16;
    int nr = (int)o->rounds;
    devslab_t dev[MAXR] = {{NULL, NULL}};
    void *src_host = NULL;
    cmd_t cmd;
    refs_t x;

    memset(res, 0, sizeof(*res));
    {
        /* pick_blocks needs distinct runs: refuse a slab too small for them
         * (on the decode side, each of the --depth slots of a stream) */
        int32_t need = (c->blocks_per_req > (int32_t)(o->check_tokens + 15) / 16
                            ? c->blocks_per_req : (int32_t)(o->check_tokens + 15) / 16);

        for (int r = 0; r < c->p || r < c->d; r++) {
            int32_t nbp = r < c->p ? case_layout(c, c->p, r, o->slab_mib).n_blocks : INT32_MAX;
            int32_t nbd = r < c->d ? case_layout(c, c->d, r, o->slab_mib).n_blocks /
                                         (int32_t)o->depth : INT32_MAX;

            if ((nbp < INT32_MAX && nbp / c->run < 2 * need / c->run + 1) ||
                (nbd < INT32_MAX && nbd / c->run < 2 * need / c->run + 1)) {
                fprintf(stderr, "case '%s': a %lld MiB slab holds too few blocks for %lld "
                        "requests of %d blocks in flight\n", c->name, (long long)o->slab_mib,
                        (long long)o->depth, need);
                return -1;
            }
        }
    }
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        return -1;
    if (pipe(to_c) || pipe(to_p)) {
        munmap((void *)shared, 4096);
        return -1;
    }
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        close(to_c[1]);
        close(to_p[0]);
        child_main(c, o, to_p[1], to_c[0], shared);
    }
    close(to_c[0]);
    close(to_p[1]);
    if (o->pin)
        pin_to(o->cpu[0]);
    pthread_mutex_init(&pt.mu, NULL);
    for (int r = 0; r < c->p; r++) {
        pt.k[r] = make(c, KVC_ROLE_PREFILL, c->p, r, o->slab_mib, o->cuda, &dev[r]);
        if (pt.k[r] == NULL)
            goto err;
    }
    if (rd(to_p[0], addrs, sizeof(addrs)) < 0)
        goto err;
    for (int r = 0; r < c->p; r++)
        for (int dr = 0; dr < c->d; dr++) {
            uint64_t node;

            if (kvc_connect(pt.k[r], addrs[dr], 30000, &node) != DUET_OK)
                goto err;
        }
    /* the references' endpoint, set up before any round */
    if (rd(to_p[0], &addr_len, sizeof(addr_len)) < 0 || (addr = malloc(addr_len)) == NULL ||
        rd(to_p[0], addr, addr_len) < 0 || rd(to_p[0], &rkey_len, sizeof(rkey_len)) < 0 ||
        (rkey_buf = malloc(rkey_len)) == NULL || rd(to_p[0], rkey_buf, rkey_len) < 0 ||
        rd(to_p[0], &base, sizeof(base)) < 0)
        goto err;
    if (ref_ucp_init(&ctx) != UCS_OK)
        goto err;
    if (ucp_worker_create(ctx, &wp, &w) != UCS_OK)
        goto err;
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    ep_params.address = addr;
    if (ucp_ep_create(w, &ep_params, &ep) != UCS_OK)
        goto err;
    if (ucp_ep_rkey_unpack(ep, rkey_buf, &rkey) != UCS_OK)
        goto err;
    segs = malloc((size_t)2 * 4096 * c->layers * sizeof(*segs));
    cpy_dst = malloc(cpy_len);
    if (segs == NULL || cpy_dst == NULL)
        goto err;
    /* fault it in before timing; not with 0: the compiler turns malloc + memset
     * 0 into calloc, whose fresh pages would then be faulted in by the timed
     * memcpy (that measured page faults, 0.3-0.9 GB/s, not memcpy) */
    memset(cpy_dst, 0x5a, cpy_len);
    if (o->cuda) {
        /* the memcpy reference copies from host memory of the same layout;
         * the device copies land in pinned memory, as the staging ones do */
        src_host = malloc((size_t)o->slab_mib << 20);
        if (src_host == NULL || host_pin(cpy_dst, cpy_len) != DUET_OK)
            goto err;
        memset(src_host, 0x3c, (size_t)o->slab_mib << 20);
    }
    x = (refs_t){c, o, &pt, dev, src_host, w, ep, rkey, base, segs, cpy_dst};
    /* the streamed pass: at least --stream-mib (a pass of a few
     * milliseconds measures the VM's hiccups as much as the transfer) */
    nstream = (int64_t)ceil((double)(o->stream_mib << 20) / req_bytes(c, o));
    nstream = nstream < o->requests ? o->requests : nstream > MAXSTREAM ? MAXSTREAM : nstream;
    /* Each round: warm-up requests (not measured: the first ones after the
     * references and ucx_perftest are slower, and perftest warms up too,
     * -w 100); the measured requests one at a time, every layer queued
     * before the grant (latency); as many streamed, --depth in flight (GB/s);
     * the references over the one-at-a-time requests' blocks; ucx_perftest. */
    for (int rnd = 0; rnd < nr; rnd++) {
        uint64_t w0, d0, w1, d1;
        int64_t first;

        for (int j = 0; j < WARMUP; j++)
            if (one_request(c, o, &pt, to_c[1], id++, -1) != DUET_OK)
                goto err;
        first = id;
        count_writes(&pt, &w0, &d0);
        for (int64_t j = 0; j < o->requests; j++)
            if (one_request(c, o, &pt, to_c[1], id++, (int)(rnd * o->requests + j)) != DUET_OK)
                goto err;
        count_writes(&pt, &w1, &d1);
        writes += w1 - w0;
        datas += d1 - d0;
        for (int64_t j = 0; j < nstream; j++)
            queue_request(c, o, &pt, id + j, ntok);
        cmd = (cmd_t){CMD_STREAM, ntok, (int32_t)nstream, rnd, id};
        wr(to_c[1], &cmd, sizeof(cmd));
        if (wait_sent(&pt, id, nstream) != DUET_OK)
            goto err;
        id += nstream;
        if ((tref[rnd] = ref_round(&x, REF_PUT, first, o->requests, &bytes_req)) < 0 ||
            (tcpy[rnd] = ref_round(&x, REF_COPY, first, o->requests, &bytes_req)) < 0 ||
            (o->hot && !o->cuda &&
             (thot[rnd] = ref_round(&x, REF_HOT, first, o->requests, &bytes_req)) < 0))
            goto err;
        if (o->perftest) {
            /* at the connector's mean write size (a put, or over TCP a DATA
             * message); the child sleeps in read() meanwhile (nothing is in
             * flight) */
            cmd = (cmd_t){.kind = CMD_PAUSE};
            wr(to_c[1], &cmd, sizeof(cmd));
            perf[rnd] = ucx_perftest_gbps(
                o, (size_t)(bytes_req * (double)((rnd + 1) * o->requests) / (double)writes),
                bytes_req * (double)nstream);
        }
    }
    for (int k = 0; k < 2 && c->check; k++) {
        check_request(c, o, &pt, to_c[1], shared, id, -2 - k);
        if (wait_sent(&pt, id++, 1) != DUET_OK)
            goto err;
    }
    cmd = (cmd_t){.kind = CMD_END};
    wr(to_c[1], &cmd, sizeof(cmd));
    if (rd(to_p[0], &out, sizeof(out)) < 0)
        goto err;
    waitpid(pid, NULL, 0);
    {
        double g[MAXROUND], g1[MAXROUND], pg[MAXROUND], cg[MAXROUND], rp[MAXROUND],
            rp1[MAXROUND], rpu[MAXROUND], rc[MAXROUND], hg[MAXROUND],
            rb = bytes_req * (double)o->requests;
        int np = 0;

        for (int rnd = 0; rnd < nr; rnd++) {
            double sum = 0;

            for (int64_t j = 0; j < o->requests; j++)
                sum += out.lat_s[rnd * o->requests + j];
            g[rnd] = bytes_req * (double)nstream / out.stream_s[rnd] / 1e9;
            g1[rnd] = rb / sum / 1e9;
            pg[rnd] = rb / tref[rnd] / 1e9;
            cg[rnd] = rb / tcpy[rnd] / 1e9;
            hg[rnd] = thot[rnd] > 0 ? rb / thot[rnd] / 1e9 : 0;
            rpu[rnd] = g[rnd] / pg[rnd];
            rc[rnd] = g[rnd] / cg[rnd];
            res->round_gbps[rnd] = g[rnd];
            res->round_serial_gbps[rnd] = g1[rnd];
            res->round_perf[rnd] = perf[rnd];
            if (perf[rnd] > 0) {
                rp1[np] = g1[rnd] / perf[rnd];
                rp[np++] = g[rnd] / perf[rnd];
                res->r_perf_min = np == 1 || rp[np - 1] < res->r_perf_min ? rp[np - 1]
                                                                          : res->r_perf_min;
                res->r_perf_max = rp[np - 1] > res->r_perf_max ? rp[np - 1] : res->r_perf_max;
            }
        }
        for (int64_t j = 0; j < nreq; j++)
            lat[j] = out.lat_s[j];
        qsort(lat, (size_t)nreq, sizeof(double), cmp_d);
        res->rounds = nr;
        res->bytes_per_req = bytes_req;
        res->p50_ms = lat[nreq / 2] * 1e3;
        res->p99_ms = lat[(int64_t)ceil(0.99 * (double)nreq) - 1] * 1e3;
        res->puts_per_req = (double)writes / (double)nreq;
        res->data_per_req = (double)datas / (double)nreq;
        res->msg_size = bytes_req / res->puts_per_req;
        res->gbps = median(g, nr);
        res->serial_gbps = median(g1, nr);
        res->ref_put_gbps = median(pg, nr);
        res->ref_memcpy_gbps = median(cg, nr);
        res->r_put = median(rpu, nr);
        res->r_cpy = median(rc, nr);
        res->hot_put_gbps = median(hg, nr);
        if (np) {
            double tmp[MAXROUND];

            memcpy(tmp, perf, sizeof(tmp));
            res->perftest_gbps = median(tmp, nr);
            res->r_perf = median(rp, np);
            res->r_perf_serial = median(rp1, np);
        }
        res->ok = 1;
    }
    free(segs);
    if (o->cuda)
        host_unpin(cpy_dst);
    free(cpy_dst);
    free(src_host);
    ucp_rkey_destroy(rkey);
    {
        ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                   .flags = UCP_EP_CLOSE_FLAG_FORCE};
        void *q = ucp_ep_close_nbx(ep, &prm);

        if (UCS_PTR_IS_PTR(q)) {
            while (ucp_request_check_status(q) == UCS_INPROGRESS)
                ucp_worker_progress(w);
            ucp_request_free(q);
        }
    }
    ucp_worker_destroy(w);
    ucp_cleanup(ctx);
    free(addr);
    free(rkey_buf);
    for (int r = 0; r < c->p; r++) {
        kvc_destroy(pt.k[r]);
        dev_free(&dev[r]);
    }
    res->tail_between_ms = out.tail_s[0] * 1e3;
    res->tail_thread_ms = out.tail_s[1] * 1e3;
    res->layer_ms = o->us_per_token * 1e-3 * (double)o->check_tokens;
    munmap((void *)shared, 4096);
    close(to_c[1]);
    close(to_p[0]);
    return 0;
err:
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    if (rkey != NULL)
        ucp_rkey_destroy(rkey);
    if (ep != NULL)
        ucp_ep_destroy(ep);
    if (w != NULL)
        ucp_worker_destroy(w);
    if (ctx != NULL)
        ucp_cleanup(ctx);
    if (o->cuda && cpy_dst != NULL)
        host_unpin(cpy_dst);
    free(src_host);
    free(segs);
    free(cpy_dst);
    free(addr);
    free(rkey_buf);
    for (int r = 0; r < c->p; r++) {
        kvc_destroy(pt.k[r]);
        dev_free(&dev[r]);
    }
    munmap((void *)shared, 4096);
    close(to_c[1]);
    close(to_p[0]);
    return -1;
}

/* ---- the sweep ------------------------------------------------------------------ */

static const kvcase_t sweep[] = {
    /* SmolLM2-135M: 30 layers, 3 KV heads, head dim 64, f16 (12 KiB blocks) */
    {"smollm2 b8", 30, 3, 64, DTYPE_F16, 1, 1, 8, 1, 1},
    {"smollm2 b64", 30, 3, 64, DTYPE_F16, 1, 1, 64, 1},
    {"smollm2 b256", 30, 3, 64, DTYPE_F16, 1, 1, 256, 1},
    {"smollm2 b256 runs16", 30, 3, 64, DTYPE_F16, 1, 1, 256, 16},
    {"layers 8 b64", 8, 3, 64, DTYPE_F16, 1, 1, 64, 1},
    {"heads 8 b64", 30, 8, 64, DTYPE_F16, 1, 1, 64, 1},
    {"hd 128 b64", 30, 3, 128, DTYPE_F16, 1, 1, 64, 1},
    {"f32 b64", 30, 3, 64, DTYPE_F32, 1, 1, 64, 1},
    {"tp 1->3 b64", 30, 3, 64, DTYPE_F16, 1, 3, 64, 1},
    {"tp 3->1 b64", 30, 3, 64, DTYPE_F16, 3, 1, 64, 1},
    {"tp 3->3 b64", 30, 3, 64, DTYPE_F16, 3, 3, 64, 1},
    {"tp 2->3 h6 b64", 30, 6, 64, DTYPE_F16, 2, 3, 64, 1},
};

static int bench_kv_run(int argc, char **argv)
{
    opts_t o = {.slab_mib = 1024, .requests = 20, .rounds = 3, .check_tokens = 512,
                .us_per_token = 100, .perftest = true, .depth = 4, .stream_mib = 256, .pin = true};
    const flag_t flags[] = {
        {"slab-mib", 0, FLAG_INT, &o.slab_mib, "slab per rank, MiB (>= 1024 keeps it out of the 260 MiB LLC)",
         "N", 64, 65536, 0, 0},
        {"requests", 'n', FLAG_INT, &o.requests, "requests per round", "N", 3, MAXREQ, 0, 0},
        {"rounds", 'r', FLAG_INT, &o.rounds,
         "rounds per case (each: the requests, the put/memcpy references, ucx_perftest); "
         "figures are medians over the rounds", "N", 1, MAXROUND, 0, 0},
        {"depth", 0, FLAG_INT, &o.depth,
         "requests in flight in the streamed pass (its rate is GB/s; the one-at-a-time "
         "pass gives the latencies)", "N", 1, MAXDEPTH, 0, 0},
        {"stream-mib", 0, FLAG_INT, &o.stream_mib,
         "at least this many MiB in each streamed pass (and each ucx_perftest run)", "N", 1,
         65536, 0, 0},
        {"pin", 0, FLAG_BOOL, &o.pin,
         "prefill on the first CPU this process may use, decode on the second; ucx_perftest's "
         "client and server likewise (--no-pin: the scheduler places them)", NULL, 0, 0, 0, 0},
        {"check-tokens", 0, FLAG_INT, &o.check_tokens, "prompt tokens in the pipelining check",
         "N", 16, 4096, 0, 0},
        {"us-per-token", 0, FLAG_DOUBLE, &o.us_per_token,
         "CPU prefill compute per token per layer, microseconds (see docs/kvconnector.md)",
         "US", 0, 0, 0.01, 100000},
        {"perftest", 0, FLAG_BOOL, &o.perftest, "run ucx_perftest as a reference", NULL, 0, 0, 0, 0},
        {"quick", 'q', FLAG_BOOL, &o.quick, "only the SmolLM2 cases", NULL, 0, 0, 0, 0},
        {"case", 0, FLAG_STRING, &o.only, "only the cases whose name contains TEXT", "TEXT", 0, 0,
         0, 0},
        {"hot", 0, FLAG_BOOL, &o.hot,
         "also time the plain puts from and to one cache-hot place (perftest's pattern)",
         NULL, 0, 0, 0, 0},
        {"hot-side", 0, FLAG_STRING, &o.hot_arg,
         "with --hot: which side is hot: both (default), src (source hot, destinations "
         "scattered) or dst (sources scattered, destination hot)", "SIDE", 0, 0, 0, 0},
        {"json", 0, FLAG_BOOL, &o.json, "print JSON", NULL, 0, 0, 0, 0},
        {"cuda", 0, FLAG_BOOL, &o.cuda, "prefill slabs in GPU memory, staged through pinned host "
         "buffers; the put reference becomes one device-to-host copy of the same bytes "
         "(CUDA builds)",
         NULL, 0, 0, 0, 0},
    };
    const flags_usage_t u = {"duet bench kv", NULL,
                             "KV connector throughput/latency between two processes "
                             "(transport from UCX_TLS) against UCX put, memcpy and ucx_perftest."};
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
    const char *tls = getenv("UCX_TLS");
    int ncases = (int)(sizeof(sweep) / sizeof(sweep[0])), failed = 0, nprinted = 0;

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    o.hot_side = 'b';
    if (o.hot_arg != NULL) {
        if (strcmp(o.hot_arg, "src") != 0 && strcmp(o.hot_arg, "dst") != 0 &&
            strcmp(o.hot_arg, "both") != 0) {
            fprintf(stderr, "duet bench kv: --hot-side is both, src or dst\n");
            return 2;
        }
        o.hot_side = o.hot_arg[0];
    }
    if (o.rounds * o.requests > MAXREQ) {
        fprintf(stderr, "duet bench kv: --rounds x --requests is at most %d\n", MAXREQ);
        return 2;
    }
    if (o.quick)
        ncases = 4;
    if (o.pin) {
        cpu_set_t set;
        int n = 0;

        /* two CPUs of this process's set; fewer: no pinning */
        if (sched_getaffinity(0, sizeof(set), &set) == 0)
            for (int cpu = 0; cpu < CPU_SETSIZE && n < 2; cpu++)
                if (CPU_ISSET(cpu, &set))
                    o.cpu[n++] = cpu;
        o.pin = n == 2;
    }
    if (o.cuda && !DUET_HAVE_CUDA) {
        fprintf(stderr, "duet bench kv: --cuda needs a CUDA build\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (o.json)
        printf("{\"ucx_tls\": \"%s\", \"slab_mib\": %lld, \"cuda\": %s, \"depth\": %lld, "
               "\"pinned\": %s, \"cases\": [\n",
               tls ? tls : "", (long long)o.slab_mib, o.cuda ? "true" : "false",
               (long long)o.depth, o.pin ? "true" : "false");
    else
        printf("UCX_TLS=%s, slab %lld MiB per rank, %lld rounds of %lld requests per case "
               "(medians over rounds), %s; GB/s: %lld requests in flight, 1by1: one at a time "
               "(p50, p99: their latencies); perftest reuses one cache-hot buffer; writes: "
               "puts, copies into a mapped slab, or DATA messages (TCP), per request\n"
               "%-20s %9s %7s %7s %6s %8s %9s %7s %7s %7s %6s %6s %6s %11s\n",
               tls ? tls : "(default)", (long long)o.slab_mib, (long long)o.rounds,
               (long long)o.requests, o.pin ? "pinned to 2 CPUs" : "not pinned",
               (long long)o.depth, "case", "KiB/req", "writes", "GB/s", "1by1", "p50 ms",
               "p99 ms", o.cuda ? "d2h" : "put", "memcpy", "perft", o.cuda ? "/d2h" : "/put",
               "/cpy", "/perf", "/perf range");
    for (int i = 0; i < ncases; i++) {
        kvres_t r;

        if (o.only != NULL && strstr(sweep[i].name, o.only) == NULL)
            continue;
        if (run_case(&sweep[i], &o, &r) != 0) {
            fprintf(stderr, "case '%s' failed\n", sweep[i].name);
            failed++;
            continue;
        }
        if (o.json) {
            printf("%s  {\"case\": \"%s\", \"layers\": %d, \"kv_heads\": %d, \"head_dim\": %d, "
                   "\"dtype\": \"%s\", \"tp\": [%d, %d], \"blocks_per_req\": %d, \"run\": %d, "
                   "\"bytes_per_req\": %.0f, \"puts_per_req\": %.1f, \"data_msgs_per_req\": %.1f, "
                   "\"gbps\": %.3f, \"serial_gbps\": %.3f, "
                   "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"ref_put_gbps\": %.3f, "
                   "\"ref_memcpy_gbps\": %.3f, \"hot_put_gbps\": %.3f, \"perftest_gbps\": %.3f, "
                   "\"perftest_msg\": %.0f, "
                   "\"ratio_put\": %.3f, \"ratio_memcpy\": %.3f, \"ratio_perftest\": %.3f, "
                   "\"ratio_perftest_serial\": %.3f, \"rounds\": [",
                   nprinted ? ",\n" : "", sweep[i].name, sweep[i].layers, sweep[i].heads, sweep[i].head_dim,
                   sweep[i].dtype == DTYPE_F32 ? "f32" : "f16", sweep[i].p, sweep[i].d,
                   sweep[i].blocks_per_req, sweep[i].run, r.bytes_per_req, r.puts_per_req,
                   r.data_per_req, r.gbps, r.serial_gbps,
                   r.p50_ms, r.p99_ms, r.ref_put_gbps, r.ref_memcpy_gbps, r.hot_put_gbps,
                   r.perftest_gbps, r.msg_size, r.r_put, r.r_cpy, r.r_perf, r.r_perf_serial);
            for (int k = 0; k < r.rounds; k++)
                printf("%s{\"gbps\": %.3f, \"serial_gbps\": %.3f, \"perftest_gbps\": %.3f}",
                       k ? ", " : "", r.round_gbps[k], r.round_serial_gbps[k], r.round_perf[k]);
            printf("], \"check_layer_ms\": %.3f, \"check_tail_between_ms\": %.3f, "
                   "\"check_tail_thread_ms\": %.3f}",
                   r.layer_ms, r.tail_between_ms, r.tail_thread_ms);
            nprinted++;
        } else {
            printf("%-20s %9.0f %7.0f %7.2f %6.2f %8.2f %9.2f %7.2f %7.2f %7.2f %6.2f %6.2f "
                   "%6.2f %5.2f-%5.2f\n",
                   sweep[i].name, r.bytes_per_req / 1024, r.puts_per_req, r.gbps, r.serial_gbps,
                   r.p50_ms,
                   r.p99_ms, r.ref_put_gbps, r.ref_memcpy_gbps, r.perftest_gbps, r.r_put,
                   r.r_cpy, r.r_perf, r.r_perf_min, r.r_perf_max);
            if (o.hot && r.hot_put_gbps > 0)
                printf("%-20s plain put %s (%s): %.2f GB/s; "
                       "scattered put / hot put %.2f, hot put / perftest %.2f\n", "",
                       o.hot_side == 'b' ? "from/to one hot place" :
                       o.hot_side == 's' ? "from one hot place" : "to one hot place",
                       o.hot_side == 'b' ? "perftest's pattern" : "the other side scattered",
                       r.hot_put_gbps, r.ref_put_gbps / r.hot_put_gbps,
                       r.perftest_gbps > 0 ? r.hot_put_gbps / r.perftest_gbps : 0.0);
            if (i == 0)
                printf("%-20s check (%lld tokens, layer compute %.1f ms): transfer tail after the "
                       "last layer %.2f ms (progress between layers), %.2f ms (progress thread): "
                       "%s\n", "", (long long)o.check_tokens, r.layer_ms, r.tail_between_ms,
                       r.tail_thread_ms,
                       r.tail_between_ms < r.layer_ms && r.tail_thread_ms < r.layer_ms
                           ? "PASS" : "FAIL");
        }
        fflush(stdout);
    }
    if (o.json)
        printf("\n]}\n");
    return failed ? 1 : 0;
}

const cli_cmd_t cli_bench_kv = {"kv",
    "KV connector transfer rate and latency against UCX and memcpy references",
    bench_kv_run};
