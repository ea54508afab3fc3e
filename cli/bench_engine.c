/* duet bench engine: llama-bench's pp and tg on the CPU forward pass, and
 * the memory-bandwidth bound of generation measured in the same run.
 * With --batch B1,B2,...: the engine's batching sweep instead (decode
 * throughput per batch size and its ratio to batch 1, prefill with and
 * without chunking; engine/bench_batch.h).
 *
 *   pp N: one sequence of N prompt tokens in one forward call (logits for
 *         the last), tokens/s;
 *   tg N: N single-token forward calls from an empty context, tokens/s;
 *   bytes/token: the weights one generated token reads (every layer matrix
 *         and norm, the output head, one embedding row);
 *   efficiency: bytes/token * tg tokens/s over the machine's measured read
 *         bandwidth (a streaming read of --membw-mib MiB, >= 4x the LLC). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/flags.h"
#include "common/log.h"
#include "engine/bench_batch.h"
#include "engine/executor.h"
#include "engine/forward.h"
#include "kernels/cpu/cpu.h"
#include "model/config.h"
#include "model/gguf.h"

#define BENCH_BLOCK 16

static void mean_sd(const double *v, int n, double *mean_p, double *sd_p)
{
    double m = 0.0, s = 0.0;

    for (int i = 0; i < n; i++)
        m += v[i];
    m /= n;
    for (int i = 0; i < n; i++)
        s += (v[i] - m) * (v[i] - m);
    *mean_p = m;
    *sd_p = n > 1 ? sqrt(s / (n - 1)) : 0.0;
}

/* Bytes of weights read to generate one token. */
static uint64_t weight_bytes_per_token(const gguf_t *g, const model_config_t *cfg)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);

        if (t->name.len == strlen("token_embd.weight") &&
            memcmp(t->name.ptr, "token_embd.weight", t->name.len) == 0) {
            /* one row as the embedding; all of it again when it is the head */
            sum += t->nbytes / (uint64_t)(t->ne[1] > 0 ? t->ne[1] : 1);
            if (cfg->tied_output)
                sum += t->nbytes;
            continue;
        }
        sum += t->nbytes;
    }
    return sum;
}

/* "1,4,16,64" into o->batches. */
static int parse_batches(const char *list, bench_batch_opts_t *o)
{
    const char *p = list;

    o->n_batches = 0;
    while (*p != '\0') {
        char *end;
        long v = strtol(p, &end, 10);

        if (end == p || v < 1 || v > 4096 || o->n_batches == BENCH_BATCH_MAX)
            return -1;
        o->batches[o->n_batches++] = (int32_t)v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p != '\0')
            return -1;
    }
    return o->n_batches > 0 ? 0 : -1;
}

static int bench_batch_cmd(const char *model, int64_t threads, int64_t tp,
                           const bench_batch_opts_t *bo, bool json)
{
    bench_batch_result_t res;
    engine_opts_t eo;
    model_config_t cfg;
    gguf_t *g = NULL;
    char err[512] = "";
    int rc = 1;

    if (gguf_open(model, &g, err, sizeof(err)) != DUET_OK ||
        model_config_load(g, &cfg, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "duet bench engine: %s\n", err);
        goto out;
    }
    engine_opts_default(&eo);
    eo.threads = threads > 0 ? threads : cpu_n_cores() / tp > 1 ? cpu_n_cores() / tp : 1;
    eo.tp_size = (int32_t)tp;
    if (bench_batch_run(g, &cfg, &eo, bo, &res, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "duet bench engine: --batch: %s\n", err);
        goto out;
    }
    if (!json)
        printf("model: %s (%s, %lld threads x %lld ranks)\n", model,
               cpu_isa_name(cpu_isa_best()), (long long)eo.threads, (long long)tp);
    bench_batch_print(stdout, &res, json);
    rc = 0;
out:
    gguf_close(g);
    return rc;
}

static int bench_engine_run(int argc, char **argv)
{
    const char *model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    int64_t threads = 0, pp = 512, tg = 128, reps = 3, membw_mib = 1024, tp = 1;
    bool json = false, act_q8 = false;
    const char *batch = NULL;
    int64_t b_prompt = 32, b_steps = 32, p_reqs = 4, p_len = 512, b_chunk = 256;
    bench_batch_opts_t bo;
    const flag_t flags[] = {
        {"model", 'm', FLAG_STRING, &model, "GGUF model file", "FILE", 0, 0, 0, 0},
        {"threads", 't', FLAG_INT, &threads,
         "compute threads per rank (default: the cores divided by --tp)", "N", 1, 1024, 0, 0},
        {"tp", 0, FLAG_INT, &tp, "tensor parallel ranks (worker processes)", "N", 1, 64, 0, 0},
        {"pp", 'p', FLAG_INT, &pp, "prompt tokens (0: skip)", "N", 0, 1 << 20, 0, 0},
        {"tg", 'n', FLAG_INT, &tg, "generated tokens (0: skip)", "N", 0, 1 << 20, 0, 0},
        {"reps", 'r', FLAG_INT, &reps, "repetitions of each test", "N", 1, 1000, 0, 0},
        {"membw-mib", 0, FLAG_INT, &membw_mib, "bandwidth probe size in MiB (0: skip)", "N",
         0, 1 << 20, 0, 0},
        {"act-q8", 0, FLAG_BOOL, &act_q8, "8-bit activations (llama.cpp's precision)", NULL,
         0, 0, 0, 0},
        {"json", 0, FLAG_BOOL, &json, "print one JSON object", NULL, 0, 0, 0, 0},
        {"batch", 'b', FLAG_STRING, &batch,
         "batching sweep instead of pp/tg: decode batch sizes, e.g. 1,4,16,64", "LIST",
         0, 0, 0, 0},
        {"batch-prompt", 0, FLAG_INT, &b_prompt, "--batch: prompt tokens per request",
         "N", 1, 1 << 20, 0, 0},
        {"batch-steps", 0, FLAG_INT, &b_steps, "--batch: timed decode steps per size",
         "N", 1, 1 << 20, 0, 0},
        {"prefill-reqs", 0, FLAG_INT, &p_reqs, "--batch: prompts in the prefill test",
         "N", 1, 4096, 0, 0},
        {"prefill-len", 0, FLAG_INT, &p_len, "--batch: their length", "N",
         1, 1 << 20, 0, 0},
        {"chunk", 0, FLAG_INT, &b_chunk, "--batch: tokens per step with chunked prefill", "N",
         1, 1 << 20, 0, 0},
    };
    const flags_usage_t u = {"duet bench engine", NULL,
                             "Prompt (pp) and generation (tg) speed of the CPU forward pass, "
                             "and generation's efficiency against memory bandwidth."};
    duet_status_t s = flags_parse(&u, flags, FLAGS_COUNT(flags), argc, argv, NULL, 0, NULL);
    gguf_t *g = NULL;
    model_config_t cfg;
    exec_t *f = NULL;
    exec_opts_t xo = {0};
    fwd_opts_t fo;
    int32_t *toks = NULL, *table = NULL, n_blocks, max_tok;
    float *logits = NULL;
    double *pp_tps = NULL, *tg_tps = NULL, pp_m = 0, pp_sd = 0, tg_m = 0, tg_sd = 0;
    double membw = 0.0, gbps, eff;
    uint64_t wbytes;
    char err[512];
    int rc = 1, nth;
    char backend[32];

    if (s == DUET_DONE)
        return 0;
    if (s != DUET_OK)
        return 2;
    if (batch != NULL) {
        bench_batch_opts_default(&bo);
        bo.prompt_len = (int32_t)b_prompt;
        bo.gen_len = (int32_t)b_steps;
        bo.prefill_reqs = (int32_t)p_reqs;
        bo.prefill_len = (int32_t)p_len;
        bo.chunk = (int32_t)b_chunk;
        if (parse_batches(batch, &bo) != 0) {
            fprintf(stderr, "duet bench engine: --batch '%s': expected up to %d sizes in "
                    "[1, 4096], e.g. 1,4,16,64\n", batch, BENCH_BATCH_MAX);
            return 2;
        }
        return bench_batch_cmd(model, threads, tp, &bo, json);
    }
    if (membw_mib != 0 && membw_mib < 4) {
        fprintf(stderr, "duet bench engine: --membw-mib must be 0 or at least 4\n");
        return 2;
    }
    s = gguf_open(model, &g, err, sizeof(err));
    if (s == DUET_OK)
        s = model_config_load(g, &cfg, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "duet bench engine: %s\n", err);
        goto out;
    }
    max_tok = (int32_t)(pp > tg ? pp : tg);
    if (max_tok > cfg.ctx_len) {
        fprintf(stderr, "duet bench engine: %d tokens do not fit the context of %d\n",
                max_tok, cfg.ctx_len);
        rc = 2;
        goto out;
    }
    nth = threads > 0 ? (int)threads : cpu_n_cores() / (int)tp > 1 ? cpu_n_cores() / (int)tp : 1;
    /* the backend fwd_create picks (DUET_CPU_ISA may override the best) */
    snprintf(backend, sizeof(backend), "%s", cpu_isa_name(cpu_isa_best()));
    if (getenv("DUET_CPU_ISA") != NULL && *getenv("DUET_CPU_ISA") != '\0')
        snprintf(backend, sizeof(backend), "cpu-%s", getenv("DUET_CPU_ISA"));
    n_blocks = (max_tok + BENCH_BLOCK - 1) / BENCH_BLOCK + 1;
    fo = (fwd_opts_t){.n_threads = nth, .n_blocks = n_blocks, .block_size = BENCH_BLOCK,
                      .kv_dtype = DTYPE_F16, .tp_rank = 0, .tp_size = 1, .act_q8 = act_q8};
    xo.tp_size = (int)tp;
    s = exec_create(g, &cfg, &fo, &xo, &f, err, sizeof(err));
    if (s != DUET_OK) {
        fprintf(stderr, "duet bench engine: cannot set up the forward pass: %s\n", err);
        rc = s == DUET_ERR_INVALID ? 2 : 1;
        goto out;
    }
    toks = malloc(sizeof(int32_t) * (size_t)(max_tok > 0 ? max_tok : 1));
    table = malloc(sizeof(int32_t) * (size_t)n_blocks);
    logits = malloc(sizeof(float) * (size_t)cfg.vocab);
    pp_tps = calloc((size_t)reps, sizeof(double));
    tg_tps = calloc((size_t)reps, sizeof(double));
    if (!toks || !table || !logits || !pp_tps || !tg_tps)
        goto out;
    for (int32_t i = 0; i < max_tok; i++)
        toks[i] = (int32_t)((i * 7919u + 13u) % (uint32_t)cfg.vocab);
    for (int32_t b = 0; b < n_blocks; b++)
        table[b] = b;

    /* warm-up: page the weights in, size the scratch */
    {
        fwd_seq_t sq = {.tokens = toks, .n_new = (int32_t)(pp > 0 ? pp : 1), .n_past = 0,
                        .block_table = table, .n_blocks = n_blocks, .want_logits = true};

        if (exec_run(f, &sq, 1, logits) != DUET_OK)
            goto err_run;
    }
    for (int r = 0; r < reps; r++) {
        if (pp > 0) {
            fwd_seq_t sq = {.tokens = toks, .n_new = (int32_t)pp, .n_past = 0,
                            .block_table = table, .n_blocks = n_blocks, .want_logits = true};
            double t0 = clock_now_s();

            if (exec_run(f, &sq, 1, logits) != DUET_OK)
                goto err_run;
            pp_tps[r] = (double)pp / (clock_now_s() - t0);
        }
        if (tg > 0) {
            double t0 = clock_now_s();

            for (int32_t i = 0; i < tg; i++) {
                fwd_seq_t sq = {.tokens = toks + i, .n_new = 1, .n_past = i,
                                .block_table = table, .n_blocks = n_blocks, .want_logits = true};

                if (exec_run(f, &sq, 1, logits) != DUET_OK)
                    goto err_run;
            }
            tg_tps[r] = (double)tg / (clock_now_s() - t0);
        }
    }
    if (pp > 0)
        mean_sd(pp_tps, (int)reps, &pp_m, &pp_sd);
    if (tg > 0)
        mean_sd(tg_tps, (int)reps, &tg_m, &tg_sd);
    if (membw_mib > 0 &&
        cpu_membw_measure(nth, (size_t)membw_mib << 20, 3, &membw) != DUET_OK) {
        fprintf(stderr, "duet bench engine: cannot measure memory bandwidth\n");
        goto out;
    }
    wbytes = weight_bytes_per_token(g, &cfg);
    gbps = (double)wbytes * tg_m / 1e9;
    eff = membw > 0.0 ? gbps / membw : 0.0;

    if (json) {
        printf("{\"model\": \"%s\", \"backend\": \"%s\", \"threads\": %d, \"tp\": %" PRId64 ", "
               "\"pp\": %" PRId64 ", \"pp_tps\": %.2f, \"pp_tps_sd\": %.2f, "
               "\"tg\": %" PRId64 ", \"tg_tps\": %.2f, \"tg_tps_sd\": %.2f, "
               "\"weight_bytes_per_token\": %" PRIu64 ", \"tg_gbps\": %.3f, "
               "\"membw_gbps\": %.3f, \"efficiency\": %.3f, \"reps\": %" PRId64 ", "
               "\"activations\": \"%s\"}\n",
               model, backend, nth, tp, pp, pp_m, pp_sd, tg, tg_m, tg_sd,
               wbytes, gbps, membw, eff, reps, act_q8 ? "q8" : "q8x2");
    } else {
        printf("model: %s (%s, %d threads x %" PRId64 " ranks, %" PRId64 " reps, %s activations)\n",
               model, backend, nth, tp, reps, act_q8 ? "8-bit" : "two-level 8-bit");
        if (pp > 0)
            printf("pp%-6" PRId64 " %10.2f ± %.2f tokens/s\n", pp, pp_m, pp_sd);
        if (tg > 0)
            printf("tg%-6" PRId64 " %10.2f ± %.2f tokens/s\n", tg, tg_m, tg_sd);
        printf("weights per token: %.2f MB; at tg speed %.2f GB/s\n", (double)wbytes / 1e6, gbps);
        if (membw > 0.0)
            printf("memory read bandwidth: %.2f GB/s (%" PRId64 " MiB, %d threads); "
                   "efficiency %.1f%%\n", membw, membw_mib, nth, 100.0 * eff);
    }
    rc = 0;
    goto out;

err_run:
    fprintf(stderr, "duet bench engine: the forward pass failed\n");
out:
    free(pp_tps);
    free(tg_tps);
    free(logits);
    free(table);
    free(toks);
    exec_destroy(f);
    gguf_close(g);
    return rc;
}

const cli_cmd_t cli_bench_engine = {"engine", "prompt/generation speed and bandwidth efficiency",
                                    bench_engine_run};
