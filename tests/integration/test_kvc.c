/* KV connector over real UCX between real processes: a decode process and a
 * prefill process (fork), each holding all ranks of its node. Byte-exact
 * transfers into scattered granted blocks for every TP pair, layers in any
 * order, a layer before its grant, NACK, expired grant, abort from each side,
 * either process killed mid-transfer, malformed messages; the decode side's
 * own block pool must get every block back. UCX_TLS comes from the test
 * registration (sm,self or tcp,self). In CUDA builds on a machine with a
 * GPU, the prefill slabs are also put in device memory, staged through pinned
 * host buffers (or copied straight into a decode slab mapped here). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "duet_config.h"
#include "common/log.h"
#include "kvconnector/kvc.h"
#include "kvconnector/kvc_int.h"
#include "tests/tap.h"
#if DUET_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "tests/cuda_test.h"
#endif

#define PREFILL_NODE 100
#define DECODE_NODE  200
#define NLAYERS      4
#define BS           4
#define HEAD_DIM     8
#define NBLOCKS      96
#define NREQ         3
#define SENTINEL     0xEE

typedef enum {
    SC_EXACT, SC_LATE_GRANT, SC_NACK, SC_EXPIRED, SC_ABORT_PREFILL, SC_ABORT_DECODE,
    SC_KILL_RECV, SC_KILL_SEND, SC_MALFORMED, SC_LOST_DATA, SC_MISMATCH, SC_STAGED, SC_GATHER,
    SC_CUDA,
} scenario_t;

static int kill_fd = -1;
static uint64_t prefill_node = PREFILL_NODE;   /* two_peers() runs a second node */   /* SC_KILL_SEND: the prefill says when to be killed */

static const char *sc_name[] = {
    "exact", "layer before grant", "nack", "expired grant", "abort from prefill",
    "abort from decode", "receiver killed", "sender killed", "malformed messages",
    "data lost", "fingerprint mismatch", "staged through host buffers", "staged in batches",
    "device slabs",
};

/* Host memory standing in for device memory: the staging copy is memcpy. */
static duet_status_t stage_copy(void *arg, void *dst, const void *src, size_t len)
{
    (void)arg;
    memcpy(dst, src, len);
    return DUET_OK;
}

/* Pinning stands in as a count of what the connector asked to pin. */
static int pinned;

static duet_status_t stage_pin(void *arg, void *ptr, size_t len)
{
    (void)arg;
    (void)ptr;
    (void)len;
    pinned++;
    return DUET_OK;
}

static void stage_unpin(void *arg, void *ptr)
{
    (void)arg;
    (void)ptr;
    pinned--;
}

static duet_status_t stage_copy_batch(void *arg, const kvc_copy_t *v, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(v[i].dst, v[i].src, v[i].len);
    (void)arg;
    return DUET_OK;
}

typedef struct {
    scenario_t sc;
    int        H, p, d;
    unsigned   seed;
} cfg_t;

/* What the decode side reports to the parent. */
typedef struct {
    int      errors;             /* byte mismatches, sentinel overwrites, bad statuses */
    int      leaked;             /* blocks not back in the pool */
    int      status[NREQ];
    uint64_t rejected, expired, data_msgs;
} dec_result_t;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* The byte of request req, layer, kv, global head, token, byte within row. */
static uint8_t kv_byte(unsigned seed, uint64_t req, int layer, int kv, int head, int tok, int b)
{
    return (uint8_t)mix(((((((uint64_t)seed * 31 + req) * 64 + layer) * 2 + kv) * 64 + head) *
                         4096 + tok) * 64 + b);
}

static int req_tokens(const cfg_t *c, int i)
{
    return 5 + (int)(mix(c->seed * 1000 + i) % 40);
}

static uint64_t req_id(int i)
{
    return 1000 + i;
}

static kv_layout_t rank_layout(const cfg_t *c, int tp, int rank)
{
    int32_t first, count;
    kv_layout_t l = {NLAYERS, NBLOCKS, 0, BS, HEAD_DIM, DTYPE_F16};

    kvc_tp_heads(c->H, tp, rank, &first, &count);
    l.n_kv_heads = count;
    return l;
}

static kvc_t *make(const cfg_t *c, kvc_role_t role, int tp, int rank)
{
    kvc_params_t prm = {0};
    kvc_t *k = NULL;

    prm.role = role;
    prm.node_id = role == KVC_ROLE_DECODE ? DECODE_NODE : prefill_node;
    prm.tp_rank = rank;
    prm.tp_size = tp;
    prm.n_kv_heads_total = c->H;
    prm.layout = rank_layout(c, tp, rank);
    prm.model_fp = c->sc == SC_MISMATCH && role == KVC_ROLE_PREFILL ? 0xbadull : 0x5eedull;
    prm.listen_ip = "127.0.0.1";
    prm.max_inflight = 4096;   /* small, so the in-flight bound is exercised */
    /* over TCP: DATA messages of 100 bytes in odd-seeded cases, so that runs
     * are split across messages (60 KiB, the default, holds any run here) */
    prm.data_msg_bytes = c->seed % 2 ? 100 : 0;
    prm.abort_timeout_ms = 3000;
    if ((c->sc == SC_STAGED || c->sc == SC_GATHER) && role == KVC_ROLE_PREFILL) {
        prm.stage_force = 1;
        prm.stage_copy = stage_copy;
        prm.stage_pin = stage_pin;
        prm.stage_unpin = stage_unpin;
        if (c->sc == SC_GATHER)   /* several runs share a buffer, split at its end */
            prm.stage_copy_batch = stage_copy_batch;
        prm.stage_bytes = 1000;   /* smaller than a run: runs are split */
    }
#if DUET_HAVE_CUDA
    if (c->sc == SC_CUDA && role == KVC_ROLE_PREFILL) {
        void *d = NULL;

        if (cudaMalloc(&d, kv_slab_bytes(&prm.layout)) != cudaSuccess)
            return NULL;
        prm.mem = KVC_MEM_CUDA;
        prm.slab = d;            /* leaked at exit with the process */
        prm.stage_copy = kvc_cuda_copy_d2h;
        prm.stage_pin = kvc_cuda_pin;
        prm.stage_unpin = kvc_cuda_unpin;
        prm.stage_bytes = 1000;
        if (kvc_cuda_batch_create((kvc_cuda_batch_t **)&prm.stage_batch_arg) == DUET_OK)
            prm.stage_copy_batch = kvc_cuda_copy_batch_d2h;   /* leaked at exit */
    }
#endif
    if (kvc_create(&prm, &k) != DUET_OK)
        return NULL;
    return k;
}

static void shuffle(int32_t *a, int n, uint64_t *rng)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)((*rng = mix(*rng + 1)) % (uint64_t)(i + 1));
        int32_t t = a[i];

        a[i] = a[j];
        a[j] = t;
    }
}

static void wline(int fd, const char *s)
{
    size_t n = strlen(s);

    if (write(fd, s, n) != (ssize_t)n)
        abort();
}

/* Read one line (blocking). */
static int rline(int fd, char *buf, size_t len)
{
    size_t n = 0;

    while (n + 1 < len) {
        ssize_t r = read(fd, buf + n, 1);

        if (r <= 0)
            return -1;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return 0;
}

/* Keep the connectors progressing until a line (or EOF) is readable on fd, at
 * most timeout_ms. A process that finished its side waits for the parent's
 * "bye" this way before kvc_destroy: closing its endpoints while the peer has
 * not yet seen its own completions would fail the peer's requests (over TCP
 * the peer may even see the endpoint error before the last messages). */
static void wait_line(int fd, kvc_t *const *k, int n, char *buf, size_t len, uint64_t timeout_ms)
{
    uint64_t t0 = clock_now_ns();
    fd_set fs;
    struct timeval tv;

    while (clock_now_ns() - t0 < timeout_ms * 1000000ull) {
        for (int r = 0; r < n; r++)
            kvc_progress(k[r]);
        FD_ZERO(&fs);
        FD_SET(fd, &fs);
        tv.tv_sec = 0;
        tv.tv_usec = 1000;
        if (select(fd + 1, &fs, NULL, NULL, &tv) > 0) {
            if (rline(fd, buf, len) < 0)
                buf[0] = '\0';
            return;
        }
    }
    buf[0] = '\0';
}

/* ---- decode side ---------------------------------------------------------- */

static void dec_main(const cfg_t *c, int wfd, int rfd, int resfd)
{
    kvc_t *k[KVC_MAX_TP] = {0};
    dec_result_t res = {0};
    int32_t pool[NBLOCKS], npool = NBLOCKS;
    int32_t blocks[NREQ][NBLOCKS];
    int nb[NREQ];
    bool done[NREQ][KVC_MAX_TP] = {{false}};
    bool ever[NBLOCKS] = {false};
    uint64_t rng = mix(c->seed + 7), t0;
    char line[256];
    kvc_stats_t st;

    for (int i = 0; i < NBLOCKS; i++)
        pool[i] = i;
    shuffle(pool, NBLOCKS, &rng);
    for (int r = 0; r < c->d; r++) {
        k[r] = make(c, KVC_ROLE_DECODE, c->d, r);
        if (k[r] == NULL)
            _exit(3);
        kv_layout_t l = rank_layout(c, c->d, r);

        memset(kvc_slab(k[r]), SENTINEL, kv_slab_bytes(&l));
        kvc_listen_address(k[r], line, sizeof(line) - 1);
        strcat(line, "\n");
        wline(wfd, line);
    }
    /* wait for "connected" (prefill done connecting), keep accepting meanwhile */
    {
        fd_set fs;
        struct timeval tv;

        for (;;) {
            for (int r = 0; r < c->d; r++)
                kvc_progress(k[r]);
            FD_ZERO(&fs);
            FD_SET(rfd, &fs);
            tv.tv_sec = 0;
            tv.tv_usec = 1000;
            if (select(rfd + 1, &fs, NULL, NULL, &tv) > 0)
                break;
        }
        if (rline(rfd, line, sizeof(line)) < 0)
            _exit(4);
        if (c->sc == SC_LATE_GRANT && rline(rfd, line, sizeof(line)) < 0)
            _exit(4);   /* "queued": every layer was sent before any grant */
    }
    if (c->sc == SC_MISMATCH) {
        /* nobody connected: a grant has no one to go to */
        int32_t b = 0;

        if (kvc_grant(k[0], PREFILL_NODE, 1, 1, &b, 1, 1000) != DUET_ERR_NOT_FOUND)
            res.errors++;
        for (int r = 0; r < c->d; r++)
            kvc_destroy(k[r]);
        if (write(resfd, &res, sizeof(res)) != sizeof(res))
            _exit(5);
        _exit(0);
    }
    if (c->sc == SC_MALFORMED) {
        /* GRANTs a prefill must refuse: they would aim its puts outside the
         * slab or outside what the message carries */
        struct {
            kvc_msg_grant_t g;
            int32_t b[2];
        } bad = {{{KVC_WIRE_MAGIC, KVC_MSG_GRANT, 0, 555}, 8, 2, 1000, 0}, {3, NBLOCKS}};

        kvc_test_send_raw(k[0], PREFILL_NODE, &bad, sizeof(bad));      /* block past the slab */
        bad.b[1] = -1;
        kvc_test_send_raw(k[0], PREFILL_NODE, &bad, sizeof(bad));      /* negative block */
        bad.b[1] = 4;
        bad.g.nblocks = 3;
        kvc_test_send_raw(k[0], PREFILL_NODE, &bad, sizeof(bad));      /* count past the message */
        bad.g.nblocks = 2;
        bad.g.n_tokens = 100;
        kvc_test_send_raw(k[0], PREFILL_NODE, &bad, sizeof(bad));      /* tokens past the blocks */
    }
    for (int i = 0; i < NREQ; i++) {
        int n = req_tokens(c, i);

        nb[i] = (n + BS - 1) / BS;
        npool -= nb[i];
        memcpy(blocks[i], pool + npool, (size_t)nb[i] * sizeof(int32_t));
        for (int b = 0; b < nb[i]; b++)
            ever[blocks[i][b]] = true;
        for (int r = 0; r < c->d; r++) {
            duet_status_t s;

            if (c->sc == SC_NACK && i == 0)
                s = kvc_nack(k[r], PREFILL_NODE, req_id(i));
            else
                s = kvc_grant(k[r], PREFILL_NODE, req_id(i), n, blocks[i], nb[i],
                              c->sc == SC_EXPIRED && i == 0 ? 200 : 8000);
            if (s != DUET_OK) {
                fprintf(stderr, "grant/nack failed: %s\n", duet_status_str(s));
                res.errors++;
            }
            if (c->sc == SC_NACK && i == 0)
                done[i][r] = true;
        }
        if (c->sc == SC_NACK && i == 0) {
            memcpy(pool + npool, blocks[i], (size_t)nb[i] * sizeof(int32_t));
            npool += nb[i];
            res.status[i] = DUET_ERR_NO_RESOURCE;
        }
    }
    if (c->sc == SC_KILL_RECV)
        wline(wfd, "granted\n");
    if (c->sc == SC_KILL_SEND)
        wline(resfd, "granted\n");
    t0 = clock_now_ns();
    for (;;) {
        int left = 0;

        for (int r = 0; r < c->d; r++)
            kvc_progress(k[r]);
        if (c->sc == SC_ABORT_DECODE && !done[0][0] && clock_now_ns() - t0 > 60000000ull)
            kvc_abort(k[0], req_id(0));
        for (int i = 0; i < NREQ; i++) {
            for (int r = 0; r < c->d; r++) {
                kvc_end_t end;
                duet_status_t s;

                if (done[i][r])
                    continue;
                s = kvc_recv_kv_cache(k[r], req_id(i), &end);
                if (s == DUET_INPROGRESS) {
                    left++;
                    continue;
                }
                done[i][r] = true;
                /* a rank's own failure wins over the cancel that followed
                 * on the other ranks (data lost: PROTO on one rank) */
                if (s != DUET_OK &&
                    (res.status[i] == DUET_OK || res.status[i] == DUET_ERR_CANCELED))
                    res.status[i] = s;
                if (s == DUET_OK) {
                    kv_layout_t l = rank_layout(c, c->d, r);
                    int32_t first, count;
                    const uint8_t *slab = kvc_slab(k[r]);
                    int n = req_tokens(c, i), row = HEAD_DIM * 2;

                    kvc_tp_heads(c->H, c->d, r, &first, &count);
                    if (end.first_token != (int32_t)(req_id(i) * 7) || end.state_len != 3 ||
                        memcmp(end.state, "st8", 3) != 0)
                        res.errors++;
                    for (int L = 0; L < NLAYERS; L++)
                        for (int t = 0; t < n; t++)
                            for (int kv = 0; kv < 2; kv++)
                                for (int h = 0; h < count; h++) {
                                    const uint8_t *q = slab + kv_offset(&l, L, blocks[i][t / BS], kv, h) +
                                                       (size_t)(t % BS) * (size_t)row;

                                    for (int b = 0; b < row; b++)
                                        if (q[b] != kv_byte(c->seed, req_id(i), L, kv, first + h, t, b))
                                            res.errors++;
                                }
                }
                if (r == c->d - 1) {   /* last rank gave them back: return to the pool */
                    memcpy(pool + npool, blocks[i], (size_t)nb[i] * sizeof(int32_t));
                    npool += nb[i];
                }
            }
        }
        if (left == 0 || clock_now_ns() - t0 > 12000000000ull)
            break;
    }
    res.leaked = NBLOCKS - npool;
    for (int r = 0; r < c->d; r++) {
        kv_layout_t l = rank_layout(c, c->d, r);
        const uint8_t *slab = kvc_slab(k[r]);

        /* blocks never granted must be untouched in every layer */
        for (int L = 0; L < NLAYERS; L++)
            for (int b = 0; b < NBLOCKS; b++) {
                const uint8_t *q = slab + kv_offset(&l, L, b, 0, 0);

                if (ever[b])
                    continue;
                for (size_t x = 0; x < kv_block_bytes(&l); x++)
                    if (q[x] != SENTINEL) {
                        res.errors++;
                        break;
                    }
            }
        kvc_stats(k[r], &st);
        res.rejected += st.rejected;
        res.expired += st.expired;
        res.data_msgs += st.data_msgs;
    }
    if (write(resfd, &res, sizeof(res)) != sizeof(res))
        _exit(5);
    wait_line(rfd, k, c->d, line, sizeof(line), 30000);   /* "bye" from the parent */
    for (int r = 0; r < c->d; r++)
        kvc_destroy(k[r]);
    _exit(0);
}

/* ---- prefill side --------------------------------------------------------- */

typedef struct {
    int      status[NREQ];
    uint64_t rejected, nacks, staged, batches, data_msgs;
    int      errors;
    int      pinned;      /* stage_pin calls not undone (staged: one per rank,
                             more for decode slabs mapped here) */
} pre_result_t;

/* Request i's bytes into rank's slab at its local blocks lb. */
static void fill_host(const cfg_t *c, const kv_layout_t *lp, uint8_t *slab, int rank, int i,
                      const int32_t *lb)
{
    const kv_layout_t l = *lp;
    int32_t first, count;
    int n = req_tokens(c, i), row = HEAD_DIM * 2;

    kvc_tp_heads(c->H, c->p, rank, &first, &count);
    for (int L = 0; L < NLAYERS; L++)
        for (int t = 0; t < n; t++)
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < count; h++) {
                    uint8_t *q = slab + kv_offset(&l, L, lb[t / BS], kv, h) + (size_t)(t % BS) * (size_t)row;

                    for (int b = 0; b < row; b++)
                        q[b] = kv_byte(c->seed, req_id(i), L, kv, first + h, t, b);
                }
}

static void fill_local(const cfg_t *c, kvc_t *k, int rank, int i, const int32_t *lb)
{
    kv_layout_t l = rank_layout(c, c->p, rank);
    uint8_t *slab = kvc_slab(k);

#if DUET_HAVE_CUDA
    if (c->sc == SC_CUDA) {
        /* the device slab, filled through a host copy of it */
        uint8_t *h = malloc(kv_slab_bytes(&l));

        if (h == NULL || cudaMemcpy(h, slab, kv_slab_bytes(&l), cudaMemcpyDeviceToHost))
            abort();
        fill_host(c, &l, h, rank, i, lb);
        if (cudaMemcpy(slab, h, kv_slab_bytes(&l), cudaMemcpyHostToDevice))
            abort();
        free(h);
        return;
    }
#endif
    fill_host(c, &l, slab, rank, i, lb);
}

static void malformed(kvc_t *k)
{
    kvc_msg_layer_t m = {{KVC_WIRE_MAGIC, KVC_MSG_LAYER_DONE, 0, req_id(1)}, NLAYERS + 3, 0, 4, 0};
    kvc_msg_end_t e = {{KVC_WIRE_MAGIC, KVC_MSG_KV_END, 0, req_id(1)}, 5, 100000};
    uint8_t junk[7] = {1, 2, 3, 4, 5, 6, 7};

    kvc_test_send_raw(k, DECODE_NODE, &m, sizeof(m));          /* layer out of range */
    m.layer = 0;
    m.tok1 = 100000;
    kvc_test_send_raw(k, DECODE_NODE, &m, sizeof(m));          /* tokens past the grant */
    m.tok1 = 4;
    m.layer = NLAYERS - 1;
    m.n_layers = 2;
    kvc_test_send_raw(k, DECODE_NODE, &m, sizeof(m));          /* a run of layers past the last */
    m.layer = 0;
    m.n_layers = -1;
    kvc_test_send_raw(k, DECODE_NODE, &m, sizeof(m));          /* a negative run */
    m.n_layers = 0;
    m.h.req = 777777;
    kvc_test_send_raw(k, DECODE_NODE, &m, sizeof(m));          /* unknown request */
    kvc_test_send_raw(k, DECODE_NODE, &e, sizeof(e));          /* state_len lies */
    kvc_test_send_raw(k, DECODE_NODE, junk, sizeof(junk));     /* too short */
    m.h.magic = 0x12345678;
    kvc_test_send_raw(k, DECODE_NODE, &m, sizeof(m));          /* bad magic */
}

/* Puts over TCP (only with DUET_KVC_DATA=put; TCP carries DATA messages
 * otherwise): UCX 1.13 can abort the decode process when the sender dies
 * while a put is being received (docs/kvconnector.md), so the sender-killed
 * tests then kill at a quiet moment. Otherwise they kill mid-transfer. */
static bool tcp_puts(void)
{
    const char *e = getenv("DUET_KVC_DATA");

    return e != NULL && strcmp(e, "put") == 0;
}

/* Does UCX_TLS leave the connector TCP alone for the writes (no
 * shared-memory transport): then they are DATA messages, unless tcp_puts. */
static bool tcp_data(void)
{
    static const char *const shm[] = {"sm", "posix", "sysv", "cma", "xpmem", "knem"};
    const char *tls = getenv("UCX_TLS");

    if (tls == NULL || tcp_puts())
        return false;
    for (size_t i = 0; i < sizeof(shm) / sizeof(shm[0]); i++)
        if (strstr(tls, shm[i]))
            return false;
    return true;
}

/* Entry i of dec_main's shuffled block pool: it hands out blocks from the
 * end, so entry 0 is never granted, and request 0 (granted first) gets the
 * last (req_tokens(c, 0) + BS - 1) / BS entries. */
static int32_t dec_pool(const cfg_t *c, int i)
{
    int32_t pool[NBLOCKS];
    uint64_t rng = mix(c->seed + 7);

    for (int j = 0; j < NBLOCKS; j++)
        pool[j] = j;
    shuffle(pool, NBLOCKS, &rng);
    return pool[i];
}

static int32_t never_granted(const cfg_t *c)
{
    return dec_pool(c, 0);
}

/* DATA messages for granted request req that the decode ranks must refuse
 * whole, writing nothing: dec_main finds any byte written outside the
 * requests' blocks, and any wrong byte inside them. */
static void malformed_data(const cfg_t *c, kvc_t *k, uint64_t req)
{
    kv_layout_t l = rank_layout(c, c->d, 0);
    struct {
        kvc_msg_data_t m;
        kvc_run_t      run[2];
    } d = {{{KVC_WIRE_MAGIC, KVC_MSG_DATA, 0, req}, 1, 0}, {{0, 64}, {0, 0}}};
    size_t h1 = sizeof(d.m) + sizeof(kvc_run_t);
    uint8_t pay[128];

    memset(pay, 0x77, sizeof(pay));
    d.run[0].off = kv_offset(&l, 0, never_granted(c), 0, 0);
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 64);        /* a block never granted */
    d.run[0].off = kv_slab_bytes(&l);
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 64);        /* past the slab */
    d.run[0].off = kv_offset(&l, 1, 0, 0, 0) - 32;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 64);        /* across a layer's end */
    d.run[0].off = kv_offset(&l, 0, never_granted(c), 0, 0);
    d.run[0].len = ~0ull;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 64);        /* longer than the payload */
    d.run[0].len = 0;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 0);         /* an empty run */
    d.run[0].len = 64;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 128);       /* payload past the runs */
    d.m.nruns = 2;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 64);        /* runs past the header */
    d.m.nruns = 0;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, sizeof(d.m), pay, 64);   /* no runs */
    d.m.nruns = 1;
    d.m.h.req = 777777;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 64);        /* unknown request */
    d.m.h.req = req;
    if (c->p == 2 && c->d == 3 && c->H == 6) {
        /* decode rank 1 holds heads 2 and 3; prefill rank 0 (k) writes head
         * 2 there, rank 1 head 3: k may not write head 3 of req's block */
        kv_layout_t l1 = rank_layout(c, c->d, 1);
        int32_t b = dec_pool(c, NBLOCKS - (req_tokens(c, 0) + BS - 1) / BS);

        d.run[0].off = kv_offset(&l1, 0, b, 0, 1);
        d.run[0].len = kv_head_bytes(&l1);
        kvc_test_send_data(k, DECODE_NODE, 1, &d, h1, pay, d.run[0].len);   /* another's head */
        d.run[0].off += 8;
        d.run[0].len = 8;
        kvc_test_send_data(k, DECODE_NODE, 1, &d, h1, pay, 8);   /* inside another's head */
    }
    d.m.h.magic = 0x12345678;
    kvc_test_send_data(k, DECODE_NODE, 0, &d, h1, pay, 64);        /* bad magic */
    kvc_test_send_data(k, DECODE_NODE, 0, &d, 8, pay, 64);         /* header too short */
}

/* A LAYER_DONE for req that counts more DATA bytes than ever arrived: the
 * decode rank must fail the request, not finish it with holes. Over TCP a
 * real DATA message is lost instead (kvc_test_drop_data, before any is
 * sent); elsewhere there are none, and the LAYER_DONE is forged. */
static void lost_data(kvc_t *k, uint64_t req)
{
    kvc_msg_layer_t m = {{KVC_WIRE_MAGIC, KVC_MSG_LAYER_DONE, 0, req}, 0, 0, 1, 1, 1ull << 40};

    kvc_test_send_raw(k, DECODE_NODE, &m, sizeof(m));
}

/* resfd >= 0: write the result there, then wait for "bye" on rfd (still
 * progressing) before kvc_destroy, and return true; false: not written. */
static bool pre_main(const cfg_t *c, int wfd, int rfd, int resfd, pid_t dec_pid,
                     pre_result_t *res)
{
    kvc_t *k[KVC_MAX_TP] = {0};
    int32_t lb[KVC_MAX_TP][NREQ][NBLOCKS];
    int32_t order[NREQ][NLAYERS * 2];
    int next[NREQ] = {0};
    bool fin[NREQ][KVC_MAX_TP] = {{false}}, ended[NREQ] = {false}, requeued = false;
    uint64_t rng = mix(c->seed + 99), t0, last_send = 0;
    char line[256];
    int sent = 0;
    bool killed = false;
    /* malformed DATA / lost data: sent once req 0 is granted, before any
     * request ends (so that the decode side still holds every grant) */
    bool forge = c->sc == SC_MALFORMED || c->sc == SC_LOST_DATA, forged = false;

    memset(res, 0, sizeof(*res));
    for (int r = 0; r < c->p; r++) {
        int32_t perm[NBLOCKS];

        k[r] = make(c, KVC_ROLE_PREFILL, c->p, r);
        if (k[r] == NULL) {
            res->errors++;
            return false;
        }
        for (int b = 0; b < NBLOCKS; b++)
            perm[b] = b;
        shuffle(perm, NBLOCKS, &rng);
        for (int i = 0, at = 0; i < NREQ; i++) {
            int n = (req_tokens(c, i) + BS - 1) / BS;

            memcpy(lb[r][i], perm + at, (size_t)n * sizeof(int32_t));
            at += n;
            fill_local(c, k[r], r, i, lb[r][i]);
        }
    }
    for (int r = 0; r < c->d; r++) {
        uint64_t node;

        if (rline(rfd, line, sizeof(line)) < 0) {
            res->errors++;
            return false;
        }
        for (int pr = 0; pr < c->p; pr++) {
            if (c->sc == SC_MISMATCH) {
                res->status[0] = kvc_connect(k[pr], line, 5000, &node);
                if (res->status[0] != DUET_ERR_MISMATCH)
                    res->errors++;
                continue;
            }
            if (kvc_connect(k[pr], line, 5000, &node) != DUET_OK || node != DECODE_NODE) {
                res->errors++;
                return false;
            }
        }
    }
    wline(wfd, "connected\n");
    if (c->sc == SC_MISMATCH) {
        for (int r = 0; r < c->p; r++)
            kvc_destroy(k[r]);
        return false;
    }
    /* each request's (layer, chunk) jobs in a random order */
    for (int i = 0; i < NREQ; i++) {
        for (int j = 0; j < NLAYERS * 2; j++)
            order[i][j] = j;
        shuffle(order[i], NLAYERS * 2, &rng);
    }
    if (c->sc == SC_KILL_RECV && rline(rfd, line, sizeof(line)) < 0)
        res->errors++;
    if (c->sc == SC_MALFORMED)
        malformed(k[0]);
    t0 = clock_now_ns();
    for (;;) {
        int left = 0;
        uint64_t now = clock_now_ns();
        bool slow = c->sc == SC_ABORT_DECODE || c->sc == SC_KILL_RECV || c->sc == SC_KILL_SEND;

        if (c->sc == SC_LOST_DATA && !forged && tcp_data()) {
            kvc_test_drop_data(k[0], req_id(0), 1);
            forged = true;
        }
        if (forge && !forged && kvc_send_granted(k[0], req_id(0))) {
            if (c->sc == SC_MALFORMED)
                malformed_data(c, k[0], req_id(0));
            else
                lost_data(k[0], req_id(0));
            forged = true;
        }

        for (int i = 0; i < NREQ; i++) {
            int n = req_tokens(c, i), split = 1 + (int)(mix(c->seed + (uint64_t)i) % (uint64_t)(n - 1));

            if (c->sc == SC_EXPIRED && i == 0)
                continue;     /* the caller never sends it: the grant must expire */
            if (slow && i == 0 && now - last_send < 20000000ull)
                continue;
            if (next[i] < NLAYERS * 2) {
                int j = order[i][next[i]++], L = j / 2;
                int tok0 = j % 2 ? split : 0, tok1 = j % 2 ? n : split;
                int b0 = tok0 / BS, nbl = (tok1 - 1) / BS - b0 + 1;

                for (int r = 0; r < c->p; r++) {
                    duet_status_t s = kvc_send_kv_cache(k[r], req_id(i), L, tok0, tok1,
                                                        lb[r][i] + b0, nbl);

                    if (s != DUET_OK && !(i == 0 && c->sc != SC_EXACT && c->sc != SC_LATE_GRANT))
                        res->errors++;
                }
                if (i == 0)
                    last_send = now, sent++;
            } else if (c->sc == SC_LATE_GRANT && i == 1 && !requeued) {
                /* the prefill engine preempted req 1 before any grant: its
                 * queued layers are dropped, to be queued again from the
                 * blocks it gets next (here the same ones) */
                for (int r = 0; r < c->p; r++) {
                    bool resend = false;

                    if (kvc_send_blocks_reused(k[r], req_id(i), &resend) != DUET_OK || !resend)
                        res->errors++;
                }
                requeued = true;
                next[i] = 0;
            } else if (!ended[i] && !(c->sc == SC_ABORT_DECODE && i == 0) &&
                       (forged || !forge)) {
                /* (abort from decode: req 0 never ends, so it cannot complete
                 * before the decode's abort however late that comes) */
                for (int r = 0; r < c->p; r++)
                    kvc_end(k[r], req_id(i), (int32_t)(req_id(i) * 7), "st8", 3);
                ended[i] = true;
            }
        }
        if (c->sc == SC_ABORT_PREFILL && sent == 2) {
            sent = 3;
            /* abort req 0 after its first layers went out, on every rank */
            for (int r = 0; r < c->p; r++)
                kvc_abort(k[r], req_id(0));
        }
        if (c->sc == SC_KILL_SEND && kill_fd >= 0 && sent >= 3) {
            /* kill me now, writes in flight; with puts over TCP at a quiet
             * moment (none in flight: every put issued so far is
             * acknowledged, and no progress call issues more) */
            for (int r = 0; r < c->p && tcp_puts(); r++)
                if (kvc_test_quiesce(k[r], 10000) != DUET_OK)
                    res->errors++;
            wline(kill_fd, "idle\n");
            kill_fd = -1;
            pause();
        }
        if (c->sc == SC_KILL_RECV && !killed && sent >= 3) {
            kill(dec_pid, SIGKILL);
            killed = true;
        }
        for (int r = 0; r < c->p; r++)
            kvc_progress(k[r]);
        if (c->sc == SC_LATE_GRANT && next[NREQ - 1] == NLAYERS * 2 && ended[0] == true &&
            sent >= 0) {
            wline(wfd, "queued\n");
            sent = -1000000;
        }
        for (int i = 0; i < NREQ; i++)
            for (int r = 0; r < c->p; r++) {
                duet_status_t s;

                if (fin[i][r])
                    continue;
                if (c->sc == SC_EXPIRED && i == 0) {
                    s = kvc_send_status(k[r], req_id(i));
                    if (s == DUET_ERR_NOT_FOUND && clock_now_ns() - t0 > 1500000000ull) {
                        fin[i][r] = true;   /* grant-only request, answered and gone */
                        res->status[i] = DUET_ERR_TIMEOUT;
                    } else {
                        left++;
                    }
                    continue;
                }
                s = kvc_send_status(k[r], req_id(i));
                if (s == DUET_INPROGRESS) {
                    left++;
                    continue;
                }
                fin[i][r] = true;
                res->status[i] = s;
            }
        if (left == 0 || clock_now_ns() - t0 > 12000000000ull)
            break;
    }
    for (int r = 0; r < c->p; r++) {
        kvc_stats_t st;

        kvc_stats(k[r], &st);
        res->rejected += st.rejected;
        res->nacks += st.nacks;
        res->staged += st.staged;
        res->batches += st.batches;
        res->data_msgs += st.data_msgs;
    }
    res->pinned = pinned;
    if (resfd >= 0) {
        if (write(resfd, res, sizeof(*res)) != sizeof(*res))
            _exit(5);
        wait_line(rfd, k, c->p, line, sizeof(line), 30000);   /* "bye" from the parent */
    }
    for (int r = 0; r < c->p; r++)
        kvc_destroy(k[r]);
    return resfd >= 0;
}

/* ---- one scenario ---------------------------------------------------------- */

static void run(const cfg_t *c)
{
    int to_pre[2], to_dec[2];
    pid_t pid;
    dec_result_t dr = {0};
    pre_result_t pr = {0};
    int wst = 0, pst = 0;
    bool got = false;

    if (pipe(to_pre) || pipe(to_dec))
        abort();
    fflush(stdout);
    if (c->sc == SC_KILL_SEND) {
        int resp[2];
        pid_t pre_pid, dec_pid;
        char line[64];

        int kp[2];

        if (pipe(resp) || pipe(kp))
            abort();
        pre_pid = fork();
        if (pre_pid == 0) {
            close(kp[0]);
            kill_fd = kp[1];
            pre_main(c, to_dec[1], to_pre[0], -1, 0, &pr);
            _exit(0);
        }
        close(kp[1]);
        dec_pid = fork();
        if (dec_pid == 0)
            dec_main(c, to_pre[1], to_dec[0], resp[1]);
        close(resp[1]);
        /* kill the sender once the grant is out and a few layers went */
        if (rline(resp[0], line, sizeof(line)) == 0 && rline(kp[0], line, sizeof(line)) == 0)
            kill(pre_pid, SIGKILL);
        close(kp[0]);
        got = read(resp[0], &dr, sizeof(dr)) == sizeof(dr);
        wline(to_dec[1], "bye\n");
        waitpid(pre_pid, NULL, 0);
        waitpid(dec_pid, &wst, 0);
        if (!got)
            diag("decode process: %s %d", WIFEXITED(wst) ? "exit" : "signal",
                 WIFEXITED(wst) ? WEXITSTATUS(wst) : WTERMSIG(wst));
        close(resp[0]);
        close(to_pre[0]);
        close(to_pre[1]);
        close(to_dec[0]);
        close(to_dec[1]);
        ok(got, "%s (H=%d p=%d d=%d): decode reported", sc_name[c->sc], c->H, c->p, c->d);
        ok(dr.status[0] == DUET_ERR_PEER || dr.status[0] == DUET_ERR_TIMEOUT,
           "%s: decode sees the sender's death (%s)", sc_name[c->sc],
           duet_status_str(dr.status[0]));
        is_int(dr.leaked, 0, "%s: no block leaked", sc_name[c->sc]);
        is_int(dr.errors, 0, "%s: no stray writes", sc_name[c->sc]);
        return;
    }
    /* both sides in fresh children: this process never initializes UCX, so
     * no child inherits UCX state through fork */
    {
        int dres[2], pres[2];
        pid_t ppid;

        if (pipe(dres) || pipe(pres))
            abort();
        pid = fork();
        if (pid == 0)
            dec_main(c, to_pre[1], to_dec[0], dres[1]);
        ppid = fork();
        if (ppid == 0) {
            if (!pre_main(c, to_dec[1], to_pre[0], pres[1], pid, &pr) &&
                write(pres[1], &pr, sizeof(pr)) != sizeof(pr))
                _exit(5);
            _exit(pinned != 0 ? 6 : 0);   /* destroy undoes every pin */
        }
        close(dres[1]);
        close(pres[1]);
        if (read(pres[0], &pr, sizeof(pr)) != sizeof(pr))
            pr.errors++;
        if (c->sc != SC_KILL_RECV && read(dres[0], &dr, sizeof(dr)) == sizeof(dr))
            got = true;
        /* both sides reported: now they may close their endpoints */
        wline(to_pre[1], "bye\n");
        wline(to_dec[1], "bye\n");
        waitpid(ppid, &pst, 0);
        waitpid(pid, &wst, 0);
        close(dres[0]);
        close(pres[0]);
        close(to_pre[0]);
        close(to_pre[1]);
        close(to_dec[0]);
        close(to_dec[1]);
    }
    if (c->sc == SC_KILL_RECV) {
        ok(pr.status[0] == DUET_ERR_PEER, "%s: prefill fails with %s", sc_name[c->sc],
           duet_status_str(pr.status[0]));
        is_int(pr.errors, 0, "%s: prefill side clean", sc_name[c->sc]);
        return;
    }
    if (c->sc == SC_MISMATCH) {
        ok(got && pr.status[0] == DUET_ERR_MISMATCH && pr.errors + dr.errors == 0,
           "%s: connect refused with %s, nothing granted", sc_name[c->sc],
           duet_status_str(pr.status[0]));
        return;
    }
    ok(got && WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "%s (H=%d p=%d d=%d): decode finished",
       sc_name[c->sc], c->H, c->p, c->d);
    if (dr.errors + pr.errors)
        diag("decode errors %d, prefill errors %d", dr.errors, pr.errors);
    is_int(dr.errors + pr.errors, 0, "%s (H=%d p=%d d=%d): byte-exact, no stray writes",
           sc_name[c->sc], c->H, c->p, c->d);
    is_int(dr.leaked, 0, "%s (H=%d p=%d d=%d): every block back in the pool", sc_name[c->sc],
           c->H, c->p, c->d);
    for (int i = 0; i < NREQ; i++) {
        int want = DUET_OK;

        if (i == 0 && c->sc == SC_NACK)
            want = DUET_ERR_NO_RESOURCE;
        if (i == 0 && c->sc == SC_EXPIRED)
            want = DUET_ERR_TIMEOUT;
        int dwant;

        if (i == 0 && (c->sc == SC_ABORT_PREFILL || c->sc == SC_ABORT_DECODE ||
                       c->sc == SC_LOST_DATA))
            want = DUET_ERR_CANCELED;
        /* lost data: the decode side knows why; the prefill is told to stop
         * (or was done already: over shared memory it may be) */
        dwant = i == 0 && c->sc == SC_LOST_DATA ? DUET_ERR_PROTO : want;
        if (dr.status[i] != dwant ||
            (pr.status[i] != want && !(dwant == DUET_ERR_PROTO && pr.status[i] == DUET_OK)))
            ok(0, "%s: req %d: decode %s, prefill %s, want %s / %s", sc_name[c->sc], i,
               duet_status_str(dr.status[i]), duet_status_str(pr.status[i]),
               duet_status_str(dwant), duet_status_str(want));
    }
    if (c->sc == SC_LOST_DATA)
        ok(dr.status[0] == DUET_ERR_PROTO &&
           (pr.status[0] == DUET_ERR_CANCELED || pr.status[0] == DUET_OK),
           "data lost: the decode side fails the request (%s), the prefill stops or is "
           "done (%s)",
           duet_status_str(dr.status[0]), duet_status_str(pr.status[0]));
    if (c->sc == SC_EXACT || c->sc == SC_STAGED || c->sc == SC_GATHER) {
        /* over TCP alone the writes are DATA messages (puts otherwise),
         * from the staging buffers too */
        bool tcp_only = tcp_data();

        ok(tcp_only ? pr.data_msgs > 0 && dr.data_msgs == pr.data_msgs
                    : pr.data_msgs == 0 && dr.data_msgs == 0,
           "%s (H=%d p=%d d=%d): %s (%llu sent, %llu copied in)", sc_name[c->sc], c->H, c->p,
           c->d,
           tcp_only ? "DATA messages over TCP" : "no DATA messages (shared memory, or puts)",
           (unsigned long long)pr.data_msgs, (unsigned long long)dr.data_msgs);
    }
    if (c->sc == SC_NACK)
        ok(pr.nacks >= 1, "nack: prefill counted it");
    if (c->sc == SC_STAGED || c->sc == SC_GATHER || c->sc == SC_CUDA)
        ok(pr.staged > 0, "%s: %llu bytes copied out of the device slab by stage_copy",
           sc_name[c->sc], (unsigned long long)pr.staged);
    if (c->sc == SC_STAGED || c->sc == SC_GATHER || c->sc == SC_CUDA)
        /* batches: into the staging buffers (puts) or, over shared memory,
         * into the decode slabs mapped here */
        ok(c->sc == SC_STAGED ? pr.batches == 0 : pr.batches > 0, "%s: %llu batched copies",
           sc_name[c->sc], (unsigned long long)pr.batches);
    if (c->sc == SC_STAGED || c->sc == SC_GATHER)
        ok(pr.pinned >= c->p && WIFEXITED(pst) && WEXITSTATUS(pst) == 0,
           "staged: the staging buffers were pinned (%d pins), and unpinned at destroy",
           pr.pinned);
    if (c->sc == SC_EXPIRED)
        ok(dr.expired >= 1, "expired: decode counted it");
    if (c->sc == SC_EXACT || c->sc == SC_LATE_GRANT)
        /* late grant: req 1's layers were dropped and queued again; each
         * token range must still reach the decode exactly once */
        ok(dr.rejected == 0, "%s: decode rejected nothing (%llu)", sc_name[c->sc],
           (unsigned long long)dr.rejected);
    if (c->sc == SC_MALFORMED) {
        /* 8 LAYER_DONE / KV_END, 13 DATA */
        ok(dr.rejected >= 21, "malformed: decode rejected %llu messages",
           (unsigned long long)dr.rejected);
        ok(pr.rejected >= 4, "malformed: prefill rejected %llu out-of-range GRANTs",
           (unsigned long long)pr.rejected);
    }
}

/* ---- two prefill nodes, one dies: only its request fails ----------------- */

typedef struct {
    int      status[2];
    int      grant[2];          /* the last kvc_grant status per node */
    uint64_t grant_ms[2];       /* when it took (or the grant loop gave up) */
    uint64_t done_ms[2];        /* when kvc_recv_kv_cache settled */
    int      errors, leaked;
} two_result_t;

/* One prefill node. afd: its own pipe carrying the decode address (each node
 * has its own: two readers of one pipe, reading a byte at a time, interleave
 * and both get a garbled address). kfd >= 0: this node is killed after layer
 * 1, its writes in flight (with puts over TCP at a quiet moment); it says
 * when. byefd: the live node waits there before
 * closing, so that it never closes under the decode's feet.
 * Exit codes: 3 create, 4 connect, 6 send not final, 7 quiesce. */
static void two_prefill(const cfg_t *c, uint64_t node, int i, int afd, int kfd, int byefd)
{
    kvc_t *k;
    int32_t lb[NBLOCKS];
    int n = req_tokens(c, i), nb = (n + BS - 1) / BS;
    char line[128];
    uint64_t dnode, t0;
    duet_status_t s;
    kvc_t *ks[1];

    prefill_node = node;
    k = make(c, KVC_ROLE_PREFILL, 1, 0);
    if (k == NULL)
        _exit(3);
    for (int b = 0; b < nb; b++)
        lb[b] = NBLOCKS - 1 - b * 2;
    fill_local(c, k, 0, i, lb);
    if (rline(afd, line, sizeof(line)) < 0)
        _exit(4);
    s = kvc_connect(k, line, 10000, &dnode);
    if (s != DUET_OK) {
        fprintf(stderr, "two peers: node %llu: connect to '%s': %s\n", (unsigned long long)node,
                line, duet_status_str(s));
        _exit(4);
    }
    for (int L = 0; L < NLAYERS; L++) {
        uint64_t t = clock_now_ns();

        kvc_send_kv_cache(k, req_id(i), L, 0, n, lb, nb);
        while (clock_now_ns() - t < (kfd >= 0 && tcp_puts() ? 20000000ull : 1000000ull))
            kvc_progress(k);
        if (kfd >= 0 && L == 1) {
            /* kill me now (with puts over TCP at a quiet moment: no put in
             * flight, see tcp_puts) */
            if (tcp_puts() && kvc_test_quiesce(k, 10000) != DUET_OK)
                _exit(7);
            wline(kfd, "idle\n");
            pause();
        }
    }
    kvc_end(k, req_id(i), (int32_t)(req_id(i) * 7), "st8", 3);
    t0 = clock_now_ns();
    while ((s = kvc_send_status(k, req_id(i))) == DUET_INPROGRESS &&
           clock_now_ns() - t0 < 30000000000ull)
        kvc_progress(k);
    ks[0] = k;
    if (byefd >= 0)
        wait_line(byefd, ks, 1, line, sizeof(line), 30000);
    kvc_destroy(k);
    _exit(s == DUET_OK ? 0 : 6);
}

static uint64_t ms_since(uint64_t t0)
{
    return (clock_now_ns() - t0) / 1000000ull;
}

static void two_decode(const cfg_t *c, const int *afd, int gfd, int rfd, int byefd)
{
    kvc_t *k = make(c, KVC_ROLE_DECODE, 1, 0);
    two_result_t res = {{DUET_INPROGRESS, DUET_INPROGRESS}, {DUET_INPROGRESS, DUET_INPROGRESS},
                        {0, 0}, {0, 0}, 0, 0};
    int32_t blocks[2][NBLOCKS];
    int nb[2], granted = 0, back = 0;
    bool told = false;
    char line[128];
    uint64_t t0;

    if (k == NULL)
        _exit(3);
    kvc_listen_address(k, line, sizeof(line) - 1);
    strcat(line, "\n");
    wline(afd[0], line);
    wline(afd[1], line);
    for (int i = 0; i < 2; i++) {
        nb[i] = (req_tokens(c, i) + BS - 1) / BS;
        for (int b = 0; b < nb[i]; b++)
            blocks[i][b] = i * 40 + b;
    }
    t0 = clock_now_ns();
    /* grant each request as soon as its node has connected (for at most 20 s),
     * and collect the granted ones meanwhile; the parent kills node 100 once
     * both are granted (or the grant step gave up) and node 100 is idle */
    while (back < 2 && clock_now_ns() - t0 < 30000000000ull) {
        bool grant_over = granted == 3 || clock_now_ns() - t0 >= 20000000000ull;

        if (grant_over && !told) {
            wline(gfd, "granted\n");   /* (or the grant step gave up) */
            told = true;
        }
        kvc_progress(k);
        for (int i = 0; i < 2; i++) {
            duet_status_t s;

            if (!(granted & (1 << i)) && !grant_over) {
                res.grant[i] = kvc_grant(k, PREFILL_NODE + (uint64_t)i, req_id(i),
                                         req_tokens(c, i), blocks[i], nb[i], 8000);
                res.grant_ms[i] = ms_since(t0);
                if (res.grant[i] == DUET_OK)
                    granted |= 1 << i;
            }
            if (res.status[i] != DUET_INPROGRESS || (!(granted & (1 << i)) && !grant_over))
                continue;
            if (!(granted & (1 << i))) {
                res.status[i] = res.grant[i];   /* never granted: the grant's status */
                res.done_ms[i] = ms_since(t0);
                back++;
                continue;
            }
            s = kvc_recv_kv_cache(k, req_id(i), NULL);
            if (s == DUET_INPROGRESS)
                continue;
            res.status[i] = s;
            res.done_ms[i] = ms_since(t0);
            back++;
        }
    }
    if (!told)
        wline(gfd, "granted\n");
    /* blocks lent by a grant and never given back */
    for (int i = 0; i < 2; i++)
        if ((granted & (1 << i)) && res.status[i] == DUET_INPROGRESS)
            res.leaked++;
    if (res.status[1] == DUET_OK) {
        kv_layout_t l = rank_layout(c, 1, 0);
        const uint8_t *slab = kvc_slab(k);

        for (int L = 0; L < NLAYERS; L++)
            for (int t = 0; t < req_tokens(c, 1); t++)
                for (int kv = 0; kv < 2; kv++)
                    for (int h = 0; h < c->H; h++) {
                        const uint8_t *q = slab + kv_offset(&l, L, blocks[1][t / BS], kv, h) +
                                           (size_t)(t % BS) * HEAD_DIM * 2;

                        for (int b = 0; b < HEAD_DIM * 2; b++)
                            if (q[b] != kv_byte(c->seed, req_id(1), L, kv, h, t, b))
                                res.errors++;
                    }
    }
    if (write(rfd, &res, sizeof(res)) != sizeof(res))
        _exit(5);
    {
        kvc_t *ks[1] = {k};

        wait_line(byefd, ks, 1, line, sizeof(line), 30000);
    }
    kvc_destroy(k);
    _exit(0);
}

static const char *exit_str(int wst, char *buf, size_t len)
{
    if (WIFEXITED(wst))
        snprintf(buf, len, "exit %d", WEXITSTATUS(wst));
    else if (WIFSIGNALED(wst))
        snprintf(buf, len, "signal %d", WTERMSIG(wst));
    else
        snprintf(buf, len, "status %#x", wst);
    return buf;
}

static void two_peers(void)
{
    cfg_t c = {SC_EXACT, 6, 1, 1, 77};
    int ap[2][2], bp[2][2], gp[2], rp[2], kp[2];
    pid_t dec, pa, pb;
    two_result_t res = {{0, 0}, {0, 0}, {0, 0}, {0, 0}, 0, 0};
    char line[64], e[3][32];
    int wa = 0, wb = 0, wd = 0, afd[2];
    bool got, killed = false, grants_ok, done_ok;

    if (pipe(ap[0]) || pipe(ap[1]) || pipe(bp[0]) || pipe(bp[1]) || pipe(gp) || pipe(rp) ||
        pipe(kp))
        abort();
    afd[0] = ap[0][1];
    afd[1] = ap[1][1];
    fflush(stdout);
    /* each child closes the write ends it does not write, so that a child
     * that dies is seen as EOF by its reader */
    dec = fork();
    if (dec == 0) {
        close(kp[1]);
        two_decode(&c, afd, gp[1], rp[1], bp[0][0]);
    }
    pa = fork();
    if (pa == 0) {
        close(gp[1]);
        close(rp[1]);
        two_prefill(&c, PREFILL_NODE, 0, ap[0][0], kp[1], -1);
    }
    pb = fork();
    if (pb == 0) {
        close(gp[1]);
        close(rp[1]);
        close(kp[1]);
        two_prefill(&c, PREFILL_NODE + 1, 1, ap[1][0], -1, bp[1][0]);
    }
    close(gp[1]);
    close(rp[1]);
    close(kp[1]);
    if (rline(gp[0], line, sizeof(line)) == 0 && rline(kp[0], line, sizeof(line)) == 0) {
        kill(pa, SIGKILL);
        killed = true;
    }
    got = read(rp[0], &res, sizeof(res)) == sizeof(res);
    /* the decode reported: it and the live node may close now */
    wline(bp[0][1], "bye\n");
    wline(bp[1][1], "bye\n");
    if (!killed)
        kill(pa, SIGKILL);   /* it never said "idle": do not wait for it */
    waitpid(pa, &wa, 0);
    waitpid(pb, &wb, 0);
    waitpid(dec, &wd, 0);
    for (int i = 0; i < 2; i++) {
        close(ap[i][0]);
        close(ap[i][1]);
        close(bp[i][0]);
        close(bp[i][1]);
    }
    close(gp[0]);
    close(rp[0]);
    close(kp[0]);
    /* which step failed: the grant (a node never connected: see its exit
     * code, 4 = connect failed) or the completion */
    grants_ok = got && res.grant[0] == DUET_OK && res.grant[1] == DUET_OK;
    done_ok = got && (res.status[0] == DUET_ERR_PEER || res.status[0] == DUET_ERR_TIMEOUT) &&
              res.status[1] == DUET_OK;
    if (!grants_ok || !done_ok || !killed)
        diag("two peers: decode %s%s; node 100 (killed %s) %s, grant %s at %llu ms, settled %s "
             "at %llu ms; node 101 %s, grant %s at %llu ms, settled %s at %llu ms",
             exit_str(wd, e[0], sizeof(e[0])), got ? "" : " (no report)",
             killed ? "when it said so" : "without saying idle",
             exit_str(wa, e[1], sizeof(e[1])), duet_status_str(res.grant[0]),
             (unsigned long long)res.grant_ms[0], duet_status_str(res.status[0]),
             (unsigned long long)res.done_ms[0], exit_str(wb, e[2], sizeof(e[2])),
             duet_status_str(res.grant[1]), (unsigned long long)res.grant_ms[1],
             duet_status_str(res.status[1]), (unsigned long long)res.done_ms[1]);
    ok(grants_ok, "two peers: both nodes connected and were granted (%s, %s)",
       duet_status_str(res.grant[0]), duet_status_str(res.grant[1]));
    ok(got && (res.status[0] == DUET_ERR_PEER || res.status[0] == DUET_ERR_TIMEOUT),
       "two peers: the dead node's request fails (%s)", duet_status_str(res.status[0]));
    ok(got && res.status[1] == DUET_OK && res.errors == 0,
       "two peers: the live node's request completes byte-exact (%s, %d errors)",
       duet_status_str(res.status[1]), res.errors);
    ok(WIFEXITED(wb) && WEXITSTATUS(wb) == 0, "two peers: the live node saw its request "
       "delivered (%s)", exit_str(wb, e[2], sizeof(e[2])));
    is_int(res.leaked, 0, "two peers: every block back");
}

/* The UCX settings kvc_create applies (kvc_ucx_settings): each case in its
 * own process, since it changes the environment. Exit status: 0 as expected,
 * 1 create failed, 2 created, 3 wrong settings string. */
static int ucx_settings_case(const char *rx, const char *tx, const char *rails, bool expect_ok,
                             const char *expect)
{
    cfg_t c = {SC_EXACT, 6, 1, 1, 88};
    pid_t pid = fork();
    int st;

    if (pid == 0) {
        kvc_t *k;

        if (rails)
            setenv("UCX_MAX_EAGER_RAILS", rails, 1);
        if (rx)
            setenv("UCX_TCP_RX_SEG_SIZE", rx, 1);
        if (tx)
            setenv("UCX_TCP_TX_SEG_SIZE", tx, 1);
        k = make(&c, KVC_ROLE_DECODE, 1, 0);
        if (k == NULL)
            _exit(expect_ok ? 1 : 0);
        if (!expect_ok)
            _exit(2);
        if (strcmp(kvc_test_ucx_settings(k), expect) != 0) {
            fprintf(stderr, "# settings '%s', expected '%s'\n", kvc_test_ucx_settings(k), expect);
            _exit(3);
        }
        kvc_destroy(k);
        _exit(0);
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

static void ucx_settings(void)
{
    const kvc_ucx_setting_t *set;
    int n = kvc_ucx_settings(&set);
    const char *seg = n == 2 ? " UCX_TCP_TX_SEG_SIZE=64K" : "";
    char both[96];

    ok(strcmp(set[0].env, "UCX_MAX_EAGER_RAILS") == 0, "the first setting: one eager lane");
    snprintf(both, sizeof(both), "UCX_MAX_EAGER_RAILS=1%s", seg);
    is_int(ucx_settings_case(NULL, NULL, NULL, true, both), 0,
           "kvc_create applies %s to its context", both);
    /* the order of DATA and LAYER_DONE depends on it: the environment's
     * multi-rail setting is overridden */
    is_int(ucx_settings_case(NULL, NULL, "2", true, both), 0,
           "UCX_MAX_EAGER_RAILS=2 from the environment becomes 1");
    if (n < 2) {
        diag("no tcp setting under this UCX_TLS / environment");
        return;
    }
    /* UCX refuses a tcp TX segment larger than the RX segment: if the
     * connector's 64K reached the tcp transport, a 16K RX segment makes the
     * worker (and kvc_create) fail; if the key were ignored it would not */
    is_int(ucx_settings_case("16K", NULL, NULL, false, ""), 0,
           "the 64K TX segment reaches the tcp transport (RX 16K is refused)");
    is_int(ucx_settings_case("16K", "8K", NULL, true, "UCX_MAX_EAGER_RAILS=1"), 0,
           "UCX_TCP_TX_SEG_SIZE from the environment wins (not applied)");
}

/* kvc_copy_nt (non-temporal stores from 1 KiB up when the destination is
 * 16-byte aligned, memcpy otherwise): every size and alignment around its
 * thresholds copies exactly and touches nothing outside. */
static void copy_nt(void)
{
    static const size_t sizes[] = {0, 1, 15, 16, 63, 64, 65, 1023, 1024, 1025, 4103, 65536};
    uint8_t *src = malloc(70000), *dst = malloc(70032);
    int bad = 0;

    for (size_t i = 0; i < 70000; i++)
        src[i] = (uint8_t)mix(i);
    for (size_t z = 0; z < sizeof(sizes) / sizeof(sizes[0]); z++)
        for (size_t d = 0; d < 32; d += 8)
            for (size_t so = 0; so < 3; so++) {
                memset(dst, SENTINEL, 70032);
                kvc_copy_nt(dst + d, src + so, sizes[z]);
                kvc_copy_fence();
                if (memcmp(dst + d, src + so, sizes[z]) != 0)
                    bad++;
                for (size_t x = 0; x < 70032; x++)
                    if ((x < d || x >= d + sizes[z]) && dst[x] != SENTINEL) {
                        bad++;
                        break;
                    }
            }
    is_int(bad, 0, "kvc_copy_nt: 12 sizes x 4 destination and 3 source alignments exact");
    free(src);
    free(dst);
}

static bool cuda_here(void)
{
#if DUET_HAVE_CUDA
    return test_cuda_devices() > 0;
#else
    return false;
#endif
}

int main(int argc, char **argv)
{
    bool slow = argc > 1 && strcmp(argv[1], "--slow") == 0;
    const char *tls = getenv("UCX_TLS");
    static const int pairs[][3] = {
        {6, 1, 1}, {6, 1, 2}, {6, 1, 3}, {6, 2, 1}, {6, 2, 2}, {6, 2, 3},
        {6, 3, 1}, {6, 3, 2}, {6, 3, 3}, {1, 1, 3}, {1, 3, 1}, {2, 2, 1}, {1, 2, 3},
    };

    signal(SIGPIPE, SIG_IGN);
    log_set_level(getenv("KVC_TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
    diag("UCX_TLS=%s", tls ? tls : "(default)");
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        cfg_t c = {SC_EXACT, pairs[i][0], pairs[i][1], pairs[i][2], 1 + (unsigned)i};

        uint64_t t = clock_now_ns();

        run(&c);
        diag("%.2f s", (double)(clock_now_ns() - t) * 1e-9);
    }
    for (int sc = SC_LATE_GRANT; sc <= SC_CUDA; sc++) {
        cfg_t c = {(scenario_t)sc, 6, 2, 3, 50 + (unsigned)sc};
        uint64_t t = clock_now_ns();

        if (sc == SC_CUDA && !cuda_here()) {
            tap_skip("device slabs: no CUDA device (or not a CUDA build)");
            continue;
        }
        run(&c);
        diag("%.2f s", (double)(clock_now_ns() - t) * 1e-9);
    }
    two_peers();
    ucx_settings();
    copy_nt();
    for (unsigned s = 0; slow && s < 20; s++) {
        cfg_t c = {SC_EXACT, 6, 1 + (int)(s % 3), 1 + (int)(s / 3 % 3), 100 + s};

        run(&c);
    }
    return tap_done();
}
