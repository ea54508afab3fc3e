/* The NCCL group backend on real GPUs: one rank per GPU (up to 4; a single
 * GPU runs a group of one, which still exercises the bootstrap, the
 * non-blocking communicator and the polling), every collective against the
 * host reference for f32/bf16/i32. Exits 77 (skip) without a GPU.
 * Protocol 'exitcode': 0 pass, 1 fail, 77 skip; TAP lines are for humans. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parallel/group.h"
#include "parallel/procgroup.h"
#include "tests/cuda_test.h"
#include "tests/tap.h"
#include "tests/unit/group_testlib.h"

static const size_t sizes[] = {1, 3, 1000, 65537, 1048577};
static const group_dtype_t dts[] = {GROUP_F32, GROUP_BF16, GROUP_I32};

/* Returns the number of wrong results on this rank. */
static int rank_body(procgroup_t *pg, bool tap)
{
    char name[224];
    int r = procgroup_rank(pg), n = procgroup_size(pg), fails = 0;
    group_config_t cfg = {.backend = GROUP_BACKEND_NCCL, .rank = r, .world_size = n,
                          .name = name, .timeout_s = 60, .cuda_device = r};
    group_t *g = NULL;
    duet_status_t s;

    snprintf(name, sizeof(name), "%s.nccl", procgroup_id(pg));
    s = group_create(&cfg, &g);
    if (tap)
        ok(s == DUET_OK, "nccl group of %d: %s", n, duet_status_str(s));
    if (s != DUET_OK)
        return 1;
    for (size_t d = 0; d < sizeof(dts) / sizeof(dts[0]); d++) {
        group_dtype_t dt = dts[d];
        size_t esz = group_dtype_size(dt);

        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            size_t count = sizes[k], bytes = (size_t)n * count * esz;
            uint8_t *h_in = malloc(bytes), *h_out = malloc(bytes);
            void *d_in = NULL, *d_out = NULL;
            uint32_t salt = (uint32_t)(d * 100 + k);
            int bad = 0;

            cudaMalloc(&d_in, bytes);
            cudaMalloc(&d_out, bytes);
            /* all_reduce */
            gt_fill(dt, h_in, count, r, 0, salt);
            cudaMemcpy(d_in, h_in, count * esz, cudaMemcpyHostToDevice);
            s = group_all_reduce(g, d_out, d_in, count, dt);
            if (s == DUET_OK)
                s = group_sync(g);
            cudaMemcpy(h_out, d_out, count * esz, cudaMemcpyDeviceToHost);
            /* NCCL sums in its own order and, for bf16, rounds at each hop:
             * f32/bf16 within a rounding bound per rank, i32 exact */
            for (size_t i = 0; i < count && s == DUET_OK; i++) {
                uint32_t want = gt_sum(dt, n, i, salt), got = gt_load(dt, h_out, i);

                if (dt == GROUP_I32 || n == 1) {
                    bad += got != want;
                } else {
                    float a = gt_to_f32(dt, got), b = gt_to_f32(dt, want);
                    float tol = (dt == GROUP_BF16 ? 0.02f : 1e-5f) * (float)n;

                    bad += (a - b > tol || b - a > tol);
                }
            }
            /* all_gather */
            s = s != DUET_OK ? s : group_all_gather(g, d_out, d_in, count, dt);
            if (s == DUET_OK)
                s = group_sync(g);
            cudaMemcpy(h_out, d_out, (size_t)n * count * esz, cudaMemcpyDeviceToHost);
            for (int j = 0; j < n && s == DUET_OK; j++)
                for (size_t i = 0; i < count; i++)
                    bad += gt_load(dt, h_out, (size_t)j * count + i) != gt_raw(dt, j, i, salt);
            /* broadcast from the last rank */
            gt_fill(dt, h_in, count, r, 0, salt + 7);
            cudaMemcpy(d_in, h_in, count * esz, cudaMemcpyHostToDevice);
            s = s != DUET_OK ? s : group_broadcast(g, d_in, count, dt, n - 1);
            if (s == DUET_OK)
                s = group_sync(g);
            cudaMemcpy(h_out, d_in, count * esz, cudaMemcpyDeviceToHost);
            for (size_t i = 0; i < count && s == DUET_OK; i++)
                bad += gt_load(dt, h_out, i) != gt_raw(dt, n - 1, i, salt + 7);
            if (s != DUET_OK)
                bad++;
            fails += bad != 0;
            if (tap)
                ok(bad == 0, "nccl n=%d %s count %zu: all_reduce, all_gather, broadcast (%s)",
                   n, group_dtype_name(dt), count, duet_status_str(s));
            cudaFree(d_in);
            cudaFree(d_out);
            free(h_in);
            free(h_out);
        }
    }
    s = group_barrier(g);
    if (tap)
        ok(s == DUET_OK, "nccl barrier");
    fails += s != DUET_OK;
    group_destroy(g);
    return fails;
}

static int worker_main(procgroup_t *pg, void *arg)
{
    return rank_body(pg, false) ? 1 : 0;
}

int main(void)
{
    int ndev = test_cuda_devices();
    procgroup_opts_t o = {.worker_main = worker_main, .timeout_s = 60};
    procgroup_t *pg = NULL;

    if (ndev == 0)
        tap_exit_skip("no CUDA device");
    o.world_size = ndev > 4 ? 4 : ndev;
    if (!ok(procgroup_start(&o, &pg) == DUET_OK, "start %d ranks", o.world_size))
        return tap_done();
    rank_body(pg, true);
    ok(procgroup_stop(pg, 60) == DUET_OK, "every rank's results were right");
    procgroup_destroy(pg);
    return tap_done();
}
